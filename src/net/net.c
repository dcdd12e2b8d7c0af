/* TCP listener and connections on libuv: batched writes flushed once per loop turn from
 * prepare/check handles, a hard output cap, lingering close, one timer per connection,
 * optional TLS between the socket and the handler (tls.c, memory BIOs), SO_REUSEPORT
 * listeners, and moving a live connection to another loop (detach / adopt). */
#include "net.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/sockios.h>
#include <sys/ioctl.h>
#endif

#include "../base/buf.h"
#include "../base/error.h"
#include "../base/log.h"
#include "../base/metrics.h"
#include "tls.h"

#define BH_NET_READ_BUF 65536
#define BH_NET_LINGER_MS 2000

/* Connection ids for logs, unique across every listener of the process. */
static _Atomic uint64_t next_conn_id;

struct bh_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    bh_net_t *net;
    void *ud;
    bh_buf_t out;          /* queued (plaintext with TLS), not yet handed to libuv */
    bh_buf_t inflight;     /* handed to uv_write, waiting for its callback */
    size_t inflight_plain; /* plaintext bytes behind inflight (for the output cap) */
    bh_tls_t *tls;         /* NULL without TLS */
    bh_conn_timer_cb timer_cb;
    void *timer_arg;
    bh_conn_drain_cb drain_cb; /* bh_conn_on_drain */
    void *drain_arg;
    size_t drain_low;
    uint64_t handed; /* bytes ever handed to uv_write (bh_conn_taken) */
    uint64_t id;     /* bh_conn_id */
    bh_conn_t *dirty_next;
    bh_conn_t *prev, *next;
    int open_handles;
    unsigned dirty : 1, writing : 1, closing : 1, shut : 1, dead : 1, notified : 1, paused : 1,
        detached : 1;
};

/* A connection between two loops: its socket, TLS session and unhandled input. */
struct bh_conn_handoff {
    int fd;
    bh_tls_t *tls;
    char *pending;
    size_t len;
    uint64_t id;
};

struct bh_net {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_prepare_t prepare;
    uv_check_t check;
    bh_conn_handler_t h;
    void *server_ud;
    size_t max_output;
    SSL_CTX *tls_ctx; /* for new connections; NULL without TLS */
    uint64_t handshake_timeout_ms;
    bh_conn_t *conns; /* every live connection */
    size_t nconns;
    bh_conn_t *dirty; /* connections with output to flush this turn */
    int listening, handles_closed;
    char readbuf[BH_NET_READ_BUF];
};

static void conn_flush(bh_conn_t *c);
static void conn_hard_close(bh_conn_t *c);

static void mark_dirty(bh_conn_t *c) {
    if (c->dirty)
        return;
    c->dirty = 1;
    c->dirty_next = c->net->dirty;
    c->net->dirty = c;
}

static void flush_dirty(bh_net_t *n) {
    while (n->dirty) {
        bh_conn_t *c = n->dirty;
        n->dirty = c->dirty_next;
        c->dirty = 0;
        c->dirty_next = NULL;
        conn_flush(c);
    }
}

static void on_prepare(uv_prepare_t *h) {
    flush_dirty(h->data);
}

static void on_check(uv_check_t *h) {
    flush_dirty(h->data);
}

static void conn_free_if_done(bh_conn_t *c) {
    if (c->open_handles > 0)
        return;
    bh_net_t *n = c->net;
    if (!c->notified) {
        c->notified = 1;
        if (n->h.on_close)
            n->h.on_close(c);
    }
    if (c->dirty) {
        for (bh_conn_t **p = &n->dirty; *p; p = &(*p)->dirty_next) {
            if (*p == c) {
                *p = c->dirty_next;
                break;
            }
        }
    }
    bh_buf_free(&c->out);
    bh_buf_free(&c->inflight);
    bh_tls_free(c->tls);
    free(c);
}

static void on_handle_closed(uv_handle_t *h) {
    bh_conn_t *c = h->data;
    c->open_handles--;
    conn_free_if_done(c);
}

