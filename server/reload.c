/*
 * reload.c - owns the SIGHUP configuration reload (a fresh struct
 * bg_config, compared key by key with the running one, then published)
 * and the log file (re)opening. Main thread only.
 */
#include "server/reload.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/bg.h"
#include "common/log.h"
#include "server/acceptor.h"
#include "server/server.h"

extern char **environ;

enum kind { K_STR, K_SECRET, K_INT, K_SIZE, K_BOOL, K_UINT };

/* Every key of struct bg_config, and whether a change applies live. */
struct field {
	const char *name;               /* "[section] key" */
	size_t off, size;
	enum kind kind;
	bool live;
};

#define F(name, f, kind, live) { name, offsetof(struct bg_config, f), \
	sizeof(((struct bg_config *)0)->f), kind, live }

static const struct field fields[] = {
	F("[server] listen (host)", listen_host, K_STR, false),
	F("[server] listen (port)", listen_port, K_INT, false),
	F("[server] workers", workers, K_INT, false),
	F("[server] path", path, K_STR, false),
	F("[server] max_connections", max_connections, K_INT, true),
	F("[server] ping_interval", ping_interval, K_INT, false),
	F("[server] origins", origins, K_STR, true),
	F("[server] tls_cert", tls_cert, K_STR, false),
	F("[server] tls_key", tls_key, K_STR, false),
	F("[server] tls_ca", tls_ca, K_STR, false),
	F("[server] drain_delay", drain_delay, K_INT, true),
	F("[limits] max_message_size", max_message_size, K_SIZE, true),
	F("[limits] max_subscriptions", max_subscriptions, K_INT, true),
	F("[limits] max_store_bytes", max_store_bytes, K_SIZE, true),
	F("[limits] max_queued_bytes", max_queued_bytes, K_SIZE, true),
	F("[limits] rate", rate, K_INT, true),
	F("[limits] burst", burst, K_INT, true),
	F("[limits] max_connection_memory", max_connection_memory, K_SIZE,
	  true),
	F("[limits] max_handshakes", max_handshakes, K_INT, true),
	F("[limits] max_per_address", max_per_address, K_INT, true),
	F("[limits] limit_loopback", limit_loopback, K_BOOL, true),
	F("[limits] handshake_timeout", handshake_timeout, K_INT, true),
	F("[limits] backpressure", backpressure, K_INT, true),
	F("[limits] close_timeout", close_timeout, K_INT, false),
	F("[limits] max_fragments", max_fragments, K_INT, true),
	F("[limits] fragment_timeout", fragment_timeout, K_INT, true),
	F("[channels] client_publish", client_publish, K_INT, true),
	F("[amqp] url", amqp_url, K_SECRET, false),
	F("[amqp] exchange", amqp_exchange, K_STR, false),
	F("[amqp] queue", amqp_queue, K_STR, false),
	F("[amqp] prefetch", amqp_prefetch, K_INT, false),
	F("[amqp] heartbeat", amqp_heartbeat, K_INT, false),
	F("[amqp] ca_file", amqp_ca_file, K_STR, false),
	F("[amqp] bindings", amqp_bind_all, K_BOOL, false),
	F("[auth] secret", auth_secret, K_SECRET, true),
	F("[auth] previous_secret", auth_previous_secret, K_SECRET, true),
	F("[auth] private_prefix", private_prefix, K_STR, true),
	F("[auth] secret_file", auth_secret_file, K_STR, true),
	F("[forward] exchange", forward_exchange, K_STR, false),
	F("[forward] lifecycle", forward_lifecycle, K_UINT, true),
	F("[http] api_key", api_key, K_SECRET, true),
	F("[http] static_dir", static_dir, K_STR, false),
	F("[http] api_listen (host)", api_host, K_STR, false),
	F("[http] api_listen (port)", api_port, K_INT, false),
	F("[http] body_timeout", body_timeout, K_INT, true),
	F("[http] api_key_file", api_key_file, K_STR, true),
	F("[log] level", log_level, K_INT, true),
	F("[log] file", log_file, K_STR, true),
	F("[log] format", log_format, K_INT, true),
	F("[log] access", log_access, K_BOOL, true),
	/* Read at each use on the bus thread: the next heartbeat, expiry
	 * check and query take the new values. */
	F("[cluster] heartbeat", cluster_heartbeat, K_INT, true),
	F("[cluster] timeout", cluster_timeout, K_INT, true),
	F("[cluster] query_timeout", cluster_query_timeout, K_INT, true),
	/* The bus thread compiles the regex and sizes its store at start;
	 * the stream's arguments are fixed when RabbitMQ declares it. */
	F("[history] channels", history_channels, K_STR, false),
	F("[history] size", history_size, K_INT, false),
	F("[history] ttl", history_ttl, K_INT, false),
	F("[history] stream", history_stream, K_STR, false),
	F("[history] max_age", history_max_age, K_INT, false),
	F("[presence] prefix", presence_prefix, K_STR, false),
	F("[presence] timeout", presence_timeout, K_INT, true),
	F("[presence] max_members", presence_max_members, K_INT, true),
};

