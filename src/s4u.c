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
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t
unix_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t
cache_clock(void *arg)
{
	(void)arg;
	return mono_ms();
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

/* ---- the state ----------------------------------------------------------------- */

struct proxy_cred {
	gss_cred_id_t cred;
	unsigned refs;			/* under s->pmu */
	uint64_t end;			/* mono ms; UINT64_MAX = indefinite */
	char ccname[96];		/* its private MEMORY ccache */
};

struct kept_ctx {
	uint32_t id;
	gss_ctx_id_t ctx;
	gss_name_t target;		/* the continuation call needs it again */
	uint64_t expires;		/* mono ms */
	struct kept_ctx *hnext;
	struct kept_ctx *prev, *next;	/* FIFO: oldest first (one TTL for all) */
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
	enum kcd_err_class cls;
	char name[KCD_NAME_MAX];
	char text[KCD_TEXT_MAX];
	gss_cred_id_t imp;		/* K_LEAD: the new impersonated credential */
	uint64_t imp_end;		/* mono ms */
	gss_ctx_id_t ctx;		/* KCD_F_MUTUAL: kept for verification */
	gss_name_t target;		/* with ctx */
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
	now = mono_ms();
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

/* ---- pool work ----------------------------------------------------------------------- */

/* The impersonated credential's ccache holds the S4U2Self ticket (client =
 * the user, server = the proxy, under whatever name the KDC canonicalised
 * it to) and a copy of the proxy's TGT (client = the proxy). */
int
s4u_evidence_forwardable(gss_cred_id_t imp, const char *user, char *server, size_t slen)
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
		    krb5_principal_compare(kc, c.client, up) &&
		    !(c.server->length == 2 && c.server->data[0].length == KRB5_TGS_NAME_SIZE &&
		    memcmp(c.server->data[0].data, KRB5_TGS_NAME, KRB5_TGS_NAME_SIZE) == 0)) {
			char *sname = NULL;

			ret = (c.ticket_flags & TKT_FLG_FORWARDABLE) ? 1 : 0;
			if (server != NULL && slen > 0 &&
			    krb5_unparse_name(kc, c.server, &sname) == 0) {
				snprintf(server, slen, "%s", sname);
				krb5_free_unparsed_name(kc, sname);
			}
		}
		krb5_free_cred_contents(kc, &c);
	}
	krb5_cc_end_seq_get(kc, cc, &cur);

cleanup:
	if (cc != NULL)
		krb5_cc_destroy(kc, cc);
	krb5_free_principal(kc, up);
	krb5_free_context(kc);
	return ret;
}

static int
proxy_seen_ok(struct s4u *s)
{
	uint64_t t = atomic_load(&s->fwd_seen);

	return t != 0 && mono_ms() - t < FWD_SEEN_WINDOW_MS;
}

/* gss_init_sec_context with cred for r's SPN, channel bindings and flags.
 * The first one for a fresh impersonated credential is the S4U2Proxy. */
static int
init_context(struct s4u *s, struct s4u_req *r, gss_cred_id_t cred, enum s4u_step step)
{
	struct gss_channel_bindings_struct cbs;
	unsigned char appdata[sizeof(S4U_CB_PREFIX) - 1 + KCD_CB_MAX];
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
		memcpy(appdata, S4U_CB_PREFIX, sizeof(S4U_CB_PREFIX) - 1);
		memcpy(appdata + sizeof(S4U_CB_PREFIX) - 1, r->cb, r->cb_len);
		cbs.application_data.value = appdata;
		cbs.application_data.length = sizeof(S4U_CB_PREFIX) - 1 + r->cb_len;
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
		atomic_store(&s->fwd_seen, mono_ms());
	r->ticket_end = time_rec == GSS_C_INDEFINITE ? 0 : unix_ms() + (uint64_t)time_rec * 1000;
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
	uint64_t now = mono_ms();

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
	r->imp = imp;			/* to the loop, for credcache */
	imp = GSS_C_NO_CREDENTIAL;
	r->imp_end = lifetime == GSS_C_INDEFINITE ? UINT64_MAX : mono_ms() + (uint64_t)lifetime * 1000;

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
	init_context(r->s, r, (gss_cred_id_t)credcache_cred_get(r->ccred), S4U_STEP_INIT);
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
	if (k->ctx != GSS_C_NO_CONTEXT)
		gss_delete_sec_context(&minor, &k->ctx, GSS_C_NO_BUFFER);
	if (k->target != GSS_C_NO_NAME)
		gss_release_name(&minor, &k->target);
	free(k);
}

