/*
 * api.c - the API listener: a small HTTP/1.1 server over libevent
 * bufferevents on its own thread (see api.h, and docs/DESIGN.md for why
 * not evhttp: it can neither answer from the head without reading the
 * body nor bound a request's total time).
 *
 * Each connection reads one request at a time from its input buffer, so
 * pipelined requests are answered in order, and keeps the connection
 * alive unless the client or an error says otherwise. Per connection:
 *
 *   IDLE  -- first byte -->  HEAD  -- blank line -->  BODY (POST only)
 *     ^                        |                        |
 *     +--- answered, kept -----+------------------------+
 *   any answer that closes --> LINGER (flush, half-close, drain, free)
 *
 * One timer per connection: BG_API_IDLE_TIMEOUT while IDLE; from a
 * request's first byte, [http] body_timeout for the whole request (head
 * and body: 408 after it, however slowly the bytes come); a short linger
 * while closing. Everything is decided from the head (route, method,
 * Bearer key, Content-Length) before a body byte is buffered. Output is
 * bounded: a client that pipelines without reading stops being read.
 */
#include "server/api.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "amqp/bus.h"
#include "amqp/control.h"
#include "common/bg.h"
#include "common/httpreq.h"
#include "common/log.h"
#include "common/ring.h"
#include "server/cmd.h"
#include "server/http.h"
#include "server/server.h"

#define JSON_TYPE "application/json"
#define OUT_HIGH (1024 * 1024)   /* stop reading above this much output */
/* A broadcast body over this flushes the turn's batch first (its parse
 * takes a while; api_main). */
#define BATCH_BODY_MAX (64 * 1024)
#define LINGER_SECS 2
#define REPLY_HEAD_MAX 512       /* a longer answer head is allocated */
#define PAUSE_MS 100             /* accept paused after EMFILE */

#define ANSWER_RING 4096       /* bus -> API: answers of commands */
#define WAIT_SLACK_SECS 3       /* past [cluster] query_timeout: 503 */
/* History may wait 3 s for the stream, then read it back for 5 s. */
#define HISTORY_WAIT_SECS 10

enum route { R_BROADCAST, R_METRICS, R_HEALTH, R_LIVE, R_CMD };
enum state { S_IDLE, S_HEAD, S_BODY, S_WAIT, S_LINGER };

/* The API listener's endpoints. R_CMD rows are the server API of
 * PROTOCOL.md §11: a POST's JSON body, or a GET's query parameters (as
 * strings), are the arguments of the command (server/cmd.c) it names. */
struct route_def {
	const char *path;
	enum route r;
	bool post;                /* POST only; else GET and HEAD */
	const char *command;      /* R_CMD */
};

static const struct route_def routes[] = {
	{ "/broadcast", R_BROADCAST, true, NULL },
	{ "/metrics", R_METRICS, false, NULL },
	{ "/health", R_HEALTH, false, NULL },
	{ "/health/live", R_LIVE, false, NULL },
	{ "/api/disconnect", R_CMD, true, "disconnect" },
	{ "/api/subscribe", R_CMD, true, "subscribe" },
	{ "/api/unsubscribe", R_CMD, true, "unsubscribe" },
	{ "/api/channels", R_CMD, false, "channels" },
	{ "/api/info", R_CMD, false, "info" },
	{ "/api/history", R_CMD, false, "history" },
	{ "/api/presence", R_CMD, false, "presence" },
	{ "/api/presence_stats", R_CMD, false, "presence_stats" },
};

/* One command on its way: API thread -> bus (bg_control_post), run
 * there, and back through the answer ring. */
struct api_job {
	struct bg_control_job job;  /* first */
	struct bg_api *api;
	uint64_t serial;            /* the waiting connection's */
	const char *command;        /* static, from routes[] */
	json_t *args;
	unsigned int status;        /* bus thread sets: the answer */
	char *body;
	size_t len;
};

struct api_conn {
	struct bg_api *api;
	struct bufferevent *bev;
	struct event *timer;
	struct api_conn *prev, *next;
	enum state state;
	bool keep_alive;          /* of the request being served */
	bool head_only;           /* HEAD: no body in the answer */
	bool http10;              /* an HTTP/1.0 request: keep-alive is
	                             said in the answer */
	bool paused;              /* reading stopped: output over OUT_HIGH */
	bool eof;                 /* the client closed its side */
	uint64_t body_len;        /* S_BODY: bytes still expected in all */
	const struct route_def *route; /* S_BODY, S_WAIT: the request's */
	uint64_t serial;          /* S_WAIT: the api_job awaited */
	char peer[64];            /* for logs only; decides nothing */
	/* [log] access: the request being answered. */
	const char *method;       /* static text */
	char path[128];
	uint64_t start_us;        /* bg_mono_us when its head was in */
};

