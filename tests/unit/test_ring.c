/*
 * test_ring.c - unit tests of common/ring.c: FIFO order, capacity, the
 * sleep / wake-up protocol on the eventfd, and threaded SPSC and MPSC
 * runs through the documented consumer loop (ring.h). A watchdog alarm
 * turns a lost wake-up into a failure instead of a hang.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/bg.h"
#include "common/ring.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WATCHDOG_SECONDS 60
/* A consumer that waits this long on the eventfd while items sit in the
 * ring has lost a wake-up (a producer needs microseconds to signal). */
#define LOST_WAKEUP_MS 10000

/* Items the consumer of the running threaded test has checked, for the
 * watchdog's message (atomic, relaxed). */
static uint64_t progress;

static void
watchdog(int sig)
{
	char msg[160];
	int n = snprintf(msg, sizeof(msg), "test_ring: watchdog fired after "
			 "%d s, %llu items received (lost wake-up, deadlock "
			 "or livelock)\n", WATCHDOG_SECONDS,
			 (unsigned long long)__atomic_load_n(&progress,
							     __ATOMIC_RELAXED));

	(void)sig;
	if (n > 0 && write(2, msg, (size_t)n) < 0)
		_exit(3);
	_exit(2);
}

static void
watchdog_arm(void)
{
	signal(SIGALRM, watchdog);
	alarm(WATCHDOG_SECONDS);
}

static void
watchdog_disarm(void)
{
	alarm(0);
}

/* Items are addresses of cells of this array (real, distinct, non-NULL
 * pointers, so sanitizers can track them); item(i) is cell i. */
static uint64_t cells[64];

static void *
item(uintptr_t i)
{
	return &cells[i % BG_ARRAY_LEN(cells)];
}

/* 1 when the eventfd is readable right now, 0 when not. */
static int
fd_readable(const struct bg_ring *r)
{
	struct pollfd pfd = { .fd = bg_ring_fd(r), .events = POLLIN };
	int rc = poll(&pfd, 1, 0);

	assert_true(rc >= 0);
	return rc > 0 && (pfd.revents & POLLIN);
}

/* Reads (and resets) the eventfd counter: how many wake-ups were sent
 * since the last read; 0 when none. */
static uint64_t
fd_take(const struct bg_ring *r)
{
	uint64_t n = 0;
	ssize_t k = read(bg_ring_fd(r), &n, sizeof(n));

	if (k < 0) {
		assert_int_equal(errno, EAGAIN);
		return 0;
	}
	assert_int_equal(k, sizeof(n));
	return n;
}

static void
test_push_pop_order(void **state)
{
	for (int mp = 0; mp <= 1; mp++) {
		struct bg_ring *r = bg_ring_new(16, mp);

		assert_non_null(r);
		assert_true(bg_ring_fd(r) >= 0);
		assert_null(bg_ring_pop(r));
		assert_int_equal(bg_ring_count(r), 0);
		for (uintptr_t i = 1; i <= 10; i++)
			assert_true(bg_ring_push(r, item(i)));
		assert_int_equal(bg_ring_count(r), 10);
		for (uintptr_t i = 1; i <= 5; i++)
			assert_ptr_equal(bg_ring_pop(r), item(i));
		for (uintptr_t i = 11; i <= 15; i++)
			assert_true(bg_ring_push(r, item(i)));
		for (uintptr_t i = 6; i <= 15; i++)
			assert_ptr_equal(bg_ring_pop(r), item(i));
		assert_null(bg_ring_pop(r));
		assert_int_equal(bg_ring_count(r), 0);
		bg_ring_free(r);
	}
	bg_ring_free(NULL);
}

static void
test_capacity(void **state)
{
	for (int mp = 0; mp <= 1; mp++) {
		struct bg_ring *r = bg_ring_new(8, mp);
		uintptr_t next_in = 1, next_out = 1;

		assert_non_null(r);
		for (int i = 0; i < 7; i++)
			assert_true(bg_ring_push(r, item(next_in++)));
		assert_int_equal(bg_ring_count(r), 7);
		assert_false(bg_ring_push(r, item(63)));
		assert_false(bg_ring_push(r, item(63)));
		assert_int_equal(bg_ring_count(r), 7);
		assert_ptr_equal(bg_ring_pop(r), item(next_out++));
		assert_true(bg_ring_push(r, item(next_in++)));
		assert_false(bg_ring_push(r, item(63)));

		/* Wrap around the slot array many times, full each time. */
		for (int round = 0; round < 100; round++) {
			for (int i = 0; i < 3; i++)
				assert_ptr_equal(bg_ring_pop(r),
						 item(next_out++));
			for (int i = 0; i < 3; i++)
				assert_true(bg_ring_push(r, item(next_in++)));
			assert_false(bg_ring_push(r, item(63)));
		}
		while (next_out < next_in)
			assert_ptr_equal(bg_ring_pop(r), item(next_out++));
		assert_null(bg_ring_pop(r));
		bg_ring_free(r);
	}
}

