/*
 * bench_ws.c - the subscribers of bagou-bench: a raw, minimal RFC 6455
 * client over non-blocking sockets and plain libevent events.
 *
 * HTTP upgrade with a random Sec-WebSocket-Key, checked against
 * Sec-WebSocket-Accept; masked client frames; unmasked server frames with
 * 7, 16 and 64-bit lengths; fragments reassembled; pings answered with
 * pongs; close frames echoed.  After the server's "connect" event a
 * subscriber subscribes to the bench channel; "tick" events (--event) go
 * to bg_bench_on_tick().  A publisher connection (--publish ws, c->pub
 * set) never subscribes: its connect event, callbacks and end go to
 * bench_pub.c, and any tick it gets anyway is only counted (pub_ticks).  Complete frames are parsed straight from one
 * static read buffer, so an idle connection holds no buffer at all.
 * With --proto socketio the same connections speak Socket.IO 4 over the
 * engine.io 4 WebSocket transport instead (sio_message()).
 * Runs only on the bench's single loop thread.
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

#define WS_GUID		"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define HDR_MAX		8192		/* upgrade response */
#define MSG_MAX		(16u << 20)	/* one frame or message */
#define WBUF_MAX	(1u << 20)	/* unsent bytes */
#define READS_PER_EVENT	4		/* then let others run */

static char scratch[256 * 1024];

static void ws_closed(struct bg_ws *c, int old, const char *why)
{
	if (c->pub)
		bg_pub_ws_closed(c->pub, why);
	else
		bg_bench_on_closed(c, old, why);
}

/* The one exit of a connection: releases it and says why it ended. */
static void ws_end(struct bg_ws *c, const char *why)
{
	int old = c->state;

	if (old == BG_WS_IDLE || old == BG_WS_CLOSED)
		return;
	event_del(&c->rev);
	event_del(&c->wev);
	close(c->fd);
	c->fd = -1;
	free(c->rbuf);
	free(c->wbuf);
	free(c->frag);
	c->rbuf = c->wbuf = c->frag = NULL;
	c->rlen = c->rcap = c->wlen = c->wcap = c->fraglen = 0;
	c->state = BG_WS_CLOSED;
	ws_closed(c, old, why);
}

static int reserve(char **buf, size_t *cap, size_t need)
{
	size_t n = *cap ? *cap : 4096;
	char *p;

	if (need <= *cap)
		return BG_BENCH_OK;
	while (n < need)
		n *= 2;
	p = realloc(*buf, n);
	if (!p)
		return BG_BENCH_ERR;
	*buf = p;
	*cap = n;
	return BG_BENCH_OK;
}

/* Writes now what the socket takes, queues the rest. */
static int ws_write(struct bg_ws *c, const void *data, size_t len)
{
	const char *p = data;

	if (!c->wlen) {
		ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno != EAGAIN && errno != EINTR) {
				ws_end(c, strerror(errno));
				return BG_BENCH_ERR;
			}
			n = 0;
		}
		p += n;
		len -= (size_t)n;
		if (!len)
			return BG_BENCH_OK;
	}
	if (c->wlen + len > WBUF_MAX ||
	    reserve(&c->wbuf, &c->wcap, c->wlen + len) < 0) {
		ws_end(c, "server does not read (send buffer full)");
		return BG_BENCH_ERR;
	}
	memcpy(c->wbuf + c->wlen, p, len);
	c->wlen += len;
	event_add(&c->wev, NULL);
	return BG_BENCH_OK;
}

