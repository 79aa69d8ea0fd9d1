/*
 * http.h - the plain HTTP side of the public port (/health, /health/live,
 * /bagou.js, POST /broadcast with the API key, the checks made before a
 * WebSocket upgrade), and what the API listener shares with it.
 * lws parts: worker threads, inside libwebsockets callbacks. bg_http_*
 * helpers below them: any worker or the API thread.
 */
#ifndef BG_HTTP_H
#define BG_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct lws;
struct bg_worker;
struct bg_conn;
struct bg_server;
struct bg_stats;

#define BG_HTTP_METRICS_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* LWS_CALLBACK_HTTP_CONFIRM_UPGRADE (upgrade: the Upgrade header): 0 to
 * accept (or, for anything but websocket, to serve plain HTTP/1.1), -1
 * after answering an HTTP status: 404 wrong path, 426 version not 13, 400
 * bad key, Host, Connection or subprotocol list, 403 Origin, 503
 * stopping. */
int bg_http_confirm_upgrade(struct bg_worker *w, struct lws *wsi,
			    const char *upgrade);

/* Every LWS_CALLBACK_HTTP* reason; returns what lws expects. */
int bg_http_callback(struct bg_worker *w, struct lws *wsi, int reason,
		     struct bg_conn *c, void *in, size_t len);

/* LWS_CALLBACK_TIMER on a plain HTTP connection: a POST body past
 * [http] body_timeout is answered 408; -1 then (close), else 0. */
int bg_http_body_timeout(struct bg_worker *w, struct lws *wsi,
			 struct bg_conn *c);

/*
 * A POSTed broadcast body (PROTOCOL.md §4; a JSON array is a batch, all of
 * it validated before any is published, then handed to the bus in order):
 * returns the HTTP status (202, 400, 500 or 503) and writes the JSON
 * answer to out (*out_len bytes, NUL-terminated). A 400 adds one to
 * st->broadcasts_rejected: st must be the calling thread's own stats.
 * A refusal of the bus (bg_bus_publish != BG_OK: link down, outbox or
 * workers' queues full) is a 503 "unavailable", except BG_ERR (never
 * publishable: 400); for a batch it says how many went out first
 * ("published"). Any worker or the API thread.
 */
unsigned int bg_http_broadcast(struct bg_server *srv, struct bg_stats *st,
			       const char *body, size_t len, char *out,
			       size_t outlen, size_t *out_len);

/* [log] access: logs one request at info level: "access: LISTENER PEER
 * METHOD PATH STATUS BYTES MS ms" (control bytes in path shown as '?',
 * long paths cut). start_us: bg_mono_us when the head was in. Any
 * thread. */
void bg_http_access_log(const char *listener, const char *peer,
			const char *method, const char *path,
			unsigned int status, size_t bytes, uint64_t start_us);

/* 0 when authorization ("Bearer KEY", may be NULL) carries key (not
 * empty), 401 when it is missing or not a Bearer credential, 403 when the
 * key is wrong. Constant time in the key's bytes. */
unsigned int bg_http_check_key(const char *key, const char *authorization);

/* {"error":{"code":code,"message":message}} into out; its length. */
size_t bg_http_error_body(char *out, size_t outlen, const char *code,
			  const char *message);

/* The Prometheus text of PROTOCOL.md §7, malloc'd (*len bytes); NULL when
 * out of memory. Reads every counter atomically. Any thread. */
char *bg_http_metrics(const struct bg_server *srv, size_t *len);

/*
 * The body of /health (live: /health/live) into out; its length. *status
 * gets the HTTP status: /health/live is always 200; /health is 503, with
 * "status":"draining" or "unavailable" and a "reason", while the node
 * drains after SIGTERM or while RabbitMQ is configured but not connected
 * (PROTOCOL.md §8), else 200 "ok". Any thread.
 */
size_t bg_http_health(const struct bg_server *srv, bool live, char *out,
		      size_t outlen, unsigned int *status);

#endif
