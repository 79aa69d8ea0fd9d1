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
 * channel: the caller acks it (bg_link_ack) once it is done with it.
 * mid: the message-id property (mid_len 0 when absent). */
typedef void (*bg_link_deliver_fn)(void *arg, const void *body, size_t len,
				   uint64_t tag, const char *mid,
				   size_t mid_len);

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

/*
 * Per-channel bindings (PROTOCOL.md §5, "Bindings"). With a binder set,
 * the node queue is bound with "" (broadcasts naming several channels,
 * everyone or client ids) and, each time the topology is declared
 * (connect, reopened channel), binder(arg, l) is called to bind the
 * channels the node holds (bg_link_bind with nowait) before consuming
 * starts; without one, the queue is bound with "#" (everything).
 * bound(arg) is called for each bind-ok of a bg_link_bind without
 * nowait, in the order they were sent. Bus thread.
 */
void bg_link_set_binder(struct bg_link *l, void (*binder)(void *, struct
			bg_link *), void (*bound)(void *), void *arg);

/* Sends queue.bind of the node queue to the exchange with key (nowait:
 * no bind-ok will come). BG_OK or BG_ERR (the link failed: down). */
int bg_link_bind(struct bg_link *l, const char *key, bool nowait);

/* Sends queue.unbind of key; its unbind-ok is ignored. BG_OK or
 * BG_ERR. */
int bg_link_unbind(struct bg_link *l, const char *key);

/* True while rabbitmq-c holds input already read from the socket (poll
 * would not wake for it). */
bool bg_link_buffered(const struct bg_link *l);

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

/* bg_link_publish with a message-id property (mid, NUL-terminated; a
 * node marks its own broadcasts so that it knows them when they come
 * back: amqp/bus.c). */
int bg_link_publish_id(struct bg_link *l, const struct bg_msg *m,
		       const char *mid, const char **why);


/*
 * History on ([history] channels set): broadcasts come from the stream
 * queue [history] stream (bound to the exchange with '#') instead of the
 * node queue, and each carries its position (x-stream-offset + 1). The
 * stream also holds the nodes' notes: epoch records (header
 * x-bagou-epoch) and catch-up markers (x-bagou-marker). During
 * bg_link_service's callback, these say what the delivery is.
 */
enum {
	BG_LINK_BROADCAST,  /* a broadcast (position 0: not from the stream) */
	BG_LINK_MARKER,     /* this link's marker: the catch-up is over */
	BG_LINK_NOTE,       /* another node's marker: nothing for clients */
	BG_LINK_EPOCH,      /* an epoch record (bg_link_delivery_epoch) */
	BG_LINK_READBACK,   /* read back (bg_link_readback_start): ack it
	                       with bg_link_readback_ack, not bg_link_ack */
};
uint64_t bg_link_delivery_pos(const struct bg_link *l);
int bg_link_delivery_kind(const struct bg_link *l);
/* BG_LINK_READBACK: a note rather than a broadcast. */
bool bg_link_delivery_note(const struct bg_link *l);
const char *bg_link_delivery_epoch(const struct bg_link *l);

/* True from a connect without a known position until its marker comes
 * back: what arrives meanwhile is older than the node's start. */
bool bg_link_catching_up(const struct bg_link *l);

/* The next connect catches up from [history] ttl ago again (the stream
 * was found restarted). */
void bg_link_forget_position(struct bg_link *l);

/* Reads the stream again from position pos on a channel of its own,
 * next to the live consumer (deliveries: BG_LINK_READBACK), until
 * bg_link_readback_stop. BG_OK, or BG_ERR (logged; the link may be
 * down then). */
int bg_link_readback_start(struct bg_link *l, uint64_t pos);
void bg_link_readback_stop(struct bg_link *l);
int bg_link_readback_ack(struct bg_link *l, uint64_t tag);

/* Publishes an epoch record to the stream. BG_OK, or BG_ERR when the
 * link failed (it is then down). */
int bg_link_publish_epoch(struct bg_link *l, const char *epoch);

#endif
