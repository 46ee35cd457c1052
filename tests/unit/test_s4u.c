/*
 * test_s4u.c — s4u.c without a working KDC: the krb5 error mapping (class,
 * name, hint per step), the S4U2Proxy BADOPTION disambiguation, argument
 * checks, and the asynchronous machinery against a KDC that refuses
 * connections (KDC_UNREACH, never cached) or never answers (TIMEOUT on the
 * loop, single flight behind the stuck exchange, queued jobs expiring
 * without contacting the KDC). The real KDC route is tested by
 * tests/integration/test_s4u.py against the lab.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>
#include <event2/event.h>
#include <gssapi/gssapi.h>
#include <krb5.h>

#include "krb5test.h"
#include "s4u.h"

#define PROXY	"HTTP/proxy.example.test@EXAMPLE.TEST"
#define SPN	"HTTP@exchange.example.test"

/* ---- error mapping ------------------------------------------------------------ */

static void
expect_class(enum s4u_step step, long code, enum kcd_err_class cls, const char *name, int hint)
{
	struct s4u_class c;

	s4u_classify(step, GSS_S_FAILURE, code, &c);
	if (c.cls != cls || strcmp(c.name, name) != 0 || (c.hint != NULL) != hint)
		fail_msg("step %d code %ld: expected class %d %s hint %d, got %d %s hint %s",
		    (int)step, code, (int)cls, name, hint, (int)c.cls, c.name,
		    c.hint != NULL ? c.hint : "(none)");
}

static void
test_user_refusals_are_user_class_at_user_steps(void **state)
{
	static const struct {
		long code;
		const char *name;
	} users[] = {
		{ KRB5KDC_ERR_CLIENT_REVOKED, "CLIENT_REVOKED" },
		{ KRB5KDC_ERR_C_PRINCIPAL_UNKNOWN, "C_PRINCIPAL_UNKNOWN" },
		{ KRB5KDC_ERR_NAME_EXP, "NAME_EXP" },
		{ KRB5KDC_ERR_KEY_EXP, "KEY_EXP" },
		{ KRB5KDC_ERR_CLIENT_NOTYET, "CLIENT_NOTYET" },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(users) / sizeof(users[0]); i++) {
		expect_class(S4U_STEP_S4U2SELF, users[i].code, KCD_ERR_USER, users[i].name, 0);
		expect_class(S4U_STEP_S4U2PROXY, users[i].code, KCD_ERR_USER, users[i].name, 0);
		expect_class(S4U_STEP_INIT, users[i].code, KCD_ERR_USER, users[i].name, 0);
		/* the same code for the proxy's own AS exchange is ours to fix */
		expect_class(S4U_STEP_PROXY_CRED, users[i].code, KCD_ERR_PROXY, users[i].name, 1);
	}
}

static void
test_proxy_refusals_are_proxy_class_with_a_hint(void **state)
{
	(void)state;
	expect_class(S4U_STEP_S4U2PROXY, KRB5KDC_ERR_S_PRINCIPAL_UNKNOWN, KCD_ERR_PROXY,
	    "S_PRINCIPAL_UNKNOWN", 1);
	expect_class(S4U_STEP_S4U2SELF, KRB5KDC_ERR_POLICY, KCD_ERR_PROXY, "POLICY", 1);
	expect_class(S4U_STEP_S4U2SELF, KRB5KRB_AP_ERR_SKEW, KCD_ERR_PROXY, "SKEW", 1);
	expect_class(S4U_STEP_PROXY_CRED, KRB5KDC_ERR_PREAUTH_FAILED, KCD_ERR_PROXY,
	    "PREAUTH_FAILED", 1);
	expect_class(S4U_STEP_PROXY_CRED, KRB5_FCC_NOFILE, KCD_ERR_PROXY, "FCC_NOFILE", 1);
	expect_class(S4U_STEP_PROXY_CRED, KRB5_KT_NOTFOUND, KCD_ERR_PROXY, "KT_NOTFOUND", 1);
	expect_class(S4U_STEP_S4U2PROXY, KRB5KDC_ERR_ETYPE_NOSUPP, KCD_ERR_PROXY, "ETYPE_NOSUPP", 1);
	expect_class(S4U_STEP_PROXY_CRED, KRB5_REALM_UNKNOWN, KCD_ERR_PROXY, "REALM_UNKNOWN", 1);
}

