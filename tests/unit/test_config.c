/*
 * test_config.c - unit tests of common/config.c: defaults, the shipped
 * etc/bagou.ini, every key, and the exact text of every kind of error.
 * Runs from the repository root; writes its ini files with mkstemp.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/bg.h"
#include "common/config.h"
#include "common/log.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmp_path[64];

/* Writes text to a fresh temp file, loads it over cfg, removes the file. */
static int
load_text(struct bg_config *cfg, const char *text, char *err, size_t len)
{
	FILE *fp;
	int fd, rc;

	strcpy(tmp_path, "/tmp/bagou-test-config-XXXXXX");
	fd = mkstemp(tmp_path);
	assert_true(fd >= 0);
	fp = fdopen(fd, "w");
	assert_non_null(fp);
	assert_int_equal(fputs(text, fp) >= 0, 1);
	assert_int_equal(fclose(fp), 0);
	rc = bg_config_load(cfg, tmp_path, err, len);
	unlink(tmp_path);
	return rc;
}

/* Loads text over the defaults; expects error "TMP:LINE: msg". */
static void
expect_load_error(const char *text, int line, const char *msg)
{
	struct bg_config cfg;
	char err[512], want[512];

	bg_config_defaults(&cfg);
	err[0] = '\0';
	assert_int_equal(load_text(&cfg, text, err, sizeof(err)), BG_ERR);
	snprintf(want, sizeof(want), "%s:%d: %s", tmp_path, line, msg);
	assert_string_equal(err, want);
}

static void
expect_set_error(const char *section, const char *key, const char *value,
		 const char *msg)
{
	struct bg_config cfg, before;
	char err[512];

	bg_config_defaults(&cfg);
	before = cfg;
	assert_int_equal(bg_config_set(&cfg, section, key, value, err,
				       sizeof(err)), BG_ERR);
	assert_string_equal(err, msg);
	/* A rejected value leaves the config untouched. */
	assert_memory_equal(&cfg, &before, sizeof(cfg));
}

static void
assert_config_equal(const struct bg_config *a, const struct bg_config *b)
{
	assert_string_equal(a->listen_host, b->listen_host);
	assert_int_equal(a->listen_port, b->listen_port);
	assert_int_equal(a->workers, b->workers);
	assert_string_equal(a->path, b->path);
	assert_int_equal(a->max_connections, b->max_connections);
	assert_int_equal(a->ping_interval, b->ping_interval);
	assert_int_equal(a->max_message_size, b->max_message_size);
	assert_int_equal(a->max_subscriptions, b->max_subscriptions);
	assert_int_equal(a->max_store_bytes, b->max_store_bytes);
	assert_int_equal(a->max_queued_bytes, b->max_queued_bytes);
	assert_int_equal(a->client_publish, b->client_publish);
	assert_string_equal(a->amqp_url, b->amqp_url);
	assert_string_equal(a->api_key, b->api_key);
	assert_string_equal(a->api_host, b->api_host);
	assert_int_equal(a->api_port, b->api_port);
	assert_int_equal(a->body_timeout, b->body_timeout);
	assert_int_equal(a->log_level, b->log_level);
	assert_int_equal(a->max_connection_memory, b->max_connection_memory);
	assert_int_equal(a->max_handshakes, b->max_handshakes);
	assert_int_equal(a->max_per_address, b->max_per_address);
	assert_int_equal(a->limit_loopback, b->limit_loopback);
	assert_int_equal(a->handshake_timeout, b->handshake_timeout);
	assert_int_equal(a->drain_delay, b->drain_delay);
	assert_string_equal(a->auth_previous_secret, b->auth_previous_secret);
	assert_string_equal(a->log_file, b->log_file);
	assert_string_equal(a->history_channels, b->history_channels);
	assert_int_equal(a->history_size, b->history_size);
	assert_int_equal(a->history_ttl, b->history_ttl);
	assert_string_equal(a->history_stream, b->history_stream);
	assert_int_equal(a->history_max_age, b->history_max_age);
}

static void
test_defaults(void **state)
{
	struct bg_config cfg;
	char err[256];

	bg_config_defaults(&cfg);
	assert_string_equal(cfg.listen_host, "0.0.0.0");
	assert_int_equal(cfg.listen_port, 9000);
	assert_int_equal(cfg.workers, 0);
	assert_string_equal(cfg.path, "/websocket");
	assert_int_equal(cfg.max_connections, 0);
	assert_int_equal(cfg.ping_interval, 30);
	assert_int_equal(cfg.max_message_size, 65536);
	assert_int_equal(cfg.max_subscriptions, 1000);
	assert_int_equal(cfg.max_store_bytes, 4096);
	assert_int_equal(cfg.max_queued_bytes, 1048576);
	assert_int_equal(cfg.backpressure, 50);
	assert_int_equal(cfg.close_timeout, 5);
	assert_int_equal(cfg.max_fragments, 1024);
	assert_int_equal(cfg.fragment_timeout, 30);
	assert_int_equal(cfg.client_publish, BG_PUBLISH_NONE);
	assert_string_equal(cfg.amqp_url,
			    "amqp://guest:guest@localhost:5672/");
	assert_string_equal(cfg.api_key, "");
	assert_int_equal(cfg.log_level, BG_LOG_INFO);
	assert_int_equal(cfg.max_connection_memory, 1048576);
	assert_int_equal(cfg.max_handshakes, 1024);
	assert_int_equal(cfg.max_per_address, 256);
	assert_false(cfg.limit_loopback);
	assert_int_equal(cfg.handshake_timeout, 10);
	assert_false(bg_config_standalone(&cfg));
	assert_int_equal(bg_config_validate(&cfg, err, sizeof(err)), BG_OK);
}

static void
test_shipped_ini(void **state)
{
	struct bg_config cfg, def;
	char err[512] = "";

	bg_config_defaults(&def);
	/* Start from other values so every key must be read from the file. */
	memset(&cfg, 0x5a, sizeof(cfg));
	cfg.listen_host[0] = cfg.path[0] = cfg.amqp_url[0] = '\0';
	cfg.api_host[0] = '\0';
	cfg.api_key[0] = 'x';
	cfg.api_key[1] = '\0';
	assert_int_equal(bg_config_load(&cfg, "etc/bagou.ini", err,
					sizeof(err)), BG_OK);
	assert_string_equal(err, "");
	assert_config_equal(&cfg, &def);
	assert_int_equal(bg_config_validate(&cfg, err, sizeof(err)), BG_OK);
}

static void
test_every_key(void **state)
{
	struct bg_config cfg;
	char err[512] = "";

	bg_config_defaults(&cfg);
	assert_int_equal(load_text(&cfg,
		"; a comment\n"
		"# another\n"
		"\n"
		"[server]\n"
		"listen = 127.0.0.1:8080\n"
		"workers = 4\n"
		"path = /ws\n"
		"max_connections = 10000000\n"
		"ping_interval = 0\n"
		"[limits]\n"
		"max_message_size = 1m ; inline comment\n"
		"max_subscriptions = 1\n"
		"max_store_bytes = 2\n"
		"max_queued_bytes = 1073741824\n"
		"[channels]\n"
		"client_publish = subscribed\n"
		"[amqp]\n"
		"url = amqps://u:p@rabbit:5671/vh\n"
		"[http]\n"
		"api_key = s3cr=t:key\n"
		"[log]\n"
		"level = debug", err, sizeof(err)), BG_OK);
	assert_string_equal(err, "");
	assert_string_equal(cfg.listen_host, "127.0.0.1");
	assert_int_equal(cfg.listen_port, 8080);
	assert_int_equal(cfg.workers, 4);
	assert_string_equal(cfg.path, "/ws");
	assert_int_equal(cfg.max_connections, 10000000);
	assert_int_equal(cfg.ping_interval, 0);
	assert_int_equal(cfg.max_message_size, 1048576);
	assert_int_equal(cfg.max_subscriptions, 1);
	assert_int_equal(cfg.max_store_bytes, 2);
	assert_int_equal(cfg.max_queued_bytes, 1073741824);
	assert_int_equal(cfg.client_publish, BG_PUBLISH_SUBSCRIBED);
	assert_string_equal(cfg.amqp_url, "amqps://u:p@rabbit:5671/vh");
	assert_string_equal(cfg.api_key, "s3cr=t:key");
	assert_int_equal(cfg.log_level, BG_LOG_DEBUG);
	assert_false(bg_config_standalone(&cfg));
}

