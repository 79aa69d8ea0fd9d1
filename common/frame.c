/*
 * frame.c - WebSocket frame building for the broadcast hot path. Pure.
 */
#include "common/frame.h"

#include <stdlib.h>
#include <string.h>

size_t
bg_frame_header(uint8_t hdr[BG_FRAME_HDR_MAX], uint64_t payload_len)
{
	hdr[0] = 0x81; /* FIN + text */
	if (payload_len < 126) {
		hdr[1] = (uint8_t)payload_len;
		return 2;
	}
	if (payload_len <= 0xffff) {
		hdr[1] = 126;
		hdr[2] = (uint8_t)(payload_len >> 8);
		hdr[3] = (uint8_t)payload_len;
		return 4;
	}
	hdr[1] = 127;
	for (int i = 0; i < 8; i++)
		hdr[2 + i] = (uint8_t)(payload_len >> (56 - 8 * i));
	return 10;
}

uint8_t *
bg_frame_text(const void *payload, size_t len, uint8_t **frame,
	      size_t *frame_len)
{
	uint8_t hdr[BG_FRAME_HDR_MAX];
	size_t hlen = bg_frame_header(hdr, len);
	uint8_t *block = malloc(BG_FRAME_PRE + hlen + len);

	if (block == NULL)
		return NULL;
	memcpy(block + BG_FRAME_PRE, hdr, hlen);
	memcpy(block + BG_FRAME_PRE + hlen, payload, len);
	*frame = block + BG_FRAME_PRE;
	*frame_len = hlen + len;
	return block;
}
