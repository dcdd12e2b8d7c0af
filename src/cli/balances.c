/* balancehub balances / balancehub watch: the client library (include/balancehub/client.h) on
 * the command line. `balances` prints one GetBalances snapshot; `watch` prints every balance
 * change until SIGINT/SIGTERM, surviving server restarts through the library's reconnection. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "../../include/balancehub/client.h"
#include "cli.h"

#define DEFAULT_URL "http://127.0.0.1:5000"
#define HUB_PATH "/ExecutionLiveServer/v1"
#define DEFAULT_CLIENT_ID "balancehub-cli"
#define KEY_MAX 4096
#define ANSWER_TIMEOUT_MS 30000

static const char balances_usage[] =
    "usage: balancehub balances [--url URL] [--client-id ID] [--protocol json|messagepack]\n"
    "                           [--format table|json] [--ca-file FILE] [--api-key-file FILE]\n"
    "\n"
    "Prints the balances of the API key's user: one GetBalances snapshot, as a table or, with\n"
    "--format json, as the event's data object on one line.\n";

static const char watch_usage[] =
    "usage: balancehub watch [--url URL] [--client-id ID] [--protocol json|messagepack]\n"
    "                        [--format table|json] [--ca-file FILE] [--api-key-file FILE]\n"
    "\n"
    "Follows the balances of the API key's user and prints each change as it arrives (with\n"
    "--format json, each as one line holding the data object) until SIGINT or SIGTERM.\n"
    "Sequence numbers rise by 1 per change; after a lost connection or a skipped sequence it\n"
    "fetches a new snapshot and prints it when it is newer than the last one printed. A line on\n"
    "stderr says when it is watching.\n";

static const char options_help[] =
    "\n"
    "options:\n"
    "  --url URL            the server (env BALANCEHUB_URL, default " DEFAULT_URL "), or the\n"
    "                       full hub URL; a URL without a path gets " HUB_PATH "\n"
    "  --client-id ID       the clientId GetBalances echoes (default " DEFAULT_CLIENT_ID ")\n"
    "  --protocol P         hub protocol: json (default, exact amounts) or messagepack\n"
    "  --format F           table (default) or json\n"
    "  --ca-file FILE       trust the CA certificates in FILE (PEM) for an https URL instead of\n"
    "                       the system's; the certificate and host name are always verified\n"
    "  --api-key-file FILE  read the API key from FILE (first line); otherwise the key comes\n"
    "                       from env BALANCEHUB_API_KEY, never from the command line\n"
    "\n"
    "Exit status: 0 success (watch: stopped by a signal), 1 failure (key refused, server\n"
    "unreachable, ...), 2 usage error.\n";

typedef struct {
    int watch, json;
    const char *url_text; /* as the user gave it, for messages */
    const char *client_id;
    bh_client_t *client;
    /* the first GetBalances */
    uint64_t invocation;
    int completed, answer_err;
    char answer_msg[512];
    bh_balances_t *snapshot;
    /* watch */
    uint64_t last_printed;
    int print_failed;
} app_t;

static bh_client_t *volatile signal_client;
static volatile sig_atomic_t got_signal;

static void on_signal(int sig) {
    bh_client_t *c = signal_client;
    got_signal = 1;
    if (c)
        bh_client_stop(c); /* async-signal-safe */
}

/* ---- output ---- */

static int print_json(const bh_balances_t *b) {
    size_t n = bh_balances_to_json(b, NULL, 0);
    char *text = n > 0 ? malloc(n + 1) : NULL;
    int r = -1;

    if (text) {
        bh_balances_to_json(b, text, n + 1);
        r = puts(text) < 0 ? -1 : 0;
        free(text);
    }
    return r;
}

