/*
 * fuzz_config.c - libFuzzer driver for the ini loader: the input is an
 * ini file, loaded over the defaults with bg_config_load_text (the same
 * line checks and inih pass as bg_config_load), then validated. Checks
 * that an error names the file and line, and that an accepted file left
 * every field inside its documented range.
 */
#include "common/bg.h"
#include "common/config.h"
#include "common/log.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)
#define TERMINATED(f) CHECK(memchr((f), '\0', sizeof(f)) != NULL)

static void
check_fields(const struct bg_config *c)
{
	TERMINATED(c->listen_host);
	TERMINATED(c->path);
	TERMINATED(c->origins);
	TERMINATED(c->amqp_url);
	TERMINATED(c->amqp_exchange);
	TERMINATED(c->amqp_queue);
	TERMINATED(c->amqp_ca_file);
	TERMINATED(c->auth_secret);
	TERMINATED(c->private_prefix);
	TERMINATED(c->forward_exchange);
	TERMINATED(c->api_key);
	TERMINATED(c->static_dir);
	CHECK(c->listen_port >= 1 && c->listen_port <= 65535);
	CHECK(c->workers >= 0 && c->workers <= 1024);
	CHECK(c->path[0] == '/');
	CHECK(c->max_connections >= 0);
	CHECK(c->ping_interval >= 0 && c->ping_interval <= 3600);
	CHECK(c->max_message_size >= 16 &&
	      c->max_message_size <= 67108864);
	CHECK(c->max_subscriptions >= 1);
	CHECK(c->max_store_bytes >= 2);
	CHECK(c->max_queued_bytes >= 1024);
	CHECK(c->rate >= 0 && c->burst >= 1);
	CHECK(c->client_publish >= BG_PUBLISH_NONE &&
	      c->client_publish <= BG_PUBLISH_ALL);
	CHECK(c->amqp_exchange[0] != '\0');
	CHECK(c->amqp_prefetch >= 1 && c->amqp_prefetch <= 65535);
	CHECK(c->amqp_heartbeat >= 0 && c->amqp_heartbeat <= 600);
	CHECK(c->log_level >= BG_LOG_DEBUG && c->log_level <= BG_LOG_ERROR);
	CHECK(strcmp(c->amqp_url, "none") == 0 ||
	      strncmp(c->amqp_url, "amqp://", 7) == 0 ||
	      strncmp(c->amqp_url, "amqps://", 8) == 0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct bg_config cfg;
	char err[2048];
	int rc;

	bg_config_defaults(&cfg);
	memset(err, 0, sizeof(err));
	rc = bg_config_load_text(&cfg, (const char *)data, size, "fz.ini",
				 err, sizeof(err));
	if (rc != BG_OK) {
		CHECK(rc == BG_ERR);
		/* "FILE:LINE: message", the line counted from 1. */
		CHECK(strncmp(err, "fz.ini:", 7) == 0);
		CHECK(strtol(err + 7, NULL, 10) >= 1);
		CHECK(strlen(err) < sizeof(err));
		return 0;
	}
	check_fields(&cfg);
	err[0] = '\0';
	if (bg_config_validate(&cfg, err, sizeof(err)) == BG_OK) {
		CHECK(cfg.max_message_size <= cfg.max_queued_bytes);
	} else {
		CHECK(err[0] != '\0');
	}
	return 0;
}
