/* One-line logs to stderr: "ts level msg key=value ...". Never pass keys or tokens here. */
#ifndef BH_BASE_LOG_H
#define BH_BASE_LOG_H

enum { BH_LOG_DEBUG, BH_LOG_INFO, BH_LOG_WARN, BH_LOG_ERROR };

void bh_log_set_level(int level);
void bh_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
