/* WebSocket sessions (RFC 6455), server and client side, as a codec. Frames are parsed in place
 * from the caller's bytes and serialised into the caller's buffer; a session keeps only a few
 * bytes of a split frame header, and heap memory only while a message is in flight or frames wait
 * for a flush. Hand-written rather than on wslay because wslay's context holds two 4 KiB buffers
 * and several queues per connection: too much for 100,000 mostly idle connections. */
#include "ws.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "../base/error.h"
#include "../base/spare.h"

enum {
    OP_CONT = 0x0,
    OP_TEXT = 0x1,
    OP_BINARY = 0x2,
    OP_CLOSE = 0x8,
    OP_PING = 0x9,
    OP_PONG = 0xa
};

enum {
    CODE_PROTOCOL = 1002,
    CODE_NO_STATUS = 1005,
    CODE_BAD_DATA = 1007,
    CODE_TOO_BIG = 1009,
    CODE_INTERNAL = 1011
};

#define WS_MAX_CTL 125 /* control frame payload limit */
/* A masked message that arrives whole in one feed and is at most this long is unmasked on the
 * stack: the common small request costs no allocation at all. */
#define WS_STACK_MSG 4096
#define WS_MSG_MIN_CAP 256

/* flags */
#define F_CLIENT 0x01
#define F_FAILED 0x02        /* a protocol error was answered with a Close: nothing more is read */
#define F_CLOSE_QUEUED 0x04  /* a Close (ours, an echo, an error's) is queued: no more frames */
#define F_CLOSE_IN_PEND 0x08 /* ...and it is the last frame in pend */
#define F_CLOSE_SENT 0x10
#define F_CLOSE_RECEIVED 0x20 /* the peer's Close arrived: the rest of its input is ignored */

