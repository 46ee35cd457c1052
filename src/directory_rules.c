/*
 * directory_rules.c — the pure half of the directory checks (directory.h):
 * filter escaping, SIDs, certificate facts, altSecurityIdentities, the
 * account decision and the result cache. No I/O, no logging, no globals.
 *
 * Everything read from the directory or a certificate is untrusted here:
 * lengths are checked before every copy, and what does not parse simply
 * does not match.
 */
#include <ctype.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/asn1.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509v3.h>

#include "codec.h"
#include "directory.h"

#define SID_URL_PREFIX	"tag:microsoft.com,2022-09-14:sid:"

/* ---- filters -------------------------------------------------------------- */

int
directory_filter_escape(const unsigned char *in, size_t len, char *out, size_t outlen)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;

	for (size_t i = 0; i < len; i++) {
		unsigned char ch = in[i];
		int esc = ch == '*' || ch == '(' || ch == ')' || ch == '\\' ||
		    ch < 0x20 || ch >= 0x7f;

		if (o + (esc ? 3 : 1) >= outlen)
			return -1;
		if (esc) {
			out[o++] = '\\';
			out[o++] = hex[ch >> 4];
			out[o++] = hex[ch & 0xf];
		} else {
			out[o++] = (char)ch;
		}
	}
	if (o >= outlen)
		return -1;
	out[o] = '\0';
	return 0;
}

int
directory_filter_build(const char *tmpl, const unsigned char *value, size_t len,
    char *out, size_t outlen)
{
	size_t o = 0;

	if (outlen == 0)
		return -1;
	for (const char *t = tmpl; *t; t++) {
		if (t[0] == '%' && t[1] == 'u') {
			if (directory_filter_escape(value, len, out + o, outlen - o) != 0)
				return -1;
			o += strlen(out + o);
			t++;
			continue;
		}
		if (o + 1 >= outlen)
			return -1;
		out[o++] = *t;
	}
	out[o] = '\0';
	return 0;
}

/* Append the escaped bytes to a filter being built at *o. */
static int
put_escaped(char *out, size_t outlen, size_t *o, const char *s, size_t len)
{
	if (*o >= outlen || directory_filter_escape((const unsigned char *)s, len,
	    out + *o, outlen - *o) != 0)
		return -1;
	*o += strlen(out + *o);
	return 0;
}

static int
put_raw(char *out, size_t outlen, size_t *o, const char *s)
{
	size_t n = strlen(s);

	if (*o + n >= outlen)
		return -1;
	memcpy(out + *o, s, n + 1);
	*o += n;
	return 0;
}

/* ---- SIDs ------------------------------------------------------------------ */

int
directory_sid_string(const unsigned char *bin, size_t len, char *out, size_t outlen)
{
	uint64_t auth = 0;
	unsigned count;
	size_t o;
	int n;

	if (len < 8 || bin[0] != 1)
		return -1;
	count = bin[1];
	if (count > 15 || len != 8 + 4 * (size_t)count)
		return -1;
	for (int i = 2; i < 8; i++)
		auth = (auth << 8) | bin[i];
	if (auth >> 32)
		n = snprintf(out, outlen, "S-1-0x%012" PRIX64, auth);
	else
		n = snprintf(out, outlen, "S-1-%" PRIu64, auth);
	if (n < 0 || (size_t)n >= outlen)
		return -1;
	o = (size_t)n;
	for (unsigned i = 0; i < count; i++) {
		const unsigned char *p = bin + 8 + 4 * i;
		uint32_t sub = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
		    (uint32_t)p[3] << 24;

		n = snprintf(out + o, outlen - o, "-%" PRIu32, sub);
		if (n < 0 || (size_t)n >= outlen - o)
			return -1;
		o += (size_t)n;
	}
	return 0;
}

static int
sid_syntax_ok(const char *s, size_t len)
{
	if (len < 5 || len >= IDENTITY_SID_MAX || strncmp(s, "S-1-", 4) != 0)
		return 0;
	for (size_t i = 4; i < len; i++)
		if (!(isdigit((unsigned char)s[i]) || (s[i] == '-' && s[i - 1] != '-')))
			return 0;
	return s[len - 1] != '-';
}

/* ---- distinguished names ---------------------------------------------------- */

/*
 * The normalised form: "type=value" per attribute, '+' inside an RDN, ','
 * between RDNs, in certificate order; types are canonical lower-case names
 * (aliases folded: ST and S, E and emailAddress, ...), values trimmed and
 * ASCII-lower-cased with '\\' ',' '+' '=' escaped by a backslash, so two
 * names are equal exactly when their forms are.
 */
struct dnbuf {
	char *p;
	size_t len, cap;
	int err;
};

