/*
 * identity.h — verified client certificate → Kerberos principal user@REALM
 * (SPEC §3 [identity], §5 identity_unmapped). Pure functions: no I/O, no
 * logging, no global state, so they are unit-tested and fuzzed without TLS.
 *
 * The certificate handed in must already have been verified by tls.c; this
 * module only decides which user it names. The principal is built here as
 * "local@REALM" (never an enterprise name, see docs: enterprise lookups are
 * not canonicalised by the KDC).
 *
 * Sources ([identity] source):
 *   san_upn     exactly one subjectAltName otherName 1.3.6.1.4.1.311.20.2.3
 *               (Microsoft UPN) holding a UTF8String; an IA5String only with
 *               allow_ia5_upn (some MDM CAs write it that way).
 *   san_email   exactly one subjectAltName rfc822Name.
 *   subject_cn  exactly one commonName in the subject, containing '@'.
 *   ldap        not resolved here (ldap.c looks the certificate up);
 *               identity_map refuses with source_unsupported.
 *
 * Rules for the name "local@suffix", checked in this order (first failure
 * wins, its token is the detail, see tbl/identity_details.h):
 *   1. not empty (empty_value), at most IDENTITY_VALUE_MAX bytes (too_long),
 *      no NUL byte (nul_byte), valid UTF-8 (not_utf8; no overlong forms, no
 *      surrogates); IA5String values must be 7-bit (not_ascii);
 *   2. no control character (C0, DEL, C1), no whitespace or invisible
 *      formatting character (Unicode spaces, zero-width, bidi overrides,
 *      BOM), no '/' or '\\' anywhere (bad_char) — they would break Kerberos
 *      principal syntax or log lines;
 *   3. exactly one '@' (no_suffix / two_ats), non-empty local part
 *      (empty_local_part), non-empty suffix (no_suffix), local part at most
 *      IDENTITY_LOCAL_MAX bytes and suffix at most IDENTITY_SUFFIX_MAX
 *      (too_long); the suffix is an ASCII DNS name: labels of [A-Za-z0-9_-],
 *      1..63 bytes, no empty label, no trailing dot (bad_suffix);
 *   4. allowed_suffixes, when not empty, must list the suffix
 *      (suffix_not_allowed);
 *   5. the suffix maps to a realm: an entry of suffix_realms whose suffix
 *      equals it, else [identity] realm when the suffix equals the realm
 *      (suffix_unmapped otherwise).
 *
 * Case: suffixes are compared ASCII case-insensitively and on the whole
 * suffix — "corp.example" does not match "eu.corp.example" (no sub-domain
 * matching: each sub-domain must be listed). The realm is copied verbatim
 * from the configuration (Kerberos realms are case-sensitive; config says
 * EXAMPLE.TEST). The local part is kept exactly as written in the
 * certificate (AD matches it case-insensitively; MIT KDCs may not, so
 * issue certificates with the UPN as stored in the directory).
 *   ALICE@Corp.Example with corp.example:CORP.EXAMPLE.TEST → ALICE@CORP.EXAMPLE.TEST
 *   alice@example.test with realm = EXAMPLE.TEST           → alice@EXAMPLE.TEST
 */
#ifndef EKP_IDENTITY_H
#define EKP_IDENTITY_H

#include <stddef.h>

#include <openssl/x509.h>

#include "config.h"
#include "reason.h"

#define IDENTITY_VALUE_MAX	512	/* bytes of the certificate's string */
#define IDENTITY_LOCAL_MAX	128	/* bytes before '@' */
#define IDENTITY_SUFFIX_MAX	253	/* a DNS name */
#define IDENTITY_REALM_MAX	255
#define IDENTITY_PRINCIPAL_MAX	(IDENTITY_LOCAL_MAX + 1 + IDENTITY_REALM_MAX + 1)
/* the original value escaped for logs: every byte may become \xHH */
#define IDENTITY_LOGVAL_MAX	(4 * 96 + 8)
#define IDENTITY_MSG_MAX	1024
#define IDENTITY_SID_MAX	192	/* "S-1-5-21-…" is < 190 bytes */

