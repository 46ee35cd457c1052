/*
 * test_tls.c — tls.c: the device-side context and its refusals (SPEC §5),
 * the backend-side context, tls-server-end-point (SPEC §6).
 *
 * Every certificate, key and CRL is made here with OpenSSL's APIs and
 * written to a temporary directory, because the contexts load files. Real
 * handshakes run between an OpenSSL client and an SSL from the context
 * under test over a BIO pair, driven step by step. The OpenSSL error queue
 * is per thread and both ends share it here, so every client step is
 * wrapped in ERR_set_mark/ERR_pop_to_mark: what is left is the server's,
 * as it would be in the proxy. Several tests also drain the queue before
 * asking for the reason, as bufferevent_openssl does in stream.c.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "certgen.h"
#include "config.h"
#include "identity.h"
#include "reason.h"
#include "tls.h"

/* ---- fixture ------------------------------------------------------------ */

static struct {
	char dir[64];
	EVP_PKEY *ca_key, *other_key, *impostor_key, *int_key, *leaf_key;
	X509 *ca, *other_ca, *impostor_ca, *int_ca;
	X509 *server, *good, *expired, *notyet, *noeku, *srveku, *revoked, *wrongca,
	    *impostor, *impostor_noakid, *int_leaf, *int_leaf_revoked;
	char ca_pem[128], server_pem[128], server_key[128], other_key_pem[128],
	    crl_pem[128], crl_der[128], crl_multi[128], crl_expired[128], crl_bad[128],
	    crl_int[128], crl_int_root[128], garbage[128], missing[128];
} g;

static void
path(char *out, const char *name)
{
	snprintf(out, 128, "%s/%s", g.dir, name);
}

static int
group_setup(void **state)
{
	long rev[] = { 666 }, rev_int[] = { 777 };
	X509_CRL *crl, *crl_other, *crl_old, *crl_i, *crl_root_empty;

	(void)state;
	snprintf(g.dir, sizeof(g.dir), "/tmp/test_tls.XXXXXX");
	assert_non_null(mkdtemp(g.dir));
	g.ca_key = mkkey_ec("P-256");
	g.other_key = mkkey_ec("P-256");
	g.impostor_key = mkkey_ec("P-256");
	g.int_key = mkkey_ec("P-256");
	g.leaf_key = mkkey_ec("P-256");

	g.ca = mkcert(&(struct certopt){ .cn = "Device CA", .key = g.ca_key,
	    .not_before = -DAY, .not_after = 3650 * DAY, .ca = 1, .serial = 100 });
	g.other_ca = mkcert(&(struct certopt){ .cn = "Other CA", .key = g.other_key,
	    .not_before = -DAY, .not_after = 3650 * DAY, .ca = 1, .serial = 101 });
	/* same DN as the real CA, another key */
	g.impostor_ca = mkcert(&(struct certopt){ .cn = "Device CA", .key = g.impostor_key,
	    .not_before = -DAY, .not_after = 3650 * DAY, .ca = 1, .serial = 100 });
	g.int_ca = mkcert(&(struct certopt){ .cn = "Device Issuing CA", .key = g.int_key,
	    .issuer = g.ca, .issuer_key = g.ca_key, .not_before = -DAY,
	    .not_after = 3000 * DAY, .ca = 1, .serial = 102, .eku = "clientAuth" });

#define LEAF(field, cn_, serial_, nb, na, eku_, iss, isskey, ...) \
	g.field = mkcert(&(struct certopt){ .cn = cn_, .key = g.leaf_key, .issuer = iss, \
	    .issuer_key = isskey, .not_before = nb, .not_after = na, .eku = eku_, \
	    .serial = serial_, __VA_ARGS__ })
	LEAF(server, "proxy.example.test", 2, -DAY, 365 * DAY, "serverAuth", g.ca, g.ca_key,
	    .san = "DNS:proxy.example.test");
	LEAF(good, "alice", 10, -DAY, 365 * DAY, "clientAuth", g.ca, g.ca_key,
	    .san = "otherName:1.3.6.1.4.1.311.20.2.3;UTF8:alice@example.test");
	LEAF(expired, "bob-expired", 11, -30 * DAY, -DAY, "clientAuth", g.ca, g.ca_key);
	LEAF(notyet, "carol-future", 12, DAY, 365 * DAY, "clientAuth", g.ca, g.ca_key);
	LEAF(noeku, "dave-noeku", 13, -DAY, 365 * DAY, NULL, g.ca, g.ca_key);
	LEAF(srveku, "erin-server-eku", 14, -DAY, 365 * DAY, "serverAuth", g.ca, g.ca_key);
	LEAF(revoked, "frank-revoked", 666, -DAY, 365 * DAY, "clientAuth", g.ca, g.ca_key);
	LEAF(wrongca, "grace-other-ca", 15, -DAY, 365 * DAY, "clientAuth", g.other_ca, g.other_key);
	LEAF(impostor, "mallory", 16, -DAY, 365 * DAY, "clientAuth", g.impostor_ca, g.impostor_key);
	LEAF(impostor_noakid, "mallory2", 17, -DAY, 365 * DAY, "clientAuth", g.impostor_ca,
	    g.impostor_key, .no_akid = 1);
	LEAF(int_leaf, "heidi-int", 20, -DAY, 365 * DAY, "clientAuth", g.int_ca, g.int_key);
	LEAF(int_leaf_revoked, "ivan-int-revoked", 777, -DAY, 365 * DAY, "clientAuth", g.int_ca,
	    g.int_key);
#undef LEAF

	path(g.ca_pem, "device-ca.pem");
	write_certs(g.ca_pem, g.ca, NULL);
	path(g.server_pem, "server.pem");
	write_certs(g.server_pem, g.server, g.ca);
	path(g.server_key, "server.key");
	write_key(g.server_key, g.leaf_key);
	path(g.other_key_pem, "other.key");
	write_key(g.other_key_pem, g.other_key);

	crl = mkcrl(g.ca, g.ca_key, -3600, 7 * DAY, rev, 1);
	crl_other = mkcrl(g.other_ca, g.other_key, -3600, 7 * DAY, NULL, 0);
	crl_old = mkcrl(g.ca, g.ca_key, -10 * DAY, -DAY, rev, 1);
	crl_i = mkcrl(g.int_ca, g.int_key, -3600, 7 * DAY, rev_int, 1);
	crl_root_empty = mkcrl(g.ca, g.ca_key, -3600, 7 * DAY, NULL, 0);
	path(g.crl_pem, "ca.crl.pem");
	write_crls(g.crl_pem, 0, crl, NULL);
	path(g.crl_der, "ca.crl");
	write_crls(g.crl_der, 1, crl, NULL);
	path(g.crl_multi, "multi.crl.pem");
	write_crls(g.crl_multi, 0, crl_other, crl);
	path(g.crl_expired, "old.crl.pem");
	write_crls(g.crl_expired, 0, crl_old, NULL);
	path(g.crl_int, "int.crl.der");
	write_crls(g.crl_int, 1, crl_root_empty, crl_i);	/* two DER CRLs, one file */
	path(g.crl_int_root, "root-empty.crl.pem");
	write_crls(g.crl_int_root, 0, crl_root_empty, NULL);
	path(g.crl_bad, "bad.crl.pem");
	write_text(g.crl_bad, "-----BEGIN X509 CRL-----\nthis is not base64 !!\n-----END X509 CRL-----\n");
	path(g.garbage, "garbage.pem");
	write_text(g.garbage, "not a key\n");
	path(g.missing, "does-not-exist.pem");
	X509_CRL_free(crl);
	X509_CRL_free(crl_other);
	X509_CRL_free(crl_old);
	X509_CRL_free(crl_i);
	X509_CRL_free(crl_root_empty);
	return 0;
}

