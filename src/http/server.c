/* HTTP/1.1 server connections: buffering, limits, timeouts, pipelining and upgrade hand-over.
 * Request heads are re-parsed from the connection buffer until complete (heads are small). */
#include "server.h"

#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/buf.h"
#include "../base/error.h"
#include "../base/json.h"
#include "../base/log.h"
#include "../base/metrics.h"

struct bh_httpd {
    bh_net_t *net;
    uv_loop_t *loop;
    int port;
    bh_httpd_config_t cfg;
    bh_httpd_handler_t handler;
    void *ud;
    bh_buf_t scratch;
    bh_mailbox_t *mb;
    /* The mailbox is freed once closed, but other threads hold s until bh_httpd_free: they
     * check mb_closed, and close_all waits for those between check and post. */
    _Atomic int mb_closed;
    _Atomic int posters;
    int adopting; /* inside bh_net_adopt: the connection opening arrived by migration */
};

/* A connection on its way to another server's loop (bh_http_migrate). */
typedef struct {
    bh_httpd_t *to;
    bh_conn_handoff_t *h;
} migration_t;

struct bh_http_conn {
    bh_conn_t *c;
    bh_httpd_t *srv;
    bh_buf_t in;
    const bh_http_upgrade_ops_t *up;
    void *up_ud;
    int keep_alive; /* of the request being answered */
    int head;       /* the request being answered is a HEAD: headers only */
    int responded;
    int closing;
    int in_dispatch;
    int holds;                 /* bh_http_hold references outstanding */
    int dead;                  /* the connection is gone; hc lives on until the last release */
    size_t pending_total;      /* bytes of a held request still waiting for its answer */
    void (*gone_cb)(void *ud); /* bh_http_on_gone */
    void *gone_ud;
    bh_httpd_t *migrate_to; /* bh_http_migrate called: the connection leaves for there */
    int migrating;
    int arrived;  /* adopted from another loop, its first request not dispatched yet */
    int migrated; /* the request in dispatch is the one that came with the migration */
};

static void on_request_timeout(void *arg) {
    bh_http_conn_t *hc = arg;
    bh_metric_add(BH_M_LIMIT_TIMEOUT, 1);
    bh_http_respond_error(hc, 408, "request not completed in time");
}

static void on_idle_timeout(void *arg) {
    bh_http_conn_t *hc = arg;
    bh_conn_close(hc->c);
}

static void conn_open(bh_conn_t *c, void *server_ud) {
    bh_httpd_t *s = server_ud;
    bh_http_conn_t *hc = calloc(1, sizeof *hc);
    if (!hc) {
        bh_conn_abort(c);
        return;
    }
    hc->c = c;
    hc->srv = s;
    hc->arrived = s->adopting;
    bh_buf_init(&hc->in, s->cfg.max_head + s->cfg.max_body);
    bh_conn_set_data(c, hc);
    bh_conn_set_timer(c, s->cfg.request_timeout_ms, on_request_timeout, hc);
}

static void conn_closed(bh_conn_t *c) {
    bh_http_conn_t *hc = bh_conn_data(c);
    if (!hc)
        return;
    if (hc->up && hc->up->on_close)
        hc->up->on_close(hc->up_ud);
    bh_buf_free(&hc->in);
    hc->dead = 1;
    hc->c = NULL;
    if (hc->gone_cb) {
        void (*cb)(void *) = hc->gone_cb;
        hc->gone_cb = NULL;
        hc->holds++; /* a release inside the callback must not free hc under us */
        cb(hc->gone_ud);
        hc->holds--;
    }
    if (hc->holds == 0)
        free(hc); /* otherwise a deferred answer is still coming: free at the last release */
}

/* The answered request's bytes leave the buffer; honour Connection: close. */
static void finish_request(bh_http_conn_t *hc, size_t total) {
    bh_buf_consume(&hc->in, total);
    if (!hc->keep_alive && !hc->closing) {
        hc->closing = 1;
        bh_conn_close(hc->c);
    }
}

