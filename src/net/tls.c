/* Server-side TLS over memory BIOs: builds the SSL_CTX from PEM files with one clear error line,
 * and runs each connection's handshake, records and close_notify without touching a socket. */
#include "tls.h"

#include <errno.h>
#include <limits.h>
#include <openssl/buffer.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/error.h"
#include "../base/log.h"

/* TLS 1.2 suites with forward secrecy and AEAD only (TLS 1.3 suites are all of that). */
#define TLS12_CIPHERS                                                                              \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                                   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define TLS13_SUITES "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#define TLS_GROUPS "X25519:P-256:P-384"
/* An emptied memory BIO keeps its largest allocation; above this it is replaced, so a burst
 * does not stay allocated on an idle connection. */
#define BIO_KEEP_MAX 32768

struct bh_tls {
    SSL *ssl;
    BIO *in;  /* ciphertext from the peer, read by OpenSSL (owned by ssl) */
    BIO *out; /* ciphertext for the peer, written by OpenSSL (owned by ssl) */
    unsigned done : 1, failed : 1, shut : 1;
    char err[128];
};

/* The reason of the newest queued OpenSSL error, or fallback; clears the queue. */
static void last_error(char *out, size_t cap, const char *fallback) {
    unsigned long e = ERR_peek_last_error();
    const char *reason = e ? ERR_reason_error_string(e) : NULL;
    snprintf(out, cap, "%s", reason ? reason : fallback);
    ERR_clear_error();
}

/* A passphrase-protected key must fail, not prompt on the terminal. */
static int no_passphrase(char *buf, int size, int rwflag, void *ud) {
    return 0;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg) {
    static const unsigned char ours[] = "\x08http/1.1";
    if (SSL_select_next_proto((unsigned char **)out, outlen, ours, sizeof ours - 1, in, inlen) ==
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_OK;
    /* No overlap: go on without ALPN rather than fail; the request line tells the rest. */
    return SSL_TLSEXT_ERR_NOACK;
}

/* The system says precisely why a path is unusable (OpenSSL's own messages are vaguer). A
 * directory opens but does not read. */
static int check_readable(const char *what, const char *path, char *errmsg, size_t errcap) {
    FILE *f = fopen(path, "r");
    int err = f ? 0 : errno;
    if (f) {
        errno = 0;
        if (fgetc(f) == EOF && ferror(f))
            err = errno ? errno : EIO;
        fclose(f);
    }
    if (err) {
        snprintf(errmsg, errcap, "cannot read TLS %s file '%s': %s", what, path, strerror(err));
        return BH_EIO;
    }
    return BH_OK;
}

/* Whether the PEM file holds an encrypted key (traditional or PKCS#8 form). */
static int pem_encrypted(const char *path) {
    char buf[4096];
    FILE *f = fopen(path, "r");
    int found = 0;
    if (!f)
        return 0;
    while (!found && fgets(buf, sizeof buf, f))
        found = strstr(buf, "ENCRYPTED") != NULL;
    fclose(f);
    return found;
}

static void warn_validity(SSL_CTX *ctx, const char *cert_file) {
    X509 *cert = SSL_CTX_get0_certificate(ctx);
    if (!cert)
        return;
    if (X509_cmp_current_time(X509_get0_notAfter(cert)) < 0)
        bh_log(BH_LOG_WARN, "TLS certificate has expired", BH_LS("file", cert_file));
    else if (X509_cmp_current_time(X509_get0_notBefore(cert)) > 0)
        bh_log(BH_LOG_WARN, "TLS certificate is not valid yet", BH_LS("file", cert_file));
}

int bh_tls_ctx_new(const char *cert_file, const char *key_file, SSL_CTX **out, char *errmsg,
                   size_t errcap) {
    char why[128];
    EVP_PKEY *key = NULL;
    if (!cert_file || !*cert_file || !key_file || !*key_file) {
        snprintf(errmsg, errcap, "TLS needs both a certificate file and a key file");
        return BH_EINVAL;
    }
    int r = check_readable("certificate", cert_file, errmsg, errcap);
    if (r == 0)
        r = check_readable("key", key_file, errmsg, errcap);
    if (r < 0)
        return r;
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        snprintf(errmsg, errcap, "cannot create the TLS context: out of memory");
        return BH_ENOMEM;
    }
    r = BH_EINVAL;
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
        !SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS) ||
        !SSL_CTX_set_ciphersuites(ctx, TLS13_SUITES) ||
        !SSL_CTX_set1_groups_list(ctx, TLS_GROUPS)) {
        last_error(why, sizeof why, "unknown error");
        snprintf(errmsg, errcap, "cannot configure TLS: %s", why);
        goto fail;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    /* Idle connections (most WebSockets) give their record buffers back. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        ERR_clear_error();
        snprintf(errmsg, errcap, "TLS certificate file '%s' holds no usable PEM certificate",
                 cert_file);
        goto fail;
    }
    /* Read the key apart from installing it, so "unreadable" and "not matching" differ. */
    FILE *f = fopen(key_file, "r");
    key = f ? PEM_read_PrivateKey(f, NULL, no_passphrase, NULL) : NULL;
    if (f)
        fclose(f);
    if (!key) {
        ERR_clear_error();
        if (pem_encrypted(key_file))
            snprintf(errmsg, errcap,
                     "TLS key file '%s' is passphrase-protected: give the key unencrypted",
                     key_file);
        else
            snprintf(errmsg, errcap, "TLS key file '%s' holds no usable PEM private key", key_file);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey(ctx, key) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        snprintf(errmsg, errcap, "TLS key file '%s' does not match the certificate in '%s'",
                 key_file, cert_file);
        goto fail;
    }
    warn_validity(ctx, cert_file);
    EVP_PKEY_free(key);
    *out = ctx;
    return BH_OK;
fail:
    EVP_PKEY_free(key);
    SSL_CTX_free(ctx);
    return r;
}

