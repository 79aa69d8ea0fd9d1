/*
 * handlers.h - the event table: built-in events and compiled-in handlers.
 *
 * A handler runs on the worker that owns the connection, with the parsed
 * request; it answers through bg_conn_reply_ok / bg_conn_reply_error
 * (which honour the callbackId), and may broadcast through the bus.
 * Worker threads only; the table itself is immutable.
 */
#ifndef BG_HANDLERS_H
#define BG_HANDLERS_H

#include "common/proto.h"

struct bg_conn;

typedef void (*bg_handler_fn)(struct bg_conn *c,
			      const struct bg_request *req);

struct bg_handler {
	const char *event;
	bg_handler_fn fn;
};

/*
 * Dispatches a request: the handler registered for its event, else (no
 * handler) the automatic {"success":true} callback when it has a
 * callbackId, else nothing.
 */
void bg_handlers_dispatch(struct bg_conn *c, const struct bg_request *req);

/* The handler for event, or NULL. */
const struct bg_handler *bg_handlers_find(const char *event);

#endif
