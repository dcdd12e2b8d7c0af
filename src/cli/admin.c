/* balancehub admin: every admin API operation from the command line. Talks HTTP (libcurl) to a
 * running server, or works in-process on a data directory (--data, server stopped) through the
 * same dispatcher the server uses, so both modes answer byte for byte alike. */
#include <errno.h>
#include <getopt.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "../admin/admin.h"
#include "../base/buf.h"
#include "../base/error.h"
#include "../base/json.h"
#include "cli.h"

#define DEFAULT_URL "http://127.0.0.1:5001" /* serve's operations listener (--admin-listen) */
#define TOKEN_MAX 4096

enum { O_OPID = 1, O_BASE = 2, O_TOTAL = 4, O_SINCE = 8, O_LIMIT = 16 };

typedef struct {
    const char *op_id, *base, *total, *since, *limit;
} cmd_opts_t;

typedef struct {
    bh_http_method_t method;
    const char *verb;
    bh_buf_t path, query, body;
} request_t;

typedef struct cmd cmd_t;
struct cmd {
    const char *name;
    const char *synopsis;
    const char *help;
    int min, max; /* positional arguments; max -1: any number */
    unsigned opts;
    int (*build)(const cmd_t *c, char **pos, int npos, const cmd_opts_t *o, request_t *rq);
};

typedef struct {
    bool done;
    int status;
    bh_buf_t body;
} response_t;

static const char admin_usage[] =
    "usage: balancehub admin [--url URL] [--admin-token-file FILE] [--data DIR] COMMAND ARGS\n"
    "\n"
    "Administers users, balances, rates and API keys through the admin API of a running\n"
    "server, which serves it on its operations listener (serve --admin-listen): --url, default\n"
    "env BALANCEHUB_URL or " DEFAULT_URL ". Or offline on a data directory with --data DIR\n"
    "(stop the server that uses it first).\n"
    "The admin token comes from --admin-token-file FILE or env BALANCEHUB_ADMIN_TOKEN.\n"
    "\n"
    "commands:\n"
    "  create-user USER [--base-currency CCY] [--total-max-exposure N] [--op-id ID]\n"
    "  delete-user USER [--op-id ID]\n"
    "  deposit|withdraw|allocate|release USER ASSET AMOUNT [--op-id ID]\n"
    "  trade USER ASSET=AMOUNT... [--op-id ID]\n"
    "  set-limits USER [ASSET=MAX...] [--total-max-exposure N] [--op-id ID]\n"
    "  set-rates CURRENCY ASSET=RATE...\n"
    "  create-key USER\n"
    "  revoke-key KEY_ID\n"
    "  balances USER\n"
    "  journal USER [--since N] [--limit N]\n"
    "\n"
    "Each command prints the answer JSON on one line. Exit status: 0 success, 1 error answer\n"
    "or connection failure, 2 usage error. 'balancehub admin COMMAND --help' for details.\n";

static const char connection_help[] =
    "\n"
    "connection: --url URL of the operations listener (env BALANCEHUB_URL, default\n"
    "            " DEFAULT_URL "),\n"
    "            --admin-token-file FILE (env BALANCEHUB_ADMIN_TOKEN),\n"
    "            or --data DIR [--store URL] to work offline on a stopped server's data.\n";

/* ---- request building ------------------------------------------------------------------------ */

/* Append s as one percent-encoded path segment. */
static int put_segment(bh_buf_t *b, const char *s) {
    static const char hex[] = "0123456789ABCDEF";
    int rc = BH_OK;
    for (const unsigned char *p = (const unsigned char *)s; *p && rc == BH_OK; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '.' || *p == '_' || *p == '~')
            rc = bh_buf_appendc(b, (char)*p);
        else
            rc = bh_buf_printf(b, "%%%c%c", hex[*p >> 4], hex[*p & 15]);
    }
    return rc;
}

/* Path "/admin/users/USER" + tail. */
static int user_path(request_t *rq, const char *user, const char *tail) {
    int rc = bh_buf_appends(&rq->path, "/admin/users/");
    if (rc == BH_OK)
        rc = put_segment(&rq->path, user);
    if (rc == BH_OK && tail)
        rc = bh_buf_appends(&rq->path, tail);
    return rc;
}

