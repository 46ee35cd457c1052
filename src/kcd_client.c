/* kcd_client.c — worker-side asynchronous stubs for kcd; see kcd_client.h. */
#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/queue.h>

#include <event2/event.h>

#include "clock.h"
#include "ipc.h"
#include "kcd_client.h"
#include "log.h"
#include "memcache.h"

#define KCD_CLIENT_MAGIC	0x4b43434cu	/* "KCCL" */
#define KCD_REQ_MAGIC		0x4b435251u	/* "KCRQ" */
#define REQ_BUCKETS		1024u

struct kcd_req {
	unsigned magic;
	uint32_t id;
	struct kcd_client *kc;
	kcd_answer_fn *fn;		/* NULL once cancelled */
	void *arg;
	uint64_t start_ms;
	struct event *timer;		/* in the same allocation, after us */
	LIST_ENTRY(kcd_req) bucket;
};
LIST_HEAD(req_list, kcd_req);

struct kcd_client {
	unsigned magic;
	struct event_base *base;
	struct ipc_chan *ch;		/* NULL while kcd is gone */
	uint64_t timeout_ms;
	/* every request has the same timeout: a libevent common timeout
	 * (a queue, not the timer heap) */
	const struct timeval *timeout_tv;
	uint32_t next_id;
	struct req_list pending[REQ_BUCKETS];
	struct kcd_client_stats st;
};

static struct kcd_req *
req_find(struct kcd_client *kc, uint32_t id)
{
	struct kcd_req *r;

	LIST_FOREACH(r, &kc->pending[id % REQ_BUCKETS], bucket)
		if (r->id == id)
			return r;
	return NULL;
}

/* Remove and free the request; hands ans to its callback unless cancelled
 * (then a context kcd kept for the token is released here: nobody else
 * knows its id). */
static void
req_finish(struct kcd_req *r, struct kcd_answer *ans)
{
	struct kcd_client *kc = r->kc;
	kcd_answer_fn *fn = r->fn;
	void *arg = r->arg;

	assert(r->magic == KCD_REQ_MAGIC);
	ans->elapsed_ms = clock_mono_ms() - r->start_ms;
	LIST_REMOVE(r, bucket);
	kc->st.in_flight--;
	event_del(r->timer);
	r->magic = 0;
	free(r);
	if (fn != NULL)
		fn(ans, arg);
	else if (ans->ok && ans->ctx_id != 0)
		kcd_ctx_release(kc, ans->ctx_id);
}

static void
fail_req(struct kcd_req *r, const char *name, const char *text)
{
	struct kcd_answer ans = { 0 };

	ans.cls = KCD_ERR_UNREACHABLE;
	ans.name = name;
	ans.text = text;
	req_finish(r, &ans);
}

static void
fail_all(struct kcd_client *kc, const char *text)
{
	for (unsigned i = 0; i < REQ_BUCKETS; i++) {
		while (!LIST_EMPTY(&kc->pending[i])) {
			kc->st.failed_channel++;
			fail_req(LIST_FIRST(&kc->pending[i]), "kcd_unavailable", text);
		}
	}
}

static void
on_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct kcd_req *r = arg;

	(void)fd;
	(void)what;
	assert(r->magic == KCD_REQ_MAGIC);
	r->kc->st.timeouts++;
	fail_req(r, "unreachable", "no answer from kcd within its bounds (wait + kdc_timeout) and a margin");
}

/* Parse an answer; a malformed one from kcd is a bug or a compromise of kcd
 * and fails the request as internal. */
