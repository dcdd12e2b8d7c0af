/* The API tester page's files, served from the table that tools/embed generates at build time.
 * Revalidation by ETag keeps reloads cheap; the CSP allows only the page's own scripts, styles
 * and connections, so a key typed into the page cannot be sent anywhere else by injected code. */
#include "static.h"

#include <stdio.h>
#include <string.h>

#include "../base/error.h"

const bh_static_asset_t *bh_static_find(const char *path, size_t len) {
    if (len == 1 && path[0] == '/') {
        path = "/index.html";
        len = strlen(path);
    }
    for (size_t i = 0; i < bh_static_nassets; i++) {
        const bh_static_asset_t *a = &bh_static_assets[i];
        if (strlen(a->path) == len && memcmp(a->path, path, len) == 0)
            return a;
    }
    return NULL;
}

static int is_ows(char c) {
    return c == ' ' || c == '\t';
}

/* etagc = %x21 / %x23-7E / obs-text (RFC 9110 8.8.3) */
static int is_etagc(unsigned char c) {
    return c == 0x21 || (c >= 0x23 && c != 0x7f);
}

int bh_static_etag_match(const char *inm, size_t len, const char *etag) {
    size_t elen = strlen(etag), i = 0;
    /* Compare the opaque tags: ours is always strong, a W/ on theirs is ignored (weak match). */
    if (elen < 2 || etag[0] != '"' || etag[elen - 1] != '"')
        return 0;
    for (;;) {
        while (i < len && (is_ows(inm[i]) || inm[i] == ','))
            i++;
        if (i == len)
            return 0;
        if (inm[i] == '*')
            return 1;
        if (len - i >= 2 && inm[i] == 'W' && inm[i + 1] == '/')
            i += 2;
        if (i == len || inm[i] != '"')
            return 0;
        size_t start = i++;
        while (i < len && inm[i] != '"') {
            if (!is_etagc((unsigned char)inm[i]))
                return 0;
            i++;
        }
        if (i == len)
            return 0; /* unterminated */
        i++;
        if (i - start == elen && memcmp(inm + start, etag, elen) == 0)
            return 1;
        while (i < len && is_ows(inm[i]))
            i++;
        if (i < len && inm[i] != ',')
            return 0;
    }
}

/* Host = uri-host [ ":" port ]: letters, digits, '.', '-', ':' and IPv6 brackets. Anything
 * else (spaces, ';', quotes) could add directives to the policy, so it is left out. */
static int host_ok(const char *host, size_t len) {
    if (!host || len == 0 || len > 255)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = host[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == ':' || c == '[' || c == ']'))
            return 0;
    }
    return 1;
}

int bh_static_csp(const char *host, size_t host_len, char *out, size_t cap) {
    int n;
    if (host_ok(host, host_len))
        n = snprintf(
            out, cap,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self' ws://%.*s wss://%.*s; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'",
            (int)host_len, host, (int)host_len, host);
    else
        n = snprintf(
            out, cap,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'");
    if (n < 0 || (size_t)n >= cap)
        return BH_ETOOBIG;
    return n;
}

int bh_static_handle(bh_http_conn_t *hc, const bh_http_request_t *req) {
    const bh_static_asset_t *a = bh_static_find(req->path, req->path_len);
    if (!a)
        return 0;
    if (req->method != BH_HTTP_GET && req->method != BH_HTTP_HEAD) {
        static const char body[] = "{\"error\":\"method not allowed: use GET\"}";
        bh_http_respond(hc, 405, "application/json", "Allow: GET, HEAD\r\n", body, sizeof body - 1);
        return 1;
    }
    size_t hlen = 0, ilen = 0;
    const char *host = bh_http_header(req, "Host", &hlen);
    char csp[768], extra[1280];
    if (bh_static_csp(host, hlen, csp, sizeof csp) < 0)
        bh_static_csp(NULL, 0, csp, sizeof csp);
    /* no-cache: the paths carry no version, so every use revalidates (cheap: 304 by ETag). */
    snprintf(extra, sizeof extra,
             "Cache-Control: no-cache\r\n"
             "ETag: %s\r\n"
             "Content-Security-Policy: %s\r\n"
             "X-Content-Type-Options: nosniff\r\n"
             "Referrer-Policy: no-referrer\r\n"
             "X-Frame-Options: DENY\r\n",
             a->etag, csp);
    const char *inm = bh_http_header(req, "If-None-Match", &ilen);
    if (inm && bh_static_etag_match(inm, ilen, a->etag)) {
        bh_http_respond(hc, 304, NULL, extra, NULL, 0);
        return 1;
    }
    /* For HEAD the HTTP layer sends these headers (with the real length) and no body. */
    bh_http_respond(hc, 200, a->content_type, extra, (const char *)a->data, a->len);
    return 1;
}
