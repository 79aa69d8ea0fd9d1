/*
 * test_auth.c - unit tests of handlers/auth.c (PROTOCOL.md §6): HS256 JWT
 * verification against every hostile token we could think of (bad
 * signatures, "none", algorithm confusion, other HMAC sizes, expiry and
 * not-before, malformed encodings, wrong part counts, oversized tokens,
 * bad claims), identities read from a forwarded reply, the private-channel
 * rule, and identity clear/move (ASan checks for leaks).
 *
 * Tokens are built two ways: with libjwt (what a C application would
 * issue), and by hand (base64url + OpenSSL HMAC), so the header and the
 * claims can be anything at all.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/bg.h"
#include "handlers/auth.h"

#include <jwt.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SECRET "s3cret-for-unit-tests"
#define NOW ((int64_t)1700000000)

/* ------------------------------------------------------------ helpers */

static const char b64url_chars[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* base64url without padding of len bytes; malloc'd. */
static char *
b64url(const void *data, size_t len)
{
	const uint8_t *p = data;
	char *out = malloc(len * 4 / 3 + 4);
	size_t n = 0, i;

	assert_non_null(out);
	for (i = 0; i + 2 < len; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 |
			     p[i + 2];
		out[n++] = b64url_chars[v >> 18 & 63];
		out[n++] = b64url_chars[v >> 12 & 63];
		out[n++] = b64url_chars[v >> 6 & 63];
		out[n++] = b64url_chars[v & 63];
	}
	if (len - i == 1) {
		uint32_t v = (uint32_t)p[i] << 16;
		out[n++] = b64url_chars[v >> 18 & 63];
		out[n++] = b64url_chars[v >> 12 & 63];
	} else if (len - i == 2) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
		out[n++] = b64url_chars[v >> 18 & 63];
		out[n++] = b64url_chars[v >> 12 & 63];
		out[n++] = b64url_chars[v >> 6 & 63];
	}
	out[n] = '\0';
	return out;
}

static char *
b64url_str(const char *s)
{
	return b64url(s, strlen(s));
}

/* "a.b" with b = base64url(HMAC-md(key, a)). */
static char *
sign_with(const char *signing_input, const char *key, const EVP_MD *md)
{
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int mac_len = 0;
	char *sig, *out;
	size_t n;

	assert_non_null(HMAC(md, key, (int)strlen(key),
			     (const unsigned char *)signing_input,
			     strlen(signing_input), mac, &mac_len));
	sig = b64url(mac, mac_len);
	n = strlen(signing_input) + 1 + strlen(sig) + 1;
	out = malloc(n);
	assert_non_null(out);
	snprintf(out, n, "%s.%s", signing_input, sig);
	free(sig);
	return out;
}

/* base64url(header) "." base64url(payload), malloc'd. */
static char *
signing_input(const char *header, const char *payload)
{
	char *h = b64url_str(header), *p = b64url_str(payload), *out;
	size_t n = strlen(h) + strlen(p) + 2;

	out = malloc(n);
	assert_non_null(out);
	snprintf(out, n, "%s.%s", h, p);
	free(h);
	free(p);
	return out;
}

/* A token with exactly this header and payload, HMAC'd with md and key
 * (key NULL: no signature, "h.p."). */
static char *
make_token_md(const char *header, const char *payload, const char *key,
	      const EVP_MD *md)
{
	char *in = signing_input(header, payload), *out;
	size_t n;

	if (key != NULL) {
		out = sign_with(in, key, md);
	} else {
		n = strlen(in) + 2;
		out = malloc(n);
		assert_non_null(out);
		snprintf(out, n, "%s.", in);
	}
	free(in);
	return out;
}

static char *
make_token(const char *header, const char *payload, const char *key)
{
	return make_token_md(header, payload, key, EVP_sha256());
}

/* The usual HS256 token signed with SECRET. */
static char *
hs256(const char *payload)
{
	return make_token("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", payload,
			  SECRET);
}

static int
verify(const char *token, struct bg_identity *id, char *err, size_t len)
{
	err[0] = '\0';
	return bg_auth_verify_jwt(SECRET, token, NOW, id, err, len);
}

/* Expects token to be refused, with an error mentioning want (when not
 * NULL), and id left empty. */
static void
expect_refused(const char *token, const char *want)
{
	struct bg_identity id = { 0 };
	char err[256];

	assert_int_equal(verify(token, &id, err, sizeof(err)), BG_ERR);
	assert_true(err[0] != '\0');
	if (want != NULL && strstr(err, want) == NULL)
		fail_msg("error \"%s\" does not mention \"%s\" (token %.80s)",
			 err, want, token);
	assert_null(id.user);
	assert_null(id.info);
	assert_null(id.channels);
	assert_int_equal(id.n_channels, 0);
	assert_int_equal(id.exp, 0);
}

static void
expect_refused_free(char *token, const char *want)
{
	expect_refused(token, want);
	free(token);
}

/* Expects payload (signed HS256 with SECRET) to be accepted as user. */
static void
expect_user(const char *payload, const char *user)
{
	struct bg_identity id = { 0 };
	char err[256];
	char *token = hs256(payload);

	if (verify(token, &id, err, sizeof(err)) != BG_OK)
		fail_msg("payload %s refused: %s", payload, err);
	assert_string_equal(id.user, user);
	bg_identity_clear(&id);
	free(token);
}

/* ------------------------------------------------------------ valid */

static void
test_valid_minimal(void **state)
{
	struct bg_identity id = { 0 };
	char err[256];
	char *token = hs256("{\"sub\":\"alice\"}");

	assert_int_equal(verify(token, &id, err, sizeof(err)), BG_OK);
	assert_string_equal(id.user, "alice");
	assert_null(id.info);
	assert_null(id.channels);
	assert_int_equal(id.n_channels, 0);
	assert_int_equal(id.exp, 0);
	bg_identity_clear(&id);
	free(token);
}

