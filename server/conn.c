/*
 * conn.c - a WebSocket connection's state, its outbound queue and the
 * client-facing reply funnel. Worker thread only (the owner of the
 * connection); no locks.
 *
 * Outbound: every frame (broadcasts shared with other connections, and
 * replies of its own) goes through one bounded queue, so order is kept and
 * the byte limit covers everything. A write sends as many queued frames as
 * fit in one lws_write(LWS_WRITE_RAW): one send() for many messages.
 */
#include "server/conn.h"

#include <libwebsockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "amqp/bus.h"
#include "common/frame.h"
#include "common/log.h"
#include "handlers/forward.h"
#include "handlers/handlers.h"
#include "server/worker.h"

#define ABUSE_CLOSE_MS 10000   /* rate-limited this long: close 1008 */
#define STREAK_GAP_MS 1000     /* no drop for this long ends a streak */

static uint64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void
bg_wframe_unref(struct bg_wframe *f)
{
	if (--f->refs > 0)
		return;
	bg_msg_unref(f->msg);
	free(f->block);
	free(f);
}

/* ------------------------------------------------------------- queue */

static bool
q_grow(struct bg_conn *c)
{
	uint32_t cap = c->q_cap ? c->q_cap * 2 : 4;
	struct bg_out *q = malloc(cap * sizeof(*q));

	if (q == NULL)
		return false;
	for (uint32_t i = 0; i < c->q_count; i++)
		q[i] = c->q[(c->q_head + i) & (c->q_cap - 1)];
	free(c->q);
	c->q = q;
	c->q_cap = cap;
	c->q_head = 0;
	return true;
}

static void
q_pop(struct bg_conn *c)
{
	struct bg_out *e = &c->q[c->q_head];

	c->q_bytes -= e->len;
	bg_wframe_unref(e->f);
	c->q_head = (c->q_head + 1) & (c->q_cap - 1);
	c->q_count--;
}

static void
q_clear(struct bg_conn *c)
{
	while (c->q_count > 0)
		q_pop(c);
	c->q_off = 0;
	free(c->q);
	c->q = NULL;
	c->q_cap = 0;
	c->q_head = 0;
}

static void
want_writable(struct bg_conn *c)
{
	if (!c->want_write) {
		c->want_write = true;
		lws_callback_on_writable(c->wsi);
	}
}

/* Closes at once, from outside lws's callbacks for this connection: the
 * close frame goes out if the socket takes it, then lws frees the wsi. */
static void
kill_async(struct bg_conn *c, uint16_t code, const char *why)
{
	c->closing = true;
	c->close_code = code;
	lws_close_reason(c->wsi, (enum lws_close_status)code,
			 (unsigned char *)why, strlen(why));
	lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
	/* lws runs its timers only after one of its own events: the worker
	 * wakes it once its current batch is done (bg_worker_kick). */
	c->w->kick = true;
}

bool
bg_conn_push(struct bg_conn *c, struct bg_wframe *f, const uint8_t *data,
	     uint32_t len, bool direct)
{
	struct bg_worker *w = c->w;

	if (c->closing)
		return false;
	if (c->q_bytes + len > w->srv->cfg->max_queued_bytes && c->in_dirty &&
	    !c->want_write && !lws_partial_buffered(c->wsi)) {
		/* Queued this batch but never offered to the socket yet: the
		 * limit is about what the client leaves unread, so write
		 * first. */
		if (bg_conn_write(c) < 0) {
			kill_async(c, 1011, "write failed");
			return false;
		}
	}
	/* One message always fits: the limit bounds a backlog. */
	if (c->q_count > 0 &&
	    c->q_bytes + len > w->srv->cfg->max_queued_bytes) {
		/* A slow consumer must not hold memory or delay others. */
		bg_stat_add(&w->stats.slow_consumer_closes, 1);
		bg_log_info("client %s: %zu bytes queued, closing (4001)",
			    c->id, c->q_bytes + len);
		q_clear(c);
		kill_async(c, 4001, "slow consumer");
		return false;
	}
	if (c->q_count == c->q_cap && !q_grow(c)) {
		kill_async(c, 1011, "out of memory");
		return false;
	}
	c->q[(c->q_head + c->q_count) & (c->q_cap - 1)] =
		(struct bg_out){ .f = f, .data = data, .len = len };
	c->q_count++;
	c->q_bytes += len;
	f->refs++;
	if (direct && !c->want_write) {
		if (!c->in_dirty) {
			c->in_dirty = true;
			c->dirty_next = w->dirty;
			w->dirty = c;
		}
	} else {
		want_writable(c);
	}
	return true;
}

