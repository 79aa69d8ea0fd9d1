/*
 * test_asset.c - unit tests of server/asset.c: which Accept-Encoding
 * values accept gzip, which If-None-Match values match an ETag, and the
 * table bg_asset_init builds (every served path found, others not).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "common/bg.h"
#include "server/asset.h"

static void
test_accepts_gzip(void **state)
{
	static const char *yes[] = {
		"gzip", "GZIP", "x-gzip", "gzip, deflate, br", "br,gzip",
		"gzip;q=0.5", "gzip; q=1", "gzip;Q=0.001", "*", "*;q=0.1",
		"deflate, *", "  gzip  ", "gzip;q=0, x-gzip",
		"identity;q=0, gzip",
	};
	static const char *no[] = {
		"", "identity", "br", "deflate", "gzip;q=0", "gzip;q=0.0",
		"gzip;q=0.000", "gzip; q=0 ", "*;q=0", "gzip;q=0, *",
		"gzipx", "xgzip", "gz", "x-gzip;q=0", "br, *;q=0",
	};

	(void)state;
	assert_false(bg_asset_accepts_gzip(NULL));
	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		if (!bg_asset_accepts_gzip(yes[i]))
			fail_msg("should accept gzip: \"%s\"", yes[i]);
	}
	for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
		if (bg_asset_accepts_gzip(no[i]))
			fail_msg("should not accept gzip: \"%s\"", no[i]);
	}
}

static void
test_etag_matches(void **state)
{
	const char *e = "\"0123abcd\"";

	(void)state;
	assert_true(bg_asset_etag_matches("\"0123abcd\"", e));
	assert_true(bg_asset_etag_matches("W/\"0123abcd\"", e));
	assert_true(bg_asset_etag_matches("*", e));
	assert_true(bg_asset_etag_matches("\"x\", \"0123abcd\"", e));
	assert_true(bg_asset_etag_matches("\"x\",W/\"0123abcd\" ", e));
	assert_true(bg_asset_etag_matches("junk, \"0123abcd\"", e));
	assert_false(bg_asset_etag_matches(NULL, e));
	assert_false(bg_asset_etag_matches("", e));
	assert_false(bg_asset_etag_matches("0123abcd", e));
	assert_false(bg_asset_etag_matches("\"0123abc\"", e));
	assert_false(bg_asset_etag_matches("\"0123abcd-gz\"", e));
	assert_false(bg_asset_etag_matches("\"0123abcd", e));
	assert_false(bg_asset_etag_matches("\"x\", \"0123abcd", e));
	assert_false(bg_asset_etag_matches("\"\"", e));
}

static void
test_table(void **state)
{
	char err[128], v[64];

	(void)state;
	assert_null(bg_asset_find("/bagou.js"));	/* before init */
	assert_int_equal(bg_asset_init(err, sizeof(err)), BG_OK);
	snprintf(v, sizeof(v), "/bagou.%s.js", BG_VERSION);
	assert_non_null(bg_asset_find("/bagou.js"));
	assert_non_null(bg_asset_find(v));
	assert_non_null(bg_asset_find("/bagou.js.map"));
	assert_non_null(bg_asset_find("/bagou.src.js"));
	assert_null(bg_asset_find("/bagou.0.0.0.js"));
	assert_null(bg_asset_find("/bagou.min.js"));
	assert_null(bg_asset_find("/bagou.js/"));
	assert_null(bg_asset_find(NULL));
	bg_asset_free();
	assert_null(bg_asset_find("/bagou.js"));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_accepts_gzip),
		cmocka_unit_test(test_etag_matches),
		cmocka_unit_test(test_table),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
