#!/bin/sh
# Guest side of qemu-net-restart.sh: eth0 gets 10.99.0.2/24 and pings the
# host's tap (10.99.0.1) once a round while the host kills and restarts
# vhost-user-net. Pings may be lost while no back end runs (as with a real
# NIC whose link drops); traffic must resume after each restart and at the end.
# Parameters: splitvmpings=N rounds (default 60).
. /tests/lib/common.sh

n=0
while ! ip link show eth0 >/dev/null 2>&1; do
    n=$((n + 1))
    [ $n -gt 100 ] && fail "no eth0 (virtio_net did not probe)"
    usleep 100000
done
ip link set lo up
ip link set eth0 up || fail "ip link set eth0 up"
ip addr add 10.99.0.2/24 dev eth0 || fail "ip addr add"

ROUNDS=${splitvmpings:-60}
i=0
good=0
while [ $i -lt "$ROUNDS" ]; do
    if ping -c 1 -W 1 10.99.0.1 >/dev/null 2>&1; then
        good=$((good + 1))
        log "ping $i ok"
    else
        log "ping $i lost"
        sleep 0.2
    fi
    i=$((i + 1))
done
ping -c 3 -W 5 10.99.0.1 > /tmp/ping.log 2>&1 || fail "no traffic at the end: $(tail -n 2 /tmp/ping.log | tr '\n' ' ')"
ok "$good of $ROUNDS pings answered across the restarts; traffic flows at the end"