int bh_tls_new(SSL_CTX *ctx, bh_tls_t **out) {
    bh_tls_t *t = calloc(1, sizeof *t);
    if (!t)
        return BH_ENOMEM;
    t->ssl = SSL_new(ctx);
    t->in = BIO_new(BIO_s_mem());
    t->out = BIO_new(BIO_s_mem());
    if (!t->ssl || !t->in || !t->out)
        goto fail;
    /* An empty input BIO means "wait for more", never end of stream. */
    BIO_set_mem_eof_return(t->in, -1);
    BIO_set_mem_eof_return(t->out, -1);
    SSL_set_bio(t->ssl, t->in, t->out);
    SSL_set_accept_state(t->ssl);
    *out = t;
    return BH_OK;
fail:
    SSL_free(t->ssl);
    BIO_free(t->in);
    BIO_free(t->out);
    free(t);
    ERR_clear_error();
    return BH_ENOMEM;
}

void bh_tls_free(bh_tls_t *t) {
    if (!t)
        return;
    SSL_free(t->ssl); /* frees both BIOs */
    free(t);
}

static int set_failed(bh_tls_t *t, int sslerr) {
    t->failed = 1;
    const char *fallback = sslerr == SSL_ERROR_SYSCALL ? "unexpected end of stream" : "TLS error";
    last_error(t->err, sizeof t->err, fallback);
    return BH_EPROTO;
}

/* A fresh BIO in place of an empty one that grew large; keeps the old one if allocation fails. */
static BIO *shrink(BIO *b) {
    BUF_MEM *bm = NULL;
    if (BIO_ctrl_pending(b) > 0 || BIO_get_mem_ptr(b, &bm) != 1 || !bm || bm->max <= BIO_KEEP_MAX)
        return NULL;
    BIO *fresh = BIO_new(BIO_s_mem());
    if (fresh)
        BIO_set_mem_eof_return(fresh, -1);
    return fresh;
}