static int ws_send(struct bg_ws *c, unsigned op, const void *data,
		   size_t len)
{
	uint8_t stack[1024], *buf = stack, mask[4];
	const uint8_t *in = data;
	uint64_t r = bg_bench_rand();
	size_t h = 0, i;
	int rc;

	if (len + 14 > sizeof(stack) && !(buf = malloc(len + 14)))
		return BG_BENCH_ERR;
	buf[h++] = (uint8_t)(0x80 | op);
	if (len < 126) {
		buf[h++] = (uint8_t)(0x80 | len);
	} else if (len < 65536) {
		buf[h++] = 0x80 | 126;
		buf[h++] = (uint8_t)(len >> 8);
		buf[h++] = (uint8_t)len;
	} else {
		buf[h++] = 0x80 | 127;
		for (i = 0; i < 8; i++)
			buf[h++] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
	}
	for (i = 0; i < 4; i++)
		buf[h++] = mask[i] = (uint8_t)(r >> (8 * i));
	for (i = 0; i < len; i++)
		buf[h + i] = in[i] ^ mask[i & 3];
	rc = ws_write(c, buf, h + len);
	if (buf != stack)
		free(buf);
	return rc;
}

int bg_ws_send_text(struct bg_ws *c, const char *p, size_t len)
{
	return ws_send(c, 0x1, p, len);
}

static void ws_write_cb(evutil_socket_t fd, short what, void *arg);
static void ws_read_cb(evutil_socket_t fd, short what, void *arg);

void bg_ws_start(struct bg_ws *c)
{
	struct bg_bench *b = c->b;
	uint8_t key[16];
	uint64_t r1 = bg_bench_rand(), r2 = bg_bench_rand();
	int one = 1, i;

	for (i = 0; i < 8; i++) {
		key[i] = (uint8_t)(r1 >> (8 * i));
		key[8 + i] = (uint8_t)(r2 >> (8 * i));
	}
	bg_base64(key, sizeof(key), c->key);
	for (i = 0; i < BG_BENCH_MAX_PUBS; i++)
		c->last_ps[i] = -1;
	c->t_start = bg_bench_now();
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
		       0);
	if (c->fd < 0) {
		c->state = BG_WS_CLOSED;
		ws_closed(c, BG_WS_CONNECTING, strerror(errno));
		return;
	}
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	event_assign(&c->rev, b->base, c->fd, EV_READ | EV_PERSIST,
		     ws_read_cb, c);
	event_assign(&c->wev, b->base, c->fd, EV_WRITE, ws_write_cb, c);
	event_priority_set(&c->rev, c->pub ? BG_PRIO_PUB : BG_PRIO_SUB);
	event_priority_set(&c->wev, c->pub ? BG_PRIO_PUB : BG_PRIO_SUB);
	c->state = BG_WS_CONNECTING;
	if (connect(c->fd, (struct sockaddr *)&b->ws_addr,
		    sizeof(b->ws_addr)) < 0 && errno != EINPROGRESS) {
		char why[96];

		snprintf(why, sizeof(why), "connect() failed: %s",
			 strerror(errno));
		ws_end(c, why);
		return;
	}
	event_add(&c->wev, NULL);
}

static void ws_send_upgrade(struct bg_ws *c)
{
	struct bg_bench *b = c->b;
	char req[1024];
	int n;

	n = snprintf(req, sizeof(req),
		     "GET %s HTTP/1.1\r\n"
		     "Host: %s\r\n"
		     "User-Agent: bagou-bench\r\n"
		     "Upgrade: websocket\r\n"
		     "Connection: Upgrade\r\n"
		     "Sec-WebSocket-Key: %s\r\n"
		     "Sec-WebSocket-Version: 13\r\n"
		     "\r\n",
		     b->ws_path, b->ws_hostport, c->key);
	c->state = BG_WS_HANDSHAKE;
	event_add(&c->rev, NULL);
	ws_write(c, req, (size_t)n);
}

static void ws_write_cb(evutil_socket_t fd, short what, void *arg)
{
	struct bg_ws *c = arg;

	if (c->state == BG_WS_CONNECTING) {
		int err = 0;
		socklen_t len = sizeof(err);

		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
			err = errno;
		if (err) {
			char why[96];

			snprintf(why, sizeof(why), "connect() failed: %s",
				 strerror(err));
			ws_end(c, why);
			return;
		}
		ws_send_upgrade(c);
		return;
	}
	if (bg_send_pending(fd, c->wbuf, &c->wlen) < 0) {
		ws_end(c, strerror(errno));
		return;
	}
	if (c->wlen)
		event_add(&c->wev, NULL);
}

