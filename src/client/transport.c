/* The client's byte pipe: one non-blocking TCP socket, optionally TLS. OpenSSL runs over memory
 * BIOs and this file moves the bytes with send(MSG_NOSIGNAL)/recv itself, so a peer that went
 * away can never raise SIGPIPE in the application, and TLS is just a transform between the
 * plaintext queue (out) and the socket queue (net). Certificate and host name verification are
 * set per connection here; the trust store is the SSL_CTX's (client.c). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "../base/error.h"
#include "internal.h"

#define READ_CHUNK 16384
#define READ_BUDGET (256 * 1024) /* bytes read per pump, so one flood cannot starve the rest */
#define RBIO_MAX (1024 * 1024)   /* TLS records read ahead of the decryption */

void bh_cl_transport_init(bh_cl_transport_t *t) {
    memset(t, 0, sizeof(*t));
    t->fd = -1;
    bh_buf_init(&t->out, 0);
    bh_buf_init(&t->net, 0);
}

void bh_cl_transport_close(bh_cl_transport_t *t) {
    if (t->ssl)
        SSL_free(t->ssl); /* frees both BIOs */
    if (t->fd >= 0)
        close(t->fd);
    bh_buf_free(&t->out);
    bh_buf_free(&t->net);
    bh_cl_transport_init(t);
}

static int is_ip(const char *host) {
    unsigned char tmp[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, tmp) == 1 || inet_pton(AF_INET6, host, tmp) == 1;
}

static int tls_setup(bh_cl_transport_t *t, SSL_CTX *tls, const char *host, char *err,
                     size_t err_size) {
    X509_VERIFY_PARAM *param;

    if (!(t->ssl = SSL_new(tls)) || !(t->rbio = BIO_new(BIO_s_mem())) ||
        !(t->wbio = BIO_new(BIO_s_mem()))) {
        BIO_free(t->rbio);
        BIO_free(t->wbio);
        t->rbio = t->wbio = NULL;
        snprintf(err, err_size, "cannot set up TLS: out of memory");
        return BH_CLIENT_ENOMEM;
    }
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    SSL_set_connect_state(t->ssl);
    /* the certificate must name the host we asked for: a trusted certificate for another
     * name is as bad as an untrusted one */
    param = SSL_get0_param(t->ssl);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (is_ip(host)) {
        if (X509_VERIFY_PARAM_set1_ip_asc(param, host) != 1)
            goto fail;
    } else if (SSL_set_tlsext_host_name(t->ssl, host) != 1 ||
               X509_VERIFY_PARAM_set1_host(param, host, 0) != 1) {
        goto fail;
    }
    return BH_CLIENT_OK;
fail:
    snprintf(err, err_size, "cannot set up TLS for host %s", host);
    return BH_CLIENT_ETLS;
}

int bh_cl_transport_open(bh_cl_transport_t *t, const struct sockaddr *sa, socklen_t salen,
                         SSL_CTX *tls, const char *host, char *err, size_t err_size) {
    int one = 1, r;

    bh_cl_transport_close(t);
    t->fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (t->fd < 0) {
        snprintf(err, err_size, "cannot create a socket: %s", strerror(errno));
        return BH_CLIENT_EIO;
    }
    /* small messages (invocations, pings) should leave at once */
    setsockopt(t->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(t->fd, sa, salen) == 0) {
        t->tcp_up = 1;
    } else if (errno != EINPROGRESS) {
        snprintf(err, err_size, "cannot connect to %s: %s", host, strerror(errno));
        bh_cl_transport_close(t);
        return BH_CLIENT_ECONNECT;
    }
    if (tls && (r = tls_setup(t, tls, host, err, err_size)) != BH_CLIENT_OK) {
        bh_cl_transport_close(t);
        return r;
    }
    return BH_CLIENT_OK;
}

int bh_cl_transport_ready(const bh_cl_transport_t *t) {
    return t->fd >= 0 && t->tcp_up && (t->ssl == NULL || t->tls_up);
}

