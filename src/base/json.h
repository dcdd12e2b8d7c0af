/* JSON (RFC 8259) reader into a read-only tree, and writer helpers on bh_buf_t.
 * Numbers keep their exact source text, so amounts are parsed by bh_dec_parse without any
 * binary floating point (no Debian JSON library keeps number text). */
#ifndef BH_BASE_JSON_H
#define BH_BASE_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

typedef enum {
    BH_JSON_NULL,
    BH_JSON_FALSE,
    BH_JSON_TRUE,
    BH_JSON_NUMBER,
    BH_JSON_STRING,
    BH_JSON_ARRAY,
    BH_JSON_OBJECT,
} bh_json_type_t;

typedef struct bh_json bh_json_t;
struct bh_json {
    bh_json_type_t type;
    const char *str; /* STRING: decoded UTF-8, NUL-terminated; NUMBER: source text (NUL-term.) */
    size_t len;      /* byte length of str */
    const char *key; /* member name (decoded, NUL-terminated) when inside an object, else NULL */
    size_t key_len;
    bh_json_t *child; /* ARRAY/OBJECT: first element or member */
    bh_json_t *next;  /* next sibling */
    size_t count;     /* ARRAY/OBJECT: number of children */
};

typedef struct bh_json_doc bh_json_doc_t;

/* Parse one complete JSON text (surrounding whitespace allowed). Strings must be valid UTF-8
 * (escapes included: lone surrogates are rejected). Nesting deeper than max_depth is
 * BH_ETOOBIG; anything malformed is BH_EINVAL. On success *out owns every node. */
int bh_json_parse(const char *text, size_t len, size_t max_depth, bh_json_doc_t **out);
const bh_json_t *bh_json_root(const bh_json_doc_t *doc);
void bh_json_free(bh_json_doc_t *doc);

/* Member of an object by name (first match), or NULL (also when obj is not an object). */
const bh_json_t *bh_json_get(const bh_json_t *obj, const char *key);
/* Element i of an array, or NULL. */
const bh_json_t *bh_json_at(const bh_json_t *arr, size_t i);
/* A NUMBER that is an integer in int64 range (no fraction, no exponent): BH_OK or BH_EINVAL. */
int bh_json_int(const bh_json_t *v, int64_t *out);

/* Append the tree v as compact JSON: numbers as their source text, strings escaped, members in
 * order. BH_EINVAL for a node of unknown type. */
int bh_json_write(bh_buf_t *b, const bh_json_t *v);

/* Append s as a quoted JSON string with the required escapes (control characters as \u00XX). */
int bh_json_write_str(bh_buf_t *b, const char *s, size_t n);

/* True when s[0..n) is well-formed UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
int bh_utf8_valid(const char *s, size_t n);

#endif
