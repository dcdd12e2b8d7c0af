/* SignalR JSON hub protocol codec: parsing rules and the exact bytes the server sends. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "base/error.h"
#include "signalr/protocol.h"

static int parse(const char *text, bh_sr_msg_t *msg, const char **err) {
    bh_json_doc_t *doc = NULL;
    int r = bh_sr_parse_message(text, strlen(text), &doc, msg, err);
    bh_json_free(doc);
    return r;
}

static void test_invocation(void **state) {
    const char *text = "{\"type\":1,\"invocationId\":\"7\",\"target\":\"GetBalances\","
                       "\"arguments\":[\"c1\"]}";
    bh_json_doc_t *doc = NULL;
    bh_sr_msg_t m;
    const char *err = NULL;
    assert_int_equal(bh_sr_parse_message(text, strlen(text), &doc, &m, &err), BH_OK);
    assert_int_equal(m.type, BH_SR_INVOCATION);
    assert_string_equal(m.invocation_id, "7");
    assert_string_equal(m.target, "GetBalances");
    assert_int_equal(m.arguments->count, 1);
    assert_string_equal(bh_json_at(m.arguments, 0)->str, "c1");
    assert_false(m.has_stream_ids);
    bh_json_free(doc);
}

static void test_invocation_without_id(void **state) {
    bh_sr_msg_t m;
    const char *err;
    assert_int_equal(parse("{\"type\":1,\"target\":\"X\",\"arguments\":[]}", &m, &err), BH_OK);
    assert_null(m.invocation_id);
    assert_int_equal(
        parse("{\"type\":1,\"target\":\"X\",\"arguments\":[],\"streamIds\":[\"1\"]}", &m, &err),
        BH_OK);
    assert_true(m.has_stream_ids);
}

static void test_rejections(void **state) {
    static const struct {
        const char *text, *err;
    } cases[] = {
        {"hello", "Message is not valid JSON."},
        {"[1]", "Message is not a JSON object."},
        {"{}", "Missing required property 'type'."},
        {"{\"type\":\"1\"}", "Expected 'type' to be of type Integer."},
        {"{\"type\":1.5}", "Expected 'type' to be of type Integer."},
        {"{\"type\":1,\"arguments\":[]}", "Missing required property 'target'."},
        {"{\"type\":1,\"target\":5,\"arguments\":[]}", "Missing required property 'target'."},
        {"{\"type\":1,\"target\":\"X\"}", "Missing required property 'arguments'."},
        {"{\"type\":1,\"target\":\"X\",\"arguments\":{}}",
         "Missing required property 'arguments'."},
        {"{\"type\":1,\"invocationId\":3,\"target\":\"X\",\"arguments\":[]}",
         "Expected 'invocationId' to be of type String."},
        {"{\"type\":4,\"target\":\"X\",\"arguments\":[]}",
         "Missing required property 'invocationId'."},
        {"{\"type\":3}", "Missing required property 'invocationId'."},
        {"{\"type\":5}", "Missing required property 'invocationId'."},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bh_sr_msg_t m;
        const char *err = NULL;
        assert_int_equal(parse(cases[i].text, &m, &err), BH_EINVAL);
        assert_string_equal(err, cases[i].err);
    }
}

static void test_other_types_parse(void **state) {
    bh_sr_msg_t m;
    const char *err;
    assert_int_equal(parse("{\"type\":6}", &m, &err), BH_OK);
    assert_int_equal(m.type, BH_SR_PING);
    assert_int_equal(parse("{\"type\":7,\"error\":\"bye\"}", &m, &err), BH_OK);
    assert_int_equal(m.type, BH_SR_CLOSE);
    assert_int_equal(parse("{\"type\":99,\"whatever\":[1,2]}", &m, &err), BH_OK);
    assert_int_equal(m.type, 99);
}

static void test_handshake(void **state) {
    bh_json_doc_t *doc = NULL;
    const char *proto = NULL, *err = NULL;
    int64_t version = -1;
    const char *ok = "{\"protocol\":\"json\",\"version\":1}";
    assert_int_equal(bh_sr_parse_handshake(ok, strlen(ok), &doc, &proto, &version, &err), BH_OK);
    assert_string_equal(proto, "json");
    assert_int_equal(version, 1);
    bh_json_free(doc);
    const char *bad[] = {"",
                         "{",
                         "{\"version\":1}",
                         "{\"protocol\":1,\"version\":1}",
                         "{\"protocol\":\"json\"}",
                         "{\"protocol\":\"json\",\"version\":\"1\"}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        doc = NULL;
        err = NULL;
        assert_int_equal(
            bh_sr_parse_handshake(bad[i], strlen(bad[i]), &doc, &proto, &version, &err), BH_EINVAL);
        assert_null(doc);
        assert_non_null(err);
    }
}

static void expect_buf(bh_buf_t *b, const char *want) {
    assert_int_equal(b->len, strlen(want));
    assert_memory_equal(b->data, want, b->len);
    bh_buf_reset(b);
}

static void test_writers(void **state) {
    bh_buf_t b;
    bh_buf_init(&b, 0);
    assert_int_equal(bh_sr_write_completion(&b, "1", NULL), BH_OK);
    expect_buf(&b, "{\"type\":3,\"invocationId\":\"1\",\"result\":null}\x1e");
    assert_int_equal(bh_sr_write_completion(&b, "a\"b", "Unknown hub method 'X'"), BH_OK);
    expect_buf(&b,
               "{\"type\":3,\"invocationId\":\"a\\\"b\",\"error\":\"Unknown hub method 'X'\"}\x1e");
    assert_int_equal(bh_sr_write_invocation(&b, "executionEvents", "{\"a\":1}", 7), BH_OK);
    expect_buf(&b, "{\"type\":1,\"target\":\"executionEvents\",\"arguments\":[{\"a\":1}]}\x1e");
    assert_int_equal(bh_sr_write_ping(&b), BH_OK);
    expect_buf(&b, "{\"type\":6}\x1e");
    assert_int_equal(bh_sr_write_close(&b, NULL, 0), BH_OK);
    expect_buf(&b, "{\"type\":7}\x1e");
    assert_int_equal(bh_sr_write_close(&b, "boom", 1), BH_OK);
    expect_buf(&b, "{\"type\":7,\"error\":\"boom\",\"allowReconnect\":true}\x1e");
    assert_int_equal(bh_sr_write_handshake_response(&b, NULL), BH_OK);
    expect_buf(&b, "{}\x1e");
    assert_int_equal(bh_sr_write_handshake_response(&b, "no"), BH_OK);
    expect_buf(&b, "{\"error\":\"no\"}\x1e");
    bh_buf_free(&b);
}

static void test_prefixes_never_crash(void **state) {
    const char *text = "{\"type\":1,\"invocationId\":\"\\u00e9\",\"target\":\"GetBalances\","
                       "\"arguments\":[\"c1\",{\"x\":[null,true,1e5]}]}";
    size_t n = strlen(text);
    for (size_t i = 0; i < n; i++) {
        bh_json_doc_t *doc = NULL;
        bh_sr_msg_t m;
        const char *err = NULL;
        assert_int_equal(bh_sr_parse_message(text, i, &doc, &m, &err), BH_EINVAL);
        assert_null(doc);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_invocation),
        cmocka_unit_test(test_invocation_without_id),
        cmocka_unit_test(test_rejections),
        cmocka_unit_test(test_other_types_parse),
        cmocka_unit_test(test_handshake),
        cmocka_unit_test(test_writers),
        cmocka_unit_test(test_prefixes_never_crash),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
