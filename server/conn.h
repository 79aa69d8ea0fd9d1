/*
 * conn.h - one WebSocket connection: identity, subscriptions, store, and
 * its bounded outbound queue of pre-framed messages.
 *
 * A struct bg_conn is libwebsockets' per-session data of the connection, so
 * it lives exactly as long as the wsi. Worker thread only: every function
 * here runs on the worker that owns the connection.
 */
#ifndef BG_CONN_H
#define BG_CONN_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/bg.h"
#include "common/budget.h"
#include "common/chan.h"
#include "common/msg.h"
#include "common/proto.h"
#include "handlers/auth.h"

struct lws;
struct bg_worker;

/* A worker-local holder of pre-framed bytes shared by many queues: either
 * one reference to a broadcast, or bytes of its own (a reply). */
struct bg_wframe {
	uint32_t refs;               /* queue entries pointing here */
	struct bg_msg *msg;          /* one reference, or NULL */
	uint8_t *block;              /* own bytes (replies), or NULL */
	struct bg_wframe_pool *pool; /* where it goes back when unused */
	struct bg_wframe *next_free; /* in pool's free list */
};

/* A worker's free holders: a broadcast's holder is taken and given back
 * without malloc once the pool is warm. Worker thread only. */
struct bg_wframe_pool {
	struct bg_wframe *head;
	uint32_t n;
};

/* A zeroed holder with refs = 1, from w's pool (or the heap); NULL when
 * out of memory. */
struct bg_wframe *bg_wframe_new(struct bg_worker *w);

struct bg_out {
	struct bg_wframe *f;
	const uint8_t *data;
	uint32_t len;
};

/* The longest id bg_conn_open makes: a 16-character node id, a worker
 * index below 1024 and a 64-bit counter, "NODE-WORKER-N". */
#define BG_CONN_ID_MAX (16 + 1 + 4 + 1 + 20)

/* A POST /broadcast body on the public listener, while it arrives. */
struct bg_post {
	size_t len, cap;
	char data[];                   /* cap + 1 bytes */
};

/* A message arriving in pieces (across lws callbacks, or in fragments):
 * at most [limits] max_message_size, 64 MiB, long. */
struct bg_rx {
	uint64_t deadline_ms;          /* monotonic; 0 = not fragmented */
	uint32_t len, cap;             /* data's bytes so far, and room */
	uint32_t frames;               /* its frames so far (fragments) */
	char data[];
};

/* Ordered to leave few holes (9 bytes, which glibc's 16-byte rounding
 * would not give back): an idle connection holds one of these
 * (docs/DESIGN.md, memory per idle connection), so every 16 bytes of it
 * count at 10,000 connections. */
struct bg_conn {
	struct lws *wsi;
	struct bg_worker *w;
	struct bg_conn *prev, *next;   /* worker's list */
	struct bg_conn *dirty_next;    /* worker's flush list */
	const char *close_why;         /* text for the close frame: static,
	                                  or the server API's reason (copied,
	                                  close_why_owned, freed at close) */
	uint64_t num;                  /* N of its id NODE-WORKER-N: the
	                                  key of the worker's id map */
	char id[BG_CONN_ID_MAX + 1 + 5];  /* + 5: to a multiple of 8 */
	struct bg_chan_sub **subs;     /* this connection's subscriptions */
	uint32_t n_subs, cap_subs;
	json_t *store;                 /* object, or NULL while empty */
	struct bg_identity ident;      /* who it is; user NULL = anonymous */
	char *cookie;                  /* Cookie header, kept only for a
	                                  forwarded authenticate */

	/* Rate limit: a token bucket of [limits] rate/burst. */
	double tokens;
	uint64_t tokens_ms;            /* when tokens was last refilled */
	uint64_t limited_since_ms;     /* first drop of the current streak */
	uint64_t last_drop_ms;
	uint64_t last_seq;             /* last broadcast delivered */

	/* Incoming message being reassembled, or NULL (most of the time). */
	struct bg_rx *rx;
	uint16_t close_code;
	uint16_t peer_code;            /* the client's close code, if it
	                                  closed first (1005: none given) */

	/* Outbound queue: a ring of entries, bounded in bytes. */
	struct bg_out *q;
	uint32_t q_head, q_count, q_cap;
	bool established;              /* connect sent, in lists */
	bool closing;                  /* close_code will be sent */
	bool close_sent;               /* handed to lws: only the ack left */
	bool close_why_owned;
	bool in_dirty;
	bool want_write;               /* lws_callback_on_writable pending */
	bool backed_up;                /* counted in w->backed_up */
	size_t q_bytes;
	uint64_t backed_ms;            /* backed up: last queue progress */

	/* Memory charged against [limits] max_connection_memory. */
	struct bg_budget budget;

	/* HTTP request state (connections that never upgrade). */
	struct bg_post *post;          /* a POST /broadcast body, or NULL */
	uint64_t http_start_us;        /* bg_mono_us at the request's head,
	                                  for [log] access */
};

/* Sets up a just-upgraded connection: id, lists, the connect event.
 * BG_OK or BG_ERR (then the caller closes with 1011). */
int bg_conn_open(struct bg_conn *c, struct bg_worker *w, struct lws *wsi);

/* Releases everything the connection holds. Safe on a conn that never
 * opened (zeroed). */
void bg_conn_close(struct bg_conn *c);

/* Handles one complete text message from the client. */
void bg_conn_receive(struct bg_conn *c, const char *buf, size_t len);

