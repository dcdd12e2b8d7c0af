/* Structured one-line logs to stderr (logfmt or JSON). Each line is built in one stack buffer
 * of at most LOG_LINE_MAX bytes and written with one write(2): at or below PIPE_BUF a write to a
 * pipe is atomic, so lines from several threads never interleave. */
#include "base/log.h"

#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/error.h"

#define LOG_LINE_MAX 4096 /* newline included; the atomic pipe write size on Linux */
/* Room kept back for what closes a truncated line: a quote, the marker, '}' and '\n'. */
#define LOG_LINE_RESERVE 32

static _Atomic int log_level = BH_LOG_INFO;
static _Atomic int log_format = BH_LOG_LOGFMT;

typedef struct {
    char buf[LOG_LINE_MAX];
    size_t len;
    size_t cap;    /* LOG_LINE_MAX - LOG_LINE_RESERVE: content beyond this is truncated */
    int truncated; /* something was cut or left out */
    int json;
} line_t;

void bh_log_set_level(int level) {
    atomic_store(&log_level, level); /* above BH_LOG_ERROR: nothing is logged */
}

int bh_log_level(void) {
    return atomic_load(&log_level);
}

void bh_log_set_format(int format) {
    atomic_store(&log_format, format == BH_LOG_JSON ? BH_LOG_JSON : BH_LOG_LOGFMT);
}

int bh_log_parse_level(const char *s, int *level) {
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; s && i < 4; i++) {
        if (strcmp(s, names[i]) == 0) {
            *level = BH_LOG_DEBUG + i;
            return BH_OK;
        }
    }
    return BH_EINVAL;
}

int bh_log_parse_format(const char *s, int *format) {
    if (s && strcmp(s, "logfmt") == 0)
        *format = BH_LOG_LOGFMT;
    else if (s && strcmp(s, "json") == 0)
        *format = BH_LOG_JSON;
    else
        return BH_EINVAL;
    return BH_OK;
}

/* Append n bytes if they fit below the cap; otherwise mark the line truncated. */
static int put(line_t *l, const char *s, size_t n) {
    if (l->truncated || n > l->cap - l->len) {
        l->truncated = 1;
        return BH_ETOOBIG;
    }
    memcpy(l->buf + l->len, s, n);
    l->len += n;
    return BH_OK;
}

static int puts_(line_t *l, const char *s) {
    return put(l, s, strlen(s));
}

/* Closing bytes go into the reserve, so they always fit. */
static void put_closing(line_t *l, const char *s) {
    size_t n = strlen(s);
    if (n > LOG_LINE_MAX - l->len)
        n = LOG_LINE_MAX - l->len; /* cannot happen: the reserve holds every closing sequence */
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0 when it is not one:
 * overlong forms, surrogates and code points above U+10FFFF are invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t len;
    unsigned cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return len;
}

/* The body of a quoted string (JSON, and logfmt's quoted values): quote and backslash escaped,
 * control characters as \n \r \t or \u00XX, invalid UTF-8 bytes as \ufffd. A value that does
 * not fit is cut between two whole characters (never inside an escape or a UTF-8 sequence). */
static void put_escaped(line_t *l, const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        char esc[8];
        const char *piece = esc;
        size_t plen, adv = 1;
        unsigned c = p[i];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            plen = 2;
        } else if (c == '\n' || c == '\r' || c == '\t') {
            esc[0] = '\\';
            esc[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
            plen = 2;
        } else if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            plen = 6;
        } else if (c < 0x80) {
            piece = (const char *)p + i;
            plen = 1;
        } else if ((adv = utf8_seq(p + i, n - i)) > 0) {
            piece = (const char *)p + i;
            plen = adv;
        } else {
            piece = "\\ufffd";
            plen = 6;
            adv = 1;
        }
        if (put(l, piece, plen) < 0)
            return;
        i += adv;
    }
}

/* logfmt leaves a value bare when a reader can split it on spaces and '=' unambiguously. */
static int logfmt_needs_quotes(const char *s) {
    if (!*s)
        return 1;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p <= ' ' || *p == '=' || *p == '"' || *p == '\\' || *p >= 0x7f)
            return 1;
    }
    return 0;
}

