/* Internals of src/signalr shared by its files: the server, the transport-independent session
 * (bh_sr_conn_t) and the small function table each transport (WebSockets, Server-Sent Events,
 * Long Polling) implements, the connection-token registry and HTTP request helpers. */
#ifndef BH_SIGNALR_INTERNAL_H
#define BH_SIGNALR_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "../base/buf.h"
#include "../base/metrics.h"
#include "protocol.h"
#include "signalr.h"

/* A connection token: 16 random id bytes, 8 bytes of expiry (ms, big-endian; the top bit says
 * stateful reconnect was negotiated), 16 bytes of HMAC-SHA256 over both and the API key id,
 * in base64url. Any node with the secret can check it (WebSockets need no shared state). */
#define BH_SR_TOKEN_RAW 40
#define BH_SR_TOKEN_CHARS 54
#define BH_SR_TOKEN_TTL_MS 120000
#define BH_SR_CONN_ID_CHARS 22
#define BH_SR_CORS_MAX 512

typedef struct bh_sr_transport bh_sr_transport_t;

/* Where a session is in its life. PENDING: negotiated, no transport yet (in the pending FIFO);
 * OPEN: a transport is attached; DETACHED: a stateful-reconnect WebSocket dropped and the
 * session waits for the client to come back within the reconnect window. */
enum { BH_SR_PENDING, BH_SR_OPEN, BH_SR_DETACHED };

struct bh_sr_conn {
    bh_sr_server_t *srv;
    bh_sr_conn_t *prev, *next;     /* srv->pending (PENDING) or srv->conns (otherwise) */
    bh_sr_conn_t *hnext;           /* registry chain */
    bh_sr_conn_t *onext;           /* owner map chain (shared.c; under its lock) */
    uint64_t hash;                 /* of the token: registry and owner map */
    const bh_sr_transport_t *tp;   /* NULL while PENDING */
    void *att;                     /* the transport's state for this session; NULL when none */
    const bh_sr_protocol_t *proto; /* set by the handshake */
    uv_loop_t *loop;
    uv_timer_t timer; /* timeouts, pings, deferred work; the session is freed when it closes */
    void *app;
    bh_buf_t in;         /* an incomplete message carried between reads */
    uint64_t expires_ms; /* PENDING: forgotten after this */
    uint64_t opened_ms, last_recv_ms, last_send_ms, detached_ms;
    int state;
    unsigned registered : 1, listed : 1, timer_on : 1, handshaken : 1, connected : 1, closing : 1,
        finished : 1, finish_due : 1, binary : 1, stateful_ok : 1, stateful : 1, ack_due : 1,
        replay_off : 1, blocked : 1, resume_due : 1, input_paused : 1, stalled : 1, counted : 1,
        gauged : 1;
    bh_metric_t gauge;      /* the connections gauge it counts in, while gauged */
    const char *end_reason; /* why it ended, for the log (static text; NULL: the transport) */
    /* input backpressure: while blocked, the client's output backed up and unhandled input
     * waits in `in`; stall_ms/stall_taken: when the client last took some of its output, and how
     * much it had */
    uint64_t stall_ms;
    uint64_t stall_taken;
    bh_http_conn_t *held_post;      /* an HTTP POST answered once `in` has room again */
    char post_cors[BH_SR_CORS_MAX]; /* its CORS header lines */
    /* stateful reconnect: outbound trackable messages not yet acknowledged, oldest first, each
     * stored as a 4-byte length and its framed bytes from replay_head on */
    bh_buf_t replay;
    size_t replay_head, replay_count;
    uint64_t out_seq;      /* id of the last trackable message sent */
    uint64_t replay_first; /* id of the oldest message in replay */
    uint64_t in_next;      /* id the next inbound trackable message will have */
    uint64_t in_latest;    /* highest inbound id processed */
    char user_id[BH_SR_ID_MAX + 1];
    char key_id[BH_SR_ID_MAX + 1];
    char id[BH_SR_CONN_ID_CHARS + 1];
    char token[BH_SR_TOKEN_CHARS + 1]; /* "" when not registered (skipNegotiation) */
};

