/* balancehub serve: resolves the options (config.c), opens the store and ledger, creates the
 * demo account on request, then runs N I/O threads (--threads), each with its own loop, a
 * SO_REUSEPORT listener on --listen (hub, tester page, /healthz, /readyz), a SignalR server and
 * a hub; the main thread keeps the ledger, the operations listener (/admin/, /metrics, /healthz,
 * /readyz) and the signals: SIGINT/SIGTERM drain and stop, SIGHUP re-reads the log settings and
 * reloads the TLS certificate on every I/O thread. */
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "../base/error.h"
#include "../base/log.h"
#include "../admin/admin.h"
#include "../http/server.h"
#include "../http/static.h"
#include "../hub/hub.h"
#include "../signalr/signalr.h"
#include "cli.h"
#include "config.h"
#include "ops.h"

#define DEMO_USER "user-123"
#define SHUTDOWN_GRACE_MS 500

typedef struct server server_t;

/* One I/O thread: its loop, listener, SignalR server and hub. Built and run on the thread;
 * freed by the main thread after it joined. */
typedef struct {
    server_t *srv;
    uv_thread_t tid;
    int joinable;
    int loop_ok;
    uv_loop_t loop;
    bh_httpd_t *httpd;
    bh_sr_server_t *sr;
    bh_hub_t *hub;
    int in_group;
    char listen[300]; /* --listen, with the port thread 0 bound for the others */
    int port;         /* the bound port */
    int rc;           /* the set-up's result */
    char err[256];
    uv_sem_t ready; /* posted when the set-up is over, either way */
} io_thread_t;

struct server {
    uv_loop_t loop;
    uv_signal_t sigint, sigterm, sighup;
    uv_timer_t grace;
    uv_async_t ended; /* an I/O thread's loop has ended */
    bh_config_t *cfg;
    bh_cli_state_t st;
    const bh_sr_config_t *sc;
    const bh_httpd_config_t *hc;
    bh_sr_shared_t *shared;
    bh_hub_group_t *group;
    io_thread_t *threads;
    int nthreads;       /* allocated */
    int nstarted;       /* threads created (joinable) */
    atomic_int running; /* threads whose loop has not ended */
    bh_httpd_t *opsd;   /* the operations listener; NULL when off */
    bh_admin_t *admin;
    int tls;
    bh_net_tls_t *tls_ctx; /* the certificate every I/O thread's listener shares */
    int stopping;
    int finishing; /* the I/O threads were told to end */
};

static int path_is(const bh_http_request_t *req, const char *p) {
    size_t n = strlen(p);
    return req->path_len == n && memcmp(req->path, p, n) == 0;
}

static int path_under(const bh_http_request_t *req, const char *p) {
    size_t n = strlen(p);
    return req->path_len >= n && memcmp(req->path, p, n) == 0;
}

/* The main listener: what clients and browsers reach. The admin API and the metrics live on
 * the operations listener only, so they are not exposed wherever the hub is. */
static void on_http(void *ud, bh_http_conn_t *hc, const bh_http_request_t *req, const char *body,
                    size_t len) {
    io_thread_t *t = ud;
    /* The ledger outlives every I/O thread: it is closed after they are joined. */
    if (bh_cli_ops_handle(t->srv->st.ledger, 0, hc, req))
        return;
    if (path_is(req, "/admin") || path_under(req, "/admin/") || path_is(req, "/metrics")) {
        bh_http_respond_error(hc, 404, "not found");
        return;
    }
    if (bh_sr_handle_http(t->sr, hc, req, body, len))
        return;
    if (bh_static_handle(hc, req))
        return;
    bh_http_respond_error(hc, 404, "not found");
}

/* The operations listener. */
static void on_ops_http(void *ud, bh_http_conn_t *hc, const bh_http_request_t *req,
                        const char *body, size_t len) {
    server_t *srv = ud;
    if (bh_admin_handle_http(srv->admin, hc, req, body, len))
        return;
    if (bh_cli_ops_handle(srv->st.ledger, 1, hc, req))
        return;
    bh_http_respond_error(hc, 404, "not found");
}

