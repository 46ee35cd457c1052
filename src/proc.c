/*
 * proc.c — the parent: listening sockets, generations of kcd + workers,
 * supervision with back-off, signals, daemon mode; see proc.h.
 *
 * The parent is root, holds the listening sockets and never reads a byte
 * from the network. Children are forked (not exec'd): they inherit the
 * parsed config of their generation and their sockets, and forget the rest
 * of the parent's state at once (forget_parent), so no child keeps another
 * child's control channel or another generation's sockets.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <event2/event.h>

#include <openssl/rand.h>

#include "access_log.h"
#include "clock.h"
#include "config.h"
#include "front.h"
#include "ipc.h"
#include "kcd.h"
#include "log.h"
#include "metrics.h"
#include "proc.h"

#if defined(__SANITIZE_ADDRESS__)
#define EKP_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EKP_ASAN 1
#endif
#endif

#define GEN_MAGIC	0x47454e31u	/* "GEN1" */
#define CHILD_MAGIC	0x43484c44u	/* "CHLD" */
#define BACKOFF_MIN_MS	100u
#define BACKOFF_MAX_MS	10000u
#define BACKOFF_RESET_MS 60000u		/* up this long: the next crash starts over */
#define KILL_GRACE_MS	1000u		/* after a drain deadline, before SIGKILL */
/* A reload's new kcd must report READY this soon, else the reload is
 * abandoned. Its start-up reads local files only (krb5.conf, the keytab's
 * mode; the TGT comes after READY), so this is a hang, not a slow disk. */
#define KCD_READY_TIMEOUT_MS 10000u
#define LISTEN_BACKLOG	511

enum child_kind { CHILD_KCD, CHILD_WORKER };
enum gen_state { GEN_STARTING, GEN_ACTIVE, GEN_RETIRING };

struct gen;

struct child {
	unsigned magic;
	struct gen *gen;
	enum child_kind kind;
	unsigned slot;
	char name[24];			/* "kcd", "worker 3" */
	pid_t pid;			/* 0 while not running */
	struct ipc_chan *ctl;		/* NULL while not running or after a bad frame */
	int ready;
	/* why its start-up failed, from IPC_START_FAILED (proc_start_failure:
	 * bounded, no control bytes); "" none. Reset at every start. */
	char cause[PROC_CAUSE_MAX];
	int exited;			/* child_exited is reading its last words */
	int metrics_slot;		/* -1 none */
	uint64_t started_ms;
	unsigned backoff_ms;		/* 0 until the first unexpected exit */
	struct event *restart_ev;
	/* a worker slot's own listening sockets, one per cfg->server.listen
	 * address, in that address's SO_REUSEPORT group (see gen_listeners);
	 * owned, -1 none. The slot's worker gets them at every (re)start. */
	int listen_fd[CONFIG_MAX_LISTEN];
};

struct gen {
	unsigned magic;
	unsigned id;
	enum gen_state state;
	struct config *cfg;		/* owned */
	unsigned n_listen;		/* cfg->server.n_listen once gen_listeners ran */
	int admin_fd;			/* owned; -1 none. Bound for admin.c, not served yet */
	struct child kcd;
	unsigned n_workers;
	struct child *workers;
	struct event *kill_ev;		/* SIGKILL stragglers after the drain deadline */
	/* a reload's generation starts its kcd alone and its workers once kcd
	 * reported READY (gen_start): no worker accepts a device before its
	 * kcd is known to be up. start_ev bounds that wait. */
	int workers_started;
	struct event *start_ev;
	uint64_t deadline;		/* drain deadline (proc_now_ms) once retiring */
	struct gen *next;		/* older */
	/* TLS session ticket keys shared by this generation's workers, so a
	 * device resumes on whichever worker accepts it; new per generation */
	unsigned char ticket_keys[FRONT_TICKET_KEYS_LEN];
};

static struct {
	struct event_base *base;
	struct event *sig_ev[5];
	struct event *stop_ev;		/* shutdown_timeout passed: SIGKILL the rest */
	struct gen *gens;		/* newest first */
	unsigned next_gen_id;
	const char *config_path;
	char *pid_file;			/* written at start; NULL none */
	pid_t pid;
	int notify_fd;			/* -d: tells the launching process how start-up went */
	int stopping;
	struct metrics_shm *shm;
} P = { .notify_fd = -1 };

static struct ipc_buf pbuf;		/* 64 KiB: off the stack; the parent is one thread */

uint64_t
proc_now_ms(void)
{
	return clock_mono_ms();
}

static struct timeval
ms_tv(uint64_t ms)
{
	struct timeval tv;

	tv.tv_sec = (time_t)(ms / 1000u);
	tv.tv_usec = (suseconds_t)((ms % 1000u) * 1000u);
	return tv;
}

/* ---- process plumbing shared with the children ---------------------------- */

void
proc_parent_death_signal(long parent)
{
	if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0)
		log_error("proc", "PR_SET_PDEATHSIG: %s", strerror(errno));
	if (getppid() != (pid_t)parent) {
		/* the parent died before we could ask to be told */
		log_error("proc", "parent %ld is gone; exiting", parent);
		_exit(1);
	}
}

void
proc_set_title(const char *name)
{
	(void)prctl(PR_SET_NAME, name, 0, 0, 0);
}

int
proc_start_failure(const void *data, size_t len, char *buf, size_t cap)
{
	struct ipc_rd rd;
	const uint8_t *t;
	size_t n, o = 0;

	assert(cap >= 8);
	buf[0] = '\0';
	ipc_rd_init(&rd, data, len);
	n = ipc_get_bytes(&rd, &t);
	if (ipc_rd_done(&rd) != 0)
		return -1;
	for (size_t i = 0; i < n && o + 1 < cap; i++)
		buf[o++] = t[i] < 0x20 || t[i] == 0x7f ? '?' : (char)t[i];
	if (n > cap - 1) {
		/* "..." in the last three places, after whole characters
		 * only: a UTF-8 character the cut splits (its lead byte is
		 * followed by fewer bytes than it announces) goes whole */
		size_t j;
		unsigned lead, want;

		o = cap - 4;
		for (j = o; j > 0 && ((unsigned char)buf[j - 1] & 0xc0) == 0x80; j--)
			;
		if (j > 0 && (lead = (unsigned char)buf[j - 1]) >= 0xc0) {
			want = lead >= 0xf0 ? 4u : lead >= 0xe0 ? 3u : 2u;
			if (o - (j - 1) < want)
				o = j - 1;
		}
		memcpy(buf + o, "...", 3);
		o += 3;
	}
	buf[o] = '\0';
	return 0;
}

