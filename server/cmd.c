/*
 * cmd.c - the server API's commands (cmd.h), cluster-wide through the
 * control plane (amqp/control.h):
 *
 *   requester (bus thread)            every node, itself included
 *   bg_cmd_run: validate args    -->  "api.<cmd>" handler: a task on each
 *   bg_control_query                  worker (in ring order), then
 *                                     bg_control_answer with the sum
 *   on_gathered: sum the answers <--
 *   done(status, body)
 *
 * The query waits [cluster] query_timeout for the nodes that were live
 * when it started and answers from those that did; "missing" lists the
 * others. GET /api/info and /api/history need no query: heartbeats carry
 * every node's stats, and every node's history store sees every
 * broadcast (cmd_history.c).
 *
 * To add a command: a row in `commands` (validate fills the args every
 * node gets; work runs on each worker; the rest is shared).
 */
#include "server/cmd.h"
#include "server/cmd_history.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amqp/control.h"
#include "common/bg.h"
#include "common/log.h"
#include "common/proto.h"
#include "handlers/forward.h"
#include "handlers/handlers.h"
#include "server/conn.h"
#include "server/http.h"
#include "server/presence.h"
#include "server/server.h"
#include "server/worker.h"

/* The longest close reason: a close frame's payload is at most 125
 * bytes, two of which are the code. */
#define REASON_MAX 123
#define USER_MAX 256

struct cmd;

/* Checks args (borrowed) and builds what every node gets (a new
 * object); NULL with why set for a 400. */
typedef json_t *(*validate_fn)(const json_t *args, const char **code,
			       char *why, size_t len);

/* On one worker: what it did, as JSON (a count, or an object of counts
 * for channels). */
typedef json_t *(*work_fn)(struct bg_worker *w, const json_t *args);

/* A command this node answers alone, from args (borrowed). */
typedef void (*local_fn)(struct bg_control *ctl, json_t *args,
			 bg_cmd_done_fn done, void *arg);

struct cmd {
	const char *name;       /* in the API: /api/<name> */
	const char *type;       /* control message: "api.<name>" */
	const char *counted;    /* the answer's count member, or NULL */
	validate_fn validate;   /* NULL: no query (local) */
	work_fn work;
	local_fn local;         /* without validate: info, history */
};

/* ---------------------------------------------------------- answers */

static json_t *
error_body(const char *code, const char *message)
{
	return json_pack("{s:{s:s,s:s}}", "error", "code", code, "message",
			 message);
}

static void
fail(struct bg_control *ctl, bg_cmd_done_fn done, void *arg,
     unsigned int status, const char *code, const char *message)
{
	done(ctl, status, error_body(code, message), arg);
}

/* ------------------------------------------------------- validation */

/* {"client": ID} or {"user": UID} (a string, or an integer taken as
 * its decimal text) into out. */
static bool
target(const json_t *args, json_t *out, char *why, size_t len)
{
	json_t *client = json_object_get(args, "client");
	json_t *user = json_object_get(args, "user");
	char buf[32];

	if ((client == NULL) == (user == NULL)) {
		snprintf(why, len, "give exactly one of \"client\" (a client "
			 "id) and \"user\" (a user id)");
		return false;
	}
	if (client != NULL) {
		if (!json_is_string(client) ||
		    json_string_length(client) == 0 ||
		    json_string_length(client) > BG_ID_MAX) {
			snprintf(why, len, "\"client\" must be a client id "
				 "(a string of 1-%d bytes)", BG_ID_MAX);
			return false;
		}
		json_object_set(out, "client", client);
		return true;
	}
	if (json_is_integer(user)) {
		snprintf(buf, sizeof(buf), "%lld",
			 (long long)json_integer_value(user));
		json_object_set_new(out, "user", json_string(buf));
		return true;
	}
	if (!json_is_string(user) || json_string_length(user) == 0 ||
	    json_string_length(user) > USER_MAX) {
		snprintf(why, len, "\"user\" must be a user id (a string of "
			 "1-%d bytes, or an integer)", USER_MAX);
		return false;
	}
	json_object_set(out, "user", user);
	return true;
}

