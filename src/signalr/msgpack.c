/* SignalR MessagePack hub protocol (HubProtocol.md): VarInt length-prefixed frames, each message
 * a MessagePack array. Inbound messages are transcoded into the JSON protocol's object form and
 * parsed by bh_sr_parse_message, so both protocols share one set of validation rules and hub
 * methods always see bh_json_t arguments.
 *
 * Numbers and their rounding (the documented rounding for amounts under MessagePack, SPEC 5):
 * - Outbound (write_invocation): a JSON integer (no fraction, no exponent) within
 *   [INT64_MIN, UINT64_MAX] becomes a MessagePack int, exactly, in its smallest encoding. Every
 *   other number (an amount with a fraction, or wider than 64 bits) becomes a float64 read by
 *   strtod from the exact decimal text: correctly rounded to the nearest double, ties to even.
 *   So 0.1 travels as the double nearest 0.1, and amounts keep 15-17 significant digits; a client
 *   that needs every digit of an amount uses the JSON protocol. Overflow to infinity is BH_ERANGE.
 *   The rule is base/mpnum.h's: the ledger packs a snapshot's cached MessagePack `data` by it,
 *   so those bytes equal what this transcoder makes of the snapshot's JSON.
 * - Inbound: ints are copied exactly; float32/float64 become the shortest decimal text that reads
 *   back to the same value, laid out as JavaScript's Number#toString does (what the JSON protocol
 *   carries for the same client call); NaN and infinities become null, as in JSON.stringify.
 *
 * Reading is hand-written rather than msgpack-c's unpacker: that unpacker allocates room for an
 * array's or map's claimed element count before reading any element, so a 5-byte header claiming
 * 2^32 elements would ask for ~100 GB. Here nothing is allocated per claimed element. Writing uses
 * msgpack-c's packer. */
#include "protocol.h"

#include <limits.h>
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/error.h"
#include "../base/mpnum.h"
#include "../base/spare.h"

/* Containers open at once, the message array included: the same limit as the JSON parser's, so
 * the transcoded text always parses. */
#define MP_MAX_DEPTH 64
/* Largest payload the VarInt framing allows (HubProtocol.md: 2 GB) that an int return can carry. */
#define MP_MAX_PAYLOAD ((size_t)INT_MAX - 5)

static const char *const ERR_MALFORMED = "Message is not valid MessagePack.";

/* ---- framing ---- */

static int frame(const char *data, size_t len, size_t max, const char **msg, size_t *msg_len) {
    const unsigned char *p = (const unsigned char *)data;
    uint64_t size = 0;
    size_t i = 0;
    for (;; i++) {
        if (i >= len)
            return 0;
        if (i == 4 && (p[i] & 0x80))
            return BH_EINVAL; /* a sixth length byte: longer than any length the spec allows */
        size |= (uint64_t)(p[i] & 0x7f) << (7 * i);
        /* The length only grows with more bytes, so this rejects before the payload arrives. */
        if (size > max || size > MP_MAX_PAYLOAD)
            return BH_ETOOBIG;
        if (!(p[i] & 0x80))
            break;
    }
    size_t prefix = i + 1;
    if (len - prefix < size)
        return 0;
    *msg = data + prefix;
    *msg_len = (size_t)size;
    return (int)(prefix + (size_t)size);
}

static size_t varint(size_t n, unsigned char out[5]) {
    size_t k = 0;
    do {
        unsigned char b = n & 0x7f;
        n >>= 7;
        out[k++] = n ? (unsigned char)(b | 0x80) : b;
    } while (n && k < 5);
    return k;
}

/* ---- reading ---- */

enum { MP_NIL, MP_BOOL, MP_UINT, MP_INT, MP_F32, MP_F64, MP_STR, MP_BIN, MP_EXT, MP_ARRAY, MP_MAP };

typedef struct {
    const unsigned char *p, *end;
    const char *err; /* static text when a read fails with BH_EINVAL */
} rd_t;

