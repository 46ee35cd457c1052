/*
 * embed.c — the embedding API (include/eas_kcd_proxy.h, SPEC §10): a proxy
 * on the caller's event loop, built from the same worker (front.c) and kcd
 * (kcd.c) the daemon runs.
 *
 * What the daemon's parent (proc.c) does with processes, this does within
 * the caller's process: a generation is {config, worker, kcd}; the worker
 * runs on the caller's loop, kcd in a helper process (forked, the default)
 * or a thread with a loop of its own, and either way it is driven over the
 * same control channel and messages (proc.h): WORKER_CHANNEL, SHUTDOWN,
 * READY. A reload makes a new generation on the same listening sockets and
 * switches to it when its kcd is READY (its worker is built but accepts
 * nothing before); the older one drains. A reload whose kcd exits before
 * READY, or is not READY within KCD_READY_TIMEOUT_MS, is abandoned and the
 * serving generation stays, its worker never having accepted. A kcd that
 * dies while its generation serves is started again with back-off, as the
 * parent does.
 *
 * Process-wide state (the error log, the access log, the metrics region
 * this process writes to) allows one started proxy per process.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include <event2/event.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "eas_kcd_proxy.h"
#include "access_log.h"
#include "config.h"
#include "front.h"
#include "ipc.h"
#include "kcd.h"
#include "kcd_client.h"
#include "log.h"
#include "metrics.h"
#include "policy.h"
#include "proc.h"

#define PROXY_MAGIC	0x454d4231u	/* "EMB1" */
#define EGEN_MAGIC	0x45474e31u	/* "EGN1" */
#define ECFG_MAGIC	0x45434631u	/* "ECF1" */
#define ERRMSG_MAX	4096
#define REAP_POLL_MS	20u		/* how often a stopping kcd is looked for */
#define KILL_GRACE_MS	2000u		/* after its deadline, before SIGKILL */
#define DESTROY_WAIT_MS	2000u		/* destroy: wait this long, then SIGKILL */
#define BACKOFF_MIN_MS	100u
#define BACKOFF_MAX_MS	10000u
/* a reload's kcd must be READY this soon (as the daemon's, proc.c) */
#define KCD_READY_TIMEOUT_MS 10000u
#define CONFIG_NAME	"eas_kcd_proxy_config"

/* ---- the configuration builder ---------------------------------------------- */

struct pair {
	char *section, *key, *value;
};

struct eas_kcd_proxy_config {
	unsigned magic;
	struct pair *v;
	size_t n, cap;
	char err[512];
};

struct eas_kcd_proxy_config *
eas_kcd_proxy_config_new(void)
{
	struct eas_kcd_proxy_config *c = calloc(1, sizeof(*c));

	if (c != NULL)
		c->magic = ECFG_MAGIC;
	return c;
}

void
eas_kcd_proxy_config_free(struct eas_kcd_proxy_config *c)
{
	if (c == NULL || c->magic != ECFG_MAGIC)
		return;
	for (size_t i = 0; i < c->n; i++) {
		free(c->v[i].section);
		free(c->v[i].key);
		free(c->v[i].value);
	}
	free(c->v);
	c->magic = 0;
	free(c);
}

const char *
eas_kcd_proxy_config_errmsg(const struct eas_kcd_proxy_config *c)
{
	return (c != NULL && c->magic == ECFG_MAGIC) ? c->err : "";
}

int
eas_kcd_proxy_config_set(struct eas_kcd_proxy_config *c, const char *section, const char *key,
    const char *value)
{
	struct pair *pr = NULL;
	char *v;

	if (c == NULL || c->magic != ECFG_MAGIC)
		return EAS_KCD_PROXY_E_INVALID;
	c->err[0] = '\0';
	if (section == NULL || key == NULL || value == NULL) {
		snprintf(c->err, sizeof(c->err), "section, key and value must not be NULL");
		return EAS_KCD_PROXY_E_INVALID;
	}
	if (!config_key_exists(section, key)) {
		snprintf(c->err, sizeof(c->err), "[%.64s] %.64s is not a configuration key; see "
		    "eas-kcd-proxy.conf.example", section, key);
		return EAS_KCD_PROXY_E_INVALID;
	}
	for (const char *p = value; *p != '\0'; p++) {
		/* the value becomes one line of INI text: nothing may end it
		 * early or hide part of it from the parser */
		if ((unsigned char)*p < 0x20 || *p == 0x7f) {
			snprintf(c->err, sizeof(c->err), "[%s] %s: the value holds control "
			    "character 0x%02x; values are one line of text", section, key,
			    (unsigned char)*p);
			return EAS_KCD_PROXY_E_INVALID;
		}
		if ((*p == ';' || *p == '#') && p > value && (p[-1] == ' ' || p[-1] == '\t')) {
			snprintf(c->err, sizeof(c->err), "[%s] %s: \" %c\" would start a comment "
			    "in the value, as in the configuration file", section, key, *p);
			return EAS_KCD_PROXY_E_INVALID;
		}
	}
	if ((v = strdup(value)) == NULL)
		goto oom;
	for (size_t i = 0; i < c->n; i++) {
		if (strcmp(c->v[i].section, section) == 0 && strcmp(c->v[i].key, key) == 0) {
			free(c->v[i].value);	/* the last value wins */
			c->v[i].value = v;
			return EAS_KCD_PROXY_OK;
		}
	}
	if (c->n == c->cap) {
		size_t ncap = c->cap ? c->cap * 2 : 32;
		struct pair *nv = realloc(c->v, ncap * sizeof(*nv));
		if (nv == NULL)
			goto oom_v;
		c->v = nv;
		c->cap = ncap;
	}
	pr = &c->v[c->n];
	if ((pr->section = strdup(section)) == NULL)
		goto oom_v;
	if ((pr->key = strdup(key)) == NULL) {
		free(pr->section);
		goto oom_v;
	}
	pr->value = v;
	c->n++;
	return EAS_KCD_PROXY_OK;
oom_v:
	free(v);
oom:
	snprintf(c->err, sizeof(c->err), "out of memory");
	return EAS_KCD_PROXY_E_SYSTEM;
}

static struct eas_kcd_proxy_config *
config_copy(const struct eas_kcd_proxy_config *src)
{
	struct eas_kcd_proxy_config *c = eas_kcd_proxy_config_new();

	if (c == NULL)
		return NULL;
	for (size_t i = 0; i < src->n; i++) {
		if (eas_kcd_proxy_config_set(c, src->v[i].section, src->v[i].key,
		    src->v[i].value) != EAS_KCD_PROXY_OK) {
			eas_kcd_proxy_config_free(c);
			return NULL;
		}
	}
	return c;
}

/*
 * The builder's pairs as INI text, one line per pair grouped by section,
 * then config_load_text. Its "NAME:LINE: message" errors are rewritten to
 * "[section] key: message" (lines know their pair).
 */
