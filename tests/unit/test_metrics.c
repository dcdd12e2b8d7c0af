/* Unit tests for the metrics registry: exact exposition lines, one HELP/TYPE per contiguous
 * family, a line-by-line parser of the whole output, cumulative histogram buckets, render
 * atomicity under a size cap, and exact sums from concurrent increments. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/buf.h"
#include "base/error.h"
#include "base/metrics.h"

static char *render(int ready) {
    bh_buf_t b;
    bh_buf_init(&b, 0);
    assert_int_equal(bh_metrics_render(&b, ready), BH_OK);
    assert_non_null(b.data);
    return b.data; /* the caller frees */
}

/* The output holds exactly this line (whole line, not a substring of one). */
static int has_line(const char *text, const char *line) {
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++) {
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return 1;
    }
    return 0;
}

static void expect_line(const char *text, const char *line) {
    if (!has_line(text, line))
        fail_msg("missing line: %s\n--- output ---\n%s", line, text);
}

/* Runs first: the counters start at zero in a fresh process. */
static void test_exact_lines(void **state) {
    bh_metric_add(BH_M_TCP_ACCEPTED, 5);
    bh_metric_add(BH_M_TCP_ACCEPTED, 2);
    bh_metric_gauge(BH_M_TCP_OPEN, 1);
    bh_metric_gauge(BH_M_TCP_OPEN, 1);
    bh_metric_gauge(BH_M_TCP_OPEN, -1);
    bh_metric_add(BH_M_BYTES_IN, 123456789012ULL);
    bh_metric_gauge(BH_M_CONN_LP_MSGPACK, 3);
    bh_metric_add(BH_M_INVOKE_GETBALANCES_OK, 4);
    bh_metric_add(BH_M_EVENT_PRECHECKS, 1);
    bh_metric_add(BH_M_LIMIT_REQUEST_SIZE, 9);
    bh_metric_add(BH_M_LEDGER_OPS_REJECTED, 2);
    assert_int_equal(bh_metric_get(BH_M_TCP_ACCEPTED), 7);
    assert_int_equal(bh_metric_get(BH_M_TCP_OPEN), 1);

    char *t = render(1);
    expect_line(t, "# HELP bh_tcp_connections_accepted_total TCP connections accepted on every "
                   "listener.");
    expect_line(t, "# TYPE bh_tcp_connections_accepted_total counter");
    expect_line(t, "bh_tcp_connections_accepted_total 7");
    expect_line(t, "# TYPE bh_tcp_connections gauge");
    expect_line(t, "bh_tcp_connections 1");
    expect_line(t, "bh_bytes_received_total 123456789012");
    expect_line(t, "bh_bytes_sent_total 0");
    expect_line(t, "# TYPE bh_hub_connections gauge");
    expect_line(t, "bh_hub_connections{transport=\"longpolling\",protocol=\"messagepack\"} 3");
    expect_line(t, "bh_hub_connections{transport=\"websockets\",protocol=\"json\"} 0");
    expect_line(t, "bh_hub_invocations_total{method=\"GetBalances\",outcome=\"ok\"} 4");
    expect_line(t, "bh_hub_invocations_total{method=\"unknown\",outcome=\"error\"} 0");
    expect_line(t, "bh_hub_events_total{subject=\"preChecksError\"} 1");
    expect_line(t, "bh_hub_events_total{subject=\"account.balances.snapshot\"} 0");
    expect_line(t, "bh_limit_rejections_total{limit=\"request_size\"} 9");
    expect_line(t, "bh_limit_rejections_total{limit=\"output\"} 0");
    expect_line(t, "bh_ledger_ops_total{outcome=\"rejected\"} 2");
    expect_line(t, "bh_ledger_ops_total{outcome=\"ok\"} 0");
    expect_line(t, "bh_ledger_commits_total 0");
    expect_line(t, "bh_store_errors_total 0");
    expect_line(t, "# TYPE bh_ledger_commit_seconds histogram");
    expect_line(t, "bh_ledger_commit_seconds_bucket{le=\"+Inf\"} 0");
    expect_line(t, "bh_ledger_commit_seconds_sum 0.000000000");
    expect_line(t, "bh_ledger_commit_seconds_count 0");
    expect_line(t, "# TYPE bh_ready gauge");
    expect_line(t, "bh_ready 1");
    assert_false(has_line(t, "bh_ready 0"));
    assert_int_equal(t[strlen(t) - 1], '\n');
    free(t);

    t = render(0);
    expect_line(t, "bh_ready 0");
    free(t);

    /* Leave the gauges where the other tests expect them (where they started). */
    bh_metric_gauge(BH_M_TCP_OPEN, -1);
    bh_metric_gauge(BH_M_CONN_LP_MSGPACK, -3);
    assert_int_equal(bh_metric_get(BH_M_TCP_OPEN), 0);
}

