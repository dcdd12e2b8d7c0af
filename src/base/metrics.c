/* Process-wide metrics: one relaxed atomic per series, a static table naming each series (family,
 * type, help, fixed labels), the ledger commit-latency histogram, and the Prometheus text
 * exposition format (0.0.4) renderer behind GET /metrics. */
#include "metrics.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "error.h"

typedef struct {
    const char *family;
    const char *type; /* "counter" or "gauge" */
    const char *help;
    const char *labels; /* the text between the braces, or NULL */
} metric_def_t;

#define HUB_CONN "bh_hub_connections", "gauge", "Open hub connections by transport and protocol."
#define HUB_INVOKE                                                                                 \
    "bh_hub_invocations_total", "counter", "Hub method invocations by method and outcome."
#define HUB_EVENT "bh_hub_events_total", "counter", "Hub events pushed to clients by subject."
#define LIMIT                                                                                      \
    "bh_limit_rejections_total", "counter",                                                        \
        "Requests, connections or commands refused or "                                            \
        "closed by a limit."
#define LEDGER_OPS                                                                                 \
    "bh_ledger_ops_total", "counter",                                                              \
        "Ledger operations answered, by outcome (rejected: rules, "                                \
        "limits, funds or bad input; failed: the store or memory)."

/* Series of one family are adjacent in the enum, so families render as contiguous groups. */
static const metric_def_t defs[BH_M_COUNT] = {
    [BH_M_TCP_ACCEPTED] = {"bh_tcp_connections_accepted_total", "counter",
                           "TCP connections accepted on every listener.", NULL},
    [BH_M_TCP_OPEN] = {"bh_tcp_connections", "gauge", "Open TCP connections on every listener.",
                       NULL},
    [BH_M_BYTES_IN] = {"bh_bytes_received_total", "counter",
                       "Bytes received from clients (plaintext with TLS).", NULL},
    [BH_M_BYTES_OUT] = {"bh_bytes_sent_total", "counter",
                        "Bytes handed to the socket for clients (plaintext with TLS).", NULL},
    [BH_M_TLS_HANDSHAKE_ERR] = {"bh_tls_handshake_failures_total", "counter",
                                "TLS handshakes that failed or did not finish in time.", NULL},
    [BH_M_MIGRATIONS] = {"bh_connection_migrations_total", "counter",
                         "Connections moved to another I/O thread before their request was "
                         "handled.",
                         NULL},
    [BH_M_HTTP_REQUESTS] = {"bh_http_requests_total", "counter",
                            "HTTP requests handled or refused by the HTTP layer.", NULL},
    [BH_M_CONN_WS_JSON] = {HUB_CONN, "transport=\"websockets\",protocol=\"json\""},
    [BH_M_CONN_WS_MSGPACK] = {HUB_CONN, "transport=\"websockets\",protocol=\"messagepack\""},
    [BH_M_CONN_SSE_JSON] = {HUB_CONN, "transport=\"serversentevents\",protocol=\"json\""},
    [BH_M_CONN_LP_JSON] = {HUB_CONN, "transport=\"longpolling\",protocol=\"json\""},
    [BH_M_CONN_LP_MSGPACK] = {HUB_CONN, "transport=\"longpolling\",protocol=\"messagepack\""},
    [BH_M_INVOKE_GETBALANCES_OK] = {HUB_INVOKE, "method=\"GetBalances\",outcome=\"ok\""},
    [BH_M_INVOKE_GETBALANCES_ERROR] = {HUB_INVOKE, "method=\"GetBalances\",outcome=\"error\""},
    [BH_M_INVOKE_UNKNOWN] = {HUB_INVOKE, "method=\"unknown\",outcome=\"error\""},
    [BH_M_EVENT_SNAPSHOT] = {HUB_EVENT, "subject=\"account.balances.snapshot\""},
    [BH_M_EVENT_UPDATE] = {HUB_EVENT, "subject=\"account.balances.update\""},
    [BH_M_EVENT_ERROR] = {HUB_EVENT, "subject=\"account.balances.error\""},
    [BH_M_EVENT_PRECHECKS] = {HUB_EVENT, "subject=\"preChecksError\""},
    [BH_M_AUTH_FAILURES] = {"bh_auth_failures_total", "counter",
                            "Requests refused for a missing, unknown or revoked API key.", NULL},
    [BH_M_LIMIT_CONNS_PER_KEY] = {LIMIT, "limit=\"connections_per_key\""},
    [BH_M_LIMIT_CONNS_TOTAL] = {LIMIT, "limit=\"connections_total\""},
    [BH_M_LIMIT_RATE] = {LIMIT, "limit=\"rate\""},
    [BH_M_LIMIT_AUTH_THROTTLE] = {LIMIT, "limit=\"auth_throttle\""},
    [BH_M_LIMIT_OUTPUT] = {LIMIT, "limit=\"output\""},
    [BH_M_LIMIT_REQUEST_SIZE] = {LIMIT, "limit=\"request_size\""},
    [BH_M_LIMIT_TIMEOUT] = {LIMIT, "limit=\"timeout\""},
    [BH_M_LEDGER_OPS_OK] = {LEDGER_OPS, "outcome=\"ok\""},
    [BH_M_LEDGER_OPS_REJECTED] = {LEDGER_OPS, "outcome=\"rejected\""},
    [BH_M_LEDGER_OPS_FAILED] = {LEDGER_OPS, "outcome=\"failed\""},
    [BH_M_LEDGER_COMMITS] = {"bh_ledger_commits_total", "counter",
                             "Ledger group commits (batches) made durable.", NULL},
    [BH_M_STORE_ERRORS] = {"bh_store_errors_total", "counter",
                           "Store operations that failed (including readiness probes).", NULL},
};

