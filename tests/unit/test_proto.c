/*
 * test_proto.c - unit tests of common/proto.c against PROTOCOL.md §3-§4:
 * client request parsing, channel and client id rules, the exact JSON of
 * every reply, broadcast validation and the frames it builds (each frame's
 * payload parsed back), and hostile inputs (deep nesting, a 1 MB string,
 * invalid UTF-8, \u0000).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/bg.h"
#include "common/frame.h"
#include "common/msg.h"
#include "common/proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ helpers */

static char err[256];

static int
parse(const char *s, struct bg_request *req)
{
	err[0] = '\0';
	return bg_proto_parse_request(s, strlen(s), req, err, sizeof(err));
}

/* Parses s expecting BG_ERR and an error text starting with prefix. */
static void
expect_bad_request(const char *s, const char *prefix)
{
	struct bg_request req;

	assert_int_equal(parse(s, &req), BG_ERR);
	if (strncmp(err, prefix, strlen(prefix)) != 0)
		fail_msg("input %s: error \"%s\", wanted \"%s...\"", s, err,
			 prefix);
	json_decref(req.root);
}

static struct bg_msg *
broadcast(const char *s, const char *from, enum bg_code *code)
{
	err[0] = '\0';
	*code = BG_CODE_COUNT;
	return bg_proto_broadcast_text(s, strlen(s), from, code, err,
				       sizeof(err));
}

static void
expect_reject(const char *s, enum bg_code want, const char *prefix)
{
	enum bg_code code;
	struct bg_msg *m = broadcast(s, NULL, &code);

	if (m != NULL) {
		bg_msg_unref(m);
		fail_msg("broadcast accepted: %s", s);
	}
	if (code != want)
		fail_msg("broadcast %s: code %s, wanted %s", s,
			 bg_code_name(code), bg_code_name(want));
	if (prefix != NULL && strncmp(err, prefix, strlen(prefix)) != 0)
		fail_msg("broadcast %s: error \"%s\", wanted \"%s...\"", s,
			 err, prefix);
}

/* The payload of frame i, after checking its header: FIN+text, unmasked,
 * and a length that matches the frame exactly. */
static const char *
frame_payload(const struct bg_msg *m, uint32_t i, size_t *len)
{
	const struct bg_msg_frame *f;
	const uint8_t *d;
	uint64_t n;
	size_t h;

	assert_true(i < m->n_frames);
	f = &m->frames[i];
	d = f->data;
	assert_non_null(d);
	assert_ptr_equal(d, f->block + BG_FRAME_PRE);
	assert_true(f->len >= 2);
	assert_int_equal(d[0], 0x81);
	assert_int_equal(d[1] & 0x80, 0);
	if (d[1] < 126) {
		n = d[1];
		h = 2;
	} else if (d[1] == 126) {
		n = (uint64_t)d[2] << 8 | d[3];
		h = 4;
		assert_true(n >= 126);
	} else {
		n = 0;
		for (int k = 2; k < 10; k++)
			n = n << 8 | d[k];
		h = 10;
		assert_true(n > 0xffff);
	}
	assert_int_equal(f->len, h + n);
	*len = (size_t)n;
	return (const char *)d + h;
}

/* Frame i's payload parsed back (caller decrefs). */
static json_t *
frame_json(const struct bg_msg *m, uint32_t i)
{
	size_t len;
	const char *p = frame_payload(m, i, &len);
	json_error_t jerr;
	json_t *v = json_loadb(p, len, JSON_REJECT_DUPLICATES, &jerr);

	if (v == NULL)
		fail_msg("frame %u does not parse: %s", i, jerr.text);
	assert_true(json_is_object(v));
	return v;
}

/* Frame i's payload equals the JSON want (as a value). */
static void
expect_frame(const struct bg_msg *m, uint32_t i, const char *want)
{
	json_t *got = frame_json(m, i);
	json_t *w = json_loads(want, 0, NULL);

	assert_non_null(w);
	if (!json_equal(got, w)) {
		char *g = json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS);
		fail_msg("frame %u is %s, wanted %s", i, g, want);
	}
	json_decref(got);
	json_decref(w);
}

/* Frame i's payload is exactly the text want. */
static void
expect_frame_text(const struct bg_msg *m, uint32_t i, const char *want)
{
	size_t len;
	const char *p = frame_payload(m, i, &len);

	if (len != strlen(want) || memcmp(p, want, len) != 0)
		fail_msg("frame %u is %.*s, wanted %s", i, (int)len, p, want);
}

/* The body republished onward equals want. */
static void
expect_body(const struct bg_msg *m, const char *want)
{
	json_t *b, *w;

	assert_non_null(m->body);
	assert_int_equal(m->body_len, strlen(m->body));
	b = json_loads(m->body, JSON_REJECT_DUPLICATES, NULL);
	w = json_loads(want, 0, NULL);
	assert_non_null(b);
	assert_non_null(w);
	if (!json_equal(b, w))
		fail_msg("body is %s, wanted %s", m->body, want);
	json_decref(b);
	json_decref(w);
}

static char *
repeat(char c, size_t n)
{
	char *s = malloc(n + 1);

	assert_non_null(s);
	memset(s, c, n);
	s[n] = '\0';
	return s;
}

/* sprintf into a fresh buffer. */
static char * __attribute__((format(printf, 1, 2)))
fmt(const char *f, ...)
{
	va_list ap;
	char *s;

	va_start(ap, f);
	assert_true(vasprintf(&s, f, ap) >= 0);
	va_end(ap);
	return s;
}

/* depth nested arrays: [[[...]]]. */
static char *
nested(size_t depth)
{
	char *s = malloc(2 * depth + 1);

	assert_non_null(s);
	memset(s, '[', depth);
	memset(s + depth, ']', depth);
	s[2 * depth] = '\0';
	return s;
}

/* ---------------------------------------------------- parse_request */

static void
test_parse_valid(void **state)
{
	struct bg_request req;

	assert_int_equal(parse("{\"event\": \"subscribe\", \"data\": "
			       "{\"channel\": \"news\"}, \"callbackId\": "
			       "\"c-17\"}", &req), BG_OK);
	assert_non_null(req.root);
	assert_string_equal(req.event, "subscribe");
	assert_string_equal(req.callback_id, "c-17");
	assert_true(json_is_object(req.data));
	assert_string_equal(json_string_value(json_object_get(req.data,
							      "channel")),
			    "news");
	json_decref(req.root);

	/* Minimal: no data, no callbackId. */
	assert_int_equal(parse("{\"event\":\"ping\"}", &req), BG_OK);
	assert_string_equal(req.event, "ping");
	assert_null(req.callback_id);
	assert_non_null(req.data);
	assert_true(json_is_null(req.data));
	json_decref(req.root);

	/* Unknown members are ignored; data keeps any JSON type. */
	assert_int_equal(parse("{\"x\":1,\"event\":\"e\",\"data\":[1,2]}",
			       &req), BG_OK);
	assert_true(json_is_array(req.data));
	assert_int_equal(json_array_size(req.data), 2);
	json_decref(req.root);
	assert_int_equal(parse("{\"event\":\"e\",\"data\":0}", &req), BG_OK);
	assert_true(json_is_integer(req.data));
	json_decref(req.root);
	assert_int_equal(parse("{\"event\":\"e\",\"data\":null}", &req),
			 BG_OK);
	assert_true(json_is_null(req.data));
	json_decref(req.root);

	/* Escapes are decoded. */
	assert_int_equal(parse("{\"event\":\"a\\u00e9\\/\"}", &req), BG_OK);
	assert_string_equal(req.event, "a\xc3\xa9/");
	json_decref(req.root);
}

