/*
 * config.c - owns struct bg_config's defaults, the table of every
 * "[section] key", the strict parsing of each value, and the loading of
 * an ini file through inih, then of the BAGOU_<SECTION>_<KEY> environment
 * overrides; the origin matcher of [server] origins.
 *
 * Threads: only the main thread enters: at start-up, before the other
 * threads exist, and on SIGHUP into a fresh struct (server/reload.c). No
 * globals are written (inih's own settings are left alone); everything
 * lives in the caller's struct and a stack context (the list values being
 * built are on the heap, freed before the loader returns).
 * bg_config_origin_allowed only reads, from any thread.
 *
 * inih 55 gives the handler no line number, so the loader reads the file
 * through its own line reader: it counts lines, and it rejects up front
 * what inih would silently accept or misread (unknown or empty [section]s,
 * lines that are neither a section nor "key = value", over-long lines that
 * inih would split). Debian's inih runs with multi-line values on (its
 * ini_allow_multiline, default true): an indented line after a key comes
 * to the handler as that key again with the line as its value. The line
 * reader marks such lines, and the handler accepts them for list keys
 * only, appending, as it appends a repeated list key. Parsing stops at
 * the first error.
 */
#include "common/config.h"

#include "common/bg.h"
#include "common/log.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <amqp.h>
#include <ini.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MSG_MAX 1400
#define FIELD_SIZE(f) sizeof(((struct bg_config *)0)->f)

struct key;

typedef int (*parse_fn)(const struct key *k, struct bg_config *cfg,
			const char *v, char *msg, size_t len);

struct key {
	const char *section;
	const char *name;
	parse_fn parse;
	size_t off;                     /* field in struct bg_config */
	unsigned long long min, max;    /* numbers: range; strings: length */
};

/* Indexed by enum bg_publish_policy. */
static const char *const publish_names[] = { "none", "subscribed", "all" };

static void
seterr(char *err, size_t len, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || len == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, len, fmt, ap);
	va_end(ap);
}

void
bg_config_defaults(struct bg_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	strcpy(cfg->listen_host, "0.0.0.0");
	cfg->listen_port = 9000;
	cfg->workers = 0;
	strcpy(cfg->path, "/websocket");
	cfg->max_connections = 0;
	cfg->ping_interval = 30;
	cfg->max_message_size = 65536;
	cfg->max_subscriptions = 1000;
	cfg->max_store_bytes = 4096;
	cfg->max_queued_bytes = 1048576;
	cfg->client_publish = BG_PUBLISH_NONE;
	strcpy(cfg->amqp_url, "amqp://guest:guest@localhost:5672/");
	strcpy(cfg->amqp_exchange, "bagou");
	cfg->amqp_queue[0] = '\0';
	cfg->amqp_prefetch = 1000;
	cfg->amqp_heartbeat = 30;
	strcpy(cfg->amqp_ca_file, "/etc/ssl/certs/ca-certificates.crt");
	cfg->api_key[0] = '\0';
	cfg->log_level = BG_LOG_INFO;
	cfg->rate = 100;
	cfg->burst = 200;
	cfg->max_connection_memory = 1048576;
	cfg->max_handshakes = 1024;
	cfg->max_per_address = 256;
	cfg->limit_loopback = false;
	cfg->handshake_timeout = 10;
	cfg->backpressure = 50;
	cfg->close_timeout = 5;
	cfg->max_fragments = 1024;
	cfg->fragment_timeout = 30;
	strcpy(cfg->private_prefix, "private-");
	strcpy(cfg->api_host, "127.0.0.1");
	cfg->api_port = 9001;
	cfg->body_timeout = 10;
	cfg->cluster_heartbeat = 2;
	cfg->cluster_timeout = 15;
	cfg->cluster_query_timeout = 2;
	cfg->history_size = 100;
	cfg->history_ttl = 300;
	strcpy(cfg->history_stream, "bagou.history");
	cfg->history_max_age = 3600;
	strcpy(cfg->presence_prefix, "presence-");
	cfg->presence_timeout = 15;
	cfg->presence_max_members = 10000;
}

/*
 * Strict unsigned decimal: digits only (no sign, space or base prefix), no
 * overflow. *end gets the first byte after the digits.
 */
static bool
parse_digits(const char *s, unsigned long long *out, const char **end)
{
	char *e;

	if (!isdigit((unsigned char)s[0]))
		return false;
	errno = 0;
	*out = strtoull(s, &e, 10);
	*end = e;
	return errno == 0;
}

static int
parse_int(const struct key *k, struct bg_config *cfg, const char *v,
	  char *msg, size_t len)
{
	unsigned long long n;
	const char *end;

	if (!parse_digits(v, &n, &end) || *end != '\0' || n < k->min ||
	    n > k->max) {
		seterr(msg, len, "expected an integer from %llu to %llu, "
		       "got '%s'", k->min, k->max, v);
		return BG_ERR;
	}
	*(int *)((char *)cfg + k->off) = (int)n;
	return BG_OK;
}

/* Bytes, with an optional k/K or m/M suffix (multiples of 1024). */
static int
parse_size(const struct key *k, struct bg_config *cfg, const char *v,
	   char *msg, size_t len)
{
	unsigned long long n, mult = 1;
	const char *end;
	bool ok;

	ok = parse_digits(v, &n, &end);
	if (ok && (*end == 'k' || *end == 'K'))
		mult = 1024, end++;
	else if (ok && (*end == 'm' || *end == 'M'))
		mult = 1024 * 1024, end++;
	ok = ok && *end == '\0' && n <= k->max / mult;
	if (!ok || n * mult < k->min) {
		seterr(msg, len, "expected a size in bytes (%llu to %llu), "
		       "got '%s'", k->min, k->max, v);
		return BG_ERR;
	}
	*(size_t *)((char *)cfg + k->off) = (size_t)(n * mult);
	return BG_OK;
}