void
bg_conn_send_json(struct bg_conn *c, char *json, size_t len)
{
	struct bg_wframe *f;
	uint8_t *frame;
	size_t flen;

	if (json == NULL) {
		bg_log_error("client %s: reply lost: out of memory", c->id);
		return;
	}
	f = calloc(1, sizeof(*f));
	if (f != NULL)
		f->block = bg_frame_text(json, len, &frame, &flen);
	free(json);
	if (f == NULL || f->block == NULL) {
		free(f);
		bg_log_error("client %s: reply lost: out of memory", c->id);
		return;
	}
	f->refs = 1; /* ours, while pushing */
	bg_conn_push(c, f, frame, (uint32_t)flen, false);
	bg_wframe_unref(f);
}

int
bg_conn_write(struct bg_conn *c)
{
	struct bg_worker *w = c->w;
	uint8_t *buf = w->scratch + LWS_PRE;
	uint32_t sent = 0;
	size_t n = 0;

	c->want_write = false;
	if (c->q_count == 0) {
		if (c->closing) {
			lws_close_reason(c->wsi,
					 (enum lws_close_status)c->close_code,
					 NULL, 0);
			return -1;
		}
		return 0;
	}
	if (c->q_count == 1 || c->q[c->q_head].len - c->q_off >=
	    BG_WRITE_MAX / 2) {
		/* One frame (or a big one): straight from its shared bytes,
		 * at most BG_WRITE_MAX at a time so lws never copies. */
		struct bg_out *e = &c->q[c->q_head];
		n = e->len - c->q_off;
		if (n > BG_WRITE_MAX)
			n = BG_WRITE_MAX;
		if (lws_write(c->wsi, (uint8_t *)e->data + c->q_off, n,
			      LWS_WRITE_RAW) < 0)
			return -1;
		c->q_off += (uint32_t)n;
		if (c->q_off == e->len) {
			c->q_off = 0;
			q_pop(c);
			sent = 1;
		}
	} else {
		/* Many frames: gather whole frames into one send. */
		while (c->q_count > 0) {
			struct bg_out *e = &c->q[c->q_head];
			size_t part = e->len - c->q_off;
			if (n + part > BG_WRITE_MAX)
				break;
			memcpy(buf + n, e->data + c->q_off, part);
			n += part;
			c->q_off = 0;
			q_pop(c);
			sent++;
		}
		if (lws_write(c->wsi, buf, n, LWS_WRITE_RAW) < 0)
			return -1;
	}
	bg_stat_add(&w->stats.messages_sent, sent);
	if (c->q_count > 0 || c->closing)
		want_writable(c);
	return 0;
}

void
bg_conn_begin_close(struct bg_conn *c, uint16_t code)
{
	if (c->closing)
		return;
	c->closing = true;
	c->close_code = code;
	want_writable(c);
}

/* ------------------------------------------------------------ replies */

void
bg_conn_reply_ok(struct bg_conn *c, const struct bg_request *req,
		 json_t *extra)
{
	size_t len = 0;
	char *s;

	if (req->callback_id == NULL)
		return;
	s = bg_proto_callback_ok(req->callback_id, extra, &len);
	bg_conn_send_json(c, s, len);
}

