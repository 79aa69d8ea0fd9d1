/*
 * histreq.h - a history request as it travels between a worker (or the
 * API thread) and the bus (amqp/history.h answers it): the request and
 * its answer inside a struct bg_msg (m->hist). Pure data: both sides
 * include it, neither includes the other.
 *
 * Threads: the asker fills the request and hands the message to the bus
 * (bg_h_post, bg_bus_request); the bus answers it in place and pushes the
 * same message back into the asking worker's ring; nothing touches it
 * concurrently.
 */
#ifndef BG_HISTREQ_H
#define BG_HISTREQ_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/bg.h"
#include "common/msg.h"

/* Longest epoch string, in bytes. */
#define BG_HIST_EPOCH_MAX 64
/* Positions stay below 2^53 (exact in JavaScript numbers). */
#define BG_HIST_OFFSET_MAX ((1ull << 53) - 1)
/* The history event's limit when none is given. */
#define BG_HIST_DEFAULT_LIMIT 50

/* One kept publication: a reference to its broadcast and the frame of
 * the channel it was kept for. */
struct bg_hist_pub {
	struct bg_msg *m;
	uint32_t frame;
	uint64_t offset;
};

enum bg_hist_kind {
	BG_HIST_SUBSCRIBE,   /* a subscribe (with or without "recover") */
	BG_HIST_HISTORY,     /* the history event */
	BG_HIST_API,         /* the server API's history command */
};

struct bg_hist_req {
	/* Filled by the asker. */
	enum bg_hist_kind kind;
	int worker;                      /* the asking worker's index */
	uint32_t hold;                   /* SUBSCRIBE: the subscription's
	                                    hold token (chan.h) */
	char client[BG_ID_MAX + 1];      /* the asking connection */
	char *channel;
	char *callback_id;               /* NULL when none */
	bool has_pos;                    /* recover / since given */
	char epoch[BG_HIST_EPOCH_MAX + 1];
	uint64_t offset;
	uint32_t limit;                  /* HISTORY, API: publications */
	uint64_t wait_until_ms;          /* bus: deferred until then */
	struct bg_hist_req *next_wait;   /* bus: deferred requests */
	struct bg_msg *self;             /* bus: the message holding it */

	/* Filled by the bus. */
	bool enabled;                    /* the channel keeps history */
	bool recovered;                  /* SUBSCRIBE: recovery honoured;
	                                    HISTORY/API: false = gap */
	bool unavailable;                /* the node cannot answer now */
	char cur_epoch[BG_HIST_EPOCH_MAX + 1];
	uint64_t top;                    /* the latest position */
	struct bg_hist_pub *pubs;        /* oldest first, references */
	uint32_t n_pubs;

	json_t *answer;                  /* SUBSCRIBE: members the
	                                    BG_ON_SUBSCRIBE hooks added to
	                                    the answer, or NULL (the asker's;
	                                    freed with the request) */

	/* BG_HIST_API, set by the asker: answered(r, arg) on the bus
	 * thread once r is answered (the bus drops its reference after);
	 * when r is freed unanswered (the node stopped first), forget(arg)
	 * instead. */
	void (*answered)(struct bg_hist_req *r, void *arg);
	void (*forget)(void *arg);
	void *arg;
};

/* A message carrying a fresh request (refs = 1), or NULL (no memory). */
struct bg_msg *bg_hist_req_new(enum bg_hist_kind kind, const char *channel);

/* The request inside m. */
static inline struct bg_hist_req *
bg_hist_req_of(struct bg_msg *m)
{
	return m->hist;
}

/* The JSON text of a kept publication's payload (the frame without its
 * header). Any thread. */
const char *bg_hist_pub_json(const struct bg_hist_pub *p, size_t *len);

#endif
