#!/usr/bin/env bash
# Build the splitvm test guest (tests/guest) and print the image path.
# Output: target/test-guest/splitvm-test-guest.elf (PVH ELF, see tests/guest/README.md)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
make -s -C "$REPO/tests/guest" >&2
echo "$REPO/target/test-guest/splitvm-test-guest.elf"
