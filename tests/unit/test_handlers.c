/*
 * test_handlers.c - unit tests of handlers/registry.c: registration
 * (copies, bad regexes, missing functions or events, the table's limit),
 * the compiled-in table after bg_handlers_init, bg_handlers_free, and
 * bg_handlers_run / bg_handlers_dispatch where they need no live
 * connection (a zeroed struct bg_conn, subscriptions from a real
 * channel table), the subscribe answer hooks may fill, and the handler
 * API's owner-thread assertion. Every test leaves the table empty.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/bg.h"
#include "common/chan.h"
#include "handlers/handlers.h"
#include "server/conn.h"
#include "server/worker.h"

#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int calls_a, calls_b, calls_c;
static const char *last_channel;

static enum bg_code
hook_a(const struct bg_hook_args *a)
{
	calls_a++;
	last_channel = a->channel;
	return BG_CODE_COUNT;
}

static enum bg_code
hook_b_refuses(const struct bg_hook_args *a)
{
	calls_b++;
	return BG_CODE_FORBIDDEN;
}

static enum bg_code
hook_c_refuses(const struct bg_hook_args *a)
{
	calls_c++;
	return BG_CODE_CHANNEL_FULL;
}

static int
reset(void **state)
{
	bg_handlers_free();
	calls_a = calls_b = calls_c = 0;
	last_channel = NULL;
	return 0;
}

static int
reg(enum bg_hook hook, const char *event, const char *channel,
    bg_hook_fn fn, char *err, size_t len)
{
	struct bg_handler h = { hook, event, channel, fn };

	err[0] = '\0';
	return bg_handlers_register(&h, err, len);
}

/* ------------------------------------------------------------ register */

static void
test_bad_regex_names_pattern(void **state)
{
	static const char *const bad[] = {
		"([", "chat-(", "a{2,1}", "[z-a]", "*private", "news)(",
	};
	char err[256], want[64];

	for (size_t i = 0; i < BG_ARRAY_LEN(bad); i++) {
		if (reg(BG_ON_SUBSCRIBE, NULL, bad[i], hook_a, err,
			sizeof(err)) != BG_ERR) {
			/* Some patterns are accepted by some regcomps:
			 * only the clearly broken ones must fail. */
			if (i < 4)
				fail_msg("pattern '%s' accepted", bad[i]);
			bg_handlers_free();
			continue;
		}
		snprintf(want, sizeof(want), "'%s'", bad[i]);
		if (strstr(err, want) == NULL)
			fail_msg("error \"%s\" does not name %s", err, want);
		/* And says what is wrong (regerror's text after it). */
		assert_true(strlen(err) > strlen(want) + 2);
	}
	/* The same for an event handler with a channel filter: the failed
	 * registration leaves nothing behind. */
	assert_int_equal(reg(BG_ON_EVENT, "ev-bad", "(unclosed", hook_a, err,
			     sizeof(err)), BG_ERR);
	assert_non_null(strstr(err, "'(unclosed'"));
	assert_false(bg_handlers_has_event("ev-bad"));
}

static void
test_err_truncated_safely(void **state)
{
	char err[12];

	memset(err, 'x', sizeof(err));
	assert_int_equal(reg(BG_ON_SUBSCRIBE, NULL, "([", hook_a, err, 8),
			 BG_ERR);
	assert_int_equal(strlen(err), 7);
	assert_int_equal(err[8], 'x');
}

static void
test_missing_fn_or_event(void **state)
{
	char err[256];

	assert_int_equal(reg(BG_ON_EVENT, "nofn", NULL, NULL, err,
			     sizeof(err)), BG_ERR);
	assert_true(err[0] != '\0');
	assert_non_null(strstr(err, "function"));
	assert_false(bg_handlers_has_event("nofn"));

	assert_int_equal(reg(BG_ON_SUBSCRIBE, NULL, "^x", NULL, err,
			     sizeof(err)), BG_ERR);
	assert_non_null(strstr(err, "function"));

	assert_int_equal(reg(BG_ON_OPEN, NULL, NULL, NULL, err, sizeof(err)),
			 BG_ERR);

	/* An event handler needs an event name. */
	assert_int_equal(reg(BG_ON_EVENT, NULL, NULL, hook_a, err,
			     sizeof(err)), BG_ERR);
	assert_non_null(strstr(err, "event"));

	/* Other hooks need none. */
	for (int hook = BG_ON_OPEN; hook < BG_HOOK_COUNT; hook++)
		assert_int_equal(reg((enum bg_hook)hook, NULL, NULL, hook_a,
				     err, sizeof(err)), BG_OK);
}