void
bg_conn_reply_error(struct bg_conn *c, const struct bg_request *req,
		    enum bg_code code, const char *message)
{
	size_t len = 0;
	char *s;

	bg_stat_add(&c->w->stats.client_errors[code], 1);
	s = bg_proto_failure(req ? req->callback_id : NULL,
			     req ? req->event : NULL, code, message, &len);
	bg_conn_send_json(c, s, len);
}

/* ----------------------------------------------------- subscriptions */

static struct bg_chan_sub **
find_sub(const struct bg_conn *c, const char *channel, size_t len)
{
	struct bg_chan *ch = bg_chan_find(c->w->chans, channel, len);

	if (ch == NULL)
		return NULL;
	for (uint32_t i = 0; i < c->n_subs; i++)
		if (c->subs[i]->chan == ch)
			return &c->subs[i];
	return NULL;
}

bool
bg_conn_is_subscribed(const struct bg_conn *c, const char *channel,
		      size_t len)
{
	return find_sub(c, channel, len) != NULL;
}

enum bg_code
bg_conn_subscribe(struct bg_conn *c, const char *channel, size_t len,
		  bool *added)
{
	struct bg_worker *w = c->w;
	struct bg_chan_sub *s;

	*added = false;
	if (find_sub(c, channel, len) != NULL)
		return BG_CODE_COUNT; /* already: success */
	if (c->n_subs >= (uint32_t)w->srv->cfg->max_subscriptions)
		return BG_CODE_TOO_MANY_SUBSCRIPTIONS;
	if (c->n_subs == c->cap_subs) {
		uint32_t cap = c->cap_subs ? c->cap_subs * 2 : 2;
		struct bg_chan_sub **subs = realloc(c->subs,
						    cap * sizeof(*subs));
		if (subs == NULL)
			return BG_CODE_INTERNAL;
		c->subs = subs;
		c->cap_subs = cap;
	}
	s = bg_chan_subscribe(w->chans, channel, len, c);
	if (s == NULL)
		return BG_CODE_INTERNAL;
	c->subs[c->n_subs++] = s;
	bg_stat_add(&w->stats.subscriptions, 1);
	*added = true;
	return BG_CODE_COUNT;
}

static void
drop_sub(struct bg_conn *c, struct bg_chan_sub **slot)
{
	struct bg_chan_sub *s = *slot;

	*slot = c->subs[--c->n_subs];
	bg_chan_unsubscribe(c->w->chans, s);
	bg_stat_add(&c->w->stats.subscriptions, (uint64_t)-1);
}

void
bg_conn_unsubscribe(struct bg_conn *c, const char *channel, size_t len)
{
	struct bg_chan_sub **slot = find_sub(c, channel, len);

	if (slot != NULL)
		drop_sub(c, slot);
}

int
bg_conn_store(struct bg_conn *c, json_t *obj)
{
	json_t *next = c->store ? json_copy(c->store) : json_object();
	size_t size;

	if (next == NULL || json_object_update(next, obj) != 0) {
		json_decref(next);
		return BG_ERR;
	}
	size = json_dumpb(next, NULL, 0, JSON_COMPACT);
	if (size == 0 || size > c->w->srv->cfg->max_store_bytes) {
		json_decref(next);
		return BG_ERR;
	}
	json_decref(c->store);
	c->store = next;
	return BG_OK;
}

/* --------------------------------------------------------- lifecycle */

