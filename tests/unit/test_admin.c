/* Admin dispatcher in-process: token check, routing, exact answers, journal formatting, key
 * creation and revocation, and hostile input (every prefix of valid bodies and paths, random
 * bytes) answered exactly once without crashing. Runs on a real SQLite file and libuv loop. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "admin/admin.h"
#include "auth/auth.h"
#include "base/error.h"
#include "ledger/ledger.h"
#include "store/store.h"

#define TOKEN "s3cret-admin-token-0123456789"

typedef struct {
    int calls;
    int status;
    char *body;
    size_t len;
} resp_t;

typedef struct {
    char dir[64];
    char path[128];
    uv_loop_t loop;
    bh_store_t *w, *r;
    bh_ledger_t *l;
    bh_keyring_t *kr;
    bh_admin_t *a;
    int revoked_calls;
    char revoked_user[BH_ID_MAX + 1], revoked_key[BH_ID_MAX + 1];
    resp_t last;
} fx_t;

static void on_revoked(void *ud, const char *user, const char *key) {
    fx_t *f = ud;
    f->revoked_calls++;
    snprintf(f->revoked_user, sizeof f->revoked_user, "%s", user);
    snprintf(f->revoked_key, sizeof f->revoked_key, "%s", key);
}

static void on_resp(void *ud, int status, const char *json, size_t len) {
    resp_t *r = ud;
    r->calls++;
    r->status = status;
    free(r->body);
    r->body = malloc(len + 1);
    assert_non_null(r->body);
    memcpy(r->body, json, len);
    r->body[len] = '\0';
    r->len = len;
}

/* One request with exact-size copies of path and body (so ASan sees any over-read); runs the
 * loop until the answer came; checks it came once. Returns the status; the body is f->last. */
static int req(fx_t *f, bh_http_method_t m, const char *path, size_t plen, const char *query,
               const char *body, size_t blen, const char *auth, int trusted) {
    char *p = malloc(plen ? plen : 1), *b = malloc(blen ? blen : 1);
    assert_non_null(p);
    assert_non_null(b);
    memcpy(p, path, plen);
    memcpy(b, body ? body : "", blen);
    f->last.calls = 0;
    bh_admin_request(f->a, m, p, plen, query, query ? strlen(query) : 0, body ? b : NULL, blen,
                     auth, auth ? strlen(auth) : 0, trusted, on_resp, &f->last);
    free(p);
    free(b); /* the dispatcher must not keep pointers into the request */
    while (f->last.calls == 0)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(f->last.calls, 1);
    return f->last.status;
}

static int call(fx_t *f, bh_http_method_t m, const char *path, const char *body) {
    return req(f, m, path, strlen(path), NULL, body, body ? strlen(body) : 0, NULL, 1);
}

static void expect(fx_t *f, int status, const char *text) {
    if (f->last.status != status || strcmp(f->last.body, text) != 0)
        fail_msg("expected %d %s\n     got %d %s", status, text, f->last.status, f->last.body);
}

static int load_key(void *ud, const bh_store_key_t *k) {
    return bh_keyring_put(ud, k);
}

static void open_all(fx_t *f, const char *token) {
    char err[256];
    assert_int_equal(bh_store_open(f->path, &f->w, err, sizeof err), BH_OK);
    assert_int_equal(bh_store_open(f->path, &f->r, err, sizeof err), BH_OK);
    assert_int_equal(bh_ledger_open(&f->loop, f->w, f->r, &f->l), BH_OK);
    f->kr = bh_keyring_new();
    assert_non_null(f->kr);
    bh_store_visitor_t v = {.ud = f->kr, .key = load_key};
    assert_int_equal(bh_store_load(f->r, &v), BH_OK);
    bh_admin_config_t cfg = {.ledger = f->l,
                             .store = f->r,
                             .keyring = f->kr,
                             .token = token,
                             .on_key_revoked = on_revoked,
                             .ud = f};
    assert_int_equal(bh_admin_new(&cfg, &f->a), BH_OK);
}

