/*
 * malloc_count.c - an LD_PRELOAD counter of heap allocations, for
 * bench/broadcast_cost.py: how many malloc, calloc, realloc,
 * posix_memalign and aligned_alloc calls a process makes. Counts only;
 * the allocator itself is glibc's (__libc_* entry points, so no dlsym
 * and no bootstrap problem).
 *
 * MALLOC_COUNT_FILE=PATH: a thread rewrites PATH every 50 ms with the
 * count so far ("N\n", by rename, so a reader never sees half a line).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static unsigned long long count;

void *malloc(size_t n)
{
	__atomic_add_fetch(&count, 1, __ATOMIC_RELAXED);
	return __libc_malloc(n);
}

void *calloc(size_t a, size_t b)
{
	__atomic_add_fetch(&count, 1, __ATOMIC_RELAXED);
	return __libc_calloc(a, b);
}

void *realloc(void *p, size_t n)
{
	__atomic_add_fetch(&count, 1, __ATOMIC_RELAXED);
	return __libc_realloc(p, n);
}

int posix_memalign(void **out, size_t align, size_t n)
{
	void *p;

	__atomic_add_fetch(&count, 1, __ATOMIC_RELAXED);
	p = __libc_memalign(align, n);
	if (p == NULL)
		return ENOMEM;
	*out = p;
	return 0;
}

void *aligned_alloc(size_t align, size_t n)
{
	__atomic_add_fetch(&count, 1, __ATOMIC_RELAXED);
	return __libc_memalign(align, n);
}

static void *dumper(void *arg)
{
	const char *path = arg;
	char tmp[4096];
	struct timespec ts = { 0, 50000000 };

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	for (;;) {
		FILE *f = fopen(tmp, "w");

		if (f != NULL) {
			fprintf(f, "%llu\n", __atomic_load_n(&count,
							     __ATOMIC_RELAXED));
			fclose(f);
			rename(tmp, path);
		}
		nanosleep(&ts, NULL);
	}
	return NULL;
}

__attribute__((constructor)) static void start(void)
{
	const char *path = getenv("MALLOC_COUNT_FILE");
	pthread_t t;

	if (path != NULL && path[0] != '\0' &&
	    pthread_create(&t, NULL, dumper, strdup(path)) == 0)
		pthread_detach(t);
}