static struct config *
config_from_pairs(const struct eas_kcd_proxy_config *c, char *err, size_t errlen)
{
	struct config_errors errs = { 0 };
	struct config *cfg = NULL;
	const struct pair **line_pair = NULL;	/* index: line number */
	char *text = NULL;
	size_t len = 0, off = 0, nlines = 1;
	FILE *fp = NULL;

	err[0] = '\0';
	if ((line_pair = calloc(2 * c->n + 2, sizeof(*line_pair))) == NULL ||
	    (fp = open_memstream(&text, &len)) == NULL) {
		snprintf(err, errlen, "out of memory");
		goto cleanup;
	}
	for (size_t i = 0; i < c->n; i++) {
		int first = 1;

		for (size_t j = 0; j < i; j++)
			if (strcmp(c->v[j].section, c->v[i].section) == 0)
				first = 0;
		if (!first)
			continue;	/* written with the first pair of its section */
		fprintf(fp, "[%s]\n", c->v[i].section);
		nlines++;
		for (size_t j = i; j < c->n; j++) {
			if (strcmp(c->v[j].section, c->v[i].section) != 0)
				continue;
			fprintf(fp, "%s = %s\n", c->v[j].key, c->v[j].value);
			line_pair[nlines++] = &c->v[j];
		}
	}
	if (fclose(fp) != 0) {
		fp = NULL;
		snprintf(err, errlen, "out of memory");
		goto cleanup;
	}
	fp = NULL;
	if ((cfg = config_load_text(CONFIG_NAME, text, len, &errs)) != NULL)
		goto cleanup;
	for (unsigned i = 0; i < errs.n && off + 1 < errlen; i++) {
		const char *m = errs.msg[i], *rest;
		unsigned line = 0;
		int n;

		if (strncmp(m, CONFIG_NAME ":", sizeof(CONFIG_NAME)) == 0) {
			rest = m + sizeof(CONFIG_NAME);
			if (sscanf(rest, "%u:", &line) == 1 && line < nlines && line_pair[line]) {
				rest = strchr(rest, ':') + 1;
				while (*rest == ' ')
					rest++;
				n = snprintf(err + off, errlen - off, "%s[%s] %s: %s", off ? "\n" : "",
				    line_pair[line]->section, line_pair[line]->key, rest);
			} else {
				while (*rest == ' ' || (*rest >= '0' && *rest <= '9') || *rest == ':')
					rest++;
				n = snprintf(err + off, errlen - off, "%s%s", off ? "\n" : "", rest);
			}
		} else
			n = snprintf(err + off, errlen - off, "%s%s", off ? "\n" : "", m);
		if (n < 0)
			break;
		off += (size_t)n < errlen - off ? (size_t)n : errlen - off - 1;
	}
	if (err[0] == '\0')
		snprintf(err, errlen, "the configuration does not load (out of memory)");
cleanup:
	if (fp != NULL)
		fclose(fp);
	config_errors_clear(&errs);
	free(text);
	free(line_pair);
	return cfg;
}

static struct config *
config_from_file(const char *path, char *err, size_t errlen)
{
	struct config_errors errs = { 0 };
	struct config *cfg;
	size_t off = 0;

	err[0] = '\0';
	if ((cfg = config_load(path, &errs)) != NULL)
		return cfg;
	for (unsigned i = 0; i < errs.n && off + 1 < errlen; i++) {
		int n = snprintf(err + off, errlen - off, "%s%s", off ? "\n" : "", errs.msg[i]);
		if (n < 0)
			break;
		off += (size_t)n < errlen - off ? (size_t)n : errlen - off - 1;
	}
	if (errs.dropped && off + 1 < errlen)
		snprintf(err + off, errlen - off, "%s(and %u more errors)", off ? "\n" : "",
		    errs.dropped);
	config_errors_clear(&errs);
	return NULL;
}

/* ---- the proxy ------------------------------------------------------------------- */

enum pstate { P_CREATED, P_RUNNING, P_STOPPING, P_STOPPED };

struct egen;

struct eas_kcd_proxy {
	unsigned magic;
	enum pstate state;
	char *path;			/* the file source; NULL for a builder */
	struct eas_kcd_proxy_config *src;	/* the builder source (a copy) */
	struct config *cfg;		/* loaded by new, taken by the first generation */
	enum eas_kcd_proxy_kcd_mode mode;
	struct event_base *base;	/* the caller's */
	struct policy_hooks hooks;	/* borrowed by every generation's worker */
	struct metrics_shm *shm;
	int wslot;			/* this process' metrics slot */
	unsigned n_listen;
	int listen_fd[CONFIG_MAX_LISTEN];	/* ours; workers get dups */
	struct config_addr listen_addr[CONFIG_MAX_LISTEN];
	int admin_fd;			/* -1 none */
	struct config_addr admin_addr;
	struct egen *gens;		/* newest first */
	unsigned next_gen;
	unsigned serving;		/* generation id accepting devices */
	struct event *stopped_ev;	/* runs the stopped callback */
	eas_kcd_proxy_stopped_fn *stopped;
	void *stopped_arg;
	char errmsg[ERRMSG_MAX];
};

struct egen {
	unsigned magic;
	struct eas_kcd_proxy *p;
	unsigned id;
	struct config *cfg;		/* owned */
	struct worker *w;		/* NULL once drained */
	int active;			/* has served (its kcd was READY once) */
	int retiring;
	/* kcd */
	struct ipc_chan *kctl;		/* NULL while kcd is not running */
	int kcd_ready;
	/* why kcd could not start, from IPC_START_FAILED (proc_start_failure:
	 * bounded, no control bytes); "" none. Reset at every start. */
	char kcause[PROC_CAUSE_MAX];
	pid_t kpid;			/* process mode; 0 none */
	pthread_t kthread;		/* thread mode */
	int kthread_live;		/* not joined yet */
	struct kcd_args kargs;		/* thread mode: the thread reads it */
	int kslot;			/* kcd's metrics slot; -1 none */
	uint64_t kill_at_ms;		/* process mode: SIGKILL past this; 0 none */
	struct event *reap_ev;		/* looks for kcd's exit */
	struct event *restart_ev;
	struct event *start_ev;		/* a reload's bound on kcd's READY */
	unsigned backoff_ms;
	uint64_t kcd_started_ms;
	struct egen *next;
};

static struct eas_kcd_proxy *started;	/* the one started proxy of this process */

static void gen_kcd_stop(struct egen *g, uint64_t deadline_ms);
static void gen_maybe_free(struct egen *g);

/* The message of the failing call, for eas_kcd_proxy_errmsg. */
static __attribute__((format(printf, 2, 3))) void
set_err(struct eas_kcd_proxy *p, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(p->errmsg, sizeof(p->errmsg), fmt, ap);
	va_end(ap);
}

static int
check(const struct eas_kcd_proxy *p)
{
	return p != NULL && p->magic == PROXY_MAGIC;
}

const char *
eas_kcd_proxy_errmsg(const struct eas_kcd_proxy *p)
{
	return check(p) ? p->errmsg : "";
}

const char *
eas_kcd_proxy_strerror(int e)
{
	switch (e) {
	case EAS_KCD_PROXY_OK: return "success";
	case EAS_KCD_PROXY_E_INVALID: return "invalid argument";
	case EAS_KCD_PROXY_E_STATE: return "not allowed in this state";
	case EAS_KCD_PROXY_E_CONFIG: return "invalid configuration";
	case EAS_KCD_PROXY_E_START: return "cannot start";
	case EAS_KCD_PROXY_E_SYSTEM: return "system error";
	case EAS_KCD_PROXY_E_BUSY: return "another proxy runs in this process";
	default: return "unknown error";
	}
}

int
eas_kcd_proxy_abi_version(void)
{
	return EAS_KCD_PROXY_ABI_VERSION;
}

static struct eas_kcd_proxy *
proxy_alloc(void)
{
	struct eas_kcd_proxy *p = calloc(1, sizeof(*p));

	if (p == NULL)
		return NULL;
	p->magic = PROXY_MAGIC;
	p->state = P_CREATED;
	p->admin_fd = -1;
	p->wslot = -1;
	for (unsigned i = 0; i < CONFIG_MAX_LISTEN; i++)
		p->listen_fd[i] = -1;
	return p;
}

