/* Failed-authentication throttling: a token bucket of failures per source address, in a table
 * of bounded size (a fixed pool and hash, least recently failed first), so that guessing keys
 * from one address is slow and the table itself cannot be grown by an attacker. */
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/error.h"
#include "internal.h"

/* Retry-After never says more than a day (a tiny refill rate would give absurd numbers). */
#define BH_SR_THROTTLE_WAIT_MAX 86400

typedef struct sr_tentry {
    struct sr_tentry *hnext;       /* hash chain; the free list while unused */
    struct sr_tentry *prev, *next; /* in use: least recently failed first */
    double tokens;                 /* at last_ms */
    uint64_t last_ms;
    uint64_t hash;
    bh_sr_addr_t addr;
} sr_tentry_t;

struct bh_sr_throttle {
    double rate_per_ms, burst;
    size_t max, used;
    uint64_t seed;
    sr_tentry_t **buckets; /* max of them */
    sr_tentry_t *pool;     /* max entries; calloc'd, so untouched pages cost nothing */
    sr_tentry_t *free_list;
    size_t fresh; /* pool entries never used yet */
    sr_tentry_t *oldest, *newest;
};

int bh_sr_addr_from(const struct sockaddr *sa, bh_sr_addr_t *out) {
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    memset(out, 0, sizeof *out);
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        out->b[0] = 4;
        memcpy(out->b + 1, &in->sin_addr, 4);
        return BH_OK;
    }
    if (sa->sa_family == AF_INET6) {
        const unsigned char *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        if (memcmp(a, mapped, sizeof mapped) == 0) {
            out->b[0] = 4;
            memcpy(out->b + 1, a + 12, 4);
        } else {
            out->b[0] = 6;
            memcpy(out->b + 1, a, 8);
        }
        return BH_OK;
    }
    return BH_EINVAL;
}

void bh_sr_addr_text(const bh_sr_addr_t *a, char *out, size_t cap) {
    char ip[INET6_ADDRSTRLEN] = "?";
    if (a->b[0] == 4) {
        inet_ntop(AF_INET, a->b + 1, ip, sizeof ip);
        snprintf(out, cap, "%s", ip);
        return;
    }
    unsigned char full[16] = {0};
    memcpy(full, a->b + 1, 8);
    inet_ntop(AF_INET6, full, ip, sizeof ip);
    snprintf(out, cap, "%s/64", ip);
}

int bh_sr_throttle_new(double rate, double burst, size_t max, uint64_t seed,
                       bh_sr_throttle_t **out) {
    bh_sr_throttle_t *t = calloc(1, sizeof *t);
    if (!t)
        return BH_ENOMEM;
    t->rate_per_ms = rate / 1000.0;
    t->burst = burst;
    t->max = max;
    t->seed = seed;
    t->buckets = calloc(max, sizeof *t->buckets);
    t->pool = calloc(max, sizeof *t->pool);
    if (!t->buckets || !t->pool)
        goto fail;
    *out = t;
    return BH_OK;
fail:
    free(t->buckets);
    free(t->pool);
    free(t);
    return BH_ENOMEM;
}

void bh_sr_throttle_free(bh_sr_throttle_t *t) {
    if (!t)
        return;
    free(t->buckets);
    free(t->pool);
    free(t);
}

size_t bh_sr_throttle_size(const bh_sr_throttle_t *t) {
    return t->used;
}

static uint64_t addr_hash(const bh_sr_throttle_t *t, const bh_sr_addr_t *a) {
    uint64_t h = 1469598103934665603ull ^ t->seed; /* FNV-1a, seeded: no chosen collisions */
    for (size_t i = 0; i < sizeof a->b; i++) {
        h ^= a->b[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static sr_tentry_t **slot(bh_sr_throttle_t *t, const bh_sr_addr_t *a, uint64_t hash) {
    sr_tentry_t **p = &t->buckets[hash & (t->max - 1)];
    for (; *p; p = &(*p)->hnext)
        if ((*p)->hash == hash && memcmp(&(*p)->addr, a, sizeof *a) == 0)
            break;
    return p;
}

/* Tokens of e at now (refilled up to the burst). */
static double tokens_at(const bh_sr_throttle_t *t, const sr_tentry_t *e, uint64_t now) {
    double v = e->tokens;
    if (now > e->last_ms)
        v += (double)(now - e->last_ms) * t->rate_per_ms;
    return v < t->burst ? v : t->burst;
}

static void lru_unlink(bh_sr_throttle_t *t, sr_tentry_t *e) {
    if (e->prev)
        e->prev->next = e->next;
    else
        t->oldest = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        t->newest = e->prev;
    e->prev = e->next = NULL;
}

static void lru_append(bh_sr_throttle_t *t, sr_tentry_t *e) {
    e->next = NULL;
    e->prev = t->newest;
    if (t->newest)
        t->newest->next = e;
    else
        t->oldest = e;
    t->newest = e;
}

static void remove_entry(bh_sr_throttle_t *t, sr_tentry_t *e) {
    sr_tentry_t **p = slot(t, &e->addr, e->hash);
    *p = e->hnext;
    lru_unlink(t, e);
    e->hnext = t->free_list;
    t->free_list = e;
    t->used--;
}

/* A place for a new address: a free or never used entry, else the least recently failed. */
static sr_tentry_t *take_entry(bh_sr_throttle_t *t) {
    if (!t->free_list && t->fresh == t->max)
        remove_entry(t, t->oldest);
    sr_tentry_t *e = t->free_list;
    if (e)
        t->free_list = e->hnext;
    else
        e = &t->pool[t->fresh++];
    memset(e, 0, sizeof *e);
    t->used++;
    return e;
}

uint64_t bh_sr_throttle_wait(bh_sr_throttle_t *t, const bh_sr_addr_t *a, uint64_t now_ms) {
    sr_tentry_t *e = *slot(t, a, addr_hash(t, a));
    if (!e)
        return 0;
    double v = tokens_at(t, e, now_ms);
    if (v >= 1.0)
        return 0;
    double s = t->rate_per_ms > 0 ? ceil((1.0 - v) / (t->rate_per_ms * 1000.0)) : 0;
    if (!(s >= 1.0))
        return 1;
    return s > BH_SR_THROTTLE_WAIT_MAX ? BH_SR_THROTTLE_WAIT_MAX : (uint64_t)s;
}

int bh_sr_throttle_fail(bh_sr_throttle_t *t, const bh_sr_addr_t *a, uint64_t now_ms) {
    /* Forget addresses that have their whole burst back (as good as never seen): the table
     * stays small without a sweep. A couple per call keeps the work constant. */
    for (int i = 0; i < 2 && t->oldest; i++) {
        sr_tentry_t *o = t->oldest;
        if (tokens_at(t, o, now_ms) < t->burst)
            break;
        remove_entry(t, o);
    }
    uint64_t hash = addr_hash(t, a);
    sr_tentry_t *e = *slot(t, a, hash);
    if (e) {
        e->tokens = tokens_at(t, e, now_ms);
        lru_unlink(t, e);
    } else {
        e = take_entry(t);
        e->addr = *a;
        e->hash = hash;
        e->tokens = t->burst;
        sr_tentry_t **p = slot(t, a, hash); /* after take_entry: it may have removed one */
        e->hnext = *p;
        *p = e;
    }
    e->last_ms = now_ms;
    int had = e->tokens >= 1.0;
    e->tokens = had ? e->tokens - 1.0 : 0.0;
    lru_append(t, e);
    return had && e->tokens < 1.0;
}
