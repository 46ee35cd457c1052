/*
 * stream.c — one device connection, from accept to its single close
 * (docs/architecture.md "One request", SPEC §4, §5).
 *
 * States of a connection:
 *
 *   PROXY       with [server] proxy_protocol = on: the load balancer's PROXY
 *               v1/v2 header (proxyproto.c) is read from the raw socket,
 *               exactly its bytes and not one of the TLS bytes behind it,
 *               within client_header_timeout; its source address becomes
 *               the connection's c_ip (logs, X-Forwarded-For). Missing or
 *               malformed: closed with bad_proxy_protocol.
 *   HANDSHAKE   TLS with a required client certificate (tls.c); a refused
 *               handshake closes with its cert_* reason.
 *   IDENTITY    an embedding program's identity hook refines the mapping
 *               (policy.c; asynchronous), within client_header_timeout.
 *   OCSP        with [tls] ocsp = on|required: the certificate's status is
 *               asked (ocsp.c, asynchronous, cached) before any request.
 *   HEAD        reading a request head (http.c); idle_timeout until the
 *               first byte, client_header_timeout after it.
 *   AUTHORIZE   [devices] lists and an embedding program's authorize hook
 *               (policy.c; asynchronous) judge the decoded request.
 *   BACKEND     waiting for a backend connection private to the user
 *               (backend.c) ...
 *   TOKEN       ... then for kcd's Negotiate token for that connection's
 *               channel bindings (kcd_client.c).
 *   FORWARD     the head is sent; the request body (if any) streams to the
 *               backend while the response is awaited (request_timeout:
 *               a parked Ping sits here, cheaply).
 *   RESPONSE    the response head went to the device; its body streams.
 *   CLOSING     a final answer is being flushed; then stream_close().
 *
 * Every path ends in stream_close(s, reason, detail) exactly once: it writes
 * the access-log line of an unfinished request, counts, and frees. Error
 * answers carry no body and no internal name (SPEC §5: the device never
 * sees SPNs, host names or Kerberos text; the logs do).
 *
 * Memory: a request's parse state (struct http_msg, ~2 KiB) lives only
 * while a head is being parsed; what the log needs is copied into small
 * bounded strings. Bodies move between the two bufferevents with
 * evbuffer_remove_buffer (no copy) and back-pressure by watermarks, so a
 * connection's memory is bounded whatever the body size.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/queue.h>
#include <sys/time.h>
#include <sys/uio.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "access_log.h"
#include "backend.h"
#include "clock.h"
#include "codec.h"
#include "config.h"
#include "eas.h"
#include "front.h"
#include "http.h"
#include "identity.h"
#include "kcd_client.h"
#include "log.h"
#include "memcache.h"
#include "metrics.h"
#include "ocsp.h"
#include "policy.h"
#include "proxyproto.h"
#include "reason.h"
#include "stream.h"
#include "tls.h"

#define STREAM_MAGIC	0x5354524du	/* "STRM" */
#define REQ_MAGIC	0x52455153u	/* "REQS" */

/* Bytes queued toward one side before we stop reading the other. */
#define PIPE_HIGH	(256u * 1024u)
#define PIPE_LOW	(64u * 1024u)
/* The same for a request body, device to backend: what the backend has
 * not taken yet, plus at most DEV_READ_MAX read beyond it. */
#define REQ_PIPE_HIGH	(128u * 1024u)
/* Bytes per read or write call on a bulk transfer. libevent's default is
 * 16 KiB per bufferevent callback, and evbuffer_read (every plain socket
 * read) takes at most 4 KiB: a 100 MiB download cost 25,600 reads, TLS
 * records and epoll_ctl calls. 60 KiB (not 64) keeps a top-up chain plus
 * libevent's chain header within one 64 KiB allocation. */
#define BULK_IO		(60u * 1024u)
#define BULK_IO_WRITE	(4u * BULK_IO)	/* several full TLS records per write event */
/* A token asked for ahead (struct ahead) is used only this young, and
 * dropped once older (on_flush): it serves requests that follow each other
 * closely, and the credential it was made from is used at most this much
 * past credential_ttl (a user kcd would now refuse is refused from then
 * on). The acceptor's clock skew (5 minutes) is far. */
#define AHEAD_MAX_MS	1000u
/* How long a final error answer may take to flush. */
#define LINGER_MS	5000u
/* Retry-After for 503 answers (seconds). */
#define RETRY_AFTER	"30"

/* A string literal into an evbuffer, without printf. */
#define ADD_LIT(buf, lit)	evbuffer_add((buf), (lit), sizeof(lit) - 1)

#define STEM_MAX	256
#define QUERY_MAX	512
#define UA_MAX		160
#define HOST_MAX	256
#define DETAIL_MAX	64

enum st {
	ST_PROXY,		/* [server] proxy_protocol: reading the PROXY header */
	ST_HANDSHAKE,
	ST_IDENTITY,		/* the embedding program's identity hook */
	ST_DIRECTORY,		/* [ldap]: kcd's directory checks (IDENTIFY) */
	ST_OCSP,		/* [tls] ocsp: the device certificate's status */
	ST_HEAD,
	ST_AUTHORIZE,		/* device policy, the authorize hook */
	ST_BACKEND,
	ST_TOKEN,
	ST_FORWARD,
	ST_RESPONSE,
	ST_CLOSING,
};

/* What every stream of a worker shares; the worker keeps it
 * (front_stream_env). */
struct senv {
	const struct config *cfg;
	struct event_base *base;
	SSL_CTX *front_ctx;
	SSL_CTX *backend_ctx;		/* NULL when [backend] tls = off */
	struct evdns_base *dns;
	struct backend *backend;
	struct ocsp *ocsp;		/* NULL when [tls] ocsp = off */
	struct identity_params idp;
	struct http_limits req_lim;
	struct http_limits resp_lim;
	struct event *flush_ev;		/* access log flush, every second */
	struct event *bufs_ev;		/* bufs_sweep, while a stream is in `kept` */
	struct evbuffer *dev_direct;	/* a response part put together for
					 * dev_send; empty between calls */
	struct evbuffer *be_direct;	/* the same toward the backend (be_send) */
	LIST_HEAD(, stream) streams;	/* every open stream, for drain and exit */
	LIST_HEAD(, stream) kept;	/* the streams whose record buffers stay */
};

/*
 * The environment of the stream being served. A process may hold several
 * workers (the embedding library runs a new generation beside the one that
 * drains on the same loop), so every entry into this file sets it first:
 * stream_of() for every callback, stream_accept, stream_drain_idle,
 * stream_shutdown and the environment's own timer. Code below uses env.
 */
static struct senv *env;

/* One request; freed when it is logged. Kept small: a parked Ping holds it
 * for up to an hour. */
struct req {
	unsigned magic;
	uint64_t start_wall_ms;
	uint64_t start_mono_ms;
	enum http_method method;
	char method_s[HTTP_METHOD_MAX + 1];
	char stem[STEM_MAX];
	char query[QUERY_MAX];
	char ua[UA_MAX];
	char host[HOST_MAX];		/* the device's Host, for X-MS-Location */
	char eas_cmd[EAS_CMD_MAX];
	char device_id[EAS_LOG_MAX + 1];
	char device_type[EAS_LOG_MAX + 1];
	struct evbuffer *head_out;	/* rewritten head without Authorization
					 * and the final CRLF; freed once sent */
	struct http_body reqb;		/* request body framing */
	struct http_body respb;		/* response body framing */
	struct http_msg *resp_msg;	/* only while a response head is parsed */
	int has_body;
	int dev_keep_alive;
	int expect_continue;
	int req_body_done;
	int resp_head_sent;
	int resp_chunk_out;		/* re-encode the response as chunked */
	int resp_close_delim;		/* device response delimited by close */
	int be_close;			/* the backend closes after this answer */
	int retried;
	int parked;
	int mutual_checked;		/* the response head's mutual-auth token
					 * was verified (or there was none) */
	size_t resp_head_len;		/* its bytes, while kcd verifies it */
	uint32_t ctx_id;		/* kcd's kept context for that token */
	struct bconn *bc;
	struct backend_wait *bw;
	struct kcd_req *kr;
	struct policy_call *pc;		/* authorize hook call in flight */
	uint64_t cs_bytes, sc_bytes;
	int status;
	enum reason reason;
	char detail[DETAIL_MAX];
	int64_t kdc_ms;
	char backend_name[HOST_MAX + 8];
};

/*
 * The next request's token, asked of kcd while this request is forwarded
 * (ask_ahead): on a kept-alive connection the next request then finds its
 * token here instead of waiting a loop turn, or more, for kcd's answer.
 * Asked only from a connection's second request on (most connections that
 * make two make many), never during a Ping (it parks for up to an hour)
 * or a retry after a 401, and used only for the same channel bindings
 * within AHEAD_MAX_MS; an unused one is dropped with its kept context
 * (at the next request, the connection's end, or on_flush's sweep, so an
 * idle connection holds none for long). Owned by the stream.
 */
struct ahead {
	struct kcd_req *kr;		/* in flight; NULL once answered */
	int waited;			/* the request in ST_TOKEN waits for it */
	uint64_t asked_ms;		/* mono */
	char *token;			/* answered: the token (malloc) */
	uint32_t ctx_id;		/* its kept context (ours to release) */
	unsigned cb_len;
	unsigned char cb[KCD_CB_MAX];	/* the bindings it was asked with */
};

struct stream {
	unsigned magic;
	struct worker *w;
	struct bufferevent *dev;
	struct event *timer;
	enum st state;
	char c_ip[INET6_ADDRSTRLEN];
	char s_ip[INET6_ADDRSTRLEN];
	unsigned s_port;
	/* identity, mapped once per connection after the handshake */
	int id_ok;
	char principal[IDENTITY_PRINCIPAL_MAX];
	enum reason id_reason;		/* why not id_ok: identity_unmapped, ldap_* */
	char id_detail[DETAIL_MAX];
	struct kcd_req *dirq;		/* directory check in flight */
	struct http_msg *req_msg;	/* only while a request head is parsed */
	struct ocsp_query *oq;		/* OCSP check in flight */
	struct policy_call *idc;	/* identity hook call in flight */
	int head_bytes_seen;		/* a byte of the next head arrived */
	unsigned nreq;
	struct req *rq;
	struct ahead *ahead;		/* the next request's token, or NULL */
	struct pp_read *pp;		/* only while the PROXY header is read */
	int pp_local;			/* the header was LOCAL/UNKNOWN (a balancer's check) */
	int bufs_kept;			/* OpenSSL keeps its record buffers (bufs_keep) */
	int busy;			/* a request ended since on_flush's last sweep */
	int dev_failed;			/* dev_read_more met the end: on_dev_event is
					 * due and reading the device stays off */
	struct senv *env;		/* its worker's */
	LIST_ENTRY(stream) link;
	LIST_ENTRY(stream) kept_link;	/* in env->kept while bufs_kept */
};

/* The PROXY header being read: the raw socket (the TLS bufferevent is made
 * once the header is consumed) and the header bytes consumed so far. */
struct pp_read {
	int fd;
	struct event *ev;
	size_t len;
	uint8_t buf[PROXYPROTO_MAX_LEN];
};

static void stream_close(struct stream *s, enum reason r, const char *detail);
static void pp_free(struct stream *s, int close_fd);
static void ahead_drop(struct stream *s, int unused);
static void process_input(struct stream *s);
static void pump_request_body(struct stream *s);
static void set_parked(struct stream *s, struct req *rq);
static int dev_read_more(struct stream *s, size_t want);
static void pump_response(struct stream *s);
static void on_dev_read(struct bufferevent *bev, void *arg);
static void on_dev_write(struct bufferevent *bev, void *arg);
static void on_dev_event(struct bufferevent *bev, short what, void *arg);
static void on_be_read(struct bufferevent *bev, void *arg);
static void on_be_write(struct bufferevent *bev, void *arg);
static void on_be_event(struct bufferevent *bev, short what, void *arg);
static void start_backend(struct stream *s);
static void on_ocsp(enum reason r, const char *detail, void *arg);
static void check_ocsp(struct stream *s);
static void identity_set(struct stream *s, const struct policy_identity *pid);
static void on_identity(const struct policy_identity *pid, void *arg);
static void identified(struct stream *s);
static void authorize(struct stream *s);
static void on_timer(evutil_socket_t fd, short what, void *arg);

/* ---- small helpers -------------------------------------------------------- */

static struct stream *
stream_of(void *arg)
{
	struct stream *s = arg;

	assert(s != NULL && s->magic == STREAM_MAGIC);
	env = s->env;
	return s;
}

/* Copy a slice into a bounded C string. */
static void
slice_copy(char *dst, size_t cap, const char *buf, struct http_slice sl)
{
	size_t n = sl.len < cap - 1 ? sl.len : cap - 1;

	memcpy(dst, buf + sl.off, n);
	dst[n] = '\0';
}

