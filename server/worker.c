/*
 * worker.c - a worker thread: one event_base, one libwebsockets context on
 * it, the connections adopted from the acceptor, and the broadcast fan-out.
 *
 * Threads: bg_worker_new/start/join_free run on main; bg_worker_adopt on
 * the acceptor; bg_worker_deliver on the bus; bg_worker_stop anywhere. All
 * else runs on the worker's own thread. Rings in: inbox (sockets) and bcast
 * (messages); both wake the loop through their eventfds.
 */
#include "server/worker.h"

#include <event2/event.h>
#include <libwebsockets.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "common/frame.h"
#include "common/log.h"
#include "handlers/auth.h"
#include "handlers/forward.h"
#include "handlers/handlers.h"
#include "amqp/bus.h"
#include "handlers/history.h"
#include "server/acceptor.h"
#include "server/conn.h"
#include "server/http.h"
#include "server/tls.h"

_Static_assert(LWS_PRE <= BG_FRAME_PRE, "frames need LWS_PRE headroom");

/* Messages handled before the loop looks at sockets again. */
#define DRAIN_BATCH 256
#define STOP_TICK_MS 50
#define STOP_MAX_TICKS 60       /* 3 s to say goodbye */
#define TICK_MS 1000            /* handshake deadlines, trimming */
#define TRIM_CLOSE_BYTES 16384 /* what a close frees, roughly */
#define TRIM_BYTES (1 << 20)    /* freed bytes that make a trim worth it */
#define TRIM_EVERY_MS 5000      /* at most this often while freeing */
#define BCAST_RING 16384
#define HEADER_BYTES (BG_AUTH_TOKEN_MAX + 4096) /* lws's per request */

/* ASan and TSan bring their own allocator: glibc's stays unused, its
 * lazy set-up raced when two workers trimmed at once (a crash in
 * malloc_trim under ASan), and it has nothing to give back anyway. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define trim_heap() ((void)0)
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define trim_heap() ((void)0)
#endif
#endif
#ifndef trim_heap
#define trim_heap() ((void)malloc_trim(0))
#endif

/* lws context and vhost creation is not thread-safe. */
static pthread_mutex_t lws_create_lock = PTHREAD_MUTEX_INITIALIZER;

static int callback(struct lws *wsi, enum lws_callback_reasons reason,
		    void *user, void *in, size_t len);

static const struct lws_protocols protocols[] = {
	{
		.name = "bagou",
		.callback = callback,
		.per_session_data_size = sizeof(struct bg_conn),
		/* Small rx buffer: idle connections stay cheap (lws keeps
		 * it per connection); larger messages arrive in pieces and
		 * are reassembled. 128 holds a subscribe to a usual name. */
		.rx_buffer_size = 128,
		.tx_packet_size = BG_WRITE_MAX,
	},
	{ NULL, NULL, 0, 0, 0, NULL, 0 }
};

/* Closes for a reason of ours from inside lws's callbacks: the rest of
 * what the client sends is ignored (closing) while lws finishes the write
 * in progress; then the close frame (bg_conn_fail). Returning -1 instead
 * made lws stop at once, and a client still sending could see a reset
 * before the close frame. */
static int
fail(struct bg_conn *c, uint16_t code, const char *why)
{
	bg_conn_fail(c, code, why);
	return 0;
}

static int
close_with(struct lws *wsi, uint16_t code, const char *why)
{
	lws_close_reason(wsi, (enum lws_close_status)code,
			 (unsigned char *)why, strlen(why));
	return -1;
}

static uint64_t
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Makes room for cap bytes of message in c->rx (allocated if need be),
 * charged to the connection's budget. 0, or the close code. */
static uint16_t
rx_reserve(struct bg_conn *c, size_t cap)
{
	size_t max = bg_server_cfg(c->w->srv)->max_message_size;
	size_t had = c->rx != NULL ? c->rx->cap : 0;
	struct bg_rx *rx;

	if (c->rx != NULL && cap <= had)
		return 0;
	if (cap > 0 && cap < 1024)
		cap = 1024;
	if (cap > max)
		cap = max;
	if (cap > had && !bg_conn_budget_allows(c, cap - had))
		return 1009;
	rx = realloc(c->rx, sizeof(*rx) + cap);
	if (rx == NULL)
		return 1011;
	if (c->rx == NULL)
		*rx = (struct bg_rx){ 0 };
	rx->cap = (uint32_t)cap;
	c->rx = rx;
	c->budget.rx = (uint32_t)cap;
	return 0;
}

/* Takes the message in progress away from c (NULL if none); the caller
 * frees it and then zeroes c->budget.rx (the buffer stays charged while
 * the message is handled, as a subscribe it makes counts it). A
 * fragmented message's deadline goes with it. */
static struct bg_rx *
rx_take(struct bg_conn *c)
{
	struct bg_rx *rx = c->rx;

	c->rx = NULL;
	if (rx != NULL && rx->frames > 0)
		bg_conn_arm_timer(c);
	return rx;
}

/* A frame of a fragmented message ended (not the last one): bounds the
 * message in frames and in time. 0, or the close code. */
