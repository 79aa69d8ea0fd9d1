/*
 * bagou_broadcast.c - bagou-broadcast: publish one broadcast (PROTOCOL.md
 * §4) to the AMQP exchange every bagou-server node consumes (§5), from a
 * shell, cron job or deploy script.
 *
 * Single-threaded, one connection, one message. The broadcast is validated
 * with bg_proto_broadcast_text(), so what the server would drop is refused
 * here (exit 2) instead. Publisher confirms make exit 0 mean "the broker
 * took it"; every step with the broker shares one --timeout deadline
 * (name resolution excepted: getaddrinfo() cannot be bounded).
 *
 * Exit codes: 0 published and confirmed, 1 internal error, 2 usage or
 * invalid broadcast, 3 broker unreachable, 4 login refused, 5 publish
 * refused or not confirmed.
 */
#include <amqp.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <netdb.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/bg.h"
#include "common/msg.h"
#include "common/proto.h"

#define PROG "bagou-broadcast"
#define DEFAULT_URL "amqp://guest:guest@localhost:5672/"
#define DEFAULT_EXCHANGE "bagou"
#define DEFAULT_TIMEOUT 10.0
#define MAX_TIMEOUT 3600.0
#define DATA_FILE_MAX (16u << 20)  /* --data @FILE */
#define CHANNEL 1

enum {
	EXIT_PUBLISHED = 0,
	EXIT_INTERNAL = 1,
	EXIT_USAGE = 2,
	EXIT_UNREACHABLE = 3,
	EXIT_LOGIN = 4,
	EXIT_REFUSED = 5,
};

struct opts {
	const char *url;
	const char *exchange;
	const char *event;
	const char **channels;   /* argv strings, de-duplicated */
	int n_channels;
	const char **clients;
	int n_clients;
	const char *exclude;
	const char *data;        /* JSON text, @FILE or @- */
	const char *callback_id;
	double timeout;
	bool quiet;
};

/* One connection attempt: what the error paths need to report. */
struct session {
	amqp_connection_state_t conn;
	struct timespec deadline;
	double timeout;
	const char *host;
	int port;
	const char *vhost;
	bool logged_in;
	bool channel_open;
};

static void
usage(FILE *out)
{
	fprintf(out,
"usage: " PROG " [options] --event EVENT\n"
"Publishes one broadcast to the exchange bagou-server consumes.\n"
"  -u, --url URL          amqp://user:pass@host:5672/vhost or amqps://...\n"
"                         (default $BAGOU_AMQP_URL, else\n"
"                         " DEFAULT_URL ")\n"
"  -x, --exchange NAME    topic exchange (default " DEFAULT_EXCHANGE ")\n"
"  -e, --event EVENT      event name (required)\n"
"  -c, --channel NAME     target channel; repeat for several; none means\n"
"                         every connected client\n"
"  -C, --client ID        deliver only to this client id; repeatable\n"
"  -X, --exclude ID       do not deliver to this client id\n"
"  -d, --data JSON        any JSON value (default {}); @FILE reads it\n"
"                         from FILE, @- from standard input\n"
"  -b, --callback-id ID   passed through to the clients unchanged\n"
"  -t, --timeout SECONDS  bound on connect, login and confirm (default\n"
"                         10)\n"
"  -q, --quiet            print nothing on success, no warnings\n"
"  -V, --version          print the version and exit\n"
"  -h, --help             this help\n"
"The routing key is the channel name when exactly one channel is given,\n"
"else empty. amqps:// verifies the broker against the system CA bundle\n"
"(SSL_CERT_FILE / SSL_CERT_DIR override it).\n"
"Exit status:\n"
"  0  published, and confirmed by the broker\n"
"  1  internal error (out of memory)\n"
"  2  usage error, invalid JSON or invalid broadcast\n"
"  3  broker unreachable (refused, name resolution, TLS, timeout)\n"
"  4  login refused (user, password or vhost)\n"
"  5  the broker refused or did not confirm the publish (missing\n"
"     exchange, nack, channel closed, timeout)\n");
}