static int
group_teardown(void **state)
{
	char cmd[128];

	(void)state;
	X509 **certs[] = { &g.ca, &g.other_ca, &g.impostor_ca, &g.int_ca, &g.server, &g.good,
	    &g.expired, &g.notyet, &g.noeku, &g.srveku, &g.revoked, &g.wrongca, &g.impostor,
	    &g.impostor_noakid, &g.int_leaf, &g.int_leaf_revoked };
	for (size_t i = 0; i < sizeof(certs) / sizeof(certs[0]); i++)
		X509_free(*certs[i]);
	EVP_PKEY_free(g.ca_key);
	EVP_PKEY_free(g.other_key);
	EVP_PKEY_free(g.impostor_key);
	EVP_PKEY_free(g.int_key);
	EVP_PKEY_free(g.leaf_key);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g.dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", g.dir);
	return 0;
}

/* A [tls] section as config.c would leave it with these files. */
static struct config *
cfg_new(void)
{
	struct config *c = calloc(1, sizeof(*c));

	assert_non_null(c);
	c->tls.certificate = g.server_pem;
	c->tls.key = g.server_key;
	c->tls.client_ca = g.ca_pem;
	c->tls.verify_depth = 4;
	c->tls.min_version = TLS1_2_VERSION;
	c->tls.require_client_auth_eku = 1;
	return c;
}

static SSL_CTX *
front_ctx(struct config *c)
{
	char err[1024] = "";
	SSL_CTX *ctx = tls_front_ctx_new(c, err, sizeof(err));

	if (ctx == NULL)
		fail_msg("tls_front_ctx_new: %s", err);
	free(c);
	return ctx;
}

static SSL_CTX *
front_ctx_crl(const char *crl1, const char *crl2)
{
	struct config *c = cfg_new();

	c->tls.crl.v[c->tls.crl.n++] = (char *)crl1;
	if (crl2)
		c->tls.crl.v[c->tls.crl.n++] = (char *)crl2;
	return front_ctx(c);
}

/* ---- handshake driver ---------------------------------------------------- */

static int client_alert;	/* fatal alert the client received, -1 none */

static void
client_info_cb(const SSL *ssl, int where, int ret)
{
	(void)ssl;
	if ((where & SSL_CB_READ_ALERT) && (ret >> 8) == SSL3_AL_FATAL && client_alert < 0)
		client_alert = ret & 0xff;
}

struct client_opt {
	X509 *cert;		/* NULL: no certificate */
	X509 *chain;		/* an intermediate to send along */
	int max_version;	/* 0: any */
	int min_version;
	const unsigned char *alpn;
	unsigned alpn_len;
	const char *sni;
	SSL_SESSION *session;
};

static SSL_CTX *
client_ctx(const struct client_opt *o)
{
	SSL_CTX *c = SSL_CTX_new(TLS_client_method());

	assert_non_null(c);
	SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
	assert_int_equal(SSL_CTX_load_verify_locations(c, g.ca_pem, NULL), 1);
	SSL_CTX_set_info_callback(c, client_info_cb);
	if (o->min_version)
		assert_int_equal(SSL_CTX_set_min_proto_version(c, o->min_version), 1);
	if (o->max_version)
		assert_int_equal(SSL_CTX_set_max_proto_version(c, o->max_version), 1);
	if (o->max_version && o->max_version < TLS1_2_VERSION)
		assert_int_equal(SSL_CTX_set_cipher_list(c, "DEFAULT:@SECLEVEL=0"), 1);
	return c;
}

struct conn {
	SSL_CTX *cctx;
	SSL *c, *s;
	int c_done, s_done;	/* 1 established, -1 failed */
};