static void
test_valid_full_claims(void **state)
{
	struct bg_identity id = { 0 };
	char err[256];
	char *token = hs256("{\"sub\":\"bob\",\"exp\":1700003600,"
			    "\"nbf\":1699990000,\"iat\":1699990000,"
			    "\"info\":{\"name\":\"Bob\",\"admin\":true},"
			    "\"channels\":[\"private-x\",\"private-room-*\"]}");

	assert_int_equal(verify(token, &id, err, sizeof(err)), BG_OK);
	assert_string_equal(id.user, "bob");
	assert_non_null(id.info);
	{
		json_t *info = json_loads(id.info, 0, NULL);
		assert_true(json_is_object(info));
		assert_string_equal(json_string_value(
			json_object_get(info, "name")), "Bob");
		assert_true(json_is_true(json_object_get(info, "admin")));
		json_decref(info);
	}
	assert_int_equal(id.n_channels, 2);
	assert_string_equal(id.channels[0], "private-x");
	assert_string_equal(id.channels[1], "private-room-*");
	assert_int_equal(id.exp, 1700003600);
	bg_identity_clear(&id);
	free(token);
}

/* A far "exp" (up to 1e308) is clamped to BG_AUTH_EXP_MAX, never
 * converted out of int64's range (found by fuzz_token). */
static void
test_far_exp_clamped(void **state)
{
	static const char *const payloads[] = {
		"{\"sub\":\"a\",\"exp\":1e300}",
		"{\"sub\":\"a\",\"exp\":1e15}",
		"{\"sub\":\"a\",\"exp\":9223372036854775807}",
	};
	struct bg_identity id = { 0 };
	char err[256];

	for (size_t i = 0; i < sizeof(payloads) / sizeof(*payloads); i++) {
		char *token = hs256(payloads[i]);

		assert_int_equal(verify(token, &id, err, sizeof(err)), BG_OK);
		assert_int_equal(id.exp, BG_AUTH_EXP_MAX);
		bg_identity_clear(&id);
		free(token);
	}
}

static void
test_valid_without_typ_and_with_extra_header(void **state)
{
	struct bg_identity id = { 0 };
	char err[256];
	char *t1 = make_token("{\"alg\":\"HS256\"}", "{\"sub\":\"a\"}",
			      SECRET);
	char *t2 = make_token("{\"typ\":\"JWT\",\"kid\":\"k1\","
			      "\"alg\":\"HS256\"}", "{\"sub\":\"b\"}", SECRET);

	assert_int_equal(verify(t1, &id, err, sizeof(err)), BG_OK);
	assert_string_equal(id.user, "a");
	assert_int_equal(verify(t2, &id, err, sizeof(err)), BG_OK);
	assert_string_equal(id.user, "b");
	bg_identity_clear(&id);
	free(t1);
	free(t2);
}

/* A token issued by libjwt itself, as a C application would. */
static void
test_valid_libjwt_token(void **state)
{
	struct bg_identity id = { 0 };
	char err[256];
	jwt_t *jwt = NULL;
	char *token;

	assert_int_equal(jwt_new(&jwt), 0);
	assert_int_equal(jwt_add_grant(jwt, "sub", "carol"), 0);
	assert_int_equal(jwt_add_grant_int(jwt, "exp", (long)NOW + 60), 0);
	assert_int_equal(jwt_add_grants_json(jwt, "{\"info\":{\"n\":1},"
					     "\"channels\":[\"private-c\"]}"),
			 0);
	assert_int_equal(jwt_set_alg(jwt, JWT_ALG_HS256,
				     (const unsigned char *)SECRET,
				     (int)strlen(SECRET)), 0);
	token = jwt_encode_str(jwt);
	assert_non_null(token);
	jwt_free(jwt);

	assert_int_equal(verify(token, &id, err, sizeof(err)), BG_OK);
	assert_string_equal(id.user, "carol");
	assert_string_equal(id.info, "{\"n\":1}");
	assert_int_equal(id.n_channels, 1);
	assert_string_equal(id.channels[0], "private-c");
	assert_int_equal(id.exp, NOW + 60);
	bg_identity_clear(&id);
	/* Same token, another secret. */
	assert_int_equal(bg_auth_verify_jwt("other", token, NOW, &id, err,
					    sizeof(err)), BG_ERR);
	assert_null(id.user);
	free(token);
}

/* libjwt with HS512 / HS384: a real token, refused for its algorithm. */
static void
test_libjwt_other_hmac_refused(void **state)
{
	static const jwt_alg_t algs[] = { JWT_ALG_HS384, JWT_ALG_HS512 };

	for (size_t i = 0; i < BG_ARRAY_LEN(algs); i++) {
		jwt_t *jwt = NULL;
		char *token;

		assert_int_equal(jwt_new(&jwt), 0);
		assert_int_equal(jwt_add_grant(jwt, "sub", "dave"), 0);
		assert_int_equal(jwt_set_alg(jwt, algs[i],
					     (const unsigned char *)SECRET,
					     (int)strlen(SECRET)), 0);
		token = jwt_encode_str(jwt);
		assert_non_null(token);
		jwt_free(jwt);
		expect_refused(token, "HS256");
		free(token);
	}
}

/* libjwt with alg none: unsigned, refused. */
static void
test_libjwt_none_refused(void **state)
{
	jwt_t *jwt = NULL;
	char *token;

	assert_int_equal(jwt_new(&jwt), 0);
	assert_int_equal(jwt_add_grant(jwt, "sub", "eve"), 0);
	token = jwt_encode_str(jwt); /* alg none by default */
	assert_non_null(token);
	jwt_free(jwt);
	expect_refused(token, NULL);
	free(token);
}

/* ------------------------------------------------------------ config */

