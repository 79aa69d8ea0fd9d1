/*
 * history.c - subscribe on history channels, the history event, and the
 * bus's answers (handlers/history.h). Worker threads; built on the
 * handler API alone (the request's format is common/histreq.h).
 *
 * The ordering argument (docs/DESIGN.md, history): a subscription is
 * made at once but held; the request goes to the bus through the same
 * outbox as publishes; the bus answers it into this worker's ring
 * between two broadcasts. Every broadcast the held subscription skipped
 * was pushed before the answer, so it is at or below the answer's top
 * and, when it is after the client's position, in the replay; every
 * broadcast after the answer is live. Hence each missed broadcast
 * exactly once, oldest first, before any live one.
 */
#include "handlers/history.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/histreq.h"
#include "handlers/bagou_handler.h"

#define GO_ON BG_CODE_COUNT

/* Hold tokens: a later subscribe to the same channel gets a new one, so
 * a stale answer never releases it. */
static __thread uint32_t next_hold;

int
bg_history_parse_pos(json_t *data, const char *field,
		     struct bg_hist_pos *pos, char *err, size_t errlen)
{
	json_t *v = json_is_object(data) ? json_object_get(data, field) : NULL;
	json_t *e, *o;

	memset(pos, 0, sizeof(*pos));
	if (v == NULL || json_is_null(v))
		return BG_OK;
	e = json_object_get(v, "epoch");
	o = json_object_get(v, "offset");
	if (!json_is_object(v) || !json_is_string(e) ||
	    json_string_length(e) == 0 || json_string_length(e) > 64 ||
	    !json_is_integer(o) || json_integer_value(o) < 0 ||
	    (uint64_t)json_integer_value(o) > BG_HIST_OFFSET_MAX) {
		snprintf(err, errlen, "data.%s must be {\"epoch\": a string "
			 "of 1 to 64 bytes, \"offset\": an integer from 0 "
			 "to 2^53-1}", field);
		return BG_ERR;
	}
	pos->given = true;
	memcpy(pos->epoch, json_string_value(e), json_string_length(e) + 1);
	pos->offset = (uint64_t)json_integer_value(o);
	return BG_OK;
}

static struct bg_msg *
new_request(struct bg_conn *c, enum bg_hist_kind kind, const char *name,
	    const struct bg_request *req, const struct bg_hist_pos *pos)
{
	struct bg_msg *m = bg_hist_req_new(kind, name);
	struct bg_hist_req *r;

	if (m == NULL)
		return NULL;
	r = bg_hist_req_of(m);
	r->worker = bg_h_worker_index(c);
	snprintf(r->client, sizeof(r->client), "%s", bg_h_id(c));
	if (req->callback_id != NULL &&
	    (r->callback_id = strdup(req->callback_id)) == NULL) {
		bg_msg_unref(m);
		return NULL;
	}
	if (pos != NULL && pos->given) {
		r->has_pos = true;
		snprintf(r->epoch, sizeof(r->epoch), "%s", pos->epoch);
		r->offset = pos->offset;
	}
	return m;
}

int
bg_history_subscribe(struct bg_conn *c, const struct bg_request *req,
		     const char *name, size_t len,
		     const struct bg_hist_pos *pos, json_t *answer)
{
	struct bg_msg *m;

	if (!bg_h_subscribed(c, name, len))
		return BG_ERR;
	m = new_request(c, BG_HIST_SUBSCRIBE, name, req, pos);
	if (m == NULL)
		return BG_ERR;
	if (++next_hold == 0)
		next_hold = 1;
	bg_hist_req_of(m)->hold = next_hold;
	if (answer != NULL && json_object_size(answer) > 0)
		bg_hist_req_of(m)->answer = json_incref(answer);
	bg_h_hold(c, name, len, next_hold);
	if (bg_h_post(c, m) != BG_OK) {
		bg_h_hold(c, name, len, 0);
		bg_msg_unref(m);
		return BG_ERR;
	}
	return BG_OK;
}

