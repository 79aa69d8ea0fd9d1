/*
 * control.c - the cluster control plane (control.h). Bus thread, except
 * the entry points control.h marks otherwise.
 *
 * Messages in (from RabbitMQ, or looped back standalone) are copied into
 * a queue and handled in bg_control_service, outside the link's read
 * loop: a handler may then publish (which can take the link down)
 * safely. Heartbeats carry the node's stats; the live-node table is
 * refreshed by every message a node sends and expired by silence.
 */
#include "amqp/control.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "amqp/bus.h"
#include "common/bg.h"
#include "common/log.h"
#include "common/msg.h"
#include "common/ring.h"

#define JOB_RING 4096
/* Messages handled in one service call before the loop polls again. */
#define MAX_PER_SERVICE 4096

struct handler {
	char *type;
	bg_control_fn fn;
	void *arg;
};

struct node_cb {
	bg_control_node_fn fn;
	void *arg;
};

struct inmsg {
	struct inmsg *next;
	char *reply_to;             /* API requests: or NULL */
	char *corr;                 /* API requests: or NULL */
	bool request;               /* from the API queue */
	size_t len;
	char body[];
};

struct query {
	struct query *next;
	uint64_t id;
	uint64_t deadline_ms;
	json_t *expect;             /* array of node ids */
	json_t *answers;            /* object */
	bg_control_done_fn done;
	void *arg;
};

struct task {
	struct bg_control_job job;  /* first: posted when all workers ran */
	struct bg_control *ctl;
	struct bg_msg *msg;         /* the job's reference, while posted */
	bg_control_work_fn work;
	bg_control_after_fn after;
	void (*free_arg)(void *);
	void *arg;
	unsigned int remaining;     /* atomic: workers still to run */
};

struct bg_control {
	struct bg_server *srv;      /* immutable: opaque, for callers */
	struct bg_bus_sink sink;    /* immutable: the server's side */
	struct bg_ring *jobs;       /* any thread -> bus (MPSC) */
	unsigned int stopping;      /* atomic */

	/* Immutable once the bus runs. */
	struct handler *handlers;
	size_t n_handlers;
	struct node_cb *node_cbs;
	size_t n_node_cbs;
	bg_control_request_fn request_fn;
	void *request_arg;

	pthread_t owner;            /* the bus thread, once attached */
	bool attached;              /* bus thread writes, then only reads:
	                               owner is set (bg_assert_owner) */

	/* Immutable once the bus is made (bg_control_use_bus). */
	struct bg_bus *bus;

	/* Bus thread only. */
	struct bg_nodes *nodes;
	struct inmsg *in_head, **in_tail;
	struct query *queries;
	uint64_t next_query;
	uint64_t next_beat_ms;
	uint64_t n_live;            /* bus writes, any reads: table size */
	uint64_t n_queries;         /* bus writes, any reads */
};

/* Bus-thread functions: debug builds check the caller once the bus
 * thread has attached (before, only the main thread runs). */
#define OWNED(ctl) do { \
	if ((ctl)->attached) \
		bg_assert_owner((ctl)->owner); \
} while (0)

static uint64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

struct bg_control *
bg_control_new(const struct bg_bus_sink *sink, struct bg_server *srv)
{
	struct bg_control *ctl = calloc(1, sizeof(*ctl));

	if (ctl == NULL)
		return NULL;
	ctl->srv = srv;
	ctl->sink = *sink;
	ctl->jobs = bg_ring_new(JOB_RING, true);
	ctl->nodes = bg_nodes_new();
	ctl->in_tail = &ctl->in_head;
	if (ctl->jobs == NULL || ctl->nodes == NULL) {
		bg_control_free(ctl);
		return NULL;
	}
	return ctl;
}

static void
query_free(struct query *q)
{
	json_decref(q->expect);
	json_decref(q->answers);
	free(q);
}

