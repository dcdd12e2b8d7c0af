/* Unit tests for the loop mailbox (src/net/mailbox.c): four producer threads racing into one
 * loop (per-producer order, every call exactly once), one wake-up runs everything queued, close
 * with and without drop, close from inside a call, and close while producers are still posting
 * (a refused post leaves arg with the producer; nothing leaks). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "base/error.h"
#include "net/net.h"

#define PRODUCERS 4
#define PER_PRODUCER 100000

/* arg encodes (producer, sequence) so the consumer checks order without allocations. */
#define ARG(p, seq) ((void *)(uintptr_t)(((uintptr_t)(p) << 32) | (uintptr_t)(seq)))
#define ARG_P(a) ((unsigned)((uintptr_t)(a) >> 32))
#define ARG_SEQ(a) ((unsigned)((uintptr_t)(a)&0xffffffffu))

typedef struct {
    bh_mailbox_t *m;
    long next[PRODUCERS]; /* consumer: the sequence expected next from each producer */
    long calls;
    long total; /* close once this many ran */
    int out_of_order;
    pthread_t loop_thread;
    int wrong_thread;
} consumer_t;

static consumer_t g_c;

static void consume(void *arg) {
    unsigned p = ARG_P(arg), seq = ARG_SEQ(arg);
    if (!pthread_equal(pthread_self(), g_c.loop_thread))
        g_c.wrong_thread = 1;
    if (p >= PRODUCERS || seq != (unsigned)g_c.next[p])
        g_c.out_of_order = 1;
    else
        g_c.next[p]++;
    if (++g_c.calls == g_c.total)
        bh_mailbox_close(g_c.m, NULL);
}

typedef struct {
    bh_mailbox_t *m;
    unsigned id;
    int failures;
} producer_t;

static void *produce(void *arg) {
    producer_t *p = arg;
    for (unsigned i = 0; i < PER_PRODUCER; i++)
        if (bh_mailbox_post(p->m, consume, ARG(p->id, i)) != BH_OK)
            p->failures++;
    return NULL;
}

static int g_dog_fired;

static void on_dog(uv_timer_t *t) {
    g_dog_fired = 1;
    uv_stop(t->loop);
}

/* A watchdog that does not keep the loop alive: a hang becomes a failure, not a stuck test. */
static void watchdog(uv_loop_t *loop, uv_timer_t *dog) {
    g_dog_fired = 0;
    uv_timer_init(loop, dog);
    uv_timer_start(dog, on_dog, 30000, 0);
    uv_unref((uv_handle_t *)dog);
}

static void finish(uv_loop_t *loop, uv_timer_t *dog) {
    uv_close((uv_handle_t *)dog, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(loop), 0);
}

static void test_four_producers(void **state) {
    uv_loop_t loop;
    uv_timer_t dog;
    uv_loop_init(&loop);
    memset(&g_c, 0, sizeof g_c);
    g_c.total = (long)PRODUCERS * PER_PRODUCER;
    g_c.loop_thread = pthread_self();
    assert_int_equal(bh_mailbox_new(&loop, &g_c.m), BH_OK);
    watchdog(&loop, &dog);
    producer_t prod[PRODUCERS];
    pthread_t th[PRODUCERS];
    for (unsigned i = 0; i < PRODUCERS; i++) {
        prod[i] = (producer_t){.m = g_c.m, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, produce, &prod[i]), 0);
    }
    /* The last call closes the mailbox; with its handle closed the loop ends. */
    uv_run(&loop, UV_RUN_DEFAULT);
    for (unsigned i = 0; i < PRODUCERS; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(prod[i].failures, 0);
        assert_int_equal(g_c.next[i], PER_PRODUCER);
    }
    assert_false(g_dog_fired);
    assert_int_equal(g_c.calls, g_c.total);
    assert_false(g_c.out_of_order);
    assert_false(g_c.wrong_thread);
    finish(&loop, &dog);
}

