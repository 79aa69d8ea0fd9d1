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
 * (bg_worker_congested: most of its connections backed up, or the
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
#include "amqp/link.h"
#include "common/bg.h"
#include "common/log.h"
#include "common/proto.h"
#include "common/ring.h"
#include "server/presence.h"
#include "server/server.h"
#include "server/worker.h"

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
	struct held_delivery *next;
};

enum { STATE_DISABLED, STATE_DISCONNECTED, STATE_CONNECTED };

struct bg_bus {
	struct bg_server *srv;      /* immutable */
	struct bg_control *ctl;     /* immutable: srv->control */
	struct bg_ring *outbox;     /* workers -> bus */
	int stop_efd;               /* immutable */
	unsigned int stopping;      /* atomic */
	unsigned int quiet;         /* atomic: no new connection attempts */
	pthread_t thread;
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
	unsigned int seed;
};

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
bg_bus_new(struct bg_server *srv)
{
	struct bg_bus *b = calloc(1, sizeof(*b));

	if (b == NULL)
		return NULL;
	b->srv = srv;
	b->ctl = srv->control;
	b->state = STATE_DISABLED;
	if (!bg_config_standalone(bg_server_cfg(srv))) {
		char err[512];
		b->link = bg_link_new(bg_server_cfg(srv), err, sizeof(err));
		if (b->link == NULL) {
			bg_log_error("%s", err);
			free(b);
			return NULL;
		}
		bg_link_set_control(b->link, srv->node_id, on_control, b);
		b->state = STATE_DISCONNECTED;
	}
	b->waiting_tail = &b->waiting;
	b->seed = (unsigned int)time(NULL) ^ (unsigned int)getpid();
	b->outbox = bg_ring_new(OUTBOX_SIZE, true);
	b->stop_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (b->outbox == NULL || b->stop_efd < 0) {
		bg_log_errno("bus: eventfd()/ring");
		bg_link_free(b->link);
		bg_ring_free(b->outbox);
		if (b->stop_efd >= 0)
			close(b->stop_efd);
		free(b);
		return NULL;
	}
	return b;
}

/* Hands m to every worker, waiting while a ring is full. */
static void
fan_out(struct bg_bus *b, struct bg_msg *m)
{
	struct bg_server *srv = b->srv;

	for (int i = 0; i < srv->n_workers; i++) {
		long wait_ns = 20000;

		bg_msg_ref(m);
		while (!bg_worker_deliver(srv->workers[i], m)) {
			struct timespec ts = { 0, wait_ns };
			if (__atomic_load_n(&b->stopping, __ATOMIC_RELAXED)) {
				bg_msg_unref(m);
				goto done;
			}
			nanosleep(&ts, NULL);
			if (wait_ns < 1000000)
				wait_ns *= 2;
		}
	}
done:
	if (m->target != BG_MSG_TASK)
		bg_stat_add(&b->broadcasts, 1);
	bg_msg_unref(m);
}

static uint64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

bool
bg_bus_congested(const struct bg_bus *b)
{
	/* A worker not created yet (start-up) holds nothing. */
	for (int i = 0; i < b->srv->n_workers; i++)
		if (b->srv->workers[i] != NULL &&
		    bg_worker_congested(b->srv->workers[i]))
			return true;
	return false;
}

/* Holds a delivery (m may be NULL: rejected) until the workers drain. */
static void
wait_delivery(struct bg_bus *b, struct bg_msg *m, uint64_t tag)
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
	*d = (struct held_delivery){ .m = m, .tag = tag };
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
			fan_out(b, d->m);
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

/* A delivery from RabbitMQ: validated and framed once, then fanned out,
 * or held while the workers are congested. */
