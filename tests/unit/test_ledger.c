/* Ledger: every operation's success and rejection paths, exposure through rates, exact snapshot
 * bytes, sequence numbers, op-id idempotency, durability (reload gives the same snapshots),
 * listener calls and snapshot lifetimes. Runs on a real SQLite store in a temporary directory. */
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
#include "base/log.h"
#include "ledger/ledger.h"
#include "store/store.h"

#define MAXSEEN 64

typedef struct {
    char dir[64];
    char path[128];
    bh_store_t *s;
    bh_ledger_t *l;
    int calls;
    bh_snapshot_t *seen[MAXSEEN]; /* every snapshot the listener got, acquired */
} fx_t;

static bh_dec_t D(const char *s) {
    bh_dec_t d;
    assert_int_equal(bh_dec_parse(s, strlen(s), &d), BH_OK);
    return d;
}

static void listener(void *ud, const bh_snapshot_t *snap) {
    fx_t *f = ud;
    assert_true(f->calls < MAXSEEN);
    f->seen[f->calls++] = bh_snapshot_acquire(snap);
}

static void open_all(fx_t *f) {
    char err[256];
    assert_int_equal(bh_store_open(f->path, &f->s, err, sizeof(err)), BH_OK);
    assert_int_equal(bh_ledger_open(f->s, &f->l), BH_OK);
    bh_ledger_set_listener(f->l, listener, f);
}

static void close_all(fx_t *f) {
    bh_ledger_close(f->l);
    bh_store_close(f->s);
    f->l = NULL;
    f->s = NULL;
}

static void forget_seen(fx_t *f) {
    for (int i = 0; i < f->calls; i++)
        bh_snapshot_release(f->seen[i]);
    f->calls = 0;
}

static int setup(void **state) {
    fx_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    strcpy(f->dir, "/tmp/bh_ledger_XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/bh.db", f->dir);
    open_all(f);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    static const char *const names[] = {"bh.db", "bh.db-wal", "bh.db-shm"};
    fx_t *f = *state;
    char p[160];
    forget_seen(f);
    close_all(f);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", f->dir, names[i]);
        unlink(p);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

static void reopen(fx_t *f) {
    forget_seen(f);
    close_all(f);
    open_all(f);
}

static bh_op_t mkop(bh_op_kind_t kind, const char *op_id, const char *asset, const char *amount) {
    bh_op_t op;
    memset(&op, 0, sizeof(op));
    op.kind = kind;
    strcpy(op.op_id, op_id);
    strcpy(op.asset, asset);
    op.amount = D(amount);
    return op;
}

/* Apply and check the result code; on success also the returned sequence. */
static void apply(fx_t *f, const char *user, bh_op_kind_t kind, const char *op_id,
                  const char *asset, const char *amount, int want) {
    bh_op_t op = mkop(kind, op_id, asset, amount);
    uint64_t seq = 0;
    bh_snapshot_t *before = bh_ledger_snapshot(f->l, user);
    int calls = f->calls;
    int rc = bh_ledger_apply(f->l, user, &op, &seq);
    bh_snapshot_t *after = bh_ledger_snapshot(f->l, user);

    assert_int_equal(rc, want);
    if (want == BH_OK) {
        assert_non_null(before);
        assert_int_equal(seq, before->sequence + 1);
        assert_int_equal(after->sequence, seq);
        assert_int_equal(f->calls, calls + 1);
        assert_ptr_equal(f->seen[calls], after);
    } else {
        /* A rejected operation changes nothing and publishes nothing. */
        assert_ptr_equal(before, after);
        assert_int_equal(f->calls, calls);
    }
    bh_snapshot_release(before);
    bh_snapshot_release(after);
}

static void assert_json(fx_t *f, const char *user, const char *want) {
    bh_snapshot_t *s = bh_ledger_snapshot(f->l, user);
    assert_non_null(s);
    assert_string_equal(s->json, want);
    assert_int_equal(s->json_len, strlen(want));
    bh_snapshot_release(s);
}

static char *json_of(fx_t *f, const char *user) {
    bh_snapshot_t *s = bh_ledger_snapshot(f->l, user);
    char *j;
    assert_non_null(s);
    j = strdup(s->json);
    bh_snapshot_release(s);
    return j;
}

static uint64_t seq_of(fx_t *f, const char *user) {
    bh_snapshot_t *s = bh_ledger_snapshot(f->l, user);
    uint64_t q;
    assert_non_null(s);
    q = s->sequence;
    bh_snapshot_release(s);
    return q;
}

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
    assert_non_null(got);
    assert_string_equal(got, want);
    free(got);
}

/* ---- tests ---- */