static int
parse_bool(const struct key *k, struct bg_config *cfg, const char *v,
	   char *msg, size_t len)
{
	bool *field = (bool *)((char *)cfg + k->off);

	if (strcasecmp(v, "yes") == 0 || strcasecmp(v, "true") == 0 ||
	    strcmp(v, "1") == 0 || strcasecmp(v, "on") == 0) {
		*field = true;
	} else if (strcasecmp(v, "no") == 0 || strcasecmp(v, "false") == 0 ||
		   strcmp(v, "0") == 0 || strcasecmp(v, "off") == 0) {
		*field = false;
	} else {
		seterr(msg, len, "expected yes or no, got '%s'", v);
		return BG_ERR;
	}
	return BG_OK;
}

static int
parse_str(const struct key *k, struct bg_config *cfg, const char *v,
	  char *msg, size_t len)
{
	size_t n = strlen(v);

	if (n > k->max) {
		seterr(msg, len, "expected at most %llu bytes, got %zu",
		       k->max, n);
		return BG_ERR;
	}
	memcpy((char *)cfg + k->off, v, n + 1);
	return BG_OK;
}

static int
parse_path(const struct key *k, struct bg_config *cfg, const char *v,
	   char *msg, size_t len)
{
	for (const char *p = v; *p; p++) {
		if (isspace((unsigned char)*p) || iscntrl((unsigned char)*p)) {
			seterr(msg, len, "must not contain spaces or "
			       "control characters, got '%s'", v);
			return BG_ERR;
		}
	}
	if (v[0] != '/') {
		seterr(msg, len, "must start with '/', got '%s'", v);
		return BG_ERR;
	}
	return parse_str(k, cfg, v, msg, len);
}

static int
parse_url(const struct key *k, struct bg_config *cfg, const char *v,
	  char *msg, size_t len)
{
	struct amqp_connection_info ci;
	char copy[sizeof(cfg->amqp_url)];

	if (strcasecmp(v, "none") == 0)
		v = "none";
	else if (strncmp(v, "amqp://", 7) != 0 &&
		 strncmp(v, "amqps://", 8) != 0) {
		seterr(msg, len, "expected 'none' or a URL starting with "
		       "amqp:// or amqps://, got '%s'", v);
		return BG_ERR;
	} else if (strlen(v) < sizeof(copy)) {
		/* rabbitmq-c's own parser: what it rejects, the server
		 * could never connect with. */
		strcpy(copy, v);
		if (amqp_parse_url(copy, &ci) != AMQP_STATUS_OK) {
			seterr(msg, len, "not a valid AMQP URL: '%s' (expected "
			       "amqp://USER:PASSWORD@HOST:PORT/VHOST)", v);
			return BG_ERR;
		}
	}
	return parse_str(k, cfg, v, msg, len);
}

/* AMQP exchange and queue names: letters, digits, '-', '_', '.', ':'
 * (what RabbitMQ accepts everywhere); the queue may be empty. */
static int
parse_amqp_name(const struct key *k, struct bg_config *cfg, const char *v,
		char *msg, size_t len)
{
	bool may_be_empty = k->off == offsetof(struct bg_config, amqp_queue) ||
			    k->off == offsetof(struct bg_config,
					       forward_exchange);

	if (v[0] == '\0' && !may_be_empty) {
		seterr(msg, len, "must not be empty");
		return BG_ERR;
	}
	for (const char *p = v; *p; p++) {
		if (!isalnum((unsigned char)*p) && !strchr("-_.:", *p)) {
			seterr(msg, len, "expected letters, digits, '-', '_', "
			       "'.' or ':', got '%s'", v);
			return BG_ERR;
		}
	}
	return parse_str(k, cfg, v, msg, len);
}

/* Separators between the entries of a list value. */
#define LIST_SEP ", \t"

static bool
host_char(char c)
{
	return isalnum((unsigned char)c) || c == '-' || c == '.';
}

#define ORIGIN_FORM "expected null or SCHEME://HOST[:PORT], with no path, " \
	"as in https://example.com"

/* The scheme of an origins entry, e up to sep ("://"): letters, digits,
 * '+', '-', '.'; not empty. */
static bool
scheme_ok(const char *e, const char *sep)
{
	if (sep == NULL || sep == e)
		return false;
	for (const char *p = e; p < sep; p++)
		if (!isalnum((unsigned char)*p) && !strchr("+-.", *p))
			return false;
	return true;
}

/* What follows the host of an origins entry, p to end: nothing, or
 * ":PORT". NULL when valid, else what is wrong. */
static const char *
port_error(const char *p, const char *end)
{
	unsigned long long port;
	const char *pe;
	char buf[8];
	size_t pn = (size_t)(end - p - 1);

	if (p == end)
		return NULL;
	if (*p != ':')
		return ORIGIN_FORM;
	if (pn == 0 || pn >= sizeof(buf))
		return "expected a port from 1 to 65535";
	memcpy(buf, p + 1, pn);
	buf[pn] = '\0';
	if (!parse_digits(buf, &port, &pe) || *pe != '\0' || port < 1 ||
	    port > 65535)
		return "expected a port from 1 to 65535";
	return NULL;
}

/* One origins entry of n bytes at e without a '*': null (what a browser
 * sends from a file or a sandbox), or SCHEME://HOST[:PORT], HOST a name,
 * an IPv4 address or [IPv6]: what an Origin header can hold. NULL when
 * valid, else what is wrong. */
static const char *
exact_error(const char *e, size_t n)
{
	const char *sep = memmem(e, n, "://", 3), *end = e + n, *h, *p;

	if (n == 4 && strncasecmp(e, "null", 4) == 0)
		return NULL;
	if (!scheme_ok(e, sep))
		return ORIGIN_FORM;
	h = p = sep + 3;
	if (h < end && *h == '[') {
		for (p = h + 1; p < end && *p != ']'; p++)
			if (!isxdigit((unsigned char)*p) && !strchr(":.", *p))
				return ORIGIN_FORM;
		if (p == end || p == h + 1)
			return ORIGIN_FORM;
		p++;
	} else {
		while (p < end && (host_char(*p) || *p == '_'))
			p++;
	}
	if (p == h)
		return ORIGIN_FORM;
	return port_error(p, end);
}

