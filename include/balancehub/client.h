/* libbalancehub: a C client for the balances API of a SignalR execution hub (balancehub, or any
 * server that speaks the same API): negotiate, WebSockets over ws:// or wss://, the JSON or
 * MessagePack hub protocol, GetBalances, typed snapshots and live updates with exact decimal
 * amounts, sequence-gap detection with automatic re-snapshot, and automatic reconnection with
 * exponential backoff and jitter.
 *
 * Event loop: each client runs its own small loop on poll(2) over its one socket (plus a wake-up
 * pipe), rather than on libuv. A client has a single connection, so a loop library buys nothing
 * here, and not imposing one keeps the library usable from any program: call bh_client_run() on a
 * thread of your own (blocking), or drive bh_client_poll() yourself, either with a timeout or
 * from your own loop (epoll, libuv, select) watching bh_client_fd() for bh_client_events() and
 * waking up after bh_client_timeout() at the latest. TLS is OpenSSL over memory BIOs, so the
 * library never writes to a socket that could raise SIGPIPE and never touches signal handlers.
 *
 * Threads: a bh_client_t belongs to one thread at a time; nothing in it is locked. Different
 * clients on different threads are independent (the library has no global state). The single
 * exception is bh_client_stop(), which any thread or a signal handler may call. Callbacks run on
 * the calling thread, only inside bh_client_connect(), bh_client_poll() and bh_client_run().
 * From a callback you may call bh_client_get_balances(), bh_client_stop(), bh_client_state(),
 * bh_client_last_error() and the bh_balances_ and bh_decimal_ functions; not bh_client_free(),
 * bh_client_connect(), bh_client_poll() or bh_client_run() (those return BH_CLIENT_ESTATE).
 *
 * Ownership: strings and structures passed to callbacks belong to the library and are valid
 * only until the callback returns (bh_balances_dup() keeps a copy). The library copies every
 * option string in bh_client_new(), so the caller's may go away afterwards. Blocking points:
 * host name resolution (getaddrinfo) inside a connection attempt; everything else is
 * non-blocking, and every wait is bounded by the timeouts below.
 *
 * Errors: functions return 0 (BH_CLIENT_OK) or a negative BH_CLIENT_E* code;
 * bh_client_strerror() names a code, and bh_client_last_error() gives the last failure of a
 * client in words (e.g. which certificate check failed). The API key never appears in either. */
#ifndef BALANCEHUB_CLIENT_H
#define BALANCEHUB_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define BH_CLIENT_API __attribute__((visibility("default")))
#else
#define BH_CLIENT_API
#endif

#define BH_CLIENT_VERSION "0.1.0"

/* ---- error codes ---------------------------------------------------------------------------- */

enum {
    BH_CLIENT_OK = 0,
    BH_CLIENT_EINVAL = -1,     /* bad argument, URL or option */
    BH_CLIENT_ENOMEM = -2,     /* out of memory */
    BH_CLIENT_ERESOLVE = -3,   /* the host name did not resolve */
    BH_CLIENT_ECONNECT = -4,   /* TCP connection refused or unreachable */
    BH_CLIENT_ETLS = -5,       /* TLS handshake failed, or the certificate was not trusted */
    BH_CLIENT_EAUTH = -6,      /* the server refused the API key (HTTP 401 or 403) */
    BH_CLIENT_EHTTP = -7,      /* unexpected HTTP answer (status, negotiate response) */
    BH_CLIENT_EPROTO = -8,     /* the server broke the WebSocket, SignalR or balances format */
    BH_CLIENT_EHANDSHAKE = -9, /* the server refused the SignalR handshake (e.g. the protocol) */
    BH_CLIENT_ECLOSED = -10,   /* the server closed the connection */
    BH_CLIENT_ETIMEOUT = -11,  /* connecting, or waiting for the server, took too long */
    BH_CLIENT_EIO = -12,       /* socket or system error */
    BH_CLIENT_ESERVER = -13,   /* the server answered with an error event (e.g. preChecksError) */
    BH_CLIENT_EINVOKE = -14,   /* an invocation completed with an error */
    BH_CLIENT_ESTATE = -15,    /* not allowed in the client's current state */
};

