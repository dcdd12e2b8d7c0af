/* Unit tests for the structured logger: exact logfmt and JSON lines (stderr captured through a
 * pipe), escaping of quotes, backslashes, control characters and invalid UTF-8, typed values,
 * the level filter, and truncation at the line cap that keeps every line well-formed. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/error.h"
#include "base/json.h"
#include "base/log.h"

#define LINE_CAP 4096 /* log.c's line cap, newline included */

/* stderr redirected into a pipe while a test logs; lines stay below the pipe's capacity. */
typedef struct {
    int saved;
    int rd, wr;
} capture_t;

static void capture_start(capture_t *c) {
    int p[2];
    assert_int_equal(pipe(p), 0);
    fflush(stderr);
    c->saved = dup(STDERR_FILENO);
    assert_true(c->saved >= 0);
    assert_int_equal(dup2(p[1], STDERR_FILENO), STDERR_FILENO);
    close(p[1]);
    c->rd = p[0];
}

/* Restore stderr and return everything written meanwhile (caller frees). */
static char *capture_end(capture_t *c, size_t *len) {
    assert_int_equal(dup2(c->saved, STDERR_FILENO), STDERR_FILENO);
    close(c->saved);
    size_t cap = 1 << 16, n = 0;
    char *out = malloc(cap + 1);
    assert_non_null(out);
    for (;;) {
        ssize_t r = read(c->rd, out + n, cap - n);
        assert_true(r >= 0);
        if (r == 0)
            break;
        n += (size_t)r;
        assert_true(n < cap);
    }
    close(c->rd);
    out[n] = 0;
    if (len)
        *len = n;
    return out;
}

static int setup(void **state) {
    bh_log_set_level(BH_LOG_DEBUG);
    bh_log_set_format(BH_LOG_LOGFMT);
    return 0;
}

/* The timestamp prefix, checked digit by digit: 2026-11-27T07:00:00.000Z (24 chars). */
static void assert_ts(const char *ts) {
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.dddZ";
    for (size_t i = 0; i < sizeof shape - 1; i++) {
        if (shape[i] == 'd')
            assert_true(ts[i] >= '0' && ts[i] <= '9');
        else
            assert_int_equal(ts[i], shape[i]);
    }
}

/* A logfmt line without its "ts=... " prefix (checked), or NULL. */
static const char *logfmt_rest(const char *line) {
    assert_memory_equal(line, "ts=", 3);
    assert_ts(line + 3);
    assert_int_equal(line[27], ' ');
    return line + 28;
}

/* A JSON line without its {"ts":"...", prefix (checked). */
static const char *json_rest(const char *line) {
    assert_memory_equal(line, "{\"ts\":\"", 7);
    assert_ts(line + 7);
    assert_memory_equal(line + 31, "\",", 2);
    return line + 33;
}

static void assert_valid_json_line(const char *line, size_t len) {
    assert_true(len > 0);
    assert_int_equal(line[len - 1], '\n');
    assert_null(memchr(line, '\n', len - 1)); /* exactly one line */
    bh_json_doc_t *doc = NULL;
    assert_int_equal(bh_json_parse(line, len - 1, 8, &doc), BH_OK);
    const bh_json_t *root = bh_json_root(doc);
    assert_int_equal(root->type, BH_JSON_OBJECT);
    assert_non_null(bh_json_get(root, "ts"));
    assert_non_null(bh_json_get(root, "level"));
    assert_non_null(bh_json_get(root, "msg"));
    bh_json_free(doc);
}

static void test_logfmt_exact(void **state) {
    capture_t c;
    capture_start(&c);
    bh_log(BH_LOG_WARN, "slow consumer closed", BH_LU("conn", 42), BH_LS("peer", "127.0.0.1:5555"));
    bh_log_msg(BH_LOG_INFO, "started");
    bh_log(BH_LOG_ERROR, "x", BH_LI("neg", -7), BH_LU("max", UINT64_MAX), BH_LF("f", 0.1),
           BH_LF("g", 2.5e-7), BH_LF("n", NAN), BH_LF("pi", INFINITY), BH_LF("mi", -INFINITY));
    bh_log(BH_LOG_DEBUG, "d", BH_LS("empty", ""), BH_LS("null", NULL), BH_LI("zero", 0));
    char *out = capture_end(&c, NULL);
    char *save, *l1 = strtok_r(out, "\n", &save), *l2 = strtok_r(NULL, "\n", &save);
    char *l3 = strtok_r(NULL, "\n", &save), *l4 = strtok_r(NULL, "\n", &save);
    assert_non_null(l4);
    assert_null(strtok_r(NULL, "\n", &save));
    assert_string_equal(logfmt_rest(l1),
                        "level=warn msg=\"slow consumer closed\" conn=42 peer=127.0.0.1:5555");
    assert_string_equal(logfmt_rest(l2), "level=info msg=started");
    assert_string_equal(logfmt_rest(l3), "level=error msg=x neg=-7 max=18446744073709551615 "
                                         "f=0.1 g=2.5e-07 n=NaN pi=+Inf mi=-Inf");
    assert_string_equal(logfmt_rest(l4), "level=debug msg=d empty=\"\" null=\"\" zero=0");
    free(out);
}