/*
 * One origins entry of n bytes at e that holds a '*': valid only as
 * SCHEME "://" "*." DOMAIN [":" PORT], DOMAIN being two or more labels. NULL
 * when valid, else what is wrong.
 */
static const char *
wildcard_error(const char *e, size_t n)
{
	const char *sep = memmem(e, n, "://", 3), *end = e + n, *h, *p;

	if (!scheme_ok(e, sep))
		return "expected SCHEME://*.DOMAIN[:PORT]";
	h = sep + 3;
	if (end - h < 2 || h[0] != '*' || h[1] != '.')
		return "a '*' may only stand for whole labels at the start of "
		       "the host, as in https://*.example.com";
	h += 2;
	for (p = h; p < end && *p != ':'; p++)
		if (!host_char(*p))
			return "a '*' may only stand for whole labels at the "
			       "start of the host, as in https://*.example.com";
	if (p == h || h[0] == '.' || p[-1] == '.' ||
	    memmem(h, (size_t)(p - h), "..", 2) != NULL)
		return "expected a domain after '*.'";
	if (memchr(h, '.', (size_t)(p - h)) == NULL)
		return "the domain after '*.' needs two labels or more "
		       "(*.example.com, not *.com)";
	return port_error(p, end);
}

/* A comma-separated list of origins (no spaces inside one), each of a
 * form an Origin header can match; an entry with a '*' must be a
 * wildcard that bg_config_origin_allowed can match. */
static int
parse_origins(const struct key *k, struct bg_config *cfg, const char *v,
	      char *msg, size_t len)
{
	const char *p = v, *why;
	size_t n;

	for (const char *c = v; *c; c++) {
		if ((iscntrl((unsigned char)*c) && *c != '\t') || *c == '"' ||
		    *c == '\\') {
			seterr(msg, len, "expected origins such as "
			       "https://example.com, comma-separated");
			return BG_ERR;
		}
	}
	for (; *p; p += n) {
		p += strspn(p, LIST_SEP);
		n = strcspn(p, LIST_SEP);
		if (n == 0)
			break;
		why = memchr(p, '*', n) != NULL ? wildcard_error(p, n) :
		      exact_error(p, n);
		if (why != NULL) {
			seterr(msg, len, "'%.*s': %s", (int)n, p, why);
			return BG_ERR;
		}
	}
	if (strlen(v) > k->max) {
		seterr(msg, len, "the list is longer than %llu bytes", k->max);
		return BG_ERR;
	}
	return parse_str(k, cfg, v, msg, len);
}

/* Does origin (o, on) match the wildcard entry (e, en) checked by
 * wildcard_error? Same scheme, then LABELS.DOMAIN[:PORT] exactly. */
static bool
wildcard_match(const char *e, size_t en, const char *o, size_t on)
{
	const char *sep, *tail;
	size_t scheme, tn, ln;

	/* wildcard_error checked the form; the test keeps GCC's -Wnonnull
	 * quiet in -fsanitize=undefined builds. */
	if (e == NULL || (sep = memmem(e, en, "://", 3)) == NULL)
		return false;
	scheme = (size_t)(sep - e) + 3;
	tail = sep + 4;                 /* ".DOMAIN[:PORT]" */
	tn = en - scheme - 1;

	if (on <= scheme + tn || strncasecmp(e, o, scheme) != 0 ||
	    strncasecmp(o + on - tn, tail, tn) != 0)
		return false;
	/* The labels that stand for '*': o + scheme, ln bytes. */
	o += scheme;
	ln = on - scheme - tn;
	if (o[0] == '.' || o[ln - 1] == '.' || memmem(o, ln, "..", 2))
		return false;
	for (size_t i = 0; i < ln; i++)
		if (!host_char(o[i]))
			return false;
	return true;
}

bool
bg_config_origin_allowed(const char *list, const char *origin)
{
	size_t len = strlen(origin), n;

	for (const char *p = list; *p; p += n) {
		p += strspn(p, LIST_SEP);
		n = strcspn(p, LIST_SEP);
		if (n == 0)
			break;
		if (memchr(p, '*', n) != NULL ?
		    wildcard_error(p, n) == NULL &&
		    wildcard_match(p, n, origin, len) :
		    n == len && strncasecmp(p, origin, n) == 0)
			return true;
	}
	return false;
}

/* A file path ([server] tls_*): no control characters; "" = unset. The
 * loader makes a relative one relative to the ini file's folder. */
static int
parse_file(const struct key *k, struct bg_config *cfg, const char *v,
	   char *msg, size_t len)
{
	for (const char *p = v; *p; p++) {
		if (iscntrl((unsigned char)*p)) {
			seterr(msg, len, "must not contain control "
			       "characters");
			return BG_ERR;
		}
	}
	return parse_str(k, cfg, v, msg, len);
}

/* [log] file: a path like parse_file's, which need not exist yet. */
static int
parse_logfile(const struct key *k, struct bg_config *cfg, const char *v,
	      char *msg, size_t len)
{
	return parse_file(k, cfg, v, msg, len);
}

/*
 * A credential file ([http] api_key_file, [auth] secret_file): its one
 * line (a final newline ignored) becomes api_key / auth_secret, read now,
 * whatever the source (ini, environment, reload). A relative name is
 * looked up in $CREDENTIALS_DIRECTORY (systemd's LoadCredential=) when it
 * is set; the loader has made names from the ini relative to its folder
 * otherwise. "" = none (the secret is left as it is).
 */
