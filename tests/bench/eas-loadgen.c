/*
 * eas-loadgen — an Exchange ActiveSync device fleet in one process (or a
 * few, see --procs), for `make bench` (docs/performance.md) and the smoke
 * test tests/integration/test_loadgen.py.
 *
 * Every connection presents a client certificate of its own: --certs DIR
 * holds NAME.pem + NAME.key pairs (the bench writes thousands); the device
 * behind NAME.pem sends User=NAME. Modes:
 *
 *   rps        N keep-alive connections POST a small WBXML Sync for T s;
 *              throughput counts the window after every connection is up
 *   handshake  N connection loops for T s: connect, full TLS handshake with
 *              the client certificate (no resumption), one Sync, close
 *   park       N connections each send one Ping and wait (up to T s) for
 *              the backend's answer; reports how many were parked at peak
 *   stream     N connections each upload (--direction up) or download
 *              (down) S bytes; byte i of a body is i % 256: downloads are
 *              checked byte by byte, uploads by the backend's X-Body-SHA256
 *   cold       N distinct devices send their first Sync all at once
 *
 * Output: human-readable lines, then one machine-readable last line
 *   loadgen: mode=rps ... rps=... p50_ms=... p99_ms=... p999_ms=... errors=N
 * Exit status: 0 when every response had the expected status and nothing
 * failed, 1 when anything failed (unexpected status, TLS, reset, timeout,
 * checksum), 2 on bad usage or setup.
 *
 * Nothing here trusts the server: responses are parsed with bounds and any
 * surprise is counted as an error of a named kind, never asserted on.
 */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define RUN_MAGIC	0x4c47454eu	/* "LGEN" */
#define CONN_MAGIC	0x4c47434eu	/* "LGCN" */

#define HDR_MAX		16384		/* response head we accept */
#define REQ_HEAD_MAX	1024		/* our request head + small body */
#define READ_CHUNK	65536
#define WRITE_CHUNK	65536
#define PAT_LEN		(WRITE_CHUNK + 256)
#define DETAIL_LEN	256
#define MAX_PROCS	64

/* ---- histogram: HDR-like, 2^7 sub-buckets per power of two (< 1.6 %) ---- */
#define HIST_SUB_BITS	7
#define HIST_SUB	(1u << HIST_SUB_BITS)
#define HIST_HALF	(HIST_SUB / 2)
#define HIST_MAX_SHIFT	40
#define HIST_BUCKETS	(HIST_SUB + HIST_MAX_SHIFT * HIST_HALF)

struct hist {
	uint64_t count;
	uint64_t max;
	uint64_t b[HIST_BUCKETS];
};

static unsigned
hist_index(uint64_t v)
{
	unsigned msb, shift;

	if (v < HIST_SUB)
		return (unsigned)v;
	msb = 63u - (unsigned)__builtin_clzll(v);
	shift = msb - HIST_SUB_BITS + 1;	/* v >> shift is in [HALF, SUB) */
	if (shift > HIST_MAX_SHIFT)
		return HIST_BUCKETS - 1;
	return HIST_SUB + (shift - 1) * HIST_HALF + (unsigned)((v >> shift) - HIST_HALF);
}

/* The largest value that lands in bucket i. */
static uint64_t
hist_upper(unsigned i)
{
	unsigned shift;
	uint64_t sub;

	if (i < HIST_SUB)
		return i;
	shift = (i - HIST_SUB) / HIST_HALF + 1;
	sub = (i - HIST_SUB) % HIST_HALF + HIST_HALF;
	return ((sub + 1) << shift) - 1;
}

static void
hist_add(struct hist *h, uint64_t v)
{
	h->b[hist_index(v)]++;
	h->count++;
	if (v > h->max)
		h->max = v;
}

static void
hist_merge(struct hist *into, const struct hist *from)
{
	unsigned i;

	for (i = 0; i < HIST_BUCKETS; i++)
		into->b[i] += from->b[i];
	into->count += from->count;
	if (from->max > into->max)
		into->max = from->max;
}

/* Value (µs) at quantile q, reported as its bucket's upper bound (never
 * above the largest value seen): the figure errs on the slow side. */
static uint64_t
hist_quantile(const struct hist *h, double q)
{
	uint64_t rank, seen = 0, up;
	unsigned i;

	if (h->count == 0)
		return 0;
	rank = (uint64_t)(q * (double)h->count + 0.999999);
	if (rank < 1)
		rank = 1;
	if (rank > h->count)
		rank = h->count;
	for (i = 0; i < HIST_BUCKETS; i++) {
		seen += h->b[i];
		if (seen >= rank) {
			up = hist_upper(i);
			return up < h->max ? up : h->max;
		}
	}
	return h->max;
}

/* ---- errors by kind ------------------------------------------------------ */
#define ERR_KINDS(X)							\
	X(connect,	"TCP connect failed")				\
	X(tls_handshake, "TLS handshake failed")			\
	X(tls_io,	"TLS read/write failed or connection reset")	\
	X(closed,	"server closed before the response was complete") \
	X(timeout,	"no progress within --timeout")			\
	X(parse,	"malformed or unexpected response framing")	\
	X(status,	"unexpected HTTP status")			\
	X(checksum,	"body content or length did not match")

enum err_kind {
#define X(name, text) ERR_##name,
	ERR_KINDS(X)
#undef X
	ERR_MAX
};

static const char *const err_names[ERR_MAX] = {
#define X(name, text) #name,
	ERR_KINDS(X)
#undef X
};

/* Everything a run counts; children of --procs send theirs through a pipe
 * as raw bytes (same binary on both ends), the parent merges. */
struct stats {
	uint64_t requests;		/* responses with the expected status */
	uint64_t requests_in_window;	/* ... completed inside the measured window */
	uint64_t conns;			/* TCP connections started */
	uint64_t handshakes;		/* TLS handshakes completed */
	uint64_t handshakes_in_window;	/* ... with their request answered, in window */
	uint64_t bytes_up, bytes_down;	/* request / response body bytes */
	uint64_t parked_now, parked_peak;
	uint64_t answered;		/* responses of any status */
	uint64_t abandoned;		/* requests in flight when the run ended */
	uint64_t window_us;		/* length of the measured window */
	uint64_t elapsed_us;		/* first connect to last event */
	uint64_t errors[ERR_MAX];
	uint64_t status[600];		/* unexpected statuses, by code */
	struct hist req;		/* request sent -> response complete */
	struct hist conn;		/* connect -> handshake complete */
	char first_error[DETAIL_LEN];
};

/* ---- options and run state ------------------------------------------------ */
enum mode { MODE_RPS, MODE_HANDSHAKE, MODE_PARK, MODE_STREAM, MODE_COLD };
static const char *const mode_names[] = { "rps", "handshake", "park", "stream", "cold" };

enum direction { DIR_UP, DIR_DOWN };

struct device {
	X509 *cert;		/* owned (one reference) */
	EVP_PKEY *key;		/* owned */
	char user[64];
	char device_id[24];
};

struct options {
	enum mode mode;
	const char *host;
	unsigned port;
	const char *server_name;	/* SNI, Host header, verification name */
	const char *ca;			/* verify the server against this CA file */
	const char *certs_dir;
	const char *cert, *key, *user;	/* a single identity instead of a fleet */
	const char *path;
	unsigned connections;
	double duration;
	double timeout;
	uint64_t size;
	enum direction direction;
	unsigned requests;		/* per connection; 0 = as many as fit in duration */
	unsigned max_handshakes;	/* TLS handshakes in flight at once */
	unsigned procs;
	unsigned max_certs;
	int expect_status;
	int tls_max;			/* 0 = best, else TLS1_2_VERSION / TLS1_3_VERSION */
	unsigned device_offset;		/* first device index (for --procs children) */
	unsigned conn_offset;		/* global index of this process' first connection */
	int progress;			/* seconds between progress lines on stderr; 0 = none */
};

enum conn_state { ST_IDLE, ST_CONNECTING, ST_HANDSHAKE, ST_SENDING, ST_READING, ST_DONE };

/* Response framing, reset per response. */
struct resp {
	int in_body;
	int status;
	int conn_close;
	int chunked;
	int64_t clen;			/* -1: not given */
	uint64_t body;			/* body bytes so far (chunked: decoded) */
	char sha256[65];
	/* chunked decoder */
	int cst;			/* 0 size line, 1 data, 2 CRLF after data, 3 trailers */
	uint64_t crem;
	unsigned clen_line;
	char cline[64];
};

struct run;

struct conn {
	unsigned magic;
	struct run *run;
	unsigned slot;			/* index in this process */
	unsigned dev;			/* device index into run->devs */
	unsigned uses;			/* connections this slot has made */
	int fd;
	SSL *ssl;
	struct event *ev;
	short waiting;			/* events ev is armed for, 0 = none */
	enum conn_state state;
	char *out;			/* request head (+ small body), REQ_HEAD_MAX, owned */
	size_t out_len, out_off;
	uint64_t up_left;		/* upload body bytes still to send */
	uint64_t up_sent;
	char *hdr;			/* response head accumulation, HDR_MAX, owned, lazily */
	size_t hdr_len;
	struct resp r;
	uint64_t t_connect, t_request;
	unsigned requests_here;		/* requests on this TCP connection */
	unsigned requests_total;	/* requests by this slot */
	int parked;			/* counted in parked_now */
	int tls_up;			/* handshake done: close with a close_notify */
	int counted;			/* rps: counted in run->established */
};