static int print_table(const bh_balances_t *b) {
    static const char *const head[] = {"ASSET", "AVAILABLE", "ALLOCATED", "CURRENT EXPOSURE",
                                       "MAX EXPOSURE"};
    char(*cells)[5][BH_DECIMAL_STRLEN] = calloc(b->asset_count + 1, sizeof(*cells));
    int w[5];

    if (!cells)
        return -1;
    for (size_t i = 0; i < b->asset_count; i++) {
        const bh_asset_balance_t *a = &b->assets[i];
        snprintf(cells[i][0], sizeof(cells[i][0]), "%s", a->name);
        bh_decimal_to_string(a->available, cells[i][1]);
        bh_decimal_to_string(a->allocated, cells[i][2]);
        bh_decimal_to_string(a->current_exposure, cells[i][3]);
        bh_decimal_to_string(a->max_exposure, cells[i][4]);
    }
    /* the last row: the totals */
    size_t t = b->asset_count;
    snprintf(cells[t][0], sizeof(cells[t][0]), "TOTAL");
    bh_decimal_to_string(b->total_current_exposure, cells[t][3]);
    bh_decimal_to_string(b->total_max_exposure, cells[t][4]);
    for (int k = 0; k < 5; k++) {
        w[k] = (int)strlen(head[k]);
        for (size_t i = 0; i <= t; i++)
            if ((int)strlen(cells[i][k]) > w[k])
                w[k] = (int)strlen(cells[i][k]);
    }
    printf("%s  sequence %llu  base currency %s%s\n", b->user_id, (unsigned long long)b->sequence,
           b->base_currency, b->deleted ? "  (deleted)" : "");
    printf("%-*s  %*s  %*s  %*s  %*s\n", w[0], head[0], w[1], head[1], w[2], head[2], w[3], head[3],
           w[4], head[4]);
    for (size_t i = 0; i <= t; i++)
        printf("%-*s  %*s  %*s  %*s  %*s\n", w[0], cells[i][0], w[1], cells[i][1], w[2],
               cells[i][2], w[3], cells[i][3], w[4], cells[i][4]);
    free(cells);
    return ferror(stdout) ? -1 : 0;
}

static int print_balances(const app_t *app, const bh_balances_t *b) {
    int r = app->json ? print_json(b) : print_table(b);
    if (r == 0 && app->watch && !app->json)
        putchar('\n');
    return fflush(stdout) == 0 ? r : -1;
}

/* ---- callbacks ---- */

static void on_state(bh_client_t *c, bh_client_state_t st, int err, void *ud) {
    app_t *app = ud;
    if (!app->watch || app->snapshot == NULL)
        return; /* failures before the first snapshot are reported by the caller */
    if (st == BH_CLIENT_RECONNECTING)
        bh_cli_error("connection lost (%s): reconnecting", bh_client_last_error(c));
    else if (st == BH_CLIENT_CONNECTED)
        bh_cli_error("reconnected");
}

static void on_balances(bh_client_t *c, const bh_balances_t *b, void *ud) {
    app_t *app = ud;

    if (app->snapshot == NULL) {
        if (b->kind == BH_BALANCES_SNAPSHOT && bh_balances_dup(b, &app->snapshot) == 0)
            app->last_printed = b->sequence;
        return;
    }
    /* watch: every change once, in order; a re-snapshot only when it brings something new */
    if (b->kind == BH_BALANCES_SNAPSHOT && b->sequence <= app->last_printed)
        return;
    app->last_printed = b->sequence;
    if (print_balances(app, b) != 0 && !app->print_failed) {
        app->print_failed = 1;
        bh_client_stop(c);
    }
}

static void on_completion(bh_client_t *c, uint64_t id, int err, const char *message, void *ud) {
    app_t *app = ud;
    if (id != app->invocation || app->completed)
        return;
    app->completed = 1;
    if (err != 0) {
        app->answer_err = err;
        snprintf(app->answer_msg, sizeof(app->answer_msg), "GetBalances failed: %s",
                 message ? message : bh_client_strerror(err));
    }
}

static void on_error(bh_client_t *c, int err, const char *message, void *ud) {
    app_t *app = ud;
    if (app->snapshot == NULL && !app->completed && app->answer_err == 0) {
        app->answer_err = err; /* e.g. preChecksError for a bad --client-id */
        snprintf(app->answer_msg, sizeof(app->answer_msg), "%s", message);
    } else if (app->snapshot != NULL) {
        bh_cli_error("%s", message);
    }
}

/* ---- options ---- */

