/*
 * history.c - the bus thread's history store (history.h).
 *
 * Per channel: a ring of at most [history] size kept publications
 * (references to the broadcasts themselves: no copy), each dropped after
 * [history] ttl, and `floor`: every publication of the channel after it
 * is in the ring. A position N is recoverable when floor <= N <= top.
 * A channel the node knows nothing of has floor = `forgotten`: the start
 * of the node's knowledge (standalone 0; RabbitMQ: where it began to read
 * the stream), raised whenever a channel's record is dropped as a whole
 * (its floor then stands for every channel that has no record). That is
 * conservative: a position may be refused that could have been served,
 * never served with a hole.
 */
#include "amqp/history.h"

#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/proto.h"

struct hchan {
	struct hchan *next;          /* hash chain */
	uint32_t hash;
	struct bg_hist_pub *ring;
	uint64_t *at_ms;             /* when each was kept */
	uint32_t head, count, cap;
	uint64_t floor;
	char name[];
};

struct bg_history {
	bool on;                     /* immutable */
	regex_t re;                  /* immutable once built */
	uint32_t size;               /* immutable */
	uint64_t ttl_ms;             /* immutable */
	char epoch[BG_HIST_EPOCH_MAX + 1];
	uint64_t seq;                /* standalone numbering */
	uint64_t top;                /* latest position seen */
	uint64_t forgotten;          /* floor of channels without record */
	struct hchan **buckets;
	uint32_t n_buckets, n_chans;
	uint64_t kept;               /* bus writes, any reads */
	uint64_t kept_bytes;         /* bus writes, any reads */
};

static uint64_t
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint32_t
hash_name(const char *s)
{
	uint32_t h = 2166136261u;

	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 16777619u;
	return h;
}

/* --------------------------------------------------------------- store */

struct bg_history *
bg_history_new(const struct bg_config *cfg)
{
	struct bg_history *h = calloc(1, sizeof(*h));
	unsigned int seed;
	int rc;

	if (h == NULL)
		return NULL;
	h->size = (uint32_t)cfg->history_size;
	h->ttl_ms = (uint64_t)cfg->history_ttl * 1000;
	/* Standalone: a new epoch at every start (the bus replaces it with
	 * the stream's when RabbitMQ gives the positions). */
	seed = (unsigned int)time(NULL) ^ (unsigned int)getpid() ^
	       (unsigned int)mono_ms();
	snprintf(h->epoch, sizeof(h->epoch), "%08x%08x",
		 (unsigned int)time(NULL), (unsigned int)rand_r(&seed));
	if (cfg->history_channels[0] == '\0')
		return h;
	rc = regcomp(&h->re, cfg->history_channels, REG_EXTENDED | REG_NOSUB);
	if (rc != 0) {
		bg_log_error("[history] channels: not a valid regex");
		free(h);
		return NULL;
	}
	h->n_buckets = 64;
	h->buckets = calloc(h->n_buckets, sizeof(*h->buckets));
	if (h->buckets == NULL) {
		regfree(&h->re);
		free(h);
		return NULL;
	}
	h->on = true;
	return h;
}

static void
chan_drop_pubs(struct bg_history *h, struct hchan *c)
{
	while (c->count > 0) {
		struct bg_hist_pub *p = &c->ring[c->head];
		bg_stat_add(&h->kept, (uint64_t)-1);
		bg_stat_add(&h->kept_bytes, (uint64_t)0 - bg_msg_size(p->m));
		bg_msg_unref(p->m);
		c->head = (c->head + 1) % c->cap;
		c->count--;
	}
}

static void
clear(struct bg_history *h)
{
	for (uint32_t i = 0; i < h->n_buckets; i++) {
		struct hchan *c, *next;
		for (c = h->buckets[i]; c != NULL; c = next) {
			next = c->next;
			chan_drop_pubs(h, c);
			free(c->ring);
			free(c->at_ms);
			free(c);
		}
		h->buckets[i] = NULL;
	}
	h->n_chans = 0;
}

void
bg_history_free(struct bg_history *h)
{
	if (h == NULL)
		return;
	if (h->on) {
		clear(h);
		free(h->buckets);
		regfree(&h->re);
	}
	free(h);
}

