/*
 * bench_pub.c - the publishers of bagou-bench (--publishers K slots) and
 * the window that bounds broadcasts not yet delivered to every subscriber
 * (--window).
 *
 * --publish http: each slot POSTs to /broadcast on the server's API
 * listener ([http] api_listen) with one request in flight, on one
 * HTTP/1.1 keep-alive connection: no handshake, no TIME_WAIT per POST
 * (counted in keepalive_answers).  Should a server answer with
 * "Connection: close" (the public port does), the slot reads the answer,
 * waits for the server's FIN (the server closes first, so TIME_WAIT stays
 * on its side), closes, and at once opens the next connection with a
 * non-blocking connect().  A connection idle for more than STALE_NS is
 * replaced before use, so the server's idle timeout (60 s on the API
 * listener) cannot race with a POST.  Responses are read with
 * Content-Length, chunked, or body-until-close framing.
 *
 * --publish ws: each slot is a WebSocket connection (bench_ws.c) that
 * never subscribes and sends client publishes
 * {"event":"publish","data":{"channel":C,"event":E,"data":{...}},
 *  "callbackId":"SEQ"}, up to --depth in flight; the callback
 * {"success":true} is the accepted answer.
 *
 * Each broadcast carries its CLOCK_MONOTONIC send time "t", a global
 * sequence number "seq" (window slot), the slot id "p" and the slot's own
 * sequence "ps".  A slot sends a broadcast only after the previous one was
 * answered (HTTP), or on one ordered connection (ws), so "ps" order is
 * what the protocol promises: order per publisher, checked per
 * (subscriber, slot).  A slot whose connection fails fails its unanswered
 * requests and reconnects after 100 ms, up to MAX_ERRORS in a row.  Runs
 * only on the bench's single loop thread.
 */
#include "bench.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

enum {
	BG_PUB_OFF,		/* no connection, none wanted now */
	BG_PUB_CONNECTING,	/* TCP connect; ws: also the connect event */
	BG_PUB_OPEN,		/* connected: sends while qlen < depth */
	BG_PUB_CLOSING,		/* HTTP: answered, waiting for the close */
	BG_PUB_WAIT,		/* reconnect timer armed */
	BG_PUB_DEAD,		/* gave up */
};

#define HDR_MAX		16384
#define IN_MAX		(1u << 20)
#define MAX_ERRORS	10		/* in a row, then give up */
#define CONNECT_TIMEOUT	(5 * BG_BENCH_NS)
#define ANSWER_TIMEOUT	(5 * BG_BENCH_NS)
#define CLOSE_TIMEOUT	(1 * BG_BENCH_NS)	/* after Connection: close */
#define STALE_NS	(30 * BG_BENCH_NS)	/* idle HTTP conn: replace */
#define WINDOW_TIMEOUT	(2 * BG_BENCH_NS)

static void pub_connect(struct bg_pub *p);

static unsigned depth(const struct bg_pub *p)
{
	return p->b->publish == BG_PUB_WS ? p->b->depth : 1;
}

/* May slots open connections now? */
static bool connecting_allowed(const struct bg_bench *b)
{
	return b->phase == BG_BENCH_RUN ||
	       (b->phase == BG_BENCH_SETUP && b->pubs_started);
}

static void set_state(struct bg_pub *p, int state)
{
	p->state = (uint8_t)state;
	p->t_state = bg_bench_now();
}

/* An answer to seq: accepted, or refused with status (0: ws callback). */
static void note_answer(struct bg_bench *b, uint64_t seq, bool ok,
			int status, const char *body, size_t blen)
{
	struct bg_bcast *r = b->window ? &b->ring[seq % b->window] : NULL;
	int n = (int)(blen < 150 ? blen : 150);

	if (ok) {
		b->accepted++;
		b->ch_accepted[bg_bench_channel_of(b, seq)]++;
	} else {
		b->rejected++;
		if (!b->first_status && !b->first_error[0]) {
			b->first_status = status;
			snprintf(b->first_error, sizeof(b->first_error),
				 "%.*s", n, body);
		}
		if (status)
			bg_bench_warn(b, "POST /broadcast answered %d: %.*s",
				      status, n, body);
		else
			bg_bench_warn(b, "publish refused: %.*s", n, body);
	}
	if (r && r->seq == seq)
		r->state = ok ? BG_BCAST_ACCEPTED : BG_BCAST_FAILED;
}

