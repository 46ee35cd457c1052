/*
 * directory.h — directory checks inside kcd (SPEC §3 [ldap], §7): is the
 * account enabled, in require_group, strongly bound to the certificate,
 * and which logon name does Kerberos need? (The file is not ldap.h: with
 * -Isrc that would shadow OpenLDAP's <ldap.h>.)
 *
 * Two layers:
 *   - pure functions (directory_rules.c), unit-tested without a server:
 *     RFC 4515 filter escaping, objectSid -> "S-1-…", certificate facts,
 *     altSecurityIdentities parsing and matching (KB5014754), the account
 *     decision, and the result cache;
 *   - the engine (directory.c): libldap connections owned by a small
 *     thread pool (pool.h) so kcd's event loop never waits on the
 *     directory, one lookup per (principal, certificate) at a time (single
 *     flight), results cached cache_ttl, an overall deadline of [ldap]
 *     timeout after which the request is answered as unreachable.
 *
 * Binding (the proxy's own identity, nothing typed by an admin at run time):
 *   bind = gssapi  SASL/GSSAPI with the [kerberos] keytab's principal. The
 *                  credential is acquired (on the first bind, on a pool
 *                  thread: it may need the KDC) with gss_acquire_cred_from
 *                  (client_keytab + a MEMORY ccache private to this
 *                  directory, never the default ccache) and handed to the
 *                  SASL layer (LDAP_OPT_X_SASL_GSS_CREDS, set from the
 *                  interaction callback, the first moment libldap has a
 *                  SASL context). ldap:// gets Kerberos sign+seal; ldaps://
 *                  gets no SASL layer (AD refuses both at once).
 *                  SASL_NOCANON: the service is ldap/<host as in the URI>.
 *   bind = simple  bind_dn + the first line of bind_password_file, only over
 *                  TLS: ldaps://, or ldap:// with StartTLS (always).
 *   TLS verifies the server against [ldap] ca (else the system store).
 *
 * Decisions (directory_decide), first failure wins; the name is the
 * reason detail the device's access log shows (ldap_<name>, 403):
 *   disabled      userAccountControl ACCOUNTDISABLE (0x2)
 *   locked        LOCKOUT (0x10) in msDS-User-Account-Control-Computed (AD
 *                 computes it from lockoutTime and the lockout duration),
 *                 else in userAccountControl, else lockoutTime > 0 when the
 *                 computed attribute is missing (not AD)
 *   expired       accountExpires in the past
 *   not_in_group  require_group set and the account is not in it, nested
 *                 groups included (LDAP_MATCHING_RULE_IN_CHAIN)
 *   sid_mismatch  strong_mapping: the certificate names another SID
 *   strong_mapping  strong_mapping: no strong binding (below)
 * and from the lookup itself: not_found, ambiguous (more than one account),
 * bad_account (no usable sAMAccountName), no_certificate.
 *
 * Strong mapping (KB5014754), for strong_mapping = audit | enforce: the
 * certificate is strongly bound to the account when
 *   - its SID extension 1.3.6.1.4.1.311.25.2 (or, without one, a SAN URL
 *     "tag:microsoft.com,2022-09-14:sid:<SID>") equals objectSid — a SID
 *     that differs is sid_mismatch, whatever altSecurityIdentities says;
 *   - or an altSecurityIdentities value of a strong form names it:
 *     X509:<I>issuer<SR>serial (serial bytes reversed, hex), X509:<SKI>hex,
 *     X509:<SHA1-PUKEY>hex (the certificate's SHA-1 thumbprint, which
 *     Windows tools write there, or the SHA-1 of its public key).
 * The weak forms X509:<I>issuer<S>subject, X509:<S>subject and
 * X509:<RFC822>mail count only with allow_weak_mapping, and never as strong.
 * enforce refuses what is not strong; audit lets it pass with KCD_ID_AUDIT.
 * DNs in altSecurityIdentities are in certificate order ("O=Example
 * Lab,CN=EAS Device CA", Windows' form); they are compared RDN by RDN,
 * attribute names and values case-insensitively, spaces around separators
 * ignored.
 *
 * The principal: sAMAccountName@REALM, REALM being the realm of the
 * principal the worker mapped (or [identity] realm for source = ldap), so
 * a UPN whose prefix is not the logon name still gets the right ticket.
 * The user_filter's %u is the certificate's own UPN / e-mail / CN as
 * written (when it maps to the principal the worker sent), else that
 * principal; either way escaped per RFC 4515.
 */
#ifndef EKP_DIRECTORY_H
#define EKP_DIRECTORY_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/x509.h>

#include "config.h"
#include "identity.h"
#include "kcd_proto.h"

