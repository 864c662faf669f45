#!/bin/bash
# Our back ends against third-party ones, on this machine, in one run:
#   vhost-user-blk vs qemu-storage-daemon (vhost-user-blk export, aio=io_uring), same raw
#                    image on tmpfs, same load;
#   vhost-user-net vs DPDK testpmd (net_vhost -> net_tap, --forward-mode=io), same front end;
#   vhost-user-rng vs vhost-device-rng (crates.io), each with its default source of the
#                    kernel's CSPRNG (ours: getrandom through the vDSO; theirs: /dev/urandom).
# Each pair runs in alternation (A B A B ...), the load generator pinned to one CPU and the
# back end to another, REPS times; the table shows medians, the spread (min..max) and ratios.
#
#   scripts/bench.sh [--reps N] [--duration 3s] [--only blk,net,rng] [--targets] [--quick] [--out DIR]
#   --targets: only the workloads the issue sets targets for (blk 4k randread QD32 and QD1,
#              net 64 B TX, rng), e.g. with more --reps on a noisy machine.
#
# Set-up (once): scripts/setup.sh --quick && scripts/install-bench-deps.sh (root: netns, apt).
# Environment: OURS_ARGS  extra arguments for our three back ends (e.g. "--sandbox off");
#              POLL_US  our blk and net adaptive busy-poll window (default 50; 0 = off);
#              QSD_IOTHREAD=0  run qemu-storage-daemon's export in its main loop instead
#                              of an iothread (the iothread is as fast or faster here);
#              LG_CPU / BE_CPU  CPUs for the load generator / the back end (default 0 / 1).
# Never part of the test suite; timings are only ever reported, not asserted.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

REPS=3
DUR=3s
WARM=1s
ONLY=blk,net,rng
OUT=""
TARGETS=0
while (($#)); do
    case "$1" in
        --reps) REPS=$2; shift 2 ;;
        --duration) DUR=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --quick) REPS=1; DUR=1s; WARM=300ms; shift ;;
        --targets) TARGETS=1; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

[[ $(id -u) == 0 ]] || { echo "bench.sh: needs root (network namespaces, taps)" >&2; exit 1; }
VDR=build/peers/bin/vhost-device-rng
for tool in qemu-storage-daemon dpdk-testpmd ip taskset; do
    command -v $tool >/dev/null || missing=1
done
[[ -x $VDR ]] || missing=1
if [[ -n ${missing:-} ]]; then
    echo "== bench: installing what the comparison needs"
    scripts/install-bench-deps.sh
fi

echo "== bench: release build"
cargo build --release --locked -q -p vhost-user-bench -p vhost-user-blk -p vhost-user-net -p vhost-user-rng

NCPU=$(nproc)
LG_CPU=${LG_CPU:-0}
BE_CPU=${BE_CPU:-$((NCPU > 1 ? 1 : 0))}
OURS_ARGS=${OURS_ARGS:-}
POLL_US=${POLL_US:-50}
QSD_IOTHREAD=${QSD_IOTHREAD:-1}
OUT=${OUT:-build/bench/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT/bin"
# A private copy: a rebuild of target/release during the run cannot change what is measured.
for b in vhost-user-bench vhost-user-blk vhost-user-net vhost-user-rng; do
    cp target/release/$b "$OUT/bin/"
done
BIN=$(cd "$OUT/bin" && pwd)
BENCH=$BIN/vhost-user-bench
RES=$OUT/results.jsonl
: > "$RES"
IMG=/dev/shm/splitvm-bench-$$.img
NS=svb-$$
trap 'rm -f "$IMG"; ip netns del $NS 2>/dev/null || true' EXIT

{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "host: $(uname -r), $NCPU CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "pinning: load generator CPU $LG_CPU, back end CPU $BE_CPU; reps $REPS, $WARM warm-up + $DUR measured"
    echo "qemu-storage-daemon: $(qemu-storage-daemon --version | head -1)"
    echo "dpdk-testpmd: $(dpkg-query -W -f '${Version}' dpdk-dev 2>/dev/null)"
    echo "vhost-device-rng: $($VDR --version 2>/dev/null)"
    echo "ours: blk/net --poll-us $POLL_US, extra args: ${OURS_ARGS:-none}"
    echo "qemu-storage-daemon: aio=io_uring, $( ((QSD_IOTHREAD)) && echo 'export in an iothread' || echo 'export in the main loop')"
} | tee "$OUT/machine.txt"

# run LABEL KIND SPAWN ARGS...: one measured run; a failure is logged and the run retried once.
run() {
    local label=$1 kind=$2 spawn=$3
    shift 3
    local try rc
    for try in 1 2; do
        rc=0
        "$BENCH" "$kind" --label "$label" --cpu "$LG_CPU" --spawn "taskset -c $BE_CPU $spawn" \
            --duration "$DUR" --warmup "$WARM" --json "$RES" --log "$OUT/$label-$kind.log" "$@" \
            >>"$OUT/runs.txt" 2>&1 || rc=$?
        case $rc in
            0) tail -n 2 "$OUT/runs.txt" | head -n 1; return 0 ;;
            3) echo "  ($label $kind $*: ran, but nothing was delivered; see $OUT/runs.txt)"; return 0 ;;
        esac
        echo "  ($label $kind $* failed, try $try; see $OUT/runs.txt)"
    done
}

