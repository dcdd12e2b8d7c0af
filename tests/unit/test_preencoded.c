/* Pre-encoded MessagePack: a snapshot's cached MessagePack `data`, the hub's MessagePack
 * envelope and the protocol's pre-encoded Invocation must be, byte for byte, what the SignalR
 * transcoder makes of the JSON forms (edge decimals, many random snapshots, escaped strings),
 * and the shared number rule (base/mpnum.h) gives exact bytes at every encoding boundary. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/error.h"
#include "base/mpnum.h"
#include "hub/hub.h"
#include "ledger/snapshot.h"
#include "signalr/protocol.h"
#include "hex_util.h"

static const bh_sr_protocol_t *mp = &bh_sr_msgpack_protocol;

static void dump(const char *what, const char *p, size_t n) {
    fprintf(stderr, "%s ", what);
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, "%02x", (unsigned char)p[i]);
    fprintf(stderr, "\n");
}

static void expect_bytes(const char *got, size_t got_len, const char *want, size_t want_len) {
    if (got_len != want_len || memcmp(got, want, want_len) != 0) {
        dump("got: ", got, got_len);
        dump("want:", want, want_len);
    }
    assert_int_equal(got_len, want_len);
    assert_memory_equal(got, want, want_len);
}

static void expect_hex(const char *got, size_t got_len, const char *hex) {
    char want[1024];
    size_t n = unhex(hex, want, sizeof want);
    expect_bytes(got, got_len, want, n);
}

static int buf_write(void *data, const char *p, size_t n) {
    return bh_buf_append(data, p, n);
}

/* What the transcoder makes of one JSON value: write_invocation's message, unframed, with the
 * known layout around the argument checked and stripped. The argument lands in *arg. */
static void transcode(const char *json, size_t len, bh_buf_t *msg, const char **arg,
                      size_t *arg_len) {
    static const char head[] = "\x96\x01\x80\xc0\xa1t\x91";
    const char *payload;
    size_t payload_len;
    bh_buf_reset(msg);
    assert_int_equal(mp->write_invocation(msg, "t", json, len), BH_OK);
    assert_int_equal(mp->frame(msg->data, msg->len, SIZE_MAX, &payload, &payload_len),
                     (int)msg->len);
    assert_true(payload_len >= sizeof head);
    assert_memory_equal(payload, head, sizeof head - 1);
    assert_int_equal((unsigned char)payload[payload_len - 1], 0x90);
    *arg = payload + sizeof head - 1;
    *arg_len = payload_len - sizeof head;
}

static bh_dec_t dec(const char *s) {
    bh_dec_t d;
    assert_int_equal(bh_dec_parse(s, strlen(s), &d), BH_OK);
    return d;
}

static bh_snapshot_t *make(const char *user, uint64_t seq, const char *base, const char *const *v,
                           size_t nassets, bool deleted) {
    bh_asset_t a[8];
    bh_snapshot_t *s;
    assert_true(nassets <= 8);
    memset(a, 0, sizeof a);
    for (size_t i = 0; i < nassets; i++) {
        snprintf(a[i].name, sizeof a[i].name, "A%u", (unsigned)(i % 8));
        a[i].available = dec(v[(4 * i) % 10]);
        a[i].allocated = dec(v[(4 * i + 1) % 10]);
        a[i].current_exposure = dec(v[(4 * i + 2) % 10]);
        a[i].max_exposure = dec(v[(4 * i + 3) % 10]);
    }
    assert_int_equal(
        bh_snapshot_new(user, seq, base, dec(v[8]), dec(v[9]), deleted, a, nassets, &s), BH_OK);
    assert_non_null(s->mp);
    return s;
}

/* The snapshot's cached bytes equal the transcoder's from its JSON, and so does the whole
 * pre-encoded Invocation; and the hub's envelopes agree the same way. */
