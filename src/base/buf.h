/* Growable byte buffer with a hard cap: the one owner of every variable-size byte run
 * (socket input, frames queued for output, serialized JSON). */
#ifndef BH_BASE_BUF_H
#define BH_BASE_BUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct {
    char *data; /* always NUL-terminated when cap > 0 (not counted in len) */
    size_t len;
    size_t cap;
    size_t max; /* hard cap on len; 0 = unlimited */
} bh_buf_t;

/* Initialise an empty buffer that may grow up to max bytes (0 = no cap). Allocates nothing. */
void bh_buf_init(bh_buf_t *b, size_t max);
/* Release the storage; the buffer is empty and reusable afterwards. */
void bh_buf_free(bh_buf_t *b);
/* Make room for extra more bytes: BH_OK, BH_ENOMEM, or BH_ETOOBIG past the cap. */
int bh_buf_reserve(bh_buf_t *b, size_t extra);
/* Append bytes; on failure the buffer is unchanged. */
int bh_buf_append(bh_buf_t *b, const void *p, size_t n);
int bh_buf_appends(bh_buf_t *b, const char *s);
int bh_buf_appendc(bh_buf_t *b, char c);
int bh_buf_printf(bh_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drop the first n bytes (n <= len). */
void bh_buf_consume(bh_buf_t *b, size_t n);
/* Set len to 0, keep the storage. */
void bh_buf_reset(bh_buf_t *b);

#endif