static void test_gauge_below_zero(void **state) {
    bh_metric_gauge(BH_M_CONN_SSE_JSON, -2);
    char *t = render(1);
    expect_line(t, "bh_hub_connections{transport=\"serversentevents\",protocol=\"json\"} -2");
    free(t);
    bh_metric_gauge(BH_M_CONN_SSE_JSON, 2);
    assert_int_equal(bh_metric_get(BH_M_CONN_SSE_JSON), 0);
}

static void test_out_of_range_ignored(void **state) {
    char *before = render(1);
    bh_metric_add((bh_metric_t)BH_M_COUNT, 1);
    bh_metric_add((bh_metric_t)-1, 1);
    bh_metric_gauge((bh_metric_t)(BH_M_COUNT + 100), 5);
    assert_int_equal(bh_metric_get((bh_metric_t)BH_M_COUNT), 0);
    char *after = render(1);
    assert_string_equal(before, after);
    free(before);
    free(after);
}

static void test_histogram_cumulative(void **state) {
    bh_metric_commit_ns(50000);      /* 0.00005 s: first bucket */
    bh_metric_commit_ns(100000);     /* exactly 0.0001: le is inclusive */
    bh_metric_commit_ns(100001);     /* just above: 0.00025 */
    bh_metric_commit_ns(300000);     /* 0.0005 */
    bh_metric_commit_ns(1000000000); /* exactly 1 s */
    bh_metric_commit_ns(2000000000); /* above every bound: +Inf only */
    char *t = render(1);
    static const char *const want[] = {
        "bh_ledger_commit_seconds_bucket{le=\"0.0001\"} 2",
        "bh_ledger_commit_seconds_bucket{le=\"0.00025\"} 3",
        "bh_ledger_commit_seconds_bucket{le=\"0.0005\"} 4",
        "bh_ledger_commit_seconds_bucket{le=\"0.001\"} 4",
        "bh_ledger_commit_seconds_bucket{le=\"0.0025\"} 4",
        "bh_ledger_commit_seconds_bucket{le=\"0.005\"} 4",
        "bh_ledger_commit_seconds_bucket{le=\"0.01\"} 4",
        "bh_ledger_commit_seconds_bucket{le=\"0.025\"} 4",
        "bh_ledger_commit_seconds_bucket{le=\"0.05\"} 4",
        "bh_ledger_commit_seconds_bucket{le=\"0.1\"} 4",
        "bh_ledger_commit_seconds_bucket{le=\"0.25\"} 4",
        "bh_ledger_commit_seconds_bucket{le=\"0.5\"} 4",
        "bh_ledger_commit_seconds_bucket{le=\"1\"} 5",
        "bh_ledger_commit_seconds_bucket{le=\"+Inf\"} 6",
        "bh_ledger_commit_seconds_sum 3.000550001",
        "bh_ledger_commit_seconds_count 6",
    };
    /* In this order, one after the other. */
    const char *p = strstr(t, want[0]);
    assert_non_null(p);
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        size_t n = strlen(want[i]);
        if (strncmp(p, want[i], n) != 0 || p[n] != '\n')
            fail_msg("expected %s at:\n%.200s", want[i], p);
        p += n + 1;
    }
    free(t);
}

/* ---- a strict reader of the exposition format ---- */

typedef struct {
    char name[128];
    char type[16];
    int help, typed, samples, closed;
} family_t;

static int name_start(int c) {
    return isalpha(c) || c == '_' || c == ':';
}

