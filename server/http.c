/*
 * http.c - HTTP endpoints of PROTOCOL.md §1 on the WebSocket port. Runs in
 * libwebsockets callbacks on the worker that owns the connection. /metrics
 * and /health read every worker's counters with atomic loads.
 */
#include "server/http.h"

#include <arpa/inet.h>
#include <libwebsockets.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "amqp/bus.h"
#include "common/log.h"
#include "server/conn.h"
#include "server/worker.h"

/* The browser client, linked in from js/bagou.js by server/bagou_js.S. */
extern const char bg_js_start[], bg_js_end[];

#define JSON_TYPE "application/json"

static int
respond(struct lws *wsi, unsigned int status, const char *ctype,
	const char *body, size_t len, bool close_after)
{
	uint8_t hdr[LWS_PRE + 1024], *start = hdr + LWS_PRE, *p = start;
	uint8_t *end = hdr + sizeof(hdr) - 1, *b;
	int n;

	if (lws_add_http_common_headers(wsi, status, ctype, len, &p, end) ||
	    lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_CACHE_CONTROL,
					 (const uint8_t *)"no-store", 8, &p,
					 end) ||
	    (close_after &&
	     lws_add_http_header_by_token(wsi, WSI_TOKEN_CONNECTION,
					  (const uint8_t *)"close", 5, &p,
					  end)) ||
	    lws_finalize_write_http_header(wsi, start, &p, end))
		return -1;
	if (len > 0) {
		b = malloc(LWS_PRE + len);
		if (b == NULL)
			return -1;
		memcpy(b + LWS_PRE, body, len);
		n = lws_write(wsi, b + LWS_PRE, len, LWS_WRITE_HTTP_FINAL);
		free(b);
		if (n < 0)
			return -1;
	}
	if (close_after)
		return -1;
	return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static int
respond_error(struct lws *wsi, unsigned int status, const char *code,
	      const char *message, bool close_after)
{
	json_t *o = json_pack("{s:{s:s, s:s}}", "error", "code", code,
			      "message", message);
	char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
	int rc;

	json_decref(o);
	if (s == NULL)
		return -1;
	rc = respond(wsi, status, JSON_TYPE, s, strlen(s), close_after);
	free(s);
	return rc;
}

/* Refuses an upgrade with a plain HTTP/1.1 status (and extra, a header
 * line with its CRLF, or ""): lws_return_http_status would answer
 * HTTP/1.0 here, which WebSocket clients reject. */
static int
refuse_upgrade_with(struct lws *wsi, const char *status, const char *extra)
{
	char resp[256];
	uint8_t buf[LWS_PRE + sizeof(resp)];
	int n;

	n = snprintf(resp, sizeof(resp), "HTTP/1.1 %s\r\n%sContent-Length: 0"
		     "\r\nConnection: close\r\n\r\n", status, extra);
	memcpy(buf + LWS_PRE, resp, (size_t)n);
	lws_write(wsi, buf + LWS_PRE, (size_t)n, LWS_WRITE_HTTP_HEADERS);
	return -1;
}

static int
refuse_upgrade(struct lws *wsi, const char *status)
{
	return refuse_upgrade_with(wsi, status, "");
}

/* True when the comma-separated header value lists token
 * (case-insensitive, whole entries, spaces and tabs around them). */
static bool
header_lists(const char *value, const char *token)
{
	size_t len = strlen(token);
	const char *p = value;

	while (*p) {
		size_t n;
		while (*p == ',' || *p == ' ' || *p == '\t')
			p++;
		n = strcspn(p, ", \t");
		if (n == len && strncasecmp(p, token, n) == 0)
			return true;
		p += n;
	}
	return false;
}

/* RFC 6455 4.1: the base64 of 16 bytes, 24 characters. */
static bool
key_valid(const char *k)
{
	static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnop"
				  "qrstuvwxyz0123456789+/";

	if (strlen(k) != 24 || strcmp(k + 22, "==") != 0 ||
	    strchr("AQgw", k[21]) == NULL)
		return false;
	for (int i = 0; i < 21; i++)
		if (strchr(b64, k[i]) == NULL)
			return false;
	return true;
}

/* True when origin is one of the comma-separated list (case-insensitive,
 * whole entries). */
static bool
origin_listed(const char *list, const char *origin)
{
	size_t len = strlen(origin);
	const char *p = list;

	while (*p) {
		size_t n;
		while (*p == ',' || *p == ' ')
			p++;
		n = strcspn(p, ", ");
		if (n == len && n > 0 && strncasecmp(p, origin, n) == 0)
			return true;
		p += n;
	}
	return false;
}

