/* Test helper shared by the MessagePack tests: bytes from hex text. Include after cmocka.h. */
#ifndef BH_TEST_HEX_UTIL_H
#define BH_TEST_HEX_UTIL_H

#include <stdio.h>

/* Bytes from hex text (spaces ignored); returns the count. */
static inline size_t unhex(const char *hex, char *out, size_t cap) {
    size_t n = 0;
    for (const char *p = hex; *p;) {
        if (*p == ' ') {
            p++;
            continue;
        }
        unsigned v;
        assert_int_equal(sscanf(p, "%2x", &v), 1);
        assert_true(n < cap);
        out[n++] = (char)v;
        p += 2;
    }
    return n;
}

#endif
