/* SignalR MessagePack hub protocol: VarInt framing, every writer's exact bytes, the parser on
 * every message type, transcoding of every MessagePack type, and malformed input of every kind. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/error.h"
#include "signalr/protocol.h"
#include "hex_util.h"

static const bh_sr_protocol_t *mp = &bh_sr_msgpack_protocol;

static void expect_hex(bh_buf_t *b, const char *hex) {
    char want[512];
    size_t n = unhex(hex, want, sizeof want);
    if (b->len != n || memcmp(b->data, want, n) != 0) {
        fprintf(stderr, "got:  ");
        for (size_t i = 0; i < b->len; i++)
            fprintf(stderr, "%02x", (unsigned char)b->data[i]);
        fprintf(stderr, "\nwant: %s\n", hex);
    }
    assert_int_equal(b->len, n);
    assert_memory_equal(b->data, want, n);
    bh_buf_reset(b);
}

/* Frame exactly one message out of framed bytes and parse it. */
static int parse_framed(const char *data, size_t len, bh_json_doc_t **doc, bh_sr_msg_t *m,
                        const char **err) {
    const char *msg;
    size_t msg_len;
    int used = mp->frame(data, len, 1 << 20, &msg, &msg_len);
    assert_int_equal(used, (int)len);
    return mp->parse(msg, msg_len, doc, m, err);
}

static int parse_hex(const char *payload_hex, bh_json_doc_t **doc, bh_sr_msg_t *m,
                     const char **err) {
    char buf[512];
    size_t n = unhex(payload_hex, buf, sizeof buf);
    *err = NULL;
    int rc = mp->parse(buf, n, doc, m, err);
    if (rc)
        assert_null(*doc);
    return rc;
}

static const bh_json_t *arg(const bh_sr_msg_t *m, size_t i) {
    const bh_json_t *a = bh_json_at(m->arguments, i);
    assert_non_null(a);
    return a;
}

/* ---- the table ---- */

static void test_table(void **state) {
    assert_ptr_equal(bh_sr_protocol_find("messagepack"), &bh_sr_msgpack_protocol);
    assert_ptr_equal(bh_sr_protocol_find("json"), &bh_sr_json_protocol);
    assert_null(bh_sr_protocol_find("MessagePack"));
    assert_null(bh_sr_protocol_find(""));
    assert_string_equal(mp->name, "messagepack");
    assert_int_equal(mp->binary, 1);
    assert_int_equal(mp->version, 2);
}

/* ---- framing ---- */

static void test_frame_varint(void **state) {
    static const struct {
        const char *prefix;
        size_t size;
    } cases[] = {
        {"00", 0},     {"01", 1},           {"7f", 127},
        {"8001", 128}, {"ff7f", 16383},     {"808001", 16384},
        {"8000", 0},   {"ffff7f", 2097151}, {"80808001", 1u << 21},
    };
    static char data[(1u << 21) + 8];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t k = unhex(cases[i].prefix, data, 8);
        memset(data + k, 'x', cases[i].size);
        const char *msg = NULL;
        size_t msg_len = 99;
        /* Complete: exactly the prefix plus the payload, the payload located right after it. */
        assert_int_equal(mp->frame(data, k + cases[i].size, 1u << 22, &msg, &msg_len),
                         (int)(k + cases[i].size));
        assert_ptr_equal(msg, data + k);
        assert_int_equal(msg_len, cases[i].size);
        /* One byte short, and a short prefix: incomplete. */
        if (cases[i].size)
            assert_int_equal(mp->frame(data, k + cases[i].size - 1, 1u << 22, &msg, &msg_len), 0);
        for (size_t j = 0; j < k; j++)
            assert_int_equal(mp->frame(data, j, 1u << 22, &msg, &msg_len), 0);
        /* A second message behind it is not consumed. */
        if (cases[i].size < 100) {
            data[k + cases[i].size] = 0x01;
            assert_int_equal(mp->frame(data, k + cases[i].size + 1, 1u << 22, &msg, &msg_len),
                             (int)(k + cases[i].size));
        }
        /* max equal to the size is fine, one less is too big, before any payload byte. */
        int complete = cases[i].size == 0 ? (int)k : 0;
        assert_int_equal(mp->frame(data, k, cases[i].size, &msg, &msg_len), complete);
        if (cases[i].size)
            assert_int_equal(mp->frame(data, k, cases[i].size - 1, &msg, &msg_len), BH_ETOOBIG);
    }
}

static void test_frame_oversize_early(void **state) {
    const char *msg;
    size_t msg_len;
    char d[8];
    /* 0x65 = 101 > 100: rejected from the first byte. */
    assert_int_equal(mp->frame("\x65", 1, 100, &msg, &msg_len), BH_ETOOBIG);
    /* 0xff: at least 127 whatever follows. */
    assert_int_equal(mp->frame("\xff", 1, 100, &msg, &msg_len), BH_ETOOBIG);
    assert_int_equal(mp->frame("\xff", 1, 200, &msg, &msg_len), 0);
    /* 16384 with max 16383: only known once the third byte arrives. */
    assert_int_equal(mp->frame("\x80\x80", 2, 16383, &msg, &msg_len), 0);
    assert_int_equal(mp->frame("\x80\x80\x01", 3, 16383, &msg, &msg_len), BH_ETOOBIG);
    /* 2^31 - 1 (the largest the spec allows) and beyond, with no limit from max. */
    unhex("ffffffff07", d, sizeof d);
    assert_int_equal(mp->frame(d, 5, SIZE_MAX, &msg, &msg_len), BH_ETOOBIG);
    unhex("8080808008", d, sizeof d);
    assert_int_equal(mp->frame(d, 5, SIZE_MAX, &msg, &msg_len), BH_ETOOBIG);
    /* A fifth byte with the continuation bit: no valid length is that long. */
    unhex("8080808080", d, sizeof d);
    assert_int_equal(mp->frame(d, 5, SIZE_MAX, &msg, &msg_len), BH_EINVAL);
    assert_int_equal(mp->frame(d, 4, SIZE_MAX, &msg, &msg_len), 0);
    /* Nothing yet. */
    assert_int_equal(mp->frame(d, 0, 100, &msg, &msg_len), 0);
}

/* ---- writers ---- */

/* Expected bytes produced once with the real client's encoder (node, @microsoft/signalr-protocol-
 * msgpack 9.0.6, `new MessagePackHubProtocol().writeMessage(m)`, hex of the ArrayBuffer), for:
 *   {type:1, target:"executionEvents", arguments:[{channel:"executionEvents", sequence:7,
 *    available:0.5, allocated:1000, neg:-12.25, tiny:1e-18, big:123456789012, ok:true,
 *    none:null, list:["é",2]}], streamIds:[]}
 *   {type:3, invocationId:"1", result:null}
 *   {type:3, invocationId:'a"b', error:"Unknown hub method 'X'"}
 *   {type:6}, {type:8, sequenceId:36}, {type:8, sequenceId:300}, {type:9, sequenceId:2**32}
 * Our writers must produce the same bytes for the same messages. */