static void
test_no_secret(void **state)
{
	struct bg_identity id = { 0 };
	char err[256];
	char *token = hs256("{\"sub\":\"alice\"}");

	assert_int_equal(bg_auth_verify_jwt(NULL, token, NOW, &id, err,
					    sizeof(err)), BG_ERR);
	assert_non_null(strstr(err, "not configured"));
	err[0] = '\0';
	assert_int_equal(bg_auth_verify_jwt("", token, NOW, &id, err,
					    sizeof(err)), BG_ERR);
	assert_non_null(strstr(err, "not configured"));
	assert_null(id.user);
	free(token);
}

/* An identity already holding something is cleared, accepted or not. */
static void
test_id_cleared_first(void **state)
{
	struct bg_identity id = { 0 };
	char err[256];
	char *good = hs256("{\"sub\":\"first\",\"info\":{\"a\":1},"
			   "\"channels\":[\"private-a\"],\"exp\":1800000000}");
	char *bad = hs256("{\"sub\":\"\"}");
	char *other = hs256("{\"sub\":\"second\"}");

	assert_int_equal(verify(good, &id, err, sizeof(err)), BG_OK);
	assert_string_equal(id.user, "first");
	assert_int_equal(verify(bad, &id, err, sizeof(err)), BG_ERR);
	assert_null(id.user);
	assert_null(id.info);
	assert_null(id.channels);
	assert_int_equal(id.n_channels, 0);
	assert_int_equal(id.exp, 0);
	assert_int_equal(verify(good, &id, err, sizeof(err)), BG_OK);
	assert_int_equal(verify(other, &id, err, sizeof(err)), BG_OK);
	assert_string_equal(id.user, "second");
	assert_null(id.info);
	assert_int_equal(id.n_channels, 0);
	assert_int_equal(id.exp, 0);
	bg_identity_clear(&id);
	free(good);
	free(bad);
	free(other);
}

/* A tiny err buffer is never overrun. */
static void
test_small_err_buffer(void **state)
{
	struct bg_identity id = { 0 };
	char err[8];
	char *token = hs256("{\"sub\":\"alice\",\"exp\":1}");

	memset(err, 'x', sizeof(err));
	assert_int_equal(bg_auth_verify_jwt(SECRET, token, NOW, &id, err, 4),
			 BG_ERR);
	assert_int_equal(strlen(err), 3);
	assert_int_equal(err[4], 'x');
	free(token);
}

/* ------------------------------------------------------------ signature */

static void
test_wrong_signature(void **state)
{
	const char *h = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
	const char *p = "{\"sub\":\"alice\"}";
	char *t;

	/* Signed with another secret. */
	expect_refused_free(make_token(h, p, "not-the-secret"), NULL);
	/* With a prefix of the secret, and the secret plus a byte. */
	expect_refused_free(make_token(h, p, "s3cret"), NULL);
	expect_refused_free(make_token(h, p, SECRET "x"), NULL);
	/* Empty signature. */
	expect_refused_free(make_token(h, p, NULL), NULL);

	/* One signature character changed. */
	t = hs256(p);
	{
		char *last = t + strlen(t) - 1;
		*last = *last == 'A' ? 'B' : 'A';
	}
	expect_refused_free(t, NULL);

	/* Signature truncated. */
	t = hs256(p);
	t[strlen(t) - 4] = '\0';
	expect_refused_free(t, NULL);
}

/* The claims changed after signing, the signature kept. */
static void
test_tampered_payload(void **state)
{
	const char *h = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
	char *good = hs256("{\"sub\":\"alice\"}");
	char *evil = make_token(h, "{\"sub\":\"admin\"}", NULL); /* "h.p." */
	const char *sig = strrchr(good, '.') + 1;
	size_t n = strlen(evil) + strlen(sig) + 1;
	char *forged = malloc(n);

	assert_non_null(forged);
	snprintf(forged, n, "%s%s", evil, sig);
	expect_refused(forged, NULL);
	free(forged);
	free(evil);
	free(good);
}

static void
test_alg_none(void **state)
{
	const char *p = "{\"sub\":\"alice\"}";

	/* Unsigned. */
	expect_refused_free(make_token("{\"alg\":\"none\"}", p, NULL), NULL);
	expect_refused_free(make_token("{\"alg\":\"none\",\"typ\":\"JWT\"}",
				       p, NULL), NULL);
	expect_refused_free(make_token("{\"alg\":\"None\"}", p, NULL), NULL);
	expect_refused_free(make_token("{\"alg\":\"NONE\"}", p, NULL), NULL);
	/* "none" with an HMAC signature anyway. */
	expect_refused_free(make_token("{\"alg\":\"none\"}", p, SECRET),
			    "HS256");
	/* No alg at all, alg not a string, alg empty. */
	expect_refused_free(make_token("{\"typ\":\"JWT\"}", p, SECRET),
			    "HS256");
	expect_refused_free(make_token("{\"alg\":null}", p, SECRET), "HS256");
	expect_refused_free(make_token("{\"alg\":256}", p, SECRET), "HS256");
	expect_refused_free(make_token("{\"alg\":[\"HS256\"]}", p, SECRET),
			    "HS256");
	expect_refused_free(make_token("{\"alg\":\"\"}", p, SECRET), "HS256");
	/* Case variants of HS256 are not HS256. */
	expect_refused_free(make_token("{\"alg\":\"hs256\"}", p, SECRET),
			    "HS256");
	expect_refused_free(make_token("{\"alg\":\"HS256 \"}", p, SECRET),
			    "HS256");
	/* Duplicate alg: jansson keeps the last one. */
	expect_refused_free(make_token("{\"alg\":\"HS256\",\"alg\":\"none\"}",
				       p, NULL), NULL);
}

/* Algorithm confusion: an RS256/ES256/PS256 header verified with the HMAC
 * secret as the "public key". */