/* Parse states and requests (2 KiB each, several allocated and freed per
 * loop turn: glibc's slow path, slower on a fragmented heap) are memcache
 * blocks, kept per thread for the next ones. msg_get's is uninitialised
 * (http_msg_init). */
static struct http_msg *
msg_get(void)
{
	return memcache_malloc(sizeof(struct http_msg));
}

static void
msg_put(struct http_msg *m)
{
	memcache_free(m);
}

/* A bounded copy of a C string (what snprintf "%s" did, without the
 * format machinery: several per request). */
static void
str_copy(char *dst, size_t cap, const char *src)
{
	size_t n = strnlen(src, cap - 1);

	memcpy(dst, src, n);
	dst[n] = '\0';
}

/* A C string, and a number in decimal, into an evbuffer without printf. */
static void
add_str(struct evbuffer *b, const char *str)
{
	evbuffer_add(b, str, strlen(str));
}

static void
add_u64(struct evbuffer *b, uint64_t v)
{
	char tmp[CODEC_U64_DEC_MAX];

	evbuffer_add(b, tmp, codec_u64_dec(tmp, v));
}

static void
arm_timer(struct stream *s, uint64_t ms)
{
	struct timeval tv = { (time_t)(ms / 1000u), (suseconds_t)((ms % 1000u) * 1000u) };

	evtimer_add(s->timer, &tv);
}

static const char *
status_text(int status)
{
	switch (status) {
	case 400: return "Bad Request";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 413: return "Payload Too Large";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	default: return "Error";
	}
}

/* ---- the access log and the close path ------------------------------------- */

static void
req_free(struct stream *s)
{
	struct req *rq = s->rq;

	if (rq == NULL)
		return;
	assert(rq->magic == REQ_MAGIC);
	policy_cancel(rq->pc);
	if (rq->kr != NULL)
		kcd_request_cancel(rq->kr);
	if (s->ahead != NULL)
		s->ahead->waited = 0;	/* kept for the next request */
	if (rq->bw != NULL)
		backend_cancel(rq->bw);
	if (rq->bc != NULL)
		backend_release(rq->bc, 0);
	if (rq->ctx_id != 0)
		kcd_ctx_release(front_kcd(s->w), rq->ctx_id);
	if (rq->head_out != NULL)
		evbuffer_free(rq->head_out);
	msg_put(rq->resp_msg);
	if (rq->parked)
		metrics_self()->parked--;
	rq->magic = 0;
	memcache_free(rq);
	s->rq = NULL;
}

/* One access-log line and one counter per request, whatever its end. */
static void
log_request(struct stream *s, struct req *rq, enum reason r, const char *detail, int status)
{
	struct access_rec a = { 0 };
	char tok[96];

	a.start_ms = rq != NULL ? rq->start_wall_ms : clock_unix_ms();
	a.s_ip = s->s_ip;
	a.s_port = s->s_port;
	a.c_ip = s->c_ip;
	a.username = s->id_ok ? s->principal : NULL;
	a.status = status;
	a.reason = reason_token_detail(r, detail, tok, sizeof(tok));
	a.kdc_ms = -1;
	if (rq != NULL) {
		a.method = rq->method_s;
		a.uri_stem = rq->stem;
		a.uri_query = rq->query;
		a.user_agent = rq->ua;
		a.sc_bytes = rq->sc_bytes;
		a.cs_bytes = rq->cs_bytes;
		a.time_taken_ms = clock_mono_ms() - rq->start_mono_ms;
		a.device_id = rq->device_id;
		a.device_type = rq->device_type;
		a.eas_cmd = rq->eas_cmd;
		a.backend = rq->backend_name[0] ? rq->backend_name : NULL;
		a.kdc_ms = rq->kdc_ms;
	}
	access_log_write(&a);
	policy_log(front_policy(s->w), &a);
	metrics_count_request(r, status);
}

/*
 * The one close path. Logs the unfinished request (if any) with reason r,
 * releases the backend connection without reuse, frees everything. The
 * caller must not touch s afterwards.
 */
static void
stream_close(struct stream *s, enum reason r, const char *detail)
{
	char tok[96];

	assert(s->magic == STREAM_MAGIC);
	if (s->rq != NULL) {
		struct req *rq = s->rq;
		int status = rq->resp_head_sent ? rq->status : 0;
		/* a request that ended before its answer: log why */
		log_request(s, rq, r, detail, status);
		req_free(s);
	}
	if (r != REASON_OK && r != REASON_CLIENT_CLOSED && r != REASON_IDLE_TIMEOUT)
		log_msg(reason_is_peer(r) ? LOG_LVL_INFO : LOG_LVL_ERROR, "stream",
		    "%s: connection closed: %s (%s)", s->c_ip,
		    reason_token_detail(r, detail, tok, sizeof(tok)), reason_text(r));
	else
		log_debug("stream", "%s: connection closed: %s", s->c_ip, reason_token(r));
	msg_put(s->req_msg);
	ahead_drop(s, 1);
	if (s->pp != NULL)
		pp_free(s, 1);
	policy_cancel(s->idc);
	if (s->dirq != NULL)
		kcd_request_cancel(s->dirq);
	if (s->oq != NULL)
		ocsp_cancel(s->oq);
	if (s->timer != NULL)
		event_free(s->timer);
	if (s->bufs_kept)
		LIST_REMOVE(s, kept_link);
	if (s->dev != NULL)
		bufferevent_free(s->dev);	/* frees the SSL and closes the fd */
	LIST_REMOVE(s, link);
	front_conn_closed(s->w);
	s->magic = 0;
	free(s);
}

/* Close once the output is flushed (final answers), bounded by LINGER_MS. */
static void
close_after_flush(struct stream *s)
{
	s->state = ST_CLOSING;
	bufferevent_disable(s->dev, EV_READ);
	if (evbuffer_get_length(bufferevent_get_output(s->dev)) == 0) {
		stream_close(s, REASON_OK, NULL);
		return;
	}
	bufferevent_setwatermark(s->dev, EV_WRITE, 0, 0);
	arm_timer(s, LINGER_MS);
}

/*
 * Refuse the current request with the status of reason r (no body, no
 * internal detail), log it, and close the connection after the answer is
 * flushed. When the response head already went out, the connection is just
 * closed (the device sees a truncated response, never a second head).
 */
static void
respond_error(struct stream *s, enum reason r, const char *detail)
{
	struct req *rq = s->rq;
	int status = reason_status(r);
	char tok[96];

	if (rq != NULL && rq->resp_head_sent) {
		stream_close(s, r, detail);
		return;
	}
	if (status == 0)
		status = 500;
	evbuffer_add_printf(bufferevent_get_output(s->dev),
	    "HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n%s\r\n",
	    status, status_text(status),
	    status == 503 ? "Retry-After: " RETRY_AFTER "\r\n" : "");
	log_msg(reason_is_peer(r) ? LOG_LVL_INFO : LOG_LVL_ERROR, "stream",
	    "%s %s: %d %s (%s)", s->c_ip, s->id_ok ? s->principal : "-", status,
	    reason_token_detail(r, detail, tok, sizeof(tok)), reason_text(r));
	log_request(s, rq, r, detail, status);
	req_free(s);
	close_after_flush(s);
}

/* ---- accept and handshake -------------------------------------------------- */

static void
addr_text(const struct sockaddr *sa, char *buf, size_t len, unsigned *port)
{
	buf[0] = '\0';
	if (port != NULL)
		*port = 0;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &in->sin_addr, buf, (socklen_t)len);
		if (port != NULL)
			*port = ntohs(in->sin_port);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &in6->sin6_addr, buf, (socklen_t)len);
		if (port != NULL)
			*port = ntohs(in6->sin6_port);
	}
}

/* Start the TLS handshake on fd (the stream's from here on). */
static int
start_tls(struct stream *s, int fd)
{
	SSL *ssl = NULL;

	s->state = ST_HANDSHAKE;
	if ((ssl = SSL_new(env->front_ctx)) == NULL) {
		close(fd);
		stream_close(s, REASON_OUT_OF_MEMORY, "accept");
		return -1;
	}
	s->dev = bufferevent_openssl_socket_new(env->base, fd, ssl,
	    BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
	if (s->dev == NULL) {
		SSL_free(ssl);
		close(fd);
		stream_close(s, REASON_OUT_OF_MEMORY, "bufferevent");
		return -1;
	}
	/* A dirty shutdown (no close_notify) is how most devices hang up. */
	bufferevent_openssl_set_allow_dirty_shutdown(s->dev, 1);
	bufferevent_set_max_single_read(s->dev, BULK_IO);
	bufferevent_set_max_single_write(s->dev, BULK_IO_WRITE);
	bufferevent_setcb(s->dev, on_dev_read, on_dev_write, on_dev_event, s);
	bufferevent_enable(s->dev, EV_READ | EV_WRITE);
	arm_timer(s, env->cfg->server.client_header_timeout);
	return 0;
}

/* ---- the PROXY protocol header (proxy_protocol = on) ------------------------- */

static void
pp_free(struct stream *s, int close_fd)
{
	struct pp_read *pp = s->pp;

	if (pp->ev != NULL)
		event_free(pp->ev);
	if (close_fd)
		close(pp->fd);
	free(pp);
	s->pp = NULL;
}

/* Refuse the connection: one access-log line with c-ip the peer (the
 * balancer, or whoever connected directly), the cause in the error log. */
static void
pp_refuse(struct stream *s, const char *why)
{
	log_info("stream", "%s: PROXY protocol header refused: %s", s->c_ip, why);
	log_request(s, NULL, REASON_PROXY_PROTOCOL, NULL, 0);
	stream_close(s, REASON_PROXY_PROTOCOL, NULL);
}

/*
 * Bytes arrived on the raw socket. They are peeked, not read, until the
 * parser has seen them: a complete header is then consumed to its last
 * byte, an incomplete one entirely (every byte of an incomplete header is
 * header), so the TLS ClientHello behind it stays in the socket for
 * OpenSSL and the level-triggered event never spins on unread bytes.
 */
static void
on_pp_read(evutil_socket_t fd, short what, void *arg)
{
	struct stream *s = stream_of(arg);
	struct pp_read *pp = s->pp;
	struct proxyproto_result res;
	char err[160], lb[INET6_ADDRSTRLEN];
	enum proxyproto_rc rc;
	size_t take;
	ssize_t n;

	(void)what;
	n = recv(fd, pp->buf + pp->len, sizeof(pp->buf) - pp->len, MSG_PEEK);
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return;
		log_debug("stream", "%s: reading the PROXY header: %s", s->c_ip, strerror(errno));
		stream_close(s, REASON_CLIENT_RESET, NULL);
		return;
	}
	if (n == 0) {
		if (pp->len == 0) {
			/* connected and left (a TCP health check): nothing to log */
			stream_close(s, REASON_CLIENT_CLOSED, NULL);
			return;
		}
		snprintf(err, sizeof(err), "connection closed after %zu bytes of a PROXY header",
		    pp->len);
		pp_refuse(s, err);
		return;
	}
	rc = proxyproto_parse(pp->buf, pp->len + (size_t)n, &res, err, sizeof(err));
	if (rc == PROXYPROTO_ERROR) {
		pp_refuse(s, err);
		return;
	}
	take = rc == PROXYPROTO_DONE ? res.len - pp->len : (size_t)n;
	if (recv(fd, pp->buf + pp->len, take, 0) != (ssize_t)take) {
		/* the bytes were just peeked: they are in the socket */
		stream_close(s, REASON_CLIENT_RESET, "pp_recv");
		return;
	}
	pp->len += take;
	if (rc == PROXYPROTO_NEED_MORE)
		return;
	snprintf(lb, sizeof(lb), "%s", s->c_ip);
	if (!res.local) {
		unsigned port;

		addr_text((const struct sockaddr *)&res.src, s->c_ip, sizeof(s->c_ip), &port);
		log_debug("stream", "%s: PROXY v%u header from %s: client %s port %u", s->c_ip,
		    res.version, lb, s->c_ip, port);
	} else {
		log_debug("stream", "%s: PROXY v%u header without a client address (LOCAL/UNKNOWN)",
		    s->c_ip, res.version);
		s->pp_local = 1;
	}
	pp_free(s, 0);
	(void)start_tls(s, (int)fd);
}