struct bg_api {
	struct bg_server *srv;    /* immutable */
	int fd;                   /* immutable; the listener owns it */
	int stop_efd;             /* immutable */
	pthread_t thread;         /* main */
	bool started;             /* main */
	struct bg_stats stats;    /* API thread writes, any reads */
	uint64_t n_conns;         /* API thread writes, any reads */
	uint64_t conns_total;     /* API thread writes, any reads */

	/* API thread only. */
	struct event_base *base;
	struct evconnlistener *listener;
	struct event *stop_ev, *resume_ev, *tick_ev, *answer_ev;
	struct api_conn *conns;
	time_t last_warn;
	uint64_t next_serial;

	struct bg_ring *answers;  /* bus -> API (SPSC): done api_jobs */
};

static bool
may_warn(time_t *last)
{
	time_t now = time(NULL);

	if (now == *last)
		return false;
	*last = now;
	return true;
}

/* ------------------------------------------------------------ replies */

static const char *
reason_phrase(unsigned int status)
{
	switch (status) {
	case 200: return "OK";
	case 202: return "Accepted";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 411: return "Length Required";
	case 413: return "Content Too Large";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 503: return "Service Unavailable";
	default: return "Status";
	}
}

static void arm(struct api_conn *c, int secs);
static void conn_free(struct api_conn *c);

/* Closing: what is queued goes out, then the write side is shut and what
 * the client still sends is read and dropped for a moment, so a body we
 * did not read does not turn our answer into a reset. False when c was
 * freed already. */
static bool
linger(struct api_conn *c)
{
	c->state = S_LINGER;
	c->keep_alive = false;
	if (c->paused) {
		c->paused = false;
		bufferevent_enable(c->bev, EV_READ);
	}
	arm(c, LINGER_SECS);
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
		if (c->eof) {
			conn_free(c);
			return false;
		}
		shutdown(bufferevent_getfd(c->bev), SHUT_WR);
	}
	return true;
}

/*
 * Writes head and body to c's socket at once when nothing is queued
 * before them, and queues what the socket did not take. An answer that
 * goes out whole (nearly all: a keep-alive publisher's 202) then costs one
 * send, instead of arming the write event, a loop turn, a writev and
 * disarming it (two epoll_ctl). A failed send queues everything: the
 * bufferevent's own write meets the error and ends c as before.
 */
static void
send_now(struct api_conn *c, const char *head, size_t hlen,
	 const char *body, size_t len)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	struct iovec iov[2] = {
		{ .iov_base = (void *)head, .iov_len = hlen },
		{ .iov_base = (void *)body, .iov_len = len },
	};
	struct msghdr msg = { .msg_iov = iov, .msg_iovlen = len > 0 ? 2 : 1 };
	ssize_t n = -1;

	if (evbuffer_get_length(out) == 0)
		n = sendmsg(bufferevent_getfd(c->bev), &msg,
			    MSG_NOSIGNAL | MSG_DONTWAIT);
	if (n < 0)
		n = 0;
	if ((size_t)n < hlen) {
		evbuffer_add(out, head + n, hlen - (size_t)n);
		n = 0;
	} else {
		n -= (ssize_t)hlen;
	}
	if ((size_t)n < len)
		evbuffer_add(out, body + n, len - (size_t)n);
}

/* An answer's head into buf (size bytes); its length as snprintf's. */
static int
format_head(char *buf, size_t size, const struct api_conn *c,
	    unsigned int status, const char *ctype, size_t len,
	    const char *extra, bool close)
{
	return snprintf(buf, size, "HTTP/1.1 %u %s\r\nContent-Type: %s\r\n"
			"Content-Length: %zu\r\nCache-Control: no-store\r\n"
			"%s%s\r\n", status, reason_phrase(status), ctype, len,
			extra ? extra : "", close ? "Connection: close\r\n" :
			c->http10 ? "Connection: keep-alive\r\n" : "");
}

/*
 * Queues one answer. extra: more header lines, each ending in CRLF, or
 * NULL. close: the connection ends after it (else it follows the
 * request's keep-alive). May free c (returns false then).
 */