static const char FIX_SERVER_INVOCATION[] =
    "9501960180c0af657865637574696f6e4576656e7473918aa76368616e6e656caf657865637574696f6e4576656e"
    "7473a873657175656e636507a9617661696c61626c65cb3fe0000000000000a9616c6c6f6361746564cd03e8a36e"
    "6567cbc028800000000000a474696e79cb3c32725dd1d243aca3626967cf0000001cbe991a14a26f6bc3a46e6f6e"
    "65c0a46c69737492a2c3a90290";
static const char FIX_COMPLETION_NULL[] = "07950380a13103c0";
static const char FIX_COMPLETION_ERROR[] =
    "1f950380a361226201b6556e6b6e6f776e20687562206d6574686f6420275827";

static void test_writers_match_real_client(void **state) {
    bh_buf_t b;
    bh_buf_init(&b, 0);
    const char *arg_json =
        "{\"channel\":\"executionEvents\",\"sequence\":7,\"available\":0.5,\"allocated\":1000,"
        "\"neg\":-12.25,\"tiny\":0.000000000000000001,\"big\":123456789012,\"ok\":true,"
        "\"none\":null,\"list\":[\"\xc3\xa9\",2]}";
    assert_int_equal(mp->write_invocation(&b, "executionEvents", arg_json, strlen(arg_json)), 0);
    expect_hex(&b, FIX_SERVER_INVOCATION);
    assert_int_equal(mp->write_completion(&b, "1", NULL), 0);
    expect_hex(&b, FIX_COMPLETION_NULL);
    assert_int_equal(mp->write_completion(&b, "a\"b", "Unknown hub method 'X'"), 0);
    expect_hex(&b, FIX_COMPLETION_ERROR);
    assert_int_equal(mp->write_ping(&b), 0);
    expect_hex(&b, "029106");
    assert_int_equal(mp->write_ack(&b, 36), 0);
    expect_hex(&b, "03920824");
    assert_int_equal(mp->write_ack(&b, 300), 0);
    expect_hex(&b, "059208cd012c");
    assert_int_equal(mp->write_sequence(&b, 4294967296ull), 0);
    expect_hex(&b, "0b9209cf0000000100000000");
    bh_buf_free(&b);
}

static void test_writers_exact(void **state) {
    bh_buf_t b;
    bh_buf_init(&b, 0);
    /* Close: always three items, like ASP.NET: [7, error or nil, allowReconnect]. */
    assert_int_equal(mp->write_close(&b, NULL, 0), 0);
    expect_hex(&b, "049307c0c2");
    assert_int_equal(mp->write_close(&b, "", 1), 0);
    expect_hex(&b, "049307c0c3");
    assert_int_equal(mp->write_close(&b, "xyz", 1), 0);
    expect_hex(&b, "079307a378797ac3");
    /* Ack/Sequence with every integer width. */
    assert_int_equal(mp->write_sequence(&b, 0), 0);
    expect_hex(&b, "03920900");
    assert_int_equal(mp->write_sequence(&b, 127), 0);
    expect_hex(&b, "0392097f");
    assert_int_equal(mp->write_sequence(&b, 128), 0);
    expect_hex(&b, "049209cc80");
    assert_int_equal(mp->write_ack(&b, 65536), 0);
    expect_hex(&b, "079208ce00010000");
    assert_int_equal(mp->write_ack(&b, UINT64_MAX), 0);
    expect_hex(&b, "0b9208cfffffffffffffffff");
    /* Completion: void methods complete with a nil result, kind 3 (as ASP.NET does). */
    assert_int_equal(mp->write_completion(&b, "xyz", NULL), 0);
    expect_hex(&b, "09950380a378797a03c0");
    assert_int_equal(mp->write_completion(&b, "xyz", "Error"), 0);
    expect_hex(&b, "0e950380a378797a01a54572726f72");
    /* Invocation: the spec's layout [1, {}, nil, target, [arg], []]. */
    assert_int_equal(mp->write_invocation(&b, "method", "42", 2), 0);
    expect_hex(&b, "0e960180c0a66d6574686f64912a90");
    /* Writers append after what is there. */
    bh_buf_appends(&b, "abc");
    assert_int_equal(mp->write_ping(&b), 0);
    assert_int_equal(mp->write_ack(&b, 1), 0);
    expect_hex(&b, "616263 029106 03920801");
    bh_buf_free(&b);
}

static void expect_arg(const char *arg_json, const char *want_hex) {
    bh_buf_t b;
    char want[128];
    bh_buf_init(&b, 0);
    assert_int_equal(mp->write_invocation(&b, "T", arg_json, strlen(arg_json)), 0);
    /* [1, {}, nil, "T", [arg], []] around the argument. */
    size_t n = unhex(want_hex, want, sizeof want);
    assert_int_equal((unsigned char)b.data[0], 8 + n);
    assert_memory_equal(b.data + 1, "\x96\x01\x80\xc0\xa1T\x91", 7);
    if (b.len != 9 + n || memcmp(b.data + 8, want, n) != 0)
        fprintf(stderr, "argument %s: want %s\n", arg_json, want_hex);
    assert_int_equal(b.len, 9 + n);
    assert_memory_equal(b.data + 8, want, n);
    assert_int_equal((unsigned char)b.data[b.len - 1], 0x90);
    bh_buf_free(&b);
}

