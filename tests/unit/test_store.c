/* Store (SQLite backend): schema, exact round trips through close + reopen, atomic group
 * commits, op-id idempotency with stored results, journal reads, single-user loads, two
 * handles used from two threads, and corruption handling. Each test gets its own directory. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/buf.h"
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

static void exec_raw(const char *path, const char *sql) {
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

/* Everything that a failed batch could have left behind, as one comparable string. */
static char *db_digest(const char *path) {
    return raw_sql(path,
                   "SELECT (SELECT ifnull(group_concat(user_id||'/'||base_currency||'/'||"
                   "total_max_exposure||'/'||sequence||'/'||deleted, ';'), '') FROM users) || "
                   "'|' ||"
                   "(SELECT ifnull(group_concat(user_id||'/'||name||'/'||available||'/'||allocated"
                   "||'/'||max_exposure, ';'), '') FROM assets) || '|' ||"
                   "(SELECT ifnull(group_concat(currency||'/'||asset||'/'||rate, ';'), '') FROM "
                   "rates) || '|' || (SELECT ifnull(group_concat(user_id||'/'||sequence||'/'||"
                   "op_id||'/'||ifnull(result,'-'), ';'), '') FROM journal)");
}

/* ---- collecting visitor ---- */

#define MAXU 64
#define MAXA 16
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

static int load_one(bh_store_t *s, const char *user_id, col_t *c) {
    bh_store_visitor_t v = {c, col_user, col_rate, col_key};
    int fail = c->fail_with;
    memset(c, 0, sizeof(*c));
    c->fail_with = fail;
    return bh_store_load_user(s, user_id, &v);
}

/* ---- collecting journal reader ---- */

#define MAXJ 64
typedef struct {
    size_t n;
    bh_store_journal_t e[MAXJ]; /* detail/result re-pointed at the copies below */
    char detail[MAXJ][256], result[MAXJ][256];
    size_t stop_after; /* stop with stop_with after this many entries (0: never) */
    int stop_with;
} jcol_t;

static int jcol_fn(void *ud, const bh_store_journal_t *j) {
    jcol_t *c = ud;
    assert_true(c->n < MAXJ);
    c->e[c->n] = *j;
    c->e[c->n].detail = NULL;
    c->e[c->n].result = NULL;
    if (j->detail != NULL) {
        assert_true(strlen(j->detail) < sizeof(c->detail[0]));
        strcpy(c->detail[c->n], j->detail);
        c->e[c->n].detail = c->detail[c->n];
    }
    if (j->result != NULL) {
        assert_true(strlen(j->result) < sizeof(c->result[0]));
        strcpy(c->result[c->n], j->result);
        c->e[c->n].result = c->result[c->n];
    }
    c->n++;
    return c->stop_after != 0 && c->n == c->stop_after ? c->stop_with : 0;
}

static int read_j(bh_store_t *s, const char *user, uint64_t since, size_t limit, jcol_t *c) {
    size_t stop_after = c->stop_after;
    int stop_with = c->stop_with;
    memset(c, 0, sizeof(*c));
    c->stop_after = stop_after;
    c->stop_with = stop_with;
    return bh_store_read_journal(s, user, since, limit, jcol_fn, c);
}

/* ---- builders ---- */

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

static bh_store_journal_t mk_jr(const char *user, uint64_t seq, const char *op_id, const char *op,
                                const char *detail, const char *result) {
    bh_store_journal_t j;
    memset(&j, 0, sizeof(j));
    strcpy(j.user_id, user);
    j.sequence = seq;
    strcpy(j.op_id, op_id);
    strcpy(j.op, op);
    j.detail = detail;
    j.result = result;
    j.time_ms = 1700000000123;
    return j;
}

static bh_store_journal_t mk_j(const char *user, uint64_t seq, const char *op_id, const char *op,
                               const char *detail) {
    return mk_jr(user, seq, op_id, op, detail, NULL);
}

static bh_store_rate_t mk_rate(const char *cur, const char *asset, const char *rate) {
    bh_store_rate_t r;
    memset(&r, 0, sizeof(r));
    strcpy(r.currency, cur);
    strcpy(r.asset, asset);
    r.rate = D(rate);
    return r;
}

static bh_store_change_t ch(const bh_store_user_t *u, const bh_store_asset_t *a, size_t na,
                            const bh_store_journal_t *j) {
    bh_store_change_t c;
    memset(&c, 0, sizeof(c));
    c.user = u;
    c.assets = a;
    c.nassets = na;
    c.journal = j;
    return c;
}

static bh_store_change_t ch_rates(const bh_store_rate_t *r, size_t n) {
    bh_store_change_t c;
    memset(&c, 0, sizeof(c));
    c.rates = r;
    c.nrates = n;
    return c;
}

/* A batch of one change: the old commit_user. */
static int commit1(bh_store_t *s, const bh_store_user_t *u, const bh_store_asset_t *a, size_t na,
                   const bh_store_journal_t *j) {
    bh_store_change_t c = ch(u, a, na, j);
    return bh_store_commit_batch(s, &c, 1);
}

static int put_rates(bh_store_t *s, const bh_store_rate_t *r, size_t n) {
    bh_store_change_t c = ch_rates(r, n);
    return bh_store_commit_batch(s, &c, 1);
}

/* ---- schema and open ---- */

static void test_schema_created(void **state) {
    fx_t *f = *state;
    col_t c = {0};
    assert_sql(f->path, "PRAGMA journal_mode", "wal");
    assert_sql(f->path, "SELECT max(version) FROM schema_version", "2");
    assert_sql(f->path,
               "SELECT count(*) FROM sqlite_master WHERE type='table' AND name IN "
               "('users','assets','rates','keys','journal','schema_version')",
               "6");
    assert_sql(f->path,
               "SELECT group_concat(name, ',') FROM pragma_table_info('journal') ORDER BY cid",
               "user_id,sequence,op_id,op,detail,result,time_ms");
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

static void test_other_schema_versions_refused(void **state) {
    fx_t *f = *state;
    char err[256] = "";
    bh_store_t *s = NULL;
    bh_store_close(f->s);
    f->s = NULL;
    exec_raw(f->path, "UPDATE schema_version SET version = 3");
    assert_int_equal(bh_store_open(f->path, &s, err, sizeof(err)), BH_ESTORE);
    assert_null(s);
    assert_non_null(strstr(err, "schema version 3 is newer"));
    /* Version 1 had no journal.result; there is no migration, so it is refused too. */
    exec_raw(f->path, "UPDATE schema_version SET version = 1");
    assert_int_equal(bh_store_open(f->path, &s, err, sizeof(err)), BH_ESTORE);
    assert_null(s);
    assert_non_null(strstr(err, "schema version 1 is older"));
    /* The refused opens changed nothing. */
    assert_sql(f->path, "SELECT group_concat(version) FROM schema_version", "1");
}

/* ---- commit_batch ---- */

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
    bh_store_rate_t r[2] = {mk_rate("EUR", "BTC", "60000.123456789012345678"),
                            mk_rate("EUR", "ETH", "0.000000000000000001")};
    bh_store_key_t k = {"0123456789abcdef", "user-123", {0}, false};
    bh_store_key_t k2 = {"fedcba9876543210", "a.b:c@d_e-f", {0}, true};
    bh_store_change_t batch[3];
    col_t c = {0};

    for (int i = 0; i < 32; i++) {
        k.hash[i] = (uint8_t)(i * 7 + 1);
        k2.hash[i] = (uint8_t)(255 - i);
    }
    u.deleted = false;
    u2.deleted = true;
    batch[0] = ch(&u, a, 3, &j);
    batch[1] = ch(&u2, NULL, 0, &j2);
    batch[2] = ch_rates(r, 2);
    assert_int_equal(bh_store_commit_batch(f->s, batch, 3), BH_OK);
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
    assert_string_equal(c.rates[1].asset, "ETH");
    assert_dec(c.rates[1].rate, "0.000000000000000001");

    assert_int_equal(c.nkeys, 2);
    assert_string_equal(c.keys[0].key_id, "0123456789abcdef");
    assert_string_equal(c.keys[0].user_id, "user-123");
    assert_memory_equal(c.keys[0].hash, k.hash, 32);
    assert_false(c.keys[0].revoked);
    assert_string_equal(c.keys[1].key_id, "fedcba9876543210");
    assert_memory_equal(c.keys[1].hash, k2.hash, 32);
    assert_true(c.keys[1].revoked);

    /* The journal rows are complete; an absent detail/result is NULL, not "". */
    assert_sql(f->path,
               "SELECT op || ' ' || detail || ' ' || time_ms FROM journal WHERE op_id='op-1'",
               "deposit {\"asset\":\"BTC\"} 1700000000123");
    assert_sql(f->path,
               "SELECT typeof(detail) || typeof(result) FROM journal WHERE "
               "op_id='create-user'",
               "nullnull");
    assert_sql(f->path, "SELECT created_ms > 1600000000000 FROM keys LIMIT 1", "1");
}

