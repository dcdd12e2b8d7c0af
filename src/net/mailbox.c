/* Calls into a loop from any thread: a lock-free multi-producer single-consumer queue (Vyukov's
 * intrusive queue with a sentinel node) drained by the loop's thread from one uv_async_t. Producers
 * only exchange a pointer and wake the loop; the consumer never blocks them. */
#include "net.h"

#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "../base/error.h"

typedef struct mb_node {
    _Atomic(struct mb_node *) next;
    void (*fn)(void *arg);
    void *arg;
} mb_node_t;

struct bh_mailbox {
    uv_async_t async;
    _Atomic(mb_node_t *) head; /* producers swap themselves in here (the newest node) */
    mb_node_t *tail;           /* consumer only: the oldest node (or the sentinel) */
    mb_node_t sentinel;
    /* Producers between their check of `closed` and their last touch of the mailbox; close
     * waits for it to reach 0, so no push or uv_async_send can follow the handle's close. */
    _Atomic int posting;
    _Atomic int closed;
};

static void push(bh_mailbox_t *m, mb_node_t *n) {
    atomic_store_explicit(&n->next, NULL, memory_order_relaxed);
    mb_node_t *prev = atomic_exchange_explicit(&m->head, n, memory_order_acq_rel);
    /* Between the exchange and this store the queue is briefly cut; pop sees that as empty and
     * the producer's uv_async_send that follows brings the consumer back. */
    atomic_store_explicit(&prev->next, n, memory_order_release);
}

/* The oldest node, or NULL when the queue is empty (or a producer is mid-push). */
static mb_node_t *pop(bh_mailbox_t *m) {
    mb_node_t *tail = m->tail;
    mb_node_t *next = atomic_load_explicit(&tail->next, memory_order_acquire);
    if (tail == &m->sentinel) {
        if (!next)
            return NULL;
        m->tail = next;
        tail = next;
        next = atomic_load_explicit(&next->next, memory_order_acquire);
    }
    if (next) {
        m->tail = next;
        return tail;
    }
    if (tail != atomic_load_explicit(&m->head, memory_order_acquire))
        return NULL; /* a producer has swapped head but not linked it yet */
    /* tail is the last node: put the sentinel behind it so tail can be handed out. */
    push(m, &m->sentinel);
    next = atomic_load_explicit(&tail->next, memory_order_acquire);
    if (next) {
        m->tail = next;
        return tail;
    }
    return NULL;
}

static void on_async(uv_async_t *a) {
    bh_mailbox_t *m = a->data;
    /* Only what was queued when the wake-up came: a steady stream of posts cannot keep the loop
     * here (each later post sends its own wake-up). */
    mb_node_t *last = atomic_load_explicit(&m->head, memory_order_acquire);
    mb_node_t *n;
    while ((n = pop(m)) != NULL) {
        int was_last = n == last;
        void (*fn)(void *) = n->fn;
        void *arg = n->arg;
        free(n);
        fn(arg);
        if (atomic_load_explicit(&m->closed, memory_order_relaxed))
            return; /* fn closed the mailbox, which handed out the rest */
        if (was_last)
            break;
    }
}

static void on_closed(uv_handle_t *h) {
    free(h->data);
}

int bh_mailbox_new(uv_loop_t *loop, bh_mailbox_t **out) {
    bh_mailbox_t *m = calloc(1, sizeof *m);
    if (!m)
        return BH_ENOMEM;
    atomic_init(&m->sentinel.next, NULL);
    atomic_init(&m->head, &m->sentinel);
    m->tail = &m->sentinel;
    atomic_init(&m->posting, 0);
    atomic_init(&m->closed, 0);
    if (uv_async_init(loop, &m->async, on_async) < 0) {
        free(m);
        return BH_EIO;
    }
    m->async.data = m;
    *out = m;
    return BH_OK;
}

int bh_mailbox_post(bh_mailbox_t *m, void (*fn)(void *arg), void *arg) {
    mb_node_t *n = malloc(sizeof *n);
    if (!n)
        return BH_ENOMEM;
    n->fn = fn;
    n->arg = arg;
    /* seq_cst on both sides (posting here, closed in close) so that either this producer sees
     * the close or the close sees this producer. */
    atomic_fetch_add(&m->posting, 1);
    if (atomic_load(&m->closed)) {
        atomic_fetch_sub(&m->posting, 1);
        free(n);
        return BH_ECLOSED;
    }
    push(m, n);
    int r = uv_async_send(&m->async);
    atomic_fetch_sub(&m->posting, 1);
    /* libuv only fails on a closing handle, which `posting` rules out. */
    return r < 0 ? BH_EIO : BH_OK;
}

void bh_mailbox_close(bh_mailbox_t *m, void (*drop)(void (*fn)(void *), void *arg)) {
    if (atomic_load(&m->closed))
        return;
    atomic_store(&m->closed, 1);
    /* A producer that got past the check is a few instructions from done: wait for it. */
    while (atomic_load(&m->posting) > 0)
        sched_yield();
    mb_node_t *n;
    while ((n = pop(m)) != NULL) {
        void (*fn)(void *) = n->fn;
        void *arg = n->arg;
        free(n);
        if (drop)
            drop(fn, arg);
        else
            fn(arg);
    }
    uv_close((uv_handle_t *)&m->async, on_closed);
}
