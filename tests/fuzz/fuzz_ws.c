/* Fuzz harness for the WebSocket sessions (bh_ws_*), server and client side. The same bytes
 * are fed in one piece, byte by byte, in random chunks with flushes in between, and (short
 * inputs) cut in two at every offset: every way must deliver the same messages, error, peer
 * close code and Close. Output must be well-formed frames (masked on the client side only), and
 * a protocol error must end in a Close with a status code. Sending: a capped output buffer
 * loses nothing. */
#include <string.h>

#include "base/buf.h"
#include "base/error.h"
#include "base/json.h"
#include "ws/ws.h"
#include "fuzz.h"

#define MAX_MSG 1024

typedef struct {
    bh_buf_t msgs; /* each message as: binary flag, 8-byte length, payload */
    size_t count;
    bh_buf_t out;        /* everything flushed */
    bh_buf_t frames;     /* out decoded: opcode, 8-byte length, unmasked payload, per frame */
    unsigned close_code; /* of the Close in out: 1005 when it has no code, 0 when none */
    bh_buf_t close;      /* that Close's unmasked payload */
    int err;             /* first non-OK bh_ws_feed result */
    uint16_t peer_code;
    int finished;
} run_t;

static void put_record(bh_buf_t *b, unsigned kind, const unsigned char *p, size_t len) {
    unsigned char hdr[9];
    size_t i;

    hdr[0] = (unsigned char)kind;
    for (i = 0; i < 8; i++)
        hdr[1 + i] = (unsigned char)((uint64_t)len >> (8 * i));
    FUZZ_CHECK(bh_buf_append(b, hdr, sizeof hdr) == BH_OK);
    FUZZ_CHECK(bh_buf_append(b, p, len) == BH_OK);
}

static void on_message(void *ud, int binary, const char *data, size_t len) {
    run_t *run = ud;

    FUZZ_CHECK(binary == 0 || binary == 1);
    FUZZ_CHECK(len <= MAX_MSG && data != NULL);
    FUZZ_CHECK(binary || bh_utf8_valid(data, len));
    put_record(&run->msgs, (unsigned)binary, (const unsigned char *)data, len);
    run->count++;
}

/* Decodes what a session wrote: FIN set, no RSV bits, masked exactly on the client side, at
 * most one Close and nothing after it; with only_control (a session that was never asked to
 * send data) Close and Pong frames only. Fills run->frames, run->close, run->close_code. */
static void decode_output(run_t *run, int client, int only_control) {
    const unsigned char *o = (const unsigned char *)run->out.data;
    size_t pos = 0, n = run->out.len;
    int closed = 0;

    bh_buf_reset(&run->frames);
    bh_buf_reset(&run->close);
    run->close_code = 0;
    while (pos < n) {
        unsigned char *payload;
        uint64_t plen;
        size_t hl = 2, k, ext;
        unsigned op, len7;

        FUZZ_CHECK(!closed);
        FUZZ_CHECK(n - pos >= 2);
        FUZZ_CHECK((o[pos] & 0xf0) == 0x80); /* FIN, no RSV */
        op = o[pos] & 0x0f;
        FUZZ_CHECK(op == 0x8 || op == 0xa || (!only_control && (op == 0x1 || op == 0x2)));
        FUZZ_CHECK(!(o[pos + 1] & 0x80) == !client); /* only clients mask */
        len7 = o[pos + 1] & 0x7f;
        ext = len7 == 126 ? 2 : len7 == 127 ? 8 : 0;
        FUZZ_CHECK(n - pos >= hl + ext);
        for (plen = len7, k = 0; k < ext; k++)
            plen = (k == 0 ? 0 : plen << 8) | o[pos + hl + k];
        hl += ext + (client ? 4 : 0);
        FUZZ_CHECK(op < 0x8 || plen <= 125); /* control frames */
        FUZZ_CHECK(ext != 2 || plen >= 126);
        FUZZ_CHECK(ext != 8 || plen >= 65536);
        FUZZ_CHECK(n - pos >= hl && n - pos - hl >= plen);
        payload = malloc(plen > 0 ? (size_t)plen : 1);
        FUZZ_CHECK(payload != NULL);
        for (k = 0; k < plen; k++)
            payload[k] = o[pos + hl + k] ^ (client ? o[pos + hl - 4 + k % 4] : 0);
        put_record(&run->frames, op, payload, (size_t)plen);
        if (op == 0x8) {
            closed = 1;
            FUZZ_CHECK(plen != 1);
            run->close_code = plen >= 2 ? (unsigned)payload[0] << 8 | payload[1] : 1005;
            if (plen > 2)
                FUZZ_CHECK(bh_utf8_valid((const char *)payload + 2, (size_t)plen - 2));
            FUZZ_CHECK(bh_buf_append(&run->close, payload, (size_t)plen) == BH_OK);
        }
        free(payload);
        pos += hl + (size_t)plen;
    }
}

