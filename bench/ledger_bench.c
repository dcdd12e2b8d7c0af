/* ledger_bench: measures a running balancehub's durable admin-op throughput (1 and N keep-alive
 * HTTP clients, each 200 answered only after the group commit) and the update fan-out latency
 * (admin ack vs. the WebSocket update of the same change). Standalone: POSIX sockets, epoll,
 * one pthread for the subscriber, no project code. Every loop is bounded in time and in count. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF_CAP (256 * 1024)  /* per connection receive buffer */
#define REC_CAP (1024 * 1024) /* SignalR text records being reassembled */
#define IO_TIMEOUT_MS 5000    /* any single wait for the server */
#define DRAIN_MS 10000        /* answers still outstanding when a window ends */
#define MAX_CLIENTS 1024
#define NS_PER_MS 1000000ull

typedef struct {
    char host[64];
    int port;
    char token[512];
    char run[40]; /* prefix that makes this run's op ids unique */
} target_t;

typedef struct {
    int fd;
    size_t len;
    char *buf; /* BUF_CAP bytes */
} conn_t;

typedef struct {
    int status;
    int close_after; /* Connection: close */
    size_t body_off, body_len, total;
} http_res_t;

typedef struct {
    double seconds;  /* measured window */
    uint64_t ops;    /* answered 200 inside the window */
    uint64_t errors; /* non-200 answers */
    double p50_us, p99_us, max_us;
    int capped;                                /* stopped by the op count bound */
    double server_cpu_us_per_op, server_cores; /* with --server-pid; 0 when unknown */
} tp_result_t;

typedef struct {
    uint64_t ops;
    double ack_p50, ack_p99;         /* t_ack - t_send */
    double ev_ack_p50, ev_ack_p99;   /* t_event - t_ack, signed */
    double ev_send_p50, ev_send_p99; /* t_event - t_send */
    uint64_t event_first;            /* ops whose update arrived before their ack */
} fan_result_t;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int server_pid; /* --server-pid: its CPU time is sampled around each window */

/* CPU time (user + system, every thread) of the server in ns, or 0 when unknown. */
static uint64_t server_cpu_ns(void) {
    char path[64], buf[1024];
    if (server_pid <= 0)
        return 0;
    snprintf(path, sizeof path, "/proc/%d/stat", server_pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    unsigned long long ut, st;
    if (!p ||
        sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return 0;
    long hz = sysconf(_SC_CLK_TCK);
    return hz > 0 ? (ut + st) * (1000000000ull / (unsigned long long)hz) : 0;
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("ledger_bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void *xmalloc(size_t n) {
    void *p = calloc(1, n);
    if (!p)
        die("out of memory (%zu bytes)", n);
    return p;
}

/* ------------------------------------------------------------------------------------------ */
/* sockets */

static int tcp_connect(const target_t *t) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)t->port)};
    if (inet_pton(AF_INET, t->host, &sa.sin_addr) != 1)
        die("bad IPv4 address %s", t->host);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    int one = 1;
    struct timeval tv = {.tv_sec = IO_TIMEOUT_MS / 1000};
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        die("connect %s:%d: %s", t->host, t->port, strerror(errno));
    return fd;
}

static void conn_open(conn_t *c, const target_t *t) {
    if (!c->buf)
        c->buf = xmalloc(BUF_CAP);
    c->fd = tcp_connect(t);
    c->len = 0;
}

static void conn_close(conn_t *c) {
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->len = 0;
}

/* Write everything, waiting (bounded) when a non-blocking socket is full. */
static void send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            if (poll(&pfd, 1, IO_TIMEOUT_MS) <= 0)
                die("send: server not reading for %d ms", IO_TIMEOUT_MS);
            continue;
        }
        die("send: %s", w < 0 ? strerror(errno) : "no progress");
    }
}

/* One recv into the buffer: bytes read, 0 when the peer closed, -1 when nothing is there yet
 * (non-blocking). Fatal on errors and on a full buffer. */
static ssize_t conn_fill(conn_t *c, int dontwait) {
    if (c->len >= BUF_CAP)
        die("a server message exceeds %d bytes", BUF_CAP);
    for (;;) {
        ssize_t r = recv(c->fd, c->buf + c->len, BUF_CAP - c->len, dontwait ? MSG_DONTWAIT : 0);
        if (r > 0) {
            c->len += (size_t)r;
            return r;
        }
        if (r == 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (dontwait)
                return -1;
            die("recv: no answer from the server within %d ms", IO_TIMEOUT_MS);
        }
        die("recv: %s", strerror(errno));
    }
}

