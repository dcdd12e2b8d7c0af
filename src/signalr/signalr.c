/* SignalR server: negotiate, stateless connection tokens, the WebSockets transport and the
 * per-connection session (handshake, dispatch, keep-alive, timeouts, close). */
#include "signalr.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../base/error.h"
#include "../base/log.h"
#include "../ws/ws.h"
#include "protocol.h"

#define BH_SR_KEY_MAX 512
#define BH_SR_TOKEN_TTL_MS 120000
#define BH_SR_CLOSE_WAIT_MS 5000
/* A connection token: 16 random id bytes, 8 bytes of expiry (ms, big-endian), 16 bytes of
 * HMAC-SHA256 over both and the API key id. Any node with the secret can check it. */
#define BH_SR_TOKEN_RAW 40
#define BH_SR_TOKEN_CHARS 54

struct bh_sr_server {
    bh_sr_config_t cfg;
    char hub_path[256];
    char negotiate_path[270];
    const bh_sr_method_t *methods;
    size_t nmethods;
    bh_sr_hooks_t hooks;
    void *ud;
    uint8_t secret[32];
    bh_sr_conn_t *conns;
    size_t nconns;
    bh_buf_t msg;  /* encoding scratch: one hub message */
    bh_buf_t wire; /* encoding scratch: WebSocket frames */
};

struct bh_sr_conn {
    bh_sr_server_t *srv;
    bh_sr_conn_t *prev, *next;
    bh_conn_t *net;
    bh_ws_t *ws;
    void *app;
    bh_buf_t in; /* an incomplete record carried between reads */
    uint64_t opened_ms, last_recv_ms, last_send_ms;
    int handshaken, closing, connected;
    char user_id[BH_SR_ID_MAX + 1];
    char key_id[BH_SR_ID_MAX + 1];
    char id[32];
};

/* ---- small helpers ---- */

static uint64_t now_ms(const bh_sr_conn_t *c) {
    return uv_now(bh_conn_loop(c->net));
}

static void b64url(const uint8_t *in, size_t n, char *out) {
    unsigned char tmp[128];
    int len = EVP_EncodeBlock(tmp, in, (int)n);
    int j = 0;
    for (int i = 0; i < len; i++) {
        char ch = (char)tmp[i];
        if (ch == '=')
            break;
        out[j++] = ch == '+' ? '-' : ch == '/' ? '_' : ch;
    }
    out[j] = 0;
}

static int b64url_decode(const char *in, size_t n, uint8_t *out, size_t want) {
    unsigned char tmp[128], dec[128];
    if (n == 0 || n + 3 >= sizeof tmp)
        return BH_EINVAL;
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = in[i];
        if (ch == '-')
            ch = '+';
        else if (ch == '_')
            ch = '/';
        else if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                   (ch >= '0' && ch <= '9')))
            return BH_EINVAL;
        tmp[j++] = (unsigned char)ch;
    }
    while (j % 4)
        tmp[j++] = '=';
    int len = EVP_DecodeBlock(dec, tmp, (int)j);
    if (len < (int)want)
        return BH_EINVAL;
    memcpy(out, dec, want);
    return BH_OK;
}

static void token_mac(const bh_sr_server_t *s, const uint8_t *raw, const char *key_id,
                      uint8_t mac[32]) {
    uint8_t msg[24 + BH_SR_ID_MAX];
    size_t kl = strlen(key_id);
    memcpy(msg, raw, 24);
    memcpy(msg + 24, key_id, kl);
    unsigned int ml = 32;
    HMAC(EVP_sha256(), s->secret, sizeof s->secret, msg, 24 + kl, mac, &ml);
}

static void token_new(const bh_sr_server_t *s, uint64_t now, const char *key_id,
                      char token[BH_SR_TOKEN_CHARS + 1], char id[32]) {
    uint8_t raw[BH_SR_TOKEN_RAW], mac[32];
    RAND_bytes(raw, 16);
    uint64_t exp = now + BH_SR_TOKEN_TTL_MS;
    for (int i = 0; i < 8; i++)
        raw[16 + i] = (uint8_t)(exp >> (56 - 8 * i));
    token_mac(s, raw, key_id, mac);
    memcpy(raw + 24, mac, 16);
    b64url(raw, BH_SR_TOKEN_RAW, token);
    b64url(raw, 16, id);
}

