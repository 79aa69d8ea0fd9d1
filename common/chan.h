/*
 * chan.h - a worker's channel shard: channel name -> its local subscribers.
 *
 * Pure and single-threaded: each worker owns one table (and a second one
 * keyed by client id) and is the only thread that enters it. Subscribe and
 * unsubscribe are O(1) (hash lookup, swap-remove); a channel disappears
 * with its last subscriber.
 */
#ifndef BG_CHAN_H
#define BG_CHAN_H

#include <stddef.h>
#include <stdint.h>

struct bg_chan;

/* One subscription: owned by the table, handed to the subscriber. */
struct bg_chan_sub {
	struct bg_chan *chan;
	void *owner;     /* the subscriber (a connection) */
	uint32_t pos;    /* index in chan->subs */
	uint32_t hold;   /* history: nonzero while the subscription waits
	                    for its position from the bus (handlers/
	                    history.c); broadcasts skip it meanwhile */
};

struct bg_chan {
	struct bg_chan *next;        /* hash chain */
	struct bg_chan_sub **subs;   /* &one while cap_subs is 1 */
	struct bg_chan_sub *one;     /* the slot of a lone subscriber: most
	                                channels of many names have one */
	uint32_t hash;
	uint32_t n_subs, cap_subs;
	uint32_t name_len;
	uint8_t pending;             /* the owner's: a subscribe's answer
	                                waits for the node queue's binding */
	char name[];                 /* NUL-terminated */
};

struct bg_chan_table {
	struct bg_chan **buckets;
	uint32_t n_buckets;          /* power of two */
	uint32_t n_chans;
	uint64_t n_subs;             /* subscriptions in the whole table */
};

/* The hash of a channel name (FNV-1a) the table uses; the bus's worker
 * filters use the same (bg_msg.hashes). */
uint32_t bg_chan_hash(const char *name, size_t len);

/* An empty table; NULL on allocation failure. */
struct bg_chan_table *bg_chan_table_new(void);

/* Frees the table, its channels and every subscription still in it. */
void bg_chan_table_free(struct bg_chan_table *t);

/* The channel called name, or NULL when nobody here is subscribed. */
struct bg_chan *bg_chan_find(const struct bg_chan_table *t, const char *name,
			     size_t len);

/*
 * Adds owner to the channel (creating it). Does not check for duplicates:
 * the caller knows its own subscriptions. NULL on allocation failure.
 */
struct bg_chan_sub *bg_chan_subscribe(struct bg_chan_table *t,
				      const char *name, size_t len,
				      void *owner);

/* Removes and frees the subscription; drops the channel when empty. */
void bg_chan_unsubscribe(struct bg_chan_table *t, struct bg_chan_sub *s);

#endif
