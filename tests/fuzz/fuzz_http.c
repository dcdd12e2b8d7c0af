/* Fuzz harness for the HTTP request-head parser and the query-string decoder. Beyond "no crash"
 * it checks what callers rely on: a complete head lies inside the buffer and ends in CRLF CRLF,
 * every pointer stays inside the head, the parser is stateless (every prefix of a good head
 * asks for more bytes, trailing bytes change nothing), and status codes match return codes. */
#include <string.h>

#include "base/buf.h"
#include "base/error.h"
#include "http/http.h"
#include "fuzz.h"

#define BIG_HEAD 16384

static int inside(const char *p, size_t n, const char *base, size_t len) {
    return p >= base && n <= len && (size_t)(p - base) <= len - n;
}

static int is_tchar(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static void check_request(const char *buf, size_t len, size_t max_head, int r, int status,
                          const bh_http_request_t *req) {
    size_t h = req->head_len, k;

    if (r == BH_EAGAIN) {
        FUZZ_CHECK(status == 0 && len < max_head);
        return;
    }
    if (r < 0) {
        FUZZ_CHECK((r == BH_ETOOBIG && status == 431) || (r == BH_EINVAL && status == 400) ||
                   (r == BH_EPROTO && (status == 501 || status == 505)));
        return;
    }
    FUZZ_CHECK(status == 0 && r > 0 && (size_t)r == h && h <= len && h <= max_head && h >= 4);
    FUZZ_CHECK(memcmp(buf + h - 4, "\r\n\r\n", 4) == 0);
    FUZZ_CHECK(req->method_str == buf && req->method_len > 0 && req->method_len < h);
    FUZZ_CHECK(buf[req->method_len] == ' ');
    FUZZ_CHECK(inside(req->target, req->target_len, buf, h) && req->target_len > 0);
    FUZZ_CHECK(req->target == buf + req->method_len + 1);
    FUZZ_CHECK(req->target[0] == '/' ||
               (req->target_len == 1 && req->target[0] == '*' && req->method == BH_HTTP_OPTIONS));
    FUZZ_CHECK(req->path == req->target && req->path_len <= req->target_len);
    FUZZ_CHECK(memchr(req->path, '?', req->path_len) == NULL);
    for (k = 0; k < req->target_len; k++)
        FUZZ_CHECK(req->target[k] > 0x20 && req->target[k] < 0x7f && req->target[k] != '#');
    if (req->query != NULL) {
        FUZZ_CHECK(req->query == req->path + req->path_len + 1 && req->query[-1] == '?');
        FUZZ_CHECK(req->query + req->query_len == req->target + req->target_len);
    } else {
        FUZZ_CHECK(req->query_len == 0 && req->path_len == req->target_len);
    }
    FUZZ_CHECK(req->minor_version == 0 || req->minor_version == 1);
    FUZZ_CHECK(req->nheaders <= BH_HTTP_MAX_HEADERS);
    for (k = 0; k < req->nheaders; k++) {
        const bh_http_header_t *hd = &req->headers[k];
        const char *v;
        size_t i, vlen;

        FUZZ_CHECK(hd->name_len > 0 && inside(hd->name, hd->name_len, buf, h));
        FUZZ_CHECK(inside(hd->value, hd->value_len, buf, h));
        FUZZ_CHECK(hd->name > req->target && hd->value > hd->name + hd->name_len);
        FUZZ_CHECK(hd->name[-1] == '\n' && hd->name[hd->name_len] == ':');
        for (i = 0; i < hd->name_len; i++)
            FUZZ_CHECK(is_tchar((unsigned char)hd->name[i]));
        for (i = 0; i < hd->value_len; i++)
            FUZZ_CHECK(hd->value[i] != '\r' && hd->value[i] != '\n' && hd->value[i] != 0);
        if (hd->value_len > 0) {
            FUZZ_CHECK(hd->value[0] != ' ' && hd->value[0] != '\t');
            FUZZ_CHECK(hd->value[hd->value_len - 1] != ' ' && hd->value[hd->value_len - 1] != '\t');
        }
        if (k > 0)
            FUZZ_CHECK(hd->name > req->headers[k - 1].value + req->headers[k - 1].value_len);
        /* bh_http_header finds the first header of that name; names are tchars, never NUL */
        char name[BIG_HEAD];
        memcpy(name, hd->name, hd->name_len);
        name[hd->name_len] = '\0';
        v = bh_http_header(req, name, &vlen);
        FUZZ_CHECK(v != NULL && v <= hd->value);
    }
    FUZZ_CHECK(req->upgrade_websocket == 0 || bh_http_header(req, "upgrade", NULL) != NULL);
    if (req->content_length > 0)
        FUZZ_CHECK(bh_http_header(req, "content-length", NULL) != NULL);
    FUZZ_CHECK(bh_http_header(req, "transfer-encoding", NULL) == NULL);
}

/* A decoded parameter is NUL-free, fits out, and is NUL-terminated at its length. */
static void check_query(const char *q, size_t qlen, const char *name, size_t outcap) {
    char out[300];
    int r;

    memset(out, 0x55, sizeof out);
    r = bh_http_query_param(q, qlen, name, out, outcap);
    FUZZ_CHECK(r >= 0 || r == BH_ENOTFOUND || r == BH_ETOOBIG || r == BH_EINVAL);
    if (r >= 0) {
        FUZZ_CHECK((size_t)r < outcap && out[r] == '\0' && strlen(out) == (size_t)r);
        FUZZ_CHECK((size_t)r <= qlen);
    }
    for (size_t i = outcap; i < sizeof out; i++)
        FUZZ_CHECK(out[i] == 0x55); /* nothing written past outcap */
}

static void fuzz_query(const char *q, size_t qlen) {
    static const char *const names[] = {"id", "access_token", "", "a b", "\xff"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        check_query(q, qlen, names[i], 256);
        check_query(q, qlen, names[i], 1 + qlen % 7);
    }
    check_query(q, qlen, "id", 0);
}

/* The response writer: all or nothing, and the head it writes parses as a response would. */
static void fuzz_response(const char *body, size_t len, int status, int keep_alive) {
    bh_buf_t b;
    char ctype[64];
    size_t n = len < sizeof ctype - 1 ? len : sizeof ctype - 1;
    int r;

    memcpy(ctype, body, n);
    ctype[n] = '\0';
    bh_buf_init(&b, 0);
    FUZZ_CHECK(bh_buf_appends(&b, "x") == BH_OK);
    r = bh_http_write_response(&b, status, n > 0 ? ctype : NULL, NULL, body, len, keep_alive);
    if (r != BH_OK) {
        FUZZ_CHECK(b.len == 1 && b.data[1] == '\0');
    } else {
        char line[32];
        snprintf(line, sizeof line,
                 "x"
                 "HTTP/1.1 %d ",
                 status);
        FUZZ_CHECK(b.len >= strlen(line) + len && memcmp(b.data, line, strlen(line)) == 0);
        FUZZ_CHECK(memcmp(b.data + b.len - len, body, len) == 0);
        FUZZ_CHECK(memcmp(b.data + b.len - len - 4, "\r\n\r\n", 4) == 0);
        FUZZ_CHECK(strpbrk(ctype, "\r\n") == NULL || n == 0);
    }
    bh_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *buf = (const char *)data;
    bh_http_request_t req, again;
    int r, st, r2, st2;
    size_t p, step;

    r = bh_http_parse_request(buf, size, BIG_HEAD, &req, &st);
    check_request(buf, size, BIG_HEAD, r, st, &req);

    /* a smaller limit: the same head when it fits, 431 or a parse error otherwise */
    size_t small = size < BIG_HEAD ? size / 2 + 1 : BIG_HEAD / 2;
    r2 = bh_http_parse_request(buf, size, small, &again, &st2);
    check_request(buf, size, small, r2, st2, &again);
    if (r > 0 && (size_t)r <= small)
        FUZZ_CHECK(r2 == r);
    if (r2 > 0)
        FUZZ_CHECK(r2 == r);

    if (r > 0) {
        size_t h = (size_t)r;
        /* the head alone parses the same; every shorter prefix wants more bytes */
        r2 = bh_http_parse_request(buf, h, BIG_HEAD, &again, &st2);
        FUZZ_CHECK(r2 == r && again.nheaders == req.nheaders &&
                   again.content_length == req.content_length &&
                   again.keep_alive == req.keep_alive &&
                   again.upgrade_websocket == req.upgrade_websocket);
        step = h > 256 ? h / 64 : 1;
        for (p = 0; p < h; p += step) {
            r2 = bh_http_parse_request(buf, p, BIG_HEAD, &again, &st2);
            FUZZ_CHECK(r2 == BH_EAGAIN);
        }
        r2 = bh_http_parse_request(buf, h - 1, BIG_HEAD, &again, &st2);
        FUZZ_CHECK(r2 == BH_EAGAIN);
        if (req.query != NULL)
            fuzz_query(req.query, req.query_len);
        /* a header value as a query string too: arbitrary bytes the decoder must survive */
        if (req.nheaders > 0)
            fuzz_query(req.headers[0].value, req.headers[0].value_len);
    } else if (r == BH_EAGAIN) {
        /* a prefix that is not wrong yet: each shorter prefix is not wrong either */
        step = size > 256 ? size / 64 : 1;
        for (p = 0; p < size; p += step) {
            r2 = bh_http_parse_request(buf, p, BIG_HEAD, &again, &st2);
            FUZZ_CHECK(r2 == BH_EAGAIN);
        }
    }

    /* the raw input as a query string */
    fuzz_query(buf, size);
    fuzz_response(buf, size, size > 0 ? 100 + data[0] * 2 : 200, size % 2);
    return 0;
}
