/*
 * stats.c - the helpers behind the operations metrics of PROTOCOL.md §7:
 * close codes, latency histogram bounds, the per-worker table of
 * forwarded requests awaiting their reply. Owner thread only, except the
 * constant tables.
 */
#include "server/server.h"

#include <time.h>

/* The codes Bagou sends or a client commonly does (PROTOCOL.md §6). */
const uint16_t bg_close_codes[BG_CLOSE_CODES - 1] = {
	1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1011,
	4001, 4002,
};

/* Microseconds: 100 us to 10 s. */
const uint32_t bg_hist_bounds[BG_HIST_BUCKETS - 1] = {
	100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000,
	250000, 1000000, 2500000, 10000000,
};

uint64_t
bg_mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

void
bg_stat_close(struct bg_stats *st, uint16_t code, bool by_client)
{
	int i = 0;

	if (code == 0)
		code = 1006;
	while (i < BG_CLOSE_CODES - 1 && bg_close_codes[i] != code)
		i++;
	bg_stat_add(&st->closes[i][by_client ? 1 : 0], 1);
}

/* FNV-1a over both strings, never 0 (the free mark). */
static uint64_t
pending_key(const char *client, const char *callback_id)
{
	uint64_t h = 14695981039346656037ULL;

	for (const char *p = client; *p; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211ULL;
	h = (h ^ 0xff) * 1099511628211ULL;
	for (const char *p = callback_id; *p; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211ULL;
	return h ? h : 1;
}

void
bg_fwd_pending_add(struct bg_fwd_slot *tab, const char *client,
		   const char *callback_id, uint64_t now_us)
{
	uint64_t key = pending_key(client, callback_id);
	struct bg_fwd_slot *s = &tab[key % BG_FWD_PENDING];

	s->key = key;
	s->t_us = now_us;
}

bool
bg_fwd_pending_take(struct bg_fwd_slot *tab, const char *client,
		    const char *callback_id, uint64_t now_us, uint64_t *us)
{
	uint64_t key = pending_key(client, callback_id);
	struct bg_fwd_slot *s = &tab[key % BG_FWD_PENDING];

	if (s->key != key)
		return false;
	s->key = 0;
	*us = now_us > s->t_us ? now_us - s->t_us : 0;
	return true;
}
