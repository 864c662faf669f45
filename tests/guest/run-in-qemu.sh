#!/usr/bin/env bash
# Boot the splitvm test guest in QEMU (microvm machine, virtio-mmio) against
# a qemu-storage-daemon vhost-user-blk back end and a virtio-rng device,
# then check the guest's verdict and the pattern it left in the disk image.
#
# usage: tests/guest/run-in-qemu.sh [tcg|kvm|all]      (default: all)
#   tcg  QEMU's TCG emulator
#   kvm  this machine's /dev/kvm (what the splitvm VMM uses)
#   all  tcg, then kvm if /dev/kvm is usable
# Exit status: 0 all runs passed, 1 a run failed, 77 QEMU is not installed.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
GUEST="$REPO/target/test-guest/splitvm-test-guest.elf"
MODE=${1:-all}
TIMEOUT_S=${TIMEOUT_S:-60}

for tool in qemu-system-x86_64 qemu-storage-daemon python3 timeout; do
    if ! command -v "$tool" >/dev/null; then
        echo "run-in-qemu: SKIP: $tool not found" >&2
        exit 77
    fi
done

make -s -C "$REPO/tests/guest"

WORK=$(mktemp -d /tmp/splitvm-guest.XXXXXX)
QSD_PID=
cleanup() {
    if [ -n "$QSD_PID" ]; then
        kill "$QSD_PID" 2>/dev/null || true
        wait "$QSD_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# Host-side check of the image: sectors 2048..2055 hold the pattern
# byte j of sector s = (s*7 + j) & 0xff, every other byte is still zero.
check_image() {
    python3 - "$1" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
start, count, ss = 2048, 8, 512
want = bytes(((s * 7 + j) & 0xff) for s in range(start, start + count)
             for j in range(ss))
got = data[start * ss:(start + count) * ss]
if got != want:
    i = next(i for i in range(len(want)) if got[i:i+1] != want[i:i+1])
    sys.exit("image: pattern mismatch at sector %d byte %d"
             % (start + i // ss, i % ss))
rest = data[:start * ss] + data[(start + count) * ss:]
if rest.count(0) != len(rest):
    sys.exit("image: bytes outside sectors 2048..2055 were modified")
print("image: sectors 2048..2055 hold the pattern, the rest is zero: OK")
PY
}

run_one() {
    local accel=$1 img="$WORK/disk-$1.img" sock="$WORK/blk-$1.sock"
    local log="$WORK/serial-$1.log"

    echo "=== run-in-qemu: accel=$accel"
    truncate -s 16M "$img"              # fresh, all zero
    qemu-storage-daemon \
        --blockdev driver=file,node-name=f0,filename="$img" \
        --blockdev driver=raw,node-name=d0,file=f0 \
        --export type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path="$sock",writable=on,num-queues=1 \
        >"$WORK/qsd-$accel.log" 2>&1 &
    QSD_PID=$!
    for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
    if [ ! -S "$sock" ]; then
        echo "run-in-qemu: qemu-storage-daemon did not start:" >&2
        cat "$WORK/qsd-$accel.log" >&2
        return 1
    fi

    # microvm with acpi=off puts "virtio_mmio.device=512@0xfeb00xxx:<irq>"
    # for each virtio-mmio device on the command line by itself.  The
    # guest resets through the i8042; -no-reboot turns that into an exit.
    local rc=0
    timeout "$TIMEOUT_S" qemu-system-x86_64 -accel "$accel" \
        -M microvm,acpi=off,memory-backend=mem -m 256M \
        -object memory-backend-memfd,id=mem,size=256M,share=on \
        -global virtio-mmio.force-legacy=false \
        -kernel "$GUEST" -append "guesttimeout=10" \
        -chardev socket,id=c0,path="$sock" -device vhost-user-blk,chardev=c0 \
        -device virtio-rng-device \
        -device i8042 \
        -nographic -no-reboot </dev/null >"$log" 2>&1 || rc=$?
    kill "$QSD_PID" 2>/dev/null || true
    wait "$QSD_PID" 2>/dev/null || true
    QSD_PID=

    tr -d '\r' <"$log" | sed 's/^/    /'
    [ "$rc" = 124 ] && echo "run-in-qemu: QEMU timed out after ${TIMEOUT_S}s" >&2
    local verdicts
    verdicts=$(tr -d '\r' <"$log" | grep -c '^SPLITVM-GUEST ' || true)
    if [ "$verdicts" != 1 ] || ! tr -d '\r' <"$log" | grep -qx 'SPLITVM-GUEST PASS'; then
        echo "run-in-qemu: accel=$accel: FAIL (no single SPLITVM-GUEST PASS line; qemu rc $rc)" >&2
        return 1
    fi
    if ! check_image "$img"; then
        echo "run-in-qemu: accel=$accel: FAIL (image check)" >&2
        return 1
    fi
    echo "=== run-in-qemu: accel=$accel: PASS"
}

kvm_usable() {
    [ -r /dev/kvm ] && [ -w /dev/kvm ]
}

status=0
case "$MODE" in
tcg) run_one tcg || status=1 ;;
kvm) run_one kvm || status=1 ;;
all)
    run_one tcg || status=1
    if kvm_usable; then
        run_one kvm || status=1
    else
        echo "run-in-qemu: /dev/kvm not usable: kvm run skipped"
    fi
    ;;
*) echo "usage: $0 [tcg|kvm|all]" >&2; exit 2 ;;
esac
exit $status
