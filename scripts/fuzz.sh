#!/bin/bash
# Runs the fuzz harnesses' tests, then builds every fuzz target (fuzz/,
# cargo-fuzz + libFuzzer) and runs each for a bounded time on one core,
# starting from its checked-in seed corpus (fuzz/corpus/<target>) after
# replaying every saved crash input (fuzz/regressions/<target>). Fails if any
# input panics, aborts, hangs (10 s per input), or exceeds 2 GiB of RSS.
#
#   scripts/fuzz.sh [seconds-per-target] [target...]    (default 60 s, all targets)
#   FUZZ_RUNS=N scripts/fuzz.sh 0 blk_request           stop after N executions instead
#   FUZZ_SANITIZER=address scripts/fuzz.sh ...          ASan build (RUSTC_BOOTSTRAP=1 on stable)
#
# New inputs the fuzzer finds go to fuzz/target/work/<target>/corpus (kept
# between runs, not committed); a crash leaves its input in
# fuzz/target/work/<target>/crash-* (reproduce: the binary plus that file).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

secs=${1:-60}
[[ $# -gt 0 ]] && shift
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(vhost_user_messages blk_request net_request virtio_mmio_registers)
sanitizer=${FUZZ_SANITIZER:-none}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is missing; run scripts/install-fuzz.sh" >&2
    exit 1
fi
build=fuzz/target
if [[ $sanitizer != none ]]; then
    # Sanitizers are a nightly rustc flag; the stable compiler has them behind this.
    export RUSTC_BOOTSTRAP=1
    build=fuzz/target/$sanitizer # its own build, not mixed with the plain one
fi

# The harnesses' own tests: seeds and saved crash inputs replayed, and the
# seeds checked to still reach what they are for (a harness that rots into
# testing nothing fails here, not silently).
echo "fuzz: harness tests (fuzz/tests/corpus.rs)"
cargo test --manifest-path fuzz/Cargo.toml --tests -q

echo "fuzz: building ${targets[*]} (sanitizer $sanitizer)"
for t in "${targets[@]}"; do
    cargo fuzz build --sanitizer "$sanitizer" --release --target-dir "$build" "$t"
done
bindir=$build/x86_64-unknown-linux-gnu/release

failed=()
for t in "${targets[@]}"; do
    work=fuzz/target/work/$t
    mkdir -p "$work/corpus"
    bin=$bindir/$t
    if compgen -G "fuzz/regressions/$t/*" >/dev/null; then
        echo "fuzz: $t: replaying fuzz/regressions/$t"
        if ! "$bin" -timeout=10 -rss_limit_mb=2048 fuzz/regressions/"$t"/* >"$work/regressions.log" 2>&1; then
            tail -30 "$work/regressions.log"
            echo "fuzz: $t: a saved crash input fails again" >&2
            failed+=("$t (regression)")
            continue
        fi
    fi
    limit=(-max_total_time="$secs")
    [[ -n ${FUZZ_RUNS:-} ]] && limit=(-runs="$FUZZ_RUNS")
    # LeakSanitizer (with ASan) flags glibc's record of a per-input thread's
    # thread-local destructors (32 bytes from __cxa_thread_atexit_impl), not
    # project code; fd leaks are checked by the harness itself.
    [[ $sanitizer == address ]] && limit+=(-detect_leaks=0)
    echo "fuzz: $t: ${limit[*]}"
    log=$work/fuzz.log
    rc=0
    "$bin" "$work/corpus" "fuzz/corpus/$t" "${limit[@]}" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$work/" -print_final_stats=1 >"$log" 2>&1 || rc=$?
    if [[ $rc -eq 0 ]]; then
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
        cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
        echo "fuzz: $t: ok, $execs executions, $rate exec/s, $cov"
    else
        grep -vE '^#[0-9]+' "$log" | tail -40
        # A signal libFuzzer does not catch (SIGPIPE, SIGKILL) leaves no input behind.
        [[ $rc -gt 128 ]] && echo "fuzz: $t: killed by signal $((rc - 128)) ($(kill -l $((rc - 128)) 2>/dev/null))" >&2
        echo "fuzz: $t: FAILED; input saved as: $(ls "$work"/crash-* "$work"/timeout-* "$work"/oom-* 2>/dev/null | tr '\n' ' ')" >&2
        failed+=("$t")
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz: failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: all ${#targets[@]} targets clean"