static uint16_t
on_fragment(struct bg_conn *c)
{
	const struct bg_config *cfg = bg_server_cfg(c->w->srv);
	uint16_t code;

	if ((code = rx_reserve(c, 0)) != 0)
		return code;
	if (c->rx->frames++ == 0) {
		c->rx->deadline_ms = mono_ms() +
				     (uint64_t)cfg->fragment_timeout * 1000;
		bg_conn_arm_timer(c);
	}
	if (c->rx->frames >= (uint32_t)cfg->max_fragments)
		return 1009;
	if (mono_ms() >= c->rx->deadline_ms)
		return 1008;
	return 0;
}

static int
on_receive(struct bg_conn *c, struct lws *wsi, const char *in, size_t len)
{
	size_t max = bg_server_cfg(c->w->srv)->max_message_size;
	size_t remaining = lws_remaining_packet_payload(wsi);
	bool final = lws_is_final_fragment(wsi);
	bool complete = final && remaining == 0;
	size_t have = c->rx != NULL ? c->rx->len : 0;
	struct bg_rx *rx;
	uint16_t code;

	if (!c->established || c->closing)
		return 0;
	bg_stat_add(&c->w->stats.bytes_received, len);
	if (lws_frame_is_binary(wsi))
		return fail(c, 1003, "binary frames are not supported");
	if (have + len + remaining > max)
		return fail(c, 1009, "message too big");
	if (remaining == 0 && !final && (code = on_fragment(c)) != 0) {
		if (code == 1011)
			return close_with(wsi, 1011, "out of memory");
		return fail(c, code, code == 1009 ? "too many fragments" :
			    "fragmented message too slow");
	}
	if (complete && have == 0) {
		free(rx_take(c));
		c->budget.rx = 0;
		bg_conn_receive(c, in, len); /* the common case: no copy */
		return 0;
	}
	if (len > 0 && (code = rx_reserve(c, have + len + remaining)) != 0) {
		if (code == 1011)
			return close_with(wsi, 1011, "out of memory");
		return fail(c, 1009, "message too big for the connection's "
			    "memory budget");
	}
	if (len > 0) {
		memcpy(c->rx->data + have, in, len);
		c->rx->len += (uint32_t)len;
	}
	if (!complete)
		return 0;
	/* Idle connections keep no buffer: most messages need none. */
	rx = rx_take(c);
	if (rx != NULL)
		bg_conn_receive(c, rx->data, rx->len);
	else
		bg_conn_receive(c, in, len);
	free(rx);
	c->budget.rx = 0;
	return 0;
}

/* After the connect event: ?token=, the Cookie a forwarded authenticate
 * needs, then the open hooks. */
static void
on_established(struct bg_conn *c, struct lws *wsi)
{
	const struct bg_config *cfg = bg_server_cfg(c->w->srv);
	struct bg_hook_args a = { .c = c };
	/* As large as lws's header space: a token too long for us is then
	 * refused as too long, not silently ignored. */
	size_t size = BG_AUTH_TOKEN_MAX + 4096 + 64;
	char *buf = malloc(size);
	const char *token;
	int n;

	if (buf != NULL) {
		token = lws_get_urlarg_by_name(wsi, "token=", buf, (int)size);
		if (token != NULL && token[0] != '\0')
			bg_conn_token_at_connect(c, token);
		if (cfg->auth_secret[0] == '\0' &&
		    cfg->forward_exchange[0] != '\0') {
			n = lws_hdr_copy(wsi, buf, (int)size,
					 WSI_TOKEN_HTTP_COOKIE);
			if (n > 0)
				c->cookie = strndup(buf, (size_t)n);
		}
		free(buf);
	}
	if (bg_log_enabled(BG_LOG_DEBUG)) {
		char peer[64] = "";
		lws_get_peer_simple(wsi, peer, sizeof(peer));
		bg_log_debug("client %s: open from %s", c->id, peer);
	}
	bg_handlers_run(BG_ON_OPEN, &a);
	bg_forward_lifecycle(c, BG_FORWARD_OPEN, "open", NULL);
}

