/*
 * kcd.c — the key-holding helper process: its loop, its channels to the
 * workers and the request table; see kcd.h and kcd_proto.h.
 *
 * Every frame from a worker is untrusted (a worker faces the network). It is
 * dispatched only when its type is in the table below and its payload reads
 * back exactly (ipc_rd_done); anything else closes that worker's channel
 * with the reason logged, the way OpenSSH's monitor treats its child.
 */
#include <assert.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/queue.h>

#include <event2/event.h>

#include "clock.h"
#include "config.h"
#include "directory.h"
#include "ipc.h"
#include "kcd.h"
#include "kcd_proto.h"
#include "keytab.h"
#include "log.h"
#include "metrics.h"
#include "proc.h"
#include "s4u.h"

#define KCD_MAGIC	0x4b434431u	/* "KCD1" */
#define PEER_MAGIC	0x4b504552u	/* "KPER" */

/* The proxy's TGT is checked at start, again S4U_PROXY_MARGIN_MS before
 * its end (the check renews it then), at least every TGT_CHECK_MAX_MS (a
 * request may have dropped it), and while there is none every
 * TGT_RETRY_MIN_MS doubling up to TGT_RETRY_MAX_MS. */
#define TGT_RETRY_MIN_MS	2000u
#define TGT_RETRY_MAX_MS	30000u
#define TGT_CHECK_MAX_MS	(10u * 60u * 1000u)

struct kcd;

/* One worker's channel. */
struct kpeer {
	unsigned magic;
	struct kcd *k;
	unsigned slot;
	char name[24];			/* "worker 3" */
	struct ipc_chan *ch;		/* NULL while that worker has none */
	unsigned epoch;			/* bumped whenever ch changes, so an
					 * answer for a dead channel is dropped */
};

/* A token request waiting for s4u.c; the answer goes back to the channel
 * it came from, if that channel still exists. */
struct pending {
	struct kpeer *p;
	unsigned epoch;
	uint32_t id;
	LIST_ENTRY(pending) link;	/* freed at exit if never answered */
};

struct kcd {
	unsigned magic;
	struct event_base *base;
	const struct config *cfg;
	unsigned generation;
	long parent;
	struct ipc_chan *ctl;		/* NULL once the parent is gone */
	unsigned n_peers;
	struct kpeer *peers;		/* indexed by worker slot */
	struct event *term_ev;
	struct event *deadline_ev;
	struct s4u *s4u;		/* the Kerberos core */
	struct directory *dir;		/* [ldap] checks; NULL when uri is empty */
	struct event *tgt_ev;		/* the next check of the proxy's TGT */
	struct metrics_slot *tgt_slot;	/* where /readyz reads it */
	uint64_t tgt_end_ms;		/* unix ms of the TGT last held; 0 none */
	unsigned tgt_backoff_ms;	/* 0 while one is held */
	char tgt_err[KCD_NAME_MAX];	/* the last failure's name (logged once) */
	LIST_HEAD(, pending) pending;
	int draining;
	uint64_t deadline_ms;
	/* scratch space for one request at a time (a kcd loop is one
	 * thread; in an embedding program several kcd loops may run as
	 * threads of one process, so nothing here is static) */
	char principal[KCD_PRINCIPAL_MAX], spn[KCD_SPN_MAX], token[KCD_TOKEN_MAX];
	struct ipc_buf out;
};

/* Request handlers: return 0 when the request was well-formed (answered or
 * not), -1 with why set when the worker's channel must be closed. */
typedef int kcd_handler_fn(struct kpeer *p, const struct ipc_msg *msg, char *why, size_t whylen);

static void
reply(struct kpeer *p, uint16_t type, uint32_t id)
{
	if (p->k->out.err) {
		log_error("kcd", "answer %s to %s too large; not sent", ipc_type_name(type), p->name);
		return;
	}
	/* a failure here is reported through the channel's close callback */
	(void)ipc_send(p->ch, type, id, p->k->out.data, p->k->out.len, -1);
}

static void
answer_error(struct kpeer *p, uint32_t id, enum kcd_err_class cls, const char *name,
    const char *text)
{
	ipc_buf_init(&p->k->out);
	ipc_put_u32(&p->k->out, cls);
	ipc_put_str(&p->k->out, name);
	ipc_put_str(&p->k->out, text);
	reply(p, IPC_TOKEN_ERR, id);
}

/* The room s4u_token_now_to gets in the answer's buffer for a warm token:
 * TOKEN_OK's str (ipc_put_str's u32 length, then the bytes) starts the
 * payload, so the token is made where that str's bytes go, and the u32
 * ctx id and u64 end follow it (the NUL written after the token is
 * overwritten by them). */
