/*
 * log.c - stderr logger. Any thread; the level is read with a relaxed
 * atomic load so it can be changed at start-up without a lock. Throttles
 * (log.h) share one mutex and one list, so the tick can find the windows
 * that ended with lines suppressed.
 */
#include "common/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int min_level = BG_LOG_INFO;
static int format = BG_LOG_TEXT;       /* atomic, relaxed */

static pthread_mutex_t throttle_lock = PTHREAD_MUTEX_INITIALIZER;
static struct bg_log_throttle *throttles;  /* under throttle_lock */

static const char *const names[] = { "debug", "info", "warn", "error" };

void
bg_log_set_level(enum bg_log_level level)
{
	__atomic_store_n(&min_level, (int)level, __ATOMIC_RELAXED);
}

void
bg_log_set_format(enum bg_log_format f)
{
	__atomic_store_n(&format, (int)f, __ATOMIC_RELAXED);
}

bool
bg_log_json(void)
{
	return __atomic_load_n(&format, __ATOMIC_RELAXED) == BG_LOG_JSON;
}

bool
bg_log_enabled(enum bg_log_level level)
{
	return (int)level >= __atomic_load_n(&min_level, __ATOMIC_RELAXED);
}

/* Length of the valid UTF-8 sequence at s (len bytes left), 0 if none. */
static size_t
utf8_seq(const unsigned char *s, size_t len)
{
	size_t n;
	uint32_t cp;

	if (s[0] < 0xc2 || s[0] > 0xf4)
		return 0;
	n = s[0] < 0xe0 ? 2 : s[0] < 0xf0 ? 3 : 4;
	if (n > len)
		return 0;
	cp = s[0] & (0x7f >> n);
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp < 0xe000))) ||
	    (n == 4 && (cp < 0x10000 || cp > 0x10ffff)))
		return 0;
	return n;
}

/* Appends src as the inside of a JSON string to dst[*n..cap-1): escapes
 * quotes, backslashes and control bytes, shows bytes that are not UTF-8
 * as '?' (a client's bytes can reach a message); stops (whole escapes
 * and characters only) when full. */
static void
json_escape(char *dst, size_t cap, int *n, const char *src, size_t len)
{
	static const char hex[] = "0123456789abcdef";

	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)src[i];
		char esc[7];
		int k = 0;

		if (ch == '"' || ch == '\\') {
			esc[k++] = '\\';
			esc[k++] = (char)ch;
		} else if (ch == '\n') {
			esc[k++] = '\\';
			esc[k++] = 'n';
		} else if (ch < 0x20 || ch == 0x7f) {
			memcpy(esc, "\\u00", 4);
			k = 4;
			esc[k++] = hex[ch >> 4];
			esc[k++] = hex[ch & 15];
		} else if (ch < 0x80) {
			esc[k++] = (char)ch;
		} else if ((k = (int)utf8_seq((const unsigned char *)src + i,
					      len - i)) > 0) {
			memcpy(esc, src + i, (size_t)k);
			i += (size_t)k - 1;
		} else {
			esc[k++] = '?';
		}
		if ((size_t)(*n + k) >= cap)
			return;
		memcpy(dst + *n, esc, (size_t)k);
		*n += k;
	}
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

static void
log_line(enum bg_log_level level, const char *suffix, const char *fields,
	 const char *fmt, va_list ap)
{
	char line[1024], ts[96], msg[1024];
	struct timeval tv;
	struct tm tm;
	size_t flen = 0;
	int n, m;

	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
		 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		 tm.tm_min, tm.tm_sec, (long)tv.tv_usec / 1000);
	if (__atomic_load_n(&format, __ATOMIC_RELAXED) == BG_LOG_JSON) {
		/* The message, escaped, then the closing of the object:
		 * room is kept for it, so a cut line still parses. */
		m = vsnprintf(msg, sizeof(msg), fmt, ap);
		if (m < 0)
			m = 0;
		if (m > (int)sizeof(msg) - 1)
			m = (int)sizeof(msg) - 1;
		/* Fields: "{...}" whose members follow msg; left out when
		 * they would not leave the message room. */
		if (fields != NULL && fields[0] == '{' &&
		    (flen = strlen(fields)) > 2 && flen < sizeof(line) / 2)
			flen -= 2;
		else
			flen = 0;
		n = snprintf(line, sizeof(line), "{\"ts\":\"%s\",\"level\":"
			     "\"%s\",\"msg\":\"", ts, names[level]);
		json_escape(line, sizeof(line) - 4 - flen - 1, &n, msg,
			    (size_t)m);
		if (suffix != NULL)
			json_escape(line, sizeof(line) - 4 - flen - 1, &n,
				    suffix, strlen(suffix));
		line[n++] = '"';
		if (flen > 0) {
			line[n++] = ',';
			memcpy(line + n, fields + 1, flen);
			n += (int)flen;
		}
		memcpy(line + n, "}\n", 2);
		n += 2;
		if (write(STDERR_FILENO, line, (size_t)n) < 0)
			return;
		return;
	}
	n = snprintf(line, sizeof(line), "%s %-5s ", ts, names[level]);
	m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	if (m < 0)
		m = 0;
	n += m;
	if (n > (int)sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	if (suffix != NULL) {
		m = snprintf(line + n, sizeof(line) - (size_t)n - 1, "%s",
			     suffix);
		n += m > 0 ? m : 0;
		if (n > (int)sizeof(line) - 2)
			n = (int)sizeof(line) - 2;
	}
	line[n++] = '\n';
	/* One write per line keeps lines whole across threads. */
	if (write(STDERR_FILENO, line, (size_t)n) < 0)
		return;
}

