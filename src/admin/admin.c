/* The admin API dispatcher: bearer-token check, routing by method and URL-decoded path, the
 * key routes and the read routes (balances, journal). Ledger writes live in ops.c. The same
 * entry point serves HTTP and the in-process CLI. Tokens and keys are never logged. */
#include <inttypes.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "../base/hex.h"
#include "../base/error.h"
#include "internal.h"

#define JOURNAL_LIMIT_DEFAULT 1000
#define JOURNAL_LIMIT_MAX 10000
/* Past this many bytes a journal answer stops early (fewer than limit entries; the caller
 * continues with since=the last sequence): the connection's output cap is 1 MiB. */
#define JOURNAL_MAX_BYTES (512 * 1024)
#define JOURNAL_FULL 1
#define MAX_SEGS 4

/* ---- answers -------------------------------------------------------------------------------- */

void bh_admin_reply(const bh_admin_reply_t *r, int status, const char *json, size_t len) {
    r->fn(r->ud, status, json, len);
}

void bh_admin_reply_error(const bh_admin_reply_t *r, int status, const char *code, const char *fmt,
                          ...) {
    char msg[512];
    va_list ap;
    bh_buf_t b;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* One line, whatever a quoted user value contained. */
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p < 0x20)
            *p = ' ';
    bh_buf_init(&b, 0);
    if (bh_buf_appends(&b, "{\"error\":") == BH_OK &&
        bh_json_write_str(&b, msg, strlen(msg)) == BH_OK &&
        bh_buf_printf(&b, ",\"code\":\"%s\"}", code) == BH_OK) {
        bh_admin_reply(r, status, b.data, b.len);
    } else {
        static const char oom[] = "{\"error\":\"out of memory\",\"code\":\"internal\"}";
        bh_admin_reply(r, 500, oom, sizeof oom - 1);
    }
    bh_buf_free(&b);
}

void bh_admin_reply_status(const bh_admin_reply_t *r, int err, const char *reason) {
    int status;
    const char *code;

    switch (err) {
    case BH_EINVAL:
        status = 400, code = "bad_request";
        break;
    case BH_ENOTFOUND:
        status = 404, code = "not_found";
        break;
    case BH_EEXIST:
        status = 409, code = "conflict";
        break;
    case BH_EFUNDS:
    case BH_ELIMIT:
    case BH_ERANGE: /* valid input whose result would leave the decimal range */
        status = 422, code = "rejected";
        break;
    case BH_ESTORE:
        status = 503, code = "unavailable";
        break;
    default:
        status = 500, code = "internal";
        break;
    }
    bh_admin_reply_error(r, status, code, "%s", reason && *reason ? reason : bh_strerror(err));
}

/* ---- request bodies ------------------------------------------------------------------------ */

int bh_admin_parse_body(const bh_admin_reply_t *r, const char *body, size_t len, bool empty_ok,
                        bh_json_doc_t **doc) {
    size_t i = 0;
    int rc;

    *doc = NULL;
    while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n'))
        i++;
    if (i == len) {
        if (empty_ok)
            return BH_OK;
        bh_admin_reply_error(r, 400, "bad_request", "the request body must be a JSON object");
        return BH_EINVAL;
    }
    rc = bh_json_parse(body, len, BH_ADMIN_JSON_DEPTH, doc);
    if (rc == BH_ENOMEM) {
        bh_admin_reply_status(r, rc, NULL);
        return rc;
    }
    if (rc < 0) {
        bh_admin_reply_error(r, 400, "bad_request", "the request body is not valid JSON%s",
                             rc == BH_ETOOBIG ? " (nested too deeply)" : "");
        return rc;
    }
    if (bh_json_root(*doc)->type != BH_JSON_OBJECT) {
        bh_json_free(*doc);
        *doc = NULL;
        bh_admin_reply_error(r, 400, "bad_request", "the request body must be a JSON object");
        return BH_EINVAL;
    }
    return BH_OK;
}