static json_t *
validate_disconnect(const json_t *args, const char **code, char *why,
		    size_t len)
{
	json_t *out = json_object();
	json_t *c = json_object_get(args, "code");
	json_t *r = json_object_get(args, "reason");

	*code = "bad_message";
	if (!target(args, out, why, len))
		goto bad;
	if (c != NULL && (!json_is_integer(c) || json_integer_value(c) < 4000 ||
			  json_integer_value(c) > 4999)) {
		snprintf(why, len, "\"code\" must be an integer from 4000 to "
			 "4999");
		goto bad;
	}
	if (r != NULL && (!json_is_string(r) ||
			  json_string_length(r) > REASON_MAX)) {
		snprintf(why, len, "\"reason\" must be a string of at most "
			 "%d bytes", REASON_MAX);
		goto bad;
	}
	json_object_set_new(out, "code", c ? json_copy(c) :
			    json_integer(4000));
	json_object_set_new(out, "reason", r ? json_copy(r) :
			    json_string("disconnected by the server"));
	return out;
bad:
	json_decref(out);
	return NULL;
}

static json_t *
validate_subscription(const json_t *args, const char **code, char *why,
		      size_t len)
{
	json_t *out = json_object();
	json_t *ch = json_object_get(args, "channel");

	*code = "bad_message";
	if (!target(args, out, why, len))
		goto bad;
	if (!json_is_string(ch) ||
	    !bg_proto_channel_valid(json_string_value(ch),
				    json_string_length(ch))) {
		*code = "invalid_channel";
		snprintf(why, len, "\"channel\" must be 1-200 printable ASCII "
			 "bytes without space * # \" \\");
		goto bad;
	}
	json_object_set(out, "channel", ch);
	return out;
bad:
	json_decref(out);
	return NULL;
}

static json_t *
validate_channels(const json_t *args, const char **code, char *why,
		  size_t len)
{
	json_t *p = json_object_get(args, "prefix");

	*code = "bad_message";
	if (p != NULL && (!json_is_string(p) ||
			  json_string_length(p) > BG_CHANNEL_MAX)) {
		snprintf(why, len, "\"prefix\" must be a string of at most "
			 "%d bytes", BG_CHANNEL_MAX);
		return NULL;
	}
	return json_pack("{s:s}", "prefix", p ? json_string_value(p) : "");
}

/* --------------------------------------------------- on each worker */

/* Calls fn on each connection args names ("client" or "user") on w;
 * returns how many. */
static int
each_target(struct bg_worker *w, const json_t *args,
	    void (*fn)(struct bg_conn *c, const json_t *args))
{
	const char *client = json_string_value(json_object_get(args,
							       "client"));
	const char *user = json_string_value(json_object_get(args, "user"));
	struct bg_conn *c, *next;
	int n = 0;

	if (client != NULL) {
		c = bg_worker_conn(w, client);
		if (c == NULL || c->closing)
			return 0;
		fn(c, args);
		return 1;
	}
	if (user == NULL)
		return 0;
	for (c = w->conns; c != NULL; c = next) {
		next = c->next;
		if (c->closing || c->ident.user == NULL ||
		    strcmp(c->ident.user, user) != 0)
			continue;
		fn(c, args);
		n++;
	}
	return n;
}

static void
disconnect_one(struct bg_conn *c, const json_t *args)
{
	bg_log_debug("client %s: disconnected by the server API", c->id);
	bg_conn_close_reason(c, (uint16_t)json_integer_value(
		json_object_get(args, "code")), json_string_value(
		json_object_get(args, "reason")));
}

/* The client's acknowledgement: {"event":"subscribed"|"unsubscribed",
 * "data":{"channel":C}}. */