static void
test_unreachable_at_every_step(void **state)
{
	(void)state;
	for (int step = S4U_STEP_PROXY_CRED; step <= S4U_STEP_INIT; step++) {
		expect_class((enum s4u_step)step, KRB5_KDC_UNREACH, KCD_ERR_UNREACHABLE, "KDC_UNREACH", 0);
		expect_class((enum s4u_step)step, KRB5_REALM_CANT_RESOLVE, KCD_ERR_UNREACHABLE,
		    "REALM_CANT_RESOLVE", 0);
		/* the KDC answers but its database is down */
		expect_class((enum s4u_step)step, KRB5KDC_ERR_SVC_UNAVAILABLE, KCD_ERR_UNREACHABLE,
		    "SVC_UNAVAILABLE", 0);
		expect_class((enum s4u_step)step, ETIMEDOUT, KCD_ERR_UNREACHABLE, "ETIMEDOUT", 0);
	}
}

static void
test_unknown_codes_get_stable_names(void **state)
{
	struct s4u_class c;

	(void)state;
	/* a KDC protocol error without a table entry: its number */
	expect_class(S4U_STEP_S4U2SELF, ERROR_TABLE_BASE_krb5 + 66, KCD_ERR_PROXY, "KDC_ERR_66", 0);
	/* errno values only mean "keytab" while the keytab is read */
	expect_class(S4U_STEP_PROXY_CRED, ENOENT, KCD_ERR_PROXY, "ENOENT", 1);
	expect_class(S4U_STEP_INIT, ENOENT, KCD_ERR_PROXY, "MINOR_2", 0);
	/* no minor code: the GSS routine error */
	s4u_classify(S4U_STEP_INIT, GSS_S_BAD_NAME, 0, &c);
	assert_string_equal(c.name, "BAD_NAME");
	assert_int_equal(c.cls, KCD_ERR_PROXY);
	s4u_classify(S4U_STEP_MUTUAL, GSS_S_DEFECTIVE_TOKEN, 0, &c);
	assert_string_equal(c.name, "DEFECTIVE_TOKEN");
	/* verifying the backend's reply never blames the user */
	expect_class(S4U_STEP_MUTUAL, KRB5KDC_ERR_CLIENT_REVOKED, KCD_ERR_PROXY, "CLIENT_REVOKED", 1);
	expect_class(S4U_STEP_MUTUAL, KRB5_MUTUAL_FAILED, KCD_ERR_PROXY, "MUTUAL_FAILED", 1);
}

static void
test_badoption_is_told_apart_by_the_evidence_ticket(void **state)
{
	struct s4u_class c;

	(void)state;
	s4u_classify_badoption(1, 0, &c);
	assert_int_equal(c.cls, KCD_ERR_PROXY);
	assert_string_equal(c.name, "NOT_ALLOWED_TO_DELEGATE");
	assert_non_null(strstr(c.hint, "msDS-AllowedToDelegateTo"));
	s4u_classify_badoption(1, 1, &c);
	assert_string_equal(c.name, "NOT_ALLOWED_TO_DELEGATE");

	s4u_classify_badoption(0, 1, &c);		/* sensitive user */
	assert_int_equal(c.cls, KCD_ERR_USER);
	assert_string_equal(c.name, "NOT_DELEGABLE");
	assert_null(c.hint);

	s4u_classify_badoption(0, 0, &c);		/* no protocol transition */
	assert_int_equal(c.cls, KCD_ERR_PROXY);
	assert_string_equal(c.name, "EVIDENCE_TKT_NOT_FORWARDABLE");
	assert_non_null(strstr(c.hint, "Use any authentication protocol"));

	s4u_classify_badoption(-1, 1, &c);
	assert_int_equal(c.cls, KCD_ERR_PROXY);
	assert_string_equal(c.name, "BADOPTION");
}