/* Decimals are stored as their exact canonical text (never REAL) and come back identical. */
static void test_exact_decimal_text(void **state) {
    static const char *const vals[] = {
        "0",
        "1",
        "-0.000000000000000001",
        "0.1",
        "99999999999999999999.999999999999999999",
        "-99999999999999999999.999999999999999999",
        "12345678901234567890.123456789012345678",
        "0.30000000000000000", /* trailing zeros: stored canonical */
        "1e19",                /* exponent form: stored as plain digits */
    };
    static const char *const want[] = {
        "0",
        "1",
        "-0.000000000000000001",
        "0.1",
        "99999999999999999999.999999999999999999",
        "-99999999999999999999.999999999999999999",
        "12345678901234567890.123456789012345678",
        "0.3",
        "10000000000000000000",
    };
    enum { N = sizeof(vals) / sizeof(vals[0]) };
    fx_t *f = *state;
    bh_store_user_t u = mk_user("u", "EUR", "0", 1);
    bh_store_asset_t a[N];
    bh_store_rate_t r[N];
    bh_store_journal_t j = mk_j("u", 1, "create-user", "create-user", "{}");
    bh_store_change_t batch[2];
    col_t c = {0};
    bh_store_visitor_t only_users = {&c, col_user, NULL, NULL};
    char sql[200];

    for (size_t i = 0; i < N; i++) {
        char name[8];
        snprintf(name, sizeof(name), "A%zu", i);
        a[i] = mk_asset(name, vals[i], vals[N - 1 - i], vals[i]);
        r[i] = mk_rate("EUR", name, vals[i]);
    }
    u.total_max_exposure = D(vals[4]);
    batch[0] = ch(&u, a, N, &j);
    batch[1] = ch_rates(r, N);
    assert_int_equal(bh_store_commit_batch(f->s, batch, 2), BH_OK);
    reopen(f);

    for (size_t i = 0; i < N; i++) {
        snprintf(sql, sizeof(sql), "SELECT available FROM assets WHERE name='A%zu'", i);
        assert_sql(f->path, sql, want[i]);
        snprintf(sql, sizeof(sql), "SELECT allocated FROM assets WHERE name='A%zu'", i);
        assert_sql(f->path, sql, want[N - 1 - i]);
        snprintf(sql, sizeof(sql), "SELECT rate FROM rates WHERE asset='A%zu'", i);
        assert_sql(f->path, sql, want[i]);
    }
    assert_sql(f->path,
               "SELECT group_concat(DISTINCT typeof(available)||typeof(allocated)||"
               "typeof(max_exposure)) FROM assets",
               "texttexttext");
    assert_sql(f->path, "SELECT DISTINCT typeof(rate) FROM rates", "text");
    assert_sql(f->path, "SELECT total_max_exposure || typeof(total_max_exposure) FROM users",
               "99999999999999999999.999999999999999999text");

    memset(&c, 0, sizeof(c));
    assert_int_equal(bh_store_load(f->s, &only_users), BH_OK);
    assert_int_equal(c.nusers, 1);
    assert_int_equal(c.nassets[0], N);
    for (size_t i = 0; i < N; i++) {
        /* Names A0..A8 sort as strings, which here is numeric order. */
        assert_dec(c.assets[0][i].available, want[i]);
        assert_dec(c.assets[0][i].allocated, want[N - 1 - i]);
        assert_dec(c.assets[0][i].max_exposure, want[i]);
    }
}

