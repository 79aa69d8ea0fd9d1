/*
 * fuzz_proto.c - libFuzzer driver for client messages: parses the input
 * as one WebSocket text message (bg_proto_parse_request) and, like
 * server/conn.c, answers it, checking the contracts of proto.h on the way.
 * A broken contract aborts, so the fuzzer reports it.
 */
#include "common/bg.h"
#include "common/proto.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

/* A reply must be one JSON object, with the length reported. */
static void
check_reply(char *s, size_t len)
{
	json_t *v;

	CHECK(s != NULL);
	CHECK(strlen(s) == len);
	v = json_loads(s, JSON_REJECT_DUPLICATES, NULL);
	CHECK(json_is_object(v));
	CHECK(json_is_string(json_object_get(v, "event")));
	json_decref(v);
	free(s);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct bg_request req;
	char err[128], *reply;
	size_t len = 0;
	int rc;

	err[0] = '\0';
	rc = bg_proto_parse_request((const char *)data, size, &req, err,
				    sizeof(err));
	if (rc == BG_OK) {
		json_t *ch;

		CHECK(req.root != NULL && req.data != NULL);
		CHECK(req.event != NULL && req.event[0] != '\0');
		CHECK(req.callback_id == NULL ||
		      (strlen(req.callback_id) >= 1 &&
		       strlen(req.callback_id) <= BG_CALLBACK_MAX));
		ch = json_is_object(req.data) ?
		     json_object_get(req.data, "channel") : NULL;
		if (json_is_string(ch))
			(void)bg_proto_channel_valid(json_string_value(ch),
						     json_string_length(ch));
		if (req.callback_id != NULL) {
			reply = bg_proto_callback_ok(req.callback_id,
				json_is_object(req.data) ? req.data : NULL,
				&len);
			check_reply(reply, len);
		}
		reply = bg_proto_failure(req.callback_id, req.event,
					 BG_CODE_UNKNOWN_EVENT, "unknown",
					 &len);
	} else {
		CHECK(rc == BG_ERR);
		CHECK(err[0] != '\0');
		/* What the server answers to a message it could not use. */
		reply = bg_proto_failure(req.callback_id, req.event,
					 BG_CODE_BAD_MESSAGE, err, &len);
	}
	check_reply(reply, len);
	json_decref(req.root);
	return 0;
}
