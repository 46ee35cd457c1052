/*
 * apreq.h — the krb5 AP-REQ of a GSS krb5 initial context token (RFC 4121
 * 4.1) on a cached service ticket, and the check of the acceptor's AP-REP:
 * kcd's warm tokens (s4u.h, Warm tokens) without a krb5_auth_context per
 * token. The usage keys of usages 11 and 12 are derived once per ticket,
 * not once per token: for aes128/aes256-cts-hmac-sha1-96 (AD's and MIT's
 * usual session keys) kcrypt.c encrypts and decrypts on OpenSSL with
 * them; any other enctype uses libkrb5's public API on a krb5_key made
 * once per ticket (krb5_k_create_key caches the keys it derives). The
 * DER is ours, written backwards into one buffer (no intermediate
 * allocation), and the AP-REP parser is strict and bounded: its input
 * comes from the backend.
 *
 * What apreq_make builds is what MIT 1.20's gss_init_sec_context builds
 * for a context on a cached ticket (krb5_mk_req_extended with
 * AP_OPTS_USE_SUBKEY, KRB5_AUTH_CONTEXT_DO_SEQUENCE and the 0x8003
 * checksum the caller made, mk_req_ext.c / init_sec_context.c):
 *   AP-REQ (RFC 4120 5.5.1): pvno 5, msg-type 14, ap-options (only
 *     mutual-required on the wire: MIT masks its internal option bits),
 *     the ticket's DER as the KDC gave it, the authenticator as
 *     EncryptedData { etype, cipher } (no kvno) under the session key,
 *     key usage 11;
 *   Authenticator: authenticator-vno 5, crealm + cname of the ticket's
 *     client, cksum { 0x8003, the caller's bytes }, cusec + ctime from
 *     krb5_us_timeofday (the krb5 context's time offset, and strictly
 *     later than the process's previous stamp, as MIT), subkey { the
 *     session key's enctype, a fresh random key }, seq-number (random &
 *     0x3fffffff, never 0, as krb5_generate_seq_number), and
 *     authorization-data only for APREQ_CBT_AWARE (below).
 * Randomness: the subkey and the sequence number come from OpenSSL's
 * private DRBG (RAND_priv_bytes, no system call), drawn 1 KiB at a time
 * into a per-thread pool whose bytes are each used once and zeroed as
 * taken (emptied in a forked child); so does kcrypt's confounder (for
 * other enctypes the confounder is krb5_k_encrypt's own).
 *
 * Authorization data, decided:
 *   - AD-IF-RELEVANT { AD-AP-OPTIONS KERB_AP_OPTIONS_CBT } is kept: MIT
 *     adds it when krb5.conf says client_aware_channel_bindings (the
 *     caller reads the setting and passes APREQ_CBT_AWARE), and it changes
 *     what a Windows acceptor (Extended Protection) does with our bindings.
 *   - AD-IF-RELEVANT { AD-ETYPE-NEGOTIATION } (RFC 4537) is dropped. MIT
 *     sends it for mutual authentication only when its first permitted
 *     enctype is not the ticket's (with the default list and an
 *     aes256-cts-hmac-sha1-96 session key, AD's and MIT's usual one, it
 *     sends nothing either). Its only effect is to let the acceptor choose
 *     a stronger subkey for GSS per-message tokens; we never make or read
 *     one (the context ends with the AP-REP check), and RFC 4537 leaves
 *     the list to the initiator ("MAY").
 *   - a ticket whose credential carries authorization data of its own
 *     (MIT would copy it into the authenticator; S4U2Proxy tickets carry
 *     none) is refused by apreq_ticket_new: the caller then keeps the GSS
 *     route for it.
 * krb5int_validate_times is not repeated: the caller stops using a ticket
 * S4U_TICKET_MARGIN_MS before its end, and its start was checked when the
 * first token (GSSAPI) used it.
 *
 * apreq_verify_rep is krb5_rd_rep as MIT's mutual_auth uses it: the
 * AP-REP (RFC 4120 5.5.2), enc-part decrypted with usage 12 under the
 * ticket's session key or, when that fails (as MIT retries), under our
 * subkey; the EncAPRepPart's ctime and cusec must be our authenticator's.
 *
 * Keys: a struct apreq_ticket holds the session key (a counted struct
 * apreq_key: the kcrypt usage keys, or a krb5_key) and never shows it; a
 * struct apreq_reply holds a reference to that key and the subkey's bytes
 * until apreq_reply_clear drops and zeroes them (the key is zeroed and
 * freed with its last reference). Plaintext
 * buffers (the authenticator, the random bytes, a decrypted EncAPRepPart)
 * are zeroed before they are released. Nothing here logs.
 *
 * Threads: a struct apreq_key's reference count (and a krb5_key's
 * derived-key cache) are not locked; one ticket and its replies belong to one thread (kcd's loop).
 */
