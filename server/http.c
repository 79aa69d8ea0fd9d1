/*
 * http.c - HTTP endpoints of PROTOCOL.md §1 and §8 on the public
 * (WebSocket) port, and the pieces the API listener (server/api.c) shares
 * with it: the broadcast path to the bus, the Bearer key check, the
 * /metrics and /health bodies.
 *
 * The lws side runs in libwebsockets callbacks on the worker that owns
 * the connection. The shared pieces run on any worker or on the API
 * thread: they read counters with atomic loads and write only the stats
 * the caller passes in (its own).
 */
#include "server/http.h"

#include <dirent.h>
#include <libwebsockets.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <unistd.h>

#include "amqp/bus.h"
#include "common/log.h"
#include "server/api.h"
#include "server/acceptor.h"
#include "server/asset.h"
#include "server/conn.h"
#include "server/presence.h"
#include "server/worker.h"

#define JSON_TYPE "application/json"

void
bg_http_access_log(const char *listener, const char *peer,
		   const char *method, const char *path, unsigned int status,
		   size_t bytes, uint64_t start_us)
{
	char p[201];
	size_t i;
	uint64_t now = bg_mono_us();

	for (i = 0; path[i] != '\0' && i < sizeof(p) - 1; i++)
		p[i] = (unsigned char)path[i] < 0x20 || path[i] == 0x7f ||
		       path[i] == ' ' ? '?' : path[i];
	p[i] = '\0';
	double ms = start_us && now > start_us ? (now - start_us) / 1000.0 : 0;
	char *fields = NULL;
	json_t *o = NULL;

	if (bg_log_json())
		o = json_pack("{s:s, s:s, s:s, s:s, s:i, s:I, s:f}", "listener",
			      listener, "peer", peer, "method", method,
			      "path", p, "status", (int)status, "bytes",
			      (json_int_t)bytes, "duration_ms", ms);
	if (o != NULL)
		fields = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
	json_decref(o);
	bg_log_fields(BG_LOG_INFO, fields, "access: %s %s %s %s %u %zu %.3f "
		      "ms", listener, peer[0] ? peer : "-", method,
		      i ? p : "-", status, bytes, ms);
	free(fields);
}

/* [log] access on the public port: the request of wsi was answered. */
static void
access_log(struct lws *wsi, unsigned int status, size_t bytes)
{
	struct lws_context *ctx = lws_get_context(wsi);
	struct bg_worker *w = ctx ? lws_context_user(ctx) : NULL;
	struct bg_conn *c = lws_wsi_user(wsi);
	static const struct { enum lws_token_indexes t; const char *m; }
	methods[] = {
		{ WSI_TOKEN_GET_URI, "GET" }, { WSI_TOKEN_POST_URI, "POST" },
		{ WSI_TOKEN_HEAD_URI, "HEAD" }, { WSI_TOKEN_OPTIONS_URI,
		"OPTIONS" }, { WSI_TOKEN_PUT_URI, "PUT" },
		{ WSI_TOKEN_PATCH_URI, "PATCH" },
		{ WSI_TOKEN_DELETE_URI, "DELETE" },
	};
	const char *method = "-";
	char path[256] = "", peer[64] = "";

	if (w == NULL || !bg_server_cfg(w->srv)->log_access)
		return;
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
		if (lws_hdr_total_length(wsi, methods[i].t) > 0) {
			method = methods[i].m;
			if (lws_hdr_copy(wsi, path, sizeof(path),
					 methods[i].t) < 0)
				path[0] = '\0';
			break;
		}
	lws_get_peer_simple(wsi, peer, sizeof(peer));
	bg_http_access_log("public", peer, method, path, status, bytes,
			   c != NULL ? c->http_start_us : 0);
}

