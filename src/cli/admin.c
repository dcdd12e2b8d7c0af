/* balancehub admin: user, balance and key administration directly on a data directory (the
 * server must not be running on it), e.g. to set up accounts before the first start. */
#include <getopt.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/error.h"
#include "cli.h"

static const char admin_usage[] =
    "usage: balancehub admin --data DIR COMMAND ARGS\n"
    "\n"
    "Works on the data directory directly; stop the server that uses it first.\n"
    "\n"
    "commands:\n"
    "  create-user USER_ID [--base-currency CCY] [--total-max-exposure AMOUNT]\n"
    "                                   (defaults EUR and 0)\n"
    "  deposit USER_ID ASSET AMOUNT [--op-id ID]\n"
    "  withdraw USER_ID ASSET AMOUNT [--op-id ID]\n"
    "  allocate USER_ID ASSET AMOUNT [--op-id ID]\n"
    "  release USER_ID ASSET AMOUNT [--op-id ID]\n"
    "  set-limit USER_ID ASSET MAX_EXPOSURE [--op-id ID]\n"
    "  set-rate CURRENCY ASSET RATE     value of one ASSET in CURRENCY\n"
    "  create-key USER_ID               prints the new API key (shown once)\n"
    "  balances USER_ID                 prints the balances data as JSON\n"
    "\n"
    "options: --data DIR (default ./data), --store URL\n";

static const struct {
    const char *name;
    bh_op_kind_t kind;
} op_names[] = {
    {"deposit", BH_OP_DEPOSIT}, {"withdraw", BH_OP_WITHDRAW},   {"allocate", BH_OP_ALLOCATE},
    {"release", BH_OP_RELEASE}, {"set-limit", BH_OP_SET_LIMIT},
};

static int parse_amount(const char *what, const char *s, bh_dec_t *out) {
    int r = bh_dec_parse(s, strlen(s), out);
    if (r < 0)
        bh_cli_error("%s '%s' is not an exact decimal with at most 18 fraction digits and 20 "
                     "integer digits",
                     what, s);
    return r;
}

static int report(const char *what, int r) {
    if (r == 0)
        return BH_EXIT_OK;
    bh_cli_error("%s failed: %s", what, bh_strerror(r));
    return BH_EXIT_RUNTIME;
}

static int run(bh_cli_state_t *st, const char *cmd, char **args, int nargs, const char *base,
               const char *total, const char *op_id) {
    bh_dec_t amount;
    if (strcmp(cmd, "create-user") == 0 && nargs == 1) {
        if (parse_amount("--total-max-exposure", total, &amount) < 0)
            return BH_EXIT_USAGE;
        return report(cmd, bh_ledger_create_user(st->ledger, args[0], base, amount));
    }
    if (strcmp(cmd, "create-key") == 0 && nargs == 1) {
        char key[BH_API_KEY_LEN + 1], kid[BH_KEY_ID_LEN + 1];
        bh_snapshot_t *s = bh_ledger_snapshot(st->ledger, args[0]);
        if (!s)
            return report(cmd, BH_ENOTFOUND);
        bh_snapshot_release(s);
        int r = bh_auth_create_key(st->store, st->keyring, args[0], key, kid);
        if (r == 0)
            printf("%s\n", key);
        OPENSSL_cleanse(key, sizeof key);
        return report(cmd, r);
    }
    if (strcmp(cmd, "balances") == 0 && nargs == 1) {
        bh_snapshot_t *s = bh_ledger_snapshot(st->ledger, args[0]);
        if (!s)
            return report(cmd, BH_ENOTFOUND);
        printf("%.*s\n", (int)s->json_len, s->json);
        bh_snapshot_release(s);
        return BH_EXIT_OK;
    }
    if (strcmp(cmd, "set-rate") == 0 && nargs == 3) {
        if (parse_amount("rate", args[2], &amount) < 0)
            return BH_EXIT_USAGE;
        return report(cmd, bh_ledger_set_rate(st->ledger, args[0], args[1], amount));
    }
    for (size_t i = 0; i < sizeof op_names / sizeof op_names[0]; i++) {
        if (strcmp(cmd, op_names[i].name) != 0 || nargs != 3)
            continue;
        bh_op_t op = {.kind = op_names[i].kind};
        if (parse_amount("amount", args[2], &op.amount) < 0)
            return BH_EXIT_USAGE;
        snprintf(op.asset, sizeof op.asset, "%s", args[1]);
        if (op_id) {
            snprintf(op.op_id, sizeof op.op_id, "%s", op_id);
        } else {
            unsigned char rnd[8];
            RAND_bytes(rnd, sizeof rnd);
            snprintf(op.op_id, sizeof op.op_id, "cli-%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0],
                     rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
        }
        uint64_t seq = 0;
        int r = bh_ledger_apply(st->ledger, args[0], &op, &seq);
        if (r == 0 || r == BH_EEXIST)
            printf("sequence %llu%s\n", (unsigned long long)seq,
                   r == BH_EEXIST ? " (op id already applied)" : "");
        return r == BH_EEXIST ? BH_EXIT_OK : report(cmd, r);
    }
    bh_cli_error("unknown command or wrong arguments: '%s' (run 'balancehub admin --help')", cmd);
    return BH_EXIT_USAGE;
}

int bh_cli_admin(int argc, char **argv) {
    static const struct option opts[] = {
        {"data", required_argument, 0, 'd'},
        {"store", required_argument, 0, 's'},
        {"base-currency", required_argument, 0, 'b'},
        {"total-max-exposure", required_argument, 0, 't'},
        {"op-id", required_argument, 0, 'o'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    bh_cli_store_opts_t so = {.data_dir = "./data"};
    const char *base = "EUR", *total = "0", *op_id = NULL;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            so.data_dir = optarg;
            break;
        case 's':
            so.store_url = optarg;
            break;
        case 'b':
            base = optarg;
            break;
        case 't':
            total = optarg;
            break;
        case 'o':
            op_id = optarg;
            break;
        case 'h':
            fputs(admin_usage, stdout);
            return BH_EXIT_OK;
        default:
            bh_cli_error("unknown or incomplete option '%s': run 'balancehub admin --help'",
                         argv[optind - 1]);
            return BH_EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        fputs(admin_usage, stderr);
        return BH_EXIT_USAGE;
    }
    bh_cli_state_t st;
    if (bh_cli_open(&so, &st) < 0)
        return BH_EXIT_RUNTIME;
    int rc = run(&st, argv[optind], argv + optind + 1, argc - optind - 1, base, total, op_id);
    bh_cli_close(&st);
    return rc;
}
