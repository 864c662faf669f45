/* Minimal printf to COM1 and to buffers (see print.h). */
#include "print.h"
#include "uart.h"
#include "lib.h"
#include <stdint.h>
#include <stdbool.h>

/* Output sink: either the UART or a bounded buffer. */
struct sink {
    char *buf;          /* NULL: UART */
    size_t size, len;
};

static void sink_put(struct sink *s, char c)
{
    if (!s->buf) {
        uart_putc(c);
        return;
    }
    if (s->len + 1 < s->size)
        s->buf[s->len++] = c;
}

static void put_num(struct sink *s, uint64_t v, unsigned base, bool upper,
                    bool neg, int width, char pad)
{
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    char tmp[24];
    int n = 0;

    do {
        uint32_t r;
        v = udiv64(v, base, &r);
        tmp[n++] = digits[r];
    } while (v);
    if (neg)
        width--;
    if (neg && pad == '0')
        sink_put(s, '-');
    for (int i = n; i < width; i++)
        sink_put(s, pad);
    if (neg && pad != '0')
        sink_put(s, '-');
    while (n)
        sink_put(s, tmp[--n]);
}

static void vformat(struct sink *s, const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            sink_put(s, *fmt);
            continue;
        }
        fmt++;
        char pad = ' ';
        int width = 0, lng = 0;
        if (*fmt == '0') {
            pad = '0';
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l') {
            lng++;
            fmt++;
        }
        switch (*fmt) {
        case 'c':
            sink_put(s, (char)va_arg(ap, int));
            break;
        case 's': {
            const char *str = va_arg(ap, const char *);
            if (!str)
                str = "(null)";
            int len = (int)strlen(str);
            for (int i = len; i < width; i++)
                sink_put(s, ' ');
            while (*str)
                sink_put(s, *str++);
            break;
        }
        case 'd': {
            int64_t v = lng >= 2 ? va_arg(ap, long long)
                      : lng == 1 ? va_arg(ap, long) : va_arg(ap, int);
            put_num(s, v < 0 ? (uint64_t)-v : (uint64_t)v, 10, false, v < 0,
                    width, pad);
            break;
        }
        case 'u':
        case 'x':
        case 'X': {
            uint64_t v = lng >= 2 ? va_arg(ap, unsigned long long)
                       : lng == 1 ? va_arg(ap, unsigned long)
                                  : va_arg(ap, unsigned int);
            put_num(s, v, *fmt == 'u' ? 10 : 16, *fmt == 'X', false, width,
                    pad);
            break;
        }
        case 'p':
            sink_put(s, '0');
            sink_put(s, 'x');
            put_num(s, (uintptr_t)va_arg(ap, void *), 16, false, false, 8,
                    '0');
            break;
        case '%':
            sink_put(s, '%');
            break;
        case '\0':
            return;
        default:
            sink_put(s, '%');
            sink_put(s, *fmt);
            break;
        }
    }
}

void kprintf(const char *fmt, ...)
{
    struct sink s = { 0 };
    va_list ap;

    va_start(ap, fmt);
    vformat(&s, fmt, ap);
    va_end(ap);
}

void kvsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct sink s = { .buf = buf, .size = size, .len = 0 };

    if (!size)
        return;
    vformat(&s, fmt, ap);
    buf[s.len] = '\0';
}

void ksnprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    kvsnprintf(buf, size, fmt, ap);
    va_end(ap);
}
