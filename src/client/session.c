/* The client side of a SignalR hub connection, as a codec over WebSocket messages: the
 * handshake, the GetBalances invocations and their completions, executionEvents envelopes read
 * into typed balances, and the sequence rules (an update is delivered only as last + 1; a gap
 * or an unreadable update triggers one re-snapshot, and updates are dropped until it arrives).
 * Hub messages are framed and parsed by the server's own protocol table (src/signalr), which
 * turns MessagePack into the JSON protocol's object form, so one code path reads both. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <msgpack.h>

#include "../base/error.h"
#include "../signalr/protocol.h"
#include "internal.h"

#define MAX_PENDING 1024 /* invocations in flight */
#define MAX_HANDSHAKE 4096

typedef struct {
    uint64_t id;
    bh_resync_t why;
    int event_seen; /* its snapshot or error event arrived */
    char *client_id;
} pending_t;

struct bh_cl_session {
    const bh_sr_protocol_t *p;
    size_t max_msg;
    bh_cl_session_hooks_t h;
    void *ud;
    bh_buf_t in; /* received bytes not yet framed into messages */
    int handshake_done;
    uint64_t next_id;
    pending_t *pending;
    size_t npending;
    char *sub_client_id; /* clientId of the application's last successful snapshot */
    int synced;          /* last_seq holds the sequence of the last snapshot or update */
    uint64_t last_seq;
    int resync_pending; /* a re-snapshot is in flight: updates are dropped until it comes */
};

int bh_cl_session_new(const char *protocol, size_t max_msg, const bh_cl_session_hooks_t *hooks,
                      void *ud, bh_cl_session_t **out) {
    const bh_sr_protocol_t *p = bh_sr_protocol_find(protocol ? protocol : "json");
    bh_cl_session_t *s;

    *out = NULL;
    if (p == NULL)
        return BH_CLIENT_EINVAL;
    if (!(s = calloc(1, sizeof(*s))))
        return BH_CLIENT_ENOMEM;
    s->p = p;
    s->max_msg = max_msg;
    s->h = *hooks;
    s->ud = ud;
    s->next_id = 1;
    /* room for one whole message and its framing */
    bh_buf_init(&s->in, max_msg + 16);
    *out = s;
    return BH_CLIENT_OK;
}

static void drop_pending(bh_cl_session_t *s) {
    for (size_t i = 0; i < s->npending; i++)
        free(s->pending[i].client_id);
    free(s->pending);
    s->pending = NULL;
    s->npending = 0;
}

void bh_cl_session_free(bh_cl_session_t *s) {
    if (s == NULL)
        return;
    drop_pending(s);
    bh_buf_free(&s->in);
    free(s->sub_client_id);
    free(s);
}

int bh_cl_session_binary(const bh_cl_session_t *s) {
    return s->p->binary;
}

int bh_cl_session_ready(const bh_cl_session_t *s) {
    return s->handshake_done;
}

static void reset_connection_state(bh_cl_session_t *s) {
    bh_buf_reset(&s->in);
    s->handshake_done = 0;
    s->synced = 0;
    s->resync_pending = 0;
}

void bh_cl_session_end(bh_cl_session_t *s, int err) {
    pending_t *list = s->pending;
    size_t n = s->npending;

    /* detach first: a completion callback may already invoke again */
    s->pending = NULL;
    s->npending = 0;
    reset_connection_state(s);
    for (size_t i = 0; i < n; i++) {
        if (list[i].why == BH_RESYNC_NONE && s->h.on_completion)
            s->h.on_completion(s->ud, list[i].id, err,
                               "the connection ended before the invocation completed");
        free(list[i].client_id);
    }
    free(list);
}