static void
fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void
fail(const char *fmt, ...)
{
	va_list ap;

	fputs(PROG ": ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/*
 * Copies s into out for an error message: non-printable bytes as \xNN,
 * long values cut with "...". Returns out.
 */
static const char *
shown(const char *s, size_t len, char *out, size_t outlen)
{
	size_t o = 0;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (o + 8 >= outlen) {
			memcpy(out + o, "...", 4);
			return out;
		}
		if (c < 0x20 || c > 0x7e || c == '\\')
			o += (size_t)snprintf(out + o, outlen - o, "\\x%02x",
					      c);
		else
			out[o++] = (char)c;
	}
	out[o] = '\0';
	return out;
}

/* ------------------------------------------------------------ options */

static bool
parse_timeout(const char *s, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || end == s || *end != '\0' || !isfinite(v) ||
	    v <= 0 || v > MAX_TIMEOUT)
		return false;
	*out = v;
	return true;
}

static bool
listed(const char **list, int n, const char *s)
{
	for (int i = 0; i < n; i++)
		if (strcmp(list[i], s) == 0)
			return true;
	return false;
}

/* Parses argv into o; returns -1 to go on, else the exit status. */
static int
parse_args(int argc, char **argv, struct opts *o)
{
	static const struct option longopts[] = {
		{ "url", required_argument, NULL, 'u' },
		{ "exchange", required_argument, NULL, 'x' },
		{ "event", required_argument, NULL, 'e' },
		{ "channel", required_argument, NULL, 'c' },
		{ "client", required_argument, NULL, 'C' },
		{ "exclude", required_argument, NULL, 'X' },
		{ "data", required_argument, NULL, 'd' },
		{ "callback-id", required_argument, NULL, 'b' },
		{ "timeout", required_argument, NULL, 't' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int opt;

	/* At most one list entry per argument. */
	o->channels = calloc((size_t)argc, sizeof(*o->channels));
	o->clients = calloc((size_t)argc, sizeof(*o->clients));
	if (o->channels == NULL || o->clients == NULL) {
		fail("out of memory");
		return EXIT_INTERNAL;
	}
	o->url = getenv("BAGOU_AMQP_URL");
	if (o->url == NULL || *o->url == '\0')
		o->url = DEFAULT_URL;
	o->exchange = DEFAULT_EXCHANGE;
	o->timeout = DEFAULT_TIMEOUT;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":u:x:e:c:C:X:d:b:t:qVh",
				  longopts, NULL)) != -1) {
		switch (opt) {
		case 'u': o->url = optarg; break;
		case 'x': o->exchange = optarg; break;
		case 'e': o->event = optarg; break;
		case 'c':
			if (!listed(o->channels, o->n_channels, optarg))
				o->channels[o->n_channels++] = optarg;
			break;
		case 'C':
			if (!listed(o->clients, o->n_clients, optarg))
				o->clients[o->n_clients++] = optarg;
			break;
		case 'X': o->exclude = optarg; break;
		case 'd': o->data = optarg; break;
		case 'b': o->callback_id = optarg; break;
		case 't':
			if (!parse_timeout(optarg, &o->timeout)) {
				fail("--timeout: expected seconds in (0, %.0f]"
				     ", got '%s'", MAX_TIMEOUT, optarg);
				return EXIT_USAGE;
			}
			break;
		case 'q': o->quiet = true; break;
		case 'V':
			printf(PROG " %s (protocol %d)\n", BG_VERSION,
			       BG_PROTOCOL_VERSION);
			return EXIT_SUCCESS;
		case 'h':
			usage(stdout);
			return EXIT_SUCCESS;
		case ':':
			fail("%s needs a value", argv[optind - 1]);
			return EXIT_USAGE;
		default:
			fail("unknown option '%s' (see --help)",
			     argv[optind - 1]);
			return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		fail("unexpected argument '%s' (see --help)", argv[optind]);
		return EXIT_USAGE;
	}
	if (o->event == NULL) {
		fail("--event is required (see --help)");
		return EXIT_USAGE;
	}
	return -1;
}