static void check_snapshot(const bh_snapshot_t *s, bh_buf_t *msg, bh_buf_t *msg2) {
    const char *arg;
    size_t arg_len;
    transcode(s->json, s->json_len, msg, &arg, &arg_len);
    expect_bytes(s->mp, s->mp_len, arg, arg_len);
    /* the JSON is unchanged and still NUL-terminated right after itself */
    assert_int_equal(strlen(s->json), s->json_len);
    assert_ptr_equal(s->mp, s->json + s->json_len + 1);

    bh_buf_t env, env_mp;
    bh_buf_init(&env, 0);
    bh_buf_init(&env_mp, 0);
    assert_int_equal(bh_hub_write_envelope(&env, "account.balances.update", "message", "c-1",
                                           s->json, s->json_len),
                     BH_OK);
    assert_int_equal(bh_hub_write_envelope_mp(&env_mp, "account.balances.update", "message", "c-1",
                                              s->mp, s->mp_len),
                     BH_OK);
    bh_buf_reset(msg);
    bh_buf_reset(msg2);
    assert_int_equal(mp->write_invocation(msg, "executionEvents", env.data, env.len), BH_OK);
    assert_int_equal(mp->write_invocation_encoded(msg2, "executionEvents", env_mp.data, env_mp.len),
                     BH_OK);
    expect_bytes(msg2->data, msg2->len, msg->data, msg->len);
    bh_buf_free(&env);
    bh_buf_free(&env_mp);
}

/* ---- the number rule, exact bytes ---- */

static void expect_num(const char *text, const char *hex) {
    bh_buf_t b;
    msgpack_packer pk;
    bh_buf_init(&b, 0);
    msgpack_packer_init(&pk, &b, buf_write);
    assert_int_equal(bh_mpnum_pack(&pk, text, strlen(text)), BH_OK);
    expect_hex(b.data, b.len, hex);
    bh_buf_free(&b);
}

static void test_number_rule(void **state) {
    (void)state;
    expect_num("0", "00");
    expect_num("-0", "00");
    expect_num("127", "7f");
    expect_num("128", "cc80");
    expect_num("255", "ccff");
    expect_num("256", "cd0100");
    expect_num("65535", "cdffff");
    expect_num("65536", "ce00010000");
    expect_num("4294967295", "ceffffffff");
    expect_num("4294967296", "cf0000000100000000");
    expect_num("9223372036854775807", "cf7fffffffffffffff");
    expect_num("9223372036854775808", "cf8000000000000000");
    expect_num("18446744073709551615", "cfffffffffffffffff");
    expect_num("18446744073709551616", "cb43f0000000000000"); /* 2^64: a double */
    expect_num("99999999999999999999", "cb4415af1d78b58c40");
    expect_num("-1", "ff");
    expect_num("-32", "e0");
    expect_num("-33", "d0df");
    expect_num("-128", "d080");
    expect_num("-129", "d1ff7f");
    expect_num("-32768", "d18000");
    expect_num("-32769", "d2ffff7fff");
    expect_num("-2147483648", "d280000000");
    expect_num("-2147483649", "d3ffffffff7fffffff");
    expect_num("-9223372036854775808", "d38000000000000000");
    expect_num("-9223372036854775809", "cbc3e0000000000000"); /* past INT64_MIN: a double */
    expect_num("-18446744073709551616", "cbc3f0000000000000");
    expect_num("0.5", "cb3fe0000000000000");
    expect_num("0.1", "cb3fb999999999999a");
    expect_num("-0.000000000000000001", "cbbc32725dd1d243ac");
    expect_num("1500.000", "cb4097700000000000"); /* a fraction in the text: a double */
    expect_num("1e3", "cb408f400000000000");
    expect_num("2.5E-2", "cb3f9999999999999a");
}

static void test_number_overflow(void **state) {
    (void)state;
    bh_buf_t b;
    msgpack_packer pk;
    bh_buf_init(&b, 0);
    msgpack_packer_init(&pk, &b, buf_write);
    assert_int_equal(bh_mpnum_pack(&pk, "1e400", 5), BH_ERANGE);
    assert_int_equal(bh_mpnum_pack(&pk, "-1e400", 6), BH_ERANGE);
    assert_int_equal(b.len, 0);
    bh_buf_free(&b);
    /* a writer that fails: its error comes back */
    bh_buf_init(&b, 4);
    assert_int_equal(bh_mpnum_pack(&pk, "0.5", 3), BH_ETOOBIG);
    assert_int_equal(bh_mpnum_pack(&pk, "4294967296", 10), BH_ETOOBIG);
    assert_int_equal(bh_mpnum_pack(&pk, "7", 1), BH_OK);
    expect_hex(b.data, b.len, "07");
    bh_buf_free(&b);
}

/* ---- snapshots ---- */

/* One small snapshot spelled out byte by byte, so both sides of the comparisons below are
 * also checked against the rule itself. */
