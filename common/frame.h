/*
 * frame.h - server-to-client WebSocket frames (RFC 6455 §5.2): FIN, text
 * opcode, unmasked, 7/16/64-bit length. Pure; any thread.
 *
 * A frame is built once and written to many sockets as raw bytes, so it is
 * stored with BG_FRAME_PRE spare bytes before it (libwebsockets wants
 * LWS_PRE headroom before any buffer it writes; worker.c checks the size).
 */
#ifndef BG_FRAME_H
#define BG_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define BG_FRAME_PRE 32
#define BG_FRAME_HDR_MAX 10

/* Writes the header for a text frame of payload_len into hdr; returns its
 * length (2, 4 or 10). */
size_t bg_frame_header(uint8_t hdr[BG_FRAME_HDR_MAX], uint64_t payload_len);

/*
 * A heap frame: BG_FRAME_PRE bytes, header, payload. Returns the block to
 * free() later, and sets *frame and *frame_len to the frame inside it.
 * NULL on allocation failure.
 */
uint8_t *bg_frame_text(const void *payload, size_t len, uint8_t **frame,
		       size_t *frame_len);

#endif