static void
test_set_values(void **state)
{
	struct bg_config cfg;
	char err[256];

	bg_config_defaults(&cfg);
#define SET(s, k, v) \
	assert_int_equal(bg_config_set(&cfg, s, k, v, err, sizeof(err)), \
			 BG_OK)
	SET("server", "workers", "1024");
	assert_int_equal(cfg.workers, 1024);
	SET("server", "ping_interval", "3600");
	assert_int_equal(cfg.ping_interval, 3600);
	SET("channels", "client_publish", "all");
	assert_int_equal(cfg.client_publish, BG_PUBLISH_ALL);
	SET("channels", "client_publish", "none");
	assert_int_equal(cfg.client_publish, BG_PUBLISH_NONE);
	SET("log", "level", "warn");
	assert_int_equal(cfg.log_level, BG_LOG_WARN);
	SET("log", "level", "error");
	assert_int_equal(cfg.log_level, BG_LOG_ERROR);
	SET("amqp", "url", "none");
	assert_true(bg_config_standalone(&cfg));
	SET("amqp", "url", "amqp://localhost/");
	assert_false(bg_config_standalone(&cfg));
	SET("http", "api_key", "");
	assert_string_equal(cfg.api_key, "");
	SET("server", "max_connections", "0");
	assert_int_equal(cfg.max_connections, 0);
	SET("limits", "max_subscriptions", "1000000");
	assert_int_equal(cfg.max_subscriptions, 1000000);
	SET("limits", "max_connection_memory", "64k");
	assert_int_equal(cfg.max_connection_memory, 65536);
	SET("limits", "max_handshakes", "0");
	assert_int_equal(cfg.max_handshakes, 0);
	SET("limits", "max_per_address", "0");
	assert_int_equal(cfg.max_per_address, 0);
	SET("limits", "limit_loopback", "yes");
	assert_true(cfg.limit_loopback);
	SET("limits", "limit_loopback", "off");
	assert_false(cfg.limit_loopback);
	SET("limits", "handshake_timeout", "3600");
	assert_int_equal(cfg.handshake_timeout, 3600);
	assert_int_equal(bg_config_set(&cfg, "limits", "limit_loopback",
				       "maybe", err, sizeof(err)), BG_ERR);
	assert_string_equal(err, "[limits] limit_loopback: expected yes or "
			    "no, got 'maybe'");
	assert_int_equal(bg_config_set(&cfg, "limits", "handshake_timeout",
				       "3601", err, sizeof(err)), BG_ERR);
#undef SET
}

static void
test_sizes(void **state)
{
	static const struct {
		const char *key, *value;
		size_t want;
	} ok[] = {
		{ "max_message_size", "16", 16 },
		{ "max_message_size", "64k", 65536 },
		{ "max_message_size", "64K", 65536 },
		{ "max_message_size", "64m", 67108864 },
		{ "max_message_size", "2M", 2097152 },
		{ "max_store_bytes", "16m", 16777216 },
		{ "max_queued_bytes", "1k", 1024 },
		{ "max_queued_bytes", "1024m", 1073741824 },
	};
	struct bg_config cfg;
	char err[256];

	for (size_t i = 0; i < BG_ARRAY_LEN(ok); i++) {
		bg_config_defaults(&cfg);
		assert_int_equal(bg_config_set(&cfg, "limits", ok[i].key,
					       ok[i].value, err, sizeof(err)),
				 BG_OK);
		if (strcmp(ok[i].key, "max_message_size") == 0)
			assert_int_equal(cfg.max_message_size, ok[i].want);
		else if (strcmp(ok[i].key, "max_store_bytes") == 0)
			assert_int_equal(cfg.max_store_bytes, ok[i].want);
		else
			assert_int_equal(cfg.max_queued_bytes, ok[i].want);
	}
}

static void
test_bad_sizes(void **state)
{
	static const char *const bad[] = {
		"abc", "", "15", "64M1", "65m", "-1", "+16", " 16", "16 k",
		"16kb", "1g", "0x10", "18446744073709551616",
		"18446744073709551615k", "99999999999999999999999m",
	};
	char msg[256];

	for (size_t i = 0; i < BG_ARRAY_LEN(bad); i++) {
		snprintf(msg, sizeof(msg), "[limits] max_message_size: "
			 "expected a size in bytes (16 to 67108864), got '%s'",
			 bad[i]);
		expect_set_error("limits", "max_message_size", bad[i], msg);
	}
	expect_set_error("limits", "max_store_bytes", "1",
			 "[limits] max_store_bytes: expected a size in bytes "
			 "(2 to 16777216), got '1'");
	expect_set_error("limits", "max_queued_bytes", "1023",
			 "[limits] max_queued_bytes: expected a size in bytes "
			 "(1024 to 1073741824), got '1023'");
	expect_set_error("limits", "max_queued_bytes", "1048577k",
			 "[limits] max_queued_bytes: expected a size in bytes "
			 "(1024 to 1073741824), got '1048577k'");
}

static void
test_bad_ints(void **state)
{
	expect_set_error("limits", "backpressure", "101",
			 "[limits] backpressure: expected an integer from 0 "
			 "to 100, got '101'");
	expect_set_error("server", "workers", "1025",
			 "[server] workers: expected an integer from 0 to "
			 "1024, got '1025'");
	expect_set_error("server", "workers", "-1",
			 "[server] workers: expected an integer from 0 to "
			 "1024, got '-1'");
	expect_set_error("server", "workers", "4x",
			 "[server] workers: expected an integer from 0 to "
			 "1024, got '4x'");
	expect_set_error("server", "workers", "4k",
			 "[server] workers: expected an integer from 0 to "
			 "1024, got '4k'");
	expect_set_error("server", "workers", "",
			 "[server] workers: expected an integer from 0 to "
			 "1024, got ''");
	expect_set_error("server", "workers", "99999999999999999999999",
			 "[server] workers: expected an integer from 0 to "
			 "1024, got '99999999999999999999999'");
	expect_set_error("server", "workers", "4294967297",
			 "[server] workers: expected an integer from 0 to "
			 "1024, got '4294967297'");
	expect_set_error("server", "max_connections", "10000001",
			 "[server] max_connections: expected an integer from "
			 "0 to 10000000, got '10000001'");
	expect_set_error("server", "ping_interval", "3601",
			 "[server] ping_interval: expected an integer from 0 "
			 "to 3600, got '3601'");
	expect_set_error("limits", "max_subscriptions", "0",
			 "[limits] max_subscriptions: expected an integer "
			 "from 1 to 1000000, got '0'");
	expect_set_error("limits", "close_timeout", "0",
			 "[limits] close_timeout: expected an integer from 1 "
			 "to 600, got '0'");
	expect_set_error("limits", "max_fragments", "1000001",
			 "[limits] max_fragments: expected an integer from 1 "
			 "to 1000000, got '1000001'");
	expect_set_error("limits", "fragment_timeout", "3601",
			 "[limits] fragment_timeout: expected an integer from "
			 "1 to 3600, got '3601'");
}