static bool
reply(struct api_conn *c, unsigned int status, const char *ctype,
      const char *body, size_t len, const char *extra, bool close)
{
	char head[REPLY_HEAD_MAX], *big = NULL;
	int hlen;

	bg_stat_add(&c->api->stats.http_requests, 1);
	if (bg_server_cfg(c->api->srv)->log_access)
		bg_http_access_log("api", c->peer, c->method ? c->method :
				   "-", c->path, status,
				   c->head_only ? 0 : len, c->start_us);
	close = close || !c->keep_alive;
	hlen = format_head(head, sizeof(head), c, status, ctype, len, extra,
			   close);
	if (hlen >= (int)sizeof(head) && (big = malloc((size_t)hlen + 1))
	    != NULL)
		format_head(big, (size_t)hlen + 1, c, status, ctype, len,
			    extra, close);
	if (hlen < 0 || (hlen >= (int)sizeof(head) && big == NULL)) {
		bg_log_error("api: %s: could not format an answer's head",
			     c->peer);
		conn_free(c);
		return false;
	}
	send_now(c, big ? big : head, (size_t)hlen, body,
		 c->head_only ? 0 : len);
	free(big);
	if (close)
		return linger(c);
	c->state = S_IDLE;
	arm(c, BG_API_IDLE_TIMEOUT);
	return true;
}

static bool
reply_error(struct api_conn *c, unsigned int status, const char *code,
	    const char *message, const char *extra, bool close)
{
	char body[512];
	size_t n = bg_http_error_body(body, sizeof(body), code, message);

	return reply(c, status, JSON_TYPE, body, n, extra, close);
}

/* ------------------------------------------------------------ routes */

static const struct route_def *
find_route(const char *path)
{
	for (size_t i = 0; i < BG_ARRAY_LEN(routes); i++)
		if (strcmp(path, routes[i].path) == 0)
			return &routes[i];
	return NULL;
}

/* ------------------------------------------------ server API commands */

static void
job_free(struct api_job *j)
{
	json_decref(j->args);
	free(j->body);
	free(j);
}

static void
job_drop(struct bg_control_job *job)
{
	job_free((struct api_job *)job);
}

/* Bus thread: the command is over; back to the API thread. (Main thread
 * with ctl NULL: the node stopped first.) */
static void
job_done(struct bg_control *ctl, unsigned int status, json_t *body,
	 void *arg)
{
	struct api_job *j = arg;

	if (ctl == NULL) {
		/* Stopped first: no thread left to answer on. */
		json_decref(body);
		job_free(j);
		return;
	}
	j->status = status;
	j->body = body ? json_dumps(body, JSON_COMPACT) : NULL;
	j->len = j->body ? strlen(j->body) : 0;
	json_decref(body);
	/* One job per waiting connection: the ring has room for more than
	 * BG_API_MAX_CONNS. Full anyway: the connection times out. */
	if (!bg_ring_push(j->api->answers, j))
		job_free(j);
}

/* Bus thread. */
static void
job_run(struct bg_control *ctl, struct bg_control_job *job)
{
	struct api_job *j = (struct api_job *)job;

	bg_cmd_run(ctl, j->command, j->args, job_done, j);
}

/* Hands the command of c's request to the bus; args stolen. The answer
 * comes back through on_answers. False when c was freed. */
static bool
submit(struct api_conn *c, json_t *args)
{
	struct bg_api *a = c->api;
	struct api_job *j = calloc(1, sizeof(*j));

	if (j == NULL) {
		json_decref(args);
		return reply_error(c, 503, "unavailable", "out of memory",
				   "Retry-After: 1\r\n", false);
	}
	j->job.run = job_run;
	j->job.drop = job_drop;
	j->api = a;
	j->serial = ++a->next_serial;
	j->command = c->route->command;
	j->args = args;
	/* Not j's after the post: the bus may have answered (and freed
	 * it) already. */
	c->serial = j->serial;
	if (bg_control_post(a->srv->control, &j->job) != BG_OK) {
		job_free(j);
		return reply_error(c, 503, "unavailable", "the node is busy or "
				   "stopping", "Retry-After: 1\r\n", false);
	}
	c->state = S_WAIT;
	arm(c, strcmp(c->route->command, "history") == 0 ? HISTORY_WAIT_SECS :
	    bg_server_cfg(a->srv)->cluster_query_timeout + WAIT_SLACK_SECS);
	return true;
}

static void process(struct api_conn *c);

