/* credcache.c — impersonated-credential cache bookkeeping; see credcache.h. */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "credcache.h"

#define INITIAL_BUCKETS	64u

enum state { ST_PENDING, ST_POSITIVE, ST_NEGATIVE };

/* A credential shared by the cache entry and the requests using it. */
struct credcache_cred {
	void *cred;		/* opaque (gss_cred_id_t); NULL until complete */
	unsigned refs;
	uint64_t end;		/* ticket end, injected clock */
};

struct entry {
	struct entry *hnext;		/* hash chain */
	struct entry *prev, *next;	/* LRU list (not PENDING); head = newest */
	enum state st;
	uint64_t expires;		/* POSITIVE, NEGATIVE */
	/* POSITIVE: the entry's reference. PENDING: allocated at lookup so
	 * that complete cannot fail for lack of memory (refs 0, cred NULL). */
	struct credcache_cred *cred;
	enum kcd_err_class cls;		/* NEGATIVE */
	char *name, *text;		/* NEGATIVE, owned */
	struct credcache_waiter *w_head, **w_tail;	/* PENDING */
	uint32_t hash;
	size_t keylen;
	unsigned char key[];
};

struct credcache {
	struct credcache_params p;
	struct entry **buckets;
	unsigned n_buckets;		/* power of two */
	uint32_t seed;
	unsigned n_entries, n_pending, n_positive, n_negative;
	struct entry *lru_head, *lru_tail;
	unsigned creds_alive;
	uint64_t hits, negative_hits, misses, waits, evictions, expirations;
};

static uint32_t
hash_key(uint32_t seed, const void *key, size_t len)
{
	const unsigned char *k = key;
	uint32_t h = 2166136261u ^ seed;	/* FNV-1a, seeded per process */

	for (size_t i = 0; i < len; i++) {
		h ^= k[i];
		h *= 16777619u;
	}
	return h;
}

struct credcache *
credcache_new(const struct credcache_params *p)
{
	struct credcache *cc;

	if (p->now_ms == NULL || p->cred_free == NULL)
		return NULL;
	if ((cc = calloc(1, sizeof(*cc))) == NULL)
		return NULL;
	cc->p = *p;
	if (cc->p.max_entries == 0)
		cc->p.max_entries = CREDCACHE_DEFAULT_MAX;
	cc->n_buckets = INITIAL_BUCKETS;
	if ((cc->buckets = calloc(cc->n_buckets, sizeof(*cc->buckets))) == NULL) {
		free(cc);
		return NULL;
	}
	if (getrandom(&cc->seed, sizeof(cc->seed), GRND_NONBLOCK) != sizeof(cc->seed))
		cc->seed = (uint32_t)(uintptr_t)cc;
	return cc;
}

static struct entry *
find(const struct credcache *cc, const void *key, size_t keylen, uint32_t h)
{
	struct entry *e;

	for (e = cc->buckets[h & (cc->n_buckets - 1)]; e != NULL; e = e->hnext)
		if (e->hash == h && e->keylen == keylen && memcmp(e->key, key, keylen) == 0)
			return e;
	return NULL;
}

/* Double the table when it is fuller than one entry per bucket; a failed
 * allocation only leaves the chains longer. */
static void
maybe_grow(struct credcache *cc)
{
	unsigned nb = cc->n_buckets * 2;
	struct entry **nbk, *e, *next;

	if (cc->n_entries <= cc->n_buckets || nb > (1u << 26))
		return;
	if ((nbk = calloc(nb, sizeof(*nbk))) == NULL)
		return;
	for (unsigned i = 0; i < cc->n_buckets; i++) {
		for (e = cc->buckets[i]; e != NULL; e = next) {
			next = e->hnext;
			e->hnext = nbk[e->hash & (nb - 1)];
			nbk[e->hash & (nb - 1)] = e;
		}
	}
	free(cc->buckets);
	cc->buckets = nbk;
	cc->n_buckets = nb;
}

static void
lru_unlink(struct credcache *cc, struct entry *e)
{
	if (e->prev != NULL)
		e->prev->next = e->next;
	else
		cc->lru_head = e->next;
	if (e->next != NULL)
		e->next->prev = e->prev;
	else
		cc->lru_tail = e->prev;
	e->prev = e->next = NULL;
}

static void
lru_push(struct credcache *cc, struct entry *e)
{
	e->prev = NULL;
	e->next = cc->lru_head;
	if (cc->lru_head != NULL)
		cc->lru_head->prev = e;
	else
		cc->lru_tail = e;
	cc->lru_head = e;
}

void
credcache_cred_hold(struct credcache_cred *c)
{
	c->refs++;
}

