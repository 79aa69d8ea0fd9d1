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

#include "common/bg.h"
#include "common/config.h"
#include "common/proto.h"

struct bg_worker;
struct bg_bus;
struct bg_acceptor;
struct bg_tls;
struct bg_api;
struct bg_control;
struct bg_pres;

/* Close codes counted apart in bg_stats.closes (bg_stat_close); any
 * other code is counted in the last slot, "other". */
#define BG_CLOSE_CODES 13
extern const uint16_t bg_close_codes[BG_CLOSE_CODES - 1];

/* A latency histogram: counts[i] holds observations <= bg_hist_bounds[i]
 * microseconds (not cumulative; /metrics sums them), the last one the
 * rest. Owner-written plain counters like the others. */
#define BG_HIST_BUCKETS 15
extern const uint32_t bg_hist_bounds[BG_HIST_BUCKETS - 1];

struct bg_hist {
	uint64_t counts[BG_HIST_BUCKETS];
	uint64_t sum_us;
};

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
	/* PROTOCOL.md §7 "Operations metrics" (workers only). */
	uint64_t bytes_received;        /* WebSocket message payloads */
	uint64_t bytes_sent;            /* WebSocket frames written */
	uint64_t closes[BG_CLOSE_CODES][2];  /* [code slot][by client] */
	uint64_t forwarded_events;
	uint64_t forward_replies;
	struct bg_hist bcast_latency;   /* ingest to socket write */
	struct bg_hist forward_rtt;     /* forward published to reply */
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
	struct bg_control *control;     /* the cluster control plane
	                                   (amqp/control.h); made before the
	                                   bus */
	struct bg_pres *presence;       /* server/presence.c: immutable once
	                                   started; its state is the bus
	                                   thread's */
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

/* Records one observation of us microseconds. Owner thread only. */
static inline void
bg_hist_observe(struct bg_hist *h, uint64_t us)
{
	int i = 0;

	while (i < BG_HIST_BUCKETS - 1 && us > bg_hist_bounds[i])
		i++;
	bg_stat_add(&h->counts[i], 1);
	bg_stat_add(&h->sum_us, us);
}

/* Counts a WebSocket close with code (0: none, counted as 1006), by the
 * client or by the server. Owner thread only. */
void bg_stat_close(struct bg_stats *st, uint16_t code, bool by_client);

/* CLOCK_MONOTONIC in microseconds. */
uint64_t bg_mono_us(void);

/*
 * Forwarded requests awaiting their reply, for the round-trip histogram:
 * a small direct-mapped table per worker keyed by a hash of (client id,
 * callbackId). A newer request that lands on a taken slot replaces it
 * (that round trip goes unmeasured): bounded, no allocation. Owner
 * worker only.
 */
#define BG_FWD_PENDING 256

struct bg_fwd_slot {
	uint64_t key;                   /* 0 = free */
	uint64_t t_us;                  /* bg_mono_us when published */
};

void bg_fwd_pending_add(struct bg_fwd_slot *tab, const char *client,
			const char *callback_id, uint64_t now_us);

/* True, with the round trip in *us, when (client, callback_id) was
 * pending; its slot is freed. */
bool bg_fwd_pending_take(struct bg_fwd_slot *tab, const char *client,
			 const char *callback_id, uint64_t now_us,
			 uint64_t *us);

#endif
