/* SQLite backend of the store: prepared statements, decimals as exact text (never REAL), a
 * per-handle mutex; a second handle on the same file works concurrently thanks to WAL.
 * Durability: COMMIT appends the transaction's pages and a commit frame to the -wal file and,
 * with synchronous=FULL, fsyncs it before returning, so BH_OK survives a crash or power loss
 * (recovery replays committed frames and drops a torn tail; a checkpoint fsyncs the database
 * before the WAL is reused). One transaction per commit_batch: one fsync per batch. */
#include "sqlite.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../base/error.h"
#include "../base/log.h"
#include "../base/metrics.h"
#include "walvfs.h"

/* Version 2 added journal.result. Nothing older is deployed, so there is no migration: any
 * other recorded version is refused. */
#define SCHEMA_VERSION 2
#define STR_(x) #x
#define STR(x) STR_(x)
#define BUSY_TIMEOUT_MS 5000
/* Readiness probe: a lock held longer than this by another process means "unavailable". */
#define PROBE_BUSY_TIMEOUT_MS 100
#define PAGE_SIZE 2048
#define WAL_CHECKPOINT_BYTES (40 << 20)

enum {
    ST_BEGIN,
    ST_BEGIN_READ,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_USER_UPSERT,
    ST_USER_UPDATE,
    ST_ASSET_UPSERT,
    ST_ASSET_UPDATE,
    ST_JOURNAL_INSERT,
    ST_RATE_UPSERT,
    ST_KEY_UPSERT,
    ST_FIND_OP,
    ST_JOURNAL_SINCE,
    ST_USER_ONE,
    ST_USERS_ALL,
    ST_ASSETS_OF,
    ST_RATES_ALL,
    ST_KEYS_ALL,
    ST_OPS_COUNT,
    ST_OPS_ALL,
    ST_COUNT
};

#define USER_COLS "user_id, base_currency, total_max_exposure, sequence, deleted"

static const char *const stmt_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_BEGIN_READ] = "BEGIN",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_USER_UPSERT] = "INSERT INTO users(" USER_COLS ") VALUES(?1, ?2, ?3, ?4, ?5) "
                       "ON CONFLICT(user_id) DO UPDATE SET "
                       "base_currency = excluded.base_currency, total_max_exposure = "
                       "excluded.total_max_exposure, sequence = excluded.sequence, deleted = "
                       "excluded.deleted",
    /* Most changes update rows that exist: an UPDATE is one b-tree search where the upsert
     * is two (the failed insert, then the update); the upsert runs only when nothing matched. */
    [ST_USER_UPDATE] = "UPDATE users SET base_currency = ?2, total_max_exposure = ?3, "
                       "sequence = ?4, deleted = ?5 WHERE user_id = ?1",
    [ST_ASSET_UPDATE] = "UPDATE assets SET available = ?3, allocated = ?4, max_exposure = ?5 "
                        "WHERE user_id = ?1 AND name = ?2",
    [ST_ASSET_UPSERT] = "INSERT INTO assets(user_id, name, available, allocated, max_exposure) "
                        "VALUES(?1, ?2, ?3, ?4, ?5) ON CONFLICT(user_id, name) DO UPDATE SET "
                        "available = excluded.available, allocated = excluded.allocated, "
                        "max_exposure = excluded.max_exposure",
    [ST_JOURNAL_INSERT] = "INSERT INTO journal(user_id, sequence, op_id, op, detail, result, "
                          "time_ms) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    [ST_RATE_UPSERT] = "INSERT INTO rates(currency, asset, rate) VALUES(?1, ?2, ?3) "
                       "ON CONFLICT(currency, asset) DO UPDATE SET rate = excluded.rate",
    [ST_KEY_UPSERT] = "INSERT INTO keys(key_id, user_id, hash, revoked, created_ms) "
                      "VALUES(?1, ?2, ?3, ?4, ?5) "
                      "ON CONFLICT(key_id) DO UPDATE SET revoked = excluded.revoked",
    [ST_FIND_OP] = "SELECT sequence, result FROM journal WHERE user_id = ?1 AND op_id = ?2",
    [ST_JOURNAL_SINCE] = "SELECT sequence, op_id, op, detail, result, time_ms FROM journal "
                         "WHERE user_id = ?1 AND sequence > ?2 ORDER BY sequence LIMIT ?3",
    [ST_USER_ONE] = "SELECT " USER_COLS " FROM users WHERE user_id = ?1",
    [ST_USERS_ALL] = "SELECT " USER_COLS " FROM users ORDER BY user_id",
    [ST_ASSETS_OF] = "SELECT name, available, allocated, max_exposure FROM assets "
                     "WHERE user_id = ?1 ORDER BY name",
    [ST_RATES_ALL] = "SELECT currency, asset, rate FROM rates ORDER BY currency, asset",
    [ST_KEYS_ALL] = "SELECT key_id, user_id, hash, revoked FROM keys ORDER BY key_id",
    /* Both are answered from the UNIQUE(user_id, op_id) index alone (covering). */
    [ST_OPS_COUNT] = "SELECT count(*) FROM journal",
    [ST_OPS_ALL] = "SELECT user_id, op_id FROM journal",
};

