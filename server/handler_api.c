/*
 * handler_api.c - the server's side of the handler API
 * (handlers/bagou_handler.h): thin functions over struct bg_conn,
 * struct bg_worker and the bus, so that handlers/ never sees them.
 *
 * Every function taking a connection runs on the worker that owns it:
 * debug builds assert it (a zeroed connection without a worker, as the
 * unit tests build, has no owner to check).
 */
#include "handlers/bagou_handler.h"

#include <stdlib.h>
#include <string.h>

#include "amqp/bus.h"
#include "amqp/history.h"
#include "server/conn.h"
#include "server/presence.h"
#include "server/worker.h"

_Static_assert(BG_H_BUSY == BG_BUS_BUSY, "one busy status");

#define OWNED(c) do { \
	if ((c)->w != NULL) \
		bg_assert_owner((c)->w->owner); \
} while (0)

const char *
bg_h_id(const struct bg_conn *c)
{
	OWNED(c);
	return c->id;
}

const char *
bg_h_node(const struct bg_conn *c)
{
	OWNED(c);
	return c->w->srv->node_id;
}

const char *
bg_h_user(const struct bg_conn *c)
{
	OWNED(c);
	return c->ident.user;
}

const char *
bg_h_user_info(const struct bg_conn *c)
{
	OWNED(c);
	return c->ident.info;
}

const struct bg_identity *
bg_h_identity(const struct bg_conn *c)
{
	OWNED(c);
	return &c->ident;
}

const char *
bg_h_cookie(const struct bg_conn *c)
{
	OWNED(c);
	return c->cookie;
}

bool
bg_h_closing(const struct bg_conn *c)
{
	OWNED(c);
	return c->closing;
}

const struct bg_config *
bg_h_config(const struct bg_conn *c)
{
	OWNED(c);
	return bg_server_cfg(c->w->srv);
}

void
bg_h_authenticated(struct bg_conn *c, struct bg_identity *id,
		   const struct bg_request *req)
{
	OWNED(c);
	bg_conn_authenticated(c, id, req);
}

const char *
bg_h_private_refusal(const struct bg_conn *c, const char *channel)
{
	const char *prefix;

	OWNED(c);
	if (bg_presence_is_channel(bg_server_cfg(c->w->srv), channel)) {
		if (c->ident.user == NULL)
			return "presence channel: authenticate first";
		if (!bg_auth_channel_allowed(&c->ident, channel))
			return "presence channel: not in your token's "
			       "channels";
		return NULL;
	}
	prefix = bg_server_cfg(c->w->srv)->private_prefix;
	if (prefix[0] == '\0' ||
	    strncmp(channel, prefix, strlen(prefix)) != 0)
		return NULL;
	if (c->ident.user == NULL)
		return "private channel: authenticate first";
	if (!bg_auth_channel_allowed(&c->ident, channel))
		return "private channel: not in your token's channels";
	return NULL;
}

const char *
bg_h_channel_arg(struct bg_conn *c, const struct bg_request *req,
		 size_t *len)
{
	json_t *ch = json_object_get(req->data, "channel");

	OWNED(c);
	if (!json_is_string(ch) ||
	    !bg_proto_channel_valid(json_string_value(ch),
				    json_string_length(ch))) {
		bg_h_reply_error(c, req, BG_CODE_INVALID_CHANNEL,
				 "data.channel must be 1-200 printable "
				 "ASCII bytes without space * # \" \\");
		return NULL;
	}
	*len = json_string_length(ch);
	return json_string_value(ch);
}

uint32_t
bg_h_channel_count(const struct bg_conn *c)
{
	OWNED(c);
	return c->n_subs;
}

const char *
bg_h_channel(const struct bg_conn *c, uint32_t i)
{
	OWNED(c);
	return i < c->n_subs ? c->subs[i]->chan->name : NULL;
}

bool
bg_h_subscribed(const struct bg_conn *c, const char *channel, size_t len)
{
	OWNED(c);
	return bg_conn_is_subscribed(c, channel, len);
}

enum bg_code
bg_h_subscribe(struct bg_conn *c, const char *channel, size_t len,
	       bool *added)
{
	OWNED(c);
	return bg_conn_subscribe(c, channel, len, added);
}

void
bg_h_unsubscribe(struct bg_conn *c, const char *channel, size_t len)
{
	OWNED(c);
	bg_conn_unsubscribe(c, channel, len);
}