enum identity_detail {
#define IDENTITY_DETAIL(id, token, text) IDENTITY_##id,
#include "tbl/identity_details.h"
#undef IDENTITY_DETAIL
	IDENTITY__COUNT
};

/*
 * What the mapping needs. Every pointer is borrowed: with
 * identity_params_from_config() they point into the struct config, which
 * must outlive the params (a loaded config is immutable, so that holds for
 * a worker generation).
 */
struct identity_params {
	enum identity_source source;
	const char *realm;			/* NULL/"" = no default realm */
	unsigned n_suffix_realms;
	const struct config_suffix_realm *suffix_realms;
	unsigned n_allowed_suffixes;		/* 0 = any suffix that maps */
	char *const *allowed_suffixes;
	int allow_ia5_upn;
};

struct identity_result {
	enum reason reason;		/* REASON_OK, REASON_IDENTITY_UNMAPPED, or
					 * REASON_OUT_OF_MEMORY for detail internal_error */
	enum identity_detail detail;	/* IDENTITY_NONE on success */
	char principal[IDENTITY_PRINCIPAL_MAX];	/* "alice@EXAMPLE.TEST"; "" on failure */
	char local[IDENTITY_LOCAL_MAX + 1];	/* "alice" as written; "" on failure */
	char realm[IDENTITY_REALM_MAX + 1];	/* "EXAMPLE.TEST"; "" on failure */
	/* The certificate's UPN / e-mail / CN as found (also on failure, when
	 * there was exactly one), bytes outside printable ASCII as \xHH,
	 * truncated with "..." — safe to log, never to use as a name. */
	char value[IDENTITY_LOGVAL_MAX];
	/* One log-safe sentence naming the cause and the setting to check. */
	char message[IDENTITY_MSG_MAX];
};

/* Point params at cfg->identity (borrowed, see above). Returns 0. */
int identity_params_from_config(const struct config *cfg, struct identity_params *params);

/*
 * Map the (already verified) certificate to user@REALM by params->source.
 * Returns 0 with res->principal set, or -1 with res->reason, res->detail
 * and res->message set. res is always fully written (assigned last);
 * cert is not modified and nothing is retained.
 */
int identity_map(const X509 *cert, const struct identity_params *params,
    struct identity_result *res);

/*
 * The name rules alone (steps 1–5 above) over a "local@suffix" string of
 * len bytes that may contain anything. ascii_only: the value came from an
 * IA5String (bytes > 0x7f → not_ascii). For the embedding hook and the
 * directory path, which get a name from elsewhere. Same result contract as
 * identity_map.
 */
int identity_map_name(const unsigned char *value, size_t len, int ascii_only,
    const struct identity_params *params, struct identity_result *res);

/* Stable token ("no_upn") and explanation for a detail; never NULL. */
const char *identity_detail_token(enum identity_detail d);
const char *identity_detail_text(enum identity_detail d);

/* The Microsoft SID extension (szOID_NTDS_CA_SECURITY_EXT). */
enum identity_sid {
	IDENTITY_SID_OK = 0,
	IDENTITY_SID_ABSENT = -1,	/* no 1.3.6.1.4.1.311.25.2 extension */
	IDENTITY_SID_MALFORMED = -2,	/* present but undecodable, duplicated,
					 * not "S-1-…", or larger than len */
};

/*
 * Copy the SID string ("S-1-5-21-…-1104") of the certificate's
 * 1.3.6.1.4.1.311.25.2 extension — GeneralNames holding one otherName
 * 1.3.6.1.4.1.311.25.2.1 whose value is an OCTET STRING — into buf
 * (NUL-terminated) for strong mapping (SPEC §7, KB5014754). buf is written
 * only on IDENTITY_SID_OK. The string is checked to be S-digits-dashes only.
 */
enum identity_sid identity_cert_sid(const X509 *cert, char *buf, size_t len);

#endif