void
bg_control_free(struct bg_control *ctl)
{
	struct bg_control_job *job;
	struct inmsg *m;
	struct query *q;

	if (ctl == NULL)
		return;
	while (ctl->jobs != NULL && (job = bg_ring_pop(ctl->jobs)) != NULL)
		job->drop(job);
	while ((m = ctl->in_head) != NULL) {
		ctl->in_head = m->next;
		free(m->reply_to);
		free(m->corr);
		free(m);
	}
	while ((q = ctl->queries) != NULL) {
		/* The node stopped first: its asker frees what it holds. */
		ctl->queries = q->next;
		q->done(NULL, q->answers, q->expect, q->arg);
		query_free(q);
	}
	for (size_t i = 0; i < ctl->n_handlers; i++)
		free(ctl->handlers[i].type);
	free(ctl->handlers);
	free(ctl->node_cbs);
	bg_nodes_free(ctl->nodes);
	bg_ring_free(ctl->jobs);
	free(ctl);
}

int
bg_control_on(struct bg_control *ctl, const char *type, bg_control_fn fn,
	      void *arg)
{
	struct handler *h;

	for (size_t i = 0; i < ctl->n_handlers; i++) {
		if (strcmp(ctl->handlers[i].type, type) == 0) {
			ctl->handlers[i].fn = fn;
			ctl->handlers[i].arg = arg;
			return BG_OK;
		}
	}
	h = realloc(ctl->handlers, (ctl->n_handlers + 1) * sizeof(*h));
	if (h == NULL)
		return BG_ERR;
	ctl->handlers = h;
	h = &h[ctl->n_handlers];
	if ((h->type = strdup(type)) == NULL)
		return BG_ERR;
	h->fn = fn;
	h->arg = arg;
	ctl->n_handlers++;
	return BG_OK;
}

void
bg_control_on_request(struct bg_control *ctl, bg_control_request_fn fn,
		      void *arg)
{
	ctl->request_fn = fn;
	ctl->request_arg = arg;
}

int
bg_control_on_node(struct bg_control *ctl, bg_control_node_fn fn, void *arg)
{
	struct node_cb *v = realloc(ctl->node_cbs, (ctl->n_node_cbs + 1) *
				    sizeof(*v));

	if (v == NULL)
		return BG_ERR;
	ctl->node_cbs = v;
	v[ctl->n_node_cbs++] = (struct node_cb){ fn, arg };
	return BG_OK;
}

int
bg_control_post(struct bg_control *ctl, struct bg_control_job *job)
{
	if (__atomic_load_n(&ctl->stopping, __ATOMIC_RELAXED))
		return BG_AGAIN;
	return bg_ring_push(ctl->jobs, job) ? BG_OK : BG_AGAIN;
}

const char *
bg_control_self(const struct bg_control *ctl)
{
	return ctl->sink.node_id;
}

struct bg_server *
bg_control_server(const struct bg_control *ctl)
{
	return ctl->srv;
}

int
bg_control_fd(const struct bg_control *ctl)
{
	return bg_ring_fd(ctl->jobs);
}

/* ------------------------------------------------------------ sending */

static bool
standalone(const struct bg_control *ctl)
{
	return bg_config_standalone(ctl->sink.cfg(ctl->sink.arg));
}

/* Queues a body to be handled in bg_control_service. */
static struct inmsg *
enqueue(struct bg_control *ctl, const void *body, size_t len)
{
	struct inmsg *m = calloc(1, sizeof(*m) + len + 1);

	if (m == NULL) {
		bg_log_error("control: message dropped: out of memory");
		return NULL;
	}
	m->len = len;
	memcpy(m->body, body, len);
	m->body[len] = '\0';
	*ctl->in_tail = m;
	ctl->in_tail = &m->next;
	return m;
}

void
bg_control_request(struct bg_control *ctl, const void *body, size_t len,
		   const char *reply_to, const char *correlation_id)
{
	struct inmsg *m = enqueue(ctl, body, len);

	OWNED(ctl);
	if (m == NULL)
		return;
	m->request = true;
	m->reply_to = reply_to ? strdup(reply_to) : NULL;
	m->corr = correlation_id ? strdup(correlation_id) : NULL;
}