int
proc_drop_privileges(const char *user, const char *chroot_dir, long parent,
    char *err, size_t errlen)
{
	struct passwd *pw;

	if (geteuid() != 0) {
		log_info("proc", "not started as root: staying uid %ld, [server] user not used",
		    (long)geteuid());
		goto nnp;
	}
	if (user == NULL || *user == '\0') {
		snprintf(err, errlen, "no [server] user to drop privileges to");
		return -1;
	}
	errno = 0;
	if ((pw = getpwnam(user)) == NULL) {
		snprintf(err, errlen, "user '%s': %s", user, errno ? strerror(errno) : "no such user");
		return -1;
	}
	if (pw->pw_uid == 0) {
		log_warn("proc", "[server] user '%s' is root: workers keep root privileges", user);
		goto nnp;
	}
	/* [server] chroot: everything a worker needs is loaded or open by now
	 * (TLS material, resolv.conf, log fds); the user was looked up above */
	if (chroot_dir != NULL && *chroot_dir != '\0') {
		if (chroot(chroot_dir) != 0 || chdir("/") != 0) {
			snprintf(err, errlen, "chroot %s: %s", chroot_dir, strerror(errno));
			return -1;
		}
	}
	/* no supplementary groups at all: a worker reads nothing after this */
	if (setgroups(0, NULL) != 0) {
		snprintf(err, errlen, "setgroups: %s", strerror(errno));
		return -1;
	}
	if (setgid(pw->pw_gid) != 0) {
		snprintf(err, errlen, "setgid(%ld): %s", (long)pw->pw_gid, strerror(errno));
		return -1;
	}
	if (setuid(pw->pw_uid) != 0) {
		snprintf(err, errlen, "setuid(%ld): %s", (long)pw->pw_uid, strerror(errno));
		return -1;
	}
	if (getuid() != pw->pw_uid || geteuid() != pw->pw_uid ||
	    getgid() != pw->pw_gid || getegid() != pw->pw_gid) {
		snprintf(err, errlen, "privilege drop to '%s' did not take: uid %ld/%ld gid %ld/%ld",
		    user, (long)getuid(), (long)geteuid(), (long)getgid(), (long)getegid());
		return -1;
	}
	if (setuid(0) == 0 || seteuid(0) == 0 || setgid(0) == 0) {
		snprintf(err, errlen, "privilege drop to '%s' is reversible: root could be regained", user);
		return -1;
	}
	/* changing credentials cleared PR_SET_PDEATHSIG: ask again */
	proc_parent_death_signal(parent);
#ifdef EKP_ASAN
	/*
	 * setuid() made the process non-dumpable. LeakSanitizer stops the
	 * process at exit with a ptrace-attached helper and reads /proc/self;
	 * a non-dumpable process can only be attached with CAP_SYS_PTRACE, so
	 * depending on the kernel's ptrace policy the leak check would end in
	 * "LeakSanitizer has encountered a fatal error" instead of a report.
	 * Only in sanitizer builds: a release worker stays non-dumpable (no
	 * core file, no /proc/PID/mem with TLS keys for other processes).
	 */
	(void)prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
#endif
nnp:
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
		snprintf(err, errlen, "PR_SET_NO_NEW_PRIVS: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/* ---- listening sockets ----------------------------------------------------- */

static void
addr_str(const struct config_addr *a, char *buf, size_t len)
{
	if (strchr(a->host, ':') != NULL)
		snprintf(buf, len, "[%s]:%u", a->host, a->port);
	else
		snprintf(buf, len, "%s:%u", a->host, a->port);
}

int
proc_addr_equal(const struct config_addr *a, const struct config_addr *b)
{
	if (!a->is_numeric || !b->is_numeric || a->ss.ss_family != b->ss.ss_family)
		return 0;
	if (a->ss.ss_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)&a->ss, *y = (const void *)&b->ss;
		return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	if (a->ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *x = (const void *)&a->ss, *y = (const void *)&b->ss;
		return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
		    memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
	}
	return 0;
}

/* A listening socket on a; with reuseport, a member of a's SO_REUSEPORT
 * group, where the kernel spreads new connections over the members by a
 * hash of the peer's address and port. */
static int
listen_socket(const struct config_addr *a, int reuseport, char *err, size_t errlen)
{
	char as[300];
	int fd = -1, one = 1;

	addr_str(a, as, sizeof(as));
	if (!a->is_numeric) {
		snprintf(err, errlen, "cannot listen on %s: not an IP address", as);
		return -1;
	}
	if ((fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0) {
		snprintf(err, errlen, "cannot listen on %s: socket: %s", as, strerror(errno));
		return -1;
	}
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) {
		snprintf(err, errlen, "cannot listen on %s: SO_REUSEADDR: %s", as, strerror(errno));
		goto fail;
	}
	if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
		snprintf(err, errlen, "cannot listen on %s: SO_REUSEPORT: %s", as, strerror(errno));
		goto fail;
	}
	if (a->ss.ss_family == AF_INET6 &&
	    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0) {
		snprintf(err, errlen, "cannot listen on %s: IPV6_V6ONLY: %s", as, strerror(errno));
		goto fail;
	}
	if (bind(fd, (const struct sockaddr *)&a->ss, a->sslen) != 0) {
		snprintf(err, errlen, "cannot listen on %s: bind: %s", as, strerror(errno));
		goto fail;
	}
	if (listen(fd, LISTEN_BACKLOG) != 0) {
		snprintf(err, errlen, "cannot listen on %s: listen: %s", as, strerror(errno));
		goto fail;
	}
	return fd;
fail:
	close(fd);
	return -1;
}

int
proc_listen_socket(const struct config_addr *a, char *err, size_t errlen)
{
	return listen_socket(a, 0, err, errlen);
}

/* Is a free? A bind without SO_REUSEPORT fails with EADDRINUSE while anyone
 * listens there, also a SO_REUSEPORT group of another process of the same
 * user (root), which a reuseport bind would silently join: a second
 * instance started on our address fails as it always did. */
static int
address_free(const struct config_addr *a, char *err, size_t errlen)
{
	int fd = listen_socket(a, 0, err, errlen);

	if (fd < 0)
		return -1;
	close(fd);
	return 0;
}

/* prev's socket for address a in worker slot `slot`, -1 none. */
static int
prev_slot_fd(const struct gen *prev, const struct config_addr *a, unsigned slot)
{
	if (prev == NULL || slot >= prev->n_workers)
		return -1;
	for (unsigned j = 0; j < prev->n_listen; j++)
		if (prev->workers[slot].listen_fd[j] >= 0 &&
		    proc_addr_equal(a, &prev->cfg->server.listen[j]))
			return prev->workers[slot].listen_fd[j];
	return -1;
}

/* prev's plain (non-reuseport) admin socket when it is bound to a, -1 none. */
static int
prev_admin_fd(const struct gen *prev, const struct config_addr *a)
{
	if (prev == NULL || prev->admin_fd < 0 || !prev->cfg->server.has_admin ||
	    !proc_addr_equal(a, &prev->cfg->server.admin_listen))
		return -1;
	return prev->admin_fd;
}

static int
dup_kept(int have, char *err, size_t errlen)
{
	int fd;

	if ((fd = fcntl(have, F_DUPFD_CLOEXEC, 0)) < 0)
		snprintf(err, errlen, "cannot keep a listening socket: dup: %s", strerror(errno));
	return fd;
}

/* The sockets of listen address i for every worker slot of g. Each slot
 * has a socket of its own in the address's SO_REUSEPORT group, so the
 * kernel wakes one worker per connection and spreads connections evenly
 * (one shared socket woke every worker, and whoever was idle first took
 * the connection: one worker served most of them). A slot prev has too
 * keeps prev's socket (a dup: the same socket, nothing in its backlog is
 * lost across a reload); a new slot joins the group with a new socket. An
 * address that was prev's admin socket (plain, no group to join) is shared
 * by every slot, as one socket. */
static int
address_listeners(struct gen *g, unsigned i, const struct gen *prev, char *err, size_t errlen)
{
	const struct config_addr *a = &g->cfg->server.listen[i];
	int in_group = 0, shared = -1;

	for (unsigned k = 0; prev != NULL && k < prev->n_workers && !in_group; k++)
		in_group = prev_slot_fd(prev, a, k) >= 0;
	if (!in_group) {
		shared = prev_admin_fd(prev, a);
		if (shared < 0 && address_free(a, err, errlen) != 0)
			return -1;
	}
	for (unsigned k = 0; k < g->n_workers; k++) {
		int have = shared >= 0 ? shared : prev_slot_fd(prev, a, k);
		int fd = have >= 0 ? dup_kept(have, err, errlen) : listen_socket(a, 1, err, errlen);

		if (fd < 0)
			return -1;
		g->workers[k].listen_fd[i] = fd;
	}
	return 0;
}

/* The admin socket: a dup of prev's when prev listens there already (its
 * admin socket, or a listen address's group: slot 0's member), else new. */
static int
admin_listener(const struct config_addr *a, const struct gen *prev, char *err, size_t errlen)
{
	int have = prev_admin_fd(prev, a);

	for (unsigned k = 0; prev != NULL && k < prev->n_workers && have < 0; k++)
		have = prev_slot_fd(prev, a, k);
	return have >= 0 ? dup_kept(have, err, errlen) : proc_listen_socket(a, err, errlen);
}

static int
gen_listeners(struct gen *g, const struct gen *prev, char *err, size_t errlen)
{
	const struct config *cfg = g->cfg;

	g->n_listen = cfg->server.n_listen;	/* unset sockets are -1: gen_free copes */
	for (unsigned i = 0; i < cfg->server.n_listen; i++)
		if (address_listeners(g, i, prev, err, errlen) != 0)
			return -1;
	if (cfg->server.has_admin &&
	    (g->admin_fd = admin_listener(&cfg->server.admin_listen, prev, err, errlen)) < 0)
		return -1;
	return 0;
}

/* ---- generations ------------------------------------------------------------ */

static void child_init(struct child *c, struct gen *g, enum child_kind kind, unsigned slot);
static void gen_close_listeners(struct gen *g);

/* Children of a generation by index: 0 is kcd, 1..n_workers the workers. */
static unsigned
gen_nchildren(const struct gen *g)
{
	return 1 + g->n_workers;
}

static struct child *
gen_child(struct gen *g, unsigned i)
{
	return i == 0 ? &g->kcd : &g->workers[i - 1];
}

static struct gen *
gen_new(struct config *cfg)
{
	struct gen *g = calloc(1, sizeof(*g));

	if (g == NULL)
		return NULL;
	g->magic = GEN_MAGIC;
	g->id = ++P.next_gen_id;
	g->state = GEN_STARTING;
	g->admin_fd = -1;
	g->n_workers = cfg->server.workers;
	if ((g->workers = calloc(g->n_workers ? g->n_workers : 1, sizeof(*g->workers))) == NULL) {
		free(g);
		return NULL;
	}
	if (RAND_bytes(g->ticket_keys, sizeof(g->ticket_keys)) != 1) {
		free(g->workers);
		free(g);
		return NULL;
	}
	g->cfg = cfg;		/* owned from here on */
	child_init(&g->kcd, g, CHILD_KCD, 0);
	for (unsigned i = 0; i < g->n_workers; i++)
		child_init(&g->workers[i], g, CHILD_WORKER, i);
	return g;
}

/* Release everything of g in this process. Children are neither signalled
 * nor reaped here; the caller made sure none is running (or is a child
 * forgetting its parent's state). */
static void
gen_free(struct gen *g)
{
	if (g == NULL)
		return;
	assert(g->magic == GEN_MAGIC);
	OPENSSL_cleanse(g->ticket_keys, sizeof(g->ticket_keys));
	for (unsigned i = 0; i < gen_nchildren(g); i++) {
		struct child *c = gen_child(g, i);
		if (c->ctl != NULL)
			ipc_chan_free(c->ctl);
		if (c->restart_ev != NULL)
			event_free(c->restart_ev);
		c->magic = 0;
	}
	if (g->kill_ev != NULL)
		event_free(g->kill_ev);
	if (g->start_ev != NULL)
		event_free(g->start_ev);
	gen_close_listeners(g);
	config_free(g->cfg);
	free(g->workers);
	g->magic = 0;
	free(g);
}

/* Close the parent's copies of g's listening sockets. Once the workers have
 * closed theirs (they do as they start draining), a socket is gone and new
 * connections are refused at once, so a load balancer fails over instead of
 * queueing them in a backlog that nobody accepts from any more. */
static void
gen_close_listeners(struct gen *g)
{
	for (unsigned k = 0; k < g->n_workers; k++)
		for (unsigned i = 0; i < g->n_listen; i++) {
			int *fd = &g->workers[k].listen_fd[i];
			if (*fd >= 0)
				close(*fd);
			*fd = -1;
		}
	if (g->admin_fd >= 0)
		close(g->admin_fd);
	g->admin_fd = -1;
}

static unsigned
gen_running(struct gen *g)
{
	unsigned n = 0;

	for (unsigned i = 0; i < gen_nchildren(g); i++)
		n += gen_child(g, i)->pid > 0;
	return n;
}

static struct child *
child_by_pid(pid_t pid)
{
	for (struct gen *g = P.gens; g != NULL; g = g->next)
		for (unsigned i = 0; i < gen_nchildren(g); i++)
			if (gen_child(g, i)->pid == pid)
				return gen_child(g, i);
	return NULL;
}

/* Forget retiring generations whose last child has exited; end the loop
 * when stopping and nothing is left. */
static void
reap_gens(void)
{
	struct gen **pp = &P.gens;

	while (*pp != NULL) {
		struct gen *g = *pp;
		if (g->state == GEN_RETIRING && gen_running(g) == 0) {
			*pp = g->next;
			log_info("proc", "generation %u finished", g->id);
			gen_free(g);
		} else {
			pp = &g->next;
		}
	}
	if (P.stopping && P.gens == NULL)
		event_base_loopexit(P.base, NULL);
}

/* ---- children ----------------------------------------------------------------- */

static void on_restart(evutil_socket_t fd, short what, void *arg);
static void on_gen_kill(evutil_socket_t fd, short what, void *arg);
static void on_gen_start_timeout(evutil_socket_t fd, short what, void *arg);
static int has_older_serving(const struct gen *g);
static void gen_retire(struct gen *g, uint64_t deadline);
static void on_child_msg(struct ipc_chan *ch, const struct ipc_msg *msg, void *arg);
static void on_child_close(struct ipc_chan *ch, const char *why, void *arg);

static void
child_init(struct child *c, struct gen *g, enum child_kind kind, unsigned slot)
{
	c->magic = CHILD_MAGIC;
	c->gen = g;
	c->kind = kind;
	c->slot = slot;
	c->metrics_slot = -1;
	for (unsigned i = 0; i < CONFIG_MAX_LISTEN; i++)
		c->listen_fd[i] = -1;
	if (kind == CHILD_KCD)
		snprintf(c->name, sizeof(c->name), "kcd");
	else
		snprintf(c->name, sizeof(c->name), "worker %u", slot);
}

static int
send_u32_fd(struct child *c, uint16_t type, int with_u32, uint32_t v, int fd)
{
	ipc_buf_init(&pbuf);
	if (with_u32)
		ipc_put_u32(&pbuf, v);
	if (c->ctl == NULL || pbuf.err)
		return -1;
	return ipc_send(c->ctl, type, 0, pbuf.data, pbuf.len, fd);
}

/* A new channel between kcd and worker w: kcd's end to kcd, the worker's end
 * to the worker (when the worker is running) or returned in *worker_end
 * (for a worker about to be forked). */
static int
pair_worker_kcd(struct gen *g, struct child *w, int *worker_end)
{
	int sp[2];
	int rc = -1;

	if (g->kcd.ctl == NULL)
		return 0;		/* kcd is down: its restart brings channels */
	if (ipc_socketpair(sp) != 0) {
		log_error("proc", "socketpair for %s and kcd: %s", w->name, strerror(errno));
		return -1;
	}
	if (send_u32_fd(&g->kcd, IPC_WORKER_CHANNEL, 1, w->slot, sp[0]) != 0) {
		log_error("proc", "cannot hand kcd the channel of %s", w->name);
		goto cleanup;
	}
	if (worker_end != NULL) {
		*worker_end = sp[1];
		sp[1] = -1;
	} else if (send_u32_fd(w, IPC_KCD_CHANNEL, 0, 0, sp[1]) != 0) {
		log_error("proc", "cannot hand %s its new channel to kcd", w->name);
		goto cleanup;
	}
	rc = 0;
cleanup:
	close(sp[0]);
	if (sp[1] >= 0)
		close(sp[1]);
	return rc;
}

/* In the child: release every bit of the parent's state that is not ours.
 * event_reinit first, so that freeing the parent's events does not touch the
 * epoll instance the parent still uses. */
static void
forget_parent(void)
{
	struct gen *g;

	(void)event_reinit(P.base);
	while ((g = P.gens) != NULL) {
		P.gens = g->next;
		gen_free(g);
	}
	for (unsigned i = 0; i < sizeof(P.sig_ev) / sizeof(P.sig_ev[0]); i++)
		if (P.sig_ev[i] != NULL)
			event_free(P.sig_ev[i]);
	if (P.stop_ev != NULL)
		event_free(P.stop_ev);
	event_base_free(P.base);
	P.base = NULL;
	free(P.pid_file);
	P.pid_file = NULL;
	if (P.notify_fd >= 0)
		close(P.notify_fd);
	P.notify_fd = -1;
}

static void
child_signals(void)
{
	struct sigaction sa;
	sigset_t none;

	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	/* the parent coordinates: a terminal's ^C or hang-up reaches the
	 * whole process group, and must not cut the drain short */
	sa.sa_handler = SIG_IGN;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGPIPE, &sa, NULL);
	sa.sa_handler = SIG_DFL;
	sigaction(SIGTERM, &sa, NULL);	/* the child's loop installs its own */
	sigaction(SIGCHLD, &sa, NULL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
}

static void __attribute__((noreturn))
child_run(struct child *c, int ctl_fd, int kcd_fd, int mslot)
{
	struct gen *g = c->gen;
	struct config *cfg = g->cfg;
	long parent = (long)P.pid;
	int rc;

	proc_parent_death_signal(parent);
	log_set_role(c->kind == CHILD_KCD ? "kcd" : "worker");
	/* take what is ours out of the parent's state, then drop the rest */
	g->cfg = NULL;
	if (c->kind == CHILD_KCD) {
		struct kcd_args ka;

		memset(&ka, 0, sizeof(ka));
		ka.cfg = cfg;
		ka.generation = g->id;
		ka.parent = parent;
		ka.ctl_fd = ctl_fd;
		ka.n_workers = g->n_workers;
		forget_parent();
		child_signals();
		proc_set_title("ekp-kcd");
		metrics_attach(P.shm, mslot);
		rc = kcd_main(&ka);
	} else {
		struct front_args fa;
		char title[16];

		memset(&fa, 0, sizeof(fa));
		fa.cfg = cfg;
		fa.slot = c->slot;
		fa.generation = g->id;
		fa.parent = parent;
		fa.ctl_fd = ctl_fd;
		fa.kcd_fd = kcd_fd;
		fa.n_listen = g->n_listen;
		for (unsigned i = 0; i < g->n_listen; i++) {
			fa.listen_fd[i] = c->listen_fd[i];	/* this slot's own */
			c->listen_fd[i] = -1;
		}
		fa.admin_fd = g->admin_fd;	/* every worker answers /metrics */
		g->admin_fd = -1;
		memcpy(fa.ticket_keys, g->ticket_keys, sizeof(fa.ticket_keys));
		snprintf(title, sizeof(title), "ekp-worker-%u", c->slot);
		forget_parent();
		child_signals();
		proc_set_title(title);
		metrics_attach(P.shm, mslot);
		rc = worker_main(&fa);
	}
	config_free(cfg);
	log_close();
	exit(rc);		/* exit, not _exit: LeakSanitizer runs at exit */
}

static int
spawn(struct child *c)
{
	struct gen *g = c->gen;
	int ctl[2] = { -1, -1 }, kcd_end = -1, mslot = -1;
	pid_t pid;

	assert(c->pid == 0);
	if (ipc_socketpair(ctl) != 0) {
		log_error("proc", "socketpair for %s: %s", c->name, strerror(errno));
		goto fail;
	}
	if (c->kind == CHILD_WORKER && pair_worker_kcd(g, c, &kcd_end) != 0)
		goto fail;
	if (P.shm != NULL &&
	    (mslot = metrics_slot_alloc(P.shm, c->kind == CHILD_KCD ? SLOT_KCD : SLOT_WORKER)) < 0)
		log_warn("proc", "no metrics slot left for %s; its counters are not shown", c->name);
	fflush(NULL);
	if ((pid = fork()) < 0) {
		log_error("proc", "fork for %s: %s", c->name, strerror(errno));
		goto fail;
	}
	if (pid == 0) {
		close(ctl[0]);
		child_run(c, ctl[1], kcd_end, mslot);
	}
	close(ctl[1]);
	if (kcd_end >= 0)
		close(kcd_end);
	c->pid = pid;
	c->ready = 0;
	c->cause[0] = '\0';
	c->started_ms = proc_now_ms();
	c->metrics_slot = mslot;
	if (mslot >= 0)
		P.shm->slot[mslot].pid = (uint32_t)pid;
	/* takes ctl[0] even on failure; the child then sees EOF and leaves */
	if ((c->ctl = ipc_chan_new(P.base, ctl[0], c->name, on_child_msg, on_child_close, c)) == NULL)
		log_error("proc", "no control channel for %s (pid %ld)", c->name, (long)pid);
	log_info("proc", "started %s (pid %ld, generation %u)", c->name, (long)pid, g->id);
	if (c->kind == CHILD_KCD) {
		/* a (re)started kcd needs a channel to every running worker */
		for (unsigned i = 0; i < g->n_workers; i++)
			if (g->workers[i].pid > 0 && g->workers[i].ctl != NULL)
				(void)pair_worker_kcd(g, &g->workers[i], NULL);
	}
	return 0;
fail:
	if (ctl[0] >= 0)
		close(ctl[0]);
	if (ctl[1] >= 0)
		close(ctl[1]);
	if (kcd_end >= 0)
		close(kcd_end);
	if (mslot >= 0)
		metrics_slot_release(P.shm, mslot);
	return -1;
}

static void
schedule_restart(struct child *c, uint64_t uptime_ms)
{
	struct timeval tv;

	if (c->backoff_ms == 0 || uptime_ms >= BACKOFF_RESET_MS)
		c->backoff_ms = BACKOFF_MIN_MS;
	else if (c->backoff_ms < BACKOFF_MAX_MS)
		c->backoff_ms = c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2;
	tv = ms_tv(c->backoff_ms);
	evtimer_add(c->restart_ev, &tv);
}

static void
on_restart(evutil_socket_t fd, short what, void *arg)
{
	struct child *c = arg;

	(void)fd;
	(void)what;
	assert(c->magic == CHILD_MAGIC);
	if (P.stopping || c->gen->state == GEN_RETIRING || c->pid > 0)
		return;
	if (spawn(c) != 0) {
		log_error("proc", "cannot restart %s of generation %u; trying again", c->name, c->gen->id);
		schedule_restart(c, 0);
	}
}

static void
gen_start_workers(struct gen *g)
{
	g->workers_started = 1;
	for (unsigned i = 0; i < g->n_workers; i++)
		if (spawn(&g->workers[i]) != 0)
			schedule_restart(&g->workers[i], 0);
}

/*
 * Start g's children, kcd first, so each worker's channel to it is made as
 * the worker starts. The first generation starts its workers at once:
 * nothing else serves, and they answer /readyz and the devices (503) while
 * kcd comes up. A reload's generation starts only its kcd: its workers are
 * forked once kcd reported READY (child_ready), within KCD_READY_TIMEOUT_MS
 * or the reload is abandoned (on_gen_start_timeout). A new worker accepts
 * on the very sockets the serving generation accepts on (a dup: the same
 * SO_REUSEPORT member), so one started next to a kcd that then refuses its
 * keytab would take devices it can only fail.
 */
static int
gen_start(struct gen *g)
{
	struct timeval tv = ms_tv(KCD_READY_TIMEOUT_MS);

	for (unsigned i = 0; i < gen_nchildren(g); i++) {
		struct child *c = gen_child(g, i);
		if ((c->restart_ev = evtimer_new(P.base, on_restart, c)) == NULL)
			return -1;
	}
	if ((g->kill_ev = evtimer_new(P.base, on_gen_kill, g)) == NULL ||
	    (g->start_ev = evtimer_new(P.base, on_gen_start_timeout, g)) == NULL)
		return -1;
	if (spawn(&g->kcd) != 0)
		schedule_restart(&g->kcd, 0);
	if (!has_older_serving(g))
		gen_start_workers(g);
	else
		evtimer_add(g->start_ev, &tv);
	return 0;
}

/* A reload's kcd did not report READY in time: it hangs in its start-up
 * (or keeps failing to be forked). The serving generation stays. The kcd
 * has no worker and nothing in flight, and a hung one would not read a
 * SHUTDOWN: it is killed at once (its channel closed first, so that its
 * end does not read as a failure of its own). */
static void
on_gen_start_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct gen *g = arg;
	struct child *k = &g->kcd;

	(void)fd;
	(void)what;
	assert(g->magic == GEN_MAGIC);
	if (g->state != GEN_STARTING || k->ready || !has_older_serving(g))
		return;
	if (k->pid > 0) {
		log_error("proc", "reload failed: generation %u: kcd (pid %ld) not ready within "
		    "%u ms, killed; the previous generation keeps serving", g->id, (long)k->pid,
		    KCD_READY_TIMEOUT_MS);
		if (k->ctl != NULL) {
			ipc_chan_free(k->ctl);
			k->ctl = NULL;
		}
		kill(k->pid, SIGKILL);
	} else {
		log_error("proc", "reload failed: generation %u: kcd could not be started within "
		    "%u ms; the previous generation keeps serving", g->id, KCD_READY_TIMEOUT_MS);
	}
	gen_retire(g, proc_now_ms());
	reap_gens();			/* a killed kcd: once on_sigchld has it */
}