static int
callback(struct lws *wsi, enum lws_callback_reasons reason, void *user,
	 void *in, size_t len)
{
	struct lws_context *ctx = lws_get_context(wsi);
	struct bg_worker *w = ctx ? lws_context_user(ctx) : NULL;
	struct bg_conn *c = user;

	switch (reason) {
	case LWS_CALLBACK_OPENSSL_LOAD_EXTRA_SERVER_VERIFY_CERTS:
		/* user: the vhost's SSL_CTX, while the vhost is made. */
		return w->srv->tls != NULL &&
		       bg_tls_vhost_setup(w->srv->tls, user) != BG_OK ? -1 : 0;
	case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
		return bg_http_confirm_upgrade(w, wsi, in);
	case LWS_CALLBACK_ESTABLISHED:
		bg_sock_established(w, wsi);
		/* lws freed the request's header buffer: a crowd that
		 * connects leaves that much scattered in the heap. */
		w->freed_since_trim += HEADER_BYTES;
		if (w->stopping)
			return close_with(wsi, 1001, "server shutting down");
		if (bg_conn_open(c, w, wsi) != BG_OK)
			return close_with(wsi, 1011, "out of memory");
		on_established(c, wsi);
		return 0;
	case LWS_CALLBACK_TIMER:
		if (c != NULL && c->post != NULL)
			return bg_http_body_timeout(w, wsi, c);
		if (c == NULL || !c->established || c->closing)
			return 0;
		if (bg_conn_expired(c))
			return fail(c, 4002, "token expired");
		if (c->rx != NULL && c->rx->deadline_ms > 0 &&
		    mono_ms() >= c->rx->deadline_ms)
			return fail(c, 1008, "fragmented message too slow");
		bg_conn_arm_timer(c);
		return 0;
	case LWS_CALLBACK_RECEIVE:
		return on_receive(c, wsi, in, len);
	case LWS_CALLBACK_SERVER_WRITEABLE:
		return bg_conn_write(c);
	case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
		if (c != NULL)
			c->peer_code = len >= 2 ? (uint16_t)(
				((const uint8_t *)in)[0] << 8 |
				((const uint8_t *)in)[1]) : 1005;
		return 0;
	case LWS_CALLBACK_CLOSED:
		bg_conn_close(c);
		w->freed_since_trim += TRIM_CLOSE_BYTES;
		return 0;
	case LWS_CALLBACK_WSI_DESTROY:
		bg_sock_destroyed(w, wsi);
		return 0;
	case LWS_CALLBACK_ADD_HEADERS:
		/* /static files (lws serves them) end their connection:
		 * lws 4.1.6 never answers requests pipelined behind a file,
		 * so the client is told, and then sees the close. */
		if (!lws_hdr_total_length(wsi, WSI_TOKEN_UPGRADE)) {
			struct lws_process_html_args *a = in;
			return lws_add_http_header_by_token(wsi,
				WSI_TOKEN_CONNECTION,
				(const unsigned char *)"close", 5,
				(unsigned char **)&a->p,
				(unsigned char *)a->p + a->max_len) ? -1 : 0;
		}
		return 0;
	case LWS_CALLBACK_HTTP_FILE_COMPLETION:
		return -1; /* after "Connection: close", above */
	case LWS_CALLBACK_HTTP:
		bg_sock_http_request(w, wsi);
		return bg_http_callback(w, wsi, (int)reason, c, in, len);
	case LWS_CALLBACK_HTTP_BODY:
	case LWS_CALLBACK_HTTP_BODY_COMPLETION:
	case LWS_CALLBACK_CLOSED_HTTP:
	case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
		return bg_http_callback(w, wsi, (int)reason, c, in, len);
	default:
		break;
	}
	return lws_callback_http_dummy(wsi, reason, user, in, len);
}

/* ------------------------------------- channel filter and bindings */

static uint32_t
slot1(uint32_t h)
{
	return h & (BG_FILTER_SLOTS - 1);
}

static uint32_t
slot2(uint32_t h)
{
	return (h >> 16) & (BG_FILTER_SLOTS - 1);
}

static void
filter_add(struct bg_worker *w, uint32_t i, uint32_t delta)
{
	/* Only this worker writes; release: the subscription is in the
	 * table before the bus can see the slot. */
	__atomic_store_n(&w->filter[i], w->filter[i] + delta,
			 __ATOMIC_RELEASE);
}

/* A subscribe's answer waiting for its channel's binding. */
struct bg_held_reply {
	struct bg_held_reply *next;
	struct bg_conn *c;
	struct bg_chan *ch;
	size_t len;
	char *json;
};

void
bg_worker_hold_reply(struct bg_worker *w, struct bg_conn *c,
		     struct bg_chan *ch, char *json, size_t len)
{
	struct bg_held_reply *r = malloc(sizeof(*r)), **pp = &w->held;

	bg_assert_owner(w->owner);
	if (r == NULL) {
		bg_conn_send_json(c, json, len); /* late binding: rare */
		return;
	}
	*r = (struct bg_held_reply){ .c = c, .ch = ch, .len = len,
				     .json = json };
	while (*pp != NULL)
		pp = &(*pp)->next;
	*pp = r;
}

/* Sends the answers held for ch (NULL: all), in order. */
static void
release_replies(struct bg_worker *w, const struct bg_chan *ch)
{
	struct bg_held_reply **pp = &w->held, *r;

	while ((r = *pp) != NULL) {
		if (ch != NULL && r->ch != ch) {
			pp = &r->next;
			continue;
		}
		*pp = r->next;
		bg_conn_send_json(r->c, r->json, r->len);
		free(r);
	}
}

void
bg_worker_drop_replies(struct bg_worker *w, struct bg_conn *c)
{
	struct bg_held_reply **pp = &w->held, *r;

	bg_assert_owner(w->owner);
	while ((r = *pp) != NULL) {
		if (r->c != c) {
			pp = &r->next;
			continue;
		}
		*pp = r->next;
		free(r->json);
		free(r);
	}
}

