/* Group commit. Operations are applied to the working state on the loop thread and queued;
 * one commit thread writes the queued changes in batches, one transaction and one fsync per
 * batch, while the next batch accumulates. Back on the loop thread each durable change is
 * published (snapshot, listener) and answered, in order. A failed batch fails its changes and
 * any queued changes of the same users, whose working state is then reloaded from the store. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../base/error.h"
#include "../base/log.h"
#include "../base/metrics.h"
#include "internal.h"

/* While no batch comes, the commit thread checks this often that it could still write. */
#define PROBE_INTERVAL_MS 500

void bh_queue_push(bh_queue_t *q, bh_change_t *c) {
    c->next = NULL;
    if (q->tail)
        q->tail->next = c;
    else
        q->head = c;
    q->tail = c;
}

static bh_queue_t queue_take(bh_queue_t *q) {
    bh_queue_t out = *q;
    q->head = q->tail = NULL;
    return out;
}

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The CLOCK_MONOTONIC time (qcond's clock) of the next idle probe. */
static struct timespec next_probe_time(void) {
    uint64_t t = mono_ns() + (uint64_t)PROBE_INTERVAL_MS * 1000000u;
    return (struct timespec){.tv_sec = (time_t)(t / 1000000000u),
                             .tv_nsec = (long)(t % 1000000000u)};
}

/* Record whether the store is reachable; log only the changes (probes run twice a second). */
static void set_ready(bh_ledger_t *l, int st) {
    int ok = st == BH_OK;
    int was = atomic_exchange_explicit(&l->store_ok, ok, memory_order_relaxed);
    if (was && !ok)
        bh_log(BH_LOG_ERROR, "ledger: store unavailable", BH_LS("error", bh_strerror(st)));
    else if (!was && ok)
        bh_log_msg(BH_LOG_INFO, "ledger: store available again");
}

int bh_ledger_ready(const bh_ledger_t *l) {
    return l && atomic_load_explicit((atomic_int *)&l->store_ok, memory_order_relaxed);
}

static void *commit_thread(void *arg) {
    bh_ledger_t *l = arg;
    bh_store_change_t *arr = NULL;
    size_t cap = 0;
    struct timespec next_probe = next_probe_time();
    int probe_now = 0;

    pthread_mutex_lock(&l->qmu);
    for (;;) {
        /* Idle: probe the store when due (at once after a failed commit), never while a batch
         * waits; a commit tells as much as a probe. bh_commit_stop wakes this wait. */
        while (!l->work.head && !l->stopping) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (probe_now || now.tv_sec > next_probe.tv_sec ||
                (now.tv_sec == next_probe.tv_sec && now.tv_nsec >= next_probe.tv_nsec)) {
                pthread_mutex_unlock(&l->qmu);
                set_ready(l, bh_store_probe(l->writer));
                pthread_mutex_lock(&l->qmu);
                probe_now = 0;
                next_probe = next_probe_time();
            } else {
                pthread_cond_timedwait(&l->qcond, &l->qmu, &next_probe);
            }
        }
        if (!l->work.head)
            break;
        bh_queue_t batch = queue_take(&l->work);
        pthread_mutex_unlock(&l->qmu);

        size_t n = 0;
        for (bh_change_t *c = batch.head; c; c = c->next)
            n++;
        int st = BH_ENOMEM;
        if (n > cap) {
            bh_store_change_t *grown = realloc(arr, n * sizeof *arr);
            if (grown) {
                arr = grown;
                cap = n;
            }
        }
        if (n <= cap) {
            size_t i = 0;
            for (bh_change_t *c = batch.head; c; c = c->next, i++) {
                arr[i] = (bh_store_change_t){
                    .user = c->user ? &c->row : NULL,
                    .assets = c->assets,
                    .nassets = c->nassets,
                    .journal = c->user ? &c->journal : NULL,
                    .rates = c->rates,
                    .nrates = c->nrates,
                };
            }
            uint64_t t0 = mono_ns();
            st = bh_store_commit_batch(l->writer, arr, n);
            if (st == BH_OK) {
                bh_metric_add(BH_M_LEDGER_COMMITS, 1);
                bh_metric_commit_ns(mono_ns() - t0);
            }
        }
        /* Only BH_ESTORE says the store failed; after any failure a probe tells for sure. */
        if (st == BH_OK || st == BH_ESTORE)
            set_ready(l, st);
        probe_now = st != BH_OK;
        next_probe = next_probe_time();
        pthread_mutex_lock(&l->qmu);
        for (bh_change_t *c = batch.head; c; c = c->next)
            if (st != BH_OK)
                c->status = st;
        if (batch.head) {
            if (l->done.tail)
                l->done.tail->next = batch.head;
            else
                l->done.head = batch.head;
            l->done.tail = batch.tail;
        }
        pthread_cond_broadcast(&l->qcond);
        uv_async_send(&l->async);
    }
    pthread_mutex_unlock(&l->qmu);
    free(arr);
    return NULL;
}

