/*
 * identity.c — certificate → user@REALM; the rules are in identity.h.
 *
 * Everything here reads the certificate through const accessors and keeps
 * nothing: decoded GENERAL_NAMES and converted strings are owned by the
 * call and freed at its cleanup label.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <openssl/asn1.h>
#include <openssl/objects.h>
#include <openssl/x509v3.h>

#include "identity.h"

static const struct {
	const char *token;
	const char *text;
} details[IDENTITY__COUNT] = {
#define IDENTITY_DETAIL(id, token, text) [IDENTITY_##id] = { token, text },
#include "tbl/identity_details.h"
#undef IDENTITY_DETAIL
};

/* DER contents of the OIDs we look for without a table lookup:
 * 1.3.6.1.4.1.311.25.2 (szOID_NTDS_CA_SECURITY_EXT) and .1 (the SID). */
static const unsigned char oid_sid_ext[] = { 0x2b, 6, 1, 4, 1, 0x82, 0x37, 0x19, 0x02 };
static const unsigned char oid_sid_name[] = { 0x2b, 6, 1, 4, 1, 0x82, 0x37, 0x19, 0x02, 0x01 };

#define LOGVAL_INPUT_MAX	96	/* bytes of the value shown in logs */

const char *
identity_detail_token(enum identity_detail d)
{
	return ((unsigned)d < IDENTITY__COUNT) ? details[d].token : "unknown";
}

const char *
identity_detail_text(enum identity_detail d)
{
	return ((unsigned)d < IDENTITY__COUNT) ? details[d].text : "unknown identity detail";
}

int
identity_params_from_config(const struct config *cfg, struct identity_params *params)
{
	struct identity_params p;

	memset(&p, 0, sizeof(p));
	p.source = cfg->identity.source;
	p.realm = cfg->identity.realm;
	p.n_suffix_realms = cfg->identity.n_suffix_realms;
	p.suffix_realms = cfg->identity.suffix_realms;
	p.n_allowed_suffixes = cfg->identity.allowed_suffixes.n;
	p.allowed_suffixes = cfg->identity.allowed_suffixes.v;
	p.allow_ia5_upn = cfg->identity.allow_ia5_upn;
	*params = p;
	return 0;
}

/* ---- small pure helpers ------------------------------------------------- */

static const char *
source_label(enum identity_source s)
{
	switch (s) {
	case ID_SRC_SAN_UPN:	return "UPN";
	case ID_SRC_SAN_EMAIL:	return "e-mail";
	case ID_SRC_SUBJECT_CN:	return "subject CN";
	case ID_SRC_LDAP:	return "ldap";
	}
	return "name";
}

/* Printable ASCII passes except '"' and '\\'; everything else is \xHH, so
 * the result is one unambiguous token inside quotes. At most
 * LOGVAL_INPUT_MAX input bytes, then "...". */
static void
escape_value(const unsigned char *v, size_t len, char *out, size_t outlen)
{
	static const char hex[] = "0123456789abcdef";
	size_t i, o = 0;

	for (i = 0; i < len && i < LOGVAL_INPUT_MAX; i++) {
		unsigned char c = v[i];
		if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
			if (o + 1 >= outlen)
				break;
			out[o++] = (char)c;
		} else {
			if (o + 4 >= outlen)
				break;
			out[o++] = '\\';
			out[o++] = 'x';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 15];
		}
	}
	if (i < len && o + 3 < outlen) {
		memcpy(out + o, "...", 3);
		o += 3;
	}
	out[o] = '\0';
}

/* Strict UTF-8: shortest form, no surrogates, at most U+10FFFF. Advances
 * *i past one code point. */
