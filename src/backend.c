/*
 * backend.c — Exchange servers, per-(server, principal) connection pools,
 * failover and health; see backend.h for the contract.
 *
 * Objects and who owns them:
 *   struct backend      one per worker generation; owns the servers, the
 *                       pools, every bconn and every wait.
 *   struct pool         one per principal that has a connection or a wait;
 *                       refcounted by them, freed with the last one. Its
 *                       idle list is the only place an idle bconn can be
 *                       found, so a connection can only ever be handed to the
 *                       principal it was opened for (SPEC §4).
 *   struct bconn        an established connection. Kept small: 20,000 of
 *                       them sit under parked Pings (SPEC §9).
 *   struct backend_wait one acquire (or one health probe) in progress; owns
 *                       the attempt's fd, event, bufferevent and timer.
 *   struct resolve      a name lookup in flight. evdns calls back even after
 *                       evdns_getaddrinfo_cancel(), so the lookup has its own
 *                       small object that a cancelled wait leaves behind
 *                       (orphaned) and the callback frees.
 *
 * An attempt on one server: resolve (evdns, unless numeric) → non-blocking
 * connect(2) of our own, watched with an event (so the errno of a refused
 * connect is exact; libevent defers an immediate ECONNREFUSED and loses it)
 * → bufferevent_openssl_socket_new(BUFFEREVENT_SSL_CONNECTING) → the
 * certificate's verify result checked, the tls-server-end-point hash taken.
 * [backend] connect_timeout covers the whole attempt on one server.
 *
 * Bufferevent options: BEV_OPT_CLOSE_ON_FREE only. No BEV_OPT_DEFER_CALLBACKS:
 * stream.c relays between two bufferevents and gains nothing from an extra
 * loop turn per event, errno is still valid in an event callback that runs
 * at once, and freeing a bufferevent from its own callback is safe either way
 * (libevent holds a reference while callbacks run).
 */
#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "backend.h"
#include "log.h"
#include "metrics.h"
#include "tls.h"

#define BACKEND_MAGIC	0x42454e44u	/* "BEND" */
#define BCONN_MAGIC	0x42434f4eu	/* "BCON" */
#define WAIT_MAGIC	0x42574149u	/* "BWAI" */
#define RESOLVE_MAGIC	0x42524553u	/* "BRES" */

#define POOL_BUCKETS_MIN	64u
#define DETAIL_MAX		320
#define TARGET_MAX		(270 + INET6_ADDRSTRLEN + 12)

_Static_assert(CONFIG_MAX_LIST <= 64, "tried-server mask is a uint64_t");

enum bconn_state { BC_BUSY = 1, BC_IDLE };

struct server {
	const struct config_addr *addr;	/* borrowed from cfg */
	char *name;			/* "host:port" / "[v6]:port" for logs */
	unsigned idx;
	int up;
	int probing;			/* a health probe is in flight */
};

TAILQ_HEAD(bconn_list, bconn);

struct pool {
	LIST_ENTRY(pool) hash;
	struct bconn_list idle;		/* most recently released first */
	unsigned refs;			/* bconns of any state + waits */
	uint32_t hashv;
	char principal[];
};
LIST_HEAD(pool_list, pool);

struct bconn {
	unsigned magic;
	uint8_t state;			/* enum bconn_state */
	uint8_t cb_len;			/* 0 = no channel-binding hash */
	unsigned uses;
	struct backend *be;
	struct server *srv;
	struct pool *pool;		/* the principal it belongs to, for life */
	struct bufferevent *bev;	/* owned; closes the fd and frees the SSL */
	TAILQ_ENTRY(bconn) link;	/* pool->idle while idle, be->busy while handed out */
	unsigned char cb_hash[EVP_MAX_MD_SIZE];
};

struct resolve {
	unsigned magic;
	struct backend_wait *w;		/* NULL once orphaned by a cancel */
	struct evdns_getaddrinfo_request *req;
};

struct backend_wait {
	unsigned magic;
	struct backend *be;
	LIST_ENTRY(backend_wait) link;
	backend_ready_fn *fn;		/* NULL for a health probe */
	void *arg;
	struct pool *pool;		/* a reference; NULL for a health probe */
	struct server *probe_srv;	/* health probe: this server only */
	int *done_flag;			/* set when finished inside backend_acquire */
	uint64_t tried;			/* bit i: servers[i] tried by this wait */
	unsigned next;			/* round-robin start */
	unsigned attempts;
	/* the attempt in progress on srv */
	struct server *srv;
	struct resolve *res;		/* lookup in flight */
	int resolving_sync;		/* inside evdns_getaddrinfo() */
	int gai_err;
	struct evutil_addrinfo *ai_list, *ai_next;
	evutil_socket_t fd;		/* connect(2) in progress, -1 otherwise */
	struct event *conn_ev;		/* fd writable = connect finished */
	struct bufferevent *bev;	/* TLS handshake in progress */
	struct event *timer;		/* connect_timeout of the attempt */
	char target[TARGET_MAX];	/* "name (address)" for details */
	enum reason fail_reason;
	char detail[DETAIL_MAX];	/* the last failure */
};
LIST_HEAD(wait_list, backend_wait);