static void test_commit_updates_and_upserts(void **state) {
    fx_t *f = *state;
    bh_store_user_t u = mk_user("u1", "EUR", "100", 1);
    bh_store_asset_t a = mk_asset("BTC", "1", "0", "0");
    bh_store_journal_t j = mk_j("u1", 1, "create-user", "create-user", "{}");
    bh_store_rate_t r = mk_rate("EUR", "BTC", "1");
    bh_store_key_t k = {"0123456789abcdef", "u1", {1}, false};
    col_t c = {0};

    assert_int_equal(commit1(f->s, &u, NULL, 0, &j), BH_OK);
    u.sequence = 2;
    j = mk_j("u1", 2, "d1", "deposit", "{}");
    assert_int_equal(commit1(f->s, &u, &a, 1, &j), BH_OK);
    u.sequence = 3;
    u.total_max_exposure = D("200.5");
    u.deleted = true;
    a.available = D("0.25");
    a.max_exposure = D("7");
    j = mk_j("u1", 3, "d2", "withdraw", "{}");
    assert_int_equal(commit1(f->s, &u, &a, 1, &j), BH_OK);
    assert_int_equal(put_rates(f->s, &r, 1), BH_OK);
    r.rate = D("2.5");
    assert_int_equal(put_rates(f->s, &r, 1), BH_OK);
    assert_int_equal(bh_store_put_key(f->s, &k), BH_OK);
    /* An update changes the revoked flag only, never the hash or the owner. */
    k.revoked = true;
    k.hash[0] = 99;
    strcpy(k.user_id, "someone-else");
    assert_int_equal(bh_store_put_key(f->s, &k), BH_OK);
    /* A change without a journal entry (e.g. a row fix-up) upserts rows only. */
    u.sequence = 4;
    assert_int_equal(commit1(f->s, &u, NULL, 0, NULL), BH_OK);

    assert_int_equal(load_all(f->s, &c), BH_OK);
    assert_int_equal(c.nusers, 1);
    assert_int_equal(c.users[0].sequence, 4);
    assert_true(c.users[0].deleted);
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

/* Many users and journal entries in one transaction, visible together after reopen; a user
 * changed twice in one batch keeps the later row. */
static void test_batch_many_atomic_reopen(void **state) {
    enum { NU = 40 };
    fx_t *f = *state;
    bh_store_user_t users[NU][2];
    bh_store_asset_t assets[NU][2];
    bh_store_journal_t js[NU][2];
    char ids[NU][24], results[NU][2][64];
    bh_store_rate_t rates[2] = {mk_rate("EUR", "BTC", "60000"), mk_rate("USD", "BTC", "65000.5")};
    bh_store_change_t batch[2 * NU + 1];
    size_t n = 0;
    col_t c = {0};
    jcol_t jc = {0};
    bh_buf_t buf;
    uint64_t seq = 0;

    for (int i = 0; i < NU; i++) {
        snprintf(ids[i], sizeof(ids[i]), "user-%02d", i);
        users[i][0] = mk_user(ids[i], "EUR", "1000", 1);
        js[i][0] =
            mk_jr(ids[i], 1, "create-user", "create-user", "{\"baseCurrency\":\"EUR\"}", NULL);
        snprintf(results[i][0], sizeof(results[i][0]), "{\"sequence\":1,\"data\":{\"u\":%d}}", i);
        js[i][0].result = results[i][0];
        batch[n++] = ch(&users[i][0], NULL, 0, &js[i][0]);
    }
    batch[n++] = ch_rates(rates, 2);
    for (int i = 0; i < NU; i++) {
        char amt[32];
        snprintf(amt, sizeof(amt), "%d.%d7", i, i + 1);
        users[i][1] = users[i][0];
        users[i][1].sequence = 2;
        assets[i][0] = mk_asset("EUR", amt, "0", "0");
        assets[i][1] = mk_asset("BTC", "0", amt, "5");
        js[i][1] = mk_jr(ids[i], 2, "dep-1", "deposit", "{\"asset\":\"EUR\"}", NULL);
        snprintf(results[i][1], sizeof(results[i][1]), "{\"sequence\":2,\"data\":{\"v\":%d}}", i);
        js[i][1].result = results[i][1];
        batch[n++] = ch(&users[i][1], assets[i], 2, &js[i][1]);
    }
    assert_int_equal(bh_store_commit_batch(f->s, batch, n), BH_OK);
    reopen(f);

    assert_sql(f->path, "SELECT count(*) FROM journal", "80");
    assert_sql(f->path, "SELECT count(*) FROM assets", "80");
    assert_int_equal(load_all(f->s, &c), BH_OK);
    assert_int_equal(c.nusers, NU);
    assert_int_equal(c.nrates, 2);
    assert_dec(c.rates[1].rate, "65000.5");
    for (int i = 0; i < NU; i++) {
        char amt[32];
        snprintf(amt, sizeof(amt), "%d.%d7", i, i + 1);
        assert_string_equal(c.users[i].user_id, ids[i]);
        assert_int_equal(c.users[i].sequence, 2);
        assert_int_equal(c.nassets[i], 2);
        assert_string_equal(c.assets[i][0].name, "BTC");
        assert_dec(c.assets[i][0].allocated, amt);
        assert_dec(c.assets[i][0].max_exposure, "5");
        assert_string_equal(c.assets[i][1].name, "EUR");
        assert_dec(c.assets[i][1].available, amt);

        assert_int_equal(read_j(f->s, ids[i], 0, 100, &jc), BH_OK);
        assert_int_equal(jc.n, 2);
        assert_int_equal(jc.e[0].sequence, 1);
        assert_string_equal(jc.e[0].result, results[i][0]);
        assert_int_equal(jc.e[1].sequence, 2);
        assert_string_equal(jc.e[1].op_id, "dep-1");
        assert_string_equal(jc.e[1].result, results[i][1]);

        bh_buf_init(&buf, 0);
        assert_int_equal(bh_store_find_op(f->s, ids[i], "dep-1", &seq, &buf), BH_OK);
        assert_int_equal(seq, 2);
        assert_string_equal(buf.data, results[i][1]);
        bh_buf_free(&buf);
    }
}

/* The 3rd change repeats an op id: BH_EEXIST and nothing of the batch is written, neither the
 * earlier changes nor the rates; the store keeps working afterwards. */
static void test_batch_duplicate_writes_nothing(void **state) {
    fx_t *f = *state;
    bh_store_user_t u1 = mk_user("u1", "EUR", "100", 1);
    bh_store_journal_t j1 = mk_jr("u1", 1, "create-user", "create-user", "{}", "{\"sequence\":1}");
    bh_store_asset_t a1 = mk_asset("BTC", "5", "0", "0");
    bh_store_user_t u1b = mk_user("u1", "EUR", "100", 2);
    bh_store_journal_t j1b = mk_jr("u1", 2, "dup", "deposit", "{}", "{\"sequence\":2}");
    /* The attempted batch. */
    bh_store_user_t u2 = mk_user("u2", "USD", "7", 1);
    bh_store_journal_t j2 = mk_jr("u2", 1, "create-user", "create-user", "{}", "new");
    bh_store_rate_t r = mk_rate("EUR", "BTC", "123");
    bh_store_user_t u1c = mk_user("u1", "EUR", "999", 3);
    bh_store_asset_t a1c = mk_asset("BTC", "77", "0", "0");
    bh_store_journal_t j1c = mk_jr("u1", 3, "dup", "deposit", "{}", "second");
    bh_store_user_t u3 = mk_user("u3", "EUR", "0", 1);
    bh_store_journal_t j3 = mk_jr("u3", 1, "create-user", "create-user", "{}", "x");
    bh_store_change_t batch[4];
    char *before, *after;
    col_t c = {0};
    uint64_t seq = 0;

    assert_int_equal(commit1(f->s, &u1, NULL, 0, &j1), BH_OK);
    assert_int_equal(commit1(f->s, &u1b, &a1, 1, &j1b), BH_OK);
    before = db_digest(f->path);
    assert_non_null(before);

    batch[0] = ch(&u2, NULL, 0, &j2);
    batch[1] = ch_rates(&r, 1);
    batch[2] = ch(&u1c, &a1c, 1, &j1c); /* "dup" is already journaled for u1 */
    batch[3] = ch(&u3, NULL, 0, &j3);
    assert_int_equal(bh_store_commit_batch(f->s, batch, 4), BH_EEXIST);
    after = db_digest(f->path);
    assert_string_equal(after, before);
    free(after);
    assert_int_equal(load_one(f->s, "u2", &c), BH_ENOTFOUND);
    assert_int_equal(load_all(f->s, &c), BH_OK);
    assert_int_equal(c.nusers, 1);
    assert_int_equal(c.nrates, 0);
    assert_int_equal(c.users[0].sequence, 2);
    assert_dec(c.assets[0][0].available, "5");

    /* A duplicate inside the batch itself (3rd change repeats the 1st's op id) is the same. */
    j1c = mk_jr("u1", 3, "fresh", "deposit", "{}", "a");
    bh_store_journal_t j1d = mk_jr("u1", 4, "fresh", "deposit", "{}", "b");
    bh_store_user_t u1d = mk_user("u1", "EUR", "999", 4);
    batch[0] = ch(&u1c, &a1c, 1, &j1c);
    batch[1] = ch(&u2, NULL, 0, &j2);
    batch[2] = ch(&u1d, NULL, 0, &j1d);
    assert_int_equal(bh_store_commit_batch(f->s, batch, 3), BH_EEXIST);
    after = db_digest(f->path);
    assert_string_equal(after, before);
    free(after);
    assert_int_equal(bh_store_find_op(f->s, "u1", "fresh", &seq, NULL), BH_ENOTFOUND);

    /* Still true after reopen (nothing was half-committed to the WAL). */
    reopen(f);
    after = db_digest(f->path);
    assert_string_equal(after, before);
    free(after);

    /* The transaction was rolled back: the next batch commits normally. */
    batch[2] = ch(&u3, NULL, 0, &j3);
    assert_int_equal(bh_store_commit_batch(f->s, batch, 3), BH_OK);
    assert_int_equal(bh_store_find_op(f->s, "u1", "fresh", &seq, NULL), BH_OK);
    assert_int_equal(seq, 3);
    assert_int_equal(bh_store_find_op(f->s, "u1", "dup", &seq, NULL), BH_OK);
    assert_int_equal(seq, 2);
    assert_int_equal(load_one(f->s, "u2", &c), BH_OK);
    assert_int_equal(load_one(f->s, "u3", &c), BH_OK);
    free(before);
}

/* Failures other than a repeated op id are BH_ESTORE, still all or nothing. */
static void test_batch_store_failures(void **state) {
    fx_t *f = *state;
    bh_store_user_t u = mk_user("u1", "EUR", "100", 1);
    bh_store_asset_t a = mk_asset("BTC", "1", "0", "0");
    bh_store_journal_t j = mk_j("u1", 1, "create-user", "create-user", "{}");
    bh_store_user_t u2 = mk_user("u2", "EUR", "0", 1);
    bh_store_journal_t j2 = mk_j("u2", 1, "create-user", "create-user", "{}");
    bh_store_journal_t jx;
    bh_store_change_t batch[2];
    char *before, *after;

    assert_int_equal(commit1(f->s, &u, NULL, 0, &j), BH_OK);
    before = db_digest(f->path);

    /* A journal sequence collision is a store failure, not a repeated op. */
    u.total_max_exposure = D("5");
    jx = mk_j("u1", 1, "other", "deposit", "{}");
    batch[0] = ch(&u2, NULL, 0, &j2);
    batch[1] = ch(&u, &a, 1, &jx);
    assert_int_equal(bh_store_commit_batch(f->s, batch, 2), BH_ESTORE);
    /* A journal entry alone for a user without a row violates the foreign key. */
    jx = mk_j("ghost", 1, "op", "deposit", "{}");
    batch[1] = ch(NULL, NULL, 0, &jx);
    assert_int_equal(bh_store_commit_batch(f->s, batch, 2), BH_ESTORE);
    after = db_digest(f->path);
    assert_string_equal(after, before);
    free(after);

    /* A journal entry alone for an existing user is fine. */
    jx = mk_j("u1", 2, "note", "deposit", NULL);
    batch[1] = ch(NULL, NULL, 0, &jx);
    assert_int_equal(bh_store_commit_batch(f->s, batch, 2), BH_OK);
    assert_sql(f->path, "SELECT count(*) FROM journal", "3");
    free(before);
}

/* Malformed changes are refused before anything is written, wherever they are in the batch. */
static void test_batch_invalid(void **state) {
    fx_t *f = *state;
    bh_store_user_t u = mk_user("u1", "EUR", "100", 1);
    bh_store_asset_t a = mk_asset("BTC", "1", "0", "0");
    bh_store_journal_t j = mk_j("u1", 1, "create-user", "create-user", "{}");
    bh_store_rate_t r = mk_rate("EUR", "BTC", "1");
    bh_store_user_t ok_u = mk_user("ok", "EUR", "0", 1);
    bh_store_journal_t ok_j = mk_j("ok", 1, "create-user", "create-user", "{}");
    bh_store_user_t bu;
    bh_store_asset_t ba;
    bh_store_journal_t bj;
    bh_store_rate_t br;
    bh_store_change_t batch[2], bad;
    char *before, *after;

    before = db_digest(f->path);
    assert_int_equal(bh_store_commit_batch(NULL, batch, 1), BH_EINVAL);
    assert_int_equal(bh_store_commit_batch(f->s, NULL, 1), BH_EINVAL);
    assert_int_equal(bh_store_commit_batch(f->s, NULL, 0), BH_OK); /* nothing to do */
    batch[0] = ch(&ok_u, NULL, 0, &ok_j);

    for (int i = 0; i < 17; i++) {
        bu = u;
        ba = a;
        bj = j;
        br = r;
        bad = ch(&bu, &ba, 1, &bj);
        switch (i) {
        case 0:
            bad.assets = NULL;
            break; /* nassets without assets */
        case 1:
            bad.user = NULL;
            break; /* assets without a user */
        case 2:
            bad.rates = NULL;
            bad.nrates = 1;
            break; /* nrates without rates */
        case 3:
            strcpy(bj.user_id, "u2");
            break; /* journal of another user */
        case 4:
            bu.sequence = (uint64_t)INT64_MAX + 1;
            break; /* beyond SQLite's integers */
        case 5:
            bj.sequence = UINT64_MAX;
            break;
        case 6:
            bu.user_id[0] = '\0';
            break; /* empty strings */
        case 7:
            bu.base_currency[0] = '\0';
            break;
        case 8:
            ba.name[0] = '\0';
            break;
        case 9:
            bj.op_id[0] = '\0';
            break;
        case 10:
            bj.op[0] = '\0';
            break;
        case 11:
            bad = ch_rates(&br, 1);
            br.asset[0] = '\0';
            break;
        case 12:
            bad = ch_rates(&br, 1);
            br.currency[0] = '\0';
            break;
        case 13:
            memset(bu.user_id, 'x', sizeof(bu.user_id));
            break; /* unterminated */
        case 14:
            memset(ba.name, 'X', sizeof(ba.name));
            break;
        case 15:
            memset(bj.op, 'y', sizeof(bj.op));
            break;
        case 16:
            bad = ch_rates(&br, 1);
            memset(br.asset, 'Z', sizeof(br.asset));
            break;
        }
        /* The valid change comes first: it must not be written either. */
        batch[1] = bad;
        assert_int_equal(bh_store_commit_batch(f->s, batch, 2), BH_EINVAL);
        after = db_digest(f->path);
        assert_string_equal(after, before);
        free(after);
    }
    /* Sanity: the fixture itself is valid. */
    batch[1] = ch(&u, &a, 1, &j);
    assert_int_equal(bh_store_commit_batch(f->s, batch, 2), BH_OK);
    free(before);
}

/* ---- find_op ---- */

static void test_find_op_result(void **state) {
    fx_t *f = *state;
    const char *res1 =
        "{\"sequence\":1,\"data\":{\"userId\":\"u1\",\"note\":\"caf\xc3\xa9 \\\"q\\\" "
        "\\u0001\",\"amount\":\"0.000000000000000001\"}}";
    bh_store_user_t u = mk_user("u1", "EUR", "100", 1);
    bh_store_journal_t j = mk_jr("u1", 1, "create-user", "create-user", "{}", res1);
    bh_store_journal_t j2, j3;
    bh_buf_t buf, small;
    char *big;
    size_t bign = 200000;
    uint64_t seq = 0;

    assert_int_equal(commit1(f->s, &u, NULL, 0, &j), BH_OK);
    /* A large result (a user with many assets) round-trips byte for byte. */
    big = malloc(bign + 1);
    assert_non_null(big);
    for (size_t i = 0; i < bign; i++)
        big[i] = (char)('a' + i % 26);
    big[0] = '{';
    big[bign - 1] = '}';
    big[bign] = '\0';
    u.sequence = 2;
    j2 = mk_jr("u1", 2, "big", "deposit", "{}", big);
    assert_int_equal(commit1(f->s, &u, NULL, 0, &j2), BH_OK);
    u.sequence = 3;
    j3 = mk_jr("u1", 3, "no-result", "deposit", "{}", NULL);
    assert_int_equal(commit1(f->s, &u, NULL, 0, &j3), BH_OK);
    reopen(f);

    bh_buf_init(&buf, 0);
    assert_int_equal(bh_store_find_op(f->s, "u1", "create-user", &seq, &buf), BH_OK);
    assert_int_equal(seq, 1);
    assert_int_equal(buf.len, strlen(res1));
    assert_string_equal(buf.data, res1);
    /* The result is appended, not substituted. */
    bh_buf_reset(&buf);
    assert_int_equal(bh_buf_appends(&buf, "prefix:"), BH_OK);
    assert_int_equal(bh_store_find_op(f->s, "u1", "create-user", &seq, &buf), BH_OK);
    assert_int_equal(buf.len, 7 + strlen(res1));
    assert_memory_equal(buf.data, "prefix:", 7);
    assert_string_equal(buf.data + 7, res1);

    bh_buf_reset(&buf);
    assert_int_equal(bh_store_find_op(f->s, "u1", "big", &seq, &buf), BH_OK);
    assert_int_equal(seq, 2);
    assert_int_equal(buf.len, bign);
    assert_memory_equal(buf.data, big, bign + 1);

    /* No stored result: BH_OK, nothing appended. NULL result and NULL sequence are allowed. */
    bh_buf_reset(&buf);
    assert_int_equal(bh_store_find_op(f->s, "u1", "no-result", &seq, &buf), BH_OK);
    assert_int_equal(seq, 3);
    assert_int_equal(buf.len, 0);
    seq = 0;
    assert_int_equal(bh_store_find_op(f->s, "u1", "big", &seq, NULL), BH_OK);
    assert_int_equal(seq, 2);
    assert_int_equal(bh_store_find_op(f->s, "u1", "big", NULL, NULL), BH_OK);

    /* Absent: BH_ENOTFOUND, buffer and sequence untouched. Ids are exact (no LIKE, no case
     * folding) and per user. */
    bh_buf_reset(&buf);
    assert_int_equal(bh_buf_appends(&buf, "keep"), BH_OK);
    seq = 42;
    assert_int_equal(bh_store_find_op(f->s, "u1", "BIG", &seq, &buf), BH_ENOTFOUND);
    assert_int_equal(bh_store_find_op(f->s, "u1", "bi%", &seq, &buf), BH_ENOTFOUND);
    assert_int_equal(bh_store_find_op(f->s, "u2", "big", &seq, &buf), BH_ENOTFOUND);
    assert_int_equal(bh_store_find_op(f->s, "", "", &seq, &buf), BH_ENOTFOUND);
    assert_int_equal(seq, 42);
    assert_string_equal(buf.data, "keep");

    /* A capped buffer too small for the result: BH_ETOOBIG, buffer unchanged, store usable. */
    bh_buf_init(&small, 16);
    assert_int_equal(bh_buf_appends(&small, "ab"), BH_OK);
    seq = 42;
    assert_int_equal(bh_store_find_op(f->s, "u1", "create-user", &seq, &small), BH_ETOOBIG);
    assert_int_equal(seq, 42);
    assert_int_equal(small.len, 2);
    assert_string_equal(small.data, "ab");
    assert_int_equal(bh_store_find_op(f->s, "u1", "create-user", &seq, NULL), BH_OK);

    assert_int_equal(bh_store_find_op(NULL, "u1", "x", &seq, NULL), BH_EINVAL);
    assert_int_equal(bh_store_find_op(f->s, NULL, "x", &seq, NULL), BH_EINVAL);
    assert_int_equal(bh_store_find_op(f->s, "u1", NULL, &seq, NULL), BH_EINVAL);
    bh_buf_free(&small);
    bh_buf_free(&buf);
    free(big);
}

static void test_duplicate_op_id_per_user(void **state) {
    fx_t *f = *state;
    bh_store_user_t u = mk_user("u1", "EUR", "100", 1);
    bh_store_journal_t j = mk_jr("u1", 1, "op-x", "create-user", "{}", "first");
    bh_store_user_t v = mk_user("u2", "EUR", "0", 1);
    bh_store_journal_t jv = mk_jr("u2", 1, "op-x", "create-user", "{}", "other user");
    bh_buf_t buf;
    uint64_t seq = 0;

    assert_int_equal(commit1(f->s, &u, NULL, 0, &j), BH_OK);
    /* The same op id for another user is independent. */
    assert_int_equal(commit1(f->s, &v, NULL, 0, &jv), BH_OK);
    /* A repeat keeps the first result. */
    u.sequence = 2;
    j = mk_jr("u1", 2, "op-x", "deposit", "{}", "second");
    assert_int_equal(commit1(f->s, &u, NULL, 0, &j), BH_EEXIST);
    bh_buf_init(&buf, 0);
    assert_int_equal(bh_store_find_op(f->s, "u1", "op-x", &seq, &buf), BH_OK);
    assert_int_equal(seq, 1);
    assert_string_equal(buf.data, "first");
    bh_buf_reset(&buf);
    assert_int_equal(bh_store_find_op(f->s, "u2", "op-x", &seq, &buf), BH_OK);
    assert_string_equal(buf.data, "other user");
    bh_buf_free(&buf);
}

/* The WAL gathering under the SQLite handle: commits of every size land in the file before
 * commit_batch returns (a separate plain connection sees them while the store is still open,
 * WAL not checkpointed), including one larger than the gather buffer (written through in
 * chunks), many small commits in a row, and a rewrite after a failed batch. */
static void test_wal_gathering(void **state) {
    enum { NBIG = 24, BIG = 400 * 1024 };
    fx_t *f = *state;
    bh_store_user_t u = mk_user("u1", "EUR", "0", 1);
    bh_store_journal_t j = mk_j("u1", 1, "create-user", "create-user", "{}");
    bh_store_user_t us[NBIG];
    bh_store_journal_t js[NBIG];
    bh_store_change_t batch[NBIG];
    char ids[NBIG][16], *big = malloc(BIG + 1);
    char want[64];

    assert_non_null(big);
    assert_int_equal(commit1(f->s, &u, NULL, 0, &j), BH_OK);
    assert_sql(f->path, "SELECT count(*) FROM journal", "1");
    /* ~10 MB in one transaction: past the 8 MiB gather buffer. */
    memset(big, 'x', BIG);
    big[BIG] = '\0';
    for (int i = 0; i < NBIG; i++) {
        snprintf(ids[i], sizeof ids[i], "big-%d", i);
        us[i] = mk_user("u1", "EUR", "0", (uint64_t)i + 2);
        js[i] = mk_jr("u1", (uint64_t)i + 2, ids[i], "deposit", "{}", big);
        batch[i] = ch(&us[i], NULL, 0, &js[i]);
    }
    assert_int_equal(bh_store_commit_batch(f->s, batch, NBIG), BH_OK);
    snprintf(want, sizeof want, "%d|%d", NBIG + 1, NBIG * BIG);
    assert_sql(f->path, "SELECT count(*) || '|' || sum(length(ifnull(result, ''))) FROM journal",
               want);
    /* Many small commits, each visible at once. */
    for (int i = 0; i < 200; i++) {
        char op[16];
        snprintf(op, sizeof op, "s-%d", i);
        u.sequence = (uint64_t)NBIG + 2 + (uint64_t)i;
        j = mk_j("u1", u.sequence, op, "deposit", "{}");
        assert_int_equal(commit1(f->s, &u, NULL, 0, &j), BH_OK);
        if (i % 50 == 49) {
            snprintf(want, sizeof want, "%d", NBIG + 2 + i);
            assert_sql(f->path, "SELECT count(*) FROM journal", want);
        }
    }
    /* A failed batch (repeated op id, after other rows were written in the transaction)
     * leaves nothing, and the next commit reuses the log space it had taken. */
    us[0] = mk_user("u1", "EUR", "0", (uint64_t)NBIG + 202);
    js[0] = mk_jr("u1", (uint64_t)NBIG + 202, "fresh", "deposit", "{}", big);
    us[1] = us[0];
    us[1].sequence++;
    js[1] = mk_jr("u1", us[1].sequence, "s-3", "deposit", "{}", big);
    batch[0] = ch(&us[0], NULL, 0, &js[0]);
    batch[1] = ch(&us[1], NULL, 0, &js[1]);
    assert_int_equal(bh_store_commit_batch(f->s, batch, 2), BH_EEXIST);
    assert_int_equal(bh_store_commit_batch(f->s, batch, 1), BH_OK);
    snprintf(want, sizeof want, "%d|%d", NBIG + 202, (NBIG + 1) * BIG);
    assert_sql(f->path, "SELECT count(*) || '|' || sum(length(ifnull(result, ''))) FROM journal",
               want);
    assert_sql(f->path, "PRAGMA integrity_check", "ok");
    reopen(f);
    assert_sql(f->path, "SELECT count(*) FROM journal WHERE op_id = 'fresh'", "1");
    free(big);
}

/* ---- visit_ops ---- */

typedef struct {
    int ncount;
    uint64_t count;
    char seen[1024];
    int nops, stop_after;
} opcol_t;

static int op_count(void *ud, uint64_t n) {
    opcol_t *c = ud;
    c->ncount++;
    c->count = n;
    return c->nops; /* 0: count comes before any op */
}

static int op_seen(void *ud, const char *user_id, const char *op_id) {
    opcol_t *c = ud;
    size_t len = strlen(c->seen);
    snprintf(c->seen + len, sizeof c->seen - len, "%s/%s;", user_id, op_id);
    return ++c->nops == c->stop_after ? 42 : 0;
}

/* Sorted "user/op;" items, so the check does not depend on the visiting order. */
static void sort_items(char *s) {
    char *items[64], buf[1024];
    size_t n = 0;
    for (char *p = strtok(s, ";"); p && n < 64; p = strtok(NULL, ";"))
        items[n++] = strdup(p);
    for (size_t i = 1; i < n; i++)
        for (size_t k = i; k > 0 && strcmp(items[k - 1], items[k]) > 0; k--) {
            char *t = items[k];
            items[k] = items[k - 1];
            items[k - 1] = t;
        }
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        strcat(buf, items[i]);
        strcat(buf, ";");
        free(items[i]);
    }
    strcpy(s, buf);
}