int bh_admin_check_fields(const bh_admin_reply_t *r, const bh_json_t *obj,
                          const char *const *allowed) {
    for (const bh_json_t *m = obj ? obj->child : NULL; m; m = m->next) {
        size_t k = 0;
        while (allowed[k] && strcmp(allowed[k], m->key) != 0)
            k++;
        if (!allowed[k] || strlen(m->key) != m->key_len) {
            bh_admin_reply_error(r, 400, "bad_request", "unknown field '%.64s'", m->key);
            return BH_EINVAL;
        }
        /* Only allowed names get here, so this scan is short. */
        for (const bh_json_t *p = obj->child; p != m; p = p->next) {
            if (strcmp(p->key, m->key) == 0) {
                bh_admin_reply_error(r, 400, "bad_request", "field '%s' appears twice", m->key);
                return BH_EINVAL;
            }
        }
    }
    return BH_OK;
}

/* ---- keys -------------------------------------------------------------------------------------
 */

/* The user exists and is not deleted; else 404 answered. */
static bool live_user(bh_admin_t *a, const bh_admin_reply_t *r, const char *user, bool deleted_ok) {
    bh_snapshot_t *s = bh_ledger_snapshot(a->cfg.ledger, user);
    bool ok = s && (deleted_ok || !s->deleted);
    if (!ok)
        bh_admin_reply_error(r, 404, "not_found", s ? "user '%s' is deleted" : "unknown user '%s'",
                             user);
    bh_snapshot_release(s);
    return ok;
}

static void create_key(bh_admin_t *a, const bh_admin_reply_t *r, const char *user, const char *body,
                       size_t len) {
    static const char *const allowed[] = {NULL};
    char key[BH_API_KEY_LEN + 1], kid[BH_KEY_ID_LEN + 1];
    bh_json_doc_t *doc;
    bh_buf_t b;
    int rc;

    if (bh_admin_parse_body(r, body, len, true, &doc) < 0)
        return;
    rc = bh_admin_check_fields(r, doc ? bh_json_root(doc) : NULL, allowed);
    bh_json_free(doc);
    if (rc < 0 || !live_user(a, r, user, false))
        return;
    rc = bh_auth_create_key(a->cfg.store, a->cfg.keyring, user, key, kid);
    if (rc < 0) {
        bh_admin_reply_status(r, rc, rc == BH_ESTORE ? "the store could not save the key" : NULL);
        return;
    }
    bh_buf_init(&b, 0);
    rc = bh_buf_printf(&b, "{\"keyId\":\"%s\",\"apiKey\":\"%s\"}", kid, key);
    OPENSSL_cleanse(key, sizeof key);
    if (rc == BH_OK)
        bh_admin_reply(r, 201, b.data, b.len);
    else
        bh_admin_reply_status(r, rc, NULL);
    if (b.data)
        OPENSSL_cleanse(b.data, b.cap);
    bh_buf_free(&b);
}

typedef struct {
    const char *key_id;
    bh_store_key_t found;
    bool hit;
} key_search_t;

static int match_key(void *ud, const bh_store_key_t *k) {
    key_search_t *ks = ud;
    if (strcmp(k->key_id, ks->key_id) == 0) {
        ks->found = *k;
        ks->hit = true;
    }
    return BH_OK;
}