bool
bg_history_on(const struct bg_history *h)
{
	return h != NULL && h->on;
}

bool
bg_history_match(const struct bg_history *h, const char *name)
{
	return h != NULL && h->on && regexec(&h->re, name, 0, NULL, 0) == 0;
}

static struct hchan *
find(const struct bg_history *h, const char *name, uint32_t hash)
{
	struct hchan *c = h->buckets[hash & (h->n_buckets - 1)];

	for (; c != NULL; c = c->next)
		if (c->hash == hash && strcmp(c->name, name) == 0)
			return c;
	return NULL;
}

static void
grow_table(struct bg_history *h)
{
	uint32_t n = h->n_buckets * 2;
	struct hchan **b = calloc(n, sizeof(*b));

	if (b == NULL)
		return; /* longer chains, still correct */
	for (uint32_t i = 0; i < h->n_buckets; i++) {
		struct hchan *c, *next;
		for (c = h->buckets[i]; c != NULL; c = next) {
			next = c->next;
			c->next = b[c->hash & (n - 1)];
			b[c->hash & (n - 1)] = c;
		}
	}
	free(h->buckets);
	h->buckets = b;
	h->n_buckets = n;
}

static struct hchan *
get(struct bg_history *h, const char *name)
{
	uint32_t hash = hash_name(name);
	struct hchan *c = find(h, name, hash);
	size_t len = strlen(name);

	if (c != NULL)
		return c;
	c = calloc(1, sizeof(*c) + len + 1);
	if (c == NULL)
		return NULL;
	memcpy(c->name, name, len + 1);
	c->hash = hash;
	c->floor = h->forgotten;
	c->next = h->buckets[hash & (h->n_buckets - 1)];
	h->buckets[hash & (h->n_buckets - 1)] = c;
	if (++h->n_chans > h->n_buckets)
		grow_table(h);
	return c;
}

/* Drops the oldest kept publication of c: the floor moves to it. */
static void
drop_oldest(struct bg_history *h, struct hchan *c)
{
	struct bg_hist_pub *p = &c->ring[c->head];

	c->floor = p->offset;
	bg_stat_add(&h->kept, (uint64_t)-1);
	bg_stat_add(&h->kept_bytes, (uint64_t)0 - bg_msg_size(p->m));
	bg_msg_unref(p->m);
	p->m = NULL;
	c->head = (c->head + 1) % c->cap;
	c->count--;
}

/* Keeps (m, frame) at offset for c; false on allocation failure (the
 * channel then forgets everything up to offset: never a silent hole). */
static bool
keep(struct bg_history *h, struct hchan *c, struct bg_msg *m,
     uint32_t frame, uint64_t offset, uint64_t now)
{
	uint32_t idx;

	if (c->count == c->cap && c->cap < h->size) {
		uint32_t cap = c->cap ? c->cap * 2 : 4;
		struct bg_hist_pub *ring;
		uint64_t *at;

		if (cap > h->size)
			cap = h->size;
		ring = malloc(cap * sizeof(*ring));
		at = malloc(cap * sizeof(*at));
		if (ring == NULL || at == NULL) {
			free(ring);
			free(at);
			chan_drop_pubs(h, c);
			c->floor = offset;
			return false;
		}
		/* Unroll the ring into the new arrays. */
		for (uint32_t i = 0; i < c->count; i++) {
			ring[i] = c->ring[(c->head + i) % c->cap];
			at[i] = c->at_ms[(c->head + i) % c->cap];
		}
		free(c->ring);
		free(c->at_ms);
		c->ring = ring;
		c->at_ms = at;
		c->head = 0;
		c->cap = cap;
	}
	if (c->count == c->cap)
		drop_oldest(h, c);
	idx = (c->head + c->count) % c->cap;
	bg_msg_ref(m);
	c->ring[idx] = (struct bg_hist_pub){ .m = m, .frame = frame,
					     .offset = offset };
	c->at_ms[idx] = now;
	c->count++;
	bg_stat_add(&h->kept, 1);
	bg_stat_add(&h->kept_bytes, bg_msg_size(m));
	return true;
}

