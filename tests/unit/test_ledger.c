/* Ledger: every operation's success and rejection paths through the asynchronous submit API,
 * exposure through rates, exact result/snapshot bytes, sequences, listener order, group commit,
 * op-id idempotency (pending and durable), persistence, store failures, snapshot lifetimes,
 * snapshot readers on other threads, submissions from callbacks and garbage operations. Runs on a
 * real SQLite file (a writer and a reader handle) and a libuv loop. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <sched.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "base/decimal.h"
#include "base/error.h"
#include "base/log.h"
#include "ledger/ledger.h"
#include "ledger/opfilter.h"
#include "store/store.h"

#define MAXEV 4096

typedef struct {
    char kind; /* 'L' listener, 'C' completion callback */
    char user[BH_ID_MAX + 1];
    uint64_t sequence;
} event_t;

typedef struct {
    char dir[64];
    char path[128];
    uv_loop_t loop;
    bh_store_t *w, *r;
    bh_ledger_t *l;
    int nlisten, ncb;
    bool listening;                     /* our listener is installed */
    const bh_snapshot_t *last_listened; /* compared by address only */
    size_t nev;
    event_t ev[MAXEV];
} fx_t;

/* What a completion callback saw, copied out. */
typedef struct {
    fx_t *f;
    char user[BH_ID_MAX + 1];
    bool is_rates;
    int fired, order;
    int status;
    bool has_reason;
    char reason[256];
    bool repeated;
    uint64_t sequence;
    char *result; /* NUL-terminated copy, NULL when none */
    size_t result_len;
    const bh_snapshot_t *snap; /* address only: valid during the callback */
} res_t;

static bh_dec_t D(const char *s) {
    bh_dec_t d;
    assert_int_equal(bh_dec_parse(s, strlen(s), &d), BH_OK);
    return d;
}

static void log_event(fx_t *f, char kind, const char *user, uint64_t seq) {
    if (f->nev >= MAXEV)
        return;
    event_t *e = &f->ev[f->nev++];
    e->kind = kind;
    snprintf(e->user, sizeof(e->user), "%s", user);
    e->sequence = seq;
}

static void listener(void *ud, const bh_snapshot_t *snap) {
    fx_t *f = ud;
    /* Published before the listener runs. */
    bh_snapshot_t *cur = bh_ledger_snapshot(f->l, snap->user_id);
    assert_ptr_equal(cur, snap);
    bh_snapshot_release(cur);
    f->nlisten++;
    f->last_listened = snap;
    log_event(f, 'L', snap->user_id, snap->sequence);
}

static void on_result(void *ud, const bh_op_result_t *r) {
    res_t *x = ud;
    fx_t *f = x->f;

    assert_int_equal(x->fired, 0);
    x->fired = 1;
    x->order = f->ncb++;
    x->status = r->status;
    x->repeated = r->repeated;
    x->sequence = r->sequence;
    x->snap = r->snap;
    if (r->reason) {
        assert_true(strlen(r->reason) < sizeof(x->reason));
        assert_null(strchr(r->reason, '\n'));
        strcpy(x->reason, r->reason);
        x->has_reason = true;
    }
    if (r->result) {
        assert_null(memchr(r->result, '\0', r->result_len));
        x->result = malloc(r->result_len + 1);
        assert_non_null(x->result);
        memcpy(x->result, r->result, r->result_len);
        x->result[r->result_len] = '\0';
        x->result_len = r->result_len;
    }
    if (r->status == BH_OK) {
        assert_false(x->has_reason);
        if (!x->is_rates)
            assert_non_null(x->result);
    } else {
        assert_true(x->has_reason);
        assert_null(x->result);
        assert_null(r->snap);
    }
    if (r->snap) {
        char head[64];
        bh_snapshot_t *cur;
        assert_false(r->repeated);
        assert_int_equal(r->snap->sequence, r->sequence);
        assert_string_equal(r->snap->user_id, x->user);
        /* The answer is exactly {"sequence":N,"data":<the snapshot's bytes>}. */
        snprintf(head, sizeof(head),
                 "{\"sequence\":%llu,\"data\":", (unsigned long long)r->sequence);
        assert_int_equal(x->result_len, strlen(head) + r->snap->json_len + 1);
        assert_memory_equal(x->result, head, strlen(head));
        assert_memory_equal(x->result + strlen(head), r->snap->json, r->snap->json_len);
        assert_int_equal(x->result[x->result_len - 1], '}');
        /* Published, and the listener saw it, before this callback. */
        if (f->listening)
            assert_ptr_equal(f->last_listened, r->snap);
        cur = bh_ledger_snapshot(f->l, x->user);
        assert_ptr_equal(cur, r->snap);
        bh_snapshot_release(cur);
    }
    log_event(f, 'C', x->user, r->sequence);
}

static void res_init(fx_t *f, res_t *x, const char *user) {
    memset(x, 0, sizeof(*x));
    x->f = f;
    snprintf(x->user, sizeof(x->user), "%s", user);
}

static void res_free(res_t *x) {
    free(x->result);
    x->result = NULL;
}

static void submit(fx_t *f, const bh_op_t *op, res_t *x) {
    char user[BH_ID_MAX + 1];
    memcpy(user, op->user_id, BH_ID_MAX); /* may be unterminated on purpose */
    user[BH_ID_MAX] = '\0';
    res_init(f, x, user);
    assert_int_equal(bh_ledger_submit(f->l, op, on_result, x), BH_OK);
    assert_int_equal(x->fired, 0); /* never called from inside submit */
}

static void wait_for(fx_t *f, res_t *x) {
    while (!x->fired)
        uv_run(&f->loop, UV_RUN_ONCE);
}

static int submit_wait(fx_t *f, const bh_op_t *op, res_t *x) {
    submit(f, op, x);
    wait_for(f, x);
    return x->status;
}

/* An op with legs given as "ASSET=AMOUNT" strings, NULL-terminated. */
static bh_op_t mk(bh_op_kind_t kind, const char *user, const char *op_id, ...) {
    bh_op_t op;
    va_list ap;
    const char *leg;

    memset(&op, 0, sizeof(op));
    op.kind = kind;
    snprintf(op.user_id, sizeof(op.user_id), "%s", user);
    snprintf(op.op_id, sizeof(op.op_id), "%s", op_id);
    va_start(ap, op_id);
    while ((leg = va_arg(ap, const char *)) != NULL) {
        const char *eq = strchr(leg, '=');
        assert_non_null(eq);
        assert_true(op.nlegs < BH_OP_MAX_LEGS);
        assert_true((size_t)(eq - leg) < sizeof(op.legs[0].asset));
        memcpy(op.legs[op.nlegs].asset, leg, (size_t)(eq - leg));
        op.legs[op.nlegs].amount = D(eq + 1);
        op.nlegs++;
    }
    va_end(ap);
    return op;
}

static bh_op_t mk_create(const char *user, const char *op_id, const char *base, const char *total) {
    bh_op_t op = mk(BH_OP_CREATE_USER, user, op_id, NULL);
    snprintf(op.base_currency, sizeof(op.base_currency), "%s", base);
    if (total) {
        op.has_total = true;
        op.total_max_exposure = D(total);
    }
    return op;
}

static bh_op_t with_total(bh_op_t op, const char *total) {
    op.has_total = true;
    op.total_max_exposure = D(total);
    return op;
}

static void show_failure(const res_t *x) {
    if (x->status != BH_OK)
        print_message("op on %s failed: %s\n", x->user, x->reason);
}

/* A fresh change: status OK, the expected sequence, one listener call. */
static void expect_ok(fx_t *f, bh_op_t op, uint64_t seq) {
    res_t x;
    int n = f->nlisten;
    submit_wait(f, &op, &x);
    show_failure(&x);
    assert_int_equal(x.status, BH_OK);
    assert_false(x.repeated);
    assert_int_equal(x.sequence, seq);
    assert_non_null(x.snap);
    assert_int_equal(f->nlisten, n + 1);
    res_free(&x);
}

/* As expect_ok, and the answer's exact bytes. */
static void expect_result(fx_t *f, bh_op_t op, uint64_t seq, const char *want) {
    res_t x;
    int n = f->nlisten;
    submit_wait(f, &op, &x);
    show_failure(&x);
    assert_int_equal(x.status, BH_OK);
    assert_false(x.repeated);
    assert_int_equal(x.sequence, seq);
    assert_int_equal(f->nlisten, n + 1);
    assert_string_equal(x.result, want);
    assert_int_equal(x.result_len, strlen(want));
    res_free(&x);
}

/* A rejection: exact status and reason; nothing published, nothing changed. */
static void expect_reject(fx_t *f, bh_op_t op, int status, const char *reason) {
    res_t x;
    char user[BH_ID_MAX + 1];
    int n = f->nlisten;
    memcpy(user, op.user_id, BH_ID_MAX);
    user[BH_ID_MAX] = '\0';
    bh_snapshot_t *before = bh_ledger_snapshot(f->l, user);
    assert_int_equal(submit_wait(f, &op, &x), status);
    assert_string_equal(x.reason, reason);
    assert_false(x.repeated);
    assert_int_equal(x.sequence, 0);
    assert_null(x.result);
    assert_int_equal(f->nlisten, n);
    bh_snapshot_t *after = bh_ledger_snapshot(f->l, user);
    assert_ptr_equal(before, after);
    bh_snapshot_release(before);
    bh_snapshot_release(after);
}

/* A repeat of a durable or pending op id: the first answer's exact text, nothing published. */
static void expect_repeat(fx_t *f, bh_op_t op, uint64_t seq, const char *want) {
    res_t x;
    int n = f->nlisten;
    submit_wait(f, &op, &x);
    show_failure(&x);
    assert_int_equal(x.status, BH_OK);
    assert_true(x.repeated);
    assert_null(x.snap);
    assert_int_equal(x.sequence, seq);
    assert_string_equal(x.result, want);
    assert_int_equal(f->nlisten, n);
    res_free(&x);
}

static char *result_of(fx_t *f, bh_op_t op) {
    res_t x;
    assert_int_equal(submit_wait(f, &op, &x), BH_OK);
    return x.result;
}

static void expect_json(fx_t *f, const char *user, const char *want) {
    bh_snapshot_t *s = bh_ledger_snapshot(f->l, user);
    assert_non_null(s);
    assert_string_equal(s->json, want);
    assert_int_equal(s->json_len, strlen(want));
    bh_snapshot_release(s);
}

static char *json_of(fx_t *f, const char *user) {
    bh_snapshot_t *s = bh_ledger_snapshot(f->l, user);
    assert_non_null(s);
    char *j = strdup(s->json);
    bh_snapshot_release(s);
    return j;
}

static uint64_t seq_of(fx_t *f, const char *user) {
    bh_snapshot_t *s = bh_ledger_snapshot(f->l, user);
    assert_non_null(s);
    uint64_t q = s->sequence;
    bh_snapshot_release(s);
    return q;
}

/* Set rates "ASSET=RATE"... quoted in currency; returns the callback's status. */
static int set_rates(fx_t *f, const char *currency, const char *reason, ...) {
    bh_store_rate_t rates[8];
    size_t n = 0;
    const char *s;
    va_list ap;
    res_t x;

    memset(rates, 0, sizeof(rates));
    va_start(ap, reason);
    while ((s = va_arg(ap, const char *)) != NULL) {
        const char *eq = strchr(s, '=');
        assert_non_null(eq);
        assert_true(n < 8);
        memcpy(rates[n].asset, s, (size_t)(eq - s));
        strcpy(rates[n].currency, "JUNK"); /* the call's currency wins */
        rates[n].rate = D(eq + 1);
        n++;
    }
    va_end(ap);
    res_init(f, &x, "");
    x.is_rates = true;
    assert_int_equal(bh_ledger_set_rates(f->l, currency, rates, n, on_result, &x), BH_OK);
    assert_int_equal(x.fired, 0);
    wait_for(f, &x);
    assert_null(x.result);
    assert_null(x.snap);
    if (reason)
        assert_string_equal(x.reason, reason);
    else
        assert_false(x.has_reason);
    return x.status;
}

/* ---- journal ---- */

typedef struct {
    char text[16384];
    size_t n;
    uint64_t last;
    bool contiguous;
} jtext_t;

static int journal_line(void *ud, const bh_store_journal_t *j) {
    jtext_t *t = ud;
    size_t len = strlen(t->text);
    assert_true(j->time_ms > 0);
    assert_non_null(j->result);
    if (j->sequence != t->last + 1)
        t->contiguous = false;
    t->last = j->sequence;
    t->n++;
    snprintf(t->text + len, sizeof(t->text) - len, "%llu %s %s %s\n",
             (unsigned long long)j->sequence, j->op_id, j->op, j->detail ? j->detail : "NULL");
    return 0;
}

/* The user's journal as "SEQ OPID OP DETAIL" lines, read through the reader handle. */
static void journal_of(fx_t *f, const char *user, jtext_t *t) {
    memset(t, 0, sizeof(*t));
    t->contiguous = true;
    assert_int_equal(bh_store_read_journal(f->r, user, 0, 100000, journal_line, t), BH_OK);
}

static void expect_journal(fx_t *f, const char *user, const char *want) {
    jtext_t *t = malloc(sizeof(*t));
    assert_non_null(t);
    journal_of(f, user, t);
    assert_string_equal(t->text, want);
    assert_true(t->contiguous);
    free(t);
}

static size_t journal_count(fx_t *f, const char *user) {
    jtext_t *t = malloc(sizeof(*t));
    assert_non_null(t);
    journal_of(f, user, t);
    assert_true(t->contiguous);
    size_t n = t->n;
    free(t);
    return n;
}

/* ---- fixture ---- */