/* ------------------------------------------------------------ message */

/* Reads --data @FILE (or @- for stdin), bounded. NULL after failing. */
static char *
read_data_file(const char *path, size_t *len)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
	char *buf;
	size_t n;

	if (f == NULL) {
		fail("--data: cannot open '%s': %s", path, strerror(errno));
		return NULL;
	}
	buf = malloc(DATA_FILE_MAX + 1);
	if (buf == NULL) {
		fail("out of memory");
		goto out;
	}
	n = fread(buf, 1, DATA_FILE_MAX + 1, f);
	if (ferror(f)) {
		fail("--data: cannot read '%s': %s", path, strerror(errno));
		goto bad;
	}
	if (n > DATA_FILE_MAX) {
		fail("--data: '%s' is larger than %u MiB", path,
		     DATA_FILE_MAX >> 20);
		goto bad;
	}
	*len = n;
	if (f != stdin)
		fclose(f);
	return buf;
bad:
	free(buf);
	buf = NULL;
out:
	if (f != stdin)
		fclose(f);
	return NULL;
}

/* --data as a JSON value (any type); NULL after failing. */
static json_t *
load_data(const char *arg)
{
	json_error_t jerr;
	json_t *v;
	char *buf = NULL;
	size_t len;

	if (arg == NULL)
		return json_object();
	if (arg[0] == '@') {
		buf = read_data_file(arg + 1, &len);
		if (buf == NULL)
			return NULL;
	}
	v = json_loadb(buf ? buf : arg, buf ? len : strlen(arg),
		       JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
	free(buf);
	if (v == NULL)
		fail("--data: invalid JSON at line %d column %d: %s",
		     jerr.line, jerr.column, jerr.text);
	return v;
}

/* A JSON string from an argument; NULL (after failing) if not UTF-8. */
static json_t *
utf8_string(const char *flag, const char *s)
{
	json_t *v = json_string(s);
	char buf[96];

	if (v == NULL)
		fail("%s: not valid UTF-8: '%s'", flag,
		     shown(s, strlen(s), buf, sizeof(buf)));
	return v;
}

/* The names as one string, or a list for several. */
static json_t *
names_json(const char **names, int n)
{
	json_t *list;

	if (n == 1)
		return json_string(names[0]);
	list = json_array();
	for (int i = 0; list != NULL && i < n; i++)
		if (json_array_append_new(list, json_string(names[i])) != 0) {
			json_decref(list);
			return NULL;
		}
	return list;
}

/* Checks the names the server would refuse, naming the culprit. */
static bool
names_valid(const struct opts *o)
{
	char buf[96];

	for (int i = 0; i < o->n_channels; i++) {
		const char *c = o->channels[i];
		if (!bg_proto_channel_valid(c, strlen(c))) {
			fail("invalid channel name '%s' (1-%d bytes of "
			     "printable ASCII, no space, *, #, \" or \\)",
			     shown(c, strlen(c), buf, sizeof(buf)),
			     BG_CHANNEL_MAX);
			return false;
		}
	}
	for (int i = 0; i < o->n_clients + 1; i++) {
		const char *id = i < o->n_clients ? o->clients[i] : o->exclude;
		if (id != NULL && !bg_proto_client_id_valid(id, strlen(id))) {
			fail("invalid client id '%s' in %s (1-%d bytes of "
			     "printable ASCII, no space, \" or \\)",
			     shown(id, strlen(id), buf, sizeof(buf)),
			     i < o->n_clients ? "--client" : "--exclude",
			     BG_ID_MAX);
			return false;
		}
	}
	if (o->callback_id != NULL && strlen(o->callback_id) >
	    BG_CALLBACK_MAX) {
		fail("--callback-id: longer than %d bytes", BG_CALLBACK_MAX);
		return false;
	}
	if (o->event[0] == '\0') {
		fail("--event must not be empty");
		return false;
	}
	return true;
}

/*
 * Builds the broadcast and validates it exactly as the server does.
 * Returns the message (its body is what gets published), or NULL with
 * *status set.
 */
static struct bg_msg *
build_message(const struct opts *o, int *status)
{
	json_t *root, *data = NULL, *v;
	struct bg_msg *m = NULL;
	enum bg_code code;
	char *text = NULL, err[256];

	*status = EXIT_USAGE;
	if (!names_valid(o))
		return NULL;
	root = json_object();
	if (root == NULL)
		goto oom;
	if ((v = utf8_string("--event", o->event)) == NULL)
		goto out;
	json_object_set_new(root, "event", v);
	if (o->n_channels > 0) {
		if ((v = names_json(o->channels, o->n_channels)) == NULL)
			goto oom;
		json_object_set_new(root, "channel", v);
	}
	if ((data = load_data(o->data)) == NULL)
		goto out;
	json_object_set(root, "data", data);
	if (o->n_clients > 0) {
		if ((v = names_json(o->clients, o->n_clients)) == NULL)
			goto oom;
		json_object_set_new(root, "client", v);
	}
	if (o->exclude != NULL)
		json_object_set_new(root, "exclude", json_string(o->exclude));
	if (o->callback_id != NULL) {
		if ((v = utf8_string("--callback-id", o->callback_id)) == NULL)
			goto out;
		json_object_set_new(root, "callbackId", v);
	}
	text = json_dumps(root, JSON_COMPACT);
	if (text == NULL)
		goto oom;
	m = bg_proto_broadcast_text(text, strlen(text), NULL, &code, err,
				    sizeof(err));
	if (m == NULL) {
		if (code == BG_CODE_INTERNAL)
			goto oom;
		fail("invalid broadcast: %s", err);
	}
	goto out;
oom:
	fail("out of memory");
	*status = EXIT_INTERNAL;
out:
	free(text);
	json_decref(data);
	json_decref(root);
	return m;
}

/* ------------------------------------------------------------ broker */

/* Time left before the deadline, at least 1 ms so a call still polls. */
static struct timeval
remaining(const struct session *s)
{
	struct timespec now;
	struct timeval tv;
	long long us;

	clock_gettime(CLOCK_MONOTONIC, &now);
	us = (long long)(s->deadline.tv_sec - now.tv_sec) * 1000000 +
	     (s->deadline.tv_nsec - now.tv_nsec) / 1000;
	if (us < 1000)
		us = 1000;
	tv.tv_sec = (time_t)(us / 1000000);
	tv.tv_usec = (suseconds_t)(us % 1000000);
	return tv;
}

static bool
expired(const struct session *s)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec > s->deadline.tv_sec ||
	       (now.tv_sec == s->deadline.tv_sec &&
		now.tv_nsec >= s->deadline.tv_nsec);
}