static int
utf8_next(const unsigned char *s, size_t len, size_t *i, uint32_t *cp)
{
	size_t k = *i, n;
	uint32_t c = s[k], min;

	if (c < 0x80) {
		*cp = c;
		*i = k + 1;
		return 0;
	} else if ((c & 0xe0) == 0xc0) {
		n = 1; c &= 0x1f; min = 0x80;
	} else if ((c & 0xf0) == 0xe0) {
		n = 2; c &= 0x0f; min = 0x800;
	} else if ((c & 0xf8) == 0xf0) {
		n = 3; c &= 0x07; min = 0x10000;
	} else {
		return -1;
	}
	if (len - k - 1 < n)
		return -1;
	for (size_t j = 1; j <= n; j++) {
		if ((s[k + j] & 0xc0) != 0x80)
			return -1;
		c = (c << 6) | (s[k + j] & 0x3f);
	}
	if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
		return -1;
	*cp = c;
	*i = k + n + 1;
	return 0;
}

/* Code points that would break principal syntax ('/', '\\') or a log line,
 * or that make two different names look the same (invisible, spaces). */
static int
bad_codepoint(uint32_t c)
{
	if (c <= 0x20 || c == 0x7f || (c >= 0x80 && c <= 0xa0))
		return 1;	/* controls, space, C1, NBSP */
	if (c == '/' || c == '\\')
		return 1;
	if (c == 0xad || c == 0x34f || c == 0x61c || c == 0x115f || c == 0x1160 ||
	    c == 0x1680 || c == 0x180e || c == 0x3000 || c == 0x3164 ||
	    c == 0xfeff || c == 0xffa0)
		return 1;
	if ((c >= 0x2000 && c <= 0x200f) ||	/* spaces, zero-width, LRM/RLM */
	    (c >= 0x2028 && c <= 0x202f) ||	/* separators, bidi embeddings */
	    (c >= 0x205f && c <= 0x206f) ||	/* math space, invisible ops, bidi isolates */
	    (c >= 0xfff9 && c <= 0xfffb) ||	/* interlinear annotation */
	    c == 0xfffe || c == 0xffff ||
	    (c >= 0xe0000 && c <= 0xe007f))	/* tags */
		return 1;
	return 0;
}

/* ASCII case-insensitive equality of a (alen bytes) and NUL-terminated b. */
static int
ascii_eq(const char *a, size_t alen, const char *b)
{
	size_t i;

	for (i = 0; i < alen; i++) {
		unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
		if (y == '\0')
			return 0;
		if (x >= 'A' && x <= 'Z')
			x = (unsigned char)(x - 'A' + 'a');
		if (y >= 'A' && y <= 'Z')
			y = (unsigned char)(y - 'A' + 'a');
		if (x != y)
			return 0;
	}
	return b[alen] == '\0';
}

/* Labels of [A-Za-z0-9_-], 1..63 bytes, separated by single dots. */
static int
dns_name_ok(const unsigned char *s, size_t len)
{
	size_t label = 0;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = s[i];
		if (c == '.') {
			if (label == 0)
				return 0;
			label = 0;
			continue;
		}
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    (c >= '0' && c <= '9') || c == '-' || c == '_'))
			return 0;
		if (++label > 63)
			return 0;
	}
	return label > 0;
}

/* A configured realm we can put after '@' as is. */
static int
realm_ok(const char *realm)
{
	size_t n = strlen(realm);

	if (n == 0 || n > IDENTITY_REALM_MAX)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)realm[i];
		if (c <= 0x20 || c >= 0x7f || c == '@' || c == '/' || c == '\\')
			return 0;
	}
	return 1;
}

/* ---- results ------------------------------------------------------------ */

static void
result_init(struct identity_result *r)
{
	memset(r, 0, sizeof(*r));
	r->reason = REASON_IDENTITY_UNMAPPED;
	r->detail = IDENTITY_INTERNAL;
}

/* Record a refusal: detail, and a message "<what>: <why>[; extra]" built
 * only from the escaped value and our own strings. Returns -1. */
