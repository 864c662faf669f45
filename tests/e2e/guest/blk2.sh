#!/bin/sh
# Guest side, second boot against the same (still running) back end: the
# filesystem made by blk.sh is there and its files have the right contents.
#   splitvmseed=S   the seed the first boot used
. /tests/lib/common.sh

DEV=/dev/vda
wait_dev $DEV 30
mount -t ext2 -o ro $DEV /mnt 2>/tmp/mount.err || fail "mount failed: $(cat /tmp/mount.err)"
[ -f /mnt/MANIFEST ] || fail "no /MANIFEST on the filesystem"
seed=$(cat /mnt/SEED 2>/dev/null)
[ "$seed" = "${splitvmseed:-}" ] || fail "filesystem is from seed '$seed', expected '${splitvmseed:-}'"
n=$(wc -l < /mnt/MANIFEST)
[ "$n" -eq 22 ] || fail "MANIFEST lists $n files, expected 22"
(cd /mnt && md5sum -c MANIFEST > /tmp/md5.log 2>&1) || fail "file contents differ: $(grep -v OK /tmp/md5.log | head -n 3)"
ok "all $n files present with the right contents"
grep -q "seed=$seed" /mnt/hello.txt || fail "hello.txt has wrong contents"
umount /mnt || fail "umount failed"
exit 0
