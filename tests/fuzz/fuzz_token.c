/*
 * fuzz_token.c - libFuzzer driver for who a connection is (handlers/auth.c)
 * with a fixed secret and clock. The first input byte picks the form:
 *
 *   0  the rest is a token, verified as is (bg_auth_verify_jwt); the
 *      corpus holds validly signed tokens, so mutations of their claims
 *      reach libjwt's decoder and the signature check
 *   1  the rest is HEADER '\n' CLAIMS (raw bytes); the driver base64url-
 *      encodes both and signs them with the secret, so every input gets
 *      past the signature and its header and claims are what is fuzzed
 *   2  the rest is a forwarded reply's "auth" value (bg_auth_from_json)
 *
 * An accepted identity is checked against auth.h's contract and then
 * asked about a few private channels.
 */
#include "common/bg.h"
#include "handlers/auth.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

#define SECRET "fuzz-secret-0123456789"
#define NOW    INT64_C(1700000000)

static size_t
b64url(char *out, const uint8_t *in, size_t len)
{
	static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
				  "abcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t n = 0;
	uint32_t acc = 0;
	int bits = 0;

	for (size_t i = 0; i < len; i++) {
		acc = acc << 8 | in[i];
		bits += 8;
		while (bits >= 6) {
			bits -= 6;
			out[n++] = tab[acc >> bits & 63];
		}
	}
	if (bits > 0)
		out[n++] = tab[acc << (6 - bits) & 63];
	out[n] = '\0';
	return n;
}

/* "b64(header).b64(claims).b64(HMAC-SHA256)", malloc'd. */
static char *
sign(const uint8_t *hdr, size_t hlen, const uint8_t *claims, size_t clen)
{
	char *tok = malloc((hlen + clen) * 4 / 3 + 64);
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int mlen = 0;
	size_t n;

	if (tok == NULL)
		return NULL;
	n = b64url(tok, hdr, hlen);
	tok[n++] = '.';
	n += b64url(tok + n, claims, clen);
	CHECK(HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET),
		   (const unsigned char *)tok, n, mac, &mlen) != NULL);
	tok[n++] = '.';
	b64url(tok + n, mac, mlen);
	return tok;
}

static void
check_identity(const struct bg_identity *id, bool from_token)
{
	static const char *const probes[] = {
		"private-a", "private-", "private-room-1", "x", ""
	};
	json_t *info;

	CHECK(id->user != NULL);
	CHECK(strlen(id->user) >= 1 && strlen(id->user) <= 256);
	CHECK(id->n_channels <= BG_AUTH_MAX_CHANNELS);
	CHECK(id->n_channels == 0 || id->channels != NULL);
	for (uint32_t i = 0; i < id->n_channels; i++)
		CHECK(id->channels[i] != NULL && id->channels[i][0] != '\0');
	if (id->info != NULL) {
		info = json_loads(id->info, 0, NULL);
		CHECK(json_is_object(info));
		json_decref(info);
	}
	/* The connection never outlives its token: a token's expiry is
	 * in the future, or absent (0). */
	if (from_token)
		CHECK(id->exp == 0 ||
		      (id->exp > NOW && id->exp <= BG_AUTH_EXP_MAX));
	for (size_t i = 0; i < BG_ARRAY_LEN(probes); i++)
		(void)bg_auth_channel_allowed(id, probes[i]);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct bg_identity id = { 0 };
	char err[256], *text = NULL;
	const uint8_t *nl;
	json_t *auth;
	int rc;

	if (size == 0)
		return 0;
	err[0] = '\0';
	switch (data[0] % 3) {
	case 0:
		text = malloc(size);
		CHECK(text != NULL);
		memcpy(text, data + 1, size - 1);
		text[size - 1] = '\0';
		rc = bg_auth_verify_jwt(SECRET, text, NOW, &id, err,
					sizeof(err));
		break;
	case 1:
		nl = memchr(data + 1, '\n', size - 1);
		if (nl == NULL)
			return 0;
		text = sign(data + 1, (size_t)(nl - data - 1), nl + 1,
			    size - (size_t)(nl - data) - 1);
		CHECK(text != NULL);
		rc = bg_auth_verify_jwt(SECRET, text, NOW, &id, err,
					sizeof(err));
		break;
	default:
		auth = json_loadb((const char *)data + 1, size - 1, 0, NULL);
		rc = bg_auth_from_json(auth, &id, err, sizeof(err));
		json_decref(auth);
		break;
	}
	if (rc == BG_OK) {
		check_identity(&id, data[0] % 3 != 2);
	} else {
		CHECK(rc == BG_ERR);
		CHECK(err[0] != '\0' && strlen(err) < sizeof(err));
		CHECK(id.user == NULL && id.n_channels == 0);
	}
	bg_identity_clear(&id);
	free(text);
	return 0;
}
