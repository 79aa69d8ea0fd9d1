/*
 * test_notify.c - unit tests of common/notify.c: the datagram reaches an
 * abstract socket ('@name') and a path socket, nothing is sent without
 * $NOTIFY_SOCKET, a malformed one is an error, RELOADING carries
 * MONOTONIC_USEC, the watchdog interval is half of $WATCHDOG_USEC (and
 * only for this pid), and the watchdog thread pings until stopped, and
 * only while its health check passes.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/bg.h"
#include "common/notify.h"

/* A datagram socket bound to an abstract name; its '@' form in env. */
static int
bind_abstract(char *env, size_t envlen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
	int n;

	assert_true(fd >= 0);
	n = snprintf(env, envlen, "@bagou-test-notify-%d", (int)getpid());
	memcpy(sa.sun_path, env, (size_t)n);
	sa.sun_path[0] = '\0';
	assert_int_equal(bind(fd, (struct sockaddr *)&sa,
			      (socklen_t)(offsetof(struct sockaddr_un,
						   sun_path) + (size_t)n)), 0);
	return fd;
}

/* Receives one datagram within 2 s into buf (NUL-terminated). */
static void
recv_one(int fd, char *buf, size_t len)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	ssize_t n;

	assert_int_equal(poll(&p, 1, 2000), 1);
	n = recv(fd, buf, len - 1, 0);
	assert_true(n >= 0);
	buf[n] = '\0';
}

static void
test_abstract_socket(void **state)
{
	char env[64], buf[256];
	int fd = bind_abstract(env, sizeof(env));

	(void)state;
	setenv("NOTIFY_SOCKET", env, 1);
	assert_int_equal(bg_notify_send("READY=1"), 1);
	recv_one(fd, buf, sizeof(buf));
	assert_string_equal(buf, "READY=1");
	unsetenv("NOTIFY_SOCKET");
	close(fd);
}

static void
test_path_socket(void **state)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char buf[256];
	int fd = socket(AF_UNIX, SOCK_DGRAM, 0);

	(void)state;
	snprintf(sa.sun_path, sizeof(sa.sun_path),
		 "/tmp/bagou-test-notify-%d.sock", (int)getpid());
	unlink(sa.sun_path);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	setenv("NOTIFY_SOCKET", sa.sun_path, 1);
	assert_int_equal(bg_notify_send("STOPPING=1"), 1);
	recv_one(fd, buf, sizeof(buf));
	assert_string_equal(buf, "STOPPING=1");
	unsetenv("NOTIFY_SOCKET");
	unlink(sa.sun_path);
	close(fd);
}

static void
test_unset_and_malformed(void **state)
{
	(void)state;
	unsetenv("NOTIFY_SOCKET");
	assert_int_equal(bg_notify_send("READY=1"), 0);
	setenv("NOTIFY_SOCKET", "", 1);
	assert_int_equal(bg_notify_send("READY=1"), 0);
	setenv("NOTIFY_SOCKET", "relative/path", 1);
	assert_int_equal(bg_notify_send("READY=1"), BG_ERR);
	/* Nobody listens there: the send fails, nothing crashes. */
	setenv("NOTIFY_SOCKET", "@bagou-test-notify-nobody", 1);
	assert_int_equal(bg_notify_send("READY=1"), BG_ERR);
	unsetenv("NOTIFY_SOCKET");
}

static void
test_reloading(void **state)
{
	char env[64], buf[256];
	int fd = bind_abstract(env, sizeof(env));
	unsigned long long usec = 0;

	(void)state;
	setenv("NOTIFY_SOCKET", env, 1);
	assert_int_equal(bg_notify_reloading(), 1);
	recv_one(fd, buf, sizeof(buf));
	assert_int_equal(sscanf(buf, "RELOADING=1\nMONOTONIC_USEC=%llu",
				&usec), 1);
	assert_true(usec > 0);
	unsetenv("NOTIFY_SOCKET");
	close(fd);
}

