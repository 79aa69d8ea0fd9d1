/*
 * fuzz_httpreq.c - libFuzzer driver for the API listener's request-head
 * parser (common/httpreq.c): any bytes, as the head the listener cut at
 * its first blank line, must give BG_OK with a sane request (a path
 * without spaces, controls or '?'; header values without CR or LF) or
 * BG_ERR with a printable message for the 400 answer.
 */
#include "common/bg.h"
#include "common/httpreq.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

static void
check_text(const char *s)
{
	for (; *s; s++)
		CHECK(*s != '\r' && *s != '\n');
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct bg_httpreq r;
	char err[128], *head;

	if (size > BG_HTTPREQ_HEAD_MAX)
		return 0;
	head = malloc(size + 1);
	if (head == NULL)
		return 0;
	memcpy(head, data, size);
	head[size] = '\0';
	err[0] = '\0';
	if (bg_httpreq_parse(head, size, &r, err, sizeof(err)) == BG_OK) {
		CHECK(r.path != NULL && r.path[0] == '/');
		for (const char *p = r.path; *p; p++)
			CHECK(*p > ' ' && *p < 0x7f && *p != '?');
		CHECK(r.minor == 0 || r.minor == 1);
		CHECK(r.has_length || r.length == 0);
		if (r.authorization != NULL)
			check_text(r.authorization);
	} else {
		CHECK(err[0] != '\0');
		for (const char *p = err; *p; p++)
			CHECK(*p >= ' ' && *p < 0x7f);
	}
	free(head);
	return 0;
}