static int
respond(struct lws *wsi, unsigned int status, const char *ctype,
	const char *body, size_t len, bool close_after)
{
	uint8_t hdr[LWS_PRE + 1024], *start = hdr + LWS_PRE, *p = start;
	uint8_t *end = hdr + sizeof(hdr) - 1, *b;
	int n;

	/* HEAD: the same head, Content-Length included, and no body. */
	if (lws_hdr_total_length(wsi, WSI_TOKEN_HEAD_URI) > 0)
		body = NULL;
	access_log(wsi, status, body != NULL ? len : 0);

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
	if (body != NULL && len > 0) {
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
	access_log(wsi, (unsigned int)atoi(status), 0);
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

int
bg_http_confirm_upgrade(struct bg_worker *w, struct lws *wsi,
			const char *upgrade)
{
	const struct bg_config *cfg = bg_server_cfg(w->srv);
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
	     || !bg_config_origin_allowed(cfg->origins, origin)))
		return refuse_upgrade(wsi, "403 Forbidden");
	if (w->stopping)
		return refuse_upgrade(wsi, "503 Service Unavailable");
	return 0;
}

/* ---------------------------------------------- /metrics, /health */

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

/* A counter summed over the workers and the API thread. */
static uint64_t
sum_stat(const struct bg_server *srv, size_t offset)
{
	const struct bg_stats *api = srv->api ? bg_api_stats(srv->api) : NULL;
	uint64_t total = 0;

	for (int i = 0; i < srv->n_workers; i++)
		total += bg_stat_get((const uint64_t *)(const void *)
				     ((const char *)&srv->workers[i]->stats +
				      offset));
	if (api != NULL)
		total += bg_stat_get((const uint64_t *)(const void *)
				     ((const char *)api + offset));
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

/* PROTOCOL.md "Resource limits". */
static void
resource_metrics(struct text *t, const struct bg_server *srv)
{
	static const char *const why[] = {
		[BG_ADMIT_REFUSED_CONNECTIONS] = "max_connections",
		[BG_ADMIT_REFUSED_HANDSHAKES] = "max_handshakes",
		[BG_ADMIT_REFUSED_ADDRESS] = "max_per_address",
		[BG_ADMIT_REFUSED_DESCRIPTORS] = "descriptors",
	};
	const struct bg_acceptor *a = srv->acceptor;

	metric(t, "bagou_max_connections", "gauge", "Sockets this node "
	       "accepts at once ([server] max_connections).",
	       (uint64_t)bg_server_cfg(srv)->max_connections);
	metric(t, "bagou_sockets", "gauge", "Accepted sockets open "
	       "(WebSocket, HTTP, handshakes).", bg_acceptor_sockets(a));
	metric(t, "bagou_handshakes", "gauge", "Sockets not yet an "
	       "established WebSocket.", bg_acceptor_handshakes(a));
	metric(t, "bagou_handshake_timeouts_total", "counter", "Sockets "
	       "closed by [limits] handshake_timeout.",
	       bg_acceptor_stat(a, BG_ADMIT_HANDSHAKE_TIMEOUTS));
	metric(t, "bagou_memory_closes_total", "counter", "Connections "
	       "closed for [limits] max_connection_memory.",
	       SUM(srv, memory_closes));
	text_add(t, "# HELP bagou_connections_refused_total Sockets refused "
		 "at accept, by limit.\n# TYPE bagou_connections_refused_total"
		 " counter\n");
	for (int i = 0; i < (int)(sizeof(why) / sizeof(why[0])); i++)
		text_add(t, "bagou_connections_refused_total{reason=\"%s\"} "
			 "%llu\n", why[i], (unsigned long long)
			 bg_acceptor_stat(a, (enum bg_admit_stat)i));
}

/* A histogram summed over the workers; bounds in microseconds, written
 * in seconds. */
static void
histogram(struct text *t, const struct bg_server *srv, size_t offset,
	  const char *name, const char *help)
{
	uint64_t counts[BG_HIST_BUCKETS] = { 0 }, sum_us = 0, cum = 0;

	for (int i = 0; i < srv->n_workers; i++) {
		const struct bg_hist *h = (const void *)
			((const char *)&srv->workers[i]->stats + offset);
		for (int b = 0; b < BG_HIST_BUCKETS; b++)
			counts[b] += bg_stat_get(&h->counts[b]);
		sum_us += bg_stat_get(&h->sum_us);
	}
	text_add(t, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
	for (int b = 0; b < BG_HIST_BUCKETS; b++) {
		cum += counts[b];
		if (b < BG_HIST_BUCKETS - 1)
			text_add(t, "%s_bucket{le=\"%g\"} %llu\n", name,
				 bg_hist_bounds[b] / 1e6,
				 (unsigned long long)cum);
		else
			text_add(t, "%s_bucket{le=\"+Inf\"} %llu\n", name,
				 (unsigned long long)cum);
	}
	text_add(t, "%s_sum %.6f\n%s_count %llu\n", name, sum_us / 1e6,
		 name, (unsigned long long)cum);
}

#define HIST(t, srv, field, name, help) \
	histogram(t, srv, offsetof(struct bg_stats, field), name, help)

/* PROTOCOL.md §7 "Operations metrics". */
static void
ops_metrics(struct text *t, const struct bg_server *srv)
{
	text_add(t, "# HELP bagou_build_info The running build.\n"
		 "# TYPE bagou_build_info gauge\n"
		 "bagou_build_info{version=\"%s\",protocol=\"%d\","
		 "node=\"%s\"} 1\n", BG_VERSION, BG_PROTOCOL_VERSION,
		 srv->node_id);
	metric(t, "bagou_received_bytes_total", "counter", "WebSocket "
	       "message payload bytes received from clients.",
	       SUM(srv, bytes_received));
	metric(t, "bagou_sent_bytes_total", "counter", "WebSocket frame "
	       "bytes written to clients.", SUM(srv, bytes_sent));
	text_add(t, "# HELP bagou_closes_total WebSocket connections "
		 "closed, by close code and by the side that closed first."
		 "\n# TYPE bagou_closes_total counter\n");
	for (int k = 0; k < BG_CLOSE_CODES; k++)
		for (int by = 0; by < 2; by++) {
			uint64_t n = 0;
			char code[8];
			for (int i = 0; i < srv->n_workers; i++)
				n += bg_stat_get(&srv->workers[i]->
						 stats.closes[k][by]);
			if (k < BG_CLOSE_CODES - 1)
				snprintf(code, sizeof(code), "%u",
					 bg_close_codes[k]);
			else
				snprintf(code, sizeof(code), "other");
			text_add(t, "bagou_closes_total{code=\"%s\",by="
				 "\"%s\"} %llu\n", code, by ? "client" :
				 "server", (unsigned long long)n);
		}
	metric(t, "bagou_forwarded_events_total", "counter", "Client events "
	       "and lifecycle events published to [forward] exchange.",
	       SUM(srv, forwarded_events));
	metric(t, "bagou_forward_replies_total", "counter", "Application "
	       "replies carrying a callbackId delivered to a client here.",
	       SUM(srv, forward_replies));
	HIST(t, srv, bcast_latency, "bagou_broadcast_latency_seconds",
	     "From a broadcast's ingest (bus receipt, POST accepted) to its "
	     "socket write, one observation per write.");
	HIST(t, srv, forward_rtt, "bagou_forward_round_trip_seconds",
	     "From a forwarded request with a callbackId to the "
	     "application's reply reaching its client.");
}

/* Process metrics from /proc/self, as Prometheus client libraries name
 * them. */
static void
process_metrics(struct text *t)
{
	char buf[1024], *p;
	unsigned long long utime = 0, stime = 0, start = 0, btime = 0;
	long rss = 0, tck = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
	struct rlimit rl;
	struct dirent *de;
	uint64_t fds = 0;
	FILE *f;
	DIR *d;

	if ((f = fopen("/proc/self/stat", "r")) != NULL) {
		size_t n = fread(buf, 1, sizeof(buf) - 1, f);
		buf[n] = '\0';
		fclose(f);
		/* Fields after "(comm)": state is field 3. */
		p = strrchr(buf, ')');
		if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u "
				       "%*u %*u %*u %*u %llu %llu %*d %*d %*d "
				       "%*d %*d %*d %llu %*u %ld", &utime,
				       &stime, &start, &rss) != 4)
			utime = stime = start = 0, rss = 0;
	}
	if ((f = fopen("/proc/stat", "r")) != NULL) {
		while (fgets(buf, sizeof(buf), f) != NULL)
			if (sscanf(buf, "btime %llu", &btime) == 1)
				break;
		fclose(f);
	}
	if ((d = opendir("/proc/self/fd")) != NULL) {
		while ((de = readdir(d)) != NULL)
			if (de->d_name[0] != '.')
				fds++;
		closedir(d);
		fds--; /* the one opendir holds */
	}
	if (tck <= 0)
		tck = 100;
	text_add(t, "# HELP process_cpu_seconds_total User and system CPU "
		 "time spent, in seconds.\n# TYPE process_cpu_seconds_total "
		 "counter\nprocess_cpu_seconds_total %.2f\n",
		 (double)(utime + stime) / (double)tck);
	metric(t, "process_resident_memory_bytes", "gauge", "Resident "
	       "memory size in bytes.", (uint64_t)rss * (uint64_t)page);
	metric(t, "process_open_fds", "gauge", "Open file descriptors.",
	       fds);
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
		metric(t, "process_max_fds", "gauge", "Limit of open file "
		       "descriptors.", (uint64_t)rl.rlim_cur);
	text_add(t, "# HELP process_start_time_seconds Start time of the "
		 "process since the Unix epoch, in seconds.\n# TYPE "
		 "process_start_time_seconds gauge\n"
		 "process_start_time_seconds %.2f\n",
		 (double)btime + (double)start / (double)tck);
}

