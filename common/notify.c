/*
 * notify.c - sd_notify without libsystemd (notify.h).
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/bg.h"
#include "common/notify.h"

int
bg_notify_send(const char *state)
{
	const char *name = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t n;
	socklen_t salen;
	ssize_t sent;
	int fd;

	if (name == NULL || name[0] == '\0')
		return 0;
	n = strlen(name);
	if ((name[0] != '/' && name[0] != '@') || n >= sizeof(sa.sun_path)) {
		errno = EINVAL;
		return BG_ERR;
	}
	memcpy(sa.sun_path, name, n);
	if (name[0] == '@')
		sa.sun_path[0] = '\0';  /* abstract: no terminating NUL */
	salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n +
			    (name[0] == '/' ? 1 : 0));
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return BG_ERR;
	sent = sendto(fd, state, strlen(state), MSG_NOSIGNAL,
		      (struct sockaddr *)&sa, salen);
	if (sent < 0) {
		int e = errno;

		close(fd);
		errno = e;
		return BG_ERR;
	}
	close(fd);
	return 1;
}

int
bg_notify_reloading(void)
{
	struct timespec ts;
	char state[96];

	clock_gettime(CLOCK_MONOTONIC, &ts);
	snprintf(state, sizeof(state), "RELOADING=1\nMONOTONIC_USEC=%llu",
		 (unsigned long long)ts.tv_sec * 1000000ULL +
		 (unsigned long long)ts.tv_nsec / 1000ULL);
	return bg_notify_send(state);
}

uint64_t
bg_notify_watchdog_interval(void)
{
	const char *usec = getenv("WATCHDOG_USEC");
	const char *pid = getenv("WATCHDOG_PID");
	unsigned long long v;
	char *end;

	if (usec == NULL || usec[0] == '\0')
		return 0;
	if (pid != NULL && pid[0] != '\0' &&
	    strtol(pid, NULL, 10) != (long)getpid())
		return 0;
	errno = 0;
	v = strtoull(usec, &end, 10);
	if (errno != 0 || *end != '\0' || v == 0)
		return 0;
	return v / 2 > 0 ? v / 2 : 1;
}

/* The watchdog thread and how the main thread stops it. */
static struct {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool running;                   /* main thread */
	bool stop;                      /* under lock */
	uint64_t interval_us;           /* immutable while running */
	bool (*healthy)(void *);        /* immutable while running */
	void *arg;                      /* immutable while running */
} wd = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
};

static void *
watchdog_main(void *arg)
{
	struct timespec at;

	(void)arg;
	pthread_mutex_lock(&wd.lock);
	while (!wd.stop) {
		pthread_mutex_unlock(&wd.lock);
		if (wd.healthy == NULL || wd.healthy(wd.arg))
			bg_notify_send("WATCHDOG=1");
		pthread_mutex_lock(&wd.lock);
		clock_gettime(CLOCK_MONOTONIC, &at);
		at.tv_sec += (time_t)(wd.interval_us / 1000000);
		at.tv_nsec += (long)(wd.interval_us % 1000000) * 1000;
		if (at.tv_nsec >= 1000000000L) {
			at.tv_sec++;
			at.tv_nsec -= 1000000000L;
		}
		while (!wd.stop &&
		       pthread_cond_timedwait(&wd.cond, &wd.lock, &at) !=
		       ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&wd.lock);
	return NULL;
}

int
bg_notify_watchdog_start(bool (*healthy)(void *arg), void *arg)
{
	pthread_condattr_t ca;
	uint64_t interval = bg_notify_watchdog_interval();

	if (interval == 0 || wd.running)
		return BG_OK;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&wd.cond, &ca);
	pthread_condattr_destroy(&ca);
	wd.interval_us = interval;
	wd.healthy = healthy;
	wd.arg = arg;
	wd.stop = false;
	if (pthread_create(&wd.thread, NULL, watchdog_main, NULL) != 0) {
		pthread_cond_destroy(&wd.cond);
		return BG_ERR;
	}
	wd.running = true;
	return BG_OK;
}

void
bg_notify_watchdog_stop(void)
{
	if (!wd.running)
		return;
	pthread_mutex_lock(&wd.lock);
	wd.stop = true;
	pthread_cond_signal(&wd.cond);
	pthread_mutex_unlock(&wd.lock);
	pthread_join(wd.thread, NULL);
	pthread_cond_destroy(&wd.cond);
	wd.running = false;
}
