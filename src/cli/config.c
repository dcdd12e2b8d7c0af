/* The options of `balancehub serve` as one table: the flags (getopt_long), the environment
 * (BALANCEHUB_NAME), the config file (`name = value`), `serve --help` and `config check` are
 * all generated from it, so none of them can forget an option or disagree on its rules. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../base/error.h"
#include "../base/log.h"
#include "cli.h"

typedef enum {
    T_STR,      /* any non-empty text */
    T_ADDR,     /* HOST:PORT */
    T_ADDR_OFF, /* HOST:PORT or off */
    T_PATH,     /* an absolute URL path */
    T_UINT,     /* whole number in [min, max] */
    T_NUM,      /* positive decimal number up to max */
    T_BOOL,     /* true / false; as a flag, --name alone means true */
    T_LEVEL,    /* log level */
    T_FORMAT,   /* log format */
} type_t;

enum {
    NOT_IN_FILE = 1,
    DEFAULT_CPUS = 2, /* the default is the number of online CPUs, within [min, max] */
};

typedef struct {
    const char *name;
    type_t type;
    const char *def;   /* built-in default as text; NULL: none */
    const char *shown; /* the default as --help shows it, when not def */
    uint64_t min, max;
    const char *arg; /* --help's placeholder for the value */
    const char *help;
    unsigned flags;
} opt_t;

#define MS_MAX 4294967295u /* about 49 days */
#define BYTES_MAX (1u << 30)
#define COUNT_MAX 1000000000u
#define THREADS_MAX 64

