/*
 * bus.h - the broadcast bus thread. In standalone mode ([amqp] url = none)
 * it fans every published message out to all workers' broadcast rings; the
 * AMQP consumer/publisher plugs into the same thread and rings.
 *
 * Producers (workers: POST /broadcast, client publish) call bg_bus_publish
 * from any worker thread; the bus thread alone pushes into worker rings.
 *
 * The bus never sees the server: it hands messages to the interface the
 * server registers at start (struct bg_bus_sink, server/sink.c), so
 * amqp/ includes no server/ header (docs/DESIGN.md, layering).
 */
#ifndef BG_BUS_H
#define BG_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "common/config.h"
#include "common/msg.h"

struct bg_bus;
struct bg_control;

/* What the sink's stat reports of one worker. */
enum bg_sink_stat {
	BG_SINK_BCASTS_IN,     /* broadcasts handed to it (sink count) */
	BG_SINK_BACKED_UP,     /* its connections backed up now */
	BG_SINK_CONNECTIONS,   /* its open connections */
	BG_SINK_SUBSCRIPTIONS, /* its subscriptions */
};

/*
 * The server's side of the bus: where messages go and what the bus and
 * the control plane read of the node. Filled by the main thread before
 * the bus and control are made (they copy it); immutable afterwards.
 * Worker numbers go from 0 to n_workers - 1; a worker not made yet
 * (start-up) wants nothing, is not congested and counts 0.
 */
struct bg_bus_sink {
	void *arg;             /* passed back to every function */
	int n_workers;
	const char *node_id;   /* this node's id, for the life of the bus */
	uint64_t started_ms;   /* CLOCK_REALTIME ms at start (uptime) */
	/* Any thread: the configuration in force, never kept past the
	 * current callback or loop turn (server/server.h). */
	const struct bg_config *(*cfg)(void *arg);
	/* Bus thread: it holds no configuration read before this point
	 * (at least once a second). */
	void (*quiescent)(void *arg);
	/* Bus thread: false when m certainly concerns no client of
	 * worker i (its channel filter). */
	bool (*wants)(void *arg, int i, const struct bg_msg *m);
	/* Bus thread: hands one reference of m to worker i's ring; false
	 * when the ring is full (the reference stays with the bus). Sets
	 * *wake when the worker may be asleep: the bus then owes it a
	 * wake(), which it gives once per batch (bg_ring_push_defer). */
	bool (*deliver)(void *arg, int i, struct bg_msg *m, bool *wake);
	/* Bus thread: wakes worker i after deliver set *wake. */
	void (*wake)(void *arg, int i);
	/* Bus thread: one broadcast more was handed to worker i. */
	void (*count)(void *arg, int i);
	/* Any thread: worker i is congested (backpressure). */
	bool (*congested)(void *arg, int i);
	/* Any thread: one of worker i's counters. */
	uint64_t (*stat)(void *arg, int i, enum bg_sink_stat which);
	/* Bus thread, every turn of its loop (at least once a second),
	 * after the control plane's service: the server's own bus-thread
	 * state (timers). NULL: nothing to do. */
	void (*tick)(void *arg);
};

/* Creates the bus (outbox ring) over sink (copied) and the control
 * plane ctl (made before); NULL on failure, logged. Main thread. */
struct bg_bus *bg_bus_new(const struct bg_bus_sink *sink,
			  struct bg_control *ctl);

/* Starts the thread. BG_OK or BG_ERR. Main thread. */
int bg_bus_start(struct bg_bus *b);

/* Shutdown has begun: no new connection attempts (a broker that does not
 * answer would hold the thread for seconds). Any thread. */
void bg_bus_quiesce(struct bg_bus *b);

/* Stops and joins the thread until deadline (CLOCK_REALTIME); later
 * publishes get BG_AGAIN. What workers left is published first when the
 * link is up. BG_OK, or BG_AGAIN when the thread is still busy at the
 * deadline (then nothing may be freed). Main thread. */
int bg_bus_stop(struct bg_bus *b, const struct timespec *deadline);

/* Frees the bus once no worker can reach it any more. Main thread. */
void bg_bus_free(struct bg_bus *b);

/* bg_bus_publish: the workers are congested (backpressure); retry. */
#define BG_BUS_BUSY (-3)

/*
 * Any worker thread: queues m for every node's clients, taking over the
 * caller's reference. BG_OK; otherwise the caller keeps its reference:
 * - BG_ERR: m can never be published (AMQP: routing key over 255 bytes,
 *   body over 128 MiB); the sender's fault ("bad_message", HTTP 400);
 * - BG_BUS_BUSY: m is a broadcast and a worker is congested
 *   (bg_bus_congested; forwarded events are never refused for this);
 *   answer "unavailable" / HTTP 503 and let the publisher retry later;
 * - BG_AGAIN: RabbitMQ is down, the node is stopping or the outbox is
 *   full ("unavailable" / HTTP 503).
 */