int
bg_control_reply(struct bg_control *ctl, const char *reply_to,
		 const char *correlation_id, const char *body, size_t len)
{
	OWNED(ctl);
	if (standalone(ctl))
		return BG_ERR;
	return bg_bus_send_raw(ctl->bus, "", reply_to, body, len,
			       correlation_id);
}

bool
bg_control_ready(const struct bg_control *ctl)
{
	return standalone(ctl) || bg_bus_connected(ctl->bus);
}

int
bg_control_send(struct bg_control *ctl, json_t *msg)
{
	char *body;
	int rc;

	OWNED(ctl);
	if (!json_is_object(msg) ||
	    json_object_set_new(msg, "node",
				json_string(ctl->sink.node_id)) != 0) {
		json_decref(msg);
		return BG_ERR;
	}
	body = json_dumps(msg, JSON_COMPACT);
	json_decref(msg);
	if (body == NULL)
		return BG_ERR;
	if (standalone(ctl)) {
		enqueue(ctl, body, strlen(body));
		rc = BG_OK;
	} else {
		rc = bg_bus_send_control(ctl->bus, body, strlen(body));
	}
	free(body);
	return rc;
}

/* ------------------------------------------------------------- nodes */

json_t *
bg_control_stats(struct bg_control *ctl)
{
	const struct bg_bus_sink *sk = &ctl->sink;
	uint64_t conns = 0, subs = 0;
	struct timespec ts;
	uint64_t now;

	for (int i = 0; i < sk->n_workers; i++) {
		conns += sk->stat(sk->arg, i, BG_SINK_CONNECTIONS);
		subs += sk->stat(sk->arg, i, BG_SINK_SUBSCRIPTIONS);
	}
	clock_gettime(CLOCK_REALTIME, &ts);
	now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	return json_pack("{s:I,s:I,s:I,s:s}", "connections",
			 (json_int_t)conns, "subscriptions", (json_int_t)subs,
			 "uptime", (json_int_t)(now > sk->started_ms ?
				(now - sk->started_ms) / 1000 : 0),
			 "version", BG_VERSION);
}

uint64_t
bg_control_live(const struct bg_control *ctl)
{
	return bg_stat_get(&ctl->n_live);
}

uint64_t
bg_control_queries(const struct bg_control *ctl)
{
	return bg_stat_get(&ctl->n_queries);
}

static void
node_event(struct bg_control *ctl, const char *node, bool up)
{
	__atomic_store_n(&ctl->n_live, bg_nodes_count(ctl->nodes),
			 __ATOMIC_RELAXED);
	bg_log_info("cluster: node %s %s (%zu live)", node, up ? "up" :
		    "down", bg_nodes_count(ctl->nodes));
	for (size_t i = 0; i < ctl->n_node_cbs; i++)
		ctl->node_cbs[i].fn(ctl, node, up, ctl->node_cbs[i].arg);
}

static void query_check(struct bg_control *ctl, struct query *q);

static void
on_expired(const char *node, void *arg)
{
	struct bg_control *ctl = arg;
	struct query *q, *next;

	node_event(ctl, node, false);
	for (q = ctl->queries; q != NULL; q = next) {
		next = q->next;
		query_check(ctl, q);
	}
}

/* Every message refreshes its sender. */
static void
heard(struct bg_control *ctl, const char *node, json_t *stats)
{
	if (bg_nodes_heard(ctl->nodes, node, stats, now_ms()) &&
	    strcmp(node, ctl->sink.node_id) != 0) {
		node_event(ctl, node, true);
		/* It learns of us now, not a heartbeat later. */
		ctl->next_beat_ms = 0;
	}
}

