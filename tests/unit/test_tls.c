/* Unit tests for server TLS: the memory-BIO codec (src/net/tls.c) driven by an OpenSSL client in
 * memory (handshake, ALPN, versions, garbage, every prefix, close_notify, refusals), start-up
 * errors, and the listener with TLS on a real loop: plaintext handler, reload for new
 * connections while old ones keep their context, silent failed handshakes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "base/buf.h"
#include "base/error.h"
#include "net/net.h"
#include "net/tls.h"

/* ---------------------------------------------------------------------------------------------
 * throwaway certificates */

typedef struct {
    EVP_PKEY *key;
    X509 *cert;
} ident_t;

static char g_dir[64];
static ident_t g_id1, g_id2;

static void path_of(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s", g_dir, name);
}

/* Self-signed P-256 certificate for localhost / 127.0.0.1; serial tells certificates apart. */
static int make_ident(ident_t *id, long serial) {
    id->key = EVP_EC_gen("P-256");
    id->cert = X509_new();
    if (!id->key || !id->cert)
        return -1;
    X509_set_version(id->cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(id->cert), serial);
    X509_gmtime_adj(X509_getm_notBefore(id->cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(id->cert), 3600);
    X509_set_pubkey(id->cert, id->key);
    /* Distinct subjects: a client trusting both must find the right one by name. */
    char cn[32];
    snprintf(cn, sizeof cn, "balancehub test %ld", serial);
    X509_NAME *name = X509_get_subject_name(id->cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(id->cert, name);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, id->cert, id->cert, NULL, NULL, 0);
    X509_EXTENSION *ext =
        X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "IP:127.0.0.1,DNS:localhost");
    if (!ext)
        return -1;
    X509_add_ext(id->cert, ext, -1);
    X509_EXTENSION_free(ext);
    return X509_sign(id->cert, id->key, EVP_sha256()) > 0 ? 0 : -1;
}

static void write_cert(const char *name, const ident_t *id) {
    char p[128];
    path_of(p, sizeof p, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_X509(f, id->cert), 1);
    fclose(f);
}

static void write_key(const char *name, const ident_t *id, int encrypted) {
    char p[128];
    path_of(p, sizeof p, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    int r = encrypted ? PEM_write_PrivateKey(f, id->key, EVP_aes_128_cbc(),
                                             (unsigned char *)"secret", 6, NULL, NULL)
                      : PEM_write_PrivateKey(f, id->key, NULL, NULL, 0, NULL, NULL);
    assert_int_equal(r, 1);
    fclose(f);
}

static void write_text(const char *name, const char *text) {
    char p[128];
    path_of(p, sizeof p, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static const char *const g_files[] = {"cert1.pem", "key1.pem", "cert2.pem", "key2.pem",
                                      "enc.pem",   "junk.pem", "live.pem",  "livekey.pem"};

static int setup(void **state) {
    snprintf(g_dir, sizeof g_dir, "/tmp/bh-test-tls-XXXXXX");
    if (!mkdtemp(g_dir) || make_ident(&g_id1, 1) < 0 || make_ident(&g_id2, 2) < 0)
        return -1;
    write_cert("cert1.pem", &g_id1);
    write_key("key1.pem", &g_id1, 0);
    write_cert("cert2.pem", &g_id2);
    write_key("key2.pem", &g_id2, 0);
    write_key("enc.pem", &g_id1, 1);
    write_text("junk.pem", "-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                           "-----END CERTIFICATE-----\n");
    return 0;
}

static int teardown(void **state) {
    char p[128];
    for (size_t i = 0; i < sizeof g_files / sizeof g_files[0]; i++) {
        path_of(p, sizeof p, g_files[i]);
        unlink(p);
    }
    rmdir(g_dir);
    EVP_PKEY_free(g_id1.key);
    X509_free(g_id1.cert);
    EVP_PKEY_free(g_id2.key);
    X509_free(g_id2.cert);
    return 0;
}

static SSL_CTX *server_ctx(const char *cert, const char *key) {
    char c[128], k[128], err[256] = "";
    path_of(c, sizeof c, cert);
    path_of(k, sizeof k, key);
    SSL_CTX *ctx = NULL;
    assert_int_equal(bh_tls_ctx_new(c, k, &ctx, err, sizeof err), BH_OK);
    assert_non_null(ctx);
    assert_string_equal(err, "");
    return ctx;
}

/* ---------------------------------------------------------------------------------------------
 * an OpenSSL client in memory */

/* trust: the certificate to trust (NULL: verify against an empty store, which must fail). */
static SSL_CTX *client_ctx(const ident_t *trust, int min_version, int max_version) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(ctx);
    if (min_version < TLS1_2_VERSION) {
        /* Old protocols are off at the default security level; turn them on to offer them. */
        SSL_CTX_set_security_level(ctx, 0);
        SSL_CTX_set_cipher_list(ctx, "DEFAULT:@SECLEVEL=0");
    }
    SSL_CTX_set_min_proto_version(ctx, min_version);
    SSL_CTX_set_max_proto_version(ctx, max_version);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (trust)
        X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), trust->cert);
    return ctx;
}

static SSL *client_new(SSL_CTX *ctx, const char *alpn, size_t alpn_len) {
    SSL *ssl = SSL_new(ctx);
    assert_non_null(ssl);
    SSL_set_bio(ssl, BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem()));
    BIO_set_mem_eof_return(SSL_get_rbio(ssl), -1);
    SSL_set_connect_state(ssl);
    SSL_set_tlsext_host_name(ssl, "localhost");
    SSL_set1_host(ssl, "localhost");
    if (alpn)
        SSL_set_alpn_protos(ssl, (const unsigned char *)alpn, (unsigned)alpn_len);
    return ssl;
}

