/*
 * api_history.c - GET /api/history (api_history.h). API thread.
 *
 * The request goes to the bus like a client's history event (the store
 * is the bus thread's alone, history.h); this thread waits on the
 * request's semaphore. The message holding the request is shared (one
 * reference each), so a bus that answers after the wait gave up writes
 * into memory that is still there.
 */
#include "server/api_history.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "amqp/bus.h"
#include "amqp/history.h"
#include "common/proto.h"
#include "server/http.h"
#include "server/server.h"

#define WAIT_S 5
#define VALUE_MAX 256

static int
hexval(int ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	ch = tolower(ch);
	return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

/* Percent-decodes src[0..n) into out; false when malformed, long, or
 * holding a NUL byte. */
static bool
decode(const char *src, size_t n, char *out, size_t outlen)
{
	size_t k = 0;

	for (size_t i = 0; i < n; i++) {
		int c = (unsigned char)src[i];

		if (c == '%') {
			int hi, lo;
			if (i + 2 >= n)
				return false;
			hi = hexval((unsigned char)src[i + 1]);
			lo = hexval((unsigned char)src[i + 2]);
			if (hi < 0 || lo < 0)
				return false;
			c = hi * 16 + lo;
			i += 2;
		} else if (c == '+') {
			c = ' ';
		}
		if (c == '\0' || k + 1 >= outlen)
			return false;
		out[k++] = (char)c;
	}
	out[k] = '\0';
	return true;
}

static bool
digits(const char *s, uint64_t max, uint64_t *out)
{
	char *end;

	if (!isdigit((unsigned char)s[0]))
		return false;
	errno = 0;
	*out = strtoull(s, &end, 10);
	return errno == 0 && *end == '\0' && *out <= max;
}

static char *
error(unsigned int st, const char *code, const char *message,
      unsigned int *status, size_t *len)
{
	char body[512];

	*len = bg_http_error_body(body, sizeof(body), code, message);
	*status = st;
	return strdup(body);
}

/* The answer as the history event's callback data. */
static char *
answer(const struct bg_hist_req *r, size_t *len)
{
	json_t *o = json_pack("{s:b, s:s, s:s, s:I, s:[]}", "success", 1,
			      "channel", r->channel, "epoch", r->cur_epoch,
			      "offset", (json_int_t)r->top, "publications");
	json_t *list = o ? json_object_get(o, "publications") : NULL;
	char *s;

	for (uint32_t i = 0; list != NULL && i < r->n_pubs; i++) {
		size_t n;
		const char *text = bg_hist_pub_json(&r->pubs[i], &n);
		json_array_append_new(list, json_loadb(text, n, 0, NULL));
	}
	if (o != NULL && !r->recovered)
		json_object_set_new(o, "gap", json_true());
	s = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	if (s != NULL)
		*len = strlen(s);
	return s;
}

char *
bg_api_history(struct bg_server *srv, const char *query,
	       unsigned int *status, size_t *len)
{
	char channel[VALUE_MAX] = "", epoch[VALUE_MAX] = "";
	char offset[VALUE_MAX] = "", limit[VALUE_MAX] = "";
	struct bg_hist_req *r;
	struct timespec until;
	struct bg_msg *m;
	uint64_t n;
	char *body;
	int rc;

	for (const char *p = query; p != NULL && *p != '\0';) {
		const char *amp = strchr(p, '&');
		size_t n_part = amp ? (size_t)(amp - p) : strlen(p);
		const char *eq = memchr(p, '=', n_part);
		size_t klen = eq ? (size_t)(eq - p) : n_part;
		char *dst = NULL;

		if (klen == 7 && strncmp(p, "channel", 7) == 0)
			dst = channel;
		else if (klen == 5 && strncmp(p, "limit", 5) == 0)
			dst = limit;
		else if (klen == 11 && strncmp(p, "since_epoch", 11) == 0)
			dst = epoch;
		else if (klen == 12 && strncmp(p, "since_offset", 12) == 0)
			dst = offset;
		if (n_part > 0 && (dst == NULL || eq == NULL ||
		    !decode(eq + 1, n_part - klen - 1, dst, VALUE_MAX)))
			return error(400, "bad_message", "expected "
				     "channel=C&limit=L&since_epoch=E&"
				     "since_offset=N (percent-encoded)",
				     status, len);
		p = amp ? amp + 1 : p + n_part;
	}
	if (!bg_proto_channel_valid(channel, strlen(channel)))
		return error(400, "invalid_channel", "channel must be 1-200 "
			     "printable ASCII bytes without space * # \" \\",
			     status, len);
	if (limit[0] != '\0' && !digits(limit, UINT64_MAX, &n))
		return error(400, "bad_message", "limit must be an integer "
			     "from 0 (larger values are clamped to [history] "
			     "size)", status, len);
	if ((epoch[0] != '\0') != (offset[0] != '\0') ||
	    strlen(epoch) > BG_HIST_EPOCH_MAX ||
	    (offset[0] != '\0' &&
	     !digits(offset, BG_HIST_OFFSET_MAX, &n)))
		return error(400, "bad_message", "since_epoch (1 to 64 "
			     "bytes) and since_offset (an integer from 0 to "
			     "2^53-1) go together", status, len);
	if (!bg_history_match(bg_bus_history(srv->bus), channel))
		return error(404, "not_found", "this channel keeps no history "
			     "([history] channels)", status, len);
	m = bg_hist_req_new(BG_HIST_API, channel);
	if (m == NULL)
		return NULL;
	r = bg_hist_req_of(m);
	r->worker = -1;
	if (limit[0] != '\0') {
		digits(limit, UINT64_MAX, &n);
		r->limit = n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
	}
	if (epoch[0] != '\0') {
		r->has_pos = true;
		memcpy(r->epoch, epoch, strlen(epoch) + 1); /* <= 64 */
		digits(offset, BG_HIST_OFFSET_MAX, &r->offset);
	}
	bg_msg_ref(m); /* the bus's */
	if (bg_bus_request(srv->bus, m) != BG_OK) {
		bg_msg_unref(m);
		bg_msg_unref(m);
		return error(503, "unavailable", "the node is stopping or "
			     "busy; retry later", status, len);
	}
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += WAIT_S;
	while ((rc = sem_timedwait(&r->done, &until)) != 0 && errno == EINTR)
		;
	if (rc != 0) {
		bg_msg_unref(m);
		return error(503, "unavailable", "no answer from the bus in "
			     "time (RabbitMQ down?); retry later", status,
			     len);
	}
	*status = 200;
	body = r->unavailable ? error(503, "unavailable", "out of memory",
				      status, len) : answer(r, len);
	bg_msg_unref(m);
	return body;
}