const struct bg_nodes *
bg_control_nodes(struct bg_control *ctl)
{
	json_t *stats = bg_control_stats(ctl);

	OWNED(ctl);
	bg_nodes_heard(ctl->nodes, ctl->sink.node_id, stats, now_ms());
	json_decref(stats);
	return ctl->nodes;
}

static void
heartbeat(struct bg_control *ctl)
{
	json_t *stats = bg_control_stats(ctl);

	heard(ctl, ctl->sink.node_id, stats);
	if (standalone(ctl)) {
		json_decref(stats);
		return;
	}
	bg_control_send(ctl, json_pack("{s:s,s:o}", "type", "heartbeat",
				       "stats", stats));
}

void
bg_control_use_bus(struct bg_control *ctl, struct bg_bus *bus)
{
	ctl->bus = bus;
}

void
bg_control_attach(struct bg_control *ctl, struct bg_bus *bus)
{
	ctl->owner = pthread_self();
	ctl->attached = true;
	ctl->bus = bus;
	heartbeat(ctl);
	bg_stat_add(&ctl->n_live, 1);
	ctl->next_beat_ms = now_ms() + (uint64_t)ctl->sink.cfg(
			    ctl->sink.arg)->cluster_heartbeat * 1000;
}

void
bg_control_link_up(struct bg_control *ctl)
{
	OWNED(ctl);
	/* The others learn of us now, not a heartbeat later. */
	heartbeat(ctl);
}


/* ----------------------------------------------------------- queries */

static void query_finish(struct bg_control *ctl, struct query *q);

static void
query_finish(struct bg_control *ctl, struct query *q)
{
	struct query **p = &ctl->queries;
	json_t *missing = json_array();
	size_t i;
	json_t *v;

	while (*p != q)
		p = &(*p)->next;
	*p = q->next;
	json_array_foreach(q->expect, i, v)
		if (json_object_get(q->answers, json_string_value(v)) == NULL)
			json_array_append(missing, v);
	q->done(ctl, q->answers, missing, q->arg);
	json_decref(missing);
	query_free(q);
}

/* Over when every node asked has answered or is gone. */
static void
query_check(struct bg_control *ctl, struct query *q)
{
	size_t i;
	json_t *v;

	json_array_foreach(q->expect, i, v) {
		const char *node = json_string_value(v);
		if (json_object_get(q->answers, node) == NULL &&
		    bg_nodes_live(ctl->nodes, node))
			return;
	}
	query_finish(ctl, q);
}

int
bg_control_query(struct bg_control *ctl, json_t *msg, int timeout_ms,
		 bg_control_done_fn done, void *arg)
{
	struct query *q = calloc(1, sizeof(*q));
	const struct bg_nodes *nodes = bg_control_nodes(ctl);

	OWNED(ctl);
	if (q == NULL || !json_is_object(msg)) {
		free(q);
		json_decref(msg);
		return BG_ERR;
	}
	q->id = ++ctl->next_query;
	bg_stat_add(&ctl->n_queries, 1);
	q->expect = json_array();
	q->answers = json_object();
	q->done = done;
	q->arg = arg;
	q->deadline_ms = now_ms() + (uint64_t)(timeout_ms > 0 ?
					       timeout_ms : 0);
	for (size_t i = 0; i < bg_nodes_count(nodes); i++)
		json_array_append_new(q->expect, json_string(
			bg_nodes_at(nodes, i)->id));
	q->next = ctl->queries;
	ctl->queries = q;
	json_object_set_new(msg, "query", json_integer((json_int_t)q->id));
	if (bg_control_send(ctl, msg) != BG_OK)
		q->deadline_ms = 0; /* over at the next service */
	return BG_OK;
}

int
bg_control_answer_to(struct bg_control *ctl, const char *node,
		     uint64_t query_id, json_t *data)
{
	OWNED(ctl);
	return bg_control_send(ctl, json_pack("{s:s,s:s,s:I,s:o}", "type",
					      "answer", "to", node, "query",
					      (json_int_t)query_id, "data",
					      data ? data : json_null()));
}

