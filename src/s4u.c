/*
 * s4u.c — S4U2Self + S4U2Proxy through GSSAPI, the credential cache and
 * the pool glue; see s4u.h for the route and the timeout design.
 *
 * Who owns what:
 *   - struct s4u_req is created by s4u_token_request and freed on the loop
 *     once it is both answered (callback called, or timed out) and no
 *     longer in flight (neither queued in the pool nor waiting in the
 *     credential cache). Its pool job writes only into the request.
 *   - the proxy credential (struct proxy_cred) is reference-counted under
 *     s->pmu: pool threads take a reference for the time of an
 *     impersonation; a renewal swaps in a new one and the old one (and its
 *     MEMORY ccache) goes when its last user is done.
 *   - impersonated credentials belong to credcache (released through
 *     cred_free when their last reference goes); a job using one holds a
 *     reference taken on the loop before submission.
 *   - kept contexts (KCD_F_MUTUAL) belong to the context table until
 *     verified, released, expired or evicted.
 *   - the fast path's service ticket: the leader's pool thread copies it
 *     out of the new credential's ccache (r->svc, the request's); the loop
 *     turns it into an apreq ticket (its session key as a krb5_key, made
 *     once) kept with the impersonated credential (imp_cred.fast) and
 *     freed with it, and frees the copy. A fast-path context kept for
 *     mutual authentication holds its own reference to that krb5_key
 *     (struct apreq_reply), so it may outlive the credential. Both are the
 *     loop's only: the GSS route on pool threads never touches them.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <gssapi/gssapi.h>
#include <gssapi/gssapi_ext.h>
#include <gssapi/gssapi_krb5.h>
#include <krb5.h>
#include <openssl/evp.h>
#include <profile.h>

#include "apreq.h"
#include "clock.h"
#include "codec.h"
#include "credcache.h"
#include "log.h"
#include "pool.h"
#include "s4u.h"

#define S4U_MAGIC	0x53345530u	/* "S4U0" */
#define REQ_MAGIC	0x53345552u	/* "S4UR" */

#define SWEEP_MS		5000
#define DEFAULT_CTX_TTL_MS	(3700ull * 1000)
#define DEFAULT_MAX_CONTEXTS	100000u
/* How long a forwardable S4U2Self ticket (or a granted S4U2Proxy) counts
 * as proof that the proxy has protocol transition, for telling a
 * sensitive user (403) from a proxy without ok_to_auth_as_delegate (502). */
#define FWD_SEEN_WINDOW_MS	(15 * 60 * 1000ull)

#define CONTAINER_OF(p, type, member) ((type *)(void *)((char *)(p) - offsetof(type, member)))

/* ---- clocks ---------------------------------------------------------------- */

static uint64_t
cache_clock(void *arg)
{
	(void)arg;
	return clock_mono_ms();
}

/* ---- error mapping ---------------------------------------------------------- */

/* where: which steps a code is the user's fault in */
#define AT_USER_STEPS	0x1	/* USER at S4U2Self, S4U2Proxy and later inits */
#define AT_UNREACH	0x2	/* UNREACHABLE at every step */

struct krb5_err {
	long code;
	const char *name;
	unsigned where;
	const char *hint;	/* for PROXY errors */
};

#define KDC(n)	(ERROR_TABLE_BASE_krb5 + (n))

static const char HINT_KEYTAB[] =
    "the keytab's key does not match the KDC's (password or key version changed): "
    "export the keytab again (AD: ktpass/msktutil; MIT: kadmin ktadd) and check klist -k -e";
static const char HINT_CLOCK[] =
    "the clocks of this host and the KDC differ by more than the allowed skew: synchronise them (NTP)";

static const struct krb5_err krb5_errs[] = {
	/* the KDC refuses the user */
	{ KRB5KDC_ERR_NAME_EXP, "NAME_EXP", AT_USER_STEPS,
	  "the proxy's account has expired (AD: accountExpires; MIT: -expire)" },
	{ KRB5KDC_ERR_C_PRINCIPAL_UNKNOWN, "C_PRINCIPAL_UNKNOWN", AT_USER_STEPS,
	  "the KDC does not know [kerberos] principal: check its spelling and that the account exists "
	  "(AD: the proxy authenticates as its sAMAccountName, e.g. easproxy@REALM)" },
	{ KRB5KDC_ERR_CLIENT_REVOKED, "CLIENT_REVOKED", AT_USER_STEPS,
	  "the proxy's account is disabled or locked out" },
	{ KRB5KDC_ERR_KEY_EXP, "KEY_EXP", AT_USER_STEPS,
	  "the proxy's password has expired: set it to never expire and export the keytab again" },
	{ KRB5KDC_ERR_CLIENT_NOTYET, "CLIENT_NOTYET", AT_USER_STEPS,
	  "the proxy's account is not valid yet" },
	/* the KDC refuses the proxy or our setup */
	{ KRB5KDC_ERR_S_PRINCIPAL_UNKNOWN, "S_PRINCIPAL_UNKNOWN", 0,
	  "no account holds this service principal: register the SPN on the service account "
	  "(AD: setspn -S HTTP/host account) or fix [backend] spn; for S4U2Self the proxy's own "
	  "account needs a servicePrincipalName" },
	{ KRB5KDC_ERR_PRINCIPAL_NOT_UNIQUE, "PRINCIPAL_NOT_UNIQUE", 0,
	  "the SPN is registered on more than one account: remove the duplicate (AD: setspn -X)" },
	{ KRB5KDC_ERR_POLICY, "POLICY", 0,
	  "the KDC's policy refused the request: check the proxy account's delegation settings "
	  "and account restrictions" },
	{ KRB5KDC_ERR_BADOPTION, "BADOPTION", 0,
	  "the KDC refused a requested option: check the proxy's delegation settings" },
	{ KRB5KDC_ERR_ETYPE_NOSUPP, "ETYPE_NOSUPP", 0,
	  "no common encryption type: enable AES on the proxy's and the service's accounts "
	  "(AD: msDS-SupportedEncryptionTypes) and export the keytab again" },
	{ KRB5KDC_ERR_PADATA_TYPE_NOSUPP, "PADATA_TYPE_NOSUPP", 0,
	  "the KDC does not support this request (protocol transition, S4U2Self): check the KDC" },
	{ KRB5KDC_ERR_SERVICE_REVOKED, "SERVICE_REVOKED", 0,
	  "the service's account is disabled" },
	{ KRB5KDC_ERR_TGT_REVOKED, "TGT_REVOKED", 0,
	  "the KDC no longer accepts the proxy's ticket: it is acquired again on the next request" },
	{ KRB5KDC_ERR_SERVICE_EXP, "SERVICE_EXP", 0, "the service's account has expired" },
	{ KRB5KDC_ERR_SERVICE_NOTYET, "SERVICE_NOTYET", 0, "the service's account is not valid yet" },
	{ KRB5KDC_ERR_PREAUTH_FAILED, "PREAUTH_FAILED", 0, HINT_KEYTAB },
	{ KRB5KDC_ERR_PREAUTH_REQUIRED, "PREAUTH_REQUIRED", 0, HINT_KEYTAB },
	{ KRB5KDC_ERR_WRONG_REALM, "WRONG_REALM", 0,
	  "the KDC referred the request to another realm: check the user's realm mapping "
	  "([identity] suffix_realms) and cross-realm trust" },
	{ KRB5KDC_ERR_NULL_KEY, "NULL_KEY", 0, "the account has no key: set its password" },
	{ KRB5KRB_AP_ERR_BAD_INTEGRITY, "BAD_INTEGRITY", 0, HINT_KEYTAB },
	{ KRB5KRB_AP_ERR_BADKEYVER, "BADKEYVER", 0, HINT_KEYTAB },
	{ KRB5KRB_AP_ERR_NOKEY, "NOKEY", 0, HINT_KEYTAB },
	{ KRB5KRB_AP_ERR_MODIFIED, "MODIFIED", 0, HINT_KEYTAB },
	{ KRB5KRB_AP_ERR_SKEW, "SKEW", 0, HINT_CLOCK },
	{ KRB5KRB_AP_ERR_TKT_EXPIRED, "TKT_EXPIRED", 0,
	  "a ticket expired: the proxy's credential is acquired again on the next request" },
	{ KRB5KRB_AP_ERR_TKT_NYV, "TKT_NYV", 0, HINT_CLOCK },
	{ KRB5KRB_ERR_GENERIC, "GENERIC", 0, "the KDC refused the request without a reason: see the KDC's log" },
	{ KRB5_KDCREP_SKEW, "KDCREP_SKEW", 0, HINT_CLOCK },
	{ KRB5_KDCREP_MODIFIED, "KDCREP_MODIFIED", 0, HINT_KEYTAB },
	{ KRB5_PREAUTH_FAILED, "PREAUTH_FAILED", 0, HINT_KEYTAB },
	{ KRB5_GET_IN_TKT_LOOP, "GET_IN_TKT_LOOP", 0, "the KDC kept asking for pre-authentication: see the KDC's log" },
	{ KRB5_MUTUAL_FAILED, "MUTUAL_FAILED", 0,
	  "the backend's reply is not for our request: a proxy in between, or another server's key" },
	{ KRB5KRB_AP_ERR_MUT_FAIL, "MUT_FAIL", 0,
	  "the backend's reply is not for our request: a proxy in between, or another server's key" },
	{ KRB5_TKT_NOT_FORWARDABLE, "TKT_NOT_FORWARDABLE", 0,
	  "the S4U2Self ticket is not forwardable: in AD, 'Trust this user for delegation to "
	  "specified services only - Use any authentication protocol' (MIT: +ok_to_auth_as_delegate)" },
	/* keytab, ccache, configuration */
	{ KRB5_FCC_NOFILE, "FCC_NOFILE", 0,
	  "no credentials for the proxy: [kerberos] keytab is missing, unreadable or does not hold "
	  "[kerberos] principal (check with klist -k -e KEYTAB)" },
	{ KRB5_KT_NOTFOUND, "KT_NOTFOUND", 0,
	  "[kerberos] keytab has no key for [kerberos] principal (klist -k -e KEYTAB)" },
	{ KRB5_KT_KVNONOTFOUND, "KT_KVNONOTFOUND", 0, HINT_KEYTAB },
	{ KRB5_KT_END, "KT_END", 0, "[kerberos] keytab is empty" },
	{ KRB5_KT_BADNAME, "KT_BADNAME", 0, "[kerberos] keytab is not a valid keytab name" },
	{ KRB5_KT_FORMAT, "KT_FORMAT", 0, "[kerberos] keytab is not a keytab file" },
	{ KRB5_CC_NOTFOUND, "CC_NOTFOUND", 0, "a needed ticket was not found: see the KDC's log" },
	{ KRB5_REALM_UNKNOWN, "REALM_UNKNOWN", 0,
	  "krb5.conf names no KDC for this realm: add it under [realms] (or set dns_lookup_kdc)" },
	{ KRB5_CONFIG_CANTOPEN, "CONFIG_CANTOPEN", 0, "krb5.conf cannot be read: check [kerberos] krb5_conf" },
	{ KRB5_CONFIG_BADFORMAT, "CONFIG_BADFORMAT", 0, "krb5.conf has a syntax error" },
	{ KRB5_PARSE_MALFORMED, "PARSE_MALFORMED", 0, "a principal name is malformed" },
	/* the KDC cannot be reached: 503, never cached */
	{ KRB5_KDC_UNREACH, "KDC_UNREACH", AT_UNREACH, NULL },
	{ KRB5_REALM_CANT_RESOLVE, "REALM_CANT_RESOLVE", AT_UNREACH, NULL },
	{ KRB5KDC_ERR_SVC_UNAVAILABLE, "SVC_UNAVAILABLE", AT_UNREACH, NULL },
	{ ETIMEDOUT, "ETIMEDOUT", AT_UNREACH, NULL },
	{ ECONNREFUSED, "ECONNREFUSED", AT_UNREACH, NULL },
	{ EHOSTUNREACH, "EHOSTUNREACH", AT_UNREACH, NULL },
	{ ENETUNREACH, "ENETUNREACH", AT_UNREACH, NULL },
	/* the keytab file itself */
	{ ENOENT, "ENOENT", 0, "[kerberos] keytab does not exist" },
	{ EACCES, "EACCES", 0, "kcd may not read [kerberos] keytab: check its owner and mode" },
};

