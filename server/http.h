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

#endif