static const opt_t opts[BH_CFG_COUNT] = {
    [BH_CFG_CONFIG] = {"config", T_STR, NULL, "none", 0, 0, "FILE",
                       "read options from FILE: `name = value` lines, # comments, blank lines;\n"
                       "flags and environment variables override it",
                       NOT_IN_FILE},
    [BH_CFG_LISTEN] = {"listen", T_ADDR, "127.0.0.1:5000", NULL, 0, 0, "HOST:PORT",
                       "the hub, the API tester page, /healthz and /readyz (port 0 picks a free "
                       "one)",
                       0},
    [BH_CFG_ADMIN_LISTEN] = {"admin-listen", T_ADDR_OFF, "127.0.0.1:5001", NULL, 0, 0, "HOST:PORT",
                             "the operations listener (plain HTTP): /admin/ (needs the admin\n"
                             "token), /metrics, /healthz, /readyz; `off` for none",
                             0},
    [BH_CFG_ADMIN_TOKEN_FILE] = {"admin-token-file", T_STR, NULL, "none", 0, 0, "FILE",
                                 "enable the admin API with the token in FILE (or the token\n"
                                 "itself in env BALANCEHUB_ADMIN_TOKEN); disabled without one",
                                 0},
    [BH_CFG_TLS_CERT] = {"tls-cert", T_STR, NULL, "none", 0, 0, "FILE",
                         "serve https/wss on --listen with this PEM certificate (leaf first,\n"
                         "then its chain); needs --tls-key; SIGHUP reloads both",
                         0},
    [BH_CFG_TLS_KEY] = {"tls-key", T_STR, NULL, "none", 0, 0, "FILE",
                        "PEM private key of --tls-cert", 0},
    [BH_CFG_DATA] = {"data", T_STR, "./data", NULL, 0, 0, "DIR", "data directory", 0},
    [BH_CFG_STORE] = {"store", T_STR, NULL, "sqlite:DIR/balancehub.db", 0, 0, "URL",
                      "store: sqlite:PATH", 0},
    [BH_CFG_DEMO] = {"demo", T_BOOL, "false", NULL, 0, 0, NULL,
                     "create the demo user user-123 and its API key if absent; the key is\n"
                     "written to DIR/demo-api-key and printed (--demo=false to override)",
                     0},
    [BH_CFG_THREADS] = {"threads", T_UINT, NULL, "number of CPUs", 1, THREADS_MAX, "N",
                        "I/O threads, each with its own event loop and listener on --listen\n"
                        "(SO_REUSEPORT); the ledger and the operations listener run on the\n"
                        "main thread",
                        DEFAULT_CPUS},
    [BH_CFG_HUB_PATH] = {"hub-path", T_PATH, "/ExecutionLiveServer/v1", NULL, 0, 0, "PATH",
                         "URL path of the SignalR hub", 0},
    [BH_CFG_KEEPALIVE_MS] = {"keepalive-ms", T_UINT, "15000", NULL, 1, MS_MAX, "N",
                             "server ping interval", 0},
    [BH_CFG_CLIENT_TIMEOUT_MS] = {"client-timeout-ms", T_UINT, "30000", NULL, 1, MS_MAX, "N",
                                  "close connections silent this long", 0},
    [BH_CFG_HANDSHAKE_TIMEOUT_MS] = {"handshake-timeout-ms", T_UINT, "15000", NULL, 1, MS_MAX, "N",
                                     "SignalR handshake deadline", 0},
    [BH_CFG_MAX_MESSAGE] = {"max-message", T_UINT, "32768", NULL, 1, BYTES_MAX, "BYTES",
                            "largest inbound hub message", 0},
    [BH_CFG_MAX_BODY] = {"max-body", T_UINT, "1048576", NULL, 1, BYTES_MAX, "BYTES",
                         "largest HTTP request body or WebSocket message, each of which may\n"
                         "batch many hub messages",
                         0},
    [BH_CFG_CORS_ORIGINS] = {"cors-origins", T_STR, NULL, "none (same origin only)", 0, 0, "LIST",
                             "browser origins allowed from other sites, comma-separated, or *\n"
                             "for any",
                             0},
    [BH_CFG_LP_POLL_TIMEOUT_MS] = {"lp-poll-timeout-ms", T_UINT, "90000", NULL, 1, MS_MAX, "N",
                                   "Long Polling: answer a poll without data after this", 0},
    [BH_CFG_RECONNECT_WINDOW_MS] = {"reconnect-window-ms", T_UINT, "30000", NULL, 0, MS_MAX, "N",
                                    "stateful reconnect: keep a dropped WebSocket's session this\n"
                                    "long (0 turns stateful reconnect off)",
                                    0},
    [BH_CFG_REPLAY_BUFFER] = {"replay-buffer", T_UINT, "1048576", NULL, 1, BYTES_MAX, "BYTES",
                              "stateful reconnect: unacknowledged bytes kept per connection", 0},
    [BH_CFG_MAX_CONNECTIONS] = {"max-connections", T_UINT, "100000", NULL, 1, COUNT_MAX, "N",
                                "connections (negotiated, open or resumable) at most in all;\n"
                                "beyond, negotiate and WebSocket requests get 503",
                                0},
    [BH_CFG_MAX_CONNECTIONS_PER_KEY] = {"max-connections-per-key", T_UINT, "32", NULL, 1, COUNT_MAX,
                                        "N", "connections at most per API key; beyond, 429", 0},
    [BH_CFG_RATE_LIMIT] = {"rate-limit", T_UINT, "50", NULL, 1, COUNT_MAX, "N",
                           "hub invocations per second per API key, shared by its connections;\n"
                           "beyond, an account.balances.error event \"rate limit exceeded\"",
                           0},
    [BH_CFG_RATE_BURST] = {"rate-burst", T_UINT, "100", NULL, 1, COUNT_MAX, "N",
                           "invocations an idle API key may send at once", 0},
    [BH_CFG_MAX_OUTPUT] = {"max-output", T_UINT, "1048576", NULL, 1, BYTES_MAX, "BYTES",
                           "per-connection outbound buffer; a client that lets more pile up is\n"
                           "closed",
                           0},
    [BH_CFG_MAX_HEAD] = {"max-head", T_UINT, "16384", NULL, 1, BYTES_MAX, "BYTES",
                         "request line + headers at most (431 beyond)", 0},
    [BH_CFG_REQUEST_TIMEOUT_MS] = {"request-timeout-ms", T_UINT, "10000", NULL, 1, MS_MAX, "N",
                                   "a started request (WebSocket upgrade included) must be\n"
                                   "complete within this (408 / close)",
                                   0},
    [BH_CFG_IDLE_TIMEOUT_MS] = {"idle-timeout-ms", T_UINT, "60000", NULL, 1, MS_MAX, "N",
                                "close a keep-alive connection without a request this long", 0},
    [BH_CFG_AUTH_FAIL_RATE] = {"auth-fail-rate", T_NUM, "1", NULL, 0, COUNT_MAX, "N",
                               "failed authentications refilled per second per source address\n"
                               "(decimals allowed, e.g. 0.5)",
                               0},
    [BH_CFG_AUTH_FAIL_BURST] = {"auth-fail-burst", T_UINT, "20", NULL, 1, COUNT_MAX, "N",
                                "failed authentications an address may make at once; beyond, 429",
                                0},
    [BH_CFG_LOG_LEVEL] = {"log-level", T_LEVEL, "info", NULL, 0, 0, "LEVEL",
                          "debug, info, warn or error (SIGHUP re-reads it from the config file)",
                          0},
    [BH_CFG_LOG_FORMAT] = {"log-format", T_FORMAT, "logfmt", NULL, 0, 0, "FORMAT",
                           "logfmt or json (SIGHUP re-reads it from the config file)", 0},
};

