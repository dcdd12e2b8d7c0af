/* Unit tests for exact decimals: parsing (grammar, scale, range), shortest formatting, checked
 * add/sub, and 256-bit multiplication with half-even rounding. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "base/decimal.h"
#include "base/error.h"

#define E18 ((__int128)1000000000000000000LL)
#define MAXU (E18 * E18 * 100 - 1) /* 99999999999999999999.999999999999999999 */
#define MAXS "99999999999999999999.999999999999999999"

/* Parse from an exact-size heap copy so ASan catches any read past n. */
static int parse(const char *s, bh_dec_t *out) {
    size_t n = strlen(s);
    char *p = malloc(n ? n : 1);
    assert_non_null(p);
    memcpy(p, s, n);
    int rc = bh_dec_parse(p, n, out);
    free(p);
    return rc;
}

static bh_dec_t D(const char *s) {
    bh_dec_t d;
    assert_int_equal(parse(s, &d), BH_OK);
    return d;
}

static void assert_fmt(bh_dec_t d, const char *want) {
    char out[BH_DEC_STRLEN];
    memset(out, 'X', sizeof out);
    size_t n = bh_dec_format(d, out);
    assert_string_equal(out, want);
    assert_int_equal(n, strlen(want));
}

static void test_parse_valid(void **state) {
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"0", "0"},
        {"-0", "0"},
        {"0.0", "0"},
        {"-0.0", "0"},
        {"0e5", "0"},
        {"-0E-5", "0"},
        {"0e999999999", "0"},
        {"0.000000000000000000000000000000e-999999999999999999999", "0"},
        {"1", "1"},
        {"-1", "-1"},
        {"0.5", "0.5"},
        {"1000", "1000"},
        {"-1.25", "-1.25"},
        {"123.4500", "123.45"},
        {"0.000000000000000001", "0.000000000000000001"},
        {"-0.000000000000000001", "-0.000000000000000001"},
        {"0.0000000000000000010", "0.000000000000000001"},
        {"1.0000000000000000000000", "1"},
        {"1.000000000000000001", "1.000000000000000001"},
        {MAXS, MAXS},
        {"-" MAXS, "-" MAXS},
        {"99999999999999999999.9999999999999999990000", MAXS},
        {"99999999999999999999", "99999999999999999999"},
        {"12345678901234567890.123456789012345678", "12345678901234567890.123456789012345678"},
        {"1e3", "1000"},
        {"1E3", "1000"},
        {"1e+3", "1000"},
        {"1e007", "10000000"},
        {"2.5E-2", "0.025"},
        {"-2.5e-2", "-0.025"},
        {"1e-18", "0.000000000000000001"},
        {"10e-19", "0.000000000000000001"},
        {"1000000000000000000000e-21", "1"},
        {"1e19", "10000000000000000000"},
        {"9.9999999999999999999999999999999999999e19", MAXS},
        {"0.1e1", "1"},
        {"100e-2", "1"},
        {"0.00001e5", "1"},
        {"123456789e-9", "0.123456789"},
        {"0.123456789012345678", "0.123456789012345678"},
        {"42.000", "42"},
        {"-7.10", "-7.1"},
        {"5e0", "5"},
        {"5e-0", "5"},
        {"1.5e1", "15"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bh_dec_t d = {12345};
        int rc = parse(cases[i].in, &d);
        if (rc != BH_OK)
            fail_msg("parse(%s) = %d", cases[i].in, rc);
        assert_fmt(d, cases[i].want);
    }
    assert_true(D("1").units == E18);
    assert_true(D("-1").units == -E18);
    assert_true(D("0.000000000000000001").units == 1);
    assert_true(D(MAXS).units == MAXU);
    assert_true(D("-" MAXS).units == -MAXU);
    assert_true(D("-0").units == 0);
}

