/* 8259 PIC, local APIC and IOAPIC (see apic.h). */
#include "apic.h"
#include "idt.h"
#include "io.h"
#include "print.h"

/* ---- 8259 PICs ---- */

#define PIC1_CMD    0x20
#define PIC1_DATA   0x21
#define PIC2_CMD    0xa0
#define PIC2_DATA   0xa1

void pic_disable(void)
{
    /* Re-initialise (ICW1-4) so that even a stray PIC interrupt lands on
     * vectors 0x20-0x2f rather than on CPU exception vectors, then mask
     * every line: all device interrupts go through the IOAPIC. */
    outb(PIC1_CMD, 0x11);                   /* ICW1: init, ICW4 needed */
    outb(PIC2_CMD, 0x11);
    outb(PIC1_DATA, PIC_VECTOR_BASE);       /* ICW2: vector base */
    outb(PIC2_DATA, PIC_VECTOR_BASE + 8);
    outb(PIC1_DATA, 0x04);                  /* ICW3: slave on IR2 */
    outb(PIC2_DATA, 0x02);
    outb(PIC1_DATA, 0x01);                  /* ICW4: 8086 mode */
    outb(PIC2_DATA, 0x01);
    outb(PIC1_DATA, 0xff);                  /* OCW1: mask all */
    outb(PIC2_DATA, 0xff);
}

/* ---- local APIC ---- */

#define IA32_APIC_BASE_MSR      0x1b
#define APIC_BASE_ENABLE        (1u << 11)

#define LAPIC_ID        0x020
#define LAPIC_VERSION   0x030
#define LAPIC_TPR       0x080
#define LAPIC_EOI       0x0b0
#define LAPIC_SVR       0x0f0
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_LVT_ERROR 0x370
#define LAPIC_TIMER_ICR 0x380
#define LAPIC_TIMER_DCR 0x3e0

#define SVR_ENABLE      (1u << 8)
#define LVT_MASKED      (1u << 16)
#define LVT_PERIODIC    (1u << 17)
#define LVT_DM_NMI      (4u << 8)
#define DCR_DIV1        0xb

static inline uint32_t lapic_read(uint32_t reg)
{
    return mmio_read32(LAPIC_BASE + reg);
}

static inline void lapic_write(uint32_t reg, uint32_t v)
{
    mmio_write32(LAPIC_BASE + reg, v);
}

void lapic_init(void)
{
    uint64_t base = rdmsr(IA32_APIC_BASE_MSR);

    /* Globally enabled at the default address (the reset state). */
    if (!(base & APIC_BASE_ENABLE) || (base & 0xfffff000u) != LAPIC_BASE) {
        kprintf("apic: IA32_APIC_BASE 0x%llx, setting 0x%x|enable\n",
                (unsigned long long)base, LAPIC_BASE);
        wrmsr(IA32_APIC_BASE_MSR, (base & 0xfff & ~0x400ull) | LAPIC_BASE |
              APIC_BASE_ENABLE);
    }
    lapic_write(LAPIC_TPR, 0);                  /* accept all priorities */
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED);
    lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);   /* ExtINT from the PIC: off */
    lapic_write(LAPIC_LVT_LINT1, LVT_DM_NMI);   /* NMI as usual */
    lapic_write(LAPIC_LVT_ERROR, LVT_MASKED);
    lapic_write(LAPIC_SVR, SVR_ENABLE | APIC_SPURIOUS_VECTOR);
}

uint32_t lapic_id(void)
{
    return lapic_read(LAPIC_ID) >> 24;
}

void lapic_eoi(void)
{
    lapic_write(LAPIC_EOI, 0);
}

static volatile uint32_t ticks;

static void timer_irq(uint8_t vector, void *arg)
{
    (void)vector;
    (void)arg;
    ticks++;
}

void lapic_timer_start(void)
{
    idt_set_handler(TIMER_VECTOR, timer_irq, 0);
    lapic_write(LAPIC_TIMER_DCR, DCR_DIV1);
    lapic_write(LAPIC_LVT_TIMER, LVT_PERIODIC | TIMER_VECTOR);
    lapic_write(LAPIC_TIMER_ICR, TIMER_INITIAL_COUNT);
}

uint32_t timer_ticks(void)
{
    return ticks;
}

/* ---- IOAPIC ---- */

#define IOAPIC_REGSEL   0x00
#define IOAPIC_WIN      0x10
#define IOAPIC_REG_VER  0x01
#define IOAPIC_REDTBL(n) (0x10 + 2 * (n))

#define RTE_MASKED      (1u << 16)

static uint32_t ioapic_read(uint32_t reg)
{
    mmio_write32(IOAPIC_BASE + IOAPIC_REGSEL, reg);
    return mmio_read32(IOAPIC_BASE + IOAPIC_WIN);
}

static void ioapic_write(uint32_t reg, uint32_t v)
{
    mmio_write32(IOAPIC_BASE + IOAPIC_REGSEL, reg);
    mmio_write32(IOAPIC_BASE + IOAPIC_WIN, v);
}

unsigned ioapic_entries(void)
{
    uint32_t ver = ioapic_read(IOAPIC_REG_VER);

    if (ver == 0xffffffffu)
        return 0;
    return ((ver >> 16) & 0xff) + 1;
}

bool ioapic_route(uint32_t gsi, uint8_t vector)
{
    if (gsi >= ioapic_entries())
        return false;
    /* High dword: destination APIC ID (physical mode). */
    ioapic_write(IOAPIC_REDTBL(gsi) + 1, lapic_id() << 24);
    /* Low dword: vector, delivery fixed (000), dest mode physical (0),
     * active high (0), edge triggered (0), not masked (0). */
    ioapic_write(IOAPIC_REDTBL(gsi), vector);
    return true;
}

void ioapic_mask(uint32_t gsi)
{
    if (gsi < ioapic_entries())
        ioapic_write(IOAPIC_REDTBL(gsi), RTE_MASKED);
}
