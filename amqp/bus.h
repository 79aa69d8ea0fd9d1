/*
 * bus.h - the broadcast bus thread. In standalone mode ([amqp] url = none)
 * it fans every published message out to all workers' broadcast rings; the
 * AMQP consumer/publisher plugs into the same thread and rings.
 *
 * Producers (workers: POST /broadcast, client publish) call bg_bus_publish
 * from any worker thread; the bus thread alone pushes into worker rings.
 */
#ifndef BG_BUS_H
#define BG_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "common/msg.h"

struct bg_server;

struct bg_bus;

/* Creates the bus (outbox ring); NULL on failure, logged. Main thread. */
struct bg_bus *bg_bus_new(struct bg_server *srv);

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
 * command): queues a history request (m->hist, amqp/history.h) for the
 * bus, behind what was published before it; the bus answers it into the
 * asking worker's ring (or calls the request's answered callback).
 * Never refused for congestion. BG_OK (reference taken over), or
 * BG_AGAIN (stopping, the outbox full: "unavailable").
 */
int bg_bus_request(struct bg_bus *b, struct bg_msg *m);

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