static void test_invocation_argument_encoding(void **state) {
    /* Integers: smallest encoding, exact up to 64 bits. */
    expect_arg("0", "00");
    expect_arg("-0", "00");
    expect_arg("127", "7f");
    expect_arg("128", "cc80");
    expect_arg("255", "ccff");
    expect_arg("256", "cd0100");
    expect_arg("65535", "cdffff");
    expect_arg("65536", "ce00010000");
    expect_arg("4294967296", "cf0000000100000000");
    expect_arg("-1", "ff");
    expect_arg("-32", "e0");
    expect_arg("-33", "d0df");
    expect_arg("-128", "d080");
    expect_arg("-129", "d1ff7f");
    expect_arg("-2147483649", "d3ffffffff7fffffff");
    expect_arg("9223372036854775807", "cf7fffffffffffffff");
    expect_arg("-9223372036854775808", "d38000000000000000");
    expect_arg("18446744073709551615", "cfffffffffffffffff");
    /* Past 64 bits, or with a fraction or an exponent: float64 nearest the decimal text. */
    expect_arg("18446744073709551616", "cb43f0000000000000");
    expect_arg("-9223372036854775809", "cbc3e0000000000000");
    expect_arg("0.1", "cb3fb999999999999a");
    expect_arg("0.5", "cb3fe0000000000000");
    expect_arg("1E2", "cb4059000000000000");
    expect_arg("1.0", "cb3ff0000000000000");
    expect_arg("-0.0", "cb8000000000000000");
    expect_arg("0.000000000000000001", "cb3c32725dd1d243ac");
    expect_arg("12345678901234567890.123456789012345678", "cb43e56a95319d63e1");
    expect_arg("1e-400", "cb0000000000000000");
    /* Halfway between two doubles (2^53 + 1): ties to even. */
    expect_arg("9007199254740993.0", "cb4340000000000000");
    /* Strings by length class, and the other types. */
    expect_arg("\"\"", "a0");
    expect_arg("\"\\u00e9\\n\"", "a3c3a90a");
    expect_arg("null", "c0");
    expect_arg("true", "c3");
    expect_arg("false", "c2");
    expect_arg("[]", "90");
    expect_arg("{}", "80");
    expect_arg("[1,[2,{\"\":null}]]", "92 01 92 02 81 a0 c0");
    expect_arg(" {\"a\" : [true , -1.5]} ", "81 a161 92 c3 cbbff8000000000000");

    bh_buf_t b;
    bh_buf_init(&b, 0);
    char s[70000];
    memset(s, 'a', sizeof s);
    s[0] = '"';
    /* str8 from 32 bytes, str16 from 256, str32 from 65536. */
    static const struct {
        size_t n;
        const char *hdr;
    } strs[] = {{31, "bf"},      {32, "d920"},      {255, "d9ff"},
                {256, "da0100"}, {65535, "daffff"}, {65536, "db00010000"}};
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        char hdr[8];
        size_t hn = unhex(strs[i].hdr, hdr, sizeof hdr);
        s[strs[i].n + 1] = '"';
        assert_int_equal(mp->write_invocation(&b, "T", s, strs[i].n + 2), 0);
        s[strs[i].n + 1] = 'a';
        const char *p = b.data;
        while ((unsigned char)*p & 0x80) /* past the length prefix */
            p++;
        p++;
        assert_memory_equal(p + 7, hdr, hn);
        assert_int_equal(b.len - (size_t)(p - b.data), 7 + hn + strs[i].n + 1);
        bh_buf_reset(&b);
    }
    bh_buf_free(&b);
}

static void test_invocation_length_prefixes(void **state) {
    /* Payload = 8 + string header + string length with target "T": hit 127/128/16383/16384. */
    static const struct {
        size_t str_len;
        const char *prefix;
    } cases[] = {{117, "7f"}, {118, "8001"}, {16372, "ff7f"}, {16373, "808001"}};
    char s[16400];
    bh_buf_t b;
    bh_buf_init(&b, 0);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memset(s, 'q', cases[i].str_len + 2);
        s[0] = s[cases[i].str_len + 1] = '"';
        assert_int_equal(mp->write_invocation(&b, "T", s, cases[i].str_len + 2), 0);
        char want[4];
        size_t k = unhex(cases[i].prefix, want, sizeof want);
        assert_memory_equal(b.data, want, k);
        const char *msg;
        size_t msg_len;
        assert_int_equal(mp->frame(b.data, b.len, 1 << 20, &msg, &msg_len), (int)b.len);
        assert_int_equal(msg_len, b.len - k);
        bh_buf_reset(&b);
    }
    bh_buf_free(&b);
}

static void test_writer_failures_leave_buffer(void **state) {
    bh_buf_t b;
    bh_buf_init(&b, 0);
    bh_buf_appends(&b, "keep");
    /* Not JSON, or a number past the double range: nothing is appended. */
    assert_int_equal(mp->write_invocation(&b, "T", "{", 1), BH_EINVAL);
    assert_int_equal(mp->write_invocation(&b, "T", "[1e400]", 7), BH_ERANGE);
    assert_int_equal(mp->write_invocation(&b, "T", "-1e400", 6), BH_ERANGE);
    assert_int_equal(b.len, 4);
    assert_string_equal(b.data, "keep");
    bh_buf_free(&b);
    /* A capped buffer: every writer fails cleanly at every cap up to its size. */
    for (size_t cap = 1; cap < 24; cap++) {
        bh_buf_init(&b, cap);
        bh_buf_appendc(&b, 'k');
        int rcs[] = {
            mp->write_completion(&b, "12345", "an error"),
            mp->write_invocation(&b, "target", "[1,2,3,\"four\"]", 14),
            mp->write_close(&b, "an error", 1),
            mp->write_ack(&b, INT64_MAX),
            mp->write_sequence(&b, 1ull << 40),
            mp->write_ping(&b),
        };
        for (size_t i = 0; i < sizeof rcs / sizeof rcs[0]; i++)
            assert_true(rcs[i] == 0 || rcs[i] == BH_ETOOBIG);
        /* Whatever fit is whole frames: they parse back one after another. */
        size_t off = 1;
        while (off < b.len) {
            const char *msg;
            size_t msg_len;
            int used = mp->frame(b.data + off, b.len - off, 1 << 20, &msg, &msg_len);
            assert_true(used > 0);
            bh_json_doc_t *doc;
            bh_sr_msg_t m;
            const char *err;
            assert_int_equal(mp->parse(msg, msg_len, &doc, &m, &err), 0);
            bh_json_free(doc);
            off += (size_t)used;
        }
        assert_int_equal(off, b.len);
        bh_buf_free(&b);
    }
}

/* ---- parsing ---- */

/* Produced once with the real client's encoder, as FIX_SERVER_INVOCATION above, for messages the
 * client sends:
 *   invoke:  {type:1, invocationId:"0", target:"GetBalances", arguments:["my-client-123"]}
 *   send:    {type:1, target:"GetBalances", arguments:["x"]}
 *   stream:  {type:4, invocationId:"2", target:"Counter", arguments:[3, 1.5, -7,
 *            9007199254740993], streamIds:["s1"]}
 *   headers: {type:1, headers:{x:"y", z:"z"}, invocationId:"xyz", target:"method",
 *            arguments:[42], streamIds:[]}
 *   cancel:  {type:5, invocationId:"2"}; close: {type:7}; void completion {type:3,
 *            invocationId:"9"}; item: {type:2, invocationId:"s1", item:{a:[1,2]}}
 *   floats:  {type:1, invocationId:"5", target:"T", arguments:[0.1, 1e21, 1.5e-7, 1e-6, 123.456,
 *            -0.000001, 5e-324, 1.7976931348623157e308, 2**53+2, 100, 1e20, 0.000001234]} */
static const char FIX_INVOKE[] =
    "20950180a130ab47657442616c616e63657391ad6d792d636c69656e742d313233";
static const char FIX_SEND[] = "13950180c0ab47657442616c616e63657391a178";
static const char FIX_STREAM[] =
    "26960480a132a7436f756e7465729403cb3ff8000000000000f9cb434000000000000091a27331";
