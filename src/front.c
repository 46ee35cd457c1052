/*
 * front.c — the worker: accept on the listening sockets, hand each
 * connection to stream.c, drain on request; and the daemon's worker
 * process around it (worker_main); see front.h.
 *
 * Start-up order matters: everything that needs root is loaded first
 * (worker_new), then the worker process drops privileges for good, and
 * only then does the worker accept a single connection.
 */
#include <assert.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include <event2/event.h>

#include "access_log.h"
#include "admin.h"
#include "front.h"
#include "ipc.h"
#include "kcd_client.h"
#include "log.h"
#include "metrics.h"
#include "policy.h"
#include "proc.h"
#include "s4u.h"
#include "stream.h"

#define WORKER_MAGIC	0x574b5231u	/* "WKR1" */
#define LISTENER_MAGIC	0x4c53544eu	/* "LSTN" */
#define ACCEPT_BURST	64		/* accepts per wake-up, then let the loop breathe */
#define ACCEPT_PAUSE_MS	1000		/* out of descriptors: stop accepting this long */
#define KCD_MARGIN_MS	1000		/* over kcd's own bounds, for the round trip */

struct listener {
	unsigned magic;
	struct worker *w;
	int fd;				/* owned; -1 once closed for the drain */
	struct event *ev;
};

struct worker {
	unsigned magic;
	struct event_base *base;
	const struct config *cfg;
	unsigned slot;
	unsigned generation;
	struct kcd_client *kcd;
	struct policy *policy;
	struct senv *senv;		/* stream.c's, see front_stream_env */
	unsigned n_listen;
	struct listener ls[CONFIG_MAX_LISTEN];
	struct event *resume_ev;	/* accepts paused after EMFILE */
	struct event *deadline_ev;	/* drain deadline */
	struct event *drained_ev;	/* runs drained() outside stream code */
	int admin_fd;			/* until worker_start; -1 none */
	struct admin *admin;		/* /metrics /healthz /readyz; NULL none */
	unsigned char ticket_keys[FRONT_TICKET_KEYS_LEN];
	unsigned conns;
	int draining;
	int drained_done;		/* drained() was called */
	uint64_t deadline_ms;
	worker_drained_fn *drained;
	void *drained_arg;
};

/* The daemon's worker process around its worker. */
struct wproc {
	unsigned magic;
	struct worker *w;
	long parent;
	struct ipc_chan *ctl;		/* NULL once the parent is gone */
	struct event *term_ev;		/* SIGTERM (also the parent-death signal) */
};

#define WPROC_MAGIC	0x57505231u	/* "WPR1" */

struct event_base *
front_base(struct worker *w)
{
	assert(w->magic == WORKER_MAGIC);
	return w->base;
}

const struct config *
front_config(const struct worker *w)
{
	assert(w->magic == WORKER_MAGIC);
	return w->cfg;
}

struct kcd_client *
front_kcd(struct worker *w)
{
	assert(w->magic == WORKER_MAGIC);
	return w->kcd;
}

struct policy *
front_policy(struct worker *w)
{
	assert(w->magic == WORKER_MAGIC);
	return w->policy;
}

struct senv *
front_stream_env(const struct worker *w)
{
	assert(w->magic == WORKER_MAGIC);
	return w->senv;
}

void
front_set_stream_env(struct worker *w, struct senv *env)
{
	assert(w->magic == WORKER_MAGIC);
	w->senv = env;
}

const unsigned char *
front_ticket_keys(const struct worker *w)
{
	assert(w->magic == WORKER_MAGIC);
	return w->ticket_keys;
}

unsigned
front_slot(const struct worker *w)
{
	assert(w->magic == WORKER_MAGIC);
	return w->slot;
}

int
front_draining(const struct worker *w)
{
	assert(w->magic == WORKER_MAGIC);
	return w->draining;
}

unsigned
front_conn_count(const struct worker *w)
{
	assert(w->magic == WORKER_MAGIC);
	return w->conns;
}

void
front_conn_opened(struct worker *w)
{
	assert(w->magic == WORKER_MAGIC);
	w->conns++;
	metrics_self()->conns_open++;
}

/* Drained: tell the owner from an event of our own (the last close
 * comes from inside stream code, which must not see w freed under it). */
static void
drained(struct worker *w)
{
	if (w->drained_done)
		return;
	w->drained_done = 1;
	evtimer_del(w->deadline_ev);
	event_active(w->drained_ev, EV_TIMEOUT, 1);
}

