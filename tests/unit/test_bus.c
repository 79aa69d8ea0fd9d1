/*
 * test_bus.c - unit tests of amqp/bus.c through its sink, on a
 * standalone node (no broker, no server, no worker threads): a fake
 * struct bg_bus_sink records what the bus hands each "worker". A
 * broadcast reaches the workers that want it (counted); a job runs on
 * the bus thread and its answer comes back to the asking worker only; a
 * job without an answer is freed there; the server's tick runs on
 * every loop turn.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "amqp/bus.h"
#include "amqp/control.h"
#include "common/bg.h"
#include "common/config.h"
#include "common/msg.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WORKERS 3

static struct bg_config cfg;
static struct bg_msg *got[WORKERS][4];   /* bus writes, test reads */
static unsigned int n_got[WORKERS];      /* atomic */
static unsigned int n_wakes[WORKERS];    /* atomic */
static unsigned int counted[WORKERS];    /* atomic */
static pthread_t job_thread;
static unsigned int jobs_run, jobs_freed; /* atomic */
static unsigned int ticks;               /* atomic */

static const struct bg_config *
fake_cfg(void *arg)
{
	return &cfg;
}

static void
fake_quiescent(void *arg)
{
}

/* Worker 2 wants nothing: it must never be handed a broadcast. */
static bool
fake_wants(void *arg, int i, const struct bg_msg *m)
{
	return i != 2;
}

static bool
fake_deliver(void *arg, int i, struct bg_msg *m, bool *wake)
{
	unsigned int n = __atomic_load_n(&n_got[i], __ATOMIC_ACQUIRE);

	if (n == 4)
		return false;
	got[i][n] = m;
	__atomic_store_n(&n_got[i], n + 1, __ATOMIC_RELEASE);
	*wake = true;
	return true;
}

static void
fake_wake(void *arg, int i)
{
	__atomic_add_fetch(&n_wakes[i], 1, __ATOMIC_RELEASE);
}

static void
fake_count(void *arg, int i)
{
	__atomic_add_fetch(&counted[i], 1, __ATOMIC_RELAXED);
}

static bool
fake_congested(void *arg, int i)
{
	return false;
}

static uint64_t
fake_stat(void *arg, int i, enum bg_sink_stat which)
{
	return 0;
}

static void
fake_tick(void *arg)
{
	__atomic_add_fetch(&ticks, 1, __ATOMIC_RELAXED);
}

static const struct bg_bus_sink sink = {
	.n_workers = WORKERS, .node_id = "node000000000000",
	.cfg = fake_cfg, .quiescent = fake_quiescent, .wants = fake_wants,
	.deliver = fake_deliver, .wake = fake_wake, .count = fake_count,
	.congested = fake_congested, .stat = fake_stat, .tick = fake_tick,
};

struct fixture {
	struct bg_control *ctl;
	struct bg_bus *bus;
};

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	bg_config_defaults(&cfg);
	strcpy(cfg.amqp_url, "none");
	memset(got, 0, sizeof(got));
	memset(n_got, 0, sizeof(n_got));
	memset(n_wakes, 0, sizeof(n_wakes));
	memset(counted, 0, sizeof(counted));
	jobs_run = jobs_freed = ticks = 0;
	f->ctl = bg_control_new(&sink, NULL);
	assert_non_null(f->ctl);
	f->bus = bg_bus_new(&sink, f->ctl);
	assert_non_null(f->bus);
	assert_int_equal(bg_bus_start(f->bus), BG_OK);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;
	struct timespec deadline;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 5;
	assert_int_equal(bg_bus_stop(f->bus, &deadline), BG_OK);
	for (int i = 0; i < WORKERS; i++)
		for (unsigned int k = 0; k < n_got[i]; k++)
			bg_msg_unref(got[i][k]);
	bg_bus_free(f->bus);
	bg_control_free(f->ctl);
	free(f);
	return 0;
}

/* Bounded: true once *p reaches n within 5 s. */
static bool
wait_for(unsigned int *p, unsigned int n)
{
	struct timespec ts = { 0, 1000000 };

	for (int i = 0; i < 5000; i++) {
		if (__atomic_load_n(p, __ATOMIC_ACQUIRE) >= n)
			return true;
		nanosleep(&ts, NULL);
	}
	return false;
}

static void
test_broadcast_reaches_the_workers_that_want_it(void **state)
{
	struct fixture *f = *state;
	struct bg_msg *m = bg_msg_new(BG_MSG_ALL, 0);

	assert_non_null(m);
	assert_int_equal(bg_bus_publish(f->bus, m), BG_OK);
	assert_true(wait_for(&n_got[0], 1));
	assert_true(wait_for(&n_got[1], 1));
	assert_ptr_equal(got[0][0], m);
	assert_ptr_equal(got[1][0], m);
	assert_int_equal(__atomic_load_n(&counted[0], __ATOMIC_RELAXED), 1);
	assert_int_equal(__atomic_load_n(&counted[1], __ATOMIC_RELAXED), 1);
	assert_int_equal(n_got[2], 0);
	assert_int_equal(counted[2], 0);
}

