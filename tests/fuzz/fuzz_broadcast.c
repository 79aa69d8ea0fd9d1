/*
 * fuzz_broadcast.c - libFuzzer driver for broadcasts (PROTOCOL.md §4):
 * bg_proto_broadcast_text on the input, as POST /broadcast and the AMQP
 * bus do, then checks what it returns: a message with valid targets and
 * frames that are complete WebSocket text frames holding JSON objects, or
 * an error text that can be sent back as JSON. The first input byte's
 * parity decides whether a "from" is added (client publish); without
 * one, the broadcast built without a parse tree (common/jscan.c) must
 * equal the one jansson's path builds, or both must refuse.
 */
#include "common/bg.h"
#include "common/frame.h"
#include "common/msg.h"
#include "common/proto.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

/* The JSON object a frame carries (a new reference). */
static json_t *
frame_object(const struct bg_msg *m, uint32_t i)
{
	const struct bg_msg_frame *f = &m->frames[i];
	uint8_t hdr[BG_FRAME_HDR_MAX];
	size_t hlen, plen;
	json_t *v;

	CHECK(f->block != NULL && f->data == f->block + BG_FRAME_PRE);
	CHECK(f->len >= 2 && f->data[0] == 0x81);
	plen = f->len - (f->data[1] < 126 ? 2 : f->data[1] == 126 ? 4 : 10);
	hlen = bg_frame_header(hdr, plen);
	CHECK(hlen + plen == f->len && memcmp(hdr, f->data, hlen) == 0);
	v = json_loadb((const char *)f->data + hlen, plen,
		       JSON_REJECT_DUPLICATES, NULL);
	CHECK(json_is_object(v));
	return v;
}

/* A reply to explicit clients: the published object minus client,
 * exclude and auth; "event", when there, a non-empty string. */
static void
check_reply(const struct bg_msg *m)
{
	json_t *v = frame_object(m, 0), *ev = json_object_get(v, "event");

	CHECK(ev == NULL ||
	      (json_is_string(ev) && json_string_length(ev) > 0));
	CHECK(json_object_get(v, "client") == NULL);
	CHECK(json_object_get(v, "exclude") == NULL);
	CHECK(json_object_get(v, "auth") == NULL);
	json_decref(v);
}

static void
check_frame(const struct bg_msg *m, uint32_t i, const char *channel)
{
	const struct bg_msg_frame *f = &m->frames[i];
	uint8_t hdr[BG_FRAME_HDR_MAX];
	size_t hlen, plen;
	json_t *v, *c;

	CHECK(f->block != NULL && f->data == f->block + BG_FRAME_PRE);
	CHECK(f->len >= 2 && f->data[0] == 0x81);
	/* The header is the one for the payload length that follows. */
	plen = f->len - (f->data[1] < 126 ? 2 : f->data[1] == 126 ? 4 : 10);
	hlen = bg_frame_header(hdr, plen);
	CHECK(hlen + plen == f->len && memcmp(hdr, f->data, hlen) == 0);
	v = json_loadb((const char *)f->data + hlen, plen,
		       JSON_REJECT_DUPLICATES, NULL);
	CHECK(json_is_object(v));
	CHECK(json_is_string(json_object_get(v, "event")));
	CHECK(json_object_get(v, "data") != NULL);
	c = json_object_get(v, "channel");
	if (channel == NULL)
		CHECK(c == NULL);
	else
		CHECK(json_is_string(c) &&
		      strcmp(json_string_value(c), channel) == 0);
	json_decref(v);
}

/* What jansson's path (a parse tree) builds from the same text, or
 * NULL: the path without a tree (common/jscan.c) must agree. */
static struct bg_msg *
tree_path(const uint8_t *data, size_t size)
{
	json_t *root = json_loadb((const char *)data, size,
				  JSON_REJECT_DUPLICATES, NULL);
	enum bg_code code;
	char err[128];
	struct bg_msg *m;

	if (root == NULL)
		return NULL;
	m = bg_proto_broadcast(root, NULL, &code, err, sizeof(err));
	json_decref(root);
	return m;
}

static void
check_same(const struct bg_msg *a, const struct bg_msg *b)
{
	CHECK(a->target == b->target && a->n_names == b->n_names &&
	      a->n_frames == b->n_frames);
	CHECK((a->exclude == NULL) == (b->exclude == NULL));
	CHECK(a->exclude == NULL || strcmp(a->exclude, b->exclude) == 0);
	for (uint32_t i = 0; i < a->n_names; i++)
		CHECK(strcmp(a->names[i], b->names[i]) == 0);
	for (uint32_t i = 0; i < a->n_frames; i++) {
		json_t *x = frame_object(a, i), *y = frame_object(b, i);
		CHECK(json_equal(x, y));
		json_decref(x);
		json_decref(y);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *from = size > 0 && (data[0] & 1) ? "fz-0-1" : NULL;
	enum bg_code code = BG_CODE_COUNT;
	char err[128];
	struct bg_msg *m;

	err[0] = '\0';
	m = bg_proto_broadcast_text((const char *)data, size, from, &code,
				    err, sizeof(err));
	if (from == NULL) {
		struct bg_msg *t = tree_path(data, size);
		CHECK((m == NULL) == (t == NULL) || code == BG_CODE_INTERNAL);
		if (m != NULL && t != NULL)
			check_same(m, t);
		bg_msg_unref(t);
	}
	if (m == NULL) {
		json_t *text = json_string(err);

		/* err is sent back as JSON (POST /broadcast's 400 body):
		 * it must be valid UTF-8. */
		CHECK(text != NULL);
		json_decref(text);
		CHECK(err[0] != '\0');
		CHECK(code == BG_CODE_BAD_MESSAGE ||
		      code == BG_CODE_INVALID_CHANNEL ||
		      code == BG_CODE_INTERNAL);
		return 0;
	}
	CHECK(m->refs == 1);
	CHECK(m->n_names <= BG_MSG_MAX_TARGETS);
	CHECK(m->exclude == NULL ||
	      bg_proto_client_id_valid(m->exclude, strlen(m->exclude)));
	CHECK(m->body != NULL && strlen(m->body) == m->body_len);
	switch (m->target) {
	case BG_MSG_ALL:
		CHECK(m->n_names == 0 && m->n_frames == 1);
		check_frame(m, 0, NULL);
		break;
	case BG_MSG_CLIENTS:
		CHECK(m->n_names > 0 && m->n_frames == 1);
		for (uint32_t i = 0; i < m->n_names; i++)
			CHECK(bg_proto_client_id_valid(m->names[i],
						       strlen(m->names[i])));
		check_reply(m);
		break;
	case BG_MSG_CHANNELS:
		CHECK(m->n_names > 0 && m->n_frames == m->n_names);
		for (uint32_t i = 0; i < m->n_names; i++) {
			CHECK(bg_proto_channel_valid(m->names[i],
						     strlen(m->names[i])));
			for (uint32_t j = 0; j < i; j++)
				CHECK(strcmp(m->names[i], m->names[j]) != 0);
			check_frame(m, i, m->names[i]);
		}
		break;
	default:
		CHECK(0);
	}
	bg_msg_unref(m);
	return 0;
}
