/* balancehub serve: opens the store and ledger, creates the demo account on request, and runs
 * the HTTP/WebSocket/SignalR server until SIGINT or SIGTERM. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
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

#define DEMO_USER "user-123"
#define SHUTDOWN_GRACE_MS 500

typedef struct {
    uv_loop_t loop;
    uv_signal_t sigint, sigterm;
    uv_timer_t grace;
    bh_cli_state_t st;
    bh_httpd_t *httpd;
    bh_sr_server_t *sr;
    bh_hub_t *hub;
    bh_admin_t *admin;
    int stopping;
} server_t;

static const char serve_usage[] =
    "usage: balancehub serve [OPTIONS]\n"
    "\n"
    "  --listen HOST:PORT       address to listen on (default 127.0.0.1:5000,\n"
    "                           env BALANCEHUB_LISTEN; port 0 picks a free one)\n"
    "  --tls-cert FILE          serve https/wss with this PEM certificate (leaf first,\n"
    "                           then its chain); needs --tls-key (env BALANCEHUB_TLS_CERT)\n"
    "  --tls-key FILE           PEM private key of --tls-cert (env BALANCEHUB_TLS_KEY)\n"
    "  --data DIR               data directory (default ./data)\n"
    "  --store URL              store: sqlite:PATH (default sqlite:DIR/balancehub.db)\n"
    "  --demo                   create the demo user user-123 and its API key if absent;\n"
    "                           the key is written to DIR/demo-api-key and printed\n"
    "  --admin-token-file F     enable the admin API under /admin/ with the token in F\n"
    "                           (or env BALANCEHUB_ADMIN_TOKEN); disabled without one\n"
    "  --hub-path PATH          hub path (default /ExecutionLiveServer/v1)\n"
    "  --keepalive-ms N         server ping interval (default 15000)\n"
    "  --client-timeout-ms N    close connections silent this long (default 30000)\n"
    "  --handshake-timeout-ms N SignalR handshake deadline (default 15000)\n"
    "  --max-message BYTES      largest inbound hub message (default 32768)\n"
    "  --max-body BYTES         largest HTTP request body or WebSocket message, each of\n"
    "                           which may batch many hub messages (default 1048576)\n"
    "  --cors-origins LIST      browser origins allowed from other sites, comma-separated,\n"
    "                           or * for any (default: same origin only)\n"
    "  --lp-poll-timeout-ms N   Long Polling: answer a poll without data after this\n"
    "                           (default 90000)\n"
    "  --reconnect-window-ms N  stateful reconnect: keep a dropped WebSocket's session this\n"
    "                           long (default 30000; 0 turns stateful reconnect off)\n"
    "  --replay-buffer BYTES    stateful reconnect: unacknowledged bytes kept per connection\n"
    "                           (default 1048576)\n"
    "  --max-connections N      connections (negotiated, open or resumable) at most in all;\n"
    "                           beyond, negotiate and WebSocket requests get 503\n"
    "                           (default 100000)\n"
    "  --max-connections-per-key N  connections at most per API key; beyond, 429\n"
    "                           (default 32)\n"
    "  --rate-limit N           hub invocations per second per API key, shared by its\n"
    "                           connections; beyond, an account.balances.error event\n"
    "                           \"rate limit exceeded\" (default 50)\n"
    "  --rate-burst N           invocations an idle API key may send at once (default 100)\n"
    "  -h, --help               this help\n";

static void on_http(void *ud, bh_http_conn_t *hc, const bh_http_request_t *req, const char *body,
                    size_t len) {
    server_t *srv = ud;
    if (req->path_len == 8 && memcmp(req->path, "/healthz", 8) == 0) {
        if (req->method == BH_HTTP_GET || req->method == BH_HTTP_HEAD)
            bh_http_respond(hc, 200, "text/plain", NULL, "ok", 2);
        else
            bh_http_respond(hc, 405, "text/plain", "Allow: GET, HEAD\r\n", "Method Not Allowed",
                            18);
        return;
    }
    if (bh_sr_handle_http(srv->sr, hc, req, body, len))
        return;
    if (bh_admin_handle_http(srv->admin, hc, req, body, len))
        return;
    if (bh_static_handle(hc, req))
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
    uv_close((uv_handle_t *)&srv->grace, NULL);
}

static void on_signal(uv_signal_t *sig, int signum) {
    server_t *srv = sig->data;
    if (srv->stopping)
        return;
    srv->stopping = 1;
    bh_log(BH_LOG_INFO, "shutting down (signal %d)", signum);
    bh_httpd_stop_accepting(srv->httpd);
    bh_sr_server_close_all(srv->sr, NULL, 1);
    uv_close((uv_handle_t *)&srv->sigint, NULL);
    uv_close((uv_handle_t *)&srv->sigterm, NULL);
    uv_timer_start(&srv->grace, on_grace, SHUTDOWN_GRACE_MS, 0);
}

static int parse_u64(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-')
        return BH_EINVAL;
    *out = v;
    return BH_OK;
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

enum { OPT_TLS_CERT = 0x100, OPT_TLS_KEY };
enum { OPT_CORS = 0x200, OPT_LP_POLL, OPT_RECONNECT, OPT_REPLAY, OPT_MAX_BODY };
enum { OPT_MAX_CONNS = 0x300, OPT_MAX_CONNS_KEY, OPT_RATE, OPT_BURST };

/* An environment variable as an option default; empty counts as unset. */
static const char *env_opt(const char *name) {
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

int bh_cli_serve(int argc, char **argv) {
    static const struct option opts[] = {
        {"listen", required_argument, 0, 'l'},
        {"tls-cert", required_argument, 0, OPT_TLS_CERT},
        {"tls-key", required_argument, 0, OPT_TLS_KEY},
        {"data", required_argument, 0, 'd'},
        {"store", required_argument, 0, 's'},
        {"demo", no_argument, 0, 'D'},
        {"hub-path", required_argument, 0, 'p'},
        {"keepalive-ms", required_argument, 0, 'k'},
        {"client-timeout-ms", required_argument, 0, 't'},
        {"handshake-timeout-ms", required_argument, 0, 'H'},
        {"max-message", required_argument, 0, 'm'},
        {"admin-token-file", required_argument, 0, 'A'},
        {"cors-origins", required_argument, 0, OPT_CORS},
        {"lp-poll-timeout-ms", required_argument, 0, OPT_LP_POLL},
        {"reconnect-window-ms", required_argument, 0, OPT_RECONNECT},
        {"replay-buffer", required_argument, 0, OPT_REPLAY},
        {"max-body", required_argument, 0, OPT_MAX_BODY},
        {"max-connections", required_argument, 0, OPT_MAX_CONNS},
        {"max-connections-per-key", required_argument, 0, OPT_MAX_CONNS_KEY},
        {"rate-limit", required_argument, 0, OPT_RATE},
        {"rate-burst", required_argument, 0, OPT_BURST},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *listen = getenv("BALANCEHUB_LISTEN");
    bh_cli_store_opts_t so = {.data_dir = "./data"};
    bh_sr_config_t sc = {
        .hub_path = "/ExecutionLiveServer/v1",
        .keepalive_ms = 15000,
        .client_timeout_ms = 30000,
        .handshake_timeout_ms = 15000,
        .max_message = 32768,
    };
    const char *token_file = NULL;
    const char *tls_cert = env_opt("BALANCEHUB_TLS_CERT"), *tls_key = env_opt("BALANCEHUB_TLS_KEY");
    int demo = 0, c;
    uint64_t v, rate = 50, burst = 100;
    if (!listen || !*listen)
        listen = "127.0.0.1:5000";
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'l':
            listen = optarg;
            break;
        case OPT_TLS_CERT:
            tls_cert = optarg;
            break;
        case OPT_TLS_KEY:
            tls_key = optarg;
            break;
        case 'd':
            so.data_dir = optarg;
            break;
        case 's':
            so.store_url = optarg;
            break;
        case 'D':
            demo = 1;
            break;
        case 'A':
            token_file = optarg;
            break;
        case 'p':
            sc.hub_path = optarg;
            break;
        case 'h':
            fputs(serve_usage, stdout);
            return BH_EXIT_OK;
        case 'k':
        case 't':
        case 'H':
        case 'm':
            if (parse_u64(optarg, &v) < 0 || v == 0) {
                bh_cli_error("%s needs a positive whole number, got '%s'", argv[optind - 2],
                             optarg);
                return BH_EXIT_USAGE;
            }
            if (c == 'k')
                sc.keepalive_ms = v;
            else if (c == 't')
                sc.client_timeout_ms = v;
            else if (c == 'H')
                sc.handshake_timeout_ms = v;
            else
                sc.max_message = (size_t)v;
            break;
        case OPT_CORS:
            sc.cors_origins = optarg;
            break;
        case OPT_LP_POLL:
        case OPT_RECONNECT:
        case OPT_REPLAY:
        case OPT_MAX_BODY:
            if (parse_u64(optarg, &v) < 0 || (v == 0 && c != OPT_RECONNECT)) {
                bh_cli_error("%s needs a %s whole number, got '%s'", argv[optind - 2],
                             c == OPT_RECONNECT ? "non-negative" : "positive", optarg);
                return BH_EXIT_USAGE;
            }
            if (c == OPT_LP_POLL)
                sc.lp_poll_timeout_ms = v;
            else if (c == OPT_REPLAY)
                sc.replay_max_bytes = (size_t)v;
            else if (c == OPT_MAX_BODY)
                sc.max_batch = v > (1u << 30) ? (size_t)1 << 30 : (size_t)v;
            else if (v == 0)
                sc.no_stateful_reconnect = 1;
            else
                sc.reconnect_window_ms = v;
            break;
        case OPT_MAX_CONNS:
        case OPT_MAX_CONNS_KEY:
        case OPT_RATE:
        case OPT_BURST:
            if (parse_u64(optarg, &v) < 0 || v == 0 || v > 1000000000) {
                bh_cli_error("%s needs a whole number from 1 to 1000000000, got '%s'",
                             argv[optind - 2], optarg);
                return BH_EXIT_USAGE;
            }
            if (c == OPT_MAX_CONNS)
                sc.max_conns = (size_t)v;
            else if (c == OPT_MAX_CONNS_KEY)
                sc.max_conns_per_key = (size_t)v;
            else if (c == OPT_RATE)
                rate = v;
            else
                burst = v;
            break;
        default:
            bh_cli_error("unknown or incomplete option '%s': run 'balancehub serve --help'",
                         argv[optind - 1]);
            return BH_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        bh_cli_error("unexpected argument '%s': run 'balancehub serve --help'", argv[optind]);
        return BH_EXIT_USAGE;
    }
    if (!tls_cert != !tls_key) {
        bh_cli_error("--tls-cert and --tls-key go together: give both or neither");
        return BH_EXIT_USAGE;
    }
    if (sc.hub_path[0] != '/') {
        bh_cli_error("--hub-path must start with '/'");
        return BH_EXIT_USAGE;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);

    server_t srv;
    memset(&srv, 0, sizeof srv);
    int rc = BH_EXIT_RUNTIME, r, port = 0;
    char key[BH_API_KEY_LEN + 1] = "", err[256] = "", token[256] = "";
    if (read_token(token_file, token, sizeof token) < 0)
        return BH_EXIT_USAGE;
    uv_loop_init(&srv.loop);
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
    bh_hub_set_rate_limit(srv.hub, (double)rate, (double)burst);
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
        .max_head = 16384,
        .max_body = sc.max_batch ? sc.max_batch : 1 << 20,
        .request_timeout_ms = 10000,
        .idle_timeout_ms = 60000,
        .max_output = 1 << 20,
        .tls = {.cert_file = tls_cert, .key_file = tls_key},
    };
    r = bh_httpd_new(&srv.loop, &hc, listen, on_http, &srv, &srv.httpd, &port, err, sizeof err);
    if (r < 0) {
        bh_cli_error("%s", err);
        goto done;
    }
    uv_signal_init(&srv.loop, &srv.sigint);
    uv_signal_init(&srv.loop, &srv.sigterm);
    uv_timer_init(&srv.loop, &srv.grace);
    srv.sigint.data = srv.sigterm.data = srv.grace.data = &srv;
    uv_signal_start(&srv.sigint, on_signal, SIGINT);
    uv_signal_start(&srv.sigterm, on_signal, SIGTERM);

    char host[256];
    snprintf(host, sizeof host, "%s", listen);
    char *colon = strrchr(host, ':');
    if (colon)
        *colon = 0;
    const char *scheme = tls_cert ? "https" : "http";
    printf("balancehub: listening on %s://%s:%d\n", scheme, host, port);
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
    if (srv.httpd && !srv.stopping)
        bh_httpd_close_all(srv.httpd);
    uv_run(&srv.loop, UV_RUN_DEFAULT);
    bh_httpd_free(srv.httpd);
    bh_cli_close(&srv.st);
    bh_admin_free(srv.admin);
    bh_sr_server_free(srv.sr);
    bh_hub_free(srv.hub);
    if (uv_loop_close(&srv.loop) != 0)
        bh_log(BH_LOG_WARN, "event loop closed with open handles");
    return rc;
}
