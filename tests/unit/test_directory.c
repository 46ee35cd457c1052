/*
 * test_directory.c — the pure half of the directory checks
 * (directory_rules.c): RFC 4515 escaping with hostile values, objectSid
 * rendering, certificate facts, altSecurityIdentities parsing and matching
 * (strong and weak forms, Windows' spellings, malformed values), the
 * certificate search filter, the account decision, and the result cache.
 * The engine (libldap, threads) is driven against a real Samba AD DC by
 * tests/integration/test_directory.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ctype.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "directory.h"

/* ---- filters ----------------------------------------------------------------- */

static void
test_escape_hostile(void **state)
{
	char out[256];
	const unsigned char nul[] = { 'a', 0, 'b' };

	(void)state;
	assert_int_equal(directory_filter_escape((const unsigned char *)"*)(uid=*", 8, out,
	    sizeof(out)), 0);
	assert_string_equal(out, "\\2a\\29\\28uid=\\2a");
	assert_int_equal(directory_filter_escape((const unsigned char *)"a\\b", 3, out,
	    sizeof(out)), 0);
	assert_string_equal(out, "a\\5cb");
	assert_int_equal(directory_filter_escape(nul, sizeof(nul), out, sizeof(out)), 0);
	assert_string_equal(out, "a\\00b");
	/* UTF-8 and controls become escaped octets */
	assert_int_equal(directory_filter_escape((const unsigned char *)"j\xc3\xbcrg\n", 6, out,
	    sizeof(out)), 0);
	assert_string_equal(out, "j\\c3\\bcrg\\0a");
	/* plain names pass */
	assert_int_equal(directory_filter_escape((const unsigned char *)"alice@example.test", 18,
	    out, sizeof(out)), 0);
	assert_string_equal(out, "alice@example.test");
	/* no room: refused, never truncated */
	assert_int_equal(directory_filter_escape((const unsigned char *)"abc", 3, out, 3), -1);
	assert_int_equal(directory_filter_escape((const unsigned char *)"abc", 3, out, 4), 0);
	assert_int_equal(directory_filter_escape((const unsigned char *)"*", 1, out, 3), -1);
	assert_int_equal(directory_filter_escape((const unsigned char *)"*", 1, out, 4), 0);
}

static void
test_filter_build(void **state)
{
	char out[256];

	(void)state;
	assert_int_equal(directory_filter_build("(userPrincipalName=%u)",
	    (const unsigned char *)"*)(objectClass=*", 16, out, sizeof(out)), 0);
	assert_string_equal(out, "(userPrincipalName=\\2a\\29\\28objectClass=\\2a)");
	assert_int_equal(directory_filter_build("(|(mail=%u)(userPrincipalName=%u))",
	    (const unsigned char *)"a(b", 3, out, sizeof(out)), 0);
	assert_string_equal(out, "(|(mail=a\\28b)(userPrincipalName=a\\28b))");
	/* a lone % stays */
	assert_int_equal(directory_filter_build("(cn=50%%u)", (const unsigned char *)"x", 1, out,
	    sizeof(out)), 0);
	assert_string_equal(out, "(cn=50%x)");
	assert_int_equal(directory_filter_build("(userPrincipalName=%u)",
	    (const unsigned char *)"alice", 5, out, 20), -1);
}

/* ---- SIDs ------------------------------------------------------------------------ */

static void
test_sid_string(void **state)
{
	/* S-1-5-21-1004336348-1177238915-682003330-1104 */
	const unsigned char sid[] = {
		1, 5, 0, 0, 0, 0, 0, 5,
		21, 0, 0, 0,
		0xdc, 0xf4, 0xdc, 0x3b, 0x83, 0x3d, 0x2b, 0x46, 0x82, 0x8b, 0xa6, 0x28,
		0x50, 0x04, 0, 0,
	};
	const unsigned char everyone[] = { 1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0 };
	const unsigned char big_auth[] = { 1, 0, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc };
	unsigned char bad[sizeof(sid)];
	char out[IDENTITY_SID_MAX];

	(void)state;
	assert_int_equal(directory_sid_string(sid, sizeof(sid), out, sizeof(out)), 0);
	assert_string_equal(out, "S-1-5-21-1004336348-1177238915-682003330-1104");
	assert_int_equal(directory_sid_string(everyone, sizeof(everyone), out, sizeof(out)), 0);
	assert_string_equal(out, "S-1-1-0");
	assert_int_equal(directory_sid_string(big_auth, sizeof(big_auth), out, sizeof(out)), 0);
	assert_string_equal(out, "S-1-0x123456789ABC");
	/* malformed: short, count disagrees with the length, revision 2 */
	assert_int_equal(directory_sid_string(sid, 7, out, sizeof(out)), -1);
	assert_int_equal(directory_sid_string(sid, sizeof(sid) - 1, out, sizeof(out)), -1);
	memcpy(bad, sid, sizeof(sid));
	bad[1] = 16;
	assert_int_equal(directory_sid_string(bad, sizeof(bad), out, sizeof(out)), -1);
	bad[1] = 5;
	bad[0] = 2;
	assert_int_equal(directory_sid_string(bad, sizeof(bad), out, sizeof(out)), -1);
	/* no room */
	assert_int_equal(directory_sid_string(sid, sizeof(sid), out, 20), -1);
}

