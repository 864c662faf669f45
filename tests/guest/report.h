/*
 * Test result bookkeeping and the end of the run.
 *
 * fail() prints "FAIL: <reason>" as a progress line and keeps the first
 * reason; finish() prints exactly one final line, "SPLITVM-GUEST PASS" or
 * "SPLITVM-GUEST FAIL <first reason>", then resets the machine (i8042
 * 0xFE to port 0x64) and, if that returns, stops with cli; hlt.
 */
#ifndef GUEST_REPORT_H
#define GUEST_REPORT_H

#include <stdbool.h>

void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
unsigned fail_count(void);
void finish(void) __attribute__((noreturn));
/* For fatal errors (CPU exception...): fail() then finish(). */
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