#define TOKEN_AT	sizeof(uint32_t)
#define TOKEN_ROOM	(sizeof(((struct ipc_buf *)0)->data) - TOKEN_AT - \
			 sizeof(uint32_t) - sizeof(uint64_t))

/* TOKEN_OK: str token, u32 ctx id, u64 ticket end. A token that
 * s4u_token_now_to made in place (res->token at out.data + TOKEN_AT) gets
 * only its length put in front of it; any other is copied in. */
static void
answer_token(struct kpeer *p, uint32_t id, const struct s4u_result *res)
{
	struct ipc_buf *out = &p->k->out;

	ipc_buf_init(out);
	if (res->token == (const char *)out->data + TOKEN_AT) {
		ipc_put_u32(out, (uint32_t)res->token_len);
		out->len += res->token_len;	/* within TOKEN_ROOM */
	} else {
		ipc_put_str(out, res->token);
	}
	ipc_put_u32(out, res->ctx_id);
	ipc_put_u64(out, res->ticket_end_ms);
	reply(p, IPC_TOKEN_OK, id);
}

/* An answer to a TOKEN_REQ, in kcd's metrics: the cache's part, the KDC
 * exchange it ran, the token's route. */
static void
count_token(const struct s4u_result *res)
{
	struct metrics_slot *m = metrics_self();

	if (res->exchange) {
		/* this request ran the KDC exchange (single-flight waiters
		 * share it and count as misses, not as KDC requests) */
		m->kdc_requests++;
		m->kcd_cache_misses++;
		metrics_kdc_latency(res->elapsed_ms);
		if (!res->ok)
			m->kdc_errors++;
	} else if (res->kdc)
		m->kcd_cache_misses++;
	else if (res->ok)
		m->kcd_cache_hits++;
	else
		m->kcd_negative_hits++;
	/* the token's route (s4u_token_now's, or the pool's); a fallback is
	 * counted once, on the pool's answer (s4u_token_now tried, and
	 * s4u_token_request_gss did not try again) */
	if (res->ok && res->fast)
		m->kcd_tokens_fast++;
	else if (res->ok)
		m->kcd_tokens_gss++;
	if (res->fast_fallback)
		m->kcd_fast_fallbacks++;
}

/* s4u.c answered a TOKEN_REQ (on this loop). */
static void
on_token(const struct s4u_result *res, void *arg)
{
	struct pending *pd = arg;
	struct kpeer *p = pd->p;

	LIST_REMOVE(pd, link);
	count_token(res);
	if (p->ch == NULL || p->epoch != pd->epoch) {
		/* that worker's channel went away; its request died with it */
		if (res->ctx_id != 0)
			s4u_ctx_release(p->k->s4u, res->ctx_id);
		free(pd);
		return;
	}
	if (res->ok)
		answer_token(p, pd->id, res);
	else
		answer_error(p, pd->id, res->cls, res->name, res->text ? res->text : "");
	free(pd);
}

/* TOKEN_REQ: str principal, str spn, bytes cb, u32 flags (kcd_proto.h). */
static int
h_token_req(struct kpeer *p, const struct ipc_msg *msg, char *why, size_t whylen)
{
	struct ipc_rd rd;
	const uint8_t *cb;
	size_t cb_len;
	uint32_t flags;
	struct pending *pd;
	struct s4u_error serr;
	struct s4u_result res;

	ipc_rd_init(&rd, msg->data, msg->len);
	ipc_get_str(&rd, p->k->principal, sizeof(p->k->principal));
	ipc_get_str(&rd, p->k->spn, sizeof(p->k->spn));
	cb_len = ipc_get_bytes(&rd, &cb);
	flags = ipc_get_u32(&rd);
	if (ipc_rd_done(&rd) != 0) {
		snprintf(why, whylen, "malformed token_req (%zu bytes)", msg->len);
		return -1;
	}
	if (cb_len > KCD_CB_MAX) {
		snprintf(why, whylen, "token_req with %zu bytes of channel bindings (at most %d)",
		    cb_len, KCD_CB_MAX);
		return -1;
	}
	if (flags & ~KCD_F_ALL) {
		/* no worker sends them: a bug or a compromised worker */
		snprintf(why, whylen, "token_req with unknown flags 0x%x", flags & ~KCD_F_ALL);
		return -1;
	}
	/* a warm user: the token is made here and now (s4u.h, Warm tokens),
	 * in base64 straight into the answer */
	switch (s4u_token_now_to(p->k->s4u, p->k->principal, p->k->spn, cb_len ? cb : NULL,
	    cb_len, flags, (char *)p->k->out.data + TOKEN_AT, TOKEN_ROOM, &res, &serr)) {
	case 1:
		count_token(&res);
		answer_token(p, msg->id, &res);
		return 0;
	case -1:
		answer_error(p, msg->id, serr.cls, serr.name, serr.text);
		return 0;
	default:
		break;			/* the pool's route (below) */
	}
	if ((pd = malloc(sizeof(*pd))) == NULL) {
		answer_error(p, msg->id, KCD_ERR_INTERNAL, "out_of_memory", "kcd is out of memory");
		return 0;
	}
	pd->p = p;
	pd->epoch = p->epoch;
	pd->id = msg->id;
	LIST_INSERT_HEAD(&p->k->pending, pd, link);
	/* a fast path that has just failed (res.fast_fallback) is not tried
	 * again: straight to gss_init_sec_context */
	if ((res.fast_fallback ? s4u_token_request_gss : s4u_token_request)(p->k->s4u,
	    p->k->principal, p->k->spn, cb_len ? cb : NULL, cb_len, flags, on_token, pd,
	    &serr) != 0) {
		LIST_REMOVE(pd, link);
		free(pd);
		answer_error(p, msg->id, serr.cls, serr.name, serr.text);
	}
	return 0;
}

