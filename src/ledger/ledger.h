/* The ledger: users, assets, rates, exposure and per-user sequence numbers. One writer owns the
 * state; every committed change is made durable in the store first, then published as a new
 * immutable, reference-counted snapshot whose serialized JSON `data` is cached, so readers
 * (GetBalances, update fan-out) copy bytes instead of formatting. No SQL here. */
#ifndef BH_LEDGER_LEDGER_H
#define BH_LEDGER_LEDGER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../base/decimal.h"
#include "../store/store.h"

#include <uv.h>

typedef struct {
    char name[BH_ASSET_MAX];
    bh_dec_t available, allocated, current_exposure, max_exposure;
} bh_asset_t;

/* Immutable once published. */
typedef struct {
    atomic_int refs;
    char user_id[BH_ID_MAX + 1];
    uint64_t sequence;
    char base_currency[BH_ASSET_MAX];
    bh_dec_t total_current_exposure, total_max_exposure;
    bool deleted;
    size_t nassets;
    bh_asset_t *assets; /* sorted by name */
    char *json;         /* the `data` object as JSON, exact decimals, seed field order */
    size_t json_len;
    /* The same object as one MessagePack map (same order; numbers by base/mpnum.h), in json's
     * allocation; NULL in a snapshot made by hand, whose readers transcode json instead. */
    const char *mp;
    size_t mp_len;
} bh_snapshot_t;

#define BH_OP_MAX_LEGS 32

typedef enum {
    BH_OP_CREATE_USER, /* base_currency, total_max_exposure (has_total) */
    BH_OP_DEPOSIT,     /* legs[0]: available += amount (> 0) */
    BH_OP_WITHDRAW,    /* legs[0]: available -= amount (> 0); credit only within limits */
    BH_OP_ALLOCATE,    /* legs[0]: available -> allocated (> 0, <= available) */
    BH_OP_RELEASE,     /* legs[0]: allocated -> available (> 0, <= allocated) */
    BH_OP_TRADE,       /* legs: signed non-zero amounts on distinct assets, applied together */
    BH_OP_SET_LIMITS,  /* legs: per-asset maxExposure (>= 0); total_max_exposure if has_total */
    BH_OP_DELETE_USER, /* marks the user deleted; later ops on it are BH_ENOTFOUND */
} bh_op_kind_t;

typedef struct {
    char asset[BH_ASSET_MAX];
    bh_dec_t amount;
} bh_leg_t;

typedef struct {
    bh_op_kind_t kind;
    char user_id[BH_ID_MAX + 1];
    char op_id[BH_ID_MAX + 1]; /* caller-chosen; a repeat answers the first result */
    size_t nlegs;
    bh_leg_t legs[BH_OP_MAX_LEGS];
    char base_currency[BH_ASSET_MAX];
    bool has_total;
    bh_dec_t total_max_exposure;
} bh_op_t;

typedef struct {
    /* BH_OK; BH_EINVAL bad arguments; BH_ENOTFOUND unknown or deleted user; BH_EEXIST user
     * already exists (create-user with a new op id); BH_EFUNDS; BH_ELIMIT; BH_ESTORE. */
    int status;
    const char *reason; /* one line for a failure; valid during the callback */
    bool repeated;      /* the op id was applied before: result is the first application's */
    uint64_t sequence;  /* the user's sequence after the op */
    const char *result; /* on success: {"sequence":N,"data":{...}}; valid during the callback */
    size_t result_len;
    const bh_snapshot_t *snap; /* on a fresh success: the published snapshot (borrowed) */
} bh_op_result_t;

/* Completion of a submitted operation; always called on the loop thread, never from inside
 * the submitting call. */
typedef void (*bh_op_cb)(void *ud, const bh_op_result_t *res);

typedef struct bh_ledger bh_ledger_t;

/* Called after every durable change of a user, in sequence order, with the new snapshot
 * (borrowed: acquire to keep), before the operation's own callback. */
typedef void (*bh_ledger_listener_t)(void *ud, const bh_snapshot_t *snap);

/* Load every user and rate through reader and start the commit thread, which owns writer.
 * Both handles stay owned by the caller and must be open on the same database. */
int bh_ledger_open(uv_loop_t *loop, bh_store_t *writer, bh_store_t *reader, bh_ledger_t **out);
/* Commit what is pending, deliver the last callbacks, stop the commit thread, free. */
void bh_ledger_close(bh_ledger_t *l);
void bh_ledger_set_listener(bh_ledger_t *l, bh_ledger_listener_t fn, void *ud);
/* 1 while the store is reachable, 0 otherwise: the result of the last group commit or of the
 * commit thread's probe of the store (a write transaction begun and rolled back, about every
 * 500 ms while no batch is waiting, and right after a failed commit). Safe from any thread. */
int bh_ledger_ready(const bh_ledger_t *l);

/* Latest durable snapshot of a user with a reference taken, or NULL when unknown. Safe from
 * any thread. */
bh_snapshot_t *bh_ledger_snapshot(bh_ledger_t *l, const char *user_id);
/* How many changes have been published so far (any thread): each publication counts before the
 * listener runs for it. A reader that keeps its own copies of snapshots from the listener and
 * has seen this many changes holds the latest ones; otherwise it asks bh_ledger_snapshot. */
uint64_t bh_ledger_published(const bh_ledger_t *l);
bh_snapshot_t *bh_snapshot_acquire(const bh_snapshot_t *s);
void bh_snapshot_release(bh_snapshot_t *s);

/* Validate and apply op to the working state at once (so later ops see it), then make it
 * durable with the next group commit; cb runs after the commit with the result. Rejections,
 * repeats and store failures also arrive through cb. Returns BH_OK, or BH_ENOMEM (cb not
 * called). Loop thread only. */
int bh_ledger_submit(bh_ledger_t *l, const bh_op_t *op, bh_op_cb cb, void *ud);
/* Set rates of assets in currency (each rate > 0), durably, then cb (status, reason only).
 * Rates do not change sequences: exposures use them from each user's next change on. */
int bh_ledger_set_rates(bh_ledger_t *l, const char *currency, const bh_store_rate_t *rates,
                        size_t n, bh_op_cb cb, void *ud);

/* Exposure of one asset: rate * max(0, -(available + allocated)); rate of the base currency
 * itself is 1. BH_ENOTFOUND when a rate is needed and missing. Exposed for unit tests. */
int bh_ledger_exposure(const bh_ledger_t *l, const char *base_currency, const bh_asset_t *a,
                       bh_dec_t *out);

/* The identifier rules, for callers that validate input before building an op: user ids are
 * 1..64 of A-Z a-z 0-9 . _ : @ -; op ids 1..64 printable ASCII; assets and currencies 1..15 of
 * A-Z 0-9. */
bool bh_ledger_valid_user_id(const char *s, size_t n);
bool bh_ledger_valid_op_id(const char *s, size_t n);
bool bh_ledger_valid_asset(const char *s, size_t n);

/* Name of an op kind as it appears in the journal and the admin API ("deposit", ...). */
const char *bh_op_name(bh_op_kind_t kind);

#endif