static void close_all(fx_t *f) {
    bh_admin_free(f->a);
    bh_ledger_close(f->l);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    bh_keyring_free(f->kr);
    bh_store_close(f->r);
    bh_store_close(f->w);
    f->a = NULL, f->l = NULL, f->kr = NULL, f->r = f->w = NULL;
}

static int setup(void **state) {
    fx_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    strcpy(f->dir, "/tmp/bh_admin_XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/bh.db", f->dir);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    open_all(f, TOKEN);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    static const char *const names[] = {"bh.db", "bh.db-wal", "bh.db-shm"};
    fx_t *f = *state;
    char p[160];
    if (f->l)
        close_all(f);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", f->dir, names[i]);
        unlink(p);
    }
    assert_int_equal(rmdir(f->dir), 0);
    free(f->last.body);
    free(f);
    return 0;
}

#define UNAUTH                                                                                     \
    "{\"error\":\"missing or wrong admin token (Authorization: Bearer "                            \
    "TOKEN)\",\"code\":\"unauthorized\"}"
#define NOTFOUND_EP "{\"error\":\"no such admin endpoint\",\"code\":\"not_found\"}"
#define ALICE1                                                                                     \
    "{\"userId\":\"alice\",\"sequence\":1,\"assets\":[],\"baseCurrency\":\"EUR\","                 \
    "\"totalCurrentExposure\":0,\"totalMaxExposure\":1000,\"deleted\":false}"

static void make_alice(fx_t *f) {
    call(f, BH_HTTP_POST, "/admin/users",
         "{\"userId\":\"alice\",\"baseCurrency\":\"EUR\",\"totalMaxExposure\":\"1000\"}");
    expect(f, 201, ALICE1);
}

/* ---- tests ------------------------------------------------------------------------------------
 */

static void test_token(void **state) {
    fx_t *f = *state;
    const char *path = "/admin/users/alice/balances";
    size_t n = strlen(path);
    static const char *const wrong[] = {
        NULL,
        "",
        "Bearer",
        "Bearer ",
        "Bearer x",
        "Basic " TOKEN,
        "Bearer" TOKEN,
        TOKEN,
        "Bearer " TOKEN "x",
        "Bearer s3cret-admin-token-012345678",
    };
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
        req(f, BH_HTTP_GET, path, n, NULL, NULL, 0, wrong[i], 0);
        expect(f, 401, UNAUTH);
    }
    /* Unknown paths are 401 too: nothing about the routes leaks without the token. */
    req(f, BH_HTTP_GET, "/admin/zzz", 10, NULL, NULL, 0, NULL, 0);
    expect(f, 401, UNAUTH);
    static const char *const right[] = {"Bearer " TOKEN, "bearer " TOKEN, "BEARER   " TOKEN "  "};
    for (size_t i = 0; i < sizeof right / sizeof right[0]; i++) {
        req(f, BH_HTTP_GET, path, n, NULL, NULL, 0, right[i], 0);
        expect(f, 404, "{\"error\":\"unknown user 'alice'\",\"code\":\"not_found\"}");
    }
    /* trusted skips the check. */
    req(f, BH_HTTP_GET, path, n, NULL, NULL, 0, NULL, 1);
    assert_int_equal(f->last.status, 404);
}

static void test_disabled(void **state) {
    fx_t *f = *state;
    close_all(f);
    open_all(f, "");
    req(f, BH_HTTP_GET, "/admin/users/x/balances", 23, NULL, NULL, 0, "Bearer " TOKEN, 0);
    expect(f, 404, "{\"error\":\"not found\",\"code\":\"not_found\"}");
    req(f, BH_HTTP_GET, "/admin/users/x/balances", 23, NULL, NULL, 0, "Bearer ", 0);
    expect(f, 404, "{\"error\":\"not found\",\"code\":\"not_found\"}");
    /* The CLI's in-process use still works. */
    make_alice(f);
    close_all(f);
    open_all(f, NULL);
    req(f, BH_HTTP_POST, "/admin/users", 12, NULL, "{}", 2, NULL, 0);
    expect(f, 404, "{\"error\":\"not found\",\"code\":\"not_found\"}");
}