int
bg_conn_open(struct bg_conn *c, struct bg_worker *w, struct lws *wsi)
{
	size_t len = 0;
	char *s;
	int n;

	memset(c, 0, sizeof(*c));
	c->wsi = wsi;
	c->w = w;
	n = snprintf(c->id, sizeof(c->id), "%s-%d-%llu", w->srv->node_id,
		     w->index, (unsigned long long)++w->next_client);
	c->id_sub = bg_chan_subscribe(w->ids, c->id, (size_t)n, c);
	if (c->id_sub == NULL)
		return BG_ERR;
	c->next = w->conns;
	if (w->conns != NULL)
		w->conns->prev = c;
	w->conns = c;
	c->established = true;
	c->tokens = w->srv->cfg->burst;
	c->tokens_ms = now_ms();
	bg_stat_add(&w->stats.connections, 1);
	bg_stat_add(&w->stats.connections_total, 1);
	__atomic_add_fetch(&w->conns_gauge, 1, __ATOMIC_RELAXED);
	s = bg_proto_connect(c->id, &len);
	bg_conn_send_json(c, s, len);
	return BG_OK;
}

void
bg_conn_close(struct bg_conn *c)
{
	struct bg_worker *w = c->w;

	if (c->established) {
		struct bg_hook_args a = { .c = c };

		/* Hooks and the application still see its channels. */
		bg_handlers_run(BG_ON_CLOSE, &a);
		bg_forward_lifecycle(c, BG_FORWARD_CLOSE, "close", NULL);
		if (c->prev != NULL)
			c->prev->next = c->next;
		else
			w->conns = c->next;
		if (c->next != NULL)
			c->next->prev = c->prev;
		if (c->in_dirty) {
			struct bg_conn **pp = &w->dirty;
			while (*pp != c)
				pp = &(*pp)->dirty_next;
			*pp = c->dirty_next;
		}
		while (c->n_subs > 0)
			drop_sub(c, &c->subs[c->n_subs - 1]);
		bg_chan_unsubscribe(w->ids, c->id_sub);
		bg_stat_add(&w->stats.connections, (uint64_t)-1);
		__atomic_sub_fetch(&w->conns_gauge, 1, __ATOMIC_RELAXED);
		c->established = false;
	}
	q_clear(c);
	free(c->subs);
	free(c->rx);
	free(c->body);
	json_decref(c->store);
	bg_identity_clear(&c->ident);
	free(c->cookie);
	c->cookie = NULL;
	c->subs = NULL;
	c->rx = NULL;
	c->body = NULL;
	c->store = NULL;
	c->n_subs = c->cap_subs = 0;
}

void
bg_conn_receive(struct bg_conn *c, const char *buf, size_t len)
{
	struct bg_request req;
	bool close_now = false;
	char err[160];

	bg_stat_add(&c->w->stats.messages_received, 1);
	if (bg_proto_parse_request(buf, len, &req, err, sizeof(err)) !=
	    BG_OK) {
		if (bg_conn_rate_ok(c, &req, &close_now))
			bg_conn_reply_error(c, &req, BG_CODE_BAD_MESSAGE,
					    err);
	} else if (bg_conn_rate_ok(c, &req, &close_now)) {
		bg_handlers_dispatch(c, &req);
	}
	json_decref(req.root);
	if (close_now)
		bg_conn_begin_close(c, 1008);
}

bool
bg_conn_rate_ok(struct bg_conn *c, const struct bg_request *req,
		bool *close_now)
{
	const struct bg_config *cfg = c->w->srv->cfg;
	uint64_t now;

	if (cfg->rate <= 0)
		return true;
	now = now_ms();
	c->tokens += (double)(now - c->tokens_ms) * cfg->rate / 1000.0;
	if (c->tokens > cfg->burst)
		c->tokens = cfg->burst;
	c->tokens_ms = now;
	if (c->tokens >= 1.0) {
		c->tokens -= 1.0;
		if (now - c->last_drop_ms > STREAK_GAP_MS)
			c->limited_since_ms = 0;
		return true;
	}
	/* Over the limit: drop it, say so, and close on sustained abuse
	 * (a client that keeps sending past the limit for 10 s). */
	if (c->limited_since_ms == 0)
		c->limited_since_ms = now;
	c->last_drop_ms = now;
	bg_conn_reply_error(c, req, BG_CODE_RATE_LIMITED, "too many "
			    "messages: slow down");
	if (now - c->limited_since_ms >= ABUSE_CLOSE_MS) {
		bg_log_info("client %s: rate-limited for 10 s, closing "
			    "(1008)", c->id);
		*close_now = true;
	}
	return false;
}

