/*
 * kcd.h — the key-holding helper process (SPEC §6, docs/architecture.md).
 *
 * kcd is the only process that opens the keytab. It stays in the user it was
 * started as, never accepts a network connection, and answers the workers'
 * requests (kcd_proto.h) over one SOCK_SEQPACKET channel per worker, handed
 * to it by the parent with IPC_WORKER_CHANNEL. Requests are dispatched by
 * type through one table; a type that is not in the table, a malformed
 * payload or a passed descriptor closes that worker's channel with the
 * reason logged (the worker gets a fresh channel only by being restarted).
 */
#ifndef EKP_KCD_H
#define EKP_KCD_H

struct config;
struct metrics_slot;

struct event_base;

/* What the parent hands kcd. ctl_fd is owned by kcd_main / kcd_run from the
 * call on (closed on every path); cfg stays the caller's and must outlive
 * the call. */
struct kcd_args {
	const struct config *cfg;
	unsigned generation;
	long parent;		/* pid of the parent (logs); 0 in a thread */
	int ctl_fd;		/* control channel to the parent (proc.c, or the
				 * embedding layer: same messages either way) */
	unsigned n_workers;	/* valid slots for IPC_WORKER_CHANNEL */
	/* where kcd publishes the proxy's TGT state for /readyz: its own
	 * metrics slot; NULL = metrics_self() (a kcd process attached to its
	 * slot). A kcd thread shares the process' slot pointer with the
	 * worker, so the embedding layer names the kcd's slot here. */
	struct metrics_slot *tgt_slot;
};

/* The kcd process' main: its own event loop, SIGTERM drains, SIGPIPE is
 * ignored. Returns its exit status. */
int kcd_main(const struct kcd_args *a);

/*
 * kcd on an event loop the caller made and runs nowhere else: the
 * embedding library's "kcd as a thread" mode, where a thread of the
 * embedding program calls this with an event_base of its own. No signal is
 * touched. Returns (0, or 1 when start-up failed) once kcd has drained:
 * after IPC_SHUTDOWN or the control channel closing, when the last worker
 * channel is gone or at the deadline. base is not freed.
 */
int kcd_run(struct event_base *base, const struct kcd_args *a);

#endif
