/* The Server-Sent Events transport (server to client; the client sends with HTTP POST): a
 * streaming text/event-stream response on a connection taken over from the HTTP layer, each
 * hub message one event of "data:" lines. Text only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/error.h"
#include "../base/log.h"
#include "internal.h"

/* The event stream; owned by its TCP connection (freed in on_close). */
typedef struct {
    bh_sr_conn_t *c; /* NULL once the session let go of it */
    bh_conn_t *net;
} sr_sse_t;

static void on_data(void *ud, const char *data, size_t len) {
    /* The client has nothing more to say on this request; it sends with POST. */
}

static void on_close(void *ud) {
    sr_sse_t *e = ud;
    bh_sr_conn_t *c = e->c;
    free(e);
    if (c)
        bh_sr_session_lost(c); /* the client closed its EventSource */
}

static const bh_http_upgrade_ops_t sse_ops = {on_data, on_close};

/* Append one event: every line of data (lines end at CRLF, LF or CR, as the SSE parser
 * splits them) as a "data:" field, then the blank line that dispatches the event. The
 * client's EventSource joins the lines with LF. */
static int write_event(bh_buf_t *b, const char *data, size_t len) {
    size_t i = 0;
    int r;
    for (;;) {
        size_t j = i;
        while (j < len && data[j] != '\r' && data[j] != '\n')
            j++;
        r = bh_buf_appends(b, "data: ");
        if (r == 0)
            r = bh_buf_append(b, data + i, j - i);
        if (r == 0)
            r = bh_buf_appends(b, "\r\n");
        if (r < 0 || j >= len)
            break;
        i = j + (data[j] == '\r' && j + 1 < len && data[j + 1] == '\n' ? 2 : 1);
    }
    return r ? r : bh_buf_appends(b, "\r\n");
}

static int sse_send(bh_sr_conn_t *c, const char *data, size_t len) {
    sr_sse_t *e = c->att;
    bh_buf_t *b = &c->srv->wire;
    bh_buf_reset(b);
    int r = write_event(b, data, len);
    return r ? r : bh_conn_write(e->net, b->data, b->len);
}

static void sse_end(bh_sr_conn_t *c, uint16_t code, const char *reason) {
    sr_sse_t *e = c->att;
    bh_conn_close(e->net); /* after what is queued; the session ends in on_close */
}

static void sse_detach(bh_sr_conn_t *c) {
    sr_sse_t *e = c->att;
    e->c = NULL;
    if (c->stalled)
        bh_conn_abort(e->net); /* its output would never drain */
    else
        bh_conn_close(e->net);
}

static int sse_congested(const bh_sr_conn_t *c) {
    const sr_sse_t *e = c->att;
    return bh_conn_queued(e->net) > BH_SR_OUT_HIGH;
}

static void on_drained(void *arg) {
    sr_sse_t *e = arg;
    if (e->c)
        bh_sr_session_drained(e->c);
}

static void sse_watch(bh_sr_conn_t *c) {
    sr_sse_t *e = c->att;
    bh_conn_on_drain(e->net, BH_SR_OUT_LOW, on_drained, e);
}

static uint64_t sse_taken(const bh_sr_conn_t *c) {
    const sr_sse_t *e = c->att;
    return bh_conn_taken(e->net);
}

const bh_sr_transport_t bh_sr_sse_transport = {
    .name = "ServerSentEvents",
    .send = sse_send,
    .end = sse_end,
    .detach = sse_detach,
    .congested = sse_congested,
    .watch = sse_watch,
    .taken = sse_taken,
};

void bh_sr_sse_request(bh_sr_req_t *rq, bh_sr_conn_t *c) {
    if (c->state != BH_SR_PENDING) {
        int sse = c->tp == &bh_sr_sse_transport;
        bh_sr_reply_text(rq, sse ? 409 : 400,
                         sse ? "An event stream is already open for this connection."
                             : "This connection uses another transport.");
        return;
    }
    if (bh_sr_admit(rq, c->key_id, 1) < 0)
        return;
    sr_sse_t *e = calloc(1, sizeof *e);
    if (!e) {
        bh_sr_shared_release(rq->s->shared, c->key_id);
        bh_sr_reply_text(rq, 500, "out of memory");
        return;
    }
    e->c = c;
    e->net = bh_http_conn_net(rq->hc);
    char extra[BH_SR_CORS_MAX + 64];
    snprintf(extra, sizeof extra, "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n%s",
             rq->cors);
    if (bh_http_respond_stream(rq->hc, 200, "text/event-stream", extra, &sse_ops, e) < 0) {
        bh_sr_shared_release(rq->s->shared, c->key_id);
        free(e);
        return;
    }
    /* A blank line first, as ASP.NET does: some EventSources open only on the first bytes. */
    bh_conn_write(e->net, "\r\n", 2);
    bh_log(BH_LOG_DEBUG, "event stream opened", BH_LU("conn", bh_conn_id(e->net)),
           BH_LS("connection_id", c->id), BH_LS("user", c->user_id));
    bh_sr_session_attach(c, &bh_sr_sse_transport, e, rq->loop, rq->now);
}