struct backend {
	unsigned magic;
	struct event_base *base;
	struct evdns_base *dns;
	const struct config *cfg;	/* borrowed */
	SSL_CTX *tls_ctx;		/* borrowed; NULL when tls = off */
	unsigned n_servers, n_up;
	struct server *servers;
	unsigned rr;
	struct event *health;		/* NULL when health_check = 0 */
	struct timeval connect_tv, idle_tv, health_tv;
	struct wait_list waits;
	struct bconn_list busy;
	struct pool_list *buckets;
	unsigned n_buckets, n_pools;
	struct backend_stats st;	/* servers, servers_up filled on demand */
};

static void try_next(struct backend_wait *w);

static struct timeval
ms_tv(uint64_t ms)
{
	struct timeval tv;

	tv.tv_sec = (time_t)(ms / 1000u);
	tv.tv_usec = (suseconds_t)((ms % 1000u) * 1000u);
	return tv;
}

/* ---- pools ------------------------------------------------------------ */

static uint32_t
hash_str(const char *s)
{
	uint32_t h = 2166136261u;	/* FNV-1a */

	for (; *s != '\0'; s++) {
		h ^= (unsigned char)*s;
		h *= 16777619u;
	}
	return h;
}

static void
pools_grow(struct backend *be)
{
	unsigned n = be->n_buckets * 2u;
	struct pool_list *nb = calloc(n, sizeof(*nb));
	struct pool *p;

	if (nb == NULL)
		return;		/* longer chains, still correct */
	for (unsigned i = 0; i < be->n_buckets; i++) {
		while ((p = LIST_FIRST(&be->buckets[i])) != NULL) {
			LIST_REMOVE(p, hash);
			LIST_INSERT_HEAD(&nb[p->hashv & (n - 1u)], p, hash);
		}
	}
	free(be->buckets);
	be->buckets = nb;
	be->n_buckets = n;
}

/* The pool of principal with one more reference taken for the caller,
 * created when missing; NULL when out of memory. Principals are compared
 * exactly: two spellings are two pools, never one connection shared. */
static struct pool *
pool_ref(struct backend *be, const char *principal)
{
	uint32_t h = hash_str(principal);
	struct pool *p;
	size_t len;

	LIST_FOREACH(p, &be->buckets[h & (be->n_buckets - 1u)], hash) {
		if (p->hashv == h && strcmp(p->principal, principal) == 0) {
			p->refs++;
			return p;
		}
	}
	len = strlen(principal);
	if ((p = calloc(1, sizeof(*p) + len + 1)) == NULL)
		return NULL;
	memcpy(p->principal, principal, len + 1);
	p->hashv = h;
	p->refs = 1;
	TAILQ_INIT(&p->idle);
	if (be->n_pools >= be->n_buckets * 2u)
		pools_grow(be);
	LIST_INSERT_HEAD(&be->buckets[h & (be->n_buckets - 1u)], p, hash);
	be->n_pools++;
	return p;
}

static void
pool_unref(struct backend *be, struct pool *p)
{
	assert(p->refs > 0);
	if (--p->refs > 0)
		return;
	assert(TAILQ_EMPTY(&p->idle));
	LIST_REMOVE(p, hash);
	be->n_pools--;
	free(p);
}

/* ---- servers ---------------------------------------------------------- */

static void
server_down(struct backend *be, struct server *srv, const char *why)
{
	if (be->health == NULL || !srv->up)
		return;		/* without health checks nothing would bring it back */
	srv->up = 0;
	be->n_up--;
	log_warn("backend", "%s marked down (%s); health check every %llu ms, %u of %u servers up",
	    srv->name, why, (unsigned long long)be->cfg->backend.health_check,
	    be->n_up, be->n_servers);
}

static void
server_up(struct backend *be, struct server *srv)
{
	if (srv->up)
		return;
	srv->up = 1;
	be->n_up++;
	log_info("backend", "%s is up again (health check passed), %u of %u servers up",
	    srv->name, be->n_up, be->n_servers);
}

/* ---- connections ------------------------------------------------------ */

/* Close a connection that is in no list any more. */
static void
bconn_close(struct bconn *bc)
{
	struct backend *be = bc->be;

	assert(bc->magic == BCONN_MAGIC);
	bufferevent_free(bc->bev);
	be->st.conns_open--;
	metrics_self()->backend_conns_open--;
	pool_unref(be, bc->pool);
	bc->magic = 0;
	free(bc);
}

static void
idle_remove(struct bconn *bc)
{
	assert(bc->state == BC_IDLE);
	TAILQ_REMOVE(&bc->pool->idle, bc, link);
	bc->be->st.conns_idle--;
	metrics_self()->backend_pool_idle--;
}

/* Make bc the caller's: no callbacks, no timeouts, writing enabled
 * (backend.h). A new connection is not read yet; a pooled one keeps the
 * read event it watched the idle connection with: what arrives meanwhile
 * waits in its input (an EOF disables reading and is met again once the
 * caller enables it), and a reuse costs no epoll_ctl. Writing is only
 * flagged: with the output empty, bufferevent_enable(EV_WRITE) would arm
 * a write event that fires once for nothing. */
