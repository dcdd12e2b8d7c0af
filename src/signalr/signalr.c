/* SignalR server: routing of the hub and negotiate paths, CORS, authentication of every
 * request, negotiate (v0, v1, stateful reconnect), the HTTP POST half-transport, and the
 * server's life (close_all for graceful shutdown, shutdown, free). */
#include "signalr.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../base/error.h"
#include "../base/log.h"
#include "../base/metrics.h"
#include "internal.h"

#define BH_SR_KEY_MAX 512
/* Negotiated connections waiting for their transport, at most (each lives BH_SR_TOKEN_TTL_MS). */
#define BH_SR_MAX_PENDING 32768
#define BH_SR_ORIGIN_MAX 256
#define BH_SR_ALLOW "GET, POST, DELETE, OPTIONS"

/* ---- replies ---- */

int bh_sr_reply(const bh_sr_req_t *rq, int status, const char *ctype, const char *extra,
                const char *body, size_t len) {
    char hdr[BH_SR_CORS_MAX + 512];
    int n = snprintf(hdr, sizeof hdr, "%s%s", extra ? extra : "", rq->cors);
    if (n < 0 || (size_t)n >= sizeof hdr)
        snprintf(hdr, sizeof hdr, "%s", extra ? extra : ""); /* never a cut header line */
    return bh_http_respond(rq->hc, status, ctype, hdr[0] ? hdr : NULL, body, len);
}

int bh_sr_reply_text(const bh_sr_req_t *rq, int status, const char *msg) {
    return bh_sr_reply(rq, status, "text/plain; charset=utf-8", NULL, msg, strlen(msg));
}

/* ---- authentication ---- */

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

/* The request's source address for the throttle; BH_EIO when it has none (closing). */
static int request_addr(const bh_sr_req_t *rq, bh_sr_addr_t *a) {
    struct sockaddr_storage ss;
    int r = bh_conn_peer_addr(bh_http_conn_net(rq->hc), &ss);
    return r < 0 ? r : bh_sr_addr_from((const struct sockaddr *)&ss, a);
}

/* An address out of failures: 429 before its key is looked at, so it learns nothing. */
static int throttled(const bh_sr_req_t *rq, const bh_sr_addr_t *a) {
    uint64_t wait = bh_sr_shared_throttle_wait(rq->s->shared, a, rq->now);
    if (wait == 0)
        return 0;
    static const char msg[] = "Too Many Requests: too many failed authentications";
    char extra[64];
    snprintf(extra, sizeof extra, "Retry-After: %llu\r\nCache-Control: no-store\r\n",
             (unsigned long long)wait);
    bh_sr_reply(rq, 429, "text/plain; charset=utf-8", extra, msg, sizeof msg - 1);
    bh_metric_add(BH_M_LIMIT_AUTH_THROTTLE, 1);
    return 1;
}

static void auth_failed(const bh_sr_req_t *rq, const bh_sr_addr_t *a, int has_addr) {
    bh_metric_add(BH_M_AUTH_FAILURES, 1);
    char peer[64] = "?";
    if (has_addr)
        bh_sr_addr_text(a, peer, sizeof peer);
    bh_log(BH_LOG_DEBUG, "authentication failed", BH_LS("peer", peer));
    uint64_t wait = has_addr ? bh_sr_shared_throttle_fail(rq->s->shared, a, rq->now) : 0;
    if (wait)
        bh_log(BH_LOG_WARN, "failed authentications throttled", BH_LS("peer", peer),
               BH_LU("retry_after_s", wait));
}