static void
test_spnego_reply_is_unwrapped_to_its_response_token(void **state)
{
	/* accept-completed, krb5 OID, responseToken 60 03 01 02 03 */
	static const unsigned char full[] = {
		0xa1, 0x1c, 0x30, 0x1a,
		0xa0, 0x03, 0x0a, 0x01, 0x00,
		0xa1, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02,
		0xa2, 0x06, 0x04, 0x04, 0x60, 0x02, 0x01, 0x02,
	};
	/* what IIS answers when no mutual authentication was asked for */
	static const unsigned char bare[] = { 0xa1, 0x07, 0x30, 0x05, 0xa0, 0x03, 0x0a, 0x01, 0x00 };
	/* long-form lengths, responseToken only */
	static const unsigned char longform[] = {
		0xa1, 0x81, 0x08, 0x30, 0x81, 0x05, 0xa2, 0x03, 0x04, 0x01, 0x7f,
	};
	unsigned char bad[sizeof(full)];
	const unsigned char *tok = NULL;
	size_t len = 0;
	int st = 9;

	(void)state;
	assert_int_equal(s4u_spnego_unwrap(full, sizeof(full), &tok, &len, &st), 0);
	assert_int_equal(st, 0);
	assert_int_equal(len, 4);
	assert_ptr_equal(tok, full + sizeof(full) - 4);

	assert_int_equal(s4u_spnego_unwrap(bare, sizeof(bare), &tok, &len, &st), 0);
	assert_null(tok);
	assert_int_equal(len, 0);
	assert_int_equal(st, 0);

	assert_int_equal(s4u_spnego_unwrap(longform, sizeof(longform), &tok, &len, &st), 0);
	assert_int_equal(st, -1);
	assert_int_equal(len, 1);
	assert_int_equal(tok[0], 0x7f);

	/* every truncation is refused, never read past the end */
	for (size_t n = 0; n < sizeof(full); n++)
		assert_int_equal(s4u_spnego_unwrap(full, n, &tok, &len, &st), -1);
	/* a wrong outer tag, a field of the wrong type, fields out of
	 * order, a negState out of range, a length that overflows its
	 * container, trailing bytes */
	memcpy(bad, full, sizeof(full));
	bad[0] = 0xa0;
	assert_int_equal(s4u_spnego_unwrap(bad, sizeof(bad), &tok, &len, &st), -1);
	memcpy(bad, full, sizeof(full));
	bad[4] = 0xa2;		/* [2] holding an ENUMERATED */
	assert_int_equal(s4u_spnego_unwrap(bad, sizeof(bad), &tok, &len, &st), -1);
	{
		static const unsigned char order[] = {	/* [2] before [0] */
			0xa1, 0x0c, 0x30, 0x0a, 0xa2, 0x03, 0x04, 0x01, 0x7f,
			0xa0, 0x03, 0x0a, 0x01, 0x00,
		};
		assert_int_equal(s4u_spnego_unwrap(order, sizeof(order), &tok, &len, &st), -1);
	}
	memcpy(bad, full, sizeof(full));
	bad[8] = 4;
	assert_int_equal(s4u_spnego_unwrap(bad, sizeof(bad), &tok, &len, &st), -1);
	memcpy(bad, full, sizeof(full));
	bad[25] = 0x05;		/* the OCTET STRING claims one byte more */
	assert_int_equal(s4u_spnego_unwrap(bad, sizeof(bad), &tok, &len, &st), -1);
	{
		unsigned char extra[sizeof(full) + 1];
		memcpy(extra, full, sizeof(full));
		extra[sizeof(full)] = 0;
		assert_int_equal(s4u_spnego_unwrap(extra, sizeof(extra), &tok, &len, &st), -1);
	}
}

/* ---- the asynchronous machinery --------------------------------------------------- */

struct world {
	struct krb5test_dir d;
	int udp, tcp;			/* the "KDC" sockets, -1 when none */
	struct event_base *base;
	struct s4u *s;
};

struct answers {
	unsigned n;
	int in_call;			/* inside s4u_token_request */
	int called_in_call;
	struct {
		int ok, kdc, exchange;
		enum kcd_err_class cls;
		char name[KCD_NAME_MAX];
		char text[KCD_TEXT_MAX];
	} a[16];
};