int
bg_control_answer(struct bg_control *ctl, const json_t *query, json_t *data)
{
	json_t *node = json_object_get(query, "node");
	json_t *id = json_object_get(query, "query");

	OWNED(ctl);
	if (!json_is_string(node) || !json_is_integer(id)) {
		json_decref(data);
		return BG_ERR;
	}
	return bg_control_answer_to(ctl, json_string_value(node),
				    (uint64_t)json_integer_value(id), data);
}

static void
on_answer(struct bg_control *ctl, const char *node, json_t *msg)
{
	json_t *to = json_object_get(msg, "to");
	json_t *id = json_object_get(msg, "query");
	json_t *data = json_object_get(msg, "data");
	struct query *q;

	if (!json_is_string(to) || !json_is_integer(id) ||
	    strcmp(json_string_value(to), ctl->sink.node_id) != 0)
		return;
	for (q = ctl->queries; q != NULL; q = q->next)
		if (q->id == (uint64_t)json_integer_value(id))
			break;
	if (q == NULL)
		return; /* late: the query is over */
	json_object_set(q->answers, node, data ? data : json_null());
	query_check(ctl, q);
}

void
bg_control_bye(struct bg_control *ctl)
{
	OWNED(ctl);
	__atomic_store_n(&ctl->stopping, 1, __ATOMIC_RELAXED);
	if (!standalone(ctl) && bg_control_ready(ctl))
		bg_control_send(ctl, json_pack("{s:s}", "type", "bye"));
	/* Their callers get what came: nothing waits past the bus. */
	while (ctl->queries != NULL)
		query_finish(ctl, ctl->queries);
}

/* ------------------------------------------------------------- tasks */

static void
task_job_run(struct bg_control *ctl, struct bg_control_job *job)
{
	struct task *t = (struct task *)job;
	struct bg_msg *m = t->msg;

	t->after(ctl, t->arg);
	bg_msg_unref(m);
}

static void
task_job_drop(struct bg_control_job *job)
{
	bg_msg_unref(((struct task *)job)->msg);
}

