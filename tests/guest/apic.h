/*
 * Interrupt controllers: the legacy 8259 PICs (remapped and fully masked),
 * the BSP's local APIC at 0xfee00000 (software enabled through the SVR,
 * EOI, a periodic timer used as the wait timeout tick) and the IOAPIC at
 * 0xfec00000 (one redirection entry per device GSI).
 */
#ifndef GUEST_APIC_H
#define GUEST_APIC_H

#include <stdint.h>
#include <stdbool.h>

#define LAPIC_BASE              0xfee00000u
#define IOAPIC_BASE             0xfec00000u

/* Vector plan. */
#define PIC_VECTOR_BASE         0x20    /* 8259s, masked: never delivered */
#define DEVICE_VECTOR_BASE      0x30    /* GSI n -> vector 0x30 + n */
#define TIMER_VECTOR            0xef
#define APIC_SPURIOUS_VECTOR    0xff

/* LAPIC timer period, in APIC timer ticks at divide-by-1.  KVM's and
 * QEMU's emulated APIC count at 1 GHz, so this is 10 ms per tick. */
#define TIMER_INITIAL_COUNT     10000000u
#define TIMER_TICKS_PER_SECOND  100u

void pic_disable(void);
void lapic_init(void);
uint32_t lapic_id(void);
void lapic_eoi(void);
void lapic_timer_start(void);
/* Timer ticks counted since lapic_timer_start() (only advance while
 * interrupts are enabled, i.e. while the guest waits). */
uint32_t timer_ticks(void);

/* Number of IOAPIC redirection entries (0 if no IOAPIC answers). */
unsigned ioapic_entries(void);
/* Route GSI -> vector on the BSP: fixed delivery, physical destination,
 * edge triggered, active high, unmasked. */
bool ioapic_route(uint32_t gsi, uint8_t vector);
void ioapic_mask(uint32_t gsi);

#endif