/* A transport: how the session's framed bytes reach the client and how it ends. */
struct bh_sr_transport {
    const char *name;
    int binary;             /* can carry the Binary transfer format */
    int inherent_keepalive; /* Long Polling: no pings, no hub-level client timeout */
    /* Deliver framed hub bytes (one or more messages) to the client. */
    int (*send)(bh_sr_conn_t *c, const char *data, size_t len);
    /* Nothing more will be sent: end after what is queued. ws_code/reason for WebSockets. Must
     * not finish the session synchronously (bh_sr_session_finish_later). */
    void (*end)(bh_sr_conn_t *c, uint16_t ws_code, const char *reason);
    /* The session is going away: forget it and drop the connection (c->att is cleared). */
    void (*detach)(bh_sr_conn_t *c);
    /* Optional: the transport's next deadline (loop ms, UINT64_MAX = none) and its timer work;
     * tick returns 1 when it finished the session. */
    uint64_t (*due)(const bh_sr_conn_t *c);
    int (*tick)(bh_sr_conn_t *c, uint64_t now);
    /* Input backpressure. congested: so much output waits for the client that its input
     * should wait; watch: call bh_sr_session_drained once most of it was taken; taken
     * (optional): output bytes the client has taken so far, to spot one that stopped reading
     * (cut once blocked, BH_SR_STALL_MS without taking BH_SR_STALL_MIN); pause_input (optional):
     * stop (1) or resume (0) reading the client's own connection (NULL: the client sends with HTTP
     * POST). */
    int (*congested)(const bh_sr_conn_t *c);
    void (*watch)(bh_sr_conn_t *c);
    uint64_t (*taken)(const bh_sr_conn_t *c);
    void (*pause_input)(bh_sr_conn_t *c, int pause);
};

/* Output waiting in a WebSocket or SSE connection above which the client's input waits, and
 * below which it is handled again. Well under the connection's output cap (1 MiB). */
#define BH_SR_OUT_HIGH (256 * 1024)
#define BH_SR_OUT_LOW (64 * 1024)
/* Unhandled input above which the client's connection is no longer read (POSTs are held). */
#define BH_SR_IN_MAX (4 * 1024 * 1024)
/* A client that takes less than BH_SR_STALL_MIN bytes of its output in BH_SR_STALL_MS, while
 * its input waits for that output to drain, has stopped reading: it is cut. (A paused reader
 * still takes some 100 KiB as the kernel's buffers fill.) */
#define BH_SR_STALL_MS 5000
#define BH_SR_STALL_MIN BH_SR_OUT_HIGH

extern const bh_sr_transport_t bh_sr_ws_transport;
extern const bh_sr_transport_t bh_sr_sse_transport;
extern const bh_sr_transport_t bh_sr_lp_transport;

struct bh_sr_server {
    bh_sr_config_t cfg;
    char hub_path[256];
    char negotiate_path[270];
    const bh_sr_method_t *methods;
    size_t nmethods;
    bh_sr_hooks_t hooks;
    void *ud;
    uint8_t secret[32]; /* the shared one's copy */
    bh_sr_shared_t *shared;
    int own_shared;      /* made by bh_sr_server_new (no shared in the config) */
    bh_httpd_t *httpd;   /* of the server's thread; set under the owner map's lock */
    bh_sr_conn_t *conns; /* OPEN and DETACHED sessions */
    size_t nconns;
    bh_sr_conn_t *pending, *pending_tail; /* PENDING sessions, oldest (first to expire) first */
    size_t npending;
    bh_sr_conn_t **buckets; /* registry: connection token -> session */
    size_t nbuckets, nregistered;
    char *cors_list; /* the allowed origins, NUL-separated, NULL for none */
    int cors_any;
    int closing_all, shut_down;
    bh_buf_t msg;  /* encoding scratch: one hub message */
    bh_buf_t wire; /* encoding scratch: transport framing */
};

/* One HTTP request on the hub or negotiate path, with its CORS answer headers. */
typedef struct {
    bh_sr_server_t *s;
    bh_http_conn_t *hc;
    const bh_http_request_t *req;
    uv_loop_t *loop;
    uint64_t now;
    char cors[BH_SR_CORS_MAX]; /* header lines for an allowed Origin, "" otherwise */
} bh_sr_req_t;

/* ---- signalr.c: requests ---- */

/* Answer with cors and extra header lines added. */
int bh_sr_reply(const bh_sr_req_t *rq, int status, const char *ctype, const char *extra,
                const char *body, size_t len);
/* Answer with a text/plain message. */
int bh_sr_reply_text(const bh_sr_req_t *rq, int status, const char *msg);
/* Authenticate the request's key (Bearer or access_token): BH_OK, or the 401 is sent. */
int bh_sr_authenticate(const bh_sr_req_t *rq, char user_id[BH_SR_ID_MAX + 1],
                       char key_id[BH_SR_ID_MAX + 1]);
/* Take a slot for one more session of key_id within the limits (across every server of the
 * shared state): BH_OK, the slot then the caller's (bh_sr_session_attach takes it over, or
 * give it back with bh_sr_shared_release); or the 429 (per key), 503 (total) or 500 is sent.
 * take 0: only check that one would fit (negotiate; a negotiation holds no slot). */
