/*
 * bus.c - the bus thread. It drains the outbox (MPSC, from every worker)
 * and feeds every worker's broadcast ring, in one of two modes:
 *
 * - standalone ([amqp] url = none): outbox messages fan out locally;
 * - AMQP: outbox messages are published to RabbitMQ, and what the node's
 *   queue delivers (from any node or publisher) is validated, framed once
 *   and fanned out, then acked. While the broker is down the link is
 *   rebuilt with jittered exponential backoff (100 ms to 10 s) and workers
 *   answer "unavailable".
 *
 * Threads: bg_bus_publish and the getters run on workers; the loop on the
 * bus thread; the rest on main. A full worker ring makes the bus wait and
 * retry: nothing is dropped while the node runs.
 *
 * A message can fail, the link cannot: what one message's content makes
 * impossible (a routing key over 255 bytes, a body too large, rabbitmq-c
 * unable to encode it) fails that message, counted, and the link stays.
 * A message whose publish failed because the link went down is held and
 * sent first on the next link, at most PUBLISH_TRIES times in all.
 *
 * Backpressure (DESIGN.md): while a worker is congested
 * (the sink's congested: most of its connections backed up, or the
 * broadcasts handed to it not yet fanned out worth half a queue), a
 * broadcast given to bg_bus_publish is refused with BG_BUS_BUSY, and
 * deliveries from RabbitMQ are held here unacked instead of fanned out,
 * so [amqp] prefetch bounds them and the broker keeps the rest.
 *
 * The outbox is one MPSC ring on purpose: its push order is the order in
 * which POSTs were answered, so one publisher's broadcasts keep their
 * order even when its requests land on different workers (they do: each
 * POST has its own connection). Per-worker SPSC outboxes lose that. The
 * price is ck's MPSC enqueue, which spins while an earlier producer sits
 * between its reservation and its commit (a few instructions).
 */
#include "amqp/bus.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "amqp/control.h"
#include "amqp/history.h"
#include "amqp/link.h"
#include "common/bg.h"
#include "common/chan.h"
#include "common/log.h"
#include "common/proto.h"
#include "common/ring.h"

#define OUTBOX_SIZE 65536
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 10000
/* Attempts to publish one message over failing links before it is
 * dropped: an outage costs one failed try, a second link takes it. */
#define PUBLISH_TRIES 3
/* How often held deliveries are offered to the workers again. */
#define PAUSE_POLL_MS 10

/* A delivery held while the workers are congested. tag 0: not ackable
 * any more (its channel is gone). m NULL: rejected, only to be acked in
 * order. */
struct held_delivery {
	struct bg_msg *m;
	uint64_t tag;
	uint64_t pos;               /* history position, 0 = none */
	bool quiet;                 /* catch-up: kept, not fanned out */
	struct held_delivery *next;
};

/* Own broadcasts published and not back yet, at most (oldest dropped:
 * it is then parsed again when it comes, as any other). */
#define OWN_MAX 4096

/* A broadcast this node published, kept until RabbitMQ delivers it back
 * to the node's queue: it is fanned out as built, not parsed again. */
struct own_msg {
	uint64_t seq;               /* in its message-id */
	struct bg_msg *m;           /* one reference */
};

/* A channel unsubscribed node-wide stays bound this long: a client that
 * comes back (reconnects, page reloads) costs the broker nothing. */
#define BIND_LINGER_MS 10000
#define INTEREST_RING 65536
/* Bind-oks awaited at once, at most (more: bound without waiting). */
#define BIND_WAIT_MAX 4096

/* A worker's news about a channel: its first local subscriber (+1) or
 * its last one gone (-1). Worker -> bus, malloc'd, freed by the bus. */
struct interest {
	int delta;
	uint32_t len;
	char name[];
};

/* A channel some worker of this node has (or had, lingering) a
 * subscriber for, and the node queue's binding for it. Bus thread. */
struct binding {
	struct binding *next;       /* hash chain */
	uint32_t hash;
	uint32_t workers;           /* workers with a subscriber */
	uint64_t idle_ms;           /* when workers fell to 0; 0 in use */
	bool bound;                 /* the broker has it */
	bool sent;                  /* queue.bind sent, bind-ok awaited */
	char name[];
};

enum { STATE_DISABLED, STATE_DISCONNECTED, STATE_CONNECTED };

/* Broadcasts fanned out in a batch after which the workers owed a
 * wake-up get it even though the batch goes on (a long batch must not
 * hold them). */
#define WAKE_EVERY 32

struct bg_bus {
	struct bg_bus_sink sink;    /* immutable: the server's side */
	/* Bus thread: workers owed a wake-up by fan_out, given once at the
	 * end of the batch of messages being handed on (give_wakes), so
	 * that a worker holding subscribers of several of them wakes once
	 * for all. */
	uint64_t wake_bits[BG_WORKERS_MAX / 64];
	bool wakes_owed;
	unsigned int batch;         /* > 0: inside a batch */
	unsigned int batch_fanouts; /* messages fanned out since the last
	                               give_wakes */
	struct bg_control *ctl;     /* immutable */
	struct bg_ring *outbox;     /* workers -> bus */
	int stop_efd;               /* immutable */
	unsigned int stopping;      /* atomic */
	unsigned int quiet;         /* atomic: no new connection attempts */
	pthread_t thread;
	pthread_t owner;            /* the bus thread: it writes it first,
	                               before anything reaches it */
	bool started;
	uint64_t broadcasts;        /* bus writes, any reads */
	uint64_t rejected;          /* bus writes, any reads */
	uint64_t reconnects;        /* bus writes, any reads */
	uint64_t pub_invalid;       /* atomic: any thread adds */
	uint64_t pub_dropped;       /* bus writes, any reads */
	uint64_t busy;              /* atomic: any thread adds */
	uint64_t pauses;            /* bus writes, any reads */
	uint64_t n_waiting;         /* bus writes, any reads: gauge */
	unsigned int state;         /* atomic: STATE_* */

	/* AMQP mode, bus thread only. */
	struct bg_link *link;       /* NULL in standalone mode */
	struct bg_msg *held;        /* publish failed: sent first on return */
	unsigned int held_tries;    /* failed publishes of held */
	struct held_delivery *waiting, **waiting_tail;
	uint64_t epoch;             /* the link's, for the tags we hold */
	uint64_t done_tag;          /* every delivery up to it is handled */
	uint64_t acked_tag;
	unsigned int attempt;       /* failed connects in a row */
	uint64_t next_try_ms;
	bool ever_connected;
	unsigned int first_try_done; /* atomic: the first connection attempt
	                                ended (or there is no link) */
	unsigned int seed;
	struct own_msg *own;        /* ring of OWN_MAX, oldest at own_head */
	uint32_t own_head, own_count;
	uint64_t own_seq;           /* last message-id number used */
	char own_prefix[40];        /* "bagou:NODE:" */
	size_t own_prefix_len;
	uint64_t own_reused;        /* bus writes, any reads */

	/* Per-channel bindings (AMQP mode). */
	struct bg_ring *interest;   /* workers -> bus: struct interest * */
	unsigned int interest_lost; /* atomic: a worker could not queue
	                               its news: bind "#" from then on */
	bool bind_all;              /* bus: "#" bound (interest_lost) */
	struct binding **bind_tab;  /* bus thread: hash of bindings */
	uint32_t bind_buckets, n_bindings, n_idle;
	struct binding *bind_wait[BIND_WAIT_MAX]; /* bind-oks awaited, in
	                               order sent (ring) */
	uint32_t bind_wait_head, bind_wait_n;
	uint64_t next_sweep_ms;
	uint64_t bind_ops;          /* bus writes, any reads: binds and
	                               unbinds sent */
	uint64_t n_bound;           /* bus writes, any reads: gauge */

	/* History (amqp/history.h): the store, bus thread only; requests
	 * waiting for the node to catch up with the stream. */
	struct bg_history *hist;
	struct bg_hist_req *deferred;
	uint64_t expire_ms;          /* next ttl sweep */
	bool stream;                 /* AMQP with history: the stream */
	bool catching_up;            /* before our marker came back */
	bool epoch_seen;             /* an epoch record seen since start */
	bool floor_set;              /* the first position is known */
	uint64_t last_pos;           /* the latest stream position */
	uint64_t epoch_ms;           /* next epoch record to publish */
	uint64_t catch_up_until_ms;  /* a marker lost: live anyway then */

