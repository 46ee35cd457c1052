/*
 * front.c — the worker process: accept on the inherited listening sockets,
 * hand each connection to stream.c, drain on request; see front.h.
 *
 * Start-up order matters: everything that needs root is loaded first
 * (front_load_tls), then privileges are dropped for good, and only then
 * does the worker accept a single connection.
 */
#include <assert.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include <event2/event.h>

#include "front.h"
#include "ipc.h"
#include "kcd_client.h"
#include "log.h"
#include "metrics.h"
#include "proc.h"
#include "admin.h"
#include "stream.h"

#define WORKER_MAGIC	0x574b5231u	/* "WKR1" */
#define LISTENER_MAGIC	0x4c53544eu	/* "LSTN" */
#define ACCEPT_BURST	64		/* accepts per wake-up, then let the loop breathe */
#define ACCEPT_PAUSE_MS	1000		/* out of descriptors: stop accepting this long */
#define KCD_MARGIN_MS	1000		/* over kdc_timeout, for the kcd round trip */

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
	long parent;
	struct ipc_chan *ctl;		/* NULL once the parent is gone */
	struct kcd_client *kcd;
	unsigned n_listen;
	struct listener ls[CONFIG_MAX_LISTEN];
	struct event *resume_ev;	/* accepts paused after EMFILE */
	struct event *term_ev;		/* SIGTERM (also the parent-death signal) */
	struct event *deadline_ev;	/* drain deadline */
	struct admin *admin;		/* /metrics /healthz /readyz; NULL none */
	unsigned char ticket_keys[FRONT_TICKET_KEYS_LEN];
	unsigned conns;
	int draining;
	uint64_t deadline_ms;
};

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

