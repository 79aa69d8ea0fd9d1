/*
 * test_evmem.c - unit tests of server/evmem.c: small requests get pool
 * cells, larger ones malloc; freed cells are reused; realloc keeps the
 * content across the move out of a cell; and libevent, once installed,
 * really allocates its per-descriptor records from the pool.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "server/evmem.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void
test_small_from_pool_large_from_malloc(void **state)
{
	void *small = bg_evmem_malloc(16);
	void *edge = bg_evmem_malloc(BG_EVMEM_CELL);
	void *large = bg_evmem_malloc(BG_EVMEM_CELL + 1);

	assert_non_null(small);
	assert_non_null(edge);
	assert_non_null(large);
	assert_true(bg_evmem_owns(small));
	assert_true(bg_evmem_owns(edge));
	assert_false(bg_evmem_owns(large));
	assert_true((uintptr_t)small % 16 == 0);
	memset(edge, 0xab, BG_EVMEM_CELL);
	bg_evmem_free(small);
	bg_evmem_free(edge);
	bg_evmem_free(large);
	bg_evmem_free(NULL);
}

static void
test_freed_cells_are_reused(void **state)
{
	void *a = bg_evmem_malloc(8);
	void *b;

	bg_evmem_free(a);
	b = bg_evmem_malloc(24);
	assert_ptr_equal(a, b);
	bg_evmem_free(b);
}

static void
test_realloc_keeps_content(void **state)
{
	char *p = bg_evmem_malloc(10), *q;

	memcpy(p, "0123456789", 10);
	q = bg_evmem_realloc(p, 20);           /* still a cell */
	assert_ptr_equal(p, q);
	q = bg_evmem_realloc(q, 4096);         /* moves to malloc */
	assert_false(bg_evmem_owns(q));
	assert_memory_equal(q, "0123456789", 10);
	q = bg_evmem_realloc(q, 8192);         /* plain realloc from there */
	assert_memory_equal(q, "0123456789", 10);
	bg_evmem_free(q);
	q = bg_evmem_realloc(NULL, 12);
	assert_true(bg_evmem_owns(q));
	bg_evmem_free(q);
}

static void
on_nothing(evutil_socket_t fd, short what, void *arg)
{
}

/* libevent's record of a watched descriptor comes from the pool: the
 * pool hands out cells by a bump index, so the watch costs cells. */
static void
test_libevent_descriptor_records_in_pool(void **state)
{
	struct event_base *base;
	struct event *ev;
	void *before, *after;
	int fds[2];

	/* The first call of the process into libevent (the rule). */
	bg_evmem_install();
	base = event_base_new();
	assert_non_null(base);
	assert_int_equal(pipe(fds), 0);
	before = bg_evmem_malloc(1);
	bg_evmem_free(before);
	ev = event_new(base, fds[0], EV_READ | EV_PERSIST, on_nothing, NULL);
	assert_non_null(ev);
	assert_int_equal(event_add(ev, NULL), 0);
	after = bg_evmem_malloc(1);
	/* The free cell was taken by libevent's record. */
	assert_ptr_not_equal(before, after);
	assert_true(bg_evmem_owns(after));
	bg_evmem_free(after);
	event_free(ev);
	event_base_free(base);
	close(fds[0]);
	close(fds[1]);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_libevent_descriptor_records_in_pool),
		cmocka_unit_test(test_small_from_pool_large_from_malloc),
		cmocka_unit_test(test_freed_cells_are_reused),
		cmocka_unit_test(test_realloc_keeps_content),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