/* A key as written: JSON escapes it, logfmt keeps [A-Za-z0-9_.-] and turns the rest into '_'. */
static int put_key(line_t *l, const char *key) {
    if (l->json) {
        if (put(l, ",\"", 2) < 0)
            return BH_ETOOBIG;
        put_escaped(l, key ? key : "");
        return put(l, "\":", 2);
    }
    if (put(l, " ", 1) < 0)
        return BH_ETOOBIG;
    if (!key || !*key)
        return put(l, "_=", 2);
    for (const char *k = key; *k; k++) {
        char c = *k;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '_' || c == '.' || c == '-';
        if (put(l, ok ? k : "_", 1) < 0)
            return BH_ETOOBIG;
    }
    return put(l, "=", 1);
}

/* A string value. Only a value that was begun can be cut short: it is closed in the reserve. */
static int put_str_value(line_t *l, const char *s) {
    if (!s)
        s = "";
    int quoted = l->json || logfmt_needs_quotes(s);
    if (quoted && put(l, "\"", 1) < 0)
        return BH_ETOOBIG;
    size_t before = l->len;
    put_escaped(l, s);
    if (l->truncated && !quoted && l->len == before)
        return BH_ETOOBIG; /* a bare value with nothing of it written: drop the field */
    if (quoted)
        put_closing(l, "\"");
    return BH_OK;
}

/* Shortest text that reads back as the same double; JSON has no NaN or infinities. */
static void format_double(double v, int json, char *out, size_t cap) {
    if (isnan(v)) {
        snprintf(out, cap, "%s", json ? "null" : "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(out, cap, "%s", json ? "null" : v > 0 ? "+Inf" : "-Inf");
        return;
    }
    snprintf(out, cap, "%.15g", v);
    if (strtod(out, NULL) != v)
        snprintf(out, cap, "%.17g", v);
}

static int put_field(line_t *l, const bh_log_field_t *f) {
    char num[40];
    if (put_key(l, f->key) < 0)
        return BH_ETOOBIG;
    switch (f->type) {
    case 's':
        return put_str_value(l, f->v.s);
    case 'i':
        snprintf(num, sizeof num, "%lld", f->v.i);
        break;
    case 'u':
        snprintf(num, sizeof num, "%llu", f->v.u);
        break;
    case 'f':
        format_double(f->v.f, l->json, num, sizeof num);
        break;
    default:
        return put_str_value(l, "?"); /* a field built without the BH_L* macros */
    }
    return puts_(l, num);
}

static void put_prefix(line_t *l, int level) {
    static const char *const words[] = {"debug", "info", "warn", "error"};
    struct timespec ts;
    struct tm tm;
    char t[96];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(t, sizeof t, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ts.tv_nsec / 1000000));
    if (l->json) {
        puts_(l, "{\"ts\":\"");
        puts_(l, t);
        puts_(l, "\",\"level\":\"");
        puts_(l, words[level]);
        puts_(l, "\"");
    } else {
        puts_(l, "ts=");
        puts_(l, t);
        puts_(l, " level=");
        puts_(l, words[level]);
    }
}

void bh_log_fields(int level, const char *msg, const bh_log_field_t *fields, size_t n) {
    if (level < atomic_load(&log_level))
        return;
    if (level < BH_LOG_DEBUG)
        level = BH_LOG_DEBUG;
    if (level > BH_LOG_ERROR)
        level = BH_LOG_ERROR;
    int saved_errno = errno; /* callers often log between a failure and reading errno */
    line_t l;
    l.len = 0;
    l.cap = LOG_LINE_MAX - LOG_LINE_RESERVE;
    l.truncated = 0;
    l.json = atomic_load(&log_format) == BH_LOG_JSON;
    put_prefix(&l, level);
    bh_log_field_t m = BH_LS("msg", msg);
    put_field(&l, &m);
    for (size_t i = 0; i < n && !l.truncated; i++) {
        size_t before = l.len;
        if (put_field(&l, &fields[i]) < 0)
            l.len = before; /* the field did not fit at all: leave it out whole */
    }
    if (l.truncated)
        put_closing(&l, l.json ? ",\"truncated\":true" : " truncated=true");
    put_closing(&l, l.json ? "}\n" : "\n");
    for (size_t off = 0; off < l.len;) {
        ssize_t w = write(STDERR_FILENO, l.buf + off, l.len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    errno = saved_errno;
}