static const struct {
	unsigned routine;
	const char *name;
} gss_routine_names[] = {
	{ GSS_S_BAD_MECH, "BAD_MECH" }, { GSS_S_BAD_NAME, "BAD_NAME" },
	{ GSS_S_BAD_NAMETYPE, "BAD_NAMETYPE" }, { GSS_S_BAD_BINDINGS, "BAD_BINDINGS" },
	{ GSS_S_BAD_STATUS, "BAD_STATUS" }, { GSS_S_BAD_SIG, "BAD_SIG" },
	{ GSS_S_NO_CRED, "NO_CRED" }, { GSS_S_NO_CONTEXT, "NO_CONTEXT" },
	{ GSS_S_DEFECTIVE_TOKEN, "DEFECTIVE_TOKEN" },
	{ GSS_S_DEFECTIVE_CREDENTIAL, "DEFECTIVE_CREDENTIAL" },
	{ GSS_S_CREDENTIALS_EXPIRED, "CREDENTIALS_EXPIRED" },
	{ GSS_S_CONTEXT_EXPIRED, "CONTEXT_EXPIRED" }, { GSS_S_FAILURE, "GSS_FAILURE" },
	{ GSS_S_BAD_QOP, "BAD_QOP" }, { GSS_S_UNAUTHORIZED, "UNAUTHORIZED" },
	{ GSS_S_UNAVAILABLE, "UNAVAILABLE" }, { GSS_S_DUPLICATE_ELEMENT, "DUPLICATE_ELEMENT" },
	{ GSS_S_NAME_NOT_MN, "NAME_NOT_MN" },
};

void
s4u_classify(enum s4u_step step, unsigned major, long code, struct s4u_class *out)
{
	const struct krb5_err *e = NULL;

	out->cls = KCD_ERR_PROXY;
	out->hint = NULL;
	for (size_t i = 0; i < sizeof(krb5_errs) / sizeof(krb5_errs[0]); i++) {
		if (krb5_errs[i].code == code) {
			e = &krb5_errs[i];
			break;
		}
	}
	/* A bare errno only means something while the keytab is read or the
	 * KDC contacted; elsewhere it is reported by number. */
	if (e != NULL && code > 0 && code < 4096 && !(e->where & AT_UNREACH) &&
	    step != S4U_STEP_PROXY_CRED)
		e = NULL;

	if (e != NULL) {
		snprintf(out->name, sizeof(out->name), "%s", e->name);
		if (e->where & AT_UNREACH) {
			out->cls = KCD_ERR_UNREACHABLE;
		} else if ((e->where & AT_USER_STEPS) && step != S4U_STEP_PROXY_CRED &&
		    step != S4U_STEP_MUTUAL) {
			out->cls = KCD_ERR_USER;
		} else {
			out->hint = e->hint;
		}
		return;
	}
	if (code >= KDC(0) && code < KDC(128))
		snprintf(out->name, sizeof(out->name), "KDC_ERR_%ld", code - KDC(0));
	else if (code != 0)
		snprintf(out->name, sizeof(out->name), "MINOR_%ld", code);
	else {
		unsigned routine = GSS_ROUTINE_ERROR(major);
		snprintf(out->name, sizeof(out->name), "GSS_0x%x", major);
		for (size_t i = 0; i < sizeof(gss_routine_names) / sizeof(gss_routine_names[0]); i++)
			if (gss_routine_names[i].routine == routine)
				snprintf(out->name, sizeof(out->name), "%s", gss_routine_names[i].name);
	}
	if (step == S4U_STEP_PROXY_CRED)
		out->hint = "acquiring the proxy's own credential failed: check [kerberos] keytab, "
		    "[kerberos] principal and krb5.conf (kinit -k -t KEYTAB PRINCIPAL)";
}

void
s4u_classify_badoption(int evidence_fwd, int proxy_seen_ok, struct s4u_class *out)
{
	out->hint = NULL;
	if (evidence_fwd == 1) {
		out->cls = KCD_ERR_PROXY;
		snprintf(out->name, sizeof(out->name), "NOT_ALLOWED_TO_DELEGATE");
		out->hint = "the proxy may not delegate to this service: add the SPN to the proxy "
		    "account's msDS-AllowedToDelegateTo (AD: Delegation tab, 'Trust this user for "
		    "delegation to specified services only'; MIT LDAP KDB: krbAllowedToDelegateTo)";
	} else if (evidence_fwd == 0 && proxy_seen_ok) {
		out->cls = KCD_ERR_USER;
		snprintf(out->name, sizeof(out->name), "NOT_DELEGABLE");
	} else if (evidence_fwd == 0) {
		out->cls = KCD_ERR_PROXY;
		snprintf(out->name, sizeof(out->name), "EVIDENCE_TKT_NOT_FORWARDABLE");
		out->hint = "the proxy's S4U2Self tickets are not forwardable: it lacks protocol "
		    "transition (ok_to_auth_as_delegate). In AD: 'Trust this user for delegation to "
		    "specified services only' with 'Use any authentication protocol' "
		    "(TRUSTED_TO_AUTH_FOR_DELEGATION); MIT: modprinc +ok_to_auth_as_delegate. "
		    "(A user marked sensitive gets the same refusal.)";
	} else {
		out->cls = KCD_ERR_PROXY;
		snprintf(out->name, sizeof(out->name), "BADOPTION");
		out->hint = "the KDC refused S4U2Proxy: check the proxy's protocol transition right "
		    "(ok_to_auth_as_delegate) and that the SPN is in its msDS-AllowedToDelegateTo";
	}
}

/* ---- SPNEGO NegTokenResp --------------------------------------------------------- */

/* One DER TLV at *p (definite length, at most 4 length bytes); advances *p
 * past it. Returns 0, or -1 when it does not fit before end. */
static int
der_tlv(const unsigned char **p, const unsigned char *end, unsigned char *tag,
    const unsigned char **val, size_t *vlen)
{
	const unsigned char *q = *p;
	size_t n;

	if (end - q < 2)
		return -1;
	*tag = *q++;
	if (*q < 0x80) {
		n = *q++;
	} else {
		unsigned k = *q++ & 0x7fu;
		if (k == 0 || k > 4 || (size_t)(end - q) < k)
			return -1;
		for (n = 0; k > 0; k--)
			n = n << 8 | *q++;
	}
	if ((size_t)(end - q) < n)
		return -1;
	*val = q;
	*vlen = n;
	*p = q + n;
	return 0;
}

int
s4u_spnego_unwrap(const unsigned char *in, size_t len, const unsigned char **tok,
    size_t *toklen, int *state)
{
	const unsigned char *p = in, *end = in + len, *v, *seq, *seq_end, *ev;
	const unsigned char *rt = NULL;
	size_t vlen, evlen, rtlen = 0;
	unsigned char tag, etag;
	int st = -1, last = -1;

	/* negTokenResp [1] { SEQUENCE { [0] negState, [1] supportedMech,
	 * [2] responseToken, [3] mechListMIC } }, all optional, in order */
	if (der_tlv(&p, end, &tag, &v, &vlen) != 0 || tag != 0xa1 || p != end)
		return -1;
	p = v;
	end = v + vlen;
	if (der_tlv(&p, end, &tag, &seq, &vlen) != 0 || tag != 0x30 || p != end)
		return -1;
	p = seq;
	seq_end = seq + vlen;
	while (p < seq_end) {
		if (der_tlv(&p, seq_end, &tag, &v, &vlen) != 0 || tag < 0xa0 || tag > 0xa3 ||
		    (int)(tag - 0xa0) <= last)
			return -1;
		last = tag - 0xa0;
		/* the explicit tag holds exactly one TLV (p is its end) */
		ev = v;
		if (der_tlv(&ev, p, &etag, &v, &evlen) != 0 || ev != p)
			return -1;
		switch (tag) {
		case 0xa0:	/* ENUMERATED accept-completed(0) .. request-mic(3) */
			if (etag != 0x0a || evlen != 1 || v[0] > 3)
				return -1;
			st = v[0];
			break;
		case 0xa1:	/* the mechanism's OID */
			if (etag != 0x06)
				return -1;
			break;
		case 0xa2:	/* the mechanism's token */
			if (etag != 0x04 || evlen == 0)
				return -1;
			rt = v;
			rtlen = evlen;
			break;
		default:	/* mechListMIC: meaningless when we did not offer
				 * SPNEGO (we send raw krb5 tokens) */
			if (etag != 0x04)
				return -1;
			break;
		}
	}
	*tok = rt;
	*toklen = rtlen;
	*state = st;
	return 0;
}

/* ---- the fast path's encodings (pure) ----------------------------------------------- */

/* The krb5 mechanism's OID (1.2.840.113554.1.2.2), DER-encoded with its tag. */
static const unsigned char KRB5_OID_TLV[] = {
	0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02
};

static void
put_le32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)v;
	p[1] = (unsigned char)(v >> 8);
	p[2] = (unsigned char)(v >> 16);
	p[3] = (unsigned char)(v >> 24);
}

int
s4u_cb_md5(const unsigned char *appdata, size_t len, unsigned char bnd[16])
{
	unsigned char buf[20 + 256];
	unsigned int mdlen = 0;

	if (appdata == NULL) {
		memset(bnd, 0, 16);
		return 0;
	}
	if (len > sizeof(buf) - 20)
		return -1;
	/* initiator addrtype, address length, acceptor addrtype, address
	 * length (GSS_C_AF_UNSPEC, none), application data length + bytes */
	memset(buf, 0, 16);
	put_le32(buf + 16, (uint32_t)len);
	if (len > 0)
		memcpy(buf + 20, appdata, len);
	if (EVP_Digest(buf, 20 + len, bnd, &mdlen, EVP_md5(), NULL) != 1 || mdlen != 16)
		return -1;
	return 0;
}

uint32_t
s4u_gss_flags(uint32_t kcd_flags)
{
	uint32_t f = GSS_C_CONF_FLAG | GSS_C_INTEG_FLAG | GSS_C_TRANS_FLAG;

	if (kcd_flags & KCD_F_MUTUAL)
		f |= GSS_C_MUTUAL_FLAG;
	return f;
}

void
s4u_gss_checksum(const unsigned char bnd[16], uint32_t gss_flags,
    unsigned char out[S4U_GSS_CKSUM_LEN])
{
	put_le32(out, 16);
	memcpy(out + 4, bnd, 16);
	put_le32(out + 20, gss_flags);
}

/* The RFC 2743 header in front of a krb5 message of len bytes: 0x60, the
 * DER length, the mechanism OID, the TOK_ID. Returns its length (at most
 * FRAME_HEAD_MAX), or 0 when len is too long to frame. */
#define FRAME_HEAD_MAX	(5 + sizeof(KRB5_OID_TLV) + 2)

static size_t
frame_head(unsigned tok_id, size_t len, unsigned char out[FRAME_HEAD_MAX])
{
	size_t inner, hdr, n = 0;

	if (len > 0xffffff - sizeof(KRB5_OID_TLV) - 2)
		return 0;
	inner = sizeof(KRB5_OID_TLV) + 2 + len;
	hdr = inner < 0x80 ? 2 : inner < 0x100 ? 3 : inner < 0x10000 ? 4 : 5;
	out[n++] = 0x60;
	if (inner < 0x80) {
		out[n++] = (unsigned char)inner;
	} else {
		out[n++] = (unsigned char)(0x80 | (hdr - 2));
		for (size_t k = hdr - 2; k > 0; k--)
			out[n++] = (unsigned char)(inner >> (8 * (k - 1)));
	}
	memcpy(out + n, KRB5_OID_TLV, sizeof(KRB5_OID_TLV));
	n += sizeof(KRB5_OID_TLV);
	out[n++] = (unsigned char)(tok_id >> 8);
	out[n++] = (unsigned char)tok_id;
	return n;
}

size_t
s4u_token_frame(unsigned tok_id, const unsigned char *msg, size_t len,
    unsigned char *out, size_t outlen)
{
	unsigned char head[FRAME_HEAD_MAX];
	size_t n = frame_head(tok_id, len, head);

	if (n == 0 || outlen < n || outlen - n < len)
		return 0;
	memcpy(out, head, n);
	if (len > 0)
		memcpy(out + n, msg, len);
	return n + len;
}

int
s4u_token_unframe(const unsigned char *in, size_t len, unsigned *tok_id,
    const unsigned char **msg, size_t *msglen)
{
	const unsigned char *p = in, *v;
	size_t vlen;
	unsigned char tag;

	if (in == NULL || der_tlv(&p, in + len, &tag, &v, &vlen) != 0 || tag != 0x60 ||
	    p != in + len)
		return -1;
	/* the length must be minimal DER: no long form below 128 */
	if (in[1] & 0x80 && (vlen < 0x80 || in[2] == 0))
		return -1;
	if (vlen < sizeof(KRB5_OID_TLV) + 2 ||
	    memcmp(v, KRB5_OID_TLV, sizeof(KRB5_OID_TLV)) != 0)
		return -1;
	*tok_id = (unsigned)v[sizeof(KRB5_OID_TLV)] << 8 | v[sizeof(KRB5_OID_TLV) + 1];
	*msg = v + sizeof(KRB5_OID_TLV) + 2;
	*msglen = vlen - sizeof(KRB5_OID_TLV) - 2;
	return 0;
}

/* ---- the state ----------------------------------------------------------------- */

struct proxy_cred {
	gss_cred_id_t cred;
	unsigned refs;			/* under s->pmu */
	uint64_t end;			/* mono ms; UINT64_MAX = indefinite */
	char ccname[96];		/* its private MEMORY ccache */
};

