/* Durable storage behind a small function table (SQLite now, PostgreSQL later). The ledger is
 * the only writer of balances; the store knows rows, not rules. Every write is one transaction
 * that is durable (synchronous commit) when the call returns BH_OK. */
#ifndef BH_STORE_STORE_H
#define BH_STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../base/decimal.h"

#define BH_ID_MAX 64    /* user ids, key ids, op ids: at most 64 bytes */
#define BH_ASSET_MAX 16 /* asset symbols and currencies: at most 15 bytes */

typedef struct {
    char user_id[BH_ID_MAX + 1];
    char base_currency[BH_ASSET_MAX];
    bh_dec_t total_max_exposure;
    uint64_t sequence;
    bool deleted;
} bh_store_user_t;

typedef struct {
    char name[BH_ASSET_MAX];
    bh_dec_t available, allocated, max_exposure;
} bh_store_asset_t;

typedef struct {
    char currency[BH_ASSET_MAX]; /* the base currency the rate is quoted in */
    char asset[BH_ASSET_MAX];
    bh_dec_t rate; /* value of one unit of asset in currency */
} bh_store_rate_t;

typedef struct {
    char user_id[BH_ID_MAX + 1];
    uint64_t sequence;
    char op_id[BH_ID_MAX + 1];
    char op[24];        /* "create-user", "deposit", ... */
    const char *detail; /* JSON object text with the operation's arguments */
    int64_t time_ms;    /* Unix time in milliseconds */
} bh_store_journal_t;

typedef struct {
    char key_id[BH_ID_MAX + 1];
    char user_id[BH_ID_MAX + 1];
    uint8_t hash[32]; /* SHA-256 of the whole key */
    bool revoked;
} bh_store_key_t;

/* Callbacks for bh_store_load; any non-zero return stops loading and is returned. */
typedef struct {
    void *ud;
    int (*user)(void *ud, const bh_store_user_t *u, const bh_store_asset_t *assets, size_t n);
    int (*rate)(void *ud, const bh_store_rate_t *r);
    int (*key)(void *ud, const bh_store_key_t *k);
} bh_store_visitor_t;

typedef struct bh_store bh_store_t;

typedef struct {
    const char *name;
    void (*close)(bh_store_t *s);
    int (*load)(bh_store_t *s, const bh_store_visitor_t *v);
    int (*commit_user)(bh_store_t *s, const bh_store_user_t *u, const bh_store_asset_t *assets,
                       size_t n, const bh_store_journal_t *j);
    int (*find_op)(bh_store_t *s, const char *user_id, const char *op_id, uint64_t *sequence);
    int (*put_rate)(bh_store_t *s, const bh_store_rate_t *r);
    int (*put_key)(bh_store_t *s, const bh_store_key_t *k);
} bh_store_ops_t;

struct bh_store {
    const bh_store_ops_t *ops;
};

/* Open a store: "sqlite:PATH" or a plain path opens SQLite (WAL, synchronous=FULL), creating
 * the file and schema when absent. BH_EINVAL for an unknown scheme, BH_ESTORE when opening
 * fails (errmsg, when non-NULL, receives one line). */
int bh_store_open(const char *url, bh_store_t **out, char *errmsg, size_t errcap);

/* Thin wrappers over the function table. */
void bh_store_close(bh_store_t *s);
/* Visit every user (with all its assets, sorted by name), every rate and every key. */
int bh_store_load(bh_store_t *s, const bh_store_visitor_t *v);
/* Upsert the user row and the given asset rows and append the journal entry, atomically.
 * BH_EEXIST when (user_id, op_id) is already in the journal; nothing is written then. */
int bh_store_commit_user(bh_store_t *s, const bh_store_user_t *u, const bh_store_asset_t *assets,
                         size_t n, const bh_store_journal_t *j);
/* Sequence of the journal entry with that op id: BH_OK or BH_ENOTFOUND. */
int bh_store_find_op(bh_store_t *s, const char *user_id, const char *op_id, uint64_t *sequence);
int bh_store_put_rate(bh_store_t *s, const bh_store_rate_t *r);
/* Insert or update (revoked flag) a key row. */
int bh_store_put_key(bh_store_t *s, const bh_store_key_t *k);

#endif
