/* The admin API's ledger writes: strict validation of the JSON bodies (one-line errors that
 * name the field), exact amounts from JSON strings or number source text, bh_op_t building,
 * and the answer once the ledger reports the durable result. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/error.h"
#include "internal.h"

#define MAX_RATES 256

typedef enum { AMT_POSITIVE, AMT_NONNEG, AMT_NONZERO } amount_rule_t;

/* What a success answers with. */
typedef enum {
    ANSWER_RESULT, /* {"sequence":N,"data":{...}} as the ledger stored it */
    ANSWER_DATA,   /* only its "data" member */
    ANSWER_BODY,   /* a body prepared at submission */
} answer_t;

typedef struct {
    bh_admin_reply_t reply;
    answer_t answer;
    int ok_status;
    bh_buf_t body;
} pending_t;

/* ---- field readers: each answers 400 naming the field and returns BH_EINVAL on failure ---- */

static int bad(const bh_admin_reply_t *r, const char *fmt, const char *name) {
    bh_admin_reply_error(r, 400, "bad_request", fmt, name);
    return BH_EINVAL;
}

static int get_amount(const bh_admin_reply_t *r, const bh_json_t *v, const char *name,
                      amount_rule_t rule, bh_dec_t *out) {
    int rc;

    if (!v)
        return bad(r, "missing field '%s'", name);
    if (v->type != BH_JSON_STRING && v->type != BH_JSON_NUMBER)
        return bad(r, "field '%s' must be a decimal string or number", name);
    rc = bh_dec_parse(v->str, v->len, out);
    if (rc == BH_ERANGE)
        return bad(r, "field '%s' is out of range (at most 20 digits before the point)", name);
    if (rc < 0)
        return bad(r, "field '%s' is not an exact decimal with at most 18 digits after the point",
                   name);
    if (rule == AMT_POSITIVE && (bh_dec_is_neg(*out) || bh_dec_is_zero(*out)))
        return bad(r, "field '%s' must be greater than 0", name);
    if (rule == AMT_NONNEG && bh_dec_is_neg(*out))
        return bad(r, "field '%s' must not be negative", name);
    if (rule == AMT_NONZERO && bh_dec_is_zero(*out))
        return bad(r, "field '%s' must not be 0", name);
    return BH_OK;
}

static int get_str(const bh_admin_reply_t *r, const bh_json_t *obj, const char *name, bool required,
                   const bh_json_t **out) {
    const bh_json_t *v = bh_json_get(obj, name);

    *out = NULL;
    if (!v)
        return required ? bad(r, "missing field '%s'", name) : BH_OK;
    if (v->type != BH_JSON_STRING)
        return bad(r, "field '%s' must be a string", name);
    *out = v;
    return BH_OK;
}

static int get_op_id(const bh_admin_reply_t *r, const bh_json_t *obj, bool required,
                     const char *dflt, char out[BH_ID_MAX + 1]) {
    const bh_json_t *v;

    if (get_str(r, obj, "opId", required, &v) < 0)
        return BH_EINVAL;
    if (!v) {
        snprintf(out, BH_ID_MAX + 1, "%s", dflt);
        return BH_OK;
    }
    if (!bh_ledger_valid_op_id(v->str, v->len))
        return bad(r, "field '%s' must be 1..64 printable ASCII characters", "opId");
    memcpy(out, v->str, v->len + 1);
    return BH_OK;
}

/* An asset or currency symbol from a string value (name is the field shown in errors). */
static int get_asset(const bh_admin_reply_t *r, const char *s, size_t n, const char *name,
                     char out[BH_ASSET_MAX]) {
    if (!bh_ledger_valid_asset(s, n))
        return bad(r, "'%s' must be 1..15 characters of A-Z 0-9", name);
    memcpy(out, s, n);
    out[n] = '\0';
    return BH_OK;
}

static int get_asset_field(const bh_admin_reply_t *r, const bh_json_t *obj, const char *field,
                           const char *name, char out[BH_ASSET_MAX]) {
    const bh_json_t *v = bh_json_get(obj, field);

    if (!v)
        return bad(r, "missing field '%s'", name);
    if (v->type != BH_JSON_STRING)
        return bad(r, "field '%s' must be a string", name);
    return get_asset(r, v->str, v->len, name, out);
}

/* ---- completion -------------------------------------------------------------------------------
 */

/* The "data" member of a stored result, re-serialized (numbers keep their exact text). */
static int data_of(const bh_op_result_t *res, bh_buf_t *b) {
    bh_json_doc_t *doc = NULL;
    const bh_json_t *d;
    int rc = BH_EINVAL;

    if (res->result && res->result_len &&
        bh_json_parse(res->result, res->result_len, 16, &doc) == BH_OK &&
        (d = bh_json_get(bh_json_root(doc), "data")) && d->type == BH_JSON_OBJECT)
        rc = bh_json_write(b, d);
    bh_json_free(doc);
    if (rc < 0 && res->snap) {
        bh_buf_reset(b);
        rc = bh_buf_append(b, res->snap->json, res->snap->json_len);
    }
    return rc;
}

