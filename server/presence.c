/*
 * presence.c - presence channels: the workers' side (subscribe, leave,
 * the presence and presence_stats events), the bus thread's side (the
 * member table, events, answers) and replication between nodes over the
 * control plane. See presence.h for the threads; docs/DESIGN.md,
 * "Presence", for the design and what it guarantees.
 *
 * Replication (control messages, "node" is the sender):
 *   presence.delta {"seq":S,"ops":[[CHANNEL,USER,INFO,COUNT],...]}
 *       the sender's own count of USER's connections in CHANNEL is now
 *       COUNT (absolute, 0 = none); INFO is the member's info as JSON
 *       text. S grows by one per delta.
 *   presence.hb {"seq":S}  every heartbeat period: "my last delta is S".
 *   presence.state {"seq":S,"part":I,"last":B,"entries":[...]}
 *       the sender's whole state (in parts of STATE_CHUNK entries), as
 *       of delta S: a receiver replaces what it held for that node.
 *   presence.ask {"to":NODE}  NODE, send your state.
 * A node sends its state when another node comes up (control plane's
 * node-up), and when asked; a receiver asks when it sees a gap in a
 * node's seq (a lost delta) or a node it has no state of. A node not
 * heard for [presence] timeout, or declared down by the control plane,
 * is dropped: its members leave, with leave events.
 */
#include "server/presence.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "amqp/bus.h"
#include "amqp/control.h"
#include "common/bg.h"
#include "common/log.h"
#include "common/msg.h"
#include "common/members.h"
#include "common/ring.h"
#include "handlers/auth.h"
#include "handlers/handlers.h"
#include "server/conn.h"
#include "server/server.h"
#include "server/worker.h"

#define GO_ON BG_CODE_COUNT
#define STATE_CHUNK 500          /* entries per presence.state part */
#define ASK_EVERY_MS 1000        /* state requests per node, at most */
#define HB_MAX_MS 2000           /* presence.hb period, at most */
#define TICK_MS 1000             /* bg_presence_tick's period, at most */
#define OPS_RING 65536           /* requests in flight to the bus */
#define LEAVE_WAIT_MS 5000       /* a leave waits this long for room */
#define STUCK_MS 2000            /* a full worker ring: logged */

enum op_kind { OP_JOIN, OP_LEAVE, OP_MEMBERS, OP_STATS, OP_KICK };

/* A worker's request to the bus thread: made by the worker, owned by
 * the bus once posted. */
struct op {
	struct bg_control_job job;       /* first: the control plane's */
	struct bg_pres *P;               /* immutable */
	enum op_kind kind;
	int worker;
	char client[BG_ID_MAX + 1];
	char *channel, *user, *info, *cb;
};

/* Another node, by its index in the table. Bus thread. */
struct peer {
	uint64_t seq;                    /* last delta applied */
	uint64_t heard_ms;               /* 0: not heard (or dropped) */
	uint64_t asked_ms;
	bool synced;                     /* a whole state was applied */
	bool in_state;                   /* its part 0 came, not its last */
};

struct bg_pres {
	struct bg_server *srv;           /* immutable */
	struct bg_control *ctl;          /* immutable */
	/* Bus thread only. */
	struct bg_members *table;
	json_t *pending;                 /* delta ops not sent yet */
	uint64_t seq;
	uint64_t next_hb_ms;
	uint64_t last_tick_ms;
	bool standalone;                 /* [amqp] url = none: no peers */
	const char *exclude;             /* a local join: not told of it */
	struct peer peers[BG_MEMBERS_MAX_NODES];
	struct bg_ring *ops;             /* workers -> bus: struct op * */
	unsigned int kicked;             /* atomic: kick is posted */
	struct op kick;                  /* the one OP_KICK job: drain ops */
	/* Bus writes, any thread reads (/metrics). */
	uint64_t n_entries, n_bytes, n_joins, n_leaves, n_dropped;
};

static uint64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

bool
bg_presence_is_channel(const struct bg_config *cfg, const char *channel)
{
	size_t n = strlen(cfg->presence_prefix);

	return n > 0 && strncmp(channel, cfg->presence_prefix, n) == 0;
}

static void
op_free(struct op *o)
{
	free(o->channel);
	free(o->user);
	free(o->info);
	free(o->cb);
	free(o);
}

/* ------------------------------------------------ bus: to the workers */

