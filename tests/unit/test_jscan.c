/*
 * test_jscan.c - unit tests of common/jscan.c and of the broadcast path
 * built on it (bg_proto_broadcast_text_opt): whatever the scanner
 * accepts, jansson accepts with the same meaning, and a broadcast built
 * without a tree equals the one jansson's path builds (targets, exclude,
 * each frame's JSON), or both refuse it with the same code.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/bg.h"
#include "common/frame.h"
#include "common/jscan.h"
#include "common/proto.h"

/* The payload of frame i, parsed. */
static json_t *
payload(const struct bg_msg *m, uint32_t i)
{
	const uint8_t *f = m->frames[i].data;
	size_t hlen = (f[1] & 0x7f) == 126 ? 4 : (f[1] & 0x7f) == 127 ? 10 : 2;

	return json_loadb((const char *)f + hlen, m->frames[i].len - hlen,
			  JSON_REJECT_DUPLICATES, NULL);
}

/* Builds text both ways and checks they agree. Returns whether the
 * fast path (no tree) built it. */
static bool
same_both_ways(const char *text)
{
	struct bg_jscan_member mem[BG_JSCAN_MAX_KEYS];
	size_t n;
	bool fast = bg_jscan_object(text, strlen(text), mem, &n) ==
		    BG_JSCAN_OK;
	json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
	enum bg_code c1 = BG_CODE_COUNT, c2 = BG_CODE_COUNT;
	char e1[200], e2[200];
	struct bg_msg *a, *b;

	/* Never accept what jansson refuses. */
	if (fast)
		assert_non_null(root);
	a = bg_proto_broadcast_text_opt(text, strlen(text), NULL,
					BG_PROTO_BODY, &c1, e1, sizeof(e1));
	b = root ? bg_proto_broadcast(root, NULL, &c2, e2, sizeof(e2)) :
		   NULL;
	if (root == NULL)
		c2 = BG_CODE_BAD_MESSAGE;
	json_decref(root);
	assert_int_equal(a == NULL, b == NULL);
	if (a == NULL) {
		assert_int_equal(c1, c2);
		return false;
	}
	assert_int_equal(a->target, b->target);
	assert_int_equal(a->n_names, b->n_names);
	assert_int_equal(a->n_frames, b->n_frames);
	for (uint32_t i = 0; i < a->n_names; i++) {
		assert_string_equal(a->names[i], b->names[i]);
		if (a->hashes != NULL)
			assert_int_equal(a->hashes[i], b->hashes[i]);
	}
	if (a->exclude || b->exclude)
		assert_string_equal(a->exclude, b->exclude);
	for (uint32_t i = 0; i < a->n_frames; i++) {
		json_t *pa = payload(a, i), *pb = payload(b, i);
		assert_non_null(pa);
		assert_non_null(pb);
		assert_true(json_equal(pa, pb));
		json_decref(pa);
		json_decref(pb);
	}
	/* The body republished parses to the same broadcast. */
	json_t *ba = json_loadb(a->body, a->body_len, 0, NULL);
	json_t *bb = json_loadb(b->body, b->body_len, 0, NULL);
	assert_true(json_equal(ba, bb));
	json_decref(ba);
	json_decref(bb);
	fast = a->packed;
	bg_msg_unref(a);
	bg_msg_unref(b);
	return fast;
}