struct run {
	unsigned magic;
	const struct options *o;
	struct event_base *base;
	SSL_CTX *ctx;
	struct device *devs;
	unsigned ndevs;
	struct conn *conns;
	unsigned nconns;
	unsigned active;		/* slots not yet ST_DONE */
	unsigned handshaking;		/* TLS handshakes in flight */
	unsigned *queue;		/* slots waiting for a handshake slot */
	unsigned q_head, q_len;
	unsigned established;		/* rps: slots whose first handshake ended */
	struct sockaddr_in addr;
	const struct timeval *tmo;	/* common timeout for one step */
	struct event *deadline_ev;	/* end of the measured window */
	struct event *grace_ev;		/* end of the wait for requests in flight */
	struct event *progress_ev;
	int window_open, stopping;
	uint64_t t_start, t_window, t_end, t_last;
	char upload_sha[65];		/* expected upload digest, hex */
	struct stats st;
};

static unsigned char pattern[PAT_LEN];	/* pattern[i] = i % 256 */
static unsigned char rbuf[READ_CHUNK];
static const char *progname = "eas-loadgen";

/* A small Sync (MS-ASWBXML, AirSync page): Sync/Collections/Collection with
 * SyncKey 1 and CollectionId 1. */
static const unsigned char wbxml_sync[] = {
	0x03, 0x01, 0x6a, 0x00, 0x00, 0x00, 0x45, 0x5c, 0x4f, 0x4b, 0x03, 0x31,
	0x00, 0x01, 0x52, 0x03, 0x31, 0x00, 0x01, 0x01, 0x01, 0x01,
};
/* A Ping (Ping page 0x0d): HeartbeatInterval 3540, one folder. */
static const unsigned char wbxml_ping[] = {
	0x03, 0x01, 0x6a, 0x00, 0x00, 0x0d, 0x45, 0x48, 0x03, 0x33, 0x35, 0x34,
	0x30, 0x00, 0x01, 0x49, 0x4a, 0x4b, 0x03, 0x31, 0x00, 0x01, 0x4c, 0x03,
	0x45, 0x6d, 0x61, 0x69, 0x6c, 0x00, 0x01, 0x01, 0x01, 0x01,
};

static uint64_t
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void __attribute__((format(printf, 1, 2)))
say(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", progname);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* First entry of OpenSSL's error queue as text (the queue is cleared). */
static const char *
ssl_errtext(char *buf, size_t len)
{
	unsigned long e = ERR_get_error();

	if (e == 0)
		snprintf(buf, len, "no OpenSSL error queued");
	else
		ERR_error_string_n(e, buf, len);
	ERR_clear_error();
	return buf;
}

/* ---- results ------------------------------------------------------------- */
static void __attribute__((format(printf, 3, 4)))
count_error(struct run *run, enum err_kind kind, const char *fmt, ...)
{
	va_list ap;

	run->st.errors[kind]++;
	if (run->st.first_error[0] == '\0') {
		int n = snprintf(run->st.first_error, sizeof(run->st.first_error), "%s: ",
		    err_names[kind]);

		if (n < 0 || (size_t)n >= sizeof(run->st.first_error))
			return;
		va_start(ap, fmt);
		vsnprintf(run->st.first_error + n, sizeof(run->st.first_error) - (size_t)n, fmt, ap);
		va_end(ap);
	}
}

static uint64_t
total_errors(const struct stats *st)
{
	uint64_t n = 0;
	unsigned i;

	for (i = 0; i < ERR_MAX; i++)
		n += st->errors[i];
	return n;
}

/* ---- connections ----------------------------------------------------------- */
static void conn_cb(evutil_socket_t fd, short what, void *arg);
static void start_cb(evutil_socket_t fd, short what, void *arg);
static void conn_start(struct conn *c);
static void conn_finish(struct conn *c, int reuse);
static void start_request(struct conn *c);
static void do_handshake(struct conn *c);
static void do_send(struct conn *c);
static void do_read(struct conn *c);
static void maybe_stop(struct run *run);

/* (Re-)arm c's one event for `what` with the step timeout. */
static int
conn_wait(struct conn *c, short what)
{
	struct run *run = c->run;

	if (c->waiting)
		event_del(c->ev);
	if (event_assign(c->ev, run->base, c->fd, what, conn_cb, c) != 0)
		return -1;
	c->waiting = what;
	return event_add(c->ev, run->tmo);
}

/* Start the slot's next connection from the event loop, not from here: a
 * connect that fails at once would otherwise recurse through conn_fail. */
static void
conn_schedule(struct conn *c)
{
	struct run *run = c->run;

	if (c->waiting)
		event_del(c->ev);
	c->state = ST_IDLE;
	if (event_assign(c->ev, run->base, -1, 0, start_cb, c) != 0) {
		count_error(run, ERR_connect, "slot %u: cannot arm an event",
		    c->slot + run->o->conn_offset);
		c->state = ST_DONE;
		run->active--;
		maybe_stop(run);
		return;
	}
	c->waiting = EV_TIMEOUT;
	event_active(c->ev, EV_TIMEOUT, 1);
}

/* Close the TCP connection (a close_notify is attempted, never waited for). */
static void
conn_close_tcp(struct conn *c)
{
	if (c->waiting) {
		event_del(c->ev);
		c->waiting = 0;
	}
	if (c->ssl != NULL) {
		if (c->tls_up)
			(void)SSL_shutdown(c->ssl);
		SSL_free(c->ssl);
		c->ssl = NULL;
		ERR_clear_error();
	}
	c->tls_up = 0;
	if (c->fd >= 0) {
		close(c->fd);
		c->fd = -1;
	}
	if (c->parked) {
		c->parked = 0;
		c->run->st.parked_now--;
	}
	free(c->hdr);
	c->hdr = NULL;
	c->hdr_len = 0;
}

/* A handshake ended (either way): one queued slot may start. */
static void
handshake_done(struct run *run)
{
	run->handshaking--;
	if (run->q_len > 0 && !run->stopping) {
		unsigned slot = run->queue[run->q_head];

		run->q_head = (run->q_head + 1) % run->nconns;
		run->q_len--;
		conn_schedule(&run->conns[slot]);
	}
}

static void
note_established(struct run *run)
{
	run->established++;
	if (run->o->mode == MODE_RPS && run->established == run->nconns && !run->window_open &&
	    !run->stopping) {
		struct timeval tv;

		run->window_open = 1;
		run->t_window = now_us();
		tv.tv_sec = (time_t)run->o->duration;
		tv.tv_usec = (suseconds_t)((run->o->duration - (double)tv.tv_sec) * 1e6);
		event_add(run->deadline_ev, &tv);
	}
}

/* The slot failed: count it, close, and let the mode decide what next. */
static void __attribute__((format(printf, 3, 4)))
conn_fail(struct conn *c, enum err_kind kind, const char *fmt, ...)
{
	struct run *run = c->run;
	char msg[DETAIL_LEN];
	va_list ap;
	int was_handshaking = c->state == ST_CONNECTING || c->state == ST_HANDSHAKE;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (run->stopping && kind == ERR_timeout &&
	    (run->o->mode == MODE_RPS || run->o->mode == MODE_HANDSHAKE)) {
		/* the window is over; a request still out is abandoned, not failed */
		run->st.abandoned++;
	} else {
		count_error(run, kind, "device %s (slot %u): %s", run->devs[c->dev].user,
		    c->slot + run->o->conn_offset, msg);
	}
	conn_close_tcp(c);
	c->state = ST_IDLE;
	if (was_handshaking) {
		if (run->o->mode == MODE_RPS && c->requests_total == 0 && !c->counted)
			note_established(run);
		c->counted = 1;
		handshake_done(run);
	}
	conn_finish(c, 0);
}

/* After a response or a failure: the next request on this connection
 * (reuse), a new connection for the slot, or the slot is done. */
static void
conn_finish(struct conn *c, int reuse)
{
	struct run *run = c->run;
	const struct options *o = run->o;
	int more = !run->stopping && (o->requests == 0 || c->requests_total < o->requests);

	if (reuse && more) {
		start_request(c);
		return;
	}
	conn_close_tcp(c);
	if (more && o->mode == MODE_HANDSHAKE) {
		c->uses++;
		c->dev = (c->slot + o->conn_offset + c->uses * o->connections + o->device_offset) %
		    run->ndevs;
		conn_schedule(c);
		return;
	}
	if (more && o->mode == MODE_RPS) {
		conn_schedule(c);	/* the server closed a keep-alive connection */
		return;
	}
	if (c->state != ST_DONE) {
		c->state = ST_DONE;
		run->active--;
	}
	maybe_stop(run);
}

static void
conn_start(struct conn *c)
{
	struct run *run = c->run;
	int fd = -1, one = 1;

	if (run->stopping) {
		conn_finish(c, 0);
		return;
	}
	if (run->handshaking >= run->o->max_handshakes) {
		run->queue[(run->q_head + run->q_len) % run->nconns] = c->slot;
		run->q_len++;
		c->state = ST_IDLE;
		return;
	}
	run->handshaking++;
	run->st.conns++;
	c->t_connect = now_us();
	c->requests_here = 0;
	c->state = ST_CONNECTING;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		conn_fail(c, ERR_connect, "socket: %s", strerror(errno));
		return;
	}
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->fd = fd;
	if (connect(fd, (const struct sockaddr *)&run->addr, sizeof(run->addr)) != 0 &&
	    errno != EINPROGRESS) {
		conn_fail(c, ERR_connect, "connect: %s", strerror(errno));
		return;
	}
	if (conn_wait(c, EV_WRITE) != 0)
		conn_fail(c, ERR_connect, "cannot arm an event");
}

