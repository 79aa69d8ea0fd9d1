/*
 * auth.c - JWT (HS256) verification with libjwt, and identities. Pure.
 *
 * The header is checked here before libjwt sees the token: only
 * {"alg":"HS256"} is accepted, so "none" and algorithm confusion (an
 * RS256 header verified with the HMAC secret as a "public key") are
 * refused whatever the library version does with them.
 */
#include "handlers/auth.h"

#include <jwt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/bg.h"
#include "common/proto.h"

static void
set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

void
bg_identity_clear(struct bg_identity *id)
{
	free(id->user);
	free(id->info);
	for (uint32_t i = 0; i < id->n_channels; i++)
		free(id->channels[i]);
	free(id->channels);
	memset(id, 0, sizeof(*id));
}

void
bg_identity_move(struct bg_identity *dst, struct bg_identity *src)
{
	bg_identity_clear(dst);
	*dst = *src;
	memset(src, 0, sizeof(*src));
}

/* base64url (no padding) into a fresh NUL-terminated buffer. */
static char *
b64url_decode(const char *s, size_t len, size_t *out_len)
{
	char *out = malloc(len * 3 / 4 + 4);
	uint32_t acc = 0;
	int bits = 0;
	size_t n = 0;

	if (out == NULL)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		int v;
		if (c >= 'A' && c <= 'Z')
			v = c - 'A';
		else if (c >= 'a' && c <= 'z')
			v = c - 'a' + 26;
		else if (c >= '0' && c <= '9')
			v = c - '0' + 52;
		else if (c == '-')
			v = 62;
		else if (c == '_')
			v = 63;
		else {
			free(out);
			return NULL;
		}
		acc = acc << 6 | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[n++] = (char)(acc >> bits & 0xff);
		}
	}
	out[n] = '\0';
	*out_len = n;
	return out;
}

static int
check_header(const char *token, char *err, size_t errlen)
{
	const char *dot = strchr(token, '.');
	json_t *h, *alg;
	char *text;
	size_t len;
	int rc = BG_ERR;

	if (dot == NULL || strchr(dot + 1, '.') == NULL ||
	    strchr(strchr(dot + 1, '.') + 1, '.') != NULL) {
		set_err(err, errlen, "malformed token (expected three "
			"base64url parts)");
		return BG_ERR;
	}
	text = b64url_decode(token, (size_t)(dot - token), &len);
	if (text == NULL) {
		set_err(err, errlen, "malformed token header (not "
			"base64url)");
		return BG_ERR;
	}
	h = json_loadb(text, len, 0, NULL);
	alg = json_object_get(h, "alg");
	if (!json_is_object(h))
		set_err(err, errlen, "malformed token header (not JSON)");
	else if (!json_is_string(alg) ||
		 strcmp(json_string_value(alg), "HS256") != 0)
		set_err(err, errlen, "unsupported token algorithm (only "
			"HS256 is accepted)");
	else
		rc = BG_OK;
	json_decref(h);
	free(text);
	return rc;
}

/* Reads "user"/"sub", "info" and "channels" from claims into id. */
static int
read_claims(json_t *claims, const char *user_key, struct bg_identity *id,
	    char *err, size_t errlen)
{
	json_t *sub = json_object_get(claims, user_key);
	json_t *info = json_object_get(claims, "info");
	json_t *chans = json_object_get(claims, "channels");
	size_t n;

	if (!json_is_string(sub) || json_string_length(sub) == 0 ||
	    json_string_length(sub) > 256) {
		set_err(err, errlen, "'%s' must be a non-empty string",
			user_key);
		return BG_ERR;
	}
	if (info != NULL && !json_is_null(info) && !json_is_object(info)) {
		set_err(err, errlen, "'info' must be an object");
		return BG_ERR;
	}
	if (chans != NULL && !json_is_null(chans) && !json_is_array(chans)) {
		set_err(err, errlen, "'channels' must be a list of names");
		return BG_ERR;
	}
	n = json_is_array(chans) ? json_array_size(chans) : 0;
	if (n > BG_AUTH_MAX_CHANNELS) {
		set_err(err, errlen, "'channels' lists more than %d names",
			BG_AUTH_MAX_CHANNELS);
		return BG_ERR;
	}
	id->user = strdup(json_string_value(sub));
	id->info = json_is_object(info) ?
		   json_dumps(info, JSON_COMPACT) : NULL;
	id->channels = n ? calloc(n, sizeof(*id->channels)) : NULL;
	if (id->user == NULL || (json_is_object(info) && id->info == NULL) ||
	    (n && id->channels == NULL))
		goto oom;
	for (size_t i = 0; i < n; i++) {
		json_t *c = json_array_get(chans, i);
		if (!json_is_string(c) || json_string_length(c) == 0 ||
		    json_string_length(c) > BG_CHANNEL_MAX + 1) {
			set_err(err, errlen, "'channels' must be a list of "
				"channel names");
			bg_identity_clear(id);
			return BG_ERR;
		}
		id->channels[i] = strdup(json_string_value(c));
		if (id->channels[i] == NULL)
			goto oom;
		id->n_channels++;
	}
	return BG_OK;
oom:
	set_err(err, errlen, "out of memory");
	bg_identity_clear(id);
	return BG_ERR;
}