/* An impersonated credential as credcache holds it (its opaque cred). */
struct imp_cred {
	gss_cred_id_t gss;		/* pool threads: the GSS route */
	/* The S4U2Proxy service ticket its first token got, made ready for
	 * AP-REQs on the loop once (lead_done; NULL: none found or it could
	 * not be used, the fast path is not used). The loop's only. */
	struct apreq_ticket *fast;
	/* The base64 of fast's ticket DER as it lies in a framed token whose
	 * ticket starts at an offset of tkt_b64_at3 mod 3: the characters of
	 * the token's whole 3-byte groups inside the ticket
	 * (codec_b64_inner), the same in every token on fast whose ticket has
	 * that alignment, so that fast_token encodes only the token's head
	 * and its authenticator. Made by the first token (NULL until then, or
	 * when out of memory: the whole token is encoded), made again when a
	 * token's alignment differs; the loop's only, like fast. */
	char *tkt_b64;
	unsigned tkt_b64_at3;
};

/* A context kept for mutual authentication: a GSS one (gss.ctx, target)
 * from the GSS route, or what a fast-path token's AP-REP must match
 * (rep: the authenticator's ctime/cusec, a reference to the ticket's
 * session key, the subkey). */
struct kept_ctx {
	uint32_t id;
	int fast;			/* 1: u.rep; 0: u.gss */
	uint64_t expires;		/* mono ms */
	struct kept_ctx *hnext;
	struct kept_ctx *prev, *next;	/* FIFO: oldest first (one TTL for all) */
	union {
		struct {
			gss_ctx_id_t ctx;
			gss_name_t target;	/* the continuation call needs it again */
		} gss;
		struct apreq_reply rep;	/* its key: s->kctx's */
	} u;
};

struct s4u_req;

struct s4u {
	unsigned magic;
	struct event_base *base;
	struct pool *pool;		/* KDC exchanges: kdc_concurrency threads */
	/* Tokens on a cached credential (K_INIT: step 3 with the service
	 * ticket already in the credential's ccache, no KDC exchange) are CPU
	 * work only: one thread per CPU. Kept apart from the exchanges, so a
	 * cold start's queue does not hold up warm users' tokens, and so that
	 * kdc_concurrency threads do not take turns at GSSAPI's and malloc's
	 * locks for them (on 2 CPUs, 16 threads spent a third of kcd's time
	 * in futex wake-ups: docs/performance.md). */
	struct pool *ipool;
	struct credcache *cc;
	struct event *sweep;
	/* The fast path's krb5 context, kept for the process's life and used
	 * on the loop thread only (NULL: it could not be made; every token
	 * goes the GSS way). */
	krb5_context kctx;
	unsigned apreq_flags;		/* APREQ_CBT_AWARE from krb5.conf, read once */
	/* fast_token's scratch space, kept and grown to the largest ticket's
	 * need (no secret in either: the ticket and the encrypted
	 * authenticator): the framed AP-REQ, and its base64, the last token
	 * (s4u_token_now's answer points to it) */
	unsigned char *fast_buf;
	size_t fast_cap;
	char *fast_tok;
	size_t fast_tok_cap;
	/* the last channel bindings' Bnd (s4u_cb_md5): every token to one
	 * backend carries the same bindings, and OpenSSL 3's EVP_Digest costs
	 * about half a microsecond of set-up per call */
	unsigned char bnd_cb[KCD_CB_MAX];
	size_t bnd_cb_len;		/* 0: nothing kept */
	unsigned char bnd[16];
	char fast_key[KCD_SPN_MAX + KCD_PRINCIPAL_MAX];
	char *keytab, *principal;
	struct s4u_params p;

	pthread_mutex_t pmu;
	struct proxy_cred *pcur;	/* under pmu */
	/* Acquisitions are numbered; a thread that arrives while one is in
	 * progress waits for it on pmu and, when it found no KDC, shares its
	 * answer instead of waiting out libkrb5's retries once more. Threads
	 * arriving later try again: UNREACHABLE is never remembered. */
	_Atomic unsigned pattempt;	/* number of the latest acquisition */
	_Atomic int pbusy;		/* one is in progress */
	unsigned pfail_attempt;		/* under pmu: the last one that found no KDC */
	char pfail_name[KCD_NAME_MAX];
	char pfail_text[KCD_TEXT_MAX];
	int pcheck;			/* loop: an s4u_proxy_check is in flight */
	_Atomic uint64_t fwd_seen;	/* mono ms of the last proof of protocol transition */

	struct s4u_req *reqs;		/* every live request */
	unsigned n_reqs;

	struct kept_ctx **ctx_buckets;
	unsigned n_ctx_buckets;		/* power of two */
	struct kept_ctx *ctx_head, *ctx_tail;
	unsigned n_ctx;
	uint32_t next_ctx_id;

	struct s4u_stats st;
};

enum req_kind { K_NONE, K_LEAD, K_INIT };

/* Who got to a waiting request first (claim/on_timer): its pool thread
 * (RS_RUN: the exchange runs, kdc_timeout from started_ms) or the loop's
 * wait bound (RS_GIVEN_UP: answered TIMEOUT, the job must not run). */
enum req_state { RS_WAIT, RS_RUN, RS_GIVEN_UP };

struct s4u_req {
	unsigned magic;
	struct s4u *s;
	struct pool_job job;
	struct credcache_waiter waiter;
	struct event *ev;		/* deadline timer, or immediate delivery */
	struct s4u_req *prev, *next;	/* s->reqs */
	enum req_kind kind;
	int in_flight;			/* in the pool or waiting in credcache */
	int waiting;			/* queued behind another request's exchange */
	int job_ran;			/* its pool job came back */
	int answered;			/* fn called (or the timeout answered) */
	int immediate;			/* ev delivers the stored answer */
	uint32_t flags;
	char *key;			/* spn '\0' principal */
	size_t keylen;
	const char *spn, *principal;	/* into key */
	unsigned char cb[KCD_CB_MAX];
	size_t cb_len;
	s4u_done_fn *fn;
	void *arg;
	uint64_t t0, deadline;		/* mono ms; deadline: end of the wait */
	_Atomic int state;		/* enum req_state */
	_Atomic uint64_t started_ms;	/* mono ms, set by the thread before RS_RUN */
	struct credcache_cred *ccred;	/* K_INIT: the reference it uses */

	/* results, written by the job */
	int ok, kdc;
	int did_acquire, did_s4u2self, did_s4u2proxy, expired_in_queue;
	int did_as;			/* ran the proxy's AS exchange (did_acquire:
					 * and got the TGT) */
	int fast, fast_fallback;	/* fast_answer: made by, or refused by, the
					 * fast path */
	enum kcd_err_class cls;
	char name[KCD_NAME_MAX];
	char text[KCD_TEXT_MAX];
	struct imp_cred *ic;		/* K_LEAD: the new impersonated credential */
	krb5_creds *svc;		/* K_LEAD: its service ticket, copied out on
					 * the pool thread for the loop (lead_done) */
	uint64_t imp_end;		/* mono ms */
	gss_ctx_id_t ctx;		/* KCD_F_MUTUAL: kept for verification */
	gss_name_t target;		/* with ctx */
	struct apreq_reply rep;		/* KCD_F_MUTUAL, fast path: kept instead
					 * (rep.key NULL: nothing) */
	char *token;
	uint64_t ticket_end;		/* unix ms */
};

static gss_OID_desc krb5_mech_oid;	/* copied from gss_mech_krb5 at s4u_new */
static gss_OID_set_desc krb5_mechs = { 1, &krb5_mech_oid };
static _Atomic unsigned ccache_seq;