int
eas_kcd_proxy_new_from_file(const char *path, struct eas_kcd_proxy **out, char *err,
    size_t errlen)
{
	struct eas_kcd_proxy *p = NULL;
	char msg[ERRMSG_MAX];

	if (out != NULL)
		*out = NULL;
	if (path == NULL || out == NULL) {
		if (err != NULL && errlen > 0)
			snprintf(err, errlen, "path and out must not be NULL");
		return EAS_KCD_PROXY_E_INVALID;
	}
	if ((p = proxy_alloc()) == NULL || (p->path = strdup(path)) == NULL) {
		if (err != NULL && errlen > 0)
			snprintf(err, errlen, "out of memory");
		free(p);
		return EAS_KCD_PROXY_E_SYSTEM;
	}
	if ((p->cfg = config_from_file(path, msg, sizeof(msg))) == NULL) {
		if (err != NULL && errlen > 0)
			snprintf(err, errlen, "%s", msg);
		eas_kcd_proxy_destroy(p);
		return EAS_KCD_PROXY_E_CONFIG;
	}
	*out = p;
	return EAS_KCD_PROXY_OK;
}

int
eas_kcd_proxy_new(const struct eas_kcd_proxy_config *cfg, struct eas_kcd_proxy **out,
    char *err, size_t errlen)
{
	struct eas_kcd_proxy *p = NULL;
	char msg[ERRMSG_MAX];

	if (out != NULL)
		*out = NULL;
	if (cfg == NULL || cfg->magic != ECFG_MAGIC || out == NULL) {
		if (err != NULL && errlen > 0)
			snprintf(err, errlen, "cfg (from eas_kcd_proxy_config_new) and out must "
			    "not be NULL");
		return EAS_KCD_PROXY_E_INVALID;
	}
	if ((p = proxy_alloc()) == NULL || (p->src = config_copy(cfg)) == NULL) {
		if (err != NULL && errlen > 0)
			snprintf(err, errlen, "out of memory");
		free(p);
		return EAS_KCD_PROXY_E_SYSTEM;
	}
	if ((p->cfg = config_from_pairs(p->src, msg, sizeof(msg))) == NULL) {
		if (err != NULL && errlen > 0)
			snprintf(err, errlen, "%s", msg);
		eas_kcd_proxy_destroy(p);
		return EAS_KCD_PROXY_E_CONFIG;
	}
	*out = p;
	return EAS_KCD_PROXY_OK;
}

int
eas_kcd_proxy_set_kcd_mode(struct eas_kcd_proxy *p, enum eas_kcd_proxy_kcd_mode mode)
{
	if (!check(p))
		return EAS_KCD_PROXY_E_INVALID;
	if (mode != EAS_KCD_PROXY_KCD_PROCESS && mode != EAS_KCD_PROXY_KCD_THREAD) {
		set_err(p, "kcd mode %d is neither EAS_KCD_PROXY_KCD_PROCESS nor _THREAD", (int)mode);
		return EAS_KCD_PROXY_E_INVALID;
	}
	if (p->state != P_CREATED) {
		set_err(p, "the kcd mode is chosen before eas_kcd_proxy_start");
		return EAS_KCD_PROXY_E_STATE;
	}
	p->mode = mode;
	return EAS_KCD_PROXY_OK;
}

unsigned
eas_kcd_proxy_generation(const struct eas_kcd_proxy *p)
{
	return check(p) ? p->serving : 0;
}

/* ---- hooks --------------------------------------------------------------------- */

int
eas_kcd_proxy_set_identity_hook(struct eas_kcd_proxy *p, eas_kcd_proxy_identity_fn *fn, void *arg)
{
	if (!check(p))
		return EAS_KCD_PROXY_E_INVALID;
	p->hooks.identity = fn;
	p->hooks.identity_arg = arg;
	return EAS_KCD_PROXY_OK;
}

int
eas_kcd_proxy_set_authorize_hook(struct eas_kcd_proxy *p, eas_kcd_proxy_authorize_fn *fn,
    void *arg)
{
	if (!check(p))
		return EAS_KCD_PROXY_E_INVALID;
	p->hooks.authorize = fn;
	p->hooks.authorize_arg = arg;
	return EAS_KCD_PROXY_OK;
}

int
eas_kcd_proxy_set_log_hook(struct eas_kcd_proxy *p, eas_kcd_proxy_log_fn *fn, void *arg)
{
	if (!check(p))
		return EAS_KCD_PROXY_E_INVALID;
	p->hooks.log = fn;
	p->hooks.log_arg = arg;
	return EAS_KCD_PROXY_OK;
}

/* ---- listening sockets ------------------------------------------------------------ */

/* The listening sockets a configuration needs: p's own where the address
 * stays (so no connection is lost across a reload), new ones (fresh)
 * elsewhere. */
struct lset {
	unsigned n;
	int fd[CONFIG_MAX_LISTEN];
	int fresh[CONFIG_MAX_LISTEN];
	int admin;			/* -1 none */
	int admin_fresh;
};

static void
listeners_abort(struct lset *ls)
{
	for (unsigned i = 0; i < ls->n; i++)
		if (ls->fresh[i])
			close(ls->fd[i]);
	if (ls->admin >= 0 && ls->admin_fresh)
		close(ls->admin);
	ls->n = 0;
	ls->admin = -1;
}

/* Bind what cfg needs and p does not have; 0, or -1 with p->errmsg set
 * (nothing bound then). p's sockets are untouched. */
static int
listeners_prepare(struct eas_kcd_proxy *p, const struct config *cfg, struct lset *ls)
{
	int used[CONFIG_MAX_LISTEN] = { 0 };
	char err[512];

	memset(ls, 0, sizeof(*ls));
	ls->admin = -1;
	for (unsigned n = 0; n < cfg->server.n_listen; n++) {
		const struct config_addr *a = &cfg->server.listen[n];

		ls->fd[n] = -1;
		for (unsigned j = 0; j < p->n_listen && ls->fd[n] < 0; j++)
			if (p->listen_fd[j] >= 0 && !used[j] && proc_addr_equal(a, &p->listen_addr[j])) {
				ls->fd[n] = p->listen_fd[j];
				used[j] = 1;
			}
		if (ls->fd[n] < 0) {
			if ((ls->fd[n] = proc_listen_socket(a, err, sizeof(err))) < 0) {
				set_err(p, "%s", err);
				listeners_abort(ls);
				return -1;
			}
			ls->fresh[n] = 1;
		}
		ls->n = n + 1;
	}
	if (cfg->server.has_admin) {
		if (p->admin_fd >= 0 && proc_addr_equal(&cfg->server.admin_listen, &p->admin_addr))
			ls->admin = p->admin_fd;
		else if ((ls->admin = proc_listen_socket(&cfg->server.admin_listen, err,
		    sizeof(err))) < 0) {
			set_err(p, "admin_listen: %s", err);
			listeners_abort(ls);
			return -1;
		}
		else
			ls->admin_fresh = 1;
	}
	return 0;
}

/* ls becomes p's: sockets for addresses cfg no longer has are closed (the
 * workers of older generations hold their own copies while they drain). */
static void
listeners_commit(struct eas_kcd_proxy *p, const struct config *cfg, const struct lset *ls)
{
	for (unsigned j = 0; j < p->n_listen; j++) {
		int kept = 0;

		for (unsigned i = 0; i < ls->n; i++)
			kept |= ls->fd[i] == p->listen_fd[j];
		if (!kept && p->listen_fd[j] >= 0)
			close(p->listen_fd[j]);
	}
	if (p->admin_fd >= 0 && p->admin_fd != ls->admin)
		close(p->admin_fd);
	for (unsigned i = 0; i < CONFIG_MAX_LISTEN; i++)
		p->listen_fd[i] = i < ls->n ? ls->fd[i] : -1;
	for (unsigned i = 0; i < ls->n; i++)
		p->listen_addr[i] = cfg->server.listen[i];
	p->n_listen = ls->n;
	p->admin_fd = ls->admin;
	if (ls->admin >= 0)
		p->admin_addr = cfg->server.admin_listen;
}

static void
listeners_close(struct eas_kcd_proxy *p)
{
	for (unsigned i = 0; i < p->n_listen; i++)
		if (p->listen_fd[i] >= 0)
			close(p->listen_fd[i]);
	p->n_listen = 0;
	if (p->admin_fd >= 0)
		close(p->admin_fd);
	p->admin_fd = -1;
}