static void
test_alg_confusion(void **state)
{
	const char *p = "{\"sub\":\"alice\"}";
	static const char *const headers[] = {
		"{\"alg\":\"RS256\"}",
		"{\"alg\":\"RS256\",\"typ\":\"JWT\"}",
		"{\"alg\":\"ES256\",\"typ\":\"JWT\"}",
		"{\"alg\":\"PS256\",\"typ\":\"JWT\"}",
		"{\"alg\":\"EdDSA\",\"typ\":\"JWT\"}",
	};
	char *good, *swapped, *hdr;
	size_t n;

	/* A header claiming RS256, HMAC-signed over that very header. */
	for (size_t i = 0; i < BG_ARRAY_LEN(headers); i++)
		expect_refused_free(make_token(headers[i], p, SECRET),
				    "HS256");

	/* A genuine HS256 token whose header is swapped for RS256 (the
	 * signature then covers the old header). */
	good = hs256(p);
	hdr = b64url_str("{\"alg\":\"RS256\",\"typ\":\"JWT\"}");
	n = strlen(hdr) + strlen(good) + 1;
	swapped = malloc(n);
	assert_non_null(swapped);
	snprintf(swapped, n, "%s%s", hdr, strchr(good, '.'));
	expect_refused_free(swapped, "HS256");
	free(hdr);
	free(good);
}

static void
test_other_hmac_by_hand(void **state)
{
	const char *p = "{\"sub\":\"alice\"}";

	expect_refused_free(make_token_md("{\"alg\":\"HS512\"}", p, SECRET,
					  EVP_sha512()), "HS256");
	expect_refused_free(make_token_md("{\"alg\":\"HS384\"}", p, SECRET,
					  EVP_sha384()), "HS256");
	/* HS256 header, HS512 signature. */
	expect_refused_free(make_token_md("{\"alg\":\"HS256\"}", p, SECRET,
					  EVP_sha512()), NULL);
	/* HS512 header, HS256 signature. */
	expect_refused_free(make_token_md("{\"alg\":\"HS512\"}", p, SECRET,
					  EVP_sha256()), "HS256");
}

/* ------------------------------------------------------------ time */

static void
test_exp(void **state)
{
	struct bg_identity id = { 0 };
	char err[256];
	char *t;

	expect_refused_free(hs256("{\"sub\":\"a\",\"exp\":1699999999}"),
			    "expired");
	expect_refused_free(hs256("{\"sub\":\"a\",\"exp\":1}"), "expired");
	expect_refused_free(hs256("{\"sub\":\"a\",\"exp\":0}"), "expired");
	expect_refused_free(hs256("{\"sub\":\"a\",\"exp\":-5}"), "expired");
	/* exp == now: already expired (RFC 7519: "on or after"). */
	expect_refused_free(hs256("{\"sub\":\"a\",\"exp\":1700000000}"),
			    "expired");
	/* One second left. */
	t = hs256("{\"sub\":\"a\",\"exp\":1700000001}");
	assert_int_equal(verify(t, &id, err, sizeof(err)), BG_OK);
	assert_int_equal(id.exp, 1700000001);
	bg_identity_clear(&id);
	free(t);
	/* Far future (past 2038). */
	t = hs256("{\"sub\":\"a\",\"exp\":4102444800}");
	assert_int_equal(verify(t, &id, err, sizeof(err)), BG_OK);
	assert_int_equal(id.exp, 4102444800LL);
	bg_identity_clear(&id);
	free(t);
}

static void
test_exp_not_a_number(void **state)
{
	expect_refused_free(hs256("{\"sub\":\"a\",\"exp\":\"1800000000\"}"),
			    "exp");
	expect_refused_free(hs256("{\"sub\":\"a\",\"exp\":\"soon\"}"), "exp");
	expect_refused_free(hs256("{\"sub\":\"a\",\"exp\":true}"), "exp");
	expect_refused_free(hs256("{\"sub\":\"a\",\"exp\":[1800000000]}"),
			    "exp");
	expect_refused_free(hs256("{\"sub\":\"a\",\"exp\":{}}"), "exp");
	expect_refused_free(hs256("{\"sub\":\"a\",\"exp\":null}"), "exp");
}

/*
 * RFC 7519 §2: a NumericDate is a JSON number and "non-integer values can
 * be represented". PyJWT, for one, writes exp = time.time() + 3600 as is.
 * A fractional exp in the future is a valid token; one in the past is
 * expired.
 */
static void
test_exp_fractional(void **state)
{
	struct bg_identity id = { 0 };
	char err[256];
	char *t = hs256("{\"sub\":\"a\",\"exp\":1700003600.25}");
	int rc;
	bool user_ok, exp_ok;

	expect_refused_free(hs256("{\"sub\":\"a\",\"exp\":1699999000.5}"),
			    NULL);
	rc = verify(t, &id, err, sizeof(err));
	user_ok = id.user != NULL && strcmp(id.user, "a") == 0;
	exp_ok = id.exp >= 1700003600 && id.exp <= 1700003601;
	bg_identity_clear(&id);
	free(t);
	if (rc != BG_OK)
		fail_msg("a future fractional exp (RFC 7519 NumericDate) was "
			 "refused: %s", err);
	assert_true(user_ok);
	assert_true(exp_ok);
}

static void
test_nbf(void **state)
{
	expect_refused_free(hs256("{\"sub\":\"a\",\"nbf\":1700000001}"),
			    "not yet valid");
	expect_refused_free(hs256("{\"sub\":\"a\",\"nbf\":1800000000,"
				  "\"exp\":1900000000}"), "not yet valid");
	expect_refused_free(hs256("{\"sub\":\"a\",\"nbf\":\"0\"}"), "nbf");
	/* nbf == now and in the past: fine. */
	expect_user("{\"sub\":\"a\",\"nbf\":1700000000}", "a");
	expect_user("{\"sub\":\"a\",\"nbf\":1}", "a");
	expect_user("{\"sub\":\"a\",\"nbf\":1699999999,"
		    "\"exp\":1700000100}", "a");
}

/* ------------------------------------------------------------ encoding */