static void
test_bad_strings(void **state)
{
	char long_path[300];

	expect_set_error("server", "path", "ws",
			 "[server] path: must start with '/', got 'ws'");
	expect_set_error("server", "path", "",
			 "[server] path: must start with '/', got ''");
	expect_set_error("server", "path", "/web socket",
			 "[server] path: must not contain spaces or control "
			 "characters, got '/web socket'");
	long_path[0] = '/';
	memset(long_path + 1, 'a', 255);
	long_path[256] = '\0';
	expect_set_error("server", "path", long_path,
			 "[server] path: expected at most 255 bytes, got 256");
	long_path[255] = '\0';
	{
		struct bg_config cfg;
		char err[256];

		bg_config_defaults(&cfg);
		assert_int_equal(bg_config_set(&cfg, "server", "path",
					       long_path, err, sizeof(err)),
				 BG_OK);
		assert_string_equal(cfg.path, long_path);
	}
	expect_set_error("amqp", "url", "http://x/",
			 "[amqp] url: expected 'none' or a URL starting with "
			 "amqp:// or amqps://, got 'http://x/'");
	expect_set_error("amqp", "url", "",
			 "[amqp] url: expected 'none' or a URL starting with "
			 "amqp:// or amqps://, got ''");
	expect_set_error("channels", "client_publish", "some",
			 "[channels] client_publish: expected none, "
			 "subscribed or all, got 'some'");
	expect_set_error("log", "level", "loud",
			 "[log] level: expected debug, info, warn or error, "
			 "got 'loud'");
}

static void
test_listen_forms(void **state)
{
	static const struct {
		const char *value, *host;
		int port;
	} ok[] = {
		{ "0.0.0.0:9000", "0.0.0.0", 9000 },
		{ "*:9000", "0.0.0.0", 9000 },
		{ "localhost:1", "localhost", 1 },
		{ "10.1.2.3:65535", "10.1.2.3", 65535 },
		{ "[::1]:80", "::1", 80 },
		{ "[::]:9000", "::", 9000 },
		{ "[fe80::1:2]:443", "fe80::1:2", 443 },
	};
	struct bg_config cfg;
	char err[256];

	for (size_t i = 0; i < BG_ARRAY_LEN(ok); i++) {
		bg_config_defaults(&cfg);
		assert_int_equal(bg_config_set(&cfg, "server", "listen",
					       ok[i].value, err, sizeof(err)),
				 BG_OK);
		assert_string_equal(cfg.listen_host, ok[i].host);
		assert_int_equal(cfg.listen_port, ok[i].port);
	}
}

static void
test_listen_errors(void **state)
{
	const char *form = "[server] listen: expected HOST:PORT (e.g. "
			   "*:9000, 127.0.0.1:9000, [::1]:9000), got ";
	const char *host = "[server] listen: expected an IPv4 address, "
			   "localhost, * or [IPv6] before the port, got ";
	const char *port = "[server] listen: expected a port from 1 to "
			   "65535, got ";
	static const struct {
		const char *value, *kind, *got;
	} bad[] = {
		{ "localhost", "form", "'localhost'" },
		{ "", "form", "''" },
		{ "[::1]", "form", "'[::1]'" },
		{ "[::1:80", "form", "'[::1:80'" },
		{ "[::1]80", "form", "'[::1]80'" },
		{ "0.0.0.0:0", "port", "'0'" },
		{ "0.0.0.0:70000", "port", "'70000'" },
		{ "0.0.0.0:", "port", "''" },
		{ "0.0.0.0:-1", "port", "'-1'" },
		{ "0.0.0.0:80x", "port", "'80x'" },
		{ "[::1]:0", "port", "'0'" },
		{ ":9000", "host", "''" },
		{ "example.com:9000", "host", "'example.com'" },
		{ "1.2.3:9000", "host", "'1.2.3'" },
		{ "256.1.1.1:9000", "host", "'256.1.1.1'" },
		{ "[1.2.3.4]:9000", "host", "'1.2.3.4'" },
		{ "[*]:9000", "host", "'*'" },
		{ "::1:80", "host", "'::1' (put IPv6 addresses in [])" },
	};
	char msg[256];

	for (size_t i = 0; i < BG_ARRAY_LEN(bad); i++) {
		const char *pre = strcmp(bad[i].kind, "form") == 0 ? form :
				  strcmp(bad[i].kind, "port") == 0 ? port :
				  host;

		snprintf(msg, sizeof(msg), "%s%s", pre, bad[i].got);
		expect_set_error("server", "listen", bad[i].value, msg);
	}
}

static void
test_set_unknown(void **state)
{
	expect_set_error("server", "foo", "1",
			 "unknown key 'foo' in [server]");
	expect_set_error("limits", "listen", "1",
			 "unknown key 'listen' in [limits]");
	expect_set_error("bogus", "listen", "1", "unknown section [bogus]");
	expect_set_error("", "listen", "1", "unknown section []");
}

static void
test_load_value_errors(void **state)
{
	expect_load_error("[server]\nworkers = 2\n\n; c\n\n[limits]\n"
			  "max_message_size = abc\n", 7,
			  "[limits] max_message_size: expected a size in "
			  "bytes (16 to 67108864), got 'abc'");
	expect_load_error("[server]\nlisten = *:70000\n", 2,
			  "[server] listen: expected a port from 1 to 65535, "
			  "got '70000'");
	expect_load_error("[log]\nlevel = verbose ; comment\n", 2,
			  "[log] level: expected debug, info, warn or error, "
			  "got 'verbose'");
	/* '#' only starts a comment at the beginning of a line. */
	expect_load_error("[server]\nworkers = 4 # four\n", 2,
			  "[server] workers: expected an integer from 0 to "
			  "1024, got '4 # four'");
}

static void
test_load_unknown(void **state)
{
	expect_load_error("[server]\nworkers = 1\nfoo = 2\n", 3,
			  "unknown key 'foo' in [server]");
	expect_load_error("[server]\nworkers = 1\n\n[foo]\nbar = 1\n", 4,
			  "unknown section [foo]");
	/* Caught at the header even with no key in it. */
	expect_load_error("[foo]\n", 1, "unknown section [foo]");
	expect_load_error("workers = 1\n", 1,
			  "key 'workers' before any [section]");
}

static void
test_load_duplicate(void **state)
{
	expect_load_error("[server]\nworkers = 1\nlisten = *:1\n"
			  "workers = 2\n", 4,
			  "duplicate key 'workers' in [server] (first set on "
			  "line 2)");
	/* Reopening a section does not make a key settable again. */
	expect_load_error("[log]\nlevel = info\n[server]\nworkers = 1\n"
			  "[log]\nlevel = debug\n", 6,
			  "duplicate key 'level' in [log] (first set on line "
			  "2)");
}

static void
test_load_syntax(void **state)
{
	char text[400];

	expect_load_error("[server]\nworkers\n", 2,
			  "expected [section] or key = value");
	expect_load_error("[server\nworkers = 1\n", 1,
			  "missing ']' in section header");
	expect_load_error("[server]\nlisten = *:1\n  workers = 1\n", 3,
			  "indented line: only list keys (origins, "
			  "lifecycle) may go on over indented lines");
	/* inih's own rejection: the comment hides the '='. */
	expect_load_error("[server]\nworkers ; = 1\n", 2,
			  "expected [section] or key = value");
	expect_load_error("[server]\nworkers ; = 1\nfoo = 1\n", 2,
			  "expected [section] or key = value");
	memset(text, 0, sizeof(text));
	strcpy(text, "[http]\napi_key = ");
	memset(text + strlen(text), 'k', 250);
	strcat(text, "\n");
	expect_load_error(text, 2, "line longer than 198 bytes (a list may "
			  "go on over indented lines)");
}

