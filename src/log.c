/* log.c — error log: stderr, syslog or a file; see log.h. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>
#include <sys/time.h>

#include <openssl/err.h>
#include <gssapi/gssapi.h>

#include "log.h"

enum log_target { TARGET_STDERR, TARGET_SYSLOG, TARGET_FILE };

static struct {
	enum log_target target;
	enum log_level level;
	int fd;			/* stderr or the file */
	char path[4096];
	const char *role;
} lg = { TARGET_STDERR, LOG_LVL_INFO, 2, "", "main" };

static const char *const level_names[] = { "error", "warn", "info", "debug" };

int
log_level_parse(const char *s)
{
	for (unsigned i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
		if (strcmp(s, level_names[i]) == 0)
			return (int)i;
	return -1;
}

const char *
log_level_name(enum log_level lvl)
{
	return ((unsigned)lvl <= LOG_LVL_DEBUG) ? level_names[lvl] : "?";
}

void
log_set_level(enum log_level level)
{
	lg.level = level;
}

enum log_level
log_get_level(void)
{
	return lg.level;
}

void
log_set_role(const char *role)
{
	lg.role = role;
	if (lg.target == TARGET_SYSLOG) {
		closelog();
		openlog("eas-kcd-proxy", LOG_PID | LOG_NDELAY, LOG_DAEMON);
	}
}

static int
open_file(const char *path, char *err, size_t errlen)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);

	if (fd < 0)
		snprintf(err, errlen, "cannot open error_log %.160s: %s", path, strerror(errno));
	return fd;
}

/* fd (a file just opened) becomes the error log's descriptor. A file
 * already open is replaced in place (dup3 onto its number, close-on-exec
 * kept), never closed first: another thread (kcd's, in the embedding
 * library) may be writing a line to lg.fd at that moment, and a closed
 * or reused number would lose that line or send it elsewhere. */
static void
take_fd(int fd)
{
	if (lg.target == TARGET_FILE && lg.fd > 2 && fd != lg.fd) {
		if (dup3(fd, lg.fd, O_CLOEXEC) == lg.fd) {
			close(fd);
			return;
		}
		close(lg.fd);		/* dup3 failed: the old way */
	}
	lg.target = TARGET_FILE;
	lg.fd = fd;
}

int
log_open(const char *target, enum log_level level, char *err, size_t errlen)
{
	int fd;

	if (strcmp(target, "stderr") == 0) {
		log_close();
		lg.target = TARGET_STDERR;
		lg.fd = 2;
	} else if (strcmp(target, "syslog") == 0) {
		log_close();
		lg.target = TARGET_SYSLOG;
		openlog("eas-kcd-proxy", LOG_PID | LOG_NDELAY, LOG_DAEMON);
	} else {
		if (target[0] != '/') {
			snprintf(err, errlen, "error_log must be stderr, syslog or an absolute path, not '%s'", target);
			return -1;
		}
		if (strlen(target) >= sizeof(lg.path)) {
			snprintf(err, errlen, "error_log path too long");
			return -1;
		}
		if ((fd = open_file(target, err, errlen)) < 0)
			return -1;
		if (lg.target != TARGET_FILE)
			log_close();	/* syslog closed; stderr is not ours */
		take_fd(fd);
		snprintf(lg.path, sizeof(lg.path), "%s", target);
	}
	lg.level = level;
	return 0;
}

int
log_reopen(void)
{
	char err[256];
	int fd;

	if (lg.target != TARGET_FILE)
		return 0;
	if ((fd = open_file(lg.path, err, sizeof(err))) < 0) {
		log_error("log", "%s (keeping the old file open)", err);
		return -1;
	}
	take_fd(fd);
	return 0;
}

int
log_reopen_fd(int fd)
{
	if (fd < 0)
		return -1;
	if (lg.target != TARGET_FILE) {
		close(fd);
		return 0;
	}
	take_fd(fd);
	return 0;
}

void
log_close(void)
{
	if (lg.target == TARGET_FILE && lg.fd > 2)
		close(lg.fd);
	else if (lg.target == TARGET_SYSLOG)
		closelog();
	lg.target = TARGET_STDERR;
	lg.fd = 2;
}