static void
test_part_counts(void **state)
{
	char *t = hs256("{\"sub\":\"alice\"}");
	char *buf;
	size_t n;

	expect_refused("", "three");
	expect_refused("abc", "three");
	expect_refused(".", "three");
	expect_refused("..", NULL);
	expect_refused("...", "three");
	/* Two parts: header.payload of a valid token. */
	buf = strdup(t);
	assert_non_null(buf);
	*strrchr(buf, '.') = '\0';
	expect_refused(buf, "three");
	free(buf);
	/* Four parts: a valid token plus ".x", or plus ".". */
	n = strlen(t) + 3;
	buf = malloc(n);
	assert_non_null(buf);
	snprintf(buf, n, "%s.x", t);
	expect_refused(buf, "three");
	snprintf(buf, n, "%s.", t);
	expect_refused(buf, "three");
	free(buf);
	/* Leading dot. */
	n = strlen(t) + 2;
	buf = malloc(n);
	assert_non_null(buf);
	snprintf(buf, n, ".%s", t);
	expect_refused(buf, NULL);
	free(buf);
	free(t);
}

static void
test_malformed_base64(void **state)
{
	char *t = hs256("{\"sub\":\"alice\"}");
	char *buf;
	char *dot1, *dot2;

	/* A character outside base64url in each part. */
	buf = strdup(t);
	buf[1] = '!';
	expect_refused(buf, NULL);
	free(buf);
	buf = strdup(t);
	dot1 = strchr(buf, '.');
	dot1[2] = '*';
	expect_refused(buf, NULL);
	free(buf);
	buf = strdup(t);
	dot2 = strrchr(buf, '.');
	dot2[3] = '$';
	expect_refused(buf, NULL);
	free(buf);
	/* Standard base64 ('+', '/') and padding are not base64url. */
	buf = strdup(t);
	buf[0] = '+';
	expect_refused(buf, NULL);
	free(buf);
	buf = strdup(t);
	buf[0] = '/';
	expect_refused(buf, NULL);
	free(buf);
	{
		/* "eyJ...fQ==" header with padding. */
		char *h = b64url_str("{\"alg\":\"HS256\"}");
		size_t n = strlen(h) + strlen(t) + 4;
		char *padded = malloc(n);
		assert_non_null(padded);
		snprintf(padded, n, "%s==%s", h, strchr(t, '.'));
		expect_refused(padded, NULL);
		free(padded);
		free(h);
	}
	/* Spaces, newlines, NUL-less garbage. */
	buf = strdup(t);
	buf[5] = ' ';
	expect_refused(buf, NULL);
	free(buf);
	expect_refused("eyJhbGciOiJIUzI1NiJ9.%%%.abc", NULL);
	expect_refused("\xff\xfe.\xff\xfe.\xff\xfe", NULL);
	free(t);
}

static void
test_header_payload_not_json(void **state)
{
	const char *h = "{\"alg\":\"HS256\"}";

	expect_refused_free(make_token("not json", "{\"sub\":\"a\"}", SECRET),
			    "header");
	expect_refused_free(make_token("[\"HS256\"]", "{\"sub\":\"a\"}",
				       SECRET), NULL);
	expect_refused_free(make_token("\"HS256\"", "{\"sub\":\"a\"}",
				       SECRET), NULL);
	expect_refused_free(make_token("", "{\"sub\":\"a\"}", SECRET), NULL);
	expect_refused_free(make_token(h, "not json", SECRET), NULL);
	expect_refused_free(make_token(h, "[\"sub\",\"a\"]", SECRET), NULL);
	expect_refused_free(make_token(h, "\"a\"", SECRET), NULL);
	expect_refused_free(make_token(h, "", SECRET), NULL);
	expect_refused_free(make_token(h, "{\"sub\":\"a\"", SECRET), NULL);
}

static void
test_oversized(void **state)
{
	struct bg_identity id = { 0 };
	char err[256];
	char *t;

	/* Exactly BG_AUTH_TOKEN_MAX bytes: accepted. Search the padding
	 * that lands on it (or on max - 1, base64 steps by 4 per 3). */
	t = NULL;
	for (size_t want = BG_AUTH_TOKEN_MAX; want > BG_AUTH_TOKEN_MAX - 4;
	     want--) {
		size_t pad = 0;
		for (; pad < BG_AUTH_TOKEN_MAX; pad++) {
			char *payload = malloc(pad + 64);
			assert_non_null(payload);
			memset(payload, 0, pad + 64);
			strcpy(payload, "{\"sub\":\"big\",\"pad\":\"");
			memset(payload + strlen(payload), 'p', pad);
			strcat(payload, "\"}");
			t = hs256(payload);
			free(payload);
			if (strlen(t) >= want)
				break;
			free(t);
			t = NULL;
		}
		if (t != NULL && strlen(t) == want)
			break;
		free(t);
		t = NULL;
	}
	assert_non_null(t);
	assert_true(strlen(t) <= BG_AUTH_TOKEN_MAX);
	assert_true(strlen(t) > BG_AUTH_TOKEN_MAX - 4);
	assert_int_equal(verify(t, &id, err, sizeof(err)), BG_OK);
	assert_string_equal(id.user, "big");
	bg_identity_clear(&id);
	free(t);

	/* One byte over: refused before any parsing. */
	{
		char *big = malloc(BG_AUTH_TOKEN_MAX + 2);
		assert_non_null(big);
		memset(big, 'A', BG_AUTH_TOKEN_MAX + 1);
		big[BG_AUTH_TOKEN_MAX + 1] = '\0';
		big[10] = '.';
		big[20] = '.';
		expect_refused(big, "too large");
		free(big);
	}
	/* A genuine, correctly signed token over the limit. */
	{
		size_t n = 9000;
		char *payload = malloc(n + 64);
		assert_non_null(payload);
		memset(payload, 0, n + 64);
		strcpy(payload, "{\"sub\":\"big\",\"pad\":\"");
		memset(payload + strlen(payload), 'p', n);
		strcat(payload, "\"}");
		t = hs256(payload);
		assert_true(strlen(t) > BG_AUTH_TOKEN_MAX);
		expect_refused_free(t, "too large");
		free(payload);
	}
	/* Megabytes. */
	{
		size_t n = 4 << 20;
		char *huge = malloc(n + 1);
		assert_non_null(huge);
		memset(huge, 'a', n);
		huge[n] = '\0';
		huge[100] = '.';
		huge[200] = '.';
		expect_refused(huge, "too large");
		free(huge);
	}
}

