/* ASP.NET Core SignalR server side: negotiate (v0, v1) with CORS, the WebSockets, Server-Sent
 * Events and Long Polling transports, the JSON and MessagePack hub protocols, keep-alive and
 * timeouts, stateful reconnect (Ack/Sequence with a replay buffer) and graceful shutdown.
 * The hub above registers methods; this layer routes invocations and answers unknown ones. */
#ifndef BH_SIGNALR_SIGNALR_H
#define BH_SIGNALR_SIGNALR_H

#include <stddef.h>
#include <stdint.h>

#include "../base/json.h"
#include "../base/metrics.h"
#include "../http/server.h"

#define BH_SR_ID_MAX 64

typedef struct bh_sr_server bh_sr_server_t;
typedef struct bh_sr_conn bh_sr_conn_t;
/* What the servers of all I/O threads share (see bh_sr_shared_new). */
typedef struct bh_sr_shared bh_sr_shared_t;

/* A hub method. Validate args (the JSON array of arguments), send any events, and return
 * BH_OK (Completion with result null) or set *error to a static message (Completion error). */
typedef int (*bh_sr_method_fn)(void *ud, bh_sr_conn_t *c, const bh_json_t *args,
                               const char **error);

typedef struct {
    const char *name;
    bh_sr_method_fn fn;
    /* Counters of its invocations that completed without / with an error. */
    bh_metric_t ok_metric, error_metric;
} bh_sr_method_t;

typedef struct {
    /* Resolve an API key to its user; BH_OK or BH_ENOTFOUND. */
    int (*authenticate)(void *ud, const char *key, size_t len, char user_id[BH_SR_ID_MAX + 1],
                        char key_id[BH_SR_ID_MAX + 1]);
    /* The connection finished its handshake / is gone (the last call for it). */
    void (*on_connected)(void *ud, bh_sr_conn_t *c);
    void (*on_disconnected)(void *ud, bh_sr_conn_t *c);
} bh_sr_hooks_t;

typedef struct {
    const char *hub_path;          /* "/ExecutionLiveServer/v1" */
    uint64_t keepalive_ms;         /* server Ping after this much send silence (15000) */
    uint64_t client_timeout_ms;    /* close a connection silent this long (30000) */
    uint64_t handshake_timeout_ms; /* 15000 */
    size_t max_message;            /* largest inbound hub message (32768) */
    /* The fields below select their default when 0 / NULL. */
    uint64_t lp_poll_timeout_ms;  /* Long Polling: hold a poll this long without data (90000) */
    uint64_t reconnect_window_ms; /* stateful reconnect: keep a dropped session (30000) */
    size_t replay_max_bytes;      /* stateful reconnect: unacknowledged bytes kept (1 MiB) */
    size_t replay_max_messages;   /* ... and messages (16384) */
    size_t lp_max_queued;         /* Long Polling: bytes waiting for a poll (1 MiB); more closes;
                                     input waits while half of it is queued */
    size_t max_batch; /* largest WebSocket message, which may batch many hub messages (1 MiB) */
    int no_stateful_reconnect; /* never offer useStatefulReconnect */
    const char *cors_origins;  /* allowed browser origins, comma-separated, "*" for any;
                                  NULL: same-origin only */
    /* Sessions (negotiated and not yet expired, open, or waiting to resume) at most per API key
     * id (32; beyond: 429) and in all (100000; beyond: 503). Checked by every request that
     * would create one: negotiate and a WebSocket without a known session. */
    size_t max_conns_per_key;
    size_t max_conns;
    /* Failed authentications (401) per source address (IPv4 address, IPv6 /64): a token bucket
     * of auth_fail_burst (20) refilled at auth_fail_rate per second (1). An address with no
     * token left gets 429 with Retry-After for every request that needs authentication, its
     * key not looked at, until a token is back. */
    double auth_fail_rate;
    size_t auth_fail_burst;
    /* The state shared with the servers of the other threads: the limits above (counted across
     * them all; a shared one's limits and auth_fail_* apply, the server's own are not used), the
     * failed-authentication table, which server owns each session, the token secret. NULL:
     * the server makes a private one. */
    bh_sr_shared_t *shared;
} bh_sr_config_t;

