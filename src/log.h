/*
 * log.h — the error log (SPEC §8): one line per event,
 *   "2026-11-24T18:40:14.123Z [pid] level component: message"
 * on stderr or a file, or "component: message" to syslog. Control bytes in
 * messages are escaped (\xHH) so nothing a peer sends can forge a line.
 * Each line is one write(2), so several processes can share one file.
 * Opening another file or reopening this one replaces the descriptor in
 * place (its number stays): a thread writing a line meanwhile (kcd's, in
 * the embedding library) never writes to a closed or reused descriptor.
 */
#ifndef EKP_LOG_H
#define EKP_LOG_H

#include <stddef.h>
#include <stdarg.h>

enum log_level {
	LOG_LVL_ERROR = 0,
	LOG_LVL_WARN,
	LOG_LVL_INFO,
	LOG_LVL_DEBUG,
};

/* Parse "error|warn|info|debug"; -1 when unknown. */
int log_level_parse(const char *s);
const char *log_level_name(enum log_level lvl);

/* Open target: "stderr", "syslog" or an absolute path (appended, 0640).
 * Returns 0, or -1 with a message in err. The previous target stays in use
 * on failure. */
int log_open(const char *target, enum log_level level, char *err, size_t errlen);
/* Reopen the file target (SIGUSR1, logrotate); no-op for stderr/syslog. */
int log_reopen(void);
/* Like log_reopen, with a descriptor the caller opened (taken over): for a
 * worker that has dropped privileges and can no longer open the root-owned
 * file itself, so the parent opens it and passes it over IPC. Closes fd and
 * returns 0 when the target is not a file. */
int log_reopen_fd(int fd);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* The process role shown in syslog ident and used by tests ("main", "worker",
 * "kcd"). The string must outlive the process' logging. */
void log_set_role(const char *role);
void log_close(void);

void log_msg(enum log_level lvl, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void log_vmsg(enum log_level lvl, const char *component, const char *fmt, va_list ap);

#define log_error(comp, ...) log_msg(LOG_LVL_ERROR, comp, __VA_ARGS__)
#define log_warn(comp, ...)  log_msg(LOG_LVL_WARN, comp, __VA_ARGS__)
#define log_info(comp, ...)  log_msg(LOG_LVL_INFO, comp, __VA_ARGS__)
#define log_debug(comp, ...) \
	do { if (log_get_level() >= LOG_LVL_DEBUG) log_msg(LOG_LVL_DEBUG, comp, __VA_ARGS__); } while (0)

/* Drain OpenSSL's error queue of this thread into buf as
 * "lib:reason; lib:reason" (nginx ngx_ssl_error). Returns buf; "no OpenSSL
 * error" when the queue was empty. */
const char *log_ssl_errors(char *buf, size_t len);

/* Render a GSSAPI major + minor status with every message in the chain
 * (mod_auth_gssapi mag_error). mech may be NULL. Returns buf. */
struct gss_OID_desc_struct;
const char *log_gss_error(unsigned int major, unsigned int minor,
    const struct gss_OID_desc_struct *mech, char *buf, size_t len);

#endif
