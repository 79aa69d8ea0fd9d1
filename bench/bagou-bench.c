/*
 * bagou-bench.c - load generator for bagou-server: options, phases and
 * the report.
 *
 *   bagou-bench fanout --url ws://127.0.0.1:9000/websocket --clients N
 *                      [--rate R] [--duration S] [--size BYTES] ...
 *   bagou-bench fanout --url ... --clients N --publish external
 *                      --ready-file PATH --done-file PATH [--duration S]
 *   bagou-bench idle   --url ws://127.0.0.1:9000/websocket --clients N
 *                      [--hold S] ...
 *
 * One thread runs one libevent loop.  A 10 ms tick drives the phases:
 * SETUP opens connections at --connect-rate with at most --max-pending
 * handshakes at once and waits for every subscribe callback (or failure,
 * or --conn-timeout), then starts the publisher slots (--publish ws: waits
 * until their WebSocket connections got their connect events); fanout
 * then RUNs the publishers for --duration and DRAINs for at most --drain
 * seconds; idle HOLDs the connections for --hold seconds.  With --publish
 * external the bench starts no publisher: another process publishes (for
 * example bench/amqp_pub.py, through RabbitMQ) once --ready-file exists,
 * and writes --done-file ("COUNT [START_NS END_NS]") when it is done; the
 * bench RUNs until that file appears (at most --duration seconds), then
 * DRAINs as usual.  Every phase is bounded in time.  Only loopback
 * addresses are accepted as targets.
 *
 * Output: progress and warnings on stderr; one summary line and one JSON
 * line on stdout.  Exit status: 0 ok, 1 usage or setup error, 2 more
 * connection failures than --max-fail-pct, 3 broadcasts lost, out of
 * order, refused or unanswered, delivered with a wrong "from", or none
 * accepted, 130 interrupted.
 */
#include "bench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define TICK_US		10000
#define WARN_MAX	20
#define FROM_EVERY	16	/* check "from" on every 16th ps */

static const char usage_text[] =
"usage: bagou-bench fanout --url ws://127.0.0.1:PORT/websocket [options]\n"
"       bagou-bench idle --url ws://127.0.0.1:PORT/websocket [options]\n"
"\n"
"common options:\n"
"  --url URL            WebSocket endpoint, loopback only (required)\n"
"  --clients N          subscriber connections (100)\n"
"  --channel NAME       channel to subscribe and publish to (bench)\n"
"  --channels N         N > 1: subscriber i subscribes to NAME-(i mod N),\n"
"                       broadcast s goes to NAME-(s mod N) (1)\n"
"  --proto P            bagou: Bagou's events; socketio: Socket.IO 4 on\n"
"                       engine.io 4 (URL /socket.io/?EIO=4&transport=\n"
"                       websocket): emit subscribe with an ack, ticks as\n"
"                       42[\"tick\",DATA] (bagou)\n"
"  --connect-rate C     new connections per second (2000)\n"
"  --max-pending N      handshakes in progress at once (256)\n"
"  --conn-timeout S     per connection, until subscribed (10)\n"
"  --max-fail-pct P     tolerated failed/dropped connections, % (1)\n"
"  --quiet              no progress lines on stderr\n"
"fanout:\n"
"  --rate R             broadcasts/s; 0 = as fast as delivered (0)\n"
"  --duration S         publishing time (10)\n"
"  --size BYTES         approximate broadcast body size (100)\n"
"  --publish MODE       http: POST /broadcast, keep-alive connections;\n"
"                       ws: client publishes on WebSocket connections;\n"
"                       external: no publishers, another process\n"
"                       publishes (needs --done-file) (http)\n"
"  --http HOST:PORT     where to POST /broadcast: the server's API\n"
"                       listener (default: the URL's host, port 9001)\n"
"  --publishers N       publisher slots, 1..16 (4); alias --http-conns\n"
"  --depth D            ws: publishes in flight per slot, 1..64 (1);\n"
"                       HTTP slots always have one POST in flight\n"
"  --window N           broadcasts sent but not yet delivered to every\n"
"                       subscriber; 0 = unbounded (64 at rate 0, else 0)\n"
"  --drain S            wait for late deliveries at most (5)\n"
"  --event NAME         event name of the broadcasts (tick)\n"
"  --ready-file PATH    written once every subscriber is subscribed\n"
"                       (and the publishers are connected)\n"
"  --done-file PATH     external: the publisher writes \"COUNT [START_NS\n"
"                       END_NS]\" here when done (CLOCK_MONOTONIC ns);\n"
"                       --duration bounds the wait for it\n"
"idle:\n"
"  --hold S             hold the connections this long (10)\n"
"  --ready-file PATH    written once every connection is subscribed\n";

enum {
	OPT_URL = 256, OPT_CLIENTS, OPT_CHANNEL, OPT_RATE, OPT_DURATION,
	OPT_SIZE, OPT_HTTP, OPT_CONNECT_RATE, OPT_MAX_PENDING,
	OPT_CONN_TIMEOUT, OPT_PUBLISHERS, OPT_PIPELINE, OPT_WINDOW, OPT_DRAIN,
	OPT_PUBLISH, OPT_DEPTH,
	OPT_HOLD, OPT_READY_FILE, OPT_DONE_FILE, OPT_MAX_FAIL, OPT_EVENT,
	OPT_QUIET, OPT_CHANNELS, OPT_PROTO,
	OPT_HELP,
};