/* Parse and dispatch every complete request in the buffer. */
static void process(bh_http_conn_t *hc) {
    bh_httpd_t *s = hc->srv;
    while (!hc->closing && !hc->up && !hc->pending_total && !hc->migrating && hc->in.len > 0) {
        bh_http_request_t req;
        int status = 400;
        int r = bh_http_parse_request(hc->in.data, hc->in.len, s->cfg.max_head, &req, &status);
        if (r == BH_EAGAIN)
            return;
        if (r < 0) {
            bh_metric_add(BH_M_HTTP_REQUESTS, 1);
            bh_metric_add(BH_M_LIMIT_REQUEST_SIZE, status == 431);
            bh_http_respond_error(hc, status, bh_http_reason(status));
            return;
        }
        if (req.content_length > s->cfg.max_body) {
            bh_metric_add(BH_M_HTTP_REQUESTS, 1);
            bh_metric_add(BH_M_LIMIT_REQUEST_SIZE, 1);
            bh_http_respond_error(hc, 413, "request body too large");
            return;
        }
        size_t total = req.head_len + (size_t)req.content_length;
        if (hc->in.len < total)
            return;
        hc->keep_alive = req.keep_alive;
        hc->head = req.method == BH_HTTP_HEAD;
        hc->responded = 0;
        hc->in_dispatch = 1;
        hc->migrated = hc->arrived;
        hc->arrived = 0;
        bh_metric_add(BH_M_HTTP_REQUESTS, !hc->migrated); /* counted where it arrived first */
        s->handler(s->ud, hc, &req, hc->in.data + req.head_len, (size_t)req.content_length);
        hc->in_dispatch = 0;
        hc->migrated = 0;
        if (hc->migrating)
            return; /* the request stays in hc->in: it travels with the connection */
        if (hc->up) {
            /* Bytes pipelined after the upgrade request belong to the new protocol. */
            size_t rest = hc->in.len - total;
            bh_buf_t in = hc->in;
            bh_buf_init(&hc->in, 0);
            if (rest > 0)
                hc->up->on_data(hc->up_ud, in.data + total, rest);
            bh_buf_free(&in);
            return;
        }
        if (!hc->responded && hc->holds > 0) {
            hc->pending_total = total; /* answered later; pipelined requests wait */
            bh_conn_set_timer(hc->c, 0, NULL, NULL);
            return;
        }
        if (!hc->responded)
            bh_http_respond_error(hc, 500, "no response");
        finish_request(hc, total);
    }
    if (!hc->closing && !hc->up && !hc->pending_total && !hc->migrating) {
        if (hc->in.len == 0)
            bh_conn_set_timer(hc->c, s->cfg.idle_timeout_ms, on_idle_timeout, hc);
        else
            bh_conn_set_timer(hc->c, s->cfg.request_timeout_ms, on_request_timeout, hc);
    }
}

static void conn_data(bh_conn_t *c, const char *data, size_t len) {
    bh_http_conn_t *hc = bh_conn_data(c);
    if (hc->up) {
        hc->up->on_data(hc->up_ud, data, len);
        return;
    }
    if (hc->closing)
        return;
    if (hc->migrating) {
        /* Waiting for output to drain (reading is paused, but TLS may still hand over records
         * it had): kept unparsed, for the handoff. */
        if (bh_buf_append(&hc->in, data, len) < 0)
            bh_conn_abort(c);
        return;
    }
    int was_empty = hc->in.len == 0;
    if (bh_buf_append(&hc->in, data, len) < 0) {
        bh_metric_add(BH_M_HTTP_REQUESTS, 1);
        bh_metric_add(BH_M_LIMIT_REQUEST_SIZE, 1);
        bh_http_respond_error(hc, 431, "request too large");
        return;
    }
    if (was_empty)
        bh_conn_set_timer(c, hc->srv->cfg.request_timeout_ms, on_request_timeout, hc);
    process(hc);
}

static const bh_conn_handler_t conn_handler = {conn_open, conn_data, conn_closed};

int bh_httpd_new(uv_loop_t *loop, const bh_httpd_config_t *cfg, const char *listen,
                 bh_httpd_handler_t handler, void *ud, bh_httpd_t **out, int *port, char *errmsg,
                 size_t errcap) {
    bh_httpd_t *s = calloc(1, sizeof *s);
    if (!s)
        return BH_ENOMEM;
    s->cfg = *cfg;
    s->loop = loop;
    s->handler = handler;
    s->ud = ud;
    atomic_init(&s->mb_closed, 0);
    atomic_init(&s->posters, 0);
    bh_buf_init(&s->scratch, 0);
    int r = bh_mailbox_new(loop, &s->mb);
    if (r < 0) {
        snprintf(errmsg, errcap, "cannot create the listener's mailbox: %s", bh_strerror(r));
        free(s);
        return r;
    }
    bh_net_config_t ncfg = {
        .max_output = cfg->max_output, .tls = cfg->tls, .reuseport = cfg->reuseport};
    r = bh_net_new(loop, &ncfg, listen, &conn_handler, s, &s->net, port, errmsg, errcap);
    if (r < 0) {
        bh_mailbox_close(s->mb, NULL); /* nothing was posted yet */
        uv_run(loop, UV_RUN_NOWAIT);   /* frees it */
        free(s);
        return r;
    }
    s->port = *port;
    *out = s;
    return BH_OK;
}

