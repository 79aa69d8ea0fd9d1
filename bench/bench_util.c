/*
 * bench_util.c - pure helpers of bagou-bench: the monotonic clock, a
 * xorshift random source (frame masks, keys), the latency histogram,
 * SHA-1 and base64 for the WebSocket handshake, and a scanner for the
 * fields of the flat JSON messages the bench exchanges.  No I/O; called
 * from the bench's single thread.
 */
#include <sys/socket.h>
#include <errno.h>
#include "bench.h"

#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static uint64_t rand_state = 0x9e3779b97f4a7c15ULL;

int64_t bg_bench_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * BG_BENCH_NS + ts.tv_nsec;
}

void bg_bench_seed(void)
{
	uint64_t s = 0;

	if (getrandom(&s, sizeof(s), 0) != (ssize_t)sizeof(s))
		s = (uint64_t)bg_bench_now() ^ ((uint64_t)getpid() << 32);
	rand_state = s ? s : 0x9e3779b97f4a7c15ULL;
}

/* xorshift64*: masks need not be secret, only unpredictable enough. */
uint64_t bg_bench_rand(void)
{
	rand_state ^= rand_state >> 12;
	rand_state ^= rand_state << 25;
	rand_state ^= rand_state >> 27;
	return rand_state * 0x2545f4914f6cdd1dULL;
}

static unsigned hist_index(uint64_t v)
{
	unsigned e;

	if (v < BG_HIST_SUB)
		return (unsigned)v;
	e = 63 - (unsigned)__builtin_clzll(v);
	return BG_HIST_SUB * (e - BG_HIST_BITS + 1) +
	       (unsigned)((v >> (e - BG_HIST_BITS)) - BG_HIST_SUB);
}

/* The middle of bucket i. */
static uint64_t hist_value(unsigned i)
{
	unsigned e, shift;
	uint64_t lo;

	if (i < BG_HIST_SUB)
		return i;
	e = i / BG_HIST_SUB + BG_HIST_BITS - 1;
	shift = e - BG_HIST_BITS;
	lo = (uint64_t)(i % BG_HIST_SUB + BG_HIST_SUB) << shift;
	return lo + ((1ULL << shift) >> 1);
}

void bg_hist_add(struct bg_hist *h, uint64_t v)
{
	h->bucket[hist_index(v)]++;
	h->count++;
	if (v > h->max)
		h->max = v;
}

uint64_t bg_hist_quantile(const struct bg_hist *h, double q)
{
	uint64_t rank, seen = 0;
	unsigned i;

	if (!h->count)
		return 0;
	rank = (uint64_t)(q * (double)h->count + 0.999999);
	if (rank < 1)
		rank = 1;
	for (i = 0; i < BG_HIST_BUCKETS; i++) {
		seen += h->bucket[i];
		if (seen >= rank) {
			uint64_t v = hist_value(i);

			return v < h->max ? v : h->max;
		}
	}
	return h->max;
}

static uint32_t rol(uint32_t x, unsigned n)
{
	return (x << n) | (x >> (32 - n));
}

