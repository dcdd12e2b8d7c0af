/* Helpers shared by the fuzz harnesses: writing, comparing and checking bh_json_t trees. */
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "fuzz.h"

static int numbers_equal(const bh_json_t *a, const bh_json_t *b, int loose) {
    if (a->len == b->len && memcmp(a->str, b->str, a->len) == 0)
        return 1;
    return loose && strtod(a->str, NULL) == strtod(b->str, NULL);
}

int fuzz_json_equal(const bh_json_t *a, const bh_json_t *b, int loose_numbers) {
    const bh_json_t *x, *y;

    if (a->type != b->type)
        return 0;
    switch (a->type) {
    case BH_JSON_NUMBER:
        return numbers_equal(a, b, loose_numbers);
    case BH_JSON_STRING:
        return a->len == b->len && memcmp(a->str, b->str, a->len) == 0;
    case BH_JSON_ARRAY:
    case BH_JSON_OBJECT:
        if (a->count != b->count)
            return 0;
        for (x = a->child, y = b->child; x != NULL && y != NULL; x = x->next, y = y->next) {
            if (a->type == BH_JSON_OBJECT &&
                (x->key_len != y->key_len || memcmp(x->key, y->key, x->key_len) != 0))
                return 0;
            if (!fuzz_json_equal(x, y, loose_numbers))
                return 0;
        }
        return x == NULL && y == NULL;
    default:
        return 1;
    }
}