/* Static text naming an error code ("the server refused the API key"); never NULL. */
BH_CLIENT_API const char *bh_client_strerror(int err);

/* ---- exact decimals ------------------------------------------------------------------------- */

/* An exact decimal amount: a signed 128-bit two's-complement count of 10^-18 units, split into
 * its upper (hi) and lower (lo) 64 bits. Range |value| < 10^20 with 18 digits after the point,
 * the range of balancehub's ledger. Amounts with more than 18 fraction digits (possible from
 * other servers) are rounded half to even at the 18th. Under MessagePack the server sends amounts
 * that are not integers as float64; they arrive here as the shortest decimal that reads back as
 * the same double (0.1 stays 0.1), so use the JSON protocol when every digit matters. */
typedef struct {
    int64_t hi;
    uint64_t lo;
} bh_decimal_t;

#define BH_DECIMAL_SCALE 18
/* Longest text of bh_decimal_to_string: sign, 20 integer digits, point, 18 digits, NUL. */
#define BH_DECIMAL_STRLEN 48

/* Shortest exact text ("0.5", "1000", "-0.000000000000000001"), NUL-terminated, into out (at
 * least BH_DECIMAL_STRLEN bytes); returns its length. */
BH_CLIENT_API size_t bh_decimal_to_string(bh_decimal_t d, char *out);
/* Parse a JSON-number-shaped decimal ("12.5", "-1e-3"): BH_CLIENT_OK, or BH_CLIENT_EINVAL for bad
 * syntax or a value out of range (more than 18 fraction digits are rounded half to even). */
BH_CLIENT_API int bh_decimal_parse(const char *text, bh_decimal_t *out);
/* -1, 0 or 1 as a < b, a == b, a > b. */
BH_CLIENT_API int bh_decimal_cmp(bh_decimal_t a, bh_decimal_t b);
/* The nearest double (for display or charts only: doubles are not exact). */
BH_CLIENT_API double bh_decimal_to_double(bh_decimal_t d);

/* ---- balances ---------------------------------------------------------------------------------
 */

typedef enum {
    BH_BALANCES_SNAPSHOT = 1, /* subject account.balances.snapshot: the answer to GetBalances */
    BH_BALANCES_UPDATE = 2,   /* subject account.balances.update: one committed change */
} bh_balances_kind_t;

/* Why the library fetched a snapshot by itself (bh_balances_t.resync). */
typedef enum {
    BH_RESYNC_NONE = 0,      /* the answer to the application's own bh_client_get_balances() */
    BH_RESYNC_GAP = 1,       /* an update skipped a sequence number */
    BH_RESYNC_RECONNECT = 2, /* the connection was re-established */
} bh_resync_t;

/* One asset. An amount the server left out, or sent as null, reads as 0; amounts sent as JSON
 * strings are read exactly too. */
typedef struct {
    const char *name; /* "BTC" */
    bh_decimal_t available;
    bh_decimal_t allocated;
    bh_decimal_t current_exposure;
    bh_decimal_t max_exposure;
} bh_asset_balance_t;

/* One user's balances (the event's data object), with the envelope's clientId. */
typedef struct {
    bh_balances_kind_t kind;
    bh_resync_t resync;
    const char *client_id; /* the envelope's clientId; NULL when null or absent */
    const char *user_id;
    uint64_t sequence; /* rises by exactly 1 per committed change of the user */
    const bh_asset_balance_t *assets;
    size_t asset_count;
    const char *base_currency;
    bh_decimal_t total_current_exposure;
    bh_decimal_t total_max_exposure;
    int deleted; /* 1 when the user was deleted (the server then closes the connection) */
} bh_balances_t;

/* The data object as one line of JSON, in the server's member order, amounts as JSON numbers in
 * shortest exact form: {"userId":...,"sequence":N,"assets":[{"name":...,"available":...,
 * "allocated":...,"currentExposure":...,"maxExposure":...}],"baseCurrency":...,
 * "totalCurrentExposure":...,"totalMaxExposure":...,"deleted":false}. Like snprintf: writes at
 * most size bytes including a NUL (out may be NULL when size is 0) and returns the length the
 * whole text needs, without the NUL (0 only when out of memory). */
