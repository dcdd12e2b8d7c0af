/* Hub group (src/hub/group.c with src/hub/hub.c): ledger changes posted to every hub's thread
 * (here fake post functions that queue, run in the order a test chooses), each connection's
 * sequence dedupe (a GetBalances newer than updates still queued, repeats, stale snapshots),
 * order per hub, key and user closes across two hubs, the per-key command rate shared by the
 * hubs, failed posts and removed hubs. A real ledger on SQLite; sessions on a fake transport. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "base/decimal.h"
#include "base/error.h"
#include "base/log.h"
#include "hub/hub.h"
#include "ledger/ledger.h"
#include "hub/internal.h"
#include "signalr/internal.h"
#include "store/store.h"

#define QMAX 256
#define MAXCONN 8
#define MAXEV 32

/* ---- fake post functions ---- */

typedef struct {
    void (*fn)(void *);
    void *arg;
} qcall_t;

typedef struct {
    qcall_t calls[QMAX];
    size_t n;
    int fail; /* returned by post when set */
} queue_t;

static int queue_post(void *ud, void (*fn)(void *), void *arg) {
    queue_t *q = ud;
    if (q->fail)
        return q->fail;
    assert_true(q->n < QMAX);
    q->calls[q->n++] = (qcall_t){fn, arg};
    return BH_OK;
}

/* Run what is queued, oldest first, as the hub's thread would. */
static size_t queue_run(queue_t *q) {
    size_t n = q->n;
    for (size_t i = 0; i < n; i++)
        q->calls[i].fn(q->calls[i].arg);
    assert_int_equal(q->n, n); /* running a call posts nothing */
    q->n = 0;
    return n;
}

static int inline_post(void *ud, void (*fn)(void *), void *arg) {
    int *count = ud;
    (*count)++;
    fn(arg);
    return BH_OK;
}

/* ---- fake transport: records what the session sends ---- */

typedef struct {
    bh_sr_conn_t *c; /* NULL once the session let go of it */
    bh_buf_t out;
} tconn_t;

static int t_send(bh_sr_conn_t *c, const char *data, size_t len) {
    tconn_t *t = c->att;
    return bh_buf_append(&t->out, data, len);
}

static void t_end(bh_sr_conn_t *c, uint16_t code, const char *reason) {
    bh_sr_session_finish_later(c);
}

static void t_detach(bh_sr_conn_t *c) {
    tconn_t *t = c->att;
    t->c = NULL;
}

static int t_congested(const bh_sr_conn_t *c) {
    return 0;
}

static void t_watch(bh_sr_conn_t *c) {}

static const bh_sr_transport_t fake_tp = {
    .name = "Fake",
    .binary = 1,
    .send = t_send,
    .end = t_end,
    .detach = t_detach,
    .congested = t_congested,
    .watch = t_watch,
};

/* ---- fixture: a ledger, two hubs (each with its SignalR server) in one group ---- */

typedef struct {
    bh_hub_t *hub;
    bh_sr_server_t *sr;
    queue_t q;
} side_t;

typedef struct {
    char dir[64], path[128];
    uv_loop_t loop;
    bh_store_t *w, *r;
    bh_ledger_t *l;
    bh_sr_shared_t *shared;
    bh_hub_group_t *g;
    side_t side[2];
    tconn_t conns[MAXCONN];
    size_t nconns;
    int done, status, ops;
    uint64_t seq;
} fx_t;

static const bh_sr_config_t sr_cfg = {
    .hub_path = "/hub",
    .keepalive_ms = 3600000,
    .client_timeout_ms = 3600000,
    .handshake_timeout_ms = 3600000,
    .max_message = 32768,
};

static void make_side(fx_t *f, side_t *s, bh_hub_group_t *g, bh_hub_post_fn post, void *ud) {
    size_t nm;
    const bh_sr_method_t *m = bh_hub_methods(&nm);
    bh_sr_config_t sc = sr_cfg;
    sc.shared = f->shared;
    assert_int_equal(bh_hub_new(f->l, NULL, &s->hub), BH_OK);
    assert_int_equal(bh_sr_server_new(&sc, m, nm, bh_hub_hooks(), s->hub, &s->sr), BH_OK);
    assert_int_equal(bh_hub_group_add(g, s->hub, post, ud), BH_OK);
}

