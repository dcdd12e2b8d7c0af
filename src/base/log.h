/* Structured one-line logs to stderr: a timestamp, a level, a constant message and typed
 * key/value fields, as logfmt (default) or JSON, one write(2) per line so lines from several
 * threads never interleave. Never log an API key, a token, or a balance: ids and counts only.
 *
 *   bh_log(BH_LOG_WARN, "slow consumer closed", BH_LU("conn", id), BH_LS("peer", peer));
 *   -> ts=2026-11-27T07:00:00.000Z level=warn msg="slow consumer closed" conn=42
 * peer=127.0.0.1:5555
 *   -> {"ts":"2026-11-27T07:00:00.000Z","level":"warn","msg":"slow consumer closed","conn":42,...}
 */
#ifndef BH_BASE_LOG_H
#define BH_BASE_LOG_H

#include <stddef.h>

enum { BH_LOG_DEBUG, BH_LOG_INFO, BH_LOG_WARN, BH_LOG_ERROR };
enum { BH_LOG_LOGFMT, BH_LOG_JSON };

typedef struct {
    const char *key;
    char type; /* 's' string (NULL prints as empty), 'i' signed, 'u' unsigned, 'f' double */
    union {
        const char *s;
        long long i;
        unsigned long long u;
        double f;
    } v;
} bh_log_field_t;

#define BH_LS(k, x) ((bh_log_field_t){.key = (k), .type = 's', .v.s = (x)})
#define BH_LI(k, x) ((bh_log_field_t){.key = (k), .type = 'i', .v.i = (long long)(x)})
#define BH_LU(k, x) ((bh_log_field_t){.key = (k), .type = 'u', .v.u = (unsigned long long)(x)})
#define BH_LF(k, x) ((bh_log_field_t){.key = (k), .type = 'f', .v.f = (double)(x)})

/* Log msg with fields (at least one; use bh_log_msg for none). */
#define bh_log(level, msg, ...)                                                                    \
    bh_log_fields((level), (msg), (const bh_log_field_t[]){__VA_ARGS__},                           \
                  sizeof((const bh_log_field_t[]){__VA_ARGS__}) / sizeof(bh_log_field_t))
#define bh_log_msg(level, msg) bh_log_fields((level), (msg), NULL, 0)

void bh_log_fields(int level, const char *msg, const bh_log_field_t *fields, size_t n);

/* Thread-safe settings, changeable at any time (SIGHUP re-reads the level). */
void bh_log_set_level(int level);
int bh_log_level(void);
void bh_log_set_format(int format);
/* "debug" "info" "warn" "error" -> level; "logfmt" "json" -> format. BH_EINVAL otherwise. */
int bh_log_parse_level(const char *s, int *level);
int bh_log_parse_format(const char *s, int *format);

#endif
