/*
 * test_link.c - unit tests of what amqp/ decides without a broker: which
 * messages can never be published (bg_link_check: the message's fault,
 * never the link's), and that a link that is down refuses to publish
 * without touching rabbitmq-c.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "amqp/link.h"
#include "common/bg.h"
#include "common/config.h"
#include "common/msg.h"

/* A message to target with body "{}"; names (may be NULL) copied. */
static struct bg_msg *
msg(enum bg_msg_target target, uint32_t n, const char *name,
    const char *forward_key)
{
	struct bg_msg *m = bg_msg_new(target, n);

	assert_non_null(m);
	for (uint32_t i = 0; i < n; i++)
		assert_non_null(m->names[i] = strdup(name));
	if (forward_key != NULL)
		assert_non_null(m->forward_key = strdup(forward_key));
	assert_non_null(m->body = strdup("{}"));
	m->body_len = 2;
	return m;
}

static char *
repeat(char c, size_t n)
{
	char *s = malloc(n + 1);

	assert_non_null(s);
	memset(s, c, n);
	s[n] = '\0';
	return s;
}

static void
test_routing_key_bound(void **state)
{
	char *k255 = repeat('k', BG_LINK_MAX_KEY);
	char *k256 = repeat('k', BG_LINK_MAX_KEY + 1);
	char *k300 = repeat('c', 300);
	struct bg_msg *m;

	/* A forwarded event: the routing key is the event name. */
	m = msg(BG_MSG_ALL, 0, NULL, k255);
	assert_null(bg_link_check(m));
	bg_msg_unref(m);
	m = msg(BG_MSG_ALL, 0, NULL, k256);
	assert_string_equal(bg_link_check(m),
			    "routing key longer than 255 bytes");
	bg_msg_unref(m);

	/* One channel routes by its name; several, or none, by "". */
	m = msg(BG_MSG_CHANNELS, 1, k300, NULL);
	assert_non_null(bg_link_check(m));
	bg_msg_unref(m);
	m = msg(BG_MSG_CHANNELS, 2, k300, NULL);
	assert_null(bg_link_check(m));
	bg_msg_unref(m);
	m = msg(BG_MSG_CLIENTS, 1, k300, NULL);
	assert_null(bg_link_check(m));
	bg_msg_unref(m);
	m = msg(BG_MSG_CHANNELS, 1, "news", NULL);
	assert_null(bg_link_check(m));
	bg_msg_unref(m);
	free(k255);
	free(k256);
	free(k300);
}

static void
test_body_bound(void **state)
{
	struct bg_msg *m = msg(BG_MSG_ALL, 0, NULL, NULL);

	/* Only the length is read. */
	m->body_len = BG_LINK_MAX_BODY;
	assert_null(bg_link_check(m));
	m->body_len = BG_LINK_MAX_BODY + 1;
	assert_string_equal(bg_link_check(m), "body larger than 128 MiB");
	m->body_len = 2;
	bg_msg_unref(m);
}

static void
test_publish_while_down(void **state)
{
	struct bg_config cfg;
	struct bg_link *l;
	struct bg_msg *m;
	const char *why = NULL;
	char err[256];
	char *key = repeat('e', 300);

	bg_config_defaults(&cfg);
	l = bg_link_new(&cfg, err, sizeof(err));
	assert_non_null(l);
	assert_false(bg_link_up(l));
	assert_int_equal(bg_link_fd(l), -1);
	/* Down is the link's state: even a bad message is not judged. */
	m = msg(BG_MSG_ALL, 0, NULL, key);
	assert_int_equal(bg_link_publish(l, m, &why), BG_ERR);
	assert_int_equal(bg_link_ack(l, 1), BG_ERR);
	assert_int_equal(bg_link_channel_reopens(l), 0);
	bg_msg_unref(m);
	bg_link_free(l);
	free(key);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_routing_key_bound),
		cmocka_unit_test(test_body_bound),
		cmocka_unit_test(test_publish_while_down),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