/* API thread: answers of the bus, to connections still waiting. */
static void
on_answers(evutil_socket_t fd, short what, void *arg)
{
	struct bg_api *a = arg;
	struct api_job *j;
	struct api_conn *c;

	bg_ring_clear(a->answers);
	do {
		while ((j = bg_ring_pop(a->answers)) != NULL) {
			for (c = a->conns; c != NULL; c = c->next)
				if (c->state == S_WAIT &&
				    c->serial == j->serial)
					break;
			if (c != NULL && reply(c, j->status, JSON_TYPE,
					       j->body ? j->body : "{}",
					       j->body ? j->len : 2,
					       j->status == 503 ?
					       "Retry-After: 1\r\n" : NULL,
					       false))
				process(c); /* pipelined requests */
			job_free(j);
		}
	} while (!bg_ring_sleep(a->answers));
}

static int
hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* Decodes one form-urlencoded piece (len bytes) into out (NUL-ended);
 * false on a bad escape, a NUL byte or when it does not fit. */
static bool
url_decode(const char *s, size_t len, char *out, size_t size)
{
	size_t n = 0;

	for (size_t i = 0; i < len; i++) {
		char ch = s[i];
		if (ch == '+') {
			ch = ' ';
		} else if (ch == '%') {
			int hi, lo;
			if (i + 2 >= len)
				return false;
			hi = hexval(s[i + 1]);
			lo = hexval(s[i + 2]);
			if (hi < 0 || lo < 0)
				return false;
			ch = (char)(hi << 4 | lo);
			i += 2;
		}
		if (ch == '\0' || n + 1 >= size)
			return false;
		out[n++] = ch;
	}
	out[n] = '\0';
	return true;
}

/* A GET's query string as {NAME: VALUE} (strings; the last of a name
 * wins); NULL when malformed. */
static json_t *
query_args(const char *q)
{
	json_t *args = json_object();
	char name[256], value[1024];

	while (q != NULL && *q != '\0') {
		const char *end = strchr(q, '&');
		size_t len = end ? (size_t)(end - q) : strlen(q);
		const char *eq = memchr(q, '=', len);
		size_t nlen = eq ? (size_t)(eq - q) : len;

		if (len > 0 &&
		    (!url_decode(q, nlen, name, sizeof(name)) ||
		     !url_decode(eq ? eq + 1 : q + len, eq ? len - nlen - 1
				 : 0, value, sizeof(value)) ||
		     json_object_set_new(args, name,
					 json_string(value)) != 0)) {
			json_decref(args);
			return NULL;
		}
		q = end ? end + 1 : NULL;
	}
	return args;
}

/* A command's POSTed body, parsed (args stolen; jerr: why not): a JSON
 * object. False when c was freed. */
static bool
serve_cmd_body(struct api_conn *c, json_t *args, const json_error_t *jerr)
{
	char msg[300];

	if (!json_is_object(args)) {
		json_decref(args);
		snprintf(msg, sizeof(msg), "the body must be a JSON object%s%s",
			 args == NULL ? ": " : "", args == NULL ? jerr->text :
			 "");
		return reply_error(c, 400, "bad_message", msg, NULL, false);
	}
	return submit(c, args);
}

static bool
serve_get(struct api_conn *c, enum route r, bool close)
{
	char body[384];
	unsigned int status;
	size_t n;
	char *text;
	bool alive;

	if (r == R_METRICS) {
		text = bg_http_metrics(c->api->srv, &n);
		if (text == NULL)
			return reply_error(c, 500, "internal", "out of memory",
					   NULL, true);
		alive = reply(c, 200, BG_HTTP_METRICS_TYPE, text, n, NULL,
			      close);
		free(text);
		return alive;
	}
	n = bg_http_health(c->api->srv, r == R_LIVE, body, sizeof(body),
			   &status);
	return reply(c, status, JSON_TYPE, body, n, status == 503 ?
		     "Retry-After: 1\r\n" : NULL, close);
}

/* 0 when the request may go on; else it was answered. */
static unsigned int
check_key(struct api_conn *c, const struct bg_httpreq *req)
{
	struct bg_api *a = c->api;
	unsigned int st = bg_http_check_key(bg_server_cfg(a->srv)->api_key,
					    req->authorization);

	if (st == 0)
		return 0;
	bg_stat_add(&a->stats.http_auth_failures, 1);
	static struct bg_log_throttle throttle =
		BG_LOG_THROTTLE("API: refused keys (401/403)", 5);
	bg_log_throttled(&throttle, BG_LOG_WARN, "API: %u for %s from %s: %s",
			 st, req->path, c->peer, st == 401 ? "no Bearer key" :
			 "wrong API key");
	return st;
}

static bool
serve_broadcast(struct api_conn *c, const char *body, size_t len)
{
	char out[2048];
	size_t n = 0;
	unsigned int st = bg_http_broadcast(c->api->srv, &c->api->stats,
					    body, len, out, sizeof(out), &n);

	return reply(c, st, JSON_TYPE, out, n, st == 503 ?
		     "Retry-After: 1\r\n" : NULL, false);
}

