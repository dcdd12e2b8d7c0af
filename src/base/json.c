/* RFC 8259 reader into an arena-backed tree, plus string escaping for writers. The parser keeps
 * an explicit stack (no recursion, so max_depth can be large) and never mallocs per node. */
#include "base/json.h"

#include <stdalign.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/hex.h"
#include "base/spare.h"

/* ---- arena ---------------------------------------------------------------------------------- */

typedef struct chunk {
    struct chunk *next;
    size_t cap;
    size_t used;
} chunk_t;

#define ARENA_ALIGN alignof(bh_json_t)
#define CHUNK_MAX ((size_t)1 << 20)
_Static_assert(sizeof(chunk_t) % ARENA_ALIGN == 0, "chunk header keeps data aligned");

typedef struct {
    chunk_t *head;
    size_t next_cap;
} arena_t;

struct bh_json_doc {
    arena_t arena;
    bh_json_t *root;
};

/* A freed chunk goes back to this thread's spare (base/spare.h) and serves the next parse, so
 * parsing a stream of hub messages allocates nothing once warm (bench/malloc_count.c shows it). */
static chunk_t *chunk_get(size_t cap) {
    size_t got;
    chunk_t *c = bh_spare_take(BH_SPARE_JSON, sizeof(chunk_t) + cap, &got);
    if (c) {
        c->cap = got - sizeof(chunk_t);
        return c;
    }
    c = malloc(sizeof(chunk_t) + cap);
    if (c)
        c->cap = cap;
    return c;
}

static void chunk_release(chunk_t *c) {
    bh_spare_give(BH_SPARE_JSON, c, sizeof(chunk_t) + c->cap);
}

static void arena_free(arena_t *a) {
    chunk_t *c = a->head;
    while (c) {
        chunk_t *n = c->next;
        chunk_release(c);
        c = n;
    }
    a->head = NULL;
}

static void *arena_alloc(arena_t *a, size_t n) {
    n = (n + ARENA_ALIGN - 1) & ~(ARENA_ALIGN - 1);
    chunk_t *c = a->head;
    if (!c || c->cap - c->used < n) {
        size_t cap = a->next_cap;
        if (n > cap / 4) {
            /* Big runs get a chunk of their own, behind the current one, so the current
             * chunk's free tail stays usable. */
            if (n > SIZE_MAX - sizeof(chunk_t))
                return NULL;
            chunk_t *big = malloc(sizeof(chunk_t) + n);
            if (!big)
                return NULL;
            big->cap = big->used = n;
            if (c) {
                big->next = c->next;
                c->next = big;
            } else {
                big->next = NULL;
                a->head = big;
            }
            return big + 1;
        }
        c = chunk_get(cap);
        if (!c)
            return NULL;
        c->used = 0;
        c->next = a->head;
        a->head = c;
        if (a->next_cap < CHUNK_MAX)
            a->next_cap *= 2;
    }
    void *p = (char *)(c + 1) + c->used;
    c->used += n;
    return p;
}

/* ---- UTF-8 ---------------------------------------------------------------------------------- */

/* Length of the well-formed sequence at s (n > 0 bytes available), or 0 if ill-formed. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    if (c < 0xC2) /* stray continuation byte or overlong 2-byte lead */
        return 0;
    if (c < 0xE0)
        return n >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0xF0) {
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        else if (c == 0xED)
            hi = 0x9F; /* UTF-16 surrogates */
        return n >= 3 && s[1] >= lo && s[1] <= hi && (s[2] & 0xC0) == 0x80 ? 3 : 0;
    }
    if (c < 0xF5) {
        if (c == 0xF0)
            lo = 0x90; /* overlong */
        else if (c == 0xF4)
            hi = 0x8F; /* above U+10FFFF */
        return n >= 4 && s[1] >= lo && s[1] <= hi && (s[2] & 0xC0) == 0x80 && (s[3] & 0xC0) == 0x80
                   ? 4
                   : 0;
    }
    return 0;
}

int bh_utf8_valid(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        size_t k = utf8_seq(p + i, n - i);
        if (!k)
            return 0;
        i += k;
    }
    return 1;
}

/* ---- parser --------------------------------------------------------------------------------- */

typedef struct {
    bh_json_t *node;
    bh_json_t *tail;
} frame_t;

typedef struct {
    const char *p;
    const char *end;
    arena_t arena;
    frame_t *stack;
    size_t sp, stack_cap;
} parser_t;

static void skip_ws(parser_t *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\n' || *ps->p == '\r' || *ps->p == '\t'))
        ps->p++;
}

