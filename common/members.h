/*
 * members.h - the presence table (PROTOCOL.md §10): for each presence
 * channel, the users in it, and for each user how many of its
 * connections each node holds, with the info of its authentication.
 *
 * Pure and single-threaded: the bus thread owns the node's one table
 * (server/presence.c); unit tests drive it directly. Node 0 is this node;
 * other nodes are interned by id (bg_members_node). A user is a member
 * of a channel while any node counts a connection of it there.
 *
 * Every change of membership (a user's first connection anywhere, its
 * last one gone) is reported through the table's change callback, from
 * inside the call that caused it, so the caller turns it into
 * presence_join / presence_leave events in the order it happened.
 */
#ifndef BG_MEMBERS_H
#define BG_MEMBERS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

struct bg_members;

/* Results of a change. */
#define BG_MEMBERS_SAME    0  /* membership unchanged */
#define BG_MEMBERS_JOINED  1  /* the user is now a member */
#define BG_MEMBERS_LEFT    2  /* the user is no longer a member */
#define BG_MEMBERS_FULL    3  /* refused: the channel has max users */

/* Most nodes one table knows at once (this one included). */
#define BG_MEMBERS_MAX_NODES 1024

/* Called for every membership change: joined true for a join. info is
 * the member's info (JSON object text), never NULL. The strings live at
 * least until the callback returns. */
typedef void (*bg_members_change_fn)(void *arg, const char *channel,
				      const char *user, const char *info,
				      bool joined);

/* An empty table for the node called self (interned as node 0, so that
 * its entries sort among other nodes' as they do there), whose changes
 * go to fn(arg, ...); fn may be NULL. NULL on allocation failure. */
struct bg_members *bg_members_new(const char *self,
				    bg_members_change_fn fn, void *arg);

/* Frees the table; no callback runs. NULL is ignored. */
void bg_members_free(struct bg_members *p);

/* The index of node id (interned when create; 0 is this node), or -1
 * when unknown or the table is full. */
int bg_members_node(struct bg_members *p, const char *id, bool create);

/* Forgets node (not this node): its entries are removed as by
 * bg_members_drop_node, and its index may be given to another id.
 * Nodes get a new id at every start, so a long-lived table must reuse
 * the slots of the nodes that went. */
void bg_members_forget_node(struct bg_members *p, int node);

/* The id a node index was interned with. */
const char *bg_members_node_id(const struct bg_members *p, int node);

/*
 * A connection of this node (node 0), client, joins channel as user,
 * whose info is JSON object text (NULL: {}). max_users: the most users
 * the channel may hold (0: no limit); a user already in it is never
 * refused. A client already in the channel changes nothing (SAME).
 * Returns BG_MEMBERS_SAME, _JOINED or _FULL, or -1 on allocation
 * failure (nothing changed).
 */
int bg_members_join(struct bg_members *p, const char *channel,
		     const char *client, const char *user, const char *info,
		     uint32_t max_users);

/* That connection left channel. BG_MEMBERS_SAME or _LEFT; also SAME
 * when it was not in it. */
int bg_members_leave(struct bg_members *p, const char *channel,
		      const char *client);

/*
 * Another node's state: user has count connections in channel on node
 * (an absolute value: 0 removes the entry), info as for join; a given
 * info replaces the entry's (that node says what it is). Returns SAME,
 * JOINED or LEFT, or -1 on allocation failure.
 */
int bg_members_set(struct bg_members *p, int node, const char *channel,
		    const char *user, const char *info, uint32_t count);

/* Removes every entry of node (it stopped or died), reporting the users
 * that leave; the node's index stays interned. Returns the entries
 * removed. */
uint64_t bg_members_drop_node(struct bg_members *p, int node);

/* A full state of node begins: entries set for it from now on are
 * current; bg_members_sweep then removes the others (reporting the
 * users that leave) and returns how many it removed. */
void bg_members_mark(struct bg_members *p, int node);
uint64_t bg_members_sweep(struct bg_members *p, int node);

/* Visits every entry of node: channel, user, info, count (> 0). */
typedef void (*bg_members_entry_fn)(void *arg, const char *channel,
				     const char *user, const char *info,
				     uint32_t count);
void bg_members_each(const struct bg_members *p, int node,
		      bg_members_entry_fn fn, void *arg);

/* How many connections node counts for user in channel (0: none). */
uint32_t bg_members_count(const struct bg_members *p, int node,
			  const char *channel, const char *user);

/* The info node holds for user in channel (JSON text), or NULL when it
 * has no entry. Valid until the table next changes. */
const char *bg_members_info(const struct bg_members *p, int node,
			    const char *channel, const char *user);

/* The user this node's connection client joined channel as, or NULL
 * when it is not in it. Valid until the table next changes. */
const char *bg_members_client_user(const struct bg_members *p,
				   const char *channel, const char *client);

/* users: members of channel; clients: their connections on every node.
 * Both 0 for a channel nobody is in. */
void bg_members_stats(const struct bg_members *p, const char *channel,
		       uint64_t *clients, uint64_t *users);

/* The members of channel, sorted by user id, as a new JSON array
 * [{"user":ID,"info":{..}}, ...]; a user's info is the one its
 * connections on the node with the smallest id gave, so every node that
 * holds the same entries gives the same answer. NULL on allocation
 * failure. */
json_t *bg_members_members(const struct bg_members *p,
			    const char *channel);

/* Entries (channel, user, node) held, and the bytes the table holds
 * (estimated: every allocation it made), for /metrics and tests. */
uint64_t bg_members_entries(const struct bg_members *p);
uint64_t bg_members_bytes(const struct bg_members *p);

#endif
