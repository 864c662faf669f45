# Shared host-side helpers for splitvm's end-to-end tests (QEMU TCG front end,
# Debian guest kernel, busybox initramfs). Source it from a test script:
#
#   . "$(dirname "$0")/lib.sh"
#   e2e_setup blk                       # logs in build/e2e-logs/blk/, work dir build/e2e/blk/
#   e2e_prepare_guest                   # guest kernel + initramfs (cached)
#   e2e_spawn backend CMD ARGS...       # background process, killed on exit; pid in E2E_PID
#   e2e_wait_socket SOCK PID            # socket appears (or the process died)
#   e2e_boot_guest boot1 TEST "k=v ..." QEMU-ARGS...   # 0 iff SPLITVM-RESULT PASS
#   e2e_check "what" CMD ARGS...        # prints "PASS: what" / "FAIL: what"
#   e2e_finish                          # summary, exit status
#
# Environment:
#   SPLITVM_E2E_TIMEOUT   seconds per guest boot (default 120)
#   SPLITVM_E2E_MEM       guest RAM in MiB (default 512)
#   QEMU                  QEMU binary (default qemu-system-x86_64)

E2E_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
E2E_TIMEOUT=${SPLITVM_E2E_TIMEOUT:-120}
E2E_MEM=${SPLITVM_E2E_MEM:-512}
QEMU=${QEMU:-qemu-system-x86_64}
E2E_PIDS=()
E2E_FAILS=0
E2E_PASSES=0
E2E_NAME=
E2E_LOGS=
E2E_WORK=
E2E_PID=
E2E_RESULT=
E2E_CONSOLE=

e2e_log()  { echo "[$(date +%H:%M:%S)] $*"; }
e2e_pass() { E2E_PASSES=$((E2E_PASSES + 1)); echo "PASS: $*"; }
e2e_fail() { E2E_FAILS=$((E2E_FAILS + 1)); echo "FAIL: $*"; }
e2e_die()  { echo "ERROR: $*" >&2; e2e_fail "$*"; exit 1; }

# e2e_check WHAT CMD ARGS...: run CMD (output to the test log), one line per check.
e2e_check() {
    local what=$1; shift
    if "$@" >> "$E2E_LOGS/checks.log" 2>&1; then
        e2e_pass "$what"
    else
        e2e_fail "$what"
        echo "      (command: $*; output in $E2E_LOGS/checks.log)"
        tail -n 5 "$E2E_LOGS/checks.log" | sed 's/^/      | /'
        return 1
    fi
}

# e2e_setup NAME: work and log directories (emptied), cleanup trap.
e2e_setup() {
    E2E_NAME=$1
    E2E_LOGS="$E2E_ROOT/build/e2e-logs/$E2E_NAME"
    E2E_WORK="$E2E_ROOT/build/e2e/$E2E_NAME"
    # Two runs of the same test in one tree would delete each other's image,
    # socket and logs: take a per-test lock (fd 8, closed in every child we
    # start, so it dies with this shell) and wait for the other run.
    mkdir -p "$E2E_ROOT/build/e2e-logs"
    exec 8> "$E2E_ROOT/build/e2e-logs/.$E2E_NAME.lock"
    if ! flock -n 8; then
        e2e_log "another $E2E_NAME run holds build/e2e-logs/.$E2E_NAME.lock; waiting (up to 15 min)"
        flock -w 900 8 || { echo "ERROR: still locked after 15 min" >&2; exit 1; }
    fi
    rm -rf "$E2E_LOGS" "$E2E_WORK"
    mkdir -p "$E2E_LOGS" "$E2E_WORK"
    : > "$E2E_LOGS/checks.log"
    trap e2e_cleanup EXIT
    trap 'echo "interrupted"; exit 130' INT TERM
    e2e_log "e2e test $E2E_NAME: logs in ${E2E_LOGS#"$E2E_ROOT"/}"
}

