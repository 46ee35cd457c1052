/* pool.c — thread pool with completion on the event loop; see pool.h. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>

#include <event2/event.h>

#include "log.h"
#include "pool.h"

#define POOL_MAGIC	0x504f4f4cu	/* "POOL" */
#define POOL_MAX_THREADS 1024

struct pool {
	unsigned magic;
	struct event_base *base;
	struct event *ev;		/* EV_READ on efd */
	int efd;

	pthread_mutex_t mu;
	pthread_cond_t cv;
	int stopping;
	struct pool_job *q_head, **q_tail;	/* waiting for a thread */
	struct pool_job *d_head, **d_tail;	/* work done, done() pending */
	unsigned queued, busy;
	uint64_t completed;

	unsigned n_threads;
	pthread_t *threads;
};

static void
q_push(struct pool_job ***tail, struct pool_job *job)
{
	job->next = NULL;
	**tail = job;
	*tail = &job->next;
}

static void *
thread_main(void *arg)
{
	struct pool *p = arg;
	struct pool_job *job;
	uint64_t one = 1;

	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->stopping && p->q_head == NULL)
			pthread_cond_wait(&p->cv, &p->mu);
		if (p->stopping)
			break;
		job = p->q_head;
		p->q_head = job->next;
		if (p->q_head == NULL)
			p->q_tail = &p->q_head;
		p->queued--;
		p->busy++;
		pthread_mutex_unlock(&p->mu);

		job->work(job);

		pthread_mutex_lock(&p->mu);
		p->busy--;
		q_push(&p->d_tail, job);
		/* An eventfd counter cannot overflow at our rates; a failed
		 * write only delays delivery to the next wake-up. */
		if (write(p->efd, &one, sizeof(one)) < 0) {
			/* EAGAIN: the counter is already non-zero */
		}
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

/* Loop thread: take every finished job and call done() in order. */
static void
on_ready(evutil_socket_t fd, short what, void *arg)
{
	struct pool *p = arg;
	struct pool_job *list, *job;
	uint64_t n;

	(void)what;
	if (p == NULL || p->magic != POOL_MAGIC)
		abort();
	if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		log_error("pool", "eventfd read: %s", strerror(errno));

	pthread_mutex_lock(&p->mu);
	list = p->d_head;
	p->d_head = NULL;
	p->d_tail = &p->d_head;
	pthread_mutex_unlock(&p->mu);

	while ((job = list) != NULL) {
		list = job->next;
		job->next = NULL;
		p->completed++;
		job->done(job);
	}
}

/* Tells every thread to stop and waits for them: a thread finishes the job
 * it runs, queued jobs stay queued. Needs p->mu and p->cv initialised. */
static void
stop_threads(struct pool *p)
{
	pthread_mutex_lock(&p->mu);
	p->stopping = 1;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	for (unsigned i = 0; i < p->n_threads; i++)
		pthread_join(p->threads[i], NULL);
}

struct pool *
pool_new(struct event_base *base, unsigned nthreads, char *err, size_t errlen)
{
	struct pool *p = NULL;
	sigset_t all, old;
	int rc, mu_ok = 0, cv_ok = 0;

	if (nthreads == 0 || nthreads > POOL_MAX_THREADS) {
		snprintf(err, errlen, "thread pool size %u is not in 1..%u", nthreads, POOL_MAX_THREADS);
		return NULL;
	}
	if ((p = calloc(1, sizeof(*p))) == NULL ||
	    (p->threads = calloc(nthreads, sizeof(*p->threads))) == NULL) {
		snprintf(err, errlen, "out of memory for the thread pool");
		goto fail;
	}
	p->magic = POOL_MAGIC;
	p->base = base;
	p->efd = -1;
	p->q_tail = &p->q_head;
	p->d_tail = &p->d_head;
	if (pthread_mutex_init(&p->mu, NULL) != 0) {
		snprintf(err, errlen, "pthread_mutex_init failed");
		goto fail;
	}
	mu_ok = 1;
	if (pthread_cond_init(&p->cv, NULL) != 0) {
		snprintf(err, errlen, "pthread_cond_init failed");
		goto fail;
	}
	cv_ok = 1;
	if ((p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
		snprintf(err, errlen, "eventfd: %s", strerror(errno));
		goto fail;
	}
	if ((p->ev = event_new(base, p->efd, EV_READ | EV_PERSIST, on_ready, p)) == NULL ||
	    event_add(p->ev, NULL) != 0) {
		snprintf(err, errlen, "cannot add the pool's completion event");
		goto fail;
	}

	/* Threads never take a signal: the loop thread handles them. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (; p->n_threads < nthreads; p->n_threads++) {
		rc = pthread_create(&p->threads[p->n_threads], NULL, thread_main, p);
		if (rc != 0) {
			pthread_sigmask(SIG_SETMASK, &old, NULL);
			snprintf(err, errlen, "pthread_create (thread %u of %u): %s",
			    p->n_threads + 1, nthreads, strerror(rc));
			goto fail;
		}
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return p;

fail:
	if (p != NULL) {
		if (p->n_threads > 0)
			stop_threads(p);
		if (p->ev != NULL)
			event_free(p->ev);
		if (p->efd >= 0)
			close(p->efd);
		if (cv_ok)
			pthread_cond_destroy(&p->cv);
		if (mu_ok)
			pthread_mutex_destroy(&p->mu);
		free(p->threads);
		free(p);
	}
	return NULL;
}

int
pool_submit(struct pool *p, struct pool_job *job)
{
	pthread_mutex_lock(&p->mu);
	if (p->stopping) {
		pthread_mutex_unlock(&p->mu);
		return -1;
	}
	q_push(&p->q_tail, job);
	p->queued++;
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->mu);
	return 0;
}

void
pool_free(struct pool *p)
{
	struct pool_job *job;

	if (p == NULL)
		return;
	stop_threads(p);

	/* No thread left: the lists are ours. */
	while ((job = p->q_head) != NULL) {
		p->q_head = job->next;
		job->next = NULL;
		job->drop(job, 0);
	}
	while ((job = p->d_head) != NULL) {
		p->d_head = job->next;
		job->next = NULL;
		job->drop(job, 1);
	}
	event_free(p->ev);
	close(p->efd);
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->mu);
	free(p->threads);
	p->magic = 0;
	free(p);
}

void
pool_stats(struct pool *p, struct pool_stats *st)
{
	pthread_mutex_lock(&p->mu);
	st->threads = p->n_threads;
	st->queued = p->queued;
	st->busy = p->busy;
	st->completed = p->completed;
	pthread_mutex_unlock(&p->mu);
}