static void
on_drained(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;

	(void)fd;
	(void)what;
	assert(w->magic == WORKER_MAGIC);
	if (w->drained != NULL)
		w->drained(w, w->drained_arg);	/* may free w */
	else
		event_base_loopexit(w->base, NULL);
}

void
front_conn_closed(struct worker *w)
{
	assert(w->magic == WORKER_MAGIC);
	assert(w->conns > 0);
	w->conns--;
	metrics_self()->conns_open--;
	if (w->draining && w->conns == 0) {
		log_info("front", "worker %u (generation %u): last connection closed; done",
		    w->slot, w->generation);
		drained(w);
	}
}

int
front_load_tls(struct worker *w, char *err, size_t errlen)
{
	/* TLS contexts, access log, backend pools: stream.c owns them; they
	 * are built here while the worker is still root (key files). */
	assert(w->magic == WORKER_MAGIC);
	return stream_env_init(w, err, errlen);
}

/* ---- listeners ------------------------------------------------------------- */

static void
listeners_stop(struct worker *w, int close_them)
{
	for (unsigned i = 0; i < w->n_listen; i++) {
		struct listener *l = &w->ls[i];
		if (l->ev != NULL)
			event_del(l->ev);
		if (close_them && l->fd >= 0) {
			/* our copy only: the parent and the other workers keep theirs */
			close(l->fd);
			l->fd = -1;
		}
	}
}

static void
listeners_start(struct worker *w)
{
	for (unsigned i = 0; i < w->n_listen; i++)
		if (w->ls[i].fd >= 0 && w->ls[i].ev != NULL)
			event_add(w->ls[i].ev, NULL);
}

static void
on_resume(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;

	(void)fd;
	(void)what;
	assert(w->magic == WORKER_MAGIC);
	if (!w->draining)
		listeners_start(w);
}

static void
on_accept(evutil_socket_t lfd, short what, void *arg)
{
	struct listener *l = arg;
	struct worker *w;

	(void)what;
	assert(l->magic == LISTENER_MAGIC);
	w = l->w;
	for (int i = 0; i < ACCEPT_BURST && !w->draining; i++) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		int fd = accept4((int)lfd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			switch (errno) {
			case EAGAIN:
#if EWOULDBLOCK != EAGAIN
			case EWOULDBLOCK:
#endif
				return;		/* another worker was quicker, or done */
			case EINTR:
			case ECONNABORTED:
			case EPROTO:
			case EPERM:		/* a firewall said no */
				continue;
			case EMFILE:
			case ENFILE:
			case ENOBUFS:
			case ENOMEM: {
				struct timeval tv = { ACCEPT_PAUSE_MS / 1000, (ACCEPT_PAUSE_MS % 1000) * 1000 };
				log_error("front", "worker %u: accept: %s; pausing accepts for %d ms",
				    w->slot, strerror(errno), ACCEPT_PAUSE_MS);
				listeners_stop(w, 0);
				evtimer_add(w->resume_ev, &tv);
				return;
			}
			default:
				log_error("front", "worker %u: accept: %s", w->slot, strerror(errno));
				return;
			}
		}
		metrics_self()->conns_accepted++;
		/* fd is the stream's from here, whatever the outcome */
		(void)stream_accept(w, fd, (struct sockaddr *)&ss, len);
	}
}

/* ---- drain ---------------------------------------------------------------- */

static void
on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;

	(void)fd;
	(void)what;
	assert(w->magic == WORKER_MAGIC);
	log_warn("front", "worker %u (generation %u): drain deadline reached with %u "
	    "connections open; closing them", w->slot, w->generation, w->conns);
	drained(w);
}

void
worker_drain(struct worker *w, uint64_t deadline_ms, const char *why)
{
	uint64_t now = proc_now_ms(), left;
	struct timeval tv;

	assert(w->magic == WORKER_MAGIC);
	if (w->drained_done || (w->draining && deadline_ms >= w->deadline_ms))
		return;			/* done, or an earlier deadline stands */
	if (!w->draining)
		log_info("front", "worker %u (generation %u): draining (%s), %u connections open",
		    w->slot, w->generation, why, w->conns);
	w->draining = 1;
	w->deadline_ms = deadline_ms;
	listeners_stop(w, 1);
	evtimer_del(w->resume_ev);
	admin_free(w->admin);		/* the next generation answers it */
	w->admin = NULL;
	stream_drain_idle(w);
	if (w->conns == 0) {
		drained(w);
		return;
	}
	left = deadline_ms > now ? deadline_ms - now : 0;
	tv.tv_sec = (time_t)(left / 1000u);
	tv.tv_usec = (suseconds_t)((left % 1000u) * 1000u);
	evtimer_add(w->deadline_ev, &tv);
}

