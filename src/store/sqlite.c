/* SQLite backend of the store: one connection in WAL mode with synchronous=FULL, so a call that
 * returns BH_OK has reached the disk. Statements are prepared once at open; decimals are kept
 * as their exact text (bh_dec_format), never REAL. A mutex serializes callers. */
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

#define SCHEMA_VERSION 1
#define BUSY_TIMEOUT_MS 5000

enum {
    ST_BEGIN,
    ST_BEGIN_READ,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_USER_UPSERT,
    ST_ASSET_UPSERT,
    ST_JOURNAL_INSERT,
    ST_FIND_OP,
    ST_USERS_ALL,
    ST_ASSETS_OF,
    ST_RATES_ALL,
    ST_KEYS_ALL,
    ST_RATE_UPSERT,
    ST_KEY_UPSERT,
    ST_COUNT
};

static const char *const stmt_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_BEGIN_READ] = "BEGIN",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_USER_UPSERT] = "INSERT INTO users(user_id, base_currency, total_max_exposure, sequence, "
                       "deleted) VALUES(?1, ?2, ?3, ?4, ?5) ON CONFLICT(user_id) DO UPDATE SET "
                       "base_currency = excluded.base_currency, total_max_exposure = "
                       "excluded.total_max_exposure, sequence = excluded.sequence, deleted = "
                       "excluded.deleted",
    [ST_ASSET_UPSERT] = "INSERT INTO assets(user_id, name, available, allocated, max_exposure) "
                        "VALUES(?1, ?2, ?3, ?4, ?5) ON CONFLICT(user_id, name) DO UPDATE SET "
                        "available = excluded.available, allocated = excluded.allocated, "
                        "max_exposure = excluded.max_exposure",
    [ST_JOURNAL_INSERT] = "INSERT INTO journal(user_id, sequence, op_id, op, detail, time_ms) "
                          "VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
    [ST_FIND_OP] = "SELECT sequence FROM journal WHERE user_id = ?1 AND op_id = ?2",
    [ST_USERS_ALL] = "SELECT user_id, base_currency, total_max_exposure, sequence, deleted "
                     "FROM users ORDER BY user_id",
    [ST_ASSETS_OF] = "SELECT name, available, allocated, max_exposure FROM assets "
                     "WHERE user_id = ?1 ORDER BY name",
    [ST_RATES_ALL] = "SELECT currency, asset, rate FROM rates ORDER BY currency, asset",
    [ST_KEYS_ALL] = "SELECT key_id, user_id, hash, revoked FROM keys ORDER BY key_id",
    [ST_RATE_UPSERT] = "INSERT INTO rates(currency, asset, rate) VALUES(?1, ?2, ?3) "
                       "ON CONFLICT(currency, asset) DO UPDATE SET rate = excluded.rate",
    [ST_KEY_UPSERT] = "INSERT INTO keys(key_id, user_id, hash, revoked, created_ms) "
                      "VALUES(?1, ?2, ?3, ?4, ?5) "
                      "ON CONFLICT(key_id) DO UPDATE SET revoked = excluded.revoked",
};