BH_CLIENT_API size_t bh_balances_to_json(const bh_balances_t *b, char *out, size_t size);
/* A deep copy in one allocation, owned by the caller (bh_balances_free). */
BH_CLIENT_API int bh_balances_dup(const bh_balances_t *b, bh_balances_t **out);
/* Free a copy made by bh_balances_dup (NULL is fine). Never pass a callback's bh_balances_t. */
BH_CLIENT_API void bh_balances_free(bh_balances_t *b);

/* ---- the client -------------------------------------------------------------------------------
 */

typedef struct bh_client bh_client_t;

typedef enum {
    BH_CLIENT_DISCONNECTED = 0, /* not started, stopped, or failed for good */
    BH_CLIENT_CONNECTING = 1,   /* first connection attempt in progress */
    BH_CLIENT_CONNECTED = 2,    /* handshake done: invocations may be sent */
    BH_CLIENT_RECONNECTING = 3, /* connection lost: waiting out the backoff, or reconnecting */
} bh_client_state_t;

/* Options. Start from bh_client_options_init(); a zero (or NULL) field means the default. */
typedef struct {
    /* The hub URL, http:// or https:// (required), e.g.
     * http://127.0.0.1:5000/ExecutionLiveServer/v1 */
    const char *url;
    /* The API key: "Authorization: Bearer KEY" on negotiate and the WebSocket request, and the
     * access_token query parameter of the WebSocket request. NULL: none. */
    const char *api_key;
    /* Hub protocol: "json" (default) or "messagepack". */
    const char *protocol;
    /* PEM file of CA certificates to trust instead of the system's default store, for https. The
     * server certificate and its host name (or IP address) are always verified. */
    const char *ca_file;
    /* Connect straight to the WebSocket without POST .../negotiate (the server must allow it). */
    int skip_negotiation;
    /* One connection attempt (resolve, TCP, TLS, negotiate, upgrade, handshake). Default 10000. */
    int connect_timeout_ms;
    /* A Ping goes out after this long without sending anything. Default 15000. */
    int keepalive_ms;
    /* The connection counts as lost after this long without receiving anything (the server
     * pings every 15 s by default). Default 30000. */
    int server_timeout_ms;
    /* Reconnection delays: attempt n (from 0) waits a random time in [d/2, d] with
     * d = min(reconnect_max_ms, reconnect_base_ms * 2^n). Defaults 500 and 30000. */
    int reconnect_base_ms;
    int reconnect_max_ms;
    /* Attempts after a connection is lost before giving up: 0 unlimited (default), -1 never
     * reconnect. The first connection is never retried: its failure is returned. */
    int reconnect_max_attempts;
    /* Largest message accepted from the server, in bytes. Default 4 MiB. */
    size_t max_message;
} bh_client_options_t;

/* Callbacks; any may be NULL. ud is the pointer given to bh_client_new. */
typedef struct {
    /* The state changed. err is 0, or why a connection ended or failed (details in
     * bh_client_last_error()). */
    void (*on_state)(bh_client_t *c, bh_client_state_t state, int err, void *ud);
    /* Balances arrived, in order: snapshots (answers to GetBalances, including the library's own
     * re-snapshots, see b->resync) and updates. An update is delivered only when its sequence is
     * the last one seen + 1; an older one is dropped; a gap triggers a re-snapshot, and updates
     * arriving until it comes are dropped because the snapshot includes them. */
    void (*on_balances)(bh_client_t *c, const bh_balances_t *b, void *ud);
    /* A GetBalances invocation completed: err 0, or BH_CLIENT_EINVOKE with the server's message,
     * or BH_CLIENT_ECLOSED when the connection ended first. Only for invocations of the
     * application (the library's re-snapshots report failures through on_error). */
    void (*on_completion)(bh_client_t *c, uint64_t invocation_id, int err, const char *message,
                          void *ud);
    /* A problem that does not end the connection: BH_CLIENT_ESERVER for an error event
     * (message "SUBJECT: TEXT", e.g. "preChecksError: clientId must not be empty"),
     * BH_CLIENT_EPROTO for an event whose data could not be read (it is skipped),
     * BH_CLIENT_EINVOKE for a failed re-snapshot. */
    void (*on_error)(bh_client_t *c, int err, const char *message, void *ud);
} bh_client_callbacks_t;

