/* Unit tests for bh_buf_t (growth, hard cap, failure atomicity) and bh_strerror. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "base/buf.h"
#include "base/error.h"

static void test_init_empty(void **state) {
    bh_buf_t b;
    memset(&b, 0xAA, sizeof b);
    bh_buf_init(&b, 123);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
    assert_int_equal(b.max, 123);
    bh_buf_free(&b); /* freeing a never-used buffer is fine */
    assert_null(b.data);
}

static void test_append_basic(void **state) {
    bh_buf_t b;
    bh_buf_init(&b, 0);
    assert_int_equal(bh_buf_append(&b, "abc", 3), BH_OK);
    assert_int_equal(b.len, 3);
    assert_memory_equal(b.data, "abc\0", 4);
    assert_int_equal(bh_buf_appends(&b, "def"), BH_OK);
    assert_int_equal(bh_buf_appendc(&b, 'g'), BH_OK);
    assert_int_equal(b.len, 7);
    assert_string_equal(b.data, "abcdefg");
    assert_int_equal(bh_buf_append(&b, "x\0y", 3), BH_OK); /* binary-safe */
    assert_int_equal(b.len, 10);
    assert_memory_equal(b.data, "abcdefgx\0y\0", 11);
    assert_int_equal(bh_buf_append(&b, NULL, 0), BH_OK);
    assert_int_equal(bh_buf_appends(&b, ""), BH_OK);
    assert_int_equal(b.len, 10);
    bh_buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    /* reusable after free */
    assert_int_equal(bh_buf_appends(&b, "again"), BH_OK);
    assert_string_equal(b.data, "again");
    bh_buf_free(&b);
}

static void test_growth_doubles(void **state) {
    bh_buf_t b;
    bh_buf_init(&b, 0);
    assert_int_equal(bh_buf_appendc(&b, 'a'), BH_OK);
    size_t first = b.cap;
    assert_true(first >= 1);
    size_t prev = first;
    int grows = 0;
    for (int i = 1; i < 100000; i++) {
        assert_int_equal(bh_buf_appendc(&b, (char)('a' + i % 26)), BH_OK);
        assert_true(b.cap >= b.len);
        assert_int_equal(b.data[b.len], '\0');
        if (b.cap != prev) {
            assert_int_equal(b.cap, prev * 2);
            prev = b.cap;
            grows++;
        }
    }
    assert_int_equal(b.len, 100000);
    assert_true(grows <= 20); /* doubling: logarithmic number of reallocations */
    for (int i = 0; i < 100000; i++)
        assert_int_equal(b.data[i], (char)('a' + i % 26));
    bh_buf_free(&b);
}

static void test_big_single_append(void **state) {
    bh_buf_t b;
    bh_buf_init(&b, 0);
    static char big[10000];
    memset(big, 'z', sizeof big);
    assert_int_equal(bh_buf_append(&b, big, sizeof big), BH_OK);
    assert_int_equal(b.len, sizeof big);
    assert_true(b.cap >= sizeof big);
    assert_int_equal(b.data[sizeof big], '\0');
    assert_memory_equal(b.data, big, sizeof big);
    bh_buf_free(&b);
}