/*
 * Queues a frame shared through f (takes one f->refs). When direct is
 * true the worker may write it without waiting for a WRITEABLE callback
 * (only from the worker's own event callbacks, never inside lws's).
 * Returns false when the queue limit was hit and the connection is being
 * closed with 4001.
 */
bool bg_conn_push(struct bg_conn *c, struct bg_wframe *f,
		  const uint8_t *data, uint32_t len, bool direct);

/* A backed-up connection (queue over half of max_queued_bytes, counted
 * for backpressure) whose queue took no byte for this long is a slow
 * consumer: closed with 4001, so it cannot hold publishers back. */
#define BG_STALL_MS 2000

/* Closes c with 4001 when it is backed up and stalled (BG_STALL_MS) at
 * now (CLOCK_MONOTONIC ms); true when it did. The caller kicks lws. */
bool bg_conn_cut_if_stalled(struct bg_conn *c, uint64_t now);

/* Queues a reply (JSON text, malloc'd, ownership taken). */
void bg_conn_send_json(struct bg_conn *c, char *json, size_t len);

/* Writes what is queued: called from WRITEABLE or the worker's flush.
 * Returns -1 when lws should close the connection. */
int bg_conn_write(struct bg_conn *c);

/* Starts closing with code: flushes what is queued, then sends the close
 * frame and waits [limits] close_timeout for the client's (the whole
 * close is cut after close_timeout if the client takes nothing). */
void bg_conn_begin_close(struct bg_conn *c, uint16_t code);

/* Closes with code and why (static text, may be NULL) for a reason of the
 * server's (4001, 1001, 1008, 1009, 4002...): drops what is queued, lets
 * the write in progress finish, then closes as bg_conn_begin_close. */
void bg_conn_fail(struct bg_conn *c, uint16_t code, const char *why);

/* Closes with code and reason (copied; at most 123 bytes are sent) for
 * the server API (POST /api/disconnect): what is queued goes first. */
void bg_conn_close_reason(struct bg_conn *c, uint16_t code,
			  const char *reason);

/* Replies: success (extra members borrowed, may be NULL) answered only
 * when the request has a callbackId; failure as callback or error event;
 * both count by code for /metrics. */
void bg_conn_reply_ok(struct bg_conn *c, const struct bg_request *req,
		      json_t *extra);
void bg_conn_reply_error(struct bg_conn *c, const struct bg_request *req,
			 enum bg_code code, const char *message);

/* bg_conn_reply_ok for a subscribe to channel: held, when the node
 * binds per channel, until its queue is bound for it (docs/DESIGN.md,
 * per-channel bindings), so that whatever is published once the client
 * has its answer reaches it. */
void bg_conn_reply_subscribed(struct bg_conn *c, const struct bg_request *req,
			      json_t *extra, const char *channel, size_t len);

/* Sends {"event":event,"data":data} (data borrowed, may be NULL). */
void bg_conn_send_event(struct bg_conn *c, const char *event, json_t *data);

/* Any handler: publishes m (reference taken over) to every node's
 * clients, like POST /broadcast. BG_OK or BG_AGAIN ("unavailable"). */
int bg_conn_broadcast(struct bg_conn *c, struct bg_msg *m);

/*
 * The connection is now id (moved in): its expiry is watched (close 4002),
 * the authenticate hooks run, and req (when not NULL) is answered with
 * {"success":true,"user":{"id":..,"info":{..}}}.
 */
void bg_conn_authenticated(struct bg_conn *c, struct bg_identity *id,
			   const struct bg_request *req);

/* Applies the "auth" of a forwarded reply (JSON text). */
void bg_conn_apply_auth(struct bg_conn *c, const char *auth_json);

/* Authenticates from ?token= at connect; failures are sent as an error
 * event (code auth_failed) and leave the connection anonymous. */
void bg_conn_token_at_connect(struct bg_conn *c, const char *token);

/* Arms the connection's lws timer for the earlier of the identity's
 * expiry and the deadline of a fragmented message (rx_deadline_ms, on the
 * CLOCK_MONOTONIC milliseconds clock), or cancels it. */
void bg_conn_arm_timer(struct bg_conn *c);

/* LWS_CALLBACK_TIMER: true when the identity expired and the connection
 * must close with 4002. */
bool bg_conn_expired(struct bg_conn *c);

/* Rate limit for one incoming message: true to handle it. False: it was
 * answered rate_limited; *close_now is set after 10 s of abuse. */
bool bg_conn_rate_ok(struct bg_conn *c, const struct bg_request *req,
		     bool *close_now);

/* Subscription operations used by the handlers. */
bool bg_conn_is_subscribed(const struct bg_conn *c, const char *channel,
			   size_t len);
enum bg_code bg_conn_subscribe(struct bg_conn *c, const char *channel,
			       size_t len, bool *added);
void bg_conn_unsubscribe(struct bg_conn *c, const char *channel,
			 size_t len);
/* c's subscription to channel, or NULL. */
struct bg_chan_sub *bg_conn_find_sub(const struct bg_conn *c,
				     const char *channel, size_t len);

/* Merges obj into the store unless the result exceeds max_store_bytes.
 * BG_OK, or BG_ERR with the store unchanged. */
int bg_conn_store(struct bg_conn *c, json_t *obj);

/* True when the connection may hold more bytes within its memory
 * budget; false counts a memory close (the caller closes). */
bool bg_conn_budget_allows(struct bg_conn *c, size_t more);

/* Drops a worker-frame reference (frees on the last). */
void bg_wframe_unref(struct bg_wframe *f);

#endif