/* Hands m to worker i (taking a reference of its own), waiting while
 * its ring is full, as the bus does for broadcasts: a presence event is
 * never dropped while the node runs. */
static void
push_worker(struct bg_server *srv, int i, struct bg_msg *m)
{
	long wait_ns = 20000, waited = 0;

	bg_msg_ref(m);
	while (!bg_worker_deliver(srv->workers[i], m)) {
		struct timespec ts = { 0, wait_ns };
		if (bg_bus_stopping(srv->bus)) {
			bg_msg_unref(m);
			return;
		}
		if ((waited += wait_ns) >= (long)STUCK_MS * 1000000) {
			static struct bg_log_throttle throttle =
				BG_LOG_THROTTLE("presence: full rings", 5);
			bg_log_throttled(&throttle, BG_LOG_WARN, "presence: "
					 "worker %d's ring has been full for "
					 "%d s", i, STUCK_MS / 1000);
			waited = 0;
		}
		nanosleep(&ts, NULL);
		if (wait_ns < 1000000)
			wait_ns *= 2;
	}
}

/* A reply (text, malloc'd, taken over) to one connection of worker i;
 * unsub: its subscription to that channel is dropped first. */
static void
reply(struct bg_pres *P, int worker, const char *client, char *text,
      size_t len, const char *unsub)
{
	struct bg_msg *m = text ? bg_msg_new(BG_MSG_CLIENTS, 1) : NULL;

	if (m == NULL || (m->names[0] = strdup(client)) == NULL ||
	    bg_msg_set_frame(m, 0, text, len) != BG_OK ||
	    (unsub != NULL && (m->unsubscribe = strdup(unsub)) == NULL)) {
		bg_log_error("presence: a reply to %s was lost: out of "
			     "memory", client);
		bg_msg_unref(m);
		free(text);
		return;
	}
	free(text);
	if (worker >= 0 && worker < P->srv->n_workers)
		push_worker(P->srv, worker, m);
	bg_msg_unref(m);
}

/* The table's change callback: presence_join / presence_leave to the
 * channel's subscribers on this node. */
static void
on_change(void *arg, const char *channel, const char *user,
	  const char *info, bool joined)
{
	struct bg_pres *P = arg;
	json_t *data = json_loads(info, 0, NULL);
	struct bg_msg *m = NULL;
	char *text;
	json_t *ev;

	bg_stat_add(joined ? &P->n_joins : &P->n_leaves, 1);
	ev = json_pack("{s:s, s:s, s:{s:s, s:o}}", "event",
		       joined ? "presence_join" : "presence_leave",
		       "channel", channel, "data", "user", user,
		       "info", data ? data : json_object());
	text = ev ? json_dumps(ev, JSON_COMPACT) : NULL;
	json_decref(ev);
	if (text != NULL)
		m = bg_msg_new(BG_MSG_CHANNELS, 1);
	if (m == NULL || (m->names[0] = strdup(channel)) == NULL ||
	    bg_msg_set_frame(m, 0, text, strlen(text)) != BG_OK ||
	    (joined && P->exclude != NULL &&
	     (m->exclude = strdup(P->exclude)) == NULL)) {
		bg_log_error("presence: a %s event was lost: out of memory",
			     joined ? "join" : "leave");
		bg_msg_unref(m);
		free(text);
		return;
	}
	free(text);
	for (int i = 0; i < P->srv->n_workers; i++)
		push_worker(P->srv, i, m);
	bg_msg_unref(m);
}

/* The table's gauges for /metrics. */
static void
gauges(struct bg_pres *P)
{
	__atomic_store_n(&P->n_entries, bg_members_entries(P->table),
			 __ATOMIC_RELAXED);
	__atomic_store_n(&P->n_bytes, bg_members_bytes(P->table),
			 __ATOMIC_RELAXED);
}

/* ----------------------------------------------- bus: replication out */

/* This node's count of user in channel changed to count. */
static void
queue_delta(struct bg_pres *P, const char *channel, const char *user,
	    const char *info, uint32_t count)
{
	json_t *e;

	if (P->standalone)
		return; /* nobody to tell */
	e = json_pack("[s, s, s?, I]", channel, user, info,
		      (json_int_t)count);
	if (e == NULL || json_array_append_new(P->pending, e) != 0) {
		/* Peers will see the seq gap and ask for the state. */
		P->seq++;
	}
}

