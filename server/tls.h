/*
 * tls.h - TLS on the public listener ([server] tls_cert, tls_key, tls_ca):
 * the certificate set every worker serves, its checks at start-up, and its
 * reload without a restart.
 *
 * The main thread creates, reloads and frees the struct bg_tls; workers
 * read the current certificate set in their handshakes, under its lock.
 * Each worker's libwebsockets vhost owns its own SSL_CTX; bg_tls_vhost_setup
 * makes it serve the current set, so a reload reaches every worker's next
 * handshake while established connections keep their session.
 */
#ifndef BG_TLS_H
#define BG_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include "common/config.h"

struct bg_tls;
struct lws_context_creation_info;

/*
 * Reads cfg's tls_cert (a PEM certificate, optionally followed by its
 * chain), tls_key (its unencrypted PEM private key) and tls_ca (optional
 * PEM intermediate certificates, sent after the chain of tls_cert), and
 * checks that the key matches the certificate. Main thread, before the
 * workers start. Returns the set, or NULL with err naming the key and the
 * file at fault. cfg must outlive the result.
 */
struct bg_tls *bg_tls_new(const struct bg_config *cfg, char *err,
			  size_t errlen);

/*
 * Reads the same files again; on success new handshakes serve the new
 * certificate from then on, and connections already established are left
 * alone. On failure the old set stays in use and err says why. Main
 * thread. BG_OK or BG_ERR.
 */
int bg_tls_reload(struct bg_tls *t, char *err, size_t errlen);

/* Describes the certificate served in out: "subject ..., serial ...,
 * expires ...". Returns false when it is not valid now (expired or not
 * yet valid). Main thread. */
bool bg_tls_describe(struct bg_tls *t, char *out, size_t len);

/* Frees the set, once no worker can handshake any more. Main thread. */
void bg_tls_free(struct bg_tls *t);

/*
 * Fills the TLS fields of a worker's context and vhost info: options,
 * the certificate files, ciphers, TLS 1.2 as the minimum, ALPN http/1.1.
 * Worker thread, before lws_create_context.
 */
void bg_tls_lws_info(const struct bg_tls *t,
		     struct lws_context_creation_info *info);

/*
 * Makes a vhost's SSL_CTX (passed by libwebsockets as the user argument of
 * LWS_CALLBACK_OPENSSL_LOAD_EXTRA_SERVER_VERIFY_CERTS) serve t's current
 * certificate set, with the protocol options of bg_tls_lws_info. Worker
 * thread, while its vhost is created. BG_OK or BG_ERR (logged).
 */
int bg_tls_vhost_setup(struct bg_tls *t, void *ssl_ctx);

#endif