/* MUTUAL_REQ: u32 ctx id, str token. */
static int
h_mutual_req(struct kpeer *p, const struct ipc_msg *msg, char *why, size_t whylen)
{
	struct ipc_rd rd;
	uint32_t ctx;
	struct s4u_error serr;

	ipc_rd_init(&rd, msg->data, msg->len);
	ctx = ipc_get_u32(&rd);
	ipc_get_str(&rd, p->k->token, sizeof(p->k->token));
	if (ipc_rd_done(&rd) != 0) {
		snprintf(why, whylen, "malformed mutual_req (%zu bytes)", msg->len);
		return -1;
	}
	if (s4u_verify_mutual(p->k->s4u, ctx, p->k->token, &serr) == 0) {
		ipc_buf_init(&p->k->out);
		reply(p, IPC_MUTUAL_OK, msg->id);
		return 0;
	}
	ipc_buf_init(&p->k->out);
	ipc_put_str(&p->k->out, serr.name);
	ipc_put_str(&p->k->out, serr.text);
	reply(p, IPC_MUTUAL_ERR, msg->id);
	return 0;
}

/* CTX_RELEASE: u32 ctx id; no answer. */
static int
h_ctx_release(struct kpeer *p, const struct ipc_msg *msg, char *why, size_t whylen)
{
	struct ipc_rd rd;
	uint32_t ctx;

	ipc_rd_init(&rd, msg->data, msg->len);
	ctx = ipc_get_u32(&rd);
	if (ipc_rd_done(&rd) != 0) {
		snprintf(why, whylen, "malformed ctx_release (%zu bytes)", msg->len);
		return -1;
	}
	s4u_ctx_release(p->k->s4u, ctx);
	return 0;
}

/* directory.c answered an IDENTIFY_REQ (on this loop). */
static void
on_identify(const struct directory_result *res, void *arg)
{
	struct pending *pd = arg;
	struct kpeer *p = pd->p;

	LIST_REMOVE(pd, link);
	if (res->cancelled || p->ch == NULL || p->epoch != pd->epoch) {
		free(pd);	/* kcd is stopping, or that worker's channel is gone */
		return;
	}
	ipc_buf_init(&p->k->out);
	if (res->ok) {
		ipc_put_str(&p->k->out, res->principal);
		ipc_put_u32(&p->k->out, res->flags);
		reply(p, IPC_IDENTIFY_OK, pd->id);
	} else {
		ipc_put_u32(&p->k->out, res->cls);
		ipc_put_str(&p->k->out, res->name);
		ipc_put_str(&p->k->out, res->text ? res->text : "");
		reply(p, IPC_IDENTIFY_ERR, pd->id);
	}
	free(pd);
}