static void
on_msg(struct ipc_chan *ch, const struct ipc_msg *msg, void *arg)
{
	struct kcd_client *kc = arg;
	struct kcd_answer ans = { 0 };
	struct ipc_rd rd;
	struct kcd_req *r;
	/* kept off the stack; a worker is one thread */
	static char token[KCD_TOKEN_MAX], name[KCD_NAME_MAX], text[KCD_TEXT_MAX];

	(void)ch;
	assert(kc->magic == KCD_CLIENT_MAGIC);
	if (msg->fd >= 0) {
		log_error("kcd_client", "kcd sent an unexpected file descriptor; closed it");
		close(msg->fd);
	}
	if ((r = req_find(kc, msg->id)) == NULL) {
		/* timed out or cancelled before kcd answered */
		log_debug("kcd_client", "answer %u for no pending request", msg->id);
		return;
	}
	kc->st.answered++;
	ipc_rd_init(&rd, msg->data, msg->len);
	switch (msg->type) {
	case IPC_TOKEN_OK:
		ipc_get_str(&rd, token, sizeof(token));
		ans.ctx_id = ipc_get_u32(&rd);
		ans.cred_end_ms = ipc_get_u64(&rd);
		ans.ok = 1;
		ans.token = token;
		break;
	case IPC_TOKEN_ERR:
		ans.cls = (enum kcd_err_class)ipc_get_u32(&rd);
		ipc_get_str(&rd, name, sizeof(name));
		ipc_get_str(&rd, text, sizeof(text));
		ans.name = name;
		ans.text = text;
		if (ans.cls < KCD_ERR_USER || ans.cls > KCD_ERR_LDAP_UNREACHABLE)
			rd.err = 1;
		break;
	case IPC_IDENTIFY_OK:
		ipc_get_str(&rd, token, sizeof(token));	/* the principal */
		ans.id_flags = ipc_get_u32(&rd);
		ans.ok = 1;
		ans.principal = token;
		break;
	case IPC_IDENTIFY_ERR:
		ans.cls = (enum kcd_err_class)ipc_get_u32(&rd);
		ipc_get_str(&rd, name, sizeof(name));
		ipc_get_str(&rd, text, sizeof(text));
		ans.name = name;
		ans.text = text;
		if (ans.cls != KCD_ERR_LDAP_DENIED && ans.cls != KCD_ERR_LDAP_UNREACHABLE)
			rd.err = 1;
		break;
	case IPC_MUTUAL_OK:
		ans.ok = 1;
		break;
	case IPC_MUTUAL_ERR:
		ipc_get_str(&rd, name, sizeof(name));
		ipc_get_str(&rd, text, sizeof(text));
		ans.cls = KCD_ERR_PROXY;
		ans.name = name;
		ans.text = text;
		break;
	default:
		rd.err = 1;
		break;
	}
	if (ipc_rd_done(&rd) != 0) {
		memset(&ans, 0, sizeof(ans));
		ans.cls = KCD_ERR_INTERNAL;
		ans.name = "kcd_bad_answer";
		ans.text = "malformed answer from kcd";
		log_error("kcd_client", "malformed %s answer from kcd (id %u, %zu bytes)",
		    ipc_type_name(msg->type), msg->id, msg->len);
	}
	req_finish(r, &ans);
}

static void
on_close(struct ipc_chan *ch, const char *why, void *arg)
{
	struct kcd_client *kc = arg;

	assert(kc->magic == KCD_CLIENT_MAGIC);
	log_error("kcd_client", "channel to kcd closed: %s", why);
	if (kc->ch == ch) {
		ipc_chan_free(ch);
		kc->ch = NULL;
	}
	fail_all(kc, "the channel to kcd closed");
}

struct kcd_client *
kcd_client_new(struct event_base *base, int fd, uint64_t timeout_ms)
{
	struct kcd_client *kc = calloc(1, sizeof(*kc));

	if (kc == NULL)
		return NULL;
	kc->magic = KCD_CLIENT_MAGIC;
	kc->base = base;
	kc->timeout_ms = timeout_ms;
	{
		struct timeval tv = { (time_t)(timeout_ms / 1000u),
		    (suseconds_t)((timeout_ms % 1000u) * 1000u) };

		if ((kc->timeout_tv = event_base_init_common_timeout(base, &tv)) == NULL) {
			free(kc);
			return NULL;
		}
	}
	kc->next_id = 1;
	for (unsigned i = 0; i < REQ_BUCKETS; i++)
		LIST_INIT(&kc->pending[i]);
	if (fd >= 0 && kcd_client_set_channel(kc, fd) != 0) {
		free(kc);
		return NULL;
	}
	return kc;
}

int
kcd_client_set_channel(struct kcd_client *kc, int fd)
{
	struct ipc_chan *ch;

	assert(kc->magic == KCD_CLIENT_MAGIC);
	if ((ch = ipc_chan_new(kc->base, fd, "kcd", on_msg, on_close, kc)) == NULL)
		return -1;
	/* a busy worker asks for several tokens (and releases as many
	 * contexts) per turn of its loop: they leave packed into one
	 * datagram at the end of the turn (kcd packs its answers likewise) */
	if (ipc_chan_set_batching(ch, 1) != 0) {
		ipc_chan_free(ch);
		return -1;
	}
	if (kc->ch != NULL) {
		ipc_chan_free(kc->ch);
		kc->ch = NULL;
		fail_all(kc, "kcd was restarted");
	}
	kc->ch = ch;
	return 0;
}

void
kcd_client_free(struct kcd_client *kc)
{
	if (kc == NULL)
		return;
	assert(kc->magic == KCD_CLIENT_MAGIC);
	fail_all(kc, "the worker is stopping");
	if (kc->ch != NULL)
		ipc_chan_free(kc->ch);
	kc->magic = 0;
	free(kc);
}