/* Writes "CODE_TEXT" of a broker close (reply_text) into out. */
static const char *
reply_text(amqp_bytes_t text, char *out, size_t outlen)
{
	return shown(text.bytes, text.len, out, outlen);
}

/* Answers a broker-initiated close so it logs a clean shutdown. */
static void
ack_close(struct session *s, amqp_channel_t ch, amqp_method_number_t id)
{
	if (id == AMQP_CHANNEL_CLOSE_METHOD) {
		amqp_channel_close_ok_t ok = { 0 };
		amqp_send_method(s->conn, ch, AMQP_CHANNEL_CLOSE_OK_METHOD,
				 &ok);
		s->channel_open = false;
	} else if (id == AMQP_CONNECTION_CLOSE_METHOD) {
		amqp_connection_close_ok_t ok = { 0 };
		amqp_send_method(s->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD,
				 &ok);
		s->channel_open = false;
		s->logged_in = false;
	}
}

/* Describes a failed RPC reply into out; answers broker closes. */
static const char *
rpc_error(struct session *s, amqp_rpc_reply_t r, char *out, size_t outlen)
{
	char text[160];

	switch (r.reply_type) {
	case AMQP_RESPONSE_NONE:
		snprintf(out, outlen, "no reply from the broker");
		break;
	case AMQP_RESPONSE_LIBRARY_EXCEPTION:
		snprintf(out, outlen, "%s",
			 amqp_error_string2(r.library_error));
		if (r.library_error == AMQP_STATUS_CONNECTION_CLOSED ||
		    r.library_error == AMQP_STATUS_SOCKET_ERROR ||
		    r.library_error == AMQP_STATUS_TIMEOUT)
			s->logged_in = s->channel_open = false;
		break;
	case AMQP_RESPONSE_SERVER_EXCEPTION:
		if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
			amqp_connection_close_t *c = r.reply.decoded;
			snprintf(out, outlen, "%s", reply_text(c->reply_text,
				 text, sizeof(text)));
		} else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
			amqp_channel_close_t *c = r.reply.decoded;
			snprintf(out, outlen, "%s", reply_text(c->reply_text,
				 text, sizeof(text)));
		} else {
			snprintf(out, outlen, "unexpected %s",
				 amqp_method_name(r.reply.id));
		}
		ack_close(s, CHANNEL, r.reply.id);
		break;
	case AMQP_RESPONSE_NORMAL:
		snprintf(out, outlen, "no error");
		break;
	}
	return out;
}