typedef struct {
    int kind;
    uint64_t u;    /* UINT, BOOL */
    int64_t i;     /* INT (always negative: non-negative ints are UINT) */
    double d;      /* F32 (exactly widened), F64 */
    const char *s; /* STR, BIN, EXT: the bytes (for EXT without the type byte) */
    size_t n;      /* STR, BIN, EXT: byte count; ARRAY, MAP: element or pair count */
} item_t;

static int bad(rd_t *r, const char *err) {
    r->err = err;
    return BH_EINVAL;
}

static uint64_t be(const unsigned char *p, size_t n) {
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* Take n bytes from the input: NULL when fewer remain. */
static const unsigned char *take(rd_t *r, size_t n) {
    if ((size_t)(r->end - r->p) < n)
        return NULL;
    const unsigned char *at = r->p;
    r->p += n;
    return at;
}

/* Read one item's header; a STR/BIN/EXT body is consumed too, container elements are not. */
static int read_item(rd_t *r, item_t *it) {
    static const unsigned char fixed_ext[] = {1, 2, 4, 8, 16};
    memset(it, 0, sizeof *it);
    const unsigned char *h = take(r, 1), *q;
    if (!h)
        return bad(r, ERR_MALFORMED);
    unsigned c = *h;
    size_t body = 0, w;
    if (c <= 0x7f) {
        it->kind = MP_UINT;
        it->u = c;
        return BH_OK;
    }
    if (c >= 0xe0) {
        it->kind = MP_INT;
        it->i = (int8_t)c;
        return BH_OK;
    }
    if (c <= 0x8f || (c >= 0x90 && c <= 0x9f)) {
        it->kind = c <= 0x8f ? MP_MAP : MP_ARRAY;
        it->n = c & 0x0f;
        return BH_OK;
    }
    if (c >= 0xa0 && c <= 0xbf) {
        it->kind = MP_STR;
        body = c & 0x1f;
        goto body;
    }
    switch (c) {
    case 0xc0:
        it->kind = MP_NIL;
        return BH_OK;
    case 0xc2:
    case 0xc3:
        it->kind = MP_BOOL;
        it->u = c == 0xc3;
        return BH_OK;
    case 0xc4: /* bin 8/16/32 */
    case 0xc5:
    case 0xc6:
    case 0xd9: /* str 8/16/32 */
    case 0xda:
    case 0xdb:
        it->kind = c <= 0xc6 ? MP_BIN : MP_STR;
        w = (size_t)1 << (c <= 0xc6 ? c - 0xc4 : c - 0xd9);
        if (!(q = take(r, w)))
            return bad(r, ERR_MALFORMED);
        body = (size_t)be(q, w);
        goto body;
    case 0xc7: /* ext 8/16/32: length, type, data */
    case 0xc8:
    case 0xc9:
        it->kind = MP_EXT;
        w = (size_t)1 << (c - 0xc7);
        if (!(q = take(r, w)))
            return bad(r, ERR_MALFORMED);
        body = (size_t)be(q, w);
        if (!take(r, 1))
            return bad(r, ERR_MALFORMED);
        goto body;
    case 0xca:
    case 0xcb: {
        w = c == 0xca ? 4 : 8;
        if (!(q = take(r, w)))
            return bad(r, ERR_MALFORMED);
        uint64_t bits = be(q, w);
        if (w == 4) {
            uint32_t b32 = (uint32_t)bits;
            float f;
            memcpy(&f, &b32, sizeof f);
            it->kind = MP_F32;
            it->d = f;
        } else {
            it->kind = MP_F64;
            memcpy(&it->d, &bits, sizeof it->d);
        }
        return BH_OK;
    }
    case 0xcc: /* uint 8/16/32/64 */
    case 0xcd:
    case 0xce:
    case 0xcf:
        w = (size_t)1 << (c - 0xcc);
        if (!(q = take(r, w)))
            return bad(r, ERR_MALFORMED);
        it->kind = MP_UINT;
        it->u = be(q, w);
        return BH_OK;
    case 0xd0: /* int 8/16/32/64 */
    case 0xd1:
    case 0xd2:
    case 0xd3: {
        w = (size_t)1 << (c - 0xd0);
        if (!(q = take(r, w)))
            return bad(r, ERR_MALFORMED);
        uint64_t u = be(q, w);
        int64_t v;
        if (w == 1)
            v = (int8_t)u;
        else if (w == 2)
            v = (int16_t)u;
        else if (w == 4)
            v = (int32_t)u;
        else
            v = (int64_t)u;
        if (v >= 0) {
            it->kind = MP_UINT;
            it->u = (uint64_t)v;
        } else {
            it->kind = MP_INT;
            it->i = v;
        }
        return BH_OK;
    }
    case 0xd4: /* fixext 1/2/4/8/16: type, data */
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
        it->kind = MP_EXT;
        body = fixed_ext[c - 0xd4];
        if (!take(r, 1))
            return bad(r, ERR_MALFORMED);
        goto body;
    case 0xdc: /* array 16/32, map 16/32 */
    case 0xdd:
    case 0xde:
    case 0xdf:
        it->kind = c <= 0xdd ? MP_ARRAY : MP_MAP;
        w = c == 0xdc || c == 0xde ? 2 : 4;
        if (!(q = take(r, w)))
            return bad(r, ERR_MALFORMED);
        it->n = (size_t)be(q, w);
        return BH_OK;
    default: /* 0xc1: never used */
        return bad(r, ERR_MALFORMED);
    }
body:
    if (!(q = take(r, body)))
        return bad(r, ERR_MALFORMED);
    it->s = (const char *)q;
    it->n = body;
    return BH_OK;
}

/* Skip one complete value (any type), checking it is well-formed. */
static int skip_value(rd_t *r, int depth) {
    item_t it;
    int rc = read_item(r, &it);
    if (rc)
        return rc;
    if (it.kind != MP_ARRAY && it.kind != MP_MAP)
        return BH_OK;
    if (depth >= MP_MAX_DEPTH)
        return bad(r, "Message nesting is too deep.");
    /* Each element takes at least one byte: a count past the input fails on the first missing
     * element, after at most as many steps as there are bytes. */
    for (size_t i = 0; i < it.n; i++) {
        if ((rc = skip_value(r, depth + 1)) ||
            (it.kind == MP_MAP && (rc = skip_value(r, depth + 1))))
            return rc;
    }
    return BH_OK;
}

/* Append v as the shortest decimal that reads back as v (as a float when single), in the layout
 * of JavaScript's Number#toString; NaN and infinities as null. */
static int write_double(bh_buf_t *out, double v, int single) {
    if (!isfinite(v))
        return bh_buf_appends(out, "null");
    if (v == 0)
        return bh_buf_appendc(out, '0');
    char e[40], digits[24], text[48];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(e, sizeof e, "%.*e", prec - 1, v);
        if (single ? strtof(e, NULL) == (float)v : strtod(e, NULL) == v)
            break;
    }
    /* e is "[-]d[.ddd]e(+|-)xx": collect the digits and the decimal exponent. */
    const char *s = e;
    int neg = *s == '-', k = 0;
    s += neg;
    for (; *s != 'e'; s++)
        if (*s != '.')
            digits[k++] = *s;
    while (k > 1 && digits[k - 1] == '0')
        k--;
    int n = atoi(s + 1) + 1; /* the point sits after n digits */
    size_t o = 0;
    if (neg)
        text[o++] = '-';
    if (k <= n && n <= 21) {
        memcpy(text + o, digits, (size_t)k);
        o += (size_t)k;
        for (int i = k; i < n; i++)
            text[o++] = '0';
    } else if (0 < n && n <= 21) {
        memcpy(text + o, digits, (size_t)n);
        o += (size_t)n;
        text[o++] = '.';
        memcpy(text + o, digits + n, (size_t)(k - n));
        o += (size_t)(k - n);
    } else if (-6 < n && n <= 0) {
        text[o++] = '0';
        text[o++] = '.';
        for (int i = n; i < 0; i++)
            text[o++] = '0';
        memcpy(text + o, digits, (size_t)k);
        o += (size_t)k;
    } else {
        text[o++] = digits[0];
        if (k > 1) {
            text[o++] = '.';
            memcpy(text + o, digits + 1, (size_t)(k - 1));
            o += (size_t)(k - 1);
        }
        o +=
            (size_t)snprintf(text + o, sizeof text - o, "e%c%d", n - 1 < 0 ? '-' : '+', abs(n - 1));
    }
    return bh_buf_append(out, text, o);
}