/* Removes seq from p's queue, timing its answer; false if absent. */
static bool q_take(struct bg_pub *p, uint64_t seq, int64_t now)
{
	unsigned i;

	for (i = 0; i < p->qlen; i++) {
		if (p->q[i] != seq)
			continue;
		bg_hist_add(&p->b->ack, now > p->t_sent[i] ?
			    (uint64_t)(now - p->t_sent[i]) : 0);
		memmove(p->q + i, p->q + i + 1,
			(p->qlen - i - 1) * sizeof(*p->q));
		memmove(p->t_sent + i, p->t_sent + i + 1,
			(p->qlen - i - 1) * sizeof(*p->t_sent));
		p->qlen--;
		return true;
	}
	return false;
}

/* Every request of p that awaits an answer failed. */
static void fail_pending(struct bg_pub *p)
{
	struct bg_bench *b = p->b;
	unsigned i;

	for (i = 0; i < p->qlen; i++) {
		uint64_t seq = p->q[i];
		struct bg_bcast *r = b->window ?
			&b->ring[seq % b->window] : NULL;

		b->unanswered++;
		if (r && r->seq == seq)
			r->state = BG_BCAST_FAILED;
	}
	p->qlen = 0;
}

/*
 * p's connection is gone after an error: its unanswered requests failed;
 * reconnect in 100 ms, or give up after MAX_ERRORS in a row (a ws
 * publisher at once while setting up, so the setup stays bounded).
 */
static void pub_failed(struct bg_pub *p, const char *why)
{
	struct bg_bench *b = p->b;
	struct timeval tv = { 0, 100000 };

	fail_pending(p);
	set_state(p, BG_PUB_OFF);
	if (b->phase == BG_BENCH_DONE)
		return;
	bg_bench_warn(b, "publisher %u: %s", p->id, why);
	if ((b->phase == BG_BENCH_SETUP && b->publish == BG_PUB_WS) ||
	    ++p->errors >= MAX_ERRORS) {
		bg_bench_warn(b, "publisher %u: giving up", p->id);
		set_state(p, BG_PUB_DEAD);
	} else if (connecting_allowed(b)) {
		set_state(p, BG_PUB_WAIT);
		evtimer_add(&p->retry, &tv);
	}
	bg_pub_advance(b);
}

/* ------------------------------------------------------------ HTTP */

static void http_close(struct bg_pub *p)
{
	if (p->fd >= 0) {
		event_del(&p->rev);
		event_del(&p->wev);
		close(p->fd);
	}
	p->fd = -1;
	p->eof_body = false;
	p->outlen = p->inlen = 0;
}

static void http_broken(struct bg_pub *p, const char *why)
{
	http_close(p);
	pub_failed(p, why);
}

/* The connection ended cleanly: open the next one while running. */
static void http_recycle(struct bg_pub *p)
{
	http_close(p);
	if (p->b->phase == BG_BENCH_RUN)
		pub_connect(p);
	else
		set_state(p, BG_PUB_OFF);
}

static void http_flush(struct bg_pub *p)
{
	if (bg_send_pending(p->fd, p->out, &p->outlen) < 0) {
		http_broken(p, strerror(errno));
		return;
	}
	if (p->outlen)
		event_add(&p->wev, NULL);
}

static bool header_is(const char *line, size_t n, const char *name)
{
	size_t l = strlen(name);

	return n > l && line[l] == ':' && !strncasecmp(line, name, l);
}