/* BH_OK when token is ours, unexpired and issued to key_id; id gets the connection id. */
static int token_check(const bh_sr_server_t *s, uint64_t now, const char *token, size_t n,
                       const char *key_id, char id[32]) {
    uint8_t raw[BH_SR_TOKEN_RAW], mac[32];
    if (n != BH_SR_TOKEN_CHARS || b64url_decode(token, n, raw, sizeof raw) < 0)
        return BH_ENOTFOUND;
    token_mac(s, raw, key_id, mac);
    if (CRYPTO_memcmp(mac, raw + 24, 16) != 0)
        return BH_ENOTFOUND;
    uint64_t exp = 0;
    for (int i = 0; i < 8; i++)
        exp = exp << 8 | raw[16 + i];
    if (now > exp)
        return BH_ENOTFOUND;
    b64url(raw, 16, id);
    return BH_OK;
}

/* The API key from "Authorization: Bearer KEY" or the access_token query parameter. */
static int request_key(const bh_http_request_t *req, char *key, size_t cap) {
    size_t n;
    const char *auth = bh_http_header(req, "Authorization", &n);
    if (auth && n > 7 && strncasecmp(auth, "Bearer ", 7) == 0) {
        auth += 7;
        n -= 7;
        while (n > 0 && *auth == ' ')
            auth++, n--;
        if (n == 0 || n >= cap)
            return BH_EINVAL;
        memcpy(key, auth, n);
        key[n] = 0;
        return (int)n;
    }
    return req->query ? bh_http_query_param(req->query, req->query_len, "access_token", key, cap)
                      : BH_ENOTFOUND;
}

static int authenticate(bh_sr_server_t *s, bh_http_conn_t *hc, const bh_http_request_t *req,
                        char user_id[BH_SR_ID_MAX + 1], char key_id[BH_SR_ID_MAX + 1]) {
    char key[BH_SR_KEY_MAX];
    int n = request_key(req, key, sizeof key);
    int r = n > 0 ? s->hooks.authenticate(s->ud, key, (size_t)n, user_id, key_id) : BH_ENOTFOUND;
    OPENSSL_cleanse(key, sizeof key);
    if (r < 0) {
        bh_http_respond(hc, 401, "text/plain", "WWW-Authenticate: Bearer\r\n",
                        n > 0 ? "Unauthorized: the API key was not accepted"
                              : "Unauthorized: no API key (use Authorization: Bearer or "
                                "access_token)",
                        n > 0 ? 42 : 69);
        return r;
    }
    return BH_OK;
}

/* ---- sending ---- */

static void ws_flush(bh_sr_conn_t *c) {
    bh_buf_t *w = &c->srv->wire;
    bh_buf_reset(w);
    if (bh_ws_flush(c->ws, w) == 0 && w->len > 0)
        bh_conn_write(c->net, w->data, w->len);
    if (bh_ws_finished(c->ws))
        bh_conn_close(c->net);
}

static int send_record(bh_sr_conn_t *c, const bh_buf_t *m) {
    int r = bh_ws_send(c->ws, 0, m->data, m->len);
    if (r == 0) {
        c->last_send_ms = now_ms(c);
        ws_flush(c);
    }
    return r;
}

static void on_close_wait(void *arg) {
    bh_sr_conn_t *c = arg;
    bh_conn_abort(c->net);
}

/* Close the WebSocket (Close frame with code), then the TCP connection once the peer answers
 * or a short wait passes. */
static void close_ws(bh_sr_conn_t *c, uint16_t code, const char *reason) {
    if (c->closing)
        return;
    c->closing = 1;
    bh_ws_close(c->ws, code, reason);
    ws_flush(c);
    bh_conn_set_timer(c->net, BH_SR_CLOSE_WAIT_MS, on_close_wait, c);
}

void bh_sr_close(bh_sr_conn_t *c, const char *error, int allow_reconnect) {
    if (c->closing)
        return;
    if (c->handshaken) {
        bh_buf_t *m = &c->srv->msg;
        bh_buf_reset(m);
        if (bh_sr_write_close(m, error, allow_reconnect) == 0)
            send_record(c, m);
    }
    close_ws(c, 1000, "");
}

static void close_with_error(bh_sr_conn_t *c, const char *what, const char *detail) {
    char text[512];
    snprintf(text, sizeof text, "Connection closed with an error. %s%s", what,
             detail ? detail : "");
    bh_sr_close(c, text, 0);
}

int bh_sr_send_event(bh_sr_conn_t *c, const char *target, const char *arg_json, size_t len) {
    if (!c->handshaken || c->closing)
        return BH_ECLOSED;
    bh_buf_t *m = &c->srv->msg;
    bh_buf_reset(m);
    int r = bh_sr_write_invocation(m, target, arg_json, len);
    return r ? r : send_record(c, m);
}