/* ---- kcd of a generation ----------------------------------------------------------- */

static void on_kcd_msg(struct ipc_chan *ch, const struct ipc_msg *msg, void *arg);
static void on_kcd_close(struct ipc_chan *ch, const char *why, void *arg);
static void gen_activate(struct egen *g);
static void gen_abandon(struct egen *g);

/* libevent's messages in the forked kcd. The embedding program's loop was
 * copied by fork and is never run here, but libevent remembers it as the
 * one holding signals and says so when kcd's own loop takes SIGTERM: that
 * one is expected and dropped. */
static void
child_event_log(int severity, const char *msg)
{
	if (strstr(msg, "Added a signal to event base") != NULL)
		return;
	log_msg(severity >= EVENT_LOG_ERR ? LOG_LVL_ERROR : severity >= EVENT_LOG_WARN ?
	    LOG_LVL_WARN : LOG_LVL_DEBUG, "libevent", "%s", msg);
}

/* In the forked kcd: only its channel survives (device connections,
 * listening sockets and the embedding program's own descriptors must not
 * be held open by kcd), then kcd_main. Never returns. */
static void __attribute__((noreturn))
kcd_child(struct egen *g, int ctl_fd, long parent)
{
	struct sigaction sa;
	sigset_t none;
	int rc;

	proc_parent_death_signal(parent);
	if (ctl_fd != 3) {
		if (dup2(ctl_fd, 3) < 0)
			_exit(1);
		close(ctl_fd);
	}
	if (close_range(4, ~0U, 0) != 0)
		for (int fd = 4; fd < 65536; fd++)
			(void)close(fd);
	(void)log_reopen();		/* a file error log lost its descriptor */
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = SIG_IGN;	/* the embedding program decides */
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);
	sa.sa_handler = SIG_DFL;
	sigaction(SIGTERM, &sa, NULL);	/* kcd_main installs its own */
	sigaction(SIGCHLD, &sa, NULL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	proc_set_title("ekp-kcd");
	log_set_role("kcd");
	event_set_log_callback(child_event_log);
	if (g->kslot >= 0)
		metrics_attach(g->p->shm, g->kslot);
	g->kargs.ctl_fd = 3;
	g->kargs.parent = parent;
	rc = kcd_main(&g->kargs);
	/* _exit: the rest of this address space is the embedding program's,
	 * not ours to run atexit handlers or leak checks over */
	_exit(rc);
}

static void *
kcd_thread(void *arg)
{
	struct egen *g = arg;		/* joined before g is freed */
	struct event_base *base;

	if ((base = event_base_new()) == NULL) {
		log_error("embed", "generation %u: kcd thread: cannot create its event loop", g->id);
		close(g->kargs.ctl_fd);
		return NULL;
	}
	(void)kcd_run(base, &g->kargs);	/* takes ctl_fd */
	event_base_free(base);
	return NULL;
}

/* A kcd that closed its control channel before taking anything from it
 * refused to start: its IPC_START_FAILED, if it sent one, is still in
 * ctl_fd (not a channel yet). Into cause ("" when there is none). */
static void
read_start_failure(int ctl_fd, char *cause, size_t cap)
{
	struct ipc_msg msg;
	uint8_t *buf;
	char err[128];

	cause[0] = '\0';
	if ((buf = malloc(IPC_MAX_FRAME)) == NULL)
		return;
	/* kcd sends nothing else before READY; a few frames at most, and
	 * all of them are there: its end is closed */
	for (int i = 0; i < 4 && cause[0] == '\0'; i++) {
		if (ipc_recv_blocking(ctl_fd, buf, IPC_MAX_FRAME, &msg, 0, err, sizeof(err)) != 0)
			break;		/* its end of the stream, or nothing there */
		if (msg.fd >= 0)
			close(msg.fd);
		if (msg.type == IPC_START_FAILED)
			(void)proc_start_failure(msg.data, msg.len, cause, cap);
	}
	free(buf);
}

/*
 * Start g's kcd; *worker_end gets the worker's end of their channel
 * (the caller hands it to the worker). 0, or -1 with p->errmsg set.
 */
static int
gen_kcd_start(struct egen *g, int *worker_end)
{
	struct eas_kcd_proxy *p = g->p;
	int ctl[2] = { -1, -1 }, ch[2] = { -1, -1 };
	uint8_t payload[4];
	uint32_t slot = 0;

	if (ipc_socketpair(ctl) != 0 || ipc_socketpair(ch) != 0) {
		set_err(p, "generation %u: socketpair for kcd: %s", g->id, strerror(errno));
		goto fail;
	}
	memset(&g->kargs, 0, sizeof(g->kargs));
	g->kargs.cfg = g->cfg;
	g->kargs.generation = g->id;
	g->kargs.n_workers = 1;
	if (p->shm != NULL && g->kslot < 0)
		g->kslot = metrics_slot_alloc(p->shm, SLOT_KCD);
	if (p->mode == EAS_KCD_PROXY_KCD_PROCESS) {
		long parent = (long)getpid();
		pid_t pid;

		fflush(NULL);
		if ((pid = fork()) < 0) {
			set_err(p, "generation %u: fork for kcd: %s", g->id, strerror(errno));
			goto fail;
		}
		if (pid == 0)
			kcd_child(g, ctl[1], parent);
		g->kpid = pid;
		if (g->kslot >= 0)
			p->shm->slot[g->kslot].pid = (uint32_t)pid;
		close(ctl[1]);
	} else {
		sigset_t all, old;
		int e;

		g->kargs.ctl_fd = ctl[1];
		if (g->kslot >= 0)
			g->kargs.tgt_slot = &p->shm->slot[g->kslot];	/* not the worker's */
		/* process-directed signals go to the embedding program's threads */
		sigfillset(&all);
		pthread_sigmask(SIG_BLOCK, &all, &old);
		e = pthread_create(&g->kthread, NULL, kcd_thread, g);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		if (e != 0) {
			set_err(p, "generation %u: cannot start the kcd thread: %s", g->id, strerror(e));
			goto fail;
		}
		g->kthread_live = 1;	/* the thread owns ctl[1] now */
	}
	ctl[1] = -1;
	g->kcd_started_ms = proc_now_ms();
	g->kcause[0] = '\0';
	/* kcd's end of the worker's channel goes first, on the bare socket
	 * (empty: the send does not wait). It fails when kcd has already
	 * closed its end: it refused to start before it read its channel,
	 * and what it said why is still there to read (a channel that had
	 * failed the send would have dropped it) */
	memcpy(payload, &slot, sizeof(payload));
	if (ipc_send_blocking(ctl[0], IPC_WORKER_CHANNEL, 0, payload, sizeof(payload),
	    ch[0]) != 0) {
		int e = errno;

		read_start_failure(ctl[0], g->kcause, sizeof(g->kcause));
		if (g->kcause[0] != '\0')
			set_err(p, "generation %u: kcd exited at start, before it took its channel "
			    "to the worker: %s", g->id, g->kcause);
		else
			set_err(p, "generation %u: kcd exited at start, before it took its channel "
			    "to the worker (%s; kcd's own error line says why)", g->id, strerror(e));
		goto stop;
	}
	/* takes ctl[0] even on failure: kcd then sees EOF and leaves */
	g->kctl = ipc_chan_new(p->base, ctl[0], "kcd", on_kcd_msg, on_kcd_close, g);
	ctl[0] = -1;
	if (g->kctl == NULL) {
		set_err(p, "generation %u: cannot hand kcd its channel to the worker", g->id);
		goto stop;
	}
	close(ch[0]);			/* kcd has its copy */
	*worker_end = ch[1];
	log_info("embed", "generation %u: kcd started (%s)", g->id,
	    p->mode == EAS_KCD_PROXY_KCD_PROCESS ? "helper process" : "thread");
	return 0;
stop:
	/* kcd runs (or ran): it sees EOF, if it is still there, and leaves */
	if (ctl[0] >= 0)
		close(ctl[0]);
	close(ch[0]);
	close(ch[1]);
	gen_kcd_stop(g, proc_now_ms());
	return -1;
fail:
	for (int i = 0; i < 2; i++) {
		if (ctl[i] >= 0)
			close(ctl[i]);
		if (ch[i] >= 0)
			close(ch[i]);
	}
	return -1;
}