static int name_char(int c) {
    return isalnum(c) || c == '_' || c == ':';
}

/* Reads a metric name at *p into out; 0 when there is none. */
static int read_name(const char **p, char *out, size_t cap) {
    const char *s = *p;
    size_t n = 0;
    if (!name_start((unsigned char)*s))
        return 0;
    while (name_char((unsigned char)s[n]))
        n++;
    if (n >= cap)
        return 0;
    memcpy(out, s, n);
    out[n] = '\0';
    *p = s + n;
    return 1;
}

/* A sample value: a float, or +Inf, -Inf, NaN; nothing after it on the line. */
static int valid_value(const char *s, const char *end) {
    size_t n = (size_t)(end - s);
    if ((n == 4 && (!memcmp(s, "+Inf", 4) || !memcmp(s, "-Inf", 4))) ||
        (n == 3 && !memcmp(s, "NaN", 3)))
        return 1;
    if (n == 0 || n > 64)
        return 0;
    char tmp[65], *e;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    if (!(isdigit((unsigned char)tmp[0]) || tmp[0] == '-'))
        return 0;
    strtod(tmp, &e);
    return *e == '\0';
}

/* Label set "{a="x",b="y"}" at *p, values with \\ \" \n escapes only. Returns 1 when
 * well-formed; le receives the value of label le when present. */
static int read_labels(const char **p, char *le, size_t lecap) {
    const char *s = *p;
    if (*s != '{')
        return 1;
    s++;
    while (*s != '}') {
        char lname[64];
        size_t n = 0;
        if (!(isalpha((unsigned char)*s) || *s == '_'))
            return 0;
        while (isalnum((unsigned char)s[n]) || s[n] == '_')
            n++;
        if (n >= sizeof lname || s[n] != '=' || s[n + 1] != '"')
            return 0;
        memcpy(lname, s, n);
        lname[n] = '\0';
        s += n + 2;
        char val[128];
        size_t vn = 0;
        while (*s != '"') {
            if (*s == '\n' || *s == '\0')
                return 0;
            if (*s == '\\') {
                if (s[1] != '\\' && s[1] != '"' && s[1] != 'n')
                    return 0;
                s++;
            }
            if (vn + 1 >= sizeof val)
                return 0;
            val[vn++] = *s++;
        }
        val[vn] = '\0';
        s++;
        if (strcmp(lname, "le") == 0 && le && vn < lecap)
            memcpy(le, val, vn + 1);
        if (*s == ',')
            s++;
        else if (*s != '}')
            return 0;
    }
    *p = s + 1;
    return 1;
}

