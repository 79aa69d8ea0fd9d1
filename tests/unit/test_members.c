/*
 * test_members.c - unit tests of common/members.c, the presence table:
 * one member per user however many connections (tabs) it has, joins and
 * leaves reported once, max_users, other nodes' absolute counts, a node
 * dropped, a full state replacing a node's entries (mark / sweep), the
 * member list sorted and alike whichever order entries came in, and
 * memory given back (ASan checks for leaks).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/members.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What the change callback saw, as "+chan/user" and "-chan/user". */
struct log {
	char text[4096];
};

static void
on_change(void *arg, const char *channel, const char *user,
	  const char *info, bool joined)
{
	struct log *l = arg;
	size_t n = strlen(l->text);

	assert_non_null(info);
	snprintf(l->text + n, sizeof(l->text) - n, "%c%s/%s ",
		 joined ? '+' : '-', channel, user);
}

static char *
members_text(struct bg_members *t, const char *channel)
{
	json_t *m = bg_members_members(t, channel);
	char *s;

	assert_non_null(m);
	s = json_dumps(m, JSON_COMPACT);
	json_decref(m);
	return s;
}

static void
test_tabs_make_one_member(void **state)
{
	struct log l = { "" };
	struct bg_members *t = bg_members_new("a", on_change, &l);
	uint64_t clients, users;

	assert_int_equal(bg_members_join(t, "presence-x", "c1", "alice",
					 "{\"n\":1}", 0), BG_MEMBERS_JOINED);
	assert_int_equal(bg_members_join(t, "presence-x", "c2", "alice",
					 "{\"n\":2}", 0), BG_MEMBERS_SAME);
	assert_int_equal(bg_members_join(t, "presence-x", "c3", "alice",
					 NULL, 0), BG_MEMBERS_SAME);
	/* The same connection again changes nothing. */
	assert_int_equal(bg_members_join(t, "presence-x", "c3", "alice",
					 NULL, 0), BG_MEMBERS_SAME);
	bg_members_stats(t, "presence-x", &clients, &users);
	assert_int_equal(clients, 3);
	assert_int_equal(users, 1);
	assert_int_equal(bg_members_count(t, 0, "presence-x", "alice"), 3);
	assert_string_equal(bg_members_client_user(t, "presence-x", "c2"),
			    "alice");
	assert_string_equal(l.text, "+presence-x/alice ");
	{
		char *s = members_text(t, "presence-x");
		/* The first connection's info stays. */
		assert_string_equal(s, "[{\"user\":\"alice\",\"info\":"
				    "{\"n\":1}}]");
		free(s);
	}
	assert_int_equal(bg_members_leave(t, "presence-x", "c2"),
			 BG_MEMBERS_SAME);
	assert_int_equal(bg_members_leave(t, "presence-x", "c2"),
			 BG_MEMBERS_SAME);
	assert_int_equal(bg_members_leave(t, "presence-x", "c1"),
			 BG_MEMBERS_SAME);
	assert_string_equal(l.text, "+presence-x/alice ");
	assert_int_equal(bg_members_leave(t, "presence-x", "c3"),
			 BG_MEMBERS_LEFT);
	assert_string_equal(l.text, "+presence-x/alice -presence-x/alice ");
	bg_members_stats(t, "presence-x", &clients, &users);
	assert_int_equal(clients, 0);
	assert_int_equal(users, 0);
	assert_null(bg_members_client_user(t, "presence-x", "c3"));
	assert_int_equal(bg_members_entries(t), 0);
	bg_members_free(t);
}

static void
test_max_users(void **state)
{
	struct bg_members *t = bg_members_new("a", NULL, NULL);

	assert_int_equal(bg_members_join(t, "p", "c1", "u1", NULL, 2),
			 BG_MEMBERS_JOINED);
	assert_int_equal(bg_members_join(t, "p", "c2", "u2", NULL, 2),
			 BG_MEMBERS_JOINED);
	assert_int_equal(bg_members_join(t, "p", "c3", "u3", NULL, 2),
			 BG_MEMBERS_FULL);
	assert_null(bg_members_client_user(t, "p", "c3"));
	/* A member's other tabs are never refused. */
	assert_int_equal(bg_members_join(t, "p", "c4", "u1", NULL, 2),
			 BG_MEMBERS_SAME);
	/* Other channels have their own room. */
	assert_int_equal(bg_members_join(t, "q", "c3", "u3", NULL, 2),
			 BG_MEMBERS_JOINED);
	/* Another node's members count too. */
	assert_int_equal(bg_members_node(t, "b", true), 1);
	assert_int_equal(bg_members_set(t, 1, "q", "u9", NULL, 1),
			 BG_MEMBERS_JOINED);
	assert_int_equal(bg_members_join(t, "q", "c5", "u5", NULL, 2),
			 BG_MEMBERS_FULL);
	bg_members_free(t);
}

