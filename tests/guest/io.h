/* Port I/O, MMIO accessors, barriers and CPU helpers (x86, 32-bit). */
#ifndef GUEST_IO_H
#define GUEST_IO_H

#include <stdint.h>
#include <stddef.h>
#include <stdbool.h>

static inline void outb(uint16_t port, uint8_t v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

/* MMIO: paging is off, so physical == virtual.  volatile keeps the access
 * size and count exactly as written. */
static inline uint32_t mmio_read32(uintptr_t addr)
{
    return *(volatile uint32_t *)addr;
}

static inline void mmio_write32(uintptr_t addr, uint32_t v)
{
    *(volatile uint32_t *)addr = v;
}

static inline uint8_t mmio_read8(uintptr_t addr)
{
    return *(volatile uint8_t *)addr;
}

/* Compiler barrier. */
static inline void barrier(void)
{
    __asm__ volatile("" : : : "memory");
}

/* Full memory barrier (works on every x86, no SSE2 needed). */
static inline void mb(void)
{
    __asm__ volatile("lock; addl $0, (%%esp)" : : : "memory", "cc");
}

static inline void cpu_relax(void)
{
    __asm__ volatile("pause" : : : "memory");
}

static inline void cli(void)
{
    __asm__ volatile("cli" : : : "memory");
}

/* Enable interrupts and halt until the next one.  "sti" delays interrupt
 * delivery by one instruction, so an interrupt that is already pending
 * wakes the hlt instead of being taken before it (no lost wake-up). */
static inline void sti_hlt(void)
{
    __asm__ volatile("sti; hlt" : : : "memory", "cc");
}

static inline uint64_t rdmsr(uint32_t msr)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((uint64_t)hi << 32) | lo;
}

static inline void wrmsr(uint32_t msr, uint64_t v)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v),
                     "d"((uint32_t)(v >> 32)));
}

#endif