static _Atomic uint64_t values[BH_M_COUNT];

/* Commit latency: upper bounds in nanoseconds and their `le` texts (exact, not formatted from
 * a double); one more bucket for everything above the last bound (+Inf). Each counter holds
 * only its own bucket; the renderer accumulates. */
#define NBOUNDS 13
static const uint64_t bounds_ns[NBOUNDS] = {
    100000,   250000,   500000,    1000000,   2500000,   5000000,    10000000,
    25000000, 50000000, 100000000, 250000000, 500000000, 1000000000,
};
static const char *const bounds_le[NBOUNDS] = {
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01",
    "0.025",  "0.05",    "0.1",    "0.25",  "0.5",    "1",
};
static _Atomic uint64_t hist[NBOUNDS + 1];
static _Atomic uint64_t hist_sum_ns;

/* Unix time in milliseconds when the process started (0 until known). */
static _Atomic int64_t start_ms;

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Before main: the start time is the process's, not that of the first metric update. */
__attribute__((constructor)) static void record_start(void) {
    int64_t zero = 0;
    atomic_compare_exchange_strong(&start_ms, &zero, now_ms());
}

void bh_metric_add(bh_metric_t m, uint64_t n) {
    if ((unsigned)m < BH_M_COUNT)
        atomic_fetch_add_explicit(&values[m], n, memory_order_relaxed);
}

void bh_metric_gauge(bh_metric_t m, int64_t delta) {
    /* Two's complement wrap-around: adding (uint64_t)-1 subtracts one. */
    if ((unsigned)m < BH_M_COUNT)
        atomic_fetch_add_explicit(&values[m], (uint64_t)delta, memory_order_relaxed);
}

uint64_t bh_metric_get(bh_metric_t m) {
    if ((unsigned)m >= BH_M_COUNT)
        return 0;
    return atomic_load_explicit(&values[m], memory_order_relaxed);
}

void bh_metric_commit_ns(uint64_t ns) {
    size_t i = 0;
    while (i < NBOUNDS && ns > bounds_ns[i])
        i++;
    atomic_fetch_add_explicit(&hist[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&hist_sum_ns, ns, memory_order_relaxed);
}

static int family_head(bh_buf_t *out, const char *name, const char *type, const char *help) {
    return bh_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static int render_table(bh_buf_t *out) {
    int r = BH_OK;
    for (int i = 0; i < BH_M_COUNT && r == BH_OK; i++) {
        const metric_def_t *d = &defs[i];
        if (i == 0 || strcmp(d->family, defs[i - 1].family) != 0)
            r = family_head(out, d->family, d->type, d->help);
        uint64_t v = atomic_load_explicit(&values[i], memory_order_relaxed);
        const char *l = d->labels ? "{" : "", *rb = d->labels ? "}" : "";
        if (r != BH_OK)
            break;
        /* A gauge below zero would be a bug: show it as such, not as 2^64 - 1. */
        if (strcmp(d->type, "gauge") == 0)
            r = bh_buf_printf(out, "%s%s%s%s %" PRId64 "\n", d->family, l,
                              d->labels ? d->labels : "", rb, (int64_t)v);
        else
            r = bh_buf_printf(out, "%s%s%s%s %" PRIu64 "\n", d->family, l,
                              d->labels ? d->labels : "", rb, v);
    }
    return r;
}

static int render_histogram(bh_buf_t *out) {
    static const char name[] = "bh_ledger_commit_seconds";
    uint64_t cum = 0;
    int r = family_head(out, name, "histogram", "Time to make one ledger group commit durable.");
    /* Bucket lines, +Inf and _count all come from one pass over the counters, so they agree
     * even while the commit thread records. */
    for (int i = 0; i <= NBOUNDS && r == BH_OK; i++) {
        cum += atomic_load_explicit(&hist[i], memory_order_relaxed);
        r = bh_buf_printf(out, "%s_bucket{le=\"%s\"} %" PRIu64 "\n", name,
                          i < NBOUNDS ? bounds_le[i] : "+Inf", cum);
    }
    uint64_t sum = atomic_load_explicit(&hist_sum_ns, memory_order_relaxed);
    if (r == BH_OK)
        r = bh_buf_printf(out, "%s_sum %" PRIu64 ".%09" PRIu64 "\n%s_count %" PRIu64 "\n", name,
                          sum / 1000000000u, sum % 1000000000u, name, cum);
    return r;
}

int bh_metrics_render(bh_buf_t *out, int ready) {
    size_t len0 = out->len;
    int64_t start = atomic_load_explicit(&start_ms, memory_order_relaxed);
    if (start == 0) {
        record_start(); /* the constructor did not run (it always should) */
        start = atomic_load_explicit(&start_ms, memory_order_relaxed);
    }
    int r = render_table(out);
    if (r == BH_OK)
        r = render_histogram(out);
    if (r == BH_OK)
        r = family_head(out, "bh_process_start_time_seconds", "gauge",
                        "Start time of the process since the Unix epoch in seconds.");
    if (r == BH_OK)
        r = bh_buf_printf(out, "bh_process_start_time_seconds %" PRId64 ".%03d\n", start / 1000,
                          (int)(start % 1000));
    if (r == BH_OK)
        r = family_head(out, "bh_ready", "gauge",
                        "1 when the ledger's store is reachable (the last commit or probe "
                        "succeeded), else 0.");
    if (r == BH_OK)
        r = bh_buf_printf(out, "bh_ready %d\n", ready ? 1 : 0);
    if (r != BH_OK && out->cap > 0) {
        out->len = len0; /* all or nothing */
        out->data[len0] = '\0';
    }
    return r;
}