/*
 * rabbitmq-c reports a failed connect only as "a socket error occurred";
 * one more connect (to the first address, within the time left) names
 * the cause: "Connection refused", "No route to host", ...
 * Returns that errno, or 0 when it cannot tell.
 */
static int
connect_errno(const struct session *s)
{
	struct addrinfo hints = { 0 }, *ai;
	struct timeval tv = remaining(s);
	char port[16];
	int fd, e = 0;

	hints.ai_socktype = SOCK_STREAM;
	snprintf(port, sizeof(port), "%d", s->port);
	if (getaddrinfo(s->host, port, &hints, &ai) != 0)
		return 0;
	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
		    ai->ai_protocol);
	if (fd >= 0) {
		/* Linux bounds a blocking connect() by SO_SNDTIMEO. */
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0)
			e = errno == EINPROGRESS ? ETIMEDOUT : errno;
		close(fd);
	}
	freeaddrinfo(ai);
	return e;
}

/* TLS: verify the broker's chain and name against the system CAs. */
static bool
setup_tls(amqp_socket_t *sock)
{
	SSL_CTX *ctx = amqp_ssl_socket_get_context(sock);

	if (ctx == NULL || SSL_CTX_set_default_verify_paths(ctx) != 1) {
		fail("cannot load the system CA certificates");
		return false;
	}
	amqp_ssl_socket_set_verify_peer(sock, 1);
	amqp_ssl_socket_set_verify_hostname(sock, 1);
	return true;
}

