/* Unit tests for src/http/static: the embedded table (every page file present, with the right
 * type and a well-formed ETag), routing by exact path, If-None-Match matching (lists, weak tags,
 * "*", malformed values, every prefix) and the Content-Security-Policy built from Host. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "http/static.h"

static const char *const TAG = "\"0123456789abcdef\"";

/* Matching on an exactly sized heap copy, so ASan sees any read past the end. */
static int match(const char *inm, const char *etag) {
    size_t n = strlen(inm);
    char *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    memcpy(copy, inm, n);
    int r = bh_static_etag_match(copy, n, etag);
    free(copy);
    return r;
}

static void test_table_has_the_page(void **state) {
    (void)state;
    static const struct {
        const char *path, *type;
    } want[] = {
        {"/index.html", "text/html; charset=utf-8"},
        {"/app.js", "text/javascript; charset=utf-8"},
        {"/app.css", "text/css; charset=utf-8"},
        {"/signalr.min.js", "text/javascript; charset=utf-8"},
        {"/signalr-protocol-msgpack.min.js", "text/javascript; charset=utf-8"},
    };
    assert_true(bh_static_nassets >= 5); /* the web directory may grow; these five stay */
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const bh_static_asset_t *a = bh_static_find(want[i].path, strlen(want[i].path));
        assert_non_null(a);
        assert_string_equal(a->path, want[i].path);
        assert_string_equal(a->content_type, want[i].type);
        assert_true(a->len > 100);
        /* "<16 hex digits>" with its quotes */
        assert_int_equal(strlen(a->etag), 18);
        assert_int_equal(a->etag[0], '"');
        assert_int_equal(a->etag[17], '"');
        assert_int_equal(strspn(a->etag + 1, "0123456789abcdef"), 16);
    }
    /* Distinct files, distinct validators. */
    for (size_t i = 0; i < bh_static_nassets; i++)
        for (size_t j = i + 1; j < bh_static_nassets; j++)
            assert_string_not_equal(bh_static_assets[i].etag, bh_static_assets[j].etag);
}

static void test_page_content(void **state) {
    (void)state;
    const bh_static_asset_t *a = bh_static_find("/", 1);
    assert_non_null(a);
    assert_string_equal(a->path, "/index.html");
    assert_true(a->len > 15 && memcmp(a->data, "<!doctype html>", 15) == 0);
    /* The page loads its scripts from the server, never inline or from elsewhere. */
    const char *html = (const char *)a->data;
    size_t n = a->len;
    int has_app = 0, has_signalr = 0, has_inline = 0;
    for (size_t i = 0; i + 8 <= n; i++) {
        if (memcmp(html + i, "<script", 7) != 0)
            continue;
        const char *end = memchr(html + i, '>', n - i);
        assert_non_null(end);
        size_t tl = (size_t)(end - (html + i));
        if (memmem(html + i, tl, "src=\"/app.js\"", 13))
            has_app = 1;
        else if (memmem(html + i, tl, "src=\"/signalr.min.js\"", 21))
            has_signalr = 1;
        else if (!memmem(html + i, tl, "src=\"/", 6))
            has_inline = 1;
    }
    assert_true(has_app);
    assert_true(has_signalr);
    assert_false(has_inline);
}

static void test_find_is_exact(void **state) {
    (void)state;
    static const char *const misses[] = {
        "",       "/x",       "/index.htm", "/index.html/", "/APP.JS",     "//",
        "/app.j", "/app.jss", "app.js",     "/web/app.js",  "/app.js.map",
    };
    for (size_t i = 0; i < sizeof misses / sizeof misses[0]; i++)
        assert_null(bh_static_find(misses[i], strlen(misses[i])));
    /* Length decides, not the NUL: "/app.js" inside a longer buffer. */
    assert_non_null(bh_static_find("/app.jsXYZ", 7));
    assert_null(bh_static_find("/app.jsXYZ", 8));
}

static void test_etag_match(void **state) {
    (void)state;
    assert_int_equal(match("\"0123456789abcdef\"", TAG), 1);
    assert_int_equal(match("W/\"0123456789abcdef\"", TAG), 1); /* weak comparison */
    assert_int_equal(match("*", TAG), 1);
    assert_int_equal(match("  *  ", TAG), 1);
    assert_int_equal(match("\"a\", \"0123456789abcdef\"", TAG), 1);
    assert_int_equal(match("\"a\",W/\"0123456789abcdef\" , \"b\"", TAG), 1);
    assert_int_equal(match(" ,, \"0123456789abcdef\",", TAG), 1);
    assert_int_equal(match("\t\"0123456789abcdef\"\t", TAG), 1);

    assert_int_equal(match("", TAG), 0);
    assert_int_equal(match("\"0123456789abcdeF\"", TAG), 0); /* case matters */
    assert_int_equal(match("\"0123456789abcde\"", TAG), 0);
    assert_int_equal(match("\"0123456789abcdef0\"", TAG), 0);
    assert_int_equal(match("0123456789abcdef", TAG), 0);              /* unquoted */
    assert_int_equal(match("w/\"0123456789abcdef\"", TAG), 0);        /* W/ is case-sensitive */
    assert_int_equal(match("\"a\" \"0123456789abcdef\"", TAG), 0);    /* missing comma */
    assert_int_equal(match("\"0123456789abcdef", TAG), 0);            /* unterminated */
    assert_int_equal(match("\"a b\", \"0123456789abcdef\"", TAG), 0); /* space inside a tag */
    assert_int_equal(match("W/", TAG), 0);
    assert_int_equal(match("\"\"", TAG), 0);
    assert_int_equal(match("\"\"", "\"\""), 1); /* the empty tag is a tag */
    /* Our own tag must be quoted to match anything. */
    assert_int_equal(match("*", "abc"), 0);
    assert_int_equal(match("\"", "\""), 0);
}

