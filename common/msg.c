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
#include "common/chan.h"
#include "common/frame.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t
msg_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* The tables of a message with n_names names: one block with it. */
static size_t
tables_size(enum bg_msg_target target, uint32_t n_names)
{
	uint32_t n_frames = target == BG_MSG_CHANNELS ? n_names : 1;

	return sizeof(struct bg_msg) + n_names * sizeof(char *) +
	       n_frames * sizeof(struct bg_msg_frame) +
	       (target == BG_MSG_CHANNELS ? n_names * sizeof(uint32_t) : 0);
}

static struct bg_msg *
msg_alloc(enum bg_msg_target target, uint32_t n_names, size_t extra)
{
	size_t head = (tables_size(target, n_names) + 7) & ~(size_t)7;
	struct bg_msg *m = calloc(1, head + extra);
	uint8_t *p;

	if (m == NULL)
		return NULL;
	m->refs = 1;
	m->target = target;
	m->ingest_us = msg_now_us();
	m->n_names = n_names;
	m->n_frames = target == BG_MSG_CHANNELS ? n_names : 1;
	p = (uint8_t *)(m + 1);
	m->frames = (struct bg_msg_frame *)p;
	p += m->n_frames * sizeof(*m->frames);
	if (n_names > 0) {
		m->names = (char **)p;
		p += n_names * sizeof(*m->names);
	}
	if (target == BG_MSG_CHANNELS)
		m->hashes = (uint32_t *)p;
	m->carved = head;
	return m;
}

struct bg_msg *
bg_msg_new(enum bg_msg_target target, uint32_t n_names)
{
	return msg_alloc(target, n_names, 0);
}

struct bg_msg *
bg_msg_new_packed(enum bg_msg_target target, uint32_t n_names,
		  size_t extra)
{
	struct bg_msg *m = msg_alloc(target, n_names, extra + 8 *
				     ((size_t)n_names + 4));

	if (m != NULL)
		m->packed = true;
	return m;
}

void *
bg_msg_carve(struct bg_msg *m, size_t len)
{
	void *p = (uint8_t *)m + m->carved;

	m->carved += (len + 7) & ~(size_t)7;
	return p;
}

/* True when p lies in m's own block (a packed message's carved parts),
 * which is freed with m, not on its own. */
static bool
msg_owns(const struct bg_msg *m, const void *p)
{
	const uint8_t *b = (const uint8_t *)m;

	return m->packed && (const uint8_t *)p >= b &&
	       (const uint8_t *)p < b + m->carved;
}

int
bg_msg_set_frame(struct bg_msg *m, uint32_t i, const char *payload,
		 size_t len)
{
	uint8_t *frame;
	size_t flen;

	if (i >= m->n_frames || len > UINT32_MAX - BG_FRAME_HDR_MAX)
		return BG_ERR;
	if (!msg_owns(m, m->frames[i].block))
		free(m->frames[i].block);
	m->frames[i].block = bg_frame_text(payload, len, &frame, &flen);
	if (m->frames[i].block == NULL)
		return BG_ERR;
	m->frames[i].data = frame;
	m->frames[i].len = (uint32_t)flen;
	return BG_OK;
}

void
bg_msg_hash(struct bg_msg *m)
{
	if (m->hashed || m->hashes == NULL)
		return;
	for (uint32_t i = 0; i < m->n_names; i++)
		m->hashes[i] = bg_chan_hash(m->names[i], strlen(m->names[i]));
	m->hashed = true;
}

void
bg_msg_ref(struct bg_msg *m)
{
	__atomic_fetch_add(&m->refs, 1, __ATOMIC_RELAXED);
}

static void
msg_free(struct bg_msg *m)
{
	/* Frames set again (history offsets) live outside a packed
	 * message's block. */
	for (uint32_t i = 0; i < m->n_frames; i++)
		if (!msg_owns(m, m->frames[i].block))
			free(m->frames[i].block);
	if (!m->packed) {
		for (uint32_t i = 0; m->names && i < m->n_names; i++)
			free(m->names[i]);
		free(m->exclude);
		free(m->body);
	}
	free(m->auth);
	free(m->forward_key);
	free(m->reply_cb);
	if (m->task_free != NULL)
		m->task_free(m->task);
	if (m->hist != NULL)
		m->hist_free(m->hist);
	free(m->unsubscribe);
	if (m->job_free != NULL)
		m->job_free(m->job_data);
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