static void
on_answer(const struct s4u_result *res, void *arg)
{
	struct answers *ans = arg;

	if (ans->in_call)
		ans->called_in_call = 1;
	if (ans->n < 16) {
		ans->a[ans->n].ok = res->ok;
		ans->a[ans->n].kdc = res->kdc;
		ans->a[ans->n].exchange = res->exchange;
		ans->a[ans->n].cls = res->cls;
		snprintf(ans->a[ans->n].name, KCD_NAME_MAX, "%s", res->ok ? "" : res->name);
		snprintf(ans->a[ans->n].text, KCD_TEXT_MAX, "%s", res->ok ? "" : res->text);
	}
	ans->n++;
}

/* A KDC address: closed (connections refused) or a black hole (UDP bound
 * and never read, TCP listening and never accepting). The port must be free
 * for both UDP and TCP: another process may hold the TCP one, so retry. */
static int
kdc_port(struct world *w, int blackhole)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	int one = 1;

	for (int tries = 0; tries < 100; tries++) {
		memset(&sa, 0, sizeof(sa));
		sa.sin_family = AF_INET;
		sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		w->udp = socket(AF_INET, SOCK_DGRAM, 0);
		assert_true(w->udp >= 0);
		assert_int_equal(bind(w->udp, (struct sockaddr *)&sa, sizeof(sa)), 0);
		assert_int_equal(getsockname(w->udp, (struct sockaddr *)&sa, &len), 0);
		w->tcp = socket(AF_INET, SOCK_STREAM, 0);
		assert_true(w->tcp >= 0);
		setsockopt(w->tcp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(w->tcp, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
			close(w->udp);
			close(w->tcp);
			w->udp = w->tcp = -1;
			continue;
		}
		if (blackhole) {
			assert_int_equal(listen(w->tcp, 16), 0);
		} else {
			close(w->udp);
			close(w->tcp);
			w->udp = w->tcp = -1;
		}
		return ntohs(sa.sin_port);
	}
	fail_msg("no port free for both UDP and TCP on 127.0.0.1");
	return -1;
}

/* The world of the running test; the teardown removes it even when an
 * assertion ended the test early. */
static struct world *current;

static void
world_up(struct world *w, int blackhole, int with_keytab, unsigned threads, uint64_t timeout_ms)
{
	struct s4u_params p = {
		.credential_ttl_ms = 600000, .negative_ttl_ms = 30000,
		.kdc_timeout_ms = timeout_ms, .kdc_concurrency = threads,
	};
	char err[256];
	int port;

	memset(w, 0, sizeof(*w));
	w->udp = w->tcp = -1;
	krb5test_dir_make(&w->d, "test_s4u");
	current = w;
	port = kdc_port(w, blackhole);
	krb5test_write_conf(w->d.krb5_conf, port);
	if (with_keytab)
		krb5test_make_keytab(w->d.keytab, PROXY);
	assert_int_equal(s4u_env_init(w->d.krb5_conf, err, sizeof(err)), 0);
	assert_non_null(w->base = event_base_new());
	p.keytab = w->d.keytab;
	p.principal = PROXY;
	w->s = s4u_new(w->base, &p, err, sizeof(err));
	if (w->s == NULL)
		fail_msg("s4u_new: %s", err);
}

static void
world_down(struct world *w)
{
	current = NULL;
	if (w->udp >= 0)
		close(w->udp);
	if (w->tcp >= 0)
		close(w->tcp);
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

static void
ask(struct world *w, const char *user, struct answers *ans)
{
	struct s4u_error err;

	ans->in_call = 1;
	assert_int_equal(s4u_token_request(w->s, user, SPN, NULL, 0, 0, on_answer, ans, &err), 0);
	ans->in_call = 0;
}

static void
run_until(struct world *w, struct answers *ans, unsigned n)
{
	while (ans->n < n)
		assert_true(event_base_loop(w->base, EVLOOP_ONCE) >= 0);
}

/* ---- the fast path's encodings (RFC 4121 4.1.1, RFC 2743 3.1) ---------------- */

static void
hex_to(const char *hex, unsigned char *out, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned v;
		assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
		out[i] = (unsigned char)v;
	}
}