int
s4u_env_init(const char *krb5_conf, char *err, size_t errlen)
{
	if (krb5_conf == NULL || krb5_conf[0] == '\0')
		return 0;
	if (access(krb5_conf, R_OK) != 0) {
		snprintf(err, errlen, "[kerberos] krb5_conf %s: %s", krb5_conf, strerror(errno));
		return -1;
	}
	if (setenv("KRB5_CONFIG", krb5_conf, 1) != 0) {
		snprintf(err, errlen, "setenv KRB5_CONFIG: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/* ---- the proxy's credential (pool threads) ----------------------------------------- */

void
s4u_ccache_destroy(const char *name)
{
	krb5_context kc;
	krb5_ccache cc;

	if (krb5_init_context(&kc) != 0)
		return;
	if (krb5_cc_resolve(kc, name, &cc) == 0)
		krb5_cc_destroy(kc, cc);
	krb5_free_context(kc);
}

static void
proxy_free(struct proxy_cred *pc)
{
	OM_uint32 min;

	if (pc->cred != GSS_C_NO_CREDENTIAL)
		gss_release_cred(&min, &pc->cred);
	s4u_ccache_destroy(pc->ccname);
	free(pc);
}

static void
proxy_put(struct s4u *s, struct proxy_cred *pc)
{
	int last;

	pthread_mutex_lock(&s->pmu);
	last = --pc->refs == 0;
	pthread_mutex_unlock(&s->pmu);
	if (last)
		proxy_free(pc);
}

/* Forget pc as the current credential (the KDC refused something only a
 * fresh one can fix); the next leader acquires again. */
static void
proxy_drop(struct s4u *s, struct proxy_cred *pc)
{
	int drop = 0;

	pthread_mutex_lock(&s->pmu);
	if (s->pcur == pc) {
		s->pcur = NULL;
		drop = --pc->refs == 0;
	}
	pthread_mutex_unlock(&s->pmu);
	if (drop)
		proxy_free(pc);
}

static void
gss_text(const char *what, OM_uint32 major, OM_uint32 minor, const struct s4u_class *c,
    char *text, size_t len)
{
	char detail[768];

	log_gss_error(major, minor, &krb5_mech_oid, detail, sizeof(detail));
	snprintf(text, len, "%s: %s (%s)%s%s", what, detail, c->name,
	    c->hint != NULL ? "; hint: " : "", c->hint != NULL ? c->hint : "");
}

static void
req_fail(struct s4u_req *r, enum s4u_step step, const char *what, OM_uint32 major, OM_uint32 minor)
{
	struct s4u_class c;

	s4u_classify(step, major, (long)(int32_t)minor, &c);
	r->ok = 0;
	r->cls = c.cls;
	snprintf(r->name, sizeof(r->name), "%s", c.name);
	gss_text(what, major, minor, &c, r->text, sizeof(r->text));
}

static void
req_fail_text(struct s4u_req *r, enum kcd_err_class cls, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void
req_fail_text(struct s4u_req *r, enum kcd_err_class cls, const char *name, const char *fmt, ...)
{
	va_list ap;

	r->ok = 0;
	r->cls = cls;
	snprintf(r->name, sizeof(r->name), "%s", name);
	va_start(ap, fmt);
	vsnprintf(r->text, sizeof(r->text), fmt, ap);
	va_end(ap);
}

/* A reference to a proxy credential with at least S4U_PROXY_MARGIN_MS
 * left, acquiring one from the keytab when needed. The acquisition (an AS
 * exchange) runs under pmu: threads that need it meanwhile wait for its
 * result instead of each asking the KDC. Returns NULL with r failed. */
static struct proxy_cred *
proxy_get(struct s4u *s, struct s4u_req *r)
{
	gss_key_value_element_desc el[2];
	gss_key_value_set_desc store = { 2, el };
	gss_buffer_desc nb;
	gss_name_t name = GSS_C_NO_NAME;
	struct proxy_cred *pc = NULL, *old = NULL, *ret = NULL;
	OM_uint32 major, minor, lifetime = 0;
	uint64_t now;
	unsigned waited = 0, attempt;
	char what[1024];

	if (atomic_load(&s->pbusy))
		waited = atomic_load(&s->pattempt);
	pthread_mutex_lock(&s->pmu);
	now = clock_mono_ms();
	if (s->pcur != NULL && s->pcur->end > now + S4U_PROXY_MARGIN_MS) {
		s->pcur->refs++;
		ret = s->pcur;
		goto cleanup;
	}
	if (s->pcur != NULL) {
		/* MIT refreshes a client-keytab credential by itself; ask
		 * before replacing it. */
		major = gss_inquire_cred(&minor, s->pcur->cred, NULL, &lifetime, NULL, NULL);
		if (!GSS_ERROR(major) && (lifetime == GSS_C_INDEFINITE ||
		    (uint64_t)lifetime * 1000 > S4U_PROXY_MARGIN_MS)) {
			s->pcur->end = lifetime == GSS_C_INDEFINITE ? UINT64_MAX :
			    now + (uint64_t)lifetime * 1000;
			s->pcur->refs++;
			ret = s->pcur;
			goto cleanup;
		}
	}

	if (waited != 0 && s->pfail_attempt == waited) {
		req_fail_text(r, KCD_ERR_UNREACHABLE, s->pfail_name, "%s (the answer of the "
		    "acquisition this request waited for)", s->pfail_text);
		goto cleanup;
	}
	attempt = atomic_fetch_add(&s->pattempt, 1) + 1;
	atomic_store(&s->pbusy, 1);
	if ((pc = calloc(1, sizeof(*pc))) == NULL) {
		req_fail_text(r, KCD_ERR_INTERNAL, "NOMEM", "out of memory for the proxy credential");
		goto cleanup;
	}
	pc->cred = GSS_C_NO_CREDENTIAL;
	snprintf(pc->ccname, sizeof(pc->ccname), "MEMORY:eas-kcd-proxy-%ld-%u", (long)getpid(),
	    atomic_fetch_add(&ccache_seq, 1));
	el[0].key = "client_keytab";
	el[0].value = s->keytab;
	el[1].key = "ccache";
	el[1].value = pc->ccname;
	nb.value = s->principal;
	nb.length = strlen(s->principal);
	snprintf(what, sizeof(what), "acquiring the proxy credential for %s from keytab %s",
	    s->principal, s->keytab);
	major = gss_import_name(&minor, &nb, GSS_KRB5_NT_PRINCIPAL_NAME, &name);
	if (GSS_ERROR(major)) {
		req_fail(r, S4U_STEP_PROXY_CRED, what, major, minor);
		goto cleanup;
	}
	r->did_as = 1;			/* reported on the loop (tgt_exchange) */
	major = gss_acquire_cred_from(&minor, name, GSS_C_INDEFINITE, &krb5_mechs, GSS_C_INITIATE,
	    &store, &pc->cred, NULL, &lifetime);
	if (GSS_ERROR(major)) {
		req_fail(r, S4U_STEP_PROXY_CRED, what, major, minor);
		if (r->cls == KCD_ERR_UNREACHABLE) {
			s->pfail_attempt = attempt;
			memcpy(s->pfail_name, r->name, sizeof(s->pfail_name));
			memcpy(s->pfail_text, r->text, sizeof(s->pfail_text));
		}
		goto cleanup;
	}

	r->did_acquire = 1;
	pc->end = lifetime == GSS_C_INDEFINITE ? UINT64_MAX : now + (uint64_t)lifetime * 1000;
	pc->refs = 2;			/* s->pcur's and ours */
	old = s->pcur;
	s->pcur = pc;
	ret = pc;
	pc = NULL;
	if (old != NULL && --old->refs > 0)
		old = NULL;		/* still in use: its last user frees it */

cleanup:
	atomic_store(&s->pbusy, 0);
	pthread_mutex_unlock(&s->pmu);
	if (name != GSS_C_NO_NAME)
		gss_release_name(&minor, &name);
	if (pc != NULL)
		proxy_free(pc);
	if (old != NULL)
		proxy_free(old);
	return ret;
}

/* On the loop: tell the embedding kcd about r's AS exchange, if r ran one. */
static void
tgt_exchange(struct s4u *s, const struct s4u_req *r)
{
	if (r->did_as && s->p.on_tgt_exchange != NULL)
		s->p.on_tgt_exchange(r->did_acquire, s->p.tgt_arg);
}

/* ---- the proxy's credential ahead of requests (s4u_proxy_check) -------------------- */

#define CHECK_MAGIC	0x53345043u	/* "S4PC" */

/* One s4u_proxy_check. proxy_get reports into a request's answer fields,
 * so the check carries a request for that alone (r: ok, cls, name, text,
 * did_acquire). The pool owns it from submission until check_done or
 * check_drop frees it. */
struct proxy_check {
	unsigned magic;
	struct s4u *s;
	struct pool_job job;
	s4u_proxy_fn *fn;
	void *arg;
	int ok;
	uint64_t end_ms;		/* unix ms; UINT64_MAX: no end; 0: none */
	struct s4u_req r;
};

static void
work_check(struct pool_job *job)
{
	struct proxy_check *c = CONTAINER_OF(job, struct proxy_check, job);
	struct s4u *s = c->s;
	struct proxy_cred *pc;
	uint64_t end = 0, now, unow;

	pc = proxy_get(s, &c->r);
	pthread_mutex_lock(&s->pmu);
	if (pc != NULL)
		end = pc->end;
	else if (s->pcur != NULL)
		end = s->pcur->end;	/* a renewal failed: what is still held */
	pthread_mutex_unlock(&s->pmu);
	if (pc != NULL)
		proxy_put(s, pc);
	c->ok = pc != NULL;
	now = clock_mono_ms();
	unow = clock_unix_ms();
	if (end == 0 || end == UINT64_MAX)
		c->end_ms = end;
	else if (end >= now)
		c->end_ms = unow + (end - now);
	else
		c->end_ms = unow > now - end ? unow - (now - end) : 1;
}

static void
check_done(struct pool_job *job)
{
	struct proxy_check *c = CONTAINER_OF(job, struct proxy_check, job);
	struct s4u *s = c->s;
	struct s4u_proxy_state st;

	if (c->magic != CHECK_MAGIC || s->magic != S4U_MAGIC)
		abort();
	s->pcheck = 0;
	s->st.proxy_acquired += c->r.did_acquire;
	tgt_exchange(s, &c->r);
	memset(&st, 0, sizeof(st));
	st.ok = c->ok;
	st.acquired = c->r.did_acquire;
	st.end_ms = c->end_ms;
	if (!c->ok) {
		st.cls = c->r.cls;
		st.name = c->r.name;
		st.text = c->r.text;
	}
	c->fn(&st, c->arg);		/* may start the next check */
	c->magic = 0;
	free(c);
}

static void
check_drop(struct pool_job *job, int work_ran)
{
	struct proxy_check *c = CONTAINER_OF(job, struct proxy_check, job);

	(void)work_ran;
	c->s->pcheck = 0;		/* s4u_free: the answer goes nowhere */
	c->magic = 0;
	free(c);
}

int
s4u_proxy_check(struct s4u *s, s4u_proxy_fn *fn, void *arg)
{
	struct proxy_check *c;

	if (s == NULL || s->magic != S4U_MAGIC)
		abort();
	if (s->pcheck || fn == NULL || (c = calloc(1, sizeof(*c))) == NULL)
		return -1;
	c->magic = CHECK_MAGIC;
	c->s = s;
	c->fn = fn;
	c->arg = arg;
	c->job.work = work_check;
	c->job.done = check_done;
	c->job.drop = check_drop;
	if (pool_submit(s->pool, &c->job) != 0) {
		free(c);
		return -1;
	}
	s->pcheck = 1;
	return 0;
}

/* ---- pool work ----------------------------------------------------------------------- */

/* Calls fn for each ticket of user's in a copy of imp's ccache (config
 * entries left out), with a krb5 context of its own: pool threads only.
 * Returns 0, or -1 when the ccache could not be read (fn not called). */
typedef void imp_ticket_fn(krb5_context kc, const krb5_creds *c, void *arg);

static int
imp_tickets(gss_cred_id_t imp, const char *user, imp_ticket_fn *fn, void *arg)
{
	krb5_context kc = NULL;
	krb5_ccache cc = NULL;
	krb5_cc_cursor cur;
	krb5_creds c;
	krb5_principal up = NULL;
	OM_uint32 major, minor;
	int ret = -1;

	if (krb5_init_context(&kc) != 0)
		return -1;
	if (krb5_parse_name(kc, user, &up) != 0 ||
	    krb5_cc_new_unique(kc, "MEMORY", NULL, &cc) != 0)
		goto cleanup;
	major = gss_krb5_copy_ccache(&minor, imp, cc);
	if (GSS_ERROR(major) || krb5_cc_start_seq_get(kc, cc, &cur) != 0)
		goto cleanup;
	while (krb5_cc_next_cred(kc, cc, &cur, &c) == 0) {
		if (!krb5_is_config_principal(kc, c.server) &&
		    krb5_principal_compare(kc, c.client, up))
			fn(kc, &c, arg);
		krb5_free_cred_contents(kc, &c);
	}
	krb5_cc_end_seq_get(kc, cc, &cur);
	ret = 0;

cleanup:
	if (cc != NULL)
		krb5_cc_destroy(kc, cc);
	krb5_free_principal(kc, up);
	krb5_free_context(kc);
	return ret;
}

struct evidence {
	int forwardable;		/* -1: no S4U2Self ticket seen */
	char *server;
	size_t slen;
};

static void
evidence_ticket(krb5_context kc, const krb5_creds *c, void *arg)
{
	struct evidence *e = arg;
	char *sname = NULL;

	if (c->server->length == 2 && c->server->data[0].length == KRB5_TGS_NAME_SIZE &&
	    memcmp(c->server->data[0].data, KRB5_TGS_NAME, KRB5_TGS_NAME_SIZE) == 0)
		return;			/* a TGT, not the evidence */
	e->forwardable = (c->ticket_flags & TKT_FLG_FORWARDABLE) ? 1 : 0;
	if (e->server != NULL && e->slen > 0 && krb5_unparse_name(kc, c->server, &sname) == 0) {
		snprintf(e->server, e->slen, "%s", sname);
		krb5_free_unparsed_name(kc, sname);
	}
}

/* The impersonated credential's ccache holds the S4U2Self ticket (client =
 * the user, server = the proxy, under whatever name the KDC canonicalised
 * it to) and a copy of the proxy's TGT (client = the proxy). */
int
s4u_evidence_forwardable(gss_cred_id_t imp, const char *user, char *server, size_t slen)
{
	struct evidence e = { -1, server, slen };

	if (imp_tickets(imp, user, evidence_ticket, &e) != 0)
		return -1;
	return e.forwardable;
}

/* Is c's server service/host (any realm: whatever the KDC canonicalised
 * the host-based name to)? */
static int
server_is(const krb5_creds *c, const char *service, size_t slen, const char *host)
{
	const krb5_data *d;

	if (c->server == NULL || c->server->length != 2)
		return 0;
	d = &c->server->data[0];
	if (d->length != slen || memcmp(d->data, service, slen) != 0)
		return 0;
	d = &c->server->data[1];
	return d->length == strlen(host) && strncasecmp(d->data, host, d->length) == 0;
}

struct svc_pick {
	const char *spn, *at;
	krb5_creds *best;		/* owned; copied with the walk's context */
};

static void
svc_ticket(krb5_context kc, const krb5_creds *c, void *arg)
{
	struct svc_pick *p = arg;
	krb5_creds *copy = NULL;

	if (c->ticket.length == 0 || !server_is(c, p->spn, (size_t)(p->at - p->spn), p->at + 1) ||
	    (p->best != NULL && c->times.endtime <= p->best->times.endtime))
		return;
	if (krb5_copy_creds(kc, c, &copy) != 0)
		return;
	krb5_free_creds(kc, p->best);
	p->best = copy;
}

/* The service ticket the S4U2Proxy just put in imp's ccache, copied out for
 * the fast path: client = user, server = spn's service/host (not the
 * S4U2Self evidence ticket, whose server is the proxy, nor the proxy's
 * TGT); the one ending last when there are several. NULL when none is
 * found. Pool thread, once per credential. */
static krb5_creds *
svc_extract(gss_cred_id_t imp, const char *user, const char *spn)
{
	struct svc_pick p = { spn, strchr(spn, '@'), NULL };

	/* imp_tickets fails before calling svc_ticket or not at all */
	if (p.at == NULL || imp_tickets(imp, user, svc_ticket, &p) != 0)
		return NULL;
	return p.best;			/* to the caller */
}

static int
proxy_seen_ok(struct s4u *s)
{
	uint64_t t = atomic_load(&s->fwd_seen);

	return t != 0 && clock_mono_ms() - t < FWD_SEEN_WINDOW_MS;
}

/* The channel bindings' application data both routes pass (RFC 5929:
 * "tls-server-end-point:" + the hash of the backend's certificate), in
 * out; returns its length. cb_len <= KCD_CB_MAX (check_args). */
#define CB_APPDATA_MAX	(sizeof(S4U_CB_PREFIX) - 1 + KCD_CB_MAX)

static size_t
cb_appdata(const unsigned char *cb, size_t cb_len, unsigned char out[CB_APPDATA_MAX])
{
	memcpy(out, S4U_CB_PREFIX, sizeof(S4U_CB_PREFIX) - 1);
	if (cb_len > 0)
		memcpy(out + sizeof(S4U_CB_PREFIX) - 1, cb, cb_len);
	return sizeof(S4U_CB_PREFIX) - 1 + cb_len;
}

/* gss_init_sec_context with cred for r's SPN, channel bindings and flags.
 * The first one for a fresh impersonated credential is the S4U2Proxy. */
static int
init_context(struct s4u *s, struct s4u_req *r, gss_cred_id_t cred, enum s4u_step step)
{
	struct gss_channel_bindings_struct cbs;
	unsigned char appdata[CB_APPDATA_MAX];
	gss_buffer_desc nb, out = GSS_C_EMPTY_BUFFER;
	gss_name_t target = GSS_C_NO_NAME;
	gss_ctx_id_t ctx = GSS_C_NO_CONTEXT;
	OM_uint32 major, minor, req_flags = 0, time_rec = 0;
	char what[1400];
	int ret = -1;

	snprintf(what, sizeof(what), "%s for %s to %s",
	    step == S4U_STEP_S4U2PROXY ? "S4U2Proxy (gss_init_sec_context)" : "gss_init_sec_context",
	    r->principal, r->spn);
	nb.value = (void *)r->spn;
	nb.length = strlen(r->spn);
	major = gss_import_name(&minor, &nb, GSS_C_NT_HOSTBASED_SERVICE, &target);
	if (GSS_ERROR(major)) {
		req_fail(r, step, what, major, minor);
		goto cleanup;
	}
	if (r->cb_len > 0) {
		memset(&cbs, 0, sizeof(cbs));
		cbs.initiator_addrtype = GSS_C_AF_UNSPEC;
		cbs.acceptor_addrtype = GSS_C_AF_UNSPEC;
		cbs.application_data.length = cb_appdata(r->cb, r->cb_len, appdata);
		cbs.application_data.value = appdata;
	}
	if (r->flags & KCD_F_MUTUAL)
		req_flags |= GSS_C_MUTUAL_FLAG;
	if (step == S4U_STEP_S4U2PROXY)
		r->did_s4u2proxy = 1;
	major = gss_init_sec_context(&minor, cred, &ctx, target, &krb5_mech_oid, req_flags, 0,
	    r->cb_len > 0 ? &cbs : GSS_C_NO_CHANNEL_BINDINGS, GSS_C_NO_BUFFER, NULL, &out,
	    NULL, &time_rec);
	if (GSS_ERROR(major)) {
		if ((long)(int32_t)minor == KRB5KDC_ERR_BADOPTION) {
			/* S4U2Proxy refused; the code does not say whose fault */
			struct s4u_class c;
			s4u_classify_badoption(s4u_evidence_forwardable(cred, r->principal, NULL, 0),
			    proxy_seen_ok(s), &c);
			r->ok = 0;
			r->cls = c.cls;
			snprintf(r->name, sizeof(r->name), "%s", c.name);
			gss_text(what, major, minor, &c, r->text, sizeof(r->text));
		} else {
			req_fail(r, step, what, major, minor);
		}
		goto cleanup;
	}
	if (out.length == 0 || out.length > (KCD_TOKEN_MAX / 4) * 3 - 3) {
		req_fail_text(r, KCD_ERR_INTERNAL, "TOKEN_SIZE", "%s: token of %zu bytes", what,
		    out.length);
		goto cleanup;
	}
	if ((r->token = codec_b64_encode(out.value, out.length)) == NULL) {
		req_fail_text(r, KCD_ERR_INTERNAL, "NOMEM", "%s: out of memory", what);
		goto cleanup;
	}
	if (step == S4U_STEP_S4U2PROXY)
		atomic_store(&s->fwd_seen, clock_mono_ms());
	r->ticket_end = time_rec == GSS_C_INDEFINITE ? 0 :
	    clock_unix_ms() + (uint64_t)time_rec * 1000;
	if ((r->flags & KCD_F_MUTUAL) && (major & GSS_S_CONTINUE_NEEDED)) {
		r->ctx = ctx;		/* to the loop, for s4u_verify_mutual */
		ctx = GSS_C_NO_CONTEXT;
		r->target = target;
		target = GSS_C_NO_NAME;
	}
	r->ok = 1;
	ret = 0;

cleanup:
	if (ctx != GSS_C_NO_CONTEXT)
		gss_delete_sec_context(&minor, &ctx, GSS_C_NO_BUFFER);
	if (target != GSS_C_NO_NAME)
		gss_release_name(&minor, &target);
	gss_release_buffer(&minor, &out);
	return ret;
}

/* On the pool thread, before anything else: start r's exchange (1), or
 * find that its wait bound passed or was answered already (0: fail it
 * without contacting the KDC; the loop drops the result when answered). */
static int
claim(struct s4u_req *r)
{
	int expect = RS_WAIT;
	uint64_t now = clock_mono_ms();

	if (now < r->deadline) {
		atomic_store(&r->started_ms, now);
		if (atomic_compare_exchange_strong(&r->state, &expect, RS_RUN))
			return 1;
	} else {
		(void)atomic_compare_exchange_strong(&r->state, &expect, RS_GIVEN_UP);
	}
	r->expired_in_queue = 1;
	req_fail_text(r, KCD_ERR_UNREACHABLE, "TIMEOUT",
	    "no free KDC slot within %llu ms for %s to %s: every one of the "
	    "kdc_concurrency threads is busy with a slow or unreachable KDC",
	    (unsigned long long)r->s->p.queue_timeout_ms, r->principal, r->spn);
	return 0;
}

/* Leader: proxy credential, S4U2Self, then the first token (S4U2Proxy). */
static void
work_lead(struct pool_job *job)
{
	struct s4u_req *r = CONTAINER_OF(job, struct s4u_req, job);
	struct s4u *s = r->s;
	struct proxy_cred *pc = NULL;
	gss_buffer_desc nb;
	gss_name_t user = GSS_C_NO_NAME;
	gss_cred_id_t imp = GSS_C_NO_CREDENTIAL;
	OM_uint32 major, minor, lifetime = 0;
	char what[1200];

	if (!claim(r) || (pc = proxy_get(s, r)) == NULL)
		goto cleanup;
	snprintf(what, sizeof(what), "S4U2Self (gss_acquire_cred_impersonate_name) for %s by %s",
	    r->principal, s->principal);
	nb.value = (void *)r->principal;
	nb.length = strlen(r->principal);
	major = gss_import_name(&minor, &nb, GSS_KRB5_NT_PRINCIPAL_NAME, &user);
	if (GSS_ERROR(major)) {
		req_fail(r, S4U_STEP_S4U2SELF, what, major, minor);
		goto cleanup;
	}
	r->did_s4u2self = 1;
	major = gss_acquire_cred_impersonate_name(&minor, pc->cred, user, GSS_C_INDEFINITE,
	    &krb5_mechs, GSS_C_INITIATE, &imp, NULL, &lifetime);
	if (GSS_ERROR(major)) {
		req_fail(r, S4U_STEP_S4U2SELF, what, major, minor);
		if (r->cls == KCD_ERR_PROXY)
			proxy_drop(s, pc);	/* let the next leader start afresh */
		goto cleanup;
	}
	if (init_context(s, r, imp, S4U_STEP_S4U2PROXY) != 0)
		goto cleanup;
	if ((r->ic = calloc(1, sizeof(*r->ic))) == NULL) {
		req_fail_text(r, KCD_ERR_INTERNAL, "NOMEM", "out of memory keeping the credential "
		    "for %s", r->principal);
		free(r->token);
		r->token = NULL;
		goto cleanup;
	}
	/* the fast path's ticket, once per credential (lead_done makes it
	 * ready): a failure here only means every token for this user goes
	 * the GSS way */
	if (s->kctx != NULL)
		r->svc = svc_extract(imp, r->principal, r->spn);
	r->ic->gss = imp;		/* to the loop, for credcache */
	imp = GSS_C_NO_CREDENTIAL;
	r->imp_end = lifetime == GSS_C_INDEFINITE ? UINT64_MAX :
	    clock_mono_ms() + (uint64_t)lifetime * 1000;

cleanup:
	if (imp != GSS_C_NO_CREDENTIAL)
		gss_release_cred(&minor, &imp);
	if (user != GSS_C_NO_NAME)
		gss_release_name(&minor, &user);
	if (pc != NULL)
		proxy_put(s, pc);
}

static void
work_init(struct pool_job *job)
{
	struct s4u_req *r = CONTAINER_OF(job, struct s4u_req, job);

	if (!claim(r))
		return;
	init_context(r->s, r, ((struct imp_cred *)credcache_cred_get(r->ccred))->gss, S4U_STEP_INIT);
}

/* ---- kept contexts (loop) ------------------------------------------------------------ */

static struct kept_ctx **
ctx_slot(struct s4u *s, uint32_t id)
{
	struct kept_ctx **pp = &s->ctx_buckets[id & (s->n_ctx_buckets - 1)];

	while (*pp != NULL && (*pp)->id != id)
		pp = &(*pp)->hnext;
	return pp;
}

static void
ctx_remove(struct s4u *s, struct kept_ctx *k)
{
	struct kept_ctx **pp = ctx_slot(s, k->id);
	OM_uint32 minor;

	*pp = k->hnext;
	if (k->prev != NULL)
		k->prev->next = k->next;
	else
		s->ctx_head = k->next;
	if (k->next != NULL)
		k->next->prev = k->prev;
	else
		s->ctx_tail = k->prev;
	s->n_ctx--;
	if (k->fast) {
		apreq_reply_clear(s->kctx, &k->u.rep);
	} else {
		if (k->u.gss.ctx != GSS_C_NO_CONTEXT)
			gss_delete_sec_context(&minor, &k->u.gss.ctx, GSS_C_NO_BUFFER);
		if (k->u.gss.target != GSS_C_NO_NAME)
			gss_release_name(&minor, &k->u.gss.target);
	}
	free(k);
}

/* Takes ctx and target (GSS route) or, rep not NULL, what *rep holds
 * (fast path; ctx and target then GSS_C_NO_*; *rep is cleared); returns
 * the id, or 0 (all released) when out of memory. */
static uint32_t
ctx_keep(struct s4u *s, gss_ctx_id_t ctx, gss_name_t target, struct apreq_reply *rep)
{
	struct kept_ctx *k;
	OM_uint32 minor;

	if ((k = calloc(1, sizeof(*k))) == NULL) {
		if (ctx != GSS_C_NO_CONTEXT)
			gss_delete_sec_context(&minor, &ctx, GSS_C_NO_BUFFER);
		if (target != GSS_C_NO_NAME)
			gss_release_name(&minor, &target);
		if (rep != NULL)
			apreq_reply_clear(s->kctx, rep);
		return 0;
	}
	while (s->n_ctx >= s->p.max_contexts)
		ctx_remove(s, s->ctx_head);	/* oldest first */
	do {
		k->id = ++s->next_ctx_id;
	} while (k->id == 0 || *ctx_slot(s, k->id) != NULL);
	if (rep != NULL) {
		k->fast = 1;
		k->u.rep = *rep;		/* the key reference moves */
		explicit_bzero(rep, sizeof(*rep));
	} else {
		k->u.gss.ctx = ctx;
		k->u.gss.target = target;
	}
	k->expires = clock_mono_ms() + s->p.ctx_ttl_ms;
	k->hnext = NULL;
	*ctx_slot(s, k->id) = k;
	k->prev = s->ctx_tail;
	if (s->ctx_tail != NULL)
		s->ctx_tail->next = k;
	else
		s->ctx_head = k;
	s->ctx_tail = k;
	s->n_ctx++;
	return k->id;
}

void
s4u_ctx_release(struct s4u *s, uint32_t ctx_id)
{
	struct kept_ctx *k = ctx_id != 0 ? *ctx_slot(s, ctx_id) : NULL;

	if (k != NULL)
		ctx_remove(s, k);
}

static void
set_err(struct s4u_error *err, enum kcd_err_class cls, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void
set_err(struct s4u_error *err, enum kcd_err_class cls, const char *name, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL)
		return;
	err->cls = cls;
	snprintf(err->name, sizeof(err->name), "%s", name);
	va_start(ap, fmt);
	vsnprintf(err->text, sizeof(err->text), fmt, ap);
	va_end(ap);
}

/* The backend's reply to a fast-path token, checked as MIT's GSS mechanism
 * checks it (init_sec_context's mutual_auth): the RFC 2743 framing of the
 * krb5 mechanism, a KRB-ERROR (TOK_ID 03 00) is the error it carries, an
 * AP-REP (TOK_ID 02 00) must pass apreq_verify_rep with the kept reply
 * state: decrypted with the ticket's session key (or, as MIT also tries,
 * our subkey) and its ctime/cusec equal to our authenticator's. */
static int
verify_fast(struct s4u *s, struct kept_ctx *k, const unsigned char *in, size_t len,
    struct s4u_error *err)
{
	const unsigned char *msg;
	size_t msglen;
	unsigned tok_id;
	krb5_data body;
	krb5_error *kerr = NULL;
	krb5_error_code code;
	struct s4u_class c;
	const char *msgtxt, *cause = "";

	if (s4u_token_unframe(in, len, &tok_id, &msg, &msglen) != 0 ||
	    (tok_id != S4U_TOK_AP_REP && tok_id != S4U_TOK_ERROR)) {
		set_err(err, KCD_ERR_PROXY, "DEFECTIVE_TOKEN", "mutual authentication: the backend's "
		    "reply token did not verify: not a Kerberos AP-REP or KRB-ERROR in RFC 2743 "
		    "framing (%zu bytes)", len);
		return -1;
	}
	if (tok_id == S4U_TOK_ERROR) {
		/* rare: libkrb5's own decoder */
		body.magic = KV5M_DATA;
		body.length = (unsigned)msglen;
		body.data = (char *)msg;
		code = krb5_rd_error(s->kctx, &body, &kerr);
		if (code == 0) {
			code = kerr->error != 0 ? (krb5_error_code)kerr->error + ERROR_TABLE_BASE_krb5 :
			    KRB5KRB_ERR_GENERIC;
			krb5_free_error(s->kctx, kerr);
		}
		s4u_classify(S4U_STEP_MUTUAL, 0, code, &c);
		msgtxt = krb5_get_error_message(s->kctx, code);
		set_err(err, KCD_ERR_PROXY, c.name, "mutual authentication: the backend answered "
		    "with a Kerberos error instead of a reply (did not verify): %s", msgtxt);
		krb5_free_error_message(s->kctx, msgtxt);
		return -1;
	}
	if (apreq_verify_rep(s->kctx, &k->u.rep, msg, msglen, &code, &cause) == 0)
		return 0;
	if (code == 0) {
		set_err(err, KCD_ERR_PROXY, "DEFECTIVE_TOKEN", "mutual authentication: the backend's "
		    "reply token did not verify: not a well-formed AP-REP: %s (%zu bytes)", cause,
		    msglen);
		return -1;
	}
	s4u_classify(S4U_STEP_MUTUAL, 0, code, &c);
	msgtxt = krb5_get_error_message(s->kctx, code);
	set_err(err, KCD_ERR_PROXY, c.name,
	    "mutual authentication: the backend's reply token did not verify: %s (%s)", msgtxt, cause);
	krb5_free_error_message(s->kctx, msgtxt);
	return -1;
}

int
s4u_verify_mutual(struct s4u *s, uint32_t ctx_id, const char *token_b64, struct s4u_error *err)
{
	struct kept_ctx *k = ctx_id != 0 ? *ctx_slot(s, ctx_id) : NULL;
	gss_buffer_desc in, out = GSS_C_EMPTY_BUFFER;
	unsigned char *raw = NULL;
	size_t len = token_b64 != NULL ? strnlen(token_b64, KCD_TOKEN_MAX + 1) : 0;
	OM_uint32 major, minor, ret_flags = 0;
	long n;
	int ret = -1;

	if (k == NULL) {
		set_err(err, KCD_ERR_PROXY, "NO_CONTEXT",
		    "mutual authentication: no kept context %u (expired, released or never kept)", ctx_id);
		return -1;
	}
	/* whole quads only: padding is not optional in a header token */
	if (len == 0 || len > KCD_TOKEN_MAX || len % 4 != 0 ||
	    (raw = malloc(len / 4 * 3 + 3)) == NULL ||
	    (n = codec_b64_decode(token_b64, len, raw, len / 4 * 3 + 3)) <= 0) {
		set_err(err, KCD_ERR_PROXY, "BAD_TOKEN",
		    "mutual authentication: the backend's WWW-Authenticate token is not valid base64 "
		    "(%zu characters)", len);
		goto cleanup;
	}
	in.value = raw;
	in.length = (size_t)n;
	if (raw[0] == 0xa1) {
		/* a server that wraps its reply in SPNEGO although we sent a raw
		 * krb5 token: verify the AP-REP inside */
		const unsigned char *rt;
		size_t rtlen;
		int state;
		if (s4u_spnego_unwrap(raw, (size_t)n, &rt, &rtlen, &state) != 0) {
			set_err(err, KCD_ERR_PROXY, "BAD_TOKEN", "mutual authentication: the "
			    "backend's token looks like SPNEGO (NegTokenResp) but is malformed "
			    "(%ld bytes)", n);
			goto cleanup;
		}
		if (state == 2 || rt == NULL) {
			set_err(err, KCD_ERR_PROXY, state == 2 ? "SPNEGO_REJECT" : "NO_REPLY_TOKEN",
			    "mutual authentication: the backend's SPNEGO answer %s", state == 2 ?
			    "rejects the authentication" : "carries no Kerberos reply (AP-REP)");
			goto cleanup;
		}
		in.value = (void *)rt;
		in.length = rtlen;
	}
	if (k->fast) {
		ret = verify_fast(s, k, in.value, in.length, err);
		goto cleanup;
	}
	major = gss_init_sec_context(&minor, GSS_C_NO_CREDENTIAL, &k->u.gss.ctx, k->u.gss.target,
	    &krb5_mech_oid, 0, 0, GSS_C_NO_CHANNEL_BINDINGS, &in, NULL, &out, &ret_flags, NULL);
	if (GSS_ERROR(major)) {
		struct s4u_class c;
		char detail[768];
		s4u_classify(S4U_STEP_MUTUAL, major, (long)(int32_t)minor, &c);
		log_gss_error(major, minor, &krb5_mech_oid, detail, sizeof(detail));
		set_err(err, KCD_ERR_PROXY, c.name,
		    "mutual authentication: the backend's reply token did not verify: %s", detail);
		goto cleanup;
	}
	if (major != GSS_S_COMPLETE || !(ret_flags & GSS_C_MUTUAL_FLAG)) {
		set_err(err, KCD_ERR_PROXY, "INCOMPLETE",
		    "mutual authentication: the reply token did not complete the context "
		    "(major 0x%x, flags 0x%x)", major, ret_flags);
		goto cleanup;
	}
	ret = 0;

cleanup:
	gss_release_buffer(&minor, &out);
	free(raw);
	ctx_remove(s, k);
	return ret;
}

/* ---- warm tokens: the fast path (loop) ------------------------------------------------- */

static void
imp_free(struct s4u *s, struct imp_cred *ic)
{
	OM_uint32 minor;

	if (ic->gss != GSS_C_NO_CREDENTIAL)
		gss_release_cred(&minor, &ic->gss);
	apreq_ticket_free(s->kctx, ic->fast);	/* kept replies hold their own key reference */
	free(ic->tkt_b64);
	free(ic);
}

/* The leader's service ticket (r->svc, copied out on its pool thread) made
 * ready for the fast path and kept with the new credential (r->ic->fast),
 * here on the loop: its krb5_key is created once and used by the loop only.
 * The copy is freed either way; a ticket the fast path cannot use only
 * means every token for this user goes the GSS way. */
static void
fast_ticket(struct s4u *s, struct s4u_req *r)
{
	krb5_error_code code;

	if (r->svc == NULL)
		return;
	if (r->ok && r->ic != NULL && s->kctx != NULL &&
	    (code = apreq_ticket_new(s->kctx, r->svc, &r->ic->fast)) != 0) {
		const char *m = krb5_get_error_message(s->kctx, code);
		log_debug("s4u", "warm tokens for %s: the service ticket cannot be used (%s); "
		    "using gss_init_sec_context", r->principal, m);
		krb5_free_error_message(s->kctx, m);
	}
	krb5_free_creds(s->kctx, r->svc);	/* zeroes its session key */
	r->svc = NULL;
}

/* The base64 of the framed token framed[0..flen), whose place for the
 * ticket DER (tder[0..tlen)) starts at framed[toff] with only its edge
 * bytes written (APREQ_TICKET_EDGES), into out (room for
 * CODEC_B64_LEN(flen) + 1): the ticket's groups copied from ic's kept
 * base64 when it was made for this alignment, made from tder (and kept)
 * first when not; out of memory, the ticket is put in place and the whole
 * token encoded. Returns the length. */
static size_t
token_b64(struct imp_cred *ic, unsigned char *framed, size_t flen, size_t toff,
    const unsigned char *tder, size_t tlen, char *out)
{
	size_t ilen = CODEC_B64_INNER_LEN(toff, tlen);

	if (ic->tkt_b64 == NULL || ic->tkt_b64_at3 != toff % 3) {
		char *nb = realloc(ic->tkt_b64, ilen + 1);

		if (nb == NULL) {	/* (the old one stays, for its alignment) */
			memcpy(framed + toff, tder, tlen);
			return codec_b64_encode_to(framed, flen, out);
		}
		ic->tkt_b64 = nb;
		(void)codec_b64_inner(tder, tlen, toff, nb);
		ic->tkt_b64_at3 = (unsigned)(toff % 3);
	}
	return codec_b64_encode_with(framed, flen, toff, tlen, ic->tkt_b64, out);
}

/* What gss_init_sec_context does for a later token on ic (MIT 1.20,
 * init_sec_context.c kg_new_connection / make_ap_req_v1), minus its
 * per-call krb5 context, ccache lookups and locks, and minus
 * krb5_mk_req_extended's auth context and per-call key setup: apreq_make
 * on ic's ticket (its krb5_key made once), with a fresh subkey and
 * sequence number, mutual authentication required for KCD_F_MUTUAL, the
 * 0x8003 checksum over the channel bindings with MIT's context flags, and
 * client_aware_channel_bindings as krb5.conf says; the AP-REQ in RFC 2743
 * framing, in base64 (the ticket's part from ic's kept base64,
 * token_b64). The base64 goes to dst (dst_cap bytes, NUL-terminated: the
 * caller's, s4u_token_now_to's) or, with dst NULL, to s->fast_tok (valid
 * until the next fast_token). Returns 0 with *tok (dst or s->fast_tok),
 * *tok_len and, for KCD_F_MUTUAL, *rep (the caller's: the
 * authenticator's ctime/cusec, a reference to the session key and the
 * subkey, what the AP-REP must match); -1 when the fast path cannot make
 * this token (nothing to release; the caller takes the GSS route): no
 * ticket kept, its end within S4U_TICKET_MARGIN_MS, a token longer than
 * dst_cap, or a krb5 failure (logged at debug). ic's kept base64 is made
 * or replaced here. */
static int
fast_token(struct s4u *s, struct imp_cred *ic, const unsigned char *cb, size_t cb_len,
    uint32_t flags, const char *principal, char *dst, size_t dst_cap, const char **tok,
    size_t *tok_len, struct apreq_reply *rep)
{
	unsigned char appdata[CB_APPDATA_MAX], bnd[16], cksum[S4U_GSS_CKSUM_LEN];
	unsigned char head[FRAME_HEAD_MAX];
	struct apreq_reply kept;
	krb5_error_code code = 0;
	unsigned char *framed;
	const unsigned char *tder;
	char *out;
	size_t alen, mlen = 0, tat = 0, tlen = 0, hlen, flen, cap, olen;
	int ret = -1;

	memset(&kept, 0, sizeof(kept));
	if (s->kctx == NULL || ic == NULL || ic->fast == NULL ||
	    apreq_ticket_end_ms(ic->fast) <= clock_unix_ms() + S4U_TICKET_MARGIN_MS)
		return -1;
	if (cb_len > KCD_CB_MAX)
		return -1;
	if (cb_len > 0 && cb_len == s->bnd_cb_len && memcmp(cb, s->bnd_cb, cb_len) == 0) {
		memcpy(bnd, s->bnd, sizeof(bnd));
	} else {
		alen = cb_appdata(cb, cb_len, appdata);
		if (s4u_cb_md5(cb_len > 0 ? appdata : NULL, alen, bnd) != 0) {
			log_debug("s4u", "warm token for %s: no MD5 for the channel bindings",
			    principal);
			return -1;
		}
		if (cb_len > 0) {
			memcpy(s->bnd_cb, cb, cb_len);
			s->bnd_cb_len = cb_len;
			memcpy(s->bnd, bnd, sizeof(bnd));
		}
	}
	s4u_gss_checksum(bnd, s4u_gss_flags(flags), cksum);
	/* the AP-REQ at the end of the scratch space, its RFC 2743 header
	 * put in front of it there: no copy of the message */
	cap = FRAME_HEAD_MAX + apreq_max_len(ic->fast);
	if (cap > s->fast_cap) {
		unsigned char *nb = realloc(s->fast_buf, cap);
		if (nb == NULL) {
			code = ENOMEM;
			goto cleanup;
		}
		s->fast_buf = nb;
		s->fast_cap = cap;
	}
	if ((code = apreq_make_at(s->kctx, ic->fast, cksum, sizeof(cksum),
	    s->apreq_flags | APREQ_TICKET_EDGES | ((flags & KCD_F_MUTUAL) ? APREQ_MUTUAL : 0u),
	    s->fast_buf,
	    s->fast_cap, &mlen, &tat, (flags & KCD_F_MUTUAL) ? &kept : NULL)) != 0)
		goto cleanup;
	hlen = frame_head(S4U_TOK_AP_REQ, mlen, head);
	flen = hlen + mlen;
	tder = apreq_ticket_der(ic->fast, &tlen);
	if (hlen == 0 || s->fast_cap - mlen < hlen || flen > (KCD_TOKEN_MAX / 4) * 3 - 3 ||
	    tat + tlen > mlen) {
		code = KRB5KRB_ERR_FIELD_TOOLONG;
		goto cleanup;
	}
	framed = s->fast_buf + (s->fast_cap - mlen - hlen);
	memcpy(framed, head, hlen);
	if (dst != NULL) {
		if (CODEC_B64_LEN(flen) + 1 > dst_cap) {
			code = KRB5KRB_ERR_FIELD_TOOLONG;
			goto cleanup;
		}
		out = dst;
	} else {
		if (CODEC_B64_LEN(flen) + 1 > s->fast_tok_cap) {
			char *nt = realloc(s->fast_tok, CODEC_B64_LEN(flen) + 1);
			if (nt == NULL) {
				code = ENOMEM;
				goto cleanup;
			}
			s->fast_tok = nt;
			s->fast_tok_cap = CODEC_B64_LEN(flen) + 1;
		}
		out = s->fast_tok;
	}
	olen = token_b64(ic, framed, flen, hlen + tat, tder, tlen, out);
	*tok = out;
	*tok_len = olen;
	if (flags & KCD_F_MUTUAL) {
		*rep = kept;		/* the key reference moves to the caller */
		explicit_bzero(&kept, sizeof(kept));
	}
	ret = 0;

cleanup:
	if (code != 0) {
		const char *m = krb5_get_error_message(s->kctx, code);
		log_debug("s4u", "warm token for %s: the AP-REQ on the cached ticket could not be "
		    "made (%s); using gss_init_sec_context", principal, m);
		krb5_free_error_message(s->kctx, m);
	}
	apreq_reply_clear(s->kctx, &kept);
	return ret;
}

/* r's token by the fast path (r->ok, token, rep, ticket_end set), or -1
 * (r untouched) for the GSS route. */
static int
fast_answer(struct s4u *s, struct s4u_req *r, struct imp_cred *ic)
{
	const char *tok = NULL;
	char *own = NULL;
	size_t tok_len = 0;

	if (fast_token(s, ic, r->cb, r->cb_len, r->flags, r->principal, NULL, 0, &tok, &tok_len,
	    &r->rep) != 0 ||
	    (own = strdup(tok)) == NULL) {	/* r's own: answered a turn later */
		apreq_reply_clear(s->kctx, &r->rep);
		s->st.fast_fallbacks++;
		r->fast_fallback = 1;
		return -1;
	}
	r->ok = 1;
	r->fast = 1;
	r->token = own;
	r->ticket_end = apreq_ticket_end_ms(ic->fast);
	s->st.tokens_fast++;
	return 0;
}

/* ---- requests (loop) ------------------------------------------------------------------- */

static void
req_free(struct s4u_req *r)
{
	struct s4u *s = r->s;
	OM_uint32 minor;

	if (r->prev != NULL)
		r->prev->next = r->next;
	else
		s->reqs = r->next;
	if (r->next != NULL)
		r->next->prev = r->prev;
	s->n_reqs--;
	if (r->ev != NULL)
		event_free(r->ev);
	if (r->ccred != NULL)
		credcache_cred_put(s->cc, r->ccred);
	if (r->ic != NULL)
		imp_free(s, r->ic);
	if (r->svc != NULL)
		krb5_free_creds(s->kctx, r->svc);
	apreq_reply_clear(s->kctx, &r->rep);
	if (r->ctx != GSS_C_NO_CONTEXT)
		gss_delete_sec_context(&minor, &r->ctx, GSS_C_NO_BUFFER);
	if (r->target != GSS_C_NO_NAME)
		gss_release_name(&minor, &r->target);
	free(r->token);
	free(r->key);
	r->magic = 0;
	free(r);
}

/* Answer r with its result (unless the timeout answered it already) and
 * free it. r must not be in flight. */
static void
deliver(struct s4u_req *r)
{
	struct s4u *s = r->s;
	struct s4u_result res;

	if (r->answered) {
		req_free(r);
		return;
	}
	r->answered = 1;
	memset(&res, 0, sizeof(res));
	res.ok = r->ok;
	res.kdc = r->kdc;
	res.exchange = r->kind == K_LEAD && r->job_ran;
	res.fast = r->fast;
	res.fast_fallback = r->fast_fallback;
	res.elapsed_ms = clock_mono_ms() - r->t0;
	if (r->ok) {
		if (r->ctx != GSS_C_NO_CONTEXT || r->rep.key != NULL) {
			res.ctx_id = ctx_keep(s, r->ctx, r->target,
			    r->rep.key != NULL ? &r->rep : NULL);
			r->ctx = GSS_C_NO_CONTEXT;
			r->target = GSS_C_NO_NAME;
		}
		res.token = r->token;
		res.ticket_end_ms = r->ticket_end;
		s->st.tokens++;
	} else {
		res.cls = r->cls;
		res.name = r->name;
		res.text = r->text;
		switch (r->cls) {
		case KCD_ERR_USER:
			s->st.errors_user++;
			break;
		case KCD_ERR_PROXY:
			s->st.errors_proxy++;
			break;
		case KCD_ERR_UNREACHABLE:
			s->st.errors_unreachable++;
			break;
		default:
			s->st.errors_internal++;
			break;
		}
	}
	r->fn(&res, r->arg);
	req_free(r);
}

static void
arm(struct s4u_req *r, uint64_t ms)
{
	struct timeval tv;

	tv.tv_sec = (time_t)(ms / 1000);
	tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
	evtimer_add(r->ev, &tv);
}

/* r's bounds (s4u.h, Timeouts): the wait until a thread starts its job,
 * then kdc_timeout for the exchange. Looks again whenever the earlier of
 * the two could have passed. */
static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct s4u_req *r = arg;
	struct s4u_result res;
	uint64_t now;
	int running = 1;

	(void)fd;
	(void)what;
	if (r == NULL || r->magic != REQ_MAGIC)
		abort();
	if (r->immediate) {
		r->immediate = 0;
		deliver(r);
		return;
	}
	if (r->answered)
		return;
	now = clock_mono_ms();
	for (;;) {
		int st = atomic_load(&r->state);

		if (st == RS_RUN) {
			uint64_t end = atomic_load(&r->started_ms) + r->s->p.kdc_timeout_ms;
			if (now < end) {
				arm(r, end - now);
				return;
			}
			break;		/* the exchange took kdc_timeout */
		}
		if (now < r->deadline) {
			/* still waiting: look again when the wait ends, or
			 * when an exchange starting now would have timed out */
			arm(r, r->deadline - now < r->s->p.kdc_timeout_ms ?
			    r->deadline - now : r->s->p.kdc_timeout_ms);
			return;
		}
		if (st == RS_GIVEN_UP ||
		    atomic_compare_exchange_strong(&r->state, &st, RS_GIVEN_UP)) {
			running = 0;
			break;		/* the wait ended: its job will not run */
		}
		/* its thread started it just now: RS_RUN, look again */
	}
	/* answer now; r lives on until its job or exchange comes back
	 * (in_flight), and that answer is dropped. */
	r->answered = 1;
	r->s->st.timeouts++;
	r->s->st.errors_unreachable++;
	memset(&res, 0, sizeof(res));
	res.cls = KCD_ERR_UNREACHABLE;
	res.name = "TIMEOUT";
	if (running)
		snprintf(r->text, sizeof(r->text),
		    "no answer within kdc_timeout (%llu ms) for %s to %s: the KDC exchange is "
		    "still running (slow or unreachable KDC)",
		    (unsigned long long)r->s->p.kdc_timeout_ms, r->principal, r->spn);
	else
		snprintf(r->text, sizeof(r->text),
		    "no answer within %llu ms (the wait bound) for %s to %s: %s",
		    (unsigned long long)r->s->p.queue_timeout_ms, r->principal, r->spn, r->waiting ?
		    "waiting for the KDC exchange of an earlier request for this user" :
		    "waiting for a free KDC slot (every one of the kdc_concurrency threads busy)");
	res.text = r->text;
	res.kdc = 1;
	res.exchange = r->kind == K_LEAD;
	res.fast_fallback = r->fast_fallback;
	res.elapsed_ms = clock_mono_ms() - r->t0;
	r->fn(&res, r->arg);
	if (!r->in_flight)
		req_free(r);
}

static void job_done(struct pool_job *job);
static void job_drop(struct pool_job *job, int work_ran);

static int
submit(struct s4u *s, struct s4u_req *r, enum req_kind kind)
{
	r->kind = kind;
	r->job.work = kind == K_LEAD ? work_lead : work_init;
	r->job.done = job_done;
	r->job.drop = job_drop;
	r->in_flight = 1;
	if (pool_submit(kind == K_LEAD ? s->pool : s->ipool, &r->job) != 0) {
		r->in_flight = 0;
		req_fail_text(r, KCD_ERR_INTERNAL, "SHUTDOWN", "kcd is stopping");
		return -1;
	}
	return 0;
}

static void
log_exchange(struct s4u *s, struct s4u_req *r)
{
	switch (r->cls) {
	case KCD_ERR_USER:
		log_info("s4u", "KDC refused %s: kdc_%s: %s", r->principal, r->name, r->text);
		break;
	case KCD_ERR_UNREACHABLE:
		log_warn("s4u", "KDC unreachable for %s: %s: %s", r->principal, r->name, r->text);
		break;
	default:
		log_error("s4u", "KDC refused the proxy %s for %s: kdc_%s: %s", s->principal,
		    r->principal, r->name, r->text);
		break;
	}
}

static void
lead_done(struct s4u *s, struct s4u_req *r)
{
	struct credcache_waiter *w, *next;
	struct credcache_cred *c = NULL;
	struct s4u_req *wr;

	s->st.proxy_acquired += r->did_acquire;
	tgt_exchange(s, r);
	s->st.expired_in_queue += r->expired_in_queue;
	s->st.s4u2self += r->did_s4u2self;
	s->st.s4u2proxy += r->did_s4u2proxy;
	fast_ticket(s, r);
	if (r->ok) {
		w = credcache_complete(s->cc, r->key, r->keylen, r->ic, r->imp_end, &c);
		r->ic = NULL;			/* credcache's now */
	} else {
		w = credcache_fail(s->cc, r->key, r->keylen, r->cls, r->name, r->text);
		log_exchange(s, r);
	}
	for (; w != NULL; w = next) {
		next = w->next;
		wr = CONTAINER_OF(w, struct s4u_req, waiter);
		wr->in_flight = 0;
		wr->waiting = 0;
		if (wr->answered) {		/* timed out while waiting */
			req_free(wr);
			continue;
		}
		if (c != NULL) {
			credcache_cred_hold(c);
			wr->ccred = c;
			if (submit(s, wr, K_INIT) == 0)
				continue;
		} else if (r->ok) {
			req_fail_text(wr, KCD_ERR_INTERNAL, "NOMEM", "out of memory caching a credential");
		} else {
			wr->cls = r->cls;
			memcpy(wr->name, r->name, sizeof(wr->name));
			memcpy(wr->text, r->text, sizeof(wr->text));
		}
		deliver(wr);
	}
	if (c != NULL)
		credcache_cred_put(s->cc, c);
	deliver(r);
}

static void
job_done(struct pool_job *job)
{
	struct s4u_req *r = CONTAINER_OF(job, struct s4u_req, job);
	struct s4u *s = r->s;

	if (r->magic != REQ_MAGIC || s->magic != S4U_MAGIC)
		abort();
	r->in_flight = 0;
	r->job_ran = 1;
	if (r->kind == K_LEAD) {
		lead_done(s, r);
		return;
	}
	s->st.expired_in_queue += r->expired_in_queue;
	credcache_cred_put(s->cc, r->ccred);
	r->ccred = NULL;
	if (!r->ok && (r->cls == KCD_ERR_USER || r->cls == KCD_ERR_PROXY)) {
		/* the cached credential stopped working: ask the KDC next time */
		credcache_invalidate(s->cc, r->key, r->keylen);
		log_exchange(s, r);
	}
	deliver(r);
}

static void
job_drop(struct pool_job *job, int work_ran)
{
	struct s4u_req *r = CONTAINER_OF(job, struct s4u_req, job);

	(void)work_ran;
	r->in_flight = 0;		/* s4u_free frees it with the others */
}

/* principal: "local@REALM", one component (no '/', '\\'), printable. */
static int
valid_principal(const char *p, size_t max)
{
	size_t n = strnlen(p, max), at = 0, n_at = 0;

	if (n == 0 || n >= max)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c <= 0x20 || c == 0x7f || c == '/' || c == '\\')
			return 0;
		if (c == '@') {
			at = i;
			n_at++;
		}
	}
	return n_at == 1 && at > 0 && at + 1 < n;
}

/* spn: "service@host" (host-based service name), printable. */
static int
valid_spn(const char *p, size_t max)
{
	size_t n = strnlen(p, max);
	const char *at;

	if (n == 0 || n >= max)
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)p[i] <= 0x20 || (unsigned char)p[i] == 0x7f)
			return 0;
	at = strchr(p, '@');
	return at != NULL && at > p && at[1] != '\0' && strchr(at + 1, '@') == NULL;
}

