#!/bin/bash
# Third-party back ends our tests and benchmarks run beside ours:
#   qemu-storage-daemon (Debian qemu-system-common, from install-deps.sh)
#   vhost-device-rng    (crates.io; built into build/peers/bin)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS="$ROOT/build/peers"
if [[ -x "$PEERS/bin/vhost-device-rng" ]]; then
    echo "peers: vhost-device-rng present"
else
    echo "peers: building vhost-device-rng (crates.io, about a minute)"
    cargo install --quiet --locked --root "$PEERS" vhost-device-rng
fi