/* 1 once g's kcd has exited and been reaped (or never ran). */
static int
kcd_reap(struct egen *g)
{
	if (g->kpid > 0) {
		int st;
		pid_t r = waitpid(g->kpid, &st, WNOHANG);

		if (r == g->kpid || (r < 0 && errno == ECHILD)) {
			if (r == g->kpid && WIFSIGNALED(st))
				log_warn("embed", "generation %u: kcd (pid %ld) ended by signal %d",
				    g->id, (long)g->kpid, WTERMSIG(st));
			g->kpid = 0;
		} else if (g->kill_at_ms != 0 && proc_now_ms() >= g->kill_at_ms) {
			log_warn("embed", "generation %u: kcd (pid %ld) still running past its "
			    "deadline; killing it", g->id, (long)g->kpid);
			kill(g->kpid, SIGKILL);
			g->kill_at_ms = 0;
		}
	}
	if (g->kthread_live && pthread_tryjoin_np(g->kthread, NULL) == 0)
		g->kthread_live = 0;
	if (g->kpid == 0 && !g->kthread_live && g->kslot >= 0 && g->p->shm != NULL) {
		metrics_slot_release(g->p->shm, g->kslot);
		g->kslot = -1;
	}
	return g->kpid == 0 && !g->kthread_live;
}

static void
on_reap(evutil_socket_t fd, short what, void *arg)
{
	struct egen *g = arg;
	struct timeval tv = { 0, REAP_POLL_MS * 1000 };

	(void)fd;
	(void)what;
	assert(g->magic == EGEN_MAGIC);
	if (!kcd_reap(g)) {
		/* while its channel is open, its close will say when to look */
		if (g->kctl == NULL || g->kill_at_ms != 0)
			evtimer_add(g->reap_ev, &tv);
		return;
	}
	gen_maybe_free(g);		/* may free g */
}

/* Ask g's kcd to finish by deadline_ms. It is looked for when its channel
 * closes (on_kcd_close), and once more at the deadline, when a helper
 * process that is still there is killed. */
static void
gen_kcd_stop(struct egen *g, uint64_t deadline_ms)
{
	uint64_t now = proc_now_ms(), wait = REAP_POLL_MS;
	struct timeval tv;
	uint8_t payload[8];

	if (g->kctl != NULL) {
		memcpy(payload, &deadline_ms, sizeof(payload));
		if (ipc_send(g->kctl, IPC_SHUTDOWN, 0, payload, sizeof(payload), -1) != 0) {
			ipc_chan_free(g->kctl);	/* EOF drains it as well */
			g->kctl = NULL;
		}
	}
	if (g->kpid > 0)
		g->kill_at_ms = deadline_ms + KILL_GRACE_MS;
	if (g->kctl != NULL && g->kill_at_ms == 0)
		return;			/* a thread: on_kcd_close looks for it */
	if (g->kctl != NULL && g->kill_at_ms > now)
		wait = g->kill_at_ms - now;
	tv.tv_sec = (time_t)(wait / 1000u);
	tv.tv_usec = (suseconds_t)((wait % 1000u) * 1000u);
	evtimer_add(g->reap_ev, &tv);
}

static void
on_kcd_restart(evutil_socket_t fd, short what, void *arg)
{
	struct egen *g = arg;
	int wend = -1;

	(void)fd;
	(void)what;
	assert(g->magic == EGEN_MAGIC);
	if (g->retiring || g->w == NULL || g->kctl != NULL || !kcd_reap(g))
		return;
	if (gen_kcd_start(g, &wend) != 0) {
		struct timeval tv;

		log_error("embed", "%s; trying again", g->p->errmsg);
		g->backoff_ms = g->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : g->backoff_ms * 2;
		tv.tv_sec = (time_t)(g->backoff_ms / 1000u);
		tv.tv_usec = (suseconds_t)((g->backoff_ms % 1000u) * 1000u);
		evtimer_add(g->restart_ev, &tv);
		return;
	}
	if (kcd_client_set_channel(front_kcd(g->w), wend) != 0)	/* takes wend */
		log_error("embed", "generation %u: the worker cannot use its new kcd channel", g->id);
}

static void
on_kcd_msg(struct ipc_chan *ch, const struct ipc_msg *msg, void *arg)
{
	struct egen *g = arg;

	(void)ch;
	assert(g->magic == EGEN_MAGIC);
	if (msg->fd >= 0)
		close(msg->fd);
	if (msg->type == IPC_START_FAILED && !g->kcd_ready &&
	    proc_start_failure(msg->data, msg->len, g->kcause, sizeof(g->kcause)) == 0) {
		/* its own error line says the same; its channel closes next */
		log_debug("embed", "generation %u: kcd could not start: %s", g->id, g->kcause);
		return;
	}
	if (msg->type != IPC_READY || msg->len != 0) {
		log_error("embed", "generation %u: ignored an unexpected %s (%zu bytes) from kcd",
		    g->id, ipc_type_name(msg->type), msg->len);
		return;
	}
	g->kcd_ready = 1;
	g->backoff_ms = 0;
	if (g->p->mode == EAS_KCD_PROXY_KCD_THREAD && g->kslot >= 0)
		g->p->shm->slot[g->kslot].kcd_ready = 1;	/* /readyz; the thread writes ours */
	log_info("embed", "generation %u: kcd ready", g->id);
	if (!g->active && !g->retiring)
		gen_activate(g);
}

static void
on_kcd_close(struct ipc_chan *ch, const char *why, void *arg)
{
	struct egen *g = arg;
	struct eas_kcd_proxy *p = g->p;
	struct timeval tv = { 0, REAP_POLL_MS * 1000 };

	assert(g->magic == EGEN_MAGIC && g->kctl == ch);
	ipc_chan_free(ch);
	g->kctl = NULL;
	if (g->kslot >= 0 && p->shm != NULL)
		p->shm->slot[g->kslot].kcd_ready = 0;
	if (g->retiring || p->state != P_RUNNING) {
		evtimer_add(g->reap_ev, &tv);	/* expected: it drained */
		return;
	}
	g->kcd_ready = 0;
	if (!g->active) {
		/* a reload whose kcd never came up: the serving generation stays */
		log_error("embed", "reload failed: generation %u: kcd exited before it was ready "
		    "(%s)%s%s; generation %u keeps serving", g->id, why,
		    g->kcause[0] != '\0' ? ": " : "", g->kcause, p->serving);
		gen_abandon(g);
		evtimer_add(g->reap_ev, &tv);
		return;
	}
	if (proc_now_ms() - g->kcd_started_ms >= 60000u || g->backoff_ms == 0)
		g->backoff_ms = BACKOFF_MIN_MS;
	log_error("embed", "generation %u: kcd exited unexpectedly (%s); starting it again "
	    "in %u ms", g->id, why, g->backoff_ms);
	tv.tv_sec = (time_t)(g->backoff_ms / 1000u);
	tv.tv_usec = (suseconds_t)((g->backoff_ms % 1000u) * 1000u);
	evtimer_add(g->restart_ev, &tv);
}

/* ---- generations ------------------------------------------------------------------- */

static void on_stopped(evutil_socket_t fd, short what, void *arg);