static int
check_args(const char *principal, const char *spn, const unsigned char *cb, size_t cb_len,
    struct s4u_error *err)
{
	if (principal == NULL || !valid_principal(principal, KCD_PRINCIPAL_MAX)) {
		set_err(err, KCD_ERR_INTERNAL, "BAD_PRINCIPAL",
		    "refusing a token request for an invalid principal (not one user@REALM)");
		return -1;
	}
	if (spn == NULL || !valid_spn(spn, KCD_SPN_MAX)) {
		set_err(err, KCD_ERR_INTERNAL, "BAD_SPN",
		    "refusing a token request for an invalid SPN (not service@host)");
		return -1;
	}
	if (cb_len > KCD_CB_MAX || (cb_len > 0 && cb == NULL)) {
		set_err(err, KCD_ERR_INTERNAL, "BAD_CB", "channel-binding hash of %zu bytes", cb_len);
		return -1;
	}
	return 0;
}

int
s4u_token_now(struct s4u *s, const char *principal, const char *spn,
    const unsigned char *cb, size_t cb_len, uint32_t flags, struct s4u_result *res,
    struct s4u_error *err)
{
	return s4u_token_now_to(s, principal, spn, cb, cb_len, flags, NULL, 0, res, err);
}

int
s4u_token_now_to(struct s4u *s, const char *principal, const char *spn,
    const unsigned char *cb, size_t cb_len, uint32_t flags, char *buf, size_t cap,
    struct s4u_result *res, struct s4u_error *err)
{
	struct credcache_cred *c;
	struct imp_cred *ic;
	struct apreq_reply rep;
	const char *tok = NULL;
	size_t plen, slen, tok_len = 0;
	uint64_t end;
	int rc;

