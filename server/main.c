/*
 * main.c - bagou-server: parse the command line, load the configuration,
 * start the bus, workers and acceptor, wait for a signal, stop in order.
 * Main thread only; every other thread starts with signals blocked, so
 * SIGTERM/SIGINT (stop, after [server] drain_delay), SIGHUP (reload the
 * configuration and the TLS certificate: reload.c) and SIGUSR1 (reopen
 * the log file) arrive here through sigwait.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <libwebsockets.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "amqp/bus.h"
#include "amqp/control.h"
#include "common/bg.h"
#include "common/config.h"
#include "common/log.h"
#include "common/notify.h"
#include "handlers/handlers.h"
#include "server/acceptor.h"
#include "server/api.h"
#include "server/asset.h"
#include "server/evmem.h"
#include "server/cmd.h"
#include "server/presence.h"
#include "server/reload.h"
#include "server/server.h"
#include "server/sink.h"
#include "server/tls.h"
#include "server/worker.h"

#define DEFAULT_CONFIG "etc/bagou.ini"
#define EXIT_USAGE 2

static void
usage(FILE *out)
{
	fprintf(out,
"usage: bagou-server [options]\n"
"  -w, --workers N        worker threads (default: number of cores)\n"
"  -c, --config FILE      configuration file (default: " DEFAULT_CONFIG
" if present)\n"
"  -l, --listen HOST:PORT address to listen on (default 0.0.0.0:9000)\n"
"      --api-listen HOST:PORT  the API listener (POST /broadcast, /metrics;\n"
"                         default 127.0.0.1:9001; \"\" disables it)\n"
"  -a, --amqp-url URL     amqp://user:pass@host:5672/vhost, or none\n"
"  -L, --log-level LEVEL  debug, info, warn or error\n"
"      --check-config     validate the configuration and exit\n"
"  -V, --version          print the version and exit\n"
"  -h, --help             this help\n"
"Precedence: built-in defaults < the configuration file < environment\n"
"variables BAGOU_<SECTION>_<KEY> (e.g. BAGOU_SERVER_LISTEN=*:9000)\n"
"< command-line options.\n");
}

/* Any client can make lws log (a bad request, a reset): throttled. */
static void
lws_log(int level, const char *line)
{
	static struct bg_log_throttle throttle =
		BG_LOG_THROTTLE("libwebsockets", 10);
	size_t n = strlen(line);

	/* lws lines end with a newline; ours add their own. */
	while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		n--;
	bg_log_throttled(&throttle, level == LLL_ERR ? BG_LOG_ERROR :
			 BG_LOG_WARN, "libwebsockets: %.*s", (int)n, line);
}

static void
make_node_id(char out[17])
{
	uint8_t r[8];
	struct timespec ts;

	if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r)) {
		/* Unique enough for ids even without the entropy pool. */
		clock_gettime(CLOCK_REALTIME, &ts);
		uint64_t v = (uint64_t)ts.tv_nsec ^
			     ((uint64_t)ts.tv_sec << 20) ^
			     ((uint64_t)getpid() << 40);
		memcpy(r, &v, sizeof(r));
	}
	for (int i = 0; i < 8; i++)
		snprintf(out + 2 * i, 3, "%02x", r[i]);
}

extern char **environ;

/* Loads the file, the environment and the command-line overrides into
 * cfg, in that order; exits on error. */
static void
load_config(struct bg_config *cfg, const char *path, bool path_given,
	    const struct bg_cli_override *ov, int n_ov)
{
	char err[512];

	bg_config_defaults(cfg);
	if (path_given || access(path, F_OK) == 0) {
		if (bg_config_load(cfg, path, err, sizeof(err)) != BG_OK) {
			fprintf(stderr, "bagou-server: %s\n", err);
			exit(EXIT_USAGE);
		}
	}
	if (bg_config_load_env(cfg, environ, err, sizeof(err)) != BG_OK) {
		fprintf(stderr, "bagou-server: %s\n", err);
		exit(EXIT_USAGE);
	}
	for (int i = 0; i < n_ov; i++) {
		if (bg_config_set(cfg, ov[i].section, ov[i].key, ov[i].value,
				  err, sizeof(err)) != BG_OK) {
			fprintf(stderr, "bagou-server: --%s: %s\n",
				ov[i].flag, err);
			exit(EXIT_USAGE);
		}
	}
	if (bg_config_validate(cfg, err, sizeof(err)) != BG_OK) {
		/* A rule across keys has no single line: name the file. */
		if (path_given || access(path, F_OK) == 0)
			fprintf(stderr, "bagou-server: %s: %s\n", path, err);
		else
			fprintf(stderr, "bagou-server: %s\n", err);
		exit(EXIT_USAGE);
	}
}