static void
on_drained(struct worker *w, void *arg)
{
	struct egen *g = arg;

	assert(g->magic == EGEN_MAGIC && g->w == w);
	worker_free(w);			/* closes what is left; its kcd channel too */
	g->w = NULL;
	log_info("embed", "generation %u drained", g->id);
	gen_maybe_free(g);
}

/* Free g in this process: its worker, its kcd (waited for). */
static void
gen_free(struct egen *g)
{
	if (g == NULL)
		return;
	assert(g->magic == EGEN_MAGIC);
	if (g->w != NULL)
		worker_free(g->w);
	if (g->kctl != NULL)
		ipc_chan_free(g->kctl);	/* EOF: kcd drains, no worker left: it exits */
	g->kctl = NULL;
	if (g->kpid > 0) {
		uint64_t until = proc_now_ms() + DESTROY_WAIT_MS;

		while (!kcd_reap(g) && proc_now_ms() < until)
			usleep(10000);
		if (g->kpid > 0) {
			kill(g->kpid, SIGKILL);
			(void)waitpid(g->kpid, NULL, 0);
			g->kpid = 0;
		}
	}
	if (g->kthread_live) {
		pthread_join(g->kthread, NULL);
		g->kthread_live = 0;
	}
	if (g->kslot >= 0 && g->p->shm != NULL)
		metrics_slot_release(g->p->shm, g->kslot);
	if (g->reap_ev != NULL)
		event_free(g->reap_ev);
	if (g->restart_ev != NULL)
		event_free(g->restart_ev);
	if (g->start_ev != NULL)
		event_free(g->start_ev);
	config_free(g->cfg);
	g->magic = 0;
	free(g);
}

/* A retiring generation whose worker drained and whose kcd is gone is
 * forgotten; the last one of a stopping proxy ends the stop. */
static void
gen_maybe_free(struct egen *g)
{
	struct eas_kcd_proxy *p = g->p;
	struct egen **pp;

	if (!g->retiring || g->w != NULL || g->kctl != NULL || !kcd_reap(g))
		return;
	for (pp = &p->gens; *pp != NULL && *pp != g; pp = &(*pp)->next)
		;
	if (*pp == g)
		*pp = g->next;
	log_info("embed", "generation %u finished", g->id);
	gen_free(g);
	if (p->state == P_STOPPING && p->gens == NULL) {
		p->state = P_STOPPED;
		event_active(p->stopped_ev, EV_TIMEOUT, 1);
	}
}

/* Stop g serving: its worker drains within its shutdown_timeout, then its
 * kcd. */
static void
gen_retire(struct egen *g, const char *why)
{
	uint64_t deadline = proc_now_ms() + g->cfg->server.shutdown_timeout;

	if (g->retiring)
		return;
	g->retiring = 1;
	/* /readyz judges the serving generation's kcd, not this one's */
	if (g->kslot >= 0 && g->p->shm != NULL)
		metrics_slot_retire(g->p->shm, g->kslot);
	evtimer_del(g->restart_ev);
	evtimer_del(g->start_ev);
	if (g->w != NULL)
		worker_drain(g->w, deadline, why);	/* on_drained follows */
	/* kcd outlives the worker's drain: requests in flight need tokens;
	 * it leaves when the worker's channel closes, or at its deadline */
	gen_kcd_stop(g, deadline + 1000u);
}

/* A generation that never served is given up (its kcd failed, hung, or a
 * newer reload supersedes it): its worker, which never accepted, is freed;
 * its kcd, if still there, is stopped by the caller. */
static void
gen_abandon(struct egen *g)
{
	g->retiring = 1;
	evtimer_del(g->start_ev);
	evtimer_del(g->restart_ev);
	if (g->w != NULL) {
		worker_free(g->w);
		g->w = NULL;
	}
}

/* A reload's kcd is not READY in time. A helper process has no worker and
 * nothing in flight, and a hung one reads no SHUTDOWN: it is killed at
 * once (its channel closed first). A thread cannot be killed: it is asked
 * to stop and joined whenever it returns. */
static void
on_start_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct egen *g = arg;
	struct timeval tv = { 0, REAP_POLL_MS * 1000 };

	(void)fd;
	(void)what;
	assert(g->magic == EGEN_MAGIC);
	if (g->active || g->retiring)
		return;
	log_error("embed", "reload failed: generation %u: kcd not ready within %u ms%s; "
	    "generation %u keeps serving", g->id, KCD_READY_TIMEOUT_MS,
	    g->kpid > 0 ? ", killed" : "", g->p->serving);
	gen_abandon(g);
	if (g->kpid > 0) {
		if (g->kctl != NULL) {
			ipc_chan_free(g->kctl);
			g->kctl = NULL;
		}
		kill(g->kpid, SIGKILL);
		evtimer_add(g->reap_ev, &tv);
	} else {
		gen_kcd_stop(g, proc_now_ms());
	}
}

/* g's kcd is ready: g accepts devices, every other generation drains. */
static void
gen_activate(struct egen *g)
{
	struct eas_kcd_proxy *p = g->p;

	if (!g->active) {
		g->active = 1;
		evtimer_del(g->start_ev);
		worker_start(g->w);
		p->serving = g->id;
		log_info("embed", "generation %u serving on %u sockets", g->id, p->n_listen);
	}
	for (struct egen *o = p->gens; o != NULL; o = o->next)
		if (o != g && !o->retiring)
			gen_retire(o, o->id < g->id ? "a newer generation serves" :
			    "superseded");
}

/*
 * A new generation with cfg (taken over in every case) on the listening
 * sockets ls (duplicated: ls stays the caller's), its kcd started and its
 * worker built (not accepting until activated). Returns it, or NULL with
 * p->errmsg set.
 */
static struct egen *
gen_new(struct eas_kcd_proxy *p, struct config *cfg, const struct lset *ls)
{
	struct worker_params wp;
	struct egen *g;
	char err[1024];
	int wend = -1;

	if ((g = calloc(1, sizeof(*g))) == NULL) {
		config_free(cfg);
		set_err(p, "out of memory");
		return NULL;
	}
	g->magic = EGEN_MAGIC;
	g->p = p;
	g->id = ++p->next_gen;
	g->cfg = cfg;
	g->kslot = -1;
	if ((g->reap_ev = evtimer_new(p->base, on_reap, g)) == NULL ||
	    (g->restart_ev = evtimer_new(p->base, on_kcd_restart, g)) == NULL ||
	    (g->start_ev = evtimer_new(p->base, on_start_timeout, g)) == NULL) {
		set_err(p, "out of memory");
		goto fail;
	}
	memset(&wp, 0, sizeof(wp));
	wp.cfg = cfg;
	wp.slot = 0;
	wp.generation = g->id;
	wp.admin_fd = -1;
	wp.kcd_fd = -1;
	wp.hooks = &p->hooks;
	wp.drained = on_drained;
	wp.drained_arg = g;
	if (RAND_bytes(wp.ticket_keys, sizeof(wp.ticket_keys)) != 1) {
		set_err(p, "no random bytes for the TLS ticket keys");
		goto fail;
	}
	for (unsigned i = 0; i < ls->n; i++) {
		if ((wp.listen_fd[i] = fcntl(ls->fd[i], F_DUPFD_CLOEXEC, 0)) < 0) {
			set_err(p, "cannot share a listening socket: %s", strerror(errno));
			for (unsigned j = 0; j < i; j++)
				close(wp.listen_fd[j]);
			goto fail;
		}
		wp.n_listen = i + 1;
	}
	if (ls->admin >= 0 && (wp.admin_fd = fcntl(ls->admin, F_DUPFD_CLOEXEC, 0)) < 0) {
		set_err(p, "cannot share admin_listen: %s", strerror(errno));
		for (unsigned j = 0; j < wp.n_listen; j++)
			close(wp.listen_fd[j]);
		goto fail;
	}
	/* the worker first: TLS material and device lists are the usual
	 * reasons a generation cannot start, and they need no kcd */
	if ((g->w = worker_new(p->base, &wp, err, sizeof(err))) == NULL) {	/* takes the fds */
		set_err(p, "generation %u: %s", g->id, err);
		goto fail;
	}
	if (gen_kcd_start(g, &wend) != 0)
		goto fail;
	if (kcd_client_set_channel(front_kcd(g->w), wend) != 0) {	/* takes wend */
		set_err(p, "generation %u: the worker cannot use its kcd channel", g->id);
		goto fail;
	}
	g->next = p->gens;
	p->gens = g;
	return g;
fail:
	gen_free(g);
	return NULL;
}

