/* SignalR state shared by the servers of all threads (src/signalr/shared.c) and routing by
 * session owner: connection limits counted exactly across servers (also under contention from
 * real threads), the owner map and the shared token secret, and, over loopback HTTP with two
 * servers (each with its httpd) on one loop, the limits across both, requests for a session
 * migrating to the server that owns it, and a migrated request never migrating again. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "base/error.h"
#include "base/log.h"
#include "signalr/internal.h"

static const bh_sr_config_t base_cfg = {
    .hub_path = "/hub",
    .keepalive_ms = 3600000,
    .client_timeout_ms = 3600000,
    .handshake_timeout_ms = 3600000,
    .max_message = 32768,
    .max_conns_per_key = 2,
    .max_conns = 3,
};

/* key1 -> u1/k1, key2 -> u2/k2, key3 -> u3/k3. */
static int authenticate(void *ud, const char *key, size_t len, char user_id[BH_SR_ID_MAX + 1],
                        char key_id[BH_SR_ID_MAX + 1]) {
    if (len != 4 || memcmp(key, "key", 3) != 0 || key[3] < '1' || key[3] > '3')
        return BH_ENOTFOUND;
    snprintf(user_id, BH_SR_ID_MAX + 1, "u%c", key[3]);
    snprintf(key_id, BH_SR_ID_MAX + 1, "k%c", key[3]);
    return BH_OK;
}

static const bh_sr_hooks_t hooks = {authenticate, NULL, NULL};

/* ---- the shared state alone ---- */

static void test_limits_exact(void **state) {
    bh_sr_shared_t *sh;
    assert_int_equal(bh_sr_shared_new(&base_cfg, &sh), BH_OK);
    assert_int_equal(bh_sr_shared_acquire(sh, "k1", 1), BH_OK);
    assert_int_equal(bh_sr_shared_acquire(sh, "k1", 1), BH_OK);
    assert_int_equal(bh_sr_shared_acquire(sh, "k1", 1), BH_ELIMIT);
    assert_int_equal(bh_sr_shared_acquire(sh, "k1", 0), BH_ELIMIT); /* a check says the same */
    assert_int_equal(bh_sr_shared_acquire(sh, "k2", 0), BH_OK);
    assert_int_equal(bh_sr_shared_count(sh, "k2"), 0); /* a check counts nothing */
    assert_int_equal(bh_sr_shared_acquire(sh, "k2", 1), BH_OK);
    assert_int_equal(bh_sr_shared_count(sh, NULL), 3);
    assert_int_equal(bh_sr_shared_acquire(sh, "k3", 1), BH_ETOOBIG); /* the total first */
    assert_int_equal(bh_sr_shared_acquire(sh, "k3", 0), BH_ETOOBIG);
    assert_int_equal(bh_sr_shared_acquire(sh, "k1", 1), BH_ETOOBIG);
    bh_sr_shared_release(sh, "nobody"); /* unknown: nothing changes */
    assert_int_equal(bh_sr_shared_count(sh, NULL), 3);
    bh_sr_shared_release(sh, "k1");
    assert_int_equal(bh_sr_shared_count(sh, "k1"), 1);
    assert_int_equal(bh_sr_shared_acquire(sh, "k3", 1), BH_OK);
    bh_sr_shared_release(sh, "k1");
    bh_sr_shared_release(sh, "k2");
    bh_sr_shared_release(sh, "k3");
    assert_int_equal(bh_sr_shared_count(sh, NULL), 0);
    assert_int_equal(bh_sr_shared_count(sh, "k1"), 0);
    /* Many keys: the table grows, each key keeps its own count. */
    char key[16];
    bh_sr_config_t big = base_cfg;
    big.max_conns = 10000;
    bh_sr_shared_t *sh2;
    assert_int_equal(bh_sr_shared_new(&big, &sh2), BH_OK);
    for (int i = 0; i < 500; i++) {
        snprintf(key, sizeof key, "key%d", i);
        assert_int_equal(bh_sr_shared_acquire(sh2, key, 1), BH_OK);
        assert_int_equal(bh_sr_shared_acquire(sh2, key, 1), BH_OK);
        assert_int_equal(bh_sr_shared_acquire(sh2, key, 1), BH_ELIMIT);
    }
    assert_int_equal(bh_sr_shared_count(sh2, NULL), 1000);
    for (int i = 0; i < 500; i += 2) {
        snprintf(key, sizeof key, "key%d", i);
        bh_sr_shared_release(sh2, key);
    }
    assert_int_equal(bh_sr_shared_count(sh2, "key0"), 1);
    assert_int_equal(bh_sr_shared_count(sh2, "key1"), 2);
    bh_sr_shared_free(sh2); /* entries left over are freed */
    bh_sr_shared_free(sh);
}

