/*
 * history.h - history and recovery (PROTOCOL.md, history and recovery):
 * the positions of broadcasts on history channels, the recent
 * publications of each such channel kept in memory, and the requests
 * (subscribe with or without "recover", the history event, GET
 * /api/history) answered from them.
 *
 * Threads: the store (struct bg_history) is the bus thread's alone: it
 * sees every broadcast in order, numbers it (standalone) or takes its
 * stream offset (RabbitMQ), and keeps it. bg_history_match is pure and
 * runs anywhere (the regex is compiled once, before any thread starts).
 * A request is a struct bg_hist_req inside a struct bg_msg (m->hist):
 * the asker fills it and hands the message to bg_bus_request; the bus
 * answers it in place and pushes the same message into the asking
 * worker's broadcast ring, in order with the live broadcasts, so what
 * follows the answer in the ring is exactly what came after it. The
 * server API's history command (server/cmd_history.c) asks the same
 * way from the bus thread and is called back there (answered).
 */
#ifndef BG_HISTORY_H
#define BG_HISTORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/bg.h"
#include "common/config.h"
#include "common/histreq.h"
#include "common/msg.h"

struct bg_history;

/* The store for cfg; its epoch is new (standalone: fresh at each start;
 * with RabbitMQ the bus replaces it with the stream's). NULL on failure
 * (logged). Main thread. */
struct bg_history *bg_history_new(const struct bg_config *cfg);
void bg_history_free(struct bg_history *h);

/* True when channel history is configured at all. Any thread. */
bool bg_history_on(const struct bg_history *h);

/* True when channel `name` keeps history. Pure; any thread. */
bool bg_history_match(const struct bg_history *h, const char *name);

/*
 * Bus thread: m (a broadcast about to be fanned out) takes position
 * `offset` (0: standalone, the store numbers it itself when it names a
 * history channel). The frames of its history channels get "offset",
 * and it is kept for each of them. Returns the position it took, 0 when
 * none (no history channel). The caller then fans m out (or, catching
 * up on the stream at start, only drops its reference).
 */
uint64_t bg_history_record(struct bg_history *h, struct bg_msg *m,
			   uint64_t offset);

/* Bus thread: a position the broker gave that is no broadcast for
 * clients (rejected, a marker): it still moves the top. */
void bg_history_advance(struct bg_history *h, uint64_t offset);

/*
 * Bus thread: answers r in place. Returns false when it must wait: the
 * client names a later position of this epoch than the node has seen
 * (the node is behind the stream); the bus asks again after later
 * deliveries, and with force once r->wait_until_ms has passed.
 */
bool bg_history_answer(struct bg_history *h, struct bg_hist_req *r,
		       bool force);

/* Bus thread: drops what is past [history] ttl. */
void bg_history_expire(struct bg_history *h, uint64_t now_ms);

/* Bus thread: the epoch and the first position the node knows of (the
 * stream says where it starts; standalone: 0). Clears the store. */
void bg_history_reset(struct bg_history *h, const char *epoch,
		      uint64_t floor);

/* Bus thread: names the epoch (the stream's), keeping what is kept. */
void bg_history_set_epoch(struct bg_history *h, const char *epoch);

/* Bus thread: the current epoch. */
const char *bg_history_epoch(const struct bg_history *h);

/* Bus thread: the latest position seen. */
uint64_t bg_history_top(const struct bg_history *h);

/*
 * Reading the stream back (bus.c): true when r names a position of this
 * epoch older than what memory keeps for its channel (*floor: memory has
 * every publication after it). Bus thread.
 */
bool bg_history_behind_memory(const struct bg_history *h,
			      const struct bg_hist_req *r, uint64_t *floor);

/* Frames m (read back from the stream at offset) as a live broadcast
 * would be, without keeping it; the index of channel's frame, or -1
 * when m is not on that history channel. Bus thread. */
int bg_history_frame_for(const struct bg_history *h, struct bg_msg *m,
			 uint64_t offset, const char *channel);

/* Puts older[0..n) (references taken over, oldest first) before r's
 * publications, keeping the first r->limit (HISTORY, API). Bus thread. */
void bg_history_prepend(struct bg_hist_req *r, struct bg_hist_pub *older,
			uint32_t n);

/* /metrics lines (kept publications, bytes), snprintf-style. Any
 * thread. */
int bg_history_metrics(const struct bg_history *h, char *buf, size_t size);

#endif