	/* Reading the stream back for a position older than memory, one
	 * request at a time (the others queue). */
	struct bg_hist_req *rb_req;
	struct bg_hist_req *rb_queue;
	uint64_t rb_next;            /* the position expected next */
	uint64_t rb_target;          /* memory holds what follows it */
	uint64_t rb_deadline_ms;
	struct bg_hist_pub *rb_pubs;
	uint32_t rb_n, rb_cap;
};

/* The configuration in force (the sink's; never kept past a turn). */
#define CFG(b) ((b)->sink.cfg((b)->sink.arg))

/* A control-plane delivery, from inside bg_link_service: queued for
 * bg_control_service, which may use the link. */
static void
on_control(void *arg, enum bg_link_source src, const void *body, size_t len,
	   const char *reply_to, const char *correlation_id)
{
	struct bg_bus *b = arg;

	if (src == BG_LINK_CONTROL)
		bg_control_deliver(b->ctl, body, len);
	else
		bg_control_request(b->ctl, body, len, reply_to,
				   correlation_id);
}

struct bg_bus *
bg_bus_new(const struct bg_bus_sink *sink, struct bg_control *ctl)
{
	struct bg_bus *b = calloc(1, sizeof(*b));

	if (b == NULL)
		return NULL;
	b->sink = *sink;
	b->ctl = ctl;
	bg_control_use_bus(ctl, b);
	b->state = STATE_DISABLED;
	if (!bg_config_standalone(CFG(b))) {
		char err[512];
		b->link = bg_link_new(CFG(b), err, sizeof(err));
		if (b->link == NULL) {
			bg_log_error("%s", err);
			free(b);
			return NULL;
		}
		bg_link_set_control(b->link, sink->node_id, on_control, b);
		b->state = STATE_DISCONNECTED;
		/* With history, broadcasts come from the stream (bound with
		 * '#'): the node queue needs no channel bindings. */
		bool per_channel = !CFG(b)->amqp_bind_all &&
				   CFG(b)->history_channels[0] == '\0';
		if (per_channel) {
			b->bind_buckets = 256;
			b->bind_tab = calloc(b->bind_buckets,
					     sizeof(*b->bind_tab));
			b->interest = bg_ring_new(INTEREST_RING, true);
		}
		b->own = calloc(OWN_MAX, sizeof(*b->own));
		b->own_prefix_len = (size_t)snprintf(b->own_prefix,
						     sizeof(b->own_prefix),
						     "bagou:%s:",
						     sink->node_id);
		if (b->own == NULL || (per_channel &&
		    (b->bind_tab == NULL || b->interest == NULL))) {
			bg_log_error("bus: out of memory");
			bg_link_free(b->link);
			bg_ring_free(b->interest);
			free(b->bind_tab);
			free(b->own);
			free(b);
			return NULL;
		}
	}
	b->hist = bg_history_new(CFG(b));
	if (b->hist == NULL) {
		bg_link_free(b->link);
		free(b);
		return NULL;
	}
	b->stream = b->link != NULL && bg_history_on(b->hist);
	b->waiting_tail = &b->waiting;
	b->seed = (unsigned int)time(NULL) ^ (unsigned int)getpid();
	b->outbox = bg_ring_new(OUTBOX_SIZE, true);
	b->stop_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (b->outbox == NULL || b->stop_efd < 0) {
		bg_log_errno("bus: eventfd()/ring");
		bg_history_free(b->hist);
		bg_link_free(b->link);
		bg_ring_free(b->outbox);
		if (b->stop_efd >= 0)
			close(b->stop_efd);
		free(b);
		return NULL;
	}
	return b;
}

/* ------------------------------------------ own broadcasts coming back */

static void
own_pop(struct bg_bus *b, bool release)
{
	struct own_msg *o = &b->own[b->own_head];

	if (release)
		bg_msg_unref(o->m);
	o->m = NULL;
	b->own_head = (b->own_head + 1) % OWN_MAX;
	b->own_count--;
}

/* Keeps m (the caller's reference), published with message-id seq. */
static void
own_keep(struct bg_bus *b, uint64_t seq, struct bg_msg *m)
{
	if (b->own_count == OWN_MAX)
		own_pop(b, true);
	b->own[(b->own_head + b->own_count) % OWN_MAX] =
		(struct own_msg){ seq, m };
	b->own_count++;
}

/* Nothing published on a lost link comes back (the exclusive queue
 * went with it). */
static void
own_clear(struct bg_bus *b)
{
	while (b->own_count > 0)
		own_pop(b, true);
}

/* The message this node published with message-id mid, taken back, or
 * NULL. One publishing channel into one queue keeps order, so whatever
 * was published before it and is still kept will not come any more. */
static struct bg_msg *
own_take(struct bg_bus *b, const char *mid, size_t len)
{
	uint64_t seq = 0;
	struct bg_msg *m;

	if (b->own == NULL || len <= b->own_prefix_len || len > 60 ||
	    memcmp(mid, b->own_prefix, b->own_prefix_len) != 0)
		return NULL;
	for (size_t i = b->own_prefix_len; i < len; i++) {
		if (mid[i] < '0' || mid[i] > '9')
			return NULL;
		seq = seq * 10 + (uint64_t)(mid[i] - '0');
	}
	while (b->own_count > 0 && b->own[b->own_head].seq < seq)
		own_pop(b, true);
	if (b->own_count == 0 || b->own[b->own_head].seq != seq)
		return NULL;
	m = b->own[b->own_head].m;
	own_pop(b, false);
	bg_stat_add(&b->own_reused, 1);
	return m;
}

/* Wakes the workers fan_out left a wake-up to. */
static void
give_wakes(struct bg_bus *b)
{
	b->batch_fanouts = 0;
	if (!b->wakes_owed)
		return;
	b->wakes_owed = false;
	for (int k = 0; k < BG_WORKERS_MAX / 64; k++) {
		uint64_t bits = b->wake_bits[k];

		b->wake_bits[k] = 0;
		while (bits != 0) {
			b->sink.wake(b->sink.arg, k * 64 + __builtin_ctzll(bits));
			bits &= bits - 1;
		}
	}
}

/* A batch of messages handed on (the outbox, a read from the broker):
 * the wake-ups their fan-outs owe are given at its end. */
static void
batch_begin(struct bg_bus *b)
{
	b->batch++;
}

static void
batch_end(struct bg_bus *b)
{
	if (--b->batch == 0)
		give_wakes(b);
}

/* Pushes m (its reference taken over) into worker i's ring, waiting
 * while the ring is full. The wake-up it may owe the worker is noted
 * for give_wakes (fan_out gives it per batch); other callers give it
 * at once. false when the bus stops meanwhile: m is dropped. */
static bool
push_worker(struct bg_bus *b, int i, struct bg_msg *m)
{
	long wait_ns = 20000;
	bool wake = false;

	while (!b->sink.deliver(b->sink.arg, i, m, &wake)) {
		struct timespec ts = { 0, wait_ns };
		if (__atomic_load_n(&b->stopping, __ATOMIC_RELAXED)) {
			bg_msg_unref(m);
			return false;
		}
		/* A full ring's worker may be owed its wake-up. */
		give_wakes(b);
		nanosleep(&ts, NULL);
		if (wait_ns < 1000000)
			wait_ns *= 2;
	}
	if (wake) {
		b->wake_bits[i / 64] |= UINT64_C(1) << (i % 64);
		b->wakes_owed = true;
	}
	return true;
}

/* push_worker for an answer (history, a job's): woken at once. */
static bool
to_worker(struct bg_bus *b, int i, struct bg_msg *m)
{
	bool ok = push_worker(b, i, m);

	give_wakes(b);
	return ok;
}

/* Hands m to every worker, waiting while a ring is full. */
static void
fan_out(struct bg_bus *b, struct bg_msg *m)
{
	const struct bg_bus_sink *sk = &b->sink;
	bool is_broadcast = m->target != BG_MSG_BOUND &&
			    m->target != BG_MSG_TASK;

	bg_msg_hash(m); /* ours alone until pushed */
	for (int i = 0; i < sk->n_workers; i++) {
		/* A worker none of whose clients m concerns is not woken. */
		if (!sk->wants(sk->arg, i, m))
			continue;
		bg_msg_ref(m);
		if (!push_worker(b, i, m))
			break;
		if (is_broadcast)
			sk->count(sk->arg, i);
	}
	if (is_broadcast)
		bg_stat_add(&b->broadcasts, 1);
	bg_msg_unref(m);
	if (b->batch == 0 || ++b->batch_fanouts >= WAKE_EVERY)
		give_wakes(b);
}

