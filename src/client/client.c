/* libbalancehub's connection state machine (include/balancehub/client.h): resolve, connect,
 * TLS, negotiate, WebSocket upgrade, SignalR handshake, then the open connection with its
 * keep-alive and silence timers; on loss, reconnection with exponential backoff and jitter.
 * One poll(2) wait per bh_client_poll over the socket and a wake-up pipe (bh_client_stop). */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/rand.h>

#include "../base/error.h"
#include "../ws/ws.h"
#include "internal.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 10000
#define DEFAULT_KEEPALIVE_MS 15000
#define DEFAULT_SERVER_TIMEOUT_MS 30000
#define DEFAULT_RECONNECT_BASE_MS 500
#define DEFAULT_RECONNECT_MAX_MS 30000
#define DEFAULT_MAX_MESSAGE (4u * 1024 * 1024)
#define CLOSE_WAIT_MS 1000 /* how long a clean close waits for the server's Close */
#define MAX_REDIRECTS 100  /* as @microsoft/signalr */

enum step {
    S_IDLE,      /* DISCONNECTED */
    S_BACKOFF,   /* waiting before the next reconnection attempt */
    S_TRANSPORT, /* TCP connect and TLS handshake */
    S_NEGOTIATE, /* POST .../negotiate sent */
    S_UPGRADE,   /* GET with Upgrade: websocket sent */
    S_HANDSHAKE, /* SignalR handshake request sent */
    S_OPEN,      /* CONNECTED */
    S_CLOSING,   /* our WebSocket Close sent (bh_client_stop), waiting for the server's */
};

struct bh_client {
    bh_client_options_t o; /* strings owned: url, api_key, protocol, ca_file */
    bh_client_callbacks_t cb;
    void *ud;
    SSL_CTX *tls;
    int wake[2];
    atomic_int stop_requested; /* lock-free, so also safe from a signal handler */

    bh_client_state_t state;
    enum step step;
    int started;        /* bh_client_connect/start was called */
    int connected_once; /* a connection opened once: losses are reconnected */
    int final_err;      /* why the client is DISCONNECTED */
    int depth;          /* callbacks running: the loop must not be re-entered */
    char err[512];

    /* the current attempt */
    bh_cl_url_t url; /* after redirects */
    char *token;     /* API key, or the access token of a redirect */
    int redirects;
    struct addrinfo *ai, *ai_next;
    enum step after_transport; /* S_NEGOTIATE or S_UPGRADE */
    char *conn_token;
    char ws_key[25];
    long long deadline; /* of the attempt, or of the close */
    unsigned attempt;   /* failed reconnection attempts since the last connection */
    long long backoff_until;

    /* the connection */
    bh_cl_transport_t tr;
    bh_buf_t in;
    bh_ws_t *ws;
    bh_cl_session_t *session;
    long long last_send, last_recv;
    int conn_err;        /* set by a message callback inside bh_ws_feed */
    int allow_reconnect; /* the server's Close message allowed reconnecting */
    int no_retry;        /* this failure must not be retried */
    char detail[512];
};

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void set_err(bh_client_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_err(bh_client_t *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof(c->err), fmt, ap);
    va_end(ap);
}

const char *bh_client_strerror(int err) {
    switch (err) {
    case BH_CLIENT_OK:
        return "success";
    case BH_CLIENT_EINVAL:
        return "invalid argument";
    case BH_CLIENT_ENOMEM:
        return "out of memory";
    case BH_CLIENT_ERESOLVE:
        return "the host name did not resolve";
    case BH_CLIENT_ECONNECT:
        return "cannot connect to the server";
    case BH_CLIENT_ETLS:
        return "TLS failed (handshake or certificate)";
    case BH_CLIENT_EAUTH:
        return "the server refused the API key";
    case BH_CLIENT_EHTTP:
        return "unexpected HTTP answer";
    case BH_CLIENT_EPROTO:
        return "protocol error";
    case BH_CLIENT_EHANDSHAKE:
        return "the server refused the SignalR handshake";
    case BH_CLIENT_ECLOSED:
        return "the server closed the connection";
    case BH_CLIENT_ETIMEOUT:
        return "timed out";
    case BH_CLIENT_EIO:
        return "I/O error";
    case BH_CLIENT_ESERVER:
        return "the server reported an error";
    case BH_CLIENT_EINVOKE:
        return "the invocation failed";
    case BH_CLIENT_ESTATE:
        return "not allowed in the current state";
    default:
        return "unknown error";
    }
}

