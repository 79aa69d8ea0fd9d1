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

#include "amqp/link.h"
#include "common/bg.h"
#include "common/log.h"
#include "common/proto.h"
#include "common/ring.h"
#include "server/server.h"
#include "server/worker.h"

#define OUTBOX_SIZE 65536
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 10000

enum { STATE_DISABLED, STATE_DISCONNECTED, STATE_CONNECTED };

struct bg_bus {
	struct bg_server *srv;      /* immutable */
	struct bg_ring *outbox;     /* workers -> bus */
	int stop_efd;               /* immutable */
	unsigned int stopping;      /* atomic */
	unsigned int quiet;         /* atomic: no new connection attempts */
	pthread_t thread;
	bool started;
	uint64_t broadcasts;        /* bus writes, any reads */
	uint64_t rejected;          /* bus writes, any reads */
	uint64_t reconnects;        /* bus writes, any reads */
	unsigned int state;         /* atomic: STATE_* */

	/* AMQP mode, bus thread only. */
	struct bg_link *link;       /* NULL in standalone mode */
	struct bg_msg *held;        /* publish failed: sent first on return */
	unsigned int attempt;       /* failed connects in a row */
	uint64_t next_try_ms;
	bool ever_connected;
	time_t last_reject_log;
	unsigned int seed;
};

struct bg_bus *
bg_bus_new(struct bg_server *srv)
{
	struct bg_bus *b = calloc(1, sizeof(*b));

	if (b == NULL)
		return NULL;
	b->srv = srv;
	b->state = STATE_DISABLED;
	if (!bg_config_standalone(srv->cfg)) {
		char err[512];
		b->link = bg_link_new(srv->cfg, err, sizeof(err));
		if (b->link == NULL) {
			bg_log_error("%s", err);
			free(b);
			return NULL;
		}
		b->state = STATE_DISCONNECTED;
	}
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

/* A delivery from RabbitMQ: validated and framed once, then fanned out. */
static void
on_delivery(void *arg, const void *body, size_t len)
{
	struct bg_bus *b = arg;
	enum bg_code code;
	struct bg_msg *m;
	char err[200];
	time_t now;

	if (len > b->srv->cfg->max_message_size) {
		/* The same limit as POST /broadcast: one node's clients must
		 * not receive what another node's publishers cannot send. */
		code = BG_CODE_BAD_MESSAGE;
		snprintf(err, sizeof(err), "larger than max_message_size "
			 "(%zu bytes)", b->srv->cfg->max_message_size);
		m = NULL;
	} else {
		m = bg_proto_broadcast_text(body, len, NULL, &code, err,
					    sizeof(err));
	}
	if (m != NULL) {
		fan_out(b, m);
		return;
	}
	bg_stat_add(&b->rejected, 1);
	now = time(NULL);
	if (now != b->last_reject_log) {
		b->last_reject_log = now;
		bg_log_warn("amqp: broadcast of %zu bytes rejected (%s): %s "
			    "(%llu rejected so far)", len, bg_code_name(code),
			    err, (unsigned long long)bg_stat_get(&b->rejected));
	}
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
	set_state(b, STATE_DISCONNECTED);
	bg_log_warn("amqp: disconnected; POST /broadcast and publish answer "
		    "'unavailable' until the broker is back");
	b->attempt = 0;
	schedule_retry(b);
}

/* Hands one outbox message on: fanned out here (standalone) or
 * published (AMQP). false when the link failed; it is then held and sent
 * first once the link is back. */
static bool
hand_on(struct bg_bus *b, struct bg_msg *m)
{
	if (b->link == NULL) {
		fan_out(b, m);
		return true;
	}
	if (bg_link_publish(b->link, m) != BG_OK) {
		b->held = m;
		link_lost(b);
		return false;
	}
	bg_msg_unref(m);
	return true;
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
			if (!hand_on(b, m))
				return;
		}
		while ((m = bg_ring_pop(b->outbox)) != NULL)
			if (!hand_on(b, m))
				return;
	} while (!bg_ring_sleep(b->outbox));
}

static void
amqp_loop(struct bg_bus *b)
{
	struct pollfd fds[3];
	uint64_t now;
	int timeout, n;

	while (!__atomic_load_n(&b->stopping, __ATOMIC_RELAXED)) {
		now = now_ms();
		if (!bg_link_up(b->link) && now >= b->next_try_ms &&
		    !__atomic_load_n(&b->quiet, __ATOMIC_RELAXED)) {
			if (bg_link_connect(b->link) == BG_OK) {
				if (b->ever_connected)
					bg_stat_add(&b->reconnects, 1);
				b->ever_connected = true;
				b->attempt = 0;
				set_state(b, STATE_CONNECTED);
				drain_outbox(b);
			} else {
				schedule_retry(b);
			}
			now = now_ms();
		}
		/* Up: wake at least once a second for heartbeats. Down:
		 * leave the outbox alone until the next attempt. */
		n = 0;
		fds[n++] = (struct pollfd){ .fd = b->stop_efd,
					    .events = POLLIN };
		if (bg_link_up(b->link)) {
			fds[n++] = (struct pollfd){
				.fd = bg_ring_fd(b->outbox), .events = POLLIN };
			fds[n++] = (struct pollfd){
				.fd = bg_link_fd(b->link), .events = POLLIN };
			timeout = 1000;
		} else {
			timeout = b->next_try_ms > now ?
				  (int)(b->next_try_ms - now) : 0;
			if (timeout > 1000)
				timeout = 1000;
		}
		if (poll(fds, (nfds_t)n, timeout) < 0 && errno != EINTR) {
			bg_log_errno("bus: poll()");
			continue;
		}
		if (fds[0].revents) {
			/* The workers are joined: publish what they left. */
			if (bg_link_up(b->link))
				drain_outbox(b);
			break;
		}
		if (!bg_link_up(b->link))
			continue;
		if (bg_link_service(b->link, on_delivery, b) != BG_OK) {
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
	struct pollfd fds[2] = {
		{ .fd = bg_ring_fd(b->outbox), .events = POLLIN },
		{ .fd = b->stop_efd, .events = POLLIN },
	};

	pthread_setname_np(pthread_self(), "bg-bus");
	if (b->link != NULL) {
		amqp_loop(b);
		return NULL;
	}
	while (!__atomic_load_n(&b->stopping, __ATOMIC_RELAXED)) {
		if (poll(fds, 2, -1) < 0) {
			if (errno != EINTR)
				bg_log_errno("bus: poll()");
			continue;
		}
		if (fds[1].revents)
			break;
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
	struct bg_msg *m;

	if (b == NULL)
		return;
	/* The workers are joined: nothing pushes any more. */
	while ((m = bg_ring_pop(b->outbox)) != NULL)
		bg_msg_unref(m);
	bg_msg_unref(b->held);
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
	return bg_ring_push(b->outbox, m) ? BG_OK : BG_AGAIN;
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

bool
bg_bus_connected(const struct bg_bus *b)
{
	return __atomic_load_n(&b->state, __ATOMIC_ACQUIRE) ==
	       STATE_CONNECTED;
}