/* ---- certificates ------------------------------------------------------------------ */

static void
add_name(GENERAL_NAMES *gens, int type, const char *value)
{
	GENERAL_NAME *gn = GENERAL_NAME_new();
	ASN1_IA5STRING *s = ASN1_IA5STRING_new();

	assert_non_null(gn);
	assert_int_equal(ASN1_STRING_set(s, value, -1), 1);
	GENERAL_NAME_set0_value(gn, type, s);
	assert_true(sk_GENERAL_NAME_push(gens, gn) > 0);
}

/* A certificate: issuer O=<org>, CN=EAS Device CA; subject as given;
 * serial from bytes; SAN with the given e-mail and URI (NULL = none). */
static X509 *
make_cert(const char *issuer_o, const unsigned char *serial, size_t serial_len,
    const char *subject_o, const char *subject_cn, const char *email, const char *uri,
    int with_ski)
{
	X509 *x = X509_new();
	EVP_PKEY *key = EVP_EC_gen("P-256");
	X509_NAME *in = X509_NAME_new(), *sn = X509_NAME_new();
	ASN1_INTEGER *ser = ASN1_INTEGER_new();
	BIGNUM *bn = BN_bin2bn(serial, (int)serial_len, NULL);
	X509V3_CTX ctx;

	assert_non_null(x);
	assert_non_null(key);
	X509_set_version(x, 2);
	assert_non_null(BN_to_ASN1_INTEGER(bn, ser));
	X509_set_serialNumber(x, ser);
	X509_NAME_add_entry_by_txt(in, "O", MBSTRING_UTF8, (const unsigned char *)issuer_o, -1, -1, 0);
	X509_NAME_add_entry_by_txt(in, "CN", MBSTRING_UTF8, (const unsigned char *)"EAS Device CA",
	    -1, -1, 0);
	X509_NAME_add_entry_by_txt(sn, "O", MBSTRING_UTF8, (const unsigned char *)subject_o, -1, -1, 0);
	X509_NAME_add_entry_by_txt(sn, "CN", MBSTRING_UTF8, (const unsigned char *)subject_cn,
	    -1, -1, 0);
	X509_set_issuer_name(x, in);
	X509_set_subject_name(x, sn);
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), 3600);
	X509_set_pubkey(x, key);
	X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
	if (with_ski) {
		X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, NID_subject_key_identifier, "hash");
		assert_non_null(e);
		X509_add_ext(x, e, -1);
		X509_EXTENSION_free(e);
	}
	if (email || uri) {
		GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();

		if (email)
			add_name(gens, GEN_EMAIL, email);
		if (uri)
			add_name(gens, GEN_URI, uri);
		assert_int_equal(X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, 0), 1);
		GENERAL_NAMES_free(gens);
	}
	assert_true(X509_sign(x, key, EVP_sha256()) > 0);
	X509_NAME_free(in);
	X509_NAME_free(sn);
	ASN1_INTEGER_free(ser);
	BN_free(bn);
	EVP_PKEY_free(key);
	return x;
}

struct fixture {
	X509 *x;
	struct directory_cert c;
};

static const unsigned char SERIAL[] = { 0x8f, 0x01, 0x02 };	/* top bit set */

static int
setup_cert(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	char err[256];

	assert_non_null(f);
	f->x = make_cert("Example Lab", SERIAL, sizeof(SERIAL), "Example Devices", "erin",
	    "erin@example.test", "tag:microsoft.com,2022-09-14:sid:S-1-5-21-1-2-3-1104", 1);
	assert_int_equal(directory_cert_info(f->x, &f->c, err, sizeof(err)), 0);
	*state = f;
	return 0;
}