static void conn_consume(conn_t *c, size_t n) {
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

/* ------------------------------------------------------------------------------------------ */
/* HTTP/1.1 */

/* 1 when a whole response (head + Content-Length body) is at the front of b, 0 when more bytes
 * are needed, -1 when it is not HTTP. */
static int http_parse(const char *b, size_t len, http_res_t *r) {
    const char *end = memmem(b, len, "\r\n\r\n", 4);
    if (!end)
        return len > 65536 ? -1 : 0;
    size_t head = (size_t)(end - b) + 4;
    if (head < 16 || memcmp(b, "HTTP/1.", 7) != 0 || b[8] != ' ')
        return -1;
    memset(r, 0, sizeof *r);
    r->status = (b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0');
    size_t clen = 0;
    const char *line = (const char *)memchr(b, '\n', head) + 1;
    while (line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end + 2 - line));
        size_t ll = (size_t)(eol - line);
        if (ll > 15 && strncasecmp(line, "content-length:", 15) == 0)
            clen = strtoull(line + 15, NULL, 10);
        if (ll > 11 && strncasecmp(line, "connection:", 11) == 0 &&
            memmem(line, ll, "close", 5) != NULL)
            r->close_after = 1;
        line = eol + 1;
    }
    if (clen > BUF_CAP)
        return -1;
    if (len < head + clen)
        return 0;
    r->body_off = head;
    r->body_len = clen;
    r->total = head + clen;
    return 1;
}