static const char FIX_HEADERS[] = "19960182a178a179a17aa17aa378797aa66d6574686f64912a90";
static const char FIX_CANCEL[] = "05930580a132";
static const char FIX_CLOSE[] = "039207c0";
static const char FIX_VOID[] = "06940380a13902";
static const char FIX_ITEM[] = "0c940280a2733181a161920102";
static const char FIX_FLOATS[] =
    "6c950180a135a1549ccb3fb999999999999acb444b1ae4d6e2ef50cb3e8421f5f40d8376cb3eb0c6f7a0b5ed8dcb"
    "405edd2f1a9fbe77cbbeb0c6f7a0b5ed8dcb0000000000000001cb7fefffffffffffffcb434000000000000164cb"
    "4415af1d78b58c40cb3eb4b3fd5942cd96";

static int parse_fixture(const char *hex, bh_json_doc_t **doc, bh_sr_msg_t *m) {
    char buf[512];
    size_t n = unhex(hex, buf, sizeof buf);
    const char *err = NULL;
    int rc = parse_framed(buf, n, doc, m, &err);
    if (rc)
        fprintf(stderr, "%s: %s\n", hex, err);
    return rc;
}

static void test_parse_real_client(void **state) {
    bh_json_doc_t *doc;
    bh_sr_msg_t m;
    assert_int_equal(parse_fixture(FIX_INVOKE, &doc, &m), 0);
    assert_int_equal(m.type, BH_SR_INVOCATION);
    assert_string_equal(m.invocation_id, "0");
    assert_string_equal(m.target, "GetBalances");
    assert_int_equal(m.arguments->count, 1);
    assert_int_equal(arg(&m, 0)->type, BH_JSON_STRING);
    assert_string_equal(arg(&m, 0)->str, "my-client-123");
    assert_false(m.has_stream_ids);
    bh_json_free(doc);

    assert_int_equal(parse_fixture(FIX_SEND, &doc, &m), 0);
    assert_null(m.invocation_id);
    assert_string_equal(m.target, "GetBalances");
    bh_json_free(doc);

    assert_int_equal(parse_fixture(FIX_STREAM, &doc, &m), 0);
    assert_int_equal(m.type, BH_SR_STREAM_INVOCATION);
    assert_string_equal(m.invocation_id, "2");
    assert_string_equal(m.target, "Counter");
    assert_int_equal(m.arguments->count, 4);
    assert_string_equal(arg(&m, 0)->str, "3");
    assert_string_equal(arg(&m, 1)->str, "1.5");
    assert_string_equal(arg(&m, 2)->str, "-7");
    assert_string_equal(arg(&m, 3)->str, "9007199254740992"); /* what the client's double holds */
    assert_true(m.has_stream_ids);
    bh_json_free(doc);

    assert_int_equal(parse_fixture(FIX_HEADERS, &doc, &m), 0);
    assert_string_equal(m.invocation_id, "xyz");
    assert_string_equal(m.target, "method");
    assert_string_equal(arg(&m, 0)->str, "42");
    assert_false(m.has_stream_ids);
    bh_json_free(doc);

    assert_int_equal(parse_fixture(FIX_CANCEL, &doc, &m), 0);
    assert_int_equal(m.type, BH_SR_CANCEL_INVOCATION);
    assert_string_equal(m.invocation_id, "2");
    bh_json_free(doc);

    assert_int_equal(parse_fixture(FIX_CLOSE, &doc, &m), 0);
    assert_int_equal(m.type, BH_SR_CLOSE);
    bh_json_free(doc);

    assert_int_equal(parse_fixture(FIX_VOID, &doc, &m), 0);
    assert_int_equal(m.type, BH_SR_COMPLETION);
    assert_string_equal(m.invocation_id, "9");
    bh_json_free(doc);

    assert_int_equal(parse_fixture(FIX_ITEM, &doc, &m), 0);
    assert_int_equal(m.type, BH_SR_STREAM_ITEM);
    assert_string_equal(m.invocation_id, "s1");
    bh_json_free(doc);

    assert_int_equal(parse_fixture("029106", &doc, &m), 0);
    assert_int_equal(m.type, BH_SR_PING);
    bh_json_free(doc);
    assert_int_equal(parse_fixture("03920824", &doc, &m), 0);
    assert_int_equal(m.type, BH_SR_ACK);
    assert_int_equal(m.sequence_id, 36);
    bh_json_free(doc);
    assert_int_equal(parse_fixture("0b9209cf0000000100000000", &doc, &m), 0);
    assert_int_equal(m.type, BH_SR_SEQUENCE);
    assert_int_equal(m.sequence_id, 4294967296ull);
    bh_json_free(doc);

    /* Doubles read back as the text JavaScript's String(x) gives for them (node printed these),
     * i.e. what the JSON protocol would have carried for the same call. */
    static const char *const floats[] = {"0.1",
                                         "1e+21",
                                         "1.5e-7",
                                         "0.000001",
                                         "123.456",
                                         "-0.000001",
                                         "5e-324",
                                         "1.7976931348623157e+308",
                                         "9007199254740994",
                                         "100",
                                         "100000000000000000000",
                                         "0.000001234"};
    assert_int_equal(parse_fixture(FIX_FLOATS, &doc, &m), 0);
    assert_int_equal(m.arguments->count, 12);
    for (size_t i = 0; i < 12; i++) {
        assert_int_equal(arg(&m, i)->type, BH_JSON_NUMBER);
        assert_string_equal(arg(&m, i)->str, floats[i]);
    }
    bh_json_free(doc);
}