static void
on_delivery(void *arg, const void *body, size_t len, uint64_t tag)
{
	struct bg_bus *b = arg;
	enum bg_code code;
	struct bg_msg *m;
	char err[200];
	size_t max = bg_server_cfg(b->srv)->max_message_size;

	if (len > max) {
		/* The same limit as POST /broadcast: one node's clients must
		 * not receive what another node's publishers cannot send. */
		code = BG_CODE_BAD_MESSAGE;
		snprintf(err, sizeof(err), "larger than max_message_size "
			 "(%zu bytes)", max);
		m = NULL;
	} else {
		m = bg_proto_broadcast_text(body, len, NULL, &code, err,
					    sizeof(err));
	}
	if (m == NULL) {
		static struct bg_log_throttle throttle =
			BG_LOG_THROTTLE("amqp: broadcasts rejected", 5);
		bg_stat_add(&b->rejected, 1);
		bg_log_throttled(&throttle, BG_LOG_WARN, "amqp: broadcast of "
				 "%zu bytes rejected (%s): %s (%llu rejected "
				 "so far)", len, bg_code_name(code), err,
				 (unsigned long long)bg_stat_get(&b->rejected));
	}
	/* In order: behind what is held, or held itself when the workers
	 * cannot take more. */
	if (b->waiting != NULL || (m != NULL && bg_bus_congested(b))) {
		wait_delivery(b, m, tag);
		return;
	}
	if (m != NULL)
		fan_out(b, m);
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

	if (b->link == NULL) {
		fan_out(b, m);
		return true;
	}
	rc = bg_link_publish(b->link, m, &why);
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
drain_outbox(struct bg_bus *b)
{
	struct bg_msg *m;

	bg_ring_clear(b->outbox);
	do {
		if ((m = b->held) != NULL) {
			b->held = NULL;
			if (!hand_on(b, m, b->held_tries))
				return;
		}
		while ((m = bg_ring_pop(b->outbox)) != NULL)
			if (!hand_on(b, m, 0))
				return;
	} while (!bg_ring_sleep(b->outbox));
}

void
bg_bus_to_workers(struct bg_bus *b, struct bg_msg *m)
{
	/* Behind held deliveries: the workers see one order. */
	if (b->waiting != NULL)
		wait_delivery(b, m, 0);
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
	struct pollfd fds[4];
	uint64_t now;
	int timeout, n, ctl_ms;

	while (!__atomic_load_n(&b->stopping, __ATOMIC_RELAXED)) {
		bg_server_quiescent(b->srv, BG_SEEN_BUS);
		now = now_ms();
		if (!bg_link_up(b->link) && now >= b->next_try_ms &&
		    !__atomic_load_n(&b->quiet, __ATOMIC_RELAXED)) {
			if (bg_link_connect(b->link) == BG_OK) {
				if (b->ever_connected)
					bg_stat_add(&b->reconnects, 1);
				b->ever_connected = true;
				b->attempt = 0;
				forget_tags(b, false);
				set_state(b, STATE_CONNECTED);
				release_waiting(b, false);
				drain_outbox(b);
				bg_control_link_up(b->ctl);
			} else {
				schedule_retry(b);
			}
		}
		/* Control messages, jobs and timers, up or down (it may take
		 * the link down). */
		ctl_ms = bg_control_service(b->ctl);
		bg_presence_tick(b->srv);
		now = now_ms();
		/* Up: wake at least once a second for heartbeats. Down:
		 * leave the outbox alone until the next attempt. */
		n = 0;
		fds[n++] = (struct pollfd){ .fd = b->stop_efd,
					    .events = POLLIN };
		fds[n++] = (struct pollfd){ .fd = bg_control_fd(b->ctl),
					    .events = POLLIN };
		if (bg_link_up(b->link)) {
			fds[n++] = (struct pollfd){
				.fd = bg_ring_fd(b->outbox), .events = POLLIN };
			fds[n++] = (struct pollfd){
				.fd = bg_link_fd(b->link), .events = POLLIN };
			timeout = b->waiting != NULL ? PAUSE_POLL_MS : 1000;
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
			bg_control_bye(b->ctl);
			break;
		}
		release_waiting(b, false);
		if (!bg_link_up(b->link))
			continue;
		if (bg_link_service(b->link, on_delivery, b) != BG_OK) {
			link_lost(b);
			continue;
		}
		if (bg_link_channel_epoch(b->link) != b->epoch)
			forget_tags(b, true);
		if (!ack_done(b)) {
			link_lost(b);
			continue;
		}
		drain_outbox(b);
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

	pthread_setname_np(pthread_self(), "bg-bus");
	bg_control_attach(b->ctl, b);
	if (b->link != NULL) {
		amqp_loop(b);
		return NULL;
	}
	while (!__atomic_load_n(&b->stopping, __ATOMIC_RELAXED)) {
		/* Once a second at least: a replaced config waits for it. */
		bg_server_quiescent(b->srv, BG_SEEN_BUS);
		timeout = bg_control_service(b->ctl);
		bg_presence_tick(b->srv);
		if (poll(fds, 3, timeout) < 0) {
			if (errno != EINTR)
				bg_log_errno("bus: poll()");
			continue;
		}
		if (fds[1].revents) {
			bg_control_bye(b->ctl);
			break;
		}
		drain_outbox(b);
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
	bg_link_free(b->link);
	bg_ring_free(b->outbox);
	close(b->stop_efd);
	free(b);
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
	return bg_ring_push(b->outbox, m) ? BG_OK : BG_AGAIN;
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
	int n = control_metrics(b, buf, size);

	if (n < 0 || (size_t)n >= size)
		return n;
	buf += n;
	size -= (size_t)n;

	for (int i = 0; i < b->srv->n_workers; i++)
		if (b->srv->workers[i] != NULL)
			backed_up += __atomic_load_n(
				&b->srv->workers[i]->backed_up,
				__ATOMIC_RELAXED);
	return snprintf(buf, size,
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
		"bagou_backed_up_connections %llu\n",
		(unsigned long long)bg_stat_get(&b->pub_invalid),
		(unsigned long long)bg_stat_get(&b->pub_dropped),
		(unsigned long long)reopens, (unsigned long long)reopens,
		(unsigned long long)bg_stat_get(&b->busy),
		(unsigned long long)bg_stat_get(&b->pauses),
		(unsigned long long)bg_stat_get(&b->n_waiting),
		(unsigned long long)backed_up) + n;
}

bool
bg_bus_connected(const struct bg_bus *b)
{
	return __atomic_load_n(&b->state, __ATOMIC_ACQUIRE) ==
	       STATE_CONNECTED;
}
