/*
 * ring.h - a bounded lock-free pointer ring (ck_ring) with an eventfd
 * wake-up, the only way data crosses threads in Bagou.
 *
 * One consumer thread per ring. Producers: one (SPSC: the acceptor into a
 * worker's inbox, the bus into a worker's broadcast ring) or many (MPSC:
 * workers into the bus's outbox). The eventfd is written only when the
 * consumer may be asleep, so a busy consumer costs producers no syscalls.
 *
 * Consumer loop, on the eventfd becoming readable:
 *
 *	bg_ring_clear(r);
 *	do {
 *		while ((p = bg_ring_pop(r)) != NULL)
 *			handle(p);
 *	} while (!bg_ring_sleep(r));
 */
#ifndef BG_RING_H
#define BG_RING_H

#include <ck_ring.h>
#include <stdbool.h>

struct bg_ring {
	struct ck_ring ring;      /* producers and consumer, through ck */
	ck_ring_buffer_t *slots;  /* immutable after bg_ring_new */
	bool multi_producer;      /* immutable */
	int efd;                  /* immutable; eventfd the consumer polls */
	unsigned int sleeping;    /* atomic: consumer may be waiting on efd */
};

/*
 * Creates a ring holding up to capacity - 1 pointers; capacity is rounded
 * up to a power of two (minimum 4). NULL on failure (errno set).
 */
struct bg_ring *bg_ring_new(unsigned int capacity, bool multi_producer);

/* Frees the ring; no thread may use it any more. Items left are leaked. */
void bg_ring_free(struct bg_ring *r);

/*
 * Producer: enqueues p (not NULL). Returns true, or false when the ring is
 * full (the caller still owns p and decides: wait and retry, or fail).
 * Wakes the consumer when it may be asleep.
 */
bool bg_ring_push(struct bg_ring *r, void *p);

/*
 * Producer: as bg_ring_push, but a wake-up the consumer needs is left to
 * the caller: *wake is set to true, and the caller must call
 * bg_ring_wake(r) before it waits on anything (so that one wake-up can
 * cover a batch of pushes). *wake is left alone otherwise.
 */
bool bg_ring_push_defer(struct bg_ring *r, void *p, bool *wake);

/* Producer: the wake-up bg_ring_push_defer left to the caller. */
void bg_ring_wake(struct bg_ring *r);

/* Consumer: the oldest item, or NULL when empty. */
void *bg_ring_pop(struct bg_ring *r);

/* Consumer: resets the eventfd counter before draining. */
void bg_ring_clear(struct bg_ring *r);

/*
 * Consumer, after draining: arms the wake-up. Returns true when the ring is
 * empty and the consumer may wait on bg_ring_fd(); false when items came in
 * meanwhile (drain again).
 */
bool bg_ring_sleep(struct bg_ring *r);

/* Items currently queued (approximate from any thread). */
unsigned int bg_ring_count(const struct bg_ring *r);

static inline int
bg_ring_fd(const struct bg_ring *r)
{
	return r->efd;
}

#endif