int
stream_accept(struct worker *w, int fd, const struct sockaddr *sa, socklen_t salen)
{
	struct stream *s;
	struct sockaddr_storage local;
	socklen_t ll = sizeof(local);
	int one = 1;

	(void)salen;
	if ((env = front_stream_env(w)) == NULL) {
		log_error("stream", "no stream environment (front_load_tls not run)");
		close(fd);
		return -1;
	}
	if ((s = calloc(1, sizeof(*s))) == NULL) {
		close(fd);
		return -1;
	}
	s->magic = STREAM_MAGIC;
	s->w = w;
	s->env = env;
	s->state = ST_HANDSHAKE;
	addr_text(sa, s->c_ip, sizeof(s->c_ip), NULL);
	if (getsockname(fd, (struct sockaddr *)&local, &ll) == 0)
		addr_text((struct sockaddr *)&local, s->s_ip, sizeof(s->s_ip), &s->s_port);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

	LIST_INSERT_HEAD(&env->streams, s, link);
	front_conn_opened(w);

	if ((s->timer = evtimer_new(env->base, on_timer, s)) == NULL) {
		close(fd);
		stream_close(s, REASON_OUT_OF_MEMORY, "accept");
		return -1;
	}
	if (!env->cfg->server.proxy_protocol)
		return start_tls(s, fd);
	/* the raw socket is s->pp's until the header is consumed */
	s->state = ST_PROXY;
	if ((s->pp = calloc(1, sizeof(*s->pp))) == NULL) {
		close(fd);
		stream_close(s, REASON_OUT_OF_MEMORY, "proxy_protocol");
		return -1;
	}
	s->pp->fd = fd;
	if ((s->pp->ev = event_new(env->base, fd, EV_READ | EV_PERSIST, on_pp_read, s)) == NULL ||
	    event_add(s->pp->ev, NULL) != 0) {
		stream_close(s, REASON_OUT_OF_MEMORY, "proxy_protocol");
		return -1;
	}
	arm_timer(s, env->cfg->server.client_header_timeout);
	return 0;
}

/* The handshake is done: map the certificate once for the connection. */
static void
handshake_done(struct stream *s)
{
	SSL *ssl = bufferevent_openssl_get_ssl(s->dev);
	X509 *cert = ssl != NULL ? SSL_get0_peer_certificate(ssl) : NULL;
	struct identity_result *res;

	metrics_self()->tls_handshakes++;
	s->state = ST_HEAD;
	/* one read(2) per record from here on (dev_read_more); off during the
	 * handshake, which so leaves what follows its last record in the
	 * socket, for epoll to report */
	if (ssl != NULL)
		SSL_set_read_ahead(ssl, 1);
	if ((res = malloc(sizeof(*res))) == NULL) {
		stream_close(s, REASON_OUT_OF_MEMORY, "identity");
		return;
	}
	if (cert != NULL && identity_map(cert, &env->idp, res) == 0) {
		s->id_ok = 1;
		snprintf(s->principal, sizeof(s->principal), "%s", res->principal);
		log_debug("stream", "%s: certificate maps to %s", s->c_ip, s->principal);
	} else {
		s->id_ok = 0;
		snprintf(s->id_detail, sizeof(s->id_detail), "%s",
		    identity_detail_token(res->detail));
		log_info("identity", "%s: %s", s->c_ip, res->message);
	}
	/* an embedding program's identity hook may refine it (policy.h) */
	if (cert != NULL) {
		struct policy_identity pid;

		s->idc = policy_identify(front_policy(s->w), cert, res, s->c_ip, &pid,
		    on_identity, s);
		if (s->idc == NULL)
			identity_set(s, &pid);
	}
	free(res);
	arm_timer(s, env->cfg->server.client_header_timeout);
	if (s->idc != NULL) {
		s->state = ST_IDENTITY;
		return;
	}
	identified(s);
}

/* The identity the connection goes on with, as the identity hook (if any)
 * left it. */
static void
identity_set(struct stream *s, const struct policy_identity *pid)
{
	s->id_ok = pid->ok;
	if (pid->ok)
		snprintf(s->principal, sizeof(s->principal), "%s", pid->principal);
	else
		snprintf(s->id_detail, sizeof(s->id_detail), "%s", pid->detail);
}

static void
on_identity(const struct policy_identity *pid, void *arg)
{
	struct stream *s = stream_of(arg);

	s->idc = NULL;
	identity_set(s, pid);
	s->state = ST_HEAD;
	identified(s);
}

/* The directory answered (SPEC §7): the principal to use from now on
 * (sAMAccountName@REALM), or why the user is refused. */
static void
on_directory(const struct kcd_answer *ans, void *arg)
{
	struct stream *s = stream_of(arg);

	s->dirq = NULL;
	if (ans->ok) {
		if (strcmp(s->principal, ans->principal) != 0)
			log_debug("directory", "%s: %s is %s in the directory", s->c_ip,
			    s->principal[0] ? s->principal : "(certificate)", ans->principal);
		s->id_ok = 1;
		snprintf(s->principal, sizeof(s->principal), "%s", ans->principal);
		if (ans->id_flags & KCD_ID_AUDIT)
			log_warn("directory", "%s %s: strong_mapping = enforce would refuse this "
			    "certificate (audit mode)", s->c_ip, s->principal);
		if (ans->id_flags & KCD_ID_DIRECTORY_DOWN)
			log_warn("directory", "%s %s: directory unreachable; allowed by "
			    "on_failure = allow", s->c_ip, s->principal);
	} else {
		s->id_ok = 0;
		s->id_reason = ans->cls == KCD_ERR_LDAP_DENIED ? REASON_LDAP_DENIED :
		    REASON_LDAP_UNREACHABLE;
		snprintf(s->id_detail, sizeof(s->id_detail), "%s", ans->name ? ans->name : "");
		log_info("directory", "%s %s: %s: %s", s->c_ip,
		    s->principal[0] ? s->principal : "-", ans->name ? ans->name : "?",
		    ans->text ? ans->text : "");
	}
	s->state = ST_HEAD;
	check_ocsp(s);
}

/* The certificate is mapped: the directory checks (when [ldap] uri is
 * set), OCSP (if on), then the first request. */
static void
identified(struct stream *s)
{
	SSL *ssl = bufferevent_openssl_get_ssl(s->dev);
	X509 *cert = ssl != NULL ? SSL_get0_peer_certificate(ssl) : NULL;

	if (env->cfg->ldap.uri != NULL && cert != NULL &&
	    (s->id_ok || env->cfg->identity.source == ID_SRC_LDAP)) {
		unsigned char *der = NULL;
		int len = i2d_X509(cert, &der);

		if (len <= 0) {
			stream_close(s, REASON_OUT_OF_MEMORY, "certificate");
			return;
		}
		s->state = ST_DIRECTORY;
		s->dirq = kcd_identify_request(front_kcd(s->w), s->id_ok ? s->principal : "",
		    der, (size_t)len, on_directory, s);
		OPENSSL_free(der);
		if (s->dirq == NULL) {
			/* kcd cannot be asked: as if the directory were down */
			s->id_ok = 0;
			s->id_reason = REASON_LDAP_UNREACHABLE;
			snprintf(s->id_detail, sizeof(s->id_detail), "kcd_unavailable");
			s->state = ST_HEAD;
			check_ocsp(s);
		}
		return;
	}
	check_ocsp(s);
}

/* OCSP (if on), then the first request. */
static void
check_ocsp(struct stream *s)
{
	SSL *ssl = bufferevent_openssl_get_ssl(s->dev);

	if (env->ocsp != NULL) {
		struct ocsp_query *q;

		s->state = ST_OCSP;
		/* the callback may run (and close s) before this returns; then
		 * q is NULL and s must not be touched */
		q = ocsp_check_ssl(env->ocsp, ssl, on_ocsp, s);
		if (q != NULL)
			s->oq = q;
		return;
	}
	process_input(s);
}

/* The device certificate's OCSP status is known (ocsp.c decided what
 * "unknown" and "unreachable" mean under on/required). */
static void
on_ocsp(enum reason r, const char *detail, void *arg)
{
	struct stream *s = stream_of(arg);

	s->oq = NULL;
	if (r == REASON_OK) {
		log_debug("ocsp", "%s: %s", s->c_ip, detail);
		s->state = ST_HEAD;
		process_input(s);
		return;
	}
	metrics_self()->tls_failures[r]++;
	log_info("ocsp", "%s %s: certificate refused: %s (%s)", s->c_ip,
	    s->id_ok ? s->principal : "-", reason_token(r), detail);
	log_request(s, NULL, r, NULL, 0);
	stream_close(s, r, NULL);
}

static void
handshake_failed(struct stream *s)
{
	SSL *ssl = bufferevent_openssl_get_ssl(s->dev);
	char detail[256];
	enum reason r;

	if (s->pp_local && ssl != NULL && BIO_number_read(SSL_get_rbio(ssl)) == 0) {
		/* a PROXY LOCAL header and not one TLS byte: the balancer's
		 * health check (HAProxy check-send-proxy), not a device */
		stream_close(s, REASON_CLIENT_CLOSED, "health_check");
		return;
	}
	r = tls_handshake_reason(ssl, detail, sizeof(detail));
	metrics_self()->tls_failures[r]++;
	log_info("tls", "%s: handshake refused: %s (%s)", s->c_ip, reason_token(r), detail);
	log_request(s, NULL, r, NULL, 0);
	s->rq = NULL;
	stream_close(s, r, NULL);
}

/* ---- the request head ------------------------------------------------------- */

static struct req *
req_new(struct stream *s)
{
	struct req *rq = memcache_malloc(sizeof(*rq));

	if (rq == NULL)
		return NULL;
	memset(rq, 0, sizeof(*rq));
	rq->magic = REQ_MAGIC;
	rq->start_wall_ms = clock_unix_ms();
	rq->start_mono_ms = clock_mono_ms();
	rq->kdc_ms = -1;
	rq->reason = REASON_OK;
	s->rq = rq;
	return rq;
}

/* Add one header line to the backend head. */
static void
put_header(struct evbuffer *out, const char *buf, const struct http_header *h)
{
	evbuffer_add(out, buf + h->name.off, h->name.len);
	evbuffer_add(out, ": ", 2);
	evbuffer_add(out, buf + h->value.off, h->value.len);
	evbuffer_add(out, "\r\n", 2);
}

/* Which device headers never reach Exchange (SPEC §4). */
static int
drop_request_header(const struct http_header *h)
{
	if (h->flags & (HTTP_HF_HOP | HTTP_HF_FRAMING))
		return 1;
	switch ((enum http_hdr)h->id) {
	case HTTP_H_HOST:
	case HTTP_H_AUTHORIZATION:
	case HTTP_H_PROXY_AUTHORIZATION:
	case HTTP_H_X_FORWARDED_FOR:
	case HTTP_H_X_FORWARDED_PROTO:
	case HTTP_H_FORWARDED:
	case HTTP_H_EXPECT:		/* we answer 100-continue ourselves */
		return 1;
	default:
		return 0;
	}
}

/*
 * A complete head is at buf[0..len). Decide, and build the backend head.
 * Returns 0 to go on to the backend, -1 when the request was refused (the
 * answer is queued and the stream is closing).
 */