int bh_sr_authenticate(const bh_sr_req_t *rq, char user_id[BH_SR_ID_MAX + 1],
                       char key_id[BH_SR_ID_MAX + 1]) {
    bh_sr_server_t *s = rq->s;
    bh_sr_addr_t addr;
    int has_addr = request_addr(rq, &addr) == 0;
    if (has_addr && throttled(rq, &addr))
        return BH_ELIMIT;
    char key[BH_SR_KEY_MAX];
    int n = request_key(rq->req, key, sizeof key);
    int r = n > 0 ? s->hooks.authenticate(s->ud, key, (size_t)n, user_id, key_id) : BH_ENOTFOUND;
    OPENSSL_cleanse(key, sizeof key);
    if (r < 0) {
        const char *msg = n > 0 ? "Unauthorized: the API key was not accepted"
                                : "Unauthorized: no API key (use Authorization: Bearer or "
                                  "access_token)";
        bh_sr_reply(rq, 401, "text/plain", "WWW-Authenticate: Bearer\r\n", msg, strlen(msg));
        auth_failed(rq, &addr, has_addr);
        return r;
    }
    return BH_OK;
}

bh_sr_conn_t *bh_sr_lookup(const bh_sr_req_t *rq) {
    const bh_http_request_t *req = rq->req;
    char token[128], user_id[BH_SR_ID_MAX + 1], key_id[BH_SR_ID_MAX + 1];
    int tl = req->query ? bh_http_query_param(req->query, req->query_len, "id", token, sizeof token)
                        : BH_ENOTFOUND;
    if (tl <= 0) {
        bh_sr_reply_text(
            rq, 400, tl == BH_ENOTFOUND || tl == 0 ? "Connection ID required" : "bad id parameter");
        return NULL;
    }
    if (bh_sr_authenticate(rq, user_id, key_id) < 0)
        return NULL;
    bh_sr_conn_t *c = bh_sr_registry_find(rq->s, token, (size_t)tl, rq->now);
    if (!c) {
        if (!bh_sr_route(rq, token, (size_t)tl))
            bh_sr_reply_text(rq, 404, "No Connection with that ID");
        return NULL;
    }
    if (strcmp(c->key_id, key_id) != 0) {
        bh_sr_reply_text(rq, 403, "This connection belongs to another API key.");
        return NULL;
    }
    return c;
}

/* ---- routing and connection limits ---- */

int bh_sr_route(const bh_sr_req_t *rq, const char *token, size_t n) {
    bh_httpd_t *to;
    /* One hop at most: the owner may have ended the session (or another server taken the
     * token) since the request left; it is then as unknown as anywhere. */
    if (bh_http_conn_migrated(rq->hc))
        return 0;
    bh_sr_server_t *owner = bh_sr_owner_find(rq->s->shared, token, n, &to);
    if (!owner || owner == rq->s || !to)
        return 0;
    /* Other failures close the connection (503 if it can); BH_EINVAL leaves it to us. */
    return bh_http_migrate(rq->hc, to) != BH_EINVAL;
}

int bh_sr_admit(const bh_sr_req_t *rq, const char *key_id, int take) {
    static const char per_key[] = "{\"error\":\"too many connections for this API key\"}";
    static const char total[] = "{\"error\":\"server at connection limit\"}";
    int r = bh_sr_shared_acquire(rq->s->shared, key_id, take);
    if (r == BH_ETOOBIG) {
        bh_sr_reply(rq, 503, "application/json", "Cache-Control: no-store\r\n", total,
                    sizeof total - 1);
        bh_metric_add(BH_M_LIMIT_CONNS_TOTAL, 1);
    } else if (r == BH_ELIMIT) {
        bh_sr_reply(rq, 429, "application/json", "Cache-Control: no-store\r\n", per_key,
                    sizeof per_key - 1);
        bh_metric_add(BH_M_LIMIT_CONNS_PER_KEY, 1);
    } else if (r < 0) {
        bh_sr_reply_text(rq, 500, "out of memory");
    }
    return r < 0 ? BH_ELIMIT : BH_OK;
}

/* ---- CORS ---- */

