/*
 * members.c - the presence table: channel -> user -> (node, count, info),
 * and this node's connections (channel, client) -> their user. Pure,
 * single-threaded (the bus thread's; see presence.h).
 *
 * Two chained hash tables of string keys (FNV-1a, power-of-two buckets,
 * doubled at load 1): channels, each with its own table of users, and
 * the local clients keyed "CHANNEL CLIENT" (a channel name has no space).
 * A user holds a small array of per-node entries: one in the common case.
 */
#include "common/members.h"

#include <stdlib.h>
#include <string.h>

#include "common/bg.h"

struct hent {
	struct hent *next;
	uint32_t hash;
	const char *key;          /* inline, after the owning struct */
};

struct hmap {
	struct hent **b;
	uint32_t nb, n;
};

struct node_ent {
	uint16_t node;
	uint32_t count;
	uint32_t gen;             /* the node's gen when last set */
	char *info;
};

struct puser {
	struct hent h;
	uint32_t n;               /* entries in v */
	struct node_ent *v;
};

struct pchan {
	struct hent h;
	struct hmap users;
	uint64_t clients;         /* sum of every entry's count */
};

struct pclient {
	struct hent h;            /* "CHANNEL CLIENT" */
	struct pchan *ch;
	struct puser *u;
};

struct bg_members {
	struct hmap chans, clients;
	char *nodes[BG_MEMBERS_MAX_NODES];
	uint32_t gen[BG_MEMBERS_MAX_NODES]; /* bg_members_mark */
	int n_nodes;
	bg_members_change_fn fn;
	void *arg;
	uint64_t entries;
	uint64_t bytes;
};

static const char EMPTY_INFO[] = "{}";

static uint32_t
hash_str(const char *s)
{
	uint32_t h = 2166136261u;

	while (*s)
		h = (h ^ (uint8_t)*s++) * 16777619u;
	return h;
}

static struct hent *
hmap_find(const struct hmap *m, const char *key, uint32_t h)
{
	struct hent *e;

	if (m->nb == 0)
		return NULL;
	for (e = m->b[h & (m->nb - 1)]; e != NULL; e = e->next)
		if (e->hash == h && strcmp(e->key, key) == 0)
			return e;
	return NULL;
}

static int
hmap_add(struct bg_members *p, struct hmap *m, struct hent *e)
{
	if (m->n >= m->nb) {
		uint32_t nb = m->nb ? m->nb * 2 : 4;
		struct hent **b = calloc(nb, sizeof(*b));

		if (b == NULL)
			return BG_ERR;
		for (uint32_t i = 0; i < m->nb; i++) {
			struct hent *x, *next;
			for (x = m->b[i]; x != NULL; x = next) {
				next = x->next;
				x->next = b[x->hash & (nb - 1)];
				b[x->hash & (nb - 1)] = x;
			}
		}
		free(m->b);
		p->bytes += (uint64_t)(nb - m->nb) * sizeof(*b);
		m->b = b;
		m->nb = nb;
	}
	e->next = m->b[e->hash & (m->nb - 1)];
	m->b[e->hash & (m->nb - 1)] = e;
	m->n++;
	return BG_OK;
}

static void
hmap_release(struct bg_members *p, struct hmap *m)
{
	p->bytes -= (uint64_t)m->nb * sizeof(*m->b);
	free(m->b);
	m->b = NULL;
	m->nb = m->n = 0;
}

/* Unlinks e; an emptied table gives its buckets back. */
static void
hmap_del(struct bg_members *p, struct hmap *m, struct hent *e)
{
	struct hent **pp = &m->b[e->hash & (m->nb - 1)];

	while (*pp != e)
		pp = &(*pp)->next;
	*pp = e->next;
	if (--m->n == 0)
		hmap_release(p, m);
}

/* A struct of size bytes whose hent h (at offset 0) gets key inline. */
static void *
ent_new(struct bg_members *p, size_t size, const char *key, uint32_t h)
{
	size_t len = strlen(key);
	char *mem = calloc(1, size + len + 1);
	struct hent *e = (struct hent *)(void *)mem;

	if (mem == NULL)
		return NULL;
	memcpy(mem + size, key, len + 1);
	e->key = mem + size;
	e->hash = h;
	p->bytes += size + len + 1;
	return mem;
}

static void
ent_free(struct bg_members *p, size_t size, struct hent *e)
{
	p->bytes -= size + strlen(e->key) + 1;
	free(e);
}