static const struct option long_opts[] = {
	{ "url", required_argument, NULL, OPT_URL },
	{ "clients", required_argument, NULL, OPT_CLIENTS },
	{ "channel", required_argument, NULL, OPT_CHANNEL },
	{ "rate", required_argument, NULL, OPT_RATE },
	{ "duration", required_argument, NULL, OPT_DURATION },
	{ "size", required_argument, NULL, OPT_SIZE },
	{ "http", required_argument, NULL, OPT_HTTP },
	{ "connect-rate", required_argument, NULL, OPT_CONNECT_RATE },
	{ "max-pending", required_argument, NULL, OPT_MAX_PENDING },
	{ "conn-timeout", required_argument, NULL, OPT_CONN_TIMEOUT },
	{ "publishers", required_argument, NULL, OPT_PUBLISHERS },
	{ "http-conns", required_argument, NULL, OPT_PUBLISHERS },
	{ "publish", required_argument, NULL, OPT_PUBLISH },
	{ "depth", required_argument, NULL, OPT_DEPTH },
	{ "pipeline", required_argument, NULL, OPT_PIPELINE },
	{ "window", required_argument, NULL, OPT_WINDOW },
	{ "drain", required_argument, NULL, OPT_DRAIN },
	{ "hold", required_argument, NULL, OPT_HOLD },
	{ "ready-file", required_argument, NULL, OPT_READY_FILE },
	{ "done-file", required_argument, NULL, OPT_DONE_FILE },
	{ "max-fail-pct", required_argument, NULL, OPT_MAX_FAIL },
	{ "event", required_argument, NULL, OPT_EVENT },
	{ "quiet", no_argument, NULL, OPT_QUIET },
	{ "channels", required_argument, NULL, OPT_CHANNELS },
	{ "proto", required_argument, NULL, OPT_PROTO },
	{ "help", no_argument, NULL, OPT_HELP },
	{ NULL, 0, NULL, 0 },
};

static struct bg_bench bench;
static struct event *pace_ev;
static int64_t next_progress, drain_end, hold_end, last_expire;
static unsigned pub_warned;

static void external_tick(struct bg_bench *b, int64_t now);

static double secs(int64_t ns)
{
	return (double)ns / BG_BENCH_NS;
}

static double ms(uint64_t ns)
{
	return (double)ns / 1e6;
}