# e2e_need_tools CMD...: fail early with a hint when a host tool is missing.
e2e_need_tools() {
    local t missing=()
    for t in "$@"; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
    ((${#missing[@]} == 0)) || e2e_die "missing host tools: ${missing[*]} (run scripts/install-deps.sh as root)"
}

# e2e_prepare_guest: the guest kernel and the initramfs (both cached).
e2e_prepare_guest() {
    "$E2E_ROOT/scripts/guest-kernel.sh" > "$E2E_LOGS/guest-kernel.log" 2>&1 \
        || { cat "$E2E_LOGS/guest-kernel.log"; e2e_die "scripts/guest-kernel.sh failed"; }
    "$E2E_ROOT/scripts/initramfs.sh" > "$E2E_LOGS/initramfs.log" 2>&1 \
        || { cat "$E2E_LOGS/initramfs.log"; e2e_die "scripts/initramfs.sh failed"; }
    E2E_KERNEL="$E2E_ROOT/build/guest/vmlinuz"
    E2E_INITRD="$E2E_ROOT/build/guest/initramfs.gz"
    e2e_log "guest kernel $(cat "$E2E_ROOT/build/guest/kver"), initramfs ready"
}

# e2e_spawn NAME CMD ARGS...: start CMD in the background, output in
# $E2E_LOGS/NAME.log; it is killed when the test exits. Sets E2E_PID.
e2e_spawn() {
    local name=$1; shift
    echo "+ $*" > "$E2E_LOGS/$name.log"
    "$@" >> "$E2E_LOGS/$name.log" 2>&1 < /dev/null 8>&- &
    E2E_PID=$!
    E2E_PIDS+=("$E2E_PID")
    e2e_log "started $name (pid $E2E_PID): $*"
}

e2e_alive() { kill -0 "$1" 2>/dev/null; }

# e2e_forget PID: drop a reaped pid from the cleanup list (no signal to a reused pid).
e2e_forget() {
    local p keep=()
    for p in "${E2E_PIDS[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done
    E2E_PIDS=("${keep[@]}")
}

# e2e_stop PID [GRACE]: SIGTERM, then SIGKILL after GRACE seconds (default 5).
# Returns 0 if it exited on SIGTERM. Only ever signals the given pid.
e2e_stop() {
    local pid=$1 grace=${2:-5} i
    e2e_alive "$pid" || { wait "$pid" 2>/dev/null; e2e_forget "$pid"; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < grace * 10; i++)); do
        e2e_alive "$pid" || { wait "$pid" 2>/dev/null; e2e_forget "$pid"; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    e2e_forget "$pid"
    return 1
}

e2e_cleanup() {
    local rc=$? i pids=("${E2E_PIDS[@]}")
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        e2e_stop "${pids[$i]}" 3 || true
    done
    E2E_PIDS=()
    return $rc
}

# e2e_wait_socket SOCK PID [SECONDS]: wait until SOCK is a socket; fail early
# if PID exits first.
e2e_wait_socket() {
    local sock=$1 pid=$2 secs=${3:-20} i
    for ((i = 0; i < secs * 10; i++)); do
        [[ -S "$sock" ]] && return 0
        if ! e2e_alive "$pid"; then
            e2e_log "process $pid exited before creating $sock"
            return 1
        fi
        sleep 0.1
    done
    e2e_log "timed out after ${secs}s waiting for $sock"
    return 1
}

# e2e_qemu_base: the QEMU command line shared by all guests: TCG (Linux cannot
# boot under this machine's KVM), shared memfd RAM (vhost-user needs it),
# serial console on stdout, no NIC, no reboot.
e2e_qemu_base() {
    E2E_QEMU_BASE=(
        "$QEMU" -accel tcg -M pc -m "$E2E_MEM"
        -object "memory-backend-memfd,id=mem,size=${E2E_MEM}M,share=on"
        -numa node,memdev=mem
        -kernel "$E2E_KERNEL" -initrd "$E2E_INITRD"
        -nographic -no-reboot -nic none
    )
}

# e2e_boot_guest LABEL TEST "PARAMS" QEMU-ARGS...
#   Boots the guest running /tests/TEST.sh, with extra kernel parameters
#   PARAMS (splitvm*=value, no dots) and extra QEMU arguments (devices,
#   -smp, ...). Console in $E2E_LOGS/LABEL.console (E2E_CONSOLE).
#   Sets E2E_RESULT to the result line ("PASS", "FAIL why", or a host-side
#   reason). Returns 0 iff the guest printed SPLITVM-RESULT PASS and QEMU
#   exited by itself within the timeout.
e2e_boot_guest() {
    local label=$1 test=$2 params=$3; shift 3
    local console="$E2E_LOGS/$label.console" rc qpid t0 t1 line
    E2E_CONSOLE=$console  # for the caller (e2e_guest_value)
    e2e_qemu_base
    local cmd=("${E2E_QEMU_BASE[@]}"
        -append "console=ttyS0 panic=-1 quiet splitvmtest=$test splitvmtimeout=$((E2E_TIMEOUT - 15)) $params"
        -d guest_errors,cpu_reset -D "$E2E_LOGS/$label.qemu-debug.log"
        "$@")
    echo "+ ${cmd[*]}" > "$E2E_LOGS/$label.cmd"
    t0=$(date +%s.%N)
    timeout -k 5 "$E2E_TIMEOUT" "${cmd[@]}" > "$console" 2>&1 < /dev/null 8>&- &
    qpid=$!
    E2E_PIDS+=("$qpid")
    wait "$qpid"
    rc=$?
    e2e_forget "$qpid"
    t1=$(date +%s.%N)
    E2E_BOOT_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b - a}')
    line=$(tr -d '\r' < "$console" | grep -ao 'SPLITVM-RESULT .*' | tail -n 1)
    line=${line#SPLITVM-RESULT }
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
        E2E_RESULT="FAIL QEMU killed after ${E2E_TIMEOUT}s${line:+ (guest said: $line)}"
    elif [[ -z "$line" ]]; then
        # More CPU resets than a normal start means the guest reset itself
        # (a triple fault, or a reboot that -no-reboot turned into an exit).
        local resets
        resets=$(grep -c 'CPU Reset' "$E2E_LOGS/$label.qemu-debug.log" 2>/dev/null)
        E2E_RESULT="FAIL no SPLITVM-RESULT line (QEMU exit status $rc, ${resets:-?} CPU resets logged; a normal boot logs 2 with 1 vCPU, 6 with 2)"
    elif [[ "$line" == PASS && $rc -ne 0 ]]; then
        E2E_RESULT="FAIL guest passed but QEMU exited with status $rc"
    else
        E2E_RESULT=$line
    fi
    e2e_log "$label: guest test $test: $E2E_RESULT (${E2E_BOOT_SECS}s)"
    if [[ "$E2E_RESULT" == PASS ]]; then
        return 0
    fi
    e2e_show_console "$console"
    return 1
}

# e2e_show_console FILE [LINES]: the tail of a guest console, escapes stripped.
e2e_show_console() {
    echo "----- last ${2:-40} lines of ${1#"$E2E_ROOT"/} -----"
    [[ -s "$1" ]] || echo "(empty: QEMU printed nothing; stuck before the firmware ran, e.g. in the vhost-user handshake)"
    tr -d '\r' < "$1" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g' | tail -n "${2:-40}"
    echo "-----"
}

# e2e_guest_value CONSOLE KEY: value of a "guest: KEY VALUE" line.
e2e_guest_value() {
    tr -d '\r' < "$1" | awk -v k="$2" '$1 == "guest:" && $2 == k { v = $3 } END { print v }'
}

# e2e_netns_tap NS: a network namespace NS holding tap0 (vnet headers) with
# 10.99.0.1/24, the guest's peer; removed when the test exits.
e2e_netns_tap() {
    E2E_NETNS=$1
    ip netns add "$E2E_NETNS" || e2e_die "ip netns add $E2E_NETNS"
    trap 'e2e_cleanup; ip netns del "$E2E_NETNS" 2>/dev/null' EXIT
    ip netns exec "$E2E_NETNS" ip tuntap add dev tap0 mode tap vnet_hdr || e2e_die "cannot create tap0 in $E2E_NETNS"
    ip netns exec "$E2E_NETNS" ip link set lo up
    ip netns exec "$E2E_NETNS" ip addr add 10.99.0.1/24 dev tap0
    ip netns exec "$E2E_NETNS" ip link set tap0 txqueuelen 10000 up
}

e2e_finish() {
    echo "== $E2E_NAME: $E2E_PASSES passed, $E2E_FAILS failed (logs: ${E2E_LOGS#"$E2E_ROOT"/}) =="
    if ((E2E_FAILS > 0)); then
        echo "RESULT: FAIL"
        exit 1
    fi
    echo "RESULT: PASS"
    exit 0
}
