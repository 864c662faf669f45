/* Kernel command line parsing (see cmdline.h). */
#include "cmdline.h"
#include "lib.h"
#include "print.h"
#include <stdbool.h>

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Parse an unsigned number (decimal or 0x-hex) at *p; advance *p.
 * Returns false if there are no digits. */
static bool parse_num(const char **p, uint64_t *out)
{
    const char *s = *p;
    uint64_t v = 0;
    unsigned base = 10, n = 0;

    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
    }
    for (;; s++, n++) {
        unsigned d;
        if (*s >= '0' && *s <= '9')
            d = *s - '0';
        else if (base == 16 && *s >= 'a' && *s <= 'f')
            d = *s - 'a' + 10;
        else if (base == 16 && *s >= 'A' && *s <= 'F')
            d = *s - 'A' + 10;
        else
            break;
        v = v * base + d;
    }
    if (!n)
        return false;
    *p = s;
    *out = v;
    return true;
}

/* <size>@<base>:<irq>[:<id>] up to the end of the word. */
static bool parse_device(const char *s, const char *end,
                         struct mmio_dev_desc *d)
{
    uint64_t irq, id;

    if (!parse_num(&s, &d->size))
        return false;
    switch (*s) {            /* Linux memparse() suffixes */
    case 'G': case 'g': d->size <<= 10; /* fall through */
    case 'M': case 'm': d->size <<= 10; /* fall through */
    case 'K': case 'k': d->size <<= 10; s++; break;
    default: break;
    }
    if (*s++ != '@' || !parse_num(&s, &d->base))
        return false;
    if (*s++ != ':' || !parse_num(&s, &irq) || irq > 255)
        return false;
    d->irq = (uint32_t)irq;
    if (s < end && *s == ':') {     /* optional platform device id */
        s++;
        if (!parse_num(&s, &id))
            return false;
    }
    return s == end && d->size != 0;
}

static const char DEV_KEY[] = "virtio_mmio.device=";
static const char TIMEOUT_KEY[] = "guesttimeout=";
static const char TEST_KEY[] = "guesttest=";
static const char ITERS_KEY[] = "guestiters=";
static const char PROGRESS_KEY[] = "guestprogress=";

/* Does word [w, end) start with key (and have something after it)? */
static bool has_key(const char *w, const char *end, const char *key)
{
    size_t n = strlen(key);
    return (size_t)(end - w) > n && !strncmp(w, key, n);
}

/* The number after key in word [w, end), if it is all digits and in
 * [lo, hi]. */
static bool key_num(const char *w, const char *end, const char *key,
                    uint64_t lo, uint64_t hi, uint32_t *out)
{
    const char *p = w + strlen(key);
    uint64_t v;
    if (!parse_num(&p, &v) || p != end || v < lo || v > hi)
        return false;
    *out = (uint32_t)v;
    return true;
}

void cmdline_parse(const char *s, struct cmdline *out)
{
    memset(out, 0, sizeof(*out));
    out->timeout_s = 10;
    out->iters = 100;
    out->progress = 10;
    if (!s)
        return;

    while (*s) {
        while (is_space(*s))
            s++;
        const char *w = s;
        while (*s && !is_space(*s))
            s++;
        size_t len = (size_t)(s - w);
        if (!len)
            break;

        if (len > sizeof(DEV_KEY) - 1 &&
            !strncmp(w, DEV_KEY, sizeof(DEV_KEY) - 1)) {
            struct mmio_dev_desc d;
            if (!parse_device(w + sizeof(DEV_KEY) - 1, s, &d))
                out->bad_entries++;
            else if (out->ndev >= MAX_DEVICES)
                out->dropped++;
            else
                out->dev[out->ndev++] = d;
        } else if (len > sizeof(TIMEOUT_KEY) - 1 &&
                   !strncmp(w, TIMEOUT_KEY, sizeof(TIMEOUT_KEY) - 1)) {
            const char *p = w + sizeof(TIMEOUT_KEY) - 1;
            uint64_t v;
            if (parse_num(&p, &v) && p == s && v > 0 && v < 3600)
                out->timeout_s = (uint32_t)v;
        } else if (has_key(w, s, TEST_KEY)) {
            const char *v = w + sizeof(TEST_KEY) - 1;
            out->stress = (size_t)(s - v) == 6 && !strncmp(v, "stress", 6);
        } else if (has_key(w, s, ITERS_KEY)) {
            key_num(w, s, ITERS_KEY, 1, 10000000, &out->iters);
        } else if (has_key(w, s, PROGRESS_KEY)) {
            key_num(w, s, PROGRESS_KEY, 1, 10000000, &out->progress);
        }
    }
}