/* Checks the 101 response whose header block is buf[0, len). */
static int ws_check_upgrade(struct bg_ws *c, const char *buf, size_t len)
{
	char want[64], got[64] = "", kg[96], why[200];
	const char *line, *end = buf + len, *eol;
	uint8_t digest[20];
	size_t n;

	if (len < 12 || strncmp(buf, "HTTP/1.1 101", 12)) {
		eol = memchr(buf, '\r', len);
		n = eol ? (size_t)(eol - buf) : len;
		snprintf(why, sizeof(why), "upgrade refused: %.*s",
			 (int)(n < 100 ? n : 100), buf);
		ws_end(c, why);
		return BG_BENCH_ERR;
	}
	snprintf(kg, sizeof(kg), "%s%s", c->key, WS_GUID);
	bg_sha1(kg, strlen(kg), digest);
	bg_base64(digest, sizeof(digest), want);
	for (line = buf; line < end; line = eol + 2) {
		const char *v;

		eol = memmem(line, (size_t)(end - line), "\r\n", 2);
		if (!eol)
			eol = end;
		if ((size_t)(eol - line) < 21 ||
		    strncasecmp(line, "Sec-WebSocket-Accept:", 21))
			continue;
		for (v = line + 21; v < eol && (*v == ' ' || *v == '\t'); v++)
			;
		n = (size_t)(eol - v);
		while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
			n--;
		if (n < sizeof(got)) {
			memcpy(got, v, n);
			got[n] = '\0';
		}
	}
	if (strcmp(got, want)) {
		snprintf(why, sizeof(why),
			 "bad Sec-WebSocket-Accept '%s', want '%s'", got, want);
		ws_end(c, why);
		return BG_BENCH_ERR;
	}
	return BG_BENCH_OK;
}

static int ws_subscribe(struct bg_ws *c)
{
	char msg[400], ch[300];
	int n;

	bg_bench_channel(c->b, c->ch, ch, sizeof(ch));
	if (c->b->proto == BG_PROTO_SOCKETIO)
		/* A Socket.IO event with ack id 0: 42<id>["subscribe",C] */
		n = snprintf(msg, sizeof(msg), "420[\"subscribe\",\"%s\"]",
			     ch);
	else
		n = snprintf(msg, sizeof(msg),
			     "{\"event\":\"subscribe\",\"data\":"
			     "{\"channel\":\"%s\"},\"callbackId\":\"1\"}", ch);
	c->state = BG_WS_SUBSCRIBING;
	return ws_send(c, 0x1, msg, (size_t)n);
}

static bool str_is(const char *s, size_t n, const char *lit)
{
	return n == strlen(lit) && !memcmp(s, lit, n);
}

/* One complete text message to a publisher connection. */
static int ws_pub_message(struct bg_ws *c, const char *p, size_t len,
			  const char *ev, size_t evlen)
{
	struct bg_bench *b = c->b;
	const char *s = "";
	size_t slen = 0;

	if (str_is(ev, evlen, "callback") && c->state == BG_WS_SUBSCRIBED &&
	    bg_json_str(p, len, "\"callbackId\"", &s, &slen)) {
		bg_pub_ws_answer(c->pub, s, slen, p, len);
		return BG_BENCH_OK;
	}
	if (str_is(ev, evlen, "connect") && c->state == BG_WS_OPEN) {
		if (!bg_json_str(p, len, "\"id\"", &s, &slen)) {
			s = "";
			slen = 0;
		}
		c->state = BG_WS_SUBSCRIBED;
		bg_pub_ws_ready(c->pub, s, slen);
		return BG_BENCH_OK;
	}
	if (str_is(ev, evlen, b->event)) {
		b->pub_ticks++;
		return BG_BENCH_OK;
	}
	if (str_is(ev, evlen, "error")) {
		b->server_errors++;
		bg_bench_warn(b, "server error event to publisher %u: %.*s",
			      c->pub->id, (int)(len < 160 ? len : 160), p);
		return BG_BENCH_OK;
	}
	b->other_msgs++;
	return BG_BENCH_OK;
}