/* Small keyed rows are WITHOUT ROWID (one b-tree per upsert instead of table + index); the
 * journal keeps a rowid because its rows carry the result JSON, which can be large. */
static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS schema_version(version INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS users("
    " user_id TEXT PRIMARY KEY NOT NULL,"
    " base_currency TEXT NOT NULL,"
    " total_max_exposure TEXT NOT NULL,"
    " sequence INTEGER NOT NULL,"
    " deleted INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS assets("
    " user_id TEXT NOT NULL REFERENCES users(user_id),"
    " name TEXT NOT NULL,"
    " available TEXT NOT NULL,"
    " allocated TEXT NOT NULL,"
    " max_exposure TEXT NOT NULL,"
    " PRIMARY KEY(user_id, name)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS rates("
    " currency TEXT NOT NULL,"
    " asset TEXT NOT NULL,"
    " rate TEXT NOT NULL,"
    " PRIMARY KEY(currency, asset)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS keys("
    " key_id TEXT PRIMARY KEY NOT NULL,"
    " user_id TEXT NOT NULL,"
    " hash BLOB NOT NULL,"
    " revoked INTEGER NOT NULL DEFAULT 0,"
    " created_ms INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS journal("
    " user_id TEXT NOT NULL REFERENCES users(user_id),"
    " sequence INTEGER NOT NULL,"
    " op_id TEXT NOT NULL,"
    " op TEXT NOT NULL,"
    " detail TEXT,"
    " result TEXT,"
    " time_ms INTEGER NOT NULL,"
    " PRIMARY KEY(user_id, sequence),"
    " UNIQUE(user_id, op_id));";

typedef struct {
    bh_store_t base; /* first: the store handle the callers see */
    sqlite3 *db;
    pthread_mutex_t mu;
    sqlite3_stmt *st[ST_COUNT];
} sq_t;

static const bh_store_ops_t sq_ops;

/* Write transactions of all handles in this process queue here, before SQLite's own write
 * lock. SQLite's busy handler polls with sleeps of up to 100 ms, so a key write on the reader
 * handle could starve behind a commit thread that is almost always in a transaction (or the
 * other way round); a mutex wakes the waiter as soon as the lock is free. The busy timeout
 * still covers other processes. Lock order: the handle's mu, then write_mu. */
static pthread_mutex_t write_mu = PTHREAD_MUTEX_INITIALIZER;

__attribute__((format(printf, 3, 4))) static void set_err(char *errmsg, size_t errcap,
                                                          const char *fmt, ...) {
    va_list ap;
    if (errmsg == NULL || errcap == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(errmsg, errcap, fmt, ap);
    va_end(ap);
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reset and drop the bindings, so no statement keeps a pointer to a caller's (or a stack)
 * buffer bound with SQLITE_STATIC. */
static void st_done(sqlite3_stmt *st) {
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* Run a statement expected to return no row; SQLite's result code is returned. */
static int st_exec(sqlite3_stmt *st) {
    int rc = sqlite3_step(st);
    st_done(st);
    return rc;
}

/* Text is bound SQLITE_STATIC (no copy): every buffer bound outlives the step that uses it. */
static int bind_text(sqlite3_stmt *st, int i, const char *s) {
    return sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
}

static int bind_dec(sqlite3_stmt *st, int i, bh_dec_t d, char buf[BH_DEC_STRLEN]) {
    size_t n = bh_dec_format(d, buf);
    return sqlite3_bind_text(st, i, buf, (int)n, SQLITE_STATIC);
}

/* Copy a non-empty text column into dst (cap bytes with NUL); anything else is corruption. */
static int col_str(sqlite3_stmt *st, int i, char *dst, size_t cap) {
    const unsigned char *p = sqlite3_column_text(st, i);
    int n = sqlite3_column_bytes(st, i);
    if (p == NULL || n <= 0 || (size_t)n >= cap || memchr(p, '\0', (size_t)n) != NULL)
        return BH_ESTORE;
    memcpy(dst, p, (size_t)n);
    dst[n] = '\0';
    return BH_OK;
}

static int col_dec(sqlite3_stmt *st, int i, bh_dec_t *out) {
    const unsigned char *p = sqlite3_column_text(st, i);
    int n = sqlite3_column_bytes(st, i);
    if (p == NULL || n <= 0 || bh_dec_parse((const char *)p, (size_t)n, out) != BH_OK)
        return BH_ESTORE;
    return BH_OK;
}

static int col_u64(sqlite3_stmt *st, int i, uint64_t *out) {
    sqlite3_int64 v;
    if (sqlite3_column_type(st, i) != SQLITE_INTEGER)
        return BH_ESTORE;
    v = sqlite3_column_int64(st, i);
    if (v < 0)
        return BH_ESTORE;
    *out = (uint64_t)v;
    return BH_OK;
}

static void log_fail(sq_t *s, const char *what) {
    bh_metric_add(BH_M_STORE_ERRORS, 1);
    bh_log(BH_LOG_ERROR, "store: statement failed", BH_LS("op", what),
           BH_LS("error", sqlite3_errmsg(s->db)));
}

/* A row that does not hold what this code wrote: refuse to load rather than guess. */
static int corrupt(const char *table) {
    bh_metric_add(BH_M_STORE_ERRORS, 1);
    bh_log(BH_LOG_ERROR, "store: malformed row", BH_LS("table", table));
    return BH_ESTORE;
}

static void sq_close(bh_store_t *base) {
    sq_t *s = (sq_t *)base;
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(s->st[i]);
    sqlite3_close(s->db);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* Create the tables when absent and check the recorded schema version, in one transaction. */
static int sq_schema(sqlite3 *db, char *errmsg, size_t errcap) {
    sqlite3_stmt *st = NULL;
    char *err = NULL;
    int rc, version = 0;

    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, &err) != SQLITE_OK)
        goto fail;
    if (sqlite3_exec(db, schema_sql, NULL, NULL, &err) != SQLITE_OK)
        goto fail;
    if (sqlite3_prepare_v2(db, "SELECT max(version) FROM schema_version", -1, &st, NULL) !=
        SQLITE_OK)
        goto fail;
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
        goto fail;
    if (sqlite3_column_type(st, 0) == SQLITE_INTEGER)
        version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    st = NULL;
    if (version != 0 && version != SCHEMA_VERSION) {
        set_err(errmsg, errcap, "database schema version %d is %s than supported (%d)", version,
                version > SCHEMA_VERSION ? "newer" : "older", SCHEMA_VERSION);
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return BH_ESTORE;
    }
    if (version == 0 &&
        sqlite3_exec(db, "INSERT INTO schema_version(version) VALUES(" STR(SCHEMA_VERSION) ")",
                     NULL, NULL, &err) != SQLITE_OK)
        goto fail;
    if (sqlite3_exec(db, "COMMIT", NULL, NULL, &err) != SQLITE_OK)
        goto fail;
    return BH_OK;
fail:
    set_err(errmsg, errcap, "creating schema: %s", err != NULL ? err : sqlite3_errmsg(db));
    sqlite3_free(err);
    sqlite3_finalize(st);
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return BH_ESTORE;
}

static int sq_pragmas(sqlite3 *db, const char *path, char *errmsg, size_t errcap) {
    sqlite3_stmt *st = NULL;
    char *err = NULL;
    int wal;

    /* journal_mode answers with the mode actually in force: WAL can be refused (e.g. on some
     * network file systems), and durability then would not be what the header promises. */
    /* Takes effect only while the file is new and empty (existing files keep theirs). A group
     * commit rewrites one journal index page per user in it, twice over (sequence and op id
     * orders), so the bytes logged and synced per op scale with the page size: 2 KiB pages
     * wrote 7.5 KB per op where 4 KiB pages wrote 12 KB, for the same SQLite CPU. */
    if (sqlite3_exec(db, "PRAGMA page_size=" STR(PAGE_SIZE), NULL, NULL, &err) != SQLITE_OK) {
        set_err(errmsg, errcap, "%s: %s", path, err != NULL ? err : "pragma failed");
        sqlite3_free(err);
        return BH_ESTORE;
    }
    if (sqlite3_prepare_v2(db, "PRAGMA journal_mode=WAL", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        set_err(errmsg, errcap, "enabling WAL on %s: %s", path, sqlite3_errmsg(db));
        sqlite3_finalize(st);
        return BH_ESTORE;
    }
    wal = sqlite3_stricmp((const char *)sqlite3_column_text(st, 0), "wal") == 0;
    sqlite3_finalize(st);
    if (!wal && strcmp(path, ":memory:") != 0) {
        set_err(errmsg, errcap, "%s: SQLite refused WAL journal mode", path);
        return BH_ESTORE;
    }
    /* Checkpoints run inside the commit that crosses the threshold, on the commit thread:
     * copying the logged pages into the database and syncing it. A larger log between them
     * copies each hot page once for many more commits (with SQLite's default of 1000 pages
     * checkpoints took about a third of the commit thread's CPU); the log file stays at about
     * WAL_CHECKPOINT_BYTES. Moving them to a thread of their own was tried and did not pay:
     * the stall that remains is the database sync, and the copy's writes delay the commits'
     * log syncs on the same disk anyway. */
    sqlite3_stmt *ps = NULL;
    int page = 0;
    if (sqlite3_prepare_v2(db, "PRAGMA page_size", -1, &ps, NULL) == SQLITE_OK &&
        sqlite3_step(ps) == SQLITE_ROW)
        page = sqlite3_column_int(ps, 0);
    sqlite3_finalize(ps);
    sqlite3_wal_autocheckpoint(db, page > 0 ? WAL_CHECKPOINT_BYTES / page : 1000);
    if (sqlite3_exec(db, "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON", NULL, NULL, &err) !=
        SQLITE_OK) {
        set_err(errmsg, errcap, "%s: %s", path, err != NULL ? err : "pragma failed");
        sqlite3_free(err);
        return BH_ESTORE;
    }
    return BH_OK;
}

int bh_sqlite_open(const char *path, bh_store_t **out, char *errmsg, size_t errcap) {
    sq_t *s;
    int rc;

    if (path == NULL || out == NULL)
        return BH_EINVAL;
    *out = NULL;
    /* Handles live on different threads; a single-thread build of SQLite cannot allow that. */
    if (!sqlite3_threadsafe()) {
        set_err(errmsg, errcap, "SQLite library built without thread support");
        return BH_ESTORE;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return BH_ENOMEM;
    s->base.ops = &sq_ops;
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        free(s);
        return BH_ENOMEM;
    }
    const char *vfs = NULL;
    if (bh_walvfs_register(&vfs) != BH_OK) {
        set_err(errmsg, errcap, "cannot register the SQLite VFS shim");
        rc = BH_ESTORE;
        goto fail;
    }
    /* NOMUTEX: s->mu already serializes every use of this connection. */
    rc = sqlite3_open_v2(path, &s->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, vfs);
    if (rc != SQLITE_OK) {
        set_err(errmsg, errcap, "cannot open SQLite database %s: %s", path,
                s->db != NULL ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        rc = BH_ESTORE;
        goto fail;
    }
    sqlite3_extended_result_codes(s->db, 1);
    /* The other handle may hold the write lock (a commit, a checkpoint): wait, don't fail. */
    sqlite3_busy_timeout(s->db, BUSY_TIMEOUT_MS);
    if ((rc = sq_pragmas(s->db, path, errmsg, errcap)) != BH_OK)
        goto fail;
    if ((rc = sq_schema(s->db, errmsg, errcap)) != BH_OK)
        goto fail;
    for (int i = 0; i < ST_COUNT; i++) {
        if (sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i],
                               NULL) != SQLITE_OK) {
            set_err(errmsg, errcap, "preparing statement: %s", sqlite3_errmsg(s->db));
            rc = BH_ESTORE;
            goto fail;
        }
    }
    *out = &s->base;
    return BH_OK;
fail:
    sq_close(&s->base);
    return rc;
}

/* Visit the user of the current row of ust: its assets are gathered first so the visitor sees
 * them all at once. *assets grows as needed and is reused across users. */
static int visit_user(sq_t *s, const bh_store_visitor_t *v, sqlite3_stmt *ust,
                      bh_store_asset_t **assets, size_t *cap) {
    sqlite3_stmt *ast = s->st[ST_ASSETS_OF];
    bh_store_user_t u;
    size_t n = 0;
    int rc;

    memset(&u, 0, sizeof(u));
    if (col_str(ust, 0, u.user_id, sizeof(u.user_id)) != BH_OK ||
        col_str(ust, 1, u.base_currency, sizeof(u.base_currency)) != BH_OK ||
        col_dec(ust, 2, &u.total_max_exposure) != BH_OK || col_u64(ust, 3, &u.sequence) != BH_OK)
        return corrupt("users");
    u.deleted = sqlite3_column_int(ust, 4) != 0;

    bind_text(ast, 1, u.user_id);
    while ((rc = sqlite3_step(ast)) == SQLITE_ROW) {
        bh_store_asset_t *a;
        if (n == *cap) {
            size_t ncap = *cap ? *cap * 2 : 16;
            bh_store_asset_t *p = realloc(*assets, ncap * sizeof(*p));
            if (p == NULL) {
                st_done(ast);
                return BH_ENOMEM;
            }
            *assets = p;
            *cap = ncap;
        }
        a = &(*assets)[n];
        memset(a, 0, sizeof(*a));
        if (col_str(ast, 0, a->name, sizeof(a->name)) != BH_OK ||
            col_dec(ast, 1, &a->available) != BH_OK || col_dec(ast, 2, &a->allocated) != BH_OK ||
            col_dec(ast, 3, &a->max_exposure) != BH_OK) {
            st_done(ast);
            return corrupt("assets");
        }
        n++;
    }
    if (rc != SQLITE_DONE)
        log_fail(s, "loading assets");
    st_done(ast);
    if (rc != SQLITE_DONE)
        return BH_ESTORE;
    return v->user != NULL ? v->user(v->ud, &u, *assets, n) : BH_OK;
}

static int load_users(sq_t *s, const bh_store_visitor_t *v) {
    sqlite3_stmt *st = s->st[ST_USERS_ALL];
    bh_store_asset_t *assets = NULL;
    size_t cap = 0;
    int rc, ret = BH_OK;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if ((ret = visit_user(s, v, st, &assets, &cap)) != BH_OK)
            break;
    }
    if (ret == BH_OK && rc != SQLITE_DONE) {
        log_fail(s, "loading users");
        ret = BH_ESTORE;
    }
    st_done(st);
    free(assets);
    return ret;
}

static int load_rates(sq_t *s, const bh_store_visitor_t *v) {
    sqlite3_stmt *st = s->st[ST_RATES_ALL];
    int rc, ret = BH_OK;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        bh_store_rate_t r;
        memset(&r, 0, sizeof(r));
        if (col_str(st, 0, r.currency, sizeof(r.currency)) != BH_OK ||
            col_str(st, 1, r.asset, sizeof(r.asset)) != BH_OK || col_dec(st, 2, &r.rate) != BH_OK)
            ret = corrupt("rates");
        else
            ret = v->rate(v->ud, &r);
        if (ret != BH_OK)
            break;
    }
    if (ret == BH_OK && rc != SQLITE_DONE) {
        log_fail(s, "load");
        ret = BH_ESTORE;
    }
    st_done(st);
    return ret;
}

static int load_keys(sq_t *s, const bh_store_visitor_t *v) {
    sqlite3_stmt *st = s->st[ST_KEYS_ALL];
    int rc, ret = BH_OK;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        bh_store_key_t k;
        memset(&k, 0, sizeof(k));
        if (col_str(st, 0, k.key_id, sizeof(k.key_id)) != BH_OK ||
            col_str(st, 1, k.user_id, sizeof(k.user_id)) != BH_OK ||
            sqlite3_column_bytes(st, 2) != (int)sizeof(k.hash)) {
            ret = corrupt("keys");
            break;
        }
        memcpy(k.hash, sqlite3_column_blob(st, 2), sizeof(k.hash));
        k.revoked = sqlite3_column_int(st, 3) != 0;
        if ((ret = v->key(v->ud, &k)) != BH_OK)
            break;
    }
    if (ret == BH_OK && rc != SQLITE_DONE) {
        log_fail(s, "load");
        ret = BH_ESTORE;
    }
    st_done(st);
    return ret;
}

/* Visitor and journal callbacks run with the handle's mutex held: they must not call back
 * into the same handle. */
static int sq_load(bh_store_t *base, const bh_store_visitor_t *v) {
    sq_t *s = (sq_t *)base;
    int rc = BH_OK;

    pthread_mutex_lock(&s->mu);
    /* One read transaction so users, rates and keys are one consistent picture. */
    if (st_exec(s->st[ST_BEGIN_READ]) != SQLITE_DONE) {
        log_fail(s, "load");
        pthread_mutex_unlock(&s->mu);
        return BH_ESTORE;
    }
    if (v->user != NULL)
        rc = load_users(s, v);
    if (rc == BH_OK && v->rate != NULL)
        rc = load_rates(s, v);
    if (rc == BH_OK && v->key != NULL)
        rc = load_keys(s, v);
    st_exec(s->st[ST_ROLLBACK]);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int sq_load_user(bh_store_t *base, const char *user_id, const bh_store_visitor_t *v) {
    sq_t *s = (sq_t *)base;
    sqlite3_stmt *st = s->st[ST_USER_ONE];
    bh_store_asset_t *assets = NULL;
    size_t cap = 0;
    int rc, ret;

    pthread_mutex_lock(&s->mu);
    /* The user row and its asset rows from one snapshot, not across a concurrent commit. */
    if (st_exec(s->st[ST_BEGIN_READ]) != SQLITE_DONE) {
        log_fail(s, "load_user");
        pthread_mutex_unlock(&s->mu);
        return BH_ESTORE;
    }
    bind_text(st, 1, user_id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        ret = visit_user(s, v, st, &assets, &cap);
    } else if (rc == SQLITE_DONE) {
        ret = BH_ENOTFOUND;
    } else {
        log_fail(s, "load_user");
        ret = BH_ESTORE;
    }
    st_done(st);
    st_exec(s->st[ST_ROLLBACK]);
    pthread_mutex_unlock(&s->mu);
    free(assets);
    return ret;
}

/* Write one change inside the open transaction. The decimal texts live in this frame until
 * each step has run; st_exec drops the bindings before they go out of scope. */
static int put_change(sq_t *s, const bh_store_change_t *c) {
    char d1[BH_DEC_STRLEN], d2[BH_DEC_STRLEN], d3[BH_DEC_STRLEN];
    sqlite3_stmt *st;
    int rc;

    if (c->user != NULL) {
        const bh_store_user_t *u = c->user;
        for (int k = ST_USER_UPDATE, done = 0; !done; k = ST_USER_UPSERT) {
            st = s->st[k];
            bind_text(st, 1, u->user_id);
            bind_text(st, 2, u->base_currency);
            bind_dec(st, 3, u->total_max_exposure, d1);
            sqlite3_bind_int64(st, 4, (sqlite3_int64)u->sequence);
            sqlite3_bind_int(st, 5, u->deleted ? 1 : 0);
            if (st_exec(st) != SQLITE_DONE)
                return BH_ESTORE;
            done = k == ST_USER_UPSERT || sqlite3_changes(s->db) > 0;
        }

        for (size_t i = 0; i < c->nassets; i++) {
            const bh_store_asset_t *a = &c->assets[i];
            for (int k = ST_ASSET_UPDATE, done = 0; !done; k = ST_ASSET_UPSERT) {
                st = s->st[k];
                bind_text(st, 1, u->user_id);
                bind_text(st, 2, a->name);
                bind_dec(st, 3, a->available, d1);
                bind_dec(st, 4, a->allocated, d2);
                bind_dec(st, 5, a->max_exposure, d3);
                if (st_exec(st) != SQLITE_DONE)
                    return BH_ESTORE;
                done = k == ST_ASSET_UPSERT || sqlite3_changes(s->db) > 0;
            }
        }
    }

    if (c->journal != NULL) {
        const bh_store_journal_t *j = c->journal;
        st = s->st[ST_JOURNAL_INSERT];
        bind_text(st, 1, j->user_id);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)j->sequence);
        bind_text(st, 3, j->op_id);
        bind_text(st, 4, j->op);
        if (j->detail != NULL)
            bind_text(st, 5, j->detail);
        if (j->result != NULL)
            bind_text(st, 6, j->result);
        sqlite3_bind_int64(st, 7, j->time_ms);
        rc = st_exec(st);
        /* The journal's only UNIQUE constraint besides its primary key (which reports
         * SQLITE_CONSTRAINT_PRIMARYKEY): a repeated op id of that user. */
        if (rc == SQLITE_CONSTRAINT_UNIQUE)
            return BH_EEXIST;
        if (rc != SQLITE_DONE)
            return BH_ESTORE;
    }

    st = s->st[ST_RATE_UPSERT];
    for (size_t i = 0; i < c->nrates; i++) {
        bind_text(st, 1, c->rates[i].currency);
        bind_text(st, 2, c->rates[i].asset);
        bind_dec(st, 3, c->rates[i].rate, d1);
        if (st_exec(st) != SQLITE_DONE)
            return BH_ESTORE;
    }
    return BH_OK;
}

