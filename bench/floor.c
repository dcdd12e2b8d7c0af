/* floor: the loopback TCP floor under the GetBalances benchmark. A forked server process answers
 * every fixed-size request with one fixed-size response (the sizes of a WebSocket-framed SignalR
 * GetBalances invocation and its event + completion frames); the client keeps D requests in flight
 * on one connection and prints one JSON object shaped like `balancehub bench --format json`.
 * Standalone (POSIX sockets, no project code); every wait is bounded in time. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_PIPELINE                                                                               \
    256 /* so that requests and answers in flight always fit the socket buffers                    \
         */
#define MAX_MSG 65536
#define IO_TIMEOUT_MS 5000
/* Latency histogram: log-linear, 64 sub-buckets per power of two of nanoseconds (< 1.6% error). */
#define SUB_BITS 6
#define SUB (1 << SUB_BITS)
#define HIST_N (64 * SUB)

typedef struct {
    size_t req_bytes, resp_bytes;
    int pipeline;
    double duration_s, warmup_s;
    int server_cpu, client_cpu; /* -1: not pinned */
} opts_t;

typedef struct {
    uint64_t counts[HIST_N];
    uint64_t n, max_ns;
    double sum_ns;
} hist_t;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int hist_index(uint64_t v) {
    if (v < SUB)
        return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - SUB_BITS;
    return (shift + 1) * SUB + (int)((v >> shift) & (SUB - 1));
}

/* The middle of a bucket's range, the value reported for percentiles that land in it. */
static double hist_value(int i) {
    if (i < SUB)
        return i;
    int shift = i / SUB - 1;
    uint64_t lo = ((uint64_t)SUB + (uint64_t)(i % SUB)) << shift;
    return (double)lo + (double)(1ull << shift) / 2.0;
}

static void hist_add(hist_t *h, uint64_t v) {
    int i = hist_index(v);
    if (i >= HIST_N)
        i = HIST_N - 1;
    h->counts[i]++;
    h->n++;
    h->sum_ns += (double)v;
    if (v > h->max_ns)
        h->max_ns = v;
}

/* Nearest-rank percentile in microseconds. */
static double hist_pct_us(const hist_t *h, double p) {
    if (h->n == 0)
        return 0;
    uint64_t rank = (uint64_t)ceil(p * (double)h->n), seen = 0;
    if (rank < 1)
        rank = 1;
    for (int i = 0; i < HIST_N; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            double v = hist_value(i);
            return (v > (double)h->max_ns ? (double)h->max_ns : v) / 1000.0;
        }
    }
    return (double)h->max_ns / 1000.0;
}

static void pin(int cpu) {
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) {
        fprintf(stderr, "floor: cannot pin to CPU %d: %s\n", cpu, strerror(errno));
        exit(1);
    }
}

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Waits up to IO_TIMEOUT_MS for fd to become readable (events POLLIN) or writable (POLLOUT). */
static int wait_fd(int fd, short events) {
    struct pollfd p = {.fd = fd, .events = events};
    int r;
    do
        r = poll(&p, 1, IO_TIMEOUT_MS);
    while (r < 0 && errno == EINTR);
    return r > 0 ? 0 : -1;
}

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            if (wait_fd(fd, POLLOUT) != 0)
                return -1;
            continue;
        }
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* The server: one connection; reads whatever arrived, answers every complete request with one
 * response, all answers of one read in one write (what a batching server does at best). */
static int serve(int lfd, const opts_t *o) {
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0)
        return 1;
    nodelay(fd);
    size_t cap = o->resp_bytes * MAX_PIPELINE;
    char *in = malloc(o->req_bytes * MAX_PIPELINE), *out = malloc(cap);
    if (!in || !out)
        return 1;
    memset(out, 'x', cap);
    size_t partial = 0; /* bytes of an incomplete request already read */
    for (;;) {
        ssize_t r = read(fd, in, o->req_bytes * MAX_PIPELINE);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        size_t total = partial + (size_t)r, done = total / o->req_bytes;
        partial = total % o->req_bytes;
        if (done > 0 && write_all(fd, out, done * o->resp_bytes) != 0)
            break;
    }
    close(fd);
    free(in);
    free(out);
    return 0;
}