static void open_ledger(fx_t *f) {
    char err[256];
    assert_int_equal(bh_store_open(f->path, &f->w, err, sizeof(err)), BH_OK);
    assert_int_equal(bh_store_open(f->path, &f->r, err, sizeof(err)), BH_OK);
    assert_int_equal(bh_ledger_open(&f->loop, f->w, f->r, &f->l), BH_OK);
    bh_ledger_set_listener(f->l, listener, f);
    f->listening = true;
}

static void close_ledger(fx_t *f) {
    bh_ledger_close(f->l);
    f->l = NULL;
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    bh_store_close(f->w);
    bh_store_close(f->r);
    f->w = f->r = NULL;
    f->last_listened = NULL;
}

static void reopen(fx_t *f) {
    close_ledger(f);
    open_ledger(f);
}

static int setup(void **state) {
    fx_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    strcpy(f->dir, "/tmp/bh_ledger_XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/bh.db", f->dir);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    open_ledger(f);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    static const char *const names[] = {"bh.db", "bh.db-wal", "bh.db-shm"};
    fx_t *f = *state;
    char p[160];
    if (f->l)
        close_ledger(f);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", f->dir, names[i]);
        unlink(p);
    }
    assert_int_equal(rmdir(f->dir), 0);
    free(f);
    return 0;
}

static void exec_sql(const char *path, const char *sql) {
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

#define EMPTY_EUR(user, seq, total)                                                                \
    "{\"userId\":\"" user "\",\"sequence\":" #seq ",\"assets\":[],\"baseCurrency\":\"EUR\","       \
    "\"totalCurrentExposure\":0,\"totalMaxExposure\":" total ",\"deleted\":false}"

/* ---- tests ---- */

static void test_create_user(void **state) {
    fx_t *f = *state;
    char id[BH_ID_MAX + 2];
    const char *first = "{\"sequence\":1,\"data\":" EMPTY_EUR("user-123", 1, "1500") "}";
    bh_op_t op;

    assert_null(bh_ledger_snapshot(f->l, "user-123"));
    expect_result(f, mk_create("user-123", "c1", "EUR", "1500"), 1, first);
    expect_json(f, "user-123", EMPTY_EUR("user-123", 1, "1500"));
    assert_int_equal(f->nev, 2);
    assert_int_equal(f->ev[0].kind, 'L');
    assert_int_equal(f->ev[1].kind, 'C');
    assert_int_equal(f->ev[1].sequence, 1);
    expect_journal(f, "user-123",
                   "1 c1 create-user {\"baseCurrency\":\"EUR\",\"totalMaxExposure\":\"1500\"}\n");

    /* Another op id: the user exists. The same op id, even with other arguments: the first
     * answer, byte for byte. */
    expect_reject(f, mk_create("user-123", "c2", "USD", "1"), BH_EEXIST,
                  "user user-123 already exists");
    expect_repeat(f, mk_create("user-123", "c1", "USD", "7"), 1, first);
    /* Any op with that op id is the create repeated. */
    expect_repeat(f, mk(BH_OP_DEPOSIT, "user-123", "c1", "BTC=1", NULL), 1, first);
    assert_int_equal(journal_count(f, "user-123"), 1);

    /* totalMaxExposure absent: 0. */
    expect_result(f, mk_create("u0", "c", "EUR", NULL), 1,
                  "{\"sequence\":1,\"data\":" EMPTY_EUR("u0", 1, "0") "}");
    expect_journal(f, "u0",
                   "1 c create-user {\"baseCurrency\":\"EUR\",\"totalMaxExposure\":\"0\"}\n");

    /* User ids: 1 to 64 of [A-Za-z0-9._:@-]. */
    memset(id, 'a', sizeof(id));
    id[BH_ID_MAX] = '\0';
    expect_ok(f, mk_create(id, "c", "EUR", "1"), 1);
    expect_ok(f, mk_create("a.b_c:d@e-F9", "c", "EUR", "0"), 1);
    const char *user_reason = "userId must be 1 to 64 characters of A-Z a-z 0-9 . _ : @ -";
    const char *bad_users[] = {"", "a b", "a/b", "\xc3\xa9", "a\"b", "a\x1f"};
    for (size_t i = 0; i < sizeof(bad_users) / sizeof(bad_users[0]); i++)
        expect_reject(f, mk_create(bad_users[i], "c", "EUR", "1"), BH_EINVAL, user_reason);
    op = mk_create("x", "c", "EUR", "1");
    memset(op.user_id, 'a', sizeof(op.user_id)); /* 65 bytes, unterminated */
    expect_reject(f, op, BH_EINVAL, user_reason);

    /* Base currency: 1 to 15 of [A-Z0-9]. */
    const char *base_reason = "baseCurrency must be 1 to 15 characters of A-Z 0-9";
    expect_reject(f, mk_create("y", "c", "eur", "1"), BH_EINVAL, base_reason);
    expect_reject(f, mk_create("y", "c", "", "1"), BH_EINVAL, base_reason);
    expect_reject(f, mk_create("y", "c", "E-R", "1"), BH_EINVAL, base_reason);
    op = mk_create("y", "c", "EUR", "1");
    memset(op.base_currency, 'A', sizeof(op.base_currency)); /* unterminated */
    expect_reject(f, op, BH_EINVAL, base_reason);
    expect_reject(f, mk_create("y", "c", "EUR", "-0.000000000000000001"), BH_EINVAL,
                  "totalMaxExposure must not be negative");
    assert_null(bh_ledger_snapshot(f->l, "y"));
    expect_result(f, mk_create("y", "c", "ABCDEFGHIJKLMN5", "0"), 1,
                  "{\"sequence\":1,\"data\":{\"userId\":\"y\",\"sequence\":1,\"assets\":[],"
                  "\"baseCurrency\":\"ABCDEFGHIJKLMN5\",\"totalCurrentExposure\":0,"
                  "\"totalMaxExposure\":0,\"deleted\":false}}");

    /* Op ids: 1 to 64 printable ASCII. */
    const char *op_reason = "opId must be 1 to 64 printable ASCII characters";
    const char *bad_ops[] = {"", "tab\there", "caf\xc3\xa9", "nl\n", "\x7f"};
    for (size_t i = 0; i < sizeof(bad_ops) / sizeof(bad_ops[0]); i++)
        expect_reject(f, mk_create("z", bad_ops[i], "EUR", "1"), BH_EINVAL, op_reason);
    op = mk_create("z", "c", "EUR", "1");
    memset(op.op_id, 'o', sizeof(op.op_id)); /* 65 bytes, unterminated */
    expect_reject(f, op, BH_EINVAL, op_reason);
    memset(id, 'o', sizeof(id));
    id[BH_ID_MAX] = '\0';
    expect_ok(f, mk_create("z", id, "EUR", "1"), 1); /* 64: the maximum */
    expect_ok(f, mk_create("z2", "a printable id ~!{}\"'\\", "EUR", "1"), 1);

    /* Unknown kinds. */
    op = mk_create("w", "c", "EUR", "1");
    op.kind = (bh_op_kind_t)42;
    expect_reject(f, op, BH_EINVAL, "unknown operation");
    op.kind = (bh_op_kind_t)-1;
    expect_reject(f, op, BH_EINVAL, "unknown operation");
    assert_null(bh_ledger_snapshot(f->l, "w"));
    assert_int_equal(journal_count(f, "w"), 0);
}

static void test_deposit_withdraw(void **state) {
    fx_t *f = *state;
    bh_op_t op;

    expect_ok(f, mk_create("u1", "c", "EUR", "0"), 1);
    expect_result(f, mk(BH_OP_DEPOSIT, "u1", "d1", "BTC=0.5", NULL), 2,
                  "{\"sequence\":2,\"data\":{\"userId\":\"u1\",\"sequence\":2,\"assets\":["
                  "{\"name\":\"BTC\",\"available\":0.5,\"allocated\":0,\"currentExposure\":0,"
                  "\"maxExposure\":0}],\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,"
                  "\"totalMaxExposure\":0,\"deleted\":false}}");
    expect_ok(f, mk(BH_OP_DEPOSIT, "u1", "d2", "BTC=0.000000000000000001", NULL), 3);
    expect_ok(f, mk(BH_OP_DEPOSIT, "u1", "d3", "AAA=12345678901234567890", NULL), 4);
    expect_json(f, "u1",
                "{\"userId\":\"u1\",\"sequence\":4,\"assets\":["
                "{\"name\":\"AAA\",\"available\":12345678901234567890,\"allocated\":0,"
                "\"currentExposure\":0,\"maxExposure\":0},"
                "{\"name\":\"BTC\",\"available\":0.500000000000000001,\"allocated\":0,"
                "\"currentExposure\":0,\"maxExposure\":0}],"
                "\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,\"totalMaxExposure\":0,"
                "\"deleted\":false}");

    /* Rejections: each names the asset where there is one. */
    expect_reject(f, mk(BH_OP_DEPOSIT, "u1", "x", "BTC=0", NULL), BH_EINVAL,
                  "amount of BTC must be positive");
    expect_reject(f, mk(BH_OP_DEPOSIT, "u1", "x", "BTC=-1", NULL), BH_EINVAL,
                  "amount of BTC must be positive");
    expect_reject(f, mk(BH_OP_DEPOSIT, "u1", "x", "AAA=99999999999999999999", NULL), BH_EINVAL,
                  "amount of AAA is out of range");
    const char *asset_reason = "asset must be 1 to 15 characters of A-Z 0-9";
    expect_reject(f, mk(BH_OP_DEPOSIT, "u1", "x", "btc=1", NULL), BH_EINVAL, asset_reason);
    expect_reject(f, mk(BH_OP_DEPOSIT, "u1", "x", "=1", NULL), BH_EINVAL, asset_reason);
    expect_reject(f, mk(BH_OP_DEPOSIT, "u1", "x", "B.C=1", NULL), BH_EINVAL, asset_reason);
    op = mk(BH_OP_DEPOSIT, "u1", "x", "BTC=1", NULL);
    memset(op.legs[0].asset, 'A', sizeof(op.legs[0].asset)); /* unterminated */
    expect_reject(f, op, BH_EINVAL, asset_reason);
    expect_reject(f, mk(BH_OP_DEPOSIT, "u1", "x", NULL), BH_EINVAL,
                  "deposit takes one asset and amount");
    expect_reject(f, mk(BH_OP_DEPOSIT, "u1", "x", "BTC=1", "ETH=1", NULL), BH_EINVAL,
                  "deposit takes one asset and amount");
    op = mk(BH_OP_DEPOSIT, "u1", "x", "BTC=1", NULL);
    op.nlegs = BH_OP_MAX_LEGS + 1;
    expect_reject(f, op, BH_EINVAL, "at most 32 assets per operation");
    op.nlegs = (size_t)-1;
    expect_reject(f, op, BH_EINVAL, "at most 32 assets per operation");
    expect_reject(f, mk(BH_OP_DEPOSIT, "nobody", "x", "BTC=1", NULL), BH_ENOTFOUND,
                  "no user nobody");
    expect_reject(f, mk(BH_OP_DEPOSIT, "bad id", "x", "BTC=1", NULL), BH_EINVAL,
                  "userId must be 1 to 64 characters of A-Z a-z 0-9 . _ : @ -");
    assert_null(bh_ledger_snapshot(f->l, "nobody"));

    /* Withdraw down to exactly zero; no maxExposure means no credit. */
    expect_ok(f, mk(BH_OP_WITHDRAW, "u1", "w1", "BTC=0.4", NULL), 5);
    expect_ok(f, mk(BH_OP_WITHDRAW, "u1", "w2", "BTC=0.100000000000000001", NULL), 6);
    expect_reject(f, mk(BH_OP_WITHDRAW, "u1", "w3", "BTC=0.000000000000000001", NULL), BH_EFUNDS,
                  "insufficient available BTC: 0 available, 0.000000000000000001 needed");
    expect_reject(f, mk(BH_OP_WITHDRAW, "u1", "w3", "AAA=12345678901234567891", NULL), BH_EFUNDS,
                  "insufficient available AAA: 12345678901234567890 available, "
                  "12345678901234567891 needed");
    expect_reject(f, mk(BH_OP_WITHDRAW, "u1", "w3", "ETH=1", NULL), BH_EFUNDS,
                  "insufficient available ETH: 0 available, 1 needed");
    expect_reject(f, mk(BH_OP_WITHDRAW, "u1", "w3", "BTC=0", NULL), BH_EINVAL,
                  "amount of BTC must be positive");
    expect_reject(f, mk(BH_OP_WITHDRAW, "u1", "w3", "BTC=-1", NULL), BH_EINVAL,
                  "amount of BTC must be positive");
    expect_reject(f, mk(BH_OP_WITHDRAW, "u1", "w3", NULL), BH_EINVAL,
                  "withdraw takes one asset and amount");
    /* The rejected withdrawal of an unknown asset did not create its row. */
    expect_json(f, "u1",
                "{\"userId\":\"u1\",\"sequence\":6,\"assets\":["
                "{\"name\":\"AAA\",\"available\":12345678901234567890,\"allocated\":0,"
                "\"currentExposure\":0,\"maxExposure\":0},"
                "{\"name\":\"BTC\",\"available\":0,\"allocated\":0,"
                "\"currentExposure\":0,\"maxExposure\":0}],"
                "\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,\"totalMaxExposure\":0,"
                "\"deleted\":false}");
    expect_journal(f, "u1",
                   "1 c create-user {\"baseCurrency\":\"EUR\",\"totalMaxExposure\":\"0\"}\n"
                   "2 d1 deposit {\"asset\":\"BTC\",\"amount\":\"0.5\"}\n"
                   "3 d2 deposit {\"asset\":\"BTC\",\"amount\":\"0.000000000000000001\"}\n"
                   "4 d3 deposit {\"asset\":\"AAA\",\"amount\":\"12345678901234567890\"}\n"
                   "5 w1 withdraw {\"asset\":\"BTC\",\"amount\":\"0.4\"}\n"
                   "6 w2 withdraw {\"asset\":\"BTC\",\"amount\":\"0.100000000000000001\"}\n");
}

static void test_allocate_release(void **state) {
    fx_t *f = *state;

    expect_ok(f, mk_create("u1", "c", "EUR", "0"), 1);
    expect_ok(f, mk(BH_OP_DEPOSIT, "u1", "d1", "USDT=1000", NULL), 2);
    expect_result(f, mk(BH_OP_ALLOCATE, "u1", "a1", "USDT=250", NULL), 3,
                  "{\"sequence\":3,\"data\":{\"userId\":\"u1\",\"sequence\":3,\"assets\":["
                  "{\"name\":\"USDT\",\"available\":750,\"allocated\":250,\"currentExposure\":0,"
                  "\"maxExposure\":0}],\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,"
                  "\"totalMaxExposure\":0,\"deleted\":false}}");
    expect_reject(f, mk(BH_OP_ALLOCATE, "u1", "a2", "USDT=750.000000000000000001", NULL), BH_EFUNDS,
                  "insufficient available USDT: 750 available, 750.000000000000000001 needed");
    expect_reject(f, mk(BH_OP_ALLOCATE, "u1", "a2", "BTC=1", NULL), BH_EFUNDS,
                  "insufficient available BTC: 0 available, 1 needed");
    expect_reject(f, mk(BH_OP_ALLOCATE, "u1", "a2", "USDT=0", NULL), BH_EINVAL,
                  "amount of USDT must be positive");
    expect_reject(f, mk(BH_OP_ALLOCATE, "u1", "a2", "USDT=-1", NULL), BH_EINVAL,
                  "amount of USDT must be positive");
    expect_reject(f, mk(BH_OP_RELEASE, "u1", "r1", "USDT=250.000000000000000001", NULL), BH_EFUNDS,
                  "insufficient allocated USDT: 250 allocated, 250.000000000000000001 needed");
    expect_reject(f, mk(BH_OP_RELEASE, "u1", "r1", "BTC=1", NULL), BH_EFUNDS,
                  "insufficient allocated BTC: 0 allocated, 1 needed");
    expect_reject(f, mk(BH_OP_RELEASE, "u1", "r1", "USDT=-1", NULL), BH_EINVAL,
                  "amount of USDT must be positive");
    expect_reject(f, mk(BH_OP_RELEASE, "u1", "r1", "USDT=1", "BTC=1", NULL), BH_EINVAL,
                  "release takes one asset and amount");
    expect_reject(f, mk(BH_OP_ALLOCATE, "nobody", "r1", "USDT=1", NULL), BH_ENOTFOUND,
                  "no user nobody");
    expect_ok(f, mk(BH_OP_RELEASE, "u1", "r1", "USDT=50", NULL), 4);
    expect_ok(f, mk(BH_OP_ALLOCATE, "u1", "a2", "USDT=800", NULL), 5); /* all of it */
    expect_result(f, mk(BH_OP_RELEASE, "u1", "r2", "USDT=1000", NULL), 6,
                  "{\"sequence\":6,\"data\":{\"userId\":\"u1\",\"sequence\":6,\"assets\":["
                  "{\"name\":\"USDT\",\"available\":1000,\"allocated\":0,\"currentExposure\":0,"
                  "\"maxExposure\":0}],\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,"
                  "\"totalMaxExposure\":0,\"deleted\":false}}");
    expect_journal(f, "u1",
                   "1 c create-user {\"baseCurrency\":\"EUR\",\"totalMaxExposure\":\"0\"}\n"
                   "2 d1 deposit {\"asset\":\"USDT\",\"amount\":\"1000\"}\n"
                   "3 a1 allocate {\"asset\":\"USDT\",\"amount\":\"250\"}\n"
                   "4 r1 release {\"asset\":\"USDT\",\"amount\":\"50\"}\n"
                   "5 a2 allocate {\"asset\":\"USDT\",\"amount\":\"800\"}\n"
                   "6 r2 release {\"asset\":\"USDT\",\"amount\":\"1000\"}\n");
}

static void test_trade(void **state) {
    fx_t *f = *state;
    bh_op_t op;

    expect_ok(f, mk_create("u1", "c", "EUR", "0"), 1);
    expect_ok(f, mk(BH_OP_DEPOSIT, "u1", "d1", "BTC=1", NULL), 2);
    expect_result(f, mk(BH_OP_TRADE, "u1", "t1", "BTC=-0.1", "EUR=6000", NULL), 3,
                  "{\"sequence\":3,\"data\":{\"userId\":\"u1\",\"sequence\":3,\"assets\":["
                  "{\"name\":\"BTC\",\"available\":0.9,\"allocated\":0,\"currentExposure\":0,"
                  "\"maxExposure\":0},"
                  "{\"name\":\"EUR\",\"available\":6000,\"allocated\":0,\"currentExposure\":0,"
                  "\"maxExposure\":0}],\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,"
                  "\"totalMaxExposure\":0,\"deleted\":false}}");
    /* New assets in any leg order end up sorted by name. */
    expect_ok(f, mk(BH_OP_TRADE, "u1", "t2", "ZZZ=1", "AAA=2", "EUR=-1", "CCC=3", NULL), 4);
    expect_json(f, "u1",
                "{\"userId\":\"u1\",\"sequence\":4,\"assets\":["
                "{\"name\":\"AAA\",\"available\":2,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":0},"
                "{\"name\":\"BTC\",\"available\":0.9,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":0},"
                "{\"name\":\"CCC\",\"available\":3,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":0},"
                "{\"name\":\"EUR\",\"available\":5999,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":0},"
                "{\"name\":\"ZZZ\",\"available\":1,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":0}],\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,"
                "\"totalMaxExposure\":0,\"deleted\":false}");

    /* All or nothing: the second leg fails, the first (and a new asset) is not applied. */
    expect_reject(f, mk(BH_OP_TRADE, "u1", "t3", "BTC=0.1", "EUR=-10000", NULL), BH_EFUNDS,
                  "insufficient available EUR: 5999 available, 10000 needed");
    expect_reject(f, mk(BH_OP_TRADE, "u1", "t3", "NEW=5", "AAA=-2.000000000000000001", NULL),
                  BH_EFUNDS,
                  "insufficient available AAA: 2 available, 2.000000000000000001 needed");
    expect_reject(f, mk(BH_OP_TRADE, "u1", "t3", "BTC=1", "AAA=99999999999999999999", NULL),
                  BH_EINVAL, "amount of AAA is out of range");
    expect_reject(f, mk(BH_OP_TRADE, "u1", "t3", "BTC=1", "EUR=0", NULL), BH_EINVAL,
                  "amount of EUR must not be zero");
    expect_reject(f, mk(BH_OP_TRADE, "u1", "t3", "BTC=1", "EUR=1", "BTC=-1", NULL), BH_EINVAL,
                  "asset BTC appears twice");
    expect_reject(f, mk(BH_OP_TRADE, "u1", "t3", NULL), BH_EINVAL, "trade needs at least one leg");
    expect_reject(f, mk(BH_OP_TRADE, "u1", "t3", "BTC=1", "eur=1", NULL), BH_EINVAL,
                  "asset must be 1 to 15 characters of A-Z 0-9");
    expect_reject(f, mk(BH_OP_TRADE, "nobody", "t3", "BTC=1", NULL), BH_ENOTFOUND,
                  "no user nobody");
    expect_json(f, "u1",
                "{\"userId\":\"u1\",\"sequence\":4,\"assets\":["
                "{\"name\":\"AAA\",\"available\":2,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":0},"
                "{\"name\":\"BTC\",\"available\":0.9,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":0},"
                "{\"name\":\"CCC\",\"available\":3,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":0},"
                "{\"name\":\"EUR\",\"available\":5999,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":0},"
                "{\"name\":\"ZZZ\",\"available\":1,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":0}],\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,"
                "\"totalMaxExposure\":0,\"deleted\":false}");

    /* 32 legs is the maximum; 33 are refused. */
    op = mk(BH_OP_TRADE, "u1", "t32", NULL);
    for (size_t i = 0; i < BH_OP_MAX_LEGS; i++) {
        snprintf(op.legs[i].asset, sizeof(op.legs[i].asset), "X%02zu", BH_OP_MAX_LEGS - 1 - i);
        op.legs[i].amount = D("0.5");
    }
    op.nlegs = BH_OP_MAX_LEGS;
    expect_ok(f, op, 5);
    bh_snapshot_t *s = bh_ledger_snapshot(f->l, "u1");
    assert_int_equal(s->nassets, 5 + BH_OP_MAX_LEGS);
    assert_string_equal(s->assets[3].name, "EUR");
    assert_string_equal(s->assets[4].name, "X00");
    assert_string_equal(s->assets[4 + BH_OP_MAX_LEGS - 1].name, "X31");
    assert_string_equal(s->assets[4 + BH_OP_MAX_LEGS].name, "ZZZ");
    bh_snapshot_release(s);
    op.nlegs = BH_OP_MAX_LEGS + 1;
    expect_reject(f, op, BH_EINVAL, "at most 32 assets per operation");

    expect_journal(
        f, "u1",
        "1 c create-user {\"baseCurrency\":\"EUR\",\"totalMaxExposure\":\"0\"}\n"
        "2 d1 deposit {\"asset\":\"BTC\",\"amount\":\"1\"}\n"
        "3 t1 trade {\"legs\":[{\"asset\":\"BTC\",\"amount\":\"-0.1\"},{\"asset\":\"EUR\","
        "\"amount\":\"6000\"}]}\n"
        "4 t2 trade {\"legs\":[{\"asset\":\"ZZZ\",\"amount\":\"1\"},{\"asset\":\"AAA\",\"amount\":"
        "\"2\"},{\"asset\":\"EUR\",\"amount\":\"-1\"},{\"asset\":\"CCC\",\"amount\":\"3\"}]}\n"
        "5 t32 trade {\"legs\":[{\"asset\":\"X31\",\"amount\":\"0.5\"},{\"asset\":\"X30\","
        "\"amount\":\"0.5\"},{\"asset\":\"X29\",\"amount\":\"0.5\"},{\"asset\":\"X28\","
        "\"amount\":\"0.5\"},{\"asset\":\"X27\",\"amount\":\"0.5\"},{\"asset\":\"X26\","
        "\"amount\":\"0.5\"},{\"asset\":\"X25\",\"amount\":\"0.5\"},{\"asset\":\"X24\","
        "\"amount\":\"0.5\"},{\"asset\":\"X23\",\"amount\":\"0.5\"},{\"asset\":\"X22\","
        "\"amount\":\"0.5\"},{\"asset\":\"X21\",\"amount\":\"0.5\"},{\"asset\":\"X20\","
        "\"amount\":\"0.5\"},{\"asset\":\"X19\",\"amount\":\"0.5\"},{\"asset\":\"X18\","
        "\"amount\":\"0.5\"},{\"asset\":\"X17\",\"amount\":\"0.5\"},{\"asset\":\"X16\","
        "\"amount\":\"0.5\"},{\"asset\":\"X15\",\"amount\":\"0.5\"},{\"asset\":\"X14\","
        "\"amount\":\"0.5\"},{\"asset\":\"X13\",\"amount\":\"0.5\"},{\"asset\":\"X12\","
        "\"amount\":\"0.5\"},{\"asset\":\"X11\",\"amount\":\"0.5\"},{\"asset\":\"X10\","
        "\"amount\":\"0.5\"},{\"asset\":\"X09\",\"amount\":\"0.5\"},{\"asset\":\"X08\","
        "\"amount\":\"0.5\"},{\"asset\":\"X07\",\"amount\":\"0.5\"},{\"asset\":\"X06\","
        "\"amount\":\"0.5\"},{\"asset\":\"X05\",\"amount\":\"0.5\"},{\"asset\":\"X04\","
        "\"amount\":\"0.5\"},{\"asset\":\"X03\",\"amount\":\"0.5\"},{\"asset\":\"X02\","
        "\"amount\":\"0.5\"},{\"asset\":\"X01\",\"amount\":\"0.5\"},{\"asset\":\"X00\","
        "\"amount\":\"0.5\"}]}\n");
}

