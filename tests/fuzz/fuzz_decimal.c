/* Fuzz harness for exact decimals. The input is "A" or "A,B" (decimal texts); its first 16
 * bytes are also taken as a raw unit count. Checks: bh_dec_parse agrees with an independent
 * reference parser, parse(format(x)) == x for every in-range x, formatted text is the shortest
 * form, and add/sub/mul/cmp/neg agree with exact 128-bit arithmetic where it can be computed. */
#include <string.h>

#include "base/decimal.h"
#include "base/error.h"
#include "fuzz.h"

typedef unsigned __int128 u128;

#define E18 1000000000000000000ULL
#define LIMIT ((u128)E18 * E18 * 100) /* 10^38 units = 10^20 */

static int is_digit(char c) {
    return c >= '0' && c <= '9';
}

#define REF_EITHER 1 /* both too many fraction digits and too large: either error is right */
#define REF_SKIP 2   /* longer than the reference handles */

/* Reference: JSON number grammar, then value = D * 10^E with D's digits stripped of leading and
 * trailing zeros; representable when E >= -18 and D * 10^(E+18) < 10^38. Returns BH_OK,
 * BH_EINVAL (syntax or too many fraction digits), BH_ERANGE (too large), or a REF_ value. */
static int ref_parse(const char *s, size_t n, __int128 *out) {
    char digits[4096];
    size_t i = 0, nd = 0, lead, trail;
    long long exp = 0, frac = 0;
    int neg = 0, eneg = 0, too_small, too_big;
    u128 u = 0;

    if (n > sizeof digits)
        return REF_SKIP;
    if (i < n && s[i] == '-')
        neg = 1, i++;
    if (i >= n || !is_digit(s[i]))
        return BH_EINVAL;
    if (s[i] == '0' && i + 1 < n && is_digit(s[i + 1]))
        return BH_EINVAL; /* leading zero */
    while (i < n && is_digit(s[i]))
        digits[nd++] = s[i++];
    if (i < n && s[i] == '.') {
        i++;
        if (i >= n || !is_digit(s[i]))
            return BH_EINVAL;
        while (i < n && is_digit(s[i]))
            digits[nd++] = s[i++], frac++;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            eneg = s[i++] == '-';
        if (i >= n || !is_digit(s[i]))
            return BH_EINVAL;
        for (; i < n && is_digit(s[i]); i++)
            if (exp < 1000000000000000LL)
                exp = exp * 10 + (s[i] - '0');
    }
    if (i != n)
        return BH_EINVAL;
    exp = (eneg ? -exp : exp) - frac;
    for (lead = 0; lead < nd && digits[lead] == '0'; lead++)
        ;
    if (lead == nd) {
        *out = 0;
        return BH_OK;
    }
    for (trail = nd; digits[trail - 1] == '0'; trail--)
        exp++;
    nd = trail - lead;
    too_small = exp < -18;
    too_big = (long long)nd + exp + 18 > 38;
    if (too_small && too_big)
        return REF_EITHER;
    if (too_small)
        return BH_EINVAL;
    if (too_big)
        return BH_ERANGE;
    for (i = lead; i < trail; i++)
        u = u * 10 + (u128)(digits[i] - '0');
    for (long long k = 0; k < exp + 18; k++)
        u *= 10;
    *out = neg ? -(__int128)u : (__int128)u;
    return BH_OK;
}

/* Shortest form: optional '-' (never for zero), no leading zeros, fraction without trailing
 * zeros, at most 18 fraction digits; and it parses back to the same value. */
static void check_format(bh_dec_t d) {
    char *text = malloc(BH_DEC_STRLEN); /* heap: an overflow is an ASan report */
    size_t n, i = 0, k;
    const char *dot;
    bh_dec_t back;

    FUZZ_CHECK(text != NULL);
    n = bh_dec_format(d, text);
    FUZZ_CHECK(n > 0 && n < BH_DEC_STRLEN && strlen(text) == n);
    if (text[0] == '-') {
        FUZZ_CHECK(d.units < 0);
        i = 1;
    } else {
        FUZZ_CHECK(d.units >= 0);
    }
    FUZZ_CHECK(is_digit(text[i]) && (text[i] != '0' || !is_digit(text[i + 1])));
    dot = strchr(text, '.');
    if (dot != NULL) {
        size_t fl = n - (size_t)(dot + 1 - text);
        FUZZ_CHECK(fl >= 1 && fl <= 18 && text[n - 1] != '0');
        for (k = 0; k < fl; k++)
            FUZZ_CHECK(is_digit(dot[1 + k]));
    }
    for (k = i; text + k != dot && k < n; k++)
        FUZZ_CHECK(is_digit(text[k]));
    if (d.units == 0)
        FUZZ_CHECK(strcmp(text, "0") == 0);
    if (d.units > -(__int128)LIMIT && d.units < (__int128)LIMIT) {
        FUZZ_CHECK(bh_dec_parse(text, n, &back) == BH_OK && back.units == d.units);
    } else {
        FUZZ_CHECK(bh_dec_parse(text, n, &back) == BH_ERANGE);
    }
    free(text);
}

static int in_range(__int128 v) {
    return v > -(__int128)LIMIT && v < (__int128)LIMIT;
}

