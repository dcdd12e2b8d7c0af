/* The execution hub: GetBalances with its argument pre-checks, the executionEvents envelope,
 * and per-connection subscriptions. Sits on the SignalR layer; reads ledger snapshots. */
#ifndef BH_HUB_HUB_H
#define BH_HUB_HUB_H

#include <stddef.h>

#include "../auth/auth.h"
#include "../ledger/ledger.h"
#include "../signalr/signalr.h"

#define BH_HUB_CLIENT_ID_MAX 36 /* characters (Unicode code points) */

typedef struct bh_hub bh_hub_t;

/* The hub reads snapshots from ledger and resolves API keys through keyring (both borrowed). */
int bh_hub_new(bh_ledger_t *ledger, const bh_keyring_t *keyring, bh_hub_t **out);
void bh_hub_free(bh_hub_t *h);

/* The method table and hooks to give bh_sr_server_new, with the hub as its user data. */
const bh_sr_method_t *bh_hub_methods(size_t *n);
const bh_sr_hooks_t *bh_hub_hooks(void);

/* Append the executionEvents envelope: subject, type ("message" or "error"), clientId (NULL
 * gives JSON null) and the already-serialized data object. */
int bh_hub_write_envelope(bh_buf_t *b, const char *subject, const char *type, const char *client_id,
                          const char *data, size_t data_len);

#endif
