/*
 * test_tls.c - unit tests of server/tls.c: the exact start-up error for
 * each kind of bad file, the description of the certificate, the vhost
 * policy (TLS 1.2 minimum, options), and what a handshake serves before
 * and after bg_tls_reload, driven in memory through a BIO pair.
 * Certificates are made here with the OpenSSL API in a mkdtemp folder.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/bg.h"
#include "common/config.h"
#include "server/tls.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64];
static struct bg_config cfg;

static const char *
at(const char *name)
{
	static char buf[4][128];
	static int i;

	i = (i + 1) % 4;
	snprintf(buf[i], sizeof(buf[i]), "%s/%s", dir, name);
	return buf[i];
}

static void
write_text(const char *name, const char *text)
{
	FILE *f = fopen(at(name), "w");

	assert_non_null(f);
	fputs(text, f);
	assert_int_equal(fclose(f), 0);
}

/* name.pem / name.key: a self-signed certificate with this serial, valid
 * from now + from_days to now + to_days. */
static void
make_cert(const char *name, long serial, const char *type, long from_days,
	  long to_days)
{
	char path[96];
	EVP_PKEY *k = strcmp(type, "EC") == 0 ?
		EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256") :
		strcmp(type, "RSA1024") == 0 ?
		EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024) :
		EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	X509 *x = X509_new();
	X509_NAME *n;
	FILE *f;

	assert_non_null(k);
	assert_non_null(x);
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
	X509_gmtime_adj(X509_getm_notBefore(x), from_days * 86400);
	X509_gmtime_adj(X509_getm_notAfter(x), to_days * 86400);
	n = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC,
				   (const unsigned char *)name, -1, -1, 0);
	X509_set_issuer_name(x, n);
	X509_set_pubkey(x, k);
	assert_true(X509_sign(x, k, EVP_sha256()) > 0);
	snprintf(path, sizeof(path), "%s/%s.pem", dir, name);
	f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(PEM_write_X509(f, x), 1);
	fclose(f);
	snprintf(path, sizeof(path), "%s/%s.key", dir, name);
	f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL,
					      NULL), 1);
	fclose(f);
	X509_free(x);
	EVP_PKEY_free(k);
}

static void
use(const char *cert, const char *key, const char *ca)
{
	bg_config_defaults(&cfg);
	strcpy(cfg.tls_cert, at(cert));
	strcpy(cfg.tls_key, at(key));
	if (ca != NULL)
		strcpy(cfg.tls_ca, at(ca));
}

static void
copy(const char *from, const char *to)
{
	char cmd[300];

	snprintf(cmd, sizeof(cmd), "cp %s %s", at(from), at(to));
	assert_int_equal(system(cmd), 0);
}

static int
setup(void **state)
{
	strcpy(dir, "/tmp/bagou-test-tls-XXXXXX");
	assert_non_null(mkdtemp(dir));
	make_cert("one", 0x0a, "EC", 0, 2);
	make_cert("two", 0x0b, "RSA", 0, 2);
	make_cert("old", 0x0c, "EC", -3, -1);
	make_cert("weak", 0x0d, "RSA1024", 0, 2);
	write_text("empty.pem", "nothing here\n");
	write_text("broken.pem", "-----BEGIN CERTIFICATE-----\nnot base64"
		   "!\n-----END CERTIFICATE-----\n");
	return 0;
}

static int
teardown(void **state)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	return system(cmd) == 0 ? 0 : -1;
}

/* Expects bg_tls_new to fail with msg, where %s stands for dir. */
static void
expect_error(const char *msg)
{
	char err[512] = "", want[512];

	assert_null(bg_tls_new(&cfg, err, sizeof(err)));
	snprintf(want, sizeof(want), msg, dir, dir, dir);
	assert_string_equal(err, want);
}

static void
test_errors(void **state)
{
	SSL_CTX *ctx;

	use("missing.pem", "one.key", NULL);
	expect_error("[server] tls_cert '%s/missing.pem': cannot open: No "
		     "such file or directory");
	use("one.pem", "missing.key", NULL);
	expect_error("[server] tls_key '%s/missing.key': cannot open: No "
		     "such file or directory");
	use("one.pem", "two.key", NULL);
	expect_error("[server] tls_key '%s/two.key' does not match the "
		     "certificate in [server] tls_cert '%s/one.pem'");
	use("one.key", "one.key", NULL);
	expect_error("[server] tls_cert '%s/one.key': no PEM certificate in "
		     "it");
	use("one.pem", "one.pem", NULL);
	expect_error("[server] tls_key '%s/one.pem': no PEM private key in "
		     "it");
	use("broken.pem", "one.key", NULL);
	expect_error("[server] tls_cert '%s/broken.pem': certificate 1 is "
		     "not valid PEM: bad base64 decode");
	use("one.pem", "one.key", "empty.pem");
	expect_error("[server] tls_ca '%s/empty.pem': no PEM certificate in "
		     "it");
	use("one.pem", "one.key", "missing.pem");
	expect_error("[server] tls_ca '%s/missing.pem': cannot open: No such "
		     "file or directory");
	/* Loads, but would fail every handshake at security level 2 (what
	 * Debian's OpenSSL defaults to). */
	ctx = SSL_CTX_new(TLS_server_method());
	assert_non_null(ctx);
	use("weak.pem", "weak.key", NULL);
	if (SSL_CTX_get_security_level(ctx) >= 2)
		expect_error("[server] tls_cert '%s/weak.pem': OpenSSL will "
			     "not serve this certificate: ee key too small");
	SSL_CTX_free(ctx);
	/* Nothing left in OpenSSL's error queue for the next caller. */
	assert_int_equal(ERR_peek_error(), 0);
}

