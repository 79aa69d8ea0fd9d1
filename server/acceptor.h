/*
 * acceptor.h - the listening socket, the thread that accepts on it and
 * hands each connection to the least-loaded worker through its inbox ring,
 * and the admission limits (PROTOCOL.md "Resource limits"): every accepted
 * socket counts against max_connections and its peer's max_per_address
 * until lws destroys it; one that is not yet an established WebSocket
 * also counts against max_handshakes and has handshake_timeout seconds to
 * become one (an HTTP request restarts its clock).
 *
 * Threads: new/start/stop/free on main; the counts are atomics or under
 * the acceptor's peer lock, so the workers' bg_sock_* calls are safe.
 */
#ifndef BG_ACCEPTOR_H
#define BG_ACCEPTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bg_server;
struct bg_acceptor;
struct bg_worker;
struct bg_peer;
struct lws;

/* One accepted socket, from accept4 to lws's WSI_DESTROY. The acceptor
 * creates it and hands it to a worker, which owns it from then on (it is
 * the wsi's opaque user data). */
struct bg_sock {
	uint32_t magic;                /* BG_SOCK_MAGIC: other opaque user
	                                  data on a wsi is not ours */
	int fd;                        /* until adopted */
	struct bg_peer *peer;          /* its address's count, or NULL */
	bool handshake;                /* counted in handshakes */
	bool adopting;                 /* worker: inside lws's adoption */
	bool released;                 /* counts given back */
	bool listed;                   /* in the worker's list */
	struct lws *wsi;               /* worker */
	uint64_t deadline_ms;          /* worker: handshake deadline */
	struct bg_sock *prev, *next;   /* worker's list, by deadline */
};

#define BG_SOCK_MAGIC 0x6b636f73u

/* Counters for /metrics. */
enum bg_admit_stat {
	BG_ADMIT_REFUSED_CONNECTIONS,  /* max_connections */
	BG_ADMIT_REFUSED_HANDSHAKES,   /* max_handshakes */
	BG_ADMIT_REFUSED_ADDRESS,      /* max_per_address */
	BG_ADMIT_REFUSED_DESCRIPTORS,  /* EMFILE/ENFILE: the reserve fd */
	BG_ADMIT_HANDSHAKE_TIMEOUTS,
	BG_ADMIT_STAT_COUNT
};

/* Binds and listens on cfg's listen address. NULL with err set ("cannot
 * listen on 127.0.0.1:9000: Address already in use"). Main thread. */
struct bg_acceptor *bg_acceptor_new(struct bg_server *srv, char *err,
				    size_t errlen);

/* Starts accepting. BG_OK or BG_ERR (logged). Main thread. */
int bg_acceptor_start(struct bg_acceptor *a);

/* Stops accepting and closes the socket; the counts stay usable until
 * bg_acceptor_free, after the workers are gone. Main thread. */
void bg_acceptor_stop(struct bg_acceptor *a);
void bg_acceptor_free(struct bg_acceptor *a);

/* Any thread: sockets open, sockets still in their handshake, and a
 * counter of enum bg_admit_stat. */
unsigned int bg_acceptor_sockets(const struct bg_acceptor *a);
unsigned int bg_acceptor_handshakes(const struct bg_acceptor *a);
uint64_t bg_acceptor_stat(const struct bg_acceptor *a,
			  enum bg_admit_stat which);

/*
 * The max_connections a 0 in the configuration means: RLIMIT_NOFILE minus
 * a reserve of 256 + 8 per worker descriptors (lws, eventfds, RabbitMQ,
 * the API listener, /health at exhaustion, files), at least 16.
 */
int bg_acceptor_auto_max(long nofile, int workers);

/* Worker: adopts s into its lws context (s->fd; closed on failure) and
 * starts its handshake clock. */
void bg_sock_adopt(struct bg_worker *w, struct bg_sock *s);

/* Worker, from lws callbacks of wsi: an HTTP request arrived (restarts
 * the handshake clock); the WebSocket is established (stops it, leaves
 * max_handshakes); lws destroys wsi (gives every count back). */
void bg_sock_http_request(struct bg_worker *w, struct lws *wsi);
void bg_sock_established(struct bg_worker *w, struct lws *wsi);
void bg_sock_destroyed(struct bg_worker *w, struct lws *wsi);

/* How old a handshake may be while max_handshakes is reached before the
 * workers cut it (admission goes on up to twice that limit). */
#define BG_PRESSURE_AGE_MS 1000

/* Worker, about once a second: closes sockets past their handshake
 * deadline, and while max_handshakes is reached every socket that has
 * been a handshake for BG_PRESSURE_AGE_MS or more. */
void bg_sock_sweep(struct bg_worker *w, uint64_t now_ms);

/* Worker: frees a socket never adopted (worker stopping). */
void bg_sock_drop(struct bg_server *srv, struct bg_sock *s);

#endif
