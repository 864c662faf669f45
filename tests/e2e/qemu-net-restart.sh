#!/bin/bash
# vhost-user-net killed and restarted under a running Linux guest (QEMU TCG,
# chardev reconnect=1): traffic resumes after each restart. Frames in flight
# at a kill may be lost, as with a real NIC; none is corrupted (ping checks
# its payload).
#
#   tests/e2e/qemu-net-restart.sh [--kills N]
set -uo pipefail
. "$(dirname "$0")/lib.sh"

KILLS=3
[[ "${1:-}" == "--kills" ]] && KILLS=$2

e2e_setup qemu-net-restart
e2e_need_tools "$QEMU" ip
[[ $(id -u) -eq 0 ]] || e2e_die "needs root (network namespace and tap)"
e2e_prepare_guest
BIN=${SPLITVM_BIN_DIR:-$E2E_ROOT/target/release}
[[ -x "$BIN/vhost-user-net" ]] || e2e_die "no $BIN/vhost-user-net (cargo build --release)"

e2e_netns_tap "svt-e2e-netrs-$$"
SOCK="$E2E_WORK/net.sock"

start_net() {   # N
    e2e_spawn "net-$1" ip netns exec "$E2E_NETNS" "$BIN/vhost-user-net" \
        --socket "$SOCK" --tap tap0 --mac 52:54:00:12:34:56
    NET_PID=$E2E_PID
    e2e_wait_socket "$SOCK" "$NET_PID" || e2e_die "vhost-user-net instance $1 did not start"
}

answered() {    # the guest's last answered ping round
    tr -d '\r' 2>/dev/null < "$E2E_LOGS/boot.console" \
        | sed -n 's/^guest: ping \([0-9]*\) ok/\1/p' | tail -n 1
}

wait_answer_past() {   # N
    local i a
    for ((i = 0; i < 600; i++)); do
        a=$(answered)
        [[ -n "$a" && "$a" -gt "$1" ]] && return 0
        grep -q "SPLITVM-RESULT" "$E2E_LOGS/boot.console" 2>/dev/null && return 1
        sleep 0.1
    done
    return 1
}

start_net 0
ROUNDS=$(( (KILLS + 3) * 25 ))
E2E_TIMEOUT=$(( ROUNDS * 2 + 60 ))
e2e_boot_guest boot netrestart "splitvmpings=$ROUNDS" -smp 1 \
    -chardev "socket,id=c0,path=$SOCK,reconnect=1" -netdev vhost-user,id=n0,chardev=c0 \
    -device virtio-net-pci,netdev=n0,vectors=0,mac=52:54:00:12:34:56 &
BOOT=$!

last=-1
resumed=0
for ((k = 1; k <= KILLS; k++)); do
    wait_answer_past "$last" || break
    last=$(answered)
    kill -KILL "$NET_PID" 2>/dev/null
    wait "$NET_PID" 2>/dev/null
    e2e_forget "$NET_PID"
    sleep 0.5
    start_net "$k"
    if wait_answer_past "$last"; then
        resumed=$((resumed + 1))
        e2e_log "kill $k: traffic resumed at ping round $(answered)"
    fi
    last=$(answered)
done

wait "$BOOT"
boot_rc=$?
e2e_check "traffic resumed after each of $KILLS SIGKILL restarts of vhost-user-net" test "$resumed" -eq "$KILLS"
if [[ $boot_rc -eq 0 ]]; then
    e2e_pass "guest: $(tr -d '\r' < "$E2E_LOGS/boot.console" | sed -n 's/^guest: ok: //p' | tail -n 1)"
else
    e2e_fail "guest: $(tr -d '\r' < "$E2E_LOGS/boot.console" | grep -a 'SPLITVM-RESULT' | tail -n 1)"
fi
e2e_stop "$NET_PID" 5
e2e_finish
