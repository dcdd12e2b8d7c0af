/* The Long Polling transport (server to client; the client sends with HTTP POST): framed
 * messages wait in a bounded queue; a poll takes them all at once or is held until some
 * arrive or the poll timeout passes; a newer poll ends the held one with 204; DELETE ends
 * the connection; a connection nobody polls for the client timeout is abandoned. The client's
 * input waits while half the queue's cap is used, until a poll takes it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/error.h"
#include "../base/log.h"
#include "../base/metrics.h"
#include "internal.h"

/* Queue storage above this is released after each poll. */
#define BH_SR_LP_KEEP 65536

typedef struct {
    bh_sr_conn_t *c;
    bh_buf_t queue;            /* framed messages not yet given to a poll */
    bh_http_conn_t *poll;      /* the held poll, or NULL */
    uint64_t poll_due;         /* when the held poll is answered empty */
    uint64_t idle_since;       /* when the last poll ended (while none is held) */
    int flush_due;             /* answer the held poll on the next timer turn */
    int drain_wanted;          /* the session's input waits for a poll to take the queue */
    char cors[BH_SR_CORS_MAX]; /* the held poll's CORS header lines */
} sr_lp_t;

static uint64_t sat_add(uint64_t a, uint64_t b) {
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* Answer a poll: 200 with everything queued (when take) or another status. Answering may run
 * requests pipelined behind the poll, which may end the session and free lp: nothing here
 * touches lp after bh_http_respond, and callers check c->att again. */
static void respond(sr_lp_t *lp, bh_http_conn_t *hc, int status, const char *cors, int take) {
    char extra[BH_SR_CORS_MAX + 32];
    bh_buf_t q;
    bh_buf_init(&q, 0);
    if (take) {
        q = lp->queue;
        bh_buf_init(&lp->queue, 0);
        if (lp->drain_wanted) {
            lp->drain_wanted = 0;
            bh_sr_session_drained(lp->c); /* from the timer's next turn */
        }
    }
    snprintf(extra, sizeof extra, "Cache-Control: no-cache\r\n%s", cors);
    const char *ctype = status != 200   ? NULL
                        : lp->c->binary ? "application/octet-stream"
                                        : "text/plain; charset=utf-8";
    lp->idle_since = bh_sr_session_now(lp->c);
    bh_http_respond(hc, status, ctype, extra, q.data, q.len);
    bh_buf_free(&q);
}

static void answer_held(sr_lp_t *lp, int status) {
    bh_http_conn_t *hc = lp->poll;
    lp->poll = NULL;
    lp->flush_due = 0;
    bh_http_on_gone(hc, NULL, NULL);
    respond(lp, hc, status, lp->cors, status == 200);
    bh_http_release(hc);
}

static void on_poll_gone(void *ud) {
    sr_lp_t *lp = ud;
    bh_http_conn_t *hc = lp->poll;
    lp->poll = NULL;
    lp->idle_since = bh_sr_session_now(lp->c);
    if (hc)
        bh_http_release(hc);
    bh_sr_session_rearm(lp->c);
}

/* ---- the transport table ---- */

static int lp_send(bh_sr_conn_t *c, const char *data, size_t len) {
    sr_lp_t *lp = c->att;
    size_t cap = c->srv->cfg.lp_max_queued;
    if (lp->queue.len + len > cap || bh_buf_append(&lp->queue, data, len) < 0) {
        bh_log(BH_LOG_WARN, "closing slow consumer", BH_LS("transport", "longpolling"),
               BH_LS("connection_id", c->id), BH_LS("user", c->user_id), BH_LU("max_output", cap));
        bh_metric_add(BH_M_LIMIT_OUTPUT, 1);
        if (!c->end_reason)
            c->end_reason = "slow consumer";
        bh_sr_session_finish_later(c);
        return BH_ETOOBIG;
    }
    if (lp->poll && !lp->flush_due) {
        /* Answer on the next loop turn, so what is sent together goes in one response. */
        lp->flush_due = 1;
        bh_sr_session_rearm(c);
    }
    return BH_OK;
}

static void lp_end(bh_sr_conn_t *c, uint16_t code, const char *reason) {
    sr_lp_t *lp = c->att;
    if (lp->queue.len == 0) {
        bh_sr_session_finish_later(c);
    } else if (lp->poll && !lp->flush_due) {
        lp->flush_due = 1; /* the session ends once a poll has taken the rest */
        bh_sr_session_rearm(c);
    }
}

static void lp_detach(bh_sr_conn_t *c) {
    sr_lp_t *lp = c->att;
    c->att = NULL;
    if (lp->poll) {
        bh_http_conn_t *hc = lp->poll;
        lp->poll = NULL;
        bh_http_on_gone(hc, NULL, NULL);
        respond(lp, hc, 204, lp->cors, 0);
        bh_http_release(hc);
    }
    bh_buf_free(&lp->queue);
    free(lp);
}

/* Half the cap: the output of the input handled before the check stays under the cap. */
static int lp_congested(const bh_sr_conn_t *c) {
    const sr_lp_t *lp = c->att;
    return lp->queue.len >= c->srv->cfg.lp_max_queued / 2;
}

static void lp_watch(bh_sr_conn_t *c) {
    sr_lp_t *lp = c->att;
    lp->drain_wanted = 1;
}

static uint64_t lp_due(const bh_sr_conn_t *c) {
    const sr_lp_t *lp = c->att;
    if (!lp)
        return UINT64_MAX;
    if (lp->flush_due)
        return bh_sr_session_now(c);
    if (lp->poll)
        return lp->poll_due;
    return sat_add(lp->idle_since, c->srv->cfg.client_timeout_ms);
}

static int lp_tick(bh_sr_conn_t *c, uint64_t now) {
    sr_lp_t *lp = c->att;
    if (lp && lp->poll && (lp->flush_due ? lp->queue.len > 0 : now >= lp->poll_due)) {
        answer_held(lp, 200); /* data, or the poll timeout with an empty body */
        if (c->finished)
            return 1;
        lp = c->att;
        if (lp && c->closing && lp->queue.len == 0) {
            bh_sr_session_finish(c); /* the final Close went out */
            return 1;
        }
    }
    if (lp)
        lp->flush_due = 0;
    if (lp && !lp->poll && now >= sat_add(lp->idle_since, c->srv->cfg.client_timeout_ms)) {
        if (!c->closing) /* not one that was ending anyway */
            bh_metric_add(BH_M_LIMIT_TIMEOUT, 1);
        if (!c->end_reason)
            c->end_reason = "client timeout";
        bh_sr_session_finish(c); /* abandoned: nobody polled for the client timeout */
        return 1;
    }
    return 0;
}

const bh_sr_transport_t bh_sr_lp_transport = {
    .name = "LongPolling",
    .binary = 1,
    .inherent_keepalive = 1,
    .send = lp_send,
    .end = lp_end,
    .detach = lp_detach,
    .due = lp_due,
    .tick = lp_tick,
    .congested = lp_congested,
    .watch = lp_watch,
};

/* ---- requests ---- */

void bh_sr_lp_poll(bh_sr_req_t *rq, bh_sr_conn_t *c) {
    if (c->state == BH_SR_PENDING) {
        if (bh_sr_admit(rq, c->key_id, 1) < 0)
            return;
        sr_lp_t *lp = calloc(1, sizeof *lp);
        if (!lp) {
            bh_sr_shared_release(rq->s->shared, c->key_id);
            bh_sr_reply_text(rq, 500, "out of memory");
            return;
        }
        lp->c = c;
        bh_buf_init(&lp->queue, 0);
        lp->idle_since = rq->now;
        bh_sr_session_attach(c, &bh_sr_lp_transport, lp, rq->loop, rq->now);
        /* The first poll only opens the transport: the client's start waits for it. */
        respond(lp, rq->hc, 200, rq->cors, 0);
        return;
    }
    if (c->tp != &bh_sr_lp_transport) {
        bh_sr_reply_text(rq, 400, "This connection uses another transport.");
        return;
    }
    sr_lp_t *lp = c->att;
    if (lp->poll) {
        answer_held(lp, 204); /* a newer poll replaces it */
        lp = c->att;
        if (!lp) {
            bh_sr_reply_text(rq, 404, "No Connection with that ID");
            return;
        }
    }
    if (lp->queue.len > 0 || c->closing) {
        int last = c->closing;
        respond(lp, rq->hc, lp->queue.len > 0 ? 200 : 204, rq->cors, 1);
        if (last && !c->finished)
            bh_sr_session_finish(c); /* it took the final messages */
        return;
    }
    bh_http_hold(rq->hc);
    bh_http_on_gone(rq->hc, on_poll_gone, lp);
    lp->poll = rq->hc;
    lp->poll_due = sat_add(rq->now, c->srv->cfg.lp_poll_timeout_ms);
    memcpy(lp->cors, rq->cors, sizeof lp->cors);
    bh_sr_session_rearm(c);
}

void bh_sr_lp_delete(bh_sr_req_t *rq, bh_sr_conn_t *c) {
    if (c->state != BH_SR_PENDING && c->tp != &bh_sr_lp_transport) {
        bh_sr_reply_text(rq, 400, "Cannot terminate this connection using the DELETE endpoint.");
        return;
    }
    bh_sr_reply(rq, 202, "text/plain", NULL, "", 0);
    bh_sr_session_finish(c); /* the held poll, if any, gets 204 */
}
