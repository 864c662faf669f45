#!/usr/bin/env bash
# Reconnect time of a restarted back end under `vmm` (issue 5): the blk back
# end is killed (SIGKILL) under the test guest's stress mode and started
# again after 200 ms; each repetition reports back end listening (its
# "listening on" log line) -> first guest request completed after the
# reconnect (vmm watches the used ring and reports the time on its API),
# with the split: backoff wait + handshake + ring restart, then the first
# completion. Ends with the median. Not a timed test: a benchmark.
#
#   scripts/bench-reconnect.sh [REPS]     # default 7
#
# Uses target/debug (or $SPLITVM_BIN_DIR) binaries; builds them first.
# Note: the reconnect backoff (50 ms doubling to 1 s) dominates: a back end
# that comes back 200 ms after the kill is found at the attempt ~350 ms
# after the kill.
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_REPS="${1:-${BENCH_REPS:-7}}"
cargo build --workspace --quiet
make -C tests/guest --quiet
cargo test --quiet -p splitvm-tests --test vmm_restart -- --ignored --nocapture \
    bench_reconnect 2>&1 | grep -E '^(reconnect|bench_reconnect)'