static int write_str(rd_t *r, bh_buf_t *out, const item_t *it) {
    if (!bh_utf8_valid(it->s, it->n))
        return bad(r, "String is not valid UTF-8.");
    return bh_json_write_str(out, it->s, it->n);
}

/* Transcode one value into JSON text; depth counts the containers already open around it. */
static int to_json(rd_t *r, bh_buf_t *out, int depth) {
    item_t it;
    int rc = read_item(r, &it);
    if (rc)
        return rc;
    switch (it.kind) {
    case MP_NIL:
        return bh_buf_appends(out, "null");
    case MP_BOOL:
        return bh_buf_appends(out, it.u ? "true" : "false");
    case MP_UINT:
        return bh_buf_printf(out, "%llu", (unsigned long long)it.u);
    case MP_INT:
        return bh_buf_printf(out, "%lld", (long long)it.i);
    case MP_F32:
    case MP_F64:
        return write_double(out, it.d, it.kind == MP_F32);
    case MP_STR:
        return write_str(r, out, &it);
    case MP_BIN:
    case MP_EXT:
        return bad(r, "Binary arguments are not supported.");
    default:
        break;
    }
    if (depth >= MP_MAX_DEPTH)
        return bad(r, "Message nesting is too deep.");
    int map = it.kind == MP_MAP;
    if ((rc = bh_buf_appendc(out, map ? '{' : '[')))
        return rc;
    for (size_t i = 0; i < it.n; i++) {
        if (i && (rc = bh_buf_appendc(out, ',')))
            return rc;
        if (map) {
            item_t key;
            if ((rc = read_item(r, &key)))
                return rc;
            if (key.kind != MP_STR)
                return bad(r, "Map keys must be strings.");
            if ((rc = write_str(r, out, &key)) || (rc = bh_buf_appendc(out, ':')))
                return rc;
        }
        if ((rc = to_json(r, out, depth + 1)))
            return rc;
    }
    return bh_buf_appendc(out, map ? '}' : ']');
}

