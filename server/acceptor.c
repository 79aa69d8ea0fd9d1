/*
 * acceptor.c - the acceptor thread: poll the listening socket, accept4 in
 * a loop, admit or refuse each socket, pass it to a worker's inbox ring
 * (SPSC: this thread is the only producer of every inbox).
 *
 * Refused sockets wait (at most REFUSE_MS, REFUSE_MAX of them) for their
 * request line in this thread: GET /health is answered as usual, anything
 * else gets 503 or 429 and is closed. EMFILE/ENFILE uses a reserved
 * descriptor to accept, answer 503 and close one socket, then pauses
 * accepting for PAUSE_MS (as nginx does) instead of spinning.
 *
 * The counts of admitted sockets are given back by the workers
 * (bg_sock_destroyed): atomics, and the per-address table under peer_lock.
 */
#include "server/acceptor.h"

#include <errno.h>
#include <fcntl.h>
#include <libwebsockets.h>
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
#include "server/http.h"
#include "server/server.h"
#include "server/worker.h"

#define PAUSE_MS 100            /* no accepting after EMFILE */
#define REFUSE_MAX 32           /* refused sockets waiting for a request */
#define REFUSE_MS 1000          /* how long one may wait */
#define REFUSE_BUF 2048
#define PEER_BUCKETS 4096       /* power of two */
#define TICK_MS 1000            /* log throttle summaries */

/* Sockets open from one address (IPv6: one /64). */
struct bg_peer {
	struct bg_peer *next;
	uint8_t key[16];
	unsigned int count;
};

/* A refused socket waiting for its request, to answer it properly. */
struct refusal {
	int fd;
	enum bg_admit_stat why;
	uint64_t deadline_ms;
	size_t len;
	char buf[REFUSE_BUF];
};

struct bg_acceptor {
	struct bg_server *srv;   /* immutable */
	int fd;                  /* immutable until stop */
	int stop_efd;            /* immutable */
	pthread_t thread;
	bool started;
	unsigned int next;       /* acceptor thread */
	int reserve_fd;          /* acceptor thread: spent at EMFILE */
	struct refusal refused[REFUSE_MAX]; /* acceptor thread */
	int n_refused;           /* acceptor thread */
	unsigned int sockets;    /* atomic: acceptor adds, workers drop */
	unsigned int handshakes; /* atomic: acceptor adds, workers drop */
	uint64_t stats[BG_ADMIT_STAT_COUNT]; /* atomic */
	pthread_mutex_t peer_lock;
	struct bg_peer *peers[PEER_BUCKETS]; /* under peer_lock */
};

static struct bg_log_throttle accept_throttle =
	BG_LOG_THROTTLE("accept4()", 2);
static struct bg_log_throttle refuse_throttle =
	BG_LOG_THROTTLE("connections refused", 3);
static struct bg_log_throttle timeout_throttle =
	BG_LOG_THROTTLE("handshake timeouts", 3);

static uint64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void
stat_add(struct bg_acceptor *a, enum bg_admit_stat which)
{
	__atomic_add_fetch(&a->stats[which], 1, __ATOMIC_RELAXED);
}

struct bg_acceptor *
bg_acceptor_new(struct bg_server *srv, char *err, size_t errlen)
{
	const struct bg_config *cfg = bg_server_cfg(srv);
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
	a->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	pthread_mutex_init(&a->peer_lock, NULL);
	return a;
}

int
bg_acceptor_auto_max(long nofile, int workers)
{
	long n = nofile - 256 - 8L * workers;

	if (n < 16)
		n = 16;
	return n > 10000000 ? 10000000 : (int)n;
}

unsigned int
bg_acceptor_sockets(const struct bg_acceptor *a)
{
	return __atomic_load_n(&a->sockets, __ATOMIC_RELAXED);
}

unsigned int
bg_acceptor_handshakes(const struct bg_acceptor *a)
{
	return __atomic_load_n(&a->handshakes, __ATOMIC_RELAXED);
}

uint64_t
bg_acceptor_stat(const struct bg_acceptor *a, enum bg_admit_stat which)
{
	return __atomic_load_n(&a->stats[which], __ATOMIC_RELAXED);
}

