/* virtio-mmio transport and split virtqueues (see virtio_mmio.h). */
#include "virtio_mmio.h"
#include "apic.h"
#include "idt.h"
#include "io.h"
#include "lib.h"
#include "print.h"
#include "report.h"
#include "cmdline.h"

/* ---- register access ---- */

static inline uint32_t rd(const struct vdev *d, uint32_t reg)
{
    return mmio_read32(d->base + reg);
}

static inline void wr(const struct vdev *d, uint32_t reg, uint32_t v)
{
    mmio_write32(d->base + reg, v);
}

static void set_status(struct vdev *d, uint32_t bits)
{
    wr(d, VIRTIO_MMIO_STATUS, rd(d, VIRTIO_MMIO_STATUS) | bits);
}

const char *virtio_id_name(uint32_t id)
{
    switch (id) {
    case 0: return "none";
    case VIRTIO_ID_NET: return "net";
    case VIRTIO_ID_BLOCK: return "blk";
    case VIRTIO_ID_CONSOLE: return "console";
    case VIRTIO_ID_RNG: return "rng";
    case 5: return "balloon";
    case 9: return "9p";
    case 16: return "gpu";
    case 19: return "vsock";
    case 26: return "fs";
    case 27: return "pmem";
    case 36: return "can";
    default: return "unknown";
    }
}

static uint32_t timeout_ticks = 10 * TIMER_TICKS_PER_SECOND;

void virtio_set_timeout(uint32_t seconds)
{
    timeout_ticks = seconds * TIMER_TICKS_PER_SECOND;
}

static uint16_t vq_size_max = VQ_SIZE_MAX;

void vq_set_size_max(uint16_t n)
{
    if (n >= 1 && n <= VQ_SIZE_LIMIT)
        vq_size_max = n;
}

/* ---- queue memory: one 4 KiB page per queue, from a static pool ---- */

#define QUEUE_PAGES (MAX_DEVICES * VDEV_MAX_QUEUES)
static uint8_t queue_pool[QUEUE_PAGES][4096] __attribute__((aligned(4096)));
static unsigned queue_pages_used;

/* ---- interrupt handling ---- */

static struct vdev *irq_devs[MAX_DEVICES];
static unsigned n_irq_devs;

/*
 * Device interrupt: for every active device on this GSI read
 * InterruptStatus, acknowledge exactly those bits, count, and on VRING
 * note each queue's used->idx for vq_wait().
 */
static void vdev_irq(uint8_t vector, void *arg)
{
    (void)arg;
    for (unsigned i = 0; i < n_irq_devs; i++) {
        struct vdev *d = irq_devs[i];
        if (!d->active || DEVICE_VECTOR_BASE + d->irq != vector)
            continue;
        uint32_t isr = rd(d, VIRTIO_MMIO_INTERRUPT_STATUS);
        d->irq_count++;
        if (!isr) {
            d->irq_no_status++;
            continue;
        }
        wr(d, VIRTIO_MMIO_INTERRUPT_ACK, isr);
        if (isr & VIRTIO_MMIO_INT_CONFIG)
            d->irq_config++;
        if (isr & VIRTIO_MMIO_INT_VRING) {
            d->irq_vring++;
            for (unsigned q = 0; q < VDEV_MAX_QUEUES; q++)
                if (d->vq[q].ready)
                    d->vq[q].irq_used_idx =
                        *(volatile uint16_t *)&d->vq[q].used->idx;
        }
    }
}

/* ---- device bring-up ---- */

bool vdev_probe(struct vdev *d, uint64_t base, uint64_t size, uint32_t irq)
{
    memset(d, 0, sizeof(*d));
    if (base + size > 0x100000000ull || size < 0x100) {
        fail("virtio-mmio @0x%llx size 0x%llx: not usable by a 32-bit "
             "guest", (unsigned long long)base, (unsigned long long)size);
        return false;
    }
    d->base = (uintptr_t)base;
    d->size = (uint32_t)size;
    d->irq = irq;
    ksnprintf(d->name, sizeof(d->name), "dev@0x%08x", (uint32_t)base);

    uint32_t magic = rd(d, VIRTIO_MMIO_MAGIC_VALUE);
    uint32_t version = rd(d, VIRTIO_MMIO_VERSION);
    if (magic != VIRTIO_MMIO_MAGIC) {
        fail("%s: bad magic 0x%08x", d->name, magic);
        return false;
    }
    if (version != 2) {
        fail("%s: version %u, want 2 (virtio 1.x, non-legacy)", d->name,
             version);
        return false;
    }
    d->device_id = rd(d, VIRTIO_MMIO_DEVICE_ID);
    d->vendor_id = rd(d, VIRTIO_MMIO_VENDOR_ID);
    if (d->device_id)
        ksnprintf(d->name, sizeof(d->name), "%s@0x%08x",
                  virtio_id_name(d->device_id), (uint32_t)base);
    return true;
}