static void test_set_limits(void **state) {
    fx_t *f = *state;

    expect_ok(f, mk_create("u1", "c", "EUR", "2000"), 1);
    /* Per asset alone (creates the asset row), the total alone, then both together. */
    expect_ok(f, mk(BH_OP_SET_LIMITS, "u1", "l1", "ETH=1500", NULL), 2);
    expect_result(f, with_total(mk(BH_OP_SET_LIMITS, "u1", "l2", NULL), "1000"), 3,
                  "{\"sequence\":3,\"data\":{\"userId\":\"u1\",\"sequence\":3,\"assets\":["
                  "{\"name\":\"ETH\",\"available\":0,\"allocated\":0,\"currentExposure\":0,"
                  "\"maxExposure\":1500}],\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,"
                  "\"totalMaxExposure\":1000,\"deleted\":false}}");
    expect_result(
        f, with_total(mk(BH_OP_SET_LIMITS, "u1", "l3", "BTC=0", "ETH=0.25", NULL), "3000"), 4,
        "{\"sequence\":4,\"data\":{\"userId\":\"u1\",\"sequence\":4,\"assets\":["
        "{\"name\":\"BTC\",\"available\":0,\"allocated\":0,\"currentExposure\":0,"
        "\"maxExposure\":0},"
        "{\"name\":\"ETH\",\"available\":0,\"allocated\":0,\"currentExposure\":0,"
        "\"maxExposure\":0.25}],\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,"
        "\"totalMaxExposure\":3000,\"deleted\":false}}");
    expect_ok(f, with_total(mk(BH_OP_SET_LIMITS, "u1", "l4", NULL), "0"), 5);

    expect_reject(f, mk(BH_OP_SET_LIMITS, "u1", "l5", "BTC=-0.1", NULL), BH_EINVAL,
                  "maxExposure of BTC must not be negative");
    expect_reject(f, with_total(mk(BH_OP_SET_LIMITS, "u1", "l5", "BTC=1", NULL), "-1"), BH_EINVAL,
                  "totalMaxExposure must not be negative");
    expect_reject(f, mk(BH_OP_SET_LIMITS, "u1", "l5", NULL), BH_EINVAL,
                  "set-limits needs maxExposure or totalMaxExposure");
    expect_reject(f, mk(BH_OP_SET_LIMITS, "u1", "l5", "BTC=1", "BTC=2", NULL), BH_EINVAL,
                  "asset BTC appears twice");
    expect_reject(f, mk(BH_OP_SET_LIMITS, "nobody", "l5", "BTC=1", NULL), BH_ENOTFOUND,
                  "no user nobody");
    expect_journal(f, "u1",
                   "1 c create-user {\"baseCurrency\":\"EUR\",\"totalMaxExposure\":\"2000\"}\n"
                   "2 l1 set-limits {\"maxExposure\":{\"ETH\":\"1500\"}}\n"
                   "3 l2 set-limits {\"totalMaxExposure\":\"1000\"}\n"
                   "4 l3 set-limits {\"maxExposure\":{\"BTC\":\"0\",\"ETH\":\"0.25\"},"
                   "\"totalMaxExposure\":\"3000\"}\n"
                   "5 l4 set-limits {\"totalMaxExposure\":\"0\"}\n");
    expect_json(f, "u1",
                "{\"userId\":\"u1\",\"sequence\":5,\"assets\":["
                "{\"name\":\"BTC\",\"available\":0,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":0},"
                "{\"name\":\"ETH\",\"available\":0,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":0.25}],\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,"
                "\"totalMaxExposure\":0,\"deleted\":false}");
}