void
credcache_cred_put(struct credcache *cc, struct credcache_cred *c)
{
	if (c == NULL || --c->refs > 0)
		return;
	if (c->cred != NULL) {
		cc->p.cred_free(c->cred, cc->p.free_arg);
		cc->creds_alive--;
	}
	free(c);
}

void *
credcache_cred_get(const struct credcache_cred *c)
{
	return c->cred;
}

uint64_t
credcache_cred_end(const struct credcache_cred *c)
{
	return c->end;
}

static void
remove_entry(struct credcache *cc, struct entry *e)
{
	struct entry **pp = &cc->buckets[e->hash & (cc->n_buckets - 1)];

	while (*pp != e)
		pp = &(*pp)->hnext;
	*pp = e->hnext;
	switch (e->st) {
	case ST_PENDING:
		/* the unused wrapper (refs 0) */
		if (e->cred != NULL) {
			e->cred->refs = 1;
			credcache_cred_put(cc, e->cred);
		}
		cc->n_pending--;
		break;
	case ST_POSITIVE:
		lru_unlink(cc, e);
		credcache_cred_put(cc, e->cred);
		cc->n_positive--;
		break;
	case ST_NEGATIVE:
		lru_unlink(cc, e);
		free(e->name);
		free(e->text);
		cc->n_negative--;
		break;
	}
	cc->n_entries--;
	free(e);
}

/* Keep at most max_entries settled entries: least recently used out. */
static void
enforce_bound(struct credcache *cc)
{
	while (cc->n_positive + cc->n_negative > cc->p.max_entries && cc->lru_tail != NULL) {
		remove_entry(cc, cc->lru_tail);
		cc->evictions++;
	}
}

void
credcache_free(struct credcache *cc)
{
	if (cc == NULL)
		return;
	for (unsigned i = 0; i < cc->n_buckets; i++)
		while (cc->buckets[i] != NULL)
			remove_entry(cc, cc->buckets[i]);
	free(cc->buckets);
	free(cc);
}

enum credcache_result
credcache_lookup(struct credcache *cc, const void *key, size_t keylen,
    struct credcache_waiter *w, struct credcache_lookup *out)
{
	uint32_t h = hash_key(cc->seed, key, keylen);
	struct entry *e = find(cc, key, keylen, h);
	uint64_t now = cc->p.now_ms(cc->p.clock_arg);

	memset(out, 0, sizeof(*out));
	if (e != NULL && e->st == ST_PENDING) {
		w->next = NULL;
		*e->w_tail = w;
		e->w_tail = &w->next;
		cc->waits++;
		return CREDCACHE_WAIT;
	}
	if (e != NULL && now >= e->expires) {
		remove_entry(cc, e);
		cc->expirations++;
		e = NULL;
	}
	if (e != NULL) {
		lru_unlink(cc, e);
		lru_push(cc, e);
		if (e->st == ST_POSITIVE) {
			credcache_cred_hold(e->cred);
			out->cred = e->cred;
			cc->hits++;
			return CREDCACHE_HIT;
		}
		out->cls = e->cls;
		out->name = e->name;
		out->text = e->text;
		cc->negative_hits++;
		return CREDCACHE_NEGATIVE;
	}

	if ((e = calloc(1, sizeof(*e) + keylen)) == NULL)
		return CREDCACHE_NOMEM;
	if ((e->cred = calloc(1, sizeof(*e->cred))) == NULL) {
		free(e);
		return CREDCACHE_NOMEM;
	}
	e->st = ST_PENDING;
	e->hash = h;
	e->keylen = keylen;
	memcpy(e->key, key, keylen);
	e->w_tail = &e->w_head;
	e->hnext = cc->buckets[h & (cc->n_buckets - 1)];
	cc->buckets[h & (cc->n_buckets - 1)] = e;
	cc->n_entries++;
	cc->n_pending++;
	cc->misses++;
	maybe_grow(cc);
	return CREDCACHE_LEAD;
}

struct credcache_cred *
credcache_peek(struct credcache *cc, const void *key, size_t keylen)
{
	struct entry *e = find(cc, key, keylen, hash_key(cc->seed, key, keylen));

	if (e == NULL || e->st != ST_POSITIVE || cc->p.now_ms(cc->p.clock_arg) >= e->expires)
		return NULL;
	lru_unlink(cc, e);
	lru_push(cc, e);
	credcache_cred_hold(e->cred);
	cc->hits++;
	return e->cred;
}

static struct credcache_waiter *
detach_waiters(struct entry *e)
{
	struct credcache_waiter *w = e->w_head;

	e->w_head = NULL;
	e->w_tail = &e->w_head;
	return w;
}

