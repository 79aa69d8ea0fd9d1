/*
 * test_history.c - unit tests of amqp/history.c, the bus thread's store:
 * numbering (standalone) and given positions (stream), "offset" framed
 * into history channels only, floors (size, ttl, forgotten channels),
 * recovery answers (same/other epoch, too old, later than seen), the
 * history answer's limit and since, and reading back's helpers.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amqp/history.h"
#include "common/bg.h"
#include "common/config.h"
#include "common/proto.h"

static struct bg_history *
store(const char *channels, int size, int ttl)
{
	struct bg_config cfg;
	struct bg_history *h;

	bg_config_defaults(&cfg);
	snprintf(cfg.history_channels, sizeof(cfg.history_channels), "%s",
		 channels);
	cfg.history_size = size;
	cfg.history_ttl = ttl;
	h = bg_history_new(&cfg);
	assert_non_null(h);
	return h;
}

static struct bg_msg *
msg(const char *json)
{
	enum bg_code code;
	char err[200];
	struct bg_msg *m = bg_proto_broadcast_text(json, strlen(json), NULL,
						   &code, err, sizeof(err));

	assert_non_null(m);
	return m;
}

/* Records a broadcast to channel with data n; returns its position. */
static uint64_t
put(struct bg_history *h, const char *channel, int n, uint64_t offset)
{
	char json[256];
	struct bg_msg *m;
	uint64_t pos;

	snprintf(json, sizeof(json), "{\"event\":\"m\",\"channel\":\"%s\","
		 "\"data\":%d}", channel, n);
	m = msg(json);
	pos = bg_history_record(h, m, offset);
	bg_msg_unref(m);
	return pos;
}

static struct bg_msg *
ask(enum bg_hist_kind kind, const char *channel, const char *epoch,
    uint64_t offset, uint32_t limit)
{
	struct bg_msg *m = bg_hist_req_new(kind, channel);
	struct bg_hist_req *r = bg_hist_req_of(m);

	assert_non_null(m);
	r->limit = limit;
	if (epoch != NULL) {
		r->has_pos = true;
		snprintf(r->epoch, sizeof(r->epoch), "%s", epoch);
		r->offset = offset;
	}
	return m;
}

/* The data of each publication of r, as "1,2,3". */
static void
datas(const struct bg_hist_req *r, char *out, size_t size)
{
	size_t k = 0;

	out[0] = '\0';
	for (uint32_t i = 0; i < r->n_pubs; i++) {
		size_t len;
		const char *j = bg_hist_pub_json(&r->pubs[i], &len);
		const char *d = strstr(j, "\"data\":");

		assert_non_null(d);
		k += (size_t)snprintf(out + k, size - k, "%s%d", i ? "," : "",
				      atoi(d + 7));
	}
}

static void
test_off_and_framing(void **state)
{
	struct bg_history *off = store("", 10, 60);
	struct bg_history *h = store("^chat", 10, 60);
	struct bg_msg *m;
	size_t len;
	const char *p;
	struct bg_hist_pub pub;

	assert_false(bg_history_on(off));
	assert_false(bg_history_match(off, "chat"));
	assert_int_equal(put(off, "chat", 1, 0), 0);
	assert_true(bg_history_match(h, "chat-1"));
	assert_false(bg_history_match(h, "news"));
	assert_int_equal(put(h, "news", 1, 0), 0);      /* no history */
	m = msg("{\"event\":\"m\",\"channel\":[\"news\",\"chat\"],"
		"\"data\":7}");
	assert_int_equal(bg_history_record(h, m, 0), 1);
	/* The frame of "chat" ends with the offset, that of news not. */
	pub = (struct bg_hist_pub){ .m = m, .frame = 1, .offset = 1 };
	p = bg_hist_pub_json(&pub, &len);
	assert_int_equal(memcmp(p, "{\"event\":\"m\",\"channel\":\"chat\","
				"\"data\":7,\"offset\":1}", len), 0);
	pub.frame = 0;
	p = bg_hist_pub_json(&pub, &len);
	assert_int_equal(memcmp(p, "{\"event\":\"m\",\"channel\":\"news\","
				"\"data\":7}", len), 0);
	bg_msg_unref(m);
	/* Not channel broadcasts: no position. */
	m = msg("{\"event\":\"all\"}");
	assert_int_equal(bg_history_record(h, m, 0), 0);
	bg_msg_unref(m);
	assert_int_equal(put(h, "chat", 2, 0), 2);
	assert_int_equal(bg_history_top(h), 2);
	bg_history_free(off);
	bg_history_free(h);
}