static int sign(__int128 v) {
    return v < 0 ? -1 : v > 0;
}

/* Exact product rounded half-even to 18 fraction digits, when |a|,|b| < 2^63 units. */
static __int128 ref_mul(__int128 a, __int128 b) {
    int neg = (a < 0) != (b < 0);
    u128 x = a < 0 ? -(u128)a : (u128)a, y = b < 0 ? -(u128)b : (u128)b;
    u128 p = x * y, q = p / E18, r = p % E18;

    if (2 * r > E18 || (2 * r == E18 && (q & 1)))
        q++;
    return neg ? -(__int128)q : (__int128)q;
}

static void check_arith(bh_dec_t a, bh_dec_t b) {
    bh_dec_t r, back, one = bh_dec_from_int(1), minus = bh_dec_from_int(-1);
    __int128 exact;
    int rc;

    FUZZ_CHECK(bh_dec_cmp(a, b) == (a.units < b.units ? -1 : a.units > b.units));
    FUZZ_CHECK(bh_dec_cmp(a, b) == -bh_dec_cmp(b, a) && bh_dec_cmp(a, a) == 0);
    FUZZ_CHECK(bh_dec_neg(bh_dec_neg(a)).units == a.units);
    FUZZ_CHECK(bh_dec_is_zero(a) == (a.units == 0) && bh_dec_is_neg(a) == (a.units < 0));

    rc = bh_dec_add(a, b, &r);
    if (__builtin_add_overflow(a.units, b.units, &exact) || !in_range(exact)) {
        FUZZ_CHECK(rc == BH_ERANGE);
    } else {
        FUZZ_CHECK(rc == BH_OK && r.units == exact);
        FUZZ_CHECK(bh_dec_sub(r, b, &back) == BH_OK && back.units == a.units);
    }
    rc = bh_dec_sub(a, b, &r);
    if (__builtin_sub_overflow(a.units, b.units, &exact) || !in_range(exact)) {
        FUZZ_CHECK(rc == BH_ERANGE);
    } else {
        FUZZ_CHECK(rc == BH_OK && r.units == exact);
        FUZZ_CHECK(bh_dec_add(r, b, &back) == BH_OK && back.units == a.units);
    }

    FUZZ_CHECK(bh_dec_mul(a, one, &r) == BH_OK && r.units == a.units);
    FUZZ_CHECK(bh_dec_mul(a, minus, &r) == BH_OK && r.units == -a.units);
    FUZZ_CHECK(bh_dec_mul(a, bh_dec_zero(), &r) == BH_OK && r.units == 0);
    rc = bh_dec_mul(a, b, &r);
    FUZZ_CHECK(rc == BH_OK || rc == BH_ERANGE);
    FUZZ_CHECK(bh_dec_mul(b, a, &back) == rc && (rc != BH_OK || back.units == r.units));
    if (rc == BH_OK) {
        FUZZ_CHECK(in_range(r.units));
        FUZZ_CHECK(r.units == 0 || sign(r.units) == sign(a.units) * sign(b.units));
    }
    if (a.units > -((__int128)1 << 63) && a.units < ((__int128)1 << 63) &&
        b.units > -((__int128)1 << 63) && b.units < ((__int128)1 << 63)) {
        exact = ref_mul(a.units, b.units);
        FUZZ_CHECK(in_range(exact) ? rc == BH_OK && r.units == exact : rc == BH_ERANGE);
    }
}

static int parse_checked(const char *s, size_t n, bh_dec_t *d) {
    __int128 want = 0;
    int rc = bh_dec_parse(s, n, d), ref = ref_parse(s, n, &want);

    FUZZ_CHECK(rc == BH_OK || rc == BH_EINVAL || rc == BH_ERANGE);
    if (ref == BH_OK)
        FUZZ_CHECK(rc == BH_OK && d->units == want);
    else if (ref == REF_EITHER)
        FUZZ_CHECK(rc == BH_EINVAL || rc == BH_ERANGE);
    else if (ref != REF_SKIP)
        FUZZ_CHECK(rc == ref);
    if (rc == BH_OK)
        check_format(*d);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *s = (const char *)data, *comma = memchr(s, ',', size);
    bh_dec_t a, b, raw;
    int64_t i64 = 0;
    char want[32], got[BH_DEC_STRLEN];

    /* the first 16 bytes as a raw unit count: any value formats, in-range values round-trip */
    memset(&raw, 0, sizeof raw);
    memcpy(&raw.units, data, size < sizeof raw.units ? size : sizeof raw.units);
    check_format(raw);
    memcpy(&i64, data, size < sizeof i64 ? size : sizeof i64);
    snprintf(want, sizeof want, "%lld", (long long)i64);
    FUZZ_CHECK(bh_dec_format(bh_dec_from_int(i64), got) == strlen(want) && strcmp(got, want) == 0);

    if (comma == NULL) {
        if (parse_checked(s, size, &a) == BH_OK)
            check_arith(a, a);
        return 0;
    }
    int ra = parse_checked(s, (size_t)(comma - s), &a);
    int rb = parse_checked(comma + 1, size - (size_t)(comma - s) - 1, &b);
    if (ra == BH_OK && rb == BH_OK)
        check_arith(a, b);
    return 0;
}