/* One step of the client, its errors kept apart from the server's. */
static void
client_step(struct conn *k)
{
	char buf[64];
	int r;

	ERR_set_mark();
	if (k->c_done == 0) {
		r = SSL_do_handshake(k->c);
		if (r == 1)
			k->c_done = 1;
		else if (SSL_get_error(k->c, r) != SSL_ERROR_WANT_READ &&
		    SSL_get_error(k->c, r) != SSL_ERROR_WANT_WRITE)
			k->c_done = -1;
	}
	if (k->c_done == 1) {
		/* tickets and alerts arrive after the client's Finished */
		r = SSL_read(k->c, buf, sizeof(buf));
		if (r <= 0 && SSL_get_error(k->c, r) != SSL_ERROR_WANT_READ)
			k->c_done = -1;
	}
	ERR_pop_to_mark();
}

static void
server_step(struct conn *k)
{
	int r;

	if (k->s_done != 0)
		return;
	r = SSL_do_handshake(k->s);
	if (r == 1)
		k->s_done = 1;
	else if (SSL_get_error(k->s, r) != SSL_ERROR_WANT_READ &&
	    SSL_get_error(k->s, r) != SSL_ERROR_WANT_WRITE)
		k->s_done = -1;
}

/* Connect a client described by o to a fresh SSL of sctx and drive the
 * handshake to its end on both sides. */
static void
run(struct conn *k, SSL_CTX *sctx, const struct client_opt *o)
{
	BIO *bc = NULL, *bs = NULL;

	memset(k, 0, sizeof(*k));
	client_alert = -1;
	ERR_clear_error();
	k->cctx = client_ctx(o);
	k->c = SSL_new(k->cctx);
	k->s = SSL_new(sctx);
	assert_non_null(k->c);
	assert_non_null(k->s);
	assert_int_equal(BIO_new_bio_pair(&bc, 0, &bs, 0), 1);
	SSL_set_bio(k->c, bc, bc);
	SSL_set_bio(k->s, bs, bs);
	SSL_set_connect_state(k->c);
	SSL_set_accept_state(k->s);
	if (o->cert) {
		assert_int_equal(SSL_use_certificate(k->c, o->cert), 1);
		assert_int_equal(SSL_use_PrivateKey(k->c, g.leaf_key), 1);
		if (o->chain)
			assert_int_equal(SSL_add1_chain_cert(k->c, o->chain), 1);
	}
	if (o->alpn)
		assert_int_equal(SSL_set_alpn_protos(k->c, o->alpn, o->alpn_len), 0);
	if (o->sni)
		assert_int_equal(SSL_set_tlsext_host_name(k->c, o->sni), 1);
	if (o->session)
		assert_int_equal(SSL_set_session(k->c, o->session), 1);
	for (int i = 0; i < 50; i++) {
		client_step(k);
		server_step(k);
	}
	assert_int_not_equal(k->s_done, 0);
}

static void
conn_free(struct conn *k)
{
	SSL_free(k->c);
	SSL_free(k->s);
	SSL_CTX_free(k->cctx);
}

/* The handshake must fail with reason r; the client must have been told
 * with the alert (-1: any); detail must mention want. Checked twice: with
 * the server's error queue and with it drained (bufferevent_openssl). */
static void
expect_refusal(SSL_CTX *sctx, const struct client_opt *o, enum reason r, int alert,
    const char *want)
{
	struct conn k;
	char detail[512];

	for (int drained = 0; drained < 2; drained++) {
		run(&k, sctx, o);
		assert_int_equal(k.s_done, -1);
		assert_int_not_equal(k.c_done, 1);	/* no page for the device */
		assert_null(tls_peer_cert(k.s));
		if (alert >= 0 && client_alert != alert)
			fail_msg("client got alert %d, expected %d", client_alert, alert);
		if (drained)
			ERR_clear_error();
		enum reason got = tls_handshake_reason(k.s, detail, sizeof(detail));
		if (got != r)
			fail_msg("reason %s, expected %s (detail: %s)", reason_token(got),
			    reason_token(r), detail);
		if (want != NULL && strstr(detail, want) == NULL)
			fail_msg("detail '%s' lacks '%s'", detail, want);
		assert_int_equal(ERR_peek_error(), 0);	/* queue left clean */
		conn_free(&k);
	}
}

static void
expect_ok(SSL_CTX *sctx, const struct client_opt *o, X509 *want_peer)
{
	struct conn k;

	run(&k, sctx, o);
	if (k.s_done != 1) {
		char detail[512];

		tls_handshake_reason(k.s, detail, sizeof(detail));
		fail_msg("handshake refused: %s", detail);
	}
	assert_int_equal(k.c_done, 1);
	assert_non_null(tls_peer_cert(k.s));
	assert_int_equal(X509_cmp(tls_peer_cert(k.s), want_peer), 0);
	conn_free(&k);
}

/* ---- device side: good and refused certificates -------------------------- */

static void
good_certificate_is_accepted_and_yields_the_peer(void **state)
{
	SSL_CTX *s = front_ctx(cfg_new());
	struct conn k;
	X509 *issuer;

	(void)state;
	run(&k, s, &(struct client_opt){ .cert = g.good });
	assert_int_equal(k.s_done, 1);
	assert_int_equal(k.c_done, 1);
	assert_int_equal(X509_cmp(tls_peer_cert(k.s), g.good), 0);
	assert_int_equal(SSL_version(k.s), TLS1_3_VERSION);
	issuer = tls_peer_issuer(k.s);
	assert_non_null(issuer);
	assert_int_equal(X509_cmp(issuer, g.ca), 0);
	X509_free(issuer);
	conn_free(&k);
	/* TLS 1.2 as well */
	expect_ok(s, &(struct client_opt){ .cert = g.good, .max_version = TLS1_2_VERSION }, g.good);
	SSL_CTX_free(s);
}