static uint64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* How long a request naming a later position than the node has seen
 * waits for the stream to catch up before it is answered as a gap. */
#define HIST_WAIT_MS 3000
/* Reading the stream back: at most this long, and this many
 * publications of the channel. */
#define RB_MAX_MS 5000
#define RB_MAX_PUBS 100000
/* Longest catch-up on the stream at start before the node goes live
 * without its marker. */
#define CATCH_UP_MAX_MS 30000

/* Sends an answered request back: into the asking worker's ring, in
 * order with the broadcasts (what follows it there came after it), or
 * to the server API's callback. Takes m. */
static void
hist_reply(struct bg_bus *b, struct bg_msg *m)
{
	struct bg_hist_req *r = bg_hist_req_of(m);
	void *arg;

	if (r->kind == BG_HIST_API || r->worker < 0 ||
	    r->worker >= b->sink.n_workers) {
		arg = r->arg;
		r->arg = NULL; /* answered: not forgotten */
		if (r->kind == BG_HIST_API && r->answered != NULL)
			r->answered(r, arg);
		bg_msg_unref(m);
		return;
	}
	to_worker(b, r->worker, m);
}

/* A job (m->job_fn): run here, then its answer, if it has one, to the
 * asking worker, in order with the broadcasts. Takes m. */
static void
job_serve(struct bg_bus *b, struct bg_msg *m)
{
	m->job_fn(m);
	if (m->answer_fn == NULL || m->reply_worker < 0 ||
	    m->reply_worker >= b->sink.n_workers) {
		bg_msg_unref(m);
		return;
	}
	to_worker(b, m->reply_worker, m);
}

static void rb_enqueue(struct bg_bus *b, struct bg_hist_req *r,
		       uint64_t floor);

/* Answers r, or hands it to the read-back when it names a position
 * older than memory; false when it must wait (catching up, or the
 * node behind the client's position) unless late. */
static bool
hist_try(struct bg_bus *b, struct bg_hist_req *r, bool late)
{
	uint64_t floor;

	if (b->catching_up && !late)
		return false;
	/* No read-back once stopping: it would wait on the broker. */
	if (b->stream && !b->catching_up && bg_link_up(b->link) &&
	    !__atomic_load_n(&b->stopping, __ATOMIC_RELAXED) &&
	    bg_history_behind_memory(b->hist, r, &floor)) {
		rb_enqueue(b, r, floor);
		return true;
	}
	if (!bg_history_answer(b->hist, r, late))
		return false;
	hist_reply(b, r->self);
	return true;
}

/* A request from the outbox: answered now, or deferred while the node
 * is behind the stream. Takes m. */
static void
hist_serve(struct bg_bus *b, struct bg_msg *m)
{
	struct bg_hist_req *r = bg_hist_req_of(m);

	if (hist_try(b, r, false))
		return;
	r->wait_until_ms = now_ms() + HIST_WAIT_MS;
	r->next_wait = b->deferred;
	b->deferred = r;
}

/* Deferred requests: answered once the node has caught up, or as they
 * are when their wait is over (or the node stops: force). */
static void
hist_retry(struct bg_bus *b, bool force)
{
	struct bg_hist_req **p = &b->deferred, *r, *next;
	uint64_t now = now_ms();

	while ((r = *p) != NULL) {
		/* Read first: once answered, r may be freed (by a worker,
		 * or by the answered callback's reference drop). */
		next = r->next_wait;
		/* Late while catching up: a gap, never a hole. */
		if (!hist_try(b, r, force || now >= r->wait_until_ms)) {
			p = &r->next_wait;
			continue;
		}
		*p = next;
	}
}

/* The node stops: the other nodes hear "bye", open queries end with
 * what came, and deferred history requests are answered as they are
 * (their answers leave at once: the control plane is stopping; one
 * older than memory gets what memory holds, with its gap). Only a
 * request reading the stream back already is left unanswered; it is
 * ended at teardown (common/histreq.h, forget). */
static void
stop_answering(struct bg_bus *b)
{
	bg_control_bye(b->ctl);
	hist_retry(b, true);
}

/* ------------------------------------------------ reading back */

static void rb_finish(struct bg_bus *b, bool complete);

static bool
rb_grow(struct bg_bus *b)
{
	uint32_t cap = b->rb_cap ? b->rb_cap * 2 : 64;
	struct bg_hist_pub *p = realloc(b->rb_pubs, cap * sizeof(*p));

	if (p == NULL)
		return false;
	b->rb_pubs = p;
	b->rb_cap = cap;
	return true;
}

static void
rb_begin(struct bg_bus *b, struct bg_hist_req *r, uint64_t floor)
{
	/* It waits on the broker: the workers go first. */
	give_wakes(b);
	b->rb_req = r;
	b->rb_target = floor;
	b->rb_next = r->offset + 1;
	b->rb_n = 0;
	b->rb_deadline_ms = now_ms() + RB_MAX_MS;
	if (b->rb_next > b->rb_target) {
		rb_finish(b, true);
		return;
	}
	if (bg_link_readback_start(b->link, b->rb_next) != BG_OK)
		rb_finish(b, false);
}

static void
rb_enqueue(struct bg_bus *b, struct bg_hist_req *r, uint64_t floor)
{
	struct bg_hist_req **p = &b->rb_queue;

	if (b->rb_req == NULL) {
		rb_begin(b, r, floor);
		return;
	}
	while (*p != NULL)
		p = &(*p)->next_wait;
	r->next_wait = NULL;
	*p = r;
}

/* The read-back is over: complete (every position up to rb_target
 * seen), or not (the stream no longer holds them, too slow, the link
 * went). The answer joins what was read to what memory holds after
 * rb_target, when memory still holds all of it; else it is a gap. */
static void
rb_finish(struct bg_bus *b, bool complete)
{
	struct bg_hist_req *r = b->rb_req;
	uint64_t asked = r->offset;

	/* It waits on the broker: the workers go first. */
	give_wakes(b);
	b->rb_req = NULL;
	bg_link_readback_stop(b->link);
	if (complete) {
		r->offset = b->rb_target;
		bg_history_answer(b->hist, r, true);
		r->offset = asked;
		complete = r->recovered;
	}
	if (complete) {
		bg_history_prepend(r, b->rb_pubs, b->rb_n);
	} else {
		for (uint32_t i = 0; i < b->rb_n; i++)
			bg_msg_unref(b->rb_pubs[i].m);
		/* As memory alone answers it: a gap. */
		bg_history_answer(b->hist, r, true);
	}
	b->rb_n = 0;
	hist_reply(b, r->self);
	while (b->rb_req == NULL && (r = b->rb_queue) != NULL) {
		b->rb_queue = r->next_wait;
		if (!hist_try(b, r, true)) {
			bg_history_answer(b->hist, r, true);
			hist_reply(b, r->self);
		}
	}
}

/* A delivery of the read-back channel. */
static void
rb_delivery(struct bg_bus *b, const void *body, size_t len, uint64_t tag)
{
	uint64_t pos = bg_link_delivery_pos(b->link);
	struct bg_hist_req *r = b->rb_req;
	enum bg_code code;
	struct bg_msg *m;
	char err[8];
	int idx;

	if (bg_link_readback_ack(b->link, tag) != BG_OK || r == NULL ||
	    pos < b->rb_next)
		return;
	if (pos > b->rb_next) {
		/* Positions the stream no longer holds (retention). */
		rb_finish(b, false);
		return;
	}
	b->rb_next = pos + 1;
	if (!bg_link_delivery_note(b->link) && pos <= b->rb_target &&
	    len <= CFG(b)->max_message_size &&
	    (m = bg_proto_broadcast_text(body, len, NULL, &code, err,
					 sizeof(err))) != NULL) {
		idx = bg_history_frame_for(b->hist, m, pos, r->channel);
		if (idx < 0) {
			bg_msg_unref(m);
		} else if (b->rb_n == b->rb_cap &&
			   (b->rb_cap >= RB_MAX_PUBS ||
			    !rb_grow(b))) {
			bg_msg_unref(m);
			rb_finish(b, false);
			return;
		} else {
			b->rb_pubs[b->rb_n++] = (struct bg_hist_pub){
				.m = m, .frame = (uint32_t)idx,
				.offset = pos };
		}
	}
	if (pos >= b->rb_target)
		rb_finish(b, true);
}

static void new_epoch(struct bg_bus *b);

