/* SignalR JSON hub protocol codec: parsing rules, the exact bytes the server sends, framing, and
 * the protocol table. */
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
        {"{\"type\":1,\"target\":\"GetBalances\\u0000x\",\"arguments\":[]}",
         "Expected 'target' to be a string without NUL characters."},
        {"{\"type\":1,\"invocationId\":\"1\\u0000\",\"target\":\"X\",\"arguments\":[]}",
         "Expected 'invocationId' to be of type String."},
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

static void test_ack_sequence(void **state) {
    bh_json_doc_t *doc = NULL;
    bh_sr_msg_t m;
    const char *err = NULL;
    const char *ack = "{\"type\":8,\"sequenceId\":1394}";
    assert_int_equal(bh_sr_parse_message(ack, strlen(ack), &doc, &m, &err), BH_OK);
    assert_int_equal(m.type, BH_SR_ACK);
    assert_int_equal(m.sequence_id, 1394);
    bh_json_free(doc);
    const char *seq = "{\"sequenceId\":9223372036854775807,\"type\":9}";
    assert_int_equal(bh_sr_parse_message(seq, strlen(seq), &doc, &m, &err), BH_OK);
    assert_int_equal(m.type, BH_SR_SEQUENCE);
    assert_int_equal(m.sequence_id, INT64_MAX);
    bh_json_free(doc);
    assert_int_equal(parse("{\"type\":9,\"sequenceId\":0}", &m, &err), BH_OK);
    assert_int_equal(m.sequence_id, 0);
    static const struct {
        const char *text, *err;
    } bad[] = {
        {"{\"type\":8}", "Missing required property 'sequenceId'."},
        {"{\"type\":9}", "Missing required property 'sequenceId'."},
        {"{\"type\":8,\"sequenceId\":\"1\"}", "Expected 'sequenceId' to be of type Integer."},
        {"{\"type\":8,\"sequenceId\":null}", "Expected 'sequenceId' to be of type Integer."},
        {"{\"type\":8,\"sequenceId\":1.5}", "Expected 'sequenceId' to be of type Integer."},
        {"{\"type\":8,\"sequenceId\":1e3}", "Expected 'sequenceId' to be of type Integer."},
        {"{\"type\":9,\"sequenceId\":-1}", "Expected 'sequenceId' to be of type Integer."},
        {"{\"type\":9,\"sequenceId\":9223372036854775808}",
         "Expected 'sequenceId' to be of type Integer."},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err = NULL;
        assert_int_equal(parse(bad[i].text, &m, &err), BH_EINVAL);
        assert_string_equal(err, bad[i].err);
    }
}

