/*
 * test_log.c - unit tests of the log throttle (common/log.c): the burst
 * per window, the count of suppressed lines reported when the window ends
 * (by the next line or by the tick), and quiet windows reporting nothing.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"

/* Logs fmt's line with stderr on a pipe; the line read back, parsed. */
static json_t *
json_line(const char *msg)
{
	char buf[4096];
	int fds[2], saved;
	ssize_t n;
	json_t *o;

	assert_int_equal(pipe(fds), 0);
	saved = dup(STDERR_FILENO);
	dup2(fds[1], STDERR_FILENO);
	bg_log_set_format(BG_LOG_JSON);
	bg_log_write(BG_LOG_WARN, "%s", msg);
	bg_log_set_format(BG_LOG_TEXT);
	dup2(saved, STDERR_FILENO);
	close(saved);
	close(fds[1]);
	n = read(fds[0], buf, sizeof(buf) - 1);
	close(fds[0]);
	assert_true(n > 0);
	buf[n] = '\0';
	assert_int_equal(buf[n - 1], '\n');
	assert_ptr_equal(strchr(buf, '\n'), buf + n - 1); /* one line */
	o = json_loads(buf, 0, NULL);
	assert_non_null(o);
	assert_string_equal(json_string_value(json_object_get(o, "level")),
			    "warn");
	assert_non_null(json_string_value(json_object_get(o, "ts")));
	return o;
}

static void
test_json_line_escapes(void **state)
{
	const char *msg = "a \"quoted\" \\ back\nslash \x01\x1f tab\t "
			  "caf\xc3\xa9";
	json_t *o = json_line(msg);

	(void)state;
	assert_string_equal(json_string_value(json_object_get(o, "msg")), msg);
	json_decref(o);
}

static void
test_json_line_not_utf8(void **state)
{
	json_t *o = json_line("bad \xff\xc3( \xed\xa0\x80 \xf0\x9f\x98\x80 "
			      "cut \xe2\x82");

	(void)state;
	assert_string_equal(json_string_value(json_object_get(o, "msg")),
			    "bad ?" "?( ?" "?? \xf0\x9f\x98\x80 cut ??");
	json_decref(o);
}

static void
test_json_long_line_still_parses(void **state)
{
	char msg[3000];
	json_t *o;

	(void)state;
	for (size_t i = 0; i < sizeof(msg) - 1; i++)
		msg[i] = i % 7 == 0 ? '"' : 'x';
	msg[sizeof(msg) - 1] = '\0';
	o = json_line(msg);
	/* Cut, but whole escapes only: a prefix of the message. */
	const char *got = json_string_value(json_object_get(o, "msg"));
	assert_non_null(got);
	assert_true(strlen(got) > 500);
	assert_memory_equal(got, msg, strlen(got));
	json_decref(o);
}

static void
test_burst_then_suppressed(void **state)
{
	struct bg_log_throttle t = BG_LOG_THROTTLE("test", 3);
	unsigned long ended = 99;
	int printed = 0;

	(void)state;
	for (int i = 0; i < 1000; i++) {
		if (bg_log_throttle_check(&t, 1000 + (uint64_t)i, &ended))
			printed++;
		assert_int_equal(ended, 0);
	}
	assert_int_equal(printed, 3);
	/* The first line of the next window carries the count. */
	assert_true(bg_log_throttle_check(&t, 1000 + BG_LOG_WINDOW_MS,
					  &ended));
	assert_int_equal(ended, 997);
	/* And the new window starts afresh. */
	assert_true(bg_log_throttle_check(&t, 1001 + BG_LOG_WINDOW_MS,
					  &ended));
	assert_int_equal(ended, 0);
}

static void
test_window_is_ten_seconds(void **state)
{
	struct bg_log_throttle t = BG_LOG_THROTTLE("test", 1);
	unsigned long ended;

	(void)state;
	assert_true(bg_log_throttle_check(&t, 5000, &ended));
	assert_false(bg_log_throttle_check(&t, 5000 + BG_LOG_WINDOW_MS - 1,
					   &ended));
	assert_int_equal(ended, 0);
	assert_true(bg_log_throttle_check(&t, 5000 + BG_LOG_WINDOW_MS,
					  &ended));
	assert_int_equal(ended, 1);
}

static void
test_expire_reports_once(void **state)
{
	struct bg_log_throttle t = BG_LOG_THROTTLE("test", 2);
	unsigned long ended;

	(void)state;
	for (int i = 0; i < 10; i++)
		bg_log_throttle_check(&t, 100, &ended);
	assert_int_equal(bg_log_throttle_expire(&t, 200), 0);  /* too soon */
	assert_int_equal(bg_log_throttle_expire(&t, 100 + BG_LOG_WINDOW_MS),
			 8);
	assert_int_equal(bg_log_throttle_expire(&t, 100 + 3 *
						BG_LOG_WINDOW_MS), 0);
	/* The reported lines are not reported again by the next line. */
	assert_true(bg_log_throttle_check(&t, 100 + 3 * BG_LOG_WINDOW_MS,
					  &ended));
	assert_int_equal(ended, 0);
}

static void
test_quiet_window_reports_nothing(void **state)
{
	struct bg_log_throttle t = BG_LOG_THROTTLE("test", 5);
	unsigned long ended;

	(void)state;
	for (int i = 0; i < 5; i++)
		assert_true(bg_log_throttle_check(&t, 0, &ended));
	assert_true(bg_log_throttle_check(&t, BG_LOG_WINDOW_MS * 2, &ended));
	assert_int_equal(ended, 0);
}

static void
test_throttled_and_tick_do_not_crash(void **state)
{
	static struct bg_log_throttle t = BG_LOG_THROTTLE("unit test", 1);

	(void)state;
	bg_log_set_level(BG_LOG_ERROR);    /* keep the test output clean */
	bg_log_throttled(&t, BG_LOG_ERROR, "line %d", 1);
	bg_log_set_level(BG_LOG_INFO);
	bg_log_throttle_tick();
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_json_line_escapes),
		cmocka_unit_test(test_json_line_not_utf8),
		cmocka_unit_test(test_json_long_line_still_parses),
		cmocka_unit_test(test_burst_then_suppressed),
		cmocka_unit_test(test_window_is_ten_seconds),
		cmocka_unit_test(test_expire_reports_once),
		cmocka_unit_test(test_quiet_window_reports_nothing),
		cmocka_unit_test(test_throttled_and_tick_do_not_crash),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