#ifndef EKP_APREQ_H
#define EKP_APREQ_H

#include <stddef.h>
#include <stdint.h>

#include <krb5.h>

#define APREQ_KEY_MAX		32	/* the longest subkey kept (AES-256) */
#define APREQ_CLIENT_MAX	1024	/* crealm + cname DER, at most */
#define APREQ_REP_CIPHER_MAX	1024	/* an AP-REP's enc-part, at most */

/* apreq_make's flags */
#define APREQ_MUTUAL		0x1u	/* ap-options mutual-required; fill *rep */
#define APREQ_CBT_AWARE		0x2u	/* krb5.conf client_aware_channel_bindings */
/* apreq_make_at only: of the ticket's DER, only its first and last
 * APREQ_TICKET_EDGE bytes are written into the message, the rest of its
 * place is left as it was: for a caller that has the ticket's bytes in
 * another form already (s4u.c keeps their base64, whose 3-byte groups
 * straddle at most 2 bytes at either end). */
#define APREQ_TICKET_EDGES	0x4u
#define APREQ_TICKET_EDGE	2

/* A service ticket ready for AP-REQs, and its session key; opaque. */
struct apreq_ticket;
struct apreq_key;

/* What checking the AP-REP of one token needs (APREQ_MUTUAL); a value,
 * kept by the caller until apreq_reply_clear. key is a reference of its
 * own to the ticket's session key (valid after apreq_ticket_free). */
struct apreq_reply {
	struct apreq_key *key;		/* NULL: nothing kept */
	krb5_timestamp ctime;		/* our authenticator's */
	krb5_int32 cusec;
	krb5_enctype subkey_enctype;
	unsigned subkey_len;
	unsigned char subkey[APREQ_KEY_MAX];
};

/* The ticket of c (a krb5_creds as the KDC gave it: ticket DER, session
 * keyblock, client, times), made ready once: the session key's usage
 * keys derived (kcrypt, or a krb5_key), the ticket's DER and the client's crealm + cname DER copied.
 * c is not kept. Returns 0 with *out (the caller's: apreq_ticket_free),
 * or a krb5 error: ENOMEM, KRB5_NO_TKT_SUPPLIED (no ticket),
 * KRB5_PROG_ETYPE_NOSUPP (unknown enctype, a key longer than
 * APREQ_KEY_MAX), KRB5_PROG_ATYPE_NOSUPP (authorization data in c),
 * KRB5KRB_ERR_FIELD_TOOLONG (a client name past APREQ_CLIENT_MAX). */
krb5_error_code apreq_ticket_new(krb5_context kc, const krb5_creds *c,
    struct apreq_ticket **out);
void apreq_ticket_free(krb5_context kc, struct apreq_ticket *t);
/* The ticket's end (c->times.endtime) in unix ms. */
uint64_t apreq_ticket_end_ms(const struct apreq_ticket *t);
/* t's ticket DER (*len bytes, t's: valid while t is), what
 * apreq_make_at puts at *ticket_at. */
const unsigned char *apreq_ticket_der(const struct apreq_ticket *t, size_t *len);
/* An upper bound on the length of apreq_make's message for t. */
size_t apreq_max_len(const struct apreq_ticket *t);

/* One AP-REQ on t (the message, unframed) at the end of out[0..cap):
 * out[cap - *len .. cap), so that a caller can put a header in front of
 * it without moving it (s4u.c's RFC 2743 framing). cksum: the
 * authenticator's 0x8003 checksum bytes (RFC 4121
 * 4.1.1), cksum_len of them. flags: APREQ_*. With APREQ_MUTUAL, *rep gets
 * what apreq_verify_rep needs (the caller's: apreq_reply_clear); without
 * it rep may be NULL and is not touched. Returns 0, or a krb5 error
 * (KRB5_BAD_MSIZE when cap is too small; a crypto or clock failure):
 * nothing to release then, *rep untouched. */
krb5_error_code apreq_make(krb5_context kc, const struct apreq_ticket *t,
    const unsigned char *cksum, size_t cksum_len, unsigned flags,
    unsigned char *out, size_t cap, size_t *len, struct apreq_reply *rep);