#define DELETED_DATA                                                                               \
    "{\"userId\":\"u1\",\"sequence\":3,\"assets\":[{\"name\":\"BTC\",\"available\":2,"             \
    "\"allocated\":0,\"currentExposure\":0,\"maxExposure\":0}],\"baseCurrency\":\"EUR\","          \
    "\"totalCurrentExposure\":0,\"totalMaxExposure\":10,\"deleted\":true}"

static void test_delete_user(void **state) {
    fx_t *f = *state;
    const char *deleted = "{\"sequence\":3,\"data\":" DELETED_DATA "}";
    bh_snapshot_t *s;
    char *dep;

    expect_ok(f, mk_create("u1", "c", "EUR", "10"), 1);
    dep = result_of(f, mk(BH_OP_DEPOSIT, "u1", "d1", "BTC=2", NULL));
    expect_result(f, mk(BH_OP_DELETE_USER, "u1", "del-1", NULL), 3, deleted);
    expect_json(f, "u1", DELETED_DATA);
    s = bh_ledger_snapshot(f->l, "u1");
    assert_true(s->deleted);
    assert_ptr_equal(s, f->last_listened); /* the listener got the deleted snapshot */
    bh_snapshot_release(s);

    expect_reject(f, mk(BH_OP_DEPOSIT, "u1", "d2", "BTC=1", NULL), BH_ENOTFOUND, "no user u1");
    expect_reject(f, mk(BH_OP_WITHDRAW, "u1", "w1", "BTC=1", NULL), BH_ENOTFOUND, "no user u1");
    expect_reject(f, mk(BH_OP_DELETE_USER, "u1", "del-2", NULL), BH_ENOTFOUND, "no user u1");
    expect_reject(f, mk_create("u1", "c2", "EUR", "1"), BH_EEXIST, "user u1 already exists");
    expect_reject(f, mk(BH_OP_DELETE_USER, "nobody", "del-1", NULL), BH_ENOTFOUND,
                  "no user nobody");
    /* Repeats still answer their first results. */
    expect_repeat(f, mk(BH_OP_DELETE_USER, "u1", "del-1", NULL), 3, deleted);
    expect_repeat(f, mk(BH_OP_DEPOSIT, "u1", "d1", "BTC=2", NULL), 2, dep);
    expect_journal(f, "u1",
                   "1 c create-user {\"baseCurrency\":\"EUR\",\"totalMaxExposure\":\"10\"}\n"
                   "2 d1 deposit {\"asset\":\"BTC\",\"amount\":\"2\"}\n"
                   "3 del-1 delete-user {}\n");

    /* The same after a restart. */
    reopen(f);
    expect_json(f, "u1", DELETED_DATA);
    expect_reject(f, mk(BH_OP_DEPOSIT, "u1", "d2", "BTC=1", NULL), BH_ENOTFOUND, "no user u1");
    expect_reject(f, mk_create("u1", "c2", "EUR", "1"), BH_EEXIST, "user u1 already exists");
    expect_repeat(f, mk(BH_OP_DELETE_USER, "u1", "del-1", NULL), 3, deleted);
    assert_int_equal(f->nlisten, 3);
    free(dep);
}

static void test_exposure_limits(void **state) {
    fx_t *f = *state;

    assert_int_equal(set_rates(f, "EUR", NULL, "BTC=60000", "ETH=3000", NULL), BH_OK);
    expect_ok(f, mk_create("u1", "c", "EUR", "2000"), 1);
    expect_ok(f, mk(BH_OP_SET_LIMITS, "u1", "l1", "BTC=1500", NULL), 2);
    expect_result(f, mk(BH_OP_WITHDRAW, "u1", "w1", "BTC=0.02", NULL), 3,
                  "{\"sequence\":3,\"data\":{\"userId\":\"u1\",\"sequence\":3,\"assets\":["
                  "{\"name\":\"BTC\",\"available\":-0.02,\"allocated\":0,\"currentExposure\":1200,"
                  "\"maxExposure\":1500}],\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":1200,"
                  "\"totalMaxExposure\":2000,\"deleted\":false}}");
    /* 0.03 * 60000 = 1800 > 1500. */
    expect_reject(f, mk(BH_OP_WITHDRAW, "u1", "w2", "BTC=0.01", NULL), BH_ELIMIT,
                  "exposure of BTC would be 1800, over its maxExposure 1500");
    /* ETH alone (900) fits its 1500, but 1200 + 900 = 2100 > 2000 total. */
    expect_ok(f, mk(BH_OP_SET_LIMITS, "u1", "l2", "ETH=1500", NULL), 4);
    expect_reject(f, mk(BH_OP_WITHDRAW, "u1", "w2", "ETH=0.3", NULL), BH_ELIMIT,
                  "total exposure would be 2100, over totalMaxExposure 2000");
    expect_ok(f, mk(BH_OP_WITHDRAW, "u1", "w2", "ETH=0.25", NULL), 5); /* 1950 */
    /* Just under the total is fine, one unit more is not. */
    expect_ok(f, mk(BH_OP_WITHDRAW, "u1", "w3", "BTC=0.000833333333333333", NULL), 6);
    expect_reject(f, mk(BH_OP_WITHDRAW, "u1", "w4", "BTC=0.000000000000000001", NULL), BH_ELIMIT,
                  "total exposure would be 2000.00000000000004, over totalMaxExposure 2000");
    /* A trade whose second leg breaks a limit applies neither leg. */
    expect_reject(f, mk(BH_OP_TRADE, "u1", "t1", "EUR=100", "BTC=-0.01", NULL), BH_ELIMIT,
                  "exposure of BTC would be 1849.99999999999998, over its maxExposure 1500");
    expect_reject(f, mk(BH_OP_TRADE, "u1", "t1", "EUR=100", "ETH=-0.1", NULL), BH_ELIMIT,
                  "total exposure would be 2299.99999999999998, over totalMaxExposure 2000");
    /* Credit room without a rate cannot be valued: rejected, naming the asset. */
    expect_ok(f, mk(BH_OP_SET_LIMITS, "u1", "l3", "XRP=1000", NULL), 7);
    expect_reject(f, mk(BH_OP_WITHDRAW, "u1", "w4", "XRP=1", NULL), BH_ELIMIT,
                  "no rate for XRP in EUR to value the exposure");
    expect_reject(f, mk(BH_OP_TRADE, "u1", "w4", "BTC=0.001", "XRP=-1", NULL), BH_ELIMIT,
                  "no rate for XRP in EUR to value the exposure");
    /* Deposits are never limited. */
    expect_ok(f, mk(BH_OP_DEPOSIT, "u1", "d1", "ETH=0.05", NULL), 8);
    expect_json(f, "u1",
                "{\"userId\":\"u1\",\"sequence\":8,\"assets\":["
                "{\"name\":\"BTC\",\"available\":-0.020833333333333333,\"allocated\":0,"
                "\"currentExposure\":1249.99999999999998,\"maxExposure\":1500},"
                "{\"name\":\"ETH\",\"available\":-0.2,\"allocated\":0,\"currentExposure\":600,"
                "\"maxExposure\":1500},"
                "{\"name\":\"XRP\",\"available\":0,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":1000}],"
                "\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":1849.99999999999998,"
                "\"totalMaxExposure\":2000,\"deleted\":false}");
    /* An exact boundary: exposure equal to the asset limit is allowed. */
    expect_ok(f, mk_create("u2", "c", "EUR", "1500"), 1);
    expect_ok(f, mk(BH_OP_SET_LIMITS, "u2", "l1", "BTC=1500", NULL), 2);
    expect_ok(f, mk(BH_OP_WITHDRAW, "u2", "w1", "BTC=0.025", NULL), 3);
    expect_reject(f, mk(BH_OP_WITHDRAW, "u2", "w2", "BTC=0.000000000000000001", NULL), BH_ELIMIT,
                  "exposure of BTC would be 1500.00000000000006, over its maxExposure 1500");
    expect_ok(f, mk(BH_OP_SET_LIMITS, "u2", "l2", "BTC=2000", NULL), 4);
    expect_reject(f, mk(BH_OP_WITHDRAW, "u2", "w2", "BTC=0.000000000000000001", NULL), BH_ELIMIT,
                  "total exposure would be 1500.00000000000006, over totalMaxExposure 1500");
}

static void test_base_currency_and_allocated_cover(void **state) {
    fx_t *f = *state;

    expect_ok(f, mk_create("u1", "EUR-user", "EUR", "100"), 1);
    /* The base currency needs no rate (1). */
    expect_ok(f, mk(BH_OP_SET_LIMITS, "u1", "l1", "EUR=100", NULL), 2);
    expect_ok(f, mk(BH_OP_WITHDRAW, "u1", "w1", "EUR=60.5", NULL), 3);
    expect_ok(f, mk(BH_OP_WITHDRAW, "u1", "w2", "EUR=39.5", NULL), 4);
    expect_reject(f, mk(BH_OP_WITHDRAW, "u1", "w3", "EUR=0.1", NULL), BH_ELIMIT,
                  "exposure of EUR would be 100.1, over its maxExposure 100");
    /* Negative available covered by allocated: net >= 0, no exposure and no rate needed. */
    expect_ok(f, mk(BH_OP_DEPOSIT, "u1", "d1", "XRP=10", NULL), 5);
    expect_ok(f, mk(BH_OP_ALLOCATE, "u1", "a1", "XRP=10", NULL), 6);
    expect_reject(f, mk(BH_OP_WITHDRAW, "u1", "w4", "XRP=4", NULL), BH_EFUNDS,
                  "insufficient available XRP: 0 available, 4 needed");
    expect_ok(f, mk(BH_OP_SET_LIMITS, "u1", "l2", "XRP=1", NULL), 7);
    expect_ok(f, mk(BH_OP_WITHDRAW, "u1", "w4", "XRP=4", NULL), 8);
    /* An allocation needs available funds, credit room or not. */
    expect_reject(f, mk(BH_OP_ALLOCATE, "u1", "a2", "XRP=1", NULL), BH_EFUNDS,
                  "insufficient available XRP: -4 available, 1 needed");
    /* Beyond the allocated cover the XRP rate is needed, and there is none. */
    expect_reject(f, mk(BH_OP_WITHDRAW, "u1", "w5", "XRP=6.5", NULL), BH_ELIMIT,
                  "no rate for XRP in EUR to value the exposure");
    expect_json(f, "u1",
                "{\"userId\":\"u1\",\"sequence\":8,\"assets\":["
                "{\"name\":\"EUR\",\"available\":-100,\"allocated\":0,\"currentExposure\":100,"
                "\"maxExposure\":100},"
                "{\"name\":\"XRP\",\"available\":-4,\"allocated\":10,\"currentExposure\":0,"
                "\"maxExposure\":1}],"
                "\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":100,\"totalMaxExposure\":100,"
                "\"deleted\":false}");
}