static void test_visit_ops(void **state) {
    fx_t *f = *state;
    bh_store_user_t u = mk_user("u1", "EUR", "100", 1);
    bh_store_user_t v = mk_user("u2", "EUR", "0", 1);
    bh_store_journal_t j1 = mk_j("u1", 1, "create-user", "create-user", "{}");
    bh_store_journal_t j2 = mk_j("u2", 1, "create-user", "create-user", "{}");
    bh_store_journal_t j3 = mk_j("u1", 2, "op x/ \"1\"", "deposit", "{}");
    opcol_t c;
    bh_store_op_visitor_t ov = {.ud = &c, .count = op_count, .op = op_seen};

    memset(&c, 0, sizeof c);
    assert_int_equal(bh_store_visit_ops(f->s, &ov), BH_OK);
    assert_int_equal(c.ncount, 1);
    assert_int_equal(c.count, 0);
    assert_int_equal(c.nops, 0);

    assert_int_equal(commit1(f->s, &u, NULL, 0, &j1), BH_OK);
    assert_int_equal(commit1(f->s, &v, NULL, 0, &j2), BH_OK);
    u.sequence = 2;
    assert_int_equal(commit1(f->s, &u, NULL, 0, &j3), BH_OK);
    reopen(f);
    memset(&c, 0, sizeof c);
    assert_int_equal(bh_store_visit_ops(f->s, &ov), BH_OK);
    assert_int_equal(c.ncount, 1);
    assert_int_equal(c.count, 3);
    assert_int_equal(c.nops, 3);
    sort_items(c.seen);
    assert_string_equal(c.seen, "u1/create-user;u1/op x/ \"1\";u2/create-user;");

    /* Without a count callback; a non-zero return stops the walk and is returned. */
    memset(&c, 0, sizeof c);
    c.stop_after = 2;
    ov.count = NULL;
    assert_int_equal(bh_store_visit_ops(f->s, &ov), 42);
    assert_int_equal(c.nops, 2);
    assert_int_equal(c.ncount, 0);
    /* The handle is usable afterwards (the read transaction ended). */
    u.sequence = 3;
    j3 = mk_j("u1", 3, "after", "deposit", "{}");
    assert_int_equal(commit1(f->s, &u, NULL, 0, &j3), BH_OK);
    memset(&c, 0, sizeof c);
    assert_int_equal(bh_store_visit_ops(f->s, &ov), BH_OK);
    assert_int_equal(c.nops, 4);

    assert_int_equal(bh_store_visit_ops(NULL, &ov), BH_EINVAL);
    assert_int_equal(bh_store_visit_ops(f->s, NULL), BH_EINVAL);
    ov.op = NULL;
    assert_int_equal(bh_store_visit_ops(f->s, &ov), BH_EINVAL);

    /* A malformed op id stops the walk as corruption. */
    exec_raw(f->path, "UPDATE journal SET op_id = '' WHERE op_id = 'after'");
    ov.op = op_seen;
    memset(&c, 0, sizeof c);
    assert_int_equal(bh_store_visit_ops(f->s, &ov), BH_ESTORE);
}

