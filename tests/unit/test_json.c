/* Unit tests for the JSON reader (strict RFC 8259, UTF-8, depth limit, arena tree), the string
 * writer and the UTF-8 validator. Inputs are parsed from exact-size heap copies so ASan sees any
 * read past the end. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/json.h"

#define DEPTH 64

static int parse_n(const char *s, size_t n, size_t depth, bh_json_doc_t **doc) {
    char *p = malloc(n ? n : 1);
    assert_non_null(p);
    memcpy(p, s, n);
    *doc = NULL;
    int rc = bh_json_parse(p, n, depth, doc);
    free(p); /* the tree must not point into the input */
    if (rc)
        assert_null(*doc);
    return rc;
}

static int parse(const char *s, bh_json_doc_t **doc) {
    return parse_n(s, strlen(s), DEPTH, doc);
}

static bh_json_doc_t *ok(const char *s) {
    bh_json_doc_t *doc;
    int rc = parse(s, &doc);
    if (rc)
        fail_msg("parse(%s) = %d", s, rc);
    assert_non_null(bh_json_root(doc));
    return doc;
}

static void test_scalars(void **state) {
    bh_json_doc_t *doc = ok("null");
    assert_int_equal(bh_json_root(doc)->type, BH_JSON_NULL);
    assert_null(bh_json_root(doc)->key);
    assert_null(bh_json_root(doc)->next);
    bh_json_free(doc);
    doc = ok(" \t\r\ntrue\n");
    assert_int_equal(bh_json_root(doc)->type, BH_JSON_TRUE);
    bh_json_free(doc);
    doc = ok("false");
    assert_int_equal(bh_json_root(doc)->type, BH_JSON_FALSE);
    bh_json_free(doc);
    doc = ok("\"hi\"");
    const bh_json_t *v = bh_json_root(doc);
    assert_int_equal(v->type, BH_JSON_STRING);
    assert_int_equal(v->len, 2);
    assert_string_equal(v->str, "hi");
    bh_json_free(doc);
    doc = ok("\"\"");
    v = bh_json_root(doc);
    assert_int_equal(v->type, BH_JSON_STRING);
    assert_int_equal(v->len, 0);
    assert_string_equal(v->str, "");
    bh_json_free(doc);
}

static void test_numbers_keep_text(void **state) {
    static const char *nums[] = {"0",
                                 "-0",
                                 "1",
                                 "-1",
                                 "12.5",
                                 "-0.5e+10",
                                 "1E400",
                                 "1e-400",
                                 "2.50",
                                 "0.0e0",
                                 "1e007",
                                 "123456789012345678901234567890",
                                 "-9.9E-9",
                                 "10",
                                 "0.1",
                                 "5E+0",
                                 "1.000000000000000000000001"};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        bh_json_doc_t *doc = ok(nums[i]);
        const bh_json_t *v = bh_json_root(doc);
        assert_int_equal(v->type, BH_JSON_NUMBER);
        assert_string_equal(v->str, nums[i]);
        assert_int_equal(v->len, strlen(nums[i]));
        bh_json_free(doc);
    }
    bh_json_doc_t *doc = ok("[ -12.5e3 , 7 ]");
    assert_string_equal(bh_json_at(bh_json_root(doc), 0)->str, "-12.5e3");
    assert_string_equal(bh_json_at(bh_json_root(doc), 1)->str, "7");
    assert_int_equal(bh_json_at(bh_json_root(doc), 1)->len, 1);
    bh_json_free(doc);
}