/* Same origin: the Origin's host[:port] is the request's Host. */
static int same_origin(const bh_http_request_t *req, const char *o, size_t n) {
    size_t hl;
    const char *host = bh_http_header(req, "Host", &hl);
    const char *sep = memmem(o, n, "://", 3);
    if (!host || !sep)
        return 0;
    size_t rest = n - (size_t)(sep + 3 - o);
    return rest == hl && strncasecmp(sep + 3, host, hl) == 0;
}

static int origin_allowed(const bh_sr_server_t *s, const bh_http_request_t *req, const char *o,
                          size_t n) {
    if (s->cors_any || same_origin(req, o, n))
        return 1;
    for (const char *p = s->cors_list; p && *p; p += strlen(p) + 1)
        if (strlen(p) == n && strncasecmp(p, o, n) == 0)
            return 1;
    return 0;
}

/* Fill rq->cors for an allowed Origin (echoed: credentials rule out "*"). *has_origin and
 * *allowed say what the request carried. */
static void cors_prepare(bh_sr_req_t *rq, int *has_origin, int *allowed) {
    size_t n;
    const char *o = bh_http_header(rq->req, "Origin", &n);
    rq->cors[0] = 0;
    *has_origin = o != NULL;
    *allowed = 0;
    if (!o || n == 0 || n > BH_SR_ORIGIN_MAX)
        return;
    for (size_t i = 0; i < n; i++)
        if (o[i] <= 0x20 || o[i] >= 0x7f)
            return; /* an origin is printable ASCII without spaces; never echo anything else */
    if (!origin_allowed(rq->s, rq->req, o, n))
        return;
    *allowed = 1;
    snprintf(rq->cors, sizeof rq->cors,
             "Access-Control-Allow-Origin: %.*s\r\nAccess-Control-Allow-Credentials: true\r\n"
             "Vary: Origin\r\n",
             (int)n, o);
}

static void preflight(bh_sr_req_t *rq, int has_origin, int allowed) {
    if (!has_origin) {
        bh_http_respond(rq->hc, 204, NULL, "Allow: " BH_SR_ALLOW "\r\n", NULL, 0);
        return;
    }
    if (!allowed) {
        bh_sr_reply_text(rq, 403, "This origin is not allowed.");
        return;
    }
    bh_sr_reply(rq, 204, NULL,
                "Access-Control-Allow-Methods: " BH_SR_ALLOW "\r\n"
                "Access-Control-Allow-Headers: Authorization, Content-Type, X-Requested-With, "
                "X-SignalR-User-Agent\r\nAccess-Control-Max-Age: 600\r\n",
                NULL, 0);
}

/* ---- endpoints ---- */

