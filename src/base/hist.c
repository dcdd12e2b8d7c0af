/* Log-bucketed latency histogram (see hist.h): O(1) record with a count-leading-zeros, fixed
 * 60 KiB of counts, percentiles by a cumulative walk. */
#include <string.h>

#include "hist.h"

void bh_hist_init(bh_hist_t *h) {
    memset(h, 0, sizeof *h);
    h->min = UINT64_MAX;
}

unsigned bh_hist_index(uint64_t v) {
    if (v < 2 * BH_HIST_SUB)
        return (unsigned)v;
    /* e >= SUB_BITS + 1: the top SUB_BITS bits below the leading one pick the bucket. */
    unsigned e = 63u - (unsigned)__builtin_clzll(v);
    unsigned m = (unsigned)(v >> (e - BH_HIST_SUB_BITS)) & (BH_HIST_SUB - 1);
    return 2 * BH_HIST_SUB + (e - BH_HIST_SUB_BITS - 1) * BH_HIST_SUB + m;
}

uint64_t bh_hist_bucket_low(unsigned i) {
    if (i < 2 * BH_HIST_SUB)
        return i;
    unsigned k = i - 2 * BH_HIST_SUB;
    unsigned e = k / BH_HIST_SUB + BH_HIST_SUB_BITS + 1, m = k % BH_HIST_SUB;
    return ((uint64_t)BH_HIST_SUB + m) << (e - BH_HIST_SUB_BITS);
}

uint64_t bh_hist_bucket_width(unsigned i) {
    if (i < 2 * BH_HIST_SUB)
        return 1;
    unsigned e = (i - 2 * BH_HIST_SUB) / BH_HIST_SUB + BH_HIST_SUB_BITS + 1;
    return (uint64_t)1 << (e - BH_HIST_SUB_BITS);
}

void bh_hist_record(bh_hist_t *h, uint64_t v) {
    h->buckets[bh_hist_index(v)]++;
    h->count++;
    h->sum += (double)v;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
}

void bh_hist_merge(bh_hist_t *dst, const bh_hist_t *src) {
    if (src->count == 0)
        return;
    for (unsigned i = 0; i < BH_HIST_BUCKETS; i++)
        dst->buckets[i] += src->buckets[i];
    dst->count += src->count;
    dst->sum += src->sum;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
}

uint64_t bh_hist_percentile(const bh_hist_t *h, double p) {
    if (h->count == 0)
        return 0;
    if (!(p > 0)) /* also NaN */
        return h->min;
    if (p >= 100)
        return h->max;
    /* rank = ceil(p% of count), at least 1: the rank-th smallest sample. */
    /* The product is inexact (99.9% of 10000 is 9990.000000000002): shave a relative 1e-12 so
     * a whole rank is not rounded up to the next sample. */
    double want = p / 100.0 * (double)h->count * (1 - 1e-12);
    uint64_t rank = (uint64_t)want;
    if ((double)rank < want)
        rank++;
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < BH_HIST_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= rank) {
            uint64_t w = bh_hist_bucket_width(i);
            uint64_t v = bh_hist_bucket_low(i) + (w - 1) / 2;
            return v < h->min ? h->min : v > h->max ? h->max : v;
        }
    }
    return h->max;
}

double bh_hist_mean(const bh_hist_t *h) {
    return h->count ? h->sum / (double)h->count : 0;
}