static void test_ops_exact(void **state) {
    fx_t *f = *state;
    make_alice(f);
    call(f, BH_HTTP_POST, "/admin/users/alice/ops",
         "{\"opId\":\"d1\",\"op\":\"deposit\",\"asset\":\"BTC\",\"amount\":1e-18}");
    expect(f, 200,
           "{\"sequence\":2,\"data\":{\"userId\":\"alice\",\"sequence\":2,\"assets\":[{\"name\":"
           "\"BTC\",\"available\":0.000000000000000001,\"allocated\":0,\"currentExposure\":0,"
           "\"maxExposure\":0}],\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,"
           "\"totalMaxExposure\":1000,\"deleted\":false}}");
    char first[1024];
    snprintf(first, sizeof first, "%s", f->last.body);
    /* Same opId, other arguments: the first answer, byte for byte. */
    call(f, BH_HTTP_POST, "/admin/users/alice/ops",
         "{\"op\":\"deposit\",\"amount\":\"5\",\"asset\":\"ETH\",\"opId\":\"d1\"}");
    expect(f, 200, first);
    call(f, BH_HTTP_POST, "/admin/users/alice/ops",
         " {\"opId\":\"t\",\"op\":\"trade\",\"legs\":[{\"asset\":\"BTC\",\"amount\":\"-1E-18\"},"
         "{\"amount\":2.50,\"asset\":\"EUR\"}]}\n");
    assert_int_equal(f->last.status, 200);
    assert_non_null(strstr(f->last.body, "{\"name\":\"BTC\",\"available\":0,"));
    assert_non_null(strstr(f->last.body, "{\"name\":\"EUR\",\"available\":2.5,"));
    call(f, BH_HTTP_POST, "/admin/users/alice/ops",
         "{\"opId\":\"s\",\"op\":\"set-limits\",\"maxExposure\":{\"BTC\":\"7\",\"EUR\":0},"
         "\"totalMaxExposure\":\"12.000\"}");
    assert_int_equal(f->last.status, 200);
    assert_non_null(strstr(f->last.body, "\"currentExposure\":0,\"maxExposure\":7}"));
    assert_non_null(strstr(f->last.body, "\"totalMaxExposure\":12,"));
    call(f, BH_HTTP_PUT, "/admin/rates",
         "{\"rates\":{\"BTC\":\"60000.10\",\"ETH\":3e3},\"baseCurrency\":\"EUR\"}");
    expect(f, 200, "{\"baseCurrency\":\"EUR\",\"rates\":{\"BTC\":\"60000.1\",\"ETH\":\"3000\"}}");

    call(f, BH_HTTP_GET, "/admin/users/alice/balances", NULL);
    assert_int_equal(f->last.status, 200);
    assert_non_null(strstr(f->last.body, "\"sequence\":4,"));

    call(f, BH_HTTP_DELETE, "/admin/users/alice", "");
    assert_int_equal(f->last.status, 200);
    assert_non_null(strstr(f->last.body, "\"sequence\":5,"));
    assert_non_null(strstr(f->last.body, "\"deleted\":true}"));
    assert_int_equal(f->last.body[0], '{');
    assert_null(strstr(f->last.body, "\"data\""));
    call(f, BH_HTTP_POST, "/admin/users/alice/ops",
         "{\"opId\":\"d9\",\"op\":\"deposit\",\"asset\":\"BTC\",\"amount\":\"1\"}");
    assert_int_equal(f->last.status, 404);
    assert_non_null(strstr(f->last.body, "\"code\":\"not_found\""));
}

