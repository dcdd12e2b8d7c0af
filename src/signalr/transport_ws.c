/* The WebSockets transport: the upgrade (a negotiated connection, skipNegotiation, or a
 * stateful-reconnect WebSocket taking its session back), one frame per hub message (text or
 * binary as the protocol needs), the close handshake, and input backpressure (the socket is
 * not read while too much of the client's input waits for its output to drain). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/error.h"
#include "../base/log.h"
#include "../base/metrics.h"
#include "../ws/ws.h"
#include "internal.h"

#define BH_SR_CLOSE_WAIT_MS 5000

/* One WebSocket connection; owned by its TCP connection (freed in on_close). */
typedef struct {
    bh_sr_conn_t *c; /* NULL once the session let go of it */
    bh_sr_server_t *srv;
    bh_conn_t *net;
    bh_ws_t *ws;
    int closing;
} sr_ws_t;

static void ws_flush(sr_ws_t *w) {
    bh_buf_t *out = &w->srv->wire;
    bh_buf_reset(out);
    if (bh_ws_flush(w->ws, out) == 0 && out->len > 0)
        bh_conn_write(w->net, out->data, out->len);
    if (bh_ws_finished(w->ws))
        bh_conn_close(w->net);
}

static void on_close_wait(void *arg) {
    sr_ws_t *w = arg;
    bh_conn_abort(w->net);
}

/* Close frame with code, then the TCP connection once the peer answers or a short wait
 * passes. */
static void close_ws(sr_ws_t *w, uint16_t code, const char *reason) {
    if (w->closing)
        return;
    w->closing = 1;
    bh_ws_close(w->ws, code, reason);
    ws_flush(w);
    bh_conn_set_timer(w->net, BH_SR_CLOSE_WAIT_MS, on_close_wait, w);
}

static void on_message(void *ud, int binary, const char *data, size_t len) {
    sr_ws_t *w = ud;
    bh_sr_conn_t *c = w->c;
    if (!c || w->closing || c->closing)
        return;
    if (binary && c->handshaken && !c->binary) {
        char detail[96];
        snprintf(detail, sizeof detail, "Binary messages are not valid for the '%s' protocol.",
                 c->proto->name);
        bh_sr_session_error(c, "InvalidDataException: ", detail);
        return;
    }
    bh_sr_session_feed(c, data, len);
}

static const bh_ws_callbacks_t ws_callbacks = {on_message};

static void on_data(void *ud, const char *data, size_t len) {
    sr_ws_t *w = ud;
    if (w->c)
        w->c->last_recv_ms = bh_sr_session_now(w->c); /* WebSocket pings count too */
    if (bh_ws_feed(w->ws, data, len) == BH_EPROTO && bh_ws_error_code(w->ws) == 1009)
        bh_metric_add(BH_M_LIMIT_REQUEST_SIZE, 1); /* a WebSocket message over --max-body */
    ws_flush(w);
    if (!w->closing && bh_ws_peer_close_code(w->ws) != 0)
        w->closing = 1; /* wslay answered the peer's close; nothing more goes out */
}

static void on_close(void *ud) {
    sr_ws_t *w = ud;
    bh_sr_conn_t *c = w->c;
    bh_ws_free(w->ws);
    free(w);
    if (c)
        bh_sr_session_lost(c);
}

static const bh_http_upgrade_ops_t ws_upgrade_ops = {on_data, on_close};

/* ---- the transport table ---- */

static int ws_send(bh_sr_conn_t *c, const char *data, size_t len) {
    sr_ws_t *w = c->att;
    if (w->closing)
        return BH_ECLOSED;
    int r = bh_ws_send(w->ws, c->binary, data, len);
    if (r == 0)
        ws_flush(w);
    return r;
}

static void ws_end(bh_sr_conn_t *c, uint16_t code, const char *reason) {
    close_ws(c->att, code, reason);
}

static int ws_congested(const bh_sr_conn_t *c) {
    const sr_ws_t *w = c->att;
    return bh_conn_queued(w->net) > BH_SR_OUT_HIGH;
}

static void on_drained(void *arg) {
    sr_ws_t *w = arg;
    if (w->c)
        bh_sr_session_drained(w->c);
}

static void ws_watch(bh_sr_conn_t *c) {
    sr_ws_t *w = c->att;
    bh_conn_on_drain(w->net, BH_SR_OUT_LOW, on_drained, w);
}

static uint64_t ws_taken(const bh_sr_conn_t *c) {
    const sr_ws_t *w = c->att;
    return bh_conn_taken(w->net);
}

static void ws_pause_input(bh_sr_conn_t *c, int pause) {
    sr_ws_t *w = c->att;
    if (pause)
        bh_conn_pause_read(w->net);
    else
        bh_conn_resume_read(w->net);
}

static void ws_detach(bh_sr_conn_t *c) {
    sr_ws_t *w = c->att;
    w->c = NULL;
    bh_conn_abort(w->net);
}

const bh_sr_transport_t bh_sr_ws_transport = {
    .name = "WebSockets",
    .binary = 1,
    .send = ws_send,
    .end = ws_end,
    .detach = ws_detach,
    .congested = ws_congested,
    .watch = ws_watch,
    .taken = ws_taken,
    .pause_input = ws_pause_input,
};

/* ---- the upgrade ---- */

/* Which session the upgrade is for: *c an existing one (or NULL for a new session, with id
 * and *stateful set), *resume when it takes a stateful session back. BH_OK, or the answer
 * was sent (or the request migrated to the thread that owns the session). */
