/*
 * cmd.h - the server API's commands (PROTOCOL.md §11, docs/PROTOCOL.md
 * "Server API"), cluster-wide, whatever carried them: the API listener
 * (server/api.c) and the API queue of RabbitMQ run the same code and get
 * the same answers.
 *
 * Threads: bg_cmd_init on main before the bus starts; bg_cmd_run and
 * every callback on the bus thread (the owner of the control plane); the
 * per-connection parts run on each worker as control-plane tasks, in
 * order with its broadcasts.
 */
#ifndef BG_CMD_H
#define BG_CMD_H

#include <jansson.h>

struct bg_control;

/* A command is over: status is an HTTP status (200, 400, 404, 503...);
 * body (stolen) the JSON answer, {"error":{"code","message"}} on an
 * error. Bus thread; or, when the node stopped before the answer could
 * be given, the main thread at teardown with ctl NULL: free what arg
 * holds, send nothing (no thread is left to carry it). status and body
 * are then the answer that could not be given, or a 503 when there was
 * none. */
typedef void (*bg_cmd_done_fn)(struct bg_control *ctl, unsigned int status,
			       json_t *body, void *arg);

/* Registers the commands' control messages ("api.*") and the handler of
 * the API queue. BG_OK or BG_ERR. Main thread, before the bus starts. */
int bg_cmd_init(struct bg_control *ctl);

/*
 * Runs command (a name of the table in cmd.c: "disconnect", "subscribe",
 * "unsubscribe", "channels", "info", "history") with args (borrowed; a JSON object:
 * the POST body, or the query parameters of a GET) and calls done exactly
 * once, maybe before returning. An unknown command is a 404.
 */
void bg_cmd_run(struct bg_control *ctl, const char *command, json_t *args,
		bg_cmd_done_fn done, void *arg);

#endif
