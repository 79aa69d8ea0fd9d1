/*
 * consumer.c - the AMQP link: connect, log in, declare the topology,
 * consume with manual acks, keep heartbeats. Bus thread only.
 *
 * rabbitmq-c is used synchronously with short timeouts: connecting blocks
 * the bus thread for at most a few seconds, during which workers answer
 * "unavailable" (the link is not up). Once up, bg_link_service reads only
 * what is already there.
 */
#include "amqp/link.h"
#include "amqp/link_internal.h"

#include <amqp.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "common/bg.h"
#include "common/log.h"

#define CHANNEL 1
#define CONNECT_TIMEOUT_S 5
#define RPC_TIMEOUT_S 5
#define MAX_PER_SERVICE 1024

struct bg_link {
	const struct bg_config *cfg;
	char *url;                       /* amqp_parse_url writes into it */
	struct amqp_connection_info ci;
	amqp_connection_state_t conn;    /* NULL while down */
	bool up;
	char queue[256];                 /* the server-named node queue */
	uint64_t epoch;                  /* bus reads: channel generation */
	uint64_t reopens;                /* bus writes, any reads */
	/* The control plane (control.h): its exchange, this connection's
	 * exclusive queue on it, the shared API queue, the callback. */
	char ctl_exchange[300];
	char ctl_name[400];              /* the queue name asked for */
	char ctl_queue[256];
	char api_queue[300];
	bg_link_control_fn ctl_fn;
	void *ctl_arg;
};

static bool rpc_ok(struct bg_link *l, const char *what);

#define CTL_TAG "bagou-control"
#define API_TAG "bagou-api"

void
bg_link_set_control(struct bg_link *l, const char *node,
		    bg_link_control_fn fn, void *arg)
{
	l->ctl_fn = fn;
	l->ctl_arg = arg;
	snprintf(l->ctl_name, sizeof(l->ctl_name), "%s.%s", l->ctl_exchange,
		 node);
}

/* The control exchange and its queues, consumed without acks (control
 * messages must not wait behind held broadcasts; a multiple ack of a
 * broadcast would also ack them). */
static int
declare_control(struct bg_link *l, bool fresh)
{
	amqp_queue_declare_ok_t *q;

	amqp_exchange_declare(l->conn, CHANNEL,
			      amqp_cstring_bytes(l->ctl_exchange),
			      amqp_cstring_bytes("fanout"), 0, 1, 0, 0,
			      amqp_empty_table);
	if (!rpc_ok(l, "exchange.declare (control)"))
		return BG_ERR;
	if (fresh) {
		q = amqp_queue_declare(l->conn, CHANNEL,
				       strlen(l->ctl_name) <= BG_LINK_MAX_KEY ?
				       amqp_cstring_bytes(l->ctl_name) :
				       amqp_empty_bytes, 0, 0, 1, 0,
				       amqp_empty_table);
		if (!rpc_ok(l, "queue.declare (control)") || q == NULL)
			return BG_ERR;
		snprintf(l->ctl_queue, sizeof(l->ctl_queue), "%.*s",
			 (int)q->queue.len, (char *)q->queue.bytes);
	}
	amqp_queue_bind(l->conn, CHANNEL, amqp_cstring_bytes(l->ctl_queue),
			amqp_cstring_bytes(l->ctl_exchange), amqp_empty_bytes,
			amqp_empty_table);
	if (!rpc_ok(l, "queue.bind (control)"))
		return BG_ERR;
	/* Shared by the nodes: each request goes to one of them. Not
	 * durable, deleted with its last consumer: with no node up, a
	 * request is unroutable (the client's mandatory flag tells it). */
	amqp_queue_declare(l->conn, CHANNEL, amqp_cstring_bytes(l->api_queue),
			   0, 0, 0, 1, amqp_empty_table);
	if (!rpc_ok(l, "queue.declare (API)"))
		return BG_ERR;
	amqp_basic_consume(l->conn, CHANNEL, amqp_cstring_bytes(l->ctl_queue),
			   amqp_cstring_bytes(CTL_TAG), 0, 1, 1,
			   amqp_empty_table);
	if (!rpc_ok(l, "basic.consume (control)"))
		return BG_ERR;
	amqp_basic_consume(l->conn, CHANNEL, amqp_cstring_bytes(l->api_queue),
			   amqp_cstring_bytes(API_TAG), 0, 1, 0,
			   amqp_empty_table);
	if (!rpc_ok(l, "basic.consume (API)"))
		return BG_ERR;
	return BG_OK;
}