static void test_create_user(void **state) {
    fx_t *f = *state;
    char long_id[BH_ID_MAX + 2];

    assert_null(bh_ledger_snapshot(f->l, "user-123"));
    assert_int_equal(bh_ledger_create_user(f->l, "user-123", "EUR", D("1500")), BH_OK);
    assert_int_equal(f->calls, 1);
    assert_json(f, "user-123",
                "{\"userId\":\"user-123\",\"sequence\":1,\"assets\":[],\"baseCurrency\":\"EUR\","
                "\"totalCurrentExposure\":0,\"totalMaxExposure\":1500,\"deleted\":false}");
    assert_string_equal(f->seen[0]->user_id, "user-123");
    assert_int_equal(f->seen[0]->sequence, 1);
    assert_sql(
        f->path, "SELECT op || ' ' || op_id || ' ' || sequence || ' ' || detail FROM journal",
        "create-user create-user 1 {\"baseCurrency\":\"EUR\",\"totalMaxExposure\":\"1500\"}");

    assert_int_equal(bh_ledger_create_user(f->l, "user-123", "USD", D("1")), BH_EEXIST);
    assert_int_equal(f->calls, 1);

    memset(long_id, 'a', sizeof(long_id));
    long_id[BH_ID_MAX + 1] = '\0'; /* 65 bytes */
    assert_int_equal(bh_ledger_create_user(f->l, long_id, "EUR", D("1")), BH_EINVAL);
    long_id[BH_ID_MAX] = '\0'; /* 64 bytes: the maximum */
    assert_int_equal(bh_ledger_create_user(f->l, long_id, "EUR", D("1")), BH_OK);
    assert_int_equal(bh_ledger_create_user(f->l, "a.b_c:d@e-F9", "EUR", D("0")), BH_OK);
    assert_int_equal(bh_ledger_create_user(f->l, "", "EUR", D("1")), BH_EINVAL);
    assert_int_equal(bh_ledger_create_user(f->l, "a b", "EUR", D("1")), BH_EINVAL);
    assert_int_equal(bh_ledger_create_user(f->l, "a/b", "EUR", D("1")), BH_EINVAL);
    assert_int_equal(bh_ledger_create_user(f->l, "\xc3\xa9", "EUR", D("1")), BH_EINVAL);
    assert_int_equal(bh_ledger_create_user(f->l, NULL, "EUR", D("1")), BH_EINVAL);
    assert_int_equal(bh_ledger_create_user(f->l, "x", "eur", D("1")), BH_EINVAL);
    assert_int_equal(bh_ledger_create_user(f->l, "x", "", D("1")), BH_EINVAL);
    assert_int_equal(bh_ledger_create_user(f->l, "x", "ABCDEFGHIJKLMNOP", D("1")), BH_EINVAL);
    assert_int_equal(bh_ledger_create_user(f->l, "x", "ABCDEFGHIJKLMNO", D("1")), BH_OK);
    assert_int_equal(bh_ledger_create_user(f->l, "y", "E-R", D("1")), BH_EINVAL);
    assert_int_equal(bh_ledger_create_user(f->l, "y", "EUR", D("-1")), BH_EINVAL);
    assert_null(bh_ledger_snapshot(f->l, "y"));
    assert_int_equal(f->calls, 4);
}

static void test_many_users(void **state) {
    fx_t *f = *state;
    char id[32];
    /* Enough users to grow the map several times; all stay reachable, also after reload. */
    bh_ledger_set_listener(f->l, NULL, NULL);
    for (int i = 0; i < 300; i++) {
        snprintf(id, sizeof(id), "user-%d", i);
        assert_int_equal(bh_ledger_create_user(f->l, id, "EUR", D("1")), BH_OK);
    }
    reopen(f);
    for (int i = 0; i < 300; i++) {
        snprintf(id, sizeof(id), "user-%d", i);
        assert_int_equal(seq_of(f, id), 1);
    }
    assert_null(bh_ledger_snapshot(f->l, "user-300"));
}

static void test_deposit(void **state) {
    fx_t *f = *state;
    bh_op_t op;

    assert_int_equal(bh_ledger_create_user(f->l, "u1", "EUR", D("0")), BH_OK);
    apply(f, "u1", BH_OP_DEPOSIT, "d1", "BTC", "0.5", BH_OK);
    apply(f, "u1", BH_OP_DEPOSIT, "d2", "BTC", "0.000000000000000001", BH_OK);
    apply(f, "u1", BH_OP_DEPOSIT, "d3", "AAA", "12345678901234567890", BH_OK);
    assert_json(f, "u1",
                "{\"userId\":\"u1\",\"sequence\":4,\"assets\":["
                "{\"name\":\"AAA\",\"available\":12345678901234567890,\"allocated\":0,"
                "\"currentExposure\":0,\"maxExposure\":0},"
                "{\"name\":\"BTC\",\"available\":0.500000000000000001,\"allocated\":0,"
                "\"currentExposure\":0,\"maxExposure\":0}],"
                "\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,\"totalMaxExposure\":0,"
                "\"deleted\":false}");
    assert_sql(f->path, "SELECT op || ' ' || detail FROM journal WHERE op_id = 'd1'",
               "deposit {\"asset\":\"BTC\",\"amount\":\"0.5\"}");
    assert_sql(f->path, "SELECT sequence FROM journal WHERE op_id = 'd3'", "4");

    apply(f, "u1", BH_OP_DEPOSIT, "x1", "BTC", "0", BH_EINVAL);
    apply(f, "u1", BH_OP_DEPOSIT, "x2", "BTC", "-1", BH_EINVAL);
    /* Overflow of the decimal range is bad input, not a silent wrap. */
    apply(f, "u1", BH_OP_DEPOSIT, "x3", "AAA", "99999999999999999999", BH_EINVAL);
    apply(f, "u1", BH_OP_DEPOSIT, "x4", "btc", "1", BH_EINVAL);
    apply(f, "u1", BH_OP_DEPOSIT, "x5", "", "1", BH_EINVAL);
    apply(f, "u1", BH_OP_DEPOSIT, "", "BTC", "1", BH_EINVAL);
    apply(f, "u1", BH_OP_DEPOSIT, "tab\there", "BTC", "1", BH_EINVAL);
    apply(f, "u1", BH_OP_DEPOSIT, "caf\xc3\xa9", "BTC", "1", BH_EINVAL);
    apply(f, "u1", BH_OP_DEPOSIT, "a printable id ~!{}\"", "BTC", "1", BH_OK);
    assert_int_equal(bh_ledger_apply(f->l, "nobody", &(bh_op_t){0}, NULL), BH_EINVAL);
    op = mkop(BH_OP_DEPOSIT, "d9", "BTC", "1");
    assert_int_equal(bh_ledger_apply(f->l, "nobody", &op, NULL), BH_ENOTFOUND);
    assert_int_equal(bh_ledger_apply(f->l, "bad id", &op, NULL), BH_EINVAL);
    assert_int_equal(bh_ledger_apply(f->l, "u1", NULL, NULL), BH_EINVAL);
    op.kind = (bh_op_kind_t)42;
    assert_int_equal(bh_ledger_apply(f->l, "u1", &op, NULL), BH_EINVAL);
    /* Unterminated fixed-size fields are refused, not overrun. */
    op = mkop(BH_OP_DEPOSIT, "d9", "BTC", "1");
    memset(op.asset, 'A', sizeof(op.asset));
    assert_int_equal(bh_ledger_apply(f->l, "u1", &op, NULL), BH_EINVAL);
    op = mkop(BH_OP_DEPOSIT, "d9", "BTC", "1");
    memset(op.op_id, 'a', sizeof(op.op_id));
    assert_int_equal(bh_ledger_apply(f->l, "u1", &op, NULL), BH_EINVAL);
    /* A NULL sequence pointer is fine. */
    op = mkop(BH_OP_DEPOSIT, "d9", "BTC", "1");
    assert_int_equal(bh_ledger_apply(f->l, "u1", &op, NULL), BH_OK);
    assert_int_equal(seq_of(f, "u1"), 6);
}

