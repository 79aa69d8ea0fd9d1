/*
 * link.h - the node's connection to RabbitMQ (rabbitmq-c). Bus thread
 * only: one connection, never shared, torn down and rebuilt on any error.
 *
 * Topology (PROTOCOL.md §5): a durable topic exchange; one exclusive,
 * auto-delete, server-named queue per node bound with '#'; optionally the
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

/* Handles one delivered body; the link acks it after this returns. */
typedef void (*bg_link_deliver_fn)(void *arg, const void *body, size_t len);

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
 * acks them, and keeps heartbeats going; call it whenever the socket is
 * readable and at least once a second. BG_OK, or BG_ERR when the link
 * went down (logged; the caller reconnects).
 */
int bg_link_service(struct bg_link *l, bg_link_deliver_fn fn, void *arg);

/* Publishes m->body to the exchange (routing key: the channel when m
 * names exactly one, else ""), or, for a forwarded client event, to
 * [forward] exchange with its routing key. BG_OK, or BG_ERR when the link
 * failed. */
int bg_link_publish(struct bg_link *l, const struct bg_msg *m);

#endif
