/* The hubs of all I/O threads as one: ledger changes, key revocations and user deletions reach
 * every hub through its thread's post function (each thread's queue is FIFO, so a hub sees a
 * user's changes in sequence order), and the per-key command-rate buckets are shared under a
 * mutex so that a key's rate holds across threads. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../base/error.h"
#include "../base/log.h"
#include "internal.h"

#define BH_HUB_RATE_MIN_BUCKETS 64

/* The command-rate token bucket of one API key id; exists while the key has connections on
 * any thread, and after its last one closed until it has refilled (so closing and reopening
 * connections never buys a fresh burst). Entries without connections are freed once full,
 * when their hash chain is next walked; there are at most as many as keys. */
struct bh_hub_rate {
    struct bh_hub_rate *next;
    uint64_t hash;
    size_t refs; /* connections of this key */
    double tokens;
    uint64_t last_ms; /* monotonic time of the last refill */
    char key_id[BH_SR_ID_MAX + 1];
};

typedef struct {
    bh_hub_t *hub;
    bh_hub_post_fn post;
    void *post_ud;
} member_t;

struct bh_hub_group {
    bh_ledger_t *ledger;
    const bh_keyring_t *keyring;
    pthread_mutex_t mu; /* members; held while posting, so a removed hub gets nothing more */
    member_t *members;
    size_t nmembers, cap;
    pthread_mutex_t rate_mu; /* the buckets and every bucket's fields */
    bh_hub_rate_t **rbuckets;
    size_t nrbuckets, nrates;
    double rate_per_ms, rate_burst;
};

enum { CALL_CHANGE, CALL_CLOSE_KEY, CALL_CLOSE_USER };

/* One posted call: what one hub's thread is to do. */
typedef struct {
    bh_hub_t *hub;
    int kind;
    bh_snapshot_t *snap;            /* CALL_CHANGE: a reference of its own */
    uint64_t published;             /* CALL_CHANGE: the ledger's count with this change */
    int any_user;                   /* CALL_CLOSE_KEY: user_id not given */
    char user_id[BH_SR_ID_MAX + 1]; /* CALL_CLOSE_KEY, CALL_CLOSE_USER */
    char key_id[BH_SR_ID_MAX + 1];  /* CALL_CLOSE_KEY */
} call_t;

/* ---- lifetime and members ---- */

int bh_hub_group_new(bh_ledger_t *ledger, const bh_keyring_t *keyring, double rate_per_sec,
                     double rate_burst, bh_hub_group_t **out) {
    bh_hub_group_t *g = calloc(1, sizeof *g);
    if (!g)
        return BH_ENOMEM;
    g->ledger = ledger;
    g->keyring = keyring;
    g->rate_per_ms = (rate_per_sec > 0 ? rate_per_sec : 50) / 1000.0;
    g->rate_burst = rate_burst > 0 ? rate_burst : 100;
    pthread_mutex_init(&g->mu, NULL);
    pthread_mutex_init(&g->rate_mu, NULL);
    *out = g;
    return BH_OK;
}

void bh_hub_group_free(bh_hub_group_t *g) {
    if (!g)
        return;
    for (size_t i = 0; i < g->nrbuckets; i++)
        for (bh_hub_rate_t *r = g->rbuckets[i], *next; r; r = next) {
            next = r->next;
            free(r);
        }
    free(g->rbuckets);
    free(g->members);
    pthread_mutex_destroy(&g->mu);
    pthread_mutex_destroy(&g->rate_mu);
    free(g);
}