/* ,"name":"value" (first: no leading comma). */
static int put_member(bh_buf_t *b, bool first, const char *name, const char *value) {
    int rc = bh_buf_printf(b, "%s\"%s\":", first ? "" : ",", name);
    if (rc == BH_OK)
        rc = bh_json_write_str(b, value, strlen(value));
    return rc;
}

/* A random op id, so that running a command twice applies it twice (as asked). */
static void random_op_id(char out[24]) {
    unsigned char r[8];
    if (RAND_bytes(r, sizeof r) != 1)
        memset(r, 0, sizeof r);
    snprintf(out, 24, "cli-%02x%02x%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2], r[3], r[4], r[5],
             r[6], r[7]);
}

/* Split ASSET=AMOUNT; a usage error (printed) when the shape is wrong. */
static int split_pair(const char *arg, const char *what, char **name, const char **value) {
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg || !eq[1]) {
        bh_cli_error("expected %s, got '%s'", what, arg);
        return BH_EXIT_USAGE;
    }
    *name = strndup(arg, (size_t)(eq - arg));
    *value = eq + 1;
    return *name ? BH_OK : BH_EXIT_RUNTIME;
}

/* "{"ASSET":"AMOUNT",...}" from ASSET=AMOUNT arguments. */
static int put_pairs(bh_buf_t *b, char **args, int n, const char *what) {
    int rc = bh_buf_appendc(b, '{');
    for (int i = 0; i < n && rc == BH_OK; i++) {
        char *name;
        const char *value;
        if ((rc = split_pair(args[i], what, &name, &value)) != BH_OK)
            return rc;
        rc = put_member(b, i == 0, name, value) == BH_OK ? BH_OK : BH_EXIT_RUNTIME;
        free(name);
    }
    if (rc == BH_OK)
        rc = bh_buf_appendc(b, '}') == BH_OK ? BH_OK : BH_EXIT_RUNTIME;
    return rc;
}

static int op_head(request_t *rq, const char *user, const char *op, const cmd_opts_t *o) {
    char rnd[24];
    rq->method = BH_HTTP_POST;
    int rc = user_path(rq, user, "/ops");
    if (!o->op_id)
        random_op_id(rnd);
    if (rc == BH_OK)
        rc = bh_buf_appendc(&rq->body, '{');
    if (rc == BH_OK)
        rc = put_member(&rq->body, true, "opId", o->op_id ? o->op_id : rnd);
    if (rc == BH_OK)
        rc = put_member(&rq->body, false, "op", op);
    return rc;
}

static int build_create_user(const cmd_t *c, char **pos, int n, const cmd_opts_t *o,
                             request_t *rq) {
    rq->method = BH_HTTP_POST;
    int rc = bh_buf_appends(&rq->path, "/admin/users");
    if (rc == BH_OK)
        rc = bh_buf_appendc(&rq->body, '{');
    if (rc == BH_OK)
        rc = put_member(&rq->body, true, "userId", pos[0]);
    if (rc == BH_OK)
        rc = put_member(&rq->body, false, "baseCurrency", o->base ? o->base : "EUR");
    if (rc == BH_OK)
        rc = put_member(&rq->body, false, "totalMaxExposure", o->total ? o->total : "0");
    if (rc == BH_OK && o->op_id)
        rc = put_member(&rq->body, false, "opId", o->op_id);
    if (rc == BH_OK)
        rc = bh_buf_appendc(&rq->body, '}');
    return rc == BH_OK ? BH_OK : BH_EXIT_RUNTIME;
}

static int build_delete_user(const cmd_t *c, char **pos, int n, const cmd_opts_t *o,
                             request_t *rq) {
    rq->method = BH_HTTP_DELETE;
    int rc = user_path(rq, pos[0], NULL);
    if (rc == BH_OK && o->op_id) {
        rc = bh_buf_appendc(&rq->body, '{');
        if (rc == BH_OK)
            rc = put_member(&rq->body, true, "opId", o->op_id);
        if (rc == BH_OK)
            rc = bh_buf_appendc(&rq->body, '}');
    }
    return rc == BH_OK ? BH_OK : BH_EXIT_RUNTIME;
}