	if (s == NULL || s->magic != S4U_MAGIC || res == NULL)
		abort();
	if (check_args(principal, spn, cb, cb_len, err) != 0)
		return -1;
	memset(res, 0, sizeof(*res));
	if ((flags & KCD_F_REFRESH) || s->kctx == NULL)
		return 0;
	plen = strlen(principal);	/* both bounded by check_args */
	slen = strlen(spn);
	memcpy(s->fast_key, spn, slen + 1);
	memcpy(s->fast_key + slen + 1, principal, plen + 1);
	if ((c = credcache_peek(s->cc, s->fast_key, slen + 1 + plen)) == NULL)
		return 0;
	ic = credcache_cred_get(c);
	memset(&rep, 0, sizeof(rep));
	rc = fast_token(s, ic, cb, cb_len, flags, principal, buf, cap, &tok, &tok_len, &rep);
	end = rc == 0 ? apreq_ticket_end_ms(ic->fast) : 0;
	credcache_cred_put(s->cc, c);
	if (rc != 0) {
		/* counted here, once: s4u_token_request_gss does not try again */
		s->st.fast_fallbacks++;
		res->fast_fallback = 1;
		return 0;
	}
	res->ok = 1;
	res->token = tok;		/* buf, or s->fast_tok until the next token */
	res->token_len = tok_len;
	res->ctx_id = rep.key != NULL ? ctx_keep(s, GSS_C_NO_CONTEXT, GSS_C_NO_NAME, &rep) : 0;
	res->ticket_end_ms = end;
	res->fast = 1;
	s->st.requests++;
	s->st.cache_hits++;
	s->st.tokens++;
	s->st.tokens_fast++;
	return 1;
}

