/*
 * acceptor.h - the listening socket and the thread that accepts on it and
 * hands each connection to the least-loaded worker through its inbox ring.
 */
#ifndef BG_ACCEPTOR_H
#define BG_ACCEPTOR_H

#include <stddef.h>

struct bg_server;
struct bg_acceptor;

/* Binds and listens on cfg's listen address. NULL with err set ("cannot
 * listen on 127.0.0.1:9000: Address already in use"). Main thread. */
struct bg_acceptor *bg_acceptor_new(struct bg_server *srv, char *err,
				    size_t errlen);

/* Starts accepting. BG_OK or BG_ERR (logged). Main thread. */
int bg_acceptor_start(struct bg_acceptor *a);

/* Stops accepting, closes the socket, joins and frees. Main thread. */
void bg_acceptor_stop_free(struct bg_acceptor *a);

#endif
