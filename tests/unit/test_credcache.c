/*
 * test_credcache.c — the impersonated-credential cache's bookkeeping
 * (credcache.c): single flight, TTL and ticket-end cap, negative caching
 * (never for UNREACHABLE), invalidation, LRU bound and reference counting.
 * Time is a variable the test moves; credentials are counted tokens.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "credcache.h"

static uint64_t now;
static unsigned freed;

struct fake_cred {
	int id;
};

static uint64_t
clock_now(void *arg)
{
	(void)arg;
	return now;
}

static void
fake_free(void *cred, void *arg)
{
	(void)arg;
	freed++;
	free(cred);
}

static void *
fake_cred(int id)
{
	struct fake_cred *c = malloc(sizeof(*c));

	assert_non_null(c);
	c->id = id;
	return c;
}

static struct credcache *
new_cache(uint64_t ttl, uint64_t neg, uint64_t margin, unsigned max)
{
	struct credcache_params p = {
		.credential_ttl_ms = ttl, .negative_ttl_ms = neg,
		.end_margin_ms = margin, .max_entries = max,
		.now_ms = clock_now, .cred_free = fake_free,
	};
	struct credcache *cc;

	now = 1000000;
	freed = 0;
	cc = credcache_new(&p);
	assert_non_null(cc);
	return cc;
}

#define K(s) (s), strlen(s)

static enum credcache_result
look(struct credcache *cc, const char *key, struct credcache_waiter *w, struct credcache_lookup *out)
{
	return credcache_lookup(cc, key, strlen(key), w, out);
}

/* Run a successful exchange for key: LEAD, complete; returns the caller's
 * reference (dropped by the caller). */
static struct credcache_cred *
fill(struct credcache *cc, const char *key, int id, uint64_t ticket_end)
{
	struct credcache_lookup l;
	struct credcache_waiter w;
	struct credcache_cred *c;

	assert_int_equal(look(cc, key, &w, &l), CREDCACHE_LEAD);
	assert_null(credcache_complete(cc, K(key), fake_cred(id), ticket_end, &c));
	assert_non_null(c);
	return c;
}

static void
test_peek_only_finds_live_credentials_and_changes_nothing_else(void **state)
{
	struct credcache *cc = new_cache(600000, 30000, 60000, 0);
	struct credcache_lookup l;
	struct credcache_waiter w;
	struct credcache_cred *c = fill(cc, "alice", 1, now + 3600000), *p;
	struct credcache_stats st;

	(void)state;
	/* a live credential: a reference of the caller's, counted as a hit */
	p = credcache_peek(cc, K("alice"));
	assert_ptr_equal(p, c);
	assert_int_equal(((struct fake_cred *)credcache_cred_get(p))->id, 1);
	credcache_cred_put(cc, p);
	credcache_stats(cc, &st);
	assert_int_equal(st.hits, 1);
	/* unknown, pending and refused keys: NULL, and no entry is made, no
	 * waiter queued, no refusal answered */
	assert_null(credcache_peek(cc, K("bob")));
	credcache_stats(cc, &st);
	assert_int_equal(st.entries, 1);
	assert_int_equal(st.misses, 1);			/* fill's own */
	assert_int_equal(look(cc, "carol", &w, &l), CREDCACHE_LEAD);
	assert_null(credcache_peek(cc, K("carol")));
	assert_null(credcache_fail(cc, K("carol"), KCD_ERR_USER, "CLIENT_REVOKED", "x"));
	assert_null(credcache_peek(cc, K("carol")));
	credcache_stats(cc, &st);
	assert_int_equal(st.negative_hits, 0);
	assert_int_equal(st.waits, 0);
	/* expired: NULL, and the entry is left for lookup/expire to drop */
	now += 600000;
	assert_null(credcache_peek(cc, K("alice")));
	credcache_stats(cc, &st);
	assert_int_equal(st.positive, 1);
	assert_int_equal(st.expirations, 0);
	credcache_cred_put(cc, c);
	credcache_free(cc);
	assert_int_equal(freed, 1);
}

