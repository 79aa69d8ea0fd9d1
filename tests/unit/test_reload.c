/*
 * test_reload.c - unit tests of server/reload.c: a reload publishes a new
 * config with the restart-only keys kept at their running values, refuses
 * a bad file (the running config stays), allocates nothing when nothing
 * live changed, and frees a replaced config only once every reading
 * thread's cfg_seen slot has passed the generation that retired it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/bg.h"
#include "common/config.h"
#include "server/reload.h"
#include "server/server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char path[64];
static struct bg_config boot;
static struct bg_server srv;
static uint64_t seen[BG_SEEN_SLOTS(2)];
static struct bg_reload rl;

static void
write_ini(const char *text)
{
	FILE *fp = fopen(path, "w");

	assert_non_null(fp);
	assert_true(fputs(text, fp) >= 0);
	assert_int_equal(fclose(fp), 0);
}

static int
setup(void **state)
{
	int fd;

	strcpy(path, "/tmp/bagou-test-reload-XXXXXX");
	fd = mkstemp(path);
	assert_true(fd >= 0);
	close(fd);
	write_ini("[server]\nworkers = 2\n[limits]\nrate = 10\n");
	bg_config_defaults(&boot);
	assert_int_equal(bg_config_load(&boot, path, NULL, 0), BG_OK);
	bg_reload_settle(&boot, 1024, 0);
	memset(&srv, 0, sizeof(srv));
	memset(seen, 0, sizeof(seen));
	srv.cfg = &boot;
	srv.n_workers = 2;
	srv.cfg_seen = seen;
	memset(&rl, 0, sizeof(rl));
	rl.path = path;
	rl.use_file = true;
	rl.nofile = 1024;
	return 0;
}

static int
teardown(void **state)
{
	bg_reload_free(&rl);
	unlink(path);
	return 0;
}

/* Every slot reports generation gen. */
static void
all_see(uint64_t gen)
{
	for (size_t i = 0; i < BG_ARRAY_LEN(seen); i++)
		seen[i] = gen;
}

static void
test_live_and_restart_keys(void **state)
{
	const struct bg_config *cfg;

	write_ini("[server]\nworkers = 3\npath = /ws\n"
		  "origins = https://a.example\n"
		  "[limits]\nrate = 20\n[http]\napi_key = k\n");
	assert_int_equal(bg_reload_config(&rl, &srv), BG_OK);
	cfg = bg_server_cfg(&srv);
	assert_ptr_not_equal(cfg, &boot);
	assert_int_equal(cfg->rate, 20);
	assert_string_equal(cfg->origins, "https://a.example");
	assert_string_equal(cfg->api_key, "k");
	/* Restart-only: the running values stay. */
	assert_int_equal(cfg->workers, 2);
	assert_string_equal(cfg->path, "/websocket");
	assert_int_equal(srv.cfg_gen, 1);
	/* The start-up config is main's: nothing to free, nothing waits. */
	assert_int_equal(bg_reload_reclaim(&rl, &srv), 0);
	assert_int_equal(rl.n_retired, 1);
}

static void
test_bad_file_refused(void **state)
{
	write_ini("[limits]\nrate = 20\nburst = lots\n");
	assert_int_equal(bg_reload_config(&rl, &srv), BG_ERR);
	assert_ptr_equal(bg_server_cfg(&srv), &boot);
	write_ini("[auth]\nprevious_secret = old\n");
	assert_int_equal(bg_reload_config(&rl, &srv), BG_ERR);
	assert_ptr_equal(bg_server_cfg(&srv), &boot);
	assert_int_equal(rl.n_retired, 0);
	assert_int_equal(srv.cfg_gen, 0);
}

static void
test_nothing_live_changed(void **state)
{
	/* Only a restart-only key: no new config is kept, and the automatic
	 * max_connections still counts the running workers. */
	write_ini("[server]\nworkers = 4\n[limits]\nrate = 10\n");
	assert_int_equal(bg_reload_config(&rl, &srv), BG_OK);
	assert_ptr_equal(bg_server_cfg(&srv), &boot);
	assert_int_equal(rl.n_retired, 0);
}

static void
test_reclaim_waits_for_every_slot(void **state)
{
	const struct bg_config *first;

	write_ini("[server]\nworkers = 2\n[limits]\nrate = 11\n");
	assert_int_equal(bg_reload_config(&rl, &srv), BG_OK);
	first = bg_server_cfg(&srv);
	write_ini("[server]\nworkers = 2\n[limits]\nrate = 12\n");
	assert_int_equal(bg_reload_config(&rl, &srv), BG_OK);
	assert_ptr_not_equal(bg_server_cfg(&srv), first);
	assert_int_equal(srv.cfg_gen, 2);
	/* first was retired at generation 2: it waits while any slot is
	 * behind, an absent thread (UINT64_MAX) included as passed. */
	all_see(1);
	assert_int_equal(bg_reload_reclaim(&rl, &srv), 1);
	all_see(2);
	seen[BG_SEEN_WORKER(1)] = 1;
	seen[BG_SEEN_API] = UINT64_MAX;
	assert_int_equal(bg_reload_reclaim(&rl, &srv), 1);
	assert_int_equal(rl.n_retired, 2);
	bg_server_quiescent(&srv, BG_SEEN_WORKER(1));
	assert_int_equal(seen[BG_SEEN_WORKER(1)], 2);
	assert_int_equal(bg_reload_reclaim(&rl, &srv), 0);
	/* Only the one in force is left. */
	assert_int_equal(rl.n_retired, 1);
	assert_int_equal(bg_server_cfg(&srv)->rate, 12);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_live_and_restart_keys,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_file_refused,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_nothing_live_changed,
						setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_reclaim_waits_for_every_slot, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