/* Headers: a map of string to string, read and dropped (no header means anything to us). */
static int read_headers(rd_t *r) {
    item_t it, s;
    int rc = read_item(r, &it);
    if (rc)
        return rc;
    if (it.kind != MP_MAP)
        return bad(r, "Invalid headers.");
    for (size_t i = 0; i < 2 * it.n; i++) {
        if ((rc = read_item(r, &s)))
            return rc;
        if (s.kind != MP_STR)
            return bad(r, "Invalid headers.");
        if (!bh_utf8_valid(s.s, s.n))
            return bad(r, "String is not valid UTF-8.");
    }
    return BH_OK;
}

/* An id or target: nil and "" are both absent (ASP.NET treats an empty invocation id as none). */
static int opt_string_field(rd_t *r, bh_buf_t *out, const char *name) {
    rd_t peek = *r;
    item_t it;
    int rc = read_item(&peek, &it);
    if (rc)
        return bad(r, peek.err);
    if (it.kind == MP_NIL || (it.kind == MP_STR && it.n == 0)) {
        r->p = peek.p;
        return BH_OK;
    }
    if ((rc = bh_buf_printf(out, ",\"%s\":", name)))
        return rc;
    return to_json(r, out, 1);
}

static int field(rd_t *r, bh_buf_t *out, const char *name) {
    int rc = bh_buf_printf(out, ",\"%s\":", name);
    return rc ? rc : to_json(r, out, 1);
}

