/*
 * sink.c - the server's side of the bus (struct bg_bus_sink, amqp/bus.h):
 * what the bus and the control plane may do to the workers and read of
 * the node, without including server/ headers. Threads as each function
 * of the sink says.
 */
#include "server/sink.h"

#include "server/presence.h"
#include "server/worker.h"

static const struct bg_config *
sink_cfg(void *arg)
{
	return bg_server_cfg(arg);
}

static void
sink_quiescent(void *arg)
{
	bg_server_quiescent(arg, BG_SEEN_BUS);
}

static struct bg_worker *
worker(void *arg, int i)
{
	struct bg_server *srv = arg;

	return srv->workers != NULL ? srv->workers[i] : NULL;
}

static bool
sink_wants(void *arg, int i, const struct bg_msg *m)
{
	struct bg_worker *w = worker(arg, i);

	return w != NULL && bg_worker_wants(w, m);
}

static bool
sink_deliver(void *arg, int i, struct bg_msg *m, bool *wake)
{
	return bg_worker_deliver_defer(worker(arg, i), m, wake);
}

static void
sink_wake(void *arg, int i)
{
	bg_worker_wake(worker(arg, i));
}

static void
sink_count(void *arg, int i)
{
	bg_stat_add(&worker(arg, i)->bcasts_in, 1);
}

static bool
sink_congested(void *arg, int i)
{
	struct bg_worker *w = worker(arg, i);

	return w != NULL && bg_worker_congested(w);
}

static uint64_t
sink_stat(void *arg, int i, enum bg_sink_stat which)
{
	struct bg_worker *w = worker(arg, i);

	if (w == NULL)
		return 0;
	switch (which) {
	case BG_SINK_BCASTS_IN:
		return bg_stat_get(&w->bcasts_in);
	case BG_SINK_BACKED_UP:
		return __atomic_load_n(&w->backed_up, __ATOMIC_RELAXED);
	case BG_SINK_CONNECTIONS:
		return bg_stat_get(&w->stats.connections);
	case BG_SINK_SUBSCRIPTIONS:
		return bg_stat_get(&w->stats.subscriptions);
	}
	return 0;
}

/* Presence's timers (node expiry, heartbeats), on the bus thread. */
static void
sink_tick(void *arg)
{
	bg_presence_tick(arg);
}

void
bg_server_sink(struct bg_server *srv, struct bg_bus_sink *sink)
{
	*sink = (struct bg_bus_sink){
		.arg = srv,
		.n_workers = srv->n_workers,
		.node_id = srv->node_id,
		.started_ms = srv->started_ms,
		.cfg = sink_cfg,
		.quiescent = sink_quiescent,
		.wants = sink_wants,
		.deliver = sink_deliver,
		.wake = sink_wake,
		.count = sink_count,
		.congested = sink_congested,
		.stat = sink_stat,
		.tick = sink_tick,
	};
}