static int hex4(const char *s, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int d = bh_hex_digit(s[i]);
        if (d < 0)
            return BH_EINVAL;
        v = v << 4 | (unsigned)d;
    }
    *out = v;
    return BH_OK;
}

static size_t put_utf8(char *o, unsigned cp) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* At the opening quote. Decodes into the arena; decoded text is never longer than the source. */
static int parse_string(parser_t *ps, const char **out, size_t *out_len) {
    const char *s = ps->p + 1, *q = s;
    /* Find the closing quote first so the copy is sized exactly once. */
    for (;;) {
        if (q >= ps->end)
            return BH_EINVAL;
        if (*q == '"')
            break;
        if (*q == '\\') {
            if (++q >= ps->end)
                return BH_EINVAL;
        }
        q++;
    }
    char *dst = arena_alloc(&ps->arena, (size_t)(q - s) + 1);
    if (!dst)
        return BH_ENOMEM;
    size_t o = 0;
    while (s < q) {
        unsigned char c = (unsigned char)*s;
        if (c == '\\') {
            char e = s[1];
            s += 2;
            switch (e) {
            case '"':
            case '\\':
            case '/':
                dst[o++] = e;
                break;
            case 'b':
                dst[o++] = '\b';
                break;
            case 'f':
                dst[o++] = '\f';
                break;
            case 'n':
                dst[o++] = '\n';
                break;
            case 'r':
                dst[o++] = '\r';
                break;
            case 't':
                dst[o++] = '\t';
                break;
            case 'u': {
                unsigned cp, lo;
                if (q - s < 4 || hex4(s, &cp))
                    return BH_EINVAL;
                s += 4;
                if (cp >= 0xDC00 && cp <= 0xDFFF)
                    return BH_EINVAL; /* lone low surrogate */
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (q - s < 6 || s[0] != '\\' || s[1] != 'u' || hex4(s + 2, &lo) ||
                        lo < 0xDC00 || lo > 0xDFFF)
                        return BH_EINVAL;
                    s += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                o += put_utf8(dst + o, cp);
                break;
            }
            default:
                return BH_EINVAL;
            }
        } else if (c < 0x20) {
            return BH_EINVAL;
        } else if (c < 0x80) {
            dst[o++] = (char)c;
            s++;
        } else {
            size_t k = utf8_seq((const unsigned char *)s, (size_t)(q - s));
            if (!k)
                return BH_EINVAL;
            memcpy(dst + o, s, k);
            o += k;
            s += k;
        }
    }
    dst[o] = '\0';
    *out = dst;
    *out_len = o;
    ps->p = q + 1;
    return BH_OK;
}

static int is_digit(char c) {
    return c >= '0' && c <= '9';
}

static int parse_number(parser_t *ps, bh_json_t *node) {
    const char *s = ps->p, *p = s, *e = ps->end;
    if (p < e && *p == '-')
        p++;
    if (p >= e || !is_digit(*p))
        return BH_EINVAL;
    if (*p == '0')
        p++;
    else
        while (p < e && is_digit(*p))
            p++;
    if (p < e && *p == '.') {
        p++;
        if (p >= e || !is_digit(*p))
            return BH_EINVAL;
        while (p < e && is_digit(*p))
            p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-'))
            p++;
        if (p >= e || !is_digit(*p))
            return BH_EINVAL;
        while (p < e && is_digit(*p))
            p++;
    }
    size_t n = (size_t)(p - s);
    char *dst = arena_alloc(&ps->arena, n + 1);
    if (!dst)
        return BH_ENOMEM;
    memcpy(dst, s, n);
    dst[n] = '\0';
    node->type = BH_JSON_NUMBER;
    node->str = dst;
    node->len = n;
    ps->p = p;
    return BH_OK;
}

static int parse_literal(parser_t *ps, bh_json_t *node) {
    static const struct {
        const char *text;
        size_t len;
        bh_json_type_t type;
    } lits[] = {{"null", 4, BH_JSON_NULL}, {"true", 4, BH_JSON_TRUE}, {"false", 5, BH_JSON_FALSE}};
    for (size_t i = 0; i < sizeof lits / sizeof lits[0]; i++) {
        if ((size_t)(ps->end - ps->p) >= lits[i].len &&
            memcmp(ps->p, lits[i].text, lits[i].len) == 0) {
            node->type = lits[i].type;
            ps->p += lits[i].len;
            return BH_OK;
        }
    }
    return BH_EINVAL;
}