static void test_withdraw_funds(void **state) {
    fx_t *f = *state;

    assert_int_equal(bh_ledger_create_user(f->l, "u1", "EUR", D("1000")), BH_OK);
    apply(f, "u1", BH_OP_DEPOSIT, "d1", "BTC", "1", BH_OK);
    apply(f, "u1", BH_OP_WITHDRAW, "w1", "BTC", "0.4", BH_OK);
    apply(f, "u1", BH_OP_WITHDRAW, "w2", "BTC", "0.6", BH_OK); /* down to exactly zero */
    /* No maxExposure: no credit, so going below zero is a funds problem. */
    apply(f, "u1", BH_OP_WITHDRAW, "w3", "BTC", "0.000000000000000001", BH_EFUNDS);
    apply(f, "u1", BH_OP_WITHDRAW, "w4", "ETH", "1", BH_EFUNDS);
    apply(f, "u1", BH_OP_WITHDRAW, "w5", "BTC", "0", BH_EINVAL);
    apply(f, "u1", BH_OP_WITHDRAW, "w6", "BTC", "-1", BH_EINVAL);
    /* A rejected op on an unknown asset does not create the asset row. */
    assert_json(f, "u1",
                "{\"userId\":\"u1\",\"sequence\":4,\"assets\":[{\"name\":\"BTC\",\"available\":0,"
                "\"allocated\":0,\"currentExposure\":0,\"maxExposure\":0}],\"baseCurrency\":"
                "\"EUR\",\"totalCurrentExposure\":0,\"totalMaxExposure\":1000,\"deleted\":false}");
    assert_sql(f->path, "SELECT count(*) FROM assets", "1");
}

static void test_allocate_release(void **state) {
    fx_t *f = *state;

    assert_int_equal(bh_ledger_create_user(f->l, "u1", "EUR", D("0")), BH_OK);
    apply(f, "u1", BH_OP_DEPOSIT, "d1", "USDT", "1000", BH_OK);
    apply(f, "u1", BH_OP_ALLOCATE, "a1", "USDT", "250", BH_OK);
    apply(f, "u1", BH_OP_ALLOCATE, "a2", "USDT", "750.000000000000000001", BH_EFUNDS);
    apply(f, "u1", BH_OP_ALLOCATE, "a3", "USDT", "0", BH_EINVAL);
    apply(f, "u1", BH_OP_ALLOCATE, "a4", "BTC", "1", BH_EFUNDS);
    apply(f, "u1", BH_OP_RELEASE, "r1", "USDT", "250.000000000000000001", BH_EFUNDS);
    apply(f, "u1", BH_OP_RELEASE, "r2", "USDT", "-1", BH_EINVAL);
    apply(f, "u1", BH_OP_RELEASE, "r3", "BTC", "1", BH_EFUNDS);
    apply(f, "u1", BH_OP_RELEASE, "r4", "USDT", "50", BH_OK);
    assert_json(f, "u1",
                "{\"userId\":\"u1\",\"sequence\":4,\"assets\":[{\"name\":\"USDT\",\"available\":"
                "800,\"allocated\":200,\"currentExposure\":0,\"maxExposure\":0}],\"baseCurrency\":"
                "\"EUR\",\"totalCurrentExposure\":0,\"totalMaxExposure\":0,\"deleted\":false}");
    apply(f, "u1", BH_OP_ALLOCATE, "a5", "USDT", "800", BH_OK); /* all of it */
    apply(f, "u1", BH_OP_RELEASE, "r5", "USDT", "1000", BH_OK);
    assert_sql(f->path, "SELECT available || '/' || allocated FROM assets", "1000/0");
    assert_sql(f->path, "SELECT op FROM journal WHERE op_id = 'r5'", "release");
    assert_sql(f->path, "SELECT op FROM journal WHERE op_id = 'a5'", "allocate");
}

