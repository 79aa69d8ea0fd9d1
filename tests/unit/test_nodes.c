/*
 * test_nodes.c - unit tests of amqp/nodes.c, the control plane's
 * live-node table: a node is up when first heard, stays while it speaks,
 * expires after the timeout of silence (not at it), the node itself is
 * never expired, the down callback sees each expired node once, stats
 * are replaced by the newer ones, and removal ("bye").
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "amqp/nodes.h"

#include <stdio.h>
#include <string.h>

struct downs {
	char ids[8][BG_NODE_ID_MAX + 1];
	int n;
};

static void
on_down(const char *id, void *arg)
{
	struct downs *d = arg;

	assert_true(d->n < 8);
	snprintf(d->ids[d->n++], sizeof(d->ids[0]), "%s", id);
}

static void
test_up_once(void **state)
{
	struct bg_nodes *t = bg_nodes_new();

	assert_non_null(t);
	assert_int_equal(bg_nodes_count(t), 0);
	assert_true(bg_nodes_heard(t, "a", NULL, 1000));
	assert_false(bg_nodes_heard(t, "a", NULL, 1500));
	assert_true(bg_nodes_heard(t, "b", NULL, 1500));
	assert_int_equal(bg_nodes_count(t), 2);
	assert_true(bg_nodes_live(t, "a"));
	assert_false(bg_nodes_live(t, "c"));
	bg_nodes_free(t);
}

static void
test_expiry_after_timeout_of_silence(void **state)
{
	struct bg_nodes *t = bg_nodes_new();
	struct downs d = { .n = 0 };

	bg_nodes_heard(t, "self", NULL, 0);
	bg_nodes_heard(t, "a", NULL, 1000);
	bg_nodes_heard(t, "b", NULL, 1000);
	/* Exactly timeout_ms of silence: still live. */
	assert_int_equal(bg_nodes_expire(t, 16000, 15000, "self", on_down,
					 &d), 0);
	bg_nodes_heard(t, "b", NULL, 16000);
	/* a was silent for 15001 ms: gone; b spoke; self is kept. */
	assert_int_equal(bg_nodes_expire(t, 16001, 15000, "self", on_down,
					 &d), 1);
	assert_int_equal(d.n, 1);
	assert_string_equal(d.ids[0], "a");
	assert_false(bg_nodes_live(t, "a"));
	assert_true(bg_nodes_live(t, "b"));
	assert_true(bg_nodes_live(t, "self"));
	/* Heard again after it was dropped: up again. */
	assert_true(bg_nodes_heard(t, "a", NULL, 17000));
	assert_int_equal(bg_nodes_expire(t, 40000, 15000, "self", on_down,
					 &d), 2);
	assert_int_equal(d.n, 3);
	assert_int_equal(bg_nodes_count(t), 1);
	assert_string_equal(bg_nodes_at(t, 0)->id, "self");
	bg_nodes_free(t);
}

static void
test_stats_replaced_and_kept(void **state)
{
	struct bg_nodes *t = bg_nodes_new();
	json_t *s1 = json_pack("{s:i}", "connections", 1);
	json_t *s2 = json_pack("{s:i}", "connections", 2);

	bg_nodes_heard(t, "a", s1, 1);
	json_decref(s1);
	assert_int_equal(json_integer_value(json_object_get(
		bg_nodes_at(t, 0)->stats, "connections")), 1);
	/* A message without stats keeps the last ones. */
	bg_nodes_heard(t, "a", NULL, 2);
	assert_non_null(bg_nodes_at(t, 0)->stats);
	bg_nodes_heard(t, "a", s2, 3);
	json_decref(s2);
	assert_int_equal(json_integer_value(json_object_get(
		bg_nodes_at(t, 0)->stats, "connections")), 2);
	assert_null(bg_nodes_at(t, 1));
	bg_nodes_free(t);
}

static void
test_remove_and_many(void **state)
{
	struct bg_nodes *t = bg_nodes_new();
	char id[32];

	for (int i = 0; i < 100; i++) {
		snprintf(id, sizeof(id), "node-%d", i);
		assert_true(bg_nodes_heard(t, id, NULL, (uint64_t)i));
	}
	assert_int_equal(bg_nodes_count(t), 100);
	assert_true(bg_nodes_remove(t, "node-50"));
	assert_false(bg_nodes_remove(t, "node-50"));
	assert_int_equal(bg_nodes_count(t), 99);
	assert_false(bg_nodes_live(t, "node-50"));
	assert_true(bg_nodes_live(t, "node-99"));
	/* Silent since 0..49 at 10049 with 10000: node-0..48 go. */
	assert_int_equal(bg_nodes_expire(t, 10049, 10000, NULL, NULL, NULL),
			 49);
	assert_int_equal(bg_nodes_count(t), 50);
	bg_nodes_free(t);
	bg_nodes_free(NULL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_up_once),
		cmocka_unit_test(test_expiry_after_timeout_of_silence),
		cmocka_unit_test(test_stats_replaced_and_kept),
		cmocka_unit_test(test_remove_and_many),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