/* On an I/O thread: new connections go to the threads still accepting (none once all have
 * stopped), and every SignalR connection gets Close with allowReconnect. */
static void io_drain(void *arg) {
    io_thread_t *t = arg;
    bh_httpd_stop_accepting(t->httpd);
    bh_sr_server_close_all(t->sr, NULL, 1);
}

/* On an I/O thread: end what is left; with its last handle closed, the thread's loop ends. */
static void io_finish(void *arg) {
    io_thread_t *t = arg;
    bh_sr_server_shutdown(t->sr);
    bh_httpd_close_all(t->httpd); /* its mailbox too */
}

static void post_all(server_t *srv, void (*fn)(void *)) {
    for (int i = 0; i < srv->nstarted; i++) {
        io_thread_t *t = &srv->threads[i];
        if (t->rc == BH_OK && bh_httpd_post(t->httpd, fn, t) < 0)
            bh_log(BH_LOG_ERROR, "cannot reach an I/O thread", BH_LI("thread", i));
    }
}

/* Tell every running I/O thread to end. Its hub leaves the group first, so nothing more is
 * posted to a loop that is about to end. */
static void finish_threads(server_t *srv) {
    if (srv->finishing)
        return;
    srv->finishing = 1;
    for (int i = 0; i < srv->nstarted; i++) {
        io_thread_t *t = &srv->threads[i];
        if (t->in_group) {
            bh_hub_group_remove(srv->group, t->hub);
            t->in_group = 0;
        }
    }
    post_all(srv, io_finish);
}

static void join_threads(server_t *srv) {
    for (int i = 0; i < srv->nstarted; i++) {
        if (srv->threads[i].joinable) {
            uv_thread_join(&srv->threads[i].tid);
            srv->threads[i].joinable = 0;
        }
    }
}

/* Every I/O thread has ended: no thread reads the ledger any more, so it can close (committing
 * and answering what is pending while the operations listener still has its connections). */
static void on_ended(uv_async_t *a) {
    server_t *srv = a->data;
    if (!srv->finishing || atomic_load(&srv->running) > 0)
        return;
    join_threads(srv);
    if (srv->st.ledger) {
        bh_ledger_close(srv->st.ledger);
        srv->st.ledger = NULL;
    }
    if (srv->opsd)
        bh_httpd_close_all(srv->opsd);
    uv_close((uv_handle_t *)&srv->ended, NULL);
}

static void on_grace(uv_timer_t *timer) {
    server_t *srv = timer->data;
    finish_threads(srv); /* what did not drain in time */
    uv_close((uv_handle_t *)&srv->grace, NULL);
}

static void on_signal(uv_signal_t *sig, int signum) {
    server_t *srv = sig->data;
    if (srv->stopping)
        return;
    srv->stopping = 1;
    bh_log(BH_LOG_INFO, "shutting down", BH_LI("signal", signum));
    post_all(srv, io_drain);
    if (srv->opsd)
        bh_httpd_stop_accepting(srv->opsd);
    uv_close((uv_handle_t *)&srv->sigint, NULL);
    uv_close((uv_handle_t *)&srv->sigterm, NULL);
    uv_close((uv_handle_t *)&srv->sighup, NULL);
    uv_timer_start(&srv->grace, on_grace, SHUTDOWN_GRACE_MS, 0);
}

static void apply_log_settings(const bh_config_t *c) {
    bh_log_set_level((int)bh_config_uint(c, BH_CFG_LOG_LEVEL));
    bh_log_set_format((int)bh_config_uint(c, BH_CFG_LOG_FORMAT));
}

typedef struct {
    io_thread_t *t;
    bh_net_tls_t *tls;
    uv_sem_t done;
    int posted;
} reload_t;

static void io_set_tls(void *arg) {
    reload_t *r = arg;
    bh_httpd_set_tls(r->t->httpd, r->tls);
    uv_sem_post(&r->done);
}

/* The certificate and key are loaded once, here, and handed to every I/O thread's listener;
 * this waits for all of them, so the connections accepted after the "configuration reloaded"
 * line all get the new one, and all threads share one session cache and ticket keys. A file
 * that does not load changes nothing anywhere. */
