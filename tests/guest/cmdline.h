/*
 * Kernel command line parsing.
 *
 * Device entries use Linux's virtio-mmio format:
 *     virtio_mmio.device=<size>@<base>:<irq>[:<id>]
 * <size>: decimal or 0x-hex, optional K/M/G suffix (e.g. 4K, 0x1000, 512);
 * <base>: decimal or 0x-hex (e.g. 0xd0000000); <irq>: decimal GSI.
 * Other words are ignored except the test parameters listed below.
 */
#ifndef GUEST_CMDLINE_H
#define GUEST_CMDLINE_H

#include <stdbool.h>
#include <stdint.h>

#define MAX_DEVICES 16

struct mmio_dev_desc {
    uint64_t base;
    uint64_t size;
    uint32_t irq;
};

struct cmdline {
    struct mmio_dev_desc dev[MAX_DEVICES];
    unsigned ndev;
    unsigned bad_entries;       /* malformed virtio_mmio.device= entries */
    unsigned dropped;           /* entries beyond MAX_DEVICES */
    /* guesttimeout=<seconds>: per-request timeout (default 10). */
    uint32_t timeout_s;
    /* guesttest=stress: blk and rng run guestiters=<N> rounds (default
     * 100), printing a progress line every guestprogress=<K> rounds
     * (default 10); see README.md.  Default: the one-pass tests. */
    bool stress;
    uint32_t iters;
    uint32_t progress;
};

void cmdline_parse(const char *s, struct cmdline *out);

#endif
