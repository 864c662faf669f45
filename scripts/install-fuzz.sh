#!/bin/bash
# Installs what scripts/fuzz.sh needs: cargo-fuzz (from crates.io; it drives
# libFuzzer, which libfuzzer-sys builds from source with the C++ compiler).
# Works on the stable toolchain: fuzz.sh builds with `--sanitizer none`, the
# one cargo-fuzz mode that needs no nightly-only rustc flag. Idempotent.
set -euo pipefail
CARGO_FUZZ_VERSION=0.13.2

if ! command -v g++ >/dev/null 2>&1; then
    echo "install-fuzz: installing g++ (libFuzzer is C++)"
    apt-get install -y g++
fi
if cargo fuzz --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
    exit 0
fi
echo "install-fuzz: cargo install cargo-fuzz $CARGO_FUZZ_VERSION"
cargo install --locked "cargo-fuzz@$CARGO_FUZZ_VERSION"
