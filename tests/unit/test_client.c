/* Unit tests for src/client (libbalancehub): exact decimals (rounding, range, bad syntax), URLs,
 * the HTTP/1.1 requests and response parser (every prefix, chunked, malformed), negotiate
 * responses, balances data, the SignalR session over a fake transport (handshake, exact
 * invocation bytes in JSON and MessagePack, sequence rules: gap -> re-snapshot, duplicates
 * dropped, errors, Close), the reconnection delay, and the whole client against a scripted
 * in-process server on a loopback socket (negotiate, upgrade, masking, reconnection, 401). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/error.h"
#include "client/internal.h"
#include "signalr/protocol.h"
#include "ws/ws.h"

/* ---- decimals ---- */

static void dec_ok(const char *in, const char *want) {
    char out[BH_DECIMAL_STRLEN];
    size_t n = strlen(in);
    char *copy = malloc(n ? n : 1); /* exact size: ASan sees reads past the end */
    bh_decimal_t d;

    assert_non_null(copy);
    memcpy(copy, in, n);
    assert_int_equal(bh_cl_dec_parse(copy, n, &d), BH_OK);
    bh_decimal_to_string(d, out);
    assert_string_equal(out, want);
    free(copy);
}

static void dec_bad(const char *in, int want) {
    bh_decimal_t d;
    assert_int_equal(bh_cl_dec_parse(in, strlen(in), &d), want);
}

static void test_decimal_parse(void **state) {
    dec_ok("0", "0");
    dec_ok("-0", "0");
    dec_ok("0.5", "0.5");
    dec_ok("1000", "1000");
    dec_ok("-12.50", "-12.5");
    dec_ok("1e3", "1000");
    dec_ok("2.5E-2", "0.025");
    dec_ok("1e-7", "0.0000001"); /* how MessagePack doubles arrive (JavaScript's layout) */
    dec_ok("1.5e+2", "150");
    dec_ok("1e-18", "0.000000000000000001");
    dec_ok("0.000000000000000001000", "0.000000000000000001");
    dec_ok("99999999999999999999.999999999999999999", "99999999999999999999.999999999999999999");
    dec_ok("-99999999999999999999.999999999999999999", "-99999999999999999999.999999999999999999");
    dec_ok("0e999999999", "0");
    dec_ok("1e-1000000", "0");
    /* past 18 fraction digits: half to even */
    dec_ok("0.0000000000000000005", "0");
    dec_ok("0.0000000000000000015", "0.000000000000000002");
    dec_ok("0.0000000000000000025", "0.000000000000000002");
    dec_ok("0.00000000000000000251", "0.000000000000000003");
    dec_ok("-0.0000000000000000015", "-0.000000000000000002");
    dec_ok("6e-19", "0.000000000000000001");
    dec_ok("1e-19", "0");
    dec_ok("0.1234567890123456789", "0.123456789012345679");
    dec_ok("0.12345678901234567850000000000000000000000000000000001", "0.123456789012345679");
    dec_ok("0.1234567890123456785", "0.123456789012345678");
    dec_ok("9.9999999999999999995", "10");
    dec_ok("0.00000000000000000000000000000000000000000000000000001", "0");
    /* out of range */
    dec_bad("1e20", BH_ERANGE);
    dec_bad("100000000000000000000", BH_ERANGE);
    dec_bad("-100000000000000000000", BH_ERANGE);
    dec_bad("99999999999999999999.9999999999999999995", BH_ERANGE);
    dec_bad("1e999999999", BH_ERANGE);
    dec_bad("123456789012345678901234567890", BH_ERANGE);
    /* not JSON numbers */
    static const char *const bad[] = {
        "",    "-",     "+1",  "01",  "1.",       ".5",    "1e",  "1e+", "a",   "1 ",   " 1",
        "0x1", "1.2.3", "--1", "NaN", "Infinity", "1e1.5", "1,5", "-.5", "1e-", "0.5e", "00"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        dec_bad(bad[i], BH_EINVAL);
}

static void test_decimal_public(void **state) {
    static const char full[] = "-123.456e-7";
    char out[BH_DECIMAL_STRLEN];
    bh_decimal_t a, b;

    assert_int_equal(bh_decimal_parse("12.5", &a), BH_CLIENT_OK);
    assert_int_equal(bh_decimal_to_string(a, out), 4);
    assert_string_equal(out, "12.5");
    assert_true(bh_decimal_to_double(a) == 12.5);
    assert_int_equal(bh_decimal_parse("-1e-18", &b), BH_CLIENT_OK);
    assert_int_equal(b.hi, -1); /* two's complement over 128 bits */
    assert_true(b.lo == UINT64_MAX);
    assert_int_equal(bh_decimal_cmp(a, b), 1);
    assert_int_equal(bh_decimal_cmp(b, a), -1);
    assert_int_equal(bh_decimal_cmp(a, a), 0);
    assert_int_equal(bh_decimal_parse("18446744073709551616", &a), BH_CLIENT_OK); /* 2^64 */
    bh_decimal_to_string(a, out);
    assert_string_equal(out, "18446744073709551616");
    assert_int_equal(bh_decimal_parse("x", &a), BH_CLIENT_EINVAL);
    assert_int_equal(bh_decimal_parse("1e30", &a), BH_CLIENT_EINVAL);
    assert_int_equal(bh_decimal_parse(NULL, &a), BH_CLIENT_EINVAL);
    /* every prefix either parses or is refused, without reading past its end */
    for (size_t n = 0; n <= strlen(full); n++) {
        char *p = malloc(n ? n : 1);
        int r;
        assert_non_null(p);
        memcpy(p, full, n);
        r = bh_cl_dec_parse(p, n, &a);
        assert_true(r == BH_OK || r == BH_EINVAL);
        free(p);
    }
    dec_ok(full, "-0.0000123456");
}

/* ---- URLs ---- */

static void test_url(void **state) {
    bh_cl_url_t u;
    const char *err;
    bh_buf_t b;

    assert_int_equal(bh_cl_url_parse("http://127.0.0.1:5000/ExecutionLiveServer/v1", &u, &err),
                     BH_OK);
    assert_int_equal(u.tls, 0);
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 5000);
    assert_int_equal(u.port_given, 1);
    assert_string_equal(u.path, "/ExecutionLiveServer/v1");
    assert_null(u.query);
    bh_cl_url_free(&u);

    assert_int_equal(bh_cl_url_parse("https://Example.com/hub/?x=1&y=%20#frag", &u, &err), BH_OK);
    assert_int_equal(u.tls, 1);
    assert_string_equal(u.host, "Example.com");
    assert_int_equal(u.port, 443);
    assert_int_equal(u.port_given, 0);
    assert_string_equal(u.path, "/hub");
    assert_string_equal(u.query, "x=1&y=%20");
    bh_cl_url_free(&u);

    assert_int_equal(bh_cl_url_parse("HTTP://[::1]:8080", &u, &err), BH_OK);
    assert_int_equal(u.ipv6, 1);
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 8080);
    assert_string_equal(u.path, "");
    bh_cl_url_free(&u);

    assert_int_equal(bh_cl_url_parse("http://h?", &u, &err), BH_OK);
    assert_int_equal(u.port, 80);
    assert_null(u.query);
    bh_cl_url_free(&u);

    static const char *const bad[] = {
        "ftp://h/",      "ws://h/",        "http://",         "http:///x",        "http://u:p@h/",
        "http://h:0/",   "http://h:65536", "http://h:x/",     "http://h:/",       "http://h/a b",
        "http://[::1/",  "http://[]/",     "http://h\x01/",   "http://h!/",       "127.0.0.1:5000",
        "http://[::1]x", "http://h/\x7f",  "https://h:99999", "http://h/\xc3\xa9"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err = NULL;
        assert_int_equal(bh_cl_url_parse(bad[i], &u, &err), BH_EINVAL);
        assert_non_null(err);
    }
    assert_int_equal(bh_cl_url_parse(NULL, &u, &err), BH_EINVAL);

    bh_buf_init(&b, 0);
    assert_int_equal(bh_cl_url_encode(&b, "aZ9-._~ b/c?&=+%\xc3\xa9"), BH_OK);
    assert_string_equal(b.data, "aZ9-._~%20b%2Fc%3F%26%3D%2B%25%C3%A9");
    bh_buf_free(&b);
}

/* ---- HTTP ---- */