static bool value_has(const char *line, size_t n, const char *word)
{
	size_t l = strlen(word), i;

	for (i = 0; i + l <= n; i++)
		if (!strncasecmp(line + i, word, l))
			return true;
	return false;
}

/* The chunked body at s: its length with trailers, 0 if incomplete. */
static ssize_t chunked_len(const char *s, size_t len)
{
	size_t off = 0;

	for (;;) {
		const char *eol = memmem(s + off, len - off, "\r\n", 2);
		char *end;
		unsigned long n;

		if (!eol)
			return 0;
		n = strtoul(s + off, &end, 16);
		if (end == s + off)
			return BG_BENCH_ERR;
		off = (size_t)(eol - s) + 2;
		if (!n)
			break;
		if (len - off < n + 2)
			return 0;
		off += n + 2;
	}
	/* Trailers, then an empty line. */
	for (;;) {
		const char *eol = memmem(s + off, len - off, "\r\n", 2);

		if (!eol)
			return 0;
		if (eol == s + off)
			return (ssize_t)(off + 2);
		off = (size_t)(eol - s) + 2;
	}
}

/*
 * Handles the response in p->in once it is complete.  Returns
 * BG_BENCH_ERR once the connection was dropped.
 */
static int http_parse(struct bg_pub *p)
{
	struct bg_bench *b = p->b;

	while (p->inlen) {
		const char *s = p->in, *e, *line, *eol, *body;
		size_t len = p->inlen, hlen, blen = 0;
		ssize_t clen = -1;
		bool chunked = false, closing = false;
		int status;

		if (p->state != BG_PUB_OPEN || !p->qlen) {
			http_broken(p, p->state == BG_PUB_CLOSING ?
				    "bytes after a Connection: close answer" :
				    "response to no request");
			return BG_BENCH_ERR;
		}
		e = memmem(s, len, "\r\n\r\n", 4);
		if (!e) {
			if (len > HDR_MAX) {
				http_broken(p, "response header too long");
				return BG_BENCH_ERR;
			}
			return BG_BENCH_OK;
		}
		hlen = (size_t)(e - s) + 4;
		if (len < 12 || strncmp(s, "HTTP/1.", 7) ||
		    (status = atoi(s + 9)) < 100) {
			http_broken(p, "malformed HTTP response");
			return BG_BENCH_ERR;
		}
		for (line = s; line < e; line = eol + 2) {
			size_t n;

			eol = memmem(line, (size_t)(e + 2 - line), "\r\n", 2);
			n = (size_t)(eol - line);
			if (header_is(line, n, "Content-Length"))
				clen = atol(line + 15);
			else if (header_is(line, n, "Transfer-Encoding"))
				chunked = value_has(line, n, "chunked");
			else if (header_is(line, n, "Connection"))
				closing = value_has(line, n, "close");
		}
		if (strncmp(s, "HTTP/1.0", 8) == 0)
			closing = true;
		body = s + hlen;
		if (status < 200 || status == 204 || status == 304) {
			blen = 0;
		} else if (chunked) {
			ssize_t n = chunked_len(body, len - hlen);

			if (n < 0) {
				http_broken(p, "malformed chunked body");
				return BG_BENCH_ERR;
			}
			if (!n)
				return BG_BENCH_OK;
			blen = (size_t)n;
		} else if (clen >= 0) {
			if (len - hlen < (size_t)clen)
				return BG_BENCH_OK;
			blen = (size_t)clen;
		} else {
			/* No framing: the body ends with the connection. */
			p->eof_body = true;
			p->eof_status = status;
			return BG_BENCH_OK;
		}
		if (status >= 200) {
			int64_t now = bg_bench_now();
			uint64_t seq = p->q[0];

			q_take(p, seq, now);
			note_answer(b, seq, status == 202, status, body, blen);
			p->errors = 0;
			p->t_progress = now;
			if (closing) {
				set_state(p, BG_PUB_CLOSING);
			} else {
				b->keepalive_answers++;
				set_state(p, BG_PUB_OPEN);
			}
		}
		p->inlen -= hlen + blen;
		memmove(p->in, p->in + hlen + blen, p->inlen);
	}
	return BG_BENCH_OK;
}

