/*
 * bench.h - shared state of bagou-bench, the load generator for
 * bagou-server (bench/README.md says what it measures).
 *
 * One process, one thread, one libevent loop: every function declared
 * here runs on that thread, so nothing is locked and nothing is atomic.
 * bagou-bench.c owns the options, the phases and the report; bench_ws.c
 * the WebSocket client (subscribers, and the publishers of --publish ws);
 * bench_pub.c the publisher slots (HTTP POST /broadcast or WebSocket
 * client publishes) and the window of broadcasts in flight; bench_util.c
 * the clock, the latency histogram, SHA-1, base64 and the tiny JSON field
 * scanner.
 */
#ifndef BG_BENCH_H
#define BG_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <netinet/in.h>

#define BG_BENCH_OK	0
#define BG_BENCH_ERR	-1

#define BG_BENCH_MAX_PUBS	16	/* publisher slots */
#define BG_BENCH_MAX_DEPTH	64	/* publishes in flight per ws slot */
#define BG_BENCH_NS		1000000000LL

/*
 * libevent priorities: publisher sockets run before subscriber sockets
 * that are ready in the same loop pass, so a publisher's connect, answer
 * and next send do not wait for a whole pass of subscriber reads.
 */
#define BG_PRIO_PUB	0
#define BG_PRIO_SUB	1
#define BG_PRIOS	2

/* Log-linear histogram: 2^6 sub-buckets per power of two, ~1.6 % error. */
#define BG_HIST_BITS	6
#define BG_HIST_SUB	(1u << BG_HIST_BITS)
#define BG_HIST_BUCKETS	(BG_HIST_SUB * (65 - BG_HIST_BITS))

/* What the subscribers speak (--proto). */
enum bg_proto {
	BG_PROTO_BAGOU,		/* Bagou's JSON events (docs/PROTOCOL.md) */
	BG_PROTO_SOCKETIO,	/* Socket.IO 4 over the engine.io 4 WebSocket
				 * transport (bench/peers/README.md) */
};

enum bg_bench_mode {
	BG_BENCH_FANOUT,
	BG_BENCH_IDLE,
};

/* How the publishers send (--publish). */
enum bg_pub_kind {
	BG_PUB_HTTP,		/* POST /broadcast, one connection per POST */
	BG_PUB_WS,		/* "publish" events on WebSocket connections */
	BG_PUB_EXTERNAL,	/* another process publishes (e.g. over AMQP,
				 * bench/amqp_pub.py); the bench only
				 * subscribes and measures */
};

enum bg_bench_phase {
	BG_BENCH_SETUP,		/* opening and subscribing connections, then
				 * (ws) the publisher connections */
	BG_BENCH_RUN,		/* publishing (fanout) */
	BG_BENCH_DRAIN,		/* waiting for the last deliveries */
	BG_BENCH_HOLD,		/* holding idle connections (idle) */
	BG_BENCH_DONE,		/* reporting; closes are no failures */
};

enum bg_ws_state {
	BG_WS_IDLE,		/* not started */
	BG_WS_CONNECTING,	/* TCP connect in progress */
	BG_WS_HANDSHAKE,	/* upgrade request sent, waiting for 101 */
	BG_WS_OPEN,		/* waiting for the server's "connect" event */
	BG_WS_SUBSCRIBING,	/* subscribe sent, waiting for its callback */
	BG_WS_SUBSCRIBED,	/* a publisher: got its connect event */
	BG_WS_CLOSED,
};

enum bg_bcast_state {
	BG_BCAST_SENT,		/* POST or publish written, no answer yet */
	BG_BCAST_ACCEPTED,	/* answered 202, or callback success */
	BG_BCAST_FAILED,	/* refused, or no answer at all */
};

struct bg_hist {
	uint64_t count;
	uint64_t max;
	uint64_t bucket[BG_HIST_BUCKETS];
};

/* One WebSocket connection: a subscriber, or a publisher (pub set). */
struct bg_ws {
	struct bg_bench *b;
	struct bg_pub *pub;	/* the publisher slot it serves, or NULL */
	int fd;
	uint8_t state;		/* enum bg_ws_state */
	uint8_t fragop;		/* opcode of a fragmented message, or 0 */
	struct event rev;
	struct event wev;
	int64_t t_start;	/* connect() time, for the setup timeout */
	char *rbuf;		/* bytes of an incomplete frame */
	size_t rlen, rcap;
	char *wbuf;		/* bytes the socket did not take yet */
	size_t wlen, wcap;
	char *frag;		/* fragments of a message so far */
	size_t fraglen;
	uint64_t unique;	/* deliveries in publisher order */
	unsigned ch;		/* channel index, 0..channels-1 */
	int64_t last_ps[BG_BENCH_MAX_PUBS];	/* per publisher, -1 none */
	char key[32];		/* Sec-WebSocket-Key, base64 */
};

