/* Operations endpoints shared by the listeners: liveness (/healthz), readiness (/readyz: the
 * ledger's store is reachable) and Prometheus metrics (/metrics, operations listener only). */
#ifndef BH_CLI_OPS_H
#define BH_CLI_OPS_H

#include "../http/server.h"
#include "../ledger/ledger.h"

/* Answer req when it is GET or HEAD /healthz ("ok"), /readyz (200 "ready" or 503 "store
 * unavailable"; l NULL, e.g. during shutdown, counts as unavailable) or, when metrics_allowed,
 * /metrics (text format 0.0.4); other methods on those paths get 405 with Allow. Returns 1 when
 * it answered, 0 when the path is none of these (the caller routes it on). */
int bh_cli_ops_handle(bh_ledger_t *l, int metrics_allowed, bh_http_conn_t *hc,
                      const bh_http_request_t *req);

#endif