/* IDENTIFY_REQ: str principal, bytes certificate (DER). */
static int
h_identify_req(struct kpeer *p, const struct ipc_msg *msg, char *why, size_t whylen)
{
	struct ipc_rd rd;
	const uint8_t *der;
	size_t der_len;
	struct pending *pd;
	char err[256];

	ipc_rd_init(&rd, msg->data, msg->len);
	ipc_get_str(&rd, p->k->principal, sizeof(p->k->principal));
	der_len = ipc_get_bytes(&rd, &der);
	if (ipc_rd_done(&rd) != 0) {
		snprintf(why, whylen, "malformed identify_req (%zu bytes)", msg->len);
		return -1;
	}
	if (der_len == 0 || der_len > KCD_CERT_MAX) {
		snprintf(why, whylen, "identify_req with a %zu-byte certificate (1 to %d)",
		    der_len, KCD_CERT_MAX);
		return -1;
	}
	if (p->k->dir == NULL) {
		/* the workers ask only when [ldap] uri is set: same config */
		ipc_buf_init(&p->k->out);
		ipc_put_u32(&p->k->out, KCD_ERR_LDAP_UNREACHABLE);
		ipc_put_str(&p->k->out, "kcd_not_ready");
		ipc_put_str(&p->k->out, "kcd has no [ldap] uri in this generation's configuration");
		reply(p, IPC_IDENTIFY_ERR, msg->id);
		return 0;
	}
	if ((pd = calloc(1, sizeof(*pd))) == NULL) {
		snprintf(err, sizeof(err), "out of memory");
		goto fail;
	}
	pd->p = p;
	pd->epoch = p->epoch;
	pd->id = msg->id;
	LIST_INSERT_HEAD(&p->k->pending, pd, link);
	if (directory_identify(p->k->dir, p->k->principal, der, der_len, on_identify, pd, err,
	    sizeof(err)) == 0)
		return 0;
	LIST_REMOVE(pd, link);
	free(pd);
fail:
	log_error("kcd", "identify_req %u from %s for '%s': %s", msg->id, p->name, p->k->principal, err);
	ipc_buf_init(&p->k->out);
	ipc_put_u32(&p->k->out, KCD_ERR_LDAP_UNREACHABLE);
	ipc_put_str(&p->k->out, "internal");
	ipc_put_str(&p->k->out, err);
	reply(p, IPC_IDENTIFY_ERR, msg->id);
	return 0;
}

/* The requests kcd answers. Everything else from a worker is refused. */
static const struct {
	uint16_t type;
	kcd_handler_fn *fn;
} handlers[] = {
	{ IPC_TOKEN_REQ,	h_token_req },
	{ IPC_MUTUAL_REQ,	h_mutual_req },
	{ IPC_CTX_RELEASE,	h_ctx_release },
	{ IPC_IDENTIFY_REQ,	h_identify_req },
};

/* ---- worker channels --------------------------------------------------------- */

static unsigned
peers_open(const struct kcd *k)
{
	unsigned n = 0;

	for (unsigned i = 0; i < k->n_peers; i++)
		n += k->peers[i].ch != NULL;
	return n;
}

static void
peer_drop(struct kpeer *p, const char *why, int is_fault)
{
	struct kcd *k = p->k;

	if (is_fault)
		log_error("kcd", "closing the channel of %s: %s", p->name, why);
	else
		log_info("kcd", "channel of %s closed: %s", p->name, why);
	ipc_chan_free(p->ch);
	p->ch = NULL;
	p->epoch++;
	if (k->draining && peers_open(k) == 0) {
		log_info("kcd", "draining: no worker channel left; exiting");
		event_base_loopexit(k->base, NULL);
	}
}

static void
on_peer_msg(struct ipc_chan *ch, const struct ipc_msg *msg, void *arg)
{
	struct kpeer *p = arg;
	char why[256];

	assert(p->magic == PEER_MAGIC);
	(void)ch;
	if (msg->fd >= 0) {
		close(msg->fd);
		snprintf(why, sizeof(why), "%s with a file descriptor (workers never pass one)",
		    ipc_type_name(msg->type));
		peer_drop(p, why, 1);
		return;
	}
	for (size_t i = 0; i < sizeof(handlers) / sizeof(handlers[0]); i++) {
		if (handlers[i].type != msg->type)
			continue;
		why[0] = '\0';
		if (handlers[i].fn(p, msg, why, sizeof(why)) != 0)
			peer_drop(p, why, 1);
		return;
	}
	snprintf(why, sizeof(why), "request type %s (%u) is not one kcd answers",
	    ipc_type_name(msg->type), msg->type);
	peer_drop(p, why, 1);
}

static void
on_peer_close(struct ipc_chan *ch, const char *why, void *arg)
{
	struct kpeer *p = arg;

	assert(p->magic == PEER_MAGIC);
	assert(p->ch == ch);
	/* a worker that exits closes its end: that is not our fault */
	peer_drop(p, why, strstr(why, "closed the channel") == NULL);
}

/* ---- the proxy's TGT (/readyz) --------------------------------------------------- */