static void
test_load_ok_forms(void **state)
{
	struct bg_config cfg;
	char err[256] = "";

	bg_config_defaults(&cfg);
	/* BOM, CRLF, indented keys after a header, name: value, no final \n */
	assert_int_equal(load_text(&cfg,
		"\xEF\xBB\xBF[server]\r\n"
		"  workers = 3\r\n"
		"path: /a\r\n"
		"  ; indented comment\r\n"
		"\r\n"
		"[amqp]\r\n"
		"url = NONE", err, sizeof(err)), BG_OK);
	assert_string_equal(err, "");
	assert_int_equal(cfg.workers, 3);
	assert_string_equal(cfg.path, "/a");
	assert_string_equal(cfg.amqp_url, "none");
	assert_true(bg_config_standalone(&cfg));
	/* An empty file changes nothing. */
	assert_int_equal(load_text(&cfg, "", err, sizeof(err)), BG_OK);
	assert_int_equal(cfg.workers, 3);
}

static void
test_load_missing(void **state)
{
	struct bg_config cfg;
	char err[256];

	bg_config_defaults(&cfg);
	assert_int_equal(bg_config_load(&cfg, "etc/no-such-file.ini", err,
					sizeof(err)), BG_ERR);
	assert_string_equal(err, "etc/no-such-file.ini: cannot open: "
			    "No such file or directory");
}

static void
test_validate(void **state)
{
	struct bg_config cfg;
	char err[256];

	bg_config_defaults(&cfg);
	cfg.max_message_size = 4096;
	cfg.max_queued_bytes = 4096;
	assert_int_equal(bg_config_validate(&cfg, err, sizeof(err)), BG_OK);
	cfg.max_message_size = 4097;
	assert_int_equal(bg_config_validate(&cfg, err, sizeof(err)), BG_ERR);
	assert_string_equal(err, "[limits] max_message_size (4097) must not "
			    "exceed [limits] max_queued_bytes (4096): a "
			    "message must fit in a connection's outbound "
			    "queue");
}

static void
test_small_err_buffer(void **state)
{
	struct bg_config cfg;
	char err[8];

	bg_config_defaults(&cfg);
	assert_int_equal(bg_config_set(&cfg, "server", "workers", "x", err,
				       sizeof(err)), BG_ERR);
	assert_string_equal(err, "[server");
	assert_int_equal(bg_config_set(&cfg, "server", "workers", "x", NULL,
				       0), BG_ERR);
}

/* [server] tls_*: relative paths follow the ini file's folder; absolute
 * ones and command-line values stay as given; cert and key go together. */
static void
test_tls_keys(void **state)
{
	struct bg_config cfg;
	char err[512] = "";

	bg_config_defaults(&cfg);
	assert_string_equal(cfg.tls_cert, "");
	assert_int_equal(load_text(&cfg,
		"[server]\n"
		"tls_cert = certs/a b.pem\n"
		"tls_key = /etc/bagou/key.pem\n"
		"tls_ca = chain.pem\n", err, sizeof(err)), BG_OK);
	assert_string_equal(err, "");
	/* tmp_path is /tmp/bagou-test-config-XXXXXX: its folder is /tmp. */
	assert_string_equal(cfg.tls_cert, "/tmp/certs/a b.pem");
	assert_string_equal(cfg.tls_key, "/etc/bagou/key.pem");
	assert_string_equal(cfg.tls_ca, "/tmp/chain.pem");
	assert_int_equal(bg_config_validate(&cfg, err, sizeof(err)), BG_OK);

	assert_int_equal(bg_config_set(&cfg, "server", "tls_cert", "c.pem",
				       err, sizeof(err)), BG_OK);
	assert_string_equal(cfg.tls_cert, "c.pem");
	expect_set_error("server", "tls_key", "a\tb", "[server] tls_key: "
			 "must not contain control characters");

	cfg.tls_key[0] = '\0';
	assert_int_equal(bg_config_validate(&cfg, err, sizeof(err)), BG_ERR);
	assert_string_equal(err, "[server] tls_cert and [server] tls_key go "
			    "together: set both for TLS, or neither");
	bg_config_defaults(&cfg);
	strcpy(cfg.tls_ca, "ca.pem");
	assert_int_equal(bg_config_validate(&cfg, err, sizeof(err)), BG_ERR);
	assert_string_equal(err, "[server] tls_ca needs [server] tls_cert "
			    "and tls_key");
}

/* [http] api_listen: [server] listen's forms into its own fields, or
 * empty for none; [http] body_timeout: whole seconds, 1 to 3600. */
static void
test_api_listen(void **state)
{
	struct bg_config cfg;
	char err[512];

	bg_config_defaults(&cfg);
	assert_string_equal(cfg.api_host, "127.0.0.1");
	assert_int_equal(cfg.api_port, 9001);
	assert_int_equal(cfg.body_timeout, 10);
	assert_int_equal(bg_config_set(&cfg, "http", "api_listen",
				       "[::1]:8081", err, sizeof(err)), BG_OK);
	assert_string_equal(cfg.api_host, "::1");
	assert_int_equal(cfg.api_port, 8081);
	/* The public listener is not touched. */
	assert_string_equal(cfg.listen_host, "0.0.0.0");
	assert_int_equal(cfg.listen_port, 9000);
	assert_int_equal(bg_config_set(&cfg, "http", "api_listen", "*:7",
				       err, sizeof(err)), BG_OK);
	assert_string_equal(cfg.api_host, "0.0.0.0");
	assert_int_equal(cfg.api_port, 7);
	assert_int_equal(bg_config_set(&cfg, "http", "api_listen", "", err,
				       sizeof(err)), BG_OK);
	assert_int_equal(cfg.api_port, 0);
	expect_set_error("http", "api_listen", "9001",
			 "[http] api_listen: expected HOST:PORT (e.g. *:9000, "
			 "127.0.0.1:9000, [::1]:9000), got '9001'");
	expect_set_error("http", "api_listen", "127.0.0.1:0",
			 "[http] api_listen: expected a port from 1 to 65535, "
			 "got '0'");
	expect_load_error("[http]\napi_listen = nowhere:1\n", 2,
			  "[http] api_listen: expected an IPv4 address, "
			  "localhost, * or [IPv6] before the port, got "
			  "'nowhere'");
	expect_set_error("http", "body_timeout", "0",
			 "[http] body_timeout: expected an integer from 1 to "
			 "3600, got '0'");
	assert_int_equal(bg_config_set(&cfg, "http", "body_timeout", "2",
				       err, sizeof(err)), BG_OK);
	assert_int_equal(cfg.body_timeout, 2);
}

/* ------------------------------------------------ lists, origins, env */

/* 47 bytes: "https://", 27 letters, ".example.org". */
#define LONG_ORIGIN(c) "https://" c c c c c c c c c c c c c c c c c c c \
	c c c c c c c c ".example.org"