/* A whole head is in: decide everything from it. False when c is gone. */
static bool
on_head(struct api_conn *c, char *head, size_t len)
{
	const struct bg_config *cfg = bg_server_cfg(c->api->srv);
	struct bg_httpreq req;
	char err[160];
	const struct route_def *def;
	enum route r;
	bool body_pending, is_get;
	json_t *args;
	unsigned int st;

	static const char *const methods[] = {
		[BG_HTTPREQ_GET] = "GET", [BG_HTTPREQ_HEAD] = "HEAD",
		[BG_HTTPREQ_POST] = "POST", [BG_HTTPREQ_OTHER] = "OTHER",
	};

	c->start_us = bg_mono_us();
	c->method = NULL;
	c->path[0] = '\0';
	if (bg_httpreq_parse(head, len, &req, err, sizeof(err)) != BG_OK) {
		c->keep_alive = false;
		c->head_only = false;
		return reply_error(c, 400, "bad_message", err, NULL, true);
	}
	c->method = methods[req.method];
	snprintf(c->path, sizeof(c->path), "%s", req.path);
	c->keep_alive = req.keep_alive;
	c->http10 = req.minor == 0;
	c->head_only = req.method == BG_HTTPREQ_HEAD;
	/* A body we will not read ends the connection after the answer. */
	body_pending = req.has_te || req.length > 0;
	if (req.has_te)
		return reply_error(c, 411, "bad_message", "send the body with "
				   "a Content-Length; Transfer-Encoding is "
				   "not supported", NULL, true);
	def = find_route(req.path);
	if (def == NULL)
		return reply_error(c, 404, "not_found", "no such endpoint",
				   NULL, body_pending);
	r = def->r;
	c->route = def;
	/* Only broadcasts batch their wake-up (api_main): before anything
	 * else, the turn's broadcasts go. */
	if (r != R_BROADCAST)
		bg_bus_batch_flush();
	is_get = req.method == BG_HTTPREQ_GET ||
		 req.method == BG_HTTPREQ_HEAD;
	if (def->post && req.method != BG_HTTPREQ_POST)
		return reply_error(c, 405, "bad_message", "method not "
				   "allowed", "Allow: POST\r\n",
				   body_pending);
	if (!def->post && !is_get)
		return reply_error(c, 405, "bad_message", "method not "
				   "allowed", "Allow: GET, HEAD\r\n",
				   body_pending);
	/* Liveness and readiness probes need no key. */
	if (cfg->api_key[0] != '\0' && r != R_HEALTH && r != R_LIVE &&
	    (st = check_key(c, &req)) != 0) {
		if (st == 401)
			return reply_error(c, 401, "unauthorized", "this "
					   "endpoint needs Authorization: "
					   "Bearer <api_key>",
					   "WWW-Authenticate: Bearer\r\n",
					   body_pending);
		return reply_error(c, 403, "forbidden", "wrong API key", NULL,
				   body_pending);
	}
	if (r == R_CMD && !def->post) {
		if (body_pending)
			return reply_error(c, 400, "bad_message", "a GET has "
					   "no body", NULL, true);
		args = query_args(req.query);
		if (args == NULL)
			return reply_error(c, 400, "bad_message", "malformed "
					   "query string", NULL, false);
		return submit(c, args);
	}
	if (!def->post)
		return serve_get(c, r, body_pending);
	if (!req.has_length)
		return reply_error(c, 411, "bad_message", "Content-Length is "
				   "required", NULL, true);
	if (req.length > cfg->max_message_size)
		return reply_error(c, 413, "bad_message", "the body is larger "
				   "than max_message_size", NULL, true);
	if (req.length == 0 && r == R_CMD) {
		json_error_t jerr;
		return serve_cmd_body(c, json_loadb("", 0, 0, &jerr), &jerr);
	}
	if (req.length == 0)
		return serve_broadcast(c, "", 0);
	c->state = S_BODY;
	c->body_len = req.length;
	if (req.expect_continue &&
	    evbuffer_get_length(bufferevent_get_input(c->bev)) == 0)
		evbuffer_add_printf(bufferevent_get_output(c->bev),
				    "HTTP/1.1 100 Continue\r\n\r\n");
	return true;
}