static void
certificate_request_names_client_ca(void **state)
{
	SSL_CTX *s = front_ctx(cfg_new());
	STACK_OF(X509_NAME) *names = SSL_CTX_get_client_CA_list(s);

	(void)state;
	assert_int_equal(sk_X509_NAME_num(names), 1);
	assert_int_equal(X509_NAME_cmp(sk_X509_NAME_value(names, 0), X509_get_subject_name(g.ca)), 0);
	SSL_CTX_free(s);
}

static void
no_certificate_is_cert_missing(void **state)
{
	SSL_CTX *s = front_ctx(cfg_new());

	(void)state;
	expect_refusal(s, &(struct client_opt){ 0 }, REASON_CERT_MISSING,
	    SSL_AD_CERTIFICATE_REQUIRED, "no client certificate");
	expect_refusal(s, &(struct client_opt){ .max_version = TLS1_2_VERSION },
	    REASON_CERT_MISSING, SSL_AD_HANDSHAKE_FAILURE, "no client certificate");
	SSL_CTX_free(s);
}

static void
expired_and_not_yet_valid(void **state)
{
	SSL_CTX *s = front_ctx(cfg_new());

	(void)state;
	expect_refusal(s, &(struct client_opt){ .cert = g.expired }, REASON_CERT_EXPIRED,
	    SSL_AD_CERTIFICATE_EXPIRED, "depth 0: certificate has expired (subject CN=bob-expired,O=Example");
	expect_refusal(s, &(struct client_opt){ .cert = g.expired, .max_version = TLS1_2_VERSION },
	    REASON_CERT_EXPIRED, SSL_AD_CERTIFICATE_EXPIRED, "serial 0B");
	expect_refusal(s, &(struct client_opt){ .cert = g.notyet }, REASON_CERT_NOT_YET_VALID,
	    -1, "certificate is not yet valid");
	SSL_CTX_free(s);
}

static void
other_ca_and_impostor_ca_are_untrusted(void **state)
{
	SSL_CTX *s = front_ctx(cfg_new());

	(void)state;
	expect_refusal(s, &(struct client_opt){ .cert = g.wrongca }, REASON_CERT_UNTRUSTED,
	    SSL_AD_UNKNOWN_CA, "issuer CN=Other CA");
	/* same issuer DN as the real CA, signed by another key: with an AKID
	 * the real CA is not even a candidate, without one its signature
	 * check fails; both are untrusted */
	expect_refusal(s, &(struct client_opt){ .cert = g.impostor }, REASON_CERT_UNTRUSTED,
	    -1, "subject CN=mallory,");
	expect_refusal(s, &(struct client_opt){ .cert = g.impostor_noakid }, REASON_CERT_UNTRUSTED,
	    -1, "signature");
	/* sending the impostor CA along does not help */
	expect_refusal(s, &(struct client_opt){ .cert = g.impostor, .chain = g.impostor_ca },
	    REASON_CERT_UNTRUSTED, -1, "self-signed certificate in certificate chain");
	SSL_CTX_free(s);
}

static void
eku_required_refuses_missing_and_wrong_eku(void **state)
{
	SSL_CTX *s = front_ctx(cfg_new());
	struct config *c = cfg_new();
	SSL_CTX *lax;

	(void)state;
	expect_refusal(s, &(struct client_opt){ .cert = g.noeku }, REASON_CERT_BAD_EKU, -1,
	    "unsuitable certificate purpose (subject CN=dave-noeku");
	expect_refusal(s, &(struct client_opt){ .cert = g.srveku }, REASON_CERT_BAD_EKU, -1,
	    "unsuitable certificate purpose");
	/* require_client_auth_eku = no: no purpose check at all */
	c->tls.require_client_auth_eku = 0;
	lax = front_ctx(c);
	expect_ok(lax, &(struct client_opt){ .cert = g.noeku }, g.noeku);
	expect_ok(lax, &(struct client_opt){ .cert = g.srveku }, g.srveku);
	expect_ok(lax, &(struct client_opt){ .cert = g.good }, g.good);
	/* the other checks still apply */
	expect_refusal(lax, &(struct client_opt){ .cert = g.expired }, REASON_CERT_EXPIRED, -1, NULL);
	SSL_CTX_free(lax);
	SSL_CTX_free(s);
}

static void
crl_revokes_in_pem_der_and_multi_files(void **state)
{
	const char *files[] = { g.crl_pem, g.crl_der, g.crl_multi };

	(void)state;
	for (size_t i = 0; i < 3; i++) {
		SSL_CTX *s = front_ctx_crl(files[i], NULL);

		expect_refusal(s, &(struct client_opt){ .cert = g.revoked }, REASON_CERT_REVOKED,
		    SSL_AD_CERTIFICATE_REVOKED, "certificate revoked (subject CN=frank-revoked");
		/* leaf and root are checked (CRL_CHECK_ALL) and pass */
		expect_ok(s, &(struct client_opt){ .cert = g.good }, g.good);
		SSL_CTX_free(s);
	}
}

static void
expired_crl_fails_closed(void **state)
{
	SSL_CTX *s = front_ctx_crl(g.crl_expired, NULL);

	(void)state;
	expect_refusal(s, &(struct client_opt){ .cert = g.good }, REASON_CERT_UNTRUSTED, -1,
	    "CRL has expired");
	SSL_CTX_free(s);
}

