#!/bin/bash
# End-to-end test of vhost-user-rng with QEMU 7.2 (TCG) as the front end and
# Linux's virtio_rng as the guest driver:
#   for a getrandom back end, then one rate limited to 4096 bytes per 100 ms:
#   boot 1  the guest's current hwrng is virtio_rng; /dev/hwrng gives 2 x 16 KiB
#           that differ and are not constant.
#   boot 2  the same back end (re-listening after QEMU left) serves a new guest.
#   end     the back end stops on SIGTERM and removes its socket.
# Usage: tests/e2e/qemu-rng.sh   (SPLITVM_BIN_DIR, SPLITVM_E2E_TIMEOUT as for qemu-blk.sh)
# Exit status 0 only if every check passed. Logs: build/e2e-logs/qemu-rng/.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

e2e_setup qemu-rng
e2e_need_tools "$QEMU" timeout
e2e_prepare_guest

tdir=${CARGO_TARGET_DIR:-target}; [[ $tdir == /* ]] || tdir="$E2E_ROOT/$tdir"
BIN="${SPLITVM_BIN_DIR:-$tdir/release}/vhost-user-rng"
[[ -x "$BIN" ]] || e2e_die "$BIN not found: cargo build --release -p vhost-user-rng"

run_boots() {   # LABEL EXTRA-ARGS...
    local label=$1; shift
    local sock="$E2E_WORK/rng-$label.sock"
    rm -f "$sock"
    e2e_spawn "backend-$label" "$BIN" --socket "$sock" "$@"
    local bpid=$E2E_PID
    e2e_check "$label: back end creates its socket" e2e_wait_socket "$sock" "$bpid" 20 || return
    local dev=(-chardev "socket,id=c1,path=$sock" -device vhost-user-rng-pci,chardev=c1)
    local i
    for i in 1 2; do
        if e2e_boot_guest "$label-boot$i" rng "" -smp 1 "${dev[@]}"; then
            e2e_pass "$label boot $i: virtio_rng is the current hwrng, /dev/hwrng delivers differing bytes (${E2E_BOOT_SECS}s)"
        else
            e2e_fail "$label boot $i: guest test rng: $E2E_RESULT"
        fi
        e2e_check "$label: back end still running after boot $i" e2e_alive "$bpid"
    done
    kill -TERM "$bpid"
    local n
    for ((n = 0; n < 100; n++)); do e2e_alive "$bpid" || break; sleep 0.1; done
    e2e_check "$label: back end exits on SIGTERM" bash -c "! kill -0 $bpid 2>/dev/null"
    e2e_check "$label: socket removed at exit" test ! -e "$sock"
}

run_boots getrandom
run_boots limited --max-bytes 4096 --period-ms 100
e2e_finish