/*
 * One complete text message of --proto socketio: an engine.io 4 packet
 * (type digit first) that carries, for type 4, a Socket.IO 4 packet.
 * 0 open -> "40" (connect to namespace /); 2 ping -> "3" pong; 40 the
 * namespace's connect -> subscribe (event with ack id 0); 430[...] that
 * ack; 42["<event>",DATA] a tick; 44 connect error; 1 close.
 */
static int sio_message(struct bg_ws *c, const char *p, size_t len,
		       int64_t now)
{
	struct bg_bench *b = c->b;
	size_t evlen = strlen(b->event);
	char why[200];

	if (!len) {
		b->other_msgs++;
		return BG_BENCH_OK;
	}
	switch (p[0]) {
	case '0':
		if (c->state != BG_WS_OPEN) {
			b->other_msgs++;
			return BG_BENCH_OK;
		}
		return ws_send(c, 0x1, "40", 2);
	case '2':
		b->pings++;
		return ws_send(c, 0x1, "3", 1);
	case '1':
		ws_end(c, "engine.io close packet");
		return BG_BENCH_ERR;
	case '4':
		break;
	default:
		b->other_msgs++;
		return BG_BENCH_OK;
	}
	if (len >= 2 && p[1] == '2' && len > evlen + 5 && p[2] == '[' &&
	    p[3] == '"' && !memcmp(p + 4, b->event, evlen) &&
	    p[4 + evlen] == '"') {
		bg_bench_on_tick(c, p, len, now);
		return BG_BENCH_OK;
	}
	if (len >= 2 && p[1] == '0' && c->state == BG_WS_OPEN)
		return ws_subscribe(c);
	if (len >= 4 && p[1] == '3' && p[2] == '0' && p[3] == '[' &&
	    c->state == BG_WS_SUBSCRIBING) {
		if (!bg_json_true(p, len, "\"success\"")) {
			snprintf(why, sizeof(why), "subscribe refused: %.*s",
				 (int)(len < 120 ? len : 120), p);
			ws_end(c, why);
			return BG_BENCH_ERR;
		}
		c->state = BG_WS_SUBSCRIBED;
		bg_bench_on_subscribed(c);
		return BG_BENCH_OK;
	}
	if (len >= 2 && p[1] == '4') {
		snprintf(why, sizeof(why), "namespace refused: %.*s",
			 (int)(len < 120 ? len : 120), p);
		ws_end(c, why);
		return BG_BENCH_ERR;
	}
	b->other_msgs++;
	return BG_BENCH_OK;
}

/* One complete text message. */
static int ws_message(struct bg_ws *c, const char *p, size_t len,
		      int64_t now)
{
	struct bg_bench *b = c->b;
	const char *ev, *cb;
	size_t evlen, cblen;
	char why[200];

	if (b->proto == BG_PROTO_SOCKETIO && !c->pub)
		return sio_message(c, p, len, now);
	if (!bg_json_str(p, len, "\"event\"", &ev, &evlen)) {
		b->other_msgs++;
		return BG_BENCH_OK;
	}
	if (c->pub)
		return ws_pub_message(c, p, len, ev, evlen);
	if (str_is(ev, evlen, b->event)) {
		bg_bench_on_tick(c, p, len, now);
		return BG_BENCH_OK;
	}
	if (str_is(ev, evlen, "connect")) {
		if (c->state != BG_WS_OPEN) {
			b->other_msgs++;
			return BG_BENCH_OK;
		}
		return ws_subscribe(c);
	}
	if (str_is(ev, evlen, "callback") && c->state == BG_WS_SUBSCRIBING &&
	    bg_json_str(p, len, "\"callbackId\"", &cb, &cblen) &&
	    str_is(cb, cblen, "1")) {
		if (!bg_json_true(p, len, "\"success\"")) {
			snprintf(why, sizeof(why), "subscribe refused: %.*s",
				 (int)(len < 120 ? len : 120), p);
			ws_end(c, why);
			return BG_BENCH_ERR;
		}
		c->state = BG_WS_SUBSCRIBED;
		bg_bench_on_subscribed(c);
		return BG_BENCH_OK;
	}
	if (str_is(ev, evlen, "error")) {
		b->server_errors++;
		bg_bench_warn(b, "server error event: %.*s",
			      (int)(len < 160 ? len : 160), p);
		return BG_BENCH_OK;
	}
	b->other_msgs++;
	return BG_BENCH_OK;
}