void bg_bench_warn(struct bg_bench *b, const char *fmt, ...)
{
	va_list ap;

	if (b->logged++ >= WARN_MAX) {
		if (b->logged == WARN_MAX + 2)
			fprintf(stderr, "bagou-bench: further warnings "
				"suppressed\n");
		return;
	}
	fprintf(stderr, "bagou-bench: [%6.2fs] ",
		secs(bg_bench_now() - b->t_setup));
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

size_t bg_bench_channel(const struct bg_bench *b, unsigned k, char *out,
			size_t n)
{
	int len = b->channels > 1 ?
		snprintf(out, n, "%s-%u", b->channel, k) :
		snprintf(out, n, "%s", b->channel);

	return len < 0 ? 0 : (size_t)len < n ? (size_t)len : n - 1;
}

unsigned bg_bench_channel_of(const struct bg_bench *b, uint64_t seq)
{
	return (unsigned)(seq % b->channels);
}

void bg_bench_on_subscribed(struct bg_ws *c)
{
	struct bg_bench *b = c->b;

	b->pending--;
	b->live++;
	b->subscribed++;
	b->ch_live[c->ch]++;
	b->ch_subscribed[c->ch]++;
}

void bg_bench_on_tick(struct bg_ws *c, const char *p, size_t len,
		      int64_t now)
{
	struct bg_bench *b = c->b;
	int64_t t, seq, pub, ps, *last;

	if (!bg_json_int(p, len, "\"t\"", &t) ||
	    !bg_json_int(p, len, "\"seq\"", &seq) ||
	    !bg_json_int(p, len, "\"p\"", &pub) ||
	    !bg_json_int(p, len, "\"ps\"", &ps) || pub < 0 ||
	    pub >= BG_BENCH_MAX_PUBS || seq < 0) {
		if (!b->bad_ticks++)
			bg_bench_warn(b, "unexpected %s message: %.*s",
				      b->event, (int)(len < 160 ? len : 160),
				      p);
		return;
	}
	if (b->publish == BG_PUB_WS && ps % FROM_EVERY == 0 &&
	    (unsigned)pub < b->publishers) {
		const struct bg_pub *pp = &b->pubs[pub];
		const char *from;
		size_t flen;

		/* Older ps went out on an earlier connection of the slot. */
		if (ps >= pp->id_since_ps && pp->client_id_len) {
			b->from_checked++;
			if (!bg_json_str(p, len, "\"from\"", &from, &flen) ||
			    flen != pp->client_id_len ||
			    memcmp(from, pp->client_id, flen)) {
				if (!b->from_mismatch++)
					bg_bench_warn(b, "publisher %u is %s, "
						      "but got: %.*s",
						      (unsigned)pub,
						      pp->client_id,
						      (int)(len < 200 ?
							    len : 200), p);
			}
		}
	}
	b->deliveries++;
	if (!b->t_first_delivery)
		b->t_first_delivery = now;
	b->t_last_delivery = now;
	bg_hist_add(&b->lat, now > t ? (uint64_t)(now - t) : 0);
	last = &c->last_ps[pub];
	if (ps <= *last) {
		b->out_of_order++;
		return;
	}
	if (ps > *last + 1)
		b->gaps += (uint64_t)(ps - *last - 1);
	*last = ps;
	c->unique++;
	b->unique++;
	bg_pub_delivered(b, (uint64_t)seq);
}

void bg_bench_on_closed(struct bg_ws *c, int old_state, const char *why)
{
	struct bg_bench *b = c->b;

	if (b->phase == BG_BENCH_DONE)
		return;
	if (old_state < BG_WS_SUBSCRIBED) {
		b->pending--;
		if (old_state == BG_WS_CONNECTING)
			b->fail_connect++;
		else if (old_state == BG_WS_HANDSHAKE)
			b->fail_handshake++;
		else
			b->fail_subscribe++;
	} else {
		b->live--;
		b->ch_live[c->ch]--;
		b->disconnects++;
		bg_pub_advance(b);
	}
	if (why)
		bg_bench_warn(b, "connection %ld: %s", (long)(c - b->ws), why);
}

void bg_bench_on_close_code(struct bg_bench *b, unsigned code)
{
	unsigned i;

	for (i = 0; i < 8; i++) {
		if (b->close_count[i] && b->close_code[i] != code)
			continue;
		b->close_code[i] = code;
		b->close_count[i]++;
		return;
	}
}

static uint64_t failures(const struct bg_bench *b)
{
	return b->fail_connect + b->fail_handshake + b->fail_subscribe +
	       b->disconnects;
}

static bool too_many_failures(const struct bg_bench *b)
{
	return !b->subscribed ||
	       (double)failures(b) * 100.0 > b->max_fail_pct * b->clients;
}

static void print_close_codes(const struct bg_bench *b)
{
	unsigned i;

	for (i = 0; i < 8 && b->close_count[i]; i++)
		fprintf(stderr, "bagou-bench: server closed %u connection(s) "
			"with code %u\n", b->close_count[i], b->close_code[i]);
}

static const char *publish_name(const struct bg_bench *b)
{
	switch (b->publish) {
	case BG_PUB_WS:
		return "ws";
	case BG_PUB_EXTERNAL:
		return "external";
	}
	return "http";
}

static void report_fanout(struct bg_bench *b)
{
	double run_s = secs(b->t_run_end - b->t_run);
	double span = b->t_last_delivery > b->t_run ?
		secs(b->t_last_delivery - b->t_run) : run_s;
	uint64_t expected = 0, lost;
	double p50 = ms(bg_hist_quantile(&b->lat, 0.50));
	double p99 = ms(bg_hist_quantile(&b->lat, 0.99));
	double p999 = ms(bg_hist_quantile(&b->lat, 0.999));
	double pmax = ms(b->lat.max);
	unsigned k;

	for (k = 0; k < b->channels; k++)
		expected += b->ch_accepted[k] * b->ch_subscribed[k];
	lost = expected > b->unique ? expected - b->unique : 0;
	double a50 = ms(bg_hist_quantile(&b->ack, 0.50));
	double a99 = ms(bg_hist_quantile(&b->ack, 0.99));
	double c50 = ms(bg_hist_quantile(&b->conn, 0.50));
	double c99 = ms(bg_hist_quantile(&b->conn, 0.99));
	double bps = run_s > 0 ? (double)b->accepted / run_s : 0;
	double dps = span > 0 ? (double)b->deliveries / span : 0;

	if (b->t_run == 0)
		run_s = span = bps = dps = 0;
	if (!b->exit_code && too_many_failures(b))
		b->exit_code = 2;
	if (!b->exit_code && (!b->accepted || lost || b->out_of_order ||
			      b->rejected || b->unanswered ||
			      b->from_mismatch))
		b->exit_code = 3;
	if (b->first_status)
		fprintf(stderr, "bagou-bench: first rejected broadcast: %d "
			"%s\n", b->first_status, b->first_error);
	else if (b->first_error[0])
		fprintf(stderr, "bagou-bench: first refused publish: %s%s\n",
			b->first_error, strstr(b->first_error, "not_allowed") ?
			" (client publishes need [channels] client_publish = "
			"all in the server's --config)" : "");
	print_close_codes(b);
	printf("fanout: %u/%u subscribed; %s publishers: %llu broadcasts "
	       "sent in %.1f s, %llu accepted (%.0f/s), %llu reconnects; "
	       "%llu deliveries (%.0f msgs/s) "
	       "of %llu expected, %llu lost, %llu out of order; latency ms "
	       "p50 %.3f p99 %.3f max %.3f\n",
	       b->subscribed, b->clients, publish_name(b),
	       (unsigned long long)b->next_seq,
	       run_s, (unsigned long long)b->accepted, bps,
	       (unsigned long long)b->reconnects,
	       (unsigned long long)b->deliveries, dps,
	       (unsigned long long)expected, (unsigned long long)lost,
	       (unsigned long long)b->out_of_order, p50, p99, pmax);
	printf("{\"mode\":\"fanout\",\"publish\":\"%s\","
	       "\"publishers\":%u,\"depth\":%u,\"clients\":%u,"
	       "\"subscribed\":%u,"
	       "\"duration_s\":%.3f,\"size\":%zu,\"rate_target\":%g,"
	       "\"broadcasts_sent\":%llu,\"accepted\":%llu,"
	       "\"rejected\":%llu,\"unanswered\":%llu,"
	       "\"reconnects\":%llu,\"keepalive_answers\":%llu,"
	       "\"close_timeouts\":%llu,\"from_checked\":%llu,"
	       "\"from_mismatch\":%llu,\"publisher_ticks\":%llu,"
	       "\"broadcasts_per_s\":%.1f,\"deliveries\":%llu,"
	       "\"delivered_per_s\":%.1f,\"expected\":%llu,\"lost\":%llu,"
	       "\"out_of_order\":%llu,\"gaps\":%llu,\"p50_ms\":%.3f,"
	       "\"p99_ms\":%.3f,\"p999_ms\":%.3f,\"max_ms\":%.3f,"
	       "\"ack_p50_ms\":%.3f,"
	       "\"ack_p99_ms\":%.3f,\"ack_max_ms\":%.3f,"
	       "\"pub_connect_p50_ms\":%.3f,\"pub_connect_p99_ms\":%.3f,"
	       "\"connect_failures\":%llu,"
	       "\"disconnects\":%llu,\"window_timeouts\":%llu,"
	       "\"server_errors\":%llu,\"channels\":%u,\"proto\":\"%s\","
	       "\"exit\":%d}\n",
	       publish_name(b),
	       b->publish == BG_PUB_EXTERNAL ? 1 : b->publishers,
	       b->publish == BG_PUB_WS ? b->depth : 1,
	       b->clients, b->subscribed, run_s, b->size, b->rate,
	       (unsigned long long)b->next_seq,
	       (unsigned long long)b->accepted,
	       (unsigned long long)b->rejected,
	       (unsigned long long)b->unanswered,
	       (unsigned long long)b->reconnects,
	       (unsigned long long)b->keepalive_answers,
	       (unsigned long long)b->close_timeouts,
	       (unsigned long long)b->from_checked,
	       (unsigned long long)b->from_mismatch,
	       (unsigned long long)b->pub_ticks, bps,
	       (unsigned long long)b->deliveries, dps,
	       (unsigned long long)expected, (unsigned long long)lost,
	       (unsigned long long)b->out_of_order,
	       (unsigned long long)b->gaps, p50, p99, p999, pmax, a50, a99,
	       ms(b->ack.max), c50, c99,
	       (unsigned long long)(failures(b) - b->disconnects),
	       (unsigned long long)b->disconnects,
	       (unsigned long long)b->window_timeouts,
	       (unsigned long long)b->server_errors, b->channels,
	       b->proto == BG_PROTO_SOCKETIO ? "socketio" : "bagou",
	       b->exit_code);
}

static void report_idle(struct bg_bench *b)
{
	double setup_s = b->t_ready ? secs(b->t_ready - b->t_setup) : 0;
	double held = b->t_ready ? secs(b->t_end - b->t_ready) : 0;

	if (!b->exit_code && too_many_failures(b))
		b->exit_code = 2;
	print_close_codes(b);
	printf("idle: %u/%u connected and subscribed after %.2f s, %u still "
	       "connected after %.1f s; failed: %llu connect, %llu "
	       "handshake, %llu subscribe (%llu timeouts); %llu dropped\n",
	       b->subscribed, b->clients, setup_s, b->live, held,
	       (unsigned long long)b->fail_connect,
	       (unsigned long long)b->fail_handshake,
	       (unsigned long long)b->fail_subscribe,
	       (unsigned long long)b->fail_timeout,
	       (unsigned long long)b->disconnects);
	printf("{\"mode\":\"idle\",\"clients\":%u,\"subscribed\":%u,"
	       "\"connected\":%u,\"setup_s\":%.3f,\"hold_s\":%.3f,"
	       "\"connect_failures\":%llu,\"disconnects\":%llu,"
	       "\"pings\":%llu,\"exit\":%d}\n",
	       b->clients, b->subscribed, b->live, setup_s, held,
	       (unsigned long long)(failures(b) - b->disconnects),
	       (unsigned long long)b->disconnects,
	       (unsigned long long)b->pings, b->exit_code);
}

static void finish(struct bg_bench *b)
{
	unsigned i;

	if (b->phase == BG_BENCH_DONE)
		return;
	b->t_end = bg_bench_now();
	if (b->phase == BG_BENCH_RUN)
		b->t_run_end = b->t_end;
	if (b->interrupted)
		b->exit_code = 130;
	if (b->span_deliveries && b->t_last_delivery > b->t_first_delivery) {
		/* External publisher without times: the deliveries' span. */
		b->t_run = b->t_first_delivery;
		b->t_run_end = b->t_last_delivery;
	}
	if (b->mode == BG_BENCH_FANOUT)
		report_fanout(b);
	else
		report_idle(b);
	fflush(stdout);
	b->phase = BG_BENCH_DONE;
	for (i = 0; i < b->started; i++)
		bg_ws_shutdown(&b->ws[i]);
	bg_pub_stop(b);
	event_base_loopbreak(b->base);
}

static void pace_cb(evutil_socket_t fd, short what, void *arg)
{
	bg_pub_pump(arg);
}

static void write_ready_file(struct bg_bench *b)
{
	FILE *f;

	if (!b->ready_file)
		return;
	f = fopen(b->ready_file, "w");
	if (!f || fprintf(f, "%u\n", b->live) < 0 || fclose(f) != 0)
		bg_bench_warn(b, "cannot write %s: %s", b->ready_file,
			      strerror(errno));
}

static void setup_done(struct bg_bench *b, int64_t now)
{
	struct timeval tv = { 0, 1000 };

	b->t_ready = now;
	fprintf(stderr, "bagou-bench: %u/%u subscribed in %.2f s (failed: "
		"%llu connect, %llu handshake, %llu subscribe; %llu "
		"timeouts)\n", b->subscribed, b->clients,
		secs(now - b->t_setup), (unsigned long long)b->fail_connect,
		(unsigned long long)b->fail_handshake,
		(unsigned long long)b->fail_subscribe,
		(unsigned long long)b->fail_timeout);
	if (too_many_failures(b)) {
		bg_bench_warn(b, "too many connection failures, stopping");
		b->exit_code = 2;
		finish(b);
		return;
	}
	if (b->mode == BG_BENCH_IDLE) {
		write_ready_file(b);
		b->phase = BG_BENCH_HOLD;
		hold_end = now + (int64_t)(b->hold * BG_BENCH_NS);
		return;
	}
	b->phase = BG_BENCH_RUN;
	b->t_run = now;
	if (b->publish == BG_PUB_EXTERNAL) {
		/* The publisher starts when it sees this file. */
		write_ready_file(b);
		return;
	}
	/* Tells a watcher (bench/peers/run.py: server CPU) that
	 * publishing starts now. */
	write_ready_file(b);
	bg_pub_pump(b);
	if (b->rate > 0) {
		pace_ev = event_new(b->base, -1, EV_PERSIST, pace_cb, b);
		if (pace_ev)
			event_add(pace_ev, &tv);
	}
}

static void setup_tick(struct bg_bench *b, int64_t now)
{
	double allowed = b->connect_rate * secs(now - b->t_setup) + 1;
	unsigned i;

	while (b->started < b->clients && b->started < allowed &&
	       b->pending < b->max_pending) {
		b->pending++;
		bg_ws_start(&b->ws[b->started++]);
	}
	if (now - last_expire >= BG_BENCH_NS / 10) {
		last_expire = now;
		for (i = 0; i < b->started; i++)
			bg_ws_expire(&b->ws[i], now);
	}
	if (b->started < b->clients || b->pending)
		return;
	if (b->mode == BG_BENCH_IDLE || b->publish == BG_PUB_EXTERNAL ||
	    too_many_failures(b)) {
		setup_done(b, now);
		return;
	}
	/* Subscribers are ready: now the publishers. */
	if (!b->pubs_started) {
		if (b->publish == BG_PUB_WS)
			fprintf(stderr, "bagou-bench: %u/%u subscribed; "
				"connecting %u WebSocket publishers\n",
				b->subscribed, b->clients, b->publishers);
		if (bg_pub_start(b) < 0) {
			bg_bench_warn(b, "out of memory");
			b->exit_code = 1;
			finish(b);
			return;
		}
	}
	bg_pub_check(b, now);
	switch (bg_pub_ready(b)) {
	case 1:
		setup_done(b, now);
		break;
	case BG_BENCH_ERR:
		if (!pub_warned++)
			bg_bench_warn(b, "no publisher could connect, "
				      "stopping");
		b->exit_code = 2;
		finish(b);
		break;
	}
}

/* Every live subscriber got every accepted broadcast. */
static bool drained(const struct bg_bench *b)
{
	unsigned i;

	if (!bg_pub_idle(b))
		return false;
	for (i = 0; i < b->started; i++)
		if (b->ws[i].state == BG_WS_SUBSCRIBED &&
		    b->ws[i].unique < b->ch_accepted[b->ws[i].ch])
			return false;
	return true;
}

static void progress(struct bg_bench *b, int64_t now)
{
	double t = secs(now - b->t_setup);

	if (b->quiet)
		return;
	switch (b->phase) {
	case BG_BENCH_SETUP:
		fprintf(stderr, "bagou-bench: [%6.2fs] setup: %u started, %u "
			"subscribed, %llu failed\n", t, b->started,
			b->subscribed, (unsigned long long)failures(b));
		break;
	case BG_BENCH_RUN:
	case BG_BENCH_DRAIN:
		fprintf(stderr, "bagou-bench: [%6.2fs] %s: %llu sent, %llu "
			"accepted, %llu reconnects, %llu deliveries, %u "
			"subscribed\n", t,
			b->phase == BG_BENCH_RUN ? "run" : "drain",
			(unsigned long long)b->next_seq,
			(unsigned long long)b->accepted,
			(unsigned long long)b->reconnects,
			(unsigned long long)b->deliveries, b->live);
		break;
	case BG_BENCH_HOLD:
		fprintf(stderr, "bagou-bench: [%6.2fs] hold: %u connected\n",
			t, b->live);
		break;
	}
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct bg_bench *b = arg;
	int64_t now = bg_bench_now();

	switch (b->phase) {
	case BG_BENCH_SETUP:
		setup_tick(b, now);
		break;
	case BG_BENCH_RUN:
		if (b->publish == BG_PUB_EXTERNAL) {
			external_tick(b, now);
			break;
		}
		bg_pub_check(b, now);
		if (now - b->t_run >= (int64_t)(b->duration * BG_BENCH_NS)) {
			b->phase = BG_BENCH_DRAIN;
			b->t_run_end = now;
			drain_end = now + (int64_t)(b->drain * BG_BENCH_NS);
			if (pace_ev)
				event_del(pace_ev);
		}
		break;
	case BG_BENCH_DRAIN:
		bg_pub_check(b, now);
		if (drained(b) || now >= drain_end)
			finish(b);
		break;
	case BG_BENCH_HOLD:
		if (now >= hold_end)
			finish(b);
		break;
	}
	if (b->phase != BG_BENCH_DONE && now >= next_progress) {
		progress(b, now);
		next_progress = now + BG_BENCH_NS;
	}
}

/*
 * --publish external, RUN: has the publisher written --done-file?  It
 * holds "COUNT [START_NS END_NS]": the broadcasts published, and when
 * publishing started and ended (CLOCK_MONOTONIC, as "t"; 0 or absent:
 * unknown, then the rates are over the first to the last delivery, as
 * for a backlog that was queued before the subscribers came).  The publisher
 * writes it atomically (rename), so a file that exists is complete.
 */
static bool read_done_file(struct bg_bench *b, int64_t now)
{
	unsigned long long count;
	long long t0 = 0, t1 = 0;
	FILE *f = fopen(b->done_file, "r");
	int n;

	if (!f)
		return false;
	n = fscanf(f, "%llu %lld %lld", &count, &t0, &t1);
	fclose(f);
	if (n < 1) {
		bg_bench_warn(b, "%s: no count in it", b->done_file);
		b->exit_code = 1;
		return true;
	}
	b->accepted = b->next_seq = count;
	b->ch_accepted[0] = count;	/* external: one channel */
	if (n == 3 && t0 > 0 && t1 >= t0) {
		b->t_run = t0;
		b->t_run_end = t1;
	} else {
		/* Set again from the deliveries in report_fanout(). */
		b->span_deliveries = true;
		b->t_run = b->t_first_delivery ? b->t_first_delivery :
			   b->t_ready;
		b->t_run_end = now;
	}
	return true;
}

static void external_tick(struct bg_bench *b, int64_t now)
{
	if (read_done_file(b, now)) {
		if (b->exit_code) {
			finish(b);
			return;
		}
		fprintf(stderr, "bagou-bench: the publisher published %llu "
			"broadcasts; draining\n",
			(unsigned long long)b->accepted);
		b->phase = BG_BENCH_DRAIN;
		drain_end = now + (int64_t)(b->drain * BG_BENCH_NS);
		return;
	}
	if (now - b->t_ready >= (int64_t)(b->duration * BG_BENCH_NS)) {
		bg_bench_warn(b, "no %s within %g s (--duration): the "
			      "publisher did not finish", b->done_file,
			      b->duration);
		b->t_run_end = now;
		finish(b);
	}
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct bg_bench *b = arg;

	b->interrupted = true;
	finish(b);
}

static int usage(const char *msg)
{
	if (msg)
		fprintf(stderr, "bagou-bench: %s\n", msg);
	fputs(usage_text, stderr);
	return BG_BENCH_ERR;
}

static bool loopback(const struct in_addr *a)
{
	return (ntohl(a->s_addr) >> 24) == 127;
}

/* HOST:PORT (HOST an IPv4 address or localhost) into addr and hostport. */
static int parse_hostport(const char *s, size_t n, struct sockaddr_in *addr,
			  char *hostport, size_t hpsize)
{
	char host[64], ip[INET_ADDRSTRLEN];
	const char *colon = memrchr(s, ':', n);
	struct sockaddr_in a;
	unsigned long port;
	char *end;

	if (!colon || (size_t)(colon - s) >= sizeof(host) || colon == s)
		return BG_BENCH_ERR;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = '\0';
	port = strtoul(colon + 1, &end, 10);
	if (end != s + n || end == colon + 1 || !port || port > 65535)
		return BG_BENCH_ERR;
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)port);
	if (!strcmp(host, "localhost"))
		strcpy(host, "127.0.0.1");
	if (inet_pton(AF_INET, host, &a.sin_addr) != 1)
		return BG_BENCH_ERR;
	if (!loopback(&a.sin_addr)) {
		fprintf(stderr, "bagou-bench: %s is not a loopback address; "
			"only 127.0.0.0/8 targets are allowed\n", host);
		return BG_BENCH_ERR;
	}
	*addr = a;
	inet_ntop(AF_INET, &a.sin_addr, ip, sizeof(ip));
	snprintf(hostport, hpsize, "%s:%lu", ip, port);
	return BG_BENCH_OK;
}

