#!/bin/sh
# Guest side of qemu-rng.sh: virtio_rng (served by vhost-user-rng) becomes
# the current hwrng and /dev/hwrng delivers bytes that are not all the same
# and differ between reads.
. /tests/lib/common.sh

n=0
while [ ! -e /sys/class/misc/hw_random/rng_current ] || \
      ! grep -q virtio_rng /sys/class/misc/hw_random/rng_current; do
    n=$((n + 1))
    [ $n -gt 100 ] && fail "virtio_rng is not the current hwrng: $(cat /sys/class/misc/hw_random/rng_available 2>/dev/null)"
    usleep 100000
done
ok "current hwrng: $(cat /sys/class/misc/hw_random/rng_current)"
wait_dev /dev/hwrng 10

dd if=/dev/hwrng of=/tmp/a bs=4096 count=4 2>/tmp/dd.err || fail "reading /dev/hwrng: $(cat /tmp/dd.err)"
dd if=/dev/hwrng of=/tmp/b bs=4096 count=4 2>/tmp/dd.err || fail "reading /dev/hwrng: $(cat /tmp/dd.err)"
size=$(wc -c < /tmp/a)
[ "$size" -eq 16384 ] || fail "read $size bytes from /dev/hwrng, expected 16384"
ok "read 16384 bytes twice from /dev/hwrng"
[ "$(md5 /tmp/a)" != "$(md5 /tmp/b)" ] || fail "two reads returned the same bytes"
# Not a constant: at least 200 distinct byte values in 16 KiB.
distinct=$(od -An -v -tu1 /tmp/a | tr -s ' ' '\n' | grep -v '^$' | sort -u | wc -l)
[ "$distinct" -ge 200 ] || fail "only $distinct distinct byte values"
ok "$distinct distinct byte values; the two reads differ"
echo "guest: rng-md5 $(md5 /tmp/a)"
exit 0