static void
fmt_utc(uint64_t ms, char *buf, size_t len)
{
	time_t t = (time_t)(ms / 1000u);
	struct tm tm;

	if (ms == UINT64_MAX)
		snprintf(buf, len, "no end");
	else if (gmtime_r(&t, &tm) == NULL || strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(buf, len, "%llu", (unsigned long long)(ms / 1000u));
}

static void
tgt_arm(struct kcd *k, uint64_t ms)
{
	struct timeval tv = { (time_t)(ms / 1000u), (suseconds_t)((ms % 1000u) * 1000u) };

	evtimer_add(k->tgt_ev, &tv);
}

static int64_t
tgt_end_s(uint64_t ms)
{
	return ms == UINT64_MAX ? INT64_MAX : (int64_t)(ms / 1000u);
}

/* s4u.c answered a check of the proxy's TGT (on this loop): publish it
 * for /readyz, log what changed, and arm the next check. */
static void
on_tgt(const struct s4u_proxy_state *st, void *arg)
{
	struct kcd *k = arg;
	const char *p = k->cfg->kerberos.principal;
	uint64_t now = clock_unix_ms(), left, next;
	char until[32], why[sizeof(k->tgt_slot->kcd_tgt_why)];
	int held, repeat;

	assert(k->magic == KCD_MAGIC);
	if (st->ok) {
		fmt_utc(st->end_ms, until, sizeof(until));
		if (k->tgt_end_ms == 0 || k->tgt_end_ms <= now)
			log_info("kcd", "obtained the TGT for %s from the keytab, valid until %s",
			    p, until);
		else if (st->end_ms > k->tgt_end_ms)
			log_info("kcd", "renewed the TGT for %s, valid until %s", p, until);
		k->tgt_end_ms = st->end_ms;
		k->tgt_backoff_ms = 0;
		k->tgt_err[0] = '\0';
		metrics_kcd_tgt(k->tgt_slot, tgt_end_s(st->end_ms), "");
		/* renew S4U_PROXY_MARGIN_MS before the end (half a second
		 * later, so that the check finds it inside the margin); a TGT
		 * shorter than that (the KDC's policy) halfway through what is
		 * left */
		left = st->end_ms == UINT64_MAX ? TGT_CHECK_MAX_MS :
		    st->end_ms > now ? st->end_ms - now : 0;
		next = left > S4U_PROXY_MARGIN_MS + 1000u ? left - S4U_PROXY_MARGIN_MS + 500u :
		    left / 2;
		next = next < 1000u ? 1000u : next > TGT_CHECK_MAX_MS ? TGT_CHECK_MAX_MS : next;
		tgt_arm(k, next);
		return;
	}

	held = st->end_ms > now;
	k->tgt_backoff_ms = k->tgt_backoff_ms == 0 ? TGT_RETRY_MIN_MS :
	    k->tgt_backoff_ms * 2 > TGT_RETRY_MAX_MS ? TGT_RETRY_MAX_MS : k->tgt_backoff_ms * 2;
	repeat = strcmp(k->tgt_err, st->name) == 0 && (held || k->tgt_end_ms == 0);
	snprintf(k->tgt_err, sizeof(k->tgt_err), "%s", st->name);
	/* /readyz: with an end (still held, or expired: the parent compares
	 * it with the time) the renewal failed; without, there is none */
	if (st->end_ms != 0)
		snprintf(why, sizeof(why), "renewing the TGT for %s failed: %s: %s", p, st->name,
		    st->text);
	else
		snprintf(why, sizeof(why), "no TGT for %s: %s: %s", p, st->name, st->text);
	if (held) {
		fmt_utc(st->end_ms, until, sizeof(until));
		if (repeat)
			log_debug("kcd", "still cannot renew the TGT for %s (valid until %s): kdc_%s",
			    p, until, st->name);
		else
			log_warn("kcd", "cannot renew the TGT for %s (still valid until %s; "
			    "retrying every %u s at most): kdc_%s: %s", p, until,
			    TGT_RETRY_MAX_MS / 1000u, st->name, st->text);
	} else if (k->tgt_end_ms != 0) {
		/* it ran out, or a request dropped it after a refusal only a
		 * new one could fix, and getting a new one failed */
		fmt_utc(st->end_ms != 0 ? st->end_ms : k->tgt_end_ms, until, sizeof(until));
		log_error("kcd", "lost the TGT for %s (%s %s; not ready until a new one): kdc_%s: %s",
		    p, st->end_ms != 0 ? "it expired at" : "dropped after a KDC refusal; it was "
		    "valid until", until, st->name, st->text);
		k->tgt_end_ms = 0;
	} else if (repeat)
		log_debug("kcd", "still no TGT for %s: kdc_%s", p, st->name);
	else
		log_error("kcd", "no TGT for %s (not ready; retrying every %u s at most): kdc_%s: %s",
		    p, TGT_RETRY_MAX_MS / 1000u, st->name, st->text);
	metrics_kcd_tgt(k->tgt_slot, st->end_ms != 0 ? tgt_end_s(st->end_ms) : 0, why);
	tgt_arm(k, k->tgt_backoff_ms);
}

/* s4u.c ran an AS exchange for the proxy's TGT (on this loop), for a
 * check or for a request: counted apart from the S4U exchanges. */
static void
on_tgt_exchange(int ok, void *arg)
{
	struct kcd *k = arg;

	assert(k->magic == KCD_MAGIC);
	if (ok)
		metrics_self()->kcd_tgt_ok++;
	else
		metrics_self()->kcd_tgt_errors++;
}

static void
on_tgt_timer(evutil_socket_t fd, short what, void *arg)
{
	struct kcd *k = arg;

	(void)fd;
	(void)what;
	assert(k->magic == KCD_MAGIC);
	if (k->draining)
		return;		/* a newer generation's kcd takes over */
	if (s4u_proxy_check(k->s4u, on_tgt, k) != 0) {
		log_error("kcd", "cannot check the TGT for %s (out of memory, or a check is "
		    "still running); trying again in %u s", k->cfg->kerberos.principal,
		    TGT_RETRY_MAX_MS / 1000u);
		tgt_arm(k, TGT_RETRY_MAX_MS);
	}
}

/* ---- drain ---------------------------------------------------------------------- */

static void
on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct kcd *k = arg;

	(void)fd;
	(void)what;
	assert(k->magic == KCD_MAGIC);
	log_warn("kcd", "drain deadline reached with %u worker channels open; exiting", peers_open(k));
	event_base_loopexit(k->base, NULL);
}

