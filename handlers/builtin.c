/*
 * builtin.c - subscribe, unsubscribe, store, ping and publish. Each runs on
 * the worker that owns the connection and answers through the conn reply
 * funnel.
 */
#include "handlers/builtin.h"

#include <stdio.h>

#include "amqp/bus.h"
#include "server/conn.h"
#include "server/worker.h"

/* The channel named by data.channel, validated; NULL after replying. */
static const char *
channel_arg(struct bg_conn *c, const struct bg_request *req, size_t *len)
{
	json_t *ch = json_object_get(req->data, "channel");

	if (!json_is_string(ch) ||
	    !bg_proto_channel_valid(json_string_value(ch),
				    json_string_length(ch))) {
		bg_conn_reply_error(c, req, BG_CODE_INVALID_CHANNEL,
				    "data.channel must be 1-200 printable "
				    "ASCII bytes without space * # \" \\");
		return NULL;
	}
	*len = json_string_length(ch);
	return json_string_value(ch);
}

static void
reply_channel(struct bg_conn *c, const struct bg_request *req,
	      const char *channel)
{
	json_t *extra = json_pack("{s:s}", "channel", channel);

	bg_conn_reply_ok(c, req, extra);
	json_decref(extra);
}

void
bg_handler_subscribe(struct bg_conn *c, const struct bg_request *req)
{
	const char *name;
	enum bg_code code;
	size_t len;
	bool added;

	if ((name = channel_arg(c, req, &len)) == NULL)
		return;
	code = bg_conn_subscribe(c, name, len, &added);
	if (code == BG_CODE_TOO_MANY_SUBSCRIPTIONS)
		bg_conn_reply_error(c, req, code, "too many subscriptions "
				    "on this connection");
	else if (code != BG_CODE_COUNT)
		bg_conn_reply_error(c, req, code, "subscribe failed");
	else
		reply_channel(c, req, name);
}

void
bg_handler_unsubscribe(struct bg_conn *c, const struct bg_request *req)
{
	const char *name;
	size_t len;

	if ((name = channel_arg(c, req, &len)) == NULL)
		return;
	bg_conn_unsubscribe(c, name, len);
	reply_channel(c, req, name);
}

void
bg_handler_store(struct bg_conn *c, const struct bg_request *req)
{
	char msg[96];

	if (!json_is_object(req->data)) {
		bg_conn_reply_error(c, req, BG_CODE_BAD_MESSAGE,
				    "store data must be an object");
		return;
	}
	if (bg_conn_store(c, req->data) != BG_OK) {
		snprintf(msg, sizeof(msg), "the store would exceed %zu bytes",
			 c->w->srv->cfg->max_store_bytes);
		bg_conn_reply_error(c, req, BG_CODE_BAD_MESSAGE, msg);
		return;
	}
	bg_conn_reply_ok(c, req, NULL);
}

void
bg_handler_ping(struct bg_conn *c, const struct bg_request *req)
{
	size_t len = 0;
	char *s;

	if (req->callback_id != NULL) {
		bg_conn_reply_ok(c, req, NULL);
		return;
	}
	s = bg_proto_pong(&len);
	bg_conn_send_json(c, s, len);
}

void
bg_handler_publish(struct bg_conn *c, const struct bg_request *req)
{
	const struct bg_config *cfg = c->w->srv->cfg;
	json_t *ev = json_object_get(req->data, "event");
	json_t *b, *data, *empty;
	const char *name;
	struct bg_msg *m;
	enum bg_code code;
	char err[160];
	size_t len;

	if (!json_is_object(req->data)) {
		bg_conn_reply_error(c, req, BG_CODE_BAD_MESSAGE,
				    "publish data must be an object");
		return;
	}
	if ((name = channel_arg(c, req, &len)) == NULL)
		return;
	if (cfg->client_publish == BG_PUBLISH_NONE ||
	    (cfg->client_publish == BG_PUBLISH_SUBSCRIBED &&
	     !bg_conn_is_subscribed(c, name, len))) {
		bg_conn_reply_error(c, req, BG_CODE_NOT_ALLOWED,
				    "publishing to this channel is not "
				    "allowed");
		return;
	}
	/* Only channel, event and data: a client cannot target others. */
	data = json_object_get(req->data, "data");
	empty = data ? NULL : json_object();
	b = json_pack("{s:s, s:O, s:O}", "channel", name, "event",
		      ev ? ev : json_null(), "data", data ? data : empty);
	json_decref(empty);
	m = b ? bg_proto_broadcast(b, c->id, &code, err, sizeof(err)) : NULL;
	json_decref(b);
	if (m == NULL) {
		bg_conn_reply_error(c, req, b ? code : BG_CODE_INTERNAL,
				    b ? err : "out of memory");
		return;
	}
	if (bg_bus_publish(c->w->srv->bus, m) != BG_OK) {
		bg_msg_unref(m);
		bg_conn_reply_error(c, req, BG_CODE_UNAVAILABLE,
				    "the broadcast bus is busy");
		return;
	}
	bg_conn_reply_ok(c, req, NULL);
}