/* Once a second: publications past [history] ttl go. */
static void
hist_tick(struct bg_bus *b)
{
	uint64_t now = now_ms();

	if (b->catching_up && now >= b->catch_up_until_ms) {
		/* Our marker never came back: clients must not wait for
		 * live broadcasts any longer. What was read so far is kept;
		 * positions before it stay unknown (gaps). */
		bg_log_warn("history: no catch-up marker back from the stream "
			    "within %d s; delivering live from here",
			    CATCH_UP_MAX_MS / 1000);
		b->catching_up = false;
		if (!b->epoch_seen)
			new_epoch(b);
		hist_retry(b, false);
	}
	if (b->rb_req != NULL && now >= b->rb_deadline_ms)
		rb_finish(b, false);
	if (b->deferred != NULL)
		hist_retry(b, false);
	if (now < b->expire_ms)
		return;
	b->expire_ms = now + 1000;
	bg_history_expire(b->hist, now);
	/* Every ttl/2: the epoch record again, so that a node starting
	 * later finds one in its catch-up window. */
	if (b->stream && !b->catching_up && bg_link_up(b->link) &&
	    now >= b->epoch_ms) {
		b->epoch_ms = now + (uint64_t)CFG(b)->
			      history_ttl * 500;
		bg_link_publish_epoch(b->link, bg_history_epoch(b->hist));
	}
}

bool
bg_bus_congested(const struct bg_bus *b)
{
	/* A worker not created yet (start-up) holds nothing. */
	for (int i = 0; i < b->sink.n_workers; i++)
		if (b->sink.congested(b->sink.arg, i))
			return true;
	return false;
}

/* ------------------------------------------- per-channel bindings */

static struct binding *
binding_find(const struct bg_bus *b, const char *name, size_t len,
	     uint32_t h)
{
	struct binding *e = b->bind_tab[h & (b->bind_buckets - 1)];

	for (; e != NULL; e = e->next)
		if (e->hash == h && strncmp(e->name, name, len) == 0 &&
		    e->name[len] == '\0')
			return e;
	return NULL;
}

/* Doubles the table when bindings outnumber buckets (best effort). */
static void
bindings_grow(struct bg_bus *b)
{
	uint32_t n = b->bind_buckets * 2;
	struct binding **t = calloc(n, sizeof(*t));

	if (t == NULL)
		return;
	for (uint32_t i = 0; i < b->bind_buckets; i++) {
		struct binding *e = b->bind_tab[i], *next;
		for (; e != NULL; e = next) {
			next = e->next;
			e->next = t[e->hash & (n - 1)];
			t[e->hash & (n - 1)] = e;
		}
	}
	free(b->bind_tab);
	b->bind_tab = t;
	b->bind_buckets = n;
}

static struct binding *
binding_add(struct bg_bus *b, const char *name, size_t len, uint32_t h)
{
	struct binding *e = calloc(1, sizeof(*e) + len + 1);

	if (e == NULL)
		return NULL;
	memcpy(e->name, name, len);
	e->hash = h;
	e->next = b->bind_tab[h & (b->bind_buckets - 1)];
	b->bind_tab[h & (b->bind_buckets - 1)] = e;
	if (++b->n_bindings > b->bind_buckets)
		bindings_grow(b);
	return e;
}

/* Tells every worker that the node queue is bound for name (NULL: for
 * every channel): the subscribe answers they hold go out. In order with
 * the broadcasts, through their rings. */
static void
announce_bound(struct bg_bus *b, const char *name)
{
	size_t len = name ? strlen(name) : 0;
	struct bg_msg *m = bg_msg_new_packed(BG_MSG_BOUND, name ? 1 : 0,
					     len + 1);

	if (m == NULL) {
		bg_log_error("amqp: out of memory: subscribe answers held");
		return;
	}
	if (name != NULL) {
		m->names[0] = bg_msg_carve(m, len + 1);
		memcpy(m->names[0], name, len + 1);
	}
	fan_out(b, m);
}

/* Binds e, awaiting its bind-ok (then announced). false when the link
 * failed. */
static bool
send_bind(struct bg_bus *b, struct binding *e)
{
	bool wait = b->bind_wait_n < BIND_WAIT_MAX;

	if (bg_link_bind(b->link, e->name, !wait) != BG_OK)
		return false;
	bg_stat_add(&b->bind_ops, 1);
	if (!wait) {
		/* Too many in flight: the broker orders it before anything
		 * published after it on this channel. */
		e->bound = true;
		bg_stat_add(&b->n_bound, 1);
		announce_bound(b, e->name);
		return true;
	}
	b->bind_wait[(b->bind_wait_head + b->bind_wait_n++) % BIND_WAIT_MAX] =
		e;
	e->sent = true;
	return true;
}

/* The link's bind-ok, in the order the binds were sent. */
static void
on_bound(void *arg)
{
	struct bg_bus *b = arg;
	struct binding *e;

	if (b->bind_wait_n == 0)
		return;
	e = b->bind_wait[b->bind_wait_head];
	b->bind_wait_head = (b->bind_wait_head + 1) % BIND_WAIT_MAX;
	b->bind_wait_n--;
	e->sent = false;
	if (!e->bound)
		bg_stat_add(&b->n_bound, 1);
	e->bound = true;
	if (e->workers > 0)
		announce_bound(b, e->name);
}

/* The link declares its topology (connect, reopened channel): every
 * channel the node holds or lets linger is bound again, without
 * waiting; consuming starts only after, so nothing is missed. */
static void
rebind(void *arg, struct bg_link *l)
{
	struct bg_bus *b = arg;
	uint64_t n = 0;

	b->bind_wait_n = 0;
	if (b->bind_all || __atomic_load_n(&b->interest_lost,
					   __ATOMIC_RELAXED)) {
		b->bind_all = true;
		if (bg_link_bind(l, "#", true) != BG_OK)
			return;
	}
	for (uint32_t i = 0; i < b->bind_buckets; i++) {
		for (struct binding *e = b->bind_tab[i]; e; e = e->next) {
			e->sent = false;
			e->bound = bg_link_bind(l, e->name, true) == BG_OK;
			if (!e->bound)
				return;
			n++;
		}
	}
	bg_stat_add(&b->bind_ops, n);
	__atomic_store_n(&b->n_bound, n, __ATOMIC_RELAXED);
}

/* The link came up (bound with the topology) or went down (nothing is
 * bound, nothing will be until it is back): either way, whatever a
 * worker holds waiting for a binding goes out now. */
static void
bindings_reset(struct bg_bus *b, bool up)
{
	if (b->bind_tab == NULL)
		return;
	b->bind_wait_n = 0;
	if (!up) {
		for (uint32_t i = 0; i < b->bind_buckets; i++)
			for (struct binding *e = b->bind_tab[i]; e;
			     e = e->next)
				e->bound = e->sent = false;
		__atomic_store_n(&b->n_bound, 0, __ATOMIC_RELAXED);
	}
	announce_bound(b, NULL);
}

/* What the workers said about their channels. false when the link
 * failed while binding. */
static bool
take_interest(struct bg_bus *b)
{
	struct interest *r;
	bool ok = true;

	if (b->interest == NULL)
		return true;
	/* Binding writes to the broker's socket: the workers go first. */
	give_wakes(b);
	bg_ring_clear(b->interest);
	do {
		while ((r = bg_ring_pop(b->interest)) != NULL) {
			uint32_t h = bg_chan_hash(r->name, r->len);
			struct binding *e = binding_find(b, r->name, r->len,
							 h);
			if (r->delta > 0) {
				if (e == NULL)
					e = binding_add(b, r->name, r->len, h);
				if (e == NULL) {
					/* Bind everything rather than miss. */
					__atomic_store_n(&b->interest_lost, 1,
							 __ATOMIC_RELAXED);
					announce_bound(b, r->name);
				} else {
					if (e->workers++ == 0 &&
					    e->idle_ms != 0) {
						e->idle_ms = 0;
						b->n_idle--;
					}
					if (e->bound || b->bind_all ||
					    !bg_link_up(b->link))
						announce_bound(b, e->name);
					else if (!e->sent && ok)
						ok = send_bind(b, e);
				}
			} else if (e != NULL && e->workers > 0 &&
				   --e->workers == 0) {
				e->idle_ms = now_ms();
				b->n_idle++;
			}
			free(r);
		}
	} while (!bg_ring_sleep(b->interest));
	if (ok && !b->bind_all && bg_link_up(b->link) &&
	    __atomic_load_n(&b->interest_lost, __ATOMIC_RELAXED)) {
		bg_log_warn("amqp: channel news lost (out of memory or ring "
			    "full): binding '#' from now on");
		ok = bg_link_bind(b->link, "#", true) == BG_OK;
		b->bind_all = true;
		announce_bound(b, NULL);
	}
	return ok;
}

