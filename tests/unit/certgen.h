/*
 * certgen.h — certificates, keys and CRLs for the TLS and OCSP unit tests,
 * made with OpenSSL's own APIs (cmocka asserts on every step). Header-only
 * with static inline functions so that each test takes what it needs.
 */
#ifndef EKP_TEST_CERTGEN_H
#define EKP_TEST_CERTGEN_H

#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define DAY	86400L

struct certopt {
	const char *cn;
	X509 *issuer;			/* NULL: self-signed */
	EVP_PKEY *issuer_key;
	EVP_PKEY *key;
	long not_before, not_after;	/* seconds from now */
	int ca;
	const char *eku;		/* "clientAuth", "serverAuth", NULL: none */
	long serial;
	const EVP_MD *md;		/* NULL: SHA-256 (Ed25519: ignored) */
	int no_akid;
	const char *san;		/* "DNS:proxy.example.test" */
	const char *aia;		/* "OCSP;URI:http://127.0.0.1:1234/" */
};

static inline void
add_ext(X509 *x, X509V3_CTX *v3, int nid, const char *value)
{
	X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, v3, nid, value);

	assert_non_null(e);
	assert_int_equal(X509_add_ext(x, e, -1), 1);
	X509_EXTENSION_free(e);
}

static inline X509 *
mkcert(const struct certopt *o)
{
	X509 *x = X509_new();
	X509_NAME *name = X509_NAME_new();
	X509V3_CTX v3;
	EVP_PKEY *signer = o->issuer ? o->issuer_key : o->key;
	const EVP_MD *md = o->md ? o->md : EVP_sha256();

	assert_non_null(x);
	assert_non_null(name);
	assert_int_equal(X509_set_version(x, 2), 1);
	ASN1_INTEGER_set(X509_get_serialNumber(x), o->serial ? o->serial : 1);
	assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), o->not_before));
	assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), o->not_after));
	assert_int_equal(X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
	    (const unsigned char *)"Example", -1, -1, 0), 1);
	assert_int_equal(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
	    (const unsigned char *)o->cn, -1, -1, 0), 1);
	assert_int_equal(X509_set_subject_name(x, name), 1);
	assert_int_equal(X509_set_issuer_name(x, o->issuer ? X509_get_subject_name(o->issuer) : name), 1);
	assert_int_equal(X509_set_pubkey(x, o->key), 1);
	X509_NAME_free(name);

	X509V3_set_ctx(&v3, o->issuer ? o->issuer : x, x, NULL, NULL, 0);
	add_ext(x, &v3, NID_subject_key_identifier, "hash");
	if (!o->no_akid)
		add_ext(x, &v3, NID_authority_key_identifier, "keyid:always");
	if (o->ca) {
		add_ext(x, &v3, NID_basic_constraints, "critical,CA:TRUE");
		add_ext(x, &v3, NID_key_usage, "critical,keyCertSign,cRLSign");
	} else {
		add_ext(x, &v3, NID_basic_constraints, "critical,CA:FALSE");
		add_ext(x, &v3, NID_key_usage, "critical,digitalSignature,keyEncipherment");
	}
	if (o->eku != NULL)
		add_ext(x, &v3, NID_ext_key_usage, o->eku);
	if (o->san != NULL)
		add_ext(x, &v3, NID_subject_alt_name, o->san);
	if (o->aia != NULL)
		add_ext(x, &v3, NID_info_access, o->aia);
	assert_true(X509_sign(x, signer, EVP_PKEY_get_id(signer) == EVP_PKEY_ED25519 ? NULL : md) > 0);
	return x;
}

static inline X509_CRL *
mkcrl(X509 *ca, EVP_PKEY *key, long last, long next, const long *serials, int n)
{
	X509_CRL *crl = X509_CRL_new();
	ASN1_TIME *t = ASN1_TIME_new();

	assert_non_null(crl);
	assert_non_null(t);
	assert_int_equal(X509_CRL_set_version(crl, 1), 1);
	assert_int_equal(X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca)), 1);
	assert_non_null(X509_gmtime_adj(t, last));
	assert_int_equal(X509_CRL_set1_lastUpdate(crl, t), 1);
	assert_non_null(X509_gmtime_adj(t, next));
	assert_int_equal(X509_CRL_set1_nextUpdate(crl, t), 1);
	for (int i = 0; i < n; i++) {
		X509_REVOKED *r = X509_REVOKED_new();
		ASN1_INTEGER *s = ASN1_INTEGER_new();

		assert_non_null(r);
		ASN1_INTEGER_set(s, serials[i]);
		assert_int_equal(X509_REVOKED_set_serialNumber(r, s), 1);
		assert_non_null(X509_gmtime_adj(t, -3600));
		assert_int_equal(X509_REVOKED_set_revocationDate(r, t), 1);
		assert_int_equal(X509_CRL_add0_revoked(crl, r), 1);
		ASN1_INTEGER_free(s);
	}
	assert_int_equal(X509_CRL_sort(crl), 1);
	assert_true(X509_CRL_sign(crl, key, EVP_sha256()) > 0);
	ASN1_TIME_free(t);
	return crl;
}

static inline EVP_PKEY *
mkkey_ec(const char *curve)
{
	EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", curve);

	assert_non_null(k);
	return k;
}

static inline void
write_certs(const char *file, X509 *a, X509 *b)
{
	FILE *fp = fopen(file, "w");

	assert_non_null(fp);
	assert_int_equal(PEM_write_X509(fp, a), 1);
	if (b != NULL)
		assert_int_equal(PEM_write_X509(fp, b), 1);
	fclose(fp);
}

static inline void
write_key(const char *file, EVP_PKEY *k)
{
	FILE *fp = fopen(file, "w");

	assert_non_null(fp);
	assert_int_equal(PEM_write_PrivateKey(fp, k, NULL, NULL, 0, NULL, NULL), 1);
	fclose(fp);
}

static inline void
write_crls(const char *file, int der, X509_CRL *a, X509_CRL *b)
{
	FILE *fp = fopen(file, "w");

	assert_non_null(fp);
	if (der) {
		assert_true(i2d_X509_CRL_fp(fp, a) == 1);
		if (b)
			assert_true(i2d_X509_CRL_fp(fp, b) == 1);
	} else {
		assert_int_equal(PEM_write_X509_CRL(fp, a), 1);
		if (b)
			assert_int_equal(PEM_write_X509_CRL(fp, b), 1);
	}
	fclose(fp);
}

static inline void
write_text(const char *file, const char *text)
{
	FILE *fp = fopen(file, "w");

	assert_non_null(fp);
	fputs(text, fp);
	fclose(fp);
}

#endif
