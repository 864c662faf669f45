#!/bin/bash
# One change at a time: our back ends in alternation against themselves with each speed-up
# on or off (same pinning and load as scripts/bench.sh), medians of REPS runs.
#   base      defaults (preadv, no polling)
#   poll50    --poll-us 50 (adaptive busy-poll)
#   io_uring  --aio io_uring (blk only; with --sandbox off until blk's seccomp allowlist
#             names io_uring_enter)
#   noevidx   the load generator does not negotiate EVENT_IDX (notification suppression off)
#
#   scripts/bench-ablation.sh [--reps N] [--duration 3s] [--out DIR]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
REPS=3
DUR=3s
OUT=build/bench/ablation-$(date -u +%Y%m%dT%H%M%SZ)
while (($#)); do
    case "$1" in
        --reps) REPS=$2; shift 2 ;;
        --duration) DUR=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        *) echo "bench-ablation.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ $(id -u) == 0 ]] || { echo "bench-ablation.sh: needs root" >&2; exit 1; }
cargo build --release --locked -q -p vhost-user-bench -p vhost-user-blk -p vhost-user-net
mkdir -p "$OUT/bin"
for b in vhost-user-bench vhost-user-blk vhost-user-net; do cp target/release/$b "$OUT/bin/"; done
BIN=$(cd "$OUT/bin" && pwd)
LG_CPU=${LG_CPU:-0}
BE_CPU=${BE_CPU:-1}
IMG=/dev/shm/splitvm-ablation-$$.img
trap 'rm -f "$IMG"' EXIT
head -c 256M /dev/urandom > "$IMG"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/machine.txt"

one() { # LABEL KIND SPAWN ARGS...
    local label=$1 kind=$2 spawn=$3
    shift 3
    "$BIN/vhost-user-bench" "$kind" --label "$label" --cpu "$LG_CPU" --spawn "taskset -c $BE_CPU $spawn" \
        --duration "$DUR" --json "$OUT/results.jsonl" --log "$OUT/$label.log" "$@" 2>>"$OUT/runs.txt" | sed -n 2p \
        || echo "  ($label $kind $* failed)"
}

BLK="$BIN/vhost-user-blk --socket {sock} --image $IMG"
NET="$BIN/vhost-user-net --socket {sock} --tap {tap}"
for ((i = 1; i <= REPS; i++)); do
    for qd in 32 1; do
        one base blk "$BLK" --rw randread --bs 4k --qd $qd
        one poll50 blk "$BLK --poll-us 50" --rw randread --bs 4k --qd $qd
        one io_uring blk "$BLK --aio io_uring --sandbox off" --rw randread --bs 4k --qd $qd
        one noevidx blk "$BLK" --rw randread --bs 4k --qd $qd --no-event-idx
    done
    one base blk "$BLK" --rw randwrite --bs 64k --qd 32
    one io_uring blk "$BLK --aio io_uring --sandbox off" --rw randwrite --bs 64k --qd 32
    one base net "$NET" --qd 256 --frame 64 --netns svba-$$ --idle 1s
    one poll50 net "$NET --poll-us 50" --qd 256 --frame 64 --netns svba-$$ --idle 1s
    one noevidx net "$NET" --qd 256 --frame 64 --netns svba-$$ --no-event-idx
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"
echo
echo "== each variant against base (ratio = variant / base)"
for v in poll50 io_uring noevidx; do
    grep -E "\"label\":\"(base|$v)\"" "$OUT/results.jsonl" > "$OUT/$v.jsonl" || true
    "$BIN/vhost-user-bench" report --ours "$v" "$OUT/$v.jsonl" | grep -v "^- \|^Targets\|^$" | tee -a "$OUT/table.md"
done
