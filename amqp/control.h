/*
 * control.h - the cluster control plane (PROTOCOL.md "Cluster control
 * plane"): typed JSON messages between the nodes of one RabbitMQ, node
 * heartbeats and the live-node table, scatter-gather queries, and tasks
 * run on every worker in order with broadcasts.
 *
 * Wire: every node publishes to and consumes from the fanout exchange
 * "<[amqp] exchange>.control" (its own exclusive queue
 * "<exchange>.control.<node>", auto-ack: control messages are not held
 * behind broadcasts, and one lost with a link is not resent). A body is a JSON object {"type": T, "node": SENDER, ...};
 * every node, the sender included, receives every message. Standalone
 * ([amqp] url = none), what a node sends comes back to itself only, on
 * the next turn of the bus loop: single-node behaviour is the same.
 *
 * Threads. Everything here runs on the BUS THREAD, the owner of the
 * control state (node table, handlers, pending queries), except:
 * - bg_control_new, bg_control_on, bg_control_on_node,
 *   bg_control_on_request: main thread, before the bus starts
 *   (registrations are then immutable);
 * - bg_control_free: main thread, after the bus and workers stopped;
 * - bg_control_post: any thread;
 * - a bg_control_work_fn: the worker thread it runs on.
 * Handlers, node callbacks, query callbacks, job runs and task "done"
 * callbacks all run on the bus thread, one at a time, never inside one
 * another: a handler may call any bus-thread function here. Nothing in
 * this module takes a lock.
 *
 * Ownership: json_t arguments are borrowed unless a comment says the
 * function steals them. Node ids are NUL-terminated strings of at most
 * BG_NODE_ID_MAX bytes, valid for the duration of the call.
 *
 * Reserved types (handled here, not dispatched): "heartbeat", "bye",
 * "answer". Types registered by modules are namespaced "<module>.<name>"
 * (e.g. "api.disconnect", "presence.delta").
 */
#ifndef BG_CONTROL_H
#define BG_CONTROL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "amqp/nodes.h"

struct bg_server;
struct bg_worker;
struct bg_control;

/* Handles one control message of a registered type. msg: the whole
 * body (borrowed, valid during the call); node: its "node" (sender;
 * may be this node). Bus thread. */
typedef void (*bg_control_fn)(struct bg_control *ctl, const char *node,
			      json_t *msg, void *arg);

/* A node came up (first heard, or heard again after it was declared
 * dead: up = true) or went down (silent for [cluster] timeout, or said
 * "bye": up = false). Never called for this node itself, which is always
 * live. Bus thread. */
typedef void (*bg_control_node_fn)(struct bg_control *ctl, const char *node,
				   bool up, void *arg);

/* A query (bg_control_query) is over: answers is an object {NODE:
 * DATA} of the nodes that answered in time, missing an array of the
 * node ids that were live when it was sent and did not (both borrowed,
 * valid during the call). Called exactly once. Bus thread; or, when the
 * node stopped before the query was over, from bg_control_free with ctl
 * NULL (and every node missing): free what arg holds, send nothing. */
typedef void (*bg_control_done_fn)(struct bg_control *ctl, json_t *answers,
				   json_t *missing, void *arg);

/* Runs on each worker thread in turn (bg_control_workers), in order with
 * the broadcasts that worker's ring carries. arg is shared by every
 * worker: each writes only its own part (e.g. a slot per w->index). */
typedef void (*bg_control_work_fn)(struct bg_worker *w, void *arg);

/* Every worker ran its part; bus thread. */
typedef void (*bg_control_after_fn)(struct bg_control *ctl, void *arg);

/* A job for the bus thread (bg_control_post), embedded by its creator
 * as the first member of its own struct. run: on the bus thread, once;
 * it owns the job from then on. drop: instead of run when the node
 * stops first (frees it). */
struct bg_control_job {
	void (*run)(struct bg_control *ctl, struct bg_control_job *job);
	void (*drop)(struct bg_control_job *job);
};

/* ------------------------------------------------------ main thread */

struct bg_bus_sink;

/* The control plane of the node sink describes (copied; it reads
 * [cluster] and [amqp] exchange through it); srv is kept, opaque, for
 * bg_control_server. NULL when out of memory. Before the bus is made
 * (bg_bus_new is given it). */
struct bg_control *bg_control_new(const struct bg_bus_sink *sink,
				  struct bg_server *srv);

/* Drops pending jobs and queries (without their callbacks) and frees.
 * NULL is fine. After the bus and the workers are joined. */
void bg_control_free(struct bg_control *ctl);

/* Registers fn for messages of type (copied). One handler per type: a
 * second registration of a type replaces the first. BG_OK or BG_ERR
 * (out of memory). Before the bus starts. */
int bg_control_on(struct bg_control *ctl, const char *type, bg_control_fn fn,
		  void *arg);

/* Adds a node up/down callback (several may be registered). BG_OK or
 * BG_ERR. Before the bus starts. */
int bg_control_on_node(struct bg_control *ctl, bg_control_node_fn fn,
		       void *arg);

/* A request from the shared API queue "<[amqp] exchange>.api" (one node
 * gets each): body (borrowed; not NUL-terminated), and the delivery's
 * reply_to and correlation_id properties (NULL when absent). Bus
 * thread. */
