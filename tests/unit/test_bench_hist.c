/* Unit tests for bh_hist_t (base/hist.c), the latency histogram of `balancehub bench`: bucket
 * boundaries, exact small values, percentile ranks on known inputs, precision bound, merge. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>

#include "base/hist.h"

static bh_hist_t *new_hist(void) {
    bh_hist_t *h = malloc(sizeof *h);
    assert_non_null(h);
    bh_hist_init(h);
    return h;
}

static void test_empty(void **state) {
    bh_hist_t *h = new_hist();
    assert_int_equal(h->count, 0);
    assert_int_equal(bh_hist_percentile(h, 50), 0);
    assert_int_equal(bh_hist_percentile(h, 100), 0);
    assert_int_equal(bh_hist_percentile(h, 0), 0);
    assert_true(bh_hist_mean(h) == 0);
    free(h);
}

/* Every bucket's low is where the index changes, and indexes are contiguous and in range. */
static void test_bucket_layout(void **state) {
    for (unsigned i = 0; i < 256; i++) {
        assert_int_equal(bh_hist_index(i), i);
        assert_int_equal(bh_hist_bucket_low(i), i);
        assert_int_equal(bh_hist_bucket_width(i), 1);
    }
    assert_int_equal(bh_hist_index(256), 256);
    assert_int_equal(bh_hist_index(257), 256); /* width 2 from 256 on */
    assert_int_equal(bh_hist_index(258), 257);
    assert_int_equal(bh_hist_index(511), 383);
    assert_int_equal(bh_hist_index(512), 384);
    assert_int_equal(bh_hist_index(UINT64_MAX), BH_HIST_BUCKETS - 1);
    for (unsigned i = 1; i < BH_HIST_BUCKETS; i++) {
        uint64_t lo = bh_hist_bucket_low(i), w = bh_hist_bucket_width(i);
        assert_int_equal(bh_hist_index(lo), i);
        assert_int_equal(bh_hist_index(lo - 1), i - 1);
        assert_int_equal(bh_hist_index(lo + (w - 1)), i);
        assert_int_equal(bh_hist_bucket_low(i - 1) + bh_hist_bucket_width(i - 1), lo);
        /* relative width bounded: at most 1/128 of the bucket's low value */
        assert_true(w == 1 || w * 128 <= lo);
    }
}

/* 1..100: exact values (all below 256), so every percentile is the textbook rank. */
static void test_exact_small(void **state) {
    bh_hist_t *h = new_hist();
    for (uint64_t v = 100; v >= 1; v--)
        bh_hist_record(h, v);
    assert_int_equal(h->count, 100);
    assert_int_equal(h->min, 1);
    assert_int_equal(h->max, 100);
    assert_int_equal(bh_hist_percentile(h, 50), 50);
    assert_int_equal(bh_hist_percentile(h, 90), 90);
    assert_int_equal(bh_hist_percentile(h, 99), 99);
    assert_int_equal(bh_hist_percentile(h, 99.9), 100);
    assert_int_equal(bh_hist_percentile(h, 100), 100);
    assert_int_equal(bh_hist_percentile(h, 0), 1);
    assert_int_equal(bh_hist_percentile(h, 0.5), 1);
    assert_int_equal(bh_hist_percentile(h, 1), 1);
    assert_int_equal(bh_hist_percentile(h, 1.01), 2);
    assert_int_equal(bh_hist_percentile(h, 150), 100); /* clamped */
    assert_int_equal(bh_hist_percentile(h, -3), 1);
    assert_true(bh_hist_percentile(h, NAN) == 1);
    assert_true(fabs(bh_hist_mean(h) - 50.5) < 1e-9);
    free(h);
}