static int
parse_credential(const struct key *k, struct bg_config *cfg, const char *v,
		 char *msg, size_t len)
{
	const char *creds = getenv("CREDENTIALS_DIRECTORY");
	bool api = k->off == offsetof(struct bg_config, api_key_file);
	char *dst = api ? cfg->api_key : cfg->auth_secret;
	size_t dst_size = api ? sizeof(cfg->api_key) :
				sizeof(cfg->auth_secret);
	char path[1024], buf[1024];
	size_t n;
	FILE *fp;
	int e;

	for (const char *p = v; *p; p++) {
		if (iscntrl((unsigned char)*p)) {
			seterr(msg, len, "must not contain control "
			       "characters");
			return BG_ERR;
		}
	}
	if (v[0] == '\0')
		return parse_str(k, cfg, v, msg, len);
	if (v[0] != '/' && creds != NULL && creds[0] != '\0')
		n = (size_t)snprintf(path, sizeof(path), "%s/%s", creds, v);
	else
		n = (size_t)snprintf(path, sizeof(path), "%s", v);
	if (n > k->max) {
		seterr(msg, len, "the path is longer than %llu bytes", k->max);
		return BG_ERR;
	}
	fp = fopen(path, "r");
	if (fp == NULL) {
		seterr(msg, len, "cannot read '%s': %s", path,
		       strerror(errno));
		return BG_ERR;
	}
	n = fread(buf, 1, sizeof(buf) - 1, fp);
	e = ferror(fp) ? errno : 0;
	fclose(fp);
	if (e != 0) {
		seterr(msg, len, "cannot read '%s': %s", path, strerror(e));
		return BG_ERR;
	}
	buf[n] = '\0';
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = '\0';
	if (n == 0 || strlen(buf) != n || strpbrk(buf, "\r\n") != NULL) {
		seterr(msg, len, "'%s' must hold the secret on one line",
		       path);
	} else if (n >= dst_size) {
		seterr(msg, len, "the secret in '%s' is longer than %zu bytes",
		       path, dst_size - 1);
	} else {
		memcpy(dst, buf, n + 1);
		strcpy((char *)cfg + k->off, path);
		explicit_bzero(buf, sizeof(buf));
		return BG_OK;
	}
	explicit_bzero(buf, sizeof(buf));
	return BG_ERR;
}

static const char *const lifecycle_names[] = {
	"open", "close", "subscribe", "unsubscribe", "store", "authenticate"
};

static int
parse_lifecycle(const struct key *k, struct bg_config *cfg, const char *v,
		char *msg, size_t len)
{
	unsigned int bits = 0;
	const char *p = v;

	while (*p) {
		size_t n;
		bool found = false;

		p += strspn(p, LIST_SEP);
		n = strcspn(p, LIST_SEP);
		if (n == 0)
			break;
		for (size_t i = 0; i < BG_ARRAY_LEN(lifecycle_names); i++) {
			if (strlen(lifecycle_names[i]) == n &&
			    strncmp(p, lifecycle_names[i], n) == 0) {
				bits |= 1u << i;
				found = true;
			}
		}
		if (!found) {
			seterr(msg, len, "expected a list of open, close, "
			       "subscribe, unsubscribe, store, authenticate; "
			       "got '%.*s'", (int)n, p);
			return BG_ERR;
		}
		p += n;
	}
	cfg->forward_lifecycle = bits;
	return BG_OK;
}

static int
parse_bindings(const struct key *k, struct bg_config *cfg, const char *v,
	       char *msg, size_t len)
{
	(void)k;
	if (strcasecmp(v, "channels") == 0 || strcasecmp(v, "all") == 0) {
		cfg->amqp_bind_all = strcasecmp(v, "all") == 0;
		return BG_OK;
	}
	seterr(msg, len, "expected channels or all, got '%s'", v);
	return BG_ERR;
}

static int
parse_publish(const struct key *k, struct bg_config *cfg, const char *v,
	      char *msg, size_t len)
{
	for (size_t i = 0; i < BG_ARRAY_LEN(publish_names); i++) {
		if (strcasecmp(v, publish_names[i]) == 0) {
			cfg->client_publish = (int)i;
			return BG_OK;
		}
	}
	seterr(msg, len, "expected none, subscribed or all, got '%s'", v);
	return BG_ERR;
}

static int
parse_level(const struct key *k, struct bg_config *cfg, const char *v,
	    char *msg, size_t len)
{
	int level = bg_log_parse_level(v);

	if (level < 0) {
		seterr(msg, len, "expected debug, info, warn or error, "
		       "got '%s'", v);
		return BG_ERR;
	}
	cfg->log_level = level;
	return BG_OK;
}

static int
parse_log_format(const struct key *k, struct bg_config *cfg, const char *v,
		 char *msg, size_t len)
{
	if (strcasecmp(v, "text") == 0)
		cfg->log_format = BG_LOG_TEXT;
	else if (strcasecmp(v, "json") == 0)
		cfg->log_format = BG_LOG_JSON;
	else {
		seterr(msg, len, "expected text or json, got '%s'", v);
		return BG_ERR;
	}
	return BG_OK;
}

/* HOST:PORT, HOST being an IPv4 address, localhost, * or [IPv6]. */
static int
parse_listen(const struct key *k, struct bg_config *cfg, const char *v,
	     char *msg, size_t len)
{
	char host[FIELD_SIZE(listen_host)];
	const char *hs = v, *he, *colon, *end;
	unsigned long long port;
	unsigned char addr[sizeof(struct in6_addr)];
	bool v6 = v[0] == '[';

	if (v6) {
		hs = v + 1;
		he = strchr(hs, ']');
		colon = he != NULL && he[1] == ':' ? he + 1 : NULL;
	} else {
		he = colon = strrchr(v, ':');
	}
	if (colon == NULL) {
		seterr(msg, len, "expected HOST:PORT (e.g. *:9000, "
		       "127.0.0.1:9000, [::1]:9000), got '%s'", v);
		return BG_ERR;
	}
	if (!parse_digits(colon + 1, &port, &end) || *end != '\0' ||
	    port < 1 || port > 65535) {
		seterr(msg, len, "expected a port from 1 to 65535, got '%s'",
		       colon + 1);
		return BG_ERR;
	}
	if ((size_t)(he - hs) >= sizeof(host))
		he = hs + sizeof(host) - 1;
	memcpy(host, hs, (size_t)(he - hs));
	host[he - hs] = '\0';
	if (strcmp(host, "*") == 0 && !v6)
		strcpy(host, "0.0.0.0");
	if (v6 ? inet_pton(AF_INET6, host, addr) != 1 :
	    strcmp(host, "localhost") != 0 &&
	    inet_pton(AF_INET, host, addr) != 1) {
		seterr(msg, len, "expected an IPv4 address, localhost, * or "
		       "[IPv6] before the port, got '%s'%s", host,
		       strchr(host, ':') ? " (put IPv6 addresses in [])" : "");
		return BG_ERR;
	}
	strcpy(cfg->listen_host, host);
	cfg->listen_port = (int)port;
	return BG_OK;
}