void
bg_worker_chan_added(struct bg_worker *w, struct bg_chan *ch)
{
	bg_assert_owner(w->owner);
	filter_add(w, slot1(ch->hash), 1);
	filter_add(w, slot2(ch->hash), 1);
	if (bg_bus_binds(w->srv->bus)) {
		ch->pending = 1;
		bg_bus_interest(w->srv->bus, ch->name, ch->name_len, 1);
	}
}

void
bg_worker_chan_removed(struct bg_worker *w, struct bg_chan *ch)
{
	bg_assert_owner(w->owner);
	filter_add(w, slot1(ch->hash), (uint32_t)-1);
	filter_add(w, slot2(ch->hash), (uint32_t)-1);
	if (bg_bus_binds(w->srv->bus)) {
		/* Its held answers go first: they precede whatever made
		 * it empty (an unsubscribe answer, a close). */
		if (ch->pending)
			release_replies(w, ch);
		bg_bus_interest(w->srv->bus, ch->name, ch->name_len, -1);
	}
}

/* The bus: the node queue is bound for name (NULL: every channel). */
static void
on_bound(struct bg_worker *w, const char *name)
{
	struct bg_chan *ch;

	if (name != NULL) {
		ch = bg_chan_find(w->chans, name, strlen(name));
		if (ch != NULL && ch->pending) {
			ch->pending = 0;
			release_replies(w, ch);
		}
		return;
	}
	for (uint32_t i = 0; i < w->chans->n_buckets; i++)
		for (ch = w->chans->buckets[i]; ch != NULL; ch = ch->next)
			ch->pending = 0;
	release_replies(w, NULL);
}

bool
bg_worker_wants(const struct bg_worker *w, const struct bg_msg *m)
{
	if (m->target != BG_MSG_CHANNELS || !m->hashed)
		return true;
	for (uint32_t i = 0; i < m->n_names; i++) {
		uint32_t h = m->hashes[i];
		if (__atomic_load_n(&w->filter[slot1(h)], __ATOMIC_ACQUIRE) &&
		    __atomic_load_n(&w->filter[slot2(h)], __ATOMIC_ACQUIRE))
			return true;
	}
	return false;
}

/* ------------------------------------------------------------ fan-out */

/* The id map's home slot of number n. */
static uint32_t
id_home(const struct bg_worker *w, uint64_t n)
{
	return (uint32_t)((n * 0x9e3779b97f4a7c15ull) >> 32) &
	       (w->ids_cap - 1);
}

static bool
ids_resize(struct bg_worker *w, uint32_t cap)
{
	struct bg_conn **old = w->ids;
	uint32_t old_cap = w->ids_cap;

	w->ids = calloc(cap, sizeof(*w->ids));
	if (w->ids == NULL) {
		w->ids = old;
		return false;
	}
	w->ids_cap = cap;
	for (uint32_t i = 0; i < old_cap; i++) {
		uint32_t j;
		if (old[i] == NULL)
			continue;
		for (j = id_home(w, old[i]->num); w->ids[j] != NULL;
		     j = (j + 1) & (cap - 1))
			;
		w->ids[j] = old[i];
	}
	free(old);
	return true;
}

bool
bg_worker_id_add(struct bg_worker *w, struct bg_conn *c)
{
	uint32_t i;

	bg_assert_owner(w->owner);
	if ((w->ids_n + 1) * 2 > w->ids_cap &&
	    !ids_resize(w, w->ids_cap ? w->ids_cap * 2 : 64))
		return false;
	for (i = id_home(w, c->num); w->ids[i] != NULL;
	     i = (i + 1) & (w->ids_cap - 1))
		;
	w->ids[i] = c;
	w->ids_n++;
	return true;
}

void
bg_worker_id_del(struct bg_worker *w, struct bg_conn *c)
{
	uint32_t mask = w->ids_cap - 1, i, j, k;

	bg_assert_owner(w->owner);
	if (w->ids_cap == 0)
		return;
	for (i = id_home(w, c->num); w->ids[i] != c; i = (i + 1) & mask)
		if (w->ids[i] == NULL)
			return;
	/* Linear probing: pull later entries of the run back. */
	for (j = (i + 1) & mask; w->ids[j] != NULL; j = (j + 1) & mask) {
		k = id_home(w, w->ids[j]->num);
		if (((j - k) & mask) >= ((j - i) & mask)) {
			w->ids[i] = w->ids[j];
			i = j;
		}
	}
	w->ids[i] = NULL;
	w->ids_n--;
	if (w->ids_cap > 64 && w->ids_n * 8 < w->ids_cap)
		ids_resize(w, w->ids_cap / 2); /* best effort */
}

struct bg_conn *
bg_worker_conn(struct bg_worker *w, const char *id)
{
	size_t nl = strlen(w->srv->node_id);
	const char *p;
	char *end;
	unsigned long long n;
	long idx;

	bg_assert_owner(w->owner);
	if (w->ids_cap == 0 || strncmp(id, w->srv->node_id, nl) != 0 ||
	    id[nl] != '-')
		return NULL;
	p = id + nl + 1;
	if (*p < '0' || *p > '9')
		return NULL;
	idx = strtol(p, &end, 10);
	if (*end != '-' || idx != w->index || end[1] < '0' || end[1] > '9')
		return NULL;
	n = strtoull(end + 1, &end, 10);
	if (*end != '\0')
		return NULL;
	for (uint32_t i = id_home(w, n); w->ids[i] != NULL;
	     i = (i + 1) & (w->ids_cap - 1))
		if (w->ids[i]->num == n)
			return strcmp(w->ids[i]->id, id) == 0 ? w->ids[i] :
			       NULL;
	return NULL;
}