/* The message array's items after the type, as JSON members; returns how many it consumed. */
static int message_fields(rd_t *r, bh_buf_t *out, uint64_t type, size_t count, size_t *used) {
    static const struct {
        size_t min;
        const char *err;
    } shape[] = {
        [BH_SR_INVOCATION] = {5, "Invalid payload for Invocation message."},
        [BH_SR_STREAM_ITEM] = {4, "Invalid payload for StreamItem message."},
        [BH_SR_COMPLETION] = {4, "Invalid payload for Completion message."},
        [BH_SR_STREAM_INVOCATION] = {5, "Invalid payload for StreamInvocation message."},
        [BH_SR_CANCEL_INVOCATION] = {3, "Invalid payload for CancelInvocation message."},
        [BH_SR_PING] = {1, NULL},
        [BH_SR_CLOSE] = {2, "Invalid payload for Close message."},
        [BH_SR_ACK] = {2, "Invalid payload for Ack message."},
        [BH_SR_SEQUENCE] = {2, "Invalid payload for Sequence message."},
    };
    int rc = BH_OK;
    *used = 1;
    if (type < 1 || type > BH_SR_SEQUENCE)
        return BH_OK; /* unknown: the rest is skipped */
    if (count < shape[type].min)
        return bad(r, shape[type].err);
    switch (type) {
    case BH_SR_INVOCATION:
    case BH_SR_STREAM_INVOCATION:
        if ((rc = read_headers(r)) || (rc = opt_string_field(r, out, "invocationId")) ||
            (rc = opt_string_field(r, out, "target")) || (rc = field(r, out, "arguments")))
            return rc;
        *used = 5;
        if (count > 5) {
            rc = field(r, out, "streamIds");
            *used = 6;
        }
        return rc;
    case BH_SR_STREAM_ITEM:
        if ((rc = read_headers(r)) || (rc = opt_string_field(r, out, "invocationId")) ||
            (rc = field(r, out, "item")))
            return rc;
        *used = 4;
        return BH_OK;
    case BH_SR_COMPLETION: {
        item_t kind;
        if ((rc = read_headers(r)) || (rc = opt_string_field(r, out, "invocationId")) ||
            (rc = read_item(r, &kind)))
            return rc;
        *used = 4;
        if (kind.kind != MP_UINT || kind.u < 1 || kind.u > 3)
            return bad(r, "Invalid invocation result kind.");
        if (kind.u == 2)
            return BH_OK; /* void */
        if (count < 5)
            return bad(r, shape[type].err);
        *used = 5;
        return field(r, out, kind.u == 1 ? "error" : "result");
    }
    case BH_SR_CANCEL_INVOCATION:
        if ((rc = read_headers(r)) || (rc = opt_string_field(r, out, "invocationId")))
            return rc;
        *used = 3;
        return BH_OK;
    case BH_SR_CLOSE:
        if ((rc = field(r, out, "error")))
            return rc;
        *used = 2;
        if (count > 2) {
            rc = field(r, out, "allowReconnect");
            *used = 3;
        }
        return rc;
    case BH_SR_ACK:
    case BH_SR_SEQUENCE:
        *used = 2;
        return field(r, out, "sequenceId");
    default:
        return BH_OK; /* Ping */
    }
}

static int parse(const char *msg, size_t len, bh_json_doc_t **doc, bh_sr_msg_t *out,
                 const char **err) {
    rd_t r = {(const unsigned char *)msg, (const unsigned char *)msg + len, NULL};
    bh_buf_t json;
    item_t arr, type;
    size_t used = 1;
    int rc;
    memset(out, 0, sizeof *out);
    *doc = NULL;
    bh_buf_init(&json, 0);
    /* The transcoded text lives only during this call: this thread's spare block serves it. */
    json.data = bh_spare_take(BH_SPARE_MSGPACK, len * 2 + 64, &json.cap);
    if (json.data)
        json.data[0] = 0;
    if (len == 0) {
        rc = bad(&r, "Message is empty.");
        goto fail;
    }
    if ((rc = read_item(&r, &arr)))
        goto fail;
    if (arr.kind != MP_ARRAY) {
        rc = bad(&r, "Message is not a MessagePack array.");
        goto fail;
    }
    if ((rc = bh_buf_appendc(&json, '{')))
        goto fail;
    if (arr.n > 0) {
        /* The type is transcoded as it is, so a non-integer gets the JSON protocol's error. */
        rd_t peek = r;
        if ((rc = read_item(&peek, &type)) || (rc = bh_buf_appends(&json, "\"type\":")) ||
            (rc = to_json(&r, &json, 1)))
            goto fail;
        if (type.kind == MP_UINT && (rc = message_fields(&r, &json, type.u, arr.n, &used)))
            goto fail;
        for (size_t i = used; i < arr.n; i++) /* items a later version may add */
            if ((rc = skip_value(&r, 1)))
                goto fail;
    }
    if (r.p != r.end) {
        rc = bad(&r, "Message has bytes after its MessagePack array.");
        goto fail;
    }
    if ((rc = bh_buf_appendc(&json, '}')))
        goto fail;
    rc = bh_sr_parse_message(json.data, json.len, doc, out, err);
    bh_spare_give(BH_SPARE_MSGPACK, json.data, json.cap);
    return rc;
fail:
    if (rc == BH_EINVAL)
        *err = r.err ? r.err : ERR_MALFORMED;
    else
        *err = bh_strerror(rc);
    bh_spare_give(BH_SPARE_MSGPACK, json.data, json.cap);
    return rc;
}

