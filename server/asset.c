/*
 * asset.c - serves the browser client linked into the binary (asset.h).
 * bg_asset_init runs on the main thread before the workers start; after
 * it the table is read-only and the workers serve from it concurrently.
 *
 * Caching (PROTOCOL.md §1): the unversioned URLs say no-cache, so a
 * browser revalidates with If-None-Match and gets a body-less 304 until
 * the server is upgraded; /bagou.<BG_VERSION>.js never changes for a
 * given version, so it is immutable for a year. The gzip copy is a
 * different representation, so it has its own strong ETag ("...-gz").
 */
#include "server/asset.h"

#include <libwebsockets.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#include "common/bg.h"

/* Linked in by server/bagou_js.S. */
extern const char bg_js_min_start[], bg_js_min_end[];
extern const char bg_js_map_start[], bg_js_map_end[];
extern const char bg_js_src_start[], bg_js_src_end[];

#define JS_TYPE "application/javascript; charset=utf-8"
#define MAP_TYPE "application/json; charset=utf-8"
#define REVALIDATE "no-cache"
#define IMMUTABLE "public, max-age=31536000, immutable"

struct bg_asset {
	const char *path;	/* the URL path; init only (versioned one) */
	const char *type;
	const char *cache;	/* the Cache-Control value */
	const char *body;
	size_t len;
	unsigned char *gz;	/* the gzip copy, NULL if not smaller */
	size_t gz_len;
	char etag[40];		/* "<32 hex>", quotes included */
	char gz_etag[44];	/* "<32 hex>-gz" */
};

static char versioned_path[64];

static struct bg_asset assets[] = {
	{ .path = "/bagou.js", .type = JS_TYPE, .cache = REVALIDATE },
	{ .path = versioned_path, .type = JS_TYPE, .cache = IMMUTABLE },
	{ .path = "/bagou.js.map", .type = MAP_TYPE, .cache = REVALIDATE },
	{ .path = "/bagou.src.js", .type = JS_TYPE, .cache = REVALIDATE },
};

#define N_ASSETS (sizeof(assets) / sizeof(assets[0]))

static bool ready;		/* set by bg_asset_init, main thread */

/* The gzip stream (RFC 1952, mtime 0) of len bytes, or NULL. */
static unsigned char *
gzip_bytes(const char *src, size_t len, size_t *out_len)
{
	z_stream z;
	unsigned char *out;
	uLong cap;

	memset(&z, 0, sizeof(z));
	if (deflateInit2(&z, Z_BEST_COMPRESSION, Z_DEFLATED, 15 + 16, 9,
			 Z_DEFAULT_STRATEGY) != Z_OK)
		return NULL;
	cap = deflateBound(&z, (uLong)len);
	out = malloc(cap);
	if (out == NULL) {
		deflateEnd(&z);
		return NULL;
	}
	z.next_in = (Bytef *)(uintptr_t)src;
	z.avail_in = (uInt)len;
	z.next_out = out;
	z.avail_out = (uInt)cap;
	if (deflate(&z, Z_FINISH) != Z_STREAM_END) {
		deflateEnd(&z);
		free(out);
		return NULL;
	}
	*out_len = z.total_out;
	deflateEnd(&z);
	return out;
}

/* A strong ETag: the first 128 bits of the SHA-256 of the bytes. */
static bool
make_etag(const char *body, size_t len, char *etag, char *gz_etag)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	char hex[33];

	if (!EVP_Digest(body, len, md, &mdlen, EVP_sha256(), NULL) ||
	    mdlen < 16)
		return false;
	for (int i = 0; i < 16; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	snprintf(etag, 40, "\"%s\"", hex);
	snprintf(gz_etag, 44, "\"%s-gz\"", hex);
	return true;
}

