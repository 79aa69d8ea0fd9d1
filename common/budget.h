/*
 * budget.h - a connection's memory budget ([limits]
 * max_connection_memory): what it holds is charged here and every growth
 * is asked for first.
 *
 * Charged: each subscription (BG_BUDGET_SUB_COST + its name's bytes, even
 * when the channel is shared: a worst case, what an only subscriber
 * costs), the store (its JSON size), the rx reassembly buffer (its
 * capacity) and the outbound queue (its bytes, passed in: the connection
 * keeps that count). Pure; one thread (the connection's worker).
 */
#ifndef BG_BUDGET_H
#define BG_BUDGET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What one subscription costs besides its name: the channel and
 * subscription records and the array slots that point at them. */
#define BG_BUDGET_SUB_COST 128

/* 32 bits each: max_connection_memory is at most 1 GiB and nothing
 * charged is let past it. */
struct bg_budget {
	uint32_t limit;         /* max_connection_memory */
	uint32_t subs;          /* sum of bg_budget_sub_cost */
	uint32_t store;         /* the store's JSON bytes */
	uint32_t rx;            /* reassembly buffer capacity */
};

/* The charge of one subscription to a name of name_len bytes. */
size_t bg_budget_sub_cost(size_t name_len);

/* Bytes charged, with queued bytes in the outbound queue. */
size_t bg_budget_used(const struct bg_budget *b, size_t queued);

/* True when more bytes still fit, with queued bytes in the queue. */
bool bg_budget_allows(const struct bg_budget *b, size_t queued,
		      size_t more);

#endif
