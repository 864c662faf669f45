# Deterministic test pattern shared by the guest (busybox awk) and the host
# (mawk/gawk): `sectors` records of exactly 512 bytes (511 chars + '\n'),
# each naming the seed and its sector number, so a lost, stale or misplaced
# sector changes the checksum.
#   awk -v seed=S -v sectors=N -f pattern.awk
BEGIN {
    if (sectors == "") sectors = 2048
    pad = "#"
    while (length(pad) < 511) pad = pad pad
    for (i = 0; i < sectors; i++) {
        s = sprintf("splitvm-pattern seed=%s sector=%06d ", seed, i)
        printf "%s\n", substr(s pad, 1, 511)
    }
}
