#!/bin/bash
# Fetch the Debian cloud kernel (the package linux-image-cloud-amd64 depends
# on) for the end-to-end guests, unpack it under build/guest/kernel/, build
# its modules.dep (the .deb ships none) and leave:
#   build/guest/vmlinuz                          the kernel
#   build/guest/kernel/lib/modules/<KVER>/       the module tree
#   build/guest/kver                             <KVER>
# Cached: once those exist, a second run does nothing (and needs no network).
# Set SPLITVM_KERNEL_META=linux-image-6.12-cloud-amd64 to follow another
# meta-package (the 6.12 kernel, whose modules are .ko.xz), or
# SPLITVM_KERNEL_PKG=linux-image-<KVER> to name the kernel package itself;
# asking for a different package than the cached one refetches.
# Needs: apt-get, dpkg, depmod (kmod). Run scripts/install-deps.sh first.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
GUEST="$ROOT/build/guest"
KDIR="$GUEST/kernel"
DL="$GUEST/dl"
STAMP="$GUEST/kernel.stamp"

want_pkg=${SPLITVM_KERNEL_PKG:-}
meta=${SPLITVM_KERNEL_META:-linux-image-cloud-amd64}

# One fetcher at a time (parallel test runs share build/guest/).
mkdir -p "$GUEST"
exec 9> "$GUEST/.kernel.lock"
flock 9

if [[ -f "$STAMP" && -f "$GUEST/vmlinuz" && -f "$GUEST/kver" ]]; then
    read -r have_pkg have_meta < "$STAMP" || true
    kver=$(cat "$GUEST/kver")
    same=no
    if [[ -n "$want_pkg" ]]; then
        [[ "$want_pkg" == "$have_pkg" ]] && same=yes
    else
        [[ "$meta" == "${have_meta:-linux-image-cloud-amd64}" ]] && same=yes
    fi
    if [[ $same == yes && -s "$KDIR/lib/modules/$kver/modules.dep" ]]; then
        echo "guest-kernel: cached $have_pkg ($GUEST/vmlinuz)"
        exit 0
    fi
fi

mkdir -p "$DL"

if [[ -z "$want_pkg" ]]; then
    find_pkg() {
        apt-cache depends "$meta" 2>/dev/null \
            | awk '/Depends: linux-image-/{print $2; exit}'
    }
    want_pkg=$(find_pkg || true)
    if [[ -z "$want_pkg" ]]; then
        echo "guest-kernel: package lists do not know $meta; running apt-get update"
        apt-get update -qq
        want_pkg=$(find_pkg)
    fi
fi
[[ -n "$want_pkg" ]] || { echo "guest-kernel: cannot resolve the cloud kernel package" >&2; exit 1; }
echo "guest-kernel: using $want_pkg"

# apt-get download drops privileges to _apt when it can; the sandbox user
# must be able to write the directory, or apt warns. Download as root into
# our own dir instead.
rm -f "$DL"/*.deb
( cd "$DL" && apt-get download -q -o APT::Sandbox::User=root "$want_pkg" >/dev/null ) || {
    echo "guest-kernel: apt-get download $want_pkg failed; trying after apt-get update" >&2
    apt-get update -qq
    ( cd "$DL" && apt-get download -q -o APT::Sandbox::User=root "$want_pkg" >/dev/null )
}
deb=$(ls "$DL"/"${want_pkg}"_*.deb | head -n1)

rm -rf "$KDIR" "$GUEST/vmlinuz" "$GUEST/kver" "$STAMP"
mkdir -p "$KDIR"
dpkg -x "$deb" "$KDIR"

# The kernel image: boot/vmlinuz-<KVER>
vml=$(ls "$KDIR"/boot/vmlinuz-* | head -n1)
kver=${vml##*/vmlinuz-}
[[ -d "$KDIR/lib/modules/$kver" ]] || { echo "guest-kernel: no module tree for $kver" >&2; exit 1; }
depmod -b "$KDIR" "$kver"
cp "$vml" "$GUEST/vmlinuz.tmp" && mv "$GUEST/vmlinuz.tmp" "$GUEST/vmlinuz"
echo "$kver" > "$GUEST/kver"
echo "$want_pkg ${SPLITVM_KERNEL_PKG:+-}${SPLITVM_KERNEL_PKG:-$meta}" > "$STAMP"
rm -f "$deb"
echo "guest-kernel: $kver ready ($GUEST/vmlinuz, $KDIR/lib/modules/$kver)"