int bh_sr_admit(const bh_sr_req_t *rq, const char *key_id, int take);
/* The session named by the id parameter, for the key of the request, or NULL with the answer
 * sent (400 no id, 401 key, 404 unknown, 403 another key) or the request migrated to the
 * server that owns the session (once: a request that arrived by migration is answered here). */
bh_sr_conn_t *bh_sr_lookup(const bh_sr_req_t *rq);
/* The request names token, which this server does not hold: when another server owns it, the
 * connection moves there (bh_http_migrate) and this returns 1; else 0. */
int bh_sr_route(const bh_sr_req_t *rq, const char *token, size_t n);

/* ---- throttle.c: failed authentications per source address ---- */

/* A source address as the throttle counts it: an IPv4 address whole (also when it reaches an
 * IPv6 socket as ::ffff:a.b.c.d), an IPv6 address by its /64, which one client usually owns. */
typedef struct {
    unsigned char b[9]; /* 4 or 6, then the 4 address or 8 prefix bytes (rest zero) */
} bh_sr_addr_t;

#define BH_SR_THROTTLE_MAX 65536 /* addresses remembered at most */

typedef struct bh_sr_throttle bh_sr_throttle_t;

/* BH_OK, or BH_EINVAL for a family other than AF_INET / AF_INET6. */
int bh_sr_addr_from(const struct sockaddr *sa, bh_sr_addr_t *out);
/* "192.0.2.1" or "2001:db8:1:2::/64" (cap >= 64). */
void bh_sr_addr_text(const bh_sr_addr_t *a, char *out, size_t cap);
/* A table of at most max addresses (a power of two), each a bucket of burst failures refilled
 * at rate per second. BH_ENOMEM. */
int bh_sr_throttle_new(double rate, double burst, size_t max, uint64_t seed,
                       bh_sr_throttle_t **out);
void bh_sr_throttle_free(bh_sr_throttle_t *t);
/* 0 when a may authenticate now, else the whole seconds (>= 1) until it has a token again. */
uint64_t bh_sr_throttle_wait(bh_sr_throttle_t *t, const bh_sr_addr_t *a, uint64_t now_ms);
/* A failed authentication from a takes one token. Returns 1 when it took the last one (a is
 * throttled from now on), 0 otherwise. A new address, when the table is full, takes the place
 * of the one that failed longest ago. */
int bh_sr_throttle_fail(bh_sr_throttle_t *t, const bh_sr_addr_t *a, uint64_t now_ms);
/* Addresses in the table (refilled ones may linger until their place is needed). */
size_t bh_sr_throttle_size(const bh_sr_throttle_t *t);

/* ---- shared.c: state shared by the servers of every thread, each part behind a mutex ---- */

/* Fill in the defaults of the fields that select theirs when 0. */
void bh_sr_config_fill(bh_sr_config_t *cfg);
/* Copy out the token secret (every server signs and checks tokens with the same one). */
void bh_sr_shared_secret(const bh_sr_shared_t *sh, uint8_t secret[32]);
uint64_t bh_sr_shared_hash(const bh_sr_shared_t *sh, const char *token, size_t n);
/* Count one more session of key_id if the limits allow (checked and counted under one lock;
 * take 0: only checked): BH_OK; BH_ELIMIT key at max_conns_per_key; BH_ETOOBIG max_conns in
 * all; BH_ENOMEM. */
int bh_sr_shared_acquire(bh_sr_shared_t *sh, const char *key_id, int take);
void bh_sr_shared_release(bh_sr_shared_t *sh, const char *key_id);
/* Sessions counted for key_id, or in all when key_id is NULL. */
size_t bh_sr_shared_count(bh_sr_shared_t *sh, const char *key_id);
/* bh_sr_throttle_wait and _fail on the shared table; fail returns the wait when it took the
 * address's last token (0 otherwise). */
uint64_t bh_sr_shared_throttle_wait(bh_sr_shared_t *sh, const bh_sr_addr_t *a, uint64_t now_ms);
uint64_t bh_sr_shared_throttle_fail(bh_sr_shared_t *sh, const bh_sr_addr_t *a, uint64_t now_ms);
/* The owner map: registered session (c->token, c->hash set) -> its server. add: BH_EEXIST when
 * any server holds the token, BH_ENOMEM; remove only what was added. */
int bh_sr_owner_add(bh_sr_shared_t *sh, bh_sr_conn_t *c);
void bh_sr_owner_remove(bh_sr_shared_t *sh, bh_sr_conn_t *c);
/* The server holding token (NULL: none), and its httpd (NULL until set). */
bh_sr_server_t *bh_sr_owner_find(bh_sr_shared_t *sh, const char *token, size_t n,
                                 bh_httpd_t **httpd);
