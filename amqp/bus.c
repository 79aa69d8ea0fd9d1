/*
 * bus.c - the bus thread in standalone mode: drains the outbox (MPSC, from
 * every worker) and fans each message out to every worker's broadcast ring.
 *
 * Threads: bg_bus_publish runs on workers; the loop on the bus thread; the
 * rest on main. A full worker ring makes the bus wait and retry: nothing
 * is dropped while the node runs.
 */
#include "amqp/bus.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "common/bg.h"
#include "common/log.h"
#include "common/ring.h"
#include "server/server.h"
#include "server/worker.h"

#define OUTBOX_SIZE 65536

struct bg_bus {
	struct bg_server *srv;      /* immutable */
	struct bg_ring *outbox;     /* workers -> bus */
	int stop_efd;               /* immutable */
	unsigned int stopping;      /* atomic */
	pthread_t thread;
	bool started;
	uint64_t broadcasts;        /* bus writes, any reads */
	uint64_t rejected;          /* bus writes, any reads */
};

struct bg_bus *
bg_bus_new(struct bg_server *srv)
{
	struct bg_bus *b = calloc(1, sizeof(*b));

	if (b == NULL)
		return NULL;
	b->srv = srv;
	b->outbox = bg_ring_new(OUTBOX_SIZE, true);
	b->stop_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (b->outbox == NULL || b->stop_efd < 0) {
		bg_log_errno("bus: eventfd()/ring");
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

static void *
bus_main(void *arg)
{
	struct bg_bus *b = arg;
	struct pollfd fds[2] = {
		{ .fd = bg_ring_fd(b->outbox), .events = POLLIN },
		{ .fd = b->stop_efd, .events = POLLIN },
	};
	struct bg_msg *m;

	pthread_setname_np(pthread_self(), "bg-bus");
	while (!__atomic_load_n(&b->stopping, __ATOMIC_RELAXED)) {
		if (poll(fds, 2, -1) < 0) {
			if (errno != EINTR)
				bg_log_errno("bus: poll()");
			continue;
		}
		if (fds[1].revents)
			break;
		bg_ring_clear(b->outbox);
		do {
			while ((m = bg_ring_pop(b->outbox)) != NULL)
				fan_out(b, m);
		} while (!bg_ring_sleep(b->outbox));
	}
	return NULL;
}

int
bg_bus_start(struct bg_bus *b)
{
	int rc;

	if (!bg_config_standalone(b->srv->cfg))
		bg_log_warn("[amqp] url is set, but this build has no AMQP "
			    "client yet: running standalone, broadcasts stay "
			    "on this node");
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
bg_bus_stop(struct bg_bus *b)
{
	uint64_t one = 1;

	__atomic_store_n(&b->stopping, 1, __ATOMIC_RELAXED);
	if (write(b->stop_efd, &one, sizeof(one)) < 0)
		bg_log_errno("bus: write(eventfd)");
	if (b->started)
		pthread_join(b->thread, NULL);
	b->started = false;
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
	bg_ring_free(b->outbox);
	close(b->stop_efd);
	free(b);
}

int
bg_bus_publish(struct bg_bus *b, struct bg_msg *m)
{
	if (__atomic_load_n(&b->stopping, __ATOMIC_RELAXED))
		return BG_AGAIN;
	return bg_ring_push(b->outbox, m) ? BG_OK : BG_AGAIN;
}

const char *
bg_bus_state(const struct bg_bus *b)
{
	(void)b;
	return "disabled";
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
	(void)b;
	return 0;
}

bool
bg_bus_connected(const struct bg_bus *b)
{
	(void)b;
	return false;
}
