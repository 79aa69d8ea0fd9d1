/*
 * nodes.c - the live-node table (nodes.h): a small array, searched
 * linearly; a cluster has a handful of nodes, not thousands.
 */
#include "amqp/nodes.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct bg_nodes {
	struct bg_node *v;
	size_t n, cap;
};

struct bg_nodes *
bg_nodes_new(void)
{
	return calloc(1, sizeof(struct bg_nodes));
}

void
bg_nodes_free(struct bg_nodes *t)
{
	if (t == NULL)
		return;
	for (size_t i = 0; i < t->n; i++)
		json_decref(t->v[i].stats);
	free(t->v);
	free(t);
}

static struct bg_node *
find(const struct bg_nodes *t, const char *id)
{
	for (size_t i = 0; i < t->n; i++)
		if (strncmp(t->v[i].id, id, BG_NODE_ID_MAX) == 0)
			return &t->v[i];
	return NULL;
}

bool
bg_nodes_heard(struct bg_nodes *t, const char *id, json_t *stats,
	       uint64_t now_ms)
{
	struct bg_node *n = find(t, id);
	bool added = false;

	if (n == NULL) {
		if (t->n == t->cap) {
			size_t cap = t->cap ? t->cap * 2 : 8;
			struct bg_node *v = realloc(t->v, cap * sizeof(*v));
			if (v == NULL)
				return false;
			t->v = v;
			t->cap = cap;
		}
		n = &t->v[t->n++];
		memset(n, 0, sizeof(*n));
		snprintf(n->id, sizeof(n->id), "%s", id);
		added = true;
	}
	n->seen_ms = now_ms;
	if (stats != NULL) {
		json_decref(n->stats);
		n->stats = json_incref(stats);
	}
	return added;
}

static void
drop_at(struct bg_nodes *t, size_t i)
{
	json_decref(t->v[i].stats);
	t->v[i] = t->v[--t->n];
}

bool
bg_nodes_remove(struct bg_nodes *t, const char *id)
{
	struct bg_node *n = find(t, id);

	if (n == NULL)
		return false;
	drop_at(t, (size_t)(n - t->v));
	return true;
}

size_t
bg_nodes_expire(struct bg_nodes *t, uint64_t now_ms, uint64_t timeout_ms,
		const char *keep, void (*down)(const char *id, void *arg),
		void *arg)
{
	size_t gone = 0, i = 0;
	char id[BG_NODE_ID_MAX + 1];

	while (i < t->n) {
		struct bg_node *n = &t->v[i];
		if (n->seen_ms + timeout_ms >= now_ms ||
		    (keep != NULL && strcmp(n->id, keep) == 0)) {
			i++;
			continue;
		}
		/* Removed first: down may look at the table. */
		memcpy(id, n->id, sizeof(id));
		drop_at(t, i);
		gone++;
		if (down != NULL)
			down(id, arg);
	}
	return gone;
}

bool
bg_nodes_live(const struct bg_nodes *t, const char *id)
{
	return find(t, id) != NULL;
}

size_t
bg_nodes_count(const struct bg_nodes *t)
{
	return t->n;
}

const struct bg_node *
bg_nodes_at(const struct bg_nodes *t, size_t i)
{
	return i < t->n ? &t->v[i] : NULL;
}
