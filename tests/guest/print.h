/*
 * Minimal printf.  Conversions: %s %c %d %u %x %X %p %%, the 'l' and 'll'
 * length modifiers (ll = 64-bit), a '0' flag and a field width.
 */
#ifndef GUEST_PRINT_H
#define GUEST_PRINT_H

#include <stdarg.h>
#include <stddef.h>

void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void kvsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
void ksnprintf(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
