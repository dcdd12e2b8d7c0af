/* WebSocket sessions (server and client side) on wslay's event API: wslay does framing,
 * masking, reassembly, ping/pong and the close handshake; this file feeds it bytes, serialises its
 * output into the caller's buffer, and makes sure every failure ends in a Close frame carrying the
 * right status code. */
#include "ws.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <wslay/wslay.h>

#include "../base/error.h"
#include "../base/json.h"

#define WS_MAX_HEADER 14 /* 2 + 8 (64-bit length) + 4 (mask key) */
/* Held back between feeds: a header, or a whole Close frame (6-byte header, 125-byte payload). */
#define WS_MAX_HELD (WS_MAX_HEADER + 125)

struct bh_ws {
    wslay_event_context_ptr ctx;
    bh_ws_callbacks_t cb;
    void *ud;
    /* input offered to wslay by recv_cb, only during bh_ws_feed */
    const unsigned char *src;
    size_t src_off, src_lim;
    size_t src_cut; /* recv_cb stops here first: where a Close frame starts (see frame_scan) */
    /* a frame header or Close frame split across feeds, held back until it is complete */
    unsigned char held[WS_MAX_HELD];
    size_t held_len;
    uint64_t skip; /* payload bytes of the current frame not yet scanned */
    /* output sink, only during bh_ws_flush */
    bh_buf_t *out;
    int out_full; /* out reached its cap: frames remain queued */
    int out_err;  /* allocation failure while appending */
    int failed;   /* a protocol error was answered with a Close */
    int close_queued;
    uint16_t peer_code;
};