static void negotiate(bh_sr_req_t *rq) {
    bh_sr_server_t *s = rq->s;
    const bh_http_request_t *req = rq->req;
    if (req->method != BH_HTTP_POST) {
        bh_sr_reply(rq, 405, "text/plain", "Allow: POST, OPTIONS\r\n", "Method Not Allowed", 18);
        return;
    }
    char user_id[BH_SR_ID_MAX + 1], key_id[BH_SR_ID_MAX + 1];
    if (bh_sr_authenticate(rq, user_id, key_id) < 0)
        return;
    if (s->closing_all) {
        bh_sr_reply_text(rq, 503, "The server is shutting down.");
        return;
    }
    char v[8] = "0";
    int version = 0, stateful = 0;
    if (req->query &&
        bh_http_query_param(req->query, req->query_len, "negotiateVersion", v, sizeof v) > 0)
        version = atoi(v) >= 1 ? 1 : 0;
    if (version >= 1 && !s->cfg.no_stateful_reconnect && req->query &&
        bh_http_query_param(req->query, req->query_len, "useStatefulReconnect", v, sizeof v) > 0)
        stateful = strcmp(v, "true") == 0;
    bh_sr_pending_sweep(s, rq->now);
    if (s->npending >= BH_SR_MAX_PENDING) {
        bh_sr_reply_text(rq, 503, "Too many connections are being negotiated; try again later.");
        bh_metric_add(BH_M_LIMIT_CONNS_TOTAL, 1);
        return;
    }
    if (bh_sr_admit(rq, key_id, 0) < 0)
        return;
    char token[BH_SR_TOKEN_CHARS + 1], id[BH_SR_CONN_ID_CHARS + 1];
    bh_sr_token_new(s, rq->now, key_id, stateful, token, id);
    bh_sr_conn_t *c =
        bh_sr_session_new(s, user_id, key_id, id, token, rq->now + BH_SR_TOKEN_TTL_MS);
    if (!c || bh_sr_registry_add(s, c) < 0) { /* (a random token is never taken) */
        if (c)
            bh_sr_session_free_pending(c);
        bh_sr_reply_text(rq, 500, "out of memory");
        return;
    }
    c->stateful_ok = stateful;
    static const char transports[] =
        "\"availableTransports\":[{\"transport\":\"WebSockets\",\"transferFormats\":[\"Text\","
        "\"Binary\"]},{\"transport\":\"ServerSentEvents\",\"transferFormats\":[\"Text\"]},"
        "{\"transport\":\"LongPolling\",\"transferFormats\":[\"Text\",\"Binary\"]}]";
    char body[768];
    int n;
    if (version >= 1)
        n = snprintf(body, sizeof body,
                     "{\"negotiateVersion\":1,\"connectionId\":\"%s\",\"connectionToken\":\"%s\","
                     "%s%s}",
                     id, token, stateful ? "\"useStatefulReconnect\":true," : "", transports);
    else /* version 0: the token is the connection id */
        n = snprintf(body, sizeof body, "{\"negotiateVersion\":0,\"connectionId\":\"%s\",%s}",
                     token, transports);
    bh_sr_reply(rq, 200, "application/json", "Cache-Control: no-store\r\n", body, (size_t)n);
}

/* The HTTP POST half-transport: the body carries messages for a Server-Sent Events or Long
 * Polling connection. What the session cannot handle at once (its output backed up) waits in
 * the session, in order; the answer waits only while too much input waits (backpressure). */
static void http_post(bh_sr_req_t *rq, bh_sr_conn_t *c, const char *body, size_t len) {
    if (c->state == BH_SR_PENDING) {
        bh_sr_reply_text(rq, 400, "The connection has not started a transport.");
        return;
    }
    if (c->tp == &bh_sr_ws_transport) {
        bh_sr_reply_text(rq, 405, "POST requests are not allowed for WebSocket connections.");
        return;
    }
    bh_sr_session_feed(c, body, len);
    if (bh_sr_session_input_full(c))
        bh_sr_session_hold_post(c, rq->hc, rq->cors);
    else
        bh_sr_reply(rq, 200, "text/plain", NULL, "", 0);
}

static int accepts_event_stream(const bh_http_request_t *req) {
    size_t n;
    const char *a = bh_http_header(req, "Accept", &n);
    return a && memmem(a, n, "text/event-stream", 17) != NULL;
}