static void check_exposition(const char *text) {
    family_t fam[64];
    size_t nfam = 0;
    family_t *cur = NULL;
    int nline = 0;
    double last_bucket = -1;

    assert_true(strlen(text) > 0);
    assert_int_equal(text[strlen(text) - 1], '\n');
    for (const char *line = text; *line; nline++) {
        const char *end = strchr(line, '\n');
        assert_non_null(end);
        char name[128];
        const char *p = line;
        if (strncmp(line, "# HELP ", 7) == 0 || strncmp(line, "# TYPE ", 7) == 0) {
            int is_help = line[2] == 'H';
            p += 7;
            if (!read_name(&p, name, sizeof name) || *p != ' ')
                fail_msg("line %d: bad comment: %.*s", nline, (int)(end - line), line);
            p++;
            family_t *f = NULL;
            for (size_t i = 0; i < nfam; i++)
                if (strcmp(fam[i].name, name) == 0)
                    f = &fam[i];
            if (!f) {
                assert_true(nfam < 64);
                if (cur)
                    cur->closed = 1;
                f = &fam[nfam++];
                memset(f, 0, sizeof *f);
                snprintf(f->name, sizeof f->name, "%s", name);
                cur = f;
            }
            if (f != cur || f->closed || f->samples)
                fail_msg("line %d: comment of %s outside its group", nline, name);
            if (is_help) {
                assert_int_equal(f->help, 0); /* once */
                f->help = 1;
                assert_true(end - p > 0); /* some help text, no newline in it (by construction) */
                for (const char *q = p; q < end; q++)
                    assert_true(*q != '\\' || q[1] == '\\' || q[1] == 'n');
            } else {
                assert_int_equal(f->typed, 0);
                f->typed = 1;
                size_t n = (size_t)(end - p);
                if (n >= sizeof f->type)
                    fail_msg("line %d: bad type", nline);
                memcpy(f->type, p, n);
                f->type[n] = '\0';
                if (strcmp(f->type, "counter") && strcmp(f->type, "gauge") &&
                    strcmp(f->type, "histogram"))
                    fail_msg("line %d: unknown type %s", nline, f->type);
            }
        } else {
            if (line[0] == '#' || line == end)
                fail_msg("line %d: unexpected comment or blank line", nline);
            char le[32] = "";
            if (!read_name(&p, name, sizeof name) || !read_labels(&p, le, sizeof le) || *p != ' ' ||
                !valid_value(p + 1, end))
                fail_msg("line %d: malformed sample: %.*s", nline, (int)(end - line), line);
            /* The sample belongs to the current family (histograms: _bucket, _sum, _count). */
            assert_non_null(cur);
            assert_true(cur->help && cur->typed);
            size_t fl = strlen(cur->name);
            const char *suffix = name + fl;
            if (strncmp(name, cur->name, fl) != 0)
                fail_msg("line %d: sample %s outside family %s", nline, name, cur->name);
            if (strcmp(cur->type, "histogram") == 0) {
                double v = strtod(p + 1, NULL);
                if (strcmp(suffix, "_bucket") == 0) {
                    assert_true(le[0] != '\0');
                    assert_true(v >= last_bucket); /* cumulative */
                    last_bucket = v;
                } else if (strcmp(suffix, "_count") == 0) {
                    assert_true(v == last_bucket); /* equals the +Inf bucket */
                } else {
                    assert_string_equal(suffix, "_sum");
                }
            } else {
                assert_string_equal(suffix, "");
                if (strcmp(cur->type, "counter") == 0) {
                    fl = strlen(name);
                    assert_true(fl > 6 && strcmp(name + fl - 6, "_total") == 0);
                    assert_true(p[1] != '-'); /* counters never go below zero */
                }
            }
            cur->samples++;
        }
        line = end + 1;
    }
    /* Every family declared both, and has samples. */
    for (size_t i = 0; i < nfam; i++) {
        if (!fam[i].help || !fam[i].typed || fam[i].samples == 0)
            fail_msg("family %s: help %d type %d samples %d", fam[i].name, fam[i].help,
                     fam[i].typed, fam[i].samples);
    }
    /* 15 families of the table + histogram + start time + ready. */
    assert_int_equal(nfam, 18);
}

static void test_wellformed(void **state) {
    char *t = render(1);
    check_exposition(t);
    /* A line for every series of the table (BH_M_COUNT), 13 + 1 buckets, _sum, _count, start
     * time and ready, plus two comment lines per family. */
    int lines = 0;
    for (const char *p = t; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, BH_M_COUNT + 14 + 2 + 2 + 2 * 18);
    free(t);
}

/* The reader itself must reject what is not the format. */
static void test_reader_rejects(void **state) {
    assert_true(valid_value("12", "12" + 2));
    assert_true(valid_value("+Inf", "+Inf" + 4));
    assert_true(valid_value("0.5", "0.5" + 3));
    assert_false(valid_value("", ""));
    assert_false(valid_value("1x", "1x" + 2));
    assert_false(valid_value(" 1", " 1" + 2));
    const char *p = "{a=\"x\",b=\"y\\\"z\"} 1";
    char le[8] = "";
    assert_true(read_labels(&p, le, sizeof le));
    assert_int_equal(*p, ' ');
    static const char *const bad[] = {"{a=x} 1", "{a=\"x} 1", "{=\"x\"} 1", "{a=\"\\q\"} 1",
                                      "{a=\"x\" b=\"y\"} 1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        p = bad[i];
        assert_false(read_labels(&p, le, sizeof le));
    }
}