/* ------------------------------------------------------- per address */

/* The address's key (IPv4 as IPv4-mapped IPv6; IPv6 cut to its /64).
 * False when it is not limited (loopback, unless limit_loopback). */
static bool
peer_key(const struct bg_config *cfg, const struct sockaddr_storage *ss,
	 uint8_t key[16])
{
	bool loopback;

	memset(key, 0, 16);
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)ss;
		key[10] = key[11] = 0xff;
		memcpy(key + 12, &in->sin_addr, 4);
		loopback = key[12] == 127;
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const void *)ss;
		if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
			memcpy(key, &in6->sin6_addr, 16);
			loopback = key[12] == 127;
		} else {
			memcpy(key, &in6->sin6_addr, 8);
			loopback = IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
		}
	} else {
		return false;
	}
	return !loopback || cfg->limit_loopback;
}

static struct bg_peer **
peer_slot(struct bg_acceptor *a, const uint8_t key[16])
{
	uint32_t h = 2166136261u;
	struct bg_peer **pp;

	for (int i = 0; i < 16; i++) {
		h ^= key[i];
		h *= 16777619u;
	}
	pp = &a->peers[h & (PEER_BUCKETS - 1)];
	while (*pp != NULL && memcmp((*pp)->key, key, 16) != 0)
		pp = &(*pp)->next;
	return pp;
}

/* Counts one more socket for key: false when it has max_per_address. */
static bool
peer_take(struct bg_acceptor *a, const uint8_t key[16], int max,
	  struct bg_peer **out)
{
	struct bg_peer **pp, *p;
	bool ok = true;

	pthread_mutex_lock(&a->peer_lock);
	pp = peer_slot(a, key);
	p = *pp;
	if (p == NULL && (p = calloc(1, sizeof(*p))) != NULL) {
		memcpy(p->key, key, 16);
		*pp = p;
	}
	if (p == NULL || p->count >= (unsigned int)max)
		ok = p == NULL;  /* out of memory: not limited */
	else
		p->count++;
	pthread_mutex_unlock(&a->peer_lock);
	*out = ok ? p : NULL;
	return ok;
}

static void
peer_give(struct bg_acceptor *a, struct bg_peer *p)
{
	struct bg_peer **pp;

	pthread_mutex_lock(&a->peer_lock);
	if (--p->count == 0) {
		pp = peer_slot(a, p->key);
		*pp = p->next;
		free(p);
	}
	pthread_mutex_unlock(&a->peer_lock);
}

/* ---------------------------------------------------------- admission */

/* Admits a socket into the counts, or returns why not. */
static bool
admit(struct bg_acceptor *a, const struct sockaddr_storage *ss,
      struct bg_peer **peer, enum bg_admit_stat *why)
{
	const struct bg_config *cfg = bg_server_cfg(a->srv);
	uint8_t key[16];

	*peer = NULL;
	if (bg_acceptor_sockets(a) >= (unsigned int)cfg->max_connections) {
		*why = BG_ADMIT_REFUSED_CONNECTIONS;
		return false;
	}
	/* Past max_handshakes the node is under handshake pressure: new
	 * sockets still come in (a real client finishes its handshake in
	 * milliseconds) and the workers cut every handshake older than
	 * BG_PRESSURE_AGE_MS at their next tick (bg_sock_sweep), so slow
	 * clients cannot lock real ones out. Twice the limit is refused. */
	if (cfg->max_handshakes > 0 && bg_acceptor_handshakes(a) >=
	    2u * (unsigned int)cfg->max_handshakes) {
		*why = BG_ADMIT_REFUSED_HANDSHAKES;
		return false;
	}
	if (cfg->max_per_address > 0 && peer_key(cfg, ss, key) &&
	    !peer_take(a, key, cfg->max_per_address, peer)) {
		*why = BG_ADMIT_REFUSED_ADDRESS;
		return false;
	}
	__atomic_add_fetch(&a->sockets, 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&a->handshakes, 1, __ATOMIC_RELAXED);
	return true;
}

