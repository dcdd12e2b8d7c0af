/* Admin API internals shared by admin.c (auth, routing, keys and reads) and ops.c (the
 * ledger-backed writes): the dispatcher state, the answer helpers and the field validators.
 * Not a public header. */
#ifndef BH_ADMIN_INTERNAL_H
#define BH_ADMIN_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../base/buf.h"
#include "../base/json.h"
#include "admin.h"

#define BH_ADMIN_JSON_DEPTH 8

struct evp_md_st;
struct evp_md_ctx_st;

struct bh_admin {
    bh_admin_config_t cfg; /* cfg.token is cleared: only its hash is kept */
    bool enabled;          /* a token is configured */
    uint8_t token_hash[32];
    /* SHA-256 fetched once and a reusable context for the per-request token hash (a one-shot
     * EVP_Digest looks the algorithm up by name and allocates a context every time); NULL
     * when unavailable, then bh_auth_key_hash is used. */
    struct evp_md_st *sha256;
    struct evp_md_ctx_st *md_ctx;
};

/* Where one request's answer goes. */
typedef struct {
    bh_admin_respond_fn fn;
    void *ud;
} bh_admin_reply_t;

void bh_admin_reply(const bh_admin_reply_t *r, int status, const char *json, size_t len);
/* {"error":MSG,"code":CODE} with status; MSG is printf-formatted, one line. */
void bh_admin_reply_error(const bh_admin_reply_t *r, int status, const char *code, const char *fmt,
                          ...) __attribute__((format(printf, 4, 5)));
/* The error answer for a BH_E* code: 400/404/409/422/503, else 500. reason may be NULL. */
void bh_admin_reply_status(const bh_admin_reply_t *r, int err, const char *reason);

/* Parse body as a JSON object; an empty (or all-blank) body is an empty object when empty_ok
 * (*doc is NULL then). BH_OK, or the error has been answered (400) and a negative code is
 * returned. */
int bh_admin_parse_body(const bh_admin_reply_t *r, const char *body, size_t len, bool empty_ok,
                        bh_json_doc_t **doc);
/* Answer 400 unless every member of obj is named in allowed (NULL-terminated) at most once. */
int bh_admin_check_fields(const bh_admin_reply_t *r, const bh_json_t *obj,
                          const char *const *allowed);

/* Ledger-backed routes (ops.c). user is the decoded, validated path segment. */
void bh_admin_create_user(bh_admin_t *a, const bh_admin_reply_t *r, const char *body, size_t len);
void bh_admin_delete_user(bh_admin_t *a, const bh_admin_reply_t *r, const char *user,
                          const char *body, size_t len);
void bh_admin_post_op(bh_admin_t *a, const bh_admin_reply_t *r, const char *user, const char *body,
                      size_t len);
void bh_admin_put_rates(bh_admin_t *a, const bh_admin_reply_t *r, const char *body, size_t len);

#endif