uint64_t
bg_history_record(struct bg_history *h, struct bg_msg *m, uint64_t offset)
{
	bool which[BG_MSG_MAX_TARGETS];
	bool any = false;
	uint64_t now;

	if (offset > h->top)
		h->top = offset;
	if (!h->on || m->target != BG_MSG_CHANNELS)
		return 0;
	for (uint32_t i = 0; i < m->n_names; i++) {
		which[i] = bg_history_match(h, m->names[i]);
		any = any || which[i];
	}
	if (!any)
		return 0;
	if (offset == 0) {
		offset = ++h->seq;
		h->top = offset;
	}
	if (bg_proto_set_offset(m, which, offset) != BG_OK)
		bg_log_warn("history: out of memory framing an offset");
	now = mono_ms();
	for (uint32_t i = 0; i < m->n_names; i++) {
		struct hchan *c;

		if (!which[i])
			continue;
		c = get(h, m->names[i]);
		if (c == NULL) {
			/* Unknown channels now start here. */
			h->forgotten = offset;
			continue;
		}
		keep(h, c, m, i, offset, now);
	}
	return offset;
}

void
bg_history_advance(struct bg_history *h, uint64_t offset)
{
	if (offset > h->top)
		h->top = offset;
}

void
bg_history_expire(struct bg_history *h, uint64_t now_ms)
{
	if (!h->on)
		return;
	for (uint32_t i = 0; i < h->n_buckets; i++) {
		struct hchan **pc = &h->buckets[i], *c;

		while ((c = *pc) != NULL) {
			while (c->count > 0 &&
			       now_ms - c->at_ms[c->head] >= h->ttl_ms)
				drop_oldest(h, c);
			if (c->count > 0) {
				pc = &c->next;
				continue;
			}
			/* Nothing kept: its floor now stands for every
			 * channel without a record. */
			if (c->floor > h->forgotten)
				h->forgotten = c->floor;
			*pc = c->next;
			free(c->ring);
			free(c->at_ms);
			free(c);
			h->n_chans--;
		}
	}
}

void
bg_history_reset(struct bg_history *h, const char *epoch, uint64_t floor)
{
	if (h->on)
		clear(h);
	snprintf(h->epoch, sizeof(h->epoch), "%s", epoch);
	h->forgotten = floor;
	h->top = floor;
	h->seq = floor;
}

void
bg_history_set_epoch(struct bg_history *h, const char *epoch)
{
	snprintf(h->epoch, sizeof(h->epoch), "%s", epoch);
}

const char *
bg_history_epoch(const struct bg_history *h)
{
	return h->epoch;
}

uint64_t
bg_history_top(const struct bg_history *h)
{
	return h->top;
}

/* Copies the kept publications of c with offset > after, at most limit
 * of them: the first ones (oldest_first) or the last ones. */
static void
collect(struct bg_hist_req *r, const struct hchan *c, uint64_t after,
	uint32_t limit, bool first_ones)
{
	uint32_t start = 0, n;

	if (c == NULL || limit == 0)
		return;
	while (start < c->count &&
	       c->ring[(c->head + start) % c->cap].offset <= after)
		start++;
	n = c->count - start;
	if (n > limit) {
		if (!first_ones)
			start += n - limit;
		n = limit;
	}
	if (n == 0)
		return;
	r->pubs = malloc(n * sizeof(*r->pubs));
	if (r->pubs == NULL) {
		r->unavailable = true;
		return;
	}
	for (uint32_t i = 0; i < n; i++) {
		r->pubs[i] = c->ring[(c->head + start + i) % c->cap];
		bg_msg_ref(r->pubs[i].m);
	}
	r->n_pubs = n;
}

