/* libbalancehub internals (src/client): the codecs (URL, HTTP/1.1 client messages, negotiate,
 * balances data, decimals), the SignalR client session and the socket/TLS transport that
 * client.c puts together behind include/balancehub/client.h.
 * Codec functions (decimal, url, http, negotiate, balances) return src/base BH_* codes; session,
 * transport and client functions return the public BH_CLIENT_* codes. */
#ifndef BH_CLIENT_INTERNAL_H
#define BH_CLIENT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <openssl/ssl.h>

#include "../../include/balancehub/client.h"
#include "../base/buf.h"
#include "../base/json.h"

/* ---- decimals (decimal.c) ---- */

/* Parse a JSON number's text into an exact decimal, rounding half to even past 18 fraction
 * digits: BH_OK, BH_EINVAL (syntax), BH_ERANGE (|value| >= 10^20). */
int bh_cl_dec_parse(const char *s, size_t n, bh_decimal_t *out);

/* ---- URLs (url.c) ---- */

typedef struct {
    int tls;        /* https */
    char *host;     /* without IPv6 brackets */
    int ipv6;       /* host was bracketed */
    unsigned port;  /* explicit or 80 / 443 */
    int port_given; /* the URL named a port (Host: shows it unless it is the default) */
    char *path;     /* "/..." without a trailing '/', "" for the root */
    char *query;    /* after '?', without the fragment; NULL when absent or empty */
} bh_cl_url_t;

/* Parse an absolute http:// or https:// URL (no user info; the fragment is dropped).
 * BH_EINVAL with *err (static text) for anything else. On success u owns its strings. */
int bh_cl_url_parse(const char *s, bh_cl_url_t *u, const char **err);
void bh_cl_url_free(bh_cl_url_t *u);
/* Append s percent-encoded for a query component (unreserved characters kept). */
int bh_cl_url_encode(bh_buf_t *b, const char *s);

/* ---- HTTP/1.1 client messages and negotiate (http.c) ---- */

#define BH_CL_HTTP_MAX_HEAD (16 * 1024)
#define BH_CL_HTTP_MAX_BODY (1024 * 1024)

typedef struct {
    int status;             /* 100..999 */
    int minor;              /* HTTP/1.minor */
    int keep_alive;         /* the connection may carry the next request */
    int upgrade_websocket;  /* Upgrade: websocket */
    int connection_upgrade; /* Connection: has the upgrade token */
    char accept[32];        /* Sec-WebSocket-Accept ("" when absent or too long) */
    char reason[64];        /* reason phrase, control characters dropped */
    bh_buf_t body;          /* decoded body (chunked or not) */
} bh_cl_http_res_t;

/* Parse one response from in[0..len) (eof: the peer closed after it). Stateless: call again
 * with more bytes on BH_EAGAIN. BH_OK fills *res (free res->body with bh_buf_free) and *used,
 * the bytes it took; a 101 ends at its head. BH_EINVAL for malformed responses, BH_ETOOBIG past
 * BH_CL_HTTP_MAX_HEAD / BH_CL_HTTP_MAX_BODY. */
int bh_cl_http_parse(const char *in, size_t len, int eof, bh_cl_http_res_t *res, size_t *used);

/* POST {path}/negotiate?{query&}negotiateVersion=1 with the Bearer token (if any). */
int bh_cl_http_negotiate_request(bh_buf_t *b, const bh_cl_url_t *u, const char *token);
/* GET {path}?{query&}id=ID&access_token=TOKEN with the WebSocket upgrade headers. */
int bh_cl_http_upgrade_request(bh_buf_t *b, const bh_cl_url_t *u, const char *conn_token,
                               const char *token, const char *ws_key);

typedef struct {
    char *conn_token;   /* connectionToken (v1) or connectionId (v0) */
    char *redirect_url; /* "url": negotiate again there */
    char *access_token; /* "accessToken" that comes with a redirect */
    char *error;        /* "error": the server refused */
} bh_cl_negotiate_t;

/* Read a negotiate response body. BH_OK: exactly one of conn_token, redirect_url or error is
 * set. BH_EINVAL with *err (static text) when it is not a usable response (including a server
 * that offers no WebSockets transport with the needed transfer format). */
int bh_cl_negotiate_parse(const char *body, size_t len, int binary, bh_cl_negotiate_t *out,
                          const char **err);
void bh_cl_negotiate_free(bh_cl_negotiate_t *n);

/* ---- balances data (balances.c) ---- */

/* Read a data object. On success *b points into data's strings and b->assets is a malloc'd array
 * the caller frees with bh_cl_balances_clear. BH_EINVAL with *err (static text) otherwise. */