/* The systemd watchdog's health check (any thread): every worker's loop
 * ticked (once a second) within the last WORKER_STALL_MS. */
#define WORKER_STALL_MS 10000
/* At start, how long clients wait for the first attempt to reach RabbitMQ. */
#define FIRST_TRY_WAIT_MS 2000

static bool
workers_alive(void *arg)
{
	const struct bg_server *srv = arg;
	struct timespec ts;
	uint64_t now;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	for (int i = 0; i < srv->n_workers; i++) {
		uint64_t at = __atomic_load_n(&srv->workers[i]->alive_ms,
					      __ATOMIC_RELAXED);
		if (now - at > WORKER_STALL_MS) {
			bg_log_error("watchdog: worker %d has not turned its "
				     "loop for %llu ms; no WATCHDOG=1 until it "
				     "does", i, (unsigned long long)(now - at));
			return false;
		}
	}
	return true;
}

/* Names the file the configuration came from, absolute, so an operator
 * sees which one a service (started in /) read. */
static void
log_config_path(const char *path, bool loaded)
{
	char abs[PATH_MAX];

	if (!loaded)
		bg_log_info("config: none (built-in defaults)");
	else if (realpath(path, abs) != NULL)
		bg_log_info("config %s", abs);
	else
		bg_log_info("config %s", path);
}

/* SIGHUP: the TLS certificate files are read again; new connections get
 * the new certificate, established ones keep theirs. */
static void
reload(struct bg_server *srv)
{
	char err[512], desc[512];

	if (srv->tls == NULL) {
		bg_log_info("reload: nothing to reload (no [server] "
			    "tls_cert)");
		return;
	}
	if (bg_tls_reload(srv->tls, err, sizeof(err)) != BG_OK) {
		bg_log_error("reload: tls certificate not reloaded, the old "
			     "one stays in use: %s", err);
		return;
	}
	if (bg_tls_describe(srv->tls, desc, sizeof(desc)))
		bg_log_info("reload: tls certificate reloaded (%s)", desc);
	else
		bg_log_warn("reload: tls certificate reloaded (%s), but it is "
			    "not valid now", desc);
}

/* SIGUSR1: the log file is opened again under its name (after a
 * rotation renamed it). */
static void
reopen_log(struct bg_server *srv)
{
	const char *path = bg_server_cfg(srv)->log_file;
	char err[512];

	if (path[0] == '\0') {
		bg_log_info("SIGUSR1: no [log] file, the log goes to stderr");
		return;
	}
	if (bg_reload_log_open(path, err, sizeof(err)) != BG_OK)
		bg_log_error("SIGUSR1: cannot reopen the log file, it goes on "
			     "where it was: %s", err);
	else
		bg_log_info("SIGUSR1: log file %s reopened", path);
}

/* SIGTERM: /health answers 503 "draining" for [server] drain_delay
 * seconds while everything else still serves, so a load balancer stops
 * sending clients here before they are closed. SIGINT, or a second
 * SIGTERM, ends the delay at once. */
static void
drain(struct bg_server *srv, const sigset_t *sigs, int sig)
{
	int delay = bg_server_cfg(srv)->drain_delay;
	struct timespec end, now, left;
	sigset_t stop;

	__atomic_store_n(&srv->draining, 1, __ATOMIC_RELEASE);
	if (sig != SIGTERM || delay <= 0)
		return;
	bg_log_info("SIGTERM: draining, /health answers 503 for %d s before "
		    "connections are closed", delay);
	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	clock_gettime(CLOCK_MONOTONIC, &end);
	end.tv_sec += delay;
	for (;;) {
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec > end.tv_sec || (now.tv_sec == end.tv_sec &&
		    now.tv_nsec >= end.tv_nsec))
			return;
		left.tv_sec = end.tv_sec - now.tv_sec;
		left.tv_nsec = end.tv_nsec - now.tv_nsec;
		if (left.tv_nsec < 0) {
			left.tv_sec--;
			left.tv_nsec += 1000000000L;
		}
		sig = sigtimedwait(sigs, NULL, &left);
		if (sig >= 0 && sigismember(&stop, sig))
			return;
		if (sig == SIGUSR1)
			reopen_log(srv);
		/* SIGHUP is ignored: the node is going away. */
	}
}