static void reload_tls(server_t *srv) {
    int n = srv->nstarted;
    char err[512] = "";
    bh_net_tls_t *next = NULL;
    if (bh_net_tls_load(srv->hc->tls.cert_file, srv->hc->tls.key_file, &next, err, sizeof err) <
        0) {
        bh_log(BH_LOG_ERROR, "TLS reload failed: keeping the current certificate",
               BH_LS("error", err));
        return;
    }
    reload_t *jobs = calloc((size_t)(n > 0 ? n : 1), sizeof *jobs);
    if (!jobs) {
        bh_net_tls_unref(next);
        bh_log(BH_LOG_ERROR, "TLS reload failed: keeping the current certificate",
               BH_LS("error", "out of memory"));
        return;
    }
    for (int i = 0; i < n; i++) {
        jobs[i].t = &srv->threads[i];
        jobs[i].tls = next;
        if (jobs[i].t->rc != BH_OK || uv_sem_init(&jobs[i].done, 0) != 0)
            continue;
        jobs[i].posted = bh_httpd_post(jobs[i].t->httpd, io_set_tls, &jobs[i]) == BH_OK;
        if (!jobs[i].posted)
            uv_sem_destroy(&jobs[i].done);
    }
    for (int i = 0; i < n; i++) {
        if (!jobs[i].posted)
            continue;
        uv_sem_wait(&jobs[i].done);
        uv_sem_destroy(&jobs[i].done);
    }
    free(jobs);
    bh_net_tls_unref(srv->tls_ctx); /* connections and listeners hold their own references */
    srv->tls_ctx = next;
    bh_log(BH_LOG_INFO, "TLS certificate reloaded", BH_LS("file", srv->hc->tls.cert_file));
}

/* SIGHUP: the log settings from the config file again (flags and environment still win; a
 * broken file changes nothing), and the TLS certificate and key for new connections. */
static void on_hup(uv_signal_t *sig, int signum) {
    server_t *srv = sig->data;
    char err[512] = "", level[16] = "", format[16] = "";
    bh_config_t next;
    if (srv->stopping)
        return;
    int r = bh_config_reload(srv->cfg, &next, err, sizeof err);
    if (r == BH_OK) {
        apply_log_settings(&next);
        snprintf(level, sizeof level, "%s", bh_config_str(&next, BH_CFG_LOG_LEVEL));
        snprintf(format, sizeof format, "%s", bh_config_str(&next, BH_CFG_LOG_FORMAT));
        bh_config_free(&next);
    }
    if (srv->tls) /* a SIGHUP during the demo set-up comes before the listeners */
        reload_tls(srv);
    if (r == BH_OK)
        bh_log(BH_LOG_INFO, "configuration reloaded", BH_LS("log_level", level),
               BH_LS("log_format", format));
    else
        bh_log(BH_LOG_ERROR, "configuration reload failed: keeping the current settings",
               BH_LS("error", err));
}

/* Completion counter for the demo set-up, which runs before the server listens. */
typedef struct {
    int pending;
    int failed;
} demo_t;

static void demo_done(void *ud, const bh_op_result_t *res) {
    demo_t *d = ud;
    d->pending--;
    if (res->status != BH_OK && !d->failed) {
        d->failed = res->status;
        bh_cli_error("demo set-up: %s", res->reason ? res->reason : bh_strerror(res->status));
    }
}

static void demo_submit(bh_ledger_t *l, demo_t *d, bh_op_kind_t kind, const char *op_id,
                        const char *asset, const char *amount) {
    bh_op_t op = {.kind = kind, .nlegs = asset ? 1 : 0};
    snprintf(op.user_id, sizeof op.user_id, "%s", DEMO_USER);
    snprintf(op.op_id, sizeof op.op_id, "%s", op_id);
    if (kind == BH_OP_CREATE_USER) {
        snprintf(op.base_currency, sizeof op.base_currency, "EUR");
        op.has_total = true;
        op.total_max_exposure = bh_dec_from_int(1500);
    } else {
        snprintf(op.legs[0].asset, sizeof op.legs[0].asset, "%s", asset);
        bh_dec_parse(amount, strlen(amount), &op.legs[0].amount);
    }
    if (bh_ledger_submit(l, &op, demo_done, d) == BH_OK)
        d->pending++;
    else
        d->failed = BH_ENOMEM;
}