/* kcd outlives its generation's workers: requests in flight on a draining
 * worker still need tokens. It exits when the last worker channel closes,
 * or at the deadline. */
static void
start_drain(struct kcd *k, uint64_t deadline_ms, const char *why)
{
	uint64_t now = proc_now_ms(), left;
	struct timeval tv;

	if (k->draining && deadline_ms >= k->deadline_ms)
		return;
	if (!k->draining)
		log_info("kcd", "draining (%s), %u worker channels open", why, peers_open(k));
	k->draining = 1;
	k->deadline_ms = deadline_ms;
	if (peers_open(k) == 0) {
		event_base_loopexit(k->base, NULL);
		return;
	}
	left = deadline_ms > now ? deadline_ms - now : 0;
	tv.tv_sec = (time_t)(left / 1000u);
	tv.tv_usec = (suseconds_t)((left % 1000u) * 1000u);
	evtimer_add(k->deadline_ev, &tv);
}

static void
on_term(evutil_socket_t sig, short what, void *arg)
{
	struct kcd *k = arg;

	(void)sig;
	(void)what;
	assert(k->magic == KCD_MAGIC);
	start_drain(k, proc_now_ms() + k->cfg->server.shutdown_timeout,
	    "SIGTERM: the parent is gone or asked so");
}

/* ---- control channel from the parent ---------------------------------------- */

static void
add_worker_channel(struct kcd *k, uint32_t slot, int fd)
{
	struct kpeer *p = &k->peers[slot];

	if (p->ch != NULL) {
		/* the worker was restarted: its old channel is dead anyway */
		ipc_chan_free(p->ch);
		p->ch = NULL;
	}
	p->epoch++;
	if ((p->ch = ipc_chan_new(k->base, fd, p->name, on_peer_msg, on_peer_close, p)) == NULL) {
		log_error("kcd", "cannot set up the channel of %s", p->name);
		return;
	}
	/* the answers made in one turn of the loop (a worker's packed
	 * requests, the pool's completions) leave packed into one datagram
	 * at its end; nothing here needs an answer out sooner: a channel
	 * being freed (peer_drop, exit) sends its batch first */
	if (ipc_chan_set_batching(p->ch, 1) != 0)
		log_warn("kcd", "channel of %s: no memory to batch answers; sending them one by one",
		    p->name);
	log_debug("kcd", "channel of %s ready", p->name);
}

