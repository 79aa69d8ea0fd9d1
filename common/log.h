/*
 * log.h - leveled logging to stderr, safe from any thread.
 *
 * One line per call, written with a single write(2) so lines from different
 * threads never interleave. bg_log_debug compiles away in release builds
 * (NDEBUG) unless the level is enabled at run time in debug builds.
 */
#ifndef BG_LOG_H
#define BG_LOG_H

#include <errno.h>

enum bg_log_level {
	BG_LOG_DEBUG,
	BG_LOG_INFO,
	BG_LOG_WARN,
	BG_LOG_ERROR,
};

/* Sets the lowest level printed; any thread, usually once at start-up. */
void bg_log_set_level(enum bg_log_level level);

/* Parses "debug", "info", "warn" or "error"; -1 when unknown. */
int bg_log_parse_level(const char *name);

void bg_log_write(enum bg_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#define bg_log_info(...)  bg_log_write(BG_LOG_INFO, __VA_ARGS__)
#define bg_log_warn(...)  bg_log_write(BG_LOG_WARN, __VA_ARGS__)
#define bg_log_error(...) bg_log_write(BG_LOG_ERROR, __VA_ARGS__)
#define bg_log_debug(...) bg_log_write(BG_LOG_DEBUG, __VA_ARGS__)

/* Logs "CALL failed: strerror(errno)" at error level; keeps errno. */
#define bg_log_errno(call) \
	do { int e_ = errno; \
	     bg_log_write(BG_LOG_ERROR, "%s failed: %s", call, strerror(e_)); \
	     errno = e_; } while (0)

#endif