static void test_json_exact(void **state) {
    bh_log_set_format(BH_LOG_JSON);
    capture_t c;
    capture_start(&c);
    bh_log(BH_LOG_WARN, "slow consumer closed", BH_LU("conn", 42), BH_LS("peer", "127.0.0.1:5555"));
    bh_log_msg(BH_LOG_INFO, "started");
    bh_log(BH_LOG_ERROR, "x", BH_LI("neg", -7), BH_LU("max", UINT64_MAX), BH_LF("f", 0.1),
           BH_LF("n", NAN), BH_LF("i", INFINITY), BH_LS("null", NULL));
    size_t len;
    char *out = capture_end(&c, &len);
    char *save, *l1 = strtok_r(out, "\n", &save), *l2 = strtok_r(NULL, "\n", &save);
    char *l3 = strtok_r(NULL, "\n", &save);
    assert_non_null(l3);
    assert_string_equal(json_rest(l1), "\"level\":\"warn\",\"msg\":\"slow consumer closed\","
                                       "\"conn\":42,\"peer\":\"127.0.0.1:5555\"}");
    assert_string_equal(json_rest(l2), "\"level\":\"info\",\"msg\":\"started\"}");
    assert_string_equal(json_rest(l3), "\"level\":\"error\",\"msg\":\"x\",\"neg\":-7,"
                                       "\"max\":18446744073709551615,\"f\":0.1,\"n\":null,"
                                       "\"i\":null,\"null\":\"\"}");
    for (char *l = out; l < out + len;) {
        size_t n = strlen(l);
        l[n] = '\n'; /* strtok's cut undone: validate each line with its newline */
        assert_valid_json_line(l, n + 1);
        l += n + 1;
    }
    free(out);
}

/* One field's rendering in the current format, without the line's prefix and msg. */
static char *render(const char *value) {
    capture_t c;
    capture_start(&c);
    bh_log(BH_LOG_INFO, "m", BH_LS("k", value));
    size_t len;
    char *out = capture_end(&c, &len);
    assert_true(len > 0 && out[len - 1] == '\n');
    out[len - 1] = 0;
    const char *marker = strstr(out, "msg=m k=");
    if (!marker)
        marker = strstr(out, "\"msg\":\"m\",\"k\":");
    assert_non_null(marker);
    const char *v = strchr(marker, 'k') + 2;
    if (*v == ':')
        v++;
    char *res = strdup(v);
    free(out);
    return res;
}

static void expect_render(const char *value, const char *want) {
    char *got = render(value);
    assert_string_equal(got, want);
    free(got);
}

static void test_logfmt_escaping(void **state) {
    expect_render("plain", "plain");
    expect_render("a-b_c.d:1/2", "a-b_c.d:1/2");
    expect_render("two words", "\"two words\"");
    expect_render("k=v", "\"k=v\"");
    expect_render("say \"hi\"", "\"say \\\"hi\\\"\"");
    expect_render("\"", "\"\\\"\"");
    expect_render("back\\slash", "\"back\\\\slash\"");
    expect_render("line\nbreak\r\ttab", "\"line\\nbreak\\r\\ttab\"");
    expect_render("bell\x01\x1f\x7f", "\"bell\\u0001\\u001f\\u007f\"");
    expect_render("caf\xc3\xa9", "\"caf\xc3\xa9\"");
    expect_render("bad\xff\xc3", "\"bad\\ufffd\\ufffd\"");
    expect_render("\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\""); /* a surrogate is not UTF-8 */
    expect_render("\xc0\xaf", "\"\\ufffd\\ufffd\"");            /* overlong */
    expect_render("", "\"\"");
}

static void test_json_escaping(void **state) {
    bh_log_set_format(BH_LOG_JSON);
    expect_render("plain", "\"plain\"}");
    expect_render("two words=x", "\"two words=x\"}");
    expect_render("say \"hi\"", "\"say \\\"hi\\\"\"}");
    expect_render("back\\slash", "\"back\\\\slash\"}");
    expect_render("line\nbreak\r\ttab", "\"line\\nbreak\\r\\ttab\"}");
    expect_render("\x01\x08\x0c\x1f\x7f", "\"\\u0001\\u0008\\u000c\\u001f\\u007f\"}");
    expect_render("\xf0\x9f\x98\x80 caf\xc3\xa9", "\"\xf0\x9f\x98\x80 caf\xc3\xa9\"}");
    expect_render("bad\xff\xfe", "\"bad\\ufffd\\ufffd\"}");
    expect_render("\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\"}"); /* > U+10FFFF */
    expect_render("\xe2\x82", "\"\\ufffd\\ufffd\"}");                       /* cut sequence */
    /* Every byte value, alone: always one valid JSON line. */
    for (int b = 1; b < 256; b++) {
        char v[2] = {(char)b, 0};
        capture_t c;
        capture_start(&c);
        bh_log(BH_LOG_INFO, "byte", BH_LS("v", v));
        size_t len;
        char *out = capture_end(&c, &len);
        assert_valid_json_line(out, len);
        free(out);
    }
}