/* Unbinds the channels no worker has had a subscriber for during
 * BIND_LINGER_MS; at most once a second. false when the link failed. */
static bool
sweep_bindings(struct bg_bus *b, uint64_t now)
{
	bool ok = true;

	if (b->n_idle == 0 || now < b->next_sweep_ms)
		return true;
	b->next_sweep_ms = now + 1000;
	for (uint32_t i = 0; i < b->bind_buckets; i++) {
		struct binding **pp = &b->bind_tab[i], *e;
		while ((e = *pp) != NULL) {
			if (e->workers > 0 || e->sent ||
			    now - e->idle_ms < BIND_LINGER_MS) {
				pp = &e->next;
				continue;
			}
			if (e->bound && ok && bg_link_up(b->link)) {
				ok = bg_link_unbind(b->link, e->name) == BG_OK;
				bg_stat_add(&b->bind_ops, 1);
			}
			if (e->bound)
				bg_stat_add(&b->n_bound, (uint64_t)-1);
			*pp = e->next;
			free(e);
			b->n_idle--;
			b->n_bindings--;
		}
	}
	return ok;
}

/* Will RabbitMQ deliver m back to this node? Only then is it kept. */
static bool
comes_back(const struct bg_bus *b, const struct bg_msg *m)
{
	const struct binding *e;

	if (b->bind_tab == NULL || b->bind_all ||
	    m->target != BG_MSG_CHANNELS || m->n_names != 1)
		return true; /* "#", or routing key "" */
	e = binding_find(b, m->names[0], strlen(m->names[0]),
			 m->hashed ? m->hashes[0] :
			 bg_chan_hash(m->names[0], strlen(m->names[0])));
	return e != NULL && (e->bound || e->sent);

}


/* A broadcast from the broker, in order: it takes its history position
 * (history.h) just before it is fanned out, never earlier, so an answer
 * given between two fan-outs is exact. quiet (catch-up): kept only. */
static void
deliver_now(struct bg_bus *b, struct bg_msg *m, uint64_t pos, bool quiet)
{
	if (pos != 0)
		bg_history_record(b->hist, m, pos);
	if (quiet)
		bg_msg_unref(m);
	else
		fan_out(b, m);
}

/* Holds a delivery (m may be NULL: rejected) until the workers drain. */
static void
wait_delivery(struct bg_bus *b, struct bg_msg *m, uint64_t tag,
	      uint64_t pos, bool quiet)
{
	struct held_delivery *d = malloc(sizeof(*d));

	if (d == NULL) {
		/* Lost: the next (multiple) ack covers its tag too. */
		bg_log_error("amqp: delivery dropped: out of memory");
		bg_msg_unref(m);
		return;
	}
	if (b->waiting == NULL)
		bg_stat_add(&b->pauses, 1);
	*d = (struct held_delivery){ .m = m, .tag = tag, .pos = pos,
				     .quiet = quiet };
	*b->waiting_tail = d;
	b->waiting_tail = &d->next;
	bg_stat_add(&b->n_waiting, 1);
}

/* Fans held deliveries out, oldest first, while the workers take them. */
static void
release_waiting(struct bg_bus *b, bool force)
{
	struct held_delivery *d;

	while ((d = b->waiting) != NULL && (force || !bg_bus_congested(b))) {
		b->waiting = d->next;
		if (b->waiting == NULL)
			b->waiting_tail = &b->waiting;
		bg_stat_add(&b->n_waiting, (uint64_t)-1);
		if (d->m != NULL)
			deliver_now(b, d->m, d->pos, d->quiet);
		if (d->tag != 0)
			b->done_tag = d->tag;
		free(d);
	}
}

/* The channel went (reopened, or the link lost): its tags are void.
 * requeued: the broker gives the unacked deliveries again, so the held
 * ones are dropped rather than delivered twice. */
static void
forget_tags(struct bg_bus *b, bool requeued)
{
	struct held_delivery **p = &b->waiting, *d;

	while ((d = *p) != NULL) {
		if (requeued && d->tag != 0) {
			*p = d->next;
			bg_msg_unref(d->m);
			free(d);
			bg_stat_add(&b->n_waiting, (uint64_t)-1);
			continue;
		}
		d->tag = 0;
		p = &d->next;
	}
	b->waiting_tail = p;
	b->done_tag = b->acked_tag = 0;
	b->epoch = bg_link_channel_epoch(b->link);
}

/* A new epoch record: random, published to the stream for every node. */
static void
new_epoch(struct bg_bus *b)
{
	char epoch[BG_HIST_EPOCH_MAX + 1];

	/* It waits on the broker: the workers go first. */
	give_wakes(b);
	snprintf(epoch, sizeof(epoch), "s%08x%08x", (unsigned)time(NULL),
		 (unsigned)rand_r(&b->seed));
	bg_history_set_epoch(b->hist, epoch);
	b->epoch_seen = true;
	if (bg_link_publish_epoch(b->link, epoch) == BG_OK)
		bg_log_info("history: new epoch %s", epoch);
}

/*
 * A note in the stream (link.h): no broadcast, but it has a position.
 * Our marker ends the catch-up: the node knows the stream from there on,
 * takes the epoch it found (or starts one) and answers what waited.
 */
static void
on_note(struct bg_bus *b, int kind, uint64_t pos)
{
	bg_history_advance(b->hist, pos);
	if (kind == BG_LINK_EPOCH) {
		const char *e = bg_link_delivery_epoch(b->link);
		if (strcmp(e, bg_history_epoch(b->hist)) != 0)
			bg_log_info("history: epoch %s (from the stream)", e);
		bg_history_set_epoch(b->hist, e);
		b->epoch_seen = true;
	} else if (kind == BG_LINK_MARKER) {
		b->catching_up = false;
		if (!b->epoch_seen)
			new_epoch(b);
		bg_log_info("history: caught up with the stream at position "
			    "%llu, epoch %s", (unsigned long long)pos,
			    bg_history_epoch(b->hist));
		hist_retry(b, false);
	}
}

/* The stream's first position seen, or one lower than the last: the
 * stream is new (deleted and declared again, or a new broker), its
 * offsets restarted. Everything kept is void and the epoch changes. */
static void
check_restart(struct bg_bus *b, uint64_t pos)
{
	if (!b->floor_set) {
		b->floor_set = true;
		bg_history_reset(b->hist, bg_history_epoch(b->hist), pos - 1);
	} else if (pos <= b->last_pos) {
		bg_log_warn("history: the stream restarted (position %llu "
			    "after %llu): new epoch", (unsigned long long)pos,
			    (unsigned long long)b->last_pos);
		bg_history_reset(b->hist, bg_history_epoch(b->hist), pos - 1);
		new_epoch(b);
	}
	b->last_pos = pos;
}

/* A delivery from RabbitMQ: validated and framed once, then fanned out,
 * or held while the workers are congested. */
static void
on_delivery(void *arg, const void *body, size_t len, uint64_t tag,
	    const char *mid, size_t mid_len)
{
	struct bg_bus *b = arg;
	enum bg_code code;
	struct bg_msg *m;
	char err[200];
	size_t max = CFG(b)->max_message_size;
	uint64_t pos = b->stream ? bg_link_delivery_pos(b->link) : 0;
	int kind = b->stream ? bg_link_delivery_kind(b->link)
			     : BG_LINK_BROADCAST;

	if (kind == BG_LINK_READBACK) {
		rb_delivery(b, body, len, tag);
		return;
	}
	if (pos != 0)
		check_restart(b, pos);
	if (kind != BG_LINK_BROADCAST) {
		/* In order behind what is held (acked with it). */
		if (b->waiting != NULL)
			wait_delivery(b, NULL, tag, 0, false);
		else
			b->done_tag = tag;
		on_note(b, kind, pos);
		return;
	}
	if (mid_len > 0 && (m = own_take(b, mid, mid_len)) != NULL) {
		/* Ours, back from the broker: built and checked already
		 * (one parse per node). */
		code = BG_CODE_COUNT;
	} else if (len > max) {
		/* The same limit as POST /broadcast: one node's clients must
		 * not receive what another node's publishers cannot send. */
		code = BG_CODE_BAD_MESSAGE;
		snprintf(err, sizeof(err), "larger than max_message_size "
			 "(%zu bytes)", max);
		m = NULL;
	} else {
		/* Fanned out here, never republished: no body, unless the
		 * history store frames it again with its offset. */
		m = bg_proto_broadcast_text_opt(body, len, NULL,
						b->stream ? BG_PROTO_BODY : 0,
						&code, err, sizeof(err));
	}
	if (m == NULL) {
		static struct bg_log_throttle throttle =
			BG_LOG_THROTTLE("amqp: broadcasts rejected", 5);
		bg_stat_add(&b->rejected, 1);
		bg_log_throttled(&throttle, BG_LOG_WARN, "amqp: broadcast of "
				 "%zu bytes rejected (%s): %s (%llu rejected "
				 "so far)", len, bg_code_name(code), err,
				 (unsigned long long)bg_stat_get(&b->rejected));
		bg_history_advance(b->hist, pos);
	}
	/* In order: behind what is held, or held itself when the workers
	 * cannot take more. */
	if (b->waiting != NULL || (m != NULL && bg_bus_congested(b))) {
		wait_delivery(b, m, tag, pos, b->catching_up);
		return;
	}
	if (m != NULL)
		deliver_now(b, m, pos, b->catching_up);
	b->done_tag = tag;
}