static void test_parse_spec_examples(void **state) {
    /* The payloads of HubProtocol.md's MessagePack section. */
    bh_json_doc_t *doc;
    bh_sr_msg_t m;
    const char *err;
    assert_int_equal(
        parse_hex("96 01 80 a3 78 79 7a a6 6d 65 74 68 6f 64 91 2a 90", &doc, &m, &err), 0);
    assert_int_equal(m.type, BH_SR_INVOCATION);
    assert_string_equal(m.invocation_id, "xyz");
    assert_string_equal(m.target, "method");
    assert_string_equal(arg(&m, 0)->str, "42");
    bh_json_free(doc);
    assert_int_equal(parse_hex("96 01 80 c0 a6 6d 65 74 68 6f 64 91 2a 90", &doc, &m, &err), 0);
    assert_null(m.invocation_id);
    bh_json_free(doc);
    assert_int_equal(
        parse_hex("96 04 80 a3 78 79 7a a6 6d 65 74 68 6f 64 91 2a 90", &doc, &m, &err), 0);
    assert_int_equal(m.type, BH_SR_STREAM_INVOCATION);
    bh_json_free(doc);
    assert_int_equal(parse_hex("94 02 80 a3 78 79 7a 2a", &doc, &m, &err), 0);
    assert_int_equal(m.type, BH_SR_STREAM_ITEM);
    bh_json_free(doc);
    assert_int_equal(parse_hex("95 03 80 a3 78 79 7a 01 a5 45 72 72 6f 72", &doc, &m, &err), 0);
    assert_int_equal(m.type, BH_SR_COMPLETION);
    assert_string_equal(bh_json_get(bh_json_root(doc), "error")->str, "Error");
    bh_json_free(doc);
    assert_int_equal(parse_hex("94 03 80 a3 78 79 7a 02", &doc, &m, &err), 0);
    assert_null(bh_json_get(bh_json_root(doc), "result"));
    bh_json_free(doc);
    assert_int_equal(parse_hex("95 03 80 a3 78 79 7a 03 2a", &doc, &m, &err), 0);
    assert_string_equal(bh_json_get(bh_json_root(doc), "result")->str, "42");
    bh_json_free(doc);
    assert_int_equal(parse_hex("93 05 80 a3 78 79 7a", &doc, &m, &err), 0);
    assert_int_equal(m.type, BH_SR_CANCEL_INVOCATION);
    assert_string_equal(m.invocation_id, "xyz");
    bh_json_free(doc);
    assert_int_equal(parse_hex("91 06", &doc, &m, &err), 0);
    assert_int_equal(m.type, BH_SR_PING);
    bh_json_free(doc);
    assert_int_equal(parse_hex("92 07 a3 78 79 7a", &doc, &m, &err), 0);
    assert_int_equal(m.type, BH_SR_CLOSE);
    assert_string_equal(bh_json_get(bh_json_root(doc), "error")->str, "xyz");
    bh_json_free(doc);
    assert_int_equal(parse_hex("93 07 a3 78 79 7a c3", &doc, &m, &err), 0);
    assert_int_equal(bh_json_get(bh_json_root(doc), "allowReconnect")->type, BH_JSON_TRUE);
    bh_json_free(doc);
    assert_int_equal(parse_hex("92 08 cc 24", &doc, &m, &err), 0);
    assert_int_equal(m.type, BH_SR_ACK);
    assert_int_equal(m.sequence_id, 36);
    bh_json_free(doc);
    assert_int_equal(parse_hex("92 09 cc 13", &doc, &m, &err), 0);
    assert_int_equal(m.type, BH_SR_SEQUENCE);
    assert_int_equal(m.sequence_id, 19);
    bh_json_free(doc);
    assert_int_equal(parse_hex("96 01 82 a1 78 a1 79 a1 7a a1 7a a3 78 79 7a a6 6d 65 74 68 6f 64 "
                               "91 2a 90",
                               &doc, &m, &err),
                     0);
    assert_string_equal(m.invocation_id, "xyz");
    assert_string_equal(m.target, "method");
    bh_json_free(doc);
}

static void test_parse_lenient_shapes(void **state) {
    bh_json_doc_t *doc;
    bh_sr_msg_t m;
    const char *err;
    /* An empty invocation id is none (ASP.NET): a non-blocking invocation. */
    assert_int_equal(parse_hex("95 01 80 a0 a1 54 90", &doc, &m, &err), 0);
    assert_null(m.invocation_id);
    bh_json_free(doc);
    /* Items a later protocol version may append are skipped (any type, even binary). */
    assert_int_equal(parse_hex("97 01 80 a1 31 a1 54 90 90 c4 02 00 01", &doc, &m, &err), 0);
    assert_string_equal(m.target, "T");
    bh_json_free(doc);
    assert_int_equal(parse_hex("93 06 92 01 02 c0", &doc, &m, &err), 0);
    assert_int_equal(m.type, BH_SR_PING);
    bh_json_free(doc);
    assert_int_equal(parse_hex("94 07 c0 c2 d4 01 00", &doc, &m, &err), 0);
    assert_int_equal(m.type, BH_SR_CLOSE);
    bh_json_free(doc);
    /* Unknown message types parse, whatever follows. */
    assert_int_equal(parse_hex("93 0a c4 01 00 81 01 02", &doc, &m, &err), 0);
    assert_int_equal(m.type, 10);
    bh_json_free(doc);
    /* Integer types in any width. */
    assert_int_equal(parse_hex("92 d0 08 cf 00 00 00 00 00 00 00 05", &doc, &m, &err), 0);
    assert_int_equal(m.type, BH_SR_ACK);
    assert_int_equal(m.sequence_id, 5);
    bh_json_free(doc);
    assert_int_equal(parse_hex("92 08 d3 7f ff ff ff ff ff ff ff", &doc, &m, &err), 0);
    assert_int_equal(m.sequence_id, INT64_MAX);
    bh_json_free(doc);
    /* A void completion: four items. */
    assert_int_equal(parse_hex("94 03 80 a1 31 02", &doc, &m, &err), 0);
    bh_json_free(doc);
}

static int json_equal(const bh_json_t *a, const bh_json_t *b) {
    if (a->type != b->type || a->len != b->len || a->count != b->count)
        return 0;
    if ((a->key == NULL) != (b->key == NULL) ||
        (a->key && (a->key_len != b->key_len || memcmp(a->key, b->key, a->key_len) != 0)))
        return 0;
    if (a->str && memcmp(a->str, b->str, a->len) != 0)
        return 0;
    for (a = a->child, b = b->child; a && b; a = a->next, b = b->next)
        if (!json_equal(a, b))
            return 0;
    return a == b;
}

/* Transcode one argument (hex of a MessagePack value) and compare it with a JSON text. */
static void expect_transcoded(const char *value_hex, const char *want_json) {
    char payload[600];
    size_t n = unhex("95 01 80 c0 a1 54 91", payload, sizeof payload);
    n += unhex(value_hex, payload + n, sizeof payload - n);
    bh_json_doc_t *doc, *want;
    bh_sr_msg_t m;
    const char *err = NULL;
    int rc = mp->parse(payload, n, &doc, &m, &err);
    if (rc)
        fprintf(stderr, "%s: %s\n", value_hex, err);
    assert_int_equal(rc, 0);
    assert_int_equal(bh_json_parse(want_json, strlen(want_json), 64, &want), 0);
    const bh_json_t *got = arg(&m, 0), *exp = bh_json_root(want);
    if (!json_equal(got, exp))
        fprintf(stderr, "%s: got %s, want %s\n", value_hex, got->str ? got->str : "(container)",
                want_json);
    assert_true(json_equal(got, exp));
    bh_json_free(want);
    bh_json_free(doc);
}

