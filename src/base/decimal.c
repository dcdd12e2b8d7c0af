/* Exact fixed-point decimals: __int128 counts of 10^-18. Parsing and formatting are pure integer
 * work; multiplication keeps the full 256-bit product so rounding is exact. */
#include "base/decimal.h"

#include <string.h>

#include "base/error.h"

typedef unsigned __int128 u128;

#define E18 1000000000000000000ULL
/* 10^38: first magnitude of units out of range (|value| >= 10^20). */
#define U_LIMIT ((u128)E18 * E18 * 100)
/* Exponents beyond this are clamped while parsing; any non-zero value is out of range by then. */
#define EXP_CLAMP 1000000000000LL

static int is_digit(char c) {
    return c >= '0' && c <= '9';
}

static int in_range(__int128 v) {
    return v > -(__int128)U_LIMIT && v < (__int128)U_LIMIT;
}

int bh_dec_parse(const char *s, size_t n, bh_dec_t *out) {
    size_t i = 0;
    int neg = 0;
    if (i < n && s[i] == '-') {
        neg = 1;
        i++;
    }
    size_t int_beg = i;
    if (i >= n || !is_digit(s[i]))
        return BH_EINVAL;
    if (s[i] == '0')
        i++;
    else
        while (i < n && is_digit(s[i]))
            i++;
    size_t int_end = i, frac_beg = i, frac_end = i;
    if (i < n && s[i] == '.') {
        i++;
        frac_beg = i;
        while (i < n && is_digit(s[i]))
            i++;
        frac_end = i;
        if (frac_end == frac_beg)
            return BH_EINVAL;
    }
    long long exp = 0;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        int eneg = 0;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            eneg = s[i++] == '-';
        if (i >= n || !is_digit(s[i]))
            return BH_EINVAL;
        /* Saturate so "1e999999999999999999" neither overflows nor takes long. */
        while (i < n && is_digit(s[i])) {
            if (exp < EXP_CLAMP)
                exp = exp * 10 + (s[i] - '0');
            i++;
        }
        if (eneg)
            exp = -exp;
    }
    if (i != n)
        return BH_EINVAL;

    /* Significant digits run from the first to the last non-zero digit, '.' skipped. */
    size_t mant_end = frac_end > frac_beg ? frac_end : int_end;
    size_t first = mant_end, last = mant_end;
    for (size_t j = int_beg; j < mant_end; j++) {
        if (s[j] != '.' && s[j] != '0') {
            if (first == mant_end)
                first = j;
            last = j;
        }
    }
    if (first == mant_end) {
        out->units = 0;
        return BH_OK;
    }
    long long ndig = (long long)(last - first + 1);
    if (first < int_end && last > int_end)
        ndig--; /* the '.' sits between them */
    /* Power of ten of the last significant digit, then of the unit count. */
    long long pow_last;
    if (last < int_end)
        pow_last = (long long)(int_end - 1 - last);
    else
        pow_last = -(long long)(last - frac_beg + 1);
    long long k = pow_last + exp + BH_DEC_SCALE;
    if (ndig + k > 38)
        return BH_ERANGE;
    if (k < 0)
        return BH_EINVAL; /* more than 18 significant fraction digits */
    u128 u = 0;
    for (size_t j = first; j <= last; j++)
        if (s[j] != '.')
            u = u * 10 + (u128)(s[j] - '0');
    for (long long j = 0; j < k; j++)
        u *= 10;
    out->units = neg ? -(__int128)u : (__int128)u;
    return BH_OK;
}

size_t bh_dec_format(bh_dec_t d, char *out) {
    u128 u = d.units < 0 ? -(u128)d.units : (u128)d.units;
    u128 ip = u / E18;
    unsigned long long fp = (unsigned long long)(u % E18);
    char tmp[48];
    size_t t = 0, o = 0;
    do {
        tmp[t++] = (char)('0' + (int)(ip % 10));
        ip /= 10;
    } while (ip);
    if (d.units < 0)
        out[o++] = '-';
    while (t)
        out[o++] = tmp[--t];
    if (fp) {
        out[o++] = '.';
        char f[BH_DEC_SCALE];
        for (int j = BH_DEC_SCALE - 1; j >= 0; j--) {
            f[j] = (char)('0' + (int)(fp % 10));
            fp /= 10;
        }
        int fl = BH_DEC_SCALE;
        while (f[fl - 1] == '0')
            fl--;
        memcpy(out + o, f, (size_t)fl);
        o += (size_t)fl;
    }
    out[o] = '\0';
    return o;
}

bh_dec_t bh_dec_from_int(int64_t v) {
    bh_dec_t d = {(__int128)v * (__int128)E18};
    return d;
}

int bh_dec_cmp(bh_dec_t a, bh_dec_t b) {
    return a.units < b.units ? -1 : a.units > b.units;
}

bool bh_dec_is_zero(bh_dec_t a) {
    return a.units == 0;
}

bool bh_dec_is_neg(bh_dec_t a) {
    return a.units < 0;
}

int bh_dec_add(bh_dec_t a, bh_dec_t b, bh_dec_t *out) {
    __int128 r;
    if (__builtin_add_overflow(a.units, b.units, &r) || !in_range(r))
        return BH_ERANGE;
    out->units = r;
    return BH_OK;
}

int bh_dec_sub(bh_dec_t a, bh_dec_t b, bh_dec_t *out) {
    __int128 r;
    if (__builtin_sub_overflow(a.units, b.units, &r) || !in_range(r))
        return BH_ERANGE;
    out->units = r;
    return BH_OK;
}

/* 128 x 128 -> 256-bit product as four little-endian 64-bit limbs. */
static void mul_256(u128 x, u128 y, uint64_t r[4]) {
    uint64_t a[2] = {(uint64_t)x, (uint64_t)(x >> 64)};
    uint64_t b[2] = {(uint64_t)y, (uint64_t)(y >> 64)};
    memset(r, 0, 4 * sizeof r[0]);
    for (int i = 0; i < 2; i++) {
        uint64_t carry = 0;
        for (int j = 0; j < 2; j++) {
            u128 t = (u128)a[i] * b[j] + r[i + j] + carry;
            r[i + j] = (uint64_t)t;
            carry = (uint64_t)(t >> 64);
        }
        r[i + 2] = carry;
    }
}

int bh_dec_mul(bh_dec_t a, bh_dec_t b, bh_dec_t *out) {
    int neg = (a.units < 0) != (b.units < 0);
    u128 x = a.units < 0 ? -(u128)a.units : (u128)a.units;
    u128 y = b.units < 0 ? -(u128)b.units : (u128)b.units;
    uint64_t p[4];
    mul_256(x, y, p);
    /* Long division by 10^18 (< 2^60): each step's dividend rem*2^64 + limb fits in 128 bits. */
    uint64_t q[4];
    u128 rem = 0;
    for (int i = 3; i >= 0; i--) {
        u128 cur = (rem << 64) | p[i];
        q[i] = (uint64_t)(cur / E18);
        rem = cur % E18;
    }
    if (q[3] || q[2])
        return BH_ERANGE;
    u128 r = ((u128)q[1] << 64) | q[0];
    if (2 * rem > E18 || (2 * rem == E18 && (r & 1)))
        r++;
    if (r >= U_LIMIT)
        return BH_ERANGE;
    out->units = neg ? -(__int128)r : (__int128)r;
    return BH_OK;
}

bh_dec_t bh_dec_neg(bh_dec_t a) {
    bh_dec_t d = {(__int128)(-(u128)a.units)}; /* no signed-overflow UB even for INT128_MIN */
    return d;
}