/* TCP (or TLS) connect and AMQP login. Returns 0 or an exit status. */
static int
connect_login(struct session *s, const struct amqp_connection_info *ci)
{
	amqp_table_entry_t prop[3], cap[1];
	amqp_table_t props = { 3, prop };
	amqp_socket_t *sock;
	amqp_rpc_reply_t r;
	struct timeval tv;
	char why[256];
	int rc;

	s->conn = amqp_new_connection();
	if (s->conn == NULL) {
		fail("out of memory");
		return EXIT_INTERNAL;
	}
	sock = ci->ssl ? amqp_ssl_socket_new(s->conn)
		       : amqp_tcp_socket_new(s->conn);
	if (sock == NULL) {
		fail("cannot create the %s socket", ci->ssl ? "TLS" : "TCP");
		return EXIT_INTERNAL;
	}
	if (ci->ssl && !setup_tls(sock))
		return EXIT_INTERNAL;
	tv = remaining(s);
	rc = amqp_socket_open_noblock(sock, ci->host, ci->port, &tv);
	if (rc != AMQP_STATUS_OK) {
		int e = rc == AMQP_STATUS_SOCKET_ERROR ? connect_errno(s) : 0;
		if (rc == AMQP_STATUS_TIMEOUT || e == ETIMEDOUT)
			fail("cannot connect to %s:%d: no answer within "
			     "%g s", ci->host, ci->port, s->timeout);
		else if (rc == AMQP_STATUS_SOCKET_ERROR && e != 0)
			fail("cannot connect to %s:%d: %s", ci->host,
			     ci->port, strerror(e));
		else
			fail("cannot connect to %s:%d: %s", ci->host,
			     ci->port, amqp_error_string2(rc));
		return EXIT_UNREACHABLE;
	}
	/* Names this connection in the broker's management UI. */
	prop[0].key = amqp_cstring_bytes("connection_name");
	prop[0].value.kind = AMQP_FIELD_KIND_UTF8;
	prop[0].value.value.bytes = amqp_cstring_bytes(PROG);
	prop[1].key = amqp_cstring_bytes("product");
	prop[1].value.kind = AMQP_FIELD_KIND_UTF8;
	prop[1].value.value.bytes = amqp_cstring_bytes(PROG);
	/* So a broker short of memory or disk says why it is not
	 * confirming (rabbitmq-c merges this with its own list). */
	cap[0].key = amqp_cstring_bytes("connection.blocked");
	cap[0].value.kind = AMQP_FIELD_KIND_BOOLEAN;
	cap[0].value.value.boolean = 1;
	prop[2].key = amqp_cstring_bytes("capabilities");
	prop[2].value.kind = AMQP_FIELD_KIND_TABLE;
	prop[2].value.value.table = (amqp_table_t){ 1, cap };
	tv = remaining(s);
	amqp_set_handshake_timeout(s->conn, &tv);
	amqp_set_rpc_timeout(s->conn, &tv);
	r = amqp_login_with_properties(s->conn, s->vhost, 0, 131072, 0,
				       &props, AMQP_SASL_METHOD_PLAIN,
				       ci->user, ci->password);
	if (r.reply_type == AMQP_RESPONSE_NORMAL) {
		s->logged_in = true;
		return 0;
	}
	if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
	    r.library_error == AMQP_STATUS_TIMEOUT) {
		fail("%s:%d: no AMQP handshake within %g s (is it a "
		     "RabbitMQ port?)", ci->host, ci->port, s->timeout);
		return EXIT_UNREACHABLE;
	}
	rpc_error(s, r, why, sizeof(why));
	if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION ||
	    r.library_error == AMQP_STATUS_CONNECTION_CLOSED) {
		/* RabbitMQ names the refusal (authentication_failure_close);
		 * older brokers just hang up. */
		fail("login refused by %s:%d for user '%s' on vhost '%s': %s",
		     ci->host, ci->port, ci->user, s->vhost, why);
		return EXIT_LOGIN;
	}
	fail("AMQP handshake with %s:%d failed: %s", ci->host, ci->port,
	     why);
	return EXIT_UNREACHABLE;
}

/* Opens the channel in confirm mode. Returns 0 or an exit status. */
static int
open_channel(struct session *s)
{
	char why[256];
	struct timeval tv = remaining(s);

	amqp_set_rpc_timeout(s->conn, &tv);
	amqp_channel_open(s->conn, CHANNEL);
	if (amqp_get_rpc_reply(s->conn).reply_type != AMQP_RESPONSE_NORMAL) {
		fail("cannot open a channel: %s", rpc_error(s,
		     amqp_get_rpc_reply(s->conn), why, sizeof(why)));
		return EXIT_REFUSED;
	}
	s->channel_open = true;
	tv = remaining(s);
	amqp_set_rpc_timeout(s->conn, &tv);
	amqp_confirm_select(s->conn, CHANNEL);
	if (amqp_get_rpc_reply(s->conn).reply_type != AMQP_RESPONSE_NORMAL) {
		fail("the broker refused publisher confirms: %s", rpc_error(s,
		     amqp_get_rpc_reply(s->conn), why, sizeof(why)));
		return EXIT_REFUSED;
	}
	return 0;
}