static void
test_channel_binding_hash_is_md5_of_the_rfc4121_layout(void **state)
{
	unsigned char app[21 + 32], bnd[16], want[16];

	(void)state;
	/* Expected values computed independently (Python hashlib) over RFC
	 * 4121 4.1.1.2's layout: four 32-bit little-endian zeros (address
	 * types and lengths, GSS_C_AF_UNSPEC), the application data's length
	 * (little-endian), the application data. */
	memcpy(app, "tls-server-end-point:", 21);
	for (unsigned i = 0; i < 32; i++)
		app[21 + i] = (unsigned char)i;
	assert_int_equal(s4u_cb_md5(app, sizeof(app), bnd), 0);
	hex_to("8f1214c9c9cab8dc3bf866da9aba57a7", want, 16);
	assert_memory_equal(bnd, want, 16);
	assert_int_equal(s4u_cb_md5(app, 21, bnd), 0);
	hex_to("2ea6e9ae9674d953e9d23afaf703e260", want, 16);
	assert_memory_equal(bnd, want, 16);
	/* no bindings: Bnd is all zeros */
	memset(want, 0, sizeof(want));
	memset(bnd, 0xaa, sizeof(bnd));
	assert_int_equal(s4u_cb_md5(NULL, 0, bnd), 0);
	assert_memory_equal(bnd, want, 16);
	/* more than any tls-server-end-point binding can be */
	assert_int_equal(s4u_cb_md5(app, 4096, bnd), -1);
}

static void
test_checksum_carries_bnd_and_mits_context_flags(void **state)
{
	unsigned char bnd[16], out[S4U_GSS_CKSUM_LEN];
	static const unsigned char want_mutual[S4U_GSS_CKSUM_LEN] = {
		0x10, 0x00, 0x00, 0x00,				/* Lgth = 16 */
		0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07,
		0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,	/* Bnd */
		0x32, 0x01, 0x00, 0x00,				/* MUTUAL|CONF|INTEG|TRANS */
	};

	(void)state;
	/* GSS_C_MUTUAL_FLAG 2, CONF 16, INTEG 32, TRANS 256 (RFC 2744) */
	assert_int_equal(s4u_gss_flags(KCD_F_MUTUAL), 0x132);
	assert_int_equal(s4u_gss_flags(0), 0x130);
	assert_int_equal(s4u_gss_flags(KCD_F_REFRESH), 0x130);
	assert_int_equal(s4u_gss_flags(KCD_F_MUTUAL | KCD_F_REFRESH), 0x132);
	for (unsigned i = 0; i < 16; i++)
		bnd[i] = (unsigned char)i;
	s4u_gss_checksum(bnd, s4u_gss_flags(KCD_F_MUTUAL), out);
	assert_memory_equal(out, want_mutual, sizeof(out));
	s4u_gss_checksum(bnd, s4u_gss_flags(0), out);
	assert_int_equal(out[20], 0x30);
	assert_int_equal(out[21], 0x01);
}

