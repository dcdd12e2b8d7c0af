/* Store (SQLite backend): schema, exact round trips through close + reopen, atomic commits,
 * op-id idempotency and corruption handling. Each test gets its own temporary directory. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/decimal.h"
#include "base/error.h"
#include "store/store.h"

typedef struct {
    char dir[64];
    char path[128];
    bh_store_t *s;
} fx_t;

static bh_dec_t D(const char *s) {
    bh_dec_t d;
    assert_int_equal(bh_dec_parse(s, strlen(s), &d), BH_OK);
    return d;
}

static void assert_dec(bh_dec_t d, const char *want) {
    char buf[BH_DEC_STRLEN];
    bh_dec_format(d, buf);
    assert_string_equal(buf, want);
}

static int setup(void **state) {
    fx_t *f = calloc(1, sizeof(*f));
    char err[256];
    assert_non_null(f);
    strcpy(f->dir, "/tmp/bh_store_XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/bh.db", f->dir);
    assert_int_equal(bh_store_open(f->path, &f->s, err, sizeof(err)), BH_OK);
    *state = f;
    return 0;
}

static void remove_db(const char *dir) {
    static const char *const names[] = {"bh.db", "bh.db-wal", "bh.db-shm", "bh.db-journal"};
    char p[160];
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

static int teardown(void **state) {
    fx_t *f = *state;
    bh_store_close(f->s);
    remove_db(f->dir);
    free(f);
    return 0;
}

static void reopen(fx_t *f) {
    char err[256];
    bh_store_close(f->s);
    f->s = NULL;
    assert_int_equal(bh_store_open(f->path, &f->s, err, sizeof(err)), BH_OK);
}

/* Run one SQL statement on a separate connection; returns the first column of the first row
 * as a malloc'd string (or NULL). */
