/*
 * virtio-rng test: queue 0 (requestq), two reads of 64 bytes each (a read
 * may return fewer bytes than asked: then more requests fill the rest),
 * each must not be all zero and the two must differ.
 */
#include "rng.h"
#include "lib.h"
#include "print.h"
#include "report.h"

#define RNG_BYTES 64

static uint8_t rnd[2][RNG_BYTES] __attribute__((aligned(64)));

static bool rng_read(struct vdev *d, uint8_t *buf)
{
    uint32_t got = 0;

    memset(buf, 0, RNG_BYTES);
    for (unsigned tries = 0; got < RNG_BYTES; tries++) {
        if (tries == RNG_BYTES) {
            fail("%s: only %u of %u bytes after %u requests", d->name, got,
                 RNG_BYTES, tries);
            return false;
        }
        struct vq_buf b = { buf + got, RNG_BYTES - got, true };
        uint32_t len;
        uint16_t head = vq_submit(&d->vq[0], &b, 1);
        if (!vq_wait(&d->vq[0], head, &len))
            return false;
        if (len == 0 || len > RNG_BYTES - got) {
            fail("%s: used.len %u for a %u-byte buffer", d->name, len,
                 RNG_BYTES - got);
            return false;
        }
        got += len;
    }
    return true;
}

static void dump16(struct vdev *d, unsigned n, const uint8_t *p)
{
    kprintf("%s: read %u: ", d->name, n);
    for (unsigned i = 0; i < 16; i++)
        kprintf("%02x", p[i]);
    kprintf("...\n");
}

static bool rng_run(struct vdev *d)
{
    static const uint8_t zero[RNG_BYTES];

    for (unsigned n = 0; n < 2; n++) {
        if (!rng_read(d, rnd[n]))
            return false;
        dump16(d, n + 1, rnd[n]);
        if (!memcmp(rnd[n], zero, RNG_BYTES)) {
            fail("%s: read %u: %u bytes, all zero", d->name, n + 1,
                 RNG_BYTES);
            return false;
        }
    }
    if (!memcmp(rnd[0], rnd[1], RNG_BYTES)) {
        fail("%s: the two %u-byte reads are identical", d->name, RNG_BYTES);
        return false;
    }
    kprintf("%s: 2 x %u bytes, non-zero and different OK\n", d->name,
            RNG_BYTES);
    return true;
}

void rng_test(struct vdev *d)
{
    unsigned before = fail_count();

    if (vdev_negotiate(d, 0) && vq_setup(d, 0) && vdev_driver_ok(d))
        rng_run(d);
    vdev_reset(d);
    d->active = false;
    kprintf("%s: %s (interrupts: %u, vring %u, config %u, status-0 %u)\n",
            d->name, fail_count() == before ? "PASS" : "FAIL", d->irq_count,
            d->irq_vring, d->irq_config, d->irq_no_status);
}

void rng_stress(struct vdev *d, uint32_t rounds, uint32_t progress)
{
    static const uint8_t zero[RNG_BYTES];
    unsigned before = fail_count();

    if (!vdev_negotiate(d, 0) || !vq_setup(d, 0) || !vdev_driver_ok(d))
        goto out;
    kprintf("%s: stress: %u rounds of %u-byte reads\n", d->name, rounds,
            RNG_BYTES);
    for (uint32_t r = 0; r < rounds; r++) {
        uint8_t *buf = rnd[r & 1];
        if (!rng_read(d, buf))
            break;
        if (!memcmp(buf, zero, RNG_BYTES)) {
            fail("%s: round %u: %u bytes, all zero", d->name, r + 1,
                 RNG_BYTES);
            break;
        }
        if ((r + 1) % progress == 0 || r + 1 == rounds)
            kprintf("%s: round %u ok\n", d->name, r + 1);
    }
out:
    vdev_reset(d);
    d->active = false;
    kprintf("%s: %s (interrupts: %u, vring %u, config %u, status-0 %u)\n",
            d->name, fail_count() == before ? "PASS" : "FAIL", d->irq_count,
            d->irq_vring, d->irq_config, d->irq_no_status);
}
