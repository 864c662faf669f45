/* IDT setup and C-level interrupt dispatch (see idt.h, isr.S). */
#include "idt.h"
#include "apic.h"
#include "report.h"
#include "print.h"

struct idt_gate {
    uint16_t offset_lo;
    uint16_t selector;
    uint8_t zero;
    uint8_t type_attr;
    uint16_t offset_hi;
} __attribute__((packed));

struct idt_ptr {
    uint16_t limit;
    uint32_t base;
} __attribute__((packed));

#define KERNEL_CS       0x08
#define GATE_INTR32     0x8e    /* present, DPL 0, 32-bit interrupt gate */

extern const uint32_t isr_stub_table[256];

static struct idt_gate idt[256] __attribute__((aligned(8)));
static irq_handler_t handlers[256];
static void *handler_args[256];

void idt_init(void)
{
    for (unsigned v = 0; v < 256; v++) {
        uint32_t addr = isr_stub_table[v];
        idt[v].offset_lo = addr & 0xffff;
        idt[v].selector = KERNEL_CS;
        idt[v].zero = 0;
        idt[v].type_attr = GATE_INTR32;
        idt[v].offset_hi = addr >> 16;
    }
    struct idt_ptr p = { sizeof(idt) - 1, (uint32_t)idt };
    __asm__ volatile("lidt %0" : : "m"(p));
}

void idt_set_handler(uint8_t vector, irq_handler_t fn, void *arg)
{
    handler_args[vector] = arg;
    handlers[vector] = fn;
}

static const char *const exc_names[32] = {
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM",
    "#DF", "#09", "#TS", "#NP", "#SS", "#GP", "#PF", "#15",
    "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
};

void isr_dispatch(struct isr_frame *f);

void isr_dispatch(struct isr_frame *f)
{
    uint32_t v = f->vector;

    if (v < 32) {
        const char *name = exc_names[v] ? exc_names[v] : "#??";
        fatal("CPU exception %u %s error 0x%x at eip 0x%08x", v, name,
              f->error_code, f->eip);
    }
    if (v == APIC_SPURIOUS_VECTOR)
        return;                 /* no EOI for spurious interrupts */
    if (handlers[v])
        handlers[v]((uint8_t)v, handler_args[v]);
    else
        kprintf("warning: unexpected interrupt vector 0x%02x\n", v);
    lapic_eoi();
}
