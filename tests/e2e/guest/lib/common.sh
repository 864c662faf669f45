# Helpers for guest-side tests (sourced from /tests/<name>.sh in the guest).
# Kernel command-line parameters splitvm*=VALUE arrive as shell variables
# (e.g. splitvmseed) exported by /init.

log() { echo "guest: $*"; }

# fail WHY: record the reason for /init ("SPLITVM-RESULT FAIL WHY") and exit.
fail() {
    echo "$*" > /tmp/splitvm-why
    echo "guest: FAIL: $*"
    exit 1
}

# ok WHAT: one line per passed check.
ok() { echo "guest: ok: $*"; }

# wait_dev DEV [SECONDS]: wait for a device node (drivers probe asynchronously).
wait_dev() {
    _n=$(( ${2:-20} * 10 ))
    while [ ! -e "$1" ]; do
        _n=$((_n - 1))
        [ $_n -le 0 ] && fail "$1 did not appear"
        usleep 100000
    done
}

# pattern SEED SECTORS > FILE
pattern() { awk -v seed="$1" -v sectors="$2" -f /tests/lib/pattern.awk; }

md5() { md5sum "$1" | cut -d' ' -f1; }