/* On each worker, in ring order. The last one posts the job. */
static void
task_run(struct bg_worker *w, struct bg_msg *m)
{
	struct task *t = m->task;

	t->work(w, t->arg);
	if (__atomic_sub_fetch(&t->remaining, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	bg_msg_ref(m);
	if (t->after == NULL || bg_control_post(t->ctl, &t->job) != BG_OK)
		bg_msg_unref(m);
}

static void
task_free(void *p)
{
	struct task *t = p;

	if (t->free_arg != NULL)
		t->free_arg(t->arg);
	free(t);
}

int
bg_control_workers(struct bg_control *ctl, bg_control_work_fn work,
		   bg_control_after_fn after, void (*free_arg)(void *),
		   void *arg)
{
	struct task *t = calloc(1, sizeof(*t));
	struct bg_msg *m = t ? bg_msg_new(BG_MSG_TASK, 0) : NULL;

	OWNED(ctl);
	if (m == NULL) {
		free(t);
		return BG_ERR;
	}
	t->job.run = task_job_run;
	t->job.drop = task_job_drop;
	t->ctl = ctl;
	t->msg = m;
	t->work = work;
	t->after = after;
	t->free_arg = free_arg;
	t->arg = arg;
	t->remaining = (unsigned int)ctl->sink.n_workers;
	m->task = t;
	m->task_fn = task_run;
	m->task_free = task_free;
	if (t->remaining == 0) {
		/* No worker (a test's node): straight to "after". */
		if (after == NULL || bg_control_post(ctl, &t->job) != BG_OK)
			bg_msg_unref(m);
		return BG_OK;
	}
	bg_bus_to_workers(ctl->bus, m);
	return BG_OK;
}

/* ---------------------------------------------------------- dispatch */

void
bg_control_deliver(struct bg_control *ctl, const void *body, size_t len)
{
	OWNED(ctl);
	enqueue(ctl, body, len);
}

static void
dispatch(struct bg_control *ctl, const char *body, size_t len)
{
	json_error_t jerr;
	json_t *msg = json_loadb(body, len, 0, &jerr);
	json_t *type = json_object_get(msg, "type");
	json_t *node = json_object_get(msg, "node");
	const char *t, *n;

	if (!json_is_object(msg) || !json_is_string(type) ||
	    !json_is_string(node) ||
	    json_string_length(node) > BG_NODE_ID_MAX ||
	    json_string_length(node) == 0) {
		static struct bg_log_throttle throttle =
			BG_LOG_THROTTLE("control: bad messages", 5);
		bg_log_throttled(&throttle, BG_LOG_WARN, "control: message "
				 "of %zu bytes ignored: not {\"type\":T,"
				 "\"node\":N,...}", len);
		json_decref(msg);
		return;
	}
	t = json_string_value(type);
	n = json_string_value(node);
	if (strcmp(t, "bye") == 0) {
		if (strcmp(n, ctl->sink.node_id) != 0 &&
		    bg_nodes_remove(ctl->nodes, n))
			on_expired(n, ctl);
		json_decref(msg);
		return;
	}
	heard(ctl, n, strcmp(t, "heartbeat") == 0 ?
	      json_object_get(msg, "stats") : NULL);
	if (strcmp(t, "answer") == 0) {
		on_answer(ctl, n, msg);
	} else if (strcmp(t, "heartbeat") != 0) {
		for (size_t i = 0; i < ctl->n_handlers; i++) {
			if (strcmp(ctl->handlers[i].type, t) == 0) {
				ctl->handlers[i].fn(ctl, n, msg,
						    ctl->handlers[i].arg);
				break;
			}
		}
	}
	json_decref(msg);
}

int
bg_control_service(struct bg_control *ctl)
{
	const struct bg_config *cfg = ctl->sink.cfg(ctl->sink.arg);
	struct bg_control_job *job;
	struct query *q, *next;
	struct inmsg *m;
	uint64_t now, wake;
	int n = 0;

	OWNED(ctl);
	bg_ring_clear(ctl->jobs);
	do {
		while ((job = bg_ring_pop(ctl->jobs)) != NULL)
			job->run(ctl, job);
	} while (!bg_ring_sleep(ctl->jobs));
	while ((m = ctl->in_head) != NULL && n++ < MAX_PER_SERVICE) {
		ctl->in_head = m->next;
		if (ctl->in_head == NULL)
			ctl->in_tail = &ctl->in_head;
		if (!m->request)
			dispatch(ctl, m->body, m->len);
		else if (ctl->request_fn != NULL)
			ctl->request_fn(ctl, m->body, m->len, m->reply_to,
					m->corr, ctl->request_arg);
		free(m->reply_to);
		free(m->corr);
		free(m);
	}
	now = now_ms();
	if (now >= ctl->next_beat_ms) {
		heartbeat(ctl);
		ctl->next_beat_ms = now + (uint64_t)cfg->cluster_heartbeat *
				    1000;
	}
	bg_nodes_expire(ctl->nodes, now, (uint64_t)cfg->cluster_timeout *
			1000, ctl->sink.node_id, on_expired, ctl);
	for (q = ctl->queries; q != NULL; q = next) {
		next = q->next;
		if (q->deadline_ms <= now)
			query_finish(ctl, q);
	}
	/* Something came in meanwhile: straight back. */
	if (ctl->in_head != NULL || bg_ring_count(ctl->jobs) > 0)
		return 0;
	wake = ctl->next_beat_ms;
	for (q = ctl->queries; q != NULL; q = q->next)
		if (q->deadline_ms < wake)
			wake = q->deadline_ms;
	if (wake <= now)
		return 0;
	return wake - now > 1000 ? 1000 : (int)(wake - now);
}