static void
test_nodes(void **state)
{
	struct log l = { "" };
	struct bg_members *t = bg_members_new("b", on_change, &l);
	int a = bg_members_node(t, "a", true);
	int c = bg_members_node(t, "c", true);
	uint64_t clients, users;
	char *s;

	assert_int_equal(bg_members_node(t, "b", false), 0);
	assert_int_equal(bg_members_node(t, "zz", false), -1);
	assert_string_equal(bg_members_node_id(t, a), "a");
	assert_int_equal(bg_members_join(t, "p", "x1", "bob",
					 "{\"on\":\"b\"}", 0),
			 BG_MEMBERS_JOINED);
	/* bob on another node too: still one member; its info is the
	 * one of the smallest node id ("a" < "b"). */
	assert_int_equal(bg_members_set(t, a, "p", "bob", "{\"on\":\"a\"}",
					2), BG_MEMBERS_SAME);
	assert_int_equal(bg_members_set(t, c, "p", "carol", NULL, 1),
			 BG_MEMBERS_JOINED);
	bg_members_stats(t, "p", &clients, &users);
	assert_int_equal(clients, 4);
	assert_int_equal(users, 2);
	s = members_text(t, "p");
	assert_string_equal(s, "[{\"user\":\"bob\",\"info\":{\"on\":\"a\"}},"
			    "{\"user\":\"carol\",\"info\":{}}]");
	free(s);
	/* Another node's entry takes the info that node gives (it is
	 * the one that knows); this node's keeps its first. */
	assert_int_equal(bg_members_set(t, c, "p", "carol", "{\"v\":2}", 1),
			 BG_MEMBERS_SAME);
	assert_string_equal(bg_members_info(t, c, "p", "carol"),
			    "{\"v\":2}");
	assert_int_equal(bg_members_join(t, "p", "x2", "bob", "{\"v\":3}",
					 0), BG_MEMBERS_SAME);
	assert_string_equal(bg_members_info(t, 0, "p", "bob"),
			    "{\"on\":\"b\"}");
	assert_null(bg_members_info(t, c, "p", "bob"));
	assert_int_equal(bg_members_leave(t, "p", "x2"), BG_MEMBERS_SAME);
	/* Absolute counts: a repeated value changes nothing. */
	assert_int_equal(bg_members_set(t, a, "p", "bob", NULL, 1),
			 BG_MEMBERS_SAME);
	bg_members_stats(t, "p", &clients, &users);
	assert_int_equal(clients, 3);
	/* Node a dies: bob stays (he is here too), nobody leaves. */
	assert_int_equal(bg_members_drop_node(t, a), 1);
	assert_string_equal(l.text, "+p/bob +p/carol ");
	s = members_text(t, "p");
	assert_string_equal(s, "[{\"user\":\"bob\",\"info\":{\"on\":\"b\"}},"
			    "{\"user\":\"carol\",\"info\":{\"v\":2}}]");
	free(s);
	/* Node c dies: carol leaves. */
	assert_int_equal(bg_members_drop_node(t, c), 1);
	assert_string_equal(l.text, "+p/bob +p/carol -p/carol ");
	assert_int_equal(bg_members_set(t, c, "p", "carol", NULL, 0),
			 BG_MEMBERS_SAME);
	bg_members_free(t);
}

