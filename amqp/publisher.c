/*
 * publisher.c - broadcasts from this node's workers (POST /broadcast,
 * client publishes) out to the exchange, so every node delivers them.
 * Bus thread only, on the link's one connection; bg_link_check is pure.
 *
 * A message's own faults (a routing key too long for AMQP, a body too
 * large) are found before rabbitmq-c sees it, and rabbitmq-c's encoding
 * failures (nothing was written) are the message's too: either way that
 * message fails and the link stays up. Only socket, heartbeat and
 * connection errors take the link down.
 */
#include "amqp/link_internal.h"

#include <string.h>

#include "common/bg.h"
#include "common/log.h"

/* The routing key m is published with. */
static const char *
routing_key(const struct bg_msg *m)
{
	/* One channel: route by it, so nodes may later bind only the
	 * channels they hold (PROTOCOL.md §5). */
	if (m->forward_key != NULL)
		return m->forward_key;
	if (m->target == BG_MSG_CHANNELS && m->n_names == 1)
		return m->names[0];
	return "";
}

const char *
bg_link_check(const struct bg_msg *m)
{
	if (strlen(routing_key(m)) > BG_LINK_MAX_KEY)
		return "routing key longer than 255 bytes";
	if (m->body_len > BG_LINK_MAX_BODY)
		return "body larger than 128 MiB";
	return NULL;
}

int
bg_link_publish(struct bg_link *l, const struct bg_msg *m, const char **why)
{
	return bg_link_publish_id(l, m, NULL, why);
}

/* Publishes body with a JSON content type and, when given, a message-id
 * or a correlation-id. BG_OK; BG_LINK_REFUSED when rabbitmq-c refused it
 * while encoding (nothing went out; *why says why); BG_ERR when the link
 * failed (it is reset). what names the kind in the log. */
static int
publish(struct bg_link *l, const char *exchange, const char *key,
	const void *body, size_t len, const char *mid, const char *corr,
	const char *what, const char **why)
{
	amqp_basic_properties_t props;
	amqp_bytes_t b;
	int rc;

	memset(&props, 0, sizeof(props));
	props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG;
	props.content_type = amqp_cstring_bytes("application/json");
	if (mid != NULL) {
		props._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
		props.message_id = amqp_cstring_bytes(mid);
	}
	if (corr != NULL) {
		props._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
		props.correlation_id = amqp_cstring_bytes(corr);
	}
	b.bytes = (void *)body;
	b.len = len;
	rc = amqp_basic_publish(bg_link_conn(l), 1,
				amqp_cstring_bytes(exchange),
				amqp_cstring_bytes(key), 0, 0, &props, b);
	switch (rc) {
	case AMQP_STATUS_OK:
		return BG_OK;
	case AMQP_STATUS_BAD_AMQP_DATA:
	case AMQP_STATUS_TABLE_TOO_BIG:
	case AMQP_STATUS_NO_MEMORY:
		/* Refused while encoding: nothing went out. */
		*why = amqp_error_string2(rc);
		return BG_LINK_REFUSED;
	default:
		bg_log_warn("amqp: publish%s failed: %s", what,
			    amqp_error_string2(rc));
		bg_link_reset(l);
		return BG_ERR;
	}
}

int
bg_link_publish_id(struct bg_link *l, const struct bg_msg *m,
		   const char *mid, const char **why)
{
	const char *exchange = bg_link_exchange(l);

	if (!bg_link_up(l))
		return BG_ERR;
	if ((*why = bg_link_check(m)) != NULL)
		return BG_LINK_REFUSED;
	if (m->forward_key != NULL)
		exchange = bg_link_forward_exchange(l);
	return publish(l, exchange, routing_key(m), m->body, m->body_len, mid,
		       NULL, "", why);
}

int
bg_link_publish_raw(struct bg_link *l, const char *exchange, const char *key,
		    const void *body, size_t len, const char *correlation_id)
{
	const char *why;

	if (!bg_link_up(l))
		return BG_ERR;
	if (strlen(key) > BG_LINK_MAX_KEY || len > BG_LINK_MAX_BODY)
		return BG_LINK_REFUSED;
	if (exchange == NULL)
		exchange = bg_link_control_exchange(l);
	return publish(l, exchange, key, body, len, NULL, correlation_id,
		       " (control)", &why);
}