size_t fuzz_json_depth(const bh_json_t *v) {
    size_t d = 0, cd;
    const bh_json_t *c;

    if (v->type != BH_JSON_ARRAY && v->type != BH_JSON_OBJECT)
        return 0;
    for (c = v->child; c != NULL; c = c->next)
        if ((cd = fuzz_json_depth(c)) > d)
            d = cd;
    return d + 1;
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static int json_number_text(const char *s, size_t n) {
    size_t i = 0, d;

    if (i < n && s[i] == '-')
        i++;
    if (i < n && s[i] == '0') {
        i++;
    } else {
        for (d = 0; i < n && s[i] >= '0' && s[i] <= '9'; i++)
            d++;
        if (d == 0)
            return 0;
    }
    if (i < n && s[i] == '.') {
        for (i++, d = 0; i < n && s[i] >= '0' && s[i] <= '9'; i++)
            d++;
        if (d == 0)
            return 0;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        for (d = 0; i < n && s[i] >= '0' && s[i] <= '9'; i++)
            d++;
        if (d == 0)
            return 0;
    }
    return i == n;
}

static void check_node(const bh_json_t *v, int in_object) {
    const bh_json_t *c;
    size_t n = 0;

    FUZZ_CHECK(v->type >= BH_JSON_NULL && v->type <= BH_JSON_OBJECT);
    if (in_object) {
        FUZZ_CHECK(v->key != NULL && v->key[v->key_len] == '\0');
        FUZZ_CHECK(bh_utf8_valid(v->key, v->key_len));
    } else {
        FUZZ_CHECK(v->key == NULL && v->key_len == 0);
    }
    switch (v->type) {
    case BH_JSON_STRING:
        FUZZ_CHECK(v->str != NULL && v->str[v->len] == '\0' && bh_utf8_valid(v->str, v->len));
        break;
    case BH_JSON_NUMBER:
        FUZZ_CHECK(v->str != NULL && v->str[v->len] == '\0' && json_number_text(v->str, v->len));
        break;
    case BH_JSON_ARRAY:
    case BH_JSON_OBJECT:
        for (c = v->child; c != NULL; c = c->next) {
            if (v->type == BH_JSON_ARRAY && n < 64) /* bh_json_at walks the list */
                FUZZ_CHECK(bh_json_at(v, n) == c);
            check_node(c, v->type == BH_JSON_OBJECT);
            /* bh_json_get finds the first member of a name (names without NUL only) */
            if (v->type == BH_JSON_OBJECT && strlen(c->key) == c->key_len) {
                const bh_json_t *g = bh_json_get(v, c->key);
                FUZZ_CHECK(g != NULL && g->key_len == c->key_len);
                if (g != c) {
                    const bh_json_t *e;
                    for (e = v->child; e != c && e != g; e = e->next)
                        ;
                    FUZZ_CHECK(e == g); /* g comes first */
                }
            }
            n++;
        }
        FUZZ_CHECK(n == v->count);
        FUZZ_CHECK(bh_json_at(v, n) == NULL);
        break;
    default:
        FUZZ_CHECK(v->child == NULL && v->count == 0);
        break;
    }
}

void fuzz_json_check_tree(const bh_json_t *v) {
    FUZZ_CHECK(v != NULL);
    check_node(v, 0);
}

/* ---- hub protocols ---------------------------------------------------------------------- */

#define HUB_MAX 32768
#define WRITE_MAX ((size_t)1 << 30)
#define ARG_DEPTH 32 /* an argument this deep still fits the parser's limit inside a message */

static int strings_utf8(const bh_json_t *v) {
    const bh_json_t *c;

    if (v->type == BH_JSON_STRING && !bh_utf8_valid(v->str, v->len))
        return 0;
    if (v->key != NULL && !bh_utf8_valid(v->key, v->key_len))
        return 0;
    for (c = v->child; c != NULL; c = c->next)
        if (!strings_utf8(c))
            return 0;
    return 1;
}

/* Parses a private, exact-size copy of the payload and frees the copy before the message is
 * looked at: a message pointing into the input instead of its doc is a use-after-free. */
static int parse_copy(const bh_sr_protocol_t *p, const char *msg, size_t len, bh_json_doc_t **doc,
                      bh_sr_msg_t *m) {
    char *copy = malloc(len > 0 ? len : 1);
    const char *err = NULL;
    int r;

    FUZZ_CHECK(copy != NULL);
    memcpy(copy, msg, len);
    *doc = NULL;
    r = p->parse(copy, len, doc, m, &err);
    free(copy);
    FUZZ_CHECK(r == BH_OK || r == BH_EINVAL);
    if (r != BH_OK)
        FUZZ_CHECK(err != NULL && err[0] != '\0' && *doc == NULL);
    return r;
}

/* What a parsed message promises its reader. */
static void check_msg(const bh_sr_msg_t *m) {
    const bh_json_t *c;

    FUZZ_CHECK(m->type >= 0);
    if (m->invocation_id != NULL)
        FUZZ_CHECK(bh_utf8_valid(m->invocation_id, strlen(m->invocation_id)));
    switch (m->type) {
    case BH_SR_INVOCATION:
    case BH_SR_STREAM_INVOCATION:
        FUZZ_CHECK(m->target != NULL && bh_utf8_valid(m->target, strlen(m->target)));
        FUZZ_CHECK(m->arguments != NULL && m->arguments->type == BH_JSON_ARRAY);
        for (c = m->arguments->child; c != NULL; c = c->next)
            fuzz_json_check_tree(c);
        if (m->type == BH_SR_STREAM_INVOCATION)
            FUZZ_CHECK(m->invocation_id != NULL);
        break;
    case BH_SR_STREAM_ITEM:
    case BH_SR_COMPLETION:
    case BH_SR_CANCEL_INVOCATION:
        FUZZ_CHECK(m->invocation_id != NULL);
        break;
    default:
        break;
    }
}

/* The message written at b[mark..len): exactly one frame, which parses. */
static bh_json_doc_t *reparse(const bh_sr_protocol_t *p, const bh_buf_t *b, size_t mark,
                              bh_sr_msg_t *m) {
    const char *msg = NULL;
    size_t mlen = 0;
    bh_json_doc_t *doc = NULL;
    int r;

    FUZZ_CHECK(b->len > mark);
    r = p->frame(b->data + mark, b->len - mark, WRITE_MAX, &msg, &mlen);
    FUZZ_CHECK(r > 0 && (size_t)r == b->len - mark);
    FUZZ_CHECK(parse_copy(p, msg, mlen, &doc, m) == BH_OK);
    check_msg(m);
    return doc;
}

/* A writer's answer: success, or (binary protocols, whose writers transcode) a clean refusal
 * that leaves the buffer as it was. */
static int wrote(int r, int loose, const bh_buf_t *b, size_t mark) {
    if (r == BH_OK)
        return 1;
    FUZZ_CHECK(loose && (r == BH_EINVAL || r == BH_ERANGE || r == BH_ETOOBIG));
    FUZZ_CHECK(b->len == mark);
    return 0;
}

void fuzz_hub_invocation(const bh_sr_protocol_t *p, int loose_numbers, const char *target,
                         const char *json, size_t len) {
    bh_json_doc_t *want = NULL, *got;
    bh_buf_t b;
    bh_sr_msg_t m;
    size_t mark;

    if (bh_json_parse(json, len, ARG_DEPTH, &want) != BH_OK)
        return;
    bh_buf_init(&b, 0);
    FUZZ_CHECK(bh_buf_appends(&b, "prefix") == BH_OK); /* writers append */
    mark = b.len;
    if (wrote(p->write_invocation(&b, target, json, len), loose_numbers, &b, mark)) {
        FUZZ_CHECK(memcmp(b.data, "prefix", mark) == 0);
        got = reparse(p, &b, mark, &m);
        FUZZ_CHECK(m.type == BH_SR_INVOCATION && strcmp(m.target, target) == 0);
        FUZZ_CHECK(m.invocation_id == NULL && m.arguments->count == 1);
        FUZZ_CHECK(fuzz_json_equal(m.arguments->child, bh_json_root(want), loose_numbers));
        bh_json_free(got);
    }
    bh_buf_free(&b);
    bh_json_free(want);
}

static void completion_round_trip(const bh_sr_protocol_t *p, const char *id, const char *error) {
    bh_json_doc_t *got;
    bh_buf_t b;
    bh_sr_msg_t m;

    bh_buf_init(&b, 0);
    FUZZ_CHECK(p->write_completion(&b, id, error) == BH_OK);
    got = reparse(p, &b, 0, &m);
    FUZZ_CHECK(m.type == BH_SR_COMPLETION && strcmp(m.invocation_id, id) == 0);
    bh_json_free(got);
    bh_buf_free(&b);
}

static void simple_round_trip(const bh_sr_protocol_t *p, int type, uint64_t seq, int variant) {
    bh_json_doc_t *got;
    bh_buf_t b;
    bh_sr_msg_t m;
    int r = BH_EINVAL;

    bh_buf_init(&b, 0);
    switch (type) {
    case BH_SR_PING:
        r = p->write_ping(&b);
        break;
    case BH_SR_CLOSE:
        r = p->write_close(&b, variant ? "Server closed: \"bye\"\n" : NULL, variant);
        break;
    case BH_SR_ACK:
        r = p->write_ack(&b, seq);
        break;
    case BH_SR_SEQUENCE:
        r = p->write_sequence(&b, seq);
        break;
    }
    FUZZ_CHECK(r == BH_OK);
    got = reparse(p, &b, 0, &m);
    FUZZ_CHECK(m.type == type);
    if (type == BH_SR_ACK || type == BH_SR_SEQUENCE)
        FUZZ_CHECK(m.sequence_id == seq);
    bh_json_free(got);
    bh_buf_free(&b);
}

/* Writes m back with the writer for its type and checks the copy. */
static void reencode(const bh_sr_protocol_t *p, int loose, const bh_sr_msg_t *m) {
    bh_buf_t arg;

    /* an id with a NUL in it reaches writers cut at the NUL; "" is no id to MessagePack */
    if (m->invocation_id != NULL && m->invocation_id[0] != '\0') {
        completion_round_trip(p, m->invocation_id, NULL);
        completion_round_trip(p, m->invocation_id, m->target ? m->target : "error");
    }
    switch (m->type) {
    case BH_SR_INVOCATION:
    case BH_SR_STREAM_INVOCATION:
        /* the server never invokes "" (nor a name cut short by a NUL), and MessagePack reads
         * an empty target as none */
        if (m->target[0] == '\0' || m->arguments->count != 1 ||
            !strings_utf8(m->arguments->child) || fuzz_json_depth(m->arguments->child) > ARG_DEPTH)
            break;
        bh_buf_init(&arg, 0);
        FUZZ_CHECK(bh_json_write(&arg, m->arguments->child) == BH_OK);
        fuzz_hub_invocation(p, loose, m->target, arg.data, arg.len);
        bh_buf_free(&arg);
        break;
    case BH_SR_PING:
    case BH_SR_CLOSE:
        simple_round_trip(p, m->type, 0, 0);
        simple_round_trip(p, m->type, 0, 1);
        break;
    case BH_SR_ACK:
    case BH_SR_SEQUENCE:
        simple_round_trip(p, m->type, m->sequence_id, 0);
        break;
    default:
        break;
    }
}

size_t fuzz_hub(const bh_sr_protocol_t *p, fuzz_frame_check_fn check, int loose_numbers,
                const char *data, size_t size) {
    size_t off = 0, count = 0, small = size / 3 + 1;

    while (off < size) {
        const char *s = data + off, *msg = NULL, *m2 = NULL;
        size_t len = size - off, mlen = 0, l2 = 0, q, step;
        bh_json_doc_t *doc = NULL;
        bh_sr_msg_t m;
        int r = p->frame(s, len, HUB_MAX, &msg, &mlen), r2;

        FUZZ_CHECK(r >= 0 || r == BH_ETOOBIG || r == BH_EINVAL);
        check(s, len, HUB_MAX, r, msg, mlen);
        r2 = p->frame(s, len, small, &m2, &l2);
        check(s, len, small, r2, m2, l2);
        if (r <= 0)
            break;
        /* never more than given, the payload inside the frame, within the limit */
        FUZZ_CHECK((size_t)r <= len && msg >= s && mlen <= HUB_MAX);
        FUZZ_CHECK((size_t)(msg - s) <= (size_t)r && mlen <= (size_t)r - (size_t)(msg - s));
        if (r2 > 0)
            FUZZ_CHECK(r2 == r && m2 == msg && l2 == mlen);
        /* the frame alone is the same frame, a limit of exactly its payload is enough, one
         * less is too little, and every strict prefix is incomplete */
        r2 = p->frame(s, (size_t)r, mlen, &m2, &l2);
        FUZZ_CHECK(r2 == r && m2 == msg && l2 == mlen);
        if (mlen > 0)
            FUZZ_CHECK(p->frame(s, (size_t)r, mlen - 1, &m2, &l2) == BH_ETOOBIG);
        step = r > 64 ? (size_t)r / 32 : 1;
        for (q = 0; q < (size_t)r; q += step) {
            r2 = p->frame(s, q, HUB_MAX, &m2, &l2);
            check(s, q, HUB_MAX, r2, m2, l2);
            FUZZ_CHECK(r2 == 0);
        }
        FUZZ_CHECK(p->frame(s, (size_t)r - 1, HUB_MAX, &m2, &l2) == 0);

        if (parse_copy(p, msg, mlen, &doc, &m) == BH_OK) {
            check_msg(&m);
            reencode(p, loose_numbers, &m);
            count++;
        }
        bh_json_free(doc);
        off += (size_t)r;
    }
    return count;
}
