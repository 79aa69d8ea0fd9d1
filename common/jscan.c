/*
 * jscan.c - strict JSON scanning without a tree (jscan.h). Recursive
 * descent over the bytes, bounded in depth; every doubt is SLOW.
 *
 * What jansson refuses and this file must never accept: bad syntax,
 * control bytes in strings, invalid UTF-8 (overlong forms, surrogates,
 * beyond U+10FFFF), \u0000 (without JSON_ALLOW_NUL), lone surrogate
 * escapes, integers outside int64, reals that overflow a double,
 * duplicate keys at any depth, trailing bytes. The cheap checks here are
 * all stricter than that.
 */
#include "common/jscan.h"

#include <string.h>

/* Longest number taken here; its exponent at most MAX_EXP. Longer
 * integers may not fit an int64, larger reals may overflow: SLOW. */
#define MAX_INT_DIGITS 18
#define MAX_REAL_LEN 32
#define MAX_EXP 250

struct scan {
	const unsigned char *p, *end;
};

static void
skip_ws(struct scan *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' ||
				 *s->p == '\r' || *s->p == '\t'))
		s->p++;
}

static bool
cont(const unsigned char *p, const unsigned char *end, unsigned char lo,
     unsigned char hi)
{
	return p < end && *p >= lo && *p <= hi;
}

/* The length of the UTF-8 sequence at p (*p >= 0x80), 0 when invalid. */
static size_t
utf8_len(const unsigned char *p, const unsigned char *end)
{
	unsigned char c = p[0];

	if (c >= 0xc2 && c <= 0xdf)
		return cont(p + 1, end, 0x80, 0xbf) ? 2 : 0;
	if (c == 0xe0)
		return cont(p + 1, end, 0xa0, 0xbf) &&
		       cont(p + 2, end, 0x80, 0xbf) ? 3 : 0;
	if ((c >= 0xe1 && c <= 0xec) || c == 0xee || c == 0xef)
		return cont(p + 1, end, 0x80, 0xbf) &&
		       cont(p + 2, end, 0x80, 0xbf) ? 3 : 0;
	if (c == 0xed) /* no surrogates */
		return cont(p + 1, end, 0x80, 0x9f) &&
		       cont(p + 2, end, 0x80, 0xbf) ? 3 : 0;
	if (c == 0xf0)
		return cont(p + 1, end, 0x90, 0xbf) &&
		       cont(p + 2, end, 0x80, 0xbf) &&
		       cont(p + 3, end, 0x80, 0xbf) ? 4 : 0;
	if (c >= 0xf1 && c <= 0xf3)
		return cont(p + 1, end, 0x80, 0xbf) &&
		       cont(p + 2, end, 0x80, 0xbf) &&
		       cont(p + 3, end, 0x80, 0xbf) ? 4 : 0;
	if (c == 0xf4)
		return cont(p + 1, end, 0x80, 0x8f) &&
		       cont(p + 2, end, 0x80, 0xbf) &&
		       cont(p + 3, end, 0x80, 0xbf) ? 4 : 0;
	return 0;
}

static int
hex(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* A string at s->p (the opening quote). */
static bool
string(struct scan *s, bool *escaped)
{
	const unsigned char *p = s->p + 1, *end = s->end;

	*escaped = false;
	while (p < end) {
		unsigned char c = *p;
		size_t n;

		if (c == '"') {
			s->p = p + 1;
			return true;
		}
		if (c < 0x20)
			return false;
		if (c == '\\') {
			*escaped = true;
			if (p + 1 >= end)
				return false;
			c = p[1];
			if (c == 'u') {
				unsigned v = 0;
				for (int i = 0; i < 4; i++) {
					int h = p + 2 + i < end ?
						hex(p[2 + i]) : -1;
					if (h < 0)
						return false;
					v = v << 4 | (unsigned)h;
				}
				/* \u0000 and surrogates: jansson's call. */
				if (v == 0 || (v >= 0xd800 && v <= 0xdfff))
					return false;
				p += 6;
				continue;
			}
			if (strchr("\"\\/bfnrt", c) == NULL || c == '\0')
				return false;
			p += 2;
			continue;
		}
		if (c < 0x80) {
			p++;
			continue;
		}
		if ((n = utf8_len(p, end)) == 0)
			return false;
		p += n;
	}
	return false;
}

static bool
digits(struct scan *s, size_t *n)
{
	const unsigned char *start = s->p;

	while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
		s->p++;
	*n = (size_t)(s->p - start);
	return *n > 0;
}

static bool
number(struct scan *s)
{
	const unsigned char *start = s->p;
	bool real = false;
	size_t n;

	if (*s->p == '-')
		s->p++;
	if (s->p < s->end && *s->p == '0') {
		s->p++;
		n = 1;
	} else if (!digits(s, &n)) {
		return false;
	}
	if (s->p < s->end && *s->p == '.') {
		s->p++;
		real = true;
		if (!digits(s, &n))
			return false;
	}
	if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
		const unsigned char *e;
		unsigned exp = 0;
		s->p++;
		real = true;
		if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
			s->p++;
		e = s->p;
		if (!digits(s, &n))
			return false;
		for (; e < s->p && exp <= MAX_EXP; e++)
			exp = exp * 10 + (unsigned)(*e - '0');
		if (exp > MAX_EXP)
			return false;
	}
	if (real)
		return s->p - start <= MAX_REAL_LEN;
	return (size_t)(s->p - start) - (*start == '-') <= MAX_INT_DIGITS;
}

static bool
literal(struct scan *s, const char *word, size_t len)
{
	if ((size_t)(s->end - s->p) < len || memcmp(s->p, word, len) != 0)
		return false;
	s->p += len;
	return true;
}

