/* Failed-authentication throttling (src/signalr/throttle.c): how source addresses are keyed
 * (IPv4 whole, IPv6 by /64, mapped IPv4 as IPv4), the token bucket (burst, refill, the
 * Retry-After seconds), and the bounded table (refilled addresses forgotten, the least recently
 * failed evicted when full). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include "base/error.h"
#include "signalr/internal.h"

static bh_sr_addr_t v4(const char *ip) {
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(1234)};
    assert_int_equal(inet_pton(AF_INET, ip, &in.sin_addr), 1);
    bh_sr_addr_t a;
    assert_int_equal(bh_sr_addr_from((const struct sockaddr *)&in, &a), BH_OK);
    return a;
}

static bh_sr_addr_t v6(const char *ip) {
    struct sockaddr_in6 in = {.sin6_family = AF_INET6, .sin6_port = htons(1234)};
    assert_int_equal(inet_pton(AF_INET6, ip, &in.sin6_addr), 1);
    bh_sr_addr_t a;
    assert_int_equal(bh_sr_addr_from((const struct sockaddr *)&in, &a), BH_OK);
    return a;
}

static void assert_text(const bh_sr_addr_t *a, const char *want) {
    char buf[64];
    bh_sr_addr_text(a, buf, sizeof buf);
    assert_string_equal(buf, want);
}

static void test_addresses(void **state) {
    bh_sr_addr_t a = v4("192.0.2.1"), b = v4("192.0.2.2");
    assert_int_equal(a.b[0], 4);
    assert_memory_not_equal(&a, &b, sizeof a);
    assert_text(&a, "192.0.2.1");
    /* The port is not part of it. */
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(9)};
    inet_pton(AF_INET, "192.0.2.1", &in.sin_addr);
    bh_sr_addr_t p;
    assert_int_equal(bh_sr_addr_from((const struct sockaddr *)&in, &p), BH_OK);
    assert_memory_equal(&a, &p, sizeof a);
    /* IPv4 through an IPv6 socket is the same IPv4 address. */
    bh_sr_addr_t m = v6("::ffff:192.0.2.1");
    assert_memory_equal(&a, &m, sizeof a);
    /* IPv6: one /64 is one client; the next /64 is another. */
    bh_sr_addr_t x = v6("2001:db8:1:2::1"), y = v6("2001:db8:1:2:ffff:eeee:dddd:cccc");
    bh_sr_addr_t z = v6("2001:db8:1:3::1");
    assert_int_equal(x.b[0], 6);
    assert_memory_equal(&x, &y, sizeof x);
    assert_memory_not_equal(&x, &z, sizeof x);
    assert_text(&x, "2001:db8:1:2::/64");
    assert_text(&z, "2001:db8:1:3::/64");
    bh_sr_addr_t l = v6("::1");
    assert_text(&l, "::/64");
    /* Other families are refused. */
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    assert_int_equal(bh_sr_addr_from((const struct sockaddr *)&un, &p), BH_EINVAL);
}

static void test_burst_and_refill(void **state) {
    bh_sr_throttle_t *t;
    assert_int_equal(bh_sr_throttle_new(1.0, 20, 1024, 42, &t), BH_OK);
    bh_sr_addr_t a = v4("198.51.100.7"), b = v4("198.51.100.8");
    uint64_t now = 1000000;
    assert_int_equal(bh_sr_throttle_wait(t, &a, now), 0);
    for (int i = 1; i <= 19; i++) {
        assert_int_equal(bh_sr_throttle_fail(t, &a, now), 0);
        assert_int_equal(bh_sr_throttle_wait(t, &a, now), 0);
    }
    assert_int_equal(bh_sr_throttle_fail(t, &a, now), 1); /* the 20th takes the last token */
    assert_int_equal(bh_sr_throttle_wait(t, &a, now), 1);
    assert_int_equal(bh_sr_throttle_wait(t, &b, now), 0); /* another address is not affected */
    assert_int_equal(bh_sr_throttle_size(t), 1);
    /* One token per second comes back. */
    assert_int_equal(bh_sr_throttle_wait(t, &a, now + 999), 1);
    assert_int_equal(bh_sr_throttle_wait(t, &a, now + 1000), 0);
    assert_int_equal(bh_sr_throttle_fail(t, &a, now + 1000), 1);
    assert_int_equal(bh_sr_throttle_wait(t, &a, now + 1000), 1);
    /* After 5 s, 5 tokens: 4 failures leave one. */
    now += 6000;
    for (int i = 0; i < 4; i++)
        assert_int_equal(bh_sr_throttle_fail(t, &a, now), 0);
    assert_int_equal(bh_sr_throttle_fail(t, &a, now), 1);
    assert_int_equal(bh_sr_throttle_wait(t, &a, now), 1);
    /* The bucket never holds more than the burst, however long the wait. */
    now += 3600 * 1000;
    for (int i = 0; i < 19; i++)
        assert_int_equal(bh_sr_throttle_fail(t, &a, now), 0);
    assert_int_equal(bh_sr_throttle_fail(t, &a, now), 1);
    /* A clock that does not move forward refills nothing. */
    assert_int_equal(bh_sr_throttle_wait(t, &a, now - 5000), 1);
    bh_sr_throttle_free(t);
}