static void
start_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;

	(void)fd;
	(void)what;
	assert(c->magic == CONN_MAGIC);
	c->waiting = 0;
	conn_start(c);
}

static void
on_connected(struct conn *c)
{
	struct run *run = c->run;
	struct device *d = &run->devs[c->dev];
	int err = 0;
	socklen_t elen = sizeof(err);
	char ebuf[DETAIL_LEN];

	if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0)
		err = errno;
	if (err != 0) {
		conn_fail(c, ERR_connect, "connect: %s", strerror(err));
		return;
	}
	c->ssl = SSL_new(run->ctx);
	if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1 ||
	    SSL_use_certificate(c->ssl, d->cert) != 1 ||
	    SSL_use_PrivateKey(c->ssl, d->key) != 1) {
		conn_fail(c, ERR_tls_handshake, "SSL setup: %s", ssl_errtext(ebuf, sizeof(ebuf)));
		return;
	}
	if (run->o->server_name != NULL) {
		if (SSL_set_tlsext_host_name(c->ssl, run->o->server_name) != 1 ||
		    (run->o->ca != NULL && SSL_set1_host(c->ssl, run->o->server_name) != 1)) {
			conn_fail(c, ERR_tls_handshake, "SNI: %s", ssl_errtext(ebuf, sizeof(ebuf)));
			return;
		}
	}
	SSL_set_connect_state(c->ssl);
	c->state = ST_HANDSHAKE;
	do_handshake(c);
}

static void
do_handshake(struct conn *c)
{
	struct run *run = c->run;
	char ebuf[DETAIL_LEN];
	int r = SSL_do_handshake(c->ssl), e;

	if (r == 1) {
		uint64_t t = now_us();

		hist_add(&run->st.conn, t - c->t_connect);
		run->st.handshakes++;
		c->tls_up = 1;
		c->state = ST_SENDING;	/* no longer counted as handshaking */
		handshake_done(run);
		if (run->o->mode == MODE_RPS && !c->counted) {
			c->counted = 1;
			note_established(run);
		}
		if (run->stopping) {
			conn_finish(c, 0);
			return;
		}
		start_request(c);
		return;
	}
	e = SSL_get_error(c->ssl, r);
	if (e == SSL_ERROR_WANT_READ) {
		if (conn_wait(c, EV_READ) != 0)
			conn_fail(c, ERR_tls_handshake, "cannot arm an event");
		return;
	}
	if (e == SSL_ERROR_WANT_WRITE) {
		if (conn_wait(c, EV_WRITE) != 0)
			conn_fail(c, ERR_tls_handshake, "cannot arm an event");
		return;
	}
	if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
		conn_fail(c, ERR_tls_handshake, "connection %s during the handshake",
		    errno ? strerror(errno) : "closed");
	else
		conn_fail(c, ERR_tls_handshake, "%s", ssl_errtext(ebuf, sizeof(ebuf)));
}

/* Build the request head (and a small body) for c's device. */
static void
start_request(struct conn *c)
{
	struct run *run = c->run;
	const struct options *o = run->o;
	const struct device *d = &run->devs[c->dev];
	const char *cmd = "Sync", *method = "POST", *extra = "";
	const unsigned char *body = wbxml_sync;
	size_t blen = sizeof(wbxml_sync);
	uint64_t clen;
	char host[300], post[128] = "";
	int n;

	if (o->server_name != NULL)
		snprintf(host, sizeof(host), "%s", o->server_name);
	else
		snprintf(host, sizeof(host), "%s:%u", o->host, o->port);
	c->up_left = 0;
	c->up_sent = 0;
	if (o->mode == MODE_PARK) {
		cmd = "Ping";
		body = wbxml_ping;
		blen = sizeof(wbxml_ping);
	} else if (o->mode == MODE_STREAM && o->direction == DIR_UP) {
		cmd = "SendMail";
		extra = "&SaveInSent=T";
		body = NULL;
		blen = 0;
		c->up_left = o->size;
	} else if (o->mode == MODE_STREAM) {
		cmd = "GetAttachment";
		extra = "&AttachmentName=bench%3A1";
		method = "GET";
		body = NULL;
		blen = 0;
	}
	clen = body != NULL ? blen : c->up_left;
	if (strcmp(method, "POST") == 0)
		snprintf(post, sizeof(post), "Content-Type: %s\r\nContent-Length: %" PRIu64 "\r\n",
		    o->mode == MODE_STREAM ? "message/rfc822" : "application/vnd.ms-sync.wbxml",
		    clen);
	n = snprintf(c->out, REQ_HEAD_MAX,
	    "%s %s?Cmd=%s&User=%s&DeviceId=%s&DeviceType=iPhone%s HTTP/1.1\r\n"
	    "Host: %s\r\n"
	    "User-Agent: Apple-iPhone9C1/1402.4\r\n"
	    "MS-ASProtocolVersion: 14.1\r\n"
	    "X-MS-PolicyKey: 3942919513\r\n"
	    "%s"
	    "\r\n",
	    method, o->path, cmd, d->user, d->device_id, extra, host, post);
	if (n < 0 || (size_t)n + blen > REQ_HEAD_MAX) {
		conn_fail(c, ERR_parse, "request head does not fit %d bytes", REQ_HEAD_MAX);
		return;
	}
	if (body != NULL)
		memcpy(c->out + n, body, blen);
	c->out_len = (size_t)n + blen;
	c->out_off = 0;
	memset(&c->r, 0, sizeof(c->r));
	c->r.clen = -1;
	c->hdr_len = 0;
	c->state = ST_SENDING;
	c->t_request = now_us();
	do_send(c);
}

static int
ssl_io_error(struct conn *c, int r, const char *what)
{
	char ebuf[DETAIL_LEN];
	int e = SSL_get_error(c->ssl, r);

	if (e == SSL_ERROR_WANT_READ)
		return conn_wait(c, EV_READ) == 0 ? 0 : -1;
	if (e == SSL_ERROR_WANT_WRITE)
		return conn_wait(c, EV_WRITE) == 0 ? 0 : -1;
	if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 &&
	    errno == 0))
		conn_fail(c, ERR_closed, "server closed the connection while %s", what);
	else if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
		conn_fail(c, ERR_tls_io, "%s while %s", strerror(errno), what);
	else
		conn_fail(c, ERR_tls_io, "%s while %s", ssl_errtext(ebuf, sizeof(ebuf)), what);
	return 1;
}

static void
do_send(struct conn *c)
{
	struct run *run = c->run;
	int r;

	while (c->out_off < c->out_len) {
		errno = 0;
		r = SSL_write(c->ssl, c->out + c->out_off, (int)(c->out_len - c->out_off));
		if (r <= 0) {
			if (ssl_io_error(c, r, "sending the request head") < 0)
				conn_fail(c, ERR_tls_io, "cannot arm an event");
			return;
		}
		c->out_off += (size_t)r;
	}
	while (c->up_left > 0) {
		size_t off = (size_t)(c->up_sent & 0xff);
		int len = c->up_left < WRITE_CHUNK ? (int)c->up_left : WRITE_CHUNK;

		errno = 0;
		r = SSL_write(c->ssl, pattern + off, len);
		if (r <= 0) {
			if (ssl_io_error(c, r, "sending the request body") < 0)
				conn_fail(c, ERR_tls_io, "cannot arm an event");
			return;
		}
		c->up_left -= (uint64_t)r;
		c->up_sent += (uint64_t)r;
		run->st.bytes_up += (uint64_t)r;
	}
	c->state = ST_READING;
	if (run->o->mode == MODE_PARK) {
		c->parked = 1;
		run->st.parked_now++;
		if (run->st.parked_now > run->st.parked_peak)
			run->st.parked_peak = run->st.parked_now;
	}
	do_read(c);
}

/* A response is complete: account for it and move on. */
static void
response_done(struct conn *c)
{
	struct run *run = c->run;
	const struct options *o = run->o;
	uint64_t t = now_us();
	int reuse;

	run->t_last = t;
	run->st.answered++;
	if (c->parked) {
		c->parked = 0;
		run->st.parked_now--;
	}
	c->requests_here++;
	c->requests_total++;
	if (c->r.status != o->expect_status) {
		unsigned s = c->r.status >= 0 && c->r.status < 600 ? (unsigned)c->r.status : 0;

		run->st.status[s]++;
		count_error(run, ERR_status, "device %s (slot %u): status %d, expected %d",
		    run->devs[c->dev].user, c->slot + o->conn_offset, c->r.status, o->expect_status);
		c->state = ST_IDLE;
		conn_finish(c, 0);
		return;
	}
	if (o->mode == MODE_STREAM && o->direction == DIR_DOWN &&
	    c->r.body != o->size) {
		count_error(run, ERR_checksum, "device %s: downloaded %" PRIu64 " bytes, expected %"
		    PRIu64, run->devs[c->dev].user, c->r.body, o->size);
		c->state = ST_IDLE;
		conn_finish(c, 0);
		return;
	}
	if (o->mode == MODE_STREAM && o->direction == DIR_UP &&
	    strcasecmp(c->r.sha256, run->upload_sha) != 0) {
		count_error(run, ERR_checksum, "device %s: upload X-Body-SHA256 %s, expected %s",
		    run->devs[c->dev].user, c->r.sha256[0] ? c->r.sha256 : "(none)",
		    run->upload_sha);
		c->state = ST_IDLE;
		conn_finish(c, 0);
		return;
	}
	run->st.requests++;
	hist_add(&run->st.req, t - c->t_request);
	if (o->mode == MODE_RPS && run->window_open && !run->stopping)
		run->st.requests_in_window++;
	if (o->mode == MODE_HANDSHAKE && !run->stopping) {
		run->st.handshakes_in_window++;
		run->st.requests_in_window++;
	}
	reuse = !c->r.conn_close && (o->mode == MODE_RPS || o->mode == MODE_STREAM);
	c->state = ST_IDLE;
	conn_finish(c, reuse);
}