static void
intermediate_chain_with_crls_for_every_ca(void **state)
{
	SSL_CTX *s = front_ctx_crl(g.crl_int, NULL);
	struct conn k;
	X509 *issuer;

	(void)state;
	run(&k, s, &(struct client_opt){ .cert = g.int_leaf, .chain = g.int_ca });
	assert_int_equal(k.s_done, 1);
	issuer = tls_peer_issuer(k.s);
	assert_non_null(issuer);
	assert_int_equal(X509_cmp(issuer, g.int_ca), 0);
	X509_free(issuer);
	conn_free(&k);
	expect_refusal(s, &(struct client_opt){ .cert = g.int_leaf_revoked, .chain = g.int_ca },
	    REASON_CERT_REVOKED, SSL_AD_CERTIFICATE_REVOKED, "depth 0");
	/* without the intermediate the chain cannot be built */
	expect_refusal(s, &(struct client_opt){ .cert = g.int_leaf }, REASON_CERT_UNTRUSTED,
	    -1, "unable to get local issuer certificate");
	SSL_CTX_free(s);

	/* CRL_CHECK_ALL: no CRL of the intermediate CA → refused */
	s = front_ctx_crl(g.crl_int_root, NULL);
	expect_refusal(s, &(struct client_opt){ .cert = g.int_leaf, .chain = g.int_ca },
	    REASON_CERT_UNTRUSTED, -1, "unable to get certificate CRL");
	SSL_CTX_free(s);
}

static void
verify_depth_limits_the_chain(void **state)
{
	struct config *c = cfg_new();
	SSL_CTX *s;

	(void)state;
	c->tls.verify_depth = 0;	/* below config.c's range: only the plumbing */
	s = front_ctx(c);
	expect_refusal(s, &(struct client_opt){ .cert = g.int_leaf, .chain = g.int_ca },
	    REASON_CERT_UNTRUSTED, -1, "certificate chain too long");
	SSL_CTX_free(s);
}

/* ---- device side: protocol ----------------------------------------------- */

static void
tls11_client_is_refused(void **state)
{
	SSL_CTX *s = front_ctx(cfg_new());

	(void)state;
	expect_refusal(s, &(struct client_opt){ .cert = g.good, .min_version = TLS1_VERSION,
	    .max_version = TLS1_1_VERSION }, REASON_TLS_HANDSHAKE, SSL_AD_PROTOCOL_VERSION,
	    "protocol version");
	SSL_CTX_free(s);
}

static void
min_version_tls13_refuses_tls12(void **state)
{
	struct config *c = cfg_new();
	SSL_CTX *s;

	(void)state;
	c->tls.min_version = TLS1_3_VERSION;
	s = front_ctx(c);
	expect_refusal(s, &(struct client_opt){ .cert = g.good, .max_version = TLS1_2_VERSION },
	    REASON_TLS_HANDSHAKE, SSL_AD_PROTOCOL_VERSION, "below min_version");
	expect_ok(s, &(struct client_opt){ .cert = g.good }, g.good);
	SSL_CTX_free(s);
}

static void
alpn_selects_http11_and_never_h2(void **state)
{
	SSL_CTX *s = front_ctx(cfg_new());
	struct conn k;
	const unsigned char *sel;
	unsigned len;

	(void)state;
	run(&k, s, &(struct client_opt){ .cert = g.good,
	    .alpn = (const unsigned char *)"\x02h2\x08http/1.1", .alpn_len = 12 });
	assert_int_equal(k.s_done, 1);
	SSL_get0_alpn_selected(k.s, &sel, &len);
	assert_int_equal(len, 8);
	assert_memory_equal(sel, "http/1.1", 8);
	conn_free(&k);

	/* h2 only: no ALPN, no failure */
	run(&k, s, &(struct client_opt){ .cert = g.good,
	    .alpn = (const unsigned char *)"\x02h2", .alpn_len = 3 });
	assert_int_equal(k.s_done, 1);
	assert_int_equal(k.c_done, 1);
	SSL_get0_alpn_selected(k.s, &sel, &len);
	assert_int_equal(len, 0);
	SSL_get0_alpn_selected(k.c, &sel, &len);
	assert_int_equal(len, 0);
	conn_free(&k);
	SSL_CTX_free(s);
}

static void
any_sni_is_accepted(void **state)
{
	SSL_CTX *s = front_ctx(cfg_new());

	(void)state;
	expect_ok(s, &(struct client_opt){ .cert = g.good, .sni = "not-our-name.example" }, g.good);
	expect_ok(s, &(struct client_opt){ .cert = g.good, .sni = "proxy.example.test" }, g.good);
	SSL_CTX_free(s);
}

static void
context_options_for_cheap_parked_connections(void **state)
{
	SSL_CTX *s = front_ctx(cfg_new());
	uint64_t opts = SSL_CTX_get_options(s);

	(void)state;
	assert_true(SSL_CTX_get_mode(s) & SSL_MODE_RELEASE_BUFFERS);
	assert_true(opts & SSL_OP_NO_RENEGOTIATION);
	assert_true(opts & SSL_OP_NO_COMPRESSION);
	assert_true(opts & SSL_OP_CIPHER_SERVER_PREFERENCE);
	assert_true(opts & SSL_OP_IGNORE_UNEXPECTED_EOF);
	assert_false(opts & SSL_OP_NO_TICKET);
	assert_int_equal(SSL_CTX_get_session_cache_mode(s), SSL_SESS_CACHE_OFF);
	SSL_CTX_free(s);
}