static void conn_hard_close(bh_conn_t *c) {
    if (c->dead)
        return;
    c->dead = 1;
    bh_net_t *n = c->net;
    if (c->prev)
        c->prev->next = c->next;
    else
        n->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    n->nconns--;
    if (!c->detached) /* a detached connection stays open: its handoff counts it */
        bh_metric_gauge(BH_M_TCP_OPEN, -1);
    /* Upper layers hear of the close from the close callback, never from inside one of their
     * own calls (a write that hits the output cap), so no caller's state vanishes under it. */
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    bh_conn_t *c = h->data;
    buf->base = c->net->readbuf;
    buf->len = sizeof c->net->readbuf;
}

/* Graceful close: flush what is queued (then close_notify with TLS), half-close, linger. */
static void conn_begin_close(bh_conn_t *c) {
    if (c->closing || c->dead)
        return;
    c->closing = 1;
    uv_timer_stop(&c->timer);
    c->timer_cb = NULL;
    mark_dirty(c);
}

static void tls_log_failure(bh_conn_t *c, const char *what) {
    char peer[80];
    bh_conn_peer(c, peer, sizeof peer);
    bh_log(BH_LOG_DEBUG, what, BH_LU("conn", c->id), BH_LS("peer", peer),
           BH_LS("error", bh_tls_error(c->tls)));
}

/* Ciphertext in: finish the handshake (then the handler hears of the connection), then hand
 * every complete record's plaintext to on_data. Replies the TLS layer produced itself
 * (handshake messages, tickets, alerts) go out with this turn's flush. */
static void conn_tls_read(bh_conn_t *c, const char *data, size_t len) {
    bh_net_t *n = c->net;
    int r = bh_tls_feed(c->tls, data, len);
    if (r < 0) {
        conn_hard_close(c);
        return;
    }
    if (!bh_tls_handshake_done(c->tls)) {
        r = bh_tls_handshake(c->tls);
        if (r == BH_OK) {
            uv_timer_stop(&c->timer);
            c->notified = 0; /* from here on the handler owns the connection's user data */
            n->h.on_open(c, n->server_ud);
        } else if (r < 0 && r != BH_EAGAIN) {
            bh_metric_add(BH_M_TLS_HANDSHAKE_ERR, 1);
            tls_log_failure(c, "TLS handshake failed");
        }
    }
    /* data is in the BIO now, so the shared read buffer is free for plaintext. */
    while (r == BH_OK && !c->dead && !c->closing) {
        size_t got = 0;
        r = bh_tls_read(c->tls, n->readbuf, sizeof n->readbuf, &got);
        if (r == BH_OK) {
            bh_metric_add(BH_M_BYTES_IN, got);
            n->h.on_data(c, n->readbuf, got);
        } else if (r == BH_EPROTO)
            tls_log_failure(c, "TLS stream broken");
    }
    if (c->dead)
        return;
    if (r == BH_ECLOSED || (r < 0 && r != BH_EAGAIN)) {
        /* close_notify: answer with ours after the queued output; a failure: send the alert. */
        conn_begin_close(c);
    }
    if (bh_tls_pending(c->tls) > 0)
        mark_dirty(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    bh_conn_t *c = s->data;
    if (nread < 0) {
        conn_hard_close(c);
        return;
    }
    if (nread == 0 || c->closing || c->dead)
        return; /* lingering: input is discarded */
    if (c->tls) {
        conn_tls_read(c, buf->base, (size_t)nread);
    } else {
        bh_metric_add(BH_M_BYTES_IN, (uint64_t)nread);
        c->net->h.on_data(c, buf->base, (size_t)nread);
    }
}

static void on_linger_timeout(uv_timer_t *t) {
    conn_hard_close(t->data);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
    bh_conn_t *c = req->data;
    if (c->dead)
        return;
    if (status < 0) {
        conn_hard_close(c);
        return;
    }
    c->timer_cb = NULL;
    uv_timer_start(&c->timer, on_linger_timeout, BH_NET_LINGER_MS, 0);
}

static void on_write(uv_write_t *req, int status) {
    bh_conn_t *c = req->data;
    c->writing = 0;
    bh_buf_reset(&c->inflight);
    c->inflight_plain = 0;
    if (c->dead)
        return;
    if (status < 0) {
        conn_hard_close(c);
        return;
    }
    conn_flush(c);
    if (c->drain_cb && !c->dead && bh_conn_queued(c) <= c->drain_low) {
        bh_conn_drain_cb cb = c->drain_cb;
        c->drain_cb = NULL;
        cb(c->drain_arg);
    }
}

/* Everything queued this turn goes through one SSL_write; the ciphertext (with whatever the
 * TLS layer produced on its own) becomes the next write. */
static int conn_tls_encrypt(bh_conn_t *c) {
    if (c->out.len > 0) {
        int r = bh_tls_write(c->tls, c->out.data, c->out.len);
        if (r < 0)
            return r;
        c->inflight_plain = c->out.len;
        bh_buf_reset(&c->out);
    }
    if (c->closing)
        bh_tls_close_notify(c->tls);
    return bh_tls_take(c->tls, &c->inflight);
}

static void conn_flush(bh_conn_t *c) {
    if (c->dead || c->writing)
        return;
    if (c->tls) {
        if (conn_tls_encrypt(c) < 0) {
            conn_hard_close(c);
            return;
        }
    } else if (c->out.len > 0) {
        bh_buf_t tmp = c->inflight;
        c->inflight = c->out;
        c->out = tmp;
        c->inflight_plain = c->inflight.len;
    }
    if (c->inflight.len == 0) {
        if (c->closing && !c->shut) {
            c->shut = 1;
            c->sreq.data = c;
            if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) < 0)
                conn_hard_close(c);
        }
        return;
    }
    uv_buf_t b = uv_buf_init(c->inflight.data, (unsigned)c->inflight.len);
    c->wreq.data = c;
    c->writing = 1;
    c->handed += c->inflight.len;
    bh_metric_add(BH_M_BYTES_OUT, c->inflight_plain);
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write) < 0) {
        c->writing = 0;
        conn_hard_close(c);
    }
}

