/*
 * cmd_history.h - the server API's history command (PROTOCOL.md §9 and
 * §11; docs/PROTOCOL.md "Server API"): GET /api/history and {"command":
 * "history"} on the API queue, one code for both (server/cmd.c's table).
 */
#ifndef BG_CMD_HISTORY_H
#define BG_CMD_HISTORY_H

#include <jansson.h>

#include "server/cmd.h"

struct bg_control;

/*
 * Checks args (borrowed; a JSON object: "channel", and optional "limit",
 * "since_epoch" with "since_offset", as JSON values or as the strings of
 * a query string) and asks this node's history store through the bus,
 * behind what was published before. done is called exactly once, maybe
 * before returning: 200 with the history event's callback data, 400,
 * 404 (the channel keeps no history) or 503. Never waits. Bus thread.
 *
 * Cluster-wide without a query: every node sees every broadcast (with
 * RabbitMQ, from the stream, whose positions are the same on every
 * node), so the node asked answers for the cluster.
 */
void bg_cmd_history(struct bg_control *ctl, json_t *args,
		    bg_cmd_done_fn done, void *arg);

#endif