static int sq_commit_batch(bh_store_t *base, const bh_store_change_t *changes, size_t n) {
    sq_t *s = (sq_t *)base;
    int ret = BH_ESTORE;

    pthread_mutex_lock(&s->mu);
    pthread_mutex_lock(&write_mu);
    if (st_exec(s->st[ST_BEGIN]) != SQLITE_DONE)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        if ((ret = put_change(s, &changes[i])) != BH_OK)
            goto fail;
    }
    ret = BH_ESTORE;
    if (st_exec(s->st[ST_COMMIT]) != SQLITE_DONE)
        goto fail;
    pthread_mutex_unlock(&write_mu);
    pthread_mutex_unlock(&s->mu);
    return BH_OK;
fail:
    if (ret == BH_ESTORE)
        log_fail(s, "commit");
    /* A failed COMMIT may already have rolled back; otherwise undo the whole batch. */
    if (!sqlite3_get_autocommit(s->db))
        st_exec(s->st[ST_ROLLBACK]);
    pthread_mutex_unlock(&write_mu);
    pthread_mutex_unlock(&s->mu);
    return ret;
}

static int sq_find_op(bh_store_t *base, const char *user_id, const char *op_id, uint64_t *sequence,
                      bh_buf_t *result) {
    sq_t *s = (sq_t *)base;
    sqlite3_stmt *st = s->st[ST_FIND_OP];
    uint64_t seq = 0;
    int rc, ret;

    pthread_mutex_lock(&s->mu);
    bind_text(st, 1, user_id);
    bind_text(st, 2, op_id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        ret = col_u64(st, 0, &seq);
        if (ret != BH_OK) {
            corrupt("journal");
        } else if (result != NULL) {
            const unsigned char *p = sqlite3_column_text(st, 1);
            if (p != NULL)
                ret = bh_buf_append(result, p, (size_t)sqlite3_column_bytes(st, 1));
        }
    } else if (rc == SQLITE_DONE) {
        ret = BH_ENOTFOUND;
    } else {
        log_fail(s, "find_op");
        ret = BH_ESTORE;
    }
    st_done(st);
    pthread_mutex_unlock(&s->mu);
    if (ret == BH_OK && sequence != NULL)
        *sequence = seq;
    return ret;
}

