/*
 * tls.c - the certificate set of the public listener and the TLS policy of
 * every worker's libwebsockets vhost.
 *
 * Threads: bg_tls_new/reload/describe/free run on main; the certificate
 * callback runs in each worker's handshakes. The current set (leaf, key,
 * chain) is swapped by reload and read by the callback under t->lock; the
 * callback hands each new connection its own references, so a swap never
 * touches a handshake in progress or an established session.
 */
#include "server/tls.h"

#include <errno.h>
#include <libwebsockets.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/bg.h"
#include "common/log.h"

/*
 * TLS 1.2: forward secrecy (ECDHE) and AEAD only, the strongest first
 * where the client allows; TLS 1.3 suites are all AEAD.
 */
#define CIPHERS_TLS12 "ECDHE-ECDSA-AES128-GCM-SHA256:" \
		      "ECDHE-RSA-AES128-GCM-SHA256:" \
		      "ECDHE-ECDSA-AES256-GCM-SHA384:" \
		      "ECDHE-RSA-AES256-GCM-SHA384:" \
		      "ECDHE-ECDSA-CHACHA20-POLY1305:" \
		      "ECDHE-RSA-CHACHA20-POLY1305"
#define CIPHERS_TLS13 "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:" \
		      "TLS_CHACHA20_POLY1305_SHA256"
#define TLS_OPTIONS (SSL_OP_NO_SSLv3 | SSL_OP_NO_TLSv1 | SSL_OP_NO_TLSv1_1 | \
		     SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | \
		     SSL_OP_CIPHER_SERVER_PREFERENCE)

struct certset {
	X509 *leaf;
	EVP_PKEY *key;
	STACK_OF(X509) *chain;          /* after leaf; may be empty */
};

struct bg_tls {
	const struct bg_config *cfg;    /* immutable */
	unsigned char ticket_keys[80];  /* immutable: session tickets of
	                                   every worker */
	SSL_CTX *client_ctx;            /* immutable; never used: see
	                                   bg_tls_lws_info */
	pthread_mutex_t lock;
	struct certset cur;             /* under lock: main swaps, workers
	                                   copy references out */
};

static void
seterr(char *err, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void
seterr(char *err, size_t len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, len, fmt, ap);
	va_end(ap);
}

/* OpenSSL's reason for the last failure, then its queue cleared. */
static const char *
ssl_reason(void)
{
	const char *r = ERR_reason_error_string(ERR_peek_last_error());

	ERR_clear_error();
	return r != NULL ? r : "unknown error";
}

/* Keys must be stored unencrypted: never prompt on a terminal. */
static int
no_password(char *buf, int size, int rwflag, void *u)
{
	return -1;
}

static bool
at_end_of_pem(void)
{
	unsigned long e = ERR_peek_last_error();

	return ERR_GET_LIB(e) == ERR_LIB_PEM &&
	       ERR_GET_REASON(e) == PEM_R_NO_START_LINE;
}

/* Whether f has a line holding marker (a PEM boundary): tells "no such
 * block in the file" from "a block OpenSSL could not read". */
static bool
mentions(FILE *f, const char *marker)
{
	char line[256];

	rewind(f);
	while (fgets(line, sizeof(line), f) != NULL)
		if (strstr(line, marker) != NULL)
			return true;
	return false;
}

/* Appends every PEM certificate of path to out. name: the ini key. */
static int
read_certs(const char *name, const char *path, STACK_OF(X509) *out,
	   char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	int before = sk_X509_num(out);
	X509 *x;

	if (f == NULL) {
		seterr(err, errlen, "[server] %s '%s': cannot open: %s", name,
		       path, strerror(errno));
		return BG_ERR;
	}
	ERR_clear_error();
	while ((x = PEM_read_X509(f, NULL, no_password, NULL)) != NULL) {
		if (sk_X509_push(out, x) == 0) {
			X509_free(x);
			fclose(f);
			seterr(err, errlen, "out of memory");
			return BG_ERR;
		}
	}
	if (sk_X509_num(out) == before &&
	    !mentions(f, "-----BEGIN CERTIFICATE-----")) {
		fclose(f);
		ERR_clear_error();
		seterr(err, errlen, "[server] %s '%s': no PEM certificate in "
		       "it", name, path);
		return BG_ERR;
	}
	fclose(f);
	if (!at_end_of_pem()) {
		seterr(err, errlen, "[server] %s '%s': certificate %d is not "
		       "valid PEM: %s", name, path,
		       sk_X509_num(out) - before + 1, ssl_reason());
		return BG_ERR;
	}
	ERR_clear_error();
	return BG_OK;
}

