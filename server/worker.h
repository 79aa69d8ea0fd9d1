/*
 * worker.h - one libevent worker thread: its event_base, its libwebsockets
 * context, its connections and channel shard, its rings.
 *
 * Only the worker's own thread touches its connections, tables and lws
 * context. Other threads reach it only through bg_worker_adopt (acceptor),
 * bg_worker_deliver (the bus, through the server's bus sink,
 * server/sink.c), bg_worker_stop (main) and its counters. Its
 * worker-only functions assert the calling thread (bg_assert_owner).
 */
#ifndef BG_WORKER_H
#define BG_WORKER_H

#include <pthread.h>
#include <semaphore.h>
#include <time.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/chan.h"
#include "common/msg.h"
#include "common/ring.h"
#include "server/conn.h"
#include "server/server.h"

/* Largest single write: lws tx_packet_size and the gather buffer. */
#define BG_WRITE_MAX (128 * 1024)

struct bg_conn;
struct bg_held_reply;
struct bg_sock;
struct event_base;
struct event;
struct lws_context;
struct lws_vhost;

/* Slots of a worker's channel filter (a power of two; 16 KiB). */
#define BG_FILTER_SLOTS 4096

struct bg_worker {
	/* Counting filter of the channels this worker has subscribers
	 * for: each channel adds 1 at two slots of its hash
	 * (bg_chan_hash). Worker writes (atomic stores, it alone), the bus
	 * reads (bg_worker_wants) to wake only the workers a broadcast
	 * concerns. False positives cost a wake-up, never a message. On
	 * cache lines of its own: the bus reads it on every broadcast. */
	uint32_t filter[BG_FILTER_SLOTS] __attribute__((aligned(64)));

	int index;                     /* immutable */
	struct bg_server *srv;         /* immutable */
	pthread_t thread;              /* main */
	pthread_t owner;               /* the worker's own thread: it
	                                  writes it first, before anything
	                                  can reach it; bg_assert_owner */
	sem_t ready;                   /* worker posts once set up */
	int ready_rc;                  /* worker writes before posting */
	struct bg_ring *inbox;         /* acceptor -> worker: bg_sock * */
	struct bg_ring *bcast;         /* bus -> worker: struct bg_msg * */
	int stop_efd;                  /* main -> worker: eventfd */
	unsigned int conns_gauge;      /* atomic: worker writes, acceptor
	                                  reads to balance */
	unsigned int closing_conns;    /* atomic: worker writes, bus reads:
	                                  established connections in their
	                                  close handshake (not counted as
	                                  readers by backpressure) */
	unsigned int backed_up;        /* atomic: worker writes, bus reads:
	                                  conns with a queue over half of
	                                  max_queued_bytes (bg_conn_push) */
	/* Written by the bus on every broadcast: a cache line of their
	 * own, apart from what the worker writes on every message. */
	uint64_t bcast_bytes           /* atomic: bus adds, worker subtracts:
	                                  bytes of one frame of each
	                                  broadcast in bcast, not yet fanned
	                                  out */
		__attribute__((aligned(64)));
	uint64_t bcasts_in;            /* bus writes, any reads: broadcasts
	                                  handed to this worker */
	struct bg_stats stats          /* worker writes, any reads */
		__attribute__((aligned(64)));
	uint64_t alive_ms;             /* atomic: worker writes each tick
	                                  (CLOCK_MONOTONIC ms), main's
	                                  watchdog (notify.c) reads */

	/* Everything below: worker thread only (own cache lines). */
	struct event_base *base __attribute__((aligned(64)));
	struct lws_context *lws;
	struct lws_vhost *vhost;
	struct event *inbox_ev, *bcast_ev, *stop_ev, *stop_timer;
	struct event *stall_ev;        /* cuts stalled backed-up conns */
	struct bg_chan_table *chans;   /* channel -> subscribed conns */
	struct bg_conn **ids;          /* client id -> its conn: open
	                                  addressing on the id's number */
	uint32_t ids_cap, ids_n;
	struct bg_conn *conns;         /* every WebSocket connection */
	struct bg_conn *dirty;         /* conns with new output this turn */
	uint64_t seq;                  /* broadcast number, for once-only */
	uint64_t next_client;          /* client id counter */
	uint8_t *scratch;              /* gather buffer for writes */
	bool stopping;
	bool kick;                     /* async kills wait for lws service */
	int stop_ticks;
	void *ping_policy;             /* lws_retry_bo_t, or NULL */
	void *mount;                   /* lws_http_mount for /static/, or
	                                  NULL; lws keeps a pointer to it */
	struct bg_sock *hs_head, *hs_tail; /* handshakes, by deadline
	                                      (acceptor.c) */
	struct event *tick_ev;         /* once a second: deadlines, trim */
	size_t freed_since_trim;       /* bytes, estimated: closes and
	                                  unsubscribes (conn.c) */
	uint64_t last_trim_ms;
	size_t freed_at_tick;          /* freed_since_trim at the last tick */
	struct bg_fwd_slot fwd_pending[BG_FWD_PENDING]; /* server.h */
	struct bg_wframe_pool wf_pool; /* free frame holders (conn.c) */
	struct bg_held_reply *held;    /* subscribe answers waiting for a
	                                  binding, oldest first */
	void *handler_re;              /* its own copies of the handlers'
	                                  regexes (registry.c), or NULL */
};