/* ---- writing ---- */

static int buf_write(void *data, const char *p, size_t n) {
    return bh_buf_append(data, p, n);
}

/* Writers pack the payload straight into b after its current end, then slide it up to make
 * room for the VarInt length. On failure b is as it was. */
static int finish(bh_buf_t *b, size_t start, int rc) {
    size_t n = b->len - start;
    unsigned char prefix[5];
    size_t k = varint(n, prefix);
    if (rc == 0 && n > 0x7fffffff)
        rc = BH_ETOOBIG;
    if (rc == 0)
        rc = bh_buf_reserve(b, k);
    if (rc == 0) {
        memmove(b->data + start + k, b->data + start, n);
        memcpy(b->data + start, prefix, k);
        b->len += k;
        b->data[b->len] = '\0';
        return BH_OK;
    }
    b->len = start;
    if (b->data)
        b->data[start] = '\0';
    return rc;
}

static int pack_cstr(msgpack_packer *pk, const char *s) {
    size_t n = strlen(s);
    int rc = msgpack_pack_str(pk, n);
    return rc ? rc : msgpack_pack_str_body(pk, s, n);
}

/* A JSON number: base/mpnum.h's rule (see the file header), which the ledger's cached
 * MessagePack snapshots follow too. */
static int pack_number(msgpack_packer *pk, const bh_json_t *v) {
    return bh_mpnum_pack(pk, v->str, v->len);
}

static int pack_json(msgpack_packer *pk, const bh_json_t *v) {
    int rc;
    switch (v->type) {
    case BH_JSON_NULL:
        return msgpack_pack_nil(pk);
    case BH_JSON_FALSE:
        return msgpack_pack_false(pk);
    case BH_JSON_TRUE:
        return msgpack_pack_true(pk);
    case BH_JSON_NUMBER:
        return pack_number(pk, v);
    case BH_JSON_STRING:
        rc = msgpack_pack_str(pk, v->len);
        return rc ? rc : msgpack_pack_str_body(pk, v->str, v->len);
    case BH_JSON_ARRAY:
        if ((rc = msgpack_pack_array(pk, v->count)))
            return rc;
        for (const bh_json_t *c = v->child; c; c = c->next)
            if ((rc = pack_json(pk, c)))
                return rc;
        return BH_OK;
    case BH_JSON_OBJECT:
        if ((rc = msgpack_pack_map(pk, v->count)))
            return rc;
        for (const bh_json_t *c = v->child; c; c = c->next) {
            if ((rc = msgpack_pack_str(pk, c->key_len)) ||
                (rc = msgpack_pack_str_body(pk, c->key, c->key_len)) || (rc = pack_json(pk, c)))
                return rc;
        }
        return BH_OK;
    }
    return BH_EINVAL;
}

/* [3, {}, id, 1, error] or [3, {}, id, 3, nil]: ASP.NET completes a method that returns nothing
 * with a null result (as the JSON protocol's "result":null), not with the void kind 2. */
static int write_completion(bh_buf_t *b, const char *invocation_id, const char *error) {
    size_t start = b->len;
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, buf_write);
    int rc = msgpack_pack_array(&pk, 5);
    if (!rc && !(rc = msgpack_pack_int(&pk, BH_SR_COMPLETION)) && !(rc = msgpack_pack_map(&pk, 0)))
        rc = pack_cstr(&pk, invocation_id);
    if (!rc && error && !(rc = msgpack_pack_int(&pk, 1)))
        rc = pack_cstr(&pk, error);
    else if (!rc && !error && !(rc = msgpack_pack_int(&pk, 3)))
        rc = msgpack_pack_nil(&pk);
    return finish(b, start, rc);
}

