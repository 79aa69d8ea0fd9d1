/*
 * proto.c - JSON codec for PROTOCOL.md §3-§4. Pure: jansson, no I/O.
 *
 * Outgoing payloads are assembled from pre-serialized parts so that a
 * broadcast to n channels dumps its data once, not n times.
 */
#include "common/proto.h"

#include "common/bg.h"
#include "common/chan.h"
#include "common/frame.h"
#include "common/jscan.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const code_names[BG_CODE_COUNT] = {
	[BG_CODE_BAD_MESSAGE] = "bad_message",
	[BG_CODE_INVALID_CHANNEL] = "invalid_channel",
	[BG_CODE_TOO_MANY_SUBSCRIPTIONS] = "too_many_subscriptions",
	[BG_CODE_NOT_ALLOWED] = "not_allowed",
	[BG_CODE_UNAVAILABLE] = "unavailable",
	[BG_CODE_FORBIDDEN] = "forbidden",
	[BG_CODE_CHANNEL_FULL] = "channel_full",
	[BG_CODE_AUTH_FAILED] = "auth_failed",
	[BG_CODE_RATE_LIMITED] = "rate_limited",
	[BG_CODE_UNKNOWN_EVENT] = "unknown_event",
	[BG_CODE_INTERNAL] = "internal_error",
};

const char *
bg_code_name(enum bg_code code)
{
	if ((unsigned)code >= BG_CODE_COUNT)
		return "internal_error";
	return code_names[code];
}

static void
set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	/* Error texts quote input (jansson shows the bytes near a syntax
	 * error) and may be cut anywhere: keep them printable ASCII, so
	 * the JSON error built from them can always be sent. */
	for (char *p = err; *p; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
			*p = '?';
}

/* 1 to max bytes of printable ASCII, none of them space or in `bad`. */
static bool
printable_name(const char *name, size_t len, size_t max, const char *bad)
{
	if (len == 0 || len > max)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)name[i];
		if (ch <= 0x20 || ch >= 0x7f || strchr(bad, ch) != NULL)
			return false;
	}
	return true;
}

bool
bg_proto_channel_valid(const char *name, size_t len)
{
	return printable_name(name, len, BG_CHANNEL_MAX, "*#\"\\");
}

bool
bg_proto_event_valid(const char *name, size_t len)
{
	if (len == 0 || len > BG_EVENT_MAX)
		return false;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
			return false;
	return true;
}

bool
bg_proto_client_id_valid(const char *id, size_t len)
{
	return printable_name(id, len, BG_ID_MAX, "\"\\");
}

int
bg_proto_parse_request(const char *buf, size_t len, struct bg_request *req,
		       char *err, size_t errlen)
{
	json_error_t jerr;
	json_t *root, *ev, *cb;

	memset(req, 0, sizeof(*req));
	root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
	if (root == NULL) {
		set_err(err, errlen, "invalid JSON: %s", jerr.text);
		return BG_ERR;
	}
	req->root = root;
	if (!json_is_object(root)) {
		set_err(err, errlen, "a message must be a JSON object");
		return BG_ERR;
	}
	ev = json_object_get(root, "event");
	cb = json_object_get(root, "callbackId");
	if (json_is_string(ev) &&
	    bg_proto_event_valid(json_string_value(ev),
				 json_string_length(ev)))
		req->event = json_string_value(ev);
	if (cb != NULL && !json_is_null(cb)) {
		if (!json_is_string(cb) ||
		    json_string_length(cb) > BG_CALLBACK_MAX ||
		    json_string_length(cb) == 0) {
			set_err(err, errlen, "callbackId must be a string of "
				"1 to %d bytes", BG_CALLBACK_MAX);
			return BG_ERR;
		}
		req->callback_id = json_string_value(cb);
	}
	if (req->event == NULL) {
		/* Bounded here, at the edge: a forwarded event name is an
		 * AMQP routing key (at most 255 bytes). */
		set_err(err, errlen, "'event' must be a string of 1 to %d "
			"bytes without control characters", BG_EVENT_MAX);
		return BG_ERR;
	}
	req->data = json_object_get(root, "data");
	if (req->data == NULL)
		req->data = json_null();
	return BG_OK;
}