int bh_ws_accept_key(const char *key, size_t key_len, char out[29]) {
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char in[24 + sizeof(guid) - 1], md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    size_t i;

    /* RFC 6455 4.2.1: the key is the base64 of a 16-byte nonce, i.e. 22 characters and "==" */
    if (key == NULL || key_len != 24 || key[22] != '=' || key[23] != '=')
        return BH_EINVAL;
    for (i = 0; i < 22; i++) {
        char c = key[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '/'))
            return BH_EINVAL;
    }
    memcpy(in, key, 24);
    memcpy(in + 24, guid, sizeof(guid) - 1);
    if (EVP_Digest(in, sizeof(in), md, &md_len, EVP_sha1(), NULL) != 1 || md_len != 20)
        return BH_ENOMEM;
    EVP_EncodeBlock((unsigned char *)out, md, 20); /* 28 characters and a NUL */
    return BH_OK;
}

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                       void *user_data) {
    bh_ws_t *ws = user_data;
    size_t n = (ws->src_off < ws->src_cut ? ws->src_cut : ws->src_lim) - ws->src_off;

    if (n == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (n > len)
        n = len;
    memcpy(buf, ws->src + ws->src_off, n);
    ws->src_off += n;
    return (ssize_t)n;
}

static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *user_data) {
    bh_ws_t *ws = user_data;
    bh_buf_t *out = ws->out;
    size_t n = len;
    int r;

    if (out == NULL) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    /* take what fits under the cap; wslay keeps the rest of the frame for the next flush */
    if (out->max > 0)
        n = out->max > out->len ? out->max - out->len : 0;
    if (n >= len)
        n = len;
    else
        ws->out_full = 1;
    if (n == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    r = bh_buf_append(out, data, n);
    if (r == BH_ETOOBIG) {
        ws->out_full = 1;
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (r != BH_OK) {
        ws->out_err = r;
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)n;
}

/* Answer a bad message with Close(code) and stop reading. A Close already queued (ours or the
 * echo of the peer's) wins: only one may be sent. */
static void fail_with(bh_ws_t *ws, uint16_t code) {
    wslay_event_queue_close(ws->ctx, code, NULL, 0);
    wslay_event_shutdown_read(ws->ctx);
    ws->failed = 1;
}

static void on_msg_cb(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                      void *user_data) {
    bh_ws_t *ws = user_data;
    const char *msg = arg->msg ? (const char *)arg->msg : "";

    switch (arg->opcode) {
    case WSLAY_TEXT_FRAME:
    case WSLAY_BINARY_FRAME:
        /* once our Close is queued the session is ending: late data is dropped */
        if (ws->failed || ws->close_queued)
            return;
        if (arg->opcode == WSLAY_TEXT_FRAME && !bh_utf8_valid(msg, arg->msg_length)) {
            fail_with(ws, WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA);
            return;
        }
        if (ws->cb.on_message != NULL)
            ws->cb.on_message(ws->ud, arg->opcode == WSLAY_BINARY_FRAME, msg, arg->msg_length);
        break;
    case WSLAY_CONNECTION_CLOSE:
        /* wslay has queued the echo; a Close without a code counts as 1005 (RFC 6455 7.1.5) */
        ws->peer_code = arg->status_code ? arg->status_code : WSLAY_CODE_NO_STATUS_RCVD;
        break;
    default:
        break; /* wslay answers pings itself; pongs need nothing */
    }
}

/* wslay_frame_recv rejects some headers with WSLAY_ERR_PROTO, and wslay_event_recv then queues
 * a Close with no status code at all. To answer those with 1002, frame headers are checked here
 * first and wslay only ever sees bytes up to the start of a bad or still incomplete header.
 * wslay also checks a Close reason's UTF-8 per chunk it reads, skipping the first two bytes of
 * every chunk (meant for the status code): a Close payload read in two pieces is judged wrong
 * (a valid reason refused with 1007, an invalid one echoed). So a Close frame is held back until
 * it is complete, and *cut marks where it starts: recv_cb hands wslay the bytes before it first,
 * then the frame in one piece.
 * Scans s[0..n) (starting at a frame boundary or ws->skip bytes inside a payload) and returns
 * how many bytes may be passed on; *bad is set when it stopped at a bad header. */
static size_t frame_scan(bh_ws_t *ws, const unsigned char *s, size_t n, int *bad, size_t *cut) {
    size_t pos = 0;

    *bad = 0;
    *cut = 0;
    while (pos < n) {
        size_t avail = n - pos, hlen, ext, k;
        unsigned len7;
        uint64_t plen;

        if (ws->skip > 0) {
            size_t take = avail < ws->skip ? avail : (size_t)ws->skip;
            pos += take;
            ws->skip -= take;
            continue;
        }
        if (avail < 2)
            break;
        len7 = s[pos + 1] & 0x7fu;
        /* control frames: at most 125 bytes, never fragmented */
        if ((s[pos] & 0x08u) && (len7 > 125 || !(s[pos] & 0x80u))) {
            *bad = 1;
            break;
        }
        ext = len7 == 126 ? 2 : len7 == 127 ? 8 : 0;
        if (avail < 2 + ext)
            break;
        plen = len7;
        if (ext > 0) {
            plen = 0;
            for (k = 0; k < ext; k++)
                plen = (plen << 8) | s[pos + 2 + k];
            /* lengths must use the shortest encoding, and the top bit must be clear */
            if ((ext == 2 && plen < 126) || (ext == 8 && (plen < 65536 || plen >> 63))) {
                *bad = 1;
                break;
            }
        }
        hlen = 2 + ext + ((s[pos + 1] & 0x80u) ? 4 : 0);
        if (avail < hlen)
            break;
        if ((s[pos] & 0x0fu) == WSLAY_CONNECTION_CLOSE) {
            if (avail - hlen < plen)
                break;
            if (*cut == 0)
                *cut = pos;
        }
        pos += hlen;
        ws->skip = plen;
    }
    return pos;
}

/* Run wslay over s[0..n); *used receives how many bytes it took. */
static int feed_run(bh_ws_t *ws, const unsigned char *s, size_t n, size_t *used) {
    int bad, r;

    ws->src = s;
    ws->src_off = 0;
    ws->src_lim = frame_scan(ws, s, n, &bad, &ws->src_cut);
    r = wslay_event_recv(ws->ctx);
    *used = ws->src_off;
    ws->src = NULL;
    ws->src_off = ws->src_lim = ws->src_cut = 0;

    if (r == WSLAY_ERR_NOMEM) {
        fail_with(ws, WSLAY_CODE_INTERNAL_SERVER_ERROR);
        return BH_ENOMEM;
    }
    if (r != 0) {
        /* a header frame_scan let through but wslay refused: it queued an empty Close */
        ws->failed = 1;
        return BH_EPROTO;
    }
    if (bad && wslay_event_get_read_enabled(ws->ctx))
        fail_with(ws, WSLAY_CODE_PROTOCOL_ERROR);
    /* wslay stops reading without a received Close only after queueing its own error Close
     * (1002 bad frame, 1007 bad UTF-8, 1009 too big) */
    if (!wslay_event_get_read_enabled(ws->ctx) && !wslay_event_get_close_received(ws->ctx))
        ws->failed = 1;
    return ws->failed ? BH_EPROTO : BH_OK;
}

int bh_ws_feed(bh_ws_t *ws, const char *data, size_t len) {
    const unsigned char *p = (const unsigned char *)data;
    size_t used, k;
    int r;

    if (ws->failed)
        return BH_EPROTO;
    /* after the peer's Close nothing more is read: the rest is discarded */
    if (!wslay_event_get_read_enabled(ws->ctx) || len == 0)
        return BH_OK;
    while (ws->held_len > 0) {
        /* topped up to WS_MAX_HELD bytes, the held header or Close frame is complete: each
         * round makes progress */
        k = len < WS_MAX_HELD - ws->held_len ? len : WS_MAX_HELD - ws->held_len;
        memcpy(ws->held + ws->held_len, p, k);
        ws->held_len += k;
        p += k;
        len -= k;
        r = feed_run(ws, ws->held, ws->held_len, &used);
        memmove(ws->held, ws->held + used, ws->held_len - used);
        ws->held_len -= used;
        if (r != BH_OK || !wslay_event_get_read_enabled(ws->ctx)) {
            ws->held_len = 0;
            return r;
        }
        if (len == 0)
            return BH_OK;
    }
    r = feed_run(ws, p, len, &used);
    if (r != BH_OK || !wslay_event_get_read_enabled(ws->ctx))
        return r;
    /* what wslay did not take is a header prefix or an incomplete Close frame */
    if (len - used > WS_MAX_HELD) {
        fail_with(ws, WSLAY_CODE_INTERNAL_SERVER_ERROR); /* cannot happen: wslay takes all */
        return BH_EPROTO;
    }
    memcpy(ws->held, p + used, len - used);
    ws->held_len = len - used;
    return BH_OK;
}

/* Client frames are masked with unpredictable keys (RFC 6455 5.3), so a CSPRNG, not rand(). */
static int genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *user_data) {
    if (RAND_bytes(buf, (int)len) != 1) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return 0;
}

static bh_ws_t *ws_new(const bh_ws_callbacks_t *cb, void *ud, size_t max_msg, int client) {
    struct wslay_event_callbacks wcb = {recv_cb, send_cb, NULL, NULL, NULL, NULL, on_msg_cb};
    bh_ws_t *ws = calloc(1, sizeof(*ws));
    int r;

    if (ws == NULL)
        goto fail;
    if (cb != NULL)
        ws->cb = *cb;
    ws->ud = ud;
    if (client) {
        wcb.genmask_callback = genmask_cb;
        r = wslay_event_context_client_init(&ws->ctx, &wcb, ws);
    } else {
        r = wslay_event_context_server_init(&ws->ctx, &wcb, ws);
    }
    if (r != 0)
        goto fail;
    wslay_event_config_set_max_recv_msg_length(ws->ctx, (uint64_t)max_msg);
    return ws;
fail:
    free(ws);
    return NULL;
}

bh_ws_t *bh_ws_server_new(const bh_ws_callbacks_t *cb, void *ud, size_t max_msg) {
    return ws_new(cb, ud, max_msg, 0);
}

bh_ws_t *bh_ws_client_new(const bh_ws_callbacks_t *cb, void *ud, size_t max_msg) {
    return ws_new(cb, ud, max_msg, 1);
}

int bh_ws_client_key(char out[25]) {
    unsigned char nonce[16];

    if (RAND_bytes(nonce, sizeof(nonce)) != 1)
        return BH_EIO;
    EVP_EncodeBlock((unsigned char *)out, nonce, sizeof(nonce)); /* 24 characters and a NUL */
    return BH_OK;
}

int bh_ws_client_check_accept(const char *key, const char *accept, size_t len) {
    char want[29];

    if (accept == NULL || len != 28 || bh_ws_accept_key(key, key ? strlen(key) : 0, want) != BH_OK)
        return BH_EPROTO;
    return memcmp(want, accept, 28) == 0 ? BH_OK : BH_EPROTO;
}

void bh_ws_free(bh_ws_t *ws) {
    if (ws == NULL)
        return;
    wslay_event_context_free(ws->ctx);
    free(ws);
}

static int map_queue_err(int r) {
    switch (r) {
    case 0:
        return BH_OK;
    case WSLAY_ERR_NO_MORE_MSG:
        return BH_ECLOSED;
    case WSLAY_ERR_NOMEM:
        return BH_ENOMEM;
    default:
        return BH_EINVAL;
    }
}

int bh_ws_send(bh_ws_t *ws, int binary, const char *data, size_t len) {
    struct wslay_event_msg m;

    if (data == NULL) {
        if (len > 0)
            return BH_EINVAL;
        data = "";
    }
    if (!binary && !bh_utf8_valid(data, len))
        return BH_EINVAL;
    if (ws->failed)
        return BH_ECLOSED;
    m.opcode = binary ? WSLAY_BINARY_FRAME : WSLAY_TEXT_FRAME;
    m.msg = (const uint8_t *)data;
    m.msg_length = len;
    return map_queue_err(wslay_event_queue_msg(ws->ctx, &m));
}

/* Codes an endpoint may send (and wslay accepts on receipt): RFC 6455 7.4. */
static int close_code_ok(uint16_t code) {
    return (code >= 1000 && code <= 1011 && code != 1004 && code != 1005 && code != 1006) ||
           (code >= 3000 && code <= 4999);
}

int bh_ws_close(bh_ws_t *ws, uint16_t code, const char *reason) {
    size_t rlen = reason ? strlen(reason) : 0;
    int r;

    /* the Close payload is 2 bytes of code + reason, within a 125-byte control frame */
    if (rlen > 123 || (rlen > 0 && !bh_utf8_valid(reason, rlen)) || !close_code_ok(code))
        return BH_EINVAL;
    r = map_queue_err(
        wslay_event_queue_close(ws->ctx, code, (const uint8_t *)(reason ? reason : ""), rlen));
    if (r == BH_OK)
        ws->close_queued = 1;
    return r;
}

int bh_ws_flush(bh_ws_t *ws, bh_buf_t *out) {
    int r;

    ws->out = out;
    ws->out_full = 0;
    ws->out_err = 0;
    r = wslay_event_send(ws->ctx);
    ws->out = NULL;
    if (ws->out_err != 0)
        return ws->out_err;
    if (r == WSLAY_ERR_NOMEM)
        return BH_ENOMEM;
    if (r != 0)
        return BH_EIO;
    return ws->out_full ? BH_ETOOBIG : BH_OK;
}

int bh_ws_finished(const bh_ws_t *ws) {
    wslay_event_context_ptr ctx = ws->ctx;

    return wslay_event_get_close_sent(ctx) && (wslay_event_get_close_received(ctx) || ws->failed);
}

uint16_t bh_ws_peer_close_code(const bh_ws_t *ws) {
    return ws->peer_code;
}
