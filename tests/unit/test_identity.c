/*
 * test_identity.c — certificate → user@REALM (identity.c), SPEC §3
 * [identity] and §5 identity_unmapped.
 *
 * Certificates are built here with OpenSSL's own APIs, signed, and round-
 * tripped through DER so identity_map sees what a TLS peer would send.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "identity.h"

#define OID_UPN		"1.3.6.1.4.1.311.20.2.3"
#define OID_SID_EXT	"1.3.6.1.4.1.311.25.2"
#define OID_SID		"1.3.6.1.4.1.311.25.2.1"

static EVP_PKEY *key;	/* one P-256 key signs and is certified by every test cert */

/* ---- certificate builders ----------------------------------------------- */

/* A fresh certificate with subject CN=cn (UTF8String; none when NULL). */
static X509 *
cert_new(const char *cn)
{
	X509 *x = X509_new();
	X509_NAME *name = X509_NAME_new();

	assert_non_null(x);
	assert_non_null(name);
	assert_int_equal(X509_set_version(x, 2), 1);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 4242);
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400);
	assert_int_equal(X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
	    (const unsigned char *)"Example Devices", -1, -1, 0), 1);
	if (cn != NULL)
		assert_int_equal(X509_NAME_add_entry_by_NID(name, NID_commonName,
		    V_ASN1_UTF8STRING, (const unsigned char *)cn, (int)strlen(cn), -1, 0), 1);
	assert_int_equal(X509_set_subject_name(x, name), 1);
	assert_int_equal(X509_set_issuer_name(x, name), 1);
	assert_int_equal(X509_set_pubkey(x, key), 1);
	X509_NAME_free(name);
	return x;
}

/* Sign, encode, decode: the returned certificate is the parsed one. */
static X509 *
cert_finish(X509 *x)
{
	unsigned char *der = NULL;
	const unsigned char *p;
	X509 *y;
	int n;

	assert_true(X509_sign(x, key, EVP_sha256()) > 0);
	n = i2d_X509(x, &der);
	assert_true(n > 0);
	p = der;
	y = d2i_X509(NULL, &p, n);
	assert_non_null(y);
	OPENSSL_free(der);
	X509_free(x);
	return y;
}

/* otherName OID with a value of ASN.1 type `type` holding len raw bytes. */
static GENERAL_NAME *
gn_other(const char *oid, int type, const void *bytes, int len)
{
	GENERAL_NAME *gn = GENERAL_NAME_new();
	ASN1_TYPE *val = ASN1_TYPE_new();
	ASN1_STRING *s = ASN1_STRING_type_new(type);

	assert_non_null(gn);
	assert_non_null(val);
	assert_non_null(s);
	assert_int_equal(ASN1_STRING_set(s, bytes, len), 1);
	ASN1_TYPE_set(val, type, s);
	assert_int_equal(GENERAL_NAME_set0_othername(gn, OBJ_txt2obj(oid, 1), val), 1);
	return gn;
}

static GENERAL_NAME *
gn_upn(const char *s)
{
	return gn_other(OID_UPN, V_ASN1_UTF8STRING, s, (int)strlen(s));
}

static GENERAL_NAME *
gn_ia5(int type, const char *s, int len)
{
	GENERAL_NAME *gn = GENERAL_NAME_new();
	ASN1_IA5STRING *v = ASN1_IA5STRING_new();

	assert_non_null(gn);
	assert_non_null(v);
	assert_int_equal(ASN1_STRING_set(v, s, len), 1);
	GENERAL_NAME_set0_value(gn, type, v);
	return gn;
}

static GENERAL_NAME *
gn_email(const char *s)
{
	return gn_ia5(GEN_EMAIL, s, (int)strlen(s));
}

static GENERAL_NAME *
gn_dns(const char *s)
{
	return gn_ia5(GEN_DNS, s, (int)strlen(s));
}

/* Add a subjectAltName made of the n names given (ownership taken). */
static void
add_san(X509 *x, int n, ...)
{
	GENERAL_NAMES *g = GENERAL_NAMES_new();
	va_list ap;

	assert_non_null(g);
	va_start(ap, n);
	for (int i = 0; i < n; i++)
		assert_true(sk_GENERAL_NAME_push(g, va_arg(ap, GENERAL_NAME *)) > 0);
	va_end(ap);
	assert_int_equal(X509_add1_ext_i2d(x, NID_subject_alt_name, g, 0, X509V3_ADD_APPEND), 1);
	GENERAL_NAMES_free(g);
}

/* Add an extension with arbitrary DER contents. */
static void
add_raw_ext(X509 *x, const char *oid, const unsigned char *der, int len)
{
	ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();
	ASN1_OBJECT *obj = OBJ_txt2obj(oid, 1);
	X509_EXTENSION *ext;

	assert_non_null(os);
	assert_non_null(obj);
	assert_int_equal(ASN1_OCTET_STRING_set(os, der, len), 1);
	ext = X509_EXTENSION_create_by_OBJ(NULL, obj, 0, os);
	assert_non_null(ext);
	assert_int_equal(X509_add_ext(x, ext, -1), 1);
	X509_EXTENSION_free(ext);
	ASN1_OBJECT_free(obj);
	ASN1_OCTET_STRING_free(os);
}

