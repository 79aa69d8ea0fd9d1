/*
 * bagou_handler.h - the handler API: everything code in handlers/ may
 * use of the server, in the manner of Redis's module API. Handlers see
 * opaque handles (struct bg_conn: one client; struct bg_worker: the
 * worker thread an answer comes back to) and the functions below; they
 * never include server/ or amqp/ headers (tests/check_includes.sh fails
 * the build's tests when one does). The server implements the API in
 * server/handler_api.c; docs/handlers.md teaches it with
 * handlers/example.c.
 *
 * Threads: a handler runs on the worker that owns its connection, and
 * every function taking a struct bg_conn * must be called there (debug
 * builds assert it, bg_assert_owner). Handlers are registered once at
 * start-up (main thread); the table is read-only afterwards.
 *
 * Allowed beside this header: common/ (bg.h, proto.h for struct
 * bg_request and enum bg_code, msg.h to build a broadcast, config.h for
 * bg_h_config) and handlers/ own pure modules (auth.h).
 */
#ifndef BG_BAGOU_HANDLER_H
#define BG_BAGOU_HANDLER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/bg.h"
#include "common/config.h"
#include "common/msg.h"
#include "common/proto.h"
#include "handlers/auth.h"

struct bg_conn;   /* opaque: one client connection */
struct bg_worker; /* opaque: one worker thread */

/* ------------------------------------------------------------ hooks */

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
	json_t *answer;               /* BG_ON_SUBSCRIBE: an object whose
	                                 members are added to the success
	                                 answer ({"channel":..} and the
	                                 server's own members win); NULL
	                                 for the other hooks */
};

/*
 * Returns BG_CODE_COUNT to carry on. A BG_ON_SUBSCRIBE hook refuses the
 * subscription by returning an error code (it is answered to the client
 * with that code); other hooks' codes are ignored. A BG_ON_EVENT handler
 * owns the reply: it must answer the callbackId exactly once (at once,
 * or later from an answer of the bus: bg_h_post).
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

/* Adds one handler (copied; its regex compiled). BG_OK, or BG_ERR with
 * err set (a bad regex, too many handlers). Start-up only, from a
 * module's bg_<name>_register (handlers/modules.h). */
int bg_handlers_register(const struct bg_handler *h, char *err,
			 size_t errlen);

/* --------------------------------------------------------- identity */

/* The client's id (NODE-WORKER-N), this node's id. */
const char *bg_h_id(const struct bg_conn *c);
const char *bg_h_node(const struct bg_conn *c);

/* The authenticated user, or NULL while anonymous; its "info" as JSON
 * text, or NULL; the whole identity (private channels, expiry). */
const char *bg_h_user(const struct bg_conn *c);
const char *bg_h_user_info(const struct bg_conn *c);
const struct bg_identity *bg_h_identity(const struct bg_conn *c);

/* The Cookie header of the upgrade (kept only when it may be forwarded
 * with an authenticate), or NULL. */
const char *bg_h_cookie(const struct bg_conn *c);

/* The connection is closing: nothing more reaches the client. */
bool bg_h_closing(const struct bg_conn *c);

/* The configuration now in force: read it within the call, never keep
 * the pointer (server/server.h, reloads). */
const struct bg_config *bg_h_config(const struct bg_conn *c);

/* Sets the identity (id moved in): expiry watched (close 4002), the
 * BG_ON_AUTHENTICATE hooks run, and req (when not NULL) answered with
 * {"success":true,"user":{..}}. */
void bg_h_authenticated(struct bg_conn *c, struct bg_identity *id,
			const struct bg_request *req);

/* NULL when c may use channel; else why not, for a forbidden answer:
 * a private channel ([server] private_prefix) or a presence channel
 * ([presence] prefix) needs an authenticated user whose token lists
 * it. */
const char *bg_h_private_refusal(const struct bg_conn *c,
				 const char *channel);

/* --------------------------------------------------------- channels */

/* The channel a request names in data.channel, validated (PROTOCOL.md
 * channel names), with its length in *len; NULL after answering req
 * with invalid_channel. */
const char *bg_h_channel_arg(struct bg_conn *c, const struct bg_request *req,
			     size_t *len);

/* The client's subscriptions: count, and the name of the i-th. */
uint32_t bg_h_channel_count(const struct bg_conn *c);
const char *bg_h_channel(const struct bg_conn *c, uint32_t i);

bool bg_h_subscribed(const struct bg_conn *c, const char *channel,
		     size_t len);

/* Joins channel (valid name, checks done): BG_CODE_COUNT on success
 * (*added false when it already was), else the code to answer
 * (too_many_subscriptions, internal). */
enum bg_code bg_h_subscribe(struct bg_conn *c, const char *channel,
			    size_t len, bool *added);
void bg_h_unsubscribe(struct bg_conn *c, const char *channel, size_t len);

/* Holds the subscription: it skips live broadcasts while its hold token
 * (nonzero) is set, until an answer of the bus releases it with 0.
 * False when c is not subscribed. bg_h_held: the token, 0 when none or
 * not subscribed. */
bool bg_h_hold(struct bg_conn *c, const char *channel, size_t len,
	       uint32_t token);
uint32_t bg_h_held(const struct bg_conn *c, const char *channel,
		   size_t len);

/* True when the channel keeps history on this node ([history]). */
bool bg_h_history_kept(const struct bg_conn *c, const char *channel);

/* True when channel is a presence channel ([presence] prefix). */
bool bg_h_presence_channel(const struct bg_conn *c, const char *channel);