static int build_single(const cmd_t *c, char **pos, int n, const cmd_opts_t *o, request_t *rq) {
    int rc = op_head(rq, pos[0], c->name, o);
    if (rc == BH_OK)
        rc = put_member(&rq->body, false, "asset", pos[1]);
    if (rc == BH_OK)
        rc = put_member(&rq->body, false, "amount", pos[2]);
    if (rc == BH_OK)
        rc = bh_buf_appendc(&rq->body, '}');
    return rc == BH_OK ? BH_OK : BH_EXIT_RUNTIME;
}

static int build_trade(const cmd_t *c, char **pos, int n, const cmd_opts_t *o, request_t *rq) {
    int rc = op_head(rq, pos[0], "trade", o);
    if (rc == BH_OK)
        rc = bh_buf_appends(&rq->body, ",\"legs\":[");
    for (int i = 1; i < n && rc == BH_OK; i++) {
        char *asset;
        const char *amount;
        int r = split_pair(pos[i], "ASSET=AMOUNT", &asset, &amount);
        if (r != BH_OK)
            return r;
        rc = bh_buf_appends(&rq->body, i > 1 ? ",{" : "{");
        if (rc == BH_OK)
            rc = put_member(&rq->body, true, "asset", asset);
        if (rc == BH_OK)
            rc = put_member(&rq->body, false, "amount", amount);
        if (rc == BH_OK)
            rc = bh_buf_appendc(&rq->body, '}');
        free(asset);
    }
    if (rc == BH_OK)
        rc = bh_buf_appends(&rq->body, "]}");
    return rc == BH_OK ? BH_OK : BH_EXIT_RUNTIME;
}

static int build_set_limits(const cmd_t *c, char **pos, int n, const cmd_opts_t *o, request_t *rq) {
    if (n == 1 && !o->total) {
        bh_cli_error("set-limits needs ASSET=MAX arguments or --total-max-exposure: run "
                     "'balancehub admin set-limits --help'");
        return BH_EXIT_USAGE;
    }
    int rc = op_head(rq, pos[0], "set-limits", o);
    if (rc == BH_OK && n > 1) {
        if (bh_buf_appends(&rq->body, ",\"maxExposure\":") != BH_OK)
            return BH_EXIT_RUNTIME;
        if ((rc = put_pairs(&rq->body, pos + 1, n - 1, "ASSET=MAX")) != BH_OK)
            return rc;
    }
    if (rc == BH_OK && o->total)
        rc = put_member(&rq->body, false, "totalMaxExposure", o->total);
    if (rc == BH_OK)
        rc = bh_buf_appendc(&rq->body, '}');
    return rc == BH_OK ? BH_OK : BH_EXIT_RUNTIME;
}

static int build_set_rates(const cmd_t *c, char **pos, int n, const cmd_opts_t *o, request_t *rq) {
    rq->method = BH_HTTP_PUT;
    if (bh_buf_appends(&rq->path, "/admin/rates") != BH_OK ||
        bh_buf_appendc(&rq->body, '{') != BH_OK ||
        put_member(&rq->body, true, "baseCurrency", pos[0]) != BH_OK ||
        bh_buf_appends(&rq->body, ",\"rates\":") != BH_OK)
        return BH_EXIT_RUNTIME;
    int rc = put_pairs(&rq->body, pos + 1, n - 1, "ASSET=RATE");
    if (rc == BH_OK && bh_buf_appendc(&rq->body, '}') != BH_OK)
        rc = BH_EXIT_RUNTIME;
    return rc;
}

static int build_create_key(const cmd_t *c, char **pos, int n, const cmd_opts_t *o, request_t *rq) {
    rq->method = BH_HTTP_POST;
    int rc = user_path(rq, pos[0], "/keys");
    if (rc == BH_OK)
        rc = bh_buf_appends(&rq->body, "{}");
    return rc == BH_OK ? BH_OK : BH_EXIT_RUNTIME;
}