/* A signed certificate whose SAN holds one UPN of the given type/bytes. */
static X509 *
cert_upn_raw(int type, const void *bytes, int len)
{
	X509 *x = cert_new("device");

	add_san(x, 1, gn_other(OID_UPN, type, bytes, len));
	return cert_finish(x);
}

static X509 *
cert_upn(const char *s)
{
	return cert_upn_raw(V_ASN1_UTF8STRING, s, (int)strlen(s));
}

/* The SID extension as Windows CAs write it: GeneralNames with one
 * otherName OID_SID holding an OCTET STRING (nsid of them). */
static void
add_sid_ext(X509 *x, const char *sid, int nsid)
{
	GENERAL_NAMES *g = GENERAL_NAMES_new();
	unsigned char *der = NULL;
	int n;

	for (int i = 0; i < nsid; i++)
		assert_true(sk_GENERAL_NAME_push(g, gn_other(OID_SID, V_ASN1_OCTET_STRING,
		    sid, (int)strlen(sid))) > 0);
	n = i2d_GENERAL_NAMES(g, &der);
	assert_true(n > 0);
	add_raw_ext(x, OID_SID_EXT, der, n);
	OPENSSL_free(der);
	GENERAL_NAMES_free(g);
}

/* ---- parameters and expectations --------------------------------------- */

static struct config_suffix_realm sr_default[] = {
	{ (char *)"corp.example", (char *)"CORP.EXAMPLE.TEST" },
};

static struct identity_params
params_default(void)
{
	struct identity_params p;

	memset(&p, 0, sizeof(p));
	p.source = ID_SRC_SAN_UPN;
	p.realm = "EXAMPLE.TEST";
	p.n_suffix_realms = 1;
	p.suffix_realms = sr_default;
	return p;
}

/* Nothing a certificate carries may reach a log line unescaped. */
static void
assert_log_safe(const char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
			fail_msg("log text carries raw byte 0x%02x", (unsigned char)*s);
}

static void
expect_ok(X509 *x, const struct identity_params *p, const char *principal)
{
	struct identity_result r;
	int rc;

	memset(&r, 0x5a, sizeof(r));
	rc = identity_map(x, p, &r);
	if (rc != 0)
		fail_msg("expected %s, got refusal %s: %s", principal,
		    identity_detail_token(r.detail), r.message);
	assert_string_equal(r.principal, principal);
	assert_int_equal(r.reason, REASON_OK);
	assert_int_equal(r.detail, IDENTITY_NONE);
	assert_log_safe(r.message);
	assert_non_null(strstr(r.message, " maps to "));
	assert_log_safe(r.value);
	X509_free(x);
}

/* Returns nothing; checks the refusal carries detail d and its token. */
static void
expect_refused_r(X509 *x, const struct identity_params *p, enum identity_detail d,
    struct identity_result *out)
{
	struct identity_result r;
	int rc;

	memset(&r, 0x5a, sizeof(r));
	rc = identity_map(x, p, &r);
	if (rc != -1 || r.detail != d)
		fail_msg("expected refusal %s, got rc=%d detail=%s principal=%.80s msg=%s",
		    identity_detail_token(d), rc, identity_detail_token(r.detail),
		    rc == 0 ? r.principal : "", r.message);
	assert_int_equal(r.reason, REASON_IDENTITY_UNMAPPED);
	assert_string_equal(r.principal, "");
	assert_string_equal(r.local, "");
	assert_string_equal(r.realm, "");
	assert_non_null(strstr(r.message, identity_detail_token(d)));
	assert_log_safe(r.message);
	assert_log_safe(r.value);
	if (out != NULL)
		*out = r;
	X509_free(x);
}

static void
expect_refused(X509 *x, const struct identity_params *p, enum identity_detail d)
{
	expect_refused_r(x, p, d, NULL);
}

/* ---- san_upn ------------------------------------------------------------ */

static void
upn_utf8_maps_to_realm(void **state)
{
	struct identity_params p = params_default();
	struct identity_result r;
	X509 *x = cert_upn("alice@EXAMPLE.TEST");

	(void)state;
	assert_int_equal(identity_map(x, &p, &r), 0);
	assert_string_equal(r.principal, "alice@EXAMPLE.TEST");
	assert_string_equal(r.local, "alice");
	assert_string_equal(r.realm, "EXAMPLE.TEST");
	assert_string_equal(r.value, "alice@EXAMPLE.TEST");
	X509_free(x);
}

static void
upn_suffix_equal_to_realm_any_case(void **state)
{
	struct identity_params p = params_default();

	(void)state;
	expect_ok(cert_upn("alice@example.test"), &p, "alice@EXAMPLE.TEST");
	expect_ok(cert_upn("alice@Example.Test"), &p, "alice@EXAMPLE.TEST");
}

static void
upn_suffix_realms_case_insensitive_local_kept(void **state)
{
	struct identity_params p = params_default();

	(void)state;
	expect_ok(cert_upn("ALICE@Corp.Example"), &p, "ALICE@CORP.EXAMPLE.TEST");
	expect_ok(cert_upn("bob@corp.example"), &p, "bob@CORP.EXAMPLE.TEST");
}

