/*
 * backend.h — the Exchange servers and connections to them (SPEC §4).
 *
 * Backend connections are PRIVATE TO ONE USER PRINCIPAL: IIS binds the
 * Kerberos authentication of a request to its TCP connection
 * (authPersistNonNTLM), so an idle connection that carried alice's ticket
 * must never carry a request of bob's. The pool is therefore keyed by
 * (server, principal); an idle connection is handed out only for the same
 * principal it was opened for.
 *
 * A connection is handed to the caller (stream.c) ready to write: TCP
 * connected, TLS established and the server's certificate verified against
 * [backend] ca and the server's host name (unless tls = off). The caller
 * owns it until backend_release().
 *
 * Failover: backend_acquire() tries the servers round robin, skipping ones
 * marked down; a connect or TLS failure marks the server down (passive
 * health) and the next server is tried, so a request that has not sent a
 * byte yet never sees a single server's failure. Down servers are probed
 * every [backend] health_check (TCP connect + TLS handshake) and marked up
 * again when a probe succeeds. When every server is down, the callback gets
 * REASON_BACKEND_DOWN (503 + Retry-After to the device).
 */
#ifndef EKP_BACKEND_H
#define EKP_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "config.h"
#include "reason.h"

struct event_base;
struct evdns_base;
struct bufferevent;
struct backend;
struct bconn;
struct backend_wait;

/* Called once: bc != NULL and reason == REASON_OK on success; otherwise
 * bc == NULL, reason is REASON_BACKEND_CONNECT / _TLS / _DOWN (or
 * REASON_OUT_OF_MEMORY) and detail names the cause for the access log and
 * the error log, e.g. "connect exchange.example.test:443: Connection
 * refused", "tls exchange.example.test:443 (10.0.0.5:443): certificate
 * verify failed: unable to get local issuer certificate". When every server
 * failed during this acquire, reason and detail are the last server's; when
 * every server was already marked down, REASON_BACKEND_DOWN. detail is only
 * valid during the call. */
typedef void backend_ready_fn(struct bconn *bc, enum reason reason,
    const char *detail, void *arg);

/* cfg and tls_ctx are borrowed and must outlive the backend (a worker's
 * generation owns both). tls_ctx may be NULL when [backend] tls = off.
 * dns may be NULL when every server (or connect_to) is an IP address.
 * With [backend] health_check = 0 servers are never marked down (nothing
 * would bring them back); each acquire still fails over. */
struct backend *backend_new(struct event_base *base, struct evdns_base *dns,
    const struct config *cfg, SSL_CTX *tls_ctx);
/* Frees waits (their callbacks never run), idle connections and connections
 * still handed out: free the streams holding them first. */
void backend_free(struct backend *be);

/* Get a connection for principal: an idle one of the same principal, or a
 * new one. The callback may run before this returns (idle hit, all servers
 * down, every connect refused at once) — callers must be ready for that.
 * Returns a wait handle for backend_cancel(), or NULL when the callback has
 * already run. The connection arrives with no bufferevent callbacks, no
 * timeouts, an empty output and writing enabled: the caller sets its own.
 * Reading is disabled on a new connection; a pooled one stays enabled (what
 * arrived meanwhile waits in the input; an EOF is met again once the caller
 * enables reading), so that a reuse changes nothing in the event loop.
 * backend_cancel() before the callback: it never runs. */
struct backend_wait *backend_acquire(struct backend *be, const char *principal,
    backend_ready_fn *fn, void *arg);
void backend_cancel(struct backend_wait *w);

/* The caller is done: reusable = 1 puts it in the idle pool of its
 * principal for [backend] pool_idle (closed if the server closes it
 * meanwhile); 0 closes it. The bufferevent's callbacks are reset by the
 * pool; the caller must not touch bc afterwards. */
void backend_release(struct bconn *bc, int reusable);
/* Mark the connection's server as failed (passive health), e.g. when the
 * server reset the connection mid-request. */
void backend_report_failure(struct bconn *bc, const char *why);

/* Accessors for the stream that holds bc. */
struct bufferevent *bconn_bev(struct bconn *bc);
/* "exchange.example.test:443" for logs. */
const char *bconn_server_name(const struct bconn *bc);
/* The tls-server-end-point hash (RFC 5929) of the server's certificate for
 * Kerberos channel bindings; len 0 when plain HTTP. */
const unsigned char *bconn_cb_hash(const struct bconn *bc, unsigned *len);
/* Requests this connection has carried (1 on first use). */
unsigned bconn_uses(const struct bconn *bc);

/* For /metrics and tests. */
struct backend_stats {
	unsigned servers, servers_up;
	unsigned conns_open, conns_idle;
	uint64_t connects, connect_failures, reuses;
	/* connects: new connections handed out; connect_failures: failed
	 * attempts on one server (resolve, TCP, TLS; health probes included);
	 * reuses: idle connections handed out again */
};
void backend_stats(const struct backend *be, struct backend_stats *st);

#endif