/*
 * Waits for the broker's verdict on delivery tag 1. A basic.return
 * (mandatory, no queue bound) comes before the ack and sets *unroutable.
 * Returns 0 or an exit status.
 */
static int
wait_confirm(struct session *s, const char *exchange, bool *unroutable)
{
	char text[160], name[96], blocked[160] = "";

	*unroutable = false;
	for (;;) {
		amqp_frame_t f;
		struct timeval tv = remaining(s);
		int rc;

		if (expired(s))
			rc = AMQP_STATUS_TIMEOUT;
		else
			rc = amqp_simple_wait_frame_noblock(s->conn, &f, &tv);
		if (rc == AMQP_STATUS_TIMEOUT) {
			/* Not answering: a polite close would hang too. */
			s->logged_in = s->channel_open = false;
			fail("the broker did not confirm the publish within "
			     "%g s%s%s%s", s->timeout,
			     blocked[0] ? " (it blocks publishers: " : "",
			     blocked, blocked[0] ? ")" : "");
			return EXIT_REFUSED;
		}
		if (rc != AMQP_STATUS_OK) {
			s->logged_in = s->channel_open = false;
			fail("lost the connection before the broker confirmed "
			     "the publish: %s", amqp_error_string2(rc));
			return EXIT_REFUSED;
		}
		if (f.frame_type != AMQP_FRAME_METHOD)
			continue;  /* a returned message's header and body */
		switch (f.payload.method.id) {
		case AMQP_BASIC_ACK_METHOD:
			return 0;
		case AMQP_BASIC_NACK_METHOD:
			fail("the broker refused the message (basic.nack)");
			return EXIT_REFUSED;
		case AMQP_BASIC_RETURN_METHOD:
			*unroutable = true;
			break;
		case AMQP_CONNECTION_BLOCKED_METHOD: {
			amqp_connection_blocked_t *b =
				f.payload.method.decoded;

			reply_text(b->reason, blocked, sizeof(blocked));
			break;
		}
		case AMQP_CONNECTION_UNBLOCKED_METHOD:
			blocked[0] = '\0';
			break;
		case AMQP_CHANNEL_CLOSE_METHOD: {
			amqp_channel_close_t *c = f.payload.method.decoded;

			ack_close(s, f.channel, AMQP_CHANNEL_CLOSE_METHOD);
			if (c->reply_code == AMQP_NOT_FOUND)
				fail("exchange '%s' does not exist (is "
				     "bagou-server running against this "
				     "broker?)", shown(exchange,
				     strlen(exchange), name, sizeof(name)));
			else
				fail("the broker closed the channel: %s",
				     reply_text(c->reply_text, text,
						sizeof(text)));
			return EXIT_REFUSED;
		}
		case AMQP_CONNECTION_CLOSE_METHOD: {
			amqp_connection_close_t *c = f.payload.method.decoded;

			ack_close(s, 0, AMQP_CONNECTION_CLOSE_METHOD);
			fail("the broker closed the connection: %s",
			     reply_text(c->reply_text, text, sizeof(text)));
			return EXIT_REFUSED;
		}
		default:
			break;
		}
	}
}

