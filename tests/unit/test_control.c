/*
 * test_control.c - unit tests of amqp/control.c on a standalone node
 * (no broker, no bus, no workers): messages loop back and are dispatched
 * by type on the next service turn (not inside the send); malformed ones
 * are ignored; other nodes come up on any message and go down on "bye"
 * with the callbacks; a query is answered by the node itself, waits for
 * a node that does not answer until its deadline or until that node
 * leaves, and lists it as missing; late answers and answers for another
 * node are ignored; jobs posted from another thread run on service.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "amqp/control.h"
#include "common/bg.h"
#include "common/config.h"
#include "server/server.h"
#include "server/sink.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct fixture {
	struct bg_config cfg;
	struct bg_server srv;
	uint64_t seen[8];
	struct bg_control *ctl;
};

struct record {
	int calls;
	char last_node[80];
	json_t *last;              /* copy of the last message / answers */
	json_t *missing;
	int ups, downs;
};

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	struct bg_bus_sink sink;

	bg_config_defaults(&f->cfg);
	strcpy(f->cfg.amqp_url, "none");
	f->srv.cfg = &f->cfg;
	f->srv.cfg_seen = f->seen;
	strcpy(f->srv.node_id, "self000000000000");
	bg_server_sink(&f->srv, &sink);
	f->ctl = bg_control_new(&sink, &f->srv);
	assert_non_null(f->ctl);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	bg_control_free(f->ctl);
	free(f);
	return 0;
}

static void
on_msg(struct bg_control *ctl, const char *node, json_t *msg, void *arg)
{
	struct record *r = arg;

	r->calls++;
	snprintf(r->last_node, sizeof(r->last_node), "%s", node);
	json_decref(r->last);
	r->last = json_deep_copy(msg);
}

static void
on_node(struct bg_control *ctl, const char *node, bool up, void *arg)
{
	struct record *r = arg;

	if (up)
		r->ups++;
	else
		r->downs++;
	snprintf(r->last_node, sizeof(r->last_node), "%s", node);
}

static void
deliver(struct bg_control *ctl, const char *text)
{
	bg_control_deliver(ctl, text, strlen(text));
}

static void
test_loopback_dispatch(void **state)
{
	struct fixture *f = *state;
	struct record r = { 0 };

	assert_int_equal(bg_control_on(f->ctl, "t.one", on_msg, &r), BG_OK);
	bg_control_attach(f->ctl, NULL);
	assert_int_equal(bg_control_send(f->ctl, json_pack("{s:s,s:i}",
			 "type", "t.one", "x", 5)), BG_OK);
	/* Not inside the send: on the next service turn. */
	assert_int_equal(r.calls, 0);
	bg_control_service(f->ctl);
	assert_int_equal(r.calls, 1);
	assert_string_equal(r.last_node, "self000000000000");
	assert_int_equal(json_integer_value(json_object_get(r.last, "x")), 5);
	/* Not an object, no type, no node, an unknown type: ignored. */
	deliver(f->ctl, "garbage");
	deliver(f->ctl, "[1,2]");
	deliver(f->ctl, "{\"type\":\"t.one\"}");
	deliver(f->ctl, "{\"type\":7,\"node\":\"n\"}");
	deliver(f->ctl, "{\"type\":\"t.two\",\"node\":\"n\"}");
	bg_control_service(f->ctl);
	assert_int_equal(r.calls, 1);
	assert_int_equal(bg_control_send(f->ctl, json_array()), BG_ERR);
	json_decref(r.last);
}