static void
handout(struct bconn *bc, int pooled)
{
	bufferevent_setcb(bc->bev, NULL, NULL, NULL, NULL);
	bufferevent_set_timeouts(bc->bev, NULL, NULL);
	if (!pooled)
		bufferevent_disable(bc->bev, EV_READ);
	if (!(bufferevent_get_enabled(bc->bev) & EV_WRITE))
		bufferevent_enable(bc->bev, EV_WRITE);
	bc->state = BC_BUSY;
	bc->uses++;
	TAILQ_INSERT_TAIL(&bc->be->busy, bc, link);
}

static void
on_idle_read(struct bufferevent *bev, void *arg)
{
	struct bconn *bc = arg;

	assert(bc->magic == BCONN_MAGIC && bc->state == BC_IDLE);
	log_info("backend", "%s sent %zu bytes nobody asked for on an idle connection of %s; closed",
	    bc->srv->name, evbuffer_get_length(bufferevent_get_input(bev)),
	    bc->pool->principal);
	idle_remove(bc);
	bconn_close(bc);
}

static void
on_idle_event(struct bufferevent *bev, short what, void *arg)
{
	struct bconn *bc = arg;

	(void)bev;
	assert(bc->magic == BCONN_MAGIC && bc->state == BC_IDLE);
	if (what & BEV_EVENT_TIMEOUT)
		log_debug("backend", "%s: idle connection of %s unused for pool_idle; closed",
		    bc->srv->name, bc->pool->principal);
	else if (what & BEV_EVENT_EOF)
		log_debug("backend", "%s closed an idle connection of %s",
		    bc->srv->name, bc->pool->principal);
	else
		log_info("backend", "%s: idle connection of %s failed: %s",
		    bc->srv->name, bc->pool->principal,
		    strerror(EVUTIL_SOCKET_ERROR()));
	idle_remove(bc);
	bconn_close(bc);
}

void
backend_release(struct bconn *bc, int reusable)
{
	struct backend *be;
	struct bufferevent *bev;

	assert(bc != NULL && bc->magic == BCONN_MAGIC && bc->state == BC_BUSY);
	be = bc->be;
	bev = bc->bev;
	TAILQ_REMOVE(&be->busy, bc, link);
	/* Anything still buffered either way means the exchange did not end
	 * cleanly; such a connection is not worth keeping. */
	if (!reusable || !bc->srv->up || be->cfg->backend.pool_idle == 0 ||
	    evbuffer_get_length(bufferevent_get_input(bev)) != 0 ||
	    evbuffer_get_length(bufferevent_get_output(bev)) != 0) {
		bconn_close(bc);
		return;
	}
	bufferevent_setwatermark(bev, EV_READ | EV_WRITE, 0, 0);
	bufferevent_setcb(bev, on_idle_read, NULL, on_idle_event, bc);
	bufferevent_set_timeouts(bev, &be->idle_tv, NULL);
	bufferevent_enable(bev, EV_READ);
	bc->state = BC_IDLE;
	TAILQ_INSERT_HEAD(&bc->pool->idle, bc, link);
	be->st.conns_idle++;
	metrics_self()->backend_pool_idle++;
}

void
backend_report_failure(struct bconn *bc, const char *why)
{
	assert(bc != NULL && bc->magic == BCONN_MAGIC);
	log_info("backend", "%s failed: %s", bc->srv->name, why ? why : "reported by the stream");
	server_down(bc->be, bc->srv, why ? why : "failure reported");
}

struct bufferevent *
bconn_bev(struct bconn *bc)
{
	assert(bc != NULL && bc->magic == BCONN_MAGIC);
	return bc->bev;
}

const char *
bconn_server_name(const struct bconn *bc)
{
	assert(bc != NULL && bc->magic == BCONN_MAGIC);
	return bc->srv->name;
}

const unsigned char *
bconn_cb_hash(const struct bconn *bc, unsigned *len)
{
	assert(bc != NULL && bc->magic == BCONN_MAGIC);
	*len = bc->cb_len;
	return bc->cb_len ? bc->cb_hash : NULL;
}

unsigned
bconn_uses(const struct bconn *bc)
{
	assert(bc != NULL && bc->magic == BCONN_MAGIC);
	return bc->uses;
}

/* ---- attempts --------------------------------------------------------- */