static void test_snapshot_exact(void **state) {
    (void)state;
    static const char *const v[10] = {"1.5", "0", "-2", "1500.000", "0",
                                      "0",   "0", "0",  "0.25",     "18446744073709551615"};
    bh_snapshot_t *s = make("u", 200, "USD", v, 1, false);
    assert_string_equal(s->json, "{\"userId\":\"u\",\"sequence\":200,\"assets\":[{\"name\":\"A0\","
                                 "\"available\":1.5,\"allocated\":0,\"currentExposure\":-2,"
                                 "\"maxExposure\":1500}],\"baseCurrency\":\"USD\","
                                 "\"totalCurrentExposure\":0.25,"
                                 "\"totalMaxExposure\":18446744073709551615,\"deleted\":false}");
    expect_hex(s->mp, s->mp_len,
               "87"
               "a6 757365724964 a1 75"                    /* userId: "u" */
               "a8 73657175656e6365 ccc8"                 /* sequence: 200 */
               "a6 617373657473 91 85"                    /* assets: [ { */
               "a4 6e616d65 a2 4130"                      /* name: "A0" */
               "a9 617661696c61626c65 cb3ff8000000000000" /* available: 1.5 */
               "a9 616c6c6f6361746564 00"                 /* allocated: 0 */
               "af 63757272656e744578706f73757265 fe"     /* currentExposure: -2 */
               "ab 6d61784578706f73757265 cd05dc"         /* maxExposure: 1500, an int */
               "ac 6261736543757272656e6379 a3 555344"
               "b4 746f74616c43757272656e744578706f73757265 cb3fd0000000000000"
               "b0 746f74616c4d61784578706f73757265 cfffffffffffffffff"
               "a7 64656c65746564 c2");
    bh_buf_t msg, msg2;
    bh_buf_init(&msg, 0);
    bh_buf_init(&msg2, 0);
    check_snapshot(s, &msg, &msg2);
    bh_buf_free(&msg);
    bh_buf_free(&msg2);
    bh_snapshot_release(s);
}

static void test_snapshot_edges(void **state) {
    (void)state;
    static const char *const edges[] = {
        "0",
        "-0.000000000000000001",
        "0.000000000000000001",
        "123456789.123456789012345678",
        "99999999999999999999.999999999999999999",
        "-99999999999999999999.999999999999999999",
        "99999999999999999999",
        "-99999999999999999999",
        "1500",
        "1500.000",
        "1e3",
        "18446744073709551615",
        "18446744073709551616",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "0.1",
        "-0.5",
        "127",
        "128",
        "-32",
        "-33",
        "65536",
        "-2147483649",
        "4294967296",
        "1.000000000000000001",
        "0.333333333333333333",
    };
    static const uint64_t seqs[] = {
        0, 1, 127, 128, 65535, 4294967296ull, INT64_MAX, (uint64_t)INT64_MAX + 1, UINT64_MAX};
    static const char *const users[] = {
        "user-123",
        "",
        "q\"uote\\back",
        "tab\tnl\n\x01\x1f",
        "\xc3\xbc\xe2\x82\xac\xf0\x9f\x98\x80",
        ("0123456789012345678901234567890123456789012345678901234567"
         "89abcdef")}; /* 64 bytes, the longest id */
    size_t ne = sizeof edges / sizeof edges[0];
    bh_buf_t msg, msg2;
    bh_buf_init(&msg, 0);
    bh_buf_init(&msg2, 0);
    size_t n = 0;
    for (size_t k = 0; k < ne; k++) {
        const char *v[10];
        for (size_t j = 0; j < 10; j++)
            v[j] = edges[(k + j * 7) % ne];
        for (size_t na = 0; na <= 3; na++) {
            bh_snapshot_t *s = make(users[(k + na) % 6], seqs[(k + na) % 9], na ? "EUR" : "u\"$", v,
                                    na, (k + na) % 2);
            check_snapshot(s, &msg, &msg2);
            bh_snapshot_release(s);
            n++;
        }
    }
    assert_int_equal(n, ne * 4);
    bh_buf_free(&msg);
    bh_buf_free(&msg2);
}

/* xorshift64*: deterministic */
static uint64_t rnd(uint64_t *x) {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    return *x * 2685821657736338717ull;
}

