/*
 * credcache.h — kcd's cache of impersonated credentials (SPEC §6), as pure
 * bookkeeping: expiry, negative caching, single flight and an LRU bound.
 * It never calls GSSAPI; the credential is an opaque pointer released
 * through a callback, and the clock is injected, so the unit test drives
 * time and concurrency deterministically.
 *
 * One entry per key (s4u.c uses "SPN\0principal"):
 *   PENDING   a KDC exchange for this key is running; later requests for
 *             the key queue as waiters on it instead of starting another
 *             (single flight);
 *   POSITIVE  a credential, reused until min(stored + credential_ttl,
 *             ticket end - margin);
 *   NEGATIVE  a refusal (USER or PROXY class), answered for negative_ttl
 *             without asking the KDC again. UNREACHABLE and INTERNAL
 *             failures are never cached: the next request tries again.
 * Entries that are not PENDING are bounded by max_entries, least recently
 * used first out. A PENDING entry is never evicted (it has waiters).
 *
 * Not thread-safe: every call comes from kcd's loop thread. Pool threads
 * only use the opaque credential, under a reference taken here.
 */
#ifndef EKP_CREDCACHE_H
#define EKP_CREDCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "kcd_proto.h"

struct credcache;
struct credcache_cred;

/* Embedded in the caller's request object; linked while it waits. */
struct credcache_waiter {
	struct credcache_waiter *next;
};

struct credcache_params {
	uint64_t credential_ttl_ms;	/* cap on reuse of a credential */
	uint64_t negative_ttl_ms;	/* 0 = refusals are not cached */
	uint64_t end_margin_ms;		/* stop reusing this long before ticket end */
	unsigned max_entries;		/* 0 = CREDCACHE_DEFAULT_MAX */
	uint64_t (*now_ms)(void *clock_arg);	/* monotonic */
	void *clock_arg;
	/* The last reference to a credential is gone. */
	void (*cred_free)(void *cred, void *free_arg);
	void *free_arg;
};

#define CREDCACHE_DEFAULT_MAX	100000u

enum credcache_result {
	CREDCACHE_HIT,		/* out->cred: a reference for the caller */
	CREDCACHE_NEGATIVE,	/* out->cls/name/text: the cached refusal */
	CREDCACHE_LEAD,		/* caller must run the KDC exchange, then call
				 * credcache_complete or credcache_fail */
	CREDCACHE_WAIT,		/* w queued behind the exchange in progress */
	CREDCACHE_NOMEM,	/* nothing stored; treat as an internal error */
};

struct credcache_lookup {
	struct credcache_cred *cred;
	enum kcd_err_class cls;
	const char *name;	/* valid until the next credcache call */
	const char *text;
};

struct credcache *credcache_new(const struct credcache_params *p);
/* Releases every entry (credentials through cred_free once unreferenced).
 * Waiters still queued are the caller's memory and are not touched. */
void credcache_free(struct credcache *cc);

enum credcache_result credcache_lookup(struct credcache *cc, const void *key, size_t keylen,
    struct credcache_waiter *w, struct credcache_lookup *out);

/* A POSITIVE, unexpired entry's credential, as a reference for the caller
 * (counted as a hit, moved to the LRU front), else NULL with nothing
 * changed: unlike credcache_lookup it never starts an exchange, queues a
 * waiter or drops an expired entry. For kcd's synchronous fast path. */
struct credcache_cred *credcache_peek(struct credcache *cc, const void *key, size_t keylen);

/* The leader's exchange succeeded. cred is handed over (the cache frees it
 * through cred_free when the last reference goes); ticket_end_ms is on the
 * injected clock. Returns the detached waiters (FIFO order; NULL when
 * none) and, in *out, a reference to the credential for the caller (take
 * one more with credcache_cred_hold for each waiter). When the ticket ends
 * too soon to be reused nothing is cached, but *out is still valid. *out
 * is NULL only when the key had no PENDING entry and memory ran out (cred
 * is then released). */
struct credcache_waiter *credcache_complete(struct credcache *cc, const void *key, size_t keylen,
    void *cred, uint64_t ticket_end_ms, struct credcache_cred **out);

/* The leader's exchange failed. USER/PROXY refusals are cached for
 * negative_ttl; UNREACHABLE and INTERNAL are not (the entry is removed).
 * Returns the detached waiters, who get the same answer. */
struct credcache_waiter *credcache_fail(struct credcache *cc, const void *key, size_t keylen,
    enum kcd_err_class cls, const char *name, const char *text);

/* Forget a POSITIVE entry whose credential stopped working (the KDC
 * refused a later S4U2Proxy with it). No-op for other states. */
void credcache_invalidate(struct credcache *cc, const void *key, size_t keylen);

/* Drop every expired POSITIVE/NEGATIVE entry (kcd's periodic sweep), so a
 * credential does not outlive its TTL in memory. Returns how many. */
unsigned credcache_expire(struct credcache *cc);

void *credcache_cred_get(const struct credcache_cred *c);
uint64_t credcache_cred_end(const struct credcache_cred *c);
void credcache_cred_hold(struct credcache_cred *c);
void credcache_cred_put(struct credcache *cc, struct credcache_cred *c);

struct credcache_stats {
	unsigned entries, pending, positive, negative;
	uint64_t hits, negative_hits, misses, waits;
	uint64_t evictions, expirations;
	unsigned creds_alive;	/* credentials not yet freed (cache + in use) */
};
void credcache_stats(const struct credcache *cc, struct credcache_stats *st);

#endif