/* After '{' or ',' inside an object: "key" ws ':' */
static int parse_key(parser_t *ps, const char **key, size_t *key_len) {
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != '"')
        return BH_EINVAL;
    int rc = parse_string(ps, key, key_len);
    if (rc)
        return rc;
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != ':')
        return BH_EINVAL;
    ps->p++;
    return BH_OK;
}

static int push(parser_t *ps, bh_json_t *node, frame_t *inline_stack) {
    if (ps->sp == ps->stack_cap) {
        size_t ncap = ps->stack_cap * 2;
        frame_t *ns = ps->stack == inline_stack ? malloc(ncap * sizeof *ns)
                                                : realloc(ps->stack, ncap * sizeof *ns);
        if (!ns)
            return BH_ENOMEM;
        if (ps->stack == inline_stack)
            memcpy(ns, inline_stack, ps->sp * sizeof *ns);
        ps->stack = ns;
        ps->stack_cap = ncap;
    }
    ps->stack[ps->sp].node = node;
    ps->stack[ps->sp].tail = NULL;
    ps->sp++;
    return BH_OK;
}

#define INLINE_FRAMES 32

static int parse_text(parser_t *ps, size_t max_depth, frame_t *inline_stack, bh_json_t **root) {
    const char *key = NULL;
    size_t key_len = 0;
    int rc;
    for (;;) {
        /* Expecting a value. */
        skip_ws(ps);
        if (ps->p >= ps->end)
            return BH_EINVAL;
        bh_json_t *node = arena_alloc(&ps->arena, sizeof *node);
        if (!node)
            return BH_ENOMEM;
        memset(node, 0, sizeof *node);
        node->key = key;
        node->key_len = key_len;
        key = NULL;
        key_len = 0;
        if (ps->sp) {
            frame_t *f = &ps->stack[ps->sp - 1];
            if (f->tail)
                f->tail->next = node;
            else
                f->node->child = node;
            f->tail = node;
            f->node->count++;
        } else {
            *root = node;
        }
        char c = *ps->p;
        if (c == '{' || c == '[') {
            if (ps->sp >= max_depth)
                return BH_ETOOBIG;
            node->type = c == '{' ? BH_JSON_OBJECT : BH_JSON_ARRAY;
            ps->p++;
            skip_ws(ps);
            if (ps->p < ps->end && *ps->p == (c == '{' ? '}' : ']')) {
                ps->p++; /* empty container: nothing to push */
            } else {
                if ((rc = push(ps, node, inline_stack)))
                    return rc;
                if (c == '{' && (rc = parse_key(ps, &key, &key_len)))
                    return rc;
                continue;
            }
        } else if (c == '"') {
            node->type = BH_JSON_STRING;
            if ((rc = parse_string(ps, &node->str, &node->len)))
                return rc;
        } else if (c == '-' || is_digit(c)) {
            if ((rc = parse_number(ps, node)))
                return rc;
        } else if ((rc = parse_literal(ps, node))) {
            return rc;
        }
        /* A value is complete: close containers until one wants another element. */
        for (;;) {
            skip_ws(ps);
            if (!ps->sp)
                return ps->p == ps->end ? BH_OK : BH_EINVAL;
            if (ps->p >= ps->end)
                return BH_EINVAL;
            bh_json_t *top = ps->stack[ps->sp - 1].node;
            char d = *ps->p++;
            if (d == ',') {
                if (top->type == BH_JSON_OBJECT && (rc = parse_key(ps, &key, &key_len)))
                    return rc;
                break;
            }
            if (d != (top->type == BH_JSON_OBJECT ? '}' : ']'))
                return BH_EINVAL;
            ps->sp--;
        }
    }
}

int bh_json_parse(const char *text, size_t len, size_t max_depth, bh_json_doc_t **out) {
    if (!out || !text)
        return BH_EINVAL;
    frame_t inline_stack[INLINE_FRAMES];
    parser_t ps = {.p = text, .end = text + len, .stack = inline_stack, .stack_cap = INLINE_FRAMES};
    /* First chunk sized from the input so a typical message needs a single malloc. */
    size_t first = len < CHUNK_MAX / 8 ? len * 4 + 512 : CHUNK_MAX;
    ps.arena.next_cap = first;
    bh_json_t *root = NULL;
    int rc = parse_text(&ps, max_depth, inline_stack, &root);
    if (rc)
        goto fail;
    bh_json_doc_t *doc = arena_alloc(&ps.arena, sizeof *doc);
    if (!doc) {
        rc = BH_ENOMEM;
        goto fail;
    }
    doc->arena = ps.arena;
    doc->root = root;
    if (ps.stack != inline_stack)
        free(ps.stack);
    *out = doc;
    return BH_OK;
fail:
    if (ps.stack != inline_stack)
        free(ps.stack);
    arena_free(&ps.arena);
    return rc;
}