static int
teardown_cert(void **state)
{
	struct fixture *f = *state;

	X509_free(f->x);
	free(f);
	return 0;
}

static void
test_cert_info(void **state)
{
	struct fixture *f = *state;
	const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(f->x);
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned mdlen;
	char hex[DIRECTORY_HEX_MAX];

	assert_string_equal(f->c.issuer, "o=example lab,cn=eas device ca");
	assert_string_equal(f->c.issuer_text, "O=Example Lab,CN=EAS Device CA");
	assert_string_equal(f->c.subject, "o=example devices,cn=erin");
	assert_string_equal(f->c.serial_rev, "02018f");
	assert_string_equal(f->c.email, "erin@example.test");
	assert_int_equal(f->c.sid_state, IDENTITY_SID_ABSENT);
	assert_int_equal(f->c.sid_url_state, IDENTITY_SID_OK);
	assert_string_equal(f->c.sid_url, "S-1-5-21-1-2-3-1104");
	assert_non_null(ski);
	for (int i = 0; i < ASN1_STRING_length(ski); i++)
		snprintf(hex + 2 * i, 3, "%02x", ASN1_STRING_get0_data(ski)[i]);
	assert_string_equal(f->c.ski, hex);
	assert_int_equal(X509_digest(f->x, EVP_sha1(), md, &mdlen), 1);
	for (unsigned i = 0; i < mdlen; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	assert_string_equal(f->c.sha1_cert, hex);
}

static enum directory_altsec
match(const struct directory_cert *c, const char *v)
{
	return directory_altsec_match(v, strlen(v), c);
}

static void
test_cert_info_odd_names(void **state)
{
	const unsigned char one[] = { 0x01 };
	struct directory_cert c;
	char err[256];
	X509 *x;

	(void)state;
	/* a comma in a value is quoted in the Windows form, escaped in ours;
	 * no SKI extension: the key's SHA-1 stands in; a bad SID URL */
	x = make_cert("Example, Inc.", one, 1, "Devices", "a+b", NULL,
	    "tag:microsoft.com,2022-09-14:sid:S-1-5-21-x", 0);
	assert_int_equal(directory_cert_info(x, &c, err, sizeof(err)), 0);
	assert_string_equal(c.issuer_text, "O=\"Example, Inc.\",CN=EAS Device CA");
	assert_string_equal(c.issuer, "o=example\\, inc.,cn=eas device ca");
	assert_string_equal(c.subject, "o=devices,cn=a\\+b");
	assert_string_equal(c.serial_rev, "01");
	assert_string_equal(c.ski, c.sha1_key);
	assert_int_equal(c.sid_url_state, IDENTITY_SID_MALFORMED);
	assert_string_equal(c.email, "");
	assert_int_equal(match(&c, "X509:<I>O=\"Example, Inc.\",CN=EAS Device CA<SR>01"), DIR_ALTSEC_ISSUER_SERIAL);
	assert_int_equal(match(&c, "X509:<I>O=Example\\, Inc.,CN=EAS Device CA<SR>01"), DIR_ALTSEC_ISSUER_SERIAL);
	assert_int_equal(match(&c, "X509:<I>O=Example\\2C Inc.,CN=EAS Device CA<SR>01"), DIR_ALTSEC_ISSUER_SERIAL);
	/* the unescaped comma makes another RDN: no match */
	assert_int_equal(match(&c, "X509:<I>O=Example, Inc.,CN=EAS Device CA<SR>01"), DIR_ALTSEC_NONE);
	X509_free(x);

	/* a NUL inside a certificate's CN cannot pass for the shorter name */
	{
		X509_NAME *nm;

		x = make_cert("Example Lab", one, 1, "Devices", "erin", NULL, NULL, 1);
		nm = X509_get_subject_name(x);
		X509_NAME_ENTRY_free(X509_NAME_delete_entry(nm, 1));
		X509_NAME_add_entry_by_txt(nm, "CN", V_ASN1_UTF8STRING,
		    (const unsigned char *)"erin\0x", 6, -1, 0);
		assert_int_equal(directory_cert_info(x, &c, err, sizeof(err)), 0);
		assert_string_equal(c.subject, "o=devices,cn=erin\\00x");
		assert_int_equal(match(&c, "X509:<S>O=Devices,CN=erin"), DIR_ALTSEC_NONE);
		assert_int_equal(match(&c, "X509:<S>O=Devices,CN=erin\\00x"), DIR_ALTSEC_NONE);
		X509_free(x);
	}
}

static void
test_altsec_strong(void **state)
{
	struct fixture *f = *state;
	char v[512];

	/* issuer + serial (bytes reversed), Windows' spelling and variants */
	assert_int_equal(match(&f->c, "X509:<I>O=Example Lab,CN=EAS Device CA<SR>02018f"),
	    DIR_ALTSEC_ISSUER_SERIAL);
	assert_int_equal(match(&f->c, "X509:<I>O=Example Lab, CN=EAS Device CA<SR>02018F00"),
	    DIR_ALTSEC_ISSUER_SERIAL);
	assert_int_equal(match(&f->c, "x509:<i>o=example lab;cn=eas device ca<sr>02018F"),
	    DIR_ALTSEC_ISSUER_SERIAL);
	assert_int_equal(match(&f->c, "X509:<I>ST=x,CN=EAS Device CA<SR>02018f"), DIR_ALTSEC_NONE);
	/* RFC 4514 order (reversed) is not Windows' form */
	assert_int_equal(match(&f->c, "X509:<I>CN=EAS Device CA,O=Example Lab<SR>02018f"),
	    DIR_ALTSEC_NONE);
	/* the serial as printed (not reversed), another serial, bad hex */
	assert_int_equal(match(&f->c, "X509:<I>O=Example Lab,CN=EAS Device CA<SR>8f0102"),
	    DIR_ALTSEC_NONE);
	assert_int_equal(match(&f->c, "X509:<I>O=Example Lab,CN=EAS Device CA<SR>02018e"),
	    DIR_ALTSEC_NONE);
	assert_int_equal(match(&f->c, "X509:<I>O=Example Lab,CN=EAS Device CA<SR>02018"),
	    DIR_ALTSEC_NONE);
	assert_int_equal(match(&f->c, "X509:<I>O=Example Lab,CN=EAS Device CA<SR>0201xx"),
	    DIR_ALTSEC_NONE);
	assert_int_equal(match(&f->c, "X509:<I>O=Example Lab,CN=EAS Device CA<SR>"),
	    DIR_ALTSEC_NONE);
	assert_int_equal(match(&f->c, "X509:<I><SR>02018f"), DIR_ALTSEC_NONE);
	/* SKI */
	snprintf(v, sizeof(v), "X509:<SKI>%s", f->c.ski);
	assert_int_equal(match(&f->c, v), DIR_ALTSEC_SKI);
	for (char *p = v + 10; *p; p++)
		*p = (char)toupper((unsigned char)*p);
	assert_int_equal(match(&f->c, v), DIR_ALTSEC_SKI);
	v[strlen(v) - 1] = v[strlen(v) - 1] == '0' ? '1' : '0';
	assert_int_equal(match(&f->c, v), DIR_ALTSEC_NONE);
	/* SHA1-PUKEY: the thumbprint, or the key's hash */
	snprintf(v, sizeof(v), "X509:<SHA1-PUKEY>%s", f->c.sha1_cert);
	assert_int_equal(match(&f->c, v), DIR_ALTSEC_SHA1_PUKEY);
	snprintf(v, sizeof(v), "X509:<SHA1-PUKEY>%s", f->c.sha1_key);
	assert_int_equal(match(&f->c, v), DIR_ALTSEC_SHA1_PUKEY);
	snprintf(v, sizeof(v), "X509:<SHA1-PUKEY>%s", f->c.ski);
	assert_int_equal(match(&f->c, v) == DIR_ALTSEC_SHA1_PUKEY,
	    strcmp(f->c.ski, f->c.sha1_key) == 0);
	assert_true(DIRECTORY_ALTSEC_STRONG(DIR_ALTSEC_ISSUER_SERIAL));
	assert_true(DIRECTORY_ALTSEC_STRONG(DIR_ALTSEC_SKI));
	assert_true(DIRECTORY_ALTSEC_STRONG(DIR_ALTSEC_SHA1_PUKEY));
}

static void
test_altsec_weak_and_junk(void **state)
{
	struct fixture *f = *state;
	const char with_nul[] = "X509:<S>O=Example Devices,CN=erin\0x";

	assert_int_equal(match(&f->c, "X509:<I>O=Example Lab,CN=EAS Device CA<S>O=Example "
	    "Devices,CN=erin"), DIR_ALTSEC_ISSUER_SUBJECT);
	assert_int_equal(match(&f->c, "X509:<S>O=Example Devices,CN=erin"), DIR_ALTSEC_SUBJECT);
	assert_int_equal(match(&f->c, "X509:<S> o = Example Devices , cn = ERIN "),
	    DIR_ALTSEC_SUBJECT);
	assert_int_equal(match(&f->c, "X509:<S>O=Example Devices,CN=erin2"), DIR_ALTSEC_NONE);
	assert_int_equal(match(&f->c, "X509:<S>O=Example Devices,CN=erin,"), DIR_ALTSEC_NONE);
	assert_int_equal(match(&f->c, "X509:<S>O=Example Devices,CN=erin,OU=x"), DIR_ALTSEC_NONE);
	assert_int_equal(match(&f->c, "X509:<S>CN=erin"), DIR_ALTSEC_NONE);
	assert_int_equal(match(&f->c, "X509:<RFC822>Erin@Example.Test"), DIR_ALTSEC_RFC822);
	assert_int_equal(match(&f->c, "X509:<RFC822>erin@example.tes"), DIR_ALTSEC_NONE);
	assert_false(DIRECTORY_ALTSEC_STRONG(DIR_ALTSEC_ISSUER_SUBJECT));
	assert_false(DIRECTORY_ALTSEC_STRONG(DIR_ALTSEC_SUBJECT));
	assert_false(DIRECTORY_ALTSEC_STRONG(DIR_ALTSEC_RFC822));
	/* other kinds and garbage */
	assert_int_equal(match(&f->c, "Kerberos:erin@EXAMPLE.TEST"), DIR_ALTSEC_NONE);
	assert_int_equal(match(&f->c, "X509:"), DIR_ALTSEC_NONE);
	assert_int_equal(match(&f->c, "X509"), DIR_ALTSEC_NONE);
	assert_int_equal(match(&f->c, "X509:<I>"), DIR_ALTSEC_NONE);
	assert_int_equal(match(&f->c, "X509:<I>O=\"Example Lab<SR>02018f"), DIR_ALTSEC_NONE);
	assert_int_equal(match(&f->c, "X509:<I>=x<SR>02018f"), DIR_ALTSEC_NONE);
	assert_int_equal(match(&f->c, "X509:<S>\\"), DIR_ALTSEC_NONE);
	assert_int_equal(match(&f->c, "X509:<XYZ>02018f"), DIR_ALTSEC_NONE);
	assert_int_equal(match(&f->c, ""), DIR_ALTSEC_NONE);
	assert_int_equal(directory_altsec_match(NULL, 0, &f->c), DIR_ALTSEC_NONE);
	/* a NUL inside the value (the length says more) is not the subject */
	assert_int_equal(directory_altsec_match(with_nul, sizeof(with_nul) - 1, &f->c),
	    DIR_ALTSEC_NONE);
	/* a huge DN does not overflow, it just does not match */
	{
		char big[6000];

		memcpy(big, "X509:<S>CN=", 11);
		memset(big + 11, 'a', sizeof(big) - 12);
		big[sizeof(big) - 1] = '\0';
		assert_int_equal(match(&f->c, big), DIR_ALTSEC_NONE);
	}
	assert_string_equal(directory_altsec_name(DIR_ALTSEC_SKI), "ski");
	assert_string_equal(directory_altsec_name(DIR_ALTSEC_ISSUER_SERIAL), "issuer_serial");
}

static void
test_cert_filter(void **state)
{
	struct fixture *f = *state;
	char out[DIRECTORY_FILTER_MAX], want[512];
	const unsigned char one[] = { 0x01 };
	struct directory_cert c;
	char err[256];
	X509 *x;

	assert_int_equal(directory_cert_filter(&f->c, 0, out, sizeof(out)), 0);
	snprintf(want, sizeof(want), "(altSecurityIdentities=X509:<SKI>%s)", f->c.ski);
	assert_non_null(strstr(out, want));
	snprintf(want, sizeof(want), "(altSecurityIdentities=X509:<SHA1-PUKEY>%s)", f->c.sha1_cert);
	assert_non_null(strstr(out, want));
	assert_non_null(strstr(out, "(altSecurityIdentities=X509:<I>*<SR>02018f)"));
	assert_non_null(strstr(out, "(altSecurityIdentities=X509:<I>*<SR>02018f00)"));
	assert_null(strstr(out, "<S>*"));
	assert_null(strstr(out, "RFC822"));
	assert_int_equal(out[0], '(');
	assert_int_equal(out[1], '|');
	assert_int_equal(directory_cert_filter(&f->c, 1, out, sizeof(out)), 0);
	assert_non_null(strstr(out, "(altSecurityIdentities=X509:<I>*<S>*erin*)"));
	assert_non_null(strstr(out, "(altSecurityIdentities=X509:<S>*erin*)"));
	assert_non_null(strstr(out, "(altSecurityIdentities=X509:<RFC822>erin@example.test)"));
	assert_int_equal(directory_cert_filter(&f->c, 1, out, 100), -1);

	/* a hostile subject cannot widen the search */
	x = make_cert("Example Lab", one, 1, "Devices", "*)(objectClass=*", NULL, NULL, 1);
	assert_int_equal(directory_cert_info(x, &c, err, sizeof(err)), 0);
	assert_int_equal(directory_cert_filter(&c, 1, out, sizeof(out)), 0);
	assert_non_null(strstr(out, "<S>*\\2a\\29\\28objectClass=\\2a*)"));
	assert_null(strstr(out, "(objectClass=*"));
	assert_null(strstr(out, "<SR>0100"));		/* top bit clear: no sign byte */
	X509_free(x);
}

/* ---- the decision -------------------------------------------------------------------- */

static void
base_account(struct directory_account *a)
{
	memset(a, 0, sizeof(*a));
	snprintf(a->dn, sizeof(a->dn), "CN=bsmith,CN=Users,DC=ad,DC=example,DC=test");
	snprintf(a->sam, sizeof(a->sam), "bsmith");
	a->has_uac = 1;
	a->uac = 0x200;
	a->has_uac_computed = 1;
	a->account_expires = INT64_MAX;
	snprintf(a->sid, sizeof(a->sid), "S-1-5-21-1-2-3-1105");
	a->in_group = -1;
}

static struct directory_policy
policy(enum strong_mapping s, int group)
{
	struct directory_policy p = {
		.strong = s, .require_group = group, .realm = "AD.EXAMPLE.TEST",
		.now_filetime = directory_filetime(1800000000),
	};
	return p;
}

static void
test_decide_account(void **state)
{
	struct directory_policy p = policy(STRONG_OFF, 0);
	struct directory_account a;
	struct directory_verdict v;

	(void)state;
	base_account(&a);
	directory_decide(&a, NULL, &p, &v);
	assert_true(v.allow);
	assert_string_equal(v.principal, "bsmith@AD.EXAMPLE.TEST");
	assert_int_equal(v.flags, 0);

	a.uac |= DIRECTORY_UF_ACCOUNTDISABLE;
	directory_decide(&a, NULL, &p, &v);
	assert_false(v.allow);
	assert_int_equal(v.cls, KCD_ERR_LDAP_DENIED);
	assert_string_equal(v.name, "disabled");
	assert_string_equal(v.principal, "");
	assert_non_null(strstr(v.text, "CN=bsmith"));

	/* locked: the computed attribute decides when present ... */
	base_account(&a);
	a.uac_computed = DIRECTORY_UF_LOCKOUT;
	directory_decide(&a, NULL, &p, &v);
	assert_string_equal(v.name, "locked");
	assert_false(v.allow);
	base_account(&a);
	a.lockout_time = 133000000000000000;	/* lockout over, not yet reset */
	directory_decide(&a, NULL, &p, &v);
	assert_true(v.allow);
	/* ... else lockoutTime, and UAC 0x10 always */
	a.has_uac_computed = 0;
	directory_decide(&a, NULL, &p, &v);
	assert_string_equal(v.name, "locked");
	base_account(&a);
	a.uac |= DIRECTORY_UF_LOCKOUT;
	directory_decide(&a, NULL, &p, &v);
	assert_string_equal(v.name, "locked");

	/* expiry */
	base_account(&a);
	a.account_expires = p.now_filetime - 1;
	directory_decide(&a, NULL, &p, &v);
	assert_string_equal(v.name, "expired");
	a.account_expires = p.now_filetime + 10000000;
	directory_decide(&a, NULL, &p, &v);
	assert_true(v.allow);
	a.account_expires = 0;
	directory_decide(&a, NULL, &p, &v);
	assert_true(v.allow);

	/* group */
	p = policy(STRONG_OFF, 1);
	base_account(&a);
	a.in_group = 0;
	directory_decide(&a, NULL, &p, &v);
	assert_string_equal(v.name, "not_in_group");
	a.in_group = -1;
	directory_decide(&a, NULL, &p, &v);
	assert_string_equal(v.name, "not_in_group");
	a.in_group = 1;
	directory_decide(&a, NULL, &p, &v);
	assert_true(v.allow);

	/* disabled wins over everything after it */
	a.uac |= DIRECTORY_UF_ACCOUNTDISABLE;
	a.in_group = 0;
	directory_decide(&a, NULL, &p, &v);
	assert_string_equal(v.name, "disabled");

	/* a sAMAccountName that would change the principal */
	p = policy(STRONG_OFF, 0);
	base_account(&a);
	snprintf(a.sam, sizeof(a.sam), "evil@OTHER.REALM");
	directory_decide(&a, NULL, &p, &v);
	assert_string_equal(v.name, "bad_account");
	snprintf(a.sam, sizeof(a.sam), "svc/host");
	directory_decide(&a, NULL, &p, &v);
	assert_string_equal(v.name, "bad_account");
	a.sam[0] = '\0';
	directory_decide(&a, NULL, &p, &v);
	assert_string_equal(v.name, "bad_account");
	snprintf(a.sam, sizeof(a.sam), "bob");
	p.realm = "";
	directory_decide(&a, NULL, &p, &v);
	assert_string_equal(v.name, "bad_account");
}

static void
test_decide_strong(void **state)
{
	struct directory_policy enf = policy(STRONG_ENFORCE, 0), aud = policy(STRONG_AUDIT, 0);
	struct directory_account a;
	struct directory_cert c;
	struct directory_verdict v;

	(void)state;
	base_account(&a);
	memset(&c, 0, sizeof(c));
	c.sid_state = IDENTITY_SID_ABSENT;
	c.sid_url_state = IDENTITY_SID_ABSENT;

	/* nothing strong: enforce refuses, audit passes with the flag */
	directory_decide(&a, &c, &enf, &v);
	assert_false(v.allow);
	assert_string_equal(v.name, "strong_mapping");
	directory_decide(&a, &c, &aud, &v);
	assert_true(v.allow);
	assert_int_equal(v.flags, KCD_ID_AUDIT);
	assert_string_equal(v.name, "strong_mapping");
	assert_string_equal(v.principal, "bsmith@AD.EXAMPLE.TEST");
	/* no certificate at all */
	directory_decide(&a, NULL, &enf, &v);
	assert_string_equal(v.name, "strong_mapping");

	/* a weak binding is not enough; a strong one is */
	a.altsec = DIR_ALTSEC_ISSUER_SUBJECT;
	directory_decide(&a, &c, &enf, &v);
	assert_string_equal(v.name, "strong_mapping");
	assert_non_null(strstr(v.text, "weakly"));
	a.altsec = DIR_ALTSEC_SKI;
	directory_decide(&a, &c, &enf, &v);
	assert_true(v.allow);
	assert_int_equal(v.flags, 0);

	/* the SID extension */
	a.altsec = DIR_ALTSEC_NONE;
	c.sid_state = IDENTITY_SID_OK;
	snprintf(c.sid, sizeof(c.sid), "S-1-5-21-1-2-3-1105");
	directory_decide(&a, &c, &enf, &v);
	assert_true(v.allow);
	snprintf(c.sid, sizeof(c.sid), "S-1-5-21-1-2-3-1107");
	directory_decide(&a, &c, &enf, &v);
	assert_string_equal(v.name, "sid_mismatch");
	assert_non_null(strstr(v.text, "S-1-5-21-1-2-3-1107"));
	/* a SID that differs is refused even with a strong altSecurityIdentities */
	a.altsec = DIR_ALTSEC_ISSUER_SERIAL;
	directory_decide(&a, &c, &enf, &v);
	assert_string_equal(v.name, "sid_mismatch");
	directory_decide(&a, &c, &aud, &v);
	assert_true(v.allow);
	assert_string_equal(v.name, "sid_mismatch");
	/* an account without objectSid cannot match */
	a.altsec = DIR_ALTSEC_NONE;
	snprintf(c.sid, sizeof(c.sid), "S-1-5-21-1-2-3-1105");
	a.sid[0] = '\0';
	directory_decide(&a, &c, &enf, &v);
	assert_string_equal(v.name, "sid_mismatch");
	base_account(&a);
	c.sid_state = IDENTITY_SID_MALFORMED;
	directory_decide(&a, &c, &enf, &v);
	assert_string_equal(v.name, "strong_mapping");

	/* the SAN URL stands in for a missing extension */
	c.sid_state = IDENTITY_SID_ABSENT;
	c.sid_url_state = IDENTITY_SID_OK;
	snprintf(c.sid_url, sizeof(c.sid_url), "S-1-5-21-1-2-3-1105");
	directory_decide(&a, &c, &enf, &v);
	assert_true(v.allow);
	snprintf(c.sid_url, sizeof(c.sid_url), "S-1-5-21-1-2-3-9");
	directory_decide(&a, &c, &enf, &v);
	assert_string_equal(v.name, "sid_mismatch");
	c.sid_url_state = IDENTITY_SID_MALFORMED;
	directory_decide(&a, &c, &enf, &v);
	assert_string_equal(v.name, "strong_mapping");

	/* off: nothing is looked at */
	{
		struct directory_policy off = policy(STRONG_OFF, 0);

		directory_decide(&a, &c, &off, &v);
		assert_true(v.allow);
		assert_int_equal(v.flags, 0);
	}
	/* account checks come first */
	a.uac |= DIRECTORY_UF_ACCOUNTDISABLE;
	directory_decide(&a, &c, &aud, &v);
	assert_string_equal(v.name, "disabled");
}

/* ---- the cache ------------------------------------------------------------------------ */

static void
key_of(unsigned char k[DIRECTORY_KEY_LEN], unsigned n)
{
	memset(k, 0, DIRECTORY_KEY_LEN);
	memcpy(k, &n, sizeof(n));
	k[31] = (unsigned char)n;
}

static void
test_cache(void **state)
{
	struct directory_cache *c = directory_cache_new(3);
	struct directory_verdict v, out;
	unsigned char k[DIRECTORY_KEY_LEN];

	(void)state;
	assert_non_null(c);
	memset(&v, 0, sizeof(v));
	v.allow = 1;
	snprintf(v.principal, sizeof(v.principal), "alice@AD.EXAMPLE.TEST");
	key_of(k, 1);
	assert_int_equal(directory_cache_get(c, k, 0, &out), 0);
	assert_int_equal(directory_cache_put(c, k, 1000, 500, &v), 0);
	assert_int_equal(directory_cache_get(c, k, 1499, &out), 1);
	assert_string_equal(out.principal, "alice@AD.EXAMPLE.TEST");
	assert_int_equal(directory_cache_get(c, k, 1500, &out), 0);	/* expired, removed */
	assert_int_equal(directory_cache_count(c), 0);
	/* ttl 0 stores nothing */
	assert_int_equal(directory_cache_put(c, k, 0, 0, &v), 0);
	assert_int_equal(directory_cache_count(c), 0);
	/* bounded: the oldest goes */
	for (unsigned i = 1; i <= 4; i++) {
		key_of(k, i);
		v.flags = i;
		assert_int_equal(directory_cache_put(c, k, i, 1000, &v), 0);
	}
	assert_int_equal(directory_cache_count(c), 3);
	key_of(k, 1);
	assert_int_equal(directory_cache_get(c, k, 10, &out), 0);
	key_of(k, 4);
	assert_int_equal(directory_cache_get(c, k, 10, &out), 1);
	assert_int_equal(out.flags, 4);
	/* same key replaces, and moves to the end */
	key_of(k, 2);
	v.allow = 0;
	snprintf(v.name, sizeof(v.name), "disabled");
	assert_int_equal(directory_cache_put(c, k, 500, 1000, &v), 0);
	assert_int_equal(directory_cache_count(c), 3);
	assert_int_equal(directory_cache_get(c, k, 600, &out), 1);
	assert_false(out.allow);
	assert_string_equal(out.name, "disabled");
	/* sweep: keys 3 and 4 expire at 1003/1004, key 2 at 1500 */
	assert_int_equal(directory_cache_expire(c, 1004), 2);
	assert_int_equal(directory_cache_count(c), 1);
	assert_int_equal(directory_cache_expire(c, 1500), 1);
	assert_int_equal(directory_cache_count(c), 0);
	directory_cache_free(c);
	directory_cache_free(NULL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_escape_hostile),
		cmocka_unit_test(test_filter_build),
		cmocka_unit_test(test_sid_string),
		cmocka_unit_test_setup_teardown(test_cert_info, setup_cert, teardown_cert),
		cmocka_unit_test(test_cert_info_odd_names),
		cmocka_unit_test_setup_teardown(test_altsec_strong, setup_cert, teardown_cert),
		cmocka_unit_test_setup_teardown(test_altsec_weak_and_junk, setup_cert, teardown_cert),
		cmocka_unit_test_setup_teardown(test_cert_filter, setup_cert, teardown_cert),
		cmocka_unit_test(test_decide_account),
		cmocka_unit_test(test_decide_strong),
		cmocka_unit_test(test_cache),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
