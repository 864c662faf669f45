/*
 * virtio-blk test.
 *
 * Sequence (every request's status byte is checked):
 *   1. negotiate VERSION_1 (+ FLUSH when offered), queue 0, DRIVER_OK
 *   2. capacity from config space (must cover sectors 2048..2055)
 *   3. GET_ID -> serial (status must be OK)
 *   4. write the inverted pattern to sectors 2048..2055 (1 data desc),
 *      read back (1 data desc), compare: proves writes really land even if
 *      the image already holds the pattern from an earlier run
 *   5. write the pattern with a chain of header + 2 data descs + status
 *      (1536 + 2560 bytes from separate buffers)
 *   6. FLUSH, if VIRTIO_BLK_F_FLUSH was offered
 *   7. read back with header + 2 data descs (2560 + 1536) + status, compare
 *   8. read of 1 sector at sector == capacity (past the end): status must
 *      be IOERR
 *   9. reset the device
 * The pattern stays on the disk: byte j (0..511) of sector s (2048..2055)
 * is (s * 7 + j) & 0xff.
 */
#include "blk.h"
#include "lib.h"
#include "print.h"
#include "report.h"

#define VIRTIO_BLK_F_RO         5
#define VIRTIO_BLK_F_FLUSH      9

#define VIRTIO_BLK_T_IN         0
#define VIRTIO_BLK_T_OUT        1
#define VIRTIO_BLK_T_FLUSH      4
#define VIRTIO_BLK_T_GET_ID     8

#define VIRTIO_BLK_S_OK         0
#define VIRTIO_BLK_S_IOERR      1
#define VIRTIO_BLK_S_UNSUPP     2

#define VIRTIO_BLK_ID_BYTES     20
#define SECTOR_SIZE             512u
#define TEST_BYTES              (BLK_TEST_SECTORS * SECTOR_SIZE)

