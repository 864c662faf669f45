#!/bin/bash
# End-to-end test of vhost-user-net with QEMU 7.2 (TCG) as the front end and
# Linux's virtio_net as the guest driver. The back end runs in a network
# namespace of its own with the tap (10.99.0.1/24) it serves:
#   boot 1  the guest's eth0 (10.99.0.2) pings 10.99.0.1 and sends 10 MiB with
#           busybox nc to a listener in the namespace; the md5s must match.
#   boot 2  the same back end (re-listening after QEMU left) serves a new
#           guest: ping again.
#   end     the back end stops on SIGTERM and removes its socket.
# Needs root (netns, tap). Known issue (Nov 2026): QEMU 7.2's virtio-net sends
# SET_VRING_ENABLE(1) before SET_FEATURES and never again; the vhost crate's
# request loop rejects it (InactiveFeature) and common/ closes the connection,
# so boots fail until common/ tolerates it (the script says so when it sees it).
# Usage: tests/e2e/qemu-net.sh
# (SPLITVM_BIN_DIR, SPLITVM_E2E_TIMEOUT as for qemu-blk.sh; SPLITVM_E2E_NET_MIB
# sets the transfer size, default 10; SPLITVM_E2E_LOG the back end's log level).
# Logs: build/e2e-logs/qemu-net/.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

MIB=${SPLITVM_E2E_NET_MIB:-10}
NS="svt-e2e-net-$$"

e2e_setup qemu-net
e2e_need_tools "$QEMU" timeout ip python3 md5sum
[[ $(id -u) -eq 0 ]] || e2e_die "needs root (network namespace and tap)"
e2e_prepare_guest

tdir=${CARGO_TARGET_DIR:-target}; [[ $tdir == /* ]] || tdir="$E2E_ROOT/$tdir"
BIN="${SPLITVM_BIN_DIR:-$tdir/release}/vhost-user-net"
[[ -x "$BIN" ]] || e2e_die "$BIN not found: cargo build --release -p vhost-user-net"

nsx() { ip netns exec "$NS" "$@"; }
e2e_netns_tap "$NS"

SOCK="$E2E_WORK/net.sock"
rm -f "$SOCK"
e2e_spawn backend env RUST_LOG=${SPLITVM_E2E_LOG:-info} ip netns exec "$NS" "$BIN" --socket "$SOCK" --tap tap0 --mac 52:54:00:12:34:56
BPID=$E2E_PID
e2e_check "back end creates its socket" e2e_wait_socket "$SOCK" "$BPID" 20 || {
    e2e_show_console "$E2E_LOGS/backend.log" 20; e2e_finish; }
DEV=(-chardev "socket,id=c2,path=$SOCK" -netdev vhost-user,id=n0,chardev=c2
     -device virtio-net-pci,netdev=n0,vectors=0,mac=52:54:00:12:34:56)

# ---- boot 1: ping and a 10 MiB transfer ----
RECV="$E2E_WORK/received"
rm -f "$RECV"
# A receiver that reads to EOF (busybox nc -l stops when its own stdin ends).
e2e_spawn listener ip netns exec "$NS" python3 -c '
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.99.0.1", 5001))
s.listen(1)
c, _ = s.accept()
with open(sys.argv[1], "wb") as f:
    while True:
        b = c.recv(1 << 16)
        if not b:
            break
        f.write(b)
c.close()
' "$RECV"
LPID=$E2E_PID
sleep 0.3
if e2e_boot_guest boot1-net net "splitvmnetbytes=$MIB" -smp 1 "${DEV[@]}"; then
    e2e_pass "boot 1: guest eth0 up, 10.99.0.2 pings 10.99.0.1 on the tap, sent $MIB MiB (${E2E_BOOT_SECS}s)"
    want=$(e2e_guest_value "$E2E_CONSOLE" data-md5)
    for ((i = 0; i < 100; i++)); do e2e_alive "$LPID" || break; sleep 0.1; done
    got=$(md5sum < "$RECV" | cut -d' ' -f1)
    size=$(stat -c %s "$RECV")
    e2e_check "boot 1: namespace received $size bytes with the guest's md5 ($want)" \
        test "$got" = "$want" -a "$size" -eq $((MIB * 1048576))
else
    e2e_fail "boot 1: guest test net: $E2E_RESULT"
fi
e2e_check "back end still running after boot 1" e2e_alive "$BPID"

# ---- boot 2: the same back end serves the next front end ----
if e2e_boot_guest boot2-net net "" -smp 1 "${DEV[@]}"; then
    e2e_pass "boot 2: re-listening back end serves a new guest, ping works (${E2E_BOOT_SECS}s)"
else
    e2e_fail "boot 2: guest test net: $E2E_RESULT"
fi
e2e_check "back end still running after boot 2" e2e_alive "$BPID"
if grep -q "inactive feature" "$E2E_LOGS/backend.log"; then
    echo "NOTE: the daemon refused QEMU's early SET_VRING_ENABLE (before SET_FEATURES);"
    echo "      common/'s request loop must accept it for QEMU 7.2's virtio-net (see header)."
fi
e2e_check "back end counted no dropped frames" bash -c "! grep -E '[1-9][0-9]* (tx|rx) drops so far' '$E2E_LOGS/backend.log'"

kill -TERM "$BPID"
for ((i = 0; i < 100; i++)); do e2e_alive "$BPID" || break; sleep 0.1; done
e2e_check "back end exits on SIGTERM" bash -c "! kill -0 $BPID 2>/dev/null"
e2e_check "socket removed at exit" test ! -e "$SOCK"
e2e_finish
