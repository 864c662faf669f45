#!/bin/bash
# End-to-end test of a vhost-user-blk back end with a real front end (QEMU,
# TCG) and a real guest driver (Linux virtio_blk, Debian cloud kernel):
#
#   boot 1  (1 queue, 1 vCPU)  guest test blk:  O_DIRECT pattern in the last MiB
#           of a 64 MiB disk, flush, O_DIRECT read-back; busybox mke2fs on the
#           first 63 MiB, files written, unmounted.
#           host: the image's last MiB is the pattern; e2fsck -fn is clean;
#           debugfs reads /hello.txt.
#   boot 2  same back end, still running (re-listen): guest test blk2 sees the files.
#   boot 3  (2 queues, 2 vCPUs) blk again with a new seed: 2 blk-mq queues, each
#           vCPU writes half of the pattern, so both virtqueues carry I/O;
#           host checks as after boot 1.
#   boot 4  blk2 against the same back end with 2 queues.
#   end     the back end is still running, and stops on SIGTERM (informational).
#
# Usage: tests/e2e/qemu-blk.sh [--backend ours|qsd|'CMD {sock} {img} {queues}']
#   ours (default)  $SPLITVM_BIN_DIR/vhost-user-blk (default target/release)
#   qsd             qemu-storage-daemon's vhost-user-blk export (reference)
#   a command template: {sock} {img} {queues} are substituted
# Environment: SPLITVM_E2E_BLK_BACKEND (same as --backend), SPLITVM_BIN_DIR,
#   SPLITVM_E2E_TIMEOUT (seconds per boot, default 120), SPLITVM_E2E_BLK_ARGS
#   (extra arguments for our back end, e.g. "--direct").
# Exit status 0 only if every check passed. Logs: build/e2e-logs/qemu-blk/.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