/* ---- the limits under real contention ---- */

#define NTHREADS 8
#define ROUNDS 20000
#define PER_KEY 5

typedef struct {
    bh_sr_shared_t *sh;
    atomic_int held; /* slots of "k" taken and not yet given back */
    atomic_int total_held;
    atomic_int over; /* a moment with more than allowed */
    atomic_int got;
} race_t;

static void *racer(void *arg) {
    race_t *r = arg;
    for (int i = 0; i < ROUNDS; i++) {
        const char *key = i % 3 ? "k" : "other";
        if (bh_sr_shared_acquire(r->sh, key, 1) != BH_OK)
            continue;
        int t = atomic_fetch_add(&r->total_held, 1) + 1;
        int h = key[1] ? 0 : atomic_fetch_add(&r->held, 1) + 1;
        if (h > PER_KEY || t > PER_KEY + 2)
            atomic_store(&r->over, 1);
        atomic_fetch_add(&r->got, 1);
        if (!key[1])
            atomic_fetch_sub(&r->held, 1);
        atomic_fetch_sub(&r->total_held, 1);
        bh_sr_shared_release(r->sh, key);
    }
    return NULL;
}

static void test_limits_under_threads(void **state) {
    bh_sr_config_t cfg = base_cfg;
    cfg.max_conns_per_key = PER_KEY;
    cfg.max_conns = PER_KEY + 2; /* "other" can only ever have 2 */
    race_t r = {0};
    assert_int_equal(bh_sr_shared_new(&cfg, &r.sh), BH_OK);
    pthread_t t[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, racer, &r), 0);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(atomic_load(&r.over), 0);
    assert_true(atomic_load(&r.got) > 0);
    assert_int_equal(bh_sr_shared_count(r.sh, NULL), 0);
    assert_int_equal(bh_sr_shared_count(r.sh, "k"), 0);
    bh_sr_shared_free(r.sh);
}

/* ---- owner map and token secret ---- */

static bh_sr_conn_t *pending(bh_sr_server_t *s, const char *key_id,
                             char token[BH_SR_TOKEN_CHARS + 1]) {
    char id[BH_SR_CONN_ID_CHARS + 1];
    bh_sr_token_new(s, 1000, key_id, 0, token, id);
    bh_sr_conn_t *c = bh_sr_session_new(s, "u1", key_id, id, token, 1000 + BH_SR_TOKEN_TTL_MS);
    assert_non_null(c);
    return c;
}