static void sha1_block(uint32_t hs[5], const uint8_t *p)
{
	uint32_t w[80], a, b, c, d, e, f, k, t;
	unsigned i;

	for (i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
		       (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (i = 16; i < 80; i++)
		w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
	a = hs[0];
	b = hs[1];
	c = hs[2];
	d = hs[3];
	e = hs[4];
	for (i = 0; i < 80; i++) {
		if (i < 20) {
			f = (b & c) | (~b & d);
			k = 0x5a827999;
		} else if (i < 40) {
			f = b ^ c ^ d;
			k = 0x6ed9eba1;
		} else if (i < 60) {
			f = (b & c) | (b & d) | (c & d);
			k = 0x8f1bbcdc;
		} else {
			f = b ^ c ^ d;
			k = 0xca62c1d6;
		}
		t = rol(a, 5) + f + e + k + w[i];
		e = d;
		d = c;
		c = rol(b, 30);
		b = a;
		a = t;
	}
	hs[0] += a;
	hs[1] += b;
	hs[2] += c;
	hs[3] += d;
	hs[4] += e;
}

void bg_sha1(const void *data, size_t len, uint8_t out[20])
{
	uint32_t hs[5] = { 0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476,
			   0xc3d2e1f0 };
	const uint8_t *p = data;
	uint8_t tail[128];
	size_t rest, n, i;
	uint64_t bits = (uint64_t)len * 8;

	for (n = 0; n + 64 <= len; n += 64)
		sha1_block(hs, p + n);
	rest = len - n;
	memset(tail, 0, sizeof(tail));
	memcpy(tail, p + n, rest);
	tail[rest] = 0x80;
	n = rest + 1 + 8 <= 64 ? 64 : 128;
	for (i = 0; i < 8; i++)
		tail[n - 1 - i] = (uint8_t)(bits >> (8 * i));
	for (i = 0; i < n; i += 64)
		sha1_block(hs, tail + i);
	for (i = 0; i < 20; i++)
		out[i] = (uint8_t)(hs[i / 4] >> (24 - 8 * (i % 4)));
}

void bg_base64(const uint8_t *in, size_t len, char *out)
{
	static const char tab[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
		"0123456789+/";
	size_t i;

	for (i = 0; i + 2 < len; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 |
			     in[i + 2];

		*out++ = tab[v >> 18];
		*out++ = tab[(v >> 12) & 63];
		*out++ = tab[(v >> 6) & 63];
		*out++ = tab[v & 63];
	}
	if (i < len) {
		uint32_t v = (uint32_t)in[i] << 16;

		if (i + 1 < len)
			v |= (uint32_t)in[i + 1] << 8;
		*out++ = tab[v >> 18];
		*out++ = tab[(v >> 12) & 63];
		*out++ = i + 1 < len ? tab[(v >> 6) & 63] : '=';
		*out++ = '=';
	}
	*out = '\0';
}

static bool is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* The first byte of the value of qkey, or NULL. */
static const char *json_value(const char *p, size_t len, const char *qkey)
{
	const char *end = p + len, *s = p;
	size_t klen = strlen(qkey);

	while (s < end && (s = memmem(s, (size_t)(end - s), qkey, klen))) {
		const char *v = s + klen;

		while (v < end && is_ws(*v))
			v++;
		if (v < end && *v == ':') {
			v++;
			while (v < end && is_ws(*v))
				v++;
			return v < end ? v : NULL;
		}
		s += klen;
	}
	return NULL;
}

bool bg_json_int(const char *p, size_t len, const char *qkey, int64_t *v)
{
	const char *s = json_value(p, len, qkey), *end = p + len;
	bool neg = false;
	uint64_t n = 0;

	if (!s)
		return false;
	if (*s == '-') {
		neg = true;
		s++;
	}
	if (s >= end || *s < '0' || *s > '9')
		return false;
	while (s < end && *s >= '0' && *s <= '9')
		n = n * 10 + (uint64_t)(*s++ - '0');
	*v = neg ? -(int64_t)n : (int64_t)n;
	return true;
}

bool bg_json_str(const char *p, size_t len, const char *qkey,
		 const char **s, size_t *slen)
{
	const char *v = json_value(p, len, qkey), *end = p + len, *e;

	if (!v || *v != '"')
		return false;
	for (e = v + 1; e < end && *e != '"'; e++)
		if (*e == '\\')
			e++;
	if (e >= end)
		return false;
	*s = v + 1;
	*slen = (size_t)(e - v - 1);
	return true;
}

bool bg_json_true(const char *p, size_t len, const char *qkey)
{
	const char *v = json_value(p, len, qkey);

	return v && (size_t)(p + len - v) >= 4 && !memcmp(v, "true", 4);
}

int bg_send_pending(int fd, char *buf, size_t *len)
{
	ssize_t n;

	while (*len) {
		n = send(fd, buf, *len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return 0;
			return -1;
		}
		memmove(buf, buf + n, *len - (size_t)n);
		*len -= (size_t)n;
	}
	return 0;
}