static void set_detail(struct backend_wait *w, enum reason r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
set_detail(struct backend_wait *w, enum reason r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(w->detail, sizeof(w->detail), fmt, ap);
	va_end(ap);
	w->fail_reason = r;
}

/* Release everything the attempt in progress holds. A lookup in flight is
 * orphaned: evdns still calls back, and the callback frees it. */
static void
attempt_cleanup(struct backend_wait *w)
{
	if (w->res != NULL) {
		struct resolve *r = w->res;

		w->res = NULL;
		r->w = NULL;
		if (r->req != NULL)
			evdns_getaddrinfo_cancel(r->req);
	}
	if (w->ai_list != NULL) {
		evutil_freeaddrinfo(w->ai_list);
		w->ai_list = w->ai_next = NULL;
	}
	if (w->conn_ev != NULL) {
		event_free(w->conn_ev);
		w->conn_ev = NULL;
	}
	if (w->fd >= 0) {
		evutil_closesocket(w->fd);
		w->fd = -1;
	}
	if (w->bev != NULL) {
		bufferevent_free(w->bev);
		w->bev = NULL;
	}
	if (w->timer != NULL)
		evtimer_del(w->timer);
}

static void
wait_free(struct backend_wait *w)
{
	attempt_cleanup(w);
	LIST_REMOVE(w, link);
	if (w->timer != NULL)
		event_free(w->timer);
	if (w->pool != NULL)
		pool_unref(w->be, w->pool);
	if (w->probe_srv != NULL)
		w->probe_srv->probing = 0;
	w->magic = 0;
	free(w);
}

/* The wait is over: free it, then tell the caller. bc is handed over. */
static void
finish(struct backend_wait *w, struct bconn *bc, enum reason r, const char *detail)
{
	backend_ready_fn *fn = w->fn;
	void *arg = w->arg;
	char copy[DETAIL_MAX];

	snprintf(copy, sizeof(copy), "%s", detail ? detail : "");
	if (w->done_flag != NULL)
		*w->done_flag = 1;
	wait_free(w);
	if (fn != NULL)
		fn(bc, r, bc != NULL ? NULL : copy, arg);
}

/* The attempt on w->srv failed with w->detail: count, log, mark the server
 * down (passive health). The caller moves on with try_next(). */
static void
attempt_failed(struct backend_wait *w)
{
	struct backend *be = w->be;

	attempt_cleanup(w);
	be->st.connect_failures++;
	if (w->probe_srv != NULL) {
		log_debug("backend", "health check: %s", w->detail);
		return;
	}
	log_info("backend", "%s", w->detail);
	server_down(be, w->srv, w->detail);
}

static void
attempt_succeeded(struct backend_wait *w, struct bufferevent *bev)
{
	struct backend *be = w->be;
	struct bconn *bc;

	evtimer_del(w->timer);
	if (w->probe_srv != NULL) {
		/* the probe proved the server answers; its connection has no
		 * principal and is not kept */
		bufferevent_free(bev);
		server_up(be, w->probe_srv);
		finish(w, NULL, REASON_OK, NULL);
		return;
	}
	if ((bc = calloc(1, sizeof(*bc))) == NULL) {
		bufferevent_free(bev);
		log_error("backend", "out of memory for a connection to %s", w->srv->name);
		finish(w, NULL, REASON_OUT_OF_MEMORY, "out of memory");
		return;
	}
	bc->magic = BCONN_MAGIC;
	bc->be = be;
	bc->srv = w->srv;
	bc->pool = w->pool;		/* the wait's reference moves to bc */
	w->pool = NULL;
	bc->bev = bev;
	if (be->tls_ctx != NULL && be->cfg->backend.tls) {
		X509 *cert = SSL_get0_peer_certificate(bufferevent_openssl_get_ssl(bev));
		unsigned char md[EVP_MAX_MD_SIZE];
		unsigned len = 0;

		if (cert != NULL && tls_server_end_point(cert, md, &len) == 0 &&
		    len > 0 && len <= sizeof(bc->cb_hash)) {
			memcpy(bc->cb_hash, md, len);
			bc->cb_len = (uint8_t)len;
		} else {
			char ebuf[256];

			log_info("backend", "%s: no tls-server-end-point hash for channel bindings: %s",
			    bc->srv->name, log_ssl_errors(ebuf, sizeof(ebuf)));
		}
	}
	be->st.connects++;
	be->st.conns_open++;
	metrics_self()->backend_conns_open++;
	handout(bc, 0);
	log_debug("backend", "connected to %s for %s", bc->srv->name, bc->pool->principal);
	finish(w, bc, REASON_OK, NULL);
}

/* Render the errors bufferevent_openssl collected as log_ssl_errors() does.
 * It drains OpenSSL's queue into the bufferevent, and also files the
 * SSL_get_error() code there, which has no library or reason string: those
 * are left out. Returns NULL when there was nothing to say. */
static const char *
bev_ssl_errors(struct bufferevent *bev, char *buf, size_t len)
{
	unsigned long e;
	size_t n = 0;

	buf[0] = '\0';
	while ((e = bufferevent_get_openssl_error(bev)) != 0) {
		const char *lib = ERR_lib_error_string(e);
		const char *reason = ERR_reason_error_string(e);
		int k;

		if ((lib == NULL && reason == NULL) || n + 1 >= len)
			continue;
		k = snprintf(buf + n, len - n, "%s%s:%s", n ? "; " : "",
		    lib ? lib : "lib?", reason ? reason : "reason?");
		if (k > 0)
			n = (size_t)k >= len - n ? len - 1 : n + (size_t)k;
	}
	if (n == 0 && ERR_peek_error() != 0)
		return log_ssl_errors(buf, len);	/* left in the thread's queue */
	return n ? buf : NULL;
}

static void
on_tls_event(struct bufferevent *bev, short what, void *arg)
{
	struct backend_wait *w = arg;
	SSL *ssl = bufferevent_openssl_get_ssl(bev);
	long vr;

	assert(w->magic == WAIT_MAGIC && w->bev == bev);
	vr = SSL_get_verify_result(ssl);
	if (what & BEV_EVENT_CONNECTED) {
		/* Checked again even though the context verifies peers: a
		 * context built without SSL_VERIFY_PEER must not let an
		 * unverified server through. */
		if (SSL_get0_peer_certificate(ssl) == NULL) {
			set_detail(w, REASON_BACKEND_TLS, "tls %s: the server sent no certificate",
			    w->target);
		} else if (vr != X509_V_OK) {
			set_detail(w, REASON_BACKEND_TLS, "tls %s: certificate verify failed: %s",
			    w->target, X509_verify_cert_error_string(vr));
		} else {
			w->bev = NULL;		/* handed to the connection */
			bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
			attempt_succeeded(w, bev);
			return;
		}
	} else if (vr != X509_V_OK) {
		set_detail(w, REASON_BACKEND_TLS, "tls %s: certificate verify failed: %s",
		    w->target, X509_verify_cert_error_string(vr));
	} else {
		char ebuf[256];
		int err = EVUTIL_SOCKET_ERROR();

		if (bev_ssl_errors(bev, ebuf, sizeof(ebuf)) != NULL)
			set_detail(w, REASON_BACKEND_TLS, "tls %s: handshake failed: %s",
			    w->target, ebuf);
		else if (what & BEV_EVENT_EOF)
			set_detail(w, REASON_BACKEND_TLS,
			    "tls %s: the server closed the connection during the handshake",
			    w->target);
		else
			set_detail(w, REASON_BACKEND_TLS, "tls %s: handshake failed: %s",
			    w->target, err ? strerror(err) : "unknown error");
	}
	attempt_failed(w);
	try_next(w);
}

/* TCP is up on w->fd: hand the fd to a bufferevent, plain or TLS. */
static int
start_tls_or_plain(struct backend_wait *w)
{
	struct backend *be = w->be;
	struct bufferevent *bev;
	SSL *ssl;
	char ebuf[256];

	if (!be->cfg->backend.tls) {
		bev = bufferevent_socket_new(be->base, w->fd, BEV_OPT_CLOSE_ON_FREE);
		if (bev == NULL) {
			set_detail(w, REASON_BACKEND_CONNECT, "connect %s: out of memory", w->target);
			return -1;
		}
		w->fd = -1;
		attempt_succeeded(w, bev);
		return 0;
	}
	/* SNI and the name the certificate must carry are the configured
	 * host, never the connect_to address */
	ssl = tls_backend_ssl_new(be->tls_ctx, w->srv->addr->host);
	if (ssl == NULL) {
		set_detail(w, REASON_BACKEND_TLS, "tls %s: %s", w->target,
		    log_ssl_errors(ebuf, sizeof(ebuf)));
		return -1;
	}
	/* an idle or parked connection holds no TLS read/write buffers */
	SSL_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
	bev = bufferevent_openssl_socket_new(be->base, w->fd, ssl,
	    BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		/* Only out of memory; libevent may or may not have freed ssl
		 * and closed the fd by then, so leave both (a leak beats a
		 * double free). */
		w->fd = -1;
		set_detail(w, REASON_BACKEND_TLS, "tls %s: out of memory", w->target);
		return -1;
	}
	w->fd = -1;
	w->bev = bev;
	bufferevent_setcb(bev, NULL, NULL, on_tls_event, w);
	return 0;
}

static int connect_next_addr(struct backend_wait *w);

static void
on_connect_ev(evutil_socket_t fd, short what, void *arg)
{
	struct backend_wait *w = arg;
	int err = 0;
	socklen_t len = sizeof(err);

	(void)what;
	assert(w->magic == WAIT_MAGIC && w->fd == fd);
	event_free(w->conn_ev);
	w->conn_ev = NULL;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err != 0) {
		set_detail(w, REASON_BACKEND_CONNECT, "connect %s: %s", w->target, strerror(err));
		evutil_closesocket(w->fd);
		w->fd = -1;
		if (connect_next_addr(w) == 0)
			return;
	} else if (start_tls_or_plain(w) == 0) {
		return;
	}
	attempt_failed(w);
	try_next(w);
}