static void
upn_realm_copied_verbatim(void **state)
{
	static struct config_suffix_realm sr[] = {
		{ (char *)"mixed.example", (char *)"Mixed.Realm" },
	};
	struct identity_params p = params_default();

	(void)state;
	p.suffix_realms = sr;
	expect_ok(cert_upn("carol@MIXED.example"), &p, "carol@Mixed.Realm");
}

static void
upn_suffix_realms_win_over_realm(void **state)
{
	static struct config_suffix_realm sr[] = {
		{ (char *)"example.test", (char *)"OTHER.TEST" },
	};
	struct identity_params p = params_default();

	(void)state;
	p.suffix_realms = sr;
	expect_ok(cert_upn("alice@example.test"), &p, "alice@OTHER.TEST");
}

static void
upn_unmapped_suffix_refused(void **state)
{
	struct identity_params p = params_default();

	(void)state;
	expect_refused(cert_upn("alice@other.example"), &p, IDENTITY_SUFFIX_UNMAPPED);
	/* whole-suffix compare: no sub-domain or prefix matching */
	expect_refused(cert_upn("alice@eu.corp.example"), &p, IDENTITY_SUFFIX_UNMAPPED);
	expect_refused(cert_upn("alice@corp.example.evil"), &p, IDENTITY_SUFFIX_UNMAPPED);
	expect_refused(cert_upn("alice@EXAMPLE.TES"), &p, IDENTITY_SUFFIX_UNMAPPED);
	expect_refused(cert_upn("alice@xEXAMPLE.TEST"), &p, IDENTITY_SUFFIX_UNMAPPED);
	/* no realm configured: only suffix_realms map */
	p.realm = NULL;
	expect_refused(cert_upn("alice@EXAMPLE.TEST"), &p, IDENTITY_SUFFIX_UNMAPPED);
	expect_ok(cert_upn("alice@corp.example"), &p, "alice@CORP.EXAMPLE.TEST");
}

static void
upn_allowed_suffixes_filter(void **state)
{
	static char *allowed[] = { (char *)"corp.example", (char *)"other.example" };
	struct identity_params p = params_default();

	(void)state;
	p.allowed_suffixes = allowed;
	p.n_allowed_suffixes = 2;
	/* maps to a realm but is not allowed */
	expect_refused(cert_upn("alice@EXAMPLE.TEST"), &p, IDENTITY_SUFFIX_NOT_ALLOWED);
	/* allowed, any case */
	expect_ok(cert_upn("bob@CORP.example"), &p, "bob@CORP.EXAMPLE.TEST");
	/* allowed but maps nowhere */
	expect_refused(cert_upn("carol@other.example"), &p, IDENTITY_SUFFIX_UNMAPPED);
	/* allowed list does not do sub-domains either */
	expect_refused(cert_upn("dave@x.corp.example"), &p, IDENTITY_SUFFIX_NOT_ALLOWED);
}

static void
upn_two_refused(void **state)
{
	struct identity_params p = params_default();
	X509 *x;

	(void)state;
	x = cert_new("device");
	add_san(x, 2, gn_upn("alice@EXAMPLE.TEST"), gn_upn("bob@EXAMPLE.TEST"));
	expect_refused(cert_finish(x), &p, IDENTITY_TWO_UPNS);
	/* even when both say the same thing */
	x = cert_new("device");
	add_san(x, 3, gn_upn("alice@EXAMPLE.TEST"), gn_dns("a.example"),
	    gn_upn("alice@EXAMPLE.TEST"));
	expect_refused(cert_finish(x), &p, IDENTITY_TWO_UPNS);
}

static void
upn_absent_refused(void **state)
{
	struct identity_params p = params_default();
	X509 *x;

	(void)state;
	/* no SAN at all */
	expect_refused(cert_finish(cert_new("alice@example.test")), &p, IDENTITY_NO_UPN);
	/* SAN with other names only */
	x = cert_new("device");
	add_san(x, 2, gn_dns("device.example.test"), gn_email("alice@example.test"));
	expect_refused(cert_finish(x), &p, IDENTITY_NO_UPN);
	/* an otherName with another OID is not a UPN */
	x = cert_new("device");
	add_san(x, 1, gn_other("1.3.6.1.5.5.7.8.9", V_ASN1_UTF8STRING, "alice@EXAMPLE.TEST", 18));
	expect_refused(cert_finish(x), &p, IDENTITY_NO_UPN);
}

static void
upn_and_email_each_source_picks_its_own(void **state)
{
	struct identity_params p = params_default();
	X509 *x;

	(void)state;
	x = cert_new("device");
	add_san(x, 2, gn_email("mail@example.test"), gn_upn("alice@EXAMPLE.TEST"));
	x = cert_finish(x);
	assert_int_equal(X509_up_ref(x), 1);
	expect_ok(x, &p, "alice@EXAMPLE.TEST");
	p.source = ID_SRC_SAN_EMAIL;
	expect_ok(x, &p, "mail@EXAMPLE.TEST");
}