static int parse_url(struct bg_bench *b, const char *url)
{
	const char *hp, *slash;
	size_t n;

	if (strncmp(url, "ws://", 5))
		return BG_BENCH_ERR;
	hp = url + 5;
	slash = strchr(hp, '/');
	n = slash ? (size_t)(slash - hp) : strlen(hp);
	if (parse_hostport(hp, n, &b->ws_addr, b->ws_hostport,
			   sizeof(b->ws_hostport)) < 0)
		return BG_BENCH_ERR;
	snprintf(b->ws_path, sizeof(b->ws_path), "%s", slash ? slash : "/");
	return BG_BENCH_OK;
}

static int parse_http(struct bg_bench *b, const char *s)
{
	const char *slash;

	if (!strncmp(s, "http://", 7))
		s += 7;
	slash = strchr(s, '/');
	return parse_hostport(s, slash ? (size_t)(slash - s) : strlen(s),
			      &b->http_addr, b->http_hostport,
			      sizeof(b->http_hostport));
}

static bool num(const char *s, double lo, double hi, double *v)
{
	char *end;

	errno = 0;
	*v = strtod(s, &end);
	return !errno && end != s && !*end && *v >= lo && *v <= hi;
}

static bool channel_ok(const char *s)
{
	size_t n = strlen(s), i;

	if (!n || n > 200)
		return false;
	for (i = 0; i < n; i++)
		if (s[i] <= ' ' || s[i] > '~' || strchr("*#\"\\", s[i]))
			return false;
	return true;
}

