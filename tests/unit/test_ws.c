/* Unit tests for src/ws: accept key, client frames in (masked, fragmented, interleaved control
 * frames, split at every byte), every failure's Close code, the close handshake, and the exact
 * bytes of server frames; then the client side: handshake key and accept check, masked frames
 * out, unmasked server frames in (fragmented, byte by byte), masked server frames refused. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "base/buf.h"
#include "base/error.h"
#include "base/json.h"
#include "ws/ws.h"

#define MAX_MSGS 16

typedef struct {
    bh_ws_t *ws;
    bh_buf_t out; /* everything flushed so far */
    int count;    /* messages received */
    int binary[MAX_MSGS];
    size_t len[MAX_MSGS];
    bh_buf_t data; /* received payloads, concatenated */
    int echo;      /* answer each message with the same message */
} fx_t;

static void on_message(void *ud, int binary, const char *data, size_t len) {
    fx_t *f = ud;

    assert_true(f->count < MAX_MSGS);
    assert_non_null(data);
    f->binary[f->count] = binary;
    f->len[f->count] = len;
    f->count++;
    assert_int_equal(bh_buf_append(&f->data, data, len), BH_OK);
    if (f->echo)
        assert_int_equal(bh_ws_send(f->ws, binary, data, len), BH_OK);
}

static void fx_init(fx_t *f, size_t max_msg) {
    static const bh_ws_callbacks_t cb = {on_message};

    memset(f, 0, sizeof(*f));
    bh_buf_init(&f->out, 0);
    bh_buf_init(&f->data, 0);
    f->ws = bh_ws_server_new(&cb, f, max_msg);
    assert_non_null(f->ws);
}

static void fx_free(fx_t *f) {
    bh_ws_free(f->ws);
    bh_buf_free(&f->out);
    bh_buf_free(&f->data);
}

static int feed(fx_t *f, const void *p, size_t n) {
    /* exact-size heap copy: ASan catches reads past the end */
    char *copy = malloc(n ? n : 1);
    int r;

    assert_non_null(copy);
    memcpy(copy, p, n);
    r = bh_ws_feed(f->ws, copy, n);
    free(copy);
    return r;
}

static void flush(fx_t *f) {
    assert_int_equal(bh_ws_flush(f->ws, &f->out), BH_OK);
}

static void assert_out(fx_t *f, const void *want, size_t n) {
    flush(f);
    assert_int_equal(f->out.len, n);
    assert_memory_equal(f->out.data, want, n);
    bh_buf_reset(&f->out);
}

