/*
 * ring.c - ck_ring plus a Dekker-style sleeping flag: the producer pushes,
 * then (full fence) checks the flag; the consumer sets the flag, then (full
 * fence) checks the ring. One of them always sees the other, so no wake-up
 * is lost and none is sent while the consumer is busy.
 *
 * ThreadSanitizer cannot see ck 0.7's volatile index accesses and fences
 * as synchronization: sanitizer builds suppress reports inside ck's ring
 * (tests/tsan.supp) and annotate the handoff itself, so that what the
 * producer wrote into an item happens-before what the consumer reads.
 */
#include "common/ring.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#if defined(__SANITIZE_THREAD__)
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define HANDOFF_RELEASE(p) __tsan_release(p)
#define HANDOFF_ACQUIRE(p) __tsan_acquire(p)
#else
#define HANDOFF_RELEASE(p) ((void)(p))
#define HANDOFF_ACQUIRE(p) ((void)(p))
#endif

struct bg_ring *
bg_ring_new(unsigned int capacity, bool multi_producer)
{
	struct bg_ring *r;
	unsigned int size = 4;

	while (size < capacity && size < (1u << 30))
		size <<= 1;
	r = calloc(1, sizeof(*r));
	if (r == NULL)
		return NULL;
	r->slots = calloc(size, sizeof(*r->slots));
	r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (r->slots == NULL || r->efd < 0) {
		int e = errno;
		free(r->slots);
		if (r->efd >= 0)
			close(r->efd);
		free(r);
		errno = e;
		return NULL;
	}
	ck_ring_init(&r->ring, size);
	r->multi_producer = multi_producer;
	r->sleeping = 1;
	return r;
}

void
bg_ring_free(struct bg_ring *r)
{
	if (r == NULL)
		return;
	close(r->efd);
	free(r->slots);
	free(r);
}

bool
bg_ring_push_defer(struct bg_ring *r, void *p, bool *wake)
{
	bool ok;

	HANDOFF_RELEASE(p);
	if (r->multi_producer)
		ok = ck_ring_enqueue_mpsc(&r->ring, r->slots, p);
	else
		ok = ck_ring_enqueue_spsc(&r->ring, r->slots, p);
	if (!ok)
		return false;
	/* A locked read-modify-write orders the push before the flag read
	 * (a full barrier, and one TSan understands, unlike a fence). The
	 * producer that takes the flag owes the consumer its wake-up. */
	if (__atomic_fetch_add(&r->sleeping, 0, __ATOMIC_SEQ_CST) &&
	    __atomic_exchange_n(&r->sleeping, 0, __ATOMIC_SEQ_CST))
		*wake = true;
	return true;
}

void
bg_ring_wake(struct bg_ring *r)
{
	uint64_t one = 1;
	/* EAGAIN means the counter is already non-zero: fine; nothing else
	 * fails on an eventfd of ours. */
	ssize_t n = write(r->efd, &one, sizeof(one));

	(void)n;
}

bool
bg_ring_push(struct bg_ring *r, void *p)
{
	bool wake = false;

	if (!bg_ring_push_defer(r, p, &wake))
		return false;
	if (wake)
		bg_ring_wake(r);
	return true;
}

void *
bg_ring_pop(struct bg_ring *r)
{
	void *p;

	/* One consumer: the single-consumer dequeue fits both kinds. */
	if (r->multi_producer) {
		if (!ck_ring_dequeue_mpsc(&r->ring, r->slots, &p))
			return NULL;
	} else if (!ck_ring_dequeue_spsc(&r->ring, r->slots, &p)) {
		return NULL;
	}
	HANDOFF_ACQUIRE(p);
	return p;
}

void
bg_ring_clear(struct bg_ring *r)
{
	uint64_t n;

	if (read(r->efd, &n, sizeof(n)) < 0)
		return;
}

bool
bg_ring_sleep(struct bg_ring *r)
{
	/* xchg: the flag store is ordered before the ring check. */
	__atomic_exchange_n(&r->sleeping, 1, __ATOMIC_SEQ_CST);
	if (ck_ring_size(&r->ring) == 0)
		return true;
	/* Items arrived; if a producer already claimed the flag, the
	 * eventfd fires once more, which costs one empty drain. */
	__atomic_store_n(&r->sleeping, 0, __ATOMIC_RELAXED);
	return false;
}

unsigned int
bg_ring_count(const struct bg_ring *r)
{
	return ck_ring_size(&r->ring);
}
