/* Op-id filter: a Bloom filter over the journaled (user_id, op_id) keys, so that a new op id
 * (the common case) is known to be new without a store lookup. "No" is certain; "maybe" means
 * ask the store. Layered (scalable): when a layer fills, a twice larger layer with half the
 * false-positive rate is added, so the total stays under BH_OPFILTER_FPR without ever needing
 * the keys again. Loop thread only. */
#ifndef BH_LEDGER_OPFILTER_H
#define BH_LEDGER_OPFILTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bound on the false-positive rate (the sum of the layers' targets 0.5%, 0.25%, ...). */
#define BH_OPFILTER_FPR 0.01
#define BH_OPFILTER_MIN_KEYS 65536

typedef struct {
    uint64_t *bits;
    uint64_t nbits; /* power of two */
    uint64_t cap;   /* keys it is sized for */
    uint64_t n;     /* keys added */
    unsigned k;     /* probes per key */
} bh_opfilter_layer_t;

typedef struct {
    bh_opfilter_layer_t *layers; /* the last one takes new keys */
    size_t nlayers;
    uint64_t n; /* keys added, all layers */
    /* A layer could not be allocated: the filter no longer knows every key and answers
     * "maybe" to everything (never a false "no"). */
    bool saturated;
} bh_opfilter_t;

/* An empty filter with room for expected keys (at least BH_OPFILTER_MIN_KEYS) before it
 * grows. BH_ENOMEM leaves f saturated (usable: always "maybe"). */
int bh_opfilter_init(bh_opfilter_t *f, uint64_t expected);
void bh_opfilter_free(bh_opfilter_t *f);

/* The key of an op: user_id and op_id joined by 0x1f (neither can contain it). */
void bh_opfilter_add(bh_opfilter_t *f, const char *key, size_t len);
/* false: the key was never added (certain); true: it may have been. */
bool bh_opfilter_maybe(const bh_opfilter_t *f, const char *key, size_t len);

#endif
