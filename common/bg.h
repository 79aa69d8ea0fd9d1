/*
 * bg.h - what every Bagou module shares: status codes and small helpers.
 */
#ifndef BG_BG_H
#define BG_BG_H

#include <assert.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BG_OK     0
#define BG_ERR   -1
#define BG_AGAIN -2

#define BG_VERSION "0.1.0"
#define BG_PROTOCOL_VERSION 1

#define BG_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Most [server] workers (a multiple of 64: the bus keeps a bitmap). */
#define BG_WORKERS_MAX 1024

/* Longest client id, channel name and callbackId (PROTOCOL.md §3, §4). */
#define BG_ID_MAX        64
#define BG_CHANNEL_MAX  200
#define BG_CALLBACK_MAX  64
/* Longest event name a client may send (PROTOCOL.md §3): it becomes an
 * AMQP routing key when forwarded, and those end at 255 bytes. */
#define BG_EVENT_MAX    128

/* Adds n to an owner-written counter (bg_stats, the bus's, the
 * control plane's). Owner thread only. */
static inline void
bg_stat_add(uint64_t *counter, uint64_t n)
{
	__atomic_store_n(counter, *counter + n, __ATOMIC_RELAXED);
}

/* Reads a counter from any thread. */
static inline uint64_t
bg_stat_get(const uint64_t *counter)
{
	return __atomic_load_n(counter, __ATOMIC_RELAXED);
}

/*
 * Debug builds (those without NDEBUG, i.e. every build of the Makefile)
 * abort unless the calling thread is `owner`, the pthread_t an object's
 * owning thread recorded for itself (e.g. a worker's w->owner). At the
 * entry of every function that has an owning thread (STYLE.md).
 */
#ifndef NDEBUG
#define bg_assert_owner(owner) \
	assert(pthread_equal(pthread_self(), (owner)))
#else
#define bg_assert_owner(owner) ((void)0)
#endif

#endif