struct bg_members *
bg_members_new(const char *self, bg_members_change_fn fn, void *arg)
{
	struct bg_members *p = calloc(1, sizeof(*p));

	if (p == NULL)
		return NULL;
	p->fn = fn;
	p->arg = arg;
	p->bytes = sizeof(*p);
	if (bg_members_node(p, self, true) != 0) {
		free(p);
		return NULL;
	}
	return p;
}

static void
user_free(struct bg_members *p, struct puser *u)
{
	for (uint32_t i = 0; i < u->n; i++) {
		if (u->v[i].info != EMPTY_INFO) {
			p->bytes -= strlen(u->v[i].info) + 1;
			free(u->v[i].info);
		}
	}
	p->bytes -= (uint64_t)u->n * sizeof(*u->v);
	p->entries -= u->n;
	free(u->v);
	ent_free(p, sizeof(*u), &u->h);
}

void
bg_members_free(struct bg_members *p)
{
	if (p == NULL)
		return;
	for (uint32_t i = 0; i < p->clients.nb; i++) {
		struct hent *e, *next;
		for (e = p->clients.b[i]; e != NULL; e = next) {
			next = e->next;
			free(e);
		}
	}
	for (uint32_t i = 0; i < p->chans.nb; i++) {
		struct hent *e, *next;
		for (e = p->chans.b[i]; e != NULL; e = next) {
			struct pchan *ch = (struct pchan *)(void *)e;
			next = e->next;
			for (uint32_t j = 0; j < ch->users.nb; j++) {
				struct hent *x, *xn;
				for (x = ch->users.b[j]; x; x = xn) {
					xn = x->next;
					user_free(p, (struct puser *)(void *)x);
				}
			}
			free(ch->users.b);
			free(ch);
		}
	}
	free(p->clients.b);
	free(p->chans.b);
	for (int i = 0; i < p->n_nodes; i++)
		free(p->nodes[i]);
	free(p);
}

int
bg_members_node(struct bg_members *p, const char *id, bool create)
{
	int free_slot = -1;

	for (int i = 0; i < p->n_nodes; i++) {
		if (p->nodes[i] == NULL) {
			if (free_slot < 0)
				free_slot = i;
		} else if (strcmp(p->nodes[i], id) == 0) {
			return i;
		}
	}
	if (!create)
		return -1;
	if (free_slot < 0) {
		if (p->n_nodes == BG_MEMBERS_MAX_NODES)
			return -1;
		free_slot = p->n_nodes;
	}
	if ((p->nodes[free_slot] = strdup(id)) == NULL)
		return -1;
	if (free_slot == p->n_nodes)
		p->n_nodes++;
	return free_slot;
}

void
bg_members_forget_node(struct bg_members *p, int node)
{
	if (node <= 0 || node >= p->n_nodes || p->nodes[node] == NULL)
		return;
	bg_members_drop_node(p, node);
	free(p->nodes[node]);
	p->nodes[node] = NULL;
	p->gen[node] = 0;
}

const char *
bg_members_node_id(const struct bg_members *p, int node)
{
	return node >= 0 && node < p->n_nodes && p->nodes[node] ?
	       p->nodes[node] : "";
}

static struct pchan *
chan_find(const struct bg_members *p, const char *channel)
{
	return (struct pchan *)(void *)hmap_find(&p->chans, channel,
						 hash_str(channel));
}

static struct puser *
user_find(const struct pchan *ch, const char *user)
{
	return (struct puser *)(void *)hmap_find(&ch->users, user,
						 hash_str(user));
}

static struct node_ent *
node_find(const struct puser *u, int node)
{
	for (uint32_t i = 0; i < u->n; i++)
		if (u->v[i].node == node)
			return &u->v[i];
	return NULL;
}

static void
chan_drop_if_empty(struct bg_members *p, struct pchan *ch)
{
	if (ch->users.n > 0)
		return;
	hmap_del(p, &p->chans, &ch->h);
	hmap_release(p, &ch->users);
	ent_free(p, sizeof(*ch), &ch->h);
}

static const char *
info_of(const struct bg_members *p, const struct puser *u)
{
	const struct node_ent *best = NULL;

	for (uint32_t i = 0; i < u->n; i++)
		if (best == NULL || strcmp(p->nodes[u->v[i].node],
					   p->nodes[best->node]) < 0)
			best = &u->v[i];
	return best != NULL ? best->info : EMPTY_INFO;
}

/* Removes u's entry e; reports the leave and frees u (and an empty
 * channel) when it was the last. */