static void test_set_limit(void **state) {
    fx_t *f = *state;

    assert_int_equal(bh_ledger_create_user(f->l, "u1", "EUR", D("2000")), BH_OK);
    apply(f, "u1", BH_OP_SET_LIMIT, "l1", "ETH", "1500", BH_OK); /* creates the asset row */
    apply(f, "u1", BH_OP_SET_LIMIT, "l2", "BTC", "0", BH_OK);
    apply(f, "u1", BH_OP_SET_LIMIT, "l3", "BTC", "-0.1", BH_EINVAL);
    apply(f, "u1", BH_OP_SET_LIMIT, "l4", "ETH", "0.25", BH_OK);
    assert_json(f, "u1",
                "{\"userId\":\"u1\",\"sequence\":4,\"assets\":["
                "{\"name\":\"BTC\",\"available\":0,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":0},"
                "{\"name\":\"ETH\",\"available\":0,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":0.25}],"
                "\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,\"totalMaxExposure\":2000,"
                "\"deleted\":false}");
    assert_sql(f->path, "SELECT op || ' ' || detail FROM journal WHERE op_id = 'l4'",
               "set-limits {\"asset\":\"ETH\",\"amount\":\"0.25\"}");
}

static void test_exposure_limits(void **state) {
    fx_t *f = *state;
    char *before;

    assert_int_equal(bh_ledger_set_rate(f->l, "EUR", "BTC", D("60000")), BH_OK);
    assert_int_equal(bh_ledger_set_rate(f->l, "EUR", "ETH", D("3000")), BH_OK);
    assert_int_equal(bh_ledger_create_user(f->l, "u1", "EUR", D("2000")), BH_OK);
    apply(f, "u1", BH_OP_SET_LIMIT, "l1", "BTC", "1500", BH_OK);
    apply(f, "u1", BH_OP_WITHDRAW, "w1", "BTC", "0.02", BH_OK);
    assert_json(f, "u1",
                "{\"userId\":\"u1\",\"sequence\":3,\"assets\":[{\"name\":\"BTC\",\"available\":"
                "-0.02,\"allocated\":0,\"currentExposure\":1200,\"maxExposure\":1500}],"
                "\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":1200,\"totalMaxExposure\":2000,"
                "\"deleted\":false}");
    before = json_of(f, "u1");
    /* 0.03 * 60000 = 1800 > 1500: rejected, nothing changes, the op id stays unused. */
    apply(f, "u1", BH_OP_WITHDRAW, "w2", "BTC", "0.01", BH_ELIMIT);
    assert_json(f, "u1", before);
    free(before);
    assert_int_equal(seq_of(f, "u1"), 3);

    /* The total: 1200 + 0.3 * 3000 = 2100 > 2000, while ETH alone (900) is within 1500. */
    apply(f, "u1", BH_OP_SET_LIMIT, "l2", "ETH", "1500", BH_OK);
    apply(f, "u1", BH_OP_WITHDRAW, "w3", "ETH", "0.3", BH_ELIMIT);
    apply(f, "u1", BH_OP_WITHDRAW, "w3", "ETH", "0.25", BH_OK); /* 1200 + 750 = 1950 */
    assert_json(f, "u1",
                "{\"userId\":\"u1\",\"sequence\":5,\"assets\":["
                "{\"name\":\"BTC\",\"available\":-0.02,\"allocated\":0,\"currentExposure\":1200,"
                "\"maxExposure\":1500},"
                "{\"name\":\"ETH\",\"available\":-0.25,\"allocated\":0,\"currentExposure\":750,"
                "\"maxExposure\":1500}],"
                "\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":1950,\"totalMaxExposure\":2000,"
                "\"deleted\":false}");
    /* Just under the total limit is allowed, just over it is not. */
    apply(f, "u1", BH_OP_WITHDRAW, "w4", "ETH", "0.016666666666666667", BH_ELIMIT);
    apply(f, "u1", BH_OP_WITHDRAW, "w4", "BTC", "0.000833333333333333", BH_OK);
    apply(f, "u1", BH_OP_WITHDRAW, "w5", "BTC", "0.000000000000000001", BH_ELIMIT);
    apply(f, "u1", BH_OP_DEPOSIT, "d1", "BTC", "0.000833333333333333", BH_OK);

    /* Paying back reduces exposure: deposits are never limited. */
    apply(f, "u1", BH_OP_DEPOSIT, "d2", "ETH", "0.05", BH_OK);
    assert_json(f, "u1",
                "{\"userId\":\"u1\",\"sequence\":8,\"assets\":["
                "{\"name\":\"BTC\",\"available\":-0.02,\"allocated\":0,\"currentExposure\":1200,"
                "\"maxExposure\":1500},"
                "{\"name\":\"ETH\",\"available\":-0.2,\"allocated\":0,\"currentExposure\":600,"
                "\"maxExposure\":1500}],"
                "\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":1800,\"totalMaxExposure\":2000,"
                "\"deleted\":false}");
}