/* c (subscribed, checks done) joins the presence channel's members; the
 * bus answers req with the members and count (PROTOCOL.md, presence),
 * in order with the channel's broadcasts. */
void bg_h_presence_subscribe(struct bg_conn *c, const struct bg_request *req,
			     const char *channel);

/* ------------------------------------------------------------ store */

/* The store (borrowed; NULL while empty). */
json_t *bg_h_store_get(const struct bg_conn *c);

/* Merges obj into the store unless the result exceeds
 * max_store_bytes. BG_OK, or BG_ERR with the store unchanged. */
int bg_h_store(struct bg_conn *c, json_t *obj);

/* ---------------------------------------------------------- replies */

/* Success (extra members borrowed, may be NULL), answered only when the
 * request has a callbackId; failure as callback or error event; both
 * count by code for /metrics. */
void bg_h_reply_ok(struct bg_conn *c, const struct bg_request *req,
		   json_t *extra);
void bg_h_reply_error(struct bg_conn *c, const struct bg_request *req,
		      enum bg_code code, const char *message);

/* bg_h_reply_ok for a subscribe to channel: held, when the node binds
 * per channel, until it is bound (whatever is published once the client
 * has its answer reaches it). */
void bg_h_reply_subscribed(struct bg_conn *c, const struct bg_request *req,
			   json_t *extra, const char *channel, size_t len);

/* Sends {"event":event,"data":data} (data borrowed, may be NULL). */
void bg_h_send_event(struct bg_conn *c, const char *event, json_t *data);

/* Sends JSON text (malloc'd; taken over). */
void bg_h_send_json(struct bg_conn *c, char *json, size_t len);

/* Sends frame `frame` of broadcast m (a reference of its own is taken),
 * ahead of anything live (replays). */
void bg_h_send_frame(struct bg_conn *c, struct bg_msg *m, uint32_t frame);

/* Closes: bg_h_close flushes what is queued first; bg_h_fail drops it
 * (a reason of the server's; why is static text or NULL). */
void bg_h_close(struct bg_conn *c, uint16_t code);
void bg_h_fail(struct bg_conn *c, uint16_t code, const char *why);

/* -------------------------------------------------------------- bus */

/* bg_h_publish: the workers are congested (backpressure); retry. */
#define BG_H_BUSY (-3)

/* True when a published broadcast needs its body (BG_PROTO_BODY). */
bool bg_h_wants_body(const struct bg_conn *c);

/*
 * Publishes m (a broadcast of bg_proto_broadcast*, or a forwarded event
 * with m->forward_key) to every node, taking over the reference on
 * BG_OK. Otherwise the caller keeps it: BG_ERR can never be published
 * (too large for RabbitMQ), BG_H_BUSY congestion (broadcasts only),
 * BG_AGAIN RabbitMQ down or the node stopping.
 */
int bg_h_publish(struct bg_conn *c, struct bg_msg *m);

/*
 * Posts a job to the bus thread (a request inside m, e.g. m->hist of
 * common/histreq.h), behind what was published before it; the bus
 * answers it into this worker's ring in order with the live broadcasts,
 * and the worker hands the answer to its kind's answer function
 * (bg_history_answered for m->hist). BG_OK (reference taken over), or
 * BG_AGAIN (stopping, outbox full: answer "unavailable").
 */
int bg_h_post(struct bg_conn *c, struct bg_msg *m);

/* A job's parts (bg_h_post_job): on_bus runs on the bus thread, where
 * the bus's own state (e.g. the cluster's, DESIGN.md) may be read and
 * the answer written into m (its job_data); on_answer runs on the
 * asking worker and takes the reference it is given (bg_msg_unref). */
typedef void (*bg_h_job_fn)(struct bg_msg *m);
typedef void (*bg_h_answer_fn)(struct bg_worker *w, struct bg_msg *m);

/*
 * Posts a job to the bus (m: e.g. bg_msg_new(BG_MSG_CLIENTS, 0) with its
 * job_data and job_free set): on_bus runs on the bus thread behind what
 * was published before it; then, when on_answer is not NULL, m comes
 * back to c's worker in order with the live broadcasts (what follows it
 * in the ring came after it: hold a subscription with bg_h_hold meanwhile
 * to answer a subscribe from there), and on_answer runs there; find the
 * client again with bg_h_find (it may have gone). BG_OK (reference taken
 * over), or BG_AGAIN (stopping, outbox full: answer "unavailable").
 */
int bg_h_post_job(struct bg_conn *c, struct bg_msg *m, bg_h_job_fn on_bus,
		  bg_h_answer_fn on_answer);

/* The index of c's worker (what a posted request names to come back). */
int bg_h_worker_index(const struct bg_conn *c);

/* The open connection of worker w whose id is id, or NULL. w's thread
 * (an answer function). */
struct bg_conn *bg_h_find(struct bg_worker *w, const char *id);

/* A forwarded event was published for c: counted, and, with a
 * callback_id, its round trip timed until the application's reply. */
void bg_h_forwarded(struct bg_conn *c, const char *callback_id);

/*
 * Forwards an event to the application through [forward] exchange
 * (handlers/forward.c): {"event","data","callbackId"?,"client":{...}}.
 * BG_OK (the application owes the callback), BG_ERR (can never be
 * forwarded), BG_AGAIN (RabbitMQ unreachable).
 */
int bg_h_forward(struct bg_conn *c, const char *event, json_t *data,
		 const char *callback_id);

#endif
