/* The client's HTTP/1.1: the two requests it makes (negotiate, WebSocket upgrade), a response
 * parser (status, the few headers that matter, Content-Length / chunked / until-close bodies)
 * and the negotiate response reader. A codec: bytes in, structures out. The parser is
 * stateless (it parses from the start on every call) because responses are small and it keeps
 * every prefix of the input trivially correct. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../base/hex.h"
#include "../base/error.h"
#include "internal.h"

#define USER_AGENT "libbalancehub/" BH_CLIENT_VERSION

/* ---- requests ---- */

static int put_host(bh_buf_t *b, const bh_cl_url_t *u) {
    int r = bh_buf_printf(b, "Host: %s%s%s", u->ipv6 ? "[" : "", u->host, u->ipv6 ? "]" : "");
    if (r == BH_OK && u->port != (u->tls ? 443u : 80u))
        r = bh_buf_printf(b, ":%u", u->port);
    return r == BH_OK ? bh_buf_appends(b, "\r\n") : r;
}

int bh_cl_http_negotiate_request(bh_buf_t *b, const bh_cl_url_t *u, const char *token) {
    int r = bh_buf_printf(b, "POST %s/negotiate?%s%snegotiateVersion=1 HTTP/1.1\r\n", u->path,
                          u->query ? u->query : "", u->query ? "&" : "");
    if (r == BH_OK)
        r = put_host(b, u);
    if (r == BH_OK && token)
        r = bh_buf_printf(b, "Authorization: Bearer %s\r\n", token);
    if (r == BH_OK)
        r = bh_buf_appends(b, "User-Agent: " USER_AGENT "\r\nX-SignalR-User-Agent: " USER_AGENT
                              "\r\nAccept: application/json\r\nContent-Length: 0\r\n\r\n");
    return r;
}

int bh_cl_http_upgrade_request(bh_buf_t *b, const bh_cl_url_t *u, const char *conn_token,
                               const char *token, const char *ws_key) {
    const char *sep = "?";
    int r = bh_buf_printf(b, "GET %s", u->path[0] ? u->path : "/");

    if (r == BH_OK && u->query) {
        r = bh_buf_printf(b, "?%s", u->query);
        sep = "&";
    }
    if (r == BH_OK && conn_token) {
        r = bh_buf_printf(b, "%sid=", sep);
        if (r == BH_OK)
            r = bh_cl_url_encode(b, conn_token);
        sep = "&";
    }
    if (r == BH_OK && token) {
        r = bh_buf_printf(b, "%saccess_token=", sep);
        if (r == BH_OK)
            r = bh_cl_url_encode(b, token);
    }
    if (r == BH_OK)
        r = bh_buf_appends(b, " HTTP/1.1\r\n");
    if (r == BH_OK)
        r = put_host(b, u);
    if (r == BH_OK)
        r = bh_buf_printf(b,
                          "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                          "Sec-WebSocket-Version: 13\r\nUser-Agent: " USER_AGENT "\r\n",
                          ws_key);
    if (r == BH_OK && token)
        r = bh_buf_printf(b, "Authorization: Bearer %s\r\n", token);
    if (r == BH_OK)
        r = bh_buf_appends(b, "\r\n");
    return r;
}

/* ---- response ---- */

/* One line from s[*pos..len): [*line, *line_len) without CRLF / LF. 0 when incomplete. */
static int next_line(const char *s, size_t len, size_t *pos, const char **line, size_t *line_len) {
    const char *nl = *pos < len ? memchr(s + *pos, '\n', len - *pos) : NULL;
    size_t n;

    if (nl == NULL)
        return 0;
    n = (size_t)(nl - (s + *pos));
    *line = s + *pos;
    *line_len = n > 0 && (*line)[n - 1] == '\r' ? n - 1 : n;
    *pos += n + 1;
    return 1;
}

