/* HTTP/1.1 server connections on top of src/net: request framing with limits and timeouts,
 * keep-alive and pipelining, clear 4xx answers, and hand-over of a connection to an upgraded
 * protocol (WebSocket). */
#ifndef BH_HTTP_SERVER_H
#define BH_HTTP_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "../net/net.h"
#include "http.h"

typedef struct bh_httpd bh_httpd_t;
typedef struct bh_http_conn bh_http_conn_t;

typedef struct {
    size_t max_head;             /* request line + headers (431 beyond) */
    size_t max_body;             /* request body (413 beyond) */
    uint64_t request_timeout_ms; /* a started request must complete within this (408) */
    uint64_t idle_timeout_ms;    /* keep-alive connection without a request is closed */
    size_t max_output;           /* per-connection queued output cap */
    bh_net_tls_config_t tls;     /* TLS on the listener (net.h); zeroed = plain HTTP */
    int reuseport;               /* SO_REUSEPORT: one listener per I/O thread on one port */
} bh_httpd_config_t;

/* Called once per complete request. The request and body are valid during the call only.
 * The handler answers with bh_http_respond, takes over with bh_http_upgrade, or holds the
 * connection (bh_http_hold) and answers later. */
typedef void (*bh_httpd_handler_t)(void *ud, bh_http_conn_t *hc, const bh_http_request_t *req,
                                   const char *body, size_t body_len);

typedef struct {
    /* Bytes after the upgrade (the first call may carry bytes that followed the request). */
    void (*on_data)(void *ud, const char *data, size_t len);
    /* The connection is gone: free the upgraded state. Last call. */
    void (*on_close)(void *ud);
} bh_http_upgrade_ops_t;

/* A server on loop (call on its thread or before it runs), with a mailbox on the same loop
 * (bh_httpd_post). */
int bh_httpd_new(uv_loop_t *loop, const bh_httpd_config_t *cfg, const char *listen,
                 bh_httpd_handler_t handler, void *ud, bh_httpd_t **out, int *port, char *errmsg,
                 size_t errcap);
uv_loop_t *bh_httpd_loop(bh_httpd_t *s);
/* The bound port (port 0 resolved). */
int bh_httpd_port(const bh_httpd_t *s);
/* From any thread: run fn(arg) on s's loop thread; calls from one thread run in order. BH_OK;
 * BH_ECLOSED once bh_httpd_close_all has run (the caller keeps arg); BH_ENOMEM. Valid until
 * bh_httpd_free, so free an httpd only when no other thread can still post to it. */
int bh_httpd_post(bh_httpd_t *s, void (*fn)(void *), void *arg);
void bh_httpd_stop_accepting(bh_httpd_t *s);
/* Use a loaded certificate (bh_net_tls_load) for new connections, existing ones keep theirs
 * (bh_net_set_tls); on the loop's thread. This is how SIGHUP reloads TLS. */
int bh_httpd_set_tls(bh_httpd_t *s, bh_net_tls_t *t);
/* Close every connection now. The mailbox closes first: calls still queued for this loop run
 * here (a connection still migrating here is closed unhandled), later posts fail. Also from
 * inside a posted call. */
void bh_httpd_close_all(bh_httpd_t *s);
/* Free after the loop has finished (every handle closed). */
void bh_httpd_free(bh_httpd_t *s);

/* Keep hc valid past the handler so the answer can come later (bh_http_respond); requests
 * pipelined behind it wait. Each hold needs one bh_http_release. Once the connection is gone,
 * bh_http_respond does nothing and returns BH_ECLOSED. */
void bh_http_hold(bh_http_conn_t *hc);
void bh_http_release(bh_http_conn_t *hc);

/* Call cb(ud) once if the connection goes away while hc is held (its answer can no longer be
 * delivered; bh_http_release is still owed). cb NULL cancels it: do so before answering. */
void bh_http_on_gone(bh_http_conn_t *hc, void (*cb)(void *ud), void *ud);

/* Answer the current request. extra: header lines each ending in CRLF, or NULL. */
int bh_http_respond(bh_http_conn_t *hc, int status, const char *ctype, const char *extra,
                    const char *body, size_t len);
/* Answer with a JSON error body {"error":msg} and close the connection afterwards. */
int bh_http_respond_error(bh_http_conn_t *hc, int status, const char *msg);
/* Take the connection over: later bytes go to ops->on_data. The caller writes its own 101. */
void bh_http_upgrade(bh_http_conn_t *hc, const bh_http_upgrade_ops_t *ops, void *ud);
/* Answer with a streaming body (Server-Sent Events): the head goes out without Content-Length,
 * with Connection: close (the body ends when the connection closes), and the connection is
 * taken over as with bh_http_upgrade. Write the body with bh_conn_write on bh_http_conn_net(hc)
 * and end it with bh_conn_close. */
int bh_http_respond_stream(bh_http_conn_t *hc, int status, const char *ctype, const char *extra,
                           const bh_http_upgrade_ops_t *ops, void *ud);
bh_conn_t *bh_http_conn_net(bh_http_conn_t *hc);

/* From the handler, instead of answering: move the connection, with the current request and
 * every byte after it, to `to`'s loop thread, whose handler then sees the same request as if
 * it had arrived there (later requests on the connection stay there). Queued output is sent
 * first (input is not parsed meanwhile). BH_OK: do not use hc after the handler returns.
 * BH_EINVAL, and hc unchanged (answer it as usual): hc is held, upgraded, already answered or
 * migrating, not inside the handler, or to is NULL. Any other failure closes the connection
 * (503 when the connection is still here). */
int bh_http_migrate(bh_http_conn_t *hc, bh_httpd_t *to);
/* Nonzero while the handler runs for the request that arrived with a migration (the request
 * passed to bh_http_migrate), so a router can refuse to send it on again. */
int bh_http_conn_migrated(const bh_http_conn_t *hc);

#endif