static int ws_frame(struct bg_ws *c, bool fin, unsigned op, const char *p,
		    size_t len, int64_t now)
{
	char why[64];
	unsigned code;

	if (op >= 0x8 && (!fin || len > 125)) {
		ws_end(c, "bad control frame");
		return BG_BENCH_ERR;
	}
	switch (op) {
	case 0x8:
		code = len >= 2 ? (uint8_t)p[0] << 8 | (uint8_t)p[1] : 1005;
		bg_bench_on_close_code(c->b, code);
		/* Echo the code; the socket closes right after anyway. */
		if (len >= 2)
			ws_send(c, 0x8, p, 2);
		if (c->state != BG_WS_CLOSED) {
			snprintf(why, sizeof(why), "closed by server, code %u",
				 code);
			ws_end(c, why);
		}
		return BG_BENCH_ERR;
	case 0x9:
		c->b->pings++;
		return ws_send(c, 0xA, p, len);
	case 0xA:
		return BG_BENCH_OK;
	case 0x0:
		if (!c->fragop) {
			ws_end(c, "continuation without a first fragment");
			return BG_BENCH_ERR;
		}
		if (c->fraglen + len > MSG_MAX) {
			ws_end(c, "fragmented message too large");
			return BG_BENCH_ERR;
		}
		break;
	case 0x1:
	case 0x2:
		if (c->fragop) {
			ws_end(c, "new message inside a fragmented one");
			return BG_BENCH_ERR;
		}
		if (fin) {
			if (op == 0x2) {
				c->b->binary++;
				return BG_BENCH_OK;
			}
			return ws_message(c, p, len, now);
		}
		c->fragop = (uint8_t)op;
		break;
	default:
		snprintf(why, sizeof(why), "unknown opcode %u", op);
		ws_end(c, why);
		return BG_BENCH_ERR;
	}
	/* A fragment: collect it. */
	{
		char *n = realloc(c->frag, c->fraglen + len + 1);

		if (!n) {
			ws_end(c, "out of memory");
			return BG_BENCH_ERR;
		}
		c->frag = n;
		memcpy(c->frag + c->fraglen, p, len);
		c->fraglen += len;
	}
	if (fin) {
		unsigned fop = c->fragop;
		int rc = BG_BENCH_OK;

		c->fragop = 0;
		if (fop == 0x1)
			rc = ws_message(c, c->frag, c->fraglen, now);
		else
			c->b->binary++;
		if (c->state != BG_WS_CLOSED) {
			free(c->frag);
			c->frag = NULL;
			c->fraglen = 0;
		}
		return rc;
	}
	return BG_BENCH_OK;
}

/*
 * Parses what buf holds; returns the bytes consumed (the rest is an
 * incomplete frame), or BG_BENCH_ERR once c has ended.
 */