static struct kcd_req *
send_req(struct kcd_client *kc, uint16_t type, const struct ipc_buf *b,
    kcd_answer_fn *fn, void *arg)
{
	struct kcd_req *r;

	if (kc->ch == NULL || b->err)
		return NULL;
	/* the request and its timer in one allocation (one per request:
	 * memcache_zalloc, glibc's tcache) */
	if ((r = memcache_zalloc(sizeof(*r) + event_get_struct_event_size())) == NULL)
		return NULL;
	r->timer = (struct event *)(void *)(r + 1);
	r->magic = KCD_REQ_MAGIC;
	r->kc = kc;
	r->fn = fn;
	r->arg = arg;
	r->start_ms = clock_mono_ms();
	do {
		r->id = kc->next_id++;
	} while (r->id == 0 || req_find(kc, r->id) != NULL);
	if (evtimer_assign(r->timer, kc->base, on_timeout, r) != 0 ||
	    evtimer_add(r->timer, kc->timeout_tv) != 0)
		goto fail;
	if (ipc_send(kc->ch, type, r->id, b->data, b->len, -1) != 0)
		goto fail;
	LIST_INSERT_HEAD(&kc->pending[r->id % REQ_BUCKETS], r, bucket);
	kc->st.sent++;
	kc->st.in_flight++;
	return r;
fail:
	event_del(r->timer);	/* (never added: nothing) */
	free(r);
	return NULL;
}

struct kcd_req *
kcd_token_request(struct kcd_client *kc, const char *principal, const char *spn,
    const unsigned char *cb, size_t cb_len, uint32_t flags,
    kcd_answer_fn *fn, void *arg)
{
	/* 64 KiB: kept off the stack; a worker is one thread */
	static struct ipc_buf b;

	assert(kc->magic == KCD_CLIENT_MAGIC);
	if (strlen(principal) >= KCD_PRINCIPAL_MAX || strlen(spn) >= KCD_SPN_MAX ||
	    cb_len > KCD_CB_MAX)
		return NULL;
	ipc_buf_init(&b);
	ipc_put_str(&b, principal);
	ipc_put_str(&b, spn);
	ipc_put_bytes(&b, cb, cb == NULL ? 0 : cb_len);
	ipc_put_u32(&b, flags);
	return send_req(kc, IPC_TOKEN_REQ, &b, fn, arg);
}

struct kcd_req *
kcd_mutual_request(struct kcd_client *kc, uint32_t ctx_id, const char *token,
    kcd_answer_fn *fn, void *arg)
{
	static struct ipc_buf b;

	assert(kc->magic == KCD_CLIENT_MAGIC);
	if (strlen(token) >= KCD_TOKEN_MAX)
		return NULL;
	ipc_buf_init(&b);
	ipc_put_u32(&b, ctx_id);
	ipc_put_str(&b, token);
	return send_req(kc, IPC_MUTUAL_REQ, &b, fn, arg);
}

struct kcd_req *
kcd_identify_request(struct kcd_client *kc, const char *principal,
    const unsigned char *der, size_t der_len, kcd_answer_fn *fn, void *arg)
{
	static struct ipc_buf b;

	assert(kc->magic == KCD_CLIENT_MAGIC);
	if (strlen(principal) >= KCD_PRINCIPAL_MAX || der_len > KCD_CERT_MAX)
		return NULL;
	ipc_buf_init(&b);
	ipc_put_str(&b, principal);
	ipc_put_bytes(&b, der, der_len);
	return send_req(kc, IPC_IDENTIFY_REQ, &b, fn, arg);
}

void
kcd_ctx_release(struct kcd_client *kc, uint32_t ctx_id)
{
	static struct ipc_buf b;

	assert(kc->magic == KCD_CLIENT_MAGIC);
	if (kc->ch == NULL || ctx_id == 0)
		return;
	ipc_buf_init(&b);
	ipc_put_u32(&b, ctx_id);
	/* kcd holds the context meanwhile (bounded: max_contexts) */
	if (ipc_send_lazy(kc->ch, IPC_CTX_RELEASE, 0, b.data, b.len) != 0)
		log_warn("kcd_client", "could not queue ctx_release %u", ctx_id);
}

void
kcd_request_cancel(struct kcd_req *req)
{
	if (req == NULL)
		return;
	assert(req->magic == KCD_REQ_MAGIC);
	req->fn = NULL;		/* the answer is dropped when it comes */
}

void
kcd_client_stats(const struct kcd_client *kc, struct kcd_client_stats *st)
{
	*st = kc->st;
}
