/*
 * test_budget.c - unit tests of common/budget.c: what a subscription
 * costs, everything counted together, and the limit never overflowing.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/budget.h"

static void
test_sub_cost_counts_the_name(void **state)
{
	(void)state;
	assert_int_equal(bg_budget_sub_cost(0), BG_BUDGET_SUB_COST);
	assert_int_equal(bg_budget_sub_cost(200), BG_BUDGET_SUB_COST + 200);
}

static void
test_everything_counts(void **state)
{
	struct bg_budget b = { .limit = 1000, .subs = 100, .store = 200,
			       .rx = 300 };

	(void)state;
	assert_int_equal(bg_budget_used(&b, 0), 600);
	assert_int_equal(bg_budget_used(&b, 50), 650);
	assert_true(bg_budget_allows(&b, 0, 400));
	assert_false(bg_budget_allows(&b, 0, 401));
	assert_true(bg_budget_allows(&b, 400, 0));
	assert_false(bg_budget_allows(&b, 400, 1));
}

static void
test_subscriptions_until_full(void **state)
{
	struct bg_budget b = { .limit = 1024 * 1024 };
	int n = 0;

	(void)state;
	while (bg_budget_allows(&b, 0, bg_budget_sub_cost(200))) {
		b.subs += bg_budget_sub_cost(200);
		n++;
	}
	assert_int_equal(n, 1024 * 1024 / (BG_BUDGET_SUB_COST + 200));
	/* A full queue leaves less room. */
	b.subs = 0;
	n = 0;
	while (bg_budget_allows(&b, 512 * 1024, bg_budget_sub_cost(200))) {
		b.subs += bg_budget_sub_cost(200);
		n++;
	}
	assert_int_equal(n, 512 * 1024 / (BG_BUDGET_SUB_COST + 200));
}

static void
test_no_overflow(void **state)
{
	struct bg_budget b = { .limit = 100, .subs = 150 };

	(void)state;
	assert_false(bg_budget_allows(&b, 0, 0));
	assert_false(bg_budget_allows(&b, 0, SIZE_MAX));
	b.subs = 0;
	assert_false(bg_budget_allows(&b, 0, SIZE_MAX));
	assert_false(bg_budget_allows(&b, SIZE_MAX - 10, 5));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sub_cost_counts_the_name),
		cmocka_unit_test(test_everything_counts),
		cmocka_unit_test(test_subscriptions_until_full),
		cmocka_unit_test(test_no_overflow),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