static void test_parse_value_types(void **state) {
    expect_transcoded("c0", "null");
    expect_transcoded("c2", "false");
    expect_transcoded("c3", "true");
    expect_transcoded("00", "0");
    expect_transcoded("7f", "127");
    expect_transcoded("ff", "-1");
    expect_transcoded("e0", "-32");
    expect_transcoded("cc ff", "255");
    expect_transcoded("cd ff ff", "65535");
    expect_transcoded("ce ff ff ff ff", "4294967295");
    expect_transcoded("cf ff ff ff ff ff ff ff ff", "18446744073709551615");
    expect_transcoded("d0 80", "-128");
    expect_transcoded("d0 7f", "127");
    expect_transcoded("d1 80 00", "-32768");
    expect_transcoded("d2 80 00 00 00", "-2147483648");
    expect_transcoded("d3 80 00 00 00 00 00 00 00", "-9223372036854775808");
    /* float32: shortest text that reads back as the same float. */
    expect_transcoded("ca 3d cc cc cd", "0.1");
    expect_transcoded("ca 4b 80 00 00", "16777216");
    expect_transcoded("ca 7f 7f ff ff", "3.4028235e+38");
    expect_transcoded("ca 00 00 00 01", "1e-45");
    expect_transcoded("ca c0 20 00 00", "-2.5");
    expect_transcoded("ca 33 d6 bf 95", "1e-7");
    expect_transcoded("ca 47 f1 20 65", "123456.79");
    /* float64, zero of both signs, and the non-finite values JSON cannot hold. */
    expect_transcoded("cb 3f b9 99 99 99 99 99 9a", "0.1");
    expect_transcoded("cb 43 e5 6a 95 31 9d 63 e1", "12345678901234567000");
    expect_transcoded("cb 3c 32 72 5d d1 d2 43 ac", "1e-18");
    expect_transcoded("cb 00 00 00 00 00 00 00 00", "0");
    expect_transcoded("cb 80 00 00 00 00 00 00 00", "0");
    expect_transcoded("cb 7f f8 00 00 00 00 00 00", "null");
    expect_transcoded("cb 7f f0 00 00 00 00 00 00", "null");
    expect_transcoded("cb ff f0 00 00 00 00 00 00", "null");
    expect_transcoded("ca 7f c0 00 00", "null");
    /* Strings in every width, escapes for JSON, multi-byte UTF-8. */
    expect_transcoded("a0", "\"\"");
    expect_transcoded("a3 61 22 5c", "\"a\\\"\\\\\"");
    expect_transcoded("a2 00 1f", "\"\\u0000\\u001f\"");
    expect_transcoded("d9 02 c3 a9", "\"\xc3\xa9\"");
    expect_transcoded("da 00 04 f0 9f 98 80", "\"\xf0\x9f\x98\x80\"");
    expect_transcoded("db 00 00 00 01 7a", "\"z\"");
    /* Containers in every width. */
    expect_transcoded("90", "[]");
    expect_transcoded("dc 00 02 01 02", "[1,2]");
    expect_transcoded("dd 00 00 00 01 c0", "[null]");
    expect_transcoded("80", "{}");
    expect_transcoded("de 00 01 a1 61 01", "{\"a\":1}");
    expect_transcoded("df 00 00 00 02 a1 61 01 a1 62 92 c3 c2", "{\"a\":1,\"b\":[true,false]}");
}

static void test_parse_nested_structure(void **state) {
    bh_json_doc_t *doc;
    bh_sr_msg_t m;
    const char *err;
    assert_int_equal(
        parse_hex("95 01 80 a1 31 a1 54 92 82 a1 61 92 01 a1 78 a1 62 80 c0", &doc, &m, &err), 0);
    const bh_json_t *o = arg(&m, 0);
    assert_int_equal(o->type, BH_JSON_OBJECT);
    assert_int_equal(o->count, 2);
    const bh_json_t *a = bh_json_get(o, "a");
    assert_int_equal(a->type, BH_JSON_ARRAY);
    assert_string_equal(bh_json_at(a, 0)->str, "1");
    assert_string_equal(bh_json_at(a, 1)->str, "x");
    assert_int_equal(bh_json_get(o, "b")->type, BH_JSON_OBJECT);
    assert_int_equal(arg(&m, 1)->type, BH_JSON_NULL);
    bh_json_free(doc);
}