static void
test_tokens_are_framed_and_unframed_as_rfc2743_says(void **state)
{
	static const unsigned char oid[] = {
		0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02
	};
	unsigned char msg[300], out[400], bad[400];
	const unsigned char *m;
	size_t n, mlen;
	unsigned id;

	(void)state;
	/* short form: 11 (OID) + 2 (TOK_ID) + 5 = 18 = 0x12 */
	memcpy(msg, "\x6e\x03\x01\x02\x03", 5);
	n = s4u_token_frame(S4U_TOK_AP_REQ, msg, 5, out, sizeof(out));
	assert_int_equal(n, 20);
	assert_int_equal(out[0], 0x60);
	assert_int_equal(out[1], 0x12);
	assert_memory_equal(out + 2, oid, sizeof(oid));
	assert_int_equal(out[13], 0x01);
	assert_int_equal(out[14], 0x00);
	assert_memory_equal(out + 15, msg, 5);
	assert_int_equal(s4u_token_unframe(out, n, &id, &m, &mlen), 0);
	assert_int_equal(id, S4U_TOK_AP_REQ);
	assert_int_equal(mlen, 5);
	assert_ptr_equal(m, out + 15);
	/* 0x81 xx for 128..255, 0x82 xx xx from 256 */
	memset(msg, 0x5a, sizeof(msg));
	n = s4u_token_frame(S4U_TOK_AP_REP, msg, 200, out, sizeof(out));
	assert_int_equal(n, 3 + 213);
	assert_int_equal(out[1], 0x81);
	assert_int_equal(out[2], 213);
	assert_int_equal(out[14], 0x02);
	assert_int_equal(s4u_token_unframe(out, n, &id, &m, &mlen), 0);
	assert_int_equal(id, S4U_TOK_AP_REP);
	assert_int_equal(mlen, 200);
	n = s4u_token_frame(S4U_TOK_ERROR, msg, 300, out, sizeof(out));
	assert_int_equal(n, 4 + 313);
	assert_int_equal(out[1], 0x82);
	assert_int_equal(out[2], 313 >> 8);
	assert_int_equal(out[3], 313 & 0xff);
	assert_int_equal(s4u_token_unframe(out, n, &id, &m, &mlen), 0);
	assert_int_equal(id, S4U_TOK_ERROR);
	assert_int_equal(mlen, 300);
	/* too small an output buffer */
	assert_int_equal(s4u_token_frame(S4U_TOK_AP_REQ, msg, 300, out, 316), 0);

	/* refused: trailing or missing bytes, another tag, another mech's
	 * OID, no room for the TOK_ID, a non-minimal length */
	n = s4u_token_frame(S4U_TOK_AP_REP, msg, 5, out, sizeof(out));
	memcpy(bad, out, n);
	bad[n] = 0;
	assert_int_equal(s4u_token_unframe(bad, n + 1, &id, &m, &mlen), -1);
	assert_int_equal(s4u_token_unframe(out, n - 1, &id, &m, &mlen), -1);
	memcpy(bad, out, n);
	bad[0] = 0x30;
	assert_int_equal(s4u_token_unframe(bad, n, &id, &m, &mlen), -1);
	memcpy(bad, out, n);
	bad[12] = 0x03;			/* 1.2.840.113554.1.2.3 */
	assert_int_equal(s4u_token_unframe(bad, n, &id, &m, &mlen), -1);
	bad[0] = 0x60;
	bad[1] = 0x0c;			/* the OID and one byte */
	memcpy(bad + 2, oid, sizeof(oid));
	bad[13] = 0x02;
	assert_int_equal(s4u_token_unframe(bad, 14, &id, &m, &mlen), -1);
	bad[0] = 0x60;
	bad[1] = 0x81;			/* long form for 18 */
	bad[2] = 0x12;
	memcpy(bad + 3, out + 2, n - 2);
	assert_int_equal(s4u_token_unframe(bad, n + 1, &id, &m, &mlen), -1);
	assert_int_equal(s4u_token_unframe(NULL, 0, &id, &m, &mlen), -1);
	assert_int_equal(s4u_token_unframe(out, 0, &id, &m, &mlen), -1);
}

