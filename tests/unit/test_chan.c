/*
 * test_chan.c - unit tests of common/chan.c: subscribe / find /
 * unsubscribe, channels disappearing with their last subscriber, bucket
 * growth, swap-remove keeping every subscription's pos right, hash
 * collisions (same bucket and same full hash), counters, and freeing a
 * table that still holds subscriptions (ASan checks for leaks).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/chan.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The table's hash (FNV-1a, chan.c), to build colliding names. */
static uint32_t
fnv1a(const char *s, size_t len)
{
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < len; i++) {
		h ^= (uint8_t)s[i];
		h *= 16777619u;
	}
	return h;
}

static struct bg_chan *
find_str(const struct bg_chan_table *t, const char *name)
{
	return bg_chan_find(t, name, strlen(name));
}

static struct bg_chan_sub *
sub_str(struct bg_chan_table *t, const char *name, void *owner)
{
	struct bg_chan_sub *s = bg_chan_subscribe(t, name, strlen(name),
						  owner);

	assert_non_null(s);
	return s;
}

/* Every subscription of c sits where its pos says, and points back. */
static void
check_chan(const struct bg_chan *c)
{
	assert_true(c->n_subs > 0);
	assert_true(c->n_subs <= c->cap_subs);
	for (uint32_t i = 0; i < c->n_subs; i++) {
		assert_non_null(c->subs[i]);
		assert_int_equal(c->subs[i]->pos, i);
		assert_ptr_equal(c->subs[i]->chan, c);
	}
	assert_int_equal(c->name[c->name_len], '\0');
}

/* Walks every bucket: counts match the table's counters, every channel
 * is in the bucket its hash says, and is consistent. */
static void
check_table(const struct bg_chan_table *t)
{
	uint64_t subs = 0;
	uint32_t chans = 0;

	assert_true(t->n_buckets >= 64);
	assert_int_equal(t->n_buckets & (t->n_buckets - 1), 0);
	for (uint32_t b = 0; b < t->n_buckets; b++) {
		for (struct bg_chan *c = t->buckets[b]; c; c = c->next) {
			assert_int_equal(c->hash & (t->n_buckets - 1), b);
			assert_int_equal(c->hash, fnv1a(c->name, c->name_len));
			check_chan(c);
			assert_ptr_equal(bg_chan_find(t, c->name, c->name_len),
					 c);
			chans++;
			subs += c->n_subs;
		}
	}
	assert_int_equal(chans, t->n_chans);
	assert_int_equal(subs, t->n_subs);
}

static void
test_new_table_is_empty(void **state)
{
	struct bg_chan_table *t = bg_chan_table_new();

	assert_non_null(t);
	assert_int_equal(t->n_chans, 0);
	assert_int_equal(t->n_subs, 0);
	assert_null(find_str(t, "news"));
	assert_null(bg_chan_find(t, "", 0));
	check_table(t);
	bg_chan_table_free(t);
	bg_chan_table_free(NULL); /* documented no-op */
}

static void
test_subscribe_find_unsubscribe(void **state)
{
	struct bg_chan_table *t = bg_chan_table_new();
	int owner;
	struct bg_chan_sub *s;
	struct bg_chan *c;

	s = sub_str(t, "news", &owner);
	c = find_str(t, "news");
	assert_non_null(c);
	assert_ptr_equal(s->chan, c);
	assert_ptr_equal(s->owner, &owner);
	assert_int_equal(s->pos, 0);
	assert_int_equal(c->n_subs, 1);
	assert_ptr_equal(c->subs[0], s);
	assert_int_equal(c->name_len, 4);
	assert_string_equal(c->name, "news");
	assert_int_equal(t->n_chans, 1);
	assert_int_equal(t->n_subs, 1);

	/* Lookups go by (pointer, length), not by NUL. */
	assert_ptr_equal(bg_chan_find(t, "newsroom", 4), c);
	assert_null(bg_chan_find(t, "newsroom", 8));
	assert_null(bg_chan_find(t, "new", 3));
	assert_null(find_str(t, "News"));
	assert_null(find_str(t, "newsx"));
	check_table(t);

	bg_chan_unsubscribe(t, s);
	assert_null(find_str(t, "news"));
	assert_int_equal(t->n_chans, 0);
	assert_int_equal(t->n_subs, 0);
	check_table(t);

	/* The name can be subscribed again afterwards. */
	s = sub_str(t, "news", &owner);
	assert_non_null(find_str(t, "news"));
	bg_chan_unsubscribe(t, s);
	bg_chan_table_free(t);
}

