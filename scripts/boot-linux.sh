#!/usr/bin/env bash
# Boot a Debian cloud kernel and a busybox initramfs under `vmm` with blk,
# net and rng vhost-user back ends; the guest's /init checks each device
# and prints BOOT-LINUX PASS or BOOT-LINUX FAIL <why>, then reboots (which
# ends vmm).
#
# Needs a hardware-backed /dev/kvm (vmx or svm). On a software KVM (such as
# KVM-PVM, which cannot boot Linux) it prints a SKIP line and exits 77.
#
# Environment:
#   SPLITVM_BIN_DIR  where vmm and the back ends are (default target/debug)
#   KERNEL           a bzImage to use instead of fetching Debian's cloud kernel
#   MODULES_DIR      that kernel's /lib/modules/<version> (needed with KERNEL
#                    when virtio drivers are modules)
#   WORK             scratch directory (default build/boot-linux)
#   BOOT_TIMEOUT     seconds before the boot counts as hung (default 180)
#   TAP              tap for vhost-user-net (default svmboot0, created if missing)
#   FORCE=1          try even when KVM looks software-only
# Exit: 0 pass, 1 fail, 77 skipped.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN_DIR=${SPLITVM_BIN_DIR:-$ROOT/target/debug}
WORK=${WORK:-$ROOT/build/boot-linux}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-180}

say() { echo "boot-linux: $*" >&2; }
die() { say "FAIL: $*"; exit 1; }
skip() { echo "boot-linux: SKIP: $*"; exit 77; }

kvm_is_hardware() {
    [ -e /dev/kvm ] || return 1
    [ -d /sys/module/kvm_pvm ] && return 1
    grep -qwE 'vmx|svm' /proc/cpuinfo
}

if [ "${FORCE:-0}" != 1 ] && ! kvm_is_hardware; then
    skip "/dev/kvm is not hardware-backed (no vmx/svm in /proc/cpuinfo, or KVM-PVM): it cannot boot Linux; set FORCE=1 to try anyway"
fi

for b in vmm vhost-user-blk; do
    [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b missing: run cargo build --workspace"
done
for t in busybox cpio depmod modprobe; do
    command -v "$t" >/dev/null || die "$t missing: apt-get install busybox-static cpio kmod"
done

mkdir -p "$WORK"
cd "$WORK"

# --- kernel ---------------------------------------------------------------
if [ -z "${KERNEL:-}" ]; then
    if [ ! -f kernel.done ]; then
        say "fetching Debian's cloud kernel"
        pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
        [ -n "$pkg" ] || die "cannot resolve linux-image-cloud-amd64 (apt-get update?)"
        rm -rf kpkg && mkdir kpkg
        (cd kpkg && apt-get download "$pkg" >/dev/null) || die "apt-get download $pkg failed"
        rm -rf kernel && dpkg -x kpkg/*.deb kernel
        touch kernel.done
    fi
    KERNEL=$(ls kernel/boot/vmlinuz-* | head -1)
    KVER=${KERNEL##*/vmlinuz-}
    MODULES_DIR=$WORK/kernel/lib/modules/$KVER
    depmod -b "$WORK/kernel" "$KVER"
fi
[ -f "$KERNEL" ] || die "kernel $KERNEL not found"

# --- initramfs ------------------------------------------------------------
rm -rf initramfs && mkdir -p initramfs/{bin,dev,proc,sys,mods}
cp "$(command -v busybox)" initramfs/bin/busybox
for a in sh mount insmod dd cmp ls ip cat echo head od hexdump sleep reboot grep wc sync; do
    ln -sf busybox "initramfs/bin/$a"
done
: > initramfs/mods/order
if [ -n "${MODULES_DIR:-}" ] && [ -d "$MODULES_DIR" ]; then
    base=$(dirname "$(dirname "$MODULES_DIR")")/..
    kver=$(basename "$MODULES_DIR")
    n=0
    for m in virtio_mmio virtio_blk virtio_net virtio_rng; do
        modprobe -d "$base" -S "$kver" --show-depends "$m" 2>/dev/null | awk '$1=="insmod"{print $2}'
    done | awk '!seen[$0]++' | while read -r ko; do
        n=$((n + 1))
        out=initramfs/mods/$(printf '%02d' "$n")-$(basename "${ko%.xz}")
        case "$ko" in
            *.xz) xz -dc "$ko" > "$out" ;;
            *.zst) zstd -qdc "$ko" > "$out" ;;
            *) cp "$ko" "$out" ;;
        esac
        echo "/mods/$(basename "$out")" >> initramfs/mods/order
    done