/* A producer's batch reaches the bus as one batch, and the bus wakes
 * each worker once for all of it instead of once per message. */
static void
test_batch_wakes_each_worker_once(void **state)
{
	struct fixture *f = *state;

	bg_bus_batch_begin();
	for (int k = 0; k < 4; k++) {
		struct bg_msg *m = bg_msg_new(BG_MSG_ALL, 0);
		assert_non_null(m);
		assert_int_equal(bg_bus_publish(f->bus, m), BG_OK);
	}
	bg_bus_batch_end();
	assert_true(wait_for(&n_got[0], 4));
	assert_true(wait_for(&n_got[1], 4));
	/* One wake-up each, or two if the bus woke on its own (a timer) in
	 * the middle of the drain; one per message would be 4. */
	assert_in_range(__atomic_load_n(&n_wakes[0], __ATOMIC_ACQUIRE), 1, 2);
	assert_in_range(__atomic_load_n(&n_wakes[1], __ATOMIC_ACQUIRE), 1, 2);
	assert_int_equal(__atomic_load_n(&n_wakes[2], __ATOMIC_ACQUIRE), 0);
}

static void
job_on_bus(struct bg_msg *m)
{
	job_thread = pthread_self();
	*(int *)m->job_data = 42; /* the answer, written on the bus */
	__atomic_add_fetch(&jobs_run, 1, __ATOMIC_RELEASE);
}

static void
job_answer(struct bg_worker *w, struct bg_msg *m)
{
	fail(); /* the fake sink never runs answers */
}

static void
job_free(void *p)
{
	free(p);
	__atomic_add_fetch(&jobs_freed, 1, __ATOMIC_RELEASE);
}

static struct bg_msg *
new_job(int worker, bool answer)
{
	struct bg_msg *m = bg_msg_new(BG_MSG_CLIENTS, 0);

	assert_non_null(m);
	m->job_data = calloc(1, sizeof(int));
	m->job_free = job_free;
	m->job_fn = job_on_bus;
	m->answer_fn = answer ? job_answer : NULL;
	m->reply_worker = worker;
	return m;
}

/* The answer goes to the asking worker alone, behind the broadcast
 * published before the job. */
static void
test_job_runs_on_the_bus_and_answers_its_worker(void **state)
{
	struct fixture *f = *state;
	struct bg_msg *b = bg_msg_new(BG_MSG_ALL, 0);
	struct bg_msg *m = new_job(1, true);

	assert_non_null(b);
	assert_int_equal(bg_bus_publish(f->bus, b), BG_OK);
	assert_int_equal(bg_bus_request(f->bus, m), BG_OK);
	assert_true(wait_for(&n_got[1], 2));
	assert_int_equal(jobs_run, 1);
	assert_false(pthread_equal(job_thread, pthread_self()));
	assert_ptr_equal(got[1][0], b);
	assert_ptr_equal(got[1][1], m);
	assert_int_equal(*(int *)m->job_data, 42);
	assert_true(wait_for(&n_got[0], 1));
	assert_int_equal(n_got[0], 1);  /* the broadcast only */
	assert_int_equal(n_got[2], 0);
	/* Not counted as a broadcast. */
	assert_int_equal(__atomic_load_n(&counted[1], __ATOMIC_RELAXED), 1);
	assert_int_equal(jobs_freed, 0);
}

static void
test_job_without_answer_is_freed_on_the_bus(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(bg_bus_request(f->bus, new_job(0, false)), BG_OK);
	assert_true(wait_for(&jobs_freed, 1));
	assert_int_equal(jobs_run, 1);
	/* A job naming no worker is dropped after it ran too. */
	assert_int_equal(bg_bus_request(f->bus, new_job(WORKERS, true)),
			 BG_OK);
	assert_true(wait_for(&jobs_freed, 2));
	assert_int_equal(jobs_run, 2);
	for (int i = 0; i < WORKERS; i++)
		assert_int_equal(n_got[i], 0);
}

/* The server's tick runs on every turn of the bus loop, even idle (at
 * least once a second). */
static void
test_tick_runs_every_turn(void **state)
{
	assert_true(wait_for(&ticks, 2));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_tick_runs_every_turn,
						setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_broadcast_reaches_the_workers_that_want_it,
			setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_batch_wakes_each_worker_once, setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_job_runs_on_the_bus_and_answers_its_worker,
			setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_job_without_answer_is_freed_on_the_bus,
			setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
