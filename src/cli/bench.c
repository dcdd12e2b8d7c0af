/* balancehub bench: a lean load generator for the SignalR hub. One libuv loop per thread drives
 * raw TCP sockets through the WebSocket upgrade and the SignalR handshake, then keeps --pipeline
 * GetBalances in flight per connection (rr) or holds connections open (idle); frames are parsed
 * in place and written once per connection per read, so the client costs far less per request
 * than the server it measures. Every run is bounded: warmup + duration + 30 s at most. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <uv.h>

#include "../base/buf.h"
#include "../base/error.h"
#include "../base/hist.h"
#include "../base/json.h"
#include "cli.h"

#define DEFAULT_URL "http://127.0.0.1:5000"
#define DEFAULT_HUB_PATH "/ExecutionLiveServer/v1"
#define KEY_MAX 4096
#define NS 1000000000ull
#define MAX_CONNECT_INFLIGHT 512   /* connects (TCP + upgrade + handshake) in flight, all threads */
#define CONNECT_PHASE_NS (20 * NS) /* then the run starts with what is up */
#define TEARDOWN_NS (30 * NS)      /* connect phase + teardown budget over warmup + duration */
#define KEEPALIVE_MS 15000         /* idle mode: a SignalR Ping this often */
#define READ_BUF 65536
#define MAX_FRAME (16u << 20) /* a server frame or carried input beyond this is an error */
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_KEY "YmFsYW5jZWh1Yi1iZW5jaA==" /* base64("balancehub-bench") */

/* Error kinds, in report order. */
enum { E_CONNECT, E_HANDSHAKE, E_CLOSE, E_COMPLETION, E_TIMEOUT, E_EVENT, E_PROTOCOL, E_KINDS };
static const char *const err_names[E_KINDS] = {"connect", "handshake", "close",   "completion",
                                               "timeout", "event",     "protocol"};

enum { PH_CONNECT, PH_RUN, PH_STOP };

enum {
    C_IDLE,        /* not started */
    C_CONNECTING,  /* TCP connect */
    C_UPGRADING,   /* HTTP upgrade sent, reading the 101 */
    C_HANDSHAKING, /* SignalR handshake sent, waiting for {} */
    C_SUBSCRIBING, /* idle mode: the first GetBalances sent, waiting for its completion */
    C_READY,
    C_CLOSING,
};

typedef struct {
    char *p;
    size_t len, cap;
} obuf_t;

typedef struct {
    uint64_t sent_ns; /* 0: free */
    uint32_t id;
} slot_t;

typedef struct worker worker_t;

typedef struct {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    worker_t *w;
    uint8_t state, writing, handle_open;
    uint32_t next_id;   /* next invocation id (from 1) */
    uint32_t unstamped; /* first id whose send time is not stamped yet */
    uint32_t inflight;
    slot_t *slots; /* [pipeline], by id % pipeline */
    obuf_t out;    /* bytes waiting for the next flush */
    obuf_t wbuf;   /* bytes under the in-flight uv_write */
    obuf_t carry;  /* an incomplete HTTP head or frame, kept across reads */
    obuf_t rec;    /* an incomplete hub message, kept across frames */
} conn_t;

typedef struct {
    uint64_t completed, events, err[E_KINDS];
} stats_t;

typedef struct bench bench_t;

struct worker {
    bench_t *b;
    size_t idx;
    pthread_t thread;
    int thread_started;
    uv_loop_t loop;
    uv_async_t wake;
    uv_timer_t pace, tick, ping;
    conn_t *conns;
    size_t n, next_start, connecting, cap_inflight;
    double tokens, rate; /* connects per second for this thread; 0 = unlimited */
    uint64_t pace_last;
    int running, stopping;
    uint64_t now, m_start, t_end; /* ns: this read's time, the measured window */
    uint64_t batch;               /* completions counted during this read */
    uint32_t rng;
    stats_t st;
    char first_err[256];
    bh_hist_t hist;
    char rbuf[READ_BUF];
};

typedef struct {
    char hostport[300];
    char hub_path[1024];
    struct sockaddr_storage addr;
    char key[KEY_MAX];
    const char *client_id, *hold_file;
    uint64_t connections, pipeline, threads, requests, timeout_ms;
    double duration_s, warmup_s, connect_rate;
    int idle, json, msgpack;
    uint32_t src_first, src_count; /* host byte order; 0 count: no binding */
} opts_t;

struct bench {
    opts_t o;
    char *upgrade; /* the HTTP upgrade request */
    size_t upgrade_len;
    char accept[64];                 /* expected Sec-WebSocket-Accept */
    char handshake[64];              /* the SignalR handshake record */
    char inv_pre[64], inv_post[256]; /* an Invocation around its id */
    size_t inv_pre_len, inv_post_len;
    worker_t **workers;
    _Atomic int phase;
    pthread_mutex_t phase_lock;
    _Atomic uint64_t settled, up, total, m_start, t_end;
    _Atomic int want_stop;   /* a worker saw --requests reached */
    _Atomic int interrupted; /* stopped by a signal before the run: count no failures */
};

static volatile sig_atomic_t got_signal;

