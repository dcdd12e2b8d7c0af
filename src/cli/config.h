/* The options of `balancehub serve`, as one table of data (name, type and range, default, help)
 * that drives the command-line flags, the BALANCEHUB_* environment variables, the config file,
 * `serve --help` and `balancehub config check`. Precedence: flag > environment > config file >
 * built-in default. */
#ifndef BH_CLI_CONFIG_H
#define BH_CLI_CONFIG_H

#include <stdint.h>
#include <stdio.h>

/* Option ids: the order of the table and of `serve --help`. */
enum {
    BH_CFG_CONFIG,
    BH_CFG_LISTEN,
    BH_CFG_ADMIN_LISTEN,
    BH_CFG_ADMIN_TOKEN_FILE,
    BH_CFG_TLS_CERT,
    BH_CFG_TLS_KEY,
    BH_CFG_DATA,
    BH_CFG_STORE,
    BH_CFG_DEMO,
    BH_CFG_THREADS,
    BH_CFG_HUB_PATH,
    BH_CFG_KEEPALIVE_MS,
    BH_CFG_CLIENT_TIMEOUT_MS,
    BH_CFG_HANDSHAKE_TIMEOUT_MS,
    BH_CFG_MAX_MESSAGE,
    BH_CFG_MAX_BODY,
    BH_CFG_CORS_ORIGINS,
    BH_CFG_LP_POLL_TIMEOUT_MS,
    BH_CFG_RECONNECT_WINDOW_MS,
    BH_CFG_REPLAY_BUFFER,
    BH_CFG_MAX_CONNECTIONS,
    BH_CFG_MAX_CONNECTIONS_PER_KEY,
    BH_CFG_RATE_LIMIT,
    BH_CFG_RATE_BURST,
    BH_CFG_MAX_OUTPUT,
    BH_CFG_MAX_HEAD,
    BH_CFG_REQUEST_TIMEOUT_MS,
    BH_CFG_IDLE_TIMEOUT_MS,
    BH_CFG_AUTH_FAIL_RATE,
    BH_CFG_AUTH_FAIL_BURST,
    BH_CFG_LOG_LEVEL,
    BH_CFG_LOG_FORMAT,
    BH_CFG_COUNT
};

/* Where an option's value came from. */
enum { BH_CFG_SRC_DEFAULT, BH_CFG_SRC_FILE, BH_CFG_SRC_ENV, BH_CFG_SRC_FLAG };

typedef struct {
    const char *flag;  /* from argv (borrowed), NULL if not given */
    const char *env;   /* from the environment (borrowed), NULL if unset or empty */
    char *file;        /* from the config file (owned), NULL if absent */
    int file_line;     /* its line */
    const char *value; /* the winner, NULL when unset and without default */
    int source;        /* BH_CFG_SRC_* of value */
    uint64_t u;        /* parsed whole numbers (and 0/1 for booleans, the level or format) */
    double f;          /* parsed decimal numbers */
    char computed[24]; /* the text of a default computed at start-up (threads) */
} bh_cfg_value_t;

typedef struct {
    bh_cfg_value_t v[BH_CFG_COUNT];
} bh_config_t;

/* Read argv (argv[0] is the command name), the environment and the config file named by
 * --config or BALANCEHUB_CONFIG, then resolve every option. Returns 0 when the server should
 * run, 1 after printing the help to stdout (-h, --help), or -1 after printing every error to
 * stderr, one line each (exit 2). Free with bh_config_free in every case. */
int bh_config_load(bh_config_t *c, int argc, char **argv);
void bh_config_free(bh_config_t *c);

/* Re-read the config file of cur (if any) into next: the flag and environment values of cur
 * still win. On failure next is left empty and err gets the first error line (cur is
 * unchanged either way). Free next with bh_config_free. */
int bh_config_reload(const bh_config_t *cur, bh_config_t *next, char *err, size_t cap);

/* Accessors by option id. */
const char *bh_config_str(const bh_config_t *c, int id);
uint64_t bh_config_uint(const bh_config_t *c, int id);
double bh_config_num(const bh_config_t *c, int id);
int bh_config_bool(const bh_config_t *c, int id);

/* `serve --help`: every option with its default, environment variable and help. */
void bh_config_usage(FILE *out);

/* `balancehub config check FILE`: "FILE: ok" and BH_EXIT_OK, or every error and
 * BH_EXIT_USAGE. */
int bh_cli_config(int argc, char **argv);

#endif