#define DIRECTORY_FILTER_MAX	4096	/* bytes of a search filter incl. NUL */
#define DIRECTORY_DN_MAX	1024
#define DIRECTORY_VALUE_MAX	256	/* sAMAccountName, UPN, e-mail */
#define DIRECTORY_HEX_MAX	(2 * 64 + 1)
#define DIRECTORY_CACHE_MAX	20000u	/* cached answers at most */
#define DIRECTORY_THREADS	4	/* pool threads = LDAP connections */

/* UF_* bits of userAccountControl (MS-ADTS 2.2.16) */
#define DIRECTORY_UF_ACCOUNTDISABLE	0x2u
#define DIRECTORY_UF_LOCKOUT		0x10u

/* ---- filters (RFC 4515) ------------------------------------------------- */

/* Escape len bytes for use inside a filter assertion value: '*', '(', ')',
 * '\\', NUL and every byte outside printable ASCII become \XX (so UTF-8
 * stays valid as escaped octets). 0, or -1 when out (outlen) is too small. */
int directory_filter_escape(const unsigned char *in, size_t len, char *out, size_t outlen);

/* tmpl with every "%u" replaced by the escaped value; other bytes copied.
 * 0, or -1 when it does not fit. */
int directory_filter_build(const char *tmpl, const unsigned char *value, size_t len,
    char *out, size_t outlen);

/* ---- SIDs ------------------------------------------------------------------ */

/* Binary objectSid (revision 1, authority 6 bytes big-endian, up to 15
 * sub-authorities little-endian) -> "S-1-5-21-…". 0, or -1 when malformed
 * or out is too small. */
int directory_sid_string(const unsigned char *bin, size_t len, char *out, size_t outlen);

/* ---- certificates and altSecurityIdentities ------------------------------ */

/* What the checks need from one certificate, computed once. DNs are in
 * the normalised form compared with altSecurityIdentities (see above). */
struct directory_cert {
	char issuer[DIRECTORY_DN_MAX];		/* normalised, certificate order */
	char subject[DIRECTORY_DN_MAX];
	char issuer_text[DIRECTORY_DN_MAX];	/* Windows form, for searches/logs */
	char subject_text[DIRECTORY_DN_MAX];
	char serial_rev[DIRECTORY_HEX_MAX];	/* bytes reversed, lower-case hex,
						 * without the sign byte */
	char ski[DIRECTORY_HEX_MAX];		/* the extension, else SHA-1 of the key */
	char sha1_cert[41];			/* thumbprint */
	char sha1_key[41];			/* SHA-1 of the subjectPublicKey bits */
	char email[DIRECTORY_VALUE_MAX];	/* one SAN rfc822Name, "" none/several */
	enum identity_sid sid_state;		/* the SID extension */
	char sid[IDENTITY_SID_MAX];
	enum identity_sid sid_url_state;	/* the SAN URL tag:microsoft.com,…:sid: */
	char sid_url[IDENTITY_SID_MAX];
};

/* Fill *out from cert. 0, or -1 with the cause in err (a name too long to
 * compare, an undecodable part). */
int directory_cert_info(const X509 *cert, struct directory_cert *out, char *err, size_t errlen);

enum directory_altsec {
	DIR_ALTSEC_NONE = 0,		/* does not name this certificate */
	DIR_ALTSEC_ISSUER_SUBJECT,	/* weak */
	DIR_ALTSEC_SUBJECT,		/* weak */
	DIR_ALTSEC_RFC822,		/* weak */
	DIR_ALTSEC_ISSUER_SERIAL,	/* strong (from here on) */
	DIR_ALTSEC_SKI,
	DIR_ALTSEC_SHA1_PUKEY,
};
#define DIRECTORY_ALTSEC_STRONG(k)	((k) >= DIR_ALTSEC_ISSUER_SERIAL)

/* Which mapping, if any, the altSecurityIdentities value (len bytes, not
 * NUL-terminated, untrusted) makes of cert. Values of other kinds
 * ("Kerberos:…") or that do not parse are DIR_ALTSEC_NONE. */
enum directory_altsec directory_altsec_match(const char *value, size_t len,
    const struct directory_cert *cert);

/* The "altsec" token for logs ("issuer_serial", "ski", ...). */
const char *directory_altsec_name(enum directory_altsec k);

/* A filter finding the accounts whose altSecurityIdentities may name cert
 * (strong forms; weak ones too with allow_weak). It is wider than exact:
 * every value found is checked with directory_altsec_match. 0 or -1. */
int directory_cert_filter(const struct directory_cert *cert, int allow_weak,
    char *out, size_t outlen);

/* ---- the decision ----------------------------------------------------------- */

/* One account as read from the directory (values untrusted, bounded). */
struct directory_account {
	char dn[DIRECTORY_DN_MAX];
	char sam[DIRECTORY_VALUE_MAX];		/* sAMAccountName, "" absent */
	int has_uac;
	uint32_t uac;				/* userAccountControl */
	int has_uac_computed;
	uint32_t uac_computed;			/* msDS-User-Account-Control-Computed */
	int64_t lockout_time;			/* FILETIME; 0 = not locked */
	int64_t account_expires;		/* FILETIME; 0 / INT64_MAX = never */
	char sid[IDENTITY_SID_MAX];		/* objectSid, "" absent */
	enum directory_altsec altsec;		/* best altSecurityIdentities match */
	int in_group;				/* 1, 0, or -1 = not checked */
};

