/* State every SignalR server of the process shares, whatever thread it runs on: sessions per
 * API key and in all (limits exact across threads), the failed-authentication throttle, the
 * session owners (which server holds a connection token) and the token secret. Each part has
 * its own mutex; they are taken per connection or per failed authentication, never per message. */
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/error.h"
#include "internal.h"

#define BH_SR_MIN_OWNER_BUCKETS 64

/* Sessions of one API key id; exists while its count is non-zero. */
typedef struct sr_keycount {
    struct sr_keycount *next;
    uint64_t hash;
    size_t count;
    char key_id[BH_SR_ID_MAX + 1];
} sr_keycount_t;

struct bh_sr_shared {
    size_t max_conns_per_key, max_conns;
    uint64_t seed;
    uint8_t secret[32];
    /* sessions: per key (chained, power-of-two size) and the total */
    pthread_mutex_t count_mu;
    sr_keycount_t **kbuckets;
    size_t nkbuckets, nkeys, total;
    pthread_mutex_t throttle_mu;
    bh_sr_throttle_t *throttle;
    /* owners: registered sessions by token, chained through bh_sr_conn_t.onext (a session's
     * token, hash and server never change while it is in here) */
    pthread_mutex_t owner_mu;
    bh_sr_conn_t **obuckets;
    size_t nobuckets, nowners;
};

void bh_sr_config_fill(bh_sr_config_t *cfg) {
    if (!cfg->lp_poll_timeout_ms)
        cfg->lp_poll_timeout_ms = 90000;
    if (!cfg->reconnect_window_ms)
        cfg->reconnect_window_ms = 30000;
    if (!cfg->replay_max_bytes)
        cfg->replay_max_bytes = 1 << 20;
    if (!cfg->replay_max_messages)
        cfg->replay_max_messages = 16384;
    if (!cfg->lp_max_queued)
        cfg->lp_max_queued = 1 << 20;
    if (!cfg->max_batch)
        cfg->max_batch = 1 << 20;
    if (!cfg->max_conns_per_key)
        cfg->max_conns_per_key = 32;
    if (!cfg->max_conns)
        cfg->max_conns = 100000;
    if (!(cfg->auth_fail_rate > 0))
        cfg->auth_fail_rate = 1;
    if (!cfg->auth_fail_burst)
        cfg->auth_fail_burst = 20;
}

int bh_sr_shared_new(const bh_sr_config_t *cfg, bh_sr_shared_t **out) {
    bh_sr_config_t c = *cfg;
    bh_sr_config_fill(&c);
    bh_sr_shared_t *sh = calloc(1, sizeof *sh);
    if (!sh)
        return BH_ENOMEM;
    sh->max_conns_per_key = c.max_conns_per_key;
    sh->max_conns = c.max_conns;
    if (RAND_bytes(sh->secret, sizeof sh->secret) != 1 ||
        RAND_bytes((unsigned char *)&sh->seed, sizeof sh->seed) != 1)
        goto fail;
    if (bh_sr_throttle_new(c.auth_fail_rate, (double)c.auth_fail_burst, BH_SR_THROTTLE_MAX,
                           sh->seed, &sh->throttle) < 0)
        goto fail;
    pthread_mutex_init(&sh->count_mu, NULL);
    pthread_mutex_init(&sh->throttle_mu, NULL);
    pthread_mutex_init(&sh->owner_mu, NULL);
    *out = sh;
    return BH_OK;
fail:
    OPENSSL_cleanse(sh->secret, sizeof sh->secret);
    free(sh);
    return BH_ENOMEM;
}

void bh_sr_shared_free(bh_sr_shared_t *sh) {
    if (!sh)
        return;
    for (size_t i = 0; i < sh->nkbuckets; i++) /* empty by now; never leak on a bug */
        for (sr_keycount_t *k = sh->kbuckets[i], *next; k; k = next) {
            next = k->next;
            free(k);
        }
    free(sh->kbuckets);
    free(sh->obuckets);
    bh_sr_throttle_free(sh->throttle);
    pthread_mutex_destroy(&sh->count_mu);
    pthread_mutex_destroy(&sh->throttle_mu);
    pthread_mutex_destroy(&sh->owner_mu);
    OPENSSL_cleanse(sh->secret, sizeof sh->secret);
    free(sh);
}

void bh_sr_shared_secret(const bh_sr_shared_t *sh, uint8_t secret[32]) {
    memcpy(secret, sh->secret, sizeof sh->secret);
}