static void
acknowledge(struct bg_conn *c, const char *event, const char *channel)
{
	json_t *data = json_pack("{s:s}", "channel", channel);

	bg_conn_send_event(c, event, data);
	json_decref(data);
}

/* As the client's own subscribe (handlers/builtin.c), without the
 * private-channel check: the application decides. */
static void
subscribe_one(struct bg_conn *c, const json_t *args)
{
	const char *name = json_string_value(json_object_get(args,
							     "channel"));
	struct bg_hook_args hook = { .c = c, .channel = name };
	size_t len = strlen(name);
	enum bg_code code;
	bool added;

	if (bg_conn_is_subscribed(c, name, len)) {
		acknowledge(c, "subscribed", name);
		return;
	}
	/* A presence member is a user (PROTOCOL.md, presence channels). */
	if (bg_presence_is_channel(bg_server_cfg(c->w->srv), name) &&
	    c->ident.user == NULL) {
		bg_conn_reply_error(c, NULL, BG_CODE_FORBIDDEN, "server-side "
				    "subscribe: a presence channel needs an "
				    "authenticated connection");
		return;
	}
	code = bg_handlers_run(BG_ON_SUBSCRIBE, &hook);
	if (code != BG_CODE_COUNT) {
		bg_conn_reply_error(c, NULL, code, "server-side subscribe "
				    "refused");
		return;
	}
	code = bg_conn_subscribe(c, name, len, &added);
	if (code != BG_CODE_COUNT) {
		bg_conn_reply_error(c, NULL, code, code ==
				    BG_CODE_TOO_MANY_SUBSCRIPTIONS ?
				    "server-side subscribe: too many "
				    "subscriptions on this connection" :
				    "server-side subscribe failed");
		return;
	}
	acknowledge(c, "subscribed", name);
	if (bg_presence_is_channel(bg_server_cfg(c->w->srv), name))
		bg_presence_subscribe(c, NULL, name); /* joins, silently */
	bg_forward_lifecycle(c, BG_FORWARD_SUBSCRIBE, "subscribe", name);
}

static void
unsubscribe_one(struct bg_conn *c, const json_t *args)
{
	const char *name = json_string_value(json_object_get(args,
							     "channel"));
	struct bg_hook_args hook = { .c = c, .channel = name };
	size_t len = strlen(name);

	if (bg_conn_is_subscribed(c, name, len)) {
		bg_conn_unsubscribe(c, name, len);
		bg_handlers_run(BG_ON_UNSUBSCRIBE, &hook);
		bg_forward_lifecycle(c, BG_FORWARD_UNSUBSCRIBE, "unsubscribe",
				     name);
	}
	acknowledge(c, "unsubscribed", name);
}

static json_t *
work_disconnect(struct bg_worker *w, const json_t *args)
{
	return json_integer(each_target(w, args, disconnect_one));
}

static json_t *
work_subscribe(struct bg_worker *w, const json_t *args)
{
	return json_integer(each_target(w, args, subscribe_one));
}

static json_t *
work_unsubscribe(struct bg_worker *w, const json_t *args)
{
	return json_integer(each_target(w, args, unsubscribe_one));
}

static json_t *
work_channels(struct bg_worker *w, const json_t *args)
{
	const char *prefix = json_string_value(json_object_get(args,
							       "prefix"));
	size_t plen = prefix ? strlen(prefix) : 0;
	json_t *out = json_object();

	for (uint32_t i = 0; i < w->chans->n_buckets; i++)
		for (struct bg_chan *ch = w->chans->buckets[i]; ch != NULL;
		     ch = ch->next)
			if (ch->n_subs > 0 && ch->name_len >= plen &&
			    memcmp(ch->name, prefix, plen) == 0)
				json_object_set_new(out, ch->name,
						    json_integer(ch->n_subs));
	return out;
}

static void run_info(struct bg_control *ctl, json_t *args,
		     bg_cmd_done_fn done, void *arg);

