#!/bin/bash
# Install the host packages the end-to-end tests need (QEMU TCG front end,
# qemu-storage-daemon as a reference back end, busybox for the guest
# initramfs, kmod for depmod, e2fsprogs for e2fsck on the host, ...).
#
# Idempotent: only packages that are not installed yet are installed, and
# `apt-get update` runs only when something has to be installed.
# Run as root (CI runs as root on a fresh Debian 12 machine).
set -euo pipefail

PKGS=(
    qemu-system-x86      # qemu-system-x86_64 (TCG front end)
    qemu-system-common   # qemu-storage-daemon (reference vhost-user-blk back end)
    busybox-static       # guest userland in the initramfs
    cpio                 # build the initramfs (newc)
    gzip                 # compress the initramfs
    kmod                 # depmod for the guest module tree
    e2fsprogs            # e2fsck on the host
    xz-utils             # decompress guest kernel modules (.ko.xz)
    zstd                 # in case a kernel ships .ko.zst modules
    iproute2             # later net tests
    coreutils            # timeout, md5sum, truncate
    diffutils            # cmp
    util-linux           # flock (serializes builds under build/guest)
    procps               # ps, for looking at leftover processes when debugging
    dpdk-dev             # dpdk-testpmd: a third-party vhost-user front end for net
    gcc                  # builds the freestanding test guest (tests/guest)
    make
    binutils             # ld, objcopy for the test guest
    python3              # small helpers in the e2e tests
    strace               # for diagnosing the sandbox
)

missing=()
for p in "${PKGS[@]}"; do
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ "$st" == "install ok installed" ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
    echo "install-deps: all packages present"
    exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    SUDO=(sudo)
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" >/dev/null
echo "install-deps: done"
