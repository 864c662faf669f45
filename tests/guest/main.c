/*
 * splitvm test guest: main flow.
 *
 * Entered from start.S with the physical address of struct hvm_start_info
 * (PVH boot ABI).  Sets up COM1, the IDT, the interrupt controllers and a
 * timeout tick, then tests every virtio-mmio device listed on the command
 * line (virtio_mmio.device=<size>@<base>:<irq>) and ends with one line
 * "SPLITVM-GUEST PASS" or "SPLITVM-GUEST FAIL <reason>" and a reset.
 */
#include <stdint.h>
#include "apic.h"
#include "blk.h"
#include "blkstress.h"
#include "cmdline.h"
#include "idt.h"
#include "io.h"
#include "print.h"
#include "report.h"
#include "rng.h"
#include "uart.h"
#include "virtio_mmio.h"

/* PVH boot ABI: xen/include/public/arch-x86/hvm/start_info.h */
#define HVM_START_MAGIC 0x336ec578u

struct hvm_start_info {
    uint32_t magic;
    uint32_t version;
    uint32_t flags;
    uint32_t nr_modules;
    uint64_t modlist_paddr;
    uint64_t cmdline_paddr;
    uint64_t rsdp_paddr;
    uint64_t memmap_paddr;      /* version >= 1 */
    uint32_t memmap_entries;    /* version >= 1 */
    uint32_t reserved;
};

struct hvm_memmap_table_entry {
    uint64_t addr;
    uint64_t size;
    uint32_t type;
    uint32_t reserved;
};

static struct cmdline cmdline;
static struct vdev devs[MAX_DEVICES];

static void show_start_info(const struct hvm_start_info *si)
{
    kprintf("start_info: version %u flags 0x%x cmdline 0x%llx memmap 0x%llx "
            "(%u entries)\n", si->version, si->flags,
            (unsigned long long)si->cmdline_paddr,
            (unsigned long long)(si->version >= 1 ? si->memmap_paddr : 0),
            si->version >= 1 ? si->memmap_entries : 0);
    if (si->version >= 1 && si->memmap_paddr &&
        si->memmap_paddr < 0x100000000ull) {
        const struct hvm_memmap_table_entry *e =
            (const void *)(uintptr_t)si->memmap_paddr;
        for (uint32_t i = 0; i < si->memmap_entries && i < 32; i++)
            if (e[i].size)
                kprintf("  memmap: 0x%010llx-0x%010llx type %u\n",
                        (unsigned long long)e[i].addr,
                        (unsigned long long)(e[i].addr + e[i].size - 1),
                        e[i].type);
    }
}

static const char *get_cmdline(const struct hvm_start_info *si)
{
    if (!si->cmdline_paddr || si->cmdline_paddr >= 0x100000000ull)
        return 0;
    return (const char *)(uintptr_t)si->cmdline_paddr;
}

/* Wait for two LAPIC timer ticks: the timeouts depend on them. */
static void check_timer(void)
{
    kprintf("apic: id %u, IOAPIC with %u redirection entries; waiting for "
            "LAPIC timer\n", lapic_id(), ioapic_entries());
    uint32_t t0 = timer_ticks();
    while (timer_ticks() - t0 < 2)
        sti_hlt();
    cli();
    kprintf("apic: timer OK\n");
}

void guest_main(uint32_t start_info_paddr);

void guest_main(uint32_t start_info_paddr)
{
    const struct hvm_start_info *si = (const void *)start_info_paddr;

    uart_init();
    kprintf("\nsplitvm-test-guest: start (start_info at 0x%08x)\n",
            start_info_paddr);
    idt_init();                 /* from now on exceptions are reported */

    if (si->magic != HVM_START_MAGIC)
        fatal("bad hvm_start_info magic 0x%08x (want 0x%08x)", si->magic,
              HVM_START_MAGIC);
    show_start_info(si);

    const char *cl = get_cmdline(si);
    kprintf("cmdline: \"%s\"\n", cl ? cl : "");
    cmdline_parse(cl, &cmdline);
    virtio_set_timeout(cmdline.timeout_s);
    if (cmdline.stress)
        kprintf("mode: stress, %u rounds, progress every %u\n",
                cmdline.iters, cmdline.progress);
    if (cmdline.bad_entries)
        fail("%u malformed virtio_mmio.device= entries", cmdline.bad_entries);
    if (cmdline.dropped)
        fail("more than %u virtio_mmio.device= entries", MAX_DEVICES);

    pic_disable();
    lapic_init();
    lapic_timer_start();
    check_timer();

    kprintf("virtio-mmio: %u device entries\n", cmdline.ndev);
    unsigned found = 0, tested = 0;
    for (unsigned i = 0; i < cmdline.ndev; i++) {
        const struct mmio_dev_desc *dd = &cmdline.dev[i];
        struct vdev *d = &devs[i];

        kprintf("virtio-mmio: 0x%llx size 0x%llx irq %u\n",
                (unsigned long long)dd->base, (unsigned long long)dd->size,
                dd->irq);
        if (!vdev_probe(d, dd->base, dd->size, dd->irq))
            continue;
        kprintf("%s: device id %u (%s), vendor 0x%08x\n", d->name,
                d->device_id, virtio_id_name(d->device_id), d->vendor_id);
        if (d->device_id == 0) {
            kprintf("%s: no device behind this transport: skip\n", d->name);
            continue;
        }
        found++;
        switch (d->device_id) {
        case VIRTIO_ID_BLOCK:
            if (cmdline.stress)
                blk_stress(d, cmdline.iters, cmdline.progress);
            else
                blk_test(d);
            tested++;
            break;
        case VIRTIO_ID_RNG:
            if (cmdline.stress)
                rng_stress(d, cmdline.iters, cmdline.progress);
            else
                rng_test(d);
            tested++;
            break;
        default:
            kprintf("%s: skip\n", d->name);
            break;
        }
    }

    kprintf("summary: %u device entries, %u devices found, %u tested, %u "
            "failures\n", cmdline.ndev, found, tested, fail_count());
    if (!found)
        fail("no virtio-mmio devices found");
    finish();
}