struct directory_policy {
	enum strong_mapping strong;
	int require_group;			/* a group is configured */
	const char *realm;			/* for sAMAccountName@REALM */
	int64_t now_filetime;			/* 100 ns since 1601 */
};

/* An answer, as cached and as sent in IDENTIFY_OK / IDENTIFY_ERR. */
struct directory_verdict {
	int allow;
	uint32_t flags;				/* KCD_ID_* */
	enum kcd_err_class cls;			/* !allow: LDAP_DENIED / LDAP_UNREACHABLE */
	char principal[KCD_PRINCIPAL_MAX];	/* allow: the principal to use */
	char name[KCD_NAME_MAX];		/* !allow: "disabled", ...; allow with
						 * KCD_ID_AUDIT: what enforce would say */
	char text[KCD_TEXT_MAX];		/* for the log only */
};

/* Decide for account a (cert NULL = no certificate to check). */
void directory_decide(const struct directory_account *a, const struct directory_cert *cert,
    const struct directory_policy *p, struct directory_verdict *v);

/* 100-ns intervals since 1601-01-01 for a Unix time in seconds. */
int64_t directory_filetime(int64_t unix_seconds);

/* ---- the result cache (pure, clock injected) ---------------------------- */

struct directory_cache;

#define DIRECTORY_KEY_LEN	32	/* SHA-256 of principal and certificate */

struct directory_cache *directory_cache_new(unsigned max_entries);
void directory_cache_free(struct directory_cache *c);
/* 1 and *out on a live entry, 0 when absent or expired (then removed). */
int directory_cache_get(struct directory_cache *c, const unsigned char key[DIRECTORY_KEY_LEN],
    uint64_t now_ms, struct directory_verdict *out);
/* Store v until now + ttl (replacing an entry of the same key); the oldest
 * entry goes when the cache is full. ttl 0: nothing is stored. 0, or -1
 * out of memory. */
int directory_cache_put(struct directory_cache *c, const unsigned char key[DIRECTORY_KEY_LEN],
    uint64_t now_ms, uint64_t ttl_ms, const struct directory_verdict *v);
/* Remove expired entries; returns how many. */
unsigned directory_cache_expire(struct directory_cache *c, uint64_t now_ms);
unsigned directory_cache_count(const struct directory_cache *c);

/* ---- the engine (kcd) ----------------------------------------------------------- */

struct event_base;
struct directory;

struct directory_result {
	int ok;
	int cancelled;			/* directory_free: nothing to answer, release arg */
	const char *principal;		/* ok */
	uint32_t flags;			/* ok: KCD_ID_* */
	enum kcd_err_class cls;		/* !ok: KCD_ERR_LDAP_DENIED / _UNREACHABLE */
	const char *name;		/* !ok: "disabled", "unreachable", ... */
	const char *text;		/* log only */
	int cached;			/* answered from the cache */
};

typedef void directory_done_fn(const struct directory_result *res, void *arg);

/* Set up from cfg->ldap (uri must be set), [kerberos] keytab/principal
 * for bind = gssapi, [identity] for %u. Reads bind_password_file now;
 * contacts nobody (the first lookup connects). For kcd's loop thread,
 * after s4u_env_init. NULL with the cause in err. cfg must outlive it. */
struct directory *directory_new(struct event_base *base, const struct config *cfg,
    char *err, size_t errlen);

/* Waits for lookups running on the pool threads, then releases
 * everything; fn of every unanswered request is called with cancelled
 * set (from here, so its arg can be released). */
void directory_free(struct directory *d);

/* Check principal (as mapped by the worker; "" for source = ldap) with
 * the certificate (DER, may be empty unless source = ldap). fn is called
 * exactly once, later, on the loop thread (never from inside this call).
 * 0, or -1 (bad arguments, out of memory; fn not called) with err. */
int directory_identify(struct directory *d, const char *principal,
    const unsigned char *der, size_t der_len, directory_done_fn *fn, void *arg,
    char *err, size_t errlen);

struct directory_stats {
	uint64_t requests;		/* directory_identify accepted */
	uint64_t cache_hits, waits;	/* answered from the cache / behind a running lookup */
	uint64_t lookups;		/* lookups run against the directory */
	uint64_t errors;		/* lookups that found the directory unusable */
	uint64_t connects;		/* connections opened and bound */
	uint64_t timeouts;		/* answered at the deadline */
	unsigned cached, in_flight;
};
void directory_stats(const struct directory *d, struct directory_stats *st);

#endif