static void
send_msg(struct bg_pres *P, json_t *msg)
{
	if (msg != NULL)
		bg_control_send(P->ctl, msg); /* lost when down: seq says */
}

static void
flush_deltas(struct bg_pres *P)
{
	json_t *ops = P->pending;

	if (json_array_size(ops) == 0)
		return;
	P->pending = json_array();
	P->seq++;
	send_msg(P, json_pack("{s:s, s:I, s:o}", "type", "presence.delta",
			      "seq", (json_int_t)P->seq, "ops", ops));
	if (P->pending == NULL)
		P->pending = json_array();
}

struct dump {
	struct bg_pres *P;
	json_t *entries;
	int part;
};

static void
send_part(struct dump *d, bool last)
{
	send_msg(d->P, json_pack("{s:s, s:I, s:i, s:b, s:o}", "type",
				 "presence.state", "seq",
				 (json_int_t)d->P->seq, "part", d->part++,
				 "last", last, "entries", d->entries));
	d->entries = json_array();
}

static void
dump_entry(void *arg, const char *channel, const char *user,
	   const char *info, uint32_t count)
{
	struct dump *d = arg;

	json_array_append_new(d->entries, json_pack("[s, s, s, I]", channel,
			      user, info, (json_int_t)count));
	if (json_array_size(d->entries) >= STATE_CHUNK)
		send_part(d, false);
}

/* Sends this node's whole state (after any pending delta). */
static void
send_state(struct bg_pres *P)
{
	struct dump d = { .P = P };

	if (P->standalone)
		return;
	d.entries = json_array();
	flush_deltas(P);
	bg_members_each(P->table, 0, dump_entry, &d);
	send_part(&d, true);
	json_decref(d.entries);
}

static void
ask_state(struct bg_pres *P, const char *node, struct peer *peer)
{
	uint64_t now = now_ms();

	if (peer->asked_ms != 0 && now - peer->asked_ms < ASK_EVERY_MS)
		return;
	peer->asked_ms = now;
	send_msg(P, json_pack("{s:s, s:s}", "type", "presence.ask", "to",
			      node));
}

/* ------------------------------------------------ bus: replication in */

static void
drop_peer(struct bg_pres *P, int idx, const char *why)
{
	uint64_t n = bg_members_drop_node(P->table, idx);

	if (n > 0 || P->peers[idx].heard_ms != 0)
		bg_log_info("presence: node %s %s: %llu entries dropped",
			    bg_members_node_id(P->table, idx), why,
			    (unsigned long long)n);
	memset(&P->peers[idx], 0, sizeof(P->peers[idx]));
	bg_stat_add(&P->n_dropped, 1);
	/* Its id never comes back (a node gets a new one at each start):
	 * the slot is free for the next one. A message it still sends
	 * interns it again. */
	bg_members_forget_node(P->table, idx);
}

/* The peer a message came from, heard now; NULL for this node's own. */
static struct peer *
heard(struct bg_pres *P, const char *node, int *idx)
{
	if (strcmp(node, P->srv->node_id) == 0)
		return NULL;
	*idx = bg_members_node(P->table, node, true);
	if (*idx <= 0)
		return NULL;
	P->peers[*idx].heard_ms = now_ms();
	return &P->peers[*idx];
}

/* Applies [[CHANNEL,USER,INFO,COUNT],...] of node idx. */
static void
apply_entries(struct bg_pres *P, int idx, json_t *arr)
{
	size_t i;
	json_t *e;

	json_array_foreach(arr, i, e) {
		const char *ch = json_string_value(json_array_get(e, 0));
		const char *user = json_string_value(json_array_get(e, 1));
		const char *info = json_string_value(json_array_get(e, 2));
		json_t *n = json_array_get(e, 3);
		json_int_t count = json_integer_value(n);

		if (ch == NULL || user == NULL || !json_is_integer(n) ||
		    count < 0 || count > UINT32_MAX)
			continue;
		bg_members_set(P->table, idx, ch, user, info,
				(uint32_t)count);
	}
}

static void
on_delta(struct bg_control *ctl, const char *node, json_t *msg, void *arg)
{
	struct bg_pres *P = arg;
	uint64_t seq = (uint64_t)json_integer_value(json_object_get(msg,
								    "seq"));
	struct peer *peer;
	int idx;

	if ((peer = heard(P, node, &idx)) == NULL)
		return;
	if (!peer->synced || seq != peer->seq + 1)
		ask_state(P, node, peer);
	apply_entries(P, idx, json_object_get(msg, "ops"));
	peer->seq = seq;
}