void
front_conn_closed(struct worker *w)
{
	assert(w->magic == WORKER_MAGIC);
	assert(w->conns > 0);
	w->conns--;
	metrics_self()->conns_open--;
	if (w->draining && w->conns == 0) {
		log_info("front", "worker %u: last connection closed; exiting", w->slot);
		event_base_loopexit(w->base, NULL);
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
	log_warn("front", "worker %u: drain deadline reached with %u connections open; exiting",
	    w->slot, w->conns);
	event_base_loopexit(w->base, NULL);
}

/* Stop accepting and exit once the last connection is gone, or at
 * deadline_ms (CLOCK_MONOTONIC) at the latest. */
static void
start_drain(struct worker *w, uint64_t deadline_ms, const char *why)
{
	uint64_t now = proc_now_ms(), left;
	struct timeval tv;

	if (w->draining && deadline_ms >= w->deadline_ms)
		return;			/* an earlier deadline stands */
	if (!w->draining)
		log_info("front", "worker %u: draining (%s), %u connections open", w->slot, why, w->conns);
	w->draining = 1;
	w->deadline_ms = deadline_ms;
	listeners_stop(w, 1);
	evtimer_del(w->resume_ev);
	admin_free(w->admin);		/* the next generation answers it */
	w->admin = NULL;
	stream_drain_idle();
	if (w->conns == 0) {
		event_base_loopexit(w->base, NULL);
		return;
	}
	left = deadline_ms > now ? deadline_ms - now : 0;
	tv.tv_sec = (time_t)(left / 1000u);
	tv.tv_usec = (suseconds_t)((left % 1000u) * 1000u);
	evtimer_add(w->deadline_ev, &tv);
}

static void
on_term(evutil_socket_t sig, short what, void *arg)
{
	struct worker *w = arg;

	(void)sig;
	(void)what;
	assert(w->magic == WORKER_MAGIC);
	start_drain(w, proc_now_ms() + w->cfg->server.shutdown_timeout,
	    "SIGTERM: the parent is gone or asked so");
}

/* ---- control channel from the parent ---------------------------------------- */

static void
on_ctl_msg(struct ipc_chan *ch, const struct ipc_msg *msg, void *arg)
{
	struct worker *w = arg;
	struct ipc_rd rd;
	uint64_t deadline;

	(void)ch;
	assert(w->magic == WORKER_MAGIC);
	ipc_rd_init(&rd, msg->data, msg->len);
	switch (msg->type) {
	case IPC_SHUTDOWN:
		deadline = ipc_get_u64(&rd);
		if (ipc_rd_done(&rd) != 0 || msg->fd >= 0)
			goto bad;
		start_drain(w, deadline, "shutdown requested by the parent");
		return;
	case IPC_LOG_REOPEN:
		if (ipc_rd_done(&rd) != 0)
			goto bad;
		if (msg->fd >= 0)
			(void)log_reopen_fd(msg->fd);	/* takes the fd */
		else
			(void)log_reopen();
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
	struct worker *w = arg;

	assert(w->magic == WORKER_MAGIC);
	ipc_chan_free(ch);
	w->ctl = NULL;
	if (!w->draining || strstr(why, "closed the channel") == NULL)
		log_warn("front", "worker %u: control channel: %s", w->slot, why);
	start_drain(w, proc_now_ms() + w->cfg->server.shutdown_timeout, "the parent is gone");
}

/* ---- main -------------------------------------------------------------------- */

int
worker_main(const struct front_args *a)
{
	struct worker *w = NULL;
	char err[512];
	int rc = 1, kcd_fd = a->kcd_fd, ctl_fd = a->ctl_fd, admin_fd = a->admin_fd;
	unsigned i;

	/* every descriptor in a is ours from here: owned by w or closed below */
	if ((w = calloc(1, sizeof(*w))) == NULL)
		goto cleanup;
	w->magic = WORKER_MAGIC;
	w->cfg = a->cfg;
	w->slot = a->slot;
	memcpy(w->ticket_keys, a->ticket_keys, sizeof(w->ticket_keys));
	w->generation = a->generation;
	w->parent = a->parent;
	w->n_listen = a->n_listen;
	for (i = 0; i < a->n_listen; i++) {
		w->ls[i].magic = LISTENER_MAGIC;
		w->ls[i].w = w;
		w->ls[i].fd = a->listen_fd[i];
	}
	if ((w->base = event_base_new()) == NULL) {
		log_error("front", "worker %u: cannot create the event loop", w->slot);
		goto cleanup;
	}
	w->ctl = ipc_chan_new(w->base, ctl_fd, "parent", on_ctl_msg, on_ctl_close, w);
	ctl_fd = -1;		/* taken, even on failure */
	if (w->ctl == NULL) {
		log_error("front", "worker %u: no control channel", w->slot);
		goto cleanup;
	}
	if ((w->kcd = kcd_client_new(w->base, -1,
	    w->cfg->kerberos.kdc_timeout + KCD_MARGIN_MS)) == NULL)
		goto cleanup;
	if (kcd_fd >= 0) {
		int fd = kcd_fd;

		kcd_fd = -1;
		if (kcd_client_set_channel(w->kcd, fd) != 0)	/* takes fd */
			log_error("front", "worker %u: cannot use the channel to kcd", w->slot);
	}
	for (i = 0; i < w->n_listen; i++)
		if ((w->ls[i].ev = event_new(w->base, w->ls[i].fd, EV_READ | EV_PERSIST,
		    on_accept, &w->ls[i])) == NULL)
			goto cleanup;
	if ((w->resume_ev = evtimer_new(w->base, on_resume, w)) == NULL ||
	    (w->deadline_ev = evtimer_new(w->base, on_deadline, w)) == NULL ||
	    (w->term_ev = evsignal_new(w->base, SIGTERM, on_term, w)) == NULL ||
	    evsignal_add(w->term_ev, NULL) != 0)
		goto cleanup;

	/* what needs root, then never root again */
	if (front_load_tls(w, err, sizeof(err)) != 0) {
		log_error("front", "worker %u: %s", w->slot, err);
		goto cleanup;
	}
	if (proc_drop_privileges(w->cfg->server.user, w->parent, err, sizeof(err)) != 0) {
		log_error("front", "worker %u: cannot drop privileges: %s", w->slot, err);
		goto cleanup;
	}

	listeners_start(w);
	if (admin_fd >= 0) {
		int fd = admin_fd;

		admin_fd = -1;
		if ((w->admin = admin_new(w->base, fd)) == NULL)	/* takes fd */
			log_error("front", "worker %u: cannot serve admin_listen", w->slot);
	}
	if (ipc_send(w->ctl, IPC_READY, 0, NULL, 0, -1) != 0)
		log_error("front", "worker %u: cannot report ready to the parent", w->slot);
	log_info("front", "worker %u (generation %u) accepting on %u sockets as uid %ld",
	    w->slot, w->generation, w->n_listen, (long)geteuid());
	event_base_dispatch(w->base);
	rc = 0;
cleanup:
	if (ctl_fd >= 0)
		close(ctl_fd);
	if (kcd_fd >= 0)
		close(kcd_fd);
	if (w == NULL) {
		for (i = 0; i < a->n_listen; i++)
			close(a->listen_fd[i]);
		if (admin_fd >= 0)
			close(admin_fd);
		return rc;
	}
	for (i = 0; i < w->n_listen; i++) {
		if (w->ls[i].ev != NULL)
			event_free(w->ls[i].ev);
		if (w->ls[i].fd >= 0)
			close(w->ls[i].fd);
	}
	admin_free(w->admin);
	if (admin_fd >= 0)
		close(admin_fd);
	stream_shutdown();
	kcd_client_free(w->kcd);
	if (w->ctl != NULL)
		ipc_chan_free(w->ctl);
	if (w->resume_ev != NULL)
		event_free(w->resume_ev);
	if (w->deadline_ev != NULL)
		event_free(w->deadline_ev);
	if (w->term_ev != NULL)
		event_free(w->term_ev);
	if (w->base != NULL)
		event_base_free(w->base);
	explicit_bzero(w->ticket_keys, sizeof(w->ticket_keys));
	w->magic = 0;
	free(w);
	return rc;
}
