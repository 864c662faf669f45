#!/bin/bash
# Build build/guest/initramfs.gz (newc cpio, gzip) for the end-to-end guests:
#   /bin/busybox (+ applet symlinks)   from busybox-static on the host
#   /lib/modules/<KVER>/...             the virtio/fs modules we need, decompressed,
#                                       plus their dependencies from modules.dep
#   /etc/modules.order                  the order to insmod them in
#   /tests/*.sh, /tests/lib/*           copied from tests/e2e/guest/
#   /init                               mounts proc/sys/devtmpfs, loads the modules,
#                                       runs /tests/$splitvmtest.sh and prints
#                                       "SPLITVM-RESULT PASS" or
#                                       "SPLITVM-RESULT FAIL <why>", then poweroff -f
# The guest kernel comes from scripts/guest-kernel.sh (run it first; this
# script runs it if build/guest/kver is missing).
# Rebuilt only when an input changed (this script, busybox, the kernel,
# the module list, tests/e2e/guest/).
# Extra modules: SPLITVM_GUEST_MODULES="mod1 mod2" (names as in modules.dep).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
GUEST="$ROOT/build/guest"
OUT="$GUEST/initramfs.gz"
GUEST_TESTS="$ROOT/tests/e2e/guest"

# Modules the guests need. Names use '_' (modules.dep file names may use '-').
# Built-in ones (modules.builtin) are skipped; missing ones are an error
# unless listed in OPTIONAL_MODULES.
MODULES=(
    virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
    virtio_mmio
    virtio_blk
    failover net_failover virtio_net
    rng_core virtio_rng
    crc16 crc32c_generic libcrc32c mbcache jbd2 ext4 ext2
)
read -r -a extra <<< "${SPLITVM_GUEST_MODULES:-}"
MODULES+=("${extra[@]}")
# ext2 may not exist at all (CONFIG_EXT2_FS off, ext4 handles ext2);
# rng_core is built in when CONFIG_HW_RANDOM=y; crc libs vary.
OPTIONAL_MODULES=" ext2 rng_core crc16 crc32c_generic libcrc32c mbcache jbd2 "

BUSYBOX=${BUSYBOX:-}
if [[ -z "$BUSYBOX" ]]; then
    for b in /bin/busybox /usr/bin/busybox; do
        [[ -x "$b" ]] && { BUSYBOX=$b; break; }
    done
fi
[[ -n "$BUSYBOX" ]] || { echo "initramfs: busybox not found (apt-get install busybox-static)" >&2; exit 1; }
if file_out=$(LC_ALL=C readelf -d "$BUSYBOX" 2>/dev/null) && grep -q NEEDED <<<"$file_out"; then
    echo "initramfs: $BUSYBOX is dynamically linked; install busybox-static" >&2
    exit 1
fi

[[ -f "$GUEST/kver" ]] || "$ROOT/scripts/guest-kernel.sh"
KVER=$(cat "$GUEST/kver")
MODROOT="$GUEST/kernel/lib/modules/$KVER"
[[ -s "$MODROOT/modules.dep" ]] || { echo "initramfs: no modules.dep in $MODROOT; run scripts/guest-kernel.sh" >&2; exit 1; }

# One builder at a time (parallel test runs share build/guest/).
mkdir -p "$GUEST"
exec 9> "$GUEST/.initramfs.lock"
flock 9

# ---- input fingerprint: skip the rebuild when nothing changed ----
fingerprint() {
    {
        sha256sum "$0" "$BUSYBOX" "$GUEST/kernel.stamp" "$MODROOT/modules.dep" 2>/dev/null | cut -d' ' -f1
        echo "$KVER" "${MODULES[*]}"
        if [[ -d "$GUEST_TESTS" ]]; then
            (cd "$GUEST_TESTS" && find . -type f | LC_ALL=C sort | xargs -r sha256sum)
        fi
    } | sha256sum | cut -d' ' -f1
}
FP=$(fingerprint)
if [[ -s "$OUT" && -f "$OUT.inputs" && "$(cat "$OUT.inputs")" == "$FP" ]]; then
    echo "initramfs: up to date ($OUT)"
    exit 0
fi

STAGE="$GUEST/initramfs.root"
rm -rf "$STAGE"
mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,mnt,run,etc,tests/lib,root}
mkdir -p "$STAGE/lib/modules/$KVER"

# ---- busybox + applet symlinks ----
cp "$BUSYBOX" "$STAGE/bin/busybox"
while read -r applet; do
    [[ -z "$applet" || "$applet" == bin/busybox ]] && continue
    mkdir -p "$STAGE/$(dirname "$applet")"
    [[ -e "$STAGE/$applet" ]] || ln -s /bin/busybox "$STAGE/$applet"
done < <("$BUSYBOX" --list-full)
# Some busybox builds lack the mkfs.ext2 alias; mke2fs is the same applet.
for a in mkfs.ext2 mke2fs; do
    [[ -e "$STAGE/sbin/$a" ]] || ln -s /bin/busybox "$STAGE/sbin/$a"
done
# (sbin/mkfs.ext2 -> busybox only works if busybox knows the name; the guest
# tests call mke2fs.)
"$BUSYBOX" --list | grep -qx mkfs.ext2 || rm -f "$STAGE/sbin/mkfs.ext2"