static void test_exposure_asset_limit_boundary(void **state) {
    fx_t *f = *state;

    assert_int_equal(bh_ledger_set_rate(f->l, "EUR", "BTC", D("60000")), BH_OK);
    assert_int_equal(bh_ledger_create_user(f->l, "u2", "EUR", D("1500")), BH_OK);
    apply(f, "u2", BH_OP_SET_LIMIT, "l1", "BTC", "1500", BH_OK);
    apply(f, "u2", BH_OP_WITHDRAW, "w1", "BTC", "0.025", BH_OK); /* exactly 1500 */
    apply(f, "u2", BH_OP_WITHDRAW, "w2", "BTC", "0.000000000000000001", BH_ELIMIT);
    apply(f, "u2", BH_OP_SET_LIMIT, "l2", "BTC", "2000", BH_OK);
    /* The asset limit has room now, the total does not. */
    apply(f, "u2", BH_OP_WITHDRAW, "w2", "BTC", "0.000000000000000001", BH_ELIMIT);
}

static void test_exposure_base_currency_and_allocated(void **state) {
    fx_t *f = *state;

    assert_int_equal(bh_ledger_create_user(f->l, "u1", "EUR", D("100")), BH_OK);
    /* The base currency itself needs no rate (1). */
    apply(f, "u1", BH_OP_SET_LIMIT, "l1", "EUR", "100", BH_OK);
    apply(f, "u1", BH_OP_WITHDRAW, "w1", "EUR", "60.5", BH_OK);
    apply(f, "u1", BH_OP_WITHDRAW, "w2", "EUR", "39.5", BH_OK);
    apply(f, "u1", BH_OP_WITHDRAW, "w3", "EUR", "0.1", BH_ELIMIT);
    /* Negative available covered by allocated: net >= 0, no exposure and no rate needed. */
    apply(f, "u1", BH_OP_DEPOSIT, "d1", "XRP", "10", BH_OK);
    apply(f, "u1", BH_OP_ALLOCATE, "a1", "XRP", "10", BH_OK);
    apply(f, "u1", BH_OP_WITHDRAW, "w4", "XRP", "4", BH_EFUNDS); /* no maxExposure: no credit */
    apply(f, "u1", BH_OP_SET_LIMIT, "l2", "XRP", "1", BH_OK);
    apply(f, "u1", BH_OP_WITHDRAW, "w4", "XRP", "4", BH_OK);
    /* Beyond the allocated cover the XRP rate is needed, and there is none. */
    apply(f, "u1", BH_OP_WITHDRAW, "w5", "XRP", "6.5", BH_ENOTFOUND);
    assert_json(f, "u1",
                "{\"userId\":\"u1\",\"sequence\":8,\"assets\":["
                "{\"name\":\"EUR\",\"available\":-100,\"allocated\":0,\"currentExposure\":100,"
                "\"maxExposure\":100},"
                "{\"name\":\"XRP\",\"available\":-4,\"allocated\":10,\"currentExposure\":0,"
                "\"maxExposure\":1}],"
                "\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":100,\"totalMaxExposure\":100,"
                "\"deleted\":false}");
}

static void test_exposure_function(void **state) {
    fx_t *f = *state;
    bh_asset_t a;
    bh_dec_t out;
    char buf[BH_DEC_STRLEN];

    memset(&a, 0, sizeof(a));
    strcpy(a.name, "BTC");
    a.available = D("-0.5");
    a.allocated = D("0.1");
    assert_int_equal(bh_ledger_exposure(f->l, "EUR", &a, &out), BH_ENOTFOUND);
    assert_int_equal(bh_ledger_set_rate(f->l, "EUR", "BTC", D("60000.5")), BH_OK);
    assert_int_equal(bh_ledger_exposure(f->l, "EUR", &a, &out), BH_OK);
    bh_dec_format(out, buf);
    assert_string_equal(buf, "24000.2");
    assert_int_equal(bh_ledger_exposure(f->l, "USD", &a, &out), BH_ENOTFOUND);
    assert_int_equal(bh_ledger_exposure(f->l, "BTC", &a, &out), BH_OK);
    bh_dec_format(out, buf);
    assert_string_equal(buf, "0.4");
    a.available = D("-0.1");
    out = D("7");
    assert_int_equal(bh_ledger_exposure(f->l, "USD", &a, &out), BH_OK); /* net 0: no rate */
    assert_true(bh_dec_is_zero(out));
    a.available = D("5");
    assert_int_equal(bh_ledger_exposure(f->l, "USD", &a, &out), BH_OK);
    assert_true(bh_dec_is_zero(out));
    assert_int_equal(bh_ledger_exposure(f->l, "EUR", NULL, &out), BH_EINVAL);
}

static void test_rates(void **state) {
    fx_t *f = *state;

    assert_int_equal(bh_ledger_set_rate(f->l, "EUR", "BTC", D("0")), BH_EINVAL);
    assert_int_equal(bh_ledger_set_rate(f->l, "EUR", "BTC", D("-1")), BH_EINVAL);
    assert_int_equal(bh_ledger_set_rate(f->l, "EUR", "EUR", D("1")), BH_EINVAL);
    assert_int_equal(bh_ledger_set_rate(f->l, "eur", "BTC", D("1")), BH_EINVAL);
    assert_int_equal(bh_ledger_set_rate(f->l, "EUR", "", D("1")), BH_EINVAL);
    assert_int_equal(bh_ledger_set_rate(f->l, "EUR", NULL, D("1")), BH_EINVAL);
    assert_int_equal(bh_ledger_set_rate(f->l, "EUR", "BTC", D("50000")), BH_OK);
    assert_int_equal(bh_ledger_set_rate(f->l, "EUR", "BTC", D("60000")), BH_OK);
    assert_int_equal(bh_ledger_set_rate(f->l, "USD", "BTC", D("70000")), BH_OK);
    assert_sql(f->path,
               "SELECT group_concat(currency || asset || '=' || rate, ',') FROM "
               "(SELECT * FROM rates ORDER BY currency)",
               "EURBTC=60000,USDBTC=70000");
    /* Rates survive a restart and drive exposure. */
    reopen(f);
    assert_int_equal(bh_ledger_create_user(f->l, "u1", "USD", D("1000000")), BH_OK);
    apply(f, "u1", BH_OP_SET_LIMIT, "l1", "BTC", "1000000", BH_OK);
    apply(f, "u1", BH_OP_WITHDRAW, "w1", "BTC", "1", BH_OK);
    assert_json(f, "u1",
                "{\"userId\":\"u1\",\"sequence\":3,\"assets\":[{\"name\":\"BTC\",\"available\":"
                "-1,\"allocated\":0,\"currentExposure\":70000,\"maxExposure\":1000000}],"
                "\"baseCurrency\":\"USD\",\"totalCurrentExposure\":70000,\"totalMaxExposure\":"
                "1000000,\"deleted\":false}");
}