/* One option; a message for usage() when it is wrong, else NULL. */
static const char *set_opt(struct bg_bench *b, int opt, const char *arg,
			   double *window)
{
	double v;

	switch (opt) {
	case OPT_URL:
		if (parse_url(b, arg))
			return "bad --url (want ws://127.x.x.x:PORT/path)";
		return NULL;
	case OPT_HTTP:
		if (parse_http(b, arg))
			return "bad --http (want 127.x.x.x:PORT)";
		return NULL;
	case OPT_CHANNEL:
		if (!channel_ok(arg))
			return "bad --channel";
		snprintf(b->channel, sizeof(b->channel), "%s", arg);
		return NULL;
	case OPT_EVENT:
		if (!channel_ok(arg) || strlen(arg) >= sizeof(b->event))
			return "bad --event";
		snprintf(b->event, sizeof(b->event), "%s", arg);
		return NULL;
	case OPT_READY_FILE:
		b->ready_file = arg;
		return NULL;
	case OPT_DONE_FILE:
		b->done_file = arg;
		return NULL;
	case OPT_QUIET:
		b->quiet = true;
		return NULL;
	case OPT_PUBLISH:
		if (!strcmp(arg, "http"))
			b->publish = BG_PUB_HTTP;
		else if (!strcmp(arg, "ws"))
			b->publish = BG_PUB_WS;
		else if (!strcmp(arg, "external"))
			b->publish = BG_PUB_EXTERNAL;
		else
			return "--publish is http, ws or external";
		return NULL;
	case OPT_PROTO:
		if (!strcmp(arg, "bagou"))
			b->proto = BG_PROTO_BAGOU;
		else if (!strcmp(arg, "socketio"))
			b->proto = BG_PROTO_SOCKETIO;
		else
			return "--proto is bagou or socketio";
		return NULL;
	case OPT_PIPELINE:
		return "--pipeline was removed: HTTP slots keep one POST "
		       "in flight on a keep-alive connection (use "
		       "--publishers N, or --publish ws --depth D)";
	}
	if (!num(arg, 0, 1e9, &v))
		return "bad number";
	switch (opt) {
	case OPT_CLIENTS:
		if (v < 1 || v > 1000000)
			return "--clients must be 1..1000000";
		b->clients = (unsigned)v;
		break;
	case OPT_RATE:
		b->rate = v;
		break;
	case OPT_DURATION:
		b->duration = v;
		break;
	case OPT_SIZE:
		if (v > 1 << 20)
			return "--size must be at most 1 MiB";
		b->size = (size_t)v;
		break;
	case OPT_CONNECT_RATE:
		if (v <= 0)
			return "--connect-rate must be positive";
		b->connect_rate = v;
		break;
	case OPT_MAX_PENDING:
		b->max_pending = v < 1 ? 1 : (unsigned)v;
		break;
	case OPT_CONN_TIMEOUT:
		b->conn_timeout = v;
		break;
	case OPT_PUBLISHERS:
		if (v < 1 || v > BG_BENCH_MAX_PUBS)
			return "--publishers must be 1..16";
		b->publishers = (unsigned)v;
		break;
	case OPT_DEPTH:
		if (v < 1 || v > BG_BENCH_MAX_DEPTH)
			return "--depth must be 1..64";
		b->depth = (unsigned)v;
		break;
	case OPT_WINDOW:
		if (v > 1 << 20)
			return "--window must be at most 1048576";
		*window = v;
		break;
	case OPT_DRAIN:
		b->drain = v;
		break;
	case OPT_HOLD:
		b->hold = v;
		break;
	case OPT_MAX_FAIL:
		b->max_fail_pct = v;
		break;
	case OPT_CHANNELS:
		if (v < 1 || v > 100000)
			return "--channels must be 1..100000";
		b->channels = (unsigned)v;
		break;
	}
	return NULL;
}