struct bh_ws {
    bh_ws_callbacks_t cb;
    void *ud;
    size_t max_msg;
    uint64_t frame_left; /* payload bytes of the current frame still to come; 0: a header next */
    /* a message spanning frames or feeds, followed by ctl_len bytes of a split control frame */
    char *msg;
    size_t msg_len, msg_cap;
    /* serialised frames waiting for bh_ws_flush: pend[pend_off, pend_len) */
    char *pend;
    size_t pend_off, pend_len, pend_cap;
    size_t pend_head; /* bytes at pend_off that finish a frame already partly flushed */
    uint16_t peer_code;
    uint16_t fail_code; /* the code of the Close answering a protocol error of the peer */
    uint8_t hdr[14];    /* a frame header split across feeds */
    uint8_t hdr_len;
    uint8_t key[4]; /* the current frame's masking key */
    uint8_t phase;  /* offset of the next payload byte in the current frame, mod 4 */
    uint8_t op, fin, masked;
    uint8_t msg_op;  /* OP_TEXT or OP_BINARY while a message is in flight, else 0 */
    uint8_t utf8;    /* UTF-8 decoder state over the text message so far */
    uint8_t ctl_len; /* bytes of a split control payload held after the message data */
    uint8_t flags;
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

/* ---- UTF-8 and masking ---- */

/* Streaming UTF-8 check (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF), so
 * that a text message is judged byte by byte as it arrives, however it is split. State 0 is
 * "between characters"; states 1-7 say how many continuation bytes are still due and the range
 * the next one must fall in. */
#define UTF8_REJECT 0xff
static const uint8_t utf8_lo[8] = {0, 0x80, 0x80, 0xa0, 0x80, 0x80, 0x90, 0x80};
static const uint8_t utf8_hi[8] = {0, 0xbf, 0xbf, 0xbf, 0x9f, 0xbf, 0xbf, 0x8f};
static const uint8_t utf8_after[8] = {0, 0, 1, 1, 1, 2, 2, 2};

static uint8_t utf8_run(uint8_t s, const unsigned char *p, size_t n) {
    size_t i = 0;

    while (i < n) {
        unsigned c = p[i++];
        if (s != 0) {
            if (c < utf8_lo[s] || c > utf8_hi[s])
                return UTF8_REJECT;
            s = utf8_after[s];
        } else if (c < 0x80) {
            /* JSON is mostly ASCII: skip it 8 bytes at a time */
            while (n - i >= 8) {
                uint64_t v;
                memcpy(&v, p + i, 8);
                if (v & 0x8080808080808080ull)
                    break;
                i += 8;
            }
        } else if (c < 0xc2 || c > 0xf4) {
            return UTF8_REJECT;
        } else {
            s = c < 0xe0    ? 1
                : c == 0xe0 ? 3
                : c == 0xed ? 4
                : c < 0xf0  ? 2
                : c == 0xf0 ? 6
                : c < 0xf4  ? 5
                            : 7;
        }
    }
    return s;
}

/* dst = src XOR the key, starting at key byte `phase`; 8 bytes at a time. */
static void mask_copy(unsigned char *dst, const unsigned char *src, size_t n, const uint8_t key[4],
                      unsigned phase) {
    unsigned char k[8];
    uint64_t m, v;
    size_t i;

    for (i = 0; i < 8; i++)
        k[i] = key[(phase + i) & 3];
    memcpy(&m, k, 8);
    for (i = 0; n - i >= 8; i += 8) {
        memcpy(&v, src + i, 8);
        v ^= m;
        memcpy(dst + i, &v, 8);
    }
    for (; i < n; i++)
        dst[i] = src[i] ^ k[i & 7];
}

/* Client masking keys must be unpredictable (RFC 6455 5.3), so they come straight from OpenSSL's
 * CSPRNG. One RAND_bytes call costs about 1-2 us whatever its size (more than the rest of sending
 * a small message), so each thread fetches 64 keys at a time; each key is used once. A forked
 * child drops the keys it inherited, so that parent and child never share one. */
static _Thread_local struct {
    unsigned char b[256];
    unsigned left;
} key_pool;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;

static void key_pool_forget(void) {
    key_pool.left = 0;
}

static void key_pool_init(void) {
    pthread_atfork(NULL, NULL, key_pool_forget);
}

static int mask_key(uint8_t key[4]) {
    pthread_once(&key_once, key_pool_init);
    if (key_pool.left < 4) {
        if (RAND_bytes(key_pool.b, (int)sizeof(key_pool.b)) != 1)
            return BH_EIO;
        key_pool.left = sizeof(key_pool.b);
    }
    key_pool.left -= 4;
    memcpy(key, key_pool.b + key_pool.left, 4);
    return BH_OK;
}

/* ---- output: frames wait in pend until bh_ws_flush copies them out ---- */

/* Room for extra more bytes at pend_len (flushed bytes at the front are dropped first). */
static int pend_reserve(bh_ws_t *ws, size_t extra) {
    size_t used = ws->pend_len - ws->pend_off, cap;
    char *p;

    if (extra > SIZE_MAX / 2 - used)
        return BH_ENOMEM;
    if (ws->pend_off > 0 && ws->pend_len + extra > ws->pend_cap) {
        memmove(ws->pend, ws->pend + ws->pend_off, used);
        ws->pend_off = 0;
        ws->pend_len = used;
    }
    if (ws->pend_len + extra <= ws->pend_cap)
        return BH_OK;
    if (ws->pend == NULL) {
        /* this thread's emptied buffer from an earlier flush, if it is big enough */
        ws->pend = bh_spare_take(BH_SPARE_WS, extra, &ws->pend_cap);
        if (ws->pend != NULL)
            return BH_OK;
    }
    cap = ws->pend_cap * 2;
    if (cap < ws->pend_len + extra)
        cap = ws->pend_len + extra;
    p = realloc(ws->pend, cap);
    if (p == NULL)
        return BH_ENOMEM;
    ws->pend = p;
    ws->pend_cap = cap;
    return BH_OK;
}

/* Frame header for a final frame of len payload bytes (minimal length encoding, and a fresh
 * masking key on the client side); returns its size, or 0 when no key could be had. */
static size_t frame_header(const bh_ws_t *ws, unsigned op, size_t len, unsigned char h[14]) {
    size_t hl = 2, i;

    h[0] = (unsigned char)(0x80u | op);
    if (len < 126) {
        h[1] = (unsigned char)len;
    } else if (len <= 0xffff) {
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
    if (ws->flags & F_CLIENT) {
        if (mask_key(h + hl) != BH_OK)
            return 0;
        h[1] |= 0x80;
        hl += 4;
    }
    return hl;
}

/* Append header h and the payload (masked with the header's key on the client side) to pend;
 * room must have been reserved. */
static void pend_put(bh_ws_t *ws, const unsigned char *h, size_t hl, const void *data, size_t len) {
    unsigned char *dst = (unsigned char *)ws->pend + ws->pend_len;

    memcpy(dst, h, hl);
    if (len > 0) {
        if (ws->flags & F_CLIENT)
            mask_copy(dst + hl, data, len, h + hl - 4, 0);
        else
            memcpy(dst + hl, data, len);
    }
    ws->pend_len += hl + len;
}

static int queue_frame(bh_ws_t *ws, unsigned op, const void *data, size_t len) {
    unsigned char h[14];
    size_t hl = frame_header(ws, op, len, h);

    if (hl == 0)
        return BH_EIO;
    if (pend_reserve(ws, hl + len) != BH_OK)
        return BH_ENOMEM;
    pend_put(ws, h, hl, data, len);
    return BH_OK;
}

/* Queue a Close (code 0: one without a payload). Frames not yet begun are dropped, as wslay
 * did: the Close goes out next, right after a frame already partly flushed, and nothing after it.
 * Fails (nothing changed) only for want of memory or randomness. */
static int queue_close(bh_ws_t *ws, uint16_t code, const void *reason, size_t rlen) {
    unsigned char p[WS_MAX_CTL], h[14];
    size_t n = 0, hl;

    if (code != 0) {
        p[0] = (unsigned char)(code >> 8);
        p[1] = (unsigned char)code;
        if (rlen > 0)
            memcpy(p + 2, reason, rlen);
        n = 2 + rlen;
    }
    hl = frame_header(ws, OP_CLOSE, n, h);
    if (hl == 0)
        return BH_EIO;
    if (pend_reserve(ws, hl + n) != BH_OK)
        return BH_ENOMEM;
    ws->pend_len = ws->pend_off + ws->pend_head;
    pend_put(ws, h, hl, p, n);
    ws->flags |= F_CLOSE_QUEUED | F_CLOSE_IN_PEND;
    return BH_OK;
}

/* Size of one of our own frames, complete in pend. */
static size_t own_frame_size(const unsigned char *p) {
    size_t len = p[1] & 0x7fu, hl = 2, i;

    if (len == 126) {
        len = (size_t)p[2] << 8 | p[3];
        hl = 4;
    } else if (len == 127) {
        for (len = 0, i = 0; i < 8; i++)
            len = len << 8 | p[2 + i];
        hl = 10;
    }
    return hl + ((p[1] & 0x80u) ? 4 : 0) + len;
}

int bh_ws_flush(bh_ws_t *ws, bh_buf_t *out) {
    size_t avail = ws->pend_len - ws->pend_off, n = avail, pos;
    int r;

    if (avail == 0)
        return BH_OK;
    /* take what fits under the cap; the rest stays for the next flush */
    if (out->max > 0) {
        size_t room = out->max > out->len ? out->max - out->len : 0;
        if (room < n)
            n = room;
    }
    if (n > 0) {
        r = bh_buf_append(out, ws->pend + ws->pend_off, n);
        if (r == BH_ETOOBIG)
            return BH_ETOOBIG;
        if (r != BH_OK)
            return r;
    }
    if (n == avail) {
        /* all out: the storage goes too (to this thread's spare, for the next session that
         * sends), so that an idle session holds none and steady traffic allocates nothing */
        if (ws->flags & F_CLOSE_IN_PEND)
            ws->flags |= F_CLOSE_SENT;
        bh_spare_give(BH_SPARE_WS, ws->pend, ws->pend_cap);
        ws->pend = NULL;
        ws->pend_off = ws->pend_len = ws->pend_cap = ws->pend_head = 0;
        return BH_OK;
    }
    /* find where the frame cut by the cap ends */
    pos = ws->pend_head;
    if (n < pos) {
        ws->pend_head = pos - n;
    } else {
        while (pos < n)
            pos += own_frame_size((const unsigned char *)ws->pend + ws->pend_off + pos);
        ws->pend_head = pos - n;
    }
    ws->pend_off += n;
    return BH_ETOOBIG;
}

/* ---- input ---- */

static void msg_free(bh_ws_t *ws) {
    free(ws->msg);
    ws->msg = NULL;
    ws->msg_len = ws->msg_cap = 0;
    ws->ctl_len = 0;
}

/* Room for need bytes in msg, grown with what actually arrives (not with what a header
 * announces: a peer announcing a large frame and trickling it costs only what it sent). */
static int msg_reserve(bh_ws_t *ws, size_t need) {
    size_t cap = ws->msg_cap ? ws->msg_cap * 2 : WS_MSG_MIN_CAP;
    size_t limit = ws->max_msg < SIZE_MAX - WS_MAX_CTL ? ws->max_msg + WS_MAX_CTL : SIZE_MAX;
    char *p;

    if (need <= ws->msg_cap)
        return BH_OK;
    if (cap > limit)
        cap = limit;
    if (cap < need)
        cap = need;
    p = realloc(ws->msg, cap);
    if (p == NULL)
        return BH_ENOMEM;
    ws->msg = p;
    ws->msg_cap = cap;
    return BH_OK;
}

/* Answer a protocol error with a Close carrying code (unless a Close is queued already: only
 * one may be sent) and read nothing more. */
static int fail(bh_ws_t *ws, uint16_t code) {
    if (!ws->fail_code)
        ws->fail_code = code;
    if (!(ws->flags & F_CLOSE_QUEUED) && queue_close(ws, code, NULL, 0) != BH_OK)
        ws->flags |= F_CLOSE_QUEUED; /* no Close possible: send nothing more either */
    ws->flags |= F_FAILED;
    msg_free(ws);
    ws->frame_left = 0;
    ws->hdr_len = 0;
    ws->msg_op = 0;
    return code == CODE_INTERNAL ? BH_ENOMEM : BH_EPROTO;
}

/* Close codes an endpoint may send: RFC 6455 7.4 (1004-1006 are reserved, 1012+ unassigned
 * when it was written; 3000-4999 for libraries and applications). */
static int close_code_ok(uint16_t code) {
    return (code >= 1000 && code <= 1011 && code != 1004 && code != 1005 && code != 1006) ||
           (code >= 3000 && code <= 4999);
}

static int on_control(bh_ws_t *ws, const unsigned char *p, size_t n) {
    uint16_t code = 0;

    if (ws->op == OP_PING) {
        /* after a Close nothing more goes out, pongs included */
        if (!(ws->flags & F_CLOSE_QUEUED) && queue_frame(ws, OP_PONG, p, n) == BH_ENOMEM)
            return fail(ws, CODE_INTERNAL);
        return BH_OK;
    }
    if (ws->op == OP_PONG)
        return BH_OK;
    /* Close: no payload, or a valid code and a UTF-8 reason */
    if (n == 1)
        return fail(ws, CODE_PROTOCOL);
    if (n >= 2) {
        if (utf8_run(0, p + 2, n - 2) != 0)
            return fail(ws, CODE_BAD_DATA);
        code = (uint16_t)(p[0] << 8 | p[1]);
        if (!close_code_ok(code))
            return fail(ws, CODE_PROTOCOL);
    }
    ws->peer_code = code ? code : CODE_NO_STATUS;
    ws->flags |= F_CLOSE_RECEIVED;
    msg_free(ws); /* a message in flight will never end */
    ws->msg_op = 0;
    /* echo it (code and reason) unless our own Close is queued already */
    if (!(ws->flags & F_CLOSE_QUEUED) && queue_close(ws, code, p + 2, code ? n - 2 : 0) != BH_OK) {
        ws->flags |= F_CLOSE_QUEUED | F_FAILED;
        return BH_ENOMEM;
    }
    return BH_OK;
}

/* A whole message: to the callback, unless our Close is queued (the session is ending). */
static void deliver(bh_ws_t *ws, const void *data, size_t len) {
    int binary = ws->msg_op == OP_BINARY;

    ws->msg_op = 0;
    if (!(ws->flags & F_CLOSE_QUEUED) && ws->cb.on_message != NULL)
        ws->cb.on_message(ws->ud, binary, len > 0 ? (const char *)data : "", len);
}

/* Copy payload bytes out of the frame, unmasked. */
static void take(const bh_ws_t *ws, unsigned char *dst, const unsigned char *p, size_t n,
                 unsigned phase) {
    if (ws->masked)
        mask_copy(dst, p, n, ws->key, phase);
    else if (n > 0)
        memcpy(dst, p, n);
}

/* A whole single-frame message in the caller's bytes: delivered from there on the client side,
 * from the stack (or a temporary buffer when large) on the server side. */
static int data_direct(bh_ws_t *ws, const unsigned char *p, size_t n, unsigned phase) {
    unsigned char buf[WS_STACK_MSG];
    const unsigned char *m = p;

    if (ws->masked) {
        if (n <= sizeof(buf)) {
            m = buf;
        } else {
            if (msg_reserve(ws, n) != BH_OK)
                return fail(ws, CODE_INTERNAL);
            m = (unsigned char *)ws->msg;
        }
        mask_copy((unsigned char *)m, p, n, ws->key, phase);
    }
    if (ws->msg_op == OP_TEXT && utf8_run(ws->utf8, m, n) != 0)
        return fail(ws, CODE_BAD_DATA);
    deliver(ws, m, n);
    if (ws->msg != NULL)
        msg_free(ws);
    return BH_OK;
}

/* n payload bytes of a data frame at p (phase: their offset in the frame, mod 4); last: they
 * end the frame. */
static int data_chunk(bh_ws_t *ws, const unsigned char *p, size_t n, unsigned phase, int last) {
    unsigned char *dst;

    if (last && ws->fin && ws->msg_len == 0)
        return data_direct(ws, p, n, phase);
    if (n > 0) {
        if (msg_reserve(ws, ws->msg_len + n) != BH_OK)
            return fail(ws, CODE_INTERNAL);
        dst = (unsigned char *)ws->msg + ws->msg_len;
        take(ws, dst, p, n, phase);
        ws->msg_len += n;
        /* judged as it arrives, so a bad byte fails at once however the input is split */
        if (ws->msg_op == OP_TEXT && (ws->utf8 = utf8_run(ws->utf8, dst, n)) == UTF8_REJECT)
            return fail(ws, CODE_BAD_DATA);
    }
    if (last && ws->fin) {
        if (ws->msg_op == OP_TEXT && ws->utf8 != 0)
            return fail(ws, CODE_BAD_DATA); /* ends inside a character */
        deliver(ws, ws->msg, ws->msg_len);
        msg_free(ws);
    }
    return BH_OK;
}

/* The same for a control frame: handled once complete; a split one waits after the message
 * data in msg. */
static int control_chunk(bh_ws_t *ws, const unsigned char *p, size_t n, unsigned phase, int last) {
    unsigned char buf[WS_MAX_CTL];
    size_t at = ws->msg_len;

    if (last && ws->ctl_len == 0) {
        take(ws, buf, p, n, phase);
        return on_control(ws, buf, n);
    }
    if (n > 0) {
        if (msg_reserve(ws, at + ws->ctl_len + n) != BH_OK)
            return fail(ws, CODE_INTERNAL);
        take(ws, (unsigned char *)ws->msg + at + ws->ctl_len, p, n, phase);
        ws->ctl_len = (uint8_t)(ws->ctl_len + n);
    }
    if (!last)
        return BH_OK;
    n = ws->ctl_len;
    memcpy(buf, ws->msg + at, n);
    ws->ctl_len = 0;
    if (ws->msg_len == 0)
        msg_free(ws);
    return on_control(ws, buf, n);
}

static size_t header_size(const unsigned char *h) {
    unsigned len7 = h[1] & 0x7fu;
    return 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + ((h[1] & 0x80u) ? 4 : 0);
}

static uint64_t header_length(const unsigned char *h) {
    unsigned len7 = h[1] & 0x7fu, i;
    uint64_t len = len7;

    if (len7 == 126) {
        len = (uint64_t)h[2] << 8 | h[3];
    } else if (len7 == 127) {
        for (len = 0, i = 0; i < 8; i++)
            len = len << 8 | h[2 + i];
    }
    return len;
}

/* Check the first n bytes of a header (complete or not) as soon as they decide something:
 * the first two bytes, then the length. Lengths need not use the shortest encoding (RFC 6455
 * asks that of senders only). */
static int check_header(bh_ws_t *ws, const unsigned char *h, size_t n) {
    unsigned op, len7;
    size_t ext;
    uint64_t len;

    if (n < 2)
        return BH_OK;
    op = h[0] & 0x0fu;
    len7 = h[1] & 0x7fu;
    if (h[0] & 0x70u) /* RSV bits: no extension was negotiated */
        return fail(ws, CODE_PROTOCOL);
    if (!(h[1] & 0x80u) != !!(ws->flags & F_CLIENT)) /* clients mask, servers do not */
        return fail(ws, CODE_PROTOCOL);
    if (op >= OP_CLOSE) {
        if (op > OP_PONG || !(h[0] & 0x80u) || len7 > WS_MAX_CTL)
            return fail(ws, CODE_PROTOCOL);
    } else if (op == OP_CONT ? ws->msg_op == 0 : op > OP_BINARY || ws->msg_op != 0) {
        return fail(ws, CODE_PROTOCOL); /* continuation of nothing, or a message inside one */
    }
    ext = len7 == 126 ? 2 : len7 == 127 ? 8 : 0;
    if (n < 2 + ext)
        return BH_OK;
    len = header_length(h);
    if (len >> 63)
        return fail(ws, CODE_PROTOCOL);
    /* the announced length alone decides (msg_len <= max_msg always) */
    if (len > (uint64_t)(ws->max_msg - (op >= OP_CLOSE ? 0 : ws->msg_len)))
        return fail(ws, CODE_TOO_BIG);
    return BH_OK;
}

/* A complete, checked header: start its frame (an empty one is handled at once). */
static int start_frame(bh_ws_t *ws, const unsigned char *h, size_t hl) {
    ws->op = h[0] & 0x0fu;
    ws->fin = h[0] >> 7;
    ws->masked = (h[1] & 0x80u) != 0;
    if (ws->masked)
        memcpy(ws->key, h + hl - 4, 4);
    ws->phase = 0;
    ws->frame_left = header_length(h);
    if (ws->op == OP_TEXT || ws->op == OP_BINARY) {
        ws->msg_op = ws->op;
        ws->utf8 = 0;
    }
    if (ws->frame_left > 0)
        return BH_OK;
    return ws->op >= OP_CLOSE ? control_chunk(ws, NULL, 0, 0, 1) : data_chunk(ws, NULL, 0, 0, 1);
}

/* Read a header at *pp: from the caller's bytes when it is all there, else gathered in hdr. */
static int read_header(bh_ws_t *ws, const unsigned char **pp, const unsigned char *end) {
    const unsigned char *p = *pp, *h;
    size_t avail = (size_t)(end - p), need, k;
    int r;

    if (ws->hdr_len == 0 && avail >= 2 && avail >= (need = header_size(p))) {
        h = p;
        *pp = p + need;
    } else {
        for (;;) {
            need = ws->hdr_len < 2 ? 2 : header_size(ws->hdr);
            if (ws->hdr_len >= 2 && ws->hdr_len == need)
                break;
            if (p == end) {
                *pp = p;
                return check_header(ws, ws->hdr, ws->hdr_len);
            }
            k = need - ws->hdr_len;
            if (k > (size_t)(end - p))
                k = (size_t)(end - p);
            memcpy(ws->hdr + ws->hdr_len, p, k);
            ws->hdr_len = (uint8_t)(ws->hdr_len + k);
            p += k;
        }
        *pp = p;
        h = ws->hdr;
        need = ws->hdr_len;
        ws->hdr_len = 0;
    }
    if ((r = check_header(ws, h, need)) != BH_OK)
        return r;
    return start_frame(ws, h, need);
}

int bh_ws_feed(bh_ws_t *ws, const char *data, size_t len) {
    const unsigned char *p = (const unsigned char *)data, *end = p + len;
    int r;

    if (ws->flags & F_FAILED)
        return BH_EPROTO;
    /* after the peer's Close nothing more is read: the rest is discarded */
    if ((ws->flags & F_CLOSE_RECEIVED) || len == 0)
        return BH_OK;
    while (p < end && !(ws->flags & F_CLOSE_RECEIVED)) {
        if (ws->frame_left == 0) {
            r = read_header(ws, &p, end);
        } else {
            size_t n =
                ws->frame_left < (uint64_t)(end - p) ? (size_t)ws->frame_left : (size_t)(end - p);
            unsigned phase = ws->phase;
            int last = n == ws->frame_left;
            const unsigned char *at = p;
            ws->frame_left -= n;
            ws->phase = (uint8_t)((phase + n) & 3);
            p += n;
            r = ws->op >= OP_CLOSE ? control_chunk(ws, at, n, phase, last)
                                   : data_chunk(ws, at, n, phase, last);
        }
        if (r != BH_OK)
            return r;
    }
    return BH_OK;
}

/* ---- sessions ---- */

static bh_ws_t *ws_new(const bh_ws_callbacks_t *cb, void *ud, size_t max_msg, int client) {
    bh_ws_t *ws = calloc(1, sizeof(*ws));

    if (ws == NULL)
        return NULL;
    if (cb != NULL)
        ws->cb = *cb;
    ws->ud = ud;
    ws->max_msg = max_msg;
    if (client)
        ws->flags = F_CLIENT;
    return ws;
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
    free(ws->msg);
    free(ws->pend);
    free(ws);
}

int bh_ws_send(bh_ws_t *ws, int binary, const char *data, size_t len) {
    if (data == NULL) {
        if (len > 0)
            return BH_EINVAL;
        data = "";
    }
    if (!binary && utf8_run(0, (const unsigned char *)data, len) != 0)
        return BH_EINVAL;
    if (ws->flags & (F_FAILED | F_CLOSE_QUEUED))
        return BH_ECLOSED;
    return queue_frame(ws, binary ? OP_BINARY : OP_TEXT, data, len);
}

int bh_ws_close(bh_ws_t *ws, uint16_t code, const char *reason) {
    size_t rlen = reason ? strlen(reason) : 0;

    /* the Close payload is 2 bytes of code + reason, within a 125-byte control frame */
    if (rlen > WS_MAX_CTL - 2 || utf8_run(0, (const unsigned char *)reason, rlen) != 0 ||
        !close_code_ok(code))
        return BH_EINVAL;
    if (ws->flags & (F_FAILED | F_CLOSE_QUEUED))
        return BH_ECLOSED;
    return queue_close(ws, code, reason, rlen);
}

int bh_ws_finished(const bh_ws_t *ws) {
    return (ws->flags & F_CLOSE_SENT) && (ws->flags & (F_CLOSE_RECEIVED | F_FAILED));
}

uint16_t bh_ws_peer_close_code(const bh_ws_t *ws) {
    return ws->peer_code;
}

uint16_t bh_ws_error_code(const bh_ws_t *ws) {
    return ws->fail_code;
}