/* Body bytes of the current response (already de-chunked). */
static int
body_bytes(struct conn *c, const unsigned char *p, size_t n)
{
	struct run *run = c->run;
	const struct options *o = run->o;

	if (o->mode == MODE_STREAM && o->direction == DIR_DOWN) {
		size_t done = 0;

		while (done < n) {
			size_t off = (size_t)((c->r.body + done) & 0xff);
			size_t len = n - done < WRITE_CHUNK ? n - done : WRITE_CHUNK;

			if (memcmp(p + done, pattern + off, len) != 0) {
				size_t i = 0;

				while (i < len && p[done + i] == pattern[off + i])
					i++;
				count_error(run, ERR_checksum, "device %s: download byte %" PRIu64
				    " is 0x%02x, expected 0x%02x", run->devs[c->dev].user,
				    c->r.body + done + i, p[done + i], pattern[off + i]);
				return -1;
			}
			done += len;
		}
	}
	c->r.body += n;
	run->st.bytes_down += n;
	return 0;
}

/* Chunked decoding over p[0..n); returns bytes used, or -1 (error counted),
 * and sets *complete at the end of the trailers. */
static long
chunked_bytes(struct conn *c, const unsigned char *p, size_t n, int *complete)
{
	size_t i = 0;

	while (i < n) {
		if (c->r.cst == 1) {
			size_t take = n - i < c->r.crem ? n - i : (size_t)c->r.crem;

			if (body_bytes(c, p + i, take) != 0)
				return -1;
			i += take;
			c->r.crem -= take;
			if (c->r.crem == 0)
				c->r.cst = 2;
			continue;
		}
		/* a line: size, the CRLF after data, or a trailer */
		if (p[i] != '\n') {
			if (c->r.clen_line + 1 >= sizeof(c->r.cline)) {
				count_error(c->run, ERR_parse, "chunk line longer than %zu bytes",
				    sizeof(c->r.cline));
				return -1;
			}
			c->r.cline[c->r.clen_line++] = (char)p[i++];
			continue;
		}
		i++;
		if (c->r.clen_line > 0 && c->r.cline[c->r.clen_line - 1] == '\r')
			c->r.clen_line--;
		c->r.cline[c->r.clen_line] = '\0';
		if (c->r.cst == 2) {
			if (c->r.clen_line != 0) {
				count_error(c->run, ERR_parse, "chunk data not followed by CRLF");
				return -1;
			}
			c->r.cst = 0;
		} else if (c->r.cst == 0) {
			char *end;
			unsigned long long sz;

			errno = 0;
			sz = strtoull(c->r.cline, &end, 16);
			if (end == c->r.cline || errno != 0 || (*end != '\0' && *end != ';')) {
				count_error(c->run, ERR_parse, "bad chunk size line");
				return -1;
			}
			c->r.crem = sz;
			c->r.cst = sz == 0 ? 3 : 1;
		} else if (c->r.clen_line == 0) {
			c->r.clen_line = 0;
			*complete = 1;
			return (long)i;
		}
		c->r.clen_line = 0;
	}
	return (long)i;
}

/* Parse the complete head in c->hdr[0..len). Returns 0, or -1 (counted). */
static int
parse_head(struct conn *c, size_t len)
{
	char *p = c->hdr, *end = c->hdr + len, *eol;

	if (len < 12 || strncmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ' ||
	    p[9] < '1' || p[9] > '5' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9') {
		count_error(c->run, ERR_parse, "bad status line");
		return -1;
	}
	c->r.status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
	if (p[7] == '0')
		c->r.conn_close = 1;
	eol = memchr(p, '\n', (size_t)(end - p));
	while (eol != NULL && eol + 1 < end) {
		char *line = eol + 1, *colon, *v;
		size_t ll;

		eol = memchr(line, '\n', (size_t)(end - line));
		if (eol == NULL)
			break;
		ll = (size_t)(eol - line);
		if (ll > 0 && line[ll - 1] == '\r')
			ll--;
		if (ll == 0)
			break;
		colon = memchr(line, ':', ll);
		if (colon == NULL) {
			count_error(c->run, ERR_parse, "header line without a colon");
			return -1;
		}
		v = colon + 1;
		while (v < line + ll && (*v == ' ' || *v == '\t'))
			v++;
		*(line + ll) = '\0';	/* the CR or LF: the head is ours to cut up */
#define IS(name) ((size_t)(colon - line) == sizeof(name) - 1 && \
		strncasecmp(line, name, sizeof(name) - 1) == 0)
		if (IS("content-length")) {
			char *e;
			long long v2;

			errno = 0;
			v2 = strtoll(v, &e, 10);
			if (e == v || *e != '\0' || errno != 0 || v2 < 0 ||
			    (c->r.clen >= 0 && c->r.clen != v2)) {
				count_error(c->run, ERR_parse, "bad Content-Length");
				return -1;
			}
			c->r.clen = v2;
		} else if (IS("transfer-encoding")) {
			if (strcasestr(v, "chunked") != NULL)
				c->r.chunked = 1;
		} else if (IS("connection")) {
			if (strcasestr(v, "close") != NULL)
				c->r.conn_close = 1;
		} else if (IS("x-body-sha256")) {
			snprintf(c->r.sha256, sizeof(c->r.sha256), "%s", v);
		}
#undef IS
	}
	return 0;
}

/* The response has no body of its own (1xx, 204, 304). */
static int
no_body(int status)
{
	return status < 200 || status == 204 || status == 304;
}

/* Feed n bytes of the response. Returns 1 when the response completed
 * (extra bytes are an error), 0 for more, -1 on error (counted). */
static int
feed(struct conn *c, const unsigned char *p, size_t n)
{
	while (n > 0) {
		if (!c->r.in_body) {
			size_t room, take, from, i;
			int found = 0;

			if (c->hdr == NULL && (c->hdr = malloc(HDR_MAX + 1)) == NULL) {
				count_error(c->run, ERR_parse, "out of memory for the response head");
				return -1;
			}
			room = HDR_MAX - c->hdr_len;
			take = n < room ? n : room;
			from = c->hdr_len >= 3 ? c->hdr_len - 3 : 0;
			memcpy(c->hdr + c->hdr_len, p, take);
			c->hdr_len += take;
			for (i = from; i + 4 <= c->hdr_len; i++) {
				if (memcmp(c->hdr + i, "\r\n\r\n", 4) == 0) {
					found = 1;
					break;
				}
			}
			if (!found) {
				if (c->hdr_len >= HDR_MAX) {
					count_error(c->run, ERR_parse, "response head over %d bytes",
					    HDR_MAX);
					return -1;
				}
				return 0;
			}
			{
				size_t hlen = i + 4, extra = c->hdr_len - hlen;
				int s;

				c->hdr[hlen - 1] = '\0';
				if (parse_head(c, hlen) != 0)
					return -1;
				/* what followed the head in this chunk: p resumes there */
				p += take - extra;
				n -= take - extra;
				c->hdr_len = 0;
				s = c->r.status;
				if (s >= 100 && s < 200) {	/* 100 Continue: the next head */
					memset(&c->r, 0, sizeof(c->r));
					c->r.clen = -1;
					continue;
				}
				c->r.in_body = 1;
				if (no_body(s) || (!c->r.chunked && c->r.clen == 0))
					return n == 0 ? 1 : (count_error(c->run, ERR_parse,
					    "%zu bytes after a response without a body", n), -1);
				if (!c->r.chunked && c->r.clen < 0 && !c->r.conn_close)
					c->r.conn_close = 1;	/* body ends at close */
			}
			continue;
		}
		if (c->r.chunked) {
			int complete = 0;
			long used = chunked_bytes(c, p, n, &complete);

			if (used < 0)
				return -1;
			p += used;
			n -= (size_t)used;
			if (complete)
				return n == 0 ? 1 : (count_error(c->run, ERR_parse,
				    "%zu bytes after the last chunk", n), -1);
			continue;
		}
		if (c->r.clen >= 0) {
			uint64_t left = (uint64_t)c->r.clen - c->r.body;
			size_t take = n < left ? n : (size_t)left;

			if (body_bytes(c, p, take) != 0)
				return -1;
			p += take;
			n -= take;
			if (c->r.body == (uint64_t)c->r.clen)
				return n == 0 ? 1 : (count_error(c->run, ERR_parse,
				    "%zu bytes after Content-Length", n), -1);
			continue;
		}
		if (body_bytes(c, p, n) != 0)	/* until close */
			return -1;
		n = 0;
	}
	return 0;
}