/* One broadcast of the window (fanout with --window). */
struct bg_bcast {
	uint64_t seq;
	int64_t sent_ns;
	uint32_t delivered;	/* subscribers that received it */
	uint8_t state;		/* enum bg_bcast_state */
};

/*
 * One publisher slot.  HTTP: one request in flight, and a new connection
 * for every POST, because the server answers each POST with "Connection:
 * close" and closes (the next connection is opened as soon as the old
 * one is closed, so it is usually ready before it is needed).  WebSocket:
 * one connection, up to --depth publishes in flight, matched to their
 * callbacks by callbackId (the global sequence number).
 */
struct bg_pub {
	struct bg_bench *b;
	unsigned id;
	uint8_t state;		/* BG_PUB_* in bench_pub.c */
	bool opened;		/* has had a connection: next one reconnects */
	bool self_close;	/* closing its own ws: not a failure */
	struct event retry;
	uint64_t q[BG_BENCH_MAX_DEPTH];	/* seqs awaiting an answer */
	unsigned qlen;
	int64_t ps;		/* next per-publisher sequence number */
	int64_t t_progress;	/* last answer, or send into an empty q */
	int64_t t_sent[BG_BENCH_MAX_DEPTH];	/* send time of q[i] */
	int64_t t_state;	/* when state last changed */
	unsigned errors;	/* failures since the last answer */
	/* HTTP */
	int fd;
	bool eof_body;		/* head response's body ends at EOF */
	int eof_status;		/* and its status */
	struct event rev;
	struct event wev;
	char *out;		/* request bytes the socket did not take yet */
	size_t outlen, outcap;
	char *in;		/* response bytes not parsed yet */
	size_t inlen, incap;
	/* WebSocket */
	struct bg_ws ws;
	char client_id[72];	/* from the connect event */
	size_t client_id_len;
	int64_t id_since_ps;	/* first ps published as client_id */
};

struct bg_bench {
	struct event_base *base;

	/* options */
	int mode;			/* enum bg_bench_mode */
	struct sockaddr_in ws_addr;
	char ws_hostport[64];		/* Host: header */
	char ws_path[256];
	struct sockaddr_in http_addr;
	char http_hostport[64];
	char channel[256];
	char event[64];
	unsigned channels;		/* 1: channel; N: channel-0..N-1 */
	int proto;			/* enum bg_proto */
	unsigned clients;
	double rate;			/* broadcasts/s, 0 = closed loop */
	double duration;
	size_t size;
	double connect_rate;
	unsigned max_pending;		/* handshakes at once */
	double conn_timeout;
	int publish;			/* enum bg_pub_kind */
	unsigned publishers;		/* slots, 1..BG_BENCH_MAX_PUBS */
	unsigned depth;			/* in flight per ws slot */
	unsigned window;		/* broadcasts not fully delivered */
	double drain;
	double hold;
	double max_fail_pct;
	const char *ready_file;
	const char *done_file;		/* --publish external: the count */
	bool span_deliveries;		/* external without times: rates over
					 * first to last delivery */
	bool quiet;

	int phase;			/* enum bg_bench_phase */
	int exit_code;
	bool interrupted;
	int64_t t_setup, t_ready, t_run, t_run_end, t_end;

	/* subscribers */
	struct bg_ws *ws;
	unsigned started, pending, live, subscribed;
	uint64_t fail_connect, fail_handshake, fail_subscribe, fail_timeout;
	uint64_t disconnects;
	uint64_t pings, server_errors, binary, other_msgs, bad_ticks;
	unsigned close_code[8], close_count[8];	/* codes from the server */
	unsigned logged;			/* rate limit of warnings */

	/* per channel (channels entries): live subscribers, accepted */
	unsigned *ch_live;
	unsigned *ch_subscribed;	/* ever subscribed */
	uint64_t *ch_accepted;

	/* deliveries */
	uint64_t deliveries, unique, out_of_order, gaps;
	int64_t t_first_delivery, t_last_delivery;
	struct bg_hist lat;			/* nanoseconds */

