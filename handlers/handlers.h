/*
 * handlers.h - the handler registry: the hooks of the original Bagou
 * (@on_open, @on_close, @on_subscribe, @on_unsubscribe, @on_store,
 * @on_authenticate, @on_message) for C code compiled into the server.
 *
 * Handlers are registered once at start-up (bg_handlers_init, main
 * thread); afterwards the table is immutable and every worker reads it
 * without locks. A handler runs on the worker that owns the connection
 * and may reply (bg_conn_reply_ok / bg_conn_reply_error, which honour the
 * callbackId), broadcast (bg_conn_broadcast) or close the connection
 * (bg_conn_begin_close). See docs/handlers.md.
 */
#ifndef BG_HANDLERS_H
#define BG_HANDLERS_H

#include <stdbool.h>
#include <stddef.h>

#include "common/proto.h"

struct bg_conn;

enum bg_hook {
	BG_ON_EVENT,        /* a client event by name (@on_message) */
	BG_ON_OPEN,         /* after the connect event was queued */
	BG_ON_CLOSE,        /* the connection is going away */
	BG_ON_SUBSCRIBE,    /* before joining: may refuse */
	BG_ON_UNSUBSCRIBE,  /* after leaving */
	BG_ON_STORE,        /* after the store changed */
	BG_ON_AUTHENTICATE, /* after the connection authenticated */
	BG_HOOK_COUNT
};

struct bg_hook_args {
	struct bg_conn *c;
	const struct bg_request *req; /* the client message; NULL for open,
	                                 close and forwarded authentication */
	const char *channel;          /* (un)subscribe: the channel */
};

/*
 * Returns BG_CODE_COUNT to carry on. A BG_ON_SUBSCRIBE hook refuses the
 * subscription by returning an error code (it is answered to the client
 * with that code); other hooks' codes are ignored. A BG_ON_EVENT handler
 * owns the reply: it must answer the callbackId exactly once.
 */
typedef enum bg_code (*bg_hook_fn)(const struct bg_hook_args *a);

struct bg_handler {
	enum bg_hook hook;
	const char *event;    /* BG_ON_EVENT: the event name */
	const char *channel;  /* POSIX extended regex, or NULL for all: the
	                         channel being (un)subscribed, or, for the
	                         other hooks, any channel of the client */
	bg_hook_fn fn;
};

/*
 * Registers the built-ins, then every compiled-in module (handlers/
 * modules.c). BG_OK, or BG_ERR with err set (a bad regex, too many
 * handlers). Main thread, before the workers start.
 */
int bg_handlers_init(char *err, size_t errlen);

/* A worker's own compiled copies of the handlers' channel regexes
 * (opaque; NULL on failure: the shared ones are used), and their
 * release. Worker thread, after bg_handlers_init. */
void *bg_handlers_worker_regexes(void);
void bg_handlers_worker_regexes_free(void *res);

/* Adds one handler (copied; its regex compiled). Start-up only. */
int bg_handlers_register(const struct bg_handler *h, char *err,
			 size_t errlen);

/* Frees the table. Main thread, after the workers stopped. */
void bg_handlers_free(void);

/*
 * Dispatches a client event (PROTOCOL.md §3): a registered BG_ON_EVENT
 * handler (built-ins first), else forwarding to the application when
 * [forward] exchange is set, else the automatic {"success":true} when it
 * has a callbackId, else nothing. Worker thread.
 */
void bg_handlers_dispatch(struct bg_conn *c, const struct bg_request *req);

/* Runs every hook of kind `hook` whose filter matches; for
 * BG_ON_SUBSCRIBE stops at the first refusal and returns its code.
 * BG_CODE_COUNT when none refused. Worker thread. */
enum bg_code bg_handlers_run(enum bg_hook hook,
			     const struct bg_hook_args *a);

/* True when some BG_ON_EVENT handler takes `event`. */
bool bg_handlers_has_event(const char *event);

#endif