static void send_completion(bh_sr_conn_t *c, const char *invocation_id, const char *error) {
    bh_buf_t *m = &c->srv->msg;
    bh_buf_reset(m);
    if (bh_sr_write_completion(m, invocation_id, error) == 0)
        send_record(c, m);
}

/* ---- timers ---- */

static void on_tick(void *arg);

static void arm(bh_sr_conn_t *c, uint64_t now) {
    const bh_sr_config_t *cfg = &c->srv->cfg;
    uint64_t due;
    if (!c->handshaken) {
        due = c->opened_ms + cfg->handshake_timeout_ms;
    } else {
        due = c->last_recv_ms + cfg->client_timeout_ms;
        uint64_t ping = c->last_send_ms + cfg->keepalive_ms;
        if (ping < due)
            due = ping;
    }
    bh_conn_set_timer(c->net, due > now ? due - now : 1, on_tick, c);
}

static void on_tick(void *arg) {
    bh_sr_conn_t *c = arg;
    const bh_sr_config_t *cfg = &c->srv->cfg;
    uint64_t now = now_ms(c);
    if (!c->handshaken) {
        if (now >= c->opened_ms + cfg->handshake_timeout_ms) {
            close_ws(c, 1008, "handshake timeout");
            return;
        }
    } else if (now >= c->last_recv_ms + cfg->client_timeout_ms) {
        bh_sr_close(c, "Server timeout elapsed without receiving a message from the client.", 0);
        return;
    } else if (now >= c->last_send_ms + cfg->keepalive_ms) {
        bh_buf_t *m = &c->srv->msg;
        bh_buf_reset(m);
        if (bh_sr_write_ping(m) == 0)
            send_record(c, m);
    }
    if (!c->closing)
        arm(c, now);
}

/* ---- inbound records ---- */

static const bh_sr_method_t *find_method(const bh_sr_server_t *s, const char *name) {
    for (size_t i = 0; i < s->nmethods; i++)
        if (strcasecmp(s->methods[i].name, name) == 0) /* hub methods match case-insensitively */
            return &s->methods[i];
    return NULL;
}

static void handle_handshake(bh_sr_conn_t *c, const char *rec, size_t len) {
    bh_json_doc_t *doc;
    const char *protocol, *err = NULL;
    int64_t version;
    char text[160];
    if (bh_sr_parse_handshake(rec, len, &doc, &protocol, &version, &err) == 0) {
        if (strcmp(protocol, "json") != 0) {
            snprintf(text, sizeof text, "The protocol '%.64s' is not supported.", protocol);
            err = text;
        } else if (version < 0 || version > 1) {
            snprintf(text, sizeof text,
                     "The server does not support version %lld of the 'json' protocol.",
                     (long long)version);
            err = text;
        }
    }
    bh_buf_t *m = &c->srv->msg;
    bh_buf_reset(m);
    bh_sr_write_handshake_response(m, err);
    send_record(c, m);
    bh_json_free(doc);
    if (err) {
        close_ws(c, 1000, "");
        return;
    }
    c->handshaken = 1;
    c->connected = 1;
    if (c->srv->hooks.on_connected)
        c->srv->hooks.on_connected(c->srv->ud, c);
    if (!c->closing)
        arm(c, now_ms(c));
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
    if (msg->invocation_id && !c->closing)
        send_completion(c, msg->invocation_id, error);
}

static void handle_record(bh_sr_conn_t *c, const char *rec, size_t len) {
    if (!c->handshaken) {
        handle_handshake(c, rec, len);
        return;
    }
    bh_json_doc_t *doc;
    bh_sr_msg_t msg;
    const char *err;
    if (bh_sr_parse_message(rec, len, &doc, &msg, &err) < 0) {
        close_with_error(c, "InvalidDataException: ", err);
        return;
    }
    switch (msg.type) {
    case BH_SR_INVOCATION:
    case BH_SR_STREAM_INVOCATION:
        handle_invocation(c, &msg);
        break;
    case BH_SR_CLOSE:
        close_ws(c, 1000, "");
        break;
    default:
        break; /* Ping refreshes last_recv; the rest needs no answer */
    }
    bh_json_free(doc);
}

static void too_big(bh_sr_conn_t *c) {
    char detail[96];
    snprintf(detail, sizeof detail, "The maximum message size of %zuB was exceeded.",
             c->srv->cfg.max_message);
    close_with_error(c, "InvalidDataException: ", detail);
}