static void
test_channel_disappears_with_last_subscriber(void **state)
{
	struct bg_chan_table *t = bg_chan_table_new();
	int a, b, c;
	struct bg_chan_sub *sa = sub_str(t, "room", &a);
	struct bg_chan_sub *sb = sub_str(t, "room", &b);
	struct bg_chan_sub *sc = sub_str(t, "room", &c);
	struct bg_chan *ch = find_str(t, "room");

	assert_int_equal(t->n_chans, 1);
	assert_int_equal(t->n_subs, 3);
	assert_int_equal(ch->n_subs, 3);
	assert_ptr_equal(sa->chan, ch);
	assert_ptr_equal(sb->chan, ch);
	assert_ptr_equal(sc->chan, ch);

	/* Removing the first moves the last into its place. */
	bg_chan_unsubscribe(t, sa);
	assert_ptr_equal(find_str(t, "room"), ch);
	assert_int_equal(ch->n_subs, 2);
	assert_ptr_equal(ch->subs[0], sc);
	assert_int_equal(sc->pos, 0);
	assert_ptr_equal(ch->subs[1], sb);
	assert_int_equal(sb->pos, 1);
	check_table(t);

	bg_chan_unsubscribe(t, sb); /* the last one: nothing moves */
	assert_int_equal(ch->n_subs, 1);
	assert_ptr_equal(ch->subs[0], sc);
	assert_int_equal(t->n_subs, 1);
	assert_int_equal(t->n_chans, 1);

	bg_chan_unsubscribe(t, sc);
	assert_null(find_str(t, "room"));
	assert_int_equal(t->n_chans, 0);
	assert_int_equal(t->n_subs, 0);
	check_table(t);
	bg_chan_table_free(t);
}

/* The table does not de-duplicate: the caller knows its subscriptions. */
static void
test_same_owner_twice(void **state)
{
	struct bg_chan_table *t = bg_chan_table_new();
	int o;
	struct bg_chan_sub *s1 = sub_str(t, "x", &o);
	struct bg_chan_sub *s2 = sub_str(t, "x", &o);

	assert_ptr_not_equal(s1, s2);
	assert_int_equal(find_str(t, "x")->n_subs, 2);
	assert_int_equal(t->n_subs, 2);
	assert_int_equal(t->n_chans, 1);
	bg_chan_unsubscribe(t, s2);
	assert_int_equal(find_str(t, "x")->n_subs, 1);
	assert_ptr_equal(find_str(t, "x")->subs[0], s1);
	bg_chan_unsubscribe(t, s1);
	assert_int_equal(t->n_chans, 0);
	bg_chan_table_free(t);
}

/* Names are binary: an embedded NUL is part of the name. */
static void
test_names_are_length_delimited(void **state)
{
	struct bg_chan_table *t = bg_chan_table_new();
	int o;
	struct bg_chan_sub *s1 = bg_chan_subscribe(t, "a\0b", 3, &o);
	struct bg_chan_sub *s2 = bg_chan_subscribe(t, "a\0c", 3, &o);
	struct bg_chan_sub *s3 = bg_chan_subscribe(t, "a", 1, &o);

	assert_non_null(s1);
	assert_non_null(s2);
	assert_non_null(s3);
	assert_int_equal(t->n_chans, 3);
	assert_ptr_not_equal(s1->chan, s2->chan);
	assert_ptr_not_equal(s1->chan, s3->chan);
	assert_ptr_equal(bg_chan_find(t, "a\0b", 3), s1->chan);
	assert_ptr_equal(bg_chan_find(t, "a\0c", 3), s2->chan);
	assert_ptr_equal(bg_chan_find(t, "a", 1), s3->chan);
	assert_null(bg_chan_find(t, "a\0d", 3));
	check_table(t);
	bg_chan_unsubscribe(t, s1);
	bg_chan_unsubscribe(t, s2);
	bg_chan_unsubscribe(t, s3);
	assert_int_equal(t->n_chans, 0);
	bg_chan_table_free(t);
}

#define MANY 10000