/* A control-plane delivery: true when it was one (handed on). */
static bool
control_delivery(struct bg_link *l, const amqp_envelope_t *env)
{
	const amqp_basic_properties_t *p = &env->message.properties;
	enum bg_link_source src;
	char reply_to[256], corr[256];
	bool has_reply, has_corr;

	if (env->consumer_tag.len == sizeof(CTL_TAG) - 1 &&
	    memcmp(env->consumer_tag.bytes, CTL_TAG, sizeof(CTL_TAG) - 1) ==
	    0)
		src = BG_LINK_CONTROL;
	else if (env->consumer_tag.len == sizeof(API_TAG) - 1 &&
		 memcmp(env->consumer_tag.bytes, API_TAG,
			sizeof(API_TAG) - 1) == 0)
		src = BG_LINK_API;
	else
		return false;
	has_reply = (p->_flags & AMQP_BASIC_REPLY_TO_FLAG) &&
		    p->reply_to.len < sizeof(reply_to);
	has_corr = (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG) &&
		   p->correlation_id.len < sizeof(corr);
	if (has_reply)
		snprintf(reply_to, sizeof(reply_to), "%.*s",
			 (int)p->reply_to.len, (char *)p->reply_to.bytes);
	if (has_corr)
		snprintf(corr, sizeof(corr), "%.*s",
			 (int)p->correlation_id.len,
			 (char *)p->correlation_id.bytes);
	if (l->ctl_fn != NULL)
		l->ctl_fn(l->ctl_arg, src, env->message.body.bytes,
			  env->message.body.len, has_reply ? reply_to : NULL,
			  has_corr ? corr : NULL);
	return true;
}

struct bg_link *
bg_link_new(const struct bg_config *cfg, char *err, size_t errlen)
{
	struct bg_link *l = calloc(1, sizeof(*l));
	int rc;

	if (l == NULL || (l->url = strdup(cfg->amqp_url)) == NULL) {
		free(l);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	l->cfg = cfg;
	snprintf(l->ctl_exchange, sizeof(l->ctl_exchange), "%s.control",
		 cfg->amqp_exchange);
	snprintf(l->api_queue, sizeof(l->api_queue), "%s.api",
		 cfg->amqp_exchange);
	amqp_default_connection_info(&l->ci);
	rc = amqp_parse_url(l->url, &l->ci);
	if (rc != AMQP_STATUS_OK) {
		snprintf(err, errlen, "[amqp] url: cannot parse '%s': %s",
			 cfg->amqp_url, amqp_error_string2(rc));
		free(l->url);
		free(l);
		return NULL;
	}
	/* "amqp://host/" is the empty vhost to rabbitmq-c, but "/" to pika,
	 * kombu and most users: the empty vhost is never what they mean. */
	if (l->ci.vhost == NULL || l->ci.vhost[0] == '\0')
		l->ci.vhost = "/";
	return l;
}

void
bg_link_reset(struct bg_link *l)
{
	if (l->conn != NULL)
		amqp_destroy_connection(l->conn);
	l->conn = NULL;
	l->up = false;
}

void
bg_link_free(struct bg_link *l)
{
	if (l == NULL)
		return;
	if (l->up) {
		amqp_channel_close(l->conn, CHANNEL, AMQP_REPLY_SUCCESS);
		amqp_connection_close(l->conn, AMQP_REPLY_SUCCESS);
	}
	bg_link_reset(l);
	free(l->url);
	free(l);
}

bool
bg_link_up(const struct bg_link *l)
{
	return l->up;
}

int
bg_link_fd(const struct bg_link *l)
{
	return l->up ? amqp_get_sockfd(l->conn) : -1;
}

/* Describes an RPC failure; false when the reply is not normal. */
static bool
rpc_ok(struct bg_link *l, const char *what)
{
	amqp_rpc_reply_t r = amqp_get_rpc_reply(l->conn);

	switch (r.reply_type) {
	case AMQP_RESPONSE_NORMAL:
		return true;
	case AMQP_RESPONSE_LIBRARY_EXCEPTION:
		bg_log_warn("amqp: %s: %s", what,
			    amqp_error_string2(r.library_error));
		break;
	case AMQP_RESPONSE_SERVER_EXCEPTION:
		if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
			amqp_connection_close_t *m = r.reply.decoded;
			bg_log_warn("amqp: %s: broker closed the connection: "
				    "%u %.*s", what, m->reply_code,
				    (int)m->reply_text.len,
				    (char *)m->reply_text.bytes);
		} else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
			amqp_channel_close_t *m = r.reply.decoded;
			bg_log_warn("amqp: %s: broker closed the channel: "
				    "%u %.*s", what, m->reply_code,
				    (int)m->reply_text.len,
				    (char *)m->reply_text.bytes);
		} else {
			bg_log_warn("amqp: %s: broker error (method 0x%08x)",
				    what, r.reply.id);
		}
		break;
	default:
		bg_log_warn("amqp: %s: no reply", what);
		break;
	}
	return false;
}

