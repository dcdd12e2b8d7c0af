/* The execution hub: GetBalances with its argument pre-checks, the executionEvents envelope,
 * per-connection subscriptions and live balance updates. Sits on the SignalR layer; reads
 * ledger snapshots and is the ledger's change listener. */
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
/* Per-key command rate: a token bucket per API key id, shared by all its connections, refilled
 * at per_sec tokens a second up to burst (defaults 50 and 100); each GetBalances takes one. */
void bh_hub_set_rate_limit(bh_hub_t *h, double per_sec, double burst);

/* The method table and hooks to give bh_sr_server_new, with the hub as its user data. */
const bh_sr_method_t *bh_hub_methods(size_t *n);
const bh_sr_hooks_t *bh_hub_hooks(void);

/* Append the executionEvents envelope: subject, type ("message" or "error"), clientId (NULL
 * gives JSON null) and the already-serialized data object. */
int bh_hub_write_envelope(bh_buf_t *b, const char *subject, const char *type, const char *client_id,
                          const char *data, size_t data_len);

/* The ledger listener (bh_ledger_set_listener(ledger, bh_hub_on_change, hub)); loop thread.
 * Every subscribed connection of snap->user_id (one that had a successful GetBalances) gets an
 * account.balances.update envelope with the clientId of its latest GetBalances. A deleted
 * snapshot is pushed the same way, then every connection of the user is closed ("user
 * deleted", no reconnect). */
void bh_hub_on_change(void *hub, const bh_snapshot_t *snap);
/* An API key was revoked: close every connection of user_id opened with key_id ("API key
 * revoked", no reconnect). user_id NULL searches every user. Loop thread. */
void bh_hub_close_key(bh_hub_t *h, const char *user_id, const char *key_id);

#endif