const bh_json_t *bh_json_root(const bh_json_doc_t *doc) {
    return doc ? doc->root : NULL;
}

void bh_json_free(bh_json_doc_t *doc) {
    if (!doc)
        return;
    arena_t a = doc->arena; /* doc lives inside the arena */
    arena_free(&a);
}

/* ---- accessors ------------------------------------------------------------------------------ */

const bh_json_t *bh_json_get(const bh_json_t *obj, const char *key) {
    if (!obj || obj->type != BH_JSON_OBJECT || !key)
        return NULL;
    size_t n = strlen(key);
    for (const bh_json_t *c = obj->child; c; c = c->next)
        if (c->key_len == n && memcmp(c->key, key, n) == 0)
            return c;
    return NULL;
}

const bh_json_t *bh_json_at(const bh_json_t *arr, size_t i) {
    if (!arr || arr->type != BH_JSON_ARRAY || i >= arr->count)
        return NULL;
    const bh_json_t *c = arr->child;
    while (i--)
        c = c->next;
    return c;
}

int bh_json_int(const bh_json_t *v, int64_t *out) {
    if (!v || v->type != BH_JSON_NUMBER || v->len == 0)
        return BH_EINVAL;
    const char *s = v->str;
    size_t i = 0, n = v->len;
    int neg = s[0] == '-';
    i += (size_t)neg;
    if (i >= n)
        return BH_EINVAL;
    /* Accumulate negatively so INT64_MIN is reachable. */
    int64_t acc = 0;
    for (; i < n; i++) {
        if (!is_digit(s[i]))
            return BH_EINVAL;
        int d = s[i] - '0';
        if (acc < (INT64_MIN + d) / 10)
            return BH_EINVAL;
        acc = acc * 10 - d;
    }
    if (!neg) {
        if (acc == INT64_MIN)
            return BH_EINVAL;
        acc = -acc;
    }
    *out = acc;
    return BH_OK;
}

/* ---- writer --------------------------------------------------------------------------------- */

int bh_json_write_str(bh_buf_t *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    size_t old = b->len;
    int rc = bh_buf_reserve(b, n + 2);
    if (rc)
        return rc;
    b->data[b->len++] = '"';
    size_t run = 0; /* start of the pending unescaped run */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        if (i > run && (rc = bh_buf_append(b, s + run, i - run)))
            goto fail;
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        size_t el = 2;
        switch (c) {
        case '"':
        case '\\':
            esc[1] = (char)c;
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        default:
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            el = 6;
        }
        if ((rc = bh_buf_append(b, esc, el)))
            goto fail;
        run = i + 1;
    }
    if ((n > run && (rc = bh_buf_append(b, s + run, n - run))) || (rc = bh_buf_appendc(b, '"')))
        goto fail;
    return BH_OK;
fail:
    b->len = old;
    b->data[old] = '\0';
    return rc;
}

int bh_json_write(bh_buf_t *b, const bh_json_t *v) {
    int rc = BH_OK;

    switch (v->type) {
    case BH_JSON_NULL:
        return bh_buf_appends(b, "null");
    case BH_JSON_FALSE:
        return bh_buf_appends(b, "false");
    case BH_JSON_TRUE:
        return bh_buf_appends(b, "true");
    case BH_JSON_NUMBER:
        return bh_buf_append(b, v->str, v->len);
    case BH_JSON_STRING:
        return bh_json_write_str(b, v->str, v->len);
    case BH_JSON_ARRAY:
    case BH_JSON_OBJECT:
        rc = bh_buf_appendc(b, v->type == BH_JSON_ARRAY ? '[' : '{');
        for (const bh_json_t *c = v->child; c && rc == BH_OK; c = c->next) {
            if (c != v->child)
                rc = bh_buf_appendc(b, ',');
            if (rc == BH_OK && v->type == BH_JSON_OBJECT) {
                rc = bh_json_write_str(b, c->key, c->key_len);
                if (rc == BH_OK)
                    rc = bh_buf_appendc(b, ':');
            }
            if (rc == BH_OK)
                rc = bh_json_write(b, c);
        }
        if (rc == BH_OK)
            rc = bh_buf_appendc(b, v->type == BH_JSON_ARRAY ? ']' : '}');
        return rc;
    }
    return BH_EINVAL;
}