static void
test_miss_then_hit_returns_the_same_credential(void **state)
{
	struct credcache *cc = new_cache(600000, 30000, 60000, 0);
	struct credcache_lookup l;
	struct credcache_waiter w;
	struct credcache_cred *c = fill(cc, "alice", 1, now + 3600000);
	struct credcache_stats st;

	(void)state;
	assert_int_equal(look(cc, "alice", &w, &l), CREDCACHE_HIT);
	assert_ptr_equal(l.cred, c);
	assert_int_equal(((struct fake_cred *)credcache_cred_get(l.cred))->id, 1);
	assert_true(credcache_cred_end(l.cred) == now + 3600000);
	credcache_cred_put(cc, l.cred);
	credcache_cred_put(cc, c);
	assert_int_equal(freed, 0);		/* the entry still holds it */
	credcache_stats(cc, &st);
	assert_int_equal(st.positive, 1);
	assert_int_equal(st.hits, 1);
	assert_int_equal(st.misses, 1);
	assert_int_equal(st.creds_alive, 1);
	credcache_free(cc);
	assert_int_equal(freed, 1);
}

static void
test_single_flight_queues_waiters_in_order(void **state)
{
	struct credcache *cc = new_cache(600000, 30000, 60000, 0);
	struct credcache_lookup l;
	struct credcache_waiter lead, w[50], *list, *x;
	struct credcache_cred *c;
	struct credcache_stats st;
	unsigned n = 0;

	(void)state;
	assert_int_equal(look(cc, "bob", &lead, &l), CREDCACHE_LEAD);
	for (unsigned i = 0; i < 50; i++)
		assert_int_equal(look(cc, "bob", &w[i], &l), CREDCACHE_WAIT);
	/* another key is independent */
	assert_int_equal(look(cc, "carol", &lead, &l), CREDCACHE_LEAD);
	credcache_stats(cc, &st);
	assert_int_equal(st.pending, 2);
	assert_int_equal(st.misses, 2);		/* one exchange per key */
	assert_int_equal(st.waits, 50);

	list = credcache_complete(cc, K("bob"), fake_cred(7), now + 3600000, &c);
	for (x = list; x != NULL; x = x->next) {
		assert_ptr_equal(x, &w[n]);	/* FIFO */
		n++;
	}
	assert_int_equal(n, 50);
	/* after completion the next request is a hit, not a wait */
	assert_int_equal(look(cc, "bob", &lead, &l), CREDCACHE_HIT);
	credcache_cred_put(cc, l.cred);
	credcache_cred_put(cc, c);
	/* carol's exchange fails for a reason that is not cached */
	assert_null(credcache_fail(cc, K("carol"), KCD_ERR_UNREACHABLE, "KDC_UNREACH", "x"));
	credcache_free(cc);
	assert_int_equal(freed, 1);
}

static void
test_credential_ttl_caps_reuse(void **state)
{
	struct credcache *cc = new_cache(600000, 30000, 60000, 0);
	struct credcache_lookup l;
	struct credcache_waiter w;

	(void)state;
	credcache_cred_put(cc, fill(cc, "alice", 1, now + 10 * 3600000ull));
	now += 600000 - 1;
	assert_int_equal(look(cc, "alice", &w, &l), CREDCACHE_HIT);
	credcache_cred_put(cc, l.cred);
	now += 1;				/* exactly credential_ttl later */
	assert_int_equal(look(cc, "alice", &w, &l), CREDCACHE_LEAD);
	assert_int_equal(freed, 1);		/* the stale one is gone */
	credcache_free(cc);
}

static void
test_ticket_end_caps_reuse_before_ttl(void **state)
{
	struct credcache *cc = new_cache(600000, 30000, 60000, 0);
	struct credcache_lookup l;
	struct credcache_waiter w;

	(void)state;
	/* ticket ends in 5 min: reuse stops at end - margin = 4 min */
	credcache_cred_put(cc, fill(cc, "alice", 1, now + 300000));
	now += 240000 - 1;
	assert_int_equal(look(cc, "alice", &w, &l), CREDCACHE_HIT);
	credcache_cred_put(cc, l.cred);
	now += 1;
	assert_int_equal(look(cc, "alice", &w, &l), CREDCACHE_LEAD);
	credcache_free(cc);
}

