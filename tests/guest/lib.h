/* The few libc-like helpers the guest needs (gcc may also emit calls to
 * memset/memcpy/memcmp by itself, so these must exist). */
#ifndef GUEST_LIB_H
#define GUEST_LIB_H

#include <stddef.h>
#include <stdint.h>

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strncmp(const char *a, const char *b, size_t n);

/* 64-bit unsigned division by a 32-bit value without libgcc (__udivdi3). */
uint64_t udiv64(uint64_t n, uint32_t d, uint32_t *rem);

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