char *
bg_http_metrics(const struct bg_server *srv, size_t *len)
{
	struct text t = { 0 };
	char bus_text[8192];

	t.cap = 4096;
	t.p = malloc(t.cap);
	if (t.p == NULL)
		return NULL;
	t.p[0] = '\0';
	text_add(&t, "# HELP bagou_open_connections Open WebSocket "
		 "connections.\n# TYPE bagou_open_connections gauge\n");
	for (int i = 0; i < srv->n_workers; i++)
		text_add(&t, "bagou_open_connections{worker=\"%d\"} %llu\n",
			 i,
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
	if (bg_bus_metrics(srv->bus, bus_text, sizeof(bus_text)) > 0)
		text_add(&t, "%s", bus_text);
	if (bg_presence_metrics(srv, bus_text, sizeof(bus_text)) > 0)
		text_add(&t, "%s", bus_text);
	metric(&t, "bagou_http_requests_total", "counter",
	       "Plain HTTP requests served, on both listeners.",
	       SUM(srv, http_requests));
	metric(&t, "bagou_http_auth_failures_total", "counter",
	       "HTTP requests answered 401 or 403 for a missing or wrong "
	       "Bearer key.", SUM(srv, http_auth_failures));
	if (srv->api != NULL) {
		metric(&t, "bagou_api_open_connections", "gauge",
		       "Open connections on the API listener.",
		       bg_api_connections(srv->api));
		metric(&t, "bagou_api_connections_total", "counter",
		       "Connections accepted on the API listener.",
		       bg_api_connections_total(srv->api));
		metric(&t, "bagou_api_requests_total", "counter",
		       "Requests answered on the API listener.",
		       bg_stat_get(&bg_api_stats(srv->api)->http_requests));
	}
	resource_metrics(&t, srv);
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
	ops_metrics(&t, srv);
	process_metrics(&t);
	*len = t.len;
	return t.p;
}

size_t
bg_http_health(const struct bg_server *srv, bool live, char *out,
	       size_t outlen, unsigned int *status)
{
	const char *amqp = bg_bus_state(srv->bus), *st = "ok", *why = NULL;
	char reason[96] = "";
	int n;

	*status = 200;
	if (live) {
		n = snprintf(out, outlen, "{\"status\":\"live\"}");
		return n < 0 ? 0 : (size_t)n < outlen ? (size_t)n : outlen - 1;
	}
	if (__atomic_load_n(&srv->draining, __ATOMIC_ACQUIRE)) {
		st = "draining";
		why = "shutting down (SIGTERM): closing connections soon";
	} else if (strcmp(amqp, "disconnected") == 0) {
		st = "unavailable";
		why = "RabbitMQ is not connected: no broadcasts arrive";
	}
	if (why != NULL) {
		*status = 503;
		snprintf(reason, sizeof(reason), ",\"reason\":\"%s\"", why);
	}
	n = snprintf(out, outlen, "{\"status\":\"%s\",\"amqp\":\"%s\","
		     "\"connections\":%llu,\"workers\":%d%s}", st, amqp,
		     (unsigned long long)SUM(srv, connections), srv->n_workers,
		     reason);
	return n < 0 ? 0 : (size_t)n < outlen ? (size_t)n : outlen - 1;
}

static int
serve_health(struct bg_worker *w, struct lws *wsi, bool live)
{
	char body[384];
	unsigned int status;
	size_t n = bg_http_health(w->srv, live, body, sizeof(body), &status);

	return respond(wsi, status, JSON_TYPE, body, n, false);
}

/* ------------------------------------------------------ /broadcast */

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

unsigned int
bg_http_check_key(const char *key, const char *authorization)
{
	const char *p = authorization;

	if (p == NULL || p[0] == '\0')
		return 401;
	if (strncasecmp(p, "Bearer", 6) != 0 || (p[6] != ' ' && p[6] != '\t'))
		return 401;
	p += 7;
	while (*p == ' ' || *p == '\t')
		p++;
	return same_secret(p, key) ? 0 : 403;
}

static size_t
error_body(char *out, size_t outlen, const char *code, const char *message,
	   long published)
{
	json_t *o = json_pack("{s:{s:s, s:s}}", "error", "code", code,
			      "message", message);
	char *s;
	size_t n = 0;

	if (o != NULL && published >= 0)
		json_object_set_new(o, "published", json_integer(published));
	s = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	if (s != NULL) {
		n = strlen(s);
		if (n >= outlen)
			n = 0;
		else
			memcpy(out, s, n + 1);
		free(s);
	}
	if (n == 0)
		n = (size_t)snprintf(out, outlen, "{\"error\":{\"code\":"
				     "\"internal\",\"message\":\"out of "
				     "memory\"}}");
	return n;
}

size_t
bg_http_error_body(char *out, size_t outlen, const char *code,
		   const char *message)
{
	return error_body(out, outlen, code, message, -1);
}

/* The answer to a broadcast the bus refused with rc (bg_bus_publish):
 * BG_ERR, never publishable, is the sender's 400; anything else (link
 * down, outbox or workers' queues full) a 503 to retry. published: how
 * many of the batch went out before (-1: not a batch). */
static unsigned int
refused(struct bg_server *srv, int rc, long published, char *out,
	size_t outlen, size_t *n)
{
	bool down = strcmp(bg_bus_state(srv->bus), "disconnected") == 0;

	if (rc == BG_ERR) {
		*n = error_body(out, outlen, "bad_message", "this broadcast "
				"cannot be published", published);
		return 400;
	}
	*n = error_body(out, outlen, "unavailable", down ?
			"RabbitMQ is unreachable; retry later" :
			rc == BG_BUS_BUSY ? "backpressure: subscribers are "
			"backed up; retry later" :
			"the broadcast bus is busy; retry later", published);
	return 503;
}

unsigned int
bg_http_broadcast(struct bg_server *srv, struct bg_stats *st,
		  const char *body, size_t len, char *out, size_t outlen,
		  size_t *out_len)
{
	json_error_t jerr;
	json_t *root = NULL;
	enum bg_code code = BG_CODE_BAD_MESSAGE;
	struct bg_msg **msgs = NULL, *one;
	size_t n = 0, i;
	char err[200], what[240];
	const char *message = err;
	unsigned int flags = bg_bus_wants_body(srv->bus) ? BG_PROTO_BODY : 0;
	bool batch;
	int rc = BG_OK;

	for (i = 0; i < len && strchr(" \t\r\n", body[i]) != NULL; i++)
		;
	if (i < len && body[i] == '{') {
		/* One broadcast: the usual case, built without a tree. */
		one = bg_proto_broadcast_text_opt(body, len, NULL, flags,
						  &code, err, sizeof(err));
		if (one == NULL)
			goto bad;
		msgs = &one;
		n = 1;
		batch = false;
		goto publish;
	}
	root = json_loadb(body ? body : "", len, JSON_REJECT_DUPLICATES,
			  &jerr);
	if (root == NULL) {
		snprintf(err, sizeof(err), "invalid JSON: %s", jerr.text);
		goto bad;
	}
	batch = json_is_array(root);
	n = batch ? json_array_size(root) : 1;
	if (n == 0) {
		snprintf(err, sizeof(err), "an empty batch: send a broadcast "
			 "object, or an array of them");
		goto bad;
	}
	msgs = calloc(n, sizeof(*msgs));
	if (msgs == NULL) {
		code = BG_CODE_INTERNAL;
		snprintf(err, sizeof(err), "out of memory");
		goto bad;
	}
	/* A batch is checked whole before any of it is published. */
	for (i = 0; i < n; i++) {
		msgs[i] = bg_proto_broadcast_opt(batch ?
						 json_array_get(root, i) :
						 root, NULL, flags, &code,
						 err, sizeof(err));
		if (msgs[i] == NULL) {
			if (batch) {
				snprintf(what, sizeof(what), "item %zu: %s",
					 i, err);
				message = what;
			}
			goto bad;
		}
	}
	json_decref(root);
publish:
	for (i = 0; i < n; i++) {
		if ((rc = bg_bus_publish(srv->bus, msgs[i])) != BG_OK)
			break;
	}
	if (i < n) {
		unsigned int status = refused(srv, rc, batch ? (long)i : -1,
					      out, outlen, out_len);
		for (size_t j = i; j < n; j++)
			bg_msg_unref(msgs[j]);
		if (msgs != &one)
			free(msgs);
		return status;
	}
	if (msgs != &one)
		free(msgs);
	if (batch)
		*out_len = (size_t)snprintf(out, outlen, "{\"status\":"
					    "\"accepted\",\"count\":%zu}", n);
	else
		*out_len = (size_t)snprintf(out, outlen, "{\"status\":"
					    "\"accepted\"}");
	return 202;
bad:
	if (msgs != NULL && msgs != &one) {
		for (i = 0; i < n; i++)
			if (msgs[i] != NULL)
				bg_msg_unref(msgs[i]);
		free(msgs);
	}
	json_decref(root);
	bg_stat_add(&st->broadcasts_rejected, 1);
	*out_len = error_body(out, outlen, bg_code_name(code), message, -1);
	return code == BG_CODE_INTERNAL ? 500 : 400;
}

/* 0 when a POST /broadcast on this port may go on, else the answer given.
 * Decided from the head alone: without [http] api_key the endpoint is on
 * the API listener only; with one, the request must carry it. */
static int
check_auth(struct bg_worker *w, struct lws *wsi, bool *answered)
{
	const char *key = bg_server_cfg(w->srv)->api_key;
	char h[512];
	unsigned int st;

	*answered = true;
	if (key[0] == '\0')
		return respond_error(wsi, 404, "not_found", "POST /broadcast "
				     "is served on the API listener ([http] "
				     "api_listen); on this port it needs "
				     "[http] api_key", true);
	if (lws_hdr_copy(wsi, h, sizeof(h), WSI_TOKEN_HTTP_AUTHORIZATION) <=
	    0)
		h[0] = '\0';
	st = bg_http_check_key(key, h);
	if (st != 0)
		bg_stat_add(&w->stats.http_auth_failures, 1);
	if (st == 401)
		return respond_error(wsi, 401, "unauthorized", "this "
				     "endpoint needs Authorization: Bearer "
				     "<api_key>", true);
	if (st == 403)
		return respond_error(wsi, 403, "forbidden", "wrong API key",
				     true);
	*answered = false;
	return 0;
}

/*
 * Takes c->post and answers the POST, then closes the connection
 * ("Connection: close"). libwebsockets 4.1 mis-frames HTTP/1.1 requests
 * pipelined behind a POST body (the next request's head is delivered as the
 * following body and the worker spins), so a POST never shares its
 * connection here; clients open a new one, as RFC 7230 §6.3.2 has them
 * do. The API listener (server/api.c) keeps its connections alive.
 */
static int
finish_broadcast(struct bg_worker *w, struct lws *wsi, struct bg_conn *c)
{
	struct bg_post *post = c->post;
	size_t n = 0;
	char out[2048];
	unsigned int status;

	c->post = NULL;
	lws_set_timer_usecs(wsi, LWS_SET_TIMER_USEC_CANCEL);
	status = bg_http_broadcast(w->srv, &w->stats,
				   post != NULL ? post->data : "",
				   post != NULL ? post->len : 0, out,
				   sizeof(out), &n);
	free(post);
	return respond(wsi, status, JSON_TYPE, out, n, true);
}

static int
start_post(struct bg_worker *w, struct lws *wsi, struct bg_conn *c,
	   const char *uri)
{
	size_t max = bg_server_cfg(w->srv)->max_message_size;
	char cl[32];
	char *end;
	unsigned long long n;
	bool answered;
	int rc;

	if (strcmp(uri, "/broadcast") != 0)
		return respond_error(wsi, 404, "not_found", "no such "
				     "endpoint", true);
	rc = check_auth(w, wsi, &answered);
	if (answered)
		return rc;
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
	free(c->post);
	c->post = malloc(sizeof(*c->post) + n + 1);
	if (c->post == NULL)
		return -1;
	c->post->len = 0;
	c->post->cap = n;
	/* lws restarts its own timeout at every body chunk, so a trickle
	 * would hold the connection forever: the body gets one deadline. */
	lws_set_timer_usecs(wsi, (lws_usec_t)
			    bg_server_cfg(w->srv)->body_timeout *
			    LWS_US_PER_SEC);
	return 0;
}

int
bg_http_body_timeout(struct bg_worker *w, struct lws *wsi, struct bg_conn *c)
{
	if (c == NULL || c->post == NULL)
		return 0;
	free(c->post);
	c->post = NULL;
	return respond_error(wsi, 408, "timeout", "the request body did not "
			     "arrive within [http] body_timeout", true);
}

static bool
is_method(struct lws *wsi, enum lws_token_indexes t)
{
	return lws_hdr_total_length(wsi, t) > 0;
}

/* A GET or HEAD that announces a body: lws would discard it with a
 * timeout restarted at every chunk, so a trickle could hold the
 * connection; such a request is refused and the connection closed. */
static bool
announces_body(struct lws *wsi)
{
	char cl[32];

	if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0)
		return true;
	return lws_hdr_copy(wsi, cl, sizeof(cl),
			    WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0 &&
	       strspn(cl, "0") != strlen(cl);
}

int
bg_http_callback(struct bg_worker *w, struct lws *wsi, int reason,
		 struct bg_conn *c, void *in, size_t len)
{
	const char *uri = in;
	const struct bg_asset *asset;

	/* A client that leaves before a whole request has no session data
	 * yet: lws still reports the close. */
	if (c == NULL)
		return reason == LWS_CALLBACK_HTTP ? -1 : 0;
	switch (reason) {
	case LWS_CALLBACK_HTTP:
		bg_stat_add(&w->stats.http_requests, 1);
		c->http_start_us = bg_mono_us();
		if (is_method(wsi, WSI_TOKEN_POST_URI))
			return start_post(w, wsi, c, uri);
		if (!is_method(wsi, WSI_TOKEN_GET_URI) &&
		    !is_method(wsi, WSI_TOKEN_HEAD_URI))
			return respond_error(wsi, 405, "bad_message",
					     "method not allowed", true);
		if (announces_body(wsi))
			return respond_error(wsi, 400, "bad_message", "a GET "
					     "or HEAD request has no body",
					     true);
		if (strcmp(uri, "/health") == 0)
			return serve_health(w, wsi, false);
		if (strcmp(uri, "/health/live") == 0)
			return serve_health(w, wsi, true);
		if ((asset = bg_asset_find(uri)) != NULL)
			return bg_asset_serve(wsi, asset);
		if (strcmp(uri, bg_server_cfg(w->srv)->path) == 0)
			return respond_error(wsi, 426, "bad_message",
					     "this is a WebSocket endpoint",
					     false);
		return respond_error(wsi, 404, "not_found", "no such "
				     "endpoint", false);
	case LWS_CALLBACK_HTTP_BODY:
		if (c->post == NULL || c->post->len + len > c->post->cap)
			return respond_error(wsi, 413, "bad_message", "the "
					     "body is larger than "
					     "max_message_size", true);
		memcpy(c->post->data + c->post->len, in, len);
		c->post->len += len;
		return 0;
	case LWS_CALLBACK_HTTP_BODY_COMPLETION:
		if (c->post == NULL)
			return -1;
		return finish_broadcast(w, wsi, c);
	case LWS_CALLBACK_CLOSED_HTTP:
	case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
		free(c->post);
		c->post = NULL;
		return 0;
	}
	return 0;
}