int bh_cl_backoff_ms(int base_ms, int max_ms, unsigned attempt, uint32_t rnd) {
    long long d = base_ms > 0 ? base_ms : 1;

    for (unsigned i = 0; i < attempt && d < max_ms; i++)
        d *= 2;
    if (d > max_ms)
        d = max_ms;
    /* "equal jitter": never less than half the delay, so reconnections still back off, and
     * spread over the other half, so clients dropped together do not return together */
    return (int)(d / 2 + (long long)(rnd % (uint32_t)(d / 2 + 1)));
}

/* ---- callbacks (the loop is not re-entered while they run) ---- */

static void set_state(bh_client_t *c, bh_client_state_t st, int err) {
    if (c->state == st)
        return;
    c->state = st;
    if (c->cb.on_state) {
        c->depth++;
        c->cb.on_state(c, st, err, c->ud);
        c->depth--;
    }
}

static void hook_balances(void *ud, const bh_balances_t *b) {
    bh_client_t *c = ud;
    if (c->cb.on_balances) {
        c->depth++;
        c->cb.on_balances(c, b, c->ud);
        c->depth--;
    }
}

static void hook_completion(void *ud, uint64_t id, int err, const char *message) {
    bh_client_t *c = ud;
    if (c->cb.on_completion) {
        c->depth++;
        c->cb.on_completion(c, id, err, message, c->ud);
        c->depth--;
    }
}

static void hook_error(void *ud, int err, const char *message) {
    bh_client_t *c = ud;
    if (c->cb.on_error) {
        c->depth++;
        c->cb.on_error(c, err, message, c->ud);
        c->depth--;
    }
}

/* ---- the WebSocket under the session ---- */

static int flush_ws(bh_client_t *c) {
    bh_buf_t frames;
    int r;

    if (c->ws == NULL)
        return BH_CLIENT_OK;
    bh_buf_init(&frames, 0);
    r = bh_ws_flush(c->ws, &frames);
    if (r == BH_OK && frames.len > 0)
        r = bh_cl_transport_write(&c->tr, frames.data, frames.len);
    else if (r != BH_OK)
        r = BH_CLIENT_ENOMEM;
    bh_buf_free(&frames);
    return r;
}

static int hook_send(void *ud, int binary, const char *data, size_t len) {
    bh_client_t *c = ud;
    int r;

    if (c->ws == NULL)
        return BH_CLIENT_ESTATE;
    r = bh_ws_send(c->ws, binary, data, len);
    if (r == BH_ECLOSED)
        return BH_CLIENT_ESTATE;
    if (r != BH_OK)
        return r == BH_ENOMEM ? BH_CLIENT_ENOMEM : BH_CLIENT_EINVAL;
    c->last_send = now_ms();
    return flush_ws(c);
}

static void on_ws_message(void *ud, int binary, const char *data, size_t len) {
    bh_client_t *c = ud;
    int allow = 0, r;

    if (c->conn_err != BH_CLIENT_OK)
        return; /* the connection is ending: later messages do not count */
    r = bh_cl_session_input(c->session, data, len, c->detail, sizeof(c->detail), &allow);
    if (r != BH_CLIENT_OK) {
        c->conn_err = r;
        c->allow_reconnect = allow;
    }
}

/* ---- teardown and failure ---- */

static void close_connection(bh_client_t *c) {
    int had_session = c->ws != NULL;

    bh_cl_transport_close(&c->tr);
    bh_ws_free(c->ws);
    c->ws = NULL;
    bh_buf_reset(&c->in);
    free(c->conn_token);
    c->conn_token = NULL;
    if (c->ai)
        freeaddrinfo(c->ai);
    c->ai = c->ai_next = NULL;
    c->conn_err = BH_CLIENT_OK;
    /* last: its completion callbacks may look at the client */
    if (had_session)
        bh_cl_session_end(c->session, BH_CLIENT_ECLOSED);
}

static void finish(bh_client_t *c, int err) {
    close_connection(c);
    c->step = S_IDLE;
    c->final_err = err;
    atomic_store(&c->stop_requested, 0); /* honoured */
    set_state(c, BH_CLIENT_DISCONNECTED, err);
}

static int fatal(const bh_client_t *c, int err) {
    switch (err) {
    case BH_CLIENT_EAUTH:      /* the key will not become valid by retrying */
    case BH_CLIENT_EHANDSHAKE: /* nor will the protocol become supported */
    case BH_CLIENT_EINVAL:
    case BH_CLIENT_ENOMEM:
        return 1;
    case BH_CLIENT_ETLS:
        return c->tr.verify_failed;
    default:
        return c->no_retry;
    }
}