static void
on_hb(struct bg_control *ctl, const char *node, json_t *msg, void *arg)
{
	struct bg_pres *P = arg;
	uint64_t seq = (uint64_t)json_integer_value(json_object_get(msg,
								    "seq"));
	struct peer *peer;
	int idx;

	if ((peer = heard(P, node, &idx)) == NULL)
		return;
	if (!peer->synced || seq != peer->seq)
		ask_state(P, node, peer);
}

static void
on_state(struct bg_control *ctl, const char *node, json_t *msg, void *arg)
{
	struct bg_pres *P = arg;
	struct peer *peer;
	int idx;

	if ((peer = heard(P, node, &idx)) == NULL)
		return;
	if (json_integer_value(json_object_get(msg, "part")) == 0) {
		bg_members_mark(P->table, idx);
		peer->in_state = true;
	}
	apply_entries(P, idx, json_object_get(msg, "entries"));
	if (!json_is_true(json_object_get(msg, "last")))
		return;
	if (!peer->in_state) {
		/* Its first part was lost with a link: not a whole state. */
		ask_state(P, node, peer);
		return;
	}
	bg_members_sweep(P->table, idx);
	peer->seq = (uint64_t)json_integer_value(json_object_get(msg, "seq"));
	peer->synced = true;
	peer->in_state = false;
}

static void
on_ask(struct bg_control *ctl, const char *node, json_t *msg, void *arg)
{
	struct bg_pres *P = arg;
	const char *to = json_string_value(json_object_get(msg, "to"));
	int idx;

	heard(P, node, &idx);
	if (to != NULL && strcmp(to, P->srv->node_id) == 0)
		send_state(P);
}

static void
on_node(struct bg_control *ctl, const char *node, bool up, void *arg)
{
	struct bg_pres *P = arg;
	int idx = bg_members_node(P->table, node, up);

	if (up)
		send_state(P); /* it starts empty-handed */
	else if (idx > 0)
		drop_peer(P, idx, "is down");
}

/* ----------------------------------------------------- bus: requests */

static void answer_leave(struct bg_pres *P, struct op *o);

static void
answer_join(struct bg_pres *P, struct op *o)
{
	const struct bg_config *cfg = bg_server_cfg(P->srv);
	const char *old;
	uint64_t clients, users;
	uint32_t before, after;
	json_t *extra;
	size_t len = 0;
	char *text;
	int rc;

	old = bg_members_client_user(P->table, o->channel, o->client);
	if (old != NULL && strcmp(old, o->user) != 0)
		answer_leave(P, o); /* re-authenticated as another user */
	before = bg_members_count(P->table, 0, o->channel, o->user);
	P->exclude = o->client;
	rc = bg_members_join(P->table, o->channel, o->client, o->user,
			      o->info, (uint32_t)cfg->presence_max_members);
	P->exclude = NULL;
	after = bg_members_count(P->table, 0, o->channel, o->user);
	if (after != before)
		queue_delta(P, o->channel, o->user, bg_members_info(P->table,
			    0, o->channel, o->user), after);
	if (rc == BG_MEMBERS_FULL || rc < 0) {
		char msg[96];
		snprintf(msg, sizeof(msg), rc < 0 ? "out of memory" :
			 "the presence channel has %d members",
			 cfg->presence_max_members);
		text = bg_proto_failure(o->cb, "subscribe", rc < 0 ?
					BG_CODE_INTERNAL :
					BG_CODE_CHANNEL_FULL, msg, &len);
		reply(P, o->worker, o->client, text, len, o->channel);
		return;
	}
	if (o->cb == NULL)
		return; /* success is silent: no member list to build */
	bg_members_stats(P->table, o->channel, &clients, &users);
	extra = json_pack("{s:s, s:o, s:I}", "channel", o->channel,
			  "members", bg_members_members(P->table,
							 o->channel),
			  "count", (json_int_t)users);
	text = extra ? bg_proto_callback_ok(o->cb, extra, &len) : NULL;
	json_decref(extra);
	reply(P, o->worker, o->client, text, len, NULL);
}