static size_t build_request(char *dst, size_t cap, const target_t *t, const char *method,
                            const char *path, const char *body) {
    int n;
    if (body)
        n = snprintf(dst, cap,
                     "%s %s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     method, path, t->host, t->port, t->token, strlen(body), body);
    else
        n = snprintf(dst, cap, "%s %s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n\r\n",
                     method, path, t->host, t->port, t->token);
    if (n < 0 || (size_t)n >= cap)
        die("request too large");
    return (size_t)n;
}

/* A blocking request on a keep-alive connection (reopened when the server closed it). Returns
 * the status; the body is copied NUL-terminated into out. */
static int http_call(const target_t *t, conn_t *c, const char *method, const char *path,
                     const char *body, char *out, size_t outcap) {
    char req[8192];
    size_t n = build_request(req, sizeof req, t, method, path, body);
    if (c->fd < 0)
        conn_open(c, t);
    send_all(c->fd, req, n);
    http_res_t r;
    int p;
    while ((p = http_parse(c->buf, c->len, &r)) == 0)
        if (conn_fill(c, 0) == 0)
            die("%s %s: the server closed the connection", method, path);
    if (p < 0)
        die("%s %s: malformed HTTP response", method, path);
    size_t bl = r.body_len < outcap - 1 ? r.body_len : outcap - 1;
    memcpy(out, c->buf + r.body_off, bl);
    out[bl] = 0;
    conn_consume(c, r.total);
    if (r.close_after || r.status >= 400)
        conn_close(c);
    return r.status;
}

/* The unsigned integer after key ("\"sequence\":") in s, or UINT64_MAX. */
static uint64_t json_u64(const char *s, const char *key) {
    const char *p = strstr(s, key);
    if (!p)
        return UINT64_MAX;
    p += strlen(key);
    while (*p == ' ')
        p++;
    if (*p < '0' || *p > '9')
        return UINT64_MAX;
    return strtoull(p, NULL, 10);
}

/* The string value after key ("\"apiKey\":\"") copied into out; 0 on success. */
static int json_str(const char *s, const char *key, char *out, size_t cap) {
    const char *p = strstr(s, key);
    if (!p)
        return -1;
    p += strlen(key);
    const char *q = strchr(p, '"');
    if (!q || (size_t)(q - p) >= cap)
        return -1;
    memcpy(out, p, (size_t)(q - p));
    out[q - p] = 0;
    return 0;
}

static void deposit_body(char *dst, size_t cap, const target_t *t, const char *tag, unsigned client,
                         uint64_t n) {
    snprintf(dst, cap,
             "{\"opId\":\"%s-%s-%u-%" PRIu64 "\",\"op\":\"deposit\",\"asset\":\"BTC\","
             "\"amount\":\"0.000001\"}",
             t->run, tag, client, n);
}

static void create_user(const target_t *t, conn_t *c, const char *user) {
    char body[512], out[65536];
    snprintf(body, sizeof body,
             "{\"userId\":\"%s\",\"baseCurrency\":\"EUR\",\"totalMaxExposure\":\"0\","
             "\"opId\":\"create-%s\"}",
             user, user);
    int st = http_call(t, c, "POST", "/admin/users", body, out, sizeof out);
    if (st != 201 && st != 409)
        die("POST /admin/users %s: status %d %s", user, st, out);
}

/* ------------------------------------------------------------------------------------------ */
/* statistics */

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile index of p (0 < p <= 1) among n sorted values. */
static size_t rank(size_t n, double p) {
    size_t k = (size_t)(p * (double)n + 0.999999);
    return k == 0 ? 0 : (k > n ? n - 1 : k - 1);
}

static double pct_u64(uint64_t *v, size_t n, double p) {
    return n ? (double)v[rank(n, p)] / 1000.0 : 0;
}

static double pct_i64(int64_t *v, size_t n, double p) {
    return n ? (double)v[rank(n, p)] / 1000.0 : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* (a) durable ops/s: nclients keep-alive connections, each sending deposits back to back */

typedef struct {
    conn_t c;
    unsigned idx;
    uint64_t t_send, n;
    int busy;
    char path[128];
} client_t;

static void client_send(const target_t *t, client_t *cl, const char *tag) {
    char body[512], req[2048];
    deposit_body(body, sizeof body, t, tag, cl->idx, cl->n++);
    size_t len = build_request(req, sizeof req, t, "POST", cl->path, body);
    cl->t_send = now_ns();
    send_all(cl->c.fd, req, len);
    cl->busy = 1;
}

static void run_throughput(const target_t *t, unsigned nclients, unsigned nusers,
                           uint64_t warmup_ms, uint64_t dur_ms, size_t max_ops, const char *tag,
                           tp_result_t *res) {
    client_t *cls = xmalloc(nclients * sizeof *cls);
    uint64_t *lat = xmalloc(max_ops * sizeof *lat);
    size_t nlat = 0;
    uint64_t sent = 0, outstanding = 0;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1: %s", strerror(errno));
    for (unsigned i = 0; i < nclients; i++) {
        client_t *cl = &cls[i];
        cl->idx = i;
        snprintf(cl->path, sizeof cl->path, "/admin/users/bench-c%u/ops", i % nusers);
        conn_open(&cl->c, t);
        fcntl(cl->c.fd, F_SETFL, fcntl(cl->c.fd, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = cl};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, cl->c.fd, &ev) != 0)
            die("epoll_ctl: %s", strerror(errno));
    }
    uint64_t t0 = now_ns();
    uint64_t m_start = t0 + warmup_ms * NS_PER_MS, m_end = m_start + dur_ms * NS_PER_MS;
    uint64_t hard_end = m_end + DRAIN_MS * NS_PER_MS, last_in_window = m_start;
    /* The op count bound covers the warm-up too. */
    uint64_t send_cap = max_ops + (uint64_t)max_ops / 2;
    for (unsigned i = 0; i < nclients; i++, sent++, outstanding++)
        client_send(t, &cls[i], tag);
    memset(res, 0, sizeof *res);
    uint64_t cpu0 = 0, cpu1 = 0, cpu0_t = 0, cpu1_t = 0;
    while (outstanding > 0) {
        uint64_t now = now_ns();
        if (!cpu0_t && now >= m_start) {
            cpu0 = server_cpu_ns();
            cpu0_t = now;
        }
        if (!cpu1_t && now >= m_end) {
            cpu1 = server_cpu_ns();
            cpu1_t = now;
        }
        if (now >= hard_end)
            die("%s: %" PRIu64 " answers still missing %d ms after the window", tag, outstanding,
                DRAIN_MS);
        struct epoll_event evs[64];
        int ne = epoll_wait(ep, evs, 64, 100);
        if (ne < 0 && errno != EINTR)
            die("epoll_wait: %s", strerror(errno));
        for (int e = 0; e < ne; e++) {
            client_t *cl = evs[e].data.ptr;
            ssize_t r;
            while ((r = conn_fill(&cl->c, 1)) > 0)
                ;
            if (r == 0) {
                /* The peer closed: fine only once its last answer is in and nothing is asked. */
                http_res_t last;
                if (cl->busy && http_parse(cl->c.buf, cl->c.len, &last) != 1)
                    die("%s: server closed client %u's connection", tag, cl->idx);
                epoll_ctl(ep, EPOLL_CTL_DEL, cl->c.fd, NULL);
            }
            http_res_t hr;
            int p;
            while ((p = http_parse(cl->c.buf, cl->c.len, &hr)) == 1) {
                uint64_t t_ack = now_ns();
                if (!cl->busy)
                    die("%s: an answer nobody asked for", tag);
                cl->busy = 0;
                outstanding--;
                if (hr.status != 200) {
                    res->errors++;
                    fprintf(stderr, "ledger_bench: %s: status %d: %.*s\n", tag, hr.status,
                            (int)(hr.body_len > 300 ? 300 : hr.body_len), cl->c.buf + hr.body_off);
                    die("%s: a deposit was not answered 200", tag);
                }
                conn_consume(&cl->c, hr.total);
                if (cl->t_send >= m_start && t_ack <= m_end && nlat < max_ops) {
                    lat[nlat++] = t_ack - cl->t_send;
                    last_in_window = t_ack;
                }
                if (r != 0 && t_ack < m_end && sent < send_cap && nlat < max_ops) {
                    client_send(t, cl, tag);
                    sent++;
                    outstanding++;
                }
            }
            if (p < 0)
                die("%s: malformed HTTP response", tag);
        }
    }
    if (!cpu1_t) { /* the last answer came in right at the window's end */
        cpu1 = server_cpu_ns();
        cpu1_t = now_ns();
    }
    res->capped = nlat >= max_ops || sent >= send_cap;
    uint64_t w_end = res->capped ? last_in_window : m_end;
    res->seconds = (double)(w_end - m_start) / 1e9;
    res->ops = nlat;
    qsort(lat, nlat, sizeof *lat, cmp_u64);
    res->p50_us = pct_u64(lat, nlat, 0.50);
    res->p99_us = pct_u64(lat, nlat, 0.99);
    res->max_us = nlat ? (double)lat[nlat - 1] / 1000.0 : 0;
    if (cpu0 && cpu1 && cpu1_t > cpu0_t && nlat && !res->capped) {
        res->server_cpu_us_per_op = (double)(cpu1 - cpu0) / 1000.0 / (double)nlat;
        res->server_cores = (double)(cpu1 - cpu0) / (double)(cpu1_t - cpu0_t);
    }
    for (unsigned i = 0; i < nclients; i++) {
        conn_close(&cls[i].c);
        free(cls[i].c.buf);
    }
    close(ep);
    free(lat);
    free(cls);
}

/* ------------------------------------------------------------------------------------------ */
/* (b) fan-out: a minimal SignalR JSON client over WebSockets, and a driver of admin deposits */

typedef struct {
    conn_t c;
    char *rec; /* reassembled text not yet split at 0x1E */
    size_t rlen;
} ws_t;

static void ws_send(int fd, int opcode, const char *p, size_t n) {
    unsigned char frame[16 + 4096];
    size_t h = 0;
    if (n > 4096)
        die("WebSocket message too large");
    frame[h++] = (unsigned char)(0x80 | opcode);
    if (n < 126) {
        frame[h++] = (unsigned char)(0x80 | n);
    } else {
        frame[h++] = 0x80 | 126;
        frame[h++] = (unsigned char)(n >> 8);
        frame[h++] = (unsigned char)n;
    }
    uint32_t m = (uint32_t)rand() ^ (uint32_t)now_ns();
    unsigned char mask[4] = {(unsigned char)m, (unsigned char)(m >> 8), (unsigned char)(m >> 16),
                             (unsigned char)(m >> 24)};
    memcpy(frame + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < n; i++)
        frame[h + i] = (unsigned char)p[i] ^ mask[i & 3];
    send_all(fd, (const char *)frame, h + n);
}

/* Moves whole frames from the socket buffer into ws->rec (text and continuation payloads),
 * answers pings; fatal on a close frame. */
static void ws_frames(ws_t *w) {
    for (;;) {
        const unsigned char *b = (const unsigned char *)w->c.buf;
        size_t len = w->c.len;
        if (len < 2)
            return;
        int op = b[0] & 0x0f;
        if (b[1] & 0x80)
            die("the server sent a masked frame");
        uint64_t plen = b[1] & 0x7f;
        size_t off = 2;
        if (plen == 126) {
            if (len < 4)
                return;
            plen = (uint64_t)b[2] << 8 | b[3];
            off = 4;
        } else if (plen == 127) {
            if (len < 10)
                return;
            plen = 0;
            for (int i = 0; i < 8; i++)
                plen = plen << 8 | b[2 + i];
            off = 10;
        }
        if (plen > BUF_CAP - off)
            die("WebSocket frame of %" PRIu64 " bytes", plen);
        if (len < off + plen)
            return;
        const char *pl = w->c.buf + off;
        if (op == 0x9) {
            ws_send(w->c.fd, 0xA, pl, (size_t)plen);
        } else if (op == 0x8) {
            die("the server closed the WebSocket (code %d)",
                plen >= 2 ? ((unsigned char)pl[0] << 8 | (unsigned char)pl[1]) : 0);
        } else if (op == 0x0 || op == 0x1) {
            if (w->rlen + plen >= REC_CAP)
                die("SignalR record larger than %d bytes", REC_CAP);
            memcpy(w->rec + w->rlen, pl, (size_t)plen);
            w->rlen += (size_t)plen;
        } else if (op != 0xA) {
            die("unexpected WebSocket opcode %d", op);
        }
        conn_consume(&w->c, off + (size_t)plen);
    }
}

/* Next complete SignalR record (NUL-terminated copy in out), 1; 0 when none is complete. */
static int ws_record(ws_t *w, char *out, size_t cap) {
    char *rs = memchr(w->rec, 0x1e, w->rlen);
    if (!rs)
        return 0;
    size_t n = (size_t)(rs - w->rec);
    if (n >= cap)
        die("SignalR record too large");
    memcpy(out, w->rec, n);
    out[n] = 0;
    memmove(w->rec, rs + 1, w->rlen - n - 1);
    w->rlen -= n + 1;
    return 1;
}

/* Blocking: the next record (skipping pings, type 6). */
static void ws_next_record(ws_t *w, char *out, size_t cap) {
    uint64_t deadline = now_ns() + IO_TIMEOUT_MS * NS_PER_MS;
    for (;;) {
        ws_frames(w);
        while (ws_record(w, out, cap))
            if (!strstr(out, "\"type\":6"))
                return;
        if (now_ns() > deadline)
            die("no SignalR message within %d ms", IO_TIMEOUT_MS);
        if (conn_fill(&w->c, 0) == 0)
            die("the server closed the WebSocket connection");
    }
}

/* Upgrade, JSON handshake, GetBalances: returns the snapshot's sequence. */
static uint64_t ws_subscribe(const target_t *t, ws_t *w, const char *key, const char *client_id) {
    char req[2048], rec[65536];
    w->rec = xmalloc(REC_CAP);
    conn_open(&w->c, t);
    int n = snprintf(req, sizeof req,
                     "GET /ExecutionLiveServer/v1?access_token=%s HTTP/1.1\r\nHost: %s:%d\r\n"
                     "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: YmFsYW5jZWh1Yi1iZW5jaA==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     key, t->host, t->port);
    send_all(w->c.fd, req, (size_t)n);
    http_res_t hr;
    int p;
    while ((p = http_parse(w->c.buf, w->c.len, &hr)) == 0)
        if (conn_fill(&w->c, 0) == 0)
            die("WebSocket upgrade: connection closed");
    if (p < 0 || hr.status != 101)
        die("WebSocket upgrade answered %d", p < 0 ? -1 : hr.status);
    conn_consume(&w->c, hr.total);

    static const char hs[] = "{\"protocol\":\"json\",\"version\":1}\x1e";
    ws_send(w->c.fd, 0x1, hs, sizeof hs - 1);
    ws_next_record(w, rec, sizeof rec);
    if (strcmp(rec, "{}") != 0)
        die("SignalR handshake answered %s", rec);

    n = snprintf(req, sizeof req,
                 "{\"type\":1,\"invocationId\":\"1\",\"target\":\"GetBalances\","
                 "\"arguments\":[\"%s\"]}\x1e",
                 client_id);
    ws_send(w->c.fd, 0x1, req, (size_t)n);
    uint64_t seq = UINT64_MAX;
    for (int i = 0; i < 16; i++) {
        ws_next_record(w, rec, sizeof rec);
        if (strstr(rec, "account.balances.snapshot"))
            seq = json_u64(rec, "\"sequence\":");
        if (strstr(rec, "\"type\":3")) {
            if (seq == UINT64_MAX)
                die("GetBalances completed without a snapshot: %s", rec);
            return seq;
        }
    }
    die("GetBalances: no completion");
    return 0;
}

/* The subscriber: its own thread blocks in recv and stamps each update the moment its bytes
 * arrive, independently of the driver waiting for the admin answer. */
typedef struct {
    ws_t *w;
    uint64_t base; /* snapshot sequence; update base+i+1 is op i */
    size_t cap;
    uint64_t *t_ev; /* receipt time of op i's update */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t last; /* last update sequence seen */
    int stop;
} fan_reader_t;

static void *fan_reader(void *arg) {
    fan_reader_t *fr = arg;
    char rec[65536];
    for (;;) {
        if (fr->w->c.len >= BUF_CAP)
            die("fan-out: a server message exceeds %d bytes", BUF_CAP);
        ssize_t r = recv(fr->w->c.fd, fr->w->c.buf + fr->w->c.len, BUF_CAP - fr->w->c.len, 0);
        uint64_t t = now_ns();
        pthread_mutex_lock(&fr->mu);
        int stop = fr->stop;
        pthread_mutex_unlock(&fr->mu);
        if (stop)
            return NULL;
        if (r < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
            continue; /* SO_RCVTIMEO: the driver bounds the wait */
        if (r <= 0)
            die("fan-out: the WebSocket connection failed: %s", r ? strerror(errno) : "closed");
        fr->w->c.len += (size_t)r;
        ws_frames(fr->w);
        while (ws_record(fr->w, rec, sizeof rec)) {
            if (strstr(rec, "\"type\":7"))
                die("fan-out: the server sent Close: %s", rec);
            if (!strstr(rec, "account.balances.update"))
                continue;
            uint64_t seq = json_u64(rec, "\"sequence\":");
            pthread_mutex_lock(&fr->mu);
            if (seq != fr->last + 1 || seq <= fr->base || seq - fr->base > fr->cap)
                die("fan-out: update with sequence %" PRIu64 " after %" PRIu64, seq, fr->last);
            fr->t_ev[seq - fr->base - 1] = t;
            fr->last = seq;
            pthread_cond_signal(&fr->cv);
            pthread_mutex_unlock(&fr->mu);
        }
    }
}

static void run_fanout(const target_t *t, const target_t *hub, uint64_t dur_ms, size_t max_ops,
                       fan_result_t *res) {
    char out[65536];
    conn_t admin = {.fd = -1};
    int st = http_call(t, &admin, "POST", "/admin/users/bench-fan/keys", "{}", out, sizeof out);
    char key[256];
    if (st != 201 || json_str(out, "\"apiKey\":\"", key, sizeof key) != 0)
        die("POST /admin/users/bench-fan/keys: status %d %s", st, out);

    ws_t w = {.c = {.fd = -1}};
    fan_reader_t fr = {.w = &w, .cap = max_ops};
    fr.base = fr.last = ws_subscribe(hub, &w, key, "bench-fanout");
    fr.t_ev = xmalloc(max_ops * sizeof *fr.t_ev);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&fr.cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&fr.mu, NULL);
    pthread_t th;
    if (pthread_create(&th, NULL, fan_reader, &fr) != 0)
        die("pthread_create failed");
    if (admin.fd < 0)
        conn_open(&admin, t);

    uint64_t *ack = xmalloc(max_ops * sizeof *ack);
    int64_t *ev_ack = xmalloc(max_ops * sizeof *ev_ack);
    int64_t *ev_send = xmalloc(max_ops * sizeof *ev_send);
    memset(res, 0, sizeof *res);
    uint64_t end = now_ns() + dur_ms * NS_PER_MS;
    size_t n = 0;
    while (n < max_ops && now_ns() < end) {
        char body[512], req[2048];
        deposit_body(body, sizeof body, t, "fan", 0, n);
        size_t len = build_request(req, sizeof req, t, "POST", "/admin/users/bench-fan/ops", body);
        uint64_t want = fr.base + n + 1;
        uint64_t t_send = now_ns();
        send_all(admin.fd, req, len);
        http_res_t hr;
        int p;
        while ((p = http_parse(admin.buf, admin.len, &hr)) == 0)
            if (conn_fill(&admin, 0) == 0)
                die("fan-out: the server closed the admin connection");
        uint64_t t_ack = now_ns();
        if (p < 0)
            die("fan-out: malformed HTTP response");
        size_t bl = hr.body_len < sizeof out - 1 ? hr.body_len : sizeof out - 1;
        memcpy(out, admin.buf + hr.body_off, bl);
        out[bl] = 0;
        conn_consume(&admin, hr.total);
        if (hr.status != 200)
            die("fan-out: deposit answered %d: %s", hr.status, out);
        uint64_t got = json_u64(out, "\"sequence\":");
        if (got != want)
            die("fan-out: deposit got sequence %" PRIu64 ", expected %" PRIu64, got, want);

        struct timespec dl;
        uint64_t dl_ns = t_send + IO_TIMEOUT_MS * NS_PER_MS;
        dl.tv_sec = (time_t)(dl_ns / 1000000000ull);
        dl.tv_nsec = (long)(dl_ns % 1000000000ull);
        pthread_mutex_lock(&fr.mu);
        while (fr.last < want)
            if (pthread_cond_timedwait(&fr.cv, &fr.mu, &dl) != 0 && fr.last < want)
                die("fan-out: no update for sequence %" PRIu64 " within %d ms", want,
                    IO_TIMEOUT_MS);
        uint64_t t_ev = fr.t_ev[n];
        pthread_mutex_unlock(&fr.mu);

        ack[n] = t_ack - t_send;
        ev_ack[n] = (int64_t)t_ev - (int64_t)t_ack;
        ev_send[n] = (int64_t)(t_ev - t_send);
        if (t_ev < t_ack)
            res->event_first++;
        n++;
    }
    pthread_mutex_lock(&fr.mu);
    fr.stop = 1;
    pthread_mutex_unlock(&fr.mu);
    shutdown(w.c.fd, SHUT_RDWR); /* wakes the reader */
    pthread_join(th, NULL);
    pthread_cond_destroy(&fr.cv);
    pthread_mutex_destroy(&fr.mu);

    res->ops = n;
    qsort(ack, n, sizeof *ack, cmp_u64);
    qsort(ev_ack, n, sizeof *ev_ack, cmp_i64);
    qsort(ev_send, n, sizeof *ev_send, cmp_i64);
    res->ack_p50 = pct_u64(ack, n, 0.50);
    res->ack_p99 = pct_u64(ack, n, 0.99);
    res->ev_ack_p50 = pct_i64(ev_ack, n, 0.50);
    res->ev_ack_p99 = pct_i64(ev_ack, n, 0.99);
    res->ev_send_p50 = pct_i64(ev_send, n, 0.50);
    res->ev_send_p99 = pct_i64(ev_send, n, 0.99);

    conn_close(&w.c);
    conn_close(&admin);
    free(w.c.buf);
    free(w.rec);
    free(admin.buf);
    free(fr.t_ev);
    free(ack);
    free(ev_ack);
    free(ev_send);
}

/* ------------------------------------------------------------------------------------------ */
/* main */

static const char usage[] =
    "usage: ledger_bench --url http://127.0.0.1:PORT [OPTIONS]\n"
    "\n"
    "Against a running balancehub with the admin API enabled:\n"
    "  seq     durable deposits/s with 1 keep-alive client, latency p50/p99\n"
    "  conc    the same with --clients concurrent keep-alive clients\n"
    "  fanout  one WebSocket SignalR subscriber; deposits one at a time; update receipt vs.\n"
    "          admin answer (t_event - t_ack, signed) and vs. send (t_event - t_send)\n"
    "\n"
    "  --url URL               server (http only): its admin API\n"
    "  --hub-url URL           the hub's listener when not --url (serve --admin-listen)\n"
    "  --admin-token-file F    admin token (default: env BALANCEHUB_ADMIN_TOKEN)\n"
    "  --scenarios LIST        comma-separated subset of seq,conc,fanout (default all)\n"
    "  --duration-ms N         measured window of each scenario (default 3000)\n"
    "  --warmup-ms N           unmeasured warm-up before seq and conc (default 500)\n"
    "  --clients N             concurrent clients for conc (default 64)\n"
    "  --max-ops N             op count bound per scenario (default 4000000)\n"
    "  --results FILE          also write key=value results there\n"
    "  --server-pid PID        sample the server's CPU time (Linux /proc) around each window\n"
    "  -h, --help              this help\n";

static void print_cpu(const tp_result_t *r) {
    if (r->server_cores > 0)
        printf("        server CPU %.1f us per op, %.2f cores busy on average\n",
               r->server_cpu_us_per_op, r->server_cores);
}

static void parse_url(const char *url, target_t *t) {
    const char *p = url;
    if (strncmp(p, "http://", 7) != 0)
        die("--url must start with http://");
    p += 7;
    const char *colon = strchr(p, ':');
    if (!colon || (size_t)(colon - p) >= sizeof t->host)
        die("--url needs HOST:PORT");
    memcpy(t->host, p, (size_t)(colon - p));
    t->host[colon - p] = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (port <= 0 || port > 65535 || (*end && *end != '/'))
        die("bad port in --url");
    t->port = (int)port;
}

static void read_token(const char *file, target_t *t) {
    const char *env = getenv("BALANCEHUB_ADMIN_TOKEN");
    if (file) {
        FILE *f = fopen(file, "r");
        if (!f)
            die("cannot read %s: %s", file, strerror(errno));
        size_t n = fread(t->token, 1, sizeof t->token - 1, f);
        fclose(f);
        t->token[n] = 0;
    } else if (env) {
        snprintf(t->token, sizeof t->token, "%s", env);
    }
    size_t n = strlen(t->token);
    while (n && (t->token[n - 1] == '\n' || t->token[n - 1] == '\r' || t->token[n - 1] == ' '))
        t->token[--n] = 0;
    if (!n)
        die("no admin token: --admin-token-file F or env BALANCEHUB_ADMIN_TOKEN");
}

static uint64_t num_arg(const char *s, const char *name) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v == 0)
        die("%s needs a positive integer", name);
    return v;
}