static void
test_watchdog_interval(void **state)
{
	char pid[32];

	(void)state;
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
	assert_int_equal(bg_notify_watchdog_interval(), 0);
	setenv("WATCHDOG_USEC", "30000000", 1);
	assert_int_equal(bg_notify_watchdog_interval(), 15000000);
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	setenv("WATCHDOG_PID", pid, 1);
	assert_int_equal(bg_notify_watchdog_interval(), 15000000);
	/* Meant for another process (a parent that exec'ed us). */
	snprintf(pid, sizeof(pid), "%d", (int)getpid() + 1);
	setenv("WATCHDOG_PID", pid, 1);
	assert_int_equal(bg_notify_watchdog_interval(), 0);
	unsetenv("WATCHDOG_PID");
	setenv("WATCHDOG_USEC", "abc", 1);
	assert_int_equal(bg_notify_watchdog_interval(), 0);
	setenv("WATCHDOG_USEC", "0", 1);
	assert_int_equal(bg_notify_watchdog_interval(), 0);
	unsetenv("WATCHDOG_USEC");
	/* Nothing to start without the variable. */
	assert_int_equal(bg_notify_watchdog_start(NULL, NULL), BG_OK);
	bg_notify_watchdog_stop();
}

static void
test_watchdog_thread(void **state)
{
	char env[64], buf[256];
	int fd = bind_abstract(env, sizeof(env));
	struct pollfd p = { .fd = fd, .events = POLLIN };

	(void)state;
	setenv("NOTIFY_SOCKET", env, 1);
	setenv("WATCHDOG_USEC", "100000", 1);     /* pings every 50 ms */
	assert_int_equal(bg_notify_watchdog_start(NULL, NULL), BG_OK);
	for (int i = 0; i < 3; i++) {
		recv_one(fd, buf, sizeof(buf));
		assert_string_equal(buf, "WATCHDOG=1");
	}
	bg_notify_watchdog_stop();
	/* Drain what was sent before the stop, then silence. */
	while (poll(&p, 1, 0) == 1)
		recv(fd, buf, sizeof(buf), 0);
	assert_int_equal(poll(&p, 1, 200), 0);
	unsetenv("WATCHDOG_USEC");
	unsetenv("NOTIFY_SOCKET");
	close(fd);
}

static bool
sick_until_flag(void *arg)
{
	return __atomic_load_n((bool *)arg, __ATOMIC_ACQUIRE);
}

/* No WATCHDOG=1 while the health check fails; pings again once it
 * passes. */
static void
test_watchdog_health_check(void **state)
{
	char env[64], buf[256];
	int fd = bind_abstract(env, sizeof(env));
	struct pollfd p = { .fd = fd, .events = POLLIN };
	bool healthy = false;

	(void)state;
	setenv("NOTIFY_SOCKET", env, 1);
	setenv("WATCHDOG_USEC", "40000", 1);      /* checks every 20 ms */
	assert_int_equal(bg_notify_watchdog_start(sick_until_flag, &healthy),
			 BG_OK);
	/* Ten intervals of silence. */
	assert_int_equal(poll(&p, 1, 200), 0);
	__atomic_store_n(&healthy, true, __ATOMIC_RELEASE);
	recv_one(fd, buf, sizeof(buf));
	assert_string_equal(buf, "WATCHDOG=1");
	bg_notify_watchdog_stop();
	unsetenv("WATCHDOG_USEC");
	unsetenv("NOTIFY_SOCKET");
	close(fd);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_abstract_socket),
		cmocka_unit_test(test_path_socket),
		cmocka_unit_test(test_unset_and_malformed),
		cmocka_unit_test(test_reloading),
		cmocka_unit_test(test_watchdog_interval),
		cmocka_unit_test(test_watchdog_thread),
		cmocka_unit_test(test_watchdog_health_check),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
