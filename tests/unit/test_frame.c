/*
 * test_frame.c - unit tests of common/frame.c: the exact bytes of the
 * RFC 6455 §5.2 header at every length boundary, and the layout of a
 * frame built by bg_frame_text (headroom, header, payload).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/frame.h"

#include <libwebsockets.h>
#include <stdlib.h>
#include <string.h>

/* Header bytes for len, built independently of frame.c (RFC 6455 §5.2):
 * FIN|text, then a 7-bit length, or 126 and 16 bits, or 127 and 64 bits,
 * big-endian, mask bit clear. */
static size_t
rfc_header(uint8_t out[BG_FRAME_HDR_MAX], uint64_t len)
{
	out[0] = 0x80 | 0x1;
	if (len <= 125) {
		out[1] = (uint8_t)len;
		return 2;
	}
	if (len <= 65535) {
		out[1] = 126;
		out[2] = (uint8_t)(len / 256);
		out[3] = (uint8_t)(len % 256);
		return 4;
	}
	out[1] = 127;
	for (int i = 9; i >= 2; i--) {
		out[i] = (uint8_t)(len % 256);
		len /= 256;
	}
	return 10;
}

static void
expect_header(uint64_t len, const uint8_t *want, size_t want_len)
{
	uint8_t hdr[BG_FRAME_HDR_MAX + 4];

	memset(hdr, 0xee, sizeof(hdr));
	assert_int_equal(bg_frame_header(hdr, len), want_len);
	assert_memory_equal(hdr, want, want_len);
	/* Nothing written past the header. */
	for (size_t i = want_len; i < sizeof(hdr); i++)
		assert_int_equal(hdr[i], 0xee);
}

static void
test_header_7bit(void **state)
{
	expect_header(0, (const uint8_t[]){ 0x81, 0x00 }, 2);
	expect_header(1, (const uint8_t[]){ 0x81, 0x01 }, 2);
	expect_header(125, (const uint8_t[]){ 0x81, 0x7d }, 2);
}

static void
test_header_16bit(void **state)
{
	expect_header(126, (const uint8_t[]){ 0x81, 0x7e, 0x00, 0x7e }, 4);
	expect_header(127, (const uint8_t[]){ 0x81, 0x7e, 0x00, 0x7f }, 4);
	expect_header(256, (const uint8_t[]){ 0x81, 0x7e, 0x01, 0x00 }, 4);
	expect_header(65535, (const uint8_t[]){ 0x81, 0x7e, 0xff, 0xff }, 4);
}

static void
test_header_64bit(void **state)
{
	expect_header(65536, (const uint8_t[]){ 0x81, 0x7f, 0, 0, 0, 0,
						0, 0x01, 0x00, 0x00 }, 10);
	expect_header((1ull << 32) + 1,
		      (const uint8_t[]){ 0x81, 0x7f, 0, 0, 0, 0x01, 0, 0, 0,
					 0x01 }, 10);
	expect_header(0x0102030405060708ull,
		      (const uint8_t[]){ 0x81, 0x7f, 0x01, 0x02, 0x03, 0x04,
					 0x05, 0x06, 0x07, 0x08 }, 10);
	/* RFC 6455: the most significant bit of the 64-bit length must be
	 * 0; the largest legal length. */
	expect_header(0x7fffffffffffffffull,
		      (const uint8_t[]){ 0x81, 0x7f, 0x7f, 0xff, 0xff, 0xff,
					 0xff, 0xff, 0xff, 0xff }, 10);
}

/* Every length around each boundary against the independent encoder. */
static void
test_header_sweep(void **state)
{
	static const uint64_t centers[] = { 0, 125, 126, 65535, 65536,
					    1ull << 32, 1ull << 40 };

	for (size_t c = 0; c < sizeof(centers) / sizeof(centers[0]); c++) {
		for (int d = -3; d <= 3; d++) {
			uint8_t want[BG_FRAME_HDR_MAX];
			uint64_t len = centers[c] + (uint64_t)(int64_t)d;
			size_t n;

			if (d < 0 && centers[c] < (uint64_t)-d)
				continue;
			n = rfc_header(want, len);
			expect_header(len, want, n);
			/* Never masked: bit 7 of byte 1 is clear. */
			assert_int_equal(want[1] & 0x80, 0);
		}
	}
}

/* Builds a frame for len bytes of a pattern and checks every byte. */
static void
check_text(size_t len)
{
	uint8_t *payload = malloc(len ? len : 1);
	uint8_t want[BG_FRAME_HDR_MAX], *frame = NULL, *block;
	size_t frame_len = 0, hlen;

	assert_non_null(payload);
	for (size_t i = 0; i < len; i++)
		payload[i] = (uint8_t)(i * 7 + 3);
	hlen = rfc_header(want, len);
	block = bg_frame_text(payload, len, &frame, &frame_len);
	assert_non_null(block);
	/* Headroom for lws before the frame, then header, then payload. */
	assert_ptr_equal(frame, block + BG_FRAME_PRE);
	assert_int_equal(frame_len, hlen + len);
	assert_memory_equal(frame, want, hlen);
	if (len > 0)
		assert_memory_equal(frame + hlen, payload, len);
	/* The whole block is addressable (ASan): headroom is writable. */
	memset(block, 0, BG_FRAME_PRE);
	free(block);
	free(payload);
}

static void
test_text_layout(void **state)
{
	static const size_t lens[] = { 0, 1, 125, 126, 127, 65535, 65536,
				       70000 };

	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++)
		check_text(lens[i]);
}

static void
test_text_json(void **state)
{
	static const char msg[] = "{\"event\":\"connect\"}";
	uint8_t *frame, *block;
	size_t frame_len;

	block = bg_frame_text(msg, strlen(msg), &frame, &frame_len);
	assert_non_null(block);
	assert_int_equal(frame_len, 2 + strlen(msg));
	assert_int_equal(frame[0], 0x81);
	assert_int_equal(frame[1], strlen(msg));
	assert_memory_equal(frame + 2, msg, strlen(msg));
	free(block);
}

/* lws wants LWS_PRE bytes of headroom before what it writes. */
static void
test_headroom_constant(void **state)
{
	assert_true(BG_FRAME_PRE >= LWS_PRE);
	assert_int_equal(BG_FRAME_HDR_MAX, 10);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_header_7bit),
		cmocka_unit_test(test_header_16bit),
		cmocka_unit_test(test_header_64bit),
		cmocka_unit_test(test_header_sweep),
		cmocka_unit_test(test_text_layout),
		cmocka_unit_test(test_text_json),
		cmocka_unit_test(test_headroom_constant),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