#define BAD_SIGNATURE "invalid token signature or encoding"

int
bg_auth_verify_jwt_rotating(const char *secret, const char *previous,
			    const char *token, int64_t now,
			    struct bg_identity *id, char *err, size_t errlen)
{
	char err2[160];

	if (bg_auth_verify_jwt(secret, token, now, id, err, errlen) == BG_OK)
		return BG_OK;
	if (previous == NULL || previous[0] == '\0' || err == NULL ||
	    strcmp(err, BAD_SIGNATURE) != 0)
		return BG_ERR;
	if (bg_auth_verify_jwt(previous, token, now, id, err2,
			       sizeof(err2)) == BG_OK)
		return BG_OK;
	if (strcmp(err2, BAD_SIGNATURE) != 0)
		snprintf(err, errlen, "%s", err2);
	return BG_ERR;
}

int
bg_auth_verify_jwt(const char *secret, const char *token, int64_t now,
		   struct bg_identity *id, char *err, size_t errlen)
{
	jwt_t *jwt = NULL;
	json_t *claims = NULL, *exp, *nbf;
	char *grants;
	int rc = BG_ERR;

	bg_identity_clear(id);
	if (secret == NULL || secret[0] == '\0') {
		set_err(err, errlen, "token authentication is not configured");
		return BG_ERR;
	}
	if (strlen(token) > BG_AUTH_TOKEN_MAX) {
		set_err(err, errlen, "token too large (over %d bytes)",
			BG_AUTH_TOKEN_MAX);
		return BG_ERR;
	}
	if (check_header(token, err, errlen) != BG_OK)
		return BG_ERR;
	if (jwt_decode(&jwt, token, (const unsigned char *)secret,
		       (int)strlen(secret)) != 0 || jwt == NULL) {
		set_err(err, errlen, BAD_SIGNATURE);
		return BG_ERR;
	}
	if (jwt_get_alg(jwt) != JWT_ALG_HS256) {
		set_err(err, errlen, "unsupported token algorithm (only "
			"HS256 is accepted)");
		goto out;
	}
	grants = jwt_get_grants_json(jwt, NULL);
	claims = grants ? json_loads(grants, 0, NULL) : NULL;
	free(grants);
	if (!json_is_object(claims)) {
		set_err(err, errlen, "malformed token claims");
		goto out;
	}
	exp = json_object_get(claims, "exp");
	nbf = json_object_get(claims, "nbf");
	/* NumericDate (RFC 7519): seconds, possibly fractional (PyJWT
	 * writes time.time() + N as is). */
	if (exp != NULL && !json_is_number(exp)) {
		set_err(err, errlen, "'exp' must be a number of seconds");
		goto out;
	}
	if (nbf != NULL && !json_is_number(nbf)) {
		set_err(err, errlen, "'nbf' must be a number of seconds");
		goto out;
	}
	if (exp != NULL && json_number_value(exp) <= (double)now) {
		set_err(err, errlen, "token expired");
		goto out;
	}
	if (nbf != NULL && json_number_value(nbf) > (double)now) {
		set_err(err, errlen, "token not yet valid");
		goto out;
	}
	if (read_claims(claims, "sub", id, err, errlen) != BG_OK)
		goto out;
	/* Rounded up: the connection never outlives its token. Clamped,
	 * so a far "exp" (1e300) neither overflows the conversion nor the
	 * expiry timer's microseconds. */
	id->exp = exp ? (int64_t)ceil(fmin(json_number_value(exp),
					   (double)BG_AUTH_EXP_MAX)) : 0;
	rc = BG_OK;
out:
	json_decref(claims);
	jwt_free(jwt);
	return rc;
}

int
bg_auth_from_json(json_t *auth, struct bg_identity *id, char *err,
		  size_t errlen)
{
	bg_identity_clear(id);
	if (!json_is_object(auth)) {
		set_err(err, errlen, "'auth' must be an object");
		return BG_ERR;
	}
	return read_claims(auth, "user", id, err, errlen);
}

bool
bg_auth_channel_allowed(const struct bg_identity *id, const char *channel)
{
	size_t len = strlen(channel);

	for (uint32_t i = 0; i < id->n_channels; i++) {
		const char *p = id->channels[i];
		size_t plen = strlen(p);
		if (plen > 0 && p[plen - 1] == '*') {
			if (len >= plen - 1 && memcmp(p, channel, plen - 1) == 0)
				return true;
		} else if (strcmp(p, channel) == 0) {
			return true;
		}
	}
	return false;
}