static void test_owner_map(void **state) {
    bh_sr_shared_t *sh;
    bh_sr_server_t *a, *b, *solo;
    bh_httpd_t *h;
    bh_sr_config_t cfg = base_cfg;
    assert_int_equal(bh_sr_shared_new(&cfg, &sh), BH_OK);
    cfg.shared = sh;
    assert_int_equal(bh_sr_server_new(&cfg, NULL, 0, &hooks, NULL, &a), BH_OK);
    assert_int_equal(bh_sr_server_new(&cfg, NULL, 0, &hooks, NULL, &b), BH_OK);
    cfg.shared = NULL;
    assert_int_equal(bh_sr_server_new(&cfg, NULL, 0, &hooks, NULL, &solo), BH_OK);

    char t1[BH_SR_TOKEN_CHARS + 1], id[BH_SR_CONN_ID_CHARS + 1];
    bh_sr_conn_t *c1 = pending(a, "k1", t1);
    assert_null(bh_sr_owner_find(sh, t1, BH_SR_TOKEN_CHARS, &h));
    assert_int_equal(bh_sr_registry_add(a, c1), BH_OK);
    assert_ptr_equal(bh_sr_owner_find(sh, t1, BH_SR_TOKEN_CHARS, &h), a);
    assert_null(h);         /* no httpd set yet */
    static char fake_httpd; /* only its address is kept */
    bh_sr_server_set_httpd(a, (bh_httpd_t *)&fake_httpd);
    assert_ptr_equal(bh_sr_owner_find(sh, t1, BH_SR_TOKEN_CHARS, &h), a);
    assert_ptr_equal(h, &fake_httpd);
    /* Wrong lengths and near misses find nothing. */
    assert_null(bh_sr_owner_find(sh, t1, BH_SR_TOKEN_CHARS - 1, &h));
    assert_null(h);
    assert_null(bh_sr_owner_find(sh, t1, 0, &h));
    char other[BH_SR_TOKEN_CHARS + 1];
    memcpy(other, t1, sizeof other);
    other[5] = other[5] == 'A' ? 'B' : 'A';
    assert_null(bh_sr_owner_find(sh, other, BH_SR_TOKEN_CHARS, &h));
    /* One token, one owner: b cannot register it too. */
    bh_sr_conn_t *dup = bh_sr_session_new(b, "u1", "k1", "x", t1, 1000 + BH_SR_TOKEN_TTL_MS);
    assert_non_null(dup);
    assert_int_equal(bh_sr_registry_add(b, dup), BH_EEXIST);
    assert_null(bh_sr_registry_find(b, t1, BH_SR_TOKEN_CHARS, 1000));
    bh_sr_session_free_pending(dup);
    assert_ptr_equal(bh_sr_owner_find(sh, t1, BH_SR_TOKEN_CHARS, &h), a);
    /* The token secret is shared: b checks a's token; a private server does not. */
    int stateful = 1;
    assert_int_equal(bh_sr_token_check(b, 2000, t1, BH_SR_TOKEN_CHARS, "k1", id, &stateful), BH_OK);
    assert_string_equal(id, c1->id);
    assert_int_equal(stateful, 0);
    assert_int_equal(bh_sr_token_check(b, 2000, t1, BH_SR_TOKEN_CHARS, "k2", id, &stateful),
                     BH_ENOTFOUND);
    assert_int_equal(bh_sr_token_check(solo, 2000, t1, BH_SR_TOKEN_CHARS, "k1", id, &stateful),
                     BH_ENOTFOUND);
    /* Many sessions over both servers: the map grows; each finds its owner. */
    bh_sr_conn_t *many[300];
    char tokens[300][BH_SR_TOKEN_CHARS + 1];
    for (int i = 0; i < 300; i++) {
        many[i] = pending(i % 2 ? b : a, "k2", tokens[i]);
        assert_int_equal(bh_sr_registry_add(i % 2 ? b : a, many[i]), BH_OK);
    }
    for (int i = 0; i < 300; i++)
        assert_ptr_equal(bh_sr_owner_find(sh, tokens[i], BH_SR_TOKEN_CHARS, &h), i % 2 ? b : a);
    for (int i = 0; i < 300; i += 3)
        bh_sr_session_free_pending(many[i]);
    for (int i = 0; i < 300; i++)
        assert_ptr_equal(bh_sr_owner_find(sh, tokens[i], BH_SR_TOKEN_CHARS, &h), i % 3 == 0 ? NULL
                                                                                 : i % 2    ? b
                                                                                            : a);
    /* Ending the session ends its ownership; then another server may take the token. */
    bh_sr_session_free_pending(c1);
    assert_null(bh_sr_owner_find(sh, t1, BH_SR_TOKEN_CHARS, &h));
    assert_null(h);
    bh_sr_conn_t *again = bh_sr_session_new(b, "u1", "k1", "x", t1, 1000 + BH_SR_TOKEN_TTL_MS);
    assert_int_equal(bh_sr_registry_add(b, again), BH_OK);
    assert_ptr_equal(bh_sr_owner_find(sh, t1, BH_SR_TOKEN_CHARS, &h), b);
    /* Freeing a server ends its sessions' ownership (the private one frees its own). */
    bh_sr_server_free(b);
    assert_null(bh_sr_owner_find(sh, t1, BH_SR_TOKEN_CHARS, &h));
    for (int i = 1; i < 300; i++)
        assert_ptr_equal(bh_sr_owner_find(sh, tokens[i], BH_SR_TOKEN_CHARS, &h),
                         i % 3 == 0 || i % 2 ? NULL : a);
    bh_sr_server_free(a);
    bh_sr_server_free(solo);
    bh_sr_shared_free(sh);
}

/* ---- two servers over loopback HTTP ---- */

typedef struct node node_t;
struct node {
    bh_httpd_t *httpd;
    bh_sr_server_t *sr;
    int port;
    int requests, migrated_in;
    /* run once after the handler, while a migrated request is on its way */
    void (*after)(node_t *n, void *ud);
    void *after_ud;
};

typedef struct {
    uv_loop_t loop;
    bh_sr_shared_t *sh;
    node_t n[2];
} net_t;