struct credcache_waiter *
credcache_complete(struct credcache *cc, const void *key, size_t keylen,
    void *cred, uint64_t ticket_end_ms, struct credcache_cred **out)
{
	uint32_t h = hash_key(cc->seed, key, keylen);
	struct entry *e = find(cc, key, keylen, h);
	struct credcache_waiter *w = NULL;
	struct credcache_cred *c;
	uint64_t now, exp, limit;

	*out = NULL;
	if (e == NULL || e->st != ST_PENDING) {
		/* not ours to cache (cannot happen while the caller follows
		 * the LEAD protocol): hand the credential back, uncached */
		if ((c = calloc(1, sizeof(*c))) == NULL) {
			cc->p.cred_free(cred, cc->p.free_arg);
			return NULL;
		}
		c->cred = cred;
		c->refs = 1;
		c->end = ticket_end_ms;
		cc->creds_alive++;
		*out = c;
		return NULL;
	}
	w = detach_waiters(e);
	c = e->cred;
	e->cred = NULL;
	c->cred = cred;
	c->refs = 1;			/* the caller's */
	c->end = ticket_end_ms;
	cc->creds_alive++;

	now = cc->p.now_ms(cc->p.clock_arg);
	limit = ticket_end_ms > cc->p.end_margin_ms ? ticket_end_ms - cc->p.end_margin_ms : 0;
	exp = now + cc->p.credential_ttl_ms;
	if (limit < exp)
		exp = limit;
	if (exp <= now) {
		remove_entry(cc, e);	/* too close to its end to reuse */
	} else {
		e->st = ST_POSITIVE;
		e->expires = exp;
		e->cred = c;
		credcache_cred_hold(c);	/* the entry's */
		cc->n_pending--;
		cc->n_positive++;
		lru_push(cc, e);
		enforce_bound(cc);
	}
	*out = c;
	return w;
}

struct credcache_waiter *
credcache_fail(struct credcache *cc, const void *key, size_t keylen,
    enum kcd_err_class cls, const char *name, const char *text)
{
	uint32_t h = hash_key(cc->seed, key, keylen);
	struct entry *e = find(cc, key, keylen, h);
	struct credcache_waiter *w;
	char *n = NULL, *t = NULL;

	if (e == NULL || e->st != ST_PENDING)
		return NULL;
	w = detach_waiters(e);
	if ((cls != KCD_ERR_USER && cls != KCD_ERR_PROXY) || cc->p.negative_ttl_ms == 0 ||
	    (n = strdup(name != NULL ? name : "")) == NULL ||
	    (t = strdup(text != NULL ? text : "")) == NULL) {
		free(n);
		remove_entry(cc, e);
		return w;
	}
	e->cred->refs = 1;
	credcache_cred_put(cc, e->cred);	/* the unused wrapper */
	e->cred = NULL;
	e->st = ST_NEGATIVE;
	e->cls = cls;
	e->name = n;
	e->text = t;
	e->expires = cc->p.now_ms(cc->p.clock_arg) + cc->p.negative_ttl_ms;
	cc->n_pending--;
	cc->n_negative++;
	lru_push(cc, e);
	enforce_bound(cc);
	return w;
}

void
credcache_invalidate(struct credcache *cc, const void *key, size_t keylen)
{
	uint32_t h = hash_key(cc->seed, key, keylen);
	struct entry *e = find(cc, key, keylen, h);

	if (e != NULL && e->st == ST_POSITIVE)
		remove_entry(cc, e);
}

unsigned
credcache_expire(struct credcache *cc)
{
	uint64_t now = cc->p.now_ms(cc->p.clock_arg);
	struct entry *e, *prev;
	unsigned n = 0;

	/* Not ordered by expiry (negative and positive TTLs differ): walk
	 * the whole LRU list. It runs every few seconds over at most
	 * max_entries entries. */
	for (e = cc->lru_tail; e != NULL; e = prev) {
		prev = e->prev;
		if (now >= e->expires) {
			remove_entry(cc, e);
			n++;
		}
	}
	cc->expirations += n;
	return n;
}

void
credcache_stats(const struct credcache *cc, struct credcache_stats *st)
{
	st->entries = cc->n_entries;
	st->pending = cc->n_pending;
	st->positive = cc->n_positive;
	st->negative = cc->n_negative;
	st->hits = cc->hits;
	st->negative_hits = cc->negative_hits;
	st->misses = cc->misses;
	st->waits = cc->waits;
	st->evictions = cc->evictions;
	st->expirations = cc->expirations;
	st->creds_alive = cc->creds_alive;
}