static fx_t *fx_new(double rate, double burst) {
    char err[256];
    fx_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    strcpy(f->dir, "/tmp/bh_hubgroup_XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/bh.db", f->dir);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(bh_store_open(f->path, &f->w, err, sizeof err), BH_OK);
    assert_int_equal(bh_store_open(f->path, &f->r, err, sizeof err), BH_OK);
    assert_int_equal(bh_ledger_open(&f->loop, f->w, f->r, &f->l), BH_OK);
    assert_int_equal(bh_sr_shared_new(&sr_cfg, &f->shared), BH_OK);
    assert_int_equal(bh_hub_group_new(f->l, NULL, rate, burst, &f->g), BH_OK);
    for (int i = 0; i < 2; i++)
        make_side(f, &f->side[i], f->g, queue_post, &f->side[i].q);
    bh_ledger_set_listener(f->l, bh_hub_group_on_change, f->g);
    return f;
}

static void fx_free(fx_t *f) {
    static const char *const names[] = {"bh.db", "bh.db-wal", "bh.db-shm"};
    char p[160];
    for (int i = 0; i < 2; i++) {
        queue_run(&f->side[i].q);
        bh_sr_server_shutdown(f->side[i].sr);
    }
    bh_ledger_close(f->l);
    for (int i = 0; i < 2; i++)
        queue_run(&f->side[i].q);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    for (int i = 0; i < 2; i++) {
        bh_sr_server_free(f->side[i].sr);
        bh_hub_free(f->side[i].hub);
    }
    bh_hub_group_free(f->g);
    bh_sr_shared_free(f->shared);
    for (size_t i = 0; i < f->nconns; i++) {
        assert_null(f->conns[i].c);
        bh_buf_free(&f->conns[i].out);
    }
    bh_store_close(f->w);
    bh_store_close(f->r);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", f->dir, names[i]);
        unlink(p);
    }
    assert_int_equal(rmdir(f->dir), 0);
    free(f);
}

/* ---- ledger operations (each waits for its commit: the listener has posted by then) ---- */

static void on_op(void *ud, const bh_op_result_t *r) {
    fx_t *f = ud;
    f->done = 1;
    f->status = r->status;
    f->seq = r->sequence;
}

static uint64_t submit(fx_t *f, bh_op_t *op) {
    snprintf(op->op_id, sizeof op->op_id, "op-%d", ++f->ops);
    f->done = 0;
    assert_int_equal(bh_ledger_submit(f->l, op, on_op, f), BH_OK);
    while (!f->done)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(f->status, BH_OK);
    return f->seq;
}

static uint64_t create_user(fx_t *f, const char *user) {
    bh_op_t op = {.kind = BH_OP_CREATE_USER};
    snprintf(op.user_id, sizeof op.user_id, "%s", user);
    strcpy(op.base_currency, "USD");
    return submit(f, &op);
}

static uint64_t deposit(fx_t *f, const char *user) {
    bh_op_t op = {.kind = BH_OP_DEPOSIT, .nlegs = 1};
    snprintf(op.user_id, sizeof op.user_id, "%s", user);
    strcpy(op.legs[0].asset, "USD");
    assert_int_equal(bh_dec_parse("10", 2, &op.legs[0].amount), BH_OK);
    return submit(f, &op);
}

static uint64_t delete_user(fx_t *f, const char *user) {
    bh_op_t op = {.kind = BH_OP_DELETE_USER};
    snprintf(op.user_id, sizeof op.user_id, "%s", user);
    return submit(f, &op);
}

static int snap_refs(fx_t *f, const char *user) {
    bh_snapshot_t *s = bh_ledger_snapshot(f->l, user);
    assert_non_null(s);
    int refs = atomic_load(&s->refs) - 1; /* without ours */
    bh_snapshot_release(s);
    return refs;
}

/* ---- connections ---- */

static void feed(tconn_t *t, const char *text) {
    bh_sr_session_feed(t->c, text, strlen(text));
}