	/* publishers */
	struct bg_pub pubs[BG_BENCH_MAX_PUBS];
	bool pubs_started;
	unsigned pub_rr;
	char *body;				/* scratch for one broadcast */
	uint64_t next_seq;			/* broadcasts sent */
	uint64_t accepted, rejected, unanswered, reconnects;
	uint64_t keepalive_answers;		/* HTTP answers without close */
	uint64_t close_timeouts;		/* server never closed */
	uint64_t from_checked, from_mismatch;	/* ws: "from" field */
	uint64_t pub_ticks;			/* ticks a publisher received */
	uint64_t window_timeouts;
	struct bg_hist ack;			/* send to answer, ns */
	struct bg_hist conn;			/* HTTP connect(), ns */
	int first_status;
	char first_error[160];
	struct bg_bcast *ring;			/* window slots */
	uint64_t low;				/* oldest incomplete seq */
};

/* bench_util.c */
int64_t bg_bench_now(void);
void bg_bench_seed(void);
uint64_t bg_bench_rand(void);
void bg_hist_add(struct bg_hist *h, uint64_t v);
/* Value at quantile q (0..1) of h, within bucket precision; 0 if empty. */
uint64_t bg_hist_quantile(const struct bg_hist *h, double q);
void bg_sha1(const void *data, size_t len, uint8_t out[20]);
/* Writes 4 * ceil(len / 3) characters and a NUL to out. */
void bg_base64(const uint8_t *in, size_t len, char *out);

/* Sends as much of buf[0, *len) as the non-blocking socket takes and
 * moves the rest to the front. 0 (done or EAGAIN: *len says what is
 * left), or -1 with errno set on a real error. */
int bg_send_pending(int fd, char *buf, size_t *len);
/*
 * Scanners for the flat messages the bench exchanges: find "key" (qkey
 * includes the quotes) followed by a colon and read an integer, a
 * string without escapes, or true.  False when absent or of another
 * type.
 */
bool bg_json_int(const char *p, size_t len, const char *qkey, int64_t *v);
bool bg_json_str(const char *p, size_t len, const char *qkey,
		 const char **s, size_t *slen);
bool bg_json_true(const char *p, size_t len, const char *qkey);

/*
 * The name of channel k into out (size n): --channel itself when there
 * is one channel, else "<--channel>-<k>".  Returns its length.
 */
size_t bg_bench_channel(const struct bg_bench *b, unsigned k, char *out,
			size_t n);
/* The channel index of broadcast seq: publishers go round the channels. */
unsigned bg_bench_channel_of(const struct bg_bench *b, uint64_t seq);

/* bench_ws.c */
/*
 * Starts connecting c (zeroed but for c->b, c->fd = -1 and, for a
 * publisher, c->pub).  Failures are reported through
 * bg_bench_on_closed() like any later one.
 */
void bg_ws_start(struct bg_ws *c);
/* Fails c if it has not subscribed (or, a publisher, got its connect
 * event) within the timeout. */
void bg_ws_expire(struct bg_ws *c, int64_t now);
/* Sends one text message; BG_BENCH_ERR if c ended meanwhile. */
int bg_ws_send_text(struct bg_ws *c, const char *p, size_t len);
/* Sends a close frame (best effort) and releases c. */
void bg_ws_shutdown(struct bg_ws *c);

/* bench_pub.c */
/* Allocates the slots and opens their first connections. */
int bg_pub_start(struct bg_bench *b);
/* 1 when publishing can start, 0 not yet, BG_BENCH_ERR when every
 * publisher failed to connect. */
int bg_pub_ready(const struct bg_bench *b);
/* Sends what the rate, depth and window allow now. */
void bg_pub_pump(struct bg_bench *b);
/* Counts a delivery of seq for the window. */
void bg_pub_delivered(struct bg_bench *b, uint64_t seq);
/* Moves the window past complete broadcasts; pumps if it moved. */
void bg_pub_advance(struct bg_bench *b);
/* Periodic: connect, answer, close and window timeouts. */
void bg_pub_check(struct bg_bench *b, int64_t now);
/* True when no request awaits an answer. */
bool bg_pub_idle(const struct bg_bench *b);
void bg_pub_stop(struct bg_bench *b);
/* From a publisher's WebSocket connection (bench_ws.c). */
void bg_pub_ws_ready(struct bg_pub *p, const char *id, size_t idlen);
void bg_pub_ws_answer(struct bg_pub *p, const char *cbid, size_t cblen,
		      const char *msg, size_t len);
void bg_pub_ws_closed(struct bg_pub *p, const char *why);

/* bagou-bench.c: events from the connections */
void bg_bench_on_subscribed(struct bg_ws *c);
void bg_bench_on_tick(struct bg_ws *c, const char *p, size_t len,
		      int64_t now);
void bg_bench_on_closed(struct bg_ws *c, int old_state, const char *why);
void bg_bench_on_close_code(struct bg_bench *b, unsigned code);
/* A warning on stderr, at most a few dozen per run. */
void bg_bench_warn(struct bg_bench *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#endif