/* A forwarded event name becomes an AMQP routing key (255 bytes at
 * most): names are bounded and printable at the edge. */
static void
test_parse_event_bounds(void **state)
{
	static const char *const bad[] = {
		"{\"event\":\"a\\n\"}", "{\"event\":\"\\r\"}",
		"{\"event\":\"\\u001f\"}", "{\"event\":\"a\\u007f\"}",
		"{\"event\":\"\\t\"}",
	};
	struct bg_request req;
	char name[BG_EVENT_MAX + 2];
	char *s;

	for (size_t i = 0; i < BG_ARRAY_LEN(bad); i++)
		expect_bad_request(bad[i],
				   "'event' must be a string of 1 to 128 bytes "
				   "without control characters");
	memset(name, 'e', sizeof(name));
	name[BG_EVENT_MAX] = '\0';
	s = fmt("{\"event\":\"%s\",\"callbackId\":\"c\"}", name);
	assert_int_equal(parse(s, &req), BG_OK);
	assert_int_equal(strlen(req.event), BG_EVENT_MAX);
	json_decref(req.root);
	free(s);
	name[BG_EVENT_MAX] = 'e';
	name[BG_EVENT_MAX + 1] = '\0';
	s = fmt("{\"event\":\"%s\",\"callbackId\":\"c\"}", name);
	assert_int_equal(parse(s, &req), BG_ERR);
	assert_null(req.event);
	assert_string_equal(req.callback_id, "c");
	json_decref(req.root);
	free(s);
	/* Printable UTF-8 and AMQP wildcards are fine in a routing key. */
	assert_true(bg_proto_event_valid("chat.\xc3\xa9#*", 9));
	assert_false(bg_proto_event_valid("", 0));
}

static void
test_parse_respects_len(void **state)
{
	static const char buf[] = "{\"event\":\"a\"}GARBAGE";
	struct bg_request req;

	assert_int_equal(bg_proto_parse_request(buf, 13, &req, err,
						sizeof(err)), BG_OK);
	assert_string_equal(req.event, "a");
	json_decref(req.root);
	assert_int_equal(bg_proto_parse_request(buf, sizeof(buf) - 1, &req,
						err, sizeof(err)), BG_ERR);
	json_decref(req.root);
	/* Cut short: not JSON. */
	assert_int_equal(bg_proto_parse_request(buf, 12, &req, err,
						sizeof(err)), BG_ERR);
	assert_null(req.root);
	assert_null(req.event);
}

static void
test_parse_invalid_json(void **state)
{
	static const char *const bad[] = {
		"", " ", "{", "}", "{\"event\":}", "{\"event\":\"a\"",
		"not json", "{'event':'a'}", "{\"event\":\"a\",}",
		"{\"event\":\"a\"} {}", "{\"event\":\"a\"}x",
		"{\"event\":\"a\",\"event\":\"b\"}", /* duplicate key */
		"{\"event\":\"a\\x\"}", "{\"event\":NaN}",
	};

	for (size_t i = 0; i < BG_ARRAY_LEN(bad); i++) {
		struct bg_request req;

		memset(&req, 0xa5, sizeof(req));
		assert_int_equal(parse(bad[i], &req), BG_ERR);
		if (strncmp(err, "invalid JSON: ", 14) != 0)
			fail_msg("%s: error \"%s\"", bad[i], err);
		assert_null(req.root);
		assert_null(req.event);
		assert_null(req.callback_id);
	}
}

static void
test_parse_not_object(void **state)
{
	static const char *const arrays[] = { "[]", "[{\"event\":\"a\"}]" };
	/* jansson refuses a bare scalar as a document (no
	 * JSON_DECODE_ANY): those fail as invalid JSON. */
	static const char *const scalars[] = { "\"event\"", "42", "null",
					       "true" };
	struct bg_request req;

	for (size_t i = 0; i < BG_ARRAY_LEN(arrays); i++) {
		assert_int_equal(parse(arrays[i], &req), BG_ERR);
		assert_string_equal(err, "a message must be a JSON object");
		assert_null(req.event);
		assert_null(req.callback_id);
		json_decref(req.root);
	}
	for (size_t i = 0; i < BG_ARRAY_LEN(scalars); i++)
		expect_bad_request(scalars[i], "invalid JSON: ");
}

static void
test_parse_bad_event(void **state)
{
	static const char *const bad[] = {
		"{}", "{\"data\":{}}", "{\"event\":\"\"}", "{\"event\":null}",
		"{\"event\":5}", "{\"event\":[\"a\"]}", "{\"event\":{}}",
		"{\"Event\":\"a\"}",
	};
	struct bg_request req;

	for (size_t i = 0; i < BG_ARRAY_LEN(bad); i++)
		expect_bad_request(bad[i],
				   "'event' must be a string of 1 to 128 bytes "
				   "without control characters");

	/* The callbackId is still read, so the failure can answer it. */
	assert_int_equal(parse("{\"callbackId\":\"cb-1\",\"data\":1}", &req),
			 BG_ERR);
	assert_string_equal(req.callback_id, "cb-1");
	assert_null(req.event);
	json_decref(req.root);
	assert_int_equal(parse("{\"event\":7,\"callbackId\":\"cb-2\"}", &req),
			 BG_ERR);
	assert_string_equal(req.callback_id, "cb-2");
	json_decref(req.root);
}

static void
test_parse_callback_id(void **state)
{
	struct bg_request req;
	char *id64 = repeat('c', 64), *id65 = repeat('c', 65), *s;

	/* Exactly 64 bytes: fine. */
	s = fmt("{\"event\":\"e\",\"callbackId\":\"%s\"}", id64);
	assert_int_equal(parse(s, &req), BG_OK);
	assert_string_equal(req.callback_id, id64);
	json_decref(req.root);
	free(s);

	/* Bytes, not characters: 32 x "é" and "x" are 33 characters but
	 * 65 bytes. */
	{
		char e65[66] = "";

		for (int i = 0; i < 32; i++)
			strcat(e65, "\xc3\xa9");
		strcat(e65, "x");
		s = fmt("{\"event\":\"e\",\"callbackId\":\"%s\"}", e65);
	}
	assert_int_equal(parse(s, &req), BG_ERR);
	assert_null(req.callback_id);
	json_decref(req.root);
	free(s);

	/* 65: rejected, but the event is still known. */
	s = fmt("{\"event\":\"e\",\"callbackId\":\"%s\"}", id65);
	assert_int_equal(parse(s, &req), BG_ERR);
	assert_string_equal(err, "callbackId must be a string of 1 to 64 "
			    "bytes");
	assert_string_equal(req.event, "e");
	assert_null(req.callback_id);
	json_decref(req.root);
	free(s);

	static const char *const bad[] = {
		"{\"event\":\"e\",\"callbackId\":\"\"}",
		"{\"event\":\"e\",\"callbackId\":5}",
		"{\"event\":\"e\",\"callbackId\":true}",
		"{\"event\":\"e\",\"callbackId\":{}}",
		"{\"event\":\"e\",\"callbackId\":[\"a\"]}",
	};
	for (size_t i = 0; i < BG_ARRAY_LEN(bad); i++) {
		assert_int_equal(parse(bad[i], &req), BG_ERR);
		assert_string_equal(err, "callbackId must be a string of 1 "
				    "to 64 bytes");
		assert_string_equal(req.event, "e");
		assert_null(req.callback_id);
		json_decref(req.root);
	}

	/* null is the same as absent. */
	assert_int_equal(parse("{\"event\":\"e\",\"callbackId\":null}", &req),
			 BG_OK);
	assert_null(req.callback_id);
	json_decref(req.root);
	free(id64);
	free(id65);
}

