/* virtio-blk stress mode (guesttest=stress); see README.md. */
#ifndef GUEST_BLKSTRESS_H
#define GUEST_BLKSTRESS_H

#include <stdint.h>
#include "virtio_mmio.h"

/* The sector range the stress rounds write.  Small on purpose: under a
 * software KVM the guest's own loops (fill, compare) cost more than the I/O. */
#define STRESS_SECTOR       4096u
#define STRESS_CHAINS       8u          /* requests in flight at once */
#define STRESS_CHAIN_SECTORS 2u         /* 1 KiB per request */
#define STRESS_SECTORS      (STRESS_CHAINS * STRESS_CHAIN_SECTORS)

/* 32-bit little-endian word w (0-based from the start of the range) after
 * round r (1-based) was written. */
static inline uint32_t stress_word(uint32_t r, uint32_t w)
{
    return r * 2654435761u ^ w * 2246822519u;
}

void blk_stress(struct vdev *d, uint32_t rounds, uint32_t progress);

#endif