static EVP_PKEY *
read_key(const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	EVP_PKEY *k;

	if (f == NULL) {
		seterr(err, errlen, "[server] tls_key '%s': cannot open: %s",
		       path, strerror(errno));
		return NULL;
	}
	ERR_clear_error();
	k = PEM_read_PrivateKey(f, NULL, no_password, NULL);
	if (k == NULL) {
		if (!mentions(f, "PRIVATE KEY-----"))
			seterr(err, errlen, "[server] tls_key '%s': no PEM "
			       "private key in it", path);
		else
			seterr(err, errlen, "[server] tls_key '%s': cannot "
			       "read the private key (%s); it must be PEM and "
			       "not encrypted", path, ssl_reason());
		ERR_clear_error();
	}
	fclose(f);
	return k;
}

static void
certset_clear(struct certset *s)
{
	X509_free(s->leaf);
	EVP_PKEY_free(s->key);
	sk_X509_pop_free(s->chain, X509_free);
	memset(s, 0, sizeof(*s));
}

/* What every handshake will do with s, done once now: OpenSSL's security
 * level refuses weak keys and signatures (an RSA key under 2048 bits, a
 * SHA-1 signature) there, and would otherwise fail every handshake. */
static int
certset_try(const struct certset *s, const struct bg_config *cfg,
	    char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	int ok;

	ok = ctx != NULL && SSL_CTX_use_certificate(ctx, s->leaf) == 1 &&
	     SSL_CTX_use_PrivateKey(ctx, s->key) == 1;
	if (!ok)
		seterr(err, errlen, "[server] tls_cert '%s': OpenSSL will not "
		       "serve this certificate: %s", cfg->tls_cert,
		       ssl_reason());
	else if (SSL_CTX_set1_chain(ctx, s->chain) != 1) {
		seterr(err, errlen, "[server] %s '%s': OpenSSL will not send "
		       "this chain: %s", cfg->tls_ca[0] ? "tls_ca" :
		       "tls_cert", cfg->tls_ca[0] ? cfg->tls_ca : cfg->tls_cert,
		       ssl_reason());
		ok = 0;
	}
	SSL_CTX_free(ctx);
	return ok ? BG_OK : BG_ERR;
}

/* Reads and checks cfg's files into s (empty on failure). */
static int
certset_load(struct certset *s, const struct bg_config *cfg, char *err,
	     size_t errlen)
{
	STACK_OF(X509) *certs = sk_X509_new_null();

	memset(s, 0, sizeof(*s));
	if (certs == NULL) {
		seterr(err, errlen, "out of memory");
		return BG_ERR;
	}
	if (read_certs("tls_cert", cfg->tls_cert, certs, err, errlen) !=
	    BG_OK)
		goto fail;
	s->leaf = sk_X509_shift(certs);
	s->chain = certs;
	certs = NULL;
	if (cfg->tls_ca[0] != '\0' &&
	    read_certs("tls_ca", cfg->tls_ca, s->chain, err, errlen) != BG_OK)
		goto fail;
	s->key = read_key(cfg->tls_key, err, errlen);
	if (s->key == NULL)
		goto fail;
	if (X509_check_private_key(s->leaf, s->key) != 1) {
		ERR_clear_error();
		seterr(err, errlen, "[server] tls_key '%s' does not match the "
		       "certificate in [server] tls_cert '%s'", cfg->tls_key,
		       cfg->tls_cert);
		goto fail;
	}
	if (certset_try(s, cfg, err, errlen) != BG_OK)
		goto fail;
	return BG_OK;
fail:
	sk_X509_pop_free(certs, X509_free);
	certset_clear(s);
	return BG_ERR;
}

struct bg_tls *
bg_tls_new(const struct bg_config *cfg, char *err, size_t errlen)
{
	struct bg_tls *t = calloc(1, sizeof(*t));

	if (t == NULL) {
		seterr(err, errlen, "out of memory");
		return NULL;
	}
	t->cfg = cfg;
	t->client_ctx = SSL_CTX_new(TLS_client_method());
	if (t->client_ctx == NULL ||
	    RAND_bytes(t->ticket_keys, sizeof(t->ticket_keys)) != 1) {
		seterr(err, errlen, "cannot create a TLS context: %s",
		       ssl_reason());
		SSL_CTX_free(t->client_ctx);
		free(t);
		return NULL;
	}
	if (certset_load(&t->cur, cfg, err, errlen) != BG_OK) {
		SSL_CTX_free(t->client_ctx);
		free(t);
		return NULL;
	}
	pthread_mutex_init(&t->lock, NULL);
	return t;
}

int
bg_tls_reload(struct bg_tls *t, char *err, size_t errlen)
{
	struct certset fresh, old;

	if (certset_load(&fresh, t->cfg, err, errlen) != BG_OK)
		return BG_ERR;
	pthread_mutex_lock(&t->lock);
	old = t->cur;
	t->cur = fresh;
	pthread_mutex_unlock(&t->lock);
	/* Handshakes took their own references: the old set can go. */
	certset_clear(&old);
	return BG_OK;
}

