/*
 * test_stats.c - unit tests of server/stats.c: histogram buckets, close
 * codes and the table of forwarded requests awaiting their reply.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "server/server.h"

static void
test_hist_buckets(void **state)
{
	struct bg_hist h;

	(void)state;
	memset(&h, 0, sizeof(h));
	bg_hist_observe(&h, 0);            /* <= 100 us */
	bg_hist_observe(&h, 100);          /* <= 100 us: bounds inclusive */
	bg_hist_observe(&h, 101);          /* <= 250 us */
	bg_hist_observe(&h, 10000000);     /* <= 10 s */
	bg_hist_observe(&h, 10000001);     /* +Inf */
	assert_int_equal(h.counts[0], 2);
	assert_int_equal(h.counts[1], 1);
	assert_int_equal(h.counts[BG_HIST_BUCKETS - 2], 1);
	assert_int_equal(h.counts[BG_HIST_BUCKETS - 1], 1);
	assert_int_equal(h.sum_us, 0 + 100 + 101 + 10000000 + 10000001);
	for (int i = 1; i < BG_HIST_BUCKETS - 1; i++)
		assert_true(bg_hist_bounds[i] > bg_hist_bounds[i - 1]);
}

static void
test_close_codes(void **state)
{
	struct bg_stats st;

	(void)state;
	memset(&st, 0, sizeof(st));
	bg_stat_close(&st, 4001, false);
	bg_stat_close(&st, 1000, true);
	bg_stat_close(&st, 0, true);       /* no close frame: 1006 */
	bg_stat_close(&st, 4999, true);    /* any other: "other" */
	for (int i = 0; i < BG_CLOSE_CODES - 1; i++) {
		uint16_t c = bg_close_codes[i];
		assert_int_equal(st.closes[i][0], c == 4001);
		assert_int_equal(st.closes[i][1], c == 1000 || c == 1006);
	}
	assert_int_equal(st.closes[BG_CLOSE_CODES - 1][1], 1);
	assert_int_equal(st.closes[BG_CLOSE_CODES - 1][0], 0);
}

static void
test_pending_round_trip(void **state)
{
	static struct bg_fwd_slot tab[BG_FWD_PENDING];
	uint64_t us = 0;

	(void)state;
	bg_fwd_pending_add(tab, "n-0-1", "cb-1", 1000);
	bg_fwd_pending_add(tab, "n-0-2", "cb-1", 1500);
	/* Another client's id, another callbackId: not pending. */
	assert_false(bg_fwd_pending_take(tab, "n-0-3", "cb-1", 2000, &us));
	assert_false(bg_fwd_pending_take(tab, "n-0-1", "cb-2", 2000, &us));
	assert_true(bg_fwd_pending_take(tab, "n-0-1", "cb-1", 2500, &us));
	assert_int_equal(us, 1500);
	/* Taken once: a duplicate reply measures nothing. */
	assert_false(bg_fwd_pending_take(tab, "n-0-1", "cb-1", 2600, &us));
	assert_true(bg_fwd_pending_take(tab, "n-0-2", "cb-1", 1700, &us));
	assert_int_equal(us, 200);
}

static void
test_pending_is_bounded(void **state)
{
	static struct bg_fwd_slot tab[BG_FWD_PENDING];
	char cb[32];
	uint64_t us;
	int found = 0;

	(void)state;
	/* Far more requests than slots: the table keeps at most its size,
	 * the newest winning. */
	for (int i = 0; i < 10 * BG_FWD_PENDING; i++) {
		snprintf(cb, sizeof(cb), "cb-%d", i);
		bg_fwd_pending_add(tab, "n-0-1", cb, (uint64_t)i);
	}
	for (int i = 0; i < 10 * BG_FWD_PENDING; i++) {
		snprintf(cb, sizeof(cb), "cb-%d", i);
		if (bg_fwd_pending_take(tab, "n-0-1", cb, 100000, &us))
			found++;
	}
	assert_true(found > 0 && found <= BG_FWD_PENDING);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hist_buckets),
		cmocka_unit_test(test_close_codes),
		cmocka_unit_test(test_pending_round_trip),
		cmocka_unit_test(test_pending_is_bounded),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