static void pending_free(pending_t *p) {
    bh_buf_free(&p->body);
    free(p);
}

static void on_done(void *ud, const bh_op_result_t *res) {
    pending_t *p = ud;
    int rc = BH_OK;

    if (res->status != BH_OK) {
        bh_admin_reply_status(&p->reply, res->status, res->reason);
        pending_free(p);
        return;
    }
    switch (p->answer) {
    case ANSWER_RESULT:
        if (res->result && res->result_len) {
            bh_admin_reply(&p->reply, p->ok_status, res->result, res->result_len);
            pending_free(p);
            return;
        }
        rc = BH_EINVAL;
        if (res->snap) {
            rc = bh_buf_printf(
                &p->body, "{\"sequence\":%llu,\"data\":", (unsigned long long)res->snap->sequence);
            if (rc == BH_OK)
                rc = bh_buf_append(&p->body, res->snap->json, res->snap->json_len);
            if (rc == BH_OK)
                rc = bh_buf_appendc(&p->body, '}');
        }
        break;
    case ANSWER_DATA:
        rc = data_of(res, &p->body);
        break;
    case ANSWER_BODY:
        break;
    }
    if (rc == BH_OK)
        bh_admin_reply(&p->reply, p->ok_status, p->body.data, p->body.len);
    else
        bh_admin_reply_error(&p->reply, 500, "internal", "the ledger gave no result");
    pending_free(p);
}

static pending_t *pending_new(const bh_admin_reply_t *r, answer_t answer, int ok_status) {
    pending_t *p = calloc(1, sizeof *p);
    if (!p) {
        bh_admin_reply_status(r, BH_ENOMEM, NULL);
        return NULL;
    }
    p->reply = *r;
    p->answer = answer;
    p->ok_status = ok_status;
    bh_buf_init(&p->body, 0);
    return p;
}

static void submit(bh_admin_t *a, const bh_admin_reply_t *r, const bh_op_t *op, answer_t answer,
                   int ok_status) {
    pending_t *p = pending_new(r, answer, ok_status);
    int rc;

    if (!p)
        return;
    rc = bh_ledger_submit(a->cfg.ledger, op, on_done, p);
    if (rc < 0) { /* the callback will not come */
        bh_admin_reply_status(r, rc, NULL);
        pending_free(p);
    }
}

/* The routes pass a user id the router validated (at most BH_ID_MAX bytes). */
static void copy_id(char dst[BH_ID_MAX + 1], const char *user) {
    size_t n = strnlen(user, BH_ID_MAX);
    memcpy(dst, user, n);
    dst[n] = '\0';
}

/* ---- routes -----------------------------------------------------------------------------------
 */

void bh_admin_create_user(bh_admin_t *a, const bh_admin_reply_t *r, const char *body, size_t len) {
    static const char *const allowed[] = {"userId", "baseCurrency", "totalMaxExposure", "opId",
                                          NULL};
    bh_json_doc_t *doc;
    const bh_json_t *o, *user;
    bh_op_t op;

    if (bh_admin_parse_body(r, body, len, false, &doc) < 0)
        return;
    o = bh_json_root(doc);
    memset(&op, 0, sizeof op);
    op.kind = BH_OP_CREATE_USER;
    op.has_total = true;
    if (bh_admin_check_fields(r, o, allowed) < 0 || get_str(r, o, "userId", true, &user) < 0)
        goto done;
    if (!bh_ledger_valid_user_id(user->str, user->len)) {
        bad(r, "field '%s' must be 1..64 characters of A-Z a-z 0-9 . _ : @ -", "userId");
        goto done;
    }
    memcpy(op.user_id, user->str, user->len + 1);
    if (get_asset_field(r, o, "baseCurrency", "baseCurrency", op.base_currency) < 0 ||
        get_amount(r, bh_json_get(o, "totalMaxExposure"), "totalMaxExposure", AMT_NONNEG,
                   &op.total_max_exposure) < 0 ||
        get_op_id(r, o, false, "create-user", op.op_id) < 0)
        goto done;
    submit(a, r, &op, ANSWER_DATA, 201);
done:
    bh_json_free(doc);
}