static void
answer_leave(struct bg_pres *P, struct op *o)
{
	const char *user = bg_members_client_user(P->table, o->channel,
						   o->client);
	uint32_t before, after;
	char *u;

	if (user == NULL)
		return; /* never joined (refused), or left already */
	u = strdup(user);
	before = bg_members_count(P->table, 0, o->channel, u);
	bg_members_leave(P->table, o->channel, o->client);
	after = bg_members_count(P->table, 0, o->channel, u);
	if (after != before)
		queue_delta(P, o->channel, u, bg_members_info(P->table, 0,
			    o->channel, u), after);
	free(u);
}

/* {"members":[..]} or {"clients":N,"users":M}: a new object. */
static json_t *
query(struct bg_pres *P, const char *channel, bool stats)
{
	uint64_t clients, users;

	if (!stats)
		return json_pack("{s:o}", "members",
				 bg_members_members(P->table, channel));
	bg_members_stats(P->table, channel, &clients, &users);
	return json_pack("{s:I, s:I}", "clients", (json_int_t)clients,
			 "users", (json_int_t)users);
}

static void
answer_query(struct bg_pres *P, struct op *o)
{
	json_t *extra = query(P, o->channel, o->kind == OP_STATS);
	size_t len = 0;
	char *text;

	text = extra ? bg_proto_callback_ok(o->cb, extra, &len) :
	       bg_proto_failure(o->cb, o->kind == OP_STATS ?
				"presence_stats" : "presence",
				BG_CODE_INTERNAL, "out of memory", &len);
	json_decref(extra);
	reply(P, o->worker, o->client, text, len, NULL);
}

static void
run_op(struct bg_pres *P, struct op *o)
{
	switch (o->kind) {
	case OP_JOIN:
		answer_join(P, o);
		break;
	case OP_LEAVE:
		answer_leave(P, o);
		break;
	case OP_MEMBERS:
	case OP_STATS:
		answer_query(P, o);
		break;
	case OP_KICK:
		return;
	}
	op_free(o);
}

/* Runs what the workers posted, in order, then sends this batch's
 * changes to the other nodes as one delta. */
static void
drain_ops(struct bg_pres *P)
{
	struct op *o;
	unsigned int n = 0;

	/* Cleared first: a push after this posts the kick again. */
	__atomic_store_n(&P->kicked, 0, __ATOMIC_SEQ_CST);
	while ((o = bg_ring_pop(P->ops)) != NULL) {
		run_op(P, o);
		n++;
	}
	if (n > 0) {
		flush_deltas(P);
		gauges(P);
	}
}

static void
run_kick(struct bg_control *ctl, struct bg_control_job *job)
{
	drain_ops(((struct op *)(void *)job)->P);
}

static void
drop_kick(struct bg_control_job *job)
{
	/* The node stops: what is left in ops is freed with the state. */
}

/* Bus thread, every loop turn (at least once a second): heartbeats, and
 * nodes silent for [presence] timeout dropped. */
void
bg_presence_tick(struct bg_server *srv)
{
	struct bg_pres *P = srv->presence;
	uint64_t now = now_ms();
	uint64_t timeout = (uint64_t)bg_server_cfg(srv)->presence_timeout *
			   1000;
	uint64_t period = timeout / 3 < HB_MAX_MS ? timeout / 3 : HB_MAX_MS;
	/* This runs at least once a second: a node silent for a second
	 * less than timeout is dropped within timeout of its last message,
	 * and it has missed two heartbeats at least by then. */
	uint64_t silent = timeout > TICK_MS + 2 * period ?
			  timeout - TICK_MS : 2 * period;

	if (P == NULL)
		return;
	if (P->last_tick_ms != 0 && now - P->last_tick_ms > 2 * TICK_MS) {
		/* This bus was busy (full worker rings, a long batch): what
		 * the others sent meanwhile is still unread, and silence
		 * counts only while this node listens. */
		uint64_t deaf = now - P->last_tick_ms - TICK_MS;
		for (int i = 1; i < BG_MEMBERS_MAX_NODES; i++)
			if (P->peers[i].heard_ms != 0)
				P->peers[i].heard_ms += deaf;
	}
	P->last_tick_ms = now;
	drain_ops(P); /* when a kick could not be posted */
	if (now >= P->next_hb_ms && !P->standalone) {
		P->next_hb_ms = now + period;
		flush_deltas(P);
		send_msg(P, json_pack("{s:s, s:I}", "type", "presence.hb",
				      "seq", (json_int_t)P->seq));
	}
	for (int i = 1; i < BG_MEMBERS_MAX_NODES; i++)
		if (P->peers[i].heard_ms != 0 &&
		    now - P->peers[i].heard_ms > silent)
			drop_peer(P, i, "is silent");
	gauges(P);
}