static void
show(const struct field *f, const struct bg_config *cfg, char *out,
     size_t len)
{
	const char *p = (const char *)cfg + f->off;

	switch (f->kind) {
	case K_STR:
		snprintf(out, len, "'%s'", p);
		break;
	case K_SECRET:
		snprintf(out, len, "%s", p[0] ? "(set)" : "(empty)");
		break;
	case K_INT:
		snprintf(out, len, "%d", *(const int *)(const void *)p);
		break;
	case K_UINT:
		snprintf(out, len, "0x%x",
			 *(const unsigned int *)(const void *)p);
		break;
	case K_SIZE:
		snprintf(out, len, "%zu", *(const size_t *)(const void *)p);
		break;
	case K_BOOL:
		snprintf(out, len, "%s", *(const bool *)(const void *)p ?
			 "true" : "false");
		break;
	}
}

void
bg_reload_settle(struct bg_config *cfg, long nofile, int running)
{
	if (cfg->workers == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		cfg->workers = n > 0 ? (int)n : 1;
	}
	if (cfg->max_connections == 0)
		cfg->max_connections = bg_acceptor_auto_max(nofile,
			running > 0 ? running : cfg->workers);
}

/* Logs what differs; restart-only keys get their running value back.
 * Returns how many live keys changed. A key missing from fields[] that
 * changed counts as live, with a warning (both structs start from
 * bg_config_defaults' zeroed memory, so memcmp sees only real changes). */
static int
compare(const struct bg_config *old, struct bg_config *cfg)
{
	struct bg_config *rest = malloc(sizeof(*rest));
	char a[160], b[160];
	int live = 0;

	if (rest != NULL) {
		memcpy(rest, cfg, sizeof(*rest));
		for (size_t i = 0; i < BG_ARRAY_LEN(fields); i++)
			memcpy((char *)rest + fields[i].off,
			       (const char *)old + fields[i].off,
			       fields[i].size);
		if (memcmp(rest, old, sizeof(*rest)) != 0) {
			bg_log_warn("reload: a key that server/reload.c does "
				    "not list changed; it applies as read");
			live++;
		}
		free(rest);
	}

	for (size_t i = 0; i < BG_ARRAY_LEN(fields); i++) {
		const struct field *f = &fields[i];
		char *p = (char *)cfg + f->off;
		const char *q = (const char *)old + f->off;
		bool same = f->kind == K_STR || f->kind == K_SECRET ?
			    strcmp(p, q) == 0 : memcmp(p, q, f->size) == 0;

		if (same)
			continue;
		show(f, old, a, sizeof(a));
		show(f, cfg, b, sizeof(b));
		if (f->live) {
			bg_log_info("reload: %s changed: %s -> %s", f->name,
				    a, b);
			live++;
			continue;
		}
		bg_log_warn("reload: %s changed (%s -> %s): needs a restart; "
			    "%s stays in force", f->name, a, b, a);
		memcpy(p, q, f->size);
	}
	return live;
}

