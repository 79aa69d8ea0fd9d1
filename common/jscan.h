/*
 * jscan.h - a strict JSON scanner for the broadcast hot path. Pure: no
 * allocation, no I/O, no threads.
 *
 * It answers one question about a text: is it certainly a JSON object
 * that jansson (json_loadb with JSON_REJECT_DUPLICATES, no flags
 * allowing more) accepts, with the same meaning? Then it hands back the
 * top-level members as spans of the text, so a broadcast is built from
 * them without a parse tree. Anything it cannot vouch for cheaply (an
 * error, a \u0000 or surrogate escape, an escaped key, a number that
 * could overflow, an object of more than BG_JSCAN_MAX_KEYS members,
 * nesting deeper than BG_JSCAN_MAX_DEPTH) is BG_JSCAN_SLOW: the caller
 * takes jansson's path, which decides and words the error. So the fast
 * path never accepts what the slow one refuses.
 */
#ifndef BG_JSCAN_H
#define BG_JSCAN_H

#include <stdbool.h>
#include <stddef.h>

#define BG_JSCAN_MAX_KEYS  24
#define BG_JSCAN_MAX_DEPTH 48

enum bg_jscan_rc {
	BG_JSCAN_OK,
	BG_JSCAN_SLOW,     /* not decided here: parse it with jansson */
};

/* The kind of a value, from its first byte. */
enum bg_jscan_type {
	BG_JSCAN_OBJECT = '{',
	BG_JSCAN_ARRAY = '[',
	BG_JSCAN_STRING = '"',
	BG_JSCAN_NUMBER = '0',
	BG_JSCAN_TRUE = 't',
	BG_JSCAN_FALSE = 'f',
	BG_JSCAN_NULL = 'n',
};

/* A top-level member. key: the name's bytes without quotes (never
 * escaped). val: the value's text; for a string, with its quotes.
 * escaped: the string value has a backslash. */
struct bg_jscan_member {
	const char *key;
	size_t key_len;
	const char *val;
	size_t val_len;
	enum bg_jscan_type type;
	bool escaped;
};

/*
 * Scans text as one JSON object. BG_JSCAN_OK with its members in
 * out[0..*n) (at most BG_JSCAN_MAX_KEYS, no two with the same key), or
 * BG_JSCAN_SLOW.
 */
enum bg_jscan_rc bg_jscan_object(const char *text, size_t len,
				 struct bg_jscan_member *out, size_t *n);

/* The member called key, or NULL. */
const struct bg_jscan_member *bg_jscan_get(const struct bg_jscan_member *m,
					   size_t n, const char *key);

/*
 * Copies a value scanned by bg_jscan_object into out without the
 * whitespace outside its strings (out has room for len bytes; NULL:
 * only count). Returns the bytes written.
 */
size_t bg_jscan_compact(const char *val, size_t len, char *out);

/*
 * For an array value scanned by bg_jscan_object: calls fn on each
 * element's text in order; stops and returns false when fn does.
 */
bool bg_jscan_each(const char *val, size_t len,
		   bool (*fn)(void *arg, const char *elem, size_t elen,
			      enum bg_jscan_type type, bool escaped),
		   void *arg);

#endif
