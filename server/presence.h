/*
 * presence.h - presence channels (PROTOCOL.md §10) on a node and across
 * the cluster.
 *
 * The node's members live in one table (common/members.h) owned by the
 * BUS THREAD. Workers never read it: a subscribe, an unsubscribe or a
 * close of a presence channel, and the presence / presence_stats events,
 * are posted to the bus as control jobs (bg_control_post); the bus
 * answers a connection through its worker's broadcast ring, in order
 * with the broadcasts (so a subscribe's member list is followed only by
 * the joins and leaves after it), and sends presence_join and
 * presence_leave to the channel's subscribers as ordinary local
 * broadcasts. Nodes replicate their own members to each other through
 * the control plane (amqp/control.h): docs/DESIGN.md, "Presence".
 *
 * Threads: bg_presence_init/free on main; bg_presence_subscribe,
 * bg_presence_conn_left and the event handlers on the worker owning the
 * connection; bg_presence_api on any thread but the bus (it waits for
 * the bus); everything else inside presence.c on the bus thread.
 */
#ifndef BG_SERVER_PRESENCE_H
#define BG_SERVER_PRESENCE_H

#include <stdbool.h>
#include <stddef.h>

#include "common/config.h"
#include "common/proto.h"

struct bg_server;
struct bg_conn;

/* Creates the node's presence state and registers its control handlers
 * (srv->control must exist; before the bus starts). BG_OK or BG_ERR
 * (logged). Main thread. */
int bg_presence_init(struct bg_server *srv);

/* Frees it, after the bus and the workers stopped. Main thread. */
void bg_presence_free(struct bg_server *srv);

/* Bus thread, every turn of its loop (at least once a second):
 * heartbeats, and nodes silent for [presence] timeout dropped. */
void bg_presence_tick(struct bg_server *srv);

/* True when channel is a presence channel ([presence] prefix). Any
 * thread. */
bool bg_presence_is_channel(const struct bg_config *cfg,
			    const char *channel);

/* Registers the presence and presence_stats client events (called by
 * bg_builtin_register). BG_OK or BG_ERR with err set. Main thread. */
int bg_presence_register(char *err, size_t errlen);

/*
 * Worker: c (authenticated, allowed, already subscribed locally) joins
 * the presence channel; the bus answers req (members and count, or
 * channel_full, which also drops the local subscription). Any failure
 * to reach the bus drops the local subscription and answers
 * "unavailable".
 */
void bg_presence_subscribe(struct bg_conn *c, const struct bg_request *req,
			   const char *channel);

/* Worker: c's subscription to channel went away (unsubscribe, close, a
 * server-side unsubscribe); a no-op unless it is a presence channel. */
void bg_presence_conn_left(struct bg_conn *c, const char *channel);

/*
 * Any thread but the bus: the answer of GET /api/presence (stats false)
 * or /api/presence_stats for channel, as a malloc'd JSON body in *body
 * (the caller frees) and an HTTP status: 200, 400 (not a presence
 * channel) or 503 (the bus did not answer within a second).
 */
unsigned int bg_presence_api(struct bg_server *srv, const char *channel,
			     bool stats, char **body, size_t *len);

/* Writes the presence lines of /metrics (members, table bytes, joins,
 * leaves, nodes dropped) into buf, snprintf-style; 0 before
 * bg_presence_init. Any thread. */
int bg_presence_metrics(const struct bg_server *srv, char *buf,
			size_t size);

#endif