typedef struct {
    int status;
    char body[1024];
} resp_t;

static void on_http(void *ud, bh_http_conn_t *hc, const bh_http_request_t *req, const char *body,
                    size_t len) {
    node_t *n = ud;
    n->requests++;
    if (bh_http_conn_migrated(hc))
        n->migrated_in++;
    if (!bh_sr_handle_http(n->sr, hc, req, body, len))
        bh_http_respond(hc, 404, "text/plain", NULL, "not here", 8);
    if (n->after) {
        void (*fn)(node_t *, void *) = n->after;
        n->after = NULL;
        fn(n, n->after_ud);
    }
}

static net_t *net_new(size_t per_key, size_t total) {
    net_t *t = calloc(1, sizeof *t);
    assert_non_null(t);
    assert_int_equal(uv_loop_init(&t->loop), 0);
    bh_sr_config_t cfg = base_cfg;
    cfg.max_conns_per_key = per_key;
    cfg.max_conns = total;
    assert_int_equal(bh_sr_shared_new(&cfg, &t->sh), BH_OK);
    cfg.shared = t->sh;
    bh_httpd_config_t hc = {.max_head = 8192,
                            .max_body = 65536,
                            .request_timeout_ms = 10000,
                            .idle_timeout_ms = 10000,
                            .max_output = 1 << 20};
    char err[256];
    for (int i = 0; i < 2; i++) {
        node_t *n = &t->n[i];
        assert_int_equal(bh_sr_server_new(&cfg, NULL, 0, &hooks, NULL, &n->sr), BH_OK);
        assert_int_equal(bh_httpd_new(&t->loop, &hc, "127.0.0.1:0", on_http, n, &n->httpd, &n->port,
                                      err, sizeof err),
                         BH_OK);
    }
    return t;
}

static void net_free(net_t *t) {
    for (int i = 0; i < 2; i++) {
        bh_sr_server_shutdown(t->n[i].sr);
        bh_httpd_close_all(t->n[i].httpd);
    }
    assert_int_equal(uv_run(&t->loop, UV_RUN_DEFAULT), 0);
    for (int i = 0; i < 2; i++) {
        bh_httpd_free(t->n[i].httpd);
        bh_sr_server_free(t->n[i].sr);
    }
    assert_int_equal(bh_sr_shared_count(t->sh, NULL), 0);
    bh_sr_shared_free(t->sh);
    assert_int_equal(uv_loop_close(&t->loop), 0);
    free(t);
}

/* Send one request on a new connection to node i and run the loop until the whole answer is
 * in (waiting on the loop's and the socket's descriptors, never on a clock). A 101 ends with
 * its head. */
static void exchange(net_t *t, int i, const char *req, size_t n, resp_t *out) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)t->n[i].port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(send(fd, req, n, 0), (ssize_t)n);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    char buf[4096];
    size_t got = 0;
    int complete = 0;
    for (int round = 0; round < 200 && !complete; round++) {
        uv_run(&t->loop, UV_RUN_NOWAIT);
        ssize_t r;
        while ((r = recv(fd, buf + got, sizeof buf - 1 - got, 0)) > 0)
            got += (size_t)r;
        buf[got] = 0;
        char *end = strstr(buf, "\r\n\r\n");
        char *cl = strcasestr(buf, "\r\nContent-Length: ");
        if (end && strncmp(buf, "HTTP/1.1 101 ", 13) == 0)
            complete = 1;
        else if (end && cl && cl < end)
            complete = got >= (size_t)(end + 4 - buf) + (size_t)atoi(cl + 18);
        if (!complete) {
            struct pollfd p[2] = {{fd, POLLIN, 0}, {uv_backend_fd(&t->loop), POLLIN, 0}};
            poll(p, 2, 100);
        }
    }
    close(fd);
    assert_true(complete);
    out->status = atoi(buf + 9);
    snprintf(out->body, sizeof out->body, "%s", strstr(buf, "\r\n\r\n") + 4);
}

static void call(net_t *t, int i, const char *method, const char *target, const char *key,
                 const char *body, resp_t *out) {
    char req[2048];
    size_t blen = body ? strlen(body) : 0;
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: test\r\n%s%s%sContent-Length: %zu\r\n\r\n%s", method,
                     target, key ? "Authorization: Bearer " : "", key ? key : "", key ? "\r\n" : "",
                     blen, body ? body : "");
    assert_true(n > 0 && (size_t)n < sizeof req);
    exchange(t, i, req, (size_t)n, out);
}