typedef void (*bg_control_request_fn)(struct bg_control *ctl,
				      const char *body, size_t len,
				      const char *reply_to,
				      const char *correlation_id, void *arg);

/* Sets the one request handler. Before the bus starts. */
void bg_control_on_request(struct bg_control *ctl, bg_control_request_fn fn,
			   void *arg);

/* ------------------------------------------------------- any thread */

/* Queues job for the bus thread, which runs it within a loop turn, in
 * push order per producer. BG_OK, or BG_AGAIN when the job queue is full
 * or the node is stopping (the caller still owns job). Never blocks. */
int bg_control_post(struct bg_control *ctl, struct bg_control_job *job);

/* Live nodes (this one included) and API commands run, for /metrics.
 * Any thread. */
uint64_t bg_control_live(const struct bg_control *ctl);
uint64_t bg_control_queries(const struct bg_control *ctl);

/* This node's id (srv->node_id), and its server. Any thread. */
const char *bg_control_self(const struct bg_control *ctl);
struct bg_server *bg_control_server(const struct bg_control *ctl);

/* ------------------------------------------------------- bus thread */

/* Sends msg (stolen; a JSON object, "type" set by the caller) to every
 * node, this one included; "node" is set here. BG_OK, or BG_AGAIN when
 * RabbitMQ is down (msg is dropped), BG_ERR when it cannot be encoded. */
int bg_control_send(struct bg_control *ctl, json_t *msg);

/* True while messages can be sent: standalone, or the link is up. */
bool bg_control_ready(const struct bg_control *ctl);

/*
 * Scatter-gather: sends msg (stolen; its "type" a registered query type)
 * with "query": ID added, and calls done once every node live now has
 * answered (bg_control_answer), or after timeout_ms with what came.
 * done is called later, never from inside this call; also at once-ish
 * (next loop turn) with every node missing when the link is down. BG_OK
 * or BG_ERR (out of memory; done is not called).
 */
int bg_control_query(struct bg_control *ctl, json_t *msg, int timeout_ms,
		     bg_control_done_fn done, void *arg);

/* The answer of this node to a query message (the msg a handler got;
 * borrowed) with data (stolen; any JSON value). BG_OK or BG_AGAIN. A
 * handler may answer later (after worker tasks), keeping what it needs
 * of msg: see bg_control_answer_to. */
int bg_control_answer(struct bg_control *ctl, const json_t *query,
		      json_t *data);

/* The same with the query's sender and id taken apart. */
int bg_control_answer_to(struct bg_control *ctl, const char *node,
			 uint64_t query_id, json_t *data);

/*
 * Runs work(w, arg) on every worker of this node, each in order with the
 * broadcasts before and after it in its ring (behind deliveries held by
 * backpressure too), then after(ctl, arg) on the bus thread once all ran
 * (after may be NULL; it is not called when the node stops first). Then
 * free_arg(arg), when not NULL, in every case, on whichever thread drops
 * the task last. BG_OK or BG_ERR (out of memory: nothing runs, arg is
 * the caller's).
 */
int bg_control_workers(struct bg_control *ctl, bg_control_work_fn work,
		       bg_control_after_fn after, void (*free_arg)(void *),
		       void *arg);

/* Answers an API-queue request: body to the default exchange with
 * routing key reply_to and correlation_id (may be NULL). BG_OK, BG_AGAIN
 * (link down) or BG_ERR (standalone, or it cannot be sent). */
int bg_control_reply(struct bg_control *ctl, const char *reply_to,
		     const char *correlation_id, const char *body,
		     size_t len);

/* The live-node table, this node included (its stats fresh). */
const struct bg_nodes *bg_control_nodes(struct bg_control *ctl);

/* This node's stats as sent in heartbeats: a new object {"connections",
 * "subscriptions", "uptime", "version"}. */
json_t *bg_control_stats(struct bg_control *ctl);

/* ------------------------------------------- bus.c's side (bus thread) */

struct bg_bus;

/* The bus that carries ctl's messages (bg_bus_new, main thread, before
 * any thread starts). */
void bg_control_use_bus(struct bg_control *ctl, struct bg_bus *bus);

/* The bus is ready to carry messages (called once, before its loop). */
void bg_control_attach(struct bg_control *ctl, struct bg_bus *bus);

/* A body from the control exchange. */
void bg_control_deliver(struct bg_control *ctl, const void *body,
			size_t len);

/* A body from the API queue (see bg_control_request_fn). */
void bg_control_request(struct bg_control *ctl, const void *body, size_t len,
			const char *reply_to, const char *correlation_id);

/* The eventfd of the job queue: the bus polls it. */
int bg_control_fd(const struct bg_control *ctl);

/* Runs queued jobs, loopback messages, heartbeats, expiries and query
 * deadlines due by now; returns the ms until the next timed event (at
 * most 1000). Every bus-loop turn. */
int bg_control_service(struct bg_control *ctl);

/* The link came up (send a heartbeat at once: others learn of us) or
 * the node is stopping ("bye" while the link is still up; pending
 * queries end with what came, jobs are refused from now on). */
void bg_control_link_up(struct bg_control *ctl);
void bg_control_bye(struct bg_control *ctl);

#endif
