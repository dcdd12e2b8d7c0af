/* Unit tests for src/http: request-head parsing (valid, incremental, pipelined, malformed,
 * limits), keep-alive and upgrade rules, query decoding, and exact response bytes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/error.h"
#include "http/http.h"

#define MAX_HEAD 8192

/* The parser always sees an exactly sized heap copy, so ASan catches any read past the end. */
typedef struct {
    char *copy;
    bh_http_request_t req;
    int status;
    int rc;
} parsed_t;

static void parse_n(parsed_t *p, const char *s, size_t n, size_t max_head) {
    p->copy = malloc(n ? n : 1);
    assert_non_null(p->copy);
    memcpy(p->copy, s, n);
    p->status = -1;
    p->rc = bh_http_parse_request(p->copy, n, max_head, &p->req, &p->status);
}

static void parse(parsed_t *p, const char *s) {
    parse_n(p, s, strlen(s), MAX_HEAD);
}

static void done(parsed_t *p) {
    free(p->copy);
    p->copy = NULL;
}

static void assert_mem(const char *got, size_t got_len, const char *want) {
    assert_int_equal(got_len, strlen(want));
    assert_memory_equal(got, want, got_len);
}

/* Parse s and expect a rejection with the given status. */
static void expect_status(const char *s, int status) {
    parsed_t p;
    parse(&p, s);
    if (p.status != status)
        print_error("input: \"%s\"\n", s);
    assert_int_equal(p.status, status);
    assert_true(p.rc < 0);
    assert_int_not_equal(p.rc, BH_EAGAIN);
    done(&p);
}

static void expect_ok(const char *s) {
    parsed_t p;
    parse(&p, s);
    if (p.rc != (int)strlen(s))
        print_error("input: \"%s\" rc=%d status=%d\n", s, p.rc, p.status);
    assert_int_equal(p.rc, (int)strlen(s));
    assert_int_equal(p.status, 0);
    done(&p);
}

static const char GET_REQ[] = "GET /ExecutionLiveServer/v1?id=abc%20d&x=1 HTTP/1.1\r\n"
                              "Host: localhost:5000\r\n"
                              "User-Agent:  test/1.0 \t\r\n"
                              "Accept: */*\r\n"
                              "X-Empty:\r\n"
                              "\r\n";

static void test_valid_get(void **state) {
    parsed_t p;
    size_t vlen = 99;
    const char *v;

    parse(&p, GET_REQ);
    assert_int_equal(p.rc, (int)strlen(GET_REQ));
    assert_int_equal(p.status, 0);
    assert_int_equal(p.req.head_len, strlen(GET_REQ));
    assert_int_equal(p.req.method, BH_HTTP_GET);
    assert_mem(p.req.method_str, p.req.method_len, "GET");
    assert_mem(p.req.target, p.req.target_len, "/ExecutionLiveServer/v1?id=abc%20d&x=1");
    assert_mem(p.req.path, p.req.path_len, "/ExecutionLiveServer/v1");
    assert_mem(p.req.query, p.req.query_len, "id=abc%20d&x=1");
    assert_int_equal(p.req.minor_version, 1);
    assert_int_equal(p.req.nheaders, 4);
    assert_mem(p.req.headers[0].name, p.req.headers[0].name_len, "Host");
    assert_mem(p.req.headers[0].value, p.req.headers[0].value_len, "localhost:5000");
    assert_mem(p.req.headers[1].name, p.req.headers[1].name_len, "User-Agent");
    assert_mem(p.req.headers[1].value, p.req.headers[1].value_len, "test/1.0");
    assert_mem(p.req.headers[2].value, p.req.headers[2].value_len, "*/*");
    assert_mem(p.req.headers[3].name, p.req.headers[3].name_len, "X-Empty");
    assert_int_equal(p.req.headers[3].value_len, 0);
    assert_int_equal(p.req.content_length, 0);
    assert_int_equal(p.req.keep_alive, 1);
    assert_int_equal(p.req.upgrade_websocket, 0);

    v = bh_http_header(&p.req, "user-agent", &vlen);
    assert_non_null(v);
    assert_mem(v, vlen, "test/1.0");
    v = bh_http_header(&p.req, "HOST", &vlen);
    assert_mem(v, vlen, "localhost:5000");
    assert_null(bh_http_header(&p.req, "Hos", &vlen));
    assert_null(bh_http_header(&p.req, "Hostx", &vlen));
    assert_int_equal(vlen, 0);
    done(&p);
}

