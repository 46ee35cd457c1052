/*
 * test_s4u_warm.c — s4u.c's warm-token entry points without a KDC: which
 * route a request for a cached credential takes, and what is counted.
 * A warm credential needs a KDC exchange, so this test compiles s4u.c
 * into itself and plants one through s4u.c's own statics (an impersonated
 * credential with no GSS credential, only a service ticket made up here,
 * put in the credential cache as the leader's lead_done would): the
 * library carries no hook for tests. The planted credential's GSS route
 * fails (no credential: the default ccache is an empty MEMORY one here),
 * which is enough to see that a request went to the pool.
 *
 * Pinned down: s4u_token_now answers from a usable ticket (fast), declines
 * without trying (KCD_F_REFRESH) or tries, fails and counts one fallback
 * (ticket within S4U_TICKET_MARGIN_MS of its end); s4u_token_request_gss
 * after such a failure goes to the pool without a second try and counts
 * nothing more, while s4u_token_request (callers that never call
 * s4u_token_now) tries the fast path itself. Real tickets and acceptors:
 * tests/integration/test_s4u_fast.py.
 */
#include "s4u.c"

#include <setjmp.h>
#include <stdarg.h>

#include <cmocka.h>

#include "krb5test.h"

#define PROXY	"HTTP/proxy.example.test@EXAMPLE.TEST"
#define SPN	"HTTP@exchange.example.test"

struct world {
	struct krb5test_dir d;
	struct event_base *base;
	struct s4u *s;
};

static struct world *current;	/* for the teardown after a failed assertion */

struct answer {
	unsigned n;
	int ok, fast, fast_fallback, kdc;
	char name[KCD_NAME_MAX];
};

static void
on_answer(const struct s4u_result *res, void *arg)
{
	struct answer *a = arg;

	a->n++;
	a->ok = res->ok;
	a->fast = res->fast;
	a->fast_fallback = res->fast_fallback;
	a->kdc = res->kdc;
	snprintf(a->name, sizeof(a->name), "%s", res->ok ? "" : res->name);
}

static void
world_up(struct world *w)
{
	struct s4u_params p = {
		.credential_ttl_ms = 600000, .negative_ttl_ms = 30000,
		.kdc_timeout_ms = 2000, .kdc_concurrency = 1,
	};
	char err[256];

	memset(w, 0, sizeof(*w));
	krb5test_dir_make(&w->d, "test_s4u_warm");
	current = w;
	krb5test_write_conf(w->d.krb5_conf, 9);	/* discard: no KDC is ever asked */
	krb5test_make_keytab(w->d.keytab, PROXY);
	/* the GSS route on a planted credential (GSS_C_NO_CREDENTIAL) must
	 * find nothing by default, whatever this machine holds */
	assert_int_equal(setenv("KRB5CCNAME", "MEMORY:test_s4u_warm_default", 1), 0);
	assert_int_equal(setenv("KRB5_CLIENT_KTNAME", "FILE:/nonexistent/test_s4u_warm", 1), 0);
	assert_int_equal(s4u_env_init(w->d.krb5_conf, err, sizeof(err)), 0);
	assert_non_null(w->base = event_base_new());
	p.keytab = w->d.keytab;
	p.principal = PROXY;
	if ((w->s = s4u_new(w->base, &p, err, sizeof(err))) == NULL)
		fail_msg("s4u_new: %s", err);
	assert_non_null(w->s->kctx);
}

static void
world_down(struct world *w)
{
	current = NULL;
	if (w->s != NULL)
		s4u_free(w->s);
	if (w->base != NULL)
		event_base_free(w->base);
	krb5test_dir_remove(&w->d);
}

static int
teardown(void **state)
{
	(void)state;
	if (current != NULL)
		world_down(current);
	return 0;
}

/* A made-up service ticket for user to SPN's host, ending end_s seconds from
 * now, cached as user's credential for SPN (as lead_done caches the
 * leader's), with the credential itself valid for an hour. */
static const unsigned char TICKET_DER[] = {
	0x61, 0x0b, 0x30, 0x09, 0xa0, 0x03, 0x02, 0x01, 0x05, 0xa1, 0x02, 0x1b, 0x00,
};

static void
plant(struct world *w, const char *user, int64_t end_s)
{
	struct s4u *s = w->s;
	krb5_creds c;
	struct imp_cred *ic;
	struct credcache_cred *ref = NULL;
	struct credcache_waiter lead;
	struct credcache_lookup l;
	char key[KCD_SPN_MAX + KCD_PRINCIPAL_MAX];
	size_t slen = strlen(SPN), plen = strlen(user);

	memset(&c, 0, sizeof(c));
	assert_int_equal(krb5_parse_name(s->kctx, user, &c.client), 0);
	assert_int_equal(krb5_c_make_random_key(s->kctx, ENCTYPE_AES256_CTS_HMAC_SHA1_96,
	    &c.keyblock), 0);
	c.ticket.data = (char *)TICKET_DER;
	c.ticket.length = sizeof(TICKET_DER);
	c.times.endtime = (krb5_timestamp)(time(NULL) + end_s);
	assert_non_null(ic = calloc(1, sizeof(*ic)));
	ic->gss = GSS_C_NO_CREDENTIAL;
	assert_int_equal(apreq_ticket_new(s->kctx, &c, &ic->fast), 0);
	krb5_free_principal(s->kctx, c.client);
	krb5_free_keyblock_contents(s->kctx, &c.keyblock);
	memcpy(key, SPN, slen + 1);
	memcpy(key + slen + 1, user, plen + 1);
	/* the leader's protocol: a PENDING entry, then its completion */
	assert_int_equal(credcache_lookup(s->cc, key, slen + 1 + plen, &lead, &l), CREDCACHE_LEAD);
	assert_null(credcache_complete(s->cc, key, slen + 1 + plen, ic,
	    clock_mono_ms() + 3600 * 1000, &ref));
	assert_non_null(ref);
	credcache_cred_put(s->cc, ref);
}