bool
bg_tls_describe(struct bg_tls *t, char *out, size_t len)
{
	BIO *b = BIO_new(BIO_s_mem());
	BIGNUM *bn = NULL;
	char *hex = NULL, *p;
	long n;
	bool valid;

	out[0] = '\0';
	pthread_mutex_lock(&t->lock);
	valid = X509_cmp_current_time(X509_get0_notBefore(t->cur.leaf)) < 0 &&
		X509_cmp_current_time(X509_get0_notAfter(t->cur.leaf)) > 0;
	if (b != NULL) {
		bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(t->cur.leaf),
					NULL);
		hex = bn != NULL ? BN_bn2hex(bn) : NULL;
		BIO_puts(b, "subject ");
		X509_NAME_print_ex(b, X509_get_subject_name(t->cur.leaf), 0,
				   XN_FLAG_RFC2253);
		BIO_printf(b, ", serial %s, expires ", hex ? hex : "?");
		ASN1_TIME_print(b, X509_get0_notAfter(t->cur.leaf));
	}
	pthread_mutex_unlock(&t->lock);
	if (b != NULL && (n = BIO_get_mem_data(b, &p)) > 0)
		snprintf(out, len, "%.*s", (int)n, p);
	OPENSSL_free(hex);
	BN_free(bn);
	BIO_free(b);
	ERR_clear_error();
	return valid;
}

void
bg_tls_free(struct bg_tls *t)
{
	if (t == NULL)
		return;
	certset_clear(&t->cur);
	SSL_CTX_free(t->client_ctx);
	OPENSSL_cleanse(t->ticket_keys, sizeof(t->ticket_keys));
	pthread_mutex_destroy(&t->lock);
	free(t);
}

void
bg_tls_lws_info(const struct bg_tls *t,
		struct lws_context_creation_info *info)
{
	/* No certificate paths: bg_tls_vhost_setup installs the set, so
	 * libwebsockets never reads the files itself. */
	info->options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT |
			 LWS_SERVER_OPTION_CREATE_VHOST_SSL_CTX;
	info->ssl_cipher_list = CIPHERS_TLS12;
	info->tls1_3_plus_cipher_list = CIPHERS_TLS13;
	info->ssl_options_set = TLS_OPTIONS;
	/* The WebSocket upgrade is HTTP/1.1: never negotiate h2. */
	info->alpn = "http/1.1";
	/* Otherwise lws makes each vhost a client context of its own and
	 * loads the system CA bundle into it (~350 KiB a worker), for
	 * client connections the server never makes. lws does not free a
	 * context it was given. */
	info->provided_client_ssl_ctx = t->client_ctx;
}

/* Every handshake serves the current set, whatever the SSL_CTX held when
 * the connection was adopted. */
static int
serve_current(SSL *ssl, void *arg)
{
	struct bg_tls *t = arg;
	int ok;

	pthread_mutex_lock(&t->lock);
	SSL_certs_clear(ssl);
	ok = SSL_use_certificate(ssl, t->cur.leaf) == 1 &&
	     SSL_use_PrivateKey(ssl, t->cur.key) == 1 &&
	     SSL_set1_chain(ssl, t->cur.chain) == 1;
	pthread_mutex_unlock(&t->lock);
	if (!ok)
		ERR_clear_error();
	return ok;
}

int
bg_tls_vhost_setup(struct bg_tls *t, void *ssl_ctx)
{
	SSL_CTX *ctx = ssl_ctx;
	int ok;

	SSL_CTX_set_options(ctx, TLS_OPTIONS);
	ok = SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) == 1;
	/* The context's own copy only serves lws's certificate checks; the
	 * callback below decides what each handshake sends. */
	pthread_mutex_lock(&t->lock);
	ok = ok && SSL_CTX_use_certificate(ctx, t->cur.leaf) == 1 &&
	     SSL_CTX_use_PrivateKey(ctx, t->cur.key) == 1 &&
	     SSL_CTX_set1_chain(ctx, t->cur.chain) == 1;
	pthread_mutex_unlock(&t->lock);
	if (!ok) {
		bg_log_error("tls: cannot set up the worker's TLS context: %s",
			     ssl_reason());
		return BG_ERR;
	}
	/* One set of ticket keys for every worker: a client resumes its
	 * session whichever worker the acceptor hands it to. They last as
	 * long as the process. */
	if (SSL_CTX_set_tlsext_ticket_keys(ctx, t->ticket_keys,
					   sizeof(t->ticket_keys)) != 1) {
		bg_log_error("tls: cannot set the session ticket keys: %s",
			     ssl_reason());
		return BG_ERR;
	}
	SSL_CTX_set_cert_cb(ctx, serve_current, t);
	return BG_OK;
}
