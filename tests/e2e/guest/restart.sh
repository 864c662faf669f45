#!/bin/sh
# Guest side of the restart test: continuous O_DIRECT writes, each read back
# and checked at once, while the host kills and restarts the back end.
# An I/O error or a mismatch fails the test. At the end every slot is read
# again and must hold the last data the guest saw completed; the md5 of the
# whole region is printed so the host can compare it with the image.
# Parameters: splitvmiters=N (default 300) writes in all.
. /tests/lib/common.sh

DEV=/dev/vda
ITERS=${splitvmiters:-300}
SLOTS=64            # 16 KiB slots: a 1 MiB region at the start of the disk
wait_dev $DEV 30
mkdir -p /tmp/slots

i=0
while [ $i -lt $ITERS ]; do
    s=$((i % SLOTS))
    dd if=/dev/urandom of=/tmp/w bs=16k count=1 2>/dev/null
    dd if=/tmp/w of=$DEV bs=16k seek=$s count=1 oflag=direct conv=notrunc 2>/tmp/err \
        || fail "write $i (slot $s) failed: $(cat /tmp/err)"
    dd if=$DEV of=/tmp/r bs=16k skip=$s count=1 iflag=direct 2>/tmp/err \
        || fail "read-back $i (slot $s) failed: $(cat /tmp/err)"
    want=$(md5 /tmp/w)
    [ "$(md5 /tmp/r)" = "$want" ] || fail "read-back $i (slot $s) differs from what was written"
    echo "$want" > /tmp/slots/$s
    cp /tmp/w /tmp/slots/$s.data
    i=$((i + 1))
    [ $((i % 20)) -eq 0 ] && log "io $i/$ITERS ok"
done
sync $DEV || fail "final flush failed"

s=0
: > /tmp/all
while [ $s -lt $SLOTS ]; do
    dd if=$DEV of=/tmp/r bs=16k skip=$s count=1 iflag=direct 2>/dev/null || fail "final read of slot $s failed"
    if [ -f /tmp/slots/$s ]; then
        [ "$(md5 /tmp/r)" = "$(cat /tmp/slots/$s)" ] || fail "slot $s lost its last completed write"
    fi
    cat /tmp/r >> /tmp/all
    s=$((s + 1))
done
ok "all $ITERS writes verified; every slot holds its last completed write"
log "region-md5 $(md5 /tmp/all)"