static void
run_until(struct world *w, const struct answer *a, unsigned n)
{
	while (a->n < n)
		assert_true(event_base_loop(w->base, EVLOOP_ONCE) >= 0);
}

static void
test_a_usable_ticket_is_answered_now(void **state)
{
	static struct world w;
	struct s4u_result res;
	struct s4u_error err;
	struct s4u_stats st;
	unsigned char raw[1024];
	long n;

	(void)state;
	world_up(&w);
	plant(&w, "alice@EXAMPLE.TEST", 3600);
	assert_int_equal(s4u_token_now(w.s, "alice@EXAMPLE.TEST", SPN, NULL, 0, KCD_F_MUTUAL,
	    &res, &err), 1);
	assert_true(res.ok && res.fast && !res.fast_fallback);
	assert_int_not_equal(res.ctx_id, 0);
	/* the AP-REQ carries the planted ticket as it is */
	n = codec_b64_decode(res.token, strlen(res.token), raw, sizeof(raw));
	assert_true(n > (long)sizeof(TICKET_DER));
	assert_non_null(memmem(raw, (size_t)n, TICKET_DER, sizeof(TICKET_DER)));
	s4u_ctx_release(w.s, res.ctx_id);
	/* KCD_F_REFRESH: nothing tried, nothing counted */
	assert_int_equal(s4u_token_now(w.s, "alice@EXAMPLE.TEST", SPN, NULL, 0, KCD_F_REFRESH,
	    &res, &err), 0);
	assert_false(res.fast_fallback);
	/* no credential cached for bob: nothing tried either */
	assert_int_equal(s4u_token_now(w.s, "bob@EXAMPLE.TEST", SPN, NULL, 0, 0, &res, &err), 0);
	assert_false(res.fast_fallback);
	s4u_stats(w.s, &st);
	assert_int_equal(st.tokens_fast, 1);
	assert_int_equal(st.fast_fallbacks, 0);
	assert_int_equal(st.contexts, 0);
	world_down(&w);
}

static void
test_a_failed_fast_try_is_not_repeated(void **state)
{
	static struct world w;
	struct s4u_result res;
	struct s4u_error err;
	struct s4u_stats st;
	struct answer a;

	(void)state;
	world_up(&w);
	/* service tickets within S4U_TICKET_MARGIN_MS of their end: the fast
	 * path cannot use them, the credential is still cached */
	plant(&w, "alice@EXAMPLE.TEST", 30);
	plant(&w, "bob@EXAMPLE.TEST", 30);

	/* kcd's way: s4u_token_now tries and counts one fallback ... */
	assert_int_equal(s4u_token_now(w.s, "alice@EXAMPLE.TEST", SPN, NULL, 0, KCD_F_MUTUAL,
	    &res, &err), 0);
	assert_false(res.ok);
	assert_true(res.fast_fallback);
	s4u_stats(w.s, &st);
	assert_int_equal(st.fast_fallbacks, 1);
	assert_int_equal(st.requests, 0);
	/* ... and s4u_token_request_gss goes to the pool without trying again */
	memset(&a, 0, sizeof(a));
	assert_int_equal(s4u_token_request_gss(w.s, "alice@EXAMPLE.TEST", SPN, NULL, 0,
	    KCD_F_MUTUAL, on_answer, &a, &err), 0);
	assert_int_equal(a.n, 0);
	run_until(&w, &a, 1);
	/* the GSS route ran (the planted credential has none: refused there) */
	assert_false(a.ok);
	assert_false(a.fast);
	assert_false(a.kdc);
	assert_true(a.fast_fallback);	/* for kcd's metrics, counted once there */
	s4u_stats(w.s, &st);
	assert_int_equal(st.fast_fallbacks, 1);
	assert_int_equal(st.tokens_fast, 0);
	assert_int_equal(st.requests, 1);
	assert_int_equal(st.cache_hits, 1);

	/* a caller that never calls s4u_token_now (doctor, tools): the
	 * request tries the fast path itself, once */
	memset(&a, 0, sizeof(a));
	assert_int_equal(s4u_token_request(w.s, "bob@EXAMPLE.TEST", SPN, NULL, 0, 0, on_answer,
	    &a, &err), 0);
	run_until(&w, &a, 1);
	assert_false(a.ok);
	assert_false(a.fast);
	assert_true(a.fast_fallback);
	s4u_stats(w.s, &st);
	assert_int_equal(st.fast_fallbacks, 2);
	assert_int_equal(st.tokens_fast, 0);
	assert_int_equal(st.requests, 2);
	world_down(&w);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_a_usable_ticket_is_answered_now, teardown),
		cmocka_unit_test_teardown(test_a_failed_fast_try_is_not_repeated, teardown),
	};

	log_set_level(LOG_LVL_WARN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