/* ---- one wake-up runs everything queued; close with and without drop ---- */

static int g_ran[16], g_dropped[16], g_nran, g_ndropped;
static bh_mailbox_t *g_m;
static int g_close_at = -1;

static void note(void *arg) {
    int i = (int)(intptr_t)arg;
    g_ran[g_nran++] = i;
    if (i == g_close_at)
        bh_mailbox_close(g_m, NULL);
}

static void note_close_drop(void *arg);

static void drop_note(void (*fn)(void *), void *arg) {
    assert_true(fn == note || fn == note_close_drop);
    g_dropped[g_ndropped++] = (int)(intptr_t)arg;
}

static void note_close_drop(void *arg) {
    g_ran[g_nran++] = (int)(intptr_t)arg;
    bh_mailbox_close(g_m, drop_note);
    /* From inside a call too: closed means closed. */
    assert_int_equal(bh_mailbox_post(g_m, note, (void *)(intptr_t)99), BH_ECLOSED);
}

static void reset_notes(void) {
    memset(g_ran, 0, sizeof g_ran);
    memset(g_dropped, 0, sizeof g_dropped);
    g_nran = g_ndropped = 0;
    g_close_at = -1;
}

static void test_one_wakeup_runs_all(void **state) {
    uv_loop_t loop;
    uv_timer_t dog;
    uv_loop_init(&loop);
    watchdog(&loop, &dog);
    reset_notes();
    assert_int_equal(bh_mailbox_new(&loop, &g_m), BH_OK);
    for (int i = 0; i < 10; i++)
        assert_int_equal(bh_mailbox_post(g_m, note, (void *)(intptr_t)i), BH_OK);
    assert_int_equal(g_nran, 0); /* never on the poster's stack */
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(g_nran, 10);
    for (int i = 0; i < 10; i++)
        assert_int_equal(g_ran[i], i);
    /* An empty wake-up (no calls) is harmless; more calls later run in order too. */
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(bh_mailbox_post(g_m, note, (void *)(intptr_t)10), BH_OK);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(g_nran, 11);
    assert_int_equal(g_ran[10], 10);
    /* close with drop NULL: what is queued runs inside close, in order */
    assert_int_equal(bh_mailbox_post(g_m, note, (void *)(intptr_t)11), BH_OK);
    assert_int_equal(bh_mailbox_post(g_m, note, (void *)(intptr_t)12), BH_OK);
    bh_mailbox_close(g_m, NULL);
    assert_int_equal(g_nran, 13);
    assert_int_equal(g_ran[11], 11);
    assert_int_equal(g_ran[12], 12);
    assert_int_equal(bh_mailbox_post(g_m, note, (void *)(intptr_t)13), BH_ECLOSED);
    bh_mailbox_close(g_m, NULL); /* idempotent until freed */
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(g_nran, 13);
    finish(&loop, &dog);
}

static void test_close_inside_call(void **state) {
    uv_loop_t loop;
    uv_timer_t dog;
    uv_loop_init(&loop);
    watchdog(&loop, &dog);
    /* drop given: calls 0..2 run, 2 closes, 3..9 go to drop in order */
    reset_notes();
    assert_int_equal(bh_mailbox_new(&loop, &g_m), BH_OK);
    for (int i = 0; i < 10; i++)
        assert_int_equal(bh_mailbox_post(g_m, i == 2 ? note_close_drop : note, (void *)(intptr_t)i),
                         BH_OK);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(g_nran, 3);
    assert_int_equal(g_ndropped, 7);
    for (int i = 0; i < 7; i++)
        assert_int_equal(g_dropped[i], i + 3);
    /* drop NULL from inside a call: the rest runs inside the close, each exactly once */
    reset_notes();
    g_close_at = 4;
    assert_int_equal(bh_mailbox_new(&loop, &g_m), BH_OK);
    for (int i = 0; i < 10; i++)
        assert_int_equal(bh_mailbox_post(g_m, note, (void *)(intptr_t)i), BH_OK);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(g_nran, 10);
    for (int i = 0; i < 10; i++)
        assert_int_equal(g_ran[i], i);
    /* closed before anything was posted: nothing to hand out */
    reset_notes();
    assert_int_equal(bh_mailbox_new(&loop, &g_m), BH_OK);
    bh_mailbox_close(g_m, drop_note);
    assert_int_equal(bh_mailbox_post(g_m, note, NULL), BH_ECLOSED);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(g_nran + g_ndropped, 0);
    finish(&loop, &dog);
}

