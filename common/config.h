/*
 * config.h - the server's configuration: defaults, etc/bagou.ini (inih),
 * command-line overrides, validation.
 *
 * Pure: no threads, no sockets. The main thread fills one struct bg_config
 * at start-up; after the threads start it is immutable and every thread may
 * read it without a lock.
 */
#ifndef BG_CONFIG_H
#define BG_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#define BG_CONFIG_STR 256

enum bg_publish_policy {
	BG_PUBLISH_NONE,        /* clients may not publish (default) */
	BG_PUBLISH_SUBSCRIBED,  /* only to channels they are subscribed to */
	BG_PUBLISH_ALL,         /* to any channel */
};

/* [forward] lifecycle: which events are forwarded after they happen. */
#define BG_FORWARD_OPEN        (1u << 0)
#define BG_FORWARD_CLOSE       (1u << 1)
#define BG_FORWARD_SUBSCRIBE   (1u << 2)
#define BG_FORWARD_UNSUBSCRIBE (1u << 3)
#define BG_FORWARD_STORE       (1u << 4)
#define BG_FORWARD_AUTHENTICATE (1u << 5)

struct bg_config {
	/* [server] */
	char listen_host[BG_CONFIG_STR]; /* "0.0.0.0" */
	int listen_port;                 /* 9000 */
	int workers;                     /* 0 = number of online cores */
	char path[BG_CONFIG_STR];        /* WebSocket path, "/websocket" */
	int max_connections;             /* per node, every accepted socket;
	                                    0 = from RLIMIT_NOFILE (main.c) */
	int ping_interval;               /* seconds between lws pings, 0=off */
	char origins[1024];              /* allowed Origins, comma-separated;
	                                    "" = any */
	char tls_cert[1024];             /* PEM certificate (+ chain) of the
	                                    public listener; "" = plain */
	char tls_key[1024];              /* PEM private key of tls_cert */
	char tls_ca[1024];               /* PEM intermediates sent after
	                                    tls_cert; "" = none */

	/* [limits] */
	size_t max_message_size;         /* 65536 */
	int max_subscriptions;           /* 1000 per connection */
	size_t max_store_bytes;          /* 4096 */
	size_t max_queued_bytes;         /* 1048576 per connection */
	int rate;                        /* client messages/s, 0 = no limit */
	int burst;                       /* messages allowed at once */
	size_t max_connection_memory;    /* per connection budget, 1m */
	int max_handshakes;              /* sockets not yet WebSockets, 1024;
	                                    0 = only max_connections */
	int max_per_address;             /* sockets per peer address (IPv6:
	                                    per /64), 256; 0 = off */
	bool limit_loopback;             /* max_per_address applies to
	                                    loopback peers too; false */
	int handshake_timeout;           /* seconds, 10; 0 = off */
	int backpressure;                /* 50: % of a worker's connections
	                                    backed up before broadcasts are
	                                    refused; 0 = never */
	int close_timeout;               /* s for the close handshake, 5 */
	int max_fragments;               /* frames in one message, 1024 */
	int fragment_timeout;            /* s to finish a fragmented
	                                    message, 30 */

	/* [channels] */
	int client_publish;              /* enum bg_publish_policy, none */

	/* [amqp] */
	char amqp_url[1024];             /* "amqp://guest:guest@localhost:5672/"
	                                    or "none" */
	char amqp_exchange[BG_CONFIG_STR]; /* topic exchange, "bagou" */
	char amqp_queue[BG_CONFIG_STR];  /* legacy durable queue, "" = off */
	int amqp_prefetch;               /* unacked deliveries, 1000 */
	int amqp_heartbeat;              /* seconds, 30; 0 = off */
	char amqp_ca_file[1024];         /* CA bundle for amqps:// */

	/* [auth] */
	char auth_secret[BG_CONFIG_STR]; /* HS256 secret; "" = no tokens */
	char private_prefix[BG_CONFIG_STR]; /* "private-" */

	/* [forward] */
	char forward_exchange[BG_CONFIG_STR]; /* "" = no forwarding */
	unsigned int forward_lifecycle;  /* BG_FORWARD_* bits */

	/* [http] */
	char api_key[BG_CONFIG_STR];     /* Bearer key for POST /broadcast
	                                    and the API listener; "" = none */
	char static_dir[1024];           /* files served at /static/; "" = off */
	char api_host[BG_CONFIG_STR];    /* API listener, "127.0.0.1" */
	int api_port;                    /* 9001; 0 = no API listener */
	int body_timeout;                /* seconds for a whole request, 10 */

	/* [log] */
	int log_level;                   /* enum bg_log_level, info */
	int log_format;                  /* enum bg_log_format, text */
	bool log_access;                 /* HTTP access log, no */
};

/* Fills every field with its documented default. */
void bg_config_defaults(struct bg_config *cfg);

/*
 * Sets one key. section/key as in the ini file. Returns BG_OK, or BG_ERR
 * with a message in err ("unknown key 'x' in section [y]", "workers: must
 * be an integer from 0 to 1024", ...). Used by the ini loader and the CLI.
 */
int bg_config_set(struct bg_config *cfg, const char *section,
		  const char *key, const char *value, char *err, size_t errlen);

/*
 * Loads an ini file over cfg. Returns BG_OK, or BG_ERR with err set to
 * "FILE:LINE: message" (or "FILE: cannot open: strerror") ; on error cfg
 * may be partly changed. Relative [server] tls_* paths set in the file are
 * made relative to the file's folder.
 */
int bg_config_load(struct bg_config *cfg, const char *path, char *err,
		   size_t errlen);

/*
 * Checks cross-field rules after all sources were applied. BG_OK or BG_ERR
 * with err set.
 */
int bg_config_validate(const struct bg_config *cfg, char *err,
		       size_t errlen);

/* True when amqp_url is "none" (standalone mode). */
bool bg_config_standalone(const struct bg_config *cfg);

#endif
