/* Server-side TLS as a codec, internal to src/net: OpenSSL over two memory BIOs, so ciphertext
 * goes in and comes out as bytes and no socket is involved (net.c does the I/O; tests drive it
 * with a client SSL in memory). */
#ifndef BH_NET_TLS_H
#define BH_NET_TLS_H

#include <openssl/ssl.h>
#include <stddef.h>

#include "../base/buf.h"

#define BH_TLS_HANDSHAKE_TIMEOUT_MS 10000

/* A server SSL_CTX from PEM files: the certificate (then its chain) and its private key.
 * TLS 1.2+, modern ciphers, ALPN http/1.1, no renegotiation, tickets on. Fails with one line in
 * errmsg (file missing or unreadable, no certificate, key unreadable, key not matching). The
 * caller owns one reference (SSL_CTX_free); every connection made from it holds its own. */
int bh_tls_ctx_new(const char *cert_file, const char *key_file, SSL_CTX **out, char *errmsg,
                   size_t errcap);

typedef struct bh_tls bh_tls_t;

/* One server-side connection on ctx (takes a reference to ctx until bh_tls_free). */
int bh_tls_new(SSL_CTX *ctx, bh_tls_t **out);
void bh_tls_free(bh_tls_t *t);
/* Ciphertext from the peer. BH_ENOMEM on failure. */
int bh_tls_feed(bh_tls_t *t, const void *data, size_t len);
/* Advance the handshake on what was fed: BH_OK done (also when it already was), BH_EAGAIN
 * needs more input, BH_EPROTO failed (any alert is in the output; bh_tls_error says why). */
int bh_tls_handshake(bh_tls_t *t);
int bh_tls_handshake_done(const bh_tls_t *t);
/* Decrypt the next plaintext into buf: BH_OK with *n > 0; BH_EAGAIN when no complete record
 * is left; BH_ECLOSED when the peer sent close_notify; BH_EPROTO on a broken stream. */
int bh_tls_read(bh_tls_t *t, char *buf, size_t cap, size_t *n);
/* Encrypt len bytes of plaintext (one SSL_write; records go to the output). BH_ECLOSED before
 * the handshake is done, after a failure or after close_notify; BH_EPROTO on failure. */
int bh_tls_write(bh_tls_t *t, const void *data, size_t len);
/* Queue close_notify once; does nothing before the handshake is done or after a failure. */
void bh_tls_close_notify(bh_tls_t *t);
/* Ciphertext waiting to be sent. */
size_t bh_tls_pending(const bh_tls_t *t);
/* Move all pending ciphertext to the end of out (BH_ENOMEM / BH_ETOOBIG leave it pending). */
int bh_tls_take(bh_tls_t *t, bh_buf_t *out);
/* Why the last failure happened ("wrong version number"), "" if none. */
const char *bh_tls_error(const bh_tls_t *t);
/* The negotiated protocol, e.g. "TLSv1.3", and ALPN (NULL when none). */
const char *bh_tls_version(const bh_tls_t *t);
const char *bh_tls_alpn(const bh_tls_t *t, size_t *len);

#endif
