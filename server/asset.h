/*
 * asset.h - the browser client as served on the public port (PROTOCOL.md
 * §1): /bagou.js (js/dist/bagou.min.js, minified), its source map
 * /bagou.js.map, the readable source /bagou.src.js (js/bagou.js), and the
 * versioned, immutable /bagou.<BG_VERSION>.js. All are linked into the
 * binary (server/bagou_js.S); bg_asset_init builds, once at start, each
 * one's strong ETag and gzip copy, read-only afterwards, so any worker
 * serves them without locks.
 */
#ifndef BG_ASSET_H
#define BG_ASSET_H

#include <stdbool.h>
#include <stddef.h>

struct lws;
struct bg_asset;

/* Computes the ETags and gzip copies. Main thread, before the workers
 * start; BG_OK, or BG_ERR with err filled (out of memory, zlib). */
int bg_asset_init(char *err, size_t errlen);

/* Frees what bg_asset_init made; after the workers are joined. */
void bg_asset_free(void);

/* The asset served at uri (the path, no query), or NULL when none (or
 * before bg_asset_init). Any thread. */
const struct bg_asset *bg_asset_find(const char *uri);

/* Answers a GET or HEAD for a (worker thread, lws HTTP callback): 200
 * with ETag, Cache-Control and Vary: Accept-Encoding, gzip-encoded when
 * the request's Accept-Encoding allows it, or 304 without a body when
 * If-None-Match names its ETag. Returns what the lws callback returns. */
int bg_asset_serve(struct lws *wsi, const struct bg_asset *a);

/* True when an Accept-Encoding value accepts gzip: "gzip" or "x-gzip"
 * with a q above 0, or "*" with a q above 0 when gzip is not named.
 * NULL or "" accepts nothing but identity. Pure. */
bool bg_asset_accepts_gzip(const char *accept_encoding);

/* True when an If-None-Match value ("*" or a list of entity tags, weak
 * or strong) matches etag (quoted, as sent) by the weak comparison of
 * RFC 9110 13.1.2. Pure. */
bool bg_asset_etag_matches(const char *if_none_match, const char *etag);

#endif