static void on_handshake_timeout(uv_timer_t *t) {
    bh_conn_t *c = t->data;
    char peer[80];
    bh_conn_peer(c, peer, sizeof peer);
    bh_log(BH_LOG_DEBUG, "TLS handshake not done in time", BH_LU("conn", c->id),
           BH_LS("peer", peer));
    bh_metric_add(BH_M_TLS_HANDSHAKE_ERR, 1);
    bh_metric_add(BH_M_LIMIT_TIMEOUT, 1);
    conn_hard_close(c);
}

/* A connection with its handles initialised and counted in n (the socket is not open yet). */
static bh_conn_t *conn_new(bh_net_t *n) {
    bh_conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->net = n;
    bh_buf_init(&c->out, 0);
    bh_buf_init(&c->inflight, 0);
    uv_tcp_init(n->loop, &c->tcp);
    uv_timer_init(n->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->open_handles = 2;
    c->next = n->conns;
    if (n->conns)
        n->conns->prev = c;
    n->conns = c;
    n->nconns++;
    return c;
}

static void on_connection(uv_stream_t *server, int status) {
    bh_net_t *n = server->data;
    if (status < 0)
        return;
    bh_conn_t *c = conn_new(n);
    if (!c)
        return;
    c->id = atomic_fetch_add(&next_conn_id, 1) + 1;
    bh_metric_gauge(BH_M_TCP_OPEN, 1);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        c->notified = 1;
        conn_hard_close(c);
        return;
    }
    bh_metric_add(BH_M_TCP_ACCEPTED, 1);
    uv_tcp_nodelay(&c->tcp, 1);
    if (n->tls_ctx) {
        /* The handler hears of the connection once the handshake is done (conn_tls_read);
         * until then the timer is the handshake deadline and a close tells nobody. */
        c->notified = 1;
        if (bh_tls_new(n->tls_ctx, &c->tls) < 0) {
            conn_hard_close(c);
            return;
        }
        uv_timer_start(&c->timer, on_handshake_timeout, n->handshake_timeout_ms, 0);
    } else {
        n->h.on_open(c, n->server_ud);
    }
    if (!c->dead && !c->paused && uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0)
        conn_hard_close(c);
}

static int parse_listen(const char *listen, struct sockaddr_storage *ss) {
    char host[256];
    const char *colon = strrchr(listen, ':');
    if (!colon || colon == listen)
        return BH_EINVAL;
    size_t hl = (size_t)(colon - listen);
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || port < 0 || port > 65535)
        return BH_EINVAL;
    if (listen[0] == '[') {
        if (hl < 2 || listen[hl - 1] != ']' || hl - 2 >= sizeof host)
            return BH_EINVAL;
        memcpy(host, listen + 1, hl - 2);
        host[hl - 2] = 0;
        return uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) ? BH_EINVAL : BH_OK;
    }
    if (hl >= sizeof host)
        return BH_EINVAL;
    memcpy(host, listen, hl);
    host[hl] = 0;
    if (strcmp(host, "localhost") == 0)
        strcpy(host, "127.0.0.1");
    return uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) ? BH_EINVAL : BH_OK;
}

