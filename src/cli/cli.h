/* balancehub command line: subcommands share option parsing and the store/ledger set-up. */
#ifndef BH_CLI_CLI_H
#define BH_CLI_CLI_H

#include "../auth/auth.h"
#include "../ledger/ledger.h"
#include "../store/store.h"

#include <uv.h>

/* Exit codes of the command-line contract (SPEC 9). */
enum { BH_EXIT_OK = 0, BH_EXIT_RUNTIME = 1, BH_EXIT_USAGE = 2 };

/* Options shared by subcommands that open the store. */
typedef struct {
    const char *data_dir;
    const char *store_url; /* NULL: sqlite in data_dir/balancehub.db */
} bh_cli_store_opts_t;

/* The opened state: two handles on one store (the ledger's commit thread owns writer; reader
 * serves the loop thread: keys, journal reads, op-id lookups), the ledger (users, balances;
 * its results are delivered on the caller's loop) and the keyring (API keys). */
typedef struct {
    bh_store_t *writer;
    bh_store_t *reader;
    bh_ledger_t *ledger;
    bh_keyring_t *keyring;
} bh_cli_state_t;

/* Open everything on loop (borrowed); on failure one line is printed and nothing stays open
 * (run the loop once more to finish closing the ledger's handles). */
int bh_cli_open(const bh_cli_store_opts_t *o, uv_loop_t *loop, bh_cli_state_t *st);
/* Close the ledger if still open (committing what is pending, delivering its last callbacks),
 * the keyring and the stores. The caller then runs the loop so the ledger's handles finish
 * closing, and closes the loop. */
void bh_cli_close(bh_cli_state_t *st);
/* Print "balancehub: MSG" to stderr (one line). */
void bh_cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A secret (API key, admin token) from the first line of path, surrounding blanks trimmed, into
 * out. BH_EXIT_OK, or BH_EXIT_USAGE after one line on stderr naming what was wanted. */
int bh_cli_read_secret(const char *path, const char *what, char *out, size_t cap);

int bh_cli_serve(int argc, char **argv);
int bh_cli_admin(int argc, char **argv);
/* balancehub balances / watch (balances.c): the client library on the command line. */
int bh_cli_balances(int argc, char **argv);
int bh_cli_watch(int argc, char **argv);
/* balancehub bench (bench.c): the load generator. */
int bh_cli_bench(int argc, char **argv);

#endif
