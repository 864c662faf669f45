/*
 * virtio-blk stress mode (guesttest=stress guestiters=N guestprogress=K).
 *
 * N rounds over sectors STRESS_SECTOR.. (16 sectors): write the round's
 * pattern as 8 requests of 1 KiB submitted together (8 chains in flight,
 * queue size 32), wait for all 8, then read the region back the same way
 * and compare.  Every status byte must be OK and every head must come back
 * exactly once.  Made for back-end restarts: the waits do not need one
 * interrupt per completion (a restarted back end may finish requests the
 * old one had taken), only used.idx, and a device that sets
 * DEVICE_NEEDS_RESET ends the test at once.
 *
 * Lines: "<name>: round R ok" every K rounds (and after the last), then
 * "<name>: stress checksum 0x%08x over sectors A..B after N rounds", the
 * FNV-1a 32-bit hash of the region as read back in the last round: the
 * host compares it with the image.
 */
#include "blkstress.h"
#include "lib.h"
#include "print.h"
#include "report.h"

#define VIRTIO_BLK_F_RO             5
#define VIRTIO_BLK_F_FLUSH          9
#define VIRTIO_BLK_F_DISCARD        13
#define VIRTIO_BLK_F_WRITE_ZEROES   14

#define T_IN    0
#define T_OUT   1

#define CHAIN_BYTES (STRESS_CHAIN_SECTORS * 512u)
#define CHAIN_WORDS (CHAIN_BYTES / 4u)
#define STRESS_QUEUE_SIZE 32    /* 8 chains of 3 descriptors */

