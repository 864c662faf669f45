/*
 * Interrupt descriptor table.  Vectors 0-31 are CPU exceptions (fatal:
 * the guest prints FAIL and resets).  Other vectors call the handler
 * registered with idt_set_handler(); for those the local APIC gets an EOI
 * after the handler returns (except the APIC spurious vector).
 */
#ifndef GUEST_IDT_H
#define GUEST_IDT_H

#include <stdint.h>

/* Saved state, as laid out by isr.S (pushal, then vector, error code,
 * and what the CPU pushed). */
struct isr_frame {
    uint32_t edi, esi, ebp, esp_unused, ebx, edx, ecx, eax;
    uint32_t vector, error_code;
    uint32_t eip, cs, eflags;
};

typedef void (*irq_handler_t)(uint8_t vector, void *arg);

void idt_init(void);
void idt_set_handler(uint8_t vector, irq_handler_t fn, void *arg);

#endif