static void test_object_and_array(void **state) {
    const char *text =
        "{\"type\":1,\"target\":\"ReceiveBalances\",\"arguments\":[{\"asset\":\"BTC\","
        "\"amount\":\"1.5\",\"n\":null},[],{},true,false],\"invocationId\":\"7\"}";
    bh_json_doc_t *doc = ok(text);
    const bh_json_t *root = bh_json_root(doc);
    assert_int_equal(root->type, BH_JSON_OBJECT);
    assert_int_equal(root->count, 4);
    const bh_json_t *c = root->child;
    assert_string_equal(c->key, "type");
    assert_int_equal(c->key_len, 4);
    assert_string_equal(c->next->key, "target");
    assert_string_equal(c->next->next->key, "arguments");
    assert_string_equal(c->next->next->next->key, "invocationId");
    assert_null(c->next->next->next->next);

    const bh_json_t *t = bh_json_get(root, "type");
    assert_non_null(t);
    assert_int_equal(t->type, BH_JSON_NUMBER);
    int64_t n = 0;
    assert_int_equal(bh_json_int(t, &n), BH_OK);
    assert_int_equal(n, 1);
    assert_string_equal(bh_json_get(root, "target")->str, "ReceiveBalances");
    assert_string_equal(bh_json_get(root, "invocationId")->str, "7");
    assert_null(bh_json_get(root, "missing"));
    assert_null(bh_json_get(root, "typ"));
    assert_null(bh_json_get(root, "types"));
    assert_null(bh_json_get(root, ""));

    const bh_json_t *args = bh_json_get(root, "arguments");
    assert_int_equal(args->type, BH_JSON_ARRAY);
    assert_int_equal(args->count, 5);
    const bh_json_t *a0 = bh_json_at(args, 0);
    assert_int_equal(a0->type, BH_JSON_OBJECT);
    assert_null(a0->key); /* array elements have no key */
    assert_int_equal(a0->count, 3);
    assert_string_equal(bh_json_get(a0, "asset")->str, "BTC");
    assert_string_equal(bh_json_get(a0, "amount")->str, "1.5");
    assert_int_equal(bh_json_get(a0, "n")->type, BH_JSON_NULL);
    const bh_json_t *a1 = bh_json_at(args, 1);
    assert_int_equal(a1->type, BH_JSON_ARRAY);
    assert_int_equal(a1->count, 0);
    assert_null(a1->child);
    assert_int_equal(bh_json_at(args, 2)->type, BH_JSON_OBJECT);
    assert_int_equal(bh_json_at(args, 2)->count, 0);
    assert_int_equal(bh_json_at(args, 3)->type, BH_JSON_TRUE);
    assert_int_equal(bh_json_at(args, 4)->type, BH_JSON_FALSE);
    assert_null(bh_json_at(args, 5));
    assert_null(bh_json_at(args, (size_t)-1));

    /* wrong container kinds */
    assert_null(bh_json_get(args, "asset"));
    assert_null(bh_json_at(root, 0));
    assert_null(bh_json_get(NULL, "x"));
    assert_null(bh_json_at(NULL, 0));
    assert_null(bh_json_get(t, "x"));
    bh_json_free(doc);
}

static void test_object_keys(void **state) {
    bh_json_doc_t *doc = ok(" { \"a\" : 1 , \"a\" : 2 , \"a\\u0062\" : 3, \"\" : 4,"
                            " \"x\\u0000y\" : 5 } ");
    const bh_json_t *root = bh_json_root(doc);
    assert_int_equal(root->count, 5);
    assert_string_equal(bh_json_get(root, "a")->str, "1"); /* first match wins */
    assert_string_equal(bh_json_get(root, "ab")->str, "3");
    assert_string_equal(bh_json_get(root, "")->str, "4");
    assert_null(bh_json_get(root, "x"));
    const bh_json_t *last = root->child->next->next->next->next;
    assert_int_equal(last->key_len, 3);
    assert_memory_equal(last->key, "x\0y", 4);
    bh_json_free(doc);
}