/* ---- life cycle ------------------------------------------------------------------------ */

/* Release what start took of the process (the one started proxy). */
static void
process_release(struct eas_kcd_proxy *p)
{
	if (started != p)
		return;
	access_log_close();
	metrics_detach();
	if (p->shm != NULL)
		munmap(p->shm, sizeof(*p->shm));
	p->shm = NULL;
	p->wslot = -1;
	log_close();
	started = NULL;
}

static int
open_logs(struct eas_kcd_proxy *p, const struct config *cfg)
{
	char err[512];

	if (log_open(cfg->log.error_log, (enum log_level)cfg->log.level, err, sizeof(err)) != 0) {
		set_err(p, "error_log: %s", err);
		return -1;
	}
	if (cfg->log.access_log == NULL)
		access_log_close();
	else if (access_log_open(cfg->log.access_log, cfg->log.access_format, 1, err,
	    sizeof(err)) != 0) {
		set_err(p, "access_log: %s", err);
		return -1;
	}
	return 0;
}

int
eas_kcd_proxy_start(struct eas_kcd_proxy *p, struct event_base *base)
{
	struct sigaction sa;
	struct config *cfg;
	struct egen *g;
	struct lset ls;
	int rc = EAS_KCD_PROXY_E_START;

	if (!check(p))
		return EAS_KCD_PROXY_E_INVALID;
	if (base == NULL) {
		set_err(p, "base must be the caller's event_base");
		return EAS_KCD_PROXY_E_INVALID;
	}
	if (p->state != P_CREATED) {
		set_err(p, "a proxy is started once; make a new one");
		return EAS_KCD_PROXY_E_STATE;
	}
	if (started != NULL) {
		set_err(p, "another proxy is started in this process (one per process)");
		return EAS_KCD_PROXY_E_BUSY;
	}
	started = p;
	p->base = base;
	/* a device that hangs up mid-answer must not kill the process */
	if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
		sa.sa_handler = SIG_IGN;
		sigaction(SIGPIPE, &sa, NULL);
	}
	if ((p->stopped_ev = evtimer_new(base, on_stopped, p)) == NULL ||
	    (p->shm = metrics_shm_create()) == NULL ||
	    (p->wslot = metrics_slot_alloc(p->shm, SLOT_WORKER)) < 0) {
		set_err(p, "cannot set up the metrics: %s", strerror(errno));
		rc = EAS_KCD_PROXY_E_SYSTEM;
		goto fail;
	}
	p->shm->slot[p->wslot].pid = (uint32_t)getpid();
	metrics_attach(p->shm, p->wslot);
	if (open_logs(p, p->cfg) != 0 || listeners_prepare(p, p->cfg, &ls) != 0)
		goto fail;
	cfg = p->cfg;
	p->cfg = NULL;			/* the generation's from here */
	if ((g = gen_new(p, cfg, &ls)) == NULL) {
		listeners_abort(&ls);
		goto fail;
	}
	listeners_commit(p, cfg, &ls);
	gen_activate(g);		/* devices may connect now; kcd answers when ready */
	p->state = P_RUNNING;
	log_info("embed", "eas-kcd-proxy %s started in %s mode", EKP_VERSION,
	    p->mode == EAS_KCD_PROXY_KCD_PROCESS ? "kcd process" : "kcd thread");
	return EAS_KCD_PROXY_OK;
fail:
	listeners_close(p);
	if (p->stopped_ev != NULL)
		event_free(p->stopped_ev);
	p->stopped_ev = NULL;
	process_release(p);
	p->base = NULL;
	if (p->cfg == NULL) {
		/* the config went to the failed generation: load it again so
		 * that the handle stays as it was (a later start may work) */
		char msg[ERRMSG_MAX];
		p->cfg = p->path != NULL ? config_from_file(p->path, msg, sizeof(msg)) :
		    config_from_pairs(p->src, msg, sizeof(msg));
	}
	return rc;
}

/* Load the configuration again; NULL with p->errmsg set. */
static struct config *
reload_config(struct eas_kcd_proxy *p)
{
	struct config *cfg;

	cfg = p->path != NULL ? config_from_file(p->path, p->errmsg, sizeof(p->errmsg)) :
	    config_from_pairs(p->src, p->errmsg, sizeof(p->errmsg));
	return cfg;
}

/* A new generation with cfg (taken over); nothing changes on failure but
 * the message (also logged: a reload that fails after the call returned is
 * logged as well, so the error log has each failed reload once). */
static int
reload(struct eas_kcd_proxy *p, struct config *cfg)
{
	struct egen *g;
	struct lset ls;

	if (listeners_prepare(p, cfg, &ls) != 0) {
		config_free(cfg);
		goto fail;
	}
	if ((g = gen_new(p, cfg, &ls)) == NULL) {	/* takes cfg */
		listeners_abort(&ls);
		goto fail;
	}
	if (open_logs(p, g->cfg) != 0) {
		p->gens = g->next;	/* gen_new put it first */
		g->retiring = 1;
		gen_free(g);
		listeners_abort(&ls);
		goto fail;
	}
	listeners_commit(p, g->cfg, &ls);
	/* a generation still waiting for its kcd is superseded by this one */
	for (struct egen *o = g->next; o != NULL; o = o->next)
		if (!o->active && !o->retiring) {
			gen_abandon(o);
			gen_kcd_stop(o, proc_now_ms());
		}
	log_info("embed", "reload: generation %u starts; generation %u serves until its kcd "
	    "is ready", g->id, p->serving);
	if (!g->active && !g->retiring) {
		struct timeval tv;

		tv.tv_sec = (time_t)(KCD_READY_TIMEOUT_MS / 1000u);
		tv.tv_usec = (suseconds_t)((KCD_READY_TIMEOUT_MS % 1000u) * 1000u);
		evtimer_add(g->start_ev, &tv);
	}
	return EAS_KCD_PROXY_OK;
fail:
	log_error("embed", "reload failed: %s; generation %u keeps serving", p->errmsg, p->serving);
	return EAS_KCD_PROXY_E_START;
}

int
eas_kcd_proxy_reload(struct eas_kcd_proxy *p)
{
	struct config *cfg;

	if (!check(p))
		return EAS_KCD_PROXY_E_INVALID;
	if (p->state != P_RUNNING) {
		set_err(p, "reload needs a started proxy that is not stopping");
		return EAS_KCD_PROXY_E_STATE;
	}
	if ((cfg = reload_config(p)) == NULL)
		return EAS_KCD_PROXY_E_CONFIG;
	return reload(p, cfg);
}

int
eas_kcd_proxy_reload_config(struct eas_kcd_proxy *p, const struct eas_kcd_proxy_config *c)
{
	struct eas_kcd_proxy_config *copy;
	struct config *cfg;

	if (!check(p))
		return EAS_KCD_PROXY_E_INVALID;
	if (c == NULL || c->magic != ECFG_MAGIC) {
		set_err(p, "cfg must come from eas_kcd_proxy_config_new");
		return EAS_KCD_PROXY_E_INVALID;
	}
	if (p->state != P_RUNNING) {
		set_err(p, "reload needs a started proxy that is not stopping");
		return EAS_KCD_PROXY_E_STATE;
	}
	if ((copy = config_copy(c)) == NULL) {
		set_err(p, "out of memory");
		return EAS_KCD_PROXY_E_SYSTEM;
	}
	if ((cfg = config_from_pairs(copy, p->errmsg, sizeof(p->errmsg))) == NULL) {
		eas_kcd_proxy_config_free(copy);
		return EAS_KCD_PROXY_E_CONFIG;
	}
	/* the source of later reloads from now on */
	eas_kcd_proxy_config_free(p->src);
	p->src = copy;
	free(p->path);
	p->path = NULL;
	return reload(p, cfg);
}

