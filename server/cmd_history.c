/*
 * cmd_history.c - the server API's history command (cmd_history.h). Bus
 * thread.
 *
 * The request goes to the bus's outbox like a client's history event
 * (the store is the bus thread's alone, amqp/history.h), so it comes
 * after every broadcast published before it; the bus answers it when it
 * can (at once, after catching up with the stream, after reading the
 * stream back) and calls on_answered, maybe in the middle of handling a
 * delivery: the answer goes out from a control-plane job, on a later
 * turn of the bus loop (a reply published on the API queue may find
 * the link broken; that must not happen inside a delivery). Nothing
 * here waits.
 */
#include "server/cmd_history.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "amqp/bus.h"
#include "amqp/control.h"
#include "amqp/history.h"
#include "common/bg.h"
#include "common/proto.h"
#include "server/server.h"

/* A request on its way: whom to tell, and then the answer. */
struct ask {
	struct bg_control_job job;  /* first */
	struct bg_control *ctl;
	bg_cmd_done_fn done;
	void *arg;
	unsigned int status;
	json_t *body;
};

static void
fail(struct bg_control *ctl, bg_cmd_done_fn done, void *arg,
     unsigned int status, const char *code, const char *message)
{
	done(ctl, status, json_pack("{s:{s:s,s:s}}", "error", "code", code,
				    "message", message), arg);
}

/* An integer argument from 0 to max: a JSON integer, or a string of
 * decimal digits (a query string's). 0 when absent (or ""), 1 with *out
 * set, -1 when malformed or out of range. */
static int
number(const json_t *v, uint64_t max, uint64_t *out)
{
	const char *s;
	char *end;

	if (v == NULL)
		return 0;
	if (json_is_integer(v)) {
		if (json_integer_value(v) < 0 ||
		    (uint64_t)json_integer_value(v) > max)
			return -1;
		*out = (uint64_t)json_integer_value(v);
		return 1;
	}
	if (!json_is_string(v))
		return -1;
	s = json_string_value(v);
	if (s[0] == '\0' && json_string_length(v) == 0)
		return 0;
	if (s[0] < '0' || s[0] > '9' || strlen(s) != json_string_length(v))
		return -1;
	errno = 0;
	*out = strtoull(s, &end, 10);
	return errno == 0 && *end == '\0' && *out <= max ? 1 : -1;
}

/* The answer: the history event's callback data. */
static json_t *
answer(const struct bg_hist_req *r)
{
	json_t *o = json_pack("{s:b, s:s, s:s, s:I, s:[]}", "success", 1,
			      "channel", r->channel, "epoch", r->cur_epoch,
			      "offset", (json_int_t)r->top, "publications");
	json_t *list = o ? json_object_get(o, "publications") : NULL;

	for (uint32_t i = 0; list != NULL && i < r->n_pubs; i++) {
		size_t n;
		const char *text = bg_hist_pub_json(&r->pubs[i], &n);
		json_array_append_new(list, json_loadb(text, n, 0, NULL));
	}
	if (o != NULL && !r->recovered)
		json_object_set_new(o, "gap", json_true());
	return o;
}

static void
ask_run(struct bg_control *ctl, struct bg_control_job *job)
{
	struct ask *a = (struct ask *)job;

	a->done(ctl, a->status, a->body, a->arg);
	free(a);
}

/* The node stopped first, with the answer on its way: the asker frees
 * what it holds. */
static void
ask_drop(struct bg_control_job *job)
{
	struct ask *a = (struct ask *)job;

	a->done(NULL, a->status, a->body, a->arg);
	free(a);
}

/* The node stopped before the bus answered (the request is freed
 * unanswered at teardown). */
static void
ask_forget(void *arg)
{
	struct ask *a = arg;

	fail(NULL, a->done, a->arg, 503, "unavailable", "the node stopped "
	     "before answering");
	free(a);
}

