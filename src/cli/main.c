/* balancehub: entry point and subcommand dispatch; shared store/ledger opening. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../base/error.h"
#include "cli.h"
#include "config.h"

static const char usage[] =
    "usage: balancehub COMMAND [OPTIONS]\n"
    "\n"
    "commands:\n"
    "  serve    run the SignalR balance server (balancehub serve --help)\n"
    "  admin    administer users, balances and API keys (balancehub admin --help)\n"
    "  balances print the balances of an API key's user (balancehub balances --help)\n"
    "  watch    follow live balance updates (balancehub watch --help)\n"
    "  bench    load-test a server: throughput, latency (balancehub bench --help)\n"
    "  config   check a config file for serve (balancehub config check FILE)\n";

void bh_cli_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("balancehub: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int bh_cli_read_secret(const char *path, const char *what, char *out, size_t cap) {
    FILE *f = fopen(path, "r");
    if (!f) {
        bh_cli_error("cannot read the %s file %s: %s", what, path, strerror(errno));
        return BH_EXIT_USAGE;
    }
    size_t n = fread(out, 1, cap - 1, f), start = 0;
    fclose(f);
    out[n] = '\0';
    n = strcspn(out, "\r\n");
    out[n] = '\0';
    while (n > 0 && (out[n - 1] == ' ' || out[n - 1] == '\t'))
        out[--n] = '\0';
    while (out[start] == ' ' || out[start] == '\t')
        start++;
    memmove(out, out + start, n - start + 1);
    if (out[0] == '\0') {
        bh_cli_error("the %s file %s is empty", what, path);
        return BH_EXIT_USAGE;
    }
    return BH_EXIT_OK;
}

static int load_key(void *ud, const bh_store_key_t *k) {
    return bh_keyring_put(ud, k);
}

int bh_cli_open(const bh_cli_store_opts_t *o, uv_loop_t *loop, bh_cli_state_t *st) {
    char url[4096], err[256] = "";
    int r;

    memset(st, 0, sizeof *st);
    if (!o->store_url) {
        if (mkdir(o->data_dir, 0700) < 0 && errno != EEXIST) {
            bh_cli_error("cannot create data directory %s: %s (choose another with --data)",
                         o->data_dir, strerror(errno));
            return BH_EIO;
        }
        snprintf(url, sizeof url, "sqlite:%s/balancehub.db", o->data_dir);
    } else {
        snprintf(url, sizeof url, "%s", o->store_url);
    }
    /* The writer first: it creates the file and schema the reader then opens. */
    r = bh_store_open(url, &st->writer, err, sizeof err);
    if (r == 0)
        r = bh_store_open(url, &st->reader, err, sizeof err);
    if (r < 0) {
        bh_cli_error("cannot open store: %s", err[0] ? err : bh_strerror(r));
        goto fail;
    }
    r = bh_ledger_open(loop, st->writer, st->reader, &st->ledger);
    if (r < 0) {
        bh_cli_error("cannot load the ledger: %s", bh_strerror(r));
        goto fail;
    }
    st->keyring = bh_keyring_new();
    bh_store_visitor_t v = {.ud = st->keyring, .key = load_key};
    r = st->keyring ? bh_store_load(st->reader, &v) : BH_ENOMEM;
    if (r < 0) {
        bh_cli_error("cannot load API keys: %s", bh_strerror(r));
        goto fail;
    }
    return BH_OK;
fail:
    bh_cli_close(st);
    return r;
}

void bh_cli_close(bh_cli_state_t *st) {
    /* The ledger frees itself once the caller's loop has closed its handles; it no longer
     * touches the stores after bh_ledger_close returns. */
    if (st->ledger)
        bh_ledger_close(st->ledger);
    if (st->keyring)
        bh_keyring_free(st->keyring);
    if (st->reader)
        bh_store_close(st->reader);
    if (st->writer)
        bh_store_close(st->writer);
    memset(st, 0, sizeof *st);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs(usage, stderr);
        return BH_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0)
        return bh_cli_serve(argc - 1, argv + 1);
    if (strcmp(cmd, "admin") == 0)
        return bh_cli_admin(argc - 1, argv + 1);
    if (strcmp(cmd, "balances") == 0)
        return bh_cli_balances(argc - 1, argv + 1);
    if (strcmp(cmd, "watch") == 0)
        return bh_cli_watch(argc - 1, argv + 1);
    if (strcmp(cmd, "bench") == 0)
        return bh_cli_bench(argc - 1, argv + 1);
    if (strcmp(cmd, "config") == 0)
        return bh_cli_config(argc - 1, argv + 1);
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        fputs(usage, stdout);
        return BH_EXIT_OK;
    }
    bh_cli_error("unknown command '%s': run 'balancehub --help' for the list", cmd);
    return BH_EXIT_USAGE;
}