static char *raw_sql(const char *path, const char *sql) {
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    char *res = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0) != NULL)
        res = strdup((const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(db);
    return res;
}

static void assert_sql(const char *path, const char *sql, const char *want) {
    char *got = raw_sql(path, sql);
    if (want == NULL) {
        assert_null(got);
    } else {
        assert_non_null(got);
        assert_string_equal(got, want);
    }
    free(got);
}

/* ---- collecting visitor ---- */

#define MAXU 8
#define MAXA 8
typedef struct {
    size_t nusers, nrates, nkeys;
    bh_store_user_t users[MAXU];
    bh_store_asset_t assets[MAXU][MAXA];
    size_t nassets[MAXU];
    bh_store_rate_t rates[8];
    bh_store_key_t keys[8];
    int fail_with;
} col_t;

static int col_user(void *ud, const bh_store_user_t *u, const bh_store_asset_t *a, size_t n) {
    col_t *c = ud;
    if (c->fail_with != 0)
        return c->fail_with;
    assert_true(c->nusers < MAXU && n <= MAXA);
    c->users[c->nusers] = *u;
    if (n > 0)
        memcpy(c->assets[c->nusers], a, n * sizeof(*a));
    c->nassets[c->nusers++] = n;
    return 0;
}

static int col_rate(void *ud, const bh_store_rate_t *r) {
    col_t *c = ud;
    assert_true(c->nrates < 8);
    c->rates[c->nrates++] = *r;
    return 0;
}

static int col_key(void *ud, const bh_store_key_t *k) {
    col_t *c = ud;
    assert_true(c->nkeys < 8);
    c->keys[c->nkeys++] = *k;
    return 0;
}

static int load_all(bh_store_t *s, col_t *c) {
    bh_store_visitor_t v = {c, col_user, col_rate, col_key};
    int fail = c->fail_with;
    memset(c, 0, sizeof(*c));
    c->fail_with = fail;
    return bh_store_load(s, &v);
}

static bh_store_user_t mk_user(const char *id, const char *cur, const char *tme, uint64_t seq) {
    bh_store_user_t u;
    memset(&u, 0, sizeof(u));
    strcpy(u.user_id, id);
    strcpy(u.base_currency, cur);
    u.total_max_exposure = D(tme);
    u.sequence = seq;
    return u;
}

static bh_store_asset_t mk_asset(const char *name, const char *av, const char *al, const char *mx) {
    bh_store_asset_t a;
    memset(&a, 0, sizeof(a));
    strcpy(a.name, name);
    a.available = D(av);
    a.allocated = D(al);
    a.max_exposure = D(mx);
    return a;
}

static bh_store_journal_t mk_j(const char *user, uint64_t seq, const char *op_id, const char *op,
                               const char *detail) {
    bh_store_journal_t j;
    memset(&j, 0, sizeof(j));
    strcpy(j.user_id, user);
    j.sequence = seq;
    strcpy(j.op_id, op_id);
    strcpy(j.op, op);
    j.detail = detail;
    j.time_ms = 1700000000123;
    return j;
}

/* ---- tests ---- */

static void test_schema_created(void **state) {
    fx_t *f = *state;
    col_t c = {0};
    assert_sql(f->path, "PRAGMA journal_mode", "wal");
    assert_sql(f->path, "SELECT max(version) FROM schema_version", "1");
    assert_sql(f->path,
               "SELECT count(*) FROM sqlite_master WHERE type='table' AND name IN "
               "('users','assets','rates','keys','journal','schema_version')",
               "6");
    /* Reopening an existing database keeps one version row. */
    reopen(f);
    assert_sql(f->path, "SELECT count(*) FROM schema_version", "1");
    assert_int_equal(load_all(f->s, &c), BH_OK);
    assert_int_equal(c.nusers + c.nrates + c.nkeys, 0);
}

static void test_open_urls(void **state) {
    fx_t *f = *state;
    char err[256], url[200];
    bh_store_t *s = (bh_store_t *)&err; /* must be reset to NULL on failure */

    assert_int_equal(bh_store_open("postgresql://localhost/db", &s, err, sizeof(err)), BH_EINVAL);
    assert_null(s);
    assert_non_null(strstr(err, "postgresql"));
    assert_non_null(strstr(err, "sqlite"));
    assert_int_equal(bh_store_open("redis://x", &s, err, sizeof(err)), BH_EINVAL);
    assert_non_null(strstr(err, "redis"));
    assert_int_equal(bh_store_open("", &s, err, sizeof(err)), BH_EINVAL);
    assert_int_equal(bh_store_open("sqlite:", &s, err, sizeof(err)), BH_EINVAL);
    assert_int_equal(bh_store_open(NULL, &s, NULL, 0), BH_EINVAL);

    /* Parent directory missing: the store does not create directories. */
    snprintf(url, sizeof(url), "%s/missing/dir/x.db", f->dir);
    err[0] = '\0';
    assert_int_equal(bh_store_open(url, &s, err, sizeof(err)), BH_ESTORE);
    assert_null(s);
    assert_true(strlen(err) > 0);

    /* Both sqlite spellings reach the same file as the plain path. */
    bh_store_close(f->s);
    f->s = NULL;
    snprintf(url, sizeof(url), "sqlite:%s", f->path);
    assert_int_equal(bh_store_open(url, &s, err, sizeof(err)), BH_OK);
    assert_string_equal(s->ops->name, "sqlite");
    bh_store_close(s);
    snprintf(url, sizeof(url), "sqlite://%s", f->path); /* sqlite:///tmp/... */
    assert_int_equal(bh_store_open(url, &f->s, err, sizeof(err)), BH_OK);
    assert_sql(f->path, "SELECT count(*) FROM schema_version", "1");
}

static void test_round_trip(void **state) {
    fx_t *f = *state;
    bh_store_user_t u = mk_user("user-123", "EUR", "12345678901234567890", 7);
    bh_store_asset_t a[3] = {
        mk_asset("USDT", "1000", "250", "1500"),
        mk_asset("BTC", "0.000000000000000001", "0", "99999999999999999999.999999999999999999"),
        mk_asset("ETH", "-12345678901234567890.5", "0.1", "0"),
    };
    bh_store_journal_t j = mk_j("user-123", 7, "op-1", "deposit", "{\"asset\":\"BTC\"}");
    bh_store_user_t u2 = mk_user("a.b:c@d_e-f", "USD", "0", 1);
    bh_store_journal_t j2 = mk_j("a.b:c@d_e-f", 1, "create-user", "create-user", NULL);
    bh_store_rate_t r = {"EUR", "BTC", D("60000.123456789012345678")};
    bh_store_rate_t r2 = {"EUR", "ETH", D("0.000000000000000001")};
    bh_store_key_t k = {"0123456789abcdef", "user-123", {0}, false};
    bh_store_key_t k2 = {"fedcba9876543210", "a.b:c@d_e-f", {0}, true};
    col_t c = {0};

    for (int i = 0; i < 32; i++) {
        k.hash[i] = (uint8_t)(i * 7 + 1);
        k2.hash[i] = (uint8_t)(255 - i);
    }
    u.deleted = false;
    u2.deleted = true;
    assert_int_equal(bh_store_commit_user(f->s, &u, a, 3, &j), BH_OK);
    assert_int_equal(bh_store_commit_user(f->s, &u2, NULL, 0, &j2), BH_OK);
    assert_int_equal(bh_store_put_rate(f->s, &r), BH_OK);
    assert_int_equal(bh_store_put_rate(f->s, &r2), BH_OK);
    assert_int_equal(bh_store_put_key(f->s, &k), BH_OK);
    assert_int_equal(bh_store_put_key(f->s, &k2), BH_OK);
    reopen(f);

    assert_int_equal(load_all(f->s, &c), BH_OK);
    assert_int_equal(c.nusers, 2);
    /* Users in id order ('a' < 'u'); assets sorted by name. */
    assert_string_equal(c.users[0].user_id, "a.b:c@d_e-f");
    assert_string_equal(c.users[0].base_currency, "USD");
    assert_true(c.users[0].deleted);
    assert_int_equal(c.users[0].sequence, 1);
    assert_int_equal(c.nassets[0], 0);
    assert_string_equal(c.users[1].user_id, "user-123");
    assert_string_equal(c.users[1].base_currency, "EUR");
    assert_false(c.users[1].deleted);
    assert_int_equal(c.users[1].sequence, 7);
    assert_dec(c.users[1].total_max_exposure, "12345678901234567890");
    assert_int_equal(c.nassets[1], 3);
    assert_string_equal(c.assets[1][0].name, "BTC");
    assert_dec(c.assets[1][0].available, "0.000000000000000001");
    assert_dec(c.assets[1][0].allocated, "0");
    assert_dec(c.assets[1][0].max_exposure, "99999999999999999999.999999999999999999");
    assert_string_equal(c.assets[1][1].name, "ETH");
    assert_dec(c.assets[1][1].available, "-12345678901234567890.5");
    assert_dec(c.assets[1][1].allocated, "0.1");
    assert_string_equal(c.assets[1][2].name, "USDT");
    assert_dec(c.assets[1][2].available, "1000");
    assert_dec(c.assets[1][2].allocated, "250");
    assert_dec(c.assets[1][2].max_exposure, "1500");

    assert_int_equal(c.nrates, 2);
    assert_string_equal(c.rates[0].currency, "EUR");
    assert_string_equal(c.rates[0].asset, "BTC");
    assert_dec(c.rates[0].rate, "60000.123456789012345678");
    assert_dec(c.rates[1].rate, "0.000000000000000001");

    assert_int_equal(c.nkeys, 2);
    assert_string_equal(c.keys[0].key_id, "0123456789abcdef");
    assert_string_equal(c.keys[0].user_id, "user-123");
    assert_memory_equal(c.keys[0].hash, k.hash, 32);
    assert_false(c.keys[0].revoked);
    assert_string_equal(c.keys[1].key_id, "fedcba9876543210");
    assert_memory_equal(c.keys[1].hash, k2.hash, 32);
    assert_true(c.keys[1].revoked);

    /* Stored as exact text, never REAL; the journal row is complete. */
    assert_sql(f->path, "SELECT available FROM assets WHERE name='BTC'", "0.000000000000000001");
    assert_sql(f->path, "SELECT typeof(available) FROM assets WHERE name='BTC'", "text");
    assert_sql(f->path, "SELECT typeof(total_max_exposure) FROM users WHERE user_id='user-123'",
               "text");
    assert_sql(f->path,
               "SELECT op || ' ' || detail || ' ' || time_ms FROM journal WHERE op_id='op-1'",
               "deposit {\"asset\":\"BTC\"} 1700000000123");
    assert_sql(f->path, "SELECT typeof(detail) FROM journal WHERE op_id='create-user'", "null");
    assert_sql(f->path, "SELECT created_ms > 1600000000000 FROM keys LIMIT 1", "1");
}

static void test_commit_updates_and_upserts(void **state) {
    fx_t *f = *state;
    bh_store_user_t u = mk_user("u1", "EUR", "100", 1);
    bh_store_asset_t a = mk_asset("BTC", "1", "0", "0");
    bh_store_journal_t j = mk_j("u1", 1, "create-user", "create-user", "{}");
    bh_store_rate_t r = {"EUR", "BTC", D("1")};
    bh_store_key_t k = {"0123456789abcdef", "u1", {1}, false};
    col_t c = {0};

    assert_int_equal(bh_store_commit_user(f->s, &u, NULL, 0, &j), BH_OK);
    u.sequence = 2;
    j = mk_j("u1", 2, "d1", "deposit", "{}");
    assert_int_equal(bh_store_commit_user(f->s, &u, &a, 1, &j), BH_OK);
    u.sequence = 3;
    u.total_max_exposure = D("200.5");
    a.available = D("0.25");
    a.max_exposure = D("7");
    j = mk_j("u1", 3, "d2", "withdraw", "{}");
    assert_int_equal(bh_store_commit_user(f->s, &u, &a, 1, &j), BH_OK);
    assert_int_equal(bh_store_put_rate(f->s, &r), BH_OK);
    r.rate = D("2.5");
    assert_int_equal(bh_store_put_rate(f->s, &r), BH_OK);
    assert_int_equal(bh_store_put_key(f->s, &k), BH_OK);
    /* An update changes the revoked flag only, never the hash or the owner. */
    k.revoked = true;
    k.hash[0] = 99;
    strcpy(k.user_id, "someone-else");
    assert_int_equal(bh_store_put_key(f->s, &k), BH_OK);

    assert_int_equal(load_all(f->s, &c), BH_OK);
    assert_int_equal(c.nusers, 1);
    assert_int_equal(c.users[0].sequence, 3);
    assert_dec(c.users[0].total_max_exposure, "200.5");
    assert_int_equal(c.nassets[0], 1);
    assert_dec(c.assets[0][0].available, "0.25");
    assert_dec(c.assets[0][0].max_exposure, "7");
    assert_int_equal(c.nrates, 1);
    assert_dec(c.rates[0].rate, "2.5");
    assert_int_equal(c.nkeys, 1);
    assert_true(c.keys[0].revoked);
    assert_int_equal(c.keys[0].hash[0], 1);
    assert_string_equal(c.keys[0].user_id, "u1");
    assert_sql(f->path, "SELECT count(*) FROM journal", "3");
}

static void test_duplicate_op_id(void **state) {
    fx_t *f = *state;
    bh_store_user_t u = mk_user("u1", "EUR", "100", 1);
    bh_store_asset_t a = mk_asset("BTC", "1", "0", "0");
    bh_store_journal_t j = mk_j("u1", 1, "create-user", "create-user", "{}");
    uint64_t seq = 0;
    col_t c = {0};

    assert_int_equal(bh_store_commit_user(f->s, &u, NULL, 0, &j), BH_OK);
    u.sequence = 2;
    j = mk_j("u1", 2, "op-x", "deposit", "{}");
    assert_int_equal(bh_store_commit_user(f->s, &u, &a, 1, &j), BH_OK);

    /* Same op id again with a new state: refused, and nothing of it is written. */
    u.sequence = 3;
    u.total_max_exposure = D("999");
    a.available = D("5");
    bh_store_asset_t b = mk_asset("ETH", "3", "0", "0");
    bh_store_asset_t two[2] = {a, b};
    j = mk_j("u1", 3, "op-x", "deposit", "{}");
    assert_int_equal(bh_store_commit_user(f->s, &u, two, 2, &j), BH_EEXIST);

    assert_int_equal(load_all(f->s, &c), BH_OK);
    assert_int_equal(c.users[0].sequence, 2);
    assert_dec(c.users[0].total_max_exposure, "100");
    assert_int_equal(c.nassets[0], 1);
    assert_dec(c.assets[0][0].available, "1");
    assert_sql(f->path, "SELECT count(*) FROM journal", "2");

    assert_int_equal(bh_store_find_op(f->s, "u1", "op-x", &seq), BH_OK);
    assert_int_equal(seq, 2);
    assert_int_equal(bh_store_find_op(f->s, "u1", "create-user", &seq), BH_OK);
    assert_int_equal(seq, 1);
    assert_int_equal(bh_store_find_op(f->s, "u1", "op-y", &seq), BH_ENOTFOUND);
    assert_int_equal(bh_store_find_op(f->s, "u2", "op-x", &seq), BH_ENOTFOUND);

    /* The same op id for another user is independent. */
    bh_store_user_t v = mk_user("u2", "EUR", "0", 1);
    j = mk_j("u2", 1, "op-x", "create-user", "{}");
    assert_int_equal(bh_store_commit_user(f->s, &v, NULL, 0, &j), BH_OK);
    assert_int_equal(bh_store_find_op(f->s, "u2", "op-x", &seq), BH_OK);
    assert_int_equal(seq, 1);

    /* The store still takes commits after a refused one (the transaction was rolled back). */
    u.sequence = 3;
    j = mk_j("u1", 3, "op-z", "deposit", "{}");
    assert_int_equal(bh_store_commit_user(f->s, &u, two, 2, &j), BH_OK);
    reopen(f);
    assert_int_equal(bh_store_find_op(f->s, "u1", "op-x", &seq), BH_OK);
    assert_int_equal(seq, 2);
    assert_int_equal(bh_store_find_op(f->s, "u1", "op-z", &seq), BH_OK);
    assert_int_equal(seq, 3);
}

static void test_commit_failures_roll_back(void **state) {
    fx_t *f = *state;
    bh_store_user_t u = mk_user("u1", "EUR", "100", 1);
    bh_store_asset_t a = mk_asset("BTC", "1", "0", "0");
    bh_store_journal_t j = mk_j("u1", 1, "create-user", "create-user", "{}");
    col_t c = {0};

    assert_int_equal(bh_store_commit_user(f->s, &u, NULL, 0, &j), BH_OK);
    /* A journal sequence collision is a store failure, not a repeated op. */
    u.total_max_exposure = D("5");
    j = mk_j("u1", 1, "other", "deposit", "{}");
    assert_int_equal(bh_store_commit_user(f->s, &u, &a, 1, &j), BH_ESTORE);
    /* The journal must name the same user as the row. */
    j = mk_j("u2", 2, "other", "deposit", "{}");
    assert_int_equal(bh_store_commit_user(f->s, &u, &a, 1, &j), BH_EINVAL);
    assert_int_equal(bh_store_commit_user(f->s, &u, NULL, 1, &j), BH_EINVAL);
    assert_int_equal(bh_store_commit_user(f->s, NULL, NULL, 0, &j), BH_EINVAL);

    assert_int_equal(load_all(f->s, &c), BH_OK);
    assert_dec(c.users[0].total_max_exposure, "100");
    assert_int_equal(c.nassets[0], 0);
}

static void test_visitor_error_stops(void **state) {
    fx_t *f = *state;
    bh_store_user_t u = mk_user("u1", "EUR", "100", 1);
    bh_store_journal_t j = mk_j("u1", 1, "create-user", "create-user", "{}");
    bh_store_rate_t r = {"EUR", "BTC", D("1")};
    bh_store_visitor_t only_rates;
    col_t c = {0};

    assert_int_equal(bh_store_commit_user(f->s, &u, NULL, 0, &j), BH_OK);
    assert_int_equal(bh_store_put_rate(f->s, &r), BH_OK);
    c.fail_with = -42;
    assert_int_equal(load_all(f->s, &c), -42);
    assert_int_equal(c.nrates, 0); /* stopped before the rates */
    /* NULL callbacks skip that part. */
    memset(&c, 0, sizeof(c));
    memset(&only_rates, 0, sizeof(only_rates));
    only_rates.ud = &c;
    only_rates.rate = col_rate;
    assert_int_equal(bh_store_load(f->s, &only_rates), BH_OK);
    assert_int_equal(c.nrates, 1);
    assert_int_equal(c.nusers, 0);
    /* The store works normally after a stopped load (statements were reset). */
    assert_int_equal(load_all(f->s, &c), BH_OK);
    assert_int_equal(c.nusers, 1);
}

static void exec_raw(const char *path, const char *sql) {
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static void test_corrupt_rows_rejected(void **state) {
    static const char *const bad[] = {
        "UPDATE assets SET available = '0.5x'",
        "UPDATE assets SET available = ''",
        "UPDATE assets SET available = '1e30'",
        "UPDATE assets SET name = 'ABCDEFGHIJKLMNOPQ'",
        "UPDATE users SET sequence = -1",
        "UPDATE users SET sequence = 'x'",
        "UPDATE users SET base_currency = ''",
        "UPDATE users SET user_id = 'u1', total_max_exposure = 'abc'",
        "UPDATE rates SET rate = '1.0000000000000000001'",
        "UPDATE keys SET hash = x'0102'",
    };
    fx_t *f = *state;
    col_t c = {0};

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        bh_store_user_t u = mk_user("u1", "EUR", "100", 1);
        bh_store_asset_t a = mk_asset("BTC", "1", "0", "0");
        bh_store_journal_t j = mk_j("u1", 1, "create-user", "create-user", "{}");
        bh_store_rate_t r = {"EUR", "BTC", D("1")};
        bh_store_key_t k = {"0123456789abcdef", "u1", {1}, false};
        exec_raw(f->path, "PRAGMA foreign_keys=OFF; DELETE FROM journal; DELETE FROM assets; "
                          "DELETE FROM users; DELETE FROM rates; DELETE FROM keys");
        assert_int_equal(bh_store_commit_user(f->s, &u, &a, 1, &j), BH_OK);
        assert_int_equal(bh_store_put_rate(f->s, &r), BH_OK);
        assert_int_equal(bh_store_put_key(f->s, &k), BH_OK);
        assert_int_equal(load_all(f->s, &c), BH_OK);
        exec_raw(f->path, bad[i]);
        assert_int_equal(load_all(f->s, &c), BH_ESTORE);
    }
}

static void test_newer_schema_refused(void **state) {
    fx_t *f = *state;
    char err[256] = "";
    bh_store_t *s = NULL;
    bh_store_close(f->s);
    f->s = NULL;
    exec_raw(f->path, "INSERT INTO schema_version(version) VALUES(2)");
    assert_int_equal(bh_store_open(f->path, &s, err, sizeof(err)), BH_ESTORE);
    assert_null(s);
    assert_non_null(strstr(err, "schema version 2"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_schema_created, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_urls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commit_updates_and_upserts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_op_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commit_failures_roll_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_visitor_error_stops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_rows_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_newer_schema_refused, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