static void test_keys(void **state) {
    capture_t c;
    capture_start(&c);
    bh_log(BH_LOG_INFO, "k", BH_LI("a b=\"c", 1), BH_LI("", 2));
    bh_log_set_format(BH_LOG_JSON);
    bh_log(BH_LOG_INFO, "k", BH_LI("a\"b", 1));
    char *out = capture_end(&c, NULL);
    char *save, *l1 = strtok_r(out, "\n", &save), *l2 = strtok_r(NULL, "\n", &save);
    assert_string_equal(logfmt_rest(l1), "level=info msg=k a_b__c=1 _=2");
    assert_string_equal(json_rest(l2), "\"level\":\"info\",\"msg\":\"k\",\"a\\\"b\":1}");
    free(out);
}

static void test_level_filter(void **state) {
    capture_t c;
    bh_log_set_level(BH_LOG_WARN);
    assert_int_equal(bh_log_level(), BH_LOG_WARN);
    capture_start(&c);
    bh_log_msg(BH_LOG_DEBUG, "hidden debug");
    bh_log(BH_LOG_INFO, "hidden info", BH_LI("n", 1));
    bh_log_msg(BH_LOG_WARN, "shown warn");
    bh_log_msg(BH_LOG_ERROR, "shown error");
    char *out = capture_end(&c, NULL);
    assert_null(strstr(out, "hidden"));
    char *save, *l1 = strtok_r(out, "\n", &save), *l2 = strtok_r(NULL, "\n", &save);
    assert_string_equal(logfmt_rest(l1), "level=warn msg=\"shown warn\"");
    assert_string_equal(logfmt_rest(l2), "level=error msg=\"shown error\"");
    assert_null(strtok_r(NULL, "\n", &save));
    free(out);

    bh_log_set_level(BH_LOG_ERROR + 1); /* silences everything */
    capture_start(&c);
    bh_log_msg(BH_LOG_ERROR, "nothing");
    size_t len;
    out = capture_end(&c, &len);
    assert_int_equal(len, 0);
    free(out);

    bh_log_set_level(BH_LOG_DEBUG);
    capture_start(&c);
    bh_log_msg(BH_LOG_DEBUG, "dbg");
    out = capture_end(&c, NULL);
    assert_string_equal(logfmt_rest(out), "level=debug msg=dbg\n");
    free(out);
}