/* Serves every whole request in the input, in order. */
static void
process(struct api_conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	struct evbuffer *out = bufferevent_get_output(c->bev);
	char head[BG_HTTPREQ_HEAD_MAX + 1];

	for (;;) {
		size_t avail = evbuffer_get_length(in);
		struct evbuffer_ptr end;
		unsigned char *p;

		if (c->state == S_LINGER) {
			evbuffer_drain(in, avail);
			return;
		}
		if (c->state == S_WAIT)
			return; /* on_answers carries on */
		if (evbuffer_get_length(out) > OUT_HIGH) {
			/* Resumed from on_write once it is all sent. */
			c->paused = true;
			bufferevent_disable(c->bev, EV_READ);
			return;
		}
		if (c->state == S_IDLE) {
			/* RFC 9112 §2.2: empty lines before a request. */
			while (avail > 0 && (p = evbuffer_pullup(in, 1)) != NULL
			       && (*p == '\r' || *p == '\n')) {
				evbuffer_drain(in, 1);
				avail--;
			}
			if (avail == 0)
				return;
			c->state = S_HEAD;
			arm(c, bg_server_cfg(c->api->srv)->body_timeout);
		}
		if (c->state == S_HEAD) {
			end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
			if (end.pos < 0 || end.pos + 4 > BG_HTTPREQ_HEAD_MAX) {
				if (end.pos < 0 &&
				    avail <= BG_HTTPREQ_HEAD_MAX)
					return;
				c->keep_alive = false;
				c->head_only = false;
				if (!reply_error(c, 431, "bad_message", "the "
						 "request head is over 16 KiB",
						 NULL, true))
					return;
				continue;
			}
			evbuffer_remove(in, head, (size_t)end.pos + 4);
			head[end.pos + 4] = '\0';
			if (!on_head(c, head, (size_t)end.pos + 4))
				return;
			continue;
		}
		/* S_BODY */
		if (avail < c->body_len)
			return;
		/* What this turn queued must not wait for slow work: the
		 * workers' own publishes wait on the same wake-up. */
		if (c->body_len > BATCH_BODY_MAX)
			bg_bus_batch_flush();
		p = evbuffer_pullup(in, (ev_ssize_t)c->body_len);
		if (p == NULL) {
			if (!reply_error(c, 500, "internal", "out of memory",
					 NULL, true))
				return;
			continue;
		}
		/* Drained first: a command's answer may come (and
		 * process() run again) before this returns. */
		if (c->route->r == R_CMD) {
			json_error_t jerr;
			json_t *args = json_loadb((const char *)p, c->body_len,
						  0, &jerr);
			evbuffer_drain(in, c->body_len);
			if (!serve_cmd_body(c, args, &jerr))
				return;
			continue;
		}
		if (!serve_broadcast(c, (const char *)p, c->body_len))
			return;
		evbuffer_drain(in, c->body_len);
	}
}

/* ---------------------------------------------------------- callbacks */

static void
on_read(struct bufferevent *bev, void *arg)
{
	process(arg);
}

static void
on_write(struct bufferevent *bev, void *arg)
{
	struct api_conn *c = arg;

	/* Called once the output is empty (write low-water mark 0). */
	if (c->state == S_LINGER) {
		if (c->eof) {
			conn_free(c);
			return;
		}
		shutdown(bufferevent_getfd(bev), SHUT_WR);
		return;
	}
	if (c->paused) {
		c->paused = false;
		bufferevent_enable(bev, EV_READ);
		process(c);
	}
}

static void
on_event(struct bufferevent *bev, short what, void *arg)
{
	struct api_conn *c = arg;

	if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR)) {
		/* Half-closed: answer what was sent, then go. */
		c->eof = true;
		if (c->state == S_WAIT) {
			/* The answer is on its way: reply() lingers. */
			c->keep_alive = false;
			return;
		}
		if (c->state == S_LINGER ||
		    evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
			conn_free(c);
			return;
		}
		linger(c);
		return;
	}
	conn_free(c);
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct api_conn *c = arg;

	switch (c->state) {
	case S_IDLE:
	case S_LINGER:
		conn_free(c);
		return;
	case S_WAIT:
		reply_error(c, 503, "unavailable", "the cluster did not "
			    "answer in time", "Retry-After: 1\r\n", true);
		return;
	case S_HEAD:
	case S_BODY:
		c->keep_alive = false;
		if (c->state == S_HEAD)
			c->head_only = false;
		reply_error(c, 408, "timeout", "the request did not arrive "
			    "within [http] body_timeout", NULL, true);
		return;
	}
}

static void
arm(struct api_conn *c, int secs)
{
	struct timeval tv = { secs, 0 };

	evtimer_add(c->timer, &tv);
}