/* With reuseport the socket is made here: libuv sets no SO_REUSEPORT, and it must be set before
 * bind. Either way tcp is initialised (the caller closes it on failure). A libuv error code. */
static int listener_bind(uv_loop_t *loop, uv_tcp_t *tcp, const struct sockaddr_storage *ss,
                         int reuseport) {
    uv_tcp_init(loop, tcp);
    if (!reuseport)
        return uv_tcp_bind(tcp, (const struct sockaddr *)ss, 0);
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return uv_translate_sys_error(errno);
    int one = 1, zero = 0;
    socklen_t len =
        ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    /* Dual-stack like uv_tcp_bind without UV_TCP_IPV6ONLY. */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
        (ss->ss_family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero) < 0) ||
        bind(fd, (const struct sockaddr *)ss, len) < 0) {
        int err = uv_translate_sys_error(errno);
        close(fd);
        return err;
    }
    int r = uv_tcp_open(tcp, fd);
    if (r < 0)
        close(fd);
    return r;
}

static void net_free_tls(bh_net_t *n) {
    SSL_CTX_free(n->tls_ctx); /* connections still open hold their own references */
    n->tls_ctx = NULL;
}

int bh_net_new(uv_loop_t *loop, const bh_net_config_t *cfg, const char *listen,
               const bh_conn_handler_t *h, void *server_ud, bh_net_t **out, int *port, char *errmsg,
               size_t errcap) {
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (parse_listen(listen, &ss) < 0) {
        snprintf(errmsg, errcap, "bad listen address '%s': use HOST:PORT, e.g. 127.0.0.1:5000",
                 listen);
        return BH_EINVAL;
    }
    bh_net_t *n = calloc(1, sizeof *n);
    if (!n)
        return BH_ENOMEM;
    if (cfg->tls.shared) {
        n->tls_ctx = (SSL_CTX *)cfg->tls.shared;
        SSL_CTX_up_ref(n->tls_ctx);
    } else if (cfg->tls.cert_file || cfg->tls.key_file) {
        int r = bh_tls_ctx_new(cfg->tls.cert_file, cfg->tls.key_file, &n->tls_ctx, errmsg, errcap);
        if (r < 0) {
            free(n);
            return r;
        }
    }
    if (n->tls_ctx)
        n->handshake_timeout_ms = cfg->tls.handshake_timeout_ms ? cfg->tls.handshake_timeout_ms
                                                                : BH_TLS_HANDSHAKE_TIMEOUT_MS;
    n->loop = loop;
    n->h = *h;
    n->server_ud = server_ud;
    n->max_output = cfg->max_output;
    int r = listener_bind(loop, &n->listener, &ss, cfg->reuseport);
    n->listener.data = n;
    if (r == 0)
        r = uv_listen((uv_stream_t *)&n->listener, 1024, on_connection);
    if (r < 0) {
        snprintf(errmsg, errcap, "cannot listen on %s: %s", listen, uv_strerror(r));
        uv_close((uv_handle_t *)&n->listener, NULL);
        uv_run(loop, UV_RUN_NOWAIT);
        net_free_tls(n);
        free(n);
        return BH_EIO;
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    uv_tcp_getsockname(&n->listener, (struct sockaddr *)&bound, &blen);
    *port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                              : ((struct sockaddr_in *)&bound)->sin_port);
    n->listening = 1;
    uv_prepare_init(loop, &n->prepare);
    uv_check_init(loop, &n->check);
    n->prepare.data = n;
    n->check.data = n;
    uv_prepare_start(&n->prepare, on_prepare);
    uv_check_start(&n->check, on_check);
    *out = n;
    return BH_OK;
}

int bh_net_tls_load(const char *cert_file, const char *key_file, bh_net_tls_t **out, char *errmsg,
                    size_t errcap) {
    SSL_CTX *ctx = NULL;
    int r = bh_tls_ctx_new(cert_file, key_file, &ctx, errmsg, errcap);
    *out = r < 0 ? NULL : (bh_net_tls_t *)ctx;
    return r;
}

