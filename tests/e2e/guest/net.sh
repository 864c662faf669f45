#!/bin/sh
# Guest side of qemu-net.sh (virtio_net driven through vhost-user-net):
#   eth0 gets 10.99.0.2/24, pings the host's tap (10.99.0.1, in a netns);
#   with splitvmnetbytes=N (MiB) it also sends N MiB of random data with
#   busybox nc to 10.99.0.1:5001 and prints its md5 for the host to compare.
. /tests/lib/common.sh

n=0
while ! ip link show eth0 >/dev/null 2>&1; do
    n=$((n + 1))
    [ $n -gt 100 ] && fail "no eth0 (virtio_net did not probe)"
    usleep 100000
done
mac=$(cat /sys/class/net/eth0/address)
ok "eth0 is up with mac $mac"
echo "guest: mac $mac"
ip link set lo up
ip link set eth0 up || fail "ip link set eth0 up"
ip addr add 10.99.0.2/24 dev eth0 || fail "ip addr add"
ok "eth0 has 10.99.0.2/24"

ping -c 3 -W 10 10.99.0.1 > /tmp/ping.log 2>&1 || fail "ping 10.99.0.1: $(tail -n 2 /tmp/ping.log | tr '\n' ' ')"
ok "ping 10.99.0.1: $(grep -o '[0-9]* packets received' /tmp/ping.log)"

if [ -n "${splitvmnetbytes:-}" ]; then
    dd if=/dev/urandom of=/tmp/data bs=1M count="$splitvmnetbytes" 2>/dev/null || fail "dd"
    sum=$(md5 /tmp/data)
    echo "guest: data-md5 $sum"
    nc -w 10 10.99.0.1 5001 < /tmp/data || fail "nc to 10.99.0.1:5001 failed"
    ok "sent ${splitvmnetbytes} MiB with nc (md5 $sum)"
fi
exit 0