static void
ciphers_split_between_tls12_and_tls13(void **state)
{
	struct config *c = cfg_new();
	SSL_CTX *s;
	struct conn k;

	(void)state;
	c->tls.ciphers = "ECDHE-ECDSA-AES256-GCM-SHA384:TLS_CHACHA20_POLY1305_SHA256";
	s = front_ctx(c);
	run(&k, s, &(struct client_opt){ .cert = g.good });
	assert_int_equal(k.s_done, 1);
	assert_string_equal(SSL_CIPHER_get_name(SSL_get_current_cipher(k.s)),
	    "TLS_CHACHA20_POLY1305_SHA256");
	conn_free(&k);
	run(&k, s, &(struct client_opt){ .cert = g.good, .max_version = TLS1_2_VERSION });
	assert_int_equal(k.s_done, 1);
	assert_string_equal(SSL_CIPHER_get_name(SSL_get_current_cipher(k.s)),
	    "ECDHE-ECDSA-AES256-GCM-SHA384");
	conn_free(&k);
	SSL_CTX_free(s);

	c = cfg_new();
	c->tls.ciphers = "NO-SUCH-CIPHER";
	{
		char err[512] = "";

		assert_null(tls_front_ctx_new(c, err, sizeof(err)));
		assert_non_null(strstr(err, "NO-SUCH-CIPHER"));
	}
	free(c);
}

/* ---- device side: resumption ---------------------------------------------- */

/* A full handshake, then a resumed one with the ticket it left; returns
 * whether the server resumed and checks the peer both times. */
static int
resume(SSL_CTX *first, SSL_CTX *second, int max_version)
{
	struct conn k;
	SSL_SESSION *sess;
	int reused;
	X509 *issuer;

	run(&k, first, &(struct client_opt){ .cert = g.good, .max_version = max_version });
	assert_int_equal(k.s_done, 1);
	sess = SSL_get1_session(k.c);
	assert_non_null(sess);
	/* a client that closes properly: OpenSSL marks the session of an
	 * SSL freed without close_notify as not resumable */
	(void)SSL_shutdown(k.c);
	assert_true(SSL_SESSION_is_resumable(sess));
	conn_free(&k);

	run(&k, second, &(struct client_opt){ .cert = g.good, .max_version = max_version,
	    .session = sess });
	assert_int_equal(k.s_done, 1);
	assert_int_equal(k.c_done, 1);
	reused = SSL_session_reused(k.s);
	/* resumed or not, the verified peer certificate is there */
	assert_non_null(tls_peer_cert(k.s));
	assert_int_equal(X509_cmp(tls_peer_cert(k.s), g.good), 0);
	issuer = tls_peer_issuer(k.s);
	assert_non_null(issuer);
	assert_int_equal(X509_cmp(issuer, g.ca), 0);
	X509_free(issuer);
	/* ... and so is the identity it maps to */
	{
		struct identity_params p = { .source = ID_SRC_SAN_UPN, .realm = "EXAMPLE.TEST" };
		struct identity_result res;

		assert_int_equal(identity_map(tls_peer_cert(k.s), &p, &res), 0);
		assert_string_equal(res.principal, "alice@EXAMPLE.TEST");
	}
	conn_free(&k);
	SSL_SESSION_free(sess);
	return reused;
}

static void
ticket_resumption_keeps_the_peer_certificate(void **state)
{
	SSL_CTX *s = front_ctx(cfg_new());

	(void)state;
	assert_int_equal(resume(s, s, 0), 1);			/* TLS 1.3 */
	assert_int_equal(resume(s, s, TLS1_2_VERSION), 1);	/* TLS 1.2 */
	SSL_CTX_free(s);
}

static void
tickets_belong_to_one_context_unless_keys_are_shared(void **state)
{
	SSL_CTX *a = front_ctx(cfg_new()), *b = front_ctx(cfg_new());
	unsigned char keys[TLS_TICKET_KEYS_LEN];

	(void)state;
	/* a reload (new context) invalidates every ticket: full handshake */
	assert_int_equal(resume(a, b, 0), 0);
	/* workers of one generation sharing keys resume each other's tickets */
	memset(keys, 0x5a, sizeof(keys));
	assert_int_equal(tls_set_ticket_keys(a, keys, sizeof(keys)), 0);
	assert_int_equal(tls_set_ticket_keys(b, keys, sizeof(keys)), 0);
	assert_int_equal(resume(a, b, 0), 1);
	assert_int_equal(tls_set_ticket_keys(a, keys, 16), -1);
	SSL_CTX_free(a);
	SSL_CTX_free(b);
}

/* ---- device side: loading failures (reload keeps the old context) ---------- */

static void
expect_load_error(struct config *c, const char *want1, const char *want2)
{
	char err[1024] = "";

	assert_null(tls_front_ctx_new(c, err, sizeof(err)));
	if (strstr(err, want1) == NULL || (want2 && strstr(err, want2) == NULL))
		fail_msg("error '%s' lacks '%s' / '%s'", err, want1, want2 ? want2 : "");
	free(c);
}

static void
bad_files_fail_with_the_file_named(void **state)
{
	struct config *c;

	(void)state;
	c = cfg_new();
	c->tls.key = g.other_key_pem;	/* a key, not the certificate's */
	expect_load_error(c, g.other_key_pem, "does not match");

	c = cfg_new();
	c->tls.key = g.garbage;
	expect_load_error(c, g.garbage, "private key");

	c = cfg_new();
	c->tls.key = g.missing;
	expect_load_error(c, g.missing, "No such file");

	c = cfg_new();
	c->tls.certificate = g.missing;
	expect_load_error(c, g.missing, "certificate");

	c = cfg_new();
	c->tls.client_ca = g.garbage;
	expect_load_error(c, g.garbage, "client_ca");

	c = cfg_new();
	c->tls.crl.v[c->tls.crl.n++] = g.crl_pem;
	c->tls.crl.v[c->tls.crl.n++] = g.crl_bad;
	expect_load_error(c, g.crl_bad, "does not parse");

	c = cfg_new();
	c->tls.crl.v[c->tls.crl.n++] = g.garbage;
	expect_load_error(c, g.garbage, "neither PEM nor DER");

	c = cfg_new();
	c->tls.crl.v[c->tls.crl.n++] = g.missing;
	expect_load_error(c, g.missing, "No such file");
	assert_int_equal(ERR_peek_error(), 0);
}

