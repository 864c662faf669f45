#!/bin/bash
# Restart without disturbing the guest (issue 5), with QEMU (TCG) as the
# front end: a Linux guest writes continuously with O_DIRECT, reading each
# write back at once, while this script kills vhost-user-blk with SIGKILL at
# 20 random moments and starts it again with the same command. QEMU's
# chardev reconnect=1 brings the device back each time.
#
# Checks: the guest sees no I/O error and no mismatch; at the end every slot
# holds the last write the guest saw completed; the image on the host has
# exactly the data the guest reports (md5 of the region).
#
#   tests/e2e/qemu-restart.sh [--kills N]
set -uo pipefail
. "$(dirname "$0")/lib.sh"

KILLS=20
[[ "${1:-}" == "--kills" ]] && KILLS=$2

e2e_setup qemu-restart
e2e_need_tools "$QEMU" md5sum
e2e_prepare_guest
BIN=${SPLITVM_BIN_DIR:-$E2E_ROOT/target/release}
[[ -x "$BIN/vhost-user-blk" ]] || e2e_die "no $BIN/vhost-user-blk (cargo build --release)"

IMG="$E2E_WORK/disk.img"
SOCK="$E2E_WORK/blk.sock"
truncate -s 64M "$IMG"

start_blk() {   # N: the Nth instance
    e2e_spawn "blk-$1" "$BIN/vhost-user-blk" --socket "$SOCK" --image "$IMG"
    BLK_PID=$E2E_PID
    e2e_wait_socket "$SOCK" "$BLK_PID" || e2e_die "vhost-user-blk instance $1 did not start"
}

progress() {    # the guest's last reported write count
    tr -d '\r' 2>/dev/null < "$E2E_LOGS/boot.console" \
        | sed -n 's/^guest: io \([0-9]*\)\/.*/\1/p' | tail -n 1
}

wait_progress_past() {   # N: wait until the guest reports more than N writes
    local i
    for ((i = 0; i < 600; i++)); do
        local p
        p=$(progress)
        [[ -n "$p" && "$p" -gt "$1" ]] && return 0
        grep -q "SPLITVM-RESULT" "$E2E_LOGS/boot.console" 2>/dev/null && return 1
        sleep 0.1
    done
    return 1
}

start_blk 0
# Enough writes that the guest is still writing after the last kill.
ITERS=$(( (KILLS + 5) * 20 ))
E2E_TIMEOUT=$(( ITERS / 4 + KILLS * 4 + 60 ))
e2e_boot_guest boot restart "splitvmiters=$ITERS" -smp 1 \
    -chardev "socket,id=c0,path=$SOCK,reconnect=1" -device vhost-user-blk-pci,chardev=c0 &
BOOT=$!

seen=0
killed=0
for ((k = 1; k <= KILLS; k++)); do
    wait_progress_past "$seen" || break
    seen=$(progress)
    # A random moment inside the next writes.
    sleep "0.$((RANDOM % 300))"
    kill -KILL "$BLK_PID" 2>/dev/null
    wait "$BLK_PID" 2>/dev/null
    e2e_forget "$BLK_PID"
    killed=$((killed + 1))
    # Sometimes leave the guest without a back end for a while.
    sleep "0.$((RANDOM % 500))"
    start_blk "$k"
done
e2e_log "killed and restarted vhost-user-blk $killed times (guest at write $(progress))"

wait "$BOOT"
boot_rc=$?
if [[ $killed -eq $KILLS ]]; then
    e2e_pass "vhost-user-blk killed with SIGKILL and restarted $killed times during guest I/O"
else
    e2e_fail "only $killed of $KILLS kills happened before the guest stopped"
fi
if [[ $boot_rc -eq 0 ]]; then
    e2e_pass "guest: $ITERS O_DIRECT writes, each read back and verified, no I/O error"
else
    e2e_fail "guest: $(tr -d '\r' < "$E2E_LOGS/boot.console" | grep -a 'SPLITVM-RESULT' | tail -n 1)"
fi
want=$(e2e_guest_value "$E2E_LOGS/boot.console" region-md5)
have=$(dd if="$IMG" bs=16k count=64 2>/dev/null | md5sum | cut -d' ' -f1)
e2e_check "image holds every write the guest saw completed (md5 ${want:-none})" \
    test -n "$want" -a "$want" = "$have"
resub=$(cat "$E2E_LOGS"/blk-*.log | grep -c "resubmitting" || true)
e2e_log "back-end instances that found requests in flight and redid them: $resub"
e2e_stop "$BLK_PID" 5
e2e_finish
