/*
 * api.h - the API listener ([http] api_listen, PROTOCOL.md §8): POST
 * /broadcast (one broadcast or a batch), GET /metrics, GET /health and
 * /health/live over HTTP/1.1 with keep-alive and pipelining, on its own
 * thread and event_base.
 *
 * Threads: bg_api_new/start/stop_free run on main. The API thread owns
 * its connections; it reads other threads' counters only atomically, and
 * hands broadcasts to the bus through bg_http_broadcast, the path the
 * workers use. The getters run on any thread (a worker serving /health,
 * the API thread serving /metrics).
 */
#ifndef BG_API_H
#define BG_API_H

#include <stddef.h>
#include <stdint.h>

struct bg_server;
struct bg_stats;
struct bg_api;

/* Most connections open at once on the API listener; more are closed at
 * once (logged at most once a second). */
#define BG_API_MAX_CONNS 1024
/* Seconds a keep-alive connection may wait for its next request. */
#define BG_API_IDLE_TIMEOUT 60

/* Binds and listens on cfg's api_host:api_port. NULL with err set
 * ("cannot listen on 127.0.0.1:9001 (API): Address already in use").
 * Main thread. */
struct bg_api *bg_api_new(struct bg_server *srv, char *err, size_t errlen);

/* Starts the thread. BG_OK or BG_ERR (logged). Main thread. */
int bg_api_start(struct bg_api *a);

/* Stops the thread, closes every API connection and the socket; the
 * counters stay readable (workers serving /health may still read them).
 * NULL and a second call are fine. Main thread. */
void bg_api_stop(struct bg_api *a);

/* Stops if needed and frees, once no worker can read the counters any
 * more. NULL is fine. Main thread. */
void bg_api_free(struct bg_api *a);

/* The API thread's own counters (http_requests, http_auth_failures,
 * broadcasts_rejected): API thread writes, any thread reads atomically. */
const struct bg_stats *bg_api_stats(const struct bg_api *a);

/* Open connections, and connections accepted since start. Any thread. */
uint64_t bg_api_connections(const struct bg_api *a);
uint64_t bg_api_connections_total(const struct bg_api *a);

#endif