static int
entry_remove(struct bg_members *p, struct pchan *ch, struct puser *u,
	     struct node_ent *e)
{
	ch->clients -= e->count;
	if (u->n == 1) {
		if (p->fn != NULL)
			p->fn(p->arg, ch->h.key, u->h.key, e->info, false);
		hmap_del(p, &ch->users, &u->h);
		user_free(p, u);
		chan_drop_if_empty(p, ch);
		return BG_MEMBERS_LEFT;
	}
	if (e->info != EMPTY_INFO) {
		p->bytes -= strlen(e->info) + 1;
		free(e->info);
	}
	*e = u->v[--u->n];
	p->bytes -= sizeof(*u->v);
	p->entries--;
	return BG_MEMBERS_SAME;
}

/* Replaces e's info with info (not NULL). -1 when out of memory (e
 * unchanged). */
static int
info_replace(struct bg_members *p, struct node_ent *e, const char *info)
{
	char *copy;

	if (strcmp(e->info, info) == 0)
		return 0;
	if (strcmp(info, EMPTY_INFO) == 0)
		copy = (char *)EMPTY_INFO;
	else if ((copy = strdup(info)) == NULL)
		return -1;
	if (e->info != EMPTY_INFO) {
		p->bytes -= strlen(e->info) + 1;
		free(e->info);
	}
	if (copy != EMPTY_INFO)
		p->bytes += strlen(copy) + 1;
	e->info = copy;
	return 0;
}

/* Adds or updates; an entry keeps its first info unless replace (and
 * info is not NULL). */
static int
entry_set(struct bg_members *p, int node, const char *channel,
	  const char *user, const char *info, uint32_t count, bool replace)
{
	struct pchan *ch = chan_find(p, channel);
	struct puser *u = ch ? user_find(ch, user) : NULL;
	struct node_ent *e = u ? node_find(u, node) : NULL, *v;
	bool new_chan = false, new_user = false;
	char *copy;

	if (count == 0)
		return e != NULL ? entry_remove(p, ch, u, e) :
		       BG_MEMBERS_SAME;
	if (e != NULL) {
		if (replace && info != NULL && info_replace(p, e, info) != 0)
			return -1;
		ch->clients = ch->clients - e->count + count;
		e->count = count;
		e->gen = p->gen[node];
		return BG_MEMBERS_SAME;
	}
	if (info == NULL || strcmp(info, EMPTY_INFO) == 0)
		copy = (char *)EMPTY_INFO;
	else if ((copy = strdup(info)) == NULL)
		return -1;
	if (ch == NULL) {
		uint32_t h = hash_str(channel);
		ch = ent_new(p, sizeof(*ch), channel, h);
		if (ch == NULL || hmap_add(p, &p->chans, &ch->h) != BG_OK)
			goto fail;
		new_chan = true;
	}
	if (u == NULL) {
		u = ent_new(p, sizeof(*u), user, hash_str(user));
		if (u == NULL || hmap_add(p, &ch->users, &u->h) != BG_OK)
			goto fail;
		new_user = true;
	}
	v = realloc(u->v, (u->n + 1) * sizeof(*v));
	if (v == NULL)
		goto fail;
	u->v = v;
	u->v[u->n++] = (struct node_ent){ .node = (uint16_t)node,
					  .count = count, .info = copy,
					  .gen = p->gen[node] };
	p->bytes += sizeof(*v) + (copy != EMPTY_INFO ? strlen(copy) + 1 : 0);
	p->entries++;
	ch->clients += count;
	if (new_user) {
		if (p->fn != NULL)
			p->fn(p->arg, channel, user, copy, true);
		return BG_MEMBERS_JOINED;
	}
	return BG_MEMBERS_SAME;
fail:
	if (copy != EMPTY_INFO)
		free(copy);
	if (new_user && u != NULL) {
		if (hmap_find(&ch->users, user, u->h.hash) == &u->h)
			hmap_del(p, &ch->users, &u->h);
		ent_free(p, sizeof(*u), &u->h);
	}
	if (new_chan && ch != NULL) {
		if (hmap_find(&p->chans, channel, ch->h.hash) == &ch->h)
			chan_drop_if_empty(p, ch);
		else
			ent_free(p, sizeof(*ch), &ch->h);
	}
	return -1;
}

int
bg_members_set(struct bg_members *p, int node, const char *channel,
		const char *user, const char *info, uint32_t count)
{
	if (node < 0 || node >= p->n_nodes)
		return -1;
	return entry_set(p, node, channel, user, info, count, true);
}

/* "CHANNEL CLIENT" into buf (at least 2 * 256 bytes). */
static const char *
client_key(char *buf, size_t size, const char *channel, const char *client)
{
	size_t a = strlen(channel), b = strlen(client);

	if (a + b + 2 > size)
		return NULL;
	memcpy(buf, channel, a);
	buf[a] = ' ';
	memcpy(buf + a + 1, client, b + 1);
	return buf;
}