/* Creates the worker (rings, eventfds); the thread starts in
 * bg_worker_start. Main thread. NULL on failure, logged. */
struct bg_worker *bg_worker_new(struct bg_server *srv, int index);

/* Starts the thread; BG_OK or BG_ERR (logged). Main thread. */
int bg_worker_start(struct bg_worker *w);

/* Asks the worker to close its clients with 1001 and leave its loop
 * within a few seconds. Any thread. */
void bg_worker_stop(struct bg_worker *w);

/* Waits for the thread until deadline (CLOCK_REALTIME). BG_OK, or
 * BG_AGAIN when the worker is still running then. Main thread. */
int bg_worker_join(struct bg_worker *w, const struct timespec *deadline);

/* Frees a joined worker, once no other worker can read its counters.
 * Main thread. */
void bg_worker_free(struct bg_worker *w);

/* Acceptor: hands an admitted socket over; false when the inbox is
 * full (the caller still owns s). */
bool bg_worker_adopt(struct bg_worker *w, struct bg_sock *s);

/* Bus: false when m certainly concerns no client of w: m names
 * channels and none passes w's filter (a broadcast to everyone or to
 * client ids concerns every worker). */
bool bg_worker_wants(const struct bg_worker *w, const struct bg_msg *m);

/* Worker: ch got its first local subscriber, or is about to lose its
 * last one: the filter follows, and the bus hears of it (per-channel
 * bindings: ch is then pending until the bus says it is bound). */
void bg_worker_chan_added(struct bg_worker *w, struct bg_chan *ch);
void bg_worker_chan_removed(struct bg_worker *w, struct bg_chan *ch);

/* Worker: holds c's answer json (malloc'd, taken over) until ch is
 * bound (bg_worker_chan_added made it pending). */
void bg_worker_hold_reply(struct bg_worker *w, struct bg_conn *c,
			  struct bg_chan *ch, char *json, size_t len);

/* Worker: c (c->num set) is found by its id from now on; false when
 * out of memory. bg_worker_id_del undoes it. */
bool bg_worker_id_add(struct bg_worker *w, struct bg_conn *c);
void bg_worker_id_del(struct bg_worker *w, struct bg_conn *c);

/* Worker: c is closing: the answers held for it are dropped. */
void bg_worker_drop_replies(struct bg_worker *w, struct bg_conn *c);

/* Bus: takes over one reference to m; false when the ring is full (the
 * reference stays with the caller). */
/* The connection whose id is id, when it is one of this worker's open
 * ones; else NULL. Worker thread. */
struct bg_conn *bg_worker_conn(struct bg_worker *w, const char *id);

bool bg_worker_deliver(struct bg_worker *w, struct bg_msg *m);

/* bg_worker_deliver whose wake-up is left to the caller: *wake is set
 * when w may be asleep, and the caller then calls bg_worker_wake(w)
 * before it waits on anything (bg_ring_push_defer). Bus thread. */
bool bg_worker_deliver_defer(struct bg_worker *w, struct bg_msg *m,
			     bool *wake);
void bg_worker_wake(struct bg_worker *w);

/* Any thread: true while more than [limits] backpressure percent of the
 * worker's connections are backed up (queue over half of
 * max_queued_bytes), or the broadcasts handed to it and not yet fanned
 * out would by themselves fill half of a queue, or its broadcast ring is
 * over half full: broadcasts are then refused (DESIGN.md,
 * backpressure). Never with [limits] backpressure = 0. */
bool bg_worker_congested(const struct bg_worker *w);

#endif
