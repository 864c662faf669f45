#!/bin/bash
# Set up a fresh Debian 12 machine for splitvm: host packages, release
# binaries, the guest kernel and initramfs for QEMU tests, the freestanding
# test guest, and the third-party peer back ends the tests compare against.
# Idempotent and cached: a second run only rebuilds what changed.
#
#   scripts/setup.sh            everything
#   scripts/setup.sh --quick    skip the peers (no cargo install)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
quick=0
[[ "${1:-}" == "--quick" ]] && quick=1

step() { echo "== setup: $*"; }

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install a Rust toolchain (1.80 or newer) first" >&2
    exit 1
fi

step "host packages"
# Installs only what is missing (so it needs root only the first time).
scripts/install-deps.sh

step "release build"
cargo build --release --workspace --locked

step "guest kernel and initramfs (QEMU TCG tests)"
scripts/guest-kernel.sh
scripts/initramfs.sh

step "freestanding test guest (vmm tests)"
make -s -C tests/guest

if [[ $quick -eq 0 ]]; then
    step "peer back ends"
    scripts/install-peers.sh
fi
scripts/install-fuzz.sh # cargo-fuzz for scripts/fuzz.sh
step "done: binaries in target/release, guest in build/guest"