/* ---- read_journal ---- */

static void test_read_journal(void **state) {
    fx_t *f = *state;
    /* Sequences committed out of order, interleaved with another user's entries. */
    static const int order[10] = {4, 1, 9, 2, 10, 3, 7, 5, 8, 6};
    bh_store_user_t u = mk_user("u1", "EUR", "0", 10);
    bh_store_user_t o = mk_user("u0", "EUR", "0", 10);
    bh_store_journal_t js[10], jo[10];
    char opids[10][16], details[10][48], results[10][48], oids[10][16];
    bh_store_change_t batch[20];
    jcol_t c = {0};

    for (int i = 0; i < 10; i++) {
        int s = order[i];
        snprintf(opids[i], sizeof(opids[i]), "op-%d", s);
        snprintf(details[i], sizeof(details[i]), "{\"asset\":\"BTC\",\"amount\":\"%d.5\"}", s);
        snprintf(results[i], sizeof(results[i]), "{\"sequence\":%d,\"data\":{}}", s);
        js[i] = mk_jr("u1", (uint64_t)s, opids[i], s == 1 ? "create-user" : "deposit",
                      s == 6 ? NULL : details[i], s == 7 ? NULL : results[i]);
        js[i].time_ms = 1700000000000 + s;
        snprintf(oids[i], sizeof(oids[i]), "o-%d", i);
        jo[i] = mk_j("u0", (uint64_t)i + 1, oids[i], "deposit", "{}");
    }
    for (int i = 0; i < 10; i++) {
        batch[2 * i] = ch(&o, NULL, 0, &jo[i]);
        batch[2 * i + 1] = ch(&u, NULL, 0, &js[i]);
    }
    assert_int_equal(bh_store_commit_batch(f->s, batch, 5), BH_OK);
    assert_int_equal(bh_store_commit_batch(f->s, batch + 5, 15), BH_OK);
    reopen(f);

    assert_int_equal(read_j(f->s, "u1", 0, 1000, &c), BH_OK);
    assert_int_equal(c.n, 10);
    for (size_t i = 0; i < 10; i++) {
        char want[48];
        uint64_t s = i + 1;
        assert_int_equal(c.e[i].sequence, s);
        assert_string_equal(c.e[i].user_id, "u1");
        snprintf(want, sizeof(want), "op-%d", (int)s);
        assert_string_equal(c.e[i].op_id, want);
        assert_string_equal(c.e[i].op, s == 1 ? "create-user" : "deposit");
        assert_int_equal(c.e[i].time_ms, 1700000000000 + (int64_t)s);
        if (s == 6) {
            assert_null(c.e[i].detail);
        } else {
            snprintf(want, sizeof(want), "{\"asset\":\"BTC\",\"amount\":\"%d.5\"}", (int)s);
            assert_string_equal(c.e[i].detail, want);
        }
        if (s == 7) {
            assert_null(c.e[i].result);
        } else {
            snprintf(want, sizeof(want), "{\"sequence\":%d,\"data\":{}}", (int)s);
            assert_string_equal(c.e[i].result, want);
        }
    }

    /* since is exclusive, limit caps the count, order stays ascending. */
    assert_int_equal(read_j(f->s, "u1", 3, 4, &c), BH_OK);
    assert_int_equal(c.n, 4);
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(c.e[i].sequence, 4 + i);
    assert_int_equal(read_j(f->s, "u1", 9, 1000, &c), BH_OK);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.e[0].sequence, 10);
    assert_int_equal(read_j(f->s, "u1", 10, 1000, &c), BH_OK);
    assert_int_equal(c.n, 0);
    assert_int_equal(read_j(f->s, "u1", UINT64_MAX, 1000, &c), BH_OK);
    assert_int_equal(c.n, 0);
    assert_int_equal(read_j(f->s, "u1", (uint64_t)INT64_MAX, 1000, &c), BH_OK);
    assert_int_equal(c.n, 0);
    assert_int_equal(read_j(f->s, "u1", 0, 0, &c), BH_OK);
    assert_int_equal(c.n, 0);
    assert_int_equal(read_j(f->s, "u1", 0, 1, &c), BH_OK);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.e[0].sequence, 1);
    assert_int_equal(read_j(f->s, "u1", 0, SIZE_MAX, &c), BH_OK);
    assert_int_equal(c.n, 10);
    /* The other user's journal is separate; unknown users have an empty journal. */
    assert_int_equal(read_j(f->s, "u0", 0, 1000, &c), BH_OK);
    assert_int_equal(c.n, 10);
    assert_string_equal(c.e[9].op_id, "o-9");
    assert_int_equal(read_j(f->s, "nobody", 0, 1000, &c), BH_OK);
    assert_int_equal(c.n, 0);
    assert_int_equal(read_j(f->s, "", 0, 1000, &c), BH_OK);
    assert_int_equal(c.n, 0);
    {
        char longid[200];
        memset(longid, 'u', sizeof(longid) - 1);
        longid[sizeof(longid) - 1] = '\0';
        assert_int_equal(read_j(f->s, longid, 0, 1000, &c), BH_OK);
        assert_int_equal(c.n, 0);
    }

    /* A non-zero callback return stops the walk and is returned as is. */
    c.stop_after = 3;
    c.stop_with = 7;
    assert_int_equal(read_j(f->s, "u1", 0, 1000, &c), 7);
    assert_int_equal(c.n, 3);
    c.stop_with = -42;
    c.stop_after = 1;
    assert_int_equal(read_j(f->s, "u1", 5, 1000, &c), -42);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.e[0].sequence, 6);
    /* The statement was reset: a new walk starts from the beginning. */
    c.stop_after = 0;
    assert_int_equal(read_j(f->s, "u1", 0, 1000, &c), BH_OK);
    assert_int_equal(c.n, 10);

    assert_int_equal(bh_store_read_journal(NULL, "u1", 0, 1, jcol_fn, &c), BH_EINVAL);
    assert_int_equal(bh_store_read_journal(f->s, NULL, 0, 1, jcol_fn, &c), BH_EINVAL);
    assert_int_equal(bh_store_read_journal(f->s, "u1", 0, 1, NULL, &c), BH_EINVAL);
}