static void
test_invalid_requests_are_refused_synchronously(void **state)
{
	static const char *bad[] = {
		"alice", "@EXAMPLE.TEST", "alice@", "a/b@EXAMPLE.TEST", "a\\@b@EXAMPLE.TEST",
		"al ice@EXAMPLE.TEST", "a@b@EXAMPLE.TEST", "alice\n@EXAMPLE.TEST", "",
	};
	static struct world w;	/* outlives an early end (teardown) */
	struct answers ans;
	struct s4u_error err;
	char longname[KCD_PRINCIPAL_MAX + 8];
	unsigned char cb[KCD_CB_MAX + 1] = { 0 };

	(void)state;
	world_up(&w, 0, 0, 1, 2000);
	memset(&ans, 0, sizeof(ans));
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(s4u_token_request(w.s, bad[i], SPN, NULL, 0, 0, on_answer, &ans, &err), -1);
		assert_string_equal(err.name, "BAD_PRINCIPAL");
	}
	memset(longname, 'a', sizeof(longname));
	memcpy(longname + KCD_PRINCIPAL_MAX - 10, "@EXAMPLE.TEST", 14);
	assert_int_equal(s4u_token_request(w.s, longname, SPN, NULL, 0, 0, on_answer, &ans, &err), -1);
	assert_int_equal(s4u_token_request(w.s, "alice@EXAMPLE.TEST", "HTTP/exchange", NULL, 0, 0,
	    on_answer, &ans, &err), -1);
	assert_string_equal(err.name, "BAD_SPN");
	assert_int_equal(s4u_token_request(w.s, "alice@EXAMPLE.TEST", SPN, cb, sizeof(cb), 0,
	    on_answer, &ans, &err), -1);
	assert_string_equal(err.name, "BAD_CB");
	assert_int_equal(ans.n, 0);
	/* the synchronous fast path refuses the same arguments, and has
	 * nothing to answer from an empty cache (no state changed) */
	{
		struct s4u_result res;
		struct s4u_stats st;

		assert_int_equal(s4u_token_now(w.s, bad[0], SPN, NULL, 0, 0, &res, &err), -1);
		assert_string_equal(err.name, "BAD_PRINCIPAL");
		assert_int_equal(s4u_token_now(w.s, "alice@EXAMPLE.TEST", "HTTP/exchange", NULL, 0,
		    0, &res, &err), -1);
		assert_string_equal(err.name, "BAD_SPN");
		assert_int_equal(s4u_token_now(w.s, "alice@EXAMPLE.TEST", SPN, cb, sizeof(cb), 0,
		    &res, &err), -1);
		assert_string_equal(err.name, "BAD_CB");
		assert_int_equal(s4u_token_now(w.s, "alice@EXAMPLE.TEST", SPN, NULL, 0,
		    KCD_F_MUTUAL, &res, &err), 0);
		s4u_stats(w.s, &st);
		assert_int_equal(st.requests, 0);
		assert_int_equal(st.entries, 0);
		assert_int_equal(st.tokens_fast, 0);
	}
	/* an unknown context fails cleanly */
	assert_int_equal(s4u_verify_mutual(w.s, 12345, "YWJj", &err), -1);
	assert_string_equal(err.name, "NO_CONTEXT");
	s4u_ctx_release(w.s, 12345);
	world_down(&w);
}

static void
test_missing_keytab_is_a_cached_proxy_refusal(void **state)
{
	static struct world w;	/* outlives an early end (teardown) */
	struct answers ans;
	struct s4u_stats st;

	(void)state;
	world_up(&w, 0, 0, 2, 5000);
	memset(&ans, 0, sizeof(ans));
	ask(&w, "alice@EXAMPLE.TEST", &ans);
	assert_int_equal(ans.n, 0);		/* never from inside the call */
	run_until(&w, &ans, 1);
	assert_false(ans.a[0].ok);
	assert_int_equal(ans.a[0].cls, KCD_ERR_PROXY);
	if (strstr(ans.a[0].text, "hint:") == NULL || strstr(ans.a[0].text, w.d.keytab) == NULL)
		fail_msg("expected the keytab path and a hint in: %s", ans.a[0].text);

	ask(&w, "alice@EXAMPLE.TEST", &ans);
	run_until(&w, &ans, 2);
	assert_false(ans.called_in_call);
	assert_string_equal(ans.a[1].name, ans.a[0].name);
	assert_non_null(strstr(ans.a[1].text, "cached refusal"));
	assert_true(ans.a[0].kdc && ans.a[0].exchange);
	assert_false(ans.a[1].kdc || ans.a[1].exchange);
	s4u_stats(w.s, &st);
	assert_int_equal(st.negative_hits, 1);
	assert_int_equal(st.errors_proxy, 2);
	world_down(&w);
}

static void
test_unreachable_kdc_is_never_cached(void **state)
{
	static struct world w;	/* outlives an early end (teardown) */
	struct answers ans;
	struct s4u_stats st;

	(void)state;
	world_up(&w, 0, 1, 2, 5000);
	memset(&ans, 0, sizeof(ans));
	ask(&w, "bob@EXAMPLE.TEST", &ans);
	ask(&w, "bob@EXAMPLE.TEST", &ans);	/* joins the first exchange */
	run_until(&w, &ans, 2);
	for (unsigned i = 0; i < 2; i++) {
		assert_int_equal(ans.a[i].cls, KCD_ERR_UNREACHABLE);
		assert_string_equal(ans.a[i].name, "KDC_UNREACH");
		assert_true(ans.a[i].kdc);	/* both waited for the KDC */
	}
	/* one ran the exchange (the leader), the other shared it */
	assert_int_equal(ans.a[0].exchange + ans.a[1].exchange, 1);
	ask(&w, "bob@EXAMPLE.TEST", &ans);	/* tries the KDC again */
	run_until(&w, &ans, 3);
	assert_string_equal(ans.a[2].name, "KDC_UNREACH");
	assert_null(strstr(ans.a[2].text, "cached"));
	s4u_stats(w.s, &st);
	assert_int_equal(st.waits, 1);
	assert_int_equal(st.negative_hits, 0);
	assert_int_equal(st.errors_unreachable, 3);
	world_down(&w);
}