static void
test_register_and_has_event(void **state)
{
	char err[256];

	assert_false(bg_handlers_has_event("custom"));
	assert_int_equal(reg(BG_ON_EVENT, "custom", NULL, hook_a, err,
			     sizeof(err)), BG_OK);
	assert_true(bg_handlers_has_event("custom"));
	assert_false(bg_handlers_has_event("Custom"));
	assert_false(bg_handlers_has_event("custom2"));
	assert_false(bg_handlers_has_event("custo"));
	assert_false(bg_handlers_has_event(""));
	/* A valid filter is fine. */
	assert_int_equal(reg(BG_ON_EVENT, "filtered", "^room-[0-9]+$",
			     hook_a, err, sizeof(err)), BG_OK);
	assert_true(bg_handlers_has_event("filtered"));
	/* Hooks of other kinds are not events, whatever .event says. */
	assert_int_equal(reg(BG_ON_SUBSCRIBE, "not-an-event", NULL, hook_a,
			     err, sizeof(err)), BG_OK);
	assert_false(bg_handlers_has_event("not-an-event"));
}

/* The struct is copied: changing it afterwards changes nothing. */
static void
test_register_copies_struct(void **state)
{
	struct bg_handler h = { BG_ON_EVENT, "first", NULL, hook_a };
	char err[256];

	assert_int_equal(bg_handlers_register(&h, err, sizeof(err)), BG_OK);
	h.event = "second";
	h.fn = NULL;
	assert_true(bg_handlers_has_event("first"));
	assert_false(bg_handlers_has_event("second"));
}

static void
test_table_limit(void **state)
{
	char err[256];
	int n = 0;

	while (reg(BG_ON_EVENT, "many", "^m", hook_a, err,
		   sizeof(err)) == BG_OK) {
		n++;
		assert_true(n <= 10000);
	}
	assert_int_equal(n, 256);
	assert_non_null(strstr(err, "256"));
	/* Full means full, for every kind. */
	assert_int_equal(reg(BG_ON_OPEN, NULL, NULL, hook_a, err,
			     sizeof(err)), BG_ERR);
	/* Freeing makes room again (and frees 256 compiled regexes). */
	bg_handlers_free();
	assert_false(bg_handlers_has_event("many"));
	assert_int_equal(reg(BG_ON_EVENT, "again", NULL, hook_a, err,
			     sizeof(err)), BG_OK);
	assert_true(bg_handlers_has_event("again"));
}

/* ------------------------------------------------------------ init/free */

static void
test_init_builtins_and_example(void **state)
{
	static const char *const events[] = {
		"subscribe", "unsubscribe", "store", "ping", "publish",
		"authenticate", "whoami",
	};
	char err[256] = "";

	assert_false(bg_handlers_has_event("subscribe"));
	assert_int_equal(bg_handlers_init(err, sizeof(err)), BG_OK);
	for (size_t i = 0; i < BG_ARRAY_LEN(events); i++)
		if (!bg_handlers_has_event(events[i]))
			fail_msg("no handler for '%s' after init", events[i]);
	assert_false(bg_handlers_has_event("connect"));
	assert_false(bg_handlers_has_event("callback"));
	assert_false(bg_handlers_has_event("pong"));
	assert_false(bg_handlers_has_event("message"));
	assert_false(bg_handlers_has_event("SUBSCRIBE"));
	assert_false(bg_handlers_has_event("unknown"));
	assert_false(bg_handlers_has_event(""));

	bg_handlers_free();
	for (size_t i = 0; i < BG_ARRAY_LEN(events); i++)
		assert_false(bg_handlers_has_event(events[i]));
	/* Free twice, and init again after free. */
	bg_handlers_free();
	assert_int_equal(bg_handlers_init(err, sizeof(err)), BG_OK);
	assert_true(bg_handlers_has_event("whoami"));
	/* Modules may add after init. */
	assert_int_equal(reg(BG_ON_EVENT, "mine", NULL, hook_a, err,
			     sizeof(err)), BG_OK);
	assert_true(bg_handlers_has_event("mine"));
	assert_true(bg_handlers_has_event("ping"));
}

/* ------------------------------------------------------------ run */

