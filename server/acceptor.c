/*
 * acceptor.c - the acceptor thread: poll the listening socket, accept4 in
 * a loop, pass each fd to a worker's inbox ring (SPSC: this thread is the
 * only producer of every inbox). EMFILE pauses accepting instead of
 * spinning; repeated failures are logged at most once a second.
 */
#include "server/acceptor.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/bg.h"
#include "common/log.h"
#include "server/server.h"
#include "server/worker.h"

struct bg_acceptor {
	struct bg_server *srv;   /* immutable */
	int fd;                  /* immutable until stop */
	int stop_efd;            /* immutable */
	pthread_t thread;
	bool started;
	unsigned int next;       /* acceptor thread */
	time_t last_warn;        /* acceptor thread */
};

struct bg_acceptor *
bg_acceptor_new(struct bg_server *srv, char *err, size_t errlen)
{
	const struct bg_config *cfg = srv->cfg;
	struct addrinfo hints, *res = NULL, *ai;
	struct bg_acceptor *a;
	char port[16];
	int fd = -1, one = 1, rc, e = 0;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	snprintf(port, sizeof(port), "%d", cfg->listen_port);
	rc = getaddrinfo(cfg->listen_host, port, &hints, &res);
	if (rc != 0) {
		snprintf(err, errlen, "cannot listen on %s:%d: %s",
			 cfg->listen_host, cfg->listen_port, gai_strerror(rc));
		return NULL;
	}
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK |
			    SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0) {
			e = errno;
			continue;
		}
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
		    listen(fd, 4096) == 0)
			break;
		e = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0) {
		snprintf(err, errlen, "cannot listen on %s:%d: %s",
			 cfg->listen_host, cfg->listen_port, strerror(e));
		return NULL;
	}
	a = calloc(1, sizeof(*a));
	if (a == NULL || (a->stop_efd = eventfd(0, EFD_CLOEXEC)) < 0) {
		snprintf(err, errlen, "out of memory");
		free(a);
		close(fd);
		return NULL;
	}
	a->srv = srv;
	a->fd = fd;
	return a;
}

static bool
may_warn(struct bg_acceptor *a)
{
	time_t now = time(NULL);

	if (now == a->last_warn)
		return false;
	a->last_warn = now;
	return true;
}

static unsigned int
total_connections(const struct bg_server *srv)
{
	unsigned int n = 0;

	for (int i = 0; i < srv->n_workers; i++)
		n += __atomic_load_n(&srv->workers[i]->conns_gauge,
				     __ATOMIC_RELAXED);
	return n;
}

/* The worker with the fewest connections, starting the scan round-robin
 * so equal loads still spread. */
static void
dispatch(struct bg_acceptor *a, int s)
{
	struct bg_server *srv = a->srv;
	int n = srv->n_workers, best = -1;
	unsigned int best_load = ~0u;

	for (int k = 0; k < n; k++) {
		int i = (int)((a->next + (unsigned)k) % (unsigned)n);
		unsigned int load = __atomic_load_n(
			&srv->workers[i]->conns_gauge, __ATOMIC_RELAXED);
		if (load < best_load) {
			best_load = load;
			best = i;
		}
	}
	a->next++;
	for (int k = 0; k < n; k++) {
		if (bg_worker_adopt(srv->workers[(best + k) % n], s))
			return;
	}
	if (may_warn(a))
		bg_log_warn("every worker inbox is full: dropping a new "
			    "connection");
	close(s);
}

static void *
acceptor_main(void *arg)
{
	struct bg_acceptor *a = arg;
	const struct bg_config *cfg = a->srv->cfg;
	struct pollfd fds[2] = {
		{ .fd = a->fd, .events = POLLIN },
		{ .fd = a->stop_efd, .events = POLLIN },
	};
	int one = 1, pause_ms = -1;

	pthread_setname_np(pthread_self(), "bg-acceptor");
	for (;;) {
		fds[0].events = pause_ms < 0 ? POLLIN : 0;
		if (poll(fds, 2, pause_ms) < 0) {
			if (errno != EINTR)
				bg_log_errno("acceptor: poll()");
			continue;
		}
		if (fds[1].revents)
			break;
		pause_ms = -1;
		for (;;) {
			int s = accept4(a->fd, NULL, NULL,
					SOCK_NONBLOCK | SOCK_CLOEXEC);
			if (s < 0) {
				if (errno == EMFILE || errno == ENFILE ||
				    errno == ENOBUFS || errno == ENOMEM) {
					/* Out of descriptors: stop taking
					 * new ones for a moment. */
					if (may_warn(a))
						bg_log_errno("accept4()");
					pause_ms = 100;
				} else if (errno != EAGAIN &&
					   errno != EINTR &&
					   errno != ECONNABORTED &&
					   may_warn(a)) {
					bg_log_errno("accept4()");
				}
				break;
			}
			if (cfg->max_connections > 0 &&
			    total_connections(a->srv) >=
			    (unsigned int)cfg->max_connections) {
				if (may_warn(a))
					bg_log_warn("max_connections (%d) "
						    "reached: refusing "
						    "connections",
						    cfg->max_connections);
				close(s);
				continue;
			}
			setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one,
				   sizeof(one));
			dispatch(a, s);
		}
	}
	return NULL;
}

int
bg_acceptor_start(struct bg_acceptor *a)
{
	int rc = pthread_create(&a->thread, NULL, acceptor_main, a);

	if (rc != 0) {
		errno = rc;
		bg_log_errno("acceptor: pthread_create()");
		return BG_ERR;
	}
	a->started = true;
	return BG_OK;
}

void
bg_acceptor_stop_free(struct bg_acceptor *a)
{
	uint64_t one = 1;

	if (a == NULL)
		return;
	if (write(a->stop_efd, &one, sizeof(one)) < 0)
		bg_log_errno("acceptor: write(eventfd)");
	if (a->started)
		pthread_join(a->thread, NULL);
	close(a->fd);
	close(a->stop_efd);
	free(a);
}