static void
test_silent_kdc_times_out_on_the_loop(void **state)
{
	static struct world w;	/* outlives an early end (teardown) */
	struct answers ans;
	struct s4u_stats st;

	(void)state;
	/* one thread, a KDC that never answers, kdc_timeout 300 ms */
	world_up(&w, 1, 1, 1, 300);
	memset(&ans, 0, sizeof(ans));
	ask(&w, "carol@EXAMPLE.TEST", &ans);	/* takes the only thread */
	ask(&w, "carol@EXAMPLE.TEST", &ans);	/* waits behind it (single flight) */
	ask(&w, "dave@EXAMPLE.TEST", &ans);	/* queued for the thread */
	run_until(&w, &ans, 3);
	for (unsigned i = 0; i < 3; i++) {
		assert_int_equal(ans.a[i].cls, KCD_ERR_UNREACHABLE);
		assert_string_equal(ans.a[i].name, "TIMEOUT");
	}
	/* carol's running exchange took kdc_timeout from its start; the two
	 * waiting requests were answered when their wait bound (default
	 * S4U_QUEUE_FACTOR x kdc_timeout, s4u.h) ended, not at kdc_timeout */
	assert_non_null(strstr(ans.a[0].text, "within kdc_timeout (300 ms)"));
	assert_non_null(strstr(ans.a[0].text, "still running"));
	assert_non_null(strstr(ans.a[1].text, "within 1800 ms (the wait bound)"));
	assert_non_null(strstr(ans.a[1].text, "earlier request for this user"));
	assert_non_null(strstr(ans.a[2].text, "within 1800 ms (the wait bound)"));
	assert_non_null(strstr(ans.a[2].text, "free KDC slot"));
	s4u_stats(w.s, &st);
	assert_int_equal(st.timeouts, 3);
	assert_int_equal(st.in_flight, 3);	/* carol's exchange still runs */

	/* The "KDC" goes away: libkrb5 gives up on its next try; dave's job,
	 * answered already, then finds itself given up and never asks the KDC. */
	close(w.udp);
	close(w.tcp);
	w.udp = w.tcp = -1;
	while (s4u_stats(w.s, &st), st.in_flight > 0)
		assert_true(event_base_loop(w.base, EVLOOP_ONCE) >= 0);
	assert_int_equal(st.expired_in_queue, 1);
	assert_int_equal(ans.n, 3);		/* no second answer for anyone */
	world_down(&w);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_user_refusals_are_user_class_at_user_steps),
		cmocka_unit_test(test_proxy_refusals_are_proxy_class_with_a_hint),
		cmocka_unit_test(test_unreachable_at_every_step),
		cmocka_unit_test(test_unknown_codes_get_stable_names),
		cmocka_unit_test(test_badoption_is_told_apart_by_the_evidence_ticket),
		cmocka_unit_test(test_spnego_reply_is_unwrapped_to_its_response_token),
		cmocka_unit_test(test_channel_binding_hash_is_md5_of_the_rfc4121_layout),
		cmocka_unit_test(test_checksum_carries_bnd_and_mits_context_flags),
		cmocka_unit_test(test_tokens_are_framed_and_unframed_as_rfc2743_says),
		cmocka_unit_test_teardown(test_invalid_requests_are_refused_synchronously, teardown),
		cmocka_unit_test_teardown(test_missing_keytab_is_a_cached_proxy_refusal, teardown),
		cmocka_unit_test_teardown(test_unreachable_kdc_is_never_cached, teardown),
		cmocka_unit_test_teardown(test_silent_kdc_times_out_on_the_loop, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