static void
upn_ia5_only_when_configured(void **state)
{
	struct identity_params p = params_default();
	struct identity_result r;

	(void)state;
	expect_refused_r(cert_upn_raw(V_ASN1_IA5STRING, "alice@EXAMPLE.TEST", 18), &p,
	    IDENTITY_IA5_UPN_NOT_ALLOWED, &r);
	assert_string_equal(r.value, "alice@EXAMPLE.TEST");
	p.allow_ia5_upn = 1;
	expect_ok(cert_upn_raw(V_ASN1_IA5STRING, "alice@EXAMPLE.TEST", 18), &p,
	    "alice@EXAMPLE.TEST");
	/* IA5String is 7-bit */
	expect_refused(cert_upn_raw(V_ASN1_IA5STRING, "j\xc3\xbcrgen@EXAMPLE.TEST", 20), &p,
	    IDENTITY_NOT_ASCII);
	/* the other rules still apply */
	expect_refused(cert_upn_raw(V_ASN1_IA5STRING, "a b@EXAMPLE.TEST", 16), &p,
	    IDENTITY_BAD_CHAR);
}

static void
upn_other_types_refused(void **state)
{
	/* "alice@EXAMPLE.TEST" as UCS-2 big-endian */
	static const char bmp[] = "\0a\0l\0i\0c\0e\0@\0E\0X\0A\0M\0P\0L\0E\0.\0T\0E\0S\0T";
	struct identity_params p = params_default();

	(void)state;
	p.allow_ia5_upn = 1;
	expect_refused(cert_upn_raw(V_ASN1_BMPSTRING, bmp, (int)sizeof(bmp) - 1), &p,
	    IDENTITY_BAD_UPN_TYPE);
	expect_refused(cert_upn_raw(V_ASN1_OCTET_STRING, "alice@EXAMPLE.TEST", 18), &p,
	    IDENTITY_BAD_UPN_TYPE);
	expect_refused(cert_upn_raw(V_ASN1_PRINTABLESTRING, "alice@EXAMPLE.TEST", 18), &p,
	    IDENTITY_BAD_UPN_TYPE);
}

static void
upn_nul_refused(void **state)
{
	struct identity_params p = params_default();
	struct identity_result r;

	(void)state;
	/* "alice\0@evil" would read as "alice" to a C string API */
	expect_refused_r(cert_upn_raw(V_ASN1_UTF8STRING, "alice@EXAMPLE.TEST\0.evil", 24), &p,
	    IDENTITY_NUL_BYTE, &r);
	assert_string_equal(r.value, "alice@EXAMPLE.TEST\\x00.evil");
	assert_non_null(strstr(r.message, "\\x00"));
	expect_refused(cert_upn_raw(V_ASN1_UTF8STRING, "ali\0ce@EXAMPLE.TEST", 19), &p,
	    IDENTITY_NUL_BYTE);
	expect_refused(cert_upn_raw(V_ASN1_UTF8STRING, "\0", 1), &p, IDENTITY_NUL_BYTE);
}

static void
upn_invalid_utf8_refused(void **state)
{
	static const char *bad[] = {
		"al\xffice@EXAMPLE.TEST",	/* never valid */
		"\xc0\xafroot@EXAMPLE.TEST",	/* overlong '/' */
		"\xe0\x80\xaf" "x@EXAMPLE.TEST",	/* overlong 3-byte */
		"\xed\xa0\x80x@EXAMPLE.TEST",	/* UTF-16 surrogate */
		"\xf4\x90\x80\x80x@EXAMPLE.TEST",	/* > U+10FFFF */
		"x\x80@EXAMPLE.TEST",		/* lone continuation */
		"alice@EXAMPLE.TEST\xc3",	/* truncated at the end */
		"x\xe2\x82@EXAMPLE.TEST",	/* truncated in the middle */
	};
	struct identity_params p = params_default();

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_refused(cert_upn(bad[i]), &p, IDENTITY_NOT_UTF8);
}

static void
upn_non_ascii_local_part_maps(void **state)
{
	struct identity_params p = params_default();
	struct identity_result r;
	X509 *x;

	(void)state;
	expect_ok(cert_upn("j\xc3\xbcrgen@example.test"), &p, "j\xc3\xbcrgen@EXAMPLE.TEST");
	/* the principal is UTF-8 as written; the log text escapes it */
	x = cert_upn("j\xc3\xbcrgen@example.test");
	assert_int_equal(identity_map(x, &p, &r), 0);
	assert_string_equal(r.local, "j\xc3\xbcrgen");
	assert_string_equal(r.value, "j\\xc3\\xbcrgen@example.test");
	assert_non_null(strstr(r.message, "maps to j\\xc3\\xbcrgen@EXAMPLE.TEST"));
	X509_free(x);
	expect_ok(cert_upn("\xf0\x9f\x90\xa7@example.test"), &p, "\xf0\x9f\x90\xa7@EXAMPLE.TEST");
}