static void test_parse_long_inputs(void **state) {
    /* Many zeros around the significant digits are exact and must be accepted. */
    char s[3000];
    strcpy(s, "0.");
    memset(s + 2, '0', 2000);
    s[2002] = '\0';
    assert_fmt(D(s), "0");
    strcpy(s, "1.");
    memset(s + 2, '0', 2000);
    s[2002] = '\0';
    assert_fmt(D(s), "1");
    /* 0.000...0001 with 2000 zeros is too precise */
    strcpy(s, "0.");
    memset(s + 2, '0', 2000);
    strcpy(s + 2002, "1");
    bh_dec_t d;
    assert_int_equal(parse(s, &d), BH_EINVAL);
    /* 1 followed by 2000 zeros, scaled back down by e-2000 */
    s[0] = '1';
    memset(s + 1, '0', 2000);
    strcpy(s + 2001, "e-2000");
    assert_fmt(D(s), "1");
    strcpy(s + 2001, "e-1981");
    assert_fmt(D(s), "10000000000000000000");
    strcpy(s + 2001, "e-1980");
    assert_int_equal(parse(s, &d), BH_ERANGE);
    strcpy(s + 2001, "e-2018");
    assert_fmt(D(s), "0.000000000000000001");
    strcpy(s + 2001, "e-2019");
    assert_int_equal(parse(s, &d), BH_EINVAL);
    /* 2000 integer digits */
    memset(s, '9', 2000);
    s[2000] = '\0';
    assert_int_equal(parse(s, &d), BH_ERANGE);
}

static void test_parse_invalid(void **state) {
    static const char *bad[] = {
        "",
        "-",
        "+1",
        "+0",
        "01",
        "00",
        "-01",
        "1.",
        "-1.",
        ".5",
        "-.5",
        "1e",
        "1E",
        "1e+",
        "1e-",
        "1.e5",
        "1x",
        " 1",
        "1 ",
        "0x10",
        "--1",
        "1..2",
        "1.2.3",
        "1e1.5",
        "1e5e5",
        "1,5",
        "NaN",
        "nan",
        "Infinity",
        "-Infinity",
        "inf",
        "1e-19",
        "0.0000000000000000001",
        "1.5e-18",
        "0.1234567890123456789",
        "1.0000000000000000001",
        "99999999999999999999.9999999999999999999",
        "1e-999999999",
        "1e-99999999999999999999999999",
        "abc",
        "\"1\"",
        "1\t",
        "\xef\xbc\x91", /* fullwidth digit one */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bh_dec_t d = {777};
        int rc = parse(bad[i], &d);
        if (rc != BH_EINVAL)
            fail_msg("parse(\"%s\") = %d, want BH_EINVAL", bad[i], rc);
    }
    /* embedded NUL inside n */
    bh_dec_t d;
    assert_int_equal(bh_dec_parse("1\0", 2, &d), BH_EINVAL);
    assert_int_equal(bh_dec_parse("1\0"
                                  "5",
                                  3, &d),
                     BH_EINVAL);
    /* n shorter than the string: only the prefix counts */
    assert_int_equal(bh_dec_parse("12.5", 2, &d), BH_OK);
    assert_fmt(d, "12");
    assert_int_equal(bh_dec_parse("12.5", 3, &d), BH_EINVAL);
}

static void test_parse_range(void **state) {
    static const char *big[] = {
        "100000000000000000000",
        "-100000000000000000000",
        "100000000000000000000.000000000000000001",
        "100000000000000000000.5",
        "1e20",
        "-1e20",
        "1E+20",
        "10e19",
        "0.1e21",
        "123456789012345678901",
        "1e38",
        "1e999999999",
        "1e99999999999999999999999999999999999",
        "-1e99999999999999999999999999999999999",
        "99999999999999999999999999999999999999999999999999999",
    };
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        bh_dec_t d = {777};
        int rc = parse(big[i], &d);
        if (rc != BH_ERANGE)
            fail_msg("parse(\"%s\") = %d, want BH_ERANGE", big[i], rc);
    }
}

static void test_format_units(void **state) {
    bh_dec_t d;
    d.units = 0;
    assert_fmt(d, "0");
    d.units = 1;
    assert_fmt(d, "0.000000000000000001");
    d.units = -1;
    assert_fmt(d, "-0.000000000000000001");
    d.units = 10;
    assert_fmt(d, "0.00000000000000001");
    d.units = E18 / 2;
    assert_fmt(d, "0.5");
    d.units = E18 * 1000;
    assert_fmt(d, "1000");
    d.units = -E18 - E18 / 4;
    assert_fmt(d, "-1.25");
    d.units = E18 + 1;
    assert_fmt(d, "1.000000000000000001");
    d.units = MAXU;
    assert_fmt(d, MAXS);
    d.units = -MAXU;
    assert_fmt(d, "-" MAXS);
    /* Values outside the parseable range still format without overflow. */
    d.units = (__int128)(((unsigned __int128)1 << 127) - 1);
    assert_fmt(d, "170141183460469231731.687303715884105727");
    d.units = -d.units - 1;
    assert_fmt(d, "-170141183460469231731.687303715884105728");
}