static int
accept_head(struct stream *s, const struct http_msg *m, const char *buf)
{
	const struct config *cfg = env->cfg;
	struct req *rq = s->rq;
	struct eas_query q;
	enum eas_error eerr;
	enum http_error herr;
	char decoded[STEM_MAX * 3];

	rq->method = m->method;
	slice_copy(rq->method_s, sizeof(rq->method_s), buf, m->method_s);
	slice_copy(rq->stem, sizeof(rq->stem), buf, m->path);
	if (m->path.len == 0)
		snprintf(rq->stem, sizeof(rq->stem), "/");
	slice_copy(rq->query, sizeof(rq->query), buf, m->query);
	slice_copy(rq->host, sizeof(rq->host), buf, m->host);
	{
		int i = http_header_find_id(m, HTTP_H_USER_AGENT);
		if (i >= 0)
			slice_copy(rq->ua, sizeof(rq->ua), buf, m->headers[i].value);
	}
	rq->dev_keep_alive = m->keep_alive && !front_draining(s->w);
	rq->expect_continue = m->expect_continue;
	/* an HTTP/1.0 device cannot read chunked coding (RFC 9112 §7) */
	rq->resp_close_delim = m->version_minor == 0;

	/* the path, decoded only to be compared */
	if (m->form == HTTP_FORM_ASTERISK) {
		respond_error(s, REASON_PATH_DENIED, NULL);
		return -1;
	}
	if (http_path_check(buf + m->path.off, m->path.len, decoded, sizeof(decoded), &herr) != 0) {
		respond_error(s, http_error_reason(herr, 0), http_error_token(herr));
		return -1;
	}
	if (!http_path_allowed(decoded, &cfg->server.paths)) {
		respond_error(s, REASON_PATH_DENIED, NULL);
		return -1;
	}
	if (m->method != HTTP_M_GET && m->method != HTTP_M_POST &&
	    m->method != HTTP_M_OPTIONS && m->method != HTTP_M_HEAD) {
		respond_error(s, REASON_METHOD_DENIED, NULL);
		return -1;
	}

	/* the EAS query, for the log and for check_user_param */
	if (eas_query_decode(buf + m->query.off, m->query.len, &q, &eerr) != 0) {
		respond_error(s, REASON_BAD_REQUEST, eas_error_token(eerr));
		return -1;
	}
	str_copy(rq->eas_cmd, sizeof(rq->eas_cmd), q.cmd);
	str_copy(rq->device_id, sizeof(rq->device_id), q.device_id);
	str_copy(rq->device_type, sizeof(rq->device_type), q.device_type);

	if (!s->id_ok) {
		respond_error(s, s->id_reason != REASON_OK ? s->id_reason :
		    REASON_IDENTITY_UNMAPPED, s->id_detail);
		return -1;
	}
	/* SPEC §4 names the plain User=; the base64 form carries User too
	 * (tag 8), and checking only one form would let a device switch
	 * forms to name someone else */
	if (cfg->identity.check_user_param && q.has_user &&
	    !eas_user_matches(q.user, s->principal)) {
		respond_error(s, REASON_USER_MISMATCH, NULL);
		return -1;
	}

	/* body framing */
	if (http_request_framing(m, &env->req_lim, &rq->reqb, &herr) != 0) {
		respond_error(s, http_error_reason(herr, 0), http_error_token(herr));
		return -1;
	}
	rq->has_body = rq->reqb.kind != HTTP_BODY_NONE;
	rq->req_body_done = !rq->has_body;

	/* the backend head: origin-form target, our Host, no device
	 * credentials, no hop-by-hop headers, our own framing */
	if ((rq->head_out = evbuffer_new()) == NULL) {
		respond_error(s, REASON_OUT_OF_MEMORY, "head");
		return -1;
	}
	evbuffer_add(rq->head_out, buf + m->method_s.off, m->method_s.len);
	evbuffer_add(rq->head_out, " ", 1);
	if (m->path.len == 0)
		evbuffer_add(rq->head_out, "/", 1);
	else
		evbuffer_add(rq->head_out, buf + m->path.off, m->path.len);
	if (m->has_query) {
		evbuffer_add(rq->head_out, "?", 1);
		evbuffer_add(rq->head_out, buf + m->query.off, m->query.len);
	}
	ADD_LIT(rq->head_out, " HTTP/1.1\r\nHost: ");
	add_str(rq->head_out, cfg->backend.host_header);
	ADD_LIT(rq->head_out, "\r\n");
	for (unsigned i = 0; i < m->n_headers; i++)
		if (!drop_request_header(&m->headers[i]))
			put_header(rq->head_out, buf, &m->headers[i]);
	ADD_LIT(rq->head_out, "X-Forwarded-For: ");
	add_str(rq->head_out, s->c_ip);
	ADD_LIT(rq->head_out, "\r\nX-Forwarded-Proto: https\r\n");
	if (rq->reqb.kind == HTTP_BODY_LENGTH) {
		ADD_LIT(rq->head_out, "Content-Length: ");
		add_u64(rq->head_out, m->content_length);
		ADD_LIT(rq->head_out, "\r\n");
	} else if (rq->reqb.kind == HTTP_BODY_CHUNKED)
		ADD_LIT(rq->head_out, "Transfer-Encoding: chunked\r\n");
	return 0;
}

/* Parse what the device sent so far; start a request when a head is in. */
static void
process_input(struct stream *s)
{
	struct evbuffer *in = bufferevent_get_input(s->dev);
	size_t avail = evbuffer_get_length(in), n, consumed = 0;
	size_t max = env->cfg->server.max_header_size;
	enum http_result res;
	const char *buf;

	if (s->state != ST_HEAD || s->rq != NULL)
		return;
	if (avail == 0)
		return;
	if (!s->head_bytes_seen) {
		s->head_bytes_seen = 1;
		arm_timer(s, env->cfg->server.client_header_timeout);
	}
	if (s->req_msg == NULL) {
		if ((s->req_msg = msg_get()) == NULL) {
			stream_close(s, REASON_OUT_OF_MEMORY, "http_msg");
			return;
		}
		http_msg_init(s->req_msg, 0);
	}
	n = avail < max ? avail : max;
	buf = (const char *)evbuffer_pullup(in, (ssize_t)n);
	res = http_parse_request(s->req_msg, &env->req_lim, buf, n, &consumed);
	if (res == HTTP_NEED_MORE) {
		if (n >= max) {
			if (req_new(s) == NULL) {
				stream_close(s, REASON_OUT_OF_MEMORY, "req");
				return;
			}
			respond_error(s, REASON_TOO_LARGE_HEADER, "header_size");
		}
		return;
	}
	if (req_new(s) == NULL) {
		stream_close(s, REASON_OUT_OF_MEMORY, "req");
		return;
	}
	s->nreq++;
	if (res == HTTP_ERROR) {
		enum http_error e = s->req_msg->error;
		/* keep what the log can use of a refused head */
		respond_error(s, http_error_reason(e, 0), http_error_token(e));
		return;
	}
	s->rq->cs_bytes = consumed;
	if (accept_head(s, s->req_msg, buf) != 0)
		return;
	evbuffer_drain(in, consumed);
	msg_put(s->req_msg);
	s->req_msg = NULL;
	s->head_bytes_seen = 0;
	authorize(s);
}

/* ---- writing without write events ----------------------------------------------- */

/*
 * A request goes to a plain backend socket without a write event in the
 * common case: it is put together in env->be_direct, and be_send() writes
 * it at once when the connection's output is empty; only what the socket
 * does not take goes to the output, for libevent's write event. Adding to
 * an empty output arms that event (epoll_ctl) and the write that drains it
 * disarms it again (epoll_ctl), a turn of the loop later: two system calls
 * per request saved, and the request leaves in the same turn. A write
 * error is left for libevent's write, which meets it again and reports it
 * to on_be_event: one path handles them. TLS backends keep
 * bufferevent_openssl's own writes. src is empty afterwards.
 */
static void
be_send(struct bufferevent *be, struct evbuffer *src)
{
	struct evbuffer *out = bufferevent_get_output(be);
	int fd;

	if (evbuffer_get_length(src) == 0)
		return;
	if (evbuffer_get_length(out) == 0 && bufferevent_openssl_get_ssl(be) == NULL &&
	    (fd = bufferevent_getfd(be)) >= 0)
		(void)evbuffer_write(src, fd);
	if (evbuffer_get_length(src) > 0)
		evbuffer_add_buffer(out, src);
}

/*
 * The same toward the device: a response part put together in
 * env->dev_direct goes out with SSL_write now when the device's output is
 * empty, one TLS record per call (the head and a small body in one record
 * and one write(2), where the bufferevent wrote one record per evbuffer
 * chain, a turn of the loop later, between arming and disarming its write
 * event). What is not written, or when the output already holds bytes,
 * is appended to the output for bufferevent_openssl. After WANT_WRITE,
 * OpenSSL holds a partly sent record and must be given the same bytes
 * again: they stay first in src, in one chain at least as long as the
 * attempt (the pull-up), which becomes the output's first chain, and
 * bufferevent_openssl's next SSL_write starts with it (it sets
 * SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER). Any other failure is met again by
 * that write and reaches on_dev_event. src is empty afterwards.
 */
#define DEV_RECORD	16384		/* TLS's largest record payload */

static void
dev_send(struct stream *s, struct evbuffer *src)
{
	struct evbuffer *out = bufferevent_get_output(s->dev);
	SSL *ssl = bufferevent_openssl_get_ssl(s->dev);
	size_t len;

	while (ssl != NULL && evbuffer_get_length(out) == 0 &&
	    (len = evbuffer_get_length(src)) > 0) {
		size_t n = len < DEV_RECORD ? len : DEV_RECORD;
		const unsigned char *p = evbuffer_pullup(src, (ev_ssize_t)n);
		int r;

		if (p == NULL)
			break;
		r = SSL_write(ssl, p, (int)n);
		if (r <= 0) {
			ERR_clear_error();	/* bufferevent_openssl reads the queue */
			break;
		}
		evbuffer_drain(src, (size_t)r);
	}
	if (evbuffer_get_length(src) > 0)
		evbuffer_add_buffer(out, src);
}

/* ---- backend connection and token ------------------------------------------ */

static void on_token(const struct kcd_answer *ans, void *arg);

/* The channel bindings a token for rq's backend connection carries (none:
 * NULL, *len 0). */
static const unsigned char *
req_cb(const struct req *rq, unsigned *len)
{
	*len = 0;
	return env->cfg->kerberos.channel_bindings != TRI_OFF ? bconn_cb_hash(rq->bc, len) : NULL;
}

/* ---- the next request's token, asked ahead (struct ahead) ---------------------- */

/* A token kept for the next request (1 to 3 KiB of base64, more than
 * glibc's tcache serves): a memcache block, freed with memcache_free. */
static char *
token_copy(const char *t)
{
	size_t n = strlen(t) + 1;
	char *c = memcache_malloc(n);

	if (c != NULL)
		memcpy(c, t, n);
	return c;
}

/* Drop s's ahead token: an answer still coming is dropped by kcd_client
 * (which releases its context), a token here releases its own. */
static void
ahead_drop(struct stream *s, int unused)
{
	struct ahead *a = s->ahead;

	if (a == NULL)
		return;
	if (a->kr != NULL)
		kcd_request_cancel(a->kr);
	else if (a->ctx_id != 0)
		kcd_ctx_release(front_kcd(s->w), a->ctx_id);
	if (unused)
		metrics_self()->tokens_ahead_unused++;
	memcache_free(a->token);
	free(a);
	s->ahead = NULL;
}

static void
on_ahead(const struct kcd_answer *ans, void *arg)
{
	struct stream *s = stream_of(arg);
	struct ahead *a = s->ahead;

	assert(a != NULL && a->kr != NULL);
	a->kr = NULL;
	if (a->waited) {
		/* the request in ST_TOKEN takes this answer as its own */
		s->ahead = NULL;
		free(a);
		on_token(ans, s);
		return;
	}
	a->ctx_id = ans->ok ? ans->ctx_id : 0;
	if (!ans->ok || (a->token = token_copy(ans->token)) == NULL)
		ahead_drop(s, 0);	/* (with its context) the next request asks for itself */
}

/* a is too old to be used, or to be kept (AHEAD_MAX_MS) */
static int
ahead_stale(const struct ahead *a, uint64_t now)
{
	return now - a->asked_ms > AHEAD_MAX_MS;
}

/* Ask for the next request's token while rq is forwarded (struct ahead
 * says when); no ahead token is no error. */
static void
ask_ahead(struct stream *s, const struct req *rq)
{
	const unsigned char *cb;
	unsigned cb_len;
	struct ahead *a;

	if (s->ahead != NULL || s->nreq < 2 || rq->retried ||
	    strcasecmp(rq->eas_cmd, "Ping") == 0 || !rq->dev_keep_alive)
		return;
	cb = req_cb(rq, &cb_len);
	if (cb_len > sizeof(a->cb) || (a = memcache_zalloc(sizeof(*a))) == NULL)
		return;
	if (cb_len > 0)
		memcpy(a->cb, cb, cb_len);
	a->cb_len = cb_len;
	a->asked_ms = clock_mono_ms();
	a->kr = kcd_token_request(front_kcd(s->w), s->principal, env->cfg->backend.spn,
	    cb_len ? cb : NULL, cb_len, KCD_F_MUTUAL, on_ahead, s);
	if (a->kr == NULL) {
		free(a);
		return;
	}
	s->ahead = a;
}

/* rq's token from s's ahead token: 1 when it was used (on_token ran, s may
 * be gone) or is awaited (s in ST_TOKEN), 0 when rq must ask for its own
 * (an unusable ahead token is dropped). */
static int
take_ahead(struct stream *s, struct req *rq, const unsigned char *cb, unsigned cb_len)
{
	struct ahead *a = s->ahead;
	struct kcd_answer ans = { 0 };

	if (a == NULL)
		return 0;
	if (rq->retried || a->cb_len != cb_len || (cb_len > 0 && memcmp(a->cb, cb, cb_len) != 0) ||
	    ahead_stale(a, clock_mono_ms())) {
		ahead_drop(s, 1);
		return 0;
	}
	s->state = ST_TOKEN;
	if (a->kr != NULL) {
		a->waited = 1;		/* on_ahead hands the answer on */
		metrics_self()->tokens_ahead_waited++;
		return 1;
	}
	/* answered: detached first, on_token may end the stream */
	s->ahead = NULL;
	ans.ok = 1;
	ans.token = a->token;
	ans.ctx_id = a->ctx_id;
	metrics_self()->tokens_ahead_ready++;
	on_token(&ans, s);
	memcache_free(a->token);
	free(a);
	return 1;
}