/* Where errors go: printed (stdout or stderr), or the first one kept for a caller to log. */
typedef struct {
    FILE *out;
    char *buf;
    size_t cap;
    int count;
} errs_t;

static void report(errs_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void report(errs_t *e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (e->out) {
        vfprintf(e->out, fmt, ap);
        fputc('\n', e->out);
    } else if (e->buf && e->count == 0) {
        vsnprintf(e->buf, e->cap, fmt, ap);
    }
    va_end(ap);
    e->count++;
}

static int find_opt(const char *name, size_t len) {
    for (int i = 0; i < BH_CFG_COUNT; i++) {
        if (strlen(opts[i].name) == len && memcmp(opts[i].name, name, len) == 0)
            return i;
    }
    return -1;
}

/* Strict decimal whole number: digits only, no sign, no blanks, no overflow. */
static int parse_uint(const char *s, uint64_t *out) {
    uint64_t v = 0;
    if (!*s)
        return BH_EINVAL;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > (UINT64_MAX - (uint64_t)(*s - '0')) / 10)
            return BH_EINVAL;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return BH_OK;
}

/* Digits with at most one '.' inside: no sign, exponent, hex, inf or nan. */
static int parse_num(const char *s, double *out) {
    int digits = 0, dots = 0;
    for (const char *p = s; *p; p++) {
        if (*p >= '0' && *p <= '9')
            digits++;
        else if (*p == '.' && !dots++)
            continue;
        else
            return BH_EINVAL;
    }
    if (!digits || s[0] == '.' || s[strlen(s) - 1] == '.')
        return BH_EINVAL;
    *out = strtod(s, NULL);
    return isfinite(*out) ? BH_OK : BH_EINVAL;
}

static int valid_addr(const char *s) {
    const char *colon = strrchr(s, ':');
    uint64_t port;
    if (!colon || colon == s || parse_uint(colon + 1, &port) < 0 || port > 65535)
        return 0;
    for (const char *p = s; p < colon; p++) {
        if (isspace((unsigned char)*p))
            return 0;
    }
    return 1;
}