/* A client frame: always masked with the RFC 6455 example key unless mask is 0. */
static void frame_ex(bh_buf_t *b, int first, int opcode, int mask, const void *payload,
                     size_t len) {
    static const unsigned char key[4] = {0x37, 0xfa, 0x21, 0x3d};
    const unsigned char *p = payload;
    unsigned char h[14];
    size_t hl = 2, i;

    h[0] = (unsigned char)first | (unsigned char)opcode;
    if (len < 126) {
        h[1] = (unsigned char)len;
    } else if (len < 65536) {
        h[1] = 126;
        h[2] = (unsigned char)(len >> 8);
        h[3] = (unsigned char)len;
        hl = 4;
    } else {
        h[1] = 127;
        for (i = 0; i < 8; i++)
            h[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
        hl = 10;
    }
    if (mask) {
        h[1] |= 0x80;
        memcpy(h + hl, key, 4);
        hl += 4;
    }
    assert_int_equal(bh_buf_append(b, h, hl), BH_OK);
    for (i = 0; i < len; i++)
        assert_int_equal(bh_buf_appendc(b, (char)(mask ? p[i] ^ key[i % 4] : p[i])), BH_OK);
}

#define FIN 0x80

static void frame(bh_buf_t *b, int first, int opcode, const void *payload, size_t len) {
    frame_ex(b, first, opcode, 1, payload, len);
}

static void close_frame(bh_buf_t *b, uint16_t code, const char *reason) {
    char p[128];
    size_t n = strlen(reason);

    p[0] = (char)(code >> 8);
    p[1] = (char)code;
    memcpy(p + 2, reason, n);
    frame(b, FIN, 0x8, p, n + 2);
}

static const unsigned char CLOSE_1002[] = {0x88, 0x02, 0x03, 0xea};
static const unsigned char CLOSE_1007[] = {0x88, 0x02, 0x03, 0xef};
static const unsigned char CLOSE_1009[] = {0x88, 0x02, 0x03, 0xf1};

/* Feed bytes expected to be a protocol violation answered by exactly `close` (after any
 * earlier output such as pongs), with no further messages. */
static void expect_fail(const void *bytes, size_t n, size_t max_msg, const unsigned char *close) {
    fx_t f;

    fx_init(&f, max_msg);
    assert_int_equal(bh_ws_error_code(f.ws), 0);
    assert_int_equal(feed(&f, bytes, n), BH_EPROTO);
    /* the code answered is readable (e.g. to count oversized messages) */
    assert_int_equal(bh_ws_error_code(f.ws), close[2] << 8 | close[3]);
    assert_int_equal(f.count, 0);
    assert_false(bh_ws_finished(f.ws));
    assert_out(&f, close, 4);
    assert_true(bh_ws_finished(f.ws));
    /* the session is over: more input is refused, sending too */
    assert_int_equal(feed(&f, "\x81\x80\0\0\0\0", 6), BH_EPROTO);
    assert_int_equal(bh_ws_send(f.ws, 0, "x", 1), BH_ECLOSED);
    assert_out(&f, "", 0);
    fx_free(&f);
}

static void test_accept_key(void **state) {
    char out[29];

    memset(out, 'x', sizeof(out));
    assert_int_equal(bh_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, out), BH_OK);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_int_equal(bh_ws_accept_key("AAAAAAAAAAAAAAAAAAAAAA==", 24, out), BH_OK);
    assert_int_equal(strlen(out), 28);

    assert_int_equal(bh_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ=", 23, out), BH_EINVAL);
    assert_int_equal(bh_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ===", 25, out), BH_EINVAL);
    assert_int_equal(bh_ws_accept_key("dGhlIHNhbXBsZSBub25jZQAA", 24, out), BH_EINVAL);
    assert_int_equal(bh_ws_accept_key("dGhlIHNhbXBsZSBub25j*Q==", 24, out), BH_EINVAL);
    assert_int_equal(bh_ws_accept_key("", 0, out), BH_EINVAL);
    assert_int_equal(bh_ws_accept_key(NULL, 24, out), BH_EINVAL);
}

static void test_rfc_hello(void **state) {
    /* RFC 6455 5.7: a single-frame masked text message "Hello" */
    static const unsigned char hello[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                          0x7f, 0x9f, 0x4d, 0x51, 0x58};
    fx_t f;

    fx_init(&f, 1024);
    assert_int_equal(feed(&f, hello, sizeof(hello)), BH_OK);
    assert_int_equal(f.count, 1);
    assert_int_equal(f.binary[0], 0);
    assert_int_equal(f.len[0], 5);
    assert_memory_equal(f.data.data, "Hello", 5);
    assert_out(&f, "", 0);
    assert_false(bh_ws_finished(f.ws));
    assert_int_equal(bh_ws_peer_close_code(f.ws), 0);
    fx_free(&f);
}

static void test_fragmented_with_ping(void **state) {
    static const unsigned char pong[] = {0x8a, 0x04, 'p', 'i', 'n', 'g'};
    bh_buf_t in;
    fx_t f;

    bh_buf_init(&in, 0);
    frame(&in, 0, 0x1, "Hel", 3);
    frame(&in, FIN, 0x9, "ping", 4);
    frame(&in, 0, 0x0, "l", 1);
    frame(&in, FIN, 0x0, "o!", 2);
    frame(&in, 0, 0x2, "\x00\x01", 2);
    frame(&in, FIN, 0x0, "\xff", 1);
    fx_init(&f, 1024);
    assert_int_equal(feed(&f, in.data, in.len), BH_OK);
    assert_int_equal(f.count, 2);
    assert_int_equal(f.binary[0], 0);
    assert_int_equal(f.len[0], 6);
    assert_int_equal(f.binary[1], 1);
    assert_int_equal(f.len[1], 3);
    assert_memory_equal(f.data.data, "Hello!\x00\x01\xff", 9);
    assert_out(&f, pong, sizeof(pong));
    fx_free(&f);
    bh_buf_free(&in);
}

static void test_ping_pong_sizes(void **state) {
    unsigned char payload[125], want[127];
    bh_buf_t in;
    fx_t f;

    memset(payload, 'p', sizeof(payload));
    want[0] = 0x8a;
    want[1] = 125;
    memset(want + 2, 'p', 125);
    bh_buf_init(&in, 0);
    frame(&in, FIN, 0x9, payload, 125);
    frame(&in, FIN, 0x9, "", 0);
    frame(&in, FIN, 0xa, "unsolicited", 11);
    fx_init(&f, 1024);
    assert_int_equal(feed(&f, in.data, in.len), BH_OK);
    flush(&f);
    assert_int_equal(f.out.len, 127 + 2);
    assert_memory_equal(f.out.data, want, 127);
    assert_memory_equal(f.out.data + 127, "\x8a\x00", 2);
    assert_int_equal(f.count, 0);
    fx_free(&f);
    bh_buf_free(&in);
}

static void test_unmasked_is_1002(void **state) {
    static const unsigned char unmasked[] = {0x81, 0x05, 'H', 'e', 'l', 'l', 'o'};

    expect_fail(unmasked, sizeof(unmasked), 1024, CLOSE_1002);
}

static void test_protocol_errors(void **state) {
    static const struct {
        const char *what;
        unsigned char b[16];
        size_t n;
    } cases[] = {
        {"ping with 7-bit length 126", {0x89, 0xfe, 0x00, 0x7e}, 4},
        {"close with 7-bit length 127", {0x88, 0xff, 0, 0, 0, 0, 0, 0, 0, 200}, 10},
        {"fragmented ping", {0x09, 0x80, 1, 2, 3, 4}, 6},
        {"fragmented close", {0x08, 0x80, 1, 2, 3, 4}, 6},
        {"64-bit length top bit", {0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}, 14},
        {"64-bit length top bit, 16 bits used", {0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0x01, 0x00}, 10},
        {"reserved opcode 3", {0x83, 0x80, 1, 2, 3, 4}, 6},
        {"reserved opcode 7", {0x87, 0x80, 1, 2, 3, 4}, 6},
        {"reserved control opcode 11", {0x8b, 0x80, 1, 2, 3, 4}, 6},
        {"reserved control opcode 15", {0x8f, 0x80, 1, 2, 3, 4}, 6},
        {"rsv1 without extension", {0xc1, 0x80, 1, 2, 3, 4}, 6},
        {"rsv2", {0xa2, 0x80, 1, 2, 3, 4}, 6},
        {"rsv3", {0x91, 0x80, 1, 2, 3, 4}, 6},
        {"rsv on a ping", {0xc9, 0x80, 1, 2, 3, 4}, 6},
        {"fragmented pong", {0x0a, 0x80, 1, 2, 3, 4}, 6},
        {"continuation first", {0x80, 0x80, 1, 2, 3, 4}, 6},
        {"text inside fragmented text", {0x01, 0x80, 1, 2, 3, 4, 0x81, 0x80, 1, 2, 3, 4}, 12},
        {"binary inside fragmented text", {0x01, 0x80, 1, 2, 3, 4, 0x02, 0x80, 1, 2, 3, 4}, 12},
        {"close with a 1-byte payload", {0x88, 0x81, 0, 0, 0, 0, 0x03}, 7},
        {"close code 1005", {0x88, 0x82, 0, 0, 0, 0, 0x03, 0xed}, 8},
        {"close code 999", {0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe7}, 8},
        {"close code 2000", {0x88, 0x82, 0, 0, 0, 0, 0x07, 0xd0}, 8},
        {"garbage 0xff", {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 8},
        {"garbage zeros", {0, 0, 0, 0, 0, 0, 0, 0}, 8},
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        print_message("  %s\n", cases[i].what);
        expect_fail(cases[i].b, cases[i].n, 1 << 20, CLOSE_1002);
    }
}

/* A bad header split over feeds fails as soon as the bytes that make it bad are in (the length
 * is judged once complete, before the masking key), with the right code. */
static void test_bad_header_split(void **state) {
    static const unsigned char bad[] = {0x82, 0xfe, 0x04, 0x01, 1, 2, 3, 4, 'a', 'b'};
    static const unsigned char big[] = {0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4};
    static const unsigned char unmasked[] = {0x81, 0x05};
    size_t i;
    fx_t f;

    fx_init(&f, 1024); /* 1025 bytes announced */
    for (i = 0; i < 3; i++)
        assert_int_equal(feed(&f, bad + i, 1), BH_OK);
    assert_int_equal(feed(&f, bad + 3, 1), BH_EPROTO);
    assert_out(&f, CLOSE_1009, 4);
    assert_true(bh_ws_finished(f.ws));
    fx_free(&f);

    fx_init(&f, 1024);
    assert_int_equal(feed(&f, unmasked, 1), BH_OK);
    assert_int_equal(feed(&f, unmasked + 1, 1), BH_EPROTO);
    assert_out(&f, CLOSE_1002, 4);
    fx_free(&f);

    fx_init(&f, 1024);
    for (i = 0; i < 9; i++)
        assert_int_equal(feed(&f, big + i, 1), BH_OK);
    assert_int_equal(feed(&f, big + 9, 5), BH_EPROTO);
    assert_out(&f, CLOSE_1002, 4);
    fx_free(&f);
}

/* Frames before the bad one are still handled. The pong they asked for is dropped because a
 * Close is queued before the next flush (frames not yet begun give way to the Close). */
static void test_good_then_bad(void **state) {
    static const unsigned char pong[] = {0x88, 0x02, 0x03, 0xea};
    bh_buf_t in;
    fx_t f;

    bh_buf_init(&in, 0);
    frame(&in, FIN, 0x1, "ok", 2);
    frame(&in, FIN, 0x9, "p", 1);
    assert_int_equal(bh_buf_append(&in, "\x89\xfe\x00\x7e", 4), BH_OK);
    fx_init(&f, 1024);
    assert_int_equal(feed(&f, in.data, in.len), BH_EPROTO);
    assert_int_equal(f.count, 1);
    assert_memory_equal(f.data.data, "ok", 2);
    assert_out(&f, pong, sizeof(pong));
    assert_true(bh_ws_finished(f.ws));
    fx_free(&f);
    bh_buf_free(&in);
}

static void test_invalid_utf8_is_1007(void **state) {
    static const struct {
        const char *s;
        size_t n;
    } bad[] = {
        {"\xc3\x28", 2},         /* bad continuation */
        {"\xc0\xaf", 2},         /* overlong '/' */
        {"\xed\xa0\x80", 3},     /* surrogate */
        {"\xf4\x90\x80\x80", 4}, /* above U+10FFFF */
        {"ab\xe2\x82", 4},       /* truncated at the end */
        {"\xff", 1},
    };
    size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        bh_buf_t in;
        bh_buf_init(&in, 0);
        frame(&in, FIN, 0x1, bad[i].s, bad[i].n);
        expect_fail(in.data, in.len, 1024, CLOSE_1007);
        bh_buf_free(&in);
    }
    {
        /* a character split between fragments is fine; a bad one in a later fragment is not */
        bh_buf_t in;
        fx_t f;
        bh_buf_init(&in, 0);
        frame(&in, 0, 0x1, "caf\xc3", 4);
        frame(&in, FIN, 0x0, "\xa9", 1);
        fx_init(&f, 1024);
        assert_int_equal(feed(&f, in.data, in.len), BH_OK);
        assert_int_equal(f.count, 1);
        assert_memory_equal(f.data.data, "caf\xc3\xa9", 5);
        fx_free(&f);
        bh_buf_reset(&in);
        frame(&in, 0, 0x1, "ok", 2);
        frame(&in, FIN, 0x0, "\xc3\x28", 2);
        expect_fail(in.data, in.len, 1024, CLOSE_1007);
        /* invalid UTF-8 in a Close reason */
        bh_buf_reset(&in);
        frame(&in, FIN, 0x8, "\x03\xe8\xc3\x28", 4);
        expect_fail(in.data, in.len, 1024, CLOSE_1007);
        bh_buf_free(&in);
    }
    {
        /* binary messages are not checked */
        fx_t f;
        bh_buf_t in;
        bh_buf_init(&in, 0);
        frame(&in, FIN, 0x2, "\xc3\x28", 2);
        fx_init(&f, 1024);
        assert_int_equal(feed(&f, in.data, in.len), BH_OK);
        assert_int_equal(f.count, 1);
        assert_int_equal(f.binary[0], 1);
        fx_free(&f);
        bh_buf_free(&in);
    }
}

static void test_oversize_is_1009(void **state) {
    bh_buf_t in;
    fx_t f;

    bh_buf_init(&in, 0);
    /* exactly max_msg is fine */
    frame(&in, FIN, 0x1, "Hello", 5);
    fx_init(&f, 5);
    assert_int_equal(feed(&f, in.data, in.len), BH_OK);
    assert_int_equal(f.count, 1);
    fx_free(&f);
    /* one more is not, single frame or spread over fragments */
    expect_fail(in.data, in.len, 4, CLOSE_1009);
    bh_buf_reset(&in);
    frame(&in, 0, 0x2, "abc", 3);
    frame(&in, FIN, 0x0, "def", 3);
    expect_fail(in.data, in.len, 5, CLOSE_1009);
    /* the length alone decides, long before the payload is there (4 GiB announced) */
    expect_fail("\x82\xff\x00\x00\x00\x01\x00\x00\x00\x00\x01\x02\x03\x04z", 15, 1 << 20,
                CLOSE_1009);
    bh_buf_free(&in);
}

static void test_peer_close(void **state) {
    static const unsigned char echo[] = {0x88, 0x05, 0x03, 0xe8, 'b', 'y', 'e'};
    bh_buf_t in;
    fx_t f;

    bh_buf_init(&in, 0);
    close_frame(&in, 1000, "bye");
    frame(&in, FIN, 0x1, "late", 4); /* after Close: ignored */
    fx_init(&f, 1024);
    assert_int_equal(feed(&f, in.data, in.len), BH_OK);
    assert_int_equal(bh_ws_peer_close_code(f.ws), 1000);
    assert_false(bh_ws_finished(f.ws)); /* our Close is not out yet */
    assert_out(&f, echo, sizeof(echo));
    assert_true(bh_ws_finished(f.ws));
    assert_int_equal(f.count, 0);
    assert_int_equal(feed(&f, in.data, in.len), BH_OK);
    assert_int_equal(f.count, 0);
    assert_int_equal(bh_ws_send(f.ws, 0, "x", 1), BH_ECLOSED);
    assert_int_equal(bh_ws_close(f.ws, 1000, NULL), BH_ECLOSED);
    assert_out(&f, "", 0);
    fx_free(&f);

    /* a Close without a code is echoed empty and reported as 1005 */
    bh_buf_reset(&in);
    frame(&in, FIN, 0x8, "", 0);
    fx_init(&f, 1024);
    assert_int_equal(feed(&f, in.data, in.len), BH_OK);
    assert_int_equal(bh_ws_peer_close_code(f.ws), 1005);
    assert_out(&f, "\x88\x00", 2);
    assert_true(bh_ws_finished(f.ws));
    fx_free(&f);
    bh_buf_free(&in);
}

static void test_server_close(void **state) {
    static const unsigned char ours[] = {0x88, 0x0c, 0x03, 0xe9, 'g', 'o', 'i',
                                         'n',  'g',  ' ',  'a',  'w', 'a', 'y'};
    bh_buf_t in;
    fx_t f;

    bh_buf_init(&in, 0);
    fx_init(&f, 1024);
    assert_int_equal(bh_ws_close(f.ws, 1001, "going away"), BH_OK);
    assert_int_equal(bh_ws_close(f.ws, 1000, NULL), BH_ECLOSED);
    assert_int_equal(bh_ws_send(f.ws, 0, "x", 1), BH_ECLOSED);
    assert_out(&f, ours, sizeof(ours));
    assert_false(bh_ws_finished(f.ws));
    /* data the peer sent before seeing our Close is dropped; its pings are not answered */
    frame(&in, FIN, 0x1, "in flight", 9);
    frame(&in, FIN, 0x9, "p", 1);
    assert_int_equal(feed(&f, in.data, in.len), BH_OK);
    assert_int_equal(f.count, 0);
    assert_false(bh_ws_finished(f.ws));
    bh_buf_reset(&in);
    close_frame(&in, 1001, "");
    assert_int_equal(feed(&f, in.data, in.len), BH_OK);
    assert_int_equal(bh_ws_peer_close_code(f.ws), 1001);
    assert_true(bh_ws_finished(f.ws));
    assert_out(&f, "", 0);
    fx_free(&f);

    /* the peer's Close arrives before ours was flushed: ours goes out once, then finished */
    fx_init(&f, 1024);
    assert_int_equal(bh_ws_close(f.ws, 1000, ""), BH_OK);
    assert_int_equal(feed(&f, in.data, in.len), BH_OK);
    assert_false(bh_ws_finished(f.ws));
    assert_out(&f, "\x88\x02\x03\xe8", 4);
    assert_true(bh_ws_finished(f.ws));
    fx_free(&f);
    bh_buf_free(&in);
}

static void test_close_arguments(void **state) {
    char reason[125];
    unsigned char want[127];
    fx_t f;

    fx_init(&f, 1024);
    memset(reason, 'r', sizeof(reason));
    reason[124] = '\0';
    assert_int_equal(bh_ws_close(f.ws, 1000, reason), BH_EINVAL); /* 124 bytes */
    assert_int_equal(bh_ws_close(f.ws, 1000, "\xc3\x28"), BH_EINVAL);
    assert_int_equal(bh_ws_close(f.ws, 0, NULL), BH_EINVAL);
    assert_int_equal(bh_ws_close(f.ws, 999, NULL), BH_EINVAL);
    assert_int_equal(bh_ws_close(f.ws, 1005, NULL), BH_EINVAL);
    assert_int_equal(bh_ws_close(f.ws, 1006, NULL), BH_EINVAL);
    assert_int_equal(bh_ws_close(f.ws, 5000, NULL), BH_EINVAL);
    reason[123] = '\0';
    assert_int_equal(bh_ws_close(f.ws, 4000, reason), BH_OK);
    want[0] = 0x88;
    want[1] = 125;
    want[2] = 0x0f;
    want[3] = 0xa0;
    memset(want + 4, 'r', 123);
    assert_out(&f, want, sizeof(want));
    fx_free(&f);
}

/* The same stream fed whole, one byte at a time, and in uneven chunks gives the same result.
 * The peer's Close comes after a flush: a Close queued with pongs still pending would drop
 * them, which would make the output depend on when flushes happen. */
static void run_stream(const bh_buf_t *in, size_t chunk, bh_buf_t *msgs, bh_buf_t *out,
                       int *count) {
    bh_buf_t cl;
    fx_t f;
    size_t off = 0, step = 0;

    fx_init(&f, 100000);
    while (off < in->len) {
        size_t n = chunk ? chunk : 1 + (step * 7919) % 23;
        if (n > in->len - off)
            n = in->len - off;
        assert_int_equal(feed(&f, in->data + off, n), BH_OK);
        if (step % 5 == 0)
            flush(&f);
        off += n;
        step++;
    }
    flush(&f);
    bh_buf_init(&cl, 0);
    close_frame(&cl, 1000, "done");
    for (off = 0; off < cl.len; off++)
        assert_int_equal(feed(&f, cl.data + off, 1), BH_OK);
    bh_buf_free(&cl);
    flush(&f);
    *count = f.count;
    assert_int_equal(bh_buf_append(msgs, f.data.data, f.data.len), BH_OK);
    assert_int_equal(bh_buf_append(out, f.out.data, f.out.len), BH_OK);
    assert_true(bh_ws_finished(f.ws));
    assert_int_equal(bh_ws_peer_close_code(f.ws), 1000);
    fx_free(&f);
}

static void test_byte_at_a_time(void **state) {
    static const unsigned char hello[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                          0x7f, 0x9f, 0x4d, 0x51, 0x58};
    static const size_t chunks[] = {1, 2, 3, 13, 14, 15, 4096, 0};
    bh_buf_t in, msgs0, out0;
    char *big = malloc(70000);
    int count0;
    size_t i;

    assert_non_null(big);
    for (i = 0; i < 70000; i++)
        big[i] = (char)('a' + i % 26);
    bh_buf_init(&in, 0);
    bh_buf_init(&msgs0, 0);
    bh_buf_init(&out0, 0);
    assert_int_equal(bh_buf_append(&in, hello, sizeof(hello)), BH_OK);
    frame(&in, 0, 0x1, "Hel", 3);
    frame(&in, FIN, 0x9, "ping", 4);
    frame(&in, FIN, 0x0, "lo", 2);
    frame(&in, FIN, 0x2, big, 300);   /* 16-bit length */
    frame(&in, FIN, 0x1, big, 70000); /* 64-bit length */
    frame(&in, FIN, 0x1, "", 0);
    frame(&in, FIN, 0x9, "", 0);

    run_stream(&in, in.len, &msgs0, &out0, &count0);
    assert_int_equal(count0, 5);
    assert_int_equal(msgs0.len, 5 + 5 + 300 + 70000);
    assert_memory_equal(msgs0.data, "HelloHello", 10);
    assert_memory_equal(msgs0.data + 10, big, 300);
    assert_memory_equal(msgs0.data + 310, big, 70000);
    assert_int_equal(out0.len, 6 + 2 + 8);
    assert_memory_equal(out0.data,
                        "\x8a\x04ping\x8a\x00\x88\x06\x03\xe8"
                        "done",
                        16);

    for (i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
        bh_buf_t msgs, out;
        int count;
        bh_buf_init(&msgs, 0);
        bh_buf_init(&out, 0);
        run_stream(&in, chunks[i], &msgs, &out, &count);
        assert_int_equal(count, count0);
        assert_int_equal(msgs.len, msgs0.len);
        assert_memory_equal(msgs.data, msgs0.data, msgs.len);
        assert_int_equal(out.len, out0.len);
        assert_memory_equal(out.data, out0.data, out.len);
        bh_buf_free(&msgs);
        bh_buf_free(&out);
    }
    free(big);
    bh_buf_free(&in);
    bh_buf_free(&msgs0);
    bh_buf_free(&out0);
}

/* Walk the unmasked server frames in out; returns the code of a final Close, -1 if the last
 * frame is not a Close with a code. */
static int last_close_code(const bh_buf_t *out) {
    const unsigned char *p = (const unsigned char *)out->data;
    size_t off = 0;
    int code = -1;

    while (off + 2 <= out->len) {
        size_t len = p[off + 1] & 0x7f, hl = 2;
        assert_int_equal(p[off + 1] & 0x80, 0);
        assert_true(len < 126); /* only control frames are expected here */
        assert_true(off + hl + len <= out->len);
        code = -1;
        if ((p[off] & 0x0f) == 0x8 && len >= 2)
            code = p[off + 2] << 8 | p[off + 3];
        off += hl + len;
    }
    assert_int_equal(off, out->len);
    return code;
}

static void test_garbage_no_crash(void **state) {
    uint32_t seed = 42;
    int round;

    for (round = 0; round < 3000; round++) {
        unsigned char buf[96];
        size_t n = 1 + (size_t)round % sizeof(buf), off = 0, i;
        int r = BH_OK;
        fx_t f;

        for (i = 0; i < n; i++) {
            seed = seed * 1103515245u + 12345u;
            buf[i] = (unsigned char)(seed >> 16);
            /* every other round: set the mask bit where a header may be, to get deeper */
            if (round % 2 && i % 7 == 1)
                buf[i] |= 0x80;
        }
        fx_init(&f, 64);
        while (off < n && r == BH_OK) {
            size_t k = 1 + (size_t)(seed >> 8) % 9;
            seed = seed * 1103515245u + 12345u;
            if (k > n - off)
                k = n - off;
            r = feed(&f, buf + off, k);
            off += k;
        }
        assert_true(r == BH_OK || r == BH_EPROTO);
        assert_int_equal(bh_ws_flush(f.ws, &f.out), BH_OK);
        if (r == BH_EPROTO) {
            int code = last_close_code(&f.out);
            assert_true(code == 1002 || code == 1007 || code == 1009);
            assert_true(bh_ws_finished(f.ws));
        }
        fx_free(&f);
    }
}

static void test_echo_from_callback(void **state) {
    bh_buf_t in;
    fx_t f;

    bh_buf_init(&in, 0);
    frame(&in, FIN, 0x1, "one", 3);
    frame(&in, FIN, 0x2, "\x00\x02", 2);
    fx_init(&f, 1024);
    f.echo = 1;
    assert_int_equal(feed(&f, in.data, in.len), BH_OK);
    assert_out(&f, "\x81\x03one\x82\x02\x00\x02", 9);
    fx_free(&f);
    bh_buf_free(&in);
}

static void check_send(int binary, size_t len, const unsigned char *hdr, size_t hlen) {
    char *payload = malloc(len ? len : 1);
    fx_t f;

    assert_non_null(payload);
    memset(payload, 'z', len);
    fx_init(&f, 1024);
    assert_int_equal(bh_ws_send(f.ws, binary, payload, len), BH_OK);
    flush(&f);
    assert_int_equal(f.out.len, hlen + len);
    assert_memory_equal(f.out.data, hdr, hlen);
    assert_memory_equal(f.out.data + hlen, payload, len);
    fx_free(&f);
    free(payload);
}

static void test_send_frames(void **state) {
    fx_t f;

    check_send(0, 0, (const unsigned char *)"\x81\x00", 2);
    check_send(0, 5, (const unsigned char *)"\x81\x05", 2);
    check_send(0, 125, (const unsigned char *)"\x81\x7d", 2);
    check_send(0, 126, (const unsigned char *)"\x81\x7e\x00\x7e", 4);
    check_send(1, 200, (const unsigned char *)"\x82\x7e\x00\xc8", 4);
    check_send(0, 65535, (const unsigned char *)"\x81\x7e\xff\xff", 4);
    check_send(0, 65536, (const unsigned char *)"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00", 10);
    check_send(1, 70000, (const unsigned char *)"\x82\x7f\x00\x00\x00\x00\x00\x01\x11\x70", 10);

    fx_init(&f, 1024);
    assert_int_equal(bh_ws_send(f.ws, 0, "Hello", 5), BH_OK);
    assert_int_equal(bh_ws_send(f.ws, 1, "\xff", 1), BH_OK);
    assert_int_equal(bh_ws_send(f.ws, 0, "\xff", 1), BH_EINVAL);
    assert_int_equal(bh_ws_send(f.ws, 0, "\xc3", 1), BH_EINVAL);
    assert_int_equal(bh_ws_send(f.ws, 0, NULL, 1), BH_EINVAL);
    assert_int_equal(bh_ws_send(f.ws, 0, NULL, 0), BH_OK);
    assert_out(&f, "\x81\x05Hello\x82\x01\xff\x81\x00", 12);
    fx_free(&f);
}

/* A capped output buffer takes what fits; the rest follows on the next flush. */
static void test_flush_cap(void **state) {
    char payload[200];
    bh_buf_t small, rest;
    fx_t f;

    memset(payload, 'q', sizeof(payload));
    bh_buf_init(&small, 100);
    bh_buf_init(&rest, 0);
    fx_init(&f, 1024);
    assert_int_equal(bh_ws_send(f.ws, 0, payload, sizeof(payload)), BH_OK);
    assert_int_equal(bh_ws_send(f.ws, 0, "tail", 4), BH_OK);
    assert_int_equal(bh_ws_flush(f.ws, &small), BH_ETOOBIG);
    assert_int_equal(small.len, 100);
    assert_int_equal(bh_ws_flush(f.ws, &small), BH_ETOOBIG);
    assert_int_equal(small.len, 100);
    assert_int_equal(bh_ws_flush(f.ws, &rest), BH_OK);
    assert_int_equal(rest.len, 4 + 200 + 6 - 100);
    assert_memory_equal(small.data, "\x81\x7e\x00\xc8", 4);
    assert_memory_equal(rest.data + rest.len - 6, "\x81\x04tail", 6);
    fx_free(&f);
    bh_buf_free(&small);
    bh_buf_free(&rest);
}

/* ---- client side: frames out are masked with fresh keys, frames in must be unmasked ---- */

static void fx_init_client(fx_t *f, size_t max_msg) {
    static const bh_ws_callbacks_t cb = {on_message};

    memset(f, 0, sizeof(*f));
    bh_buf_init(&f->out, 0);
    bh_buf_init(&f->data, 0);
    f->ws = bh_ws_client_new(&cb, f, max_msg);
    assert_non_null(f->ws);
}

/* Take one client frame from b at *pos: checks the first byte, the mask bit and the length,
 * unmasks the payload and compares it with want; returns the masking key in key. */
static void take_masked(const bh_buf_t *b, size_t *pos, unsigned char first, const void *want,
                        size_t n, unsigned char key[4]) {
    const unsigned char *h = (const unsigned char *)b->data + *pos;
    size_t hl = 2, len = h[1] & 0x7f, i;

    assert_true(b->len - *pos >= 6);
    assert_int_equal(h[0], first);
    assert_true(h[1] & 0x80); /* masked */
    if (len == 126) {
        len = (size_t)h[2] << 8 | h[3];
        hl = 4;
    } else if (len == 127) {
        len = 0;
        for (i = 0; i < 8; i++)
            len = len << 8 | h[2 + i];
        hl = 10;
    }
    assert_int_equal(len, n);
    assert_true(b->len - *pos >= hl + 4 + n);
    memcpy(key, h + hl, 4);
    for (i = 0; i < n; i++)
        assert_int_equal(h[hl + 4 + i] ^ key[i % 4], ((const unsigned char *)want)[i]);
    *pos += hl + 4 + n;
}

static void test_client_key(void **state) {
    char k1[25], k2[25], accept[29];

    assert_int_equal(bh_ws_client_key(k1), BH_OK);
    assert_int_equal(bh_ws_client_key(k2), BH_OK);
    assert_int_equal(strlen(k1), 24);
    assert_memory_equal(k1 + 22, "==", 2);
    assert_string_not_equal(k1, k2); /* 128 random bits each */
    /* a key the server side accepts, and whose answer the client side accepts */
    assert_int_equal(bh_ws_accept_key(k1, 24, accept), BH_OK);
    assert_int_equal(bh_ws_client_check_accept(k1, accept, 28), BH_OK);
    assert_int_equal(bh_ws_client_check_accept(k2, accept, 28), BH_EPROTO);

    /* RFC 6455 1.3 */
    assert_int_equal(
        bh_ws_client_check_accept("dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", 28),
        BH_OK);
    assert_int_equal(
        bh_ws_client_check_accept("dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOp=", 28),
        BH_EPROTO);
    assert_int_equal(
        bh_ws_client_check_accept("dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo", 27),
        BH_EPROTO);
    assert_int_equal(bh_ws_client_check_accept("dGhlIHNhbXBsZSBub25jZQ==", "", 0), BH_EPROTO);
    assert_int_equal(bh_ws_client_check_accept("dGhlIHNhbXBsZSBub25jZQ==", NULL, 28), BH_EPROTO);
    assert_int_equal(bh_ws_client_check_accept("short", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", 28),
                     BH_EPROTO);
    assert_int_equal(bh_ws_client_check_accept(NULL, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", 28),
                     BH_EPROTO);
}

static void test_client_frames_masked(void **state) {
    static char big[70000];
    unsigned char k1[4], k2[4], k3[4];
    size_t pos = 0;
    fx_t f;

    memset(big, 'z', sizeof(big));
    fx_init_client(&f, 1024);
    assert_int_equal(bh_ws_send(f.ws, 0, "Hello", 5), BH_OK);
    assert_int_equal(bh_ws_send(f.ws, 1, big, 200), BH_OK);
    assert_int_equal(bh_ws_send(f.ws, 0, big, sizeof(big)), BH_OK);
    assert_int_equal(bh_ws_send(f.ws, 0, "", 0), BH_OK);
    flush(&f);
    take_masked(&f.out, &pos, 0x81, "Hello", 5, k1);
    take_masked(&f.out, &pos, 0x82, big, 200, k2);
    take_masked(&f.out, &pos, 0x81, big, sizeof(big), k3);
    assert_int_equal(f.out.len - pos, 6); /* empty text frame: header and key only */
    assert_memory_equal(f.out.data + pos, "\x81\x80", 2);
    /* a fresh key per frame (equal by chance with probability 2^-32) */
    assert_memory_not_equal(k1, k2, 4);
    assert_memory_not_equal(k2, k3, 4);
    fx_free(&f);
}

static void client_stream(bh_buf_t *in) {
    frame_ex(in, 0, 0x1, 0, "Hel", 3);
    frame_ex(in, FIN, 0x9, 0, "ping", 4);
    frame_ex(in, 0, 0x0, 0, "l", 1);
    frame_ex(in, FIN, 0x0, 0, "o!", 2);
    frame_ex(in, FIN, 0x2, 0, "\x00\x01", 2);
}

static void check_client_stream(fx_t *f) {
    unsigned char key[4];
    size_t pos = 0;

    assert_int_equal(f->count, 2);
    assert_int_equal(f->binary[0], 0);
    assert_int_equal(f->len[0], 6);
    assert_int_equal(f->binary[1], 1);
    assert_int_equal(f->len[1], 2);
    assert_memory_equal(f->data.data, "Hello!\x00\x01", 8);
    flush(f);
    take_masked(&f->out, &pos, 0x8a, "ping", 4, key); /* the pong, masked too */
    assert_int_equal(pos, f->out.len);
}

static void test_client_server_frames(void **state) {
    bh_buf_t in;
    fx_t f;

    bh_buf_init(&in, 0);
    client_stream(&in);
    fx_init_client(&f, 1024);
    assert_int_equal(feed(&f, in.data, in.len), BH_OK);
    check_client_stream(&f);
    fx_free(&f);

    /* the same stream one byte at a time */
    fx_init_client(&f, 1024);
    for (size_t i = 0; i < in.len; i++)
        assert_int_equal(feed(&f, in.data + i, 1), BH_OK);
    check_client_stream(&f);
    fx_free(&f);
    bh_buf_free(&in);
}

static void test_client_masked_from_server_is_1002(void **state) {
    static const unsigned char masked[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                           0x7f, 0x9f, 0x4d, 0x51, 0x58};
    unsigned char key[4];
    size_t pos = 0;
    fx_t f;

    fx_init_client(&f, 1024);
    assert_int_equal(feed(&f, masked, sizeof(masked)), BH_EPROTO);
    assert_int_equal(f.count, 0);
    flush(&f);
    take_masked(&f.out, &pos, 0x88, "\x03\xea", 2, key);
    assert_int_equal(pos, f.out.len);
    assert_true(bh_ws_finished(f.ws));
    fx_free(&f);

    /* too big for max_msg: 1009, masked */
    fx_init_client(&f, 4);
    bh_buf_t in;
    bh_buf_init(&in, 0);
    frame_ex(&in, FIN, 0x1, 0, "12345", 5);
    assert_int_equal(feed(&f, in.data, in.len), BH_EPROTO);
    flush(&f);
    pos = 0;
    take_masked(&f.out, &pos, 0x88, "\x03\xf1", 2, key);
    fx_free(&f);
    bh_buf_free(&in);
}

static void test_client_close_handshake(void **state) {
    unsigned char key[4];
    size_t pos = 0;
    fx_t f;

    fx_init_client(&f, 1024);
    assert_int_equal(bh_ws_close(f.ws, 1000, "bye"), BH_OK);
    flush(&f);
    take_masked(&f.out, &pos, 0x88,
                "\x03\xe8"
                "bye",
                5, key);
    assert_false(bh_ws_finished(f.ws));
    /* the server's echo, unmasked */
    assert_int_equal(feed(&f, "\x88\x02\x03\xe8", 4), BH_OK);
    assert_int_equal(bh_ws_peer_close_code(f.ws), 1000);
    assert_true(bh_ws_finished(f.ws));
    assert_int_equal(bh_ws_send(f.ws, 0, "late", 4), BH_ECLOSED);
    fx_free(&f);

    /* a Close from the server first: the client echoes it, masked */
    fx_init_client(&f, 1024);
    assert_int_equal(feed(&f, "\x88\x02\x03\xe9", 4), BH_OK);
    assert_int_equal(bh_ws_peer_close_code(f.ws), 1001);
    flush(&f);
    pos = 0;
    take_masked(&f.out, &pos, 0x88, "\x03\xe9", 2, key);
    assert_true(bh_ws_finished(f.ws));
    fx_free(&f);
}

/* ---- more framing: lengths, splits, masking, interleaving, UTF-8, memory ---- */

/* Lengths need not use the shortest encoding (RFC 6455 asks that of senders only). */
static void test_nonminimal_lengths(void **state) {
    static const unsigned char k[4] = {0x37, 0xfa, 0x21, 0x3d};
    unsigned char in[32 + 300];
    size_t n = 0, i;
    fx_t f;

    /* "Hello" with a 16-bit length, then 256 bytes with a 64-bit length */
    in[n++] = 0x81;
    in[n++] = 0xfe;
    in[n++] = 0;
    in[n++] = 5;
    memcpy(in + n, k, 4);
    n += 4;
    for (i = 0; i < 5; i++)
        in[n++] = (unsigned char)("Hello"[i] ^ k[i % 4]);
    in[n++] = 0x82;
    in[n++] = 0xff;
    memset(in + n, 0, 6);
    n += 6;
    in[n++] = 0x01;
    in[n++] = 0x00;
    memcpy(in + n, k, 4);
    n += 4;
    for (i = 0; i < 256; i++)
        in[n++] = (unsigned char)(i ^ k[i % 4]);
    fx_init(&f, 1024);
    assert_int_equal(feed(&f, in, n), BH_OK);
    assert_int_equal(f.count, 2);
    assert_int_equal(f.len[0], 5);
    assert_int_equal(f.len[1], 256);
    assert_memory_equal(f.data.data, "Hello", 5);
    for (i = 0; i < 256; i++)
        assert_int_equal((unsigned char)f.data.data[5 + i], i);
    fx_free(&f);
}

/* Control frames between fragments: answered in order, the message reassembled around them. */
static void test_control_inside_fragments(void **state) {
    static const unsigned char pongs[] = {0x8a, 0x01, '1', 0x8a, 0x01, '2'};
    static const unsigned char echo[] = {0x88, 0x04, 0x03, 0xe8, 'o', 'k'};
    bh_buf_t in;
    size_t i;
    fx_t f;

    bh_buf_init(&in, 0);
    frame(&in, 0, 0x1, "a", 1);
    frame(&in, FIN, 0x9, "1", 1);
    frame(&in, 0, 0x0, "", 0);
    frame(&in, 0, 0x0, "b", 1);
    frame(&in, FIN, 0xa, "x", 1);
    frame(&in, FIN, 0x9, "2", 1);
    frame(&in, FIN, 0x0, "c", 1);
    for (i = 0; i < 2; i++) {
        fx_init(&f, 1024);
        if (i == 0) {
            assert_int_equal(feed(&f, in.data, in.len), BH_OK);
        } else {
            for (size_t k = 0; k < in.len; k++)
                assert_int_equal(feed(&f, in.data + k, 1), BH_OK);
        }
        assert_int_equal(f.count, 1);
        assert_int_equal(f.len[0], 3);
        assert_memory_equal(f.data.data, "abc", 3);
        assert_out(&f, pongs, sizeof(pongs));
        fx_free(&f);
    }

    /* a Close in the middle of a message: the message never arrives, the rest is ignored */
    bh_buf_reset(&in);
    frame(&in, 0, 0x2, "ab", 2);
    close_frame(&in, 1000, "ok");
    frame(&in, FIN, 0x0, "c", 1);
    fx_init(&f, 1024);
    assert_int_equal(feed(&f, in.data, in.len), BH_OK);
    assert_int_equal(f.count, 0);
    assert_int_equal(bh_ws_peer_close_code(f.ws), 1000);
    assert_out(&f, echo, sizeof(echo));
    assert_true(bh_ws_finished(f.ws));
    fx_free(&f);
    bh_buf_free(&in);
}

typedef struct {
    int count;
    bh_buf_t msgs, out;
    int r;
} result_t;

static void result_free(result_t *r) {
    bh_buf_free(&r->msgs);
    bh_buf_free(&r->out);
}

/* Feed in[0..n) in two pieces cut at cut (n: in one piece). */
static void run_split(const bh_buf_t *in, size_t n, size_t cut, result_t *res) {
    fx_t f;

    fx_init(&f, 1024);
    res->r = feed(&f, in->data, cut);
    if (res->r == BH_OK)
        res->r = feed(&f, in->data + cut, n - cut);
    assert_int_equal(bh_ws_flush(f.ws, &f.out), BH_OK);
    res->count = f.count;
    bh_buf_init(&res->msgs, 0);
    bh_buf_init(&res->out, 0);
    assert_int_equal(bh_buf_append(&res->msgs, f.data.data, f.data.len), BH_OK);
    assert_int_equal(bh_buf_append(&res->out, f.out.data, f.out.len), BH_OK);
    fx_free(&f);
}

/* Cut in two at every offset, the stream gives exactly what it gives whole; every prefix gives
 * a prefix of that (no error, no message that is not complete). */
static void test_every_split_and_prefix(void **state) {
    unsigned char bin[300];
    bh_buf_t in;
    result_t whole;
    size_t cut, i;

    for (i = 0; i < sizeof(bin); i++)
        bin[i] = (unsigned char)(i * 7);
    bh_buf_init(&in, 0);
    frame(&in, 0, 0x1, "caf\xc3", 4);
    frame(&in, FIN, 0x9, "ping", 4);
    frame(&in, FIN, 0x0, "\xa9!", 2);
    frame(&in, FIN, 0x2, bin, sizeof(bin));
    frame(&in, FIN, 0xa, "pong", 4);
    frame(&in, FIN, 0x1, "", 0);
    frame(&in, 0, 0x2, bin, 125);
    frame(&in, FIN, 0x9, "", 0);
    frame(&in, FIN, 0x0, bin, 126);
    run_split(&in, in.len, in.len, &whole);
    assert_int_equal(whole.r, BH_OK);
    assert_int_equal(whole.count, 4);
    assert_int_equal(whole.msgs.len, 6 + 300 + 0 + 251);
    assert_memory_equal(whole.msgs.data, "caf\xc3\xa9!", 6);
    assert_int_equal(whole.out.len, 6 + 2);
    assert_memory_equal(whole.out.data, "\x8a\x04ping\x8a\x00", 8);
    for (cut = 0; cut <= in.len; cut++) {
        result_t split, prefix;
        run_split(&in, in.len, cut, &split);
        assert_int_equal(split.r, BH_OK);
        assert_int_equal(split.count, whole.count);
        assert_int_equal(split.msgs.len, whole.msgs.len);
        assert_memory_equal(split.msgs.data, whole.msgs.data, whole.msgs.len);
        assert_int_equal(split.out.len, whole.out.len);
        assert_memory_equal(split.out.data, whole.out.data, whole.out.len);
        run_split(&in, cut, cut, &prefix);
        assert_int_equal(prefix.r, BH_OK);
        assert_true(prefix.count <= whole.count);
        assert_true(prefix.msgs.len <= whole.msgs.len);
        if (prefix.msgs.len > 0)
            assert_memory_equal(prefix.msgs.data, whole.msgs.data, prefix.msgs.len);
        assert_true(prefix.out.len <= whole.out.len);
        if (prefix.out.len > 0)
            assert_memory_equal(prefix.out.data, whole.out.data, prefix.out.len);
        result_free(&split);
        result_free(&prefix);
    }
    result_free(&whole);
    bh_buf_free(&in);
}

/* Client to server and back: whatever the size (7-bit, 16-bit and 64-bit lengths, lengths that
 * are not a multiple of the 8-byte unmasking step) and however the bytes are cut. */
static void test_mask_round_trip(void **state) {
    static const size_t sizes[] = {0,   1,    3,    7,    8,     9,     125,  126,
                                   127, 4095, 4096, 4097, 65535, 65536, 70001};
    static const size_t chunks[] = {0, 1, 3, 4093};
    char *payload = malloc(70001);
    size_t i, c, j;

    assert_non_null(payload);
    for (i = 0; i < 70001; i++)
        payload[i] = (char)('A' + (i * 31) % 57);
    for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        for (c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
            size_t n = sizes[i], chunk = chunks[c];
            int binary = (int)(i & 1);
            fx_t cl, sv;
            if (chunk == 1 && n > 5000)
                continue; /* byte by byte: the small sizes are enough */
            fx_init_client(&cl, 100000);
            fx_init(&sv, 100000);
            sv.echo = 1;
            assert_int_equal(bh_ws_send(cl.ws, binary, payload, n), BH_OK);
            flush(&cl);
            assert_true(cl.out.len > n); /* masked: header, key, payload */
            if (n >= 4)
                assert_memory_not_equal(cl.out.data + cl.out.len - n, payload, n);
            for (j = 0; j < cl.out.len; j += chunk ? chunk : cl.out.len)
                assert_int_equal(feed(&sv, cl.out.data + j,
                                      chunk && chunk < cl.out.len - j ? chunk : cl.out.len - j),
                                 BH_OK);
            assert_int_equal(sv.count, 1);
            assert_int_equal(sv.binary[0], binary);
            assert_int_equal(sv.len[0], n);
            if (n > 0)
                assert_memory_equal(sv.data.data, payload, n);
            /* the server's echo, unmasked, back into the client */
            flush(&sv);
            assert_int_equal(sv.out.len, n + (n < 126 ? 2 : n < 65536 ? 4 : 10));
            for (j = 0; j < sv.out.len; j += chunk ? chunk : sv.out.len)
                assert_int_equal(feed(&cl, sv.out.data + j,
                                      chunk && chunk < sv.out.len - j ? chunk : sv.out.len - j),
                                 BH_OK);
            assert_int_equal(cl.count, 1);
            assert_int_equal(cl.len[0], n);
            if (n > 0)
                assert_memory_equal(cl.data.data, payload, n);
            fx_free(&cl);
            fx_free(&sv);
        }
    }
    free(payload);
}

/* 64-bit lengths: exactly 65536, in a continuation frame, unmasked to a client byte by byte. */
static void test_64bit_lengths(void **state) {
    char *big = malloc(65536 + 10);
    bh_buf_t in;
    size_t i;
    fx_t f;

    assert_non_null(big);
    memset(big, 'q', 65536 + 10);
    bh_buf_init(&in, 0);
    frame(&in, 0, 0x1, "x", 1);
    frame(&in, FIN, 0x0, big, 65536);
    assert_memory_equal(in.data + 7, "\x80\xff\x00\x00\x00\x00\x00\x01\x00\x00", 10);
    fx_init(&f, 65537);
    assert_int_equal(feed(&f, in.data, in.len), BH_OK);
    assert_int_equal(f.count, 1);
    assert_int_equal(f.len[0], 65537);
    fx_free(&f);
    /* one byte more than max_msg: refused at the header */
    fx_init(&f, 65536);
    assert_int_equal(feed(&f, in.data, 7 + 10), BH_EPROTO);
    assert_out(&f, CLOSE_1009, 4);
    fx_free(&f);

    bh_buf_reset(&in);
    frame_ex(&in, FIN, 0x2, 0, big, 65536 + 10);
    fx_init_client(&f, 100000);
    for (i = 0; i < in.len; i++)
        assert_int_equal(feed(&f, in.data + i, 1), BH_OK);
    assert_int_equal(f.count, 1);
    assert_int_equal(f.len[0], 65536 + 10);
    assert_memory_equal(f.data.data, big, 65536 + 10);
    fx_free(&f);
    bh_buf_free(&in);
    free(big);
}

/* Each bad case with its code, including those only the way the input is cut could hide. */
static void test_bad_cases_codes(void **state) {
    bh_buf_t in;
    fx_t f;
    size_t i;

    bh_buf_init(&in, 0);
    /* bad UTF-8 in a first fragment fails at once, before the message ends */
    frame(&in, 0, 0x1, "ok\xc0", 3);
    expect_fail(in.data, in.len, 1024, CLOSE_1007);
    /* ...and so does a bad byte arriving one at a time inside a frame */
    fx_init(&f, 1024);
    bh_buf_reset(&in);
    frame(&in, FIN, 0x1,
          "abc\xff"
          "defgh",
          8);
    for (i = 0; i < 6 + 3; i++)
        assert_int_equal(feed(&f, in.data + i, 1), BH_OK);
    assert_int_equal(feed(&f, in.data + 9, 1), BH_EPROTO);
    assert_out(&f, CLOSE_1007, 4);
    fx_free(&f);
    /* a text message ending inside a character, over two fragments */
    bh_buf_reset(&in);
    frame(&in, 0, 0x1, "\xe2\x82", 2);
    frame(&in, FIN, 0x0, "", 0);
    expect_fail(in.data, in.len, 1024, CLOSE_1007);
    /* a Close reason that is bad UTF-8, byte by byte */
    bh_buf_reset(&in);
    frame(&in, FIN, 0x8, "\x03\xe8ok\xed\xa0\x80", 7);
    fx_init(&f, 1024);
    for (i = 0; i + 1 < in.len; i++)
        assert_int_equal(feed(&f, in.data + i, 1), BH_OK);
    assert_int_equal(feed(&f, in.data + i, 1), BH_EPROTO);
    assert_out(&f, CLOSE_1007, 4);
    assert_int_equal(bh_ws_peer_close_code(f.ws), 0);
    fx_free(&f);
    /* a ping longer than max_msg */
    bh_buf_reset(&in);
    frame(&in, FIN, 0x9, "12345", 5);
    expect_fail(in.data, in.len, 4, CLOSE_1009);
    /* a 16-bit length that is too big, in the second fragment */
    bh_buf_reset(&in);
    frame(&in, 0, 0x2, "abc", 3);
    frame(&in, FIN, 0x0, "0123456789", 10);
    expect_fail(in.data, in.len, 12, CLOSE_1009);
    bh_buf_free(&in);
}

/* Text is judged exactly like bh_utf8_valid, received whole or fragmented at any byte, and sent. */
static void test_utf8_like_bh_utf8_valid(void **state) {
    static const unsigned char pieces[] = {0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf,
                                           0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xe1, 0xec, 0xed, 0xee,
                                           0xef, 0xf0, 0xf1, 0xf3, 0xf4, 0xf5, 0xff};
    uint32_t seed = 7;
    int round;

    for (round = 0; round < 4000; round++) {
        unsigned char s[12];
        size_t n = 1 + (size_t)round % sizeof(s), cut, i;
        int valid;
        bh_buf_t in;
        fx_t f;

        for (i = 0; i < n; i++) {
            seed = seed * 1103515245u + 12345u;
            s[i] = pieces[(seed >> 16) % sizeof(pieces)];
        }
        valid = bh_utf8_valid((const char *)s, n);
        cut = (size_t)(seed >> 8) % (n + 1);
        bh_buf_init(&in, 0);
        if (round % 2) {
            frame(&in, FIN, 0x1, s, n);
        } else {
            frame(&in, 0, 0x1, s, cut);
            frame(&in, FIN, 0x0, s + cut, n - cut);
        }
        fx_init(&f, 1024);
        /* sending checks the same way */
        assert_int_equal(bh_ws_send(f.ws, 0, (const char *)s, n), valid ? BH_OK : BH_EINVAL);
        assert_int_equal(bh_ws_flush(f.ws, &f.out), BH_OK);
        bh_buf_reset(&f.out);
        assert_int_equal(feed(&f, in.data, in.len), valid ? BH_OK : BH_EPROTO);
        assert_int_equal(f.count, valid ? 1 : 0);
        if (!valid)
            assert_out(&f, CLOSE_1007, 4);
        fx_free(&f);
        bh_buf_free(&in);
    }
}

/* A frame already partly flushed is finished before a Close queued after it; frames not yet
 * begun are dropped. */
static void test_close_after_partial_flush(void **state) {
    char payload[200];
    bh_buf_t small, rest;
    fx_t f;

    memset(payload, 'p', sizeof(payload));
    bh_buf_init(&small, 50);
    bh_buf_init(&rest, 0);
    fx_init(&f, 1024);
    assert_int_equal(bh_ws_send(f.ws, 1, payload, sizeof(payload)), BH_OK);
    assert_int_equal(bh_ws_send(f.ws, 1, "dropped", 7), BH_OK);
    assert_int_equal(bh_ws_flush(f.ws, &small), BH_ETOOBIG);
    assert_int_equal(small.len, 50);
    assert_int_equal(bh_ws_close(f.ws, 1000, "bye"), BH_OK);
    assert_false(bh_ws_finished(f.ws));
    assert_int_equal(bh_ws_flush(f.ws, &rest), BH_OK);
    assert_int_equal(rest.len, 4 + 200 - 50 + 7);
    assert_memory_equal(rest.data + rest.len - 7,
                        "\x88\x05\x03\xe8"
                        "bye",
                        7);
    assert_memory_equal(small.data, "\x82\x7e\x00\xc8", 4);
    /* the peer answers: done */
    bh_buf_reset(&small);
    close_frame(&small, 1000, "");
    assert_int_equal(feed(&f, small.data, small.len), BH_OK);
    assert_true(bh_ws_finished(f.ws));
    fx_free(&f);
    bh_buf_free(&small);
    bh_buf_free(&rest);
}

/* An idle session holds no heap memory beyond itself: buffers for a message in flight and for
 * frames waiting to be flushed go once they are done with. (glibc's own counters; under ASan
 * they do not move and the check is empty.) */
static void test_idle_session_holds_nothing(void **state) {
#ifdef __GLIBC__
    bh_buf_t in, out;
    size_t before, i;
    bh_ws_t *ws;
    char big[5000];

    memset(big, 'b', sizeof(big));
    bh_buf_init(&in, 0);
    bh_buf_init(&out, 0);
    frame(&in, 0, 0x1, "frag", 4);
    frame(&in, FIN, 0x9, "ping", 4);
    frame(&in, FIN, 0x0, "ment", 4);
    frame(&in, FIN, 0x2, big, sizeof(big)); /* whole, but too big for the stack */
    frame(&in, FIN, 0x1, big, 300);
    assert_int_equal(bh_buf_reserve(&out, 1 << 16), BH_OK);
    ws = bh_ws_server_new(NULL, NULL, 1 << 20);
    assert_non_null(ws);
    before = mallinfo2().uordblks;
    for (i = 0; i < in.len; i += 7)
        assert_int_equal(bh_ws_feed(ws, in.data + i, in.len - i < 7 ? in.len - i : 7), BH_OK);
    assert_int_equal(bh_ws_feed(ws, in.data, in.len), BH_OK);
    assert_int_equal(bh_ws_send(ws, 0, "reply", 5), BH_OK);
    assert_int_equal(bh_ws_flush(ws, &out), BH_OK);
    assert_int_equal(mallinfo2().uordblks, before);
    bh_ws_free(ws);
    bh_buf_free(&in);
    bh_buf_free(&out);
#endif
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accept_key),
        cmocka_unit_test(test_rfc_hello),
        cmocka_unit_test(test_fragmented_with_ping),
        cmocka_unit_test(test_ping_pong_sizes),
        cmocka_unit_test(test_unmasked_is_1002),
        cmocka_unit_test(test_protocol_errors),
        cmocka_unit_test(test_bad_header_split),
        cmocka_unit_test(test_good_then_bad),
        cmocka_unit_test(test_invalid_utf8_is_1007),
        cmocka_unit_test(test_oversize_is_1009),
        cmocka_unit_test(test_peer_close),
        cmocka_unit_test(test_server_close),
        cmocka_unit_test(test_close_arguments),
        cmocka_unit_test(test_byte_at_a_time),
        cmocka_unit_test(test_garbage_no_crash),
        cmocka_unit_test(test_echo_from_callback),
        cmocka_unit_test(test_send_frames),
        cmocka_unit_test(test_flush_cap),
        cmocka_unit_test(test_client_key),
        cmocka_unit_test(test_client_frames_masked),
        cmocka_unit_test(test_client_server_frames),
        cmocka_unit_test(test_client_masked_from_server_is_1002),
        cmocka_unit_test(test_client_close_handshake),
        cmocka_unit_test(test_nonminimal_lengths),
        cmocka_unit_test(test_control_inside_fragments),
        cmocka_unit_test(test_every_split_and_prefix),
        cmocka_unit_test(test_mask_round_trip),
        cmocka_unit_test(test_64bit_lengths),
        cmocka_unit_test(test_bad_cases_codes),
        cmocka_unit_test(test_utf8_like_bh_utf8_valid),
        cmocka_unit_test(test_close_after_partial_flush),
        cmocka_unit_test(test_idle_session_holds_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