static void
test_ticket_ending_within_margin_is_not_cached(void **state)
{
	struct credcache *cc = new_cache(600000, 30000, 60000, 0);
	struct credcache_lookup l;
	struct credcache_waiter w, w2;
	struct credcache_cred *c;
	struct credcache_stats st;

	(void)state;
	assert_int_equal(look(cc, "alice", &w, &l), CREDCACHE_LEAD);
	assert_int_equal(look(cc, "alice", &w2, &l), CREDCACHE_WAIT);
	/* the caller and the waiter still get the credential... */
	assert_ptr_equal(credcache_complete(cc, K("alice"), fake_cred(1), now + 30000, &c), &w2);
	assert_non_null(c);
	credcache_stats(cc, &st);
	assert_int_equal(st.entries, 0);	/* ...but it is not kept */
	assert_int_equal(freed, 0);
	credcache_cred_put(cc, c);
	assert_int_equal(freed, 1);
	assert_int_equal(look(cc, "alice", &w, &l), CREDCACHE_LEAD);
	credcache_free(cc);
}

static void
test_refusal_is_cached_for_negative_ttl(void **state)
{
	struct credcache *cc = new_cache(600000, 30000, 60000, 0);
	struct credcache_lookup l;
	struct credcache_waiter lead, w;

	(void)state;
	assert_int_equal(look(cc, "disabled", &lead, &l), CREDCACHE_LEAD);
	assert_int_equal(look(cc, "disabled", &w, &l), CREDCACHE_WAIT);
	assert_ptr_equal(credcache_fail(cc, K("disabled"), KCD_ERR_USER, "CLIENT_REVOKED",
	    "revoked text"), &w);
	now += 30000 - 1;
	assert_int_equal(look(cc, "disabled", &lead, &l), CREDCACHE_NEGATIVE);
	assert_int_equal(l.cls, KCD_ERR_USER);
	assert_string_equal(l.name, "CLIENT_REVOKED");
	assert_string_equal(l.text, "revoked text");
	now += 1;
	assert_int_equal(look(cc, "disabled", &lead, &l), CREDCACHE_LEAD);
	credcache_free(cc);
}

static void
test_proxy_refusal_is_cached_too(void **state)
{
	struct credcache *cc = new_cache(600000, 30000, 60000, 0);
	struct credcache_lookup l;
	struct credcache_waiter lead;

	(void)state;
	assert_int_equal(look(cc, "alice", &lead, &l), CREDCACHE_LEAD);
	credcache_fail(cc, K("alice"), KCD_ERR_PROXY, "EVIDENCE_TKT_NOT_FORWARDABLE", "t");
	assert_int_equal(look(cc, "alice", &lead, &l), CREDCACHE_NEGATIVE);
	assert_int_equal(l.cls, KCD_ERR_PROXY);
	credcache_free(cc);
}

static void
test_unreachable_and_internal_are_never_cached(void **state)
{
	struct credcache *cc = new_cache(600000, 30000, 60000, 0);
	struct credcache_lookup l;
	struct credcache_waiter lead, w;
	struct credcache_stats st;

	(void)state;
	assert_int_equal(look(cc, "alice", &lead, &l), CREDCACHE_LEAD);
	assert_int_equal(look(cc, "alice", &w, &l), CREDCACHE_WAIT);
	/* the waiter shares the leader's failure... */
	assert_ptr_equal(credcache_fail(cc, K("alice"), KCD_ERR_UNREACHABLE, "KDC_UNREACH",
	    "Cannot contact any KDC"), &w);
	/* ...but the next request asks the KDC again, at once */
	assert_int_equal(look(cc, "alice", &lead, &l), CREDCACHE_LEAD);
	credcache_fail(cc, K("alice"), KCD_ERR_INTERNAL, "NOMEM", "x");
	assert_int_equal(look(cc, "alice", &lead, &l), CREDCACHE_LEAD);
	credcache_stats(cc, &st);
	assert_int_equal(st.negative, 0);
	assert_int_equal(st.misses, 3);
	credcache_free(cc);
}

static void
test_negative_ttl_zero_disables_negative_caching(void **state)
{
	struct credcache *cc = new_cache(600000, 0, 60000, 0);
	struct credcache_lookup l;
	struct credcache_waiter lead;

	(void)state;
	assert_int_equal(look(cc, "x", &lead, &l), CREDCACHE_LEAD);
	credcache_fail(cc, K("x"), KCD_ERR_USER, "CLIENT_REVOKED", "t");
	assert_int_equal(look(cc, "x", &lead, &l), CREDCACHE_LEAD);
	credcache_free(cc);
}

