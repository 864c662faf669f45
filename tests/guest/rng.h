/* virtio-rng (entropy) test (device id 4); see README.md. */
#ifndef GUEST_RNG_H
#define GUEST_RNG_H

#include "virtio_mmio.h"

void rng_test(struct vdev *d);
/* guesttest=stress: rounds reads, a "<name>: round R ok" line every
 * progress rounds. */
void rng_stress(struct vdev *d, uint32_t rounds, uint32_t progress);

#endif