/* A reply with a callbackId reached c: counted, and its round trip
 * measured when the forwarded request is still in the table. */
static void
forward_reply(struct bg_worker *w, struct bg_conn *c, const char *cb)
{
	uint64_t us;

	bg_stat_add(&w->stats.forward_replies, 1);
	if (bg_fwd_pending_take(w->fwd_pending, c->id, cb, bg_mono_us(), &us))
		bg_hist_observe(&w->stats.forward_rtt, us);
}

/* Queues m for every local recipient, each once. Takes over the ring's
 * reference to m. */
static void
deliver(struct bg_worker *w, struct bg_msg *m)
{
	struct bg_wframe *f;
	struct bg_conn *c, *excl;
	uint64_t seq;

	if (m->target == BG_MSG_BOUND) {
		on_bound(w, m->n_names ? m->names[0] : NULL);
		bg_msg_unref(m);
		return;
	}
	if (m->target == BG_MSG_TASK) {
		/* A control-plane task, in order with the broadcasts. */
		m->task_fn(w, m);
		bg_msg_unref(m);
		return;
	}
	if (m->answer_fn != NULL) {
		/* A job's answer (bg_h_post_job), in order with the
		 * broadcasts. */
		m->answer_fn(w, m);
		return;
	}
	if (m->hist != NULL) {
		/* A history answer, in order with the broadcasts. */
		bg_history_answered(w, m);
		return;
	}
	f = bg_wframe_new(w); /* ours, for the fan-out */
	seq = ++w->seq;
	if (f == NULL) {
		bg_log_error("worker %d: broadcast lost: out of memory",
			     w->index);
		bg_msg_unref(m);
		return;
	}
	f->msg = m;
	excl = m->exclude ? bg_worker_conn(w, m->exclude) : NULL;
	switch (m->target) {
	case BG_MSG_BOUND:
		break;
	case BG_MSG_ALL:
		for (c = w->conns; c != NULL; c = c->next)
			if (c != excl)
				bg_conn_push(c, f, m->frames[0].data,
					     m->frames[0].len, true);
		break;
	case BG_MSG_CHANNELS:
		for (uint32_t i = 0; i < m->n_names; i++) {
			struct bg_chan *ch = bg_chan_find(w->chans,
					m->names[i], strlen(m->names[i]));
			for (uint32_t j = 0; ch != NULL && j < ch->n_subs;
			     j++) {
				c = ch->subs[j]->owner;
				/* First listed channel wins; once only. A
				 * subscription waiting for its history
				 * position gets it through the answer. */
				if (c->last_seq == seq || ch->subs[j]->hold)
					continue;
				c->last_seq = seq;
				if (c != excl)
					bg_conn_push(c, f, m->frames[i].data,
						     m->frames[i].len, true);
			}
		}
		break;
	case BG_MSG_CLIENTS:
		for (uint32_t i = 0; i < m->n_names; i++) {
			c = bg_worker_conn(w, m->names[i]);
			if (c == NULL || c == excl || c->last_seq == seq)
				continue;
			c->last_seq = seq;
			if (m->reply_cb != NULL)
				forward_reply(w, c, m->reply_cb);
			/* The application's answer to a forwarded
			 * authenticate: the connection is now that user. */
			if (m->auth != NULL && !c->closing)
				bg_conn_apply_auth(c, m->auth);
			/* A presence subscribe the bus refused. */
			if (m->unsubscribe != NULL) {
				bg_conn_unsubscribe(c, m->unsubscribe,
						    strlen(m->unsubscribe));
				bg_stat_add(&w->stats.client_errors[
					BG_CODE_CHANNEL_FULL], 1);
			}
			bg_conn_push(c, f, m->frames[0].data,
				     m->frames[0].len, true);
		}
		break;
	case BG_MSG_TASK:
		break;
	}
	bg_wframe_unref(f);
}

/* Writes what the fan-out queued: one send per connection per batch,
 * without a round trip through the poller when the socket has room. */
static void
flush_dirty(struct bg_worker *w)
{
	struct bg_conn *c;

	while ((c = w->dirty) != NULL) {
		w->dirty = c->dirty_next;
		c->dirty_next = NULL;
		c->in_dirty = false;
		if (c->want_write || c->closing || c->q_count == 0)
			continue;
		/* lws_partial_buffered is a flag test; send_pipe_choked
		 * would cost a poll() per connection per batch. A socket
		 * that is full after all makes lws keep the rest and say so
		 * here next time. */
		if (lws_partial_buffered(c->wsi)) {
			c->want_write = true;
			lws_callback_on_writable(c->wsi);
		} else if (bg_conn_write(c) < 0) {
			if (!c->closing && c->established)
				__atomic_add_fetch(&w->closing_conns, 1,
						   __ATOMIC_RELAXED);
			c->closing = true;
			lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK,
					LWS_TO_KILL_ASYNC);
			w->kick = true;
		}
	}
	if (w->kick) {
		/* Kills scheduled from our own callbacks run only once lws
		 * services this thread again; its wake-up pipe does that. */
		w->kick = false;
		lws_cancel_service(w->lws);
	}
}

