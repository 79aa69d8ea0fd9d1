/*
 * httpreq.c - a strict HTTP/1.x request-head parser (see httpreq.h). It
 * refuses what two parsers could read differently (request smuggling):
 * bare LF, obs-fold continuation lines, whitespace before a header's
 * colon, several or malformed Content-Length values.
 */
#include "common/httpreq.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "common/bg.h"

static int
fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err != NULL && errlen > 0) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return BG_ERR;
}

/* RFC 9110 §5.6.2 tchar. */
static bool
is_tchar(unsigned char c)
{
	return isalnum(c) || (c != 0 && strchr("!#$%&'*+-.^_`|~", c));
}

/* Cuts the next CRLF-terminated line; NULL at a bare LF or CR. */
static char *
next_line(char **p)
{
	char *s = *p, *e = strchr(s, '\n');

	if (e == NULL || e == s || e[-1] != '\r')
		return NULL;
	e[-1] = '\0';
	if (strchr(s, '\r') != NULL)
		return NULL;
	*p = e + 1;
	return s;
}

/* True when the comma-separated list value holds token (any case). */
static bool
has_token(const char *value, const char *token)
{
	size_t n = strlen(token);
	const char *p = value;

	while (*p) {
		size_t m;
		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		m = strcspn(p, ",");
		while (m > 0 && (p[m - 1] == ' ' || p[m - 1] == '\t'))
			m--;
		if (m == n && strncasecmp(p, token, n) == 0)
			return true;
		p += strcspn(p, ",");
	}
	return false;
}

static int
request_line(char *line, struct bg_httpreq *r, char *err, size_t errlen)
{
	char *sp1 = strchr(line, ' '), *sp2, *q;

	if (sp1 == NULL || sp1 == line)
		return fail(err, errlen, "bad request line");
	*sp1 = '\0';
	for (char *m = line; *m; m++)
		if (!is_tchar((unsigned char)*m))
			return fail(err, errlen, "bad request line");
	sp2 = strchr(sp1 + 1, ' ');
	if (sp2 == NULL || sp2 == sp1 + 1)
		return fail(err, errlen, "bad request line");
	*sp2 = '\0';
	if (strcmp(sp2 + 1, "HTTP/1.1") == 0)
		r->minor = 1;
	else if (strcmp(sp2 + 1, "HTTP/1.0") == 0)
		r->minor = 0;
	else
		return fail(err, errlen, "only HTTP/1.0 and HTTP/1.1 are "
			    "supported");
	if (sp1[1] != '/')
		return fail(err, errlen, "the request target must be a path");
	for (char *t = sp1 + 1; *t; t++)
		if ((unsigned char)*t <= ' ' || (unsigned char)*t >= 0x7f)
			return fail(err, errlen, "bad request target");
	q = strchr(sp1 + 1, '?');
	r->query = NULL;
	if (q != NULL) {
		*q = '\0';
		r->query = q + 1;
	}
	r->path = sp1 + 1;
	if (strcmp(line, "GET") == 0)
		r->method = BG_HTTPREQ_GET;
	else if (strcmp(line, "HEAD") == 0)
		r->method = BG_HTTPREQ_HEAD;
	else if (strcmp(line, "POST") == 0)
		r->method = BG_HTTPREQ_POST;
	else
		r->method = BG_HTTPREQ_OTHER;
	return BG_OK;
}

static int
content_length(const char *v, struct bg_httpreq *r, char *err,
	       size_t errlen)
{
	uint64_t n = 0;
	size_t digits = strspn(v, "0123456789");

	if (digits == 0 || v[digits] != '\0' || digits > 18)
		return fail(err, errlen, "bad Content-Length");
	for (size_t i = 0; i < digits; i++)
		n = n * 10 + (uint64_t)(v[i] - '0');
	if (r->has_length && r->length != n)
		return fail(err, errlen, "conflicting Content-Length headers");
	r->has_length = true;
	r->length = n;
	return BG_OK;
}

static int
header(char *line, struct bg_httpreq *r, bool *close, bool *keep,
       char *err, size_t errlen)
{
	char *colon = strchr(line, ':'), *v, *e;

	if (line[0] == ' ' || line[0] == '\t')
		return fail(err, errlen, "folded header lines are not "
			    "supported");
	if (colon == NULL || colon == line)
		return fail(err, errlen, "bad header line");
	for (char *n = line; n < colon; n++)
		if (!is_tchar((unsigned char)*n))
			return fail(err, errlen, "bad header name");
	*colon = '\0';
	v = colon + 1;
	while (*v == ' ' || *v == '\t')
		v++;
	e = v + strlen(v);
	while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
		*--e = '\0';
	for (char *c = v; *c; c++)
		if (((unsigned char)*c < ' ' && *c != '\t') ||
		    (unsigned char)*c == 0x7f)
			return fail(err, errlen, "bad header value");
	if (strcasecmp(line, "Content-Length") == 0)
		return content_length(v, r, err, errlen);
	if (strcasecmp(line, "Transfer-Encoding") == 0)
		r->has_te = true;
	else if (strcasecmp(line, "Connection") == 0) {
		*close |= has_token(v, "close");
		*keep |= has_token(v, "keep-alive");
	} else if (strcasecmp(line, "Expect") == 0)
		r->expect_continue = strcasecmp(v, "100-continue") == 0;
	else if (strcasecmp(line, "Authorization") == 0) {
		if (r->authorization != NULL)
			return fail(err, errlen, "several Authorization "
				    "headers");
		r->authorization = v;
	}
	return BG_OK;
}

int
bg_httpreq_parse(char *head, size_t len, struct bg_httpreq *r, char *err,
		 size_t errlen)
{
	char *p = head, *line;
	bool close = false, keep = false;
	int n = 0;

	memset(r, 0, sizeof(*r));
	if (len < 4 || head[len] != '\0' || strlen(head) != len ||
	    strcmp(head + len - 4, "\r\n\r\n") != 0)
		return fail(err, errlen, "bad request head");
	line = next_line(&p);
	if (line == NULL || request_line(line, r, err, errlen) != BG_OK)
		return line == NULL ? fail(err, errlen, "bad request line") :
		       BG_ERR;
	for (;;) {
		line = next_line(&p);
		if (line == NULL)
			return fail(err, errlen, "lines must end with CRLF");
		if (line[0] == '\0')
			break;
		if (++n > BG_HTTPREQ_HEADERS_MAX)
			return fail(err, errlen, "more than %d header lines",
				    BG_HTTPREQ_HEADERS_MAX);
		if (header(line, r, &close, &keep, err, errlen) != BG_OK)
			return BG_ERR;
	}
	r->keep_alive = r->minor == 1 ? !close : keep && !close;
	return BG_OK;
}
