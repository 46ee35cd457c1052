/* access_log.c — W3C extended / JSON access log; see access_log.h. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/time.h>

#include "access_log.h"
#include "codec.h"
#include "log.h"

#define ACCESS_BUF	(32u * 1024u)

static struct {
	int fd;
	enum access_format fmt;
	char path[4096];
	size_t used;
	char buf[ACCESS_BUF];
} al = { .fd = -1 };

static const char w3c_fields[] =
    "date time s-ip cs-method cs-uri-stem cs-uri-query s-port cs-username "
    "c-ip cs(User-Agent) sc-status sc-bytes cs-bytes time-taken "
    "x-device-id x-device-type x-eas-cmd x-reason x-backend x-kdc-ms";

size_t
access_log_header(char *buf, size_t len, uint64_t now_ms)
{
	time_t t = (time_t)(now_ms / 1000u);
	struct tm tm;
	char date[32];
	int n;

	gmtime_r(&t, &tm);
	strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
	n = snprintf(buf, len, "#Software: eas-kcd-proxy %s\n#Version: 1.0\n"
	    "#Date: %s\n#Fields: %s\n", EKP_VERSION, date, w3c_fields);
	return (n < 0 || (size_t)n >= len) ? 0 : (size_t)n;
}

/* A W3C field: "-" when empty; spaces become '+' (as IIS writes them);
 * control bytes, quotes and non-ASCII are %-escaped so a field never
 * breaks the line. */
#define W3C_KEEP(c)	((c) >= 0x21 && (c) < 0x7f && (c) != '"' && (c) != '%')
#define W3C4(c)		W3C_KEEP(c), W3C_KEEP((c) + 1), W3C_KEEP((c) + 2), W3C_KEEP((c) + 3)
#define W3C16(c)	W3C4(c), W3C4((c) + 4), W3C4((c) + 8), W3C4((c) + 12)
#define W3C64(c)	W3C16(c), W3C16((c) + 16), W3C16((c) + 32), W3C16((c) + 48)
/* 1 for the bytes put_w3c copies as they are (one look-up per byte: every
 * field of every request's line passes through it) */
static const unsigned char w3c_keep[256] = {
	W3C64(0), W3C64(64), W3C64(128), W3C64(192)
};
#undef W3C64
#undef W3C16
#undef W3C4
#undef W3C_KEEP

static size_t
put_w3c(char *out, size_t cap, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = 0;

	if (s == NULL || *s == '\0') {
		if (cap < 2)
			return 0;
		out[0] = '-';
		return 1;
	}
	for (;;) {
		/* a run of bytes kept as they are, copied at once; NUL ends
		 * it (w3c_keep[0] is 0). Each byte needs n + 4 < cap where it
		 * goes, so the run's last byte decides. */
		size_t run = 0;
		unsigned char c;

		while (w3c_keep[(unsigned char)s[run]])
			run++;
		if (run > 0) {
			if (n + run + 3 >= cap)
				return 0;
			memcpy(out + n, s, run);
			n += run;
			s += run;
		}
		if ((c = (unsigned char)*s) == '\0')
			break;
		if (n + 4 >= cap)
			return 0;
		if (c == ' ')
			out[n++] = '+';
		else {
			out[n++] = '%';
			out[n++] = hex[c >> 4];
			out[n++] = hex[c & 15];
		}
		s++;
	}
	return n;
}

/* A JSON string value with its quotes; NULL becomes null. */
static size_t
put_json(char *out, size_t cap, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	size_t n = 0;

	if (s == NULL) {
		if (cap < 5)
			return 0;
		memcpy(out, "null", 4);
		return 4;
	}
	if (cap < 3)
		return 0;
	out[n++] = '"';
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;
		if (n + 8 >= cap)
			return 0;
		if (c == '"' || c == '\\') {
			out[n++] = '\\';
			out[n++] = (char)c;
		} else if (c < 0x20 || c == 0x7f || c >= 0x80) {
			/* bytes, not code points: the log never carries raw
			 * non-ASCII from a peer */
			memcpy(out + n, "\\u00", 4);
			n += 4;
			out[n++] = hex[c >> 4];
			out[n++] = hex[c & 15];
		} else
			out[n++] = (char)c;
	}
	out[n++] = '"';
	return n;
}

/*
 * The date and time fields of second t. A busy worker writes thousands of
 * lines a second, all with the same two fields: they are made once per
 * second (gmtime_r and strftime cost more than the rest of the line) and
 * kept for the next line, per thread (an embedding program may format
 * from several).
 */
static void
put_time(time_t t, char date[16], char tod[16])
{
	static _Thread_local struct {
		int valid;
		time_t t;
		char date[16], tod[16];
	} c;

	if (!c.valid || c.t != t) {
		struct tm tm;

		gmtime_r(&t, &tm);
		strftime(c.date, sizeof(c.date), "%Y-%m-%d", &tm);
		strftime(c.tod, sizeof(c.tod), "%H:%M:%S", &tm);
		c.t = t;
		c.valid = 1;
	}
	memcpy(date, c.date, sizeof(c.date));
	memcpy(tod, c.tod, sizeof(c.tod));
}

