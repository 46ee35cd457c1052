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

/* What the parent hands kcd. ctl_fd is owned by kcd_main from the call on;
 * cfg stays the caller's. */
struct kcd_args {
	const struct config *cfg;
	unsigned generation;
	long parent;		/* pid of the parent, for PR_SET_PDEATHSIG */
	int ctl_fd;		/* control channel to the parent */
	unsigned n_workers;	/* valid slots for IPC_WORKER_CHANNEL */
};

/* The kcd process' main; returns its exit status. */
int kcd_main(const struct kcd_args *a);

#endif