short bh_cl_transport_events(const bh_cl_transport_t *t) {
    if (t->fd < 0)
        return 0;
    if (!t->tcp_up)
        return POLLOUT;
    return (short)(POLLIN | (t->net.len > 0 ? POLLOUT : 0));
}

int bh_cl_transport_write(bh_cl_transport_t *t, const char *data, size_t len) {
    int r = bh_buf_append(t->ssl ? &t->out : &t->net, data, len);
    return r == BH_OK ? BH_CLIENT_OK : BH_CLIENT_ENOMEM;
}

/* Describe the failed TLS operation from the verify result or OpenSSL's error queue. */
static int tls_error(bh_cl_transport_t *t, const char *what, char *err, size_t err_size) {
    long v = SSL_get_verify_result(t->ssl);
    unsigned long e = ERR_get_error();
    char text[256];

    if (!t->tls_up && v != X509_V_OK) {
        t->verify_failed = 1;
        snprintf(err, err_size, "the server's certificate was not accepted: %s",
                 X509_verify_cert_error_string(v));
    } else {
        if (e != 0)
            ERR_error_string_n(e, text, sizeof(text));
        else
            snprintf(text, sizeof(text), "unexpected end of the TLS stream");
        snprintf(err, err_size, "TLS %s failed: %s", what, text);
    }
    ERR_clear_error();
    return BH_CLIENT_ETLS;
}

/* Move the TLS engine's output into the socket queue. */
static int drain_wbio(bh_cl_transport_t *t) {
    size_t pending;

    while ((pending = BIO_ctrl_pending(t->wbio)) > 0) {
        int n;
        if (bh_buf_reserve(&t->net, pending) != BH_OK)
            return BH_CLIENT_ENOMEM;
        n = BIO_read(t->wbio, t->net.data + t->net.len, (int)pending);
        if (n <= 0)
            break;
        t->net.len += (size_t)n;
        t->net.data[t->net.len] = '\0';
    }
    return BH_CLIENT_OK;
}

/* Advance the TLS handshake and encrypt queued plaintext once it is done. */
static int tls_step(bh_cl_transport_t *t, char *err, size_t err_size) {
    int n, r;

    if (!t->tls_up) {
        ERR_clear_error();
        n = SSL_do_handshake(t->ssl);
        if (n == 1) {
            t->tls_up = 1;
        } else {
            int e = SSL_get_error(t->ssl, n);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                drain_wbio(t); /* the alert telling the server why */
                return tls_error(t, "handshake", err, err_size);
            }
        }
    }
    if (t->tls_up && t->out.len > 0) {
        ERR_clear_error();
        n = SSL_write(t->ssl, t->out.data, (int)t->out.len); /* memory BIO: all or error */
        if (n <= 0)
            return tls_error(t, "write", err, err_size);
        bh_buf_consume(&t->out, (size_t)n);
    }
    r = drain_wbio(t);
    if (r != BH_CLIENT_OK)
        snprintf(err, err_size, "out of memory");
    return r;
}

static int send_net(bh_cl_transport_t *t, char *err, size_t err_size) {
    while (t->net.len > 0) {
        ssize_t n = send(t->fd, t->net.data, t->net.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n < 0) {
            snprintf(err, err_size, "cannot send to the server: %s", strerror(errno));
            return BH_CLIENT_EIO;
        }
        bh_buf_consume(&t->net, (size_t)n);
    }
    return BH_CLIENT_OK;
}