/* ---- load_user ---- */

static void test_load_user(void **state) {
    fx_t *f = *state;
    bh_store_user_t u = mk_user("alice", "EUR", "1500", 3);
    bh_store_asset_t a[3] = {mk_asset("USDT", "1", "2", "3"), mk_asset("BTC", "0.5", "0", "10"),
                             mk_asset("ETH", "-4", "1", "0")};
    bh_store_journal_t j = mk_j("alice", 3, "op", "trade", "{}");
    bh_store_user_t b = mk_user("bob", "USD", "0", 1);
    bh_store_journal_t jb = mk_j("bob", 1, "create-user", "create-user", "{}");
    bh_store_rate_t r = mk_rate("EUR", "BTC", "60000");
    bh_store_change_t batch[3] = {ch(&u, a, 3, &j), ch(&b, NULL, 0, &jb), ch_rates(&r, 1)};
    bh_store_visitor_t none = {0};
    col_t c = {0};

    assert_int_equal(bh_store_commit_batch(f->s, batch, 3), BH_OK);
    reopen(f);

    assert_int_equal(load_one(f->s, "alice", &c), BH_OK);
    assert_int_equal(c.nusers, 1);
    assert_int_equal(c.nrates + c.nkeys, 0); /* only the user callback */
    assert_string_equal(c.users[0].user_id, "alice");
    assert_string_equal(c.users[0].base_currency, "EUR");
    assert_dec(c.users[0].total_max_exposure, "1500");
    assert_int_equal(c.users[0].sequence, 3);
    assert_false(c.users[0].deleted);
    assert_int_equal(c.nassets[0], 3);
    assert_string_equal(c.assets[0][0].name, "BTC");
    assert_dec(c.assets[0][0].available, "0.5");
    assert_dec(c.assets[0][0].max_exposure, "10");
    assert_string_equal(c.assets[0][1].name, "ETH");
    assert_dec(c.assets[0][1].available, "-4");
    assert_dec(c.assets[0][1].allocated, "1");
    assert_string_equal(c.assets[0][2].name, "USDT");

    assert_int_equal(load_one(f->s, "bob", &c), BH_OK);
    assert_int_equal(c.nusers, 1);
    assert_string_equal(c.users[0].user_id, "bob");
    assert_int_equal(c.nassets[0], 0);

    /* A deleted user is still a row: found, with the flag. */
    b.deleted = true;
    b.sequence = 2;
    jb = mk_j("bob", 2, "delete-user", "delete-user", "{}");
    assert_int_equal(commit1(f->s, &b, NULL, 0, &jb), BH_OK);
    assert_int_equal(load_one(f->s, "bob", &c), BH_OK);
    assert_true(c.users[0].deleted);
    assert_int_equal(c.users[0].sequence, 2);

    /* Absent: exact id match only. */
    assert_int_equal(load_one(f->s, "carol", &c), BH_ENOTFOUND);
    assert_int_equal(c.nusers, 0);
    assert_int_equal(load_one(f->s, "Alice", &c), BH_ENOTFOUND);
    assert_int_equal(load_one(f->s, "alic", &c), BH_ENOTFOUND);
    assert_int_equal(load_one(f->s, "", &c), BH_ENOTFOUND);

    /* The visitor's return is passed through; a NULL user callback just checks presence. */
    c.fail_with = -99;
    assert_int_equal(load_one(f->s, "alice", &c), -99);
    c.fail_with = 0;
    assert_int_equal(bh_store_load_user(f->s, "alice", &none), BH_OK);
    assert_int_equal(bh_store_load_user(f->s, "carol", &none), BH_ENOTFOUND);
    assert_int_equal(bh_store_load_user(NULL, "alice", &none), BH_EINVAL);
    assert_int_equal(bh_store_load_user(f->s, NULL, &none), BH_EINVAL);
    assert_int_equal(bh_store_load_user(f->s, "alice", NULL), BH_EINVAL);
    /* Works again after all that (statements reset, read transaction closed). */
    assert_int_equal(load_one(f->s, "alice", &c), BH_OK);
    assert_int_equal(c.nassets[0], 3);
    assert_int_equal(commit1(f->s, &u, NULL, 0, NULL), BH_OK);
}