/* Deterministic pseudo-random units across all magnitudes: format then parse gives them back. */
static void test_round_trip(void **state) {
    uint64_t x = 88172645463325252ULL;
    for (int i = 0; i < 20000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uint64_t y = x * 0x9E3779B97F4A7C15ULL;
        unsigned __int128 u = ((unsigned __int128)x << 64) | y;
        u %= (unsigned __int128)(MAXU + 1);
        int digits = i % 39;
        unsigned __int128 mod = 1;
        for (int k = 0; k < digits; k++)
            mod *= 10;
        if (digits)
            u %= mod;
        bh_dec_t d = {(i & 1) ? -(__int128)u : (__int128)u};
        char buf[BH_DEC_STRLEN];
        size_t n = bh_dec_format(d, buf);
        assert_true(n < BH_DEC_STRLEN);
        assert_int_equal(strlen(buf), n);
        if (n > 1 && strchr(buf, '.'))
            assert_true(buf[n - 1] != '0');
        bh_dec_t back = {42};
        assert_int_equal(bh_dec_parse(buf, n, &back), BH_OK);
        assert_true(back.units == d.units);
    }
}

static void test_from_int(void **state) {
    assert_fmt(bh_dec_from_int(0), "0");
    assert_fmt(bh_dec_from_int(1), "1");
    assert_fmt(bh_dec_from_int(-1), "-1");
    assert_fmt(bh_dec_from_int(1000), "1000");
    assert_fmt(bh_dec_from_int(INT64_MAX), "9223372036854775807");
    assert_fmt(bh_dec_from_int(INT64_MIN), "-9223372036854775808");
    assert_true(bh_dec_from_int(7).units == 7 * E18);
    assert_true(bh_dec_zero().units == 0);
}

static void test_predicates(void **state) {
    assert_int_equal(bh_dec_cmp(D("1"), D("2")), -1);
    assert_int_equal(bh_dec_cmp(D("2"), D("1")), 1);
    assert_int_equal(bh_dec_cmp(D("1.50"), D("1.5")), 0);
    assert_int_equal(bh_dec_cmp(D("-1"), D("0.000000000000000001")), -1);
    assert_int_equal(bh_dec_cmp(D("-" MAXS), D(MAXS)), -1);
    assert_int_equal(bh_dec_cmp(D("0.000000000000000002"), D("0.000000000000000001")), 1);
    assert_true(bh_dec_is_zero(D("-0")));
    assert_true(bh_dec_is_zero(bh_dec_zero()));
    assert_false(bh_dec_is_zero(D("0.000000000000000001")));
    assert_true(bh_dec_is_neg(D("-0.000000000000000001")));
    assert_false(bh_dec_is_neg(D("-0")));
    assert_false(bh_dec_is_neg(D("3")));
    assert_fmt(bh_dec_neg(D("1.5")), "-1.5");
    assert_fmt(bh_dec_neg(D("-1.5")), "1.5");
    assert_fmt(bh_dec_neg(D("0")), "0");
    assert_fmt(bh_dec_neg(D(MAXS)), "-" MAXS);
}