/* Closes politely where the connection still allows it, then frees. */
static void
session_end(struct session *s)
{
	struct timeval tv = remaining(s);

	if (s->conn == NULL)
		return;
	/* Within the deadline, and never more than a second for courtesy. */
	if (tv.tv_sec >= 1) {
		tv.tv_sec = 1;
		tv.tv_usec = 0;
	}
	amqp_set_rpc_timeout(s->conn, &tv);
	if (s->channel_open)
		amqp_channel_close(s->conn, CHANNEL, AMQP_REPLY_SUCCESS);
	if (s->logged_in)
		amqp_connection_close(s->conn, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(s->conn);
	s->conn = NULL;
}

/* Connects, publishes m and waits for the confirm. Exit status. */
static int
publish(const struct opts *o, const struct bg_msg *m,
	const struct amqp_connection_info *ci)
{
	amqp_basic_properties_t props = { 0 };
	struct session s = { 0 };
	const char *key = o->n_channels == 1 ? o->channels[0] : "";
	bool unroutable;
	int rc;

	clock_gettime(CLOCK_MONOTONIC, &s.deadline);
	s.deadline.tv_sec += (time_t)o->timeout;
	s.deadline.tv_nsec += (long)((o->timeout - floor(o->timeout)) * 1e9);
	if (s.deadline.tv_nsec >= 1000000000L) {
		s.deadline.tv_sec++;
		s.deadline.tv_nsec -= 1000000000L;
	}
	s.timeout = o->timeout;
	s.host = ci->host;
	s.port = ci->port;
	/* "amqp://host/" names the default vhost, as in pika and kombu. */
	s.vhost = ci->vhost[0] != '\0' ? ci->vhost : "/";

	rc = connect_login(&s, ci);
	if (rc == 0)
		rc = open_channel(&s);
	if (rc != 0)
		goto out;
	props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG |
		       AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_APP_ID_FLAG;
	props.content_type = amqp_cstring_bytes("application/json");
	props.delivery_mode = 2;  /* persistent */
	props.app_id = amqp_cstring_bytes(PROG);
	/* mandatory: a broadcast no node's queue receives is reported. */
	rc = amqp_basic_publish(s.conn, CHANNEL,
				amqp_cstring_bytes(o->exchange),
				amqp_cstring_bytes(key), 1, 0, &props,
				(amqp_bytes_t){ m->body_len, m->body });
	if (rc != AMQP_STATUS_OK) {
		fail("publish failed: %s", amqp_error_string2(rc));
		rc = EXIT_REFUSED;
		goto out;
	}
	rc = wait_confirm(&s, o->exchange, &unroutable);
	if (rc != 0)
		goto out;
	if (unroutable && !o->quiet)
		fail("warning: no queue is bound to exchange '%s' for "
		     "routing key '%s': no bagou-server node received this "
		     "broadcast (none is connected, or none has a subscriber "
		     "for this channel)", o->exchange, key);
	if (!o->quiet)
		printf("published '%s' to exchange '%s' with routing key "
		       "'%s' (%zu bytes, confirmed)\n", o->event, o->exchange,
		       key, m->body_len);
out:
	session_end(&s);
	return rc;
}

/* Hides the password of a URL for messages: amqp://user:***@host/. */
static const char *
redacted(const char *url, char *out, size_t outlen)
{
	const char *scheme = strstr(url, "://");
	const char *at, *colon;

	snprintf(out, outlen, "%s", url);
	if (scheme == NULL)
		return out;
	at = strchr(scheme + 3, '@');
	colon = strchr(scheme + 3, ':');
	if (at != NULL && colon != NULL && colon < at)
		snprintf(out, outlen, "%.*s:***%s", (int)(colon - url), url,
			 at);
	return out;
}

int
main(int argc, char **argv)
{
	struct opts o = { 0 };
	struct amqp_connection_info ci;
	struct bg_msg *m = NULL;
	char *url = NULL, shown_url[256];
	int rc;

	rc = parse_args(argc, argv, &o);
	if (rc >= 0)
		goto out;
	m = build_message(&o, &rc);
	if (m == NULL)
		goto out;
	url = strdup(o.url);
	if (url == NULL) {
		fail("out of memory");
		rc = EXIT_INTERNAL;
		goto out;
	}
	if (amqp_parse_url(url, &ci) != AMQP_STATUS_OK) {
		fail("--url: not an amqp:// or amqps:// URL "
		     "(amqp://user:pass@host:port/vhost): '%s'",
		     redacted(o.url, shown_url, sizeof(shown_url)));
		rc = EXIT_USAGE;
		goto out;
	}
	if (o.exchange[0] == '\0' || strlen(o.exchange) > 255) {
		fail("--exchange: 1 to 255 bytes expected");
		rc = EXIT_USAGE;
		goto out;
	}
	rc = publish(&o, m, &ci);
out:
	bg_msg_unref(m);
	free(url);
	free(o.channels);
	free(o.clients);
	return rc;
}
