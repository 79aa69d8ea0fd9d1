/*
 * registry.c - the event table and dispatch order of PROTOCOL.md §3:
 * a registered handler, else the automatic ack (with a callbackId), else
 * nothing. The table is a constant; worker threads read it.
 */
#include "handlers/handlers.h"

#include <string.h>

#include "handlers/builtin.h"
#include "server/conn.h"

static const struct bg_handler table[] = {
	{ "subscribe", bg_handler_subscribe },
	{ "unsubscribe", bg_handler_unsubscribe },
	{ "store", bg_handler_store },
	{ "ping", bg_handler_ping },
	{ "publish", bg_handler_publish },
};

const struct bg_handler *
bg_handlers_find(const char *event)
{
	for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
		if (strcmp(table[i].event, event) == 0)
			return &table[i];
	return NULL;
}

void
bg_handlers_dispatch(struct bg_conn *c, const struct bg_request *req)
{
	const struct bg_handler *h = bg_handlers_find(req->event);

	if (h != NULL)
		h->fn(c, req);
	else
		bg_conn_reply_ok(c, req, NULL); /* the original Bagou ack */
}
