#!/bin/bash
# The whole splitvm test suite, as CI runs it (.ci/run):
#   1. set-up (packages, release build, guest kernel/initramfs, test guest, peers)
#   2. cargo fmt --check and clippy -D warnings
#   3. cargo test: unit tests, the host-side vhost-user driver tests against
#      our back ends, and the vmm tests under KVM with the freestanding guest
#   4. end-to-end: QEMU (TCG) boots a Debian kernel whose devices our back
#      ends serve (tests/e2e/qemu-*.sh); DPDK's virtio-user drives our net
#      back end (tests/e2e/dpdk-*.sh)
# Prints one line per step and a closing "suite: N passed, M failed".
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

passed=0
failed=0
failures=()
step() {
    local name=$1; shift
    echo
    echo "== test: $name"
    local t0=$SECONDS
    if "$@"; then
        passed=$((passed + 1))
        echo "== ok: $name ($((SECONDS - t0))s)"
    else
        failed=$((failed + 1))
        failures+=("$name")
        echo "== FAILED: $name ($((SECONDS - t0))s)"
    fi
}

scripts/setup.sh || { echo "suite: set-up failed"; echo "0 passed, 1 failed"; exit 1; }
export PATH="$ROOT/build/peers/bin:$PATH"

step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy -D warnings" cargo clippy --workspace --all-targets --locked -- -D warnings
# Debug builds of the daemons for the driver tests: overflow checks on, so a
# guest's or front end's bad input that would overflow shows up as a failure.
step "cargo build (debug)" cargo build --workspace --locked
step "cargo test" env SPLITVM_BIN_DIR="$ROOT/target/debug" cargo test --workspace --locked

step "fuzz (bounded)" scripts/fuzz.sh 30
export SPLITVM_BIN_DIR="$ROOT/target/release"
for t in tests/e2e/qemu-*.sh tests/e2e/dpdk-*.sh; do
    [[ -f "$t" ]] || continue
    step "e2e $(basename "$t" .sh)" bash "$t"
done

echo
for f in "${failures[@]}"; do echo "failed: $f"; done
echo "suite: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
