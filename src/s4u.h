/*
 * s4u.h — kcd's Kerberos core (SPEC §6): Negotiate tokens for a user to a
 * service through S4U2Self + S4U2Proxy, with a cache of impersonated
 * credentials (credcache.h) and a thread pool for the blocking GSSAPI calls
 * (pool.h). kcd.c owns one struct s4u on its event loop and answers
 * TOKEN_REQ / MUTUAL_REQ / CTX_RELEASE with it.
 *
 * The route, all through GSSAPI and the krb5 mechanism only (a default or
 * SPNEGO mech set fails with impersonated credentials, and mixing mechs
 * has been seen to pick up the default ccache's identity instead):
 *   1. the proxy's credential: gss_acquire_cred_from, cred store
 *      client_keytab = [kerberos] keytab and ccache = a MEMORY: ccache
 *      private to this s4u (never the default ccache), name = [kerberos]
 *      principal; acquired again when less than S4U_PROXY_MARGIN_MS of
 *      its lifetime is left (MIT also refreshes it from the keytab);
 *   2. S4U2Self: gss_acquire_cred_impersonate_name for "user@REALM" as a
 *      krb5 principal name (never an enterprise name);
 *   3. S4U2Proxy: gss_init_sec_context to the SPN ("HTTP@host", host-based
 *      service) with the impersonated credential, channel bindings when a
 *      tls-server-end-point hash is given; the raw krb5 token (RFC 4121
 *      framing) is what Negotiate servers accept.
 * Steps 1-3 run once per user (single flight: concurrent first requests for
 * one user wait for that one exchange); later tokens reuse the cached
 * impersonated credential, whose ccache also holds the service ticket, so
 * they need no KDC exchange.
 *
 * Warm tokens (the fast path): after step 3 the leader copies the service
 * ticket it got (client = the user, server = the SPN's service/host under
 * the KDC's name for it) out of the credential's ccache, once, and the
 * loop makes it ready for AP-REQs (apreq.h: the session key as a krb5_key
 * made once, whose derived keys stay cached). Later tokens for that user
 * are made on the loop thread, synchronously, with one krb5_context kept
 * for kcd's life: apreq_make on that ticket with what MIT's
 * gss_init_sec_context would put in (a fresh subkey, sequence number,
 * mutual-required for KCD_F_MUTUAL, the RFC 4121 0x8003 checksum over the
 * channel bindings with MIT's context flags, the client_aware_channel_
 * bindings authorization data when krb5.conf asks for it; apreq.h says
 * why the RFC 4537 etype list is left out), in RFC 2743 framing: the same
 * raw krb5 token. No KDC, no file or ccache access, no lock and no thread
 * hand-off, so it never blocks the loop. For KCD_F_MUTUAL a small value
 * is kept (the authenticator's ctime/cusec, a reference to the session
 * key, the subkey) and the backend's AP-REP is checked against it with
 * apreq_verify_rep, as MIT's mutual_auth checks it with krb5_rd_rep.
 * Session keys and tickets never leave kcd. The GSS route stays for the
 * first token of a credential, for KCD_F_REFRESH and whenever the fast
 * path cannot serve: no ticket was found or apreq cannot use it, it ends
 * within S4U_TICKET_MARGIN_MS, or a krb5 call failed (stats: tokens_fast,
 * fast_fallbacks).
 *
 * Timeouts: libkrb5 (1.20) has no per-call timeout, only its own retry
 * schedule per KDC. A request has two bounds, both kept by a timer on the
 * loop, each answering UNREACHABLE/TIMEOUT at once when it passes:
 *   - the wait: from its arrival until a pool thread starts its job, for a
 *     free thread (all kdc_concurrency busy) or for the exchange of an
 *     earlier request for the same user: at most queue_timeout
 *     (S4U_QUEUE_FACTOR x kdc_timeout unless given). A device would rather
 *     wait than get a 503: a cold start of thousands of users queues for as
 *     long as the KDC needs to serve them at kdc_concurrency in flight;
 *   - the exchange: kdc_timeout from when its thread started it (the thread
 *     still finishes a timed-out exchange, and a credential it gets is
 *     cached for the next request).
 * A job whose wait was answered TIMEOUT is cancelled: its thread finds it
 * so and never contacts the KDC (a claim, atomic between the thread and
 * the loop, decides which came first). A KDC that does not answer thus
 * ties up at most kdc_concurrency threads and never the loop or other
 * users' requests beyond that. kcd's client (the worker) waits for the sum
 * of both bounds plus a margin, so kcd answers first.
 *
 * Threads: every function here is for the loop thread that owns base;
 * callbacks run there too, never from inside the call that queued them.
 */