/* EOF, or a reset, from the server. */
static void http_eof(struct bg_pub *p, const char *err)
{
	struct bg_bench *b = p->b;
	char why[96];

	if (p->state == BG_PUB_OPEN && p->qlen && p->eof_body && !err) {
		/* The head response was framed by the close itself. */
		uint64_t seq = p->q[0];

		q_take(p, seq, bg_bench_now());
		note_answer(b, seq, p->eof_status == 202, p->eof_status,
			    "", 0);
		p->errors = 0;
		set_state(p, BG_PUB_CLOSING);
	}
	if (p->state == BG_PUB_CLOSING || !p->qlen) {
		/* Expected after Connection: close; or an idle one closed. */
		http_recycle(p);
		bg_pub_advance(b);
		return;
	}
	snprintf(why, sizeof(why), "%s before the answer",
		 err ? err : "connection closed by the server");
	http_broken(p, why);
}

static void http_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct bg_pub *p = arg;
	ssize_t n;

	for (;;) {
		if (p->incap - p->inlen < 4096) {
			size_t cap = p->incap ? p->incap * 2 : 16384;
			char *in;

			if (cap > IN_MAX || !(in = realloc(p->in, cap))) {
				http_broken(p, "response too large");
				return;
			}
			p->in = in;
			p->incap = cap;
		}
		n = recv(fd, p->in + p->inlen, p->incap - p->inlen, 0);
		if (n == 0) {
			http_eof(p, NULL);
			return;
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN) {
				http_eof(p, strerror(errno));
				return;
			}
			break;
		}
		p->inlen += (size_t)n;
		if (http_parse(p) < 0)
			return;
	}
	bg_pub_pump(p->b);
}

static void http_write_cb(evutil_socket_t fd, short what, void *arg)
{
	struct bg_pub *p = arg;

	if (p->state == BG_PUB_CONNECTING) {
		int err = 0;
		socklen_t len = sizeof(err);

		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
			err = errno;
		if (err) {
			char why[96];

			snprintf(why, sizeof(why), "connect() failed: %s",
				 strerror(err));
			http_broken(p, why);
			return;
		}
		bg_hist_add(&p->b->conn,
			    (uint64_t)(bg_bench_now() - p->t_state));
		set_state(p, BG_PUB_OPEN);
		event_add(&p->rev, NULL);
		bg_pub_pump(p->b);
		return;
	}
	http_flush(p);
}

static void http_connect(struct bg_pub *p)
{
	struct bg_bench *b = p->b;
	int one = 1;
	char why[96];

	p->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
		       0);
	if (p->fd < 0) {
		snprintf(why, sizeof(why), "socket() failed: %s",
			 strerror(errno));
		http_broken(p, why);
		return;
	}
	setsockopt(p->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	event_assign(&p->rev, b->base, p->fd, EV_READ | EV_PERSIST,
		     http_read_cb, p);
	event_assign(&p->wev, b->base, p->fd, EV_WRITE, http_write_cb, p);
	event_priority_set(&p->rev, BG_PRIO_PUB);
	event_priority_set(&p->wev, BG_PRIO_PUB);
	set_state(p, BG_PUB_CONNECTING);
	if (connect(p->fd, (struct sockaddr *)&b->http_addr,
		    sizeof(b->http_addr)) < 0 && errno != EINPROGRESS) {
		snprintf(why, sizeof(why), "connect() failed: %s",
			 strerror(errno));
		http_broken(p, why);
		return;
	}
	event_add(&p->wev, NULL);
}

/* ------------------------------------------------------- WebSocket */

static void ws_connect(struct bg_pub *p)
{
	memset(&p->ws, 0, sizeof(p->ws));
	p->ws.b = p->b;
	p->ws.pub = p;
	p->ws.fd = -1;
	p->client_id_len = 0;
	set_state(p, BG_PUB_CONNECTING);
	bg_ws_start(&p->ws);
}