bool vdev_has(const struct vdev *d, unsigned feature)
{
    return (d->features >> feature) & 1;
}

bool vdev_reset(struct vdev *d)
{
    wr(d, VIRTIO_MMIO_STATUS, 0);
    /* The reset is complete when Status reads back 0. */
    for (unsigned i = 0; i < 1000000; i++) {
        if (rd(d, VIRTIO_MMIO_STATUS) == 0) {
            for (unsigned q = 0; q < VDEV_MAX_QUEUES; q++)
                d->vq[q].ready = false;
            return true;
        }
        cpu_relax();
    }
    fail("%s: Status did not read 0 after reset", d->name);
    return false;
}

bool vdev_negotiate(struct vdev *d, uint64_t wanted)
{
    if (!vdev_reset(d))
        return false;

    /* Route the GSI now, before the device can raise it: with an edge
     * triggered IOAPIC entry a line that went up while unrouted and is
     * never acknowledged would hide every later interrupt. */
    if (!ioapic_route(d->irq, DEVICE_VECTOR_BASE + d->irq)) {
        fail("%s: irq %u has no IOAPIC redirection entry (IOAPIC has %u)",
             d->name, d->irq, ioapic_entries());
        return false;
    }
    idt_set_handler(DEVICE_VECTOR_BASE + d->irq, vdev_irq, 0);
    if (n_irq_devs < MAX_DEVICES) {
        bool known = false;
        for (unsigned i = 0; i < n_irq_devs; i++)
            known |= irq_devs[i] == d;
        if (!known)
            irq_devs[n_irq_devs++] = d;
    }
    d->active = true;

    set_status(d, VIRTIO_STATUS_ACKNOWLEDGE);
    set_status(d, VIRTIO_STATUS_DRIVER);

    wr(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    uint32_t lo = rd(d, VIRTIO_MMIO_DEVICE_FEATURES);
    wr(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    uint32_t hi = rd(d, VIRTIO_MMIO_DEVICE_FEATURES);
    d->dev_features = ((uint64_t)hi << 32) | lo;

    if (!((d->dev_features >> VIRTIO_F_VERSION_1) & 1)) {
        fail("%s: device does not offer VIRTIO_F_VERSION_1", d->name);
        return false;
    }
    /* Never EVENT_IDX (not implemented here), always VERSION_1. */
    wanted &= ~(1ull << VIRTIO_F_EVENT_IDX);
    wanted |= 1ull << VIRTIO_F_VERSION_1;
    d->features = d->dev_features & wanted;

    wr(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    wr(d, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)d->features);
    wr(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr(d, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(d->features >> 32));

    set_status(d, VIRTIO_STATUS_FEATURES_OK);
    uint32_t st = rd(d, VIRTIO_MMIO_STATUS);
    kprintf("%s: device features 0x%llx, driver features 0x%llx\n", d->name,
            (unsigned long long)d->dev_features,
            (unsigned long long)d->features);
    if (!(st & VIRTIO_STATUS_FEATURES_OK)) {
        fail("%s: FEATURES_OK did not stick (status 0x%x)", d->name, st);
        set_status(d, VIRTIO_STATUS_FAILED);
        return false;
    }
    return true;
}

bool vq_setup(struct vdev *d, unsigned index)
{
    struct virtq *q = &d->vq[index];

    if (index >= VDEV_MAX_QUEUES || queue_pages_used >= QUEUE_PAGES) {
        fail("%s: out of queue memory", d->name);
        return false;
    }
    wr(d, VIRTIO_MMIO_QUEUE_SEL, index);
    if (rd(d, VIRTIO_MMIO_QUEUE_READY)) {
        fail("%s: queue %u: QueueReady is already 1", d->name, index);
        return false;
    }
    uint32_t max = rd(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
    if (max == 0) {
        fail("%s: queue %u: QueueNumMax is 0 (no such queue)", d->name,
             index);
        return false;
    }
    uint16_t num = max < vq_size_max ? (uint16_t)max : vq_size_max;

    /* Page layout: descriptors at 0 (16-byte aligned), avail ring at
     * 1024 (2-byte aligned), used ring at 2048 (4-byte aligned). */
    uint8_t *page = queue_pool[queue_pages_used++];
    memset(page, 0, 4096);
    memset(q, 0, sizeof(*q));
    q->dev = d;
    q->index = (uint16_t)index;
    q->num = num;
    q->desc = (struct vring_desc *)page;
    q->avail = (struct vring_avail *)(page + 1024);
    q->used = (struct vring_used *)(page + 2048);

    wr(d, VIRTIO_MMIO_QUEUE_NUM, num);
    wr(d, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)q->desc);
    wr(d, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
    wr(d, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)q->avail);
    wr(d, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, 0);
    wr(d, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)q->used);
    wr(d, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, 0);
    mb();
    wr(d, VIRTIO_MMIO_QUEUE_READY, 1);
    if (rd(d, VIRTIO_MMIO_QUEUE_READY) != 1) {
        fail("%s: queue %u: QueueReady does not read back 1", d->name,
             index);
        return false;
    }
    q->ready = true;
    kprintf("%s: queue %u: size %u (max %u) desc %p avail %p used %p\n",
            d->name, index, num, max, (void *)q->desc, (void *)q->avail,
            (void *)q->used);
    return true;
}

bool vdev_driver_ok(struct vdev *d)
{
    set_status(d, VIRTIO_STATUS_DRIVER_OK);
    uint32_t st = rd(d, VIRTIO_MMIO_STATUS);
    if (st & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED) ||
        !(st & VIRTIO_STATUS_DRIVER_OK)) {
        fail("%s: bad status 0x%x after DRIVER_OK", d->name, st);
        return false;
    }
    return true;
}

/* ---- config space ---- */

uint32_t vdev_config_read32(struct vdev *d, uint32_t off)
{
    uint32_t gen, v;

    do {
        gen = rd(d, VIRTIO_MMIO_CONFIG_GENERATION);
        v = rd(d, VIRTIO_MMIO_CONFIG + off);
    } while (gen != rd(d, VIRTIO_MMIO_CONFIG_GENERATION));
    return v;
}

uint64_t vdev_config_read64(struct vdev *d, uint32_t off)
{
    uint32_t gen, lo, hi;

    /* Two 32-bit reads; retry if the config changed in between. */
    do {
        gen = rd(d, VIRTIO_MMIO_CONFIG_GENERATION);
        lo = rd(d, VIRTIO_MMIO_CONFIG + off);
        hi = rd(d, VIRTIO_MMIO_CONFIG + off + 4);
    } while (gen != rd(d, VIRTIO_MMIO_CONFIG_GENERATION));
    return ((uint64_t)hi << 32) | lo;
}

/* ---- requests ---- */

uint16_t vq_submit(struct virtq *q, const struct vq_buf *bufs, unsigned n)
{
    uint16_t head = q->next_desc;

    /* One request in flight at a time, so descriptors are simply handed
     * out in rotation (this also moves the head around the table). */
    for (unsigned i = 0; i < n; i++) {
        uint16_t id = (uint16_t)((head + i) % q->num);
        struct vring_desc *dsc = &q->desc[id];
        dsc->addr = (uint32_t)bufs[i].addr;
        dsc->len = bufs[i].len;
        dsc->flags = bufs[i].device_writes ? VRING_DESC_F_WRITE : 0;
        if (i + 1 < n) {
            dsc->flags |= VRING_DESC_F_NEXT;
            dsc->next = (uint16_t)((id + 1) % q->num);
        } else {
            dsc->next = 0;
        }
    }
    q->next_desc = (uint16_t)((head + n) % q->num);

    q->avail->ring[q->avail_idx % q->num] = head;
    mb();                       /* descriptors + ring entry before idx */
    q->avail_idx++;
    *(volatile uint16_t *)&q->avail->idx = q->avail_idx;
    mb();                       /* idx before the notification */
    wr(q->dev, VIRTIO_MMIO_QUEUE_NOTIFY, q->index);
    return head;
}

/* Grace period for the interrupt after the used ring has advanced. */
#define IRQ_GRACE_TICKS (TIMER_TICKS_PER_SECOND / 2)

bool vq_wait(struct virtq *q, uint16_t head, uint32_t *len)
{
    struct vdev *d = q->dev;
    volatile uint16_t *used_idx = &q->used->idx;
    uint32_t start = timer_ticks(), advanced_at = 0;
    uint32_t no_status_before = d->irq_no_status;
    bool advanced = false;

    for (;;) {
        cli();
        uint16_t used = *used_idx;
        if (used != q->last_used) {
            /* Completed; did an interrupt report it? */
            if (q->irq_used_idx != q->last_used)
                break;
            if (!advanced) {
                advanced = true;
                advanced_at = timer_ticks();
            } else if (timer_ticks() - advanced_at > IRQ_GRACE_TICKS) {
                if (d->irq_no_status != no_status_before)
                    fail("%s: queue %u: request completed, interrupt came "
                         "but InterruptStatus read 0 (VRING bit not set)",
                         d->name, q->index);
                else
                    fail("%s: queue %u: no interrupt (used.idx advanced to "
                         "%u, %u interrupts so far)", d->name, q->index,
                         used, d->irq_count);
                return false;
            }
        }
        if (timer_ticks() - start > timeout_ticks) {
            fail("%s: queue %u: timeout, no completion (avail.idx %u "
                 "used.idx %u, status 0x%x, %u interrupts)", d->name,
                 q->index, q->avail_idx, used, rd(d, VIRTIO_MMIO_STATUS),
                 d->irq_count);
            return false;
        }
        /* Sleep until the device interrupt or the next timer tick. */
        sti_hlt();
    }
    mb();                       /* read idx before the ring entry */
    struct vring_used_elem *e = &q->used->ring[q->last_used % q->num];
    uint32_t id = e->id, l = e->len;
    q->last_used++;
    if (*used_idx != q->last_used) {
        fail("%s: queue %u: used.idx %u, expected %u (one request in "
             "flight)", d->name, q->index, *used_idx, q->last_used);
        return false;
    }
    if (id != head) {
        fail("%s: queue %u: used id %u, expected head %u", d->name,
             q->index, id, head);
        return false;
    }
    if (len)
        *len = l;
    return true;
}

bool vq_wait_all(struct virtq *q, unsigned n, uint16_t *ids, uint32_t *lens)
{
    struct vdev *d = q->dev;
    volatile uint16_t *used_idx = &q->used->idx;
    uint16_t target = (uint16_t)(q->last_used + n);
    uint32_t start = timer_ticks(), config_seen = d->irq_config;
    uint32_t checked = start;

    for (;;) {
        cli();
        uint16_t used = *used_idx;
        if ((uint16_t)(used - q->last_used) > n) {
            fail("%s: queue %u: used.idx %u ran past %u (%u requests in "
                 "flight)", d->name, q->index, used, target, n);
            return false;
        }
        if (used == target)
            break;
        /* A config interrupt, or once a second: has the device given up? */
        if (d->irq_config != config_seen ||
            timer_ticks() - checked >= TIMER_TICKS_PER_SECOND) {
            config_seen = d->irq_config;
            checked = timer_ticks();
            uint32_t st = rd(d, VIRTIO_MMIO_STATUS);
            if (st & VIRTIO_STATUS_NEEDS_RESET) {
                fail("%s: queue %u: device set DEVICE_NEEDS_RESET (status "
                     "0x%x) with %u of %u requests done", d->name, q->index,
                     st, (uint16_t)(used - q->last_used), n);
                return false;
            }
        }
        if (timer_ticks() - start > timeout_ticks) {
            fail("%s: queue %u: timeout, %u of %u requests completed "
                 "(avail.idx %u used.idx %u, status 0x%x, %u interrupts)",
                 d->name, q->index, (uint16_t)(used - q->last_used), n,
                 q->avail_idx, used, rd(d, VIRTIO_MMIO_STATUS),
                 d->irq_count);
            return false;
        }
        sti_hlt();
    }
    mb();                       /* read idx before the ring entries */
    for (unsigned i = 0; i < n; i++) {
        struct vring_used_elem *e = &q->used->ring[q->last_used % q->num];
        ids[i] = (uint16_t)e->id;
        if (lens)
            lens[i] = e->len;
        q->last_used++;
    }
    return true;
}
