#!/bin/bash
# CI entry point for the end-to-end tests: host packages (as root), the
# guest kernel and initramfs, a release build of the back ends, then every
# tests/e2e/qemu-*.sh. Exit status 0 only if all of them passed.
#   SPLITVM_E2E_PACKAGES  cargo packages to build (default: vhost-user-blk)
#   SPLITVM_E2E_NO_BUILD=1  skip the cargo build (e.g. with SPLITVM_BIN_DIR set)
#   SPLITVM_E2E_ONLY="qemu-blk ..."  run only these scripts
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

if [[ $(id -u) -eq 0 ]]; then
    scripts/install-deps.sh || { echo "run-all: install-deps failed"; exit 1; }
else
    echo "run-all: not root, skipping scripts/install-deps.sh"
fi
scripts/guest-kernel.sh || { echo "run-all: guest-kernel failed"; exit 1; }
scripts/initramfs.sh || { echo "run-all: initramfs failed"; exit 1; }

if [[ ${SPLITVM_E2E_NO_BUILD:-0} != 1 ]]; then
    pkgs=()
    for p in ${SPLITVM_E2E_PACKAGES:-vhost-user-blk}; do pkgs+=(-p "$p"); done
    echo "run-all: cargo build --release ${pkgs[*]}"
    cargo build --release "${pkgs[@]}" || { echo "run-all: cargo build failed"; exit 1; }
fi

failed=()
passed=()
for t in tests/e2e/qemu-*.sh; do
    name=$(basename "$t" .sh)
    if [[ -n "${SPLITVM_E2E_ONLY:-}" && " $SPLITVM_E2E_ONLY " != *" $name "* ]]; then
        continue
    fi
    echo "===== $name ====="
    if bash "$t"; then passed+=("$name"); else failed+=("$name"); fi
done
echo "===== e2e summary: passed: ${passed[*]:-none}; failed: ${failed[*]:-none} ====="
((${#failed[@]} == 0))