static void
on_gen_kill(evutil_socket_t fd, short what, void *arg)
{
	struct gen *g = arg;

	(void)fd;
	(void)what;
	assert(g->magic == GEN_MAGIC);
	for (unsigned i = 0; i < gen_nchildren(g); i++) {
		struct child *c = gen_child(g, i);
		if (c->pid > 0) {
			log_warn("proc", "%s (pid %ld, generation %u) did not exit by its drain deadline; killing it",
			    c->name, (long)c->pid, g->id);
			kill(c->pid, SIGKILL);
		}
	}
}

static void
child_shutdown(struct child *c, uint64_t deadline)
{
	if (c->restart_ev != NULL)
		evtimer_del(c->restart_ev);
	if (c->pid <= 0)
		return;
	ipc_buf_init(&pbuf);
	ipc_put_u64(&pbuf, deadline);
	if (c->ctl == NULL || ipc_send(c->ctl, IPC_SHUTDOWN, 0, pbuf.data, pbuf.len, -1) != 0) {
		/* no channel: SIGTERM means the same to a child */
		kill(c->pid, SIGTERM);
	}
}

/* Tell every child of g to drain by deadline; SIGKILL what is left a little
 * after. The generation is forgotten by reap_gens() once empty. */
static void
gen_retire(struct gen *g, uint64_t deadline)
{
	struct timeval tv;
	uint64_t now = proc_now_ms();

	if (g->state == GEN_RETIRING) {
		/* draining after a reload when SIGTERM comes with a shorter
		 * shutdown_timeout: the children learn the earlier deadline, so
		 * they close (and log) what is left before the stop timer kills */
		if (deadline >= g->deadline)
			return;
		g->deadline = deadline;
		log_info("proc", "generation %u: drain deadline now in %llu ms", g->id,
		    (unsigned long long)(deadline > now ? deadline - now : 0));
		for (unsigned i = 0; i < gen_nchildren(g); i++)
			child_shutdown(gen_child(g, i), deadline);
		return;
	}
	g->state = GEN_RETIRING;
	g->deadline = deadline;
	if (g->start_ev != NULL)
		evtimer_del(g->start_ev);
	/* nothing restarts a retiring generation's children: the parent's
	 * copies go now, so a socket that no newer generation kept (an
	 * address or a worker slot the reload dropped) closes as soon as its
	 * worker stops accepting, instead of queueing connections in a backlog
	 * nobody accepts from for the whole drain */
	gen_close_listeners(g);
	/* /readyz judges the serving generation: a draining kcd's TGT says
	 * nothing about the keytab new requests will need */
	for (unsigned i = 0; P.shm != NULL && i < gen_nchildren(g); i++)
		if (gen_child(g, i)->metrics_slot >= 0)
			metrics_slot_retire(P.shm, gen_child(g, i)->metrics_slot);
	log_info("proc", "generation %u: draining, deadline in %llu ms", g->id,
	    (unsigned long long)(deadline > now ? deadline - now : 0));
	for (unsigned i = 0; i < gen_nchildren(g); i++)
		child_shutdown(gen_child(g, i), deadline);
	/* when stopping, on_stop_timeout kills what is left, at the same grace */
	if (g->kill_ev != NULL && !P.stopping) {
		tv = ms_tv((deadline > now ? deadline - now : 0) + KILL_GRACE_MS);
		evtimer_add(g->kill_ev, &tv);
	}
}