static void test_table(void **state) {
    const bh_sr_protocol_t *p = bh_sr_protocol_find("json");
    assert_ptr_equal(p, &bh_sr_json_protocol);
    assert_string_equal(p->name, "json");
    assert_int_equal(p->binary, 0);
    assert_int_equal(p->version, 2);
    assert_ptr_equal(p->parse, bh_sr_parse_message);
    assert_null(bh_sr_protocol_find("JSON"));
    assert_null(bh_sr_protocol_find("xml"));

    bh_buf_t b;
    bh_buf_init(&b, 0);
    assert_int_equal(p->write_ack(&b, 1394), BH_OK);
    expect_buf(&b, "{\"type\":8,\"sequenceId\":1394}\x1e");
    assert_int_equal(p->write_sequence(&b, 0), BH_OK);
    expect_buf(&b, "{\"type\":9,\"sequenceId\":0}\x1e");
    assert_int_equal(p->write_sequence(&b, UINT64_MAX), BH_OK);
    expect_buf(&b, "{\"type\":9,\"sequenceId\":18446744073709551615}\x1e");
    /* The table's writers are the public ones. */
    assert_int_equal(p->write_completion(&b, "1", NULL), BH_OK);
    expect_buf(&b, "{\"type\":3,\"invocationId\":\"1\",\"result\":null}\x1e");
    assert_int_equal(p->write_invocation(&b, "e", "1", 1), BH_OK);
    expect_buf(&b, "{\"type\":1,\"target\":\"e\",\"arguments\":[1]}\x1e");
    assert_int_equal(p->write_ping(&b), BH_OK);
    expect_buf(&b, "{\"type\":6}\x1e");
    assert_int_equal(p->write_close(&b, NULL, 1), BH_OK);
    expect_buf(&b, "{\"type\":7,\"allowReconnect\":true}\x1e");
    /* Capped buffer: an error, never a partial record past the cap. */
    for (size_t cap = 1; cap < 80; cap++) {
        bh_buf_t small;
        bh_buf_init(&small, cap);
        int rcs[] = {
            p->write_completion(&small, "12", "Unknown hub method 'X'"),
            p->write_invocation(&small, "target", "[1,2]", 5),
            p->write_close(&small, "bye", 1),
            p->write_ack(&small, 123456),
            p->write_sequence(&small, 7),
            p->write_ping(&small),
            bh_sr_write_handshake_response(&small, "no"),
        };
        for (size_t i = 0; i < sizeof rcs / sizeof rcs[0]; i++)
            assert_true(rcs[i] == BH_OK || rcs[i] == BH_ETOOBIG);
        /* Only whole records: every one of them parses. */
        size_t off = 0;
        while (off < small.len) {
            const char *rec;
            size_t n;
            int used = p->frame(small.data + off, small.len - off, 1000, &rec, &n);
            assert_true(used > 0);
            bh_json_doc_t *doc = NULL;
            bh_sr_msg_t m;
            const char *err;
            if (n == 14 && memcmp(rec, "{\"error\":\"no\"}", 14) == 0) /* the handshake reply */
                ;
            else
                assert_int_equal(bh_sr_parse_message(rec, n, &doc, &m, &err), BH_OK);
            bh_json_free(doc);
            off += (size_t)used;
        }
        bh_buf_free(&small);
    }
    bh_buf_free(&b);
}

static void test_frame(void **state) {
    const bh_sr_protocol_t *p = &bh_sr_json_protocol;
    const char *msg = NULL;
    size_t len = 99;
    /* One record: its bytes without the separator; the separator counted as consumed. */
    assert_int_equal(p->frame("{}\x1e{\"a\"", 7, 100, &msg, &len), 3);
    assert_int_equal(len, 2);
    assert_memory_equal(msg, "{}", 2);
    assert_int_equal(p->frame("\x1e", 1, 100, &msg, &len), 1);
    assert_int_equal(len, 0);
    /* Incomplete. */
    assert_int_equal(p->frame("", 0, 100, &msg, &len), 0);
    assert_int_equal(p->frame("{\"type\":6", 9, 100, &msg, &len), 0);
    /* Size limit: a record of exactly max bytes is fine, one more is not; without a separator
     * yet, more than max bytes buffered is already too big. */
    assert_int_equal(p->frame("0123456789\x1e", 11, 10, &msg, &len), 11);
    assert_int_equal(len, 10);
    assert_int_equal(p->frame("01234567890\x1e", 12, 10, &msg, &len), BH_ETOOBIG);
    assert_int_equal(p->frame("0123456789", 10, 10, &msg, &len), 0);
    assert_int_equal(p->frame("01234567890", 11, 10, &msg, &len), BH_ETOOBIG);
    assert_int_equal(p->frame("\x1e", 1, 0, &msg, &len), 1);
    assert_int_equal(p->frame("x", 1, 0, &msg, &len), BH_ETOOBIG);
    /* Every prefix of a record without its separator is incomplete, never a crash. */
    const char *rec = "{\"type\":8,\"sequenceId\":3}\x1e";
    size_t n = strlen(rec);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(p->frame(rec, i, 1000, &msg, &len), 0);
    assert_int_equal(p->frame(rec, n, 1000, &msg, &len), (int)n);
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
        cmocka_unit_test(test_ack_sequence),
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_frame),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