/* ---------------------------------------------------------- replies */

static char *
dump(json_t *obj, size_t *len)
{
	char *s;

	if (obj == NULL)
		return NULL;
	s = json_dumps(obj, JSON_COMPACT | JSON_ENCODE_ANY);
	json_decref(obj);
	if (s != NULL && len != NULL)
		*len = strlen(s);
	return s;
}

char *
bg_proto_connect(const char *client_id, size_t *len)
{
	return dump(json_pack("{s:s, s:{s:s, s:i}}", "event", "connect",
			      "data", "id", client_id, "protocol",
			      BG_PROTOCOL_VERSION), len);
}

char *
bg_proto_pong(size_t *len)
{
	return dump(json_pack("{s:s}", "event", "pong"), len);
}

char *
bg_proto_callback_ok(const char *callback_id, json_t *extra, size_t *len)
{
	json_t *data = json_pack("{s:b}", "success", 1);

	if (data == NULL)
		return NULL;
	if (extra != NULL && json_object_update(data, extra) != 0) {
		json_decref(data);
		return NULL;
	}
	return dump(json_pack("{s:s, s:s, s:o}", "event", "callback",
			      "callbackId", callback_id, "data", data), len);
}

char *
bg_proto_failure(const char *callback_id, const char *event,
		 enum bg_code code, const char *message, size_t *len)
{
	json_t *e = json_pack("{s:s, s:s}", "code", bg_code_name(code),
			      "message", message ? message : "");

	if (e == NULL)
		return NULL;
	if (callback_id != NULL)
		return dump(json_pack("{s:s, s:s, s:{s:b, s:o}}", "event",
				      "callback", "callbackId", callback_id,
				      "data", "success", 0, "error", e), len);
	if (event != NULL &&
	    json_object_set_new(e, "event", json_string(event)) != 0) {
		json_decref(e);
		return NULL;
	}
	return dump(json_pack("{s:s, s:o}", "event", "error", "data", e),
		    len);
}

/* -------------------------------------------------------- broadcasts */

/* A growable byte buffer for assembling payloads. */
struct sbuf {
	char *p;
	size_t len, cap;
	bool oom;
};