static tconn_t *open_conn(fx_t *f, side_t *s, const char *user, const char *key) {
    assert_true(f->nconns < MAXCONN);
    tconn_t *t = &f->conns[f->nconns++];
    char id[BH_SR_CONN_ID_CHARS + 1];
    bh_buf_init(&t->out, 0);
    bh_sr_random_id(id);
    bh_sr_conn_t *c = bh_sr_session_new(s->sr, user, key, id, "", 0);
    assert_non_null(c);
    assert_int_equal(bh_sr_shared_acquire(f->shared, key, 1), BH_OK); /* the slot it takes */
    bh_sr_session_attach(c, &fake_tp, t, &f->loop, uv_now(&f->loop));
    t->c = c;
    feed(t, "{\"protocol\":\"json\",\"version\":1}\x1e");
    assert_int_equal(t->out.len, 3);
    assert_memory_equal(t->out.data, "{}\x1e", 3);
    bh_buf_reset(&t->out);
    return t;
}

static void get_balances(tconn_t *t, const char *client_id) {
    char msg[160];
    snprintf(msg, sizeof msg,
             "{\"type\":1,\"invocationId\":\"1\",\"target\":\"GetBalances\",\"arguments\":[\"%s\"]}"
             "\x1e",
             client_id);
    feed(t, msg);
}

/* Turn the loop until every given connection's session has ended. */
static void wait_gone(fx_t *f, tconn_t *a, tconn_t *b) {
    for (int i = 0; i < 100 && ((a && a->c) || (b && b->c)); i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_null(a ? a->c : NULL);
    assert_null(b ? b->c : NULL);
}

/* What a connection was sent since the last call, as executionEvents (subject, clientId, the
 * data's sequence or -1), Completions and Close messages. */
typedef struct {
    char subject[48];
    char client_id[48];
    long long seq;
} ev_t;

typedef struct {
    ev_t ev[MAXEV];
    size_t n, completions, closes;
    char close_error[64];
} sent_t;

static void str_field(const char *msg, const char *name, char *out, size_t cap) {
    const char *p = strstr(msg, name);
    out[0] = 0;
    if (!p)
        return;
    p += strlen(name);
    const char *e = strchr(p, '"');
    assert_non_null(e);
    snprintf(out, cap, "%.*s", (int)(e - p), p);
}

static void take(tconn_t *t, sent_t *s) {
    memset(s, 0, sizeof *s);
    char *all = strndup(t->out.data ? t->out.data : "", t->out.len);
    assert_non_null(all);
    char *save = NULL;
    for (char *m = strtok_r(all, "\x1e", &save); m; m = strtok_r(NULL, "\x1e", &save)) {
        if (strncmp(m, "{\"type\":3,", 10) == 0) {
            s->completions++;
        } else if (strncmp(m, "{\"type\":7", 9) == 0) {
            s->closes++;
            str_field(m, "\"error\":\"", s->close_error, sizeof s->close_error);
        } else {
            assert_non_null(strstr(m, "\"target\":\"executionEvents\""));
            assert_true(s->n < MAXEV);
            ev_t *e = &s->ev[s->n++];
            str_field(m, "\"subject\":\"", e->subject, sizeof e->subject);
            str_field(m, "\"clientId\":\"", e->client_id, sizeof e->client_id);
            const char *q = strstr(m, "\"sequence\":");
            e->seq = q ? atoll(q + 11) : -1;
        }
    }
    free(all);
    bh_buf_reset(&t->out);
}

static void expect_event(const ev_t *e, const char *subject, const char *client_id, long long seq) {
    assert_string_equal(e->subject, subject);
    assert_string_equal(e->client_id, client_id);
    assert_int_equal(e->seq, seq);
}

/* Exactly one GetBalances answer: the snapshot event, then its Completion. */
static void expect_snapshot(tconn_t *t, const char *client_id, long long seq) {
    sent_t s;
    take(t, &s);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.completions, 1);
    expect_event(&s.ev[0], "account.balances.snapshot", client_id, seq);
}

static void expect_nothing(tconn_t *t) {
    assert_int_equal(t->out.len, 0);
}

/* ---- tests ---- */

/* Every hub gets each change (its own snapshot reference) and applies them in order; one
 * hub's queue running never delivers to another hub's connections. */