static void
test_parse_hostile(void **state)
{
	struct bg_request req;
	char *deep, *s, *big;

	/* Nesting past jansson's limit (2048): an error, not a crash. */
	deep = nested(100000);
	s = fmt("{\"event\":\"e\",\"data\":%s}", deep);
	assert_int_equal(parse(s, &req), BG_ERR);
	assert_null(req.root);
	free(s);
	free(deep);
	deep = nested(2000);
	s = fmt("{\"event\":\"e\",\"data\":%s}", deep);
	assert_int_equal(parse(s, &req), BG_OK);
	assert_true(json_is_array(req.data));
	json_decref(req.root);
	free(s);
	free(deep);

	/* A 1 MB string. */
	big = repeat('x', 1 << 20);
	s = fmt("{\"event\":\"e\",\"data\":\"%s\"}", big);
	assert_int_equal(parse(s, &req), BG_OK);
	assert_int_equal(json_string_length(req.data), 1 << 20);
	json_decref(req.root);
	free(s);
	/* ... but not as an event name (PROTOCOL.md §3: 128 bytes). */
	s = fmt("{\"event\":\"%s\"}", big);
	assert_int_equal(parse(s, &req), BG_ERR);
	assert_null(req.event);
	json_decref(req.root);
	free(s);
	free(big);

	/* Invalid UTF-8 anywhere is rejected. */
	expect_bad_request("{\"event\":\"\xff\"}", "invalid JSON");
	expect_bad_request("{\"event\":\"a\",\"data\":\"\xc3\"}",
			   "invalid JSON");
	expect_bad_request("{\"event\":\"\xc0\xaf\"}", "invalid JSON");
	expect_bad_request("{\"event\":\"\xed\xa0\x80\"}", "invalid JSON");
	expect_bad_request("{\"event\":\"\xf4\x90\x80\x80\"}",
			   "invalid JSON");
	expect_bad_request("{\"\xfe\":1,\"event\":\"a\"}", "invalid JSON");
	/* A lone surrogate escape. */
	expect_bad_request("{\"event\":\"\\ud800\"}", "invalid JSON");

	/* \u0000 in a string is refused (jansson without JSON_ALLOW_NUL):
	 * a NUL would cut the C string the rest of the server sees. */
	expect_bad_request("{\"event\":\"a\\u0000b\"}", "invalid JSON");
	expect_bad_request("{\"event\":\"a\",\"callbackId\":\"x\\u0000\"}",
			   "invalid JSON");
	expect_bad_request("{\"event\":\"a\",\"data\":{\"k\":\"\\u0000\"}}",
			   "invalid JSON");

	/* A raw NUL byte inside the buffer. */
	{
		static const char raw[] = "{\"event\":\"a\0b\"}";

		assert_int_equal(bg_proto_parse_request(raw, sizeof(raw) - 1,
							&req, err,
							sizeof(err)), BG_ERR);
		assert_null(req.root);
	}
	/* Control characters must be escaped in JSON strings. */
	expect_bad_request("{\"event\":\"a\nb\"}", "invalid JSON");
}

/*
 * The error text goes back to the client (bg_proto_failure, PROTOCOL.md
 * §2: invalid JSON gets an error event) and to the publisher (POST
 * /broadcast's 400 body), both JSON: it must be valid UTF-8 whatever the
 * input, or no answer can be built. jansson quotes the input "near" the
 * error, and after a backslash it quotes only the lead byte of a
 * multi-byte character.
 */
static const char *const bad_escape_inputs[] = {
	"{\"event\":\"a\\\xc3\xa9\"}",            /* a\é  */
	"{\"event\":\"a\\\xe2\x80\xa8\"}",       /* a\U+2028 */
	"{\"event\":\"e\",\"data\":{\"k\\\xde\x80}", /* fuzzer's */
};

static bool
utf8_valid(const char *s)
{
	json_t *v = json_string(s); /* NULL for invalid UTF-8 */

	json_decref(v);
	return v != NULL;
}

static void
test_error_text_is_utf8(void **state)
{
	for (size_t i = 0; i < BG_ARRAY_LEN(bad_escape_inputs); i++) {
		const char *in = bad_escape_inputs[i];
		struct bg_request req;
		size_t len = 0;
		char *reply;

		assert_int_equal(parse(in, &req), BG_ERR);
		assert_true(strncmp(err, "invalid JSON: ", 14) == 0);
		reply = bg_proto_failure(req.callback_id, req.event,
					 BG_CODE_BAD_MESSAGE, err, &len);
		json_decref(req.root);
		if (!utf8_valid(err) || reply == NULL)
			fail_msg("input %zu: error text is not UTF-8 (\"%s\"),"
				 " failure reply %s", i, err,
				 reply ? "built" : "NULL: the client gets "
				 "no error event");
		free(reply);
	}
}

static void
test_broadcast_error_text_is_utf8(void **state)
{
	for (size_t i = 0; i < BG_ARRAY_LEN(bad_escape_inputs); i++) {
		enum bg_code code;
		struct bg_msg *m = broadcast(bad_escape_inputs[i], NULL,
					     &code);

		assert_null(m);
		assert_int_equal(code, BG_CODE_BAD_MESSAGE);
		if (!utf8_valid(err))
			fail_msg("input %zu: error text is not UTF-8 (\"%s\"):"
				 " POST /broadcast cannot build its 400 body",
				 i, err);
	}
}

static void
test_parse_small_err_buffer(void **state)
{
	struct bg_request req;
	char small[8];

	memset(small, 'z', sizeof(small));
	assert_int_equal(bg_proto_parse_request("[]", 2, &req, small,
						sizeof(small)), BG_ERR);
	assert_string_equal(small, "a messa");
	json_decref(req.root);
	/* No error buffer at all. */
	assert_int_equal(bg_proto_parse_request("[]", 2, &req, NULL, 0),
			 BG_ERR);
	json_decref(req.root);
}

/* ----------------------------------------------------- names and ids */

static bool
channel_ok(const char *s)
{
	return bg_proto_channel_valid(s, strlen(s));
}

static bool
client_ok(const char *s)
{
	return bg_proto_client_id_valid(s, strlen(s));
}