# ---- modules: resolve dependencies from modules.dep, decompress, order ----
declare -A DEP PATHOF BUILTIN SEEN
while IFS= read -r line; do
    mod=${line%%:*}
    deps=${line#*:}
    name=$(basename "$mod"); name=${name%%.ko*}; name=${name//-/_}
    PATHOF[$name]=$mod
    DEP[$name]=""
    for d in $deps; do
        dn=$(basename "$d"); dn=${dn%%.ko*}; dn=${dn//-/_}
        DEP[$name]+="$dn "
    done
done < "$MODROOT/modules.dep"
if [[ -f "$MODROOT/modules.builtin" ]]; then
    while IFS= read -r b; do
        bn=$(basename "$b"); bn=${bn%%.ko*}; bn=${bn//-/_}
        BUILTIN[$bn]=1
    done < "$MODROOT/modules.builtin"
fi

ORDER=()
visit() {   # depth-first: dependencies before the module
    local m=$1 d
    [[ -n "${SEEN[$m]:-}" ]] && return 0
    SEEN[$m]=1
    for d in ${DEP[$m]}; do visit "$d"; done
    ORDER+=("$m")
}
for m in "${MODULES[@]}"; do
    m=${m//-/_}
    if [[ -n "${PATHOF[$m]:-}" ]]; then
        visit "$m"
    elif [[ -n "${BUILTIN[$m]:-}" ]]; then
        echo "initramfs: $m is built in"
    elif [[ "$OPTIONAL_MODULES" == *" $m "* ]]; then
        echo "initramfs: $m not in this kernel (optional, skipped)"
    else
        echo "initramfs: module $m not found in $MODROOT" >&2
        exit 1
    fi
done

: > "$STAGE/etc/modules.order"
for m in "${ORDER[@]}"; do
    src="$MODROOT/${PATHOF[$m]}"
    rel=${PATHOF[$m]%.xz}; rel=${rel%.zst}; rel=${rel%.gz}
    dst="$STAGE/lib/modules/$KVER/$rel"
    mkdir -p "$(dirname "$dst")"
    case "$src" in
        *.ko.xz)  xz -dc "$src" > "$dst" ;;
        *.ko.zst) zstd -qdc "$src" > "$dst" ;;
        *.ko.gz)  gzip -dc "$src" > "$dst" ;;
        *)        cp "$src" "$dst" ;;
    esac
    echo "$rel" >> "$STAGE/etc/modules.order"
done
echo "initramfs: modules: ${ORDER[*]}"

# ---- guest tests ----
if [[ -d "$GUEST_TESTS" ]]; then
    cp "$GUEST_TESTS"/*.sh "$STAGE/tests/" 2>/dev/null || true
    [[ -d "$GUEST_TESTS/lib" ]] && cp -r "$GUEST_TESTS/lib/." "$STAGE/tests/lib/"
fi

# ---- /init ----
cat > "$STAGE/init" <<'INIT'
#!/bin/sh
# splitvm e2e guest init (generated by scripts/initramfs.sh)
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
KVER=$(uname -r)

result() {   # print the one result line and power off
    echo "SPLITVM-RESULT $*"
    sync
    poweroff -f
    sleep 5
    echo "SPLITVM-RESULT FAIL poweroff did not stop the VM"
    exit 1
}

for m in $(cat /etc/modules.order); do
    insmod "/lib/modules/$KVER/$m" 2>/tmp/insmod.err || {
        grep -q 'File exists' /tmp/insmod.err || echo "init: insmod $m failed: $(cat /tmp/insmod.err)"
    }
done

# Test parameters come from the kernel command line (no dots in names).
TEST=
TIMEOUT=100
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        splitvmtest=*) TEST=${arg#splitvmtest=} ;;
        splitvmtimeout=*) TIMEOUT=${arg#splitvmtimeout=} ;;
        splitvm*=*) export "$arg" ;;
    esac
done
export SPLITVM_TEST="$TEST"

if [ -z "$TEST" ]; then
    result "FAIL no splitvmtest= on the kernel command line"
fi
case "$TEST" in
    *[!A-Za-z0-9_-]*) result "FAIL bad test name '$TEST'" ;;
esac
if [ ! -f "/tests/$TEST.sh" ]; then
    result "FAIL no such guest test /tests/$TEST.sh"
fi

echo "init: running guest test $TEST (timeout ${TIMEOUT}s)"
rm -f /tmp/splitvm-why /tmp/splitvm-rc
# Run the test in a subshell that records its exit code in a file: ash does
# not reap a finished background job until `wait`, so `kill -0` cannot tell.
( sh "/tests/$TEST.sh"; echo $? > /tmp/splitvm-rc ) &
# Watchdog: a test stuck in uninterruptible I/O cannot be killed, so poll.
t=0
while [ ! -s /tmp/splitvm-rc ]; do
    if [ $t -ge $((TIMEOUT * 5)) ]; then
        result "FAIL guest test $TEST timed out after ${TIMEOUT}s"
    fi
    usleep 200000
    t=$((t + 1))
done
rc=$(cat /tmp/splitvm-rc)
if [ "$rc" = 0 ]; then
    result "PASS"
fi
why=$(cat /tmp/splitvm-why 2>/dev/null)
result "FAIL ${why:-guest test $TEST exited with $rc}"
INIT
chmod 755 "$STAGE/init"

# ---- pack ----
tmp="$OUT.tmp"
(cd "$STAGE" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --owner=0:0) \
    | gzip -6 > "$tmp"
mv "$tmp" "$OUT"
echo "$FP" > "$OUT.inputs"
echo "initramfs: built $OUT ($(du -h "$OUT" | cut -f1))"
