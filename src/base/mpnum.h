/* The one rule for a decimal number's MessagePack form, shared by the SignalR transcoder (JSON
 * arguments) and the ledger (a snapshot's cached MessagePack `data`), so both give the same
 * bytes for the same number: exact integers keep every digit, the rest become the nearest
 * double (the documented rounding for amounts under MessagePack, SPEC 5). Inline here, so every
 * library built from either side (the server's, and the client library's, which has msgpack.c
 * but not the ledger) has it without another object file. */
#ifndef BH_BASE_MPNUM_H
#define BH_BASE_MPNUM_H

#include <math.h>
#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "error.h"

/* Pack a JSON number given as its source text (len bytes, NUL-terminated): an integer (no
 * fraction, no exponent) within [INT64_MIN, UINT64_MAX] as a MessagePack int, exactly, in its
 * smallest encoding; any other number as the float64 strtod reads from the text (correctly
 * rounded, ties to even). BH_ERANGE when that overflows to infinity; else what the packer's
 * writer returns. */
static inline int bh_mpnum_pack(msgpack_packer *pk, const char *text, size_t len) {
    size_t i = len > 0 && text[0] == '-', start = i;
    uint64_t mag = 0;
    for (; i < len && text[i] >= '0' && text[i] <= '9'; i++) {
        uint64_t digit = (uint64_t)(text[i] - '0');
        if (mag > (UINT64_MAX - digit) / 10)
            break; /* wider than 64 bits: a double */
        mag = mag * 10 + digit;
    }
    if (i == len && len > start) {
        if (start == 0) /* msgpack-c packs a non-negative int64 as the same uint bytes */
            return mag <= INT64_MAX ? msgpack_pack_int64(pk, (int64_t)mag)
                                    : msgpack_pack_uint64(pk, mag);
        if (mag <= (uint64_t)INT64_MAX + 1) /* -mag fits; written so that -2^63 cannot overflow */
            return msgpack_pack_int64(pk, mag == 0 ? 0 : -(int64_t)(mag - 1) - 1);
    }
    double d = strtod(text, NULL);
    if (isinf(d))
        return BH_ERANGE;
    return msgpack_pack_double(pk, d);
}

#endif
