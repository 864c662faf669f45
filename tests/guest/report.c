/* Test result bookkeeping and machine reset (see report.h). */
#include "report.h"
#include "print.h"
#include "io.h"
#include <stdarg.h>

static char first_reason[160];
static unsigned failures;

static void vfail(const char *fmt, va_list ap)
{
    char reason[160];

    kvsnprintf(reason, sizeof(reason), fmt, ap);
    kprintf("FAIL: %s\n", reason);
    if (failures++ == 0) {
        for (unsigned i = 0; i < sizeof(first_reason); i++)
            if (!(first_reason[i] = reason[i]))
                break;
        first_reason[sizeof(first_reason) - 1] = '\0';
    }
}

void fail(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vfail(fmt, ap);
    va_end(ap);
}

unsigned fail_count(void)
{
    return failures;
}

void finish(void)
{
    cli();
    if (failures)
        kprintf("SPLITVM-GUEST FAIL %s\n", first_reason);
    else
        kprintf("SPLITVM-GUEST PASS\n");

    /* Reset through the i8042 keyboard controller (pulse the CPU reset
     * line).  A VMM sees a port write of 0xfe to 0x64 and ends the VM. */
    outb(0x64, 0xfe);

    /* No i8042, or it did nothing: stop here for good. */
    for (;;)
        __asm__ volatile("cli; hlt");
}

void fatal(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vfail(fmt, ap);
    va_end(ap);
    finish();
}