static int
open_socket(struct bg_link *l)
{
	struct timeval tv = { CONNECT_TIMEOUT_S, 0 };
	amqp_socket_t *s;
	int rc;

	if (l->ci.ssl) {
		s = amqp_ssl_socket_new(l->conn);
		if (s != NULL) {
			amqp_ssl_socket_set_verify_peer(s, 1);
			amqp_ssl_socket_set_verify_hostname(s, 1);
			if (amqp_ssl_socket_set_cacert(s,
					l->cfg->amqp_ca_file) !=
			    AMQP_STATUS_OK) {
				bg_log_warn("amqp: cannot load CA file %s",
					    l->cfg->amqp_ca_file);
				return BG_ERR;
			}
		}
	} else {
		s = amqp_tcp_socket_new(l->conn);
	}
	if (s == NULL) {
		bg_log_error("amqp: cannot create a socket");
		return BG_ERR;
	}
	rc = amqp_socket_open_noblock(s, l->ci.host, l->ci.port, &tv);
	if (rc != AMQP_STATUS_OK) {
		bg_log_warn("amqp: cannot connect to %s:%d: %s", l->ci.host,
			    l->ci.port, amqp_error_string2(rc));
		return BG_ERR;
	}
	return BG_OK;
}

/* Opens the channel and declares the topology on it. The node queue is
 * the connection's: declared once (fresh), then only bound again after a
 * channel was reopened. */
static int
declare(struct bg_link *l, bool fresh)
{
	const struct bg_config *cfg = l->cfg;
	amqp_bytes_t ex = amqp_cstring_bytes(cfg->amqp_exchange);
	amqp_queue_declare_ok_t *q;

	amqp_channel_open(l->conn, CHANNEL);
	if (!rpc_ok(l, "channel.open"))
		return BG_ERR;
	amqp_exchange_declare(l->conn, CHANNEL, ex,
			      amqp_cstring_bytes("topic"), 0, 1, 0, 0,
			      amqp_empty_table);
	if (!rpc_ok(l, "exchange.declare"))
		return BG_ERR;
	if (cfg->forward_exchange[0] != '\0') {
		/* Publishing to a missing exchange would close the channel
		 * (and with it the node's consumer): declare it first. */
		amqp_exchange_declare(l->conn, CHANNEL,
				      amqp_cstring_bytes(cfg->forward_exchange),
				      amqp_cstring_bytes("topic"), 0, 1, 0, 0,
				      amqp_empty_table);
		if (!rpc_ok(l, "exchange.declare ([forward] exchange)"))
			return BG_ERR;
	}
	if (fresh) {
		/* Exclusive: it goes with the connection. Not auto-delete:
		 * it must outlive a channel the broker closed. */
		q = amqp_queue_declare(l->conn, CHANNEL, amqp_empty_bytes, 0,
				       0, 1, 0, amqp_empty_table);
		if (!rpc_ok(l, "queue.declare") || q == NULL)
			return BG_ERR;
		snprintf(l->queue, sizeof(l->queue), "%.*s",
			 (int)q->queue.len, (char *)q->queue.bytes);
	}
	amqp_queue_bind(l->conn, CHANNEL, amqp_cstring_bytes(l->queue), ex,
			amqp_cstring_bytes("#"), amqp_empty_table);
	if (!rpc_ok(l, "queue.bind"))
		return BG_ERR;
	if (cfg->amqp_queue[0] != '\0') {
		amqp_queue_declare(l->conn, CHANNEL,
				   amqp_cstring_bytes(cfg->amqp_queue), 0, 1,
				   0, 0, amqp_empty_table);
		if (!rpc_ok(l, "queue.declare (legacy [amqp] queue)"))
			return BG_ERR;
	}
	if (declare_control(l, fresh) != BG_OK)
		return BG_ERR;
	amqp_basic_qos(l->conn, CHANNEL, 0, (uint16_t)cfg->amqp_prefetch, 0);
	if (!rpc_ok(l, "basic.qos"))
		return BG_ERR;
	amqp_basic_consume(l->conn, CHANNEL, amqp_cstring_bytes(l->queue),
			   amqp_empty_bytes, 0, 0, 1, amqp_empty_table);
	if (!rpc_ok(l, "basic.consume"))
		return BG_ERR;
	if (cfg->amqp_queue[0] != '\0') {
		amqp_basic_consume(l->conn, CHANNEL,
				   amqp_cstring_bytes(cfg->amqp_queue),
				   amqp_empty_bytes, 0, 0, 0,
				   amqp_empty_table);
		if (!rpc_ok(l, "basic.consume (legacy [amqp] queue)"))
			return BG_ERR;
	}
	return BG_OK;
}