static void
test_nodes_up_and_bye(void **state)
{
	struct fixture *f = *state;
	struct record r = { 0 };
	const struct bg_nodes *t;

	assert_int_equal(bg_control_on_node(f->ctl, on_node, &r), BG_OK);
	bg_control_attach(f->ctl, NULL);
	assert_int_equal(bg_control_live(f->ctl), 1);
	deliver(f->ctl, "{\"type\":\"heartbeat\",\"node\":\"other\","
		"\"stats\":{\"connections\":4}}");
	deliver(f->ctl, "{\"type\":\"heartbeat\",\"node\":\"other\"}");
	bg_control_service(f->ctl);
	assert_int_equal(r.ups, 1);
	assert_string_equal(r.last_node, "other");
	assert_int_equal(bg_control_live(f->ctl), 2);
	t = bg_control_nodes(f->ctl);
	assert_int_equal(bg_nodes_count(t), 2);
	for (size_t i = 0; i < bg_nodes_count(t); i++)
		if (strcmp(bg_nodes_at(t, i)->id, "other") == 0)
			assert_int_equal(json_integer_value(json_object_get(
				bg_nodes_at(t, i)->stats, "connections")), 4);
	/* The node's own bye, or one for a node never seen: nothing. */
	deliver(f->ctl, "{\"type\":\"bye\",\"node\":\"self000000000000\"}");
	deliver(f->ctl, "{\"type\":\"bye\",\"node\":\"ghost\"}");
	bg_control_service(f->ctl);
	assert_int_equal(r.downs, 0);
	deliver(f->ctl, "{\"type\":\"bye\",\"node\":\"other\"}");
	bg_control_service(f->ctl);
	assert_int_equal(r.downs, 1);
	assert_int_equal(bg_control_live(f->ctl), 1);
	assert_int_equal(bg_nodes_count(bg_control_nodes(f->ctl)), 1);
}

/* Answers every "t.q" with {"n": 1}. */
static void
on_query_msg(struct bg_control *ctl, const char *node, json_t *msg,
	     void *arg)
{
	bg_control_answer(ctl, msg, json_pack("{s:i}", "n", 1));
}

static void
on_done(struct bg_control *ctl, json_t *answers, json_t *missing,
	void *arg)
{
	struct record *r = arg;

	r->calls++;
	json_decref(r->last);
	json_decref(r->missing);
	r->last = json_deep_copy(answers);
	r->missing = json_deep_copy(missing);
}

static void
sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

static void
test_query(void **state)
{
	struct fixture *f = *state;
	struct record r = { 0 };
	char answer[200];

	bg_control_on(f->ctl, "t.q", on_query_msg, NULL);
	bg_control_attach(f->ctl, NULL);
	/* Alone: answered by itself, on service. */
	assert_int_equal(bg_control_query(f->ctl, json_pack("{s:s}", "type",
			 "t.q"), 5000, on_done, &r), BG_OK);
	assert_int_equal(r.calls, 0);
	for (int i = 0; i < 3 && r.calls == 0; i++)
		bg_control_service(f->ctl);
	assert_int_equal(r.calls, 1);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(
		r.last, "self000000000000"), "n")), 1);
	assert_int_equal(json_array_size(r.missing), 0);
	/* With a silent node: the deadline, and it is missing. */
	deliver(f->ctl, "{\"type\":\"heartbeat\",\"node\":\"mute\"}");
	bg_control_service(f->ctl);
	bg_control_query(f->ctl, json_pack("{s:s}", "type", "t.q"), 100,
			 on_done, &r);
	bg_control_service(f->ctl);
	bg_control_service(f->ctl);
	assert_int_equal(r.calls, 1);
	sleep_ms(120);
	bg_control_service(f->ctl);
	assert_int_equal(r.calls, 2);
	assert_int_equal(json_array_size(r.missing), 1);
	assert_string_equal(json_string_value(json_array_get(r.missing, 0)),
			    "mute");
	assert_non_null(json_object_get(r.last, "self000000000000"));
	/* An answer from it, for query 3 (the next): counted; a late one
	 * (query 2), one to another node, malformed ones: ignored. */
	bg_control_query(f->ctl, json_pack("{s:s}", "type", "t.q"), 5000,
			 on_done, &r);
	deliver(f->ctl, "{\"type\":\"answer\",\"node\":\"mute\",\"to\":"
		"\"self000000000000\",\"query\":2,\"data\":9}");
	deliver(f->ctl, "{\"type\":\"answer\",\"node\":\"mute\",\"to\":"
		"\"elsewhere\",\"query\":3,\"data\":9}");
	deliver(f->ctl, "{\"type\":\"answer\",\"node\":\"mute\",\"to\":5}");
	bg_control_service(f->ctl);
	assert_int_equal(r.calls, 2);
	snprintf(answer, sizeof(answer), "{\"type\":\"answer\",\"node\":"
		 "\"mute\",\"to\":\"self000000000000\",\"query\":3,"
		 "\"data\":{\"n\":2}}");
	deliver(f->ctl, answer);
	bg_control_service(f->ctl);
	assert_int_equal(r.calls, 3);
	assert_int_equal(json_array_size(r.missing), 0);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(
		r.last, "mute"), "n")), 2);
	/* A node that leaves ends the wait for it at once. */
	bg_control_query(f->ctl, json_pack("{s:s}", "type", "t.q"), 60000,
			 on_done, &r);
	bg_control_service(f->ctl);
	assert_int_equal(r.calls, 3);
	deliver(f->ctl, "{\"type\":\"bye\",\"node\":\"mute\"}");
	bg_control_service(f->ctl);
	assert_int_equal(r.calls, 4);
	assert_string_equal(json_string_value(json_array_get(r.missing, 0)),
			    "mute");
	/* Pending at bye: ended with what came. */
	deliver(f->ctl, "{\"type\":\"heartbeat\",\"node\":\"mute\"}");
	bg_control_service(f->ctl);
	bg_control_query(f->ctl, json_pack("{s:s}", "type", "t.q"), 60000,
			 on_done, &r);
	bg_control_bye(f->ctl);
	assert_int_equal(r.calls, 5);
	assert_int_equal(bg_control_queries(f->ctl), 5);
	json_decref(r.last);
	json_decref(r.missing);
}