static void
do_read(struct conn *c)
{
	int r, done;
	char ebuf[DETAIL_LEN];

	for (;;) {
		errno = 0;
		r = SSL_read(c->ssl, rbuf, sizeof(rbuf));
		if (r > 0) {
			done = feed(c, rbuf, (size_t)r);
			if (done < 0) {
				c->state = ST_IDLE;
				conn_close_tcp(c);
				conn_finish(c, 0);
				return;
			}
			if (done > 0) {
				response_done(c);
				return;
			}
			continue;
		}
		{
			int e = SSL_get_error(c->ssl, r);

			if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
				if (conn_wait(c, e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE) != 0)
					conn_fail(c, ERR_tls_io, "cannot arm an event");
				return;
			}
			/* EOF: the end of a close-delimited body, else an error */
			if ((e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL &&
			    ERR_peek_error() == 0 && errno == 0)) &&
			    c->r.in_body && !c->r.chunked && c->r.clen < 0) {
				response_done(c);
				return;
			}
			if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL &&
			    ERR_peek_error() == 0 && errno == 0)) {
				conn_fail(c, ERR_closed, "server closed the connection %s",
				    c->r.in_body ? "inside the response body" :
				    c->hdr_len ? "inside the response head" : "before answering");
				return;
			}
			if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
				conn_fail(c, ERR_tls_io, "%s while reading the response",
				    strerror(errno));
			else
				conn_fail(c, ERR_tls_io, "%s while reading the response",
				    ssl_errtext(ebuf, sizeof(ebuf)));
			return;
		}
	}
}

static void
conn_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;

	(void)fd;
	assert(c->magic == CONN_MAGIC);
	c->waiting = 0;		/* non-persistent: fired means no longer pending */
	if (what & EV_TIMEOUT) {
		static const char *const names[] = { "idle", "connecting", "in the TLS handshake",
			"sending the request", "waiting for the response", "done" };

		conn_fail(c, ERR_timeout, "no progress %s for %.1f s", names[c->state],
		    c->run->o->timeout);
		return;
	}
	switch (c->state) {
	case ST_CONNECTING:
		on_connected(c);
		break;
	case ST_HANDSHAKE:
		do_handshake(c);
		break;
	case ST_SENDING:
		do_send(c);
		break;
	case ST_READING:
		do_read(c);
		break;
	case ST_IDLE:
	case ST_DONE:
		break;
	}
}

/* ---- run control ---------------------------------------------------------- */
static void
maybe_stop(struct run *run)
{
	if (run->active == 0) {
		if (run->t_end == 0)
			run->t_end = now_us();
		event_base_loopbreak(run->base);
	}
}

static void
grace_cb(evutil_socket_t fd, short what, void *arg)
{
	struct run *run = arg;
	unsigned i;

	(void)fd;
	(void)what;
	assert(run->magic == RUN_MAGIC);
	for (i = 0; i < run->nconns; i++) {
		struct conn *c = &run->conns[i];

		if (c->state == ST_SENDING || c->state == ST_READING)
			run->st.abandoned++;
		conn_close_tcp(c);
		c->state = ST_DONE;
	}
	run->active = 0;
	event_base_loopbreak(run->base);
}

/* End of the measured window (rps, handshake) or of the wait (park, cold,
 * stream): stop starting anything; requests in flight get a grace period. */
static void
deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct run *run = arg;
	struct timeval grace = { 2, 0 };
	unsigned i;

	(void)fd;
	(void)what;
	assert(run->magic == RUN_MAGIC);
	run->t_end = now_us();
	run->stopping = 1;
	if (run->o->mode == MODE_PARK || run->o->mode == MODE_COLD ||
	    run->o->mode == MODE_STREAM) {
		/* the time allowed is over: whatever is still out failed */
		for (i = 0; i < run->nconns; i++) {
			struct conn *c = &run->conns[i];

			if (c->state != ST_DONE && c->state != ST_IDLE)
				conn_fail(c, ERR_timeout, "not answered within --duration %.1f s",
				    run->o->duration);
			else if (c->state == ST_IDLE) {
				count_error(run, ERR_timeout, "device %s: never started within "
				    "--duration", run->devs[c->dev].user);
				c->state = ST_DONE;
				run->active--;
			}
		}
		maybe_stop(run);
		return;
	}
	/* queued slots never start; idle ones are done */
	for (i = 0; i < run->nconns; i++) {
		struct conn *c = &run->conns[i];

		if (c->state == ST_IDLE) {
			c->state = ST_DONE;
			run->active--;
		}
	}
	run->q_len = 0;
	if (run->active == 0) {
		maybe_stop(run);
		return;
	}
	event_add(run->grace_ev, &grace);
}

static void
progress_cb(evutil_socket_t fd, short what, void *arg)
{
	struct run *run = arg;

	(void)fd;
	(void)what;
	assert(run->magic == RUN_MAGIC);
	say("progress t=%.1fs conns=%" PRIu64 " handshakes=%" PRIu64 " parked=%" PRIu64
	    " answered=%" PRIu64 " errors=%" PRIu64, (double)(now_us() - run->t_start) / 1e6,
	    run->st.conns, run->st.handshakes, run->st.parked_now, run->st.answered,
	    total_errors(&run->st));
}

/* ---- setup ------------------------------------------------------------------ */
static int
load_pair(struct device *d, const char *cert, const char *key, const char *user,
    unsigned index)
{
	FILE *f = NULL;
	X509 *x = NULL;
	EVP_PKEY *k = NULL;
	char ebuf[DETAIL_LEN];
	int rc = -1;

	if ((f = fopen(cert, "r")) == NULL) {
		say("cannot open %s: %s", cert, strerror(errno));
		goto cleanup;
	}
	if ((x = PEM_read_X509(f, NULL, NULL, NULL)) == NULL) {
		say("%s: no PEM certificate: %s", cert, ssl_errtext(ebuf, sizeof(ebuf)));
		goto cleanup;
	}
	fclose(f);
	if ((f = fopen(key, "r")) == NULL) {
		say("cannot open %s: %s", key, strerror(errno));
		goto cleanup;
	}
	if ((k = PEM_read_PrivateKey(f, NULL, NULL, NULL)) == NULL) {
		say("%s: no PEM private key: %s", key, ssl_errtext(ebuf, sizeof(ebuf)));
		goto cleanup;
	}
	if (X509_check_private_key(x, k) != 1) {
		say("%s does not belong to %s", key, cert);
		ERR_clear_error();
		goto cleanup;
	}
	if (snprintf(d->user, sizeof(d->user), "%s", user) >= (int)sizeof(d->user)) {
		say("user name %s is longer than %zu bytes", user, sizeof(d->user) - 1);
		goto cleanup;
	}
	snprintf(d->device_id, sizeof(d->device_id), "EKPLG%08X", index);
	d->cert = x;
	d->key = k;
	x = NULL;
	k = NULL;
	rc = 0;
cleanup:
	if (f != NULL)
		fclose(f);
	X509_free(x);
	EVP_PKEY_free(k);
	return rc;
}

static int
cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Load NAME.pem + NAME.key pairs from dir (sorted by NAME, at most max). */
static int
load_fleet(const char *dir, unsigned max, struct device **out, unsigned *nout)
{
	DIR *d = NULL;
	struct dirent *de;
	char **names = NULL, path[PATH_MAX], kpath[PATH_MAX], user[256];
	size_t n = 0, cap = 0, use = 0, i;
	struct device *devs = NULL;
	unsigned loaded = 0;
	int rc = -1;

	if ((d = opendir(dir)) == NULL) {
		say("cannot open --certs %s: %s", dir, strerror(errno));
		goto cleanup;
	}
	while ((de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name);

		if (len < 5 || strcmp(de->d_name + len - 4, ".pem") != 0)
			continue;
		snprintf(kpath, sizeof(kpath), "%s/%.*s.key", dir, (int)(len - 4), de->d_name);
		if (access(kpath, R_OK) != 0)
			continue;	/* a CA or chain file: no key beside it */
		if (n == cap) {
			char **nn = realloc(names, (cap ? cap * 2 : 256) * sizeof(*names));

			if (nn == NULL)
				goto cleanup;
			names = nn;
			cap = cap ? cap * 2 : 256;
		}
		if ((names[n] = strndup(de->d_name, len - 4)) == NULL)
			goto cleanup;
		n++;
	}
	if (n == 0) {
		say("--certs %s: no NAME.pem with a NAME.key beside it", dir);
		goto cleanup;
	}
	qsort(names, n, sizeof(*names), cmp_names);
	use = max != 0 && n > max ? max : n;
	if ((devs = calloc(use, sizeof(*devs))) == NULL)
		goto cleanup;
	for (i = 0; i < use; i++) {
		snprintf(path, sizeof(path), "%s/%s.pem", dir, names[i]);
		snprintf(kpath, sizeof(kpath), "%s/%s.key", dir, names[i]);
		snprintf(user, sizeof(user), "%s", names[i]);
		if (load_pair(&devs[i], path, kpath, user, (unsigned)i) != 0)
			goto cleanup;
		loaded++;
	}
	*out = devs;
	*nout = (unsigned)use;
	devs = NULL;
	rc = 0;
cleanup:
	if (devs != NULL) {
		for (i = 0; i < loaded; i++) {
			X509_free(devs[i].cert);
			EVP_PKEY_free(devs[i].key);
		}
		free(devs);
	}
	if (names != NULL) {
		for (i = 0; i < n; i++)
			free(names[i]);
		free(names);
	}
	if (d != NULL)
		closedir(d);
	return rc;
}