/* Fill j from the current row of ST_JOURNAL_SINCE; detail and result point into SQLite's row
 * memory, valid until the next step. */
static int journal_row(sqlite3_stmt *st, bh_store_journal_t *j) {
    if (col_u64(st, 0, &j->sequence) != BH_OK ||
        col_str(st, 1, j->op_id, sizeof(j->op_id)) != BH_OK ||
        col_str(st, 2, j->op, sizeof(j->op)) != BH_OK ||
        sqlite3_column_type(st, 5) != SQLITE_INTEGER)
        return corrupt("journal");
    j->detail = (const char *)sqlite3_column_text(st, 3);
    j->result = (const char *)sqlite3_column_text(st, 4);
    j->time_ms = sqlite3_column_int64(st, 5);
    return BH_OK;
}

static int sq_read_journal(bh_store_t *base, const char *user_id, uint64_t since, size_t limit,
                           bh_store_journal_fn fn, void *ud) {
    sq_t *s = (sq_t *)base;
    sqlite3_stmt *st = s->st[ST_JOURNAL_SINCE];
    bh_store_journal_t j;
    size_t idlen = strlen(user_id);
    int rc, ret = BH_OK;

    /* Stored sequences fit int64 and stored ids BH_ID_MAX bytes: nothing else can match. */
    if (limit == 0 || since >= (uint64_t)INT64_MAX || idlen > BH_ID_MAX)
        return BH_OK;
    memset(&j, 0, sizeof(j));
    memcpy(j.user_id, user_id, idlen + 1);

    pthread_mutex_lock(&s->mu);
    bind_text(st, 1, user_id);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)since);
    sqlite3_bind_int64(st, 3, limit > (size_t)INT64_MAX ? INT64_MAX : (sqlite3_int64)limit);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if ((ret = journal_row(st, &j)) != BH_OK || (ret = fn(ud, &j)) != 0)
            break;
    }
    if (ret == BH_OK && rc != SQLITE_DONE) {
        log_fail(s, "read_journal");
        ret = BH_ESTORE;
    }
    st_done(st);
    pthread_mutex_unlock(&s->mu);
    return ret;
}

