/*
 * fuzz_api.c - libFuzzer driver for POST /broadcast bodies (PROTOCOL.md
 * §1, §11: a broadcast, or a JSON array publishing a batch in order). The
 * body is parsed as the HTTP handler does (no "from"); an array's
 * elements each go through bg_proto_broadcast, the way a batch is
 * validated element by element. Every accepted message must be one the
 * workers can fan out; every refusal must carry a JSON-safe error text.
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

/* The largest batch a body may hold in this driver (the rest is not
 * parsed); enough to reach every per-element path. */
#define BATCH_MAX 64

static void
check_refusal(enum bg_code code, const char *err)
{
	json_t *text = json_string(err);

	CHECK(text != NULL);    /* valid UTF-8: it goes into a JSON body */
	json_decref(text);
	CHECK(err[0] != '\0');
	CHECK(code == BG_CODE_BAD_MESSAGE || code == BG_CODE_INVALID_CHANNEL ||
	      code == BG_CODE_INTERNAL);
}

static void
check_msg(struct bg_msg *m)
{
	json_t *body;

	CHECK(m->refs == 1);
	CHECK(m->n_names <= BG_MSG_MAX_TARGETS);
	CHECK(m->target == BG_MSG_ALL || m->n_names > 0);
	CHECK(m->n_frames >= 1);
	for (uint32_t i = 0; i < m->n_frames; i++) {
		const struct bg_msg_frame *f = &m->frames[i];
		uint8_t hdr[BG_FRAME_HDR_MAX];
		size_t plen = f->len - (f->data[1] < 126 ? 2 :
					f->data[1] == 126 ? 4 : 10);

		CHECK(f->data[0] == 0x81);
		CHECK(bg_frame_header(hdr, plen) + plen == f->len);
	}
	/* The body republished to the other nodes parses back to an
	 * object with the same event. */
	body = json_loadb(m->body, m->body_len, 0, NULL);
	CHECK(json_is_object(body));
	CHECK(json_is_string(json_object_get(body, "event")));
	json_decref(body);
	bg_msg_unref(m);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	enum bg_code code = BG_CODE_COUNT;
	char err[200];
	struct bg_msg *m;
	json_t *root;
	size_t i, n;

	root = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES,
			  NULL);
	if (!json_is_array(root)) {
		json_decref(root);
		err[0] = '\0';
		m = bg_proto_broadcast_text((const char *)data, size, NULL,
					    &code, err, sizeof(err));
		if (m == NULL)
			check_refusal(code, err);
		else
			check_msg(m);
		return 0;
	}
	n = json_array_size(root);
	for (i = 0; i < n && i < BATCH_MAX; i++) {
		err[0] = '\0';
		code = BG_CODE_COUNT;
		m = bg_proto_broadcast(json_array_get(root, i), NULL, &code,
				       err, sizeof(err));
		if (m == NULL)
			check_refusal(code, err);
		else
			check_msg(m);
	}
	json_decref(root);
	return 0;
}