static void
on_ctl_msg(struct ipc_chan *ch, const struct ipc_msg *msg, void *arg)
{
	struct kcd *k = arg;
	struct ipc_rd rd;
	uint64_t deadline;
	uint32_t slot;

	(void)ch;
	assert(k->magic == KCD_MAGIC);
	ipc_rd_init(&rd, msg->data, msg->len);
	switch (msg->type) {
	case IPC_WORKER_CHANNEL:
		slot = ipc_get_u32(&rd);
		if (ipc_rd_done(&rd) != 0 || msg->fd < 0 || slot >= k->n_peers)
			goto bad;
		add_worker_channel(k, slot, msg->fd);	/* takes the fd */
		return;
	case IPC_SHUTDOWN:
		deadline = ipc_get_u64(&rd);
		if (ipc_rd_done(&rd) != 0 || msg->fd >= 0)
			goto bad;
		start_drain(k, deadline, "shutdown requested by the parent");
		return;
	case IPC_LOG_REOPEN:
		if (ipc_rd_done(&rd) != 0)
			goto bad;
		if (msg->fd >= 0)
			(void)log_reopen_fd(msg->fd);
		else
			(void)log_reopen();
		return;
	default:
		break;
	}
bad:
	log_error("kcd", "ignored a malformed or unexpected %s (%zu bytes) from the parent",
	    ipc_type_name(msg->type), msg->len);
	if (msg->fd >= 0)
		close(msg->fd);
}

static void
on_ctl_close(struct ipc_chan *ch, const char *why, void *arg)
{
	struct kcd *k = arg;

	assert(k->magic == KCD_MAGIC);
	ipc_chan_free(ch);
	k->ctl = NULL;
	if (!k->draining || strstr(why, "closed the channel") == NULL)
		log_warn("kcd", "control channel: %s", why);
	start_drain(k, proc_now_ms() + k->cfg->server.shutdown_timeout, "the parent is gone");
}

/* ---- main --------------------------------------------------------------------- */

/*
 * kcd cannot start (before READY): the error line, as it always was, and
 * the same text to the parent (IPC_START_FAILED, proc.h), which names it
 * on its "reload failed" line; an admin reading that line alone sees why.
 * The channel is not batching: the frame is in the socket when ipc_send
 * returns (an empty queue at start-up), before kcd frees the channel and
 * exits. No channel (it could not be set up): the line only.
 */
