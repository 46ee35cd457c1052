/*
 * proc.h — the parent process: listening sockets, generations of children,
 * supervision, signals; and the process plumbing the children share
 * (privilege drop, parent-death handling).
 *
 * A generation is {config, listening sockets, kcd, workers}. The parent runs
 * one generation at start; SIGHUP loads the file again and, when it is
 * valid, starts a new generation on the same listening sockets: its kcd
 * first, its workers only once that kcd has reported IPC_READY (within
 * 10 s, else the reload is abandoned), so no new worker accepts a device
 * without a kcd. Once every child of the new generation has reported
 * IPC_READY, the older generations get IPC_SHUTDOWN and drain; a child of
 * the new generation that exits before that abandons the reload. The
 * parent forgets a generation when its last child has exited
 * (docs/architecture.md, "Reload is a new generation").
 *
 * Control messages (parent <-> child, payloads built with ipc_put_*):
 *   SHUTDOWN        p->c  u64 deadline: CLOCK_MONOTONIC ms (proc_now_ms);
 *                         stop accepting, finish, exit by then
 *   LOG_REOPEN      p->c  (empty) + fd of the reopened error log, or no fd
 *                         when the target is not a file
 *   ACCESS_LOG_REOPEN p->w (empty) + fd of the reopened access log, its
 *                         W3C directives already written when the file is
 *                         new (access_log_prepare)
 *   KCD_CHANNEL     p->w  (empty) + fd: the worker's end of a new channel to
 *                         kcd (kcd was restarted)
 *   WORKER_CHANNEL  p->k  u32 worker slot + fd: kcd's end of that worker's
 *                         channel (new worker, or kcd was restarted)
 *   READY           c->p  (empty): start-up done
 *   START_FAILED    c->p  str cause: start-up failed before READY (kcd:
 *                         its krb5.conf, its keytab, its Kerberos core; a
 *                         worker: its TLS files, access log, privileges),
 *                         the text of the child's own error line; the child
 *                         exits next. The parent names it on its "reload
 *                         failed" or restart line, read with
 *                         proc_start_failure: text from a child is
 *                         untrusted (bounded, no control bytes). Refused
 *                         once the child is READY.
 *   STATS           c->p  reserved; counters travel through metrics.h's
 *                         shared memory instead
 */
#ifndef EKP_PROC_H
#define EKP_PROC_H

#include <stddef.h>
#include <stdint.h>

struct config;

/* Run the parent until SIGTERM/SIGINT. cfg is taken over (freed on return);
 * config_path is the file SIGHUP reloads (absolute when daemonize, since the
 * daemon changes to /). Logs to the configured error_log. Returns the exit
 * status for main(): 0 after a clean stop, 1 when start-up failed. */
int proc_main(struct config *cfg, const char *config_path, int daemonize);

/* CLOCK_MONOTONIC in milliseconds; the same clock in every process, so a
 * deadline can cross IPC. */
uint64_t proc_now_ms(void);

/* Child side, right after fork: die with SIGTERM when the parent dies
 * (PR_SET_PDEATHSIG), and exit at once if it already has. The kernel clears
 * the setting when credentials change, so proc_drop_privileges calls it
 * again. parent is the pid the child was forked from. */
void proc_parent_death_signal(long parent);

/* Drop root to user: initgroups (or setgroups(0) when that fails), setgid,
 * setuid, then verify that root cannot be regained (setuid(0) must fail)
 * and set PR_SET_NO_NEW_PRIVS. A no-op when not running as root (logged).
 * Returns 0, or -1 with the cause in err. */
int proc_drop_privileges(const char *user, const char *chroot_dir, long parent,
    char *err, size_t errlen);

/* A non-blocking, close-on-exec TCP socket bound and listening on a (an IP
 * literal), IPv6 sockets V6ONLY; the fd, or -1 with the cause in err. The
 * parent's listeners, and the embedding library's. */
struct config_addr;
int proc_listen_socket(const struct config_addr *a, char *err, size_t errlen);
/* 1 when a and b are the same numeric address and port. */
int proc_addr_equal(const struct config_addr *a, const struct config_addr *b);

/* The cause a child sent with IPC_START_FAILED (payload data, len bytes),
 * for a log line or an error message: at most cap - 1 bytes (cap >= 8),
 * "..." marking a cut (never inside a UTF-8 sequence), control bytes and
 * NUL as '?'. Returns 0, or -1 with buf "" when the payload is not one
 * string field. The child's text is untrusted: nothing else is read. */
#define PROC_CAUSE_MAX	512	/* bytes of a cause the parent keeps, with the NUL */
int proc_start_failure(const void *data, size_t len, char *buf, size_t cap);

/* Name this process for ps/top and /proc/PID/comm ("ekp-worker-3"). */
void proc_set_title(const char *name);

#endif