uv_loop_t *bh_httpd_loop(bh_httpd_t *s) {
    return s->loop;
}

int bh_httpd_port(const bh_httpd_t *s) {
    return s->port;
}

int bh_httpd_post(bh_httpd_t *s, void (*fn)(void *), void *arg) {
    atomic_fetch_add(&s->posters, 1);
    int r = atomic_load(&s->mb_closed) ? BH_ECLOSED : bh_mailbox_post(s->mb, fn, arg);
    atomic_fetch_sub(&s->posters, 1);
    return r;
}

void bh_httpd_stop_accepting(bh_httpd_t *s) {
    bh_net_stop_accepting(s->net);
}

int bh_httpd_set_tls(bh_httpd_t *s, bh_net_tls_t *t) {
    return bh_net_set_tls(s->net, t);
}

static void migrate_arrive(void *arg);

/* Queued calls at close: others' calls run (they may hold references to release); arriving
 * connections are closed with the rest rather than handled during shutdown. */
static void drop_call(void (*fn)(void *), void *arg) {
    if (fn == migrate_arrive) {
        migration_t *m = arg;
        bh_conn_handoff_free(m->h);
        free(m);
        return;
    }
    fn(arg);
}

void bh_httpd_close_all(bh_httpd_t *s) {
    if (!atomic_load(&s->mb_closed)) {
        atomic_store(&s->mb_closed, 1);
        while (atomic_load(&s->posters) > 0)
            sched_yield(); /* a post between its check and its push: a few instructions */
        bh_mailbox_close(s->mb, drop_call);
    }
    bh_net_close_all(s->net);
}

void bh_httpd_free(bh_httpd_t *s) {
    if (!s)
        return;
    bh_net_free(s->net);
    bh_buf_free(&s->scratch);
    free(s);
}

int bh_http_respond(bh_http_conn_t *hc, int status, const char *ctype, const char *extra,
                    const char *body, size_t len) {
    if (hc->dead)
        return BH_ECLOSED;
    if (hc->migrating)
        return BH_EINVAL;
    bh_buf_t *b = &hc->srv->scratch;
    bh_buf_reset(b);
    hc->responded = 1;
    /* Answers keep the connection; framing errors close it (bh_http_respond_error). */
    int keep = hc->keep_alive && !hc->closing;
    if (!keep)
        hc->keep_alive = 0;
    int r = bh_http_write_response(b, status, ctype, extra, body, len, keep);
    if (r == 0 && hc->head)
        b->len -= len; /* HEAD: the GET's headers, Content-Length included, without the body */
    if (r == 0)
        r = bh_conn_write(hc->c, b->data, b->len);
    if (!keep && !hc->closing) {
        hc->closing = 1;
        bh_conn_close(hc->c);
    }
    if (!hc->in_dispatch && hc->pending_total) {
        size_t total = hc->pending_total;
        hc->pending_total = 0;
        finish_request(hc, total);
        process(hc);
    }
    return r;
}

int bh_http_respond_error(bh_http_conn_t *hc, int status, const char *msg) {
    if (hc->dead)
        return BH_ECLOSED;
    if (hc->migrating)
        return BH_EINVAL;
    bh_buf_t body;
    bh_buf_init(&body, 0);
    int r = bh_buf_appends(&body, "{\"error\":");
    if (r == 0)
        r = bh_json_write_str(&body, msg, strlen(msg));
    if (r == 0)
        r = bh_buf_appends(&body, "}");
    hc->keep_alive = 0;
    if (r == 0)
        r = bh_http_respond(hc, status, "application/json", NULL, body.data, body.len);
    bh_buf_free(&body);
    if (!hc->closing && !hc->dead) {
        hc->closing = 1;
        bh_conn_close(hc->c);
    }
    return r;
}

void bh_http_upgrade(bh_http_conn_t *hc, const bh_http_upgrade_ops_t *ops, void *ud) {
    hc->up = ops;
    hc->up_ud = ud;
    hc->responded = 1;
    bh_conn_set_timer(hc->c, 0, NULL, NULL);
}

