/*
 * ocsp.h — OCSP checks of device certificates (SPEC §3 [tls] ocsp,
 * ocsp_responder, ocsp_timeout; §5 cert_revoked, cert_ocsp_unavailable),
 * asynchronous on the worker's event loop: nothing here ever blocks.
 *
 * Where it sits: the handshake has already verified the chain and CRLs
 * (tls.c). Before the first request of a connection, stream.c asks
 * ocsp_check_ssl() and waits for the callback:
 *   REASON_OK            the responder says good; or it says unknown / could
 *                        not be asked and ocsp = on (allowed, detail says why,
 *                        ocsp.c has logged it)
 *   REASON_CERT_REVOKED  the responder says revoked: close the connection
 *   REASON_CERT_OCSP     ocsp = required and no good answer (unknown,
 *                        unreachable, timeout, bad signature, stale): close
 * Resumed connections are checked too (the result is cached, so it is
 * cheap); the issuer of a resumed connection comes from client_ca. A
 * connection is checked once: a long-lived one (parked Pings) keeps going
 * when its certificate is revoked later, until it closes.
 *
 * How: one HTTP/1.0 POST (RFC 6960 appendix A) to [tls] ocsp_responder, or
 * to the certificate's AIA OCSP URL when that is empty; http:// only (an
 * https responder is reported as unavailable: OCSP over TLS would need its
 * own revocation check). The request carries a nonce; a response that
 * echoes another nonce is refused, one without a nonce (pre-produced
 * responses) is accepted. The response must be signed by the issuing CA or
 * a responder it delegated to (OCSP_basic_verify against client_ca), cover
 * the certificate, and be current (thisUpdate/nextUpdate, OCSP_SKEW_SECS of
 * clock skew allowed). [tls] ocsp_timeout bounds the whole exchange, DNS
 * included.
 *
 * Cache: by certificate id (issuer name and key hash + serial). A signed
 * answer is kept until its nextUpdate (OCSP_DEFAULT_TTL when it has none, at
 * most OCSP_MAX_TTL); a failure for OCSP_FAIL_TTL, so a dead responder costs
 * one attempt per certificate per OCSP_FAIL_TTL, not one per connection.
 * Concurrent checks of one certificate share one request. At most
 * OCSP_CACHE_MAX entries (expired ones are purged first; beyond that new
 * answers are used but not kept).
 */
#ifndef EKP_OCSP_H
#define EKP_OCSP_H

#include <stdint.h>
#include <stddef.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "config.h"
#include "reason.h"

#define OCSP_SKEW_SECS		300
#define OCSP_DEFAULT_TTL	3600		/* s, answer without nextUpdate */
#define OCSP_MAX_TTL		(7 * 86400)	/* s */
#define OCSP_FAIL_TTL		10		/* s, remembered failure */
#define OCSP_CACHE_MAX		100000
#define OCSP_RESPONSE_MAX	(256 * 1024)	/* bytes of HTTP answer */

struct event_base;
struct evdns_base;
struct ocsp;
struct ocsp_query;

/* Called once per query (never after ocsp_cancel). detail is a one-line
 * explanation for the logs ("good", "revoked at ... (keyCompromise)",
 * "http://ocsp.example.test/: connect: Connection refused"), valid only
 * during the call. */
typedef void ocsp_done_fn(enum reason reason, const char *detail, void *arg);

/* One per worker generation. base is borrowed; dns may be NULL, then an
 * evdns_base of our own is made from /etc/resolv.conf (numeric responder
 * addresses need none). The trust store of front_ctx (client_ca) is
 * referenced, not copied. cfg is borrowed and must outlive the ocsp.
 * Returns NULL with the cause in err. */
struct ocsp *ocsp_new(struct event_base *base, struct evdns_base *dns,
    const struct config *cfg, SSL_CTX *front_ctx, char *err, size_t errlen);
/* Frees everything, requests in flight included; callbacks of pending
 * queries never run (free the streams first). */
void ocsp_free(struct ocsp *o);

/* Check cert (issued by issuer; both borrowed, issuer may be NULL when it
 * could not be found: unavailable). The callback may run before this
 * returns (ocsp = off, cached answer, immediate failure): then NULL is
 * returned. Otherwise the handle is valid until the callback runs or
 * ocsp_cancel(). */
struct ocsp_query *ocsp_check(struct ocsp *o, X509 *cert, X509 *issuer,
    ocsp_done_fn *fn, void *arg);
/* The same for the peer of an established device connection
 * (tls_peer_cert / tls_peer_issuer). */
struct ocsp_query *ocsp_check_ssl(struct ocsp *o, SSL *ssl, ocsp_done_fn *fn, void *arg);
/* The callback will not run. A request in flight goes on and its answer is
 * cached for the next connection. */
void ocsp_cancel(struct ocsp_query *q);

struct ocsp_stats {
	uint64_t checks;		/* ocsp_check calls with ocsp != off */
	uint64_t cache_hits;		/* answered from the cache */
	uint64_t requests;		/* HTTP requests sent */
	uint64_t good, revoked, unknown, failures;	/* request outcomes */
	unsigned cached;		/* entries in the cache */
	unsigned in_flight;		/* requests not finished */
};
void ocsp_stats(const struct ocsp *o, struct ocsp_stats *st);

#endif
