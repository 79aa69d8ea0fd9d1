/*
 * auth.h - who a connection is (PROTOCOL.md §6): HS256 JWT verification,
 * identities from forwarded replies, and the private-channel rule.
 *
 * Pure (libjwt, jansson; no I/O): worker threads call it, unit tests and
 * fuzzers drive it.
 */
#ifndef BG_AUTH_H
#define BG_AUTH_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest token accepted (bytes). */
#define BG_AUTH_TOKEN_MAX 8192
/* Latest expiry an identity keeps (9999-12-31T23:59:59Z); a token's later
 * "exp" is clamped to it. */
#define BG_AUTH_EXP_MAX INT64_C(253402300799)
/* Most private-channel patterns one identity may carry. */
#define BG_AUTH_MAX_CHANNELS 256

struct bg_identity {
	char *user;           /* "sub"; NULL while anonymous */
	char *info;           /* "info" as JSON text, or NULL */
	char **channels;      /* allowed private channels; "x*" = prefix */
	uint32_t n_channels;
	int64_t exp;          /* expiry, seconds since the epoch; 0 = none;
	                         at most BG_AUTH_EXP_MAX */
};

/*
 * Verifies an HS256 token against secret at time now (seconds since the
 * epoch) and fills id (cleared first). Any other algorithm, including
 * "none", a bad signature, a malformed token, a missing or non-string
 * "sub", an "exp" in the past or an "nbf" in the future is refused.
 * BG_OK, or BG_ERR with err set (a short reason, safe to show).
 */
int bg_auth_verify_jwt(const char *secret, const char *token, int64_t now,
		       struct bg_identity *id, char *err, size_t errlen);

/*
 * bg_auth_verify_jwt with secret, then, when previous is not empty and
 * the token's signature did not match secret, with previous: a rotation
 * accepts tokens signed with the old and the new secret side by side.
 * The error is the one of the secret that matched the signature, else
 * secret's.
 */
int bg_auth_verify_jwt_rotating(const char *secret, const char *previous,
				const char *token, int64_t now,
				struct bg_identity *id, char *err,
				size_t errlen);

/*
 * Reads an identity from a forwarded reply's "auth" object
 * {"user":ID,"info":{..},"channels":[..]} (PROTOCOL.md §5). BG_OK, or
 * BG_ERR with err set.
 */
int bg_auth_from_json(json_t *auth, struct bg_identity *id, char *err,
		      size_t errlen);

/* True when id may use the private channel: an exact name in its
 * channels, or a pattern ending in '*' that prefixes it. */
bool bg_auth_channel_allowed(const struct bg_identity *id,
			     const char *channel);

/* Frees what id holds and zeroes it. */
void bg_identity_clear(struct bg_identity *id);

/* Moves src into dst (dst cleared first; src left empty). */
void bg_identity_move(struct bg_identity *dst, struct bg_identity *src);

#endif
