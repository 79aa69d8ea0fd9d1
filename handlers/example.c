/*
 * example.c - a small compiled-in handler module, the model to copy
 * (docs/handlers.md). It sees the server only through the handler API
 * (handlers/bagou_handler.h): the "whoami" event answers the client's
 * id, user and channels, and an on_subscribe hook keeps "readonly-"
 * channels for authenticated users. Worker threads.
 */
#include <string.h>

#include "handlers/bagou_handler.h"
#include "handlers/modules.h"

static enum bg_code
whoami(const struct bg_hook_args *a)
{
	struct bg_conn *c = a->c;
	const char *user = bg_h_user(c);
	json_t *chans = json_array(), *extra;

	for (uint32_t i = 0; i < bg_h_channel_count(c); i++)
		json_array_append_new(chans,
				      json_string(bg_h_channel(c, i)));
	extra = json_pack("{s:s, s:o, s:o}", "id", bg_h_id(c), "user",
			  user ? json_string(user) : json_null(),
			  "channels", chans);
	if (a->req->callback_id != NULL)
		bg_h_reply_ok(c, a->req, extra);
	else
		bg_h_send_event(c, "whoami", extra);
	json_decref(extra);
	return BG_CODE_COUNT;
}

/* Anonymous clients may not read "readonly-" channels. */
static enum bg_code
readonly_needs_user(const struct bg_hook_args *a)
{
	return bg_h_user(a->c) != NULL ? BG_CODE_COUNT : BG_CODE_FORBIDDEN;
}

int
bg_example_register(char *err, size_t errlen)
{
	static const struct bg_handler handlers[] = {
		{ BG_ON_EVENT, "whoami", NULL, whoami },
		{ BG_ON_SUBSCRIBE, NULL, "^readonly-", readonly_needs_user },
	};

	for (size_t i = 0; i < BG_ARRAY_LEN(handlers); i++)
		if (bg_handlers_register(&handlers[i], err, errlen) != BG_OK)
			return BG_ERR;
	return BG_OK;
}