static void
format_target(struct backend_wait *w, const struct sockaddr *sa)
{
	char ip[INET6_ADDRSTRLEN] = "?";
	char addr[INET6_ADDRSTRLEN + 8];
	unsigned port = 0;

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;

		inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
		port = ntohs(sin->sin_port);
		snprintf(addr, sizeof(addr), "%s:%u", ip, port);
	} else {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;

		inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
		port = ntohs(sin6->sin6_port);
		snprintf(addr, sizeof(addr), "[%s]:%u", ip, port);
	}
	if (strcmp(addr, w->srv->name) == 0)
		snprintf(w->target, sizeof(w->target), "%s", w->srv->name);
	else
		snprintf(w->target, sizeof(w->target), "%s (%s)", w->srv->name, addr);
}

/* Start a non-blocking connect to sa. 0 = in progress; -1 = failed at
 * once, w->detail says why. */
static int
start_connect(struct backend_wait *w, const struct sockaddr *sa, socklen_t salen)
{
	static const int one = 1;
	evutil_socket_t fd;

	format_target(w, sa);
	fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		set_detail(w, REASON_BACKEND_CONNECT, "connect %s: socket: %s", w->target,
		    strerror(errno));
		return -1;
	}
	/* requests are written whole; don't let Nagle hold the last segment */
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, sa, salen) < 0 && errno != EINPROGRESS) {
		set_detail(w, REASON_BACKEND_CONNECT, "connect %s: %s", w->target, strerror(errno));
		evutil_closesocket(fd);
		return -1;
	}
	/* connected or in progress: either way the fd becomes writable */
	w->conn_ev = event_new(w->be->base, fd, EV_WRITE, on_connect_ev, w);
	if (w->conn_ev == NULL || event_add(w->conn_ev, NULL) < 0) {
		set_detail(w, REASON_BACKEND_CONNECT, "connect %s: out of memory", w->target);
		if (w->conn_ev != NULL)
			event_free(w->conn_ev);
		w->conn_ev = NULL;
		evutil_closesocket(fd);
		return -1;
	}
	w->fd = fd;
	return 0;
}

