/* Unit tests for moving a connection between loops: bh_conn_detach / bh_net_adopt on one loop
 * (bookkeeping, metrics, the peer sees nothing, bytes left in the kernel, refusals), and
 * bh_http_migrate between two threads each with its own loop and httpd: pipelined requests,
 * keep-alive, requests split across reads and across the move, waiting for queued output,
 * refusals and the 503, SO_REUSEPORT listeners sharing a port (IPv4 and IPv6), and TLS. The
 * clients are real sockets. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "base/buf.h"
#include "base/error.h"
#include "base/metrics.h"
#include "http/server.h"
#include "net/net.h"
#include "tls_cert.h"

/* A hang becomes a failure after this long (never a timing assertion). */
#define WATCHDOG_S 20

static char g_dir[64], g_cert[128], g_key[128];

static int group_setup(void **state) {
    snprintf(g_dir, sizeof g_dir, "/tmp/bh-test-migrate-XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    return bh_test_cert_files(g_dir, g_cert, g_key, sizeof g_cert);
}

static int group_teardown(void **state) {
    unlink(g_cert);
    unlink(g_key);
    rmdir(g_dir);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * blocking clients (the test's thread) */

typedef struct {
    int fd;
    SSL *ssl;
    bh_buf_t in;
} client_t;

static int connect_to(int family, int port) {
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct timeval tv = {.tv_sec = WATCHDOG_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    if (family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        a->sin6_addr = in6addr_loopback;
        len = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        len = sizeof *a;
    }
    assert_int_equal(connect(fd, (struct sockaddr *)&ss, len), 0);
    return fd;
}

static void cl_open(client_t *cl, int family, int port, SSL_CTX *cctx) {
    memset(cl, 0, sizeof *cl);
    bh_buf_init(&cl->in, 0);
    cl->fd = connect_to(family, port);
    if (!cctx)
        return;
    cl->ssl = SSL_new(cctx);
    assert_non_null(cl->ssl);
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(cl->ssl), "127.0.0.1");
    SSL_set_fd(cl->ssl, cl->fd);
    assert_int_equal(SSL_connect(cl->ssl), 1);
    assert_int_equal(SSL_get_verify_result(cl->ssl), X509_V_OK);
}

static void cl_close(client_t *cl) {
    SSL_free(cl->ssl);
    close(cl->fd);
    bh_buf_free(&cl->in);
}

static void send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        assert_true(w > 0);
        p += w;
        n -= (size_t)w;
    }
}

static void cl_send(client_t *cl, const char *text) {
    if (cl->ssl) {
        size_t w = 0;
        assert_int_equal(SSL_write_ex(cl->ssl, text, strlen(text), &w), 1);
        assert_int_equal(w, strlen(text));
    } else {
        send_all(cl->fd, text, strlen(text));
    }
}

/* Each part its own TLS record, all records in one send(): the server reads them in one go, so
 * what it has not decrypted yet sits in its TLS session when the request before moves. */
static void cl_send_records(client_t *cl, const char *const *parts, size_t n) {
    BIO *mem = BIO_new(BIO_s_mem());
    assert_non_null(mem);
    SSL_set0_wbio(cl->ssl, mem);
    for (size_t i = 0; i < n; i++) {
        size_t w = 0;
        assert_int_equal(SSL_write_ex(cl->ssl, parts[i], strlen(parts[i]), &w), 1);
    }
    char *data;
    long len = BIO_get_mem_data(mem, &data);
    assert_true(len > 0);
    send_all(cl->fd, data, (size_t)len);
    BIO *sock = BIO_new_socket(cl->fd, BIO_NOCLOSE);
    assert_non_null(sock);
    SSL_set0_wbio(cl->ssl, sock);
}

/* More bytes into cl->in: > 0, or 0 at the end of the stream (TLS: close_notify or EOF). */
static ssize_t cl_fill(client_t *cl) {
    char buf[16384];
    ssize_t n;
    if (cl->ssl) {
        size_t got = 0;
        ERR_clear_error();
        n = SSL_read_ex(cl->ssl, buf, sizeof buf, &got) == 1 ? (ssize_t)got : 0;
        ERR_clear_error();
    } else {
        n = recv(cl->fd, buf, sizeof buf, 0);
        if (n < 0 && errno == ECONNRESET)
            n = 0;
        if (n < 0)
            fail_msg("recv: %s (watchdog)", strerror(errno));
    }
    if (n > 0)
        assert_int_equal(bh_buf_append(&cl->in, buf, (size_t)n), BH_OK);
    return n;
}

/* Exactly these bytes come next. */
static void cl_expect_raw(client_t *cl, const char *want) {
    size_t n = strlen(want);
    while (cl->in.len < n)
        if (cl_fill(cl) == 0)
            fail_msg("stream ended with '%.*s', wanted '%s'", (int)cl->in.len, cl->in.data, want);
    if (memcmp(cl->in.data, want, n) != 0)
        fail_msg("got '%.*s', wanted '%s'", (int)n, cl->in.data, want);
    bh_buf_consume(&cl->in, n);
}

/* The next response is a 200 text/plain with exactly this body (keep-alive unless closing). */
static void cl_expect_body(client_t *cl, const char *body, int closing) {
    char want[1024];
    snprintf(want, sizeof want,
             "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n%s\r\n%s",
             strlen(body), closing ? "Connection: close\r\n" : "", body);
    cl_expect_raw(cl, want);
}

/* The peer closed: nothing more came. */
static void cl_expect_eof(client_t *cl) {
    while (cl_fill(cl) > 0)
        ;
    assert_int_equal(cl->in.len, 0);
}

/* Waits until the servers have read `target` bytes in all (bh_bytes_received_total). */
static void wait_bytes_in(uint64_t target) {
    time_t end = time(NULL) + WATCHDOG_S;
    while (bh_metric_get(BH_M_BYTES_IN) < target) {
        if (time(NULL) > end)
            fail_msg("the server did not read %llu bytes", (unsigned long long)target);
        sched_yield();
    }
}

/* Send text and return once the server has read all of it. */
static void cl_send_read(client_t *cl, const char *text) {
    uint64_t before = bh_metric_get(BH_M_BYTES_IN);
    cl_send(cl, text);
    wait_bytes_in(before + strlen(text));
}

static SSL_CTX *client_ctx(void) {
    SSL_CTX *c = SSL_CTX_new(TLS_client_method());
    assert_non_null(c);
    assert_int_equal(SSL_CTX_load_verify_locations(c, g_cert, NULL), 1);
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
    return c;
}

/* ---------------------------------------------------------------------------------------------
 * bh_conn_detach / bh_net_adopt on one loop */

typedef struct {
    bh_buf_t in;
    int opens, closes, datas;
    uint64_t id;
    int rc_queued, rc_closing, rc_detach;
} side_state_t;

static side_state_t g_n1, g_n2;
static bh_conn_handoff_t *g_h;

static void n_open(bh_conn_t *c, void *ud) {
    side_state_t *s = ud;
    s->opens++;
    s->id = bh_conn_id(c);
    bh_conn_set_data(c, s);
}

static void n_close(bh_conn_t *c) {
    side_state_t *s = bh_conn_data(c);
    s->closes++;
}

static int ends_with(const bh_buf_t *b, const char *s) {
    size_t n = strlen(s);
    return b->len >= n && memcmp(b->data + b->len - n, s, n) == 0;
}

/* "...hello!": answer, then a detach must refuse (output queued). "...close!": close, then a
 * detach must refuse. "move!...": detach with everything received so far. */
static void n1_data(bh_conn_t *c, const char *data, size_t len) {
    side_state_t *s = bh_conn_data(c);
    s->datas++;
    assert_int_equal(bh_buf_append(&s->in, data, len), BH_OK);
    if (ends_with(&s->in, "hello!")) {
        assert_int_equal(bh_conn_write(c, "n1:", 3), BH_OK);
        assert_int_equal(bh_conn_write(c, s->in.data, s->in.len), BH_OK);
        s->rc_queued = bh_conn_detach(c, "x", 1, &g_h);
        bh_buf_reset(&s->in);
    } else if (ends_with(&s->in, "close!")) {
        bh_conn_close(c);
        s->rc_closing = bh_conn_detach(c, "x", 1, &g_h);
        bh_buf_reset(&s->in);
    } else if (s->in.len >= 5 && memcmp(s->in.data, "move!", 5) == 0) {
        s->rc_detach = bh_conn_detach(c, s->in.data, s->in.len, &g_h);
        bh_buf_reset(&s->in);
    }
}

static void n2_data(bh_conn_t *c, const char *data, size_t len) {
    side_state_t *s = bh_conn_data(c);
    s->datas++;
    assert_int_equal(bh_buf_append(&s->in, data, len), BH_OK);
    assert_int_equal(bh_conn_write(c, "n2:", 3), BH_OK);
    assert_int_equal(bh_conn_write(c, data, len), BH_OK);
}

static const bh_conn_handler_t g_h1 = {n_open, n1_data, n_close};
static const bh_conn_handler_t g_h2 = {n_open, n2_data, n_close};

/* The test's client socket watched by the loop (non-blocking reads into a buffer). */
typedef struct {
    int fd;
    uv_poll_t poll;
    bh_buf_t in;
    int eof;
} pclient_t;

static void pclient_readable(uv_poll_t *p, int status, int events) {
    pclient_t *cl = p->data;
    char buf[4096];
    for (;;) {
        ssize_t n = recv(cl->fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            bh_buf_append(&cl->in, buf, (size_t)n);
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            cl->eof = 1;
            uv_poll_stop(p);
        }
        return;
    }
}

static void pclient_open(uv_loop_t *loop, pclient_t *cl, int port) {
    memset(cl, 0, sizeof *cl);
    bh_buf_init(&cl->in, 0);
    cl->fd = connect_to(AF_INET, port);
    uv_poll_init(loop, &cl->poll, cl->fd);
    cl->poll.data = cl;
    uv_poll_start(&cl->poll, UV_READABLE, pclient_readable);
}

static void pclient_close(pclient_t *cl) {
    uv_close((uv_handle_t *)&cl->poll, NULL);
    close(cl->fd);
    bh_buf_free(&cl->in);
}

static int g_dog;

static void on_dog(uv_timer_t *t) {
    g_dog = 1;
}

typedef int (*cond_fn)(void *arg);

static void run_until_at(uv_loop_t *loop, cond_fn cond, void *arg, int line) {
    uv_timer_t dog;
    uv_timer_init(loop, &dog);
    g_dog = 0;
    uv_timer_start(&dog, on_dog, WATCHDOG_S * 1000, 0);
    while (!cond(arg) && !g_dog)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&dog, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    if (!cond(arg))
        fail_msg("the condition awaited at line %d did not come", line);
}
#define run_until(loop, cond, arg) run_until_at(loop, cond, arg, __LINE__)

static const char *g_want;

static int has_text(void *arg) {
    pclient_t *cl = arg;
    return cl->in.len >= strlen(g_want);
}

static void pclient_expect(uv_loop_t *loop, pclient_t *cl, const char *want) {
    g_want = want;
    run_until(loop, has_text, cl);
    assert_int_equal(cl->in.len, strlen(want));
    assert_memory_equal(cl->in.data, want, cl->in.len);
    bh_buf_reset(&cl->in);
}

static int closes_at_least_1(void *arg) {
    return ((side_state_t *)arg)->closes >= 1;
}

static int is_eof(void *arg) {
    return ((pclient_t *)arg)->eof;
}

static int have_handoff(void *arg) {
    return g_h != NULL;
}

static void test_detach_adopt_one_loop(void **state) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    memset(&g_n1, 0, sizeof g_n1);
    memset(&g_n2, 0, sizeof g_n2);
    bh_buf_init(&g_n1.in, 0);
    bh_buf_init(&g_n2.in, 0);
    g_h = NULL;
    char err[256];
    bh_net_config_t cfg = {.max_output = 1 << 20};
    bh_net_t *n1, *n2, *n3;
    int p1, p2, p3;
    assert_int_equal(bh_net_new(&loop, &cfg, "127.0.0.1:0", &g_h1, &g_n1, &n1, &p1, err, 256), 0);
    assert_int_equal(bh_net_new(&loop, &cfg, "127.0.0.1:0", &g_h2, &g_n2, &n2, &p2, err, 256), 0);
    uint64_t open0 = bh_metric_get(BH_M_TCP_OPEN), acc0 = bh_metric_get(BH_M_TCP_ACCEPTED);
    uint64_t mig0 = bh_metric_get(BH_M_MIGRATIONS);

    pclient_t a;
    pclient_open(&loop, &a, p1);
    send_all(a.fd, "hello!", 6);
    pclient_expect(&loop, &a, "n1:hello!");
    assert_int_equal(g_n1.rc_queued, BH_EINVAL); /* output was queued: refused, untouched */
    assert_null(g_h);
    assert_int_equal(bh_net_connection_count(n1), 1);
    assert_int_equal(bh_metric_get(BH_M_TCP_OPEN), open0 + 1);

    /* detach with what was read; what is sent after it stays in the kernel */
    send_all(a.fd, "move!tail", 9);
    run_until(&loop, have_handoff, NULL);
    assert_int_equal(g_n1.rc_detach, BH_OK);
    send_all(a.fd, "more", 4);
    run_until(&loop, closes_at_least_1, &g_n1); /* on_close as for any close */
    assert_int_equal(g_n1.closes, 1);
    assert_int_equal(bh_net_connection_count(n1), 0);
    assert_int_equal(bh_metric_get(BH_M_TCP_OPEN), open0 + 1); /* still open: in the handoff */
    /* the peer saw nothing: no FIN, no RST, no bytes */
    char probe;
    assert_int_equal(recv(a.fd, &probe, 1, MSG_DONTWAIT), -1);
    assert_int_equal(errno, EAGAIN);
    assert_false(a.eof);

    /* adopt on the other net: on_open, the pending bytes, then the socket's */
    bh_conn_handoff_t *h = g_h;
    g_h = NULL;
    assert_int_equal(bh_net_adopt(n2, h), BH_OK);
    assert_int_equal(g_n2.opens, 1);
    assert_int_equal(g_n2.id, g_n1.id); /* one connection, one id in the logs */
    assert_int_equal(bh_net_connection_count(n2), 1);
    pclient_expect(&loop, &a, "n2:move!tailn2:more");
    assert_int_equal(g_n2.datas, 2);
    assert_int_equal(bh_metric_get(BH_M_MIGRATIONS), mig0 + 1);
    assert_int_equal(bh_metric_get(BH_M_TCP_ACCEPTED), acc0 + 1); /* not a new accept */
    assert_int_equal(bh_metric_get(BH_M_TCP_OPEN), open0 + 1);
    send_all(a.fd, "again", 5);
    pclient_expect(&loop, &a, "n2:again");
    assert_int_equal(g_n1.datas, 2); /* net1 never saw "more" or "again" */

    /* a closing connection is not detached */
    pclient_t b;
    pclient_open(&loop, &b, p1);
    send_all(b.fd, "close!", 6);
    run_until(&loop, is_eof, &b);
    assert_int_equal(g_n1.rc_closing, BH_ECLOSED);
    assert_null(g_h);

    /* a handoff dropped: the peer sees the close, the gauge goes back */
    pclient_t c;
    pclient_open(&loop, &c, p1);
    send_all(c.fd, "move!", 5);
    run_until(&loop, have_handoff, NULL);
    bh_conn_handoff_free(g_h);
    g_h = NULL;
    run_until(&loop, is_eof, &c);

    /* adopted by a net already closed: refused, consumed, closed */
    assert_int_equal(bh_net_new(&loop, &cfg, "127.0.0.1:0", &g_h2, &g_n2, &n3, &p3, err, 256), 0);
    bh_net_close_all(n3);
    pclient_t d;
    pclient_open(&loop, &d, p1);
    send_all(d.fd, "move!", 5);
    run_until(&loop, have_handoff, NULL);
    assert_int_equal(bh_net_adopt(n3, g_h), BH_ECLOSED);
    g_h = NULL;
    run_until(&loop, is_eof, &d);
    assert_int_equal(g_n2.opens, 1);

    pclient_close(&a);
    pclient_close(&b);
    pclient_close(&c);
    pclient_close(&d);
    bh_net_close_all(n1);
    bh_net_close_all(n2);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(bh_metric_get(BH_M_TCP_OPEN), open0);
    assert_int_equal(bh_metric_get(BH_M_MIGRATIONS), mig0 + 1);
    assert_int_equal(g_n2.closes, 1);
    bh_net_free(n1);
    bh_net_free(n2);
    bh_net_free(n3);
    assert_int_equal(uv_loop_close(&loop), 0);
    bh_buf_free(&g_n1.in);
    bh_buf_free(&g_n2.in);
}