static void
test_many_channels_grow_buckets(void **state)
{
	struct bg_chan_table *t = bg_chan_table_new();
	struct bg_chan_sub **subs = calloc(MANY * 2, sizeof(*subs));
	uint32_t n_buckets0 = t->n_buckets;
	uint64_t n = 0;
	char name[32];

	assert_non_null(subs);
	for (int i = 0; i < MANY; i++) {
		snprintf(name, sizeof(name), "channel-%d", i);
		subs[n++] = sub_str(t, name, (void *)(uintptr_t)(i + 1));
		if (i % 3 == 0)
			subs[n++] = sub_str(t, name,
					    (void *)(uintptr_t)(i + 2));
		assert_int_equal(t->n_chans, (uint32_t)i + 1);
		assert_int_equal(t->n_subs, n);
	}
	/* Growth keeps chains short: never more channels than buckets. */
	assert_true(t->n_buckets > n_buckets0);
	assert_true(t->n_buckets >= t->n_chans);
	check_table(t);
	for (int i = 0; i < MANY; i++) {
		struct bg_chan *c;

		snprintf(name, sizeof(name), "channel-%d", i);
		c = find_str(t, name);
		assert_non_null(c);
		assert_string_equal(c->name, name);
		assert_int_equal(c->n_subs, i % 3 == 0 ? 2 : 1);
		assert_ptr_equal(c->subs[0]->owner, (void *)(uintptr_t)(i + 1));
	}
	assert_null(find_str(t, "channel-10000"));
	assert_null(find_str(t, "channel-"));

	/* Every other subscription first, then the rest. */
	for (uint64_t i = 0; i < n; i += 2)
		bg_chan_unsubscribe(t, subs[i]);
	check_table(t);
	for (uint64_t i = 1; i < n; i += 2)
		bg_chan_unsubscribe(t, subs[i]);
	assert_int_equal(t->n_chans, 0);
	assert_int_equal(t->n_subs, 0);
	check_table(t);
	for (int i = 0; i < MANY; i += 997) {
		snprintf(name, sizeof(name), "channel-%d", i);
		assert_null(find_str(t, name));
	}
	free(subs);
	bg_chan_table_free(t);
}

/* A small deterministic PRNG (xorshift32), so failures reproduce. */
static uint32_t rng_state = 2463534242u;

static uint32_t
rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 17;
	rng_state ^= rng_state << 5;
	return rng_state;
}

#define CROWD 2000

static void
test_swap_remove_keeps_pos(void **state)
{
	struct bg_chan_table *t = bg_chan_table_new();
	struct bg_chan_sub **live = calloc(CROWD, sizeof(*live));
	bool *present = calloc(CROWD, sizeof(*present));
	uint32_t n_live = 0;
	struct bg_chan *c;

	assert_non_null(live);
	assert_non_null(present);
	for (uint32_t i = 0; i < CROWD; i++) {
		live[n_live++] = sub_str(t, "crowd", &present[i]);
		present[i] = true;
	}
	c = find_str(t, "crowd");
	assert_int_equal(c->n_subs, CROWD);
	check_chan(c);

	/* Remove in random order down to one; after each removal every
	 * remaining subscription must be where its pos says, and exactly
	 * the remaining owners must be there. */
	while (n_live > 1) {
		uint32_t k = rng() % n_live;
		struct bg_chan_sub *s = live[k];
		bool *owner = s->owner;

		live[k] = live[--n_live];
		*owner = false;
		bg_chan_unsubscribe(t, s);
		c = find_str(t, "crowd");
		assert_non_null(c);
		assert_int_equal(c->n_subs, n_live);
		assert_int_equal(t->n_subs, n_live);
		for (uint32_t i = 0; i < n_live; i++) {
			assert_ptr_equal(live[i]->chan, c);
			assert_ptr_equal(c->subs[live[i]->pos], live[i]);
			assert_true(*(bool *)live[i]->owner);
		}
		if (n_live % 97 == 0 || n_live < 70)
			check_chan(c);
	}
	/* The crowd left: the array gave memory back. */
	assert_true(c->cap_subs < CROWD);
	bg_chan_unsubscribe(t, live[0]);
	assert_null(find_str(t, "crowd"));
	assert_int_equal(t->n_chans, 0);
	free(live);
	free(present);
	bg_chan_table_free(t);
}

/* Random subscribes and unsubscribes over a few channels, checking the
 * whole table regularly against a shadow list. */
static void
test_random_churn(void **state)
{
	enum { N_NAMES = 50, MAX_LIVE = 3000, STEPS = 30000 };
	struct bg_chan_table *t = bg_chan_table_new();
	struct bg_chan_sub **live = calloc(MAX_LIVE, sizeof(*live));
	uint32_t n_live = 0;
	char name[16];

	assert_non_null(live);
	for (int step = 0; step < STEPS; step++) {
		if (n_live < MAX_LIVE && (n_live == 0 || rng() % 2)) {
			snprintf(name, sizeof(name), "n%u", rng() % N_NAMES);
			live[n_live++] = sub_str(t, name,
						 (void *)(uintptr_t)step);
		} else {
			uint32_t k = rng() % n_live;
			struct bg_chan_sub *s = live[k];

			live[k] = live[--n_live];
			bg_chan_unsubscribe(t, s);
		}
		assert_int_equal(t->n_subs, n_live);
		if (step % 1000 == 0)
			check_table(t);
		for (uint32_t i = 0; step % 100 == 0 && i < n_live; i++)
			assert_ptr_equal(live[i]->chan->subs[live[i]->pos],
					 live[i]);
	}
	check_table(t);
	while (n_live > 0)
		bg_chan_unsubscribe(t, live[--n_live]);
	assert_int_equal(t->n_chans, 0);
	assert_int_equal(t->n_subs, 0);
	free(live);
	bg_chan_table_free(t);
}