static void
on_backend_ready(struct bconn *bc, enum reason r, const char *detail, void *arg)
{
	struct stream *s = stream_of(arg);
	struct req *rq = s->rq;
	const unsigned char *cb;
	unsigned cb_len;

	assert(rq != NULL && rq->magic == REQ_MAGIC);
	rq->bw = NULL;
	if (bc == NULL) {
		log_info("backend", "%s %s: no backend connection: %s", s->c_ip, s->principal,
		    detail != NULL ? detail : reason_text(r));
		respond_error(s, r, NULL);
		return;
	}
	rq->bc = bc;
	str_copy(rq->backend_name, sizeof(rq->backend_name), bconn_server_name(bc));
	cb = req_cb(rq, &cb_len);
	if (env->cfg->kerberos.channel_bindings == TRI_ON && cb_len == 0) {
		log_error("stream", "channel_bindings = on but the backend connection to %s "
		    "is not TLS; set [backend] tls = on or channel_bindings = auto",
		    rq->backend_name);
		respond_error(s, REASON_BACKEND_TLS, "no_channel_bindings");
		return;
	}
	if (take_ahead(s, rq, cb, cb_len))
		return;
	s->state = ST_TOKEN;
	/* KCD_F_MUTUAL: kcd keeps the context so that the backend's reply
	 * token can be verified (SPEC §4) */
	rq->kr = kcd_token_request(front_kcd(s->w), s->principal, env->cfg->backend.spn,
	    cb_len ? cb : NULL, cb_len, KCD_F_MUTUAL | (rq->retried ? KCD_F_REFRESH : 0u),
	    on_token, s);
	if (rq->kr == NULL)
		respond_error(s, REASON_KDC_UNREACHABLE, NULL);
}

static void
on_authorized(const struct policy_verdict *v, void *arg)
{
	struct stream *s = stream_of(arg);

	s->rq->pc = NULL;
	if (v->reason != REASON_OK)
		respond_error(s, v->reason, v->detail);
	else
		start_backend(s);
}

/* [devices] lists, then an embedding program's authorize hook (policy.h):
 * the EAS query is decoded, the backend not asked yet. */
static void
authorize(struct stream *s)
{
	struct req *rq = s->rq;
	struct policy_verdict v;
	const struct eas_kcd_proxy_request pr = {
		.user = s->principal, .device_id = rq->device_id,
		.device_type = rq->device_type, .cmd = rq->eas_cmd, .method = rq->method_s,
		.path = rq->stem, .client_ip = s->c_ip, .user_agent = rq->ua,
	};

	rq->pc = policy_authorize(front_policy(s->w), &pr, &v, on_authorized, s);
	if (rq->pc != NULL) {
		s->state = ST_AUTHORIZE;
		arm_timer(s, env->cfg->server.client_header_timeout);
	} else if (v.reason != REASON_OK)
		respond_error(s, v.reason, v.detail);
	else
		start_backend(s);
}

static void
start_backend(struct stream *s)
{
	struct req *rq = s->rq;
	struct backend_wait *bw;

	s->state = ST_BACKEND;
	/* the device may pipeline; keep its bytes for after this request,
	 * but keep reading (to see it hang up) unless it floods us */
	arm_timer(s, env->cfg->server.request_timeout);
	bw = backend_acquire(env->backend, s->principal, on_backend_ready, s);
	/* NULL: on_backend_ready has run already (an idle connection, or
	 * every server down) and may have ended the request: rq may be freed */
	if (bw != NULL)
		rq->bw = bw;
}

static void
on_token(const struct kcd_answer *ans, void *arg)
{
	struct stream *s = stream_of(arg);
	struct req *rq = s->rq;
	struct evbuffer *out;
	struct bufferevent *be;

	assert(rq != NULL && rq->magic == REQ_MAGIC);
	rq->kr = NULL;
	rq->kdc_ms = (int64_t)ans->elapsed_ms;
	if (!ans->ok) {
		switch (ans->cls) {
		case KCD_ERR_USER:
			log_info("kcd", "%s %s: KDC refused the user: %s: %s", s->c_ip,
			    s->principal, ans->name, ans->text);
			respond_error(s, REASON_KDC_USER, ans->name);
			break;
		case KCD_ERR_UNREACHABLE:
			log_warn("kcd", "%s %s: no KDC answer: %s", s->c_ip, s->principal,
			    ans->text);
			respond_error(s, REASON_KDC_UNREACHABLE, NULL);
			break;
		default:
			log_error("kcd", "%s %s: KDC refused the proxy: %s: %s", s->c_ip,
			    s->principal, ans->name, ans->text);
			respond_error(s, REASON_KDC_PROXY, ans->name);
			break;
		}
		return;
	}
	if (rq->ctx_id != 0)		/* the context of a token refused by a 401 */
		kcd_ctx_release(front_kcd(s->w), rq->ctx_id);
	rq->ctx_id = ans->ctx_id;
	rq->mutual_checked = 0;
	/* first out, in this loop turn's datagram to kcd */
	ask_ahead(s, rq);
	be = bconn_bev(rq->bc);
	/* the head (and the body bytes already in) go out with be_send */
	out = env->be_direct;
	bufferevent_setcb(be, on_be_read, on_be_write, on_be_event, s);
	bufferevent_setwatermark(be, EV_WRITE, PIPE_LOW, 0);
	bufferevent_set_max_single_read(be, BULK_IO);	/* TLS backends: SSL_read batches */
	bufferevent_set_max_single_write(be, BULK_IO_WRITE);
	if (!rq->has_body && !rq->retried) {
		/* a 401 may be retried once with a fresh credential (SPEC §4):
		 * keep the head until the answer comes; bodies are never
		 * replayed, so requests with one keep nothing */
		size_t n = evbuffer_get_length(rq->head_out);
		evbuffer_add(out, evbuffer_pullup(rq->head_out, (ssize_t)n), n);
	} else {
		evbuffer_add_buffer(out, rq->head_out);
		evbuffer_free(rq->head_out);
		rq->head_out = NULL;
	}
	ADD_LIT(out, "Authorization: Negotiate ");
	evbuffer_add(out, ans->token, strlen(ans->token));
	ADD_LIT(out, "\r\n\r\n");
	/* reading a pooled connection is enabled already (backend.h): no
	 * epoll_ctl; writing is too, and enabling it with an empty output
	 * would arm a write event that fires once for nothing */
	bufferevent_enable(be, EV_READ);
	if (!(bufferevent_get_enabled(be) & EV_WRITE))
		bufferevent_enable(be, EV_WRITE);
	s->state = ST_FORWARD;

	if (!rq->has_body)
		set_parked(s, rq);
	if (rq->has_body && rq->expect_continue)
		ADD_LIT(bufferevent_get_output(s->dev), "HTTP/1.1 100 Continue\r\n\r\n");
	if (rq->has_body)
		pump_request_body(s);	/* sends the head with what it moved */
	if (s->rq == rq && rq->bc != NULL)
		be_send(be, env->be_direct);	/* (no body, or none moved yet) */
	/* the response may already be there (a fast backend) */
	if (s->rq == rq && evbuffer_get_length(bufferevent_get_input(be)) > 0)
		pump_response(s);
}

/* ---- bodies ------------------------------------------------------------------- */

enum pump {
	PUMP_DRY,	/* the input ran out before the body's end */
	PUMP_FULL,	/* out holds `high`: stop reading in until it drains */
	PUMP_DONE,	/* the body ended (and its last chunk was written) */
	PUMP_ERROR,	/* bad framing: b->error says which rule */
};

/*
 * Move body b from in to out, both ways of the proxy: data bytes without a
 * copy (evbuffer_remove_buffer), re-encoded as chunks when chunk_out, and
 * the framing bytes (chunk lines, trailers) consumed by the decoder and
 * dropped. Adds the data bytes moved to *data and the framing bytes taken
 * to *framing. The caller decides what each outcome means for its side.
 */
static enum pump
pump_body(struct http_body *b, struct evbuffer *in, struct evbuffer *out, size_t high,
    int chunk_out, uint64_t *data, uint64_t *framing)
{
	char ch[HTTP_CHUNK_HDR_MAX];

	while (!http_body_done(b)) {
		size_t avail = evbuffer_get_length(in);
		uint64_t pending = http_body_data_pending(b);

		if (evbuffer_get_length(out) >= high)
			return PUMP_FULL;
		if (avail == 0)
			return PUMP_DRY;
		if (pending > 0) {
			size_t n = pending < avail ? (size_t)pending : avail;
			if (n > high)
				n = high;
			if (chunk_out)
				evbuffer_add(out, ch, http_chunk_header(ch, n));
			evbuffer_remove_buffer(in, out, n);
			if (chunk_out)
				evbuffer_add(out, HTTP_CHUNK_CRLF, 2);
			http_body_data_consumed(b, n);
			*data += n;
		} else {
			struct evbuffer_iovec v;
			size_t used = 0;
			enum http_result r;

			if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
				return PUMP_DRY;
			r = http_body_framing(b, v.iov_base, v.iov_len, &used);
			evbuffer_drain(in, used);
			*framing += used;
			if (r == HTTP_ERROR)
				return PUMP_ERROR;
			if (used == 0 && http_body_data_pending(b) == 0 && !http_body_done(b))
				return PUMP_DRY;	/* a framing line is not complete yet */
		}
	}
	if (chunk_out)
		evbuffer_add(out, HTTP_CHUNK_LAST, sizeof(HTTP_CHUNK_LAST) - 1);
	return PUMP_DONE;
}

/* ---- request body ------------------------------------------------------------ */

/*
 * OpenSSL's record buffers, about 17 KiB each way. The front context sets
 * SSL_MODE_RELEASE_BUFFERS, with which OpenSSL frees a buffer as soon as it
 * is drained and allocates it again for the next record: twice per
 * keep-alive request, each a search of glibc's bins on a heap that a cold
 * start left fragmented. A connection that came back for another request
 * (finish_request) is busy: the mode is cleared, its buffers stay, and it
 * joins the worker's `kept` list. It goes back to releasing them when it
 * parks without having been busy since the last sweep, and when the sweep
 * (bufs_sweep, every BUFS_SWEEP_MS while the list is not empty, one timer
 * per worker) finds it not busy since the sweep before (idle in
 * keep-alive, parked, or in a long transfer: after 0.25 to 0.5 s, so that
 * connections that come, make a few requests and go idle do not hold
 * their buffers long: with 1 s sweeps, 2,000 such devices held 20 MB more
 * at their peak). Then the mode is set again and
 * SSL_free_buffers frees both buffers; it refuses while a record is partly
 * read or written (OpenSSL 3.0.14 and later also for a partly read one),
 * and OpenSSL then frees them itself once drained. A connection's first
 * request (a parked Ping's, a cold start's) has the mode all along, as do
 * the handshake and uploads (dev_read_more).
 */
#define BUFS_SWEEP_MS	250

static void
bufs_keep(struct stream *s)
{
	struct senv *e = s->env;
	SSL *ssl;

	s->busy = 1;
	if (s->bufs_kept || (ssl = bufferevent_openssl_get_ssl(s->dev)) == NULL)
		return;
	/* the sweep runs while the list holds a stream (a timer, no system
	 * call); should it not start, buffers are released as before */
	if (LIST_EMPTY(&e->kept) && event_add(e->bufs_ev,
	    &(struct timeval){ 0, BUFS_SWEEP_MS * 1000 }) != 0)
		return;
	SSL_clear_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
	SSL_set_default_read_buffer_len(ssl, 0);	/* not an upload's DEV_READ_AHEAD */
	LIST_INSERT_HEAD(&e->kept, s, kept_link);
	s->bufs_kept = 1;
}

static void
bufs_release(struct stream *s)
{
	SSL *ssl;

	if (!s->bufs_kept)
		return;
	LIST_REMOVE(s, kept_link);
	s->bufs_kept = 0;
	if ((ssl = bufferevent_openssl_get_ssl(s->dev)) == NULL)
		return;
	SSL_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
	(void)SSL_free_buffers(ssl);	/* 0: bytes pending; freed once drained */
}

/* The sweep: the kept streams not busy since the last one release their
 * buffers; the timer stops once none is left. */
static void
bufs_sweep(evutil_socket_t fd, short what, void *arg)
{
	struct stream *s, *next;

	(void)fd;
	(void)what;
	env = arg;
	for (s = LIST_FIRST(&env->kept); s != NULL; s = next) {
		next = LIST_NEXT(s, kept_link);
		if (!s->busy)
			bufs_release(s);
		s->busy = 0;
	}
	if (LIST_EMPTY(&env->kept))
		event_del(env->bufs_ev);
}

/* The whole request is at the backend and its answer is awaited: the
 * "parked" gauge of /metrics (a Ping waits here up to its heartbeat). A
 * connection not busy lately gives its record buffers back now. */
static void
set_parked(struct stream *s, struct req *rq)
{
	if (!rq->parked) {
		rq->parked = 1;
		metrics_self()->parked++;
	}
	if (!s->busy)
		bufs_release(s);
}