static void test_max_cap(void **state) {
    bh_buf_t b;
    bh_buf_init(&b, 10);
    assert_int_equal(bh_buf_append(&b, "0123456789x", 11), BH_ETOOBIG);
    assert_null(b.data); /* failed first append allocated nothing */
    assert_int_equal(b.len, 0);
    assert_int_equal(bh_buf_append(&b, "01234", 5), BH_OK);
    assert_true(b.cap <= 10);
    assert_int_equal(bh_buf_append(&b, "56789", 5), BH_OK);
    assert_int_equal(b.len, 10);
    assert_int_equal(b.cap, 10);
    assert_string_equal(b.data, "0123456789");
    assert_int_equal(bh_buf_appendc(&b, 'x'), BH_ETOOBIG);
    assert_int_equal(bh_buf_appends(&b, "xy"), BH_ETOOBIG);
    assert_int_equal(bh_buf_printf(&b, "%d", 1), BH_ETOOBIG);
    assert_int_equal(bh_buf_reserve(&b, 1), BH_ETOOBIG);
    assert_int_equal(bh_buf_reserve(&b, 0), BH_OK);
    assert_int_equal(b.len, 10);
    assert_string_equal(b.data, "0123456789");
    /* consuming frees room under the cap again */
    bh_buf_consume(&b, 3);
    assert_int_equal(bh_buf_appends(&b, "abc"), BH_OK);
    assert_string_equal(b.data, "3456789abc");
    assert_int_equal(bh_buf_appendc(&b, 'd'), BH_ETOOBIG);
    bh_buf_free(&b);
}

static void test_max_limits_growth(void **state) {
    bh_buf_t b;
    bh_buf_init(&b, 100);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(bh_buf_appendc(&b, 'q'), BH_OK);
        assert_true(b.cap <= 100);
    }
    assert_int_equal(bh_buf_appendc(&b, 'q'), BH_ETOOBIG);
    assert_int_equal(b.len, 100);
    bh_buf_free(&b);
}

static void test_reserve_overflow(void **state) {
    bh_buf_t b;
    bh_buf_init(&b, 0);
    assert_int_equal(bh_buf_appends(&b, "abc"), BH_OK);
    assert_int_equal(bh_buf_reserve(&b, SIZE_MAX), BH_ETOOBIG);
    assert_int_equal(bh_buf_reserve(&b, SIZE_MAX - 2), BH_ETOOBIG);
    assert_int_equal(bh_buf_append(&b, "x", SIZE_MAX), BH_ETOOBIG);
    assert_string_equal(b.data, "abc");
    assert_int_equal(bh_buf_reserve(&b, 1000), BH_OK);
    assert_true(b.cap >= 1003);
    assert_int_equal(b.len, 3);
    assert_string_equal(b.data, "abc");
    bh_buf_free(&b);
}

static void test_reserve_then_write(void **state) {
    bh_buf_t b;
    bh_buf_init(&b, 0);
    assert_int_equal(bh_buf_reserve(&b, 0), BH_OK);
    assert_non_null(b.data);
    assert_string_equal(b.data, "");
    assert_int_equal(bh_buf_reserve(&b, 500), BH_OK);
    assert_true(b.cap >= 500);
    size_t cap = b.cap;
    for (int i = 0; i < 500; i++)
        assert_int_equal(bh_buf_appendc(&b, '.'), BH_OK);
    assert_int_equal(b.cap, cap); /* no growth after reserving */
    bh_buf_free(&b);
}

static void test_printf(void **state) {
    bh_buf_t b;
    bh_buf_init(&b, 0);
    assert_int_equal(bh_buf_printf(&b, "%d-%s-%c", 42, "abc", 'z'), BH_OK);
    assert_string_equal(b.data, "42-abc-z");
    assert_int_equal(b.len, 8);
    assert_int_equal(bh_buf_printf(&b, "%s", ""), BH_OK);
    assert_int_equal(b.len, 8);
    assert_int_equal(bh_buf_printf(&b, "|%05u|%x", 7u, 255u), BH_OK);
    assert_string_equal(b.data, "42-abc-z|00007|ff");
    /* longer than the current capacity: the second vsnprintf must see the grown buffer */
    char want[400];
    memset(want, 'k', 300);
    want[300] = '\0';
    assert_int_equal(bh_buf_printf(&b, "%s", want), BH_OK);
    assert_int_equal(b.len, 17 + 300);
    assert_memory_equal(b.data + 17, want, 301);
    bh_buf_free(&b);
}

