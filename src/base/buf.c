/* Growable byte buffer with a hard cap. cap counts usable bytes; the allocation is always
 * cap + 1 so data[len] can hold the terminating NUL. Every failure leaves the buffer as it was. */
#include "base/buf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"

#define BUF_MIN_CAP 64

void bh_buf_init(bh_buf_t *b, size_t max) {
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

void bh_buf_free(bh_buf_t *b) {
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

int bh_buf_reserve(bh_buf_t *b, size_t extra) {
    size_t limit = b->max ? b->max : SIZE_MAX - 1;
    if (extra > limit || b->len > limit - extra)
        return BH_ETOOBIG;
    size_t need = b->len + extra;
    if (need <= b->cap && b->data)
        return BH_OK;
    size_t ncap = b->cap ? b->cap : BUF_MIN_CAP;
    while (ncap < need)
        ncap = ncap > limit / 2 ? limit : ncap * 2;
    if (ncap > limit)
        ncap = limit;
    char *p = realloc(b->data, ncap + 1);
    if (!p)
        return BH_ENOMEM;
    if (!b->data)
        p[0] = '\0';
    b->data = p;
    b->cap = ncap;
    return BH_OK;
}

int bh_buf_append(bh_buf_t *b, const void *p, size_t n) {
    if (n == 0)
        return BH_OK;
    /* p may point into our own storage, which realloc could move. */
    const char *src = p;
    int inside = b->data && src >= b->data && src < b->data + b->len;
    size_t off = inside ? (size_t)(src - b->data) : 0;
    int rc = bh_buf_reserve(b, n);
    if (rc)
        return rc;
    if (inside)
        src = b->data + off;
    memmove(b->data + b->len, src, n);
    b->len += n;
    b->data[b->len] = '\0';
    return BH_OK;
}

int bh_buf_appends(bh_buf_t *b, const char *s) {
    return bh_buf_append(b, s, strlen(s));
}

int bh_buf_appendc(bh_buf_t *b, char c) {
    return bh_buf_append(b, &c, 1);
}

int bh_buf_printf(bh_buf_t *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return BH_EINVAL;
    if (n == 0)
        return BH_OK;
    int rc = bh_buf_reserve(b, (size_t)n);
    if (rc)
        return rc;
    va_start(ap, fmt);
    int m = vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    if (m != n) {
        b->data[b->len] = '\0';
        return BH_EINVAL;
    }
    b->len += (size_t)n;
    return BH_OK;
}

void bh_buf_consume(bh_buf_t *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data)
        b->data[b->len] = '\0';
}

void bh_buf_reset(bh_buf_t *b) {
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}