/* Capacity rounds up to a power of two, minimum 4, and holds one less. */
static void
test_capacity_rounding(void **state)
{
	static const struct { unsigned int ask, holds; } cases[] = {
		{ 0, 3 }, { 1, 3 }, { 4, 3 }, { 5, 7 }, { 8, 7 }, { 9, 15 },
		{ 1000, 1023 }, { 1024, 1023 },
	};

	for (size_t c = 0; c < BG_ARRAY_LEN(cases); c++) {
		struct bg_ring *r = bg_ring_new(cases[c].ask, false);
		unsigned int n = 0;

		assert_non_null(r);
		while (n < 5000 && bg_ring_push(r, item(n + 1)))
			n++;
		assert_int_equal(n, cases[c].holds);
		assert_int_equal(bg_ring_count(r), cases[c].holds);
		bg_ring_free(r);
	}
}

static void
test_sleep_semantics(void **state)
{
	for (int mp = 0; mp <= 1; mp++) {
		struct bg_ring *r = bg_ring_new(8, mp);

		assert_true(bg_ring_sleep(r));         /* empty */
		assert_true(bg_ring_push(r, item(1)));
		assert_false(bg_ring_sleep(r));        /* item pending */
		assert_false(bg_ring_sleep(r));        /* still pending */
		assert_ptr_equal(bg_ring_pop(r), item(1));
		assert_true(bg_ring_sleep(r));         /* drained */
		assert_true(bg_ring_sleep(r));         /* idempotent */
		bg_ring_free(r);
	}
}

/* bg_ring_push_defer leaves the one wake-up a sleeping consumer needs
 * to its caller: nothing is written until bg_ring_wake. */
static void
test_deferred_wakeup(void **state)
{
	for (int mp = 0; mp <= 1; mp++) {
		struct bg_ring *r = bg_ring_new(8, mp);
		bool wake = false;

		assert_true(bg_ring_push_defer(r, item(1), &wake));
		assert_true(wake);              /* the consumer was asleep */
		assert_false(fd_readable(r));   /* ... and is not woken yet */
		wake = false;
		assert_true(bg_ring_push_defer(r, item(2), &wake));
		assert_false(wake);             /* already owed: once only */
		bg_ring_wake(r);
		assert_int_equal(fd_take(r), 1);

		/* A full ring: false, and no wake-up claimed. */
		while (bg_ring_pop(r) != NULL)
			;
		assert_true(bg_ring_sleep(r));
		for (uintptr_t i = 3; i < 10; i++) {
			wake = false;
			assert_true(bg_ring_push_defer(r, item(i), &wake));
			assert_true(wake == (i == 3));
		}
		wake = false;
		assert_false(bg_ring_push_defer(r, item(10), &wake));
		assert_false(wake);
		bg_ring_wake(r);
		assert_int_equal(fd_take(r), 1);
		bg_ring_free(r);
	}
}

static void
test_wakeup_eventfd(void **state)
{
	for (int mp = 0; mp <= 1; mp++) {
		struct bg_ring *r = bg_ring_new(8, mp);

		/* A new ring's consumer is asleep, nothing signalled yet. */
		assert_false(fd_readable(r));
		assert_true(bg_ring_push(r, item(1)));
		assert_true(fd_readable(r));

		/* The consumer wakes and drains: clear resets the counter. */
		bg_ring_clear(r);
		assert_false(fd_readable(r));
		bg_ring_clear(r); /* on a zero counter: harmless */
		assert_ptr_equal(bg_ring_pop(r), item(1));

		/* Not sleeping: pushes cost no eventfd write. */
		assert_true(bg_ring_push(r, item(2)));
		assert_true(bg_ring_push(r, item(3)));
		assert_false(fd_readable(r));
		assert_false(bg_ring_sleep(r)); /* items came in: drain */
		assert_true(bg_ring_push(r, item(4)));
		assert_false(fd_readable(r));
		while (bg_ring_pop(r) != NULL)
			;

		/* Asleep again: exactly one write for a burst of pushes. */
		assert_true(bg_ring_sleep(r));
		assert_false(fd_readable(r));
		for (uintptr_t i = 5; i <= 9; i++)
			assert_true(bg_ring_push(r, item(i)));
		assert_true(fd_readable(r));
		assert_int_equal(fd_take(r), 1);
		assert_false(fd_readable(r));

		/* A failed push (full ring) signals nothing. */
		assert_true(bg_ring_push(r, item(10)));
		assert_true(bg_ring_push(r, item(11)));
		assert_false(bg_ring_push(r, item(12)));
		assert_int_equal(fd_take(r), 0);
		for (uintptr_t i = 5; i <= 11; i++)
			assert_ptr_equal(bg_ring_pop(r), item(i));
		assert_null(bg_ring_pop(r));
		assert_true(bg_ring_sleep(r));
		assert_int_equal(fd_take(r), 0);
		bg_ring_free(r);
	}
}

