/*
 * budget.c - a connection's memory budget: the arithmetic (budget.h).
 */
#include "common/budget.h"

size_t
bg_budget_sub_cost(size_t name_len)
{
	return BG_BUDGET_SUB_COST + name_len;
}

size_t
bg_budget_used(const struct bg_budget *b, size_t queued)
{
	return (size_t)b->subs + b->store + b->rx + queued;
}

bool
bg_budget_allows(const struct bg_budget *b, size_t queued, size_t more)
{
	size_t used = bg_budget_used(b, queued);

	return used <= b->limit && more <= b->limit - used;
}