static void test_methods_and_targets(void **state) {
    static const struct {
        const char *req;
        bh_http_method_t method;
        const char *path;
        const char *query; /* NULL: no '?' */
    } cases[] = {
        {"HEAD / HTTP/1.1\r\n\r\n", BH_HTTP_HEAD, "/", NULL},
        {"POST /a/b HTTP/1.1\r\nContent-Length: 3\r\n\r\n", BH_HTTP_POST, "/a/b", NULL},
        {"PUT /x? HTTP/1.1\r\n\r\n", BH_HTTP_PUT, "/x", ""},
        {"DELETE /x?a?b HTTP/1.0\r\n\r\n", BH_HTTP_DELETE, "/x", "a?b"},
        {"OPTIONS * HTTP/1.1\r\n\r\n", BH_HTTP_OPTIONS, "*", NULL},
        {"OPTIONS /negotiate HTTP/1.1\r\n\r\n", BH_HTTP_OPTIONS, "/negotiate", NULL},
        {"PATCH /p HTTP/1.1\r\n\r\n", BH_HTTP_OTHER, "/p", NULL},
        {"get /p HTTP/1.1\r\n\r\n", BH_HTTP_OTHER, "/p", NULL},
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        parsed_t p;
        parse(&p, cases[i].req);
        assert_int_equal(p.rc, (int)strlen(cases[i].req));
        assert_int_equal(p.req.method, cases[i].method);
        assert_mem(p.req.path, p.req.path_len, cases[i].path);
        if (cases[i].query == NULL) {
            assert_null(p.req.query);
            assert_int_equal(p.req.query_len, 0);
        } else {
            assert_non_null(p.req.query);
            assert_mem(p.req.query, p.req.query_len, cases[i].query);
        }
        done(&p);
    }
}

/* Every strict prefix of a valid head needs more bytes; the full head parses. */
static void check_prefixes(const char *req, size_t head_len) {
    size_t n;

    for (n = 0; n < head_len; n++) {
        parsed_t p;
        parse_n(&p, req, n, MAX_HEAD);
        if (p.rc != BH_EAGAIN)
            print_error("prefix %zu of \"%s\" gave %d\n", n, req, p.rc);
        assert_int_equal(p.rc, BH_EAGAIN);
        done(&p);
    }
    {
        parsed_t p;
        parse_n(&p, req, head_len, MAX_HEAD);
        assert_int_equal(p.rc, (int)head_len);
        done(&p);
    }
}

static void test_every_prefix_is_again(void **state) {
    static const char post[] = "POST /admin/users HTTP/1.0\r\n"
                               "Content-Length: 2\r\n"
                               "Connection: keep-alive\r\n"
                               "\r\n"
                               "{}";
    static const char ws[] =
        "GET /hub?id=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n";

    check_prefixes(GET_REQ, strlen(GET_REQ));
    check_prefixes(post, strlen(post) - 2);
    check_prefixes(ws, strlen(ws));
    check_prefixes("OPTIONS * HTTP/1.1\r\n\r\n", 22);
}

static void test_pipelined(void **state) {
    static const char two[] = "POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
                              "GET /b?q=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                              "GET /c HTTP/1.1\r\n";
    parsed_t p;
    size_t off;

    parse(&p, two);
    assert_int_equal(p.rc, 39);
    assert_int_equal(p.req.head_len, 39);
    assert_int_equal(p.req.content_length, 5);
    assert_mem(p.req.path, p.req.path_len, "/a");
    off = p.req.head_len + (size_t)p.req.content_length;
    assert_memory_equal(p.copy + p.req.head_len, "hello", 5);
    done(&p);

    parse(&p, two + off);
    assert_int_equal(p.rc, 32);
    assert_mem(p.req.path, p.req.path_len, "/b");
    assert_mem(p.req.query, p.req.query_len, "q=1");
    assert_int_equal(p.req.content_length, 0);
    off += p.req.head_len;
    done(&p);

    parse(&p, two + off);
    assert_int_equal(p.rc, BH_EAGAIN);
    done(&p);
}

