/* Internals of src/hub shared by hub.c (one hub per I/O thread) and group.c (what the hubs of
 * all threads share: the per-key command-rate buckets, and fan-out of ledger changes). */
#ifndef BH_HUB_INTERNAL_H
#define BH_HUB_INTERNAL_H

#include "hub.h"

typedef struct bh_hub_rate bh_hub_rate_t;

/* ---- group.c: per-key command rate, under the group's lock (any hub's thread) ---- */

/* The bucket of key_id with one more reference (made full when new), or NULL (out of memory:
 * the connection is then not limited). */
bh_hub_rate_t *bh_hub_rate_ref(bh_hub_group_t *g, const char *key_id);
void bh_hub_rate_unref(bh_hub_group_t *g, bh_hub_rate_t *r);
/* Take one token: 1 when there was one, 0 when the key is over its rate. */
int bh_hub_rate_take(bh_hub_group_t *g, bh_hub_rate_t *r);

/* ---- hub.c ---- */

/* The group whose rate buckets the hub's connections use (before the hub serves). */
void bh_hub_set_group(bh_hub_t *h, bh_hub_group_t *g);
bh_hub_group_t *bh_hub_group_of(const bh_hub_t *h);
void bh_hub_sources(const bh_hub_t *h, bh_ledger_t **ledger, const bh_keyring_t **keyring);
/* The ledger's publication count (bh_ledger_published) up to which every change has reached
 * this hub; on the hub's thread (group.c: when it joins, and after each posted change). */
void bh_hub_set_seen(bh_hub_t *h, uint64_t published);

#endif