/* ------------------------------------------------------------ claims */

static void
test_sub_claim(void **state)
{
	char sub[300], payload[400];

	expect_refused_free(hs256("{}"), "sub");
	expect_refused_free(hs256("{\"user\":\"alice\"}"), "sub");
	expect_refused_free(hs256("{\"sub\":42}"), "sub");
	expect_refused_free(hs256("{\"sub\":null}"), "sub");
	expect_refused_free(hs256("{\"sub\":true}"), "sub");
	expect_refused_free(hs256("{\"sub\":[\"alice\"]}"), "sub");
	expect_refused_free(hs256("{\"sub\":{\"id\":\"alice\"}}"), "sub");
	expect_refused_free(hs256("{\"sub\":\"\"}"), "sub");
	/* 256 bytes: fine; 257: refused. */
	memset(sub, 'u', 256);
	sub[256] = '\0';
	snprintf(payload, sizeof(payload), "{\"sub\":\"%s\"}", sub);
	expect_user(payload, sub);
	sub[256] = 'u';
	sub[257] = '\0';
	snprintf(payload, sizeof(payload), "{\"sub\":\"%s\"}", sub);
	expect_refused_free(hs256(payload), "sub");
	/* Unicode and escapes survive. */
	expect_user("{\"sub\":\"\\u00e9l\\u00e8ve \\\"q\\\"\"}",
		    "\xc3\xa9l\xc3\xa8ve \"q\"");
}

static void
test_info_claim(void **state)
{
	struct bg_identity id = { 0 };
	char err[256];
	char *t;

	expect_refused_free(hs256("{\"sub\":\"a\",\"info\":\"admin\"}"),
			    "info");
	expect_refused_free(hs256("{\"sub\":\"a\",\"info\":[1,2]}"), "info");
	expect_refused_free(hs256("{\"sub\":\"a\",\"info\":7}"), "info");
	/* null: no info. */
	t = hs256("{\"sub\":\"a\",\"info\":null}");
	assert_int_equal(verify(t, &id, err, sizeof(err)), BG_OK);
	assert_null(id.info);
	free(t);
	/* {}: an empty object. */
	t = hs256("{\"sub\":\"a\",\"info\":{}}");
	assert_int_equal(verify(t, &id, err, sizeof(err)), BG_OK);
	assert_string_equal(id.info, "{}");
	free(t);
	bg_identity_clear(&id);
}

static void
test_channels_claim(void **state)
{
	struct bg_identity id = { 0 };
	char err[256];
	char *t, *payload;
	size_t n, len;

	expect_refused_free(hs256("{\"sub\":\"a\",\"channels\":"
				  "\"private-x\"}"), "channels");
	expect_refused_free(hs256("{\"sub\":\"a\",\"channels\":"
				  "{\"private-x\":true}}"), "channels");
	expect_refused_free(hs256("{\"sub\":\"a\",\"channels\":1}"),
			    "channels");
	expect_refused_free(hs256("{\"sub\":\"a\",\"channels\":true}"),
			    "channels");
	expect_refused_free(hs256("{\"sub\":\"a\",\"channels\":"
				  "[\"private-x\",3]}"), "channels");
	expect_refused_free(hs256("{\"sub\":\"a\",\"channels\":"
				  "[\"private-x\",null]}"), "channels");
	expect_refused_free(hs256("{\"sub\":\"a\",\"channels\":"
				  "[[\"private-x\"]]}"), "channels");
	expect_refused_free(hs256("{\"sub\":\"a\",\"channels\":[\"\"]}"),
			    "channels");
	/* null and []: none. */
	t = hs256("{\"sub\":\"a\",\"channels\":null}");
	assert_int_equal(verify(t, &id, err, sizeof(err)), BG_OK);
	assert_int_equal(id.n_channels, 0);
	free(t);
	t = hs256("{\"sub\":\"a\",\"channels\":[]}");
	assert_int_equal(verify(t, &id, err, sizeof(err)), BG_OK);
	assert_int_equal(id.n_channels, 0);
	assert_null(id.channels);
	free(t);

	/* BG_AUTH_MAX_CHANNELS names: fine; one more: refused. */
	for (int extra = 0; extra <= 1; extra++) {
		int count = BG_AUTH_MAX_CHANNELS + extra;
		n = (size_t)count * 24 + 64;
		payload = malloc(n);
		assert_non_null(payload);
		len = (size_t)snprintf(payload, n, "{\"sub\":\"a\","
				       "\"channels\":[");
		for (int i = 0; i < count; i++)
			len += (size_t)snprintf(payload + len, n - len,
						"%s\"private-%d\"",
						i ? "," : "", i);
		snprintf(payload + len, n - len, "]}");
		t = hs256(payload);
		free(payload);
		if (extra == 0) {
			assert_int_equal(verify(t, &id, err, sizeof(err)),
					 BG_OK);
			assert_int_equal(id.n_channels, BG_AUTH_MAX_CHANNELS);
			assert_string_equal(id.channels[255], "private-255");
			free(t);
		} else {
			expect_refused_free(t, "channels");
		}
	}

	/* A 200-byte name and a 200-byte prefix plus '*' are fine; 202
	 * bytes is not a channel name or pattern. */
	{
		char name[210], buf[300];

		memset(name, 'c', 200);
		name[200] = '\0';
		snprintf(buf, sizeof(buf), "{\"sub\":\"a\",\"channels\":"
			 "[\"%s\"]}", name);
		t = hs256(buf);
		assert_int_equal(verify(t, &id, err, sizeof(err)), BG_OK);
		assert_int_equal(id.n_channels, 1);
		free(t);
		name[200] = '*';
		name[201] = '\0';
		snprintf(buf, sizeof(buf), "{\"sub\":\"a\",\"channels\":"
			 "[\"%s\"]}", name);
		t = hs256(buf);
		assert_int_equal(verify(t, &id, err, sizeof(err)), BG_OK);
		assert_int_equal(id.n_channels, 1);
		free(t);
		name[201] = 'c';
		name[202] = '\0';
		snprintf(buf, sizeof(buf), "{\"sub\":\"a\",\"channels\":"
			 "[\"%s\"]}", name);
		expect_refused_free(hs256(buf), "channels");
	}
	bg_identity_clear(&id);
}