/* ------------------------------------------------------------ threads */

/*
 * Threads other than main must not call cmocka asserts (they longjmp to
 * the main thread's stack): they record their first failure here and the
 * main thread asserts after joining.
 */
struct run {
	struct bg_ring *ring;
	unsigned int n_producers;
	uint64_t per_producer;
	/* Cell k (1-based) is producer (k-1)/per_producer's item number
	 * (k-1)%per_producer + 1. The producer writes a cookie into the cell
	 * before pushing its address; the consumer reads it after popping:
	 * under TSan, a handoff without happens-before is a reported race. */
	uint64_t *cells;
	unsigned int stop;          /* atomic: consumer gave up */
	/* Written by the consumer thread, read after join. */
	uint64_t received;
	uint64_t wakeups;
	char error[256];
};

struct producer_arg {
	struct run *run;
	unsigned int id;
};

static uint64_t
cookie(uint64_t k)
{
	return k * 0x9e3779b97f4a7c15ull ^ 0x5a5a5a5a5a5a5a5aull;
}

static void *
producer_main(void *arg)
{
	struct producer_arg *pa = arg;
	struct run *run = pa->run;
	uint64_t base = (uint64_t)pa->id * run->per_producer;

	for (uint64_t seq = 1; seq <= run->per_producer; seq++) {
		uint64_t k = base + seq;

		run->cells[k] = cookie(k);
		while (!bg_ring_push(run->ring, &run->cells[k])) {
			if (__atomic_load_n(&run->stop, __ATOMIC_ACQUIRE))
				return NULL;
			sched_yield();
		}
		/*
		 * ck's multi-producer enqueue reserves a slot (CAS), fills
		 * it, then spins without yielding until every earlier
		 * producer has committed. With more producers than cores, a
		 * tight push loop leaves every producer holding a ticket and
		 * the one that must commit next off-CPU: the ring crawls at
		 * about one item per scheduler tick (observed under TSan:
		 * 800,000 items did not finish in 60 s). Yielding between
		 * pushes keeps the test about the ring's correctness.
		 */
		if (run->n_producers > 1)
			sched_yield();
	}
	return NULL;
}

/* Checks one popped item; false with run->error set on a wrong one. */
static bool
consume(struct run *run, uint64_t *next, void *p)
{
	uint64_t total = run->per_producer * run->n_producers;
	uint64_t *cell = p, k, seq;
	unsigned int id;

	if (cell <= run->cells || cell > run->cells + total) {
		snprintf(run->error, sizeof(run->error),
			 "popped a pointer that was never pushed: %p", p);
		return false;
	}
	k = (uint64_t)(cell - run->cells);
	id = (unsigned int)((k - 1) / run->per_producer);
	seq = (k - 1) % run->per_producer + 1;
	if (seq != next[id]) {
		snprintf(run->error, sizeof(run->error),
			 "producer %u: got item %llu, expected %llu", id,
			 (unsigned long long)seq,
			 (unsigned long long)next[id]);
		return false;
	}
	if (*cell != cookie(k)) {
		snprintf(run->error, sizeof(run->error),
			 "producer %u item %llu: the consumer read %#llx, "
			 "the producer wrote %#llx", id,
			 (unsigned long long)seq, (unsigned long long)*cell,
			 (unsigned long long)cookie(k));
		return false;
	}
	next[id]++;
	run->received++;
	if (run->received % 4096 == 0)
		__atomic_store_n(&progress, run->received, __ATOMIC_RELAXED);
	return true;
}