static void test_printf_cap(void **state) {
    bh_buf_t b;
    bh_buf_init(&b, 8);
    assert_int_equal(bh_buf_printf(&b, "%s", "1234"), BH_OK);
    assert_int_equal(bh_buf_printf(&b, "%s", "56789"), BH_ETOOBIG);
    assert_int_equal(b.len, 4);
    assert_string_equal(b.data, "1234");
    assert_int_equal(bh_buf_printf(&b, "%d", 5678), BH_OK);
    assert_string_equal(b.data, "12345678");
    bh_buf_free(&b);
}

static void test_consume(void **state) {
    bh_buf_t b;
    bh_buf_init(&b, 0);
    assert_int_equal(bh_buf_appends(&b, "hello world"), BH_OK);
    bh_buf_consume(&b, 0);
    assert_string_equal(b.data, "hello world");
    bh_buf_consume(&b, 6);
    assert_int_equal(b.len, 5);
    assert_string_equal(b.data, "world");
    bh_buf_consume(&b, 1);
    assert_string_equal(b.data, "orld");
    bh_buf_consume(&b, 4);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");
    assert_int_equal(bh_buf_appends(&b, "x"), BH_OK);
    assert_string_equal(b.data, "x");
    bh_buf_free(&b);
    bh_buf_consume(&b, 0); /* empty, unallocated buffer */
    assert_int_equal(b.len, 0);
}

static void test_reset(void **state) {
    bh_buf_t b;
    bh_buf_init(&b, 0);
    bh_buf_reset(&b);
    assert_int_equal(bh_buf_appends(&b, "some text here"), BH_OK);
    size_t cap = b.cap;
    char *data = b.data;
    bh_buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, cap);
    assert_ptr_equal(b.data, data);
    assert_string_equal(b.data, "");
    assert_int_equal(bh_buf_appends(&b, "new"), BH_OK);
    assert_string_equal(b.data, "new");
    bh_buf_free(&b);
}

static void test_append_self(void **state) {
    bh_buf_t b;
    bh_buf_init(&b, 0);
    assert_int_equal(bh_buf_appends(&b, "abcdefgh"), BH_OK);
    /* Appending the buffer to itself repeatedly forces reallocation mid-append. */
    for (int i = 0; i < 6; i++)
        assert_int_equal(bh_buf_append(&b, b.data, b.len), BH_OK);
    assert_int_equal(b.len, 8 * 64);
    for (size_t i = 0; i < b.len; i++)
        assert_int_equal(b.data[i], "abcdefgh"[i % 8]);
    assert_int_equal(bh_buf_append(&b, b.data + 2, 3), BH_OK);
    assert_memory_equal(b.data + b.len - 3, "cde", 3);
    bh_buf_free(&b);
}

static void test_strerror(void **state) {
    assert_string_equal(bh_strerror(BH_OK), "success");
    assert_string_equal(bh_strerror(BH_ENOMEM), "out of memory");
    assert_string_equal(bh_strerror(BH_EINVAL), "invalid input");
    assert_string_equal(bh_strerror(12345), "unknown error");
    assert_string_equal(bh_strerror(-99), "unknown error");
    /* every defined code has its own text */
    for (int a = BH_EIO; a <= BH_OK; a++) {
        assert_string_not_equal(bh_strerror(a), "unknown error");
        for (int c = a + 1; c <= BH_OK; c++)
            assert_string_not_equal(bh_strerror(a), bh_strerror(c));
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_empty),       cmocka_unit_test(test_append_basic),
        cmocka_unit_test(test_growth_doubles),   cmocka_unit_test(test_big_single_append),
        cmocka_unit_test(test_max_cap),          cmocka_unit_test(test_max_limits_growth),
        cmocka_unit_test(test_reserve_overflow), cmocka_unit_test(test_reserve_then_write),
        cmocka_unit_test(test_printf),           cmocka_unit_test(test_printf_cap),
        cmocka_unit_test(test_consume),          cmocka_unit_test(test_reset),
        cmocka_unit_test(test_append_self),      cmocka_unit_test(test_strerror),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