/* Client ciphertext waiting to go out, appended to out. */
static void client_take(SSL *cl, bh_buf_t *out) {
    char buf[4096];
    int n;
    while ((n = BIO_read(SSL_get_wbio(cl), buf, sizeof buf)) > 0)
        assert_int_equal(bh_buf_append(out, buf, (size_t)n), BH_OK);
}

/* Runs both handshakes, moving bytes until neither side has anything left to say. Returns the
 * server's last bh_tls_handshake result; *client_ok: the client's handshake finished. */
static int pump(SSL *cl, bh_tls_t *srv, int *client_ok) {
    int hs = BH_EAGAIN;
    bh_buf_t b;
    bh_buf_init(&b, 0);
    for (int round = 0; round < 32; round++) {
        ERR_clear_error();
        if (!SSL_is_init_finished(cl))
            SSL_do_handshake(cl);
        bh_buf_reset(&b);
        client_take(cl, &b);
        int moved = b.len > 0;
        if (b.len)
            assert_int_equal(bh_tls_feed(srv, b.data, b.len), BH_OK);
        hs = bh_tls_handshake(srv);
        bh_buf_reset(&b);
        assert_int_equal(bh_tls_take(srv, &b), BH_OK);
        assert_int_equal(bh_tls_pending(srv), 0);
        if (b.len) {
            moved = 1;
            BIO_write(SSL_get_rbio(cl), b.data, (int)b.len);
        }
        if (!moved)
            break;
    }
    bh_buf_free(&b);
    ERR_clear_error();
    if (client_ok)
        *client_ok = SSL_is_init_finished(cl);
    return hs;
}

/* Server output -> client; returns the plaintext the client can read now. */
static void to_client(bh_tls_t *srv, SSL *cl, bh_buf_t *plain, int *closed) {
    bh_buf_t b;
    bh_buf_init(&b, 0);
    assert_int_equal(bh_tls_take(srv, &b), BH_OK);
    if (b.len)
        BIO_write(SSL_get_rbio(cl), b.data, (int)b.len);
    bh_buf_free(&b);
    char buf[4096];
    size_t n;
    *closed = 0;
    for (;;) {
        ERR_clear_error();
        if (SSL_read_ex(cl, buf, sizeof buf, &n) != 1) {
            *closed = SSL_get_error(cl, 0) == SSL_ERROR_ZERO_RETURN;
            ERR_clear_error();
            break;
        }
        assert_int_equal(bh_buf_append(plain, buf, n), BH_OK);
    }
}

/* Client plaintext -> server; every plaintext the server decrypts appended to plain. Returns
 * the server's last bh_tls_read result. */
static int to_server(SSL *cl, const char *text, bh_tls_t *srv, bh_buf_t *plain) {
    size_t w;
    if (text)
        assert_int_equal(SSL_write_ex(cl, text, strlen(text), &w), 1);
    bh_buf_t b;
    bh_buf_init(&b, 0);
    client_take(cl, &b);
    if (b.len)
        assert_int_equal(bh_tls_feed(srv, b.data, b.len), BH_OK);
    bh_buf_free(&b);
    char buf[100];
    size_t n;
    int r;
    while ((r = bh_tls_read(srv, buf, sizeof buf, &n)) == BH_OK) {
        assert_true(n > 0 && n <= sizeof buf);
        assert_int_equal(bh_buf_append(plain, buf, n), BH_OK);
    }
    return r;
}

static long peer_serial(SSL *cl) {
    X509 *peer = SSL_get1_peer_certificate(cl);
    assert_non_null(peer);
    long s = ASN1_INTEGER_get(X509_get0_serialNumber(peer));
    X509_free(peer);
    return s;
}

/* ---------------------------------------------------------------------------------------------
 * the codec */

