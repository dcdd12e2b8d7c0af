/* Balances data for the client: the event's data object (a bh_json_t tree, from either hub
 * protocol) read into bh_balances_t with exact decimals, written back as one line of JSON in
 * the server's member order, and deep-copied into one allocation. */
#include <stdlib.h>
#include <string.h>

#include "../base/error.h"
#include "internal.h"

/* An amount: a JSON number (its exact text) or a string holding one; missing or null is 0. */
static int read_amount(const bh_json_t *obj, const char *name, bh_decimal_t *out) {
    const bh_json_t *v = bh_json_get(obj, name);

    memset(out, 0, sizeof(*out));
    if (v == NULL || v->type == BH_JSON_NULL)
        return BH_OK;
    if (v->type != BH_JSON_NUMBER && v->type != BH_JSON_STRING)
        return BH_EINVAL;
    return bh_cl_dec_parse(v->str, v->len, out) == BH_OK ? BH_OK : BH_EINVAL;
}

static int read_string(const bh_json_t *obj, const char *name, int required, const char **out) {
    const bh_json_t *v = bh_json_get(obj, name);

    *out = "";
    if (v == NULL || v->type == BH_JSON_NULL)
        return required ? BH_EINVAL : BH_OK;
    if (v->type != BH_JSON_STRING)
        return BH_EINVAL;
    *out = v->str;
    return BH_OK;
}

void bh_cl_balances_clear(bh_balances_t *b) {
    free((void *)b->assets);
    b->assets = NULL;
    b->asset_count = 0;
}

int bh_cl_balances_read(const bh_json_t *data, bh_balances_t *b, const char **err) {
    const bh_json_t *seq, *assets, *deleted;
    bh_asset_balance_t *list = NULL;
    int64_t sequence;
    size_t i = 0;

    memset(b, 0, sizeof(*b));
    if (data == NULL || data->type != BH_JSON_OBJECT) {
        *err = "data is not an object";
        goto fail;
    }
    if (read_string(data, "userId", 1, &b->user_id) != BH_OK) {
        *err = "data.userId is not a string";
        goto fail;
    }
    seq = bh_json_get(data, "sequence");
    if (seq == NULL || bh_json_int(seq, &sequence) != BH_OK || sequence < 0) {
        *err = "data.sequence is not a non-negative integer";
        goto fail;
    }
    b->sequence = (uint64_t)sequence;
    if (read_string(data, "baseCurrency", 0, &b->base_currency) != BH_OK) {
        *err = "data.baseCurrency is not a string";
        goto fail;
    }
    if (read_amount(data, "totalCurrentExposure", &b->total_current_exposure) != BH_OK ||
        read_amount(data, "totalMaxExposure", &b->total_max_exposure) != BH_OK) {
        *err = "a total in data is not an exact decimal within range";
        goto fail;
    }
    deleted = bh_json_get(data, "deleted");
    if (deleted && deleted->type != BH_JSON_NULL && deleted->type != BH_JSON_TRUE &&
        deleted->type != BH_JSON_FALSE) {
        *err = "data.deleted is not a boolean";
        goto fail;
    }
    b->deleted = deleted && deleted->type == BH_JSON_TRUE;
    assets = bh_json_get(data, "assets");
    if (assets == NULL || assets->type != BH_JSON_ARRAY) {
        *err = "data.assets is not an array";
        goto fail;
    }
    if (assets->count > 0 && !(list = calloc(assets->count, sizeof(*list)))) {
        *err = "out of memory";
        goto fail;
    }
    for (const bh_json_t *a = assets->child; a; a = a->next, i++) {
        bh_asset_balance_t *x = &list[i];
        if (a->type != BH_JSON_OBJECT || read_string(a, "name", 1, &x->name) != BH_OK) {
            *err = "an asset in data.assets has no name";
            goto fail;
        }
        if (read_amount(a, "available", &x->available) != BH_OK ||
            read_amount(a, "allocated", &x->allocated) != BH_OK ||
            read_amount(a, "currentExposure", &x->current_exposure) != BH_OK ||
            read_amount(a, "maxExposure", &x->max_exposure) != BH_OK) {
            *err = "an amount in data.assets is not an exact decimal within range";
            goto fail;
        }
    }
    b->assets = list;
    b->asset_count = i;
    return BH_OK;
fail:
    free(list);
    memset(b, 0, sizeof(*b));
    return BH_EINVAL;
}