/* ---- rates ---- */

static void test_rates_via_batch(void **state) {
    fx_t *f = *state;
    bh_store_rate_t r[3] = {mk_rate("USD", "BTC", "65000"), mk_rate("EUR", "ETH", "3000.25"),
                            mk_rate("EUR", "BTC", "60000")};
    bh_store_rate_t upd[2] = {mk_rate("EUR", "BTC", "61000.000000000000000001"),
                              mk_rate("EUR", "SOL", "0.5")};
    bh_store_visitor_t only_rates;
    col_t c = {0};

    assert_int_equal(put_rates(f->s, r, 3), BH_OK);
    assert_int_equal(put_rates(f->s, upd, 2), BH_OK);
    /* A rates change with zero rates is a no-op, not an error. */
    assert_int_equal(put_rates(f->s, NULL, 0), BH_OK);
    reopen(f);

    memset(&only_rates, 0, sizeof(only_rates));
    only_rates.ud = &c;
    only_rates.rate = col_rate;
    memset(&c, 0, sizeof(c));
    assert_int_equal(bh_store_load(f->s, &only_rates), BH_OK);
    assert_int_equal(c.nusers, 0);
    assert_int_equal(c.nrates, 4);
    /* Sorted by currency, then asset. */
    assert_string_equal(c.rates[0].currency, "EUR");
    assert_string_equal(c.rates[0].asset, "BTC");
    assert_dec(c.rates[0].rate, "61000.000000000000000001");
    assert_string_equal(c.rates[1].asset, "ETH");
    assert_dec(c.rates[1].rate, "3000.25");
    assert_string_equal(c.rates[2].asset, "SOL");
    assert_dec(c.rates[2].rate, "0.5");
    assert_string_equal(c.rates[3].currency, "USD");
    assert_dec(c.rates[3].rate, "65000");
    assert_sql(f->path, "SELECT rate FROM rates WHERE currency='EUR' AND asset='BTC'",
               "61000.000000000000000001");
}