int
bg_members_join(struct bg_members *p, const char *channel,
		 const char *client, const char *user, const char *info,
		 uint32_t max_users)
{
	char buf[BG_CHANNEL_MAX + BG_ID_MAX + 64];
	const char *key = client_key(buf, sizeof(buf), channel, client);
	struct pchan *ch;
	struct puser *u;
	struct node_ent *e;
	struct pclient *pc;
	uint32_t h;
	int rc;

	if (key == NULL)
		return -1;
	h = hash_str(key);
	if (hmap_find(&p->clients, key, h) != NULL)
		return BG_MEMBERS_SAME;
	ch = chan_find(p, channel);
	u = ch ? user_find(ch, user) : NULL;
	if (u == NULL && max_users > 0 && ch != NULL &&
	    ch->users.n >= max_users)
		return BG_MEMBERS_FULL;
	e = u ? node_find(u, 0) : NULL;
	pc = ent_new(p, sizeof(*pc), key, h);
	if (pc == NULL)
		return -1;
	rc = entry_set(p, 0, channel, user, info, e ? e->count + 1 : 1,
		       false);
	if (rc < 0 || hmap_add(p, &p->clients, &pc->h) != BG_OK) {
		if (rc >= 0) /* undo the count, quietly: nobody saw it */
			entry_set(p, 0, channel, user, info,
				  e ? e->count - 1 : 0, false);
		ent_free(p, sizeof(*pc), &pc->h);
		return -1;
	}
	pc->ch = chan_find(p, channel);
	pc->u = user_find(pc->ch, user);
	return rc;
}

int
bg_members_leave(struct bg_members *p, const char *channel,
		  const char *client)
{
	char buf[BG_CHANNEL_MAX + BG_ID_MAX + 64];
	const char *key = client_key(buf, sizeof(buf), channel, client);
	struct pclient *pc;
	struct node_ent *e;
	int rc = BG_MEMBERS_SAME;

	if (key == NULL)
		return BG_MEMBERS_SAME;
	pc = (struct pclient *)(void *)hmap_find(&p->clients, key,
						 hash_str(key));
	if (pc == NULL)
		return BG_MEMBERS_SAME;
	hmap_del(p, &p->clients, &pc->h);
	e = node_find(pc->u, 0);
	if (e != NULL) {
		if (e->count > 1) {
			e->count--;
			pc->ch->clients--;
		} else {
			rc = entry_remove(p, pc->ch, pc->u, e);
		}
	}
	ent_free(p, sizeof(*pc), &pc->h);
	return rc;
}

void
bg_members_mark(struct bg_members *p, int node)
{
	if (node >= 0 && node < p->n_nodes)
		p->gen[node]++;
}

/* (channel, user) pairs of one node, copied: removing them may free the
 * table's own strings. */
struct pair {
	char *channel, *user;
};

struct pairs {
	struct pair *v;
	size_t n, cap;
	bool oom;
	const struct bg_members *p;
	int node;                 /* sweep: keep the current gen */
};

static void drop_pairs(struct bg_members *p, struct pairs *ps, int node,
		       uint64_t *n);

static void
collect(void *arg, const char *channel, const char *user, const char *info,
	uint32_t count)
{
	struct pairs *ps = arg;

	if (ps->n == ps->cap) {
		size_t cap = ps->cap ? ps->cap * 2 : 16;
		struct pair *v = realloc(ps->v, cap * sizeof(*v));
		if (v == NULL) {
			ps->oom = true;
			return;
		}
		ps->v = v;
		ps->cap = cap;
	}
	ps->v[ps->n].channel = strdup(channel);
	ps->v[ps->n].user = strdup(user);
	ps->n++;
}

uint64_t
bg_members_drop_node(struct bg_members *p, int node)
{
	struct pairs ps = { 0 };
	uint64_t n = 0;

	if (node < 0 || node >= p->n_nodes)
		return 0;
	bg_members_each(p, node, collect, &ps);
	drop_pairs(p, &ps, node, &n);
	return n;
}

static void
collect_stale(void *arg, const char *channel, const char *user,
	      const char *info, uint32_t count)
{
	struct pairs *ps = arg;
	const struct pchan *ch = chan_find(ps->p, channel);
	const struct node_ent *e = node_find(user_find(ch, user), ps->node);

	if (e->gen != ps->p->gen[ps->node])
		collect(arg, channel, user, info, count);
}