void bh_net_tls_unref(bh_net_tls_t *t) {
    SSL_CTX_free((SSL_CTX *)t);
}

int bh_net_set_tls(bh_net_t *n, bh_net_tls_t *t) {
    if (!n->tls_ctx || !t)
        return BH_EINVAL;
    SSL_CTX_up_ref((SSL_CTX *)t);
    SSL_CTX_free(n->tls_ctx);
    n->tls_ctx = (SSL_CTX *)t;
    return BH_OK;
}

int bh_net_tls_enabled(const bh_net_t *n) {
    return n->tls_ctx != NULL;
}

void bh_net_stop_accepting(bh_net_t *n) {
    if (!n->listening)
        return;
    n->listening = 0;
    uv_close((uv_handle_t *)&n->listener, NULL);
}

void bh_net_close_all(bh_net_t *n) {
    bh_net_stop_accepting(n);
    while (n->conns)
        conn_hard_close(n->conns);
    if (!n->handles_closed) {
        n->handles_closed = 1;
        uv_close((uv_handle_t *)&n->prepare, NULL);
        uv_close((uv_handle_t *)&n->check, NULL);
    }
}

void bh_net_free(bh_net_t *n) {
    if (!n)
        return;
    net_free_tls(n);
    free(n);
}

size_t bh_net_connection_count(const bh_net_t *n) {
    return n->nconns;
}

void bh_conn_set_data(bh_conn_t *c, void *ud) {
    c->ud = ud;
}

void *bh_conn_data(const bh_conn_t *c) {
    return c->ud;
}

uv_loop_t *bh_conn_loop(const bh_conn_t *c) {
    return c->net->loop;
}

int bh_conn_write(bh_conn_t *c, const void *data, size_t len) {
    if (c->closing || c->dead)
        return BH_ECLOSED;
    if (c->net->max_output && c->out.len + c->inflight_plain + len > c->net->max_output) {
        char peer[80];
        bh_conn_peer(c, peer, sizeof peer);
        bh_log(BH_LOG_WARN, "closing slow consumer", BH_LU("conn", c->id), BH_LS("peer", peer),
               BH_LU("max_output", c->net->max_output));
        bh_metric_add(BH_M_LIMIT_OUTPUT, 1);
        conn_hard_close(c);
        return BH_ETOOBIG;
    }
    int r = bh_buf_append(&c->out, data, len);
    if (r < 0) {
        conn_hard_close(c);
        return r;
    }
    mark_dirty(c);
    return BH_OK;
}

void bh_conn_close(bh_conn_t *c) {
    conn_begin_close(c);
}

void bh_conn_abort(bh_conn_t *c) {
    conn_hard_close(c);
}

int bh_conn_closing(const bh_conn_t *c) {
    return c->closing || c->dead;
}

size_t bh_conn_queued(const bh_conn_t *c) {
    if (c->dead)
        return 0;
    return c->out.len + uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp);
}

uint64_t bh_conn_taken(const bh_conn_t *c) {
    if (c->dead)
        return c->handed;
    uint64_t n = c->handed - uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp);
#ifdef __linux__
    uv_os_fd_t fd;
    int outq = 0;
    if (uv_fileno((const uv_handle_t *)&c->tcp, &fd) == 0 && ioctl(fd, SIOCOUTQ, &outq) == 0 &&
        outq > 0 && (uint64_t)outq <= n)
        n -= (uint64_t)outq;
#endif
    return n;
}

void bh_conn_on_drain(bh_conn_t *c, size_t low, bh_conn_drain_cb cb, void *arg) {
    c->drain_cb = cb;
    c->drain_arg = arg;
    c->drain_low = low;
}

void bh_conn_pause_read(bh_conn_t *c) {
    if (c->paused || c->dead)
        return;
    c->paused = 1;
    uv_read_stop((uv_stream_t *)&c->tcp);
}

void bh_conn_resume_read(bh_conn_t *c) {
    if (!c->paused || c->dead)
        return;
    c->paused = 0;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0)
        conn_hard_close(c);
}

static void on_conn_timer(uv_timer_t *t) {
    bh_conn_t *c = t->data;
    bh_conn_timer_cb cb = c->timer_cb;
    if (cb && !c->dead && !c->closing)
        cb(c->timer_arg);
}