static void test_string_escapes(void **state) {
    static const struct {
        const char *json;
        const char *want;
        size_t want_len;
    } cases[] = {
        {"\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\/\b\f\n\r\t", 8},
        {"\"\\u0041\\u00e9\\u00E9\"", "A\xc3\xa9\xc3\xa9", 5},
        {"\"\\u20ac\"", "\xe2\x82\xac", 3},
        {"\"\\u07ff\\u0800\\uffff\"", "\xdf\xbf\xe0\xa0\x80\xef\xbf\xbf", 8},
        {"\"\\u0000\"", "\0", 1},
        {"\"a\\u0000b\"", "a\0b", 3},
        {"\"\\ud83d\\ude00\"", "\xf0\x9f\x98\x80", 4},
        {"\"\\uD834\\uDD1E\"", "\xf0\x9d\x84\x9e", 4},
        {"\"\\ud800\\udc00\"", "\xf0\x90\x80\x80", 4},
        {"\"\\udbff\\udfff\"", "\xf4\x8f\xbf\xbf", 4},
        {"\"x\\ud83d\\ude00y\"", "x\xf0\x9f\x98\x80y", 6},
        {"\"\xe2\x82\xac\xf0\x9f\x98\x80\"", "\xe2\x82\xac\xf0\x9f\x98\x80", 7},
        {"\"\xc2\x80\xdf\xbf\xed\x9f\xbf\xee\x80\x80\xf4\x8f\xbf\xbf\"",
         "\xc2\x80\xdf\xbf\xed\x9f\xbf\xee\x80\x80\xf4\x8f\xbf\xbf", 14},
        {"\"\x7f\"", "\x7f", 1},
        {"\"a b/c'd\"", "a b/c'd", 7},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bh_json_doc_t *doc = ok(cases[i].json);
        const bh_json_t *v = bh_json_root(doc);
        assert_int_equal(v->type, BH_JSON_STRING);
        assert_int_equal(v->len, cases[i].want_len);
        assert_memory_equal(v->str, cases[i].want, cases[i].want_len);
        assert_int_equal(v->str[v->len], '\0');
        bh_json_free(doc);
    }
}

static void test_invalid(void **state) {
    static const char *bad[] = {
        "",
        " ",
        "\n\t\r ",
        "[1,]",
        "[1,2,]",
        "{\"a\":1,}",
        "[,1]",
        "[1,,2]",
        "[,]",
        "{,}",
        "[1 2]",
        "{\"a\" 1}",
        "{\"a\":}",
        "{\"a\"}",
        "{\"a\",1}",
        "{1:2}",
        "{a:1}",
        "{'a':1}",
        "{\"a\":1 \"b\":2}",
        "{\"a\":1]",
        "[1}",
        "[]]",
        "{}}",
        "]",
        "}",
        "[",
        "{",
        "[[]",
        "1 2",
        "{}{}",
        "[] []",
        "null null",
        "/* c */ 1",
        "1 // c",
        "[1] # c",
        "01",
        "-01",
        "00",
        "1.",
        ".5",
        "-.5",
        "+1",
        "-",
        "1e",
        "1e+",
        "1.e3",
        "0x1F",
        "NaN",
        "-NaN",
        "Infinity",
        "-Infinity",
        "nul",
        "tru",
        "fals",
        "nulll",
        "truex",
        "True",
        "NULL",
        "undefined",
        "'a'",
        "\"abc",
        "\"abc\\\"",
        "\"\\\"",
        "\"\\x41\"",
        "\"\\a\"",
        "\"\\'\"",
        "\"\\U0041\"",
        "\"\\u12\"",
        "\"\\u123\"",
        "\"\\u12G4\"",
        "\"\\uZZZZ\"",
        "\"\\u-123\"",
        "\"\\ud800\"",
        "\"\\udc00\"",
        "\"\\udfff\"",
        "\"\\ud800\\u0041\"",
        "\"\\ud800\\ud800\"",
        "\"\\ud800x\"",
        "\"\\ud800\\\"",
        "\"\\ud800\\n\"",
        "\"\\udc00\\ud800\"",
        "\"\\ud83d\\ude0\"",
        "\"tab\there\"",
        "\"line\nbreak\"",
        "\"cr\rx\"",
        "\"\x01\"",
        "\"\x1f\"",
        "\"\xc0\xaf\"",
        "\"\xc1\xbf\"",
        "\"\xe0\x80\xaf\"",
        "\"\xf0\x80\x80\xaf\"",
        "\"\xed\xa0\x80\"",
        "\"\xed\xbf\xbf\"",
        "\"\xf4\x90\x80\x80\"",
        "\"\xf5\x80\x80\x80\"",
        "\"\xe2\x82\"",
        "\"\xe2\x82\"x",
        "\"\xf0\x9f\x98\"",
        "\"\x80\"",
        "\"\xbf\"",
        "\"\xfe\"",
        "\"\xff\"",
        "\xef\xbb\xbf{}",
        "\f1",
        "\v1",
        "1\f",
        "[1,\v2]",
        "\xc2\xa0\x31", /* NBSP is not JSON whitespace */
        "[\"a\"\"b\"]",
        "{\"a\":1,\"b\"}",
        "{\"a\"::1}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bh_json_doc_t *doc = (bh_json_doc_t *)1;
        int rc = parse(bad[i], &doc);
        if (rc != BH_EINVAL)
            fail_msg("parse(\"%s\") = %d, want BH_EINVAL", bad[i], rc);
    }
    /* NUL bytes outside strings, and a raw NUL inside one */
    bh_json_doc_t *doc;
    assert_int_equal(parse_n("[1]\0", 4, DEPTH, &doc), BH_EINVAL);
    assert_int_equal(parse_n("\0[1]", 4, DEPTH, &doc), BH_EINVAL);
    assert_int_equal(parse_n("\"a\0b\"", 5, DEPTH, &doc), BH_EINVAL);
    assert_int_equal(parse_n("[1,\0002]", 6, DEPTH, &doc), BH_EINVAL);
    /* bad arguments */
    assert_int_equal(bh_json_parse(NULL, 0, DEPTH, &doc), BH_EINVAL);
    assert_int_equal(bh_json_parse("1", 1, DEPTH, NULL), BH_EINVAL);
    assert_null(bh_json_root(NULL));
    bh_json_free(NULL);
}