int bh_hub_group_add(bh_hub_group_t *g, bh_hub_t *hub, bh_hub_post_fn post, void *post_ud) {
    bh_ledger_t *ledger;
    const bh_keyring_t *keyring;
    bh_hub_sources(hub, &ledger, &keyring);
    if (!post || ledger != g->ledger || keyring != g->keyring || bh_hub_group_of(hub))
        return BH_EINVAL; /* one group's hubs serve the same users */
    int r = BH_OK;
    pthread_mutex_lock(&g->mu);
    if (g->nmembers == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 8;
        member_t *m = realloc(g->members, cap * sizeof *m);
        if (m) {
            g->members = m;
            g->cap = cap;
        } else {
            r = BH_ENOMEM;
        }
    }
    if (r == 0) {
        g->members[g->nmembers++] = (member_t){hub, post, post_ud};
        bh_hub_set_group(hub, g);
        /* Changes published before now are in the ledger; later ones are posted to it. */
        bh_hub_set_seen(hub, bh_ledger_published(g->ledger));
    }
    pthread_mutex_unlock(&g->mu);
    return r;
}

void bh_hub_group_remove(bh_hub_group_t *g, bh_hub_t *hub) {
    pthread_mutex_lock(&g->mu);
    for (size_t i = 0; i < g->nmembers; i++) {
        if (g->members[i].hub == hub) {
            memmove(&g->members[i], &g->members[i + 1], (g->nmembers - i - 1) * sizeof *g->members);
            g->nmembers--;
            break;
        }
    }
    pthread_mutex_unlock(&g->mu);
}

/* ---- calls on each hub's thread ---- */

static void call_free(call_t *c) {
    bh_snapshot_release(c->snap);
    free(c);
}

static void run_call(void *arg) {
    call_t *c = arg;
    switch (c->kind) {
    case CALL_CHANGE:
        bh_hub_on_change(c->hub, c->snap);
        bh_hub_set_seen(c->hub, c->published);
        break;
    case CALL_CLOSE_KEY:
        bh_hub_close_key(c->hub, c->any_user ? NULL : c->user_id, c->key_id);
        break;
    default:
        bh_hub_close_user(c->hub, c->user_id);
        break;
    }
    call_free(c);
}

/* Post a copy of tmpl to every member; a snapshot is acquired once per member. */
static void post_all(bh_hub_group_t *g, const call_t *tmpl) {
    pthread_mutex_lock(&g->mu);
    for (size_t i = 0; i < g->nmembers; i++) {
        const member_t *m = &g->members[i];
        call_t *c = malloc(sizeof *c);
        if (!c) {
            bh_log_msg(BH_LOG_ERROR, "out of memory: a hub misses a change or a close");
            continue;
        }
        *c = *tmpl;
        c->hub = m->hub;
        c->snap = bh_snapshot_acquire(tmpl->snap);
        int r = m->post(m->post_ud, run_call, c);
        if (r < 0) { /* the thread is closing (BH_ECLOSED) or out of memory */
            if (r != BH_ECLOSED)
                bh_log(BH_LOG_ERROR, "cannot post to a hub's thread",
                       BH_LS("error", bh_strerror(r)));
            call_free(c);
        }
    }
    pthread_mutex_unlock(&g->mu);
}

void bh_hub_group_on_change(void *group, const bh_snapshot_t *snap) {
    bh_hub_group_t *g = group;
    /* On the ledger's thread, right after this change was counted. */
    call_t t = {.kind = CALL_CHANGE,
                .snap = (bh_snapshot_t *)snap,
                .published = bh_ledger_published(g->ledger)};
    post_all(group, &t);
}

/* Copy an id; 0 when it is too long for any connection to have it. */
static int copy_id(char *out, size_t cap, const char *id) {
    size_t n = strlen(id);
    if (n >= cap)
        return 0;
    memcpy(out, id, n + 1);
    return 1;
}

void bh_hub_group_close_key(bh_hub_group_t *g, const char *user_id, const char *key_id) {
    call_t t = {.kind = CALL_CLOSE_KEY, .any_user = user_id == NULL};
    if ((user_id && !copy_id(t.user_id, sizeof t.user_id, user_id)) ||
        !copy_id(t.key_id, sizeof t.key_id, key_id))
        return;
    post_all(g, &t);
}

void bh_hub_group_close_user(bh_hub_group_t *g, const char *user_id) {
    call_t t = {.kind = CALL_CLOSE_USER};
    if (copy_id(t.user_id, sizeof t.user_id, user_id))
        post_all(g, &t);
}