static void test_changes_reach_every_hub_in_order(void **state) {
    fx_t *f = fx_new(0, 0);
    uint64_t s1 = create_user(f, "u1");
    assert_int_equal(f->side[0].q.n, 1);
    assert_int_equal(f->side[1].q.n, 1);
    queue_run(&f->side[0].q);
    queue_run(&f->side[1].q);
    tconn_t *a = open_conn(f, &f->side[0], "u1", "k1");
    tconn_t *b = open_conn(f, &f->side[1], "u1", "k1");
    get_balances(a, "ca");
    get_balances(b, "cb");
    expect_snapshot(a, "ca", (long long)s1);
    expect_snapshot(b, "cb", (long long)s1);
    uint64_t s2 = deposit(f, "u1"), s3 = deposit(f, "u1"), s4 = deposit(f, "u1");
    assert_int_equal(s4, s1 + 3);
    assert_int_equal(f->side[0].q.n, 3);
    assert_int_equal(f->side[1].q.n, 3);
    expect_nothing(a); /* nothing until the hub's thread runs its calls */
    expect_nothing(b);
    int refs = snap_refs(f, "u1");
    assert_int_equal(queue_run(&f->side[1].q), 3);
    /* side 1 released the posted reference and keeps the latest as its user's copy (which
     * answers GetBalances there without the ledger's lock) */
    assert_int_equal(snap_refs(f, "u1"), refs);
    expect_nothing(a);
    sent_t s;
    take(b, &s);
    assert_int_equal(s.n, 3);
    assert_int_equal(s.completions, 0);
    expect_event(&s.ev[0], "account.balances.update", "cb", (long long)s2);
    expect_event(&s.ev[1], "account.balances.update", "cb", (long long)s3);
    expect_event(&s.ev[2], "account.balances.update", "cb", (long long)s4);
    queue_run(&f->side[0].q);
    assert_int_equal(snap_refs(f, "u1"), refs); /* the same on side 0 */
    take(a, &s);
    assert_int_equal(s.n, 3);
    expect_event(&s.ev[0], "account.balances.update", "ca", (long long)s2);
    expect_event(&s.ev[2], "account.balances.update", "ca", (long long)s4);
    /* Another user's change reaches nobody here. */
    create_user(f, "u2");
    queue_run(&f->side[0].q);
    queue_run(&f->side[1].q);
    expect_nothing(a);
    expect_nothing(b);
    fx_free(f);
}

/* A GetBalances may read a snapshot newer than updates still queued for its thread: those are
 * skipped for that connection (not for others), later ones arrive; a GetBalances with nothing
 * new repeats the current sequence, since the client asked. */
static void test_getbalances_newer_than_queued(void **state) {
    fx_t *f = fx_new(0, 0);
    queue_t *q = &f->side[0].q;
    uint64_t s1 = create_user(f, "u1");
    queue_run(q);
    tconn_t *a = open_conn(f, &f->side[0], "u1", "k1");
    tconn_t *b = open_conn(f, &f->side[0], "u1", "k1");
    get_balances(a, "c1");
    get_balances(b, "cb");
    expect_snapshot(a, "c1", (long long)s1);
    expect_snapshot(b, "cb", (long long)s1);
    uint64_t s2 = deposit(f, "u1"), s3 = deposit(f, "u1");
    assert_int_equal(q->n, 2);
    get_balances(a, "c2"); /* reads s3 while s2 and s3 wait in the queue */
    expect_snapshot(a, "c2", (long long)s3);
    queue_run(q);
    expect_nothing(a);
    sent_t s;
    take(b, &s);
    assert_int_equal(s.n, 2);
    expect_event(&s.ev[0], "account.balances.update", "cb", (long long)s2);
    expect_event(&s.ev[1], "account.balances.update", "cb", (long long)s3);
    uint64_t s4 = deposit(f, "u1");
    queue_run(q);
    take(a, &s);
    assert_int_equal(s.n, 1);
    expect_event(&s.ev[0], "account.balances.update", "c2", (long long)s4);
    take(b, &s);
    assert_int_equal(s.n, 1);
    expect_event(&s.ev[0], "account.balances.update", "cb", (long long)s4);
    /* Asked again with nothing new: the same sequence, once; the next change still comes. */
    get_balances(a, "c3");
    expect_snapshot(a, "c3", (long long)s4);
    uint64_t s5 = deposit(f, "u1");
    queue_run(q);
    take(a, &s);
    assert_int_equal(s.n, 1);
    expect_event(&s.ev[0], "account.balances.update", "c3", (long long)s5);
    fx_free(f);
}

