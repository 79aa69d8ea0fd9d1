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

#include "common/log.h"

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
		cmocka_unit_test(test_burst_then_suppressed),
		cmocka_unit_test(test_window_is_ten_seconds),
		cmocka_unit_test(test_expire_reports_once),
		cmocka_unit_test(test_quiet_window_reports_nothing),
		cmocka_unit_test(test_throttled_and_tick_do_not_crash),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
