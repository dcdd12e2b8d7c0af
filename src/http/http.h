/* HTTP/1.1 request parsing, query strings and response writing. Codec only: bytes in,
 * structures out, never a socket. */
#ifndef BH_HTTP_HTTP_H
#define BH_HTTP_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "../base/buf.h"

#define BH_HTTP_MAX_HEADERS 64

typedef enum {
    BH_HTTP_OTHER = 0,
    BH_HTTP_GET,
    BH_HTTP_HEAD,
    BH_HTTP_POST,
    BH_HTTP_PUT,
    BH_HTTP_DELETE,
    BH_HTTP_OPTIONS,
} bh_http_method_t;

typedef struct {
    const char *name, *value; /* point into the parsed buffer; not NUL-terminated */
    size_t name_len, value_len;
} bh_http_header_t;

typedef struct {
    bh_http_method_t method;
    const char *method_str, *target, *path, *query; /* query excludes '?'; NULL when absent */
    size_t method_len, target_len, path_len, query_len;
    int minor_version; /* 0 or 1 (HTTP/1.x only) */
    bh_http_header_t headers[BH_HTTP_MAX_HEADERS];
    size_t nheaders;
    size_t head_len;         /* bytes of request line + headers + final CRLF CRLF */
    uint64_t content_length; /* 0 when absent */
    int keep_alive;          /* per version default and Connection header */
    int upgrade_websocket;   /* Upgrade: websocket and Connection contains upgrade */
} bh_http_request_t;

/* Parse the head of a request from buf[0..len).
 * Returns the head length (> 0) when complete; BH_EAGAIN when more bytes are needed (and
 * len < max_head); otherwise a negative error with *status set to the answer to send:
 * 400 malformed, 431 head larger than max_head or too many headers, 501 Transfer-Encoding
 * (chunked request bodies are not supported), 505 not HTTP/1.x, 413 never (the caller
 * compares content_length with its own body limit). Pointers in req point into buf. */
int bh_http_parse_request(const char *buf, size_t len, size_t max_head, bh_http_request_t *req,
                          int *status);

/* Header value by case-insensitive name, or NULL; *len receives the value length. */
const char *bh_http_header(const bh_http_request_t *req, const char *name, size_t *len);

/* Value of query parameter name, percent-decoded ('+' as space) into out (NUL-terminated).
 * Returns the decoded length, BH_ENOTFOUND when absent, BH_ETOOBIG when it does not fit
 * outcap-1, BH_EINVAL on a bad %-escape. */
int bh_http_query_param(const char *query, size_t query_len, const char *name, char *out,
                        size_t outcap);

/* Reason phrase for a status code ("OK", "Not Found", ...). */
const char *bh_http_reason(int status);

/* Append a complete response: status line, Content-Type (when ctype is non-NULL),
 * Content-Length, Connection: close when !keep_alive, any extra header lines (each ending
 * in CRLF, may be NULL), blank line, body. */
int bh_http_write_response(bh_buf_t *out, int status, const char *ctype, const char *extra,
                           const char *body, size_t body_len, int keep_alive);

#endif