static void test_add_sub(void **state) {
    bh_dec_t r;
    assert_int_equal(bh_dec_add(D("1.5"), D("2.25"), &r), BH_OK);
    assert_fmt(r, "3.75");
    assert_int_equal(bh_dec_add(D("0.1"), D("0.2"), &r), BH_OK);
    assert_fmt(r, "0.3");
    assert_int_equal(bh_dec_add(D("1"), D("-1"), &r), BH_OK);
    assert_fmt(r, "0");
    assert_int_equal(bh_dec_sub(D("1"), D("0.000000000000000001"), &r), BH_OK);
    assert_fmt(r, "0.999999999999999999");
    assert_int_equal(bh_dec_sub(D("-5"), D("5"), &r), BH_OK);
    assert_fmt(r, "-10");
    /* boundaries */
    assert_int_equal(bh_dec_add(D(MAXS), D("0"), &r), BH_OK);
    assert_fmt(r, MAXS);
    assert_int_equal(
        bh_dec_add(D("99999999999999999999.999999999999999998"), D("0.000000000000000001"), &r),
        BH_OK);
    assert_fmt(r, MAXS);
    assert_int_equal(
        bh_dec_sub(D("-99999999999999999999.999999999999999998"), D("0.000000000000000001"), &r),
        BH_OK);
    assert_fmt(r, "-" MAXS);
    assert_int_equal(bh_dec_sub(D(MAXS), D(MAXS), &r), BH_OK);
    assert_fmt(r, "0");
    assert_int_equal(bh_dec_add(D(MAXS), D("-" MAXS), &r), BH_OK);
    assert_fmt(r, "0");
    /* overflow leaves *out untouched */
    bh_dec_t keep = D("123.456");
    r = keep;
    assert_int_equal(bh_dec_add(D(MAXS), D("0.000000000000000001"), &r), BH_ERANGE);
    assert_true(r.units == keep.units);
    assert_int_equal(bh_dec_sub(D("-" MAXS), D("0.000000000000000001"), &r), BH_ERANGE);
    assert_int_equal(bh_dec_add(D(MAXS), D(MAXS), &r), BH_ERANGE);
    assert_int_equal(bh_dec_add(D("-" MAXS), D("-" MAXS), &r), BH_ERANGE);
    assert_int_equal(bh_dec_sub(D(MAXS), D("-" MAXS), &r), BH_ERANGE);
    assert_int_equal(bh_dec_sub(D("-" MAXS), D(MAXS), &r), BH_ERANGE);
    assert_int_equal(bh_dec_add(D("50000000000000000000"), D("50000000000000000000"), &r),
                     BH_ERANGE);
    assert_true(r.units == keep.units);
    /* raw units near the __int128 limits: the overflow check itself must not overflow */
    bh_dec_t huge = {(__int128)(((unsigned __int128)1 << 127) - 1)};
    bh_dec_t tiny = {-huge.units - 1};
    assert_int_equal(bh_dec_add(huge, huge, &r), BH_ERANGE);
    assert_int_equal(bh_dec_sub(tiny, huge, &r), BH_ERANGE);
    assert_int_equal(bh_dec_add(huge, D("0"), &r), BH_ERANGE);
    assert_true(r.units == keep.units);
}

static void expect_mul(const char *a, const char *b, const char *want) {
    bh_dec_t r = {999};
    int rc = bh_dec_mul(D(a), D(b), &r);
    if (!want) {
        if (rc != BH_ERANGE)
            fail_msg("%s * %s = %d, want BH_ERANGE", a, b, rc);
        assert_true(r.units == 999);
        return;
    }
    if (rc != BH_OK)
        fail_msg("%s * %s = %d", a, b, rc);
    char out[BH_DEC_STRLEN];
    bh_dec_format(r, out);
    if (strcmp(out, want) != 0)
        fail_msg("%s * %s = %s, want %s", a, b, out, want);
    /* commutative, and the sign rules hold */
    bh_dec_t r2;
    assert_int_equal(bh_dec_mul(D(b), D(a), &r2), BH_OK);
    assert_true(r2.units == r.units);
}

static void test_mul_exact(void **state) {
    expect_mul("2", "3", "6");
    expect_mul("1.5", "1.5", "2.25");
    expect_mul("-1.5", "2", "-3");
    expect_mul("-1.5", "-2", "3");
    expect_mul("0", MAXS, "0");
    expect_mul("-0", "-" MAXS, "0");
    expect_mul("1", MAXS, MAXS);
    expect_mul("-1", MAXS, "-" MAXS);
    expect_mul("0.333333333333333333", "3", "0.999999999999999999");
    expect_mul("0.000000001", "0.000000001", "0.000000000000000001");
    expect_mul("10000000000", "9999999999.999999999999999999", "99999999999999999999.99999999");
    /* 9999999999999999999.9999999999999999999 rounds up at the 18th digit */
    expect_mul("0.1", MAXS, "10000000000000000000");
    /* 99.999999999999999999999999999999999999 rounds up to 100 */
    expect_mul(MAXS, "0.000000000000000001", "100");
}

