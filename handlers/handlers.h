/*
 * handlers.h - the handler registry's side the server calls: start-up,
 * dispatch of client events and hooks (the hooks of the original Bagou:
 * @on_open, @on_close, @on_subscribe, @on_unsubscribe, @on_store,
 * @on_authenticate, @on_message). What a handler itself sees is
 * handlers/bagou_handler.h.
 *
 * Handlers are registered once at start-up (bg_handlers_init, main
 * thread); afterwards the table is immutable and every worker reads it
 * without locks. See docs/handlers.md.
 */
#ifndef BG_HANDLERS_H
#define BG_HANDLERS_H

#include <stdbool.h>
#include <stddef.h>

#include "common/proto.h"
#include "handlers/bagou_handler.h"

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