int
eas_kcd_proxy_reopen_logs(struct eas_kcd_proxy *p)
{
	const struct config *cfg = NULL;
	char err[512];

	if (!check(p))
		return EAS_KCD_PROXY_E_INVALID;
	if (p->state != P_RUNNING && p->state != P_STOPPING) {
		set_err(p, "logs are open only while the proxy runs");
		return EAS_KCD_PROXY_E_STATE;
	}
	for (struct egen *g = p->gens; g != NULL && cfg == NULL; g = g->next)
		if (g->id == p->serving)
			cfg = g->cfg;
	if (log_reopen() != 0) {
		set_err(p, "cannot reopen the error log (see the error log)");
		return EAS_KCD_PROXY_E_SYSTEM;
	}
	/* a kcd process has its own descriptor of the error log */
	for (struct egen *g = p->gens; g != NULL; g = g->next)
		if (g->kpid > 0 && g->kctl != NULL &&
		    ipc_send(g->kctl, IPC_LOG_REOPEN, 0, NULL, 0, -1) != 0)
			log_warn("embed", "generation %u: cannot ask kcd to reopen its log", g->id);
	if (cfg != NULL && cfg->log.access_log != NULL &&
	    access_log_open(cfg->log.access_log, cfg->log.access_format, 1, err,
	    sizeof(err)) != 0) {
		set_err(p, "access_log: %s", err);
		return EAS_KCD_PROXY_E_SYSTEM;
	}
	return EAS_KCD_PROXY_OK;
}

static void
on_stopped(evutil_socket_t fd, short what, void *arg)
{
	struct eas_kcd_proxy *p = arg;

	(void)fd;
	(void)what;
	assert(p->magic == PROXY_MAGIC);
	log_info("embed", "stopped");
	if (p->stopped != NULL)
		p->stopped(p, p->stopped_arg);	/* may destroy p: nothing after */
}

int
eas_kcd_proxy_stop(struct eas_kcd_proxy *p, eas_kcd_proxy_stopped_fn *done, void *arg)
{
	if (!check(p))
		return EAS_KCD_PROXY_E_INVALID;
	if (p->state != P_RUNNING) {
		set_err(p, p->state == P_CREATED ? "the proxy was never started" :
		    "the proxy is already stopping or stopped");
		return EAS_KCD_PROXY_E_STATE;
	}
	p->state = P_STOPPING;
	p->stopped = done;
	p->stopped_arg = arg;
	log_info("embed", "stopping: draining generation %u", p->serving);
	listeners_close(p);		/* the workers drop their copies as they drain */
	p->serving = 0;
	for (struct egen *g = p->gens; g != NULL; g = g->next)
		gen_retire(g, "the proxy stops");
	if (p->gens == NULL) {
		p->state = P_STOPPED;
		event_active(p->stopped_ev, EV_TIMEOUT, 1);
	}
	return EAS_KCD_PROXY_OK;
}

void
eas_kcd_proxy_destroy(struct eas_kcd_proxy *p)
{
	if (!check(p))
		return;
	while (p->gens != NULL) {
		struct egen *g = p->gens;

		p->gens = g->next;
		gen_free(g);		/* closes its connections, waits for its kcd */
	}
	policy_hooks_release(&p->hooks);
	listeners_close(p);
	if (p->stopped_ev != NULL)
		event_free(p->stopped_ev);
	process_release(p);
	config_free(p->cfg);
	eas_kcd_proxy_config_free(p->src);
	free(p->path);
	p->magic = 0;
	free(p);
}

/* ---- metrics ------------------------------------------------------------------------------ */

static void
add_slot(struct eas_kcd_proxy_metrics *m, const struct metrics_slot *s, int gauges)
{
	for (unsigned r = 0; r < REASON__COUNT; r++) {
		for (unsigned c = 0; c < 6; c++) {
			m->requests += s->requests[r][c];
			if (r == REASON_OK)
				m->requests_ok += s->requests[r][c];
			if (r == REASON_DEVICE_DENIED || r == REASON_DEVICE_QUARANTINED)
				m->requests_denied += s->requests[r][c];
		}
		m->tls_failures += s->tls_failures[r];
	}
	m->tls_handshakes += s->tls_handshakes;
	m->connections_accepted += s->conns_accepted;
	if (gauges) {
		m->connections_open += s->conns_open;
		m->requests_parked += s->parked;
	}
	m->kdc_requests += s->kdc_requests;
	m->kdc_errors += s->kdc_errors;
	m->kcd_cache_hits += s->kcd_cache_hits;
	m->kcd_cache_misses += s->kcd_cache_misses;
	m->kcd_cache_negative_hits += s->kcd_negative_hits;
	m->kcd_tokens_fast += s->kcd_tokens_fast;
	m->kcd_tokens_gss += s->kcd_tokens_gss;
	m->kcd_fast_fallbacks += s->kcd_fast_fallbacks;
	m->kcd_tgt_acquisitions_ok += s->kcd_tgt_ok;
	m->kcd_tgt_acquisitions_errors += s->kcd_tgt_errors;
	m->tokens_ahead_ready += s->tokens_ahead_ready;
	m->tokens_ahead_waited += s->tokens_ahead_waited;
	m->tokens_ahead_unused += s->tokens_ahead_unused;
}

int
eas_kcd_proxy_metrics_get(const struct eas_kcd_proxy *p, struct eas_kcd_proxy_metrics *out,
    size_t size)
{
	struct eas_kcd_proxy_metrics m;

	if (!check(p) || out == NULL || size < offsetof(struct eas_kcd_proxy_metrics, kcd_cache_misses) +
	    sizeof(out->kcd_cache_misses))
		return EAS_KCD_PROXY_E_INVALID;
	memset(&m, 0, sizeof(m));
	if (p->shm != NULL) {
		add_slot(&m, &p->shm->retired, 0);
		for (unsigned i = 0; i < p->shm->nslots; i++)
			if (p->shm->slot[i].kind != SLOT_FREE)
				add_slot(&m, &p->shm->slot[i], 1);
		m.kcd_tgt_valid = metrics_tgt(p->shm, (int64_t)time(NULL), &m.kcd_tgt_end);
	}
	/* an older caller's struct is a prefix of ours: its fields only */
	memcpy(out, &m, size < sizeof(m) ? size : sizeof(m));
	return EAS_KCD_PROXY_OK;
}

uint64_t
eas_kcd_proxy_metrics_reason(const struct eas_kcd_proxy *p, const char *reason)
{
	uint64_t n = 0;

	if (!check(p) || p->shm == NULL || reason == NULL)
		return 0;
	for (unsigned r = 0; r < REASON__COUNT; r++) {
		if (strcmp(reason_token((enum reason)r), reason) != 0)
			continue;
		for (unsigned c = 0; c < 6; c++) {
			n += p->shm->retired.requests[r][c];
			for (unsigned i = 0; i < p->shm->nslots; i++)
				if (p->shm->slot[i].kind != SLOT_FREE)
					n += p->shm->slot[i].requests[r][c];
		}
	}
	return n;
}

size_t
eas_kcd_proxy_metrics_text(const struct eas_kcd_proxy *p, char *buf, size_t len)
{
	if (!check(p) || p->shm == NULL || buf == NULL || len == 0)
		return 0;
	return metrics_render(p->shm, buf, len);
}