static uint64_t next_rand(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

enum { WHOLE, BYTES, CHUNKS, SPLIT };

/* Inputs up to this size are also fed in two pieces, cut at every offset. */
#define SPLIT_ALL_MAX 64

static void run_session(const char *data, size_t size, int client, int mode, size_t split,
                        run_t *run) {
    bh_ws_callbacks_t cb = {on_message};
    bh_ws_t *ws =
        client ? bh_ws_client_new(&cb, run, MAX_MSG) : bh_ws_server_new(&cb, run, MAX_MSG);
    uint64_t seed = 0x9e3779b97f4a7c15ULL ^ size;
    size_t off = 0;

    FUZZ_CHECK(ws != NULL);
    memset(run, 0, sizeof *run);
    bh_buf_init(&run->msgs, 0);
    bh_buf_init(&run->out, 0);
    bh_buf_init(&run->frames, 0);
    bh_buf_init(&run->close, 0);
    while (off < size) {
        size_t n = mode == WHOLE    ? size
                   : mode == BYTES  ? 1
                   : mode == CHUNKS ? 1 + next_rand(&seed) % 40
                   : off == 0       ? split
                                    : size;
        int r;
        if (n > size - off)
            n = size - off;
        r = bh_ws_feed(ws, data + off, n);
        off += n;
        FUZZ_CHECK(r == BH_OK || r == BH_EPROTO || r == BH_ENOMEM);
        if (r != BH_OK) {
            run->err = r;
            break; /* the caller stops reading: flushes the Close and ends the connection */
        }
        if (mode == CHUNKS && next_rand(&seed) % 3 == 0)
            FUZZ_CHECK(bh_ws_flush(ws, &run->out) == BH_OK);
    }
    FUZZ_CHECK(bh_ws_flush(ws, &run->out) == BH_OK);
    run->peer_code = bh_ws_peer_close_code(ws);
    run->finished = bh_ws_finished(ws);
    /* after an error every further feed fails the same way */
    if (run->err != 0)
        FUZZ_CHECK(bh_ws_feed(ws, "\x81\x80", 2) == BH_EPROTO);
    bh_ws_free(ws);
    decode_output(run, client, 1);
}

static void run_free(run_t *run) {
    bh_buf_free(&run->msgs);
    bh_buf_free(&run->out);
    bh_buf_free(&run->frames);
    bh_buf_free(&run->close);
}

static int error_code_ok(unsigned code) {
    return code == 1002 || code == 1007 || code == 1009 || code == 1011;
}

static int same_bytes(const bh_buf_t *a, const bh_buf_t *b) {
    return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

/* all_frames: compare every frame sent too. With flushes at different moments only the Close
 * must be the same: a Pong still queued when a Close is queued is dropped (the Close goes
 * first and ends the output), one flushed earlier is not. */
static void check_same(const run_t *a, const run_t *b, int all_frames) {
    FUZZ_CHECK(a->count == b->count && same_bytes(&a->msgs, &b->msgs));
    FUZZ_CHECK(a->err == b->err);
    FUZZ_CHECK(a->peer_code == b->peer_code);
    FUZZ_CHECK(a->finished == b->finished);
    FUZZ_CHECK(a->close_code == b->close_code && same_bytes(&a->close, &b->close));
    if (all_frames)
        FUZZ_CHECK(same_bytes(&a->frames, &b->frames));
}

/* One side (server or client) over the input, fed every way. */
static void fuzz_side(const char *buf, size_t size, int client) {
    run_t whole, bytes, chunks;

    run_session(buf, size, client, WHOLE, 0, &whole);
    run_session(buf, size, client, BYTES, 0, &bytes);
    run_session(buf, size, client, CHUNKS, 0, &chunks);
    check_same(&whole, &bytes, 1);
    check_same(&whole, &chunks, 0);
    for (size_t k = 1; size <= SPLIT_ALL_MAX && k < size; k++) {
        run_t split;
        run_session(buf, size, client, SPLIT, k, &split);
        check_same(&whole, &split, 1);
        run_free(&split);
    }
    if (!client) /* no randomness on the server side: the very same bytes */
        FUZZ_CHECK(same_bytes(&whole.out, &bytes.out));

    if (whole.err == BH_EPROTO) {
        /* every failure ends in a Close; without the peer's Close it names the error */
        FUZZ_CHECK(whole.close_code != 0 && whole.finished);
        if (whole.peer_code == 0)
            FUZZ_CHECK(error_code_ok(whole.close_code));
    }
    if (whole.peer_code != 0) {
        FUZZ_CHECK(whole.close_code != 0 && whole.finished);
        FUZZ_CHECK(whole.peer_code == whole.close_code || error_code_ok(whole.close_code));
    }
    if (whole.close_code != 0)
        FUZZ_CHECK(whole.peer_code != 0 || whole.err == BH_EPROTO);
    run_free(&whole);
    run_free(&bytes);
    run_free(&chunks);
}

/* Sending: text only when valid UTF-8; a capped output buffer drained piece by piece yields
 * the same frames as one uncapped flush (the same bytes on the server side, where nothing is
 * random); what is sent is what was queued. */
static void fuzz_send(const char *data, size_t size, int client) {
    bh_ws_t *a =
        client ? bh_ws_client_new(NULL, NULL, MAX_MSG) : bh_ws_server_new(NULL, NULL, MAX_MSG);
    bh_ws_t *b =
        client ? bh_ws_client_new(NULL, NULL, MAX_MSG) : bh_ws_server_new(NULL, NULL, MAX_MSG);
    bh_buf_t piece;
    run_t whole, joined;
    int binary = size > 0 && (data[0] & 1), ra, rb, rounds = 0;
    uint16_t code = size > 1 ? (uint16_t)(1000 + (unsigned char)data[1] * 16) : 1000;
    char reason[124];
    size_t rlen = size < sizeof reason - 1 ? size : sizeof reason - 1;

    FUZZ_CHECK(a != NULL && b != NULL);
    memset(&whole, 0, sizeof whole);
    memset(&joined, 0, sizeof joined);
    bh_buf_init(&piece, 1 + size % 17);
    ra = bh_ws_send(a, binary, data, size);
    rb = bh_ws_send(b, binary, data, size);
    FUZZ_CHECK(ra == rb);
    FUZZ_CHECK(ra == (binary || bh_utf8_valid(data, size) ? BH_OK : BH_EINVAL));
    memcpy(reason, data, rlen);
    reason[rlen] = '\0';
    ra = bh_ws_close(a, code, reason);
    rb = bh_ws_close(b, code, reason);
    FUZZ_CHECK(ra == rb && (ra == BH_OK || ra == BH_EINVAL));
    FUZZ_CHECK(bh_ws_flush(a, &whole.out) == BH_OK);
    for (;;) {
        int r = bh_ws_flush(b, &piece);
        FUZZ_CHECK(r == BH_OK || r == BH_ETOOBIG);
        FUZZ_CHECK(bh_buf_append(&joined.out, piece.data, piece.len) == BH_OK);
        bh_buf_reset(&piece);
        if (r == BH_OK)
            break;
        FUZZ_CHECK(++rounds < 100000);
    }
    decode_output(&whole, client, 0);
    decode_output(&joined, client, 0);
    FUZZ_CHECK(same_bytes(&whole.frames, &joined.frames));
    if (!client)
        FUZZ_CHECK(same_bytes(&whole.out, &joined.out));
    if (ra == BH_OK) {
        FUZZ_CHECK(whole.close_code == code && whole.close.len == 2 + strlen(reason));
        FUZZ_CHECK(memcmp(whole.close.data + 2, reason, strlen(reason)) == 0);
        /* after our Close nothing more may be queued */
        FUZZ_CHECK(bh_ws_send(a, 1, "x", 1) == BH_ECLOSED);
    }
    bh_buf_free(&piece);
    run_free(&whole);
    run_free(&joined);
    bh_ws_free(a);
    bh_ws_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *buf = (const char *)data;

    fuzz_side(buf, size, 0);
    fuzz_side(buf, size, 1);
    fuzz_send(buf, size, 0);
    fuzz_send(buf, size, 1);
    return 0;
}