static void
test_common_forms_are_fast(void **state)
{
	(void)state;
	assert_true(same_both_ways("{\"event\":\"tick\",\"channel\":\"a\","
				   "\"data\":{\"x\":1}}"));
	assert_true(same_both_ways(" { \"event\" : \"e\" , \"channel\" : "
				   "[\"a\", \"b\", \"a\"], \"data\" : "
				   "{ \"s\" : \"sp ace\\n\", \"l\": [1, "
				   "2.5e3, -0, true, false, null] } }\n"));
	assert_true(same_both_ways("{\"event\":\"e\"}"));
	assert_true(same_both_ways("{\"event\":\"e\",\"channel\":[],"
				   "\"data\":null,\"callbackId\":\"cb\","
				   "\"exclude\":\"n-1-2\",\"from\":\"n-0-1\","
				   "\"extra\":{\"k\":\"\\u00e9\"}}"));
	assert_true(same_both_ways("{\"event\":\"\\u0074ick\",\"channel\":"
				   "\"a.b\",\"data\":\"caf\xc3\xa9\"}"));
	assert_true(same_both_ways("{\"event\":\"e\",\"channel\":null,"
				   "\"client\":null}"));
}

static void
test_doubts_go_to_jansson(void **state)
{
	static const char *const slow[] = {
		"{\"event\":\"e\",\"channel\":\"\\u0061\"}",
		"{\"event\":\"e\",\"data\":\"\\u0000\"}",
		"{\"event\":\"e\",\"data\":\"\\ud83d\\ude00\"}",
		"{\"event\":\"e\",\"data\":12345678901234567890}",
		"{\"event\":\"e\",\"data\":1e999}",
		"{\"event\":\"e\",\"data\":{\"a\":1,\"a\":2}}",
		"{\"event\":\"e\",\"data\":{\"\\u0061\":1,\"a\":2}}",
		"{\"event\":\"e\",\"client\":\"n-1-1\",\"data\":{}}",
		"{\"event\":\"e\",\"channel\":\"a\",\"event\":\"f\"}",
		"{\"event\":\"e\",\"channel\":\"bad name\"}",
		"{\"event\":\"e\",\"channel\":[\"a\",1]}",
		"{\"event\":\"\",\"channel\":\"a\"}",
		"{\"event\":\"e\",\"exclude\":\"has space\"}",
		"{\"event\":\"e\"} x",
		"{\"event\":\"e\",}",
		"{\"event\":\"e\",\"data\":01}",
		"{\"event\":\"e\",\"data\":\"\xc0\xaf\"}",
		"{\"event\":\"e\",\"data\":\"\xed\xa0\x80\"}",
		"{\"event\":\"e\",\"data\":\"a\tb\"}",
		"[{\"event\":\"e\"}]",
		"{\"channel\":\"a\"}",
		"",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(slow) / sizeof(slow[0]); i++)
		assert_false(same_both_ways(slow[i]));
}

static void
test_depth_and_width_bounded(void **state)
{
	char buf[4096];
	size_t n = 0;

	(void)state;
	n += (size_t)sprintf(buf, "{\"event\":\"e\",\"data\":");
	for (int i = 0; i < 100; i++)
		buf[n++] = '[';
	for (int i = 0; i < 100; i++)
		buf[n++] = ']';
	strcpy(buf + n, "}");
	assert_false(same_both_ways(buf)); /* too deep for the scanner */
	n = (size_t)sprintf(buf, "{\"event\":\"e\",\"data\":{");
	for (int i = 0; i < 40; i++)
		n += (size_t)sprintf(buf + n, "%s\"k%d\":%d", i ? "," : "", i,
				     i);
	strcpy(buf + n, "}}");
	assert_false(same_both_ways(buf)); /* too wide: jansson checks */
}

static void
test_no_body_unless_asked(void **state)
{
	const char *t = "{\"event\":\"e\",\"channel\":\"a\"}";
	enum bg_code code;
	char err[100];
	struct bg_msg *m = bg_proto_broadcast_text_opt(t, strlen(t), NULL, 0,
						       &code, err,
						       sizeof(err));

	(void)state;
	assert_non_null(m);
	assert_null(m->body);
	bg_msg_unref(m);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_common_forms_are_fast),
		cmocka_unit_test(test_doubts_go_to_jansson),
		cmocka_unit_test(test_depth_and_width_bounded),
		cmocka_unit_test(test_no_body_unless_asked),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
