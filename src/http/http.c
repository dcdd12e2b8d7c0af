/* HTTP/1.1 request-head parser, query-string decoding and response serialisation.
 * The parser is stateless: the caller re-parses the whole buffer when more bytes arrive (as
 * picohttpparser does), which keeps it simple and lets it reject bad input before the head ends. */
#include "http.h"

#include <limits.h>
#include <string.h>

#include "../base/hex.h"
#include "../base/error.h"

#define PARSE_AGAIN 0 /* internal: the available bytes end inside the head */

/* RFC 9110 tchar: the characters of a method or a header name. */
static int is_tchar(unsigned char c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Request-target bytes: visible ASCII. '#' never belongs to a target (fragments stay in the
 * client), so it is a sign of garbage. */
static int is_target_char(unsigned char c) {
    return c > 0x20 && c < 0x7f && c != '#';
}

/* Field-value bytes: HTAB, SP, VCHAR and obs-text; every other control character is refused. */
static int is_value_char(unsigned char c) {
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static int is_ows(char c) {
    return c == ' ' || c == '\t';
}

static int lower(int c) {
    return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
}

static int eq_ci(const char *a, size_t alen, const char *b) {
    size_t i;

    for (i = 0; i < alen; i++) {
        if (b[i] == '\0' || lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
            return 0;
    }
    return b[alen] == '\0';
}

static bh_http_method_t method_of(const char *m, size_t n) {
    static const struct {
        const char *name;
        bh_http_method_t method;
    } methods[] = {
        {"GET", BH_HTTP_GET}, {"HEAD", BH_HTTP_HEAD},     {"POST", BH_HTTP_POST},
        {"PUT", BH_HTTP_PUT}, {"DELETE", BH_HTTP_DELETE}, {"OPTIONS", BH_HTTP_OPTIONS},
    };
    size_t i;

    for (i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        if (strlen(methods[i].name) == n && memcmp(methods[i].name, m, n) == 0)
            return methods[i].method;
    }
    return BH_HTTP_OTHER;
}

/* "HTTP/" 1*DIGIT ["." 1*DIGIT] CRLF starting at b[*pos]. Only 1.0 and 1.1 are accepted; any
 * other well-formed version is 505. Returns PARSE_AGAIN, 1 on success, or -status. */
static int parse_version(const char *b, size_t n, size_t *pos, int *minor) {
    static const char proto[] = "HTTP/";
    unsigned major = 0, min = 0;
    size_t i = *pos, k, digits;
    int has_minor = 0, minor_digits = 0;

    for (k = 0; k < 5; k++, i++) {
        if (i == n)
            return PARSE_AGAIN;
        if (b[i] != proto[k])
            return -400;
    }
    for (digits = 0; i < n && b[i] >= '0' && b[i] <= '9'; i++, digits++)
        major = major * 10 + (unsigned)(b[i] - '0');
    if (i == n)
        return PARSE_AGAIN;
    if (digits == 0 || digits > 3)
        return -400;
    if (b[i] == '.') {
        has_minor = 1;
        for (i++; i < n && b[i] >= '0' && b[i] <= '9'; i++, minor_digits++)
            min = min * 10 + (unsigned)(b[i] - '0');
        if (i == n)
            return PARSE_AGAIN;
        if (minor_digits == 0 || minor_digits > 3)
            return -400;
    }
    if (b[i] != '\r')
        return -400;
    if (++i == n)
        return PARSE_AGAIN;
    if (b[i] != '\n')
        return -400;
    if (major != 1 || digits != 1 || !has_minor || minor_digits != 1 || min > 1)
        return -505;
    *minor = (int)min;
    *pos = i + 1;
    return 1;
}

/* METHOD SP request-target SP HTTP-version CRLF. Returns the line length (> 0), PARSE_AGAIN, or
 * -status. */
static long parse_request_line(const char *b, size_t n, bh_http_request_t *req) {
    size_t i = 0, t;
    const char *q;
    int r;

    while (i < n && is_tchar((unsigned char)b[i]))
        i++;
    if (i == n)
        return PARSE_AGAIN;
    if (i == 0 || b[i] != ' ')
        return -400;
    req->method_str = b;
    req->method_len = i;
    req->method = method_of(b, i);

    t = ++i;
    while (i < n && is_target_char((unsigned char)b[i]))
        i++;
    if (i == n)
        return PARSE_AGAIN;
    if (i == t || b[i] != ' ')
        return -400;
    req->target = b + t;
    req->target_len = i - t;
    if (req->target[0] == '*') {
        /* asterisk-form exists only for a server-wide OPTIONS */
        if (req->target_len != 1 || req->method != BH_HTTP_OPTIONS)
            return -400;
    } else if (req->target[0] != '/') {
        return -400;
    }
    req->path = req->target;
    req->path_len = req->target_len;
    q = memchr(req->target, '?', req->target_len);
    if (q != NULL) {
        req->path_len = (size_t)(q - req->target);
        req->query = q + 1;
        req->query_len = req->target_len - req->path_len - 1;
    }

    i++;
    r = parse_version(b, n, &i, &req->minor_version);
    if (r <= 0)
        return r;
    return (long)i;
}

/* Header lines up to and including the empty line, from b[start]. Returns the head length (> 0),
 * PARSE_AGAIN, or -status. */
static long parse_headers(const char *b, size_t n, size_t start, bh_http_request_t *req) {
    size_t i = start, name, name_len, value, end;

    for (;;) {
        if (i == n)
            return PARSE_AGAIN;
        if (b[i] == '\r') {
            if (i + 1 == n)
                return PARSE_AGAIN;
            if (b[i + 1] != '\n')
                return -400;
            return (long)(i + 2);
        }
        if (req->nheaders == BH_HTTP_MAX_HEADERS)
            return -431;
        /* an empty name also catches a line starting with whitespace: obs-fold is refused
         * (RFC 9112 5.2), as is whitespace between name and colon (smuggling vector) */
        name = i;
        while (i < n && is_tchar((unsigned char)b[i]))
            i++;
        if (i == n)
            return PARSE_AGAIN;
        if (i == name || b[i] != ':')
            return -400;
        name_len = i - name;
        i++;
        while (i < n && is_ows(b[i]))
            i++;
        value = i;
        while (i < n && is_value_char((unsigned char)b[i]))
            i++;
        if (i == n)
            return PARSE_AGAIN;
        if (b[i] != '\r')
            return -400;
        if (i + 1 == n)
            return PARSE_AGAIN;
        if (b[i + 1] != '\n')
            return -400;
        end = i;
        while (end > value && is_ows(b[end - 1]))
            end--;
        req->headers[req->nheaders].name = b + name;
        req->headers[req->nheaders].name_len = name_len;
        req->headers[req->nheaders].value = b + value;
        req->headers[req->nheaders].value_len = end - value;
        req->nheaders++;
        i += 2;
    }
}

/* Content-Length = 1*DIGIT; anything else (sign, list, spaces) is refused. */
static int parse_content_length(const char *v, size_t n, uint64_t *out) {
    uint64_t x = 0;
    size_t i;

    if (n == 0)
        return BH_EINVAL;
    for (i = 0; i < n; i++) {
        unsigned d;
        if (v[i] < '0' || v[i] > '9')
            return BH_EINVAL;
        d = (unsigned)(v[i] - '0');
        if (x > (UINT64_MAX - d) / 10)
            return BH_ERANGE;
        x = x * 10 + d;
    }
    *out = x;
    return BH_OK;
}

/* Sets *close_tok, *keep_tok, *upgrade_tok for the tokens of one Connection field value. */
static void scan_connection(const char *v, size_t n, int *close_tok, int *keep_tok,
                            int *upgrade_tok) {
    size_t i = 0;

    while (i < n) {
        size_t s, e;
        while (i < n && (is_ows(v[i]) || v[i] == ','))
            i++;
        s = i;
        while (i < n && v[i] != ',')
            i++;
        e = i;
        while (e > s && is_ows(v[e - 1]))
            e--;
        if (eq_ci(v + s, e - s, "close"))
            *close_tok = 1;
        else if (eq_ci(v + s, e - s, "keep-alive"))
            *keep_tok = 1;
        else if (eq_ci(v + s, e - s, "upgrade"))
            *upgrade_tok = 1;
    }
}

/* Header semantics once the head is complete. Returns BH_OK or -status. */
static int apply_headers(bh_http_request_t *req) {
    int close_tok = 0, keep_tok = 0, upgrade_tok = 0, ws_upgrade = 0, have_cl = 0;
    size_t k;

    for (k = 0; k < req->nheaders; k++) {
        const bh_http_header_t *h = &req->headers[k];
        if (eq_ci(h->name, h->name_len, "content-length")) {
            uint64_t cl;
            if (parse_content_length(h->value, h->value_len, &cl) != BH_OK)
                return -400;
            if (have_cl && cl != req->content_length)
                return -400;
            req->content_length = cl;
            have_cl = 1;
        } else if (eq_ci(h->name, h->name_len, "transfer-encoding")) {
            return -501;
        } else if (eq_ci(h->name, h->name_len, "connection")) {
            scan_connection(h->value, h->value_len, &close_tok, &keep_tok, &upgrade_tok);
        } else if (eq_ci(h->name, h->name_len, "upgrade")) {
            if (eq_ci(h->value, h->value_len, "websocket"))
                ws_upgrade = 1;
        }
    }
    if (req->minor_version == 1)
        req->keep_alive = !close_tok;
    else
        req->keep_alive = keep_tok && !close_tok;
    req->upgrade_websocket = ws_upgrade && upgrade_tok;
    return BH_OK;
}

int bh_http_parse_request(const char *buf, size_t len, size_t max_head, bh_http_request_t *req,
                          int *status) {
    size_t n = len < max_head ? len : max_head;
    long r;

    req->method = BH_HTTP_OTHER;
    req->method_str = req->target = req->path = req->query = NULL;
    req->method_len = req->target_len = req->path_len = req->query_len = 0;
    req->minor_version = 0;
    req->nheaders = 0;
    req->head_len = 0;
    req->content_length = 0;
    req->keep_alive = 0;
    req->upgrade_websocket = 0;
    *status = 0;

    r = parse_request_line(buf, n, req);
    if (r > 0)
        r = parse_headers(buf, n, (size_t)r, req);
    if (r == PARSE_AGAIN) {
        /* Within max_head nothing was wrong but the head did not end: too big once the
         * caller has max_head bytes, otherwise wait for more. */
        if (len >= max_head) {
            *status = 431;
            return BH_ETOOBIG;
        }
        return BH_EAGAIN;
    }
    if (r > INT_MAX)
        r = -431;
    if (r > 0) {
        req->head_len = (size_t)r;
        r = apply_headers(req);
        if (r == BH_OK)
            return (int)req->head_len;
    }
    *status = (int)-r;
    switch (*status) {
    case 431:
        return BH_ETOOBIG;
    case 501:
    case 505:
        return BH_EPROTO;
    default:
        return BH_EINVAL;
    }
}

const char *bh_http_header(const bh_http_request_t *req, const char *name, size_t *len) {
    size_t k;

    for (k = 0; k < req->nheaders; k++) {
        if (eq_ci(req->headers[k].name, req->headers[k].name_len, name)) {
            if (len != NULL)
                *len = req->headers[k].value_len;
            return req->headers[k].value;
        }
    }
    if (len != NULL)
        *len = 0;
    return NULL;
}

/* Decode one byte of a form-encoded run at s[*i] (advancing *i). Returns the byte (0..255) or
 * BH_EINVAL for a truncated or non-hex escape. */
static int decode_byte(const char *s, size_t n, size_t *i) {
    char c = s[*i];
    int hi, lo;

    if (c == '+') {
        (*i)++;
        return ' ';
    }
    if (c != '%') {
        (*i)++;
        return (unsigned char)c;
    }
    if (n - *i < 3)
        return BH_EINVAL;
    hi = bh_hex_digit(s[*i + 1]);
    lo = bh_hex_digit(s[*i + 2]);
    if (hi < 0 || lo < 0)
        return BH_EINVAL;
    *i += 3;
    return hi * 16 + lo;
}

/* 1 when the encoded s[0..n) decodes to exactly name, 0 when not, BH_EINVAL on a bad escape. */
static int name_matches(const char *s, size_t n, const char *name) {
    size_t i = 0, k = 0;
    int match = 1;

    while (i < n) {
        int c = decode_byte(s, n, &i);
        if (c < 0)
            return c;
        if (match && (name[k] == '\0' || (unsigned char)name[k] != c))
            match = 0;
        if (match)
            k++;
    }
    return match && name[k] == '\0';
}

int bh_http_query_param(const char *query, size_t query_len, const char *name, char *out,
                        size_t outcap) {
    size_t pos = 0;

    if (query == NULL)
        return BH_ENOTFOUND;
    while (pos <= query_len) {
        const char *pair = query + pos, *amp, *eq;
        size_t pair_len, name_len;
        int m;

        amp = memchr(pair, '&', query_len - pos);
        pair_len = amp ? (size_t)(amp - pair) : query_len - pos;
        eq = memchr(pair, '=', pair_len);
        name_len = eq ? (size_t)(eq - pair) : pair_len;
        m = name_matches(pair, name_len, name);
        if (m < 0)
            return m;
        if (m) {
            const char *v = eq ? eq + 1 : pair + pair_len;
            size_t vlen = (size_t)(pair + pair_len - v), i = 0, o = 0;
            while (i < vlen) {
                int c = decode_byte(v, vlen, &i);
                if (c < 0)
                    return c;
                /* a decoded NUL would silently truncate the C string the caller gets */
                if (c == 0)
                    return BH_EINVAL;
                if (o + 1 >= outcap || o >= INT_MAX)
                    return BH_ETOOBIG;
                out[o++] = (char)c;
            }
            if (outcap == 0)
                return BH_ETOOBIG;
            out[o] = '\0';
            return (int)o;
        }
        pos += pair_len + 1;
    }
    return BH_ENOTFOUND;
}

const char *bh_http_reason(int status) {
    switch (status) {
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Content Too Large";
    case 422:
        return "Unprocessable Content";
    case 426:
        return "Upgrade Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

int bh_http_write_response(bh_buf_t *out, int status, const char *ctype, const char *extra,
                           const char *body, size_t body_len, int keep_alive) {
    /* RFC 9110 8.6: no Content-Length on 1xx, 204 and 304, which never carry a body */
    int no_body = status < 200 || status == 204 || status == 304;
    size_t mark = out->len, elen = extra ? strlen(extra) : 0;
    int r;

    if (status < 100 || status > 599 || (no_body && body_len > 0) || (body_len > 0 && body == NULL))
        return BH_EINVAL;
    if (ctype != NULL && strpbrk(ctype, "\r\n") != NULL)
        return BH_EINVAL;
    if (elen > 0 && (elen < 2 || memcmp(extra + elen - 2, "\r\n", 2) != 0))
        return BH_EINVAL;

    r = bh_buf_printf(out, "HTTP/1.1 %d %s\r\n", status, bh_http_reason(status));
    if (r == BH_OK && ctype != NULL)
        r = bh_buf_printf(out, "Content-Type: %s\r\n", ctype);
    if (r == BH_OK && !no_body)
        r = bh_buf_printf(out, "Content-Length: %zu\r\n", body_len);
    /* a 101 hands the connection to another protocol, "close" would contradict it */
    if (r == BH_OK && !keep_alive && status >= 200)
        r = bh_buf_appends(out, "Connection: close\r\n");
    if (r == BH_OK && elen > 0)
        r = bh_buf_append(out, extra, elen);
    if (r == BH_OK)
        r = bh_buf_append(out, "\r\n", 2);
    if (r == BH_OK && body_len > 0)
        r = bh_buf_append(out, body, body_len);
    if (r != BH_OK) {
        /* all or nothing: a half-written response would corrupt the stream */
        out->len = mark;
        if (out->cap > 0)
            out->data[mark] = '\0';
    }
    return r;
}
