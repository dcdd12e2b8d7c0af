/* Per-thread spare blocks: the smallest fitting block is handed out, a few are kept per slot
 * (the largest win), oversized blocks are not kept, slots and threads are separate, and a
 * thread's blocks are freed when it exits (ASan's leak check runs this file too). */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include "base/spare.h"

static void drain(int slot) {
    size_t cap;
    void *p;
    while ((p = bh_spare_take(slot, 0, &cap)) != NULL)
        free(p);
}

static void test_take_smallest_fitting(void **state) {
    (void)state;
    size_t cap = 0;
    assert_null(bh_spare_take(BH_SPARE_JSON, 1, &cap));
    void *a = malloc(100), *b = malloc(1000), *c = malloc(10000);
    bh_spare_give(BH_SPARE_JSON, b, 1000);
    bh_spare_give(BH_SPARE_JSON, c, 10000);
    bh_spare_give(BH_SPARE_JSON, a, 100);
    assert_ptr_equal(bh_spare_take(BH_SPARE_JSON, 500, &cap), b);
    assert_int_equal(cap, 1000);
    assert_null(bh_spare_take(BH_SPARE_JSON, 20000, &cap));
    assert_ptr_equal(bh_spare_take(BH_SPARE_JSON, 50, &cap), a);
    assert_int_equal(cap, 100);
    assert_ptr_equal(bh_spare_take(BH_SPARE_JSON, 50, &cap), c);
    assert_null(bh_spare_take(BH_SPARE_JSON, 0, &cap));
    free(a);
    free(b);
    free(c);
}

static void test_full_slot_keeps_the_largest(void **state) {
    (void)state;
    size_t cap;
    for (size_t n = 1; n <= 6; n++)
        bh_spare_give(BH_SPARE_WS, malloc(n * 64), n * 64);
    size_t seen[8], k = 0;
    void *p;
    while ((p = bh_spare_take(BH_SPARE_WS, 0, &cap)) != NULL) {
        seen[k++] = cap;
        free(p);
    }
    /* four kept, the smallest first: the two smallest were freed */
    assert_int_equal(k, 4);
    assert_int_equal(seen[0], 3 * 64);
    assert_int_equal(seen[3], 6 * 64);
}

static void test_oversized_and_null(void **state) {
    (void)state;
    size_t cap;
    bh_spare_give(BH_SPARE_MSGPACK, NULL, 10);
    bh_spare_give(BH_SPARE_MSGPACK, malloc(BH_SPARE_MAX + 1), BH_SPARE_MAX + 1);
    assert_null(bh_spare_take(BH_SPARE_MSGPACK, 0, &cap));
    bh_spare_give(BH_SPARE_MSGPACK, malloc(16), 16);
    assert_null(bh_spare_take(BH_SPARE_JSON, 0, &cap)); /* slots are separate */
    drain(BH_SPARE_MSGPACK);
}

static void *other_thread(void *arg) {
    size_t cap;
    /* nothing of the main thread's is visible here */
    *(int *)arg = bh_spare_take(BH_SPARE_JSON, 0, &cap) == NULL;
    bh_spare_give(BH_SPARE_JSON, malloc(4096), 4096); /* freed at thread exit */
    bh_spare_give(BH_SPARE_WS, malloc(512), 512);
    return NULL;
}

static void test_threads_are_separate(void **state) {
    (void)state;
    size_t cap;
    bh_spare_give(BH_SPARE_JSON, malloc(64), 64);
    int empty = 0;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, other_thread, &empty), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_true(empty);
    void *p = bh_spare_take(BH_SPARE_JSON, 0, &cap);
    assert_non_null(p);
    assert_int_equal(cap, 64);
    free(p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_take_smallest_fitting),
        cmocka_unit_test(test_full_slot_keeps_the_largest),
        cmocka_unit_test(test_oversized_and_null),
        cmocka_unit_test(test_threads_are_separate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
