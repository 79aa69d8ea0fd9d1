/*
 * http.h - the plain HTTP side of the port: /health, /metrics, /bagou.js,
 * POST /broadcast, and the checks made before a WebSocket upgrade.
 * Worker threads, inside libwebsockets callbacks.
 */
#ifndef BG_HTTP_H
#define BG_HTTP_H

#include <stddef.h>

struct lws;
struct bg_worker;
struct bg_conn;
struct bg_server;

/* LWS_CALLBACK_HTTP_CONFIRM_UPGRADE: 0 to accept, -1 after answering
 * 404 (wrong path). */
int bg_http_confirm_upgrade(struct bg_worker *w, struct lws *wsi);

/* Every LWS_CALLBACK_HTTP* reason; returns what lws expects. */
int bg_http_callback(struct bg_worker *w, struct lws *wsi, int reason,
		     struct bg_conn *c, void *in, size_t len);

/* The JSON body of GET /health into buf; its length, or -1 when it does
 * not fit. Any thread (the acceptor answers /health at the limits). */
int bg_http_health_body(const struct bg_server *srv, char *buf,
			size_t size);

#endif