/* Takes ctx and target; returns the id, or 0 (both released) when out of
 * memory. */
static uint32_t
ctx_keep(struct s4u *s, gss_ctx_id_t ctx, gss_name_t target)
{
	struct kept_ctx *k;
	OM_uint32 minor;

	if ((k = calloc(1, sizeof(*k))) == NULL) {
		gss_delete_sec_context(&minor, &ctx, GSS_C_NO_BUFFER);
		gss_release_name(&minor, &target);
		return 0;
	}
	while (s->n_ctx >= s->p.max_contexts)
		ctx_remove(s, s->ctx_head);	/* oldest first */
	do {
		k->id = ++s->next_ctx_id;
	} while (k->id == 0 || *ctx_slot(s, k->id) != NULL);
	k->ctx = ctx;
	k->target = target;
	k->expires = mono_ms() + s->p.ctx_ttl_ms;
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
	major = gss_init_sec_context(&minor, GSS_C_NO_CREDENTIAL, &k->ctx, k->target,
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
	if (r->imp != GSS_C_NO_CREDENTIAL)
		gss_release_cred(&minor, &r->imp);
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
	res.elapsed_ms = mono_ms() - r->t0;
	if (r->ok) {
		if (r->ctx != GSS_C_NO_CONTEXT) {
			res.ctx_id = ctx_keep(s, r->ctx, r->target);
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
	now = mono_ms();
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
	res.elapsed_ms = mono_ms() - r->t0;
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
	s->st.expired_in_queue += r->expired_in_queue;
	s->st.s4u2self += r->did_s4u2self;
	s->st.s4u2proxy += r->did_s4u2proxy;
	if (r->ok) {
		w = credcache_complete(s->cc, r->key, r->keylen, r->imp, r->imp_end, &c);
		r->imp = GSS_C_NO_CREDENTIAL;	/* credcache's now */
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

int
s4u_token_request(struct s4u *s, const char *principal, const char *spn,
    const unsigned char *cb, size_t cb_len, uint32_t flags,
    s4u_done_fn *fn, void *arg, struct s4u_error *err)
{
	struct s4u_req *r = NULL;
	struct credcache_lookup l;
	size_t plen, slen;

	if (s == NULL || s->magic != S4U_MAGIC || fn == NULL)
		abort();
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
	r->imp = GSS_C_NO_CREDENTIAL;
	r->ctx = GSS_C_NO_CONTEXT;
	r->target = GSS_C_NO_NAME;
	r->t0 = mono_ms();
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

/* ---- lifecycle ---------------------------------------------------------------------- */

static void
cred_free(void *cred, void *arg)
{
	gss_cred_id_t c = cred;
	OM_uint32 minor;

	(void)arg;
	gss_release_cred(&minor, &c);
}

static void
on_sweep(evutil_socket_t fd, short what, void *arg)
{
	struct s4u *s = arg;
	uint64_t now = mono_ms();

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
	if ((s->cc = credcache_new(&cp)) == NULL) {
		snprintf(err, errlen, "out of memory for the credential cache");
		goto fail;
	}
	if ((s->sweep = event_new(base, -1, EV_PERSIST, on_sweep, s)) == NULL ||
	    event_add(s->sweep, &tv) != 0) {
		snprintf(err, errlen, "cannot add the sweep timer");
		goto fail;
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
