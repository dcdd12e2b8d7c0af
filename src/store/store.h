/* Durable storage behind a small function table (SQLite now, PostgreSQL later). The ledger is
 * the only writer of balances; the store knows rows, not rules. Every write is one transaction
 * that is durable (synchronous commit) when the call returns BH_OK. A store handle is used by
 * one thread at a time; open a second handle on the same URL for concurrent readers (WAL lets
 * them read while the writer commits). */
#ifndef BH_STORE_STORE_H
#define BH_STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../base/buf.h"
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
    const char *result; /* JSON text of the operation's answer: {"sequence":N,"data":{...}} */
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

/* One committed change: a user's row, the asset rows it changed and its journal entry; or a
 * set of rates (user NULL). */
typedef struct {
    const bh_store_user_t *user;
    const bh_store_asset_t *assets;
    size_t nassets;
    const bh_store_journal_t *journal; /* NULL when the change has none */
    const bh_store_rate_t *rates;
    size_t nrates;
} bh_store_change_t;

/* Callbacks for bh_store_visit_ops: count first (the number of journal entries about to be
 * visited, for sizing), then op once per journaled (user_id, op_id); strings are valid during
 * the call only. Any non-zero return stops the walk and is returned. */
typedef struct {
    void *ud;
    int (*count)(void *ud, uint64_t n);
    int (*op)(void *ud, const char *user_id, const char *op_id);
} bh_store_op_visitor_t;

/* Called for each journal entry read back (strings valid during the call only). */
typedef int (*bh_store_journal_fn)(void *ud, const bh_store_journal_t *j);

typedef struct bh_store bh_store_t;

typedef struct {
    const char *name;
    void (*close)(bh_store_t *s);
    int (*load)(bh_store_t *s, const bh_store_visitor_t *v);
    int (*commit_batch)(bh_store_t *s, const bh_store_change_t *changes, size_t n);
    int (*find_op)(bh_store_t *s, const char *user_id, const char *op_id, uint64_t *sequence,
                   bh_buf_t *result);
    int (*read_journal)(bh_store_t *s, const char *user_id, uint64_t since, size_t limit,
                        bh_store_journal_fn fn, void *ud);
    int (*load_user)(bh_store_t *s, const char *user_id, const bh_store_visitor_t *v);
    int (*put_key)(bh_store_t *s, const bh_store_key_t *k);
    int (*visit_ops)(bh_store_t *s, const bh_store_op_visitor_t *v);
    int (*probe)(bh_store_t *s); /* NULL: the backend cannot tell, assume reachable */
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
/* Apply every change in one transaction with one durable commit (group commit): upsert each
 * user row and its asset rows, append each journal entry, upsert each rate. All or nothing:
 * BH_EEXIST when a (user_id, op_id) is already journaled, BH_ESTORE on any other failure;
 * nothing is written then. */
int bh_store_commit_batch(bh_store_t *s, const bh_store_change_t *changes, size_t n);
/* Journal entry of an op id: BH_OK with *sequence and, when result is non-NULL, the stored
 * result JSON appended to it; BH_ENOTFOUND when absent. */
int bh_store_find_op(bh_store_t *s, const char *user_id, const char *op_id, uint64_t *sequence,
                     bh_buf_t *result);
/* Visit a user's journal entries with sequence > since, ascending, at most limit of them. */
int bh_store_read_journal(bh_store_t *s, const char *user_id, uint64_t since, size_t limit,
                          bh_store_journal_fn fn, void *ud);
/* Visit one user (as bh_store_load does): BH_ENOTFOUND when absent. */
int bh_store_load_user(bh_store_t *s, const char *user_id, const bh_store_visitor_t *v);
/* Insert or update (revoked flag) a key row. */
int bh_store_put_key(bh_store_t *s, const bh_store_key_t *k);
/* Visit every journaled (user_id, op_id) pair, in no particular order, from one consistent
 * snapshot (the ledger's op-id filter is built from it at open). */
int bh_store_visit_ops(bh_store_t *s, const bh_store_op_visitor_t *v);
/* Readiness: begin a write transaction and roll it back, waiting only briefly for a lock held
 * elsewhere. BH_OK when the store could be written now, BH_ESTORE otherwise. */
int bh_store_probe(bh_store_t *s);

#endif