static void test_head_limit(void **state) {
    /* 16 + 22 + 2 = 40 bytes */
    static const char req[] = "GET / HTTP/1.1\r\nX-Filler: 0123456789\r\n\r\n";
    size_t len = strlen(req);
    parsed_t p;

    assert_int_equal(len, 40);
    /* a head of exactly max_head bytes is fine */
    parse_n(&p, req, len, len);
    assert_int_equal(p.rc, (int)len);
    done(&p);
    /* one byte short: rejected as soon as max_head bytes are there without the end */
    parse_n(&p, req, len, len - 1);
    assert_int_equal(p.rc, BH_ETOOBIG);
    assert_int_equal(p.status, 431);
    done(&p);
    parse_n(&p, req, len - 1, len - 1);
    assert_int_equal(p.status, 431);
    done(&p);
    /* fewer than max_head bytes and incomplete: wait */
    parse_n(&p, req, len - 2, len - 1);
    assert_int_equal(p.rc, BH_EAGAIN);
    done(&p);
    /* a request line alone larger than the limit */
    {
        char big[600];
        memset(big, 'a', sizeof(big));
        memcpy(big, "GET /", 5);
        parse_n(&p, big, sizeof(big), 512);
        assert_int_equal(p.status, 431);
        done(&p);
        parse_n(&p, big, 511, 512);
        assert_int_equal(p.rc, BH_EAGAIN);
        done(&p);
    }
    /* a malformed byte inside the limit is a 400 even when the head is too big */
    parse_n(&p, "GET / HTTP/1.1\r\nBad Name: x\r\nX: yyyyyyyy", 40, 30);
    assert_int_equal(p.status, 400);
    done(&p);
}

static void test_too_many_headers(void **state) {
    bh_buf_t b;
    parsed_t p;
    int i;

    bh_buf_init(&b, 0);
    assert_int_equal(bh_buf_appends(&b, "GET / HTTP/1.1\r\n"), BH_OK);
    for (i = 0; i < BH_HTTP_MAX_HEADERS; i++)
        assert_int_equal(bh_buf_printf(&b, "X-H%d: %d\r\n", i, i), BH_OK);
    assert_int_equal(bh_buf_appends(&b, "\r\n"), BH_OK);
    parse_n(&p, b.data, b.len, MAX_HEAD);
    assert_int_equal(p.rc, (int)b.len);
    assert_int_equal(p.req.nheaders, BH_HTTP_MAX_HEADERS);
    assert_mem(p.req.headers[63].name, p.req.headers[63].name_len, "X-H63");
    assert_mem(p.req.headers[63].value, p.req.headers[63].value_len, "63");
    done(&p);

    b.len -= 2;
    assert_int_equal(bh_buf_appends(&b, "X-One-Too-Many: 1\r\n\r\n"), BH_OK);
    parse_n(&p, b.data, b.len, MAX_HEAD);
    assert_int_equal(p.rc, BH_ETOOBIG);
    assert_int_equal(p.status, 431);
    done(&p);
    bh_buf_free(&b);
}