void
bg_log_write(enum bg_log_level level, const char *fmt, ...)
{
	va_list ap;

	if ((int)level < __atomic_load_n(&min_level, __ATOMIC_RELAXED))
		return;
	va_start(ap, fmt);
	log_line(level, NULL, NULL, fmt, ap);
	va_end(ap);
}

void
bg_log_fields(enum bg_log_level level, const char *fields,
	      const char *fmt, ...)
{
	va_list ap;

	if ((int)level < __atomic_load_n(&min_level, __ATOMIC_RELAXED))
		return;
	va_start(ap, fmt);
	log_line(level, NULL, fields, fmt, ap);
	va_end(ap);
}

static uint64_t
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

unsigned long
bg_log_throttle_expire(struct bg_log_throttle *t, uint64_t now_ms)
{
	unsigned long n;

	if (t->printed == 0 && t->suppressed == 0) {
		t->window_ms = now_ms;     /* first line ever */
		return 0;
	}
	if (now_ms - t->window_ms < BG_LOG_WINDOW_MS)
		return 0;
	n = t->suppressed;
	t->window_ms = now_ms;
	t->printed = 0;
	t->suppressed = 0;
	return n;
}

bool
bg_log_throttle_check(struct bg_log_throttle *t, uint64_t now_ms,
		      unsigned long *ended)
{
	*ended = bg_log_throttle_expire(t, now_ms);
	if (t->printed < t->burst) {
		t->printed++;
		return true;
	}
	t->suppressed++;
	return false;
}

void
bg_log_throttled(struct bg_log_throttle *t, enum bg_log_level level,
		 const char *fmt, ...)
{
	char suffix[80];
	unsigned long ended;
	va_list ap;
	bool print;

	if ((int)level < __atomic_load_n(&min_level, __ATOMIC_RELAXED))
		return;
	pthread_mutex_lock(&throttle_lock);
	print = bg_log_throttle_check(t, mono_ms(), &ended);
	if (!print && !t->listed) {
		t->listed = true;
		t->next = throttles;
		throttles = t;
	}
	pthread_mutex_unlock(&throttle_lock);
	if (!print)
		return;
	if (ended > 0)
		snprintf(suffix, sizeof(suffix), " (%lu similar suppressed in "
			 "the last %d s)", ended, BG_LOG_WINDOW_MS / 1000);
	va_start(ap, fmt);
	log_line(level, ended > 0 ? suffix : NULL, NULL, fmt, ap);
	va_end(ap);
}

void
bg_log_throttle_tick(void)
{
	uint64_t now = mono_ms();
	struct bg_log_throttle **pp, *t;
	struct { const char *what; unsigned long n; } out[16];
	int n_out = 0;

	pthread_mutex_lock(&throttle_lock);
	for (pp = &throttles; (t = *pp) != NULL;) {
		unsigned long n;
		if (now - t->window_ms < BG_LOG_WINDOW_MS ||
		    n_out == (int)(sizeof(out) / sizeof(out[0]))) {
			pp = &t->next;
			continue;
		}
		n = bg_log_throttle_expire(t, now);
		if (n > 0) {
			out[n_out].what = t->what;
			out[n_out++].n = n;
		}
		*pp = t->next;             /* listed again on its next drop */
		t->listed = false;
	}
	pthread_mutex_unlock(&throttle_lock);
	for (int i = 0; i < n_out; i++)
		bg_log_write(BG_LOG_WARN, "%s: %lu similar lines suppressed "
			     "in the last %d s", out[i].what, out[i].n,
			     BG_LOG_WINDOW_MS / 1000);
}