int main(int argc, char **argv) {
    static const struct option opts[] = {{"url", required_argument, NULL, 'u'},
                                         {"hub-url", required_argument, NULL, 'H'},
                                         {"admin-token-file", required_argument, NULL, 't'},
                                         {"scenarios", required_argument, NULL, 's'},
                                         {"duration-ms", required_argument, NULL, 'd'},
                                         {"warmup-ms", required_argument, NULL, 'w'},
                                         {"clients", required_argument, NULL, 'c'},
                                         {"max-ops", required_argument, NULL, 'm'},
                                         {"results", required_argument, NULL, 'r'},
                                         {"server-pid", required_argument, NULL, 'p'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *url = NULL, *hub_url = NULL, *token_file = NULL, *scen = "seq,conc,fanout",
               *results = NULL;
    uint64_t dur = 3000, warm = 500, clients = 64, max_ops = 4000000;
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case 'u':
            url = optarg;
            break;
        case 'H':
            hub_url = optarg;
            break;
        case 't':
            token_file = optarg;
            break;
        case 's':
            scen = optarg;
            break;
        case 'd':
            dur = num_arg(optarg, "--duration-ms");
            break;
        case 'w':
            warm = strcmp(optarg, "0") == 0 ? 0 : num_arg(optarg, "--warmup-ms");
            break;
        case 'c':
            clients = num_arg(optarg, "--clients");
            break;
        case 'm':
            max_ops = num_arg(optarg, "--max-ops");
            break;
        case 'r':
            results = optarg;
            break;
        case 'p':
            server_pid = (int)num_arg(optarg, "--server-pid");
            break;
        case 'h':
            fputs(usage, stdout);
            return 0;
        default:
            fputs(usage, stderr);
            return 2;
        }
    }
    if (!url || optind != argc) {
        fputs(usage, stderr);
        return 2;
    }
    if (clients > MAX_CLIENTS)
        die("--clients at most %d", MAX_CLIENTS);
    if (dur > 600000 || warm > 600000)
        die("--duration-ms and --warmup-ms at most 600000");
    target_t t = {0};
    parse_url(url, &t);
    target_t hub = t;
    if (hub_url)
        parse_url(hub_url, &hub);
    read_token(token_file, &t);
    snprintf(t.run, sizeof t.run, "b%lx%x", (unsigned long)time(NULL), (unsigned)getpid());
    srand((unsigned)now_ns());
    int do_seq = strstr(scen, "seq") != NULL, do_conc = strstr(scen, "conc") != NULL;
    int do_fan = strstr(scen, "fanout") != NULL;

    FILE *rf = NULL;
    if (results && !(rf = fopen(results, "w")))
        die("cannot write %s: %s", results, strerror(errno));

    /* One user per concurrent client, and one for the fan-out. */
    conn_t setup = {.fd = -1};
    unsigned nusers = (unsigned)clients;
    char user[64];
    for (unsigned i = 0; i < nusers; i++) {
        snprintf(user, sizeof user, "bench-c%u", i);
        create_user(&t, &setup, user);
    }
    create_user(&t, &setup, "bench-fan");
    conn_close(&setup);
    free(setup.buf);

    tp_result_t r;
    if (do_seq) {
        run_throughput(&t, 1, nusers, warm, dur, (size_t)max_ops, "seq", &r);
        printf("seq:    1 client   %9.0f durable ops/s  (%" PRIu64 " ops in %.2f s%s)  "
               "latency p50 %.1f us  p99 %.1f us  max %.1f us\n",
               r.ops / r.seconds, r.ops, r.seconds, r.capped ? ", op bound hit" : "", r.p50_us,
               r.p99_us, r.max_us);
        print_cpu(&r);
        if (rf)
            fprintf(rf,
                    "seq_ops_per_s=%.0f\nseq_ops=%" PRIu64 "\nseq_seconds=%.3f\nseq_p50_us=%.1f\n"
                    "seq_p99_us=%.1f\nseq_max_us=%.1f\nseq_server_cpu_us_per_op=%.1f\n"
                    "seq_server_cores=%.2f\n",
                    r.ops / r.seconds, r.ops, r.seconds, r.p50_us, r.p99_us, r.max_us,
                    r.server_cpu_us_per_op, r.server_cores);
    }
    if (do_conc) {
        run_throughput(&t, (unsigned)clients, nusers, warm, dur, (size_t)max_ops, "conc", &r);
        printf("conc: %3u clients  %9.0f durable ops/s  (%" PRIu64 " ops in %.2f s%s)  "
               "latency p50 %.1f us  p99 %.1f us  max %.1f us\n",
               (unsigned)clients, r.ops / r.seconds, r.ops, r.seconds,
               r.capped ? ", op bound hit" : "", r.p50_us, r.p99_us, r.max_us);
        print_cpu(&r);
        if (rf)
            fprintf(rf,
                    "conc_clients=%u\nconc_ops_per_s=%.0f\nconc_ops=%" PRIu64
                    "\nconc_seconds=%.3f\nconc_p50_us=%.1f\nconc_p99_us=%.1f\nconc_max_us=%.1f\n"
                    "conc_server_cpu_us_per_op=%.1f\nconc_server_cores=%.2f\n",
                    (unsigned)clients, r.ops / r.seconds, r.ops, r.seconds, r.p50_us, r.p99_us,
                    r.max_us, r.server_cpu_us_per_op, r.server_cores);
    }
    if (do_fan) {
        fan_result_t f;
        run_fanout(&t, &hub, dur, (size_t)(max_ops < 1000000 ? max_ops : 1000000), &f);
        printf("fanout: %" PRIu64 " ops one at a time: event-ack p50 %.1f us p99 %.1f us; "
               "event-send p50 %.1f us p99 %.1f us; ack-send p50 %.1f us p99 %.1f us; "
               "update before ack in %" PRIu64 " ops\n",
               f.ops, f.ev_ack_p50, f.ev_ack_p99, f.ev_send_p50, f.ev_send_p99, f.ack_p50,
               f.ack_p99, f.event_first);
        if (rf)
            fprintf(rf,
                    "fan_ops=%" PRIu64 "\nfan_event_minus_ack_p50_us=%.1f\n"
                    "fan_event_minus_ack_p99_us=%.1f\nfan_event_minus_send_p50_us=%.1f\n"
                    "fan_event_minus_send_p99_us=%.1f\nfan_ack_p50_us=%.1f\nfan_ack_p99_us=%.1f\n"
                    "fan_event_before_ack=%" PRIu64 "\n",
                    f.ops, f.ev_ack_p50, f.ev_ack_p99, f.ev_send_p50, f.ev_send_p99, f.ack_p50,
                    f.ack_p99, f.event_first);
    }
    if (rf && fclose(rf) != 0)
        die("cannot write %s", results);
    return 0;
}