#ifndef EKP_S4U_H
#define EKP_S4U_H

#include <stddef.h>
#include <stdint.h>

#include <gssapi/gssapi.h>

#include "kcd_proto.h"

struct event_base;
struct s4u;

#define S4U_PROXY_MARGIN_MS	(5 * 60 * 1000)	/* renew the proxy credential */
#define S4U_TICKET_MARGIN_MS	(60 * 1000)	/* stop reusing before ticket end */
#define S4U_CB_PREFIX		"tls-server-end-point:"
/* The default wait bound (queue_timeout = 0): this many kdc_timeouts. At
 * kdc_timeout = 5 s, 30 s; the lab KDC serves 250 to 300 new users a second
 * (docs/performance.md), so a cold start of 5,000 users fits. */
#define S4U_QUEUE_FACTOR	6

/* An acquisition of the proxy's TGT from the keytab (gss_acquire_cred_from:
 * the AS exchange) ended: ok 1 when it got one, 0 when it failed (no usable
 * key in the keytab, the KDC refused, no KDC answered). Acquisitions that
 * shared another's answer or never got that far (out of memory, a bad
 * principal name) are not reported. */
typedef void s4u_tgt_fn(int ok, void *arg);

struct s4u_params {
	const char *keytab;		/* [kerberos] keytab */
	const char *principal;		/* [kerberos] principal */
	uint64_t credential_ttl_ms;
	uint64_t negative_ttl_ms;
	uint64_t kdc_timeout_ms;	/* one exchange, from when its thread starts it */
	uint64_t queue_timeout_ms;	/* waiting for a thread or another request's
					 * exchange; 0 = S4U_QUEUE_FACTOR x kdc_timeout */
	unsigned kdc_concurrency;	/* pool threads */
	unsigned max_entries;		/* credential cache; 0 = 100000 */
	/* Contexts kept for mutual authentication live this long (the
	 * backend's answer to a parked Ping comes after request_timeout)
	 * and at most max_contexts of them (oldest released first). */
	uint64_t ctx_ttl_ms;		/* 0 = 3700 s */
	unsigned max_contexts;		/* 0 = 100000 */
	/* Told of each AS exchange for the proxy's own credential that s4u
	 * ran (s4u_proxy_check's or a request's, proxy_get), on the loop,
	 * whether or not anyone still waits for its answer; NULL = nobody. */
	s4u_tgt_fn *on_tgt_exchange;
	void *tgt_arg;
};

/* An answer; pointers valid only during the callback. */
struct s4u_result {
	int ok;
	const char *token;		/* base64, for "Authorization: Negotiate" */
	size_t token_len;		/* strlen(token); s4u_token_now's answers only
					 * (0 in the pool's) */
	uint32_t ctx_id;		/* kept context (KCD_F_MUTUAL), else 0 */
	uint64_t ticket_end_ms;		/* unix ms: the service ticket's end */
	enum kcd_err_class cls;		/* when !ok */
	const char *name;		/* "CLIENT_REVOKED", "TIMEOUT", ... */
	const char *text;		/* GSS/krb5 detail, principal, hint; logs only */
	uint64_t elapsed_ms;
	int kdc;			/* 1: this request waited for a KDC exchange */
	int exchange;			/* 1: ...and ran it itself (the single-flight
					 * leader): count KDC requests on this */
	int fast;			/* 1 (with ok): made on the loop from the
					 * cached service ticket (Warm tokens);
					 * 0: by GSSAPI on a pool thread */
	int fast_fallback;		/* 1: a warm request the fast path could
					 * not serve (stats: fast_fallbacks) */
};

typedef void s4u_done_fn(const struct s4u_result *res, void *arg);

/* An error from a synchronous call (s4u_verify_mutual). */
struct s4u_error {
	enum kcd_err_class cls;
	char name[KCD_NAME_MAX];
	char text[KCD_TEXT_MAX];
};