static int build_revoke_key(const cmd_t *c, char **pos, int n, const cmd_opts_t *o, request_t *rq) {
    rq->method = BH_HTTP_DELETE;
    int rc = bh_buf_appends(&rq->path, "/admin/keys/");
    if (rc == BH_OK)
        rc = put_segment(&rq->path, pos[0]);
    return rc == BH_OK ? BH_OK : BH_EXIT_RUNTIME;
}

static int build_balances(const cmd_t *c, char **pos, int n, const cmd_opts_t *o, request_t *rq) {
    rq->method = BH_HTTP_GET;
    return user_path(rq, pos[0], "/balances") == BH_OK ? BH_OK : BH_EXIT_RUNTIME;
}

static bool whole_number(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 19)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

static int build_journal(const cmd_t *c, char **pos, int n, const cmd_opts_t *o, request_t *rq) {
    rq->method = BH_HTTP_GET;
    if ((o->since && !whole_number(o->since)) || (o->limit && !whole_number(o->limit))) {
        bh_cli_error("--since and --limit need whole numbers");
        return BH_EXIT_USAGE;
    }
    int rc = user_path(rq, pos[0], "/journal");
    if (rc == BH_OK && o->since)
        rc = bh_buf_printf(&rq->query, "since=%s", o->since);
    if (rc == BH_OK && o->limit)
        rc = bh_buf_printf(&rq->query, "%slimit=%s", o->since ? "&" : "", o->limit);
    return rc == BH_OK ? BH_OK : BH_EXIT_RUNTIME;
}

#define SINGLE_HELP(verb, what)                                                                    \
    verb " AMOUNT of ASSET " what ".\n"                                                            \
         "AMOUNT is an exact decimal (at most 18 digits after the point), greater than 0.\n"       \
         "--op-id ID makes the operation idempotent: a repeated ID answers the first result.\n"    \
         "Without it a random ID is used.\n"

static const cmd_t cmds[] = {
    {"create-user", "USER [--base-currency CCY] [--total-max-exposure N] [--op-id ID]",
     "Create user USER with base currency CCY (default EUR) and total maximum exposure N\n"
     "(default 0). Prints the new user's balances. The default op id is \"create-user\", so\n"
     "repeating the command answers the first result.\n",
     1, 1, O_BASE | O_TOTAL | O_OPID, build_create_user},
    {"delete-user", "USER [--op-id ID]",
     "Delete user USER: its connections get deleted:true and are closed; later operations\n"
     "on it fail. Prints the final balances.\n",
     1, 1, O_OPID, build_delete_user},
    {"deposit", "USER ASSET AMOUNT [--op-id ID]", SINGLE_HELP("Add", "to USER's available"), 3, 3,
     O_OPID, build_single},
    {"withdraw", "USER ASSET AMOUNT [--op-id ID]",
     SINGLE_HELP("Take", "from USER's available (credit only within the limits)"), 3, 3, O_OPID,
     build_single},
    {"allocate", "USER ASSET AMOUNT [--op-id ID]",
     SINGLE_HELP("Move", "from available to allocated"), 3, 3, O_OPID, build_single},
    {"release", "USER ASSET AMOUNT [--op-id ID]",
     SINGLE_HELP("Move", "from allocated back to available"), 3, 3, O_OPID, build_single},
    {"trade", "USER ASSET=AMOUNT... [--op-id ID]",
     "Apply signed amounts to several assets of USER together, all or nothing,\n"
     "e.g. trade alice BTC=-0.1 EUR=6000. Each asset at most once, amounts not 0.\n",
     2, -1, O_OPID, build_trade},
    {"set-limits", "USER [ASSET=MAX...] [--total-max-exposure N] [--op-id ID]",
     "Set USER's per-asset maximum exposure and/or total maximum exposure (>= 0),\n"
     "e.g. set-limits alice BTC=1500 --total-max-exposure 3000.\n",
     1, -1, O_TOTAL | O_OPID, build_set_limits},
    {"set-rates", "CURRENCY ASSET=RATE...",
     "Set the value of one unit of each ASSET in CURRENCY (> 0), e.g. set-rates EUR BTC=60000.\n"
     "Exposures use the new rates from each user's next change on.\n",
     2, -1, 0, build_set_rates},
    {"create-key", "USER",
     "Create an API key for USER. Prints {\"keyId\":...,\"apiKey\":...}; the key is shown\n"
     "only this once.\n",
     1, 1, 0, build_create_key},
    {"revoke-key", "KEY_ID",
     "Revoke the API key with id KEY_ID: it stops working and its connections close.\n", 1, 1, 0,
     build_revoke_key},
    {"balances", "USER", "Print USER's balances (the same data GetBalances sends).\n", 1, 1, 0,
     build_balances},
    {"journal", "USER [--since N] [--limit N]",
     "Print USER's journal entries with sequence > N (default 0), at most --limit\n"
     "(default 1000, at most 10000), oldest first.\n",
     1, 1, O_SINCE | O_LIMIT, build_journal},
};

