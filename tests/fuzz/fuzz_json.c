/* Fuzz harness for the JSON reader and string writer. A parsed tree must satisfy its own
 * invariants, write back to text that parses to an equal tree (and writes back identically),
 * and not depend on the depth limit beyond the limit itself. bh_utf8_valid is checked against
 * a plain reference decoder, and bh_json_write_str against the parser. */
#include <errno.h>
#include <string.h>

#include "base/decimal.h"
#include "base/error.h"
#include "base/json.h"
#include "fuzz.h"

#define SHALLOW 64
#define DEEP 2000

/* Reference UTF-8 check written from RFC 3629's definition, independent of json.c. */
static int ref_utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0, k, need;
    unsigned long cp, min;

    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xe0) == 0xc0) {
            need = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            need = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            need = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (n - i - 1 < need)
            return 0;
        for (k = 1; k <= need; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += need + 1;
    }
    return 1;
}

/* bh_json_int accepts exactly the integer texts strtoll takes without overflow. */
static void check_int(const bh_json_t *v) {
    int64_t got = 0;
    int r = bh_json_int(v, &got);
    int plain = strspn(v->str + (v->str[0] == '-'), "0123456789") + (v->str[0] == '-') == v->len;

    if (!plain) {
        FUZZ_CHECK(r == BH_EINVAL);
        return;
    }
    errno = 0;
    long long want = strtoll(v->str, NULL, 10);
    FUZZ_CHECK(errno == ERANGE ? r == BH_EINVAL : r == BH_OK && got == want);
}

/* A number that bh_dec_parse takes formats back to text that parses to the same value. */
static void check_decimal(const bh_json_t *v) {
    bh_dec_t d, e;
    char text[BH_DEC_STRLEN];
    size_t n;

    if (bh_dec_parse(v->str, v->len, &d) != BH_OK)
        return;
    n = bh_dec_format(d, text);
    FUZZ_CHECK(n < BH_DEC_STRLEN && strlen(text) == n);
    FUZZ_CHECK(bh_dec_parse(text, n, &e) == BH_OK && e.units == d.units);
}

static void check_numbers(const bh_json_t *v) {
    const bh_json_t *c;

    if (v->type == BH_JSON_NUMBER) {
        check_int(v);
        check_decimal(v);
    }
    for (c = v->child; c != NULL; c = c->next)
        check_numbers(c);
}

static void round_trip(const bh_json_t *root) {
    bh_buf_t t1, t2;
    bh_json_doc_t *doc = NULL;

    bh_buf_init(&t1, 0);
    bh_buf_init(&t2, 0);
    FUZZ_CHECK(bh_json_write(&t1, root) == BH_OK);
    FUZZ_CHECK(bh_json_parse(t1.data, t1.len, DEEP, &doc) == BH_OK);
    FUZZ_CHECK(fuzz_json_equal(root, bh_json_root(doc), 0));
    FUZZ_CHECK(bh_json_write(&t2, bh_json_root(doc)) == BH_OK);
    FUZZ_CHECK(t1.len == t2.len && memcmp(t1.data, t2.data, t1.len) == 0);
    bh_json_free(doc);
    bh_buf_free(&t1);
    bh_buf_free(&t2);
}

/* Any bytes through bh_json_write_str parse back to the same string when they are UTF-8. */
static void string_round_trip(const char *s, size_t n) {
    bh_buf_t b;
    bh_json_doc_t *doc = NULL;
    int valid = bh_utf8_valid(s, n), r;

    bh_buf_init(&b, 0);
    FUZZ_CHECK(bh_json_write_str(&b, s, n) == BH_OK);
    FUZZ_CHECK(b.len >= n + 2 && b.data[0] == '"' && b.data[b.len - 1] == '"');
    for (size_t i = 0; i < b.len; i++)
        FUZZ_CHECK((unsigned char)b.data[i] >= 0x20); /* control characters are escaped */
    r = bh_json_parse(b.data, b.len, 1, &doc);
    FUZZ_CHECK(valid ? r == BH_OK : r == BH_EINVAL);
    if (r == BH_OK) {
        const bh_json_t *v = bh_json_root(doc);
        FUZZ_CHECK(v->type == BH_JSON_STRING && v->len == n && memcmp(v->str, s, n) == 0);
    }
    bh_json_free(doc);
    bh_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *text = (const char *)data;
    bh_json_doc_t *shallow = NULL, *deep = NULL;
    int rs, rd;

    FUZZ_CHECK(bh_utf8_valid(text, size) == ref_utf8_valid(data, size));

    rs = bh_json_parse(text, size, SHALLOW, &shallow);
    rd = bh_json_parse(text, size, DEEP, &deep);
    FUZZ_CHECK(rs == BH_OK || rs == BH_EINVAL || rs == BH_ETOOBIG);
    FUZZ_CHECK(rd == BH_OK || rd == BH_EINVAL || rd == BH_ETOOBIG);
    if (rs == BH_OK) {
        FUZZ_CHECK(rd == BH_OK);
        FUZZ_CHECK(fuzz_json_equal(bh_json_root(shallow), bh_json_root(deep), 0));
        FUZZ_CHECK(fuzz_json_depth(bh_json_root(shallow)) <= SHALLOW);
    }
    if (rs == BH_EINVAL)
        FUZZ_CHECK(rd == BH_EINVAL);
    if (rs == BH_ETOOBIG && rd == BH_OK)
        FUZZ_CHECK(fuzz_json_depth(bh_json_root(deep)) > SHALLOW);
    if (rd == BH_OK) {
        const bh_json_t *root = bh_json_root(deep);
        fuzz_json_check_tree(root);
        FUZZ_CHECK(fuzz_json_depth(root) <= DEEP);
        /* valid JSON is valid UTF-8 throughout */
        FUZZ_CHECK(bh_utf8_valid(text, size));
        check_numbers(root);
        round_trip(root);
    }
    bh_json_free(shallow);
    bh_json_free(deep);

    string_round_trip(text, size);
    return 0;
}