/* The bus answered r: back to whoever asked, from a job. */
static void
on_answered(struct bg_hist_req *r, void *arg)
{
	struct ask *a = arg;

	a->body = r->unavailable ? NULL : answer(r);
	a->status = 200;
	if (a->body == NULL) {
		a->status = 503;
		a->body = json_pack("{s:{s:s,s:s}}", "error", "code",
				    "unavailable", "message", "out of memory");
	}
	a->job.run = ask_run;
	a->job.drop = ask_drop;
	if (bg_control_post(a->ctl, &a->job) != BG_OK)
		ask_run(a->ctl, &a->job); /* stopping: at once */
}

void
bg_cmd_history(struct bg_control *ctl, json_t *args, bg_cmd_done_fn done,
	       void *arg)
{
	struct bg_server *srv = bg_control_server(ctl);
	json_t *ch = json_object_get(args, "channel");
	json_t *ep = json_object_get(args, "since_epoch");
	uint64_t limit = BG_HIST_DEFAULT_LIMIT, offset = 0;
	int has_limit, has_off, has_ep = 0;
	struct bg_hist_req *r;
	struct ask *a;
	struct bg_msg *m;
	const char *k;
	json_t *v;

	json_object_foreach(args, k, v) {
		if (strcmp(k, "channel") != 0 && strcmp(k, "limit") != 0 &&
		    strcmp(k, "since_epoch") != 0 &&
		    strcmp(k, "since_offset") != 0) {
			fail(ctl, done, arg, 400, "bad_message", "expected "
			     "channel, limit, since_epoch, since_offset (no "
			     "other argument)");
			return;
		}
	}
	if (!json_is_string(ch) ||
	    !bg_proto_channel_valid(json_string_value(ch),
				    json_string_length(ch))) {
		fail(ctl, done, arg, 400, "invalid_channel", "channel must be "
		     "1-200 printable ASCII bytes without space * # \" \\");
		return;
	}
	has_limit = number(json_object_get(args, "limit"), UINT64_MAX,
			   &limit);
	if (has_limit < 0) {
		fail(ctl, done, arg, 400, "bad_message", "limit must be an "
		     "integer from 0 (larger values are clamped to [history] "
		     "size)");
		return;
	}
	if (json_is_string(ep) && json_string_length(ep) > 0)
		has_ep = 1;
	else if (ep != NULL && !(json_is_string(ep) &&
				 json_string_length(ep) == 0))
		has_ep = -1;
	has_off = number(json_object_get(args, "since_offset"),
			 BG_HIST_OFFSET_MAX, &offset);
	if (has_ep < 0 || has_off < 0 || has_ep != has_off ||
	    (has_ep && (json_string_length(ep) > BG_HIST_EPOCH_MAX ||
			strlen(json_string_value(ep)) !=
			json_string_length(ep)))) {
		fail(ctl, done, arg, 400, "bad_message", "since_epoch (1 to 64 "
		     "bytes) and since_offset (an integer from 0 to 2^53-1) "
		     "go together");
		return;
	}
	if (!bg_history_match(bg_bus_history(srv->bus),
			      json_string_value(ch))) {
		fail(ctl, done, arg, 404, "not_found", "this channel keeps no "
		     "history ([history] channels)");
		return;
	}
	m = bg_hist_req_new(BG_HIST_API, json_string_value(ch));
	a = m != NULL ? calloc(1, sizeof(*a)) : NULL;
	if (a == NULL) {
		bg_msg_unref(m);
		fail(ctl, done, arg, 503, "unavailable", "out of memory");
		return;
	}
	a->ctl = ctl;
	a->done = done;
	a->arg = arg;
	r = bg_hist_req_of(m);
	r->worker = -1;
	r->limit = limit > UINT32_MAX ? UINT32_MAX : (uint32_t)limit;
	if (has_ep) {
		r->has_pos = true;
		memcpy(r->epoch, json_string_value(ep),
		       json_string_length(ep) + 1); /* <= 64 */
		r->offset = offset;
	}
	r->answered = on_answered;
	r->forget = ask_forget;
	r->arg = a;
	if (bg_bus_request(srv->bus, m) != BG_OK) {
		r->arg = NULL;
		bg_msg_unref(m);
		free(a);
		fail(ctl, done, arg, 503, "unavailable", "the node is stopping "
		     "or busy; retry later");
	}
}