/* A journal entry's time: "YYYY-MM-DDTHH:MM:SS.mmmZ". */
static void check_time(const char *t) {
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.dddZ";
    for (size_t i = 0; i < sizeof shape - 1; i++) {
        if (shape[i] == 'd')
            assert_true(t[i] >= '0' && t[i] <= '9');
        else
            assert_int_equal(t[i], shape[i]);
    }
    assert_int_equal(t[sizeof shape - 1], '"');
}

static void test_journal(void **state) {
    fx_t *f = *state;
    make_alice(f);
    call(f, BH_HTTP_POST, "/admin/users/alice/ops",
         "{\"opId\":\"d\",\"op\":\"deposit\",\"asset\":\"BTC\",\"amount\":\"0.50\"}");
    call(f, BH_HTTP_POST, "/admin/users/alice/ops",
         "{\"opId\":\"t\\\"q\",\"op\":\"trade\",\"legs\":[{\"asset\":\"BTC\",\"amount\":\"-0.1\"},"
         "{\"asset\":\"EUR\",\"amount\":\"6000\"}]}");
    assert_int_equal(f->last.status, 200);
    req(f, BH_HTTP_GET, "/admin/users/alice/journal", 26, "since=1&limit=5", NULL, 0, NULL, 1);
    assert_int_equal(f->last.status, 200);
    const char *b = f->last.body;
    static const char e1[] = "{\"entries\":[{\"sequence\":2,\"opId\":\"d\",\"op\":\"deposit\","
                             "\"asset\":\"BTC\",\"amount\":\"0.5\",\"time\":\"";
    assert_memory_equal(b, e1, sizeof e1 - 1);
    check_time(b + sizeof e1 - 1);
    const char *e2s = strstr(b, "},{");
    assert_non_null(e2s);
    static const char e2[] = "},{\"sequence\":3,\"opId\":\"t\\\"q\",\"op\":\"trade\",\"legs\":[{"
                             "\"asset\":\"BTC\",\"amount\":\"-0.1\"},{\"asset\":\"EUR\","
                             "\"amount\":\"6000\"}],\"time\":\"";
    assert_memory_equal(e2s, e2, sizeof e2 - 1);
    check_time(e2s + sizeof e2 - 1);
    assert_string_equal(e2s + sizeof e2 - 1 + 25, "}]}");

    req(f, BH_HTTP_GET, "/admin/users/alice/journal", 26, "limit=1", NULL, 0, NULL, 1);
    assert_non_null(strstr(f->last.body, "\"opId\":\"create-user\",\"op\":\"create-user\","
                                         "\"baseCurrency\":\"EUR\",\"totalMaxExposure\":\"1000\","
                                         "\"time\":\""));
    assert_null(strstr(f->last.body, "\"sequence\":2"));
    req(f, BH_HTTP_GET, "/admin/users/alice/journal", 26, "since=3", NULL, 0, NULL, 1);
    expect(f, 200, "{\"entries\":[]}");
    static const char *const bad[] = {
        "since=-1", "since=x", "limit=0",     "limit=10001",
        "limit=",   "since=%", "since=1%002", "since=99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        req(f, BH_HTTP_GET, "/admin/users/alice/journal", 26, bad[i], NULL, 0, NULL, 1);
        assert_int_equal(f->last.status, 400);
    }
    call(f, BH_HTTP_GET, "/admin/users/bob/journal", NULL);
    expect(f, 404, "{\"error\":\"unknown user 'bob'\",\"code\":\"not_found\"}");
}