/* Acks what was handled since the last ack. false when the link died. */
static bool
ack_done(struct bg_bus *b)
{
	if (b->done_tag == b->acked_tag)
		return true;
	if (bg_link_ack(b->link, b->done_tag) != BG_OK)
		return false;
	b->acked_tag = b->done_tag;
	return true;
}

static void
set_state(struct bg_bus *b, unsigned int state)
{
	__atomic_store_n(&b->state, state, __ATOMIC_RELEASE);
}

/* Plans the next connection attempt: exponential, with jitter so that a
 * fleet of nodes does not reconnect in step. */
static void
schedule_retry(struct bg_bus *b)
{
	uint64_t delay = BACKOFF_MIN_MS;

	for (unsigned int i = 0; i < b->attempt && delay < BACKOFF_MAX_MS; i++)
		delay *= 2;
	if (delay > BACKOFF_MAX_MS)
		delay = BACKOFF_MAX_MS;
	b->attempt++;
	delay = delay / 2 + (uint64_t)rand_r(&b->seed) % (delay / 2 + 1);
	b->next_try_ms = now_ms() + delay;
}

static void
link_lost(struct bg_bus *b)
{
	/* An exclusive queue dies with its connection: what it gave us is
	 * not given again, so the held deliveries are still delivered. */
	forget_tags(b, false);
	own_clear(b);
	bindings_reset(b, false);
	if (b->rb_req != NULL)
		rb_finish(b, false);
	set_state(b, STATE_DISCONNECTED);
	bg_log_warn("amqp: disconnected; POST /broadcast and publish answer "
		    "'unavailable' until the broker is back");
	b->attempt = 0;
	schedule_retry(b);
}

/* Counts (and logs, throttled) a message that failed. */
static void
publish_failed(struct bg_bus *b, uint64_t *counter, const char *what,
	       const char *why)
{
	static struct bg_log_throttle throttle =
		BG_LOG_THROTTLE("amqp: messages not published", 5);

	__atomic_add_fetch(counter, 1, __ATOMIC_RELAXED);
	bg_log_throttled(&throttle, BG_LOG_WARN, "amqp: message %s: %s (%llu "
			 "invalid, %llu dropped so far)", what, why,
			 (unsigned long long)bg_stat_get(&b->pub_invalid),
			 (unsigned long long)bg_stat_get(&b->pub_dropped));
}

/* Hands one outbox message on: fanned out here (standalone) or
 * published (AMQP). false when the link failed; it is then held and sent
 * first once the link is back, unless it has failed PUBLISH_TRIES
 * times. A message the link refuses is dropped; the link stays. */
static bool
hand_on(struct bg_bus *b, struct bg_msg *m, unsigned int tries)
{
	const char *why = NULL;
	int rc;

	if (m->job_fn != NULL) {
		/* Jobs and history may wait on the broker: workers first. */
		give_wakes(b);
		job_serve(b, m);
		return true;
	}
	if (m->hist != NULL) {
		give_wakes(b);
		hist_serve(b, m);
		return true;
	}
	if (b->link == NULL) {
		/* Standalone: the node numbers history broadcasts itself. */
		bg_history_record(b->hist, m, 0);
		fan_out(b, m);
		return true;
	}
	/* Publishing may wait on the broker: the workers go first. */
	give_wakes(b);
	if (m->forward_key == NULL) {
		/* Marked, so that it is known when it comes back. */
		char mid[64];
		snprintf(mid, sizeof(mid), "%s%llu", b->own_prefix,
			 (unsigned long long)(b->own_seq + 1));
		rc = bg_link_publish_id(b->link, m, mid, &why);
	} else {
		rc = bg_link_publish(b->link, m, &why);
	}
	if (rc == BG_OK && m->forward_key == NULL) {
		++b->own_seq;
		if (comes_back(b, m))
			own_keep(b, b->own_seq, m);
		else
			bg_msg_unref(m);
		return true;
	}
	if (rc == BG_LINK_REFUSED)
		publish_failed(b, &b->pub_invalid, "refused", why);
	if (rc != BG_ERR) {
		bg_msg_unref(m);
		return true;
	}
	if (tries + 1 >= PUBLISH_TRIES) {
		publish_failed(b, &b->pub_dropped, "dropped",
			       "the link failed on each try");
		bg_msg_unref(m);
	} else {
		b->held = m;
		b->held_tries = tries + 1;
	}
	link_lost(b);
	return false;
}

/* Drains what workers queued, in push order, in either mode. */
static void
drain_outbox_batch(struct bg_bus *b)
{
	struct bg_msg *m;

	bg_ring_clear(b->outbox);
	do {
		if ((m = b->held) != NULL) {
			b->held = NULL;
			if (!hand_on(b, m, b->held_tries))
				return;
		}
		while ((m = bg_ring_pop(b->outbox)) != NULL) {
			/* A channel a worker reported before it queued m is
			 * bound first: on this one AMQP channel the broker
			 * binds before it routes what follows (a forwarded
			 * subscribe the application answers on the channel,
			 * a client's publish right after its subscribe). */
			if (b->interest != NULL &&
			    bg_ring_count(b->interest) > 0)
				take_interest(b);
			if (!hand_on(b, m, 0))
				return;
		}
	} while (!bg_ring_sleep(b->outbox));
}

static void
drain_outbox(struct bg_bus *b)
{
	batch_begin(b);
	drain_outbox_batch(b);
	batch_end(b);
}

void
bg_bus_to_workers(struct bg_bus *b, struct bg_msg *m)
{
	bg_assert_owner(b->owner);
	/* Behind held deliveries: the workers see one order. */
	if (b->waiting != NULL)
		wait_delivery(b, m, 0, 0, false);
	else
		fan_out(b, m);
}

int
bg_bus_send_control(struct bg_bus *b, const void *body, size_t len)
{
	return bg_bus_send_raw(b, NULL, "", body, len, NULL);
}

int
bg_bus_send_raw(struct bg_bus *b, const char *exchange, const char *key,
		const void *body, size_t len, const char *correlation_id)
{
	int rc;

	bg_assert_owner(b->owner);
	if (b->link == NULL)
		return BG_ERR;
	if (!bg_link_up(b->link))
		return BG_AGAIN;
	rc = bg_link_publish_raw(b->link, exchange, key, body, len,
				 correlation_id);
	if (rc == BG_LINK_REFUSED)
		return BG_ERR;
	if (rc != BG_OK) {
		link_lost(b);
		return BG_AGAIN;
	}
	return BG_OK;
}