/* Every proper prefix of a valid text is rejected, except the ones listed as valid themselves. */
static void test_every_prefix(void **state) {
    static const struct {
        const char *text;
        const char *valid_prefixes[6];
    } docs[] = {
        {"{\"type\":1,\"target\":\"Send\",\"arguments\":[\"a\\u00e9\\ud83d\\ude00\",-1.5e+3,true,"
         "false,null,{},[],{\"k\":[[{\"x\":\"\\\"\\\\\"}]]}],\"invocationId\":\"42\"}",
         {NULL}},
        {"[\"\xe2\x82\xac\xf0\x9f\x98\x80\", 0, 10, -0.5, 1E7]", {NULL}},
        {"  {  \"a\"  :  [  1  ,  2  ]  }  ",
         {"  {  \"a\"  :  [  1  ,  2  ]  }", "  {  \"a\"  :  [  1  ,  2  ]  } ", NULL}},
        {"-12.50e+34", {"-1", "-12", "-12.5", "-12.50", "-12.50e+3", NULL}},
        {"123", {"1", "12", NULL}},
        {"\"\\ud83d\\ude00\"", {NULL}},
        {"true", {NULL}},
        {"false", {NULL}},
        {"null", {NULL}},
    };
    for (size_t d = 0; d < sizeof docs / sizeof docs[0]; d++) {
        const char *text = docs[d].text;
        size_t len = strlen(text);
        bh_json_doc_t *doc;
        assert_int_equal(parse_n(text, len, DEPTH, &doc), BH_OK);
        bh_json_free(doc);
        for (size_t n = 0; n < len; n++) {
            int want = BH_EINVAL;
            for (int k = 0; docs[d].valid_prefixes[k]; k++)
                if (strlen(docs[d].valid_prefixes[k]) == n)
                    want = BH_OK;
            int rc = parse_n(text, n, DEPTH, &doc);
            if (rc != want)
                fail_msg("prefix %zu of doc %zu: %d, want %d", n, d, rc, want);
            bh_json_free(doc);
        }
    }
}

static char *nested(size_t depth, const char *open, const char *close) {
    size_t lo = strlen(open), lc = strlen(close);
    char *s = malloc(depth * (lo + lc) + 1);
    assert_non_null(s);
    for (size_t i = 0; i < depth; i++) {
        memcpy(s + i * lo, open, lo);
        memcpy(s + depth * lo + i * lc, close, lc);
    }
    s[depth * (lo + lc)] = '\0';
    return s;
}