static void test_rate_move_is_lazy(void **state) {
    fx_t *f = *state;
    char *before;

    assert_int_equal(bh_ledger_set_rate(f->l, "EUR", "BTC", D("60000")), BH_OK);
    assert_int_equal(bh_ledger_create_user(f->l, "u1", "EUR", D("2000")), BH_OK);
    apply(f, "u1", BH_OP_SET_LIMIT, "l1", "BTC", "1500", BH_OK);
    apply(f, "u1", BH_OP_WITHDRAW, "w1", "BTC", "0.02", BH_OK);
    apply(f, "u1", BH_OP_DEPOSIT, "d0", "ETH", "1", BH_OK);
    before = json_of(f, "u1");
    /* Now 0.02 BTC are worth 2000 > 1500: no new snapshot until the user's next change. */
    assert_int_equal(bh_ledger_set_rate(f->l, "EUR", "BTC", D("100000")), BH_OK);
    assert_json(f, "u1", before);
    free(before);
    assert_int_equal(f->calls, 4);
    /* Over the limit, operations that do not raise the exposure still go through. */
    apply(f, "u1", BH_OP_WITHDRAW, "w2", "ETH", "0.5", BH_OK);
    apply(f, "u1", BH_OP_DEPOSIT, "d1", "BTC", "0.001", BH_OK); /* 1900, still over */
    apply(f, "u1", BH_OP_WITHDRAW, "w3", "BTC", "0.000000000000000001", BH_ELIMIT);
    assert_json(f, "u1",
                "{\"userId\":\"u1\",\"sequence\":6,\"assets\":["
                "{\"name\":\"BTC\",\"available\":-0.019,\"allocated\":0,\"currentExposure\":1900,"
                "\"maxExposure\":1500},"
                "{\"name\":\"ETH\",\"available\":0.5,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":0}],"
                "\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":1900,\"totalMaxExposure\":2000,"
                "\"deleted\":false}");
    /* Now over the total too (3800 > 2000): a withdrawal covered by allocated funds raises no
     * exposure and is still allowed. */
    assert_int_equal(bh_ledger_set_rate(f->l, "EUR", "BTC", D("200000")), BH_OK);
    apply(f, "u1", BH_OP_DEPOSIT, "d2", "XRP", "10", BH_OK);
    apply(f, "u1", BH_OP_ALLOCATE, "a1", "XRP", "10", BH_OK);
    apply(f, "u1", BH_OP_SET_LIMIT, "l2", "XRP", "1", BH_OK);
    apply(f, "u1", BH_OP_WITHDRAW, "w4", "XRP", "4", BH_OK);
    apply(f, "u1", BH_OP_WITHDRAW, "w5", "BTC", "0.000000000000000001", BH_ELIMIT);
}

static void test_seed_snapshot_bytes(void **state) {
    fx_t *f = *state;

    assert_int_equal(bh_ledger_create_user(f->l, "user-123", "EUR", D("1500")), BH_OK);
    apply(f, "user-123", BH_OP_DEPOSIT, "1", "USDT", "1250", BH_OK);
    apply(f, "user-123", BH_OP_DEPOSIT, "2", "ETH", "5", BH_OK);
    apply(f, "user-123", BH_OP_DEPOSIT, "3", "BTC", "0.5", BH_OK);
    apply(f, "user-123", BH_OP_ALLOCATE, "4", "USDT", "250", BH_OK);
    apply(f, "user-123", BH_OP_SET_LIMIT, "5", "USDT", "1500", BH_OK);
    apply(f, "user-123", BH_OP_SET_LIMIT, "6", "BTC", "1500", BH_OK);
    apply(f, "user-123", BH_OP_SET_LIMIT, "7", "ETH", "1500", BH_OK);
    /* The seed's example `data`, byte for byte (sequence and totalCurrentExposure aside). */
    assert_json(f, "user-123",
                "{\"userId\":\"user-123\",\"sequence\":8,\"assets\":["
                "{\"name\":\"BTC\",\"available\":0.5,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":1500},"
                "{\"name\":\"ETH\",\"available\":5,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":1500},"
                "{\"name\":\"USDT\",\"available\":1000,\"allocated\":250,\"currentExposure\":0,"
                "\"maxExposure\":1500}],"
                "\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,\"totalMaxExposure\":1500,"
                "\"deleted\":false}");
    /* The structured fields agree with the bytes. */
    bh_snapshot_t *s = bh_ledger_snapshot(f->l, "user-123");
    assert_int_equal(s->nassets, 3);
    assert_string_equal(s->assets[0].name, "BTC");
    assert_string_equal(s->assets[2].name, "USDT");
    assert_string_equal(s->base_currency, "EUR");
    assert_false(s->deleted);
    bh_snapshot_release(s);
}

