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
#include "server/presence.h"
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

/* Free holders a worker keeps: enough for a burst of broadcasts in
 * flight, bounded so that a flood's peak goes back to the heap. */
#define WFRAME_POOL_MAX 1024

struct bg_wframe *
bg_wframe_new(struct bg_worker *w)
{
	struct bg_wframe_pool *pool = &w->wf_pool;
	struct bg_wframe *f = pool->head;

	if (f != NULL) {
		pool->head = f->next_free;
		pool->n--;
	} else if ((f = malloc(sizeof(*f))) == NULL) {
		return NULL;
	}
	*f = (struct bg_wframe){ .refs = 1, .pool = pool };
	return f;
}

void
bg_wframe_unref(struct bg_wframe *f)
{
	struct bg_wframe_pool *pool = f->pool;

	if (--f->refs > 0)
		return;
	bg_msg_unref(f->msg);
	free(f->block);
	if (pool != NULL && pool->n < WFRAME_POOL_MAX) {
		f->next_free = pool->head;
		pool->head = f;
		pool->n++;
		return;
	}
	free(f);
}

/* ------------------------------------------------------------- queue */

static bool
q_grow(struct bg_conn *c)
{
	/* 2 to start: an idle connection's queue held its connect event
	 * and stays allocated (freed when drained only past 16). */
	uint32_t cap = c->q_cap ? c->q_cap * 2 : 2;
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

/* Keeps the worker's backed_up gauge (backpressure, bg_worker_congested):
 * on over half of max_queued_bytes, off again at a quarter or less. */
static void
q_backlog(struct bg_conn *c)
{
	size_t max = bg_server_cfg(c->w->srv)->max_queued_bytes;
	bool on = c->backed_up ? c->q_bytes > max / 4 : c->q_bytes > max / 2;

	if (on == c->backed_up)
		return;
	c->backed_up = on;
	if (on)
		c->backed_ms = now_ms();
	__atomic_store_n(&c->w->backed_up, c->w->backed_up + (on ? 1 : -1),
			 __ATOMIC_RELAXED);
}

static void
q_pop(struct bg_conn *c)
{
	struct bg_out *e = &c->q[c->q_head];

	c->q_bytes -= e->len;
	if (c->backed_up)
		c->backed_ms = now_ms(); /* the client takes bytes */
	q_backlog(c);
	bg_wframe_unref(e->f);
	c->q_head = (c->q_head + 1) & (c->q_cap - 1);
	c->q_count--;
	if (c->q_count == 0 && c->q_cap > 16) {
		/* Drained after a burst: an idle connection keeps no big
		 * ring (the next push starts a small one). */
		free(c->q);
		c->q = NULL;
		c->q_cap = 0;
		c->q_head = 0;
	}
}

static void
q_clear(struct bg_conn *c)
{
	while (c->q_count > 0)
		q_pop(c);
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

/* Starts the close handshake with code and why (static text or NULL).
 * With drop, what is queued and not yet handed to lws is dropped, else it
 * is sent first. lws finishes the write in progress, then asks for
 * WRITEABLE, where bg_conn_write hands it the close frame. A client that
 * takes nothing is cut after close_timeout. Safe inside and outside lws's
 * callbacks for this connection. */
static void
start_close(struct bg_conn *c, uint16_t code, const char *why, bool drop)
{
	if (!c->closing && c->established)
		__atomic_add_fetch(&c->w->closing_conns, 1, __ATOMIC_RELAXED);
	c->closing = true;
	c->close_code = code;
	if (c->close_why_owned && c->close_why != why)
		free((char *)c->close_why);
	c->close_why_owned = false;
	c->close_why = why;
	if (drop)
		q_clear(c);
	want_writable(c);
	lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK,
			bg_server_cfg(c->w->srv)->close_timeout);
	/* lws arms its timers only after one of its own events: the worker
	 * wakes it once its current batch is done (flush_dirty). */
	c->w->kick = true;
}

bool
bg_conn_cut_if_stalled(struct bg_conn *c, uint64_t now)
{
	if (!c->backed_up || c->closing || now - c->backed_ms < BG_STALL_MS)
		return false;
	static struct bg_log_throttle throttle =
		BG_LOG_THROTTLE("stalled consumer closes (4001)", 5);

	bg_stat_add(&c->w->stats.slow_consumer_closes, 1);
	bg_log_throttled(&throttle, BG_LOG_INFO, "client %s: %zu bytes "
			 "queued, none taken for %d ms, closing (4001)",
			 c->id, c->q_bytes, BG_STALL_MS);
	bg_conn_fail(c, 4001, "slow consumer");
	return true;
}

bool
bg_conn_push(struct bg_conn *c, struct bg_wframe *f, const uint8_t *data,
	     uint32_t len, bool direct)
{
	struct bg_worker *w = c->w;
	size_t max_queued = bg_server_cfg(w->srv)->max_queued_bytes;

	if (c->closing)
		return false;
	if (c->q_bytes + len > max_queued && c->in_dirty &&
	    !c->want_write && !lws_partial_buffered(c->wsi)) {
		/* Queued this batch but never offered to the socket yet: the
		 * limit is about what the client leaves unread, so write
		 * first. */
		if (bg_conn_write(c) < 0) {
			bg_conn_fail(c, 1011, "write failed");
			return false;
		}
	}
	/* One message always fits: the limits bound a backlog. */
	if (c->q_count > 0 &&
	    (c->q_bytes + len > max_queued ||
	     !bg_budget_allows(&c->budget, c->q_bytes, len))) {
		/* A slow consumer must not hold memory or delay others. */
		if (c->q_bytes + len > max_queued)
			bg_stat_add(&w->stats.slow_consumer_closes, 1);
		else
			bg_stat_add(&w->stats.memory_closes, 1);
		static struct bg_log_throttle throttle =
			BG_LOG_THROTTLE("slow consumer closes (4001)", 5);
		bg_log_throttled(&throttle, BG_LOG_INFO, "client %s: %zu bytes "
				 "queued, closing (4001)", c->id,
				 c->q_bytes + len);
		bg_conn_fail(c, 4001, "slow consumer");
		return false;
	}
	if (c->q_count == c->q_cap && !q_grow(c)) {
		bg_conn_fail(c, 1011, "out of memory");
		return false;
	}
	c->q[(c->q_head + c->q_count) & (c->q_cap - 1)] =
		(struct bg_out){ .f = f, .data = data, .len = len };
	c->q_count++;
	c->q_bytes += len;
	q_backlog(c);
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
	f = bg_wframe_new(c->w); /* refs = 1: ours, while pushing */
	if (f != NULL)
		f->block = bg_frame_text(json, len, &frame, &flen);
	free(json);
	if (f == NULL || f->block == NULL) {
		if (f != NULL)
			bg_wframe_unref(f);
		bg_log_error("client %s: reply lost: out of memory", c->id);
		return;
	}
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
	uint64_t ingest = 0;           /* oldest broadcast in this write */

	c->want_write = false;
	if (c->close_sent)
		return 0; /* lws still calls WRITEABLE while it awaits the ack */
	if (c->q_count == 0) {
		if (c->closing) {
			/* lws sends it, then waits close_timeout for the
			 * client's own close frame. */
			const char *why = c->close_why ? c->close_why : "";
			lws_close_reason(c->wsi,
					 (enum lws_close_status)c->close_code,
					 (unsigned char *)why, strlen(why));
			c->close_sent = true;
			return -1;
		}
		return 0;
	}
	if (c->q_count == 1 || c->q[c->q_head].len >= BG_WRITE_MAX / 2) {
		/* One frame (or a big one): straight from its shared bytes,
		 * and always whole: what the socket does not take, lws keeps
		 * and sends before anything else, so its own PING, PONG or
		 * CLOSE never lands inside one of our frames (a frame split
		 * across WRITEABLE callbacks could be). lws copies only the
		 * part of a frame over tx_packet_size that the socket
		 * refused. */
		struct bg_out *e = &c->q[c->q_head];
		if (lws_write(c->wsi, (uint8_t *)e->data, e->len,
			      LWS_WRITE_RAW) < 0)
			return -1;
		n = e->len;
		if (e->f->msg != NULL)
			ingest = e->f->msg->ingest_us;
		q_pop(c);
		sent = 1;
	} else {
		/* Many frames: gather whole frames into one send. */
		while (c->q_count > 0) {
			struct bg_out *e = &c->q[c->q_head];
			if (n + e->len > BG_WRITE_MAX)
				break;
			memcpy(buf + n, e->data, e->len);
			n += e->len;
			if (ingest == 0 && e->f->msg != NULL)
				ingest = e->f->msg->ingest_us;
			q_pop(c);
			sent++;
		}
		if (lws_write(c->wsi, buf, n, LWS_WRITE_RAW) < 0)
			return -1;
	}
	bg_stat_add(&w->stats.messages_sent, sent);
	bg_stat_add(&w->stats.bytes_sent, n);
	/* One observation per write: a clock read per send() call. */
	if (ingest != 0) {
		uint64_t now = bg_mono_us();
		bg_hist_observe(&w->stats.bcast_latency,
				now > ingest ? now - ingest : 0);
	}
	if (c->q_count > 0 || c->closing)
		want_writable(c);
	return 0;
}

void
bg_conn_begin_close(struct bg_conn *c, uint16_t code)
{
	if (!c->closing)
		start_close(c, code, NULL, false);
}

void
bg_conn_close_reason(struct bg_conn *c, uint16_t code, const char *reason)
{
	if (c->closing)
		return;
	char *why = strndup(reason, 123);

	start_close(c, code, why, false);
	c->close_why_owned = why != NULL;
}

void
bg_conn_fail(struct bg_conn *c, uint16_t code, const char *why)
{
	if (!c->closing)
		start_close(c, code, why, true);
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
bg_conn_reply_subscribed(struct bg_conn *c, const struct bg_request *req,
			 json_t *extra, const char *channel, size_t len)
{
	struct bg_chan *ch = bg_chan_find(c->w->chans, channel, len);
	size_t n = 0;
	char *s;

	if (req->callback_id == NULL)
		return;
	s = bg_proto_callback_ok(req->callback_id, extra, &n);
	if (s != NULL && ch != NULL && ch->pending)
		bg_worker_hold_reply(c->w, c, ch, s, n);
	else
		bg_conn_send_json(c, s, n);
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

struct bg_chan_sub *
bg_conn_find_sub(const struct bg_conn *c, const char *channel, size_t len)
{
	struct bg_chan_sub **slot = find_sub(c, channel, len);

	return slot != NULL ? *slot : NULL;
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
	if (c->n_subs >= (uint32_t)bg_server_cfg(w->srv)->max_subscriptions ||
	    !bg_budget_allows(&c->budget, c->q_bytes,
			      bg_budget_sub_cost(len)))
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
	if (s->chan->n_subs == 1)
		bg_worker_chan_added(w, s->chan);
	c->subs[c->n_subs++] = s;
	c->budget.subs += bg_budget_sub_cost(len);
	bg_stat_add(&w->stats.subscriptions, 1);
	bg_log_debug("client %s: subscribed to %s", c->id, s->chan->name);
	*added = true;
	return BG_CODE_COUNT;
}

static void
drop_sub(struct bg_conn *c, struct bg_chan_sub **slot)
{
	struct bg_chan_sub *s = *slot;

	*slot = c->subs[--c->n_subs];
	bg_presence_conn_left(c, s->chan->name);
	c->budget.subs -= bg_budget_sub_cost(s->chan->name_len);
	c->w->freed_since_trim += bg_budget_sub_cost(s->chan->name_len);
	if (s->chan->n_subs == 1) /* its last local subscriber */
		bg_worker_chan_removed(c->w, s->chan);
	bg_chan_unsubscribe(c->w->chans, s);
	bg_stat_add(&c->w->stats.subscriptions, (uint64_t)-1);
	if (c->cap_subs > 16 && c->n_subs < c->cap_subs / 4) {
		/* Give the array back after a mass unsubscribe. */
		struct bg_chan_sub **subs = realloc(c->subs, c->cap_subs / 2 *
						    sizeof(*subs));
		if (subs != NULL) {
			c->subs = subs;
			c->cap_subs /= 2;
		}
	}
}

void
bg_conn_unsubscribe(struct bg_conn *c, const char *channel, size_t len)
{
	struct bg_chan_sub **slot = find_sub(c, channel, len);

	if (slot != NULL) {
		bg_log_debug("client %s: unsubscribed from %s", c->id,
			     (*slot)->chan->name);
		drop_sub(c, slot);
	}
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
	if (size == 0 || size > bg_server_cfg(c->w->srv)->max_store_bytes ||
	    (size > c->budget.store &&
	     !bg_budget_allows(&c->budget, c->q_bytes,
			       size - c->budget.store))) {
		json_decref(next);
		return BG_ERR;
	}
	json_decref(c->store);
	c->store = next;
	c->budget.store = size;
	return BG_OK;
}

bool
bg_conn_budget_allows(struct bg_conn *c, size_t more)
{
	if (bg_budget_allows(&c->budget, c->q_bytes, more))
		return true;
	bg_stat_add(&c->w->stats.memory_closes, 1);
	return false;
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
	c->num = ++w->next_client;
	n = snprintf(c->id, sizeof(c->id), "%s-%d-%llu", w->srv->node_id,
		     w->index, (unsigned long long)c->num);
	if (n < 0 || (size_t)n >= sizeof(c->id) || !bg_worker_id_add(w, c))
		return BG_ERR;
	c->next = w->conns;
	if (w->conns != NULL)
		w->conns->prev = c;
	w->conns = c;
	c->established = true;
	c->tokens = bg_server_cfg(w->srv)->burst;
	c->budget.limit = bg_server_cfg(w->srv)->max_connection_memory;
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
		bg_worker_drop_replies(w, c);
		bg_worker_id_del(w, c);
		bg_stat_close(&w->stats, c->closing ? c->close_code :
			      c->peer_code, !c->closing);
		bg_log_debug("client %s: closed %u by the %s", c->id,
			     c->closing ? c->close_code : c->peer_code ?
			     c->peer_code : 1006,
			     c->closing ? "server" : "client");
		bg_stat_add(&w->stats.connections, (uint64_t)-1);
		__atomic_sub_fetch(&w->conns_gauge, 1, __ATOMIC_RELAXED);
		if (c->closing)
			__atomic_sub_fetch(&w->closing_conns, 1,
					   __ATOMIC_RELAXED);
		c->established = false;
	}
	q_clear(c);
	free(c->subs);
	free(c->rx);
	free(c->post);
	json_decref(c->store);
	bg_identity_clear(&c->ident);
	free(c->cookie);
	c->cookie = NULL;
	if (c->close_why_owned)
		free((char *)c->close_why);
	c->close_why_owned = false;
	c->close_why = NULL;
	c->subs = NULL;
	c->rx = NULL;
	c->post = NULL;
	c->store = NULL;
	c->n_subs = c->cap_subs = 0;
	memset(&c->budget, 0, sizeof(c->budget));
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
		bg_conn_fail(c, 1008, "rate limit");
}

bool
bg_conn_rate_ok(struct bg_conn *c, const struct bg_request *req,
		bool *close_now)
{
	const struct bg_config *cfg = bg_server_cfg(c->w->srv);
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
		static struct bg_log_throttle throttle =
			BG_LOG_THROTTLE("rate-limit closes (1008)", 5);
		bg_log_throttled(&throttle, BG_LOG_INFO, "client %s: "
				 "rate-limited for 10 s, closing (1008)",
				 c->id);
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
	const char *prefix = bg_server_cfg(c->w->srv)->private_prefix;
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
	bg_log_debug("client %s: authenticated as %s", c->id,
		     c->ident.user ? c->ident.user : "(anonymous)");
	/* Another identity: private channels it may not read are left. */
	drop_forbidden_private(c);
	bg_conn_arm_timer(c);
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
	} else {
		static struct bg_log_throttle throttle =
			BG_LOG_THROTTLE("application auth replies ignored", 5);
		bg_log_throttled(&throttle, BG_LOG_WARN, "client %s: ignoring "
				 "the application's auth reply: %s", c->id,
				 err);
	}
	json_decref(auth);
}

void
bg_conn_token_at_connect(struct bg_conn *c, const char *token)
{
	const struct bg_config *cfg = bg_server_cfg(c->w->srv);
	struct bg_identity id = { 0 };
	char err[160];
	size_t len = 0;
	char *s;

	if (bg_auth_verify_jwt_rotating(cfg->auth_secret,
					cfg->auth_previous_secret, token,
					(int64_t)time(NULL), &id, err,
					sizeof(err)) == BG_OK) {
		bg_conn_authenticated(c, &id, NULL);
		return;
	}
	bg_stat_add(&c->w->stats.client_errors[BG_CODE_AUTH_FAILED], 1);
	s = bg_proto_failure(NULL, "connect", BG_CODE_AUTH_FAILED, err, &len);
	bg_conn_send_json(c, s, len);
}

void
bg_conn_arm_timer(struct bg_conn *c)
{
	int64_t at_ms = 0, now = (int64_t)now_ms(), left;

	if (c->ident.exp > 0)
		at_ms = now + (c->ident.exp - (int64_t)time(NULL)) * 1000;
	if (c->rx != NULL && c->rx->deadline_ms > 0 &&
	    (at_ms == 0 || (int64_t)c->rx->deadline_ms < at_ms))
		at_ms = (int64_t)c->rx->deadline_ms;
	if (at_ms == 0) {
		lws_set_timer_usecs(c->wsi, LWS_SET_TIMER_USEC_CANCEL);
		return;
	}
	left = at_ms - now;
	lws_set_timer_usecs(c->wsi, (lws_usec_t)(left > 0 ? left : 0) *
			    1000);
}

bool
bg_conn_expired(struct bg_conn *c)
{
	return c->ident.exp > 0 && (int64_t)time(NULL) >= c->ident.exp;
}
