/* Per-thread spare blocks: a few thread-local pointers per use (parses nest: a hub method's
 * answer is transcoded while the request's tree is alive), freed by a pthread key destructor
 * when the thread exits (the main thread's are still reachable at exit). */
#include "base/spare.h"

#include <pthread.h>
#include <stdlib.h>

#define PER_SLOT 4

typedef struct {
    void *p[PER_SLOT];
    size_t cap[PER_SLOT];
} slot_t;

static _Thread_local slot_t slots[BH_SPARE_COUNT];
static _Thread_local int registered;
static pthread_key_t key;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static int key_ok;

static void destroy(void *unused) {
    (void)unused;
    for (int i = 0; i < BH_SPARE_COUNT; i++) {
        for (int j = 0; j < PER_SLOT; j++) {
            free(slots[i].p[j]);
            slots[i].p[j] = NULL;
            slots[i].cap[j] = 0;
        }
    }
}

static void init_key(void) {
    key_ok = pthread_key_create(&key, destroy) == 0;
}

void *bh_spare_take(int slot, size_t min, size_t *cap) {
    slot_t *s = &slots[slot];
    int best = -1;
    for (int j = 0; j < PER_SLOT; j++)
        if (s->p[j] && s->cap[j] >= min && (best < 0 || s->cap[j] < s->cap[best]))
            best = j;
    if (best < 0)
        return NULL;
    void *p = s->p[best];
    *cap = s->cap[best];
    s->p[best] = NULL;
    s->cap[best] = 0;
    return p;
}

void bh_spare_give(int slot, void *p, size_t cap) {
    slot_t *s = &slots[slot];
    if (!p)
        return;
    if (cap > BH_SPARE_MAX) {
        free(p);
        return;
    }
    if (!registered) {
        pthread_once(&once, init_key);
        /* The destructor only runs for a non-NULL value. */
        registered = key_ok && pthread_setspecific(key, &registered) == 0;
        if (!registered) {
            free(p);
            return;
        }
    }
    int smallest = 0;
    for (int j = 0; j < PER_SLOT; j++) {
        if (!s->p[j]) {
            s->p[j] = p;
            s->cap[j] = cap;
            return;
        }
        if (s->cap[j] < s->cap[smallest])
            smallest = j;
    }
    if (s->cap[smallest] >= cap) {
        free(p);
        return;
    }
    free(s->p[smallest]);
    s->p[smallest] = p;
    s->cap[smallest] = cap;
}