/*
 * Reading the device. OpenSSL's read-ahead is on from the end of the
 * handshake (handshake_done): one read(2) takes a whole record, and
 * whatever else the socket holds up to the read buffer's size, where
 * read-ahead off took two per record (its 5-byte header, then the rest).
 * bufferevent_openssl reads only when the socket is readable, and takes of
 * OpenSSL only the record it is in (SSL_pending): records read ahead behind
 * it would wait in OpenSSL's buffer unseen while epoll says nothing. So
 * every SSL_read of ours ends with no complete record left there (this
 * function, called on entry of on_dev_read, which follows every read of
 * bufferevent_openssl, and wherever reading resumes): what may be left is
 * the first part of a record whose rest the socket has still to bring, and
 * epoll reports that.
 *
 * dev_read_more takes what OpenSSL holds into the device's input, and with
 * want > 0 (a request body streams) also reads the socket for up to `want`
 * bytes: an upload cost an epoll_wait, two reads and a writev to the
 * backend per 16 KiB. It SSL_reads into the input (16 KiB reservations)
 * until WANT_READ, or `want` bytes and then nothing left in OpenSSL
 * (SSL_has_pending 0): once `want` is reached read-ahead goes off, so that
 * OpenSSL reads no more than the record it is in needs, and back on at the
 * end. What one call holds beyond `want` is thus less than the read buffer.
 * With want > 0 the read buffer is DEV_READ_AHEAD and released as soon as
 * it is drained (bufs_release), so an upload holds it only while it holds
 * bytes; with want 0 nothing is read from the socket unless a record was
 * partly in. The bytes land where libevent's read puts them, so what
 * follows (a pipelined request) reaches the parser in order. A failure
 * other than WANT_READ is reported to on_dev_event as bufferevent_openssl
 * reports it (EOF for a close_notify or a dirty shutdown, which it allows;
 * ERROR for the rest), deferred, so the stream is not freed under its
 * caller, and reading stays off (dev_failed); WANT_WRITE (an alert OpenSSL
 * could not send) is left to bufferevent_openssl's next SSL_read, which
 * sends it first. Returns -1 when on_dev_event is due, else 0.
 */
#define DEV_READ_AHEAD	(64u * 1024u)	/* OpenSSL's read buffer for an upload */
#define DEV_READ_MAX	BULK_IO		/* bytes one call reads */

static int
dev_read_more(struct stream *s, size_t want)
{
	struct evbuffer *in = bufferevent_get_input(s->dev);
	SSL *ssl = bufferevent_openssl_get_ssl(s->dev);
	size_t got = 0;
	short what = 0;

	if (ssl == NULL || !(bufferevent_get_enabled(s->dev) & EV_READ))
		return 0;
	if (want == 0 && !SSL_has_pending(ssl))
		return 0;	/* (every read callback: one test) */
	if (want > 0) {
		bufs_release(s);
		SSL_set_default_read_buffer_len(ssl, DEV_READ_AHEAD);
	}
	while (got < want || SSL_has_pending(ssl)) {
		struct evbuffer_iovec v[2];
		int n, used = 0, stop = 0;

		if ((n = evbuffer_reserve_space(in, DEV_RECORD, v, 2)) < 1)
			break;
		for (int i = 0; i < n && !stop; i++) {
			size_t off = 0;

			while (off < v[i].iov_len) {
				int r;

				ERR_clear_error();
				r = SSL_read(ssl, (char *)v[i].iov_base + off,
				    (int)(v[i].iov_len - off));
				if (r <= 0) {
					int e = SSL_get_error(ssl, r);

					if (e == SSL_ERROR_ZERO_RETURN ||
					    (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0))
						what = BEV_EVENT_READING | BEV_EVENT_EOF;
					else if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
						what = BEV_EVENT_READING | BEV_EVENT_ERROR;
					ERR_clear_error();
					stop = 1;
					break;
				}
				off += (size_t)r;
				got += (size_t)r;
				if (got >= want) {
					SSL_set_read_ahead(ssl, 0);
					if (!SSL_has_pending(ssl)) {
						stop = 1;
						break;
					}
				}
			}
			v[i].iov_len = off;
			if (off > 0)
				used = i + 1;
			if (off == 0)
				break;
		}
		if (used > 0)
			evbuffer_commit_space(in, v, used);
		if (stop)
			break;
	}
	SSL_set_read_ahead(ssl, 1);
	if (what == 0)
		return 0;
	s->dev_failed = 1;
	bufferevent_disable(s->dev, EV_READ);
	bufferevent_trigger_event(s->dev, what, BEV_TRIG_DEFER_CALLBACKS);
	return -1;
}

/* Reading the device resumes (after back-pressure, or for the next
 * request): what OpenSSL holds is taken first (dev_read_more), for the
 * caller to process. Not after a failure: on_dev_event is due. */
static void
dev_read_on(struct stream *s)
{
	if (s->dev_failed)
		return;
	if (!(bufferevent_get_enabled(s->dev) & EV_READ))
		bufferevent_enable(s->dev, EV_READ);
	(void)dev_read_more(s, 0);
}

/*
 * Move request body bytes from the device to the backend, re-encoding
 * chunks, until the input is empty, the body is done, or the backend's
 * output is full (then reading the device pauses until on_be_write).
 */
static void
pump_request_body(struct stream *s)
{
	struct req *rq = s->rq;
	struct http_body *b = &rq->reqb;
	struct bufferevent *be;
	struct evbuffer *out;
	uint64_t framing = 0;
	size_t held;
	enum pump p;

	if (rq->req_body_done || rq->bc == NULL || s->state < ST_FORWARD)
		return;
	be = bconn_bev(rq->bc);
	out = bufferevent_get_output(be);
	held = evbuffer_get_length(out) + evbuffer_get_length(env->be_direct) +
	    evbuffer_get_length(bufferevent_get_input(s->dev));
	if (!http_body_done(b) && held < REQ_PIPE_HIGH) {
		size_t want = REQ_PIPE_HIGH - held;
		uint64_t pending = http_body_data_pending(b);
		size_t in_len = evbuffer_get_length(bufferevent_get_input(s->dev));

		if (want > DEV_READ_MAX)
			want = DEV_READ_MAX;
		/* a Content-Length body: no more than it still needs */
		if (b->kind == HTTP_BODY_LENGTH && pending <= in_len)
			want = 0;
		else if (b->kind == HTTP_BODY_LENGTH && pending - in_len < want)
			want = (size_t)(pending - in_len);
		if (want > 0)
			(void)dev_read_more(s, want);
	}
	/* while the backend's output is empty, through env->be_direct and
	 * be_send (after the head on_token put there); what the socket took
	 * at once made room: pump on */
	do {
		p = pump_body(b, bufferevent_get_input(s->dev),
		    evbuffer_get_length(out) == 0 ? env->be_direct : out, REQ_PIPE_HIGH,
		    b->kind == HTTP_BODY_CHUNKED, &rq->cs_bytes, &framing);
		if (p == PUMP_ERROR)
			break;
		be_send(be, env->be_direct);
	} while (p == PUMP_FULL && evbuffer_get_length(out) < REQ_PIPE_HIGH);
	rq->cs_bytes += framing;	/* cs-bytes counts what the device sent */
	switch (p) {
	case PUMP_FULL:
		bufferevent_disable(s->dev, EV_READ);	/* on_be_write resumes */
		return;
	case PUMP_ERROR:
		/* nothing more for the backend (a head put together stays here) */
		evbuffer_drain(env->be_direct, evbuffer_get_length(env->be_direct));
		backend_release(rq->bc, 0);
		rq->bc = NULL;
		respond_error(s, http_error_reason(b->error, 0), http_error_token(b->error));
		return;
	case PUMP_DONE:
		rq->req_body_done = 1;
		set_parked(s, rq);
		break;
	case PUMP_DRY:
		break;
	}
	if (!s->dev_failed)	/* else on_dev_event comes and closes */
		bufferevent_enable(s->dev, EV_READ);
	arm_timer(s, env->cfg->server.request_timeout);
}

/* ---- the response -------------------------------------------------------------- */

/* Which backend headers never reach the device (SPEC §4). */
static int
drop_response_header(const struct http_header *h)
{
	if (h->flags & (HTTP_HF_HOP | HTTP_HF_FRAMING))
		return 1;
	switch ((enum http_hdr)h->id) {
	case HTTP_H_WWW_AUTHENTICATE:	/* mutual-auth token; never for devices */
	case HTTP_H_PERSISTENT_AUTH:
	case HTTP_H_PROXY_AUTHENTICATE:
		return 1;
	default:
		return 0;
	}
}

/* The host of an authority ("host", "host:port", "[v6]:port") as a slice. */
static void
authority_host(const char *a, size_t len, const char **host, size_t *hlen)
{
	size_t i = 0;

	if (len > 0 && a[0] == '[') {
		while (i < len && a[i] != ']')
			i++;
		*host = a + 1;
		*hlen = i > 0 ? i - 1 : 0;
		return;
	}
	while (i < len && a[i] != ':')
		i++;
	*host = a;
	*hlen = i;
}

/* 1 when the authority names the backend: one of [backend] servers or the
 * host of host_header (ASCII case-insensitive, any port). */
static int
is_backend_authority(const char *a, size_t len)
{
	const struct config *cfg = env->cfg;
	const char *h, *hh;
	size_t hl, hhl;

	authority_host(a, len, &h, &hl);
	if (hl == 0)
		return 0;
	for (unsigned k = 0; k < cfg->backend.n_servers; k++) {
		const char *sh = cfg->backend.servers[k].host;
		if (strlen(sh) == hl && strncasecmp(sh, h, hl) == 0)
			return 1;
	}
	if (cfg->backend.host_header != NULL) {
		authority_host(cfg->backend.host_header, strlen(cfg->backend.host_header),
		    &hh, &hhl);
		if (hhl == hl && strncasecmp(hh, h, hl) == 0)
			return 1;
	}
	return 0;
}

/*
 * A 451 X-MS-Location that names Exchange's internal host is pointed at the
 * host the device used (SPEC §4): only scheme and authority are replaced.
 * One that names any other host (the mailbox moved to another site, whose
 * external URL Exchange gives) passes untouched.
 */
static void
put_ms_location(struct evbuffer *out, struct req *rq, const char *buf, const struct http_header *h)
{
	const char *v = buf + h->value.off;
	size_t len = h->value.len, start, i;

	if (len >= 8 && strncasecmp(v, "https://", 8) == 0)
		start = 8;
	else if (len >= 7 && strncasecmp(v, "http://", 7) == 0)
		start = 7;
	else
		start = 0;
	i = start;
	while (i < len && v[i] != '/' && v[i] != '?' && v[i] != '#')
		i++;
	if (start == 0 || rq->host[0] == '\0' || !is_backend_authority(v + start, i - start)) {
		put_header(out, buf, h);
		return;
	}
	evbuffer_add(out, buf + h->name.off, h->name.len);
	evbuffer_add_printf(out, ": https://%s", rq->host);
	evbuffer_add(out, v + i, len - i);
	evbuffer_add(out, "\r\n", 2);
}

/* The response head is in: decide and put ours into out (for the device).
 * Returns 0 to stream the body, 1 when the request was retried, -1 when
 * refused. */
static int
accept_response_head(struct stream *s, struct http_msg *m, const char *buf, size_t consumed,
    struct evbuffer *out)
{
	struct req *rq = s->rq;
	struct evbuffer *in = bufferevent_get_input(bconn_bev(rq->bc));
	enum http_error herr;

	if (m->status == 401) {
		/* IIS refused the ticket. Retry once with a fresh credential when
		 * no body byte was sent; else the device gets 502 (SPEC §4). */
		if (!rq->retried && !rq->has_body) {
			log_info("stream", "%s %s: backend %s answered 401; retrying once with a "
			    "fresh credential", s->c_ip, s->principal, rq->backend_name);
			rq->retried = 1;	/* (take_ahead drops a token asked ahead) */
			evbuffer_drain(in, consumed);
			backend_release(rq->bc, 0);
			rq->bc = NULL;
			return 1;
		}
		log_error("stream", "%s %s: backend %s refused the Kerberos ticket (401): check "
		    "the SPN %s, the Exchange keytab/ASA and Extended Protection", s->c_ip,
		    s->principal, rq->backend_name, env->cfg->backend.spn);
		respond_error(s, REASON_BACKEND_AUTH, NULL);
		return -1;
	}
	if (http_response_framing(m, rq->method, NULL, &rq->respb, &herr) != 0) {
		log_info("stream", "%s: backend %s sent a response we refuse: %s",
		    s->c_ip, rq->backend_name, http_error_text(herr));
		respond_error(s, REASON_BACKEND_BAD_RESPONSE, http_error_token(herr));
		return -1;
	}
	rq->status = m->status;
	if (rq->head_out != NULL) {
		/* answered: no retry will need the head */
		evbuffer_free(rq->head_out);
		rq->head_out = NULL;
	}

