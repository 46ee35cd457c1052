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
plant_ticket(struct world *w, const char *user, int64_t end_s, const unsigned char *der,
    size_t der_len)
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
	c.ticket.data = (char *)der;
	c.ticket.length = (unsigned)der_len;
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
plant(struct world *w, const char *user, int64_t end_s)
{
	plant_ticket(w, user, end_s, TICKET_DER, sizeof(TICKET_DER));
}

/* One DER element of tag at *p (definite length), its content returned
 * and *p moved past it. */
static const unsigned char *
take(const unsigned char **p, const unsigned char *end, unsigned char tag, size_t *len)
{
	const unsigned char *q = *p;
	size_t n = 0, k;

	assert_true(end - q >= 2);
	assert_int_equal(q[0], tag);
	if (q[1] < 0x80) {
		n = q[1];
		q += 2;
	} else {
		k = q[1] & 0x7f;
		assert_true(k >= 1 && k <= 3 && (size_t)(end - q) >= 2 + k);
		for (size_t i = 0; i < k; i++)
			n = n << 8 | q[2 + i];
		q += 2 + k;
	}
	assert_true((size_t)(end - q) >= n);
	*p = q + n;
	*len = n;
	return q;
}

/* tok is the base64 (canonical: it re-encodes to itself) of a framed
 * AP-REQ whose ticket [3] is exactly der[0..der_len). */
