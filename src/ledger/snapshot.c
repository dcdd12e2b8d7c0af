/* Immutable, reference-counted balance snapshots. The `data` object is serialized once when the
 * snapshot is built, as JSON and as MessagePack, so every reader afterwards only copies bytes
 * whichever hub protocol its connection speaks. */
#include "snapshot.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../base/buf.h"
#include "../base/error.h"
#include "../base/json.h"
#include "../base/mpnum.h"

/* Appenders with a sticky error: after the first failure the rest do nothing. */
static void put_s(bh_buf_t *b, const char *s, int *rc) {
    if (*rc == BH_OK)
        *rc = bh_buf_appends(b, s);
}

static void put_str(bh_buf_t *b, const char *s, int *rc) {
    if (*rc == BH_OK)
        *rc = bh_json_write_str(b, s, strlen(s));
}

static void put_dec(bh_buf_t *b, const char *name, bh_dec_t d, int *rc) {
    char num[BH_DEC_STRLEN];
    size_t n = bh_dec_format(d, num);
    put_s(b, name, rc);
    if (*rc == BH_OK)
        *rc = bh_buf_append(b, num, n);
}

size_t bh_snapshot_u64(uint64_t v, char out[20]) {
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

static int format_json(const bh_snapshot_t *s, bh_buf_t *b) {
    char seq[20];
    int rc;

    /* Room for the usual case up front (ids need no escaping, decimals are short), so the
     * appends below rarely grow the buffer. */
    rc = bh_buf_reserve(b, 160 + strlen(s->user_id) + s->nassets * 160);
    put_s(b, "{\"userId\":", &rc);
    put_str(b, s->user_id, &rc);
    put_s(b, ",\"sequence\":", &rc);
    if (rc == BH_OK)
        rc = bh_buf_append(b, seq, bh_snapshot_u64(s->sequence, seq));
    put_s(b, ",\"assets\":[", &rc);
    for (size_t i = 0; i < s->nassets; i++) {
        const bh_asset_t *a = &s->assets[i];
        put_s(b, i > 0 ? ",{\"name\":" : "{\"name\":", &rc);
        put_str(b, a->name, &rc);
        put_dec(b, ",\"available\":", a->available, &rc);
        put_dec(b, ",\"allocated\":", a->allocated, &rc);
        put_dec(b, ",\"currentExposure\":", a->current_exposure, &rc);
        put_dec(b, ",\"maxExposure\":", a->max_exposure, &rc);
        put_s(b, "}", &rc);
    }
    put_s(b, "],\"baseCurrency\":", &rc);
    put_str(b, s->base_currency, &rc);
    put_dec(b, ",\"totalCurrentExposure\":", s->total_current_exposure, &rc);
    put_dec(b, ",\"totalMaxExposure\":", s->total_max_exposure, &rc);
    put_s(b, s->deleted ? ",\"deleted\":true}" : ",\"deleted\":false}", &rc);
    return rc;
}

/* ---- MessagePack: what the SignalR transcoder makes of format_json's text, built directly ----
 * Same members in the same order, strings as str, numbers by base/mpnum.h's rule on the same
 * decimal text; the packer writes straight into the buffer and its errors stick in *rc. */

static int mp_write(void *data, const char *p, size_t n) {
    return bh_buf_append(data, p, n);
}

static void mp_str(msgpack_packer *pk, const char *s, int *rc) {
    if (*rc == BH_OK)
        *rc = msgpack_pack_str_with_body(pk, s, strlen(s));
}

static void mp_num(msgpack_packer *pk, const char *text, size_t n, int *rc) {
    if (*rc == BH_OK)
        *rc = bh_mpnum_pack(pk, text, n);
}

static void mp_dec(msgpack_packer *pk, const char *name, bh_dec_t d, int *rc) {
    char num[BH_DEC_STRLEN];
    size_t n = bh_dec_format(d, num);
    mp_str(pk, name, rc);
    mp_num(pk, num, n, rc);
}

static int format_mp(const bh_snapshot_t *s, bh_buf_t *b) {
    msgpack_packer pk;
    char seq[21];
    int rc = BH_OK;

    msgpack_packer_init(&pk, b, mp_write);
    seq[bh_snapshot_u64(s->sequence, seq)] = '\0';
    if ((rc = msgpack_pack_map(&pk, 7)) == BH_OK)
        mp_str(&pk, "userId", &rc);
    mp_str(&pk, s->user_id, &rc);
    mp_str(&pk, "sequence", &rc);
    mp_num(&pk, seq, strlen(seq), &rc);
    mp_str(&pk, "assets", &rc);
    if (rc == BH_OK)
        rc = msgpack_pack_array(&pk, s->nassets);
    for (size_t i = 0; i < s->nassets; i++) {
        const bh_asset_t *a = &s->assets[i];
        if (rc == BH_OK)
            rc = msgpack_pack_map(&pk, 5);
        mp_str(&pk, "name", &rc);
        mp_str(&pk, a->name, &rc);
        mp_dec(&pk, "available", a->available, &rc);
        mp_dec(&pk, "allocated", a->allocated, &rc);
        mp_dec(&pk, "currentExposure", a->current_exposure, &rc);
        mp_dec(&pk, "maxExposure", a->max_exposure, &rc);
    }
    mp_str(&pk, "baseCurrency", &rc);
    mp_str(&pk, s->base_currency, &rc);
    mp_dec(&pk, "totalCurrentExposure", s->total_current_exposure, &rc);
    mp_dec(&pk, "totalMaxExposure", s->total_max_exposure, &rc);
    mp_str(&pk, "deleted", &rc);
    if (rc == BH_OK)
        rc = s->deleted ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk);
    return rc;
}