static void test_mul_half_even(void **state) {
    /* exact ties go to the even neighbour, in both signs */
    expect_mul("0.000000000000000001", "0.5", "0");
    expect_mul("0.000000000000000003", "0.5", "0.000000000000000002");
    expect_mul("0.000000000000000005", "0.5", "0.000000000000000002");
    expect_mul("0.000000000000000007", "0.5", "0.000000000000000004");
    expect_mul("0.000000000000000009", "0.5", "0.000000000000000004");
    expect_mul("-0.000000000000000001", "0.5", "0");
    expect_mul("-0.000000000000000003", "0.5", "-0.000000000000000002");
    expect_mul("-0.000000000000000005", "0.5", "-0.000000000000000002");
    expect_mul("-0.000000000000000007", "-0.5", "0.000000000000000004");
    expect_mul("0.000000000000000007", "-0.5", "-0.000000000000000004");
    expect_mul("1.000000000000000001", "0.5", "0.5");
    expect_mul("1.000000000000000003", "0.5", "0.500000000000000002");
    expect_mul("-1.000000000000000003", "0.5", "-0.500000000000000002");
    /* just above / below a half */
    expect_mul("0.000000000000000001", "0.500000000000000001", "0.000000000000000001");
    expect_mul("0.000000000000000001", "0.499999999999999999", "0");
    expect_mul("-0.000000000000000001", "0.500000000000000001", "-0.000000000000000001");
    expect_mul("-0.000000000000000001", "-0.499999999999999999", "0");
    expect_mul("0.000000000000000001", "-0.6", "-0.000000000000000001");
    expect_mul("0.000000000000000002", "0.25", "0");
    expect_mul("0.000000000000000002", "0.75", "0.000000000000000002");
    expect_mul("0.1", "0.000000000000000015", "0.000000000000000002");
    expect_mul("0.1", "0.000000000000000025", "0.000000000000000002");
    expect_mul("0.1", "0.000000000000000035", "0.000000000000000004");
    /* a negative result that rounds to zero is plain zero */
    bh_dec_t r;
    assert_int_equal(bh_dec_mul(D("-0.000000000000000001"), D("0.000000000000000001"), &r), BH_OK);
    assert_true(r.units == 0);
    assert_false(bh_dec_is_neg(r));
    assert_fmt(r, "0");
}

static void test_mul_range(void **state) {
    expect_mul("10000000000", "10000000000", NULL);
    expect_mul("-10000000000", "10000000000", NULL);
    expect_mul(MAXS, MAXS, NULL);
    expect_mul(MAXS, "-" MAXS, NULL);
    expect_mul(MAXS, "1.000000000000000001", NULL);
    expect_mul(MAXS, "2", NULL);
    expect_mul("50000000000000000000", "2", NULL);
    expect_mul("-50000000000000000000", "2", NULL);
    expect_mul("49999999999999999999.999999999999999999", "2",
               "99999999999999999999.999999999999999998");
    expect_mul("33333333333333333333.333333333333333333", "3", MAXS);
    expect_mul("33333333333333333333.333333333333333334", "3", NULL);
    /* largest representable product, and one whose exact value rounds up to 10^20 */
    expect_mul("10.000000000000000001", "9999999999999999999", MAXS);
    expect_mul("11.90386276959168285", "8400634477696530361.473982771903672277", NULL);
    expect_mul("-11.90386276959168285", "8400634477696530361.473982771903672277", NULL);
    /* raw units at the __int128 limits */
    bh_dec_t huge = {(__int128)(((unsigned __int128)1 << 127) - 1)};
    bh_dec_t tiny = {-huge.units - 1};
    bh_dec_t r = {5};
    assert_int_equal(bh_dec_mul(huge, huge, &r), BH_ERANGE);
    assert_int_equal(bh_dec_mul(tiny, tiny, &r), BH_ERANGE);
    assert_int_equal(bh_dec_mul(tiny, bh_dec_from_int(1), &r), BH_ERANGE);
    assert_true(r.units == 5);
    assert_int_equal(bh_dec_mul(tiny, bh_dec_zero(), &r), BH_OK);
    assert_true(r.units == 0);
}

/* Random operands across all magnitudes; expected values computed independently with exact
 * rational arithmetic and round-half-even. NULL = out of range. */