/* Ends p's own ws connection after an error of ours. */
static void ws_fail(struct bg_pub *p, const char *why)
{
	p->self_close = true;
	bg_ws_shutdown(&p->ws);
	p->self_close = false;
	pub_failed(p, why);
}

void bg_pub_ws_ready(struct bg_pub *p, const char *id, size_t idlen)
{
	if (idlen >= sizeof(p->client_id))
		idlen = sizeof(p->client_id) - 1;
	memcpy(p->client_id, id, idlen);
	p->client_id[idlen] = '\0';
	p->client_id_len = idlen;
	p->id_since_ps = p->ps;
	set_state(p, BG_PUB_OPEN);
	bg_pub_pump(p->b);
}

void bg_pub_ws_answer(struct bg_pub *p, const char *cbid, size_t cblen,
		      const char *msg, size_t len)
{
	struct bg_bench *b = p->b;
	int64_t now = bg_bench_now();
	uint64_t seq = 0;
	size_t i;

	for (i = 0; i < cblen && i < 20; i++) {
		if (cbid[i] < '0' || cbid[i] > '9')
			break;
		seq = seq * 10 + (uint64_t)(cbid[i] - '0');
	}
	if (!cblen || i != cblen || !q_take(p, seq, now)) {
		bg_bench_warn(b, "publisher %u: callback for no publish: %.*s",
			      p->id, (int)(len < 160 ? len : 160), msg);
		return;
	}
	note_answer(b, seq, bg_json_true(msg, len, "\"success\""), 0, msg,
		    len);
	p->errors = 0;
	p->t_progress = now;
	if (seq == b->low)
		bg_pub_advance(b);
	bg_pub_pump(b);
}

void bg_pub_ws_closed(struct bg_pub *p, const char *why)
{
	if (p->self_close || p->b->phase == BG_BENCH_DONE)
		return;
	pub_failed(p, why ? why : "connection closed");
}

/* ---------------------------------------------------------- common */

static void pub_connect(struct bg_pub *p)
{
	if (p->opened)
		p->b->reconnects++;
	p->opened = true;
	if (p->b->publish == BG_PUB_WS)
		ws_connect(p);
	else
		http_connect(p);
}

static void pub_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct bg_pub *p = arg;

	if (connecting_allowed(p->b))
		pub_connect(p);
	else
		set_state(p, BG_PUB_OFF);
}

int bg_pub_start(struct bg_bench *b)
{
	unsigned i;

	if (b->window && !(b->ring = calloc(b->window, sizeof(*b->ring))))
		return BG_BENCH_ERR;
	if (!(b->body = malloc(b->size + 1024)))
		return BG_BENCH_ERR;
	for (i = 0; i < b->publishers; i++) {
		struct bg_pub *p = &b->pubs[i];

		p->b = b;
		p->id = i;
		p->fd = -1;
		p->ws.fd = -1;
		if (b->publish == BG_PUB_HTTP) {
			p->outcap = b->size + 1536;
			if (!(p->out = malloc(p->outcap)))
				return BG_BENCH_ERR;
		}
		evtimer_assign(&p->retry, b->base, pub_retry_cb, p);
	}
	b->pubs_started = true;
	for (i = 0; i < b->publishers; i++)
		pub_connect(&b->pubs[i]);
	return BG_BENCH_OK;
}

int bg_pub_ready(const struct bg_bench *b)
{
	unsigned i, open = 0;

	if (b->publish == BG_PUB_HTTP)
		return 1;	/* connections come and go with every POST */
	for (i = 0; i < b->publishers; i++) {
		if (b->pubs[i].state == BG_PUB_OPEN)
			open++;
		else if (b->pubs[i].state != BG_PUB_DEAD)
			return 0;
	}
	return open ? 1 : BG_BENCH_ERR;
}