/* The seed's example account: BTC 0.5, ETH 5, USDT 1000 available + 250 allocated, each asset
 * maxExposure 1500, base EUR, totalMaxExposure 1500. Runs the loop until it is durable. */
static int demo_user(uv_loop_t *loop, bh_ledger_t *l) {
    bh_snapshot_t *s = bh_ledger_snapshot(l, DEMO_USER);
    if (s) {
        bh_snapshot_release(s);
        return BH_OK;
    }
    demo_t d = {0};
    static const char *assets[] = {"BTC", "ETH", "USDT"};
    static const char *deposits[] = {"0.5", "5", "1250"};
    demo_submit(l, &d, BH_OP_CREATE_USER, "demo-create", NULL, NULL);
    for (int i = 0; i < 3; i++) {
        char id[32];
        snprintf(id, sizeof id, "demo-deposit-%s", assets[i]);
        demo_submit(l, &d, BH_OP_DEPOSIT, id, assets[i], deposits[i]);
        snprintf(id, sizeof id, "demo-limit-%s", assets[i]);
        demo_submit(l, &d, BH_OP_SET_LIMITS, id, assets[i], "1500");
    }
    demo_submit(l, &d, BH_OP_ALLOCATE, "demo-allocate-USDT", "USDT", "250");
    while (d.pending > 0)
        uv_run(loop, UV_RUN_ONCE);
    return d.failed;
}

/* Read the demo key from DIR/demo-api-key, or create one and write it there (mode 0600). */
static int demo_key(server_t *srv, const char *dir, char key[BH_API_KEY_LEN + 1]) {
    char path[4096], kid[BH_KEY_ID_LEN + 1], user[BH_ID_MAX + 1];
    snprintf(path, sizeof path, "%s/demo-api-key", dir);
    FILE *f = fopen(path, "r");
    if (f) {
        size_t n = fread(key, 1, BH_API_KEY_LEN, f);
        fclose(f);
        key[n] = 0;
        if (bh_keyring_lookup(srv->st.keyring, key, n, user, kid) == 0 &&
            strcmp(user, DEMO_USER) == 0)
            return BH_OK;
    }
    int r = bh_auth_create_key(srv->st.reader, srv->st.keyring, DEMO_USER, key, kid);
    if (r < 0)
        return r;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, key, BH_API_KEY_LEN) != BH_API_KEY_LEN || write(fd, "\n", 1) != 1) {
        bh_cli_error("cannot write %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return BH_EIO;
    }
    fchmod(fd, 0600);
    close(fd);
    return BH_OK;
}

/* Every thread's connections of that key close (the group posts to each). */
static void on_key_revoked(void *ud, const char *user_id, const char *key_id) {
    bh_hub_group_close_key(ud, user_id, key_id);
}

/* The admin token from file (or BALANCEHUB_ADMIN_TOKEN): one line, at least 16 characters. */
static int read_token(const char *file, char *out, size_t cap) {
    const char *env = getenv("BALANCEHUB_ADMIN_TOKEN");
    if (file) {
        if (bh_cli_read_secret(file, "admin token", out, cap) != BH_EXIT_OK)
            return BH_EIO;
    } else if (env && *env) {
        snprintf(out, cap, "%s", env);
    } else {
        return BH_OK;
    }
    if (strlen(out) < 16 || strpbrk(out, "\r\n")) {
        bh_cli_error("the admin token must be one line of at least 16 characters");
        OPENSSL_cleanse(out, cap);
        return BH_EINVAL;
    }
    return BH_OK;
}

/* "HOST:PORT" -> HOST, for the URLs printed at start-up. */
static void listen_host(const char *listen, char *host, size_t cap) {
    snprintf(host, cap, "%s", listen);
    char *colon = strrchr(host, ':');
    if (colon)
        *colon = 0;
}