static void
conn_free(struct api_conn *c)
{
	struct bg_api *a = c->api;

	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		a->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	event_free(c->timer);
	bufferevent_free(c->bev);
	c->bev = NULL;
	free(c);
	bg_stat_add(&a->n_conns, (uint64_t)-1);
}

static void
format_peer(const struct sockaddr *sa, char *out, size_t len)
{
	char host[48], port[8];

	if (getnameinfo(sa, sa->sa_family == AF_INET6 ?
			sizeof(struct sockaddr_in6) :
			sizeof(struct sockaddr_in), host, sizeof(host), port,
			sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV) != 0)
		snprintf(out, len, "?");
	else
		snprintf(out, len, "%s:%s", host, port);
}

static void
on_accept(struct evconnlistener *l, evutil_socket_t s, struct sockaddr *sa,
	  int salen, void *arg)
{
	struct bg_api *a = arg;
	struct api_conn *c;
	int one = 1;

	if (bg_stat_get(&a->n_conns) >= BG_API_MAX_CONNS) {
		static struct bg_log_throttle throttle =
			BG_LOG_THROTTLE("API: connections refused", 1);
		bg_log_throttled(&throttle, BG_LOG_WARN, "API: %d connections "
				 "open: refusing more", BG_API_MAX_CONNS);
		close(s);
		return;
	}
	setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c = calloc(1, sizeof(*c));
	if (c != NULL) {
		c->bev = bufferevent_socket_new(a->base, s,
						BEV_OPT_CLOSE_ON_FREE);
		c->timer = evtimer_new(a->base, on_timer, c);
	}
	if (c == NULL || c->bev == NULL || c->timer == NULL) {
		if (may_warn(&a->last_warn))
			bg_log_error("API: out of memory for a connection");
		if (c != NULL && c->bev != NULL)
			bufferevent_free(c->bev);
		else
			close(s);
		if (c != NULL && c->timer != NULL)
			event_free(c->timer);
		free(c);
		return;
	}
	c->api = a;
	c->state = S_IDLE;
	format_peer(sa, c->peer, sizeof(c->peer));
	c->next = a->conns;
	if (a->conns != NULL)
		a->conns->prev = c;
	a->conns = c;
	bg_stat_add(&a->n_conns, 1);
	bg_stat_add(&a->conns_total, 1);
	bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
	bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	arm(c, BG_API_IDLE_TIMEOUT);
}

static void
on_resume(evutil_socket_t fd, short what, void *arg)
{
	struct bg_api *a = arg;

	evconnlistener_enable(a->listener);
}

static void
on_accept_error(struct evconnlistener *l, void *arg)
{
	struct bg_api *a = arg;
	int e = EVUTIL_SOCKET_ERROR();
	struct timeval tv = { 0, PAUSE_MS * 1000 };

	if (may_warn(&a->last_warn))
		bg_log_warn("API: accept(): %s", strerror(e));
	/* Out of descriptors: stop taking new ones for a moment instead of
	 * spinning on the readable listener. */
	evconnlistener_disable(l);
	evtimer_add(a->resume_ev, &tv);
}

/* Once a second, between callbacks: no config pointer is held. */
static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
	struct bg_api *a = arg;

	bg_server_quiescent(a->srv, BG_SEEN_API);
}

static void
on_stop(evutil_socket_t fd, short what, void *arg)
{
	struct bg_api *a = arg;

	event_base_loopbreak(a->base);
}

/* ------------------------------------------------------------- thread */

static void *
api_main(void *arg)
{
	struct bg_api *a = arg;

	pthread_setname_np(pthread_self(), "bg-api");
	/* A turn of the loop at a time: the broadcasts of every request
	 * that turn served reach the bus as one batch. */
	for (;;) {
		int rc;

		bg_bus_batch_begin();
		rc = event_base_loop(a->base, EVLOOP_ONCE);
		bg_bus_batch_end();
		if (rc < 0)
			bg_log_error("API: event loop failed");
		if (rc != 0 || event_base_got_break(a->base) ||
		    event_base_got_exit(a->base))
			break;
	}
	return NULL;
}

/* A listening socket on host:port; -1 with err set. */
static int
listen_on(const char *host, int port, char *err, size_t errlen)
{
	struct addrinfo hints, *res = NULL, *ai;
	char sport[16];
	int fd = -1, one = 1, rc, e = 0;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	snprintf(sport, sizeof(sport), "%d", port);
	rc = getaddrinfo(host, sport, &hints, &res);
	if (rc != 0) {
		snprintf(err, errlen, "cannot listen on %s:%d (API): %s",
			 host, port, gai_strerror(rc));
		return -1;
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
		    listen(fd, 1024) == 0)
			break;
		e = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		snprintf(err, errlen, "cannot listen on %s:%d (API): %s",
			 host, port, strerror(e));
	return fd;
}