static void test_over_limit_after_rate_rise(void **state) {
    fx_t *f = *state;
    bh_snapshot_t *before, *after;

    assert_int_equal(set_rates(f, "EUR", NULL, "BTC=60000", NULL), BH_OK);
    expect_ok(f, mk_create("u1", "c", "EUR", "2000"), 1);
    expect_ok(f, mk(BH_OP_SET_LIMITS, "u1", "l1", "BTC=1500", NULL), 2);
    expect_ok(f, mk(BH_OP_WITHDRAW, "u1", "w1", "BTC=0.02", NULL), 3);
    expect_ok(f, mk(BH_OP_DEPOSIT, "u1", "d0", "EUR=500", NULL), 4);
    /* 0.02 BTC are now worth 2000 > 1500. Rates publish nothing until the user's next change. */
    before = bh_ledger_snapshot(f->l, "u1");
    int n = f->nlisten;
    assert_int_equal(set_rates(f, "EUR", NULL, "BTC=100000", NULL), BH_OK);
    after = bh_ledger_snapshot(f->l, "u1");
    assert_ptr_equal(before, after);
    assert_int_equal(f->nlisten, n);
    bh_snapshot_release(before);
    bh_snapshot_release(after);
    /* Over the limit, what reduces (or keeps) the exposure is accepted. */
    expect_result(f, mk(BH_OP_DEPOSIT, "u1", "d1", "BTC=0.001", NULL), 5,
                  "{\"sequence\":5,\"data\":{\"userId\":\"u1\",\"sequence\":5,\"assets\":["
                  "{\"name\":\"BTC\",\"available\":-0.019,\"allocated\":0,\"currentExposure\":1900,"
                  "\"maxExposure\":1500},"
                  "{\"name\":\"EUR\",\"available\":500,\"allocated\":0,\"currentExposure\":0,"
                  "\"maxExposure\":0}],\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":1900,"
                  "\"totalMaxExposure\":2000,\"deleted\":false}}");
    expect_ok(f, mk(BH_OP_TRADE, "u1", "t1", "BTC=0.001", "EUR=-100", NULL), 6);
    expect_ok(f, mk(BH_OP_WITHDRAW, "u1", "w2", "EUR=400", NULL), 7);
    /* What raises it is not. */
    expect_reject(f, mk(BH_OP_WITHDRAW, "u1", "w3", "BTC=0.000000000000000001", NULL), BH_ELIMIT,
                  "exposure of BTC would be 1800.0000000000001, over its maxExposure 1500");
    /* Now over the total too (3600 > 2000): a withdrawal covered by allocated funds raises no
     * exposure and is still allowed; raising BTC is refused by the total. */
    assert_int_equal(set_rates(f, "EUR", NULL, "BTC=200000", NULL), BH_OK);
    expect_ok(f, mk(BH_OP_DEPOSIT, "u1", "d2", "XRP=10", NULL), 8);
    expect_ok(f, mk(BH_OP_ALLOCATE, "u1", "a1", "XRP=10", NULL), 9);
    expect_ok(f, mk(BH_OP_SET_LIMITS, "u1", "l2", "XRP=1", "BTC=1000000", NULL), 10);
    expect_ok(f, mk(BH_OP_WITHDRAW, "u1", "w4", "XRP=4", NULL), 11);
    expect_reject(f, mk(BH_OP_WITHDRAW, "u1", "w5", "BTC=0.000000000000000001", NULL), BH_ELIMIT,
                  "total exposure would be 3600.0000000000002, over totalMaxExposure 2000");
    expect_json(f, "u1",
                "{\"userId\":\"u1\",\"sequence\":11,\"assets\":["
                "{\"name\":\"BTC\",\"available\":-0.018,\"allocated\":0,\"currentExposure\":3600,"
                "\"maxExposure\":1000000},"
                "{\"name\":\"EUR\",\"available\":0,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":0},"
                "{\"name\":\"XRP\",\"available\":-4,\"allocated\":10,\"currentExposure\":0,"
                "\"maxExposure\":1}],\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":3600,"
                "\"totalMaxExposure\":2000,\"deleted\":false}");
}

static void check_exposure(fx_t *f, const char *base, const char *name, const char *available,
                           const char *allocated, int want_rc, const char *want) {
    bh_asset_t a;
    bh_dec_t out = D("7");
    char buf[BH_DEC_STRLEN];
    memset(&a, 0, sizeof(a));
    strcpy(a.name, name);
    a.available = D(available);
    a.allocated = D(allocated);
    a.max_exposure = D("1");
    assert_int_equal(bh_ledger_exposure(f->l, base, &a, &out), want_rc);
    if (want_rc == BH_OK) {
        bh_dec_format(out, buf);
        assert_string_equal(buf, want);
    }
}

static void test_exposure_function(void **state) {
    fx_t *f = *state;

    check_exposure(f, "EUR", "BTC", "-0.5", "0.1", BH_ENOTFOUND, NULL);
    assert_int_equal(set_rates(f, "EUR", NULL, "BTC=60000.5", NULL), BH_OK);
    check_exposure(f, "EUR", "BTC", "-0.5", "0.1", BH_OK, "24000.2");
    check_exposure(f, "USD", "BTC", "-0.5", "0.1", BH_ENOTFOUND, NULL); /* rates per currency */
    check_exposure(f, "BTC", "BTC", "-0.5", "0.1", BH_OK, "0.4");       /* the base itself: 1 */
    /* Only the negative part of the net position counts; no rate needed otherwise. */
    check_exposure(f, "USD", "BTC", "-0.1", "0.1", BH_OK, "0");
    check_exposure(f, "USD", "BTC", "5", "0", BH_OK, "0");
    check_exposure(f, "USD", "BTC", "0", "0", BH_OK, "0");
    check_exposure(f, "USD", "BTC", "-0.000000000000000001", "0", BH_ENOTFOUND, NULL);
    /* Half-even rounding to 18 digits through bh_dec_mul. */
    assert_int_equal(set_rates(f, "EUR", NULL, "RQ=0.25", "RH=0.5", "R3Q=0.75", NULL), BH_OK);
    check_exposure(f, "EUR", "RH", "-0.000000000000000001", "0", BH_OK, "0"); /* 0.5 -> 0 */
    check_exposure(f, "EUR", "RH", "-0.000000000000000003", "0", BH_OK,
                   "0.000000000000000002"); /* 1.5 -> 2 */
    check_exposure(f, "EUR", "RH", "-0.000000000000000005", "0", BH_OK,
                   "0.000000000000000002");                                   /* 2.5 -> 2 */
    check_exposure(f, "EUR", "RQ", "-0.000000000000000001", "0", BH_OK, "0"); /* 0.25 -> 0 */
    check_exposure(f, "EUR", "R3Q", "-0.000000000000000001", "0", BH_OK,
                   "0.000000000000000001"); /* 0.75 -> 1 */
    check_exposure(f, "EUR", "RQ", "-0.000000000000000014", "0", BH_OK,
                   "0.000000000000000004"); /* 3.5 -> 4 */
    check_exposure(f, "EUR", "RQ", "-0.00000000000000001", "0", BH_OK,
                   "0.000000000000000002"); /* 2.5 -> 2 */
    check_exposure(f, "EUR", "RQ", "-0.000000000000000006", "0.000000000000000001", BH_OK,
                   "0.000000000000000001"); /* net -5: 1.25 -> 1 */
    /* Out of range is reported, not wrapped. */
    check_exposure(f, "EUR", "BTC", "-99999999999999999999", "0", BH_ERANGE, NULL);
    /* The same rounding shows in a published snapshot. */
    expect_ok(f, mk_create("u1", "c", "EUR", "1"), 1);
    expect_ok(f, mk(BH_OP_SET_LIMITS, "u1", "l1", "RH=1", NULL), 2);
    expect_ok(f, mk(BH_OP_WITHDRAW, "u1", "w1", "RH=0.000000000000000005", NULL), 3);
    expect_json(f, "u1",
                "{\"userId\":\"u1\",\"sequence\":3,\"assets\":["
                "{\"name\":\"RH\",\"available\":-0.000000000000000005,\"allocated\":0,"
                "\"currentExposure\":0.000000000000000002,\"maxExposure\":1}],"
                "\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0.000000000000000002,"
                "\"totalMaxExposure\":1,\"deleted\":false}");
}

static void test_large_net_position(void **state) {
    fx_t *f = *state;

    /* available + allocated can exceed the decimal range while each fits; that net position
     * is positive: no exposure, no rate needed. */
    check_exposure(f, "EUR", "AAA", "90000000000000000000", "90000000000000000000", BH_OK, "0");
    expect_ok(f, mk_create("u1", "c", "EUR", "0"), 1);
    expect_ok(f, mk(BH_OP_DEPOSIT, "u1", "d1", "AAA=90000000000000000000", NULL), 2);
    expect_ok(f, mk(BH_OP_ALLOCATE, "u1", "a1", "AAA=90000000000000000000", NULL), 3);
    expect_ok(f, mk(BH_OP_DEPOSIT, "u1", "d2", "AAA=90000000000000000000", NULL), 4);
    expect_ok(f, mk(BH_OP_WITHDRAW, "u1", "w1", "AAA=1", NULL), 5);
    expect_ok(f, mk(BH_OP_TRADE, "u1", "t1", "AAA=-1", "EUR=1", NULL), 6);
    expect_reject(f, mk(BH_OP_ALLOCATE, "u1", "a2", "AAA=89999999999999999998", NULL), BH_EINVAL,
                  "amount of AAA is out of range");
    expect_json(f, "u1",
                "{\"userId\":\"u1\",\"sequence\":6,\"assets\":["
                "{\"name\":\"AAA\",\"available\":89999999999999999998,"
                "\"allocated\":90000000000000000000,\"currentExposure\":0,\"maxExposure\":0},"
                "{\"name\":\"EUR\",\"available\":1,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":0}],\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,"
                "\"totalMaxExposure\":0,\"deleted\":false}");
}

static void test_rates(void **state) {
    fx_t *f = *state;
    bh_store_rate_t one;
    res_t x;

    assert_int_equal(
        set_rates(f, "eur", "baseCurrency must be 1 to 15 characters of A-Z 0-9", "BTC=1", NULL),
        BH_EINVAL);
    assert_int_equal(
        set_rates(f, "", "baseCurrency must be 1 to 15 characters of A-Z 0-9", "BTC=1", NULL),
        BH_EINVAL);
    assert_int_equal(set_rates(f, "EUR", "rates must name at least one asset", NULL), BH_EINVAL);
    assert_int_equal(set_rates(f, "EUR", "rate of BTC must be positive", "BTC=0", NULL), BH_EINVAL);
    assert_int_equal(set_rates(f, "EUR", "rate of BTC must be positive", "BTC=-1", NULL),
                     BH_EINVAL);
    const char *asset_reason =
        "rate asset must be 1 to 15 characters of A-Z 0-9, other than the base currency";
    assert_int_equal(set_rates(f, "EUR", asset_reason, "EUR=1", NULL), BH_EINVAL);
    assert_int_equal(set_rates(f, "EUR", asset_reason, "=1", NULL), BH_EINVAL);
    assert_int_equal(set_rates(f, "EUR", asset_reason, "btc=1", NULL), BH_EINVAL);
    memset(&one, 0, sizeof(one));
    memset(one.asset, 'A', sizeof(one.asset)); /* unterminated */
    one.rate = D("1");
    res_init(f, &x, "");
    x.is_rates = true;
    assert_int_equal(bh_ledger_set_rates(f->l, "EUR", &one, 1, on_result, &x), BH_OK);
    wait_for(f, &x);
    assert_int_equal(x.status, BH_EINVAL);
    assert_string_equal(x.reason, asset_reason);

    assert_int_equal(set_rates(f, "EUR", NULL, "BTC=50000", "ETH=3000", NULL), BH_OK);
    assert_int_equal(set_rates(f, "EUR", NULL, "BTC=60000", NULL), BH_OK);
    assert_int_equal(set_rates(f, "USD", NULL, "BTC=70000", NULL), BH_OK);
    /* One bad rate refuses them all. */
    assert_int_equal(set_rates(f, "EUR", "rate of ETH must be positive", "BTC=1", "ETH=0", NULL),
                     BH_EINVAL);
    check_exposure(f, "EUR", "BTC", "-1", "0", BH_OK, "60000");
    check_exposure(f, "EUR", "ETH", "-1", "0", BH_OK, "3000");
    check_exposure(f, "USD", "BTC", "-1", "0", BH_OK, "70000");
    assert_int_equal(f->nlisten, 0);

    /* Rates survive a restart and drive exposure. */
    reopen(f);
    check_exposure(f, "EUR", "BTC", "-1", "0", BH_OK, "60000");
    check_exposure(f, "USD", "ETH", "-1", "0", BH_ENOTFOUND, NULL);
    expect_ok(f, mk_create("u1", "c", "USD", "1000000"), 1);
    expect_ok(f, mk(BH_OP_SET_LIMITS, "u1", "l1", "BTC=1000000", NULL), 2);
    expect_ok(f, mk(BH_OP_WITHDRAW, "u1", "w1", "BTC=1", NULL), 3);
    expect_json(f, "u1",
                "{\"userId\":\"u1\",\"sequence\":3,\"assets\":[{\"name\":\"BTC\",\"available\":"
                "-1,\"allocated\":0,\"currentExposure\":70000,\"maxExposure\":1000000}],"
                "\"baseCurrency\":\"USD\",\"totalCurrentExposure\":70000,\"totalMaxExposure\":"
                "1000000,\"deleted\":false}");
}

static void test_seed_snapshot_bytes(void **state) {
    fx_t *f = *state;

    expect_ok(f, mk_create("user-123", "c", "EUR", "1500"), 1);
    expect_ok(f, mk(BH_OP_DEPOSIT, "user-123", "1", "USDT=1250", NULL), 2);
    expect_ok(f, mk(BH_OP_TRADE, "user-123", "2", "ETH=5", "BTC=0.5", NULL), 3);
    expect_ok(f, mk(BH_OP_ALLOCATE, "user-123", "3", "USDT=250", NULL), 4);
    expect_ok(f, mk(BH_OP_SET_LIMITS, "user-123", "4", "USDT=1500", "BTC=1500", "ETH=1500", NULL),
              5);
    /* The seed's example `data`, byte for byte (sequence aside). */
    expect_json(f, "user-123",
                "{\"userId\":\"user-123\",\"sequence\":5,\"assets\":["
                "{\"name\":\"BTC\",\"available\":0.5,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":1500},"
                "{\"name\":\"ETH\",\"available\":5,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":1500},"
                "{\"name\":\"USDT\",\"available\":1000,\"allocated\":250,\"currentExposure\":0,"
                "\"maxExposure\":1500}],"
                "\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,\"totalMaxExposure\":1500,"
                "\"deleted\":false}");
    bh_snapshot_t *s = bh_ledger_snapshot(f->l, "user-123");
    assert_int_equal(s->nassets, 3);
    assert_string_equal(s->assets[0].name, "BTC");
    assert_string_equal(s->assets[2].name, "USDT");
    assert_int_equal(bh_dec_cmp(s->assets[2].allocated, D("250")), 0);
    assert_int_equal(bh_dec_cmp(s->total_max_exposure, D("1500")), 0);
    assert_string_equal(s->base_currency, "EUR");
    assert_string_equal(s->user_id, "user-123");
    assert_int_equal(s->sequence, 5);
    assert_false(s->deleted);
    bh_snapshot_release(s);
}