/* Point libkrb5 at [kerberos] krb5_conf (setenv KRB5_CONFIG) when it is
 * set. Call in the kcd process before any krb5/GSSAPI call and before
 * threads start: the krb5 library reads the variable when it creates a
 * context, and setenv is not thread-safe. NULL or "" leaves the usual
 * lookup. Returns 0, or -1 with the cause in err. */
int s4u_env_init(const char *krb5_conf, char *err, size_t errlen);

/* Strings in p are copied. Starts the pool; contacts no KDC (the proxy's
 * credential is acquired by s4u_proxy_check or the first request). */
struct s4u *s4u_new(struct event_base *base, const struct s4u_params *p, char *err, size_t errlen);

/* Waits for exchanges in progress to finish (with a KDC that never
 * answers, that is libkrb5's whole retry schedule: about 30 s per KDC),
 * then releases everything. Callbacks of unanswered requests are not
 * called. Never call it from an s4u callback. */
void s4u_free(struct s4u *s);

/* Ask for a token for principal ("user@REALM") to spn ("HTTP@host"); cb is
 * the tls-server-end-point hash (RFC 5929) of the backend's certificate,
 * NULL/0 for none. flags: KCD_F_MUTUAL keeps the context for
 * s4u_verify_mutual; KCD_F_REFRESH drops the cached credential first (the
 * backend refused the last token). Returns 0 and calls fn exactly once
 * later, or -1 (invalid arguments, out of memory: fn not called) with the
 * cause in err when err is not NULL. */
int s4u_token_request(struct s4u *s, const char *principal, const char *spn,
    const unsigned char *cb, size_t cb_len, uint32_t flags,
    s4u_done_fn *fn, void *arg, struct s4u_error *err);

/* Finish a kept context with the backend's mutual-authentication token
 * (base64, from WWW-Authenticate: Negotiate): the raw krb5 AP-REP, or one
 * wrapped in a SPNEGO NegTokenResp. The context is released either way.
 * Returns 0 when it verified, else -1 with err (names NO_CONTEXT,
 * BAD_TOKEN, SPNEGO_REJECT, NO_REPLY_TOKEN, or the krb5 error such as
 * BAD_INTEGRITY). */
int s4u_verify_mutual(struct s4u *s, uint32_t ctx_id, const char *token_b64,
    struct s4u_error *err);

/* A SPNEGO NegTokenResp (RFC 4178 4.2.2), as a backend that wraps its reply
 * sends it: s4u_verify_mutual takes the AP-REP from its responseToken.
 * Pure (unit-tested): returns 0 with *tok, *toklen the responseToken
 * (NULL/0 when absent) and *state its negState (-1 when absent), or -1
 * when in is not exactly one well-formed NegTokenResp. */
int s4u_spnego_unwrap(const unsigned char *in, size_t len, const unsigned char **tok,
    size_t *toklen, int *state);

/* Release a kept context (CTX_RELEASE); unknown ids are ignored. */
void s4u_ctx_release(struct s4u *s, uint32_t ctx_id);

/* Warm tokens, synchronously (s4u.h, Warm tokens): when principal's
 * credential for spn is cached with its service ticket and that ticket has
 * more than S4U_TICKET_MARGIN_MS left, make the token now, on the loop,
 * and fill *res (its pointers valid until the next s4u call; res->ctx_id
 * as s4u_token_request's). Returns 1 when answered; 0 when this request
 * must go through the pool (nothing kept; *res zeroed but for
 * res->fast_fallback): with res->fast_fallback 0 nothing was tried (no
 * cached credential, KCD_F_REFRESH, no krb5 context): call
 * s4u_token_request; with res->fast_fallback 1 the fast path tried and
 * could not serve (no usable ticket kept, its end within the margin, a
 * krb5 error; counted in fast_fallbacks): call s4u_token_request_gss,
 * which does not try it again. -1 with err for the arguments
 * s4u_token_request refuses. */
int s4u_token_now(struct s4u *s, const char *principal, const char *spn,
    const unsigned char *cb, size_t cb_len, uint32_t flags, struct s4u_result *res,
    struct s4u_error *err);

/* s4u_token_now, with a token it makes written straight into the
 * caller's buf[0..cap) (NUL-terminated; res->token is buf, res->token_len
 * its length), as kcd puts it into its answer without a copy. A token that
 * would not fit is not made (0 with res->fast_fallback, as for any
 * failure of the fast path). */