static void
crl_signed_by_the_wrong_key_is_refused_at_load(void **state)
{
	long rev[] = { 666 };
	X509_CRL *forged = mkcrl(g.impostor_ca, g.impostor_key, -3600, DAY, rev, 1);
	char file[128];
	struct config *c = cfg_new();

	(void)state;
	path(file, "forged.crl.pem");
	write_crls(file, 0, forged, NULL);
	X509_CRL_free(forged);
	c->tls.crl.v[c->tls.crl.n++] = file;
	expect_load_error(c, file, "not signed by the CA");
}

/* ---- backend side ------------------------------------------------------------ */

static SSL_CTX *
backend_server_ctx(void)
{
	SSL_CTX *s = SSL_CTX_new(TLS_server_method());

	assert_non_null(s);
	assert_int_equal(SSL_CTX_use_certificate_chain_file(s, g.server_pem), 1);
	assert_int_equal(SSL_CTX_use_PrivateKey_file(s, g.server_key, SSL_FILETYPE_PEM), 1);
	return s;
}

/* Handshake between tls_backend_ssl_new(bctx, host) and a plain server. */
static int
backend_run(SSL_CTX *bctx, SSL_CTX *sctx, const char *host, int *reused, char *sni_seen)
{
	SSL *c = tls_backend_ssl_new(bctx, host), *s = SSL_new(sctx);
	BIO *bc, *bs;
	int c_done = 0, s_done = 0;
	char buf[16];

	assert_non_null(c);
	assert_non_null(s);
	assert_int_equal(BIO_new_bio_pair(&bc, 0, &bs, 0), 1);
	SSL_set_bio(c, bc, bc);
	SSL_set_bio(s, bs, bs);
	SSL_set_connect_state(c);
	SSL_set_accept_state(s);
	for (int i = 0; i < 50; i++) {
		int r;

		ERR_set_mark();
		if (c_done == 0) {
			r = SSL_do_handshake(c);
			if (r == 1)
				c_done = 1;
			else if (SSL_get_error(c, r) != SSL_ERROR_WANT_READ)
				c_done = -1;
		}
		if (c_done == 1)
			(void)SSL_read(c, buf, sizeof(buf));	/* tickets */
		ERR_pop_to_mark();
		if (s_done == 0) {
			r = SSL_do_handshake(s);
			if (r == 1)
				s_done = 1;
			else if (SSL_get_error(s, r) != SSL_ERROR_WANT_READ)
				s_done = -1;
		}
	}
	ERR_clear_error();
	if (reused)
		*reused = SSL_session_reused(c);
	if (sni_seen) {
		const char *sn = SSL_get_servername(s, TLSEXT_NAMETYPE_host_name);

		snprintf(sni_seen, 64, "%s", sn ? sn : "");
	}
	if (c_done == 1) {
		unsigned char a[EVP_MAX_MD_SIZE], b[EVP_MAX_MD_SIZE];
		unsigned la = 0, lb = 0;

		/* the channel binding hash is there on resumed sessions too */
		assert_int_equal(SSL_get_verify_result(c), X509_V_OK);
		assert_int_equal(tls_server_end_point(SSL_get0_peer_certificate(c), a, &la), 0);
		assert_int_equal(tls_server_end_point(g.server, b, &lb), 0);
		assert_int_equal(la, 32);
		assert_memory_equal(a, b, la);
	}
	SSL_free(c);
	SSL_free(s);
	return c_done;
}

static void
backend_verifies_host_and_reuses_sessions(void **state)
{
	struct config *c = cfg_new();
	SSL_CTX *b, *s = backend_server_ctx();
	char err[512] = "", sni[64];
	int reused = -1;

	(void)state;
	c->backend.ca = g.ca_pem;
	b = tls_backend_ctx_new(c, err, sizeof(err));
	if (b == NULL)
		fail_msg("tls_backend_ctx_new: %s", err);
	assert_int_equal(backend_run(b, s, "proxy.example.test", &reused, sni), 1);
	assert_int_equal(reused, 0);
	assert_string_equal(sni, "proxy.example.test");
	assert_int_equal(backend_run(b, s, "proxy.example.test", &reused, NULL), 1);
	assert_int_equal(reused, 1);
	/* a name the certificate does not carry, an IP literal (no SNI) */
	assert_int_equal(backend_run(b, s, "exchange.example.test", NULL, NULL), -1);
	assert_int_equal(backend_run(b, s, "127.0.0.1", NULL, sni), -1);
	assert_string_equal(sni, "");
	SSL_CTX_free(b);

	/* a CA file that is not one, a missing one */
	c->backend.ca = g.garbage;
	assert_null(tls_backend_ctx_new(c, err, sizeof(err)));
	assert_non_null(strstr(err, g.garbage));
	c->backend.ca = g.missing;
	assert_null(tls_backend_ctx_new(c, err, sizeof(err)));
	assert_non_null(strstr(err, g.missing));
	assert_non_null(strstr(err, "No such file"));
	SSL_CTX_free(s);
	free(c);
}

