/*
 * msg.c - refcounted broadcast messages. Any thread; the count is the only
 * mutable field. The decrement is acquire-release: release so that this
 * thread's reads of the message happen before the free, acquire so the
 * last holder sees every other holder's. (ck's dec_zero is a load + CAS
 * loop on a volatile, which ThreadSanitizer cannot see as atomic; the
 * builtin compiles to the same lock xadd on x86.)
 */
#include "common/msg.h"

#include "common/bg.h"
#include "common/frame.h"

#include <stdlib.h>
#include <time.h>

static uint64_t
msg_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

struct bg_msg *
bg_msg_new(enum bg_msg_target target, uint32_t n_names)
{
	struct bg_msg *m = calloc(1, sizeof(*m));
	uint32_t n_frames = target == BG_MSG_CHANNELS ? n_names : 1;

	if (m == NULL)
		return NULL;
	m->refs = 1;
	m->target = target;
	m->ingest_us = msg_now_us();
	m->n_names = n_names;
	m->n_frames = n_frames;
	m->names = n_names ? calloc(n_names, sizeof(*m->names)) : NULL;
	m->frames = calloc(n_frames, sizeof(*m->frames));
	if ((n_names && m->names == NULL) || m->frames == NULL) {
		bg_msg_unref(m);
		return NULL;
	}
	return m;
}

int
bg_msg_set_frame(struct bg_msg *m, uint32_t i, const char *payload,
		 size_t len)
{
	uint8_t *frame;
	size_t flen;

	if (i >= m->n_frames || len > UINT32_MAX - BG_FRAME_HDR_MAX)
		return BG_ERR;
	free(m->frames[i].block);
	m->frames[i].block = bg_frame_text(payload, len, &frame, &flen);
	if (m->frames[i].block == NULL)
		return BG_ERR;
	m->frames[i].data = frame;
	m->frames[i].len = (uint32_t)flen;
	return BG_OK;
}

void
bg_msg_ref(struct bg_msg *m)
{
	__atomic_fetch_add(&m->refs, 1, __ATOMIC_RELAXED);
}

static void
msg_free(struct bg_msg *m)
{
	for (uint32_t i = 0; m->names && i < m->n_names; i++)
		free(m->names[i]);
	for (uint32_t i = 0; m->frames && i < m->n_frames; i++)
		free(m->frames[i].block);
	free(m->names);
	free(m->frames);
	free(m->exclude);
	free(m->body);
	free(m->auth);
	free(m->forward_key);
	free(m->reply_cb);
	if (m->task_free != NULL)
		m->task_free(m->task);
	free(m->unsubscribe);
	free(m);
}

void
bg_msg_unref(struct bg_msg *m)
{
	if (m == NULL)
		return;
	if (__atomic_fetch_sub(&m->refs, 1, __ATOMIC_ACQ_REL) == 1)
		msg_free(m);
}

size_t
bg_msg_size(const struct bg_msg *m)
{
	size_t n = sizeof(*m) + m->body_len;

	for (uint32_t i = 0; i < m->n_frames; i++)
		n += m->frames[i].len;
	return n;
}