/* Check v for option o and parse it into *u / *f. On failure, problem gets what is wrong. */
static int check_value(const opt_t *o, const char *v, uint64_t *u, double *f, char *problem,
                       size_t cap) {
    uint64_t n = 0;
    double d = 0;
    int x = 0;
    switch (o->type) {
    case T_STR:
        if (!*v) {
            snprintf(problem, cap, "needs a value");
            return BH_EINVAL;
        }
        break;
    case T_ADDR:
    case T_ADDR_OFF:
        if (o->type == T_ADDR_OFF && strcmp(v, "off") == 0)
            break;
        if (!valid_addr(v)) {
            snprintf(problem, cap, "needs HOST:PORT (e.g. 127.0.0.1:5000)%s, got '%s'",
                     o->type == T_ADDR_OFF ? " or off" : "", v);
            return BH_EINVAL;
        }
        break;
    case T_PATH:
        if (v[0] != '/' || strpbrk(v, " \t?#")) {
            snprintf(problem, cap, "must be a URL path starting with '/', got '%s'", v);
            return BH_EINVAL;
        }
        break;
    case T_UINT:
        if (parse_uint(v, &n) < 0 || n < o->min || n > o->max) {
            if (o->min == 0)
                snprintf(problem, cap, "needs a whole number from 0 to %llu, got '%s'",
                         (unsigned long long)o->max, v);
            else
                snprintf(problem, cap, "needs a whole number from %llu to %llu, got '%s'",
                         (unsigned long long)o->min, (unsigned long long)o->max, v);
            return BH_EINVAL;
        }
        break;
    case T_NUM:
        if (parse_num(v, &d) < 0 || d <= 0 || d > (double)o->max) {
            snprintf(problem, cap, "needs a number above 0 and at most %llu (e.g. 0.5), got '%s'",
                     (unsigned long long)o->max, v);
            return BH_EINVAL;
        }
        break;
    case T_BOOL:
        if (strcmp(v, "true") == 0)
            n = 1;
        else if (strcmp(v, "false") != 0) {
            snprintf(problem, cap, "needs true or false, got '%s'", v);
            return BH_EINVAL;
        }
        break;
    case T_LEVEL:
        if (bh_log_parse_level(v, &x) < 0) {
            snprintf(problem, cap, "needs debug, info, warn or error, got '%s'", v);
            return BH_EINVAL;
        }
        n = (uint64_t)x;
        break;
    case T_FORMAT:
        if (bh_log_parse_format(v, &x) < 0) {
            snprintf(problem, cap, "needs logfmt or json, got '%s'", v);
            return BH_EINVAL;
        }
        n = (uint64_t)x;
        break;
    }
    if (u)
        *u = n;
    if (f)
        *f = d;
    return BH_OK;
}

