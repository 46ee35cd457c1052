/*
 * front.h — the worker: listening sockets, accept, drain.
 *
 * A worker is an object on an event loop (worker_new): its listening
 * sockets, its channel to kcd, what every stream shares (stream.h) and the
 * device policy (policy.h). Two programs run it:
 *
 *   - the daemon's worker process (worker_main): it loads what needs root
 *     (worker_new), drops to [server] user, reports IPC_READY to the parent
 *     and runs the loop until drained (IPC_SHUTDOWN, SIGTERM, or the
 *     parent gone);
 *   - the embedding library (embed.c), on the caller's event loop, one
 *     worker per generation.
 *
 * Each accepted socket goes to stream_accept() (stream.h). Connections are
 * counted through front_conn_opened/front_conn_closed so that a draining
 * worker knows when it is done: it stops accepting at once and is drained
 * when the count reaches zero or at the deadline.
 */
#ifndef EKP_FRONT_H
#define EKP_FRONT_H

#include <stdint.h>

#include "config.h"

/* TLS_TICKET_KEYS_LEN (tls.h), repeated to keep OpenSSL out of this header */
#define FRONT_TICKET_KEYS_LEN	80

struct event_base;
struct kcd_client;
struct policy;
struct policy_hooks;
struct senv;
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

/* The worker is drained (no connection left, or the deadline passed).
 * Called from an event of its own, never from inside stream code: w may be
 * freed here. */
typedef void worker_drained_fn(struct worker *w, void *arg);

/* What a worker is made of. Every fd is owned by worker_new from the call
 * on (closed on every path); cfg and hooks stay the caller's and must
 * outlive the worker. */
struct worker_params {
	const struct config *cfg;
	unsigned slot;			/* 0 .. workers-1 (logs, metrics) */
	unsigned generation;
	int kcd_fd;			/* channel to kcd; -1 until kcd_client_set_channel */
	unsigned n_listen;
	int listen_fd[CONFIG_MAX_LISTEN];	/* bound and listening */
	int admin_fd;			/* admin_listen, bound and listening; -1 none */
	unsigned char ticket_keys[FRONT_TICKET_KEYS_LEN];	/* shared by the generation */
	struct policy_hooks *hooks;	/* the embedding program's; NULL none */
	worker_drained_fn *drained;	/* NULL: end base's loop when drained */
	void *drained_arg;
};

/* A worker on base with everything loaded that may need root: TLS
 * contexts, backend pools, device lists. It does not accept yet. NULL with
 * the cause in err. */
struct worker *worker_new(struct event_base *base, const struct worker_params *p,
    char *err, size_t errlen);
/* Start accepting (and serving admin_listen). */
void worker_start(struct worker *w);
/* Stop accepting and close keep-alive connections between requests; the
 * others finish their request. drained runs when the last one closed, or
 * at deadline_ms (CLOCK_MONOTONIC, proc_now_ms) at the latest. An earlier
 * deadline replaces a later one. */
void worker_drain(struct worker *w, uint64_t deadline_ms, const char *why);
/* Close every connection left (reason shutdown, each logged) and free w. */
void worker_free(struct worker *w);

/* Load the TLS contexts while still root (certificate, key, client_ca,
 * CRLs). Called by worker_new. Returns 0, or -1 with the cause in err. */
int front_load_tls(struct worker *w, char *err, size_t errlen);

/* For stream.c and what it calls; w comes from stream_accept(). */
struct event_base *front_base(struct worker *w);
const struct config *front_config(const struct worker *w);
/* The asynchronous kcd stubs (kcd_client.h); never NULL. */
struct kcd_client *front_kcd(struct worker *w);
/* Device lists and the embedding program's hooks (policy.h); never NULL. */
struct policy *front_policy(struct worker *w);
/* What this worker's streams share (stream.c keeps it here; NULL until
 * stream_env_init and after stream_shutdown). */
struct senv *front_stream_env(const struct worker *w);
void front_set_stream_env(struct worker *w, struct senv *env);
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
