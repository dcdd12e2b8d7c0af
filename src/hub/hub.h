/* The execution hub: GetBalances with its argument pre-checks, the executionEvents envelope,
 * per-connection subscriptions and live balance updates. Sits on the SignalR layer; reads
 * ledger snapshots. One hub per I/O thread; the group of all of them is the ledger's change
 * listener and holds the per-key command rate. */
#ifndef BH_HUB_HUB_H
#define BH_HUB_HUB_H

#include <stddef.h>

#include "../auth/auth.h"
#include "../ledger/ledger.h"
#include "../signalr/signalr.h"

#define BH_HUB_CLIENT_ID_MAX 36 /* characters (Unicode code points) */

typedef struct bh_hub bh_hub_t;
typedef struct bh_hub_group bh_hub_group_t;

/* The hub reads snapshots from ledger and resolves API keys through keyring (both borrowed).
 * Everything on the hub runs on its loop's thread. */
int bh_hub_new(bh_ledger_t *ledger, const bh_keyring_t *keyring, bh_hub_t **out);
/* After its SignalR server is freed; never touches its group (free that in either order). */
void bh_hub_free(bh_hub_t *h);

/* ---- the group: the hubs of every thread ---- */

/* Run fn(arg) on the hub's thread, later, calls in the order posted (bh_httpd_post of that
 * thread's httpd, behind a wrapper). BH_OK, or a negative code: fn will not run. */
typedef int (*bh_hub_post_fn)(void *post_ud, void (*fn)(void *arg), void *arg);

/* A group of hubs on ledger and keyring. Per-key command rate: a token bucket per API key id,
 * shared by all its connections on every hub of the group, refilled at rate_per_sec tokens a
 * second up to rate_burst (0: 50 and 100); each GetBalances takes one. A hub in no group has
 * no command-rate limit. */
int bh_hub_group_new(bh_ledger_t *ledger, const bh_keyring_t *keyring, double rate_per_sec,
                     double rate_burst, bh_hub_group_t **out);
/* After its hubs' connections are gone (the hubs may be freed before or after). */
void bh_hub_group_free(bh_hub_group_t *g);
/* Add hub (same ledger and keyring; in no group yet; before it serves connections): changes
 * and closes reach it through post(post_ud, ...). A call still queued when its thread stops
 * must be run (the hub must exist until then). BH_EINVAL, BH_ENOMEM. Any thread. */
int bh_hub_group_add(bh_hub_group_t *g, bh_hub_t *hub, bh_hub_post_fn post, void *post_ud);
/* Nothing more is posted to hub once this returns (its rate buckets stay in the group). */
void bh_hub_group_remove(bh_hub_group_t *g, bh_hub_t *hub);
/* The ledger listener (bh_ledger_set_listener(ledger, bh_hub_group_on_change, group)); any
 * thread, in sequence order: each hub gets a reference of snap and runs bh_hub_on_change on
 * its thread, then releases it. */
void bh_hub_group_on_change(void *group, const bh_snapshot_t *snap);
/* bh_hub_close_key / bh_hub_close_user on every hub's thread. Any thread. */
void bh_hub_group_close_key(bh_hub_group_t *g, const char *user_id, const char *key_id);
void bh_hub_group_close_user(bh_hub_group_t *g, const char *user_id);

/* The method table and hooks to give bh_sr_server_new, with the hub as its user data. */
const bh_sr_method_t *bh_hub_methods(size_t *n);
const bh_sr_hooks_t *bh_hub_hooks(void);

/* Append the executionEvents envelope: subject, type ("message" or "error"), clientId (NULL
 * gives JSON null) and the already-serialized data object. */
int bh_hub_write_envelope(bh_buf_t *b, const char *subject, const char *type, const char *client_id,
                          const char *data, size_t data_len);
/* The same envelope as one MessagePack map, data given as MessagePack bytes (a snapshot's
 * cached mp): exactly what the SignalR transcoder makes of bh_hub_write_envelope's text. */
int bh_hub_write_envelope_mp(bh_buf_t *b, const char *subject, const char *type,
                             const char *client_id, const char *data_mp, size_t data_len);

/* A committed change, on the hub's thread (the group posts it; with a single hub it may also be
 * the ledger listener itself). Every subscribed connection of snap->user_id (one that had a
 * successful GetBalances) gets an account.balances.update envelope with the clientId of its
 * latest GetBalances, unless it was already sent this sequence or a newer one (a GetBalances
 * may have read a snapshot newer than changes still queued for the thread). A deleted snapshot
 * is pushed the same way, then every connection of the user is closed ("user deleted", no
 * reconnect). */
void bh_hub_on_change(void *hub, const bh_snapshot_t *snap);
/* An API key was revoked: close every connection of user_id opened with key_id ("API key
 * revoked", no reconnect). user_id NULL searches every user. Hub's thread. */
void bh_hub_close_key(bh_hub_t *h, const char *user_id, const char *key_id);
/* The user was deleted: close every connection of user_id ("user deleted", no reconnect).
 * Hub's thread. */
void bh_hub_close_user(bh_hub_t *h, const char *user_id);

#endif