/* The same change twice, or an older one after a newer one, is not sent again; connections
 * without a GetBalances get nothing. */
static void test_repeated_and_stale_changes_skipped(void **state) {
    fx_t *f = fx_new(0, 0);
    create_user(f, "u1");
    queue_run(&f->side[0].q);
    tconn_t *a = open_conn(f, &f->side[0], "u1", "k1");
    tconn_t *idle = open_conn(f, &f->side[0], "u1", "k1");
    get_balances(a, "ca");
    sent_t s;
    take(a, &s);
    uint64_t s2 = deposit(f, "u1");
    bh_snapshot_t *old = bh_ledger_snapshot(f->l, "u1");
    uint64_t s3 = deposit(f, "u1");
    bh_snapshot_t *cur = bh_ledger_snapshot(f->l, "u1");
    assert_int_equal(old->sequence, s2);
    assert_int_equal(cur->sequence, s3);
    bh_hub_on_change(f->side[0].hub, cur);
    bh_hub_on_change(f->side[0].hub, cur);
    bh_hub_on_change(f->side[0].hub, old);
    take(a, &s);
    assert_int_equal(s.n, 1);
    expect_event(&s.ev[0], "account.balances.update", "ca", (long long)s3);
    queue_run(&f->side[0].q); /* s2 and s3 through the group: both already covered */
    expect_nothing(a);
    expect_nothing(idle);
    bh_snapshot_release(old);
    bh_snapshot_release(cur);
    fx_free(f);
}

/* A revoked key closes its connections on both hubs, once each hub's thread runs the call;
 * the same user's other key stays. user NULL finds the key under any user. */
static void test_close_key_across_hubs(void **state) {
    fx_t *f = fx_new(0, 0);
    create_user(f, "u1");
    create_user(f, "u2");
    queue_run(&f->side[0].q);
    queue_run(&f->side[1].q);
    tconn_t *a = open_conn(f, &f->side[0], "u1", "k1");
    tconn_t *b = open_conn(f, &f->side[1], "u1", "k1");
    tconn_t *c = open_conn(f, &f->side[0], "u1", "k2");
    tconn_t *d = open_conn(f, &f->side[1], "u2", "k3");
    get_balances(c, "cc");
    sent_t s;
    take(c, &s);
    bh_hub_group_close_key(f->g, "u1", "k1");
    assert_int_equal(f->side[0].q.n, 1);
    assert_int_equal(f->side[1].q.n, 1);
    expect_nothing(a);
    expect_nothing(b);
    queue_run(&f->side[0].q);
    take(a, &s);
    assert_int_equal(s.closes, 1);
    assert_string_equal(s.close_error, "API key revoked");
    expect_nothing(b); /* its hub has not run the call yet */
    queue_run(&f->side[1].q);
    take(b, &s);
    assert_int_equal(s.closes, 1);
    assert_string_equal(s.close_error, "API key revoked");
    wait_gone(f, a, b);
    expect_nothing(c);
    expect_nothing(d);
    assert_int_equal(bh_sr_shared_count(f->shared, "k1"), 0);
    /* The other key's connection still gets updates. */
    uint64_t s2 = deposit(f, "u1");
    queue_run(&f->side[0].q);
    queue_run(&f->side[1].q);
    take(c, &s);
    assert_int_equal(s.n, 1);
    expect_event(&s.ev[0], "account.balances.update", "cc", (long long)s2);
    /* Any user: k3 belongs to u2 on hub 1. */
    bh_hub_group_close_key(f->g, NULL, "k3");
    queue_run(&f->side[0].q);
    queue_run(&f->side[1].q);
    take(d, &s);
    assert_int_equal(s.closes, 1);
    wait_gone(f, d, NULL);
    expect_nothing(c);
    /* Ids no connection can have post nothing. */
    char longid[200];
    memset(longid, 'x', sizeof longid - 1);
    longid[sizeof longid - 1] = 0;
    bh_hub_group_close_key(f->g, longid, "k2");
    bh_hub_group_close_key(f->g, "u1", longid);
    bh_hub_group_close_user(f->g, longid);
    assert_int_equal(f->side[0].q.n, 0);
    assert_int_equal(f->side[1].q.n, 0);
    fx_free(f);
}