/* The hub group's way into a thread: its listener's mailbox. */
static int io_post(void *ud, void (*fn)(void *arg), void *arg) {
    io_thread_t *t = ud;
    return bh_httpd_post(t->httpd, fn, arg);
}

/* On the I/O thread: its hub (in the group), SignalR server and listener. */
static int io_setup(io_thread_t *t) {
    server_t *srv = t->srv;
    size_t nm;
    const bh_sr_method_t *methods = bh_hub_methods(&nm);
    if (uv_loop_init(&t->loop) != 0) {
        snprintf(t->err, sizeof t->err, "cannot start an I/O thread's event loop");
        return BH_ENOMEM;
    }
    t->loop_ok = 1;
    if (bh_hub_new(srv->st.ledger, srv->st.keyring, &t->hub) < 0 ||
        bh_sr_server_new(srv->sc, methods, nm, bh_hub_hooks(), t->hub, &t->sr) < 0) {
        snprintf(t->err, sizeof t->err, "cannot start the SignalR server: out of memory");
        return BH_ENOMEM;
    }
    int r = bh_httpd_new(&t->loop, srv->hc, t->listen, on_http, t, &t->httpd, &t->port, t->err,
                         sizeof t->err);
    if (r < 0)
        return r;
    bh_sr_server_set_httpd(t->sr, t->httpd);
    /* Main's loop does not run yet, so no change can be posted before the thread's loop runs. */
    r = bh_hub_group_add(srv->group, t->hub, io_post, t);
    if (r < 0) {
        snprintf(t->err, sizeof t->err, "cannot start the hub: out of memory");
        return r;
    }
    t->in_group = 1;
    return BH_OK;
}

static void io_main(void *arg) {
    io_thread_t *t = arg;
    server_t *srv = t->srv;
    t->rc = io_setup(t);
    if (t->rc < 0) {
        /* Close what was opened here; main frees it after the join. */
        if (t->sr)
            bh_sr_server_shutdown(t->sr);
        if (t->httpd)
            bh_httpd_close_all(t->httpd);
        if (t->loop_ok)
            uv_run(&t->loop, UV_RUN_DEFAULT);
        uv_sem_post(&t->ready);
        return;
    }
    atomic_fetch_add(&srv->running, 1);
    uv_sem_post(&t->ready);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    atomic_fetch_sub(&srv->running, 1);
    uv_async_send(&srv->ended);
}

/* SO_REUSEPORT lets any process of this user bind a port whose listeners set it as well, so a
 * second server on the same --listen would quietly take half the connections. A plain
 * listening socket first (what a single listener binds) fails as before when anyone holds the
 * port. Port 0 is free by definition; a bad address is left to the listener to report. */
static int listen_free(const char *addr, char *err, size_t cap) {
    char host[256];
    const char *colon = strrchr(addr, ':');
    int port = colon ? atoi(colon + 1) : 0;
    if (port <= 0)
        return BH_OK;
    listen_host(addr, host, sizeof host);
    size_t n = strlen(host);
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
        memmove(host, host + 1, n - 2);
        host[n - 2] = 0;
    } else if (strcmp(host, "localhost") == 0) {
        snprintf(host, sizeof host, "127.0.0.1");
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0)
        return BH_OK;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return BH_OK;
    int one = 1, zero = 0, e = 0;
    socklen_t len =
        ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one); /* as libuv binds */
    if (ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    if (bind(fd, (const struct sockaddr *)&ss, len) < 0 || listen(fd, 1) < 0)
        e = errno;
    close(fd);
    if (!e)
        return BH_OK;
    snprintf(err, cap, "cannot listen on %s: %s", addr, uv_strerror(uv_translate_sys_error(e)));
    return BH_EIO;
}

/* Start the I/O threads one after the other: thread 0 binds --listen (resolving port 0), the
 * others the same address and port (SO_REUSEPORT). BH_OK, or the first failure (printed). */
