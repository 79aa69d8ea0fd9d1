/*
 * nodes.h - the table of live cluster nodes the control plane keeps
 * (control.h): node id -> when it was last heard and what it last said
 * about itself. Pure and single-threaded: the bus thread owns the one
 * table; unit tests drive it with their own clock.
 */
#ifndef BG_NODES_H
#define BG_NODES_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest node id kept (a node id is 16 hex digits; others are cut). */
#define BG_NODE_ID_MAX 64

struct bg_node {
	char id[BG_NODE_ID_MAX + 1];
	uint64_t seen_ms;     /* caller's clock when last heard */
	json_t *stats;        /* its last heartbeat's "stats" (owned), or
	                         NULL */
};

struct bg_nodes;

/* An empty table; NULL when out of memory. */
struct bg_nodes *bg_nodes_new(void);

/* Frees the table and every node's stats. NULL is fine. */
void bg_nodes_free(struct bg_nodes *t);

/*
 * Node id was heard at now_ms; stats (borrowed, may be NULL) replaces
 * what it said before when not NULL. True when id was not in the table
 * (it is now: "node up"); false when it was, or when out of memory.
 */
bool bg_nodes_heard(struct bg_nodes *t, const char *id, json_t *stats,
		    uint64_t now_ms);

/* Removes id; true when it was there ("node down"). */
bool bg_nodes_remove(struct bg_nodes *t, const char *id);

/* Calls down(id, arg) for each node silent since more than timeout_ms
 * before now_ms (seen_ms + timeout_ms < now_ms), then removes it; except
 * keep (may be NULL: the node itself). Returns how many went. */
size_t bg_nodes_expire(struct bg_nodes *t, uint64_t now_ms,
		       uint64_t timeout_ms, const char *keep,
		       void (*down)(const char *id, void *arg), void *arg);

/* Whether id is in the table. */
bool bg_nodes_live(const struct bg_nodes *t, const char *id);

/* How many nodes, and the i-th (0 <= i < count, in no set order; valid
 * until the table next changes). */
size_t bg_nodes_count(const struct bg_nodes *t);
const struct bg_node *bg_nodes_at(const struct bg_nodes *t, size_t i);

#endif
