/* Layered Bloom filter over op keys. Each layer is a classic Bloom filter probed by double
 * hashing (h1 + i*h2) from one 64-bit hash of the key; layer i is sized for its capacity at a
 * false-positive rate of 0.5% / 2^i, so however many layers there are, a key that was never
 * added passes with probability under 1% in total. */
#include "opfilter.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../base/error.h"

#define FIRST_FPR (BH_OPFILTER_FPR / 2)

/* splitmix64's finalizer: a bijective 64-bit mix with full avalanche. */
static uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static uint64_t key_hash(const char *key, size_t len) {
    uint64_t h = 0x6a09e667f3bcc909ULL ^ (uint64_t)len;
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, key, 8);
        h = mix64(h ^ w) + 0x9e3779b97f4a7c15ULL;
        key += 8;
        len -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, key, len);
    return mix64(h ^ w ^ 0x3c6ef372fe94f82bULL);
}

static int layer_init(bh_opfilter_layer_t *l, uint64_t cap, double fpr) {
    /* Optimal Bloom sizing: m = -n ln p / (ln 2)^2 bits, k = (m / n) ln 2 probes; m is rounded
     * up to a power of two (only lowers the rate). */
    double ln2 = 0.6931471805599453;
    double m = ceil(-(double)cap * log(fpr) / (ln2 * ln2));
    uint64_t nbits = 512;
    while ((double)nbits < m)
        nbits <<= 1;
    unsigned k = (unsigned)lround(-log(fpr) / ln2);
    memset(l, 0, sizeof *l);
    if (!(l->bits = calloc(nbits / 64, sizeof *l->bits)))
        return BH_ENOMEM;
    l->nbits = nbits;
    l->cap = cap;
    l->k = k < 1 ? 1 : k;
    return BH_OK;
}

static int add_layer(bh_opfilter_t *f, uint64_t cap) {
    bh_opfilter_layer_t *g = realloc(f->layers, (f->nlayers + 1) * sizeof *g);
    if (!g)
        return BH_ENOMEM;
    f->layers = g;
    if (layer_init(&g[f->nlayers], cap, FIRST_FPR / ldexp(1.0, (int)f->nlayers)) != BH_OK)
        return BH_ENOMEM;
    f->nlayers++;
    return BH_OK;
}

int bh_opfilter_init(bh_opfilter_t *f, uint64_t expected) {
    memset(f, 0, sizeof *f);
    if (add_layer(f, expected < BH_OPFILTER_MIN_KEYS ? BH_OPFILTER_MIN_KEYS : expected) != BH_OK) {
        f->saturated = true;
        return BH_ENOMEM;
    }
    return BH_OK;
}

void bh_opfilter_free(bh_opfilter_t *f) {
    for (size_t i = 0; i < f->nlayers; i++)
        free(f->layers[i].bits);
    free(f->layers);
    memset(f, 0, sizeof *f);
}

void bh_opfilter_add(bh_opfilter_t *f, const char *key, size_t len) {
    if (f->saturated)
        return;
    bh_opfilter_layer_t *l = f->nlayers ? &f->layers[f->nlayers - 1] : NULL;
    if (!l || l->n >= l->cap) {
        if (add_layer(f, l ? l->cap * 2 : BH_OPFILTER_MIN_KEYS) != BH_OK) {
            f->saturated = true;
            return;
        }
        l = &f->layers[f->nlayers - 1];
    }
    uint64_t h = key_hash(key, len), h2 = mix64(h) | 1, mask = l->nbits - 1;
    for (unsigned i = 0; i < l->k; i++, h += h2)
        l->bits[(h & mask) >> 6] |= 1ULL << (h & 63);
    l->n++;
    f->n++;
}

bool bh_opfilter_maybe(const bh_opfilter_t *f, const char *key, size_t len) {
    if (f->saturated)
        return true;
    uint64_t h0 = key_hash(key, len), h2 = mix64(h0) | 1;
    for (size_t j = 0; j < f->nlayers; j++) {
        const bh_opfilter_layer_t *l = &f->layers[j];
        uint64_t h = h0, mask = l->nbits - 1;
        unsigned i = 0;
        while (i < l->k && (l->bits[(h & mask) >> 6] >> (h & 63) & 1))
            i++, h += h2;
        if (i == l->k)
            return true;
    }
    return false;
}