static bool value(struct scan *s, int depth, bool *escaped);

/* An object at s->p; its members go to out when out is not NULL. */
static bool
object(struct scan *s, int depth, struct bg_jscan_member *out, size_t *nout)
{
	struct { const unsigned char *p; size_t len; } keys[BG_JSCAN_MAX_KEYS];
	size_t n = 0;
	bool esc;

	s->p++;
	skip_ws(s);
	if (s->p < s->end && *s->p == '}') {
		s->p++;
		goto done;
	}
	for (;;) {
		const unsigned char *k, *v;

		if (s->p >= s->end || *s->p != '"' || n == BG_JSCAN_MAX_KEYS)
			return false;
		k = s->p + 1;
		if (!string(s, &esc) || esc)
			return false;
		keys[n].p = k;
		keys[n].len = (size_t)(s->p - 1 - k);
		for (size_t i = 0; i < n; i++)
			if (keys[i].len == keys[n].len &&
			    memcmp(keys[i].p, k, keys[n].len) == 0)
				return false;
		skip_ws(s);
		if (s->p >= s->end || *s->p != ':')
			return false;
		s->p++;
		skip_ws(s);
		v = s->p;
		if (!value(s, depth + 1, &esc))
			return false;
		if (out != NULL) {
			out[n] = (struct bg_jscan_member){
				.key = (const char *)k,
				.key_len = keys[n].len,
				.val = (const char *)v,
				.val_len = (size_t)(s->p - v),
				.type = *v == '-' || (*v >= '0' && *v <= '9') ?
					BG_JSCAN_NUMBER :
					(enum bg_jscan_type)*v,
				.escaped = esc,
			};
		}
		n++;
		skip_ws(s);
		if (s->p < s->end && *s->p == ',') {
			s->p++;
			skip_ws(s);
			continue;
		}
		if (s->p < s->end && *s->p == '}') {
			s->p++;
			break;
		}
		return false;
	}
done:
	if (nout != NULL)
		*nout = n;
	return true;
}

static bool
array(struct scan *s, int depth)
{
	bool esc;

	s->p++;
	skip_ws(s);
	if (s->p < s->end && *s->p == ']') {
		s->p++;
		return true;
	}
	for (;;) {
		if (!value(s, depth + 1, &esc))
			return false;
		skip_ws(s);
		if (s->p < s->end && *s->p == ',') {
			s->p++;
			skip_ws(s);
			continue;
		}
		if (s->p < s->end && *s->p == ']') {
			s->p++;
			return true;
		}
		return false;
	}
}

static bool
value(struct scan *s, int depth, bool *escaped)
{
	*escaped = false;
	if (s->p >= s->end || depth > BG_JSCAN_MAX_DEPTH)
		return false;
	switch (*s->p) {
	case '{':
		return object(s, depth, NULL, NULL);
	case '[':
		return array(s, depth);
	case '"':
		return string(s, escaped);
	case 't':
		return literal(s, "true", 4);
	case 'f':
		return literal(s, "false", 5);
	case 'n':
		return literal(s, "null", 4);
	default:
		if (*s->p == '-' || (*s->p >= '0' && *s->p <= '9'))
			return number(s);
		return false;
	}
}

enum bg_jscan_rc
bg_jscan_object(const char *text, size_t len, struct bg_jscan_member *out,
		size_t *n)
{
	struct scan s = { (const unsigned char *)text,
			  (const unsigned char *)text + len };

	*n = 0;
	skip_ws(&s);
	if (s.p >= s.end || *s.p != '{' || !object(&s, 0, out, n))
		return BG_JSCAN_SLOW;
	skip_ws(&s);
	return s.p == s.end ? BG_JSCAN_OK : BG_JSCAN_SLOW;
}

const struct bg_jscan_member *
bg_jscan_get(const struct bg_jscan_member *m, size_t n, const char *key)
{
	size_t len = strlen(key);

	for (size_t i = 0; i < n; i++)
		if (m[i].key_len == len && memcmp(m[i].key, key, len) == 0)
			return &m[i];
	return NULL;
}

size_t
bg_jscan_compact(const char *val, size_t len, char *out)
{
	size_t o = 0;
	bool in_str = false, esc = false;

	for (size_t i = 0; i < len; i++) {
		char c = val[i];
		if (in_str) {
			if (esc)
				esc = false;
			else if (c == '\\')
				esc = true;
			else if (c == '"')
				in_str = false;
		} else if (c == '"') {
			in_str = true;
		} else if (c == ' ' || c == '\n' || c == '\r' || c == '\t') {
			continue;
		}
		if (out != NULL)
			out[o] = c;
		o++;
	}
	return o;
}

bool
bg_jscan_each(const char *val, size_t len,
	      bool (*fn)(void *arg, const char *elem, size_t elen,
			 enum bg_jscan_type type, bool escaped),
	      void *arg)
{
	struct scan s = { (const unsigned char *)val,
			  (const unsigned char *)val + len };
	bool esc;

	if (len == 0 || *s.p != '[')
		return true;
	s.p++;
	skip_ws(&s);
	while (s.p < s.end && *s.p != ']') {
		const unsigned char *e = s.p;
		enum bg_jscan_type t = *e == '-' || (*e >= '0' && *e <= '9') ?
				       BG_JSCAN_NUMBER :
				       (enum bg_jscan_type)*e;
		if (!value(&s, 0, &esc))
			return false; /* not scanned by bg_jscan_object */
		if (!fn(arg, (const char *)e, (size_t)(s.p - e), t, esc))
			return false;
		skip_ws(&s);
		if (s.p < s.end && *s.p == ',') {
			s.p++;
			skip_ws(&s);
		}
	}
	return true;
}