static void
on_bcast(evutil_socket_t fd, short what, void *arg)
{
	struct bg_worker *w = arg;
	struct bg_msg *m;
	int n;

	bg_ring_clear(w->bcast);
	for (;;) {
		for (n = 0; n < DRAIN_BATCH &&
		     (m = bg_ring_pop(w->bcast)) != NULL; n++) {
			uint32_t len = m->frames[0].len;
			deliver(w, m); /* takes m */
			__atomic_sub_fetch(&w->bcast_bytes, len,
					   __ATOMIC_RELAXED);
		}
		flush_dirty(w);
		if (n == DRAIN_BATCH) {
			/* Let sockets be served, then come back. */
			event_active(w->bcast_ev, EV_READ, 0);
			return;
		}
		if (bg_ring_sleep(w->bcast))
			return;
	}
}

/* Twice a second, while any connection is backed up: one that stopped
 * reading must not hold publishers back (backpressure) for longer than
 * BG_STALL_MS; it is a slow consumer. */
static void
on_stall_tick(evutil_socket_t fd, short what, void *arg)
{
	struct bg_worker *w = arg;
	struct timespec ts;
	uint64_t now;

	if (w->backed_up == 0)
		return;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	for (struct bg_conn *c = w->conns; c != NULL; c = c->next)
		if (bg_conn_cut_if_stalled(c, now))
			w->kick = true;
	if (w->kick) {
		w->kick = false;
		lws_cancel_service(w->lws);
	}
}

static void
on_inbox(evutil_socket_t fd, short what, void *arg)
{
	struct bg_worker *w = arg;
	void *p;

	bg_ring_clear(w->inbox);
	do {
		while ((p = bg_ring_pop(w->inbox)) != NULL) {
			if (w->stopping)
				bg_sock_drop(w->srv, p);
			else
				bg_sock_adopt(w, p);
		}
	} while (!bg_ring_sleep(w->inbox));
}

/* Once a second: sockets past their handshake deadline are closed, and
 * after a megabyte or so was freed (closes, unsubscribes) the memory goes
 * back to the system (glibc keeps it otherwise: docs/DESIGN.md): every
 * TRIM_EVERY_MS while a burst of closes goes on, and at the first tick
 * that saw no more, so the end of a burst is not left untrimmed. */
static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
	struct bg_worker *w = arg;
	struct timespec ts;
	uint64_t now;

	/* Between callbacks: no config pointer is held (server.h). */
	bg_server_quiescent(w->srv, BG_SEEN_WORKER(w->index));
	clock_gettime(CLOCK_MONOTONIC, &ts);
	now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	__atomic_store_n(&w->alive_ms, now, __ATOMIC_RELAXED);
	bg_sock_sweep(w, now);
	if (w->kick) {
		w->kick = false;
		lws_cancel_service(w->lws);
	}
	if (w->freed_since_trim >= TRIM_BYTES &&
	    (now - w->last_trim_ms >= TRIM_EVERY_MS ||
	     w->freed_since_trim == w->freed_at_tick)) {
		w->freed_since_trim = 0;
		w->last_trim_ms = now;
		trim_heap();
	}
	w->freed_at_tick = w->freed_since_trim;
}

static void
on_stop_tick(evutil_socket_t fd, short what, void *arg)
{
	struct bg_worker *w = arg;

	if (w->conns == NULL || ++w->stop_ticks >= STOP_MAX_TICKS)
		event_base_loopbreak(w->base);
}

static void
on_stop(evutil_socket_t fd, short what, void *arg)
{
	struct bg_worker *w = arg;
	struct timeval tick = { 0, STOP_TICK_MS * 1000 };
	uint64_t n;

	if (read(w->stop_efd, &n, sizeof(n)) < 0 || w->stopping)
		return;
	w->stopping = true;
	for (struct bg_conn *c = w->conns; c != NULL; c = c->next)
		bg_conn_fail(c, 1001, "server shutting down");
	w->kick = false;
	lws_cancel_service(w->lws); /* arms the close timeouts */
	w->stop_timer = event_new(w->base, -1, EV_PERSIST, on_stop_tick, w);
	if (w->stop_timer == NULL || event_add(w->stop_timer, &tick) != 0)
		event_base_loopbreak(w->base);
}

/* ------------------------------------------------------------- thread */