static void test_repeated_op_id(void **state) {
    fx_t *f = *state;
    bh_op_t op;
    uint64_t seq = 0;
    char *before;

    assert_int_equal(bh_ledger_create_user(f->l, "u1", "EUR", D("0")), BH_OK);
    assert_int_equal(bh_ledger_create_user(f->l, "u2", "EUR", D("0")), BH_OK);
    apply(f, "u1", BH_OP_DEPOSIT, "op-1", "BTC", "1", BH_OK);
    apply(f, "u1", BH_OP_DEPOSIT, "op-2", "BTC", "2", BH_OK);
    before = json_of(f, "u1");
    /* A repeat, even with other arguments, answers the first application's sequence. */
    op = mkop(BH_OP_WITHDRAW, "op-1", "ETH", "7");
    assert_int_equal(bh_ledger_apply(f->l, "u1", &op, &seq), BH_EEXIST);
    assert_int_equal(seq, 2);
    apply(f, "u1", BH_OP_DEPOSIT, "op-2", "BTC", "2", BH_EEXIST);
    op = mkop(BH_OP_DEPOSIT, "create-user", "BTC", "1");
    assert_int_equal(bh_ledger_apply(f->l, "u1", &op, &seq), BH_EEXIST);
    assert_int_equal(seq, 1);
    assert_json(f, "u1", before);
    /* Op ids are per user. */
    apply(f, "u2", BH_OP_DEPOSIT, "op-1", "BTC", "1", BH_OK);
    /* A rejected op leaves its op id free for a later attempt. */
    apply(f, "u1", BH_OP_WITHDRAW, "op-3", "BTC", "5", BH_EFUNDS);
    apply(f, "u1", BH_OP_WITHDRAW, "op-3", "BTC", "3", BH_OK);
    /* And the journal survives restarts. */
    reopen(f);
    seq = 0;
    op = mkop(BH_OP_DEPOSIT, "op-2", "BTC", "2");
    assert_int_equal(bh_ledger_apply(f->l, "u1", &op, &seq), BH_EEXIST);
    assert_int_equal(seq, 3);
    assert_int_equal(seq_of(f, "u1"), 4);
    assert_int_equal(f->calls, 0);
    free(before);
}

static void test_reload_identical(void **state) {
    fx_t *f = *state;
    char *j1, *j2, *j3;

    assert_int_equal(bh_ledger_set_rate(f->l, "EUR", "BTC", D("60000")), BH_OK);
    assert_int_equal(bh_ledger_create_user(f->l, "u1", "EUR", D("2000")), BH_OK);
    assert_int_equal(bh_ledger_create_user(f->l, "u2", "USD", D("12345678901234567890")), BH_OK);
    apply(f, "u1", BH_OP_SET_LIMIT, "l1", "BTC", "1500", BH_OK);
    apply(f, "u1", BH_OP_WITHDRAW, "w1", "BTC", "0.02", BH_OK);
    apply(f, "u1", BH_OP_DEPOSIT, "d1", "ZZZ", "0.000000000000000001", BH_OK);
    apply(f, "u1", BH_OP_DEPOSIT, "d2", "AAA", "99999999999999999999.999999999999999999", BH_OK);
    apply(f, "u1", BH_OP_ALLOCATE, "a1", "AAA", "0.5", BH_OK);
    apply(f, "u2", BH_OP_DEPOSIT, "d1", "EUR", "3", BH_OK);
    j1 = json_of(f, "u1");
    j2 = json_of(f, "u2");
    reopen(f);
    j3 = json_of(f, "u1");
    assert_string_equal(j3, j1);
    free(j3);
    j3 = json_of(f, "u2");
    assert_string_equal(j3, j2);
    free(j3);
    assert_int_equal(f->calls, 0); /* loading publishes nothing */
    /* Sequences continue where they were. */
    apply(f, "u1", BH_OP_DEPOSIT, "d3", "BTC", "0.02", BH_OK);
    assert_int_equal(seq_of(f, "u1"), 7);
    free(j1);
    free(j2);
}