static int
gen_all_ready(struct gen *g)
{
	for (unsigned i = 0; i < gen_nchildren(g); i++)
		if (!gen_child(g, i)->ready)
			return 0;
	return 1;
}

static void
child_ready(struct child *c)
{
	struct gen *g = c->gen;

	c->ready = 1;
	log_debug("proc", "%s (pid %ld, generation %u) ready", c->name, (long)c->pid, g->id);
	if (g->state == GEN_STARTING && c->kind == CHILD_KCD && !g->workers_started) {
		/* a reload's kcd is up: now its workers may take devices */
		evtimer_del(g->start_ev);
		log_info("proc", "generation %u: kcd ready; starting %u workers", g->id, g->n_workers);
		gen_start_workers(g);
	}
	if (g->state != GEN_STARTING || !gen_all_ready(g))
		return;
	g->state = GEN_ACTIVE;
	log_info("proc", "generation %u ready: kcd pid %ld, %u workers", g->id,
	    (long)g->kcd.pid, g->n_workers);
	/* requests in flight on the older generations finish on their config */
	for (struct gen *o = g->next; o != NULL; o = o->next)
		if (o->state != GEN_RETIRING)
			gen_retire(o, proc_now_ms() + o->cfg->server.shutdown_timeout);
	reap_gens();
}