static void
test_channel_valid(void **state)
{
	char *s200 = repeat('a', 200), *s201 = repeat('a', 201);

	assert_false(bg_proto_channel_valid("", 0));
	assert_false(bg_proto_channel_valid("abc", 0));
	assert_true(channel_ok("a"));
	assert_true(channel_ok(s200));
	assert_false(channel_ok(s201));
	assert_true(bg_proto_channel_valid(s201, 200)); /* length wins */
	assert_true(channel_ok("news"));
	assert_true(channel_ok("private-room:42"));
	assert_true(channel_ok("a.b/c_d|e~f!g$h%i&j'k(l)m+n,o;p<q=r>s?t@u"));
	assert_true(channel_ok("[x]{y}^`"));

	assert_false(channel_ok(" "));
	assert_false(channel_ok("a b"));
	assert_false(channel_ok("news "));
	assert_false(channel_ok("a*"));
	assert_false(channel_ok("#a"));
	assert_false(channel_ok("a\"b"));
	assert_false(channel_ok("a\\b"));
	assert_false(channel_ok("a\tb"));
	assert_false(channel_ok("a\nb"));
	assert_false(channel_ok("a\rb"));
	assert_false(channel_ok("\x01"));
	assert_false(channel_ok("a\x1f"));
	assert_false(channel_ok("a\x7f"));        /* DEL */
	assert_false(channel_ok("caf\xc3\xa9"));  /* é */
	assert_false(channel_ok("\x80"));
	assert_false(channel_ok("\xff"));
	assert_false(bg_proto_channel_valid("a\0b", 3)); /* NUL inside */

	/* Every single byte: exactly printable ASCII minus the five. */
	for (int c = 0; c < 256; c++) {
		char b = (char)c;
		bool want = c > 0x20 && c < 0x7f && c != '*' && c != '#' &&
			    c != '"' && c != '\\';

		if (bg_proto_channel_valid(&b, 1) != want)
			fail_msg("channel byte 0x%02x: %s", c,
				 want ? "rejected" : "accepted");
	}
	free(s200);
	free(s201);
}

static void
test_client_id_valid(void **state)
{
	char *s64 = repeat('i', 64), *s65 = repeat('i', 65);

	assert_false(bg_proto_client_id_valid("", 0));
	assert_true(client_ok("a"));
	assert_true(client_ok(s64));
	assert_false(client_ok(s65));
	assert_true(client_ok("0123456789abcdef-3-17"));
	/* '*' and '#' are fine in ids, unlike channel names. */
	assert_true(client_ok("a*b#c"));
	assert_false(client_ok("a b"));
	assert_false(client_ok("a\"b"));
	assert_false(client_ok("a\\b"));
	assert_false(client_ok("a\tb"));
	assert_false(client_ok("a\x7f"));
	assert_false(client_ok("\xc3\xa9"));
	assert_false(bg_proto_client_id_valid("a\0b", 3));
	for (int c = 0; c < 256; c++) {
		char b = (char)c;
		bool want = c > 0x20 && c < 0x7f && c != '"' && c != '\\';

		if (bg_proto_client_id_valid(&b, 1) != want)
			fail_msg("client id byte 0x%02x: %s", c,
				 want ? "rejected" : "accepted");
	}
	free(s64);
	free(s65);
}

/* ---------------------------------------------------------- replies */

static void
expect_text(char *got, size_t len, const char *want)
{
	assert_non_null(got);
	assert_string_equal(got, want);
	assert_int_equal(len, strlen(want));
	free(got);
}

static void
test_code_names(void **state)
{
	static const char *const want[BG_CODE_COUNT] = {
		"bad_message", "invalid_channel", "too_many_subscriptions",
		"not_allowed", "unavailable", "forbidden", "channel_full",
		"auth_failed", "rate_limited", "unknown_event",
		"internal_error",
	};

	for (int c = 0; c < BG_CODE_COUNT; c++)
		assert_string_equal(bg_code_name((enum bg_code)c), want[c]);
	assert_string_equal(bg_code_name(BG_CODE_COUNT), "internal_error");
	assert_string_equal(bg_code_name((enum bg_code)-1), "internal_error");
}

static void
test_connect_pong(void **state)
{
	size_t len = 0;
	char *s;

	s = bg_proto_connect("a1b2-0-7", &len);
	expect_text(s, len, "{\"event\":\"connect\",\"data\":{\"id\":"
		    "\"a1b2-0-7\",\"protocol\":1}}");
	s = bg_proto_pong(&len);
	expect_text(s, len, "{\"event\":\"pong\"}");
	/* len may be NULL. */
	s = bg_proto_pong(NULL);
	assert_string_equal(s, "{\"event\":\"pong\"}");
	free(s);
}

static void
test_callback_ok(void **state)
{
	size_t len = 0;
	json_t *extra = json_pack("{s:s}", "channel", "news");
	char *s;

	s = bg_proto_callback_ok("c-17", NULL, &len);
	expect_text(s, len, "{\"event\":\"callback\",\"callbackId\":\"c-17\","
		    "\"data\":{\"success\":true}}");
	s = bg_proto_callback_ok("c-17", extra, &len);
	expect_text(s, len, "{\"event\":\"callback\",\"callbackId\":\"c-17\","
		    "\"data\":{\"success\":true,\"channel\":\"news\"}}");
	/* extra is borrowed: still ours, unchanged. */
	assert_int_equal(extra->refcount, 1);
	assert_int_equal(json_object_size(extra), 1);
	json_decref(extra);

	/* Strings are escaped. */
	s = bg_proto_callback_ok("a\"b\\c", NULL, &len);
	expect_text(s, len, "{\"event\":\"callback\",\"callbackId\":"
		    "\"a\\\"b\\\\c\",\"data\":{\"success\":true}}");
}

static void
test_failure(void **state)
{
	size_t len = 0;
	char *s;

	s = bg_proto_failure("c-1", "subscribe", BG_CODE_INVALID_CHANNEL,
			     "bad name", &len);
	expect_text(s, len, "{\"event\":\"callback\",\"callbackId\":\"c-1\","
		    "\"data\":{\"success\":false,\"error\":{\"code\":"
		    "\"invalid_channel\",\"message\":\"bad name\"}}}");
	s = bg_proto_failure(NULL, "subscribe", BG_CODE_FORBIDDEN, "no",
			     &len);
	expect_text(s, len, "{\"event\":\"error\",\"data\":{\"code\":"
		    "\"forbidden\",\"message\":\"no\",\"event\":"
		    "\"subscribe\"}}");
	/* No event known (unparseable message). */
	s = bg_proto_failure(NULL, NULL, BG_CODE_BAD_MESSAGE, "invalid JSON",
			     &len);
	expect_text(s, len, "{\"event\":\"error\",\"data\":{\"code\":"
		    "\"bad_message\",\"message\":\"invalid JSON\"}}");
	/* No message text. */
	s = bg_proto_failure(NULL, "x", BG_CODE_RATE_LIMITED, NULL, &len);
	expect_text(s, len, "{\"event\":\"error\",\"data\":{\"code\":"
		    "\"rate_limited\",\"message\":\"\",\"event\":\"x\"}}");
	s = bg_proto_failure("c-2", NULL, BG_CODE_UNKNOWN_EVENT, "what?",
			     &len);
	expect_text(s, len, "{\"event\":\"callback\",\"callbackId\":\"c-2\","
		    "\"data\":{\"success\":false,\"error\":{\"code\":"
		    "\"unknown_event\",\"message\":\"what?\"}}}");
}

/* ------------------------------------------------------- broadcasts */