/* ---- the worker object ------------------------------------------------------- */

struct worker *
worker_new(struct event_base *base, const struct worker_params *p, char *err, size_t errlen)
{
	struct worker *w = NULL;
	int kcd_fd = p->kcd_fd;
	unsigned i;

	/* every descriptor in p is ours from here: owned by w or closed below */
	if ((w = calloc(1, sizeof(*w))) == NULL) {
		snprintf(err, errlen, "out of memory");
		goto fail_fds;
	}
	w->magic = WORKER_MAGIC;
	w->base = base;
	w->cfg = p->cfg;
	w->slot = p->slot;
	w->generation = p->generation;
	w->drained = p->drained;
	w->drained_arg = p->drained_arg;
	w->admin_fd = p->admin_fd;
	memcpy(w->ticket_keys, p->ticket_keys, sizeof(w->ticket_keys));
	w->n_listen = p->n_listen;
	for (i = 0; i < p->n_listen; i++) {
		w->ls[i].magic = LISTENER_MAGIC;
		w->ls[i].w = w;
		w->ls[i].fd = p->listen_fd[i];
	}
	/* kcd answers TIMEOUT itself after at most the wait bound plus one
	 * kdc_timeout for the exchange (s4u.h, Timeouts): wait for that, so
	 * kcd never runs an exchange for a device we already answered */
	if ((w->kcd = kcd_client_new(w->base, -1,
	    (S4U_QUEUE_FACTOR + 1) * w->cfg->kerberos.kdc_timeout + KCD_MARGIN_MS)) == NULL) {
		snprintf(err, errlen, "cannot set up the kcd client");
		goto fail;
	}
	if (kcd_fd >= 0) {
		int fd = kcd_fd;

		kcd_fd = -1;
		if (kcd_client_set_channel(w->kcd, fd) != 0)	/* takes fd */
			log_error("front", "worker %u: cannot use the channel to kcd", w->slot);
	}
	for (i = 0; i < w->n_listen; i++)
		if ((w->ls[i].ev = event_new(w->base, w->ls[i].fd, EV_READ | EV_PERSIST,
		    on_accept, &w->ls[i])) == NULL) {
			snprintf(err, errlen, "cannot watch the listening sockets");
			goto fail;
		}
	if ((w->resume_ev = evtimer_new(w->base, on_resume, w)) == NULL ||
	    (w->deadline_ev = evtimer_new(w->base, on_deadline, w)) == NULL ||
	    (w->drained_ev = evtimer_new(w->base, on_drained, w)) == NULL) {
		snprintf(err, errlen, "cannot set up the event loop");
		goto fail;
	}
	/* what may need root: device lists, TLS material, backend pools */
	if ((w->policy = policy_new(w->cfg, w->base, p->hooks, err, errlen)) == NULL)
		goto fail;
	if (front_load_tls(w, err, errlen) != 0)
		goto fail;
	return w;
fail:
	if (kcd_fd >= 0)
		close(kcd_fd);
	worker_free(w);
	return NULL;
fail_fds:
	if (kcd_fd >= 0)
		close(kcd_fd);
	for (i = 0; i < p->n_listen; i++)
		close(p->listen_fd[i]);
	if (p->admin_fd >= 0)
		close(p->admin_fd);
	return NULL;
}

void
worker_start(struct worker *w)
{
	assert(w->magic == WORKER_MAGIC);
	listeners_start(w);
	if (w->admin_fd >= 0) {
		int fd = w->admin_fd;

		w->admin_fd = -1;
		if ((w->admin = admin_new(w->base, fd)) == NULL)	/* takes fd */
			log_error("front", "worker %u: cannot serve admin_listen", w->slot);
	}
}