uint64_t
bg_members_sweep(struct bg_members *p, int node)
{
	struct pairs ps = { .p = p, .node = node };
	uint64_t n = 0;

	if (node <= 0 || node >= p->n_nodes)
		return 0;
	bg_members_each(p, node, collect_stale, &ps);
	drop_pairs(p, &ps, node, &n);
	return n;
}

static void
drop_pairs(struct bg_members *p, struct pairs *ps, int node, uint64_t *n)
{
	for (size_t i = 0; i < ps->n; i++) {
		if (ps->v[i].channel != NULL && ps->v[i].user != NULL &&
		    entry_set(p, node, ps->v[i].channel, ps->v[i].user, NULL,
			      0, false) >= 0)
			(*n)++;
		free(ps->v[i].channel);
		free(ps->v[i].user);
	}
	free(ps->v);
}

void
bg_members_each(const struct bg_members *p, int node,
		 bg_members_entry_fn fn, void *arg)
{
	for (uint32_t i = 0; i < p->chans.nb; i++) {
		for (struct hent *e = p->chans.b[i]; e; e = e->next) {
			const struct pchan *ch = (const void *)e;
			for (uint32_t j = 0; j < ch->users.nb; j++) {
				for (struct hent *x = ch->users.b[j]; x;
				     x = x->next) {
					const struct puser *u = (const void *)x;
					const struct node_ent *ne =
						node_find(u, node);
					if (ne != NULL)
						fn(arg, e->key, x->key,
						   ne->info, ne->count);
				}
			}
		}
	}
}

void
bg_members_stats(const struct bg_members *p, const char *channel,
		  uint64_t *clients, uint64_t *users)
{
	const struct pchan *ch = chan_find(p, channel);

	*clients = ch ? ch->clients : 0;
	*users = ch ? ch->users.n : 0;
}

uint32_t
bg_members_count(const struct bg_members *p, int node, const char *channel,
		 const char *user)
{
	const struct pchan *ch = chan_find(p, channel);
	const struct puser *u = ch ? user_find(ch, user) : NULL;
	const struct node_ent *e = u ? node_find(u, node) : NULL;

	return e ? e->count : 0;
}

const char *
bg_members_info(const struct bg_members *p, int node, const char *channel,
		const char *user)
{
	const struct pchan *ch = chan_find(p, channel);
	const struct puser *u = ch ? user_find(ch, user) : NULL;
	const struct node_ent *e = u ? node_find(u, node) : NULL;

	return e ? e->info : NULL;
}

const char *
bg_members_client_user(const struct bg_members *p, const char *channel,
		       const char *client)
{
	char buf[BG_CHANNEL_MAX + BG_ID_MAX + 64];
	const char *key = client_key(buf, sizeof(buf), channel, client);
	const struct pclient *pc;

	if (key == NULL)
		return NULL;
	pc = (const struct pclient *)(const void *)hmap_find(&p->clients,
							     key,
							     hash_str(key));
	return pc ? pc->u->h.key : NULL;
}

static int
by_key(const void *a, const void *b)
{
	const struct puser *x = *(const struct puser *const *)a;
	const struct puser *y = *(const struct puser *const *)b;

	return strcmp(x->h.key, y->h.key);
}

json_t *
bg_members_members(const struct bg_members *p, const char *channel)
{
	const struct pchan *ch = chan_find(p, channel);
	json_t *arr = json_array();
	const struct puser **v;
	uint32_t n = 0;

	if (arr == NULL || ch == NULL || ch->users.n == 0)
		return arr;
	v = malloc(ch->users.n * sizeof(*v));
	if (v == NULL) {
		json_decref(arr);
		return NULL;
	}
	for (uint32_t j = 0; j < ch->users.nb; j++)
		for (struct hent *x = ch->users.b[j]; x; x = x->next)
			v[n++] = (const struct puser *)(const void *)x;
	qsort(v, n, sizeof(*v), by_key);
	for (uint32_t i = 0; i < n; i++) {
		json_t *info = json_loads(info_of(p, v[i]), 0, NULL);
		json_t *m = json_pack("{s:s, s:o}", "user", v[i]->h.key,
				      "info", info ? info : json_object());
		if (m == NULL || json_array_append_new(arr, m) != 0) {
			free(v);
			json_decref(arr);
			return NULL;
		}
	}
	free(v);
	return arr;
}

uint64_t
bg_members_entries(const struct bg_members *p)
{
	return p->entries;
}

uint64_t
bg_members_bytes(const struct bg_members *p)
{
	return p->bytes;
}