static void
dn_putc(struct dnbuf *b, char c)
{
	if (b->len + 1 >= b->cap) {
		b->err = 1;
		return;
	}
	b->p[b->len++] = c;
	b->p[b->len] = '\0';
}

static void
dn_puts(struct dnbuf *b, const char *s)
{
	while (*s)
		dn_putc(b, *s++);
}

/* Append a value: trimmed, lower-cased ASCII, specials escaped. */
static void
dn_put_value(struct dnbuf *b, const unsigned char *v, size_t len)
{
	while (len > 0 && v[0] == ' ')
		v++, len--;
	while (len > 0 && v[len - 1] == ' ')
		len--;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = v[i];

		if (c < 0x20 || c == 0x7f) {
			/* never a raw control byte (a NUL would end the string) */
			static const char hex[] = "0123456789abcdef";

			dn_putc(b, '\\');
			dn_putc(b, hex[c >> 4]);
			dn_putc(b, hex[c & 0xf]);
			continue;
		}
		if (c == '\\' || c == ',' || c == '+' || c == '=')
			dn_putc(b, '\\');
		dn_putc(b, (char)(c < 0x80 ? tolower(c) : c));
	}
}

static const struct {
	int nid;
	const char *name;	/* canonical, lower case */
	const char *ms;		/* Windows' label */
} dn_types[] = {
	{ NID_commonName, "cn", "CN" },
	{ NID_organizationName, "o", "O" },
	{ NID_organizationalUnitName, "ou", "OU" },
	{ NID_countryName, "c", "C" },
	{ NID_localityName, "l", "L" },
	{ NID_stateOrProvinceName, "s", "S" },
	{ NID_streetAddress, "street", "STREET" },
	{ NID_domainComponent, "dc", "DC" },
	{ NID_pkcs9_emailAddress, "e", "E" },
	{ NID_title, "t", "T" },
	{ NID_givenName, "g", "G" },
	{ NID_surname, "sn", "SN" },
	{ NID_initials, "i", "I" },
	{ NID_serialNumber, "serialnumber", "SERIALNUMBER" },
};

/* Aliases written in altSecurityIdentities -> canonical name. */
static const struct {
	const char *alias;
	const char *name;
} dn_aliases[] = {
	{ "st", "s" }, { "email", "e" }, { "emailaddress", "e" }, { "title", "t" },
	{ "gn", "g" }, { "givenname", "g" }, { "surname", "sn" }, { "initials", "i" },
	{ "commonname", "cn" }, { "organizationname", "o" },
	{ "organizationalunitname", "ou" }, { "countryname", "c" },
	{ "localityname", "l" }, { "stateorprovincename", "s" },
	{ "streetaddress", "street" }, { "domaincomponent", "dc" },
};

/* Canonical type name of a certificate attribute into buf. */
static void
cert_type(const ASN1_OBJECT *obj, char *buf, size_t len, int ms)
{
	int nid = OBJ_obj2nid(obj);
	char dotted[128];

	for (size_t i = 0; i < sizeof(dn_types) / sizeof(dn_types[0]); i++)
		if (dn_types[i].nid == nid) {
			snprintf(buf, len, "%s", ms ? dn_types[i].ms : dn_types[i].name);
			return;
		}
	if (OBJ_obj2txt(dotted, sizeof(dotted), obj, 1) <= 0)
		snprintf(dotted, sizeof(dotted), "?");
	snprintf(buf, len, "%s%s", ms ? "OID." : "oid.", dotted);
}

/* Both forms of a certificate name. The Windows text form quotes values
 * holding separators, as CertNameToStr does. 0 or -1. */
static int
cert_dn(const X509_NAME *name, char *norm, char *text, size_t len)
{
	struct dnbuf n = { norm, 0, len, 0 }, t = { text, 0, len, 0 };
	int last_set = -1;

	norm[0] = text[0] = '\0';
	for (int i = 0; i < X509_NAME_entry_count(name); i++) {
		const X509_NAME_ENTRY *e = X509_NAME_get_entry(name, i);
		unsigned char *utf8 = NULL;
		char type[160];
		int ulen, set = X509_NAME_ENTRY_set(e), quote = 0;

		ulen = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(e));
		if (ulen < 0)
			return -1;
		if (i > 0) {
			dn_putc(&n, set == last_set ? '+' : ',');
			dn_putc(&t, set == last_set ? '+' : ',');
		}
		last_set = set;
		cert_type(X509_NAME_ENTRY_get_object(e), type, sizeof(type), 0);
		dn_puts(&n, type);
		dn_putc(&n, '=');
		dn_put_value(&n, utf8, (size_t)ulen);
		cert_type(X509_NAME_ENTRY_get_object(e), type, sizeof(type), 1);
		dn_puts(&t, type);
		dn_putc(&t, '=');
		for (int k = 0; k < ulen; k++)
			if (strchr(",+=\"<>#;\n", utf8[k]) != NULL)
				quote = 1;
		if (ulen > 0 && (utf8[0] == ' ' || utf8[ulen - 1] == ' '))
			quote = 1;
		if (quote)
			dn_putc(&t, '"');
		for (int k = 0; k < ulen; k++) {
			if (utf8[k] == '"')
				dn_putc(&t, '"');
			dn_putc(&t, (char)utf8[k]);
		}
		if (quote)
			dn_putc(&t, '"');
		OPENSSL_free(utf8);
	}
	return n.err || t.err ? -1 : 0;
}