static void test_keys(void **state) {
    fx_t *f = *state;
    char key[BH_API_KEY_LEN + 1], kid[BH_KEY_ID_LEN + 1], user[BH_ID_MAX + 1];
    make_alice(f);
    call(f, BH_HTTP_POST, "/admin/users/alice/keys", NULL);
    assert_int_equal(f->last.status, 201);
    assert_int_equal(f->last.len, strlen("{\"keyId\":\"\",\"apiKey\":\"\"}") + 16 + BH_API_KEY_LEN);
    assert_int_equal(
        sscanf(f->last.body, "{\"keyId\":\"%16[0-9a-f]\",\"apiKey\":\"%63[^\"]\"}", kid, key), 2);
    assert_int_equal(bh_keyring_lookup(f->kr, key, strlen(key), user, NULL), BH_OK);
    assert_string_equal(user, "alice");

    char path[64], want[64];
    snprintf(path, sizeof path, "/admin/keys/%s", kid);
    snprintf(want, sizeof want, "{\"keyId\":\"%s\",\"revoked\":true}", kid);
    call(f, BH_HTTP_DELETE, path, NULL);
    expect(f, 200, want);
    assert_int_equal(f->revoked_calls, 1);
    assert_string_equal(f->revoked_user, "alice");
    assert_string_equal(f->revoked_key, kid);
    assert_int_equal(bh_keyring_lookup(f->kr, key, strlen(key), user, NULL), BH_ENOTFOUND);
    /* Durable: a fresh keyring from the store still has it revoked. */
    close_all(f);
    open_all(f, TOKEN);
    assert_int_equal(bh_keyring_lookup(f->kr, key, strlen(key), user, NULL), BH_ENOTFOUND);
    call(f, BH_HTTP_DELETE, path, NULL);
    expect(f, 200, want);
    call(f, BH_HTTP_DELETE, "/admin/keys/0000000000000000", NULL);
    expect(f, 404, "{\"error\":\"unknown key '0000000000000000'\",\"code\":\"not_found\"}");
    call(f, BH_HTTP_POST, "/admin/users/bob/keys", "{}");
    expect(f, 404, "{\"error\":\"unknown user 'bob'\",\"code\":\"not_found\"}");
    call(f, BH_HTTP_POST, "/admin/users/alice/keys", "{\"x\":1}");
    expect(f, 400, "{\"error\":\"unknown field 'x'\",\"code\":\"bad_request\"}");
    call(f, BH_HTTP_POST, "/admin/users/alice/keys", "[]");
    assert_int_equal(f->last.status, 400);
}