static void
test_broadcast_one_channel(void **state)
{
	static const char *in = "{\"event\": \"message\", \"channel\": "
				"\"news\", \"data\": {\"text\": \"Welcome!\"}}";
	enum bg_code code;
	struct bg_msg *m = broadcast(in, NULL, &code);

	assert_non_null(m);
	assert_int_equal(m->refs, 1);
	assert_int_equal(m->target, BG_MSG_CHANNELS);
	assert_int_equal(m->n_names, 1);
	assert_string_equal(m->names[0], "news");
	assert_null(m->exclude);
	assert_int_equal(m->n_frames, 1);
	expect_frame_text(m, 0, "{\"event\":\"message\",\"channel\":\"news\","
			  "\"data\":{\"text\":\"Welcome!\"}}");
	expect_body(m, in);
	assert_true(bg_msg_size(m) >= m->frames[0].len + m->body_len);
	bg_msg_unref(m);
}

static void
test_broadcast_channel_list(void **state)
{
	enum bg_code code;
	struct bg_msg *m = broadcast("{\"event\":\"e\",\"channel\":[\"a\","
				     "\"b\",\"c\"],\"data\":[1,\"x\"]}", NULL,
				     &code);

	assert_non_null(m);
	assert_int_equal(m->target, BG_MSG_CHANNELS);
	assert_int_equal(m->n_names, 3);
	assert_int_equal(m->n_frames, 3);
	assert_string_equal(m->names[0], "a");
	assert_string_equal(m->names[1], "b");
	assert_string_equal(m->names[2], "c");
	/* frames[i] carries "channel": names[i]. */
	expect_frame_text(m, 0, "{\"event\":\"e\",\"channel\":\"a\","
			  "\"data\":[1,\"x\"]}");
	expect_frame_text(m, 1, "{\"event\":\"e\",\"channel\":\"b\","
			  "\"data\":[1,\"x\"]}");
	expect_frame_text(m, 2, "{\"event\":\"e\",\"channel\":\"c\","
			  "\"data\":[1,\"x\"]}");
	bg_msg_unref(m);
}

static void
test_broadcast_duplicates(void **state)
{
	enum bg_code code;
	struct bg_msg *m = broadcast("{\"event\":\"e\",\"channel\":[\"a\","
				     "\"b\",\"a\",\"c\",\"b\",\"a\"]}", NULL,
				     &code);

	assert_non_null(m);
	assert_int_equal(m->n_names, 3);
	assert_int_equal(m->n_frames, 3);
	assert_string_equal(m->names[0], "a");
	assert_string_equal(m->names[1], "b");
	assert_string_equal(m->names[2], "c");
	expect_frame(m, 0, "{\"event\":\"e\",\"channel\":\"a\",\"data\":{}}");
	expect_frame(m, 1, "{\"event\":\"e\",\"channel\":\"b\",\"data\":{}}");
	expect_frame(m, 2, "{\"event\":\"e\",\"channel\":\"c\",\"data\":{}}");
	bg_msg_unref(m);

	/* Names differing only in case are different channels. */
	m = broadcast("{\"event\":\"e\",\"channel\":[\"A\",\"a\"]}", NULL,
		      &code);
	assert_non_null(m);
	assert_int_equal(m->n_names, 2);
	bg_msg_unref(m);
}

static void
test_broadcast_everyone(void **state)
{
	static const char *const in[] = {
		"{\"event\":\"e\",\"data\":{\"k\":1}}",
		"{\"event\":\"e\",\"channel\":null,\"data\":{\"k\":1}}",
		"{\"event\":\"e\",\"channel\":[],\"data\":{\"k\":1}}",
		"{\"event\":\"e\",\"client\":null,\"channel\":[],"
		"\"data\":{\"k\":1}}",
	};

	for (size_t i = 0; i < BG_ARRAY_LEN(in); i++) {
		enum bg_code code;
		struct bg_msg *m = broadcast(in[i], NULL, &code);
		json_t *f;

		assert_non_null(m);
		assert_int_equal(m->target, BG_MSG_ALL);
		assert_int_equal(m->n_names, 0);
		assert_int_equal(m->n_frames, 1);
		/* No "channel" for a message to everyone. */
		expect_frame_text(m, 0, "{\"event\":\"e\",\"data\":{\"k\":1}}");
		f = frame_json(m, 0);
		assert_null(json_object_get(f, "channel"));
		json_decref(f);
		expect_body(m, in[i]);
		bg_msg_unref(m);
	}
}

static void
test_broadcast_clients(void **state)
{
	enum bg_code code;
	struct bg_msg *m;

	m = broadcast("{\"event\":\"dm\",\"client\":\"n1-0-5\",\"data\":1}",
		      NULL, &code);
	assert_non_null(m);
	assert_int_equal(m->target, BG_MSG_CLIENTS);
	assert_int_equal(m->n_names, 1);
	assert_string_equal(m->names[0], "n1-0-5");
	assert_int_equal(m->n_frames, 1);
	expect_frame_text(m, 0, "{\"event\":\"dm\",\"data\":1}");
	bg_msg_unref(m);

	/* A list, de-duplicated; channels then do not route, and stay in
	 * the payload as published (a label); no "data" is added. */
	m = broadcast("{\"event\":\"dm\",\"client\":[\"x-1\",\"y-2\",\"x-1\"],"
		      "\"channel\":\"news\"}", NULL, &code);
	assert_non_null(m);
	assert_int_equal(m->target, BG_MSG_CLIENTS);
	assert_int_equal(m->n_names, 2);
	assert_string_equal(m->names[0], "x-1");
	assert_string_equal(m->names[1], "y-2");
	assert_int_equal(m->n_frames, 1);
	expect_frame_text(m, 0, "{\"event\":\"dm\",\"channel\":\"news\"}");
	bg_msg_unref(m);
}

/* A reply to explicit clients (what client.jsonify(**kwargs) publishes)
 * keeps every top-level field, in order, minus client, exclude, auth. */
static void
test_broadcast_client_reply_fields(void **state)
{
	enum bg_code code;
	struct bg_msg *m;

	m = broadcast("{\"success\":true,\"client\":\"n-0-1\",\"message\":"
		      "\"Message received!\",\"n\":[1,{\"a\":null}]}", NULL,
		      &code);
	assert_non_null(m);
	assert_int_equal(m->target, BG_MSG_CLIENTS);
	expect_frame_text(m, 0, "{\"success\":true,\"message\":"
			  "\"Message received!\",\"n\":[1,{\"a\":null}]}");
	bg_msg_unref(m);

	m = broadcast("{\"event\":\"callback\",\"callbackId\":\"u-1\","
		      "\"client\":[\"n-0-1\"],\"exclude\":\"n-0-2\",\"auth\":"
		      "{\"user\":\"42\"},\"data\":{\"user\":{\"pk\":42}},"
		      "\"extra\":\"x\",\"from\":\"n-0-9\"}", NULL, &code);
	assert_non_null(m);
	assert_non_null(m->auth);
	assert_string_equal(m->exclude, "n-0-2");
	expect_frame_text(m, 0, "{\"event\":\"callback\",\"callbackId\":"
			  "\"u-1\",\"data\":{\"user\":{\"pk\":42}},"
			  "\"extra\":\"x\",\"from\":\"n-0-9\"}");
	bg_msg_unref(m);

	/* Without clients, "event" is still required; with a bad event
	 * even a reply is refused. */
	assert_null(broadcast("{\"success\":true}", NULL, &code));
	assert_int_equal(code, BG_CODE_BAD_MESSAGE);
	assert_null(broadcast("{\"success\":true,\"client\":[]}", NULL,
			      &code));
	assert_null(broadcast("{\"event\":5,\"client\":\"n-0-1\"}", NULL,
			      &code));
	assert_null(broadcast("{\"event\":\"\",\"client\":\"n-0-1\"}",
			      NULL, &code));
	assert_null(broadcast("{\"ok\":1,\"client\":\"a b\"}", NULL, &code));
	assert_int_equal(code, BG_CODE_BAD_MESSAGE);
}