static void test_bad_request_lines(void **state) {
    static const char *bad[] = {
        "\r\nGET / HTTP/1.1\r\n\r\n",      /* leading empty line */
        " GET / HTTP/1.1\r\n\r\n",         /* leading space */
        "GET  / HTTP/1.1\r\n\r\n",         /* double space */
        "GET / HTTP/1.1 \r\n\r\n",         /* trailing space */
        "GET /\tx HTTP/1.1\r\n\r\n",       /* tab in target */
        "GET\t/ HTTP/1.1\r\n\r\n",         /* tab as separator */
        "G(T / HTTP/1.1\r\n\r\n",          /* non-token method */
        "GET x HTTP/1.1\r\n\r\n",          /* not origin-form */
        "GET http://h/ HTTP/1.1\r\n\r\n",  /* absolute-form not served */
        "GET * HTTP/1.1\r\n\r\n",          /* '*' only for OPTIONS */
        "OPTIONS *x HTTP/1.1\r\n\r\n",     /* '*' alone */
        "GET /a#frag HTTP/1.1\r\n\r\n",    /* fragment */
        "GET /\xc3\xa9 HTTP/1.1\r\n\r\n",  /* raw non-ASCII in target */
        "GET / http/1.1\r\n\r\n",          /* protocol name is case-sensitive */
        "GET / HTTP/1.1x\r\n\r\n",         /* junk after version */
        "GET / HTTP/1.\r\n\r\n",           /* missing minor */
        "GET / HTTP/.1\r\n\r\n",           /* missing major */
        "GET / HTTP/1.1\r\r\n\r\n",        /* CR not followed by LF */
        "GET /\x7f HTTP/1.1\r\n\r\n",      /* DEL */
        "GET /\x01 HTTP/1.1\r\n\r\n",      /* control char */
        "GET / HTTP/1.1\n\r\n",            /* bare LF ends the request line */
        "GET / HTTP/1.1\r\nHost: a\n\r\n", /* bare LF ends a header */
        "GET / HTTP/1.1\r\nHost: a\r\n\n", /* bare LF as the empty line */
        "GET\r\n\r\n",
        "GET /\r\n\r\n",
        "/ HTTP/1.1\r\n\r\n",
    };
    size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_status(bad[i], 400);
    /* a NUL byte anywhere in the line */
    {
        parsed_t p;
        parse_n(&p, "GET /a\0b HTTP/1.1\r\n\r\n", 21, MAX_HEAD);
        assert_int_equal(p.status, 400);
        assert_int_equal(p.rc, BH_EINVAL);
        done(&p);
    }
}

static void test_bad_headers(void **state) {
    static const char *bad[] = {
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n",             /* space before colon */
        "GET / HTTP/1.1\r\nHost\t: a\r\n\r\n",            /* tab before colon */
        "GET / HTTP/1.1\r\n: a\r\n\r\n",                  /* empty name */
        "GET / HTTP/1.1\r\nHo(st: a\r\n\r\n",             /* non-token name */
        "GET / HTTP/1.1\r\nHo\xc3\xa9st: a\r\n\r\n",      /* non-ASCII name */
        "GET / HTTP/1.1\r\nHost a\r\n\r\n",               /* no colon */
        "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",           /* obs-fold (space) */
        "GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n",          /* obs-fold (tab) */
        "GET / HTTP/1.1\r\n X: a\r\n\r\n",                /* leading space */
        "GET / HTTP/1.1\r\nX: a\x01\r\n\r\n",             /* control char in value */
        "GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n",             /* DEL in value */
        "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",              /* lone CR in value */
        "GET / HTTP/1.1\r\nX: a\nY: b\r\n\r\n",           /* bare LF between headers */
        "GET / HTTP/1.1\r\nX: a\r\n\rX\r\n",              /* CR not followed by LF */
        "GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",  /* not digits */
        "GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",   /* sign */
        "GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",   /* sign */
        "GET / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n",  /* inner space */
        "GET / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", /* list form */
        "GET / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n", /* hex */
        "GET / HTTP/1.1\r\nContent-Length:\r\n\r\n",      /* empty */
        "GET / HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n",    /* 2^64 */
        "GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", /* overflow */
        "GET / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\n",  /* disagree */
    };
    size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_status(bad[i], 400);
    {
        parsed_t p;
        parse_n(&p, "GET / HTTP/1.1\r\nX: a\0b\r\n\r\n", 26, MAX_HEAD);
        assert_int_equal(p.status, 400);
        done(&p);
    }
}