static int is_tchar(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Does the comma-separated list v[0..n) hold token (case-insensitive)? */
static int has_token(const char *v, size_t n, const char *token) {
    size_t tl = strlen(token), i = 0;

    while (i < n) {
        size_t start, end;
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        start = i;
        while (i < n && v[i] != ',')
            i++;
        end = i;
        while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t'))
            end--;
        if (end - start == tl && strncasecmp(v + start, token, tl) == 0)
            return 1;
    }
    return 0;
}

static int name_is(const char *name, size_t n, const char *want) {
    return strlen(want) == n && strncasecmp(name, want, n) == 0;
}

typedef struct {
    long long content_length; /* -1 when absent */
    int chunked, conn_close, conn_keep_alive;
} framing_t;

static int parse_header(const char *line, size_t n, bh_cl_http_res_t *res, framing_t *f) {
    const char *colon = memchr(line, ':', n), *v;
    size_t nl, vl;

    if (colon == NULL || colon == line)
        return BH_EINVAL;
    nl = (size_t)(colon - line);
    for (size_t i = 0; i < nl; i++)
        if (!is_tchar((unsigned char)line[i]))
            return BH_EINVAL;
    v = colon + 1;
    vl = n - nl - 1;
    while (vl > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        vl--;
    }
    while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
        vl--;
    for (size_t i = 0; i < vl; i++)
        if ((unsigned char)v[i] < 0x20 && v[i] != '\t')
            return BH_EINVAL;
    if (name_is(line, nl, "Content-Length")) {
        long long cl = 0;
        if (vl == 0 || vl > 15)
            return BH_EINVAL;
        for (size_t i = 0; i < vl; i++) {
            if (v[i] < '0' || v[i] > '9')
                return BH_EINVAL;
            cl = cl * 10 + (v[i] - '0');
        }
        if (f->content_length >= 0 && f->content_length != cl)
            return BH_EINVAL; /* conflicting lengths: the framing cannot be trusted */
        f->content_length = cl;
    } else if (name_is(line, nl, "Transfer-Encoding")) {
        /* any coding but chunked alone (gzip, ...) is one we cannot decode */
        if (!name_is(v, vl, "chunked"))
            return BH_EINVAL;
        f->chunked = 1;
    } else if (name_is(line, nl, "Connection")) {
        f->conn_close |= has_token(v, vl, "close");
        f->conn_keep_alive |= has_token(v, vl, "keep-alive");
        res->connection_upgrade |= has_token(v, vl, "upgrade");
    } else if (name_is(line, nl, "Upgrade")) {
        res->upgrade_websocket |= has_token(v, vl, "websocket");
    } else if (name_is(line, nl, "Sec-WebSocket-Accept")) {
        if (vl < sizeof(res->accept)) {
            memcpy(res->accept, v, vl);
            res->accept[vl] = '\0';
        }
    }
    return BH_OK;
}

/* Decode a chunked body from s[*pos..len) into res->body. */
static int parse_chunked(const char *s, size_t len, size_t *pos, bh_cl_http_res_t *res) {
    const char *line;
    size_t n;

    for (;;) {
        size_t size = 0, i = 0;
        if (!next_line(s, len, pos, &line, &n))
            return BH_EAGAIN;
        for (; i < n && bh_hex_digit(line[i]) >= 0; i++) {
            if (size > BH_CL_HTTP_MAX_BODY)
                return BH_ETOOBIG;
            size = size * 16 + (size_t)bh_hex_digit(line[i]);
        }
        if (i == 0 || (i < n && line[i] != ';' && line[i] != ' ' && line[i] != '\t'))
            return BH_EINVAL;
        if (size == 0)
            break;
        if (res->body.len + size > BH_CL_HTTP_MAX_BODY)
            return BH_ETOOBIG;
        if (len - *pos < size + 1)
            return BH_EAGAIN;
        if (bh_buf_append(&res->body, s + *pos, size) != BH_OK)
            return BH_ENOMEM;
        *pos += size;
        if (!next_line(s, len, pos, &line, &n))
            return BH_EAGAIN;
        if (n != 0)
            return BH_EINVAL;
    }
    /* trailer fields, then the empty line */
    for (;;) {
        if (!next_line(s, len, pos, &line, &n))
            return BH_EAGAIN;
        if (n == 0)
            return BH_OK;
        if (*pos > BH_CL_HTTP_MAX_BODY + BH_CL_HTTP_MAX_HEAD)
            return BH_ETOOBIG;
    }
}

static int parse_response(const char *s, size_t len, int eof, bh_cl_http_res_t *res, size_t *used) {
    framing_t f = {-1, 0, 0, 0};
    size_t pos = 0, n;
    const char *line;
    int r;

    /* status line: HTTP/1.x SSS[ reason] */
    if (!next_line(s, len, &pos, &line, &n))
        return len > BH_CL_HTTP_MAX_HEAD ? BH_ETOOBIG : BH_EAGAIN;
    if (n < 12 || memcmp(line, "HTTP/1.", 7) != 0 || line[7] < '0' || line[7] > '9' ||
        line[8] != ' ' || line[9] < '1' || line[9] > '9' || line[10] < '0' || line[10] > '9' ||
        line[11] < '0' || line[11] > '9' || (n > 12 && line[12] != ' '))
        return BH_EINVAL;
    res->minor = line[7] - '0';
    res->status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
    for (size_t i = 13, k = 0; i < n && k + 1 < sizeof(res->reason); i++)
        if ((unsigned char)line[i] >= 0x20 && line[i] != 0x7f)
            res->reason[k++] = line[i];
    for (;;) {
        if (!next_line(s, len, &pos, &line, &n))
            return len > BH_CL_HTTP_MAX_HEAD ? BH_ETOOBIG : BH_EAGAIN;
        if (pos > BH_CL_HTTP_MAX_HEAD)
            return BH_ETOOBIG;
        if (n == 0)
            break;
        if (line[0] == ' ' || line[0] == '\t')
            return BH_EINVAL; /* obsolete line folding */
        if ((r = parse_header(line, n, res, &f)) != BH_OK)
            return r;
    }
    res->keep_alive = res->minor >= 1 ? !f.conn_close : f.conn_keep_alive && !f.conn_close;
    if (res->status < 200 || res->status == 204 || res->status == 304) {
        *used = pos; /* no body; after a 101 the bytes belong to the WebSocket */
        return BH_OK;
    }
    if (f.chunked) {
        if ((r = parse_chunked(s, len, &pos, res)) != BH_OK)
            return r;
        *used = pos;
        return BH_OK;
    }
    if (f.content_length >= 0) {
        if (f.content_length > BH_CL_HTTP_MAX_BODY)
            return BH_ETOOBIG;
        if (len - pos < (size_t)f.content_length)
            return BH_EAGAIN;
        if (bh_buf_append(&res->body, s + pos, (size_t)f.content_length) != BH_OK)
            return BH_ENOMEM;
        *used = pos + (size_t)f.content_length;
        return BH_OK;
    }
    /* neither: the body runs until the server closes the connection */
    if (len - pos > BH_CL_HTTP_MAX_BODY)
        return BH_ETOOBIG;
    if (!eof)
        return BH_EAGAIN;
    if (bh_buf_append(&res->body, s + pos, len - pos) != BH_OK)
        return BH_ENOMEM;
    res->keep_alive = 0;
    *used = len;
    return BH_OK;
}

int bh_cl_http_parse(const char *in, size_t len, int eof, bh_cl_http_res_t *res, size_t *used) {
    int r;

    memset(res, 0, sizeof(*res));
    bh_buf_init(&res->body, BH_CL_HTTP_MAX_BODY);
    *used = 0;
    r = parse_response(in, len, eof, res, used);
    if (r == BH_EAGAIN && eof)
        r = BH_EINVAL; /* the connection closed in the middle of the response */
    if (r != BH_OK) {
        bh_buf_free(&res->body);
        *used = 0;
    }
    return r;
}

/* ---- negotiate ---- */

void bh_cl_negotiate_free(bh_cl_negotiate_t *n) {
    free(n->conn_token);
    free(n->redirect_url);
    free(n->access_token);
    free(n->error);
    memset(n, 0, sizeof(*n));
}

static const char *str_member(const bh_json_t *obj, const char *name, int *bad) {
    const bh_json_t *v = bh_json_get(obj, name);

    if (v == NULL || v->type == BH_JSON_NULL)
        return NULL;
    if (v->type != BH_JSON_STRING) {
        *bad = 1;
        return NULL;
    }
    return v->str;
}

/* Is there a WebSockets transport with the transfer format we need? */
static int offers_websockets(const bh_json_t *transports, int binary) {
    for (const bh_json_t *t = transports->child; t; t = t->next) {
        const bh_json_t *name = bh_json_get(t, "transport");
        const bh_json_t *formats = bh_json_get(t, "transferFormats");
        if (!name || name->type != BH_JSON_STRING || strcmp(name->str, "WebSockets") != 0 ||
            !formats || formats->type != BH_JSON_ARRAY)
            continue;
        for (const bh_json_t *f = formats->child; f; f = f->next)
            if (f->type == BH_JSON_STRING && strcmp(f->str, binary ? "Binary" : "Text") == 0)
                return 1;
    }
    return 0;
}

int bh_cl_negotiate_parse(const char *body, size_t len, int binary, bh_cl_negotiate_t *out,
                          const char **err) {
    bh_json_doc_t *doc = NULL;
    const bh_json_t *root, *transports, *version;
    const char *s, *at;
    int64_t v = 0;
    int bad = 0, r = BH_EINVAL;

    memset(out, 0, sizeof(*out));
    if (bh_json_parse(body, len, 16, &doc) != BH_OK ||
        (root = bh_json_root(doc))->type != BH_JSON_OBJECT) {
        *err = "the negotiate response is not a JSON object";
        goto done;
    }
    if ((s = str_member(root, "error", &bad)) != NULL) {
        r = (out->error = strdup(s)) ? BH_OK : BH_ENOMEM;
        goto done;
    }
    if ((s = str_member(root, "url", &bad)) != NULL) {
        at = str_member(root, "accessToken", &bad);
        if (bad)
            *err = "the negotiate response has a non-string accessToken";
        else if (!(out->redirect_url = strdup(s)) || (at && !(out->access_token = strdup(at))))
            r = BH_ENOMEM;
        else
            r = BH_OK;
        goto done;
    }
    version = bh_json_get(root, "negotiateVersion");
    if (version && (bh_json_int(version, &v) != BH_OK || v < 0)) {
        *err = "the negotiate response has a bad negotiateVersion";
        goto done;
    }
    s = str_member(root, v >= 1 ? "connectionToken" : "connectionId", &bad);
    if (bad || s == NULL || *s == '\0') {
        *err = v >= 1 ? "the negotiate response has no connectionToken"
                      : "the negotiate response has no connectionId";
        goto done;
    }
    transports = bh_json_get(root, "availableTransports");
    if (!transports || transports->type != BH_JSON_ARRAY ||
        !offers_websockets(transports, binary)) {
        *err = binary ? "the server offers no WebSockets transport with binary frames "
                        "(needed by MessagePack)"
                      : "the server offers no WebSockets transport";
        goto done;
    }
    r = (out->conn_token = strdup(s)) ? BH_OK : BH_ENOMEM;
done:
    if (r == BH_ENOMEM)
        *err = "out of memory";
    if (r != BH_OK)
        bh_cl_negotiate_free(out);
    bh_json_free(doc);
    return r;
}