/* The attempt or the connection failed with err (c->err says why). */
static void fail(bh_client_t *c, int err) {
    int was_open = c->step == S_OPEN, give_up;

    if (c->step == S_CLOSING || atomic_load(&c->stop_requested)) {
        finish(c, BH_CLIENT_OK);
        return;
    }
    give_up = !c->connected_once || fatal(c, err) || c->o.reconnect_max_attempts < 0;
    if (!was_open && !give_up) {
        c->attempt++;
        give_up =
            c->o.reconnect_max_attempts > 0 && c->attempt >= (unsigned)c->o.reconnect_max_attempts;
    }
    c->no_retry = 0;
    if (give_up) {
        finish(c, err);
        return;
    }
    close_connection(c);
    if (was_open)
        c->attempt = 0;
    uint32_t rnd = 0;
    if (RAND_bytes((unsigned char *)&rnd, sizeof(rnd)) != 1)
        rnd = (uint32_t)now_ms();
    c->step = S_BACKOFF;
    c->backoff_until =
        now_ms() + bh_cl_backoff_ms(c->o.reconnect_base_ms, c->o.reconnect_max_ms, c->attempt, rnd);
    set_state(c, BH_CLIENT_RECONNECTING, err);
}

/* ---- connecting ---- */

static int ensure_tls(bh_client_t *c) {
    if (c->tls != NULL)
        return BH_CLIENT_OK;
    c->tls = SSL_CTX_new(TLS_client_method());
    if (c->tls == NULL) {
        set_err(c, "cannot create a TLS context");
        return BH_CLIENT_ENOMEM;
    }
    SSL_CTX_set_min_proto_version(c->tls, TLS1_2_VERSION);
    SSL_CTX_set_verify(c->tls, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_alpn_protos(c->tls, (const unsigned char *)"\x08http/1.1", 9);
    if (c->o.ca_file ? SSL_CTX_load_verify_locations(c->tls, c->o.ca_file, NULL) != 1
                     : SSL_CTX_set_default_verify_paths(c->tls) != 1) {
        unsigned long e = ERR_get_error();
        char text[256];
        ERR_error_string_n(e, text, sizeof(text));
        ERR_clear_error();
        if (c->o.ca_file)
            set_err(c, "cannot load the CA file %s: %s", c->o.ca_file, text);
        else
            set_err(c, "cannot load the system's trusted certificates: %s", text);
        SSL_CTX_free(c->tls);
        c->tls = NULL;
        return BH_CLIENT_EINVAL;
    }
    return BH_CLIENT_OK;
}

static int try_next_address(bh_client_t *c) {
    int r = BH_CLIENT_ECONNECT;

    while (c->ai_next != NULL) {
        struct addrinfo *a = c->ai_next;
        c->ai_next = a->ai_next;
        r = bh_cl_transport_open(&c->tr, a->ai_addr, a->ai_addrlen, c->url.tls ? c->tls : NULL,
                                 c->url.host, c->err, sizeof(c->err));
        if (r == BH_CLIENT_OK) {
            c->step = S_TRANSPORT;
            return r;
        }
        if (r != BH_CLIENT_ECONNECT)
            return r;
    }
    return r;
}

/* Open a new TCP (+TLS) connection to the current URL; then send the request of step next. */
static int open_transport(bh_client_t *c, enum step next) {
    struct addrinfo hints = {0};
    char port[8];
    int r;

    bh_cl_transport_close(&c->tr);
    bh_buf_reset(&c->in);
    if (c->ai)
        freeaddrinfo(c->ai);
    c->ai = c->ai_next = NULL;
    c->after_transport = next;
    if (c->url.tls && (r = ensure_tls(c)) != BH_CLIENT_OK)
        return r;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG | AI_NUMERICSERV;
    snprintf(port, sizeof(port), "%u", c->url.port);
    r = getaddrinfo(c->url.host, port, &hints, &c->ai);
    if (r != 0) {
        set_err(c, "cannot resolve %s: %s", c->url.host, gai_strerror(r));
        c->ai = NULL;
        return BH_CLIENT_ERESOLVE;
    }
    c->ai_next = c->ai;
    return try_next_address(c);
}

static int send_request(bh_client_t *c) {
    bh_buf_t req;
    int r;

    bh_buf_init(&req, 0);
    if (c->after_transport == S_NEGOTIATE) {
        r = bh_cl_http_negotiate_request(&req, &c->url, c->token);
    } else {
        r = bh_ws_client_key(c->ws_key);
        if (r == BH_OK)
            r = bh_cl_http_upgrade_request(&req, &c->url, c->conn_token, c->token, c->ws_key);
    }
    r = r == BH_OK ? bh_cl_transport_write(&c->tr, req.data, req.len) : BH_CLIENT_ENOMEM;
    bh_buf_free(&req);
    if (r != BH_CLIENT_OK)
        set_err(c, "out of memory");
    else
        c->step = c->after_transport;
    return r;
}

static int start_attempt(bh_client_t *c) {
    const char *err;

    bh_cl_url_free(&c->url);
    free(c->token);
    c->token = NULL;
    c->redirects = 0;
    c->deadline = now_ms() + c->o.connect_timeout_ms;
    if (bh_cl_url_parse(c->o.url, &c->url, &err) != BH_OK ||
        (c->o.api_key && !(c->token = strdup(c->o.api_key)))) {
        set_err(c, "out of memory");
        return BH_CLIENT_ENOMEM;
    }
    return open_transport(c, c->o.skip_negotiation ? S_UPGRADE : S_NEGOTIATE);
}

/* A token that goes into a header line must not be able to start another one. */
static int header_safe(const char *s) {
    for (; s && *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return 0;
    return 1;
}

static int http_status_error(bh_client_t *c, const bh_cl_http_res_t *res, const char *what) {
    if (res->status == 401 || res->status == 403) {
        set_err(c, "the server refused the API key (HTTP %d)", res->status);
        return BH_CLIENT_EAUTH;
    }
    set_err(c, "%s failed: HTTP %d %s%s", what, res->status, res->reason,
            res->status == 404 ? " (is the hub URL right?)" : "");
    return BH_CLIENT_EHTTP;
}

static int on_negotiate_response(bh_client_t *c) {
    bh_cl_http_res_t res;
    bh_cl_negotiate_t neg;
    const char *err = NULL;
    size_t used;
    int r = bh_cl_http_parse(c->in.data, c->in.len, c->tr.eof, &res, &used);

    if (r == BH_EAGAIN)
        return BH_CLIENT_OK;
    if (r != BH_OK) {
        set_err(c, "the server's answer to negotiate is not valid HTTP");
        return BH_CLIENT_EHTTP;
    }
    bh_buf_consume(&c->in, used);
    if (res.status < 200 || res.status > 299) {
        r = http_status_error(c, &res, "negotiate");
        bh_buf_free(&res.body);
        return r;
    }
    r = bh_cl_negotiate_parse(res.body.data ? res.body.data : "", res.body.len,
                              bh_cl_session_binary(c->session), &neg, &err);
    bh_buf_free(&res.body);
    if (r != BH_OK) {
        set_err(c, "%s", err);
        return r == BH_ENOMEM ? BH_CLIENT_ENOMEM : BH_CLIENT_EHTTP;
    }
    if (neg.error) {
        set_err(c, "the server refused to negotiate: %s", neg.error);
        c->no_retry = 1;
        bh_cl_negotiate_free(&neg);
        return BH_CLIENT_EHTTP;
    }
    if (neg.redirect_url) {
        bh_cl_url_t next;
        if (++c->redirects > MAX_REDIRECTS || bh_cl_url_parse(neg.redirect_url, &next, &err) ||
            (neg.access_token && !header_safe(neg.access_token))) {
            set_err(c, "negotiate redirected %s",
                    c->redirects > MAX_REDIRECTS ? "too many times" : "to an unusable URL");
            bh_cl_negotiate_free(&neg);
            return BH_CLIENT_EHTTP;
        }
        bh_cl_url_free(&c->url);
        c->url = next;
        if (neg.access_token) {
            free(c->token);
            c->token = neg.access_token;
            neg.access_token = NULL;
        }
        bh_cl_negotiate_free(&neg);
        return open_transport(c, S_NEGOTIATE);
    }
    c->conn_token = neg.conn_token;
    neg.conn_token = NULL;
    bh_cl_negotiate_free(&neg);
    /* the same connection carries the upgrade when the server keeps it open */
    if (res.keep_alive && !c->tr.eof && c->in.len == 0) {
        c->after_transport = S_UPGRADE;
        return send_request(c);
    }
    return open_transport(c, S_UPGRADE);
}

static int on_upgrade_response(bh_client_t *c) {
    static const bh_ws_callbacks_t wcb = {on_ws_message};
    bh_cl_http_res_t res;
    size_t used;
    int r = bh_cl_http_parse(c->in.data, c->in.len, c->tr.eof, &res, &used);

    if (r == BH_EAGAIN)
        return BH_CLIENT_OK;
    if (r != BH_OK) {
        set_err(c, "the server's answer to the WebSocket request is not valid HTTP");
        return BH_CLIENT_EHTTP;
    }
    bh_buf_free(&res.body);
    bh_buf_consume(&c->in, used);
    if (res.status != 101)
        return http_status_error(c, &res, "the WebSocket request");
    if (!res.upgrade_websocket || !res.connection_upgrade ||
        bh_ws_client_check_accept(c->ws_key, res.accept, strlen(res.accept)) != BH_OK) {
        set_err(c, "the server's WebSocket handshake is invalid (Upgrade, Connection or "
                   "Sec-WebSocket-Accept)");
        return BH_CLIENT_EPROTO;
    }
    if (!(c->ws = bh_ws_client_new(&wcb, c, c->o.max_message))) {
        set_err(c, "out of memory");
        return BH_CLIENT_ENOMEM;
    }
    c->step = S_HANDSHAKE;
    c->last_recv = now_ms();
    r = bh_cl_session_begin(c->session);
    if (r != BH_CLIENT_OK)
        set_err(c, "cannot send the SignalR handshake: %s", bh_client_strerror(r));
    return r;
}

static void on_connected(bh_client_t *c) {
    int again = c->connected_once, r;

    c->step = S_OPEN;
    c->connected_once = 1;
    c->attempt = 0;
    c->err[0] = '\0';
    set_state(c, BH_CLIENT_CONNECTED, BH_CLIENT_OK);
    if (again && c->step == S_OPEN && (r = bh_cl_session_resubscribe(c->session)) != BH_CLIENT_OK)
        hook_error(c, r, "cannot ask for a snapshot after reconnecting");
}

/* Feed received bytes to the WebSocket: messages go to the session. */
static int on_ws_input(bh_client_t *c) {
    int r;

    if (c->in.len == 0)
        return BH_CLIENT_OK;
    c->last_recv = now_ms();
    r = bh_ws_feed(c->ws, c->in.data, c->in.len);
    bh_buf_reset(&c->in);
    if (c->conn_err != BH_CLIENT_OK) {
        set_err(c, "%s", c->detail);
        c->no_retry = c->conn_err == BH_CLIENT_ECLOSED && !c->allow_reconnect;
        return c->conn_err;
    }
    if (r == BH_EPROTO) {
        flush_ws(c); /* our Close with the reason, best effort */
        set_err(c, "the server broke the WebSocket protocol");
        return BH_CLIENT_EPROTO;
    }
    if (r != BH_OK) {
        set_err(c, "out of memory");
        return BH_CLIENT_ENOMEM;
    }
    if (bh_ws_peer_close_code(c->ws) != 0) {
        flush_ws(c); /* the echo */
        set_err(c, "the server closed the WebSocket (code %u)", bh_ws_peer_close_code(c->ws));
        return BH_CLIENT_ECLOSED;
    }
    if (c->step == S_HANDSHAKE && bh_cl_session_ready(c->session))
        on_connected(c);
    return BH_CLIENT_OK;
}

/* Socket I/O and whatever the current step makes of the bytes. */
static int do_io(bh_client_t *c) {
    int r = bh_cl_transport_pump(&c->tr, &c->in, c->err, sizeof(c->err));

    if (r == BH_CLIENT_ECONNECT && c->step == S_TRANSPORT && c->ai_next != NULL)
        return try_next_address(c); /* e.g. ::1 refused, 127.0.0.1 listening */
    if (r != BH_CLIENT_OK)
        return r;
    if (c->step == S_TRANSPORT && bh_cl_transport_ready(&c->tr)) {
        if ((r = send_request(c)) != BH_CLIENT_OK)
            return r;
        r = bh_cl_transport_pump(&c->tr, &c->in, c->err, sizeof(c->err));
        if (r != BH_CLIENT_OK)
            return r;
    }
    switch (c->step) {
    case S_NEGOTIATE:
        r = on_negotiate_response(c);
        break;
    case S_UPGRADE:
        r = on_upgrade_response(c);
        if (r == BH_CLIENT_OK && c->step == S_HANDSHAKE)
            r = on_ws_input(c); /* bytes that came with the 101 */
        break;
    case S_HANDSHAKE:
    case S_OPEN:
    case S_CLOSING:
        r = on_ws_input(c);
        if (c->step == S_CLOSING && c->ws && bh_ws_finished(c->ws))
            return BH_CLIENT_ECLOSED;
        break;
    default:
        break;
    }
    if (r != BH_CLIENT_OK)
        return r;
    if (c->tr.fd >= 0 && c->tr.eof) {
        /* during negotiate the parser has seen the EOF already: what is left is a closed
         * connection before (or instead of) an answer */
        set_err(c, c->step == S_OPEN ? "the server closed the connection"
                                     : "the server closed the connection while connecting");
        return BH_CLIENT_ECLOSED;
    }
    /* send what the steps queued (requests, handshake, pings, invocations) */
    return c->tr.fd >= 0 ? bh_cl_transport_pump(&c->tr, &c->in, c->err, sizeof(c->err))
                         : BH_CLIENT_OK;
}

static void begin_close(bh_client_t *c) {
    if (c->ws != NULL && (c->step == S_OPEN || c->step == S_HANDSHAKE) &&
        bh_ws_close(c->ws, 1000, NULL) == BH_OK && flush_ws(c) == BH_CLIENT_OK) {
        c->step = S_CLOSING;
        c->deadline = now_ms() + CLOSE_WAIT_MS;
        bh_cl_transport_pump(&c->tr, &c->in, c->err, sizeof(c->err));
        return;
    }
    finish(c, BH_CLIENT_OK);
}

/* Timers that are due; returns an error for the current connection, or 0. */
static int do_timers(bh_client_t *c) {
    long long now = now_ms();
    int r;

    switch (c->step) {
    case S_BACKOFF:
        if (now < c->backoff_until)
            return BH_CLIENT_OK;
        return start_attempt(c);
    case S_TRANSPORT:
    case S_NEGOTIATE:
    case S_UPGRADE:
    case S_HANDSHAKE:
        if (now < c->deadline)
            return BH_CLIENT_OK;
        set_err(c, "connecting to %s took longer than %d ms", c->url.host, c->o.connect_timeout_ms);
        return BH_CLIENT_ETIMEOUT;
    case S_OPEN:
        if (now - c->last_recv >= c->o.server_timeout_ms) {
            set_err(c, "the server sent nothing for %d ms", c->o.server_timeout_ms);
            return BH_CLIENT_ETIMEOUT;
        }
        if (now - c->last_send >= c->o.keepalive_ms) {
            r = bh_cl_session_ping(c->session);
            if (r == BH_CLIENT_OK)
                r = bh_cl_transport_pump(&c->tr, &c->in, c->err, sizeof(c->err));
            return r;
        }
        return BH_CLIENT_OK;
    case S_CLOSING:
        if (now >= c->deadline)
            finish(c, BH_CLIENT_OK);
        return BH_CLIENT_OK;
    default:
        return BH_CLIENT_OK;
    }
}

/* ms until the next timer (-1: none). */
static int next_timer(const bh_client_t *c) {
    long long now = now_ms(), at;

    switch (c->step) {
    case S_BACKOFF:
        at = c->backoff_until;
        break;
    case S_TRANSPORT:
    case S_NEGOTIATE:
    case S_UPGRADE:
    case S_HANDSHAKE:
    case S_CLOSING:
        at = c->deadline;
        break;
    case S_OPEN:
        at = c->last_recv + c->o.server_timeout_ms;
        if (c->last_send + c->o.keepalive_ms < at)
            at = c->last_send + c->o.keepalive_ms;
        break;
    default:
        return -1;
    }
    return at <= now ? 0 : at - now > 0x7fffffff ? 0x7fffffff : (int)(at - now);
}

/* ---- public API ---- */

void bh_client_options_init(bh_client_options_t *o) {
    memset(o, 0, sizeof(*o));
    o->protocol = "json";
    o->connect_timeout_ms = DEFAULT_CONNECT_TIMEOUT_MS;
    o->keepalive_ms = DEFAULT_KEEPALIVE_MS;
    o->server_timeout_ms = DEFAULT_SERVER_TIMEOUT_MS;
    o->reconnect_base_ms = DEFAULT_RECONNECT_BASE_MS;
    o->reconnect_max_ms = DEFAULT_RECONNECT_MAX_MS;
    o->max_message = DEFAULT_MAX_MESSAGE;
}

static char *dup_opt(const char *s, int *fail) {
    char *d;
    if (s == NULL)
        return NULL;
    if (!(d = strdup(s)))
        *fail = 1;
    return d;
}

void bh_client_free(bh_client_t *c) {
    if (c == NULL)
        return;
    /* no callbacks from here on: pending invocations are dropped silently */
    memset(&c->cb, 0, sizeof(c->cb));
    close_connection(c);
    bh_cl_session_free(c->session);
    bh_cl_url_free(&c->url);
    bh_buf_free(&c->in);
    if (c->tls)
        SSL_CTX_free(c->tls);
    if (c->wake[0] >= 0)
        close(c->wake[0]);
    if (c->wake[1] >= 0)
        close(c->wake[1]);
    if (c->token) {
        OPENSSL_cleanse(c->token, strlen(c->token));
        free(c->token);
    }
    if (c->o.api_key) {
        OPENSSL_cleanse((char *)c->o.api_key, strlen(c->o.api_key));
        free((char *)c->o.api_key);
    }
    free((char *)c->o.url);
    free((char *)c->o.protocol);
    free((char *)c->o.ca_file);
    free(c);
}

int bh_client_new(const bh_client_options_t *o, const bh_client_callbacks_t *cb, void *ud,
                  bh_client_t **out) {
    static const bh_cl_session_hooks_t hooks = {hook_send, hook_balances, hook_completion,
                                                hook_error};
    bh_client_options_t d;
    bh_cl_url_t url;
    const char *err;
    bh_client_t *c = NULL;
    int oom = 0, r;

    if (out == NULL || o == NULL)
        return BH_CLIENT_EINVAL;
    *out = NULL;
    bh_client_options_init(&d);
    if (bh_cl_url_parse(o->url, &url, &err) != BH_OK)
        return BH_CLIENT_EINVAL;
    bh_cl_url_free(&url);
    if (!header_safe(o->api_key))
        return BH_CLIENT_EINVAL;
    if (!(c = calloc(1, sizeof(*c))))
        return BH_CLIENT_ENOMEM;
    c->wake[0] = c->wake[1] = -1;
    c->o = *o;
    c->o.url = dup_opt(o->url, &oom);
    c->o.api_key = dup_opt(o->api_key, &oom);
    c->o.protocol = dup_opt(o->protocol ? o->protocol : d.protocol, &oom);
    c->o.ca_file = dup_opt(o->ca_file, &oom);
#define DEFAULT(field) (c->o.field > 0 ? c->o.field : d.field)
    c->o.connect_timeout_ms = DEFAULT(connect_timeout_ms);
    c->o.keepalive_ms = DEFAULT(keepalive_ms);
    c->o.server_timeout_ms = DEFAULT(server_timeout_ms);
    c->o.reconnect_base_ms = DEFAULT(reconnect_base_ms);
    c->o.reconnect_max_ms = DEFAULT(reconnect_max_ms);
    c->o.max_message = DEFAULT(max_message);
#undef DEFAULT
    if (c->o.reconnect_max_ms < c->o.reconnect_base_ms)
        c->o.reconnect_max_ms = c->o.reconnect_base_ms;
    if (cb)
        c->cb = *cb;
    c->ud = ud;
    bh_cl_transport_init(&c->tr);
    bh_buf_init(&c->in, 0);
    r = oom ? BH_CLIENT_ENOMEM
            : bh_cl_session_new(c->o.protocol, c->o.max_message, &hooks, c, &c->session);
    if (r != BH_CLIENT_OK)
        goto fail;
    if (pipe2(c->wake, O_NONBLOCK | O_CLOEXEC) < 0) {
        c->wake[0] = c->wake[1] = -1;
        r = BH_CLIENT_EIO;
        goto fail;
    }
    /* load the trust store now, so a bad CA file is reported here and not at first connect */
    if ((strncasecmp(o->url, "https:", 6) == 0 || o->ca_file) &&
        (r = ensure_tls(c)) != BH_CLIENT_OK)
        goto fail;
    *out = c;
    return BH_CLIENT_OK;
fail:
    bh_client_free(c);
    return r;
}

const char *bh_client_last_error(const bh_client_t *c) {
    return c->err;
}

bh_client_state_t bh_client_state(const bh_client_t *c) {
    return c->state;
}

int bh_client_start(bh_client_t *c) {
    int r;

    if (c->depth > 0 || c->step != S_IDLE)
        return BH_CLIENT_ESTATE;
    c->started = 1;
    c->connected_once = 0;
    c->attempt = 0;
    c->final_err = BH_CLIENT_OK;
    c->err[0] = '\0';
    set_state(c, BH_CLIENT_CONNECTING, BH_CLIENT_OK);
    r = start_attempt(c);
    if (r != BH_CLIENT_OK) {
        finish(c, r);
        return r;
    }
    return BH_CLIENT_OK;
}

int bh_client_connect(bh_client_t *c) {
    int r = bh_client_start(c);

    while (r == BH_CLIENT_OK && c->state == BH_CLIENT_CONNECTING)
        r = bh_client_poll(c, -1);
    if (r == BH_CLIENT_OK && c->state != BH_CLIENT_CONNECTED)
        r = c->final_err != BH_CLIENT_OK ? c->final_err : BH_CLIENT_ECLOSED;
    return r;
}

int bh_client_get_balances(bh_client_t *c, const char *client_id, uint64_t *invocation_id) {
    int r;

    if (c->step != S_OPEN)
        return BH_CLIENT_ESTATE;
    r = bh_cl_session_get_balances(c->session, client_id, BH_RESYNC_NONE, invocation_id);
    if (r == BH_CLIENT_OK && c->depth == 0)
        bh_cl_transport_pump(&c->tr, &c->in, c->err, sizeof(c->err));
    return r;
}

void bh_client_stop(bh_client_t *c) {
    int saved = errno;
    ssize_t n;

    atomic_store(&c->stop_requested, 1);
    if (c->wake[1] >= 0)
        n = write(c->wake[1], "x", 1); /* a full pipe already wakes the loop */
    (void)n;
    errno = saved;
}

int bh_client_fd(const bh_client_t *c) {
    return c->tr.fd;
}

short bh_client_events(const bh_client_t *c) {
    return bh_cl_transport_events(&c->tr);
}

int bh_client_timeout(const bh_client_t *c) {
    if ((atomic_load(&c->stop_requested) && c->step != S_IDLE && c->step != S_CLOSING) ||
        c->in.len > 0)
        return 0;
    return next_timer(c);
}

int bh_client_poll(bh_client_t *c, int timeout_ms) {
    struct pollfd fds[2];
    nfds_t n = 1;
    int wait = next_timer(c), r;

    if (c->depth > 0)
        return BH_CLIENT_ESTATE;
    if (c->step == S_IDLE)
        return c->final_err;
    if (atomic_load(&c->stop_requested) && c->step != S_CLOSING) {
        begin_close(c);
        return c->step == S_IDLE ? c->final_err : BH_CLIENT_OK;
    }
    if (timeout_ms >= 0 && (wait < 0 || timeout_ms < wait))
        wait = timeout_ms;
    if (c->in.len > 0)
        wait = 0; /* bytes read outside the loop (bh_client_get_balances) wait for processing */
    fds[0] = (struct pollfd){c->wake[0], POLLIN, 0};
    if (c->tr.fd >= 0)
        fds[n++] = (struct pollfd){c->tr.fd, bh_cl_transport_events(&c->tr), 0};
    if (poll(fds, n, wait) < 0 && errno != EINTR) {
        set_err(c, "poll failed: %s", strerror(errno));
        finish(c, BH_CLIENT_EIO);
        return c->final_err;
    }
    if (fds[0].revents & POLLIN) {
        char buf[64];
        while (read(c->wake[0], buf, sizeof(buf)) > 0)
            ;
    }
    if (atomic_load(&c->stop_requested) && c->step != S_CLOSING) {
        begin_close(c);
        return c->step == S_IDLE ? c->final_err : BH_CLIENT_OK;
    }
    r = c->tr.fd >= 0 ? do_io(c) : BH_CLIENT_OK;
    if (r == BH_CLIENT_OK && c->step != S_IDLE)
        r = do_timers(c);
    if (r != BH_CLIENT_OK && c->step != S_IDLE)
        fail(c, r);
    return c->step == S_IDLE ? c->final_err : BH_CLIENT_OK;
}

int bh_client_run(bh_client_t *c) {
    int r = BH_CLIENT_OK;

    if (c->depth > 0)
        return BH_CLIENT_ESTATE;
    if (c->step == S_IDLE && !c->started && (r = bh_client_start(c)) != BH_CLIENT_OK)
        return r;
    while (c->step != S_IDLE)
        r = bh_client_poll(c, -1);
    return r;
}
