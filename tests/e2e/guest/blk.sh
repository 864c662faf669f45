#!/bin/sh
# Guest side of the vhost-user-blk end-to-end test (first boot).
# Disk layout (/dev/vda, any size >= 8 MiB, the host uses 64 MiB):
#   [0, size-1MiB)     ext2 made by busybox mke2fs (block count leaves the tail alone)
#   [size-1MiB, size)  a 1 MiB pattern written with O_DIRECT (seed from splitvmseed)
# Steps: write the pattern with O_DIRECT (split over all CPUs, so every
# blk-mq hardware queue carries I/O), flush, read it back with O_DIRECT and
# compare; mke2fs; mount; write files + a manifest; umount; re-read the
# pattern (mkfs must not have touched it). Optional parameters:
#   splitvmqueues=N   expect N virtqueues (blk-mq hardware queues) and I/O on each
. /tests/lib/common.sh

DEV=/dev/vda
SEED=${splitvmseed:-noseed}
wait_dev $DEV 30

size=$(blockdev --getsize64 $DEV) || fail "blockdev --getsize64 $DEV failed"
log "$DEV size $size bytes"
[ "$size" -ge $((8 * 1048576)) ] || fail "$DEV is too small ($size bytes)"
[ $((size % 1048576)) -eq 0 ] || fail "$DEV size $size is not a whole number of MiB"
pat_mib=$((size / 1048576 - 1))       # pattern starts here (MiB)
fs_kib=$((pat_mib * 1024))             # filesystem size (1 KiB blocks)

# The device must offer VIRTIO_BLK_F_FLUSH (feature bit 9). If it reports a
# write-through cache (config.wce=0 under VIRTIO_BLK_F_CONFIG_WCE), switch it
# to write-back through virtio_blk's cache_type (a config write, which QEMU
# forwards as VHOST_USER_SET_CONFIG): only then does the guest send
# VIRTIO_BLK_T_FLUSH at all. A device that stays write-through is legal
# (writes are durable on completion); the flush check is then skipped.
feat=$(cat /sys/block/vda/device/features 2>/dev/null)
log "features $feat"
[ "$(echo "$feat" | cut -c10)" = 1 ] || fail "VIRTIO_BLK_F_FLUSH not negotiated (features $feat)"
ok "VIRTIO_BLK_F_FLUSH negotiated"
wc=$(cat /sys/block/vda/queue/write_cache 2>/dev/null)
if [ "$wc" != "write back" ] && [ "$(echo "$feat" | cut -c12)" = 1 ]; then
    echo "write back" > /sys/block/vda/cache_type 2>/dev/null
    log "write cache was '$wc'; set cache_type 'write back': now '$(cat /sys/block/vda/queue/write_cache)'"
fi
wc=$(cat /sys/block/vda/queue/write_cache 2>/dev/null)