static void
upn_shape_refused(void **state)
{
	struct identity_params p = params_default();

	(void)state;
	expect_refused(cert_upn(""), &p, IDENTITY_EMPTY_VALUE);
	expect_refused(cert_upn("@EXAMPLE.TEST"), &p, IDENTITY_EMPTY_LOCAL_PART);
	expect_refused(cert_upn("alice"), &p, IDENTITY_NO_SUFFIX);
	expect_refused(cert_upn("alice@"), &p, IDENTITY_NO_SUFFIX);
	expect_refused(cert_upn("a@b@EXAMPLE.TEST"), &p, IDENTITY_TWO_ATS);
	expect_refused(cert_upn("alice@EXAMPLE.TEST@"), &p, IDENTITY_TWO_ATS);
	expect_refused(cert_upn("alice@example..test"), &p, IDENTITY_BAD_SUFFIX);
	expect_refused(cert_upn("alice@.example.test"), &p, IDENTITY_BAD_SUFFIX);
	expect_refused(cert_upn("alice@example.test."), &p, IDENTITY_BAD_SUFFIX);
	expect_refused(cert_upn("alice@ex:ample.test"), &p, IDENTITY_BAD_SUFFIX);
	expect_refused(cert_upn("alice@ex\xc3\xa4mple.test"), &p, IDENTITY_BAD_SUFFIX);
}

static void
upn_bad_chars_refused(void **state)
{
	static const char *bad[] = {
		"ali ce@EXAMPLE.TEST", "alice @EXAMPLE.TEST", "alice\t@EXAMPLE.TEST",
		"alice\n@EXAMPLE.TEST", "alice\r\nX: y@EXAMPLE.TEST", "alice\x7f@EXAMPLE.TEST",
		"HTTP/admin@EXAMPLE.TEST", "krbtgt/EXAMPLE.TEST@EXAMPLE.TEST",
		"DOMAIN\\alice@EXAMPLE.TEST", "alice\\@EXAMPLE.TEST",
		"ali\xc2\x85" "ce@EXAMPLE.TEST",		/* C1 NEL */
		"ali\xc2\xa0" "ce@EXAMPLE.TEST",		/* NBSP */
		"ali\xe2\x80\x8b" "ce@EXAMPLE.TEST",	/* zero-width space */
		"ali\xe2\x80\xae" "ce@EXAMPLE.TEST",	/* right-to-left override */
		"ali\xe3\x80\x80" "ce@EXAMPLE.TEST",	/* ideographic space */
		"\xef\xbb\xbf" "alice@EXAMPLE.TEST",	/* BOM */
		"alice@EXAMPLE.TEST ",
		"alice@EXAMPLE\x01.TEST",
	};
	struct identity_params p = params_default();

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_refused(cert_upn(bad[i]), &p, IDENTITY_BAD_CHAR);
}

static void
upn_length_bounds(void **state)
{
	struct identity_params p = params_default();
	struct identity_result r;
	char v[IDENTITY_VALUE_MAX + 64], want[IDENTITY_PRINCIPAL_MAX];
	size_t n;

	(void)state;
	/* local part exactly at the bound maps */
	memset(v, 'a', IDENTITY_LOCAL_MAX);
	strcpy(v + IDENTITY_LOCAL_MAX, "@example.test");
	memset(want, 'a', IDENTITY_LOCAL_MAX);
	strcpy(want + IDENTITY_LOCAL_MAX, "@EXAMPLE.TEST");
	expect_ok(cert_upn(v), &p, want);
	/* one more byte is refused */
	memset(v, 'a', IDENTITY_LOCAL_MAX + 1);
	strcpy(v + IDENTITY_LOCAL_MAX + 1, "@example.test");
	expect_refused_r(cert_upn(v), &p, IDENTITY_TOO_LONG, &r);
	/* the logged value is cut, not the whole string */
	assert_true(strlen(r.value) < 100);
	assert_non_null(strstr(r.value, "..."));
	/* a suffix longer than a DNS name */
	n = (size_t)sprintf(v, "a@");
	while (n < 2 + IDENTITY_SUFFIX_MAX + 1)
		n += (size_t)sprintf(v + n, "abcdefghi.");
	strcpy(v + n, "test");
	expect_refused(cert_upn(v), &p, IDENTITY_TOO_LONG);
	/* a DNS label longer than 63 */
	memset(v, 0, sizeof(v));
	strcpy(v, "a@");
	memset(v + 2, 'b', 64);
	strcpy(v + 66, ".test");
	expect_refused(cert_upn(v), &p, IDENTITY_BAD_SUFFIX);
	/* the whole value */
	memset(v, 'a', IDENTITY_VALUE_MAX + 1);
	v[IDENTITY_VALUE_MAX + 1] = '\0';
	expect_refused(cert_upn(v), &p, IDENTITY_TOO_LONG);
}

static void
bad_realm_in_config_refused(void **state)
{
	static struct config_suffix_realm sr[] = {
		{ (char *)"corp.example", (char *)"CORP/EXAMPLE" },
		{ (char *)"empty.example", (char *)"" },
	};
	struct identity_params p = params_default();

	(void)state;
	p.suffix_realms = sr;
	p.n_suffix_realms = 2;
	expect_refused(cert_upn("alice@corp.example"), &p, IDENTITY_BAD_REALM);
	expect_refused(cert_upn("alice@empty.example"), &p, IDENTITY_BAD_REALM);
}