/* Decrypt what the TLS engine holds into in, while in has room. */
static int tls_read(bh_cl_transport_t *t, bh_buf_t *in, char *err, size_t err_size) {
    char buf[READ_CHUNK];

    while (t->tls_up && (in->max == 0 || in->len < in->max)) {
        size_t room = in->max ? in->max - in->len : sizeof(buf);
        int n, e;
        ERR_clear_error();
        n = SSL_read(t->ssl, buf, (int)(room < sizeof(buf) ? room : sizeof(buf)));
        if (n > 0) {
            if (bh_buf_append(in, buf, (size_t)n) != BH_OK) {
                snprintf(err, err_size, "out of memory");
                return BH_CLIENT_ENOMEM;
            }
            continue;
        }
        e = SSL_get_error(t->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            break;
        if (e == SSL_ERROR_ZERO_RETURN) { /* close_notify */
            t->eof = 1;
            break;
        }
        return tls_error(t, "read", err, err_size);
    }
    return BH_CLIENT_OK;
}

/* Read from the socket into in (plain) or the TLS engine. *got: something arrived. */
static int recv_net(bh_cl_transport_t *t, bh_buf_t *in, int *got, char *err, size_t err_size) {
    char buf[READ_CHUNK];
    size_t budget = READ_BUDGET;

    *got = 0;
    while (!t->eof && budget > 0) {
        size_t want = sizeof(buf);
        ssize_t n;
        if (t->ssl == NULL && in->max > 0)
            want = in->max > in->len ? in->max - in->len : 0;
        if (t->ssl != NULL && BIO_ctrl_pending(t->rbio) > RBIO_MAX)
            want = 0;
        if (want == 0)
            break; /* the caller has not consumed what it has: leave the rest in the kernel */
        if (want > sizeof(buf))
            want = sizeof(buf);
        n = recv(t->fd, buf, want, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n < 0 && errno != ECONNRESET) {
            snprintf(err, err_size, "cannot read from the server: %s", strerror(errno));
            return BH_CLIENT_EIO;
        }
        if (n <= 0) {
            t->eof = 1; /* an orderly close or a reset: either way the server is gone */
            break;
        }
        *got = 1;
        budget -= (size_t)n < budget ? (size_t)n : budget;
        if (t->ssl == NULL) {
            if (bh_buf_append(in, buf, (size_t)n) != BH_OK) {
                snprintf(err, err_size, "out of memory");
                return BH_CLIENT_ENOMEM;
            }
        } else if (BIO_write(t->rbio, buf, (int)n) != (int)n) {
            snprintf(err, err_size, "out of memory");
            return BH_CLIENT_ENOMEM;
        }
    }
    return BH_CLIENT_OK;
}

int bh_cl_transport_pump(bh_cl_transport_t *t, bh_buf_t *in, char *err, size_t err_size) {
    int r, got = 1, rounds = 0;

    if (t->fd < 0)
        return BH_CLIENT_OK;
    if (!t->tcp_up) {
        struct pollfd p = {t->fd, POLLOUT, 0};
        int soerr = 0;
        socklen_t len = sizeof(soerr);
        if (poll(&p, 1, 0) <= 0)
            return BH_CLIENT_OK; /* still connecting */
        if (getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
            soerr = errno;
        if (soerr != 0) {
            snprintf(err, err_size, "cannot connect: %s", strerror(soerr));
            return BH_CLIENT_ECONNECT;
        }
        t->tcp_up = 1;
    }
    /* a TLS handshake needs several turns of write, read, write: go on while bytes arrive */
    while (got && rounds++ < 8) {
        if (t->ssl && (r = tls_step(t, err, err_size)) != BH_CLIENT_OK)
            return r;
        if ((r = send_net(t, err, err_size)) != BH_CLIENT_OK)
            return r;
        if ((r = recv_net(t, in, &got, err, err_size)) != BH_CLIENT_OK)
            return r;
        if (t->ssl && (r = tls_step(t, err, err_size)) != BH_CLIENT_OK)
            return r;
        if (t->ssl && (r = tls_read(t, in, err, err_size)) != BH_CLIENT_OK)
            return r;
        if ((r = send_net(t, err, err_size)) != BH_CLIENT_OK)
            return r;
    }
    return BH_CLIENT_OK;
}
