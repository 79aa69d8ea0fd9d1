/*
 * test_httpreq.c - unit tests of common/httpreq.c: the request line and
 * the headers the API listener acts on, keep-alive by version and
 * Connection, and every head it must refuse (what two parsers could
 * frame differently).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/httpreq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/bg.h"

static char buf[BG_HTTPREQ_HEAD_MAX + 1];

static int
parse(const char *head, struct bg_httpreq *r, char *err, size_t errlen)
{
	size_t n = strlen(head);

	assert_true(n < sizeof(buf));
	memcpy(buf, head, n + 1);
	return bg_httpreq_parse(buf, n, r, err, errlen);
}

static void
test_get(void **state)
{
	struct bg_httpreq r;
	char err[128] = "";

	assert_int_equal(parse("GET /health?x=1&y HTTP/1.1\r\nHost: a\r\n"
			       "\r\n", &r, err, sizeof(err)), BG_OK);
	assert_int_equal(r.method, BG_HTTPREQ_GET);
	assert_string_equal(r.path, "/health");
	assert_string_equal(r.query, "x=1&y");
	assert_int_equal(r.minor, 1);
	assert_true(r.keep_alive);
	assert_false(r.has_length);
	assert_false(r.has_te);
	assert_null(r.authorization);
	assert_string_equal(err, "");
}

static void
test_post_headers(void **state)
{
	struct bg_httpreq r;
	char err[128];

	assert_int_equal(parse("POST /broadcast HTTP/1.1\r\n"
			       "content-length:  42 \r\n"
			       "AUTHORIZATION: Bearer k e y \r\n"
			       "Expect: 100-Continue\r\n"
			       "Content-Length: 42\r\n"
			       "Connection: Keep-Alive, Close\r\n\r\n", &r,
			       err, sizeof(err)), BG_OK);
	assert_int_equal(r.method, BG_HTTPREQ_POST);
	assert_string_equal(r.path, "/broadcast");
	assert_true(r.has_length);
	assert_int_equal(r.length, 42);
	assert_string_equal(r.authorization, "Bearer k e y");
	assert_true(r.expect_continue);
	assert_false(r.keep_alive);
}

static void
test_keep_alive(void **state)
{
	static const struct {
		const char *head;
		bool keep;
	} cases[] = {
		{ "GET / HTTP/1.1\r\n\r\n", true },
		{ "GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false },
		{ "GET / HTTP/1.1\r\nConnection: upgrade,CLOSE\r\n\r\n",
		  false },
		{ "GET / HTTP/1.1\r\nConnection: closed\r\n\r\n", true },
		{ "GET / HTTP/1.0\r\n\r\n", false },
		{ "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true },
	};
	struct bg_httpreq r;
	char err[128];

	for (size_t i = 0; i < BG_ARRAY_LEN(cases); i++) {
		assert_int_equal(parse(cases[i].head, &r, err, sizeof(err)),
				 BG_OK);
		assert_int_equal(r.keep_alive, cases[i].keep);
	}
}

static void
test_methods(void **state)
{
	struct bg_httpreq r;
	char err[128];

	assert_int_equal(parse("HEAD /m HTTP/1.1\r\n\r\n", &r, err,
			       sizeof(err)), BG_OK);
	assert_int_equal(r.method, BG_HTTPREQ_HEAD);
	assert_int_equal(parse("DELETE /m HTTP/1.1\r\n\r\n", &r, err,
			       sizeof(err)), BG_OK);
	assert_int_equal(r.method, BG_HTTPREQ_OTHER);
	assert_int_equal(parse("get /m HTTP/1.1\r\n\r\n", &r, err,
			       sizeof(err)), BG_OK);
	assert_int_equal(r.method, BG_HTTPREQ_OTHER);
	assert_int_equal(parse("POST /b HTTP/1.1\r\nTransfer-Encoding: "
			       "chunked\r\n\r\n", &r, err, sizeof(err)),
			 BG_OK);
	assert_true(r.has_te);
}

static void
test_refused(void **state)
{
	static const struct {
		const char *head, *err;
	} bad[] = {
		{ "GET /\r\n\r\n", "bad request line" },
		{ "GET  / HTTP/1.1\r\n\r\n", "bad request line" },
		{ "G(T / HTTP/1.1\r\n\r\n", "bad request line" },
		{ "GET / HTTP/2\r\n\r\n",
		  "only HTTP/1.0 and HTTP/1.1 are supported" },
		{ "GET / http/1.1\r\n\r\n",
		  "only HTTP/1.0 and HTTP/1.1 are supported" },
		{ "GET x HTTP/1.1\r\n\r\n",
		  "the request target must be a path" },
		{ "GET http://a/ HTTP/1.1\r\n\r\n",
		  "the request target must be a path" },
		{ "GET /\x7f HTTP/1.1\r\n\r\n", "bad request target" },
		{ "GET / HTTP/1.1\nHost: a\r\n\r\n", "bad request line" },
		{ "GET / HTTP/1.1\r\nHost: a\nB: c\r\n\r\n",
		  "lines must end with CRLF" },
		{ "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
		  "lines must end with CRLF" },
		{ "GET / HTTP/1.1\r\nHost : a\r\n\r\n", "bad header name" },
		{ "GET / HTTP/1.1\r\n: a\r\n\r\n", "bad header line" },
		{ "GET / HTTP/1.1\r\nno colon\r\n\r\n", "bad header line" },
		{ "GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n",
		  "folded header lines are not supported" },
		{ "GET / HTTP/1.1\r\nA: b\x01\r\n\r\n", "bad header value" },
		{ "POST / HTTP/1.1\r\nContent-Length: 1\r\n"
		  "Content-Length: 2\r\n\r\n",
		  "conflicting Content-Length headers" },
		{ "POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n",
		  "bad Content-Length" },
		{ "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
		  "bad Content-Length" },
		{ "POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
		  "bad Content-Length" },
		{ "POST / HTTP/1.1\r\nContent-Length: "
		  "9999999999999999999\r\n\r\n", "bad Content-Length" },
		{ "POST / HTTP/1.1\r\nAuthorization: a\r\n"
		  "Authorization: b\r\n\r\n", "several Authorization headers" },
		{ "GET / HTTP/1.1\r\n", "bad request head" },
	};
	struct bg_httpreq r;
	char err[128];

	for (size_t i = 0; i < BG_ARRAY_LEN(bad); i++) {
		err[0] = '\0';
		assert_int_equal(parse(bad[i].head, &r, err, sizeof(err)),
				 BG_ERR);
		assert_string_equal(err, bad[i].err);
	}
}

static void
test_nul_and_limits(void **state)
{
	struct bg_httpreq r;
	char err[128], head[64];
	char *big;
	size_t n = 0;

	/* A NUL inside the head: the length says more than the string. */
	memcpy(head, "GET /\0x HTTP/1.1\r\n\r\n", 21);
	assert_int_equal(bg_httpreq_parse(head, 20, &r, err, sizeof(err)),
			 BG_ERR);
	big = malloc(BG_HTTPREQ_HEAD_MAX);
	assert_non_null(big);
	n += (size_t)sprintf(big, "GET / HTTP/1.1\r\n");
	for (int i = 0; i <= BG_HTTPREQ_HEADERS_MAX; i++)
		n += (size_t)sprintf(big + n, "X-%d: y\r\n", i);
	n += (size_t)sprintf(big + n, "\r\n");
	assert_int_equal(bg_httpreq_parse(big, n, &r, err, sizeof(err)),
			 BG_ERR);
	assert_string_equal(err, "more than 100 header lines");
	free(big);
	/* No err buffer is fine. */
	assert_int_equal(parse("nope\r\n\r\n", &r, NULL, 0), BG_ERR);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_get),
		cmocka_unit_test(test_post_headers),
		cmocka_unit_test(test_keep_alive),
		cmocka_unit_test(test_methods),
		cmocka_unit_test(test_refused),
		cmocka_unit_test(test_nul_and_limits),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