int s4u_token_now_to(struct s4u *s, const char *principal, const char *spn,
    const unsigned char *cb, size_t cb_len, uint32_t flags, char *buf, size_t cap,
    struct s4u_result *res, struct s4u_error *err);

/* s4u_token_request for a request whose fast path s4u_token_now has just
 * tried and counted (it returned 0 with res->fast_fallback): the same
 * lookup and answer, except that a cached credential goes straight to
 * gss_init_sec_context on the pool, and the answer carries fast_fallback
 * (for the caller's metrics) without counting it again. Callers that
 * never call s4u_token_now use s4u_token_request, which tries the fast
 * path itself. */
int s4u_token_request_gss(struct s4u *s, const char *principal, const char *spn,
    const unsigned char *cb, size_t cb_len, uint32_t flags,
    s4u_done_fn *fn, void *arg, struct s4u_error *err);

/* The pure pieces of the fast path (unit-tested against RFC vectors):
 * s4u_cb_md5: Bnd of RFC 4121 4.1.1.2, MD5 over the channel bindings as
 *   MIT's kg_checksum_channel_bindings lays them out (initiator and
 *   acceptor address types and lengths, all 0 for GSS_C_AF_UNSPEC, then
 *   the application data's length and bytes, 32-bit little-endian); 16
 *   zero bytes when appdata is NULL (no bindings). 0, or -1 (too long, no
 *   MD5 in this OpenSSL).
 * s4u_gss_flags: the context flags MIT's gss_init_sec_context puts in the
 *   checksum for our request flags: CONF | INTEG | TRANS, plus MUTUAL for
 *   KCD_F_MUTUAL.
 * s4u_gss_checksum: the authenticator checksum of type 0x8003 (RFC 4121
 *   4.1.1): Lgth = 16, Bnd, Flags, little-endian, no delegation.
 * s4u_token_frame: RFC 2743 3.1 framing around a krb5 message: 0x60,
 *   DER length, the krb5 mechanism OID, the 2-byte TOK_ID (RFC 4121 4.1:
 *   0x0100 AP-REQ, 0x0200 AP-REP, 0x0300 KRB-ERROR). Returns the framed
 *   length, or 0 when out (outlen bytes) is too small.
 * s4u_token_unframe: the reverse, strict: exactly one framed token of the
 *   krb5 mechanism with a definite length covering all of in. Returns 0
 *   with *tok_id and the message (pointing into in), else -1. */
#define S4U_GSS_CKSUM_LEN	24
#define S4U_TOK_AP_REQ		0x0100u
#define S4U_TOK_AP_REP		0x0200u
#define S4U_TOK_ERROR		0x0300u
int s4u_cb_md5(const unsigned char *appdata, size_t len, unsigned char bnd[16]);
uint32_t s4u_gss_flags(uint32_t kcd_flags);
void s4u_gss_checksum(const unsigned char bnd[16], uint32_t gss_flags,
    unsigned char out[S4U_GSS_CKSUM_LEN]);
size_t s4u_token_frame(unsigned tok_id, const unsigned char *msg, size_t len,
    unsigned char *out, size_t outlen);
int s4u_token_unframe(const unsigned char *in, size_t len, unsigned *tok_id,
    const unsigned char **msg, size_t *msglen);

/* The proxy's own credential (its TGT), as s4u_proxy_check found it;
 * pointers valid only during the callback. */
struct s4u_proxy_state {
	int ok;				/* 1: held, with more than the renewal
					 * margin left (or as much as the KDC
					 * gives when that is less) */
	int acquired;			/* this check ran the AS exchange */
	uint64_t end_ms;		/* unix ms of its end; UINT64_MAX: no end.
					 * When !ok: the one still held (a renewal
					 * failed; maybe past), 0 when none */
	enum kcd_err_class cls;		/* when !ok */
	const char *name;		/* when !ok: "CLIENT_NOT_FOUND", "TIMEOUT" ... */
	const char *text;		/* when !ok: GSS/krb5 detail, principal, hint */
};

typedef void s4u_proxy_fn(const struct s4u_proxy_state *st, void *arg);