static int sq_put_key(bh_store_t *base, const bh_store_key_t *k) {
    sq_t *s = (sq_t *)base;
    sqlite3_stmt *st = s->st[ST_KEY_UPSERT];
    int rc;

    pthread_mutex_lock(&s->mu);
    bind_text(st, 1, k->key_id);
    bind_text(st, 2, k->user_id);
    sqlite3_bind_blob(st, 3, k->hash, (int)sizeof(k->hash), SQLITE_STATIC);
    sqlite3_bind_int(st, 4, k->revoked ? 1 : 0);
    sqlite3_bind_int64(st, 5, now_ms());
    pthread_mutex_lock(&write_mu);
    rc = st_exec(st);
    pthread_mutex_unlock(&write_mu);
    if (rc != SQLITE_DONE)
        log_fail(s, "put_key");
    pthread_mutex_unlock(&s->mu);
    return rc == SQLITE_DONE ? BH_OK : BH_ESTORE;
}

static int sq_visit_ops(bh_store_t *base, const bh_store_op_visitor_t *v) {
    sq_t *s = (sq_t *)base;
    sqlite3_stmt *st = s->st[ST_OPS_COUNT];
    char user[BH_ID_MAX + 1], op[BH_ID_MAX + 1];
    int rc, ret = BH_OK;

    pthread_mutex_lock(&s->mu);
    /* The count and the walk from one snapshot, not across a concurrent commit. */
    if (st_exec(s->st[ST_BEGIN_READ]) != SQLITE_DONE) {
        log_fail(s, "visit_ops");
        pthread_mutex_unlock(&s->mu);
        return BH_ESTORE;
    }
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        log_fail(s, "visit_ops");
        ret = BH_ESTORE;
    } else if (v->count != NULL) {
        sqlite3_int64 n = sqlite3_column_int64(st, 0);
        ret = v->count(v->ud, n > 0 ? (uint64_t)n : 0);
    }
    st_done(st);
    st = s->st[ST_OPS_ALL];
    while (ret == BH_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (col_str(st, 0, user, sizeof(user)) != BH_OK || col_str(st, 1, op, sizeof(op)) != BH_OK)
            ret = corrupt("journal");
        else
            ret = v->op(v->ud, user, op);
    }
    if (ret == BH_OK && rc != SQLITE_DONE) {
        log_fail(s, "visit_ops");
        ret = BH_ESTORE;
    }
    st_done(st);
    st_exec(s->st[ST_ROLLBACK]);
    pthread_mutex_unlock(&s->mu);
    return ret;
}