/* Normalise a DN written in altSecurityIdentities (len bytes) into out.
 * Accepts ',' or ';' between RDNs, '+' inside one, "quoted" values with ""
 * for a quote, and RFC 4514 backslash escapes (\, or \2C). 0 or -1. */
static int
parse_dn(const char *s, size_t len, char *out, size_t outlen)
{
	struct dnbuf b = { out, 0, outlen, 0 };
	unsigned char val[DIRECTORY_DN_MAX];
	size_t i = 0;

	if (outlen == 0)
		return -1;
	out[0] = '\0';
	while (i < len) {
		char type[64];
		size_t tl = 0, vl = 0, trail = 0;

		while (i < len && s[i] == ' ')
			i++;
		while (i < len && s[i] != '=' && tl + 1 < sizeof(type))
			type[tl++] = (char)tolower((unsigned char)s[i++]);
		if (i >= len || s[i] != '=')
			return -1;
		i++;
		while (tl > 0 && type[tl - 1] == ' ')
			tl--;
		type[tl] = '\0';
		if (tl == 0)
			return -1;
		while (i < len && s[i] == ' ')
			i++;
		if (i < len && s[i] == '"') {
			for (i++;; i++) {
				if (i >= len)
					return -1;		/* unterminated */
				if (s[i] == '"' && i + 1 < len && s[i + 1] == '"') {
					i++;
				} else if (s[i] == '"') {
					i++;
					break;
				} else if (s[i] == '\\' && i + 1 < len) {
					i++;
				}
				if (vl + 1 >= sizeof(val))
					return -1;
				val[vl++] = (unsigned char)s[i];
			}
			trail = vl;
			while (i < len && s[i] == ' ')
				i++;
		} else {
			for (; i < len && s[i] != ',' && s[i] != ';' && s[i] != '+'; i++) {
				unsigned char c = (unsigned char)s[i];

				if (c == '\\') {
					int h, l;

					if (i + 1 >= len)
						return -1;
					if (i + 2 < len && (h = codec_hex_value((unsigned char)s[i + 1])) >= 0 &&
					    (l = codec_hex_value((unsigned char)s[i + 2])) >= 0) {
						c = (unsigned char)(h << 4 | l);
						i += 2;
					} else {
						c = (unsigned char)s[++i];
					}
					if (c < 0x20 || c == 0x7f)
						return -1;	/* no control bytes in names */
					if (vl + 1 >= sizeof(val))
						return -1;
					val[vl++] = c;
					trail = vl;	/* an escaped space is kept */
					continue;
				}
				if (vl + 1 >= sizeof(val))
					return -1;
				val[vl++] = c;
				if (c != ' ')
					trail = vl;
			}
		}
		vl = trail;
		/* canonical type */
		if (strncmp(type, "oid.", 4) == 0) {
			/* already canonical */
		} else if (isdigit((unsigned char)type[0])) {
			if (tl + 4 >= sizeof(type))
				return -1;
			memmove(type + 4, type, tl + 1);
			memcpy(type, "oid.", 4);
		} else {
			for (size_t k = 0; k < sizeof(dn_aliases) / sizeof(dn_aliases[0]); k++)
				if (strcmp(type, dn_aliases[k].alias) == 0) {
					snprintf(type, sizeof(type), "%s", dn_aliases[k].name);
					break;
				}
		}
		dn_puts(&b, type);
		dn_putc(&b, '=');
		dn_put_value(&b, val, vl);
		if (i < len) {
			if (s[i] == '+')
				dn_putc(&b, '+');
			else if (s[i] == ',' || s[i] == ';')
				dn_putc(&b, ',');
			else
				return -1;
			i++;
			if (i >= len)
				return -1;		/* trailing separator */
		}
	}
	return b.err || b.len == 0 ? -1 : 0;
}

/* ---- certificate facts -------------------------------------------------------- */