/* Make sure the proxy holds its TGT without waiting for a device: on a KDC
 * pool thread, the current credential when it has more than
 * S4U_PROXY_MARGIN_MS left, else an AS exchange from the keytab into the
 * same private ccache that then serves S4U2Self. It is the requests' own
 * acquisition (proxy_get): never two at once; a check that arrives while
 * a request acquires waits for it and shares its answer. fn is called
 * once, on the loop, unless s4u_free comes first. Returns 0, or -1 when
 * a check is already in flight, the pool is stopping or memory ran out
 * (fn not called). */
int s4u_proxy_check(struct s4u *s, s4u_proxy_fn *fn, void *arg);

struct s4u_stats {
	uint64_t requests;		/* accepted by s4u_token_request */
	uint64_t cache_hits, negative_hits, waits;
	uint64_t s4u2self;		/* S4U2Self attempts (KDC exchanges) */
	uint64_t s4u2proxy;		/* S4U2Proxy attempts made by a leader */
	uint64_t proxy_acquired;	/* proxy credentials acquired from the keytab */
	uint64_t tokens, errors_user, errors_proxy, errors_unreachable, errors_internal;
	uint64_t tokens_fast;		/* of tokens: made on the loop from the
					 * cached service ticket (Warm tokens) */
	uint64_t fast_fallbacks;	/* tries of the fast path that could not
					 * serve a warm request (no ticket kept,
					 * near its end, krb5 error): GSS route
					 * instead. One per request when its
					 * caller uses s4u_token_now then
					 * s4u_token_request_gss */
	uint64_t timeouts;		/* answered TIMEOUT */
	uint64_t expired_in_queue;	/* jobs that found their deadline passed
					 * when a thread got to them (no KDC asked) */
	unsigned entries, contexts, in_flight;
	unsigned pool_queued, pool_busy;
};
void s4u_stats(const struct s4u *s, struct s4u_stats *st);

/* Error mapping, pure (unit-tested): a krb5 error code from a GSS minor
 * status at the given step -> class, name ("CLIENT_REVOKED") and, for
 * PROXY errors, a hint naming what to fix in AD/the KDC (NULL else). */
enum s4u_step {
	S4U_STEP_PROXY_CRED,	/* AS exchange for the proxy from its keytab */
	S4U_STEP_S4U2SELF,
	S4U_STEP_S4U2PROXY,	/* the first init_sec_context for a user */
	S4U_STEP_INIT,		/* later init_sec_context with a cached cred */
	S4U_STEP_MUTUAL,	/* verifying the backend's reply token */
};
struct s4u_class {
	enum kcd_err_class cls;
	char name[KCD_NAME_MAX];
	const char *hint;
};
void s4u_classify(enum s4u_step step, unsigned major, long code, struct s4u_class *out);

/* What a refused S4U2Proxy (BADOPTION: MIT and AD give no finer code)
 * means, from whether the user's S4U2Self ticket was forwardable and
 * whether this proxy has recently had a forwardable one for anyone:
 *   evidence forwardable           -> PROXY NOT_ALLOWED_TO_DELEGATE (SPN
 *                                     not in the proxy's delegation list)
 *   not forwardable, proxy seen ok -> USER NOT_DELEGABLE (the account is
 *                                     sensitive / cannot be delegated)
 *   not forwardable, never seen ok -> PROXY EVIDENCE_TKT_NOT_FORWARDABLE
 *                                     (no ok_to_auth_as_delegate)
 * evidence_fwd: 1, 0, or -1 when it could not be read (-> PROXY BADOPTION). */
void s4u_classify_badoption(int evidence_fwd, int proxy_seen_ok, struct s4u_class *out);

/* Pieces doctor shares (it runs S4U2Self itself to read the ticket):
 * s4u_evidence_forwardable: was the S4U2Self ticket for user (as parsed by
 *   krb5_parse_name) in the impersonated credential imp forwardable? 1, 0,
 *   or -1 unknown. When server is not NULL it gets (slen bytes) the name
 *   the ticket was issued to, and is left alone when none was found.
 * s4u_ccache_destroy: destroys the credential cache called name (a
 *   MEMORY: one the caller named), if it exists. */
int s4u_evidence_forwardable(gss_cred_id_t imp, const char *user, char *server, size_t slen);
void s4u_ccache_destroy(const char *name);

#endif