enum bg_code
bg_history_on_event(const struct bg_hook_args *a)
{
	struct bg_conn *c = a->c;
	const struct bg_request *req = a->req;
	json_t *lim = json_object_get(req->data, "limit");
	struct bg_hist_pos pos;
	const char *name, *refusal;
	struct bg_msg *m;
	char err[160];
	size_t len;

	if ((name = bg_h_channel_arg(c, req, &len)) == NULL)
		return GO_ON;
	if (lim != NULL && !json_is_null(lim) &&
	    (!json_is_integer(lim) || json_integer_value(lim) < 0)) {
		bg_h_reply_error(c, req, BG_CODE_BAD_MESSAGE,
				 "data.limit must be an integer from 0 "
				 "(larger values are clamped to [history] "
				 "size)");
		return GO_ON;
	}
	if (bg_history_parse_pos(req->data, "since", &pos, err,
				 sizeof(err)) != BG_OK) {
		bg_h_reply_error(c, req, BG_CODE_BAD_MESSAGE, err);
		return GO_ON;
	}
	if ((refusal = bg_h_private_refusal(c, name)) != NULL) {
		bg_h_reply_error(c, req, BG_CODE_FORBIDDEN, refusal);
		return GO_ON;
	}
	if (!bg_h_history_kept(c, name)) {
		bg_h_reply_error(c, req, BG_CODE_NOT_ALLOWED,
				 "this channel keeps no history ([history] "
				 "channels)");
		return GO_ON;
	}
	m = new_request(c, BG_HIST_HISTORY, name, req, &pos);
	if (m == NULL) {
		bg_h_reply_error(c, req, BG_CODE_INTERNAL, "out of memory");
		return GO_ON;
	}
	if (lim != NULL && json_is_integer(lim))
		bg_hist_req_of(m)->limit =
			json_integer_value(lim) > UINT32_MAX ? UINT32_MAX :
			(uint32_t)json_integer_value(lim);
	if (bg_h_post(c, m) != BG_OK) {
		bg_msg_unref(m);
		bg_h_reply_error(c, req, BG_CODE_UNAVAILABLE,
				 "history is unavailable (the node is "
				 "stopping or busy); retry later");
	}
	return GO_ON;
}

/* True when p was not meant for c ("exclude"). */
static bool
excluded(const struct bg_hist_pub *p, const struct bg_conn *c)
{
	return p->m->exclude != NULL &&
	       strcmp(p->m->exclude, bg_h_id(c)) == 0;
}

/* The missed publications, queued before anything live. */
static void
replay(struct bg_conn *c, const struct bg_hist_req *r)
{
	for (uint32_t i = 0; i < r->n_pubs; i++) {
		const struct bg_hist_pub *p = &r->pubs[i];

		if (excluded(p, c))
			continue;
		bg_h_send_frame(c, p->m, p->frame);
		if (bg_h_closing(c))
			return;
	}
}

static json_t *
publications(const struct bg_conn *c, const struct bg_hist_req *r)
{
	json_t *list = json_array();

	for (uint32_t i = 0; list != NULL && i < r->n_pubs; i++) {
		size_t len;
		const char *text;

		if (excluded(&r->pubs[i], c))
			continue;
		text = bg_hist_pub_json(&r->pubs[i], &len);
		json_array_append_new(list, json_loadb(text, len, 0, NULL));
	}
	return list;
}

void
bg_history_answered(struct bg_worker *w, struct bg_msg *m)
{
	struct bg_hist_req *r = bg_hist_req_of(m);
	struct bg_request req = { .callback_id = r->callback_id };
	struct bg_conn *c = bg_h_find(w, r->client);
	size_t len = strlen(r->channel);
	uint32_t held;
	json_t *extra;

	if (c == NULL || bg_h_closing(c)) {
		bg_msg_unref(m);
		return;
	}
	extra = json_pack("{s:s, s:s, s:I}", "channel", r->channel, "epoch",
			  r->cur_epoch, "offset", (json_int_t)r->top);
	if (r->kind == BG_HIST_SUBSCRIBE) {
		req.event = "subscribe";
		held = bg_h_held(c, r->channel, len);
		/* Unsubscribed meanwhile, or subscribed again (a newer hold
		 * answers that one): no replay, a gap if one was asked. */
		if (held != r->hold)
			r->recovered = false;
		else
			replay(c, r);
		if (held == r->hold)
			bg_h_hold(c, r->channel, len, 0);
		if (r->has_pos && extra != NULL)
			json_object_set_new(extra, "recovered",
					    json_boolean(r->recovered));
		if (r->answer != NULL && extra != NULL)
			json_object_update_missing(extra, r->answer);
		if (!bg_h_closing(c))
			bg_h_reply_ok(c, &req, extra);
	} else {
		req.event = "history";
		if (extra != NULL) {
			json_object_set_new(extra, "publications",
					    publications(c, r));
			if (!r->recovered)
				json_object_set_new(extra, "gap",
						    json_true());
		}
		if (r->unavailable)
			bg_h_reply_error(c, &req, BG_CODE_UNAVAILABLE,
					 "history: out of memory");
		else
			bg_h_reply_ok(c, &req, extra);
	}
	json_decref(extra);
	bg_msg_unref(m);
}