static void
test_lru_bound_evicts_least_recently_used(void **state)
{
	struct credcache *cc = new_cache(600000, 30000, 60000, 3);
	struct credcache_lookup l;
	struct credcache_waiter w;
	struct credcache_stats st;

	(void)state;
	credcache_cred_put(cc, fill(cc, "a", 1, now + 3600000));
	credcache_cred_put(cc, fill(cc, "b", 2, now + 3600000));
	assert_int_equal(look(cc, "c", &w, &l), CREDCACHE_LEAD);
	credcache_fail(cc, K("c"), KCD_ERR_USER, "CLIENT_REVOKED", "t");
	/* touch a: b is now the least recently used */
	assert_int_equal(look(cc, "a", &w, &l), CREDCACHE_HIT);
	credcache_cred_put(cc, l.cred);
	credcache_cred_put(cc, fill(cc, "d", 4, now + 3600000));
	credcache_stats(cc, &st);
	assert_int_equal(st.entries, 3);
	assert_int_equal(st.evictions, 1);
	assert_int_equal(freed, 1);		/* b's credential */
	assert_int_equal(look(cc, "a", &w, &l), CREDCACHE_HIT);
	credcache_cred_put(cc, l.cred);
	assert_int_equal(look(cc, "c", &w, &l), CREDCACHE_NEGATIVE);
	assert_int_equal(look(cc, "d", &w, &l), CREDCACHE_HIT);
	credcache_cred_put(cc, l.cred);
	assert_int_equal(look(cc, "b", &w, &l), CREDCACHE_LEAD);
	credcache_free(cc);
}

static void
test_pending_entries_are_never_evicted(void **state)
{
	struct credcache *cc = new_cache(600000, 30000, 60000, 1);
	struct credcache_lookup l;
	struct credcache_waiter w1, w2;

	(void)state;
	assert_int_equal(look(cc, "p", &w1, &l), CREDCACHE_LEAD);
	credcache_cred_put(cc, fill(cc, "a", 1, now + 3600000));
	credcache_cred_put(cc, fill(cc, "b", 2, now + 3600000));	/* evicts a */
	assert_int_equal(look(cc, "p", &w2, &l), CREDCACHE_WAIT);
	assert_int_equal(freed, 1);
	credcache_free(cc);
}

static void
test_evicted_credential_lives_while_referenced(void **state)
{
	struct credcache *cc = new_cache(600000, 30000, 60000, 1);
	struct credcache_lookup l;
	struct credcache_waiter w;
	struct credcache_cred *a;

	(void)state;
	credcache_cred_put(cc, fill(cc, "a", 1, now + 3600000));
	assert_int_equal(look(cc, "a", &w, &l), CREDCACHE_HIT);
	a = l.cred;				/* a request is using it */
	credcache_cred_put(cc, fill(cc, "b", 2, now + 3600000));	/* evicts a */
	assert_int_equal(freed, 0);
	assert_int_equal(((struct fake_cred *)credcache_cred_get(a))->id, 1);
	credcache_cred_put(cc, a);
	assert_int_equal(freed, 1);
	credcache_free(cc);
}

static void
test_invalidate_drops_only_positive_entries(void **state)
{
	struct credcache *cc = new_cache(600000, 30000, 60000, 0);
	struct credcache_lookup l;
	struct credcache_waiter w, w2;

	(void)state;
	credcache_cred_put(cc, fill(cc, "a", 1, now + 3600000));
	credcache_invalidate(cc, K("a"));
	assert_int_equal(freed, 1);
	assert_int_equal(look(cc, "a", &w, &l), CREDCACHE_LEAD);
	credcache_invalidate(cc, K("a"));	/* pending: untouched */
	assert_int_equal(look(cc, "a", &w2, &l), CREDCACHE_WAIT);
	assert_ptr_equal(credcache_fail(cc, K("a"), KCD_ERR_USER, "N", "t"), &w2);
	credcache_invalidate(cc, K("a"));	/* negative: untouched */
	assert_int_equal(look(cc, "a", &w, &l), CREDCACHE_NEGATIVE);
	credcache_invalidate(cc, K("nosuch"));
	credcache_free(cc);
}

