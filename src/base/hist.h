/* Latency histogram in fixed memory, HDR-style: values below 256 are counted exactly, larger ones
 * in log-spaced buckets of 128 per power of two (relative error below 0.4% at the bucket middle),
 * so per-thread histograms of a load generator merge by adding counts. */
#ifndef BH_BASE_HIST_H
#define BH_BASE_HIST_H

#include <stdint.h>

#define BH_HIST_SUB_BITS 7
#define BH_HIST_SUB (1u << BH_HIST_SUB_BITS) /* buckets per power of two */
/* 2*SUB exact values, then (64 - SUB_BITS - 1) octaves of SUB buckets: every uint64_t fits. */
#define BH_HIST_BUCKETS (2 * BH_HIST_SUB + (64 - BH_HIST_SUB_BITS - 1) * BH_HIST_SUB)

typedef struct {
    uint64_t count;
    uint64_t min, max; /* exact; min is UINT64_MAX and max 0 while empty */
    double sum;        /* for the mean; a double cannot wrap */
    uint64_t buckets[BH_HIST_BUCKETS];
} bh_hist_t;

/* Empty the histogram (it holds no pointers: a zeroed or copied one is fine after init). */
void bh_hist_init(bh_hist_t *h);
void bh_hist_record(bh_hist_t *h, uint64_t v);
/* Add src's samples to dst. */
void bh_hist_merge(bh_hist_t *dst, const bh_hist_t *src);
/* The value at percentile p (0..100): the smallest recorded value v such that at least p% of the
 * samples are <= v, as the middle of its bucket, clamped to [min, max] (so p = 100 is max and
 * p = 0 is min exactly). 0 when empty; p outside 0..100 is clamped. */
uint64_t bh_hist_percentile(const bh_hist_t *h, double p);
/* The exact mean (0 when empty). */
double bh_hist_mean(const bh_hist_t *h);
/* Bucket index of v, and the lowest value and width of bucket i (for tests and tools). */
unsigned bh_hist_index(uint64_t v);
uint64_t bh_hist_bucket_low(unsigned i);
uint64_t bh_hist_bucket_width(unsigned i);

#endif
