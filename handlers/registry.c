/*
 * registry.c - the handler table and the dispatch order of PROTOCOL.md §3.
 * Filled on the main thread at start-up, read-only afterwards. regexec
 * on a shared compiled regex is thread-safe in glibc, but through one
 * lock per regex: each worker compiles its own copies
 * (bg_handlers_worker_regexes, kept in a thread-local pointer), so
 * subscribes on different workers never wait for each other. Sees the
 * server through the handler API alone.
 */
#include "handlers/handlers.h"

#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/bg.h"
#include "handlers/forward.h"
#include "handlers/modules.h"

#define MAX_HANDLERS 256

struct entry {
	struct bg_handler h;
	bool has_re;
	regex_t re;
};

static struct entry table[MAX_HANDLERS];
static int n_entries;

/* The calling worker's own copies of the regexes (indexed like table),
 * or NULL: the shared ones. */
static __thread regex_t *own_re;

/* Compiled-in modules, in registration order (built-ins first). */
static int (*const modules[])(char *, size_t) = {
	bg_builtin_register,
	bg_presence_register,
	bg_example_register,
};

int
bg_handlers_register(const struct bg_handler *h, char *err, size_t errlen)
{
	struct entry *e;
	int rc;

	if (n_entries == MAX_HANDLERS) {
		snprintf(err, errlen, "more than %d handlers", MAX_HANDLERS);
		return BG_ERR;
	}
	if (h->fn == NULL || (h->hook == BG_ON_EVENT && h->event == NULL)) {
		snprintf(err, errlen, "handler without a function or event");
		return BG_ERR;
	}
	e = &table[n_entries];
	memset(e, 0, sizeof(*e));
	e->h = *h;
	if (h->channel != NULL) {
		rc = regcomp(&e->re, h->channel, REG_EXTENDED | REG_NOSUB);
		if (rc != 0) {
			char msg[128];
			regerror(rc, &e->re, msg, sizeof(msg));
			snprintf(err, errlen, "handler channel pattern '%s': %s",
				 h->channel, msg);
			return BG_ERR;
		}
		e->has_re = true;
	}
	n_entries++;
	return BG_OK;
}

int
bg_handlers_init(char *err, size_t errlen)
{
	for (size_t i = 0; i < BG_ARRAY_LEN(modules); i++)
		if (modules[i](err, errlen) != BG_OK)
			return BG_ERR;
	return BG_OK;
}

void
bg_handlers_free(void)
{
	for (int i = 0; i < n_entries; i++)
		if (table[i].has_re)
			regfree(&table[i].re);
	n_entries = 0;
}

void *
bg_handlers_worker_regexes(void)
{
	regex_t *res = calloc((size_t)n_entries + 1, sizeof(*res));

	for (int i = 0; res != NULL && i < n_entries; i++) {
		/* Compiled once already: the same pattern compiles again. */
		if (table[i].has_re &&
		    regcomp(&res[i], table[i].h.channel,
			    REG_EXTENDED | REG_NOSUB) != 0) {
			bg_handlers_worker_regexes_free(res);
			return NULL;
		}
	}
	own_re = res;
	return res;
}

void
bg_handlers_worker_regexes_free(void *p)
{
	regex_t *res = p;

	if (own_re == res)
		own_re = NULL;
	/* regfree is safe on the zeroed and the failed ones too. */
	for (int i = 0; res != NULL && i < n_entries; i++)
		if (table[i].has_re)
			regfree(&res[i]);
	free(res);
}

/* The filter: the channel being (un)subscribed, or any of the client's
 * channels (as the original Bagou matched). The worker's own copy of the
 * regex when it has one. */
static bool
matches(const struct entry *e, const struct bg_hook_args *a)
{
	const regex_t *re = own_re != NULL ? &own_re[e - table] : &e->re;
	uint32_t n;

	if (!e->has_re)
		return true;
	if (a->channel != NULL)
		return regexec(re, a->channel, 0, NULL, 0) == 0;
	n = bg_h_channel_count(a->c);
	for (uint32_t i = 0; i < n; i++)
		if (regexec(re, bg_h_channel(a->c, i), 0, NULL, 0) == 0)
			return true;
	return false;
}

bool
bg_handlers_has_event(const char *event)
{
	for (int i = 0; i < n_entries; i++)
		if (table[i].h.hook == BG_ON_EVENT &&
		    strcmp(table[i].h.event, event) == 0)
			return true;
	return false;
}

void
bg_handlers_dispatch(struct bg_conn *c, const struct bg_request *req)
{
	struct bg_hook_args a = { .c = c, .req = req };

	for (int i = 0; i < n_entries; i++) {
		const struct entry *e = &table[i];
		if (e->h.hook == BG_ON_EVENT &&
		    strcmp(e->h.event, req->event) == 0 && matches(e, &a)) {
			e->h.fn(&a);
			return;
		}
	}
	if (bg_h_config(c)->forward_exchange[0] != '\0') {
		/* Lifecycle names are the server's to send: a client must
		 * not fake its own open or close to the application. */
		if (strcmp(req->event, "open") == 0 ||
		    strcmp(req->event, "close") == 0) {
			bg_h_reply_error(c, req, BG_CODE_UNKNOWN_EVENT,
					 "'open' and 'close' are reserved "
					 "for the server");
			return;
		}
		bg_forward_request(c, req, false);
		return;
	}
	bg_h_reply_ok(c, req, NULL); /* the original Bagou ack */
}

enum bg_code
bg_handlers_run(enum bg_hook hook, const struct bg_hook_args *a)
{
	for (int i = 0; i < n_entries; i++) {
		const struct entry *e = &table[i];
		enum bg_code code;

		if (e->h.hook != hook || !matches(e, a))
			continue;
		code = e->h.fn(a);
		if (hook == BG_ON_SUBSCRIBE && code != BG_CODE_COUNT)
			return code;
	}
	return BG_CODE_COUNT;
}