/* Random decimals over the whole range, most of them with a fraction, some whole, some tiny. */
static void test_snapshot_random(void **state) {
    (void)state;
    const unsigned __int128 e19 = 10000000000000000000ull;
    uint64_t x = 88172645463325252ull;
    bh_buf_t msg, msg2;
    bh_buf_init(&msg, 0);
    bh_buf_init(&msg2, 0);
    for (int i = 0; i < 3000; i++) {
        bh_asset_t a[8];
        bh_dec_t tot[2];
        size_t na = rnd(&x) % 9;
        memset(a, 0, sizeof a);
        for (size_t k = 0; k < 4 * na + 2; k++) {
            bh_dec_t d;
            unsigned __int128 u = ((unsigned __int128)rnd(&x) << 64 | rnd(&x));
            switch (rnd(&x) % 4) {
            case 0: /* full range: |units| < 10^38 */
                d.units = (__int128)(u % (e19 * e19));
                break;
            case 1: /* whole numbers of every width */
                d.units =
                    (__int128)(u % (e19 * 10)) * (__int128)1000000000000000000ull >> (rnd(&x) % 64);
                d.units -= d.units % (__int128)1000000000000000000ull;
                break;
            case 2: /* small */
                d.units = (__int128)(u % 1000000);
                break;
            default: /* cents */
                d.units = (__int128)(u % 100000000) * 10000000000000000ll;
                break;
            }
            if (rnd(&x) % 3 == 0)
                d.units = -d.units;
            if (k < 4 * na) {
                bh_dec_t *f[4] = {&a[k / 4].available, &a[k / 4].allocated,
                                  &a[k / 4].current_exposure, &a[k / 4].max_exposure};
                *f[k % 4] = d;
            } else {
                tot[k - 4 * na] = d;
            }
        }
        for (size_t k = 0; k < na; k++)
            snprintf(a[k].name, sizeof a[k].name, "X%u", (unsigned)(k % 8));
        bh_snapshot_t *s;
        assert_int_equal(bh_snapshot_new("r", rnd(&x) >> (rnd(&x) % 64), "USDT", tot[0], tot[1],
                                         rnd(&x) % 2, a, na, &s),
                         BH_OK);
        check_snapshot(s, &msg, &msg2);
        bh_snapshot_release(s);
    }
    bh_buf_free(&msg);
    bh_buf_free(&msg2);
}

/* ---- envelopes and the pre-encoded Invocation ---- */

static void check_envelope(const char *subject, const char *type, const char *client_id,
                           const char *data_json) {
    bh_buf_t env, data_mp, env_mp, msg, msg2;
    const char *arg;
    size_t arg_len;
    bh_buf_init(&env, 0);
    bh_buf_init(&data_mp, 0);
    bh_buf_init(&env_mp, 0);
    bh_buf_init(&msg, 0);
    bh_buf_init(&msg2, 0);
    transcode(data_json, strlen(data_json), &msg, &arg, &arg_len);
    assert_int_equal(bh_buf_append(&data_mp, arg, arg_len), BH_OK);
    assert_int_equal(
        bh_hub_write_envelope(&env, subject, type, client_id, data_json, strlen(data_json)), BH_OK);
    assert_int_equal(
        bh_hub_write_envelope_mp(&env_mp, subject, type, client_id, data_mp.data, data_mp.len),
        BH_OK);
    transcode(env.data, env.len, &msg, &arg, &arg_len);
    expect_bytes(env_mp.data, env_mp.len, arg, arg_len);
    bh_buf_reset(&msg);
    assert_int_equal(mp->write_invocation(&msg, "executionEvents", env.data, env.len), BH_OK);
    assert_int_equal(
        mp->write_invocation_encoded(&msg2, "executionEvents", env_mp.data, env_mp.len), BH_OK);
    expect_bytes(msg2.data, msg2.len, msg.data, msg.len);
    bh_buf_free(&env);
    bh_buf_free(&data_mp);
    bh_buf_free(&env_mp);
    bh_buf_free(&msg);
    bh_buf_free(&msg2);
}