/* ---------------------------------------------------------------------------------------------
 * bh_http_migrate between two threads */

typedef struct side {
    char name; /* 'A', 'B' */
    uv_loop_t loop;
    bh_httpd_t *httpd;
    struct side *other;
    bh_httpd_t *closed_target; /* "/gone" migrates there */
    pthread_t th;
    int port;
    _Atomic int last_rc;
} side_t;

static void up_data(void *ud, const char *data, size_t len) {}

static void up_close(void *ud) {}

static const bh_http_upgrade_ops_t g_up = {up_data, up_close};

static int path_is(const bh_http_request_t *req, const char *p) {
    return req->path_len == strlen(p) && memcmp(req->path, p, req->path_len) == 0;
}

/* "/on/X/...": answered on side X ("X METHOD PATH m=<migrated> [body=...]"), migrated there
 * from the other side. The rest try migrations that must be refused or fail. */
static void handler(void *ud, bh_http_conn_t *hc, const bh_http_request_t *req, const char *body,
                    size_t blen) {
    side_t *s = ud;
    char out[512];
    int rc;
    if (req->path_len > 5 && memcmp(req->path, "/on/", 4) == 0) {
        if (req->path[4] != s->name) {
            rc = bh_http_migrate(hc, s->other->httpd);
            atomic_store(&s->last_rc, rc);
            if (rc == BH_EINVAL)
                bh_http_respond(hc, 500, "text/plain", NULL, "refused", 7);
            return;
        }
        int n = snprintf(out, sizeof out, "%c %.*s %.*s m=%d%s%.*s", s->name, (int)req->method_len,
                         req->method_str, (int)req->path_len, req->path, bh_http_conn_migrated(hc),
                         blen ? " body=" : "", (int)blen, body);
        bh_http_respond(hc, 200, "text/plain", NULL, out, (size_t)n);
        return;
    }
    if (path_is(req, "/hold")) {
        bh_http_hold(hc);
        rc = bh_http_migrate(hc, s->other->httpd);
    } else if (path_is(req, "/null")) {
        rc = bh_http_migrate(hc, NULL);
    } else if (path_is(req, "/answered")) {
        bh_http_respond(hc, 200, "text/plain", NULL, "answered", 8);
        atomic_store(&s->last_rc, bh_http_migrate(hc, s->other->httpd));
        return;
    } else if (path_is(req, "/upgrade")) {
        bh_http_upgrade(hc, &g_up, NULL);
        rc = bh_http_migrate(hc, s->other->httpd);
        int n = snprintf(out, sizeof out, "upgraded rc=%d", rc);
        bh_conn_write(bh_http_conn_net(hc), out, (size_t)n);
        bh_conn_close(bh_http_conn_net(hc));
        return;
    } else if (path_is(req, "/gone")) {
        atomic_store(&s->last_rc, bh_http_migrate(hc, s->closed_target));
        return;
    } else {
        bh_http_respond(hc, 404, "text/plain", NULL, "?", 1);
        return;
    }
    int n = snprintf(out, sizeof out, "rc=%d", rc);
    bh_http_respond(hc, 200, "text/plain", NULL, out, (size_t)n);
    if (path_is(req, "/hold"))
        bh_http_release(hc);
}