static SSL_CTX *
make_ctx(const struct options *o)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	char ebuf[DETAIL_LEN];

	if (ctx == NULL) {
		say("SSL_CTX_new: %s", ssl_errtext(ebuf, sizeof(ebuf)));
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	if (o->tls_max != 0)
		SSL_CTX_set_max_proto_version(ctx, o->tls_max);
	/* every handshake is a full one: no session cache, no tickets */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_IGNORE_UNEXPECTED_EOF);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
	    SSL_MODE_RELEASE_BUFFERS);
	if (o->ca != NULL) {
		if (SSL_CTX_load_verify_locations(ctx, o->ca, NULL) != 1) {
			say("--ca %s: %s", o->ca, ssl_errtext(ebuf, sizeof(ebuf)));
			SSL_CTX_free(ctx);
			return NULL;
		}
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	} else {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	}
	return ctx;
}

static int
upload_digest(uint64_t size, char hex[65])
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char out[32];
	unsigned len = 0, i;
	uint64_t done = 0;
	int rc = -1;

	if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
		goto cleanup;
	while (done < size) {
		size_t n = size - done < WRITE_CHUNK ? (size_t)(size - done) : WRITE_CHUNK;

		if (EVP_DigestUpdate(md, pattern + (done & 0xff), n) != 1)
			goto cleanup;
		done += n;
	}
	if (EVP_DigestFinal_ex(md, out, &len) != 1 || len != 32)
		goto cleanup;
	for (i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", out[i]);
	rc = 0;
cleanup:
	EVP_MD_CTX_free(md);
	return rc;
}

/* One process' share of the run: o->connections slots. Fills *st. */
static int
run_one(const struct options *o, struct device *devs, unsigned ndevs, struct stats *st)
{
	struct run *run = NULL;
	struct timeval tmo, dl, prog;
	unsigned i;
	int rc = -1;

	if ((run = calloc(1, sizeof(*run))) == NULL) {
		say("out of memory");
		return -1;
	}
	run->magic = RUN_MAGIC;
	run->o = o;
	run->devs = devs;
	run->ndevs = ndevs;
	run->nconns = o->connections;
	run->active = o->connections;
	memset(&run->addr, 0, sizeof(run->addr));
	run->addr.sin_family = AF_INET;
	run->addr.sin_port = htons((uint16_t)o->port);
	if (inet_pton(AF_INET, o->host, &run->addr.sin_addr) != 1) {
		say("--host %s is not an IPv4 address", o->host);
		goto cleanup;
	}
	if ((run->base = event_base_new()) == NULL || (run->ctx = make_ctx(o)) == NULL)
		goto cleanup;
	if (o->mode == MODE_STREAM && o->direction == DIR_UP &&
	    upload_digest(o->size, run->upload_sha) != 0) {
		say("cannot compute the upload digest");
		goto cleanup;
	}
	tmo.tv_sec = (time_t)o->timeout;
	tmo.tv_usec = (suseconds_t)((o->timeout - (double)tmo.tv_sec) * 1e6);
	run->tmo = event_base_init_common_timeout(run->base, &tmo);
	run->conns = calloc(o->connections, sizeof(*run->conns));
	run->queue = calloc(o->connections, sizeof(*run->queue));
	run->deadline_ev = evtimer_new(run->base, deadline_cb, run);
	run->grace_ev = evtimer_new(run->base, grace_cb, run);
	run->progress_ev = event_new(run->base, -1, EV_PERSIST, progress_cb, run);
	if (run->conns == NULL || run->queue == NULL || run->tmo == NULL ||
	    run->deadline_ev == NULL || run->grace_ev == NULL || run->progress_ev == NULL) {
		say("out of memory");
		goto cleanup;
	}
	for (i = 0; i < o->connections; i++) {
		struct conn *c = &run->conns[i];

		c->magic = CONN_MAGIC;
		c->run = run;
		c->slot = i;
		c->fd = -1;
		c->dev = (i + o->conn_offset + o->device_offset) % ndevs;
		c->state = ST_IDLE;
		c->out = malloc(REQ_HEAD_MAX);
		c->ev = event_new(run->base, -1, 0, conn_cb, c);
		if (c->out == NULL || c->ev == NULL) {
			say("out of memory");
			goto cleanup;
		}
	}
	run->t_start = now_us();
	if (o->mode != MODE_RPS) {
		/* rps arms this when every connection is up */
		run->window_open = 1;
		run->t_window = run->t_start;
		dl.tv_sec = (time_t)o->duration;
		dl.tv_usec = (suseconds_t)((o->duration - (double)dl.tv_sec) * 1e6);
		event_add(run->deadline_ev, &dl);
	}
	if (o->progress > 0) {
		prog.tv_sec = o->progress;
		prog.tv_usec = 0;
		event_add(run->progress_ev, &prog);
	}
	for (i = 0; i < o->connections && !run->stopping; i++)
		conn_start(&run->conns[i]);
	if (run->active > 0)
		event_base_dispatch(run->base);
	if (run->t_end == 0)
		run->t_end = now_us();
	run->st.elapsed_us = run->t_end - run->t_start;
	if (o->mode == MODE_RPS || o->mode == MODE_HANDSHAKE)
		run->st.window_us = run->window_open ? run->t_end - run->t_window : 0;
	else
		run->st.window_us = (run->t_last > run->t_start ? run->t_last : run->t_end) -
		    run->t_start;
	*st = run->st;
	rc = 0;
cleanup:
	if (run->conns != NULL) {
		for (i = 0; i < o->connections; i++) {
			struct conn *c = &run->conns[i];

			if (c->magic != CONN_MAGIC)
				continue;
			conn_close_tcp(c);
			if (c->ev != NULL)
				event_free(c->ev);
			free(c->out);
			c->magic = 0;
		}
	}
	free(run->conns);
	free(run->queue);
	if (run->deadline_ev != NULL)
		event_free(run->deadline_ev);
	if (run->grace_ev != NULL)
		event_free(run->grace_ev);
	if (run->progress_ev != NULL)
		event_free(run->progress_ev);
	SSL_CTX_free(run->ctx);
	if (run->base != NULL)
		event_base_free(run->base);
	run->magic = 0;
	free(run);
	return rc;
}

/* ---- report ------------------------------------------------------------------ */
static double
ms(uint64_t us)
{
	return (double)us / 1000.0;
}

/* rates: per-process figures summed (each process measured its own window) */
struct rates {
	double rps, hps, mib_s;
};

static void
report(const struct options *o, const struct stats *st, const struct rates *rt)
{
	const struct hist *h = o->mode == MODE_HANDSHAKE ? &st->conn : &st->req;
	uint64_t errs = total_errors(st);
	unsigned i;
	char kinds[1024];
	size_t k = 0;

	printf("mode            %s\n", mode_names[o->mode]);
	printf("connections     %u (%u process%s)\n", o->connections, o->procs,
	    o->procs == 1 ? "" : "es");
	printf("window          %.2f s (elapsed %.2f s)\n", (double)st->window_us / 1e6,
	    (double)st->elapsed_us / 1e6);
	printf("tcp connects    %" PRIu64 "\n", st->conns);
	printf("tls handshakes  %" PRIu64 "\n", st->handshakes);
	printf("responses       %" PRIu64 " (expected status %d: %" PRIu64 ", in window %"
	    PRIu64 ")\n", st->answered, o->expect_status, st->requests, st->requests_in_window);
	if (st->abandoned)
		printf("abandoned       %" PRIu64 " (in flight when the window closed)\n",
		    st->abandoned);
	printf("request latency p50 %.3f ms  p99 %.3f ms  p99.9 %.3f ms  max %.3f ms\n",
	    ms(hist_quantile(&st->req, 0.50)), ms(hist_quantile(&st->req, 0.99)),
	    ms(hist_quantile(&st->req, 0.999)), ms(st->req.max));
	printf("connect+tls     p50 %.3f ms  p99 %.3f ms  p99.9 %.3f ms  max %.3f ms\n",
	    ms(hist_quantile(&st->conn, 0.50)), ms(hist_quantile(&st->conn, 0.99)),
	    ms(hist_quantile(&st->conn, 0.999)), ms(st->conn.max));
	if (o->mode == MODE_STREAM)
		printf("bytes           up %" PRIu64 "  down %" PRIu64 "\n", st->bytes_up,
		    st->bytes_down);
	if (o->mode == MODE_PARK)
		printf("parked at peak  %" PRIu64 "\n", st->parked_peak);
	kinds[0] = '\0';
	for (i = 0; i < ERR_MAX; i++) {
		if (st->errors[i] == 0)
			continue;
		k += (size_t)snprintf(kinds + k, k < sizeof(kinds) ? sizeof(kinds) - k : 0,
		    " err_%s=%" PRIu64, err_names[i], st->errors[i]);
		if (k >= sizeof(kinds))
			k = sizeof(kinds) - 1;
	}
	for (i = 0; i < 600; i++) {
		if (st->status[i] == 0)
			continue;
		k += (size_t)snprintf(kinds + k, k < sizeof(kinds) ? sizeof(kinds) - k : 0,
		    " status_%03u=%" PRIu64, i, st->status[i]);
		if (k >= sizeof(kinds))
			k = sizeof(kinds) - 1;
	}
	printf("errors          %" PRIu64 "%s\n", errs, kinds);
	for (i = 0; i < ERR_MAX; i++) {
		if (st->errors[i] == 0)
			continue;
		switch (i) {
#define X(name, text) case ERR_##name: printf("  %-14s %s\n", #name, text); break;
		ERR_KINDS(X)
#undef X
		}
	}
	if (st->first_error[0])
		printf("first error     %s\n", st->first_error);
	printf("loadgen: mode=%s conns=%u requests=%" PRIu64, mode_names[o->mode], o->connections,
	    st->requests);
	switch (o->mode) {
	case MODE_RPS:
		printf(" rps=%.1f", rt->rps);
		break;
	case MODE_HANDSHAKE:
		printf(" hps=%.1f", rt->hps);
		break;
	case MODE_PARK:
		printf(" parked_peak=%" PRIu64 " answered=%" PRIu64, st->parked_peak, st->answered);
		break;
	case MODE_STREAM:
		printf(" direction=%s bytes=%" PRIu64 " mib_s=%.1f",
		    o->direction == DIR_UP ? "up" : "down",
		    o->direction == DIR_UP ? st->bytes_up : st->bytes_down, rt->mib_s);
		break;
	case MODE_COLD:
		printf(" answered=%" PRIu64 " failures=%" PRIu64 " seconds=%.2f", st->answered,
		    (uint64_t)o->connections - st->requests, (double)st->window_us / 1e6);
		break;
	}
	printf(" p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f errors=%" PRIu64 "%s\n",
	    ms(hist_quantile(h, 0.50)), ms(hist_quantile(h, 0.99)), ms(hist_quantile(h, 0.999)),
	    ms(h->max), errs, kinds);
	fflush(stdout);
}