static void
to_hex(const unsigned char *p, size_t n, char *out, size_t outlen)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;

	for (size_t i = 0; i < n && o + 2 < outlen; i++) {
		out[o++] = hex[p[i] >> 4];
		out[o++] = hex[p[i] & 0xf];
	}
	out[o] = '\0';
}

static enum identity_sid
cert_sid_url(const X509 *cert, char *buf, size_t len)
{
	GENERAL_NAMES *gens;
	enum identity_sid rc = IDENTITY_SID_ABSENT;
	size_t plen = strlen(SID_URL_PREFIX);
	int found = 0;

	gens = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
	if (gens == NULL)
		return IDENTITY_SID_ABSENT;
	for (int i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
		const GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, i);
		const char *u;
		size_t ul;

		if (gn->type != GEN_URI)
			continue;
		u = (const char *)ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier);
		ul = (size_t)ASN1_STRING_length(gn->d.uniformResourceIdentifier);
		if (ul < plen || strncasecmp(u, SID_URL_PREFIX, plen) != 0)
			continue;
		if (found++ || !sid_syntax_ok(u + plen, ul - plen) || ul - plen >= len ||
		    memchr(u, '\0', ul) != NULL) {
			rc = IDENTITY_SID_MALFORMED;
			break;
		}
		memcpy(buf, u + plen, ul - plen);
		buf[ul - plen] = '\0';
		rc = IDENTITY_SID_OK;
	}
	GENERAL_NAMES_free(gens);
	return rc;
}

static void
cert_email(const X509 *cert, char *buf, size_t len)
{
	GENERAL_NAMES *gens;
	int n = 0;

	buf[0] = '\0';
	gens = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
	if (gens == NULL)
		return;
	for (int i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
		const GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, i);
		size_t el;

		if (gn->type != GEN_EMAIL)
			continue;
		el = (size_t)ASN1_STRING_length(gn->d.rfc822Name);
		if (n++ == 0 && el < len &&
		    memchr(ASN1_STRING_get0_data(gn->d.rfc822Name), '\0', el) == NULL) {
			memcpy(buf, ASN1_STRING_get0_data(gn->d.rfc822Name), el);
			buf[el] = '\0';
		}
	}
	if (n != 1)
		buf[0] = '\0';		/* several: none is "the" address */
	GENERAL_NAMES_free(gens);
}

int
directory_cert_info(const X509 *cert, struct directory_cert *out, char *err, size_t errlen)
{
	struct directory_cert *c = NULL;
	const ASN1_OCTET_STRING *skid;
	BIGNUM *bn = NULL;
	unsigned char md[EVP_MAX_MD_SIZE], ser[64];
	unsigned mdlen = 0;
	int n, rc = -1;

	if ((c = calloc(1, sizeof(*c))) == NULL) {
		snprintf(err, errlen, "out of memory");
		goto cleanup;
	}
	if (cert_dn(X509_get_issuer_name(cert), c->issuer, c->issuer_text, sizeof(c->issuer)) != 0 ||
	    cert_dn(X509_get_subject_name(cert), c->subject, c->subject_text,
	    sizeof(c->subject)) != 0) {
		snprintf(err, errlen, "the certificate's issuer or subject name is too "
		    "long or undecodable");
		goto cleanup;
	}
	bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
	if (bn == NULL || (n = BN_num_bytes(bn)) > (int)sizeof(ser)) {
		snprintf(err, errlen, "the certificate's serial number is undecodable or "
		    "longer than %zu bytes", sizeof(ser));
		goto cleanup;
	}
	BN_bn2bin(bn, ser);
	if (n == 0)
		ser[n++] = 0;
	for (int i = 0; i < n / 2; i++) {
		unsigned char t = ser[i];

		ser[i] = ser[n - 1 - i];
		ser[n - 1 - i] = t;
	}
	to_hex(ser, (size_t)n, c->serial_rev, sizeof(c->serial_rev));
	if ((skid = X509_get0_subject_key_id((X509 *)cert)) != NULL) {
		to_hex(ASN1_STRING_get0_data(skid), (size_t)ASN1_STRING_length(skid),
		    c->ski, sizeof(c->ski));
		if ((size_t)ASN1_STRING_length(skid) * 2 >= sizeof(c->ski))
			c->ski[0] = '\0';	/* absurdly long: matches nothing */
	} else if (X509_pubkey_digest(cert, EVP_sha1(), md, &mdlen) == 1) {
		to_hex(md, mdlen, c->ski, sizeof(c->ski));
	}
	if (X509_digest(cert, EVP_sha1(), md, &mdlen) != 1) {
		snprintf(err, errlen, "cannot hash the certificate");
		goto cleanup;
	}
	to_hex(md, mdlen, c->sha1_cert, sizeof(c->sha1_cert));
	if (X509_pubkey_digest(cert, EVP_sha1(), md, &mdlen) != 1) {
		snprintf(err, errlen, "cannot hash the certificate's public key");
		goto cleanup;
	}
	to_hex(md, mdlen, c->sha1_key, sizeof(c->sha1_key));
	cert_email(cert, c->email, sizeof(c->email));
	c->sid_state = identity_cert_sid(cert, c->sid, sizeof(c->sid));
	c->sid_url_state = cert_sid_url(cert, c->sid_url, sizeof(c->sid_url));
	*out = *c;
	rc = 0;
cleanup:
	BN_free(bn);
	free(c);
	return rc;
}