/* BEGIN IMMEDIATE takes the write lock as a commit would; nothing is written, so the ROLLBACK
 * costs no sync. Not logged: the ledger logs when readiness changes, not every probe. */
static int sq_probe(bh_store_t *base) {
    sq_t *s = (sq_t *)base;
    int rc;

    pthread_mutex_lock(&s->mu);
    pthread_mutex_lock(&write_mu);
    sqlite3_busy_timeout(s->db, PROBE_BUSY_TIMEOUT_MS);
    rc = st_exec(s->st[ST_BEGIN]);
    if (!sqlite3_get_autocommit(s->db) && st_exec(s->st[ST_ROLLBACK]) != SQLITE_DONE)
        rc = SQLITE_ERROR;
    sqlite3_busy_timeout(s->db, BUSY_TIMEOUT_MS);
    pthread_mutex_unlock(&write_mu);
    pthread_mutex_unlock(&s->mu);
    if (rc != SQLITE_DONE) {
        bh_metric_add(BH_M_STORE_ERRORS, 1);
        return BH_ESTORE;
    }
    return BH_OK;
}

static const bh_store_ops_t sq_ops = {
    .name = "sqlite",
    .close = sq_close,
    .load = sq_load,
    .commit_batch = sq_commit_batch,
    .find_op = sq_find_op,
    .read_journal = sq_read_journal,
    .load_user = sq_load_user,
    .put_key = sq_put_key,
    .visit_ops = sq_visit_ops,
    .probe = sq_probe,
};