/* ------------------------------------------------------------ from_json */

static void
test_from_json(void **state)
{
	struct bg_identity id = { 0 };
	char err[256];
	json_t *j;

	j = json_loads("{\"user\":\"u1\",\"info\":{\"n\":\"U\"},"
		       "\"channels\":[\"private-a\",\"private-b-*\"]}", 0,
		       NULL);
	assert_int_equal(bg_auth_from_json(j, &id, err, sizeof(err)), BG_OK);
	assert_string_equal(id.user, "u1");
	assert_string_equal(id.info, "{\"n\":\"U\"}");
	assert_int_equal(id.n_channels, 2);
	assert_string_equal(id.channels[1], "private-b-*");
	assert_int_equal(id.exp, 0);
	json_decref(j);

	/* Minimal. */
	j = json_loads("{\"user\":\"u2\"}", 0, NULL);
	assert_int_equal(bg_auth_from_json(j, &id, err, sizeof(err)), BG_OK);
	assert_string_equal(id.user, "u2");
	assert_null(id.info);
	assert_int_equal(id.n_channels, 0);
	json_decref(j);

	/* Failures clear what id held. */
	{
		static const char *const bad[] = {
			"{}",
			"{\"sub\":\"u\"}",
			"{\"user\":\"\"}",
			"{\"user\":5}",
			"{\"user\":null}",
			"{\"user\":\"u\",\"info\":\"x\"}",
			"{\"user\":\"u\",\"channels\":\"private-a\"}",
			"{\"user\":\"u\",\"channels\":[1]}",
			"[\"user\"]",
			"\"user\"",
			"null",
		};
		for (size_t i = 0; i < BG_ARRAY_LEN(bad); i++) {
			j = json_loads("{\"user\":\"held\",\"channels\":"
				       "[\"private-h\"]}", 0, NULL);
			assert_int_equal(bg_auth_from_json(j, &id, err,
							   sizeof(err)),
					 BG_OK);
			json_decref(j);
			j = json_loads(bad[i], JSON_DECODE_ANY, NULL);
			assert_non_null(j);
			err[0] = '\0';
			if (bg_auth_from_json(j, &id, err, sizeof(err)) !=
			    BG_ERR)
				fail_msg("%s accepted", bad[i]);
			assert_true(err[0] != '\0');
			assert_null(id.user);
			assert_null(id.channels);
			assert_int_equal(id.n_channels, 0);
			json_decref(j);
		}
	}
	/* NULL (json_loads of a bad reply). */
	assert_int_equal(bg_auth_from_json(NULL, &id, err, sizeof(err)),
			 BG_ERR);
	assert_non_null(strstr(err, "auth"));
	bg_identity_clear(&id);
}

/* ------------------------------------------------------------ channels */

static struct bg_identity
ident_with(const char *const *chans, uint32_t n)
{
	struct bg_identity id = { 0 };

	id.user = strdup("u");
	id.channels = n ? calloc(n, sizeof(*id.channels)) : NULL;
	for (uint32_t i = 0; i < n; i++)
		id.channels[i] = strdup(chans[i]);
	id.n_channels = n;
	return id;
}

static void
test_channel_allowed_exact(void **state)
{
	static const char *const c[] = { "private-x", "private-y" };
	struct bg_identity id = ident_with(c, 2);

	assert_true(bg_auth_channel_allowed(&id, "private-x"));
	assert_true(bg_auth_channel_allowed(&id, "private-y"));
	assert_false(bg_auth_channel_allowed(&id, "private-xy"));
	assert_false(bg_auth_channel_allowed(&id, "private-"));
	assert_false(bg_auth_channel_allowed(&id, "private-X"));
	assert_false(bg_auth_channel_allowed(&id, "private-z"));
	assert_false(bg_auth_channel_allowed(&id, ""));
	assert_false(bg_auth_channel_allowed(&id, "xprivate-x"));
	bg_identity_clear(&id);
}

static void
test_channel_allowed_prefix(void **state)
{
	static const char *const c[] = { "private-room-*" };
	struct bg_identity id = ident_with(c, 1);

	assert_true(bg_auth_channel_allowed(&id, "private-room-1"));
	assert_true(bg_auth_channel_allowed(&id, "private-room-abc-def"));
	/* Any suffix, the empty one included. */
	assert_true(bg_auth_channel_allowed(&id, "private-room-"));
	assert_false(bg_auth_channel_allowed(&id, "private-roomx"));
	assert_false(bg_auth_channel_allowed(&id, "private-room"));
	assert_false(bg_auth_channel_allowed(&id, "private-roo"));
	assert_false(bg_auth_channel_allowed(&id, "private-other"));
	assert_false(bg_auth_channel_allowed(&id, "private-"));
	assert_false(bg_auth_channel_allowed(&id, "Private-room-1"));
	assert_false(bg_auth_channel_allowed(&id, ""));
	/* The pattern itself is not a channel name, but matches too. */
	assert_true(bg_auth_channel_allowed(&id, "private-room-*"));
	bg_identity_clear(&id);
}