static void cmd_help(const cmd_t *c, FILE *f) {
    fprintf(f, "usage: balancehub admin [CONNECTION] %s %s\n\n%s%s", c->name, c->synopsis, c->help,
            connection_help);
}

/* ---- transports ------------------------------------------------------------------------------ */

static size_t on_curl_body(char *p, size_t size, size_t n, void *ud) {
    return bh_buf_append(ud, p, size * n) == BH_OK ? size * n : 0;
}

static int run_http(const char *base, const char *token, const request_t *rq, response_t *res) {
    static const char *const verbs[] = {[BH_HTTP_GET] = "GET",
                                        [BH_HTTP_POST] = "POST",
                                        [BH_HTTP_PUT] = "PUT",
                                        [BH_HTTP_DELETE] = "DELETE"};
    struct curl_slist *hdrs = NULL, *h;
    bh_buf_t url, auth;
    CURL *c = NULL;
    CURLcode cr = CURLE_OUT_OF_MEMORY;
    long status = 0;
    int rc = BH_EXIT_RUNTIME;

    bh_buf_init(&url, 0);
    bh_buf_init(&auth, 0);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        bh_cli_error("cannot initialise libcurl");
        return BH_EXIT_RUNTIME;
    }
    if (bh_buf_appends(&url, base) != BH_OK ||
        bh_buf_append(&url, rq->path.data, rq->path.len) != BH_OK ||
        (rq->query.len && bh_buf_printf(&url, "?%s", rq->query.data) != BH_OK) ||
        !(c = curl_easy_init()))
        goto fail;
    if (token && (bh_buf_printf(&auth, "Authorization: Bearer %s", token) != BH_OK ||
                  !(h = curl_slist_append(hdrs, auth.data))))
        goto fail;
    if (token)
        hdrs = h;
    if (!(h = curl_slist_append(hdrs, "Expect:")))
        goto fail;
    hdrs = h;
    if (rq->body.len) {
        if (!(h = curl_slist_append(hdrs, "Content-Type: application/json")))
            goto fail;
        hdrs = h;
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, rq->body.data);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)rq->body.len);
    }
    curl_easy_setopt(c, CURLOPT_URL, url.data);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, verbs[rq->method]);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_curl_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &res->body);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 60000L);
    cr = curl_easy_perform(c);
    if (cr == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        res->status = (int)status;
        res->done = true;
        rc = BH_EXIT_OK;
    }
fail:
    if (rc != BH_EXIT_OK)
        bh_cli_error("cannot reach %s: %s (is the server running? see --url)", base,
                     curl_easy_strerror(cr));
    if (c)
        curl_easy_cleanup(c);
    curl_slist_free_all(hdrs);
    if (auth.data)
        OPENSSL_cleanse(auth.data, auth.cap);
    bh_buf_free(&auth);
    bh_buf_free(&url);
    curl_global_cleanup();
    return rc;
}

static void on_local(void *ud, int status, const char *json, size_t len) {
    response_t *res = ud;
    res->status = status;
    res->done = true;
    if (bh_buf_append(&res->body, json, len) != BH_OK)
        res->status = 500;
}