/* Revoking an already revoked key answers the same 200 again. */
static void revoke_key(bh_admin_t *a, const bh_admin_reply_t *r, const char *key_id) {
    key_search_t ks = {.key_id = key_id};
    bh_store_visitor_t v = {.ud = &ks, .key = match_key};
    bh_buf_t b;
    int rc;

    if (strlen(key_id) > BH_ID_MAX) {
        bh_admin_reply_error(r, 404, "not_found", "unknown key");
        return;
    }
    /* The keyring has no lookup by id; keys are few and revocations rare. */
    rc = bh_store_load(a->cfg.store, &v);
    if (rc < 0) {
        bh_admin_reply_status(r, rc, "the store could not be read");
        return;
    }
    if (!ks.hit) {
        bh_admin_reply_error(r, 404, "not_found", "unknown key '%s'", key_id);
        return;
    }
    ks.found.revoked = true;
    rc = bh_store_put_key(a->cfg.store, &ks.found);
    if (rc == BH_OK)
        rc = bh_keyring_put(a->cfg.keyring, &ks.found);
    if (rc < 0) {
        bh_admin_reply_status(r, rc, rc == BH_ESTORE ? "the store could not save the key" : NULL);
        return;
    }
    if (a->cfg.on_key_revoked)
        a->cfg.on_key_revoked(a->cfg.ud, ks.found.user_id, ks.found.key_id);
    bh_buf_init(&b, 0);
    rc = bh_buf_appends(&b, "{\"keyId\":");
    if (rc == BH_OK)
        rc = bh_json_write_str(&b, key_id, strlen(key_id));
    if (rc == BH_OK)
        rc = bh_buf_appends(&b, ",\"revoked\":true}");
    if (rc == BH_OK)
        bh_admin_reply(r, 200, b.data, b.len);
    else
        bh_admin_reply_status(r, rc, NULL);
    bh_buf_free(&b);
}

/* ---- reads ------------------------------------------------------------------------------------
 */

static void balances(bh_admin_t *a, const bh_admin_reply_t *r, const char *user) {
    bh_snapshot_t *s = bh_ledger_snapshot(a->cfg.ledger, user);
    if (!s) {
        bh_admin_reply_error(r, 404, "not_found", "unknown user '%s'", user);
        return;
    }
    bh_admin_reply(r, 200, s->json, s->json_len);
    bh_snapshot_release(s);
}

/* A whole number 0..max from a query parameter: 1 when present and valid, 0 when absent,
 * negative (answered 400) when malformed. */
static int query_u64(const bh_admin_reply_t *r, const char *q, size_t qlen, const char *name,
                     uint64_t min, uint64_t max, uint64_t *out) {
    char v[32];
    int n = bh_http_query_param(q, qlen, name, v, sizeof v);
    uint64_t x = 0;

    if (n == BH_ENOTFOUND)
        return 0;
    if (n <= 0 || n > 19)
        goto bad;
    for (int i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            goto bad;
        x = x * 10 + (uint64_t)(v[i] - '0');
    }
    if (x < min || x > max)
        goto bad;
    *out = x;
    return 1;
bad:
    bh_admin_reply_error(r, 400, "bad_request",
                         "query parameter '%s' must be a whole number %" PRIu64 "..%" PRIu64, name,
                         min, max);
    return BH_EINVAL;
}

/* ISO-8601 UTC with milliseconds, e.g. 2026-11-27T03:31:15.734Z. */
static int write_time(bh_buf_t *b, int64_t ms) {
    int64_t secs = ms / 1000, frac = ms % 1000;
    struct tm tm;
    char s[40];

    if (frac < 0) {
        frac += 1000;
        secs--;
    }
    time_t t = (time_t)secs;
    if (!gmtime_r(&t, &tm) || strftime(s, sizeof s, "%Y-%m-%dT%H:%M:%S", &tm) == 0)
        return BH_EINVAL;
    return bh_buf_printf(b, "\"%s.%03dZ\"", s, (int)frac);
}

typedef struct {
    bh_buf_t *b;
    size_t n;
} journal_ctx_t;

static bool reserved_member(const char *k) {
    return strcmp(k, "sequence") == 0 || strcmp(k, "opId") == 0 || strcmp(k, "op") == 0 ||
           strcmp(k, "time") == 0;
}