static void test_etag_match_every_prefix(void **state) {
    (void)state;
    const char *full = "W/\"x\", \"0123456789abcdef\"";
    size_t n = strlen(full);
    /* Each proper prefix ends before our tag is complete: never a match, never a bad read. */
    for (size_t i = 0; i < n; i++) {
        char *copy = malloc(i ? i : 1);
        assert_non_null(copy);
        memcpy(copy, full, i);
        assert_int_equal(bh_static_etag_match(copy, i, TAG), 0);
        free(copy);
    }
    assert_int_equal(match(full, TAG), 1);
}

static void test_etag_match_garbage(void **state) {
    (void)state;
    unsigned char buf[64];
    uint32_t x = 12345;
    for (int round = 0; round < 2000; round++) {
        size_t n = (size_t)(round % 64);
        for (size_t i = 0; i < n; i++) {
            x = x * 1103515245u + 12345u;
            static const char alphabet[] = "\"W/ ,*\t0123456789abcdef\x7f\x80\xff";
            buf[i] = (unsigned char)alphabet[(x >> 16) % (sizeof alphabet - 1)];
        }
        char *copy = malloc(n ? n : 1);
        assert_non_null(copy);
        memcpy(copy, buf, n);
        int r = bh_static_etag_match(copy, n, TAG);
        assert_true(r == 0 || r == 1);
        free(copy);
    }
}

static void test_csp(void **state) {
    (void)state;
    char out[768];
    int n = bh_static_csp("127.0.0.1:5000", 14, out, sizeof out);
    assert_int_equal(n, (int)strlen(out));
    assert_string_equal(out, "default-src 'none'; script-src 'self'; style-src 'self'; "
                             "img-src 'self' data:; connect-src 'self' ws://127.0.0.1:5000 "
                             "wss://127.0.0.1:5000; base-uri 'none'; form-action 'none'; "
                             "frame-ancestors 'none'");
    /* IPv6 literal and a name without a port */
    assert_true(bh_static_csp("[::1]:8080", 10, out, sizeof out) > 0);
    assert_non_null(strstr(out, "connect-src 'self' ws://[::1]:8080 wss://[::1]:8080;"));
    assert_true(bh_static_csp("balances.example", 16, out, sizeof out) > 0);
    assert_non_null(strstr(out, "ws://balances.example wss://balances.example;"));
    /* Only the given length of Host counts. */
    assert_true(bh_static_csp("hostXX", 4, out, sizeof out) > 0);
    assert_non_null(strstr(out, "ws://host wss://host;"));
}

static void test_csp_rejects_odd_hosts(void **state) {
    (void)state;
    static const char *const bad[] = {
        "evil.example; script-src *", "a b", "a'b", "a\"b", "a,b", "a/b", "*", "a\tb", "",
    };
    char out[768], plain[768];
    assert_true(bh_static_csp(NULL, 0, plain, sizeof plain) > 0);
    assert_non_null(strstr(plain, "connect-src 'self';"));
    assert_null(strstr(plain, "ws:"));
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_true(bh_static_csp(bad[i], strlen(bad[i]), out, sizeof out) > 0);
        assert_string_equal(out, plain);
    }
    char longhost[300];
    memset(longhost, 'a', sizeof longhost);
    assert_true(bh_static_csp(longhost, 256, out, sizeof out) > 0);
    assert_string_equal(out, plain);
    assert_true(bh_static_csp(longhost, 255, out, sizeof out) > 0);
    assert_string_not_equal(out, plain);
}

static void test_csp_small_buffer(void **state) {
    (void)state;
    char out[768];
    int n = bh_static_csp("h:1", 3, out, sizeof out);
    assert_true(n > 0);
    char small[768];
    assert_int_equal(bh_static_csp("h:1", 3, small, (size_t)n), BH_ETOOBIG);
    assert_int_equal(bh_static_csp("h:1", 3, small, (size_t)n + 1), n);
    assert_string_equal(small, out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_has_the_page),
        cmocka_unit_test(test_page_content),
        cmocka_unit_test(test_find_is_exact),
        cmocka_unit_test(test_etag_match),
        cmocka_unit_test(test_etag_match_every_prefix),
        cmocka_unit_test(test_etag_match_garbage),
        cmocka_unit_test(test_csp),
        cmocka_unit_test(test_csp_rejects_odd_hosts),
        cmocka_unit_test(test_csp_small_buffer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