int bh_cl_session_begin(bh_cl_session_t *s) {
    char hs[64];
    int n;

    drop_pending(s);
    reset_connection_state(s);
    /* version 1: no Ack/Sequence (stateful reconnect), which this client does not use */
    n = snprintf(hs, sizeof(hs), "{\"protocol\":\"%s\",\"version\":1}\x1e", s->p->name);
    return s->h.send(s->ud, 0, hs, (size_t)n);
}

/* ---- invocations ---- */

static int buf_write(void *data, const char *p, size_t n) {
    return bh_buf_append(data, p, n);
}

/* [1, {}, "ID", "GetBalances", [clientId]] after a VarInt length (HubProtocol.md). */
static int write_msgpack_invocation(bh_buf_t *b, const char *id, const char *client_id) {
    bh_buf_t body;
    msgpack_packer pk;
    unsigned char prefix[5];
    size_t n, k = 0;
    int r;

    bh_buf_init(&body, 0);
    msgpack_packer_init(&pk, &body, buf_write);
    r = msgpack_pack_array(&pk, 5);
    if (r == 0)
        r = msgpack_pack_int(&pk, BH_SR_INVOCATION);
    if (r == 0)
        r = msgpack_pack_map(&pk, 0);
    if (r == 0 && !(r = msgpack_pack_str(&pk, strlen(id))))
        r = msgpack_pack_str_body(&pk, id, strlen(id));
    if (r == 0 && !(r = msgpack_pack_str(&pk, 11)))
        r = msgpack_pack_str_body(&pk, "GetBalances", 11);
    if (r == 0)
        r = msgpack_pack_array(&pk, 1);
    if (r == 0 && !(r = msgpack_pack_str(&pk, strlen(client_id))))
        r = msgpack_pack_str_body(&pk, client_id, strlen(client_id));
    if (r == 0) {
        n = body.len;
        do {
            prefix[k] = n & 0x7f;
            n >>= 7;
            if (n)
                prefix[k] |= 0x80;
            k++;
        } while (n && k < sizeof(prefix));
        r = bh_buf_append(b, prefix, k);
    }
    if (r == 0)
        r = bh_buf_append(b, body.data, body.len);
    bh_buf_free(&body);
    return r == 0 ? BH_OK : BH_ENOMEM;
}

static int write_json_invocation(bh_buf_t *b, const char *id, const char *client_id) {
    int r = bh_buf_printf(b,
                          "{\"type\":1,\"invocationId\":\"%s\",\"target\":\"GetBalances\","
                          "\"arguments\":[",
                          id);
    if (r == BH_OK)
        r = bh_json_write_str(b, client_id, strlen(client_id));
    if (r == BH_OK)
        r = bh_buf_appends(b, "]}\x1e");
    return r;
}

int bh_cl_session_get_balances(bh_cl_session_t *s, const char *client_id, bh_resync_t why,
                               uint64_t *id_out) {
    char id[24];
    bh_buf_t msg;
    pending_t *grown;
    char *copy = NULL;
    int r;

    if (client_id == NULL || !bh_utf8_valid(client_id, strlen(client_id)))
        return BH_CLIENT_EINVAL;
    if (!s->handshake_done || s->npending >= MAX_PENDING)
        return BH_CLIENT_ESTATE;
    snprintf(id, sizeof(id), "%llu", (unsigned long long)s->next_id);
    bh_buf_init(&msg, 0);
    r = s->p->binary ? write_msgpack_invocation(&msg, id, client_id)
                     : write_json_invocation(&msg, id, client_id);
    if (r != BH_OK || !(copy = strdup(client_id)) ||
        !(grown = realloc(s->pending, (s->npending + 1) * sizeof(*grown)))) {
        r = BH_CLIENT_ENOMEM;
        goto fail;
    }
    s->pending = grown;
    r = s->h.send(s->ud, s->p->binary, msg.data, msg.len);
    if (r != BH_CLIENT_OK)
        goto fail;
    s->pending[s->npending++] = (pending_t){s->next_id, why, 0, copy};
    if (why != BH_RESYNC_NONE)
        s->resync_pending = 1;
    if (id_out)
        *id_out = s->next_id;
    s->next_id++;
    bh_buf_free(&msg);
    return BH_CLIENT_OK;
fail:
    free(copy);
    bh_buf_free(&msg);
    return r;
}

