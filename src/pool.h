/*
 * pool.h — a fixed thread pool whose jobs finish on a libevent loop.
 *
 * kcd runs every blocking GSSAPI/krb5 call (KDC exchanges) here so its event
 * loop never waits on a KDC (SPEC §6). A job's work() runs on one of the
 * pool's threads; its done() then runs on the loop thread that owns the
 * pool's event_base, in completion order. Completion is posted through an
 * eventfd read by the loop, so the base needs no evthread locking set up.
 *
 * The job struct is the caller's (embed it in the request); the pool only
 * links it. Between pool_submit() and done() the caller must not touch it.
 */
#ifndef EKP_POOL_H
#define EKP_POOL_H

#include <stdint.h>
#include <stddef.h>

struct event_base;
struct pool;

struct pool_job {
	void (*work)(struct pool_job *job);	/* on a pool thread */
	void (*done)(struct pool_job *job);	/* on the loop thread, after work */
	/* For pool_free: a job that was queued (work not run) or finished
	 * (done not yet called) is handed to drop() instead, on the thread
	 * calling pool_free, so its owner can release what it holds. */
	void (*drop)(struct pool_job *job, int work_ran);
	struct pool_job *next;			/* the pool's */
};

/* Start nthreads threads (all signals blocked in them). Returns NULL with
 * the cause in err. */
struct pool *pool_new(struct event_base *base, unsigned nthreads, char *err, size_t errlen);

/* Queue a job; 0, or -1 when the pool is stopping (job untouched). Loop
 * thread only. */
int pool_submit(struct pool *p, struct pool_job *job);

/* Stop: threads finish the job they are running (a KDC exchange in
 * progress is waited for) and exit; every job not yet delivered goes to its
 * drop(). No done() is called from here on. */
void pool_free(struct pool *p);

struct pool_stats {
	unsigned threads;
	unsigned queued;	/* waiting for a thread */
	unsigned busy;		/* running work() */
	uint64_t completed;	/* done() calls */
};
void pool_stats(struct pool *p, struct pool_stats *st);

#endif