/*
 * The data object of a broadcast, padded so that the POST body
 * {"event":E,"channel":C,"data":DATA} is about --size bytes; ws
 * publishes carry the same data object.
 */
static size_t compose_data(struct bg_pub *p, char *out, uint64_t seq,
			   int64_t t)
{
	struct bg_bench *b = p->b;
	size_t env = strlen(b->event) + strlen(b->channel) + 32, n, pad;

	n = (size_t)snprintf(out, 256, "{\"t\":%lld,\"seq\":%llu,\"p\":%u,"
			     "\"ps\":%lld,\"pad\":\"", (long long)t,
			     (unsigned long long)seq, p->id,
			     (long long)p->ps++);
	pad = b->size > env + n + 2 ? b->size - env - n - 2 : 0;
	memset(out + n, 'x', pad);
	n += pad;
	memcpy(out + n, "\"}", 2);
	return n + 2;
}

/* Takes the next sequence number for p and opens its window slot. */
static uint64_t claim(struct bg_pub *p, int64_t t)
{
	struct bg_bench *b = p->b;
	uint64_t seq = b->next_seq++;

	if (!p->qlen)
		p->t_progress = t;
	p->t_sent[p->qlen] = t;
	p->q[p->qlen++] = seq;
	if (b->window) {
		struct bg_bcast *r = &b->ring[seq % b->window];

		r->seq = seq;
		r->sent_ns = t;
		r->delivered = 0;
		r->state = BG_BCAST_SENT;
	}
	return seq;
}

static void http_send(struct bg_pub *p)
{
	struct bg_bench *b = p->b;
	int64_t t = bg_bench_now();
	uint64_t seq;
	size_t n;
	int hn;
	char ch[300];

	if (t - p->t_state > STALE_NS) {
		/* Idle too long: the server may be timing it out. */
		http_close(p);
		pub_connect(p);
		return;
	}
	seq = claim(p, t);
	bg_bench_channel(b, bg_bench_channel_of(b, seq), ch, sizeof(ch));
	n = (size_t)snprintf(b->body, 512, "{\"event\":\"%s\",\"channel\":"
			     "\"%s\",\"data\":", b->event, ch);
	n += compose_data(p, b->body + n, seq, t);
	b->body[n++] = '}';
	hn = snprintf(p->out, 512,
		      "POST /broadcast HTTP/1.1\r\n"
		      "Host: %s\r\n"
		      "Content-Type: application/json\r\n"
		      "Content-Length: %zu\r\n"
		      "\r\n", b->http_hostport, n);
	memcpy(p->out + hn, b->body, n);
	p->outlen = (size_t)hn + n;
	http_flush(p);
}

static void ws_send(struct bg_pub *p)
{
	struct bg_bench *b = p->b;
	int64_t t = bg_bench_now();
	uint64_t seq = claim(p, t);
	size_t n;
	char ch[300];

	bg_bench_channel(b, bg_bench_channel_of(b, seq), ch, sizeof(ch));
	n = (size_t)snprintf(b->body, 512, "{\"event\":\"publish\",\"data\":"
			     "{\"channel\":\"%s\",\"event\":\"%s\",\"data\":",
			     ch, b->event);
	n += compose_data(p, b->body + n, seq, t);
	n += (size_t)snprintf(b->body + n, 64, "},\"callbackId\":\"%llu\"}",
			      (unsigned long long)seq);
	/* On failure the connection is gone and seq failed with it. */
	bg_ws_send_text(&p->ws, b->body, n);
}

static bool budget(struct bg_bench *b)
{
	if (b->window && b->next_seq - b->low >= b->window)
		return false;
	if (b->rate > 0) {
		double due = (double)(bg_bench_now() - b->t_run) * b->rate /
			     BG_BENCH_NS;

		if ((double)b->next_seq >= due + 1)
			return false;
	}
	return true;
}

