/*
 * log.c - stderr logger. Any thread; the level is read with a relaxed
 * atomic load so it can be changed at start-up without a lock.
 */
#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int min_level = BG_LOG_INFO;

static const char *const names[] = { "debug", "info", "warn", "error" };

void
bg_log_set_level(enum bg_log_level level)
{
	__atomic_store_n(&min_level, (int)level, __ATOMIC_RELAXED);
}

int
bg_log_parse_level(const char *name)
{
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcasecmp(name, names[i]) == 0)
			return (int)i;
	if (strcasecmp(name, "warning") == 0)
		return BG_LOG_WARN;
	return -1;
}

void
bg_log_write(enum bg_log_level level, const char *fmt, ...)
{
	char line[1024];
	struct timeval tv;
	struct tm tm;
	va_list ap;
	int n, m;

	if ((int)level < __atomic_load_n(&min_level, __ATOMIC_RELAXED))
		return;
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	n = snprintf(line, sizeof(line),
		     "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s ",
		     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		     tm.tm_min, tm.tm_sec, (long)tv.tv_usec / 1000,
		     names[level]);
	va_start(ap, fmt);
	m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (m < 0)
		m = 0;
	n += m;
	if (n > (int)sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	/* One write per line keeps lines whole across threads. */
	if (write(STDERR_FILENO, line, (size_t)n) < 0)
		return;
}
