/*
 * test_pool.c — pool.c: work runs on the pool's threads, done() on the
 * loop thread, every job ends in exactly one of done() or drop().
 */
#include <pthread.h>
#include <semaphore.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/event.h>

#include "pool.h"

struct tjob {
	struct pool_job job;	/* first: the tests cast back */
	pthread_t worker;
	int worked, done, dropped, dropped_after_work;
	sem_t *gate;		/* work waits on it when set */
};

static pthread_t main_thread;
static unsigned n_done, n_work_on_main, n_done_off_main;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static void
work(struct pool_job *job)
{
	struct tjob *t = (struct tjob *)job;

	if (t->gate != NULL)
		sem_wait(t->gate);
	t->worker = pthread_self();
	pthread_mutex_lock(&mu);
	if (pthread_equal(t->worker, main_thread))
		n_work_on_main++;
	pthread_mutex_unlock(&mu);
	t->worked = 1;
}

static void
done(struct pool_job *job)
{
	struct tjob *t = (struct tjob *)job;

	if (!pthread_equal(pthread_self(), main_thread))
		n_done_off_main++;
	assert_true(t->worked);
	t->done++;
	n_done++;
}

static void
drop(struct pool_job *job, int work_ran)
{
	struct tjob *t = (struct tjob *)job;

	t->dropped++;
	t->dropped_after_work = work_ran;
	assert_int_equal(work_ran, t->worked);
}

static void
init_job(struct tjob *t)
{
	memset(t, 0, sizeof(*t));
	t->job.work = work;
	t->job.done = done;
	t->job.drop = drop;
}

static void
test_work_on_threads_done_on_the_loop(void **state)
{
	struct event_base *base = event_base_new();
	struct tjob *jobs = calloc(200, sizeof(*jobs));
	struct pool_stats st;
	char err[128];
	struct pool *p;

	(void)state;
	main_thread = pthread_self();
	n_done = n_work_on_main = n_done_off_main = 0;
	assert_non_null(base);
	assert_non_null(jobs);
	assert_non_null(p = pool_new(base, 4, err, sizeof(err)));
	for (int i = 0; i < 200; i++) {
		init_job(&jobs[i]);
		assert_int_equal(pool_submit(p, &jobs[i].job), 0);
	}
	while (n_done < 200)
		assert_true(event_base_loop(base, EVLOOP_ONCE) >= 0);
	for (int i = 0; i < 200; i++) {
		assert_int_equal(jobs[i].done, 1);
		assert_int_equal(jobs[i].dropped, 0);
	}
	assert_int_equal(n_work_on_main, 0);
	assert_int_equal(n_done_off_main, 0);
	pool_stats(p, &st);
	assert_int_equal(st.threads, 4);
	assert_int_equal(st.queued, 0);
	assert_int_equal(st.busy, 0);
	assert_true(st.completed == 200);
	pool_free(p);
	event_base_free(base);
	free(jobs);
}

static void
test_free_drops_what_was_not_delivered(void **state)
{
	struct event_base *base = event_base_new();
	struct tjob jobs[6];
	struct pool_stats st;
	sem_t gate;
	char err[128];
	struct pool *p;
	int ran = 0;

	(void)state;
	main_thread = pthread_self();
	n_done = 0;
	sem_init(&gate, 0, 0);
	assert_non_null(p = pool_new(base, 1, err, sizeof(err)));
	for (int i = 0; i < 6; i++) {
		init_job(&jobs[i]);
		if (i == 0)
			jobs[i].gate = &gate;	/* holds the only thread */
		assert_int_equal(pool_submit(p, &jobs[i].job), 0);
	}
	/* job 0 is running (blocked on the gate) before the pool stops */
	do {
		pool_stats(p, &st);
	} while (st.busy == 0);
	sem_post(&gate);
	pool_free(p);		/* the loop never ran: nothing is done() */
	for (int i = 0; i < 6; i++) {
		assert_int_equal(jobs[i].done, 0);
		assert_int_equal(jobs[i].dropped, 1);
		assert_int_equal(jobs[i].dropped_after_work, jobs[i].worked);
		ran += jobs[i].worked;
	}
	assert_true(jobs[0].worked);	/* the running job was waited for */
	assert_true(ran >= 1);
	assert_int_equal(n_done, 0);
	sem_destroy(&gate);
	event_base_free(base);
}

static void
test_bad_sizes_are_refused(void **state)
{
	struct event_base *base = event_base_new();
	char err[128] = "";

	(void)state;
	assert_null(pool_new(base, 0, err, sizeof(err)));
	assert_non_null(strstr(err, "not in 1.."));
	assert_null(pool_new(base, 100000, err, sizeof(err)));
	event_base_free(base);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_work_on_threads_done_on_the_loop),
		cmocka_unit_test(test_free_drops_what_was_not_delivered),
		cmocka_unit_test(test_bad_sizes_are_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