static void
sb_add(struct sbuf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		char *p;
		while (cap < b->len + n + 1)
			cap *= 2;
		p = realloc(b->p, cap);
		if (p == NULL) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void
sb_str(struct sbuf *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

/* The pieces every payload of one broadcast shares, each already JSON. */
struct parts {
	char *event, *data, *callback_id, *from;
	uint64_t offset;             /* history position; 0 = none */
};

static void
parts_free(struct parts *p)
{
	free(p->event);
	free(p->data);
	free(p->callback_id);
	free(p->from);
}

static char *
json_text(json_t *v)
{
	return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

static char *
quoted(const char *s)
{
	json_t *v = json_string(s);
	char *out = v ? json_text(v) : NULL;

	json_decref(v);
	return out;
}

static int
add_payload(struct bg_msg *m, uint32_t i, const struct parts *p,
	    const char *channel_json)
{
	struct sbuf b = { 0 };
	int rc;

	sb_str(&b, "{\"event\":");
	sb_str(&b, p->event);
	if (channel_json != NULL) {
		sb_str(&b, ",\"channel\":");
		sb_str(&b, channel_json);
	}
	sb_str(&b, ",\"data\":");
	sb_str(&b, p->data);
	if (p->callback_id != NULL) {
		sb_str(&b, ",\"callbackId\":");
		sb_str(&b, p->callback_id);
	}
	if (p->from != NULL) {
		sb_str(&b, ",\"from\":");
		sb_str(&b, p->from);
	}
	if (p->offset != 0) {
		char num[32];
		snprintf(num, sizeof(num), ",\"offset\":%llu",
			 (unsigned long long)p->offset);
		sb_str(&b, num);
	}
	sb_str(&b, "}");
	rc = b.oom ? BG_ERR : bg_msg_set_frame(m, i, b.p, b.len);
	free(b.p);
	return rc;
}

/* A set of up to BG_MSG_MAX_TARGETS names, by index into the caller's
 * array: linear-time duplicate checks for a target list. */
#define DEDUP_SLOTS (2 * BG_MSG_MAX_TARGETS)

struct dedup {
	uint16_t slot[DEDUP_SLOTS];   /* index + 1, 0 = free */
};

static void
dedup_init(struct dedup *d)
{
	memset(d->slot, 0, sizeof(d->slot));
}

/* names[0..k) are in the set; adds name as names[k] unless one of them
 * equals it. true when added (the caller then stores it at k). */
static bool
dedup_add(struct dedup *d, const char *name, size_t len, char **names,
	  size_t k)
{
	uint32_t h = bg_chan_hash(name, len) & (DEDUP_SLOTS - 1);

	while (d->slot[h] != 0) {
		const char *o = names[d->slot[h] - 1];
		if (strncmp(o, name, len) == 0 && o[len] == '\0')
			return false;
		h = (h + 1) & (DEDUP_SLOTS - 1);
	}
	d->slot[h] = (uint16_t)(k + 1);
	return true;
}

/*
 * Reads a string-or-list-of-strings field into a fresh, de-duplicated
 * array. Returns the count (0 for absent/null/[]), or -1 with err set.
 */
static int
read_targets(json_t *v, const char *field, bool channel, char ***out,
	     enum bg_code *code, char *err, size_t errlen)
{
	size_t n = 0, k = 0;
	char **names;
	struct dedup seen;

	*out = NULL;
	if (v == NULL || json_is_null(v))
		return 0;
	if (json_is_string(v))
		n = 1;
	else if (json_is_array(v))
		n = json_array_size(v);
	else
		goto bad_type;
	if (n == 0)
		return 0;
	if (n > BG_MSG_MAX_TARGETS) {
		*code = BG_CODE_BAD_MESSAGE;
		set_err(err, errlen, "'%s' lists more than %d names", field,
			BG_MSG_MAX_TARGETS);
		return -1;
	}
	names = calloc(n, sizeof(*names));
	dedup_init(&seen);
	if (names == NULL) {
		*code = BG_CODE_INTERNAL;
		set_err(err, errlen, "out of memory");
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *e = json_is_string(v) ? v : json_array_get(v, i);
		const char *s;
		size_t len;
		bool dup = false;

		if (!json_is_string(e)) {
			for (size_t j = 0; j < k; j++)
				free(names[j]);
			free(names);
			goto bad_type;
		}
		s = json_string_value(e);
		len = json_string_length(e);
		if (channel ? !bg_proto_channel_valid(s, len)
			    : !bg_proto_client_id_valid(s, len)) {
			*code = channel ? BG_CODE_INVALID_CHANNEL
					: BG_CODE_BAD_MESSAGE;
			set_err(err, errlen, "invalid %s name in '%s'",
				channel ? "channel" : "client id", field);
			for (size_t j = 0; j < k; j++)
				free(names[j]);
			free(names);
			return -1;
		}
		/* Listing a name twice must not deliver twice. */
		dup = !dedup_add(&seen, s, len, names, k);
		if (!dup)
			names[k++] = strdup(s);
		if (!dup && names[k - 1] == NULL) {
			for (size_t j = 0; j < k; j++)
				free(names[j]);
			free(names);
			*code = BG_CODE_INTERNAL;
			set_err(err, errlen, "out of memory");
			return -1;
		}
	}
	*out = names;
	return (int)k;
bad_type:
	*code = BG_CODE_BAD_MESSAGE;
	set_err(err, errlen, "'%s' must be a string or a list of strings",
		field);
	return -1;
}

static void
free_names(char **names, int n)
{
	for (int i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

/* True when the broadcast's "client" names at least one client (its
 * validity is checked later, with the other targets). */
static bool
names_clients(json_t *root)
{
	json_t *v = json_object_get(root, "client");

	return json_is_string(v) || (json_is_array(v) &&
				     json_array_size(v) > 0);
}

/*
 * The payload of a reply to explicit clients: the broadcast as the
 * application published it, every top-level field kept in its order,
 * minus the fields that only route (client, exclude) or act on the
 * server (auth); nothing added but the server's "from". One JSON
 * serialization, as for a broadcast's data: no cost on the fan-out path.
 */
static int
add_reply_payload(struct bg_msg *m, json_t *root, const char *from)
{
	json_t *out = json_object(), *v;
	const char *key;
	char *text;
	int rc;

	if (out == NULL)
		return BG_ERR;
	json_object_foreach(root, key, v) {
		if (strcmp(key, "client") == 0 ||
		    strcmp(key, "exclude") == 0 || strcmp(key, "auth") == 0)
			continue;
		if (json_object_set(out, key, v) != 0) {
			json_decref(out);
			return BG_ERR;
		}
	}
	if (from != NULL &&
	    json_object_set_new(out, "from", json_string(from)) != 0) {
		json_decref(out);
		return BG_ERR;
	}
	text = json_dumps(out, JSON_COMPACT);
	json_decref(out);
	if (text == NULL)
		return BG_ERR;
	rc = bg_msg_set_frame(m, 0, text, strlen(text));
	free(text);
	return rc;
}

struct bg_msg *
bg_proto_broadcast(json_t *root, const char *from, enum bg_code *code,
		   char *err, size_t errlen)
{
	return bg_proto_broadcast_opt(root, from, BG_PROTO_BODY, code, err,
				      errlen);
}

struct bg_msg *
bg_proto_broadcast_opt(json_t *root, const char *from, unsigned flags,
		       enum bg_code *code, char *err, size_t errlen)
{
	json_t *ev, *data, *cb, *excl, *from_v, *body;
	char **chans = NULL, **clients = NULL, **names;
	int n_chans = 0, n_clients = 0, n;
	struct parts p = { 0 };
	struct bg_msg *m = NULL;
	enum bg_msg_target target;

	*code = BG_CODE_BAD_MESSAGE;
	if (!json_is_object(root)) {
		set_err(err, errlen, "a broadcast must be a JSON object");
		return NULL;
	}
	/* A reply to explicit clients may leave "event" out (what the
	 * original client.jsonify(**kwargs) sent); anything else needs it. */
	ev = json_object_get(root, "event");
	if ((ev != NULL || !names_clients(root)) &&
	    (!json_is_string(ev) || json_string_length(ev) == 0)) {
		set_err(err, errlen, "'event' must be a non-empty string");
		return NULL;
	}
	cb = json_object_get(root, "callbackId");
	if (cb != NULL && !json_is_null(cb) &&
	    (!json_is_string(cb) || json_string_length(cb) > BG_CALLBACK_MAX)) {
		set_err(err, errlen, "'callbackId' must be a string of at "
			"most %d bytes", BG_CALLBACK_MAX);
		return NULL;
	}
	excl = json_object_get(root, "exclude");
	if (excl != NULL && !json_is_null(excl) &&
	    (!json_is_string(excl) ||
	     !bg_proto_client_id_valid(json_string_value(excl),
				       json_string_length(excl)))) {
		set_err(err, errlen, "'exclude' must be a client id");
		return NULL;
	}
	from_v = json_object_get(root, "from");
	if (from == NULL && from_v != NULL && !json_is_null(from_v)) {
		if (!json_is_string(from_v) ||
		    !bg_proto_client_id_valid(json_string_value(from_v),
					      json_string_length(from_v))) {
			set_err(err, errlen, "'from' must be a client id");
			return NULL;
		}
		from = json_string_value(from_v);
	}
	n_chans = read_targets(json_object_get(root, "channel"), "channel",
			       true, &chans, code, err, errlen);
	if (n_chans < 0)
		return NULL;
	n_clients = read_targets(json_object_get(root, "client"), "client",
				 false, &clients, code, err, errlen);
	if (n_clients < 0)
		goto out;

	/* An explicit client list routes; channels then only label. */
	if (n_clients > 0) {
		target = BG_MSG_CLIENTS;
		names = clients;
		n = n_clients;
	} else if (n_chans > 0) {
		target = BG_MSG_CHANNELS;
		names = chans;
		n = n_chans;
	} else {
		target = BG_MSG_ALL;
		names = NULL;
		n = 0;
	}
	*code = BG_CODE_INTERNAL;
	m = bg_msg_new(target, (uint32_t)n);
	if (m == NULL) {
		set_err(err, errlen, "out of memory");
		goto out;
	}
	for (int i = 0; i < n; i++) {
		m->names[i] = names[i];
		names[i] = NULL;
	}
	bg_msg_hash(m);
	if (excl != NULL && json_is_string(excl) &&
	    (m->exclude = strdup(json_string_value(excl))) == NULL)
		goto oom;
	if (target == BG_MSG_CLIENTS) {
		if (add_reply_payload(m, root, from) != BG_OK)
			goto oom;
		if (cb != NULL && json_is_string(cb) &&
		    (m->reply_cb = strdup(json_string_value(cb))) == NULL)
			goto oom;
	} else {
		data = json_object_get(root, "data");
		p.event = json_text(ev);
		p.data = data ? json_text(data) : strdup("{}");
		p.callback_id = cb && json_is_string(cb) ? json_text(cb)
							  : NULL;
		p.from = from ? quoted(from) : NULL;
		if (p.event == NULL || p.data == NULL ||
		    (cb && json_is_string(cb) && p.callback_id == NULL) ||
		    (from && p.from == NULL))
			goto oom;
	}
	if (target == BG_MSG_CHANNELS) {
		size_t framed = 0;
		for (uint32_t i = 0; i < m->n_names; i++) {
			char *c = quoted(m->names[i]);
			int rc = c ? add_payload(m, i, &p, c) : BG_ERR;
			free(c);
			if (rc != BG_OK)
				goto oom;
			framed += m->frames[i].len;
			if (framed > BG_MSG_MAX_FRAMED) {
				*code = BG_CODE_BAD_MESSAGE;
				set_err(err, errlen, "too large: %u channels "
					"times this payload exceed %u bytes",
					m->n_names, BG_MSG_MAX_FRAMED);
				bg_msg_unref(m);
				m = NULL;
				goto out;
			}
		}
	} else if (target == BG_MSG_ALL &&
		   add_payload(m, 0, &p, NULL) != BG_OK) {
		goto oom;
	}
	/* A reply that authenticates its clients (PROTOCOL.md §5). */
	if (target == BG_MSG_CLIENTS &&
	    json_is_object(json_object_get(root, "auth")) &&
	    (m->auth = json_dumps(json_object_get(root, "auth"),
				  JSON_COMPACT)) == NULL)
		goto oom;
	*code = BG_CODE_BAD_MESSAGE;
	if (!(flags & BG_PROTO_BODY))
		goto out;
	*code = BG_CODE_INTERNAL;
	/* The body republished onward keeps "from" for the other nodes. */
	body = json_copy(root);
	if (body == NULL || (from && json_object_set_new(body, "from",
					json_string(from)) != 0)) {
		json_decref(body);
		goto oom;
	}
	m->body = json_dumps(body, JSON_COMPACT);
	json_decref(body);
	if (m->body == NULL)
		goto oom;
	m->body_len = strlen(m->body);
	*code = BG_CODE_BAD_MESSAGE;
	goto out;
oom:
	set_err(err, errlen, "out of memory");
	bg_msg_unref(m);
	m = NULL;
out:
	parts_free(&p);
	free_names(chans, n_chans);
	free_names(clients, n_clients);
	return m;
}

struct bg_msg *
bg_proto_broadcast_text(const char *buf, size_t len, const char *from,
			enum bg_code *code, char *err, size_t errlen)
{
	return bg_proto_broadcast_text_opt(buf, len, from, BG_PROTO_BODY,
					   code, err, errlen);
}

/* ------------------------------------------- broadcasts without a tree */

/* The JSON texts one payload is assembled from. */
struct pieces {
	const char *event, *data, *cb, *from;
	size_t event_len, data_len, cb_len, from_len;
	size_t data_out;          /* data's length once compacted */
};

/* A target name of a fast broadcast: a span of the text. */
struct span {
	const char *p;
	uint32_t len, hash;
};

struct fast_names {
	struct span *v;
	uint32_t n;
	uint16_t slot[DEDUP_SLOTS];   /* index + 1, 0 = free */
};

static size_t
payload_len(const struct pieces *p, size_t chan_len, bool chan)
{
	size_t n = strlen("{\"event\":") + p->event_len +
		   strlen(",\"data\":") + p->data_out + 1;

	if (chan)
		n += strlen(",\"channel\":\"\"") + chan_len;
	if (p->cb != NULL)
		n += strlen(",\"callbackId\":") + p->cb_len;
	if (p->from != NULL)
		n += strlen(",\"from\":") + p->from_len;
	return n;
}

static char *
put(char *o, const char *s, size_t n)
{
	memcpy(o, s, n);
	return o + n;
}

#define PUT(o, lit) put(o, lit, sizeof(lit) - 1)

/* Writes frame i of m: header and payload; data0 is frame 0's
 * compacted data (NULL while writing frame 0). Returns where this
 * frame's data went. */
static const char *
fast_frame(struct bg_msg *m, uint32_t i, const struct pieces *p,
	   const struct span *chan, size_t plen, const char *data0)
{
	uint8_t hdr[BG_FRAME_HDR_MAX];
	size_t hlen = bg_frame_header(hdr, plen);
	uint8_t *block = bg_msg_carve(m, BG_FRAME_PRE + hlen + plen);
	char *o = (char *)block + BG_FRAME_PRE + hlen, *data;

	memcpy(block + BG_FRAME_PRE, hdr, hlen);
	o = PUT(o, "{\"event\":");
	o = put(o, p->event, p->event_len);
	if (chan != NULL) {
		o = PUT(o, ",\"channel\":\"");
		o = put(o, chan->p, chan->len);
		o = PUT(o, "\"");
	}
	o = PUT(o, ",\"data\":");
	data = o;
	if (data0 != NULL)
		o = put(o, data0, p->data_out);
	else if (p->data_out == p->data_len)
		o = put(o, p->data, p->data_len);
	else
		o += bg_jscan_compact(p->data, p->data_len, o);
	if (p->cb != NULL) {
		o = PUT(o, ",\"callbackId\":");
		o = put(o, p->cb, p->cb_len);
	}
	if (p->from != NULL) {
		o = PUT(o, ",\"from\":");
		o = put(o, p->from, p->from_len);
	}
	*o = '}';
	m->frames[i].block = block;
	m->frames[i].data = block + BG_FRAME_PRE;
	m->frames[i].len = (uint32_t)(hlen + plen);
	return data;
}

/* A string member that is null or absent (false), or a plain (no
 * escape) string whose content passes ok (true, *s and *len set).
 * *slow when it is neither. */
static bool
plain_string(const struct bg_jscan_member *v, bool (*ok)(const char *,
	     size_t), const char **s, size_t *len, bool *slow)
{
	if (v == NULL || v->type == BG_JSCAN_NULL)
		return false;
	if (v->type != BG_JSCAN_STRING || v->escaped ||
	    (ok != NULL && !ok(v->val + 1, v->val_len - 2))) {
		*slow = true;
		return false;
	}
	*s = v->val + 1;
	*len = v->val_len - 2;
	return true;
}

static bool
add_fast_name(void *arg, const char *e, size_t elen,
	      enum bg_jscan_type type, bool escaped)
{
	struct fast_names *f = arg;
	const char *name = e + 1;
	size_t len = elen - 2;
	uint32_t h, slot;

	if (type != BG_JSCAN_STRING || escaped ||
	    !bg_proto_channel_valid(name, len) ||
	    f->n == BG_MSG_MAX_TARGETS)
		return false;
	h = bg_chan_hash(name, len);
	for (slot = h & (DEDUP_SLOTS - 1); f->slot[slot] != 0;
	     slot = (slot + 1) & (DEDUP_SLOTS - 1)) {
		const struct span *o = &f->v[f->slot[slot] - 1];
		if (o->hash == h && o->len == len &&
		    memcmp(o->p, name, len) == 0)
			return true; /* listed twice: delivered once */
	}
	f->slot[slot] = (uint16_t)(f->n + 1);
	f->v[f->n++] = (struct span){ name, (uint32_t)len, h };
	return true;
}

static bool
client_id_ok(const char *s, size_t len)
{
	return bg_proto_client_id_valid(s, len);
}

/*
 * The broadcast built from text without jansson, or NULL with *slow:
 * jscan could not vouch for the text, or it is not the common form (a
 * reply to clients, an escaped name, anything invalid), and jansson's
 * path must decide. NULL without *slow: out of memory.
 */
static struct bg_msg *
broadcast_fast(const char *buf, size_t len, unsigned flags, bool *slow)
{
	struct bg_jscan_member mem[BG_JSCAN_MAX_KEYS];
	const struct bg_jscan_member *ev, *ch, *data, *cl;
	struct span names[BG_MSG_MAX_TARGETS];
	struct fast_names fn = { .v = names };
	struct pieces p = { 0 };
	const char *excl = NULL, *from = NULL;
	size_t excl_len = 0, from_len = 0, extra, framed = 0, n_mem;
	enum bg_msg_target target;
	const char *data0 = NULL;
	struct bg_msg *m;
	char *o;

	*slow = true;
	if (bg_jscan_object(buf, len, mem, &n_mem) != BG_JSCAN_OK)
		return NULL;
	*slow = false;
	ev = bg_jscan_get(mem, n_mem, "event");
	ch = bg_jscan_get(mem, n_mem, "channel");
	data = bg_jscan_get(mem, n_mem, "data");
	cl = bg_jscan_get(mem, n_mem, "client");
	if ((cl != NULL && cl->type != BG_JSCAN_NULL) || ev == NULL ||
	    ev->type != BG_JSCAN_STRING || ev->val_len <= 2)
		*slow = true;
	if (plain_string(bg_jscan_get(mem, n_mem, "callbackId"), NULL,
			 &p.cb, &p.cb_len, slow)) {
		if (p.cb_len > BG_CALLBACK_MAX)
			*slow = true;
		p.cb--;
		p.cb_len += 2; /* with its quotes */
	}
	plain_string(bg_jscan_get(mem, n_mem, "exclude"), client_id_ok,
		     &excl, &excl_len, slow);
	if (plain_string(bg_jscan_get(mem, n_mem, "from"), client_id_ok,
			 &from, &from_len, slow)) {
		p.from = from - 1;
		p.from_len = from_len + 2;
	}
	if (*slow)
		return NULL;
	if (ch != NULL && ch->type == BG_JSCAN_STRING) {
		if (!add_fast_name(&fn, ch->val, ch->val_len, ch->type,
				   ch->escaped))
			return *slow = true, NULL;
	} else if (ch != NULL && ch->type == BG_JSCAN_ARRAY) {
		if (!bg_jscan_each(ch->val, ch->val_len, add_fast_name, &fn))
			return *slow = true, NULL;
	} else if (ch != NULL && ch->type != BG_JSCAN_NULL) {
		return *slow = true, NULL;
	}
	target = fn.n > 0 ? BG_MSG_CHANNELS : BG_MSG_ALL;
	p.event = ev->val;
	p.event_len = ev->val_len;
	p.data = data != NULL ? data->val : "{}";
	p.data_len = data != NULL ? data->val_len : 2;
	p.data_out = data != NULL ? bg_jscan_compact(p.data, p.data_len,
						     NULL) : 2;
	/* Sizes first, for one allocation. */
	extra = excl_len + 1 + ((flags & BG_PROTO_BODY) ? len + 1 : 0);
	for (uint32_t i = 0; i < fn.n; i++) {
		extra += names[i].len + 1 + 8;
		framed += BG_FRAME_HDR_MAX + payload_len(&p, names[i].len,
							 true);
		if (framed > BG_MSG_MAX_FRAMED)
			return *slow = true, NULL; /* jansson words it */
	}
	if (fn.n == 0)
		framed = BG_FRAME_HDR_MAX + payload_len(&p, 0, false);
	extra += framed + (size_t)(fn.n ? fn.n : 1) * (BG_FRAME_PRE + 8);
	m = bg_msg_new_packed(target, fn.n, extra);
	if (m == NULL)
		return NULL;
	for (uint32_t i = 0; i < fn.n; i++) {
		o = bg_msg_carve(m, names[i].len + 1);
		memcpy(o, names[i].p, names[i].len);
		o[names[i].len] = '\0';
		m->names[i] = o;
		m->hashes[i] = names[i].hash;
		m->hashed = true;
		data0 = fast_frame(m, i, &p, &names[i],
				   payload_len(&p, names[i].len, true),
				   data0);
	}
	if (fn.n == 0)
		fast_frame(m, 0, &p, NULL, payload_len(&p, 0, false), NULL);
	if (excl != NULL) {
		m->exclude = bg_msg_carve(m, excl_len + 1);
		memcpy(m->exclude, excl, excl_len);
		m->exclude[excl_len] = '\0';
	}
	if (flags & BG_PROTO_BODY) {
		m->body = bg_msg_carve(m, len + 1);
		memcpy(m->body, buf, len);
		m->body[len] = '\0';
		m->body_len = len;
	}
	return m;
}

struct bg_msg *
bg_proto_broadcast_text_opt(const char *buf, size_t len, const char *from,
			    unsigned flags, enum bg_code *code, char *err,
			    size_t errlen)
{
	json_error_t jerr;
	json_t *root;
	struct bg_msg *m;
	bool slow = true;

	if (from == NULL) {
		m = broadcast_fast(buf, len, flags, &slow);
		if (m != NULL)
			return m;
		if (!slow) {
			*code = BG_CODE_INTERNAL;
			set_err(err, errlen, "out of memory");
			return NULL;
		}
	}
	root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
	if (root == NULL) {
		*code = BG_CODE_BAD_MESSAGE;
		set_err(err, errlen, "invalid JSON: %s", jerr.text);
		return NULL;
	}
	m = bg_proto_broadcast_opt(root, from, flags, code, err, errlen);
	json_decref(root);
	return m;
}

int
bg_proto_set_offset(struct bg_msg *m, const bool *which, uint64_t offset)
{
	json_t *root, *ev, *data, *cb, *from;
	struct parts p = { 0 };
	int rc = BG_ERR;

	if (m->target != BG_MSG_CHANNELS || m->body == NULL)
		return BG_ERR;
	root = json_loadb(m->body, m->body_len, 0, NULL);
	if (root == NULL)
		return BG_ERR;
	ev = json_object_get(root, "event");
	data = json_object_get(root, "data");
	cb = json_object_get(root, "callbackId");
	from = json_object_get(root, "from");
	p.event = ev ? json_text(ev) : NULL;
	p.data = data ? json_text(data) : strdup("{}");
	p.callback_id = json_is_string(cb) ? json_text(cb) : NULL;
	p.from = json_is_string(from) ? json_text(from) : NULL;
	p.offset = offset;
	if (p.event == NULL || p.data == NULL ||
	    (json_is_string(cb) && p.callback_id == NULL) ||
	    (json_is_string(from) && p.from == NULL))
		goto out;
	for (uint32_t i = 0; i < m->n_names; i++) {
		char *c;

		if (!which[i])
			continue;
		c = quoted(m->names[i]);
		rc = c ? add_payload(m, i, &p, c) : BG_ERR;
		free(c);
		if (rc != BG_OK)
			goto out;
	}
	rc = BG_OK;
out:
	parts_free(&p);
	json_decref(root);
	return rc;
}