static void
on_child_msg(struct ipc_chan *ch, const struct ipc_msg *msg, void *arg)
{
	struct child *c = arg;

	int had_fd = msg->fd >= 0;

	assert(c->magic == CHILD_MAGIC);
	if (had_fd)
		close(msg->fd);		/* children never pass descriptors up */
	if (!had_fd && msg->type == IPC_START_FAILED && !c->ready &&
	    proc_start_failure(msg->data, msg->len, c->cause, sizeof(c->cause)) == 0) {
		/* its own error line says the same; the exit follows */
		log_debug("proc", "%s (pid %ld) could not start: %s", c->name, (long)c->pid, c->cause);
		return;
	}
	if (c->exited)
		return;			/* a READY read after its exit means nothing */
	if (!had_fd && msg->type == IPC_READY && msg->len == 0) {
		child_ready(c);
		return;
	}
	if (!had_fd && msg->type == IPC_STATS) {
		/* counters travel through shared memory (metrics.h) */
		return;
	}
	log_error("proc", "%s (pid %ld) sent %s (%zu bytes%s) on its control channel; closing it",
	    c->name, (long)c->pid, ipc_type_name(msg->type), msg->len,
	    had_fd ? ", with a descriptor" : "");
	/* the child sees EOF and drains; its exit is handled as a crash */
	ipc_chan_free(ch);
	c->ctl = NULL;
}