static int start_threads(server_t *srv, const char *listen, int *port) {
    char host[256], err[256];
    if (listen_free(listen, err, sizeof err) < 0) {
        bh_cli_error("%s", err);
        return BH_EIO;
    }
    listen_host(listen, host, sizeof host);
    for (int i = 0; i < srv->nthreads; i++) {
        io_thread_t *t = &srv->threads[i];
        t->srv = srv;
        if (i == 0)
            snprintf(t->listen, sizeof t->listen, "%s", listen);
        else
            snprintf(t->listen, sizeof t->listen, "%s:%d", host, *port);
        if (uv_sem_init(&t->ready, 0) != 0) {
            bh_cli_error("cannot start an I/O thread");
            return BH_ENOMEM;
        }
        if (uv_thread_create(&t->tid, io_main, t) != 0) {
            uv_sem_destroy(&t->ready);
            bh_cli_error("cannot start an I/O thread");
            return BH_ENOMEM;
        }
        t->joinable = 1;
        srv->nstarted = i + 1;
        uv_sem_wait(&t->ready);
        uv_sem_destroy(&t->ready);
        if (t->rc < 0) {
            bh_cli_error("%s", t->err);
            return t->rc;
        }
        if (i == 0)
            *port = t->port;
    }
    return BH_OK;
}

/* After main's loop has ended and every thread is joined. */
static void free_threads(server_t *srv) {
    for (int i = 0; i < srv->nstarted; i++) {
        io_thread_t *t = &srv->threads[i];
        if (t->in_group)
            bh_hub_group_remove(srv->group, t->hub);
        bh_httpd_free(t->httpd);
        bh_sr_server_free(t->sr);
        bh_hub_free(t->hub);
        if (t->loop_ok && uv_loop_close(&t->loop) != 0)
            bh_log(BH_LOG_WARN, "an I/O thread's event loop closed with open handles",
                   BH_LI("thread", i));
    }
    free(srv->threads);
    srv->threads = NULL;
}