static ssize_t ws_consume(struct bg_ws *c, const char *buf, size_t len,
			  int64_t now)
{
	size_t off = 0;

	if (c->state == BG_WS_HANDSHAKE) {
		const char *e = memmem(buf, len, "\r\n\r\n", 4);

		if (!e) {
			if (len <= HDR_MAX)
				return 0;
			ws_end(c, "upgrade response too long");
			return BG_BENCH_ERR;
		}
		if (ws_check_upgrade(c, buf, (size_t)(e - buf) + 2) < 0)
			return BG_BENCH_ERR;
		off = (size_t)(e - buf) + 4;
		c->state = BG_WS_OPEN;
	}
	while (len - off >= 2) {
		const uint8_t *p = (const uint8_t *)buf + off;
		size_t avail = len - off, h = 2, i;
		uint64_t plen = p[1] & 0x7f;

		if (p[1] & 0x80) {
			ws_end(c, "masked frame from the server");
			return BG_BENCH_ERR;
		}
		if (p[0] & 0x70) {
			ws_end(c, "reserved bits set in a server frame");
			return BG_BENCH_ERR;
		}
		if (plen == 126) {
			h = 4;
			if (avail < h)
				break;
			plen = (uint64_t)p[2] << 8 | p[3];
		} else if (plen == 127) {
			h = 10;
			if (avail < h)
				break;
			for (plen = 0, i = 2; i < 10; i++)
				plen = plen << 8 | p[i];
		}
		if (plen > MSG_MAX) {
			ws_end(c, "frame too large");
			return BG_BENCH_ERR;
		}
		if (avail - h < plen)
			break;
		if (ws_frame(c, p[0] & 0x80, p[0] & 0x0f, (const char *)p + h,
			     (size_t)plen, now) < 0)
			return BG_BENCH_ERR;
		off += h + (size_t)plen;
	}
	return (ssize_t)off;
}

static void ws_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct bg_ws *c = arg;
	ssize_t n, used;
	int round;

	for (round = 0; round < READS_PER_EVENT; round++) {
		n = recv(fd, scratch, sizeof(scratch), 0);
		if (n == 0) {
			ws_end(c, "connection closed by server");
			return;
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				ws_end(c, strerror(errno));
			return;
		}
		if (c->rlen) {
			if (reserve(&c->rbuf, &c->rcap, c->rlen + (size_t)n)) {
				ws_end(c, "out of memory");
				return;
			}
			memcpy(c->rbuf + c->rlen, scratch, (size_t)n);
			c->rlen += (size_t)n;
			used = ws_consume(c, c->rbuf, c->rlen, bg_bench_now());
			if (used < 0)
				return;
			c->rlen -= (size_t)used;
			memmove(c->rbuf, c->rbuf + used, c->rlen);
		} else {
			used = ws_consume(c, scratch, (size_t)n,
					  bg_bench_now());
			if (used < 0)
				return;
			if (used < n) {
				if (reserve(&c->rbuf, &c->rcap,
					    (size_t)(n - used))) {
					ws_end(c, "out of memory");
					return;
				}
				memcpy(c->rbuf, scratch + used,
				       (size_t)(n - used));
				c->rlen = (size_t)(n - used);
			}
		}
		/* Idle connections should not keep big buffers. */
		if (!c->rlen && c->rcap > 65536) {
			free(c->rbuf);
			c->rbuf = NULL;
			c->rcap = 0;
		}
		if ((size_t)n < sizeof(scratch))
			return;
	}
}

void bg_ws_expire(struct bg_ws *c, int64_t now)
{
	static const char *const what[] = {
		[BG_WS_CONNECTING] = "TCP connect",
		[BG_WS_HANDSHAKE] = "the 101 response",
		[BG_WS_OPEN] = "the connect event",
		[BG_WS_SUBSCRIBING] = "the subscribe callback",
	};
	char why[96];

	if (c->state < BG_WS_CONNECTING || c->state > BG_WS_SUBSCRIBING ||
	    now - c->t_start < (int64_t)(c->b->conn_timeout * BG_BENCH_NS))
		return;
	snprintf(why, sizeof(why), "timed out waiting for %s",
		 what[c->state]);
	if (!c->pub)
		c->b->fail_timeout++;
	ws_end(c, why);
}

void bg_ws_shutdown(struct bg_ws *c)
{
	static const uint8_t bye[2] = { 1000 >> 8, 1000 & 0xff };

	if (c->state >= BG_WS_OPEN && c->state <= BG_WS_SUBSCRIBED &&
	    !c->wlen)
		ws_send(c, 0x8, bye, sizeof(bye));
	ws_end(c, NULL);
}