static void handover(bh_ledger_t *l) {
    if (l->busy || !l->pending.head)
        return;
    l->busy = 1;
    bh_queue_t batch = queue_take(&l->pending);
    pthread_mutex_lock(&l->qmu);
    l->work = batch;
    pthread_cond_broadcast(&l->qcond);
    pthread_mutex_unlock(&l->qmu);
}

/* bh_ledger_ops_total: every answer counts, repeats and waiters on a pending op id too. */
static void count_answer(int status) {
    bh_metric_add(status == BH_OK                              ? BH_M_LEDGER_OPS_OK
                  : status == BH_ESTORE || status == BH_ENOMEM ? BH_M_LEDGER_OPS_FAILED
                                                               : BH_M_LEDGER_OPS_REJECTED,
                  1);
}

static void deliver(bh_change_t *c) {
    bh_op_result_t r = {
        .status = c->status,
        .reason = c->status != BH_OK ? c->reason : NULL,
        .repeated = c->repeated,
        .sequence = c->row.sequence,
        .result = c->status == BH_OK ? c->result : NULL,
        .result_len = c->status == BH_OK ? c->result_len : 0,
        .snap = c->status == BH_OK && !c->repeated ? c->snap : NULL,
    };
    if (c->cb) {
        count_answer(r.status);
        c->cb(c->ud, &r);
    }
    r.repeated = r.status == BH_OK; /* a failed op was not applied, not even once */
    r.snap = NULL;
    for (bh_waiter_t *w = c->waiters; w; w = w->next) {
        count_answer(r.status);
        w->cb(w->ud, &r);
    }
}

static void unmap(bh_ledger_t *l, bh_change_t *c) {
    if (c->in_map) {
        bh_map_remove(&l->ops, c->opkey);
        c->in_map = false;
    }
}

static int has_user(bh_user_t **users, size_t n, const bh_user_t *u) {
    for (size_t i = 0; i < n; i++)
        if (users[i] == u)
            return 1;
    return 0;
}

/* The batch failed: its changes fail, and so do queued changes of the same users (they were
 * validated against state that never became durable); those users are reloaded. */