void
worker_free(struct worker *w)
{
	if (w == NULL)
		return;
	assert(w->magic == WORKER_MAGIC);
	for (unsigned i = 0; i < w->n_listen; i++) {
		if (w->ls[i].ev != NULL)
			event_free(w->ls[i].ev);
		if (w->ls[i].fd >= 0)
			close(w->ls[i].fd);
	}
	admin_free(w->admin);
	if (w->admin_fd >= 0)
		close(w->admin_fd);
	stream_shutdown(w);		/* every stream left, then their environment */
	policy_free(w->policy);		/* after the streams: they cancel their calls */
	kcd_client_free(w->kcd);
	if (w->resume_ev != NULL)
		event_free(w->resume_ev);
	if (w->deadline_ev != NULL)
		event_free(w->deadline_ev);
	if (w->drained_ev != NULL)
		event_free(w->drained_ev);
	explicit_bzero(w->ticket_keys, sizeof(w->ticket_keys));
	w->magic = 0;
	free(w);
}

/* ---- the daemon's worker process ---------------------------------------------- */

static void
on_term(evutil_socket_t sig, short what, void *arg)
{
	struct wproc *wp = arg;

	(void)sig;
	(void)what;
	assert(wp->magic == WPROC_MAGIC);
	worker_drain(wp->w, proc_now_ms() + wp->w->cfg->server.shutdown_timeout,
	    "SIGTERM: the parent is gone or asked so");
}

static void
on_ctl_msg(struct ipc_chan *ch, const struct ipc_msg *msg, void *arg)
{
	struct wproc *wp = arg;
	struct worker *w = wp->w;
	struct ipc_rd rd;
	uint64_t deadline;

	(void)ch;
	assert(wp->magic == WPROC_MAGIC);
	ipc_rd_init(&rd, msg->data, msg->len);
	switch (msg->type) {
	case IPC_SHUTDOWN:
		deadline = ipc_get_u64(&rd);
		if (ipc_rd_done(&rd) != 0 || msg->fd >= 0)
			goto bad;
		worker_drain(w, deadline, "shutdown requested by the parent");
		return;
	case IPC_LOG_REOPEN:
		if (ipc_rd_done(&rd) != 0)
			goto bad;
		if (msg->fd >= 0)
			(void)log_reopen_fd(msg->fd);	/* takes the fd */
		else
			(void)log_reopen();
		return;
	case IPC_ACCESS_LOG_REOPEN:
		if (ipc_rd_done(&rd) != 0 || msg->fd < 0)
			goto bad;
		/* the parent opened it: we cannot (root-owned file, we are
		 * unprivileged); takes the fd, flushes into the old file first */
		access_log_reopen_fd(msg->fd);
		log_debug("front", "worker %u: access log reopened", w->slot);
		return;
	case IPC_KCD_CHANNEL:
		if (ipc_rd_done(&rd) != 0 || msg->fd < 0)
			goto bad;
		/* kcd was restarted; takes the fd */
		if (kcd_client_set_channel(w->kcd, msg->fd) != 0)
			log_error("front", "worker %u: cannot use the new channel to kcd", w->slot);
		else
			log_info("front", "worker %u: new channel to kcd", w->slot);
		return;
	default:
		break;
	}
bad:
	log_error("front", "worker %u: ignored a malformed or unexpected %s (%zu bytes) from the parent",
	    w->slot, ipc_type_name(msg->type), msg->len);
	if (msg->fd >= 0)
		close(msg->fd);
}

static void
on_ctl_close(struct ipc_chan *ch, const char *why, void *arg)
{
	struct wproc *wp = arg;
	struct worker *w = wp->w;

	assert(wp->magic == WPROC_MAGIC);
	ipc_chan_free(ch);
	wp->ctl = NULL;
	if (!w->draining || strstr(why, "closed the channel") == NULL)
		log_warn("front", "worker %u: control channel: %s", w->slot, why);
	worker_drain(w, proc_now_ms() + w->cfg->server.shutdown_timeout, "the parent is gone");
}

/*
 * The worker cannot start (before READY): its error line, as it always
 * was, and the same text to the parent (IPC_START_FAILED, proc.h), which
 * names it on its "reload failed" or restart line, as it does kcd's. ctl
 * is the control channel once it exists, ctl_fd its descriptor before:
 * either way the frame is in the socket when this returns (the channel
 * does not batch), before the worker exits.
 */
