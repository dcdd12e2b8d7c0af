/* Hexadecimal digits, shared by the parsers that decode %XX escapes and chunk sizes. */
#ifndef BH_BASE_HEX_H
#define BH_BASE_HEX_H

/* Value of one hex digit (0-9, a-f, A-F), or -1. */
static inline int bh_hex_digit(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

#endif