static void
test_channel_allowed_star_alone_and_middle(void **state)
{
	static const char *const all[] = { "*" };
	static const char *const mid[] = { "private-*-x", "private-a**" };
	struct bg_identity id = ident_with(all, 1);

	assert_true(bg_auth_channel_allowed(&id, "private-x"));
	assert_true(bg_auth_channel_allowed(&id, "anything"));
	assert_true(bg_auth_channel_allowed(&id, ""));
	bg_identity_clear(&id);

	/* A '*' that is not last is a literal character. */
	id = ident_with(mid, 2);
	assert_false(bg_auth_channel_allowed(&id, "private-a-x"));
	assert_true(bg_auth_channel_allowed(&id, "private-*-x"));
	/* "private-a**": prefix "private-a*". */
	assert_true(bg_auth_channel_allowed(&id, "private-a*b"));
	assert_false(bg_auth_channel_allowed(&id, "private-ab"));
	bg_identity_clear(&id);
}

static void
test_channel_allowed_empty(void **state)
{
	struct bg_identity none = { 0 };
	struct bg_identity id = ident_with(NULL, 0);

	assert_false(bg_auth_channel_allowed(&none, "private-x"));
	assert_false(bg_auth_channel_allowed(&none, ""));
	assert_false(bg_auth_channel_allowed(&id, "private-x"));
	assert_false(bg_auth_channel_allowed(&id, "*"));
	bg_identity_clear(&id);
}

static void
test_channel_allowed_from_token(void **state)
{
	struct bg_identity id = { 0 };
	char err[256];
	char *t = hs256("{\"sub\":\"a\",\"channels\":[\"private-x\","
			"\"private-room-*\"]}");

	assert_int_equal(verify(t, &id, err, sizeof(err)), BG_OK);
	assert_true(bg_auth_channel_allowed(&id, "private-x"));
	assert_true(bg_auth_channel_allowed(&id, "private-room-1"));
	assert_false(bg_auth_channel_allowed(&id, "private-roo"));
	assert_false(bg_auth_channel_allowed(&id, "private-other"));
	assert_false(bg_auth_channel_allowed(&id, "private-x1"));
	bg_identity_clear(&id);
	free(t);
}

/* ------------------------------------------------------------ identity */

static void
test_identity_clear(void **state)
{
	static const char *const c[] = { "private-a", "private-b-*" };
	struct bg_identity id = { 0 };

	/* Empty: harmless, twice. */
	bg_identity_clear(&id);
	bg_identity_clear(&id);
	id = ident_with(c, 2);
	id.info = strdup("{\"a\":1}");
	id.exp = 123;
	bg_identity_clear(&id);
	assert_null(id.user);
	assert_null(id.info);
	assert_null(id.channels);
	assert_int_equal(id.n_channels, 0);
	assert_int_equal(id.exp, 0);
	bg_identity_clear(&id);
}

static void
test_identity_move(void **state)
{
	static const char *const c1[] = { "private-old" };
	static const char *const c2[] = { "private-new", "private-n-*" };
	struct bg_identity dst = ident_with(c1, 1);
	struct bg_identity src = ident_with(c2, 2);
	struct bg_identity empty = { 0 };
	char *user;

	dst.info = strdup("{\"old\":1}");
	free(src.user);
	src.user = strdup("newcomer");
	src.exp = 99;
	user = src.user;
	/* dst's old strings are freed (ASan), src's pointers taken. */
	bg_identity_move(&dst, &src);
	assert_ptr_equal(dst.user, user);
	assert_string_equal(dst.user, "newcomer");
	assert_null(dst.info);
	assert_int_equal(dst.n_channels, 2);
	assert_string_equal(dst.channels[1], "private-n-*");
	assert_int_equal(dst.exp, 99);
	assert_null(src.user);
	assert_null(src.channels);
	assert_int_equal(src.n_channels, 0);
	assert_int_equal(src.exp, 0);

	/* Moving an empty identity in makes dst anonymous. */
	bg_identity_move(&dst, &empty);
	assert_null(dst.user);
	assert_int_equal(dst.n_channels, 0);
	/* Moving from an emptied src again is harmless. */
	bg_identity_move(&dst, &src);
	assert_null(dst.user);
	bg_identity_clear(&dst);
	bg_identity_clear(&src);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_minimal),
		cmocka_unit_test(test_valid_full_claims),
		cmocka_unit_test(test_valid_without_typ_and_with_extra_header),
		cmocka_unit_test(test_valid_libjwt_token),
		cmocka_unit_test(test_libjwt_other_hmac_refused),
		cmocka_unit_test(test_libjwt_none_refused),
		cmocka_unit_test(test_no_secret),
		cmocka_unit_test(test_id_cleared_first),
		cmocka_unit_test(test_small_err_buffer),
		cmocka_unit_test(test_wrong_signature),
		cmocka_unit_test(test_tampered_payload),
		cmocka_unit_test(test_alg_none),
		cmocka_unit_test(test_alg_confusion),
		cmocka_unit_test(test_other_hmac_by_hand),
		cmocka_unit_test(test_exp),
		cmocka_unit_test(test_exp_not_a_number),
		cmocka_unit_test(test_exp_fractional),
		cmocka_unit_test(test_nbf),
		cmocka_unit_test(test_part_counts),
		cmocka_unit_test(test_malformed_base64),
		cmocka_unit_test(test_header_payload_not_json),
		cmocka_unit_test(test_oversized),
		cmocka_unit_test(test_sub_claim),
		cmocka_unit_test(test_info_claim),
		cmocka_unit_test(test_channels_claim),
		cmocka_unit_test(test_from_json),
		cmocka_unit_test(test_channel_allowed_exact),
		cmocka_unit_test(test_channel_allowed_prefix),
		cmocka_unit_test(test_channel_allowed_star_alone_and_middle),
		cmocka_unit_test(test_channel_allowed_empty),
		cmocka_unit_test(test_channel_allowed_from_token),
		cmocka_unit_test(test_identity_clear),
		cmocka_unit_test(test_identity_move),
		cmocka_unit_test(test_far_exp_clamped),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