static int journal_entry(void *ud, const bh_store_journal_t *j) {
    journal_ctx_t *jc = ud;
    bh_buf_t *b = jc->b;
    bh_json_doc_t *doc = NULL;
    int rc;

    if (b->len > JOURNAL_MAX_BYTES)
        return JOURNAL_FULL;
    rc = bh_buf_printf(b, "%s{\"sequence\":%" PRIu64 ",\"opId\":", jc->n ? "," : "", j->sequence);
    if (rc == BH_OK)
        rc = bh_json_write_str(b, j->op_id, strlen(j->op_id));
    if (rc == BH_OK)
        rc = bh_buf_appends(b, ",\"op\":");
    if (rc == BH_OK)
        rc = bh_json_write_str(b, j->op, strlen(j->op));
    /* The detail object's members become the entry's own (asset, amount, legs, ...). */
    if (rc == BH_OK && j->detail && *j->detail &&
        (rc = bh_json_parse(j->detail, strlen(j->detail), 16, &doc)) == BH_OK &&
        bh_json_root(doc)->type == BH_JSON_OBJECT) {
        for (const bh_json_t *m = bh_json_root(doc)->child; m && rc == BH_OK; m = m->next) {
            if (reserved_member(m->key))
                continue;
            rc = bh_buf_appendc(b, ',');
            if (rc == BH_OK)
                rc = bh_json_write_str(b, m->key, m->key_len);
            if (rc == BH_OK)
                rc = bh_buf_appendc(b, ':');
            if (rc == BH_OK)
                rc = bh_json_write(b, m);
        }
    }
    bh_json_free(doc);
    if (rc == BH_OK)
        rc = bh_buf_appends(b, ",\"time\":");
    if (rc == BH_OK)
        rc = write_time(b, j->time_ms);
    if (rc == BH_OK)
        rc = bh_buf_appendc(b, '}');
    jc->n++;
    return rc;
}

static void journal(bh_admin_t *a, const bh_admin_reply_t *r, const char *user, const char *q,
                    size_t qlen) {
    uint64_t since = 0, limit = JOURNAL_LIMIT_DEFAULT;
    bh_buf_t b;
    journal_ctx_t jc = {.b = &b};
    int rc;

    if (query_u64(r, q, qlen, "since", 0, INT64_MAX, &since) < 0 ||
        query_u64(r, q, qlen, "limit", 1, JOURNAL_LIMIT_MAX, &limit) < 0 ||
        !live_user(a, r, user, true))
        return;
    bh_buf_init(&b, 0);
    rc = bh_buf_appends(&b, "{\"entries\":[");
    if (rc == BH_OK)
        rc = bh_store_read_journal(a->cfg.store, user, since, (size_t)limit, journal_entry, &jc);
    if (rc == BH_OK || rc == JOURNAL_FULL)
        rc = bh_buf_appends(&b, "]}");
    if (rc == BH_OK)
        bh_admin_reply(r, 200, b.data, b.len);
    else
        bh_admin_reply_status(r, rc, rc == BH_ESTORE ? "the journal could not be read" : NULL);
    bh_buf_free(&b);
}

/* ---- routing ----------------------------------------------------------------------------------
 */

/* Split the path after "/admin/" into percent-decoded segments stored in out (one NUL after
 * each). BH_EINVAL for a bad escape or an encoded NUL, BH_ETOOBIG past MAX_SEGS. */