static int
setup(struct bg_worker *w)
{
	const struct bg_config *cfg = bg_server_cfg(w->srv);
	struct lws_context_creation_info info;
	struct timeval stall_tick = { 0, 500000 };
	void *loops[1];
	lws_retry_bo_t *policy;
	struct timeval tick = { TICK_MS / 1000, 0 };

	w->base = event_base_new();
	w->chans = bg_chan_table_new();
	w->handler_re = bg_handlers_worker_regexes();

	w->scratch = malloc(LWS_PRE + BG_WRITE_MAX);
	if (w->base == NULL || w->chans == NULL ||
	    w->scratch == NULL) {
		bg_log_error("worker %d: out of memory", w->index);
		return BG_ERR;
	}
	loops[0] = w->base;
	memset(&info, 0, sizeof(info));
	info.options = LWS_SERVER_OPTION_LIBEVENT |
		       LWS_SERVER_OPTION_VALIDATE_UTF8 |
		       LWS_SERVER_OPTION_EXPLICIT_VHOSTS;
	info.foreign_loops = loops;
	info.count_threads = 1;
	info.user = w;
	/* Sockets come from the acceptor; NO_LISTEN_SERVER (not NO_LISTEN)
	 * lets lws run TLS on them when a certificate is set. */
	info.port = CONTEXT_PORT_NO_LISTEN_SERVER;
	info.protocols = protocols;
	info.vhost_name = "bagou";
	info.timeout_secs = 10;
	/* Room for an 8 KiB ?token= plus the usual headers; the header
	 * buffer is lent only while a request is parsed. */
	info.max_http_header_data = HEADER_BYTES;
	if (w->srv->tls != NULL)
		bg_tls_lws_info(w->srv->tls, &info);
	if (cfg->ping_interval > 0) {
		policy = calloc(1, sizeof(*policy));
		if (policy == NULL)
			return BG_ERR;
		policy->secs_since_valid_ping = (uint16_t)cfg->ping_interval;
		policy->secs_since_valid_hangup =
			(uint16_t)(cfg->ping_interval * 2 + 10);
		w->ping_policy = policy;
		info.retry_and_idle_policy = policy;
	}
	if (cfg->static_dir[0] != '\0') {
		struct lws_http_mount *m = calloc(1, sizeof(*m));
		if (m == NULL)
			return BG_ERR;
		/* lws serves these files itself (mime types, ranges, 304s)
		 * and refuses paths that climb out of the directory. */
		m->mountpoint = "/static";
		m->mountpoint_len = 7;
		m->origin = w->srv->static_root;
		m->def = "index.html";
		m->origin_protocol = LWSMPRO_FILE;
		m->protocol = "bagou"; /* for LWS_CALLBACK_ADD_HEADERS */
		w->mount = m;
		info.mounts = m;
	}
	pthread_mutex_lock(&lws_create_lock);
	w->lws = lws_create_context(&info);
	if (w->lws != NULL) {
		lws_context_set_close_timeout(w->lws,
					      (unsigned int)cfg->close_timeout);
		w->vhost = lws_create_vhost(w->lws, &info);
	}
	pthread_mutex_unlock(&lws_create_lock);
	if (w->lws == NULL || w->vhost == NULL) {
		bg_log_error("worker %d: cannot create the libwebsockets "
			     "context", w->index);
		return BG_ERR;
	}
	w->inbox_ev = event_new(w->base, bg_ring_fd(w->inbox),
				EV_READ | EV_PERSIST, on_inbox, w);
	w->bcast_ev = event_new(w->base, bg_ring_fd(w->bcast),
				EV_READ | EV_PERSIST, on_bcast, w);
	w->stop_ev = event_new(w->base, w->stop_efd, EV_READ | EV_PERSIST,
			       on_stop, w);
	w->tick_ev = event_new(w->base, -1, EV_PERSIST, on_tick, w);
	w->stall_ev = event_new(w->base, -1, EV_PERSIST, on_stall_tick, w);
	if (w->inbox_ev == NULL || w->bcast_ev == NULL ||
	    w->stop_ev == NULL || w->tick_ev == NULL || w->stall_ev == NULL ||
	    event_add(w->tick_ev, &tick) != 0 ||
	    event_add(w->stall_ev, &stall_tick) != 0 ||
	    event_add(w->inbox_ev, NULL) != 0 ||
	    event_add(w->bcast_ev, NULL) != 0 ||
	    event_add(w->stop_ev, NULL) != 0) {
		bg_log_error("worker %d: cannot register events", w->index);
		return BG_ERR;
	}
	on_tick(-1, 0, w);              /* alive_ms from the start */
	return BG_OK;
}

static void
teardown(struct bg_worker *w)
{
	/* lws closes what is left (CLOSED callbacks use our tables), and
	 * frees its own events, so it goes before the base. */
	if (w->lws != NULL)
		lws_context_destroy(w->lws);
	w->lws = NULL;
	if (w->inbox_ev)
		event_free(w->inbox_ev);
	if (w->bcast_ev)
		event_free(w->bcast_ev);
	if (w->stop_ev)
		event_free(w->stop_ev);
	if (w->stall_ev)
		event_free(w->stall_ev);
	if (w->stop_timer)
		event_free(w->stop_timer);
	if (w->tick_ev)
		event_free(w->tick_ev);
	if (w->base)
		event_base_free(w->base);
	bg_chan_table_free(w->chans);
	free(w->ids);
	bg_handlers_worker_regexes_free(w->handler_re);
	w->handler_re = NULL;
	while (w->held != NULL) {
		struct bg_held_reply *r = w->held;
		w->held = r->next;
		free(r->json);
		free(r);
	}
	while (w->wf_pool.head != NULL) {
		struct bg_wframe *f = w->wf_pool.head;
		w->wf_pool.head = f->next_free;
		free(f);
	}
	free(w->scratch);
	free(w->ping_policy);
	free(w->mount);
	w->base = NULL;
}