struct bg_api *
bg_api_new(struct bg_server *srv, char *err, size_t errlen)
{
	const struct bg_config *cfg = bg_server_cfg(srv);
	struct bg_api *a;
	int fd = listen_on(cfg->api_host, cfg->api_port, err, errlen);

	if (fd < 0)
		return NULL;
	a = calloc(1, sizeof(*a));
	if (a == NULL) {
		close(fd);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	a->srv = srv;
	a->fd = fd;
	a->stop_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	a->base = event_base_new();
	if (a->stop_efd >= 0 && a->base != NULL)
		a->listener = evconnlistener_new(a->base, on_accept, a,
						 LEV_OPT_CLOSE_ON_FREE, -1, fd);
	if (a->listener != NULL) {
		a->stop_ev = event_new(a->base, a->stop_efd, EV_READ, on_stop,
				       a);
		a->resume_ev = evtimer_new(a->base, on_resume, a);
		a->tick_ev = event_new(a->base, -1, EV_PERSIST, on_tick, a);
		a->answers = bg_ring_new(ANSWER_RING, false);
		if (a->answers != NULL)
			a->answer_ev = event_new(a->base,
						 bg_ring_fd(a->answers),
						 EV_READ | EV_PERSIST,
						 on_answers, a);
	}
	if (a->listener == NULL || a->stop_ev == NULL ||
	    a->resume_ev == NULL || a->tick_ev == NULL ||
	    a->answer_ev == NULL || event_add(a->answer_ev, NULL) != 0 ||
	    event_add(a->stop_ev, NULL) != 0 ||
	    event_add(a->tick_ev, &(struct timeval){ 1, 0 }) != 0) {
		snprintf(err, errlen, "API listener: cannot set up its event "
			 "loop");
		if (a->listener == NULL)
			close(fd);
		a->fd = -1;
		if (a->base == NULL) {
			if (a->stop_efd >= 0)
				close(a->stop_efd);
			free(a);
			return NULL;
		}
		bg_api_free(a);
		return NULL;
	}
	evconnlistener_set_error_cb(a->listener, on_accept_error);
	return a;
}

int
bg_api_start(struct bg_api *a)
{
	int rc = pthread_create(&a->thread, NULL, api_main, a);

	if (rc != 0) {
		errno = rc;
		bg_log_errno("API: pthread_create()");
		return BG_ERR;
	}
	a->started = true;
	return BG_OK;
}

void
bg_api_stop(struct bg_api *a)
{
	uint64_t one = 1;

	if (a == NULL || a->base == NULL)
		return;
	if (a->started) {
		if (write(a->stop_efd, &one, sizeof(one)) < 0)
			bg_log_errno("API: write(eventfd)");
		pthread_join(a->thread, NULL);
	}
	/* The thread is gone: its connections are ours to close. */
	while (a->conns != NULL)
		conn_free(a->conns);
	if (a->listener != NULL)
		evconnlistener_free(a->listener);
	if (a->stop_ev != NULL)
		event_free(a->stop_ev);
	if (a->resume_ev != NULL)
		event_free(a->resume_ev);
	if (a->tick_ev != NULL)
		event_free(a->tick_ev);
	if (a->answer_ev != NULL)
		event_free(a->answer_ev);
	a->answer_ev = NULL;
	event_base_free(a->base);
	a->base = NULL;
	a->listener = NULL;
	a->stop_ev = a->resume_ev = a->tick_ev = NULL;
	if (a->stop_efd >= 0)
		close(a->stop_efd);
	a->stop_efd = -1;
}

void
bg_api_free(struct bg_api *a)
{
	struct api_job *j;

	bg_api_stop(a);
	/* The bus is joined: what it answered after the API stopped. */
	while (a != NULL && a->answers != NULL &&
	       (j = bg_ring_pop(a->answers)) != NULL)
		job_free(j);
	if (a != NULL)
		bg_ring_free(a->answers);
	free(a);
}

const struct bg_stats *
bg_api_stats(const struct bg_api *a)
{
	return &a->stats;
}

uint64_t
bg_api_connections(const struct bg_api *a)
{
	return bg_stat_get(&a->n_conns);
}

uint64_t
bg_api_connections_total(const struct bg_api *a)
{
	return bg_stat_get(&a->conns_total);
}