void
bg_conn_send_event(struct bg_conn *c, const char *event, json_t *data)
{
	json_t *o = json_pack("{s:s, s:O}", "event", event,
			      "data", data ? data : json_null());
	char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;

	json_decref(o);
	bg_conn_send_json(c, s, s ? strlen(s) : 0);
}

int
bg_conn_broadcast(struct bg_conn *c, struct bg_msg *m)
{
	return bg_bus_publish(c->w->srv->bus, m) == BG_OK ? BG_OK : BG_AGAIN;
}

static void
drop_forbidden_private(struct bg_conn *c)
{
	const char *prefix = c->w->srv->cfg->private_prefix;
	size_t plen = strlen(prefix);

	if (plen == 0)
		return;
	for (uint32_t i = c->n_subs; i-- > 0;) {
		const char *name = c->subs[i]->chan->name;
		if (strncmp(name, prefix, plen) == 0 &&
		    !bg_auth_channel_allowed(&c->ident, name))
			drop_sub(c, &c->subs[i]);
	}
}

void
bg_conn_authenticated(struct bg_conn *c, struct bg_identity *id,
		      const struct bg_request *req)
{
	struct bg_hook_args a = { .c = c, .req = req };
	json_t *user, *extra;

	bg_identity_move(&c->ident, id);
	/* Another identity: private channels it may not read are left. */
	drop_forbidden_private(c);
	if (c->ident.exp > 0) {
		int64_t left = c->ident.exp - (int64_t)time(NULL);
		lws_set_timer_usecs(c->wsi, (lws_usec_t)(left > 0 ? left : 0) *
				    LWS_US_PER_SEC);
	} else {
		lws_set_timer_usecs(c->wsi, LWS_SET_TIMER_USEC_CANCEL);
	}
	if (req != NULL) {
		user = json_pack("{s:s}", "id", c->ident.user);
		if (user != NULL && c->ident.info != NULL)
			json_object_set_new(user, "info",
					    json_loads(c->ident.info, 0, NULL));
		extra = json_pack("{s:o}", "user", user ? user : json_null());
		bg_conn_reply_ok(c, req, extra);
		json_decref(extra);
	}
	bg_handlers_run(BG_ON_AUTHENTICATE, &a);
}

void
bg_conn_apply_auth(struct bg_conn *c, const char *auth_json)
{
	json_t *auth = json_loads(auth_json, 0, NULL);
	struct bg_identity id = { 0 };
	char err[160];

	if (bg_auth_from_json(auth, &id, err, sizeof(err)) == BG_OK) {
		bg_conn_authenticated(c, &id, NULL);
		bg_forward_authenticated(c);
	} else
		bg_log_warn("client %s: ignoring the application's auth "
			    "reply: %s", c->id, err);
	json_decref(auth);
}

void
bg_conn_token_at_connect(struct bg_conn *c, const char *token)
{
	const char *secret = c->w->srv->cfg->auth_secret;
	struct bg_identity id = { 0 };
	char err[160];
	size_t len = 0;
	char *s;

	if (bg_auth_verify_jwt(secret, token, (int64_t)time(NULL), &id, err,
			       sizeof(err)) == BG_OK) {
		bg_conn_authenticated(c, &id, NULL);
		return;
	}
	bg_stat_add(&c->w->stats.client_errors[BG_CODE_AUTH_FAILED], 1);
	s = bg_proto_failure(NULL, "connect", BG_CODE_AUTH_FAILED, err, &len);
	bg_conn_send_json(c, s, len);
}

bool
bg_conn_expired(struct bg_conn *c)
{
	return c->ident.exp > 0 && (int64_t)time(NULL) >= c->ident.exp;
}