bool
bg_h_hold(struct bg_conn *c, const char *channel, size_t len,
	  uint32_t token)
{
	struct bg_chan_sub *s;

	OWNED(c);
	s = bg_conn_find_sub(c, channel, len);
	if (s == NULL)
		return false;
	s->hold = token;
	return true;
}

uint32_t
bg_h_held(const struct bg_conn *c, const char *channel, size_t len)
{
	struct bg_chan_sub *s;

	OWNED(c);
	s = bg_conn_find_sub(c, channel, len);
	return s != NULL ? s->hold : 0;
}

bool
bg_h_history_kept(const struct bg_conn *c, const char *channel)
{
	OWNED(c);
	return bg_history_match(bg_bus_history(c->w->srv->bus), channel);
}

bool
bg_h_presence_channel(const struct bg_conn *c, const char *channel)
{
	OWNED(c);
	return bg_presence_is_channel(bg_server_cfg(c->w->srv), channel);
}

void
bg_h_presence_subscribe(struct bg_conn *c, const struct bg_request *req,
			const char *channel)
{
	OWNED(c);
	bg_presence_subscribe(c, req, channel);
}

json_t *
bg_h_store_get(const struct bg_conn *c)
{
	OWNED(c);
	return c->store;
}

int
bg_h_store(struct bg_conn *c, json_t *obj)
{
	OWNED(c);
	return bg_conn_store(c, obj);
}

void
bg_h_reply_ok(struct bg_conn *c, const struct bg_request *req,
	      json_t *extra)
{
	OWNED(c);
	bg_conn_reply_ok(c, req, extra);
}

void
bg_h_reply_error(struct bg_conn *c, const struct bg_request *req,
		 enum bg_code code, const char *message)
{
	OWNED(c);
	bg_conn_reply_error(c, req, code, message);
}

void
bg_h_reply_subscribed(struct bg_conn *c, const struct bg_request *req,
		      json_t *extra, const char *channel, size_t len)
{
	OWNED(c);
	bg_conn_reply_subscribed(c, req, extra, channel, len);
}

void
bg_h_send_event(struct bg_conn *c, const char *event, json_t *data)
{
	OWNED(c);
	bg_conn_send_event(c, event, data);
}

void
bg_h_send_json(struct bg_conn *c, char *json, size_t len)
{
	OWNED(c);
	bg_conn_send_json(c, json, len);
}

void
bg_h_send_frame(struct bg_conn *c, struct bg_msg *m, uint32_t frame)
{
	struct bg_wframe *f;

	OWNED(c);
	f = calloc(1, sizeof(*f));
	if (f == NULL) {
		bg_conn_fail(c, 1011, "out of memory");
		return;
	}
	f->refs = 1;
	f->msg = m;
	bg_msg_ref(m);
	bg_conn_push(c, f, m->frames[frame].data, m->frames[frame].len,
		     true);
	bg_wframe_unref(f);
}

void
bg_h_close(struct bg_conn *c, uint16_t code)
{
	OWNED(c);
	bg_conn_begin_close(c, code);
}

void
bg_h_fail(struct bg_conn *c, uint16_t code, const char *why)
{
	OWNED(c);
	bg_conn_fail(c, code, why);
}

bool
bg_h_wants_body(const struct bg_conn *c)
{
	OWNED(c);
	return bg_bus_wants_body(c->w->srv->bus);
}

int
bg_h_publish(struct bg_conn *c, struct bg_msg *m)
{
	OWNED(c);
	return bg_bus_publish(c->w->srv->bus, m);
}

int
bg_h_post(struct bg_conn *c, struct bg_msg *m)
{
	OWNED(c);
	return bg_bus_request(c->w->srv->bus, m);
}

int
bg_h_post_job(struct bg_conn *c, struct bg_msg *m, bg_h_job_fn on_bus,
	      bg_h_answer_fn on_answer)
{
	OWNED(c);
	m->job_fn = on_bus;
	m->answer_fn = on_answer;
	m->reply_worker = c->w->index;
	return bg_bus_request(c->w->srv->bus, m);
}

int
bg_h_worker_index(const struct bg_conn *c)
{
	OWNED(c);
	return c->w->index;
}

struct bg_conn *
bg_h_find(struct bg_worker *w, const char *id)
{
	return bg_worker_conn(w, id); /* asserts w's thread */
}

void
bg_h_forwarded(struct bg_conn *c, const char *callback_id)
{
	OWNED(c);
	bg_stat_add(&c->w->stats.forwarded_events, 1);
	if (callback_id != NULL)
		bg_fwd_pending_add(c->w->fwd_pending, c->id, callback_id,
				   bg_mono_us());
}