static void
test_expire_sweeps_stale_entries(void **state)
{
	struct credcache *cc = new_cache(600000, 30000, 60000, 0);
	struct credcache_lookup l;
	struct credcache_waiter w;
	struct credcache_stats st;

	(void)state;
	credcache_cred_put(cc, fill(cc, "a", 1, now + 3600000));
	assert_int_equal(look(cc, "n", &w, &l), CREDCACHE_LEAD);
	credcache_fail(cc, K("n"), KCD_ERR_USER, "C_PRINCIPAL_UNKNOWN", "t");
	assert_int_equal(look(cc, "p", &w, &l), CREDCACHE_LEAD);	/* pending stays */
	assert_int_equal(credcache_expire(cc), 0);
	now += 30000;
	assert_int_equal(credcache_expire(cc), 1);	/* the refusal */
	now += 600000;
	assert_int_equal(credcache_expire(cc), 1);	/* the credential */
	assert_int_equal(freed, 1);
	credcache_stats(cc, &st);
	assert_int_equal(st.entries, 1);
	assert_int_equal(st.pending, 1);
	credcache_free(cc);
}

static void
test_keys_are_binary_and_exact(void **state)
{
	struct credcache *cc = new_cache(600000, 30000, 60000, 0);
	struct credcache_lookup l;
	struct credcache_waiter w;
	struct credcache_cred *c;
	static const char k1[] = "HTTP@a\0alice@R", k2[] = "HTTP@a\0alice@RX";

	(void)state;
	assert_int_equal(credcache_lookup(cc, k1, sizeof(k1) - 1, &w, &l), CREDCACHE_LEAD);
	credcache_complete(cc, k1, sizeof(k1) - 1, fake_cred(1), now + 3600000, &c);
	credcache_cred_put(cc, c);
	assert_int_equal(credcache_lookup(cc, k2, sizeof(k2) - 1, &w, &l), CREDCACHE_LEAD);
	assert_int_equal(credcache_lookup(cc, k1, 6, &w, &l), CREDCACHE_LEAD);
	assert_int_equal(credcache_lookup(cc, k1, sizeof(k1) - 1, &w, &l), CREDCACHE_HIT);
	credcache_cred_put(cc, l.cred);
	credcache_free(cc);
}

static void
test_many_keys_grow_the_table(void **state)
{
	struct credcache *cc = new_cache(600000, 30000, 60000, 0);
	struct credcache_lookup l;
	struct credcache_waiter w;
	char key[32];

	(void)state;
	for (int i = 0; i < 5000; i++) {
		snprintf(key, sizeof(key), "user%d@R", i);
		credcache_cred_put(cc, fill(cc, key, i, now + 3600000));
	}
	for (int i = 0; i < 5000; i++) {
		snprintf(key, sizeof(key), "user%d@R", i);
		assert_int_equal(look(cc, key, &w, &l), CREDCACHE_HIT);
		assert_int_equal(((struct fake_cred *)credcache_cred_get(l.cred))->id, i);
		credcache_cred_put(cc, l.cred);
	}
	credcache_free(cc);
	assert_int_equal(freed, 5000);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_miss_then_hit_returns_the_same_credential),
		cmocka_unit_test(test_single_flight_queues_waiters_in_order),
		cmocka_unit_test(test_credential_ttl_caps_reuse),
		cmocka_unit_test(test_ticket_end_caps_reuse_before_ttl),
		cmocka_unit_test(test_ticket_ending_within_margin_is_not_cached),
		cmocka_unit_test(test_refusal_is_cached_for_negative_ttl),
		cmocka_unit_test(test_proxy_refusal_is_cached_too),
		cmocka_unit_test(test_unreachable_and_internal_are_never_cached),
		cmocka_unit_test(test_negative_ttl_zero_disables_negative_caching),
		cmocka_unit_test(test_lru_bound_evicts_least_recently_used),
		cmocka_unit_test(test_pending_entries_are_never_evicted),
		cmocka_unit_test(test_evicted_credential_lives_while_referenced),
		cmocka_unit_test(test_invalidate_drops_only_positive_entries),
		cmocka_unit_test(test_expire_sweeps_stale_entries),
		cmocka_unit_test(test_keys_are_binary_and_exact),
		cmocka_unit_test(test_many_keys_grow_the_table),
		cmocka_unit_test(test_peek_only_finds_live_credentials_and_changes_nothing_else),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