/* Gives back what admit took (once). */
static void
release(struct bg_acceptor *a, struct bg_sock *s)
{
	if (s->released)
		return;
	s->released = true;
	if (s->handshake)
		__atomic_sub_fetch(&a->handshakes, 1, __ATOMIC_RELAXED);
	s->handshake = false;
	__atomic_sub_fetch(&a->sockets, 1, __ATOMIC_RELAXED);
	if (s->peer != NULL)
		peer_give(a, s->peer);
	s->peer = NULL;
}

/* ----------------------------------------------------------- refusals */

/* Writes a whole small HTTP answer if the socket takes it, and closes. */
static void
answer_close(struct bg_acceptor *a, int fd, unsigned int status,
	     const char *body)
{
	char resp[768];
	const char *reason = status == 200 ? "OK" : status == 429 ?
			     "Too Many Requests" : "Service Unavailable";
	int n;

	n = snprintf(resp, sizeof(resp), "HTTP/1.1 %u %s\r\nContent-Type: "
		     "application/json\r\nContent-Length: %zu\r\n"
		     "Cache-Control: no-store\r\n%sConnection: close\r\n\r\n"
		     "%s", status, reason, strlen(body),
		     status == 200 ? "" : "Retry-After: 1\r\n", body);
	if (n > 0 && n < (int)sizeof(resp) &&
	    send(fd, resp, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) == n)
		shutdown(fd, SHUT_WR);
	close(fd);
}

static const char *
refusal_body(enum bg_admit_stat why)
{
	switch (why) {
	case BG_ADMIT_REFUSED_ADDRESS:
		return "{\"error\":{\"code\":\"rate_limited\",\"message\":"
		       "\"too many connections from your address\"}}";
	case BG_ADMIT_REFUSED_HANDSHAKES:
		return "{\"error\":{\"code\":\"unavailable\",\"message\":"
		       "\"too many connections opening at once; retry\"}}";
	default:
		return "{\"error\":{\"code\":\"unavailable\",\"message\":"
		       "\"too many connections; retry later\"}}";
	}
}

static void
refused_log(struct bg_acceptor *a, enum bg_admit_stat why)
{
	const struct bg_config *cfg = bg_server_cfg(a->srv);

	stat_add(a, why);
	if (why == BG_ADMIT_REFUSED_CONNECTIONS)
		bg_log_throttled(&refuse_throttle, BG_LOG_WARN,
				 "max_connections (%d) reached: refusing "
				 "connections", cfg->max_connections);
	else if (why == BG_ADMIT_REFUSED_HANDSHAKES)
		bg_log_throttled(&refuse_throttle, BG_LOG_WARN,
				 "max_handshakes (%d) reached: refusing "
				 "connections", cfg->max_handshakes);
	else
		bg_log_throttled(&refuse_throttle, BG_LOG_WARN,
				 "max_per_address (%d) reached by a peer: "
				 "refusing its connections",
				 cfg->max_per_address);
}

/* Answers refusal i: /health as usual, anything else 429/503. */
static void
refusal_finish(struct bg_acceptor *a, int i)
{
	struct refusal *r = &a->refused[i];
	char body[512];
	unsigned int status;

	r->buf[r->len] = '\0';
	if ((strncmp(r->buf, "GET /health ", 12) == 0 ||
	     strncmp(r->buf, "GET /health?", 12) == 0) &&
	    bg_http_health(a->srv, false, body, sizeof(body), &status) > 0) {
		answer_close(a, r->fd, status, body);
	} else {
		refused_log(a, r->why);
		answer_close(a, r->fd, r->why == BG_ADMIT_REFUSED_ADDRESS ?
			     429 : 503, refusal_body(r->why));
	}
	*r = a->refused[--a->n_refused];
}

static void
refuse(struct bg_acceptor *a, int s, enum bg_admit_stat why)
{
	struct refusal *r;

	if (a->n_refused == REFUSE_MAX) {
		refused_log(a, why);
		answer_close(a, s, why == BG_ADMIT_REFUSED_ADDRESS ? 429 : 503,
			     refusal_body(why));
		return;
	}
	r = &a->refused[a->n_refused++];
	r->fd = s;
	r->why = why;
	r->len = 0;
	r->deadline_ms = now_ms() + REFUSE_MS;
}

