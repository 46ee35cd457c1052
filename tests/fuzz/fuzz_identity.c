/*
 * fuzz_identity.c — libFuzzer target for the certificate → identity path:
 * DER bytes → d2i_X509 → identity_map (every source, IA5 UPN on and off)
 * and identity_cert_sid; the same bytes also go straight into the name
 * rules (identity_map_name), which a DER corpus rarely reaches with odd
 * bytes. Beyond the sanitizers it checks the module's promises: a mapped
 * principal is "local@REALM" with one '@', no '/', '\\', control or space
 * byte, and every log text is printable ASCII.
 *
 *   make fuzz && build/fuzz/fuzz_identity -max_total_time=60 tests/fuzz/corpus/identity
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/x509.h>

#include "identity.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct config_suffix_realm suffix_realms[] = {
	{ (char *)"corp.example", (char *)"CORP.EXAMPLE.TEST" },
	{ (char *)"Mixed.Example", (char *)"MIXED.TEST" },
};
static char *allowed[] = { (char *)"example.test", (char *)"corp.example" };

static void
check_text(const char *s, size_t max)
{
	size_t n = strnlen(s, max);

	if (n == max)
		abort();		/* not terminated within its buffer */
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f)
			abort();	/* raw byte would reach a log line */
}

static void
check(int rc, const struct identity_result *r)
{
	check_text(r->message, sizeof(r->message));
	check_text(r->value, sizeof(r->value));
	if (r->message[0] == '\0')
		abort();
	if (rc != 0) {
		if (rc != -1 || r->detail == IDENTITY_NONE || r->principal[0] != '\0' ||
		    (r->reason != REASON_IDENTITY_UNMAPPED && r->reason != REASON_OUT_OF_MEMORY))
			abort();
		return;
	}
	if (r->reason != REASON_OK || r->detail != IDENTITY_NONE)
		abort();
	const char *at = strchr(r->principal, '@');
	if (at == NULL || at == r->principal || strchr(at + 1, '@') != NULL ||
	    strcmp(at + 1, r->realm) != 0 ||
	    strncmp(r->principal, r->local, (size_t)(at - r->principal)) != 0 ||
	    strlen(r->local) != (size_t)(at - r->principal) ||
	    strlen(r->local) > IDENTITY_LOCAL_MAX)
		abort();
	for (const char *c = r->principal; *c; c++)
		if ((unsigned char)*c <= 0x20 || *c == 0x7f || *c == '/' || *c == '\\')
			abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const enum identity_source sources[] = {
		ID_SRC_SAN_UPN, ID_SRC_SAN_EMAIL, ID_SRC_SUBJECT_CN, ID_SRC_LDAP,
	};
	struct identity_params p;
	struct identity_result r;
	const unsigned char *der = data;
	char sid[IDENTITY_SID_MAX];
	X509 *x;

	memset(&p, 0, sizeof(p));
	p.realm = "EXAMPLE.TEST";
	p.suffix_realms = suffix_realms;
	p.n_suffix_realms = 2;

	x = d2i_X509(NULL, &der, (long)size);
	if (x != NULL) {
		for (size_t s = 0; s < sizeof(sources) / sizeof(sources[0]); s++) {
			p.source = sources[s];
			for (int ia5 = 0; ia5 <= 1; ia5++) {
				p.allow_ia5_upn = ia5;
				p.n_allowed_suffixes = 0;
				p.allowed_suffixes = NULL;
				check(identity_map(x, &p, &r), &r);
				p.n_allowed_suffixes = 2;
				p.allowed_suffixes = allowed;
				check(identity_map(x, &p, &r), &r);
			}
		}
		if (identity_cert_sid(x, sid, sizeof(sid)) == IDENTITY_SID_OK &&
		    (strncmp(sid, "S-1-", 4) != 0 || strspn(sid + 4, "0123456789-") != strlen(sid + 4)))
			abort();
		X509_free(x);
	}

	p.source = ID_SRC_SAN_UPN;
	p.n_allowed_suffixes = 0;
	p.allowed_suffixes = NULL;
	check(identity_map_name(data, size, 0, &p, &r), &r);
	check(identity_map_name(data, size, 1, &p, &r), &r);
	return 0;
}
