/* TCP listeners and connections on one libuv loop. Bytes in through a handler, bytes out
 * through a capped per-connection buffer that is written with one uv_write per loop turn
 * (writes queued anywhere during a turn are batched). One timer per connection. Optional TLS
 * on the listener, invisible to the handler: it sees and writes plaintext only. Between loops
 * (threads): a mailbox for calls, and migration of a connection. */
#ifndef BH_NET_NET_H
#define BH_NET_NET_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct bh_net bh_net_t;
typedef struct bh_conn bh_conn_t;

typedef struct {
    /* A connection was accepted; set its user data here. */
    void (*on_open)(bh_conn_t *c, void *server_ud);
    /* Bytes arrived. data is valid only during the call. */
    void (*on_data)(bh_conn_t *c, const char *data, size_t len);
    /* The connection is gone (peer closed, error, or bh_conn_close finished); last call. */
    void (*on_close)(bh_conn_t *c);
} bh_conn_handler_t;

/* A loaded TLS certificate and key (an OpenSSL server context), reference-counted and safe to
 * share between the listeners of several threads: sharing one gives them one session cache and
 * one set of session-ticket keys, so a client resumes its session whichever thread accepts it,
 * and a reload switches every listener to the same certificate. */
typedef struct bh_net_tls bh_net_tls_t;
/* Load cert_file and key_file (PEM) into *out (one reference). errmsg: one line on failure. */
int bh_net_tls_load(const char *cert_file, const char *key_file, bh_net_tls_t **out, char *errmsg,
                    size_t errcap);
void bh_net_tls_unref(bh_net_tls_t *t); /* NULL is fine */

typedef struct {
    /* PEM certificate (leaf first, then its chain) and its private key; both NULL = plain TCP.
     * With TLS (1.2+, ALPN http/1.1) the handler's on_open runs only once a connection's
     * handshake is done; failed or late handshakes close silently (debug log). */
    const char *cert_file;
    const char *key_file;
    uint64_t handshake_timeout_ms; /* 0 = 10 s */
    /* When set, the listener takes a reference to this loaded context instead of loading the
     * files (a reload loads once with bh_net_tls_load and hands it to bh_net_set_tls). */
    bh_net_tls_t *shared;
} bh_net_tls_config_t;

typedef struct {
    size_t max_output; /* queued output above this closes the connection (slow consumer); with
                          TLS it counts plaintext */
    bh_net_tls_config_t tls;
    int reuseport; /* SO_REUSEPORT (and SO_REUSEADDR) before bind: several listeners, e.g. one
                      per thread, share the port and the kernel spreads connections (Linux) */
} bh_net_config_t;

/* Create the network layer on loop; listen on "HOST:PORT" (IPv4 or [IPv6]:PORT; port 0 picks
 * one). *port receives the bound port. errmsg gets one line on failure. */
int bh_net_new(uv_loop_t *loop, const bh_net_config_t *cfg, const char *listen,
               const bh_conn_handler_t *h, void *server_ud, bh_net_t **out, int *port, char *errmsg,
               size_t errcap);
/* Use t (a reference is taken) for connections accepted from now on; existing connections keep
 * the context they started with (reference-counted, freed with the last of them). BH_EINVAL
 * when the layer was created without TLS. On the loop's thread. */
int bh_net_set_tls(bh_net_t *n, bh_net_tls_t *t);
int bh_net_tls_enabled(const bh_net_t *n);
/* Stop accepting (idempotent). Existing connections continue. */
void bh_net_stop_accepting(bh_net_t *n);
/* Close every connection at once (handlers' on_close run as the handles close). */
void bh_net_close_all(bh_net_t *n);
/* Free the layer after the loop has closed every handle (call after uv_run returned). */
void bh_net_free(bh_net_t *n);
size_t bh_net_connection_count(const bh_net_t *n);

void bh_conn_set_data(bh_conn_t *c, void *ud);
void *bh_conn_data(const bh_conn_t *c);
uv_loop_t *bh_conn_loop(const bh_conn_t *c);
/* Queue bytes for output. BH_ECLOSED once closing; BH_ETOOBIG (and the connection is
 * aborted) when the output cap would be exceeded. */
int bh_conn_write(bh_conn_t *c, const void *data, size_t len);
/* Graceful close: write what is queued, half-close, discard further input until the peer
 * closes or a short linger time passes, then close. */
void bh_conn_close(bh_conn_t *c);
/* Immediate close; queued output is dropped. */
void bh_conn_abort(bh_conn_t *c);
int bh_conn_closing(const bh_conn_t *c);
/* Arm the connection's single timer (one-shot, ms from now; 0 disarms). */
typedef void (*bh_conn_timer_cb)(void *arg);
void bh_conn_set_timer(bh_conn_t *c, uint64_t ms, bh_conn_timer_cb cb, void *arg);
/* Bytes queued for output and not yet accepted by the kernel: what the connection has not
 * handed to libuv yet (plaintext with TLS) plus libuv's write queue (a write libuv finished at
 * once counts no more). For backpressure: produce output only while this is small. */