/* ---- close while four producers post heap-allocated args ---- */

typedef struct {
    unsigned producer, seq;
} item_t;

typedef struct {
    bh_mailbox_t *m;
    unsigned id;
    long accepted, refused;
    int other_error;
} racer_t;

static racer_t g_racers[PRODUCERS];
static pthread_t g_racer_th[PRODUCERS];
static long g_race_ran, g_race_dropped, g_race_next[PRODUCERS];
static int g_race_order_bad;

static void race_check(item_t *it) {
    if (it->producer >= PRODUCERS || it->seq != (unsigned)g_race_next[it->producer])
        g_race_order_bad = 1;
    else
        g_race_next[it->producer]++;
    free(it);
}

static void race_drop(void (*fn)(void *), void *arg) {
    g_race_dropped++;
    race_check(arg);
}

static void race_call(void *arg) {
    g_race_ran++;
    race_check(arg);
    if (g_race_ran == 5000) {
        /* Producers are mid-stream: close, and wait for each to see it before the loop may
         * free the mailbox (a producer must know the mailbox still exists). */
        bh_mailbox_close(g_racers[0].m, race_drop);
        for (int i = 0; i < PRODUCERS; i++)
            assert_int_equal(pthread_join(g_racer_th[i], NULL), 0);
    }
}

static void *race(void *arg) {
    racer_t *r = arg;
    for (unsigned seq = 0;; seq++) {
        item_t *it = malloc(sizeof *it);
        if (!it) {
            r->other_error = 1;
            return NULL;
        }
        *it = (item_t){r->id, seq};
        int rc = bh_mailbox_post(r->m, race_call, it);
        if (rc == BH_OK) {
            r->accepted++;
            continue;
        }
        free(it); /* refused: still ours */
        if (rc == BH_ECLOSED)
            r->refused++;
        else
            r->other_error = 1;
        return NULL;
    }
}

static void test_close_while_producing(void **state) {
    uv_loop_t loop;
    uv_timer_t dog;
    uv_loop_init(&loop);
    watchdog(&loop, &dog);
    bh_mailbox_t *m = NULL;
    assert_int_equal(bh_mailbox_new(&loop, &m), BH_OK);
    g_race_ran = g_race_dropped = 0;
    g_race_order_bad = 0;
    memset(g_race_next, 0, sizeof g_race_next);
    for (unsigned i = 0; i < PRODUCERS; i++) {
        g_racers[i] = (racer_t){.m = m, .id = i};
        assert_int_equal(pthread_create(&g_racer_th[i], NULL, race, &g_racers[i]), 0);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_false(g_dog_fired);
    long accepted = 0;
    for (int i = 0; i < PRODUCERS; i++) {
        assert_false(g_racers[i].other_error);
        assert_int_equal(g_racers[i].refused, 1); /* each stopped on its first refusal */
        accepted += g_racers[i].accepted;
        /* every accepted call either ran or was dropped, in the producer's order */
        assert_int_equal(g_race_next[i], g_racers[i].accepted);
    }
    assert_int_equal(g_race_ran, 5000);
    assert_int_equal(g_race_ran + g_race_dropped, accepted);
    assert_false(g_race_order_bad);
    finish(&loop, &dog);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_four_producers),
        cmocka_unit_test(test_one_wakeup_runs_all),
        cmocka_unit_test(test_close_inside_call),
        cmocka_unit_test(test_close_while_producing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
