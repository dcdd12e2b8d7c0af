/* /healthz, /readyz and /metrics: small fixed answers, no authentication. The metrics carry
 * counts only (never a key or a user), and are served only where the caller allows them (the
 * operations listener). */
#include "ops.h"

#include <string.h>

#include "../base/buf.h"
#include "../base/error.h"
#include "../base/metrics.h"

#define TEXT "text/plain; charset=utf-8"
/* The exposition format's own media type (Prometheus text format 0.0.4). */
#define METRICS_TYPE "text/plain; version=0.0.4; charset=utf-8"
/* Health answers describe this moment: no cache may keep them. */
#define NO_STORE "Cache-Control: no-store\r\n"

static int path_is(const bh_http_request_t *req, const char *path) {
    size_t n = strlen(path);
    return req->path_len == n && memcmp(req->path, path, n) == 0;
}

static void respond_text(bh_http_conn_t *hc, int status, const char *text) {
    bh_http_respond(hc, status, TEXT, NO_STORE, text, strlen(text));
}

static void respond_metrics(bh_ledger_t *l, bh_http_conn_t *hc) {
    bh_buf_t b;
    bh_buf_init(&b, 0);
    if (bh_metrics_render(&b, bh_ledger_ready(l)) == BH_OK)
        bh_http_respond(hc, 200, METRICS_TYPE, NO_STORE, b.data, b.len);
    else
        bh_http_respond_error(hc, 500, "out of memory");
    bh_buf_free(&b);
}

int bh_cli_ops_handle(bh_ledger_t *l, int metrics_allowed, bh_http_conn_t *hc,
                      const bh_http_request_t *req) {
    enum { HEALTHZ, READYZ, METRICS } which;
    if (path_is(req, "/healthz"))
        which = HEALTHZ;
    else if (path_is(req, "/readyz"))
        which = READYZ;
    else if (metrics_allowed && path_is(req, "/metrics"))
        which = METRICS;
    else
        return 0;
    if (req->method != BH_HTTP_GET && req->method != BH_HTTP_HEAD) {
        bh_http_respond(hc, 405, TEXT, "Allow: GET, HEAD\r\n", "Method Not Allowed", 18);
        return 1;
    }
    switch (which) {
    case HEALTHZ:
        respond_text(hc, 200, "ok");
        break;
    case READYZ:
        if (bh_ledger_ready(l))
            respond_text(hc, 200, "ready");
        else
            respond_text(hc, 503, "store unavailable");
        break;
    case METRICS:
        respond_metrics(l, hc);
        break;
    }
    return 1;
}