static void test_parse_rejections(void **state) {
    static const struct {
        const char *hex, *err;
    } cases[] = {
        {"", "Message is empty."},
        {"c1", "Message is not valid MessagePack."},
        {"01", "Message is not a MessagePack array."},
        {"a1 31", "Message is not a MessagePack array."},
        {"80", "Message is not a MessagePack array."},
        {"90", "Missing required property 'type'."},
        {"91 a1 31", "Expected 'type' to be of type Integer."},
        {"91 ff", "Expected 'type' to be of type Integer."},
        {"91 cb 3f f8 00 00 00 00 00 00", "Expected 'type' to be of type Integer."},
        {"91 ce 00 0f 42 41", "Expected 'type' to be of type Integer."},
        {"94 01 80 c0 a1 54", "Invalid payload for Invocation message."},
        {"94 04 80 a1 31 a1 54", "Invalid payload for StreamInvocation message."},
        {"93 02 80 a1 31", "Invalid payload for StreamItem message."},
        {"93 03 80 a1 31", "Invalid payload for Completion message."},
        {"92 05 80", "Invalid payload for CancelInvocation message."},
        {"91 07", "Invalid payload for Close message."},
        {"91 08", "Invalid payload for Ack message."},
        {"91 09", "Invalid payload for Sequence message."},
        {"95 01 90 c0 a1 54 90", "Invalid headers."},
        {"95 01 c0 c0 a1 54 90", "Invalid headers."},
        {"95 01 81 a1 78 01 c0 a1 54 90", "Invalid headers."},
        {"95 01 81 01 a1 78 c0 a1 54 90", "Invalid headers."},
        {"95 01 81 a1 78 a2 c3 28 c0 a1 54 90", "String is not valid UTF-8."},
        {"95 01 80 c0 c0 90", "Missing required property 'target'."},
        {"95 01 80 c0 a0 90", "Missing required property 'target'."},
        {"95 01 80 c0 05 90", "Missing required property 'target'."},
        {"95 01 80 07 a1 54 90", "Expected 'invocationId' to be of type String."},
        {"95 01 80 c0 a1 54 80", "Missing required property 'arguments'."},
        {"95 01 80 c0 a1 54 c0", "Missing required property 'arguments'."},
        {"95 04 80 c0 a1 54 90", "Missing required property 'invocationId'."},
        {"95 04 80 a0 a1 54 90", "Missing required property 'invocationId'."},
        {"93 05 80 c0", "Missing required property 'invocationId'."},
        {"94 02 80 c0 01", "Missing required property 'invocationId'."},
        {"94 03 80 c0 02", "Missing required property 'invocationId'."},
        {"95 01 80 c0 a1 54 91 c4 01 00", "Binary arguments are not supported."},
        {"95 01 80 c0 a1 54 91 c5 00 00", "Binary arguments are not supported."},
        {"95 01 80 c0 a1 54 91 c6 00 00 00 00", "Binary arguments are not supported."},
        {"95 01 80 c0 a1 54 91 d4 01 00", "Binary arguments are not supported."},
        {"95 01 80 c0 a1 54 91 d6 ff 00 00 00 00", "Binary arguments are not supported."},
        {"95 01 80 c0 a1 54 91 c7 00 05", "Binary arguments are not supported."},
        {"95 01 80 c0 a1 54 91 81 a1 6b d8 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00",
         "Binary arguments are not supported."},
        {"95 01 80 c0 a1 54 91 a2 c3 28", "String is not valid UTF-8."},
        {"95 01 80 c0 a1 54 91 a2 c0 80", "String is not valid UTF-8."},
        {"95 01 80 c0 a1 54 91 a3 ed a0 80", "String is not valid UTF-8."},
        {"95 01 80 c0 a1 54 91 a4 f4 90 80 80", "String is not valid UTF-8."},
        {"95 01 80 c0 a1 54 91 a1 ff", "String is not valid UTF-8."},
        {"95 01 80 c0 a1 ff 90", "String is not valid UTF-8."},
        {"95 01 80 a1 80 a1 54 90", "String is not valid UTF-8."},
        {"95 01 80 c0 a1 54 91 81 a1 ff 01", "String is not valid UTF-8."},
        {"95 01 80 c0 a1 54 91 81 01 02", "Map keys must be strings."},
        {"95 01 80 c0 a1 54 91 81 c0 02", "Map keys must be strings."},
        {"94 03 80 a1 31 04", "Invalid invocation result kind."},
        {"94 03 80 a1 31 00", "Invalid invocation result kind."},
        {"94 03 80 a1 31 ff", "Invalid invocation result kind."},
        {"94 03 80 a1 31 a1 31", "Invalid invocation result kind."},
        {"94 03 80 a1 31 01", "Invalid payload for Completion message."},
        {"94 03 80 a1 31 03", "Invalid payload for Completion message."},
        {"92 08 a1 31", "Expected 'sequenceId' to be of type Integer."},
        {"92 08 ff", "Expected 'sequenceId' to be of type Integer."},
        {"92 08 c0", "Expected 'sequenceId' to be of type Integer."},
        {"92 08 cb 3f f8 00 00 00 00 00 00", "Expected 'sequenceId' to be of type Integer."},
        {"92 08 cf ff ff ff ff ff ff ff ff", "Expected 'sequenceId' to be of type Integer."},
        {"91 06 00", "Message has bytes after its MessagePack array."},
        {"91 06 91 06", "Message has bytes after its MessagePack array."},
        /* Counts and lengths that claim far more than there is: rejected, nothing allocated. */
        {"95 01 80 c0 a1 54 dd ff ff ff ff", "Message is not valid MessagePack."},
        {"95 01 80 c0 a1 54 91 df ff ff ff ff", "Message is not valid MessagePack."},
        {"95 01 80 c0 a1 54 91 db ff ff ff ff 61", "Message is not valid MessagePack."},
        {"dd ff ff ff ff 06", "Message is not valid MessagePack."},
        {"96 01 80 c0 a1 54 90 dd ff ff ff ff", "Message is not valid MessagePack."},
        {"95 01 80 c0 a1 54 91 c1", "Message is not valid MessagePack."},
        {"95 01 80 c0 a1 54 91 cb 00", "Message is not valid MessagePack."},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bh_json_doc_t *doc = (bh_json_doc_t *)&doc; /* non-NULL: parse must reset it */
        bh_sr_msg_t m;
        const char *err = NULL;
        int rc = parse_hex(cases[i].hex, &doc, &m, &err);
        if (rc != BH_EINVAL || !err || strcmp(err, cases[i].err) != 0)
            fprintf(stderr, "case %zu (%s): rc %d err %s\n", i, cases[i].hex, rc, err);
        assert_int_equal(rc, BH_EINVAL);
        assert_null(doc);
        assert_string_equal(err, cases[i].err);
    }
}

/* [1, {}, nil, "T", args] with `levels` containers in total, the message array included. */
static size_t nested(char *out, int levels, int in_map) {
    size_t n = unhex("95 01 80 c0 a1 54", out, 16);
    for (int i = 1; i < levels; i++) {
        out[n++] = (char)0x91;
        if (in_map && i > 1) {
            out[n - 1] = (char)0x81;
            out[n++] = (char)0xa0; /* key "" */
        }
    }
    out[n++] = 0x01; /* innermost value (the arguments array needs one even at levels 2) */
    return n;
}

static void test_parse_depth(void **state) {
    char buf[256];
    for (int in_map = 0; in_map < 2; in_map++) {
        bh_json_doc_t *doc;
        bh_sr_msg_t m;
        const char *err = NULL;
        size_t n = nested(buf, 64, in_map);
        assert_int_equal(mp->parse(buf, n, &doc, &m, &err), 0);
        assert_int_equal(m.type, BH_SR_INVOCATION);
        bh_json_free(doc);
        n = nested(buf, 65, in_map);
        assert_int_equal(mp->parse(buf, n, &doc, &m, &err), BH_EINVAL);
        assert_string_equal(err, "Message nesting is too deep.");
        assert_null(doc);
    }
    /* The same limit in items that are skipped. */
    size_t n = unhex("92 06", buf, sizeof buf);
    for (int i = 0; i < 63; i++)
        buf[n++] = (char)0x91;
    buf[n++] = 0x01;
    bh_json_doc_t *doc;
    bh_sr_msg_t m;
    const char *err = NULL;
    assert_int_equal(mp->parse(buf, n, &doc, &m, &err), 0);
    bh_json_free(doc);
    memmove(buf + 3, buf + 2, n - 2);
    buf[2] = (char)0x91;
    assert_int_equal(mp->parse(buf, n + 1, &doc, &m, &err), BH_EINVAL);
    assert_string_equal(err, "Message nesting is too deep.");
}

/* Every framed fixture: every proper prefix is incomplete to the framer and invalid to the parser;
 * every single-byte mutation parses or fails cleanly. */
