/* One-line logs to stderr with an ISO-8601 UTC millisecond timestamp. Each line is formatted
 * into one buffer and written with a single call so concurrent lines do not interleave. */
#include "base/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

static _Atomic int log_level = BH_LOG_INFO;

void bh_log_set_level(int level) {
    atomic_store(&log_level, level);
}

void bh_log(int level, const char *fmt, ...) {
    static const char *const words[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    if (level < atomic_load(&log_level))
        return;
    if (level < BH_LOG_DEBUG)
        level = BH_LOG_DEBUG;
    if (level > BH_LOG_ERROR)
        level = BH_LOG_ERROR;
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    char line[1024];
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (int)(ts.tv_nsec / 1000000), words[level]);
    if (n < 0 || (size_t)n >= sizeof line)
        return;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n;
    if (m > 0)
        len += (size_t)m < sizeof line - (size_t)n ? (size_t)m : sizeof line - (size_t)n - 1;
    line[len++] = '\n'; /* long messages are truncated; the newline always fits */
    fwrite(line, 1, len, stderr);
}