/* The example's on_subscribe hook (^readonly-) needs a user. */
static void
test_run_example_readonly_hook(void **state)
{
	struct bg_conn c;
	struct bg_hook_args a = { .c = &c };
	char err[256];

	memset(&c, 0, sizeof(c));
	assert_int_equal(bg_handlers_init(err, sizeof(err)), BG_OK);
	a.channel = "readonly-news";
	assert_int_equal(bg_handlers_run(BG_ON_SUBSCRIBE, &a),
			 BG_CODE_FORBIDDEN);
	a.channel = "readonly-";
	assert_int_equal(bg_handlers_run(BG_ON_SUBSCRIBE, &a),
			 BG_CODE_FORBIDDEN);
	/* Anchored: elsewhere in the name does not count. */
	a.channel = "news-readonly-x";
	assert_int_equal(bg_handlers_run(BG_ON_SUBSCRIBE, &a),
			 BG_CODE_COUNT);
	a.channel = "readonly";
	assert_int_equal(bg_handlers_run(BG_ON_SUBSCRIBE, &a),
			 BG_CODE_COUNT);
	a.channel = "news";
	assert_int_equal(bg_handlers_run(BG_ON_SUBSCRIBE, &a),
			 BG_CODE_COUNT);
	/* Authenticated: allowed. */
	c.ident.user = (char *)"alice";
	a.channel = "readonly-news";
	assert_int_equal(bg_handlers_run(BG_ON_SUBSCRIBE, &a),
			 BG_CODE_COUNT);
	c.ident.user = NULL;
}

/* Filters, order, and the first refusal winning (on_subscribe only). */
static void
test_run_filters_and_order(void **state)
{
	struct bg_conn c;
	struct bg_hook_args a = { .c = &c };
	char err[256];

	memset(&c, 0, sizeof(c));
	assert_int_equal(reg(BG_ON_SUBSCRIBE, NULL, NULL, hook_a, err,
			     sizeof(err)), BG_OK);
	assert_int_equal(reg(BG_ON_SUBSCRIBE, NULL, "^vip-", hook_b_refuses,
			     err, sizeof(err)), BG_OK);
	assert_int_equal(reg(BG_ON_SUBSCRIBE, NULL, "-full$",
			     hook_c_refuses, err, sizeof(err)), BG_OK);
	assert_int_equal(reg(BG_ON_UNSUBSCRIBE, NULL, NULL, hook_b_refuses,
			     err, sizeof(err)), BG_OK);

	a.channel = "news";
	assert_int_equal(bg_handlers_run(BG_ON_SUBSCRIBE, &a),
			 BG_CODE_COUNT);
	assert_int_equal(calls_a, 1);
	assert_string_equal(last_channel, "news");
	assert_int_equal(calls_b + calls_c, 0);

	a.channel = "vip-full";
	assert_int_equal(bg_handlers_run(BG_ON_SUBSCRIBE, &a),
			 BG_CODE_FORBIDDEN);
	assert_int_equal(calls_a, 2);
	assert_int_equal(calls_b, 1);
	assert_int_equal(calls_c, 0); /* stopped at the first refusal */

	a.channel = "room-full";
	assert_int_equal(bg_handlers_run(BG_ON_SUBSCRIBE, &a),
			 BG_CODE_CHANNEL_FULL);
	assert_int_equal(calls_c, 1);

	/* Other hooks' codes are ignored: every matching hook runs. */
	a.channel = "news";
	assert_int_equal(bg_handlers_run(BG_ON_UNSUBSCRIBE, &a),
			 BG_CODE_COUNT);
	assert_int_equal(calls_b, 2);
	/* No hook of that kind. */
	assert_int_equal(bg_handlers_run(BG_ON_STORE, &a), BG_CODE_COUNT);
}

/* Hooks without a channel (open, close, store...) filter on any of the
 * client's channels. */
static void
test_run_filter_on_client_channels(void **state)
{
	struct bg_chan_table *t = bg_chan_table_new();
	struct bg_chan_sub *subs[2];
	struct bg_conn c;
	struct bg_hook_args a = { .c = &c };
	char err[256];

	assert_non_null(t);
	memset(&c, 0, sizeof(c));
	assert_int_equal(reg(BG_ON_STORE, NULL, "^game-", hook_a, err,
			     sizeof(err)), BG_OK);
	assert_int_equal(reg(BG_ON_CLOSE, NULL, NULL, hook_b_refuses, err,
			     sizeof(err)), BG_OK);

	/* No channels: the filtered hook does not run, the other does. */
	assert_int_equal(bg_handlers_run(BG_ON_STORE, &a), BG_CODE_COUNT);
	assert_int_equal(calls_a, 0);
	assert_int_equal(bg_handlers_run(BG_ON_CLOSE, &a), BG_CODE_COUNT);
	assert_int_equal(calls_b, 1);

	subs[0] = bg_chan_subscribe(t, "news", 4, &c);
	subs[1] = bg_chan_subscribe(t, "game-7", 6, &c);
	assert_non_null(subs[0]);
	assert_non_null(subs[1]);
	c.subs = subs;
	c.n_subs = 1;
	bg_handlers_run(BG_ON_STORE, &a);
	assert_int_equal(calls_a, 0);
	c.n_subs = 2;
	bg_handlers_run(BG_ON_STORE, &a);
	assert_int_equal(calls_a, 1);
	assert_null(last_channel);
	c.subs = NULL;
	c.n_subs = 0;
	bg_chan_table_free(t);
}