int
bg_http_confirm_upgrade(struct bg_worker *w, struct lws *wsi,
			const char *upgrade)
{
	const struct bg_config *cfg = w->srv->cfg;
	char uri[256], origin[512], h[256];

	/* Only WebSocket: "Upgrade: h2c" is served as plain HTTP/1.1
	 * (libwebsockets is built without HTTP/2). */
	if (upgrade == NULL || strcasecmp(upgrade, "websocket") != 0)
		return 0;
	if (lws_hdr_copy(wsi, uri, sizeof(uri), WSI_TOKEN_GET_URI) <= 0 ||
	    strcmp(uri, cfg->path) != 0)
		return refuse_upgrade(wsi, "404 Not Found");
	/* RFC 6455 4.2.2: any version but 13 gets 426 naming 13. */
	if (lws_hdr_copy(wsi, h, sizeof(h), WSI_TOKEN_VERSION) <= 0 ||
	    strcmp(h, "13") != 0)
		return refuse_upgrade_with(wsi, "426 Upgrade Required",
					   "Sec-WebSocket-Version: 13\r\n");
	/* What libwebsockets would otherwise refuse with a bare close. */
	if (lws_hdr_copy(wsi, h, sizeof(h), WSI_TOKEN_KEY) <= 0 ||
	    !key_valid(h) ||
	    lws_hdr_total_length(wsi, WSI_TOKEN_HOST) <= 0 ||
	    lws_hdr_copy(wsi, h, sizeof(h), WSI_TOKEN_CONNECTION) <= 0 ||
	    !header_lists(h, "upgrade"))
		return refuse_upgrade(wsi, "400 Bad Request");
	/* A client that asks for subprotocols must be offered one of them
	 * (RFC 6455 4.1): ours is "bagou"; other lists get 400. */
	if (lws_hdr_total_length(wsi, WSI_TOKEN_PROTOCOL) > 0 &&
	    (lws_hdr_copy(wsi, h, 128, WSI_TOKEN_PROTOCOL) <= 0 ||
	     !header_lists(h, "bagou")))
		return refuse_upgrade(wsi, "400 Bad Request");
	if (cfg->origins[0] != '\0' &&
	    (lws_hdr_copy(wsi, origin, sizeof(origin), WSI_TOKEN_ORIGIN) <= 0
	     || !origin_listed(cfg->origins, origin)))
		return refuse_upgrade(wsi, "403 Forbidden");
	if (w->stopping)
		return refuse_upgrade(wsi, "503 Service Unavailable");
	return 0;
}

/* --------------------------------------------------------- /metrics */

struct text {
	char *p;
	size_t len, cap;
};

static void __attribute__((format(printf, 2, 3)))
text_add(struct text *t, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
		va_end(ap);
		if (n < 0)
			return;
		if (t->len + (size_t)n < t->cap) {
			t->len += (size_t)n;
			return;
		}
		size_t cap = (t->cap + (size_t)n + 1) * 2;
		char *p = realloc(t->p, cap);
		if (p == NULL)
			return;
		t->p = p;
		t->cap = cap;
	}
}

static uint64_t
sum_stat(const struct bg_server *srv, size_t offset)
{
	uint64_t total = 0;

	for (int i = 0; i < srv->n_workers; i++)
		total += bg_stat_get((const uint64_t *)(const void *)
				     ((const char *)&srv->workers[i]->stats +
				      offset));
	return total;
}

#define SUM(srv, field) sum_stat(srv, offsetof(struct bg_stats, field))

static void
metric(struct text *t, const char *name, const char *type,
       const char *help, uint64_t value)
{
	text_add(t, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", name, help, name,
		 type, name, (unsigned long long)value);
}