static void
san_broken_or_duplicated(void **state)
{
	static const unsigned char garbage[] = { 0x30, 0x05, 0xa0, 0x10, 0x06, 0x01, 0x2b };
	struct identity_params p = params_default();
	X509 *x;

	(void)state;
	x = cert_new("device");
	add_raw_ext(x, "2.5.29.17", garbage, (int)sizeof(garbage));
	expect_refused(cert_finish(x), &p, IDENTITY_BAD_SAN);

	x = cert_new("device");
	add_san(x, 1, gn_upn("alice@EXAMPLE.TEST"));
	add_san(x, 1, gn_upn("bob@EXAMPLE.TEST"));
	assert_int_equal(X509_get_ext_count(x), 2);
	expect_refused(cert_finish(x), &p, IDENTITY_TWO_SANS);
}

/* ---- san_email ---------------------------------------------------------- */

static void
email_source(void **state)
{
	struct identity_params p = params_default();
	X509 *x;

	(void)state;
	p.source = ID_SRC_SAN_EMAIL;
	x = cert_new("device");
	add_san(x, 1, gn_email("Alice@Corp.Example"));
	expect_ok(cert_finish(x), &p, "Alice@CORP.EXAMPLE.TEST");

	x = cert_new("device");
	add_san(x, 2, gn_email("alice@example.test"), gn_email("bob@example.test"));
	expect_refused(cert_finish(x), &p, IDENTITY_TWO_EMAILS);

	x = cert_new("device");
	add_san(x, 1, gn_upn("alice@EXAMPLE.TEST"));
	expect_refused(cert_finish(x), &p, IDENTITY_NO_EMAIL);

	expect_refused(cert_finish(cert_new("alice@example.test")), &p, IDENTITY_NO_EMAIL);

	x = cert_new("device");
	add_san(x, 1, gn_ia5(GEN_EMAIL, "al\xe9ice@example.test", 19));
	expect_refused(cert_finish(x), &p, IDENTITY_NOT_ASCII);

	x = cert_new("device");
	add_san(x, 1, gn_ia5(GEN_EMAIL, "alice@example.test\0x", 20));
	expect_refused(cert_finish(x), &p, IDENTITY_NUL_BYTE);

	x = cert_new("device");
	add_san(x, 1, gn_email("alice@elsewhere.example"));
	expect_refused(cert_finish(x), &p, IDENTITY_SUFFIX_UNMAPPED);
}

/* ---- subject_cn --------------------------------------------------------- */

static X509 *
cert_cn_typed(int type, const void *bytes, int len)
{
	X509 *x = cert_new(NULL);
	X509_NAME *name = X509_NAME_dup(X509_get_subject_name(x));

	assert_int_equal(X509_NAME_add_entry_by_NID(name, NID_commonName, type,
	    bytes, len, -1, 0), 1);
	assert_int_equal(X509_set_subject_name(x, name), 1);
	X509_NAME_free(name);
	return cert_finish(x);
}

static void
cn_source(void **state)
{
	static const char bmp[] = "\0b\0o\0b\0@\0e\0x\0a\0m\0p\0l\0e\0.\0t\0e\0s\0t";
	static const char bmp_nul[] = "\0b\0\0\0b\0@\0e\0x\0a\0m\0p\0l\0e\0.\0t\0e\0s\0t";
	struct identity_params p = params_default();
	X509 *x;
	X509_NAME *name;

	(void)state;
	p.source = ID_SRC_SUBJECT_CN;
	expect_ok(cert_finish(cert_new("alice@example.test")), &p, "alice@EXAMPLE.TEST");
	/* a plain name has no suffix to map */
	expect_refused(cert_finish(cert_new("alice")), &p, IDENTITY_NO_SUFFIX);
	expect_refused(cert_finish(cert_new(NULL)), &p, IDENTITY_NO_CN);
	/* two CNs */
	x = cert_new("alice@example.test");
	name = X509_NAME_dup(X509_get_subject_name(x));
	assert_int_equal(X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8,
	    (const unsigned char *)"bob@example.test", -1, -1, 0), 1);
	assert_int_equal(X509_set_subject_name(x, name), 1);
	X509_NAME_free(name);
	expect_refused(cert_finish(x), &p, IDENTITY_TWO_CNS);
	/* the SAN does not matter for this source */
	x = cert_new("alice@example.test");
	add_san(x, 1, gn_upn("bob@EXAMPLE.TEST"));
	expect_ok(cert_finish(x), &p, "alice@EXAMPLE.TEST");
	/* string types */
	expect_ok(cert_cn_typed(V_ASN1_BMPSTRING, bmp, (int)sizeof(bmp) - 1), &p,
	    "bob@EXAMPLE.TEST");
	expect_refused(cert_cn_typed(V_ASN1_BMPSTRING, bmp_nul, (int)sizeof(bmp_nul) - 1), &p,
	    IDENTITY_NUL_BYTE);
	/* A CN that does not convert to UTF-8 (invalid UTF8String, odd-length
	 * BMPString, lone surrogate) never gets this far: OpenSSL canonicalises names while
	 * parsing, so d2i_X509 refuses such a certificate outright. */
	expect_ok(cert_cn_typed(V_ASN1_IA5STRING, "carol@corp.example", 18), &p,
	    "carol@CORP.EXAMPLE.TEST");
	expect_refused(cert_cn_typed(V_ASN1_UTF8STRING, "alice@example.test\0", 19), &p,
	    IDENTITY_NUL_BYTE);
	expect_refused(cert_cn_typed(V_ASN1_PRINTABLESTRING, "al\xe9@example.test", 16), &p,
	    IDENTITY_NOT_ASCII);
}