static void on_signal(int sig) {
    got_signal = sig;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

static uint32_t rng_next(worker_t *w) {
    uint32_t x = w->rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return w->rng = x;
}

/* ---- buffers ---- */

static int obuf_reserve(obuf_t *b, size_t extra) {
    if (b->len + extra <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return BH_ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int obuf_append(obuf_t *b, const void *p, size_t n) {
    if (obuf_reserve(b, n))
        return BH_ENOMEM;
    memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

static void obuf_free(obuf_t *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* ---- connection lifecycle ---- */

static void conn_close(conn_t *c);
static void conn_flush(conn_t *c);
static void start_more(worker_t *w);

static void set_first_err(worker_t *w, const char *fmt, va_list ap) {
    if (!w->first_err[0])
        vsnprintf(w->first_err, sizeof w->first_err, fmt, ap);
}

/* A connection failed: count it (not during teardown), settle it if it was still coming up,
 * close it. */
static void conn_fail(conn_t *c, int kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void conn_fail(conn_t *c, int kind, const char *fmt, ...) {
    worker_t *w = c->w;
    bench_t *b = w->b;
    if (c->state == C_IDLE || c->state == C_CLOSING)
        return;
    if (!w->stopping) {
        va_list ap;
        w->st.err[kind]++;
        va_start(ap, fmt);
        set_first_err(w, fmt, ap);
        va_end(ap);
    }
    int was = c->state;
    conn_close(c);
    if (was == C_READY) {
        atomic_fetch_sub(&b->up, 1);
    } else {
        atomic_fetch_add(&b->settled, 1);
        w->connecting--;
        if (!w->running && !w->stopping)
            start_more(w);
    }
}

static void on_closed(uv_handle_t *h) {
    conn_t *c = (conn_t *)h; /* tcp is the first member */
    obuf_free(&c->out);
    obuf_free(&c->wbuf);
    obuf_free(&c->carry);
    obuf_free(&c->rec);
    free(c->slots);
    c->slots = NULL;
    c->handle_open = 0;
}

static void conn_close(conn_t *c) {
    c->state = C_CLOSING;
    if (!c->handle_open)
        on_closed((uv_handle_t *)&c->tcp); /* the socket was never created */
    else if (!uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void conn_ready(conn_t *c) {
    worker_t *w = c->w;
    c->state = C_READY;
    w->connecting--;
    atomic_fetch_add(&w->b->up, 1);
    atomic_fetch_add(&w->b->settled, 1);
    if (!w->running && !w->stopping)
        start_more(w);
}

/* ---- output: masked client frames appended to c->out, one write per flush ---- */

static int out_frame_begin(conn_t *c, int opcode, size_t n, size_t *payload_at) {
    if (obuf_reserve(&c->out, n + 14))
        return BH_ENOMEM;
    unsigned char *h = (unsigned char *)c->out.p + c->out.len;
    size_t hl;
    h[0] = (unsigned char)(0x80 | opcode);
    if (n < 126) {
        h[1] = (unsigned char)(0x80 | n);
        hl = 2;
    } else if (n < 65536) {
        h[1] = 0x80 | 126;
        h[2] = (unsigned char)(n >> 8);
        h[3] = (unsigned char)n;
        hl = 4;
    } else {
        h[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
        hl = 10;
    }
    uint32_t m = rng_next(c->w);
    memcpy(h + hl, &m, 4);
    *payload_at = c->out.len + hl + 4;
    c->out.len += hl + 4 + n;
    return 0;
}

/* XOR the payload just written at [at, at + n) with the mask in the 4 bytes before it. */
static void out_mask(conn_t *c, size_t at, size_t n) {
    unsigned char *p = (unsigned char *)c->out.p + at, k[4];
    uint32_t k4;
    uint64_t k8, v;
    size_t i = 0;
    memcpy(k, p - 4, 4);
    memcpy(&k4, k, 4);
    k8 = (uint64_t)k4 << 32 | k4; /* the key repeats every 4 bytes, in memory order */
    for (; i + 8 <= n; i += 8) {
        memcpy(&v, p + i, 8);
        v ^= k8;
        memcpy(p + i, &v, 8);
    }
    for (; i < n; i++)
        p[i] ^= k[i & 3];
}

static int out_frame(conn_t *c, int opcode, const void *payload, size_t n) {
    size_t at;
    if (out_frame_begin(c, opcode, n, &at))
        return BH_ENOMEM;
    memcpy(c->out.p + at, payload, n);
    out_mask(c, at, n);
    return 0;
}

/* MessagePack: a string header for n bytes. */
static size_t mp_str_head(unsigned char *h, size_t n) {
    if (n < 32) {
        h[0] = (unsigned char)(0xa0 | n);
        return 1;
    }
    if (n < 256) {
        h[0] = 0xd9;
        h[1] = (unsigned char)n;
        return 2;
    }
    h[0] = 0xda;
    h[1] = (unsigned char)(n >> 8);
    h[2] = (unsigned char)n;
    return 3;
}

/* The decimal digits of v (no NUL); returns how many. */
static int u32_digits(uint32_t v, char *out) {
    char tmp[10];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (int i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

/* One GetBalances invocation in its own frame; its send time is stamped at the next flush. */
static int send_request(conn_t *c) {
    bench_t *b = c->w->b;
    char digits[16];
    uint32_t id = c->next_id;
    int nd = u32_digits(id, digits);
    size_t at, n;
    slot_t *s = &c->slots[id % b->o.pipeline];

    if (s->sent_ns)
        return BH_EINVAL; /* a slot still in use: more in flight than the pipeline */
    if (!b->o.msgpack) {
        n = b->inv_pre_len + (size_t)nd + b->inv_post_len;
        if (out_frame_begin(c, 1, n, &at))
            return BH_ENOMEM;
        char *p = c->out.p + at;
        memcpy(p, b->inv_pre, b->inv_pre_len);
        memcpy(p + b->inv_pre_len, digits, (size_t)nd);
        memcpy(p + b->inv_pre_len + nd, b->inv_post, b->inv_post_len);
    } else {
        /* VarInt length, then [1, {}, "id", "GetBalances", [clientId]] with the id's string
         * header between the fixed parts (inv_pre: 0x95 0x01 0x80; inv_post: the rest). */
        size_t body = b->inv_pre_len + 1 + (size_t)nd + b->inv_post_len;
        size_t vl = body < 128 ? 1 : 2;
        n = vl + body;
        if (out_frame_begin(c, 2, n, &at))
            return BH_ENOMEM;
        unsigned char *p = (unsigned char *)c->out.p + at;
        if (vl == 1) {
            p[0] = (unsigned char)body;
        } else {
            p[0] = (unsigned char)(0x80 | (body & 0x7f));
            p[1] = (unsigned char)(body >> 7);
        }
        p += vl;
        memcpy(p, b->inv_pre, b->inv_pre_len);
        p += b->inv_pre_len;
        *p++ = (unsigned char)(0xa0 | nd);
        memcpy(p, digits, (size_t)nd);
        memcpy(p + nd, b->inv_post, b->inv_post_len);
    }
    out_mask(c, at, n);
    s->id = id;
    s->sent_ns = 1; /* taken; stamped at the flush */
    c->next_id++;
    c->inflight++;
    return 0;
}

static void on_write(uv_write_t *req, int status) {
    conn_t *c = req->data;
    c->writing = 0;
    c->wbuf.len = 0;
    if (status < 0) {
        if (status != UV_ECANCELED)
            conn_fail(c, E_CLOSE, "write failed: %s", uv_strerror(status));
        return;
    }
    if (c->state != C_CLOSING)
        conn_flush(c);
}

/* Stamp the send time of the requests in c->out, then write it: uv_try_write first (no
 * allocation, no queue), the remainder through one uv_write while more output accumulates. */
static void conn_flush(conn_t *c) {
    if (c->writing || c->out.len == 0 || c->state == C_CLOSING)
        return;
    if (c->unstamped != c->next_id) {
        uint64_t t = now_ns();
        uint64_t d = c->w->b->o.pipeline;
        for (uint32_t id = c->unstamped; id != c->next_id; id++)
            c->slots[id % d].sent_ns = t;
        c->unstamped = c->next_id;
    }
    uv_buf_t buf = uv_buf_init(c->out.p, (unsigned)c->out.len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &buf, 1);
    if (n == (int)c->out.len) {
        c->out.len = 0;
        return;
    }
    if (n < 0 && n != UV_EAGAIN) {
        conn_fail(c, E_CLOSE, "write failed: %s", uv_strerror(n));
        return;
    }
    if (n < 0)
        n = 0;
    /* swap: the rest goes out from wbuf, out starts empty */
    obuf_t t = c->wbuf;
    c->wbuf = c->out;
    c->out = t;
    c->out.len = 0;
    buf = uv_buf_init(c->wbuf.p + n, (unsigned)(c->wbuf.len - (size_t)n));
    c->wreq.data = c;
    int r = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &buf, 1, on_write);
    if (r < 0) {
        c->wbuf.len = 0;
        conn_fail(c, E_CLOSE, "write failed: %s", uv_strerror(r));
        return;
    }
    c->writing = 1;
}

/* ---- input ---- */

static void complete(conn_t *c, uint64_t id, int failed, const char *err, size_t err_len) {
    worker_t *w = c->w;
    bench_t *b = w->b;
    slot_t *s = &c->slots[id % b->o.pipeline];

    if (id == 0 || id >= c->next_id || s->id != id || s->sent_ns == 0) {
        conn_fail(c, E_PROTOCOL, "completion for an unknown invocation %llu",
                  (unsigned long long)id);
        return;
    }
    uint64_t sent = s->sent_ns;
    s->sent_ns = 0;
    c->inflight--;
    if (c->state == C_SUBSCRIBING) {
        if (!failed)
            conn_ready(c);
        else
            conn_fail(c, E_HANDSHAKE, "the first GetBalances failed: %.*s",
                      (int)(err_len > 200 ? 200 : err_len), err);
        return;
    }
    if (failed) {
        w->st.err[E_COMPLETION]++;
        if (!w->first_err[0])
            snprintf(w->first_err, sizeof w->first_err, "GetBalances failed: %.*s",
                     (int)(err_len > 200 ? 200 : err_len), err);
    }
    if (!failed && w->now >= w->m_start && w->now < w->t_end && w->running) {
        /* sent == 1: the flush has not stamped it; cannot happen as replies follow writes */
        bh_hist_record(&w->hist, w->now > sent ? w->now - sent : 0);
        w->st.completed++;
        w->batch++;
    }
    if (w->running && !w->stopping && !b->o.idle && send_request(c) < 0)
        conn_fail(c, E_PROTOCOL, "cannot queue a request");
}

static void handshake_done(conn_t *c) {
    bench_t *b = c->w->b;
    if (!b->o.idle) {
        conn_ready(c);
        return;
    }
    c->state = C_SUBSCRIBING;
    if (send_request(c) < 0)
        conn_fail(c, E_HANDSHAKE, "cannot queue the first GetBalances");
}

/* The SignalR handshake answer: {} or {"error":"..."}. */
static void on_handshake_record(conn_t *c, const char *r, size_t n) {
    if (n == 2 && r[0] == '{' && r[1] == '}') {
        handshake_done(c);
        return;
    }
    conn_fail(c, E_HANDSHAKE, "SignalR handshake refused: %.*s", (int)(n > 200 ? 200 : n), r);
}

static int digits_u64(const char *p, size_t n, uint64_t *out) {
    uint64_t v = 0;
    if (n == 0 || n > 19)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    *out = v;
    return 0;
}

/* Whether an executionEvents envelope says "type":"error": its first string-valued "type"
 * member decides (the envelope's own comes before "data"), found by memchr, not a full scan. */
static int event_is_error(const char *m, size_t n, int mp) {
    const char *p = m, *end = m + n;
    if (mp) {
        while ((p = memchr(p, 0xa4, (size_t)(end - p))) != NULL && end - p >= 11) {
            if (memcmp(p + 1, "type", 4) == 0 && ((unsigned char)p[5] & 0xe0) == 0xa0)
                return memcmp(p + 5,
                              "\xa5"
                              "error",
                              6) == 0;
            p++;
        }
        return 0;
    }
    while ((p = memchr(p, ':', (size_t)(end - p))) != NULL && end - p >= 8) {
        if (p - m >= 6 && memcmp(p - 6, "\"type\"", 6) == 0 && p[1] == '"')
            return memcmp(p + 1, "\"error\"", 7) == 0;
        p++;
    }
    return 0;
}

/* An executionEvents invocation: counted in the measured window; one whose envelope says
 * "type":"error" (a rate limit, a precheck) is an error whenever it comes. */
static void on_event(conn_t *c, const char *m, size_t n) {
    worker_t *w = c->w;
    int err = event_is_error(m, n, w->b->o.msgpack);
    if (w->running && w->now >= w->m_start && w->now < w->t_end)
        w->st.events++;
    if (err) {
        w->st.err[E_EVENT]++;
        if (!w->first_err[0])
            snprintf(w->first_err, sizeof w->first_err, "an error event: %.*s",
                     w->b->o.msgpack ? 13 : (int)(n > 200 ? 200 : n),
                     w->b->o.msgpack ? "(MessagePack)" : m);
    }
}

/* A JSON hub message the fast path did not recognise: parse it properly. */
static void json_record_slow(conn_t *c, const char *r, size_t n) {
    bh_json_doc_t *doc = NULL;
    int64_t type;
    if (bh_json_parse(r, n, 64, &doc) < 0 ||
        bh_json_int(bh_json_get(bh_json_root(doc), "type"), &type) < 0) {
        conn_fail(c, E_PROTOCOL, "the server sent a malformed hub message: %.*s",
                  (int)(n > 120 ? 120 : n), r);
        goto done;
    }
    const bh_json_t *root = bh_json_root(doc), *v;
    if (type == 1) {
        v = bh_json_get(root, "target");
        if (v && v->type == BH_JSON_STRING && strcasecmp(v->str, "executionEvents") == 0) {
            on_event(c, r, n);
        }
    } else if (type == 3) {
        const bh_json_t *id = bh_json_get(root, "invocationId");
        const bh_json_t *err = bh_json_get(root, "error");
        uint64_t nid;
        if (!id || id->type != BH_JSON_STRING || digits_u64(id->str, id->len, &nid) < 0) {
            conn_fail(c, E_PROTOCOL, "a completion without a known invocationId");
            goto done;
        }
        complete(c, nid, err != NULL, err && err->type == BH_JSON_STRING ? err->str : "",
                 err && err->type == BH_JSON_STRING ? err->len : 0);
    } else if (type == 7) {
        v = bh_json_get(root, "error");
        conn_fail(c, E_CLOSE, "the server sent a Close message: %s",
                  v && v->type == BH_JSON_STRING ? v->str : "(no error)");
    }
done:
    bh_json_free(doc);
}

static void json_record(conn_t *c, const char *r, size_t n) {
    static const char pre3[] = "{\"type\":3,\"invocationId\":\"";

    if (c->state == C_HANDSHAKING) {
        on_handshake_record(c, r, n);
        return;
    }
    if (n >= 10 && memcmp(r, "{\"type\":", 8) == 0 && (r[9] == ',' || r[9] == '}')) {
        switch (r[8]) {
        case '6':
            return; /* ping */
        case '1':
            if (n > 37 && memcmp(r + 9, ",\"target\":\"executionEvents\"", 27) == 0) {
                on_event(c, r, n);
                return;
            }
            break;
        case '3':
            if (n > sizeof pre3 && memcmp(r, pre3, sizeof pre3 - 1) == 0) {
                const char *d = r + sizeof pre3 - 1, *end = r + n;
                const char *q = memchr(d, '"', (size_t)(end - d));
                uint64_t id;
                if (q && digits_u64(d, (size_t)(q - d), &id) == 0) {
                    size_t rest = (size_t)(end - q - 1);
                    if (rest >= 15 && memcmp(q + 1, ",\"result\":null}", 15) == 0) {
                        complete(c, id, 0, NULL, 0);
                        return;
                    }
                    if (rest >= 10 && memcmp(q + 1, ",\"error\":\"", 10) == 0) {
                        complete(c, id, 1, q + 11, rest >= 12 ? rest - 12 : 0);
                        return;
                    }
                }
            }
            break;
        }
    }
    json_record_slow(c, r, n);
}

/* ---- MessagePack (binary frames: VarInt length, then the message array) ---- */

static const char *mp_str(const msgpack_object *o, size_t *n) {
    if (o->type != MSGPACK_OBJECT_STR)
        return NULL;
    *n = o->via.str.size;
    return o->via.str.ptr;
}

static void mp_message_slow(conn_t *c, const char *m, size_t n) {
    msgpack_unpacked u;
    size_t off = 0;
    msgpack_unpacked_init(&u);
    if (msgpack_unpack_next(&u, m, n, &off) != MSGPACK_UNPACK_SUCCESS ||
        u.data.type != MSGPACK_OBJECT_ARRAY || u.data.via.array.size < 1 ||
        u.data.via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        conn_fail(c, E_PROTOCOL, "the server sent a malformed MessagePack message");
        goto done;
    }
    const msgpack_object *a = u.data.via.array.ptr;
    size_t cnt = u.data.via.array.size, sl;
    const char *s;
    switch (a[0].via.u64) {
    case 1:
        if (cnt >= 4 && (s = mp_str(&a[3], &sl)) && sl == 15 &&
            strncasecmp(s, "executionEvents", 15) == 0) {
            on_event(c, m, n);
        }
        break;
    case 3: {
        uint64_t id;
        if (cnt < 4 || !(s = mp_str(&a[2], &sl)) || digits_u64(s, sl, &id) < 0 ||
            a[3].type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
            conn_fail(c, E_PROTOCOL, "a completion without a known invocationId");
            break;
        }
        const char *e = cnt >= 5 ? mp_str(&a[4], &sl) : NULL;
        complete(c, id, a[3].via.u64 == 1, e ? e : "", e ? sl : 0);
        break;
    }
    case 7:
        s = cnt >= 2 ? mp_str(&a[1], &sl) : NULL;
        conn_fail(c, E_CLOSE, "the server sent a Close message: %.*s", s ? (int)sl : 10,
                  s ? s : "(no error)");
        break;
    }
done:
    msgpack_unpacked_destroy(&u);
}

/* Fast paths for what this server writes: [3, {}, "id", 3, nil] and [1, {}, nil, target, ...]. */
static void mp_message(conn_t *c, const char *m, size_t n) {
    const unsigned char *u = (const unsigned char *)m;
    if (n >= 2 && (u[0] & 0xf0) == 0x90) {
        if (u[1] == 6)
            return;
        if (u[1] == 3 && n >= 6 && u[0] == 0x95 && u[2] == 0x80 && (u[3] & 0xe0) == 0xa0) {
            size_t l = u[3] & 0x1f;
            uint64_t id;
            if (n == 4 + l + 2 && u[4 + l] == 3 && u[5 + l] == 0xc0 &&
                digits_u64(m + 4, l, &id) == 0) {
                complete(c, id, 0, NULL, 0);
                return;
            }
        }
        if (u[1] == 1 && n >= 20 && u[2] == 0x80 && u[3] == 0xc0 && u[4] == 0xaf &&
            memcmp(m + 5, "executionEvents", 15) == 0) {
            on_event(c, m, n);
            return;
        }
    }
    mp_message_slow(c, m, n);
}

/* Split [p, p + n) (the rest of a binary message stream) into VarInt-prefixed messages; returns
 * the bytes used (an incomplete message is left). */
static size_t mp_messages(conn_t *c, const char *p, size_t n) {
    size_t off = 0;
    while (off < n && c->state != C_CLOSING) {
        uint64_t len = 0;
        size_t i = 0;
        for (;; i++) {
            if (off + i >= n)
                return off;
            if (i == 5) {
                conn_fail(c, E_PROTOCOL, "a MessagePack length prefix over 5 bytes");
                return n;
            }
            unsigned char b = (unsigned char)p[off + i];
            len |= (uint64_t)(b & 0x7f) << (7 * i);
            if (!(b & 0x80))
                break;
        }
        if (len > MAX_FRAME) {
            conn_fail(c, E_PROTOCOL, "a MessagePack message of %llu bytes",
                      (unsigned long long)len);
            return n;
        }
        if (n - off - i - 1 < len)
            return off;
        mp_message(c, p + off + i + 1, (size_t)len);
        off += i + 1 + (size_t)len;
    }
    return off;
}

/* ---- WebSocket frames ---- */

/* Hub messages from a data frame's payload; a message cut at the payload's end waits in c->rec
 * for the next frame (the server never does that with whole-message frames, but may fragment). */
static void on_data(conn_t *c, const char *p, size_t n, int binary) {
    bench_t *b = c->w->b;
    /* the handshake answer is JSON text ending in 0x1E, whatever the frame type */
    int mp = b->o.msgpack && c->state != C_HANDSHAKING;

    if (c->rec.len) {
        if (obuf_append(&c->rec, p, n) < 0) {
            conn_fail(c, E_PROTOCOL, "out of memory");
            return;
        }
        if (c->rec.len > MAX_FRAME) {
            conn_fail(c, E_PROTOCOL, "a hub message over %u bytes", MAX_FRAME);
            return;
        }
        /* process from a private copy so c->rec can take the new remainder */
        obuf_t r = c->rec;
        memset(&c->rec, 0, sizeof c->rec);
        on_data(c, r.p, r.len, binary);
        obuf_free(&r);
        return;
    }
    if (!mp && binary && c->state != C_HANDSHAKING) {
        conn_fail(c, E_PROTOCOL, "a binary frame on the JSON protocol");
        return;
    }
    size_t off = 0;
    if (mp) {
        off = mp_messages(c, p, n);
    } else {
        while (off < n && c->state != C_CLOSING) {
            const char *e = memchr(p + off, 0x1e, n - off);
            if (!e)
                break;
            json_record(c, p + off, (size_t)(e - (p + off)));
            off = (size_t)(e - p) + 1;
            /* after the handshake the rest of the payload is MessagePack */
            if (b->o.msgpack && c->state != C_HANDSHAKING && c->state != C_CLOSING) {
                off += mp_messages(c, p + off, n - off);
                break;
            }
        }
    }
    if (off < n && c->state != C_CLOSING && obuf_append(&c->rec, p + off, n - off) < 0)
        conn_fail(c, E_PROTOCOL, "out of memory");
}

static size_t consume_frames(conn_t *c, const char *p, size_t n) {
    size_t off = 0;
    while (c->state != C_CLOSING && n - off >= 2) {
        const unsigned char *h = (const unsigned char *)p + off;
        int op = h[0] & 0x0f;
        size_t hl = 2;
        uint64_t len = h[1] & 0x7f;
        if (h[1] & 0x80) {
            conn_fail(c, E_PROTOCOL, "the server sent a masked frame");
            return n;
        }
        if (len == 126) {
            if (n - off < 4)
                break;
            len = (uint64_t)h[2] << 8 | h[3];
            hl = 4;
        } else if (len == 127) {
            if (n - off < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | h[2 + i];
            hl = 10;
        }
        if (len > MAX_FRAME) {
            conn_fail(c, E_PROTOCOL, "a WebSocket frame of %llu bytes", (unsigned long long)len);
            return n;
        }
        if (n - off - hl < len)
            break;
        const char *pl = p + off + hl;
        switch (op) {
        case 0:
        case 1:
        case 2:
            on_data(c, pl, (size_t)len, op == 2);
            break;
        case 8: {
            unsigned code = len >= 2 ? ((unsigned char)pl[0] << 8 | (unsigned char)pl[1]) : 0;
            conn_fail(c, E_CLOSE, "the server closed the WebSocket (%u %.*s)", code,
                      len > 2 ? (int)(len - 2 > 120 ? 120 : len - 2) : 0, pl + 2);
            return n;
        }
        case 9:
            if (out_frame(c, 10, pl, (size_t)len) < 0)
                conn_fail(c, E_PROTOCOL, "out of memory");
            break;
        case 10:
            break;
        default:
            conn_fail(c, E_PROTOCOL, "a WebSocket frame with opcode %d", op);
            return n;
        }
        off += hl + (size_t)len;
    }
    return off;
}

/* The answer to the upgrade: 101 with the right Sec-WebSocket-Accept, then the handshake. */
static size_t consume_http(conn_t *c, const char *p, size_t n) {
    bench_t *b = c->w->b;
    const char *end = memmem(p, n, "\r\n\r\n", 4);
    if (!end) {
        if (n > 16384)
            conn_fail(c, E_HANDSHAKE, "the upgrade answer's head is over 16 KiB");
        return n > 16384 ? n : 0;
    }
    size_t head = (size_t)(end - p) + 4;
    int status = 0;
    if (n < 12 || memcmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ' ||
        sscanf(p + 9, "%3d", &status) != 1) {
        conn_fail(c, E_HANDSHAKE, "the server did not answer the upgrade with HTTP");
        return n;
    }
    if (status != 101) {
        const char *eol = memchr(p, '\r', head);
        size_t rl = (size_t)(eol - p);
        conn_fail(c, E_HANDSHAKE, "the WebSocket upgrade was refused: %.*s%s",
                  (int)(rl > 120 ? 120 : rl), p,
                  status == 401   ? " (check the API key)"
                  : status == 429 ? " (start the server with a higher --max-connections-per-key)"
                  : status == 503 ? " (start the server with a higher --max-connections)"
                  : status == 404 ? " (check --url and --hub-path)"
                                  : "");
        return n;
    }
    /* Sec-WebSocket-Accept, header names in any case */
    int ok = 0;
    const char *l = p;
    while ((l = memchr(l, '\n', (size_t)(end - l))) != NULL) {
        l++;
        if ((size_t)(end - l) > 21 && strncasecmp(l, "sec-websocket-accept:", 21) == 0) {
            const char *v = l + 21;
            while (*v == ' ' || *v == '\t')
                v++;
            size_t al = strlen(b->accept);
            ok = (size_t)(end - v) >= al && memcmp(v, b->accept, al) == 0 &&
                 (v[al] == '\r' || v[al] == ' ' || v[al] == '\t');
            break;
        }
    }
    if (!ok) {
        conn_fail(c, E_HANDSHAKE, "the 101 answer lacks the right Sec-WebSocket-Accept");
        return n;
    }
    c->state = C_HANDSHAKING;
    if (out_frame(c, 1, b->handshake, strlen(b->handshake)) < 0)
        conn_fail(c, E_HANDSHAKE, "out of memory");
    return head;
}

static size_t consume(conn_t *c, const char *p, size_t n) {
    size_t off = 0;
    if (c->state == C_UPGRADING) {
        off = consume_http(c, p, n);
        if (c->state == C_UPGRADING || c->state == C_CLOSING)
            return off;
    }
    return off + consume_frames(c, p + off, n - off);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
    conn_t *c = h->data;
    /* one buffer per thread: libuv calls on_read right after, before any other alloc */
    *buf = uv_buf_init(c->w->rbuf, READ_BUF);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    conn_t *c = s->data;
    worker_t *w = c->w;
    bench_t *b = w->b;
    if (nread == 0)
        return;
    if (nread < 0) {
        conn_fail(c, c->state == C_READY ? E_CLOSE : E_HANDSHAKE,
                  "the server closed the connection (%s)", uv_strerror((int)nread));
        return;
    }
    w->now = now_ns();
    w->t_end = atomic_load_explicit(&b->t_end, memory_order_relaxed);
    w->batch = 0;
    const char *p = buf->base;
    size_t n = (size_t)nread, used;
    if (c->carry.len) {
        if (obuf_append(&c->carry, p, n) < 0) {
            conn_fail(c, E_PROTOCOL, "out of memory");
            return;
        }
        used = consume(c, c->carry.p, c->carry.len);
        if (c->state != C_CLOSING) {
            memmove(c->carry.p, c->carry.p + used, c->carry.len - used);
            c->carry.len -= used;
        }
    } else {
        used = consume(c, p, n);
        if (c->state != C_CLOSING && used < n && obuf_append(&c->carry, p + used, n - used) < 0)
            conn_fail(c, E_PROTOCOL, "out of memory");
    }
    if (c->state != C_CLOSING && c->carry.len > MAX_FRAME + 16)
        conn_fail(c, E_PROTOCOL, "over %u bytes of input carried", MAX_FRAME);
    if (c->state != C_CLOSING)
        conn_flush(c);
    if (w->batch && b->o.requests) {
        uint64_t total = atomic_fetch_add(&b->total, w->batch) + w->batch;
        if (total >= b->o.requests && !atomic_exchange(&b->want_stop, 1)) {
            /* the run ends now for everyone: later completions fall outside the window */
            uint64_t end = atomic_load(&b->t_end);
            while (w->now < end && !atomic_compare_exchange_weak(&b->t_end, &end, w->now))
                ;
        }
    }
}

static void on_connect(uv_connect_t *req, int status) {
    conn_t *c = req->data;
    bench_t *b = c->w->b;
    if (c->state != C_CONNECTING)
        return; /* closed meanwhile (ECANCELED) */
    if (status < 0) {
        conn_fail(c, E_CONNECT, "cannot connect to %s: %s", b->o.hostport, uv_strerror(status));
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    int r = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (r == 0)
        r = obuf_append(&c->out, b->upgrade, b->upgrade_len) < 0 ? UV_ENOMEM : 0;
    if (r < 0) {
        conn_fail(c, E_CONNECT, "cannot start reading: %s", uv_strerror(r));
        return;
    }
    c->state = C_UPGRADING;
    conn_flush(c);
}

static void conn_start(worker_t *w, conn_t *c, size_t global_index) {
    bench_t *b = w->b;
    const opts_t *o = &b->o;
    int r;
    c->w = w;
    c->next_id = c->unstamped = 1;
    c->state = C_CONNECTING;
    w->connecting++;
    c->slots = calloc(o->pipeline, sizeof *c->slots);
    if (!c->slots) {
        conn_fail(c, E_CONNECT, "out of memory");
        return;
    }
    r = uv_tcp_init_ex(&w->loop, &c->tcp, o->addr.ss_family);
    if (r < 0) {
        conn_fail(c, E_CONNECT, "cannot create a socket: %s (file descriptor limit?)",
                  uv_strerror(r));
        return;
    }
    c->handle_open = 1;
    c->tcp.data = c;
    if (o->src_count) {
        struct sockaddr_in src = {.sin_family = AF_INET};
        uv_os_fd_t fd;
        int one = 1;
        src.sin_addr.s_addr = htonl(o->src_first + (uint32_t)(global_index % o->src_count));
        /* the port is chosen at connect time, per destination: many more than 28k fit */
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
            setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        r = uv_tcp_bind(&c->tcp, (const struct sockaddr *)&src, 0);
        if (r < 0) {
            conn_fail(c, E_CONNECT, "cannot bind to source %s: %s", inet_ntoa(src.sin_addr),
                      uv_strerror(r));
            return;
        }
    }
    c->creq.data = c;
    r = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&o->addr, on_connect);
    if (r < 0)
        conn_fail(c, E_CONNECT, "cannot connect to %s: %s", o->hostport, uv_strerror(r));
}

/* Start connections while the in-flight cap and the rate allow. */
static void start_more(worker_t *w) {
    size_t threads = w->b->o.threads;
    while (w->next_start < w->n && w->connecting < w->cap_inflight && !w->stopping) {
        if (w->rate > 0) {
            if (w->tokens < 1)
                return;
            w->tokens -= 1;
        }
        size_t i = w->next_start++;
        /* global index: connection i of thread t is t + i * threads */
        conn_start(w, &w->conns[i], w->idx + i * threads);
    }
}

static void on_pace(uv_timer_t *t) {
    worker_t *w = t->data;
    uint64_t now = now_ns();
    w->tokens += w->rate * (double)(now - w->pace_last) / 1e9;
    if (w->tokens > w->rate / 50 + 1)
        w->tokens = w->rate / 50 + 1; /* at most 20 ms of burst */
    w->pace_last = now;
    start_more(w);
    if (w->next_start >= w->n)
        uv_timer_stop(t);
}

/* Every second while running: a request older than --timeout-ms fails its connection. */
static void on_tick(uv_timer_t *t) {
    worker_t *w = t->data;
    uint64_t now = now_ns(), limit = w->b->o.timeout_ms * 1000000ull;
    for (size_t i = 0; i < w->n; i++) {
        conn_t *c = &w->conns[i];
        if (c->state != C_READY || c->inflight == 0)
            continue;
        for (uint64_t k = 0; k < w->b->o.pipeline; k++) {
            uint64_t s = c->slots[k].sent_ns;
            if (s > 1 && now - s > limit) {
                conn_fail(c, E_TIMEOUT, "no completion within %llu ms",
                          (unsigned long long)w->b->o.timeout_ms);
                break;
            }
        }
    }
}

/* Idle mode: a SignalR Ping on every connection so the server's client timeout keeps them. */
static void on_ping(uv_timer_t *t) {
    worker_t *w = t->data;
    static const char json_ping[] = "{\"type\":6}\x1e", mp_ping[] = "\x02\x91\x06";
    int mp = w->b->o.msgpack;
    for (size_t i = 0; i < w->n; i++) {
        conn_t *c = &w->conns[i];
        if (c->state != C_READY)
            continue;
        if (out_frame(c, mp ? 2 : 1, mp ? mp_ping : json_ping, mp ? 3 : 11) < 0)
            conn_fail(c, E_PROTOCOL, "out of memory");
        else
            conn_flush(c);
    }
}

static void worker_run(worker_t *w) {
    bench_t *b = w->b;
    w->running = 1;
    w->m_start = atomic_load(&b->m_start);
    w->t_end = atomic_load(&b->t_end);
    uv_timer_stop(&w->pace);
    /* what did not come up in the connect phase fails now */
    for (size_t i = 0; i < w->n; i++) {
        conn_t *c = &w->conns[i];
        if (i >= w->next_start) {
            w->st.err[E_CONNECT]++;
            if (!w->first_err[0])
                snprintf(w->first_err, sizeof w->first_err,
                         "connections not started within the connect phase (raise "
                         "--connect-rate)");
        } else if (c->state == C_CONNECTING) {
            conn_fail(c, E_CONNECT, "connect timed out");
        } else if (c->state > C_CONNECTING && c->state < C_READY) {
            conn_fail(c, E_HANDSHAKE, "the upgrade or handshake timed out");
        }
    }
    w->next_start = w->n;
    if (atomic_load(&b->phase) == PH_STOP)
        return; /* stopped before the run (a signal, nothing up): no load */
    if (b->o.idle) {
        uv_timer_start(&w->ping, on_ping, KEEPALIVE_MS, KEEPALIVE_MS);
        return;
    }
    uv_timer_start(&w->tick, on_tick, 1000, 1000);
    for (size_t i = 0; i < w->n; i++) {
        conn_t *c = &w->conns[i];
        for (uint64_t d = 0; d < b->o.pipeline && c->state == C_READY; d++)
            if (send_request(c) < 0)
                conn_fail(c, E_PROTOCOL, "cannot queue a request");
        if (c->state == C_READY)
            conn_flush(c);
    }
}

static void worker_stop(worker_t *w) {
    static const unsigned char close_frame[] = {0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8}; /* 1000 */
    w->stopping = 1;
    uv_timer_stop(&w->pace);
    uv_timer_stop(&w->tick);
    uv_timer_stop(&w->ping);
    for (size_t i = 0; i < w->n; i++) {
        conn_t *c = &w->conns[i];
        if (c->state == C_IDLE || c->state == C_CLOSING)
            continue;
        if (c->state == C_READY) {
            /* a polite close frame when the socket takes it at once; never waited for */
            uv_buf_t buf = uv_buf_init((char *)close_frame, sizeof close_frame);
            if (!c->writing)
                uv_try_write((uv_stream_t *)&c->tcp, &buf, 1);
            atomic_fetch_sub(&w->b->up, 1);
        }
        conn_close(c);
    }
    uv_close((uv_handle_t *)&w->wake, NULL);
    uv_close((uv_handle_t *)&w->pace, NULL);
    uv_close((uv_handle_t *)&w->tick, NULL);
    uv_close((uv_handle_t *)&w->ping, NULL);
}

static void on_wake(uv_async_t *a) {
    worker_t *w = a->data;
    pthread_mutex_lock(&w->b->phase_lock);
    int ph = atomic_load(&w->b->phase);
    pthread_mutex_unlock(&w->b->phase_lock);
    if (w->stopping)
        return;
    if (ph >= PH_RUN && !w->running && !atomic_load(&w->b->interrupted))
        worker_run(w);
    if (ph == PH_STOP)
        worker_stop(w);
}

static void *worker_main(void *arg) {
    worker_t *w = arg;
    w->pace_last = now_ns();
    if (w->rate > 0) {
        w->tokens = 1;
        uv_timer_start(&w->pace, on_pace, 5, 5);
    }
    start_more(w);
    on_wake(&w->wake); /* the phase may have moved before the loop ran */
    uv_run(&w->loop, UV_RUN_DEFAULT);
    return NULL;
}

/* ---- options ---- */

static const char bench_usage[] =
    "usage: balancehub bench [--mode rr|idle] [--url URL] [--connections N] [--pipeline D]\n"
    "                        [--threads N] [--duration-s S] [--warmup-s W] [--requests R]\n"
    "                        [--source-count K | --sources A-B] [--format text|json] ...\n"
    "\n"
    "A load generator for the hub: N WebSocket connections (no negotiate; the API key as a\n"
    "Bearer header), each keeping D GetBalances in flight (rr: request/response), or opened,\n"
    "subscribed with one GetBalances and held (idle). Reports throughput, the latency\n"
    "histogram (p50/p90/p99/p99.9/max, from write to Completion) and errors by kind.\n"
    "Every run stops by itself within warmup + duration + 30 s; SIGINT stops it early.\n"
    "\n"
    "options:\n"
    "  --url URL            http://HOST:PORT of the server (env BALANCEHUB_URL, default\n"
    "                       " DEFAULT_URL "); a path in the URL is the hub path\n"
    "  --hub-path PATH      hub path (default " DEFAULT_HUB_PATH ")\n"
    "  --api-key-file FILE  read the API key from FILE; otherwise from env BALANCEHUB_API_KEY\n"
    "  --client-id ID       the GetBalances argument (default user-123)\n"
    "  --protocol P         json (default) or messagepack\n"
    "  --mode M             rr (default) or idle\n"
    "  --connections N      connections (default 1)\n"
    "  --pipeline D         rr: requests in flight per connection (default 1)\n"
    "  --threads N          client threads, one event loop each (default 1)\n"
    "  --duration-s S       measured seconds (default 5, at most 600); idle: hold time\n"
    "  --warmup-s W         rr: unmeasured seconds first (default 1)\n"
    "  --requests R         rr: stop once R requests completed in the measured window\n"
    "  --timeout-ms N       rr: a request unanswered this long fails its connection\n"
    "                       (default 10000)\n"
    "  --source-count K     bind sockets round-robin to 127.0.0.1 .. 127.0.0.K (K <= 254),\n"
    "                       so more than ~28k connections fit (loopback targets only)\n"
    "  --sources A-B        the same with the 127/8 address range A..B\n"
    "  --connect-rate R     connects started per second (default: unlimited, with at most\n"
    "                       512 in flight); the connect phase lasts at most 20 s\n"
    "  --hold-file PATH     idle: create PATH once all connections are up\n"
    "  --format F           text (default) or json (one object on stdout)\n"
    "\n"
    "The server must allow the load, e.g. balancehub serve --max-connections-per-key 1000000\n"
    "--rate-limit 1000000000 --rate-burst 1000000000 --max-connections 1000000.\n"
    "Exit status: 0 run done (errors are in the report), 1 no connection came up or the run\n"
    "failed, 2 usage error.\n";

static int parse_u64(const char *s, const char *name, uint64_t lo, uint64_t hi, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*s == '-' || *s == '\0' || *end || errno || v < lo || v > hi) {
        bh_cli_error("%s must be a whole number from %llu to %llu, not '%s'", name,
                     (unsigned long long)lo, (unsigned long long)hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_secs(const char *s, const char *name, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*s == '\0' || *end || errno || !isfinite(v) || v < lo || v > hi) {
        bh_cli_error("%s must be a number from %g to %g, not '%s'", name, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_v4(const char *s, size_t n, uint32_t *out) {
    char tmp[32];
    struct in_addr a;
    if (n >= sizeof tmp)
        return -1;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    if (inet_pton(AF_INET, tmp, &a) != 1)
        return -1;
    *out = ntohl(a.s_addr);
    return 0;
}

static int parse_sources(const char *s, opts_t *o) {
    const char *dash = strchr(s, '-');
    uint32_t a, z;
    if (parse_v4(s, dash ? (size_t)(dash - s) : strlen(s), &a) < 0 ||
        parse_v4(dash ? dash + 1 : s, strlen(dash ? dash + 1 : s), &z) < 0 || z < a) {
        bh_cli_error("--sources must be an IPv4 range A.B.C.D-A.B.C.E, not '%s'", s);
        return -1;
    }
    if ((a >> 24) != 127 || (z >> 24) != 127) {
        bh_cli_error("--sources must be loopback addresses (127.0.0.0/8), not '%s'", s);
        return -1;
    }
    o->src_first = a;
    o->src_count = z - a + 1;
    return 0;
}

/* http://HOST[:PORT][/PATH] into host, port and (when given) the hub path. */
static int parse_url(const char *url, opts_t *o, char *host, size_t host_cap, char *port,
                     int *path_given) {
    const char *p, *slash, *colon;
    if (strncmp(url, "https://", 8) == 0) {
        bh_cli_error("bench speaks plain http:// only (no TLS), not '%s'", url);
        return -1;
    }
    if (strncmp(url, "http://", 7) != 0) {
        bh_cli_error("--url must be http://HOST:PORT, not '%s'", url);
        return -1;
    }
    p = url + 7;
    slash = strchr(p, '/');
    size_t hl = slash ? (size_t)(slash - p) : strlen(p);
    if (hl == 0 || hl >= sizeof o->hostport) {
        bh_cli_error("--url has no host: '%s'", url);
        return -1;
    }
    memcpy(o->hostport, p, hl);
    o->hostport[hl] = '\0';
    const char *hp = o->hostport;
    if (hp[0] == '[') { /* [v6]:port */
        const char *rb = strchr(hp, ']');
        if (!rb || (size_t)(rb - hp - 1) >= host_cap)
            goto bad;
        memcpy(host, hp + 1, (size_t)(rb - hp - 1));
        host[rb - hp - 1] = '\0';
        colon = rb[1] == ':' ? rb + 1 : NULL;
        if (rb[1] && !colon)
            goto bad;
    } else {
        colon = strrchr(hp, ':');
        size_t l = colon ? (size_t)(colon - hp) : strlen(hp);
        if (l == 0 || l >= host_cap)
            goto bad;
        memcpy(host, hp, l);
        host[l] = '\0';
    }
    snprintf(port, 8, "%s", colon ? colon + 1 : "80");
    if (!*port || strspn(port, "0123456789") != strlen(port) || atoi(port) < 1 ||
        atoi(port) > 65535 || (colon && strlen(colon + 1) > 5))
        goto bad;
    *path_given = slash && strcmp(slash, "/") != 0;
    if (*path_given)
        snprintf(o->hub_path, sizeof o->hub_path, "%s", slash);
    return 0;
bad:
    bh_cli_error("--url must be http://HOST:PORT, not '%s'", url);
    return -1;
}

static int parse_opts(int argc, char **argv, opts_t *o) {
    static const struct option lopts[] = {
        {"url", required_argument, 0, 'u'},
        {"hub-path", required_argument, 0, 'H'},
        {"api-key-file", required_argument, 0, 'k'},
        {"client-id", required_argument, 0, 'c'},
        {"protocol", required_argument, 0, 'P'},
        {"mode", required_argument, 0, 'm'},
        {"connections", required_argument, 0, 'n'},
        {"pipeline", required_argument, 0, 'd'},
        {"threads", required_argument, 0, 't'},
        {"duration-s", required_argument, 0, 's'},
        {"warmup-s", required_argument, 0, 'w'},
        {"requests", required_argument, 0, 'r'},
        {"timeout-ms", required_argument, 0, 'T'},
        {"source-count", required_argument, 0, 'K'},
        {"sources", required_argument, 0, 'S'},
        {"connect-rate", required_argument, 0, 'R'},
        {"hold-file", required_argument, 0, 'F'},
        {"format", required_argument, 0, 'f'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *url = NULL, *hub_path = NULL, *key_file = NULL, *key;
    char host[256], port[8];
    uint64_t k;
    int c, path_given = 0, have_sources = 0;

    memset(o, 0, sizeof *o);
    o->client_id = "user-123";
    o->connections = o->pipeline = o->threads = 1;
    o->duration_s = 5;
    o->warmup_s = 1;
    o->timeout_ms = 10000;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
        int r = 0;
        switch (c) {
        case 'u':
            url = optarg;
            break;
        case 'H':
            hub_path = optarg;
            break;
        case 'k':
            key_file = optarg;
            break;
        case 'c':
            o->client_id = optarg;
            break;
        case 'P':
            if (strcmp(optarg, "json") && strcmp(optarg, "messagepack")) {
                bh_cli_error("--protocol must be json or messagepack, not '%s'", optarg);
                return BH_EXIT_USAGE;
            }
            o->msgpack = strcmp(optarg, "messagepack") == 0;
            break;
        case 'm':
            if (strcmp(optarg, "rr") && strcmp(optarg, "idle")) {
                bh_cli_error("--mode must be rr or idle, not '%s'", optarg);
                return BH_EXIT_USAGE;
            }
            o->idle = strcmp(optarg, "idle") == 0;
            break;
        case 'n':
            r = parse_u64(optarg, "--connections", 1, 10000000, &o->connections);
            break;
        case 'd':
            r = parse_u64(optarg, "--pipeline", 1, 65536, &o->pipeline);
            break;
        case 't':
            r = parse_u64(optarg, "--threads", 1, 256, &o->threads);
            break;
        case 's':
            r = parse_secs(optarg, "--duration-s", 0.001, 600, &o->duration_s);
            break;
        case 'w':
            r = parse_secs(optarg, "--warmup-s", 0, 600, &o->warmup_s);
            break;
        case 'r':
            r = parse_u64(optarg, "--requests", 1, UINT64_MAX / 2, &o->requests);
            break;
        case 'T':
            r = parse_u64(optarg, "--timeout-ms", 1, 600000, &o->timeout_ms);
            break;
        case 'K':
            r = parse_u64(optarg, "--source-count", 1, 254, &k);
            if (r == 0) {
                o->src_first = 0x7f000001u;
                o->src_count = (uint32_t)k;
                have_sources++;
            }
            break;
        case 'S':
            r = parse_sources(optarg, o);
            have_sources++;
            break;
        case 'R':
            r = parse_secs(optarg, "--connect-rate", 0, 1e7, &o->connect_rate);
            break;
        case 'F':
            o->hold_file = optarg;
            break;
        case 'f':
            if (strcmp(optarg, "text") && strcmp(optarg, "json")) {
                bh_cli_error("--format must be text or json, not '%s'", optarg);
                return BH_EXIT_USAGE;
            }
            o->json = strcmp(optarg, "json") == 0;
            break;
        case 'h':
            fputs(bench_usage, stdout);
            return -1;
        default:
            bh_cli_error("unknown or incomplete option '%s': run 'balancehub bench --help'",
                         argv[optind - 1]);
            return BH_EXIT_USAGE;
        }
        if (r < 0)
            return BH_EXIT_USAGE;
    }
    if (optind < argc) {
        bh_cli_error("bench takes no arguments (the API key comes from BALANCEHUB_API_KEY or "
                     "--api-key-file), not '%s'",
                     argv[optind]);
        return BH_EXIT_USAGE;
    }
    if (have_sources > 1) {
        bh_cli_error("use --source-count or --sources, not both");
        return BH_EXIT_USAGE;
    }
    size_t cl = strlen(o->client_id);
    if (cl == 0 || cl > 200) {
        bh_cli_error("--client-id must be 1 to 200 bytes");
        return BH_EXIT_USAGE;
    }
    if (o->idle && o->requests) {
        bh_cli_error("--requests is for --mode rr");
        return BH_EXIT_USAGE;
    }
    if (o->hold_file && !o->idle) {
        bh_cli_error("--hold-file is for --mode idle");
        return BH_EXIT_USAGE;
    }
    if (o->idle)
        o->pipeline = 1; /* the one subscribing GetBalances */
    if (o->threads > o->connections)
        o->threads = o->connections;

    snprintf(o->hub_path, sizeof o->hub_path, "%s", DEFAULT_HUB_PATH);
    if (!url || !*url)
        url = getenv("BALANCEHUB_URL");
    if (!url || !*url)
        url = DEFAULT_URL;
    if (parse_url(url, o, host, sizeof host, port, &path_given) < 0)
        return BH_EXIT_USAGE;
    if (hub_path) {
        if (hub_path[0] != '/' || strlen(hub_path) >= sizeof o->hub_path) {
            bh_cli_error("--hub-path must start with '/', not '%s'", hub_path);
            return BH_EXIT_USAGE;
        }
        snprintf(o->hub_path, sizeof o->hub_path, "%s", hub_path);
    }
    for (const char *q = o->hub_path; *q; q++)
        if ((unsigned char)*q <= ' ' || *q == 0x7f) {
            bh_cli_error("the hub path must not contain spaces or control characters");
            return BH_EXIT_USAGE;
        }

    if (key_file) {
        int r = bh_cli_read_secret(key_file, "API key", o->key, sizeof o->key);
        if (r != BH_EXIT_OK)
            return r;
    } else if ((key = getenv("BALANCEHUB_API_KEY")) && *key) {
        snprintf(o->key, sizeof o->key, "%s", key);
    } else {
        bh_cli_error("no API key: set BALANCEHUB_API_KEY or use --api-key-file FILE");
        return BH_EXIT_USAGE;
    }
    for (const char *q = o->key; *q; q++)
        if ((unsigned char)*q < ' ' || *q == 0x7f) {
            bh_cli_error("the API key contains control characters");
            return BH_EXIT_USAGE;
        }

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    int gr = getaddrinfo(host, port, &hints, &ai);
    if (gr != 0 || !ai) {
        bh_cli_error("cannot resolve %s: %s", host, gai_strerror(gr));
        return BH_EXIT_RUNTIME;
    }
    /* prefer IPv4 (source binding is IPv4) */
    const struct addrinfo *pick = ai;
    for (const struct addrinfo *a = ai; a; a = a->ai_next)
        if (a->ai_family == AF_INET) {
            pick = a;
            break;
        }
    memcpy(&o->addr, pick->ai_addr, pick->ai_addrlen);
    freeaddrinfo(ai);
    if (o->src_count) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&o->addr;
        if (o->addr.ss_family != AF_INET || (ntohl(sin->sin_addr.s_addr) >> 24) != 127) {
            bh_cli_error("--source-count and --sources need a loopback server (127.0.0.0/8)");
            return BH_EXIT_USAGE;
        }
    }
    return BH_EXIT_OK;
}

/* ---- set-up, run, report ---- */

static int prepare(bench_t *b) {
    opts_t *o = &b->o;
    unsigned char md[SHA_DIGEST_LENGTH];
    bh_buf_t t;
    int r;

    bh_buf_init(&t, 0);
    r = bh_buf_printf(&t,
                      "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: "
                      "Upgrade\r\nSec-WebSocket-Key: " WS_KEY
                      "\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n"
                      "User-Agent: balancehub-bench\r\n\r\n",
                      o->hub_path, o->hostport, o->key);
    if (r < 0)
        goto fail;
    b->upgrade = t.data;
    b->upgrade_len = t.len;
    SHA1((const unsigned char *)WS_KEY WS_GUID, strlen(WS_KEY WS_GUID), md);
    EVP_EncodeBlock((unsigned char *)b->accept, md, SHA_DIGEST_LENGTH);
    snprintf(b->handshake, sizeof b->handshake, "{\"protocol\":\"%s\",\"version\":1}\x1e",
             o->msgpack ? "messagepack" : "json");

    if (!o->msgpack) {
        bh_buf_t post;
        bh_buf_init(&post, sizeof b->inv_post - 1);
        r = bh_buf_appends(&post, "\",\"target\":\"GetBalances\",\"arguments\":[");
        if (r == 0)
            r = bh_json_write_str(&post, o->client_id, strlen(o->client_id));
        if (r == 0)
            r = bh_buf_appends(&post, "]}\x1e");
        if (r == 0) {
            memcpy(b->inv_post, post.data, post.len);
            b->inv_post_len = post.len;
        }
        bh_buf_free(&post);
        if (r < 0)
            goto fail;
        strcpy(b->inv_pre, "{\"type\":1,\"invocationId\":\"");
    } else {
        unsigned char *p = (unsigned char *)b->inv_post;
        size_t cl = strlen(o->client_id);
        memcpy(b->inv_pre, "\x95\x01\x80", 3);
        *p++ = 0xab;
        memcpy(p, "GetBalances", 11);
        p += 11;
        *p++ = 0x91;
        p += mp_str_head(p, cl);
        memcpy(p, o->client_id, cl);
        p += cl;
        b->inv_post_len = (size_t)(p - (unsigned char *)b->inv_post);
    }
    b->inv_pre_len = strlen(b->inv_pre);
    if (o->msgpack)
        b->inv_pre_len = 3;
    return 0;
fail:
    bh_buf_free(&t);
    b->upgrade = NULL;
    bh_cli_error("cannot build the requests: %s", bh_strerror(r));
    return -1;
}

static void raise_nofile(const opts_t *o) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        o->connections + 64 > rl.rlim_cur)
        bh_cli_error("warning: %llu connections need more file descriptors than the limit "
                     "(%llu; raise the hard limit, ulimit -Hn): the rest will fail",
                     (unsigned long long)o->connections, (unsigned long long)rl.rlim_cur);
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void sleep_until(uint64_t t) {
    struct timespec ts = {.tv_sec = (time_t)(t / NS), .tv_nsec = (long)(t % NS)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR && !got_signal)
        ;
}

/* Sleep until t, a signal (it interrupts the sleep), or (when watch) a worker asking to stop
 * after --requests or no connection left: polled every 5 ms with --requests, else every 100 ms,
 * so the coordinator stays off the CPU it is measuring. */
static void wait_until(bench_t *b, uint64_t t, int watch) {
    uint64_t step = watch && b->o.requests ? 5000000 : 100000000;
    for (;;) {
        uint64_t now = now_ns();
        if (now >= t || got_signal ||
            (watch && (atomic_load(&b->want_stop) || atomic_load(&b->up) == 0)))
            return;
        sleep_until(t - now > step ? now + step : t);
    }
}

/* Move to phase ph and wake every worker. Under phase_lock, so a worker that reads PH_STOP
 * under it knows no uv_async_send will follow and may close its async handle. */
static void set_phase(bench_t *b, int ph) {
    pthread_mutex_lock(&b->phase_lock);
    atomic_store(&b->phase, ph);
    for (uint64_t i = 0; i < b->o.threads; i++)
        if (b->workers[i]->thread_started)
            uv_async_send(&b->workers[i]->wake);
    pthread_mutex_unlock(&b->phase_lock);
}

static void print_idle_line(const bench_t *b, uint64_t n) {
    /* JSON output keeps stdout to the one report object */
    FILE *f = b->o.json ? stderr : stdout;
    fprintf(f, "idle: %llu connected\n", (unsigned long long)n);
    fflush(f);
}

static void report(const bench_t *b, const stats_t *st, const bh_hist_t *h, uint64_t connected,
                   double secs, double cpu) {
    const opts_t *o = &b->o;
    double rps = secs > 0 ? (double)st->completed / secs : 0;
    double us[6] = {
        (double)bh_hist_percentile(h, 50) / 1e3,  (double)bh_hist_percentile(h, 90) / 1e3,
        (double)bh_hist_percentile(h, 99) / 1e3,  (double)bh_hist_percentile(h, 99.9) / 1e3,
        (double)bh_hist_percentile(h, 100) / 1e3, bh_hist_mean(h) / 1e3};
    const char *mode = o->idle ? "idle" : "rr";
    if (o->json) {
        printf("{\"mode\":\"%s\",\"protocol\":\"%s\",\"connections\":%llu,\"connected\":%llu,"
               "\"pipeline\":%llu,\"threads\":%llu,\"duration_s\":%.6f,\"completed\":%llu,"
               "\"events\":%llu,\"errors\":{",
               mode, o->msgpack ? "messagepack" : "json", (unsigned long long)o->connections,
               (unsigned long long)connected, (unsigned long long)o->pipeline,
               (unsigned long long)o->threads, secs, (unsigned long long)st->completed,
               (unsigned long long)st->events);
        for (int k = 0; k < E_KINDS; k++)
            printf("%s\"%s\":%llu", k ? "," : "", err_names[k], (unsigned long long)st->err[k]);
        printf("},\"throughput_rps\":%.1f,\"latency_us\":{\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,"
               "\"p999\":%.1f,\"max\":%.1f,\"mean\":%.1f},\"client_cpu_s\":%.3f}\n",
               rps, us[0], us[1], us[2], us[3], us[4], us[5], cpu);
        return;
    }
    printf("balancehub bench: %s, %s protocol, %llu connection%s (%llu connected), pipeline "
           "%llu, %llu thread%s\n",
           mode, o->msgpack ? "messagepack" : "json", (unsigned long long)o->connections,
           o->connections == 1 ? "" : "s", (unsigned long long)connected,
           (unsigned long long)o->pipeline, (unsigned long long)o->threads,
           o->threads == 1 ? "" : "s");
    printf("  measured      %.2f s\n", secs);
    if (!o->idle) {
        printf("  completed     %llu (events %llu)\n", (unsigned long long)st->completed,
               (unsigned long long)st->events);
        printf("  throughput    %.0f requests/s\n", rps);
        printf("  latency (us)  p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  mean %.1f\n",
               us[0], us[1], us[2], us[3], us[4], us[5]);
    } else {
        printf("  events        %llu\n", (unsigned long long)st->events);
    }
    printf("  errors       ");
    for (int k = 0; k < E_KINDS; k++)
        printf(" %s %llu", err_names[k], (unsigned long long)st->err[k]);
    printf("\n  client cpu    %.2f s (%.0f%% of one core)\n", cpu, secs > 0 ? 100 * cpu / secs : 0);
    if (o->idle)
        printf("idle: %llu connected\n", (unsigned long long)connected);
}

static int create_hold_file(const char *path, uint64_t n) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        bh_cli_error("cannot create the hold file %s: %s", path, strerror(errno));
        return -1;
    }
    char line[32];
    int l = snprintf(line, sizeof line, "%llu\n", (unsigned long long)n);
    ssize_t w = write(fd, line, (size_t)l);
    close(fd);
    return w == l ? 0 : -1;
}

static void free_bench(bench_t *b) {
    if (b->workers) {
        for (uint64_t i = 0; i < b->o.threads; i++) {
            worker_t *w = b->workers[i];
            if (!w)
                continue;
            if (w->conns && !w->thread_started) {
                /* its loop never ran: close its handles here */
                worker_stop(w);
                uv_run(&w->loop, UV_RUN_DEFAULT);
            }
            if (w->conns)
                uv_loop_close(&w->loop);
            free(w->conns);
            free(w);
        }
        free(b->workers);
    }
    free(b->upgrade);
    pthread_mutex_destroy(&b->phase_lock);
    free(b);
}

static int init_worker(bench_t *b, uint64_t i) {
    const opts_t *o = &b->o;
    worker_t *w = calloc(1, sizeof *w);
    if (!w)
        return BH_ENOMEM;
    b->workers[i] = w;
    w->b = b;
    w->idx = (size_t)i;
    w->n = (size_t)(o->connections / o->threads + (i < o->connections % o->threads));
    w->cap_inflight = MAX_CONNECT_INFLIGHT / o->threads;
    if (w->cap_inflight < 1)
        w->cap_inflight = 1;
    w->rate = o->connect_rate / (double)o->threads;
    w->rng = 0x9e3779b9u ^ (uint32_t)(i * 2654435761u) ^ (uint32_t)now_ns();
    if (!w->rng)
        w->rng = 1;
    bh_hist_init(&w->hist);
    w->conns = calloc(w->n ? w->n : 1, sizeof *w->conns);
    if (!w->conns || uv_loop_init(&w->loop) < 0) {
        free(w->conns);
        w->conns = NULL;
        return BH_ENOMEM;
    }
    for (size_t k = 0; k < w->n; k++)
        w->conns[k].w = w;
    uv_async_init(&w->loop, &w->wake, on_wake);
    uv_timer_init(&w->loop, &w->pace);
    uv_timer_init(&w->loop, &w->tick);
    uv_timer_init(&w->loop, &w->ping);
    w->wake.data = w->pace.data = w->tick.data = w->ping.data = w;
    return 0;
}

int bh_cli_bench(int argc, char **argv) {
    bench_t *b = calloc(1, sizeof *b);
    int rc = BH_EXIT_RUNTIME;
    uint64_t i;

    if (!b) {
        bh_cli_error("out of memory");
        return BH_EXIT_RUNTIME;
    }
    pthread_mutex_init(&b->phase_lock, NULL);
    int pr = parse_opts(argc, argv, &b->o);
    if (pr != BH_EXIT_OK) {
        free_bench(b);
        return pr < 0 ? BH_EXIT_OK : pr;
    }
    const opts_t *o = &b->o;
    if (prepare(b) < 0)
        goto done;
    raise_nofile(o);
    signal(SIGPIPE, SIG_IGN);
    b->workers = calloc(o->threads, sizeof *b->workers);
    if (!b->workers)
        goto oom;
    for (i = 0; i < o->threads; i++)
        if (init_worker(b, i) < 0)
            goto oom;

    uint64_t t0 = now_ns();
    uint64_t hard = t0 + (uint64_t)((o->warmup_s + o->duration_s) * 1e9) + TEARDOWN_NS;
    atomic_store(&b->t_end, UINT64_MAX);
    atomic_store(&b->m_start, UINT64_MAX);

    struct sigaction sa = {.sa_handler = on_signal}, old_int, old_term;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    sigset_t block, prev;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, &prev); /* the workers inherit it: signals come here */
    for (i = 0; i < o->threads; i++) {
        worker_t *w = b->workers[i];
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            bh_cli_error("cannot start a thread");
            break;
        }
        w->thread_started = 1;
    }
    pthread_sigmask(SIG_SETMASK, &prev, NULL);
    int threads_ok = i == o->threads;

    /* connect phase: until every connection is up or failed, 20 s, or a signal */
    uint64_t connect_end = t0 + CONNECT_PHASE_NS;
    while (threads_ok && !got_signal && atomic_load(&b->settled) < o->connections) {
        uint64_t now = now_ns();
        if (now >= connect_end)
            break;
        wait_until(b, now + 2000000 < connect_end ? now + 2000000 : connect_end, 0);
    }

    uint64_t up = atomic_load(&b->up), connected = up;
    uint64_t m_start = 0, t_end = 0;
    double cpu0 = 0, cpu1 = 0;
    if (threads_ok && !got_signal && up > 0) {
        uint64_t go = now_ns();
        m_start = o->idle ? go : go + (uint64_t)(o->warmup_s * 1e9);
        t_end = m_start + (uint64_t)(o->duration_s * 1e9);
        atomic_store(&b->m_start, m_start);
        atomic_store(&b->t_end, t_end);
        set_phase(b, PH_RUN);
        if (o->idle) {
            print_idle_line(b, up);
            if (o->hold_file && create_hold_file(o->hold_file, up) < 0)
                got_signal = -1; /* cannot tell the driver: stop */
        }
        wait_until(b, m_start, 0);
        cpu0 = cpu_seconds();
        wait_until(b, t_end, 1);
        uint64_t now = now_ns();
        /* the window ends now when cut short; a worker may have lowered it already */
        uint64_t end = atomic_load(&b->t_end);
        while (now < end && !atomic_compare_exchange_weak(&b->t_end, &end, now))
            ;
        t_end = atomic_load(&b->t_end);
        cpu1 = cpu_seconds();
        connected = atomic_load(&b->up);
    }
    if (got_signal && !m_start)
        atomic_store(&b->interrupted, 1);
    set_phase(b, PH_STOP);

    /* teardown, bounded by the hard deadline */
    int joined = 1;
    for (i = 0; i < o->threads; i++) {
        worker_t *w = b->workers[i];
        if (!w->thread_started)
            continue;
        uint64_t lim = hard > now_ns() + NS ? hard : now_ns() + NS;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t rt = (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec + (lim - now_ns());
        ts.tv_sec = (time_t)(rt / NS);
        ts.tv_nsec = (long)(rt % NS);
        if (pthread_timedjoin_np(w->thread, NULL, &ts) != 0) {
            joined = 0;
            break;
        }
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (!joined) {
        bh_cli_error("the client threads did not stop within the deadline");
        fflush(NULL);
        _exit(BH_EXIT_RUNTIME);
    }

    stats_t st = {0};
    bh_hist_t *h = malloc(sizeof *h);
    if (!h)
        goto oom;
    bh_hist_init(h);
    const char *first = "";
    for (i = 0; i < o->threads; i++) {
        worker_t *w = b->workers[i];
        st.completed += w->st.completed;
        st.events += w->st.events;
        for (int k = 0; k < E_KINDS; k++)
            st.err[k] += w->st.err[k];
        if (!first[0])
            first = w->first_err;
        bh_hist_merge(h, &w->hist);
    }
    if (!threads_ok) {
        rc = BH_EXIT_RUNTIME;
    } else if (up == 0 && !got_signal) {
        bh_cli_error("no connection came up (%llu of %llu failed): %s",
                     (unsigned long long)(st.err[E_CONNECT] + st.err[E_HANDSHAKE]),
                     (unsigned long long)o->connections,
                     first[0] ? first : "the connect phase timed out");
        rc = BH_EXIT_RUNTIME;
    } else {
        double secs = t_end > m_start ? (double)(t_end - m_start) / 1e9 : 0;
        report(b, &st, h, connected, secs, cpu1 - cpu0);
        if (first[0] && !o->json)
            printf("  first error   %s\n", first);
        rc = fflush(stdout) == 0 ? BH_EXIT_OK : BH_EXIT_RUNTIME;
    }
    free(h);
    goto done;
oom:
    bh_cli_error("out of memory");
    rc = BH_EXIT_RUNTIME;
done:
    free_bench(b);
    return rc;
}