int bh_sr_handle_http(bh_sr_server_t *s, bh_http_conn_t *hc, const bh_http_request_t *req,
                      const char *body, size_t len) {
    size_t hl = strlen(s->hub_path), nl = strlen(s->negotiate_path);
    int hub = req->path_len == hl && memcmp(req->path, s->hub_path, hl) == 0;
    int neg = req->path_len == nl && memcmp(req->path, s->negotiate_path, nl) == 0;
    if (!hub && !neg)
        return 0;
    bh_sr_req_t rq = {.s = s, .hc = hc, .req = req};
    rq.loop = bh_conn_loop(bh_http_conn_net(hc));
    rq.now = uv_now(rq.loop);
    int has_origin, allowed;
    cors_prepare(&rq, &has_origin, &allowed);
    bh_sr_conn_t *c;
    if (req->method == BH_HTTP_OPTIONS) {
        preflight(&rq, has_origin, allowed);
    } else if (neg) {
        negotiate(&rq);
    } else if (req->upgrade_websocket) {
        bh_sr_ws_request(&rq);
    } else if (req->method == BH_HTTP_GET) {
        int sse = accepts_event_stream(req);
        if ((c = bh_sr_lookup(&rq)) != NULL) {
            if (sse)
                bh_sr_sse_request(&rq, c);
            else
                bh_sr_lp_poll(&rq, c);
        }
    } else if (req->method == BH_HTTP_POST) {
        if ((c = bh_sr_lookup(&rq)) != NULL)
            http_post(&rq, c, body, len);
    } else if (req->method == BH_HTTP_DELETE) {
        if ((c = bh_sr_lookup(&rq)) != NULL)
            bh_sr_lp_delete(&rq, c);
    } else {
        bh_sr_reply(&rq, 405, "text/plain", "Allow: " BH_SR_ALLOW "\r\n", "Method Not Allowed", 18);
    }
    return 1;
}

/* ---- server ---- */

/* "a, b ,c" -> "a\0b\0c\0\0"; "*" anywhere allows every origin. */
static int parse_origins(bh_sr_server_t *s, const char *list) {
    size_t n = strlen(list);
    char *out = calloc(1, n + 2), *w = out;
    if (!out)
        return BH_ENOMEM;
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > p && t[-1] == ' ')
            t--;
        if (t - p == 1 && *p == '*')
            s->cors_any = 1;
        else if (t > p) {
            memcpy(w, p, (size_t)(t - p));
            w += t - p + 1;
        }
        p = e;
    }
    s->cors_list = out;
    return BH_OK;
}

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
    s->cfg.cors_origins = NULL; /* parsed below, not kept */
    bh_sr_config_fill(&s->cfg);
    s->methods = methods;
    s->nmethods = nmethods;
    s->hooks = *hooks;
    s->ud = ud;
    bh_buf_init(&s->msg, 0);
    bh_buf_init(&s->wire, 0);
    if (cfg->cors_origins && parse_origins(s, cfg->cors_origins) < 0)
        goto fail;
    s->shared = cfg->shared;
    if (!s->shared) {
        if (bh_sr_shared_new(&s->cfg, &s->shared) < 0)
            goto fail;
        s->own_shared = 1;
    }
    bh_sr_shared_secret(s->shared, s->secret);
    *out = s;
    return BH_OK;
fail:
    free(s->cors_list);
    free(s);
    return BH_EIO;
}

void bh_sr_server_close_all(bh_sr_server_t *s, const char *error, int allow_reconnect) {
    s->closing_all = 1;
    /* bh_sr_close never unlinks a session at once, so the walk is safe. */
    for (bh_sr_conn_t *c = s->conns; c; c = c->next)
        bh_sr_close(c, error, allow_reconnect);
    bh_sr_pending_sweep(s, UINT64_MAX);
}

void bh_sr_server_shutdown(bh_sr_server_t *s) {
    if (s->shut_down)
        return;
    s->shut_down = s->closing_all = 1;
    bh_sr_pending_sweep(s, UINT64_MAX);
    while (s->conns)
        bh_sr_session_finish(s->conns);
}

void bh_sr_server_free(bh_sr_server_t *s) {
    if (!s)
        return;
    bh_sr_server_shutdown(s);
    bh_sr_registry_free(s);
    if (s->own_shared)
        bh_sr_shared_free(s->shared);
    free(s->cors_list);
    bh_buf_free(&s->msg);
    bh_buf_free(&s->wire);
    OPENSSL_cleanse(s->secret, sizeof s->secret);
    free(s);
}

size_t bh_sr_server_connections(const bh_sr_server_t *s) {
    return s->nconns;
}

void bh_sr_server_set_httpd(bh_sr_server_t *s, bh_httpd_t *h) {
    bh_sr_owner_set_httpd(s->shared, s, h);
}