/* Handle every complete record in data; returns the bytes consumed. */
static size_t handle_records(bh_sr_conn_t *c, const char *data, size_t len) {
    size_t off = 0;
    while (off < len && !c->closing) {
        const char *rs = memchr(data + off, BH_SR_RS, len - off);
        if (!rs)
            break;
        size_t n = (size_t)(rs - (data + off));
        if (n > c->srv->cfg.max_message) {
            too_big(c);
            return len;
        }
        handle_record(c, data + off, n);
        off += n + 1;
    }
    return off;
}

static void session_feed(bh_sr_conn_t *c, const char *data, size_t len) {
    if (c->in.len == 0) {
        size_t used = handle_records(c, data, len);
        data += used;
        len -= used;
        if (len == 0 || c->closing)
            return;
    }
    if (c->in.len + len > c->srv->cfg.max_message || bh_buf_append(&c->in, data, len) < 0) {
        too_big(c);
        return;
    }
    if (c->in.len == len && !memchr(data, BH_SR_RS, len))
        return; /* only a partial record so far */
    size_t used = handle_records(c, c->in.data, c->in.len);
    bh_buf_consume(&c->in, used);
}

static void on_ws_message(void *ud, int binary, const char *data, size_t len) {
    bh_sr_conn_t *c = ud;
    if (c->closing)
        return;
    if (binary) {
        close_with_error(
            c, "InvalidDataException: ", "Binary messages are not valid for the 'json' protocol.");
        return;
    }
    session_feed(c, data, len);
}

static const bh_ws_callbacks_t ws_callbacks = {on_ws_message};

static void ws_on_data(void *ud, const char *data, size_t len) {
    bh_sr_conn_t *c = ud;
    c->last_recv_ms = now_ms(c);
    bh_ws_feed(c->ws, data, len);
    ws_flush(c);
    if (!c->closing && bh_ws_peer_close_code(c->ws) != 0)
        c->closing = 1;
}

static void ws_on_close(void *ud) {
    bh_sr_conn_t *c = ud;
    bh_sr_server_t *s = c->srv;
    if (c->connected && s->hooks.on_disconnected)
        s->hooks.on_disconnected(s->ud, c);
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    bh_ws_free(c->ws);
    bh_buf_free(&c->in);
    free(c);
}

static const bh_http_upgrade_ops_t ws_upgrade_ops = {ws_on_data, ws_on_close};

/* ---- HTTP endpoints ---- */

static void negotiate(bh_sr_server_t *s, bh_http_conn_t *hc, const bh_http_request_t *req) {
    if (req->method != BH_HTTP_POST) {
        bh_http_respond(hc, 405, "text/plain", "Allow: POST\r\n", "Method Not Allowed", 18);
        return;
    }
    char user_id[BH_SR_ID_MAX + 1], key_id[BH_SR_ID_MAX + 1];
    if (authenticate(s, hc, req, user_id, key_id) < 0)
        return;
    char v[8] = "0";
    int version = 0;
    if (req->query &&
        bh_http_query_param(req->query, req->query_len, "negotiateVersion", v, sizeof v) > 0)
        version = atoi(v) >= 1 ? 1 : 0;
    char token[BH_SR_TOKEN_CHARS + 1], id[32];
    token_new(s, uv_now(bh_conn_loop(bh_http_conn_net(hc))), key_id, token, id);
    char body[512];
    int n;
    if (version >= 1)
        n = snprintf(body, sizeof body,
                     "{\"negotiateVersion\":1,\"connectionId\":\"%s\",\"connectionToken\":\"%s\","
                     "\"availableTransports\":[{\"transport\":\"WebSockets\","
                     "\"transferFormats\":[\"Text\"]}]}",
                     id, token);
    else
        n = snprintf(body, sizeof body,
                     "{\"negotiateVersion\":0,\"connectionId\":\"%s\",\"availableTransports\":"
                     "[{\"transport\":\"WebSockets\",\"transferFormats\":[\"Text\"]}]}",
                     token);
    bh_http_respond(hc, 200, "application/json", "Cache-Control: no-store\r\n", body, (size_t)n);
}