static int
serve_metrics(struct bg_worker *w, struct lws *wsi)
{
	const struct bg_server *srv = w->srv;
	struct text t = { 0 };
	int rc;

	t.cap = 4096;
	t.p = malloc(t.cap);
	if (t.p == NULL)
		return -1;
	t.p[0] = '\0';
	text_add(&t, "# HELP bagou_connections Open WebSocket connections."
		 "\n# TYPE bagou_connections gauge\n");
	for (int i = 0; i < srv->n_workers; i++)
		text_add(&t, "bagou_connections{worker=\"%d\"} %llu\n", i,
			 (unsigned long long)bg_stat_get(
				 &srv->workers[i]->stats.connections));
	metric(&t, "bagou_connections_total", "counter",
	       "WebSocket connections opened.", SUM(srv, connections_total));
	metric(&t, "bagou_messages_received_total", "counter",
	       "Messages received from clients.",
	       SUM(srv, messages_received));
	metric(&t, "bagou_messages_sent_total", "counter",
	       "Messages written to clients.", SUM(srv, messages_sent));
	metric(&t, "bagou_broadcasts_total", "counter",
	       "Broadcasts fanned out to the workers.",
	       bg_bus_broadcasts(srv->bus));
	metric(&t, "bagou_broadcasts_rejected_total", "counter",
	       "Broadcasts rejected as invalid.",
	       SUM(srv, broadcasts_rejected) + bg_bus_rejected(srv->bus));
	metric(&t, "bagou_slow_consumer_closes_total", "counter",
	       "Connections closed with 4001 for a full outbound queue.",
	       SUM(srv, slow_consumer_closes));
	metric(&t, "bagou_subscriptions", "gauge",
	       "Channel subscriptions held by connections.",
	       SUM(srv, subscriptions));
	metric(&t, "bagou_amqp_connected", "gauge",
	       "1 while connected to RabbitMQ.",
	       bg_bus_connected(srv->bus) ? 1 : 0);
	metric(&t, "bagou_amqp_reconnects_total", "counter",
	       "Reconnections to RabbitMQ.", bg_bus_reconnects(srv->bus));
	metric(&t, "bagou_http_requests_total", "counter",
	       "Plain HTTP requests served.", SUM(srv, http_requests));
	text_add(&t, "# HELP bagou_client_errors_total Errors sent to "
		 "clients, by code.\n# TYPE bagou_client_errors_total "
		 "counter\n");
	for (int c = 0; c < BG_CODE_COUNT; c++) {
		uint64_t n = 0;
		for (int i = 0; i < srv->n_workers; i++)
			n += bg_stat_get(
				&srv->workers[i]->stats.client_errors[c]);
		text_add(&t, "bagou_client_errors_total{code=\"%s\"} %llu\n",
			 bg_code_name((enum bg_code)c),
			 (unsigned long long)n);
	}
	rc = respond(wsi, 200, "text/plain; version=0.0.4; charset=utf-8",
		     t.p, t.len, false);
	free(t.p);
	return rc;
}

static int
serve_health(struct bg_worker *w, struct lws *wsi)
{
	const struct bg_server *srv = w->srv;
	char body[256];
	int n;

	n = snprintf(body, sizeof(body),
		     "{\"status\":\"ok\",\"amqp\":\"%s\",\"connections\":%llu,"
		     "\"workers\":%d}", bg_bus_state(srv->bus),
		     (unsigned long long)SUM(srv, connections),
		     srv->n_workers);
	return respond(wsi, 200, JSON_TYPE, body, (size_t)n, false);
}

/* ------------------------------------------------------ /broadcast */

static bool
peer_is_loopback(struct lws *wsi)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);

	if (getpeername(lws_get_socket_fd(wsi), (struct sockaddr *)&ss,
			&sl) != 0)
		return false;
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)&ss;
		return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	}
	if (ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const void *)&ss;
		const uint8_t *a = in6->sin6_addr.s6_addr;
		if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
			return true;
		return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && a[12] == 127;
	}
	return false;
}

/* Compares without leaking where the first difference is. */
static bool
same_secret(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	unsigned char d = la != lb;

	for (size_t i = 0; i < la; i++)
		d |= (unsigned char)(a[i] ^ b[i % (lb ? lb : 1)]);
	return d == 0;
}

/* 0 when allowed, else the HTTP status to answer. */
static unsigned int
check_auth(struct bg_worker *w, struct lws *wsi)
{
	const char *key = w->srv->cfg->api_key;
	char h[512];

	if (key[0] == '\0')
		return peer_is_loopback(wsi) ? 0 : 403;
	if (lws_hdr_copy(wsi, h, sizeof(h), WSI_TOKEN_HTTP_AUTHORIZATION) <=
	    0)
		return 401;
	if (strncasecmp(h, "Bearer ", 7) != 0 || !same_secret(h + 7, key))
		return 403;
	return 0;
}

/*
 * Takes c->body and answers the POST, then closes the connection
 * ("Connection: close"). libwebsockets 4.1 mis-frames HTTP/1.1 requests
 * pipelined behind a POST body (the next request's head is delivered as the
 * following body and the worker spins), so a POST never shares its
 * connection; clients open a new one, as RFC 7230 §6.3.2 has them do.
 */