/* The hub URL: a URL with no path (or just "/") gets the default hub path. */
static int hub_url(const char *in, char *out, size_t size) {
    const char *auth = strstr(in, "://"), *rest;
    size_t base;

    if (auth == NULL)
        return -1;
    rest = auth + 3 + strcspn(auth + 3, "/?#");
    base = (size_t)(rest - in);
    if (*rest == '/' && (rest[1] == '\0' || rest[1] == '?' || rest[1] == '#'))
        rest++;
    else if (*rest == '/')
        return snprintf(out, size, "%s", in) < (int)size ? 0 : -1;
    return snprintf(out, size, "%.*s%s%s", (int)base, in, HUB_PATH, rest) < (int)size ? 0 : -1;
}

static int connect_error(const app_t *app, int r) {
    const char *detail = bh_client_last_error(app->client);

    if (got_signal)
        return BH_EXIT_OK; /* interrupted while connecting: as asked */
    if (r == BH_CLIENT_EAUTH)
        bh_cli_error("%s: check BALANCEHUB_API_KEY or --api-key-file", detail);
    else if (r == BH_CLIENT_ECONNECT || r == BH_CLIENT_ERESOLVE || r == BH_CLIENT_ETIMEOUT)
        bh_cli_error("cannot connect to %s: %s (is the server running? see --url)", app->url_text,
                     detail[0] ? detail : bh_client_strerror(r));
    else
        bh_cli_error("%s", detail[0] ? detail : bh_client_strerror(r));
    return BH_EXIT_RUNTIME;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Connect, GetBalances, wait for its snapshot and completion. */
static int first_snapshot(app_t *app) {
    long long deadline;
    int r = bh_client_connect(app->client);

    if (r != 0)
        return connect_error(app, r);
    r = bh_client_get_balances(app->client, app->client_id, &app->invocation);
    if (r != 0) {
        bh_cli_error("cannot invoke GetBalances: %s", bh_client_strerror(r));
        return BH_EXIT_RUNTIME;
    }
    deadline = now_ms() + ANSWER_TIMEOUT_MS;
    while (!app->completed && r == 0 && bh_client_state(app->client) == BH_CLIENT_CONNECTED) {
        long long left = deadline - now_ms();
        if (left <= 0) {
            bh_cli_error("the server did not answer GetBalances within %d s",
                         ANSWER_TIMEOUT_MS / 1000);
            return BH_EXIT_RUNTIME;
        }
        r = bh_client_poll(app->client, (int)left);
    }
    if (app->answer_err != 0) {
        bh_cli_error("%s", app->answer_msg);
        return BH_EXIT_RUNTIME;
    }
    if (!app->completed) {
        if (bh_client_state(app->client) == BH_CLIENT_DISCONNECTED && r == 0)
            return BH_EXIT_OK; /* stopped by a signal while waiting */
        bh_cli_error("%s", bh_client_last_error(app->client)[0] ? bh_client_last_error(app->client)
                                                                : "the connection ended");
        return BH_EXIT_RUNTIME;
    }
    if (app->snapshot == NULL) {
        bh_cli_error("the server completed GetBalances without sending a snapshot");
        return BH_EXIT_RUNTIME;
    }
    return BH_EXIT_OK;
}

static int run(app_t *app, bh_client_options_t *o) {
    static const bh_client_callbacks_t cb = {on_state, on_balances, on_completion, on_error};
    struct sigaction sa;
    int r, rc;

    r = bh_client_new(o, &cb, app, &app->client);
    if (r != 0) {
        if (r == BH_CLIENT_EINVAL && o->ca_file)
            bh_cli_error("cannot use --ca-file %s or --url %s: check both", o->ca_file,
                         app->url_text);
        else if (r == BH_CLIENT_EINVAL)
            bh_cli_error("invalid --url %s or API key", app->url_text);
        else
            bh_cli_error("cannot create the client: %s", bh_client_strerror(r));
        return r == BH_CLIENT_EINVAL ? BH_EXIT_USAGE : BH_EXIT_RUNTIME;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    signal_client = app->client;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    rc = first_snapshot(app);
    if (rc == BH_EXIT_OK && app->snapshot != NULL) {
        if (!app->watch) {
            if (print_balances(app, app->snapshot) != 0) {
                bh_cli_error("cannot write the balances: %s", strerror(errno));
                rc = BH_EXIT_RUNTIME;
            }
            bh_client_stop(app->client);
            bh_client_run(app->client); /* a clean close, within a second */
        } else {
            bh_cli_error("watching %s from sequence %llu (Ctrl-C to stop)", app->snapshot->user_id,
                         (unsigned long long)app->snapshot->sequence);
            r = bh_client_run(app->client);
            if (app->print_failed) {
                bh_cli_error("cannot write the balances: %s", strerror(errno));
                rc = BH_EXIT_RUNTIME;
            } else if (r != 0) {
                bh_cli_error("%s", bh_client_last_error(app->client)[0]
                                       ? bh_client_last_error(app->client)
                                       : bh_client_strerror(r));
                rc = BH_EXIT_RUNTIME;
            }
        }
    }
    signal_client = NULL;
    bh_client_free(app->client);
    bh_balances_free(app->snapshot);
    return rc;
}

static int client_command(int argc, char **argv, int watch) {
    static const struct option opts[] = {
        {"url", required_argument, 0, 'u'},      {"client-id", required_argument, 0, 'c'},
        {"protocol", required_argument, 0, 'p'}, {"format", required_argument, 0, 'f'},
        {"ca-file", required_argument, 0, 'C'},  {"api-key-file", required_argument, 0, 'k'},
        {"help", no_argument, 0, 'h'},           {0, 0, 0, 0},
    };
    const char *usage = watch ? watch_usage : balances_usage, *name = watch ? "watch" : "balances";
    const char *url = NULL, *key_file = NULL, *format = "table", *key;
    char key_buf[KEY_MAX], hub[4096];
    bh_client_options_t o;
    app_t app;
    int c, rc;

    memset(&app, 0, sizeof(app));
    app.watch = watch;
    app.client_id = DEFAULT_CLIENT_ID;
    bh_client_options_init(&o);
    opterr = 0;
    optind = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'u':
            url = optarg;
            break;
        case 'c':
            app.client_id = optarg;
            break;
        case 'p':
            o.protocol = optarg;
            break;
        case 'f':
            format = optarg;
            break;
        case 'C':
            o.ca_file = optarg;
            break;
        case 'k':
            key_file = optarg;
            break;
        case 'h':
            printf("%s%s", usage, options_help);
            return BH_EXIT_OK;
        default:
            bh_cli_error("unknown or incomplete option '%s': run 'balancehub %s --help'",
                         argv[optind - 1], name);
            return BH_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        /* not echoed: it may well be an API key, which must not end up in logs */
        bh_cli_error("%s takes no arguments (the API key comes from BALANCEHUB_API_KEY or "
                     "--api-key-file, never from the command line): run 'balancehub %s --help'",
                     name, name);
        return BH_EXIT_USAGE;
    }
    if (strcmp(o.protocol, "json") != 0 && strcmp(o.protocol, "messagepack") != 0) {
        bh_cli_error("--protocol must be json or messagepack, not '%s'", o.protocol);
        return BH_EXIT_USAGE;
    }
    if (strcmp(format, "table") != 0 && strcmp(format, "json") != 0) {
        bh_cli_error("--format must be table or json, not '%s'", format);
        return BH_EXIT_USAGE;
    }
    app.json = strcmp(format, "json") == 0;
    if (!url || !*url)
        url = getenv("BALANCEHUB_URL");
    if (!url || !*url)
        url = DEFAULT_URL;
    app.url_text = url;
    if (hub_url(url, hub, sizeof(hub)) != 0) {
        bh_cli_error("--url must be an http:// or https:// URL, not '%s'", url);
        return BH_EXIT_USAGE;
    }
    if (key_file) {
        if ((rc = bh_cli_read_secret(key_file, "API key", key_buf, sizeof(key_buf))) != BH_EXIT_OK)
            return rc;
        key = key_buf;
    } else if (!(key = getenv("BALANCEHUB_API_KEY")) || !*key) {
        bh_cli_error("no API key: set BALANCEHUB_API_KEY or use --api-key-file FILE");
        return BH_EXIT_USAGE;
    }
    o.url = hub;
    o.api_key = key;
    if (!watch)
        o.reconnect_max_attempts = -1; /* one snapshot: a lost connection is a failure */
    rc = run(&app, &o);
    OPENSSL_cleanse(key_buf, sizeof(key_buf));
    return rc;
}

int bh_cli_balances(int argc, char **argv) {
    return client_command(argc, argv, 0);
}

int bh_cli_watch(int argc, char **argv) {
    return client_command(argc, argv, 1);
}