size_t bh_conn_queued(const bh_conn_t *c);
/* Bytes the peer has taken so far: handed to the kernel and acknowledged by the peer (Linux
 * SIOCOUTQ; elsewhere just handed to the kernel). Ciphertext with TLS. It stops growing when
 * a client stops reading, whatever the kernel's buffers hold. */
uint64_t bh_conn_taken(const bh_conn_t *c);
/* Call cb(arg) once, from a write completion, when bh_conn_queued is at or below low after
 * it; cb NULL cancels. A connection that closes first never calls it. */
typedef void (*bh_conn_drain_cb)(void *arg);
void bh_conn_on_drain(bh_conn_t *c, size_t low, bh_conn_drain_cb cb, void *arg);
/* Stop / resume reading from the socket (input backpressure); TLS too. Idempotent. */
void bh_conn_pause_read(bh_conn_t *c);
void bh_conn_resume_read(bh_conn_t *c);
/* Peer address as text ("127.0.0.1:5555"), for logs. */
void bh_conn_peer(const bh_conn_t *c, char *out, size_t cap);
/* The connection's id for logs (conn=<id>): assigned at accept, increasing, unique across every
 * listener of the process, never 0. */
uint64_t bh_conn_id(const bh_conn_t *c);
/* Peer address as a socket address (AF_INET or AF_INET6), for per-address limits. BH_OK, or
 * BH_EIO when the socket has none (already closed). */
int bh_conn_peer_addr(const bh_conn_t *c, struct sockaddr_storage *out);

/* Migration of a connection to another loop (another thread's bh_net_t). The socket, the TLS
 * session (memory BIOs: only its owner changes) and the bytes read but not handled travel; the
 * peer sees nothing, and bytes the kernel still holds are read by the new loop. The connection
 * stays counted in bh_tcp_connections throughout (a migration is not an accept). */
typedef struct bh_conn_handoff bh_conn_handoff_t;
/* c must have no queued output (bh_conn_queued(c) == 0, else BH_EINVAL) and, with TLS, a
 * finished handshake. Stops reading, takes the socket (dup'd fd) and the TLS session out of c
 * with a copy of `pending` (bytes already read and not yet handled, e.g. the raw request), and
 * closes c's handles without touching the peer: c's on_close runs as for any close. *out is
 * owned by the caller until adopted or freed. On failure (BH_ECLOSED: c is closing; BH_EINVAL;
 * BH_ENOMEM; BH_EIO) c is left as it was. */
int bh_conn_detach(bh_conn_t *c, const char *pending, size_t len, bh_conn_handoff_t **out);
/* On n's loop thread: a new connection of n from the handoff (consumed, also on failure, when
 * the connection is closed): on_open runs (TLS: already handshaken, so at once), then on_data
 * with the pending bytes (and any plaintext the TLS session already holds), then reading
 * resumes. The connection keeps its bh_conn_id. BH_ECLOSED after bh_net_close_all. */
int bh_net_adopt(bh_net_t *n, bh_conn_handoff_t *h);
/* Drop a handoff that will not be adopted: closes the socket (the peer sees the close). */
void bh_conn_handoff_free(bh_conn_handoff_t *h);

/* Calls into a loop from any thread: a lock-free MPSC queue (Vyukov's intrusive queue; post
 * allocates the node) and one uv_async_t. Each wake-up runs every call queued by then. */
typedef struct bh_mailbox bh_mailbox_t;
/* On loop's thread (or before the loop runs). BH_ENOMEM, BH_EIO. */
int bh_mailbox_new(uv_loop_t *loop, bh_mailbox_t **out);
/* Any thread: fn(arg) runs on m's loop thread; calls from one producer run in the order posted.
 * BH_ECLOSED after close (the caller still owns arg), BH_ENOMEM. The caller must know m is
 * not yet freed (see close): guard it with its owner's lifetime, as bh_httpd_post does. */
int bh_mailbox_post(bh_mailbox_t *m, void (*fn)(void *arg), void *arg);
/* On its loop thread (also from inside a posted call): later posts fail with BH_ECLOSED; calls
 * still queued are handed to drop(fn, arg) (drop NULL: they are run) before this returns; m is
 * freed once its handle has closed (the loop must run on). Idempotent until then. */
void bh_mailbox_close(bh_mailbox_t *m, void (*drop)(void (*fn)(void *), void *arg));

#endif