static void
test_list_multiline(void **state)
{
	struct bg_config cfg;
	char err[512] = "";

	bg_config_defaults(&cfg);
	/* inih hands each indented line to the loader as more of the key
	 * above it; blank and comment lines in between are skipped. */
	assert_int_equal(load_text(&cfg,
		"[server]\n"
		"origins = https://a.example,\n"
		"    https://b.example\n"
		"\n"
		"    ; a comment inside the list\n"
		"\thttps://*.c.example:8443 ; and after an entry\n"
		"workers = 2\n"
		"[forward]\n"
		"exchange = ex\n"
		"lifecycle =\n"
		"  open\n"
		"  close, store\n", err, sizeof(err)), BG_OK);
	assert_string_equal(err, "");
	assert_string_equal(cfg.origins, "https://a.example,,"
			    "https://b.example,https://*.c.example:8443");
	assert_int_equal(cfg.workers, 2);
	assert_int_equal(cfg.forward_lifecycle, BG_FORWARD_OPEN |
			 BG_FORWARD_CLOSE | BG_FORWARD_STORE);
	assert_true(bg_config_origin_allowed(cfg.origins,
					     "https://b.example"));
	assert_true(bg_config_origin_allowed(cfg.origins,
					     "https://x.c.example:8443"));
	/* A bad entry on a continuation line: that line is named. */
	expect_load_error("[server]\norigins = https://a.example\n"
			  "  https://*\n", 3,
			  "[server] origins: 'https://*': a '*' may only "
			  "stand for whole labels at the start of the host, "
			  "as in https://*.example.com");
	expect_load_error("[forward]\nexchange = e\nlifecycle = open\n"
			  "  bogus\n", 4,
			  "[forward] lifecycle: expected a list of open, "
			  "close, subscribe, unsubscribe, store, "
			  "authenticate; got 'bogus'");
	/* Only list keys continue. */
	expect_load_error("[http]\napi_key = a\n  b\n", 3,
			  "indented line: only list keys (origins, "
			  "lifecycle) may go on over indented lines");
}

static void
test_list_repeated(void **state)
{
	struct bg_config cfg;
	char err[512] = "";

	bg_config_defaults(&cfg);
	assert_int_equal(load_text(&cfg,
		"[server]\n"
		"origins = https://a.example\n"
		"origins = https://b.example\n"
		"[forward]\n"
		"exchange = ex\n"
		"lifecycle = open\n"
		"[server]\n"
		"origins = https://*.c.example\n"
		"[forward]\n"
		"lifecycle = subscribe\n", err, sizeof(err)), BG_OK);
	assert_string_equal(cfg.origins, "https://a.example,"
			    "https://b.example,https://*.c.example");
	assert_int_equal(cfg.forward_lifecycle, BG_FORWARD_OPEN |
			 BG_FORWARD_SUBSCRIBE);
	/* An empty first value, then entries. */
	bg_config_defaults(&cfg);
	assert_int_equal(load_text(&cfg, "[server]\norigins =\n"
				   "origins = https://a.example\n", err,
				   sizeof(err)), BG_OK);
	assert_string_equal(cfg.origins, "https://a.example");
	/* A repeated non-list key is still an error. */
	expect_load_error("[server]\norigins = https://a.example\n"
			  "path = /a\norigins = https://b.example\n"
			  "path = /b\n", 5,
			  "duplicate key 'path' in [server] (first set on "
			  "line 3)");
	/* bg_config_set (command line, environment) replaces a list. */
	assert_int_equal(bg_config_set(&cfg, "server", "origins",
				       "https://z.example", err, sizeof(err)),
			 BG_OK);
	assert_string_equal(cfg.origins, "https://z.example");
}

static void
test_list_long(void **state)
{
	static const char *const five[] = {
		LONG_ORIGIN("a"), LONG_ORIGIN("b"), LONG_ORIGIN("c"),
		LONG_ORIGIN("d"), LONG_ORIGIN("e"),
	};
	struct bg_config cfg;
	char text[4096], err[512] = "";
	char *big;
	size_t n;

	assert_int_equal(strlen(five[0]), 47);
	/* Over indented lines, and by repeating the key. */
	for (int form = 0; form < 2; form++) {
		strcpy(text, "[server]\norigins =\n");
		for (size_t i = 0; i < BG_ARRAY_LEN(five); i++) {
			strcat(text, form == 0 ? "  " : "origins = ");
			strcat(text, five[i]);
			strcat(text, form == 0 ? ",\n" : "\n");
		}
		bg_config_defaults(&cfg);
		assert_int_equal(load_text(&cfg, text, err, sizeof(err)),
				 BG_OK);
		for (size_t i = 0; i < BG_ARRAY_LEN(five); i++)
			assert_true(bg_config_origin_allowed(cfg.origins,
							     five[i]));
		assert_false(bg_config_origin_allowed(cfg.origins,
			"https://ffffffffffffffffffffffffff.example.org"));
	}
	/* Five on one line is longer than inih's lines: an error that says
	 * so, with the line, never a value cut short. */
	strcpy(text, "[server]\norigins = ");
	for (size_t i = 0; i < BG_ARRAY_LEN(five); i++)
		strcat(strcat(text, five[i]), ",");
	strcat(text, "\n");
	expect_load_error(text, 2, "line longer than 198 bytes (a list may "
			  "go on over indented lines)");
	/* Past the field, over however many lines: a clear error. */
	n = BG_CONFIG_ORIGINS / 20;
	big = malloc(32 + n * 60);
	assert_non_null(big);
	strcpy(big, "[server]\norigins =\n");
	for (size_t i = 0; i < n; i++)
		sprintf(big + strlen(big), "  https://host%05zu.example.org"
			"\n", i);
	bg_config_defaults(&cfg);
	assert_int_equal(load_text(&cfg, big, err, sizeof(err)), BG_ERR);
	assert_non_null(strstr(err, "[server] origins: the list is longer "
			       "than 8191 bytes"));
	free(big);
}

static void
test_origin_match(void **state)
{
	static const struct {
		const char *list, *origin;
		bool ok;
	} cases[] = {
		{ "https://a.example", "https://a.example", true },
		{ "https://a.example", "HTTPS://A.Example", true },
		{ "https://a.example", "https://a.example:443", false },
		{ "https://a.example", "https://a.exampl", false },
		{ "https://a.example , http://b.example", "http://b.example",
		  true },
		{ "https://*.example.com", "https://a.example.com", true },
		{ "https://*.example.com", "https://a.b.example.com", true },
		{ "https://*.example.com", "https://A-1.Example.COM", true },
		{ "https://*.example.com", "https://example.com", false },
		{ "https://*.example.com", "https://.example.com", false },
		{ "https://*.example.com", "https://a..example.com", false },
		{ "https://*.example.com", "https://evilexample.com", false },
		{ "https://*.example.com", "https://example.com.evil.com",
		  false },
		{ "https://*.example.com", "https://a.example.com.evil.com",
		  false },
		{ "https://*.example.com", "http://a.example.com", false },
		{ "https://*.example.com", "https://a.example.com:8443",
		  false },
		{ "https://*.example.com", "https://x@a.example.com", false },
		{ "https://*.example.com", "https://e.com/a.example.com",
		  false },
		{ "https://*.example.com", "https://a.example.com/", false },
		{ "https://*.example.com", "null", false },
		{ "https://*.example.com", "", false },
		{ "https://*.example.com:8443", "https://a.example.com:8443",
		  true },
		{ "https://*.example.com:8443", "https://a.example.com",
		  false },
		{ "https://*.example.com:8443", "https://a.example.com:844",
		  false },
		{ "https://*.example.com:8443", "https://a.example.com:84430",
		  false },
		/* An invalid wildcard (only bg_config_set refuses it) never
		 * matches anything. */
		{ "https://*", "https://a.example.com", false },
		{ "https://a.*.com", "https://a.b.com", false },
		{ "https://*a.example.com", "https://ba.example.com", false },
		{ "https://x.example,https://*.example.com",
		  "https://y.example.com", true },
	};

	for (size_t i = 0; i < BG_ARRAY_LEN(cases); i++) {
		if (bg_config_origin_allowed(cases[i].list, cases[i].origin)
		    != cases[i].ok)
			fail_msg("'%s' vs '%s': expected %s", cases[i].list,
				 cases[i].origin, cases[i].ok ? "match" :
				 "no match");
	}
}