static void
test_describe(void **state)
{
	struct bg_tls *t;
	char err[512] = "", desc[512];

	use("one.pem", "one.key", "two.pem");
	t = bg_tls_new(&cfg, err, sizeof(err));
	assert_non_null(t);
	assert_true(bg_tls_describe(t, desc, sizeof(desc)));
	assert_non_null(strstr(desc, "subject CN=one, serial 0A, expires "));
	bg_tls_free(t);

	use("old.pem", "old.key", NULL);
	t = bg_tls_new(&cfg, err, sizeof(err));
	assert_non_null(t);
	assert_false(bg_tls_describe(t, desc, sizeof(desc)));
	bg_tls_free(t);
}

/* One in-memory handshake against ctx; returns the serial the server
 * sent (-1 when the handshake failed). No cmocka asserts: threads call
 * it. */
static long
handshake(SSL_CTX *sctx)
{
	SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
	SSL *c = cctx ? SSL_new(cctx) : NULL, *s = SSL_new(sctx);
	BIO *cb, *sb;
	X509 *peer;
	long serial = -1;
	int rc_c = 0, rc_s = 0;

	if (c == NULL || s == NULL || BIO_new_bio_pair(&cb, 0, &sb, 0) != 1) {
		SSL_free(c);
		SSL_free(s);
		SSL_CTX_free(cctx);
		return -1;
	}
	SSL_set_bio(c, cb, cb);
	SSL_set_bio(s, sb, sb);
	SSL_set_connect_state(c);
	SSL_set_accept_state(s);
	for (int i = 0; i < 20 && (rc_c != 1 || rc_s != 1); i++) {
		if (rc_c != 1)
			rc_c = SSL_do_handshake(c);
		if (rc_s != 1)
			rc_s = SSL_do_handshake(s);
	}
	peer = rc_c == 1 ? SSL_get1_peer_certificate(c) : NULL;
	if (peer != NULL)
		serial = ASN1_INTEGER_get(X509_get0_serialNumber(peer));
	X509_free(peer);
	SSL_free(c);
	SSL_free(s);
	SSL_CTX_free(cctx);
	ERR_clear_error();
	return serial;
}

static void
test_vhost_and_reload(void **state)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	struct bg_tls *t;
	char err[512] = "", desc[512];

	copy("one.pem", "live.pem");
	copy("one.key", "live.key");
	use("live.pem", "live.key", NULL);
	t = bg_tls_new(&cfg, err, sizeof(err));
	assert_non_null(t);
	assert_int_equal(bg_tls_vhost_setup(t, ctx), BG_OK);
	assert_int_equal(SSL_CTX_get_min_proto_version(ctx), TLS1_2_VERSION);
	assert_true(SSL_CTX_get_options(ctx) & SSL_OP_NO_RENEGOTIATION);
	assert_true(SSL_CTX_get_options(ctx) & SSL_OP_NO_COMPRESSION);
	assert_int_equal(handshake(ctx), 0x0a);

	/* The renewal: another key type too. */
	copy("two.pem", "live.pem");
	copy("two.key", "live.key");
	assert_int_equal(bg_tls_reload(t, err, sizeof(err)), BG_OK);
	assert_int_equal(handshake(ctx), 0x0b);
	assert_true(bg_tls_describe(t, desc, sizeof(desc)));
	assert_non_null(strstr(desc, "serial 0B"));

	/* A bad renewal keeps what is served. */
	copy("one.key", "live.key");
	assert_int_equal(bg_tls_reload(t, err, sizeof(err)), BG_ERR);
	assert_non_null(strstr(err, "does not match the certificate"));
	assert_int_equal(handshake(ctx), 0x0b);

	SSL_CTX_free(ctx);
	bg_tls_free(t);
}

/* A worker: its own SSL_CTX set up once, then handshakes; counts those
 * that did not get one of the two certificates. */
struct hs_thread {
	struct bg_tls *t;
	int bad;
};

static void *
handshakes(void *arg)
{
	struct hs_thread *h = arg;
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

	if (ctx == NULL || bg_tls_vhost_setup(h->t, ctx) != BG_OK) {
		h->bad = -1;
		return NULL;
	}
	for (int i = 0; i < 40; i++) {
		long serial = handshake(ctx);
		if (serial != 0x0a && serial != 0x0b)
			h->bad++;
	}
	SSL_CTX_free(ctx);
	return NULL;
}

/* Reloads on main while two threads handshake (run it under
 * ThreadSanitizer: make SANITIZER=thread build/thread/tests/test_tls). */
static void
test_reload_while_serving(void **state)
{
	struct hs_thread h[2];
	pthread_t th[2];
	struct bg_tls *t;
	char err[512] = "";

	use("one.pem", "one.key", NULL);
	t = bg_tls_new(&cfg, err, sizeof(err));
	assert_non_null(t);
	for (int i = 0; i < 2; i++) {
		h[i] = (struct hs_thread){ .t = t };
		assert_int_equal(pthread_create(&th[i], NULL, handshakes,
						&h[i]), 0);
	}
	for (int i = 0; i < 20; i++) {
		/* Only reload reads the paths, on this thread. */
		use(i % 2 ? "one.pem" : "two.pem", i % 2 ? "one.key" :
		    "two.key", NULL);
		assert_int_equal(bg_tls_reload(t, err, sizeof(err)), BG_OK);
	}
	for (int i = 0; i < 2; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		assert_int_equal(h[i].bad, 0);
	}
	bg_tls_free(t);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_describe),
		cmocka_unit_test(test_vhost_and_reload),
		cmocka_unit_test(test_reload_while_serving),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