static void
amqp_loop(struct bg_bus *b)
{
	struct pollfd fds[5];
	uint64_t now;
	int timeout, n, ctl_ms;

	while (!__atomic_load_n(&b->stopping, __ATOMIC_RELAXED)) {
		b->sink.quiescent(b->sink.arg);
		now = now_ms();
		/* The workers' channel news, and lingering bindings. */
		if (bg_link_up(b->link) &&
		    (!take_interest(b) || !sweep_bindings(b, now))) {
			link_lost(b);
			continue;
		}
		if (!bg_link_up(b->link)) {
			take_interest(b);
			sweep_bindings(b, now);
		}
		if (!bg_link_up(b->link) && now >= b->next_try_ms &&
		    !__atomic_load_n(&b->quiet, __ATOMIC_RELAXED)) {
			if (bg_link_connect(b->link) == BG_OK) {
				if (b->ever_connected)
					bg_stat_add(&b->reconnects, 1);
				b->ever_connected = true;
				b->attempt = 0;
				forget_tags(b, false);
				bindings_reset(b, true);
				b->catching_up = b->stream &&
					bg_link_catching_up(b->link);
				b->catch_up_until_ms = now_ms() +
						       CATCH_UP_MAX_MS;
				set_state(b, STATE_CONNECTED);
				release_waiting(b, false);
				drain_outbox(b);
				bg_control_link_up(b->ctl);
			} else {
				schedule_retry(b);
			}
			__atomic_store_n(&b->first_try_done, 1,
					 __ATOMIC_RELEASE);
		}
		/* Control messages, jobs and timers, up or down (it may take
		 * the link down). */
		ctl_ms = bg_control_service(b->ctl);
		if (b->sink.tick != NULL)
			b->sink.tick(b->sink.arg);
		now = now_ms();
		/* Up: wake at least once a second for heartbeats. Down:
		 * leave the outbox alone until the next attempt. */
		n = 0;
		fds[n++] = (struct pollfd){ .fd = b->stop_efd,
					    .events = POLLIN };
		if (b->interest != NULL)
			fds[n++] = (struct pollfd){
				.fd = bg_ring_fd(b->interest),
				.events = POLLIN };
		fds[n++] = (struct pollfd){ .fd = bg_control_fd(b->ctl),
					    .events = POLLIN };
		if (bg_link_up(b->link)) {
			fds[n++] = (struct pollfd){
				.fd = bg_ring_fd(b->outbox), .events = POLLIN };
			fds[n++] = (struct pollfd){
				.fd = bg_link_fd(b->link), .events = POLLIN };
			timeout = b->waiting != NULL ? PAUSE_POLL_MS : 1000;
			/* Frames read already (during a bind, say) do not
			 * make the socket readable. */
			if (bg_link_buffered(b->link))
				timeout = 0;
		} else {
			timeout = b->next_try_ms > now ?
				  (int)(b->next_try_ms - now) : 0;
			if (timeout > 1000)
				timeout = 1000;
		}
		if (ctl_ms < timeout)
			timeout = ctl_ms;
		if (poll(fds, (nfds_t)n, timeout) < 0 && errno != EINTR) {
			bg_log_errno("bus: poll()");
			continue;
		}
		if (fds[0].revents) {
			/* The workers are joined: publish what they left. */
			if (bg_link_up(b->link))
				drain_outbox(b);
			stop_answering(b);
			break;
		}
		release_waiting(b, false);
		if (!bg_link_up(b->link))
			continue;
		/* Not a batch: reading may wait on the broker (a channel
		 * reopened, the stream read back), so deliveries wake their
		 * workers at once. */
		if (bg_link_service(b->link, on_delivery, b) != BG_OK) {
			link_lost(b);
			continue;
		}
		/* A stream consumer resumes after what it gave: the held
		 * deliveries are not given again. */
		if (bg_link_channel_epoch(b->link) != b->epoch) {
			forget_tags(b, !b->stream);
			bindings_reset(b, true);
		}
		if (!ack_done(b)) {
			link_lost(b);
			continue;
		}
		drain_outbox(b);
		hist_tick(b);
	}
}

static void *
bus_main(void *arg)
{
	struct bg_bus *b = arg;
	struct pollfd fds[3] = {
		{ .fd = bg_ring_fd(b->outbox), .events = POLLIN },
		{ .fd = b->stop_efd, .events = POLLIN },
		{ .fd = bg_control_fd(b->ctl), .events = POLLIN },
	};
	int timeout;

	b->owner = pthread_self();
	pthread_setname_np(pthread_self(), "bg-bus");
	bg_control_attach(b->ctl, b);
	if (b->link != NULL) {
		if (b->interest != NULL)
			bg_link_set_binder(b->link, rebind, on_bound, b);
		amqp_loop(b);
		return NULL;
	}
	while (!__atomic_load_n(&b->stopping, __ATOMIC_RELAXED)) {
		/* Once a second at least: a replaced config waits for it. */
		b->sink.quiescent(b->sink.arg);
		timeout = bg_control_service(b->ctl);
		if (b->sink.tick != NULL)
			b->sink.tick(b->sink.arg);
		if (poll(fds, 3, timeout) < 0) {
			if (errno != EINTR)
				bg_log_errno("bus: poll()");
			continue;
		}
		if (fds[1].revents) {
			stop_answering(b);
			break;
		}
		drain_outbox(b);
		hist_tick(b);
	}
	return NULL;
}

int
bg_bus_start(struct bg_bus *b)
{
	int rc;

	rc = pthread_create(&b->thread, NULL, bus_main, b);
	if (rc != 0) {
		errno = rc;
		bg_log_errno("bus: pthread_create()");
		return BG_ERR;
	}
	b->started = true;
	return BG_OK;
}

void
bg_bus_quiesce(struct bg_bus *b)
{
	__atomic_store_n(&b->quiet, 1, __ATOMIC_RELAXED);
}

int
bg_bus_stop(struct bg_bus *b, const struct timespec *deadline)
{
	uint64_t one = 1;

	__atomic_store_n(&b->quiet, 1, __ATOMIC_RELAXED);
	__atomic_store_n(&b->stopping, 1, __ATOMIC_RELAXED);
	if (write(b->stop_efd, &one, sizeof(one)) < 0)
		bg_log_errno("bus: write(eventfd)");
	if (b->started &&
	    pthread_timedjoin_np(b->thread, NULL, deadline) != 0)
		return BG_AGAIN;
	b->started = false;
	return BG_OK;
}

void
bg_bus_free(struct bg_bus *b)
{
	struct held_delivery *d;
	struct bg_msg *m;

	if (b == NULL)
		return;
	/* The workers are joined: nothing pushes any more. */
	while ((m = bg_ring_pop(b->outbox)) != NULL)
		bg_msg_unref(m);
	bg_msg_unref(b->held);
	while ((d = b->waiting) != NULL) {
		b->waiting = d->next;
		bg_msg_unref(d->m);
		free(d);
	}
	if (b->own != NULL)
		own_clear(b);
	free(b->own);
	if (b->interest != NULL) {
		while ((m = bg_ring_pop(b->interest)) != NULL)
			free(m);
		bg_ring_free(b->interest);
	}
	for (uint32_t i = 0; b->bind_tab != NULL && i < b->bind_buckets;
	     i++) {
		struct binding *e, *next;
		for (e = b->bind_tab[i]; e != NULL; e = next) {
			next = e->next;
			free(e);
		}
	}
	free(b->bind_tab);
	while (b->deferred != NULL) {
		struct bg_hist_req *r = b->deferred;
		b->deferred = r->next_wait;
		bg_msg_unref(r->self);
	}
	while (b->rb_queue != NULL) {
		struct bg_hist_req *r = b->rb_queue;
		b->rb_queue = r->next_wait;
		bg_msg_unref(r->self);
	}
	if (b->rb_req != NULL)
		bg_msg_unref(b->rb_req->self);
	for (uint32_t i = 0; i < b->rb_n; i++)
		bg_msg_unref(b->rb_pubs[i].m);
	free(b->rb_pubs);
	bg_history_free(b->hist);
	bg_link_free(b->link);
	bg_ring_free(b->outbox);
	close(b->stop_efd);
	free(b);
}

/* A producer thread's batch (bg_bus_batch_begin/end): the outbox
 * wake-up its pushes owe the bus, given once at the batch's end. */
static __thread unsigned int prod_batch;
static __thread struct bg_bus *prod_owed;

static int
outbox_push(struct bg_bus *b, struct bg_msg *m)
{
	bool wake = false;

	if (!bg_ring_push_defer(b->outbox, m, &wake)) {
		/* Full: the bus must not sleep on what is there. */
		if (prod_owed == b) {
			prod_owed = NULL;
			bg_ring_wake(b->outbox);
		}
		return BG_AGAIN;
	}
	if (!wake)
		return BG_OK;
	if (prod_batch > 0 && (prod_owed == NULL || prod_owed == b)) {
		prod_owed = b;
		return BG_OK;
	}
	bg_ring_wake(b->outbox);
	return BG_OK;
}

void
bg_bus_batch_begin(void)
{
	prod_batch++;
}

void
bg_bus_batch_flush(void)
{
	struct bg_bus *b = prod_owed;

	if (b == NULL)
		return;
	prod_owed = NULL;
	bg_ring_wake(b->outbox);
}

void
bg_bus_batch_end(void)
{
	if (--prod_batch == 0)
		bg_bus_batch_flush();
}

