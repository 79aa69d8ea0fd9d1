/*
 * server.h - the node: its configuration, its workers, its bus, and the
 * counters /metrics and /health read.
 *
 * Built by the main thread before any other thread starts; afterwards the
 * fields are immutable except those marked atomic.
 *
 * The configuration (cfg) is swapped on SIGHUP. Thread rules:
 * - Only the main thread stores cfg (bg_server_cfg_publish), a complete
 *   struct that is never written again.
 * - Any thread reads it with bg_server_cfg() and never keeps the
 *   pointer, or a pointer into it, past the current callback or loop
 *   turn. Two reads in one callback may see two configs, each whole.
 * - Keys that need a restart (listen addresses, workers, [amqp], tls_*
 *   paths, path, static_dir, ping_interval, close_timeout, forward
 *   exchange) keep their start-up value in every config (reload.c copies
 *   it back), so any config gives the same answer; modules that keep a
 *   pointer to the start-up config (tls.c, amqp/consumer.c, the lws
 *   mount of static_dir) keep that one, main's static, never freed.
 * - A replaced config is freed only once every thread that reads configs
 *   has passed a quiescent point after the swap (bg_server_quiescent: a
 *   point in its loop between callbacks, where it holds no config pointer;
 *   each reports at least once a second). Main checks that (reload.c).
 */
#ifndef BG_SERVER_H
#define BG_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include "common/config.h"
#include "common/proto.h"

struct bg_worker;
struct bg_bus;
struct bg_acceptor;
struct bg_tls;
struct bg_api;

/*
 * Per-worker counters: written only by their worker (ck_pr_store_64 of the
 * owner's own value), read by any worker serving /metrics (ck_pr_load_64).
 */
struct bg_stats {
	uint64_t connections;           /* gauge */
	uint64_t connections_total;
	uint64_t messages_received;
	uint64_t messages_sent;
	uint64_t slow_consumer_closes;
	uint64_t subscriptions;         /* gauge */
	uint64_t broadcasts_rejected;   /* POST /broadcast answered 400 */
	uint64_t http_requests;
	uint64_t http_auth_failures;    /* answered 401 or 403 */
	uint64_t memory_closes;         /* max_connection_memory */
	uint64_t client_errors[BG_CODE_COUNT];
};

struct bg_server {
	const struct bg_config *cfg;    /* atomic: bg_server_cfg() */
	int draining;                   /* atomic: 1 after SIGTERM */
	uint64_t cfg_gen;               /* atomic: main bumps it after each
	                                   publish */
	uint64_t *cfg_seen;             /* atomic, [BG_SEEN_SLOTS(n_workers)]:
	                                   the cfg_gen each reading thread last
	                                   saw at a quiescent point; UINT64_MAX
	                                   for a thread that does not run */
	char node_id[17];               /* random hex, unique per start */
	int n_workers;
	struct bg_worker **workers;
	struct bg_bus *bus;
	struct bg_acceptor *acceptor;
	struct bg_tls *tls;             /* NULL = plain; main reloads it */
	struct bg_api *api;             /* NULL when api_listen is empty */
	uint64_t started_ms;            /* CLOCK_REALTIME at start */
	char static_root[4096];         /* realpath of [http] static_dir */
};

/* The configuration now in force. Any thread; see the rules above. */
static inline const struct bg_config *
bg_server_cfg(const struct bg_server *srv)
{
	return __atomic_load_n(&srv->cfg, __ATOMIC_ACQUIRE);
}

/* Publishes a new configuration. Main thread only. */
static inline void
bg_server_cfg_publish(struct bg_server *srv, const struct bg_config *cfg)
{
	__atomic_store_n(&srv->cfg, cfg, __ATOMIC_RELEASE);
}

/* The cfg_seen slot of each thread that reads the config. */
#define BG_SEEN_ACCEPTOR 0
#define BG_SEEN_API 1
#define BG_SEEN_BUS 2
#define BG_SEEN_WORKER(i) (3 + (i))
#define BG_SEEN_SLOTS(n_workers) (3 + (n_workers))

/* Says that the calling thread holds no config pointer read before this
 * point. That thread's own slot only; at least once a second. */
static inline void
bg_server_quiescent(struct bg_server *srv, int slot)
{
	uint64_t gen = __atomic_load_n(&srv->cfg_gen, __ATOMIC_SEQ_CST);

	/* Release: this thread's earlier reads of a config come before it. */
	__atomic_store_n(&srv->cfg_seen[slot], gen, __ATOMIC_RELEASE);
}

/* Adds n to an owner-written counter. Owner thread only. */
static inline void
bg_stat_add(uint64_t *counter, uint64_t n)
{
	__atomic_store_n(counter, *counter + n, __ATOMIC_RELAXED);
}

/* Reads a counter from any thread. */
static inline uint64_t
bg_stat_get(const uint64_t *counter)
{
	return __atomic_load_n(counter, __ATOMIC_RELAXED);
}

#endif