void bg_pub_pump(struct bg_bench *b)
{
	unsigned k;

	if (b->phase != BG_BENCH_RUN)
		return;
	for (k = 0; k < b->publishers; k++) {
		struct bg_pub *p = &b->pubs[(b->pub_rr + k) % b->publishers];

		if (p->state == BG_PUB_OFF) {
			pub_connect(p);
			continue;
		}
		while (p->state == BG_PUB_OPEN && p->qlen < depth(p) &&
		       budget(b)) {
			if (b->publish == BG_PUB_WS)
				ws_send(p);
			else
				http_send(p);
		}
	}
	b->pub_rr++;
}

static bool complete(const struct bg_bench *b, const struct bg_bcast *r)
{
	return r->state == BG_BCAST_FAILED ||
	       r->delivered >= b->ch_live[bg_bench_channel_of(b, r->seq)];
}

void bg_pub_advance(struct bg_bench *b)
{
	uint64_t low = b->low;

	if (!b->window)
		return;
	while (b->low < b->next_seq &&
	       complete(b, &b->ring[b->low % b->window]))
		b->low++;
	if (b->low != low)
		bg_pub_pump(b);
}

void bg_pub_delivered(struct bg_bench *b, uint64_t seq)
{
	struct bg_bcast *r;

	if (!b->window || seq < b->low || seq >= b->next_seq)
		return;
	r = &b->ring[seq % b->window];
	if (r->seq != seq)
		return;
	r->delivered++;
	if (seq == b->low && complete(b, r))
		bg_pub_advance(b);
}

static void check_slot(struct bg_pub *p, int64_t now)
{
	struct bg_bench *b = p->b;

	switch (p->state) {
	case BG_PUB_CONNECTING:
		if (b->publish == BG_PUB_WS)
			bg_ws_expire(&p->ws, now);
		else if (now - p->t_state > CONNECT_TIMEOUT)
			http_broken(p, "connect() timed out after 5 s");
		break;
	case BG_PUB_OPEN:
		if (!p->qlen || now - p->t_progress <= ANSWER_TIMEOUT)
			break;
		if (b->publish == BG_PUB_WS)
			ws_fail(p, "no callback within 5 s");
		else
			http_broken(p, "no answer within 5 s");
		break;
	case BG_PUB_CLOSING:
		if (now - p->t_state <= CLOSE_TIMEOUT)
			break;
		if (!b->close_timeouts++)
			bg_bench_warn(b, "publisher %u: server did not close "
				      "1 s after Connection: close", p->id);
		http_recycle(p);
		break;
	}
}

void bg_pub_check(struct bg_bench *b, int64_t now)
{
	unsigned i;

	if (!b->pubs_started)
		return;
	for (i = 0; i < b->publishers; i++)
		check_slot(&b->pubs[i], now);
	if (!b->window)
		return;
	/* A lost delivery must not stall the window for ever. */
	bg_pub_advance(b);
	while (b->low < b->next_seq &&
	       now - b->ring[b->low % b->window].sent_ns > WINDOW_TIMEOUT) {
		b->low++;
		b->window_timeouts++;
		bg_pub_advance(b);
	}
	bg_pub_pump(b);
}

bool bg_pub_idle(const struct bg_bench *b)
{
	unsigned i;

	for (i = 0; i < b->publishers; i++)
		if (b->pubs[i].qlen)
			return false;
	return true;
}

void bg_pub_stop(struct bg_bench *b)
{
	unsigned i;

	if (!b->pubs_started)
		return;
	for (i = 0; i < b->publishers; i++) {
		struct bg_pub *p = &b->pubs[i];

		if (p->state == BG_PUB_WAIT)
			event_del(&p->retry);
		if (b->publish == BG_PUB_WS) {
			p->self_close = true;
			bg_ws_shutdown(&p->ws);
		} else {
			http_close(p);
		}
		p->state = BG_PUB_OFF;
		free(p->out);
		free(p->in);
		p->out = p->in = NULL;
		p->qlen = 0;
	}
	free(b->ring);
	free(b->body);
	b->ring = NULL;
	b->body = NULL;
	b->pubs_started = false;
}