/* Child CPU seconds (user + system) from /proc/PID/stat. */
static double proc_cpu_s(pid_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long long ut = 0, st = 0;
    /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
     */
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void usage(FILE *f) {
    fprintf(f, "usage: floor [--req-bytes N] [--resp-bytes N] [--pipeline D] [--duration-s S]\n"
               "             [--warmup-s W] [--server-cpu C] [--client-cpu C]\n"
               "Loopback TCP ping-pong of fixed-size messages on one connection, D requests in\n"
               "flight; prints one JSON object (latency percentiles in microseconds).\n");
}

static int parse(int argc, char **argv, opts_t *o) {
    static const struct option lo[] = {
        {"req-bytes", 1, 0, 'q'},  {"resp-bytes", 1, 0, 'r'}, {"pipeline", 1, 0, 'p'},
        {"duration-s", 1, 0, 'd'}, {"warmup-s", 1, 0, 'w'},   {"server-cpu", 1, 0, 's'},
        {"client-cpu", 1, 0, 'c'}, {"help", 0, 0, 'h'},       {0, 0, 0, 0}};
    *o = (opts_t){.req_bytes = 84,
                  .resp_bytes = 629,
                  .pipeline = 1,
                  .duration_s = 2,
                  .warmup_s = 0.5,
                  .server_cpu = -1,
                  .client_cpu = -1};
    int c;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (c) {
        case 'q':
            o->req_bytes = strtoul(optarg, NULL, 10);
            break;
        case 'r':
            o->resp_bytes = strtoul(optarg, NULL, 10);
            break;
        case 'p':
            o->pipeline = atoi(optarg);
            break;
        case 'd':
            o->duration_s = atof(optarg);
            break;
        case 'w':
            o->warmup_s = atof(optarg);
            break;
        case 's':
            o->server_cpu = atoi(optarg);
            break;
        case 'c':
            o->client_cpu = atoi(optarg);
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return -1;
        }
    }
    if (optind != argc || o->req_bytes < 1 || o->req_bytes > MAX_MSG || o->resp_bytes < 1 ||
        o->resp_bytes > MAX_MSG || o->pipeline < 1 || o->pipeline > MAX_PIPELINE ||
        !(o->duration_s > 0 && o->duration_s <= 600) || !(o->warmup_s >= 0 && o->warmup_s <= 60)) {
        usage(stderr);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    opts_t o;
    if (parse(argc, argv, &o) != 0)
        return 2;
    signal(SIGPIPE, SIG_IGN);

    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lfd, 4) != 0 ||
        getsockname(lfd, (struct sockaddr *)&sa, &sl) != 0) {
        perror("floor: listen");
        return 1;
    }
    pid_t child = fork();
    if (child < 0) {
        perror("floor: fork");
        return 1;
    }
    if (child == 0) {
        pin(o.server_cpu);
        alarm((unsigned)(o.duration_s + o.warmup_s) + 30); /* never outlive the client for long */
        _exit(serve(lfd, &o));
    }
    close(lfd);
    pin(o.client_cpu);

    int rc = 1;
    char *req = malloc(o.req_bytes * (size_t)o.pipeline), *in = malloc(1 << 20);
    uint64_t *sent = calloc((size_t)o.pipeline, sizeof *sent); /* FIFO of send times */
    hist_t *h = calloc(1, sizeof *h);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (!req || !in || !sent || !h || fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
        perror("floor: connect");
        goto out;
    }
    nodelay(fd);
    memset(req, 'q', o.req_bytes * (size_t)o.pipeline);

    uint64_t t0 = now_ns(), t_start = t0 + (uint64_t)(o.warmup_s * 1e9),
             t_end = t_start + (uint64_t)(o.duration_s * 1e9);
    size_t head = 0, partial = 0; /* partial: bytes of the next response read */
    uint64_t completed = 0, errors = 0;
    double cpu0 = 0, scpu0 = 0;
    int measuring = 0;
    for (size_t i = 0; i < (size_t)o.pipeline; i++)
        sent[i] = t0;
    if (write_all(fd, req, o.req_bytes * (size_t)o.pipeline) != 0)
        goto out;
    for (;;) {
        uint64_t t = now_ns();
        if (!measuring && t >= t_start) {
            measuring = 1;
            cpu0 = self_cpu_s();
            scpu0 = proc_cpu_s(child);
            memset(h, 0, sizeof *h);
            completed = 0;
        }
        if (t >= t_end)
            break;
        ssize_t r = read(fd, in, 1 << 20);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            errors++;
            fprintf(stderr, "floor: read: %s\n", r == 0 ? "server closed" : strerror(errno));
            goto out;
        }
        size_t total = partial + (size_t)r, done = total / o.resp_bytes;
        partial = total % o.resp_bytes;
        t = now_ns();
        for (size_t i = 0; i < done; i++) {
            hist_add(h, t - sent[head]);
            sent[head] = t; /* the replacement request goes out now, in the same slot */
            head = (head + 1) % (size_t)o.pipeline;
        }
        completed += done;
        if (done > 0 && write_all(fd, req, done * o.req_bytes) != 0)
            goto out;
    }
    double wall = (double)(now_ns() - t_start) / 1e9;
    double ccpu = self_cpu_s() - cpu0, scpu = proc_cpu_s(child) - scpu0;
    printf("{\"mode\":\"floor\",\"connections\":1,\"connected\":1,\"pipeline\":%d,"
           "\"req_bytes\":%zu,\"resp_bytes\":%zu,\"duration_s\":%.3f,\"completed\":%llu,"
           "\"errors\":{\"io\":%llu},\"throughput_rps\":%.1f,"
           "\"latency_us\":{\"p50\":%.2f,\"p90\":%.2f,\"p99\":%.2f,\"p999\":%.2f,\"max\":%.2f,"
           "\"mean\":%.2f},\"client_cpu_s\":%.3f,\"server_cpu_s\":%.3f}\n",
           o.pipeline, o.req_bytes, o.resp_bytes, wall, (unsigned long long)completed,
           (unsigned long long)errors, (double)completed / wall, hist_pct_us(h, 0.50),
           hist_pct_us(h, 0.90), hist_pct_us(h, 0.99), hist_pct_us(h, 0.999),
           (double)h->max_ns / 1000.0, h->n ? h->sum_ns / (double)h->n / 1000.0 : 0.0, ccpu, scpu);
    rc = completed > 0 ? 0 : 1;
out:
    if (fd >= 0)
        close(fd);
    int status;
    if (waitpid(child, &status, 0) < 0)
        kill(child, SIGKILL);
    free(req);
    free(in);
    free(sent);
    free(h);
    return rc;
}