fi
cat > initramfs/init <<'INIT'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod "$m" 2>/dev/null; done
fail() { echo "BOOT-LINUX FAIL $*"; sync; reboot -f; }
sleep 1
[ -b /dev/vda ] || fail "no /dev/vda"
dd if=/dev/urandom of=/tmp/p bs=4096 count=16 2>/dev/null
dd if=/tmp/p of=/dev/vda bs=4096 seek=256 conv=fsync 2>/dev/null || fail "write to vda"
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/q bs=4096 skip=256 count=16 2>/dev/null || fail "read from vda"
cmp /tmp/p /tmp/q || fail "vda read back differs"
echo "blk OK"
if [ "$WANT_NET" = 1 ]; then
    [ -e /sys/class/net/eth0 ] || fail "no eth0"
    mac=$(cat /sys/class/net/eth0/address)
    echo "net: eth0 $mac"
    [ -z "$WANT_MAC" ] || [ "$mac" = "$WANT_MAC" ] || fail "eth0 MAC $mac, back end says $WANT_MAC"
    ip link set eth0 up || fail "eth0 up"
    echo "net OK"
fi
[ -c /dev/hwrng ] || fail "no /dev/hwrng"
n=$(dd if=/dev/hwrng bs=64 count=1 2>/dev/null | wc -c)
[ "$n" -eq 64 ] || fail "hwrng gave $n bytes"
echo "rng OK"
echo "BOOT-LINUX PASS"
sync
reboot -f
INIT
chmod +x initramfs/init
(cd initramfs && find . | cpio -o -H newc 2>/dev/null | gzip -1) > initramfs.gz

# --- back ends ------------------------------------------------------------
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
rm -f ./*.sock ./*.sock0
truncate -s 64M disk.img
"$BIN_DIR/vhost-user-blk" --socket blk.sock --image disk.img 2>blk.log & pids+=($!)
devices=(--device "blk,socket=$WORK/blk.sock")
if [ -x "$BIN_DIR/vhost-user-rng" ]; then
    "$BIN_DIR/vhost-user-rng" --socket rng.sock 2>rng.log & pids+=($!)
    rng_sock=rng.sock
elif command -v vhost-device-rng >/dev/null; then
    vhost-device-rng --socket-path rngd.sock 2>rng.log & pids+=($!)
    rng_sock=rngd.sock0
else
    die "no rng back end: build vhost-user-rng or cargo install --locked vhost-device-rng"
fi
devices+=(--device "rng,socket=$WORK/$rng_sock")
want_net=0
want_mac=
if [ -x "$BIN_DIR/vhost-user-net" ]; then
    "$BIN_DIR/vhost-user-net" --socket net.sock --tap "${TAP:-svmboot0}" \
        --mac 52:54:00:12:34:56 2>net.log & pids+=($!)
    devices+=(--device "net,socket=$WORK/net.sock"); want_net=1; want_mac=52:54:00:12:34:56
elif command -v dpdk-testpmd >/dev/null; then
    sleep 600 | dpdk-testpmd --no-huge -m 512 --total-num-mbufs=8192 -l 0-1 \
        --vdev "net_vhost0,iface=$WORK/net.sock" -- --forward-mode=io >net.log 2>&1 & pids+=($!)
    devices+=(--device "net,socket=$WORK/net.sock"); want_net=1
else
    say "no net back end (vhost-user-net or dpdk-testpmd): booting without net"
fi
for s in blk.sock "$rng_sock" $([ $want_net = 1 ] && echo net.sock); do
    for _ in $(seq 100); do [ -S "$s" ] && break; sleep 0.1; done
    [ -S "$s" ] || die "back end socket $s never appeared"
done

# --- boot -----------------------------------------------------------------
say "booting $KERNEL"
set +e
timeout "$BOOT_TIMEOUT" "$BIN_DIR/vmm" --kernel "$KERNEL" --initramfs initramfs.gz \
    --cmdline "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=-1 WANT_NET=$want_net WANT_MAC=$want_mac" \
    --memory 512M --cpus 2 "${devices[@]}" --serial file="$WORK/serial.log" 2>vmm.log
rc=$?
set -e
tail -n 30 serial.log >&2 || true
cat vmm.log >&2
[ $rc -eq 124 ] && die "guest did not finish within ${BOOT_TIMEOUT}s"
grep -q "BOOT-LINUX PASS" serial.log || die "no BOOT-LINUX PASS on the console (vmm exit $rc)"
[ $rc -eq 0 ] || die "vmm exited with $rc"
echo "boot-linux: PASS"