static int fail(struct identity_result *r, const struct identity_params *p,
    enum identity_detail d, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int
fail(struct identity_result *r, const struct identity_params *p,
    enum identity_detail d, const char *fmt, ...)
{
	char extra[200] = "";
	va_list ap;

	if (fmt != NULL) {
		va_start(ap, fmt);
		vsnprintf(extra, sizeof(extra), fmt, ap);
		va_end(ap);
	}
	r->detail = d;
	r->reason = d == IDENTITY_INTERNAL ? REASON_OUT_OF_MEMORY : REASON_IDENTITY_UNMAPPED;
	r->principal[0] = r->local[0] = r->realm[0] = '\0';
	if (r->value[0] != '\0')
		snprintf(r->message, sizeof(r->message), "certificate %s \"%s\": %s (%s)%s%s",
		    source_label(p->source), r->value, details[d].text, details[d].token,
		    extra[0] ? "; " : "", extra);
	else
		snprintf(r->message, sizeof(r->message), "certificate: %s (%s)%s%s",
		    details[d].text, details[d].token, extra[0] ? "; " : "", extra);
	return -1;
}

/* ---- the name rules ----------------------------------------------------- */

/* Steps 1-5 of identity.h over value; r->value must already be set (or
 * is set here when empty). Fills r on success and returns 0. */
static int
map_name(const unsigned char *v, size_t len, int ascii_only,
    const struct identity_params *p, struct identity_result *r)
{
	const unsigned char *at = NULL;
	const char *realm = NULL;
	char shown[IDENTITY_LOGVAL_MAX];	/* the principal, escaped for the message */
	size_t i, local_len, suffix_len;
	unsigned n_at = 0;
	uint32_t cp;

	if (r->value[0] == '\0')
		escape_value(v, len, r->value, sizeof(r->value));

	/* 1. shape of the bytes */
	if (len == 0)
		return fail(r, p, IDENTITY_EMPTY_VALUE, NULL);
	if (len > IDENTITY_VALUE_MAX)
		return fail(r, p, IDENTITY_TOO_LONG, "%zu bytes, at most %d", len,
		    IDENTITY_VALUE_MAX);
	if (memchr(v, '\0', len) != NULL)
		return fail(r, p, IDENTITY_NUL_BYTE, NULL);
	/* 2. every code point */
	for (i = 0; i < len;) {
		if (ascii_only && v[i] >= 0x80)
			return fail(r, p, IDENTITY_NOT_ASCII, "byte 0x%02x at offset %zu",
			    v[i], i);
		if (utf8_next(v, len, &i, &cp) < 0)
			return fail(r, p, IDENTITY_NOT_UTF8, "at offset %zu", i);
		if (bad_codepoint(cp))
			return fail(r, p, IDENTITY_BAD_CHAR, "U+%04X", (unsigned)cp);
		if (cp == '@') {
			if (n_at++ == 0)
				at = v + i - 1;
		}
	}
	/* 3. local@suffix */
	if (n_at == 0)
		return fail(r, p, IDENTITY_NO_SUFFIX, NULL);
	if (n_at > 1)
		return fail(r, p, IDENTITY_TWO_ATS, NULL);
	local_len = (size_t)(at - v);
	suffix_len = len - local_len - 1;
	if (local_len == 0)
		return fail(r, p, IDENTITY_EMPTY_LOCAL_PART, NULL);
	if (suffix_len == 0)
		return fail(r, p, IDENTITY_NO_SUFFIX, NULL);
	if (local_len > IDENTITY_LOCAL_MAX)
		return fail(r, p, IDENTITY_TOO_LONG, "local part %zu bytes, at most %d",
		    local_len, IDENTITY_LOCAL_MAX);
	if (suffix_len > IDENTITY_SUFFIX_MAX)
		return fail(r, p, IDENTITY_TOO_LONG, "suffix %zu bytes, at most %d",
		    suffix_len, IDENTITY_SUFFIX_MAX);
	if (!dns_name_ok(at + 1, suffix_len))
		return fail(r, p, IDENTITY_BAD_SUFFIX, NULL);

	/* 4. allowed_suffixes: whole-suffix, case-insensitive */
	if (p->n_allowed_suffixes > 0) {
		unsigned k;
		for (k = 0; k < p->n_allowed_suffixes; k++)
			if (p->allowed_suffixes[k] != NULL &&
			    ascii_eq((const char *)at + 1, suffix_len, p->allowed_suffixes[k]))
				break;
		if (k == p->n_allowed_suffixes)
			return fail(r, p, IDENTITY_SUFFIX_NOT_ALLOWED,
			    "add it to [identity] allowed_suffixes if it is meant to log in");
	}
	/* 5. suffix -> realm: suffix_realms first, then the realm itself */
	for (unsigned k = 0; k < p->n_suffix_realms && realm == NULL; k++)
		if (p->suffix_realms[k].suffix != NULL &&
		    ascii_eq((const char *)at + 1, suffix_len, p->suffix_realms[k].suffix))
			realm = p->suffix_realms[k].realm;
	if (realm == NULL && p->realm != NULL && p->realm[0] != '\0' &&
	    ascii_eq((const char *)at + 1, suffix_len, p->realm))
		realm = p->realm;
	if (realm == NULL)
		return fail(r, p, IDENTITY_SUFFIX_UNMAPPED,
		    "map it with [identity] suffix_realms = suffix:REALM");
	if (!realm_ok(realm))
		return fail(r, p, IDENTITY_BAD_REALM, "check [identity] realm / suffix_realms");

	memcpy(r->local, v, local_len);
	r->local[local_len] = '\0';
	snprintf(r->realm, sizeof(r->realm), "%s", realm);
	snprintf(r->principal, sizeof(r->principal), "%s@%s", r->local, r->realm);
	r->reason = REASON_OK;
	r->detail = IDENTITY_NONE;
	escape_value((const unsigned char *)r->principal, strlen(r->principal),
	    shown, sizeof(shown));
	snprintf(r->message, sizeof(r->message), "certificate %s \"%s\" maps to %s",
	    source_label(p->source), r->value, shown);
	return 0;
}

int
identity_map_name(const unsigned char *value, size_t len, int ascii_only,
    const struct identity_params *params, struct identity_result *res)
{
	struct identity_result r;
	int rc;

	result_init(&r);
	rc = map_name(value, len, ascii_only, params, &r);
	*res = r;
	return rc;
}

/* ---- the certificate sources -------------------------------------------- */

/* The subjectAltName, decoded and owned by the caller (NULL when the
 * certificate has none), or -1 with the detail set. */
static int
get_san(const X509 *cert, GENERAL_NAMES **out, enum identity_detail *why)
{
	GENERAL_NAMES *g;
	int crit = -1;

	g = X509_get_ext_d2i(cert, NID_subject_alt_name, &crit, NULL);
	if (g == NULL && crit == -2) {
		*why = IDENTITY_TWO_SANS;
		return -1;
	}
	if (g == NULL && crit != -1) {
		*why = IDENTITY_BAD_SAN;	/* present but does not decode */
		return -1;
	}
	*out = g;
	return 0;
}

int
identity_map(const X509 *cert, const struct identity_params *p,
    struct identity_result *res)
{
	struct identity_result r;
	GENERAL_NAMES *gens = NULL;		/* owned */
	unsigned char *utf8 = NULL;		/* owned: CN converted to UTF-8 */
	const unsigned char *val = NULL;	/* borrowed from cert/gens/utf8 */
	size_t len = 0;
	int ascii_only = 0, n = 0, rc = -1;
	enum identity_detail why = IDENTITY_INTERNAL;

	result_init(&r);
	if (cert == NULL) {
		fail(&r, p, IDENTITY_NO_CERT, NULL);
		goto cleanup;
	}

	switch (p->source) {
	case ID_SRC_SAN_UPN: {
		const ASN1_TYPE *upn = NULL;

		if (get_san(cert, &gens, &why) < 0) {
			fail(&r, p, why, NULL);
			goto cleanup;
		}
		for (int i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
			const GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, i);
			if (gn->type == GEN_OTHERNAME &&
			    OBJ_obj2nid(gn->d.otherName->type_id) == NID_ms_upn) {
				n++;
				upn = gn->d.otherName->value;
			}
		}
		if (n == 0) {
			fail(&r, p, IDENTITY_NO_UPN, NULL);
			goto cleanup;
		}
		if (n > 1) {
			fail(&r, p, IDENTITY_TWO_UPNS, "%d UPN otherNames", n);
			goto cleanup;
		}
		if (upn == NULL || (upn->type != V_ASN1_UTF8STRING &&
		    upn->type != V_ASN1_IA5STRING)) {
			fail(&r, p, IDENTITY_BAD_UPN_TYPE, "ASN.1 type %d",
			    upn != NULL ? upn->type : -1);
			goto cleanup;
		}
		val = ASN1_STRING_get0_data(upn->value.asn1_string);
		len = (size_t)ASN1_STRING_length(upn->value.asn1_string);
		if (upn->type == V_ASN1_IA5STRING) {
			ascii_only = 1;
			if (!p->allow_ia5_upn) {
				escape_value(val, len, r.value, sizeof(r.value));
				fail(&r, p, IDENTITY_IA5_UPN_NOT_ALLOWED,
				    "set [identity] allow_ia5_upn = yes to accept it");
				goto cleanup;
			}
		}
		break;
	}
	case ID_SRC_SAN_EMAIL: {
		const ASN1_IA5STRING *mail = NULL;

		if (get_san(cert, &gens, &why) < 0) {
			fail(&r, p, why, NULL);
			goto cleanup;
		}
		for (int i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
			const GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, i);
			if (gn->type == GEN_EMAIL) {
				n++;
				mail = gn->d.rfc822Name;
			}
		}
		if (n == 0) {
			fail(&r, p, IDENTITY_NO_EMAIL, NULL);
			goto cleanup;
		}
		if (n > 1) {
			fail(&r, p, IDENTITY_TWO_EMAILS, "%d rfc822Names", n);
			goto cleanup;
		}
		val = ASN1_STRING_get0_data(mail);
		len = (size_t)ASN1_STRING_length(mail);
		ascii_only = 1;
		break;
	}
	case ID_SRC_SUBJECT_CN: {
		const X509_NAME *subj = X509_get_subject_name(cert);
		const ASN1_STRING *cn;
		int idx, t, ulen;

		idx = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
		if (idx < 0) {
			fail(&r, p, IDENTITY_NO_CN, NULL);
			goto cleanup;
		}
		if (X509_NAME_get_index_by_NID(subj, NID_commonName, idx) >= 0) {
			fail(&r, p, IDENTITY_TWO_CNS, NULL);
			goto cleanup;
		}
		cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, idx));
		t = ASN1_STRING_type(cn);
		if (t == V_ASN1_UTF8STRING || t == V_ASN1_IA5STRING ||
		    t == V_ASN1_PRINTABLESTRING) {
			/* checked byte by byte by the name rules */
			val = ASN1_STRING_get0_data(cn);
			len = (size_t)ASN1_STRING_length(cn);
			ascii_only = t != V_ASN1_UTF8STRING;
			break;
		}
		/* BMPString, UniversalString, T61String: convert */
		ulen = ASN1_STRING_to_UTF8(&utf8, cn);
		if (ulen < 0) {
			escape_value(ASN1_STRING_get0_data(cn),
			    (size_t)ASN1_STRING_length(cn), r.value, sizeof(r.value));
			fail(&r, p, IDENTITY_NOT_UTF8, "CN of ASN.1 type %d does not convert", t);
			goto cleanup;
		}
		val = utf8;
		len = (size_t)ulen;
		break;
	}
	case ID_SRC_LDAP:
	default:
		fail(&r, p, IDENTITY_SOURCE_UNSUPPORTED, NULL);
		goto cleanup;
	}

	if (val == NULL && len > 0) {
		fail(&r, p, IDENTITY_INTERNAL, NULL);
		goto cleanup;
	}
	rc = map_name(val != NULL ? val : (const unsigned char *)"", len, ascii_only, p, &r);