static void
test_origin_wildcard_errors(void **state)
{
	static const char *const bad[][2] = {
		{ "https://*", "a '*' may only stand for whole labels at the "
		  "start of the host, as in https://*.example.com" },
		{ "*", "expected SCHEME://*.DOMAIN[:PORT]" },
		{ "*.example.com", "expected SCHEME://*.DOMAIN[:PORT]" },
		{ "https://*foo.example.com", "a '*' may only stand for whole "
		  "labels at the start of the host, as in "
		  "https://*.example.com" },
		{ "https://foo.*.example.com", "a '*' may only stand for "
		  "whole labels at the start of the host, as in "
		  "https://*.example.com" },
		{ "https://*.*.example.com", "a '*' may only stand for whole "
		  "labels at the start of the host, as in "
		  "https://*.example.com" },
		{ "https://a*b.example.com", "a '*' may only stand for whole "
		  "labels at the start of the host, as in "
		  "https://*.example.com" },
		{ "https://*.com", "the domain after '*.' needs two labels or "
		  "more (*.example.com, not *.com)" },
		{ "https://*.", "expected a domain after '*.'" },
		{ "https://*.example..com", "expected a domain after '*.'" },
		{ "https://*.example.com:", "expected a port from 1 to "
		  "65535" },
		{ "https://*.example.com:0", "expected a port from 1 to "
		  "65535" },
		{ "https://*.example.com:65536", "expected a port from 1 to "
		  "65535" },
		{ "https://*.example.com/", "a '*' may only stand for whole "
		  "labels at the start of the host, as in "
		  "https://*.example.com" },
		{ "*://a.example.com", "expected SCHEME://*.DOMAIN[:PORT]" },
	};
	char want[512];

	for (size_t i = 0; i < BG_ARRAY_LEN(bad); i++) {
		snprintf(want, sizeof(want), "[server] origins: '%s': %s",
			 bad[i][0], bad[i][1]);
		expect_set_error("server", "origins", bad[i][0], want);
	}
	/* Entries without a '*': what an Origin header can hold. */
	static const char *const exact_bad[] = {
		"example.com", "https://", "https://a.example/",
		"https://a.example/path", "://a.example", "ht tp://a",
		"https://user@a.example", "https://a.example?x", "workers",
		"=", "https://[]", "https://[::1", "https://[zz]",
	};
	for (size_t i = 0; i < BG_ARRAY_LEN(exact_bad); i++) {
		struct bg_config cfg;
		char err[512];

		bg_config_defaults(&cfg);
		assert_int_equal(bg_config_set(&cfg, "server", "origins",
					       exact_bad[i], err, sizeof(err)),
				 BG_ERR);
		assert_non_null(strstr(err, "expected null or "
				       "SCHEME://HOST[:PORT], with no path, as "
				       "in https://example.com"));
	}
	expect_set_error("server", "origins", "https://a.example:99999",
			 "[server] origins: 'https://a.example:99999': "
			 "expected a port from 1 to 65535");
	{
		struct bg_config cfg;
		char err[512];
		const char *ok = "null, https://a.example:8443, "
				 "http://127.0.0.1:9000, http://[::1]:80, "
				 "app+x.y-z://a_b.example";

		bg_config_defaults(&cfg);
		assert_int_equal(bg_config_set(&cfg, "server", "origins", ok,
					       err, sizeof(err)), BG_OK);
		assert_true(bg_config_origin_allowed(cfg.origins,
						     "http://[::1]:80"));
		assert_true(bg_config_origin_allowed(cfg.origins, "null"));
	}
	/* A key indented after a list key would be read as more of the
	 * list: refused, not taken as origins. */
	expect_load_error("[server]\norigins = https://a.example\n"
			  "  workers = 2\n", 3,
			  "[server] origins: 'workers': expected null or "
			  "SCHEME://HOST[:PORT], with no path, as in "
			  "https://example.com");
	/* In a list, the bad entry is named. */
	expect_set_error("server", "origins",
			 "https://a.example, https://*, https://b.example",
			 "[server] origins: 'https://*': a '*' may only stand "
			 "for whole labels at the start of the host, as in "
			 "https://*.example.com");
}

/* Applies envp over the defaults; returns bg_config_load_env's code. */
static int
env_load(struct bg_config *cfg, char *const *envp, char *err, size_t len)
{
	bg_config_defaults(cfg);
	err[0] = '\0';
	return bg_config_load_env(cfg, envp, err, len);
}

static void
test_env_overrides(void **state)
{
	struct bg_config cfg, def;
	char err[512];
	char *const env[] = {
		"PATH=/usr/bin",
		"BAGOU_SERVER_LISTEN=127.0.0.1:9100",
		"BAGOU_AUTH_SECRET=s3cr3t=with=equals",
		"BAGOU_LIMITS_MAX_MESSAGE_SIZE=32k",
		"BAGOU_SERVER_ORIGINS=https://a.example, https://*.b.example",
		"BAGOU_HTTP_API_LISTEN=",
		"BAGOU_LOG_LEVEL=debug",
		"BAGOU_FORWARD_LIFECYCLE=open,close",
		/* Other tools' own variables, ignored. */
		"BAGOU_BIN=/x/bagou-server",
		"BAGOU_START_TIMEOUT=30",
		"BAGOU_HTTP_URL=http://127.0.0.1:9001",
		"BAGOU_EXCHANGE=bx",
		"BAGOU_AUTH=true",
		"BAGOU_=x",
		"BAGOU_SERVER=x",
		"BAGOU_SERVER_=x",
		"BAGOUX_SERVER_LISTEN=nonsense",
		"XBAGOU_SERVER_LISTEN=nonsense",
		NULL,
	};

	assert_int_equal(env_load(&cfg, env, err, sizeof(err)), BG_OK);
	assert_string_equal(err, "");
	assert_string_equal(cfg.listen_host, "127.0.0.1");
	assert_int_equal(cfg.listen_port, 9100);
	assert_string_equal(cfg.auth_secret, "s3cr3t=with=equals");
	assert_int_equal(cfg.max_message_size, 32768);
	assert_true(bg_config_origin_allowed(cfg.origins,
					     "https://x.b.example"));
	assert_int_equal(cfg.api_port, 0);
	assert_int_equal(cfg.log_level, BG_LOG_DEBUG);
	assert_int_equal(cfg.forward_lifecycle, BG_FORWARD_OPEN |
			 BG_FORWARD_CLOSE);
	/* Nothing else moved. */
	bg_config_defaults(&def);
	assert_int_equal(cfg.workers, def.workers);
	assert_string_equal(cfg.amqp_exchange, def.amqp_exchange);
	assert_string_equal(cfg.path, def.path);
	/* No environment, or no BAGOU_ in it: nothing changes. */
	assert_int_equal(env_load(&cfg, NULL, err, sizeof(err)), BG_OK);
	assert_memory_equal(&cfg, &def, sizeof(cfg));
	assert_int_equal(env_load(&cfg, env + 8, err, sizeof(err)), BG_OK);
	assert_memory_equal(&cfg, &def, sizeof(cfg));
}

