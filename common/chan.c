/*
 * chan.c - per-worker channel table: chained hash (FNV-1a) of channels,
 * each with a dense array of subscriptions for fast fan-out. One thread.
 */
#include "common/chan.h"

#include <stdlib.h>
#include <string.h>

#define INITIAL_BUCKETS 64

uint32_t
bg_chan_hash(const char *s, size_t len)
{
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < len; i++) {
		h ^= (uint8_t)s[i];
		h *= 16777619u;
	}
	return h;
}

struct bg_chan_table *
bg_chan_table_new(void)
{
	struct bg_chan_table *t = calloc(1, sizeof(*t));

	if (t == NULL)
		return NULL;
	t->buckets = calloc(INITIAL_BUCKETS, sizeof(*t->buckets));
	if (t->buckets == NULL) {
		free(t);
		return NULL;
	}
	t->n_buckets = INITIAL_BUCKETS;
	return t;
}

static void
chan_free(struct bg_chan *c)
{
	for (uint32_t i = 0; i < c->n_subs; i++)
		free(c->subs[i]);
	if (c->subs != &c->one)
		free(c->subs);
	free(c);
}

void
bg_chan_table_free(struct bg_chan_table *t)
{
	if (t == NULL)
		return;
	for (uint32_t b = 0; b < t->n_buckets; b++) {
		struct bg_chan *c = t->buckets[b], *next;
		for (; c != NULL; c = next) {
			next = c->next;
			chan_free(c);
		}
	}
	free(t->buckets);
	free(t);
}

static struct bg_chan *
find_hashed(const struct bg_chan_table *t, const char *name, size_t len,
	    uint32_t h)
{
	struct bg_chan *c = t->buckets[h & (t->n_buckets - 1)];

	for (; c != NULL; c = c->next)
		if (c->hash == h && c->name_len == len &&
		    memcmp(c->name, name, len) == 0)
			return c;
	return NULL;
}

struct bg_chan *
bg_chan_find(const struct bg_chan_table *t, const char *name, size_t len)
{
	return find_hashed(t, name, len, bg_chan_hash(name, len));
}

/* Doubles the bucket array when channels outnumber buckets. Best effort:
 * on allocation failure the table stays correct, only slower. */
static void
grow(struct bg_chan_table *t)
{
	uint32_t n = t->n_buckets * 2;
	struct bg_chan **b = calloc(n, sizeof(*b));

	if (b == NULL)
		return;
	for (uint32_t i = 0; i < t->n_buckets; i++) {
		struct bg_chan *c = t->buckets[i], *next;
		for (; c != NULL; c = next) {
			next = c->next;
			c->next = b[c->hash & (n - 1)];
			b[c->hash & (n - 1)] = c;
		}
	}
	free(t->buckets);
	t->buckets = b;
	t->n_buckets = n;
}

struct bg_chan_sub *
bg_chan_subscribe(struct bg_chan_table *t, const char *name, size_t len,
		  void *owner)
{
	uint32_t h = bg_chan_hash(name, len);
	struct bg_chan *c = find_hashed(t, name, len, h);
	struct bg_chan_sub *s;

	if (c == NULL) {
		c = calloc(1, sizeof(*c) + len + 1);
		if (c == NULL)
			return NULL;
		memcpy(c->name, name, len);
		c->name_len = (uint32_t)len;
		c->subs = &c->one;
		c->cap_subs = 1;
		c->hash = h;
		c->next = t->buckets[h & (t->n_buckets - 1)];
		t->buckets[h & (t->n_buckets - 1)] = c;
		t->n_chans++;
		if (t->n_chans > t->n_buckets)
			grow(t);
	}
	if (c->n_subs == c->cap_subs) {
		uint32_t cap = c->cap_subs * 2;
		struct bg_chan_sub **subs;

		if (c->subs == &c->one) {
			subs = malloc(cap * sizeof(*subs));
			if (subs != NULL)
				subs[0] = c->one;
		} else {
			subs = realloc(c->subs, cap * sizeof(*subs));
		}
		if (subs == NULL)
			goto fail;
		c->subs = subs;
		c->cap_subs = cap;
	}
	s = malloc(sizeof(*s));
	if (s == NULL)
		goto fail;
	s->chan = c;
	s->owner = owner;
	s->pos = c->n_subs;
	s->hold = 0;
	c->subs[c->n_subs++] = s;
	t->n_subs++;
	return s;
fail:
	if (c->n_subs == 0) {
		/* Undo the channel we just created. */
		struct bg_chan **pp = &t->buckets[h & (t->n_buckets - 1)];
		while (*pp != c)
			pp = &(*pp)->next;
		*pp = c->next;
		t->n_chans--;
		chan_free(c);
	}
	return NULL;
}

void
bg_chan_unsubscribe(struct bg_chan_table *t, struct bg_chan_sub *s)
{
	struct bg_chan *c = s->chan;
	struct bg_chan_sub *last = c->subs[c->n_subs - 1];

	c->subs[s->pos] = last;
	last->pos = s->pos;
	c->n_subs--;
	t->n_subs--;
	free(s);
	if (c->n_subs == 0) {
		struct bg_chan **pp = &t->buckets[c->hash & (t->n_buckets - 1)];
		while (*pp != c)
			pp = &(*pp)->next;
		*pp = c->next;
		t->n_chans--;
		chan_free(c);
	} else if (c->cap_subs > 4 && c->n_subs < c->cap_subs / 4) {
		/* Give memory back after a crowd leaves. */
		struct bg_chan_sub **subs = realloc(c->subs, c->cap_subs / 2 *
						    sizeof(*subs));
		if (subs != NULL) {
			c->subs = subs;
			c->cap_subs /= 2;
		}
	}
}