/* [http] api_listen: HOST:PORT as for [server] listen, or empty for no
 * API listener. */
static int
parse_api_listen(const struct key *k, struct bg_config *cfg, const char *v,
		 char *msg, size_t len)
{
	struct bg_config tmp;

	if (v[0] == '\0') {
		cfg->api_host[0] = '\0';
		cfg->api_port = 0;
		return BG_OK;
	}
	if (parse_listen(k, &tmp, v, msg, len) != BG_OK)
		return BG_ERR;
	strcpy(cfg->api_host, tmp.listen_host);
	cfg->api_port = tmp.listen_port;
	return BG_OK;
}

/* [history] channels: a POSIX extended regex, compiled once here so a
 * bad one is refused with regerror's words; "" = no history. */
static int
parse_regex(const struct key *k, struct bg_config *cfg, const char *v,
	    char *msg, size_t len)
{
	regex_t re;
	char why[128];
	int rc;

	if (v[0] != '\0') {
		rc = regcomp(&re, v, REG_EXTENDED | REG_NOSUB);
		if (rc != 0) {
			regerror(rc, &re, why, sizeof(why));
			seterr(msg, len, "not a valid extended regular "
			       "expression: %s", why);
			return BG_ERR;
		}
		regfree(&re);
	}
	return parse_str(k, cfg, v, msg, len);
}

#define OFF(f) offsetof(struct bg_config, f)
#define STR(f) 0, FIELD_SIZE(f) - 1

static const struct key keys[] = {
	{ "server", "listen", parse_listen, 0, 0, 0 },
	{ "server", "workers", parse_int, OFF(workers), 0, BG_WORKERS_MAX },
	{ "server", "path", parse_path, OFF(path), STR(path) },
	{ "server", "max_connections", parse_int, OFF(max_connections),
	  0, 10000000 },
	{ "server", "ping_interval", parse_int, OFF(ping_interval), 0, 3600 },
	{ "limits", "max_message_size", parse_size, OFF(max_message_size),
	  16, 67108864 },
	{ "limits", "max_subscriptions", parse_int, OFF(max_subscriptions),
	  1, 1000000 },
	{ "limits", "max_store_bytes", parse_size, OFF(max_store_bytes),
	  2, 16777216 },
	{ "limits", "max_queued_bytes", parse_size, OFF(max_queued_bytes),
	  1024, 1073741824 },
	{ "channels", "client_publish", parse_publish, OFF(client_publish),
	  0, 0 },
	{ "amqp", "url", parse_url, OFF(amqp_url), STR(amqp_url) },
	{ "amqp", "exchange", parse_amqp_name, OFF(amqp_exchange),
	  STR(amqp_exchange) },
	{ "amqp", "queue", parse_amqp_name, OFF(amqp_queue), STR(amqp_queue) },
	{ "amqp", "prefetch", parse_int, OFF(amqp_prefetch), 1, 65535 },
	{ "amqp", "heartbeat", parse_int, OFF(amqp_heartbeat), 0, 600 },
	{ "amqp", "ca_file", parse_file, OFF(amqp_ca_file),
	  STR(amqp_ca_file) },
	{ "amqp", "bindings", parse_bindings, OFF(amqp_bind_all), 0, 0 },
	{ "server", "origins", parse_origins, OFF(origins), STR(origins) },
	{ "server", "tls_cert", parse_file, OFF(tls_cert), STR(tls_cert) },
	{ "server", "tls_key", parse_file, OFF(tls_key), STR(tls_key) },
	{ "server", "tls_ca", parse_file, OFF(tls_ca), STR(tls_ca) },
	{ "limits", "rate", parse_int, OFF(rate), 0, 1000000 },
	{ "limits", "burst", parse_int, OFF(burst), 1, 1000000 },
	{ "limits", "max_connection_memory", parse_size,
	  OFF(max_connection_memory), 4096, 1073741824 },
	{ "limits", "max_handshakes", parse_int, OFF(max_handshakes),
	  0, 10000000 },
	{ "limits", "max_per_address", parse_int, OFF(max_per_address),
	  0, 10000000 },
	{ "limits", "limit_loopback", parse_bool, OFF(limit_loopback), 0, 0 },
	{ "limits", "handshake_timeout", parse_int, OFF(handshake_timeout),
	  0, 3600 },
	{ "limits", "backpressure", parse_int, OFF(backpressure), 0, 100 },
	{ "limits", "close_timeout", parse_int, OFF(close_timeout), 1, 600 },
	{ "limits", "max_fragments", parse_int, OFF(max_fragments),
	  1, 1000000 },
	{ "limits", "fragment_timeout", parse_int, OFF(fragment_timeout),
	  1, 3600 },
	{ "auth", "secret", parse_str, OFF(auth_secret), STR(auth_secret) },
	{ "auth", "private_prefix", parse_str, OFF(private_prefix),
	  STR(private_prefix) },
	{ "forward", "exchange", parse_amqp_name, OFF(forward_exchange),
	  STR(forward_exchange) },
	{ "forward", "lifecycle", parse_lifecycle, 0, 0, 0 },
	{ "http", "api_key", parse_str, OFF(api_key), STR(api_key) },
	{ "http", "static_dir", parse_file, OFF(static_dir),
	  STR(static_dir) },
	{ "http", "api_listen", parse_api_listen, 0, 0, 0 },
	{ "http", "body_timeout", parse_int, OFF(body_timeout), 1, 3600 },
	{ "log", "level", parse_level, OFF(log_level), 0, 0 },
	{ "http", "api_key_file", parse_credential, OFF(api_key_file),
	  STR(api_key_file) },
	{ "auth", "secret_file", parse_credential, OFF(auth_secret_file),
	  STR(auth_secret_file) },
	{ "server", "drain_delay", parse_int, OFF(drain_delay), 0, 300 },
	{ "auth", "previous_secret", parse_str, OFF(auth_previous_secret),
	  STR(auth_previous_secret) },
	{ "log", "file", parse_logfile, OFF(log_file), STR(log_file) },
	{ "log", "format", parse_log_format, 0, 0, 0 },
	{ "log", "access", parse_bool, OFF(log_access), 0, 0 },
	{ "cluster", "heartbeat", parse_int, OFF(cluster_heartbeat), 1, 60 },
	{ "cluster", "timeout", parse_int, OFF(cluster_timeout), 2, 3600 },
	{ "cluster", "query_timeout", parse_int, OFF(cluster_query_timeout),
	  1, 60 },
	{ "history", "channels", parse_regex, OFF(history_channels),
	  STR(history_channels) },
	{ "history", "size", parse_int, OFF(history_size), 1, 100000 },
	{ "history", "ttl", parse_int, OFF(history_ttl), 1, 604800 },
	{ "history", "stream", parse_amqp_name, OFF(history_stream),
	  STR(history_stream) },
	{ "history", "max_age", parse_int, OFF(history_max_age), 1,
	  31536000 },
	{ "presence", "prefix", parse_str, OFF(presence_prefix),
	  STR(presence_prefix) },
	{ "presence", "timeout", parse_int, OFF(presence_timeout), 1, 3600 },
	{ "presence", "max_members", parse_int, OFF(presence_max_members),
	  1, 10000000 },
};