/* A compiled-in event handler gets the request and owns the reply. */
static const struct bg_request *seen_req;

static enum bg_code
event_handler(const struct bg_hook_args *a)
{
	calls_a++;
	seen_req = a->req;
	return BG_CODE_COUNT;
}

static void
test_dispatch_to_registered_event(void **state)
{
	struct bg_conn c;
	struct bg_request req;
	char err[256];

	memset(&c, 0, sizeof(c));
	memset(&req, 0, sizeof(req));
	assert_int_equal(reg(BG_ON_EVENT, "custom", NULL, event_handler, err,
			     sizeof(err)), BG_OK);
	/* A second handler for the same event: the first wins. */
	assert_int_equal(reg(BG_ON_EVENT, "custom", NULL, hook_b_refuses,
			     err, sizeof(err)), BG_OK);
	req.event = "custom";
	bg_handlers_dispatch(&c, &req);
	assert_int_equal(calls_a, 1);
	assert_int_equal(calls_b, 0);
	assert_ptr_equal(seen_req, &req);
}

/* A subscribe hook adds members to the answer through a->answer. */
static enum bg_code
hook_adds_answer(const struct bg_hook_args *a)
{
	calls_a++;
	json_object_set_new(a->answer, "seats", json_integer(3));
	return BG_CODE_COUNT;
}

static void
test_subscribe_hook_adds_to_answer(void **state)
{
	struct bg_conn c;
	struct bg_hook_args a = { .c = &c, .channel = "room-1" };
	char err[256];

	memset(&c, 0, sizeof(c));
	a.answer = json_object();
	assert_int_equal(reg(BG_ON_SUBSCRIBE, NULL, "^room-",
			     hook_adds_answer, err, sizeof(err)), BG_OK);
	assert_int_equal(bg_handlers_run(BG_ON_SUBSCRIBE, &a),
			 BG_CODE_COUNT);
	assert_int_equal(calls_a, 1);
	assert_int_equal(json_integer_value(json_object_get(a.answer,
							    "seats")), 3);
	json_decref(a.answer);
}

static void *
note_self(void *arg)
{
	*(pthread_t *)arg = pthread_self();
	return NULL;
}

/* Debug builds: the handler API called off the connection's worker
 * thread aborts (bg_assert_owner); on it, it answers. */
static void
test_api_asserts_owner_thread(void **state)
{
	struct bg_worker *w = calloc(1, sizeof(*w));
	struct bg_conn c;
	pthread_t other;
	int status;
	pid_t pid;

	assert_non_null(w);
	memset(&c, 0, sizeof(c));
	strcpy(c.id, "n-0-1");
	c.w = w;
	w->owner = pthread_self();
	assert_string_equal(bg_h_id(&c), "n-0-1");
	assert_int_equal(pthread_create(&other, NULL, note_self,
					&w->owner), 0);
	assert_int_equal(pthread_join(other, NULL), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* No core file, no assertion text in the test's output. */
		struct rlimit no_core = { 0, 0 };

		setrlimit(RLIMIT_CORE, &no_core);
		if (freopen("/dev/null", "w", stderr) == NULL)
			_exit(3);
		(void)bg_h_id(&c);
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status));
	assert_int_equal(WTERMSIG(status), SIGABRT);
	free(w);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(
			test_subscribe_hook_adds_to_answer, reset, reset),
		cmocka_unit_test(test_api_asserts_owner_thread),
		cmocka_unit_test_setup_teardown(test_bad_regex_names_pattern,
						reset, reset),
		cmocka_unit_test_setup_teardown(test_err_truncated_safely,
						reset, reset),
		cmocka_unit_test_setup_teardown(test_missing_fn_or_event,
						reset, reset),
		cmocka_unit_test_setup_teardown(test_register_and_has_event,
						reset, reset),
		cmocka_unit_test_setup_teardown(test_register_copies_struct,
						reset, reset),
		cmocka_unit_test_setup_teardown(test_table_limit, reset,
						reset),
		cmocka_unit_test_setup_teardown(
			test_init_builtins_and_example, reset, reset),
		cmocka_unit_test_setup_teardown(
			test_run_example_readonly_hook, reset, reset),
		cmocka_unit_test_setup_teardown(test_run_filters_and_order,
						reset, reset),
		cmocka_unit_test_setup_teardown(
			test_run_filter_on_client_channels, reset, reset),
		cmocka_unit_test_setup_teardown(
			test_dispatch_to_registered_event, reset, reset),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