static void websocket(bh_sr_server_t *s, bh_http_conn_t *hc, const bh_http_request_t *req) {
    size_t vlen, klen;
    const char *ver = bh_http_header(req, "Sec-WebSocket-Version", &vlen);
    const char *key = bh_http_header(req, "Sec-WebSocket-Key", &klen);
    if (req->method != BH_HTTP_GET || !key || klen != 24) {
        bh_http_respond_error(hc, 400, "bad WebSocket upgrade request");
        return;
    }
    if (!ver || vlen != 2 || memcmp(ver, "13", 2) != 0) {
        bh_http_respond(hc, 426, "text/plain", "Sec-WebSocket-Version: 13\r\n", "Upgrade Required",
                        16);
        return;
    }
    char user_id[BH_SR_ID_MAX + 1], key_id[BH_SR_ID_MAX + 1], id[32], token[128];
    if (authenticate(s, hc, req, user_id, key_id) < 0)
        return;
    bh_conn_t *net = bh_http_conn_net(hc);
    uint64_t now = uv_now(bh_conn_loop(net));
    int tl = req->query ? bh_http_query_param(req->query, req->query_len, "id", token, sizeof token)
                        : BH_ENOTFOUND;
    if (tl >= 0) {
        if (token_check(s, now, token, (size_t)tl, key_id, id) < 0) {
            bh_http_respond(hc, 404, "text/plain", NULL, "No Connection with that ID", 26);
            return;
        }
    } else if (tl == BH_ENOTFOUND) {
        uint8_t raw[16];
        RAND_bytes(raw, sizeof raw);
        b64url(raw, sizeof raw, id); /* skipNegotiation: a fresh id */
    } else {
        bh_http_respond_error(hc, 400, "bad id parameter");
        return;
    }
    char accept[29];
    bh_sr_conn_t *c = calloc(1, sizeof *c);
    if (!c || bh_ws_accept_key(key, klen, accept) < 0)
        goto fail;
    c->ws = bh_ws_server_new(&ws_callbacks, c, s->cfg.max_message * 4);
    if (!c->ws)
        goto fail;
    c->srv = s;
    c->net = net;
    bh_buf_init(&c->in, s->cfg.max_message);
    strcpy(c->user_id, user_id);
    strcpy(c->key_id, key_id);
    strcpy(c->id, id);
    c->opened_ms = c->last_recv_ms = c->last_send_ms = now;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     accept);
    bh_http_upgrade(hc, &ws_upgrade_ops, c);
    bh_conn_write(net, head, (size_t)n);
    arm(c, now);
    return;
fail:
    if (c)
        bh_ws_free(c->ws);
    free(c);
    bh_http_respond_error(hc, 500, "out of memory");
}

int bh_sr_handle_http(bh_sr_server_t *s, bh_http_conn_t *hc, const bh_http_request_t *req,
                      const char *body, size_t len) {
    size_t hl = strlen(s->hub_path);
    if (req->path_len == hl && memcmp(req->path, s->hub_path, hl) == 0) {
        if (req->upgrade_websocket)
            websocket(s, hc, req);
        else
            bh_http_respond_error(hc, 400,
                                  "this hub accepts the WebSockets transport only (Upgrade: "
                                  "websocket)");
        return 1;
    }
    size_t nl = strlen(s->negotiate_path);
    if (req->path_len == nl && memcmp(req->path, s->negotiate_path, nl) == 0) {
        negotiate(s, hc, req);
        return 1;
    }
    return 0;
}

/* ---- server ---- */

int bh_sr_server_new(const bh_sr_config_t *cfg, const bh_sr_method_t *methods, size_t nmethods,
                     const bh_sr_hooks_t *hooks, void *ud, bh_sr_server_t **out) {
    if (strlen(cfg->hub_path) >= 256 || cfg->hub_path[0] != '/')
        return BH_EINVAL;
    bh_sr_server_t *s = calloc(1, sizeof *s);
    if (!s)
        return BH_ENOMEM;
    s->cfg = *cfg;
    strcpy(s->hub_path, cfg->hub_path);
    snprintf(s->negotiate_path, sizeof s->negotiate_path, "%s/negotiate", cfg->hub_path);
    s->cfg.hub_path = s->hub_path;
    s->methods = methods;
    s->nmethods = nmethods;
    s->hooks = *hooks;
    s->ud = ud;
    bh_buf_init(&s->msg, 0);
    bh_buf_init(&s->wire, 0);
    if (RAND_bytes(s->secret, sizeof s->secret) != 1) {
        free(s);
        return BH_EIO;
    }
    *out = s;
    return BH_OK;
}

void bh_sr_server_close_all(bh_sr_server_t *s, const char *error, int allow_reconnect) {
    for (bh_sr_conn_t *c = s->conns; c; c = c->next)
        bh_sr_close(c, error, allow_reconnect);
}

void bh_sr_server_free(bh_sr_server_t *s) {
    if (!s)
        return;
    bh_buf_free(&s->msg);
    bh_buf_free(&s->wire);
    OPENSSL_cleanse(s->secret, sizeof s->secret);
    free(s);
}

size_t bh_sr_server_connections(const bh_sr_server_t *s) {
    return s->nconns;
}

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