/* Names chained in one bucket: removing one from the head, the middle or
 * the tail of the chain leaves the others findable. */
static void
test_same_bucket(void **state)
{
	enum { N = 12 };
	struct bg_chan_table *t = bg_chan_table_new();
	char names[N][16];
	struct bg_chan_sub *subs[N];
	uint32_t mask = t->n_buckets - 1, want = 0;
	int n = 0;

	/* Names landing in the same bucket as "b0" (at 64 buckets). */
	for (unsigned i = 0; n < N && i < 1000000; i++) {
		char buf[16];
		uint32_t h;

		snprintf(buf, sizeof(buf), "b%u", i);
		h = fnv1a(buf, strlen(buf));
		if (n == 0)
			want = h & mask;
		if ((h & mask) != want)
			continue;
		strcpy(names[n++], buf);
	}
	assert_int_equal(n, N);
	for (int i = 0; i < N; i++)
		subs[i] = sub_str(t, names[i], names[i]);
	/* N < 64 channels: no growth, so they really share a chain. */
	assert_int_equal(t->n_buckets, mask + 1);
	{
		int len = 0;
		for (struct bg_chan *c = t->buckets[want]; c; c = c->next)
			len++;
		assert_int_equal(len, N);
	}
	for (int i = 0; i < N; i++)
		assert_ptr_equal(find_str(t, names[i]), subs[i]->chan);
	check_table(t);

	/* Chain order is newest first: names[N-1] is the head, names[0]
	 * the tail. Remove head, tail, and one in the middle. */
	bg_chan_unsubscribe(t, subs[N - 1]);
	bg_chan_unsubscribe(t, subs[0]);
	bg_chan_unsubscribe(t, subs[N / 2]);
	assert_null(find_str(t, names[N - 1]));
	assert_null(find_str(t, names[0]));
	assert_null(find_str(t, names[N / 2]));
	for (int i = 1; i < N - 1; i++)
		if (i != N / 2)
			assert_ptr_equal(find_str(t, names[i]), subs[i]->chan);
	assert_int_equal(t->n_chans, N - 3);
	check_table(t);
	bg_chan_table_free(t); /* with subscriptions left */
}

/* Two names with the same full 32-bit FNV-1a hash: the comparison must
 * go on to the bytes. */
static void
test_full_hash_collision(void **state)
{
	static const char *a = "c02db7210", *b = "c30c50ac1";
	struct bg_chan_table *t = bg_chan_table_new();
	int oa, ob;
	struct bg_chan_sub *sa, *sb;

	assert_int_equal(fnv1a(a, strlen(a)), fnv1a(b, strlen(b)));
	assert_string_not_equal(a, b);
	sa = sub_str(t, a, &oa);
	assert_null(find_str(t, b));
	sb = sub_str(t, b, &ob);
	assert_ptr_not_equal(sa->chan, sb->chan);
	assert_int_equal(t->n_chans, 2);
	assert_ptr_equal(find_str(t, a), sa->chan);
	assert_ptr_equal(find_str(t, b), sb->chan);
	check_table(t);
	bg_chan_unsubscribe(t, sa);
	assert_null(find_str(t, a));
	assert_ptr_equal(find_str(t, b), sb->chan);
	assert_ptr_equal(sb->chan->subs[0], sb);
	bg_chan_unsubscribe(t, sb);
	assert_null(find_str(t, b));
	assert_int_equal(t->n_chans, 0);
	bg_chan_table_free(t);
}

/* Freeing a table with subscriptions, channels and grown arrays left:
 * AddressSanitizer's leak check fails the run if anything leaks. */
static void
test_free_with_subscriptions_left(void **state)
{
	struct bg_chan_table *t = bg_chan_table_new();
	char name[32];

	for (int i = 0; i < 500; i++) {
		snprintf(name, sizeof(name), "left-%d", i % 150);
		sub_str(t, name, NULL);
	}
	for (int i = 0; i < 300; i++)
		sub_str(t, "big", NULL);
	assert_int_equal(t->n_chans, 151);
	assert_int_equal(t->n_subs, 800);
	check_table(t);
	bg_chan_table_free(t);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_new_table_is_empty),
		cmocka_unit_test(test_subscribe_find_unsubscribe),
		cmocka_unit_test(test_channel_disappears_with_last_subscriber),
		cmocka_unit_test(test_same_owner_twice),
		cmocka_unit_test(test_names_are_length_delimited),
		cmocka_unit_test(test_many_channels_grow_buckets),
		cmocka_unit_test(test_swap_remove_keeps_pos),
		cmocka_unit_test(test_random_churn),
		cmocka_unit_test(test_same_bucket),
		cmocka_unit_test(test_full_hash_collision),
		cmocka_unit_test(test_free_with_subscriptions_left),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
