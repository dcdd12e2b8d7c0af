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
} bh_snapshot_t;

typedef enum {
    BH_OP_DEPOSIT,   /* available += amount (amount > 0) */
    BH_OP_WITHDRAW,  /* available -= amount (amount > 0), limits apply */
    BH_OP_ALLOCATE,  /* available -> allocated (amount > 0), limits apply */
    BH_OP_RELEASE,   /* allocated -> available (amount > 0, <= allocated) */
    BH_OP_SET_LIMIT, /* asset maxExposure = amount (>= 0) */
} bh_op_kind_t;

typedef struct {
    bh_op_kind_t kind;
    char op_id[BH_ID_MAX + 1]; /* caller-chosen; a repeat applies nothing (BH_EEXIST) */
    char asset[BH_ASSET_MAX];
    bh_dec_t amount;
} bh_op_t;

typedef struct bh_ledger bh_ledger_t;

/* Called after every committed change, with the new snapshot (borrowed: acquire to keep). */
typedef void (*bh_ledger_listener_t)(void *ud, const bh_snapshot_t *snap);

/* Load every user and rate from the store (the store stays owned by the caller). */
int bh_ledger_open(bh_store_t *store, bh_ledger_t **out);
void bh_ledger_close(bh_ledger_t *l);
void bh_ledger_set_listener(bh_ledger_t *l, bh_ledger_listener_t fn, void *ud);

/* Latest snapshot of a user with a reference taken, or NULL when unknown. */
bh_snapshot_t *bh_ledger_snapshot(bh_ledger_t *l, const char *user_id);
bh_snapshot_t *bh_snapshot_acquire(const bh_snapshot_t *s);
void bh_snapshot_release(bh_snapshot_t *s);

/* Create a user (sequence 1). BH_EEXIST when it exists, BH_EINVAL for a bad id/currency. */
int bh_ledger_create_user(bh_ledger_t *l, const char *user_id, const char *base_currency,
                          bh_dec_t total_max_exposure);
/* Apply one operation atomically and durably. BH_ENOTFOUND unknown user, BH_EINVAL bad
 * arguments, BH_EFUNDS not enough available/allocated, BH_ELIMIT exposure limit, BH_EEXIST
 * repeated op_id (*sequence gets the first application's sequence), BH_ESTORE. On success
 * *sequence (when non-NULL) is the user's new sequence. */
int bh_ledger_apply(bh_ledger_t *l, const char *user_id, const bh_op_t *op, uint64_t *sequence);
/* Set the rate of asset in currency (rate > 0); durable; exposures are recomputed lazily on the
 * next change of each user. */
int bh_ledger_set_rate(bh_ledger_t *l, const char *currency, const char *asset, bh_dec_t rate);

/* Exposure of one asset: rate * max(0, -(available + allocated)); rate of the base currency
 * itself is 1. BH_ENOTFOUND when a rate is needed and missing. Exposed for unit tests. */
int bh_ledger_exposure(const bh_ledger_t *l, const char *base_currency, const bh_asset_t *a,
                       bh_dec_t *out);

#endif