static const struct key *
find_key(const char *section, const char *name)
{
	for (size_t i = 0; i < BG_ARRAY_LEN(keys); i++)
		if (strcmp(keys[i].section, section) == 0 &&
		    strcmp(keys[i].name, name) == 0)
			return &keys[i];
	return NULL;
}

/* List keys: a comma-separated value that a repeated key or an indented
 * continuation line extends instead of replacing. */
static bool
is_list(const struct key *k)
{
	return k->parse == parse_origins || k->parse == parse_lifecycle;
}

bool
bg_config_key_at(size_t i, const char **section, const char **key)
{
	if (i >= BG_ARRAY_LEN(keys))
		return false;
	*section = keys[i].section;
	*key = keys[i].name;
	return true;
}

static bool
known_section(const char *section)
{
	for (size_t i = 0; i < BG_ARRAY_LEN(keys); i++)
		if (strcmp(keys[i].section, section) == 0)
			return true;
	return false;
}

int
bg_config_set(struct bg_config *cfg, const char *section, const char *key,
	      const char *value, char *err, size_t errlen)
{
	const struct key *k = find_key(section, key);
	char msg[MSG_MAX];

	if (k == NULL) {
		if (!known_section(section))
			seterr(err, errlen, "unknown section [%s]", section);
		else
			seterr(err, errlen, "unknown key '%s' in [%s]", key,
			       section);
		return BG_ERR;
	}
	if (k->parse(k, cfg, value, msg, sizeof(msg)) != BG_OK) {
		seterr(err, errlen, "[%s] %s: %s", section, key, msg);
		return BG_ERR;
	}
	return BG_OK;
}

struct load {
	struct bg_config *cfg;
	FILE *fp;
	const char *path;
	char *err;
	size_t errlen;
	int lineno;
	bool failed;
	bool after_key;                  /* a key since the last [section] */
	bool continuation;               /* this line is indented after a
	                                    key: inih appends it to it */
	int seen[BG_ARRAY_LEN(keys)];    /* line each key was set on */
	char *list[BG_ARRAY_LEN(keys)];  /* list keys: the value so far */
	int filled[BG_ARRAY_LEN(keys)];  /* line each key got a value
	                                    other than "" on */
};