/* ---- sessions per key and in all ---- */

static uint64_t key_hash(const bh_sr_shared_t *sh, const char *key_id) {
    uint64_t h = 1469598103934665603ull ^ sh->seed; /* FNV-1a, seeded */
    for (; *key_id; key_id++) {
        h ^= (unsigned char)*key_id;
        h *= 1099511628211ull;
    }
    return h;
}

static sr_keycount_t **key_slot(const bh_sr_shared_t *sh, const char *key_id, uint64_t hash) {
    sr_keycount_t **p = &sh->kbuckets[hash & (sh->nkbuckets - 1)];
    for (; *p; p = &(*p)->next)
        if ((*p)->hash == hash && strcmp((*p)->key_id, key_id) == 0)
            break;
    return p;
}

/* Double the table (or make the first one); a failure keeps the old one. */
static int key_grow(bh_sr_shared_t *sh) {
    size_t n = sh->nkbuckets ? sh->nkbuckets * 2 : 64;
    sr_keycount_t **b = calloc(n, sizeof *b);
    if (!b)
        return BH_ENOMEM;
    for (size_t i = 0; i < sh->nkbuckets; i++) {
        for (sr_keycount_t *k = sh->kbuckets[i], *next; k; k = next) {
            next = k->next;
            k->next = b[k->hash & (n - 1)];
            b[k->hash & (n - 1)] = k;
        }
    }
    free(sh->kbuckets);
    sh->kbuckets = b;
    sh->nkbuckets = n;
    return BH_OK;
}

/* Check and count under one lock: two threads can never both take the last slot. */
static int acquire_locked(bh_sr_shared_t *sh, const char *key_id, int take) {
    if (sh->total >= sh->max_conns)
        return BH_ETOOBIG;
    if (!take) {
        sr_keycount_t *k = sh->nkbuckets ? *key_slot(sh, key_id, key_hash(sh, key_id)) : NULL;
        return k && k->count >= sh->max_conns_per_key ? BH_ELIMIT : BH_OK;
    }
    if (sh->nkeys >= sh->nkbuckets && key_grow(sh) < 0 && !sh->nkbuckets)
        return BH_ENOMEM;
    uint64_t hash = key_hash(sh, key_id);
    sr_keycount_t **p = key_slot(sh, key_id, hash);
    if (*p && (*p)->count >= sh->max_conns_per_key)
        return BH_ELIMIT;
    if (!*p) {
        sr_keycount_t *k = calloc(1, sizeof *k);
        if (!k)
            return BH_ENOMEM;
        k->hash = hash;
        snprintf(k->key_id, sizeof k->key_id, "%s", key_id);
        *p = k;
        sh->nkeys++;
    }
    (*p)->count++;
    sh->total++;
    return BH_OK;
}

int bh_sr_shared_acquire(bh_sr_shared_t *sh, const char *key_id, int take) {
    pthread_mutex_lock(&sh->count_mu);
    int r = acquire_locked(sh, key_id, take);
    pthread_mutex_unlock(&sh->count_mu);
    return r;
}

void bh_sr_shared_release(bh_sr_shared_t *sh, const char *key_id) {
    pthread_mutex_lock(&sh->count_mu);
    sr_keycount_t **p = sh->nkbuckets ? key_slot(sh, key_id, key_hash(sh, key_id)) : NULL;
    sr_keycount_t *k = p ? *p : NULL;
    if (k) {
        sh->total--;
        if (--k->count == 0) {
            *p = k->next;
            free(k);
            sh->nkeys--;
        }
    }
    pthread_mutex_unlock(&sh->count_mu);
}

size_t bh_sr_shared_count(bh_sr_shared_t *sh, const char *key_id) {
    pthread_mutex_lock(&sh->count_mu);
    size_t n = sh->total;
    if (key_id) {
        sr_keycount_t *k = sh->nkbuckets ? *key_slot(sh, key_id, key_hash(sh, key_id)) : NULL;
        n = k ? k->count : 0;
    }
    pthread_mutex_unlock(&sh->count_mu);
    return n;
}

/* ---- failed authentications ---- */

uint64_t bh_sr_shared_throttle_wait(bh_sr_shared_t *sh, const bh_sr_addr_t *a, uint64_t now_ms) {
    pthread_mutex_lock(&sh->throttle_mu);
    uint64_t w = bh_sr_throttle_wait(sh->throttle, a, now_ms);
    pthread_mutex_unlock(&sh->throttle_mu);
    return w;
}