/* The defensive not_utf8 branch for CNs is unreachable from the wire
 * because OpenSSL refuses such names while parsing; pin that down so a
 * change in OpenSSL shows up here. */
static void
cn_invalid_utf8_never_parses(void **state)
{
	unsigned char *der = NULL, *hit;
	const unsigned char *p;
	X509 *x = cert_finish(cert_new("alice@example.test"));
	int n = i2d_X509(x, &der);

	(void)state;
	assert_true(n > 0);
	hit = memmem(der, (size_t)n, "alice@example.test", 18);
	assert_non_null(hit);
	hit[2] = 0xff;
	p = der;
	assert_null(d2i_X509(NULL, &p, n));
	OPENSSL_free(der);
	X509_free(x);
}

/* ---- other sources, no certificate, the map_name entry point ----------- */

static void
ldap_source_and_no_cert(void **state)
{
	struct identity_params p = params_default();
	struct identity_result r;

	(void)state;
	expect_refused(NULL, &p, IDENTITY_NO_CERT);
	p.source = ID_SRC_LDAP;
	expect_refused(cert_upn("alice@EXAMPLE.TEST"), &p, IDENTITY_SOURCE_UNSUPPORTED);
	/* the name rules alone */
	p.source = ID_SRC_SAN_UPN;
	assert_int_equal(identity_map_name((const unsigned char *)"bob@corp.example", 16, 0,
	    &p, &r), 0);
	assert_string_equal(r.principal, "bob@CORP.EXAMPLE.TEST");
	assert_int_equal(identity_map_name((const unsigned char *)"bob@", 4, 0, &p, &r), -1);
	assert_int_equal(r.detail, IDENTITY_NO_SUFFIX);
	assert_int_equal(identity_map_name((const unsigned char *)"b\xe9@corp.example", 15, 1,
	    &p, &r), -1);
	assert_int_equal(r.detail, IDENTITY_NOT_ASCII);
}

static void
params_from_config_borrow(void **state)
{
	struct config *cfg = calloc(1, sizeof(*cfg));
	struct identity_params p;

	(void)state;
	assert_non_null(cfg);
	cfg->identity.source = ID_SRC_SAN_EMAIL;
	cfg->identity.realm = (char *)"EXAMPLE.TEST";
	cfg->identity.n_suffix_realms = 1;
	cfg->identity.suffix_realms[0].suffix = (char *)"corp.example";
	cfg->identity.suffix_realms[0].realm = (char *)"CORP.EXAMPLE.TEST";
	cfg->identity.allowed_suffixes.n = 1;
	cfg->identity.allowed_suffixes.v[0] = (char *)"corp.example";
	cfg->identity.allow_ia5_upn = 1;
	assert_int_equal(identity_params_from_config(cfg, &p), 0);
	assert_int_equal(p.source, ID_SRC_SAN_EMAIL);
	assert_ptr_equal(p.realm, cfg->identity.realm);
	assert_int_equal(p.n_suffix_realms, 1);
	assert_ptr_equal(p.suffix_realms, cfg->identity.suffix_realms);
	assert_int_equal(p.n_allowed_suffixes, 1);
	assert_string_equal(p.allowed_suffixes[0], "corp.example");
	assert_int_equal(p.allow_ia5_upn, 1);
	free(cfg);
}

static void
detail_table_tokens_unique(void **state)
{
	(void)state;
	for (int i = 0; i < IDENTITY__COUNT; i++) {
		const char *t = identity_detail_token((enum identity_detail)i);
		assert_true(strlen(t) > 0);
		assert_true(strlen(identity_detail_text((enum identity_detail)i)) > 0);
		for (const char *c = t; *c; c++)
			assert_true((*c >= 'a' && *c <= 'z') || *c == '_' || (*c >= '0' && *c <= '9'));
		for (int j = 0; j < i; j++)
			assert_string_not_equal(t, identity_detail_token((enum identity_detail)j));
	}
	assert_string_equal(identity_detail_token(IDENTITY_TWO_UPNS), "two_upns");
	assert_string_equal(identity_detail_token((enum identity_detail)9999), "unknown");
}

/* ---- SID extension ------------------------------------------------------ */