static void
on_child_close(struct ipc_chan *ch, const char *why, void *arg)
{
	struct child *c = arg;

	assert(c->magic == CHILD_MAGIC);
	if (strstr(why, "closed the channel") != NULL)
		log_debug("proc", "control channel: %s", why);	/* the child is exiting */
	else
		log_error("proc", "control channel of %s (pid %ld): %s", c->name, (long)c->pid, why);
	ipc_chan_free(ch);
	if (c->ctl == ch)
		c->ctl = NULL;
}

static void
describe_status(int st, char *buf, size_t len)
{
	if (WIFEXITED(st))
		snprintf(buf, len, "exited with status %d", WEXITSTATUS(st));
	else if (WIFSIGNALED(st))
		snprintf(buf, len, "killed by signal %d (%s)%s", WTERMSIG(st), strsignal(WTERMSIG(st)),
		    WCOREDUMP(st) ? ", core dumped" : "");
	else
		snprintf(buf, len, "ended with wait status 0x%x", (unsigned)st);
}

static int
has_older_serving(const struct gen *g)
{
	for (const struct gen *o = g->next; o != NULL; o = o->next)
		if (o->state == GEN_ACTIVE)
			return 1;
	return 0;
}

static void
child_exited(struct child *c, int st)
{
	struct gen *g = c->gen;
	uint64_t up = proc_now_ms() - c->started_ms;
	char how[128];

	describe_status(st, how, sizeof(how));
	if (c->ctl != NULL) {
		/* its last words (IPC_START_FAILED) are in the socket, read
		 * or not: the SIGCHLD may come before the read event. Only
		 * they count now (on_child_msg). */
		c->exited = 1;
		ipc_chan_drain(c->ctl);		/* may close it: on_child_close */
		c->exited = 0;
	}
	if (c->ctl != NULL) {
		ipc_chan_free(c->ctl);
		c->ctl = NULL;
	}
	if (c->metrics_slot >= 0) {
		metrics_slot_release(P.shm, c->metrics_slot);
		c->metrics_slot = -1;
	}
	if (P.stopping || g->state == GEN_RETIRING) {
		log_info("proc", "%s (pid %ld, generation %u) %s", c->name, (long)c->pid, g->id, how);
		c->pid = 0;
		return;
	}
	if (g->state == GEN_STARTING && has_older_serving(g)) {
		/* a reload whose new children cannot start, or a child that
		 * fails before the rest is up: keep the old ones. A kcd that
		 * dies here has workers that would accept without it. */
		log_error("proc", "reload failed: %s (pid %ld) of generation %u %s during start-up%s%s; "
		    "the previous generation keeps serving", c->name, (long)c->pid, g->id, how,
		    c->cause[0] != '\0' ? ": " : "", c->cause);
		c->pid = 0;
		gen_retire(g, proc_now_ms());
		return;
	}
	schedule_restart(c, up);
	log_error("proc", "%s (pid %ld, generation %u) %s after %llu ms%s%s; restarting in %u ms",
	    c->name, (long)c->pid, g->id, how, (unsigned long long)up,
	    c->cause[0] != '\0' ? " during start-up: " : "", c->cause, c->backoff_ms);
	c->pid = 0;
	c->ready = 0;
}

/* ---- signals ---------------------------------------------------------------- */

static void
on_sigchld(evutil_socket_t sig, short what, void *arg)
{
	pid_t pid;
	int st;

	(void)sig;
	(void)what;
	(void)arg;
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		struct child *c = child_by_pid(pid);
		if (c == NULL) {
			log_debug("proc", "reaped pid %ld (not a child we track)", (long)pid);
			continue;
		}
		child_exited(c, st);
	}
	reap_gens();
}

/* SIGKILL every child still running and wait for it, so the parent never
 * leaves one behind. */
static void
kill_all_and_reap(void)
{
	for (struct gen *g = P.gens; g != NULL; g = g->next) {
		for (unsigned i = 0; i < gen_nchildren(g); i++) {
			struct child *c = gen_child(g, i);
			int st;

			if (c->pid <= 0)
				continue;
			log_warn("proc", "%s (pid %ld, generation %u) still running at shutdown_timeout; killing it",
			    c->name, (long)c->pid, g->id);
			kill(c->pid, SIGKILL);
			while (waitpid(c->pid, &st, 0) < 0 && errno == EINTR)
				;
			c->pid = 0;
			if (c->metrics_slot >= 0) {
				metrics_slot_release(P.shm, c->metrics_slot);
				c->metrics_slot = -1;
			}
		}
		g->state = GEN_RETIRING;
	}
	reap_gens();
}