/* BALANCEHUB_ + the name in upper case with '-' as '_'. */
static void env_name(const opt_t *o, char *out, size_t cap) {
    size_t n = (size_t)snprintf(out, cap, "BALANCEHUB_");
    for (const char *p = o->name; *p && n + 1 < cap; p++)
        out[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    out[n] = 0;
}

static void trim(char **s, size_t *len) {
    while (*len > 0 && ((*s)[0] == ' ' || (*s)[0] == '\t')) {
        (*s)++;
        (*len)--;
    }
    while (*len > 0 && ((*s)[*len - 1] == ' ' || (*s)[*len - 1] == '\t' || (*s)[*len - 1] == '\r' ||
                        (*s)[*len - 1] == '\n'))
        (*len)--;
}

/* One `name = value` line (or a blank or comment line) of path into c. */
/* Only something shaped like an option name is echoed in an error: lower-case letters, digits
 * and '-', at most 40 characters (a key or token pasted by mistake is not). */
static int name_like(const char *s, size_t n) {
    if (n == 0 || n > 40)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return 0;
    return 1;
}

static void parse_line(bh_config_t *c, const char *path, int lineno, char *line, size_t len,
                       errs_t *e) {
    char problem[256];
    trim(&line, &len);
    if (len == 0 || line[0] == '#')
        return;
    if (memchr(line, '\0', len)) {
        report(e, "%s:%d: the line holds a NUL byte", path, lineno);
        return;
    }
    char *eq = memchr(line, '=', len);
    char *name = line, *value = eq ? eq + 1 : line + len;
    size_t nlen = eq ? (size_t)(eq - line) : len, vlen = eq ? len - nlen - 1 : 0;
    trim(&name, &nlen);
    trim(&value, &vlen);
    if (nlen == 0) {
        /* the line itself is not echoed: it may be a pasted secret (errors reach the log) */
        report(e, "%s:%d: expected 'name = value'", path, lineno);
        return;
    }
    int id = find_opt(name, nlen);
    if (id < 0) {
        int secret = nlen == 11 && memcmp(name, "admin-token", 11) == 0;
        if (!name_like(name, nlen))
            report(e, "%s:%d: not an option name (not shown): expected 'name = value'", path,
                   lineno);
        else
            report(e, "%s:%d: %.*s: unknown option%s", path, lineno, (int)nlen, name,
                   secret ? " (secrets never go in the config file: use admin-token-file or env "
                            "BALANCEHUB_ADMIN_TOKEN)"
                          : "");
        return;
    }
    const opt_t *o = &opts[id];
    if (!eq) {
        report(e, "%s:%d: %s: expected '%s = value'", path, lineno, o->name, o->name);
        return;
    }
    if (o->flags & NOT_IN_FILE) {
        report(e, "%s:%d: %s: not allowed in a config file", path, lineno, o->name);
        return;
    }
    if (c->v[id].file) {
        report(e, "%s:%d: %s: duplicate (already set on line %d)", path, lineno, o->name,
               c->v[id].file_line);
        return;
    }
    if (vlen == 0) {
        report(e, "%s:%d: %s: missing value", path, lineno, o->name);
        return;
    }
    value[vlen] = 0;
    if (check_value(o, value, NULL, NULL, problem, sizeof problem) < 0) {
        report(e, "%s:%d: %s: %s", path, lineno, o->name, problem);
        return;
    }
    c->v[id].file = strdup(value);
    c->v[id].file_line = lineno;
    if (!c->v[id].file)
        report(e, "%s:%d: %s: out of memory", path, lineno, o->name);
}

/* Read the config file into c's file values; every problem is reported. */
static int read_file(bh_config_t *c, const char *path, errs_t *e) {
    FILE *f = fopen(path, "r");
    if (!f) {
        report(e, "%s: cannot read the config file: %s", path, strerror(errno));
        return BH_EIO;
    }
    int before = e->count, lineno = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) >= 0)
        parse_line(c, path, ++lineno, line, (size_t)n, e);
    if (ferror(f))
        report(e, "%s: cannot read the config file: %s", path, strerror(errno));
    free(line);
    fclose(f);
    return e->count > before ? BH_EINVAL : BH_OK;
}

/* Environment values, checked (a bad value is an error even when a flag overrides it). */
static void read_env(bh_config_t *c, errs_t *e) {
    char name[64], problem[256];
    for (int i = 0; i < BH_CFG_COUNT; i++) {
        env_name(&opts[i], name, sizeof name);
        const char *v = getenv(name);
        if (!v || !*v)
            continue; /* empty counts as unset */
        if (check_value(&opts[i], v, NULL, NULL, problem, sizeof problem) < 0)
            report(e, "balancehub: %s: %s", name, problem);
        else
            c->v[i].env = v;
    }
}

/* The number of online CPUs, clamped to o's range. */
static void cpus_default(const opt_t *o, bh_cfg_value_t *v) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    uint64_t u = n < 1 ? 1 : (uint64_t)n;
    if (u < o->min)
        u = o->min;
    if (u > o->max)
        u = o->max;
    snprintf(v->computed, sizeof v->computed, "%llu", (unsigned long long)u);
    v->value = v->computed;
}