static void test_prefixes_and_mutations(void **state) {
    static const char *const fixtures[] = {FIX_SERVER_INVOCATION,
                                           FIX_COMPLETION_NULL,
                                           FIX_COMPLETION_ERROR,
                                           FIX_INVOKE,
                                           FIX_SEND,
                                           FIX_STREAM,
                                           FIX_HEADERS,
                                           FIX_CANCEL,
                                           FIX_CLOSE,
                                           FIX_VOID,
                                           FIX_ITEM,
                                           FIX_FLOATS,
                                           "029106",
                                           "03920824",
                                           "0b9209cf0000000100000000"};
    for (size_t f = 0; f < sizeof fixtures / sizeof fixtures[0]; f++) {
        char buf[512];
        size_t n = unhex(fixtures[f], buf, sizeof buf);
        const char *msg;
        size_t msg_len;
        int used = mp->frame(buf, n, 1 << 20, &msg, &msg_len);
        assert_int_equal(used, (int)n);
        size_t prefix = (size_t)(msg - buf);
        for (size_t i = 0; i < n; i++)
            assert_int_equal(mp->frame(buf, i, 1 << 20, &msg, &msg_len), 0);
        for (size_t i = 0; i < msg_len; i++) {
            /* A copy of exactly i bytes, so ASan sees any read past the end. */
            char *copy = malloc(i ? i : 1);
            memcpy(copy, buf + prefix, i);
            bh_json_doc_t *doc = (bh_json_doc_t *)&doc; /* non-NULL: parse must reset it */
            bh_sr_msg_t m;
            const char *err = NULL;
            assert_int_equal(mp->parse(copy, i, &doc, &m, &err), BH_EINVAL);
            assert_null(doc);
            assert_non_null(err);
            free(copy);
        }
        for (size_t i = prefix; i < n; i++) {
            static const unsigned char values[] = {0x00, 0x01, 0x7f, 0x80, 0x90, 0x91, 0x9f,
                                                   0xa0, 0xbf, 0xc0, 0xc1, 0xc3, 0xc4, 0xcb,
                                                   0xd9, 0xdc, 0xdd, 0xdf, 0xe0, 0xff};
            for (size_t v = 0; v < sizeof values; v++) {
                char *copy = malloc(msg_len);
                memcpy(copy, buf + prefix, msg_len);
                copy[i - prefix] = (char)values[v];
                bh_json_doc_t *doc;
                bh_sr_msg_t m;
                const char *err = NULL;
                int rc = mp->parse(copy, msg_len, &doc, &m, &err);
                assert_true(rc == 0 || rc == BH_EINVAL);
                if (rc == 0)
                    bh_json_free(doc);
                else
                    assert_non_null(err);
                free(copy);
            }
        }
    }
}

static void test_garbage(void **state) {
    uint32_t x = 12345;
    for (int round = 0; round < 20000; round++) {
        size_t n = (size_t)(round % 64);
        char *buf = malloc(n ? n : 1);
        for (size_t i = 0; i < n; i++) {
            x = x * 1103515245u + 12345u;
            buf[i] = (char)(x >> 16);
        }
        if (n && round % 3 == 0)
            buf[0] = (char)(0x91 + round % 6); /* an array most of the time */
        bh_json_doc_t *doc;
        bh_sr_msg_t m;
        const char *err = NULL;
        int rc = mp->parse(buf, n, &doc, &m, &err);
        assert_true(rc == 0 || rc == BH_EINVAL);
        if (rc == 0)
            bh_json_free(doc);
        const char *msg;
        size_t msg_len;
        rc = mp->frame(buf, n, 40, &msg, &msg_len);
        assert_true(rc >= 0 || rc == BH_ETOOBIG || rc == BH_EINVAL);
        if (rc > 0)
            assert_true((size_t)rc <= n && msg >= buf && msg + msg_len == buf + rc);
        free(buf);
    }
}

/* Our own writers' output parses back to what was written (amounts rounded as documented). */
static void test_round_trip(void **state) {
    bh_buf_t b;
    bh_buf_init(&b, 0);
    const char *arg_json = "{\"userId\":\"u1\",\"sequence\":42,\"assets\":[{\"name\":\"BTC\","
                           "\"available\":0.5,\"allocated\":1000,\"currentExposure\":0,"
                           "\"maxExposure\":12345678901234567890.123456789012345678}],"
                           "\"tiny\":0.000000000000000001,\"deleted\":false}";
    assert_int_equal(mp->write_invocation(&b, "executionEvents", arg_json, strlen(arg_json)), 0);
    bh_json_doc_t *doc;
    bh_sr_msg_t m;
    const char *err = NULL;
    assert_int_equal(parse_framed(b.data, b.len, &doc, &m, &err), 0);
    assert_int_equal(m.type, BH_SR_INVOCATION);
    assert_null(m.invocation_id);
    assert_string_equal(m.target, "executionEvents");
    const bh_json_t *o = arg(&m, 0);
    assert_string_equal(bh_json_get(o, "userId")->str, "u1");
    assert_string_equal(bh_json_get(o, "sequence")->str, "42");
    const bh_json_t *a = bh_json_at(bh_json_get(o, "assets"), 0);
    assert_string_equal(bh_json_get(a, "available")->str, "0.5");
    assert_string_equal(bh_json_get(a, "allocated")->str, "1000");
    assert_string_equal(bh_json_get(a, "currentExposure")->str, "0");
    assert_string_equal(bh_json_get(a, "maxExposure")->str, "12345678901234567000");
    assert_string_equal(bh_json_get(o, "tiny")->str, "1e-18");
    assert_int_equal(bh_json_get(o, "deleted")->type, BH_JSON_FALSE);
    bh_json_free(doc);
    bh_buf_reset(&b);

    assert_int_equal(mp->write_completion(&b, "17", "boom"), 0);
    assert_int_equal(parse_framed(b.data, b.len, &doc, &m, &err), 0);
    assert_int_equal(m.type, BH_SR_COMPLETION);
    assert_string_equal(m.invocation_id, "17");
    assert_string_equal(bh_json_get(bh_json_root(doc), "error")->str, "boom");
    bh_json_free(doc);
    bh_buf_reset(&b);

    assert_int_equal(mp->write_close(&b, "bye", 1), 0);
    assert_int_equal(parse_framed(b.data, b.len, &doc, &m, &err), 0);
    assert_int_equal(m.type, BH_SR_CLOSE);
    assert_int_equal(bh_json_get(bh_json_root(doc), "allowReconnect")->type, BH_JSON_TRUE);
    bh_json_free(doc);
    bh_buf_reset(&b);

    assert_int_equal(mp->write_sequence(&b, 1ull << 62), 0);
    assert_int_equal(parse_framed(b.data, b.len, &doc, &m, &err), 0);
    assert_int_equal(m.type, BH_SR_SEQUENCE);
    assert_int_equal(m.sequence_id, 1ull << 62);
    bh_json_free(doc);
    bh_buf_free(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_frame_varint),
        cmocka_unit_test(test_frame_oversize_early),
        cmocka_unit_test(test_writers_match_real_client),
        cmocka_unit_test(test_writers_exact),
        cmocka_unit_test(test_invocation_argument_encoding),
        cmocka_unit_test(test_invocation_length_prefixes),
        cmocka_unit_test(test_writer_failures_leave_buffer),
        cmocka_unit_test(test_parse_real_client),
        cmocka_unit_test(test_parse_spec_examples),
        cmocka_unit_test(test_parse_lenient_shapes),
        cmocka_unit_test(test_parse_value_types),
        cmocka_unit_test(test_parse_nested_structure),
        cmocka_unit_test(test_parse_rejections),
        cmocka_unit_test(test_parse_depth),
        cmocka_unit_test(test_prefixes_and_mutations),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