static void test_visitor_error_stops(void **state) {
    fx_t *f = *state;
    bh_store_user_t u = mk_user("u1", "EUR", "100", 1);
    bh_store_journal_t j = mk_j("u1", 1, "create-user", "create-user", "{}");
    bh_store_rate_t r = mk_rate("EUR", "BTC", "1");
    bh_store_visitor_t only_rates;
    col_t c = {0};

    assert_int_equal(commit1(f->s, &u, NULL, 0, &j), BH_OK);
    assert_int_equal(put_rates(f->s, &r, 1), BH_OK);
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

/* ---- two handles, two threads ---- */

enum { CC_USERS = 4, CC_BATCHES = 120 };

typedef struct {
    bh_store_t *s;
    int rc;            /* first failure of the writer, BH_OK if none */
    atomic_int done;   /* the writer finished */
    atomic_int latest; /* last sequence the writer has committed */
} cc_t;

static void cc_result(char *out, size_t cap, uint64_t seq) {
    snprintf(out, cap, "{\"sequence\":%llu,\"data\":{}}", (unsigned long long)seq);
}

/* Writer thread: each batch moves every user to the next sequence, with its asset and journal
 * entry, in one transaction. No cmocka asserts here (they would longjmp across threads). */
static void *cc_writer(void *arg) {
    cc_t *cc = arg;
    bh_store_user_t users[CC_USERS];
    bh_store_asset_t assets[CC_USERS];
    bh_store_journal_t js[CC_USERS];
    bh_store_change_t batch[CC_USERS];
    char opid[32], result[64];

    for (int b = 2; b <= CC_BATCHES + 1 && cc->rc == BH_OK; b++) {
        snprintf(opid, sizeof(opid), "op-%d", b);
        cc_result(result, sizeof(result), (uint64_t)b);
        for (int i = 0; i < CC_USERS; i++) {
            memset(&users[i], 0, sizeof(users[i]));
            snprintf(users[i].user_id, sizeof(users[i].user_id), "cc-%d", i);
            strcpy(users[i].base_currency, "EUR");
            users[i].sequence = (uint64_t)b;
            memset(&assets[i], 0, sizeof(assets[i]));
            strcpy(assets[i].name, "BTC");
            assets[i].available = bh_dec_from_int(b);
            memset(&js[i], 0, sizeof(js[i]));
            strcpy(js[i].user_id, users[i].user_id);
            js[i].sequence = (uint64_t)b;
            strcpy(js[i].op_id, opid);
            strcpy(js[i].op, "deposit");
            js[i].detail = "{}";
            js[i].result = result;
            batch[i] = ch(&users[i], &assets[i], 1, &js[i]);
        }
        cc->rc = bh_store_commit_batch(cc->s, batch, CC_USERS);
        if (cc->rc == BH_OK)
            atomic_store(&cc->latest, b);
    }
    atomic_store(&cc->done, 1);
    return NULL;
}

typedef struct {
    uint64_t next; /* the sequence the next entry must have */
    int bad;
} cc_walk_t;

static int cc_journal_fn(void *ud, const bh_store_journal_t *j) {
    cc_walk_t *w = ud;
    char want[64];
    cc_result(want, sizeof(want), j->sequence);
    if (j->sequence != w->next || j->result == NULL ||
        (j->sequence > 1 && strcmp(j->result, want) != 0))
        w->bad = 1;
    w->next++;
    return 0;
}

static void test_concurrent_reader_writer(void **state) {
    fx_t *f = *state;
    bh_store_t *reader = NULL;
    char err[256];
    bh_store_user_t users[CC_USERS];
    bh_store_journal_t js[CC_USERS];
    bh_store_change_t batch[CC_USERS];
    cc_t cc;
    pthread_t th;
    int last_seen = 1, iterations = 0, keys = 0, distinct = 0;
    col_t c = {0};
    bh_store_visitor_t users_only = {&c, col_user, NULL, NULL};
    bh_buf_t buf;

    /* Every user starts at sequence 1. */
    for (int i = 0; i < CC_USERS; i++) {
        char id[16];
        snprintf(id, sizeof(id), "cc-%d", i);
        users[i] = mk_user(id, "EUR", "0", 1);
        js[i] = mk_jr(id, 1, "create-user", "create-user", "{}", "{}");
        batch[i] = ch(&users[i], NULL, 0, &js[i]);
    }
    assert_int_equal(bh_store_commit_batch(f->s, batch, CC_USERS), BH_OK);
    assert_int_equal(bh_store_open(f->path, &reader, err, sizeof(err)), BH_OK);

    memset(&cc, 0, sizeof(cc));
    cc.s = f->s;
    cc.rc = BH_OK;
    atomic_init(&cc.done, 0);
    atomic_init(&cc.latest, 1);
    bh_buf_init(&buf, 0);
    assert_int_equal(pthread_create(&th, NULL, cc_writer, &cc), 0);

    /* Read until the writer is done, then once more; every read must see whole batches. */
    for (int final = 0; final < 2; final++) {
        while (final == 1 || !atomic_load(&cc.done)) {
            int floor = atomic_load(&cc.latest);
            uint64_t seq0;
            cc_walk_t w = {1, 0};
            bh_store_key_t k;

            /* One read transaction: all users at the same sequence, assets matching. */
            memset(&c, 0, sizeof(c));
            assert_int_equal(bh_store_load(reader, &users_only), BH_OK);
            assert_int_equal(c.nusers, CC_USERS);
            seq0 = c.users[0].sequence;
            assert_true(seq0 >= (uint64_t)floor); /* committed means visible */
            assert_true(seq0 >= (uint64_t)last_seen);
            for (int i = 0; i < CC_USERS; i++) {
                assert_int_equal(c.users[i].sequence, seq0);
                if (seq0 > 1) {
                    assert_int_equal(c.nassets[i], 1);
                    assert_true(
                        bh_dec_cmp(c.assets[i][0].available, bh_dec_from_int((int64_t)seq0)) == 0);
                }
            }
            distinct += (int)seq0 != last_seen;
            last_seen = (int)seq0;

            /* The journal has no gaps, ends at least at what load saw, results intact. */
            assert_int_equal(bh_store_read_journal(reader, "cc-1", 0, SIZE_MAX, cc_journal_fn, &w),
                             BH_OK);
            assert_int_equal(w.bad, 0);
            assert_true(w.next - 1 >= seq0);

            if (seq0 > 1) {
                char opid[32], want[64];
                uint64_t got = 0;
                snprintf(opid, sizeof(opid), "op-%llu", (unsigned long long)seq0);
                cc_result(want, sizeof(want), seq0);
                bh_buf_reset(&buf);
                assert_int_equal(bh_store_find_op(reader, "cc-3", opid, &got, &buf), BH_OK);
                assert_int_equal(got, seq0);
                assert_string_equal(buf.data, want);
            }

            /* The reader handle also writes keys while the writer commits. */
            memset(&k, 0, sizeof(k));
            snprintf(k.key_id, sizeof(k.key_id), "key-%06d", keys++);
            strcpy(k.user_id, "cc-0");
            k.hash[0] = (uint8_t)keys;
            assert_int_equal(bh_store_put_key(reader, &k), BH_OK);
            iterations++;
            if (final == 1)
                break;
        }
    }
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(cc.rc, BH_OK);
    assert_true(iterations >= 1);
    assert_int_equal(last_seen, CC_BATCHES + 1);
    if (getenv("BH_TEST_VERBOSE") != NULL)
        fprintf(stderr, "concurrent: %d reads, %d distinct sequences seen\n", iterations, distinct);

    /* Everything of both handles is there after reopening. */
    bh_store_close(reader);
    reopen(f);
    users_only.ud = &c;
    memset(&c, 0, sizeof(c));
    assert_int_equal(bh_store_load(f->s, &users_only), BH_OK);
    assert_int_equal(c.nusers, CC_USERS);
    for (int i = 0; i < CC_USERS; i++)
        assert_int_equal(c.users[i].sequence, CC_BATCHES + 1);
    {
        char want[32];
        snprintf(want, sizeof(want), "%d", keys);
        assert_sql(f->path, "SELECT count(*) FROM keys", want);
        snprintf(want, sizeof(want), "%d", CC_USERS * (CC_BATCHES + 1));
        assert_sql(f->path, "SELECT count(*) FROM journal", want);
    }
    bh_buf_free(&buf);
}

/* ---- corruption ---- */

static void test_corrupt_rows_rejected(void **state) {
    static const char *const bad[] = {
        "UPDATE assets SET available = '0.5x'",
        "UPDATE assets SET available = ''",
        "UPDATE assets SET available = '1e30'",
        "UPDATE assets SET name = 'ABCDEFGHIJKLMNOPQ'",
        "UPDATE users SET sequence = -1",
        "UPDATE users SET sequence = 'x'",
        "UPDATE users SET base_currency = ''",
        "UPDATE users SET total_max_exposure = 'abc'",
        "UPDATE rates SET rate = '1.0000000000000000001'",
        "UPDATE keys SET hash = x'0102'",
    };
    fx_t *f = *state;
    col_t c = {0};

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        bh_store_user_t u = mk_user("u1", "EUR", "100", 1);
        bh_store_asset_t a = mk_asset("BTC", "1", "0", "0");
        bh_store_journal_t j = mk_j("u1", 1, "create-user", "create-user", "{}");
        bh_store_rate_t r = mk_rate("EUR", "BTC", "1");
        bh_store_key_t k = {"0123456789abcdef", "u1", {1}, false};
        exec_raw(f->path, "PRAGMA foreign_keys=OFF; DELETE FROM journal; DELETE FROM assets; "
                          "DELETE FROM users; DELETE FROM rates; DELETE FROM keys");
        assert_int_equal(commit1(f->s, &u, &a, 1, &j), BH_OK);
        assert_int_equal(put_rates(f->s, &r, 1), BH_OK);
        assert_int_equal(bh_store_put_key(f->s, &k), BH_OK);
        assert_int_equal(load_all(f->s, &c), BH_OK);
        assert_int_equal(load_one(f->s, "u1", &c), BH_OK);
        exec_raw(f->path, bad[i]);
        assert_int_equal(load_all(f->s, &c), BH_ESTORE);
        if (strncmp(bad[i], "UPDATE users", 12) == 0 || strncmp(bad[i], "UPDATE assets", 13) == 0)
            assert_int_equal(load_one(f->s, "u1", &c), BH_ESTORE);
    }
}

static void test_corrupt_journal_rejected(void **state) {
    static const char *const bad[] = {
        "UPDATE journal SET sequence = 'x' WHERE op_id = 'b'",
        "UPDATE journal SET op_id = '' WHERE op_id = 'b'",
        "UPDATE journal SET op = 'create-user-and-then-some' WHERE op_id = 'b'", /* > 23 */
        "UPDATE journal SET op_id = printf('%065d', 7) WHERE op_id = 'b'",       /* 65 bytes */
        "UPDATE journal SET time_ms = 'yesterday' WHERE op_id = 'b'",
    };
    fx_t *f = *state;
    jcol_t c = {0};

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        bh_store_user_t u = mk_user("u1", "EUR", "100", 2);
        bh_store_journal_t ja = mk_j("u1", 1, "a", "create-user", "{}");
        bh_store_journal_t jb = mk_j("u1", 2, "b", "deposit", "{}");
        bh_store_change_t batch[2] = {ch(&u, NULL, 0, &ja), ch(&u, NULL, 0, &jb)};
        exec_raw(f->path, "PRAGMA foreign_keys=OFF; DELETE FROM journal; DELETE FROM users");
        assert_int_equal(bh_store_commit_batch(f->s, batch, 2), BH_OK);
        assert_int_equal(read_j(f->s, "u1", 0, 10, &c), BH_OK);
        assert_int_equal(c.n, 2);
        exec_raw(f->path, bad[i]);
        /* The good first entry is delivered, then the malformed one stops the walk. */
        assert_int_equal(read_j(f->s, "u1", 0, 10, &c), BH_ESTORE);
        assert_int_equal(c.n, 1);
        assert_int_equal(read_j(f->s, "u1", 0, 1, &c), BH_OK);
    }
    /* A non-integer sequence also fails find_op rather than answering a wrong number. */
    exec_raw(f->path, "UPDATE journal SET sequence = 'x', op_id = 'b' WHERE sequence = 2");
    assert_int_equal(bh_store_find_op(f->s, "u1", "b", NULL, NULL), BH_ESTORE);
    assert_int_equal(bh_store_find_op(f->s, "u1", "a", NULL, NULL), BH_OK);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_schema_created, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_urls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_schema_versions_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_visit_ops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wal_gathering, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exact_decimal_text, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commit_updates_and_upserts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_many_atomic_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_duplicate_writes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_store_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_invalid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_find_op_result, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_op_id_per_user, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_journal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_user, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rates_via_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_visitor_error_stops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_reader_writer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_rows_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_journal_rejected, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
