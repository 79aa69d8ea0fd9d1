/*
 * msg.h - a broadcast, parsed and framed once, shared read-only by every
 * worker through reference counting.
 *
 * Built by one thread (the bus, or a worker for POST /broadcast and client
 * publishes), then immutable. Refcount rules (STYLE.md): the creator holds
 * one reference; take one per ring push (bg_msg_ref), undo it if the push
 * fails, and drop the creator's own after the fan-out. Any thread.
 */
#ifndef BG_MSG_H
#define BG_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Most targets (channels or client ids) one broadcast may list. */
#define BG_MSG_MAX_TARGETS 1024

/* Most bytes of frames one broadcast may build: a payload is framed once
 * per listed channel, so a big payload times many channels is capped. */
#define BG_MSG_MAX_FRAMED (16u << 20)

enum bg_msg_target {
	BG_MSG_ALL,       /* every connected client */
	BG_MSG_CHANNELS,  /* subscribers of names[] (first match wins) */
	BG_MSG_CLIENTS,   /* the connections whose ids are names[] */
	BG_MSG_BOUND,     /* not a broadcast: the bus tells the workers that
	                     the node's queue is bound for channel names[0]
	                     (n_names 0: for every channel) */
	BG_MSG_TASK,      /* not a broadcast: task_fn runs on each worker,
	                     in ring order (amqp/control.c) */
};

struct bg_worker;

struct bg_msg_frame {
	uint8_t *block;        /* malloc'd; frame lives inside it */
	const uint8_t *data;   /* a complete WebSocket text frame */
	uint32_t len;
};

struct bg_msg {
	unsigned int refs;           /* atomic */
	enum bg_msg_target target;
	uint32_t n_names;
	char **names;                /* channel names or client ids */
	char *exclude;               /* client id not to deliver to, or NULL */
	uint32_t n_frames;           /* CHANNELS: n_names, else 1 */
	struct bg_msg_frame *frames; /* frames[i] carries "channel": names[i] */
	char *body;                  /* the broadcast as JSON, to republish */
	size_t body_len;
	char *auth;                  /* "auth" of a reply to clients, as JSON
	                                text: authenticates them; or NULL */
	char *forward_key;           /* not a broadcast: a client event for
	                                [forward] exchange with this routing
	                                key (body is the event); or NULL */
	uint64_t ingest_us;          /* CLOCK_MONOTONIC when made (bus
	                                receipt, POST accepted): latency */
	char *reply_cb;              /* a reply to clients: its callbackId
	                                (forward round trips), or NULL */
	uint32_t *hashes;            /* CHANNELS: room for bg_chan_hash of
	                                each name (the bus's worker filter),
	                                valid once hashed; else NULL */
	bool hashed;                 /* hashes filled (bg_msg_hash) */
	uint64_t pub_seq;            /* published by this node: its number
	                                in the bus's own-message FIFO, 0
	                                otherwise (bus thread writes before
	                                publishing) */
	size_t carved;               /* packed: bytes of the block used
	                                (creator only, bg_msg_carve) */
	bool packed;                 /* names, frames, exclude and body live
	                                in the message's own block
	                                (bg_msg_new_packed) */
	/* BG_MSG_TASK: run by each worker it reaches (on that worker's
	 * thread), then the ring's reference is dropped; task_free(task)
	 * when the message is freed. */
	void (*task_fn)(struct bg_worker *w, struct bg_msg *m);
	void *task;
	void (*task_free)(void *task);
	void *hist;                  /* not a broadcast: a history request
	                                travelling to the bus and back
	                                (amqp/history.h), freed with the
	                                message by hist_free; or NULL */
	void (*hist_free)(void *);
	char *unsubscribe;           /* a reply to clients: drop their
	                                subscription to this channel first
	                                (presence: channel_full), or NULL */
	/* Not a broadcast: a job for the bus (bg_h_post_job, bg_bus_request).
	 * job_fn runs on the bus thread, in outbox order; then, when
	 * answer_fn is set, the message goes back to worker reply_worker's
	 * ring, in order with its broadcasts (as history answers do), and
	 * answer_fn runs on that worker, taking the ring's reference.
	 * job_data is freed with the message by job_free (if set). */
	void (*job_fn)(struct bg_msg *m);
	void (*answer_fn)(struct bg_worker *w, struct bg_msg *m);
	int reply_worker;
	void *job_data;
	void (*job_free)(void *job_data);
};

/*
 * A message with room for n_names names and their frames, refs = 1.
 * Names, frames and body are filled by the creator before publishing.
 * NULL on allocation failure.
 */
struct bg_msg *bg_msg_new(enum bg_msg_target target, uint32_t n_names);

/*
 * A message whose parts live in one allocation: room for n_names name
 * pointers and hashes, the frames' table, and extra bytes after them,
 * which the creator carves (bg_msg_carve) into names, exclude, body and
 * frames, setting every pointer itself. refs = 1. NULL on failure.
 */
struct bg_msg *bg_msg_new_packed(enum bg_msg_target target,
				 uint32_t n_names, size_t extra);

/* The next len bytes of a packed message's extra space (8-aligned). */
void *bg_msg_carve(struct bg_msg *m, size_t len);

/* Frames payload (UTF-8 JSON text) as frames[i]. BG_OK or BG_ERR (ENOMEM). */
int bg_msg_set_frame(struct bg_msg *m, uint32_t i, const char *payload,
		     size_t len);

/* Fills m->hashes (CHANNELS) unless done: by the creator, or by the
 * bus before the fan-out, while it holds the only reference. */
void bg_msg_hash(struct bg_msg *m);

/* Takes a reference. Any thread. */
void bg_msg_ref(struct bg_msg *m);

/* Drops a reference; frees on the last. Any thread. NULL is ignored. */
void bg_msg_unref(struct bg_msg *m);

/* Bytes this message holds (for accounting). */
size_t bg_msg_size(const struct bg_msg *m);

#endif
