/*
 * config.h - the server's configuration: defaults, etc/bagou.ini (inih),
 * command-line overrides, validation.
 *
 * Pure: no threads, no sockets. The main thread fills one struct bg_config
 * at start-up, and a new one on each SIGHUP; once published (server.h,
 * bg_server_cfg) a struct bg_config is immutable and every thread may read
 * it without a lock.
 */
#ifndef BG_CONFIG_H
#define BG_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#define BG_CONFIG_STR 256
#define BG_CONFIG_ORIGINS 8192  /* [server] origins, bytes with its NUL */

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
	char origins[BG_CONFIG_ORIGINS]; /* allowed Origins, comma-separated;
	                                    "" = any; see
	                                    bg_config_origin_allowed */
	char tls_cert[1024];             /* PEM certificate (+ chain) of the
	                                    public listener; "" = plain */
	char tls_key[1024];              /* PEM private key of tls_cert */
	char tls_ca[1024];               /* PEM intermediates sent after
	                                    tls_cert; "" = none */
	int drain_delay;                 /* s /health answers 503 "draining"
	                                    after SIGTERM before closing, 0 */

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
	bool amqp_bind_all;              /* [amqp] bindings = all: "#"; else
	                                    per channel (default) */

	/* [auth] */
	char auth_secret[BG_CONFIG_STR]; /* HS256 secret; "" = no tokens */
	char auth_previous_secret[BG_CONFIG_STR]; /* also accepted, for
	                                    rotation; "" = none */
	char private_prefix[BG_CONFIG_STR]; /* "private-" */
	char auth_secret_file[1024];     /* file secret was read from (by
	                                    bg_config_set); "" = none */

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
	char api_key_file[1024];         /* file api_key was read from (by
	                                    bg_config_set); "" = none */

	/* [log] */
	int log_level;                   /* enum bg_log_level, info */
	char log_file[1024];             /* append here; "" = stderr */
	int log_format;                  /* enum bg_log_format, text */
	bool log_access;                 /* HTTP access log, no */

	/* [cluster] */
	int cluster_heartbeat;           /* s between node heartbeats, 2 */
	int cluster_timeout;             /* s of silence: node dead, 15 */
	int cluster_query_timeout;       /* s a cluster-wide query waits
	                                    for the other nodes, 2 */


	/* [history] (PROTOCOL.md, history and recovery) */
	char history_channels[1024];     /* POSIX extended regex of the
	                                    channels that keep history;
	                                    "" = none */
	int history_size;                /* publications kept per channel in
	                                    memory, 100 */
	int history_ttl;                 /* s a publication stays in memory,
	                                    300 */
	char history_stream[BG_CONFIG_STR]; /* RabbitMQ stream queue,
	                                    "bagou.history" */
	int history_max_age;             /* s the stream keeps, 3600 */
	/* [presence] */
	char presence_prefix[BG_CONFIG_STR]; /* "presence-"; "" = none */
	int presence_timeout;            /* s before a silent node's members
	                                    leave, 15 */
	int presence_max_members;        /* users per channel, 10000 */
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
 * may be partly changed. Relative paths set in the file (tls_*, static_dir,
 * ca_file, [log] file) are made relative to the file's folder. The
 * credential keys
 * ([http] api_key_file, [auth] secret_file) name a file whose content
 * (one line) becomes api_key / secret; a relative name is looked up in
 * $CREDENTIALS_DIRECTORY (systemd's LoadCredential=) when that is set,
 * else in the file's folder. bg_config_set reads such a file at once, so
 * every source (file, environment, reload) reads it, and a relative name
 * set outside a file without $CREDENTIALS_DIRECTORY is relative to the
 * working directory.
 */
int bg_config_load(struct bg_config *cfg, const char *path, char *err,
		   size_t errlen);

/*
 * The same from len bytes of ini text in memory (NUL bytes allowed; text
 * is only read), name standing for the path in messages. Pure: the config
 * fuzzer's entry point.
 */
int bg_config_load_text(struct bg_config *cfg, const char *text, size_t len,
			const char *name, char *err, size_t errlen);

/*
 * Applies the environment overrides in envp (NULL-terminated "NAME=value"
 * strings, e.g. environ) over cfg: BAGOU_<SECTION>_<KEY>=value sets
 * "[section] key" (names matched case-insensitively). Variables that name
 * no known section (BAGOU_BIN, ...) and BAGOU_HTTP_URL (the client tools'
 * own) are ignored. Returns BG_OK, or BG_ERR with err set to
 * "environment NAME: message" for a known section with an unknown key or
 * a bad value. Precedence: defaults < ini < environment < command line.
 */
int bg_config_load_env(struct bg_config *cfg, char *const *envp, char *err,
		       size_t errlen);

/*
 * True when origin (an Origin header) is allowed by list ([server]
 * origins, non-empty): an entry equal to it (case-insensitive), or a
 * wildcard entry, SCHEME "://" "*." DOMAIN [":" PORT], that it matches
 * with one or more labels in place of the '*' and the same scheme and
 * port (none if the entry has none).
 */
bool bg_config_origin_allowed(const char *list, const char *origin);

/*
 * The i-th "[section] key" of the table (for tests and tools): true and
 * *section, *key set, or false past the last.
 */
bool bg_config_key_at(size_t i, const char **section, const char **key);

/*
 * Checks cross-field rules after all sources were applied. BG_OK or BG_ERR
 * with err set.
 */
int bg_config_validate(const struct bg_config *cfg, char *err,
		       size_t errlen);

/* True when amqp_url is "none" (standalone mode). */
bool bg_config_standalone(const struct bg_config *cfg);

#endif
