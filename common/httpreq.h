/*
 * httpreq.h - the head of one HTTP/1.x request (RFC 9112), parsed
 * strictly for the API listener: request line, the headers the server
 * acts on, and the framing rules that keep a keep-alive connection in
 * step (one Content-Length, no obs-fold, no space before the colon).
 *
 * Pure: no I/O, no threads. The API thread calls it; the unit tests and
 * the fuzzer drive it directly.
 */
#ifndef BG_HTTPREQ_H
#define BG_HTTPREQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest head (request line + headers + blank line) accepted. */
#define BG_HTTPREQ_HEAD_MAX 16384
/* Most header lines accepted. */
#define BG_HTTPREQ_HEADERS_MAX 100

enum bg_httpreq_method {
	BG_HTTPREQ_GET,
	BG_HTTPREQ_HEAD,
	BG_HTTPREQ_POST,
	BG_HTTPREQ_OTHER,        /* any other valid token */
};

struct bg_httpreq {
	enum bg_httpreq_method method;
	const char *path;        /* the target up to '?', NUL-terminated */
	const char *query;       /* what follows '?' (NUL-terminated), or
	                            NULL without one */
	int minor;               /* HTTP/1.minor: 0 or 1 */
	bool keep_alive;         /* from the version and Connection */
	bool has_length;         /* a Content-Length was given */
	uint64_t length;         /* its value; 0 without one */
	bool has_te;             /* a Transfer-Encoding was given */
	bool expect_continue;    /* Expect: 100-continue */
	const char *authorization; /* the value, NUL-terminated; or NULL */
};

/*
 * Parses head, len bytes ending with the blank line ("\r\n\r\n"); head
 * must be writable and have head[len] == '\0': the parser cuts it into
 * NUL-terminated pieces that r points into. BG_OK, or BG_ERR with a
 * message for a 400 in err ("bad request line", "conflicting
 * Content-Length headers", ...).
 */
int bg_httpreq_parse(char *head, size_t len, struct bg_httpreq *r,
		     char *err, size_t errlen);

#endif