/* Raises the descriptor limit to its hard limit; returns the limit. */
static long
raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return 1024;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
			getrlimit(RLIMIT_NOFILE, &rl);
	}
	return rl.rlim_cur > 100000000 ? 100000000 : (long)rl.rlim_cur;
}

/* max_connections = 0 means: what the descriptors allow (acceptor.h). */
static void
set_limits(struct bg_config *cfg, long nofile)
{
	int reserve_max = bg_acceptor_auto_max(nofile, cfg->workers);

	if (cfg->max_connections == 0)
		cfg->max_connections = reserve_max;
	else if (cfg->max_connections > reserve_max)
		bg_log_warn("[server] max_connections %d leaves too few of the "
			    "%ld descriptors (RLIMIT_NOFILE) in reserve; above "
			    "%d, /health and the API may not answer",
			    cfg->max_connections, nofile, reserve_max);
	bg_log_info("limits: max_connections %d (RLIMIT_NOFILE %ld), "
		    "max_handshakes %d, max_per_address %d, "
		    "handshake_timeout %d s, max_connection_memory %zu",
		    cfg->max_connections, nofile, cfg->max_handshakes,
		    cfg->max_per_address, cfg->handshake_timeout,
		    cfg->max_connection_memory);
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "workers", required_argument, NULL, 'w' },
		{ "config", required_argument, NULL, 'c' },
		{ "listen", required_argument, NULL, 'l' },
		{ "amqp-url", required_argument, NULL, 'a' },
		{ "log-level", required_argument, NULL, 'L' },
		{ "check-config", no_argument, NULL, 'C' },
		{ "api-listen", required_argument, NULL, 'P' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static struct bg_config cfg;
	struct bg_cli_override ov[8];
	struct bg_reload rl = { 0 };
	struct bg_server srv;
	struct bg_bus_sink sink;
	struct bg_tls *tls = NULL;
	const char *path = DEFAULT_CONFIG;
	bool path_given = false, check_only = false;
	int n_ov = 0, opt, sig, rc = EXIT_SUCCESS;
	struct timespec deadline;
	sigset_t sigs;
	char err[512];

	/* Before any libevent call: libevent's rule. */
	bg_evmem_install();
	while ((opt = getopt_long(argc, argv, "w:c:l:a:L:Vh", opts, NULL)) !=
	       -1) {
		switch (opt) {
		case 'w':
			ov[n_ov++] = (struct bg_cli_override){ "workers",
				"server", "workers", optarg };
			break;
		case 'c':
			path = optarg;
			path_given = true;
			break;
		case 'l':
			ov[n_ov++] = (struct bg_cli_override){ "listen",
				"server", "listen", optarg };
			break;
		case 'a':
			ov[n_ov++] = (struct bg_cli_override){ "amqp-url",
				"amqp", "url", optarg };
			break;
		case 'L':
			ov[n_ov++] = (struct bg_cli_override){ "log-level",
				"log", "level", optarg };
			break;
		case 'P':
			ov[n_ov++] = (struct bg_cli_override){ "api-listen",
				"http", "api_listen", optarg };
			break;
		case 'C':
			check_only = true;
			break;
		case 'V':
			printf("bagou-server %s\n", BG_VERSION);
			return EXIT_SUCCESS;
		case 'h':
			usage(stdout);
			return EXIT_SUCCESS;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
		if (n_ov == (int)BG_ARRAY_LEN(ov)) {
			fprintf(stderr, "bagou-server: too many options\n");
			return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "bagou-server: unexpected argument '%s'\n",
			argv[optind]);
		usage(stderr);
		return EXIT_USAGE;
	}
	load_config(&cfg, path, path_given, ov, n_ov);
	if (cfg.tls_cert[0] != '\0' &&
	    (tls = bg_tls_new(&cfg, err, sizeof(err))) == NULL) {
		fprintf(stderr, "bagou-server: %s\n", err);
		return EXIT_USAGE;
	}
	if (check_only) {
		/* What the start would refuse below, refused here too. */
		char *dir = cfg.static_dir[0] != '\0' ?
			    realpath(cfg.static_dir, NULL) : NULL;

		if (cfg.static_dir[0] != '\0' && dir == NULL) {
			fprintf(stderr, "bagou-server: [http] static_dir "
				"'%s': %s\n", cfg.static_dir, strerror(errno));
			return EXIT_USAGE;
		}
		free(dir);
		printf("%s: ok\n", path_given || access(path, F_OK) == 0 ?
		       path : "(built-in defaults)");
		return EXIT_SUCCESS;
	}
	if (bg_reload_log_open(cfg.log_file, err, sizeof(err)) != BG_OK) {
		fprintf(stderr, "bagou-server: [log] file: %s\n", err);
		return EXIT_USAGE;
	}
	bg_log_set_level((enum bg_log_level)cfg.log_level);
	bg_log_set_format((enum bg_log_format)cfg.log_format);
	lws_set_log_level(LLL_ERR | LLL_WARN, lws_log);
	log_config_path(path, path_given || access(path, F_OK) == 0);
	if (cfg.workers == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		cfg.workers = n <= 0 ? 1 : n > BG_WORKERS_MAX ?
			      BG_WORKERS_MAX : (int)n;
	}
	rl.nofile = raise_fd_limit();
	set_limits(&cfg, rl.nofile);
	rl.path = path;
	rl.use_file = path_given || access(path, F_OK) == 0;
	rl.ov = ov;
	rl.n_ov = n_ov;

	/* Threads inherit this mask: signals come to sigwait below. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGHUP);
	sigaddset(&sigs, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	memset(&srv, 0, sizeof(srv));
	srv.cfg = &cfg;
	srv.tls = tls;
	srv.n_workers = cfg.workers;
	make_node_id(srv.node_id);
	clock_gettime(CLOCK_REALTIME, &deadline);
	srv.started_ms = (uint64_t)deadline.tv_sec * 1000 +
			 (uint64_t)deadline.tv_nsec / 1000000;
	if (cfg.static_dir[0] != '\0' &&
	    realpath(cfg.static_dir, srv.static_root) == NULL) {
		fprintf(stderr, "bagou-server: [http] static_dir '%s': %s\n",
			cfg.static_dir, strerror(errno));
		return EXIT_USAGE;
	}
	srv.workers = calloc((size_t)cfg.workers, sizeof(*srv.workers));
	srv.cfg_seen = calloc((size_t)BG_SEEN_SLOTS(cfg.workers),
			      sizeof(*srv.cfg_seen));
	if (srv.cfg_seen == NULL)
		return EXIT_FAILURE;
	if (bg_handlers_init(err, sizeof(err)) != BG_OK) {
		bg_log_error("handlers: %s", err);
		return EXIT_FAILURE;
	}
	if (bg_asset_init(err, sizeof(err)) != BG_OK) {
		bg_log_error("/bagou.js: %s", err);
		return EXIT_FAILURE;
	}
	srv.acceptor = bg_acceptor_new(&srv, err, sizeof(err));
	if (srv.acceptor == NULL) {
		bg_log_error("%s", err);
		return EXIT_FAILURE;
	}
	if (cfg.api_port != 0) {
		srv.api = bg_api_new(&srv, err, sizeof(err));
		if (srv.api == NULL) {
			bg_log_error("%s", err);
			bg_acceptor_stop(srv.acceptor);
			bg_acceptor_free(srv.acceptor);
			bg_handlers_free();
			bg_asset_free();
			free(srv.cfg_seen);
			free(srv.workers);
			return EXIT_FAILURE;
		}
	} else {
		/* No API thread: nothing to wait for in its slot. */
		srv.cfg_seen[BG_SEEN_API] = UINT64_MAX;
	}
	bg_server_sink(&srv, &sink);
	srv.control = bg_control_new(&sink, &srv);
	if (srv.control == NULL)
		return EXIT_FAILURE;
	if (bg_cmd_init(srv.control) != BG_OK)
		return EXIT_FAILURE;
	if (bg_presence_init(&srv) != BG_OK)
		return EXIT_FAILURE;
	srv.bus = bg_bus_new(&sink, srv.control);
	if (srv.workers == NULL || srv.bus == NULL)
		return EXIT_FAILURE;
	for (int i = 0; i < cfg.workers; i++) {
		srv.workers[i] = bg_worker_new(&srv, i);
		if (srv.workers[i] == NULL ||
		    bg_worker_start(srv.workers[i]) != BG_OK) {
			bg_log_error("cannot start worker %d", i);
			return EXIT_FAILURE;
		}
	}
	if (bg_bus_start(srv.bus) != BG_OK)
		return EXIT_FAILURE;
	/* Clients come once RabbitMQ is reached (or could not be): a page
	 * reconnecting to a restarted node must not find its forwarded
	 * authenticate refused "unavailable" for the link's first 50 ms. */
	if (!bg_bus_wait_first_try(srv.bus, FIRST_TRY_WAIT_MS))
		bg_log_warn("amqp: RabbitMQ not reached within %d ms; serving "
			    "meanwhile (forwarded events are refused until it "
			    "is)", FIRST_TRY_WAIT_MS);
	if (bg_acceptor_start(srv.acceptor) != BG_OK ||
	    (srv.api != NULL && bg_api_start(srv.api) != BG_OK))
		return EXIT_FAILURE;
	bg_log_info("bagou-server %s listening on %s:%d (%d workers, node "
		    "%s, %s%s)", BG_VERSION, cfg.listen_host, cfg.listen_port,
		    cfg.workers, srv.node_id, bg_config_standalone(&cfg) ?
		    "standalone" : "RabbitMQ exchange", tls ? ", TLS" : "");
	if (tls != NULL && !bg_tls_describe(tls, err, sizeof(err)))
		bg_log_warn("tls: the certificate is not valid now: %s", err);
	else if (tls != NULL)
		bg_log_info("tls: serving %s", err);
	if (srv.api != NULL)
		bg_log_info("API listener on %s:%d", cfg.api_host,
			    cfg.api_port);
	else
		bg_log_info("no API listener ([http] api_listen is empty)");
	/* systemd (Type=notify): listening now; the watchdog from here. */
	if (bg_notify_send("READY=1") == BG_ERR)
		bg_log_warn("systemd: cannot notify NOTIFY_SOCKET=%s: %s",
			    getenv("NOTIFY_SOCKET"), strerror(errno));
	if (bg_notify_watchdog_start(workers_alive, &srv) != BG_OK)
		bg_log_warn("cannot start the systemd watchdog thread");

	for (;;) {
		/* A replaced config waits for every thread to move past it:
		 * look again each second until none waits. */
		if (bg_reload_reclaim(&rl, &srv) > 0)
			sig = sigtimedwait(&sigs, NULL,
					   &(struct timespec){ 1, 0 });
		else if (sigwait(&sigs, &sig) != 0)
			continue;
		if (sig < 0)
			continue;
		if (sig == SIGUSR1) {
			reopen_log(&srv);
			continue;
		}
		if (sig != SIGHUP)
			break;
		bg_notify_reloading();
		bg_reload_config(&rl, &srv);
		reload(&srv);
		bg_notify_send("READY=1");
	}
	bg_notify_send("STOPPING=1");
	/* The workers still turn while draining: the watchdog goes on. */
	drain(&srv, &sigs, sig);
	bg_notify_watchdog_stop();
	bg_log_info("%s: closing connections and stopping",
		    sig == SIGTERM ? "SIGTERM" : "SIGINT");
	/* Stop every thread first, free afterwards: a worker may read the
	 * bus's and the other workers' counters until it is joined. The bus
	 * stops last, so what closing clients send on their way out (their
	 * forwarded 'close') still reaches RabbitMQ. */
	bg_acceptor_stop(srv.acceptor);
	/* No new broadcasts from the API listener either; its counters
	 * stay until the workers, which read them for /health, are gone. */
	bg_api_stop(srv.api);
	bg_bus_quiesce(srv.bus);
	for (int i = 0; i < cfg.workers; i++)
		bg_worker_stop(srv.workers[i]);
	/* SIGTERM must end the process within 5 s even if a worker were
	 * stuck; a late worker makes the exit status say so. */
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 4;
	for (int i = 0; i < cfg.workers; i++) {
		if (bg_worker_join(srv.workers[i], &deadline) != BG_OK) {
			bg_log_error("worker %d did not stop within 4 s; "
				     "exiting anyway", i);
			_exit(EXIT_FAILURE);
		}
	}
	/* The clients are closed; a bus stuck on an unresponsive broker
	 * must not hold the exit past the 5 s SIGTERM promise. */
	deadline.tv_nsec += 500000000L;
	if (deadline.tv_nsec >= 1000000000L) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}
	if (bg_bus_stop(srv.bus, &deadline) != BG_OK) {
		bg_log_warn("the RabbitMQ link did not stop in time; exiting "
			    "without waiting for it");
		_exit(EXIT_SUCCESS);
	}
	for (int i = 0; i < cfg.workers; i++)
		bg_worker_free(srv.workers[i]);
	bg_api_free(srv.api);
	bg_bus_free(srv.bus);
	bg_control_free(srv.control);
	bg_presence_free(&srv); /* after the jobs the control plane held */
	bg_acceptor_free(srv.acceptor);
	bg_handlers_free();
	bg_asset_free();
	bg_tls_free(tls);
	free(srv.workers);
	bg_reload_free(&rl);
	free(srv.cfg_seen);
	bg_log_info("stopped");
	return rc;
}
