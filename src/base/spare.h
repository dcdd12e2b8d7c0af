/* A per-thread cache of a few freed blocks per use, so that a buffer that is emptied and needed
 * again many times a second (a parse arena, a connection's frames waiting for a flush) is reused
 * instead of freed and allocated again, while an idle connection still holds no memory. The
 * blocks a thread keeps are freed when it exits. */
#ifndef BH_BASE_SPARE_H
#define BH_BASE_SPARE_H

#include <stddef.h>

enum { BH_SPARE_JSON, BH_SPARE_WS, BH_SPARE_MSGPACK, BH_SPARE_COUNT };

/* Largest block kept (bigger ones are freed at once). */
#define BH_SPARE_MAX ((size_t)64 << 10)

/* The smallest of this thread's spare blocks for slot that holds at least min bytes (its size
 * in *cap), or NULL. The caller owns the block. */
void *bh_spare_take(int slot, size_t min, size_t *cap);
/* Hand a block of cap bytes back: kept among the slot's spares (a few per slot, the largest
 * win) when it is at most BH_SPARE_MAX, freed otherwise. NULL is ignored. */
void bh_spare_give(int slot, void *p, size_t cap);

#endif