/* Try the resolved addresses in turn until one connect is in progress. */
static int
connect_next_addr(struct backend_wait *w)
{
	while (w->ai_next != NULL) {
		struct evutil_addrinfo *ai = w->ai_next;

		w->ai_next = ai->ai_next;
		if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
			continue;
		if (start_connect(w, ai->ai_addr, (socklen_t)ai->ai_addrlen) == 0)
			return 0;
	}
	return -1;
}

static void
on_resolved(int err, struct evutil_addrinfo *ai, void *arg)
{
	struct resolve *r = arg;
	struct backend_wait *w = r->w;

	assert(r->magic == RESOLVE_MAGIC);
	r->magic = 0;
	free(r);
	if (w == NULL) {		/* orphaned: the wait is gone */
		if (ai != NULL)
			evutil_freeaddrinfo(ai);
		return;
	}
	assert(w->magic == WAIT_MAGIC);
	w->res = NULL;
	w->gai_err = err;
	w->ai_list = w->ai_next = err == 0 ? ai : NULL;
	if (err != 0 && ai != NULL)
		evutil_freeaddrinfo(ai);
	if (w->resolving_sync)
		return;			/* start_attempt() carries on */
	if (err != 0) {
		set_detail(w, REASON_BACKEND_CONNECT, "resolve %s: %s", w->srv->name,
		    evutil_gai_strerror(err));
	} else if (w->ai_list == NULL) {
		set_detail(w, REASON_BACKEND_CONNECT, "resolve %s: no address", w->srv->name);
	} else if (connect_next_addr(w) == 0) {
		return;
	}
	attempt_failed(w);
	try_next(w);
}

/* Start the attempt on w->srv: 0 = in progress, -1 = failed already. */
static int
start_attempt(struct backend_wait *w)
{
	struct backend *be = w->be;
	const struct config_addr *a = w->srv->addr;
	uint16_t port = w->srv->addr->port;
	struct evutil_addrinfo hints;
	struct evdns_getaddrinfo_request *req;
	struct resolve *r;
	char portstr[8];

	snprintf(w->target, sizeof(w->target), "%s", w->srv->name);
	evtimer_add(w->timer, &be->connect_tv);
	if (be->cfg->backend.has_connect_to) {
		a = &be->cfg->backend.connect_to;
		if (a->port != 0)
			port = a->port;
	}
	if (a->is_numeric) {
		struct sockaddr_storage ss = a->ss;
		socklen_t sslen = a->sslen;

		if (ss.ss_family == AF_INET) {
			((struct sockaddr_in *)&ss)->sin_port = htons(port);
			sslen = sizeof(struct sockaddr_in);
		} else if (ss.ss_family == AF_INET6) {
			((struct sockaddr_in6 *)&ss)->sin6_port = htons(port);
			sslen = sizeof(struct sockaddr_in6);
		} else {
			set_detail(w, REASON_BACKEND_CONNECT, "connect %s: address family %d unsupported",
			    w->target, ss.ss_family);
			return -1;
		}
		return start_connect(w, (struct sockaddr *)&ss, sslen);
	}
	if (be->dns == NULL) {
		set_detail(w, REASON_BACKEND_CONNECT, "resolve %s: no resolver configured", a->host);
		return -1;
	}
	if ((r = calloc(1, sizeof(*r))) == NULL) {
		set_detail(w, REASON_BACKEND_CONNECT, "resolve %s: out of memory", a->host);
		return -1;
	}
	r->magic = RESOLVE_MAGIC;
	r->w = w;
	w->res = r;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_protocol = IPPROTO_TCP;
	snprintf(portstr, sizeof(portstr), "%u", (unsigned)port);
	w->resolving_sync = 1;
	req = evdns_getaddrinfo(be->dns, a->host, portstr, &hints, on_resolved, r);
	w->resolving_sync = 0;
	if (req != NULL) {
		r->req = req;		/* answer later; r stays w->res */
		return 0;
	}
	/* answered at once (hosts file, error): on_resolved freed r */
	if (w->gai_err != 0) {
		set_detail(w, REASON_BACKEND_CONNECT, "resolve %s: %s", a->host,
		    evutil_gai_strerror(w->gai_err));
		return -1;
	}
	if (connect_next_addr(w) == 0)
		return 0;
	if (w->ai_list == NULL)
		set_detail(w, REASON_BACKEND_CONNECT, "resolve %s: no address", a->host);
	return -1;
}

