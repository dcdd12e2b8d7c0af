/* The client's public exact decimal: the ledger's bh_dec_t (a 128-bit count of 10^-18 units)
 * split into two 64-bit halves, so the installed header needs no compiler extension. Formatting
 * is the server's own bh_dec_format; parsing also rounds amounts finer than 10^-18 (which a
 * server other than balancehub may send) instead of refusing them. */
#include <stdlib.h>
#include <string.h>

#include "../base/decimal.h"
#include "../base/error.h"
#include "internal.h"

#define DEC_LIMIT_DIGITS 38 /* |units| < 10^38, i.e. |value| < 10^20 */

static __int128 to_units(bh_decimal_t d) {
    unsigned __int128 u = ((unsigned __int128)(uint64_t)d.hi << 64) | d.lo;
    return (__int128)u;
}

static bh_decimal_t from_units(__int128 v) {
    unsigned __int128 u = (unsigned __int128)v;
    bh_decimal_t d = {(int64_t)(uint64_t)(u >> 64), (uint64_t)u};
    return d;
}

static int is_digit(char c) {
    return c >= '0' && c <= '9';
}

/* The significant digits, one by one, sorted into the integer count of units, the first dropped
 * digit and whether any later dropped digit is non-zero (for rounding). */
typedef struct {
    long long keep; /* digits forming the integer count of units */
    long long k;    /* index of the next significant digit */
    unsigned __int128 units;
    int first_dropped, sticky;
} acc_t;

static void take_digit(acc_t *a, int d) {
    if (a->k < a->keep)
        a->units = a->units * 10 + (unsigned)d;
    else if (a->k == a->keep)
        a->first_dropped = d;
    else if (d != 0)
        a->sticky = 1;
    a->k++;
}

int bh_cl_dec_parse(const char *s, size_t n, bh_decimal_t *out) {
    size_t i = 0, int_at, int_n = 0, frac_at = 0, frac_n = 0;
    long long exp = 0, total = 0, shift;
    int neg = 0, exp_neg = 0;
    unsigned __int128 limit = 1;
    acc_t a = {0, 0, 0, -1, 0};

    /* JSON number grammar: an integer part without leading zeros, optional fraction, exponent */
    if (i < n && s[i] == '-') {
        neg = 1;
        i++;
    }
    int_at = i;
    for (; i < n && is_digit(s[i]); i++)
        int_n++;
    if (int_n == 0 || (int_n > 1 && s[int_at] == '0'))
        return BH_EINVAL;
    if (i < n && s[i] == '.') {
        frac_at = ++i;
        for (; i < n && is_digit(s[i]); i++)
            frac_n++;
        if (frac_n == 0)
            return BH_EINVAL;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        size_t ed = 0;
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            exp_neg = s[i++] == '-';
        for (; i < n && is_digit(s[i]); i++, ed++)
            if (exp < 1000000) /* past this the value is 0 or out of range anyway */
                exp = exp * 10 + (s[i] - '0');
        if (ed == 0)
            return BH_EINVAL;
    }
    if (i != n)
        return BH_EINVAL;
    if (exp_neg)
        exp = -exp;

    /* value = D * 10^(exp - frac_n) with D the significant digits; units = D * 10^shift */
    for (size_t k = 0; k < int_n + frac_n; k++) {
        char c = k < int_n ? s[int_at + k] : s[frac_at + k - int_n];
        if (total > 0 || c != '0')
            total++;
    }
    if (total == 0) {
        *out = from_units(0);
        return BH_OK;
    }
    shift = exp - (long long)frac_n + BH_DEC_SCALE;
    a.keep = total + shift; /* D starts with a non-zero digit: units >= 10^(keep-1) */
    if (a.keep > DEC_LIMIT_DIGITS)
        return BH_ERANGE;
    for (size_t k = 0, seen = 0; k < int_n + frac_n; k++) {
        char c = k < int_n ? s[int_at + k] : s[frac_at + k - int_n];
        if (!seen && c == '0')
            continue;
        seen = 1;
        take_digit(&a, c - '0');
    }
    for (long long k = total; k < a.keep; k++)
        a.units *= 10;
    /* round half to even on the dropped digits (keep < 0: all of them lie below half a unit) */
    if (a.keep >= 0 &&
        (a.first_dropped > 5 || (a.first_dropped == 5 && (a.sticky || (a.units & 1)))))
        a.units++;
    for (int k = 0; k < DEC_LIMIT_DIGITS; k++)
        limit *= 10;
    if (a.units >= limit)
        return BH_ERANGE;
    *out = from_units(neg ? -(__int128)a.units : (__int128)a.units);
    return BH_OK;
}

size_t bh_decimal_to_string(bh_decimal_t d, char *out) {
    bh_dec_t v = {to_units(d)};
    return bh_dec_format(v, out);
}

int bh_decimal_parse(const char *text, bh_decimal_t *out) {
    if (text == NULL || out == NULL)
        return BH_CLIENT_EINVAL;
    return bh_cl_dec_parse(text, strlen(text), out) == BH_OK ? BH_CLIENT_OK : BH_CLIENT_EINVAL;
}

int bh_decimal_cmp(bh_decimal_t a, bh_decimal_t b) {
    __int128 x = to_units(a), y = to_units(b);
    return x < y ? -1 : x > y;
}

double bh_decimal_to_double(bh_decimal_t d) {
    char text[BH_DECIMAL_STRLEN];
    bh_decimal_to_string(d, text);
    return strtod(text, NULL); /* correctly rounded from the exact text */
}
