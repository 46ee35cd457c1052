/*
 * test_log.c — the error log's file changes under a writing thread:
 * log_reopen (logrotate's rename, then SIGUSR1), log_reopen_fd (the
 * parent's descriptor) and log_open of another path keep the descriptor's
 * number and its close-on-exec flag, so a line written meanwhile lands
 * in the old file or the new one, and none is lost: a thread writes
 * while the main thread rotates, and every line is found exactly once.
 */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "log.h"

#define LINES		20000
#define ROTATIONS	200

struct world {
	char dir[64];
	char path[128];
};

static int
setup(void **state)
{
	struct world *w = calloc(1, sizeof(*w));

	if (w == NULL)
		return -1;
	snprintf(w->dir, sizeof(w->dir), "/tmp/ekp-test-log-XXXXXX");
	if (mkdtemp(w->dir) == NULL)
		return -1;
	snprintf(w->path, sizeof(w->path), "%s/error.log", w->dir);
	*state = w;
	return 0;
}

static int
teardown(void **state)
{
	struct world *w = *state;
	DIR *d = opendir(w->dir);
	struct dirent *e;
	char p[PATH_MAX];

	log_close();
	while (d != NULL && (e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(p, sizeof(p), "%s/%s", w->dir, e->d_name);
		unlink(p);
	}
	if (d != NULL)
		closedir(d);
	rmdir(w->dir);
	free(w);
	return 0;
}

/* The one descriptor of this process open on path (-1 if none, -2 if
 * more than one). */
static int
fd_on(const char *path)
{
	struct stat want, st;
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int found = -1;

	if (stat(path, &want) != 0 || d == NULL) {
		if (d != NULL)
			closedir(d);
		return -1;
	}
	while ((e = readdir(d)) != NULL) {
		int fd = atoi(e->d_name);

		if (e->d_name[0] == '.' || fd == dirfd(d) || fstat(fd, &st) != 0)
			continue;
		if (st.st_dev == want.st_dev && st.st_ino == want.st_ino)
			found = found == -1 ? fd : -2;
	}
	closedir(d);
	return found;
}

static void
test_the_descriptor_is_replaced_in_place(void **state)
{
	struct world *w = *state;
	char err[256], other[160], moved[160];
	int fd, nfd;

	snprintf(other, sizeof(other), "%s/other.log", w->dir);
	snprintf(moved, sizeof(moved), "%s.1", w->path);
	assert_int_equal(log_open(w->path, LOG_LVL_INFO, err, sizeof(err)), 0);
	fd = fd_on(w->path);
	assert_true(fd > 2);
	/* logrotate: rename, then reopen */
	assert_int_equal(rename(w->path, moved), 0);
	assert_int_equal(log_reopen(), 0);
	assert_int_equal(fd_on(w->path), fd);
	assert_int_equal(fd_on(moved), -1);		/* the old file is closed */
	assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	/* another path */
	assert_int_equal(log_open(other, LOG_LVL_INFO, err, sizeof(err)), 0);
	assert_int_equal(fd_on(other), fd);
	assert_int_equal(fd_on(w->path), -1);
	assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	/* a descriptor handed over (the parent's, to a worker), without
	 * close-on-exec: it takes the same number, with the flag */
	assert_true((nfd = open(w->path, O_WRONLY | O_APPEND)) > 2);
	assert_int_equal(log_reopen_fd(nfd), 0);
	assert_int_equal(fd_on(w->path), fd);
	assert_int_equal(fd_on(other), -1);
	assert_int_equal(fcntl(nfd, F_GETFD), -1);	/* taken over and closed */
	assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	log_info("test", "still writing");
	/* to stderr and back: nothing of ours left open, then a new file */
	assert_int_equal(log_open("stderr", LOG_LVL_INFO, err, sizeof(err)), 0);
	assert_int_equal(fd_on(w->path), -1);
	assert_int_equal(log_open(w->path, LOG_LVL_INFO, err, sizeof(err)), 0);
	assert_true(fd_on(w->path) > 2);
}

static void *
writer(void *arg)
{
	(void)arg;
	for (int i = 0; i < LINES; i++)
		log_info("test", "line %d", i);
	return NULL;
}

/* Each "line N" of the files in dir counted in seen[N]. */
static void
count_lines(const char *dir, unsigned char *seen)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char p[PATH_MAX], buf[512];

	assert_non_null(d);
	while ((e = readdir(d)) != NULL) {
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
		assert_non_null(f = fopen(p, "r"));
		while (fgets(buf, sizeof(buf), f) != NULL) {
			const char *l = strstr(buf, "test: line ");
			int n;

			if (l != NULL && sscanf(l, "test: line %d", &n) == 1 && n >= 0 && n < LINES &&
			    seen[n] < 255)
				seen[n]++;
		}
		fclose(f);
	}
	closedir(d);
}

static void
test_no_line_is_lost_while_the_file_changes(void **state)
{
	struct world *w = *state;
	unsigned char *seen = calloc(LINES, 1);
	char err[256], moved[160];
	pthread_t th;

	assert_non_null(seen);
	assert_int_equal(log_open(w->path, LOG_LVL_INFO, err, sizeof(err)), 0);
	assert_int_equal(pthread_create(&th, NULL, writer, NULL), 0);
	for (int i = 0; i < ROTATIONS; i++) {
		snprintf(moved, sizeof(moved), "%s.%d", w->path, i);
		assert_int_equal(rename(w->path, moved), 0);
		if (i % 2 == 0)
			assert_int_equal(log_reopen(), 0);
		else
			assert_int_equal(log_open(w->path, LOG_LVL_INFO, err, sizeof(err)), 0);
	}
	assert_int_equal(pthread_join(th, NULL), 0);
	count_lines(w->dir, seen);
	for (int i = 0; i < LINES; i++)
		if (seen[i] != 1)
			fail_msg("line %d found %u times", i, seen[i]);
	free(seen);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_the_descriptor_is_replaced_in_place, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_no_line_is_lost_while_the_file_changes, setup,
		    teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