/* Pick every option's winner (flag > env > file > default) and parse it. */
static void resolve(bh_config_t *c) {
    char problem[256];
    for (int i = 0; i < BH_CFG_COUNT; i++) {
        bh_cfg_value_t *v = &c->v[i];
        if (v->flag) {
            v->value = v->flag;
            v->source = BH_CFG_SRC_FLAG;
        } else if (v->env) {
            v->value = v->env;
            v->source = BH_CFG_SRC_ENV;
        } else if (v->file) {
            v->value = v->file;
            v->source = BH_CFG_SRC_FILE;
        } else {
            v->value = opts[i].def;
            v->source = BH_CFG_SRC_DEFAULT;
            if (opts[i].flags & DEFAULT_CPUS)
                cpus_default(&opts[i], v);
        }
        v->u = 0;
        v->f = 0;
        if (v->value) /* every source was checked already; the defaults are valid */
            check_value(&opts[i], v->value, &v->u, &v->f, problem, sizeof problem);
    }
}

/* Relations between options that no single value shows. */
static void check_together(const bh_config_t *c, errs_t *e) {
    if (!c->v[BH_CFG_TLS_CERT].value != !c->v[BH_CFG_TLS_KEY].value)
        report(e, "balancehub: --tls-cert and --tls-key go together: give both or neither");
}

/* The option a getopt_long match came from must be spelled out in full: getopt_long takes
 * any unambiguous prefix, and an option the table does not name is an error. */
static int spelled_out(const char *arg, const char *name) {
    size_t n = strlen(name);
    return arg && strncmp(arg, "--", 2) == 0 && strncmp(arg + 2, name, n) == 0 &&
           (arg[2 + n] == 0 || arg[2 + n] == '=');
}

static int read_flags(bh_config_t *c, int argc, char **argv, errs_t *e) {
    struct option lo[BH_CFG_COUNT + 2];
    char problem[256];
    for (int i = 0; i < BH_CFG_COUNT; i++) {
        lo[i] = (struct option){opts[i].name,
                                opts[i].type == T_BOOL ? optional_argument : required_argument,
                                NULL, 0x100 + i};
    }
    lo[BH_CFG_COUNT] = (struct option){"help", no_argument, NULL, 'h'};
    lo[BH_CFG_COUNT + 1] = (struct option){0, 0, 0, 0};
    opterr = 0;
    optind = 0; /* GNU: start afresh */
    int ch, help = 0;
    while ((ch = getopt_long(argc, argv, ":h", lo, NULL)) != -1) {
        /* The argument that held the option: the one before its separate value, if any. */
        int at = optarg && optind >= 2 && optarg == argv[optind - 1] ? optind - 2 : optind - 1;
        const char *arg = at >= 0 && at < argc ? argv[at] : "?";
        if (ch == 'h') {
            if (strcmp(arg, "-h") != 0 && !spelled_out(arg, "help"))
                report(e, "balancehub: %s: unknown option (run 'balancehub serve --help')", arg);
            help = 1;
            continue;
        }
        if (ch == ':') {
            report(e, "balancehub: %s: needs a value", argv[optind - 1]);
            continue;
        }
        if (ch < 0x100 || ch >= 0x100 + BH_CFG_COUNT) {
            report(e, "balancehub: %s: unknown option (run 'balancehub serve --help')",
                   argv[optind - 1]);
            continue;
        }
        int id = ch - 0x100;
        const opt_t *o = &opts[id];
        if (!spelled_out(arg, o->name)) {
            report(e, "balancehub: %s: unknown option (run 'balancehub serve --help')", arg);
            continue;
        }
        const char *v = optarg ? optarg : "true"; /* a bare boolean flag */
        if (check_value(o, v, NULL, NULL, problem, sizeof problem) < 0) {
            report(e, "balancehub: --%s: %s", o->name, problem);
            continue;
        }
        c->v[id].flag = v; /* the last one wins */
    }
    if (optind < argc)
        report(e, "balancehub: unexpected argument '%s' (run 'balancehub serve --help')",
               argv[optind]);
    return help;
}