/* s4u_token_request and s4u_token_request_gss: fast_tried 1 when the
 * caller's s4u_token_now has just tried (and counted) the fast path. */
static int
token_request(struct s4u *s, const char *principal, const char *spn,
    const unsigned char *cb, size_t cb_len, uint32_t flags, int fast_tried,
    s4u_done_fn *fn, void *arg, struct s4u_error *err)
{
	struct s4u_req *r = NULL;
	struct credcache_lookup l;
	size_t plen, slen;

	if (s == NULL || s->magic != S4U_MAGIC || fn == NULL)
		abort();
	if (check_args(principal, spn, cb, cb_len, err) != 0)
		return -1;
	plen = strlen(principal);
	slen = strlen(spn);
	if ((r = calloc(1, sizeof(*r))) == NULL ||
	    (r->key = malloc(slen + 1 + plen + 1)) == NULL ||
	    (r->ev = evtimer_new(s->base, on_timer, r)) == NULL) {
		if (r != NULL) {
			free(r->key);
			free(r);
		}
		set_err(err, KCD_ERR_INTERNAL, "NOMEM", "out of memory for a token request");
		return -1;
	}
	r->magic = REQ_MAGIC;
	r->s = s;
	memcpy(r->key, spn, slen + 1);
	memcpy(r->key + slen + 1, principal, plen + 1);
	r->keylen = slen + 1 + plen;
	r->spn = r->key;
	r->principal = r->key + slen + 1;
	if (cb_len > 0)
		memcpy(r->cb, cb, cb_len);
	r->cb_len = cb_len;
	r->flags = flags;
	r->fn = fn;
	r->arg = arg;
	r->ctx = GSS_C_NO_CONTEXT;
	r->target = GSS_C_NO_NAME;
	r->t0 = clock_mono_ms();
	r->deadline = r->t0 + s->p.queue_timeout_ms;
	atomic_init(&r->state, RS_WAIT);
	atomic_init(&r->started_ms, 0);
	r->next = s->reqs;
	if (s->reqs != NULL)
		s->reqs->prev = r;
	s->reqs = r;
	s->n_reqs++;
	s->st.requests++;

	if (flags & KCD_F_REFRESH)
		credcache_invalidate(s->cc, r->key, r->keylen);

	switch (credcache_lookup(s->cc, r->key, r->keylen, &r->waiter, &l)) {
	case CREDCACHE_HIT:
		s->st.cache_hits++;
		if (fast_tried)
			r->fast_fallback = 1;	/* for the answer; counted by s4u_token_now */
		else if (fast_answer(s, r, credcache_cred_get(l.cred)) == 0) {
			credcache_cred_put(s->cc, l.cred);
			goto immediate;
		}
		r->ccred = l.cred;
		if (submit(s, r, K_INIT) != 0)
			goto immediate;
		break;
	case CREDCACHE_NEGATIVE:
		s->st.negative_hits++;
		r->ok = 0;
		r->cls = l.cls;
		snprintf(r->name, sizeof(r->name), "%s", l.name);
		snprintf(r->text, sizeof(r->text), "%s (cached refusal)", l.text);
		goto immediate;
	case CREDCACHE_LEAD:
		r->kdc = 1;
		if (submit(s, r, K_LEAD) != 0) {
			/* nobody else will complete this exchange */
			struct credcache_waiter *w = credcache_fail(s->cc, r->key, r->keylen,
			    KCD_ERR_INTERNAL, "SHUTDOWN", "kcd is stopping");
			(void)w;	/* none: the entry was created just now */
			goto immediate;
		}
		break;
	case CREDCACHE_WAIT:
		r->kdc = 1;
		r->kind = K_INIT;
		r->in_flight = 1;
		r->waiting = 1;
		s->st.waits++;
		break;
	case CREDCACHE_NOMEM:
		req_fail_text(r, KCD_ERR_INTERNAL, "NOMEM", "out of memory in the credential cache");
		goto immediate;
	}
	arm(r, s->p.kdc_timeout_ms < s->p.queue_timeout_ms ?
	    s->p.kdc_timeout_ms : s->p.queue_timeout_ms);
	return 0;

immediate:
	/* answered from the loop, never from inside this call */
	r->immediate = 1;
	event_active(r->ev, EV_TIMEOUT, 1);
	return 0;
}