static void test_handshake_and_data(void **state) {
    SSL_CTX *sctx = server_ctx("cert1.pem", "key1.pem");
    SSL_CTX *cctx = client_ctx(&g_id1, TLS1_2_VERSION, 0);
    bh_tls_t *t = NULL;
    assert_int_equal(bh_tls_new(sctx, &t), BH_OK);
    SSL_CTX_free(sctx); /* the connection holds its own reference */
    SSL *cl = client_new(cctx, "\x02h2\x08http/1.1", 12);
    assert_false(bh_tls_handshake_done(t));
    int ok = 0;
    assert_int_equal(pump(cl, t, &ok), BH_OK);
    assert_true(ok);
    assert_true(bh_tls_handshake_done(t));
    assert_int_equal(SSL_get_verify_result(cl), X509_V_OK);
    assert_string_equal(bh_tls_version(t), "TLSv1.3");
    size_t alen = 0;
    const char *alpn = bh_tls_alpn(t, &alen);
    assert_int_equal(alen, 8);
    assert_memory_equal(alpn, "http/1.1", 8);
    assert_int_equal(peer_serial(cl), 1);

    /* client -> server: exact bytes, in reads of at most the given capacity */
    bh_buf_t got;
    bh_buf_init(&got, 0);
    const char *req = "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
                      "POST /x HTTP/1.1\r\nContent-Length: 100\r\n\r\n"
                      "0123456789012345678901234567890123456789012345678901234567890123456789"
                      "012345678901234567890123456789";
    assert_int_equal(to_server(cl, req, t, &got), BH_EAGAIN);
    assert_int_equal(got.len, strlen(req));
    assert_memory_equal(got.data, req, got.len);

    /* server -> client: one write of a batch, larger than one record */
    bh_buf_t big;
    bh_buf_init(&big, 0);
    for (int i = 0; i < 40000; i++)
        bh_buf_appendc(&big, (char)('a' + i % 26));
    assert_int_equal(bh_tls_write(t, big.data, big.len), BH_OK);
    assert_true(bh_tls_pending(t) > big.len); /* records add framing and tags */
    bh_buf_reset(&got);
    int closed = 1;
    to_client(t, cl, &got, &closed);
    assert_false(closed);
    assert_int_equal(got.len, big.len);
    assert_memory_equal(got.data, big.data, big.len);
    assert_int_equal(bh_tls_pending(t), 0);
    assert_int_equal(bh_tls_write(t, "", 0), BH_OK);
    assert_int_equal(bh_tls_pending(t), 0);

    /* a burst the other way (the input BIO grows past what an idle connection keeps), then
     * small messages both ways still flow after the BIOs were swapped for fresh ones */
    bh_buf_reset(&got);
    big.data[big.len - 1] = 0; /* to_server sends a C string */
    assert_int_equal(to_server(cl, big.data, t, &got), BH_EAGAIN);
    assert_int_equal(got.len, big.len - 1);
    assert_memory_equal(got.data, big.data, got.len);
    bh_buf_reset(&got);
    assert_int_equal(to_server(cl, "after", t, &got), BH_EAGAIN);
    assert_int_equal(got.len, 5);
    assert_memory_equal(got.data, "after", 5);
    assert_int_equal(bh_tls_write(t, "tail", 4), BH_OK);
    bh_buf_reset(&got);
    to_client(t, cl, &got, &closed);
    assert_int_equal(got.len, 4);
    assert_memory_equal(got.data, "tail", 4);

    bh_buf_free(&big);
    bh_buf_free(&got);
    SSL_free(cl);
    SSL_CTX_free(cctx);
    bh_tls_free(t);
}