static void test_mul_vectors(void **state) {
    static const struct {
        const char *a, *b, *want;
    } v[] = {
        {"58.122908374835613157", "-0.00000000000007024", "-0.000000000004082553"},
        {"10525282092545323204.305425830565082806", "-4276360.666639526857400989", NULL},
        {"-970420331970.015612494131800409", "-0.662265446085718848",
         "642675854042.773761167636678026"},
        {"-612389747278.19635479462497556", "0.000000000000015476", "-0.009477343728877367"},
        {"-0.000000007546862848", "-868500629400.254732744231513194", "6554.455133485398964284"},
        {"-0.000000000000035382", "0.000000000000007953", "0"},
        {"-8.220621215424424358", "-6712063.079869640233783945", "55177328.153643367003791033"},
        {"-127630195765.182382939790357034", "-0.33138645565459117",
         "42294918209.125401484129386173"},
        {"0.450734318090493777", "510957267290.233123464183609832",
         "230305975445.445387968330347357"},
        {"0.000000007813747418", "7.660868490996640315", "0.000000059860091391"},
        {"-2919238.399766815180709726", "-0.000000009586181751", "0.027984349874663086"},
        {"-331359341042.628017230826343471", "0.000000006727384338", "-2229.181641180176313479"},
        {"0.000000000000063115", "-0.000000000000000004", "0"},
        {"-0.187122836396895282", "-96433234533535030116.445584324686092382",
         "18044860368842107755.094232213457569444"},
        {"0.00000000000004766", "0.000000000000027257", "0"},
        {"0.000000007019735688", "19626382759885885393.735406680834429097",
         "137772019485.918884505882365907"},
        {"-103935648857.209146749153389673", "60.224134893453944934",
         "-6259434537015.22601059517915476"},
        {"-0.000000002217639875", "5775999942414004867.039926317376851766",
         "-12809087790.295000951591813818"},
        {"-9180446441509647562.345179683578944263", "6.764417186681694233",
         "-62100369690358661151.073238472972669506"},
        {"77.896777207446878487", "6520960925930148578.599606861592587459", NULL},
        {"0.275995194608528019", "-0.596796817718235954", "-0.164713053847894755"},
        {"0.000000000000000001", "767920703290.238374862214742099", "0.00000076792070329"},
        {"-473349843675.914130779375541968", "-0.000000000000029734", "0.014074584251859631"},
        {"82.690358240928190484", "20400544867637777290.199757079648144108", NULL},
        {"0.500281545206241664", "-68.655548359585466418", "-34.347103820315267236"},
        {"-0.000000000000095001", "0.000000000118321418", "0"},
        {"0.000000000000000002", "0.000000003744107386", "0"},
        {"-0.290345767924308179", "-3466512941069354647.852714307905387853",
         "1006487361894333839.465560746022592622"},
        {"1178066.834661989531110837", "-89.986331026360616147", "-106009912.155070630689110596"},
        {"-0.00000000937637699", "-0.00000000074022352", "0.000000000000000007"},
        {"-0.000000000000072939", "8339815421341282707.967044606920339128",
         "-608297.797017211819436408"},
        {"-2944687392393748736.372091915422395541", "-0.000000000000066548",
         "195963.05658901919090809"},
        {"-0.000000000000000002", "-87139760026673763478.510682082970051386",
         "174.279520053347526957"},
        {"9.37382652558789402", "891131101724.247349517719701151",
         "8353308359119.113686309843597947"},
        {"-2.529683873241052606", "1403249.65048555964299026", "-3549778.010964463833370232"},
        {"2366602.598515543076175533", "-0.000000001572745252", "-0.003722063000186183"},
        {"-0.000000008450540512", "0.000000000000052201", "0"},
        {"-0.000000003575322646", "-7810822.120645076054674149", "0.027926209211820085"},
        {"-0.367234982538320758", "-80.021601004193371478", "29.386731247463423608"},
        {"-0.000000000000000007", "-10938512341577986238.31191533112019389",
         "76.569586391045903668"},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        expect_mul(v[i].a, v[i].b, v[i].want);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_valid),   cmocka_unit_test(test_parse_long_inputs),
        cmocka_unit_test(test_parse_invalid), cmocka_unit_test(test_parse_range),
        cmocka_unit_test(test_format_units),  cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_from_int),      cmocka_unit_test(test_predicates),
        cmocka_unit_test(test_add_sub),       cmocka_unit_test(test_mul_exact),
        cmocka_unit_test(test_mul_half_even), cmocka_unit_test(test_mul_range),
        cmocka_unit_test(test_mul_vectors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