static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS schema_version(version INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS users("
    " user_id TEXT PRIMARY KEY NOT NULL,"
    " base_currency TEXT NOT NULL,"
    " total_max_exposure TEXT NOT NULL,"
    " sequence INTEGER NOT NULL,"
    " deleted INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS assets("
    " user_id TEXT NOT NULL REFERENCES users(user_id),"
    " name TEXT NOT NULL,"
    " available TEXT NOT NULL,"
    " allocated TEXT NOT NULL,"
    " max_exposure TEXT NOT NULL,"
    " PRIMARY KEY(user_id, name));"
    "CREATE TABLE IF NOT EXISTS rates("
    " currency TEXT NOT NULL,"
    " asset TEXT NOT NULL,"
    " rate TEXT NOT NULL,"
    " PRIMARY KEY(currency, asset));"
    "CREATE TABLE IF NOT EXISTS keys("
    " key_id TEXT PRIMARY KEY NOT NULL,"
    " user_id TEXT NOT NULL,"
    " hash BLOB NOT NULL,"
    " revoked INTEGER NOT NULL DEFAULT 0,"
    " created_ms INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS journal("
    " user_id TEXT NOT NULL REFERENCES users(user_id),"
    " sequence INTEGER NOT NULL,"
    " op_id TEXT NOT NULL,"
    " op TEXT NOT NULL,"
    " detail TEXT,"
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

static int bind_text(sqlite3_stmt *st, int i, const char *s) {
    return sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
}

/* Decimals go in as text; the caller's buffer lives until the statement has run. */
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
    bh_log(BH_LOG_ERROR, "store: %s failed: %s", what, sqlite3_errmsg(s->db));
}

/* A row that does not hold what this code wrote: refuse to load rather than guess. */
static int corrupt(const char *table) {
    bh_log(BH_LOG_ERROR, "store: malformed row in table %s", table);
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
    if (version > SCHEMA_VERSION) {
        set_err(errmsg, errcap, "database schema version %d is newer than supported (%d)", version,
                SCHEMA_VERSION);
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return BH_ESTORE;
    }
    if (version == 0 && sqlite3_exec(db, "INSERT INTO schema_version(version) VALUES(1)", NULL,
                                     NULL, &err) != SQLITE_OK)
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
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return BH_ENOMEM;
    s->base.ops = &sq_ops;
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        free(s);
        return BH_ENOMEM;
    }
    rc = sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc != SQLITE_OK) {
        set_err(errmsg, errcap, "cannot open SQLite database %s: %s", path,
                s->db != NULL ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        rc = BH_ESTORE;
        goto fail;
    }
    sqlite3_extended_result_codes(s->db, 1);
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

/* Visit one user: its assets are gathered first so the visitor sees them all at once. */
static int load_user(sq_t *s, const bh_store_visitor_t *v, sqlite3_stmt *ust,
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
    return v->user(v->ud, &u, *assets, n);
}

static int load_users(sq_t *s, const bh_store_visitor_t *v) {
    sqlite3_stmt *st = s->st[ST_USERS_ALL];
    bh_store_asset_t *assets = NULL;
    size_t cap = 0;
    int rc, ret = BH_OK;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if ((ret = load_user(s, v, st, &assets, &cap)) != BH_OK)
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

/* The visitor must not call back into the store: the store's mutex is held. */
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

static int sq_commit_user(bh_store_t *base, const bh_store_user_t *u,
                          const bh_store_asset_t *assets, size_t n, const bh_store_journal_t *j) {
    sq_t *s = (sq_t *)base;
    char d1[BH_DEC_STRLEN], d2[BH_DEC_STRLEN], d3[BH_DEC_STRLEN];
    sqlite3_stmt *st;
    int rc, ret = BH_ESTORE;

    if (strcmp(u->user_id, j->user_id) != 0 || u->sequence > INT64_MAX || j->sequence > INT64_MAX)
        return BH_EINVAL;
    pthread_mutex_lock(&s->mu);
    if (st_exec(s->st[ST_BEGIN]) != SQLITE_DONE)
        goto fail;

    st = s->st[ST_USER_UPSERT];
    bind_text(st, 1, u->user_id);
    bind_text(st, 2, u->base_currency);
    bind_dec(st, 3, u->total_max_exposure, d1);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)u->sequence);
    sqlite3_bind_int(st, 5, u->deleted ? 1 : 0);
    if (st_exec(st) != SQLITE_DONE)
        goto fail;

    st = s->st[ST_ASSET_UPSERT];
    for (size_t i = 0; i < n; i++) {
        bind_text(st, 1, u->user_id);
        bind_text(st, 2, assets[i].name);
        bind_dec(st, 3, assets[i].available, d1);
        bind_dec(st, 4, assets[i].allocated, d2);
        bind_dec(st, 5, assets[i].max_exposure, d3);
        if (st_exec(st) != SQLITE_DONE)
            goto fail;
    }

    st = s->st[ST_JOURNAL_INSERT];
    bind_text(st, 1, j->user_id);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)j->sequence);
    bind_text(st, 3, j->op_id);
    bind_text(st, 4, j->op);
    if (j->detail != NULL)
        bind_text(st, 5, j->detail);
    sqlite3_bind_int64(st, 6, j->time_ms);
    rc = st_exec(st);
    if (rc == SQLITE_CONSTRAINT_UNIQUE) {
        /* The only UNIQUE constraint of the journal besides its primary key: a repeated op id. */
        ret = BH_EEXIST;
        goto fail;
    }
    if (rc != SQLITE_DONE)
        goto fail;

    if (st_exec(s->st[ST_COMMIT]) != SQLITE_DONE)
        goto fail;
    pthread_mutex_unlock(&s->mu);
    return BH_OK;
fail:
    if (ret == BH_ESTORE)
        log_fail(s, "commit");
    if (!sqlite3_get_autocommit(s->db))
        st_exec(s->st[ST_ROLLBACK]);
    pthread_mutex_unlock(&s->mu);
    return ret;
}

static int sq_find_op(bh_store_t *base, const char *user_id, const char *op_id,
                      uint64_t *sequence) {
    sq_t *s = (sq_t *)base;
    sqlite3_stmt *st = s->st[ST_FIND_OP];
    uint64_t seq = 0;
    int rc, ret;

    pthread_mutex_lock(&s->mu);
    bind_text(st, 1, user_id);
    bind_text(st, 2, op_id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        ret = col_u64(st, 0, &seq);
    else if (rc == SQLITE_DONE)
        ret = BH_ENOTFOUND;
    else
        ret = BH_ESTORE;
    if (ret == BH_ESTORE)
        log_fail(s, "find_op");
    st_done(st);
    pthread_mutex_unlock(&s->mu);
    if (ret == BH_OK && sequence != NULL)
        *sequence = seq;
    return ret;
}

static int sq_put_rate(bh_store_t *base, const bh_store_rate_t *r) {
    sq_t *s = (sq_t *)base;
    sqlite3_stmt *st = s->st[ST_RATE_UPSERT];
    char d[BH_DEC_STRLEN];
    int rc;

    pthread_mutex_lock(&s->mu);
    bind_text(st, 1, r->currency);
    bind_text(st, 2, r->asset);
    bind_dec(st, 3, r->rate, d);
    rc = st_exec(st);
    if (rc != SQLITE_DONE)
        log_fail(s, "put_rate");
    pthread_mutex_unlock(&s->mu);
    return rc == SQLITE_DONE ? BH_OK : BH_ESTORE;
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
    rc = st_exec(st);
    if (rc != SQLITE_DONE)
        log_fail(s, "put_key");
    pthread_mutex_unlock(&s->mu);
    return rc == SQLITE_DONE ? BH_OK : BH_ESTORE;
}

static const bh_store_ops_t sq_ops = {
    .name = "sqlite",
    .close = sq_close,
    .load = sq_load,
    .commit_user = sq_commit_user,
    .find_op = sq_find_op,
    .put_rate = sq_put_rate,
    .put_key = sq_put_key,
};