static void
test_recover_and_floors(void **state)
{
	struct bg_history *h = store("^c", 3, 60);
	const char *e;
	struct bg_msg *m;
	struct bg_hist_req *r;
	char got[64];

	bg_history_reset(h, "E1", 0);
	e = bg_history_epoch(h);
	assert_string_equal(e, "E1");
	for (int i = 1; i <= 5; i++)
		assert_int_equal(put(h, "ca", i, 0), (uint64_t)i);
	/* Kept: 3, 4, 5; floor 2. */
	m = ask(BG_HIST_SUBSCRIBE, "ca", "E1", 2, 0);
	r = bg_hist_req_of(m);
	assert_true(bg_history_answer(h, r, false));
	assert_true(r->recovered);
	datas(r, got, sizeof(got));
	assert_string_equal(got, "3,4,5");
	assert_int_equal(r->top, 5);
	bg_msg_unref(m);
	m = ask(BG_HIST_SUBSCRIBE, "ca", "E1", 1, 0);      /* too old */
	r = bg_hist_req_of(m);
	assert_true(bg_history_answer(h, r, false));
	assert_false(r->recovered);
	assert_int_equal(r->n_pubs, 0);
	bg_msg_unref(m);
	m = ask(BG_HIST_SUBSCRIBE, "ca", "E0", 4, 0);      /* other epoch */
	r = bg_hist_req_of(m);
	assert_true(bg_history_answer(h, r, false));
	assert_false(r->recovered);
	bg_msg_unref(m);
	m = ask(BG_HIST_SUBSCRIBE, "ca", "E1", 5, 0);      /* up to date */
	r = bg_hist_req_of(m);
	assert_true(bg_history_answer(h, r, false));
	assert_true(r->recovered);
	assert_int_equal(r->n_pubs, 0);
	bg_msg_unref(m);
	m = ask(BG_HIST_SUBSCRIBE, "ca", "E1", 9, 0);      /* not seen yet */
	r = bg_hist_req_of(m);
	assert_false(bg_history_answer(h, r, false));      /* wait */
	assert_true(bg_history_answer(h, r, true));        /* late: gap */
	assert_false(r->recovered);
	bg_msg_unref(m);
	/* A channel never seen: everything since the start is known. */
	m = ask(BG_HIST_SUBSCRIBE, "cnew", "E1", 0, 0);
	r = bg_hist_req_of(m);
	assert_true(bg_history_answer(h, r, false));
	assert_true(r->recovered);
	bg_msg_unref(m);
	/* A channel without history: enabled false, never recovered. */
	m = ask(BG_HIST_SUBSCRIBE, "x", "E1", 0, 0);
	r = bg_hist_req_of(m);
	assert_true(bg_history_answer(h, r, false));
	assert_false(r->enabled);
	assert_false(r->recovered);
	bg_msg_unref(m);
	bg_history_free(h);
}

