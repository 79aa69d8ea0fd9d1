/*
 * history.h - the worker side of history and recovery (PROTOCOL.md,
 * history and recovery): subscribe on a history channel (with or
 * without "recover"), the history event, and the bus's answers to them
 * (amqp/history.h). Worker threads.
 */
#ifndef BG_HANDLERS_HISTORY_H
#define BG_HANDLERS_HISTORY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/msg.h"
#include "common/proto.h"
#include "handlers/bagou_handler.h"

/* A position as the client names it: {"epoch": E, "offset": N}. */
struct bg_hist_pos {
	bool given;
	char epoch[65];
	uint64_t offset;
};

/*
 * Reads data[field] (absent or null: pos->given false). BG_OK, or BG_ERR
 * with err set when it is not {"epoch": a string of 1-64 bytes,
 * "offset": an integer from 0 to 2^53-1}. Pure.
 */
int bg_history_parse_pos(json_t *data, const char *field,
			 struct bg_hist_pos *pos, char *err, size_t errlen);

/*
 * c has just subscribed to the history channel `name` (every check
 * passed): its subscription is held (it skips live broadcasts) and the
 * bus is asked for the position and, with pos given, the missed
 * publications; the answer replays them, releases the hold and answers
 * req (bg_history_answered) with the members of answer (borrowed, may
 * be NULL: what the BG_ON_SUBSCRIBE hooks added) beside the server's.
 * BG_OK, or BG_ERR when the bus cannot take the request (the caller
 * undoes the subscription: "unavailable").
 */
int bg_history_subscribe(struct bg_conn *c, const struct bg_request *req,
			 const char *name, size_t len,
			 const struct bg_hist_pos *pos, json_t *answer);

/* The history event (registered with the built-ins). */
enum bg_code bg_history_on_event(const struct bg_hook_args *a);

/* A history answer popped from w's broadcast ring (m->hist): acts on it
 * and drops m. w's thread (the worker calls it). */
void bg_history_answered(struct bg_worker *w, struct bg_msg *m);

#endif
