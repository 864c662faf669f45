#!/bin/bash
# vhost-user-net with a third-party front end: DPDK's virtio-user PMD
# (dpdk-testpmd, Debian dpdk-dev) drives our back end, whose tap sits in a
# network namespace this test creates.
#   1. txonly: every frame testpmd reports sent must arrive on the tap.
#   2. rxonly: frames injected into the tap (AF_PACKET, inside the netns):
#      every frame the back end reads from the tap must be counted by testpmd.
# The back end serves the second testpmd after the first leaves (re-listen).
set -uo pipefail
. "$(dirname "$0")/lib.sh"

e2e_setup dpdk-net
e2e_need_tools dpdk-testpmd ip python3
[[ $(id -u) -eq 0 ]] || e2e_die "needs root (network namespace and tap)"
BIN=${SPLITVM_BIN_DIR:-$E2E_ROOT/target/release}
[[ -x "$BIN/vhost-user-net" ]] || e2e_die "no $BIN/vhost-user-net (cargo build --release)"

e2e_netns_tap "svt-e2e-dpdk-$$"
SOCK="$E2E_WORK/net.sock"
e2e_spawn backend ip netns exec "$E2E_NETNS" "$BIN/vhost-user-net" --socket "$SOCK" --tap tap0
BPID=$E2E_PID
e2e_wait_socket "$SOCK" "$BPID" || e2e_die "vhost-user-net did not start"

tap_rx() { ip netns exec "$E2E_NETNS" cat /sys/class/net/tap0/statistics/rx_packets; }

# testpmd MODE SECONDS: runs testpmd for SECONDS (it exits when its stdin
# closes), output in $E2E_LOGS/testpmd-MODE.log.
testpmd() {
    (sleep "$2") | timeout 60 dpdk-testpmd --no-huge -m 512 -l 0-1 --no-pci \
        --file-prefix "svt$$" --vdev "net_virtio_user0,path=$SOCK,queues=1" \
        -- --total-num-mbufs=8192 --forward-mode="$1" --txpkts=64 \
        > "$E2E_LOGS/testpmd-$1.log" 2>&1
}
# The first "RX-packets:"/"TX-packets:" value of testpmd's closing statistics.
stat_of() { grep -o "$2-packets: *[0-9]*" "$E2E_LOGS/testpmd-$1.log" | head -n 1 | grep -o '[0-9]*$'; }

# 1. DPDK -> our back end -> tap
before=$(tap_rx)
testpmd txonly 3
sent=$(stat_of txonly TX)
arrived=$(( $(tap_rx) - before ))
e2e_log "testpmd sent ${sent:-?} frames; the tap received $arrived"
e2e_check "txonly: every frame testpmd sent (${sent:-?}) arrived on the tap" \
    test -n "$sent" -a "${sent:-0}" -gt 1000 -a "$arrived" -eq "${sent:-0}"
e2e_check "back end still running after the first front end" e2e_alive "$BPID"

# 2. tap -> our back end -> DPDK
N=2000
tap_tx_dropped() { ip netns exec "$E2E_NETNS" cat /sys/class/net/tap0/statistics/tx_dropped; }
tap_dropped0=$(tap_tx_dropped)
testpmd rxonly 5 &
TPID=$!
sleep 2
ip netns exec "$E2E_NETNS" python3 - "$N" <<'PY' >> "$E2E_LOGS/inject.log" 2>&1
import socket, sys, time
n = int(sys.argv[1])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("tap0", 0))
frame = b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + b"\x88\xb5" + bytes(46)
for i in range(n):
    s.send(frame)
    if i % 50 == 49:
        time.sleep(0.002)  # paced: the tap's own queue must not overflow
print("injected", n)
PY
wait "$TPID"
got=$(stat_of rxonly RX)
sleep 0.5
tap_dropped=$(( $(tap_tx_dropped) - tap_dropped0 ))
# The back end's own count for that connection: frames it read from the tap,
# and of those the ones it could not deliver.
read -r rx dropped < <(sed -n 's/.* rx \([0-9]*\) frames (\([0-9]*\) dropped).*/\1 \2/p' \
    "$E2E_LOGS/backend.log" | tail -n 1)
e2e_log "injected $N frames; the tap dropped $tap_dropped; the back end read ${rx:-?} (dropped ${dropped:-?}); testpmd received ${got:-?}"
# Under load the kernel may drop at the tap's own queue before the back end
# reads (as for any NIC); every frame the tap passed on must reach testpmd.
e2e_check "rxonly: every injected frame the tap passed on reached testpmd (${got:-0} >= $N - $tap_dropped)" \
    test -n "$got" -a "${got:-0}" -ge $((N - tap_dropped)) -a "${dropped:-1}" -eq 0
e2e_check "rxonly: most injected frames got through (${got:-0} of $N)" test "${got:-0}" -ge $((N / 2))
e2e_check "back end still running after the second front end" e2e_alive "$BPID"
e2e_check "back end exits 0 on SIGTERM" e2e_stop "$BPID" 5
e2e_finish