static int find_session(bh_sr_req_t *rq, const char *key_id, bh_sr_conn_t **c, int *resume,
                        char id[BH_SR_CONN_ID_CHARS + 1], char token[BH_SR_TOKEN_CHARS + 1],
                        int *stateful) {
    char t[128];
    const bh_http_request_t *req = rq->req;
    int tl = req->query ? bh_http_query_param(req->query, req->query_len, "id", t, sizeof t)
                        : BH_ENOTFOUND;
    *c = NULL;
    *resume = *stateful = 0;
    token[0] = 0;
    if (tl == BH_ENOTFOUND) {
        bh_sr_random_id(id); /* skipNegotiation: a fresh connection */
        return BH_OK;
    }
    if (tl < 0) {
        bh_sr_reply_text(rq, 400, "bad id parameter");
        return BH_EINVAL;
    }
    bh_sr_conn_t *found = bh_sr_registry_find(rq->s, t, (size_t)tl, rq->now);
    if (found) {
        if (strcmp(found->key_id, key_id) != 0) {
            bh_sr_reply_text(rq, 403, "This connection belongs to another API key.");
            return BH_EINVAL;
        }
        if (found->state != BH_SR_PENDING) {
            if (!bh_sr_session_resumable(found)) {
                int ws = found->tp == &bh_sr_ws_transport;
                bh_sr_reply_text(rq, ws ? 409 : 400,
                                 ws ? "A WebSocket is already connected for this connection."
                                    : "This connection uses another transport.");
                return BH_EINVAL;
            }
            *resume = 1;
        }
        *c = found;
        return BH_OK;
    }
    if (bh_sr_route(rq, t, (size_t)tl))
        return BH_EAGAIN;
    /* Not known here (negotiated on another node): the signed token alone proves it. Not so
     * for stateful reconnect, whose session lives on one node: unknown here means gone, and a
     * resuming client must hear 404 rather than get a fresh session it cannot use. */
    if (bh_sr_token_check(rq->s, rq->now, t, (size_t)tl, key_id, id, stateful) < 0 || *stateful) {
        bh_sr_reply_text(rq, 404, "No Connection with that ID");
        return BH_ENOTFOUND;
    }
    memcpy(token, t, BH_SR_TOKEN_CHARS + 1);
    return BH_OK;
}

void bh_sr_ws_request(bh_sr_req_t *rq) {
    bh_sr_server_t *s = rq->s;
    const bh_http_request_t *req = rq->req;
    size_t vlen, klen;
    const char *ver = bh_http_header(req, "Sec-WebSocket-Version", &vlen);
    const char *key = bh_http_header(req, "Sec-WebSocket-Key", &klen);
    if (req->method != BH_HTTP_GET || !key || klen != 24) {
        bh_sr_reply_text(rq, 400, "bad WebSocket upgrade request");
        return;
    }
    if (!ver || vlen != 2 || memcmp(ver, "13", 2) != 0) {
        bh_sr_reply(rq, 426, "text/plain", "Sec-WebSocket-Version: 13\r\n", "Upgrade Required", 16);
        return;
    }
    char user_id[BH_SR_ID_MAX + 1], key_id[BH_SR_ID_MAX + 1];
    if (bh_sr_authenticate(rq, user_id, key_id) < 0)
        return;
    if (s->closing_all) {
        bh_sr_reply_text(rq, 503, "The server is shutting down.");
        return;
    }
    bh_sr_conn_t *c;
    int resume, stateful;
    char id[BH_SR_CONN_ID_CHARS + 1], token[BH_SR_TOKEN_CHARS + 1], accept[29];
    if (find_session(rq, key_id, &c, &resume, id, token, &stateful) < 0)
        return;
    if (!resume && bh_sr_admit(rq, key_id, 1) < 0) /* a session starts: within the limits? */
        return;
    int r = BH_ENOMEM;
    sr_ws_t *w = calloc(1, sizeof *w);
    if (!w || bh_ws_accept_key(key, klen, accept) < 0)
        goto fail;
    /* One WebSocket message may batch many hub messages (the clients' send queues do): the
     * session holds each hub message to max_message. */
    w->ws = bh_ws_server_new(&ws_callbacks, w, s->cfg.max_batch);
    if (!w->ws)
        goto fail;
    if (!c) {
        c = bh_sr_session_new(s, user_id, key_id, id, token, 0);
        if (!c)
            goto fail;
        c->stateful_ok = stateful && !s->cfg.no_stateful_reconnect;
        if (token[0] && (r = bh_sr_registry_add(s, c)) < 0) {
            bh_sr_session_free_pending(c); /* not yet counted: the slot is given back below */
            goto fail;
        }
    }
    w->c = c;
    w->srv = s;
    w->net = bh_http_conn_net(rq->hc);
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     accept);
    bh_http_upgrade(rq->hc, &ws_upgrade_ops, w);
    bh_conn_write(w->net, head, (size_t)n);
    /* Ties the network connection (conn=) to the hub connection in the logs. */
    bh_log(BH_LOG_DEBUG, "websocket opened", BH_LU("conn", bh_conn_id(w->net)),
           BH_LS("connection_id", c->id), BH_LS("user", c->user_id), BH_LI("resume", resume));
    if (resume) {
        sr_ws_t *old = c->att;
        if (old) { /* the client saw the drop before we did */
            old->c = NULL;
            bh_conn_abort(old->net);
        }
        bh_sr_session_reattach(c, w, rq->now);
    } else {
        bh_sr_session_attach(c, &bh_sr_ws_transport, w, rq->loop, rq->now);
    }
    return;
fail:
    if (!resume)
        bh_sr_shared_release(s->shared, key_id);
    if (w)
        bh_ws_free(w->ws);
    free(w);
    if (r == BH_EEXIST) /* another thread's WebSocket took the same token a moment ago */
        bh_sr_reply_text(rq, 409, "A WebSocket is already connected for this connection.");
    else
        bh_sr_reply_text(rq, 500, "out of memory");
}