/* close_user closes every connection of the user on every hub; a deleted user's last update
 * (deleted: true) reaches its subscribed connections, which are then closed. */
static void test_close_user_and_delete(void **state) {
    fx_t *f = fx_new(0, 0);
    create_user(f, "u1");
    create_user(f, "u2");
    queue_run(&f->side[0].q);
    queue_run(&f->side[1].q);
    tconn_t *a = open_conn(f, &f->side[0], "u1", "k1");
    tconn_t *b = open_conn(f, &f->side[1], "u1", "k2");
    tconn_t *c = open_conn(f, &f->side[1], "u2", "k3");
    bh_hub_group_close_user(f->g, "u1");
    queue_run(&f->side[0].q);
    queue_run(&f->side[1].q);
    sent_t s;
    take(a, &s);
    assert_int_equal(s.closes, 1);
    assert_string_equal(s.close_error, "user deleted");
    take(b, &s);
    assert_int_equal(s.closes, 1);
    wait_gone(f, a, b);
    expect_nothing(c);
    get_balances(c, "cc");
    take(c, &s);
    uint64_t sd = delete_user(f, "u2");
    queue_run(&f->side[1].q);
    take(c, &s);
    assert_int_equal(s.n, 1);
    expect_event(&s.ev[0], "account.balances.update", "cc", (long long)sd);
    assert_int_equal(s.closes, 1);
    assert_string_equal(s.close_error, "user deleted");
    wait_gone(f, c, NULL);
    queue_run(&f->side[0].q);
    fx_free(f);
}

/* Closing every connection of a key and opening a new one buys no fresh burst: the bucket
 * stays (without connections) until it has refilled. */
static void test_rate_survives_reconnect(void **state) {
    fx_t *f = fx_new(0.001, 3);
    bh_hub_rate_t *r = bh_hub_rate_ref(f->g, "k9");
    assert_non_null(r);
    for (int i = 0; i < 3; i++)
        assert_true(bh_hub_rate_take(f->g, r));
    assert_false(bh_hub_rate_take(f->g, r));
    bh_hub_rate_unref(f->g, r); /* the key's last connection closes */
    r = bh_hub_rate_ref(f->g, "k9");
    assert_false(bh_hub_rate_take(f->g, r));        /* still empty */
    bh_hub_rate_t *o = bh_hub_rate_ref(f->g, "k8"); /* another key: its own, full */
    assert_true(bh_hub_rate_take(f->g, o));
    bh_hub_rate_unref(f->g, o);
    bh_hub_rate_unref(f->g, r);
    fx_free(f); /* kept entries go with the group (the leak check runs this file too) */
}

/* One key's command rate holds across hubs: the bucket is the group's. */
static void test_rate_shared_across_hubs(void **state) {
    fx_t *f = fx_new(0.001, 3);
    uint64_t s1 = create_user(f, "u1");
    queue_run(&f->side[0].q);
    queue_run(&f->side[1].q);
    tconn_t *a = open_conn(f, &f->side[0], "u1", "k1");
    tconn_t *b = open_conn(f, &f->side[1], "u1", "k1");
    tconn_t *c = open_conn(f, &f->side[1], "u1", "k2");
    get_balances(a, "x");
    get_balances(b, "x");
    get_balances(a, "x");
    sent_t s;
    take(a, &s);
    assert_int_equal(s.n, 2);
    take(b, &s);
    assert_int_equal(s.n, 1);
    get_balances(b, "y"); /* the fourth of k1: over */
    take(b, &s);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.completions, 1);
    expect_event(&s.ev[0], "account.balances.error", "y", -1);
    get_balances(a, "z");
    take(a, &s);
    expect_event(&s.ev[0], "account.balances.error", "z", -1);
    get_balances(c, "w"); /* another key has its own bucket */
    expect_snapshot(c, "w", (long long)s1);
    fx_free(f);
}

/* A post that fails drops the call (and its snapshot reference); a removed hub gets nothing
 * more while the others still do. */