/* ---- per-key command rate ---- */

static uint64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t hash_key(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

static int rate_grow(bh_hub_group_t *g) {
    size_t n = g->nrbuckets ? g->nrbuckets * 2 : BH_HUB_RATE_MIN_BUCKETS;
    bh_hub_rate_t **b = calloc(n, sizeof *b);
    if (!b)
        return BH_ENOMEM;
    for (size_t i = 0; i < g->nrbuckets; i++) {
        for (bh_hub_rate_t *r = g->rbuckets[i], *next; r; r = next) {
            next = r->next;
            r->next = b[r->hash & (n - 1)];
            b[r->hash & (n - 1)] = r;
        }
    }
    free(g->rbuckets);
    g->rbuckets = b;
    g->nrbuckets = n;
    return BH_OK;
}

static void refill(const bh_hub_group_t *g, bh_hub_rate_t *r, uint64_t now) {
    if (now > r->last_ms) {
        r->tokens += (double)(now - r->last_ms) * g->rate_per_ms;
        if (r->tokens > g->rate_burst)
            r->tokens = g->rate_burst;
        r->last_ms = now;
    }
}

/* Free the entries of a chain that have no connections and a full bucket again. */
static void sweep_chain(bh_hub_group_t *g, bh_hub_rate_t **p, uint64_t now) {
    while (*p) {
        bh_hub_rate_t *r = *p;
        if (r->refs == 0) {
            refill(g, r, now);
            if (r->tokens >= g->rate_burst) {
                *p = r->next;
                g->nrates--;
                free(r);
                continue;
            }
        }
        p = &r->next;
    }
}

static bh_hub_rate_t *rate_ref_locked(bh_hub_group_t *g, const char *key_id) {
    if (g->nrates >= g->nrbuckets && rate_grow(g) < 0 && !g->nrbuckets)
        return NULL; /* a failed grow keeps the old table, with longer chains */
    uint64_t hash = hash_key(key_id);
    bh_hub_rate_t **slot = &g->rbuckets[hash & (g->nrbuckets - 1)];
    sweep_chain(g, slot, mono_ms());
    for (bh_hub_rate_t *r = *slot; r; r = r->next) {
        if (r->hash == hash && strcmp(r->key_id, key_id) == 0) {
            r->refs++;
            return r;
        }
    }
    size_t len = strlen(key_id);
    bh_hub_rate_t *r = len < sizeof r->key_id ? calloc(1, sizeof *r) : NULL;
    if (!r)
        return NULL;
    memcpy(r->key_id, key_id, len + 1);
    r->hash = hash;
    r->refs = 1;
    r->tokens = g->rate_burst;
    r->last_ms = mono_ms();
    r->next = *slot;
    *slot = r;
    g->nrates++;
    return r;
}

bh_hub_rate_t *bh_hub_rate_ref(bh_hub_group_t *g, const char *key_id) {
    pthread_mutex_lock(&g->rate_mu);
    bh_hub_rate_t *r = rate_ref_locked(g, key_id);
    pthread_mutex_unlock(&g->rate_mu);
    return r;
}

void bh_hub_rate_unref(bh_hub_group_t *g, bh_hub_rate_t *r) {
    if (!r)
        return;
    pthread_mutex_lock(&g->rate_mu);
    if (--r->refs == 0) /* kept until refilled: freed now if it already is */
        sweep_chain(g, &g->rbuckets[r->hash & (g->nrbuckets - 1)], mono_ms());
    pthread_mutex_unlock(&g->rate_mu);
}

int bh_hub_rate_take(bh_hub_group_t *g, bh_hub_rate_t *r) {
    uint64_t now = mono_ms();
    pthread_mutex_lock(&g->rate_mu);
    refill(g, r, now);
    int ok = r->tokens >= 1.0;
    if (ok)
        r->tokens -= 1.0;
    pthread_mutex_unlock(&g->rate_mu);
    return ok;
}