int bg_bus_publish(struct bg_bus *b, struct bg_msg *m);

/*
 * Any worker thread, or the bus thread itself (the server API's history
 * command): queues a history request (m->hist, common/histreq.h) or a
 * job (m->job_fn, common/msg.h) for the bus, behind what was published
 * before it; the bus answers it into the asking worker's ring (or calls
 * the request's answered callback). Never refused for congestion. BG_OK
 * (reference taken over), or BG_AGAIN (stopping, the outbox full:
 * "unavailable").
 */
int bg_bus_request(struct bg_bus *b, struct bg_msg *m);

/*
 * A producer thread's batch: between begin and end, what the thread
 * queues with bg_bus_publish or bg_bus_request wakes the bus once, at
 * the end, instead of at the first push (a thread that hands on several
 * messages in one turn of its loop lets the bus take them as one batch,
 * and the bus then wakes each worker once for all of them). The thread
 * must not wait on anything inside the batch. Nests; per thread.
 */
void bg_bus_batch_begin(void);
void bg_bus_batch_end(void);

/* Inside a batch, before work that may take a while (a large body, a
 * query): gives the wake-up owed so far, the batch goes on. Only the
 * thread that took the outbox's wake-up can give it: the others'
 * pushes wait for it. */
void bg_bus_batch_flush(void);

struct bg_history;

/* The history store, for bg_history_match (any thread). */
const struct bg_history *bg_bus_history(const struct bg_bus *b);

/* True while some worker is congested (bg_worker_congested): publishes
 * are refused and deliveries from RabbitMQ held. Any thread. */
bool bg_bus_congested(const struct bg_bus *b);

/* True once bg_bus_stop was called: a loop on the bus thread that waits
 * for a full worker ring gives up. Any thread. */
bool bg_bus_stopping(const struct bg_bus *b);

/* Writes the bus's /metrics lines (publish failures, channel reopens,
 * backpressure) into buf, snprintf-style. Any thread. */
int bg_bus_metrics(const struct bg_bus *b, char *buf, size_t size);

/* True when the node binds its queue per channel (AMQP mode): workers
 * then report their channels (bg_bus_interest) and hold a subscribe's
 * answer until the bus says the channel is bound (BG_MSG_BOUND). Any
 * thread. */
bool bg_bus_binds(const struct bg_bus *b);

/* A worker's channel got its first local subscriber (delta +1) or lost
 * its last one (-1). Worker threads. Never fails: if the news cannot be
 * queued, the bus binds "#" from then on. */
void bg_bus_interest(struct bg_bus *b, const char *name, size_t len,
		     int delta);

/* True when published messages go to RabbitMQ, which needs their body
 * (BG_PROTO_BODY); false in standalone mode. Any thread. */
bool bg_bus_wants_body(const struct bg_bus *b);

/* "disabled", "connected" or "disconnected" for /health. Any thread. */
const char *bg_bus_state(const struct bg_bus *b);

/* Counters for /metrics. Any thread. */
uint64_t bg_bus_broadcasts(const struct bg_bus *b);
uint64_t bg_bus_rejected(const struct bg_bus *b);
uint64_t bg_bus_reconnects(const struct bg_bus *b);
bool bg_bus_connected(const struct bg_bus *b);

/* Main thread, at start-up, once the bus runs: waits (at most
 * timeout_ms) until its first attempt to reach RabbitMQ has ended, in
 * success or failure, so that the first clients find the link up when
 * the broker is there. true at once without a link (standalone); false
 * when the attempt took longer (a broker that does not answer). */
bool bg_bus_wait_first_try(const struct bg_bus *b, int timeout_ms);

/* ---- for the control plane (amqp/control.c), bus thread only ---- */

/* Hands m (a task or a broadcast; its reference taken over) to every
 * worker, in order with the broadcasts (behind held deliveries). */
void bg_bus_to_workers(struct bg_bus *b, struct bg_msg *m);

/* Publishes body to the control exchange. BG_OK; BG_AGAIN when the
 * link is down (or went down now); BG_ERR when it cannot be sent at
 * all, or standalone. */
int bg_bus_send_control(struct bg_bus *b, const void *body, size_t len);

/* The same to exchange ("" is the default one, NULL the control
 * exchange) with routing key key and a correlation_id (or NULL). */
int bg_bus_send_raw(struct bg_bus *b, const char *exchange, const char *key,
		    const void *body, size_t len, const char *correlation_id);

#endif
