/* Building published snapshots (internal to src/ledger): the ledger computes exposures, this
 * turns them into an immutable bh_snapshot_t with its `data` JSON bytes cached. */
#ifndef BH_LEDGER_SNAPSHOT_H
#define BH_LEDGER_SNAPSHOT_H

#include "ledger.h"

/* A new snapshot with one reference held by the caller. assets (n of them, sorted by name,
 * exposures filled in) and the strings are copied. BH_ENOMEM on allocation failure. */
int bh_snapshot_new(const char *user_id, uint64_t sequence, const char *base_currency,
                    bh_dec_t total_current_exposure, bh_dec_t total_max_exposure, bool deleted,
                    const bh_asset_t *assets, size_t n, bh_snapshot_t **out);

/* Decimal digits of v into out (no NUL); returns their count (at most 20). */
size_t bh_snapshot_u64(uint64_t v, char out[20]);

#endif