static void
test_env_over_ini(void **state)
{
	struct bg_config cfg;
	char err[512] = "";
	char *const env[] = { "BAGOU_SERVER_WORKERS=7",
			      "BAGOU_SERVER_ORIGINS=https://env.example",
			      NULL };

	bg_config_defaults(&cfg);
	assert_int_equal(load_text(&cfg, "[server]\nworkers = 3\n"
				   "path = /ini\norigins = https://ini.example"
				   "\n", err, sizeof(err)), BG_OK);
	assert_int_equal(bg_config_load_env(&cfg, env, err, sizeof(err)),
			 BG_OK);
	assert_int_equal(cfg.workers, 7);
	assert_string_equal(cfg.path, "/ini");
	/* The environment replaces a list, it does not extend it. */
	assert_string_equal(cfg.origins, "https://env.example");
	/* The command line (bg_config_set after it) wins. */
	assert_int_equal(bg_config_set(&cfg, "server", "workers", "1", err,
				       sizeof(err)), BG_OK);
	assert_int_equal(cfg.workers, 1);
}

static void
test_env_errors(void **state)
{
	static const char *const cases[][2] = {
		{ "BAGOU_SERVER_LISTENS=*:1", "environment "
		  "BAGOU_SERVER_LISTENS: unknown key 'LISTENS' in [server]" },
		{ "BAGOU_AUTH_SECRETS=x", "environment BAGOU_AUTH_SECRETS: "
		  "unknown key 'SECRETS' in [auth]" },
		{ "BAGOU_HTTP_API=x", "environment BAGOU_HTTP_API: unknown key "
		  "'API' in [http]" },
		{ "BAGOU_LOG_LEVEL=loud", "environment BAGOU_LOG_LEVEL: [log] "
		  "level: expected debug, info, warn or error, got 'loud'" },
		{ "BAGOU_SERVER_LISTEN=nowhere", "environment "
		  "BAGOU_SERVER_LISTEN: [server] listen: expected HOST:PORT "
		  "(e.g. *:9000, 127.0.0.1:9000, [::1]:9000), got 'nowhere'" },
		{ "BAGOU_SERVER_ORIGINS=https://*", "environment "
		  "BAGOU_SERVER_ORIGINS: [server] origins: 'https://*': a '*' "
		  "may only stand for whole labels at the start of the host, "
		  "as in https://*.example.com" },
		{ "BAGOU_LIMITS_MAX_MESSAGE_SIZE=", "environment "
		  "BAGOU_LIMITS_MAX_MESSAGE_SIZE: [limits] max_message_size: "
		  "expected a size in bytes (16 to 67108864), got ''" },
	};
	struct bg_config cfg;
	char err[512];

	for (size_t i = 0; i < BG_ARRAY_LEN(cases); i++) {
		char *const env[] = { "BAGOU_BIN=x", (char *)cases[i][0],
				      NULL };

		assert_int_equal(env_load(&cfg, env, err, sizeof(err)),
				 BG_ERR);
		assert_string_equal(err, cases[i][1]);
	}
}

/* Every "[section] key" of the table is documented in etc/bagou.ini as a
 * "key = default" line under its section, and the ini has no other. */
static void
test_ini_documents_every_key(void **state)
{
	char line[512], section[64] = "", seen[256][136], want[136];
	const char *sec, *key;
	size_t n_seen = 0, n_keys = 0;
	FILE *fp = fopen("etc/bagou.ini", "r");

	assert_non_null(fp);
	while (fgets(line, sizeof(line), fp) != NULL) {
		char name[64];

		if (sscanf(line, "[%63[^]]]", section) == 1)
			continue;
		if (line[0] == ';' || line[0] == '#' || isspace(line[0]) ||
		    sscanf(line, "%63[a-z0-9_] =", name) != 1)
			continue;
		assert_true(n_seen < BG_ARRAY_LEN(seen));
		snprintf(seen[n_seen++], sizeof(seen[0]), "[%s] %s", section,
			 name);
	}
	fclose(fp);
	for (size_t i = 0; bg_config_key_at(i, &sec, &key); i++, n_keys++) {
		bool found = false;

		snprintf(want, sizeof(want), "[%s] %s", sec, key);
		for (size_t j = 0; j < n_seen && !found; j++)
			found = strcmp(seen[j], want) == 0;
		if (!found)
			fail_msg("%s is not documented in etc/bagou.ini",
				 want);
	}
	for (size_t j = 0; j < n_seen; j++) {
		bool found = false;

		for (size_t i = 0; bg_config_key_at(i, &sec, &key) && !found;
		     i++) {
			snprintf(want, sizeof(want), "[%s] %s", sec, key);
			found = strcmp(seen[j], want) == 0;
		}
		if (!found)
			fail_msg("etc/bagou.ini sets %s, not a key of the "
				 "table", seen[j]);
	}
	/* Each key once. */
	assert_int_equal(n_seen, n_keys);
}

/* static_dir and ca_file follow the ini file's folder like tls_*; the
 * credential keys read their file, from $CREDENTIALS_DIRECTORY when set. */
static void
test_relative_paths_and_credentials(void **state)
{
	struct bg_config cfg;
	char err[512] = "", cred[64], text[1024], want[256];
	FILE *fp;

	bg_config_defaults(&cfg);
	assert_int_equal(load_text(&cfg, "[http]\nstatic_dir = www\n"
		"[amqp]\nca_file = ca.pem\n", err, sizeof(err)), BG_OK);
	assert_string_equal(cfg.static_dir, "/tmp/www");
	assert_string_equal(cfg.amqp_ca_file, "/tmp/ca.pem");

	snprintf(cred, sizeof(cred), "bagou-test-cred-%d", (int)getpid());
	snprintf(want, sizeof(want), "/tmp/%s", cred);
	fp = fopen(want, "w");
	assert_non_null(fp);
	fputs("k3y-from-file\n", fp);
	fclose(fp);
	snprintf(text, sizeof(text), "[http]\napi_key_file = %s\n"
		 "[auth]\nsecret_file = %s\n", cred, want);
	setenv("CREDENTIALS_DIRECTORY", "/nonexistent", 1);
	bg_config_defaults(&cfg);
	/* Relative: looked up in $CREDENTIALS_DIRECTORY, not found there. */
	assert_int_equal(load_text(&cfg, text, err, sizeof(err)), BG_ERR);
	assert_non_null(strstr(err, ":2: [http] api_key_file: cannot read "
			       "'/nonexistent/bagou-test-cred-"));
	assert_non_null(strstr(err, "No such file or directory"));
	setenv("CREDENTIALS_DIRECTORY", "/tmp", 1);
	bg_config_defaults(&cfg);
	assert_int_equal(load_text(&cfg, text, err, sizeof(err)), BG_OK);
	assert_string_equal(cfg.api_key, "k3y-from-file");
	assert_string_equal(cfg.auth_secret, "k3y-from-file");
	unsetenv("CREDENTIALS_DIRECTORY");
	/* Without it: the ini's folder (/tmp as well). */
	bg_config_defaults(&cfg);
	assert_int_equal(load_text(&cfg, text, err, sizeof(err)), BG_OK);
	assert_string_equal(cfg.api_key, "k3y-from-file");
	snprintf(text, sizeof(text), "[http]\napi_key = x\n"
		 "api_key_file = %s\n", cred);
	expect_load_error(text, 3, "[http] api_key and api_key_file: set "
			  "one of them, not both");
	/* Any source reads the file (the environment, the command line). */
	bg_config_defaults(&cfg);
	assert_int_equal(bg_config_set(&cfg, "auth", "secret_file", want, err,
				       sizeof(err)), BG_OK);
	assert_string_equal(cfg.auth_secret, "k3y-from-file");
	assert_string_equal(cfg.auth_secret_file, want);
	expect_set_error("http", "api_key_file", "/nonexistent/k",
			 "[http] api_key_file: cannot read '/nonexistent/k': "
			 "No such file or directory");
	unlink(want);
}