static const struct cmd commands[] = {
	{ "disconnect", "api.disconnect", "disconnected",
	  validate_disconnect, work_disconnect, NULL },
	{ "subscribe", "api.subscribe", "subscribed",
	  validate_subscription, work_subscribe, NULL },
	{ "unsubscribe", "api.unsubscribe", "unsubscribed",
	  validate_subscription, work_unsubscribe, NULL },
	{ "channels", "api.channels", NULL, validate_channels,
	  work_channels, NULL },
	{ "info", NULL, NULL, NULL, NULL, run_info },
	{ "history", NULL, NULL, NULL, NULL, bg_cmd_history },
};

static const struct cmd *
find_cmd(const char *name)
{
	for (size_t i = 0; i < BG_ARRAY_LEN(commands); i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

/* Adds b's counts into a (objects of counts) or returns the sum of two
 * counts; a and b borrowed, result new. */
static json_t *
add_counts(json_t *a, const json_t *b)
{
	const char *k;
	json_t *v;

	if (json_is_integer(b))
		return json_integer((a ? json_integer_value(a) : 0) +
				    json_integer_value(b));
	if (!json_is_object(b))
		return a ? json_incref(a) : NULL;
	a = a ? json_incref(a) : json_object();
	json_object_foreach((json_t *)b, k, v) {
		json_t *old = json_object_get(a, k);
		if (json_is_integer(v))
			json_object_set_new(a, k, json_integer(
				(old ? json_integer_value(old) : 0) +
				json_integer_value(v)));
	}
	return a;
}

/* ------------------------------------------------ a node's own part */

struct node_job {
	const struct cmd *cmd;
	char from[BG_NODE_ID_MAX + 1];
	uint64_t query;
	json_t *args;
	json_t **results;           /* [n_workers]: each worker its own */
	int n;
};

static void
node_work(struct bg_worker *w, void *arg)
{
	struct node_job *j = arg;

	j->results[w->index] = j->cmd->work(w, j->args);
}

static void
node_after(struct bg_control *ctl, void *arg)
{
	struct node_job *j = arg;
	json_t *sum = NULL, *t;

	for (int i = 0; i < j->n; i++) {
		if (j->results[i] == NULL)
			continue;
		t = add_counts(sum, j->results[i]);
		json_decref(sum);
		sum = t;
	}
	if (sum == NULL)
		sum = j->cmd->counted ? json_integer(0) : json_object();
	bg_control_answer_to(ctl, j->from, j->query, sum);
}

static void
node_job_free(void *arg)
{
	struct node_job *j = arg;

	for (int i = 0; i < j->n; i++)
		json_decref(j->results[i]);
	free(j->results);
	json_decref(j->args);
	free(j);
}

/* "api.<cmd>" from any node (this one too): the args are checked again
 * (a control message is not trusted to be well formed), then run on
 * every worker. */
static void
on_query(struct bg_control *ctl, const char *node, json_t *msg, void *arg)
{
	const struct cmd *cmd = arg;
	json_t *qid = json_object_get(msg, "query");
	struct node_job *j;
	const char *code;
	char why[200];

	if (!json_is_integer(qid))
		return;
	j = calloc(1, sizeof(*j));
	if (j == NULL)
		return;
	j->cmd = cmd;
	snprintf(j->from, sizeof(j->from), "%s", node);
	j->query = (uint64_t)json_integer_value(qid);
	j->args = cmd->validate(json_object_get(msg, "args"), &code, why,
				sizeof(why));
	j->n = bg_control_server(ctl)->n_workers;
	j->results = calloc((size_t)j->n, sizeof(*j->results));
	if (j->args == NULL || j->results == NULL) {
		node_job_free(j);
		return;
	}
	if (bg_control_workers(ctl, node_work, node_after, node_job_free,
			       j) != BG_OK)
		node_job_free(j);
}

/* ------------------------------------------------------ requester */

struct gather {
	const struct cmd *cmd;
	json_t *args;
	bg_cmd_done_fn done;
	void *arg;
};

static void
on_gathered(struct bg_control *ctl, json_t *answers, json_t *missing,
	    void *arg)
{
	struct gather *g = arg;
	const struct cmd *cmd = g->cmd;
	json_t *sum = NULL, *t, *v, *body;
	const char *node;
	char msg[300];

	if (ctl == NULL) {
		fail(NULL, g->done, g->arg, 503, "unavailable", "the node "
		     "stopped before the nodes answered");
		json_decref(g->args);
		free(g);
		return;
	}

	json_object_foreach(answers, node, v) {
		t = add_counts(sum, v);
		json_decref(sum);
		sum = t;
	}
	if (cmd->counted == NULL) {
		body = json_pack("{s:o,s:O}", "channels",
				 sum ? sum : json_object(), "missing",
				 missing);
		g->done(ctl, 200, body, g->arg);
	} else if (sum != NULL && json_integer_value(sum) > 0) {
		body = json_pack("{s:o,s:O}", cmd->counted, sum, "missing",
				 missing);
		g->done(ctl, 200, body, g->arg);
	} else {
		json_decref(sum);
		if (json_array_size(missing) > 0) {
			snprintf(msg, sizeof(msg), "not found on the nodes "
				 "that answered; %zu did not answer within "
				 "[cluster] query_timeout",
				 json_array_size(missing));
			body = error_body("unavailable", msg);
			json_object_set(json_object_get(body, "error"),
					"missing", missing);
			g->done(ctl, 503, body, g->arg);
		} else if (json_object_get(g->args, "client") != NULL) {
			fail(ctl, g->done, g->arg, 404, "not_found",
			     "no such client connected");
		} else {
			fail(ctl, g->done, g->arg, 404, "not_found",
			     "no connection of this user");
		}
	}
	json_decref(g->args);
	free(g);
}

static void
run_info(struct bg_control *ctl, json_t *args, bg_cmd_done_fn done,
	 void *arg)
{
	const struct bg_nodes *t = bg_control_nodes(ctl);
	json_t *nodes = json_array();

	for (size_t i = 0; i < bg_nodes_count(t); i++) {
		const struct bg_node *n = bg_nodes_at(t, i);
		json_t *o = json_is_object(n->stats) ? json_copy(n->stats) :
			    json_object();
		json_object_set_new(o, "node", json_string(n->id));
		json_array_append_new(nodes, o);
	}
	done(ctl, 200, json_pack("{s:o}", "nodes", nodes), arg);
}

void
bg_cmd_run(struct bg_control *ctl, const char *command, json_t *args,
	   bg_cmd_done_fn done, void *arg)
{
	const struct cmd *cmd = find_cmd(command);
	struct gather *g;
	const char *code;
	char why[200];
	json_t *norm;

	/* Presence is replicated to every node: this one answers alone,
	 * from its own table, RabbitMQ up or not (server/presence.c). */
	if (json_is_object(args) && (strcmp(command, "presence") == 0 ||
				     strcmp(command, "presence_stats") == 0)) {
		bg_presence_cmd(ctl, args, command[8] == '_', done, arg);
		return;
	}
	if (cmd == NULL) {
		fail(ctl, done, arg, 404, "not_found", "no such command");
		return;
	}
	if (!json_is_object(args)) {
		fail(ctl, done, arg, 400, "bad_message", "the arguments must "
		     "be a JSON object");
		return;
	}
	if (!bg_control_ready(ctl)) {
		fail(ctl, done, arg, 503, "unavailable", "RabbitMQ is not "
		     "connected: the cluster cannot be reached");
		return;
	}
	if (cmd->validate == NULL) {
		cmd->local(ctl, args, done, arg);
		return;
	}
	norm = cmd->validate(args, &code, why, sizeof(why));
	if (norm == NULL) {
		fail(ctl, done, arg, 400, code, why);
		return;
	}
	g = calloc(1, sizeof(*g));
	if (g == NULL) {
		json_decref(norm);
		fail(ctl, done, arg, 503, "unavailable", "out of memory");
		return;
	}
	*g = (struct gather){ cmd, json_incref(norm), done, arg };
	if (bg_control_query(ctl, json_pack("{s:s,s:o}", "type", cmd->type,
					    "args", norm),
			     bg_server_cfg(bg_control_server(ctl))->
			     cluster_query_timeout *
			     1000, on_gathered, g) != BG_OK) {
		json_decref(g->args);
		free(g);
		fail(ctl, done, arg, 503, "unavailable", "out of memory");
	}
}

/* -------------------------------------------------- the API queue */

struct amqp_req {
	char *reply_to;
	char *corr;
};

static void
amqp_done(struct bg_control *ctl, unsigned int status, json_t *body,
	  void *arg)
{
	struct amqp_req *r = arg;
	char *text;

	if (body == NULL)
		body = error_body("internal", "out of memory");
	json_object_set_new(body, "status", json_integer(status));
	text = json_dumps(body, JSON_COMPACT);
	json_decref(body);
	if (ctl != NULL && r->reply_to != NULL && text != NULL &&
	    bg_control_reply(ctl, r->reply_to, r->corr, text,
			     strlen(text)) != BG_OK)
		bg_log_warn("API queue: answer to %s lost (RabbitMQ link "
			    "down)", r->reply_to);
	free(text);
	free(r->reply_to);
	free(r->corr);
	free(r);
}

/* {"command": C, "key": K, ...args}: the same command as POST/GET
 * /api/C with the other members as its arguments. */
static void
on_request(struct bg_control *ctl, const char *body, size_t len,
	   const char *reply_to, const char *correlation_id, void *arg)
{
	struct amqp_req *r = calloc(1, sizeof(*r));
	const char *key = bg_server_cfg(bg_control_server(ctl))->api_key;
	json_error_t jerr;
	json_t *req, *command, *given;
	char auth[BG_CONFIG_STR + 16];
	unsigned int st;

	if (r == NULL)
		return;
	r->reply_to = reply_to ? strdup(reply_to) : NULL;
	r->corr = correlation_id ? strdup(correlation_id) : NULL;
	req = json_loadb(body, len, 0, &jerr);
	if (!json_is_object(req)) {
		json_decref(req);
		fail(ctl, amqp_done, r, 400, "bad_message", "the request "
		     "must be a JSON object {\"command\": NAME, ...}");
		return;
	}
	given = json_object_get(req, "key");
	if (key[0] != '\0') {
		snprintf(auth, sizeof(auth), "Bearer %s", json_is_string(given)
			 ? json_string_value(given) : "");
		st = given == NULL ? 401 : bg_http_check_key(key, auth);
		if (st != 0) {
			json_decref(req);
			fail(ctl, amqp_done, r, st, st == 401 ?
			     "unauthorized" : "forbidden", st == 401 ?
			     "this request needs \"key\": the API key" :
			     "wrong API key");
			return;
		}
	}
	command = json_object_get(req, "command");
	if (!json_is_string(command)) {
		json_decref(req);
		fail(ctl, amqp_done, r, 400, "bad_message", "\"command\" must "
		     "name a command (disconnect, subscribe, unsubscribe, "
		     "channels, info, history)");
		return;
	}
	command = json_incref(command);
	json_object_del(req, "command");
	json_object_del(req, "key");
	bg_cmd_run(ctl, json_string_value(command), req, amqp_done, r);
	json_decref(command);
	json_decref(req);
}

int
bg_cmd_init(struct bg_control *ctl)
{
	for (size_t i = 0; i < BG_ARRAY_LEN(commands); i++)
		if (commands[i].type != NULL &&
		    bg_control_on(ctl, commands[i].type, on_query,
				  (void *)&commands[i]) != BG_OK)
			return BG_ERR;
	bg_control_on_request(ctl, on_request, NULL);
	return BG_OK;
}