/* Fill o with the defaults (all other fields zero / NULL). */
BH_CLIENT_API void bh_client_options_init(bh_client_options_t *o);

/* Create a client (no I/O yet). Validates the URL and options and copies them; cb is copied too.
 * BH_CLIENT_EINVAL for a bad URL (not http/https, user info, bad port) or protocol name. */
BH_CLIENT_API int bh_client_new(const bh_client_options_t *o, const bh_client_callbacks_t *cb,
                                void *ud, bh_client_t **out);
/* Close the connection at once (no close handshake; use bh_client_stop and bh_client_run for a
 * clean one) and free everything. No callback runs. NULL is fine. */
BH_CLIENT_API void bh_client_free(bh_client_t *c);

/* Connect and wait until connected (returns 0), or until the attempt fails (returns its error,
 * state DISCONNECTED) within connect_timeout_ms; BH_CLIENT_ECLOSED when bh_client_stop ended
 * the wait. BH_CLIENT_ESTATE unless DISCONNECTED. */
BH_CLIENT_API int bh_client_connect(bh_client_t *c);
/* Start connecting without waiting: progress happens in bh_client_poll / bh_client_run. */
BH_CLIENT_API int bh_client_start(bh_client_t *c);

/* Invoke GetBalances(client_id) (the server echoes client_id, 1..36 characters for balancehub).
 * The snapshot arrives through on_balances, then the completion through on_completion with
 * *invocation_id (may be NULL). The latest client_id is remembered: re-snapshots after a gap or a
 * reconnection use it. BH_CLIENT_ESTATE unless CONNECTED. */
BH_CLIENT_API int bh_client_get_balances(bh_client_t *c, const char *client_id,
                                         uint64_t *invocation_id);

/* Wait up to timeout_ms (0: do not wait, -1: until something happens) for the socket or a timer,
 * then do what is due: read and dispatch messages (callbacks), send pings, detect a silent
 * server, reconnect. Returns 0 while the client is usable, or the error that ended it for good
 * (state DISCONNECTED: key refused, certificate not trusted, Close without reconnect, attempts
 * exhausted); after bh_client_stop it returns 0 with the state DISCONNECTED. */
BH_CLIENT_API int bh_client_poll(bh_client_t *c, int timeout_ms);
/* bh_client_poll until the client is DISCONNECTED: 0 after bh_client_stop, else the error that
 * ended it. Starts connecting first when DISCONNECTED and never connected. */
BH_CLIENT_API int bh_client_run(bh_client_t *c);
/* Ask the client to close: it sends a WebSocket Close, waits up to one second for the server's,
 * and then becomes DISCONNECTED (the close happens in bh_client_poll / bh_client_run; a stop
 * asked before bh_client_start or bh_client_connect applies to that connection). Async-signal-
 * safe and callable from any thread: it only sets an atomic flag and writes one byte to the
 * client's wake-up pipe. The client must outlive every such call. */
BH_CLIENT_API void bh_client_stop(bh_client_t *c);

BH_CLIENT_API bh_client_state_t bh_client_state(const bh_client_t *c);
/* The last failure in words (static until the next failure; "" when none). */
BH_CLIENT_API const char *bh_client_last_error(const bh_client_t *c);

/* For your own event loop: the descriptor to watch (-1 when none; it changes across
 * reconnections, so ask again before each wait), the poll(2) events it needs (POLLIN, POLLOUT),
 * and how long until a timer is due in ms (-1: none). When any fires, call bh_client_poll(c, 0).
 * bh_client_stop from another thread wakes the client's own wait only; an external loop must
 * arrange its own wake-up. */
BH_CLIENT_API int bh_client_fd(const bh_client_t *c);
BH_CLIENT_API short bh_client_events(const bh_client_t *c);
BH_CLIENT_API int bh_client_timeout(const bh_client_t *c);

#ifdef __cplusplus
}
#endif

#endif