void bh_admin_delete_user(bh_admin_t *a, const bh_admin_reply_t *r, const char *user,
                          const char *body, size_t len) {
    static const char *const allowed[] = {"opId", NULL};
    bh_json_doc_t *doc;
    const bh_json_t *o;
    bh_op_t op;

    if (bh_admin_parse_body(r, body, len, true, &doc) < 0)
        return;
    o = doc ? bh_json_root(doc) : NULL;
    memset(&op, 0, sizeof op);
    op.kind = BH_OP_DELETE_USER;
    copy_id(op.user_id, user);
    if (bh_admin_check_fields(r, o, allowed) == BH_OK &&
        get_op_id(r, o, false, "delete-user", op.op_id) == BH_OK)
        submit(a, r, &op, ANSWER_DATA, 200);
    bh_json_free(doc);
}

static int parse_legs(const bh_admin_reply_t *r, const bh_json_t *legs, bh_op_t *op) {
    static const char *const allowed[] = {"asset", "amount", NULL};
    char name[48];

    if (!legs)
        return bad(r, "missing field '%s'", "legs");
    if (legs->type != BH_JSON_ARRAY || legs->count == 0 || legs->count > BH_OP_MAX_LEGS)
        return bad(r, "field '%s' must be an array of 1..32 {\"asset\",\"amount\"} objects",
                   "legs");
    for (const bh_json_t *l = legs->child; l; l = l->next) {
        bh_leg_t *leg = &op->legs[op->nlegs];
        if (l->type != BH_JSON_OBJECT) {
            snprintf(name, sizeof name, "legs[%zu]", op->nlegs);
            return bad(r, "'%s' must be an object {\"asset\",\"amount\"}", name);
        }
        if (bh_admin_check_fields(r, l, allowed) < 0)
            return BH_EINVAL;
        snprintf(name, sizeof name, "legs[%zu].asset", op->nlegs);
        if (get_asset_field(r, l, "asset", name, leg->asset) < 0)
            return BH_EINVAL;
        snprintf(name, sizeof name, "legs[%zu].amount", op->nlegs);
        if (get_amount(r, bh_json_get(l, "amount"), name, AMT_NONZERO, &leg->amount) < 0)
            return BH_EINVAL;
        for (size_t i = 0; i < op->nlegs; i++) {
            if (strcmp(op->legs[i].asset, leg->asset) == 0) {
                snprintf(name, sizeof name, "legs[%zu].asset", op->nlegs);
                bh_admin_reply_error(r, 400, "bad_request",
                                     "'%s': asset %s appears in two legs (one leg per asset)", name,
                                     leg->asset);
                return BH_EINVAL;
            }
        }
        op->nlegs++;
    }
    return BH_OK;
}

static int parse_limits(const bh_admin_reply_t *r, const bh_json_t *o, bh_op_t *op) {
    const bh_json_t *max = bh_json_get(o, "maxExposure"), *total;
    char name[48];

    if (max && (max->type != BH_JSON_OBJECT || max->count > BH_OP_MAX_LEGS))
        return bad(r, "field '%s' must be an object of at most 32 ASSET: amount members",
                   "maxExposure");
    for (const bh_json_t *m = max ? max->child : NULL; m; m = m->next) {
        bh_leg_t *leg = &op->legs[op->nlegs];
        snprintf(name, sizeof name, "maxExposure.%.16s", m->key);
        if (strlen(m->key) != m->key_len || get_asset(r, m->key, m->key_len, name, leg->asset) < 0)
            return BH_EINVAL;
        if (get_amount(r, m, name, AMT_NONNEG, &leg->amount) < 0)
            return BH_EINVAL;
        for (size_t i = 0; i < op->nlegs; i++)
            if (strcmp(op->legs[i].asset, leg->asset) == 0)
                return bad(r, "field '%s' appears twice", name);
        op->nlegs++;
    }
    if ((total = bh_json_get(o, "totalMaxExposure"))) {
        if (get_amount(r, total, "totalMaxExposure", AMT_NONNEG, &op->total_max_exposure) < 0)
            return BH_EINVAL;
        op->has_total = true;
    }
    if (op->nlegs == 0 && !op->has_total)
        return bad(r, "%s needs maxExposure members or totalMaxExposure", "set-limits");
    return BH_OK;
}