/* ---- altSecurityIdentities ------------------------------------------------------ */

const char *
directory_altsec_name(enum directory_altsec k)
{
	switch (k) {
	case DIR_ALTSEC_NONE:		return "none";
	case DIR_ALTSEC_ISSUER_SUBJECT:	return "issuer_subject";
	case DIR_ALTSEC_SUBJECT:	return "subject";
	case DIR_ALTSEC_RFC822:		return "rfc822";
	case DIR_ALTSEC_ISSUER_SERIAL:	return "issuer_serial";
	case DIR_ALTSEC_SKI:		return "ski";
	case DIR_ALTSEC_SHA1_PUKEY:	return "sha1_pukey";
	}
	return "unknown";
}

/* Does s (len bytes) start with tag (case-insensitive)? */
static int
has_tag(const char *s, size_t len, const char *tag)
{
	size_t tl = strlen(tag);

	return len >= tl && strncasecmp(s, tag, tl) == 0;
}

/* Find "<tag>" in s[0..len); offset or -1. */
static long
find_tag(const char *s, size_t len, const char *tag)
{
	size_t tl = strlen(tag);

	for (size_t i = 0; i + tl <= len; i++)
		if (strncasecmp(s + i, tag, tl) == 0)
			return (long)i;
	return -1;
}

/* Hex (len bytes) equal to want (lower-case hex)? Spaces are not allowed;
 * trailing "00" pairs are dropped from serials (trim_zero) because Windows
 * keeps the DER sign byte, which the reversed form puts last. */
static int
hex_equal(const char *s, size_t len, const char *want, int trim_zero)
{
	size_t wl = strlen(want);

	if (len == 0 || len % 2 != 0 || wl == 0)
		return 0;
	for (size_t i = 0; i < len; i++)
		if (codec_hex_value((unsigned char)s[i]) < 0)
			return 0;
	if (trim_zero)
		while (len > 2 && s[len - 2] == '0' && s[len - 1] == '0')
			len -= 2;
	return len == wl && strncasecmp(s, want, len) == 0;
}

static int
dn_equal(const char *s, size_t len, const char *want)
{
	char norm[DIRECTORY_DN_MAX];

	return want[0] != '\0' && parse_dn(s, len, norm, sizeof(norm)) == 0 &&
	    strcmp(norm, want) == 0;
}

enum directory_altsec
directory_altsec_match(const char *value, size_t len, const struct directory_cert *c)
{
	const char *s;
	long at;

	if (value == NULL || !has_tag(value, len, "X509:") || memchr(value, '\0', len) != NULL)
		return DIR_ALTSEC_NONE;
	s = value + 5;
	len -= 5;
	if (has_tag(s, len, "<SKI>"))
		return hex_equal(s + 5, len - 5, c->ski, 0) ? DIR_ALTSEC_SKI : DIR_ALTSEC_NONE;
	if (has_tag(s, len, "<SHA1-PUKEY>"))
		return hex_equal(s + 12, len - 12, c->sha1_cert, 0) ||
		    hex_equal(s + 12, len - 12, c->sha1_key, 0) ?
		    DIR_ALTSEC_SHA1_PUKEY : DIR_ALTSEC_NONE;
	if (has_tag(s, len, "<RFC822>"))
		return c->email[0] != '\0' && len - 8 == strlen(c->email) &&
		    strncasecmp(s + 8, c->email, len - 8) == 0 ?
		    DIR_ALTSEC_RFC822 : DIR_ALTSEC_NONE;
	if (has_tag(s, len, "<S>"))
		return dn_equal(s + 3, len - 3, c->subject) ? DIR_ALTSEC_SUBJECT : DIR_ALTSEC_NONE;
	if (!has_tag(s, len, "<I>"))
		return DIR_ALTSEC_NONE;
	s += 3;
	len -= 3;
	if ((at = find_tag(s, len, "<SR>")) >= 0)
		return dn_equal(s, (size_t)at, c->issuer) &&
		    hex_equal(s + at + 4, len - (size_t)at - 4, c->serial_rev, 1) ?
		    DIR_ALTSEC_ISSUER_SERIAL : DIR_ALTSEC_NONE;
	if ((at = find_tag(s, len, "<S>")) >= 0)
		return dn_equal(s, (size_t)at, c->issuer) &&
		    dn_equal(s + at + 3, len - (size_t)at - 3, c->subject) ?
		    DIR_ALTSEC_ISSUER_SUBJECT : DIR_ALTSEC_NONE;
	return DIR_ALTSEC_NONE;
}