static void test_sequences_and_listener(void **state) {
    fx_t *f = *state;
    res_t x;
    bh_op_t op;

    expect_ok(f, mk_create("u1", "c", "EUR", "0"), 1);
    expect_ok(f, mk_create("u2", "c", "EUR", "0"), 1);
    expect_ok(f, mk(BH_OP_DEPOSIT, "u1", "d1", "BTC=1", NULL), 2);
    expect_reject(f, mk(BH_OP_WITHDRAW, "u1", "w1", "BTC=2", NULL), BH_EFUNDS,
                  "insufficient available BTC: 1 available, 2 needed");
    expect_ok(f, mk(BH_OP_DEPOSIT, "u2", "d1", "BTC=1", NULL), 2);
    expect_ok(f, mk(BH_OP_SET_LIMITS, "u1", "l1", "BTC=1", NULL), 3);
    expect_ok(f, mk(BH_OP_DELETE_USER, "u2", "x", NULL), 3);
    expect_repeat(f, mk(BH_OP_DEPOSIT, "u1", "d1", "BTC=1", NULL), 2,
                  "{\"sequence\":2,\"data\":{\"userId\":\"u1\",\"sequence\":2,\"assets\":["
                  "{\"name\":\"BTC\",\"available\":1,\"allocated\":0,\"currentExposure\":0,"
                  "\"maxExposure\":0}],\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,"
                  "\"totalMaxExposure\":0,\"deleted\":false}}");
    /* Listener first, then the op's callback; rejections and repeats call no listener. */
    static const struct {
        char kind;
        const char *user;
        uint64_t seq;
    } want[] = {{'L', "u1", 1}, {'C', "u1", 1}, {'L', "u2", 1}, {'C', "u2", 1}, {'L', "u1", 2},
                {'C', "u1", 2}, {'C', "u1", 0}, {'L', "u2", 2}, {'C', "u2", 2}, {'L', "u1", 3},
                {'C', "u1", 3}, {'L', "u2", 3}, {'C', "u2", 3}, {'C', "u1", 2}};
    assert_int_equal(f->nev, sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < f->nev; i++) {
        assert_int_equal(f->ev[i].kind, want[i].kind);
        assert_string_equal(f->ev[i].user, want[i].user);
        assert_int_equal(f->ev[i].sequence, want[i].seq);
    }
    /* Without a listener changes still commit. */
    bh_ledger_set_listener(f->l, NULL, NULL);
    f->listening = false;
    op = mk(BH_OP_DEPOSIT, "u1", "d2", "BTC=1", NULL);
    assert_int_equal(submit_wait(f, &op, &x), BH_OK);
    assert_int_equal(x.sequence, 4);
    res_free(&x);
    assert_int_equal(f->nlisten, 6);
    assert_int_equal(seq_of(f, "u1"), 4);
}

#define GC_USERS 4
#define GC_OPS 200

static void test_group_commit(void **state) {
    fx_t *f = *state;
    const size_t total = GC_USERS + GC_OPS;
    res_t *x = calloc(total, sizeof(*x));
    char user[16], opid[16], leg[32];
    size_t k = 0;

    assert_non_null(x);
    /* Creates and 200 deposits, all submitted before the loop runs once: later ops see the
     * pending creates and deposits in the working state. */
    for (int u = 0; u < GC_USERS; u++) {
        snprintf(user, sizeof(user), "g%d", u);
        bh_op_t op = mk_create(user, "c", "EUR", "0");
        submit(f, &op, &x[k++]);
    }
    for (int i = 0; i < GC_OPS; i++) {
        snprintf(user, sizeof(user), "g%d", i % GC_USERS);
        snprintf(opid, sizeof(opid), "d%d", i);
        snprintf(leg, sizeof(leg), "BTC=0.%03d", i / GC_USERS + 1);
        bh_op_t op = i % 7 == 6 ? mk(BH_OP_WITHDRAW, user, opid, "BTC=0.001", NULL)
                                : mk(BH_OP_DEPOSIT, user, opid, leg, NULL);
        submit(f, &op, &x[k++]);
    }
    for (size_t i = 0; i < total; i++)
        assert_int_equal(x[i].fired, 0);
    /* Nothing is visible to readers before it is durable. */
    assert_null(bh_ledger_snapshot(f->l, "g0"));
    assert_int_equal(f->nlisten, 0);
    for (size_t i = 0; i < total; i++)
        wait_for(f, &x[i]);

    uint64_t next[GC_USERS] = {1, 1, 1, 1};
    int last_order[GC_USERS] = {-1, -1, -1, -1};
    for (size_t i = 0; i < total; i++) {
        int u = x[i].user[1] - '0';
        assert_int_equal(x[i].status, BH_OK);
        assert_false(x[i].repeated);
        assert_int_equal(x[i].sequence, next[u]++);
        assert_true(x[i].order > last_order[u]); /* submission order per user */
        last_order[u] = x[i].order;
        res_free(&x[i]);
    }
    assert_int_equal(f->nlisten, (int)total);
    /* The listener saw every user's sequences in order. */
    uint64_t lnext[GC_USERS] = {1, 1, 1, 1};
    for (size_t i = 0; i < f->nev; i++) {
        if (f->ev[i].kind != 'L')
            continue;
        int u = f->ev[i].user[1] - '0';
        assert_int_equal(f->ev[i].sequence, lnext[u]++);
    }
    size_t entries = 0;
    for (int u = 0; u < GC_USERS; u++) {
        snprintf(user, sizeof(user), "g%d", u);
        assert_int_equal(seq_of(f, user), GC_OPS / GC_USERS + 1);
        entries += journal_count(f, user);
    }
    assert_int_equal(entries, total);
    /* Each user's deposits (k thousandths for its k-th op) minus its withdrawals of 0.001 (the
     * ops with i % 7 == 6). */
    for (int u = 0; u < GC_USERS; u++) {
        bh_dec_t sum = bh_dec_zero(), amt;
        for (int i = u; i < GC_OPS; i += GC_USERS) {
            snprintf(leg, sizeof(leg), "0.%03d", i / GC_USERS + 1);
            amt = i % 7 == 6 ? bh_dec_neg(D("0.001")) : D(leg);
            assert_int_equal(bh_dec_add(sum, amt, &sum), BH_OK);
        }
        snprintf(user, sizeof(user), "g%d", u);
        bh_snapshot_t *s = bh_ledger_snapshot(f->l, user);
        assert_int_equal(s->nassets, 1);
        assert_int_equal(bh_dec_cmp(s->assets[0].available, sum), 0);
        bh_snapshot_release(s);
    }
    free(x);
}

static void test_idempotency_same_turn(void **state) {
    fx_t *f = *state;
    res_t x[4];
    bh_op_t op;

    expect_ok(f, mk_create("u1", "c", "EUR", "0"), 1);
    expect_ok(f, mk(BH_OP_DEPOSIT, "u1", "d0", "BTC=10", NULL), 2);
    int n = f->nlisten;
    /* The same op id three times in one turn, the later ones with other arguments: they attach
     * to the pending first and share its answer. A different user's same op id is its own. */
    op = mk(BH_OP_WITHDRAW, "u1", "dup", "BTC=1", NULL);
    submit(f, &op, &x[0]);
    assert_int_equal(seq_of(f, "u1"), 2); /* pending: not published yet */
    op = mk(BH_OP_WITHDRAW, "u1", "dup", "BTC=5", NULL);
    submit(f, &op, &x[1]);
    op = mk(BH_OP_DEPOSIT, "u1", "dup", "ETH=5", NULL);
    submit(f, &op, &x[2]);
    op = mk_create("u2", "dup", "EUR", "0");
    submit(f, &op, &x[3]);
    for (int i = 0; i < 4; i++)
        wait_for(f, &x[i]);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(x[i].status, BH_OK);
        assert_int_equal(x[i].sequence, 3);
        assert_int_equal(x[i].repeated, i > 0);
        assert_string_equal(x[i].result, x[0].result);
    }
    assert_null(x[1].snap);
    assert_null(x[2].snap);
    assert_true(x[0].order < x[1].order); /* answered in submission order */
    assert_true(x[1].order < x[2].order);
    assert_int_equal(x[3].status, BH_OK);
    assert_int_equal(x[3].sequence, 1);
    assert_false(x[3].repeated);
    assert_int_equal(f->nlisten, n + 2);
    assert_string_equal(x[0].result,
                        "{\"sequence\":3,\"data\":{\"userId\":\"u1\",\"sequence\":3,\"assets\":["
                        "{\"name\":\"BTC\",\"available\":9,\"allocated\":0,\"currentExposure\":0,"
                        "\"maxExposure\":0}],\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,"
                        "\"totalMaxExposure\":0,\"deleted\":false}}");
    expect_journal(f, "u1",
                   "1 c create-user {\"baseCurrency\":\"EUR\",\"totalMaxExposure\":\"0\"}\n"
                   "2 d0 deposit {\"asset\":\"BTC\",\"amount\":\"10\"}\n"
                   "3 dup withdraw {\"asset\":\"BTC\",\"amount\":\"1\"}\n");
    /* After the commit the store answers. */
    expect_repeat(f, mk(BH_OP_WITHDRAW, "u1", "dup", "BTC=1", NULL), 3, x[0].result);
    /* A rejected op leaves its op id free. */
    expect_reject(f, mk(BH_OP_WITHDRAW, "u1", "w", "BTC=50", NULL), BH_EFUNDS,
                  "insufficient available BTC: 9 available, 50 needed");
    expect_ok(f, mk(BH_OP_WITHDRAW, "u1", "w", "BTC=0.5", NULL), 4);
    /* A duplicate create in the same turn: same op id attaches, another op id conflicts. */
    res_t y[3];
    op = mk_create("u3", "c", "EUR", "5");
    submit(f, &op, &y[0]);
    submit(f, &op, &y[1]);
    op = mk_create("u3", "c-other", "EUR", "5");
    submit(f, &op, &y[2]);
    for (int i = 0; i < 3; i++)
        wait_for(f, &y[i]);
    assert_int_equal(y[0].status, BH_OK);
    assert_int_equal(y[1].status, BH_OK);
    assert_true(y[1].repeated);
    assert_string_equal(y[0].result, y[1].result);
    assert_int_equal(y[2].status, BH_EEXIST);
    assert_string_equal(y[2].reason, "user u3 already exists");

    /* And after a restart, byte for byte. */
    reopen(f);
    expect_repeat(f, mk(BH_OP_WITHDRAW, "u1", "dup", "BTC=1", NULL), 3, x[0].result);
    expect_repeat(f, mk_create("u3", "c", "EUR", "5"), 1, y[0].result);
    expect_repeat(f, mk_create("u2", "dup", "EUR", "0"), 1, x[3].result);
    assert_int_equal(seq_of(f, "u1"), 4);
    expect_json(f, "u1",
                "{\"userId\":\"u1\",\"sequence\":4,\"assets\":["
                "{\"name\":\"BTC\",\"available\":8.5,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":0}],\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,"
                "\"totalMaxExposure\":0,\"deleted\":false}");
    for (int i = 0; i < 4; i++)
        res_free(&x[i]);
    for (int i = 0; i < 3; i++)
        res_free(&y[i]);
}

