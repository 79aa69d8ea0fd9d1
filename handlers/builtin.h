/*
 * builtin.h - the built-in events of PROTOCOL.md §3. Worker threads.
 */
#ifndef BG_BUILTIN_H
#define BG_BUILTIN_H

#include "common/proto.h"

struct bg_conn;

void bg_handler_subscribe(struct bg_conn *c, const struct bg_request *req);
void bg_handler_unsubscribe(struct bg_conn *c, const struct bg_request *req);
void bg_handler_store(struct bg_conn *c, const struct bg_request *req);
void bg_handler_ping(struct bg_conn *c, const struct bg_request *req);
void bg_handler_publish(struct bg_conn *c, const struct bg_request *req);

#endif