static void test_retry_after(void **state) {
    bh_sr_throttle_t *t;
    assert_int_equal(bh_sr_throttle_new(0.1, 2, 16, 1, &t), BH_OK); /* a token per 10 s */
    bh_sr_addr_t a = v6("2001:db8::1");
    assert_int_equal(bh_sr_throttle_fail(t, &a, 0), 0);
    assert_int_equal(bh_sr_throttle_fail(t, &a, 0), 1);
    assert_int_equal(bh_sr_throttle_wait(t, &a, 0), 10);
    assert_int_equal(bh_sr_throttle_wait(t, &a, 2500), 8); /* ceil(7.5) */
    assert_int_equal(bh_sr_throttle_wait(t, &a, 9999), 1);
    assert_int_equal(bh_sr_throttle_wait(t, &a, 10000), 0);
    bh_sr_throttle_free(t);
    /* A tiny rate never asks for more than a day. */
    assert_int_equal(bh_sr_throttle_new(1e-9, 1, 16, 1, &t), BH_OK);
    assert_int_equal(bh_sr_throttle_fail(t, &a, 0), 1);
    assert_int_equal(bh_sr_throttle_wait(t, &a, 0), 86400);
    bh_sr_throttle_free(t);
}

static void test_bounded_table(void **state) {
    bh_sr_throttle_t *t;
    assert_int_equal(bh_sr_throttle_new(1.0, 2, 4, 7, &t), BH_OK);
    char ip[32];
    bh_sr_addr_t a[6];
    for (int i = 0; i < 6; i++) {
        snprintf(ip, sizeof ip, "203.0.113.%d", i + 1);
        a[i] = v4(ip);
    }
    /* Four addresses, each out of failures, in order 0..3 (0 failed longest ago). */
    for (int i = 0; i < 4; i++) {
        assert_int_equal(bh_sr_throttle_fail(t, &a[i], 100 + (uint64_t)i), 0);
        assert_int_equal(bh_sr_throttle_fail(t, &a[i], 100 + (uint64_t)i), 1);
    }
    assert_int_equal(bh_sr_throttle_size(t), 4);
    /* Address 0 fails again (it stays throttled, now the most recent). */
    assert_int_equal(bh_sr_throttle_fail(t, &a[0], 200), 0);
    assert_int_not_equal(bh_sr_throttle_wait(t, &a[0], 200), 0);
    /* A fifth address takes the place of the least recently failed: address 1. */
    assert_int_equal(bh_sr_throttle_fail(t, &a[4], 201), 0);
    assert_int_equal(bh_sr_throttle_size(t), 4);
    assert_int_equal(bh_sr_throttle_wait(t, &a[1], 201), 0);
    assert_int_not_equal(bh_sr_throttle_wait(t, &a[0], 201), 0);
    assert_int_not_equal(bh_sr_throttle_wait(t, &a[2], 201), 0);
    assert_int_not_equal(bh_sr_throttle_wait(t, &a[3], 201), 0);
    /* Many new addresses: never more than 4 remembered, and each lookup still right. */
    for (int i = 0; i < 1000; i++) {
        bh_sr_addr_t x = v4("10.0.0.0");
        x.b[3] = (unsigned char)(i >> 8);
        x.b[4] = (unsigned char)i;
        assert_int_equal(bh_sr_throttle_fail(t, &x, 300), 0);
        assert_int_equal(bh_sr_throttle_fail(t, &x, 300), 1);
        assert_int_not_equal(bh_sr_throttle_wait(t, &x, 300), 0);
        assert_true(bh_sr_throttle_size(t) <= 4);
    }
    /* Much later every bucket is full again: the next failures forget the refilled ones. */
    assert_int_equal(bh_sr_throttle_fail(t, &a[5], 100000), 0);
    assert_int_equal(bh_sr_throttle_fail(t, &a[5], 100000), 1);
    assert_true(bh_sr_throttle_size(t) <= 3);
    assert_int_equal(bh_sr_throttle_fail(t, &a[4], 100000), 0);
    assert_int_equal(bh_sr_throttle_size(t), 2); /* a[5] and a[4] */
    assert_int_not_equal(bh_sr_throttle_wait(t, &a[5], 100000), 0);
    bh_sr_throttle_free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_addresses),
        cmocka_unit_test(test_burst_and_refill),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_bounded_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