static int run_local(const bh_cli_store_opts_t *so, const request_t *rq, response_t *res) {
    bh_cli_state_t st;
    bh_admin_t *a = NULL;
    uv_loop_t loop;
    int rc;

    if (uv_loop_init(&loop) != 0) {
        bh_cli_error("cannot create the event loop");
        return BH_EXIT_RUNTIME;
    }
    rc = bh_cli_open(so, &loop, &st);
    if (rc == BH_OK) {
        bh_admin_config_t cfg = {.ledger = st.ledger, .store = st.reader, .keyring = st.keyring};
        rc = bh_admin_new(&cfg, &a);
        if (rc < 0)
            bh_cli_error("cannot start the admin dispatcher: %s", bh_strerror(rc));
    }
    if (rc == BH_OK) {
        bh_admin_request(a, rq->method, rq->path.data, rq->path.len, rq->query.data, rq->query.len,
                         rq->body.data, rq->body.len, NULL, 0, 1, on_local, res);
        /* The answer comes once the change is durable: the ledger wakes the loop. */
        while (!res->done && uv_run(&loop, UV_RUN_ONCE))
            ;
        if (!res->done)
            bh_cli_error("the ledger gave no answer");
    }
    bh_admin_free(a);
    bh_cli_close(&st);
    uv_run(&loop, UV_RUN_DEFAULT); /* the ledger's handles finish closing */
    if (uv_loop_close(&loop) != 0)
        bh_cli_error("event loop closed with open handles");
    return rc == BH_OK && res->done ? BH_EXIT_OK : BH_EXIT_RUNTIME;
}

/* ---- output ------------------------------------------------------------------------------------
 */

static int print_response(const response_t *res) {
    bh_json_doc_t *doc = NULL;
    const bh_json_t *e;
    char msg[512];

    if (res->status >= 200 && res->status < 300) {
        fwrite(res->body.data ? res->body.data : "", 1, res->body.len, stdout);
        fputc('\n', stdout);
        return fflush(stdout) == 0 ? BH_EXIT_OK : BH_EXIT_RUNTIME;
    }
    snprintf(msg, sizeof msg, "the server answered HTTP %d", res->status);
    if (res->body.len && bh_json_parse(res->body.data, res->body.len, 4, &doc) == BH_OK &&
        (e = bh_json_get(bh_json_root(doc), "error")) && e->type == BH_JSON_STRING)
        snprintf(msg, sizeof msg, "%s (HTTP %d)", e->str, res->status);
    bh_json_free(doc);
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p < 0x20)
            *p = ' ';
    bh_cli_error("%s%s", msg,
                 res->status == 401 ? ": set BALANCEHUB_ADMIN_TOKEN or --admin-token-file" : "");
    return BH_EXIT_RUNTIME;
}

/* ---- main --------------------------------------------------------------------------------------
 */