int
bg_link_connect(struct bg_link *l)
{
	struct timeval rpc = { RPC_TIMEOUT_S, 0 };
	amqp_rpc_reply_t r;

	bg_link_reset(l);
	l->conn = amqp_new_connection();
	if (l->conn == NULL) {
		bg_log_error("amqp: out of memory");
		return BG_ERR;
	}
	if (open_socket(l) != BG_OK)
		goto fail;
	amqp_set_handshake_timeout(l->conn, &rpc);
	amqp_set_rpc_timeout(l->conn, &rpc);
	r = amqp_login(l->conn, l->ci.vhost, 0, 131072,
		       l->cfg->amqp_heartbeat, AMQP_SASL_METHOD_PLAIN,
		       l->ci.user, l->ci.password);
	if (r.reply_type != AMQP_RESPONSE_NORMAL) {
		if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
			bg_log_warn("amqp: login to %s:%d as '%s' failed: %s",
				    l->ci.host, l->ci.port, l->ci.user,
				    amqp_error_string2(r.library_error));
		else
			bg_log_warn("amqp: login to %s:%d as '%s' refused",
				    l->ci.host, l->ci.port, l->ci.user);
		goto fail;
	}
	if (declare(l, true) != BG_OK)
		goto fail;
	l->up = true;
	l->epoch++;
	bg_log_info("amqp: connected to %s:%d, consuming from exchange '%s' "
		    "(queue %s%s%s)", l->ci.host, l->ci.port,
		    l->cfg->amqp_exchange, l->queue,
		    l->cfg->amqp_queue[0] ? ", legacy queue " : "",
		    l->cfg->amqp_queue);
	return BG_OK;
fail:
	bg_link_reset(l);
	return BG_ERR;
}

/*
 * The broker closed the channel, almost always over one message (a
 * publish to an exchange that is gone: 404 NOT_FOUND). That message is
 * lost, not resent; the connection, and with it the node queue, stays.
 * The unacked deliveries return to the queue and come again with new
 * tags (the epoch tells the bus). BG_ERR when that fails too.
 */
static int
reopen_channel(struct bg_link *l)
{
	amqp_channel_close_ok_t ok = { 0 };

	if (amqp_send_method(l->conn, CHANNEL, AMQP_CHANNEL_CLOSE_OK_METHOD,
			     &ok) != AMQP_STATUS_OK) {
		bg_log_warn("amqp: channel.close-ok failed: connection lost");
		return BG_ERR;
	}
	l->epoch++;
	__atomic_store_n(&l->reopens, l->reopens + 1, __ATOMIC_RELAXED);
	if (declare(l, false) != BG_OK)
		return BG_ERR;
	bg_log_info("amqp: channel reopened, consuming again");
	return BG_OK;
}