static void
test_ttl_and_forgotten(void **state)
{
	struct bg_history *h = store("^c", 10, 1);
	struct bg_msg *m;
	struct bg_hist_req *r;
	uint64_t floor;

	bg_history_reset(h, "E", 100);     /* the stream starts at 101 */
	assert_int_equal(put(h, "ca", 1, 101), 101);
	assert_int_equal(put(h, "cb", 2, 102), 102);
	/* Expired: records dropped, their floors forgotten for all. */
	bg_history_expire(h, UINT64_MAX / 2);
	m = ask(BG_HIST_SUBSCRIBE, "cz", "E", 101, 0);
	r = bg_hist_req_of(m);
	assert_true(bg_history_behind_memory(h, r, &floor));
	assert_int_equal(floor, 102);
	assert_true(bg_history_answer(h, r, false));
	assert_false(r->recovered);
	bg_msg_unref(m);
	m = ask(BG_HIST_SUBSCRIBE, "cz", "E", 102, 0);
	r = bg_hist_req_of(m);
	assert_false(bg_history_behind_memory(h, r, &floor));
	assert_true(bg_history_answer(h, r, false));
	assert_true(r->recovered);
	bg_msg_unref(m);
	/* Positions before the stream's start are unknown too. */
	m = ask(BG_HIST_SUBSCRIBE, "cz", "E", 50, 0);
	r = bg_hist_req_of(m);
	assert_true(bg_history_behind_memory(h, r, &floor));
	bg_msg_unref(m);
	bg_history_free(h);
}

static void
test_history_limit_since_prepend(void **state)
{
	struct bg_history *h = store("^c", 5, 60);
	struct bg_hist_pub older[2];
	struct bg_msg *m;
	struct bg_hist_req *r;
	char got[64];
	int idx;

	bg_history_reset(h, "E", 0);
	for (int i = 1; i <= 8; i++)
		put(h, "ca", i, 0);
	/* Latest 2. */
	m = ask(BG_HIST_HISTORY, "ca", NULL, 0, 2);
	r = bg_hist_req_of(m);
	assert_true(bg_history_answer(h, r, false));
	datas(r, got, sizeof(got));
	assert_string_equal(got, "7,8");
	assert_true(r->recovered);
	bg_msg_unref(m);
	/* Clamped to size (5). */
	m = ask(BG_HIST_HISTORY, "ca", NULL, 0, 1000);
	r = bg_hist_req_of(m);
	assert_true(bg_history_answer(h, r, false));
	datas(r, got, sizeof(got));
	assert_string_equal(got, "4,5,6,7,8");
	bg_msg_unref(m);
	/* since: the first L after it. */
	m = ask(BG_HIST_API, "ca", "E", 4, 2);
	r = bg_hist_req_of(m);
	assert_true(bg_history_answer(h, r, false));
	datas(r, got, sizeof(got));
	assert_string_equal(got, "5,6");
	assert_true(r->recovered);
	bg_msg_unref(m);
	/* since too old: a gap and the latest L. */
	m = ask(BG_HIST_HISTORY, "ca", "E", 1, 2);
	r = bg_hist_req_of(m);
	assert_true(bg_history_answer(h, r, false));
	datas(r, got, sizeof(got));
	assert_string_equal(got, "7,8");
	assert_false(r->recovered);
	bg_msg_unref(m);
	/* Read back 1, 2 joined before memory's, the first L kept. */
	m = ask(BG_HIST_HISTORY, "ca", "E", 3, 3);
	r = bg_hist_req_of(m);
	assert_true(bg_history_answer(h, r, false));   /* 4,5,6 */
	for (int i = 0; i < 2; i++) {
		older[i].m = msg(i ? "{\"event\":\"m\",\"channel\":\"ca\","
				 "\"data\":2}" : "{\"event\":\"m\","
				 "\"channel\":\"ca\",\"data\":1}");
		idx = bg_history_frame_for(h, older[i].m, (uint64_t)i + 1,
					   "ca");
		assert_int_equal(idx, 0);
		older[i].frame = 0;
		older[i].offset = (uint64_t)i + 1;
	}
	bg_history_prepend(r, older, 2);
	datas(r, got, sizeof(got));
	assert_string_equal(got, "1,2,4");
	bg_msg_unref(m);
	bg_history_free(h);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_off_and_framing),
		cmocka_unit_test(test_recover_and_floors),
		cmocka_unit_test(test_ttl_and_forgotten),
		cmocka_unit_test(test_history_limit_since_prepend),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