int bh_tls_feed(bh_tls_t *t, const void *data, size_t len) {
    const char *p = data;
    while (len > 0) {
        int chunk = len > INT_MAX ? INT_MAX : (int)len;
        int w = BIO_write(t->in, p, chunk);
        if (w <= 0) {
            ERR_clear_error();
            return BH_ENOMEM;
        }
        p += w;
        len -= (size_t)w;
    }
    return BH_OK;
}

int bh_tls_handshake(bh_tls_t *t) {
    if (t->failed)
        return BH_EPROTO;
    if (t->done)
        return BH_OK;
    ERR_clear_error();
    int r = SSL_do_handshake(t->ssl);
    if (r == 1) {
        t->done = 1;
        return BH_OK;
    }
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return BH_EAGAIN;
    return set_failed(t, e);
}

int bh_tls_handshake_done(const bh_tls_t *t) {
    return t->done && !t->failed;
}

int bh_tls_read(bh_tls_t *t, char *buf, size_t cap, size_t *n) {
    *n = 0;
    if (t->failed || !t->done)
        return BH_EPROTO;
    ERR_clear_error();
    size_t got = 0;
    if (SSL_read_ex(t->ssl, buf, cap, &got) == 1) {
        *n = got;
        return BH_OK;
    }
    int e = SSL_get_error(t->ssl, 0);
    /* WANT_WRITE cannot really happen (the output BIO never fills); either way, the caller
     * sends what is pending and comes back with more input. */
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        BIO *fresh = shrink(t->in);
        if (fresh) {
            SSL_set0_rbio(t->ssl, fresh); /* frees the old one */
            t->in = fresh;
        }
        ERR_clear_error();
        return BH_EAGAIN;
    }
    if (e == SSL_ERROR_ZERO_RETURN) {
        ERR_clear_error();
        return BH_ECLOSED;
    }
    return set_failed(t, e);
}

int bh_tls_write(bh_tls_t *t, const void *data, size_t len) {
    if (t->failed || !t->done || t->shut)
        return BH_ECLOSED;
    if (len == 0)
        return BH_OK;
    ERR_clear_error();
    size_t written = 0;
    /* Without partial writes and with an output BIO that never fills, this is all or error. */
    if (SSL_write_ex(t->ssl, data, len, &written) == 1 && written == len)
        return BH_OK;
    return set_failed(t, SSL_get_error(t->ssl, 0));
}

void bh_tls_close_notify(bh_tls_t *t) {
    if (t->failed || !t->done || t->shut)
        return;
    t->shut = 1;
    ERR_clear_error();
    /* 0 = sent, the peer's close_notify not seen: we do not wait for it (the TCP close does). */
    SSL_shutdown(t->ssl);
    ERR_clear_error();
}

size_t bh_tls_pending(const bh_tls_t *t) {
    return BIO_ctrl_pending(t->out);
}

int bh_tls_take(bh_tls_t *t, bh_buf_t *out) {
    size_t pending = BIO_ctrl_pending(t->out);
    while (pending > 0) {
        int chunk = pending > INT_MAX ? INT_MAX : (int)pending;
        int r = bh_buf_reserve(out, (size_t)chunk);
        if (r < 0)
            return r;
        int got = BIO_read(t->out, out->data + out->len, chunk);
        if (got <= 0)
            break;
        out->len += (size_t)got;
        out->data[out->len] = '\0';
        pending = BIO_ctrl_pending(t->out);
    }
    BIO *fresh = shrink(t->out);
    if (fresh) {
        SSL_set0_wbio(t->ssl, fresh); /* frees the old one */
        t->out = fresh;
    }
    return BH_OK;
}

const char *bh_tls_error(const bh_tls_t *t) {
    return t->err;
}

const char *bh_tls_version(const bh_tls_t *t) {
    return SSL_get_version(t->ssl);
}

const char *bh_tls_alpn(const bh_tls_t *t, size_t *len) {
    const unsigned char *p = NULL;
    unsigned int n = 0;
    SSL_get0_alpn_selected(t->ssl, &p, &n);
    *len = n;
    return n ? (const char *)p : NULL;
}
