/*
 * sink.h - the server's implementation of the bus sink (amqp/bus.h).
 */
#ifndef BG_SINK_H
#define BG_SINK_H

#include "amqp/bus.h"
#include "server/server.h"

/* Fills sink for srv (n_workers, node_id and started_ms set). Main
 * thread, before bg_control_new and bg_bus_new. */
void bg_server_sink(struct bg_server *srv, struct bg_bus_sink *sink);

#endif