int
bg_asset_init(char *err, size_t errlen)
{
	const char *body[] = { bg_js_min_start, bg_js_min_start,
			       bg_js_map_start, bg_js_src_start };
	const char *end[] = { bg_js_min_end, bg_js_min_end, bg_js_map_end,
			      bg_js_src_end };

	snprintf(versioned_path, sizeof(versioned_path), "/bagou.%s.js",
		 BG_VERSION);
	for (size_t i = 0; i < N_ASSETS; i++) {
		struct bg_asset *a = &assets[i];

		a->body = body[i];
		a->len = (size_t)(end[i] - body[i]);
		if (!make_etag(a->body, a->len, a->etag, a->gz_etag)) {
			snprintf(err, errlen, "SHA-256 of %s failed", a->path);
			bg_asset_free();
			return BG_ERR;
		}
		a->gz = gzip_bytes(a->body, a->len, &a->gz_len);
		if (a->gz == NULL) {
			snprintf(err, errlen, "gzip of %s failed", a->path);
			bg_asset_free();
			return BG_ERR;
		}
		if (a->gz_len >= a->len) {
			free(a->gz);
			a->gz = NULL;
		}
	}
	ready = true;
	return BG_OK;
}

void
bg_asset_free(void)
{
	ready = false;
	for (size_t i = 0; i < N_ASSETS; i++) {
		free(assets[i].gz);
		assets[i].gz = NULL;
	}
}

const struct bg_asset *
bg_asset_find(const char *uri)
{
	if (!ready || uri == NULL)
		return NULL;
	for (size_t i = 0; i < N_ASSETS; i++)
		if (strcmp(uri, assets[i].path) == 0)
			return &assets[i];
	return NULL;
}

/* True when a q parameter value is zero: 0, 0., 0.0, 0.00, 0.000. */
static bool
q_is_zero(const char *v, size_t n)
{
	if (n == 0 || v[0] != '0')
		return false;
	if (n == 1)
		return true;
	if (v[1] != '.' || n > 5)
		return false;
	return strspn(v + 2, "0") >= n - 2;
}

/* The q of one Accept-Encoding element's parameters (p .. p+n): false
 * when it says q=0, true otherwise (no q means 1). */
static bool
q_positive(const char *p, size_t n)
{
	const char *e = p + n;

	while (p < e) {
		size_t k;

		while (p < e && (*p == ';' || *p == ' ' || *p == '\t'))
			p++;
		k = 0;
		while (p + k < e && p[k] != ';')
			k++;
		if (k >= 2 && (p[0] == 'q' || p[0] == 'Q') && p[1] == '=') {
			size_t m = k - 2;

			while (m > 0 && (p[2 + m - 1] == ' ' ||
					 p[2 + m - 1] == '\t'))
				m--;
			return !q_is_zero(p + 2, m);
		}
		p += k;
	}
	return true;
}

bool
bg_asset_accepts_gzip(const char *ae)
{
	int gzip = -1, star = -1;	/* -1 not named, 0 refused, 1 ok */
	const char *p = ae;

	if (p == NULL)
		return false;
	while (*p) {
		size_t n, t;

		while (*p == ',' || *p == ' ' || *p == '\t')
			p++;
		n = strcspn(p, ",");
		t = strcspn(p, ";, \t");
		if (t > n)
			t = n;
		if ((t == 4 && strncasecmp(p, "gzip", 4) == 0) ||
		    (t == 6 && strncasecmp(p, "x-gzip", 6) == 0)) {
			if (gzip != 1)
				gzip = q_positive(p + t, n - t);
		} else if (t == 1 && *p == '*') {
			star = q_positive(p + t, n - t);
		}
		p += n;
	}
	return gzip >= 0 ? gzip == 1 : star == 1;
}