int bh_http_respond_stream(bh_http_conn_t *hc, int status, const char *ctype, const char *extra,
                           const bh_http_upgrade_ops_t *ops, void *ud) {
    if (hc->dead || hc->closing)
        return BH_ECLOSED;
    if ((ctype && strpbrk(ctype, "\r\n")) || status < 200 || status > 599)
        return BH_EINVAL;
    bh_buf_t *b = &hc->srv->scratch;
    bh_buf_reset(b);
    int r = bh_buf_printf(b, "HTTP/1.1 %d %s\r\n", status, bh_http_reason(status));
    if (r == 0 && ctype)
        r = bh_buf_printf(b, "Content-Type: %s\r\n", ctype);
    if (r == 0)
        r = bh_buf_printf(b, "Connection: close\r\n%s\r\n", extra ? extra : "");
    if (r == 0)
        r = bh_conn_write(hc->c, b->data, b->len);
    if (r < 0)
        return r;
    bh_http_upgrade(hc, ops, ud);
    return BH_OK;
}

void bh_http_on_gone(bh_http_conn_t *hc, void (*cb)(void *ud), void *ud) {
    hc->gone_cb = hc->dead ? NULL : cb;
    hc->gone_ud = ud;
}

bh_conn_t *bh_http_conn_net(bh_http_conn_t *hc) {
    return hc->c;
}

void bh_http_hold(bh_http_conn_t *hc) {
    hc->holds++;
}

void bh_http_release(bh_http_conn_t *hc) {
    if (--hc->holds == 0 && hc->dead)
        free(hc);
}

/* ---- migration to another loop ---- */

/* On the target's loop thread. */
static void migrate_arrive(void *arg) {
    migration_t *m = arg;
    bh_httpd_t *s = m->to;
    bh_conn_handoff_t *h = m->h;
    free(m);
    s->adopting = 1;
    int r = bh_net_adopt(s->net, h);
    s->adopting = 0;
    if (r < 0)
        bh_log(BH_LOG_WARN, "cannot take over a migrated connection",
               BH_LS("error", bh_strerror(r)));
}

/* Detach and post. BH_OK once detached (even if the post then fails: the connection is gone
 * and cannot be answered); an error while the connection is still here. */
static int migrate_now(bh_http_conn_t *hc) {
    bh_httpd_t *to = hc->migrate_to;
    if (atomic_load(&to->mb_closed))
        return BH_ECLOSED; /* shutting down there: still time for a 503 here */
    migration_t *m = malloc(sizeof *m);
    if (!m)
        return BH_ENOMEM;
    m->to = to;
    int r = bh_conn_detach(hc->c, hc->in.data, hc->in.len, &m->h);
    if (r < 0) {
        free(m);
        return r;
    }
    r = bh_httpd_post(to, migrate_arrive, m);
    if (r < 0) {
        bh_log(BH_LOG_WARN, "connection lost in migration", BH_LS("error", bh_strerror(r)));
        bh_conn_handoff_free(m->h);
        free(m);
    }
    return BH_OK;
}

static void migrate_failed(bh_http_conn_t *hc, int err) {
    bh_log(BH_LOG_WARN, "cannot migrate a connection", BH_LU("conn", bh_conn_id(hc->c)),
           BH_LS("error", bh_strerror(err)));
    hc->migrating = 0;
    bh_http_respond_error(hc, 503, "service unavailable");
}

static void migrate_drained(void *arg) {
    bh_http_conn_t *hc = arg;
    int r = migrate_now(hc);
    if (r < 0)
        migrate_failed(hc, r);
}

static void on_migrate_timeout(void *arg) {
    bh_http_conn_t *hc = arg;
    bh_metric_add(BH_M_LIMIT_TIMEOUT, 1);
    bh_conn_abort(hc->c); /* the peer is not taking the output queued before the move */
}

int bh_http_migrate(bh_http_conn_t *hc, bh_httpd_t *to) {
    if (!to || hc->dead || hc->closing || hc->up || hc->holds > 0 || !hc->in_dispatch ||
        hc->responded || hc->migrating)
        return BH_EINVAL;
    hc->migrating = 1;
    hc->migrate_to = to;
    if (bh_conn_queued(hc->c) > 0) {
        /* Earlier answers go out first from here, so they reach the peer before the target's.
         * What the peer sends meanwhile stays in the socket for the target to read. */
        bh_conn_pause_read(hc->c);
        bh_conn_set_timer(hc->c, hc->srv->cfg.request_timeout_ms, on_migrate_timeout, hc);
        bh_conn_on_drain(hc->c, 0, migrate_drained, hc);
        return BH_OK;
    }
    int r = migrate_now(hc);
    if (r < 0)
        migrate_failed(hc, r);
    return r;
}

int bh_http_conn_migrated(const bh_http_conn_t *hc) {
    return hc->migrated;
}