int
bg_bus_request(struct bg_bus *b, struct bg_msg *m)
{
	if (__atomic_load_n(&b->stopping, __ATOMIC_RELAXED))
		return BG_AGAIN;
	return outbox_push(b, m);
}

const struct bg_history *
bg_bus_history(const struct bg_bus *b)
{
	return b->hist;
}

int
bg_bus_publish(struct bg_bus *b, struct bg_msg *m)
{
	if (__atomic_load_n(&b->stopping, __ATOMIC_RELAXED) ||
	    __atomic_load_n(&b->state, __ATOMIC_ACQUIRE) ==
	    STATE_DISCONNECTED)
		return BG_AGAIN;
	if (b->link != NULL && bg_link_check(m) != NULL) {
		__atomic_add_fetch(&b->pub_invalid, 1, __ATOMIC_RELAXED);
		return BG_ERR;
	}
	/* Broadcasts only: a forwarded event adds nothing to the workers'
	 * queues (the application's answer, a broadcast, is paced here). */
	if (m->forward_key == NULL && bg_bus_congested(b)) {
		__atomic_add_fetch(&b->busy, 1, __ATOMIC_RELAXED);
		return BG_BUS_BUSY;
	}
	return outbox_push(b, m);
}

bool
bg_bus_stopping(const struct bg_bus *b)
{
	return __atomic_load_n(&b->stopping, __ATOMIC_RELAXED) != 0;
}

const char *
bg_bus_state(const struct bg_bus *b)
{
	switch (__atomic_load_n(&b->state, __ATOMIC_ACQUIRE)) {
	case STATE_CONNECTED:
		return "connected";
	case STATE_DISCONNECTED:
		return "disconnected";
	default:
		return "disabled";
	}
}

uint64_t
bg_bus_broadcasts(const struct bg_bus *b)
{
	return bg_stat_get(&b->broadcasts);
}

uint64_t
bg_bus_rejected(const struct bg_bus *b)
{
	return bg_stat_get(&b->rejected);
}

uint64_t
bg_bus_reconnects(const struct bg_bus *b)
{
	return bg_stat_get(&b->reconnects);
}

/* The control plane's lines (amqp/control.h). */
static int
control_metrics(const struct bg_bus *b, char *buf, size_t size)
{
	return snprintf(buf, size,
		"# HELP bagou_cluster_nodes Live nodes of the cluster, this "
		"one included.\n"
		"# TYPE bagou_cluster_nodes gauge\n"
		"bagou_cluster_nodes %llu\n"
		"# HELP bagou_cluster_queries_total Cluster-wide queries this "
		"node started (server API commands).\n"
		"# TYPE bagou_cluster_queries_total counter\n"
		"bagou_cluster_queries_total %llu\n",
		(unsigned long long)bg_control_live(b->ctl),
		(unsigned long long)bg_control_queries(b->ctl));
}

int
bg_bus_metrics(const struct bg_bus *b, char *buf, size_t size)
{
	uint64_t reopens = b->link ? bg_link_channel_reopens(b->link) : 0;
	uint64_t backed_up = 0;
	int n, k;

	n = control_metrics(b, buf, size);
	if (n < 0 || (size_t)n >= size)
		return n;
	k = snprintf(buf + n, size - (size_t)n,
		     "# HELP bagou_worker_broadcasts_total "
		     "Broadcasts the bus handed to each worker (only those "
		     "with a subscriber among the targets).\n"
		     "# TYPE bagou_worker_broadcasts_total counter\n");
	if (k < 0)
		return k;
	n += k;
	for (int i = 0; i < b->sink.n_workers && n >= 0 && (size_t)n < size;
	     i++) {
		k = snprintf(buf + n, size - (size_t)n,
			     "bagou_worker_broadcasts_total{worker=\"%d\"} "
			     "%llu\n", i, (unsigned long long)b->sink.stat(
				     b->sink.arg, i, BG_SINK_BCASTS_IN));
		if (k < 0)
			return k;
		n += k;
	}
	if (n < 0 || (size_t)n >= size)
		return n;
	buf += n;
	size -= (size_t)n;

	for (int i = 0; i < b->sink.n_workers; i++)
		backed_up += b->sink.stat(b->sink.arg, i, BG_SINK_BACKED_UP);
	k = snprintf(buf, size,
		"# HELP bagou_amqp_publish_failures_total Messages this "
		"node could not publish to RabbitMQ, dropped, by reason.\n"
		"# TYPE bagou_amqp_publish_failures_total counter\n"
		"bagou_amqp_publish_failures_total{reason=\"invalid\"} %llu\n"
		"bagou_amqp_publish_failures_total{reason=\"link\"} %llu\n"
		"bagou_amqp_publish_failures_total{reason=\"broker\"} %llu\n"
		"# HELP bagou_amqp_channel_reopens_total Channels reopened "
		"after the broker closed them.\n"
		"# TYPE bagou_amqp_channel_reopens_total counter\n"
		"bagou_amqp_channel_reopens_total %llu\n"
		"# HELP bagou_backpressure_refusals_total Broadcasts and "
		"client publishes refused while workers were congested.\n"
		"# TYPE bagou_backpressure_refusals_total counter\n"
		"bagou_backpressure_refusals_total %llu\n"
		"# HELP bagou_amqp_consume_pauses_total Times deliveries from "
		"RabbitMQ were held because workers were congested.\n"
		"# TYPE bagou_amqp_consume_pauses_total counter\n"
		"bagou_amqp_consume_pauses_total %llu\n"
		"# HELP bagou_amqp_held_deliveries Deliveries held, unacked, "
		"until the workers drain.\n"
		"# TYPE bagou_amqp_held_deliveries gauge\n"
		"bagou_amqp_held_deliveries %llu\n"
		"# HELP bagou_backed_up_connections Connections whose queue "
		"is over half of max_queued_bytes.\n"
		"# TYPE bagou_backed_up_connections gauge\n"
		"bagou_backed_up_connections %llu\n"
		"# HELP bagou_amqp_own_broadcasts_total Broadcasts this node "
		"published that came back from RabbitMQ and were fanned out "
		"as built, not parsed again.\n"
		"# TYPE bagou_amqp_own_broadcasts_total counter\n"
		"bagou_amqp_own_broadcasts_total %llu\n",
		(unsigned long long)bg_stat_get(&b->pub_invalid),
		(unsigned long long)bg_stat_get(&b->pub_dropped),
		(unsigned long long)reopens, (unsigned long long)reopens,
		(unsigned long long)bg_stat_get(&b->busy),
		(unsigned long long)bg_stat_get(&b->pauses),
		(unsigned long long)bg_stat_get(&b->n_waiting),
		(unsigned long long)backed_up,
		(unsigned long long)bg_stat_get(&b->own_reused));
	if (k < 0)
		return k;
	n += k;
	if ((size_t)k >= size || !bg_history_on(b->hist))
		return n;
	k = bg_history_metrics(b->hist, buf + k, size - (size_t)k);
	return k < 0 ? k : n + k;
}

bool
bg_bus_binds(const struct bg_bus *b)
{
	return b->interest != NULL;
}

void
bg_bus_interest(struct bg_bus *b, const char *name, size_t len, int delta)
{
	struct interest *r;

	if (b->interest == NULL)
		return;
	r = malloc(sizeof(*r) + len + 1);
	if (r != NULL) {
		r->delta = delta;
		r->len = (uint32_t)len;
		memcpy(r->name, name, len);
		r->name[len] = '\0';
		if (bg_ring_push(b->interest, r))
			return;
		free(r);
	}
	/* The bus binds "#" (and so misses nothing) from now on. */
	__atomic_store_n(&b->interest_lost, 1, __ATOMIC_RELAXED);
}

bool
bg_bus_wants_body(const struct bg_bus *b)
{
	/* RabbitMQ republishes it; the history store frames it again with
	 * its offset. */
	return b->link != NULL || bg_history_on(b->hist);
}

bool
bg_bus_wait_first_try(const struct bg_bus *b, int timeout_ms)
{
	struct timespec ts = { 0, 2000000 };   /* 2 ms */

	if (b->link == NULL)
		return true;
	for (int waited = 0; waited < timeout_ms; waited += 2) {
		if (__atomic_load_n(&b->first_try_done, __ATOMIC_ACQUIRE))
			return true;
		nanosleep(&ts, NULL);
	}
	return __atomic_load_n(&b->first_try_done, __ATOMIC_ACQUIRE) != 0;
}

bool
bg_bus_connected(const struct bg_bus *b)
{
	return __atomic_load_n(&b->state, __ATOMIC_ACQUIRE) ==
	       STATE_CONNECTED;
}