int bh_cl_session_resubscribe(bh_cl_session_t *s) {
    if (s->sub_client_id == NULL)
        return BH_CLIENT_OK;
    return bh_cl_session_get_balances(s, s->sub_client_id, BH_RESYNC_RECONNECT, NULL);
}

int bh_cl_session_ping(bh_cl_session_t *s) {
    bh_buf_t msg;
    int r;

    if (!s->handshake_done)
        return BH_CLIENT_OK;
    bh_buf_init(&msg, 0);
    r = s->p->write_ping(&msg) == BH_OK ? s->h.send(s->ud, s->p->binary, msg.data, msg.len)
                                        : BH_CLIENT_ENOMEM;
    bh_buf_free(&msg);
    return r;
}

/* ---- events ---- */

static void report(bh_cl_session_t *s, int err, const char *fmt, const char *a, const char *b) {
    char msg[512];

    if (s->h.on_error == NULL)
        return;
    snprintf(msg, sizeof(msg), fmt, a, b ? b : "");
    s->h.on_error(s->ud, err, msg);
}

/* The invocation a snapshot or error event answers: the oldest one without its event yet (the
 * server answers one connection's invocations in order). Returns its why, and marks it. */
static bh_resync_t claim_event(bh_cl_session_t *s, char **client_id) {
    *client_id = NULL;
    for (size_t i = 0; i < s->npending; i++) {
        if (!s->pending[i].event_seen) {
            s->pending[i].event_seen = 1;
            if (s->pending[i].why != BH_RESYNC_NONE)
                s->resync_pending = 0;
            *client_id = s->pending[i].client_id;
            return s->pending[i].why;
        }
    }
    return BH_RESYNC_NONE;
}

static void request_resync(bh_cl_session_t *s, const char *envelope_client_id) {
    const char *id = s->sub_client_id ? s->sub_client_id : envelope_client_id;
    int r;

    if (s->resync_pending || id == NULL)
        return;
    r = bh_cl_session_get_balances(s, id, BH_RESYNC_GAP, NULL);
    if (r != BH_CLIENT_OK)
        report(s, r, "cannot ask for a new snapshot after a sequence gap: %s%s",
               bh_client_strerror(r), NULL);
}

static void on_snapshot(bh_cl_session_t *s, const bh_json_t *data, const char *client_id) {
    bh_balances_t b;
    const char *err;
    char *asked_id;
    bh_resync_t why = claim_event(s, &asked_id);

    if (bh_cl_balances_read(data, &b, &err) != BH_OK) {
        report(s, BH_CLIENT_EPROTO, "unreadable snapshot skipped: %s%s", err, NULL);
        return;
    }
    if (why == BH_RESYNC_NONE && asked_id) {
        char *copy = strdup(asked_id);
        if (copy) {
            free(s->sub_client_id);
            s->sub_client_id = copy;
        }
    }
    s->synced = 1;
    s->last_seq = b.sequence;
    b.kind = BH_BALANCES_SNAPSHOT;
    b.resync = why;
    b.client_id = client_id;
    if (s->h.on_balances)
        s->h.on_balances(s->ud, &b);
    bh_cl_balances_clear(&b);
}