ncpu=$(nproc)
nq=$(ls -d /sys/block/vda/mq/* 2>/dev/null | wc -l)
log "cpus $ncpu, blk-mq hardware queues $nq"
if [ -n "$splitvmqueues" ]; then
    [ "$nq" -eq "$splitvmqueues" ] || fail "expected $splitvmqueues hardware queues, got $nq"
    ok "$nq hardware queues"
fi

# ---- 1. pattern with O_DIRECT, one chunk per CPU ----
pattern "$SEED" 2048 > /tmp/pattern
want=$(md5 /tmp/pattern)
log "pattern-md5 $want"
case $ncpu in 1|2|4|8) ;; *) ncpu=1 ;; esac
chunk_kib=$((1024 / ncpu))
c=0
while [ $c -lt $ncpu ]; do
    # bs=4k: aligned O_DIRECT writes, several requests per chunk
    taskset -c $c dd if=/tmp/pattern of=$DEV bs=4k \
        skip=$((c * chunk_kib / 4)) seek=$((pat_mib * 256 + c * chunk_kib / 4)) \
        count=$((chunk_kib / 4)) oflag=direct conv=notrunc 2>/tmp/dd.err \
        || fail "O_DIRECT write on cpu $c failed: $(cat /tmp/dd.err)"
    c=$((c + 1))
done
ok "pattern written with O_DIRECT ($ncpu chunk(s))"
# /sys/block/vda/stat field 16: flush requests completed
flushes() { awk '{print $16}' /sys/block/vda/stat; }
f0=$(flushes)
# fsync on the block device is what sends REQ_PREFLUSH (sync(2) and
# BLKFLSBUF only write back the page cache); busybox `sync FILE` fsyncs FILE.
sync $DEV || fail "fsync $DEV failed"
blockdev --flushbufs $DEV || fail "blockdev --flushbufs failed"
f1=$(flushes)
log "flush requests completed: $f0 -> $f1 (write cache: $wc)"
if [ "$wc" = "write back" ]; then
    [ -n "$f1" ] && [ "$f1" -gt "${f0:-0}" ] || fail "no flush request reached the device ($f0 -> $f1)"
    ok "flushed (VIRTIO_BLK_T_FLUSH completed)"
else
    ok "flush skipped: device is write-through (cache_type could not be changed)"
fi

dd if=$DEV of=/tmp/readback bs=64k skip=$((pat_mib * 16)) count=16 iflag=direct 2>/tmp/dd.err \
    || fail "O_DIRECT read failed: $(cat /tmp/dd.err)"
got=$(md5 /tmp/readback)
[ "$got" = "$want" ] || fail "O_DIRECT read-back mismatch: $got != $want"
ok "O_DIRECT read-back matches"

if [ -n "$splitvmqueues" ] && [ "$splitvmqueues" -gt 1 ]; then
    # With MSI-X each virtqueue has its own vector (virtioN-req.I in
    # /proc/interrupts). Every O_DIRECT request above waited for its own
    # completion, so a queue that carried a CPU's chunk (128 requests) has
    # taken many interrupts; a few could be spurious (some back ends signal
    # the call eventfd when it is set), so ask for at least 32.
    i=0
    while [ $i -lt "$nq" ]; do
        n=$(awk -v want="req.$i" '$NF ~ /^virtio[0-9]+-req\.[0-9]+$/ {
                split($NF, p, "-"); if (p[2] != want) next
                s = 0; for (k = 2; k < NF; k++) if ($k ~ /^[0-9]+$/) s += $k
                print s }' /proc/interrupts)
        log "virtqueue $i completion interrupts: ${n:-none}"
        [ -n "$n" ] || fail "no MSI-X vector for virtqueue $i in /proc/interrupts"
        [ "$n" -ge 32 ] || fail "virtqueue $i took only $n interrupts: I/O did not go through it"
        i=$((i + 1))
    done
    ok "I/O completed on all $nq virtqueues"
fi

# ---- 2. filesystem ----
mke2fs -F $DEV $fs_kib > /tmp/mkfs.log 2>&1 || fail "mke2fs failed: $(tail -n 3 /tmp/mkfs.log)"
ok "mke2fs $DEV $fs_kib KiB"
mount -t ext2 $DEV /mnt 2>/tmp/mount.err || fail "mount failed: $(cat /tmp/mount.err)"
echo "hello from splitvm seed=$SEED" > /mnt/hello.txt
mkdir -p /mnt/dir
i=0
while [ $i -lt 20 ]; do
    echo "small file $i seed=$SEED" > /mnt/dir/f$i
    i=$((i + 1))
done
# a larger file, crossing many blocks (4 MiB, pattern-derived)
pattern "$SEED-big" 8192 > /mnt/big.bin
(cd /mnt && md5sum hello.txt big.bin dir/* > /tmp/MANIFEST) && mv /tmp/MANIFEST /mnt/MANIFEST
echo "$SEED" > /mnt/SEED
sync
umount /mnt || fail "umount failed"
ok "files written, unmounted"
blockdev --flushbufs $DEV

# ---- 3. pattern still intact after mkfs + files ----
dd if=$DEV of=/tmp/readback bs=64k skip=$((pat_mib * 16)) count=16 iflag=direct 2>/dev/null
got=$(md5 /tmp/readback)
[ "$got" = "$want" ] || fail "pattern changed after mkfs/files: $got != $want"
ok "pattern intact after mkfs"
exit 0