/* ----------------------------------------------------------- workers */

static struct op *
op_new(struct bg_pres *P, enum op_kind kind, const char *channel)
{
	struct op *o = P ? calloc(1, sizeof(*o)) : NULL;

	if (o == NULL)
		return NULL;
	o->P = P;
	o->kind = kind;
	if ((o->channel = strdup(channel)) == NULL) {
		free(o);
		return NULL;
	}
	return o;
}

/* Queues o for the bus; false when its ring is full. A request that
 * finds the ring empty posts the kick job (once: kicked), which drains
 * the ring on the bus; a kick the control plane cannot take now is
 * made up by the tick. */
static bool
post_op(struct bg_pres *P, struct op *o)
{
	if (!bg_ring_push(P->ops, o))
		return false;
	if (__atomic_exchange_n(&P->kicked, 1, __ATOMIC_SEQ_CST) == 0 &&
	    bg_control_post(P->ctl, &P->kick.job) != BG_OK)
		__atomic_store_n(&P->kicked, 0, __ATOMIC_SEQ_CST);
	return true;
}

/* Posts o from c's worker; false (o freed) when the bus cannot take it.
 * A leave must not be lost: with the ring full it waits for room (the
 * bus drains it within microseconds unless the node is overloaded),
 * giving up only when the node stops. */
static bool
post_from(struct bg_conn *c, struct op *o)
{
	struct bg_pres *P = o->P;
	long waited_ms = 0;

	o->worker = c->w->index;
	snprintf(o->client, sizeof(o->client), "%s", c->id);
	while (!post_op(P, o)) {
		struct timespec ts = { 0, 1000000 };
		if (o->kind != OP_LEAVE || c->w->stopping ||
		    waited_ms >= LEAVE_WAIT_MS) {
			op_free(o);
			return false;
		}
		nanosleep(&ts, NULL);
		waited_ms++;
	}
	return true;
}

static char *
dup_or_null(const char *s, bool *oom)
{
	char *d;

	if (s == NULL)
		return NULL;
	if ((d = strdup(s)) == NULL)
		*oom = true;
	return d;
}

void
bg_presence_subscribe(struct bg_conn *c, const struct bg_request *req,
		      const char *channel)
{
	struct op *o = op_new(c->w->srv->presence, OP_JOIN, channel);
	bool oom = o == NULL;

	if (o != NULL) {
		o->user = dup_or_null(c->ident.user, &oom);
		o->info = dup_or_null(c->ident.info, &oom);
		o->cb = dup_or_null(req ? req->callback_id : NULL, &oom);
		if (oom)
			op_free(o);
	}
	if (!oom && post_from(c, o))
		return;
	/* Not counted anywhere: the local subscription goes too. */
	bg_conn_unsubscribe(c, channel, strlen(channel));
	bg_conn_reply_error(c, req, BG_CODE_UNAVAILABLE, "presence is "
			    "unavailable (the node is busy or stopping)");
}

void
bg_presence_conn_left(struct bg_conn *c, const char *channel)
{
	struct op *o;

	if (!bg_presence_is_channel(bg_server_cfg(c->w->srv), channel))
		return;
	o = op_new(c->w->srv->presence, OP_LEAVE, channel);
	if (o == NULL || !post_from(c, o)) {
		static struct bg_log_throttle throttle =
			BG_LOG_THROTTLE("presence: leaves lost", 5);
		if (o == NULL || !c->w->stopping)
			bg_log_throttled(&throttle, BG_LOG_WARN, "presence: "
					 "client %s left %s, but the bus "
					 "could not be told", c->id, channel);
	}
}

/* The presence / presence_stats events: the caller must be allowed to
 * subscribe to the channel. */