/* The subject's last attribute value as written (for a substring search),
 * taken from the Windows text form: after the last unquoted '=' … */
static int
subject_last_value(const struct directory_cert *c, char *out, size_t outlen)
{
	const char *t = c->subject_text, *v = NULL;
	int inq = 0;

	for (const char *p = t; *p; p++) {
		if (*p == '"')
			inq = !inq;
		else if (!inq && *p == '=' && (p == t || p[-1] != '\\'))
			v = p + 1;
	}
	if (v == NULL)
		return -1;
	if (*v == '"')
		v++;
	snprintf(out, outlen, "%s", v);
	if (*out && out[strlen(out) - 1] == '"')
		out[strlen(out) - 1] = '\0';
	/* a doubled quote inside makes the text differ from the value: skip */
	return out[0] == '\0' || strchr(out, '"') != NULL ? -1 : 0;
}

int
directory_cert_filter(const struct directory_cert *c, int allow_weak, char *out, size_t outlen)
{
	char last[DIRECTORY_DN_MAX];
	size_t o = 0;
	int hi;

	if (put_raw(out, outlen, &o, "(|") != 0)
		return -1;
	if (c->ski[0] && (put_raw(out, outlen, &o, "(altSecurityIdentities=X509:<SKI>") ||
	    put_escaped(out, outlen, &o, c->ski, strlen(c->ski)) || put_raw(out, outlen, &o, ")")))
		return -1;
	if (put_raw(out, outlen, &o, "(altSecurityIdentities=X509:<SHA1-PUKEY>") ||
	    put_raw(out, outlen, &o, c->sha1_cert) || put_raw(out, outlen, &o, ")") ||
	    put_raw(out, outlen, &o, "(altSecurityIdentities=X509:<SHA1-PUKEY>") ||
	    put_raw(out, outlen, &o, c->sha1_key) || put_raw(out, outlen, &o, ")"))
		return -1;
	/* <I>…<SR>serial: the issuer is compared after the search */
	if (put_raw(out, outlen, &o, "(altSecurityIdentities=X509:<I>*<SR>") ||
	    put_raw(out, outlen, &o, c->serial_rev) || put_raw(out, outlen, &o, ")"))
		return -1;
	/* the same with Windows' sign byte, when the top bit is set */
	hi = codec_hex_value((unsigned char)c->serial_rev[strlen(c->serial_rev) - 2]);
	if (hi >= 8 && (put_raw(out, outlen, &o, "(altSecurityIdentities=X509:<I>*<SR>") ||
	    put_raw(out, outlen, &o, c->serial_rev) || put_raw(out, outlen, &o, "00)")))
		return -1;
	if (allow_weak) {
		if (subject_last_value(c, last, sizeof(last)) == 0 &&
		    (put_raw(out, outlen, &o, "(altSecurityIdentities=X509:<I>*<S>*") ||
		    put_escaped(out, outlen, &o, last, strlen(last)) ||
		    put_raw(out, outlen, &o, "*)(altSecurityIdentities=X509:<S>*") ||
		    put_escaped(out, outlen, &o, last, strlen(last)) ||
		    put_raw(out, outlen, &o, "*)")))
			return -1;
		if (c->email[0] && (put_raw(out, outlen, &o, "(altSecurityIdentities=X509:<RFC822>") ||
		    put_escaped(out, outlen, &o, c->email, strlen(c->email)) ||
		    put_raw(out, outlen, &o, ")")))
			return -1;
	}
	return put_raw(out, outlen, &o, ")");
}

/* ---- the decision ------------------------------------------------------------ */

int64_t
directory_filetime(int64_t unix_seconds)
{
	return (unix_seconds + INT64_C(11644473600)) * INT64_C(10000000);
}

