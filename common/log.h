/*
 * log.h - leveled logging to stderr, safe from any thread.
 *
 * One line per call, written with a single write(2) so lines from different
 * threads never interleave. bg_log_debug is always compiled in and costs
 * a load and a branch unless --log-level debug enables it.
 */
#ifndef BG_LOG_H
#define BG_LOG_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

enum bg_log_level {
	BG_LOG_DEBUG,
	BG_LOG_INFO,
	BG_LOG_WARN,
	BG_LOG_ERROR,
};

/* Sets the lowest level printed; any thread, usually once at start-up. */
void bg_log_set_level(enum bg_log_level level);

/* How lines are written: "TIME LEVEL message", or one JSON object per
 * line {"ts","level","msg"} ([log] format). */
enum bg_log_format {
	BG_LOG_TEXT,
	BG_LOG_JSON,
};

/* Sets the line format; any thread, usually once at start-up. */
void bg_log_set_format(enum bg_log_format format);

/* True when lines are JSON ([log] format = json). */
bool bg_log_json(void);

/* True when level would be written: callers test it before building an
 * expensive line (debug lines of the connection lifecycle). */
bool bg_log_enabled(enum bg_log_level level);

/* Parses "debug", "info", "warn" or "error"; -1 when unknown. */
int bg_log_parse_level(const char *name);

void bg_log_write(enum bg_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Like bg_log_write; with [log] format = json, the members of fields (a
 * JSON object's text, or NULL) follow "msg" in the line. Text lines
 * show only the message. */
void bg_log_fields(enum bg_log_level level, const char *fields,
		   const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define bg_log_info(...)  bg_log_write(BG_LOG_INFO, __VA_ARGS__)
#define bg_log_warn(...)  bg_log_write(BG_LOG_WARN, __VA_ARGS__)
#define bg_log_error(...) bg_log_write(BG_LOG_ERROR, __VA_ARGS__)
/* Costs one relaxed load and a branch when debug is off. */
#define bg_log_debug(...) \
	do { if (bg_log_enabled(BG_LOG_DEBUG)) \
		bg_log_write(BG_LOG_DEBUG, __VA_ARGS__); } while (0)

/* Logs "CALL failed: strerror(errno)" at error level; keeps errno. */
#define bg_log_errno(call) \
	do { int e_ = errno; \
	     bg_log_write(BG_LOG_ERROR, "%s failed: %s", call, strerror(e_)); \
	     errno = e_; } while (0)

/*
 * A throttle for log lines a client can trigger (one per call site, a
 * static struct): at most burst lines per 10 s window; the first line of
 * the next window ends with " (N similar suppressed in the last 10 s)",
 * and bg_log_throttle_tick prints that count on its own for a window that
 * ended quietly. Any thread: log.c serializes them with one mutex.
 */
#define BG_LOG_WINDOW_MS 10000

struct bg_log_throttle {
	const char *what;               /* immutable: names the summary */
	unsigned int burst;             /* immutable: lines per window */
	/* log.c, under its lock: */
	uint64_t window_ms;             /* start of the current window */
	unsigned int printed;
	unsigned long suppressed;
	bool listed;                    /* in log.c's list of throttles */
	struct bg_log_throttle *next;
};

#define BG_LOG_THROTTLE(what_, burst_) { .what = (what_), .burst = (burst_) }

/* Logs like bg_log_write unless t says the line is one too many. */
void bg_log_throttled(struct bg_log_throttle *t, enum bg_log_level level,
		      const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Prints "WHAT: N similar lines suppressed in the last 10 s" for each
 * throttle whose window ended with lines suppressed. Any thread; the
 * server calls it about once a second. */
void bg_log_throttle_tick(void);

/*
 * The decision alone, at now_ms (CLOCK_MONOTONIC ms), for tests and for
 * bg_log_throttled: true to print. *ended gets how many lines the window
 * that just ended suppressed (0 when none, or the window goes on). The
 * caller holds no lock; t must not be shared with other threads.
 */
bool bg_log_throttle_check(struct bg_log_throttle *t, uint64_t now_ms,
			   unsigned long *ended);

/* For the tick: the count a window that ended before now_ms suppressed,
 * resetting it; 0 when none. Same rules as bg_log_throttle_check. */
unsigned long bg_log_throttle_expire(struct bg_log_throttle *t,
				     uint64_t now_ms);

#endif