struct req_hdr {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

static struct req_hdr hdrs[STRESS_CHAINS] __attribute__((aligned(16)));
static volatile uint8_t statuses[STRESS_CHAINS] __attribute__((aligned(16)));
static uint32_t wbuf[STRESS_CHAINS][CHAIN_WORDS] __attribute__((aligned(4096)));
static uint32_t rbuf[STRESS_CHAINS][CHAIN_WORDS] __attribute__((aligned(4096)));

/* Submits one request per chain buffer, all before waiting. */
static bool batch(struct vdev *d, uint32_t type, uint32_t (*bufs)[CHAIN_WORDS],
                  uint32_t round)
{
    struct virtq *q = &d->vq[0];
    uint16_t heads[STRESS_CHAINS], ids[STRESS_CHAINS];
    bool seen[STRESS_CHAINS];
    const char *what = type == T_OUT ? "write" : "read";

    for (unsigned i = 0; i < STRESS_CHAINS; i++) {
        hdrs[i].type = type;
        hdrs[i].reserved = 0;
        hdrs[i].sector = STRESS_SECTOR + i * STRESS_CHAIN_SECTORS;
        statuses[i] = 0xff;
        struct vq_buf chain[3] = {
            { &hdrs[i], sizeof(hdrs[i]), false },
            { bufs[i], CHAIN_BYTES, type == T_IN },
            { (void *)&statuses[i], 1, true },
        };
        heads[i] = vq_submit(q, chain, 3);
        seen[i] = false;
    }
    if (!vq_wait_all(q, STRESS_CHAINS, ids, 0)) {
        fail("%s: round %u: %s batch did not complete", d->name, round + 1,
             what);
        return false;
    }
    for (unsigned k = 0; k < STRESS_CHAINS; k++) {
        unsigned i = 0;
        while (i < STRESS_CHAINS && heads[i] != ids[k])
            i++;
        if (i == STRESS_CHAINS || seen[i]) {
            fail("%s: round %u: %s batch: used id %u %s", d->name, round + 1,
                 what, ids[k], i == STRESS_CHAINS ? "was not submitted"
                                                  : "completed twice");
            return false;
        }
        seen[i] = true;
    }
    for (unsigned i = 0; i < STRESS_CHAINS; i++) {
        if (statuses[i] != 0) {
            fail("%s: round %u: %s of sectors %u..%u: status %u, want OK",
                 d->name, round + 1, what, (unsigned)hdrs[i].sector,
                 (unsigned)hdrs[i].sector + STRESS_CHAIN_SECTORS - 1,
                 statuses[i]);
            return false;
        }
    }
    return true;
}

static void fill(uint32_t round)
{
    for (unsigned i = 0; i < STRESS_CHAINS; i++)
        for (unsigned w = 0; w < CHAIN_WORDS; w++) {
            wbuf[i][w] = stress_word(round + 1, i * CHAIN_WORDS + w);
            rbuf[i][w] = 0;
        }
}

static bool verify(struct vdev *d, uint32_t round)
{
    for (unsigned i = 0; i < STRESS_CHAINS; i++)
        for (unsigned w = 0; w < CHAIN_WORDS; w++)
            if (rbuf[i][w] != wbuf[i][w]) {
                fail("%s: round %u: sector %u word %u: read 0x%08x, wrote "
                     "0x%08x", d->name, round + 1,
                     STRESS_SECTOR + i * STRESS_CHAIN_SECTORS + w / 128,
                     w % 128, rbuf[i][w], wbuf[i][w]);
                return false;
            }
    return true;
}

static uint32_t fnv1a(void)
{
    const uint8_t *p = (const uint8_t *)rbuf;
    uint32_t h = 2166136261u;
    for (unsigned b = 0; b < sizeof(rbuf); b++) {
        h ^= p[b];
        h *= 16777619u;
    }
    return h;
}

static bool stress_run(struct vdev *d, uint32_t rounds, uint32_t progress)
{
    uint64_t cap = vdev_config_read64(d, 0);
    if (cap < STRESS_SECTOR + STRESS_SECTORS) {
        fail("%s: capacity %llu sectors: too small for the stress range "
             "%u..%u", d->name, (unsigned long long)cap, STRESS_SECTOR,
             STRESS_SECTOR + STRESS_SECTORS - 1);
        return false;
    }
    kprintf("%s: stress: %u rounds of write/read-back/verify over sectors "
            "%u..%u, %u requests in flight\n", d->name, rounds, STRESS_SECTOR,
            STRESS_SECTOR + STRESS_SECTORS - 1, STRESS_CHAINS);
    for (uint32_t r = 0; r < rounds; r++) {
        fill(r);
        if (!batch(d, T_OUT, wbuf, r))
            return false;
        if (!batch(d, T_IN, rbuf, r) || !verify(d, r))
            return false;
        if ((r + 1) % progress == 0 || r + 1 == rounds)
            kprintf("%s: round %u ok\n", d->name, r + 1);
    }
    kprintf("%s: stress checksum 0x%08x over sectors %u..%u after %u "
            "rounds\n", d->name, fnv1a(), STRESS_SECTOR,
            STRESS_SECTOR + STRESS_SECTORS - 1, rounds);
    return true;
}

void blk_stress(struct vdev *d, uint32_t rounds, uint32_t progress)
{
    unsigned before = fail_count();

    /* DISCARD and WRITE_ZEROES are negotiated (not used) so that a back
     * end restarted without them cannot honour the session. */
    if (!vdev_negotiate(d, (1ull << VIRTIO_BLK_F_FLUSH) |
                           (1ull << VIRTIO_BLK_F_DISCARD) |
                           (1ull << VIRTIO_BLK_F_WRITE_ZEROES)))
        goto out;
    if (d->dev_features & (1ull << VIRTIO_BLK_F_RO)) {
        fail("%s: device is read-only (VIRTIO_BLK_F_RO)", d->name);
        goto out;
    }
    vq_set_size_max(STRESS_QUEUE_SIZE);
    bool ok = vq_setup(d, 0);
    vq_set_size_max(VQ_SIZE_MAX);
    if (!ok)
        goto out;
    if (d->vq[0].num < STRESS_CHAINS * 3) {
        fail("%s: queue size %u: too small for %u requests in flight",
             d->name, d->vq[0].num, STRESS_CHAINS);
        goto out;
    }
    if (!vdev_driver_ok(d))
        goto out;
    stress_run(d, rounds, progress);
out:
    vdev_reset(d);
    d->active = false;
    kprintf("%s: %s (interrupts: %u, vring %u, config %u, status-0 %u)\n",
            d->name, fail_count() == before ? "PASS" : "FAIL", d->irq_count,
            d->irq_vring, d->irq_config, d->irq_no_status);
}