static int has_prefix(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static void test_http_requests(void **state) {
    bh_cl_url_t u;
    const char *err;
    bh_buf_t b;

    bh_buf_init(&b, 0);
    assert_int_equal(bh_cl_url_parse("http://127.0.0.1:5000/ExecutionLiveServer/v1/", &u, &err),
                     BH_OK);
    assert_int_equal(bh_cl_http_negotiate_request(&b, &u, "bh_k"), BH_OK);
    assert_string_equal(b.data, "POST /ExecutionLiveServer/v1/negotiate?negotiateVersion=1 "
                                "HTTP/1.1\r\nHost: 127.0.0.1:5000\r\nAuthorization: Bearer "
                                "bh_k\r\nUser-Agent: libbalancehub/" BH_CLIENT_VERSION
                                "\r\nX-SignalR-User-Agent: libbalancehub/" BH_CLIENT_VERSION
                                "\r\nAccept: application/json\r\nContent-Length: 0\r\n\r\n");
    bh_buf_reset(&b);
    assert_int_equal(
        bh_cl_http_upgrade_request(&b, &u, "tok/1+2", "bh_k", "dGhlIHNhbXBsZSBub25jZQ=="), BH_OK);
    assert_string_equal(b.data, "GET /ExecutionLiveServer/v1?id=tok%2F1%2B2&access_token=bh_k "
                                "HTTP/1.1\r\nHost: 127.0.0.1:5000\r\nUpgrade: websocket\r\n"
                                "Connection: Upgrade\r\nSec-WebSocket-Key: "
                                "dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                                "User-Agent: libbalancehub/" BH_CLIENT_VERSION
                                "\r\nAuthorization: Bearer bh_k\r\n\r\n");
    bh_cl_url_free(&u);

    /* default port, query kept, no key, no connection token (skip negotiation) */
    bh_buf_reset(&b);
    assert_int_equal(bh_cl_url_parse("https://[::1]:443?x=1", &u, &err), BH_OK);
    assert_int_equal(bh_cl_http_negotiate_request(&b, &u, NULL), BH_OK);
    assert_true(has_prefix(b.data, "POST /negotiate?x=1&negotiateVersion=1 HTTP/1.1\r\n"
                                   "Host: [::1]\r\nUser-Agent"));
    bh_buf_reset(&b);
    assert_int_equal(bh_cl_http_upgrade_request(&b, &u, NULL, NULL, "k"), BH_OK);
    assert_true(has_prefix(b.data, "GET /?x=1 HTTP/1.1\r\nHost: [::1]\r\nUpgrade"));
    assert_null(strstr(b.data, "Authorization"));
    bh_cl_url_free(&u);
    bh_buf_free(&b);
}

/* Parse text[0..n) with an exact-size copy. */
static int parse_n(const char *text, size_t n, int eof, bh_cl_http_res_t *res, size_t *used) {
    char *copy = malloc(n ? n : 1);
    int r;

    assert_non_null(copy);
    memcpy(copy, text, n);
    r = bh_cl_http_parse(copy, n, eof, res, used);
    free(copy);
    return r;
}

static int parse_s(const char *text, int eof, bh_cl_http_res_t *res, size_t *used) {
    return parse_n(text, strlen(text), eof, res, used);
}

/* Every strict prefix of a complete response is incomplete (or, at EOF, an error). */
static void check_prefixes(const char *text, size_t complete) {
    bh_cl_http_res_t res;
    size_t used;

    for (size_t n = 0; n < complete; n++) {
        assert_int_equal(parse_n(text, n, 0, &res, &used), BH_EAGAIN);
        assert_int_equal(used, 0);
        assert_int_equal(parse_n(text, n, 1, &res, &used), BH_EINVAL);
    }
}

static void test_http_response(void **state) {
    static const char cl[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             "Content-Length: 5\r\n\r\nhelloEXTRA";
    static const char chunked[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"
                                  "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\n";
    static const char upgrade[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\n"
                                  "Connection: keep-alive, Upgrade\r\n"
                                  "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
                                  "\x81\x03{}\x1e";
    bh_cl_http_res_t res;
    size_t used;

    assert_int_equal(parse_n(cl, sizeof(cl) - 1, 0, &res, &used), BH_OK);
    assert_int_equal(res.status, 200);
    assert_int_equal(res.minor, 1);
    assert_string_equal(res.reason, "OK");
    assert_int_equal(res.keep_alive, 1);
    assert_int_equal(res.body.len, 5);
    assert_memory_equal(res.body.data, "hello", 5);
    assert_int_equal(used, sizeof(cl) - 1 - 5); /* EXTRA is the next response's */
    bh_buf_free(&res.body);
    check_prefixes(cl, sizeof(cl) - 1 - 5);

    assert_int_equal(parse_n(chunked, sizeof(chunked) - 1, 0, &res, &used), BH_OK);
    assert_int_equal(res.body.len, 11);
    assert_memory_equal(res.body.data, "hello world", 11);
    assert_int_equal(used, sizeof(chunked) - 1);
    bh_buf_free(&res.body);
    check_prefixes(chunked, sizeof(chunked) - 1);

    assert_int_equal(parse_n(upgrade, sizeof(upgrade) - 1, 0, &res, &used), BH_OK);
    assert_int_equal(res.status, 101);
    assert_int_equal(res.upgrade_websocket, 1);
    assert_int_equal(res.connection_upgrade, 1);
    assert_string_equal(res.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_int_equal(used, sizeof(upgrade) - 1 - 5); /* the frame belongs to the WebSocket */
    bh_buf_free(&res.body);

    /* a body that runs until the connection closes; LF-only lines; HTTP/1.0 */
    assert_int_equal(parse_s("HTTP/1.0 200 OK\n\nabc", 0, &res, &used), BH_EAGAIN);
    assert_int_equal(parse_s("HTTP/1.0 200 OK\n\nabc", 1, &res, &used), BH_OK);
    assert_int_equal(res.keep_alive, 0);
    assert_int_equal(res.body.len, 3);
    assert_int_equal(used, 20);
    bh_buf_free(&res.body);

    /* keep-alive rules */
    assert_int_equal(parse_s("HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: "
                             "0\r\n\r\n",
                             0, &res, &used),
                     BH_OK);
    assert_int_equal(res.status, 401);
    assert_int_equal(res.keep_alive, 0);
    bh_buf_free(&res.body);
    assert_int_equal(
        parse_s("HTTP/1.0 204 No Content\r\nConnection: Keep-Alive\r\n\r\n", 0, &res, &used),
        BH_OK);
    assert_int_equal(res.keep_alive, 1);
    assert_string_equal(res.reason, "No Content");
    bh_buf_free(&res.body);

    /* malformed */
    static const char *const bad[] = {
        "HTTP/2 200 OK\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 200OK\r\n\r\n",
        "HTTP/1.1 099 X\r\n\r\n",
        "FOO\r\n\r\n",
        "HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
        "HTTP/1.1 200 OK\r\n: empty\r\n\r\n",
        "HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX: a\x01b\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(parse_n(bad[i], strlen(bad[i]), 0, &res, &used), BH_EINVAL);

    /* limits */
    char *big = malloc(BH_CL_HTTP_MAX_HEAD + 100);
    assert_non_null(big);
    memcpy(big, "HTTP/1.1 200 OK\r\nX: ", 20);
    memset(big + 20, 'a', BH_CL_HTTP_MAX_HEAD + 80);
    assert_int_equal(parse_n(big, BH_CL_HTTP_MAX_HEAD + 100, 0, &res, &used), BH_ETOOBIG);
    free(big);
    assert_int_equal(parse_s("HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n", 0, &res, &used),
                     BH_ETOOBIG);
    assert_int_equal(parse_s("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffff\r\n",
                             0, &res, &used),
                     BH_ETOOBIG);
}

static uint32_t lcg(uint32_t *s) {
    *s = *s * 1103515245u + 12345u;
    return *s >> 8;
}

static void test_http_garbage(void **state) {
    static const char alphabet[] = "HTTP/1.0 2\r\n:;abcCL-0123456789 chunked\x01\xff";
    bh_cl_http_res_t res;
    uint32_t seed = 7;
    size_t used;
    char buf[300];

    for (int round = 0; round < 3000; round++) {
        size_t n = lcg(&seed) % sizeof(buf);
        int r;
        for (size_t i = 0; i < n; i++)
            buf[i] = alphabet[lcg(&seed) % (sizeof(alphabet) - 1)];
        if (round % 2 == 0 && n > 9)
            memcpy(buf, "HTTP/1.1 200 ", 9);
        r = parse_n(buf, n, (int)(round & 4), &res, &used);
        assert_true(r == BH_OK || r == BH_EAGAIN || r == BH_EINVAL || r == BH_ETOOBIG);
        if (r == BH_OK) {
            assert_true(used <= n);
            bh_buf_free(&res.body);
        }
    }
}

static void test_negotiate(void **state) {
    static const char ws_both[] =
        "{\"negotiateVersion\":1,\"connectionId\":\"c\",\"connectionToken\":\"t\","
        "\"availableTransports\":[{\"transport\":\"ServerSentEvents\",\"transferFormats\":["
        "\"Text\"]},"
        "{\"transport\":\"WebSockets\",\"transferFormats\":[\"Text\",\"Binary\"]}]}";
    static const char ws_text[] =
        "{\"connectionId\":\"c0\",\"availableTransports\":[{\"transport\":\"WebSockets\","
        "\"transferFormats\":[\"Text\"]}]}";
    bh_cl_negotiate_t n;
    const char *err;

    assert_int_equal(bh_cl_negotiate_parse(ws_both, strlen(ws_both), 1, &n, &err), BH_OK);
    assert_string_equal(n.conn_token, "t");
    assert_null(n.redirect_url);
    assert_null(n.error);
    bh_cl_negotiate_free(&n);
    /* version 0: the connection id is the token */
    assert_int_equal(bh_cl_negotiate_parse(ws_text, strlen(ws_text), 0, &n, &err), BH_OK);
    assert_string_equal(n.conn_token, "c0");
    bh_cl_negotiate_free(&n);
    err = NULL;
    assert_int_equal(bh_cl_negotiate_parse(ws_text, strlen(ws_text), 1, &n, &err), BH_EINVAL);
    assert_non_null(strstr(err, "binary"));

    static const char redirect[] = "{\"url\":\"https://other/hub\",\"accessToken\":\"a\"}";
    assert_int_equal(bh_cl_negotiate_parse(redirect, strlen(redirect), 0, &n, &err), BH_OK);
    assert_string_equal(n.redirect_url, "https://other/hub");
    assert_string_equal(n.access_token, "a");
    assert_null(n.conn_token);
    bh_cl_negotiate_free(&n);
    static const char refused[] = "{\"error\":\"Negotiate failed\"}";
    assert_int_equal(bh_cl_negotiate_parse(refused, strlen(refused), 0, &n, &err), BH_OK);
    assert_string_equal(n.error, "Negotiate failed");
    bh_cl_negotiate_free(&n);

    static const char *const bad[] = {
        "",
        "[]",
        "{",
        "{\"negotiateVersion\":1,\"connectionId\":\"c\",\"availableTransports\":[{\"transport\":"
        "\"WebSockets\",\"transferFormats\":[\"Text\"]}]}",
        "{\"negotiateVersion\":\"1\",\"connectionToken\":\"t\"}",
        "{\"negotiateVersion\":1,\"connectionToken\":7,\"availableTransports\":[]}",
        "{\"negotiateVersion\":1,\"connectionToken\":\"t\",\"availableTransports\":[{\"transport\":"
        "\"LongPolling\",\"transferFormats\":[\"Text\"]}]}",
        "{\"negotiateVersion\":1,\"connectionToken\":\"t\"}",
        "{\"url\":\"https://x\",\"accessToken\":5}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err = NULL;
        assert_int_equal(bh_cl_negotiate_parse(bad[i], strlen(bad[i]), 0, &n, &err), BH_EINVAL);
        assert_non_null(err);
        assert_null(n.conn_token);
    }
}

/* ---- balances ---- */

#define DEMO_DATA                                                                                  \
    "{\"userId\":\"user-123\",\"sequence\":8,\"assets\":[{\"name\":\"BTC\",\"available\":0.5,"     \
    "\"allocated\":0,\"currentExposure\":0,\"maxExposure\":1500},{\"name\":\"ETH\",\"available\":" \
    "5,\"allocated\":0,\"currentExposure\":0,\"maxExposure\":1500},{\"name\":\"USDT\","            \
    "\"available\":1000,\"allocated\":250,\"currentExposure\":0,\"maxExposure\":1500}],"           \
    "\"baseCurrency\":\"EUR\",\"totalCurrentExposure\":0,\"totalMaxExposure\":1500,"               \
    "\"deleted\":false}"

static int read_data(const char *json, bh_balances_t *b, bh_json_doc_t **doc, const char **err) {
    assert_int_equal(bh_json_parse(json, strlen(json), 16, doc), BH_OK);
    return bh_cl_balances_read(bh_json_root(*doc), b, err);
}

static void test_balances(void **state) {
    bh_json_doc_t *doc;
    bh_balances_t b, *copy;
    const char *err;
    char out[BH_DECIMAL_STRLEN], small[10];
    size_t n;

    assert_int_equal(read_data(DEMO_DATA, &b, &doc, &err), BH_OK);
    assert_string_equal(b.user_id, "user-123");
    assert_int_equal(b.sequence, 8);
    assert_string_equal(b.base_currency, "EUR");
    assert_int_equal(b.asset_count, 3);
    assert_string_equal(b.assets[2].name, "USDT");
    bh_decimal_to_string(b.assets[2].allocated, out);
    assert_string_equal(out, "250");
    bh_decimal_to_string(b.assets[0].available, out);
    assert_string_equal(out, "0.5");
    assert_int_equal(b.deleted, 0);
    /* the JSON form is the server's, byte for byte */
    n = bh_balances_to_json(&b, NULL, 0);
    assert_int_equal(n, strlen(DEMO_DATA));
    char *text = malloc(n + 1);
    assert_non_null(text);
    assert_int_equal(bh_balances_to_json(&b, text, n + 1), n);
    assert_string_equal(text, DEMO_DATA);
    /* snprintf-like truncation */
    assert_int_equal(bh_balances_to_json(&b, small, sizeof(small)), n);
    assert_string_equal(small, "{\"userId\"");
    /* a deep copy outlives the document */
    assert_int_equal(bh_balances_dup(&b, &copy), BH_CLIENT_OK);
    bh_cl_balances_clear(&b);
    bh_json_free(doc);
    assert_int_equal(bh_balances_to_json(copy, text, n + 1), n);
    assert_string_equal(text, DEMO_DATA);
    assert_null(copy->client_id);
    bh_balances_free(copy);
    bh_balances_free(NULL);
    free(text);

    /* amounts as strings, absent optional fields, deleted, many digits */
    assert_int_equal(read_data("{\"userId\":\"u\",\"sequence\":0,\"assets\":[{\"name\":\"X\","
                               "\"available\":\"-0.000000000000000001\",\"allocated\":null}],"
                               "\"deleted\":true}",
                               &b, &doc, &err),
                     BH_OK);
    bh_decimal_to_string(b.assets[0].available, out);
    assert_string_equal(out, "-0.000000000000000001");
    bh_decimal_to_string(b.assets[0].max_exposure, out);
    assert_string_equal(out, "0");
    assert_string_equal(b.base_currency, "");
    assert_int_equal(b.deleted, 1);
    b.client_id = "c";
    assert_int_equal(bh_balances_dup(&b, &copy), BH_CLIENT_OK);
    assert_string_equal(copy->client_id, "c");
    assert_string_equal(copy->assets[0].name, "X");
    bh_balances_free(copy);
    bh_cl_balances_clear(&b);
    bh_json_free(doc);

    static const char *const bad[] = {
        "[]",
        "{\"sequence\":1,\"assets\":[]}",
        "{\"userId\":5,\"sequence\":1,\"assets\":[]}",
        "{\"userId\":\"u\",\"assets\":[]}",
        "{\"userId\":\"u\",\"sequence\":-1,\"assets\":[]}",
        "{\"userId\":\"u\",\"sequence\":1.5,\"assets\":[]}",
        "{\"userId\":\"u\",\"sequence\":\"1\",\"assets\":[]}",
        "{\"userId\":\"u\",\"sequence\":1}",
        "{\"userId\":\"u\",\"sequence\":1,\"assets\":{}}",
        "{\"userId\":\"u\",\"sequence\":1,\"assets\":[1]}",
        "{\"userId\":\"u\",\"sequence\":1,\"assets\":[{\"available\":1}]}",
        "{\"userId\":\"u\",\"sequence\":1,\"assets\":[{\"name\":\"X\",\"available\":true}]}",
        "{\"userId\":\"u\",\"sequence\":1,\"assets\":[{\"name\":\"X\",\"available\":1e30}]}",
        "{\"userId\":\"u\",\"sequence\":1,\"assets\":[{\"name\":\"X\",\"allocated\":\"abc\"}]}",
        "{\"userId\":\"u\",\"sequence\":1,\"assets\":[],\"deleted\":\"no\"}",
        "{\"userId\":\"u\",\"sequence\":1,\"assets\":[],\"totalMaxExposure\":{}}",
        "{\"userId\":\"u\",\"sequence\":1,\"assets\":[],\"baseCurrency\":1}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err = NULL;
        assert_int_equal(read_data(bad[i], &b, &doc, &err), BH_EINVAL);
        assert_non_null(err);
        assert_null(b.assets);
        bh_json_free(doc);
    }
    assert_int_equal(bh_cl_balances_read(NULL, &b, &err), BH_EINVAL);
    assert_int_equal(bh_balances_dup(NULL, &copy), BH_CLIENT_EINVAL);
}

/* ---- the session over a fake transport ---- */

#define MAX_REC 16

typedef struct {
    int sent_count;
    int sent_binary[MAX_REC];
    bh_buf_t sent[MAX_REC];
    int fail_send;
    int bal_count;
    bh_balances_t *bal[MAX_REC];
    int comp_count;
    uint64_t comp_id[MAX_REC];
    int comp_err[MAX_REC];
    char comp_msg[MAX_REC][128];
    int err_count;
    int err_code[MAX_REC];
    char err_msg[MAX_REC][256];
} fake_t;

static int fake_send(void *ud, int binary, const char *data, size_t len) {
    fake_t *f = ud;
    if (f->fail_send)
        return BH_CLIENT_ECLOSED;
    assert_true(f->sent_count < MAX_REC);
    f->sent_binary[f->sent_count] = binary;
    bh_buf_init(&f->sent[f->sent_count], 0);
    assert_int_equal(bh_buf_append(&f->sent[f->sent_count], data, len), BH_OK);
    f->sent_count++;
    return BH_CLIENT_OK;
}

static void fake_balances(void *ud, const bh_balances_t *b) {
    fake_t *f = ud;
    assert_true(f->bal_count < MAX_REC);
    assert_int_equal(bh_balances_dup(b, &f->bal[f->bal_count]), BH_CLIENT_OK);
    f->bal_count++;
}

static void fake_completion(void *ud, uint64_t id, int err, const char *msg) {
    fake_t *f = ud;
    assert_true(f->comp_count < MAX_REC);
    f->comp_id[f->comp_count] = id;
    f->comp_err[f->comp_count] = err;
    snprintf(f->comp_msg[f->comp_count], sizeof(f->comp_msg[0]), "%s", msg ? msg : "");
    f->comp_count++;
}

static void fake_error(void *ud, int err, const char *msg) {
    fake_t *f = ud;
    assert_true(f->err_count < MAX_REC);
    f->err_code[f->err_count] = err;
    snprintf(f->err_msg[f->err_count], sizeof(f->err_msg[0]), "%s", msg);
    f->err_count++;
}

static const bh_cl_session_hooks_t fake_hooks = {fake_send, fake_balances, fake_completion,
                                                 fake_error};

static void fake_free(fake_t *f) {
    for (int i = 0; i < f->sent_count; i++)
        bh_buf_free(&f->sent[i]);
    for (int i = 0; i < f->bal_count; i++)
        bh_balances_free(f->bal[i]);
    memset(f, 0, sizeof(*f));
}

/* The envelope the server sends, with the demo data at a given sequence and BTC amount. */
static void envelope(bh_buf_t *b, const char *subject, const char *client_id, unsigned seq,
                     const char *btc) {
    bh_buf_reset(b);
    assert_int_equal(
        bh_buf_printf(b,
                      "{\"channel\":\"executionEvents\",\"topic\":\"account.balances\","
                      "\"subject\":\"%s\",\"type\":\"message\",\"clientId\":\"%s\","
                      "\"data\":{\"userId\":\"user-123\",\"sequence\":%u,\"assets\":"
                      "[{\"name\":\"BTC\",\"available\":%s,\"allocated\":0,"
                      "\"currentExposure\":0,\"maxExposure\":1500}],\"baseCurrency\":"
                      "\"EUR\",\"totalCurrentExposure\":0,\"totalMaxExposure\":1500,"
                      "\"deleted\":false}}",
                      subject, client_id, seq, btc),
        BH_OK);
}

/* Feed one WebSocket message (exact-size copy) to the session. */
static int feed_msg(bh_cl_session_t *s, const char *data, size_t len, char *detail, int *allow) {
    char *copy = malloc(len ? len : 1);
    int r;

    assert_non_null(copy);
    memcpy(copy, data, len);
    r = bh_cl_session_input(s, copy, len, detail, 256, allow);
    free(copy);
    return r;
}

/* Server -> client: an executionEvents event built by the server's own protocol writer. */
static int server_event(bh_cl_session_t *s, const bh_sr_protocol_t *p, const char *subject,
                        const char *cid, unsigned seq, const char *btc) {
    bh_buf_t env, msg;
    char detail[256];
    int allow, r;

    bh_buf_init(&env, 0);
    bh_buf_init(&msg, 0);
    envelope(&env, subject, cid, seq, btc);
    assert_int_equal(p->write_invocation(&msg, "executionEvents", env.data, env.len), BH_OK);
    r = feed_msg(s, msg.data, msg.len, detail, &allow);
    bh_buf_free(&env);
    bh_buf_free(&msg);
    return r;
}

static int server_completion(bh_cl_session_t *s, const bh_sr_protocol_t *p, const char *id,
                             const char *error) {
    bh_buf_t msg;
    char detail[256];
    int allow, r;

    bh_buf_init(&msg, 0);
    assert_int_equal(p->write_completion(&msg, id, error), BH_OK);
    r = feed_msg(s, msg.data, msg.len, detail, &allow);
    bh_buf_free(&msg);
    return r;
}

static int server_text(bh_cl_session_t *s, const char *text, char *detail, int *allow) {
    return feed_msg(s, text, strlen(text), detail, allow);
}

static void expect_invocation_json(fake_t *f, int i, const char *id, const char *cid) {
    char want[256];
    snprintf(
        want, sizeof(want),
        "{\"type\":1,\"invocationId\":\"%s\",\"target\":\"GetBalances\",\"arguments\":[\"%s\"]}"
        "\x1e",
        id, cid);
    assert_true(i < f->sent_count);
    assert_int_equal(f->sent_binary[i], 0);
    assert_string_equal(f->sent[i].data, want);
}

static void expect_bal(fake_t *f, int i, bh_balances_kind_t kind, bh_resync_t resync, unsigned seq,
                       const char *btc) {
    char out[BH_DECIMAL_STRLEN];
    assert_true(i < f->bal_count);
    assert_int_equal(f->bal[i]->kind, kind);
    assert_int_equal(f->bal[i]->resync, resync);
    assert_int_equal(f->bal[i]->sequence, seq);
    bh_decimal_to_string(f->bal[i]->assets[0].available, out);
    assert_string_equal(out, btc);
}

static void start_json_session(fake_t *f, bh_cl_session_t **s) {
    char detail[256];
    int allow;

    memset(f, 0, sizeof(*f));
    assert_int_equal(bh_cl_session_new("json", 65536, &fake_hooks, f, s), BH_CLIENT_OK);
    assert_int_equal(bh_cl_session_binary(*s), 0);
    assert_int_equal(bh_cl_session_begin(*s), BH_CLIENT_OK);
    assert_int_equal(f->sent_count, 1);
    assert_int_equal(f->sent_binary[0], 0);
    assert_string_equal(f->sent[0].data, "{\"protocol\":\"json\",\"version\":1}\x1e");
    assert_int_equal(bh_cl_session_get_balances(*s, "x", BH_RESYNC_NONE, NULL), BH_CLIENT_ESTATE);
    assert_int_equal(bh_cl_session_ready(*s), 0);
    assert_int_equal(server_text(*s, "{}\x1e", detail, &allow), BH_CLIENT_OK);
    assert_int_equal(bh_cl_session_ready(*s), 1);
}

static void test_session_sequence_rules(void **state) {
    const bh_sr_protocol_t *p = &bh_sr_json_protocol;
    bh_cl_session_t *s;
    uint64_t id = 0;
    fake_t f;

    start_json_session(&f, &s);
    assert_int_equal(bh_cl_session_get_balances(s, "my-client-123", BH_RESYNC_NONE, &id),
                     BH_CLIENT_OK);
    assert_int_equal(id, 1);
    expect_invocation_json(&f, 1, "1", "my-client-123");

    /* the snapshot, then the completion */
    assert_int_equal(server_event(s, p, "account.balances.snapshot", "my-client-123", 8, "0.5"), 0);
    assert_int_equal(f.bal_count, 1);
    expect_bal(&f, 0, BH_BALANCES_SNAPSHOT, BH_RESYNC_NONE, 8, "0.5");
    assert_string_equal(f.bal[0]->client_id, "my-client-123");
    assert_int_equal(f.comp_count, 0);
    assert_int_equal(server_completion(s, p, "1", NULL), 0);
    assert_int_equal(f.comp_count, 1);
    assert_int_equal(f.comp_id[0], 1);
    assert_int_equal(f.comp_err[0], BH_CLIENT_OK);

    /* in order: delivered; repeated or older: dropped */
    assert_int_equal(server_event(s, p, "account.balances.update", "my-client-123", 9, "0.6"), 0);
    assert_int_equal(server_event(s, p, "account.balances.update", "my-client-123", 9, "0.6"), 0);
    assert_int_equal(server_event(s, p, "account.balances.update", "my-client-123", 8, "0.5"), 0);
    assert_int_equal(f.bal_count, 2);
    expect_bal(&f, 1, BH_BALANCES_UPDATE, BH_RESYNC_NONE, 9, "0.6");

    /* 11 after 9: a gap. Not delivered; GetBalances goes out again with the same clientId */
    assert_int_equal(server_event(s, p, "account.balances.update", "my-client-123", 11, "0.8"), 0);
    assert_int_equal(f.bal_count, 2);
    assert_int_equal(f.sent_count, 3);
    expect_invocation_json(&f, 2, "2", "my-client-123");
    /* updates before the new snapshot are dropped (it includes them); no second request */
    assert_int_equal(server_event(s, p, "account.balances.update", "my-client-123", 12, "0.9"), 0);
    assert_int_equal(server_event(s, p, "account.balances.update", "my-client-123", 15, "1"), 0);
    assert_int_equal(f.bal_count, 2);
    assert_int_equal(f.sent_count, 3);
    assert_int_equal(server_event(s, p, "account.balances.snapshot", "my-client-123", 12, "0.9"),
                     0);
    assert_int_equal(f.bal_count, 3);
    expect_bal(&f, 2, BH_BALANCES_SNAPSHOT, BH_RESYNC_GAP, 12, "0.9");
    /* the library's own invocation completes silently */
    assert_int_equal(server_completion(s, p, "2", NULL), 0);
    assert_int_equal(f.comp_count, 1);
    assert_int_equal(f.err_count, 0);
    assert_int_equal(server_event(s, p, "account.balances.update", "my-client-123", 13, "1"), 0);
    assert_int_equal(f.bal_count, 4);
    expect_bal(&f, 3, BH_BALANCES_UPDATE, BH_RESYNC_NONE, 13, "1");

    /* several records in one WebSocket message, and a record split over two */
    {
        bh_buf_t env, msg;
        char detail[256];
        int allow;
        size_t half;
        bh_buf_init(&env, 0);
        bh_buf_init(&msg, 0);
        envelope(&env, "account.balances.update", "my-client-123", 14, "1.1");
        p->write_invocation(&msg, "ExecutionEvents", env.data, env.len); /* any case */
        p->write_ping(&msg);
        envelope(&env, "account.balances.update", "my-client-123", 15, "1.2");
        p->write_invocation(&msg, "executionEvents", env.data, env.len);
        half = msg.len - 40;
        assert_int_equal(feed_msg(s, msg.data, half, detail, &allow), 0);
        assert_int_equal(f.bal_count, 5);
        assert_int_equal(feed_msg(s, msg.data + half, msg.len - half, detail, &allow), 0);
        assert_int_equal(f.bal_count, 6);
        expect_bal(&f, 5, BH_BALANCES_UPDATE, BH_RESYNC_NONE, 15, "1.2");
        /* another hub method's invocation is ignored */
        bh_buf_reset(&msg);
        p->write_invocation(&msg, "somethingElse", env.data, env.len);
        assert_int_equal(feed_msg(s, msg.data, msg.len, detail, &allow), 0);
        assert_int_equal(f.bal_count, 6);
        bh_buf_free(&env);
        bh_buf_free(&msg);
    }
    bh_cl_session_free(s);
    fake_free(&f);
}

static void test_session_errors(void **state) {
    const bh_sr_protocol_t *p = &bh_sr_json_protocol;
    bh_cl_session_t *s;
    char detail[256];
    uint64_t id;
    int allow;
    fake_t f;

    start_json_session(&f, &s);
    /* an error event for a bad clientId; the invocation still completes without error */
    assert_int_equal(bh_cl_session_get_balances(s, "", BH_RESYNC_NONE, &id), BH_CLIENT_OK);
    assert_int_equal(server_text(s,
                                 "{\"type\":1,\"target\":\"executionEvents\",\"arguments\":[{"
                                 "\"subject\":\"preChecksError\",\"type\":\"error\",\"clientId\":"
                                 "\"\",\"data\":{\"message\":\"clientId must not be empty\"}}]}\x1e"
                                 "{\"type\":3,\"invocationId\":\"1\",\"result\":null}\x1e",
                                 detail, &allow),
                     0);
    assert_int_equal(f.err_count, 1);
    assert_int_equal(f.err_code[0], BH_CLIENT_ESERVER);
    assert_string_equal(f.err_msg[0], "preChecksError: clientId must not be empty");
    assert_int_equal(f.comp_count, 1);
    assert_int_equal(f.comp_err[0], BH_CLIENT_OK);

    /* a completion with an error */
    assert_int_equal(bh_cl_session_get_balances(s, "c", BH_RESYNC_NONE, &id), BH_CLIENT_OK);
    assert_int_equal(id, 2);
    assert_int_equal(server_completion(s, p, "2", "Unknown hub method 'GetBalances'"), 0);
    assert_int_equal(f.comp_count, 2);
    assert_int_equal(f.comp_err[1], BH_CLIENT_EINVOKE);
    assert_string_equal(f.comp_msg[1], "Unknown hub method 'GetBalances'");
    /* completions of unknown ids are ignored */
    assert_int_equal(server_completion(s, p, "99", NULL), 0);
    assert_int_equal(server_completion(s, p, "x", NULL), 0);
    assert_int_equal(f.comp_count, 2);

    /* an unreadable update: reported, and a re-snapshot is requested */
    assert_int_equal(bh_cl_session_get_balances(s, "c", BH_RESYNC_NONE, &id), BH_CLIENT_OK);
    assert_int_equal(server_event(s, p, "account.balances.snapshot", "c", 3, "1"), 0);
    assert_int_equal(server_text(s,
                                 "{\"type\":1,\"target\":\"executionEvents\",\"arguments\":[{"
                                 "\"subject\":\"account.balances.update\",\"data\":{}}]}\x1e",
                                 detail, &allow),
                     0);
    assert_int_equal(f.err_count, 2);
    assert_int_equal(f.err_code[1], BH_CLIENT_EPROTO);
    expect_invocation_json(&f, f.sent_count - 1, "4", "c");
    /* an argument that is not an object */
    assert_int_equal(server_text(s,
                                 "{\"type\":1,\"target\":\"executionEvents\",\"arguments\":[7]}"
                                 "\x1e",
                                 detail, &allow),
                     0);
    assert_int_equal(f.err_count, 3);

    /* the connection ends with invocations in flight: they complete with ECLOSED */
    assert_int_equal(bh_cl_session_get_balances(s, "\xff", BH_RESYNC_NONE, &id), BH_CLIENT_EINVAL);
    assert_int_equal(server_completion(s, p, "3", NULL), 0);
    assert_int_equal(bh_cl_session_get_balances(s, "c", BH_RESYNC_NONE, &id), BH_CLIENT_OK);
    int before = f.comp_count;
    bh_cl_session_end(s, BH_CLIENT_ECLOSED);
    assert_int_equal(f.comp_count, before + 1);
    assert_int_equal(f.comp_id[before], id);
    assert_int_equal(f.comp_err[before], BH_CLIENT_ECLOSED);
    assert_int_equal(bh_cl_session_ready(s), 0);
    bh_cl_session_free(s);
    fake_free(&f);

    /* Close messages */
    start_json_session(&f, &s);
    assert_int_equal(
        server_text(s, "{\"type\":7,\"error\":\"API key revoked\"}\x1e", detail, &allow),
        BH_CLIENT_ECLOSED);
    assert_int_equal(allow, 0);
    assert_string_equal(detail, "the server closed the connection: API key revoked");
    bh_cl_session_free(s);
    fake_free(&f);
    start_json_session(&f, &s);
    assert_int_equal(
        server_text(s, "{\"type\":6}\x1e{\"type\":7,\"allowReconnect\":true}\x1e", detail, &allow),
        BH_CLIENT_ECLOSED);
    assert_int_equal(allow, 1);
    assert_string_equal(detail, "the server closed the connection");
    bh_cl_session_free(s);
    fake_free(&f);

    /* malformed hub messages end the connection */
    start_json_session(&f, &s);
    assert_int_equal(server_text(s, "{\x1e", detail, &allow), BH_CLIENT_EPROTO);
    bh_cl_session_free(s);
    fake_free(&f);
    start_json_session(&f, &s);
    assert_int_equal(server_text(s, "{\"type\":3}\x1e", detail, &allow), BH_CLIENT_EPROTO);
    bh_cl_session_free(s);
    fake_free(&f);

    /* handshake refused, or not JSON */
    memset(&f, 0, sizeof(f));
    assert_int_equal(bh_cl_session_new("messagepack", 1024, &fake_hooks, &f, &s), BH_CLIENT_OK);
    assert_int_equal(bh_cl_session_begin(s), 0);
    assert_string_equal(f.sent[0].data, "{\"protocol\":\"messagepack\",\"version\":1}\x1e");
    assert_int_equal(server_text(s, "{\"error\":\"The protocol 'messagepack' is not supported.\"}",
                                 detail, &allow),
                     BH_CLIENT_OK); /* incomplete: no separator yet */
    assert_int_equal(server_text(s, "\x1e", detail, &allow), BH_CLIENT_EHANDSHAKE);
    assert_string_equal(detail, "the server refused the SignalR handshake: The protocol "
                                "'messagepack' is not supported.");
    assert_int_equal(bh_cl_session_begin(s), 0);
    assert_int_equal(server_text(s, "[]\x1e", detail, &allow), BH_CLIENT_EPROTO);
    bh_cl_session_free(s);
    fake_free(&f);

    /* a message over the limit */
    memset(&f, 0, sizeof(f));
    assert_int_equal(bh_cl_session_new("json", 64, &fake_hooks, &f, &s), BH_CLIENT_OK);
    assert_int_equal(bh_cl_session_begin(s), 0);
    assert_int_equal(server_text(s, "{}\x1e", detail, &allow), 0);
    char big[200];
    memset(big, ' ', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(server_text(s, big, detail, &allow), BH_CLIENT_EPROTO);
    bh_cl_session_free(s);
    fake_free(&f);

    assert_int_equal(bh_cl_session_new("xml", 64, &fake_hooks, &f, &s), BH_CLIENT_EINVAL);
    assert_null(s);
}

static void test_session_resubscribe(void **state) {
    const bh_sr_protocol_t *p = &bh_sr_json_protocol;
    bh_cl_session_t *s;
    char detail[256];
    uint64_t id;
    int allow;
    fake_t f;

    start_json_session(&f, &s);
    /* nothing subscribed yet: nothing to renew */
    assert_int_equal(bh_cl_session_resubscribe(s), BH_CLIENT_OK);
    assert_int_equal(f.sent_count, 1);
    assert_int_equal(bh_cl_session_get_balances(s, "good", BH_RESYNC_NONE, &id), 0);
    assert_int_equal(server_event(s, p, "account.balances.snapshot", "good", 5, "1"), 0);
    assert_int_equal(server_completion(s, p, "1", NULL), 0);
    /* a later GetBalances refused by the pre-checks does not replace the subscription */
    assert_int_equal(bh_cl_session_get_balances(s, "bad", BH_RESYNC_NONE, &id), 0);
    assert_int_equal(server_text(s,
                                 "{\"type\":1,\"target\":\"executionEvents\",\"arguments\":[{"
                                 "\"subject\":\"preChecksError\",\"type\":\"error\",\"data\":{"
                                 "\"message\":\"no\"}}]}\x1e",
                                 detail, &allow),
                     0);
    assert_int_equal(server_completion(s, p, "2", NULL), 0);

    /* the connection drops; a new one: handshake, then GetBalances("good") by itself */
    bh_cl_session_end(s, BH_CLIENT_ECLOSED);
    int n = f.sent_count;
    assert_int_equal(bh_cl_session_begin(s), 0);
    assert_string_equal(f.sent[n].data, "{\"protocol\":\"json\",\"version\":1}\x1e");
    assert_int_equal(server_text(s, "{}\x1e", detail, &allow), 0);
    assert_int_equal(bh_cl_session_resubscribe(s), 0);
    expect_invocation_json(&f, n + 1, "3", "good");
    /* an update before the snapshot on the new connection is not delivered */
    assert_int_equal(server_event(s, p, "account.balances.update", "good", 7, "2"), 0);
    assert_int_equal(f.bal_count, 1);
    assert_int_equal(server_event(s, p, "account.balances.snapshot", "good", 7, "2"), 0);
    assert_int_equal(f.bal_count, 2);
    expect_bal(&f, 1, BH_BALANCES_SNAPSHOT, BH_RESYNC_RECONNECT, 7, "2");
    assert_int_equal(server_completion(s, p, "3", "boom"), 0);
    assert_int_equal(f.err_count, 2);
    assert_int_equal(f.err_code[1], BH_CLIENT_EINVOKE);
    assert_int_equal(f.comp_count, 2); /* only the application's two */
    bh_cl_session_free(s);
    fake_free(&f);
}

static void test_session_msgpack(void **state) {
    const bh_sr_protocol_t *p = &bh_sr_msgpack_protocol;
    static const unsigned char want[] = {
        0x20, 0x95, 0x01, 0x80, 0xa1, '1', 0xab, 'G', 'e', 't', 'B', 'a', 'l', 'a', 'n', 'c', 'e',
        's',  0x91, 0xad, 'm',  'y',  '-', 'c',  'l', 'i', 'e', 'n', 't', '-', '1', '2', '3'};
    bh_cl_session_t *s;
    bh_json_doc_t *doc;
    bh_sr_msg_t m;
    const char *err, *frame_msg;
    size_t frame_len;
    char detail[256], out[BH_DECIMAL_STRLEN];
    uint64_t id;
    int allow;
    fake_t f;

    memset(&f, 0, sizeof(f));
    assert_int_equal(bh_cl_session_new("messagepack", 65536, &fake_hooks, &f, &s), BH_CLIENT_OK);
    assert_int_equal(bh_cl_session_binary(s), 1);
    assert_int_equal(bh_cl_session_begin(s), 0);
    assert_int_equal(f.sent_binary[0], 0); /* the handshake is JSON text */
    /* the handshake answer and a ping in one binary message */
    assert_int_equal(feed_msg(s, "{}\x1e\x02\x91\x06", 6, detail, &allow), 0);
    assert_int_equal(bh_cl_session_ready(s), 1);
    assert_int_equal(bh_cl_session_get_balances(s, "my-client-123", BH_RESYNC_NONE, &id), 0);
    assert_int_equal(f.sent_binary[1], 1);
    assert_int_equal(f.sent[1].len, sizeof(want));
    assert_memory_equal(f.sent[1].data, want, sizeof(want));
    /* and the server's own parser reads it as GetBalances("my-client-123") with id "1" */
    assert_int_equal(p->frame(f.sent[1].data, f.sent[1].len, 1024, &frame_msg, &frame_len),
                     (int)sizeof(want));
    assert_int_equal(p->parse(frame_msg, frame_len, &doc, &m, &err), BH_OK);
    assert_int_equal(m.type, BH_SR_INVOCATION);
    assert_string_equal(m.invocation_id, "1");
    assert_string_equal(m.target, "GetBalances");
    assert_string_equal(bh_json_at(m.arguments, 0)->str, "my-client-123");
    bh_json_free(doc);

    /* amounts travel as float64: they come back as their shortest decimal */
    assert_int_equal(server_event(s, p, "account.balances.snapshot", "my-client-123", 8, "0.1"), 0);
    expect_bal(&f, 0, BH_BALANCES_SNAPSHOT, BH_RESYNC_NONE, 8, "0.1");
    assert_int_equal(
        server_event(s, p, "account.balances.update", "my-client-123", 9, "0.000000000000000001"),
        0);
    expect_bal(&f, 1, BH_BALANCES_UPDATE, BH_RESYNC_NONE, 9, "0.000000000000000001");
    assert_int_equal(
        server_event(s, p, "account.balances.update", "my-client-123", 10, "12345678.12345678"), 0);
    expect_bal(&f, 2, BH_BALANCES_UPDATE, BH_RESYNC_NONE, 10, "12345678.12345678");
    bh_decimal_to_string(f.bal[2]->total_max_exposure, out);
    assert_string_equal(out, "1500");
    assert_int_equal(server_completion(s, p, "1", NULL), 0);
    assert_int_equal(f.comp_count, 1);
    assert_int_equal(f.comp_err[0], 0);
    /* a gap: the re-snapshot request is MessagePack too */
    assert_int_equal(server_event(s, p, "account.balances.update", "my-client-123", 12, "1"), 0);
    assert_int_equal(f.sent_count, 3);
    assert_int_equal(f.sent_binary[2], 1);
    assert_int_equal(f.sent[2].data[5], '2'); /* invocation id "2" */

    bh_buf_t msg;
    bh_buf_init(&msg, 0);
    assert_int_equal(p->write_close(&msg, "server stopping", 1), BH_OK);
    assert_int_equal(feed_msg(s, msg.data, msg.len, detail, &allow), BH_CLIENT_ECLOSED);
    assert_int_equal(allow, 1);
    assert_string_equal(detail, "the server closed the connection: server stopping");
    bh_buf_free(&msg);
    /* broken framing */
    assert_int_equal(bh_cl_session_begin(s), 0);
    assert_int_equal(feed_msg(s, "{}\x1e\xff\xff\xff\xff\xff\x01", 9, detail, &allow),
                     BH_CLIENT_EPROTO);
    bh_cl_session_free(s);
    fake_free(&f);
}

static void test_session_garbage(void **state) {
    static const char *const protocols[] = {"json", "messagepack"};
    uint32_t seed = 42;
    char buf[200], detail[256];

    for (int k = 0; k < 2; k++) {
        for (int round = 0; round < 400; round++) {
            bh_cl_session_t *s;
            fake_t f;
            int allow, r = BH_CLIENT_OK;
            memset(&f, 0, sizeof(f));
            assert_int_equal(bh_cl_session_new(protocols[k], 4096, &fake_hooks, &f, &s), 0);
            assert_int_equal(bh_cl_session_begin(s), 0);
            if (round % 3 != 0)
                assert_int_equal(feed_msg(s, "{}\x1e", 3, detail, &allow), 0);
            if (round % 5 == 0)
                bh_cl_session_get_balances(s, "c", BH_RESYNC_NONE, NULL);
            for (int msgs = 0; msgs < 4 && r == BH_CLIENT_OK; msgs++) {
                size_t n = lcg(&seed) % sizeof(buf);
                for (size_t i = 0; i < n; i++) {
                    uint32_t v = lcg(&seed);
                    /* mostly structural bytes, so the parsers get past their first check */
                    buf[i] = v % 4 == 0 ? "{}[]\":,1\x1e\x91\x95\x03\xa1"[v % 14] : (char)v;
                }
                r = feed_msg(s, buf, n, detail, &allow);
                assert_true(r == BH_CLIENT_OK || r == BH_CLIENT_EPROTO || r == BH_CLIENT_ECLOSED ||
                            r == BH_CLIENT_EHANDSHAKE);
            }
            bh_cl_session_end(s, BH_CLIENT_ECLOSED);
            bh_cl_session_free(s);
            fake_free(&f);
        }
    }
}

static void test_backoff(void **state) {
    assert_int_equal(bh_cl_backoff_ms(500, 30000, 0, 0), 250);
    assert_int_equal(bh_cl_backoff_ms(500, 30000, 0, 250), 500);
    assert_int_equal(bh_cl_backoff_ms(500, 30000, 0, 251), 250);
    assert_int_equal(bh_cl_backoff_ms(500, 30000, 1, 0), 500);
    assert_int_equal(bh_cl_backoff_ms(500, 30000, 1, 500), 1000);
    assert_int_equal(bh_cl_backoff_ms(500, 30000, 5, 0), 8000);
    assert_int_equal(bh_cl_backoff_ms(500, 30000, 6, 0), 15000); /* 32000 capped */
    assert_int_equal(bh_cl_backoff_ms(500, 30000, 6, 15000), 30000);
    assert_int_equal(bh_cl_backoff_ms(500, 30000, 4000000000u, UINT32_MAX) <= 30000, 1);
    assert_int_equal(bh_cl_backoff_ms(500, 30000, 4000000000u, 0), 15000);
    assert_int_equal(bh_cl_backoff_ms(1, 2, 0, 0), 0);
    for (uint32_t r = 0; r < 2000; r += 7) {
        int d = bh_cl_backoff_ms(100, 1000, 2, r * 2654435761u);
        assert_true(d >= 200 && d <= 400);
    }
}

/* ---- the client against a scripted server on a loopback socket ---- */

typedef struct {
    int lfd, fd;
    unsigned port;
    bh_buf_t in; /* bytes from the client */
} srv_t;

typedef struct {
    int states[32], state_errs[32], nstates;
    fake_t f; /* balances, completions, errors */
} rec_t;

static void rec_state(bh_client_t *c, bh_client_state_t st, int err, void *ud) {
    rec_t *r = ud;
    assert_true(r->nstates < 32);
    r->state_errs[r->nstates] = err;
    r->states[r->nstates++] = st;
}
static void rec_balances(bh_client_t *c, const bh_balances_t *b, void *ud) {
    fake_balances(&((rec_t *)ud)->f, b);
}
static void rec_completion(bh_client_t *c, uint64_t id, int err, const char *m, void *ud) {
    fake_completion(&((rec_t *)ud)->f, id, err, m);
}
static void rec_error(bh_client_t *c, int err, const char *m, void *ud) {
    fake_error(&((rec_t *)ud)->f, err, m);
}
static const bh_client_callbacks_t rec_cb = {rec_state, rec_balances, rec_completion, rec_error};

static void srv_listen(srv_t *s) {
    struct sockaddr_in a = {0};
    socklen_t len = sizeof(a);

    memset(s, 0, sizeof(*s));
    s->fd = -1;
    bh_buf_init(&s->in, 0);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    assert_true(s->lfd >= 0);
    assert_int_equal(bind(s->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(s->lfd, 8), 0);
    assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&a, &len), 0);
    s->port = ntohs(a.sin_port);
}

static void srv_drop(srv_t *s) {
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    bh_buf_reset(&s->in);
}

static void srv_free(srv_t *s) {
    srv_drop(s);
    close(s->lfd);
    bh_buf_free(&s->in);
}

/* Drive the client and the server until cond holds (every wait bounded: ~5 s at most). */
#define DRIVE(c, s, cond)                                                                          \
    do {                                                                                           \
        int guard_ = 0;                                                                            \
        while (!(cond)) {                                                                          \
            assert_true(guard_++ < 500);                                                           \
            bh_client_poll((c), 10);                                                               \
            srv_pull(s);                                                                           \
        }                                                                                          \
    } while (0)

static void srv_pull(srv_t *s) {
    char buf[4096];
    ssize_t n;

    if (s->fd < 0) {
        s->fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK);
        if (s->fd < 0)
            return;
    }
    while ((n = recv(s->fd, buf, sizeof(buf), 0)) > 0)
        assert_int_equal(bh_buf_append(&s->in, buf, (size_t)n), BH_OK);
}

static void srv_write(srv_t *s, const void *p, size_t n) {
    assert_int_equal(send(s->fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* One complete client frame from s->in, unmasked: returns 1 and consumes it. */
static int srv_frame(srv_t *s, int *opcode, bh_buf_t *payload) {
    const unsigned char *h = (const unsigned char *)s->in.data;
    size_t hl = 2, len;

    if (s->in.len < 2)
        return 0;
    assert_true(h[1] & 0x80); /* client frames are masked */
    len = h[1] & 0x7f;
    if (len == 126) {
        if (s->in.len < 4)
            return 0;
        len = (size_t)h[2] << 8 | h[3];
        hl = 4;
    }
    assert_true(len < 65536);
    if (s->in.len < hl + 4 + len)
        return 0;
    *opcode = h[0] & 0x0f;
    bh_buf_reset(payload);
    for (size_t i = 0; i < len; i++)
        assert_int_equal(bh_buf_appendc(payload, (char)(h[hl + 4 + i] ^ h[hl + i % 4])), BH_OK);
    bh_buf_consume(&s->in, hl + 4 + len);
    return 1;
}

static void srv_send_text(srv_t *s, const char *text) {
    size_t n = strlen(text);
    unsigned char h[4] = {0x81, 0, 0, 0};
    size_t hl = 2;

    if (n < 126) {
        h[1] = (unsigned char)n;
    } else {
        h[1] = 126;
        h[2] = (unsigned char)(n >> 8);
        h[3] = (unsigned char)n;
        hl = 4;
    }
    srv_write(s, h, hl);
    srv_write(s, text, n);
}

static char *head_end(srv_t *s) {
    return s->in.len ? strstr(s->in.data, "\r\n\r\n") : NULL;
}

#define NEGOTIATE_BODY                                                                             \
    "{\"negotiateVersion\":1,\"connectionId\":\"c\",\"connectionToken\":\"tok/1\","                \
    "\"availableTransports\":[{\"transport\":\"WebSockets\",\"transferFormats\":[\"Text\","        \
    "\"Binary\"]}]}"

/* Play the server through negotiate, upgrade and handshake on the current connection. */
static void serve_connection(srv_t *s, bh_client_t *c, rec_t *rec, int close_after_negotiate) {
    char resp[512], key[25], accept[29];
    const char *k;
    bh_buf_t payload;
    int op;

    DRIVE(c, s, head_end(s) != NULL);
    assert_true(has_prefix(s->in.data, "POST /hub/negotiate?negotiateVersion=1 HTTP/1.1\r\n"));
    assert_non_null(strstr(s->in.data, "\r\nAuthorization: Bearer bh_k\r\n"));
    bh_buf_consume(&s->in, (size_t)(head_end(s) + 4 - s->in.data));
    /* chunked, to exercise the decoder against a real client */
    snprintf(resp, sizeof(resp),
             "HTTP/1.1 200 OK\r\n%sTransfer-Encoding: chunked\r\n\r\n%zx\r\n%s\r\n0\r\n\r\n",
             close_after_negotiate ? "Connection: close\r\n" : "", strlen(NEGOTIATE_BODY),
             NEGOTIATE_BODY);
    srv_write(s, resp, strlen(resp));
    if (close_after_negotiate)
        srv_drop(s); /* the client must open a second connection for the upgrade */
    DRIVE(c, s, head_end(s) != NULL);
    assert_true(has_prefix(s->in.data, "GET /hub?id=tok%2F1&access_token=bh_k HTTP/1.1\r\n"));
    k = strstr(s->in.data, "Sec-WebSocket-Key: ");
    assert_non_null(k);
    memcpy(key, k + 19, 24);
    key[24] = '\0';
    assert_int_equal(bh_ws_accept_key(key, 24, accept), BH_OK);
    bh_buf_consume(&s->in, (size_t)(head_end(s) + 4 - s->in.data));
    snprintf(resp, sizeof(resp),
             "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Accept: %s\r\n\r\n",
             accept);
    srv_write(s, resp, strlen(resp));
    bh_buf_init(&payload, 0);
    DRIVE(c, s, srv_frame(s, &op, &payload));
    assert_int_equal(op, 1);
    assert_string_equal(payload.data, "{\"protocol\":\"json\",\"version\":1}\x1e");
    bh_buf_free(&payload);
    srv_send_text(s, "{}\x1e");
    DRIVE(c, s, bh_client_state(c) == BH_CLIENT_CONNECTED);
}

static void expect_client_invocation(srv_t *s, bh_client_t *c, const char *id, const char *cid) {
    char want[256];
    bh_buf_t payload;
    int op;

    bh_buf_init(&payload, 0);
    DRIVE(c, s, srv_frame(s, &op, &payload));
    snprintf(
        want, sizeof(want),
        "{\"type\":1,\"invocationId\":\"%s\",\"target\":\"GetBalances\",\"arguments\":[\"%s\"]}"
        "\x1e",
        id, cid);
    assert_int_equal(op, 1);
    assert_string_equal(payload.data, want);
    bh_buf_free(&payload);
}

static void send_event(srv_t *s, const char *subject, unsigned seq, const char *completion_id) {
    bh_buf_t env, msg;

    bh_buf_init(&env, 0);
    bh_buf_init(&msg, 0);
    envelope(&env, subject, "cid", seq, "0.5");
    bh_sr_write_invocation(&msg, "executionEvents", env.data, env.len);
    if (completion_id)
        bh_sr_write_completion(&msg, completion_id, NULL);
    srv_send_text(s, msg.data);
    bh_buf_free(&env);
    bh_buf_free(&msg);
}

static bh_client_t *new_client(unsigned port, rec_t *rec) {
    bh_client_options_t o;
    bh_client_t *c;
    char url[64];

    memset(rec, 0, sizeof(*rec));
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/hub", port);
    bh_client_options_init(&o);
    o.url = url;
    o.api_key = "bh_k";
    o.reconnect_base_ms = 1;
    o.reconnect_max_ms = 2;
    assert_int_equal(bh_client_new(&o, &rec_cb, rec, &c), BH_CLIENT_OK);
    assert_int_equal(bh_client_state(c), BH_CLIENT_DISCONNECTED);
    return c;
}

static void test_client_scripted_server(void **state) {
    bh_buf_t payload;
    rec_t rec;
    srv_t srv;
    uint64_t id;
    int op;

    srv_listen(&srv);
    bh_client_t *c = new_client(srv.port, &rec);
    assert_int_equal(bh_client_get_balances(c, "cid", &id), BH_CLIENT_ESTATE);
    assert_int_equal(bh_client_start(c), BH_CLIENT_OK);
    assert_int_equal(bh_client_start(c), BH_CLIENT_ESTATE);
    assert_int_equal(bh_client_state(c), BH_CLIENT_CONNECTING);
    serve_connection(&srv, c, &rec, 0);
    assert_int_equal(rec.nstates, 2);
    assert_int_equal(rec.states[1], BH_CLIENT_CONNECTED);
    assert_true(bh_client_fd(c) >= 0);
    assert_true(bh_client_events(c) & POLLIN);

    assert_int_equal(bh_client_get_balances(c, "cid", &id), BH_CLIENT_OK);
    assert_int_equal(id, 1);
    expect_client_invocation(&srv, c, "1", "cid");
    send_event(&srv, "account.balances.snapshot", 8, "1");
    DRIVE(c, &srv, rec.f.comp_count == 1);
    assert_int_equal(rec.f.bal_count, 1);
    expect_bal(&rec.f, 0, BH_BALANCES_SNAPSHOT, BH_RESYNC_NONE, 8, "0.5");

    /* a gap: the client asks again by itself */
    send_event(&srv, "account.balances.update", 10, NULL);
    expect_client_invocation(&srv, c, "2", "cid");
    send_event(&srv, "account.balances.snapshot", 10, "2");
    DRIVE(c, &srv, rec.f.bal_count == 2);
    expect_bal(&rec.f, 1, BH_BALANCES_SNAPSHOT, BH_RESYNC_GAP, 10, "0.5");

    /* the server goes away: RECONNECTING, a new connection (the negotiate one closed by the
     * server this time), CONNECTED, and GetBalances("cid") again without being asked */
    srv_drop(&srv);
    DRIVE(c, &srv, bh_client_state(c) == BH_CLIENT_RECONNECTING);
    assert_int_equal(rec.state_errs[rec.nstates - 1], BH_CLIENT_ECLOSED);
    serve_connection(&srv, c, &rec, 1);
    expect_client_invocation(&srv, c, "3", "cid");
    send_event(&srv, "account.balances.snapshot", 11, "3");
    DRIVE(c, &srv, rec.f.bal_count == 3);
    expect_bal(&rec.f, 2, BH_BALANCES_SNAPSHOT, BH_RESYNC_RECONNECT, 11, "0.5");
    send_event(&srv, "account.balances.update", 12, NULL);
    DRIVE(c, &srv, rec.f.bal_count == 4);
    expect_bal(&rec.f, 3, BH_BALANCES_UPDATE, BH_RESYNC_NONE, 12, "0.5");
    assert_int_equal(rec.f.comp_count, 1);

    /* a clean stop: our masked Close 1000, the server's echo, DISCONNECTED, poll returns 0 */
    bh_client_stop(c);
    bh_buf_init(&payload, 0);
    DRIVE(c, &srv, srv_frame(&srv, &op, &payload));
    assert_int_equal(op, 8);
    assert_int_equal(payload.len, 2);
    assert_memory_equal(payload.data, "\x03\xe8", 2);
    bh_buf_free(&payload);
    srv_write(&srv, "\x88\x02\x03\xe8", 4);
    DRIVE(c, &srv, bh_client_state(c) == BH_CLIENT_DISCONNECTED);
    assert_int_equal(bh_client_poll(c, 0), BH_CLIENT_OK);
    assert_int_equal(rec.state_errs[rec.nstates - 1], BH_CLIENT_OK);
    bh_client_free(c);
    fake_free(&rec.f);
    srv_free(&srv);
}

/* Keep-alive: a Ping after keepalive_ms without sending; a server silent for server_timeout_ms
 * counts as lost (ETIMEOUT), and the client reconnects. */
static void test_client_keepalive_and_silence(void **state) {
    bh_client_options_t o;
    bh_buf_t payload;
    bh_client_t *c;
    char url[64];
    rec_t rec;
    srv_t srv;
    int op;

    srv_listen(&srv);
    memset(&rec, 0, sizeof(rec));
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/hub", srv.port);
    bh_client_options_init(&o);
    o.url = url;
    o.api_key = "bh_k";
    o.keepalive_ms = 20;
    o.server_timeout_ms = 300;
    o.reconnect_base_ms = 1;
    assert_int_equal(bh_client_new(&o, &rec_cb, &rec, &c), BH_CLIENT_OK);
    assert_int_equal(bh_client_start(c), BH_CLIENT_OK);
    serve_connection(&srv, c, &rec, 0);
    assert_true(bh_client_timeout(c) >= 0 && bh_client_timeout(c) <= 20);
    bh_buf_init(&payload, 0);
    DRIVE(c, &srv, srv_frame(&srv, &op, &payload));
    assert_int_equal(op, 1);
    assert_string_equal(payload.data, "{\"type\":6}\x1e");
    bh_buf_free(&payload);
    /* the server never answers: lost, then a new connection attempt */
    DRIVE(c, &srv, bh_client_state(c) == BH_CLIENT_RECONNECTING);
    assert_int_equal(rec.state_errs[rec.nstates - 1], BH_CLIENT_ETIMEOUT);
    assert_non_null(strstr(bh_client_last_error(c), "sent nothing for 300 ms"));
    srv_drop(&srv);
    serve_connection(&srv, c, &rec, 0);
    assert_int_equal(bh_client_state(c), BH_CLIENT_CONNECTED);
    bh_client_free(c); /* abrupt: no callbacks, nothing leaks */
    fake_free(&rec.f);
    srv_free(&srv);
}

static void test_client_refused(void **state) {
    static const char unauthorized[] = "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n";
    rec_t rec;
    srv_t srv;
    bh_client_t *c;
    int r = 0;

    /* 401 on negotiate: DISCONNECTED for good with EAUTH */
    srv_listen(&srv);
    c = new_client(srv.port, &rec);
    assert_int_equal(bh_client_start(c), BH_CLIENT_OK);
    DRIVE(c, &srv, head_end(&srv) != NULL);
    srv_write(&srv, unauthorized, sizeof(unauthorized) - 1);
    DRIVE(c, &srv, (r = bh_client_poll(c, 10)) != BH_CLIENT_OK);
    assert_int_equal(r, BH_CLIENT_EAUTH);
    assert_int_equal(bh_client_state(c), BH_CLIENT_DISCONNECTED);
    assert_string_equal(bh_client_last_error(c), "the server refused the API key (HTTP 401)");
    assert_int_equal(rec.states[rec.nstates - 1], BH_CLIENT_DISCONNECTED);
    assert_int_equal(rec.state_errs[rec.nstates - 1], BH_CLIENT_EAUTH);
    bh_client_free(c);
    srv_free(&srv);

    /* a wrong Sec-WebSocket-Accept */
    srv_listen(&srv);
    c = new_client(srv.port, &rec);
    assert_int_equal(bh_client_start(c), BH_CLIENT_OK);
    DRIVE(c, &srv, head_end(&srv) != NULL);
    bh_buf_reset(&srv.in);
    {
        char resp[512];
        snprintf(resp, sizeof(resp), "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n%s",
                 strlen(NEGOTIATE_BODY), NEGOTIATE_BODY);
        srv_write(&srv, resp, strlen(resp));
    }
    DRIVE(c, &srv, head_end(&srv) != NULL);
    static const char bad101[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 "Connection: Upgrade\r\n"
                                 "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    srv_write(&srv, bad101, sizeof(bad101) - 1);
    r = 0;
    DRIVE(c, &srv, (r = bh_client_poll(c, 10)) != BH_CLIENT_OK);
    assert_int_equal(r, BH_CLIENT_EPROTO);
    bh_client_free(c);
    srv_free(&srv);

    /* nobody listening: ECONNECT, with the reason */
    srv_listen(&srv);
    unsigned port = srv.port;
    srv_free(&srv);
    c = new_client(port, &rec);
    assert_int_equal(bh_client_connect(c), BH_CLIENT_ECONNECT);
    assert_non_null(strstr(bh_client_last_error(c), "refused"));
    assert_int_equal(bh_client_state(c), BH_CLIENT_DISCONNECTED);
    bh_client_free(c);
}

static void test_client_arguments(void **state) {
    bh_client_options_t o;
    bh_client_t *c = NULL;

    bh_client_options_init(&o);
    assert_string_equal(o.protocol, "json");
    assert_int_equal(o.keepalive_ms, 15000);
    assert_int_equal(o.server_timeout_ms, 30000);
    assert_int_equal(bh_client_new(&o, NULL, NULL, &c), BH_CLIENT_EINVAL); /* no URL */
    o.url = "ftp://x";
    assert_int_equal(bh_client_new(&o, NULL, NULL, &c), BH_CLIENT_EINVAL);
    o.url = "http://127.0.0.1:1/hub";
    o.protocol = "xml";
    assert_int_equal(bh_client_new(&o, NULL, NULL, &c), BH_CLIENT_EINVAL);
    o.protocol = NULL;
    o.api_key = "bh_x\r\nX-Injected: 1";
    assert_int_equal(bh_client_new(&o, NULL, NULL, &c), BH_CLIENT_EINVAL);
    o.api_key = "bh_x";
    o.ca_file = "/nonexistent/ca.pem";
    assert_int_equal(bh_client_new(&o, NULL, NULL, &c), BH_CLIENT_EINVAL);
    o.ca_file = NULL;
    assert_int_equal(bh_client_new(&o, NULL, NULL, &c), BH_CLIENT_OK);
    assert_int_equal(bh_client_poll(c, 0), BH_CLIENT_OK); /* idle: nothing to do */
    assert_int_equal(bh_client_fd(c), -1);
    assert_int_equal(bh_client_timeout(c), -1);
    assert_string_equal(bh_client_last_error(c), "");
    bh_client_stop(c);
    bh_client_free(c);
    bh_client_free(NULL);
    /* every code has its own text */
    for (int e = 0; e >= BH_CLIENT_ESTATE; e--) {
        for (int g = e - 1; g >= BH_CLIENT_ESTATE; g--)
            assert_string_not_equal(bh_client_strerror(e), bh_client_strerror(g));
    }
    assert_string_equal(bh_client_strerror(-999), "unknown error");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decimal_parse),
        cmocka_unit_test(test_decimal_public),
        cmocka_unit_test(test_url),
        cmocka_unit_test(test_http_requests),
        cmocka_unit_test(test_http_response),
        cmocka_unit_test(test_http_garbage),
        cmocka_unit_test(test_negotiate),
        cmocka_unit_test(test_balances),
        cmocka_unit_test(test_session_sequence_rules),
        cmocka_unit_test(test_session_errors),
        cmocka_unit_test(test_session_resubscribe),
        cmocka_unit_test(test_session_msgpack),
        cmocka_unit_test(test_session_garbage),
        cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_client_scripted_server),
        cmocka_unit_test(test_client_keepalive_and_silence),
        cmocka_unit_test(test_client_refused),
        cmocka_unit_test(test_client_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