static void test_errors_exact(void **state) {
    fx_t *f = *state;
    make_alice(f);
    static const struct {
        const char *body;
        int status;
        const char *error;
    } cases[] = {
        {"{\"opId\":\"x\",\"op\":\"deposit\",\"asset\":\"BTC\",\"amount\":"
         "1234567890123456789012345678901234567890}",
         400, "field 'amount' is out of range (at most 20 digits before the point)"},
        {"{\"opId\":\"x\",\"op\":\"deposit\",\"asset\":\"BTC\",\"amount\":0.1234567890123456789}",
         400, "field 'amount' is not an exact decimal with at most 18 digits after the point"},
        {"{\"opId\":\"x\",\"op\":\"deposit\",\"asset\":\"BTC\",\"amount\":\"-1\"}", 400,
         "field 'amount' must be greater than 0"},
        {"{\"opId\":\"x\",\"op\":\"deposit\",\"asset\":\"BTC\"}", 400, "missing field 'amount'"},
        {"{\"opId\":\"x\",\"op\":\"deposit\",\"asset\":\"BTC\",\"amount\":[1]}", 400,
         "field 'amount' must be a decimal string or number"},
        {"{\"opId\":\"x\",\"op\":\"deposit\",\"asset\":\"btc\",\"amount\":\"1\"}", 400,
         "'asset' must be 1..15 characters of A-Z 0-9"},
        {"{\"opId\":\"x\",\"op\":\"fly\"}", 400,
         "unknown op 'fly' (deposit, withdraw, allocate, release, trade, set-limits)"},
        {"{\"opId\":\"x\",\"op\":\"deposit\",\"asset\":\"BTC\",\"amount\":\"1\",\"zz\":1}", 400,
         "unknown field 'zz'"},
        {"{\"opId\":\"x\",\"opId\":\"y\",\"op\":\"deposit\",\"asset\":\"BTC\",\"amount\":\"1\"}",
         400, "field 'opId' appears twice"},
        {"{\"opId\":\"x\",\"op\":\"trade\",\"legs\":[{\"asset\":\"BTC\",\"amount\":\"1\"},"
         "{\"asset\":\"BTC\",\"amount\":\"2\"}]}",
         400, "'legs[1].asset': asset BTC appears in two legs (one leg per asset)"},
        {"{\"opId\":\"x\",\"op\":\"set-limits\",\"maxExposure\":{\"BTC\":\"1\",\"BTC\":\"2\"}}",
         400, "field 'maxExposure.BTC' appears twice"},
        {"{\"opId\":\"x\",\"op\":\"set-limits\"}", 400,
         "set-limits needs maxExposure members or totalMaxExposure"},
        {"{\"opId\":\"x\",\"op\":\"release\",\"asset\":\"DOGE\",\"amount\":\"1\"}", 422, NULL},
        {"{\"opId\":\"x\",\"op\":\"deposit\",\"asset\":\"BTC\",\"amount\":\"1\"", 400,
         "the request body is not valid JSON"},
        {"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]", 400,
         "the request body is not valid JSON (nested too deeply)"},
        {"null", 400, "the request body must be a JSON object"},
        {"", 400, "the request body must be a JSON object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char want[512];
        call(f, BH_HTTP_POST, "/admin/users/alice/ops", cases[i].body);
        if (cases[i].error) {
            snprintf(want, sizeof want, "{\"error\":\"%s\",\"code\":\"%s\"}", cases[i].error,
                     cases[i].status == 400 ? "bad_request" : "rejected");
            expect(f, cases[i].status, want);
        } else {
            assert_int_equal(f->last.status, cases[i].status);
            assert_non_null(strstr(f->last.body, "\"code\":\"rejected\"}"));
        }
    }
    call(f, BH_HTTP_POST, "/admin/users",
         "{\"userId\":\"alice\",\"baseCurrency\":\"EUR\",\"totalMaxExposure\":\"1\","
         "\"opId\":\"again\"}");
    assert_int_equal(f->last.status, 409);
    assert_non_null(strstr(f->last.body, "\"code\":\"conflict\"}"));
    call(f, BH_HTTP_GET, "/admin/users", NULL);
    expect(f, 405,
           "{\"error\":\"method not allowed here (use POST)\",\"code\":\"method_not_allowed\"}");
    call(f, BH_HTTP_GET, "/admin/users/alice/balances/x", NULL);
    expect(f, 404, NOTFOUND_EP);
    call(f, BH_HTTP_GET, "/admin/users/al%69ce/balances", NULL);
    assert_int_equal(f->last.status, 200);
    call(f, BH_HTTP_GET, "/admin/users/al%6/balances", NULL);
    expect(f, 400, "{\"error\":\"bad percent-escape in the path\",\"code\":\"bad_request\"}");
    /* An encoded NUL must not cut the id short ("alice%00x" is not alice). */
    call(f, BH_HTTP_GET, "/admin/users/alice%00x/balances", NULL);
    expect(f, 400, "{\"error\":\"bad percent-escape in the path\",\"code\":\"bad_request\"}");
    call(f, BH_HTTP_GET, "/admin/users/a%2fb/balances", NULL);
    assert_int_equal(f->last.status, 400); /* decoded '/' is not a separator, and not valid */
    /* Nothing above changed alice. */
    call(f, BH_HTTP_GET, "/admin/users/alice/balances", NULL);
    expect(f, 200, ALICE1);
}

/* Every proper prefix of a valid body is rejected with 400 and answered once; the whole body
 * succeeds. */
static void prefixes(fx_t *f, bh_http_method_t m, const char *path, const char *body, int ok) {
    size_t n = strlen(body);
    for (size_t i = 0; i < n; i++) {
        req(f, m, path, strlen(path), NULL, body, i, NULL, 1);
        /* A prefix ending right after a complete inner value is still not a complete text. */
        assert_int_equal(f->last.status, 400);
    }
    req(f, m, path, strlen(path), NULL, body, n, NULL, 1);
    assert_int_equal(f->last.status, ok);
}

static void test_prefixes(void **state) {
    fx_t *f = *state;
    prefixes(f, BH_HTTP_POST, "/admin/users",
             "{\"userId\":\"bob\",\"baseCurrency\":\"EUR\",\"totalMaxExposure\":\"1\"}", 201);
    prefixes(f, BH_HTTP_POST, "/admin/users/bob/ops",
             "{\"opId\":\"p1\",\"op\":\"deposit\",\"asset\":\"BTC\",\"amount\":\"12.5\"}", 200);
    prefixes(f, BH_HTTP_POST, "/admin/users/bob/ops",
             "{\"opId\":\"p2\",\"op\":\"trade\",\"legs\":[{\"asset\":\"BTC\",\"amount\":-1},"
             "{\"asset\":\"ETH\",\"amount\":\"3\"}]}",
             200);
    prefixes(f, BH_HTTP_POST, "/admin/users/bob/ops",
             "{\"opId\":\"p3\",\"op\":\"set-limits\",\"maxExposure\":{\"BTC\":\"15\"},"
             "\"totalMaxExposure\":20}",
             200);
    prefixes(f, BH_HTTP_PUT, "/admin/rates", "{\"baseCurrency\":\"EUR\",\"rates\":{\"BTC\":\"2\"}}",
             200);

    /* Every prefix of paths: never a crash, always one answer. */
    static const char *const paths[] = {"/admin/users/bob/journal", "/admin/users/bob/ops",
                                        "/admin/keys/0123456789abcdef", "/admin/users/b%6Fb"};
    for (size_t p = 0; p < sizeof paths / sizeof paths[0]; p++) {
        for (size_t i = 0; i <= strlen(paths[p]); i++) {
            req(f, BH_HTTP_GET, paths[p], i, NULL, NULL, 0, NULL, 1);
            assert_true(f->last.status >= 200 && f->last.status < 500);
        }
    }
}

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static uint64_t next_rand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void test_garbage(void **state) {
    fx_t *f = *state;
    static const char alphabet[] =
        "{}[]\":,.-+0123456789eE \\u%/abcdefgopIdAmountassetlegs\x01\xff";
    char buf[96];
    make_alice(f);
    for (int round = 0; round < 3000; round++) {
        size_t n = (size_t)(next_rand() % sizeof buf);
        bool bytes = round % 2 == 0;
        for (size_t i = 0; i < n; i++)
            buf[i] = bytes ? (char)next_rand() : alphabet[next_rand() % (sizeof alphabet - 1)];
        req(f, BH_HTTP_POST, "/admin/users/alice/ops", 22, NULL, buf, n, NULL, 1);
        assert_int_equal(f->last.status, 400);
        req(f, BH_HTTP_PUT, "/admin/rates", 12, NULL, buf, n, NULL, 1);
        assert_int_equal(f->last.status, 400);
        /* Random paths under /admin/ and random query strings. */
        char path[128] = "/admin/";
        memcpy(path + 7, buf, n < 100 ? n : 100);
        req(f, (bh_http_method_t)(next_rand() % 7), path, 7 + (n < 100 ? n : 100),
            round % 3 ? NULL : "since=1&limit=%41", buf, n, NULL, 1);
        assert_true(f->last.status >= 200 && f->last.status < 500);
        /* Random Authorization values never pass. */
        char auth[sizeof buf + 1];
        memcpy(auth, buf, n);
        auth[n] = '\0';
        req(f, BH_HTTP_GET, "/admin/users/alice/journal", 26,
            round % 5 ? "limit=3" : "since=", NULL, 0, auth, 0);
        assert_int_equal(f->last.status, 401);
    }
    call(f, BH_HTTP_GET, "/admin/users/alice/balances", NULL);
    expect(f, 200, ALICE1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_token, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disabled, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ops_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_journal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prefixes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