BACKEND=${SPLITVM_E2E_BLK_BACKEND:-ours}
while (($#)); do
    case "$1" in
        --backend) BACKEND=${2:?--backend needs a value}; shift 2 ;;
        --backend=*) BACKEND=${1#--backend=}; shift ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

e2e_setup qemu-blk
e2e_need_tools "$QEMU" timeout truncate dd md5sum awk e2fsck debugfs cpio gzip
e2e_prepare_guest

IMG="$E2E_WORK/disk.img"
SOCK="$E2E_WORK/blk.sock"
QUEUES=2                 # the back end offers 2; boots 1-2 use 1, boots 3-4 use 2
SIZE_MIB=64
PAT_MIB=$((SIZE_MIB - 1))

backend_cmd() {
    case "$BACKEND" in
        ours)
            local tdir=${CARGO_TARGET_DIR:-target}; [[ $tdir == /* ]] || tdir="$E2E_ROOT/$tdir"
            local bin="${SPLITVM_BIN_DIR:-$tdir/release}/vhost-user-blk"
            [[ -x "$bin" ]] || e2e_die "$bin not found: cargo build --release -p vhost-user-blk (or --backend qsd)"
            # shellcheck disable=SC2206
            BACKEND_CMD=("$bin" --socket "$SOCK" --image "$IMG" --num-queues "$QUEUES" ${SPLITVM_E2E_BLK_ARGS:-})
            ;;
        qsd)
            e2e_need_tools qemu-storage-daemon
            BACKEND_CMD=(qemu-storage-daemon
                --blockdev "driver=file,node-name=f0,filename=$IMG"
                --blockdev driver=raw,node-name=d0,file=f0
                --export "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=$SOCK,writable=on,num-queues=$QUEUES")
            ;;
        *)
            local t=${BACKEND//\{sock\}/$SOCK}
            t=${t//\{img\}/$IMG}
            t=${t//\{queues\}/$QUEUES}
            # a shell command line (quotes allowed); exec keeps the pid
            BACKEND_CMD=(bash -c "exec $t")
            ;;
    esac
}

# host_checks LABEL SEED CONSOLE: the image after a passing blk boot.
host_checks() {
    local label=$1 seed=$2 console=$3 want got guest
    want=$(awk -v seed="$seed" -v sectors=2048 -f "$E2E_ROOT/tests/e2e/guest/lib/pattern.awk" | md5sum | cut -d' ' -f1)
    got=$(dd if="$IMG" bs=1M skip="$PAT_MIB" count=1 status=none | md5sum | cut -d' ' -f1)
    guest=$(e2e_guest_value "$console" pattern-md5)
    e2e_check "$label: guest's pattern checksum is the expected one" test "$guest" = "$want"
    e2e_check "$label: host image holds the guest's O_DIRECT pattern at ${PAT_MIB} MiB" test "$got" = "$want"
    e2e_check "$label: e2fsck -fn finds the guest's ext2 clean" e2fsck -fn "$IMG"
    e2e_check "$label: host reads /hello.txt from the image (debugfs)" \
        bash -c 'debugfs -R "cat /hello.txt" "$1" 2>/dev/null | grep -qx "hello from splitvm seed=$2"' _ "$IMG" "$seed"
}

alive_check() {
    e2e_check "back end still running after $1" e2e_alive "$BPID" || {
        echo "----- tail of the back end's log -----"; tail -n 20 "$E2E_LOGS/backend.log"; echo "-----"
        e2e_finish
    }
}

blk_dev() {   # QEMU device arguments for N queues, in BLK_DEV
    BLK_DEV=(-chardev "socket,id=c0,path=$SOCK" -device "vhost-user-blk-pci,chardev=c0,num-queues=$1")
}

# ---- the disk and the back end ----
rm -f "$IMG" "$SOCK"
truncate -s "${SIZE_MIB}M" "$IMG"
backend_cmd
e2e_log "back end: $BACKEND"
e2e_spawn backend "${BACKEND_CMD[@]}"
BPID=$E2E_PID
e2e_check "back end creates its socket" e2e_wait_socket "$SOCK" "$BPID" 20 || {
    e2e_show_console "$E2E_LOGS/backend.log" 20; e2e_finish; }

SEED1="s1-$RANDOM$RANDOM"
SEED2="s2-$RANDOM$RANDOM"

# ---- boot 1: one queue ----
blk_dev 1
BLK_OK=no
if e2e_boot_guest boot1-blk blk "splitvmseed=$SEED1 splitvmqueues=1" -smp 1 "${BLK_DEV[@]}"; then
    e2e_pass "boot 1 (1 queue): guest O_DIRECT write/flush/read-back, mke2fs, files (${E2E_BOOT_SECS}s)"
    BLK_OK=yes
    host_checks "boot 1" "$SEED1" "$E2E_CONSOLE"
else
    e2e_fail "boot 1 (1 queue): guest test blk: $E2E_RESULT"
fi
alive_check "boot 1"

# ---- boot 2: same daemon, new connection ----
if [[ $BLK_OK != yes ]]; then
    e2e_fail "boot 2 skipped: boot 1 did not leave a filesystem"
elif e2e_boot_guest boot2-blk2 blk2 "splitvmseed=$SEED1" -smp 1 "${BLK_DEV[@]}"; then
    e2e_pass "boot 2 (re-connect, 1 queue): guest sees the files of boot 1 (${E2E_BOOT_SECS}s)"
else
    e2e_fail "boot 2 (re-connect, 1 queue): guest test blk2: $E2E_RESULT"
fi
alive_check "boot 2"

# ---- boot 3: two queues, two vCPUs ----
blk_dev 2
BLK_OK=no
if e2e_boot_guest boot3-blk-mq blk "splitvmseed=$SEED2 splitvmqueues=2" -smp 2 "${BLK_DEV[@]}"; then
    e2e_pass "boot 3 (2 queues, 2 vCPUs): I/O on both virtqueues, write/flush/read-back, mke2fs, files (${E2E_BOOT_SECS}s)"
    BLK_OK=yes
    host_checks "boot 3" "$SEED2" "$E2E_CONSOLE"
else
    e2e_fail "boot 3 (2 queues, 2 vCPUs): guest test blk: $E2E_RESULT"
fi
alive_check "boot 3"

# ---- boot 4: re-connect with two queues ----
if [[ $BLK_OK != yes ]]; then
    e2e_fail "boot 4 skipped: boot 3 did not leave a filesystem"
elif e2e_boot_guest boot4-blk2-mq blk2 "splitvmseed=$SEED2" -smp 2 "${BLK_DEV[@]}"; then
    e2e_pass "boot 4 (re-connect, 2 queues): guest sees the files of boot 3 (${E2E_BOOT_SECS}s)"
else
    e2e_fail "boot 4 (re-connect, 2 queues): guest test blk2: $E2E_RESULT"
fi
alive_check "boot 4"

# ---- stop ----
if e2e_stop "$BPID" 5; then
    e2e_log "info: back end exited on SIGTERM"
else
    e2e_log "info: back end did not exit within 5s of SIGTERM (killed)"
fi
e2e_finish
