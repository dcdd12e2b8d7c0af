/* Exact fixed-point decimals for the ledger: a signed 128-bit integer counting units of 10^-18.
 * Range: up to 38 significant digits (|value| < 10^20 with 18 digits after the point).
 * No binary floating point anywhere. */
#ifndef BH_BASE_DECIMAL_H
#define BH_BASE_DECIMAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BH_DEC_SCALE 18
/* Longest formatted value: sign, 20 integer digits, point, 18 fraction digits, NUL. */
#define BH_DEC_STRLEN 48

typedef struct {
    __int128 units; /* value * 10^18 */
} bh_dec_t;

/* Parse a JSON-number-shaped decimal ("-12.5", "0.000000000000000001", "1e3", "2.5E-2").
 * Exact: BH_EINVAL for bad syntax or more than 18 significant fraction digits after scaling
 * (trailing zeros are fine), BH_ERANGE when |value| >= 10^20. Leading '+' is rejected. */
int bh_dec_parse(const char *s, size_t n, bh_dec_t *out);
/* Shortest exact decimal text ("0.5", "1000", "-0.000000000000000001"); returns the length.
 * out must hold BH_DEC_STRLEN bytes; always NUL-terminated. */
size_t bh_dec_format(bh_dec_t d, char *out);

bh_dec_t bh_dec_from_int(int64_t v);
static inline bh_dec_t bh_dec_zero(void) {
    bh_dec_t d = {0};
    return d;
}
int bh_dec_cmp(bh_dec_t a, bh_dec_t b); /* -1, 0, 1 */
bool bh_dec_is_zero(bh_dec_t a);
bool bh_dec_is_neg(bh_dec_t a);
/* Checked arithmetic: BH_ERANGE when the result leaves the range; *out untouched then. */
int bh_dec_add(bh_dec_t a, bh_dec_t b, bh_dec_t *out);
int bh_dec_sub(bh_dec_t a, bh_dec_t b, bh_dec_t *out);
/* a * b rounded half-even to 18 fraction digits (exact 256-bit intermediate). */
int bh_dec_mul(bh_dec_t a, bh_dec_t b, bh_dec_t *out);
bh_dec_t bh_dec_neg(bh_dec_t a);

#endif