static void test_depth_limit(void **state) {
    bh_json_doc_t *doc;
    assert_int_equal(parse_n("[[[]]]", 6, 3, &doc), BH_OK);
    bh_json_free(doc);
    assert_int_equal(parse_n("[[[]]]", 6, 2, &doc), BH_ETOOBIG);
    assert_int_equal(parse_n("[[[1]]]", 7, 3, &doc), BH_OK);
    bh_json_free(doc);
    assert_int_equal(parse_n("{\"a\":{\"b\":{}}}", 14, 3, &doc), BH_OK);
    bh_json_free(doc);
    assert_int_equal(parse_n("{\"a\":{\"b\":{}}}", 14, 2, &doc), BH_ETOOBIG);
    assert_int_equal(parse_n("[{\"a\":[]}]", 10, 3, &doc), BH_OK);
    bh_json_free(doc);
    assert_int_equal(parse_n("[{\"a\":[]}]", 10, 2, &doc), BH_ETOOBIG);
    /* siblings do not add depth */
    assert_int_equal(parse_n("[[],[],[[]]]", 12, 3, &doc), BH_OK);
    bh_json_free(doc);
    assert_int_equal(parse_n("[[],[],[[]]]", 12, 2, &doc), BH_ETOOBIG);
    /* max_depth 0: scalars only */
    assert_int_equal(parse_n("1", 1, 0, &doc), BH_OK);
    bh_json_free(doc);
    assert_int_equal(parse_n("[]", 2, 0, &doc), BH_ETOOBIG);
    assert_int_equal(parse_n("{}", 2, 0, &doc), BH_ETOOBIG);

    /* Very deep input: no recursion, so a generous limit works and the tree is intact. */
    size_t deep = 100000;
    char *s = nested(deep, "[", "]");
    assert_int_equal(parse_n(s, 2 * deep, deep, &doc), BH_OK);
    const bh_json_t *v = bh_json_root(doc);
    size_t levels = 0;
    while (v->type == BH_JSON_ARRAY && v->child) {
        assert_int_equal(v->count, 1);
        v = v->child;
        levels++;
    }
    assert_int_equal(levels, deep - 1);
    bh_json_free(doc);
    assert_int_equal(parse_n(s, 2 * deep, deep - 1, &doc), BH_ETOOBIG);
    assert_int_equal(parse_n(s, 2 * deep, DEPTH, &doc), BH_ETOOBIG);
    assert_int_equal(parse_n(s, 2 * deep - 1, deep, &doc), BH_EINVAL); /* one ']' short */
    free(s);
    s = nested(5000, "{\"k\":", "}");
    assert_int_equal(parse_n(s, strlen(s), 5000, &doc), BH_EINVAL); /* innermost value missing */
    assert_int_equal(parse_n(s, strlen(s), 4999, &doc), BH_ETOOBIG);
    free(s);
    s = nested(5000, "{\"k\":[", "]}");
    assert_int_equal(parse_n(s, strlen(s), 10000, &doc), BH_OK);
    bh_json_free(doc);
    assert_int_equal(parse_n(s, strlen(s), 9999, &doc), BH_ETOOBIG);
    free(s);
}

static void test_large_documents(void **state) {
    /* A big flat array: counts, order and node pointers stay right across arena chunks. */
    size_t n = 200000;
    char *s = malloc(n * 8 + 2);
    assert_non_null(s);
    size_t o = 0;
    s[o++] = '[';
    for (size_t i = 0; i < n; i++)
        o += (size_t)sprintf(s + o, i ? ",%zu" : "%zu", i % 1000);
    s[o++] = ']';
    bh_json_doc_t *doc;
    assert_int_equal(parse_n(s, o, DEPTH, &doc), BH_OK);
    const bh_json_t *arr = bh_json_root(doc);
    assert_int_equal(arr->count, n);
    size_t i = 0;
    for (const bh_json_t *c = arr->child; c; c = c->next, i++) {
        int64_t v;
        assert_int_equal(bh_json_int(c, &v), BH_OK);
        assert_int_equal(v, (int64_t)(i % 1000));
    }
    assert_int_equal(i, n);
    assert_string_equal(bh_json_at(arr, n - 1)->str, "999");
    bh_json_free(doc);
    free(s);

    /* A 3 MB string with escapes. */
    size_t big = 3u << 20;
    s = malloc(big + 16);
    assert_non_null(s);
    s[0] = '"';
    for (size_t k = 1; k <= big; k += 2)
        memcpy(s + k, "\\n", 2);
    s[big + 1] = '"';
    assert_int_equal(parse_n(s, big + 2, DEPTH, &doc), BH_OK);
    assert_int_equal(bh_json_root(doc)->len, big / 2);
    assert_int_equal(bh_json_root(doc)->str[big / 2 - 1], '\n');
    assert_int_equal(bh_json_root(doc)->str[big / 2], '\0');
    bh_json_free(doc);
    free(s);
}