	ADD_LIT(out, "HTTP/1.1 ");
	add_u64(out, (uint64_t)m->status);	/* 100..599: the parser's rule */
	ADD_LIT(out, " ");
	evbuffer_add(out, buf + m->reason.off, m->reason.len);
	evbuffer_add(out, "\r\n", 2);
	for (unsigned i = 0; i < m->n_headers; i++) {
		const struct http_header *h = &m->headers[i];
		if (drop_response_header(h))
			continue;
		if (h->id == HTTP_H_X_MS_LOCATION && m->status == 451)
			put_ms_location(out, rq, buf, h);
		else
			put_header(out, buf, h);
	}
	switch (rq->respb.kind) {
	case HTTP_BODY_LENGTH:
		ADD_LIT(out, "Content-Length: ");
		add_u64(out, m->content_length);
		ADD_LIT(out, "\r\n");
		break;
	case HTTP_BODY_CHUNKED:
	case HTTP_BODY_EOF:
		/* the device gets chunks (so that its connection can stay up
		 * when the backend ends the body by closing), or, when it speaks
		 * HTTP/1.0, the bytes as they are and the end of the connection */
		if (rq->resp_close_delim) {
			rq->dev_keep_alive = 0;
			break;
		}
		evbuffer_add_printf(out, "Transfer-Encoding: chunked\r\n");
		rq->resp_chunk_out = 1;
		break;
	case HTTP_BODY_NONE:
		if (m->has_cl)
			evbuffer_add_printf(out, "Content-Length: %llu\r\n",
			    (unsigned long long)m->content_length);
		break;
	}
	if (front_draining(s->w))
		rq->dev_keep_alive = 0;	/* drain began after the head: the last answer */
	if (!rq->dev_keep_alive || !rq->req_body_done)
		evbuffer_add_printf(out, "Connection: close\r\n");
	if (!rq->req_body_done)
		rq->dev_keep_alive = 0;	/* cannot find the next request */
	evbuffer_add(out, "\r\n", 2);
	rq->be_close = !m->keep_alive;	/* Connection: close, HTTP/1.0 */
	rq->resp_head_sent = 1;
	rq->sc_bytes += consumed;
	evbuffer_drain(in, consumed);
	s->state = ST_RESPONSE;
	return 0;
}

/* The request is answered: log, release, and go on (keep-alive) or close. */
static void
finish_request(struct stream *s, int backend_reusable)
{
	struct req *rq = s->rq;
	int keep = rq->dev_keep_alive && rq->req_body_done && !front_draining(s->w);

	/* a connection the backend said it closes is never reused: the next
	 * request would meet its EOF (Apache closes after a 503) */
	backend_release(rq->bc, backend_reusable && rq->req_body_done && !rq->be_close);
	rq->bc = NULL;
	log_request(s, rq, REASON_OK, NULL, rq->status);
	req_free(s);
	if (!keep) {
		close_after_flush(s);
		return;
	}
	s->state = ST_HEAD;
	bufs_keep(s);
	dev_read_on(s);
	arm_timer(s, env->cfg->server.idle_timeout);
	process_input(s);
}

/*
 * The response head (consumed bytes at buf, parsed in rq->resp_msg) may go
 * to the device: into out. Returns 0 to stream its body, -1 when the
 * request ended or is being retried (then s may be gone).
 */
static int
forward_head(struct stream *s, const char *buf, size_t consumed, struct evbuffer *out)
{
	struct req *rq = s->rq;
	int r = accept_response_head(s, rq->resp_msg, buf, consumed, out);

	if (r < 0)
		return -1;
	msg_put(rq->resp_msg);
	rq->resp_msg = NULL;
	if (r == 1) {
		/* retry: a new connection and a fresh token */
		start_backend(s);
		return -1;
	}
	if (rq->parked) {
		rq->parked = 0;
		metrics_self()->parked--;
	}
	return 0;
}

/* kcd answered the MUTUAL_REQ for the response head waiting in the
 * backend's input. */
static void
on_mutual(const struct kcd_answer *ans, void *arg)
{
	struct stream *s = stream_of(arg);
	struct req *rq = s->rq;
	struct bufferevent *be;
	const char *buf;

	assert(rq != NULL && rq->magic == REQ_MAGIC && rq->bc != NULL);
	rq->kr = NULL;
	if (!ans->ok) {
		if (ans->cls == KCD_ERR_UNREACHABLE) {
			log_warn("kcd", "%s %s: cannot verify the backend's mutual authentication: "
			    "%s: %s", s->c_ip, s->principal, ans->name, ans->text);
			respond_error(s, REASON_KDC_UNREACHABLE, NULL);
			return;
		}
		/* not the server we asked a ticket for, or a forged answer */
		log_error("stream", "%s %s: backend %s: mutual authentication failed: %s: %s",
		    s->c_ip, s->principal, rq->backend_name, ans->name, ans->text);
		/* like a 401, not a health failure: the server answers (marking
		 * it down would turn one bad answer into 503s for everyone) */
		respond_error(s, REASON_BACKEND_MUTUAL, ans->name);
		return;
	}
	log_debug("stream", "%s %s: backend %s: mutual authentication verified", s->c_ip,
	    s->principal, rq->backend_name);
	be = bconn_bev(rq->bc);
	buf = (const char *)evbuffer_pullup(bufferevent_get_input(be), (ssize_t)rq->resp_head_len);
	bufferevent_enable(be, EV_READ);
	if (forward_head(s, buf, rq->resp_head_len, bufferevent_get_output(s->dev)) == 0)
		pump_response(s);
}

/*
 * SPEC §4: the backend's "WWW-Authenticate: Negotiate <token>" on its answer
 * is verified (by kcd, which holds the context) before the head goes to the
 * device; it is never forwarded. Returns 0 to forward now (no token, or a
 * 401 that has its own path), 1 while kcd verifies (the backend is not read
 * meanwhile), -1 when the request ended.
 */
static int
check_mutual(struct stream *s, const struct http_msg *m, const char *buf, size_t consumed)
{
	struct req *rq = s->rq;
	static char token[KCD_TOKEN_MAX];	/* off the stack; a worker is one thread */
	const char *v = NULL;
	size_t len = 0;

	rq->mutual_checked = 1;
	if (m->status == 401)
		return 0;
	for (unsigned i = 0; i < m->n_headers; i++) {
		const struct http_header *h = &m->headers[i];
		const char *hv = buf + h->value.off;
		if (h->id != HTTP_H_WWW_AUTHENTICATE || h->value.len <= 10 ||
		    strncasecmp(hv, "Negotiate ", 10) != 0)
			continue;
		v = hv + 10;
		len = h->value.len - 10;
		while (len > 0 && (*v == ' ' || *v == '\t')) {
			v++;
			len--;
		}
		while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\t'))
			len--;
		break;
	}
	if (len == 0) {
		/* nothing to verify (a backend that does not answer mutual
		 * authentication); the kept context is not needed */
		if (rq->ctx_id != 0)
			kcd_ctx_release(front_kcd(s->w), rq->ctx_id);
		rq->ctx_id = 0;
		return 0;
	}
	if (rq->ctx_id == 0 || len >= sizeof(token)) {
		log_error("stream", "%s %s: backend %s sent a mutual-authentication token that "
		    "cannot be verified (%s)", s->c_ip, s->principal, rq->backend_name,
		    rq->ctx_id == 0 ? "kcd kept no context for it" : "too long");
		respond_error(s, REASON_BACKEND_MUTUAL, rq->ctx_id == 0 ? "no_context" : "too_long");
		return -1;
	}
	memcpy(token, v, len);
	token[len] = '\0';
	/* kcd releases the context whatever the outcome */
	rq->kr = kcd_mutual_request(front_kcd(s->w), rq->ctx_id, token, on_mutual, s);
	rq->ctx_id = 0;
	if (rq->kr == NULL) {
		respond_error(s, REASON_KDC_UNREACHABLE, NULL);
		return -1;
	}
	rq->resp_head_len = consumed;
	bufferevent_disable(bconn_bev(rq->bc), EV_READ);
	return 1;
}

/* Move the response from the backend to the device. */
static void
pump_response(struct stream *s)
{
	struct req *rq = s->rq;
	struct bufferevent *be;
	struct evbuffer *in, *out;
	uint64_t framing = 0;
	enum pump p;

	if (rq == NULL || rq->bc == NULL || rq->kr != NULL)
		return;		/* (kr: kcd is verifying the response head) */
	be = bconn_bev(rq->bc);
	in = bufferevent_get_input(be);
	out = bufferevent_get_output(s->dev);

	while (s->state == ST_FORWARD) {
		size_t avail = evbuffer_get_length(in), consumed = 0, n;
		size_t max = env->cfg->server.max_header_size;
		enum http_result res;
		const char *buf;

		if (avail == 0)
			return;
		if (rq->resp_msg == NULL) {
			if ((rq->resp_msg = msg_get()) == NULL) {
				respond_error(s, REASON_OUT_OF_MEMORY, "http_msg");
				return;
			}
			http_msg_init(rq->resp_msg, 1);
		}
		n = avail < max ? avail : max;
		buf = (const char *)evbuffer_pullup(in, (ssize_t)n);
		res = http_parse_response(rq->resp_msg, &env->resp_lim, buf, n, &consumed);
		if (res == HTTP_NEED_MORE) {
			if (n >= max)
				respond_error(s, REASON_BACKEND_BAD_RESPONSE, "header_size");
			return;
		}
		if (res == HTTP_ERROR) {
			respond_error(s, REASON_BACKEND_BAD_RESPONSE,
			    http_error_token(rq->resp_msg->error));
			return;
		}
		if (rq->resp_msg->status >= 100 && rq->resp_msg->status < 200) {
			/* interim answers are ours to give (100-continue); drop */
			evbuffer_drain(in, consumed);
			http_msg_init(rq->resp_msg, 1);
			continue;
		}
		if (!rq->mutual_checked && check_mutual(s, rq->resp_msg, buf, consumed) != 0)
			return;
		if (forward_head(s, buf, consumed,
		    evbuffer_get_length(out) == 0 ? env->dev_direct : out) != 0)
			return;
	}
	if (s->state != ST_RESPONSE)
		return;

	/* sc-bytes counts the body's data; the backend's framing is ours to
	 * redo. While the device's output is empty, head and body go out at
	 * once through env->dev_direct and dev_send; what the socket took
	 * made room: pump on. */
	do {
		p = pump_body(&rq->respb, in,
		    evbuffer_get_length(out) == 0 ? env->dev_direct : out, PIPE_HIGH,
		    rq->resp_chunk_out, &rq->sc_bytes, &framing);
		if (p == PUMP_ERROR)
			break;
		dev_send(s, env->dev_direct);
	} while (p == PUMP_FULL && evbuffer_get_length(out) < PIPE_HIGH);
	switch (p) {
	case PUMP_FULL:
		/* on_dev_write reads the backend again once the device drained */
		bufferevent_disable(be, EV_READ);
		bufferevent_setwatermark(s->dev, EV_WRITE, PIPE_LOW, 0);
		return;
	case PUMP_ERROR:
		/* the device gets nothing more (a head put together stays here) */
		evbuffer_drain(env->dev_direct, evbuffer_get_length(env->dev_direct));
		backend_report_failure(rq->bc, http_error_text(rq->respb.error));
		stream_close(s, REASON_BACKEND_BAD_RESPONSE, http_error_token(rq->respb.error));
		return;
	case PUMP_DONE:
		bufferevent_enable(be, EV_READ);
		finish_request(s, rq->respb.kind != HTTP_BODY_EOF &&
		    evbuffer_get_length(in) == 0);
		return;
	case PUMP_DRY:
		break;
	}
	bufferevent_enable(be, EV_READ);
	arm_timer(s, env->cfg->server.request_timeout);
}

/* ---- libevent callbacks ------------------------------------------------------- */

/* Bytes of a next (pipelined) request wait for their turn; stop reading
 * only when they exceed a head's worth (reading on keeps a hang-up seen). */
static void
pipelined_wait(struct stream *s)
{
	if (evbuffer_get_length(bufferevent_get_input(s->dev)) >
	    env->cfg->server.max_header_size)
		bufferevent_disable(s->dev, EV_READ);
}

static void
on_dev_read(struct bufferevent *bev, void *arg)
{
	struct stream *s = stream_of(arg);

	(void)bev;
	/* the records read ahead behind the one bufferevent_openssl took
	 * (dev_read_more); after a failure the input is still processed, as
	 * bufferevent_openssl's would be before its own */
	(void)dev_read_more(s, 0);
	switch (s->state) {
	case ST_HEAD:
		process_input(s);
		break;
	case ST_FORWARD:
	case ST_RESPONSE:
		if (s->rq != NULL && !s->rq->req_body_done) {
			pump_request_body(s);
			break;
		}
		pipelined_wait(s);
		break;
	default:
		pipelined_wait(s);
		break;
	}
}

