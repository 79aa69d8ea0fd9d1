/*
 * notify.h - the systemd notification protocol (sd_notify) without
 * libsystemd: one datagram per state change to the AF_UNIX socket named by
 * $NOTIFY_SOCKET (a path, or an abstract name written with a leading '@'),
 * and a watchdog thread that sends WATCHDOG=1 at half of $WATCHDOG_USEC.
 *
 * Outside systemd ($NOTIFY_SOCKET unset) every call does nothing. Any
 * thread may call bg_notify_send; the watchdog is started and stopped by
 * the main thread.
 */
#ifndef BG_NOTIFY_H
#define BG_NOTIFY_H

#include <stdbool.h>
#include <stdint.h>

/*
 * Sends state (e.g. "READY=1", lines separated by '\n') to $NOTIFY_SOCKET.
 * Returns 1 when sent, 0 when there is no $NOTIFY_SOCKET, BG_ERR when the
 * variable is malformed or the send failed (errno set).
 */
int bg_notify_send(const char *state);

/* "RELOADING=1\nMONOTONIC_USEC=<now>": what systemd 253+ expects before a
 * reload; older ones ignore it. Same returns as bg_notify_send. */
int bg_notify_reloading(void);

/*
 * The interval at which WATCHDOG=1 must be sent: half of $WATCHDOG_USEC
 * when it is set (and $WATCHDOG_PID, if set, is this process), else 0.
 */
uint64_t bg_notify_watchdog_interval(void);

/*
 * Starts the watchdog thread when bg_notify_watchdog_interval() is not 0;
 * BG_OK (also when there is nothing to start) or BG_ERR. Before each
 * WATCHDOG=1 the thread calls healthy(arg) (when not NULL): while it
 * returns false no ping is sent, so systemd restarts a process whose
 * event loops stopped turning. healthy must be safe from any thread.
 */
int bg_notify_watchdog_start(bool (*healthy)(void *arg), void *arg);

/* Stops and joins the watchdog thread, if one runs. */
void bg_notify_watchdog_stop(void);

#endif