void bh_sr_owner_set_httpd(bh_sr_shared_t *sh, bh_sr_server_t *s, bh_httpd_t *h);

/* ---- registry.c: tokens and the registry ---- */

void bh_sr_token_new(const bh_sr_server_t *s, uint64_t now, const char *key_id, int stateful,
                     char token[BH_SR_TOKEN_CHARS + 1], char id[BH_SR_CONN_ID_CHARS + 1]);
/* BH_OK when token is ours, unexpired and issued to key_id: id and *stateful are set. */
int bh_sr_token_check(const bh_sr_server_t *s, uint64_t now, const char *token, size_t n,
                      const char *key_id, char id[BH_SR_CONN_ID_CHARS + 1], int *stateful);
void bh_sr_random_id(char id[BH_SR_CONN_ID_CHARS + 1]);
/* The registered session with this token (expired PENDING ones are dropped first). */
bh_sr_conn_t *bh_sr_registry_find(bh_sr_server_t *s, const char *token, size_t n, uint64_t now);
/* Register c by its token here and in the owner map: BH_EEXIST when some server holds the
 * token already, BH_ENOMEM. */
int bh_sr_registry_add(bh_sr_server_t *s, bh_sr_conn_t *c);
void bh_sr_registry_remove(bh_sr_server_t *s, bh_sr_conn_t *c);
void bh_sr_registry_free(bh_sr_server_t *s);
/* Free PENDING sessions whose token expired (all of them when now is UINT64_MAX). */
void bh_sr_pending_sweep(bh_sr_server_t *s, uint64_t now);

/* ---- session.c ---- */

/* A PENDING session (in the pending FIFO, expiring at expires_ms), or a fresh one to attach at
 * once (expires_ms 0). NULL when out of memory. token may be "" (not registered). */
bh_sr_conn_t *bh_sr_session_new(bh_sr_server_t *s, const char *user_id, const char *key_id,
                                const char *id, const char *token, uint64_t expires_ms);
/* Free a session that never had a transport (no timer yet). */
void bh_sr_session_free_pending(bh_sr_conn_t *c);
/* Attach the first transport; the handshake timeout starts. The session takes over the slot
 * the caller took with bh_sr_admit. */
void bh_sr_session_attach(bh_sr_conn_t *c, const bh_sr_transport_t *tp, void *att, uv_loop_t *loop,
                          uint64_t now);
/* A stateful-reconnect WebSocket came back (the old one, if any, is already detached): send
 * Sequence and replay every unacknowledged message. */
void bh_sr_session_reattach(bh_sr_conn_t *c, void *att, uint64_t now);
/* Whether a new WebSocket with this session's token may take it over. */
int bh_sr_session_resumable(const bh_sr_conn_t *c);
/* Bytes from the client (handshake, then hub messages in the negotiated protocol). */
void bh_sr_session_feed(bh_sr_conn_t *c, const char *data, size_t len);
/* Close with a Close message carrying "Connection closed with an error. " what detail. */
void bh_sr_session_error(bh_sr_conn_t *c, const char *what, const char *detail);
/* The transport's output backed up earlier and has drained: handle waiting input (from the
 * session timer's next turn; safe anywhere). */
void bh_sr_session_drained(bh_sr_conn_t *c);
/* Whether so much input waits that the client must wait (a POST is then held: hold_post). */
int bh_sr_session_input_full(const bh_sr_conn_t *c);
/* Answer this POST (200) once the waiting input drops under BH_SR_IN_MAX (404 if the session
 * ends first). */
void bh_sr_session_hold_post(bh_sr_conn_t *c, bh_http_conn_t *hc, const char *cors);
/* The transport's connection is gone (c->att already cleared): detach a stateful session,
 * finish any other. */
void bh_sr_session_lost(bh_sr_conn_t *c);
/* The end: on_disconnected, out of the registry and lists, transport detached, timer closed
 * (memory freed by its close callback). Only from loop callbacks, never inside a hub call. */
void bh_sr_session_finish(bh_sr_conn_t *c);
/* Finish from the session timer's next turn (safe anywhere). */
void bh_sr_session_finish_later(bh_sr_conn_t *c);
/* Recompute the session timer (a transport deadline changed). */
void bh_sr_session_rearm(bh_sr_conn_t *c);
uint64_t bh_sr_session_now(const bh_sr_conn_t *c);

/* ---- transports' HTTP entry points ---- */

void bh_sr_ws_request(bh_sr_req_t *rq);
void bh_sr_sse_request(bh_sr_req_t *rq, bh_sr_conn_t *c);
void bh_sr_lp_poll(bh_sr_req_t *rq, bh_sr_conn_t *c);
void bh_sr_lp_delete(bh_sr_req_t *rq, bh_sr_conn_t *c);

#endif
