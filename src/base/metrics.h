/* Process-wide counters, gauges and one latency histogram, updated with relaxed atomics from any
 * thread and rendered in the Prometheus text exposition format (version 0.0.4) for GET /metrics.
 * Labels are fixed enumerations, so a metric is an index into a static table: no allocation,
 * no lock, and nothing a client sends can create a new series. Never put a key in a label. */
#ifndef BH_BASE_METRICS_H
#define BH_BASE_METRICS_H

#include <stdint.h>

#include "buf.h"

typedef enum {
    /* net: TCP level */
    BH_M_TCP_ACCEPTED,      /* counter bh_tcp_connections_accepted_total */
    BH_M_TCP_OPEN,          /* gauge   bh_tcp_connections */
    BH_M_BYTES_IN,          /* counter bh_bytes_received_total (plaintext with TLS) */
    BH_M_BYTES_OUT,         /* counter bh_bytes_sent_total (plaintext with TLS) */
    BH_M_TLS_HANDSHAKE_ERR, /* counter bh_tls_handshake_failures_total */
    BH_M_MIGRATIONS,        /* counter bh_connection_migrations_total (between I/O threads) */
    /* http */
    BH_M_HTTP_REQUESTS, /* counter bh_http_requests_total */
    /* signalr: hub connections by transport and protocol (gauge bh_hub_connections) */
    BH_M_CONN_WS_JSON,
    BH_M_CONN_WS_MSGPACK,
    BH_M_CONN_SSE_JSON,
    BH_M_CONN_LP_JSON,
    BH_M_CONN_LP_MSGPACK,
    /* counter bh_hub_invocations_total{method,outcome} */
    BH_M_INVOKE_GETBALANCES_OK,
    BH_M_INVOKE_GETBALANCES_ERROR,
    BH_M_INVOKE_UNKNOWN, /* method="unknown",outcome="error" */
    /* counter bh_hub_events_total{subject} */
    BH_M_EVENT_SNAPSHOT,
    BH_M_EVENT_UPDATE,
    BH_M_EVENT_ERROR,     /* account.balances.error */
    BH_M_EVENT_PRECHECKS, /* preChecksError */
    BH_M_AUTH_FAILURES,   /* counter bh_auth_failures_total */
    /* counter bh_limit_rejections_total{limit} */
    BH_M_LIMIT_CONNS_PER_KEY, /* 429 at negotiate / upgrade */
    BH_M_LIMIT_CONNS_TOTAL,   /* 503 */
    BH_M_LIMIT_RATE,          /* per-key command rate */
    BH_M_LIMIT_AUTH_THROTTLE, /* failed-auth throttling per source address */
    BH_M_LIMIT_OUTPUT,        /* slow consumer closed (output buffer) */
    BH_M_LIMIT_REQUEST_SIZE,  /* 413 / 431 / oversized hub or WebSocket message */
    BH_M_LIMIT_TIMEOUT,       /* request, handshake or client timeout closed a connection */
    /* ledger and store */
    BH_M_LEDGER_OPS_OK,       /* counter bh_ledger_ops_total{outcome="ok"} */
    BH_M_LEDGER_OPS_REJECTED, /* ...{outcome="rejected"}: rules, limits, funds, bad input */
    BH_M_LEDGER_OPS_FAILED,   /* ...{outcome="failed"}: the store failed */
    BH_M_LEDGER_COMMITS,      /* counter bh_ledger_commits_total (batches) */
    BH_M_STORE_ERRORS,        /* counter bh_store_errors_total */
    BH_M_COUNT
} bh_metric_t;

/* Add n to a counter (or a gauge). */
void bh_metric_add(bh_metric_t m, uint64_t n);
/* Move a gauge up (+1) or down (-1). */
void bh_metric_gauge(bh_metric_t m, int64_t delta);
uint64_t bh_metric_get(bh_metric_t m);

/* Record one ledger group commit (histogram bh_ledger_commit_seconds), in nanoseconds. */
void bh_metric_commit_ns(uint64_t ns);

/* Append every metric in Prometheus text format (# HELP, # TYPE, samples), plus
 * bh_process_start_time_seconds and bh_ready (1 / 0 as given). BH_OK or BH_ENOMEM. */
int bh_metrics_render(bh_buf_t *out, int ready);

#endif