static int put_str(bh_buf_t *out, const char *name, const char *v) {
    int r = bh_buf_printf(out, "\"%s\":", name);
    if (r == BH_OK && v)
        r = bh_json_write_str(out, v, strlen(v));
    else if (r == BH_OK)
        r = bh_buf_appends(out, "null");
    return r;
}

static int put_dec(bh_buf_t *out, const char *name, bh_decimal_t d) {
    char text[BH_DECIMAL_STRLEN];

    bh_decimal_to_string(d, text);
    return bh_buf_printf(out, ",\"%s\":%s", name, text);
}

static int write_json(bh_buf_t *out, const bh_balances_t *b) {
    int r = bh_buf_appendc(out, '{');

    if (r == BH_OK)
        r = put_str(out, "userId", b->user_id);
    if (r == BH_OK)
        r = bh_buf_printf(out, ",\"sequence\":%llu,\"assets\":[", (unsigned long long)b->sequence);
    for (size_t i = 0; r == BH_OK && i < b->asset_count; i++) {
        const bh_asset_balance_t *a = &b->assets[i];
        r = bh_buf_appends(out, i ? ",{" : "{");
        if (r == BH_OK)
            r = put_str(out, "name", a->name);
        if (r == BH_OK)
            r = put_dec(out, "available", a->available);
        if (r == BH_OK)
            r = put_dec(out, "allocated", a->allocated);
        if (r == BH_OK)
            r = put_dec(out, "currentExposure", a->current_exposure);
        if (r == BH_OK)
            r = put_dec(out, "maxExposure", a->max_exposure);
        if (r == BH_OK)
            r = bh_buf_appendc(out, '}');
    }
    if (r == BH_OK)
        r = bh_buf_appends(out, "],");
    if (r == BH_OK)
        r = put_str(out, "baseCurrency", b->base_currency);
    if (r == BH_OK)
        r = put_dec(out, "totalCurrentExposure", b->total_current_exposure);
    if (r == BH_OK)
        r = put_dec(out, "totalMaxExposure", b->total_max_exposure);
    if (r == BH_OK)
        r = bh_buf_printf(out, ",\"deleted\":%s}", b->deleted ? "true" : "false");
    return r;
}

size_t bh_balances_to_json(const bh_balances_t *b, char *out, size_t size) {
    bh_buf_t buf;
    size_t n = 0;

    bh_buf_init(&buf, 0);
    if (b != NULL && write_json(&buf, b) == BH_OK)
        n = buf.len;
    if (out != NULL && size > 0) {
        size_t k = n < size - 1 ? n : size - 1;
        if (k > 0)
            memcpy(out, buf.data, k);
        out[k] = '\0';
    }
    bh_buf_free(&buf);
    return n;
}

/* Copy s into the string area at *p (NULL stays NULL). */
static const char *put_copy(char **p, const char *s) {
    size_t n;
    char *at = *p;

    if (s == NULL)
        return NULL;
    n = strlen(s) + 1;
    memcpy(at, s, n);
    *p += n;
    return at;
}

static size_t str_size(const char *s) {
    return s ? strlen(s) + 1 : 0;
}

int bh_balances_dup(const bh_balances_t *b, bh_balances_t **out) {
    size_t size = sizeof(bh_balances_t), head;
    bh_balances_t *c;
    bh_asset_balance_t *assets;
    char *p;

    if (b == NULL || out == NULL || (b->asset_count > 0 && b->assets == NULL))
        return BH_CLIENT_EINVAL;
    /* one block: the struct, the asset array, then every string */
    if (b->asset_count > (SIZE_MAX / 2) / sizeof(bh_asset_balance_t))
        return BH_CLIENT_ENOMEM;
    size += b->asset_count * sizeof(bh_asset_balance_t);
    head = size;
    size += str_size(b->client_id) + str_size(b->user_id) + str_size(b->base_currency);
    for (size_t i = 0; i < b->asset_count; i++)
        size += str_size(b->assets[i].name);
    if (!(c = malloc(size)))
        return BH_CLIENT_ENOMEM;
    *c = *b;
    assets = (bh_asset_balance_t *)(c + 1);
    p = (char *)c + head;
    c->client_id = put_copy(&p, b->client_id);
    c->user_id = put_copy(&p, b->user_id);
    c->base_currency = put_copy(&p, b->base_currency);
    for (size_t i = 0; i < b->asset_count; i++) {
        assets[i] = b->assets[i];
        assets[i].name = put_copy(&p, b->assets[i].name);
    }
    c->assets = b->asset_count > 0 ? assets : NULL;
    *out = c;
    return BH_CLIENT_OK;
}

void bh_balances_free(bh_balances_t *b) {
    free(b);
}