static void
load_fail(struct load *l, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void
load_fail(struct load *l, const char *fmt, ...)
{
	char msg[MSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	seterr(l->err, l->errlen, "%s:%d: %s", l->path, l->lineno, msg);
	l->failed = true;
}

/* Checks one raw line the way inih will read it; false on error. */
static bool
check_line(struct load *l, char *line)
{
	char *s = line, *e;

	if (l->lineno == 1 && strncmp(s, "\xEF\xBB\xBF", 3) == 0)
		line = s += 3;          /* UTF-8 BOM, as inih allows */
	while (*s == ' ' || *s == '\t')
		s++;
	if (*s == '\0' || *s == '\n' || *s == '\r' || *s == ';' || *s == '#')
		return true;
	if (*s == '[') {
		e = strchr(s, ']');
		if (e == NULL) {
			load_fail(l, "missing ']' in section header");
			return false;
		}
		*e = '\0';
		if (!known_section(s + 1))
			load_fail(l, "unknown section [%s]", s + 1);
		*e = ']';
		l->after_key = false;
		return !l->failed;
	}
	/* inih hands an indented line after a key to on_key as more of
	 * that key's value. */
	l->continuation = s > line && l->after_key;
	if (l->continuation)
		return true;
	if (strpbrk(s, "=:") == NULL) {
		load_fail(l, "expected [section] or key = value");
		return false;
	}
	l->after_key = true;
	return true;
}

/* fgets for inih: counts lines, checks them, stops after an error. */
static char *
read_line(char *str, int num, void *stream)
{
	struct load *l = stream;
	int c;

	if (l->failed || fgets(str, num, l->fp) == NULL)
		return NULL;
	l->lineno++;
	if (strchr(str, '\n') == NULL && (c = getc(l->fp)) != EOF) {
		if (c != '\n') {
			load_fail(l, "line longer than %d bytes (a list "
				  "may go on over indented lines)", num - 2);
			return NULL;
		}
	}
	return check_line(l, str) ? str : NULL;
}

/* A list key, its continuation line or its repetition: the value so far
 * plus ",value", set whole (so the last error names the line that broke
 * it). 1 on success, as inih wants. */
static int
list_add(struct load *l, const struct key *k, const char *value)
{
	char **acc = &l->list[k - keys], *all, msg[MSG_MAX];
	size_t old = *acc != NULL ? strlen(*acc) : 0, n;

	/* inih 55 leaves " ; comment" on a continuation line: cut it as it
	 * cuts it after a key. */
	for (n = 0; value[n] != '\0'; n++)
		if (value[n] == ';' && n > 0 && isspace((unsigned char)
							value[n - 1]))
			break;
	while (n > 0 && isspace((unsigned char)value[n - 1]))
		n--;
	all = malloc(old + n + 2);
	if (all == NULL) {
		load_fail(l, "out of memory");
		return 0;
	}
	if (old > 0)
		memcpy(all, *acc, old), all[old++] = ',';
	memcpy(all + old, value, n);
	all[old + n] = '\0';
	free(*acc);
	*acc = all;
	if (bg_config_set(l->cfg, k->section, k->name, all, msg, sizeof(msg))
	    != BG_OK) {
		load_fail(l, "%s", msg);
		return 0;
	}
	if (!l->seen[k - keys])
		l->seen[k - keys] = l->lineno;
	return 1;
}

/* A credential name from the file at l: relative to the file's folder
 * when relative and there is no $CREDENTIALS_DIRECTORY to look in. NULL
 * when that path would be too long. */
static const char *
credential_name(const struct load *l, const char *v, char *buf, size_t size)
{
	const char *creds = getenv("CREDENTIALS_DIRECTORY");
	const char *slash = strrchr(l->path, '/');

	if (v[0] == '\0' || v[0] == '/' || slash == NULL ||
	    (creds != NULL && creds[0] != '\0'))
		return v;
	if (snprintf(buf, size, "%.*s%s", (int)(slash - l->path) + 1,
		     l->path, v) >= (int)size)
		return NULL;
	return buf;
}

static int
on_key(void *user, const char *section, const char *name,
       const char *value)
{
	struct load *l = user;
	const struct key *k;
	char msg[MSG_MAX], path[1024];

	if (l->failed || name == NULL)
		return !l->failed;
	if (section[0] == '\0') {
		load_fail(l, "key '%s' before any [section]", name);
		return 0;
	}
	k = find_key(section, name);
	if (k != NULL && l->continuation && !is_list(k)) {
		load_fail(l, "indented line: only list keys (origins, "
			  "lifecycle) may go on over indented lines");
		return 0;
	}
	if (k != NULL && l->seen[k - keys] && !is_list(k)) {
		load_fail(l, "duplicate key '%s' in [%s] (first set on line "
			  "%d)", name, section, l->seen[k - keys]);
		return 0;
	}
	if (k != NULL && k->parse == parse_credential &&
	    (value = credential_name(l, value, path, sizeof(path))) == NULL) {
		load_fail(l, "[%s] %s: the path relative to this file's "
			  "folder is too long", section, name);
		return 0;
	}
	if (k != NULL && is_list(k))
		return list_add(l, k, value);
	if (bg_config_set(l->cfg, section, name, value, msg, sizeof(msg))
	    != BG_OK) {
		load_fail(l, "%s", msg);
		return 0;
	}
	l->seen[k - keys] = l->lineno;
	if (value[0] != '\0')
		l->filled[k - keys] = l->lineno;
	return 1;
}

/* The file paths set by the file at l (parse_file keys) that are
 * relative: prefixed with the file's folder. */
static void
resolve_paths(struct load *l)
{
	const char *slash = strrchr(l->path, '/');
	int dir_len = slash != NULL ? (int)(slash - l->path) + 1 : 0;

	for (size_t i = 0; i < BG_ARRAY_LEN(keys) && !l->failed; i++) {
		char *v = (char *)l->cfg + keys[i].off;
		char buf[1024];

		if ((keys[i].parse != parse_file &&
		     keys[i].parse != parse_logfile) || !l->seen[i] ||
		    v[0] == '\0' || v[0] == '/' || dir_len == 0)
			continue;
		if (snprintf(buf, sizeof(buf), "%.*s%s", dir_len, l->path, v)
		    > (int)keys[i].max) {
			l->lineno = l->seen[i];
			load_fail(l, "[%s] %s: the path relative to this "
				  "file's folder is too long", keys[i].section,
				  keys[i].name);
			return;
		}
		strcpy(v, buf);
	}
}

/* A secret given in the file both inline and as a credential file:
 * which one was meant is unclear, so it is an error at the later line. */
static void
check_credentials(struct load *l)
{
	static const char *const pairs[][3] = {
		{ "http", "api_key", "api_key_file" },
		{ "auth", "secret", "secret_file" },
	};

	for (size_t i = 0; i < BG_ARRAY_LEN(pairs) && !l->failed; i++) {
		int a = l->filled[find_key(pairs[i][0], pairs[i][1]) - keys];
		int b = l->filled[find_key(pairs[i][0], pairs[i][2]) - keys];

		if (a == 0 || b == 0)
			continue;
		l->lineno = a > b ? a : b;
		load_fail(l, "[%s] %s and %s: set one of them, not both",
			  pairs[i][0], pairs[i][1], pairs[i][2]);
	}
}

/* Reads fp (named path in messages) through inih; closes nothing. */
static int
load_stream(struct bg_config *cfg, FILE *fp, const char *path, char *err,
	    size_t errlen)
{
	struct load l = { .cfg = cfg, .fp = fp, .path = path, .err = err,
			  .errlen = errlen };
	int rc, read_errno;

	rc = ini_parse_stream(read_line, &l, on_key, &l);
	read_errno = ferror(l.fp) ? errno : 0;
	if (read_errno != 0) {
		seterr(err, errlen, "%s: cannot read: %s", path,
		       strerror(read_errno));
		return BG_ERR;
	}
	/*
	 * inih keeps reading after a line it rejects (say "key ; = value",
	 * where the comment hides the '='), so an error of ours may come
	 * later; report the first.
	 */
	if (rc > 0 && (!l.failed || rc < l.lineno)) {
		l.lineno = rc;
		load_fail(&l, "expected [section] or key = value");
	}
	resolve_paths(&l);
	for (size_t i = 0; i < BG_ARRAY_LEN(keys); i++)
		free(l.list[i]);
	check_credentials(&l);
	return l.failed ? BG_ERR : BG_OK;
}

#define ENV_PREFIX "BAGOU_"

/* Set by the client tools (python/bagou, bagou-broadcast) for themselves,
 * under a server section's name: never a server setting. */
static const char *const env_foreign[] = { "BAGOU_HTTP_URL" };

/*
 * One BAGOU_* variable (name n bytes at var, then '=' and the value).
 * Every known section that prefixes the rest with a '_' after it is tried
 * (a section may be a prefix of another, say "http" and "http_api"): the
 * one with such a key wins; with none, the error names the variable.
 */
static int
env_apply(struct bg_config *cfg, const char *var, size_t n, char *err,
	  size_t errlen)
{
	const char *rest = var + strlen(ENV_PREFIX), *value = var + n + 1;
	size_t rn = n - strlen(ENV_PREFIX);
	const struct key *named = NULL;
	char msg[MSG_MAX];

	for (size_t i = 0; i < BG_ARRAY_LEN(env_foreign); i++)
		if (strlen(env_foreign[i]) == n &&
		    strncmp(var, env_foreign[i], n) == 0)
			return BG_OK;
	for (size_t i = 0; i < BG_ARRAY_LEN(keys); i++) {
		const struct key *k = &keys[i];
		size_t sn = strlen(k->section);

		if (rn <= sn + 1 || rest[sn] != '_' ||
		    strncasecmp(rest, k->section, sn) != 0)
			continue;
		if (named == NULL || strlen(named->section) < sn)
			named = k;
		if (strlen(k->name) != rn - sn - 1 ||
		    strncasecmp(rest + sn + 1, k->name, rn - sn - 1) != 0)
			continue;
		if (k->parse(k, cfg, value, msg, sizeof(msg)) != BG_OK) {
			seterr(err, errlen, "environment %.*s: [%s] %s: %s",
			       (int)n, var, k->section, k->name, msg);
			return BG_ERR;
		}
		return BG_OK;
	}
	if (named != NULL) {
		seterr(err, errlen, "environment %.*s: unknown key '%.*s' in "
		       "[%s]", (int)n, var,
		       (int)(rn - strlen(named->section) - 1),
		       rest + strlen(named->section) + 1, named->section);
		return BG_ERR;
	}
	return BG_OK;
}

int
bg_config_load_env(struct bg_config *cfg, char *const *envp, char *err,
		   size_t errlen)
{
	for (; envp != NULL && *envp != NULL; envp++) {
		const char *eq = strchr(*envp, '=');

		if (eq == NULL || strncmp(*envp, ENV_PREFIX,
					  strlen(ENV_PREFIX)) != 0)
			continue;
		if (env_apply(cfg, *envp, (size_t)(eq - *envp), err, errlen)
		    != BG_OK)
			return BG_ERR;
	}
	return BG_OK;
}

int
bg_config_load(struct bg_config *cfg, const char *path, char *err,
	       size_t errlen)
{
	FILE *fp = fopen(path, "r");
	int rc;

	if (fp == NULL) {
		seterr(err, errlen, "%s: cannot open: %s", path,
		       strerror(errno));
		return BG_ERR;
	}
	rc = load_stream(cfg, fp, path, err, errlen);
	fclose(fp);
	return rc;
}

int
bg_config_load_text(struct bg_config *cfg, const char *text, size_t len,
		    const char *name, char *err, size_t errlen)
{
	FILE *fp;
	int rc;

	if (len == 0)
		return BG_OK;   /* an empty file sets nothing */
	fp = fmemopen((void *)text, len, "r");
	if (fp == NULL) {
		seterr(err, errlen, "%s: cannot open: %s", name,
		       strerror(errno));
		return BG_ERR;
	}
	rc = load_stream(cfg, fp, name, err, errlen);
	fclose(fp);
	return rc;
}

int
bg_config_validate(const struct bg_config *cfg, char *err, size_t errlen)
{
	if (cfg->max_message_size > cfg->max_queued_bytes) {
		seterr(err, errlen, "[limits] max_message_size (%zu) must not "
		       "exceed [limits] max_queued_bytes (%zu): a message "
		       "must fit in a connection's outbound queue",
		       cfg->max_message_size, cfg->max_queued_bytes);
		return BG_ERR;
	}
	if (cfg->forward_exchange[0] != '\0' &&
	    strcmp(cfg->amqp_url, "none") == 0) {
		seterr(err, errlen, "[forward] exchange needs RabbitMQ: set "
		       "[amqp] url (events are forwarded through it)");
		return BG_ERR;
	}
	if ((cfg->tls_cert[0] == '\0') != (cfg->tls_key[0] == '\0')) {
		seterr(err, errlen, "[server] tls_cert and [server] tls_key "
		       "go together: set both for TLS, or neither");
		return BG_ERR;
	}
	if (cfg->tls_ca[0] != '\0' && cfg->tls_cert[0] == '\0') {
		seterr(err, errlen, "[server] tls_ca needs [server] tls_cert "
		       "and tls_key");
		return BG_ERR;
	}
	if (cfg->auth_previous_secret[0] != '\0' &&
	    cfg->auth_secret[0] == '\0') {
		seterr(err, errlen, "[auth] previous_secret needs [auth] "
		       "secret (the new one)");
		return BG_ERR;
	}
	if (cfg->forward_lifecycle != 0 && cfg->forward_exchange[0] == '\0') {
		seterr(err, errlen, "[forward] lifecycle needs [forward] "
		       "exchange");
		return BG_ERR;
	}
	if (cfg->cluster_timeout <= cfg->cluster_heartbeat) {
		seterr(err, errlen, "[cluster] timeout (%d s) must be longer "
		       "than [cluster] heartbeat (%d s)", cfg->cluster_timeout,
		       cfg->cluster_heartbeat);
		return BG_ERR;
	}
	return BG_OK;
}

bool
bg_config_standalone(const struct bg_config *cfg)
{
	return strcmp(cfg->amqp_url, "none") == 0;
}