static void
test_state_replaces(void **state)
{
	struct log l = { "" };
	struct bg_members *t = bg_members_new("a", on_change, &l);
	int b = bg_members_node(t, "b", true);
	uint64_t clients, users;

	bg_members_set(t, b, "p", "u1", NULL, 1);
	bg_members_set(t, b, "p", "u2", NULL, 1);
	bg_members_set(t, b, "q", "u3", NULL, 1);
	l.text[0] = '\0';
	/* A whole state of b that no longer has u2 nor u3, and has u4. */
	bg_members_mark(t, b);
	bg_members_set(t, b, "p", "u1", NULL, 5);
	bg_members_set(t, b, "p", "u4", NULL, 1);
	assert_int_equal(bg_members_sweep(t, b), 2);
	assert_non_null(strstr(l.text, "+p/u4 "));
	assert_non_null(strstr(l.text, "-p/u2 "));
	assert_non_null(strstr(l.text, "-q/u3 "));
	bg_members_stats(t, "p", &clients, &users);
	assert_int_equal(clients, 6);
	assert_int_equal(users, 2);
	/* This node is never swept. */
	bg_members_join(t, "p", "c", "me", NULL, 0);
	bg_members_mark(t, 0);
	assert_int_equal(bg_members_sweep(t, 0), 0);
	assert_int_equal(bg_members_count(t, 0, "p", "me"), 1);
	bg_members_free(t);
}

struct seen {
	int n;
	uint32_t total;
};

static void
count_entry(void *arg, const char *channel, const char *user,
	    const char *info, uint32_t count)
{
	struct seen *s = arg;

	s->n++;
	s->total += count;
}

/* Many users (bucket growth), listed sorted; each() visits one node. */
static void
test_many(void **state)
{
	struct bg_members *t = bg_members_new("a", NULL, NULL);
	int b = bg_members_node(t, "b", true);
	struct seen s = { 0 };
	char user[32], client[32];
	json_t *m;
	uint64_t bytes;

	for (int i = 0; i < 3000; i++) {
		snprintf(user, sizeof(user), "u%05d", (i * 7919) % 3000);
		snprintf(client, sizeof(client), "c%d", i);
		assert_int_equal(bg_members_join(t, "presence-big", client,
						 user, NULL, 0),
				 BG_MEMBERS_JOINED);
	}
	bg_members_set(t, b, "presence-big", "zed", NULL, 4);
	m = bg_members_members(t, "presence-big");
	assert_int_equal(json_array_size(m), 3001);
	for (size_t i = 1; i < json_array_size(m); i++)
		assert_true(strcmp(json_string_value(json_object_get(
			json_array_get(m, i - 1), "user")),
			json_string_value(json_object_get(
			json_array_get(m, i), "user"))) < 0);
	json_decref(m);
	bg_members_each(t, 0, count_entry, &s);
	assert_int_equal(s.n, 3000);
	bg_members_each(t, b, count_entry, &s);
	assert_int_equal(s.n, 3001);
	assert_int_equal(s.total, 3004);
	bytes = bg_members_bytes(t);
	assert_true(bytes > 3000 * 64);
	for (int i = 0; i < 3000; i++) {
		snprintf(client, sizeof(client), "c%d", i);
		assert_int_equal(bg_members_leave(t, "presence-big", client),
				 BG_MEMBERS_LEFT);
	}
	assert_int_equal(bg_members_entries(t), 1);
	assert_true(bg_members_bytes(t) < bytes / 10);
	bg_members_free(t);
}

/* Nodes come and go with a new id at every start: a forgotten node's
 * slot is reused, so the table never runs out of them. */
static void
test_forget_reuses_slots(void **state)
{
	struct log l = { "" };
	struct bg_members *t = bg_members_new("self", on_change, &l);
	char id[32];
	int n;

	for (int i = 0; i < 3 * BG_MEMBERS_MAX_NODES; i++) {
		snprintf(id, sizeof(id), "node-%d", i);
		n = bg_members_node(t, id, true);
		assert_true(n > 0 && n < 3);
		assert_int_equal(bg_members_set(t, n, "p", id, NULL, 1),
				 BG_MEMBERS_JOINED);
		if (i > 0) {
			snprintf(id, sizeof(id), "node-%d", i - 1);
			bg_members_forget_node(t, bg_members_node(t, id,
								  false));
			assert_int_equal(bg_members_node(t, id, false), -1);
		}
	}
	assert_int_equal(bg_members_entries(t), 1);
	/* This node is never forgotten. */
	bg_members_forget_node(t, 0);
	assert_int_equal(bg_members_node(t, "self", false), 0);
	bg_members_free(t);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tabs_make_one_member),
		cmocka_unit_test(test_max_users),
		cmocka_unit_test(test_nodes),
		cmocka_unit_test(test_state_replaces),
		cmocka_unit_test(test_many),
		cmocka_unit_test(test_forget_reuses_slots),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