static void test_persistence(void **state) {
    fx_t *f = *state;
    char *j1, *j2, *j3, *got;
    res_t x[3];
    bh_op_t op;
    bh_store_rate_t rate;

    assert_int_equal(set_rates(f, "EUR", NULL, "BTC=60000", NULL), BH_OK);
    expect_ok(f, mk_create("u1", "c", "EUR", "2000"), 1);
    expect_ok(f, mk_create("u2", "c", "USD", "12345678901234567890"), 1);
    expect_ok(f, mk_create("u3", "c", "EUR", "1"), 1);
    expect_ok(f, mk(BH_OP_SET_LIMITS, "u1", "l1", "BTC=1500", NULL), 2);
    expect_ok(f, mk(BH_OP_WITHDRAW, "u1", "w1", "BTC=0.02", NULL), 3);
    expect_ok(f, mk(BH_OP_DEPOSIT, "u1", "d1", "ZZZ=0.000000000000000001", NULL), 4);
    expect_ok(f, mk(BH_OP_DEPOSIT, "u1", "d2", "AAA=99999999999999999999.999999999999999999", NULL),
              5);
    expect_ok(f, mk(BH_OP_ALLOCATE, "u1", "a1", "AAA=0.5", NULL), 6);
    expect_ok(f, mk(BH_OP_DEPOSIT, "u2", "d1", "EUR=3", NULL), 2);
    expect_ok(f, mk(BH_OP_DELETE_USER, "u3", "del", NULL), 2);
    j1 = json_of(f, "u1");
    j2 = json_of(f, "u2");
    j3 = json_of(f, "u3");
    int n = f->nlisten;
    reopen(f);
    assert_int_equal(f->nlisten, n); /* loading publishes nothing */
    got = json_of(f, "u1");
    assert_string_equal(got, j1);
    free(got);
    got = json_of(f, "u2");
    assert_string_equal(got, j2);
    free(got);
    got = json_of(f, "u3");
    assert_string_equal(got, j3);
    free(got);
    assert_true(strstr(j1, "\"currentExposure\":1200,") != NULL); /* rates loaded first */
    /* Sequences continue. */
    expect_ok(f, mk(BH_OP_DEPOSIT, "u1", "d3", "BTC=0.02", NULL), 7);

    /* Pending work at close: a change (not yet handed to the commit thread), a rejection and
     * a rate are all completed by bh_ledger_close, callbacks included. */
    op = mk(BH_OP_DEPOSIT, "u2", "late", "EUR=4", NULL);
    submit(f, &op, &x[0]);
    op = mk(BH_OP_WITHDRAW, "u2", "late2", "EUR=100", NULL);
    submit(f, &op, &x[1]);
    memset(&rate, 0, sizeof(rate));
    strcpy(rate.asset, "ETH");
    rate.rate = D("3000");
    res_init(f, &x[2], "");
    x[2].is_rates = true;
    assert_int_equal(bh_ledger_set_rates(f->l, "EUR", &rate, 1, on_result, &x[2]), BH_OK);
    assert_int_equal(x[2].fired, 0);
    bh_ledger_close(f->l);
    f->l = NULL;
    assert_int_equal(x[0].fired, 1);
    assert_int_equal(x[0].status, BH_OK);
    assert_int_equal(x[0].sequence, 3);
    assert_int_equal(x[1].fired, 1);
    assert_int_equal(x[1].status, BH_EFUNDS);
    assert_int_equal(x[2].fired, 1);
    assert_int_equal(x[2].status, BH_OK);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    bh_store_close(f->w);
    bh_store_close(f->r);
    open_ledger(f);
    expect_repeat(f, mk(BH_OP_DEPOSIT, "u2", "late", "EUR=4", NULL), 3, x[0].result);
    check_exposure(f, "EUR", "ETH", "-1", "0", BH_OK, "3000");
    assert_int_equal(seq_of(f, "u2"), 3);
    for (int i = 0; i < 3; i++)
        res_free(&x[i]);
    free(j1);
    free(j2);
    free(j3);
}

/* A prepare callback runs after the idle phase (where the ledger hands its batch to the
 * commit thread) and before the loop polls: what it submits queues behind that batch. */
typedef struct {
    fx_t *f;
    bh_op_t ops[2];
    res_t *res[2];
} later_t;

static void submit_later(uv_prepare_t *h) {
    later_t *lt = h->data;
    for (int i = 0; i < 2; i++)
        submit(lt->f, &lt->ops[i], lt->res[i]);
    uv_prepare_stop(h);
}

static void test_store_failure(void **state) {
    fx_t *f = *state;
    res_t x[3];
    bh_op_t op;
    uv_prepare_t prep;
    later_t lt;
    char *before;

    expect_ok(f, mk_create("u1", "c", "EUR", "0"), 1);
    expect_ok(f, mk_create("u2", "c", "EUR", "0"), 1);
    expect_ok(f, mk(BH_OP_DEPOSIT, "u1", "d1", "BTC=1", NULL), 2);
    before = json_of(f, "u1");
    exec_sql(f->path, "CREATE TRIGGER boom BEFORE INSERT ON journal WHEN NEW.op_id = 'boom' "
                      "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END");

    /* The failing batch holds u1's deposit; queued behind it: a u1 withdrawal that only the
     * failed deposit would pay for, and a u2 deposit. */
    int n = f->nlisten;
    op = mk(BH_OP_DEPOSIT, "u1", "boom", "BTC=5", NULL);
    submit(f, &op, &x[0]);
    lt.f = f;
    lt.ops[0] = mk(BH_OP_WITHDRAW, "u1", "w-after", "BTC=3", NULL);
    lt.ops[1] = mk(BH_OP_DEPOSIT, "u2", "ok2", "BTC=1", NULL);
    lt.res[0] = &x[1];
    lt.res[1] = &x[2];
    assert_int_equal(uv_prepare_init(&f->loop, &prep), 0);
    prep.data = &lt;
    assert_int_equal(uv_prepare_start(&prep, submit_later), 0);
    wait_for(f, &x[0]);
    for (int i = 1; i < 3; i++)
        wait_for(f, &x[i]);
    uv_close((uv_handle_t *)&prep, NULL);

    assert_int_equal(x[0].status, BH_ESTORE);
    assert_string_equal(x[0].reason, "the store could not commit the change (store failure)");
    assert_int_equal(x[0].sequence, 0);
    assert_int_equal(x[1].status, BH_ESTORE); /* validated against state that never was */
    assert_int_equal(x[1].sequence, 0);
    assert_int_equal(x[2].status, BH_OK); /* another user, a later batch */
    assert_int_equal(x[2].sequence, 2);
    assert_int_equal(f->nlisten, n + 1);
    for (int i = 0; i < 3; i++)
        res_free(&x[i]);

    /* u1's working state was reloaded: no 5 BTC, the next sequence is 3. */
    expect_json(f, "u1", before);
    expect_reject(f, mk(BH_OP_WITHDRAW, "u1", "w-after", "BTC=3", NULL), BH_EFUNDS,
                  "insufficient available BTC: 1 available, 3 needed");
    expect_ok(f, mk(BH_OP_WITHDRAW, "u1", "w2", "BTC=0.25", NULL), 3);
    expect_ok(f, mk(BH_OP_DEPOSIT, "u2", "ok3", "BTC=1", NULL), 3);
    expect_journal(f, "u1",
                   "1 c create-user {\"baseCurrency\":\"EUR\",\"totalMaxExposure\":\"0\"}\n"
                   "2 d1 deposit {\"asset\":\"BTC\",\"amount\":\"1\"}\n"
                   "3 w2 withdraw {\"asset\":\"BTC\",\"amount\":\"0.25\"}\n");

    /* A duplicate attached to a failing op shares the failure (and was not applied). */
    op = mk(BH_OP_DEPOSIT, "u2", "boom", "BTC=1", NULL);
    submit(f, &op, &x[0]);
    submit(f, &op, &x[1]);
    wait_for(f, &x[0]);
    wait_for(f, &x[1]);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(x[i].status, BH_ESTORE);
        assert_string_equal(x[i].reason, "the store could not commit the change (store failure)");
        assert_false(x[i].repeated);
        assert_int_equal(x[i].sequence, 0);
    }
    assert_true(x[0].order < x[1].order);
    expect_ok(f, mk(BH_OP_DEPOSIT, "u2", "ok4", "BTC=1", NULL), 4);

    /* A failed create leaves no user behind; a retry with another op id creates it. */
    expect_reject(f, mk_create("u9", "boom", "EUR", "0"), BH_ESTORE,
                  "the store could not commit the change (store failure)");
    assert_null(bh_ledger_snapshot(f->l, "u9"));
    expect_reject(f, mk(BH_OP_DEPOSIT, "u9", "d", "BTC=1", NULL), BH_ENOTFOUND, "no user u9");
    expect_ok(f, mk_create("u9", "c", "USD", "0"), 1);

    /* Once the store works again the failed op id is free. */
    exec_sql(f->path, "DROP TRIGGER boom");
    expect_ok(f, mk(BH_OP_DEPOSIT, "u1", "boom", "BTC=5", NULL), 4);
    reopen(f);
    expect_json(f, "u1",
                "{\"userId\":\"u1\",\"sequence\":4,\"assets\":["
                "{\"name\":\"BTC\",\"available\":5.75,\"allocated\":0,\"currentExposure\":0,"
                "\"maxExposure\":0}],\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,"
                "\"totalMaxExposure\":0,\"deleted\":false}");
    assert_int_equal(seq_of(f, "u9"), 1);
    free(before);
}

static void test_snapshot_refcount(void **state) {
    fx_t *f = *state;
    bh_snapshot_t *old, *cur;
    const char *old_json =
        "{\"userId\":\"u1\",\"sequence\":2,\"assets\":[{\"name\":\"BTC\","
        "\"available\":1,\"allocated\":0,\"currentExposure\":0,"
        "\"maxExposure\":0}],\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,"
        "\"totalMaxExposure\":0,\"deleted\":false}";

    assert_null(bh_snapshot_acquire(NULL));
    bh_snapshot_release(NULL);
    expect_ok(f, mk_create("u1", "c", "EUR", "0"), 1);
    expect_ok(f, mk(BH_OP_DEPOSIT, "u1", "d1", "BTC=1", NULL), 2);
    old = bh_ledger_snapshot(f->l, "u1");
    assert_int_equal(atomic_load(&old->refs), 2); /* the ledger's and ours */
    expect_ok(f, mk(BH_OP_DEPOSIT, "u1", "d2", "BTC=1", NULL), 3);
    expect_ok(f, mk(BH_OP_WITHDRAW, "u1", "w1", "BTC=0.5", NULL), 4);
    expect_ok(f, mk(BH_OP_DELETE_USER, "u1", "del", NULL), 5);
    /* The ledger dropped its reference; ours is untouched. */
    assert_int_equal(atomic_load(&old->refs), 1);
    assert_int_equal(old->sequence, 2);
    assert_string_equal(old->json, old_json);
    assert_int_equal(old->json_len, strlen(old_json));
    assert_int_equal(old->nassets, 1);
    assert_string_equal(old->assets[0].name, "BTC");
    assert_int_equal(bh_dec_cmp(old->assets[0].available, D("1")), 0);
    assert_false(old->deleted);
    cur = bh_ledger_snapshot(f->l, "u1");
    assert_int_equal(atomic_load(&cur->refs), 2);
    assert_int_equal(cur->sequence, 5);
    assert_true(cur->deleted);
    assert_ptr_equal(bh_snapshot_acquire(cur), cur);
    assert_int_equal(atomic_load(&cur->refs), 3);
    bh_snapshot_release(cur);
    /* Snapshots outlive the ledger. */
    close_ledger(f);
    assert_int_equal(atomic_load(&cur->refs), 1);
    assert_int_equal(cur->sequence, 5);
    assert_string_equal(old->json, old_json);
    bh_snapshot_release(old);
    bh_snapshot_release(cur);
    open_ledger(f);
    cur = bh_ledger_snapshot(f->l, "u1");
    assert_int_equal(cur->sequence, 5);
    bh_snapshot_release(cur);
}

/* Each completion submits the next op from inside the callback. */
typedef struct {
    fx_t *f;
    char prefix;
    int n, max;
    res_t res[32];
} chain_t;

static void chain_next(chain_t *ch);

static void on_chain(void *ud, const bh_op_result_t *r) {
    chain_t *ch = ud;
    on_result(&ch->res[ch->n - 1], r);
    chain_next(ch);
}

static void chain_next(chain_t *ch) {
    char opid[16];
    if (ch->n == ch->max)
        return;
    snprintf(opid, sizeof(opid), "%c%d", ch->prefix, ch->n);
    /* Every fourth link is a rejection (delivered through the other queue). */
    bh_op_t op = ch->n % 4 == 3 ? mk(BH_OP_WITHDRAW, "u1", opid, "BTC=1000", NULL)
                                : mk(BH_OP_DEPOSIT, "u1", opid, "BTC=1", NULL);
    res_init(ch->f, &ch->res[ch->n], "u1");
    ch->n++;
    assert_int_equal(bh_ledger_submit(ch->f->l, &op, on_chain, ch), BH_OK);
}

static void check_chain(chain_t *ch, uint64_t first_seq) {
    uint64_t seq = first_seq;
    for (int i = 0; i < ch->max; i++) {
        res_t *x = &ch->res[i];
        assert_int_equal(x->fired, 1);
        if (i % 4 == 3) {
            assert_int_equal(x->status, BH_EFUNDS);
        } else {
            assert_int_equal(x->status, BH_OK);
            assert_int_equal(x->sequence, seq++);
        }
        if (i > 0)
            assert_true(x->order > ch->res[i - 1].order);
        res_free(x);
    }
}

static void test_submit_from_callbacks(void **state) {
    fx_t *f = *state;
    chain_t ch = {.f = f, .prefix = 'a', .max = 20};

    expect_ok(f, mk_create("u1", "c", "EUR", "0"), 1);
    chain_next(&ch);
    while (ch.n < ch.max || !ch.res[ch.max - 1].fired)
        uv_run(&f->loop, UV_RUN_ONCE);
    check_chain(&ch, 2);
    assert_int_equal(seq_of(f, "u1"), 16);

    /* bh_ledger_close also completes what callbacks submit while it drains. */
    memset(&ch, 0, sizeof(ch));
    ch.f = f;
    ch.prefix = 'b';
    ch.max = 12;
    chain_next(&ch);
    bh_ledger_close(f->l);
    f->l = NULL;
    assert_int_equal(ch.n, ch.max);
    check_chain(&ch, 17);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    bh_store_close(f->w);
    bh_store_close(f->r);
    open_ledger(f);
    assert_int_equal(seq_of(f, "u1"), 25);
    assert_int_equal(journal_count(f, "u1"), 25);
}

static uint32_t rnd(uint64_t *s) {
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(*s >> 33);
}

static bh_dec_t rnd_dec(uint64_t *s) {
    bh_dec_t d = bh_dec_zero();
    int e = (int)(rnd(s) % 28); /* m * 10^(e - 18): from 10^-18 up to about 10^15 */
    d.units = rnd(s) % 100000;
    for (int i = 0; i < e; i++)
        d.units *= 10;
    if (rnd(s) % 5 == 0)
        d = bh_dec_neg(d);
    return d;
}

static uint64_t seq_or_zero(fx_t *f, const char *user) {
    bh_snapshot_t *snap = bh_ledger_snapshot(f->l, user);
    uint64_t q = snap ? snap->sequence : 0;
    bh_snapshot_release(snap);
    return q;
}