static void
deny(struct directory_verdict *v, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
deny(struct directory_verdict *v, const char *name, const char *fmt, ...)
{
	va_list ap;

	v->allow = 0;
	v->cls = KCD_ERR_LDAP_DENIED;
	v->principal[0] = '\0';
	snprintf(v->name, sizeof(v->name), "%s", name);
	va_start(ap, fmt);
	vsnprintf(v->text, sizeof(v->text), fmt, ap);
	va_end(ap);
}

/* A sAMAccountName usable as a Kerberos principal's name: not empty, no
 * control bytes, none of '@' '/' '\\' (they would change the principal). */
static int
sam_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > IDENTITY_LOCAL_MAX)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (ch < 0x20 || ch == 0x7f || ch == '@' || ch == '/' || ch == '\\')
			return 0;
	}
	return 1;
}

/* Strong-mapping verdict: 0 strong, else the refusal name and text. */
static int
strong_check(const struct directory_account *a, const struct directory_cert *c,
    const char **name, char *text, size_t textlen)
{
	const char *sid = NULL, *from = NULL;

	if (c == NULL) {
		*name = "strong_mapping";
		snprintf(text, textlen, "no certificate was given to check against the account");
		return -1;
	}
	if (c->sid_state == IDENTITY_SID_MALFORMED) {
		*name = "strong_mapping";
		snprintf(text, textlen, "the certificate's SID extension is malformed");
		return -1;
	}
	if (c->sid_state == IDENTITY_SID_OK) {
		sid = c->sid;
		from = "SID extension";
	} else if (c->sid_url_state == IDENTITY_SID_MALFORMED) {
		*name = "strong_mapping";
		snprintf(text, textlen, "the certificate's SID URL (" SID_URL_PREFIX ") is malformed");
		return -1;
	} else if (c->sid_url_state == IDENTITY_SID_OK) {
		sid = c->sid_url;
		from = "SID URL";
	}
	if (sid != NULL) {
		if (a->sid[0] != '\0' && strcmp(sid, a->sid) == 0)
			return 0;
		*name = "sid_mismatch";
		snprintf(text, textlen, "the certificate's %s names %s but the account's "
		    "objectSid is %s", from, sid, a->sid[0] ? a->sid : "missing");
		return -1;
	}
	if (DIRECTORY_ALTSEC_STRONG(a->altsec))
		return 0;
	*name = "strong_mapping";
	if (a->altsec != DIR_ALTSEC_NONE)
		snprintf(text, textlen, "the certificate is bound only weakly (altSecurityIdentities "
		    "%s) and has no SID extension; bind it with X509:<I>…<SR>…, <SKI> or "
		    "<SHA1-PUKEY>, or issue it with the SID", directory_altsec_name(a->altsec));
	else
		snprintf(text, textlen, "the certificate has no SID extension and no strong "
		    "altSecurityIdentities binding (issuer %.300s, serial reversed %.130s, SKI %.130s)",
		    c->issuer_text, c->serial_rev, c->ski);
	return -1;
}

void
directory_decide(const struct directory_account *a, const struct directory_cert *c,
    const struct directory_policy *p, struct directory_verdict *v)
{
	struct directory_verdict r;
	const char *name = NULL;
	int locked;

	memset(&r, 0, sizeof(r));
	if (a->has_uac && (a->uac & DIRECTORY_UF_ACCOUNTDISABLE)) {
		deny(&r, "disabled", "account %s is disabled (userAccountControl 0x%" PRIx32 ")",
		    a->dn, a->uac);
		goto done;
	}
	if (a->has_uac_computed)
		locked = (a->uac_computed & DIRECTORY_UF_LOCKOUT) != 0;
	else
		locked = a->lockout_time > 0;
	if (locked || (a->has_uac && (a->uac & DIRECTORY_UF_LOCKOUT))) {
		deny(&r, "locked", "account %s is locked out (lockoutTime %" PRId64 ")",
		    a->dn, a->lockout_time);
		goto done;
	}
	if (a->account_expires > 0 && a->account_expires != INT64_MAX &&
	    a->account_expires <= p->now_filetime) {
		deny(&r, "expired", "account %s expired (accountExpires %" PRId64 ")", a->dn,
		    a->account_expires);
		goto done;
	}
	if (p->require_group && a->in_group != 1) {
		deny(&r, "not_in_group", "account %s is not a member of require_group "
		    "(nested groups included)", a->dn);
		goto done;
	}
	if (!sam_ok(a->sam)) {
		deny(&r, "bad_account", "account %s has no usable sAMAccountName", a->dn);
		goto done;
	}
	if (p->realm == NULL || p->realm[0] == '\0' ||
	    (size_t)snprintf(r.principal, sizeof(r.principal), "%s@%s", a->sam, p->realm) >=
	    sizeof(r.principal)) {
		deny(&r, "bad_account", "account %s: principal %s@%s is too long or has no realm",
		    a->dn, a->sam, p->realm ? p->realm : "");
		goto done;
	}
	if (p->strong != STRONG_OFF &&
	    strong_check(a, c, &name, r.text, sizeof(r.text)) != 0) {
		if (p->strong == STRONG_ENFORCE) {
			char text[sizeof(r.text)];

			snprintf(text, sizeof(text), "%s", r.text);
			deny(&r, name, "account %s: %s", a->dn, text);
			goto done;
		}
		r.flags |= KCD_ID_AUDIT;
		snprintf(r.name, sizeof(r.name), "%s", name);
	}
	r.allow = 1;
done:
	*v = r;
}

