/*
 * publisher.c - broadcasts from this node's workers (POST /broadcast,
 * client publishes) out to the exchange, so every node delivers them.
 * Bus thread only, on the link's one connection.
 */
#include "amqp/link_internal.h"

#include <string.h>

#include "common/bg.h"
#include "common/log.h"

int
bg_link_publish(struct bg_link *l, const struct bg_msg *m)
{
	amqp_basic_properties_t props;
	const char *key = "";
	amqp_bytes_t body;
	int rc;

	const char *exchange = bg_link_exchange(l);

	if (!bg_link_up(l))
		return BG_ERR;
	/* One channel: route by it, so nodes may later bind only the
	 * channels they hold (PROTOCOL.md §5). */
	if (m->forward_key != NULL) {
		exchange = bg_link_forward_exchange(l);
		key = m->forward_key;
	} else if (m->target == BG_MSG_CHANNELS && m->n_names == 1) {
		key = m->names[0];
	}
	memset(&props, 0, sizeof(props));
	props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG;
	props.content_type = amqp_cstring_bytes("application/json");
	body.bytes = m->body;
	body.len = m->body_len;
	rc = amqp_basic_publish(bg_link_conn(l), 1,
				amqp_cstring_bytes(exchange),
				amqp_cstring_bytes(key), 0, 0, &props, body);
	if (rc != AMQP_STATUS_OK) {
		bg_log_warn("amqp: publish failed: %s",
			    amqp_error_string2(rc));
		bg_link_reset(l);
		return BG_ERR;
	}
	return BG_OK;
}