/* [1, {}, nil, target, [arg], []]: the layout the ASP.NET server sends (six items). */
static int write_invocation(bh_buf_t *b, const char *target, const char *arg_json, size_t len) {
    size_t start = b->len;
    bh_json_doc_t *doc = NULL;
    msgpack_packer pk;
    int rc = bh_json_parse(arg_json, len, MP_MAX_DEPTH, &doc);
    if (rc)
        goto fail;
    msgpack_packer_init(&pk, b, buf_write);
    if (!(rc = msgpack_pack_array(&pk, 6)) && !(rc = msgpack_pack_int(&pk, BH_SR_INVOCATION)) &&
        !(rc = msgpack_pack_map(&pk, 0)) && !(rc = msgpack_pack_nil(&pk)) &&
        !(rc = pack_cstr(&pk, target)) && !(rc = msgpack_pack_array(&pk, 1)) &&
        !(rc = pack_json(&pk, bh_json_root(doc))))
        rc = msgpack_pack_array(&pk, 0);
    rc = finish(b, start, rc);
fail:
    bh_json_free(doc);
    return rc;
}

/* The same message with its argument given as MessagePack bytes (a snapshot's envelope built
 * once for many connections): copied in as they are, nothing parsed. */
static int write_invocation_encoded(bh_buf_t *b, const char *target, const char *arg, size_t len) {
    size_t start = b->len;
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, buf_write);
    int rc = msgpack_pack_array(&pk, 6);
    if (!rc && !(rc = msgpack_pack_int(&pk, BH_SR_INVOCATION)) &&
        !(rc = msgpack_pack_map(&pk, 0)) && !(rc = msgpack_pack_nil(&pk)) &&
        !(rc = pack_cstr(&pk, target)) && !(rc = msgpack_pack_array(&pk, 1)) &&
        !(rc = bh_buf_append(b, arg, len)))
        rc = msgpack_pack_array(&pk, 0);
    return finish(b, start, rc);
}

static int write_ping(bh_buf_t *b) {
    return bh_buf_append(b, "\x02\x91\x06", 3); /* always exactly [6] */
}

/* [7, error or nil, allowReconnect]: an empty error is nil, as ASP.NET writes it. */
static int write_close(bh_buf_t *b, const char *error, int allow_reconnect) {
    size_t start = b->len;
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, buf_write);
    int rc = msgpack_pack_array(&pk, 3);
    if (!rc)
        rc = msgpack_pack_int(&pk, BH_SR_CLOSE);
    if (!rc)
        rc = error && *error ? pack_cstr(&pk, error) : msgpack_pack_nil(&pk);
    if (!rc)
        rc = allow_reconnect ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk);
    return finish(b, start, rc);
}

static int write_seq(bh_buf_t *b, int type, uint64_t sequence_id) {
    size_t start = b->len;
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, buf_write);
    int rc = msgpack_pack_array(&pk, 2);
    if (!rc)
        rc = msgpack_pack_int(&pk, type);
    if (!rc)
        rc = msgpack_pack_uint64(&pk, sequence_id);
    return finish(b, start, rc);
}

static int write_ack(bh_buf_t *b, uint64_t sequence_id) {
    return write_seq(b, BH_SR_ACK, sequence_id);
}

static int write_sequence(bh_buf_t *b, uint64_t sequence_id) {
    return write_seq(b, BH_SR_SEQUENCE, sequence_id);
}

const bh_sr_protocol_t bh_sr_msgpack_protocol = {
    .name = "messagepack",
    .version = 2,
    .binary = 1,
    .frame = frame,
    .parse = parse,
    .write_completion = write_completion,
    .write_invocation = write_invocation,
    .write_invocation_encoded = write_invocation_encoded,
    .write_ping = write_ping,
    .write_close = write_close,
    .write_ack = write_ack,
    .write_sequence = write_sequence,
};
