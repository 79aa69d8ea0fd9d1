/*
 * proto.h - the JSON side of PROTOCOL.md: client messages in, replies and
 * broadcasts out. Pure (jansson only, no I/O, no threads): the worker and
 * bus threads call it, the fuzzers drive it.
 */
#ifndef BG_PROTO_H
#define BG_PROTO_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/msg.h"

/* Error codes a client can see (PROTOCOL.md §3). */
enum bg_code {
	BG_CODE_BAD_MESSAGE,
	BG_CODE_INVALID_CHANNEL,
	BG_CODE_TOO_MANY_SUBSCRIPTIONS,
	BG_CODE_NOT_ALLOWED,
	BG_CODE_UNAVAILABLE,
	BG_CODE_FORBIDDEN,
	BG_CODE_CHANNEL_FULL,
	BG_CODE_AUTH_FAILED,
	BG_CODE_RATE_LIMITED,
	BG_CODE_UNKNOWN_EVENT,
	BG_CODE_INTERNAL,
	BG_CODE_COUNT
};

/* The wire name of a code ("bad_message", ...). */
const char *bg_code_name(enum bg_code code);

/* A parsed client message; fields borrow from root. */
struct bg_request {
	json_t *root;             /* owned: json_decref when done */
	const char *event;
	json_t *data;             /* never NULL: JSON null when absent */
	const char *callback_id;  /* NULL when absent */
};

/*
 * Parses one client text message. BG_OK with req filled (caller decrefs
 * req->root), or BG_ERR with err set; on error req->event and
 * req->callback_id are still filled when they could be read, so the
 * failure can be answered to the right callback.
 */
int bg_proto_parse_request(const char *buf, size_t len,
			   struct bg_request *req, char *err, size_t errlen);

/* True for a valid channel name (1-200 bytes printable ASCII, no space,
 * '*', '#', '"', '\'). */
bool bg_proto_channel_valid(const char *name, size_t len);

/* True for a valid client event name (1-128 bytes, no control
 * characters: C0, DEL). */
bool bg_proto_event_valid(const char *name, size_t len);

/* True for a valid client id (1-64 bytes of printable ASCII, no space,
 * '"', '\'). */
bool bg_proto_client_id_valid(const char *id, size_t len);

/*
 * Serializers for replies to one connection. Each returns a malloc'd
 * JSON text (*len set) or NULL on allocation failure.
 */
char *bg_proto_connect(const char *client_id, size_t *len);
char *bg_proto_pong(size_t *len);
/* {"event":"callback","callbackId":ID,"data":{"success":true,...extra}};
 * extra (may be NULL) is an object whose members are added; borrowed. */
char *bg_proto_callback_ok(const char *callback_id, json_t *extra,
			   size_t *len);
/* With a callbackId: the failure callback; without: the error event. */
char *bg_proto_failure(const char *callback_id, const char *event,
		       enum bg_code code, const char *message, size_t *len);

/*
 * Validates a broadcast (PROTOCOL.md §4) and builds the message: targets,
 * exclude, one frame per target channel (or one), and the canonical body.
 * from, when not NULL, is added as "from" (client publishes). A reply to
 * explicit clients keeps every top-level field but client, exclude and
 * auth, and may have no "event" (PROTOCOL.md §4, replies).
 * Returns the message (refs = 1), or NULL with *code and err set.
 */
struct bg_msg *bg_proto_broadcast(json_t *root, const char *from,
				  enum bg_code *code, char *err,
				  size_t errlen);

/* The same from JSON text. */
struct bg_msg *bg_proto_broadcast_text(const char *buf, size_t len,
				       const char *from, enum bg_code *code,
				       char *err, size_t errlen);

/* flags of the _opt forms: keep m->body, the text to republish to
 * RabbitMQ. Without it the body is not built (no one would read it:
 * standalone mode, or a delivery from RabbitMQ). */
#define BG_PROTO_BODY 1u

/* bg_proto_broadcast with flags (the plain form is BG_PROTO_BODY). */
struct bg_msg *bg_proto_broadcast_opt(json_t *root, const char *from,
				      unsigned flags, enum bg_code *code,
				      char *err, size_t errlen);

/*
 * bg_proto_broadcast_text with flags. A single broadcast object that
 * common/jscan.c can vouch for (the usual case: a channel broadcast
 * without escapes in its names) is built without a parse tree, in one
 * allocation; anything else takes jansson's path, with the same result
 * and errors. The body kept is then the text as given.
 */
struct bg_msg *bg_proto_broadcast_text_opt(const char *buf, size_t len,
					   const char *from, unsigned flags,
					   enum bg_code *code, char *err,
					   size_t errlen);


/*
 * History (PROTOCOL.md, history and recovery): frames again, with
 * "offset": offset last, the payloads of m's channels i for which
 * which[i] is true. m must be a channel broadcast built above, not yet
 * shared with another thread. BG_OK, or BG_ERR (out of memory; m keeps
 * its frames).
 */
int bg_proto_set_offset(struct bg_msg *m, const bool *which,
			uint64_t offset);

#endif