void bh_admin_post_op(bh_admin_t *a, const bh_admin_reply_t *r, const char *user, const char *body,
                      size_t len) {
    static const char *const single[] = {"opId", "op", "asset", "amount", NULL};
    static const char *const trade[] = {"opId", "op", "legs", NULL};
    static const char *const limits[] = {"opId", "op", "maxExposure", "totalMaxExposure", NULL};
    static const struct {
        const char *name;
        bh_op_kind_t kind;
        const char *const *fields;
    } kinds[] = {
        {"deposit", BH_OP_DEPOSIT, single},   {"withdraw", BH_OP_WITHDRAW, single},
        {"allocate", BH_OP_ALLOCATE, single}, {"release", BH_OP_RELEASE, single},
        {"trade", BH_OP_TRADE, trade},        {"set-limits", BH_OP_SET_LIMITS, limits},
    };
    bh_json_doc_t *doc;
    const bh_json_t *o, *name;
    size_t k = 0, nkinds = sizeof kinds / sizeof kinds[0];
    bh_op_t op;

    if (bh_admin_parse_body(r, body, len, false, &doc) < 0)
        return;
    o = bh_json_root(doc);
    if (get_str(r, o, "op", true, &name) < 0)
        goto done;
    while (k < nkinds && strcmp(kinds[k].name, name->str) != 0)
        k++;
    if (k == nkinds || strlen(name->str) != name->len) {
        bh_admin_reply_error(r, 400, "bad_request",
                             "unknown op '%.32s' (deposit, withdraw, allocate, release, trade, "
                             "set-limits)",
                             name->str);
        goto done;
    }
    memset(&op, 0, sizeof op);
    op.kind = kinds[k].kind;
    copy_id(op.user_id, user);
    if (bh_admin_check_fields(r, o, kinds[k].fields) < 0 ||
        get_op_id(r, o, true, NULL, op.op_id) < 0)
        goto done;
    if (op.kind == BH_OP_TRADE) {
        if (parse_legs(r, bh_json_get(o, "legs"), &op) < 0)
            goto done;
    } else if (op.kind == BH_OP_SET_LIMITS) {
        if (parse_limits(r, o, &op) < 0)
            goto done;
    } else {
        if (get_asset_field(r, o, "asset", "asset", op.legs[0].asset) < 0 ||
            get_amount(r, bh_json_get(o, "amount"), "amount", AMT_POSITIVE, &op.legs[0].amount) < 0)
            goto done;
        op.nlegs = 1;
    }
    submit(a, r, &op, ANSWER_RESULT, 200);
done:
    bh_json_free(doc);
}

void bh_admin_put_rates(bh_admin_t *a, const bh_admin_reply_t *r, const char *body, size_t len) {
    static const char *const allowed[] = {"baseCurrency", "rates", NULL};
    bh_json_doc_t *doc;
    const bh_json_t *o, *rates;
    bh_store_rate_t *rs = NULL;
    char currency[BH_ASSET_MAX], name[48], num[BH_DEC_STRLEN];
    pending_t *p = NULL;
    size_t n = 0;
    int rc;

    if (bh_admin_parse_body(r, body, len, false, &doc) < 0)
        return;
    o = bh_json_root(doc);
    if (bh_admin_check_fields(r, o, allowed) < 0 ||
        get_asset_field(r, o, "baseCurrency", "baseCurrency", currency) < 0)
        goto done;
    rates = bh_json_get(o, "rates");
    if (!rates) {
        bad(r, "missing field '%s'", "rates");
        goto done;
    }
    if (rates->type != BH_JSON_OBJECT || rates->count == 0 || rates->count > MAX_RATES) {
        bad(r, "field '%s' must be an object of 1..256 ASSET: rate members", "rates");
        goto done;
    }
    if (!(rs = calloc(rates->count, sizeof *rs)) || !(p = pending_new(r, ANSWER_BODY, 200))) {
        if (!rs)
            bh_admin_reply_status(r, BH_ENOMEM, NULL);
        goto done;
    }
    rc = bh_buf_appends(&p->body, "{\"baseCurrency\":\"");
    if (rc == BH_OK)
        rc = bh_buf_printf(&p->body, "%s\",\"rates\":{", currency);
    for (const bh_json_t *m = rates->child; m; m = m->next, n++) {
        bh_store_rate_t *rt = &rs[n];
        snprintf(name, sizeof name, "rates.%.16s", m->key);
        memcpy(rt->currency, currency, sizeof currency);
        if (strlen(m->key) != m->key_len || get_asset(r, m->key, m->key_len, name, rt->asset) < 0 ||
            get_amount(r, m, name, AMT_POSITIVE, &rt->rate) < 0)
            goto done;
        if (strcmp(rt->asset, currency) == 0) {
            bad(r, "'%s': the base currency's own rate is always 1", name);
            goto done;
        }
        for (size_t i = 0; i < n; i++) {
            if (strcmp(rs[i].asset, rt->asset) == 0) {
                bad(r, "field '%s' appears twice", name);
                goto done;
            }
        }
        bh_dec_format(rt->rate, num);
        if (rc == BH_OK)
            rc = bh_buf_printf(&p->body, "%s\"%s\":\"%s\"", n ? "," : "", rt->asset, num);
    }
    if (rc == BH_OK)
        rc = bh_buf_appends(&p->body, "}}");
    if (rc == BH_OK)
        rc = bh_ledger_set_rates(a->cfg.ledger, currency, rs, n, on_done, p);
    if (rc < 0) {
        bh_admin_reply_status(r, rc, NULL);
        goto done;
    }
    p = NULL; /* on_done owns it now */
done:
    if (p)
        pending_free(p);
    free(rs);
    bh_json_free(doc);
}
