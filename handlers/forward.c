/*
 * forward.c - builds forwarded events: the client's id, node, user,
 * channels and store travel with each one, so the application can answer
 * without asking back. Worker threads; built on the handler API alone.
 */
#include "handlers/forward.h"

#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "handlers/bagou_handler.h"

static json_t *
client_object(struct bg_conn *c)
{
	json_t *chans = json_array(), *o, *info = NULL;
	json_t *store = bg_h_store_get(c);
	const char *user = bg_h_user(c);

	for (uint32_t i = 0; chans != NULL && i < bg_h_channel_count(c); i++)
		json_array_append_new(chans,
				      json_string(bg_h_channel(c, i)));
	if (bg_h_user_info(c) != NULL)
		info = json_loads(bg_h_user_info(c), 0, NULL);
	o = json_pack("{s:s, s:s, s:o, s:o?, s:o, s:o}", "id", bg_h_id(c),
		      "node", bg_h_node(c), "user",
		      user ? json_string(user) : json_null(),
		      "info", info, "channels", chans ? chans : json_array(),
		      "store", store ? json_incref(store) : json_object());
	return o;
}

/* lifecycle: the server's own notice of something that happened, marked
 * "lifecycle": true so the application never takes it for a client's
 * request of the same name (an authenticate to answer). */
static int
forward(struct bg_conn *c, const char *event, json_t *data,
	const char *callback_id, bool with_cookie, bool lifecycle)
{
	struct bg_msg *m;
	json_t *body;
	char *text;
	int rc;

	/* Bounded before anything reaches the bus: the name is the routing
	 * key (PROTOCOL.md §3; the parser already refused longer ones). */
	if (!bg_proto_event_valid(event, strlen(event)))
		return BG_ERR;
	body = json_pack("{s:s, s:O, s:o}", "event", event,
			 "data", data ? data : json_null(),
			 "client", client_object(c));
	if (body == NULL)
		return BG_AGAIN;
	if (callback_id != NULL)
		json_object_set_new(body, "callbackId",
				    json_string(callback_id));
	if (with_cookie && bg_h_cookie(c) != NULL)
		json_object_set_new(body, "cookie",
				    json_string(bg_h_cookie(c)));
	if (lifecycle)
		json_object_set_new(body, "lifecycle", json_true());
	text = json_dumps(body, JSON_COMPACT);
	json_decref(body);
	m = text ? bg_msg_new(BG_MSG_ALL, 0) : NULL;
	if (m == NULL || (m->forward_key = strdup(event)) == NULL) {
		free(text);
		bg_msg_unref(m);
		return BG_AGAIN;
	}
	m->body = text;
	m->body_len = strlen(text);
	rc = bg_h_publish(c, m);
	if (rc != BG_OK) {
		bg_msg_unref(m);
		return rc;
	}
	bg_h_forwarded(c, callback_id);
	return rc;
}

void
bg_forward_request(struct bg_conn *c, const struct bg_request *req,
		   bool with_cookie)
{
	switch (bg_forward_event(c, req->event, req->data, req->callback_id,
				 with_cookie)) {
	case BG_OK:
		return; /* the application owes the callback now */
	case BG_ERR:
		bg_h_reply_error(c, req, BG_CODE_BAD_MESSAGE,
				 "this event cannot be forwarded (too "
				 "large for RabbitMQ)");
		return;
	default:
		bg_h_reply_error(c, req, BG_CODE_UNAVAILABLE,
				 "the application cannot be reached "
				 "(RabbitMQ is down)");
		return;
	}
}

int
bg_h_forward(struct bg_conn *c, const char *event, json_t *data,
	     const char *callback_id)
{
	return forward(c, event, data, callback_id, false, false);
}

int
bg_forward_event(struct bg_conn *c, const char *event, json_t *data,
		 const char *callback_id, bool with_cookie)
{
	return forward(c, event, data, callback_id, with_cookie, false);
}

void
bg_forward_lifecycle(struct bg_conn *c, unsigned int bit, const char *event,
		     const char *channel)
{
	json_t *data;

	if (!(bg_h_config(c)->forward_lifecycle & bit))
		return;
	data = channel ? json_pack("{s:s}", "channel", channel) :
			 json_object();
	bg_forward_lifecycle_data(c, bit, event, data);
	json_decref(data);
}

void
bg_forward_lifecycle_data(struct bg_conn *c, unsigned int bit,
			  const char *event, json_t *data)
{
	if (!(bg_h_config(c)->forward_lifecycle & bit))
		return;
	if (forward(c, event, data, NULL, false, true) != BG_OK) {
		/* A node stopping with many clients would otherwise log one
		 * line each. */
		static struct bg_log_throttle throttle =
			BG_LOG_THROTTLE("lifecycle events not forwarded", 1);
		bg_log_throttled(&throttle, BG_LOG_WARN, "'%s' of client %s "
				 "not forwarded: RabbitMQ is unreachable",
				 event, bg_h_id(c));
	}
}

void
bg_forward_authenticated(struct bg_conn *c)
{
	json_t *user, *data;

	if (!(bg_h_config(c)->forward_lifecycle &
	      BG_FORWARD_AUTHENTICATE) ||
	    bg_h_user(c) == NULL)
		return;
	user = json_pack("{s:s}", "id", bg_h_user(c));
	if (user != NULL && bg_h_user_info(c) != NULL)
		json_object_set_new(user, "info",
				    json_loads(bg_h_user_info(c), 0, NULL));
	data = json_pack("{s:o}", "user", user ? user : json_null());
	if (data != NULL)
		bg_forward_lifecycle_data(c, BG_FORWARD_AUTHENTICATE,
					  "authenticate", data);
	json_decref(data);
}