/* The assets live in the same allocation as the snapshot (see bh_snapshot_new). */
static void snapshot_free(bh_snapshot_t *s) {
    free(s->json);
    free(s);
}

/* Copy a NUL-terminated string into a field of cap bytes, truncating like snprintf. */
static void copy_field(char *dst, size_t cap, const char *src) {
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

int bh_snapshot_new(const char *user_id, uint64_t sequence, const char *base_currency,
                    bh_dec_t total_current_exposure, bh_dec_t total_max_exposure, bool deleted,
                    const bh_asset_t *assets, size_t n, bh_snapshot_t **out) {
    bh_snapshot_t *s;
    bh_buf_t b;
    size_t json_len;
    int rc;

    *out = NULL;
    if (n > (SIZE_MAX - sizeof(*s)) / sizeof(*assets))
        return BH_ENOMEM;
    /* One allocation for the snapshot and its assets (published once per change). */
    s = calloc(1, sizeof(*s) + n * sizeof(*assets));
    if (s == NULL)
        return BH_ENOMEM;
    atomic_init(&s->refs, 1);
    copy_field(s->user_id, sizeof(s->user_id), user_id);
    copy_field(s->base_currency, sizeof(s->base_currency), base_currency);
    s->sequence = sequence;
    s->total_current_exposure = total_current_exposure;
    s->total_max_exposure = total_max_exposure;
    s->deleted = deleted;
    if (n > 0) {
        s->assets = (bh_asset_t *)(s + 1);
        memcpy(s->assets, assets, n * sizeof(*s->assets));
    }
    s->nassets = n;
    bh_buf_init(&b, 0);
    /* JSON, its NUL, then the MessagePack bytes: one buffer, whose storage (malloc'd) becomes
     * the snapshot's. The MessagePack form is about as long as the JSON: reserved up front. */
    rc = format_json(s, &b);
    json_len = b.len;
    if (rc == BH_OK)
        rc = bh_buf_appendc(&b, '\0');
    if (rc == BH_OK)
        rc = bh_buf_reserve(&b, json_len + 64);
    if (rc == BH_OK)
        rc = format_mp(s, &b);
    if (rc != BH_OK) {
        bh_buf_free(&b);
        snapshot_free(s);
        return rc;
    }
    s->json = b.data;
    s->json_len = json_len;
    s->mp = b.data + json_len + 1;
    s->mp_len = b.len - json_len - 1;
    *out = s;
    return BH_OK;
}

bh_snapshot_t *bh_snapshot_acquire(const bh_snapshot_t *s) {
    bh_snapshot_t *m = (bh_snapshot_t *)s;
    if (m != NULL)
        atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
    return m;
}

void bh_snapshot_release(bh_snapshot_t *s) {
    /* acq_rel: the last releaser must see every write made through other references. */
    if (s != NULL && atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
        snapshot_free(s);
}