static void test_int(void **state) {
    static const struct {
        const char *text;
        int rc;
        int64_t v;
    } cases[] = {
        {"0", BH_OK, 0},
        {"-0", BH_OK, 0},
        {"42", BH_OK, 42},
        {"-42", BH_OK, -42},
        {"9223372036854775807", BH_OK, INT64_MAX},
        {"-9223372036854775808", BH_OK, INT64_MIN},
        {"9223372036854775808", BH_EINVAL, 0},
        {"-9223372036854775809", BH_EINVAL, 0},
        {"99999999999999999999", BH_EINVAL, 0},
        {"1.0", BH_EINVAL, 0},
        {"1e2", BH_EINVAL, 0},
        {"1E0", BH_EINVAL, 0},
        {"-0.5", BH_EINVAL, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bh_json_doc_t *doc = ok(cases[i].text);
        int64_t v = 12345;
        assert_int_equal(bh_json_int(bh_json_root(doc), &v), cases[i].rc);
        assert_int_equal(v, cases[i].rc ? 12345 : cases[i].v);
        bh_json_free(doc);
    }
    bh_json_doc_t *doc = ok("[\"1\",true,null,[1]]");
    int64_t v;
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(bh_json_int(bh_json_at(bh_json_root(doc), i), &v), BH_EINVAL);
    assert_int_equal(bh_json_int(NULL, &v), BH_EINVAL);
    bh_json_free(doc);
}

static void assert_written(const char *s, size_t n, const char *want) {
    bh_buf_t b;
    bh_buf_init(&b, 0);
    assert_int_equal(bh_buf_appends(&b, "<"), BH_OK);
    assert_int_equal(bh_json_write_str(&b, s, n), BH_OK);
    assert_int_equal(b.len, 1 + strlen(want));
    assert_string_equal(b.data + 1, want);
    assert_int_equal(b.data[0], '<');
    bh_buf_free(&b);
}

/* The tree writer: compact, numbers as their source text, escapes, member order kept. */
static void test_write_tree(void **state) {
    const char *in = " { \"b\" : [ 1.50 , -0 , 1e3, true ,false, null ] , \"a\\u00e9\" : { } ,"
                     " \"c\":\"x\\n\\u0001\" , \"d\": [] } ";
    const char *want = "{\"b\":[1.50,-0,1e3,true,false,null],\"a\xc3\xa9\":{},"
                       "\"c\":\"x\\n\\u0001\",\"d\":[]}";
    bh_json_doc_t *doc = NULL;
    bh_buf_t b;
    bh_buf_init(&b, 0);
    assert_int_equal(bh_json_parse(in, strlen(in), 16, &doc), BH_OK);
    assert_int_equal(bh_json_write(&b, bh_json_root(doc)), BH_OK);
    assert_string_equal(b.data, want);
    /* A cap too small for the whole text fails instead of writing past it. */
    bh_buf_t small;
    bh_buf_init(&small, 10);
    assert_int_equal(bh_json_write(&small, bh_json_root(doc)), BH_ETOOBIG);
    assert_true(small.len <= 10);
    bh_buf_free(&small);
    bh_buf_free(&b);
    bh_json_free(doc);
}

static void test_write_str(void **state) {
    assert_written("", 0, "\"\"");
    assert_written(NULL, 0, "\"\"");
    assert_written("abc", 3, "\"abc\"");
    assert_written("a\"b\\c", 5, "\"a\\\"b\\\\c\"");
    assert_written("\n\r\t\b\f", 5, "\"\\n\\r\\t\\b\\f\"");
    assert_written("\x01\x1f\x00", 3, "\"\\u0001\\u001f\\u0000\"");
    assert_written("a\x0b"
                   "b\x1b",
                   4, "\"a\\u000bb\\u001b\"");
    assert_written("/", 1, "\"/\"");
    assert_written("\x7f", 1, "\"\x7f\"");
    assert_written("\xe2\x82\xac\xf0\x9f\x98\x80", 7, "\"\xe2\x82\xac\xf0\x9f\x98\x80\"");
    assert_written("\"\"", 2, "\"\\\"\\\"\"");
    assert_written("x\ny", 2, "\"x\\n\"");     /* only n bytes */
    assert_written("end\\", 4, "\"end\\\\\""); /* escape as the last byte */

    /* all 32 control characters */
    char ctl[32];
    for (int i = 0; i < 32; i++)
        ctl[i] = (char)i;
    assert_written(ctl, 32,
                   "\"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007\\b\\t\\n"
                   "\\u000b\\f\\r\\u000e\\u000f\\u0010\\u0011\\u0012\\u0013\\u0014\\u0015"
                   "\\u0016\\u0017\\u0018\\u0019\\u001a\\u001b\\u001c\\u001d\\u001e\\u001f\"");
}

static void test_write_str_cap(void **state) {
    bh_buf_t b;
    bh_buf_init(&b, 10);
    assert_int_equal(bh_buf_appends(&b, "ab"), BH_OK);
    assert_int_equal(bh_json_write_str(&b, "1234567", 7), BH_ETOOBIG);
    assert_int_equal(b.len, 2);
    assert_string_equal(b.data, "ab");
    /* fits raw but not once escaped: rolled back, buffer unchanged */
    assert_int_equal(bh_json_write_str(&b, "\n\n\n\n", 4), BH_ETOOBIG);
    assert_int_equal(b.len, 2);
    assert_string_equal(b.data, "ab");
    assert_int_equal(bh_json_write_str(&b, "12345\n", 6), BH_ETOOBIG);
    assert_string_equal(b.data, "ab");
    assert_int_equal(bh_json_write_str(&b, "1\n2", 3), BH_OK);
    assert_string_equal(b.data, "ab\"1\\n2\"");
    bh_buf_free(&b);
}

/* Writer output parses back to the same bytes, for every ASCII byte and some UTF-8. */
static void test_write_parse_round_trip(void **state) {
    char s[140];
    size_t n = 0;
    for (int c = 0; c < 128; c++)
        s[n++] = (char)c;
    memcpy(s + n, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9);
    n += 9;
    bh_buf_t b;
    bh_buf_init(&b, 0);
    assert_int_equal(bh_json_write_str(&b, s, n), BH_OK);
    bh_json_doc_t *doc;
    assert_int_equal(parse_n(b.data, b.len, DEPTH, &doc), BH_OK);
    assert_int_equal(bh_json_root(doc)->len, n);
    assert_memory_equal(bh_json_root(doc)->str, s, n);
    bh_json_free(doc);
    bh_buf_free(&b);
}

static int valid(const char *s, size_t n) {
    char *p = malloc(n ? n : 1);
    assert_non_null(p);
    memcpy(p, s, n);
    int r = bh_utf8_valid(p, n);
    free(p);
    return r;
}

static void test_utf8_samples(void **state) {
    static const char *good[] = {
        "",
        "abc",
        "\xc2\x80",
        "\xdf\xbf",
        "\xe0\xa0\x80",
        "\xed\x9f\xbf",
        "\xee\x80\x80",
        "\xef\xbf\xbf",
        "\xf0\x90\x80\x80",
        "\xf4\x8f\xbf\xbf",
        "\xf3\xbf\xbf\xbf",
        "a\xc3\xa9z\xe2\x82\xac\xf0\x9f\x98\x80!",
    };
    static const char *bad[] = {
        "\x80",
        "\xbf",
        "a\x80z",
        "\xc0\x80",
        "\xc1\xbf",
        "\xc2",
        "\xc2\x41",
        "\xc2\xc2\x80",
        "\xe0\x80\x80",
        "\xe0\x9f\xbf",
        "\xed\xa0\x80",
        "\xed\xbf\xbf",
        "\xed\xa0\x80\xed\xb0\x80", /* CESU-8 surrogate pair */
        "\xe2\x82",
        "\xe2\x28\xa1",
        "\xe2\x82\x28",
        "\xf0\x80\x80\x80",
        "\xf0\x8f\xbf\xbf",
        "\xf4\x90\x80\x80",
        "\xf5\x80\x80\x80",
        "\xf7\xbf\xbf\xbf",
        "\xf8\x88\x80\x80\x80",
        "\xfc\x84\x80\x80\x80\x80",
        "\xfe",
        "\xff",
        "\xf0\x9f\x98",
        "\xf0\x9f",
        "\xf0",
        "\xf0\x9f\x98\x28",
        "abc\xe2",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (!valid(good[i], strlen(good[i])))
            fail_msg("good sample %zu rejected", i);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (valid(bad[i], strlen(bad[i])))
            fail_msg("bad sample %zu accepted", i);
    assert_true(valid("a\0b", 3));
    assert_true(bh_utf8_valid(NULL, 0));
}

static size_t encode(uint32_t cp, char *o) {
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

/* Every code point: its encoding is valid unless it is a surrogate; every truncation is not. */
static void test_utf8_exhaustive(void **state) {
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        char s[4];
        size_t n = encode(cp, s);
        int want = !(cp >= 0xD800 && cp <= 0xDFFF);
        if (bh_utf8_valid(s, n) != want)
            fail_msg("U+%04X: got %d", cp, !want);
        for (size_t k = 1; k < n; k++)
            if (bh_utf8_valid(s, k))
                fail_msg("U+%04X truncated to %zu accepted", cp, k);
    }
    /* all two-byte sequences: exactly C2..DF followed by 80..BF are valid */
    for (int a = 0x80; a < 0x100; a++)
        for (int c = 0; c < 0x100; c++) {
            char s[2] = {(char)a, (char)c};
            int want = a >= 0xC2 && a <= 0xDF && c >= 0x80 && c <= 0xBF;
            assert_int_equal(bh_utf8_valid(s, 2), want);
        }
    /* five- and six-byte encodings of in-range values (overlong) are invalid */
    assert_false(bh_utf8_valid("\xf8\x80\x80\x80\x80", 5));
    assert_false(bh_utf8_valid("\xf0\x82\x82\xac", 4)); /* overlong euro sign */
}

/* Deterministic garbage and mutations of a valid message: never crash, leak or over-read. */
static void test_garbage(void **state) {
    static const char alphabet[] = "{}[]:,\"\\ \n0123456789-+.eEtrufalsn\x80\xc3\xa9\xff\x00u";
    const char *base =
        "{\"type\":1,\"target\":\"x\",\"arguments\":[\"\\u00e9\",1.5e3,[true,null]]}";
    size_t blen = strlen(base);
    uint32_t x = 2463534242u;
    int accepted = 0;
    for (int i = 0; i < 50000; i++) {
        char s[96];
        size_t n;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        if (i & 1) {
            n = x % 64;
            for (size_t k = 0; k < n; k++) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                s[k] = alphabet[x % (sizeof alphabet - 1)];
            }
        } else {
            memcpy(s, base, blen);
            n = blen;
            for (int m = 0; m < 3; m++) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                s[x % blen] = alphabet[(x >> 8) % (sizeof alphabet - 1)];
            }
        }
        bh_json_doc_t *doc;
        int rc = parse_n(s, n, 8, &doc);
        assert_true(rc == BH_OK || rc == BH_EINVAL || rc == BH_ETOOBIG);
        if (rc == BH_OK) {
            accepted++;
            assert_non_null(bh_json_root(doc));
            bh_json_free(doc);
        }
    }
    assert_true(accepted > 0); /* some mutations stay valid (e.g. a changed digit) */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scalars),
        cmocka_unit_test(test_numbers_keep_text),
        cmocka_unit_test(test_object_and_array),
        cmocka_unit_test(test_object_keys),
        cmocka_unit_test(test_string_escapes),
        cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_every_prefix),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_large_documents),
        cmocka_unit_test(test_int),
        cmocka_unit_test(test_write_str),
        cmocka_unit_test(test_write_str_cap),
        cmocka_unit_test(test_write_parse_round_trip),
        cmocka_unit_test(test_utf8_samples),
        cmocka_unit_test(test_utf8_exhaustive),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_write_tree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