static void *
worker_main(void *arg)
{
	struct bg_worker *w = arg;
	char name[16];
	int rc;

	w->owner = pthread_self();
	snprintf(name, sizeof(name), "bg-worker-%d", w->index);
	pthread_setname_np(pthread_self(), name);
	rc = setup(w);

	w->ready_rc = rc;
	sem_post(&w->ready);
	if (rc == BG_OK && event_base_dispatch(w->base) < 0)
		bg_log_error("worker %d: event loop failed", w->index);
	teardown(w);
	return NULL;
}

struct bg_worker *
bg_worker_new(struct bg_server *srv, int index)
{
	struct bg_worker *w = aligned_alloc(64, sizeof(*w));

	if (w == NULL)
		return NULL;
	memset(w, 0, sizeof(*w));
	w->srv = srv;
	w->index = index;
	w->stop_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	w->inbox = bg_ring_new(4096, false);
	w->bcast = bg_ring_new(BCAST_RING, false);
	if (w->stop_efd < 0 || w->inbox == NULL || w->bcast == NULL ||
	    sem_init(&w->ready, 0, 0) != 0) {
		bg_log_errno("worker: eventfd()/ring");
		bg_ring_free(w->inbox);
		bg_ring_free(w->bcast);
		if (w->stop_efd >= 0)
			close(w->stop_efd);
		free(w);
		return NULL;
	}
	return w;
}

int
bg_worker_start(struct bg_worker *w)
{
	int rc = pthread_create(&w->thread, NULL, worker_main, w);

	if (rc != 0) {
		errno = rc;
		bg_log_errno("pthread_create()");
		return BG_ERR;
	}
	while (sem_wait(&w->ready) != 0 && errno == EINTR)
		;
	return w->ready_rc;
}

void
bg_worker_stop(struct bg_worker *w)
{
	uint64_t one = 1;

	if (write(w->stop_efd, &one, sizeof(one)) < 0)
		bg_log_errno("write(stop eventfd)");
}

int
bg_worker_join(struct bg_worker *w, const struct timespec *deadline)
{
	return pthread_timedjoin_np(w->thread, NULL, deadline) == 0 ?
	       BG_OK : BG_AGAIN;
}

void
bg_worker_free(struct bg_worker *w)
{
	void *p;

	while ((p = bg_ring_pop(w->bcast)) != NULL)
		bg_msg_unref(p);
	while ((p = bg_ring_pop(w->inbox)) != NULL)
		bg_sock_drop(w->srv, p);
	bg_ring_free(w->inbox);
	bg_ring_free(w->bcast);
	close(w->stop_efd);
	sem_destroy(&w->ready);
	free(w);
}

bool
bg_worker_adopt(struct bg_worker *w, struct bg_sock *s)
{
	return bg_ring_push(w->inbox, s);
}

bool
bg_worker_deliver_defer(struct bg_worker *w, struct bg_msg *m, bool *wake)
{
	/* Counted before the push: the worker subtracts once it pops. */
	__atomic_add_fetch(&w->bcast_bytes, m->frames[0].len,
			   __ATOMIC_RELAXED);
	if (bg_ring_push_defer(w->bcast, m, wake))
		return true;
	__atomic_sub_fetch(&w->bcast_bytes, m->frames[0].len,
			   __ATOMIC_RELAXED);
	return false;
}

void
bg_worker_wake(struct bg_worker *w)
{
	bg_ring_wake(w->bcast);
}

bool
bg_worker_deliver(struct bg_worker *w, struct bg_msg *m)
{
	bool wake = false;

	if (!bg_worker_deliver_defer(w, m, &wake))
		return false;
	if (wake)
		bg_worker_wake(w);
	return true;
}

bool
bg_worker_congested(const struct bg_worker *w)
{
	uint64_t pct = (uint64_t)bg_server_cfg(w->srv)->backpressure;
	uint64_t n = __atomic_load_n(&w->backed_up, __ATOMIC_RELAXED);

	if (pct == 0)
		return false;
	/* A quarter: a connection is backed up at half of max_queued_bytes,
	 * and what is in flight to the worker when the bus stops must still
	 * fit in its queue on top of that. */
	if (bg_ring_count(w->bcast) > BCAST_RING / 2 ||
	    __atomic_load_n(&w->bcast_bytes, __ATOMIC_RELAXED) >
	    bg_server_cfg(w->srv)->max_queued_bytes / 4)
		return true;
	/* Connections in their close handshake read nothing more: they are
	 * not the readers whose share decides. */
	uint64_t open = __atomic_load_n(&w->conns_gauge, __ATOMIC_RELAXED);
	uint64_t closing = __atomic_load_n(&w->closing_conns,
					   __ATOMIC_RELAXED);

	open = open > closing ? open - closing : 0;
	return n > 0 && n * 100 > pct * open;
}