void bh_conn_set_timer(bh_conn_t *c, uint64_t ms, bh_conn_timer_cb cb, void *arg) {
    if (c->dead || c->closing)
        return;
    c->timer_cb = cb;
    c->timer_arg = arg;
    if (ms == 0 || !cb)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, on_conn_timer, ms, 0);
}

uint64_t bh_conn_id(const bh_conn_t *c) {
    return c->id;
}

void bh_conn_peer(const bh_conn_t *c, char *out, size_t cap) {
    struct sockaddr_storage ss;
    int len = sizeof ss;
    char ip[64] = "?";
    int port = 0;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        } else {
            uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        }
    }
    snprintf(out, cap, "%s:%d", ip, port);
}

int bh_conn_peer_addr(const bh_conn_t *c, struct sockaddr_storage *out) {
    int len = sizeof *out;
    memset(out, 0, sizeof *out);
    return uv_tcp_getpeername(&c->tcp, (struct sockaddr *)out, &len) == 0 ? BH_OK : BH_EIO;
}

int bh_conn_detach(bh_conn_t *c, const char *pending, size_t len, bh_conn_handoff_t **out) {
    if (c->dead || c->closing)
        return BH_ECLOSED;
    if (bh_conn_queued(c) > 0 || (c->tls && !bh_tls_handshake_done(c->tls)))
        return BH_EINVAL;
    uv_os_fd_t fd;
    if (uv_fileno((const uv_handle_t *)&c->tcp, &fd) < 0)
        return BH_EIO;
    int r = BH_ENOMEM;
    bh_conn_handoff_t *h = calloc(1, sizeof *h);
    if (!h)
        return BH_ENOMEM;
    h->fd = -1;
    if (len > 0) {
        h->pending = malloc(len);
        if (!h->pending)
            goto fail;
        memcpy(h->pending, pending, len);
        h->len = len;
    }
    /* The dup keeps the socket open when c's handle closes its own descriptor: no FIN, and
     * what the kernel has not handed us yet waits there for the new loop. */
    h->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (h->fd < 0) {
        r = BH_EIO;
        goto fail;
    }
    h->tls = c->tls;
    c->tls = NULL;
    h->id = c->id;
    c->detached = 1;
    c->drain_cb = NULL;
    conn_hard_close(c);
    *out = h;
    return BH_OK;
fail:
    free(h->pending);
    free(h);
    return r;
}

void bh_conn_handoff_free(bh_conn_handoff_t *h) {
    if (!h)
        return;
    if (h->fd >= 0)
        close(h->fd);
    bh_tls_free(h->tls);
    free(h->pending);
    free(h);
    bh_metric_gauge(BH_M_TCP_OPEN, -1);
}

int bh_net_adopt(bh_net_t *n, bh_conn_handoff_t *h) {
    if (n->handles_closed) {
        bh_conn_handoff_free(h);
        return BH_ECLOSED;
    }
    bh_conn_t *c = conn_new(n);
    if (!c) {
        bh_conn_handoff_free(h);
        return BH_ENOMEM;
    }
    /* From here c carries the handoff's place in bh_tcp_connections and its TLS session. */
    c->id = h->id;
    c->tls = h->tls;
    h->tls = NULL;
    int r = uv_tcp_open(&c->tcp, h->fd);
    if (r < 0) {
        close(h->fd);
        c->notified = 1; /* the handler never heard of it */
        conn_hard_close(c);
        free(h->pending);
        free(h);
        return BH_EIO;
    }
    n->h.on_open(c, n->server_ud);
    if (!c->dead && !c->closing && h->len > 0)
        n->h.on_data(c, h->pending, h->len);
    free(h->pending);
    free(h);
    if (c->tls && !c->dead) {
        /* Records the old loop fed but did not decrypt yet, then anything the session wrote
         * itself (e.g. tickets) that the old loop had not sent. */
        if (!c->closing)
            conn_tls_read(c, "", 0);
        if (!c->dead && bh_tls_pending(c->tls) > 0)
            mark_dirty(c);
    }
    if (!c->dead && !c->paused && uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0)
        conn_hard_close(c);
    bh_metric_add(BH_M_MIGRATIONS, 1);
    return BH_OK;
}
