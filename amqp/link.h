/*
 * link.h - the node's connection to RabbitMQ (rabbitmq-c). Bus thread
 * only: one connection, never shared, rebuilt when it fails; a channel
 * the broker closes is reopened on it.
 *
 * Topology (PROTOCOL.md §5): a durable topic exchange; one exclusive
 * (gone with the connection, kept across a reopened channel),
 * server-named queue per node bound with '#'; optionally the
 * legacy durable queue; manual acks bounded by prefetch.
 */
#ifndef BG_LINK_H
#define BG_LINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "common/msg.h"

struct bg_link;

/* The largest body published: RabbitMQ's default max_message_size. */
#define BG_LINK_MAX_BODY (128u << 20)

/* The longest routing key AMQP can carry (a shortstr). */
#define BG_LINK_MAX_KEY 255

/* bg_link_publish: this message cannot be sent; the link is fine. */
#define BG_LINK_REFUSED 1

/* Handles one delivered body. tag is its delivery tag on the current
 * channel: the caller acks it (bg_link_ack) once it is done with it. */
typedef void (*bg_link_deliver_fn)(void *arg, const void *body, size_t len,
				   uint64_t tag);

/* Parses cfg's URL. NULL with err set ("[amqp] url: ...") on a bad URL. */
struct bg_link *bg_link_new(const struct bg_config *cfg, char *err,
			    size_t errlen);

/* Closes (politely when up) and frees. */
void bg_link_free(struct bg_link *l);

/* Connects, logs in, declares the topology and starts consuming. BG_OK,
 * or BG_ERR with the reason logged (rate-limited by the caller's
 * backoff). Blocks at most a few seconds. */
int bg_link_connect(struct bg_link *l);

/* Drops the connection without the AMQP close handshake. */
void bg_link_reset(struct bg_link *l);

bool bg_link_up(const struct bg_link *l);

/* The socket to poll for input, or -1 while down. */
int bg_link_fd(const struct bg_link *l);

/*
 * Reads what has arrived (without blocking), hands each delivery to fn,
 * and keeps heartbeats going; call it whenever the socket is readable and
 * at least once a second. Deliveries stay unacked until bg_link_ack, so
 * [amqp] prefetch bounds what the caller holds. When the broker closes
 * the channel (a refused publish: NOT_FOUND exchange, ...), the channel is
 * reopened on the same connection (the node queue survives), the
 * unacked deliveries go back to the queue, and bg_link_channel_epoch
 * changes: tags handed out before are void. BG_OK, or BG_ERR when the
 * link went down (logged; the caller reconnects).
 */
int bg_link_service(struct bg_link *l, bg_link_deliver_fn fn, void *arg);

/* Acks every delivery up to tag (of the current channel epoch). BG_OK,
 * or BG_ERR when the link failed (it is then down). */
int bg_link_ack(struct bg_link *l, uint64_t tag);

/* Changes each time the channel is reopened or the link reconnects. */
uint64_t bg_link_channel_epoch(const struct bg_link *l);

/* Channels reopened after the broker closed them, for /metrics. */
uint64_t bg_link_channel_reopens(const struct bg_link *l);

/* Where a control-plane delivery came from. */
enum bg_link_source {
	BG_LINK_CONTROL,   /* the fanout exchange "<exchange>.control" */
	BG_LINK_API,       /* the shared queue "<exchange>.api" */
};

/* Handles one control-plane delivery (auto-acked: nothing to ack).
 * reply_to and correlation_id: its properties, NULL when absent. Called
 * from inside bg_link_service: it must not use the link (copy, and act
 * later). */
typedef void (*bg_link_control_fn)(void *arg, enum bg_link_source src,
				   const void *body, size_t len,
				   const char *reply_to,
				   const char *correlation_id);

/* Where control-plane deliveries go, and the node's id: its control
 * queue is "<exchange>.control.<node>" (exclusive; server-named when
 * that is over 255 bytes), so an operator sees whose it is. Before
 * bg_link_connect. */
void bg_link_set_control(struct bg_link *l, const char *node,
			 bg_link_control_fn fn, void *arg);

/* Publishes body to the control exchange (exchange NULL), or to
 * exchange with routing key key, with correlation_id (may be NULL).
 * BG_OK, BG_LINK_REFUSED (key too long: nothing sent, the link stays) or
 * BG_ERR (the link failed and is down, logged). */
int bg_link_publish_raw(struct bg_link *l, const char *exchange,
			const char *key, const void *body, size_t len,
			const char *correlation_id);

/*
 * Pure, any thread: NULL when m can be published, else why not (a
 * routing key over BG_LINK_MAX_KEY bytes, a body over BG_LINK_MAX_BODY).
 * These are the message's fault, never the link's.
 */
const char *bg_link_check(const struct bg_msg *m);

/* Publishes m->body to the exchange (routing key: the channel when m
 * names exactly one, else ""), or, for a forwarded client event, to
 * [forward] exchange with its routing key. BG_OK; BG_LINK_REFUSED with
 * *why set when this message cannot be sent (bg_link_check, or
 * rabbitmq-c cannot encode it: nothing was written, the link stays up);
 * BG_ERR when the link failed (it is then down, logged). */
int bg_link_publish(struct bg_link *l, const struct bg_msg *m,
		    const char **why);

#endif
