/*
 * reload.h - SIGHUP and SIGUSR1: the configuration read again and applied
 * live, and the log file reopened.
 *
 * Threads: main thread only (main.c calls these from its sigwait loop).
 * Other threads see the result through bg_server_cfg (server.h), whose
 * rules say when a replaced config may be freed (bg_reload_reclaim).
 */
#ifndef BG_RELOAD_H
#define BG_RELOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/config.h"

struct bg_server;

/* One command-line option that overrides the file ("--flag"). */
struct bg_cli_override {
	const char *flag, *section, *key, *value;
};

struct bg_reload {
	const char *path;               /* the ini file */
	bool use_file;                  /* false: built-in defaults only */
	const struct bg_cli_override *ov; /* re-applied over the file */
	int n_ov;
	long nofile;                    /* RLIMIT_NOFILE, for max_connections
	                                   = 0 */
	/* owned, main thread: configs a reload published, the one in force
	 * included until replaced, each with the cfg_gen that retired it
	 * (0: still in force) */
	struct bg_retired {
		struct bg_config *cfg;
		uint64_t gen;
	} *retired;
	size_t n_retired;
};

/*
 * Makes cfg's automatic values numbers: workers = 0 (all cores), and
 * max_connections = 0 (from nofile, for `running` workers: the count in
 * force, since a new one needs a restart; 0 = cfg's own). Main thread.
 */
void bg_reload_settle(struct bg_config *cfg, long nofile, int running);

/*
 * Reads the ini again (with the command-line overrides), and when it is
 * valid publishes it in srv->cfg: every key that changed is logged, live
 * ones take effect for what comes next (new connections, messages,
 * requests, tokens, log lines); a key that needs a restart is logged as
 * such and keeps its running value. A bad ini is refused, with its
 * FILE:LINE error logged, and the running config stays. BG_OK or BG_ERR.
 */
int bg_reload_config(struct bg_reload *r, struct bg_server *srv);

/*
 * Opens path for appending (created 0640) and makes it the process's
 * stderr, where the log goes; "" leaves stderr alone. BG_OK, or BG_ERR
 * with err set, stderr unchanged. Any moment; writers never see a closed
 * descriptor (dup2 replaces it atomically).
 */
int bg_reload_log_open(const char *path, char *err, size_t errlen);

/*
 * Frees the replaced configs that no thread can read any more: every slot
 * of srv->cfg_seen has passed the generation that retired them (server.h).
 * Returns how many replaced configs are still waiting. Main thread.
 */
size_t bg_reload_reclaim(struct bg_reload *r, struct bg_server *srv);

/* Frees every config a reload made. Main thread, once every other thread
 * is joined. */
void bg_reload_free(struct bg_reload *r);

#endif
