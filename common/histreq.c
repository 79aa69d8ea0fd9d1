/*
 * histreq.c - history requests as messages (common/histreq.h). Pure.
 */
#include "common/histreq.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ requests */

static void
req_free(void *p)
{
	struct bg_hist_req *r = p;

	for (uint32_t i = 0; i < r->n_pubs; i++)
		bg_msg_unref(r->pubs[i].m);
	free(r->pubs);
	free(r->channel);
	free(r->callback_id);
	json_decref(r->answer);
	if (r->arg != NULL && r->forget != NULL)
		r->forget(r->arg);
	free(r);
}

struct bg_msg *
bg_hist_req_new(enum bg_hist_kind kind, const char *channel)
{
	struct bg_msg *m = bg_msg_new(BG_MSG_CLIENTS, 0);
	struct bg_hist_req *r = calloc(1, sizeof(*r));

	if (m == NULL || r == NULL) {
		bg_msg_unref(m);
		free(r);
		return NULL;
	}
	m->hist = r;
	m->hist_free = req_free;
	r->kind = kind;
	r->self = m;
	r->limit = BG_HIST_DEFAULT_LIMIT;
	r->channel = strdup(channel);
	if (r->channel == NULL) {
		bg_msg_unref(m);
		return NULL;
	}
	return m;
}

const char *
bg_hist_pub_json(const struct bg_hist_pub *p, size_t *len)
{
	const struct bg_msg_frame *f = &p->m->frames[p->frame];
	uint8_t l7 = f->data[1] & 0x7f;
	size_t hdr = l7 < 126 ? 2 : l7 == 126 ? 4 : 10;

	*len = f->len - hdr;
	return (const char *)f->data + hdr;
}
