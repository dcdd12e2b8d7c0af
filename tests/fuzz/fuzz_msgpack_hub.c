/* Fuzz harness for the SignalR MessagePack hub protocol (bh_sr_msgpack_protocol). Framing must
 * follow the VarInt length-prefix rule exactly and never claim more bytes than it was given;
 * each payload that parses (MessagePack transcoded to a JSON tree) must re-encode with the
 * protocol's writers into a frame that parses to the same message, numbers compared by value.
 * An input that is JSON text is also sent as an invocation argument (JSON -> MessagePack). */
#include <string.h>

#include "base/error.h"
#include "base/json.h"
#include "signalr/protocol.h"
#include "fuzz.h"

/* VarInt: 7 bits per byte, least significant group first, high bit = more; at most 5 bytes
 * and below 2 GiB (ASP.NET's BinaryMessageParser). Non-minimal encodings are accepted, as
 * ASP.NET does. */
static void check_varint_frame(const char *data, size_t len, size_t max, int r, const char *msg,
                               size_t msg_len) {
    const unsigned char *u = (const unsigned char *)data;
    uint64_t v = 0;
    size_t i;

    for (i = 0; i < 5; i++) {
        if (i == len) {
            /* incomplete prefix: wait, or refuse once the bits seen already exceed max */
            FUZZ_CHECK(r == 0 || (r == BH_ETOOBIG && v > max));
            return;
        }
        v |= (uint64_t)(u[i] & 0x7f) << (7 * i);
        if (!(u[i] & 0x80))
            break;
    }
    if (i == 5 || v > 0x7fffffff) {
        FUZZ_CHECK(r == BH_EINVAL || r == BH_ETOOBIG);
        return;
    }
    if (v > max) {
        FUZZ_CHECK(r == BH_ETOOBIG);
        return;
    }
    if (len - (i + 1) < v) {
        FUZZ_CHECK(r == 0);
        return;
    }
    FUZZ_CHECK(r > 0 && (size_t)r == i + 1 + v && msg == data + i + 1 && msg_len == v);
}

/* Byte-exact forms of the fixed messages (HubProtocol.md; ASP.NET writes the same). */
static void check_fixed_writers(void) {
    const bh_sr_protocol_t *p = &bh_sr_msgpack_protocol;
    bh_buf_t b;

    bh_buf_init(&b, 0);
    FUZZ_CHECK(p->write_ping(&b) == BH_OK);
    FUZZ_CHECK(b.len == 3 && memcmp(b.data, "\x02\x91\x06", 3) == 0);
    bh_buf_reset(&b);
    FUZZ_CHECK(p->write_close(&b, NULL, 0) == BH_OK);
    FUZZ_CHECK(b.len == 5 && memcmp(b.data, "\x04\x93\x07\xc0\xc2", 5) == 0);
    bh_buf_reset(&b);
    FUZZ_CHECK(p->write_close(&b, "x", 1) == BH_OK);
    FUZZ_CHECK(b.len == 6 && memcmp(b.data, "\x05\x93\x07\xa1x\xc3", 6) == 0);
    bh_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *s = (const char *)data;
    static int fixed_checked;

    if (!fixed_checked) {
        FUZZ_CHECK(bh_sr_protocol_find("messagepack") == &bh_sr_msgpack_protocol);
        FUZZ_CHECK(bh_sr_msgpack_protocol.binary &&
                   strcmp(bh_sr_msgpack_protocol.name, "messagepack") == 0);
        check_fixed_writers();
        fixed_checked = 1;
    }
    fuzz_hub(&bh_sr_msgpack_protocol, check_varint_frame, 1, s, size);
    /* JSON text in: the writer transcodes it, the parser must give the same tree back */
    fuzz_hub_invocation(&bh_sr_msgpack_protocol, 1, "ReceiveBalances", s, size);
    return 0;
}
