/*
 * forward.h - client events handed to the application through RabbitMQ
 * (PROTOCOL.md §5, [forward]). Worker threads: the event goes through the
 * worker's path to the bus like a broadcast, and out to [forward]
 * exchange with routing key = the event name.
 */
#ifndef BG_FORWARD_H
#define BG_FORWARD_H

#include <jansson.h>
#include <stdbool.h>

struct bg_conn;

/*
 * Forwards {"event","data","callbackId"?,"client":{...}} (and "cookie"
 * when with_cookie and the connection had one). BG_OK, or BG_AGAIN when
 * RabbitMQ is unreachable (the caller answers "unavailable").
 */
int bg_forward_event(struct bg_conn *c, const char *event, json_t *data,
		     const char *callback_id, bool with_cookie);

/* After a lifecycle event listed in [forward] lifecycle (bit is one of
 * BG_FORWARD_*): forwards it with {"channel":C} or {} as data, and
 * "lifecycle": true. */
void bg_forward_lifecycle(struct bg_conn *c, unsigned int bit,
			  const char *event, const char *channel);

/* The same with the given data (borrowed), e.g. for store. */
void bg_forward_lifecycle_data(struct bg_conn *c, unsigned int bit,
			       const char *event, json_t *data);

/* After a successful authenticate (a token, or the application's reply
 * with "auth"): forwards "authenticate" with {"user":{"id","info"?}}
 * when [forward] lifecycle lists it. */
void bg_forward_authenticated(struct bg_conn *c);

#endif