/* Once per process, before the servers; its limits (max_conns_per_key, max_conns,
 * auth_fail_rate, auth_fail_burst; 0 selects the default) come from cfg. Thread-safe inside;
 * free it after every server using it is freed. BH_ENOMEM. */
int bh_sr_shared_new(const bh_sr_config_t *cfg, bh_sr_shared_t **out);
void bh_sr_shared_free(bh_sr_shared_t *sh);

int bh_sr_server_new(const bh_sr_config_t *cfg, const bh_sr_method_t *methods, size_t nmethods,
                     const bh_sr_hooks_t *hooks, void *ud, bh_sr_server_t **out);
/* Close every connection with a Close message (allowReconnect as given): WebSockets and SSE
 * send it at once, Long Polling in the pending or next poll; the connections then end. New
 * negotiates and WebSockets are refused (503) from now on. */
void bh_sr_server_close_all(bh_sr_server_t *s, const char *error, int allow_reconnect);
/* End whatever is left now (after close_all's grace time): on_disconnected runs for every
 * connection, their sockets are aborted and timers closed. Run the loop afterwards so the
 * handles finish closing; then bh_sr_server_free. Idempotent. */
void bh_sr_server_shutdown(bh_sr_server_t *s);
void bh_sr_server_free(bh_sr_server_t *s);
size_t bh_sr_server_connections(const bh_sr_server_t *s);
/* The httpd of the server's thread: requests for sessions this server owns that reach another
 * thread's server migrate to it (bh_http_migrate). Until set, none are migrated here. */
void bh_sr_server_set_httpd(bh_sr_server_t *s, bh_httpd_t *h);

/* Route an HTTP request. Returns 1 when the path belongs to the hub (answered, upgraded, or
 * migrated to the thread whose server owns the session it names), 0 when it does not (the
 * caller answers). */
int bh_sr_handle_http(bh_sr_server_t *s, bh_http_conn_t *hc, const bh_http_request_t *req,
                      const char *body, size_t len);

const char *bh_sr_conn_user(const bh_sr_conn_t *c);
const char *bh_sr_conn_key_id(const bh_sr_conn_t *c);
const char *bh_sr_conn_id(const bh_sr_conn_t *c);
void bh_sr_conn_set_data(bh_sr_conn_t *c, void *ud);
void *bh_sr_conn_data(const bh_sr_conn_t *c);
/* Send an Invocation without id (a client event): target with one argument given as JSON
 * (transcoded for MessagePack). Never ends the connection synchronously: a close it causes
 * reaches on_disconnected from a later loop callback. */
int bh_sr_send_event(bh_sr_conn_t *c, const char *target, const char *arg_json, size_t len);
/* The same with the argument given pre-encoded for both protocols: json (JSON text) and mp (one
 * MessagePack value), each copied as it is into the message of the connection's protocol.
 * Either may be NULL when the connection does not speak that protocol (bh_sr_conn_binary);
 * a MessagePack connection given only json gets it transcoded. BH_EINVAL when the one needed
 * is missing. */
int bh_sr_send_event_encoded(bh_sr_conn_t *c, const char *target, const char *json, size_t json_len,
                             const char *mp, size_t mp_len);
/* 1 when the connection speaks the MessagePack protocol (after its handshake), else 0. */
int bh_sr_conn_binary(const bh_sr_conn_t *c);
/* Send a Close message (error may be NULL) and close the connection; on_disconnected follows
 * from a later loop callback. */
void bh_sr_close(bh_sr_conn_t *c, const char *error, int allow_reconnect);

#endif