static void
on_stop_timeout(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	kill_all_and_reap();
	event_base_loopexit(P.base, NULL);
}

static void
start_stop(int sig)
{
	const struct config *cfg = P.gens != NULL ? P.gens->cfg : NULL;
	uint64_t timeout = cfg != NULL ? cfg->server.shutdown_timeout : 0;
	uint64_t deadline = proc_now_ms() + timeout;
	struct timeval tv;

	const char *name = sig == SIGINT ? "SIGINT" : "SIGTERM";

	if (P.stopping) {
		log_info("proc", "%s again: already stopping", name);
		return;
	}
	P.stopping = 1;
	log_info("proc", "%s: draining, at most %llu ms", name, (unsigned long long)timeout);
	for (struct gen *g = P.gens; g != NULL; g = g->next) {
		gen_retire(g, deadline);
		gen_close_listeners(g);	/* no restart or reload needs them now */
	}
	/* the children stop at the deadline themselves; a sanitizer build's
	 * exit takes a while: only what is still running a grace later is killed */
	tv = ms_tv(timeout + KILL_GRACE_MS);
	evtimer_add(P.stop_ev, &tv);
	reap_gens();
}

/* The access log exists, with its W3C directives when new, before any
 * worker opens it: workers of one generation never race to write them, and
 * a path the parent cannot open fails the start or the reload here. */
static int
prepare_access_log(const struct config *cfg, char *err, size_t errlen)
{
	int fd;

	if (cfg->log.access_log == NULL || cfg->log.access_log[0] == '\0')
		return 0;
	if ((fd = access_log_prepare(cfg->log.access_log, cfg->log.access_format, err, errlen)) < 0)
		return -1;
	close(fd);
	return 0;
}

static void
log_errors(const struct config_errors *errs)
{
	for (unsigned i = 0; i < errs->n; i++)
		log_error("config", "%s", errs->msg[i]);
	if (errs->dropped)
		log_error("config", "... and %u more errors", errs->dropped);
}

static void
log_warnings(const struct config *cfg)
{
	for (unsigned i = 0; i < cfg->warnings.n; i++)
		log_warn("config", "%s", cfg->warnings.msg[i]);
}

static int
same_str(const char *a, const char *b)
{
	return strcmp(a != NULL ? a : "", b != NULL ? b : "") == 0;
}

/* The newest generation that still holds its listening sockets: a
 * retiring one closed them (gen_retire), and a reload right after a failed
 * one must take the sockets of the generation still serving. */
static const struct gen *
listening_gen(void)
{
	for (const struct gen *g = P.gens; g != NULL; g = g->next)
		if (g->state != GEN_RETIRING)
			return g;
	return NULL;
}

static void
reload(void)
{
	struct config_errors errs;
	struct config *cfg;
	struct gen *cur = P.gens, *g = NULL;
	char err[512];

	if (P.stopping) {
		log_info("proc", "SIGHUP while stopping: ignored");
		return;
	}
	memset(&errs, 0, sizeof(errs));
	log_info("proc", "SIGHUP: reloading %s", P.config_path);
	if ((cfg = config_load(P.config_path, &errs)) == NULL) {
		log_errors(&errs);
		log_error("proc", "reload refused: the configuration has errors; generation %u keeps serving",
		    cur != NULL ? cur->id : 0);
		config_errors_clear(&errs);
		return;
	}
	log_warnings(cfg);
	if (!same_str(cfg->server.pid_file, P.pid_file))
		log_warn("proc", "pid_file changed: takes effect at the next start, still writing %s",
		    P.pid_file != NULL ? P.pid_file : "none");
	if ((g = gen_new(cfg)) == NULL) {
		log_error("proc", "reload refused: out of memory");
		config_free(cfg);
		return;
	}
	if (gen_listeners(g, listening_gen(), err, sizeof(err)) != 0 ||
	    prepare_access_log(cfg, err, sizeof(err)) != 0) {
		log_error("proc", "reload refused: %s", err);
		goto fail;
	}
	/* children inherit the log at fork: switch before forking them */
	if (cur == NULL || !same_str(cur->cfg->log.error_log, cfg->log.error_log)) {
		if (log_open(cfg->log.error_log, (enum log_level)cfg->log.level, err, sizeof(err)) != 0) {
			log_error("proc", "reload refused: %s", err);
			goto fail;
		}
	}
	log_set_level((enum log_level)cfg->log.level);
	/* a generation still starting from an earlier reload is superseded */
	if (cur != NULL && cur->state == GEN_STARTING && has_older_serving(cur))
		gen_retire(cur, proc_now_ms());
	g->next = P.gens;
	P.gens = g;
	log_info("proc", "reload: starting generation %u (%u workers)", g->id, g->n_workers);
	if (gen_start(g) != 0) {
		log_error("proc", "reload: cannot start generation %u: out of memory", g->id);
		gen_retire(g, proc_now_ms());
	}
	reap_gens();
	return;
fail:
	gen_free(g);
	P.next_gen_id--;
}

/* SIGUSR1 (logrotate): the parent reopens the files for its children, who
 * run unprivileged and could not open a root-owned log themselves. */
static void
reopen_logs(void)
{
	char err[512];
	unsigned n_access = 0;

	if (log_reopen() != 0)
		log_error("proc", "SIGUSR1: could not reopen the error log");
	else
		log_info("proc", "SIGUSR1: error log reopened");
	for (struct gen *g = P.gens; g != NULL; g = g->next) {
		const char *t = g->cfg->log.error_log;
		const char *al = g->cfg->log.access_log;
		int fd = -1;

		if (t != NULL && t[0] == '/' &&
		    (fd = open(t, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640)) < 0)
			log_error("proc", "SIGUSR1: cannot open %s for generation %u: %s", t, g->id,
			    strerror(errno));
		if (t == NULL || t[0] != '/' || fd >= 0) {
			for (unsigned i = 0; i < gen_nchildren(g); i++)
				(void)send_u32_fd(gen_child(g, i), IPC_LOG_REOPEN, 0, 0, fd);
		}
		if (fd >= 0)
			close(fd);

		/* the access log: a new file starts with its directives, then
		 * each worker gets the descriptor and flushes into the old
		 * file what it buffered before switching */
		if (al == NULL || al[0] == '\0')
			continue;
		if ((fd = access_log_prepare(al, g->cfg->log.access_format, err, sizeof(err))) < 0) {
			log_error("proc", "SIGUSR1: generation %u keeps writing its old access log: %s",
			    g->id, err);
			continue;
		}
		for (unsigned i = 0; i < g->n_workers; i++)
			if (g->workers[i].pid > 0 &&
			    send_u32_fd(&g->workers[i], IPC_ACCESS_LOG_REOPEN, 0, 0, fd) != 0)
				log_error("proc", "SIGUSR1: cannot hand %s (generation %u) its access log",
				    g->workers[i].name, g->id);
		close(fd);
		n_access++;
	}
	if (n_access > 0)
		log_info("proc", "SIGUSR1: access log reopened");
}

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	(void)arg;
	switch (sig) {
	case SIGHUP:
		reload();
		break;
	case SIGTERM:
	case SIGINT:
		start_stop((int)sig);
		break;
	case SIGUSR1:
		reopen_logs();
		break;
	default:
		break;
	}
}