int bh_cli_serve(int argc, char **argv) {
    bh_config_t cfg;
    int r = bh_config_load(&cfg, argc, argv);
    if (r != 0) {
        bh_config_free(&cfg);
        return r > 0 ? BH_EXIT_OK : BH_EXIT_USAGE;
    }
    apply_log_settings(&cfg);
    bh_cli_store_opts_t so = {
        .data_dir = bh_config_str(&cfg, BH_CFG_DATA),
        .store_url = bh_config_str(&cfg, BH_CFG_STORE),
    };
    uint64_t reconnect = bh_config_uint(&cfg, BH_CFG_RECONNECT_WINDOW_MS);
    bh_sr_config_t sc = {
        .hub_path = bh_config_str(&cfg, BH_CFG_HUB_PATH),
        .keepalive_ms = bh_config_uint(&cfg, BH_CFG_KEEPALIVE_MS),
        .client_timeout_ms = bh_config_uint(&cfg, BH_CFG_CLIENT_TIMEOUT_MS),
        .handshake_timeout_ms = bh_config_uint(&cfg, BH_CFG_HANDSHAKE_TIMEOUT_MS),
        .max_message = (size_t)bh_config_uint(&cfg, BH_CFG_MAX_MESSAGE),
        .lp_poll_timeout_ms = bh_config_uint(&cfg, BH_CFG_LP_POLL_TIMEOUT_MS),
        .reconnect_window_ms = reconnect,
        .no_stateful_reconnect = reconnect == 0,
        .replay_max_bytes = (size_t)bh_config_uint(&cfg, BH_CFG_REPLAY_BUFFER),
        .max_batch = (size_t)bh_config_uint(&cfg, BH_CFG_MAX_BODY),
        .cors_origins = bh_config_str(&cfg, BH_CFG_CORS_ORIGINS),
        .max_conns_per_key = (size_t)bh_config_uint(&cfg, BH_CFG_MAX_CONNECTIONS_PER_KEY),
        .max_conns = (size_t)bh_config_uint(&cfg, BH_CFG_MAX_CONNECTIONS),
        .auth_fail_rate = bh_config_num(&cfg, BH_CFG_AUTH_FAIL_RATE),
        .auth_fail_burst = (size_t)bh_config_uint(&cfg, BH_CFG_AUTH_FAIL_BURST),
    };
    const char *listen = bh_config_str(&cfg, BH_CFG_LISTEN);
    const char *admin_listen = bh_config_str(&cfg, BH_CFG_ADMIN_LISTEN);
    const char *tls_cert = bh_config_str(&cfg, BH_CFG_TLS_CERT);
    int demo = bh_config_bool(&cfg, BH_CFG_DEMO);
    bh_httpd_config_t hc = {
        .max_head = (size_t)bh_config_uint(&cfg, BH_CFG_MAX_HEAD),
        .max_body = (size_t)bh_config_uint(&cfg, BH_CFG_MAX_BODY),
        .request_timeout_ms = bh_config_uint(&cfg, BH_CFG_REQUEST_TIMEOUT_MS),
        .idle_timeout_ms = bh_config_uint(&cfg, BH_CFG_IDLE_TIMEOUT_MS),
        .max_output = (size_t)bh_config_uint(&cfg, BH_CFG_MAX_OUTPUT),
        .tls = {.cert_file = tls_cert, .key_file = bh_config_str(&cfg, BH_CFG_TLS_KEY)},
        .reuseport = 1,
    };
    /* The start-up lines leave in one write (the fflush after them): a reader that waits for
     * "listening on" has the demo key and the other lines too. Nothing else goes to stdout. */
    static char outbuf[16384];
    setvbuf(stdout, outbuf, _IOFBF, sizeof outbuf);
    signal(SIGPIPE, SIG_IGN);

    server_t srv;
    memset(&srv, 0, sizeof srv);
    srv.cfg = &cfg;
    srv.sc = &sc;
    srv.hc = &hc;
    srv.tls = tls_cert != NULL;
    srv.nthreads = (int)bh_config_uint(&cfg, BH_CFG_THREADS);
    atomic_init(&srv.running, 0);
    int rc = BH_EXIT_RUNTIME, port = 0, ops_port = 0;
    char key[BH_API_KEY_LEN + 1] = "", err[256] = "", token[256] = "";
    if (read_token(bh_config_str(&cfg, BH_CFG_ADMIN_TOKEN_FILE), token, sizeof token) < 0) {
        bh_config_free(&cfg);
        return BH_EXIT_USAGE;
    }
    uv_loop_init(&srv.loop);
    /* SIGHUP's default action ends the process: take it over before anything else. */
    uv_signal_init(&srv.loop, &srv.sighup);
    uv_signal_init(&srv.loop, &srv.sigint);
    uv_signal_init(&srv.loop, &srv.sigterm);
    uv_timer_init(&srv.loop, &srv.grace);
    uv_async_init(&srv.loop, &srv.ended, on_ended);
    srv.sigint.data = srv.sigterm.data = srv.sighup.data = srv.grace.data = srv.ended.data = &srv;
    uv_signal_start(&srv.sighup, on_hup, SIGHUP);
    if (bh_cli_open(&so, &srv.loop, &srv.st) < 0)
        goto done;
    if (demo) {
        r = demo_user(&srv.loop, srv.st.ledger);
        if (r == 0)
            r = demo_key(&srv, so.data_dir, key);
        if (r < 0) {
            bh_cli_error("cannot create the demo account: %s", bh_strerror(r));
            goto done;
        }
    }
    srv.threads = calloc((size_t)srv.nthreads, sizeof *srv.threads);
    if (!srv.threads || bh_sr_shared_new(&sc, &srv.shared) < 0 ||
        bh_hub_group_new(srv.st.ledger, srv.st.keyring,
                         (double)bh_config_uint(&cfg, BH_CFG_RATE_LIMIT),
                         (double)bh_config_uint(&cfg, BH_CFG_RATE_BURST), &srv.group) < 0) {
        bh_cli_error("cannot start the SignalR server: out of memory");
        goto done;
    }
    sc.shared = srv.shared;
    /* Changes go to every thread's hub; the group posts them in order to each loop. */
    bh_ledger_set_listener(srv.st.ledger, bh_hub_group_on_change, srv.group);
    bh_admin_config_t ac = {
        .ledger = srv.st.ledger,
        .store = srv.st.reader,
        .keyring = srv.st.keyring,
        .token = token[0] ? token : NULL,
        .on_key_revoked = on_key_revoked,
        .ud = srv.group,
    };
    if (bh_admin_new(&ac, &srv.admin) < 0) {
        bh_cli_error("cannot start the admin API: out of memory");
        goto done;
    }
    OPENSSL_cleanse(token, sizeof token);
    if (srv.tls) {
        /* Loaded once and shared by every I/O thread's listener (see reload_tls). */
        if (bh_net_tls_load(hc.tls.cert_file, hc.tls.key_file, &srv.tls_ctx, err, sizeof err) < 0) {
            bh_cli_error("%s", err);
            goto done;
        }
        hc.tls.shared = srv.tls_ctx;
    }
    if (start_threads(&srv, listen, &port) < 0)
        goto done;
    if (strcmp(admin_listen, "off") != 0) {
        bh_httpd_config_t ohc = hc;
        ohc.tls = (bh_net_tls_config_t){0}; /* the operations listener is plain HTTP */
        ohc.reuseport = 0;
        r = bh_httpd_new(&srv.loop, &ohc, admin_listen, on_ops_http, &srv, &srv.opsd, &ops_port,
                         err, sizeof err);
        if (r < 0) {
            bh_cli_error("operations listener (--admin-listen): %s", err);
            goto done;
        }
    }
    uv_signal_start(&srv.sigint, on_signal, SIGINT);
    uv_signal_start(&srv.sigterm, on_signal, SIGTERM);

    char host[256];
    listen_host(listen, host, sizeof host);
    const char *scheme = tls_cert ? "https" : "http";
    printf("balancehub: listening on %s://%s:%d\n", scheme, host, port);
    if (srv.opsd) {
        char ops_host[256];
        listen_host(admin_listen, ops_host, sizeof ops_host);
        printf("admin: http://%s:%d\n", ops_host, ops_port);
    }
    printf("hub: %s://%s:%d%s\n", scheme, host, port, sc.hub_path);
    printf("API tester: %s://%s:%d/\n", scheme, host, port);
    if (demo)
        printf("demo user: %s\ndemo API key: %s (saved in %s/demo-api-key)\n", DEMO_USER, key,
               so.data_dir);
    fflush(stdout);
    OPENSSL_cleanse(key, sizeof key);
    OPENSSL_cleanse(outbuf, sizeof outbuf); /* the key's copy in stdout's buffer */
    uv_run(&srv.loop, UV_RUN_DEFAULT);
    rc = BH_EXIT_OK;
done:
    if (!srv.stopping) { /* an error path: nothing was started on a signal */
        uv_close((uv_handle_t *)&srv.sigint, NULL);
        uv_close((uv_handle_t *)&srv.sigterm, NULL);
        uv_close((uv_handle_t *)&srv.sighup, NULL);
        uv_close((uv_handle_t *)&srv.grace, NULL);
    }
    if (!uv_is_closing((uv_handle_t *)&srv.ended)) {
        /* Error paths: the threads do not need main's loop to end. */
        finish_threads(&srv);
        join_threads(&srv);
        uv_close((uv_handle_t *)&srv.ended, NULL);
    }
    if (srv.st.ledger) { /* error paths: on_ended closes it on a normal stop */
        bh_ledger_close(srv.st.ledger);
        srv.st.ledger = NULL;
    }
    if (srv.opsd && !srv.stopping)
        bh_httpd_close_all(srv.opsd);
    uv_run(&srv.loop, UV_RUN_DEFAULT);
    free_threads(&srv);
    bh_httpd_free(srv.opsd);
    bh_net_tls_unref(srv.tls_ctx);
    bh_cli_close(&srv.st);
    bh_admin_free(srv.admin);
    if (srv.group) /* after every hub */
        bh_hub_group_free(srv.group);
    if (srv.shared) /* after every SignalR server */
        bh_sr_shared_free(srv.shared);
    if (uv_loop_close(&srv.loop) != 0)
        bh_log_msg(BH_LOG_WARN, "event loop closed with open handles");
    bh_config_free(&cfg);
    return rc;
}
