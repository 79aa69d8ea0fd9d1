/*
 * api_history.h - GET /api/history on the API listener (PROTOCOL.md,
 * history and recovery; §11): the history event's answer over HTTP.
 */
#ifndef BG_API_HISTORY_H
#define BG_API_HISTORY_H

#include <stddef.h>

struct bg_server;

/*
 * Answers GET /api/history?channel=C&limit=L&since_epoch=E&since_offset=N
 * (query: the text after '?', or NULL). Returns the JSON body, malloc'd
 * (*len bytes), and sets *status (200, 400, 404, 503); NULL when out of
 * memory. API thread: waits for the bus's answer, at most a few
 * seconds.
 */
char *bg_api_history(struct bg_server *srv, const char *query,
		     unsigned int *status, size_t *len);

#endif