static void test_good_headers(void **state) {
    parsed_t p;

    /* obs-text and inner whitespace are fine in values; names keep their case */
    parse(&p, "GET / HTTP/1.1\r\nX-Ünïcode: caf\xc3\xa9 au  lait\r\n\r\n");
    assert_int_equal(p.status, 400); /* non-ASCII name */
    done(&p);
    parse(&p, "GET / HTTP/1.1\r\nX-A: caf\xc3\xa9 au  lait\r\nx-b:\t v \r\n\r\n");
    assert_true(p.rc > 0);
    assert_mem(p.req.headers[0].value, p.req.headers[0].value_len, "caf\xc3\xa9 au  lait");
    assert_mem(p.req.headers[1].name, p.req.headers[1].name_len, "x-b");
    assert_mem(p.req.headers[1].value, p.req.headers[1].value_len, "v");
    done(&p);
    parse(&p, "GET / HTTP/1.1\r\nX:    \t  \r\n\r\n");
    assert_true(p.rc > 0);
    assert_int_equal(p.req.headers[0].value_len, 0);
    done(&p);
}

static void test_content_length(void **state) {
    parsed_t p;

    parse(&p, "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_true(p.rc > 0);
    assert_int_equal(p.req.content_length, 0);
    done(&p);
    parse(&p, "POST / HTTP/1.1\r\nContent-Length: 00042\r\ncontent-length:  42 \r\n\r\n");
    assert_true(p.rc > 0);
    assert_int_equal(p.req.content_length, 42);
    done(&p);
    parse(&p, "POST / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n");
    assert_true(p.rc > 0);
    assert_true(p.req.content_length == UINT64_MAX);
    done(&p);
}

static void test_transfer_encoding_and_version(void **state) {
    expect_status("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501);
    expect_status("POST / HTTP/1.1\r\ntransfer-encoding: identity\r\n\r\n", 501);
    expect_status("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                  501);
    expect_status("GET / HTTP/2.0\r\n\r\n", 505);
    expect_status("GET / HTTP/2\r\n\r\n", 505);
    expect_status("GET / HTTP/1.2\r\n\r\n", 505);
    expect_status("GET / HTTP/0.9\r\n\r\n", 505);
    expect_status("GET / HTTP/1\r\n\r\n", 505);
    expect_status("GET / HTTP/10.1\r\n\r\n", 505);
    {
        parsed_t p;
        parse(&p, "GET / HTTP/3.0\r\n\r\n");
        assert_int_equal(p.rc, BH_EPROTO);
        done(&p);
        parse(&p, "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_int_equal(p.rc, BH_EPROTO);
        done(&p);
    }
    expect_status("GET / HTTP/1.0000\r\n\r\n", 400);
    expect_ok("GET / HTTP/1.0\r\n\r\n");
}

static void test_keep_alive(void **state) {
    static const struct {
        const char *req;
        int keep_alive;
    } cases[] = {
        {"GET / HTTP/1.1\r\n\r\n", 1},
        {"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 0},
        {"GET / HTTP/1.1\r\nConnection: CLOSE\r\n\r\n", 0},
        {"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n", 0},
        {"GET / HTTP/1.1\r\nConnection: x\r\nConnection: close\r\n\r\n", 0},
        {"GET / HTTP/1.1\r\nConnection: closed\r\n\r\n", 1},
        {"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", 1},
        {"GET / HTTP/1.1\r\nX-Connection: close\r\n\r\n", 1},
        {"GET / HTTP/1.0\r\n\r\n", 0},
        {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 1},
        {"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", 1},
        {"GET / HTTP/1.0\r\nConnection: foo ,\t keep-alive ,\r\n\r\n", 1},
        {"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", 0},
        {"GET / HTTP/1.0\r\nConnection: keep-alive2\r\n\r\n", 0},
        {"GET / HTTP/1.0\r\nKeep-Alive: timeout=5\r\n\r\n", 0},
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        parsed_t p;
        parse(&p, cases[i].req);
        assert_true(p.rc > 0);
        if (p.req.keep_alive != cases[i].keep_alive)
            print_error("case %zu: %s\n", i, cases[i].req);
        assert_int_equal(p.req.keep_alive, cases[i].keep_alive);
        done(&p);
    }
}

static void test_upgrade(void **state) {
    static const struct {
        const char *req;
        int upgrade;
    } cases[] = {
        {"GET /h HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 1},
        {"GET /h HTTP/1.1\r\nupgrade: WebSocket\r\nconnection: keep-alive, upgrade\r\n\r\n", 1},
        {"GET /h HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade:  websocket \r\n\r\n", 1},
        {"GET /h HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", 0},
        {"GET /h HTTP/1.1\r\nConnection: Upgrade\r\n\r\n", 0},
        {"GET /h HTTP/1.1\r\nUpgrade: websocket2\r\nConnection: Upgrade\r\n\r\n", 0},
        {"GET /h HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", 0},
        {"GET /h HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgraded\r\n\r\n", 0},
        {"GET /h HTTP/1.1\r\nUpgrade: websocket\r\nConnection: close\r\n\r\n", 0},
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        parsed_t p;
        parse(&p, cases[i].req);
        assert_true(p.rc > 0);
        if (p.req.upgrade_websocket != cases[i].upgrade)
            print_error("case %zu: %s\n", i, cases[i].req);
        assert_int_equal(p.req.upgrade_websocket, cases[i].upgrade);
        done(&p);
    }
}

/* Valid requests with every byte replaced by hostile values, and pseudo-random garbage: the
 * parser must answer with a status or EAGAIN and never read outside the buffer (ASan). */
static void test_garbage_no_crash(void **state) {
    static const unsigned char subst[] = {0x00, '\r', '\n', ' ', '\t', ':', '?', 0x7f, 0x80, 0xff};
    size_t len = strlen(GET_REQ), i, k;
    uint32_t seed = 12345;

    for (i = 0; i < len; i++) {
        for (k = 0; k < sizeof(subst); k++) {
            char tmp[sizeof(GET_REQ)];
            parsed_t p;
            memcpy(tmp, GET_REQ, len);
            tmp[i] = (char)subst[k];
            parse_n(&p, tmp, len, MAX_HEAD);
            if (p.rc > 0) {
                assert_int_equal(p.status, 0);
                assert_true((size_t)p.rc <= len);
            } else if (p.rc != BH_EAGAIN) {
                assert_true(p.status == 400 || p.status == 431 || p.status == 501 ||
                            p.status == 505);
            }
            done(&p);
        }
    }
    for (i = 0; i < 2000; i++) {
        char tmp[64];
        size_t n = 1 + i % sizeof(tmp);
        parsed_t p;
        for (k = 0; k < n; k++) {
            seed = seed * 1103515245u + 12345u;
            tmp[k] = (char)(seed >> 16);
        }
        parse_n(&p, tmp, n, 48);
        assert_true(p.rc == BH_EAGAIN || p.status == 400 || p.status == 431 || p.status == 501 ||
                    p.status == 505);
        done(&p);
    }
}

static void test_query_param(void **state) {
    static const char q[] = "id=abc%20d&access_token=a+b%2Bc&empty=&flag&n%61me=v&dup=1&dup=2"
                            "&utf=%C3%A9&sp+ace=x";
    char out[32];

    assert_int_equal(bh_http_query_param(q, strlen(q), "id", out, sizeof(out)), 5);
    assert_string_equal(out, "abc d");
    assert_int_equal(bh_http_query_param(q, strlen(q), "access_token", out, sizeof(out)), 5);
    assert_string_equal(out, "a b+c");
    assert_int_equal(bh_http_query_param(q, strlen(q), "empty", out, sizeof(out)), 0);
    assert_string_equal(out, "");
    assert_int_equal(bh_http_query_param(q, strlen(q), "flag", out, sizeof(out)), 0);
    assert_string_equal(out, "");
    assert_int_equal(bh_http_query_param(q, strlen(q), "name", out, sizeof(out)), 1);
    assert_string_equal(out, "v");
    assert_int_equal(bh_http_query_param(q, strlen(q), "dup", out, sizeof(out)), 1);
    assert_string_equal(out, "1");
    assert_int_equal(bh_http_query_param(q, strlen(q), "utf", out, sizeof(out)), 2);
    assert_string_equal(out, "\xc3\xa9");
    assert_int_equal(bh_http_query_param(q, strlen(q), "sp ace", out, sizeof(out)), 1);
    assert_int_equal(bh_http_query_param(q, strlen(q), "i", out, sizeof(out)), BH_ENOTFOUND);
    assert_int_equal(bh_http_query_param(q, strlen(q), "ids", out, sizeof(out)), BH_ENOTFOUND);
    assert_int_equal(bh_http_query_param(q, strlen(q), "n%61me", out, sizeof(out)), BH_ENOTFOUND);
    assert_int_equal(bh_http_query_param("", 0, "id", out, sizeof(out)), BH_ENOTFOUND);
    assert_int_equal(bh_http_query_param(NULL, 0, "id", out, sizeof(out)), BH_ENOTFOUND);
    /* query_len bounds the search: "id=abc" is cut to "id=ab" */
    assert_int_equal(bh_http_query_param("id=abc", 5, "id", out, sizeof(out)), 2);
    assert_string_equal(out, "ab");
    assert_int_equal(bh_http_query_param("&&id=1&", 7, "id", out, sizeof(out)), 1);
    assert_int_equal(bh_http_query_param("a=1&=2", 6, "", out, sizeof(out)), 1);
    assert_string_equal(out, "2");

    /* capacity: the value and its NUL must fit */
    assert_int_equal(bh_http_query_param("k=abcd", 6, "k", out, 5), 4);
    assert_string_equal(out, "abcd");
    assert_int_equal(bh_http_query_param("k=abcd", 6, "k", out, 4), BH_ETOOBIG);
    assert_int_equal(bh_http_query_param("k=", 2, "k", out, 0), BH_ETOOBIG);
    assert_int_equal(bh_http_query_param("k=", 2, "k", out, 1), 0);

    /* bad escapes */
    assert_int_equal(bh_http_query_param("k=%", 3, "k", out, sizeof(out)), BH_EINVAL);
    assert_int_equal(bh_http_query_param("k=%4", 4, "k", out, sizeof(out)), BH_EINVAL);
    assert_int_equal(bh_http_query_param("k=%4g", 5, "k", out, sizeof(out)), BH_EINVAL);
    assert_int_equal(bh_http_query_param("k=%zz1", 6, "k", out, sizeof(out)), BH_EINVAL);
    assert_int_equal(bh_http_query_param("k=a%00b", 7, "k", out, sizeof(out)), BH_EINVAL);
    assert_int_equal(bh_http_query_param("%g=1&k=2", 8, "k", out, sizeof(out)), BH_EINVAL);
    /* "%4" then the query ends: the escape must not read past query_len */
    assert_int_equal(bh_http_query_param("k=%41", 4, "k", out, sizeof(out)), BH_EINVAL);
    assert_int_equal(bh_http_query_param("k=%41", 5, "k", out, sizeof(out)), 1);
    assert_string_equal(out, "A");
}

static void assert_buf(const bh_buf_t *b, const char *want) {
    assert_int_equal(b->len, strlen(want));
    assert_memory_equal(b->data, want, b->len);
}

static void test_write_response(void **state) {
    bh_buf_t b;

    bh_buf_init(&b, 0);
    assert_int_equal(bh_http_write_response(&b, 200, "application/json", NULL, "{}", 2, 1), BH_OK);
    assert_buf(&b, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                   "Content-Length: 2\r\n\r\n{}");
    bh_buf_reset(&b);

    assert_int_equal(bh_http_write_response(&b, 404, NULL, NULL, NULL, 0, 0), BH_OK);
    assert_buf(&b, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    bh_buf_reset(&b);

    assert_int_equal(bh_http_write_response(&b, 401, "text/plain",
                                            "WWW-Authenticate: Bearer\r\nX-A: b\r\n", "no", 2, 0),
                     BH_OK);
    assert_buf(&b, "HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
                   "Connection: close\r\nWWW-Authenticate: Bearer\r\nX-A: b\r\n\r\nno");
    bh_buf_reset(&b);

    assert_int_equal(
        bh_http_write_response(&b, 101, NULL,
                               "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                               "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n",
                               NULL, 0, 1),
        BH_OK);
    assert_buf(&b,
               "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n");
    bh_buf_reset(&b);

    assert_int_equal(bh_http_write_response(&b, 204, NULL, "", NULL, 0, 1), BH_OK);
    assert_buf(&b, "HTTP/1.1 204 No Content\r\n\r\n");
    bh_buf_reset(&b);

    /* appends after what is already there */
    assert_int_equal(bh_buf_appends(&b, "prev"), BH_OK);
    assert_int_equal(bh_http_write_response(&b, 503, NULL, NULL, "x", 1, 1), BH_OK);
    assert_buf(&b, "prevHTTP/1.1 503 Service Unavailable\r\nContent-Length: 1\r\n\r\nx");
    bh_buf_reset(&b);

    /* misuse is refused without writing anything */
    assert_int_equal(bh_http_write_response(&b, 204, NULL, NULL, "x", 1, 1), BH_EINVAL);
    assert_int_equal(bh_http_write_response(&b, 99, NULL, NULL, NULL, 0, 1), BH_EINVAL);
    assert_int_equal(bh_http_write_response(&b, 600, NULL, NULL, NULL, 0, 1), BH_EINVAL);
    assert_int_equal(bh_http_write_response(&b, 200, "a\r\nX: y", NULL, NULL, 0, 1), BH_EINVAL);
    assert_int_equal(bh_http_write_response(&b, 200, NULL, "X: y", NULL, 0, 1), BH_EINVAL);
    assert_int_equal(bh_http_write_response(&b, 200, NULL, NULL, NULL, 3, 1), BH_EINVAL);
    assert_int_equal(b.len, 0);
    bh_buf_free(&b);

    /* a capped buffer that cannot hold the body keeps its previous content */
    bh_buf_init(&b, 48);
    assert_int_equal(bh_buf_appends(&b, "keep"), BH_OK);
    assert_int_equal(bh_http_write_response(&b, 200, NULL, NULL, "0123456789abcdef", 16, 1),
                     BH_ETOOBIG);
    assert_buf(&b, "keep");
    assert_int_equal(b.data[4], '\0');
    bh_buf_free(&b);
}

static void test_reasons(void **state) {
    static const struct {
        int status;
        const char *reason;
    } cases[] = {
        {101, "Switching Protocols"},
        {200, "OK"},
        {201, "Created"},
        {204, "No Content"},
        {400, "Bad Request"},
        {401, "Unauthorized"},
        {403, "Forbidden"},
        {404, "Not Found"},
        {405, "Method Not Allowed"},
        {408, "Request Timeout"},
        {409, "Conflict"},
        {413, "Content Too Large"},
        {422, "Unprocessable Content"},
        {426, "Upgrade Required"},
        {429, "Too Many Requests"},
        {431, "Request Header Fields Too Large"},
        {500, "Internal Server Error"},
        {501, "Not Implemented"},
        {503, "Service Unavailable"},
        {505, "HTTP Version Not Supported"},
        {299, "Unknown"},
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        assert_string_equal(bh_http_reason(cases[i].status), cases[i].reason);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_get),
        cmocka_unit_test(test_methods_and_targets),
        cmocka_unit_test(test_every_prefix_is_again),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_head_limit),
        cmocka_unit_test(test_too_many_headers),
        cmocka_unit_test(test_bad_request_lines),
        cmocka_unit_test(test_bad_headers),
        cmocka_unit_test(test_good_headers),
        cmocka_unit_test(test_content_length),
        cmocka_unit_test(test_transfer_encoding_and_version),
        cmocka_unit_test(test_keep_alive),
        cmocka_unit_test(test_upgrade),
        cmocka_unit_test(test_garbage_no_crash),
        cmocka_unit_test(test_query_param),
        cmocka_unit_test(test_write_response),
        cmocka_unit_test(test_reasons),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
