/*
 * link_internal.h - what publisher.c needs of consumer.c's connection,
 * without putting rabbitmq-c types in link.h. Bus thread only.
 */
#ifndef BG_LINK_INTERNAL_H
#define BG_LINK_INTERNAL_H

#include <amqp.h>

#include "amqp/link.h"

amqp_connection_state_t bg_link_conn(struct bg_link *l);
const char *bg_link_exchange(const struct bg_link *l);
const char *bg_link_forward_exchange(const struct bg_link *l);
const char *bg_link_control_exchange(const struct bg_link *l);

#endif