static void
check_ticket_in(const char *tok, size_t tok_len, const unsigned char *der, size_t der_len)
{
	static unsigned char raw[8192];
	static char again[CODEC_B64_LEN(8192) + 1];
	const unsigned char *msg, *p, *end, *s;
	size_t mlen, n;
	unsigned tok_id;
	long rn;

	assert_int_equal(strlen(tok), tok_len);
	rn = codec_b64_decode(tok, tok_len, raw, sizeof(raw));
	assert_true(rn > 0);
	assert_int_equal(codec_b64_encode_to(raw, (size_t)rn, again), tok_len);
	assert_string_equal(again, tok);
	assert_int_equal(s4u_token_unframe(raw, (size_t)rn, &tok_id, &msg, &mlen), 0);
	assert_int_equal(tok_id, S4U_TOK_AP_REQ);
	p = msg;
	end = msg + mlen;
	s = take(&p, end, 0x6e, &n);
	p = s;
	end = s + n;
	s = take(&p, end, 0x30, &n);
	p = s;
	(void)take(&p, end, 0xa0, &n);
	(void)take(&p, end, 0xa1, &n);
	(void)take(&p, end, 0xa2, &n);
	s = take(&p, end, 0xa3, &n);
	assert_int_equal(n, der_len);
	assert_memory_equal(s, der, der_len);
	(void)take(&p, end, 0xa4, &n);
	assert_ptr_equal(p, end);
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

/* The ticket's base64 is kept per credential and only the token's head
 * and authenticator are encoded (token_b64): for tickets of every length
 * from 1 to 400 bytes and a few long ones (every offset mod 3 the ticket
 * can start at, and the outer DER lengths' one- to three-byte forms),
 * each of several tokens, into s4u's buffer or the caller's, carries the
 * ticket byte for byte and is the canonical base64 of what it decodes
 * to. */
static void
test_tokens_carry_the_ticket_whatever_its_length(void **state)
{
	static struct world w;
	static unsigned char der[5000];
	static char buf[8192];
	struct s4u_result res;
	struct s4u_error err;
	struct s4u_stats st;
	char user[64];
	unsigned tokens = 0, at3[3] = { 0, 0, 0 };
	size_t lens[410], nl = 0;

	(void)state;
	world_up(&w);
	for (size_t i = 0; i < sizeof(der); i++)
		der[i] = (unsigned char)(i * 131 + 17);
	for (size_t l = 1; l <= 400; l++)
		lens[nl++] = l;
	lens[nl++] = 1200;
	lens[nl++] = 1201;
	lens[nl++] = 1202;
	lens[nl++] = 4999;
	for (size_t i = 0; i < nl; i++) {
		snprintf(user, sizeof(user), "user%zu@EXAMPLE.TEST", i);
		plant_ticket(&w, user, 3600, der, lens[i]);
		for (int k = 0; k < 3; k++) {
			const struct imp_cred *ic;
			struct credcache_cred *c;

			if (k == 1) {
				assert_int_equal(s4u_token_now_to(w.s, user, SPN, NULL, 0, 0, buf,
				    sizeof(buf), &res, &err), 1);
				assert_ptr_equal(res.token, buf);
			} else {
				assert_int_equal(s4u_token_now(w.s, user, SPN, NULL, 0,
				    k == 2 ? KCD_F_MUTUAL : 0, &res, &err), 1);
			}
			check_ticket_in(res.token, res.token_len, der, lens[i]);
			if (res.ctx_id != 0)
				s4u_ctx_release(w.s, res.ctx_id);
			tokens++;
			/* the kept base64 is there after the first token */
			memcpy(w.s->fast_key, SPN, sizeof(SPN));
			memcpy(w.s->fast_key + sizeof(SPN), user, strlen(user) + 1);
			assert_non_null(c = credcache_peek(w.s->cc, w.s->fast_key,
			    sizeof(SPN) + strlen(user)));
			ic = credcache_cred_get(c);
			assert_non_null(ic->tkt_b64);
			assert_int_equal(strlen(ic->tkt_b64),
			    CODEC_B64_INNER_LEN(ic->tkt_b64_at3, lens[i]));
			at3[ic->tkt_b64_at3]++;
			credcache_cred_put(w.s->cc, c);
		}
	}
	/* every alignment was met */
	assert_true(at3[0] > 0 && at3[1] > 0 && at3[2] > 0);
	/* a caller's buffer too small for the token: not made, the GSS route */
	plant_ticket(&w, "small@EXAMPLE.TEST", 3600, der, 1200);
	assert_int_equal(s4u_token_now_to(w.s, "small@EXAMPLE.TEST", SPN, NULL, 0, 0, buf, 1000,
	    &res, &err), 0);
	assert_true(res.fast_fallback);
	s4u_stats(w.s, &st);
	assert_int_equal(st.tokens_fast, tokens);
	assert_int_equal(st.fast_fallbacks, 1);
	world_down(&w);
}

/* token_b64 on one credential whose ticket moves between alignments (the
 * outer DER lengths follow the authenticator's, so a ticket's offset can
 * change from one token to the next): the kept base64 is made again for
 * the new alignment, and every result is the whole encoding's. */
static void
test_kept_ticket_base64_follows_the_alignment(void **state)
{
	static unsigned char msg[3000];
	static char whole[CODEC_B64_LEN(3000) + 1], got[CODEC_B64_LEN(3000) + 1];
	struct imp_cred ic;
	static const size_t offs[] = { 20, 21, 21, 22, 20, 23, 25, 24, 24, 20 };

	(void)state;
	memset(&ic, 0, sizeof(ic));
	for (size_t i = 0; i < sizeof(msg); i++)
		msg[i] = (unsigned char)(i * 7 + 3);
	for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
		size_t flen = offs[i] + 1500 + 250;

		/* the same ticket bytes at each offset */
		for (size_t j = 0; j < 1500; j++)
			msg[offs[i] + j] = (unsigned char)(j * 13 + 1);
		assert_int_equal(codec_b64_encode_to(msg, flen, whole), CODEC_B64_LEN(flen));
		assert_int_equal(token_b64(&ic, msg, flen, offs[i], msg + offs[i], 1500, got),
		    CODEC_B64_LEN(flen));
		assert_string_equal(got, whole);
		assert_int_equal(ic.tkt_b64_at3, offs[i] % 3);
	}
	free(ic.tkt_b64);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_a_usable_ticket_is_answered_now, teardown),
		cmocka_unit_test_teardown(test_a_failed_fast_try_is_not_repeated, teardown),
		cmocka_unit_test_teardown(test_tokens_carry_the_ticket_whatever_its_length, teardown),
		cmocka_unit_test(test_kept_ticket_base64_follows_the_alignment),
	};

	log_set_level(LOG_LVL_WARN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