static void *side_main(void *arg) {
    side_t *s = arg;
    uv_run(&s->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void side_new(side_t *s, char name, const char *listen, int reuseport, int tls) {
    memset(s, 0, sizeof *s);
    s->name = name;
    atomic_init(&s->last_rc, 1);
    uv_loop_init(&s->loop);
    bh_httpd_config_t cfg = {
        .max_head = 8192,
        .max_body = 65536,
        .request_timeout_ms = 30000,
        .idle_timeout_ms = 30000,
        .max_output = 1 << 20,
        .reuseport = reuseport,
    };
    if (tls)
        cfg.tls = (bh_net_tls_config_t){.cert_file = g_cert, .key_file = g_key};
    char err[256] = "";
    int r = bh_httpd_new(&s->loop, &cfg, listen, handler, s, &s->httpd, &s->port, err, sizeof err);
    if (r != BH_OK)
        fail_msg("bh_httpd_new %s: %s", listen, err);
    assert_int_equal(bh_httpd_port(s->httpd), s->port);
    assert_ptr_equal(bh_httpd_loop(s->httpd), &s->loop);
}

static void sides_start(side_t *a, side_t *b) {
    a->other = b;
    b->other = a;
    assert_int_equal(pthread_create(&a->th, NULL, side_main, a), 0);
    assert_int_equal(pthread_create(&b->th, NULL, side_main, b), 0);
}

static void side_close(void *arg) {
    side_t *s = arg;
    bh_httpd_close_all(s->httpd);
}

static void side_stop(side_t *s) {
    assert_int_equal(bh_httpd_post(s->httpd, side_close, s), BH_OK);
    assert_int_equal(pthread_join(s->th, NULL), 0);
    /* closed: posts are refused (the caller keeps its arg) until the httpd is freed */
    assert_int_equal(bh_httpd_post(s->httpd, side_close, s), BH_ECLOSED);
    bh_httpd_free(s->httpd);
    assert_int_equal(uv_loop_close(&s->loop), 0);
}

#define REQ(path) "GET " path " HTTP/1.1\r\nHost: t\r\n\r\n"

/* The core: pipelined requests moved, keep-alive kept, back and forth, waiting for output. */
static void run_pipeline(side_t *a, side_t *b, SSL_CTX *cctx) {
    uint64_t mig0 = bh_metric_get(BH_M_MIGRATIONS), acc0 = bh_metric_get(BH_M_TCP_ACCEPTED);
    uint64_t open0 = bh_metric_get(BH_M_TCP_OPEN), req0 = bh_metric_get(BH_M_HTTP_REQUESTS);
    client_t cl;
    cl_open(&cl, AF_INET, a->port, cctx);
    /* two requests in one write: A moves the first, both travel, B answers both in order */
    cl_send(&cl, REQ("/on/B/1") REQ("/on/B/2"));
    cl_expect_body(&cl, "B GET /on/B/1 m=1", 0);
    cl_expect_body(&cl, "B GET /on/B/2 m=0", 0);
    assert_int_equal(bh_metric_get(BH_M_MIGRATIONS), mig0 + 1);
    assert_int_equal(bh_metric_get(BH_M_TCP_OPEN), open0 + 1);
    /* the connection stays on B */
    cl_send(&cl, REQ("/on/B/3"));
    cl_expect_body(&cl, "B GET /on/B/3 m=0", 0);
    assert_int_equal(bh_metric_get(BH_M_MIGRATIONS), mig0 + 1);
    /* and can go back */
    cl_send(&cl, REQ("/on/A/4"));
    cl_expect_body(&cl, "A GET /on/A/4 m=1", 0);
    /* A answers 5 (output queued), 6 moves only once that is out: the order holds */
    cl_send(&cl, REQ("/on/A/5") REQ("/on/B/6") REQ("/on/B/7"));
    cl_expect_body(&cl, "A GET /on/A/5 m=0", 0);
    cl_expect_body(&cl, "B GET /on/B/6 m=1", 0);
    cl_expect_body(&cl, "B GET /on/B/7 m=0", 0);
    /* a body and Connection: close travel too */
    cl_send(&cl, "POST /on/A/8 HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
    cl_expect_body(&cl, "A POST /on/A/8 m=1 body=hello", 1);
    cl_expect_eof(&cl);
    assert_int_equal(bh_metric_get(BH_M_MIGRATIONS), mig0 + 4);
    assert_int_equal(bh_metric_get(BH_M_TCP_ACCEPTED), acc0 + 1);
    assert_int_equal(bh_metric_get(BH_M_HTTP_REQUESTS), req0 + 8); /* a moved one counts once */
    cl_close(&cl);
}

/* Requests split across reads: the moved request was read in two parts; the request after it
 * is half read before the move and half left in the kernel for the new loop. */
static void run_split(side_t *a, side_t *b, SSL_CTX *cctx) {
    uint64_t mig0 = bh_metric_get(BH_M_MIGRATIONS);
    client_t cl;
    cl_open(&cl, AF_INET, a->port, cctx);
    cl_send_read(&cl, "POST /on/B/s HTTP/1.1\r\nHost: t\r\nContent-Le");
    cl_send_read(&cl, "ngth: 10\r\n\r\n01234");
    cl_send(&cl, "56789");
    cl_expect_body(&cl, "B POST /on/B/s m=1 body=0123456789", 0);
    /* now on B: the first request moves to A with half of the second */
    cl_send_read(&cl, REQ("/on/A/x1") "GET /on/A/x2 HT");
    cl_send(&cl, "TP/1.1\r\nHost: t\r\n\r\n");
    cl_expect_body(&cl, "A GET /on/A/x1 m=1", 0);
    cl_expect_body(&cl, "A GET /on/A/x2 m=0", 0);
    /* byte by byte */
    const char *r = REQ("/on/B/bytes");
    for (size_t i = 0; r[i]; i++) {
        char one[2] = {r[i], 0};
        cl_send_read(&cl, one);
    }
    cl_expect_body(&cl, "B GET /on/B/bytes m=1", 0);
    assert_int_equal(bh_metric_get(BH_M_MIGRATIONS), mig0 + 3);
    cl_close(&cl);
}

static void test_http_migrate(void **state) {
    side_t a, b;
    uint64_t open0 = bh_metric_get(BH_M_TCP_OPEN);
    side_new(&a, 'A', "127.0.0.1:0", 0, 0);
    side_new(&b, 'B', "127.0.0.1:0", 0, 0);
    assert_int_not_equal(a.port, b.port);
    sides_start(&a, &b);
    run_pipeline(&a, &b, NULL);
    run_split(&a, &b, NULL);
    side_stop(&a);
    side_stop(&b);
    assert_int_equal(bh_metric_get(BH_M_TCP_OPEN), open0);
}

/* Migrations that must be refused leave the connection usable; one to a closed server ends it
 * with a 503. */
static void test_http_migrate_refused(void **state) {
    side_t a, b, c;
    side_new(&a, 'A', "127.0.0.1:0", 0, 0);
    side_new(&b, 'B', "127.0.0.1:0", 0, 0);
    side_new(&c, 'C', "127.0.0.1:0", 0, 0);
    bh_httpd_close_all(c.httpd); /* C's loop is not running: it is as good as shut down */
    a.closed_target = c.httpd;
    sides_start(&a, &b);
    uint64_t mig0 = bh_metric_get(BH_M_MIGRATIONS);
    client_t cl;
    cl_open(&cl, AF_INET, a.port, NULL);
    char want[32];
    snprintf(want, sizeof want, "rc=%d", BH_EINVAL);
    cl_send(&cl, REQ("/hold") REQ("/null"));
    cl_expect_body(&cl, want, 0);
    cl_expect_body(&cl, want, 0);
    cl_send(&cl, REQ("/answered"));
    cl_expect_body(&cl, "answered", 0);
    assert_int_equal(atomic_load(&a.last_rc), BH_EINVAL);
    cl_send(&cl, REQ("/on/A/still"));
    cl_expect_body(&cl, "A GET /on/A/still m=0", 0);
    cl_send(&cl, REQ("/gone"));
    char resp[256];
    snprintf(resp, sizeof resp,
             "HTTP/1.1 503 %s\r\nContent-Type: application/json\r\nContent-Length: 31\r\n"
             "Connection: close\r\n\r\n{\"error\":\"service unavailable\"}",
             bh_http_reason(503));
    cl_expect_raw(&cl, resp);
    cl_expect_eof(&cl);
    assert_int_equal(atomic_load(&a.last_rc), BH_ECLOSED);
    cl_close(&cl);
    /* an upgraded connection stays */
    cl_open(&cl, AF_INET, a.port, NULL);
    cl_send(&cl, REQ("/upgrade"));
    snprintf(want, sizeof want, "upgraded rc=%d", BH_EINVAL);
    cl_expect_raw(&cl, want);
    cl_expect_eof(&cl);
    cl_close(&cl);
    assert_int_equal(bh_metric_get(BH_M_MIGRATIONS), mig0);
    side_stop(&a);
    side_stop(&b);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    bh_httpd_free(c.httpd);
    assert_int_equal(uv_loop_close(&c.loop), 0);
}

/* Both listeners on one port: wherever the kernel puts a connection, each request is answered
 * where it asks to be. Another listener without SO_REUSEPORT cannot take the port. */
static void run_reuseport(const char *host, int family) {
    side_t a, b;
    char listen[64];
    snprintf(listen, sizeof listen, "%s:0", host);
    side_new(&a, 'A', listen, 1, 0);
    snprintf(listen, sizeof listen, "%s:%d", host, a.port);
    side_new(&b, 'B', listen, 1, 0);
    assert_int_equal(b.port, a.port);
    /* without reuseport on the same port: refused with one line, nothing leaks */
    uv_loop_t loop;
    uv_loop_init(&loop);
    bh_httpd_config_t cfg = {.max_head = 8192, .max_body = 8192};
    bh_httpd_t *h = NULL;
    int port = 0;
    char err[256] = "";
    assert_int_equal(bh_httpd_new(&loop, &cfg, listen, handler, NULL, &h, &port, err, sizeof err),
                     BH_EIO);
    assert_null(h);
    char want[128];
    snprintf(want, sizeof want, "cannot listen on %s: address already in use", listen);
    assert_string_equal(err, want);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);

    sides_start(&a, &b);
    uint64_t mig0 = bh_metric_get(BH_M_MIGRATIONS);
    int landed_b = 0;
    for (int i = 0; i < 8; i++) {
        client_t cl;
        cl_open(&cl, family, a.port, NULL);
        cl_send(&cl, REQ("/on/A/1") REQ("/on/B/2"));
        char first[64];
        /* m=1: the kernel gave the connection to B */
        while (cl.in.len < 82 && cl_fill(&cl) > 0)
            ;
        int m = cl.in.len >= 82 && memcmp(cl.in.data + 81, "1", 1) == 0;
        snprintf(first, sizeof first, "A GET /on/A/1 m=%d", m);
        landed_b += m;
        cl_expect_body(&cl, first, 0);
        cl_expect_body(&cl, "B GET /on/B/2 m=1", 0);
        cl_send(&cl, REQ("/on/A/3"));
        cl_expect_body(&cl, "A GET /on/A/3 m=1", 0);
        cl_close(&cl);
    }
    assert_int_equal(bh_metric_get(BH_M_MIGRATIONS), mig0 + 16 + (uint64_t)landed_b);
    side_stop(&a);
    side_stop(&b);
}

static void test_reuseport(void **state) {
    run_reuseport("127.0.0.1", AF_INET);
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int v6 = fd >= 0 && bind(fd, (struct sockaddr *)&a6, sizeof a6) == 0;
    if (fd >= 0)
        close(fd);
    if (!v6)
        skip(); /* no IPv6 loopback here */
    run_reuseport("[::1]", AF_INET6);
}

/* TLS: the session moves with the socket (records already read but not decrypted too), and
 * the context of the accepting listener outlives it. */
static void test_tls_migrate(void **state) {
    side_t a, b;
    uint64_t open0 = bh_metric_get(BH_M_TCP_OPEN);
    side_new(&a, 'A', "127.0.0.1:0", 0, 1);
    side_new(&b, 'B', "127.0.0.1:0", 0, 1);
    sides_start(&a, &b);
    SSL_CTX *cctx = client_ctx();
    run_pipeline(&a, &b, cctx);
    run_split(&a, &b, cctx);

    uint64_t mig0 = bh_metric_get(BH_M_MIGRATIONS);
    client_t cl;
    cl_open(&cl, AF_INET, a.port, cctx);
    cl_send(&cl, REQ("/on/B/1"));
    cl_expect_body(&cl, "B GET /on/B/1 m=1", 0);
    /* two records in one read on B: the first moves, the second is still encrypted */
    const char *const parts[] = {REQ("/on/A/2") "GET /on/A/3 HT", "TP/1.1\r\nHost: t\r\n\r\n",
                                 REQ("/on/B/4")};
    cl_send_records(&cl, parts, 3);
    cl_expect_body(&cl, "A GET /on/A/2 m=1", 0);
    cl_expect_body(&cl, "A GET /on/A/3 m=0", 0);
    cl_expect_body(&cl, "B GET /on/B/4 m=1", 0);
    assert_int_equal(bh_metric_get(BH_M_MIGRATIONS), mig0 + 3);
    /* A (whose listener accepted this connection) goes away; B goes on with the session */
    side_stop(&a);
    cl_send(&cl, REQ("/on/B/5"));
    cl_expect_body(&cl, "B GET /on/B/5 m=0", 0);
    cl_send(&cl, "GET /on/B/6 HTTP/1.1\r\nConnection: close\r\n\r\n");
    cl_expect_body(&cl, "B GET /on/B/6 m=0", 1);
    cl_expect_eof(&cl);
    cl_close(&cl);
    side_stop(&b);
    SSL_CTX_free(cctx);
    assert_int_equal(bh_metric_get(BH_M_TCP_OPEN), open0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_detach_adopt_one_loop), cmocka_unit_test(test_http_migrate),
        cmocka_unit_test(test_http_migrate_refused),  cmocka_unit_test(test_reuseport),
        cmocka_unit_test(test_tls_migrate),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