static void on_update(bh_cl_session_t *s, const bh_json_t *data, const char *client_id) {
    bh_balances_t b;
    const char *err;

    if (bh_cl_balances_read(data, &b, &err) != BH_OK) {
        /* its change is lost to us: the next snapshot brings it back */
        report(s, BH_CLIENT_EPROTO, "unreadable update skipped: %s%s", err, NULL);
        request_resync(s, client_id);
        return;
    }
    if (s->resync_pending || (s->synced && b.sequence <= s->last_seq)) {
        bh_cl_balances_clear(&b); /* the coming snapshot includes it, or we had it already */
        return;
    }
    if (!s->synced || b.sequence != s->last_seq + 1) {
        bh_cl_balances_clear(&b);
        request_resync(s, client_id);
        return;
    }
    s->last_seq = b.sequence;
    b.kind = BH_BALANCES_UPDATE;
    b.client_id = client_id;
    if (s->h.on_balances)
        s->h.on_balances(s->ud, &b);
    bh_cl_balances_clear(&b);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static void on_event(bh_cl_session_t *s, const bh_json_t *env) {
    const bh_json_t *subject, *type, *cid, *data, *message;
    const char *client_id = NULL;
    char *asked_id;

    if (env == NULL || env->type != BH_JSON_OBJECT) {
        report(s, BH_CLIENT_EPROTO, "an executionEvents argument is not an object%s%s", "", NULL);
        return;
    }
    subject = bh_json_get(env, "subject");
    type = bh_json_get(env, "type");
    cid = bh_json_get(env, "clientId");
    data = bh_json_get(env, "data");
    if (cid && cid->type == BH_JSON_STRING)
        client_id = cid->str;
    if (!subject || subject->type != BH_JSON_STRING)
        return; /* not one of the events we know */
    if (strcmp(subject->str, "account.balances.snapshot") == 0) {
        on_snapshot(s, data, client_id);
    } else if (strcmp(subject->str, "account.balances.update") == 0) {
        on_update(s, data, client_id);
    } else if (strcmp(subject->str, "preChecksError") == 0 || ends_with(subject->str, ".error") ||
               (type && type->type == BH_JSON_STRING && strcmp(type->str, "error") == 0)) {
        claim_event(s, &asked_id);
        message = bh_json_get(data, "message");
        report(s, BH_CLIENT_ESERVER, "%s: %s", subject->str,
               message && message->type == BH_JSON_STRING ? message->str : "(no message)");
    }
}

static void on_completion(bh_cl_session_t *s, const char *invocation_id, const bh_json_t *root) {
    const bh_json_t *error = bh_json_get(root, "error");
    const char *text = error && error->type == BH_JSON_STRING ? error->str : NULL;
    char *end = NULL;
    unsigned long long id = strtoull(invocation_id, &end, 10);
    pending_t pe;
    size_t i;

    if (end == invocation_id || *end != '\0')
        return; /* not one of ours */
    for (i = 0; i < s->npending && s->pending[i].id != id; i++)
        ;
    if (i == s->npending)
        return;
    pe = s->pending[i];
    memmove(&s->pending[i], &s->pending[i + 1], (s->npending - i - 1) * sizeof(pe));
    s->npending--;
    if (pe.why == BH_RESYNC_NONE) {
        if (s->h.on_completion)
            s->h.on_completion(s->ud, pe.id, text ? BH_CLIENT_EINVOKE : BH_CLIENT_OK, text);
    } else {
        if (!pe.event_seen)
            s->resync_pending = 0; /* completed without a snapshot: nothing more will come */
        if (text)
            report(s, BH_CLIENT_EINVOKE, "the automatic GetBalances failed: %s%s", text, NULL);
    }
    free(pe.client_id);
}

/* One hub message. 0, or the error that ends the connection. */
static int dispatch(bh_cl_session_t *s, const char *msg, size_t len, char *detail, size_t dsize,
                    int *allow_reconnect) {
    bh_json_doc_t *doc = NULL;
    bh_sr_msg_t m;
    const char *err = NULL;
    const bh_json_t *root, *v;
    int r = s->p->parse(msg, len, &doc, &m, &err);

    if (r != BH_OK) {
        snprintf(detail, dsize, "the server sent a malformed hub message: %s",
                 err ? err : bh_strerror(r));
        return r == BH_ENOMEM ? BH_CLIENT_ENOMEM : BH_CLIENT_EPROTO;
    }
    root = bh_json_root(doc);
    r = BH_CLIENT_OK;
    switch (m.type) {
    case BH_SR_INVOCATION:
        /* client handlers match target names case-insensitively, as @microsoft/signalr does */
        if (strcasecmp(m.target, "executionEvents") == 0)
            on_event(s, bh_json_at(m.arguments, 0));
        break;
    case BH_SR_COMPLETION:
        on_completion(s, m.invocation_id, root);
        break;
    case BH_SR_CLOSE:
        v = bh_json_get(root, "error");
        if (v && v->type == BH_JSON_STRING && v->len > 0)
            snprintf(detail, dsize, "the server closed the connection: %s", v->str);
        else
            snprintf(detail, dsize, "the server closed the connection");
        v = bh_json_get(root, "allowReconnect");
        *allow_reconnect = v && v->type == BH_JSON_TRUE;
        r = BH_CLIENT_ECLOSED;
        break;
    default:
        break; /* Ping (the bytes already count as a sign of life), and types we do not use */
    }
    bh_json_free(doc);
    return r;
}

static int handshake(bh_cl_session_t *s, size_t *used, char *detail, size_t dsize) {
    const char *rs = s->in.len > 0 ? memchr(s->in.data, 0x1e, s->in.len) : NULL;
    bh_json_doc_t *doc = NULL;
    const bh_json_t *root, *err;
    int r = BH_CLIENT_OK;

    *used = 0;
    if (rs == NULL) {
        if (s->in.len <= MAX_HANDSHAKE)
            return BH_CLIENT_OK;
        snprintf(detail, dsize, "the server's handshake response is too long");
        return BH_CLIENT_EPROTO;
    }
    *used = (size_t)(rs - s->in.data) + 1;
    if (bh_json_parse(s->in.data, *used - 1, 8, &doc) != BH_OK ||
        (root = bh_json_root(doc))->type != BH_JSON_OBJECT) {
        snprintf(detail, dsize, "the server's handshake response is not a JSON object");
        r = BH_CLIENT_EPROTO;
    } else if ((err = bh_json_get(root, "error")) != NULL && err->type == BH_JSON_STRING) {
        snprintf(detail, dsize, "the server refused the SignalR handshake: %s", err->str);
        r = BH_CLIENT_EHANDSHAKE;
    } else {
        s->handshake_done = 1;
    }
    bh_json_free(doc);
    return r;
}

int bh_cl_session_input(bh_cl_session_t *s, const char *data, size_t len, char *detail,
                        size_t detail_size, int *allow_reconnect) {
    size_t off = 0, used;
    int r = BH_CLIENT_OK;

    *allow_reconnect = 0;
    if (bh_buf_append(&s->in, data, len) != BH_OK) {
        snprintf(detail, detail_size, "the server sent a message larger than %zu bytes",
                 s->max_msg);
        return BH_CLIENT_EPROTO;
    }
    if (!s->handshake_done) {
        r = handshake(s, &used, detail, detail_size);
        off = used;
        if (r != BH_CLIENT_OK || !s->handshake_done)
            goto done;
    }
    while (off < s->in.len) {
        const char *msg;
        size_t mlen;
        int n = s->p->frame(s->in.data + off, s->in.len - off, s->max_msg, &msg, &mlen);
        if (n == 0)
            break;
        if (n < 0) {
            snprintf(detail, detail_size, "the server sent a %s",
                     n == BH_ETOOBIG ? "hub message over the size limit" : "badly framed message");
            r = BH_CLIENT_EPROTO;
            break;
        }
        off += (size_t)n;
        if ((r = dispatch(s, msg, mlen, detail, detail_size, allow_reconnect)) != BH_CLIENT_OK)
            break;
    }
done:
    bh_buf_consume(&s->in, off);
    return r;
}