static void test_tls12_and_alpn_choices(void **state) {
    SSL_CTX *sctx = server_ctx("cert1.pem", "key1.pem");
    SSL_CTX *cctx = client_ctx(&g_id1, TLS1_2_VERSION, TLS1_2_VERSION);
    struct {
        const char *alpn;
        size_t len;
        const char *want;
    } cases[] = {
        {NULL, 0, NULL},                /* no ALPN offered: none chosen */
        {"\x02h2", 3, NULL},            /* no overlap: go on without ALPN */
        {"\x08http/1.1", 9, "http/1.1"} /* */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bh_tls_t *t = NULL;
        assert_int_equal(bh_tls_new(sctx, &t), BH_OK);
        SSL *cl = client_new(cctx, cases[i].alpn, cases[i].len);
        int ok = 0;
        assert_int_equal(pump(cl, t, &ok), BH_OK);
        assert_true(ok);
        assert_string_equal(bh_tls_version(t), "TLSv1.2");
        size_t alen = 99;
        const char *alpn = bh_tls_alpn(t, &alen);
        if (cases[i].want) {
            assert_int_equal(alen, strlen(cases[i].want));
            assert_memory_equal(alpn, cases[i].want, alen);
        } else {
            assert_null(alpn);
            assert_int_equal(alen, 0);
        }
        /* a TLS 1.2 client may not renegotiate: the server answers its new ClientHello with
         * a no_renegotiation alert and nothing else, and the renegotiation never completes */
        ERR_clear_error();
        assert_int_equal(SSL_renegotiate(cl), 1);
        SSL_do_handshake(cl);
        bh_buf_t plain;
        bh_buf_init(&plain, 0);
        assert_int_equal(to_server(cl, NULL, t, &plain), BH_EAGAIN);
        assert_int_equal(plain.len, 0);
        bh_buf_t out;
        bh_buf_init(&out, 0);
        assert_int_equal(bh_tls_take(t, &out), BH_OK);
        assert_true(out.len > 5);
        assert_int_equal((unsigned char)out.data[0], 0x15); /* one alert record */
        assert_int_equal(out.len,
                         5 + (((unsigned char)out.data[3] << 8) | (unsigned char)out.data[4]));
        BIO_write(SSL_get_rbio(cl), out.data, (int)out.len);
        bh_buf_free(&out);
        ERR_clear_error();
        SSL_do_handshake(cl);
        ERR_clear_error();
        assert_int_equal(SSL_renegotiate_pending(cl), 1);
        assert_true(bh_tls_handshake_done(t));
        bh_buf_free(&plain);
        SSL_free(cl);
        bh_tls_free(t);
        ERR_clear_error();
    }
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

static void test_old_protocols_refused(void **state) {
    SSL_CTX *sctx = server_ctx("cert1.pem", "key1.pem");
    int versions[] = {TLS1_VERSION, TLS1_1_VERSION};
    for (size_t i = 0; i < 2; i++) {
        SSL_CTX *cctx = client_ctx(&g_id1, versions[i], versions[i]);
        bh_tls_t *t = NULL;
        assert_int_equal(bh_tls_new(sctx, &t), BH_OK);
        SSL *cl = client_new(cctx, NULL, 0);
        int ok = 1;
        assert_int_equal(pump(cl, t, &ok), BH_EPROTO);
        assert_false(ok);
        assert_false(bh_tls_handshake_done(t));
        assert_string_equal(bh_tls_error(t), "unsupported protocol");
        /* once failed, it stays failed and refuses to carry data */
        assert_int_equal(bh_tls_handshake(t), BH_EPROTO);
        assert_int_equal(bh_tls_write(t, "x", 1), BH_ECLOSED);
        size_t n = 9;
        char buf[8];
        assert_int_equal(bh_tls_read(t, buf, sizeof buf, &n), BH_EPROTO);
        assert_int_equal(n, 0);
        bh_tls_close_notify(t);
        assert_int_equal(bh_tls_pending(t), 0);
        SSL_free(cl);
        bh_tls_free(t);
        SSL_CTX_free(cctx);
    }
    SSL_CTX_free(sctx);
}

static void test_untrusted_refused_by_client(void **state) {
    SSL_CTX *sctx = server_ctx("cert1.pem", "key1.pem");
    SSL_CTX *cctx = client_ctx(NULL, TLS1_2_VERSION, 0); /* trusts nothing */
    bh_tls_t *t = NULL;
    assert_int_equal(bh_tls_new(sctx, &t), BH_OK);
    SSL *cl = client_new(cctx, NULL, 0);
    int ok = 1;
    assert_int_equal(pump(cl, t, &ok), BH_EPROTO); /* the client's alert fails the server side */
    assert_false(ok);
    assert_int_equal(SSL_get_verify_result(cl), X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT);
    assert_true(strlen(bh_tls_error(t)) > 0);
    SSL_free(cl);
    bh_tls_free(t);
    /* and trusting the wrong certificate fails the same way */
    SSL_CTX_free(cctx);
    cctx = client_ctx(&g_id2, TLS1_2_VERSION, 0);
    assert_int_equal(bh_tls_new(sctx, &t), BH_OK);
    cl = client_new(cctx, NULL, 0);
    assert_int_equal(pump(cl, t, &ok), BH_EPROTO);
    assert_false(ok);
    SSL_free(cl);
    bh_tls_free(t);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

/* The client's first flight, for the prefix and garbage tests. */
static void client_hello(SSL_CTX *cctx, bh_buf_t *out) {
    SSL *cl = client_new(cctx, "\x08http/1.1", 9);
    ERR_clear_error();
    SSL_do_handshake(cl);
    ERR_clear_error();
    client_take(cl, out);
    SSL_free(cl);
}

static void test_every_prefix_of_client_hello(void **state) {
    SSL_CTX *sctx = server_ctx("cert1.pem", "key1.pem");
    SSL_CTX *cctx = client_ctx(&g_id1, TLS1_2_VERSION, 0);
    bh_buf_t hello;
    bh_buf_init(&hello, 0);
    client_hello(cctx, &hello);
    assert_true(hello.len > 100);
    assert_int_equal((unsigned char)hello.data[0], 0x16); /* handshake record */
    for (size_t cut = 0; cut < hello.len; cut++) {
        bh_tls_t *t = NULL;
        assert_int_equal(bh_tls_new(sctx, &t), BH_OK);
        assert_int_equal(bh_tls_feed(t, hello.data, cut), BH_OK);
        assert_int_equal(bh_tls_handshake(t), BH_EAGAIN);
        assert_int_equal(bh_tls_pending(t), 0); /* nothing answered to half a hello */
        assert_int_equal(bh_tls_feed(t, hello.data + cut, hello.len - cut), BH_OK);
        assert_int_equal(bh_tls_handshake(t), BH_EAGAIN); /* waits for the client's Finished */
        assert_true(bh_tls_pending(t) > 0);               /* ServerHello... */
        bh_tls_free(t);
    }
    /* and byte by byte, all the way, against a live client */
    bh_tls_t *t = NULL;
    assert_int_equal(bh_tls_new(sctx, &t), BH_OK);
    SSL *cl = client_new(cctx, NULL, 0);
    bh_buf_t b;
    bh_buf_init(&b, 0);
    int hs = BH_EAGAIN;
    for (int round = 0; round < 8 && hs == BH_EAGAIN; round++) {
        ERR_clear_error();
        SSL_do_handshake(cl);
        bh_buf_reset(&b);
        client_take(cl, &b);
        for (size_t i = 0; i < b.len; i++) {
            assert_int_equal(bh_tls_feed(t, b.data + i, 1), BH_OK);
            hs = bh_tls_handshake(t);
            assert_true(hs == BH_EAGAIN || (hs == BH_OK && i + 1 == b.len));
        }
        bh_buf_reset(&b);
        bh_tls_take(t, &b);
        BIO_write(SSL_get_rbio(cl), b.data, (int)b.len);
    }
    assert_int_equal(hs, BH_OK);
    bh_buf_t plain;
    bh_buf_init(&plain, 0);
    assert_int_equal(to_server(cl, "ping", t, &plain), BH_EAGAIN);
    assert_int_equal(plain.len, 4);
    assert_memory_equal(plain.data, "ping", 4);
    bh_buf_free(&plain);
    bh_buf_free(&b);
    SSL_free(cl);
    bh_tls_free(t);
    bh_buf_free(&hello);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

static void test_garbage_and_plain_http(void **state) {
    SSL_CTX *sctx = server_ctx("cert1.pem", "key1.pem");
    SSL_CTX *cctx = client_ctx(&g_id1, TLS1_2_VERSION, 0);
    bh_buf_t hello;
    bh_buf_init(&hello, 0);
    client_hello(cctx, &hello);
    /* a valid hello with every byte of its record header and first handshake bytes flipped */
    for (size_t i = 0; i < 12; i++) {
        bh_tls_t *t = NULL;
        assert_int_equal(bh_tls_new(sctx, &t), BH_OK);
        hello.data[i] ^= 0xff;
        assert_int_equal(bh_tls_feed(t, hello.data, hello.len), BH_OK);
        hello.data[i] ^= 0xff;
        int r = bh_tls_handshake(t);
        /* a corrupt length may just mean "more to come"; nothing else may pass */
        assert_true(r == BH_EPROTO || r == BH_EAGAIN);
        assert_false(bh_tls_handshake_done(t));
        if (r == BH_EPROTO)
            assert_true(strlen(bh_tls_error(t)) > 0);
        bh_tls_free(t);
    }
    static const char *const inputs[] = {
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", "\x16\x03\x01\x00\x05hello",
        "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",         "\x17\x03\x03\x00\x10garbagegarbage!!",
        "\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5\xf4",
    };
    static const size_t lens[] = {41, 10, 10, 21, 12};
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
        bh_tls_t *t = NULL;
        assert_int_equal(bh_tls_new(sctx, &t), BH_OK);
        assert_int_equal(bh_tls_feed(t, inputs[i], lens[i]), BH_OK);
        assert_int_equal(bh_tls_handshake(t), BH_EPROTO);
        assert_false(bh_tls_handshake_done(t));
        if (i == 0)
            assert_string_equal(bh_tls_error(t), "http request");
        bh_buf_t out;
        bh_buf_init(&out, 0);
        assert_int_equal(bh_tls_take(t, &out), BH_OK);
        if (out.len > 0)
            assert_int_equal((unsigned char)out.data[0], 0x15); /* at most an alert */
        bh_buf_free(&out);
        bh_tls_free(t);
    }
    bh_buf_free(&hello);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

static void test_close_notify_both_ways(void **state) {
    SSL_CTX *sctx = server_ctx("cert1.pem", "key1.pem");
    SSL_CTX *cctx = client_ctx(&g_id1, TLS1_2_VERSION, 0);
    for (int server_first = 0; server_first < 2; server_first++) {
        bh_tls_t *t = NULL;
        assert_int_equal(bh_tls_new(sctx, &t), BH_OK);
        SSL *cl = client_new(cctx, NULL, 0);
        bh_tls_close_notify(t); /* before the handshake: nothing to send, nothing changes */
        assert_int_equal(bh_tls_pending(t), 0);
        assert_int_equal(pump(cl, t, NULL), BH_OK);
        bh_buf_t plain;
        bh_buf_init(&plain, 0);
        int closed = 0;
        if (server_first) {
            assert_int_equal(bh_tls_write(t, "last words", 10), BH_OK);
            bh_tls_close_notify(t);
            bh_tls_close_notify(t); /* once */
            assert_int_equal(bh_tls_write(t, "more", 4), BH_ECLOSED);
            to_client(t, cl, &plain, &closed);
            assert_true(closed);
            assert_int_equal(plain.len, 10);
            assert_memory_equal(plain.data, "last words", 10);
        } else {
            size_t w;
            assert_int_equal(SSL_write_ex(cl, "bye", 3, &w), 1);
            assert_int_equal(SSL_shutdown(cl), 0);
            assert_int_equal(to_server(cl, NULL, t, &plain), BH_ECLOSED);
            assert_int_equal(plain.len, 3);
            assert_memory_equal(plain.data, "bye", 3);
            bh_tls_close_notify(t); /* the answer */
            bh_buf_reset(&plain);
            to_client(t, cl, &plain, &closed);
            assert_true(closed);
            assert_int_equal(plain.len, 0);
        }
        bh_buf_free(&plain);
        SSL_free(cl);
        bh_tls_free(t);
    }
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

static void test_corrupt_record_after_handshake(void **state) {
    SSL_CTX *sctx = server_ctx("cert1.pem", "key1.pem");
    SSL_CTX *cctx = client_ctx(&g_id1, TLS1_2_VERSION, 0);
    bh_tls_t *t = NULL;
    assert_int_equal(bh_tls_new(sctx, &t), BH_OK);
    SSL *cl = client_new(cctx, NULL, 0);
    assert_int_equal(pump(cl, t, NULL), BH_OK);
    size_t w;
    assert_int_equal(SSL_write_ex(cl, "tampered", 8, &w), 1);
    bh_buf_t b;
    bh_buf_init(&b, 0);
    client_take(cl, &b);
    b.data[b.len - 1] ^= 1; /* the tag no longer matches */
    assert_int_equal(bh_tls_feed(t, b.data, b.len), BH_OK);
    char buf[64];
    size_t n = 5;
    assert_int_equal(bh_tls_read(t, buf, sizeof buf, &n), BH_EPROTO);
    assert_int_equal(n, 0);
    assert_string_equal(bh_tls_error(t), "decryption failed or bad record mac");
    assert_int_equal(bh_tls_write(t, "x", 1), BH_ECLOSED);
    bh_buf_free(&b);
    SSL_free(cl);
    bh_tls_free(t);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

/* ---------------------------------------------------------------------------------------------
 * start-up errors */

static void expect_ctx_error(const char *cert, const char *key, int code, const char *want1,
                             const char *want2) {
    char c[128] = "", k[128] = "", err[512] = "";
    if (cert)
        path_of(c, sizeof c, cert);
    if (key)
        path_of(k, sizeof k, key);
    SSL_CTX *ctx = (SSL_CTX *)&err; /* must stay untouched */
    assert_int_equal(bh_tls_ctx_new(cert ? c : NULL, key ? k : NULL, &ctx, err, sizeof err), code);
    assert_ptr_equal(ctx, (SSL_CTX *)&err);
    assert_non_null(strstr(err, want1));
    if (want2)
        assert_non_null(strstr(err, want2));
    assert_null(strchr(err, '\n')); /* one line */
    assert_int_equal(ERR_peek_error(), 0);
}

static void test_ctx_errors(void **state) {
    char k1[128], c1[128];
    path_of(k1, sizeof k1, "key1.pem");
    path_of(c1, sizeof c1, "cert1.pem");

    expect_ctx_error("missing.pem", "key1.pem", BH_EIO, "cannot read TLS certificate file '",
                     "missing.pem': No such file or directory");
    expect_ctx_error("cert1.pem", "missing.pem", BH_EIO, "cannot read TLS key file '",
                     "missing.pem': No such file or directory");
    expect_ctx_error("cert1.pem", NULL, BH_EINVAL,
                     "TLS needs both a certificate file and a key file", NULL);
    expect_ctx_error(NULL, "key1.pem", BH_EINVAL,
                     "TLS needs both a certificate file and a key file", NULL);
    expect_ctx_error("junk.pem", "key1.pem", BH_EINVAL, "junk.pem' holds no usable PEM certificate",
                     NULL);
    expect_ctx_error("key1.pem", "key1.pem", BH_EINVAL, "holds no usable PEM certificate", NULL);
    expect_ctx_error("cert1.pem", "cert1.pem", BH_EINVAL, "holds no usable PEM private key", NULL);
    expect_ctx_error("cert1.pem", "junk.pem", BH_EINVAL, "holds no usable PEM private key", NULL);
    expect_ctx_error("cert1.pem", "enc.pem", BH_EINVAL,
                     "enc.pem' is passphrase-protected: give the key unencrypted", NULL);
    char want[300];
    snprintf(want, sizeof want, "TLS key file '%s/key2.pem' does not match the certificate in '%s'",
             g_dir, c1);
    expect_ctx_error("cert1.pem", "key2.pem", BH_EINVAL, want, NULL);
    /* a directory opens but is not a readable certificate */
    char err[256] = "", want_dir[128];
    SSL_CTX *ctx = NULL;
    assert_int_equal(bh_tls_ctx_new(g_dir, k1, &ctx, err, sizeof err), BH_EIO);
    assert_null(ctx);
    snprintf(want_dir, sizeof want_dir, "cannot read TLS certificate file '%s': Is a directory",
             g_dir);
    assert_string_equal(err, want_dir);
}

/* ---------------------------------------------------------------------------------------------
 * the listener: a real loop, a TLS client on the same loop */

typedef struct {
    int opens, closes, datas;
    bh_buf_t in; /* plaintext received, all connections */
} handler_state_t;

static handler_state_t g_hs;

static void h_open(bh_conn_t *c, void *ud) {
    handler_state_t *s = ud;
    s->opens++;
    bh_conn_set_data(c, s);
}

/* Echo upper-cased, in two writes (one flush); "close" closes gracefully after the echo. */
static void h_data(bh_conn_t *c, const char *data, size_t len) {
    handler_state_t *s = bh_conn_data(c);
    s->datas++;
    bh_buf_append(&s->in, data, len);
    char up[256];
    size_t n = len < sizeof up ? len : sizeof up;
    for (size_t i = 0; i < n; i++)
        up[i] = (char)(data[i] >= 'a' && data[i] <= 'z' ? data[i] - 32 : data[i]);
    assert_int_equal(bh_conn_write(c, "echo:", 5), BH_OK);
    assert_int_equal(bh_conn_write(c, up, n), BH_OK);
    if (len == 5 && memcmp(data, "close", 5) == 0)
        bh_conn_close(c);
}

static void h_close(bh_conn_t *c) {
    handler_state_t *s = bh_conn_data(c);
    assert_ptr_equal(s, &g_hs);
    s->closes++;
}

static const bh_conn_handler_t g_handler = {h_open, h_data, h_close};

typedef struct {
    uv_tcp_t tcp;
    uv_connect_t creq;
    SSL *ssl;
    bh_buf_t plain;
    int raw; /* sends only what client_raw gives it */
    int connected, handshake_done, failed, close_notify, eof, closed;
} client_t;

typedef struct {
    uv_write_t req;
    char *data;
} wreq_t;

static void on_client_written(uv_write_t *req, int status) {
    wreq_t *w = (wreq_t *)req;
    free(w->data);
    free(w);
}

static void client_flush(client_t *cl) {
    bh_buf_t b;
    bh_buf_init(&b, 0);
    client_take(cl->ssl, &b);
    if (b.len == 0 || cl->closed) {
        bh_buf_free(&b);
        return;
    }
    wreq_t *w = calloc(1, sizeof *w);
    assert_non_null(w);
    w->data = b.data; /* ownership moves to the request */
    uv_buf_t ub = uv_buf_init(b.data, (unsigned)b.len);
    assert_int_equal(uv_write(&w->req, (uv_stream_t *)&cl->tcp, &ub, 1, on_client_written), 0);
}

static void client_drive(client_t *cl) {
    if (cl->raw)
        return;
    ERR_clear_error();
    if (!cl->handshake_done && !cl->failed) {
        int r = SSL_do_handshake(cl->ssl);
        if (r == 1)
            cl->handshake_done = 1;
        else if (SSL_get_error(cl->ssl, r) != SSL_ERROR_WANT_READ)
            cl->failed = 1;
    }
    if (cl->handshake_done) {
        char buf[4096];
        size_t n;
        for (;;) {
            ERR_clear_error();
            if (SSL_read_ex(cl->ssl, buf, sizeof buf, &n) == 1) {
                bh_buf_append(&cl->plain, buf, n);
                continue;
            }
            if (SSL_get_error(cl->ssl, 0) == SSL_ERROR_ZERO_RETURN)
                cl->close_notify = 1;
            break;
        }
    }
    ERR_clear_error();
    client_flush(cl);
}

static void client_alloc(uv_handle_t *h, size_t sz, uv_buf_t *buf) {
    static char mem[65536];
    *buf = uv_buf_init(mem, sizeof mem);
}

static void client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    client_t *cl = s->data;
    if (nread < 0) {
        cl->eof = 1;
        uv_read_stop(s);
        return;
    }
    BIO_write(SSL_get_rbio(cl->ssl), buf->base, (int)nread);
    client_drive(cl);
}

static void client_connected(uv_connect_t *req, int status) {
    client_t *cl = req->data;
    assert_int_equal(status, 0);
    cl->connected = 1;
    uv_read_start((uv_stream_t *)&cl->tcp, client_alloc, client_read);
    client_drive(cl);
}

static void client_start(uv_loop_t *loop, client_t *cl, SSL_CTX *cctx, int port, int raw) {
    memset(cl, 0, sizeof *cl);
    cl->raw = raw;
    bh_buf_init(&cl->plain, 0);
    cl->ssl = client_new(cctx, "\x08http/1.1", 9);
    uv_tcp_init(loop, &cl->tcp);
    cl->tcp.data = cl;
    cl->creq.data = cl;
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", port, &sa);
    assert_int_equal(uv_tcp_connect(&cl->creq, &cl->tcp, (struct sockaddr *)&sa, client_connected),
                     0);
}

static void client_send(client_t *cl, const char *text) {
    size_t w;
    ERR_clear_error();
    assert_int_equal(SSL_write_ex(cl->ssl, text, strlen(text), &w), 1);
    client_flush(cl);
}

static void client_raw(client_t *cl, const char *bytes, size_t len) {
    wreq_t *w = calloc(1, sizeof *w);
    assert_non_null(w);
    w->data = malloc(len);
    memcpy(w->data, bytes, len);
    uv_buf_t ub = uv_buf_init(w->data, (unsigned)len);
    assert_int_equal(uv_write(&w->req, (uv_stream_t *)&cl->tcp, &ub, 1, on_client_written), 0);
}

static void client_closed(uv_handle_t *h) {
    client_t *cl = h->data;
    cl->closed = 1;
}

static void client_stop(client_t *cl) {
    if (!uv_is_closing((uv_handle_t *)&cl->tcp))
        uv_close((uv_handle_t *)&cl->tcp, client_closed);
}

static void client_free(client_t *cl) {
    SSL_free(cl->ssl);
    bh_buf_free(&cl->plain);
}

static int g_watchdog_fired;

static void on_watchdog(uv_timer_t *t) {
    g_watchdog_fired = 1;
}

/* Runs the loop until *flag is set; a watchdog turns a hang into a failed assertion. */
static void run_until_at(uv_loop_t *loop, const int *flag, int line) {
    uv_timer_t dog;
    uv_timer_init(loop, &dog);
    g_watchdog_fired = 0;
    uv_timer_start(&dog, on_watchdog, 10000, 0);
    while (!*flag && !g_watchdog_fired)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&dog, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    if (g_watchdog_fired || !*flag)
        fail_msg("the condition awaited at line %d did not come", line);
}
#define run_until(loop, flag) run_until_at(loop, flag, __LINE__)

static int g_text_ready;
static client_t *g_wait_client;
static const char *g_wait_text;

static void check_text(uv_idle_t *h) {
    g_text_ready = g_wait_client->plain.len >= strlen(g_wait_text);
}

/* Waits until the client has received exactly want (idle check between loop turns). */
static void expect_plain(uv_loop_t *loop, client_t *cl, const char *want) {
    uv_idle_t idle;
    uv_idle_init(loop, &idle);
    g_text_ready = 0;
    g_wait_client = cl;
    g_wait_text = want;
    uv_idle_start(&idle, check_text);
    run_until(loop, &g_text_ready);
    uv_close((uv_handle_t *)&idle, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    assert_int_equal(cl->plain.len, strlen(want));
    assert_memory_equal(cl->plain.data, want, cl->plain.len);
    bh_buf_reset(&cl->plain);
}

static void copy_file(const char *from, const char *to) {
    char a[128], b[128], buf[8192];
    path_of(a, sizeof a, from);
    path_of(b, sizeof b, to);
    FILE *in = fopen(a, "r"), *out = fopen(b, "w");
    assert_non_null(in);
    assert_non_null(out);
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        fwrite(buf, 1, n, out);
    fclose(in);
    fclose(out);
}

static void test_listener_tls_and_reload(void **state) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    memset(&g_hs, 0, sizeof g_hs);
    bh_buf_init(&g_hs.in, 0);
    copy_file("cert1.pem", "live.pem");
    copy_file("key1.pem", "livekey.pem");
    char cert[128], key[128], err[256] = "";
    path_of(cert, sizeof cert, "live.pem");
    path_of(key, sizeof key, "livekey.pem");
    bh_net_config_t cfg = {.max_output = 1 << 20, .tls = {.cert_file = cert, .key_file = key}};
    bh_net_t *net = NULL;
    int port = 0;
    assert_int_equal(
        bh_net_new(&loop, &cfg, "127.0.0.1:0", &g_handler, &g_hs, &net, &port, err, sizeof err),
        BH_OK);
    assert_true(bh_net_tls_enabled(net));
    assert_true(port > 0);

    /* a client trusting both certificates tells them apart by serial */
    SSL_CTX *cctx = client_ctx(&g_id1, TLS1_2_VERSION, 0);
    X509_STORE_add_cert(SSL_CTX_get_cert_store(cctx), g_id2.cert);

    client_t a, b, c, g;
    client_start(&loop, &a, cctx, port, 0);
    run_until(&loop, &a.handshake_done);
    assert_int_equal(peer_serial(a.ssl), 1);
    client_send(&a, "hello");
    expect_plain(&loop, &a, "echo:HELLO");
    assert_int_equal(g_hs.opens, 1);

    /* reload: new files, new connections get the new certificate... */
    copy_file("cert2.pem", "live.pem");
    copy_file("key2.pem", "livekey.pem");
    bh_net_tls_t *next = NULL;
    assert_int_equal(bh_net_tls_load(cert, key, &next, err, sizeof err), BH_OK);
    assert_int_equal(bh_net_set_tls(net, next), BH_OK);
    bh_net_tls_unref(next); /* the listener holds its own reference */
    client_start(&loop, &b, cctx, port, 0);
    run_until(&loop, &b.handshake_done);
    assert_int_equal(peer_serial(b.ssl), 2);
    client_send(&b, "second");
    expect_plain(&loop, &b, "echo:SECOND");
    /* ...while the old connection goes on with the old context */
    client_send(&a, "still here");
    expect_plain(&loop, &a, "echo:STILL HERE");

    /* a failed reload keeps the current certificate and says why in one line */
    copy_file("key1.pem", "livekey.pem");
    next = NULL;
    assert_int_equal(bh_net_tls_load(cert, key, &next, err, sizeof err), BH_EINVAL);
    assert_null(next);
    assert_non_null(strstr(err, "does not match the certificate"));
    client_start(&loop, &c, cctx, port, 0);
    run_until(&loop, &c.handshake_done);
    assert_int_equal(peer_serial(c.ssl), 2);

    /* garbage instead of a ClientHello: closed, and the handler never hears of it */
    int opens = g_hs.opens, closes = g_hs.closes;
    client_start(&loop, &g, cctx, port, 1);
    run_until(&loop, &g.connected);
    client_raw(&g, "GET / HTTP/1.1\r\n\r\n", 18);
    run_until(&loop, &g.eof);
    assert_int_equal(g_hs.opens, opens);
    assert_int_equal(g_hs.closes, closes);

    /* graceful close from the handler: the echo, then close_notify, then the TCP close */
    client_send(&c, "close");
    expect_plain(&loop, &c, "echo:CLOSE");
    run_until(&loop, &c.close_notify);
    run_until(&loop, &c.eof);
    assert_int_equal(g_hs.datas, 4);
    assert_memory_equal(g_hs.in.data, "hellosecondstill hereclose", g_hs.in.len);

    client_stop(&a);
    client_stop(&b);
    client_stop(&c);
    client_stop(&g);
    bh_net_close_all(net);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(g_hs.opens, 3); /* a, b, c: the garbage one never opened */
    assert_int_equal(g_hs.closes, 3);
    bh_net_free(net);
    assert_int_equal(uv_loop_close(&loop), 0);
    client_free(&a);
    client_free(&b);
    client_free(&c);
    client_free(&g);
    SSL_CTX_free(cctx);
    bh_buf_free(&g_hs.in);
}

static void test_listener_errors(void **state) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    char cert[128], key[128], err[256] = "";
    path_of(cert, sizeof cert, "cert1.pem");
    path_of(key, sizeof key, "key2.pem");
    bh_net_config_t cfg = {.tls = {.cert_file = cert, .key_file = key}};
    bh_net_t *net = NULL;
    int port = 0;
    /* a key that does not match: no listener, one line */
    assert_int_equal(
        bh_net_new(&loop, &cfg, "127.0.0.1:0", &g_handler, &g_hs, &net, &port, err, sizeof err),
        BH_EINVAL);
    assert_null(net);
    assert_non_null(strstr(err, "does not match the certificate"));
    cfg.tls.key_file = NULL;
    assert_int_equal(
        bh_net_new(&loop, &cfg, "127.0.0.1:0", &g_handler, &g_hs, &net, &port, err, sizeof err),
        BH_EINVAL);
    assert_string_equal(err, "TLS needs both a certificate file and a key file");
    /* without TLS, reload says so */
    cfg.tls.cert_file = NULL;
    assert_int_equal(
        bh_net_new(&loop, &cfg, "127.0.0.1:0", &g_handler, &g_hs, &net, &port, err, sizeof err),
        BH_OK);
    assert_false(bh_net_tls_enabled(net));
    bh_net_tls_t *loaded = NULL;
    path_of(key, sizeof key, "key1.pem");
    assert_int_equal(bh_net_tls_load(cert, key, &loaded, err, sizeof err), BH_OK);
    assert_int_equal(bh_net_set_tls(net, loaded), BH_EINVAL); /* not a TLS listener */
    bh_net_tls_unref(loaded);
    bh_net_close_all(net);
    uv_run(&loop, UV_RUN_DEFAULT);
    bh_net_free(net);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handshake_and_data),
        cmocka_unit_test(test_tls12_and_alpn_choices),
        cmocka_unit_test(test_old_protocols_refused),
        cmocka_unit_test(test_untrusted_refused_by_client),
        cmocka_unit_test(test_every_prefix_of_client_hello),
        cmocka_unit_test(test_garbage_and_plain_http),
        cmocka_unit_test(test_close_notify_both_ways),
        cmocka_unit_test(test_corrupt_record_after_handshake),
        cmocka_unit_test(test_ctx_errors),
        cmocka_unit_test(test_listener_tls_and_reload),
        cmocka_unit_test(test_listener_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