static void __attribute__((format(printf, 2, 3)))
start_failed(struct kcd *k, const char *fmt, ...)
{
	char cause[PROC_CAUSE_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(cause, sizeof(cause), fmt, ap);
	va_end(ap);
	log_error("kcd", "%s", cause);
	if (k == NULL || k->ctl == NULL)
		return;
	ipc_buf_init(&k->out);
	ipc_put_str(&k->out, cause);
	if (k->out.err || ipc_send(k->ctl, IPC_START_FAILED, 0, k->out.data, k->out.len, -1) != 0)
		log_debug("kcd", "cannot tell the parent why start-up failed");
}

/*
 * kcd on base until it has drained. own_process: kcd is a process of its
 * own (kcd_main): SIGTERM drains it and SIGPIPE is ignored. Otherwise it is
 * a thread of an embedding program, whose signal dispositions are not ours
 * to change (kcd_run).
 */
static int
run(struct event_base *base, const struct kcd_args *a, int own_process)
{
	struct kcd *k = NULL;
	int rc = 1, ctl_fd = a->ctl_fd;

	if ((k = calloc(1, sizeof(*k))) == NULL) {
		start_failed(NULL, "cannot start: out of memory");
		goto cleanup;
	}
	k->magic = KCD_MAGIC;
	LIST_INIT(&k->pending);
	k->base = base;
	k->cfg = a->cfg;
	k->generation = a->generation;
	k->parent = a->parent;
	k->n_peers = a->n_workers;
	if ((k->peers = calloc(k->n_peers ? k->n_peers : 1, sizeof(*k->peers))) == NULL) {
		start_failed(k, "cannot start: out of memory");
		goto cleanup;
	}
	for (unsigned i = 0; i < k->n_peers; i++) {
		k->peers[i].magic = PEER_MAGIC;
		k->peers[i].k = k;
		k->peers[i].slot = i;
		snprintf(k->peers[i].name, sizeof(k->peers[i].name), "worker %u", i);
	}
	k->ctl = ipc_chan_new(k->base, ctl_fd, "parent", on_ctl_msg, on_ctl_close, k);
	ctl_fd = -1;		/* taken, even on failure */
	if (k->ctl == NULL ||
	    (k->deadline_ev = evtimer_new(k->base, on_deadline, k)) == NULL ||
	    (own_process && ((k->term_ev = evsignal_new(k->base, SIGTERM, on_term, k)) == NULL ||
	    evsignal_add(k->term_ev, NULL) != 0))) {
		start_failed(k, "cannot set up the event loop");
		goto cleanup;
	}
	/*
	 * The Kerberos core, before READY: krb5 configuration, thread pool
	 * (s4u.c; the keytab is read by the first request). kcd keeps the
	 * user it was started as (root, or whoever can read the keytab) and
	 * never listens on the network.
	 */
	{
		const struct config *c = k->cfg;
		struct s4u_params sp = { 0 };
		char err[512];

		if (s4u_env_init(c->kerberos.krb5_conf, err, sizeof(err)) != 0) {
			start_failed(k, "%s", err);
			goto cleanup;
		}
		/* main.c refuses it at start; this is for a keytab opened up
		 * before a reload or a restart (keytab.h) */
		if (keytab_check_mode(c->kerberos.keytab, c->server.user, err, sizeof(err)) ==
		    KEYTAB_REFUSE) {
			start_failed(k, "%s", err);
			goto cleanup;
		}
		sp.keytab = c->kerberos.keytab;
		sp.principal = c->kerberos.principal;
		sp.credential_ttl_ms = c->kerberos.credential_ttl;
		sp.negative_ttl_ms = c->kerberos.negative_ttl;
		sp.kdc_timeout_ms = c->kerberos.kdc_timeout;
		sp.kdc_concurrency = c->kerberos.kdc_concurrency;
		sp.ctx_ttl_ms = c->server.request_timeout + 60000u;
		sp.on_tgt_exchange = on_tgt_exchange;
		sp.tgt_arg = k;
		if ((k->s4u = s4u_new(k->base, &sp, err, sizeof(err))) == NULL) {
			start_failed(k, "cannot start the Kerberos core: %s", err);
			goto cleanup;
		}
		if (c->ldap.uri != NULL &&
		    (k->dir = directory_new(k->base, c, err, sizeof(err))) == NULL) {
			start_failed(k, "cannot start the directory checks: %s", err);
			goto cleanup;
		}
		metrics_self()->kcd_ready = 1;	/* for /readyz */
		/* /readyz also needs the proxy's TGT: acquire it now, on the
		 * KDC pool, rather than at the first device request */
		k->tgt_slot = a->tgt_slot != NULL ? a->tgt_slot : metrics_self();
		snprintf(err, sizeof(err), "no TGT for %s yet: acquiring it from the keytab",
		    c->kerberos.principal);
		metrics_kcd_tgt(k->tgt_slot, 0, err);
		if ((k->tgt_ev = evtimer_new(k->base, on_tgt_timer, k)) == NULL) {
			start_failed(k, "cannot add the TGT check timer");
			goto cleanup;
		}
		tgt_arm(k, 0);
	}
	if (ipc_send(k->ctl, IPC_READY, 0, NULL, 0, -1) != 0)
		log_error("kcd", "cannot report ready to the parent");
	log_info("kcd", "generation %u ready for %u workers", k->generation, k->n_peers);
	event_base_dispatch(k->base);
	rc = 0;
cleanup:
	if (ctl_fd >= 0)
		close(ctl_fd);
	if (k == NULL)
		return rc;
	metrics_self()->kcd_ready = 0;
	if (k->tgt_slot != NULL)
		metrics_kcd_tgt(k->tgt_slot, 0, "kcd has stopped");
	directory_free(k->dir);		/* cancels (frees) its pending requests */
	if (k->s4u != NULL)
		s4u_free(k->s4u);	/* unanswered callbacks are not called */
	while (!LIST_EMPTY(&k->pending)) {
		struct pending *pd = LIST_FIRST(&k->pending);
		LIST_REMOVE(pd, link);
		free(pd);
	}
	for (unsigned i = 0; k->peers != NULL && i < k->n_peers; i++)
		if (k->peers[i].ch != NULL)
			ipc_chan_free(k->peers[i].ch);
	free(k->peers);
	if (k->ctl != NULL)
		ipc_chan_free(k->ctl);
	if (k->deadline_ev != NULL)
		event_free(k->deadline_ev);
	if (k->tgt_ev != NULL)
		event_free(k->tgt_ev);
	if (k->term_ev != NULL)
		event_free(k->term_ev);
	k->magic = 0;
	free(k);
	return rc;
}

int
kcd_run(struct event_base *base, const struct kcd_args *a)
{
	return run(base, a, 0);
}

int
kcd_main(const struct kcd_args *a)
{
	struct event_base *base;
	int rc;

	/* a worker that goes away mid-answer must not kill kcd */
	signal(SIGPIPE, SIG_IGN);
	if ((base = event_base_new()) == NULL) {
		log_error("kcd", "cannot create the event loop");
		if (a->ctl_fd >= 0)
			close(a->ctl_fd);
		return 1;
	}
	rc = run(base, a, 1);
	event_base_free(base);
	return rc;
}