bool
bg_history_answer(struct bg_history *h, struct bg_hist_req *r, bool force)
{
	const struct hchan *c;
	bool same_epoch, ok;
	uint64_t floor;

	r->enabled = bg_history_match(h, r->channel);
	snprintf(r->cur_epoch, sizeof(r->cur_epoch), "%s", h->epoch);
	r->top = h->top;
	r->recovered = false;
	if (!r->enabled)
		return true;
	c = find(h, r->channel, hash_name(r->channel));
	floor = c != NULL ? c->floor : h->forgotten;
	same_epoch = r->has_pos && strcmp(r->epoch, h->epoch) == 0;
	/* A later position of this epoch than seen here: the node is
	 * behind the stream; wait for it (bounded by the caller). */
	if (same_epoch && r->offset > h->top && !force)
		return false;
	ok = same_epoch && r->offset >= floor && r->offset <= h->top;
	switch (r->kind) {
	case BG_HIST_SUBSCRIBE:
		if (r->has_pos && ok) {
			collect(r, c, r->offset, UINT32_MAX, true);
			r->recovered = !r->unavailable;
		}
		break;
	case BG_HIST_HISTORY:
	case BG_HIST_API:
		if (r->limit > h->size)
			r->limit = h->size;
		if (r->has_pos && ok) {
			collect(r, c, r->offset, r->limit, true);
			r->recovered = !r->unavailable;
		} else {
			/* The latest, with a gap when a position was named
			 * and cannot be followed. */
			collect(r, c, 0, r->limit, false);
			r->recovered = !r->has_pos;
		}
		break;
	}
	return true;
}

int
bg_history_metrics(const struct bg_history *h, char *buf, size_t size)
{
	return snprintf(buf, size,
		"# HELP bagou_history_publications Publications kept in "
		"memory for history channels.\n"
		"# TYPE bagou_history_publications gauge\n"
		"bagou_history_publications %llu\n"
		"# HELP bagou_history_bytes Bytes of the broadcasts kept "
		"for history (a broadcast on several channels counts once "
		"per channel).\n"
		"# TYPE bagou_history_bytes gauge\n"
		"bagou_history_bytes %llu\n",
		(unsigned long long)bg_stat_get(&h->kept),
		(unsigned long long)bg_stat_get(&h->kept_bytes));
}

int
bg_history_frame_for(const struct bg_history *h, struct bg_msg *m,
		     uint64_t offset, const char *channel)
{
	bool which[BG_MSG_MAX_TARGETS];
	int found = -1;

	if (!h->on || m->target != BG_MSG_CHANNELS)
		return -1;
	for (uint32_t i = 0; i < m->n_names; i++) {
		which[i] = bg_history_match(h, m->names[i]);
		if (which[i] && found < 0 && strcmp(m->names[i], channel) == 0)
			found = (int)i;
	}
	if (found < 0 || bg_proto_set_offset(m, which, offset) != BG_OK)
		return -1;
	return found;
}

bool
bg_history_behind_memory(const struct bg_history *h,
			 const struct bg_hist_req *r, uint64_t *floor)
{
	const struct hchan *c;

	if (!h->on || !r->has_pos || strcmp(r->epoch, h->epoch) != 0 ||
	    !bg_history_match(h, r->channel) || r->offset > h->top)
		return false;
	c = find(h, r->channel, hash_name(r->channel));
	*floor = c != NULL ? c->floor : h->forgotten;
	return r->offset < *floor;
}

void
bg_history_prepend(struct bg_hist_req *r, struct bg_hist_pub *older,
		   uint32_t n)
{
	uint32_t limit = r->kind == BG_HIST_SUBSCRIBE ? UINT32_MAX : r->limit;
	uint32_t total = n + r->n_pubs, keep;
	struct bg_hist_pub *all;

	keep = total > limit ? limit : total;
	all = keep ? malloc(keep * sizeof(*all)) : NULL;
	if (keep && all == NULL) {
		r->unavailable = true;
		r->recovered = false;
		for (uint32_t i = 0; i < n; i++)
			bg_msg_unref(older[i].m);
		return;
	}
	/* The first `keep` of older + r->pubs, oldest first. */
	for (uint32_t i = 0; i < total; i++) {
		struct bg_hist_pub *p = i < n ? &older[i] : &r->pubs[i - n];
		if (i < keep)
			all[i] = *p;
		else
			bg_msg_unref(p->m);
	}
	free(r->pubs);
	r->pubs = all;
	r->n_pubs = keep;
}