static int
finish_broadcast(struct bg_worker *w, struct lws *wsi, struct bg_conn *c)
{
	static const char ok[] = "{\"status\":\"accepted\"}";
	unsigned int denied = check_auth(w, wsi);
	char *body = c->body;
	size_t len = c->body_len;
	struct bg_msg *m = NULL;
	enum bg_code code = BG_CODE_BAD_MESSAGE;
	char err[200];

	c->body = NULL;
	c->body_len = c->body_cap = 0;
	c->is_broadcast = false;
	if (!denied)
		m = bg_proto_broadcast_text(body ? body : "", len, NULL, &code,
					    err, sizeof(err));
	free(body);
	if (denied == 401)
		return respond_error(wsi, 401, "unauthorized", "this "
				     "endpoint needs Authorization: Bearer "
				     "<api_key>", true);
	if (denied)
		return respond_error(wsi, 403, "forbidden", "not allowed to "
				     "broadcast", true);
	if (m == NULL) {
		bg_stat_add(&w->stats.broadcasts_rejected, 1);
		return respond_error(wsi, code == BG_CODE_INTERNAL ? 500 : 400,
				     bg_code_name(code), err, true);
	}
	if (bg_bus_publish(w->srv->bus, m) != BG_OK) {
		bg_msg_unref(m);
		return respond_error(wsi, 503, "unavailable", "the broadcast "
				     "bus is busy; retry", true);
	}
	return respond(wsi, 202, JSON_TYPE, ok, sizeof(ok) - 1, true);
}

static int
start_post(struct bg_worker *w, struct lws *wsi, struct bg_conn *c,
	   const char *uri)
{
	size_t max = w->srv->cfg->max_message_size;
	char cl[32];
	char *end;
	unsigned long long n;

	if (strcmp(uri, "/broadcast") != 0)
		return respond_error(wsi, 404, "not_found", "no such "
				     "endpoint", true);
	if (lws_hdr_copy(wsi, cl, sizeof(cl),
			 WSI_TOKEN_HTTP_CONTENT_LENGTH) <= 0)
		return respond_error(wsi, 411, "bad_message",
				     "Content-Length is required", true);
	n = strtoull(cl, &end, 10);
	if (*end != '\0' || n > max)
		return respond_error(wsi, 413, "bad_message", "the body is "
				     "larger than max_message_size", true);
	if (n == 0)
		return finish_broadcast(w, wsi, c);
	c->body = malloc(n + 1);
	if (c->body == NULL)
		return -1;
	c->body_len = 0;
	c->body_cap = n;
	c->is_broadcast = true;
	return 0;
}

int
bg_http_callback(struct bg_worker *w, struct lws *wsi, int reason,
		 struct bg_conn *c, void *in, size_t len)
{
	const char *uri = in;

	/* A client that leaves before a whole request has no session data
	 * yet: lws still reports the close. */
	if (c == NULL)
		return reason == LWS_CALLBACK_HTTP ? -1 : 0;
	switch (reason) {
	case LWS_CALLBACK_HTTP:
		bg_stat_add(&w->stats.http_requests, 1);
		if (lws_hdr_total_length(wsi, WSI_TOKEN_POST_URI) > 0)
			return start_post(w, wsi, c, uri);
		if (lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) <= 0)
			return respond_error(wsi, 405, "bad_message",
					     "method not allowed", true);
		if (strcmp(uri, "/health") == 0)
			return serve_health(w, wsi);
		if (strcmp(uri, "/metrics") == 0)
			return serve_metrics(w, wsi);
		if (strcmp(uri, "/bagou.js") == 0)
			return respond(wsi, 200, "application/javascript; "
				       "charset=utf-8", bg_js_start,
				       (size_t)(bg_js_end - bg_js_start),
				       false);
		if (strcmp(uri, w->srv->cfg->path) == 0)
			return respond_error(wsi, 426, "bad_message",
					     "this is a WebSocket endpoint",
					     false);
		return respond_error(wsi, 404, "not_found", "no such "
				     "endpoint", false);
	case LWS_CALLBACK_HTTP_BODY:
		if (!c->is_broadcast || c->body_len + len > c->body_cap)
			return respond_error(wsi, 413, "bad_message", "the "
					     "body is larger than "
					     "max_message_size", true);
		memcpy(c->body + c->body_len, in, len);
		c->body_len += len;
		return 0;
	case LWS_CALLBACK_HTTP_BODY_COMPLETION:
		if (!c->is_broadcast)
			return -1;
		return finish_broadcast(w, wsi, c);
	case LWS_CALLBACK_CLOSED_HTTP:
	case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
		free(c->body);
		c->body = NULL;
		c->is_broadcast = false;
		return 0;
	}
	return 0;
}