int bh_cl_balances_read(const bh_json_t *data, bh_balances_t *b, const char **err);
void bh_cl_balances_clear(bh_balances_t *b);

/* ---- SignalR client session (session.c) ---- */

typedef struct bh_cl_session bh_cl_session_t;

typedef struct {
    /* Queue one WebSocket message; returns a BH_CLIENT code. */
    int (*send)(void *ud, int binary, const char *data, size_t len);
    void (*on_balances)(void *ud, const bh_balances_t *b);
    void (*on_completion)(void *ud, uint64_t id, int err, const char *message);
    void (*on_error)(void *ud, int err, const char *message);
} bh_cl_session_hooks_t;

/* protocol: "json" or "messagepack" (BH_CLIENT_EINVAL otherwise). Messages over max_msg bytes
 * are protocol errors. hooks is copied. */
int bh_cl_session_new(const char *protocol, size_t max_msg, const bh_cl_session_hooks_t *hooks,
                      void *ud, bh_cl_session_t **out);
void bh_cl_session_free(bh_cl_session_t *s);
int bh_cl_session_binary(const bh_cl_session_t *s);
/* A new connection is open: reset its state and send the handshake request. */
int bh_cl_session_begin(bh_cl_session_t *s);
/* The connection ended: the application's pending invocations complete with err. */
void bh_cl_session_end(bh_cl_session_t *s, int err);
/* One WebSocket message from the server. 0, or an error that ends the connection:
 * BH_CLIENT_EPROTO, BH_CLIENT_EHANDSHAKE (refused) or BH_CLIENT_ECLOSED (a Close message;
 * *allow_reconnect says whether the server allows reconnecting), described in detail[]. */
int bh_cl_session_input(bh_cl_session_t *s, const char *data, size_t len, char *detail,
                        size_t detail_size, int *allow_reconnect);
/* The handshake response arrived: invocations may go out. */
int bh_cl_session_ready(const bh_cl_session_t *s);
/* Invoke GetBalances(client_id); why says whose invocation it is (BH_RESYNC_NONE: the
 * application's, reported through on_completion). */
int bh_cl_session_get_balances(bh_cl_session_t *s, const char *client_id, bh_resync_t why,
                               uint64_t *id);
int bh_cl_session_ping(bh_cl_session_t *s);
/* After a reconnection: GetBalances again with the clientId of the last successful snapshot
 * of the application, if any. */
int bh_cl_session_resubscribe(bh_cl_session_t *s);

/* ---- socket and TLS (transport.c) ---- */

typedef struct {
    int fd;            /* -1 when closed */
    int tcp_up;        /* TCP connect completed */
    SSL *ssl;          /* NULL for plain TCP */
    BIO *rbio, *wbio;  /* ssl's memory BIOs (owned by ssl) */
    int tls_up;        /* TLS handshake completed */
    int verify_failed; /* the certificate was not trusted: no point retrying */
    int eof;           /* the peer closed its side */
    bh_buf_t out;      /* plaintext waiting for TLS */
    bh_buf_t net;      /* bytes waiting for the socket */
} bh_cl_transport_t;

void bh_cl_transport_init(bh_cl_transport_t *t);
/* Start a non-blocking connect to sa; with tls (a context with verification set up), a TLS
 * client for host (SNI unless host is an IP address; certificate checked for host). */
int bh_cl_transport_open(bh_cl_transport_t *t, const struct sockaddr *sa, socklen_t salen,
                         SSL_CTX *tls, const char *host, char *err, size_t err_size);
/* TCP (and TLS) are up: requests may be written. */
int bh_cl_transport_ready(const bh_cl_transport_t *t);
short bh_cl_transport_events(const bh_cl_transport_t *t);
/* Queue bytes to send (plaintext). */
int bh_cl_transport_write(bh_cl_transport_t *t, const char *data, size_t len);
/* Make all the progress possible without blocking: finish connecting, the TLS handshake, send
 * what is queued, read what arrived into in (up to its cap). Sets t->eof when the peer closed.
 * BH_CLIENT_OK, or ECONNECT / ETLS / EIO with err filled. */
int bh_cl_transport_pump(bh_cl_transport_t *t, bh_buf_t *in, char *err, size_t err_size);
void bh_cl_transport_close(bh_cl_transport_t *t);

/* ---- reconnection delay (client.c) ---- */

/* Delay before reconnection attempt n (from 0): uniformly in [d/2, d] with
 * d = min(max_ms, base_ms * 2^n), from the random value rnd. */
int bh_cl_backoff_ms(int base_ms, int max_ms, unsigned attempt, uint32_t rnd);

#endif