struct stopped_record {
	int calls;
	bool ctl_null;
	size_t missing;
};

static void
on_done_stopped(struct bg_control *ctl, json_t *answers, json_t *missing,
		void *arg)
{
	struct stopped_record *r = arg;

	r->calls++;
	r->ctl_null = ctl == NULL;
	r->missing = json_array_size(missing);
}

/* A query still open when the control plane is freed (no bye: the bus
 * never ran, or stopped without it) is ended there, once, with ctl NULL
 * and every node missing, so its asker frees what it holds. */
static void
test_query_open_at_free(void **state)
{
	struct fixture *f = *state;
	struct stopped_record r = { 0 };

	bg_control_on(f->ctl, "t.q", on_query_msg, NULL);
	bg_control_attach(f->ctl, NULL);
	deliver(f->ctl, "{\"type\":\"heartbeat\",\"node\":\"mute\"}");
	bg_control_service(f->ctl);
	assert_int_equal(bg_control_query(f->ctl, json_pack("{s:s}", "type",
			 "t.q"), 60000, on_done_stopped, &r), BG_OK);
	bg_control_service(f->ctl);
	assert_int_equal(r.calls, 0);   /* waits for "mute" */
	bg_control_free(f->ctl);
	f->ctl = NULL;
	assert_int_equal(r.calls, 1);
	assert_true(r.ctl_null);
	assert_int_equal(r.missing, 2); /* self and mute, as asked */
}

struct counted_job {
	struct bg_control_job job;
	int *ran;
};

static void
job_run(struct bg_control *ctl, struct bg_control_job *job)
{
	(*((struct counted_job *)job)->ran)++;
	free(job);
}

static void
job_drop(struct bg_control_job *job)
{
	free(job);
}

static void *
poster(void *arg)
{
	struct bg_control *ctl = arg;
	static int ran;

	for (int i = 0; i < 100; i++) {
		struct counted_job *j = calloc(1, sizeof(*j));
		*j = (struct counted_job){ { job_run, job_drop }, &ran };
		if (bg_control_post(ctl, &j->job) != BG_OK)
			free(j);
	}
	return &ran;
}

static void
test_jobs_from_another_thread(void **state)
{
	struct fixture *f = *state;
	pthread_t t;
	void *ran;

	bg_control_attach(f->ctl, NULL);
	assert_int_equal(pthread_create(&t, NULL, poster, f->ctl), 0);
	assert_int_equal(pthread_join(t, &ran), 0);
	bg_control_service(f->ctl);
	assert_int_equal(*(int *)ran, 100);
	/* Left in the queue at free: dropped (ASan sees no leak). */
	poster(f->ctl);
	bg_control_bye(f->ctl);
	/* Refused once stopping. */
	struct counted_job j = { { job_run, job_drop }, NULL };
	assert_int_equal(bg_control_post(f->ctl, &j.job), BG_AGAIN);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_loopback_dispatch, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_nodes_up_and_bye, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_query, setup, teardown),
		cmocka_unit_test_setup_teardown(test_query_open_at_free, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_jobs_from_another_thread,
						setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