static void
on_attempt_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct backend_wait *w = arg;
	unsigned long long ms = w->be->cfg->backend.connect_timeout;

	(void)fd;
	(void)what;
	assert(w->magic == WAIT_MAGIC);
	if (w->res != NULL)
		set_detail(w, REASON_BACKEND_CONNECT, "resolve %s: no answer within %llu ms",
		    w->srv->name, ms);
	else if (w->bev != NULL)
		set_detail(w, REASON_BACKEND_TLS, "tls %s: handshake not done within %llu ms",
		    w->target, ms);
	else
		set_detail(w, REASON_BACKEND_CONNECT, "connect %s: timed out after %llu ms",
		    w->target, ms);
	attempt_failed(w);
	try_next(w);
}

/* The next server this wait may try, or NULL. */
static struct server *
pick(struct backend_wait *w)
{
	struct backend *be = w->be;

	if (w->probe_srv != NULL)
		return (w->tried & (1ull << w->probe_srv->idx)) ? NULL : w->probe_srv;
	for (unsigned k = 0; k < be->n_servers; k++) {
		unsigned i = (w->next + k) % be->n_servers;

		if (!(w->tried & (1ull << i)) && be->servers[i].up)
			return &be->servers[i];
	}
	return NULL;
}

/* Start attempts until one is in progress, or finish the wait. The wait may
 * be gone when this returns. */
static void
try_next(struct backend_wait *w)
{
	struct server *srv;

	while ((srv = pick(w)) != NULL) {
		w->tried |= 1ull << srv->idx;
		w->srv = srv;
		w->attempts++;
		if (start_attempt(w) == 0)
			return;
		attempt_failed(w);
	}
	if (w->probe_srv != NULL) {
		finish(w, NULL, REASON_BACKEND_CONNECT, NULL);
	} else if (w->attempts == 0) {
		char d[96];

		snprintf(d, sizeof(d), "all %u backend servers are marked down", w->be->n_servers);
		finish(w, NULL, REASON_BACKEND_DOWN, d);
	} else {
		finish(w, NULL, w->fail_reason, w->detail);
	}
}

static struct backend_wait *
wait_new(struct backend *be, struct pool *pool, backend_ready_fn *fn, void *arg)
{
	struct backend_wait *w = calloc(1, sizeof(*w));

	if (w == NULL)
		return NULL;
	w->magic = WAIT_MAGIC;
	w->be = be;
	w->fd = -1;
	w->fn = fn;
	w->arg = arg;
	w->pool = pool;
	if ((w->timer = evtimer_new(be->base, on_attempt_timeout, w)) == NULL) {
		free(w);
		return NULL;
	}
	LIST_INSERT_HEAD(&be->waits, w, link);
	return w;
}

struct backend_wait *
backend_acquire(struct backend *be, const char *principal, backend_ready_fn *fn, void *arg)
{
	struct backend_wait *w;
	struct pool *pool;
	struct bconn *bc;
	int done = 0;

	assert(be != NULL && be->magic == BACKEND_MAGIC);
	assert(principal != NULL && fn != NULL);
	if ((pool = pool_ref(be, principal)) == NULL) {
		log_error("backend", "out of memory for the pool of %s", principal);
		fn(NULL, REASON_OUT_OF_MEMORY, "out of memory", arg);
		return NULL;
	}
	/* An idle connection of this principal, most recently used first;
	 * never one of another principal (they live in other pools). */
	while ((bc = TAILQ_FIRST(&pool->idle)) != NULL) {
		idle_remove(bc);
		if (!bc->srv->up) {
			bconn_close(bc);	/* the pool still holds our reference */
			continue;
		}
		handout(bc, 1);
		be->st.reuses++;
		pool_unref(be, pool);
		fn(bc, REASON_OK, NULL, arg);
		return NULL;
	}
	if (be->n_up == 0) {
		char d[96];

		pool_unref(be, pool);
		snprintf(d, sizeof(d), "all %u backend servers are marked down", be->n_servers);
		fn(NULL, REASON_BACKEND_DOWN, d, arg);
		return NULL;
	}
	if ((w = wait_new(be, pool, fn, arg)) == NULL) {
		pool_unref(be, pool);
		log_error("backend", "out of memory for a backend connection of %s", principal);
		fn(NULL, REASON_OUT_OF_MEMORY, "out of memory", arg);
		return NULL;
	}
	w->next = be->rr++ % be->n_servers;
	w->done_flag = &done;
	try_next(w);
	if (done)
		return NULL;	/* the callback has run and w is freed */
	w->done_flag = NULL;
	return w;
}