static void fail_batch(bh_ledger_t *l, bh_queue_t done) {
    size_t n = 0, cap = 0;
    bh_user_t **users = NULL;
    bh_queue_t failed = done, keep = {0};
    int st = done.head->status;

    bh_log(BH_LOG_ERROR, "ledger: commit of a batch failed", BH_LS("error", bh_strerror(st)));
    for (bh_change_t *c = done.head; c; c = c->next) {
        if (c->user && !has_user(users, n, c->user)) {
            if (n == cap) {
                size_t nc = cap ? cap * 2 : 16;
                bh_user_t **g = realloc(users, nc * sizeof *g);
                if (!g)
                    break; /* still reloaded below through the pending scan */
                users = g;
                cap = nc;
            }
            users[n++] = c->user;
        }
    }
    for (bh_change_t *c = l->pending.head, *next; c; c = next) {
        next = c->next;
        if (c->user && has_user(users, n, c->user)) {
            c->status = BH_ESTORE;
            bh_queue_push(&failed, c);
        } else {
            bh_queue_push(&keep, c);
        }
    }
    l->pending = keep;
    for (size_t i = 0; i < n; i++)
        bh_ledger_reload_user(l, users[i]);
    free(users);
    for (bh_change_t *c = failed.head, *next; c; c = next) {
        next = c->next;
        /* Whatever the store said (a duplicate op id from another writer, a full disk), the
         * caller can only retry later: nothing was applied. */
        c->status = BH_ESTORE;
        /* As for rejections: the op got no sequence (the next change will use this one). */
        c->row.sequence = 0;
        snprintf(c->reason, sizeof c->reason, "the store could not commit the change (%s)",
                 bh_strerror(st));
        unmap(l, c);
        deliver(c);
        bh_change_free(c);
    }
}

static void on_async(uv_async_t *h) {
    bh_ledger_t *l = h->data;
    pthread_mutex_lock(&l->qmu);
    bh_queue_t done = queue_take(&l->done);
    pthread_mutex_unlock(&l->qmu);
    if (done.head) {
        l->busy = 0;
        if (done.head->status != BH_OK) {
            fail_batch(l, done);
        } else {
            for (bh_change_t *c = done.head, *next; c; c = next) {
                next = c->next;
                if (c->user) {
                    bh_ledger_publish(l, c);
                    /* Durable now: the filter must know it before the op leaves the map. */
                    bh_opfilter_add(&l->journaled, c->opkey, c->opkey_len);
                } else
                    bh_ledger_apply_rates(l, c->rates, c->nrates);
                unmap(l, c);
                deliver(c);
                bh_change_free(c);
            }
        }
    }
    bh_queue_t ready = queue_take(&l->ready);
    for (bh_change_t *c = ready.head, *next; c; c = next) {
        next = c->next;
        deliver(c);
        bh_change_free(c);
    }
    handover(l);
}

static void on_idle(uv_idle_t *h) {
    uv_idle_stop(h);
    handover(h->data);
}

void bh_commit_enqueue(bh_ledger_t *l, bh_change_t *c) {
    bh_queue_push(&l->pending, c);
    if (!l->busy && !l->closing)
        uv_idle_start(&l->idle, on_idle); /* hand over after this loop turn's submissions */
}

void bh_commit_ready(bh_ledger_t *l, bh_change_t *c) {
    bh_queue_push(&l->ready, c);
    uv_async_send(&l->async);
}

int bh_commit_start(bh_ledger_t *l) {
    uv_async_init(l->loop, &l->async, on_async);
    uv_idle_init(l->loop, &l->idle);
    l->async.data = l->idle.data = l;
    if (pthread_create(&l->thread, NULL, commit_thread, l) != 0)
        return BH_ENOMEM;
    l->thread_started = 1;
    return BH_OK;
}

static void on_handle_closed(uv_handle_t *h) {
    bh_ledger_t *l = h->data;
    if (--l->closing == 0)
        bh_ledger_free(l);
}

void bh_commit_stop(bh_ledger_t *l) {
    l->closing = 1;
    for (;;) {
        handover(l);
        if (l->busy) {
            pthread_mutex_lock(&l->qmu);
            while (!l->done.head)
                pthread_cond_wait(&l->qcond, &l->qmu);
            pthread_mutex_unlock(&l->qmu);
        } else if (!l->ready.head) {
            break;
        }
        on_async(&l->async);
    }
    if (l->thread_started) {
        pthread_mutex_lock(&l->qmu);
        l->stopping = 1;
        pthread_cond_broadcast(&l->qcond);
        pthread_mutex_unlock(&l->qmu);
        pthread_join(l->thread, NULL);
    }
    l->closing = 2; /* two handles to close; the last close frees the ledger */
    uv_close((uv_handle_t *)&l->async, on_handle_closed);
    uv_close((uv_handle_t *)&l->idle, on_handle_closed);
}
