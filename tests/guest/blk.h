/* virtio-blk test (device id 2); see README.md for what it checks. */
#ifndef GUEST_BLK_H
#define GUEST_BLK_H

#include "virtio_mmio.h"

/* The sector range the test writes, and its pattern. */
#define BLK_TEST_SECTOR     2048u
#define BLK_TEST_SECTORS    8u
#define BLK_PATTERN(sector, byte) ((uint8_t)((sector) * 7u + (byte)))

void blk_test(struct vdev *d);

#endif