static void test_start_time(void **state) {
    char *t = render(1);
    const char *p = strstr(t, "\nbh_process_start_time_seconds ");
    assert_non_null(p);
    double v = strtod(p + 31, NULL);
    time_t now = time(NULL);
    assert_true(v > 1.5e9);
    assert_true(v <= (double)now + 1);
    /* Fixed once: a later render shows the same value. */
    char *t2 = render(1);
    const char *p2 = strstr(t2, "\nbh_process_start_time_seconds ");
    assert_non_null(p2);
    assert_true(strtod(p2 + 31, NULL) == v);
    free(t);
    free(t2);
}

static void test_render_capped_is_atomic(void **state) {
    bh_buf_t b;
    bh_buf_init(&b, 64);
    assert_int_equal(bh_buf_appends(&b, "prefix"), BH_OK);
    assert_true(bh_metrics_render(&b, 1) < 0);
    assert_int_equal(b.len, 6);
    assert_string_equal(b.data, "prefix");
    bh_buf_free(&b);

    /* Appends after what is there already. */
    bh_buf_init(&b, 0);
    assert_int_equal(bh_buf_appends(&b, "x"), BH_OK);
    assert_int_equal(bh_metrics_render(&b, 1), BH_OK);
    assert_int_equal(strncmp(b.data, "x# HELP ", 8), 0);
    bh_buf_free(&b);
}

#define THREADS 4
#define ROUNDS 200000

static void *hammer(void *arg) {
    for (int i = 0; i < ROUNDS; i++) {
        bh_metric_add(BH_M_BYTES_OUT, 3);
        bh_metric_add(BH_M_STORE_ERRORS, 1);
        bh_metric_gauge(BH_M_CONN_WS_MSGPACK, 1);
        bh_metric_gauge(BH_M_CONN_WS_MSGPACK, -1);
        if (i % 1000 == 0)
            bh_metric_commit_ns((uint64_t)i);
    }
    return arg;
}

static void *reader(void *arg) {
    for (int i = 0; i < 20; i++) {
        bh_buf_t b;
        bh_buf_init(&b, 0);
        if (bh_metrics_render(&b, 1) != BH_OK)
            return NULL;
        bh_buf_free(&b);
    }
    return arg;
}

static void test_concurrent(void **state) {
    uint64_t out0 = bh_metric_get(BH_M_BYTES_OUT), err0 = bh_metric_get(BH_M_STORE_ERRORS);
    uint64_t g0 = bh_metric_get(BH_M_CONN_WS_MSGPACK);
    pthread_t th[THREADS + 1];
    int tag[THREADS + 1];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, hammer, &tag[i]), 0);
    assert_int_equal(pthread_create(&th[THREADS], NULL, reader, &tag[THREADS]), 0);
    for (int i = 0; i <= THREADS; i++) {
        void *ret;
        assert_int_equal(pthread_join(th[i], &ret), 0);
        assert_ptr_equal(ret, &tag[i]); /* NULL: a render failed */
    }
    assert_int_equal(bh_metric_get(BH_M_BYTES_OUT) - out0, (uint64_t)THREADS * ROUNDS * 3);
    assert_int_equal(bh_metric_get(BH_M_STORE_ERRORS) - err0, (uint64_t)THREADS * ROUNDS);
    assert_int_equal(bh_metric_get(BH_M_CONN_WS_MSGPACK), g0);
    char *t = render(1);
    check_exposition(t);
    char want[64];
    snprintf(want, sizeof want, "bh_store_errors_total %llu",
             (unsigned long long)(err0 + (uint64_t)THREADS * ROUNDS));
    expect_line(t, want);
    /* 6 from the histogram test, THREADS * ROUNDS / 1000 here. */
    snprintf(want, sizeof want, "bh_ledger_commit_seconds_count %d", 6 + THREADS * ROUNDS / 1000);
    expect_line(t, want);
    free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_lines),          cmocka_unit_test(test_gauge_below_zero),
        cmocka_unit_test(test_out_of_range_ignored), cmocka_unit_test(test_histogram_cumulative),
        cmocka_unit_test(test_wellformed),           cmocka_unit_test(test_reader_rejects),
        cmocka_unit_test(test_start_time),           cmocka_unit_test(test_render_capped_is_atomic),
        cmocka_unit_test(test_concurrent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