static void
on_dev_write(struct bufferevent *bev, void *arg)
{
	struct stream *s = stream_of(arg);

	(void)bev;
	if (s->state == ST_CLOSING) {
		if (evbuffer_get_length(bufferevent_get_output(s->dev)) == 0)
			stream_close(s, REASON_OK, NULL);
		return;
	}
	if (s->state == ST_RESPONSE && s->rq != NULL)
		pump_response(s);	/* the device drained: read the backend again */
}

static void
on_dev_event(struct bufferevent *bev, short what, void *arg)
{
	struct stream *s = stream_of(arg);
	enum reason r;

	(void)bev;
	if (what & BEV_EVENT_CONNECTED) {
		handshake_done(s);
		return;
	}
	if (s->state == ST_HANDSHAKE) {
		handshake_failed(s);
		return;
	}
	if (s->state == ST_CLOSING) {
		stream_close(s, REASON_OK, NULL);
		return;
	}
	r = (what & BEV_EVENT_EOF) ? REASON_CLIENT_CLOSED : REASON_CLIENT_RESET;
	if (s->state == ST_HEAD && s->rq == NULL) {
		stream_close(s, REASON_CLIENT_CLOSED, NULL);
		return;
	}
	stream_close(s, r, NULL);
}

/*
 * libevent 2.1 reads a plain socket at most 4 KiB per read event
 * (evbuffer_read's cap; evbuffer_set_max_read came in 2.2). When that read
 * was full, more is probably waiting: one readv of up to BULK_IO into the
 * backend's input, within the room PIPE_HIGH leaves (input and the device's
 * output together). Only data is taken here: EOF, errors and EAGAIN commit
 * nothing and are left to libevent's next read event (a socket at EOF or
 * in error stays readable), so one path handles them. TLS backends read
 * through SSL_read, which max_single_read already batches.
 */
static void
be_read_more(struct stream *s, struct bufferevent *be)
{
	struct evbuffer *in = bufferevent_get_input(be);
	size_t have = evbuffer_get_length(in) + evbuffer_get_length(bufferevent_get_output(s->dev));
	size_t want, got, left;
	struct evbuffer_iovec v[2];
	struct iovec iov[2];
	ssize_t r;
	int n, fd;

	if (evbuffer_get_length(in) < 4096 || have >= PIPE_HIGH ||
	    bufferevent_openssl_get_ssl(be) != NULL || (fd = bufferevent_getfd(be)) < 0)
		return;
	want = PIPE_HIGH - have < BULK_IO ? PIPE_HIGH - have : BULK_IO;
	/* the bufferevent keeps its input's end frozen outside its own
	 * reads; thawed for this one, as bufferevent_readcb does */
	evbuffer_unfreeze(in, 0);
	if ((n = evbuffer_reserve_space(in, (ev_ssize_t)want, v, 2)) < 1) {
		evbuffer_freeze(in, 0);
		return;
	}
	if (v[0].iov_len > want)
		v[0].iov_len = want;
	if (n == 2 && v[1].iov_len > want - v[0].iov_len)
		v[1].iov_len = want - v[0].iov_len;
	for (int i = 0; i < n; i++) {
		iov[i].iov_base = v[i].iov_base;
		iov[i].iov_len = v[i].iov_len;
	}
	do
		r = readv(fd, iov, n);
	while (r < 0 && errno == EINTR);
	got = r > 0 ? (size_t)r : 0;
	left = got;
	for (int i = 0; i < n; i++) {
		if (v[i].iov_len > left)
			v[i].iov_len = left;
		left -= v[i].iov_len;
	}
	(void)evbuffer_commit_space(in, v, got == 0 ? 0 : got <= v[0].iov_len ? 1 : n);
	evbuffer_freeze(in, 0);
}

static void
on_be_read(struct bufferevent *bev, void *arg)
{
	struct stream *s = stream_of(arg);

	be_read_more(s, bev);
	pump_response(s);
}

static void
on_be_write(struct bufferevent *bev, void *arg)
{
	struct stream *s = stream_of(arg);

	(void)bev;
	if (s->rq != NULL && !s->rq->req_body_done) {
		dev_read_on(s);
		pump_request_body(s);
	}
}

static void
on_be_event(struct bufferevent *bev, short what, void *arg)
{
	struct stream *s = stream_of(arg);
	struct req *rq = s->rq;

	(void)bev;
	assert(rq != NULL);
	if ((what & BEV_EVENT_EOF) && s->state == ST_RESPONSE &&
	    http_body_eof(&rq->respb) == HTTP_DONE) {
		/* a read-until-close body ended */
		pump_response(s);
		if (s->rq == rq) {
			struct evbuffer *out = bufferevent_get_output(s->dev);
			if (rq->resp_chunk_out)
				evbuffer_add(out, HTTP_CHUNK_LAST, sizeof(HTTP_CHUNK_LAST) - 1);
			finish_request(s, 0);
		}
		return;
	}
	if (bconn_uses(rq->bc) > 1 && rq->resp_msg == NULL && !rq->resp_head_sent) {
		/* A pooled connection that ends before a byte of the answer: the
		 * server closed it while it sat idle (its keep-alive timeout
		 * crossed our request). That says nothing about the server's
		 * health. A request whose head is still kept (no body) goes
		 * again on another connection — each retry uses up a pooled
		 * one, and a fresh connection failing is a real failure — one
		 * with a body (never replayed) gets 502. */
		log_info("stream", "%s %s: backend %s closed a reused keep-alive connection "
		    "before answering%s", s->c_ip, s->principal, rq->backend_name,
		    rq->head_out != NULL ? "; sending the request again" : "");
		if (rq->head_out != NULL) {
			backend_release(rq->bc, 0);
			rq->bc = NULL;
			start_backend(s);
			return;
		}
		respond_error(s, REASON_BACKEND_RESET, "stale_connection");
		return;
	}
	log_info("stream", "%s %s: backend %s closed the connection mid-request%s",
	    s->c_ip, s->principal, rq->backend_name,
	    (what & BEV_EVENT_ERROR) ? " (error)" : "");
	backend_report_failure(rq->bc, "closed mid-request");
	respond_error(s, REASON_BACKEND_RESET, NULL);
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct stream *s = stream_of(arg);

	(void)fd;
	(void)what;
	switch (s->state) {
	case ST_PROXY:
		pp_refuse(s, "no complete PROXY header within client_header_timeout");
		break;
	case ST_HANDSHAKE:
		stream_close(s, REASON_HEADER_TIMEOUT, "handshake");
		break;
	case ST_OCSP:
		stream_close(s, REASON_HEADER_TIMEOUT, "ocsp");
		break;
	case ST_IDENTITY:
		stream_close(s, REASON_HEADER_TIMEOUT, "identity_hook");
		break;
	case ST_DIRECTORY:
		stream_close(s, REASON_HEADER_TIMEOUT, "directory");
		break;
	case ST_HEAD:
		if (s->head_bytes_seen) {
			if (req_new(s) == NULL) {
				stream_close(s, REASON_OUT_OF_MEMORY, "req");
				break;
			}
			respond_error(s, REASON_HEADER_TIMEOUT, NULL);
		} else
			stream_close(s, REASON_IDLE_TIMEOUT, NULL);
		break;
	case ST_CLOSING:
		stream_close(s, REASON_OK, NULL);
		break;
	default:
		respond_error(s, REASON_REQUEST_TIMEOUT, NULL);
		break;
	}
}

/* ---- the worker's shared environment --------------------------------------------- */

static void
on_flush(evutil_socket_t fd, short what, void *arg)
{
	struct backend_stats st;
	struct stream *s;
	uint64_t now;

	(void)fd;
	(void)what;
	env = arg;
	access_log_flush();
	now = clock_mono_ms();
	LIST_FOREACH(s, &env->streams, link) {
		/* answered, not waited for, and stale: nothing will use it */
		if (s->ahead != NULL && s->ahead->kr == NULL && ahead_stale(s->ahead, now))
			ahead_drop(s, 1);
	}
	backend_stats(env->backend, &st);
	metrics_self()->backend_servers_up = st.servers_up;
}

int
stream_env_init(struct worker *w, char *err, size_t errlen)
{
	const struct config *cfg = front_config(w);
	struct senv *e;

	if ((e = calloc(1, sizeof(*e))) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	e->cfg = cfg;
	e->base = front_base(w);
	if ((e->front_ctx = tls_front_ctx_new(cfg, err, errlen)) == NULL)
		goto fail;
	_Static_assert(FRONT_TICKET_KEYS_LEN == TLS_TICKET_KEYS_LEN, "ticket key length");
	if (tls_set_ticket_keys(e->front_ctx, front_ticket_keys(w), TLS_TICKET_KEYS_LEN) != 0) {
		snprintf(err, errlen, "cannot install the generation's TLS ticket keys");
		goto fail;
	}
	if (cfg->backend.tls &&
	    (e->backend_ctx = tls_backend_ctx_new(cfg, err, errlen)) == NULL)
		goto fail;
	if ((e->dns = evdns_base_new(e->base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
	    EVDNS_BASE_DISABLE_WHEN_INACTIVE)) == NULL) {
		/* no resolv.conf in a chroot or a lab: numeric backends still work */
		e->dns = evdns_base_new(e->base, 0);
	}
	if ((e->backend = backend_new(e->base, e->dns, cfg, e->backend_ctx)) == NULL) {
		snprintf(err, errlen, "cannot set up the backend servers");
		goto fail;
	}
	metrics_self()->backend_servers_up = cfg->backend.n_servers;	/* up until shown down */
	/* the access log itself is the process owner's (worker_main, or the
	 * embedding layer): generations come and go, the file stays open */
	if ((e->flush_ev = event_new(e->base, -1, EV_PERSIST, on_flush, e)) == NULL ||
	    event_add(e->flush_ev, &(struct timeval){ 1, 0 }) != 0 ||
	    (e->bufs_ev = event_new(e->base, -1, EV_PERSIST, bufs_sweep, e)) == NULL) {
		snprintf(err, errlen, "cannot start the worker's timers");
		goto fail;
	}
	if ((e->dev_direct = evbuffer_new()) == NULL ||
	    (e->be_direct = evbuffer_new()) == NULL) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	LIST_INIT(&e->streams);
	LIST_INIT(&e->kept);
	if (cfg->tls.ocsp != OCSP_OFF &&
	    (e->ocsp = ocsp_new(e->base, e->dns, cfg, e->front_ctx, err, errlen)) == NULL)
		goto fail;
	identity_params_from_config(cfg, &e->idp);
	e->req_lim.max_header_size = cfg->server.max_header_size;
	e->req_lim.max_body_size = cfg->server.max_body_size;
	e->resp_lim.max_header_size = cfg->server.max_header_size;
	front_set_stream_env(w, e);
	return 0;
fail:
	if (e->ocsp != NULL)
		ocsp_free(e->ocsp);
	if (e->dev_direct != NULL)
		evbuffer_free(e->dev_direct);
	if (e->be_direct != NULL)
		evbuffer_free(e->be_direct);
	if (e->flush_ev != NULL)
		event_free(e->flush_ev);
	if (e->bufs_ev != NULL)
		event_free(e->bufs_ev);
	if (e->backend != NULL)
		backend_free(e->backend);
	if (e->dns != NULL)
		evdns_base_free(e->dns, 0);
	SSL_CTX_free(e->front_ctx);
	SSL_CTX_free(e->backend_ctx);
	free(e);
	return -1;
}

void
stream_drain_idle(struct worker *w)
{
	struct stream *s, *next;

	if ((env = front_stream_env(w)) == NULL)
		return;
	for (s = LIST_FIRST(&env->streams); s != NULL; s = next) {
		next = LIST_NEXT(s, link);
		if (s->state == ST_HEAD && s->rq == NULL && !s->head_bytes_seen)
			stream_close(s, REASON_SHUTDOWN, "idle");
	}
}

void
stream_shutdown(struct worker *w)
{
	if ((env = front_stream_env(w)) == NULL)
		return;
	while (!LIST_EMPTY(&env->streams))
		stream_close(LIST_FIRST(&env->streams), REASON_SHUTDOWN, NULL);
	event_free(env->flush_ev);
	event_free(env->bufs_ev);
	evbuffer_free(env->dev_direct);
	evbuffer_free(env->be_direct);
	access_log_flush();
	if (env->ocsp != NULL)
		ocsp_free(env->ocsp);
	backend_free(env->backend);
	evdns_base_free(env->dns, 0);
	SSL_CTX_free(env->front_ctx);
	SSL_CTX_free(env->backend_ctx);
	free(env);
	env = NULL;
	front_set_stream_env(w, NULL);
}