static void *
consumer_main(void *arg)
{
	struct run *run = arg;
	struct bg_ring *r = run->ring;
	uint64_t total = run->per_producer * run->n_producers;
	uint64_t next[8];
	void *p;

	for (unsigned int i = 0; i < 8; i++)
		next[i] = 1;
	while (run->received < total) {
		struct pollfd pfd = { .fd = bg_ring_fd(r), .events = POLLIN };
		int rc = poll(&pfd, 1, LOST_WAKEUP_MS);

		if (rc < 0 && errno == EINTR)
			continue;
		if (rc < 0) {
			snprintf(run->error, sizeof(run->error),
				 "poll() failed: %s", strerror(errno));
			break;
		}
		if (rc == 0) {
			if (bg_ring_count(r) == 0)
				continue; /* slow producer (sanitizers) */
			snprintf(run->error, sizeof(run->error),
				 "lost wake-up: %u items queued, eventfd "
				 "silent for %d ms after %llu received",
				 bg_ring_count(r), LOST_WAKEUP_MS,
				 (unsigned long long)run->received);
			break;
		}
		run->wakeups++;
		/* The documented consumer loop (ring.h). */
		bg_ring_clear(r);
		do {
			while ((p = bg_ring_pop(r)) != NULL)
				if (!consume(run, next, p))
					goto out;
		} while (!bg_ring_sleep(r));
	}
out:
	__atomic_store_n(&run->stop, 1, __ATOMIC_RELEASE);
	/* Nothing may arrive after the totals. */
	if (run->error[0] == '\0' && bg_ring_pop(r) != NULL)
		snprintf(run->error, sizeof(run->error),
			 "an item beyond the %llu expected",
			 (unsigned long long)total);
	for (unsigned int i = 0; run->error[0] == '\0' &&
	     i < run->n_producers; i++)
		if (next[i] != run->per_producer + 1)
			snprintf(run->error, sizeof(run->error),
				 "producer %u: %llu items received", i,
				 (unsigned long long)(next[i] - 1));
	return NULL;
}

static void
run_threads(unsigned int capacity, bool mp, unsigned int n_producers,
	    uint64_t per_producer)
{
	struct run run = { .n_producers = n_producers,
			   .per_producer = per_producer };
	struct producer_arg pa[8];
	pthread_t prod[8], cons;

	assert_true(n_producers >= 1 && n_producers <= 8);
	run.ring = bg_ring_new(capacity, mp);
	assert_non_null(run.ring);
	run.cells = calloc(per_producer * n_producers + 1,
			   sizeof(*run.cells));
	assert_non_null(run.cells);
	__atomic_store_n(&progress, 0, __ATOMIC_RELAXED);
	watchdog_arm();
	assert_int_equal(pthread_create(&cons, NULL, consumer_main, &run), 0);
	for (unsigned int i = 0; i < n_producers; i++) {
		pa[i] = (struct producer_arg){ .run = &run, .id = i };
		assert_int_equal(pthread_create(&prod[i], NULL, producer_main,
						&pa[i]), 0);
	}
	for (unsigned int i = 0; i < n_producers; i++)
		assert_int_equal(pthread_join(prod[i], NULL), 0);
	assert_int_equal(pthread_join(cons, NULL), 0);
	watchdog_disarm();

	if (run.error[0] != '\0')
		fail_msg("%s", run.error);
	assert_int_equal(run.received, per_producer * n_producers);
	assert_true(run.wakeups >= 1);
	assert_true(run.wakeups <= run.received);
	assert_null(bg_ring_pop(run.ring));
	assert_int_equal(bg_ring_count(run.ring), 0);
	free(run.cells);
	bg_ring_free(run.ring);
}

/* One producer, 1,000,000 sequential values, a small ring so it is often
 * full and the consumer often goes to sleep. */
static void
test_spsc_threaded(void **state)
{
	run_threads(64, false, 1, 1000000);
}

/* Same through a ring too small to batch: a sleep/wake for nearly every
 * item, the path a lost wake-up would show on. */
static void
test_spsc_threaded_tiny_ring(void **state)
{
	run_threads(4, false, 1, 200000);
}

static void
test_mpsc_threaded(void **state)
{
	run_threads(256, true, 4, 200000);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_push_pop_order),
		cmocka_unit_test(test_capacity),
		cmocka_unit_test(test_capacity_rounding),
		cmocka_unit_test(test_sleep_semantics),
		cmocka_unit_test(test_deferred_wakeup),
		cmocka_unit_test(test_wakeup_eventfd),
		cmocka_unit_test(test_spsc_threaded),
		cmocka_unit_test(test_spsc_threaded_tiny_ring),
		cmocka_unit_test(test_mpsc_threaded),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