static void test_listener_and_snapshot_lifetime(void **state) {
    fx_t *f = *state;
    bh_snapshot_t *old, *cur;

    assert_int_equal(bh_ledger_create_user(f->l, "u1", "EUR", D("0")), BH_OK);
    apply(f, "u1", BH_OP_DEPOSIT, "d1", "BTC", "1", BH_OK);
    old = bh_ledger_snapshot(f->l, "u1");
    /* Held by the ledger, the listener's copy, and this reader. */
    assert_int_equal(atomic_load(&old->refs), 3);
    apply(f, "u1", BH_OP_DEPOSIT, "d2", "BTC", "1", BH_OK);
    apply(f, "u1", BH_OP_WITHDRAW, "w1", "BTC", "0.5", BH_OK);
    apply(f, "u1", BH_OP_WITHDRAW, "w2", "BTC", "5", BH_EFUNDS);
    /* The ledger dropped its reference; the reader's snapshot is untouched. */
    assert_int_equal(atomic_load(&old->refs), 2);
    assert_int_equal(old->sequence, 2);
    assert_string_equal(old->json,
                        "{\"userId\":\"u1\",\"sequence\":2,\"assets\":[{\"name\":\"BTC\","
                        "\"available\":1,\"allocated\":0,\"currentExposure\":0,\"maxExposure\":0}"
                        "],\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,"
                        "\"totalMaxExposure\":0,\"deleted\":false}");
    assert_int_equal(old->nassets, 1);
    assert_string_equal(old->assets[0].name, "BTC");
    /* One listener call per commit, in sequence order, each with that commit's snapshot. */
    assert_int_equal(f->calls, 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(f->seen[i]->sequence, (uint64_t)i + 1);
    assert_ptr_equal(f->seen[1], old);
    cur = bh_ledger_snapshot(f->l, "u1");
    assert_ptr_equal(f->seen[3], cur);
    assert_int_equal(atomic_load(&cur->refs), 3);
    bh_snapshot_release(cur);
    bh_snapshot_release(old);
    bh_snapshot_release(NULL);
    assert_ptr_equal(bh_snapshot_acquire(NULL), NULL);
    /* No listener: commits still work and nobody is called. */
    bh_ledger_set_listener(f->l, NULL, NULL);
    bh_op_t op = mkop(BH_OP_DEPOSIT, "d3", "BTC", "1");
    uint64_t seq = 0;
    assert_int_equal(bh_ledger_apply(f->l, "u1", &op, &seq), BH_OK);
    assert_int_equal(seq, 5);
    assert_int_equal(f->calls, 4);
}

static void exec_raw(const char *path, const char *sql) {
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static void test_store_failure_changes_nothing(void **state) {
    fx_t *f = *state;
    bh_op_t op;
    char *before;

    assert_int_equal(bh_ledger_create_user(f->l, "u1", "EUR", D("0")), BH_OK);
    apply(f, "u1", BH_OP_DEPOSIT, "d1", "BTC", "1", BH_OK);
    before = json_of(f, "u1");
    /* Make every journal insert fail: the user and asset rows written before it in the same
     * transaction must be rolled back, and the ledger must not publish anything. */
    exec_raw(f->path, "CREATE TRIGGER no_journal BEFORE INSERT ON journal "
                      "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END");
    apply(f, "u1", BH_OP_DEPOSIT, "d2", "BTC", "1", BH_ESTORE);
    apply(f, "u1", BH_OP_DEPOSIT, "d2", "ETH", "1", BH_ESTORE);
    assert_int_equal(bh_ledger_create_user(f->l, "u2", "EUR", D("0")), BH_ESTORE);
    assert_null(bh_ledger_snapshot(f->l, "u2"));
    assert_json(f, "u1", before);
    exec_raw(f->path, "DROP TRIGGER no_journal");
    reopen(f);
    assert_json(f, "u1", before);
    assert_null(bh_ledger_snapshot(f->l, "u2"));
    /* And everything works again afterwards, with the op id that failed. */
    op = mkop(BH_OP_DEPOSIT, "d2", "BTC", "1");
    assert_int_equal(bh_ledger_apply(f->l, "u1", &op, NULL), BH_OK);
    assert_int_equal(bh_ledger_create_user(f->l, "u2", "EUR", D("0")), BH_OK);
    free(before);
}

static void test_deleted_user(void **state) {
    fx_t *f = *state;
    bh_store_user_t u;
    bh_store_journal_t j;
    bh_store_asset_t a;
    bh_op_t op = mkop(BH_OP_DEPOSIT, "d1", "BTC", "1");

    /* Deletion is not a ledger operation yet: write a deleted user through the store. */
    memset(&u, 0, sizeof(u));
    strcpy(u.user_id, "gone");
    strcpy(u.base_currency, "EUR");
    u.total_max_exposure = D("10");
    u.sequence = 5;
    u.deleted = true;
    memset(&a, 0, sizeof(a));
    strcpy(a.name, "BTC");
    a.available = D("2");
    memset(&j, 0, sizeof(j));
    strcpy(j.user_id, "gone");
    j.sequence = 5;
    strcpy(j.op_id, "delete");
    strcpy(j.op, "delete-user");
    assert_int_equal(bh_store_commit_user(f->s, &u, &a, 1, &j), BH_OK);
    reopen(f);
    assert_json(f, "gone",
                "{\"userId\":\"gone\",\"sequence\":5,\"assets\":[{\"name\":\"BTC\",\"available\":"
                "2,\"allocated\":0,\"currentExposure\":0,\"maxExposure\":0}],\"baseCurrency\":"
                "\"EUR\",\"totalCurrentExposure\":0,\"totalMaxExposure\":10,\"deleted\":true}");
    assert_int_equal(bh_ledger_apply(f->l, "gone", &op, NULL), BH_ENOTFOUND);
    assert_int_equal(bh_ledger_create_user(f->l, "gone", "EUR", D("1")), BH_EEXIST);
    assert_int_equal(f->calls, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_user, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_users, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deposit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_withdraw_funds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_allocate_release, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exposure_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exposure_asset_limit_boundary, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exposure_base_currency_and_allocated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exposure_function, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rate_move_is_lazy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seed_snapshot_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_repeated_op_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload_identical, setup, teardown),
        cmocka_unit_test_setup_teardown(test_listener_and_snapshot_lifetime, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_failure_changes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deleted_user, setup, teardown),
    };
    bh_log_set_level(BH_LOG_ERROR + 1); /* expected failures below would log; keep output clean */
    return cmocka_run_group_tests(tests, NULL, NULL);
}