int
bg_reload_config(struct bg_reload *r, struct bg_server *srv)
{
	const struct bg_config *old = bg_server_cfg(srv);
	struct bg_retired *more;
	struct bg_config *cfg;
	uint64_t gen;
	char err[512];

	cfg = malloc(sizeof(*cfg));
	more = realloc(r->retired, (r->n_retired + 1) * sizeof(*more));
	if (cfg == NULL || more == NULL) {
		free(cfg);
		if (more != NULL)
			r->retired = more;
		bg_log_error("reload: out of memory; the running "
			     "configuration stays");
		return BG_ERR;
	}
	r->retired = more;
	bg_config_defaults(cfg);
	if (r->use_file &&
	    bg_config_load(cfg, r->path, err, sizeof(err)) != BG_OK)
		goto refuse;
	/* The same precedence as at start-up: file < environment < CLI. */
	if (bg_config_load_env(cfg, environ, err, sizeof(err)) != BG_OK)
		goto refuse;
	for (int i = 0; i < r->n_ov; i++) {
		char msg[400];

		if (bg_config_set(cfg, r->ov[i].section, r->ov[i].key,
				  r->ov[i].value, msg, sizeof(msg)) != BG_OK) {
			snprintf(err, sizeof(err), "--%s: %s", r->ov[i].flag,
				 msg);
			goto refuse;
		}
	}
	if (bg_config_validate(cfg, err, sizeof(err)) != BG_OK) {
		/* A rule across keys has no single line: name the file. */
		bg_log_error("reload refused, the running configuration "
			     "stays: %s: %s", r->use_file ? r->path :
			     "(built-in defaults)", err);
		free(cfg);
		return BG_ERR;
	}
	bg_reload_settle(cfg, r->nofile, old->workers);
	/* The reload's own lines show at the lower of both levels. */
	if (cfg->log_level < old->log_level)
		bg_log_set_level((enum bg_log_level)cfg->log_level);
	if (compare(old, cfg) == 0) {
		bg_log_info("reload: %s read again, nothing that applies "
			    "live changed", r->use_file ? r->path :
			    "(built-in defaults)");
		free(cfg);
		return BG_OK;
	}
	if (strcmp(cfg->log_file, old->log_file) != 0 &&
	    bg_reload_log_open(cfg->log_file, err, sizeof(err)) != BG_OK) {
		bg_log_error("reload: [log] file: %s; the log stays where it "
			     "was", err);
		snprintf(cfg->log_file, sizeof(cfg->log_file), "%s",
			 old->log_file);
	}
	bg_server_cfg_publish(srv, cfg);
	/* Readers may still hold old for the rest of a callback: it is freed
	 * once every thread has seen this generation (bg_reload_reclaim). */
	gen = __atomic_add_fetch(&srv->cfg_gen, 1, __ATOMIC_SEQ_CST);
	for (size_t i = 0; i < r->n_retired; i++)
		if (r->retired[i].cfg == old)
			r->retired[i].gen = gen;
	r->retired[r->n_retired++] = (struct bg_retired){ cfg, 0 };
	bg_log_info("reload: %s applied", r->use_file ? r->path :
		    "(built-in defaults)");
	bg_log_set_level((enum bg_log_level)cfg->log_level);
	bg_log_set_format((enum bg_log_format)cfg->log_format);
	return BG_OK;
refuse:
	bg_log_error("reload refused, the running configuration stays: %s",
		     err);
	free(cfg);
	return BG_ERR;
}

int
bg_reload_log_open(const char *path, char *err, size_t errlen)
{
	int fd;

	if (path[0] == '\0')
		return BG_OK;
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return BG_ERR;
	}
	if (fd != STDERR_FILENO) {
		if (dup2(fd, STDERR_FILENO) < 0) {
			snprintf(err, errlen, "%s: dup2: %s", path,
				 strerror(errno));
			close(fd);
			return BG_ERR;
		}
		close(fd);
	}
	return BG_OK;
}

size_t
bg_reload_reclaim(struct bg_reload *r, struct bg_server *srv)
{
	uint64_t seen = UINT64_MAX;
	size_t kept = 0, waiting = 0;

	for (int i = 0; i < BG_SEEN_SLOTS(srv->n_workers); i++) {
		uint64_t s = __atomic_load_n(&srv->cfg_seen[i],
					     __ATOMIC_ACQUIRE);
		if (s < seen)
			seen = s;
	}
	for (size_t i = 0; i < r->n_retired; i++) {
		struct bg_retired *e = &r->retired[i];

		if (e->gen != 0 && e->gen <= seen) {
			bg_log_debug("reload: the config replaced at "
				     "generation %llu is freed (no thread can "
				     "read it)", (unsigned long long)e->gen);
			free(e->cfg);
			continue;
		}
		waiting += e->gen != 0;
		r->retired[kept++] = *e;
	}
	r->n_retired = kept;
	return waiting;
}

void
bg_reload_free(struct bg_reload *r)
{
	for (size_t i = 0; i < r->n_retired; i++)
		free(r->retired[i].cfg);
	free(r->retired);
	r->retired = NULL;
	r->n_retired = 0;
}