static enum bg_code
on_query_event(const struct bg_hook_args *a, enum op_kind kind)
{
	struct bg_conn *c = a->c;
	const struct bg_request *req = a->req;
	json_t *ch = json_object_get(req->data, "channel");
	const char *name = json_string_value(ch);
	struct op *o;

	if (!json_is_string(ch) ||
	    !bg_proto_channel_valid(name, json_string_length(ch))) {
		bg_conn_reply_error(c, req, BG_CODE_INVALID_CHANNEL,
				    "data.channel must be 1-200 printable "
				    "ASCII bytes without space * # \" \\");
		return GO_ON;
	}
	if (!bg_presence_is_channel(bg_server_cfg(c->w->srv), name)) {
		bg_conn_reply_error(c, req, BG_CODE_BAD_MESSAGE,
				    "not a presence channel");
		return GO_ON;
	}
	if (c->ident.user == NULL ||
	    !bg_auth_channel_allowed(&c->ident, name)) {
		bg_conn_reply_error(c, req, BG_CODE_FORBIDDEN,
				    c->ident.user == NULL ?
				    "presence channel: authenticate first" :
				    "presence channel: not in your token's "
				    "channels");
		return GO_ON;
	}
	if (req->callback_id == NULL)
		return GO_ON; /* the answer is the callback: nothing to do */
	o = op_new(c->w->srv->presence, kind, name);
	if (o == NULL || (o->cb = strdup(req->callback_id)) == NULL) {
		if (o != NULL)
			op_free(o);
		bg_conn_reply_error(c, req, BG_CODE_INTERNAL,
				    "out of memory");
		return GO_ON;
	}
	if (!post_from(c, o))
		bg_conn_reply_error(c, req, BG_CODE_UNAVAILABLE, "presence "
				    "is unavailable (the node is busy or "
				    "stopping)");
	return GO_ON;
}

/* A connection authenticated again (another token, a forwarded auth):
 * its presence memberships follow its new identity. Channels it may no
 * longer use are left; in the others it joins again as its new user
 * (the bus moves it when the user changed, and does nothing when not). */
static enum bg_code
on_authenticate(const struct bg_hook_args *a)
{
	struct bg_conn *c = a->c;
	const struct bg_config *cfg = bg_server_cfg(c->w->srv);

	for (uint32_t i = c->n_subs; i-- > 0;) {
		const char *name = c->subs[i]->chan->name;
		if (!bg_presence_is_channel(cfg, name))
			continue;
		if (c->ident.user == NULL ||
		    !bg_auth_channel_allowed(&c->ident, name))
			bg_conn_unsubscribe(c, name, strlen(name));
		else
			bg_presence_subscribe(c, NULL, name);
	}
	return GO_ON;
}

static enum bg_code
on_presence(const struct bg_hook_args *a)
{
	return on_query_event(a, OP_MEMBERS);
}

static enum bg_code
on_presence_stats(const struct bg_hook_args *a)
{
	return on_query_event(a, OP_STATS);
}

int
bg_presence_register(char *err, size_t errlen)
{
	static const struct bg_handler handlers[] = {
		{ BG_ON_EVENT, "presence", NULL, on_presence },
		{ BG_ON_EVENT, "presence_stats", NULL, on_presence_stats },
		{ BG_ON_AUTHENTICATE, NULL, NULL, on_authenticate },
	};

	for (size_t i = 0; i < BG_ARRAY_LEN(handlers); i++)
		if (bg_handlers_register(&handlers[i], err, errlen) != BG_OK)
			return BG_ERR;
	return BG_OK;
}

/* ------------------------------------------------------- server API */

void
bg_presence_cmd(struct bg_control *ctl, json_t *args, bool stats,
		bg_cmd_done_fn done, void *arg)
{
	struct bg_server *srv = bg_control_server(ctl);
	struct bg_pres *P = srv->presence;
	json_t *ch = json_object_get(args, "channel");
	const char *name = json_string_value(ch);
	json_t *body;

	if (!json_is_string(ch) ||
	    !bg_proto_channel_valid(name, json_string_length(ch))) {
		done(ctl, 400, json_pack("{s:{s:s, s:s}}", "error", "code",
					 "invalid_channel", "message",
					 "channel must be 1-200 printable "
					 "ASCII bytes without space * # \" "
					 "\\"), arg);
		return;
	}
	if (!bg_presence_is_channel(bg_server_cfg(srv), name)) {
		done(ctl, 400, json_pack("{s:{s:s, s:s}}", "error", "code",
					 "bad_message", "message",
					 "not a presence channel"), arg);
		return;
	}
	if (!bg_control_ready(ctl)) {
		/* As every server API call: the cluster is out of reach,
		 * and what this node holds may be stale. */
		done(ctl, 503, json_pack("{s:{s:s, s:s}}", "error", "code",
					 "unavailable", "message",
					 "RabbitMQ is not connected: the "
					 "cluster cannot be reached"), arg);
		return;
	}
	body = P != NULL ? query(P, name, stats) : NULL;
	if (body == NULL) {
		done(ctl, 503, json_pack("{s:{s:s, s:s}}", "error", "code",
					 "unavailable", "message",
					 "out of memory"), arg);
		return;
	}
	done(ctl, 200, body, arg);
}