static void
test_broadcast_exclude_callback_from(void **state)
{
	enum bg_code code;
	struct bg_msg *m;
	json_t *f;

	m = broadcast("{\"event\":\"e\",\"channel\":\"a\",\"exclude\":"
		      "\"n-1-2\",\"callbackId\":\"cb-9\",\"data\":null}", NULL,
		      &code);
	assert_non_null(m);
	assert_string_equal(m->exclude, "n-1-2");
	/* exclude routes; it is not delivered. callbackId passes. */
	expect_frame_text(m, 0, "{\"event\":\"e\",\"channel\":\"a\",\"data\":"
			  "null,\"callbackId\":\"cb-9\"}");
	bg_msg_unref(m);

	m = broadcast("{\"event\":\"e\",\"exclude\":null}", NULL, &code);
	assert_non_null(m);
	assert_null(m->exclude);
	bg_msg_unref(m);

	/* from, given by the server (a client publish). */
	m = broadcast("{\"event\":\"chat\",\"channel\":[\"a\",\"b\"],"
		      "\"data\":\"hi\"}", "n-1-3", &code);
	assert_non_null(m);
	expect_frame_text(m, 0, "{\"event\":\"chat\",\"channel\":\"a\","
			  "\"data\":\"hi\",\"from\":\"n-1-3\"}");
	expect_frame_text(m, 1, "{\"event\":\"chat\",\"channel\":\"b\","
			  "\"data\":\"hi\",\"from\":\"n-1-3\"}");
	/* Kept in the body for the other nodes. */
	expect_body(m, "{\"event\":\"chat\",\"channel\":[\"a\",\"b\"],"
		    "\"data\":\"hi\",\"from\":\"n-1-3\"}");
	bg_msg_unref(m);

	/* The server's from wins over one in the message. */
	m = broadcast("{\"event\":\"chat\",\"from\":\"forged\"}", "n-1-3",
		      &code);
	assert_non_null(m);
	f = frame_json(m, 0);
	assert_string_equal(json_string_value(json_object_get(f, "from")),
			    "n-1-3");
	json_decref(f);
	expect_body(m, "{\"event\":\"chat\",\"from\":\"n-1-3\"}");
	bg_msg_unref(m);

	/* A from already in the message (relayed from another node). */
	m = broadcast("{\"event\":\"chat\",\"from\":\"n-9-1\"}", NULL, &code);
	assert_non_null(m);
	expect_frame_text(m, 0, "{\"event\":\"chat\",\"data\":{},\"from\":"
			  "\"n-9-1\"}");
	bg_msg_unref(m);
}

static void
test_broadcast_data(void **state)
{
	static const struct { const char *in, *frame; } cases[] = {
		{ "{\"event\":\"e\"}", "{\"event\":\"e\",\"data\":{}}" },
		{ "{\"event\":\"e\",\"data\":{}}",
		  "{\"event\":\"e\",\"data\":{}}" },
		{ "{\"event\":\"e\",\"data\":0}",
		  "{\"event\":\"e\",\"data\":0}" },
		{ "{\"event\":\"e\",\"data\":false}",
		  "{\"event\":\"e\",\"data\":false}" },
		{ "{\"event\":\"e\",\"data\":\"s\"}",
		  "{\"event\":\"e\",\"data\":\"s\"}" },
		{ "{\"event\":\"e\",\"data\":1.5}",
		  "{\"event\":\"e\",\"data\":1.5}" },
		{ "{\"event\":\"e\",\"data\":{\"a\":[1,{\"b\":null}]}}",
		  "{\"event\":\"e\",\"data\":{\"a\":[1,{\"b\":null}]}}" },
		/* Escapes survive the round trip. */
		{ "{\"event\":\"q\\\"\\\\\",\"data\":\"\\u00e9\\n\\u2028\"}",
		  "{\"event\":\"q\\\"\\\\\",\"data\":\"\xc3\xa9\\n"
		  "\xe2\x80\xa8\"}" },
	};

	for (size_t i = 0; i < BG_ARRAY_LEN(cases); i++) {
		enum bg_code code;
		struct bg_msg *m = broadcast(cases[i].in, NULL, &code);

		if (m == NULL)
			fail_msg("%s rejected: %s", cases[i].in, err);
		expect_frame(m, 0, cases[i].frame);
		bg_msg_unref(m);
	}
}

/* The root passed to bg_proto_broadcast is not modified. */
static void
test_broadcast_root_untouched(void **state)
{
	json_t *root = json_pack("{s:s, s:[s, s]}", "event", "e", "channel",
				 "a", "b");
	char *before = json_dumps(root, JSON_COMPACT), *after;
	enum bg_code code;
	struct bg_msg *m = bg_proto_broadcast(root, "n-1-1", &code, err,
					      sizeof(err));

	assert_non_null(m);
	after = json_dumps(root, JSON_COMPACT);
	assert_string_equal(before, after);
	assert_int_equal(root->refcount, 1);
	bg_msg_unref(m);
	json_decref(root);
	free(before);
	free(after);

	/* NULL root: rejected. */
	assert_null(bg_proto_broadcast(NULL, NULL, &code, err, sizeof(err)));
	assert_int_equal(code, BG_CODE_BAD_MESSAGE);
}

static void
test_broadcast_max_targets(void **state)
{
	size_t cap = 16 * (BG_MSG_MAX_TARGETS + 2) + 64;
	char *s = malloc(cap), *p;
	enum bg_code code;
	struct bg_msg *m;

	/* Exactly BG_MSG_MAX_TARGETS distinct channels: accepted. */
	assert_non_null(s);
	p = s + sprintf(s, "{\"event\":\"e\",\"channel\":[");
	for (int i = 0; i < BG_MSG_MAX_TARGETS; i++)
		p += sprintf(p, "%s\"c%d\"", i ? "," : "", i);
	strcpy(p, "]}");
	m = broadcast(s, NULL, &code);
	assert_non_null(m);
	assert_int_equal(m->n_names, BG_MSG_MAX_TARGETS);
	assert_int_equal(m->n_frames, BG_MSG_MAX_TARGETS);
	expect_frame_text(m, BG_MSG_MAX_TARGETS - 1,
			  "{\"event\":\"e\",\"channel\":\"c1023\","
			  "\"data\":{}}");
	bg_msg_unref(m);

	/* One more: rejected. */
	sprintf(p, ",\"c%d\"]}", BG_MSG_MAX_TARGETS);
	expect_reject(s, BG_CODE_BAD_MESSAGE,
		      "'channel' lists more than 1024 names");

	/* The same for client ids. */
	p = s + sprintf(s, "{\"event\":\"e\",\"client\":[");
	for (int i = 0; i <= BG_MSG_MAX_TARGETS; i++)
		p += sprintf(p, "%s\"id%d\"", i ? "," : "", i);
	strcpy(p, "]}");
	expect_reject(s, BG_CODE_BAD_MESSAGE,
		      "'client' lists more than 1024 names");
	free(s);
}