static void __attribute__((format(printf, 4, 5)))
start_failed(struct ipc_chan *ctl, int ctl_fd, unsigned slot, const char *fmt, ...)
{
	char cause[PROC_CAUSE_MAX];
	struct ipc_buf b;
	va_list ap;
	int r = -1;

	va_start(ap, fmt);
	vsnprintf(cause, sizeof(cause), fmt, ap);
	va_end(ap);
	log_error("front", "worker %u: %s", slot, cause);
	ipc_buf_init(&b);
	ipc_put_str(&b, cause);
	if (!b.err && ctl != NULL)
		r = ipc_send(ctl, IPC_START_FAILED, 0, b.data, b.len, -1);
	else if (!b.err && ctl_fd >= 0)
		r = ipc_send_blocking(ctl_fd, IPC_START_FAILED, 0, b.data, b.len, -1);
	if (r != 0)
		log_debug("front", "worker %u: cannot tell the parent why start-up failed", slot);
}

int
worker_main(const struct front_args *a)
{
	struct worker_params wpar;
	struct wproc wp = { .magic = WPROC_MAGIC, .parent = a->parent };
	struct event_base *base = NULL;
	char err[512];
	int rc = 1, ctl_fd = a->ctl_fd;
	unsigned i;

	memset(&wpar, 0, sizeof(wpar));
	wpar.cfg = a->cfg;
	wpar.slot = a->slot;
	wpar.generation = a->generation;
	wpar.kcd_fd = a->kcd_fd;
	wpar.n_listen = a->n_listen;
	for (i = 0; i < a->n_listen; i++)
		wpar.listen_fd[i] = a->listen_fd[i];
	wpar.admin_fd = a->admin_fd;
	memcpy(wpar.ticket_keys, a->ticket_keys, sizeof(wpar.ticket_keys));
	if ((base = event_base_new()) == NULL) {
		start_failed(NULL, ctl_fd, a->slot, "cannot create the event loop");
		for (i = 0; i < a->n_listen; i++)
			close(a->listen_fd[i]);
		if (a->admin_fd >= 0)
			close(a->admin_fd);
		if (a->kcd_fd >= 0)
			close(a->kcd_fd);
		goto cleanup;
	}
	/* what needs root (TLS keys, device lists), then never root again;
	 * worker_new takes the descriptors in every case */
	if ((wp.w = worker_new(base, &wpar, err, sizeof(err))) == NULL) {
		start_failed(NULL, ctl_fd, a->slot, "%s", err);
		goto cleanup;
	}
	/* one access log per process, whatever the generation (stream.c
	 * writes it, front.c or the embedding layer own it) */
	if (a->cfg->log.access_log != NULL &&
	    access_log_open(a->cfg->log.access_log, a->cfg->log.access_format, 1, err,
	    sizeof(err)) != 0) {
		start_failed(NULL, ctl_fd, a->slot, "%s", err);
		goto cleanup;
	}
	wp.ctl = ipc_chan_new(base, ctl_fd, "parent", on_ctl_msg, on_ctl_close, &wp);
	ctl_fd = -1;		/* taken, even on failure */
	if (wp.ctl == NULL) {
		log_error("front", "worker %u: no control channel", a->slot);
		goto cleanup;
	}
	if ((wp.term_ev = evsignal_new(base, SIGTERM, on_term, &wp)) == NULL ||
	    evsignal_add(wp.term_ev, NULL) != 0) {
		start_failed(wp.ctl, -1, a->slot, "cannot watch SIGTERM");
		goto cleanup;
	}
	if (proc_drop_privileges(a->cfg->server.user, a->cfg->server.chroot, wp.parent,
	    err, sizeof(err)) != 0) {
		start_failed(wp.ctl, -1, a->slot, "cannot drop privileges: %s", err);
		goto cleanup;
	}

	worker_start(wp.w);
	if (ipc_send(wp.ctl, IPC_READY, 0, NULL, 0, -1) != 0)
		log_error("front", "worker %u: cannot report ready to the parent", a->slot);
	log_info("front", "worker %u (generation %u) accepting on %u sockets as uid %ld",
	    a->slot, a->generation, a->n_listen, (long)geteuid());
	event_base_dispatch(base);
	rc = 0;
cleanup:
	if (ctl_fd >= 0)
		close(ctl_fd);
	worker_free(wp.w);
	access_log_close();
	if (wp.ctl != NULL)
		ipc_chan_free(wp.ctl);
	if (wp.term_ev != NULL)
		event_free(wp.term_ev);
	if (base != NULL)
		event_base_free(base);
	wp.magic = 0;
	return rc;
}