/* Copy src into dst escaping bytes a log reader could be fooled by. */
static size_t
escape(char *dst, size_t cap, const char *src)
{
	static const char hex[] = "0123456789abcdef";
	size_t n = 0;

	for (; *src != '\0' && n + 5 < cap; src++) {
		unsigned char c = (unsigned char)*src;
		if (c < 0x20 || c == 0x7f) {
			dst[n++] = '\\';
			dst[n++] = 'x';
			dst[n++] = hex[c >> 4];
			dst[n++] = hex[c & 15];
		} else {
			dst[n++] = (char)c;
		}
	}
	dst[n] = '\0';
	return n;
}

void
log_vmsg(enum log_level lvl, const char *component, const char *fmt, va_list ap)
{
	char msg[2048], line[4096 + 128];
	int saved = errno;
	size_t n;

	if (lvl > lg.level)
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);

	if (lg.target == TARGET_SYSLOG) {
		static const int prio[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };
		escape(line, sizeof(line), msg);
		syslog(prio[lvl], "%s %s: %s", lg.role, component, line);
		errno = saved;
		return;
	}

	struct timeval tv;
	struct tm tm;
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
	n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03ldZ [%ld] %s %s %s: ",
	    (long)(tv.tv_usec / 1000), (long)getpid(), lg.role, level_names[lvl], component);
	n += escape(line + n, sizeof(line) - n - 1, msg);
	line[n++] = '\n';
	/* one write per line; a short write to a full disk is dropped */
	if (write(lg.fd, line, n) < 0) {
		/* nowhere left to report it */
	}
	errno = saved;
}

void
log_msg(enum log_level lvl, const char *component, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(lvl, component, fmt, ap);
	va_end(ap);
}

const char *
log_ssl_errors(char *buf, size_t len)
{
	unsigned long e;
	size_t n = 0;
	const char *file, *data, *func;
	int line, flags;

	if (len == 0)
		return buf;
	buf[0] = '\0';
	while ((e = ERR_get_error_all(&file, &line, &func, &data, &flags)) != 0) {
		const char *lib = ERR_lib_error_string(e);
		const char *reason = ERR_reason_error_string(e);
		int w;

		if (n + 1 >= len)
			continue;	/* keep draining the queue */
		w = snprintf(buf + n, len - n, "%s%s:%s%s%s", n ? "; " : "",
		    lib ? lib : "lib?", reason ? reason : "reason?",
		    (flags & ERR_TXT_STRING) && data && *data ? " " : "",
		    (flags & ERR_TXT_STRING) && data ? data : "");
		if (w > 0)
			n = (size_t)w >= len - n ? len - 1 : n + (size_t)w;
	}
	if (n == 0)
		snprintf(buf, len, "no OpenSSL error");
	return buf;
}

static size_t
gss_append(OM_uint32 status, int type, const gss_OID_desc *mech, char *buf, size_t len, size_t n)
{
	OM_uint32 maj, min, ctx = 0;
	gss_buffer_desc text;

	do {
		maj = gss_display_status(&min, status, type, (gss_OID)mech, &ctx, &text);
		if (GSS_ERROR(maj))
			break;
		if (n + 1 < len) {
			int w = snprintf(buf + n, len - n, "%s%.*s", n ? ": " : "",
			    (int)text.length, (const char *)text.value);
			if (w > 0)
				n = (size_t)w >= len - n ? len - 1 : n + (size_t)w;
		}
		gss_release_buffer(&min, &text);
	} while (ctx != 0);
	return n;
}

const char *
log_gss_error(unsigned int major, unsigned int minor,
    const struct gss_OID_desc_struct *mech, char *buf, size_t len)
{
	size_t n = 0;

	if (len == 0)
		return buf;
	buf[0] = '\0';
	n = gss_append(major, GSS_C_GSS_CODE, mech, buf, len, n);
	if (minor != 0)
		n = gss_append(minor, GSS_C_MECH_CODE, mech, buf, len, n);
	if (n == 0)
		snprintf(buf, len, "GSS major 0x%x minor %u", major, minor);
	return buf;
}