static int parse_args(struct bg_bench *b, int argc, char **argv)
{
	double window = -1;
	const char *err;
	int opt;

	if (argc < 2)
		return usage(NULL);
	if (!strcmp(argv[1], "fanout"))
		b->mode = BG_BENCH_FANOUT;
	else if (!strcmp(argv[1], "idle"))
		b->mode = BG_BENCH_IDLE;
	else if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))
		exit(fputs(usage_text, stdout) < 0);
	else
		return usage("the mode is fanout or idle");
	b->clients = 100;
	strcpy(b->channel, "bench");
	strcpy(b->event, "tick");
	b->duration = 10;
	b->size = 100;
	b->connect_rate = 2000;
	b->max_pending = 256;
	b->conn_timeout = 10;
	b->publish = BG_PUB_HTTP;
	b->publishers = 4;
	b->depth = 1;
	b->drain = 5;
	b->hold = 10;
	b->max_fail_pct = 1;
	b->channels = 1;
	b->proto = BG_PROTO_BAGOU;
	optind = 2;
	while ((opt = getopt_long(argc, argv, "", long_opts, NULL)) != -1) {
		if (opt == OPT_HELP)
			exit(fputs(usage_text, stdout) < 0);
		if (opt == '?')
			return usage(NULL);
		if ((err = set_opt(b, opt, optarg, &window)))
			return usage(err);
	}
	if (optind < argc)
		return usage("unexpected argument");
	if (!b->ws_addr.sin_port)
		return usage("--url is required");
	if (!b->http_addr.sin_port) {
		/* The API listener's default port, on the URL's host. */
		char ip[INET_ADDRSTRLEN];

		b->http_addr = b->ws_addr;
		b->http_addr.sin_port = htons(9001);
		inet_ntop(AF_INET, &b->ws_addr.sin_addr, ip, sizeof(ip));
		snprintf(b->http_hostport, sizeof(b->http_hostport),
			 "%s:9001", ip);
	}
	b->window = window >= 0 ? (unsigned)window : b->rate > 0 ? 0 : 64;
	if (b->mode == BG_BENCH_FANOUT && b->publish == BG_PUB_EXTERNAL) {
		if (!b->done_file)
			return usage("--publish external needs --done-file");
		b->window = 0;	/* nothing to pace: not ours */
		b->rate = 0;
		if (b->channels > 1)
			return usage("--publish external takes one channel");
	}
	if (b->proto == BG_PROTO_SOCKETIO && b->publish == BG_PUB_WS)
		return usage("--proto socketio publishes over HTTP only");
	/* Never load anything but this machine. */
	if (!loopback(&b->ws_addr.sin_addr) ||
	    !loopback(&b->http_addr.sin_addr))
		return usage("only loopback targets are allowed");
	return BG_BENCH_OK;
}