/* bg_config_load_text: the file loader's checks, over text in memory. */
static void
test_load_text(void **state)
{
	static const char good[] = "[server]\nworkers = 3\n";
	static const char bad[] = "[server]\nworkers = 3\n  path = /x\n";
	struct bg_config cfg;
	char err[256];

	bg_config_defaults(&cfg);
	assert_int_equal(bg_config_load_text(&cfg, good, sizeof(good) - 1,
					     "mem.ini", err, sizeof(err)),
			 BG_OK);
	assert_int_equal(cfg.workers, 3);
	assert_int_equal(bg_config_load_text(&cfg, "", 0, "mem.ini", err,
					     sizeof(err)), BG_OK);
	assert_int_equal(bg_config_load_text(&cfg, bad, sizeof(bad) - 1,
					     "mem.ini", err, sizeof(err)),
			 BG_ERR);
	assert_string_equal(err, "mem.ini:3: indented line: only list keys "
			    "(origins, lifecycle) may go on over indented "
			    "lines");
}

/* The reload keys (issue 11): [server] drain_delay, [auth]
 * previous_secret (needs secret), [log] file (relative to the ini). */
static void
test_reload_keys(void **state)
{
	struct bg_config cfg;
	char err[512] = "";

	bg_config_defaults(&cfg);
	assert_int_equal(cfg.drain_delay, 0);
	assert_string_equal(cfg.auth_previous_secret, "");
	assert_string_equal(cfg.log_file, "");
	assert_int_equal(load_text(&cfg,
		"[server]\n"
		"drain_delay = 300\n"
		"[auth]\n"
		"secret = new\n"
		"previous_secret = old\n"
		"[log]\n"
		"file = logs/bagou.log\n", err, sizeof(err)), BG_OK);
	assert_int_equal(cfg.drain_delay, 300);
	assert_string_equal(cfg.auth_previous_secret, "old");
	assert_string_equal(cfg.log_file, "/tmp/logs/bagou.log");
	assert_int_equal(bg_config_validate(&cfg, err, sizeof(err)), BG_OK);
	expect_set_error("server", "drain_delay", "301", "[server] "
			 "drain_delay: expected an integer from 0 to 300, "
			 "got '301'");
	cfg.auth_secret[0] = '\0';
	assert_int_equal(bg_config_validate(&cfg, err, sizeof(err)), BG_ERR);
	assert_string_equal(err, "[auth] previous_secret needs [auth] secret "
			    "(the new one)");
}

/* [log] format and access (issue 11 item 5). */
static void
test_log_format_access(void **state)
{
	struct bg_config cfg;
	char err[256];

	(void)state;
	bg_config_defaults(&cfg);
	assert_int_equal(cfg.log_format, BG_LOG_TEXT);
	assert_false(cfg.log_access);
	assert_int_equal(load_text(&cfg, "[log]\nformat = json\naccess = yes\n",
				   err, sizeof(err)), BG_OK);
	assert_int_equal(cfg.log_format, BG_LOG_JSON);
	assert_true(cfg.log_access);
	bg_config_defaults(&cfg);
	assert_int_equal(load_text(&cfg, "[log]\nformat = xml\n", err,
				   sizeof(err)), BG_ERR);
	assert_non_null(strstr(err, "text or json"));
	bg_config_defaults(&cfg);
	assert_int_equal(load_text(&cfg, "[log]\naccess = maybe\n", err,
				   sizeof(err)), BG_ERR);
}

/* [history]: defaults, every key, and a bad regex refused with its
 * reason (the bus compiles it again at start and must not fail). */
static void
test_history_keys(void **state)
{
	struct bg_config cfg;
	char err[512] = "";

	bg_config_defaults(&cfg);
	assert_string_equal(cfg.history_channels, "");
	assert_int_equal(cfg.history_size, 100);
	assert_int_equal(cfg.history_ttl, 300);
	assert_string_equal(cfg.history_stream, "bagou.history");
	assert_int_equal(cfg.history_max_age, 3600);
	assert_int_equal(load_text(&cfg, "[history]\n"
		"channels = ^(chat|news)-\nsize = 5\nttl = 60\n"
		"stream = app.log\nmax_age = 86400\n", err, sizeof(err)),
		BG_OK);
	assert_string_equal(cfg.history_channels, "^(chat|news)-");
	assert_int_equal(cfg.history_size, 5);
	assert_int_equal(cfg.history_ttl, 60);
	assert_string_equal(cfg.history_stream, "app.log");
	assert_int_equal(cfg.history_max_age, 86400);
	expect_set_error("history", "channels", "(chat",
			 "[history] channels: not a valid extended regular "
			 "expression: Unmatched ( or \\(");
	expect_set_error("history", "size", "0",
			 "[history] size: expected an integer from 1 to "
			 "100000, got '0'");
	expect_set_error("history", "stream", "",
			 "[history] stream: must not be empty");
}

/* [presence] prefix, timeout and max_members (issue 13 item 1). */
static void
test_presence_keys(void **state)
{
	struct bg_config cfg;
	char err[256] = "";

	(void)state;
	bg_config_defaults(&cfg);
	assert_string_equal(cfg.presence_prefix, "presence-");
	assert_int_equal(cfg.presence_timeout, 15);
	assert_int_equal(cfg.presence_max_members, 10000);
	assert_int_equal(load_text(&cfg,
		"[presence]\n"
		"prefix = here-\n"
		"timeout = 3\n"
		"max_members = 2\n", err, sizeof(err)), BG_OK);
	assert_string_equal(cfg.presence_prefix, "here-");
	assert_int_equal(cfg.presence_timeout, 3);
	assert_int_equal(cfg.presence_max_members, 2);
	assert_int_equal(bg_config_set(&cfg, "presence", "prefix", "", err,
				       sizeof(err)), BG_OK);
	assert_string_equal(cfg.presence_prefix, "");
	expect_set_error("presence", "timeout", "0", "[presence] timeout: "
			 "expected an integer from 1 to 3600, got '0'");
	expect_set_error("presence", "max_members", "0", "[presence] "
			 "max_members: expected an integer from 1 to "
			 "10000000, got '0'");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_shipped_ini),
		cmocka_unit_test(test_every_key),
		cmocka_unit_test(test_set_values),
		cmocka_unit_test(test_sizes),
		cmocka_unit_test(test_bad_sizes),
		cmocka_unit_test(test_bad_ints),
		cmocka_unit_test(test_bad_strings),
		cmocka_unit_test(test_listen_forms),
		cmocka_unit_test(test_listen_errors),
		cmocka_unit_test(test_set_unknown),
		cmocka_unit_test(test_load_value_errors),
		cmocka_unit_test(test_load_unknown),
		cmocka_unit_test(test_load_duplicate),
		cmocka_unit_test(test_load_syntax),
		cmocka_unit_test(test_load_ok_forms),
		cmocka_unit_test(test_load_missing),
		cmocka_unit_test(test_validate),
		cmocka_unit_test(test_small_err_buffer),
		cmocka_unit_test(test_tls_keys),
		cmocka_unit_test(test_api_listen),
		cmocka_unit_test(test_list_multiline),
		cmocka_unit_test(test_list_repeated),
		cmocka_unit_test(test_list_long),
		cmocka_unit_test(test_origin_match),
		cmocka_unit_test(test_origin_wildcard_errors),
		cmocka_unit_test(test_env_overrides),
		cmocka_unit_test(test_env_over_ini),
		cmocka_unit_test(test_env_errors),
		cmocka_unit_test(test_ini_documents_every_key),
		cmocka_unit_test(test_relative_paths_and_credentials),
		cmocka_unit_test(test_load_text),
		cmocka_unit_test(test_reload_keys),
		cmocka_unit_test(test_log_format_access),
		cmocka_unit_test(test_history_keys),
		cmocka_unit_test(test_presence_keys),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