int bh_cli_admin(int argc, char **argv) {
    static const struct option opts[] = {
        {"url", required_argument, 0, 'u'},
        {"admin-token-file", required_argument, 0, 'T'},
        {"data", required_argument, 0, 'd'},
        {"store", required_argument, 0, 's'},
        {"op-id", required_argument, 0, 'o'},
        {"base-currency", required_argument, 0, 'b'},
        {"total-max-exposure", required_argument, 0, 't'},
        {"since", required_argument, 0, 'S'},
        {"limit", required_argument, 0, 'L'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    static const struct {
        int opt;
        unsigned bit;
    } cmd_only[] = {{'o', O_OPID}, {'b', O_BASE}, {'t', O_TOTAL}, {'S', O_SINCE}, {'L', O_LIMIT}};
    const char *url = NULL, *token_file = NULL;
    bh_cli_store_opts_t so = {.data_dir = NULL};
    cmd_opts_t co = {0};
    const cmd_t *cmd = NULL;
    char token[TOKEN_MAX];
    request_t rq = {0};
    response_t res = {0};
    unsigned seen = 0;
    int c, rc, pass;

    bh_buf_init(&rq.path, 0);
    bh_buf_init(&rq.query, 0);
    bh_buf_init(&rq.body, 0);
    bh_buf_init(&res.body, 0);
    opterr = 0;
    /* Pass 1 reads the options before COMMAND ("+": stop there); pass 2 the command's own,
     * which may come anywhere after it. */
    for (pass = 1; pass <= 2; pass++) {
        int cargc = argc;
        char **cargv = argv;
        if (pass == 2) {
            if (optind >= argc) {
                fputs(admin_usage, stderr);
                return BH_EXIT_USAGE;
            }
            for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
                if (strcmp(cmds[i].name, argv[optind]) == 0)
                    cmd = &cmds[i];
            if (!cmd) {
                bh_cli_error("unknown admin command '%s': run 'balancehub admin --help'",
                             argv[optind]);
                return BH_EXIT_USAGE;
            }
            cargc = argc - optind;
            cargv = argv + optind;
            optind = 0; /* glibc: full re-initialisation for the new vector */
        }
        while ((c = getopt_long(cargc, cargv, pass == 1 ? "+h" : "h", opts, NULL)) != -1) {
            for (size_t i = 0; i < sizeof cmd_only / sizeof cmd_only[0]; i++)
                if (cmd_only[i].opt == c)
                    seen |= cmd_only[i].bit;
            switch (c) {
            case 'u':
                url = optarg;
                break;
            case 'T':
                token_file = optarg;
                break;
            case 'd':
                so.data_dir = optarg;
                break;
            case 's':
                so.store_url = optarg;
                break;
            case 'o':
                co.op_id = optarg;
                break;
            case 'b':
                co.base = optarg;
                break;
            case 't':
                co.total = optarg;
                break;
            case 'S':
                co.since = optarg;
                break;
            case 'L':
                co.limit = optarg;
                break;
            case 'h':
                if (cmd)
                    cmd_help(cmd, stdout);
                else
                    fputs(admin_usage, stdout);
                return BH_EXIT_OK;
            default:
                bh_cli_error("unknown or incomplete option '%s': run 'balancehub admin %s%s--help'",
                             cargv[optind - 1], cmd ? cmd->name : "", cmd ? " " : "");
                return BH_EXIT_USAGE;
            }
        }
        if (pass == 2) {
            int npos = cargc - optind;
            if (seen & ~cmd->opts) {
                bh_cli_error("an option given does not apply to %s: run 'balancehub admin %s "
                             "--help'",
                             cmd->name, cmd->name);
                return BH_EXIT_USAGE;
            }
            if (npos < cmd->min || (cmd->max >= 0 && npos > cmd->max)) {
                bh_cli_error("wrong number of arguments: usage: balancehub admin %s %s", cmd->name,
                             cmd->synopsis);
                return BH_EXIT_USAGE;
            }
            rc = cmd->build(cmd, cargv + optind, npos, &co, &rq);
            if (rc != BH_OK)
                goto done;
        }
    }

    if (url || (!so.data_dir && !so.store_url)) {
        const char *tok = NULL;
        if (!url || !*url)
            url = getenv("BALANCEHUB_URL");
        if (!url || !*url)
            url = DEFAULT_URL;
        char base[2048];
        snprintf(base, sizeof base, "%s", url);
        for (size_t n = strlen(base); n > 0 && base[n - 1] == '/'; n--)
            base[n - 1] = '\0';
        if (token_file) {
            if ((rc = bh_cli_read_secret(token_file, "admin token", token, sizeof token)) != BH_OK)
                goto done;
            tok = token;
        } else if ((tok = getenv("BALANCEHUB_ADMIN_TOKEN")) && !*tok) {
            tok = NULL;
        }
        if (tok && strpbrk(tok, "\r\n")) {
            bh_cli_error("the admin token must be one line");
            rc = BH_EXIT_USAGE;
            goto done;
        }
        rc = run_http(base, tok, &rq, &res);
        OPENSSL_cleanse(token, sizeof token);
    } else {
        if (!so.data_dir)
            so.data_dir = "./data";
        rc = run_local(&so, &rq, &res);
    }
    if (rc == BH_EXIT_OK)
        rc = print_response(&res);
done:
    if (res.body.data)
        OPENSSL_cleanse(res.body.data, res.body.cap); /* may hold a new API key */
    bh_buf_free(&res.body);
    bh_buf_free(&rq.path);
    bh_buf_free(&rq.query);
    bh_buf_free(&rq.body);
    return rc;
}
