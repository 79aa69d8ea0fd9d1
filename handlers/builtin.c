/*
 * builtin.c - the built-in events of PROTOCOL.md §3 (subscribe,
 * unsubscribe, store, ping, publish, authenticate), registered through the
 * same table as compiled-in handlers. Worker threads; built on the
 * handler API alone (handlers/bagou_handler.h).
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "handlers/auth.h"
#include "handlers/bagou_handler.h"
#include "handlers/forward.h"
#include "handlers/handlers.h"
#include "handlers/history.h"
#include "handlers/modules.h"

#define GO_ON BG_CODE_COUNT

static void
reply_channel(struct bg_conn *c, const struct bg_request *req,
	      const char *channel)
{
	json_t *extra = json_pack("{s:s}", "channel", channel);

	bg_h_reply_ok(c, req, extra);
	json_decref(extra);
}

/* The answer's own members, then those the hooks added (a.answer). */
static void
reply_subscribed(struct bg_conn *c, const struct bg_request *req,
		 json_t *extra, json_t *answer, const char *name,
		 size_t len)
{
	if (extra != NULL && json_object_size(answer) > 0)
		json_object_update_missing(extra, answer);
	bg_h_reply_subscribed(c, req, extra, name, len);
	json_decref(extra);
}

static enum bg_code
on_subscribe(const struct bg_hook_args *a)
{
	struct bg_conn *c = a->c;
	const struct bg_request *req = a->req;
	struct bg_hook_args hook = { .c = c, .req = req };
	struct bg_hist_pos pos;
	const char *name, *refusal;
	enum bg_code code;
	json_t *answer;
	char err[160];
	size_t len;
	bool added;

	if ((name = bg_h_channel_arg(c, req, &len)) == NULL)
		return GO_ON;
	if (bg_history_parse_pos(req->data, "recover", &pos, err,
				 sizeof(err)) != BG_OK) {
		bg_h_reply_error(c, req, BG_CODE_BAD_MESSAGE, err);
		return GO_ON;
	}
	if (bg_h_subscribed(c, name, len)) {
		if (bg_h_presence_channel(c, name)) /* the bus has the members */
			bg_h_presence_subscribe(c, req, name);
		else
			reply_channel(c, req, name); /* idempotent */
		return GO_ON;
	}
	if ((refusal = bg_h_private_refusal(c, name)) != NULL) {
		bg_h_reply_error(c, req, BG_CODE_FORBIDDEN, refusal);
		return GO_ON;
	}
	answer = json_object();
	if (answer == NULL) {
		bg_h_reply_error(c, req, BG_CODE_INTERNAL, "out of memory");
		return GO_ON;
	}
	hook.channel = name;
	hook.answer = answer;
	code = bg_handlers_run(BG_ON_SUBSCRIBE, &hook);
	if (code != GO_ON) {
		bg_h_reply_error(c, req, code, "subscription refused");
		goto out;
	}
	code = bg_h_subscribe(c, name, len, &added);
	if (code == BG_CODE_TOO_MANY_SUBSCRIPTIONS) {
		bg_h_reply_error(c, req, code, "too many subscriptions "
				 "on this connection");
		goto out;
	}
	if (code != GO_ON) {
		bg_h_reply_error(c, req, code, "subscribe failed");
		goto out;
	}
	if (bg_h_presence_channel(c, name)) {
		bg_h_presence_subscribe(c, req, name); /* the bus answers */
	} else if (bg_h_history_kept(c, name)) {
		/* Answered by the bus, with the position (history.c). */
		if (bg_history_subscribe(c, req, name, len, &pos,
					 answer) != BG_OK) {
			bg_h_unsubscribe(c, name, len);
			bg_h_reply_error(c, req, BG_CODE_UNAVAILABLE,
					 "history is unavailable (the node "
					 "is stopping or busy); retry "
					 "later");
			goto out;
		}
	} else if (pos.given) {
		/* No history here: nothing can be recovered, and the
		 * client is told so. */
		reply_subscribed(c, req, json_pack("{s:s, s:b}", "channel",
						   name, "recovered", 0),
				 answer, name, len);
	} else {
		reply_subscribed(c, req, json_pack("{s:s}", "channel", name),
				 answer, name, len);
	}
	bg_forward_lifecycle(c, BG_FORWARD_SUBSCRIBE, "subscribe", name);
out:
	json_decref(answer);
	return GO_ON;
}

static enum bg_code
on_unsubscribe(const struct bg_hook_args *a)
{
	struct bg_conn *c = a->c;
	struct bg_hook_args hook = { .c = c, .req = a->req };
	const char *name;
	size_t len;

	if ((name = bg_h_channel_arg(c, a->req, &len)) == NULL)
		return GO_ON;
	if (bg_h_subscribed(c, name, len)) {
		bg_h_unsubscribe(c, name, len);
		hook.channel = name;
		bg_handlers_run(BG_ON_UNSUBSCRIBE, &hook);
		bg_forward_lifecycle(c, BG_FORWARD_UNSUBSCRIBE, "unsubscribe",
				     name);
	}
	reply_channel(c, a->req, name);
	return GO_ON;
}

static enum bg_code
on_store(const struct bg_hook_args *a)
{
	struct bg_conn *c = a->c;
	char msg[96];

	if (!json_is_object(a->req->data)) {
		bg_h_reply_error(c, a->req, BG_CODE_BAD_MESSAGE,
				 "store data must be an object");
		return GO_ON;
	}
	if (bg_h_store(c, a->req->data) != BG_OK) {
		snprintf(msg, sizeof(msg), "the store would exceed %zu bytes",
			 bg_h_config(c)->max_store_bytes);
		bg_h_reply_error(c, a->req, BG_CODE_BAD_MESSAGE, msg);
		return GO_ON;
	}
	bg_h_reply_ok(c, a->req, NULL);
	bg_handlers_run(BG_ON_STORE, a);
	bg_forward_lifecycle_data(c, BG_FORWARD_STORE, "store", a->req->data);
	return GO_ON;
}

