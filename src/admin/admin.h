/* The admin API: JSON over HTTP under /admin/ (Bearer admin token), on top of the ledger,
 * the API keys and the journal. The same dispatcher serves `balancehub admin --data DIR`
 * in-process, so the CLI and the HTTP API cannot drift apart. */
#ifndef BH_ADMIN_ADMIN_H
#define BH_ADMIN_ADMIN_H

#include <stddef.h>

#include "../auth/auth.h"
#include "../http/server.h"
#include "../ledger/ledger.h"

typedef struct bh_admin bh_admin_t;

typedef struct {
    bh_ledger_t *ledger;
    bh_store_t *store; /* a handle for the loop thread: keys, journal reads */
    bh_keyring_t *keyring;
    const char *token; /* admin bearer token; NULL or "" disables the HTTP admin API (404) */
    /* A key was revoked: close the connections opened with it. */
    void (*on_key_revoked)(void *ud, const char *user_id, const char *key_id);
    void *ud;
} bh_admin_config_t;

int bh_admin_new(const bh_admin_config_t *cfg, bh_admin_t **out);
void bh_admin_free(bh_admin_t *a);

/* The answer to one admin request: status and a JSON body (valid during the call). */
typedef void (*bh_admin_respond_fn)(void *ud, int status, const char *json, size_t len);

/* Handle one request for path (starting with /admin/, no query string). respond is called
 * exactly once, possibly before this returns (validation errors) or later (after the
 * durable commit). trusted skips the token check (in-process use by the CLI). */
void bh_admin_request(bh_admin_t *a, bh_http_method_t method, const char *path, size_t path_len,
                      const char *query, size_t query_len, const char *body, size_t body_len,
                      const char *authorization, size_t auth_len, int trusted,
                      bh_admin_respond_fn respond, void *ud);

/* Route an HTTP request: 1 when the path is under /admin/ (answered now or later), else 0. */
int bh_admin_handle_http(bh_admin_t *a, bh_http_conn_t *hc, const bh_http_request_t *req,
                         const char *body, size_t len);

#endif