cleanup:
	GENERAL_NAMES_free(gens);
	OPENSSL_free(utf8);
	*res = r;
	return rc;
}

/* ---- the SID extension -------------------------------------------------- */

static int
oid_is(const ASN1_OBJECT *o, const unsigned char *der, size_t len)
{
	return o != NULL && (size_t)OBJ_length(o) == len &&
	    memcmp(OBJ_get0_data(o), der, len) == 0;
}

/* "S-1-" then digit groups separated by single dashes. */
static int
sid_ok(const unsigned char *s, size_t len)
{
	if (len < 5 || len > IDENTITY_SID_MAX || memcmp(s, "S-1-", 4) != 0)
		return 0;
	for (size_t i = 4; i < len; i++) {
		if (s[i] == '-') {
			if (s[i - 1] == '-' || i + 1 == len)
				return 0;
		} else if (s[i] < '0' || s[i] > '9') {
			return 0;
		}
	}
	return 1;
}

enum identity_sid
identity_cert_sid(const X509 *cert, char *buf, size_t len)
{
	const X509_EXTENSION *ext = NULL;
	GENERAL_NAMES *gens = NULL;		/* owned */
	const ASN1_OCTET_STRING *sid = NULL;	/* borrowed from gens */
	const ASN1_OCTET_STRING *data;
	const unsigned char *der, *end;
	enum identity_sid rc = IDENTITY_SID_MALFORMED;
	int n = 0, i;

	if (cert == NULL)
		return IDENTITY_SID_ABSENT;
	for (i = 0; i < X509_get_ext_count(cert); i++) {
		const X509_EXTENSION *e = X509_get_ext(cert, i);
		if (oid_is(X509_EXTENSION_get_object((X509_EXTENSION *)e), oid_sid_ext,
		    sizeof(oid_sid_ext))) {
			if (ext != NULL)
				goto cleanup;		/* twice: ambiguous */
			ext = e;
		}
	}
	if (ext == NULL) {
		rc = IDENTITY_SID_ABSENT;
		goto cleanup;
	}
	data = X509_EXTENSION_get_data((X509_EXTENSION *)ext);
	der = ASN1_STRING_get0_data(data);
	end = der + ASN1_STRING_length(data);
	gens = d2i_GENERAL_NAMES(NULL, &der, (long)(end - der));
	if (gens == NULL || der != end)
		goto cleanup;
	for (i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
		const GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, i);
		if (gn->type != GEN_OTHERNAME ||
		    !oid_is(gn->d.otherName->type_id, oid_sid_name, sizeof(oid_sid_name)))
			continue;
		n++;
		if (gn->d.otherName->value == NULL ||
		    gn->d.otherName->value->type != V_ASN1_OCTET_STRING)
			goto cleanup;
		sid = gn->d.otherName->value->value.octet_string;
	}
	if (n != 1 || sid == NULL)
		goto cleanup;
	if (!sid_ok(ASN1_STRING_get0_data(sid), (size_t)ASN1_STRING_length(sid)) ||
	    (size_t)ASN1_STRING_length(sid) >= len)
		goto cleanup;
	memcpy(buf, ASN1_STRING_get0_data(sid), (size_t)ASN1_STRING_length(sid));
	buf[ASN1_STRING_length(sid)] = '\0';
	rc = IDENTITY_SID_OK;

cleanup:
	GENERAL_NAMES_free(gens);
	return rc;
}