int
s4u_token_request(struct s4u *s, const char *principal, const char *spn,
    const unsigned char *cb, size_t cb_len, uint32_t flags,
    s4u_done_fn *fn, void *arg, struct s4u_error *err)
{
	return token_request(s, principal, spn, cb, cb_len, flags, 0, fn, arg, err);
}

int
s4u_token_request_gss(struct s4u *s, const char *principal, const char *spn,
    const unsigned char *cb, size_t cb_len, uint32_t flags,
    s4u_done_fn *fn, void *arg, struct s4u_error *err)
{
	return token_request(s, principal, spn, cb, cb_len, flags, 1, fn, arg, err);
}

/* ---- lifecycle ---------------------------------------------------------------------- */

static void
cred_free(void *cred, void *arg)
{
	struct s4u *s = arg;

	if (s == NULL || s->magic != S4U_MAGIC)
		abort();
	imp_free(s, cred);
}

static void
on_sweep(evutil_socket_t fd, short what, void *arg)
{
	struct s4u *s = arg;
	uint64_t now = clock_mono_ms();

	(void)fd;
	(void)what;
	if (s == NULL || s->magic != S4U_MAGIC)
		abort();
	while (s->ctx_head != NULL && s->ctx_head->expires <= now)
		ctx_remove(s, s->ctx_head);
	credcache_expire(s->cc);
}

struct s4u *
s4u_new(struct event_base *base, const struct s4u_params *p, char *err, size_t errlen)
{
	struct s4u *s = NULL;
	struct credcache_params cp;
	struct timeval tv = { SWEEP_MS / 1000, 0 };
	unsigned nb = 64;
	long ncpu;

	if (p->keytab == NULL || p->keytab[0] == '\0' || p->principal == NULL ||
	    p->principal[0] == '\0') {
		snprintf(err, errlen, "[kerberos] keytab and principal are required");
		return NULL;
	}
	if (p->kdc_timeout_ms == 0) {
		snprintf(err, errlen, "[kerberos] kdc_timeout must be positive");
		return NULL;
	}
	/* gss_mech_krb5 is a pointer variable, not a constant initializer */
	krb5_mech_oid = *(const gss_OID_desc *)gss_mech_krb5;

	if ((s = calloc(1, sizeof(*s))) == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	s->magic = S4U_MAGIC;
	s->base = base;
	s->p = *p;
	if (s->p.queue_timeout_ms == 0)
		s->p.queue_timeout_ms = S4U_QUEUE_FACTOR * s->p.kdc_timeout_ms;
	if (s->p.ctx_ttl_ms == 0)
		s->p.ctx_ttl_ms = DEFAULT_CTX_TTL_MS;
	if (s->p.max_contexts == 0)
		s->p.max_contexts = DEFAULT_MAX_CONTEXTS;
	while (nb < s->p.max_contexts / 2 && nb < (1u << 20))
		nb *= 2;
	s->n_ctx_buckets = nb;
	if (pthread_mutex_init(&s->pmu, NULL) != 0) {
		snprintf(err, errlen, "pthread_mutex_init failed");
		free(s);
		return NULL;
	}
	if ((s->keytab = strdup(p->keytab)) == NULL || (s->principal = strdup(p->principal)) == NULL ||
	    (s->ctx_buckets = calloc(nb, sizeof(*s->ctx_buckets))) == NULL) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	s->p.keytab = s->keytab;
	s->p.principal = s->principal;

	memset(&cp, 0, sizeof(cp));
	cp.credential_ttl_ms = p->credential_ttl_ms;
	cp.negative_ttl_ms = p->negative_ttl_ms;
	cp.end_margin_ms = S4U_TICKET_MARGIN_MS;
	cp.max_entries = p->max_entries;
	cp.now_ms = cache_clock;
	cp.cred_free = cred_free;
	cp.free_arg = s;
	if ((s->cc = credcache_new(&cp)) == NULL) {
		snprintf(err, errlen, "out of memory for the credential cache");
		goto fail;
	}
	if ((s->sweep = event_new(base, -1, EV_PERSIST, on_sweep, s)) == NULL ||
	    event_add(s->sweep, &tv) != 0) {
		snprintf(err, errlen, "cannot add the sweep timer");
		goto fail;
	}
	/* after s4u_env_init (KRB5_CONFIG), before the threads: read once */
	if (krb5_init_context(&s->kctx) != 0) {
		s->kctx = NULL;
		log_warn("s4u", "cannot make a krb5 context for warm tokens: every token goes "
		    "through gss_init_sec_context on the pool");
	} else {
		/* what krb5_mk_req_extended reads from krb5.conf for each token
		 * of the GSS route; once here for the fast path */
		profile_t prof = NULL;
		int aware = 0;
		if (krb5_get_profile(s->kctx, &prof) == 0) {
			if (profile_get_boolean(prof, "libdefaults", "client_aware_channel_bindings",
			    NULL, 0, &aware) == 0 && aware)
				s->apreq_flags |= APREQ_CBT_AWARE;
			profile_release(prof);
		}
	}
	if ((s->pool = pool_new(base, p->kdc_concurrency, err, errlen)) == NULL)
		goto fail;
	ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	if ((s->ipool = pool_new(base, ncpu < 1 ? 1u : ncpu > 16 ? 16u : (unsigned)ncpu,
	    err, errlen)) == NULL)
		goto fail;
	return s;

fail:
	s4u_free(s);
	return NULL;
}

void
s4u_free(struct s4u *s)
{
	if (s == NULL)
		return;
	if (s->magic != S4U_MAGIC)
		abort();
	pool_free(s->pool);		/* joins the threads; drops what they had */
	s->pool = NULL;
	pool_free(s->ipool);
	s->ipool = NULL;
	while (s->reqs != NULL)
		req_free(s->reqs);
	while (s->ctx_head != NULL)
		ctx_remove(s, s->ctx_head);
	credcache_free(s->cc);
	free(s->fast_tok);
	free(s->fast_buf);
	if (s->kctx != NULL)
		krb5_free_context(s->kctx);
	if (s->pcur != NULL && --s->pcur->refs == 0)
		proxy_free(s->pcur);
	if (s->sweep != NULL)
		event_free(s->sweep);
	pthread_mutex_destroy(&s->pmu);
	free(s->ctx_buckets);
	free(s->keytab);
	free(s->principal);
	s->magic = 0;
	free(s);
}

void
s4u_stats(const struct s4u *s, struct s4u_stats *st)
{
	struct credcache_stats cs;
	struct pool_stats ps;

	*st = s->st;
	credcache_stats(s->cc, &cs);
	st->entries = cs.entries;
	st->contexts = s->n_ctx;
	st->in_flight = s->n_reqs;
	pool_stats(s->pool, &ps);
	st->pool_queued = ps.queued;
	st->pool_busy = ps.busy;
	pool_stats(s->ipool, &ps);
	st->pool_queued += ps.queued;
	st->pool_busy += ps.busy;
}
