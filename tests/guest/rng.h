/* virtio-rng (entropy) test (device id 4); see README.md. */
#ifndef GUEST_RNG_H
#define GUEST_RNG_H

#include "virtio_mmio.h"

void rng_test(struct vdev *d);

#endif
