/* balancehub serve: resolves the options (config.c), opens the store and ledger, creates the
 * demo account on request, and runs two listeners on one loop until SIGINT or SIGTERM: the
 * main one (hub, tester page, /healthz, /readyz) and the operations one (/admin/, /metrics,
 * /healthz, /readyz). SIGHUP re-reads the log settings and reloads the TLS certificate. */
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <signal.h>
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

typedef struct {
    uv_loop_t loop;
    uv_signal_t sigint, sigterm, sighup;
    uv_timer_t grace;
    bh_config_t *cfg;
    bh_cli_state_t st;
    bh_httpd_t *httpd; /* the main listener */
    bh_httpd_t *opsd;  /* the operations listener; NULL when off */
    bh_sr_server_t *sr;
    bh_hub_t *hub;
    bh_admin_t *admin;
    int tls;
    int stopping;
} server_t;

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
    server_t *srv = ud;
    if (bh_cli_ops_handle(srv->st.ledger, 0, hc, req))
        return;
    if (path_is(req, "/admin") || path_under(req, "/admin/") || path_is(req, "/metrics")) {
        bh_http_respond_error(hc, 404, "not found");
        return;
    }
    if (bh_sr_handle_http(srv->sr, hc, req, body, len))
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

static void on_grace(uv_timer_t *t) {
    server_t *srv = t->data;
    /* Commit and answer what is pending while the connections are still open. */
    bh_ledger_close(srv->st.ledger);
    srv->st.ledger = NULL;
    bh_sr_server_shutdown(srv->sr); /* what did not drain in time */
    bh_httpd_close_all(srv->httpd);
    if (srv->opsd)
        bh_httpd_close_all(srv->opsd);
    uv_close((uv_handle_t *)&srv->grace, NULL);
}

static void on_signal(uv_signal_t *sig, int signum) {
    server_t *srv = sig->data;
    if (srv->stopping)
        return;
    srv->stopping = 1;
    bh_log(BH_LOG_INFO, "shutting down", BH_LI("signal", signum));
    bh_httpd_stop_accepting(srv->httpd);
    if (srv->opsd)
        bh_httpd_stop_accepting(srv->opsd);
    bh_sr_server_close_all(srv->sr, NULL, 1);
    uv_close((uv_handle_t *)&srv->sigint, NULL);
    uv_close((uv_handle_t *)&srv->sigterm, NULL);
    uv_close((uv_handle_t *)&srv->sighup, NULL);
    uv_timer_start(&srv->grace, on_grace, SHUTDOWN_GRACE_MS, 0);
}

static void apply_log_settings(const bh_config_t *c) {
    bh_log_set_level((int)bh_config_uint(c, BH_CFG_LOG_LEVEL));
    bh_log_set_format((int)bh_config_uint(c, BH_CFG_LOG_FORMAT));
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
    if (srv->tls && srv->httpd) { /* a SIGHUP during the demo set-up comes before the listener */
        char terr[512] = "";
        if (bh_httpd_reload_tls(srv->httpd, terr, sizeof terr) < 0)
            bh_log(BH_LOG_ERROR, "TLS reload failed: keeping the current certificate",
                   BH_LS("error", terr));
    }
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

static void on_key_revoked(void *ud, const char *user_id, const char *key_id) {
    bh_hub_close_key(ud, user_id, key_id);
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
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);

    server_t srv;
    memset(&srv, 0, sizeof srv);
    srv.cfg = &cfg;
    srv.tls = tls_cert != NULL;
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
    srv.sigint.data = srv.sigterm.data = srv.sighup.data = srv.grace.data = &srv;
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
    size_t nm;
    const bh_sr_method_t *methods = bh_hub_methods(&nm);
    if (bh_hub_new(srv.st.ledger, srv.st.keyring, &srv.hub) < 0 ||
        bh_sr_server_new(&sc, methods, nm, bh_hub_hooks(), srv.hub, &srv.sr) < 0) {
        bh_cli_error("cannot start the SignalR server: out of memory");
        goto done;
    }
    bh_hub_set_rate_limit(srv.hub, (double)bh_config_uint(&cfg, BH_CFG_RATE_LIMIT),
                          (double)bh_config_uint(&cfg, BH_CFG_RATE_BURST));
    bh_ledger_set_listener(srv.st.ledger, bh_hub_on_change, srv.hub);
    bh_admin_config_t ac = {
        .ledger = srv.st.ledger,
        .store = srv.st.reader,
        .keyring = srv.st.keyring,
        .token = token[0] ? token : NULL,
        .on_key_revoked = on_key_revoked,
        .ud = srv.hub,
    };
    if (bh_admin_new(&ac, &srv.admin) < 0) {
        bh_cli_error("cannot start the admin API: out of memory");
        goto done;
    }
    OPENSSL_cleanse(token, sizeof token);
    bh_httpd_config_t hc = {
        .max_head = (size_t)bh_config_uint(&cfg, BH_CFG_MAX_HEAD),
        .max_body = (size_t)bh_config_uint(&cfg, BH_CFG_MAX_BODY),
        .request_timeout_ms = bh_config_uint(&cfg, BH_CFG_REQUEST_TIMEOUT_MS),
        .idle_timeout_ms = bh_config_uint(&cfg, BH_CFG_IDLE_TIMEOUT_MS),
        .max_output = (size_t)bh_config_uint(&cfg, BH_CFG_MAX_OUTPUT),
        .tls = {.cert_file = tls_cert, .key_file = bh_config_str(&cfg, BH_CFG_TLS_KEY)},
    };
    r = bh_httpd_new(&srv.loop, &hc, listen, on_http, &srv, &srv.httpd, &port, err, sizeof err);
    if (r < 0) {
        bh_cli_error("%s", err);
        goto done;
    }
    if (strcmp(admin_listen, "off") != 0) {
        hc.tls = (bh_net_tls_config_t){0}; /* the operations listener is plain HTTP */
        r = bh_httpd_new(&srv.loop, &hc, admin_listen, on_ops_http, &srv, &srv.opsd, &ops_port, err,
                         sizeof err);
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
    uv_run(&srv.loop, UV_RUN_DEFAULT);
    rc = BH_EXIT_OK;
done:
    if (srv.st.ledger) { /* error paths: the grace timer closes it on a normal stop */
        bh_ledger_close(srv.st.ledger);
        srv.st.ledger = NULL;
    }
    if (srv.sr)
        bh_sr_server_shutdown(srv.sr);
    if (!srv.stopping) {
        if (srv.httpd)
            bh_httpd_close_all(srv.httpd);
        if (srv.opsd)
            bh_httpd_close_all(srv.opsd);
        uv_close((uv_handle_t *)&srv.sigint, NULL);
        uv_close((uv_handle_t *)&srv.sigterm, NULL);
        uv_close((uv_handle_t *)&srv.sighup, NULL);
        uv_close((uv_handle_t *)&srv.grace, NULL);
    }
    uv_run(&srv.loop, UV_RUN_DEFAULT);
    bh_httpd_free(srv.httpd);
    bh_httpd_free(srv.opsd);
    bh_cli_close(&srv.st);
    bh_admin_free(srv.admin);
    bh_sr_server_free(srv.sr);
    bh_hub_free(srv.hub);
    if (uv_loop_close(&srv.loop) != 0)
        bh_log_msg(BH_LOG_WARN, "event loop closed with open handles");
    bh_config_free(&cfg);
    return rc;
}