/* ---- the result cache ------------------------------------------------------------ */

struct centry {
	unsigned char key[DIRECTORY_KEY_LEN];
	uint64_t expires;
	struct directory_verdict v;
	struct centry *hnext;			/* bucket chain */
	struct centry *prev, *next;		/* insertion order, oldest first */
};

struct directory_cache {
	unsigned max, count, nbuckets;
	struct centry **buckets;
	struct centry *oldest, *newest;
};

struct directory_cache *
directory_cache_new(unsigned max_entries)
{
	struct directory_cache *c;
	unsigned nb = 64;

	if (max_entries == 0)
		max_entries = DIRECTORY_CACHE_MAX;
	while (nb < max_entries && nb < (1u << 24))
		nb <<= 1;
	if ((c = calloc(1, sizeof(*c))) == NULL)
		return NULL;
	if ((c->buckets = calloc(nb, sizeof(*c->buckets))) == NULL) {
		free(c);
		return NULL;
	}
	c->max = max_entries;
	c->nbuckets = nb;
	return c;
}

static unsigned
bucket(const struct directory_cache *c, const unsigned char *key)
{
	uint32_t h;

	memcpy(&h, key, sizeof(h));	/* the key is a SHA-256: already mixed */
	return h & (c->nbuckets - 1);
}

static void
unlink_entry(struct directory_cache *c, struct centry *e)
{
	struct centry **pp = &c->buckets[bucket(c, e->key)];

	while (*pp != e)
		pp = &(*pp)->hnext;
	*pp = e->hnext;
	if (e->prev)
		e->prev->next = e->next;
	else
		c->oldest = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		c->newest = e->prev;
	c->count--;
	free(e);
}

void
directory_cache_free(struct directory_cache *c)
{
	if (c == NULL)
		return;
	while (c->oldest)
		unlink_entry(c, c->oldest);
	free(c->buckets);
	free(c);
}

static struct centry *
find(const struct directory_cache *c, const unsigned char *key)
{
	for (struct centry *e = c->buckets[bucket(c, key)]; e; e = e->hnext)
		if (memcmp(e->key, key, DIRECTORY_KEY_LEN) == 0)
			return e;
	return NULL;
}

int
directory_cache_get(struct directory_cache *c, const unsigned char key[DIRECTORY_KEY_LEN],
    uint64_t now_ms, struct directory_verdict *out)
{
	struct centry *e = find(c, key);

	if (e == NULL)
		return 0;
	if (now_ms >= e->expires) {
		unlink_entry(c, e);
		return 0;
	}
	*out = e->v;
	return 1;
}

int
directory_cache_put(struct directory_cache *c, const unsigned char key[DIRECTORY_KEY_LEN],
    uint64_t now_ms, uint64_t ttl_ms, const struct directory_verdict *v)
{
	struct centry *e;
	unsigned b;

	if (ttl_ms == 0)
		return 0;
	if ((e = find(c, key)) != NULL)
		unlink_entry(c, e);
	while (c->count >= c->max && c->oldest)
		unlink_entry(c, c->oldest);
	if ((e = calloc(1, sizeof(*e))) == NULL)
		return -1;
	memcpy(e->key, key, DIRECTORY_KEY_LEN);
	e->expires = now_ms + ttl_ms;
	e->v = *v;
	b = bucket(c, key);
	e->hnext = c->buckets[b];
	c->buckets[b] = e;
	e->prev = c->newest;
	if (c->newest)
		c->newest->next = e;
	else
		c->oldest = e;
	c->newest = e;
	c->count++;
	return 0;
}

unsigned
directory_cache_expire(struct directory_cache *c, uint64_t now_ms)
{
	unsigned n = 0;
	struct centry *e = c->oldest, *next;

	/* one TTL for all, so insertion order is expiry order; still walk
	 * everything: a replaced key was re-inserted at the end */
	for (; e; e = next) {
		next = e->next;
		if (now_ms >= e->expires) {
			unlink_entry(c, e);
			n++;
		}
	}
	return n;
}

unsigned
directory_cache_count(const struct directory_cache *c)
{
	return c->count;
}