void
backend_cancel(struct backend_wait *w)
{
	if (w == NULL)
		return;
	assert(w->magic == WAIT_MAGIC && w->probe_srv == NULL);
	wait_free(w);
}

/* ---- health ----------------------------------------------------------- */

static void
on_health(evutil_socket_t fd, short what, void *arg)
{
	struct backend *be = arg;

	(void)fd;
	(void)what;
	assert(be->magic == BACKEND_MAGIC);
	for (unsigned i = 0; i < be->n_servers; i++) {
		struct server *srv = &be->servers[i];
		struct backend_wait *w;
		int done = 0;

		if (srv->up || srv->probing)
			continue;
		if ((w = wait_new(be, NULL, NULL, NULL)) == NULL) {
			log_error("backend", "out of memory for a health check of %s", srv->name);
			return;
		}
		w->probe_srv = srv;
		srv->probing = 1;
		w->done_flag = &done;
		try_next(w);
		if (!done)
			w->done_flag = NULL;
	}
}

/* ---- life ------------------------------------------------------------- */

struct backend *
backend_new(struct event_base *base, struct evdns_base *dns,
    const struct config *cfg, SSL_CTX *tls_ctx)
{
	struct backend *be = NULL;
	unsigned n = cfg->backend.n_servers;

	assert(base != NULL && cfg != NULL);
	if (n == 0 || n > CONFIG_MAX_LIST) {
		log_error("backend", "[backend] servers lists %u servers; 1 to %u are needed",
		    n, (unsigned)CONFIG_MAX_LIST);
		return NULL;
	}
	if (cfg->backend.tls && tls_ctx == NULL) {
		log_error("backend", "[backend] tls = on but no TLS context was given");
		return NULL;
	}
	if ((be = calloc(1, sizeof(*be))) == NULL)
		goto oom;
	be->magic = BACKEND_MAGIC;
	be->base = base;
	be->dns = dns;
	be->cfg = cfg;
	be->tls_ctx = cfg->backend.tls ? tls_ctx : NULL;
	LIST_INIT(&be->waits);
	TAILQ_INIT(&be->busy);
	be->connect_tv = ms_tv(cfg->backend.connect_timeout ? cfg->backend.connect_timeout : 5000);
	be->idle_tv = ms_tv(cfg->backend.pool_idle);
	be->health_tv = ms_tv(cfg->backend.health_check);
	if ((be->buckets = calloc(POOL_BUCKETS_MIN, sizeof(*be->buckets))) == NULL)
		goto oom;
	be->n_buckets = POOL_BUCKETS_MIN;
	if ((be->servers = calloc(n, sizeof(*be->servers))) == NULL)
		goto oom;
	be->n_servers = n;
	for (unsigned i = 0; i < n; i++) {
		struct server *srv = &be->servers[i];
		const struct config_addr *a = &cfg->backend.servers[i];
		int v6 = strchr(a->host, ':') != NULL;

		srv->addr = a;
		srv->idx = i;
		srv->up = 1;
		if (asprintf(&srv->name, v6 ? "[%s]:%u" : "%s:%u", a->host, (unsigned)a->port) < 0) {
			srv->name = NULL;
			goto oom;
		}
	}
	be->n_up = n;
	if (cfg->backend.health_check > 0) {
		be->health = event_new(base, -1, EV_PERSIST, on_health, be);
		if (be->health == NULL || event_add(be->health, &be->health_tv) < 0)
			goto oom;
	}
	return be;
oom:
	log_error("backend", "out of memory setting up the backend servers");
	backend_free(be);
	return NULL;
}

/* Everything goes: waits without their callbacks, idle connections, and
 * connections still handed out (free the streams that hold them first). */
void
backend_free(struct backend *be)
{
	struct backend_wait *w;
	struct bconn *bc;

	if (be == NULL)
		return;
	assert(be->magic == BACKEND_MAGIC);
	if (be->health != NULL)
		event_free(be->health);
	while ((w = LIST_FIRST(&be->waits)) != NULL)
		wait_free(w);
	while ((bc = TAILQ_FIRST(&be->busy)) != NULL) {
		TAILQ_REMOVE(&be->busy, bc, link);
		bconn_close(bc);
	}
	for (unsigned i = 0; be->buckets != NULL && i < be->n_buckets; i++) {
		struct pool *p;

		/* only idle connections hold pools now; closing the last
		 * one of a pool frees and unlinks it */
		while ((p = LIST_FIRST(&be->buckets[i])) != NULL) {
			bc = TAILQ_FIRST(&p->idle);
			assert(bc != NULL);
			idle_remove(bc);
			bconn_close(bc);
		}
	}
	free(be->buckets);
	for (unsigned i = 0; be->servers != NULL && i < be->n_servers; i++)
		free(be->servers[i].name);
	free(be->servers);
	be->magic = 0;
	free(be);
}

void
backend_stats(const struct backend *be, struct backend_stats *st)
{
	assert(be != NULL && be->magic == BACKEND_MAGIC);
	*st = be->st;
	st->servers = be->n_servers;
	st->servers_up = be->n_up;
}
