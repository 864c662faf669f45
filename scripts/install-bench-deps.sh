#!/bin/bash
# What scripts/bench.sh needs beyond the test suite's set-up (scripts/setup.sh):
#   dpdk-testpmd (Debian dpdk-dev 22.11), qemu-storage-daemon (qemu-system-common),
#   iproute2 + util-linux (ip netns, taskset), vhost-device-rng (crates.io, via
#   scripts/install-peers.sh into build/peers/bin).
# Installed only for benchmarks: the test suite never needs DPDK.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
need=()
command -v dpdk-testpmd >/dev/null || need+=(dpdk-dev)
command -v qemu-storage-daemon >/dev/null || need+=(qemu-system-common)
command -v ip >/dev/null || need+=(iproute2)
command -v taskset >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
    echo "bench deps: apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
else
    echo "bench deps: dpdk-testpmd, qemu-storage-daemon, ip, taskset present"
fi
"$ROOT/scripts/install-peers.sh"