/* Reads what refusal i sent; answers once its head is complete. */
static void
refusal_read(struct bg_acceptor *a, int i)
{
	struct refusal *r = &a->refused[i];
	ssize_t n = recv(r->fd, r->buf + r->len, REFUSE_BUF - 1 - r->len,
			 MSG_DONTWAIT);

	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
		/* Gone before asking: counted, nothing to answer. */
		stat_add(a, r->why);
		close(r->fd);
		*r = a->refused[--a->n_refused];
		return;
	}
	if (n > 0)
		r->len += (size_t)n;
	r->buf[r->len] = '\0';
	if (r->len == REFUSE_BUF - 1 || strstr(r->buf, "\r\n\r\n") != NULL ||
	    strstr(r->buf, "\n\n") != NULL)
		refusal_finish(a, i);
}

/* Out of descriptors: the reserved one takes a socket off the backlog
 * to answer it 503, then is reserved again. */
static void
out_of_descriptors(struct bg_acceptor *a)
{
	int s;

	bg_log_throttled(&accept_throttle, BG_LOG_ERROR, "accept4() failed: "
			 "%s: refusing connections for %d ms",
			 strerror(errno), PAUSE_MS);
	if (a->reserve_fd < 0)
		return;
	close(a->reserve_fd);
	s = accept4(a->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (s >= 0) {
		stat_add(a, BG_ADMIT_REFUSED_DESCRIPTORS);
		answer_close(a, s, 503, refusal_body(
				     BG_ADMIT_REFUSED_CONNECTIONS));
	}
	a->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

/* ------------------------------------------------------------ dispatch */

/* The worker with the fewest connections, starting the scan round-robin
 * so equal loads still spread. */
static void
dispatch(struct bg_acceptor *a, struct bg_sock *sock)
{
	static struct bg_log_throttle full_throttle =
		BG_LOG_THROTTLE("worker inboxes full", 2);
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
		if (bg_worker_adopt(srv->workers[(best + k) % n], sock))
			return;
	}
	bg_log_throttled(&full_throttle, BG_LOG_WARN, "every worker inbox is "
			 "full: dropping a new connection");
	bg_sock_drop(srv, sock);
}

/* Accepts what the backlog holds; returns the pause (ms) EMFILE asks
 * for, or -1. */
static int
accept_all(struct bg_acceptor *a)
{
	struct sockaddr_storage ss;
	enum bg_admit_stat why;
	struct bg_peer *peer;
	struct bg_sock *sock;
	socklen_t sl;
	int one = 1;

	for (;;) {
		sl = sizeof(ss);
		int s = accept4(a->fd, (struct sockaddr *)&ss, &sl,
				SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (s < 0) {
			if (errno == EMFILE || errno == ENFILE ||
			    errno == ENOBUFS || errno == ENOMEM) {
				out_of_descriptors(a);
				return PAUSE_MS;
			}
			if (errno != EAGAIN && errno != EINTR &&
			    errno != ECONNABORTED)
				bg_log_throttled(&accept_throttle, BG_LOG_ERROR,
						 "accept4() failed: %s",
						 strerror(errno));
			return -1;
		}
		if (!admit(a, &ss, &peer, &why)) {
			refuse(a, s, why);
			continue;
		}
		sock = calloc(1, sizeof(*sock));
		if (sock == NULL) {
			struct bg_sock tmp = { .peer = peer,
					       .handshake = true };
			release(a, &tmp);
			close(s);
			continue;
		}
		sock->magic = BG_SOCK_MAGIC;
		sock->fd = s;
		sock->peer = peer;
		sock->handshake = true;
		setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		dispatch(a, sock);
	}
}

static void *
acceptor_main(void *arg)
{
	struct bg_acceptor *a = arg;
	struct pollfd fds[2 + REFUSE_MAX];
	uint64_t now, paused_until = 0, next_tick = now_ms() + TICK_MS;
	int timeout, pause;

	pthread_setname_np(pthread_self(), "bg-acceptor");
	for (;;) {
		bg_server_quiescent(a->srv, BG_SEEN_ACCEPTOR);
		now = now_ms();
		fds[0] = (struct pollfd){ .fd = a->fd,
			.events = now >= paused_until ? POLLIN : 0 };
		fds[1] = (struct pollfd){ .fd = a->stop_efd, .events = POLLIN };
		timeout = (int)(next_tick > now ? next_tick - now : 0);
		if (now < paused_until &&
		    paused_until - now < (uint64_t)timeout)
			timeout = (int)(paused_until - now);
		for (int i = 0; i < a->n_refused; i++) {
			struct refusal *r = &a->refused[i];
			fds[2 + i] = (struct pollfd){ .fd = r->fd,
						      .events = POLLIN };
			if (r->deadline_ms <= now)
				timeout = 0;
			else if (r->deadline_ms - now < (uint64_t)timeout)
				timeout = (int)(r->deadline_ms - now);
		}
		int n_fds = 2 + a->n_refused;
		if (poll(fds, (nfds_t)n_fds, timeout) < 0) {
			if (errno != EINTR)
				bg_log_errno("acceptor: poll()");
			continue;
		}
		if (fds[1].revents)
			break;
		now = now_ms();
		/* Backwards: refusal_finish moves the last entry into i. */
		for (int i = n_fds - 3; i >= 0; i--) {
			if (fds[2 + i].revents)
				refusal_read(a, i);
			else if (a->refused[i].deadline_ms <= now)
				refusal_finish(a, i);
		}
		if (fds[0].revents) {
			pause = accept_all(a);
			if (pause > 0)
				paused_until = now_ms() + (uint64_t)pause;
		}
		if (now >= next_tick) {
			bg_log_throttle_tick();
			next_tick = now + TICK_MS;
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
bg_acceptor_stop(struct bg_acceptor *a)
{
	uint64_t one = 1;

	if (a == NULL || a->fd < 0)
		return;
	if (write(a->stop_efd, &one, sizeof(one)) < 0)
		bg_log_errno("acceptor: write(eventfd)");
	if (a->started)
		pthread_join(a->thread, NULL);
	a->started = false;
	for (int i = 0; i < a->n_refused; i++)
		close(a->refused[i].fd);
	a->n_refused = 0;
	close(a->fd);
	a->fd = -1;
}

void
bg_acceptor_free(struct bg_acceptor *a)
{
	if (a == NULL)
		return;
	bg_acceptor_stop(a);
	close(a->stop_efd);
	if (a->reserve_fd >= 0)
		close(a->reserve_fd);
	for (int i = 0; i < PEER_BUCKETS; i++) {
		struct bg_peer *p, *next;
		for (p = a->peers[i]; p != NULL; p = next) {
			next = p->next;
			free(p);
		}
	}
	pthread_mutex_destroy(&a->peer_lock);
	free(a);
}

/* ----------------------------------------------- sockets, on workers */

static void
list_remove(struct bg_worker *w, struct bg_sock *s)
{
	if (!s->listed)
		return;
	if (s->prev != NULL)
		s->prev->next = s->next;
	else
		w->hs_head = s->next;
	if (s->next != NULL)
		s->next->prev = s->prev;
	else
		w->hs_tail = s->prev;
	s->prev = s->next = NULL;
	s->listed = false;
}

/* Every deadline is now + the same timeout: the tail is the latest. */
static void
list_append(struct bg_worker *w, struct bg_sock *s)
{
	int secs = bg_server_cfg(w->srv)->handshake_timeout;

	if (secs <= 0)
		return;
	s->deadline_ms = now_ms() + (uint64_t)secs * 1000;
	s->prev = w->hs_tail;
	s->next = NULL;
	if (w->hs_tail != NULL)
		w->hs_tail->next = s;
	else
		w->hs_head = s;
	w->hs_tail = s;
	s->listed = true;
}

static struct bg_sock *
sock_of(struct lws *wsi)
{
	struct bg_sock *s = wsi != NULL ? lws_get_opaque_user_data(wsi) :
			    NULL;

	return s != NULL && s->magic == BG_SOCK_MAGIC ? s : NULL;
}

void
bg_sock_adopt(struct bg_worker *w, struct bg_sock *s)
{
	static struct bg_log_throttle throttle =
		BG_LOG_THROTTLE("connections not adopted", 2);
	lws_adopt_desc_t info;
	struct lws *wsi;

	memset(&info, 0, sizeof(info));
	info.vh = w->vhost;
	info.type = LWS_ADOPT_SOCKET | LWS_ADOPT_HTTP | LWS_ADOPT_ALLOW_SSL;
	info.fd.sockfd = s->fd;
	info.opaque = s;
	s->adopting = true;
	wsi = lws_adopt_descriptor_vhost_via_info(&info);
	s->adopting = false;
	if (wsi == NULL) {
		/* lws closed the socket (and may have destroyed a wsi).
		 * With TLS that includes a client whose first bytes were
		 * already there and were no usable ClientHello: anyone can
		 * cause that, so no warning each time. */
		if (w->srv->tls != NULL)
			bg_log_debug("worker %d: a connection failed its TLS "
				     "handshake", w->index);
		else
			bg_log_throttled(&throttle, BG_LOG_WARN, "worker %d: "
					 "could not adopt a connection",
					 w->index);
		release(w->srv->acceptor, s);
		free(s);
		return;
	}
	s->wsi = wsi;
	list_append(w, s);
}

void
bg_sock_http_request(struct bg_worker *w, struct lws *wsi)
{
	struct bg_sock *s = sock_of(wsi);

	if (s != NULL && s->listed) {
		list_remove(w, s);
		list_append(w, s);
	}
}

void
bg_sock_established(struct bg_worker *w, struct lws *wsi)
{
	struct bg_sock *s = sock_of(wsi);

	if (s == NULL)
		return;
	list_remove(w, s);
	if (s->handshake) {
		s->handshake = false;
		__atomic_sub_fetch(&w->srv->acceptor->handshakes, 1,
				   __ATOMIC_RELAXED);
	}
}

void
bg_sock_destroyed(struct bg_worker *w, struct lws *wsi)
{
	struct bg_sock *s = sock_of(wsi);

	if (s == NULL)
		return;
	lws_set_opaque_user_data(wsi, NULL);
	list_remove(w, s);
	release(w->srv->acceptor, s);
	if (!s->adopting) {
		s->magic = 0;
		free(s);
	}
}

void
bg_sock_sweep(struct bg_worker *w, uint64_t now)
{
	const struct bg_config *cfg = bg_server_cfg(w->srv);
	uint64_t span = (uint64_t)cfg->handshake_timeout * 1000;
	bool pressure = cfg->max_handshakes > 0 &&
		bg_acceptor_handshakes(w->srv->acceptor) >=
		(unsigned int)cfg->max_handshakes;
	struct bg_sock *s;

	/* The list is in accept order (every deadline is accept time +
	 * span): expired ones first, and under pressure every one accepted
	 * BG_PRESSURE_AGE_MS ago or more. */
	while ((s = w->hs_head) != NULL && (s->deadline_ms <= now ||
	       (pressure && s->deadline_ms - span + BG_PRESSURE_AGE_MS <=
		now))) {
		bool expired = s->deadline_ms <= now;

		list_remove(w, s);
		stat_add(w->srv->acceptor, BG_ADMIT_HANDSHAKE_TIMEOUTS);
		if (expired)
			bg_log_throttled(&timeout_throttle, BG_LOG_INFO,
					 "closing a connection still not a "
					 "WebSocket after %d s "
					 "(handshake_timeout)",
					 cfg->handshake_timeout);
		else
			bg_log_throttled(&timeout_throttle, BG_LOG_INFO,
					 "closing a connection still not a "
					 "WebSocket after %d ms: max_handshakes "
					 "(%d) reached", BG_PRESSURE_AGE_MS,
					 cfg->max_handshakes);
		/* Synchronous: WSI_DESTROY frees s before this returns. */
		lws_set_timeout(s->wsi, PENDING_TIMEOUT_USER_OK,
				LWS_TO_KILL_SYNC);
	}
}

void
bg_sock_drop(struct bg_server *srv, struct bg_sock *s)
{
	int fd = s->fd;

	release(srv->acceptor, s);
	close(fd);
	free(s);
}
