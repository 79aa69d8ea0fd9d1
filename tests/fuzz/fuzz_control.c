/*
 * fuzz_control.c - libFuzzer driver for what reaches a node from the
 * broker on the control plane (amqp/control.c) and the API queue
 * (server/cmd.c): the first byte picks the path (even: a control
 * message, odd: an API request), the rest is the body. A fresh
 * standalone node without workers takes it, runs its loop a few turns
 * and stops (bye ends pending queries): nothing may crash, leak or be
 * left behind, whatever the body says.
 */
#include "amqp/control.h"
#include "common/bg.h"
#include "common/config.h"
#include "common/log.h"
#include "server/cmd.h"
#include "server/server.h"
#include "server/sink.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct bg_config cfg;
	static uint64_t seen[8];
	struct bg_server srv;
	struct bg_bus_sink sink;
	struct bg_control *ctl;

	if (size == 0)
		return 0;
	bg_log_set_level(BG_LOG_ERROR);
	bg_config_defaults(&cfg);
	strcpy(cfg.amqp_url, "none");
	strcpy(cfg.api_key, "k");
	memset(&srv, 0, sizeof(srv));
	srv.cfg = &cfg;
	srv.cfg_seen = seen;
	strcpy(srv.node_id, "0123456789abcdef");
	bg_server_sink(&srv, &sink);
	ctl = bg_control_new(&sink, &srv);
	CHECK(ctl != NULL);
	CHECK(bg_cmd_init(ctl) == BG_OK);
	bg_control_attach(ctl, NULL);
	if (data[0] % 2 == 0)
		bg_control_deliver(ctl, data + 1, size - 1);
	else
		bg_control_request(ctl, data + 1, size - 1, "reply",
				   data[0] & 2 ? "corr" : NULL);
	for (int i = 0; i < 4; i++)
		bg_control_service(ctl);
	bg_control_bye(ctl);
	bg_control_service(ctl);
	bg_control_free(ctl);
	return 0;
}