static void test_envelopes(void **state) {
    (void)state;
    check_envelope("account.balances.snapshot", "message", "user-123", "{\"a\":1}");
    check_envelope("account.balances.update", "message", NULL, "{}");
    check_envelope("preChecksError", "error", "q\"\\\x01\t\xc3\xa9\xe2\x80\xa8",
                   "{\"message\":\"clientId must be a string\"}");
    check_envelope("s", "t", "", "[1,-1,0.5,\"x\",null,true,false,{\"k\":[]}]");
    /* an envelope over 64 KiB: the varint prefix takes three bytes */
    bh_buf_t big;
    bh_buf_init(&big, 0);
    assert_int_equal(bh_buf_appends(&big, "{\"k\":\""), BH_OK);
    for (int i = 0; i < 70000; i++)
        assert_int_equal(bh_buf_appendc(&big, 'x'), BH_OK);
    assert_int_equal(bh_buf_appends(&big, "\"}"), BH_OK);
    check_envelope("s", "message", "c", big.data);
    bh_buf_free(&big);
}

/* The exact bytes, and the JSON protocol's entry: the argument copied as it is. */
static void test_invocation_encoded_bytes(void **state) {
    (void)state;
    bh_buf_t b;
    bh_buf_init(&b, 0);
    assert_int_equal(mp->write_invocation_encoded(&b, "ev", "\x81\xa1k\x01", 4), BH_OK);
    expect_hex(b.data, b.len, "0d 96 01 80 c0 a2 6576 91 81a16b01 90");
    assert_int_equal(b.data[b.len], '\0');
    bh_buf_reset(&b);
    assert_int_equal(bh_sr_json_protocol.write_invocation_encoded(&b, "ev", "{\"k\":1}", 7), BH_OK);
    assert_string_equal(b.data, "{\"type\":1,\"target\":\"ev\",\"arguments\":[{\"k\":1}]}\x1e");
    bh_buf_reset(&b);
    assert_int_equal(bh_sr_json_protocol.write_invocation(&b, "ev", "{\"k\":1}", 7), BH_OK);
    assert_string_equal(b.data, "{\"type\":1,\"target\":\"ev\",\"arguments\":[{\"k\":1}]}\x1e");
    bh_buf_free(&b);
}

/* A buffer that cannot take the message: an error, and the buffer as it was, at every cap. */
static void test_invocation_encoded_cap(void **state) {
    (void)state;
    static const char arg[] = "\x82\xa1k\x01\xa1l\xa5hello";
    bh_buf_t full;
    bh_buf_init(&full, 0);
    assert_int_equal(bh_buf_appends(&full, "pre"), BH_OK);
    assert_int_equal(mp->write_invocation_encoded(&full, "target", arg, sizeof arg - 1), BH_OK);
    for (size_t cap = 3; cap < full.len; cap++) {
        bh_buf_t b;
        bh_buf_init(&b, cap);
        assert_int_equal(bh_buf_appends(&b, "pre"), BH_OK);
        int rc = mp->write_invocation_encoded(&b, "target", arg, sizeof arg - 1);
        assert_int_equal(rc, BH_ETOOBIG);
        assert_int_equal(b.len, 3);
        assert_string_equal(b.data, "pre");
        bh_buf_free(&b);
    }
    bh_buf_t b;
    bh_buf_init(&b, full.len);
    assert_int_equal(bh_buf_appends(&b, "pre"), BH_OK);
    assert_int_equal(mp->write_invocation_encoded(&b, "target", arg, sizeof arg - 1), BH_OK);
    expect_bytes(b.data, b.len, full.data, full.len);
    bh_buf_free(&b);
    bh_buf_free(&full);
}

/* The envelope writer reports a full buffer at every cap (the caller discards it then). */
static void test_envelope_mp_cap(void **state) {
    (void)state;
    bh_buf_t full;
    bh_buf_init(&full, 0);
    assert_int_equal(bh_hub_write_envelope_mp(&full, "sub", "message", "cid", "\x80", 1), BH_OK);
    for (size_t cap = 1; cap < full.len; cap++) { /* (a cap of 0 is none) */
        bh_buf_t b;
        bh_buf_init(&b, cap);
        assert_int_equal(bh_hub_write_envelope_mp(&b, "sub", "message", "cid", "\x80", 1),
                         BH_ETOOBIG);
        assert_true(b.len <= cap);
        bh_buf_free(&b);
    }
    bh_buf_free(&full);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_number_rule),
        cmocka_unit_test(test_number_overflow),
        cmocka_unit_test(test_snapshot_exact),
        cmocka_unit_test(test_snapshot_edges),
        cmocka_unit_test(test_snapshot_random),
        cmocka_unit_test(test_envelopes),
        cmocka_unit_test(test_invocation_encoded_bytes),
        cmocka_unit_test(test_invocation_encoded_cap),
        cmocka_unit_test(test_envelope_mp_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