/* Garbage and half-valid operations never crash, leak or corrupt: each gets one answer, a
 * success moves the user's sequence by exactly one, and what committed reloads identically. */
static void test_garbage_ops(void **state) {
    fx_t *f = *state;
    static const char alphabet[] = "ABCEURX09az-. \x01\xff";
    static const char *const users[] = {"u1", "u2", "u3"};
    uint64_t seed = 0x5eedULL;
    char *j[3];
    int stats[3] = {0, 0, 0};

    assert_int_equal(set_rates(f, "EUR", NULL, "A=2", "B=0.5", "C=3", NULL), BH_OK);
    expect_ok(f, mk_create("u1", "c", "EUR", "1000"), 1);
    expect_ok(f, mk_create("u2", "c", "EUR", "10"), 1);
    for (int i = 0; i < 600; i++) {
        bh_op_t op;
        unsigned char *p = (unsigned char *)&op;
        for (size_t k = 0; k < sizeof(op); k++)
            p[k] = (unsigned char)rnd(&seed);
        if (i % 3 != 0) { /* plausible ids, random everything else */
            const char *user = users[rnd(&seed) % 3];
            op.kind = (bh_op_kind_t)(rnd(&seed) % 10);
            if (op.kind == BH_OP_DELETE_USER && (user == users[0] || rnd(&seed) % 8))
                op.kind = BH_OP_DEPOSIT; /* deletes end a user's story: keep them rare */
            snprintf(op.user_id, sizeof(op.user_id), "%s", user);
            snprintf(op.op_id, sizeof(op.op_id), "g%u", rnd(&seed) % 400);
            op.nlegs = rnd(&seed) % 8 == 0 ? rnd(&seed) % 40 : 1 + rnd(&seed) % 3;
            if (op.kind >= BH_OP_DEPOSIT && op.kind <= BH_OP_RELEASE && rnd(&seed) % 8)
                op.nlegs = 1;
            for (size_t k = 0; k < BH_OP_MAX_LEGS; k++) {
                size_t len = rnd(&seed) % 16 ? 1 + rnd(&seed) % 3 : 0;
                for (size_t c = 0; c < len; c++)
                    op.legs[k].asset[c] =
                        rnd(&seed) % 24 ? "ABCEUR"[rnd(&seed) % 6] : alphabet[rnd(&seed) % 16];
                op.legs[k].asset[len] = '\0';
                op.legs[k].amount = rnd_dec(&seed);
            }
            snprintf(op.base_currency, sizeof(op.base_currency), "%s",
                     rnd(&seed) % 4 ? "EUR" : "E\x01");
            op.has_total = rnd(&seed) % 2;
            op.total_max_exposure = rnd_dec(&seed);
        } else {
            op.kind = (bh_op_kind_t)(rnd(&seed) % 12);
            op.nlegs = rnd(&seed);
            for (size_t k = 0; k < BH_OP_MAX_LEGS; k++)
                op.legs[k].amount = rnd_dec(&seed);
            op.total_max_exposure = rnd_dec(&seed);
        }
        char user[BH_ID_MAX + 1];
        memcpy(user, op.user_id, BH_ID_MAX);
        user[BH_ID_MAX] = '\0';
        uint64_t before = seq_or_zero(f, user);
        res_t x;
        int st = submit_wait(f, &op, &x);
        assert_true(st == BH_OK || st == BH_EINVAL || st == BH_ENOTFOUND || st == BH_EEXIST ||
                    st == BH_EFUNDS || st == BH_ELIMIT);
        if (st == BH_OK && !x.repeated)
            assert_int_equal(x.sequence, before + 1);
        if (st == BH_OK)
            assert_int_equal(seq_or_zero(f, user), x.repeated ? before : before + 1);
        else
            assert_int_equal(seq_or_zero(f, user), before);
        res_free(&x);
        stats[st == BH_OK ? 0 : st == BH_EINVAL ? 1 : 2]++;
    }
    /* Enough of each kind of answer to mean something. */
    assert_true(stats[0] > 40 && stats[1] > 100 && stats[2] > 40);
    for (int u = 0; u < 3; u++) {
        bh_snapshot_t *snap = bh_ledger_snapshot(f->l, users[u]);
        j[u] = snap ? strdup(snap->json) : NULL;
        if (snap)
            assert_int_equal(journal_count(f, users[u]), snap->sequence);
        bh_snapshot_release(snap);
    }
    reopen(f);
    for (int u = 0; u < 3; u++) {
        bh_snapshot_t *snap = bh_ledger_snapshot(f->l, users[u]);
        if (j[u])
            assert_string_equal(snap->json, j[u]);
        else
            assert_null(snap);
        bh_snapshot_release(snap);
        free(j[u]);
    }
}

/* The op-id filter alone: no false "no" for any key added, across several layers; the rate of
 * false "maybe" for keys never added stays under the 1% bound. */
static void test_opfilter(void **state) {
    bh_opfilter_t f;
    char key[64];
    size_t maybe = 0, nkeys = 3 * BH_OPFILTER_MIN_KEYS + 1000, probes = 200000;
    (void)state;

    assert_int_equal(bh_opfilter_init(&f, 0), BH_OK);
    assert_int_equal(f.nlayers, 1);
    assert_false(bh_opfilter_maybe(&f, "u1\x1fop", strlen("u1\x1fop")));
    for (size_t i = 0; i < nkeys; i++) {
        int n = snprintf(key, sizeof key, "user-%zu\x1fop-%zu", i % 97, i);
        bh_opfilter_add(&f, key, (size_t)n);
    }
    assert_true(f.nlayers >= 2); /* it grew instead of filling up */
    assert_false(f.saturated);
    assert_int_equal(f.n, nkeys);
    for (size_t i = 0; i < nkeys; i++) {
        int n = snprintf(key, sizeof key, "user-%zu\x1fop-%zu", i % 97, i);
        assert_true(bh_opfilter_maybe(&f, key, (size_t)n));
    }
    for (size_t i = 0; i < probes; i++) {
        int n = snprintf(key, sizeof key, "user-%zu\x1fop-%zu", i % 97, nkeys + i);
        maybe += bh_opfilter_maybe(&f, key, (size_t)n);
    }
    assert_true((double)maybe < BH_OPFILTER_FPR * (double)probes);
    /* Every byte of the key counts: a prefix or a one-byte change is another key. */
    static const char *const near[] = {"user-1\x1fop-", "user-1\x1fop-2", "user-2\x1fop-1",
                                       "user-1\x1fop-1 ", "ser-1\x1fop-1"};
    assert_true(bh_opfilter_maybe(&f, "user-1\x1fop-1", strlen("user-1\x1fop-1")));
    maybe = 0;
    for (size_t i = 0; i < sizeof near / sizeof near[0]; i++)
        maybe += bh_opfilter_maybe(&f, near[i], strlen(near[i]));
    assert_true(maybe <= 1);
    /* Saturated (a layer could not be allocated): never a false "no". */
    f.saturated = true;
    assert_true(bh_opfilter_maybe(&f,
                                  "never\x1f"
                                  "added",
                                  strlen("never\x1f"
                                         "added")));
    bh_opfilter_free(&f);
    assert_int_equal(f.nlayers, 0);
}

/* The filter at open holds the journal written by an earlier ledger (repeats still answer the
 * first result after a restart, many ops and users); while open it holds what this ledger
 * commits. A journal row written behind the ledger's back (another process) is not seen by the
 * filter, but the store's UNIQUE(user_id, op_id) still refuses to apply it twice. */
static void test_opfilter_in_ledger(void **state) {
    fx_t *f = *state;
    char id[32], *first[40];

    expect_ok(f, mk_create("u1", "c", "EUR", "0"), 1);
    expect_ok(f, mk_create("u2", "c", "EUR", "0"), 1);
    for (int i = 0; i < 40; i++) {
        snprintf(id, sizeof id, "op-%d", i);
        first[i] = result_of(f, mk(BH_OP_DEPOSIT, i % 2 ? "u2" : "u1", id, "BTC=1", NULL));
    }
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 40; i++) {
            snprintf(id, sizeof id, "op-%d", i);
            expect_repeat(f, mk(BH_OP_WITHDRAW, i % 2 ? "u2" : "u1", id, "BTC=9", NULL),
                          (uint64_t)(i / 2 + 2), first[i]);
        }
        reopen(f);
    }
    /* The same op id under another user is another op. */
    expect_ok(f, mk(BH_OP_DEPOSIT, "u1", "op-1", "BTC=1", NULL), 22);
    exec_sql(f->path, "INSERT INTO journal(user_id, sequence, op_id, op, detail, result, time_ms) "
                      "VALUES('u2', 1000, 'behind', 'deposit', '{}', '{}', 0)");
    expect_reject(f, mk(BH_OP_DEPOSIT, "u2", "behind", "BTC=1", NULL), BH_ESTORE,
                  "the store could not commit the change (already exists)");
    assert_int_equal(seq_of(f, "u2"), 21);
    /* After a restart the filter knows it from the store: a repeat. */
    reopen(f);
    expect_repeat(f, mk(BH_OP_DEPOSIT, "u2", "behind", "BTC=1", NULL), 1000, "{}");
    expect_ok(f, mk(BH_OP_DEPOSIT, "u2", "op-0", "BTC=1", NULL), 22);
    for (int i = 0; i < 40; i++)
        free(first[i]);
}

/* Other threads read snapshots (bh_ledger_snapshot, as the I/O threads do) while the loop
 * thread creates users (the map grows), changes them, deletes one and reloads one after a
 * failed commit: every snapshot a reader gets is its user's and whole, and a user's sequence
 * never goes back. Under ThreadSanitizer (make tsan) this also checks that the loop thread
 * writes what readers look at only under the ledger's lock. */
typedef struct {
    bh_ledger_t *l;
    atomic_int stop;
    atomic_ulong reads;
    atomic_int bad;
} readers_t;

static void *reader_main(void *arg) {
    readers_t *rd = arg;
    static const char *const users[] = {"u1", "u2", "u17"};
    uint64_t last[3] = {0};
    char head[32];
    while (!atomic_load(&rd->stop)) {
        for (int i = 0; i < 3; i++) {
            bh_snapshot_t *s = bh_ledger_snapshot(rd->l, users[i]);
            if (!s)
                continue;
            snprintf(head, sizeof(head), "{\"userId\":\"%s\",", users[i]);
            if (strcmp(s->user_id, users[i]) != 0 || s->sequence < last[i] ||
                strncmp(s->json, head, strlen(head)) != 0)
                atomic_fetch_add(&rd->bad, 1);
            last[i] = s->sequence;
            bh_snapshot_release(s);
            atomic_fetch_add(&rd->reads, 1);
        }
    }
    return NULL;
}

static void test_concurrent_readers(void **state) {
    fx_t *f = *state;
    readers_t rd = {.l = f->l};
    pthread_t th[2];
    res_t x;
    char id[16];

    expect_ok(f, mk_create("u1", "c", "EUR", "0"), 1);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, reader_main, &rd), 0);
    while (atomic_load(&rd.reads) == 0)
        sched_yield();
    expect_ok(f, mk(BH_OP_DEPOSIT, "u1", "d1", "BTC=1", NULL), 2);
    /* A failed commit: u1 is reloaded from the store while the readers look it up. */
    exec_sql(f->path, "CREATE TRIGGER boom BEFORE INSERT ON journal WHEN NEW.op_id = 'boom' "
                      "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END");
    bh_op_t op = mk(BH_OP_DEPOSIT, "u1", "boom", "BTC=5", NULL);
    assert_int_equal(submit_wait(f, &op, &x), BH_ESTORE);
    res_free(&x);
    exec_sql(f->path, "DROP TRIGGER boom");
    /* Enough users that the map grows (16 slots, at most 3/4 full) under the readers. */
    for (int i = 2; i <= 20; i++) {
        snprintf(id, sizeof(id), "u%d", i);
        expect_ok(f, mk_create(id, "c", "EUR", "0"), 1);
    }
    for (int i = 0; i < 3; i++) {
        snprintf(id, sizeof(id), "d%d", i + 2);
        expect_ok(f, mk(BH_OP_DEPOSIT, "u1", id, "BTC=1", NULL), (uint64_t)i + 3);
        expect_ok(f, mk(BH_OP_DEPOSIT, "u17", id, "BTC=1", NULL), (uint64_t)i + 2);
    }
    expect_ok(f, mk(BH_OP_DELETE_USER, "u2", "del", NULL), 2);
    atomic_store(&rd.stop, 1);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    assert_int_equal(atomic_load(&rd.bad), 0);
    assert_true(atomic_load(&rd.reads) > 0);
    assert_int_equal(seq_of(f, "u1"), 5);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_user, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deposit_withdraw, setup, teardown),
        cmocka_unit_test_setup_teardown(test_allocate_release, setup, teardown),
        cmocka_unit_test_setup_teardown(test_trade, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_user, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exposure_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_base_currency_and_allocated_cover, setup, teardown),
        cmocka_unit_test_setup_teardown(test_over_limit_after_rate_rise, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exposure_function, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_net_position, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seed_snapshot_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sequences_and_listener, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idempotency_same_turn, setup, teardown),
        cmocka_unit_test_setup_teardown(test_persistence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_readers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_refcount, setup, teardown),
        cmocka_unit_test_setup_teardown(test_submit_from_callbacks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_ops, setup, teardown),
        cmocka_unit_test(test_opfilter),
        cmocka_unit_test_setup_teardown(test_opfilter_in_ledger, setup, teardown),
    };
    bh_log_set_level(BH_LOG_ERROR + 1); /* expected store failures would log; keep output clean */
    return cmocka_run_group_tests(tests, NULL, NULL);
}
