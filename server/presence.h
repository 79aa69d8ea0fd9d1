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
 * connection; bg_presence_metrics on any thread; everything else on the
 * bus thread.
 */
#ifndef BG_SERVER_PRESENCE_H
#define BG_SERVER_PRESENCE_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "common/config.h"
#include "common/proto.h"
#include "server/cmd.h"

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
 * channel_full, which also drops the local subscription; req NULL: a
 * server-side subscribe, whose success is silent). Any failure to reach
 * the bus drops the local subscription and answers "unavailable".
 */
void bg_presence_subscribe(struct bg_conn *c, const struct bg_request *req,
			   const char *channel);

/* Worker: c's subscription to channel went away (unsubscribe, close, a
 * server-side unsubscribe); a no-op unless it is a presence channel. */
void bg_presence_conn_left(struct bg_conn *c, const char *channel);

/*
 * Bus thread: the server API's "presence" (stats false) and
 * "presence_stats" commands (server/cmd.c) with args {"channel": C},
 * answered at once from this node's table through done: 200 with
 * {"members":[..]} or {"clients":N,"users":M}; 400 invalid_channel or
 * bad_message (not a presence channel); 503 while RabbitMQ is down.
 */
void bg_presence_cmd(struct bg_control *ctl, json_t *args, bool stats,
		     bg_cmd_done_fn done, void *arg);

/* Writes the presence lines of /metrics (entries, table bytes, joins,
 * leaves, nodes dropped) into buf, snprintf-style; 0 before
 * bg_presence_init. Any thread. */
int bg_presence_metrics(const struct bg_server *srv, char *buf,
			size_t size);

#endif