static void
rates_add(struct rates *rt, const struct options *o, const struct stats *st)
{
	double w = (double)st->window_us / 1e6;

	if (w <= 0)
		return;
	rt->rps += (double)st->requests_in_window / w;
	rt->hps += (double)st->handshakes_in_window / w;
	if (o->mode == MODE_STREAM)
		rt->mib_s += (double)(o->direction == DIR_UP ? st->bytes_up : st->bytes_down) /
		    w / (1024.0 * 1024.0);
}

static void
stats_merge(struct stats *into, const struct stats *from)
{
	unsigned i;

	into->requests += from->requests;
	into->requests_in_window += from->requests_in_window;
	into->conns += from->conns;
	into->handshakes += from->handshakes;
	into->handshakes_in_window += from->handshakes_in_window;
	into->bytes_up += from->bytes_up;
	into->bytes_down += from->bytes_down;
	into->parked_peak += from->parked_peak;
	into->answered += from->answered;
	into->abandoned += from->abandoned;
	if (from->window_us > into->window_us)
		into->window_us = from->window_us;
	if (from->elapsed_us > into->elapsed_us)
		into->elapsed_us = from->elapsed_us;
	for (i = 0; i < ERR_MAX; i++)
		into->errors[i] += from->errors[i];
	for (i = 0; i < 600; i++)
		into->status[i] += from->status[i];
	hist_merge(&into->req, &from->req);
	hist_merge(&into->conn, &from->conn);
	if (into->first_error[0] == '\0')
		memcpy(into->first_error, from->first_error, sizeof(into->first_error));
}

/* ---- command line ------------------------------------------------------------ */
static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: %s MODE --port P (--certs DIR | --cert F --key F [--user U]) [options]\n"
	    "modes: rps handshake park stream cold\n"
	    "  --host ADDR          IPv4 address to connect to (127.0.0.1)\n"
	    "  --port P             TCP port (required)\n"
	    "  --server-name NAME   SNI, Host header and, with --ca, the name verified\n"
	    "  --ca FILE            verify the server's certificate against FILE\n"
	    "  --certs DIR          device fleet: NAME.pem + NAME.key, User=NAME\n"
	    "  --max-certs K        load at most K devices of the fleet\n"
	    "  --cert F --key F     one device for every connection; --user U (default: device)\n"
	    "  -c, --connections N  concurrent connections (rps 16, handshake 16, park 100,\n"
	    "                       stream 1, cold: every device)\n"
	    "  -d, --duration T     seconds: window (rps, handshake) or longest wait (10;\n"
	    "                       park, stream, cold 600)\n"
	    "  --requests R         requests per connection slot, then stop (0 = no limit)\n"
	    "  --timeout S          seconds without progress before a step fails (30; park:\n"
	    "                       the duration)\n"
	    "  --size BYTES         stream body size (k/m/g suffixes; 100m)\n"
	    "  --direction up|down  stream direction (down)\n"
	    "  --path P             request path (/Microsoft-Server-ActiveSync)\n"
	    "  --expect STATUS      the status every response must have (200)\n"
	    "  --max-handshakes K   TLS handshakes in flight at once (256)\n"
	    "  --procs P            split the connections over P processes (fd limits)\n"
	    "  --tls12 | --tls13    highest TLS version offered (default: TLS 1.3)\n"
	    "  --progress S         a progress line on stderr every S seconds\n",
	    progname);
}

static int
parse_uint(const char *s, unsigned long long max, unsigned long long *out)
{
	char *end;
	unsigned long long v, mul = 1;

	errno = 0;
	if (s[0] == '-' || s[0] == '\0')
		return -1;
	v = strtoull(s, &end, 10);
	if (errno != 0 || end == s)
		return -1;
	if (*end == 'k' || *end == 'K')
		mul = 1024ull;
	else if (*end == 'm' || *end == 'M')
		mul = 1024ull * 1024;
	else if (*end == 'g' || *end == 'G')
		mul = 1024ull * 1024 * 1024;
	else if (*end != '\0')
		return -1;
	if (mul != 1 && end[1] != '\0')
		return -1;
	if (v > max / mul)
		return -1;
	*out = v * mul;
	return 0;
}

static int
parse_secs(const char *s, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || end == s || *end != '\0' || !(v > 0) || v > 86400)
		return -1;
	*out = v;
	return 0;
}

enum {
	OPT_HOST = 256, OPT_PORT, OPT_SNI, OPT_CA, OPT_CERTS, OPT_MAXCERTS, OPT_CERT, OPT_KEY,
	OPT_USER, OPT_REQUESTS, OPT_TIMEOUT, OPT_SIZE, OPT_DIRECTION, OPT_PATH, OPT_EXPECT,
	OPT_MAXHS, OPT_PROCS, OPT_TLS12, OPT_TLS13, OPT_PROGRESS, OPT_HELP,
};

