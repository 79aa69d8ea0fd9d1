/*
 * evmem.c - a pool for libevent's small allocations (see evmem.h for why).
 *
 * One anonymous mapping of POOL_BYTES, reserved at the first small
 * request (MAP_NORESERVE: pages become resident only as cells are first
 * used). Cells are handed out by a bump index, freed cells go on a free
 * list threaded through them; nothing returns to the system, which is the
 * point: these records live as long as their event base. 16 MiB holds
 * 524,288 cells, more descriptors than a node has; past that, malloc.
 * Any thread: the mutex guards next and free_list.
 */
#include "server/evmem.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define POOL_BYTES ((size_t)16 << 20)

struct cell {
	struct cell *next;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char *region;               /* set once under lock, then read-only */
static size_t next;                /* lock: cells handed out so far */
static struct cell *free_list;     /* lock */
static bool unusable;              /* lock: mmap failed, malloc only */

bool
bg_evmem_owns(const void *p)
{
	const char *r = __atomic_load_n(&region, __ATOMIC_ACQUIRE);

	return r != NULL && (const char *)p >= r &&
	       (const char *)p < r + POOL_BYTES;
}

static void *
cell_get(void)
{
	void *p = NULL;

	pthread_mutex_lock(&lock);
	if (region == NULL && !unusable) {
		void *m = mmap(NULL, POOL_BYTES, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
			       -1, 0);

		if (m == MAP_FAILED)
			unusable = true;
		else
			__atomic_store_n(&region, (char *)m, __ATOMIC_RELEASE);
	}
	if (free_list != NULL) {
		p = free_list;
		free_list = free_list->next;
	} else if (region != NULL && next < POOL_BYTES / BG_EVMEM_CELL) {
		p = region + next++ * BG_EVMEM_CELL;
	}
	pthread_mutex_unlock(&lock);
	return p;
}

void *
bg_evmem_malloc(size_t size)
{
	void *p;

	if (size > 0 && size <= BG_EVMEM_CELL && (p = cell_get()) != NULL)
		return p;
	return malloc(size);
}

void
bg_evmem_free(void *p)
{
	struct cell *c = p;

	if (!bg_evmem_owns(p)) {
		free(p);
		return;
	}
	pthread_mutex_lock(&lock);
	c->next = free_list;
	free_list = c;
	pthread_mutex_unlock(&lock);
}

void *
bg_evmem_realloc(void *p, size_t size)
{
	void *q;

	if (p == NULL)
		return bg_evmem_malloc(size);
	if (!bg_evmem_owns(p))
		return realloc(p, size);
	if (size <= BG_EVMEM_CELL)
		return p;
	if ((q = malloc(size)) == NULL)
		return NULL;
	memcpy(q, p, size < BG_EVMEM_CELL ? size : BG_EVMEM_CELL);
	bg_evmem_free(p);
	return q;
}

void
bg_evmem_install(void)
{
	event_set_mem_functions(bg_evmem_malloc, bg_evmem_realloc,
				bg_evmem_free);
}
