/* The transport-independent SignalR session: handshake and protocol choice, message framing
 * and dispatch, keep-alive and timeouts, Close, and stateful reconnect (sequence ids, the
 * bounded replay buffer, Ack and Sequence). Transports only move bytes (internal.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../base/error.h"
#include "../base/log.h"
#include "../base/metrics.h"
#include "internal.h"

/* Framing bytes a partial message may carry beyond max_message (VarInt prefix, 0x1E). */
#define BH_SR_FRAME_SLACK 16
/* Replay storage above this is released once everything is acknowledged. */
#define BH_SR_REPLAY_KEEP 65536

static void arm(bh_sr_conn_t *c, uint64_t now);
static void on_tick(uv_timer_t *t);
static void pump(bh_sr_conn_t *c);

static uint64_t sat_add(uint64_t a, uint64_t b) {
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static uint64_t min_u64(uint64_t a, uint64_t b) {
    return a < b ? a : b;
}

uint64_t bh_sr_session_now(const bh_sr_conn_t *c) {
    return c->loop ? uv_now(c->loop) : 0;
}

/* ---- lists: PENDING sessions in the server's FIFO, the rest in its live list ---- */

static void list_unlink(bh_sr_conn_t *c) {
    bh_sr_server_t *s = c->srv;
    if (!c->listed)
        return;
    if (c->state == BH_SR_PENDING) {
        if (c->prev)
            c->prev->next = c->next;
        else
            s->pending = c->next;
        if (c->next)
            c->next->prev = c->prev;
        else
            s->pending_tail = c->prev;
        s->npending--;
    } else {
        if (c->prev)
            c->prev->next = c->next;
        else
            s->conns = c->next;
        if (c->next)
            c->next->prev = c->prev;
        s->nconns--;
    }
    c->prev = c->next = NULL;
    c->listed = 0;
}

static void list_live(bh_sr_conn_t *c) {
    bh_sr_server_t *s = c->srv;
    c->prev = NULL;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    c->listed = 1;
}

static void list_pending(bh_sr_conn_t *c) {
    bh_sr_server_t *s = c->srv;
    c->next = NULL;
    c->prev = s->pending_tail;
    if (s->pending_tail)
        s->pending_tail->next = c;
    else
        s->pending = c;
    s->pending_tail = c;
    s->npending++;
    c->listed = 1;
}

/* ---- life cycle ---- */

/* The first reason a session ends for wins (static text, for the close log). */
static void set_reason(bh_sr_conn_t *c, const char *why) {
    if (!c->end_reason)
        c->end_reason = why;
}

static const char *proto_name(const bh_sr_conn_t *c) {
    return c->proto ? c->proto->name : "";
}

/* The hub connections gauge of c's transport and protocol. */
static bh_metric_t conn_gauge(const bh_sr_conn_t *c) {
    if (c->tp == &bh_sr_ws_transport)
        return c->binary ? BH_M_CONN_WS_MSGPACK : BH_M_CONN_WS_JSON;
    if (c->tp == &bh_sr_sse_transport)
        return BH_M_CONN_SSE_JSON;
    return c->binary ? BH_M_CONN_LP_MSGPACK : BH_M_CONN_LP_JSON;
}

static void log_end(const bh_sr_conn_t *c) {
    const char *why = c->end_reason ? c->end_reason : "transport closed";
    uint64_t ms = bh_sr_session_now(c) - c->opened_ms;
    if (!c->handshaken) {
        bh_log(BH_LOG_DEBUG, "hub connection ended before its handshake",
               BH_LS("connection_id", c->id), BH_LS("user", c->user_id), BH_LS("key_id", c->key_id),
               BH_LS("transport", c->tp->name), BH_LS("reason", why), BH_LU("duration_ms", ms));
        return;
    }
    bh_log(BH_LOG_INFO, "hub connection closed", BH_LS("connection_id", c->id),
           BH_LS("user", c->user_id), BH_LS("key_id", c->key_id), BH_LS("transport", c->tp->name),
           BH_LS("protocol", proto_name(c)), BH_LS("reason", why), BH_LU("duration_ms", ms));
}

bh_sr_conn_t *bh_sr_session_new(bh_sr_server_t *s, const char *user_id, const char *key_id,
                                const char *id, const char *token, uint64_t expires_ms) {
    bh_sr_conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->srv = s;
    c->state = BH_SR_PENDING;
    c->expires_ms = expires_ms;
    snprintf(c->user_id, sizeof c->user_id, "%s", user_id);
    snprintf(c->key_id, sizeof c->key_id, "%s", key_id);
    snprintf(c->id, sizeof c->id, "%s", id);
    snprintf(c->token, sizeof c->token, "%s", token);
    /* Unhandled input waits here while the client's output is backed up: up to BH_SR_IN_MAX,
     * then reading stops (or POSTs wait), which one more WebSocket message or POST body may
     * pass. An incomplete message alone is never over max_message (the framing says so). */
    bh_buf_init(&c->in,
                BH_SR_IN_MAX + 2 * (s->cfg.max_batch + s->cfg.max_message) + BH_SR_FRAME_SLACK);
    bh_buf_init(&c->replay, 0);
    if (expires_ms)
        list_pending(c);
    return c;
}

static void uncount(bh_sr_conn_t *c) {
    if (c->counted) {
        c->counted = 0;
        bh_sr_shared_release(c->srv->shared, c->key_id);
    }
}

void bh_sr_session_free_pending(bh_sr_conn_t *c) {
    bh_sr_registry_remove(c->srv, c);
    list_unlink(c);
    uncount(c);
    bh_buf_free(&c->in);
    bh_buf_free(&c->replay);
    free(c);
}

void bh_sr_session_attach(bh_sr_conn_t *c, const bh_sr_transport_t *tp, void *att, uv_loop_t *loop,
                          uint64_t now) {
    list_unlink(c);
    c->state = BH_SR_OPEN;
    list_live(c);
    /* Counted from its first transport on (negotiations alone hold no slot): the slot the
     * caller took with bh_sr_admit is the session's until it is freed. */
    c->counted = 1;
    c->tp = tp;
    c->att = att;
    c->loop = loop;
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    c->timer_on = 1;
    c->opened_ms = c->last_recv_ms = c->last_send_ms = now;
    if (tp != &bh_sr_ws_transport)
        c->stateful_ok = 0; /* the clients resume WebSockets only */
    arm(c, now);
}

static void answer_post(bh_sr_conn_t *c, int status);

static void on_timer_closed(uv_handle_t *h) {
    free(h->data);
}

void bh_sr_session_finish(bh_sr_conn_t *c) {
    if (c->finished)
        return;
    if (!c->timer_on) {
        bh_sr_session_free_pending(c);
        return;
    }
    bh_sr_server_t *s = c->srv;
    c->finished = 1;
    c->closing = 1;
    if (c->gauged) {
        c->gauged = 0;
        bh_metric_gauge(c->gauge, -1);
    }
    log_end(c);
    if (c->connected) {
        c->connected = 0;
        if (s->hooks.on_disconnected)
            s->hooks.on_disconnected(s->ud, c);
    }
    /* Out of the registry first: requests the detach below may run find no session. */
    bh_sr_registry_remove(s, c);
    list_unlink(c);
    uncount(c);
    if (c->att)
        c->tp->detach(c);
    c->att = NULL;
    answer_post(c, 404);
    bh_buf_free(&c->in);
    bh_buf_free(&c->replay);
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
}

void bh_sr_session_finish_later(bh_sr_conn_t *c) {
    if (c->finished || c->finish_due)
        return;
    c->closing = 1;
    c->finish_due = 1;
    if (c->timer_on)
        uv_timer_start(&c->timer, on_tick, 0, 0);
}

void bh_sr_session_lost(bh_sr_conn_t *c) {
    c->att = NULL;
    if (c->finished)
        return;
    if (c->state == BH_SR_OPEN && c->stateful && !c->closing && !c->replay_off &&
        !c->srv->closing_all) {
        /* Keep the session for the reconnect window; the hub still sees it connected and what
         * it sends waits in the replay buffer. */
        c->state = BH_SR_DETACHED;
        c->detached_ms = bh_sr_session_now(c);
        arm(c, c->detached_ms);
        return;
    }
    bh_sr_session_finish(c);
}

/* ---- sending ---- */

/* Hand framed bytes to the transport (kept only in the replay buffer while DETACHED). */
static int deliver(bh_sr_conn_t *c, const char *data, size_t len) {
    if (c->state != BH_SR_OPEN || !c->att)
        return BH_OK;
    int r = c->tp->send(c, data, len);
    if (r == 0)
        c->last_send_ms = bh_sr_session_now(c);
    return r;
}

static int replay_push(bh_sr_conn_t *c, const char *data, size_t len) {
    const bh_sr_config_t *cfg = &c->srv->cfg;
    size_t used = c->replay.len - c->replay_head;
    if (len > UINT32_MAX || c->replay_count + 1 > cfg->replay_max_messages ||
        used + 4 + len > cfg->replay_max_bytes)
        return BH_ETOOBIG;
    unsigned char hdr[4] = {(unsigned char)(len >> 24), (unsigned char)(len >> 16),
                            (unsigned char)(len >> 8), (unsigned char)len};
    int r = bh_buf_reserve(&c->replay, 4 + len);
    if (r < 0)
        return r;
    bh_buf_append(&c->replay, hdr, 4);
    bh_buf_append(&c->replay, data, len);
    if (c->replay_count++ == 0)
        c->replay_first = c->out_seq;
    return BH_OK;
}

static size_t replay_len_at(const bh_sr_conn_t *c, size_t off) {
    const unsigned char *p = (const unsigned char *)c->replay.data + off;
    return (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
}

/* The client has everything up to seq: drop it from the replay buffer. */
static void replay_ack(bh_sr_conn_t *c, uint64_t seq) {
    while (c->replay_count > 0 && c->replay_first <= seq) {
        c->replay_head += 4 + replay_len_at(c, c->replay_head);
        c->replay_count--;
        c->replay_first++;
    }
    if (c->replay_count == 0) {
        c->replay_head = 0;
        if (c->replay.cap > BH_SR_REPLAY_KEEP)
            bh_buf_free(&c->replay);
        else
            bh_buf_reset(&c->replay);
    } else if (c->replay_head > c->replay.len / 2) {
        bh_buf_consume(&c->replay, c->replay_head);
        c->replay_head = 0;
    }
}

/* Send the message in srv->msg. Trackable ones (invocations, completions) get the next
 * sequence id and a place in the replay buffer when the session is stateful. */
static int send_msg(bh_sr_conn_t *c, int trackable) {
    bh_buf_t *m = &c->srv->msg;
    if (trackable && c->stateful) {
        c->out_seq++;
        if (!c->replay_off && replay_push(c, m->data, m->len) < 0) {
            /* The client acknowledges too slowly: keep the connection, give up resuming it. */
            bh_log(BH_LOG_WARN, "stateful reconnect buffer over its limit: no resume",
                   BH_LS("connection_id", c->id), BH_LS("user", c->user_id));
            c->replay_off = 1;
            bh_buf_free(&c->replay);
            c->replay_head = c->replay_count = 0;
            if (c->state == BH_SR_DETACHED) {
                bh_sr_session_finish_later(c);
                return BH_ECLOSED;
            }
        }
    }
    return deliver(c, m->data, m->len);
}

/* Start ending the transport (no Close message). */
static void end_transport(bh_sr_conn_t *c, uint16_t code, const char *reason) {
    if (c->closing || c->finished)
        return;
    if (c->state != BH_SR_OPEN || !c->att) {
        bh_sr_session_finish_later(c); /* nothing to end: a DETACHED session */
        return;
    }
    c->closing = 1;
    c->tp->end(c, code, reason);
}

void bh_sr_close(bh_sr_conn_t *c, const char *error, int allow_reconnect) {
    if (c->closing || c->finished)
        return;
    set_reason(c, "closed by the server");
    if (c->handshaken && c->state == BH_SR_OPEN) {
        bh_buf_t *m = &c->srv->msg;
        bh_buf_reset(m);
        if (c->proto->write_close(m, error, allow_reconnect) == 0)
            deliver(c, m->data, m->len);
    }
    end_transport(c, 1000, "");
}

void bh_sr_session_error(bh_sr_conn_t *c, const char *what, const char *detail) {
    char text[512];
    set_reason(c, "protocol error");
    snprintf(text, sizeof text, "Connection closed with an error. %s%s", what,
             detail ? detail : "");
    bh_sr_close(c, text, 0);
}

int bh_sr_send_event(bh_sr_conn_t *c, const char *target, const char *arg_json, size_t len) {
    if (!c->handshaken || c->closing || c->finished)
        return BH_ECLOSED;
    bh_buf_t *m = &c->srv->msg;
    bh_buf_reset(m);
    int r = c->proto->write_invocation(m, target, arg_json, len);
    return r ? r : send_msg(c, 1);
}

int bh_sr_send_event_encoded(bh_sr_conn_t *c, const char *target, const char *json, size_t json_len,
                             const char *mp, size_t mp_len) {
    if (!c->handshaken || c->closing || c->finished)
        return BH_ECLOSED;
    if (c->binary && !mp) /* no MessagePack form given: transcode the JSON one */
        return json ? bh_sr_send_event(c, target, json, json_len) : BH_EINVAL;
    if (!c->binary && !json)
        return BH_EINVAL;
    bh_buf_t *m = &c->srv->msg;
    bh_buf_reset(m);
    int r = c->binary ? c->proto->write_invocation_encoded(m, target, mp, mp_len)
                      : c->proto->write_invocation_encoded(m, target, json, json_len);
    return r ? r : send_msg(c, 1);
}

static void send_completion(bh_sr_conn_t *c, const char *invocation_id, const char *error) {
    bh_buf_t *m = &c->srv->msg;
    bh_buf_reset(m);
    if (c->proto->write_completion(m, invocation_id, error) == 0)
        send_msg(c, 1);
}

/* Acknowledge what arrived (stateful sessions), once per batch of input. */
static void send_ack(bh_sr_conn_t *c) {
    if (!c->ack_due || c->closing || c->finished || c->state != BH_SR_OPEN)
        return;
    c->ack_due = 0;
    bh_buf_t *m = &c->srv->msg;
    bh_buf_reset(m);
    if (c->proto->write_ack(m, c->in_latest) == 0)
        deliver(c, m->data, m->len);
}

int bh_sr_session_resumable(const bh_sr_conn_t *c) {
    return c->tp == &bh_sr_ws_transport && c->stateful && !c->closing && !c->finished &&
           !c->replay_off;
}

void bh_sr_session_reattach(bh_sr_conn_t *c, void *att, uint64_t now) {
    c->att = att;
    c->input_paused = 0; /* a new socket, read from the start */
    if (c->blocked) {    /* the old socket's output is gone with it */
        c->blocked = 0;
        c->resume_due = 1;
    }
    c->state = BH_SR_OPEN;
    c->last_recv_ms = c->last_send_ms = now;
    /* Sequence first (the client drops everything until it sees one), then every message it
     * has not acknowledged, in order; it ignores those it already has. */
    bh_buf_t *m = &c->srv->msg;
    bh_buf_reset(m);
    uint64_t first = c->replay_count ? c->replay_first : c->out_seq + 1;
    if (c->proto->write_sequence(m, first) == 0)
        deliver(c, m->data, m->len);
    for (size_t off = c->replay_head, i = 0; i < c->replay_count; i++) {
        size_t len = replay_len_at(c, off);
        deliver(c, c->replay.data + off + 4, len);
        off += 4 + len;
    }
    arm(c, now);
}

/* ---- timers ---- */

static void arm(bh_sr_conn_t *c, uint64_t now) {
    if (!c->timer_on || c->finished)
        return;
    const bh_sr_config_t *cfg = &c->srv->cfg;
    uint64_t due = UINT64_MAX;
    if (c->finish_due || c->resume_due) {
        due = now;
    } else {
        if (c->tp->due)
            due = c->tp->due(c);
        if (c->state == BH_SR_DETACHED) {
            due = min_u64(due, sat_add(c->detached_ms, cfg->reconnect_window_ms));
        } else if (!c->closing && !c->handshaken) {
            due = min_u64(due, sat_add(c->opened_ms, cfg->handshake_timeout_ms));
        } else if (!c->closing && !c->tp->inherent_keepalive) {
            if (!c->blocked) /* blocked: its input waits for us, not the other way round */
                due = min_u64(due, sat_add(c->last_recv_ms, cfg->client_timeout_ms));
            due = min_u64(due, sat_add(c->last_send_ms, cfg->keepalive_ms));
        }
        if (c->blocked && !c->closing && c->tp->taken && c->att) /* not while DETACHED */
            due = min_u64(due, sat_add(c->stall_ms, BH_SR_STALL_MS));
    }
    if (due == UINT64_MAX)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, on_tick, due > now ? due - now : 0, 0);
}

void bh_sr_session_rearm(bh_sr_conn_t *c) {
    arm(c, bh_sr_session_now(c));
}

static void on_tick(uv_timer_t *t) {
    bh_sr_conn_t *c = t->data;
    const bh_sr_config_t *cfg = &c->srv->cfg;
    uint64_t now = uv_now(c->loop);
    if (c->finished)
        return;
    if (c->finish_due) {
        bh_sr_session_finish(c);
        return;
    }
    if (c->resume_due) {
        c->resume_due = 0;
        pump(c);
        if (c->finished)
            return;
    }
    if (c->blocked && !c->closing && c->tp->taken && c->att) {
        uint64_t taken = c->tp->taken(c);
        if (taken >= c->stall_taken + BH_SR_STALL_MIN) { /* it reads, if slowly */
            c->stall_taken = taken;
            c->stall_ms = now;
        } else if (now >= sat_add(c->stall_ms, BH_SR_STALL_MS)) {
            bh_log(BH_LOG_WARN, "closing slow consumer: output stalled while input waited",
                   BH_LS("connection_id", c->id), BH_LS("user", c->user_id),
                   BH_LI("min_bytes", BH_SR_STALL_MIN), BH_LI("window_ms", BH_SR_STALL_MS));
            c->stalled = 1;
            bh_metric_add(BH_M_LIMIT_OUTPUT, 1);
            set_reason(c, "slow consumer");
            bh_sr_session_finish(c);
            return;
        }
    }
    if (c->tp->tick && c->tp->tick(c, now))
        return;
    if (c->finished)
        return;
    if (c->state == BH_SR_DETACHED) {
        if (now >= sat_add(c->detached_ms, cfg->reconnect_window_ms)) {
            bh_sr_session_finish(c);
            return;
        }
    } else if (!c->closing && !c->handshaken) {
        if (now >= sat_add(c->opened_ms, cfg->handshake_timeout_ms)) {
            bh_metric_add(BH_M_LIMIT_TIMEOUT, 1);
            set_reason(c, "handshake timeout");
            end_transport(c, 1008, "handshake timeout");
        }
    } else if (!c->closing && !c->tp->inherent_keepalive) {
        if (!c->blocked && now >= sat_add(c->last_recv_ms, cfg->client_timeout_ms)) {
            bh_metric_add(BH_M_LIMIT_TIMEOUT, 1);
            set_reason(c, "client timeout");
            bh_sr_close(c, "Server timeout elapsed without receiving a message from the client.",
                        0);
        } else if (now >= sat_add(c->last_send_ms, cfg->keepalive_ms)) {
            bh_buf_t *m = &c->srv->msg;
            bh_buf_reset(m);
            if (c->proto->write_ping(m) == 0)
                send_msg(c, 0);
        }
    }
    arm(c, now);
}

/* ---- inbound ---- */

static const bh_sr_method_t *find_method(const bh_sr_server_t *s, const char *name) {
    for (size_t i = 0; i < s->nmethods; i++)
        if (strcasecmp(s->methods[i].name, name) == 0) /* hub methods match case-insensitively */
            return &s->methods[i];
    return NULL;
}

static void handle_handshake(bh_sr_conn_t *c, const char *rec, size_t len) {
    bh_json_doc_t *doc = NULL;
    const char *name = NULL, *err = NULL;
    const bh_sr_protocol_t *p = NULL;
    int64_t version = 0;
    char text[200];
    if (bh_sr_parse_handshake(rec, len, &doc, &name, &version, &err) == 0) {
        p = bh_sr_protocol_find(name);
        if (!p) {
            snprintf(text, sizeof text, "The protocol '%.64s' is not supported.", name);
            err = text;
        } else if (p->binary && !c->tp->binary) {
            snprintf(text, sizeof text,
                     "Cannot use the '%s' protocol on the current transport. The transport "
                     "does not support 'Binary' transfer format.",
                     p->name);
            err = text;
        } else if (version < 0 || version > p->version) {
            snprintf(text, sizeof text,
                     "The server does not support version %lld of the '%s' protocol.",
                     (long long)version, p->name);
            err = text;
        }
    }
    if (!err) {
        /* Set before the answer: a binary protocol gets its handshake answer in binary. */
        c->proto = p;
        c->binary = p->binary != 0;
    }
    bh_buf_t *m = &c->srv->msg;
    bh_buf_reset(m);
    bh_sr_write_handshake_response(m, err);
    deliver(c, m->data, m->len);
    bh_json_free(doc);
    if (err) {
        set_reason(c, "handshake refused");
        end_transport(c, 1000, "");
        return;
    }
    c->handshaken = 1;
    /* Clients ask for stateful reconnect with hub protocol version 2. */
    c->stateful = c->stateful_ok && version >= 2;
    c->in_next = 1;
    c->gauge = conn_gauge(c);
    c->gauged = 1;
    bh_metric_gauge(c->gauge, 1);
    bh_log(BH_LOG_INFO, "hub connection opened", BH_LS("connection_id", c->id),
           BH_LS("user", c->user_id), BH_LS("key_id", c->key_id), BH_LS("transport", c->tp->name),
           BH_LS("protocol", p->name), BH_LI("stateful", c->stateful));
    c->connected = 1;
    if (c->srv->hooks.on_connected)
        c->srv->hooks.on_connected(c->srv->ud, c);
    if (!c->closing)
        arm(c, bh_sr_session_now(c));
}

static void handle_invocation(bh_sr_conn_t *c, const bh_sr_msg_t *msg) {
    char text[160];
    const bh_sr_method_t *m = find_method(c->srv, msg->target);
    const char *error = NULL;
    if (!m) {
        snprintf(text, sizeof text, "Unknown hub method '%.100s'", msg->target);
        error = text;
    } else if (msg->type == BH_SR_STREAM_INVOCATION) {
        snprintf(text, sizeof text,
                 "The client attempted to invoke the non-streaming '%.64s' method with a "
                 "streaming invocation.",
                 m->name);
        error = text;
    } else if (msg->has_stream_ids) {
        snprintf(text, sizeof text, "Method '%.64s' does not accept stream arguments.", m->name);
        error = text;
    } else if (m->fn(c->srv->ud, c, msg->arguments, &error) == 0) {
        error = NULL;
    } else if (!error) {
        error = "An unexpected error occurred invoking the method.";
    }
    bh_metric_add(!m ? BH_M_INVOKE_UNKNOWN : error ? m->error_metric : m->ok_metric, 1);
    if (msg->invocation_id && !c->closing)
        send_completion(c, msg->invocation_id, error);
}

static void handle_message(bh_sr_conn_t *c, const char *data, size_t len) {
    bh_json_doc_t *doc = NULL;
    bh_sr_msg_t msg;
    const char *err = NULL;
    if (c->proto->parse(data, len, &doc, &msg, &err) < 0) {
        bh_json_free(doc);
        bh_sr_session_error(c, "InvalidDataException: ", err ? err : "Invalid message.");
        return;
    }
    if (c->stateful && msg.type >= BH_SR_INVOCATION && msg.type <= BH_SR_CANCEL_INVOCATION) {
        uint64_t id = c->in_next++;
        if (id <= c->in_latest)
            goto done; /* replayed after a reconnect, and already processed */
        c->in_latest = id;
        c->ack_due = 1;
    }
    switch (msg.type) {
    case BH_SR_INVOCATION:
    case BH_SR_STREAM_INVOCATION:
        handle_invocation(c, &msg);
        break;
    case BH_SR_CLOSE:
        set_reason(c, "closed by the client");
        end_transport(c, 1000, "");
        break;
    case BH_SR_ACK:
        if (c->stateful)
            replay_ack(c, msg.sequence_id);
        break;
    case BH_SR_SEQUENCE:
        if (!c->stateful)
            break;
        if (msg.sequence_id > c->in_next)
            bh_sr_session_error(c, "InvalidDataException: ",
                                "Sequence ID greater than amount of messages we've received.");
        else
            c->in_next = msg.sequence_id;
        break;
    default:
        break; /* Ping refreshes last_recv; the rest needs no answer */
    }
done:
    bh_json_free(doc);
}

static void too_big(bh_sr_conn_t *c) {
    char detail[96];
    bh_metric_add(BH_M_LIMIT_REQUEST_SIZE, 1);
    set_reason(c, "message too big");
    snprintf(detail, sizeof detail, "The maximum message size of %zuB was exceeded.",
             c->srv->cfg.max_message);
    bh_sr_session_error(c, "InvalidDataException: ", detail);
}

/* Handle every complete message in data; returns the bytes consumed. */
static size_t handle_all(bh_sr_conn_t *c, const char *data, size_t len) {
    size_t off = 0, max = c->srv->cfg.max_message;
    while (off < len && !c->closing) {
        const char *p = data + off;
        size_t left = len - off;
        if (!c->handshaken) { /* the handshake is JSON whatever the protocol */
            const char *rs = memchr(p, BH_SR_RS, left);
            size_t n = rs ? (size_t)(rs - p) : left;
            if (n > max) {
                too_big(c);
                return len;
            }
            if (!rs)
                break;
            handle_handshake(c, p, n);
            off += n + 1;
            continue;
        }
        if (c->att && c->tp->congested && c->tp->congested(c)) {
            /* The client's output backed up: the rest waits until it has taken most of it. */
            uint64_t now = bh_sr_session_now(c);
            uint64_t taken = c->tp->taken ? c->tp->taken(c) : 0;
            c->blocked = 1;
            if (taken >= c->stall_taken + BH_SR_STALL_MIN || c->stall_ms == 0 ||
                now >= sat_add(c->stall_ms, BH_SR_STALL_MS)) {
                /* The stall clock runs from the last output the client took, across blocks
                 * that follow each other (a kernel buffer that grows is not the client). */
                c->stall_taken = taken;
                c->stall_ms = now;
            }
            c->tp->watch(c);
            arm(c, now);
            break;
        }
        const char *msg;
        size_t mlen;
        int r = c->proto->frame(p, left, max, &msg, &mlen);
        if (r == 0)
            break;
        if (r == BH_ETOOBIG) {
            too_big(c);
            return len;
        }
        if (r < 0) {
            bh_sr_session_error(c, "InvalidDataException: ", "Invalid message framing.");
            return len;
        }
        handle_message(c, msg, mlen);
        off += (size_t)r;
    }
    return off;
}

int bh_sr_session_input_full(const bh_sr_conn_t *c) {
    return !c->closing && !c->finished && c->in.len > BH_SR_IN_MAX;
}

/* Stop reading the client while too much of its input waits; read again once under. */
static void throttle_input(bh_sr_conn_t *c) {
    if (!c->att || !c->tp->pause_input || c->finished)
        return;
    int full = bh_sr_session_input_full(c);
    if (full != (int)c->input_paused) {
        c->input_paused = full != 0;
        c->tp->pause_input(c, full);
    }
}

void bh_sr_session_feed(bh_sr_conn_t *c, const char *data, size_t len) {
    if (c->closing || c->finished)
        return;
    c->last_recv_ms = bh_sr_session_now(c);
    if (c->in.len == 0 && !c->blocked) {
        size_t used = handle_all(c, data, len);
        if (used < len && !c->closing && bh_buf_append(&c->in, data + used, len - used) < 0)
            too_big(c);
    } else if (bh_buf_append(&c->in, data, len) < 0) {
        too_big(c);
    } else if (!c->blocked) {
        bh_buf_consume(&c->in, handle_all(c, c->in.data, c->in.len));
    }
    send_ack(c);
    throttle_input(c);
}

static void answer_post(bh_sr_conn_t *c, int status) {
    bh_http_conn_t *hc = c->held_post;
    if (!hc)
        return;
    c->held_post = NULL;
    bh_http_on_gone(hc, NULL, NULL);
    char hdr[BH_SR_CORS_MAX];
    memcpy(hdr, c->post_cors, sizeof hdr);
    /* Answering may run requests pipelined behind it (even one that ends this session). */
    if (status == 200)
        bh_http_respond(hc, 200, "text/plain", hdr[0] ? hdr : NULL, "", 0);
    else
        bh_http_respond(hc, status, "text/plain; charset=utf-8", hdr[0] ? hdr : NULL,
                        "No Connection with that ID", 26);
    bh_http_release(hc);
}

static void on_post_gone(void *ud) {
    bh_sr_conn_t *c = ud;
    bh_http_conn_t *hc = c->held_post;
    c->held_post = NULL;
    if (hc)
        bh_http_release(hc);
}

void bh_sr_session_hold_post(bh_sr_conn_t *c, bh_http_conn_t *hc, const char *cors) {
    if (c->held_post) {
        /* A second POST while one waits (the clients send one at a time): its body is taken;
         * the cap on waiting input (too_big) bounds such a client. */
        bh_http_respond(hc, 200, "text/plain", cors[0] ? cors : NULL, "", 0);
        return;
    }
    bh_http_hold(hc);
    bh_http_on_gone(hc, on_post_gone, c);
    c->held_post = hc;
    snprintf(c->post_cors, sizeof c->post_cors, "%s", cors);
}

/* Handle waiting input (after the output drained), then let the client send more. */
static void pump(bh_sr_conn_t *c) {
    if (c->closing || c->blocked || c->in.len == 0)
        goto done;
    c->last_recv_ms = bh_sr_session_now(c); /* its input waited for us */
    bh_buf_consume(&c->in, handle_all(c, c->in.data, c->in.len));
    send_ack(c);
done:
    throttle_input(c);
    if (c->held_post && !bh_sr_session_input_full(c))
        answer_post(c, 200);
}

void bh_sr_session_drained(bh_sr_conn_t *c) {
    if (c->finished || !c->blocked)
        return;
    c->blocked = 0;
    c->resume_due = 1;
    if (c->timer_on)
        uv_timer_start(&c->timer, on_tick, 0, 0);
}

/* ---- the hub's view ---- */

const char *bh_sr_conn_user(const bh_sr_conn_t *c) {
    return c->user_id;
}

const char *bh_sr_conn_key_id(const bh_sr_conn_t *c) {
    return c->key_id;
}

const char *bh_sr_conn_id(const bh_sr_conn_t *c) {
    return c->id;
}

void bh_sr_conn_set_data(bh_sr_conn_t *c, void *ud) {
    c->app = ud;
}

void *bh_sr_conn_data(const bh_sr_conn_t *c) {
    return c->app;
}

int bh_sr_conn_binary(const bh_sr_conn_t *c) {
    return c->binary;
}