static void test_failed_post_and_remove(void **state) {
    fx_t *f = fx_new(0, 0);
    create_user(f, "u1");
    queue_run(&f->side[0].q);
    queue_run(&f->side[1].q);
    f->side[0].q.fail = BH_ECLOSED;
    deposit(f, "u1");
    assert_int_equal(f->side[0].q.n, 0);
    assert_int_equal(f->side[1].q.n, 1);
    int refs = snap_refs(f, "u1");
    queue_run(&f->side[1].q);
    assert_int_equal(snap_refs(f, "u1"), refs - 1); /* side 0 kept none */
    f->side[0].q.fail = BH_ENOMEM;
    deposit(f, "u1");
    assert_int_equal(f->side[0].q.n, 0);
    f->side[0].q.fail = 0;
    bh_hub_group_remove(f->g, f->side[1].hub);
    bh_hub_group_remove(f->g, f->side[1].hub); /* not a member: nothing */
    deposit(f, "u1");
    bh_hub_group_close_key(f->g, "u1", "k1");
    assert_int_equal(f->side[0].q.n, 2);
    assert_int_equal(f->side[1].q.n, 1); /* only the one from before the removal */
    fx_free(f);
}

/* Adding: same ledger and keyring, a post function, one group at a time. A single hub whose
 * post function runs the call at once works as the plain listener did. */
static void test_add_rules_and_inline_single_hub(void **state) {
    fx_t *f = fx_new(0, 0);
    bh_hub_group_t *g2;
    assert_int_equal(bh_hub_group_new(f->l, NULL, 0, 0, &g2), BH_OK);
    assert_int_equal(bh_hub_group_add(g2, f->side[0].hub, queue_post, NULL), BH_EINVAL);
    bh_hub_t *h;
    static const int other_keyring;
    assert_int_equal(bh_hub_new(f->l, (const bh_keyring_t *)&other_keyring, &h), BH_OK);
    assert_int_equal(bh_hub_group_add(g2, h, queue_post, NULL), BH_EINVAL);
    bh_hub_free(h);
    assert_int_equal(bh_hub_new(f->l, NULL, &h), BH_OK);
    assert_int_equal(bh_hub_group_add(g2, h, NULL, NULL), BH_EINVAL);
    bh_hub_free(h);

    side_t solo = {0};
    int runs = 0;
    make_side(f, &solo, g2, inline_post, &runs);
    bh_ledger_set_listener(f->l, bh_hub_group_on_change, g2);
    uint64_t s1 = create_user(f, "u1");
    assert_int_equal(runs, 1);
    tconn_t *a = open_conn(f, &solo, "u1", "k1");
    get_balances(a, "c");
    expect_snapshot(a, "c", (long long)s1);
    uint64_t s2 = deposit(f, "u1");
    assert_int_equal(runs, 2);
    sent_t s;
    take(a, &s);
    assert_int_equal(s.n, 1);
    expect_event(&s.ev[0], "account.balances.update", "c", (long long)s2);
    bh_hub_group_close_key(g2, "u1", "k1");
    take(a, &s);
    assert_int_equal(s.closes, 1);
    wait_gone(f, a, NULL);
    assert_int_equal(f->side[0].q.n, 0); /* the first group got none of it */
    bh_ledger_set_listener(f->l, bh_hub_group_on_change, f->g);
    bh_sr_server_free(solo.sr);
    bh_hub_free(solo.hub);
    bh_hub_group_free(g2);
    fx_free(f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_changes_reach_every_hub_in_order),
        cmocka_unit_test(test_getbalances_newer_than_queued),
        cmocka_unit_test(test_repeated_and_stale_changes_skipped),
        cmocka_unit_test(test_close_key_across_hubs),
        cmocka_unit_test(test_close_user_and_delete),
        cmocka_unit_test(test_rate_shared_across_hubs),
        cmocka_unit_test(test_rate_survives_reconnect),
        cmocka_unit_test(test_failed_post_and_remove),
        cmocka_unit_test(test_add_rules_and_inline_single_hub),
    };
    bh_log_set_level(BH_LOG_ERROR + 1); /* sessions log their ends; keep output clean */
    return cmocka_run_group_tests(tests, NULL, NULL);
}