/* ---- daemon mode, pid file ------------------------------------------------- */

/* Double fork; the launching process waits on a pipe until the daemon says
 * how start-up went (proc_main's notify), so `-d` exits 1 on a failure that
 * happens after detaching. Returns in the daemon only. */
static int
daemonize(char *err, size_t errlen)
{
	int p[2], fd;
	pid_t pid;

	if (pipe2(p, O_CLOEXEC) != 0) {
		snprintf(err, errlen, "pipe: %s", strerror(errno));
		return -1;
	}
	fflush(NULL);
	if ((pid = fork()) < 0) {
		snprintf(err, errlen, "fork: %s", strerror(errno));
		close(p[0]);
		close(p[1]);
		return -1;
	}
	if (pid > 0) {
		char msg[1024];
		size_t n = 0;
		ssize_t r;

		close(p[1]);
		while (n < sizeof(msg) - 1 &&
		    ((r = read(p[0], msg + n, sizeof(msg) - 1 - n)) > 0 || (r < 0 && errno == EINTR)))
			if (r > 0)
				n += (size_t)r;
		msg[n] = '\0';
		waitpid(pid, NULL, 0);	/* the intermediate process */
		if (strcmp(msg, "OK") == 0)
			_exit(0);
		fprintf(stderr, "eas-kcd-proxy: %s\n", n ? msg : "the daemon failed to start; see the error log");
		_exit(1);
	}
	close(p[0]);
	if (setsid() < 0)
		_exit(1);
	if ((pid = fork()) < 0)
		_exit(1);
	if (pid > 0)
		_exit(0);
	if (chdir("/") != 0) {
		/* cannot happen; keep going in whatever directory we are */
	}
	if ((fd = open("/dev/null", O_RDWR)) >= 0) {
		dup2(fd, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		if (fd > 2)
			close(fd);
	}
	P.notify_fd = p[1];
	return 0;
}

static void
notify(const char *msg)
{
	if (P.notify_fd < 0)
		return;
	if (write(P.notify_fd, msg, strlen(msg)) < 0) {
		/* the launcher is gone; nothing to tell */
	}
	close(P.notify_fd);
	P.notify_fd = -1;
}

static int
write_pid_file(const char *path, char *err, size_t errlen)
{
	char buf[32];
	int fd, n;

	if ((fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644)) < 0) {
		snprintf(err, errlen, "cannot write pid_file %s: %s", path, strerror(errno));
		return -1;
	}
	n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
	if (write(fd, buf, (size_t)n) != n) {
		snprintf(err, errlen, "cannot write pid_file %s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

/* ---- the parent's main -------------------------------------------------------- */

int
proc_main(struct config *cfg, const char *config_path, int daemon)
{
	static const int sigs[] = { SIGHUP, SIGTERM, SIGINT, SIGUSR1, SIGCHLD };
	struct gen *g = NULL;
	char err[512];
	int rc = 1, pid_written = 0;

	P.config_path = config_path;
	P.notify_fd = -1;
	if (log_open(cfg->log.error_log, (enum log_level)cfg->log.level, err, sizeof(err)) != 0) {
		fprintf(stderr, "eas-kcd-proxy: %s\n", err);
		config_free(cfg);
		return 1;
	}
	log_set_role("main");
	log_warnings(cfg);
	signal(SIGPIPE, SIG_IGN);
	if ((g = gen_new(cfg)) == NULL) {
		log_error("proc", "out of memory");
		config_free(cfg);
		goto cleanup;
	}
	if (gen_listeners(g, NULL, err, sizeof(err)) != 0 ||
	    prepare_access_log(g->cfg, err, sizeof(err)) != 0) {
		log_error("proc", "%s", err);
		goto cleanup;
	}
	if ((P.shm = metrics_shm_create()) == NULL) {
		log_error("proc", "cannot map the shared metrics region: %s", strerror(errno));
		goto cleanup;
	}
	if (daemon) {
		if (same_str(g->cfg->log.error_log, "stderr"))
			log_warn("proc", "-d with error_log = stderr: the daemon's log goes to /dev/null");
		if (daemonize(err, sizeof(err)) != 0) {
			log_error("proc", "cannot daemonize: %s", err);
			goto cleanup;
		}
	}
	P.pid = getpid();
	if (g->cfg->server.pid_file != NULL && g->cfg->server.pid_file[0] != '\0') {
		if ((P.pid_file = strdup(g->cfg->server.pid_file)) == NULL)
			goto cleanup;
		if (write_pid_file(P.pid_file, err, sizeof(err)) != 0) {
			log_error("proc", "%s", err);
			notify(err);
			goto cleanup;
		}
		pid_written = 1;
	}
	if ((P.base = event_base_new()) == NULL ||
	    (P.stop_ev = evtimer_new(P.base, on_stop_timeout, NULL)) == NULL) {
		log_error("proc", "cannot create the event loop");
		goto cleanup;
	}
	for (unsigned i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
		P.sig_ev[i] = evsignal_new(P.base, sigs[i],
		    sigs[i] == SIGCHLD ? on_sigchld : on_signal, NULL);
		if (P.sig_ev[i] == NULL || evsignal_add(P.sig_ev[i], NULL) != 0) {
			log_error("proc", "cannot handle signal %d", sigs[i]);
			goto cleanup;
		}
	}
	P.gens = g;
	g = NULL;
	log_info("proc", "eas-kcd-proxy %s starting (pid %ld, %s, %u workers)", EKP_VERSION,
	    (long)P.pid, P.config_path, P.gens->n_workers);
	if (gen_start(P.gens) != 0) {
		log_error("proc", "cannot start generation 1: out of memory");
		goto cleanup;
	}
	notify("OK");
	event_base_dispatch(P.base);
	log_info("proc", "stopped");
	rc = 0;
cleanup:
	if (P.notify_fd >= 0)
		notify("start-up failed; see the error log");
	if (P.base != NULL && P.gens != NULL)
		kill_all_and_reap();	/* only on a failed start: a clean stop left none */
	while (P.gens != NULL) {
		struct gen *o = P.gens;
		P.gens = o->next;
		gen_free(o);
	}
	gen_free(g);
	if (pid_written && unlink(P.pid_file) != 0)
		log_error("proc", "cannot remove pid_file %s: %s", P.pid_file, strerror(errno));
	free(P.pid_file);
	P.pid_file = NULL;
	for (unsigned i = 0; i < sizeof(P.sig_ev) / sizeof(P.sig_ev[0]); i++) {
		if (P.sig_ev[i] != NULL)
			event_free(P.sig_ev[i]);
		P.sig_ev[i] = NULL;
	}
	if (P.stop_ev != NULL)
		event_free(P.stop_ev);
	P.stop_ev = NULL;
	if (P.base != NULL)
		event_base_free(P.base);
	P.base = NULL;
	if (P.shm != NULL)
		munmap(P.shm, sizeof(*P.shm));
	P.shm = NULL;
	return rc;
}