bool
bg_asset_etag_matches(const char *inm, const char *etag)
{
	size_t elen = strlen(etag);
	const char *p = inm;

	if (p == NULL)
		return false;
	while (*p) {
		const char *q;

		while (*p == ',' || *p == ' ' || *p == '\t')
			p++;
		if (*p == '*')
			return true;
		if (p[0] == 'W' && p[1] == '/')
			p += 2;
		if (*p != '"') {
			/* Not an entity tag: skip to the next element. */
			p += strcspn(p, ",");
			continue;
		}
		q = strchr(p + 1, '"');
		if (q == NULL)
			return false;
		if ((size_t)(q + 1 - p) == elen && memcmp(p, etag, elen) == 0)
			return true;
		p = q + 1;
	}
	return false;
}

/* The request header t into buf; false when absent or too long. */
static bool
header(struct lws *wsi, enum lws_token_indexes t, char *buf, size_t size)
{
	int n = lws_hdr_total_length(wsi, t);

	if (n <= 0 || (size_t)n >= size)
		return false;
	return lws_hdr_copy(wsi, buf, (int)size, t) > 0;
}

static int
add(struct lws *wsi, enum lws_token_indexes t, const char *v,
    unsigned char **p, unsigned char *end)
{
	return lws_add_http_header_by_token(wsi, t, (const unsigned char *)v,
					    (int)strlen(v), p, end);
}

int
bg_asset_serve(struct lws *wsi, const struct bg_asset *a)
{
	unsigned char hdr[LWS_PRE + 1024], *start = hdr + LWS_PRE, *p = start;
	unsigned char *end = hdr + sizeof(hdr) - 1, *b;
	char ae[512], inm[1024];
	bool head = lws_hdr_total_length(wsi, WSI_TOKEN_HEAD_URI) > 0;
	bool gz = a->gz != NULL &&
		  header(wsi, WSI_TOKEN_HTTP_ACCEPT_ENCODING, ae, sizeof(ae)) &&
		  bg_asset_accepts_gzip(ae);
	bool fresh = header(wsi, WSI_TOKEN_HTTP_IF_NONE_MATCH, inm,
			    sizeof(inm));
	const char *body;
	size_t len;
	int n;

	/* A 304 names the representation the client holds (the one its
	 * Accept-Encoding selects if it holds both): a cache merges the
	 * 304's headers into what it stored. */
	if (fresh && !bg_asset_etag_matches(inm, gz ? a->gz_etag : a->etag)) {
		if (gz && bg_asset_etag_matches(inm, a->etag))
			gz = false;
		else if (!gz && a->gz != NULL &&
			 bg_asset_etag_matches(inm, a->gz_etag))
			gz = true;
		else
			fresh = false;
	}
	body = gz ? (const char *)a->gz : a->body;
	len = gz ? a->gz_len : a->len;
	/* 304: the validators and caching headers a 200 would carry, a
	 * Content-Length equal to its body's (RFC 9110 8.6), no body. */
	if (lws_add_http_common_headers(wsi, fresh ? 304 : 200, a->type, len,
					&p, end) ||
	    add(wsi, WSI_TOKEN_HTTP_ETAG, gz ? a->gz_etag : a->etag, &p,
		end) ||
	    add(wsi, WSI_TOKEN_HTTP_CACHE_CONTROL, a->cache, &p, end) ||
	    (a->gz != NULL &&
	     add(wsi, WSI_TOKEN_HTTP_VARY, "Accept-Encoding", &p, end)) ||
	    (gz && !fresh &&
	     add(wsi, WSI_TOKEN_HTTP_CONTENT_ENCODING, "gzip", &p, end)) ||
	    lws_finalize_write_http_header(wsi, start, &p, end))
		return -1;
	if (!head && !fresh) {
		/* lws may write framing before the payload: a private copy,
		 * not the shared read-only bytes. */
		b = malloc(LWS_PRE + len);
		if (b == NULL)
			return -1;
		memcpy(b + LWS_PRE, body, len);
		n = lws_write(wsi, b + LWS_PRE, len, LWS_WRITE_HTTP_FINAL);
		free(b);
		if (n < 0)
			return -1;
	}
	return lws_http_transaction_completed(wsi) ? -1 : 0;
}
