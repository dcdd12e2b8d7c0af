/* The API tester page's static files, embedded in the binary at build time (tools/embed writes
 * the table from web/ and the SignalR browser bundles): GET/HEAD with ETag revalidation and a
 * strict Content-Security-Policy. */
#ifndef BH_HTTP_STATIC_H
#define BH_HTTP_STATIC_H

#include <stddef.h>

#include "http.h"
#include "server.h"

typedef struct {
    const char *path;         /* URL path, "/app.js" */
    const char *content_type; /* full header value, "text/javascript; charset=utf-8" */
    const char *etag;         /* strong validator with its quotes, "\"0123456789abcdef\"" */
    const unsigned char *data;
    size_t len;
} bh_static_asset_t;

/* The generated table (build/gen/web_assets.c). */
extern const bh_static_asset_t bh_static_assets[];
extern const size_t bh_static_nassets;

/* The asset served at path (not NUL-terminated; "/" is "/index.html"), or NULL. */
const bh_static_asset_t *bh_static_find(const char *path, size_t len);

/* 1 when an If-None-Match value (a comma-separated list of entity tags, or "*") matches etag
 * by the weak comparison of RFC 9110 13.1.2, else 0 (also for a malformed value). */
int bh_static_etag_match(const char *inm, size_t len, const char *etag);

/* The Content-Security-Policy value for a page fetched with this Host header (may be NULL):
 * scripts, styles and images from the page's origin only, connections to the origin and to
 * ws:// and wss:// on the same host; a Host with unexpected characters gets 'self' alone.
 * Returns the length written (NUL-terminated), or BH_ETOOBIG when cap is too small. */
int bh_static_csp(const char *host, size_t host_len, char *out, size_t cap);

/* Answer a request for one of the page's files: returns 1 when the path is one of them
 * (answered: 200, 304 or 405), 0 when it is not (the caller answers). */
int bh_static_handle(bh_http_conn_t *hc, const bh_http_request_t *req);

#endif
