/*
 * evmem.h - libevent's small allocations kept out of the connections'
 * heap (docs/DESIGN.md, "Giving memory back").
 *
 * libevent keeps one small record per descriptor number a base has ever
 * watched (16 bytes, until the base is freed). Allocated by a worker while
 * it adopts a connection, each record lands between that connection's own
 * allocations; once a burst of connections has closed, one record pins
 * every gap and malloc_trim can return only whole free pages (15,000
 * reset connections left ~12 MB behind). bg_evmem_install makes libevent
 * take allocations of at most BG_EVMEM_CELL bytes from one reserved region
 * of its own (touched as it fills, cells reused through a free list);
 * larger ones stay plain malloc, so memory libevent hands out can still
 * be freed with free().
 */
#ifndef BG_EVMEM_H
#define BG_EVMEM_H

#include <stdbool.h>
#include <stddef.h>

/* Bytes of one pool cell: libevent requests up to this size use it. */
#define BG_EVMEM_CELL 32

/* Routes libevent's allocations through bg_evmem_malloc/realloc/free.
 * Call once, from main, before any other libevent function (libevent's
 * rule for event_set_mem_functions). */
void bg_evmem_install(void);

/* malloc/realloc/free with the pool: any thread (a mutex guards the free
 * list). A request of at most BG_EVMEM_CELL bytes gets a cell while the
 * region has room, else malloc. bg_evmem_free takes cells and malloc'd
 * pointers alike (and NULL). bg_evmem_realloc keeps the content, moving a
 * cell to malloc when it outgrows it. NULL when out of memory. */
void *bg_evmem_malloc(size_t size);
void *bg_evmem_realloc(void *p, size_t size);
void bg_evmem_free(void *p);

/* true when p is a pool cell (for tests). */
bool bg_evmem_owns(const void *p);

#endif