/* A frame that is not a delivery: the broker closing something, or
 * a stray method. BG_ERR when the link is no longer usable. */
static int
other_frame(struct bg_link *l)
{
	struct timeval zero = { 0, 0 };
	amqp_frame_t f;
	int rc = amqp_simple_wait_frame_noblock(l->conn, &f, &zero);

	if (rc == AMQP_STATUS_TIMEOUT)
		return BG_OK;
	if (rc != AMQP_STATUS_OK) {
		bg_log_warn("amqp: connection lost: %s",
			    amqp_error_string2(rc));
		return BG_ERR;
	}
	if (f.frame_type != AMQP_FRAME_METHOD)
		return BG_OK;
	switch (f.payload.method.id) {
	case AMQP_CONNECTION_CLOSE_METHOD: {
		amqp_connection_close_t *m = f.payload.method.decoded;
		bg_log_warn("amqp: broker closed the connection: %u %.*s",
			    m->reply_code, (int)m->reply_text.len,
			    (char *)m->reply_text.bytes);
		return BG_ERR;
	}
	case AMQP_CHANNEL_CLOSE_METHOD: {
		amqp_channel_close_t *m = f.payload.method.decoded;
		bg_log_warn("amqp: broker closed the channel: %u %.*s; "
			    "reopening it", m->reply_code,
			    (int)m->reply_text.len,
			    (char *)m->reply_text.bytes);
		return reopen_channel(l);
	}
	default:
		return BG_OK;
	}
}

int
bg_link_service(struct bg_link *l, bg_link_deliver_fn fn, void *arg)
{
	struct timeval zero = { 0, 0 };
	uint64_t epoch = l->epoch;
	int rc = BG_OK;

	if (!l->up)
		return BG_ERR;
	for (int n = 0; n < MAX_PER_SERVICE; n++) {
		amqp_envelope_t env;
		amqp_rpc_reply_t r;

		amqp_maybe_release_buffers(l->conn);
		r = amqp_consume_message(l->conn, &env, &zero, 0);
		if (r.reply_type == AMQP_RESPONSE_NORMAL) {
			if (!control_delivery(l, &env))
				fn(arg, env.message.body.bytes,
				   env.message.body.len, env.delivery_tag);
			amqp_destroy_envelope(&env);
			continue;
		}
		if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
		    r.library_error == AMQP_STATUS_TIMEOUT)
			break;
		if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
		    r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
			if (other_frame(l) != BG_OK) {
				rc = BG_ERR;
				break;
			}
			/* Reopened: the caller settles the old channel's
			 * tags before it sees any of the new one's. */
			if (l->epoch != epoch)
				break;
			continue;
		}
		if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
			bg_log_warn("amqp: connection lost: %s",
				    amqp_error_string2(r.library_error));
		else
			bg_log_warn("amqp: connection lost");
		rc = BG_ERR;
		break;
	}
	if (rc != BG_OK)
		bg_link_reset(l);
	return rc;
}

int
bg_link_ack(struct bg_link *l, uint64_t tag)
{
	if (!l->up)
		return BG_ERR;
	/* One ack covers every delivery up to tag. */
	if (amqp_basic_ack(l->conn, CHANNEL, tag, 1) != AMQP_STATUS_OK) {
		bg_log_warn("amqp: basic.ack failed: connection lost");
		bg_link_reset(l);
		return BG_ERR;
	}
	return BG_OK;
}

uint64_t
bg_link_channel_epoch(const struct bg_link *l)
{
	return l->epoch;
}

uint64_t
bg_link_channel_reopens(const struct bg_link *l)
{
	return __atomic_load_n(&l->reopens, __ATOMIC_RELAXED);
}

/* For publisher.c (link_internal.h). */
amqp_connection_state_t
bg_link_conn(struct bg_link *l)
{
	return l->conn;
}

const char *
bg_link_exchange(const struct bg_link *l)
{
	return l->cfg->amqp_exchange;
}

const char *
bg_link_forward_exchange(const struct bg_link *l)
{
	return l->cfg->forward_exchange;
}

const char *
bg_link_control_exchange(const struct bg_link *l)
{
	return l->ctl_exchange;
}