static void test_parse(void **state) {
    int v = -1;
    static const char *const levels[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(bh_log_parse_level(levels[i], &v), BH_OK);
        assert_int_equal(v, BH_LOG_DEBUG + i);
    }
    v = -1;
    static const char *const bad[] = {"", "WARN", "warning", "info ", "trace", "debu", "errors"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(bh_log_parse_level(bad[i], &v), BH_EINVAL);
    assert_int_equal(bh_log_parse_level(NULL, &v), BH_EINVAL);
    assert_int_equal(v, -1); /* untouched on failure */
    assert_int_equal(bh_log_parse_format("json", &v), BH_OK);
    assert_int_equal(v, BH_LOG_JSON);
    assert_int_equal(bh_log_parse_format("logfmt", &v), BH_OK);
    assert_int_equal(v, BH_LOG_LOGFMT);
    assert_int_equal(bh_log_parse_format("JSON", &v), BH_EINVAL);
    assert_int_equal(bh_log_parse_format("text", &v), BH_EINVAL);
    assert_int_equal(bh_log_parse_format("", &v), BH_EINVAL);
    assert_int_equal(bh_log_parse_format(NULL, &v), BH_EINVAL);
    assert_int_equal(v, BH_LOG_LOGFMT);
}

/* Log one line with a long string value made of `unit` repeated, after a `pad`-byte prefix so
 * the cap falls at every offset within an escape or a UTF-8 sequence. */
static char *long_line(const char *unit, size_t pad, size_t *len) {
    size_t ul = strlen(unit), n = pad + ul * (2 * LINE_CAP / ul + 1);
    char *v = malloc(n + 1);
    assert_non_null(v);
    memset(v, 'p', pad);
    for (size_t i = pad; i + ul <= n; i += ul)
        memcpy(v + i, unit, ul);
    v[n] = 0;
    capture_t c;
    capture_start(&c);
    bh_log(BH_LOG_INFO, "long", BH_LU("before", 1), BH_LS("v", v), BH_LU("after", 2));
    free(v);
    return capture_end(&c, len);
}

static void test_truncation_json(void **state) {
    bh_log_set_format(BH_LOG_JSON);
    static const char *const units[] = {"a",
                                        "\"",
                                        "\\",
                                        "\x01",
                                        "\xc3\xa9",
                                        "\xe2\x82\xac",
                                        "\xf0\x9f\x98\x80",
                                        "\xff",
                                        "ab\"\n\xc3\xa9"};
    for (size_t u = 0; u < sizeof units / sizeof units[0]; u++) {
        for (size_t pad = 0; pad < 8; pad++) {
            size_t len;
            char *out = long_line(units[u], pad, &len);
            assert_true(len <= LINE_CAP);
            assert_true(len > LINE_CAP - 64); /* filled up to the cap, not dropped */
            assert_valid_json_line(out, len);
            const char *tail = ",\"truncated\":true}\n";
            assert_string_equal(out + len - strlen(tail), tail);
            assert_non_null(strstr(out, "\"msg\":\"long\",\"before\":1,\"v\":\""));
            assert_null(strstr(out, "\"after\"")); /* fields after the cut are left out */
            free(out);
        }
    }
}

static void test_truncation_logfmt(void **state) {
    static const char *const units[] = {"a", "a b", "\"", "\x01", "\xf0\x9f\x98\x80", "\xff"};
    for (size_t u = 0; u < sizeof units / sizeof units[0]; u++) {
        for (size_t pad = 0; pad < 8; pad++) {
            size_t len;
            char *out = long_line(units[u], pad, &len);
            assert_true(len <= LINE_CAP && len > LINE_CAP - 64);
            assert_null(memchr(out, '\n', len - 1));
            const char *tail = " truncated=true\n";
            assert_string_equal(out + len - strlen(tail), tail);
            assert_null(strstr(out, "after="));
            /* A quoted value is closed: an even number of unescaped quotes. */
            int quotes = 0;
            for (size_t i = 0; i < len; i++) {
                if (out[i] == '\\')
                    i++;
                else if (out[i] == '"')
                    quotes++;
            }
            assert_int_equal(quotes % 2, 0);
            free(out);
        }
    }
}

/* Many small fields: the ones past the cap are left out whole, never half-written. */
static void test_truncation_many_fields(void **state) {
    bh_log_field_t f[600];
    char keys[600][24];
    for (int i = 0; i < 600; i++) {
        snprintf(keys[i], sizeof keys[i], "field%d", i);
        f[i] = BH_LU(keys[i], 1234567890123ull);
    }
    for (int fmt = 0; fmt < 2; fmt++) {
        bh_log_set_format(fmt ? BH_LOG_JSON : BH_LOG_LOGFMT);
        capture_t c;
        capture_start(&c);
        bh_log_fields(BH_LOG_INFO, "many", f, 600);
        size_t len;
        char *out = capture_end(&c, &len);
        assert_true(len <= LINE_CAP && len > LINE_CAP - 64);
        if (fmt) {
            assert_valid_json_line(out, len);
            assert_non_null(strstr(out, ":1234567890123,\"truncated\":true}\n"));
        } else {
            assert_non_null(strstr(out, "=1234567890123 truncated=true\n"));
        }
        free(out);
    }
}

/* A long message itself is cut the same way. */
static void test_truncation_msg(void **state) {
    char *msg = malloc(8000);
    assert_non_null(msg);
    memset(msg, 'm', 7999);
    msg[7999] = 0;
    bh_log_set_format(BH_LOG_JSON);
    capture_t c;
    capture_start(&c);
    bh_log(BH_LOG_INFO, msg, BH_LI("x", 1));
    size_t len;
    char *out = capture_end(&c, &len);
    assert_valid_json_line(out, len);
    assert_true(len <= LINE_CAP);
    free(out);
    free(msg);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_logfmt_exact, setup),
        cmocka_unit_test_setup(test_json_exact, setup),
        cmocka_unit_test_setup(test_logfmt_escaping, setup),
        cmocka_unit_test_setup(test_json_escaping, setup),
        cmocka_unit_test_setup(test_keys, setup),
        cmocka_unit_test_setup(test_level_filter, setup),
        cmocka_unit_test_setup(test_parse, setup),
        cmocka_unit_test_setup(test_truncation_json, setup),
        cmocka_unit_test_setup(test_truncation_logfmt, setup),
        cmocka_unit_test_setup(test_truncation_many_fields, setup),
        cmocka_unit_test_setup(test_truncation_msg, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