static void
backend_with_an_untrusting_ca_fails(void **state)
{
	struct config *c = cfg_new();
	char file[128], err[512] = "";
	SSL_CTX *b, *s = backend_server_ctx();

	(void)state;
	path(file, "other-ca.pem");
	write_certs(file, g.other_ca, NULL);
	c->backend.ca = file;
	b = tls_backend_ctx_new(c, err, sizeof(err));
	assert_non_null(b);
	assert_int_equal(backend_run(b, s, "proxy.example.test", NULL, NULL), -1);
	SSL_CTX_free(b);
	SSL_CTX_free(s);
	free(c);
}

/* ---- tls-server-end-point ------------------------------------------------------ */

/* The fingerprint `openssl x509 -fingerprint -<alg>` prints, as bytes. */
static unsigned
cli_fingerprint(X509 *x, const char *alg, unsigned char *out)
{
	char file[128], cmd[512], line[512];
	FILE *p;
	unsigned n = 0;
	char *s;

	path(file, "fp.pem");
	write_certs(file, x, NULL);
	snprintf(cmd, sizeof(cmd), "openssl x509 -noout -fingerprint -%s -in '%s'", alg, file);
	p = popen(cmd, "r");
	assert_non_null(p);
	assert_non_null(fgets(line, sizeof(line), p));
	assert_int_equal(pclose(p), 0);
	s = strchr(line, '=');
	assert_non_null(s);
	for (s++; s[0] && s[1] && n < EVP_MAX_MD_SIZE; s += 3) {
		unsigned v;

		assert_int_equal(sscanf(s, "%2x", &v), 1);
		out[n++] = (unsigned char)v;
		if (s[2] != ':')
			break;
	}
	return n;
}

static void
check_end_point(X509 *x, const char *alg, unsigned want_len)
{
	unsigned char a[EVP_MAX_MD_SIZE], b[EVP_MAX_MD_SIZE];
	unsigned la = 0, lb;

	assert_int_equal(tls_server_end_point(x, a, &la), 0);
	lb = cli_fingerprint(x, alg, b);
	assert_int_equal(la, want_len);
	assert_int_equal(lb, want_len);
	assert_memory_equal(a, b, la);
}

static void
server_end_point_follows_the_signature_digest(void **state)
{
	EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	EVP_PKEY *p384 = mkkey_ec("P-384"), *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	X509 *x;
	unsigned char out[EVP_MAX_MD_SIZE];
	unsigned len = 0;

	(void)state;
	assert_non_null(rsa);
	assert_non_null(ed);
	/* RSA-SHA256 → SHA-256 */
	x = mkcert(&(struct certopt){ .cn = "rsa256", .key = rsa, .not_after = DAY, .md = EVP_sha256() });
	check_end_point(x, "sha256", 32);
	X509_free(x);
	/* ECDSA-SHA384 → SHA-384 */
	x = mkcert(&(struct certopt){ .cn = "ec384", .key = p384, .not_after = DAY, .md = EVP_sha384() });
	check_end_point(x, "sha384", 48);
	X509_free(x);
	/* RSA-SHA512 → SHA-512 */
	x = mkcert(&(struct certopt){ .cn = "rsa512", .key = rsa, .not_after = DAY, .md = EVP_sha512() });
	check_end_point(x, "sha512", 64);
	X509_free(x);
	/* RSA-SHA1 and ECDSA-SHA1 → SHA-256, not SHA-1 */
	x = mkcert(&(struct certopt){ .cn = "rsa1", .key = rsa, .not_after = DAY, .md = EVP_sha1() });
	check_end_point(x, "sha256", 32);
	X509_free(x);
	x = mkcert(&(struct certopt){ .cn = "ec1", .key = p384, .not_after = DAY, .md = EVP_sha1() });
	check_end_point(x, "sha256", 32);
	X509_free(x);
	/* Ed25519 has no single digest: undefined, an error on the queue */
	x = mkcert(&(struct certopt){ .cn = "ed", .key = ed, .not_after = DAY });
	ERR_clear_error();
	assert_int_equal(tls_server_end_point(x, out, &len), -1);
	assert_int_not_equal(ERR_peek_error(), 0);
	ERR_clear_error();
	X509_free(x);
	EVP_PKEY_free(rsa);
	EVP_PKEY_free(p384);
	EVP_PKEY_free(ed);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(good_certificate_is_accepted_and_yields_the_peer),
		cmocka_unit_test(certificate_request_names_client_ca),
		cmocka_unit_test(no_certificate_is_cert_missing),
		cmocka_unit_test(expired_and_not_yet_valid),
		cmocka_unit_test(other_ca_and_impostor_ca_are_untrusted),
		cmocka_unit_test(eku_required_refuses_missing_and_wrong_eku),
		cmocka_unit_test(crl_revokes_in_pem_der_and_multi_files),
		cmocka_unit_test(expired_crl_fails_closed),
		cmocka_unit_test(intermediate_chain_with_crls_for_every_ca),
		cmocka_unit_test(verify_depth_limits_the_chain),
		cmocka_unit_test(tls11_client_is_refused),
		cmocka_unit_test(min_version_tls13_refuses_tls12),
		cmocka_unit_test(alpn_selects_http11_and_never_h2),
		cmocka_unit_test(any_sni_is_accepted),
		cmocka_unit_test(context_options_for_cheap_parked_connections),
		cmocka_unit_test(ciphers_split_between_tls12_and_tls13),
		cmocka_unit_test(ticket_resumption_keeps_the_peer_certificate),
		cmocka_unit_test(tickets_belong_to_one_context_unless_keys_are_shared),
		cmocka_unit_test(bad_files_fail_with_the_file_named),
		cmocka_unit_test(crl_signed_by_the_wrong_key_is_refused_at_load),
		cmocka_unit_test(backend_verifies_host_and_reuses_sessions),
		cmocka_unit_test(backend_with_an_untrusting_ca_fails),
		cmocka_unit_test(server_end_point_follows_the_signature_digest),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