/* apreq_make, and where in the message it put t's ticket: its DER (the
 * same bytes in every message on t) is msg[*ticket_at .. *ticket_at + the
 * ticket's length), msg = out + cap - *len. The ticket's offset can
 * differ between two messages on one ticket (the outer DER lengths follow
 * the authenticator's). */
krb5_error_code apreq_make_at(krb5_context kc, const struct apreq_ticket *t,
    const unsigned char *cksum, size_t cksum_len, unsigned flags,
    unsigned char *out, size_t cap, size_t *len, size_t *ticket_at, struct apreq_reply *rep);

/* Check the acceptor's AP-REP (the message, unframed: the caller took the
 * RFC 2743 framing off) against rep. Returns 0 when it is the reply to
 * rep's authenticator; else *code is the krb5 error (the first attempt's,
 * as MIT reports it: KRB5KRB_AP_ERR_BAD_INTEGRITY, KRB5_BAD_ENCTYPE,
 * KRB5_MUTUAL_FAILED for another authenticator's reply) or 0 when the
 * bytes are not a well-formed AP-REP / EncAPRepPart, and *cause says what
 * was wrong (a static string). rep is not changed. */
int apreq_verify_rep(krb5_context kc, const struct apreq_reply *rep,
    const unsigned char *msg, size_t len, krb5_error_code *code, const char **cause);

/* Release rep's key reference and zero it (subkey included). */
void apreq_reply_clear(krb5_context kc, struct apreq_reply *rep);

/* ---- the pure pieces (unit-tested, fuzzed) ---------------------------------------- */

/* A DER writer that fills buf from its end towards its start, so a
 * constructed value is written content first and its header (tag +
 * definite length, the shortest form) prepended once the length is
 * known. Overflow is sticky: later writes do nothing and
 * apreq_der_result returns NULL. Tags are one byte (all Kerberos needs). */
struct apreq_der {
	unsigned char *buf;
	size_t cap;
	size_t pos;			/* buf[pos..cap) is written */
	int overflow;
};
void apreq_der_init(struct apreq_der *w, unsigned char *buf, size_t cap);
/* The current start: pass it to apreq_der_wrap after writing a content. */
size_t apreq_der_mark(const struct apreq_der *w);
void apreq_der_bytes(struct apreq_der *w, const void *p, size_t n);
/* Prepend tag + length for everything written since mark. */
void apreq_der_wrap(struct apreq_der *w, unsigned char tag, size_t mark);
/* A whole TLV: tag, length, n bytes of p. */
void apreq_der_tlv(struct apreq_der *w, unsigned char tag, const void *p, size_t n);
/* An INTEGER (tag 0x02), two's complement, shortest form. */
void apreq_der_int(struct apreq_der *w, int64_t v);
/* Reserve n bytes (their place, to be filled by the caller); NULL on overflow. */
unsigned char *apreq_der_reserve(struct apreq_der *w, size_t n);
/* What was written (*len bytes), or NULL after an overflow. */
const unsigned char *apreq_der_result(const struct apreq_der *w, size_t *len);

/* KerberosTime (GeneralizedTime "YYYYMMDDHHMMSSZ", UTC) of unix seconds,
 * and back (strict: 15 characters, digits, real calendar fields, 'Z',
 * no year before 1970).
 * apreq_time_parse returns 0 or -1. */
#define APREQ_TIME_LEN		15
void apreq_time_format(uint32_t unix_s, char out[APREQ_TIME_LEN]);
int apreq_time_parse(const unsigned char *s, size_t len, int64_t *unix_s);

/* An AP-REP's outer parts, pointing into the caller's bytes. */
struct apreq_enc_part {
	krb5_enctype etype;
	int has_kvno;
	uint32_t kvno;
	const unsigned char *cipher;
	size_t cipher_len;
};
/* The AP-REP (RFC 4120 5.5.2: [APPLICATION 15] { pvno 5, msg-type 15,
 * enc-part EncryptedData }), exactly in[0..len), DER (definite, shortest
 * lengths and integers, fields in order, nothing unknown or left over).
 * Returns 0, or -1 with *cause. */
int apreq_parse_rep(const unsigned char *in, size_t len, struct apreq_enc_part *out,
    const char **cause);
/* EncAPRepPart ([APPLICATION 27] { ctime, cusec, subkey OPTIONAL,
 * seq-number OPTIONAL }), as strictly; ctime in unix seconds, cusec
 * 0..999999; the subkey and seq-number are checked for form only. */
int apreq_parse_enc_rep_part(const unsigned char *in, size_t len, int64_t *ctime,
    int32_t *cusec, const char **cause);

#endif