/* A WebSocket upgrade naming the session token. */
static int ws_status(net_t *t, int i, const char *token, const char *key) {
    char req[1024];
    resp_t r;
    int n =
        snprintf(req, sizeof req,
                 "GET /hub?id=%s HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer %s\r\n"
                 "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                 token, key);
    exchange(t, i, req, (size_t)n, &r);
    return r.status;
}

static int status_of(net_t *t, int i, const char *method, const char *target, const char *key) {
    resp_t r;
    call(t, i, method, target, key, NULL, &r);
    return r.status;
}

/* Negotiate on node i; the connection token. */
static void negotiate(net_t *t, int i, const char *key, char token[BH_SR_TOKEN_CHARS + 1]) {
    resp_t r;
    call(t, i, "POST", "/hub/negotiate?negotiateVersion=1", key, NULL, &r);
    assert_int_equal(r.status, 200);
    const char *p = strstr(r.body, "\"connectionToken\":\"");
    assert_non_null(p);
    snprintf(token, BH_SR_TOKEN_CHARS + 1, "%s", p + 19);
    assert_int_equal(strlen(token), BH_SR_TOKEN_CHARS);
}

static int session_req(net_t *t, int i, const char *method, const char *token, const char *key) {
    char target[128];
    snprintf(target, sizeof target, "/hub?id=%s", token);
    return status_of(t, i, method, target, key);
}

/* Sessions counted on either server count against the same limits. */
static void test_limits_across_servers(void **state) {
    net_t *t = net_new(2, 3);
    char t1[BH_SR_TOKEN_CHARS + 1], t2[BH_SR_TOKEN_CHARS + 1], t3[BH_SR_TOKEN_CHARS + 1];
    negotiate(t, 0, "key1", t1);
    assert_int_equal(session_req(t, 0, "GET", t1, "key1"), 200); /* Long Polling opens */
    negotiate(t, 1, "key1", t2);
    assert_int_equal(session_req(t, 1, "GET", t2, "key1"), 200);
    assert_int_equal(bh_sr_server_connections(t->n[0].sr), 1);
    assert_int_equal(bh_sr_server_connections(t->n[1].sr), 1);
    assert_int_equal(bh_sr_shared_count(t->sh, "k1"), 2);
    /* The key is full on both servers. */
    assert_int_equal(status_of(t, 0, "POST", "/hub/negotiate?negotiateVersion=1", "key1"), 429);
    assert_int_equal(status_of(t, 1, "POST", "/hub/negotiate?negotiateVersion=1", "key1"), 429);
    negotiate(t, 1, "key2", t3);
    negotiate(t, 0, "key3", t1); /* fits now (negotiations hold no slot) ... */
    assert_int_equal(session_req(t, 1, "GET", t3, "key2"), 200);
    assert_int_equal(bh_sr_shared_count(t->sh, NULL), 3);
    assert_int_equal(session_req(t, 0, "GET", t1, "key3"), 503); /* ... but not any more */
    assert_int_equal(status_of(t, 1, "POST", "/hub/negotiate?negotiateVersion=1", "key3"), 503);
    /* One ends: a slot is free again, on either server. */
    assert_int_equal(session_req(t, 1, "DELETE", t3, "key2"), 202);
    assert_int_equal(bh_sr_shared_count(t->sh, NULL), 2);
    assert_int_equal(session_req(t, 0, "GET", t1, "key3"), 200);
    assert_int_equal(bh_sr_shared_count(t->sh, "k3"), 1);
    net_free(t);
}

/* A request for a session another server owns moves there and is answered there. */
static void test_requests_follow_the_owner(void **state) {
    net_t *t = net_new(4, 10);
    char tok[BH_SR_TOKEN_CHARS + 1];
    resp_t r;
    negotiate(t, 0, "key1", tok);
    /* Without the owner's httpd there is nowhere to go: unknown here. */
    assert_int_equal(session_req(t, 1, "GET", tok, "key1"), 404);
    assert_int_equal(t->n[0].migrated_in, 0);
    bh_sr_server_set_httpd(t->n[0].sr, t->n[0].httpd);
    bh_sr_server_set_httpd(t->n[1].sr, t->n[1].httpd);
    /* Authentication comes first, where the request arrived. */
    assert_int_equal(session_req(t, 1, "GET", tok, "nope"), 401);
    assert_int_equal(t->n[0].requests, 1);
    /* The owner checks the key as for any request. */
    assert_int_equal(session_req(t, 1, "GET", tok, "key2"), 403);
    assert_int_equal(t->n[0].migrated_in, 1);
    assert_int_equal(session_req(t, 1, "GET", tok, "key1"), 200); /* the poll opens on 0 */
    assert_int_equal(t->n[0].migrated_in, 2);
    assert_int_equal(bh_sr_server_connections(t->n[0].sr), 1);
    assert_int_equal(bh_sr_server_connections(t->n[1].sr), 0);
    char target[128];
    snprintf(target, sizeof target, "/hub?id=%s", tok);
    call(t, 1, "POST", target, "key1", "{\"protocol\":\"json\",\"version\":1}\x1e", &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(t->n[0].migrated_in, 3);
    assert_int_equal(session_req(t, 1, "DELETE", tok, "key1"), 202);
    assert_int_equal(t->n[0].migrated_in, 4);
    assert_int_equal(bh_sr_server_connections(t->n[0].sr), 0);
    /* Gone everywhere now: answered where it arrived. */
    assert_int_equal(session_req(t, 1, "GET", tok, "key1"), 404);
    assert_int_equal(session_req(t, 1, "POST", tok, "key1"), 404);
    assert_int_equal(t->n[0].migrated_in, 4);
    /* A WebSocket naming a session of the other server opens there. */
    negotiate(t, 1, "key1", tok);
    assert_int_equal(ws_status(t, 0, tok, "key1"), 101);
    assert_int_equal(t->n[1].migrated_in, 1);
    assert_int_equal(bh_sr_server_connections(t->n[1].sr), 1);
    assert_int_equal(bh_sr_server_connections(t->n[0].sr), 0);
    /* Requests naming no session stay where they are. */
    assert_int_equal(status_of(t, 1, "GET", "/hub", "key1"), 400);
    assert_int_equal(t->n[0].migrated_in, 4);
    net_free(t);
}

/* The owner ends the session while a request for it is on its way, and the token is taken by
 * the server the request left: the owner answers 404 rather than sending it back. */
static void end_and_take(node_t *n, void *ud) {
    net_t *t = ud;
    bh_sr_server_t *owner = t->n[0].sr;
    bh_sr_conn_t *c = owner->pending; /* the only session */
    assert_non_null(c);
    char token[BH_SR_TOKEN_CHARS + 1], id[BH_SR_CONN_ID_CHARS + 1];
    memcpy(token, c->token, sizeof token);
    memcpy(id, c->id, sizeof id);
    bh_sr_session_free_pending(c);
    bh_sr_conn_t *again =
        bh_sr_session_new(n->sr, "u1", "k1", id, token, uv_now(&t->loop) + BH_SR_TOKEN_TTL_MS);
    assert_non_null(again);
    assert_int_equal(bh_sr_registry_add(n->sr, again), BH_OK);
}

static void test_no_second_migration(void **state) {
    net_t *t = net_new(4, 10);
    char tok[BH_SR_TOKEN_CHARS + 1];
    bh_sr_server_set_httpd(t->n[0].sr, t->n[0].httpd);
    bh_sr_server_set_httpd(t->n[1].sr, t->n[1].httpd);
    negotiate(t, 0, "key1", tok);
    t->n[1].after = end_and_take;
    t->n[1].after_ud = t;
    int before0 = t->n[0].requests, before1 = t->n[1].requests;
    assert_int_equal(session_req(t, 1, "GET", tok, "key1"), 404);
    assert_int_equal(t->n[0].requests, before0 + 1);
    assert_int_equal(t->n[0].migrated_in, 1);
    assert_int_equal(t->n[1].requests, before1 + 1); /* never came back */
    assert_int_equal(t->n[1].migrated_in, 0);
    /* A fresh request finds the new owner. */
    assert_int_equal(session_req(t, 0, "GET", tok, "key1"), 200);
    assert_int_equal(t->n[1].migrated_in, 1);
    assert_int_equal(bh_sr_server_connections(t->n[1].sr), 1);
    net_free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limits_exact),
        cmocka_unit_test(test_limits_under_threads),
        cmocka_unit_test(test_owner_map),
        cmocka_unit_test(test_limits_across_servers),
        cmocka_unit_test(test_requests_follow_the_owner),
        cmocka_unit_test(test_no_second_migration),
    };
    bh_log_set_level(BH_LOG_ERROR + 1);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