# pair KIND OURS_SPAWN PEER_LABEL PEER_SPAWN [PEER_EXTRA --] ARGS...: alternate A B A B ...
pair() {
    local kind=$1 ours=$2 plabel=$3 peer=$4 pextra=()
    shift 4
    if [[ ${1:-} == --peer-args ]]; then pextra=($2); shift 2; fi
    local i
    for ((i = 1; i <= REPS; i++)); do
        run ours "$kind" "$ours" "$@"
        run "$plabel" "$kind" "$peer" "$@" "${pextra[@]}"
    done
}

if [[ ,$ONLY, == *,blk,* ]]; then
    echo "== blk: vhost-user-blk vs qemu-storage-daemon (aio=io_uring), 256 MiB image on tmpfs"
    head -c 256M /dev/urandom > "$IMG"
    OURS="$BIN/vhost-user-blk $OURS_ARGS --poll-us $POLL_US --socket {sock} --image $IMG"
    QSD="qemu-storage-daemon --blockdev driver=file,node-name=f0,filename=$IMG,aio=io_uring --blockdev driver=raw,node-name=d0,file=f0"
    EXPORT="type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path={sock},writable=on,num-queues=1"
    if ((QSD_IOTHREAD)); then
        QSD="$QSD --object iothread,id=iot0 --export $EXPORT,iothread=iot0"
    else
        QSD="$QSD --export $EXPORT"
    fi
    echo "$(printf '%-14s %-30s %11s %9s %9s %9s %9s %10s %6s %7s %6s' backend workload ops/s MB/s 'p50 us' 'p99 us' 'p99.9 us' 'cpu us/op' cpu% idle% errors)"
    pair blk "$OURS" qsd "$QSD" --rw randread --bs 4k --qd 32
    pair blk "$OURS" qsd "$QSD" --rw randread --bs 4k --qd 1
    if ((!TARGETS)); then
    pair blk "$OURS" qsd "$QSD" --rw read --bs 4k --qd 32
    pair blk "$OURS" qsd "$QSD" --rw randwrite --bs 4k --qd 32
    pair blk "$OURS" qsd "$QSD" --rw write --bs 4k --qd 32
    pair blk "$OURS" qsd "$QSD" --rw randread --bs 64k --qd 32
    pair blk "$OURS" qsd "$QSD" --rw read --bs 64k --qd 32
    pair blk "$OURS" qsd "$QSD" --rw randwrite --bs 64k --qd 32
    pair blk "$OURS" qsd "$QSD" --rw write --bs 64k --qd 32
    pair blk "$OURS" qsd "$QSD" --rw randrw --bs 4k --qd 32
    fi
    rm -f "$IMG"
fi

if [[ ,$ONLY, == *,net,* ]]; then
    echo "== net: vhost-user-net vs DPDK testpmd (net_vhost -> net_tap, io forwarding), tap in netns $NS"
    OURS="$BIN/vhost-user-net $OURS_ARGS --poll-us $POLL_US --socket {sock} --tap {tap}"
    # Both testpmd lcores (main + forwarding) on the back end's CPU, like our one worker.
    DPDK="dpdk-testpmd --no-huge -m 512 --no-pci --file-prefix svb$$ --lcores 0@$BE_CPU,1@$BE_CPU --vdev net_vhost0,iface={sock},tso=1 --vdev net_tap0,iface={tap} -- --forward-mode=io --total-num-mbufs=8192"
    pair net "$OURS" dpdk "$DPDK" --netns $NS --qd 256 --dir tx --frame 64 --idle 2s
    if ((!TARGETS)); then
    pair net "$OURS" dpdk "$DPDK" --netns $NS --qd 256 --dir tx --frame 1514
    pair net "$OURS" dpdk "$DPDK" --netns $NS --qd 256 --dir tx --frame 65549
    pair net "$OURS" dpdk "$DPDK" --netns $NS --qd 256 --dir rx --frame 64
    pair net "$OURS" dpdk "$DPDK" --netns $NS --qd 256 --dir rx --frame 1514
    fi
fi

if [[ ,$ONLY, == *,rng,* ]]; then
    echo "== rng: vhost-user-rng (getrandom, vDSO) vs vhost-device-rng (/dev/urandom)"
    OURS="$BIN/vhost-user-rng $OURS_ARGS --socket {sock}"
    pair rng "$OURS" vhost-device-rng "$VDR --socket-path {sock}" --peer-args "--socket-suffix 0" --qd 64 --bs 4k
fi

echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"
echo
echo "== ratio table (medians of $REPS runs; spread min..max in parentheses; raw runs in $RES)"
"$BENCH" report "$RES" | tee "$OUT/table.md"