/* A payload framed once per listed channel: the total is capped. */
static void
test_broadcast_framed_cap(void **state)
{
	size_t pad = BG_MSG_MAX_FRAMED / BG_MSG_MAX_TARGETS + 64;
	json_t *chans = json_array(), *root;
	struct bg_msg *m;
	enum bg_code code;
	char e[200];
	char *data = malloc(pad + 1);

	assert_non_null(data);
	memset(data, 'x', pad);
	data[pad] = '\0';
	for (int i = 0; i < BG_MSG_MAX_TARGETS; i++) {
		char name[16];
		snprintf(name, sizeof(name), "c%d", i);
		json_array_append_new(chans, json_string(name));
	}
	root = json_pack("{s:s, s:o, s:s}", "event", "e", "channel", chans,
			 "data", data);
	m = bg_proto_broadcast(root, NULL, &code, e, sizeof(e));
	assert_null(m);
	assert_int_equal(code, BG_CODE_BAD_MESSAGE);
	assert_non_null(strstr(e, "too large"));
	/* The same payload to one channel is fine. */
	json_object_set_new(root, "channel", json_string("one"));
	m = bg_proto_broadcast(root, NULL, &code, e, sizeof(e));
	assert_non_null(m);
	bg_msg_unref(m);
	json_decref(root);
	free(data);
}

static void
test_broadcast_rejects(void **state)
{
	char *c201 = repeat('c', 201), *id65 = repeat('i', 65), *cb65 =
		repeat('b', 65), *s;

	/* Not an object, not JSON. */
	expect_reject("[]", BG_CODE_BAD_MESSAGE,
		      "a broadcast must be a JSON object");
	expect_reject("\"message\"", BG_CODE_BAD_MESSAGE, NULL);
	expect_reject("null", BG_CODE_BAD_MESSAGE, NULL);
	expect_reject("{", BG_CODE_BAD_MESSAGE, "invalid JSON: ");
	expect_reject("", BG_CODE_BAD_MESSAGE, "invalid JSON: ");
	expect_reject("{\"event\":\"e\",\"event\":\"f\"}", BG_CODE_BAD_MESSAGE,
		      "invalid JSON: ");

	/* No usable event. */
	expect_reject("{}", BG_CODE_BAD_MESSAGE,
		      "'event' must be a non-empty string");
	expect_reject("{\"channel\":\"a\"}", BG_CODE_BAD_MESSAGE, NULL);
	expect_reject("{\"event\":\"\"}", BG_CODE_BAD_MESSAGE, NULL);
	expect_reject("{\"event\":1}", BG_CODE_BAD_MESSAGE, NULL);
	expect_reject("{\"event\":null}", BG_CODE_BAD_MESSAGE, NULL);

	/* Bad channel names. */
	expect_reject("{\"event\":\"e\",\"channel\":\"a b\"}",
		      BG_CODE_INVALID_CHANNEL,
		      "invalid channel name in 'channel'");
	expect_reject("{\"event\":\"e\",\"channel\":\"\"}",
		      BG_CODE_INVALID_CHANNEL, NULL);
	expect_reject("{\"event\":\"e\",\"channel\":\"a*\"}",
		      BG_CODE_INVALID_CHANNEL, NULL);
	expect_reject("{\"event\":\"e\",\"channel\":\"caf\\u00e9\"}",
		      BG_CODE_INVALID_CHANNEL, NULL);
	expect_reject("{\"event\":\"e\",\"channel\":\"a\\u007f\"}",
		      BG_CODE_INVALID_CHANNEL, NULL);
	expect_reject("{\"event\":\"e\",\"channel\":[\"ok\",\"not ok\"]}",
		      BG_CODE_INVALID_CHANNEL, NULL);
	s = fmt("{\"event\":\"e\",\"channel\":\"%s\"}", c201);
	expect_reject(s, BG_CODE_INVALID_CHANNEL, NULL);
	free(s);
	s = fmt("{\"event\":\"e\",\"channel\":\"%.200s\"}", c201);
	{
		enum bg_code code;
		struct bg_msg *m = broadcast(s, NULL, &code);

		assert_non_null(m); /* 200 is fine */
		bg_msg_unref(m);
	}
	free(s);

	/* Wrong types in the channel field. */
	expect_reject("{\"event\":\"e\",\"channel\":[\"a\",1]}",
		      BG_CODE_BAD_MESSAGE,
		      "'channel' must be a string or a list of strings");
	expect_reject("{\"event\":\"e\",\"channel\":5}", BG_CODE_BAD_MESSAGE,
		      NULL);
	expect_reject("{\"event\":\"e\",\"channel\":{\"a\":1}}",
		      BG_CODE_BAD_MESSAGE, NULL);
	expect_reject("{\"event\":\"e\",\"channel\":[null]}",
		      BG_CODE_BAD_MESSAGE, NULL);
	expect_reject("{\"event\":\"e\",\"channel\":[[\"a\"]]}",
		      BG_CODE_BAD_MESSAGE, NULL);
	expect_reject("{\"event\":\"e\",\"channel\":true}",
		      BG_CODE_BAD_MESSAGE, NULL);

	/* Bad client ids. */
	expect_reject("{\"event\":\"e\",\"client\":\"a b\"}",
		      BG_CODE_BAD_MESSAGE,
		      "invalid client id name in 'client'");
	expect_reject("{\"event\":\"e\",\"client\":\"\"}", BG_CODE_BAD_MESSAGE,
		      NULL);
	s = fmt("{\"event\":\"e\",\"client\":\"%s\"}", id65);
	expect_reject(s, BG_CODE_BAD_MESSAGE, NULL);
	free(s);
	expect_reject("{\"event\":\"e\",\"client\":[\"ok\",2]}",
		      BG_CODE_BAD_MESSAGE,
		      "'client' must be a string or a list of strings");
	expect_reject("{\"event\":\"e\",\"client\":7}", BG_CODE_BAD_MESSAGE,
		      NULL);
	/* A bad client list is rejected even with good channels. */
	expect_reject("{\"event\":\"e\",\"channel\":[\"a\",\"b\"],"
		      "\"client\":[\"x\\\"y\"]}", BG_CODE_BAD_MESSAGE, NULL);

	/* Bad exclude. */
	expect_reject("{\"event\":\"e\",\"exclude\":5}", BG_CODE_BAD_MESSAGE,
		      "'exclude' must be a client id");
	expect_reject("{\"event\":\"e\",\"exclude\":\"a b\"}",
		      BG_CODE_BAD_MESSAGE, NULL);
	expect_reject("{\"event\":\"e\",\"exclude\":\"\"}",
		      BG_CODE_BAD_MESSAGE, NULL);
	expect_reject("{\"event\":\"e\",\"exclude\":[\"a\"]}",
		      BG_CODE_BAD_MESSAGE, NULL);

	/* Bad callbackId, bad from. */
	s = fmt("{\"event\":\"e\",\"callbackId\":\"%s\"}", cb65);
	expect_reject(s, BG_CODE_BAD_MESSAGE,
		      "'callbackId' must be a string of at most 64 bytes");
	free(s);
	expect_reject("{\"event\":\"e\",\"callbackId\":5}", BG_CODE_BAD_MESSAGE,
		      NULL);
	expect_reject("{\"event\":\"e\",\"from\":\"a b\"}", BG_CODE_BAD_MESSAGE,
		      "'from' must be a client id");
	expect_reject("{\"event\":\"e\",\"from\":1}", BG_CODE_BAD_MESSAGE,
		      NULL);

	/* No error buffer: still rejected, no crash. */
	{
		enum bg_code code;

		assert_null(bg_proto_broadcast_text("[]", 2, NULL, &code, NULL,
						    0));
		assert_int_equal(code, BG_CODE_BAD_MESSAGE);
	}
	free(c201);
	free(id65);
	free(cb65);
}