struct virtio_blk_req_hdr {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

/* Request buffers (the device reads/writes them by physical address). */
static struct virtio_blk_req_hdr hdr __attribute__((aligned(16)));
static volatile uint8_t status_byte __attribute__((aligned(16)));
static uint8_t expect[TEST_BYTES] __attribute__((aligned(4096)));
static uint8_t buf_one[TEST_BYTES] __attribute__((aligned(4096)));
/* Two separate (non-adjacent) buffers for the 2-data-descriptor chains. */
static uint8_t buf_a[2560] __attribute__((aligned(4096)));
static uint8_t buf_b[2560] __attribute__((aligned(4096)));
static char serial[VIRTIO_BLK_ID_BYTES + 1] __attribute__((aligned(16)));

static const char *status_name(uint8_t s)
{
    switch (s) {
    case VIRTIO_BLK_S_OK: return "OK";
    case VIRTIO_BLK_S_IOERR: return "IOERR";
    case VIRTIO_BLK_S_UNSUPP: return "UNSUPP";
    case 0xff: return "not written";
    default: return "invalid";
    }
}

static const char *type_name(uint32_t t)
{
    switch (t) {
    case VIRTIO_BLK_T_IN: return "IN";
    case VIRTIO_BLK_T_OUT: return "OUT";
    case VIRTIO_BLK_T_FLUSH: return "FLUSH";
    case VIRTIO_BLK_T_GET_ID: return "GET_ID";
    default: return "?";
    }
}

/*
 * One request: header (device-readable), the data buffers, the status
 * byte (device-writable).  Returns the status byte, or -1 after fail()
 * when the request did not complete properly.
 */
static int blk_request(struct vdev *d, uint32_t type, uint64_t sector,
                       const struct vq_buf *data, unsigned ndata)
{
    struct vq_buf chain[4];
    uint32_t in_bytes = 1, len;
    unsigned n = 0;

    hdr.type = type;
    hdr.reserved = 0;
    hdr.sector = sector;
    status_byte = 0xff;         /* "not written" marker */

    chain[n++] = (struct vq_buf){ &hdr, sizeof(hdr), false };
    for (unsigned i = 0; i < ndata; i++) {
        chain[n++] = data[i];
        if (data[i].device_writes)
            in_bytes += data[i].len;
    }
    chain[n++] = (struct vq_buf){ (void *)&status_byte, 1, true };

    uint16_t head = vq_submit(&d->vq[0], chain, n);
    if (!vq_wait(&d->vq[0], head, &len))
        return -1;

    uint8_t s = status_byte;
    /* used.len counts bytes written by the device; Linux ignores it, so a
     * mismatch is reported but is not a failure. */
    if (s == VIRTIO_BLK_S_OK && len != in_bytes && len != 1)
        kprintf("%s: note: %s request used.len %u (device-writable bytes "
                "%u)\n", d->name, type_name(type), len, in_bytes);
    return s;
}

static bool expect_ok(struct vdev *d, int s, const char *what)
{
    if (s < 0)
        return false;
    if (s != VIRTIO_BLK_S_OK) {
        fail("%s: %s: status %d (%s), want OK", d->name, what, s,
             status_name((uint8_t)s));
        return false;
    }
    return true;
}

static void fill_pattern(uint8_t *p, bool inverted)
{
    for (unsigned i = 0; i < TEST_BYTES; i++) {
        uint8_t v = BLK_PATTERN(BLK_TEST_SECTOR + i / SECTOR_SIZE,
                                i % SECTOR_SIZE);
        p[i] = inverted ? (uint8_t)~v : v;
    }
}

static bool compare(struct vdev *d, const uint8_t *got, const char *what)
{
    for (unsigned i = 0; i < TEST_BYTES; i++) {
        if (got[i] != expect[i]) {
            fail("%s: %s: mismatch at sector %u byte %u: got 0x%02x want "
                 "0x%02x", d->name, what, BLK_TEST_SECTOR + i / SECTOR_SIZE,
                 i % SECTOR_SIZE, got[i], expect[i]);
            return false;
        }
    }
    return true;
}

static bool blk_run(struct vdev *d)
{
    bool flush = vdev_has(d, VIRTIO_BLK_F_FLUSH);
    int s;

    /* 2. capacity */
    uint64_t cap = vdev_config_read64(d, 0);
    kprintf("%s: capacity %llu sectors (%llu KiB), flush %s\n", d->name,
            (unsigned long long)cap, (unsigned long long)(cap / 2),
            flush ? "offered" : "not offered");
    if (cap < BLK_TEST_SECTOR + BLK_TEST_SECTORS) {
        fail("%s: capacity %llu sectors: too small for the test range "
             "%u..%u", d->name, (unsigned long long)cap, BLK_TEST_SECTOR,
             BLK_TEST_SECTOR + BLK_TEST_SECTORS - 1);
        return false;
    }

    /* 3. GET_ID */
    memset(serial, 0, sizeof(serial));
    struct vq_buf id = { serial, VIRTIO_BLK_ID_BYTES, true };
    if (!expect_ok(d, blk_request(d, VIRTIO_BLK_T_GET_ID, 0, &id, 1),
                   "GET_ID"))
        return false;
    serial[VIRTIO_BLK_ID_BYTES] = '\0';
    for (unsigned i = 0; serial[i]; i++)
        if (serial[i] < 0x20 || serial[i] > 0x7e)
            serial[i] = '?';
    kprintf("%s: serial \"%s\"\n", d->name, serial);

    /* 4. inverted pattern, single data descriptor, write + read back */
    fill_pattern(buf_one, true);
    struct vq_buf one = { buf_one, TEST_BYTES, false };
    if (!expect_ok(d, blk_request(d, VIRTIO_BLK_T_OUT, BLK_TEST_SECTOR,
                                  &one, 1), "write (inverted pattern)"))
        return false;
    memset(buf_one, 0, TEST_BYTES);
    one.device_writes = true;
    if (!expect_ok(d, blk_request(d, VIRTIO_BLK_T_IN, BLK_TEST_SECTOR,
                                  &one, 1), "read (inverted pattern)"))
        return false;
    fill_pattern(expect, true);
    if (!compare(d, buf_one, "read-back of inverted pattern"))
        return false;
    kprintf("%s: write+read of sectors %u..%u (inverted pattern, 1 data "
            "desc) OK\n", d->name, BLK_TEST_SECTOR,
            BLK_TEST_SECTOR + BLK_TEST_SECTORS - 1);

    /* 5. the pattern, written as header + 2 data descriptors + status */
    fill_pattern(expect, false);
    memcpy(buf_a, expect, 1536);
    memcpy(buf_b, expect + 1536, 2560);
    struct vq_buf two_w[2] = {
        { buf_a, 1536, false },
        { buf_b, 2560, false },
    };
    if (!expect_ok(d, blk_request(d, VIRTIO_BLK_T_OUT, BLK_TEST_SECTOR,
                                  two_w, 2), "write (pattern, 2 data descs)"))
        return false;

    /* 6. flush */
    if (flush) {
        if (!expect_ok(d, blk_request(d, VIRTIO_BLK_T_FLUSH, 0, 0, 0),
                       "FLUSH"))
            return false;
        kprintf("%s: flush OK\n", d->name);
    }

    /* 7. read back with a different 2-descriptor split */
    memset(buf_a, 0, sizeof(buf_a));
    memset(buf_b, 0, sizeof(buf_b));
    struct vq_buf two_r[2] = {
        { buf_a, 2560, true },
        { buf_b, 1536, true },
    };
    if (!expect_ok(d, blk_request(d, VIRTIO_BLK_T_IN, BLK_TEST_SECTOR,
                                  two_r, 2), "read (pattern, 2 data descs)"))
        return false;
    memcpy(buf_one, buf_a, 2560);
    memcpy(buf_one + 2560, buf_b, 1536);
    if (!compare(d, buf_one, "read-back of pattern"))
        return false;
    kprintf("%s: write+read of sectors %u..%u (pattern, 2 data descs) OK\n",
            d->name, BLK_TEST_SECTOR, BLK_TEST_SECTOR + BLK_TEST_SECTORS - 1);

    /* 8. read past the end of the disk */
    struct vq_buf past = { buf_one, SECTOR_SIZE, true };
    s = blk_request(d, VIRTIO_BLK_T_IN, cap, &past, 1);
    if (s < 0)
        return false;
    if (s != VIRTIO_BLK_S_IOERR) {
        fail("%s: read at sector %llu (past the end): status %d (%s), want "
             "IOERR", d->name, (unsigned long long)cap, s,
             status_name((uint8_t)s));
        return false;
    }
    kprintf("%s: read past the end (sector %llu) -> IOERR OK\n", d->name,
            (unsigned long long)cap);
    return true;
}

void blk_test(struct vdev *d)
{
    unsigned before = fail_count();

    if (!vdev_negotiate(d, 1ull << VIRTIO_BLK_F_FLUSH))
        goto out;
    if (d->dev_features & (1ull << VIRTIO_BLK_F_RO)) {
        fail("%s: device is read-only (VIRTIO_BLK_F_RO)", d->name);
        goto out;
    }
    if (!vq_setup(d, 0) || !vdev_driver_ok(d))
        goto out;
    blk_run(d);
out:
    vdev_reset(d);
    d->active = false;
    kprintf("%s: %s (interrupts: %u, vring %u, config %u, status-0 %u)\n",
            d->name, fail_count() == before ? "PASS" : "FAIL", d->irq_count,
            d->irq_vring, d->irq_config, d->irq_no_status);
}