int bh_config_load(bh_config_t *c, int argc, char **argv) {
    errs_t e = {.out = stderr};
    memset(c, 0, sizeof *c);
    if (read_flags(c, argc, argv, &e) && e.count == 0) {
        bh_config_usage(stdout);
        return 1;
    }
    read_env(c, &e);
    const char *path =
        c->v[BH_CFG_CONFIG].flag ? c->v[BH_CFG_CONFIG].flag : c->v[BH_CFG_CONFIG].env;
    if (path)
        read_file(c, path, &e);
    resolve(c);
    if (e.count == 0)
        check_together(c, &e);
    return e.count ? -1 : 0;
}

int bh_config_reload(const bh_config_t *cur, bh_config_t *next, char *err, size_t cap) {
    errs_t e = {.buf = err, .cap = cap};
    memset(next, 0, sizeof *next);
    for (int i = 0; i < BH_CFG_COUNT; i++) {
        next->v[i].flag = cur->v[i].flag;
        next->v[i].env = cur->v[i].env;
    }
    const char *path = cur->v[BH_CFG_CONFIG].value;
    if (path && read_file(next, path, &e) < 0) {
        bh_config_free(next);
        return BH_EINVAL;
    }
    resolve(next);
    return BH_OK;
}

void bh_config_free(bh_config_t *c) {
    for (int i = 0; i < BH_CFG_COUNT; i++) {
        free(c->v[i].file);
        c->v[i].file = NULL;
    }
}

const char *bh_config_str(const bh_config_t *c, int id) {
    return c->v[id].value;
}

uint64_t bh_config_uint(const bh_config_t *c, int id) {
    return c->v[id].u;
}

double bh_config_num(const bh_config_t *c, int id) {
    return c->v[id].f;
}

int bh_config_bool(const bh_config_t *c, int id) {
    return c->v[id].u != 0;
}

void bh_config_usage(FILE *out) {
    char env[64];
    fputs("usage: balancehub serve [OPTIONS]\n"
          "\n"
          "Every option can also come from the environment variable shown (empty = unset) or\n"
          "from a `name = value` line of the config file (--config FILE). A flag beats the\n"
          "environment, which beats the config file, which beats the built-in default.\n"
          "Unknown options, unknown or repeated config keys and bad values are errors.\n"
          "Signals: SIGTERM and SIGINT drain and stop; SIGHUP re-reads log-level and\n"
          "log-format from the config file and reloads the TLS certificate and key.\n"
          "\n",
          out);
    for (int i = 0; i < BH_CFG_COUNT; i++) {
        const opt_t *o = &opts[i];
        env_name(o, env, sizeof env);
        if (o->arg)
            fprintf(out, "  --%s %s\n", o->name, o->arg);
        else
            fprintf(out, "  --%s\n", o->name);
        for (const char *p = o->help; *p;) {
            size_t n = strcspn(p, "\n");
            fprintf(out, "        %.*s\n", (int)n, p);
            p += n + (p[n] == '\n');
        }
        fprintf(out, "        default: %s; env %s\n", o->def ? o->def : o->shown, env);
    }
    fputs("  -h, --help\n        this help\n", out);
}

int bh_cli_config(int argc, char **argv) {
    static const char usage[] =
        "usage: balancehub config check FILE\n"
        "\n"
        "Check a config file for `balancehub serve --config FILE` with the server's own parser:\n"
        "prints 'FILE: ok' (exit 0) or every problem as FILE:LINE: name: problem (exit 2).\n";
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        fputs(usage, stdout);
        return BH_EXIT_OK;
    }
    if (argc != 3 || strcmp(argv[1], "check") != 0) {
        fputs(usage, stderr);
        return BH_EXIT_USAGE;
    }
    bh_config_t c;
    errs_t e = {.out = stderr};
    memset(&c, 0, sizeof c);
    int r = read_file(&c, argv[2], &e);
    bh_config_free(&c);
    if (r < 0)
        return BH_EXIT_USAGE;
    printf("%s: ok\n", argv[2]);
    return BH_EXIT_OK;
}