/* One sample: every percentile is that exact value, even in a wide bucket. */
static void test_single_large(void **state) {
    bh_hist_t *h = new_hist();
    bh_hist_record(h, 123456789);
    assert_int_equal(bh_hist_percentile(h, 50), 123456789);
    assert_int_equal(bh_hist_percentile(h, 99.9), 123456789);
    assert_true(bh_hist_mean(h) == 123456789.0);
    bh_hist_record(h, UINT64_MAX);
    assert_int_equal(h->max, UINT64_MAX);
    assert_int_equal(bh_hist_percentile(h, 100), UINT64_MAX);
    /* now the 50th percentile is a bucket middle, within 0.4% */
    double p50 = (double)bh_hist_percentile(h, 50);
    assert_true(p50 >= 123456789 && p50 <= 123456789 * 1.004);
    free(h);
}

/* A known skewed distribution in nanoseconds: 9000 x 50 us, 900 x 200 us, 90 x 1 ms,
 * 10 x 20 ms. p50 ~ 50 us, p90 ~ 50 us, p99 ~ 200 us, p99.9 ~ 1 ms, max exactly 20 ms; each
 * within 0.4%. */
static void test_known_distribution(void **state) {
    bh_hist_t *h = new_hist();
    for (int i = 0; i < 9000; i++)
        bh_hist_record(h, 50000);
    for (int i = 0; i < 900; i++)
        bh_hist_record(h, 200000);
    for (int i = 0; i < 90; i++)
        bh_hist_record(h, 1000000);
    for (int i = 0; i < 10; i++)
        bh_hist_record(h, 20000000);
    struct {
        double p;
        double want;
    } cases[] = {{50, 50000},     {90, 50000},  {90.01, 200000}, {99, 200000},
                 {99.9, 1000000}, {99.91, 2e7}, {100, 2e7},      {0, 50000}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double got = (double)bh_hist_percentile(h, cases[i].p);
        assert_true(fabs(got - cases[i].want) <= cases[i].want * 0.004);
    }
    assert_int_equal(bh_hist_percentile(h, 100), 20000000);
    double mean = (9000 * 50000.0 + 900 * 200000.0 + 90 * 1e6 + 10 * 2e7) / 10000;
    assert_true(fabs(bh_hist_mean(h) - mean) < 1e-6);
    free(h);
}

/* A uniform ramp 1..1,000,000: percentile p is p% of a million within the bucket precision. */
static void test_uniform_precision(void **state) {
    bh_hist_t *h = new_hist();
    for (uint64_t v = 1; v <= 1000000; v++)
        bh_hist_record(h, v);
    static const double ps[] = {1, 10, 25, 50, 75, 90, 99, 99.9, 99.99};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) {
        double want = ps[i] * 10000, got = (double)bh_hist_percentile(h, ps[i]);
        assert_true(fabs(got - want) <= want * 0.004 + 1);
    }
    free(h);
}

/* Merging two halves gives the same counts and percentiles as recording everything in one. */
static void test_merge(void **state) {
    bh_hist_t *a = new_hist(), *b = new_hist(), *all = new_hist(), *empty = new_hist();
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < 20000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17; /* xorshift64 */
        uint64_t v = x % 5000000;
        bh_hist_record(i % 3 ? a : b, v);
        bh_hist_record(all, v);
    }
    bh_hist_merge(a, empty); /* merging nothing changes nothing, min stays */
    bh_hist_merge(empty, b);
    bh_hist_merge(empty, a);
    assert_int_equal(empty->count, all->count);
    assert_int_equal(empty->min, all->min);
    assert_int_equal(empty->max, all->max);
    assert_memory_equal(empty->buckets, all->buckets, sizeof all->buckets);
    assert_true(fabs(bh_hist_mean(empty) - bh_hist_mean(all)) < 1e-6 * bh_hist_mean(all));
    static const double ps[] = {50, 90, 99, 99.9};
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(bh_hist_percentile(empty, ps[i]), bh_hist_percentile(all, ps[i]));
    free(a);
    free(b);
    free(all);
    free(empty);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_bucket_layout),
        cmocka_unit_test(test_exact_small),
        cmocka_unit_test(test_single_large),
        cmocka_unit_test(test_known_distribution),
        cmocka_unit_test(test_uniform_precision),
        cmocka_unit_test(test_merge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
