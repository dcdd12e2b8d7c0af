/* Fuzz harness for the SignalR JSON hub protocol (bh_sr_json_protocol) and the handshake.
 * Framing must follow the 0x1E record rule exactly; each record that parses must re-encode
 * with the protocol's writers into a record that parses to the same message; the table entries
 * must agree with the bh_sr_* functions the server used before the table existed. */
#include <string.h>

#include "base/error.h"
#include "base/json.h"
#include "signalr/protocol.h"
#include "fuzz.h"

/* The first 0x1E ends the record: within max it is the frame, beyond max (or absent with
 * more than max bytes) the record is too big, otherwise more bytes are needed. */
static void check_json_frame(const char *data, size_t len, size_t max, int r, const char *msg,
                             size_t msg_len) {
    const char *rs = memchr(data, BH_SR_RS, len);
    size_t k = rs ? (size_t)(rs - data) : len;

    if (rs != NULL && k <= max)
        FUZZ_CHECK(r > 0 && (size_t)r == k + 1 && msg == data && msg_len == k);
    else if (rs != NULL || len > max)
        FUZZ_CHECK(r == BH_ETOOBIG);
    else
        FUZZ_CHECK(r == 0);
}

static void check_handshake(const char *text, size_t len) {
    bh_json_doc_t *doc = NULL;
    const char *proto = NULL, *err = NULL;
    const bh_sr_protocol_t *p;
    int64_t version = 0;
    int r = bh_sr_parse_handshake(text, len, &doc, &proto, &version, &err);

    FUZZ_CHECK(r == BH_OK || r == BH_EINVAL);
    if (r != BH_OK) {
        FUZZ_CHECK(doc == NULL && err != NULL);
        return;
    }
    FUZZ_CHECK(doc != NULL && proto != NULL && bh_utf8_valid(proto, strlen(proto)));
    p = bh_sr_protocol_find(proto);
    if (p != NULL)
        FUZZ_CHECK(strcmp(p->name, proto) == 0 && p->version >= 1);
    bh_json_free(doc);
}

/* The table's parse is bh_sr_parse_message. */
static void check_same_parse(const char *msg, size_t len) {
    bh_json_doc_t *d1 = NULL, *d2 = NULL;
    bh_sr_msg_t m1, m2;
    const char *e1 = NULL, *e2 = NULL;
    int r1 = bh_sr_json_protocol.parse(msg, len, &d1, &m1, &e1);
    int r2 = bh_sr_parse_message(msg, len, &d2, &m2, &e2);

    FUZZ_CHECK(r1 == r2);
    if (r1 == BH_OK) {
        FUZZ_CHECK(m1.type == m2.type && m1.has_stream_ids == m2.has_stream_ids);
        FUZZ_CHECK(m1.sequence_id == m2.sequence_id);
        FUZZ_CHECK((m1.invocation_id == NULL) == (m2.invocation_id == NULL));
        FUZZ_CHECK(!m1.invocation_id || strcmp(m1.invocation_id, m2.invocation_id) == 0);
        FUZZ_CHECK((m1.target == NULL) == (m2.target == NULL));
        FUZZ_CHECK(!m1.target || strcmp(m1.target, m2.target) == 0);
        FUZZ_CHECK((m1.arguments == NULL) == (m2.arguments == NULL));
        FUZZ_CHECK(!m1.arguments || fuzz_json_equal(m1.arguments, m2.arguments, 0));
    }
    bh_json_free(d1);
    bh_json_free(d2);
}

/* The table's writers write what the bh_sr_write_* functions write. */
static void check_same_writers(const char *s, size_t len) {
    bh_buf_t a, b;
    char text[64];
    size_t n = len < sizeof text - 1 ? len : sizeof text - 1;

    memcpy(text, s, n);
    text[n] = '\0';
    if (!bh_utf8_valid(text, strlen(text)))
        return;
    bh_buf_init(&a, 0);
    bh_buf_init(&b, 0);
    FUZZ_CHECK(bh_sr_json_protocol.write_completion(&a, text, NULL) == BH_OK);
    FUZZ_CHECK(bh_sr_write_completion(&b, text, NULL) == BH_OK);
    FUZZ_CHECK(bh_sr_json_protocol.write_completion(&a, "1", text) == BH_OK);
    FUZZ_CHECK(bh_sr_write_completion(&b, "1", text) == BH_OK);
    FUZZ_CHECK(bh_sr_json_protocol.write_invocation(&a, text, "0", 1) == BH_OK);
    FUZZ_CHECK(bh_sr_write_invocation(&b, text, "0", 1) == BH_OK);
    FUZZ_CHECK(bh_sr_json_protocol.write_ping(&a) == BH_OK);
    FUZZ_CHECK(bh_sr_write_ping(&b) == BH_OK);
    FUZZ_CHECK(bh_sr_json_protocol.write_close(&a, text, n % 2) == BH_OK);
    FUZZ_CHECK(bh_sr_write_close(&b, text, n % 2) == BH_OK);
    FUZZ_CHECK(a.len == b.len && memcmp(a.data, b.data, a.len) == 0);
    /* and every message written comes back out of the stream, one frame each */
    FUZZ_CHECK(fuzz_hub(&bh_sr_json_protocol, check_json_frame, 0, a.data, a.len) == 5);
    bh_buf_free(&a);
    bh_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *s = (const char *)data, *rs = memchr(s, BH_SR_RS, size);
    size_t first = rs ? (size_t)(rs - s) : size;

    FUZZ_CHECK(bh_sr_protocol_find("json") == &bh_sr_json_protocol);
    FUZZ_CHECK(!bh_sr_json_protocol.binary && strcmp(bh_sr_json_protocol.name, "json") == 0);

    fuzz_hub(&bh_sr_json_protocol, check_json_frame, 0, s, size);
    /* the first record doubles as a handshake and as a message for the comparison */
    check_handshake(s, first);
    check_same_parse(s, first);
    check_same_writers(s, size);
    /* the input as the argument of an invocation the server sends */
    if (rs == NULL)
        fuzz_hub_invocation(&bh_sr_json_protocol, 0, "ReceiveBalances", s, size);
    return 0;
}
