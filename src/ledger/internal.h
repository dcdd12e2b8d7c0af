/* Ledger internals shared by ledger.c (state, rules, submit) and commit.c (the group-commit
 * pipeline). Not a public header. */
#ifndef BH_LEDGER_INTERNAL_H
#define BH_LEDGER_INTERNAL_H

#include <pthread.h>

#include "ledger.h"
#include "opfilter.h"

#define BH_OPKEY_MAX (2 * BH_ID_MAX + 2)
#define BH_REASON_MAX 192

/* Open-addressing string map of items whose first member is their NUL-terminated key. */
typedef struct {
    void **slots;
    size_t cap; /* power of two, or 0 */
    size_t n;
} bh_map_t;

void *bh_map_get(const bh_map_t *m, const char *key);
int bh_map_put(bh_map_t *m, void *item); /* key must be absent */
void bh_map_remove(bh_map_t *m, const char *key);
void bh_map_free(bh_map_t *m);

typedef struct {
    char user_id[BH_ID_MAX + 1]; /* first member: the map key */
    bool exists;                 /* false until created (or after a failed create) */
    char base_currency[BH_ASSET_MAX];
    bh_dec_t total_max_exposure;
    uint64_t sequence; /* working state: includes changes not yet durable */
    bool deleted;
    size_t nassets;
    bh_store_asset_t *assets; /* sorted by name */
    bh_snapshot_t *snap;      /* latest durable, published; swapped under bh_ledger.mu */
} bh_user_t;

typedef struct bh_waiter {
    struct bh_waiter *next;
    bh_op_cb cb;
    void *ud;
} bh_waiter_t;

/* One submitted operation on its way: applied to the working state, waiting to be durable;
 * or a result ready to deliver (rejection, repeat). */
typedef struct bh_change {
    char opkey[BH_OPKEY_MAX]; /* first member: "user\x1fop" in the pending-op map */
    size_t opkey_len;
    struct bh_change *next;
    bh_user_t *user;          /* NULL for rates and for ready results */
    bh_store_user_t row;      /* the user row after the change */
    bh_store_asset_t *assets; /* the asset rows it changed */
    size_t nassets;
    bh_store_journal_t journal;
    char *detail, *result; /* owned JSON texts */
    size_t result_len;
    bh_snapshot_t *snap; /* to publish once durable */
    bh_store_rate_t *rates;
    size_t nrates;
    bh_op_cb cb;
    void *ud;
    bh_waiter_t *waiters; /* the same op id submitted again while this one was pending */
    int status;
    bool repeated, in_map;
    char reason[BH_REASON_MAX];
} bh_change_t;

typedef struct {
    bh_change_t *head, *tail;
} bh_queue_t;

struct bh_ledger {
    uv_loop_t *loop;
    bh_store_t *writer, *reader;
    bh_map_t users; /* bh_user_t *; structure and ->snap guarded by mu for reader threads */
    _Atomic uint64_t published; /* changes published so far (bh_ledger_published) */
    bh_map_t rates;             /* "CUR/ASSET" -> rate; loop thread only */
    bh_map_t ops;               /* opkey -> pending bh_change_t */
    bh_opfilter_t journaled;    /* opkeys of every durable change: "no" skips the store lookup */
    pthread_mutex_t mu;
    bh_ledger_listener_t listener;
    void *listener_ud;

    /* pipeline: pending accumulates on the loop thread while one batch commits */
    bh_queue_t pending, ready;
    pthread_mutex_t qmu;
    pthread_cond_t qcond;
    bh_queue_t work, done; /* handed to / back from the commit thread (under qmu) */
    int busy;              /* a batch is with the commit thread (loop thread's view) */
    int stopping;
    int work_status;     /* status of the last batch, under qmu */
    atomic_int store_ok; /* bh_ledger_ready; written by the commit thread */
    pthread_t thread;
    int thread_started;
    uv_async_t async;
    uv_idle_t idle;
    int closing;
};

void bh_queue_push(bh_queue_t *q, bh_change_t *c);
void bh_change_free(bh_change_t *c);

/* Pipeline (commit.c). */
int bh_commit_start(bh_ledger_t *l);
/* Queue c for the next batch (loop thread). */
void bh_commit_enqueue(bh_ledger_t *l, bh_change_t *c);
/* Deliver c's result on a later loop turn (loop thread). */
void bh_commit_ready(bh_ledger_t *l, bh_change_t *c);
/* Drain everything, stop the thread, close the handles; frees l when they are closed. */
void bh_commit_stop(bh_ledger_t *l);

/* State (ledger.c): install a durable change's snapshot; undo working state after a failure. */
void bh_ledger_publish(bh_ledger_t *l, bh_change_t *c);
void bh_ledger_reload_user(bh_ledger_t *l, bh_user_t *u);
void bh_ledger_apply_rates(bh_ledger_t *l, const bh_store_rate_t *rates, size_t n);
void bh_ledger_free(bh_ledger_t *l);

#endif