static int split_path(const char *p, size_t n, char *out, char *segs[MAX_SEGS], size_t *nsegs) {
    size_t k = 0;

    *nsegs = 0;
    if (n == 0)
        return BH_OK;
    segs[(*nsegs)++] = out;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '/') {
            out[k++] = '\0';
            if (*nsegs == MAX_SEGS)
                return BH_ETOOBIG;
            segs[(*nsegs)++] = out + k;
        } else if (p[i] == '%') {
            int hi = i + 2 < n ? bh_hex_digit(p[i + 1]) : -1,
                lo = i + 2 < n ? bh_hex_digit(p[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return BH_EINVAL;
            out[k++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            out[k++] = p[i];
        }
    }
    out[k] = '\0';
    return BH_OK;
}

static void method_not_allowed(const bh_admin_reply_t *r, const char *allow) {
    bh_admin_reply_error(r, 405, "method_not_allowed", "method not allowed here (use %s)", allow);
}

static bool check_user(const bh_admin_reply_t *r, const char *user) {
    if (bh_ledger_valid_user_id(user, strlen(user)))
        return true;
    bh_admin_reply_error(r, 400, "bad_request",
                         "userId must be 1..64 characters of A-Z a-z 0-9 . _ : @ -");
    return false;
}

static void route(bh_admin_t *a, const bh_admin_reply_t *r, bh_http_method_t m, char **seg,
                  size_t ns, const char *query, size_t qlen, const char *body, size_t len) {
    bool users = ns >= 2 && strcmp(seg[0], "users") == 0 && seg[1][0];

    if (ns == 1 && strcmp(seg[0], "users") == 0) {
        if (m != BH_HTTP_POST)
            method_not_allowed(r, "POST");
        else
            bh_admin_create_user(a, r, body, len);
    } else if (ns == 1 && strcmp(seg[0], "rates") == 0) {
        if (m != BH_HTTP_PUT)
            method_not_allowed(r, "PUT");
        else
            bh_admin_put_rates(a, r, body, len);
    } else if (ns == 2 && strcmp(seg[0], "keys") == 0 && seg[1][0]) {
        if (m != BH_HTTP_DELETE)
            method_not_allowed(r, "DELETE");
        else
            revoke_key(a, r, seg[1]);
    } else if (ns == 2 && users) {
        if (m != BH_HTTP_DELETE)
            method_not_allowed(r, "DELETE");
        else if (check_user(r, seg[1]))
            bh_admin_delete_user(a, r, seg[1], body, len);
    } else if (ns == 3 && users && (strcmp(seg[2], "keys") == 0 || strcmp(seg[2], "ops") == 0)) {
        if (m != BH_HTTP_POST)
            method_not_allowed(r, "POST");
        else if (!check_user(r, seg[1]))
            return;
        else if (strcmp(seg[2], "keys") == 0)
            create_key(a, r, seg[1], body, len);
        else
            bh_admin_post_op(a, r, seg[1], body, len);
    } else if (ns == 3 && users &&
               (strcmp(seg[2], "balances") == 0 || strcmp(seg[2], "journal") == 0)) {
        if (m != BH_HTTP_GET)
            method_not_allowed(r, "GET");
        else if (!check_user(r, seg[1]))
            return;
        else if (strcmp(seg[2], "balances") == 0)
            balances(a, r, seg[1]);
        else
            journal(a, r, seg[1], query, qlen);
    } else {
        bh_admin_reply_error(r, 404, "not_found", "no such admin endpoint");
    }
}

/* Authorization: Bearer TOKEN, compared through SHA-256 digests so neither the contents nor
 * the length of the configured token leaks through timing. */
static bool authorized(bh_admin_t *a, const char *h, size_t n) {
    uint8_t got[32];
    bool ok;

    if (!h || n < 7 || strncasecmp(h, "Bearer ", 7) != 0)
        return false;
    h += 7, n -= 7;
    while (n > 0 && *h == ' ')
        h++, n--;
    while (n > 0 && h[n - 1] == ' ')
        n--;
    if (n == 0)
        return false;
    unsigned int glen = sizeof got;
    if (!a->md_ctx || EVP_DigestInit_ex2(a->md_ctx, a->sha256, NULL) != 1 ||
        EVP_DigestUpdate(a->md_ctx, h, n) != 1 || EVP_DigestFinal_ex(a->md_ctx, got, &glen) != 1 ||
        glen != sizeof got)
        bh_auth_key_hash(h, n, got);
    ok = bh_auth_ct_equal(got, a->token_hash, sizeof got);
    OPENSSL_cleanse(got, sizeof got);
    return ok;
}

void bh_admin_request(bh_admin_t *a, bh_http_method_t method, const char *path, size_t path_len,
                      const char *query, size_t query_len, const char *body, size_t body_len,
                      const char *authorization, size_t auth_len, int trusted,
                      bh_admin_respond_fn respond, void *ud) {
    static const char prefix[] = "/admin/";
    const bh_admin_reply_t r = {.fn = respond, .ud = ud};
    char *buf = NULL, *segs[MAX_SEGS];
    size_t ns = 0;
    int rc;

    if (!trusted && !a->enabled) {
        bh_admin_reply_error(&r, 404, "not_found", "not found");
        return;
    }
    if (!trusted && !authorized(a, authorization, auth_len)) {
        bh_admin_reply_error(&r, 401, "unauthorized",
                             "missing or wrong admin token (Authorization: Bearer TOKEN)");
        return;
    }
    if (path_len < sizeof prefix - 1 || memcmp(path, prefix, sizeof prefix - 1) != 0) {
        bh_admin_reply_error(&r, 404, "not_found", "no such admin endpoint");
        return;
    }
    path += sizeof prefix - 1, path_len -= sizeof prefix - 1;
    buf = malloc(path_len + 1);
    if (!buf) {
        bh_admin_reply_status(&r, BH_ENOMEM, NULL);
        return;
    }
    rc = split_path(path, path_len, buf, segs, &ns);
    if (rc == BH_EINVAL)
        bh_admin_reply_error(&r, 400, "bad_request", "bad percent-escape in the path");
    else if (rc < 0)
        bh_admin_reply_error(&r, 404, "not_found", "no such admin endpoint");
    else
        route(a, &r, method, segs, ns, query, query ? query_len : 0, body, body ? body_len : 0);
    free(buf);
}

/* ---- HTTP -------------------------------------------------------------------------------------
 */

static void respond_http(void *ud, int status, const char *json, size_t len) {
    bh_http_conn_t *hc = ud;
    /* Answers can carry a new API key: no cache may keep them. */
    bh_http_respond(hc, status, "application/json", "Cache-Control: no-store\r\n", json, len);
    bh_http_release(hc);
}

int bh_admin_handle_http(bh_admin_t *a, bh_http_conn_t *hc, const bh_http_request_t *req,
                         const char *body, size_t len) {
    size_t alen = 0;
    const char *auth;

    if (!(req->path_len == 6 && memcmp(req->path, "/admin", 6) == 0) &&
        !(req->path_len >= 7 && memcmp(req->path, "/admin/", 7) == 0))
        return 0;
    auth = bh_http_header(req, "Authorization", &alen);
    bh_http_hold(hc);
    bh_admin_request(a, req->method, req->path, req->path_len, req->query, req->query_len, body,
                     len, auth, alen, 0, respond_http, hc);
    return 1;
}

/* ---- lifetime ---------------------------------------------------------------------------------
 */

int bh_admin_new(const bh_admin_config_t *cfg, bh_admin_t **out) {
    bh_admin_t *a;

    *out = NULL;
    if (!cfg || !cfg->ledger || !cfg->store || !cfg->keyring)
        return BH_EINVAL;
    a = calloc(1, sizeof *a);
    if (!a)
        return BH_ENOMEM;
    a->cfg = *cfg;
    a->cfg.token = NULL;
    if ((a->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL)) && !(a->md_ctx = EVP_MD_CTX_new())) {
        EVP_MD_free(a->sha256);
        a->sha256 = NULL;
    }
    if (cfg->token && *cfg->token) {
        a->enabled = true;
        bh_auth_key_hash(cfg->token, strlen(cfg->token), a->token_hash);
    }
    *out = a;
    return BH_OK;
}

void bh_admin_free(bh_admin_t *a) {
    if (!a)
        return;
    EVP_MD_CTX_free(a->md_ctx); /* cleanses its digest state */
    EVP_MD_free(a->sha256);
    OPENSSL_cleanse(a, sizeof *a);
    free(a);
}