static int
parse_args(int argc, char **argv, struct options *o)
{
	static const struct option lopts[] = {
		{ "host", required_argument, NULL, OPT_HOST },
		{ "port", required_argument, NULL, OPT_PORT },
		{ "server-name", required_argument, NULL, OPT_SNI },
		{ "ca", required_argument, NULL, OPT_CA },
		{ "certs", required_argument, NULL, OPT_CERTS },
		{ "max-certs", required_argument, NULL, OPT_MAXCERTS },
		{ "cert", required_argument, NULL, OPT_CERT },
		{ "key", required_argument, NULL, OPT_KEY },
		{ "user", required_argument, NULL, OPT_USER },
		{ "connections", required_argument, NULL, 'c' },
		{ "duration", required_argument, NULL, 'd' },
		{ "requests", required_argument, NULL, OPT_REQUESTS },
		{ "timeout", required_argument, NULL, OPT_TIMEOUT },
		{ "size", required_argument, NULL, OPT_SIZE },
		{ "direction", required_argument, NULL, OPT_DIRECTION },
		{ "path", required_argument, NULL, OPT_PATH },
		{ "expect", required_argument, NULL, OPT_EXPECT },
		{ "max-handshakes", required_argument, NULL, OPT_MAXHS },
		{ "procs", required_argument, NULL, OPT_PROCS },
		{ "tls12", no_argument, NULL, OPT_TLS12 },
		{ "tls13", no_argument, NULL, OPT_TLS13 },
		{ "progress", required_argument, NULL, OPT_PROGRESS },
		{ "help", no_argument, NULL, OPT_HELP },
		{ NULL, 0, NULL, 0 },
	};
	unsigned long long v;
	int ch, have_conns = 0, have_duration = 0, have_timeout = 0;
	unsigned i;

	memset(o, 0, sizeof(*o));
	o->host = "127.0.0.1";
	o->path = "/Microsoft-Server-ActiveSync";
	o->timeout = 30;
	o->size = 100ull * 1024 * 1024;
	o->direction = DIR_DOWN;
	o->max_handshakes = 256;
	o->procs = 1;
	o->expect_status = 200;
	if (argc < 2 || argv[1][0] == '-') {
		if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
			usage(stdout);
			exit(0);
		}
		say("the first argument must be the mode");
		return -1;
	}
	for (i = 0; i < sizeof(mode_names) / sizeof(mode_names[0]); i++)
		if (strcmp(argv[1], mode_names[i]) == 0)
			break;
	if (i == sizeof(mode_names) / sizeof(mode_names[0])) {
		say("unknown mode %s (rps handshake park stream cold)", argv[1]);
		return -1;
	}
	o->mode = (enum mode)i;
	optind = 2;
	while ((ch = getopt_long(argc, argv, "c:d:h", lopts, NULL)) != -1) {
		switch (ch) {
		case OPT_HOST: o->host = optarg; break;
		case OPT_PORT:
			if (parse_uint(optarg, 65535, &v) != 0 || v == 0) {
				say("--port %s: 1..65535", optarg);
				return -1;
			}
			o->port = (unsigned)v;
			break;
		case OPT_SNI: o->server_name = optarg; break;
		case OPT_CA: o->ca = optarg; break;
		case OPT_CERTS: o->certs_dir = optarg; break;
		case OPT_MAXCERTS:
			if (parse_uint(optarg, 10000000, &v) != 0) {
				say("--max-certs %s: a number", optarg);
				return -1;
			}
			o->max_certs = (unsigned)v;
			break;
		case OPT_CERT: o->cert = optarg; break;
		case OPT_KEY: o->key = optarg; break;
		case OPT_USER: o->user = optarg; break;
		case 'c':
			if (parse_uint(optarg, 1000000, &v) != 0 || v == 0) {
				say("--connections %s: 1..1000000", optarg);
				return -1;
			}
			o->connections = (unsigned)v;
			have_conns = 1;
			break;
		case 'd':
			if (parse_secs(optarg, &o->duration) != 0) {
				say("--duration %s: seconds, > 0, at most 86400", optarg);
				return -1;
			}
			have_duration = 1;
			break;
		case OPT_REQUESTS:
			if (parse_uint(optarg, UINT_MAX, &v) != 0) {
				say("--requests %s: a number", optarg);
				return -1;
			}
			o->requests = (unsigned)v;
			break;
		case OPT_TIMEOUT:
			if (parse_secs(optarg, &o->timeout) != 0) {
				say("--timeout %s: seconds, > 0, at most 86400", optarg);
				return -1;
			}
			have_timeout = 1;
			break;
		case OPT_SIZE:
			if (parse_uint(optarg, 1ull << 40, &v) != 0) {
				say("--size %s: bytes with an optional k/m/g", optarg);
				return -1;
			}
			o->size = v;
			break;
		case OPT_DIRECTION:
			if (strcmp(optarg, "up") == 0)
				o->direction = DIR_UP;
			else if (strcmp(optarg, "down") == 0)
				o->direction = DIR_DOWN;
			else {
				say("--direction %s: up or down", optarg);
				return -1;
			}
			break;
		case OPT_PATH:
			if (optarg[0] != '/' || strpbrk(optarg, " \r\n?") != NULL) {
				say("--path %s: an absolute path without blanks or query", optarg);
				return -1;
			}
			o->path = optarg;
			break;
		case OPT_EXPECT:
			if (parse_uint(optarg, 599, &v) != 0 || v < 100) {
				say("--expect %s: an HTTP status", optarg);
				return -1;
			}
			o->expect_status = (int)v;
			break;
		case OPT_MAXHS:
			if (parse_uint(optarg, 1000000, &v) != 0 || v == 0) {
				say("--max-handshakes %s: 1..1000000", optarg);
				return -1;
			}
			o->max_handshakes = (unsigned)v;
			break;
		case OPT_PROCS:
			if (parse_uint(optarg, MAX_PROCS, &v) != 0 || v == 0) {
				say("--procs %s: 1..%d", optarg, MAX_PROCS);
				return -1;
			}
			o->procs = (unsigned)v;
			break;
		case OPT_TLS12: o->tls_max = TLS1_2_VERSION; break;
		case OPT_TLS13: o->tls_max = TLS1_3_VERSION; break;
		case OPT_PROGRESS:
			if (parse_uint(optarg, 3600, &v) != 0) {
				say("--progress %s: seconds", optarg);
				return -1;
			}
			o->progress = (int)v;
			break;
		case 'h':
		case OPT_HELP:
			usage(stdout);
			exit(0);
		default:
			return -1;
		}
	}
	if (optind != argc) {
		say("unexpected argument %s", argv[optind]);
		return -1;
	}
	if (o->port == 0) {
		say("--port is required");
		return -1;
	}
	if ((o->certs_dir != NULL) == (o->cert != NULL) || (o->cert != NULL) != (o->key != NULL)) {
		say("give either --certs DIR or --cert FILE --key FILE");
		return -1;
	}
	if (o->server_name != NULL && strpbrk(o->server_name, " \r\n") != NULL) {
		say("--server-name must not contain blanks");
		return -1;
	}
	if (o->user != NULL && strpbrk(o->user, " \r\n&?#%") != NULL) {
		say("--user must not contain blanks or URL syntax");
		return -1;
	}
	if (!have_duration)
		o->duration = (o->mode == MODE_RPS || o->mode == MODE_HANDSHAKE) ? 10 : 600;
	if (!have_timeout && o->mode == MODE_PARK)
		o->timeout = o->duration;
	if (o->requests == 0 && o->mode != MODE_RPS && o->mode != MODE_HANDSHAKE)
		o->requests = 1;
	if (!have_conns) {
		if (o->mode == MODE_PARK)
			o->connections = 100;
		else if (o->mode == MODE_STREAM)
			o->connections = 1;
		else if (o->mode == MODE_COLD)
			o->connections = 0;	/* every device, set after loading */
		else
			o->connections = 16;
	}
	return 0;
}

static void
raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static rlim_t
nofile_limit(void)
{
	struct rlimit rl;

	return getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur : 1024;
}

static int
read_full(int fd, void *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		ssize_t r = read(fd, (char *)buf + got, len - got);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		got += (size_t)r;
	}
	return 0;
}

static int
write_full(int fd, const void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t r = write(fd, (const char *)buf + done, len - done);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		done += (size_t)r;
	}
	return 0;
}

int
main(int argc, char **argv)
{
	struct options o;
	struct device *devs = NULL;
	struct stats *total = NULL, *part = NULL;
	struct rates rt = { 0, 0, 0 };
	unsigned ndevs = 0, i;
	int rc = 2, fds[MAX_PROCS];
	pid_t pids[MAX_PROCS];
	unsigned started = 0;

	for (i = 0; i < MAX_PROCS; i++) {
		fds[i] = -1;
		pids[i] = -1;
	}
	for (i = 0; i < PAT_LEN; i++)
		pattern[i] = (unsigned char)(i & 0xff);
	signal(SIGPIPE, SIG_IGN);
	if (parse_args(argc, argv, &o) != 0) {
		usage(stderr);
		return 2;
	}
	if (o.certs_dir != NULL) {
		if (load_fleet(o.certs_dir, o.max_certs, &devs, &ndevs) != 0)
			goto cleanup;
	} else {
		char user[64];

		snprintf(user, sizeof(user), "%s", o.user ? o.user : "device");
		if ((devs = calloc(1, sizeof(*devs))) == NULL)
			goto cleanup;
		if (load_pair(&devs[0], o.cert, o.key, user, 0) != 0)
			goto cleanup;
		ndevs = 1;
	}
	if (o.mode == MODE_COLD) {
		if (o.connections == 0)
			o.connections = ndevs;
		if (o.connections > ndevs) {
			say("cold needs one device per connection: %u connections, %u devices",
			    o.connections, ndevs);
			goto cleanup;
		}
	}
	if (o.procs > o.connections)
		o.procs = o.connections;
	raise_nofile();
	if ((rlim_t)(o.connections / o.procs + 1 + 32) > nofile_limit()) {
		say("%u connections per process exceed the descriptor limit %llu: use --procs %u",
		    o.connections / o.procs + 1, (unsigned long long)nofile_limit(),
		    (unsigned)(o.connections / (nofile_limit() > 64 ? nofile_limit() - 64 : 1)) + 1);
		goto cleanup;
	}
	total = calloc(1, sizeof(*total));
	part = calloc(1, sizeof(*part));
	if (total == NULL || part == NULL)
		goto cleanup;
	fflush(stdout);
	fflush(stderr);
	if (o.procs == 1) {
		if (run_one(&o, devs, ndevs, total) != 0)
			goto cleanup;
		rates_add(&rt, &o, total);
	} else {
		unsigned base = o.connections / o.procs, extra = o.connections % o.procs, off = 0;
		int failed = 0;

		for (i = 0; i < o.procs; i++) {
			struct options co = o;
			int p[2];
			pid_t pid;

			co.connections = base + (i < extra ? 1 : 0);
			co.conn_offset = off;
			off += co.connections;
			if (pipe(p) != 0) {
				say("pipe: %s", strerror(errno));
				failed = 1;
				break;
			}
			pid = fork();
			if (pid < 0) {
				say("fork: %s", strerror(errno));
				close(p[0]);
				close(p[1]);
				failed = 1;
				break;
			}
			if (pid == 0) {
				int crc;

				close(p[0]);
				for (unsigned j = 0; j < started; j++)
					close(fds[j]);
				crc = run_one(&co, devs, ndevs, part) == 0 &&
				    write_full(p[1], part, sizeof(*part)) == 0 ? 0 : 2;
				_exit(crc);
			}
			close(p[1]);
			fds[started] = p[0];
			pids[started] = pid;
			started++;
		}
		for (i = 0; i < started; i++) {
			int status = 0;

			if (read_full(fds[i], part, sizeof(*part)) != 0) {
				say("process %u (pid %ld) sent no results", i, (long)pids[i]);
				failed = 1;
			} else {
				stats_merge(total, part);
				rates_add(&rt, &o, part);
			}
			close(fds[i]);
			fds[i] = -1;
			if (waitpid(pids[i], &status, 0) > 0 &&
			    !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
				say("process %u (pid %ld) ended with status %d", i, (long)pids[i],
				    status);
				failed = 1;
			}
		}
		if (failed)
			goto cleanup;
	}
	report(&o, total, &rt);
	rc = total_errors(total) == 0 && total->requests > 0 ? 0 : 1;
	if (total->requests == 0 && total_errors(total) == 0)
		say("no request was answered");
cleanup:
	for (i = 0; i < MAX_PROCS; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	if (devs != NULL) {
		for (i = 0; i < ndevs; i++) {
			X509_free(devs[i].cert);
			EVP_PKEY_free(devs[i].key);
		}
		free(devs);
	}
	free(total);
	free(part);
	return rc;
}
