/*
 * virtio-mmio transport (virtio 1.x, "version 2" register layout only) and
 * split virtqueues, driven by interrupt.
 *
 * A test driver does:
 *   vdev_probe()                magic, version 2, DeviceID
 *   vdev_negotiate(wanted)      reset, ACKNOWLEDGE, DRIVER, features,
 *                               FEATURES_OK (checked)
 *   vq_setup(q)                 per queue: QueueSel, QueueReady==0 check,
 *                               QueueNumMax, QueueNum, Desc/Driver/Device
 *                               Low/High, QueueReady=1
 *   vdev_driver_ok()            DRIVER_OK, IOAPIC route for the device GSI
 *   vq_submit()/vq_wait()       one request in flight at a time; vq_wait
 *                               sleeps in sti;hlt until the interrupt
 *   vdev_reset()                Status=0 and wait until it reads back 0
 */
#ifndef GUEST_VIRTIO_MMIO_H
#define GUEST_VIRTIO_MMIO_H

#include <stdint.h>
#include <stdbool.h>

/* Registers (virtio 1.x spec, 4.2.2 "MMIO Device Register Layout"). */
#define VIRTIO_MMIO_MAGIC_VALUE         0x000
#define VIRTIO_MMIO_VERSION             0x004
#define VIRTIO_MMIO_DEVICE_ID           0x008
#define VIRTIO_MMIO_VENDOR_ID           0x00c
#define VIRTIO_MMIO_DEVICE_FEATURES     0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES     0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL           0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX       0x034
#define VIRTIO_MMIO_QUEUE_NUM           0x038
#define VIRTIO_MMIO_QUEUE_READY         0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY        0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS    0x060
#define VIRTIO_MMIO_INTERRUPT_ACK       0x064
#define VIRTIO_MMIO_STATUS              0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW      0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH     0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW    0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH   0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW    0x0a0
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH   0x0a4
#define VIRTIO_MMIO_CONFIG_GENERATION   0x0fc
#define VIRTIO_MMIO_CONFIG              0x100

#define VIRTIO_MMIO_MAGIC               0x74726976u     /* "virt" */

/* Device status bits. */
#define VIRTIO_STATUS_ACKNOWLEDGE       1
#define VIRTIO_STATUS_DRIVER            2
#define VIRTIO_STATUS_DRIVER_OK         4
#define VIRTIO_STATUS_FEATURES_OK       8
#define VIRTIO_STATUS_NEEDS_RESET       0x40
#define VIRTIO_STATUS_FAILED            0x80

/* InterruptStatus bits. */
#define VIRTIO_MMIO_INT_VRING           1
#define VIRTIO_MMIO_INT_CONFIG          2

/* Feature bits we look at. */
#define VIRTIO_F_INDIRECT_DESC          28
#define VIRTIO_F_EVENT_IDX              29
#define VIRTIO_F_VERSION_1              32
#define VIRTIO_F_ACCESS_PLATFORM        33

/* Device IDs. */
#define VIRTIO_ID_NET                   1
#define VIRTIO_ID_BLOCK                 2
#define VIRTIO_ID_CONSOLE               3
#define VIRTIO_ID_RNG                   4

/* Split virtqueue layout (virtio 1.x, 2.7). */
#define VRING_DESC_F_NEXT               1
#define VRING_DESC_F_WRITE              2

struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct vring_avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[];
};

struct vring_used_elem {
    uint32_t id;
    uint32_t len;
};

struct vring_used {
    uint16_t flags;
    uint16_t idx;
    struct vring_used_elem ring[];
};

/* Queue size we ask for (at most): small on purpose, so that the few
 * requests of a test run wrap around the rings. */
#define VQ_SIZE_MAX     8
/* Largest size the one-page queue layout holds (descriptors below 1 KiB). */
#define VQ_SIZE_LIMIT   64
#define VDEV_MAX_QUEUES 2

struct vdev;

struct virtq {
    struct vdev *dev;
    uint16_t index;             /* queue number on the device */
    uint16_t num;               /* negotiated size */
    struct vring_desc *desc;
    struct vring_avail *avail;
    struct vring_used *used;
    uint16_t next_desc;         /* next descriptor to hand out (rotates) */
    uint16_t avail_idx;         /* our copy of avail->idx */
    uint16_t last_used;         /* used entries consumed so far */
    /* used->idx as read by the interrupt handler on an interrupt with the
     * VRING bit set: tells vq_wait that an interrupt came after the
     * completion was published. */
    volatile uint16_t irq_used_idx;
    bool ready;
};

struct vdev {
    uintptr_t base;
    uint32_t size;
    uint32_t irq;               /* GSI */
    uint32_t device_id;
    uint32_t vendor_id;
    uint64_t dev_features;      /* offered */
    uint64_t features;          /* negotiated */
    char name[24];              /* e.g. "blk@0xd0000000" */
    struct virtq vq[VDEV_MAX_QUEUES];
    bool active;                /* handler looks at it */
    /* Interrupt statistics (written by the handler). */
    volatile uint32_t irq_count;        /* all interrupts for this device */
    volatile uint32_t irq_vring;        /* with InterruptStatus.VRING */
    volatile uint32_t irq_config;       /* with InterruptStatus.CONFIG */
    volatile uint32_t irq_no_status;    /* InterruptStatus read 0 */
};

/* One buffer of a descriptor chain. */
struct vq_buf {
    void *addr;
    uint32_t len;
    bool device_writes;         /* VRING_DESC_F_WRITE */
};

/* Per-request timeout for vq_wait(), in seconds. */
void virtio_set_timeout(uint32_t seconds);

const char *virtio_id_name(uint32_t id);

/* Check magic/version, read IDs.  Returns false (after fail() where it is
 * an error) if the device cannot be used.  device_id 0 = empty slot. */
bool vdev_probe(struct vdev *d, uint64_t base, uint64_t size, uint32_t irq);
bool vdev_negotiate(struct vdev *d, uint64_t wanted);
bool vdev_has(const struct vdev *d, unsigned feature);
bool vq_setup(struct vdev *d, unsigned index);
bool vdev_driver_ok(struct vdev *d);
bool vdev_reset(struct vdev *d);

uint32_t vdev_config_read32(struct vdev *d, uint32_t off);
uint64_t vdev_config_read64(struct vdev *d, uint32_t off);

/* Queue a chain of n buffers (n <= vq->num) and notify; returns the head. */
uint16_t vq_submit(struct virtq *q, const struct vq_buf *bufs, unsigned n);
/* Queue size vq_setup() asks for at most (default VQ_SIZE_MAX; the stress
 * mode uses more, to have several requests in flight). */
void vq_set_size_max(uint16_t n);
/* Wait for the next n completions (several requests in flight); their used
 * ids (and lengths, if lens) in completion order.  Wakes on interrupts and
 * timer ticks; does not require an interrupt per completion.  Returns false
 * after fail() on timeout or when the device sets DEVICE_NEEDS_RESET. */
bool vq_wait_all(struct virtq *q, unsigned n, uint16_t *ids, uint32_t *lens);
/* Wait (by interrupt) for the completion of head; *len = used length.
 * Returns false after fail() on timeout, missing interrupt, wrong id. */
bool vq_wait(struct virtq *q, uint16_t head, uint32_t *len);

#endif
