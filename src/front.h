/*
 * front.h — the worker process: inherited listening sockets, accept, drain.
 *
 * A worker loads what needs root (front_load_tls), drops to [server] user,
 * reports IPC_READY to the parent and runs one libevent loop. Each accepted
 * socket goes to stream_accept() (stream.h). Connections are counted through
 * front_conn_opened/front_conn_closed so that a draining worker (IPC_SHUTDOWN,
 * SIGTERM, or the parent gone) knows when it may exit: it stops accepting at
 * once and exits when the count reaches zero or at the deadline.
 */
#ifndef EKP_FRONT_H
#define EKP_FRONT_H

#include <stdint.h>

#include "config.h"

/* TLS_TICKET_KEYS_LEN (tls.h), repeated to keep OpenSSL out of this header */
#define FRONT_TICKET_KEYS_LEN	80

struct event_base;
struct kcd_client;
struct worker;

/* What the parent hands a new worker. Every fd is owned by worker_main from
 * the call on (closed on every path); cfg stays the caller's. */
struct front_args {
	const struct config *cfg;
	unsigned slot;			/* 0 .. workers-1 */
	unsigned generation;
	long parent;			/* pid of the parent, for PR_SET_PDEATHSIG */
	int ctl_fd;			/* control channel to the parent */
	int kcd_fd;			/* channel to kcd; -1 until IPC_KCD_CHANNEL */
	unsigned n_listen;
	int listen_fd[CONFIG_MAX_LISTEN];	/* cfg->server.listen[i], bound and listening */
	int admin_fd;			/* admin_listen, bound and listening; -1 none */
	unsigned char ticket_keys[FRONT_TICKET_KEYS_LEN];	/* shared by the generation */
};

/* The worker process' main; returns its exit status. */
int worker_main(const struct front_args *a);

/* Load the TLS contexts while still root (certificate, key, client_ca,
 * CRLs). The hook for tls.c: today it loads nothing. Returns 0, or -1 with
 * the cause in err (the worker then exits 1 and the parent logs it). */
int front_load_tls(struct worker *w, char *err, size_t errlen);

/* For stream.c and what it calls; w comes from stream_accept(). */
struct event_base *front_base(struct worker *w);
const struct config *front_config(const struct worker *w);
/* The asynchronous kcd stubs (kcd_client.h); never NULL. */
struct kcd_client *front_kcd(struct worker *w);
unsigned front_slot(const struct worker *w);
/* The generation's TLS ticket keys (FRONT_TICKET_KEYS_LEN bytes). */
const unsigned char *front_ticket_keys(const struct worker *w);
/* 1 once the worker is draining: finish the current request, keep nothing
 * alive, accept no new request on a keep-alive connection. */
int front_draining(const struct worker *w);
/* Count a connection in and out; the last close of a draining worker ends
 * its loop. */
void front_conn_opened(struct worker *w);
void front_conn_closed(struct worker *w);
unsigned front_conn_count(const struct worker *w);

#endif