size_t
access_log_format(const struct access_rec *r, enum access_format fmt, char *buf, size_t len)
{
	char date[16], tod[16], status[24], port[24], scb[24], csb[24], tt[24], kdc[24];
	size_t n = 0, w;
	int i;

	put_time((time_t)(r->start_ms / 1000u), date, tod);
	if (r->status >= 0)
		codec_u64_dec(status, (uint64_t)r->status);
	else
		snprintf(status, sizeof(status), "%d", r->status);
	codec_u64_dec(port, r->s_port);
	codec_u64_dec(scb, r->sc_bytes);
	codec_u64_dec(csb, r->cs_bytes);
	codec_u64_dec(tt, r->time_taken_ms);
	if (r->kdc_ms >= 0)
		codec_u64_dec(kdc, (uint64_t)r->kdc_ms);
	else
		memcpy(kdc, "-", 2);

	const char *vals[] = {
		date, tod, r->s_ip, r->method, r->uri_stem, r->uri_query, port,
		r->username, r->c_ip, r->user_agent, status, scb, csb, tt,
		r->device_id, r->device_type, r->eas_cmd, r->reason, r->backend, kdc,
	};
	static const char *const keys[] = {
		"date", "time", "s_ip", "method", "uri_stem", "uri_query", "s_port",
		"username", "c_ip", "user_agent", "status", "sc_bytes", "cs_bytes",
		"time_taken", "device_id", "device_type", "eas_cmd", "reason",
		"backend", "kdc_ms",
	};
	const int nvals = (int)(sizeof(vals) / sizeof(vals[0]));

	if (fmt == ACCESS_JSON) {
		if (len < 2)
			return 0;
		buf[n++] = '{';
		for (i = 0; i < nvals; i++) {
			int numeric = (i == 6 || (i >= 10 && i <= 13) ||
			    (i == 19 && r->kdc_ms >= 0));
			w = (size_t)snprintf(buf + n, len - n, "%s\"%s\":", i ? "," : "", keys[i]);
			if (w >= len - n)
				return 0;
			n += w;
			if (numeric) {
				w = (size_t)snprintf(buf + n, len - n, "%s", vals[i]);
				if (w >= len - n)
					return 0;
			} else if (i == 19) {
				w = put_json(buf + n, len - n, NULL);
			} else {
				w = put_json(buf + n, len - n, vals[i]);
			}
			if (w == 0)
				return 0;
			n += w;
		}
		if (n + 3 > len)
			return 0;
		buf[n++] = '}';
	} else {
		for (i = 0; i < nvals; i++) {
			if (i > 0) {
				if (n + 2 > len)
					return 0;
				buf[n++] = ' ';
			}
			if ((w = put_w3c(buf + n, len - n, vals[i])) == 0)
				return 0;
			n += w;
		}
		if (n + 2 > len)
			return 0;
	}
	buf[n++] = '\n';
	buf[n] = '\0';
	return n;
}

static void
write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			log_error("access_log", "write %s: %s (lines lost)",
			    al.path[0] ? al.path : "access_log", strerror(errno));
			return;
		}
		p += w;
		n -= (size_t)w;
	}
}

void
access_log_flush(void)
{
	if (al.fd >= 0 && al.used > 0)
		write_all(al.fd, al.buf, al.used);
	al.used = 0;
}

/* The W3C directives into fd when the file is empty. */
static void
header_if_new(int fd, enum access_format fmt)
{
	struct stat st;
	char h[1024];
	struct timeval tv;
	size_t n;

	if (fmt != ACCESS_W3C || fstat(fd, &st) != 0 || st.st_size != 0)
		return;
	gettimeofday(&tv, NULL);
	n = access_log_header(h, sizeof(h),
	    (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u);
	write_all(fd, h, n);
}

static int
open_path(const char *path, char *err, size_t errlen)
{
	int fd;

	if (strlen(path) >= sizeof(al.path)) {
		snprintf(err, errlen, "access_log path too long");
		return -1;
	}
	fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
	if (fd < 0)
		snprintf(err, errlen, "cannot open access_log %s: %s", path, strerror(errno));
	return fd;
}

int
access_log_prepare(const char *path, enum access_format fmt, char *err, size_t errlen)
{
	int fd = open_path(path, err, errlen);

	if (fd >= 0)
		header_if_new(fd, fmt);
	return fd;
}

int
access_log_open(const char *path, enum access_format fmt, int header, char *err, size_t errlen)
{
	int fd;

	if ((fd = open_path(path, err, errlen)) < 0)
		return -1;
	access_log_flush();
	if (al.fd >= 0)
		close(al.fd);
	al.fd = fd;
	al.fmt = fmt;
	snprintf(al.path, sizeof(al.path), "%s", path);
	if (header)
		header_if_new(fd, fmt);
	return 0;
}

void
access_log_reopen_fd(int fd)
{
	if (al.fd < 0) {
		close(fd);
		return;
	}
	/* nothing buffered is lost: it belongs to the old file */
	access_log_flush();
	close(al.fd);
	al.fd = fd;
}

/*
 * A line is formatted straight into the buffer when the room left there is
 * at least a whole line's limit (ACCESS_LINE_MAX), else into a line of its
 * own and copied after a flush when it does not fit: either way the limit
 * and the order of lines are the same, and most lines are not copied.
 */
#define ACCESS_LINE_MAX	8192u	/* with the NUL */

void
access_log_write(const struct access_rec *rec)
{
	char line[ACCESS_LINE_MAX];
	size_t n;

	if (al.fd < 0)
		return;
	if (sizeof(al.buf) - al.used >= ACCESS_LINE_MAX) {
		n = access_log_format(rec, al.fmt, al.buf + al.used, ACCESS_LINE_MAX);
		if (n != 0) {
			al.used += n;
			return;
		}
	} else if ((n = access_log_format(rec, al.fmt, line, sizeof(line))) != 0) {
		if (al.used + n > sizeof(al.buf))
			access_log_flush();
		memcpy(al.buf + al.used, line, n);
		al.used += n;
		return;
	}
	log_warn("access_log", "record too long for one line; dropped (reason %s)",
	    rec->reason ? rec->reason : "-");
}

void
access_log_close(void)
{
	access_log_flush();
	if (al.fd >= 0)
		close(al.fd);
	al.fd = -1;
}