static void
test_broadcast_hostile(void **state)
{
	enum bg_code code;
	struct bg_msg *m;
	char *deep, *s, *big;
	size_t len;

	/* Past jansson's depth limit: rejected, no crash. */
	deep = nested(100000);
	s = fmt("{\"event\":\"e\",\"data\":%s}", deep);
	expect_reject(s, BG_CODE_BAD_MESSAGE, "invalid JSON: ");
	free(s);
	free(deep);

	/* Deep but legal: the frame carries it intact. */
	deep = nested(2000);
	s = fmt("{\"event\":\"e\",\"channel\":\"c\",\"data\":%s}", deep);
	m = broadcast(s, NULL, &code);
	assert_non_null(m);
	free(s);
	s = fmt("{\"event\":\"e\",\"channel\":\"c\",\"data\":%s}", deep);
	expect_frame_text(m, 0, s);
	bg_msg_unref(m);
	free(s);
	free(deep);

	/* A 1 MB string: a 64-bit-length frame. */
	big = repeat('y', 1 << 20);
	s = fmt("{\"event\":\"e\",\"channel\":[\"a\",\"b\"],\"data\":\"%s\"}",
		big);
	m = broadcast(s, NULL, &code);
	assert_non_null(m);
	assert_int_equal(m->n_frames, 2);
	frame_payload(m, 1, &len);
	assert_int_equal(m->frames[1].data[1], 127);
	assert_int_equal(len, strlen("{\"event\":\"e\",\"channel\":\"b\","
				     "\"data\":\"\"}") + (1 << 20));
	assert_true(bg_msg_size(m) > 3u << 20); /* 2 frames + body */
	bg_msg_unref(m);
	free(s);
	free(big);

	/* Invalid UTF-8 anywhere is rejected. */
	expect_reject("{\"event\":\"\xff\"}", BG_CODE_BAD_MESSAGE,
		      "invalid JSON: ");
	expect_reject("{\"event\":\"e\",\"channel\":\"\xc3\"}",
		      BG_CODE_BAD_MESSAGE, "invalid JSON: ");
	expect_reject("{\"event\":\"e\",\"data\":\"\xed\xa0\x80\"}",
		      BG_CODE_BAD_MESSAGE, "invalid JSON: ");
	expect_reject("{\"event\":\"e\",\"data\":{\"\xc0\x80\":1}}",
		      BG_CODE_BAD_MESSAGE, "invalid JSON: ");
	expect_reject("{\"event\":\"e\",\"data\":\"\\udc00\"}",
		      BG_CODE_BAD_MESSAGE, "invalid JSON: ");

	/* \u0000: refused, so no name or event is cut short at the NUL
	 * ("a\u0000b" must not become channel "a"). */
	expect_reject("{\"event\":\"e\",\"channel\":\"a\\u0000b\"}",
		      BG_CODE_BAD_MESSAGE, "invalid JSON: ");
	expect_reject("{\"event\":\"e\\u0000x\"}", BG_CODE_BAD_MESSAGE,
		      "invalid JSON: ");
	expect_reject("{\"event\":\"e\",\"client\":\"id\\u0000\"}",
		      BG_CODE_BAD_MESSAGE, "invalid JSON: ");
	expect_reject("{\"event\":\"e\",\"data\":\"\\u0000\"}",
		      BG_CODE_BAD_MESSAGE, "invalid JSON: ");

	/* Escaped but legal channel characters are decoded first. */
	m = broadcast("{\"event\":\"e\",\"channel\":\"new\\u0073\"}", NULL,
		      &code);
	assert_non_null(m);
	assert_string_equal(m->names[0], "news");
	bg_msg_unref(m);
}

/* History: "offset" framed last, only into the channels asked for; the
 * body and the other frames stay as they were. */
static void
test_set_offset(void **state)
{
	enum bg_code code;
	struct bg_msg *m = broadcast("{\"event\":\"m\",\"channel\":[\"a\","
				     "\"b\"],\"data\":{\"x\":1},"
				     "\"callbackId\":\"c\"}", "cid", &code);
	bool which[2] = { false, true };
	const char *p;
	size_t len;

	assert_non_null(m);
	assert_int_equal(bg_proto_set_offset(m, which, 9007199254740991ull),
			 BG_OK);
	p = frame_payload(m, 0, &len);
	assert_int_equal(memcmp(p, "{\"event\":\"m\",\"channel\":\"a\","
				"\"data\":{\"x\":1},\"callbackId\":\"c\","
				"\"from\":\"cid\"}", len), 0);
	p = frame_payload(m, 1, &len);
	assert_int_equal(len, strlen("{\"event\":\"m\",\"channel\":\"b\","
				     "\"data\":{\"x\":1},\"callbackId\":"
				     "\"c\",\"from\":\"cid\",\"offset\":"
				     "9007199254740991}"));
	assert_int_equal(memcmp(p, "{\"event\":\"m\",\"channel\":\"b\","
				"\"data\":{\"x\":1},\"callbackId\":\"c\","
				"\"from\":\"cid\",\"offset\":"
				"9007199254740991}", len), 0);
	bg_msg_unref(m);
	/* Not a channel broadcast: refused, nothing changed. */
	m = broadcast("{\"event\":\"m\"}", NULL, &code);
	assert_non_null(m);
	assert_int_equal(bg_proto_set_offset(m, which, 1), BG_ERR);
	bg_msg_unref(m);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_valid),
		cmocka_unit_test(test_parse_respects_len),
		cmocka_unit_test(test_parse_invalid_json),
		cmocka_unit_test(test_parse_not_object),
		cmocka_unit_test(test_parse_bad_event),
		cmocka_unit_test(test_parse_event_bounds),
		cmocka_unit_test(test_parse_callback_id),
		cmocka_unit_test(test_parse_hostile),
		cmocka_unit_test(test_parse_small_err_buffer),
		cmocka_unit_test(test_error_text_is_utf8),
		cmocka_unit_test(test_broadcast_framed_cap),
		cmocka_unit_test(test_broadcast_error_text_is_utf8),
		cmocka_unit_test(test_channel_valid),
		cmocka_unit_test(test_client_id_valid),
		cmocka_unit_test(test_code_names),
		cmocka_unit_test(test_connect_pong),
		cmocka_unit_test(test_callback_ok),
		cmocka_unit_test(test_failure),
		cmocka_unit_test(test_broadcast_one_channel),
		cmocka_unit_test(test_broadcast_channel_list),
		cmocka_unit_test(test_broadcast_duplicates),
		cmocka_unit_test(test_broadcast_everyone),
		cmocka_unit_test(test_broadcast_clients),
		cmocka_unit_test(test_broadcast_client_reply_fields),
		cmocka_unit_test(test_broadcast_exclude_callback_from),
		cmocka_unit_test(test_broadcast_data),
		cmocka_unit_test(test_broadcast_root_untouched),
		cmocka_unit_test(test_broadcast_max_targets),
		cmocka_unit_test(test_broadcast_rejects),
		cmocka_unit_test(test_broadcast_hostile),
		cmocka_unit_test(test_set_offset),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