/* ------------------------------------------------------------- setup */

int
bg_presence_init(struct bg_server *srv)
{
	struct bg_pres *P = calloc(1, sizeof(*P));

	if (P == NULL)
		goto oom;
	P->srv = srv;
	P->ctl = srv->control;
	P->standalone = bg_config_standalone(bg_server_cfg(srv));
	P->table = bg_members_new(srv->node_id, on_change, P);
	P->pending = json_array();
	P->ops = bg_ring_new(OPS_RING, true);
	P->kick.job.run = run_kick;
	P->kick.job.drop = drop_kick;
	P->kick.kind = OP_KICK;
	P->kick.P = P;
	if (P->table == NULL || P->pending == NULL || P->ctl == NULL ||
	    P->ops == NULL ||
	    bg_control_on(P->ctl, "presence.delta", on_delta, P) != BG_OK ||
	    bg_control_on(P->ctl, "presence.hb", on_hb, P) != BG_OK ||
	    bg_control_on(P->ctl, "presence.state", on_state, P) != BG_OK ||
	    bg_control_on(P->ctl, "presence.ask", on_ask, P) != BG_OK ||
	    bg_control_on_node(P->ctl, on_node, P) != BG_OK)
		goto oom;
	srv->presence = P;
	return BG_OK;
oom:
	bg_log_error("presence: cannot start: out of memory");
	if (P != NULL) {
		bg_members_free(P->table);
		json_decref(P->pending);
		bg_ring_free(P->ops);
		free(P);
	}
	return BG_ERR;
}

void
bg_presence_free(struct bg_server *srv)
{
	struct bg_pres *P = srv->presence;

	struct op *o;

	if (P == NULL)
		return;
	/* The workers and the bus are joined: nothing pushes any more. */
	while ((o = bg_ring_pop(P->ops)) != NULL)
		op_free(o);
	bg_ring_free(P->ops);
	bg_members_free(P->table);
	json_decref(P->pending);
	free(P);
	srv->presence = NULL;
}

int
bg_presence_metrics(const struct bg_server *srv, char *buf, size_t size)
{
	const struct bg_pres *P = srv->presence;

	if (P == NULL)
		return 0;
	return snprintf(buf, size,
		"# HELP bagou_presence_entries Presence entries (channel, "
		"user, node) this node holds, for every node.\n"
		"# TYPE bagou_presence_entries gauge\n"
		"bagou_presence_entries %llu\n"
		"# HELP bagou_presence_bytes Bytes of the presence table.\n"
		"# TYPE bagou_presence_bytes gauge\n"
		"bagou_presence_bytes %llu\n"
		"# HELP bagou_presence_joins_total presence_join events made "
		"on this node.\n"
		"# TYPE bagou_presence_joins_total counter\n"
		"bagou_presence_joins_total %llu\n"
		"# HELP bagou_presence_leaves_total presence_leave events "
		"made on this node.\n"
		"# TYPE bagou_presence_leaves_total counter\n"
		"bagou_presence_leaves_total %llu\n"
		"# HELP bagou_presence_nodes_dropped_total Other nodes dropped "
		"(silent for [presence] timeout, or down).\n"
		"# TYPE bagou_presence_nodes_dropped_total counter\n"
		"bagou_presence_nodes_dropped_total %llu\n",
		(unsigned long long)bg_stat_get(&P->n_entries),
		(unsigned long long)bg_stat_get(&P->n_bytes),
		(unsigned long long)bg_stat_get(&P->n_joins),
		(unsigned long long)bg_stat_get(&P->n_leaves),
		(unsigned long long)bg_stat_get(&P->n_dropped));
}