static void
sid_extension(void **state)
{
	const char *sid = "S-1-5-21-1004336348-1177238915-682003330-1104";
	char buf[IDENTITY_SID_MAX];
	X509 *x;

	(void)state;
	x = cert_new("device");
	add_san(x, 1, gn_upn("alice@EXAMPLE.TEST"));
	add_sid_ext(x, sid, 1);
	x = cert_finish(x);
	assert_int_equal(identity_cert_sid(x, buf, sizeof(buf)), IDENTITY_SID_OK);
	assert_string_equal(buf, sid);
	/* a buffer too small is refused, not truncated, and left alone */
	strcpy(buf, "untouched");
	assert_int_equal(identity_cert_sid(x, buf, strlen(sid)), IDENTITY_SID_MALFORMED);
	assert_string_equal(buf, "untouched");
	assert_int_equal(identity_cert_sid(x, buf, strlen(sid) + 1), IDENTITY_SID_OK);
	X509_free(x);

	/* absent */
	x = cert_upn("alice@EXAMPLE.TEST");
	assert_int_equal(identity_cert_sid(x, buf, sizeof(buf)), IDENTITY_SID_ABSENT);
	X509_free(x);
	assert_int_equal(identity_cert_sid(NULL, buf, sizeof(buf)), IDENTITY_SID_ABSENT);

	/* not a SID string */
	static const char *bad[] = { "S-1-5-x", "S-1-", "S-1-5--21", "S-1-5-", "alice", "S-1-5 21" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		x = cert_new("device");
		add_sid_ext(x, bad[i], 1);
		x = cert_finish(x);
		assert_int_equal(identity_cert_sid(x, buf, sizeof(buf)), IDENTITY_SID_MALFORMED);
		X509_free(x);
	}
	/* two SIDs in one extension, two extensions, no SID, garbage DER */
	x = cert_new("device");
	add_sid_ext(x, sid, 2);
	x = cert_finish(x);
	assert_int_equal(identity_cert_sid(x, buf, sizeof(buf)), IDENTITY_SID_MALFORMED);
	X509_free(x);
	x = cert_new("device");
	add_sid_ext(x, sid, 1);
	add_sid_ext(x, sid, 1);
	x = cert_finish(x);
	assert_int_equal(identity_cert_sid(x, buf, sizeof(buf)), IDENTITY_SID_MALFORMED);
	X509_free(x);
	x = cert_new("device");
	add_sid_ext(x, sid, 0);
	x = cert_finish(x);
	assert_int_equal(identity_cert_sid(x, buf, sizeof(buf)), IDENTITY_SID_MALFORMED);
	X509_free(x);
	x = cert_new("device");
	add_raw_ext(x, OID_SID_EXT, (const unsigned char *)"\x30\x03\x01\x02", 4);
	x = cert_finish(x);
	assert_int_equal(identity_cert_sid(x, buf, sizeof(buf)), IDENTITY_SID_MALFORMED);
	X509_free(x);
	/* the SID as a UTF8String instead of an OCTET STRING */
	x = cert_new("device");
	{
		GENERAL_NAMES *g = GENERAL_NAMES_new();
		unsigned char *der = NULL;
		int n;
		sk_GENERAL_NAME_push(g, gn_other(OID_SID, V_ASN1_UTF8STRING, sid, (int)strlen(sid)));
		n = i2d_GENERAL_NAMES(g, &der);
		add_raw_ext(x, OID_SID_EXT, der, n);
		OPENSSL_free(der);
		GENERAL_NAMES_free(g);
	}
	x = cert_finish(x);
	assert_int_equal(identity_cert_sid(x, buf, sizeof(buf)), IDENTITY_SID_MALFORMED);
	X509_free(x);
}

static int
group_setup(void **state)
{
	(void)state;
	key = EVP_EC_gen("P-256");
	return key == NULL ? -1 : 0;
}

static int
group_teardown(void **state)
{
	(void)state;
	EVP_PKEY_free(key);
	return 0;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(upn_utf8_maps_to_realm),
		cmocka_unit_test(upn_suffix_equal_to_realm_any_case),
		cmocka_unit_test(upn_suffix_realms_case_insensitive_local_kept),
		cmocka_unit_test(upn_realm_copied_verbatim),
		cmocka_unit_test(upn_suffix_realms_win_over_realm),
		cmocka_unit_test(upn_unmapped_suffix_refused),
		cmocka_unit_test(upn_allowed_suffixes_filter),
		cmocka_unit_test(upn_two_refused),
		cmocka_unit_test(upn_absent_refused),
		cmocka_unit_test(upn_and_email_each_source_picks_its_own),
		cmocka_unit_test(upn_ia5_only_when_configured),
		cmocka_unit_test(upn_other_types_refused),
		cmocka_unit_test(upn_nul_refused),
		cmocka_unit_test(upn_invalid_utf8_refused),
		cmocka_unit_test(upn_non_ascii_local_part_maps),
		cmocka_unit_test(upn_shape_refused),
		cmocka_unit_test(upn_bad_chars_refused),
		cmocka_unit_test(upn_length_bounds),
		cmocka_unit_test(bad_realm_in_config_refused),
		cmocka_unit_test(san_broken_or_duplicated),
		cmocka_unit_test(email_source),
		cmocka_unit_test(cn_source),
		cmocka_unit_test(cn_invalid_utf8_never_parses),
		cmocka_unit_test(ldap_source_and_no_cert),
		cmocka_unit_test(params_from_config_borrow),
		cmocka_unit_test(detail_table_tokens_unique),
		cmocka_unit_test(sid_extension),
	};

	return cmocka_run_group_tests_name("identity", tests, group_setup, group_teardown);
}