/* Soft fd limit up to the hard one; enough for every connection? */
static int raise_nofile(const struct bg_bench *b)
{
	struct rlimit rl;
	rlim_t need = (rlim_t)b->clients + b->publishers + 32;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
		perror("bagou-bench: getrlimit(RLIMIT_NOFILE) failed");
		return BG_BENCH_ERR;
	}
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			perror("bagou-bench: setrlimit(RLIMIT_NOFILE) failed");
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur < need) {
		fprintf(stderr, "bagou-bench: %u clients need %llu fds, the "
			"limit is %llu\n", b->clients,
			(unsigned long long)need,
			(unsigned long long)rl.rlim_cur);
		return BG_BENCH_ERR;
	}
	return BG_BENCH_OK;
}

int main(int argc, char **argv)
{
	struct bg_bench *b = &bench;
	struct event_config *cfg;
	struct event *tick, *sigint, *sigterm;
	struct timeval tv = { 0, TICK_US };
	unsigned i;

	if (parse_args(b, argc, argv) != BG_BENCH_OK)
		return 1;
	if (raise_nofile(b) < 0)
		return 1;
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	bg_bench_seed();
	b->ws = calloc(b->clients, sizeof(*b->ws));
	b->ch_live = calloc(b->channels, sizeof(*b->ch_live));
	b->ch_subscribed = calloc(b->channels, sizeof(*b->ch_subscribed));
	b->ch_accepted = calloc(b->channels, sizeof(*b->ch_accepted));
	cfg = event_config_new();
	if (!b->ws || !b->ch_live || !b->ch_subscribed || !b->ch_accepted ||
	    !cfg) {
		fputs("bagou-bench: out of memory\n", stderr);
		return 1;
	}
	for (i = 0; i < b->clients; i++) {
		b->ws[i].b = b;
		b->ws[i].fd = -1;
		b->ws[i].ch = i % b->channels;
	}
	event_config_set_flag(cfg, EVENT_BASE_FLAG_NOLOCK);
	b->base = event_base_new_with_config(cfg);
	event_config_free(cfg);
	if (!b->base || event_base_priority_init(b->base, BG_PRIOS) < 0) {
		fputs("bagou-bench: event_base_new() failed\n", stderr);
		return 1;
	}
	tick = event_new(b->base, -1, EV_PERSIST, tick_cb, b);
	sigint = evsignal_new(b->base, SIGINT, signal_cb, b);
	sigterm = evsignal_new(b->base, SIGTERM, signal_cb, b);
	if (!tick || !sigint || !sigterm) {
		fputs("bagou-bench: event_new() failed\n", stderr);
		return 1;
	}
	event_add(tick, &tv);
	event_add(sigint, NULL);
	event_add(sigterm, NULL);
	b->t_setup = bg_bench_now();
	b->phase = BG_BENCH_SETUP;
	event_base_dispatch(b->base);

	event_free(tick);
	event_free(sigint);
	event_free(sigterm);
	if (pace_ev)
		event_free(pace_ev);
	event_base_free(b->base);
	free(b->ws);
	free(b->ch_live);
	free(b->ch_subscribed);
	free(b->ch_accepted);
	return b->exit_code;
}