static enum bg_code
on_ping(const struct bg_hook_args *a)
{
	size_t len = 0;
	char *s;

	if (a->req->callback_id != NULL) {
		bg_h_reply_ok(a->c, a->req, NULL);
		return GO_ON;
	}
	s = bg_proto_pong(&len);
	bg_h_send_json(a->c, s, len);
	return GO_ON;
}

static enum bg_code
on_publish(const struct bg_hook_args *a)
{
	struct bg_conn *c = a->c;
	const struct bg_request *req = a->req;
	const struct bg_config *cfg = bg_h_config(c);
	json_t *ev = json_object_get(req->data, "event");
	json_t *b, *data, *empty;
	const char *name, *refusal;
	struct bg_msg *m;
	enum bg_code code;
	char err[160];
	size_t len;

	if (!json_is_object(req->data)) {
		bg_h_reply_error(c, req, BG_CODE_BAD_MESSAGE,
				 "publish data must be an object");
		return GO_ON;
	}
	if ((name = bg_h_channel_arg(c, req, &len)) == NULL)
		return GO_ON;
	refusal = bg_h_private_refusal(c, name);
	if (cfg->client_publish == BG_PUBLISH_NONE ||
	    (cfg->client_publish == BG_PUBLISH_SUBSCRIBED &&
	     !bg_h_subscribed(c, name, len)) || refusal != NULL) {
		bg_h_reply_error(c, req, BG_CODE_NOT_ALLOWED,
				 "publishing to this channel is not "
				 "allowed");
		return GO_ON;
	}
	/* Only channel, event and data: a client cannot target others. */
	data = json_object_get(req->data, "data");
	empty = data ? NULL : json_object();
	b = json_pack("{s:s, s:O, s:O}", "channel", name, "event",
		      ev ? ev : json_null(), "data", data ? data : empty);
	json_decref(empty);
	m = b ? bg_proto_broadcast_opt(b, bg_h_id(c),
				       bg_h_wants_body(c) ?
				       BG_PROTO_BODY : 0, &code, err,
				       sizeof(err)) : NULL;
	json_decref(b);
	if (m == NULL) {
		bg_h_reply_error(c, req, b ? code : BG_CODE_INTERNAL,
				 b ? err : "out of memory");
		return GO_ON;
	}
	switch (bg_h_publish(c, m)) {
	case BG_OK:
		break;
	case BG_ERR:
		bg_msg_unref(m);
		bg_h_reply_error(c, req, BG_CODE_BAD_MESSAGE,
				 "too large for RabbitMQ");
		return GO_ON;
	case BG_H_BUSY:
		bg_msg_unref(m);
		bg_h_reply_error(c, req, BG_CODE_UNAVAILABLE,
				 "the server is busy delivering; retry "
				 "later");
		return GO_ON;
	default:
		bg_msg_unref(m);
		bg_h_reply_error(c, req, BG_CODE_UNAVAILABLE,
				 "broadcasting is unavailable (RabbitMQ "
				 "down or the bus is busy)");
		return GO_ON;
	}
	bg_h_reply_ok(c, req, NULL);
	return GO_ON;
}

static enum bg_code
on_authenticate(const struct bg_hook_args *a)
{
	struct bg_conn *c = a->c;
	const struct bg_request *req = a->req;
	const struct bg_config *cfg = bg_h_config(c);
	json_t *tok = json_object_get(req->data, "token");
	struct bg_identity id = { 0 };
	char err[160];

	if (cfg->auth_secret[0] == '\0') {
		/* No tokens here: the application decides, e.g. from the
		 * Django session cookie, and answers the callback. */
		if (cfg->forward_exchange[0] == '\0')
			bg_h_reply_error(c, req, BG_CODE_AUTH_FAILED,
					 "authentication is not "
					 "configured on this server");
		else
			bg_forward_request(c, req, true);
		return GO_ON;
	}
	if (!json_is_string(tok)) {
		bg_h_reply_error(c, req, BG_CODE_AUTH_FAILED,
				 "data.token must be a string");
		return GO_ON;
	}
	if (bg_auth_verify_jwt_rotating(cfg->auth_secret,
					cfg->auth_previous_secret,
					json_string_value(tok),
					(int64_t)time(NULL), &id, err,
					sizeof(err)) != BG_OK) {
		bg_h_reply_error(c, req, BG_CODE_AUTH_FAILED, err);
		return GO_ON;
	}
	bg_h_authenticated(c, &id, req);
	bg_forward_authenticated(c);
	return GO_ON;
}

int
bg_builtin_register(char *err, size_t errlen)
{
	static const struct bg_handler builtins[] = {
		{ BG_ON_EVENT, "subscribe", NULL, on_subscribe },
		{ BG_ON_EVENT, "unsubscribe", NULL, on_unsubscribe },
		{ BG_ON_EVENT, "store", NULL, on_store },
		{ BG_ON_EVENT, "ping", NULL, on_ping },
		{ BG_ON_EVENT, "publish", NULL, on_publish },
		{ BG_ON_EVENT, "authenticate", NULL, on_authenticate },
		{ BG_ON_EVENT, "history", NULL, bg_history_on_event },
	};

	for (size_t i = 0; i < sizeof(builtins) / sizeof(builtins[0]); i++)
		if (bg_handlers_register(&builtins[i], err, errlen) != BG_OK)
			return BG_ERR;
	return BG_OK;
}