uint64_t bh_sr_shared_throttle_fail(bh_sr_shared_t *sh, const bh_sr_addr_t *a, uint64_t now_ms) {
    pthread_mutex_lock(&sh->throttle_mu);
    uint64_t w = 0;
    if (bh_sr_throttle_fail(sh->throttle, a, now_ms))
        w = bh_sr_throttle_wait(sh->throttle, a, now_ms);
    pthread_mutex_unlock(&sh->throttle_mu);
    return w;
}

/* ---- session owners ---- */

static int owner_grow(bh_sr_shared_t *sh) {
    size_t n = sh->nobuckets ? sh->nobuckets * 2 : BH_SR_MIN_OWNER_BUCKETS;
    bh_sr_conn_t **b = calloc(n, sizeof *b);
    if (!b)
        return BH_ENOMEM;
    for (size_t i = 0; i < sh->nobuckets; i++) {
        for (bh_sr_conn_t *c = sh->obuckets[i], *next; c; c = next) {
            next = c->onext;
            c->onext = b[c->hash & (n - 1)];
            b[c->hash & (n - 1)] = c;
        }
    }
    free(sh->obuckets);
    sh->obuckets = b;
    sh->nobuckets = n;
    return BH_OK;
}

uint64_t bh_sr_shared_hash(const bh_sr_shared_t *sh, const char *token, size_t n) {
    uint64_t h = 1469598103934665603ull ^ sh->seed; /* FNV-1a, seeded per process */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)token[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

/* Registered tokens are all BH_SR_TOKEN_CHARS long. */
static bh_sr_conn_t **owner_slot(const bh_sr_shared_t *sh, const char *token, uint64_t hash) {
    bh_sr_conn_t **p = &sh->obuckets[hash & (sh->nobuckets - 1)];
    for (; *p; p = &(*p)->onext)
        if ((*p)->hash == hash && memcmp((*p)->token, token, BH_SR_TOKEN_CHARS) == 0)
            break;
    return p;
}

int bh_sr_owner_add(bh_sr_shared_t *sh, bh_sr_conn_t *c) {
    int r = BH_OK;
    if (strlen(c->token) != BH_SR_TOKEN_CHARS)
        return BH_EINVAL;
    pthread_mutex_lock(&sh->owner_mu);
    if (sh->nowners >= sh->nobuckets && owner_grow(sh) < 0 && !sh->nobuckets)
        r = BH_ENOMEM; /* a failed grow keeps the old table, with longer chains */
    else if (*owner_slot(sh, c->token, c->hash))
        r = BH_EEXIST;
    if (r == 0) {
        bh_sr_conn_t **slot = &sh->obuckets[c->hash & (sh->nobuckets - 1)];
        c->onext = *slot;
        *slot = c;
        sh->nowners++;
    }
    pthread_mutex_unlock(&sh->owner_mu);
    return r;
}

void bh_sr_owner_remove(bh_sr_shared_t *sh, bh_sr_conn_t *c) {
    pthread_mutex_lock(&sh->owner_mu); /* c is in (bh_sr_owner_add succeeded) */
    for (bh_sr_conn_t **p = &sh->obuckets[c->hash & (sh->nobuckets - 1)]; *p; p = &(*p)->onext) {
        if (*p == c) {
            *p = c->onext;
            sh->nowners--;
            break;
        }
    }
    c->onext = NULL;
    pthread_mutex_unlock(&sh->owner_mu);
}

bh_sr_server_t *bh_sr_owner_find(bh_sr_shared_t *sh, const char *token, size_t n,
                                 bh_httpd_t **httpd) {
    bh_sr_server_t *s = NULL;
    *httpd = NULL;
    if (n != BH_SR_TOKEN_CHARS)
        return NULL;
    uint64_t hash = bh_sr_shared_hash(sh, token, n);
    pthread_mutex_lock(&sh->owner_mu);
    bh_sr_conn_t *c = sh->nobuckets ? *owner_slot(sh, token, hash) : NULL;
    if (c) {
        s = c->srv;
        *httpd = s->httpd;
    }
    pthread_mutex_unlock(&sh->owner_mu);
    return s;
}

void bh_sr_owner_set_httpd(bh_sr_shared_t *sh, bh_sr_server_t *s, bh_httpd_t *h) {
    pthread_mutex_lock(&sh->owner_mu); /* read by other threads in bh_sr_owner_find */
    s->httpd = h;
    pthread_mutex_unlock(&sh->owner_mu);
}
