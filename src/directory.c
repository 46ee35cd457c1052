/*
 * directory.c — the directory checks' engine inside kcd; see directory.h.
 *
 * Threads: directory_identify and every callback run on kcd's loop thread.
 * The blocking libldap calls (connect, StartTLS, bind, search) run in
 * work() on DIRECTORY_THREADS pool threads, each taking one of as many
 * LDAP connections (a connection is used by one thread at a time; libldap
 * 2.5 is thread-safe across handles). What the threads share — the
 * connection slots and the back-off state — is under d->mu. Everything a
 * request needs is prepared on the loop before it is queued (certificate
 * facts, the filter), so work() does network and nothing else, and logs
 * nothing: it leaves text in the request for done() to log.
 *
 * Failure handling: a connection that breaks during a search is reopened
 * once and the search retried; a connection that cannot be opened or bound
 * puts the directory "down" for a back-off (0.5 s doubling to 30 s) during
 * which lookups fail at once instead of piling up on a dead server. Every
 * request also has a deadline ([ldap] timeout) on the loop: past it the
 * waiters are answered as if the directory were unreachable, whatever the
 * thread is still doing (its result still fills the cache).
 */
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/event.h>
#include <gssapi/gssapi.h>
#include <gssapi/gssapi_ext.h>
#include <gssapi/gssapi_krb5.h>
#include <ldap.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>
#include <sasl/sasl.h>

#include "clock.h"
#include "directory.h"
#include "log.h"
#include "metrics.h"
#include "pool.h"

#define DIR_MAGIC	0x44495231u	/* "DIR1" */
#define REQ_MAGIC	0x44524551u	/* "DREQ" */
#define BACKOFF_MIN_MS	500u
#define BACKOFF_MAX_MS	30000u
#define MAX_PENDING	1024u		/* lookups queued or running at most */
#define SWEEP_MS	60000u
#define SIZELIMIT_USER	2		/* enough to see "more than one" */
#define SIZELIMIT_CERT	10
#define IN_CHAIN_OID	"1.2.840.113556.1.4.1941"	/* LDAP_MATCHING_RULE_IN_CHAIN */

static char *user_attrs[] = {
	"sAMAccountName", "userPrincipalName", "userAccountControl",
	"msDS-User-Account-Control-Computed", "lockoutTime", "accountExpires",
	"objectSid", "altSecurityIdentities", "memberOf", NULL,
};
static char *no_attrs[] = { "1.1", NULL };

struct dconn {
	LDAP *ld;			/* NULL until opened; owned */
	int busy;			/* a thread has it */
};

struct dwaiter {
	directory_done_fn *fn;
	void *arg;
	struct dwaiter *next;
};

/* An answer ready before any thread ran (cache hit, bad input, overload),
 * delivered from ready_ev so callbacks never run inside directory_identify. */
struct dready {
	struct dwaiter w;
	struct directory_verdict v;
	int cached;
	struct dready *next;
};

struct dreq {
	unsigned magic;
	struct directory *d;
	struct pool_job job;
	struct dreq *next;			/* d->inflight */
	unsigned char key[DIRECTORY_KEY_LEN];
	char principal[KCD_PRINCIPAL_MAX];	/* as asked */
	char realm[IDENTITY_REALM_MAX + 1];
	char filter[DIRECTORY_FILTER_MAX];
	int by_cert;				/* source = ldap */
	int has_cert;
	struct directory_cert cert;
	uint64_t deadline_ms;
	struct event *timer;
	struct dwaiter *waiters;		/* owned until answered */
	int answered;				/* waiters got the deadline answer */
	/* written by work(), read by done() */
	struct directory_verdict v;
	int failed;				/* the directory could not be used */
	int fast_fail;				/* ... and was not even tried (back-off) */
	int contacted, connected;
	struct directory_account acct;
};

struct directory {
	unsigned magic;
	struct event_base *base;
	const struct config *cfg;
	struct identity_params idp;
	struct pool *pool;
	struct directory_cache *cache;
	struct event *ready_ev, *sweep_ev;
	struct dready *ready_head, **ready_tail;
	struct dreq *inflight;
	unsigned pending;			/* submitted, done() not yet run */
	char *password;				/* bind = simple; wiped on free */
	gss_cred_id_t cred;			/* bind = gssapi; set once (cred_mu) */
	char ccache[64];
	uint64_t timeout_ms;
	struct directory_stats st;
	int was_down;				/* last real attempt failed (log once) */

	pthread_mutex_t cred_mu;		/* guards cred's acquisition */
	pthread_mutex_t mu;			/* guards what follows */
	struct dconn conns[DIRECTORY_THREADS];
	uint64_t down_until_ms, backoff_ms;
	char down_reason[512];
};

/* ---- connections (pool threads) --------------------------------------------- */

struct bindctx {
	struct directory *d;
	int creds_set;
};

/* SASL interaction: the first moment libldap has a SASL context, so the
 * moment to hand it our credential (LDAP_OPT_X_SASL_GSS_CREDS needs the
 * context). The only prompt GSSAPI makes is the authorization id: none. */
static int
sasl_interact(LDAP *ld, unsigned flags, void *defaults, void *in)
{
	struct bindctx *b = defaults;
	sasl_interact_t *p = in;

	(void)flags;
	if (!b->creds_set) {
		if (ldap_set_option(ld, LDAP_OPT_X_SASL_GSS_CREDS, b->d->cred) != LDAP_OPT_SUCCESS)
			return LDAP_LOCAL_ERROR;
		b->creds_set = 1;
	}
	for (; p->id != SASL_CB_LIST_END; p++) {
		p->result = "";
		p->len = 0;
	}
	return LDAP_SUCCESS;
}

/* "message (diagnostic)" for an LDAP error on ld. */
static void
ldap_why(LDAP *ld, int rc, const char *what, char *buf, size_t len)
{
	char *diag = NULL;

	if (ld != NULL)
		(void)ldap_get_option(ld, LDAP_OPT_DIAGNOSTIC_MESSAGE, &diag);
	snprintf(buf, len, "%s: %s (%d)%s%s%s", what, ldap_err2string(rc), rc,
	    diag && *diag ? " [" : "", diag && *diag ? diag : "", diag && *diag ? "]" : "");
	ldap_memfree(diag);
}

static int
set_options(struct directory *d, LDAP *ld, char *why, size_t whylen)
{
	const struct config *cfg = d->cfg;
	struct timeval tv = { (time_t)(d->timeout_ms / 1000u),
	    (suseconds_t)(d->timeout_ms % 1000u) * 1000 };
	int v3 = LDAP_VERSION3, demand = LDAP_OPT_X_TLS_DEMAND, tls12 = LDAP_OPT_X_TLS_PROTOCOL_TLS1_2;
	int zero = 0, idle = 60, probes = 3, interval = 10;

	if (ldap_set_option(ld, LDAP_OPT_PROTOCOL_VERSION, &v3) != LDAP_OPT_SUCCESS ||
	    ldap_set_option(ld, LDAP_OPT_REFERRALS, LDAP_OPT_OFF) != LDAP_OPT_SUCCESS ||
	    ldap_set_option(ld, LDAP_OPT_RESTART, LDAP_OPT_ON) != LDAP_OPT_SUCCESS ||
	    ldap_set_option(ld, LDAP_OPT_NETWORK_TIMEOUT, &tv) != LDAP_OPT_SUCCESS ||
	    ldap_set_option(ld, LDAP_OPT_TIMEOUT, &tv) != LDAP_OPT_SUCCESS ||
	    ldap_set_option(ld, LDAP_OPT_X_SASL_NOCANON, LDAP_OPT_ON) != LDAP_OPT_SUCCESS ||
	    ldap_set_option(ld, LDAP_OPT_X_KEEPALIVE_IDLE, &idle) != LDAP_OPT_SUCCESS ||
	    ldap_set_option(ld, LDAP_OPT_X_KEEPALIVE_PROBES, &probes) != LDAP_OPT_SUCCESS ||
	    ldap_set_option(ld, LDAP_OPT_X_KEEPALIVE_INTERVAL, &interval) != LDAP_OPT_SUCCESS) {
		snprintf(why, whylen, "cannot set libldap options");
		return -1;
	}
	if (ldap_set_option(ld, LDAP_OPT_X_TLS_REQUIRE_CERT, &demand) != LDAP_OPT_SUCCESS ||
	    ldap_set_option(ld, LDAP_OPT_X_TLS_PROTOCOL_MIN, &tls12) != LDAP_OPT_SUCCESS ||
	    (cfg->ldap.ca && ldap_set_option(ld, LDAP_OPT_X_TLS_CACERTFILE, cfg->ldap.ca) !=
	    LDAP_OPT_SUCCESS) ||
	    ldap_set_option(ld, LDAP_OPT_X_TLS_NEWCTX, &zero) != LDAP_OPT_SUCCESS) {
		snprintf(why, whylen, "cannot set up TLS for the directory%s%s",
		    cfg->ldap.ca ? " with ca " : "", cfg->ldap.ca ? cfg->ldap.ca : "");
		return -1;
	}
	return 0;
}

static int acquire_cred(struct directory *d, char *err, size_t errlen);

/* The proxy's credential, acquired on first use (it may take a KDC
 * exchange: never on the loop, never at start-up, where a KDC that is down
 * would keep kcd from starting). MIT refreshes it from the keytab later. */
static int
cred_ready(struct directory *d, char *why, size_t whylen)
{
	int rc = 0;

	pthread_mutex_lock(&d->cred_mu);
	if (d->cred == GSS_C_NO_CREDENTIAL)
		rc = acquire_cred(d, why, whylen);
	pthread_mutex_unlock(&d->cred_mu);
	return rc;
}

/* Open and bind a connection. 0, or -1 with why. */
static int
conn_open(struct directory *d, LDAP **out, char *why, size_t whylen)
{
	const struct config *cfg = d->cfg;
	struct bindctx b = { d, 0 };
	LDAP *ld = NULL;
	char *who = NULL;
	int rc, ret = -1;

	if ((rc = ldap_initialize(&ld, cfg->ldap.uri)) != LDAP_SUCCESS) {
		snprintf(why, whylen, "ldap_initialize(%s): %s", cfg->ldap.uri, ldap_err2string(rc));
		goto cleanup;
	}
	if (set_options(d, ld, why, whylen) != 0)
		goto cleanup;
	if ((rc = ldap_connect(ld)) != LDAP_SUCCESS) {
		ldap_why(ld, rc, "connect", why, whylen);
		goto cleanup;
	}
	if (cfg->ldap.bind == LDAP_BIND_SIMPLE) {
		struct berval cred;

		if (!ldap_tls_inplace(ld) && (rc = ldap_start_tls_s(ld, NULL, NULL)) != LDAP_SUCCESS) {
			ldap_why(ld, rc, "StartTLS (bind = simple never sends a password in clear)",
			    why, whylen);
			goto cleanup;
		}
		cred.bv_val = d->password;
		cred.bv_len = strlen(d->password);
		if ((rc = ldap_sasl_bind_s(ld, cfg->ldap.bind_dn, LDAP_SASL_SIMPLE, &cred, NULL, NULL,
		    NULL)) != LDAP_SUCCESS) {
			ldap_why(ld, rc, "simple bind as bind_dn", why, whylen);
			goto cleanup;
		}
	} else {
		if (cred_ready(d, why, whylen) != 0)
			goto cleanup;
		/* AD refuses a SASL security layer inside TLS */
		if (ldap_tls_inplace(ld) &&
		    ldap_set_option(ld, LDAP_OPT_X_SASL_SECPROPS, "maxssf=0") != LDAP_OPT_SUCCESS) {
			snprintf(why, whylen, "cannot set SASL security properties");
			goto cleanup;
		}
		rc = ldap_sasl_interactive_bind_s(ld, NULL, "GSSAPI", NULL, NULL, LDAP_SASL_QUIET,
		    sasl_interact, &b);
		if (rc != LDAP_SUCCESS) {
			ldap_why(ld, rc, "GSSAPI bind", why, whylen);
			goto cleanup;
		}
		/* never trust a bind that may have used another credential */
		if (!b.creds_set || ldap_get_option(ld, LDAP_OPT_X_SASL_USERNAME, &who) !=
		    LDAP_OPT_SUCCESS || who == NULL || strcasecmp(who, cfg->kerberos.principal) != 0) {
			snprintf(why, whylen, "GSSAPI bind did not authenticate as %s (%s)",
			    cfg->kerberos.principal, b.creds_set ? (who ? who : "unknown") :
			    "the SASL layer never took our credential");
			goto cleanup;
		}
	}
	*out = ld;
	ld = NULL;
	ret = 0;
cleanup:
	ldap_memfree(who);
	if (ld != NULL)
		ldap_unbind_ext_s(ld, NULL, NULL);
	return ret;
}

static struct dconn *
conn_take(struct directory *d)
{
	struct dconn *c = NULL;

	pthread_mutex_lock(&d->mu);
	for (unsigned i = 0; i < DIRECTORY_THREADS && c == NULL; i++)
		if (!d->conns[i].busy)
			c = &d->conns[i];
	if (c != NULL)
		c->busy = 1;
	pthread_mutex_unlock(&d->mu);
	return c;
}

static void
conn_give(struct directory *d, struct dconn *c)
{
	pthread_mutex_lock(&d->mu);
	c->busy = 0;
	pthread_mutex_unlock(&d->mu);
}

static void
conn_drop(struct dconn *c)
{
	if (c->ld != NULL)
		ldap_unbind_ext_s(c->ld, NULL, NULL);
	c->ld = NULL;
}

/* Make c usable, respecting the back-off. 0, or -1 with why. */
static int
conn_ensure(struct directory *d, struct dconn *c, struct dreq *r, char *why, size_t whylen)
{
	uint64_t now = clock_mono_ms();
	int rc;

	if (c->ld != NULL)
		return 0;
	pthread_mutex_lock(&d->mu);
	if (now < d->down_until_ms) {
		snprintf(why, whylen, "%s (next attempt in %llu ms)", d->down_reason,
		    (unsigned long long)(d->down_until_ms - now));
		pthread_mutex_unlock(&d->mu);
		r->fast_fail = 1;
		return -1;
	}
	pthread_mutex_unlock(&d->mu);
	rc = conn_open(d, &c->ld, why, whylen);
	pthread_mutex_lock(&d->mu);
	if (rc == 0) {
		d->backoff_ms = 0;
		d->down_until_ms = 0;
		r->connected = 1;
	} else {
		d->backoff_ms = d->backoff_ms ? d->backoff_ms * 2 : BACKOFF_MIN_MS;
		if (d->backoff_ms > BACKOFF_MAX_MS)
			d->backoff_ms = BACKOFF_MAX_MS;
		d->down_until_ms = clock_mono_ms() + d->backoff_ms;
		snprintf(d->down_reason, sizeof(d->down_reason), "%.500s", why);
	}
	pthread_mutex_unlock(&d->mu);
	return rc;
}

/* ---- one lookup (pool thread) ----------------------------------------------------- */

enum step { STEP_OK, STEP_RETRY, STEP_FAIL };

static int
transport_error(int rc)
{
	return rc == LDAP_SERVER_DOWN || rc == LDAP_CONNECT_ERROR || rc == LDAP_UNAVAILABLE ||
	    rc == LDAP_BUSY;
}

/* The first value of attr as a string, bounded; 1 when present. */
static int
get_str(LDAP *ld, LDAPMessage *e, const char *attr, char *out, size_t outlen)
{
	struct berval **v = ldap_get_values_len(ld, e, attr);
	int ok = 0;

	out[0] = '\0';
	if (v != NULL && v[0] != NULL && v[0]->bv_len < outlen &&
	    memchr(v[0]->bv_val, '\0', v[0]->bv_len) == NULL) {
		memcpy(out, v[0]->bv_val, v[0]->bv_len);
		out[v[0]->bv_len] = '\0';
		ok = 1;
	}
	ldap_value_free_len(v);
	return ok;
}

/* An INTEGER attribute (decimal, maybe negative); 1 when present and valid. */
static int
get_int(LDAP *ld, LDAPMessage *e, const char *attr, int64_t *out)
{
	char buf[32], *end;
	long long n;

	if (!get_str(ld, e, attr, buf, sizeof(buf)) || buf[0] == '\0')
		return 0;
	errno = 0;
	n = strtoll(buf, &end, 10);
	if (errno != 0 || *end != '\0')
		return 0;
	*out = n;
	return 1;
}

/* Read the account entry e into a; altsec: best match for the certificate. */
static void
read_account(LDAP *ld, LDAPMessage *e, const struct dreq *r, struct directory_account *a,
    int *direct_member)
{
	const char *group = r->d->cfg->ldap.require_group;
	struct berval **v;
	char *dn = ldap_get_dn(ld, e);
	int64_t n;

	memset(a, 0, sizeof(*a));
	a->in_group = -1;
	snprintf(a->dn, sizeof(a->dn), "%s", dn ? dn : "?");
	ldap_memfree(dn);
	(void)get_str(ld, e, "sAMAccountName", a->sam, sizeof(a->sam));
	if ((a->has_uac = get_int(ld, e, "userAccountControl", &n)))
		a->uac = (uint32_t)n;
	if ((a->has_uac_computed = get_int(ld, e, "msDS-User-Account-Control-Computed", &n)))
		a->uac_computed = (uint32_t)n;
	if (get_int(ld, e, "lockoutTime", &n))
		a->lockout_time = n;
	if (get_int(ld, e, "accountExpires", &n))
		a->account_expires = n;
	if ((v = ldap_get_values_len(ld, e, "objectSid")) != NULL && v[0] != NULL &&
	    directory_sid_string((const unsigned char *)v[0]->bv_val, v[0]->bv_len, a->sid,
	    sizeof(a->sid)) != 0)
		a->sid[0] = '\0';
	ldap_value_free_len(v);
	if (r->has_cert && (v = ldap_get_values_len(ld, e, "altSecurityIdentities")) != NULL) {
		for (int i = 0; v[i] != NULL; i++) {
			enum directory_altsec k = directory_altsec_match(v[i]->bv_val, v[i]->bv_len,
			    &r->cert);

			if (!DIRECTORY_ALTSEC_STRONG(k) && !r->d->cfg->ldap.allow_weak_mapping)
				continue;
			if (k > a->altsec)
				a->altsec = k;
		}
		ldap_value_free_len(v);
	}
	*direct_member = 0;
	if (group && (v = ldap_get_values_len(ld, e, "memberOf")) != NULL) {
		for (int i = 0; v[i] != NULL; i++)
			if (v[i]->bv_len == strlen(group) &&
			    strncasecmp(v[i]->bv_val, group, v[i]->bv_len) == 0)
				*direct_member = 1;
		ldap_value_free_len(v);
	}
}

static enum step
lookup(struct dreq *r, LDAP *ld, char *why, size_t whylen)
{
	struct directory *d = r->d;
	const struct config *cfg = d->cfg;
	struct timeval tv = { (time_t)(d->timeout_ms / 1000u),
	    (suseconds_t)(d->timeout_ms % 1000u) * 1000 };
	struct directory_policy pol;
	LDAPMessage *res = NULL, *e, *found = NULL;
	enum step ret = STEP_FAIL;
	int rc, n = 0, direct = 0;

	r->contacted = 1;
	rc = ldap_search_ext_s(ld, cfg->ldap.base_dn, LDAP_SCOPE_SUBTREE, r->filter, user_attrs, 0,
	    NULL, NULL, &tv, r->by_cert ? SIZELIMIT_CERT : SIZELIMIT_USER, &res);
	if (transport_error(rc)) {
		ldap_why(ld, rc, "search", why, whylen);
		ret = STEP_RETRY;
		goto cleanup;
	}
	if (rc != LDAP_SUCCESS && rc != LDAP_SIZELIMIT_EXCEEDED) {
		ldap_why(ld, rc, "search under base_dn", why, whylen);
		goto cleanup;
	}
	for (e = ldap_first_entry(ld, res); e != NULL; e = ldap_next_entry(ld, e)) {
		if (r->by_cert) {
			struct directory_account a;
			int dm;

			read_account(ld, e, r, &a, &dm);
			if (a.altsec == DIR_ALTSEC_NONE)
				continue;	/* the search was wider than exact */
		}
		n++;
		found = e;
	}
	memset(&r->v, 0, sizeof(r->v));
	r->v.cls = KCD_ERR_LDAP_DENIED;
	if (n == 0 && rc != LDAP_SIZELIMIT_EXCEEDED) {
		snprintf(r->v.name, sizeof(r->v.name), "not_found");
		if (r->by_cert)
			snprintf(r->v.text, sizeof(r->v.text), "no account's altSecurityIdentities "
			    "names the certificate (issuer %.300s, serial reversed %.130s, SKI %.130s)%s",
			    r->cert.issuer_text, r->cert.serial_rev, r->cert.ski,
			    cfg->ldap.allow_weak_mapping ? "" : "; weak forms are not allowed");
		else
			snprintf(r->v.text, sizeof(r->v.text), "no account matches %.900s", r->filter);
		ret = STEP_OK;
		goto cleanup;
	}
	if (n > 1 || rc == LDAP_SIZELIMIT_EXCEEDED) {
		snprintf(r->v.name, sizeof(r->v.name), "ambiguous");
		snprintf(r->v.text, sizeof(r->v.text), "more than one account matches %.900s",
		    r->by_cert ? "the certificate" : r->filter);
		ret = STEP_OK;
		goto cleanup;
	}
	read_account(ld, found, r, &r->acct, &direct);
	if (cfg->ldap.require_group) {
		char filt[DIRECTORY_FILTER_MAX];
		LDAPMessage *gres = NULL;

		if (direct) {
			r->acct.in_group = 1;
		} else if (directory_filter_build("(memberOf:" IN_CHAIN_OID ":=%u)",
		    (const unsigned char *)cfg->ldap.require_group, strlen(cfg->ldap.require_group),
		    filt, sizeof(filt)) != 0) {
			snprintf(why, whylen, "require_group is too long for a filter");
			goto cleanup;
		} else {
			rc = ldap_search_ext_s(ld, r->acct.dn, LDAP_SCOPE_BASE, filt, no_attrs, 0,
			    NULL, NULL, &tv, 1, &gres);
			if (transport_error(rc)) {
				ldap_msgfree(gres);
				ldap_why(ld, rc, "group search", why, whylen);
				ret = STEP_RETRY;
				goto cleanup;
			}
			if (rc != LDAP_SUCCESS && rc != LDAP_NO_SUCH_OBJECT) {
				ldap_msgfree(gres);
				ldap_why(ld, rc, "group membership search", why, whylen);
				goto cleanup;
			}
			r->acct.in_group = rc == LDAP_SUCCESS && ldap_count_entries(ld, gres) > 0;
			ldap_msgfree(gres);
		}
	}
	memset(&pol, 0, sizeof(pol));
	pol.strong = cfg->ldap.strong_mapping;
	pol.require_group = cfg->ldap.require_group != NULL;
	pol.realm = r->realm;
	pol.now_filetime = directory_filetime((int64_t)time(NULL));
	directory_decide(&r->acct, r->has_cert ? &r->cert : NULL, &pol, &r->v);
	ret = STEP_OK;
cleanup:
	ldap_msgfree(res);
	return ret;
}

static void
work(struct pool_job *job)
{
	struct dreq *r = (struct dreq *)(void *)((char *)job - offsetof(struct dreq, job));
	struct directory *d = r->d;
	struct dconn *c;
	char why[KCD_TEXT_MAX] = "";

	if (clock_mono_ms() >= r->deadline_ms) {
		r->failed = r->fast_fail = 1;
		snprintf(r->v.text, sizeof(r->v.text), "waited for a directory thread past the "
		    "deadline (timeout)");
		return;
	}
	if ((c = conn_take(d)) == NULL) {	/* cannot happen: one per thread */
		r->failed = 1;
		snprintf(r->v.text, sizeof(r->v.text), "no free directory connection");
		return;
	}
	for (int attempt = 0;; attempt++) {
		enum step s;

		if (conn_ensure(d, c, r, why, sizeof(why)) != 0) {
			r->failed = 1;
			break;
		}
		s = lookup(r, c->ld, why, sizeof(why));
		if (s == STEP_OK)
			break;
		conn_drop(c);		/* broken, or in a state we do not trust */
		if (s == STEP_RETRY && attempt == 0)
			continue;	/* the server closed an idle connection: once more */
		r->failed = 1;
		break;
	}
	if (r->failed)
		snprintf(r->v.text, sizeof(r->v.text), "%s", why);
	conn_give(d, c);
}

/* ---- answers (loop thread) -------------------------------------------------------- */

/* The answer when the directory cannot be used: on_failure decides.
 * principal: what may pass unchecked; "" when nothing may (source = ldap:
 * only the directory knows the user, whatever a worker sent). */
static void
failure_verdict(const struct directory *d, const char *principal, const char *why,
    struct directory_verdict *v)
{
	struct directory_verdict f;

	memset(&f, 0, sizeof(f));
	snprintf(f.text, sizeof(f.text), "%s", why);
	if (d->cfg->ldap.on_failure == ON_FAILURE_ALLOW && principal[0] != '\0') {
		f.allow = 1;
		f.flags = KCD_ID_DIRECTORY_DOWN;
		snprintf(f.principal, sizeof(f.principal), "%s", principal);
	} else {
		f.cls = KCD_ERR_LDAP_UNREACHABLE;
		snprintf(f.name, sizeof(f.name), "unreachable");
	}
	*v = f;
}

static void
deliver(struct dwaiter *w, const struct directory_verdict *v, int cached)
{
	struct directory_result res;

	memset(&res, 0, sizeof(res));
	res.ok = v->allow;
	res.principal = v->principal;
	res.flags = v->flags;
	res.cls = v->cls;
	res.name = v->name;
	res.text = v->text;
	res.cached = cached;
	w->fn(&res, w->arg);
}

static void
answer_waiters(struct dreq *r, const struct directory_verdict *v)
{
	struct dwaiter *w, *next;

	for (w = r->waiters; w != NULL; w = next) {
		next = w->next;
		deliver(w, v, 0);
		free(w);
	}
	r->waiters = NULL;
	r->answered = 1;
}

static void
inflight_remove(struct directory *d, struct dreq *r)
{
	for (struct dreq **pp = &d->inflight; *pp != NULL; pp = &(*pp)->next)
		if (*pp == r) {
			*pp = r->next;
			r->next = NULL;
			return;
		}
}

static void
req_free(struct dreq *r)
{
	struct dwaiter *w, *next;

	if (r == NULL)
		return;
	for (w = r->waiters; w != NULL; w = next) {
		next = w->next;
		free(w);
	}
	if (r->timer != NULL)
		event_free(r->timer);
	r->magic = 0;
	free(r);
}

static const char *
who(const struct dreq *r)
{
	return r->principal[0] ? r->principal : "(certificate lookup)";
}

static void
done(struct pool_job *job)
{
	struct dreq *r = (struct dreq *)(void *)((char *)job - offsetof(struct dreq, job));
	struct directory *d = r->d;
	struct directory_verdict v;

	if (r->magic != REQ_MAGIC || d->magic != DIR_MAGIC)
		abort();
	d->pending--;
	d->st.lookups += (uint64_t)r->contacted;
	d->st.connects += (uint64_t)r->connected;
	metrics_self()->ldap_lookups += (uint64_t)r->contacted;
	if (r->failed) {
		d->st.errors++;
		metrics_self()->ldap_errors++;
		failure_verdict(d, r->by_cert ? "" : r->principal, r->v.text, &v);
		if (!r->fast_fail || !d->was_down)
			log_error("directory", "lookup for %s failed: %s (on_failure = %s)", who(r),
			    r->v.text, d->cfg->ldap.on_failure == ON_FAILURE_ALLOW ? "allow" : "deny");
		else
			log_debug("directory", "lookup for %s: %s", who(r), r->v.text);
		d->was_down = 1;
	} else {
		v = r->v;
		if (d->was_down)
			log_info("directory", "the directory answers again");
		d->was_down = 0;
		if (directory_cache_put(d->cache, r->key, clock_mono_ms(), d->cfg->ldap.cache_ttl,
		    &v) != 0)
			log_warn("directory", "out of memory caching the answer for %s", who(r));
		if (!v.allow)
			log_info("directory", "%s refused: ldap_%s: %s", who(r), v.name, v.text);
		else if (v.flags & KCD_ID_AUDIT)
			log_warn("directory", "strong_mapping audit: %s (as %s) would be refused by "
			    "enforce: %s: %s", who(r), v.principal, v.name, v.text);
		else
			log_debug("directory", "%s allowed as %s", who(r), v.principal);
	}
	if (!r->answered) {
		inflight_remove(d, r);
		answer_waiters(r, &v);
	}
	req_free(r);
}

static void
drop(struct pool_job *job, int work_ran)
{
	struct dreq *r = (struct dreq *)(void *)((char *)job - offsetof(struct dreq, job));

	(void)work_ran;
	req_free(r);	/* directory_free cancelled its waiters already */
}

static void
on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct dreq *r = arg;
	struct directory_verdict v;
	char why[128];

	(void)fd;
	(void)what;
	if (r->magic != REQ_MAGIC)
		abort();
	if (r->answered)
		return;
	r->d->st.timeouts++;
	snprintf(why, sizeof(why), "no answer from the directory within %llu ms (timeout)",
	    (unsigned long long)r->d->timeout_ms);
	failure_verdict(r->d, r->by_cert ? "" : r->principal, why, &v);
	log_error("directory", "lookup for %s: %s (on_failure = %s)", who(r), why,
	    r->d->cfg->ldap.on_failure == ON_FAILURE_ALLOW ? "allow" : "deny");
	inflight_remove(r->d, r);
	answer_waiters(r, &v);
}

static void
on_ready(evutil_socket_t fd, short what, void *arg)
{
	struct directory *d = arg;
	struct dready *q;

	(void)fd;
	(void)what;
	if (d->magic != DIR_MAGIC)
		abort();
	q = d->ready_head;
	d->ready_head = NULL;
	d->ready_tail = &d->ready_head;
	while (q != NULL) {
		struct dready *next = q->next;

		deliver(&q->w, &q->v, q->cached);
		free(q);
		q = next;
	}
}

static int
queue_ready(struct directory *d, directory_done_fn *fn, void *arg,
    const struct directory_verdict *v, int cached)
{
	struct dready *q = calloc(1, sizeof(*q));

	if (q == NULL)
		return -1;
	q->w.fn = fn;
	q->w.arg = arg;
	q->v = *v;
	q->cached = cached;
	*d->ready_tail = q;
	d->ready_tail = &q->next;
	event_active(d->ready_ev, EV_TIMEOUT, 0);
	return 0;
}

static void
on_sweep(evutil_socket_t fd, short what, void *arg)
{
	struct directory *d = arg;

	(void)fd;
	(void)what;
	if (d->magic != DIR_MAGIC)
		abort();
	(void)directory_cache_expire(d->cache, clock_mono_ms());
}

/* ---- set-up ----------------------------------------------------------------------- */

static int
read_password(struct directory *d, const char *file, char *err, size_t errlen)
{
	char buf[1024];
	size_t n;
	FILE *f;

	if ((f = fopen(file, "re")) == NULL) {
		snprintf(err, errlen, "bind_password_file %s: %s", file, strerror(errno));
		return -1;
	}
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	buf[strcspn(buf, "\r\n")] = '\0';
	if (buf[0] == '\0') {
		snprintf(err, errlen, "bind_password_file %s holds no password on its first line",
		    file);
		explicit_bzero(buf, sizeof(buf));
		return -1;
	}
	d->password = strdup(buf);
	explicit_bzero(buf, sizeof(buf));
	if (d->password == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	return 0;
}

static int
acquire_cred(struct directory *d, char *err, size_t errlen)
{
	const struct config *cfg = d->cfg;
	gss_key_value_element_desc el[2];
	gss_key_value_set_desc store = { 2, el };
	gss_OID_set_desc mechs = { 1, (gss_OID)gss_mech_krb5 };
	gss_buffer_desc nb;
	gss_name_t name = GSS_C_NO_NAME;
	OM_uint32 maj, min, min2;
	char gerr[512];
	int rc = -1;

	/* a ccache of our own: never the default one (another identity) */
	snprintf(d->ccache, sizeof(d->ccache), "MEMORY:ekp-directory-%p", (void *)d);
	el[0].key = "client_keytab";
	el[0].value = cfg->kerberos.keytab;
	el[1].key = "ccache";
	el[1].value = d->ccache;
	nb.value = cfg->kerberos.principal;
	nb.length = strlen(cfg->kerberos.principal);
	maj = gss_import_name(&min, &nb, GSS_KRB5_NT_PRINCIPAL_NAME, &name);
	if (GSS_ERROR(maj)) {
		snprintf(err, errlen, "bind = gssapi: principal %s: %s", cfg->kerberos.principal,
		    log_gss_error(maj, min, NULL, gerr, sizeof(gerr)));
		goto cleanup;
	}
	maj = gss_acquire_cred_from(&min, name, GSS_C_INDEFINITE, &mechs, GSS_C_INITIATE, &store,
	    &d->cred, NULL, NULL);
	if (GSS_ERROR(maj)) {
		snprintf(err, errlen, "bind = gssapi: no credential for %s from keytab %s: %s",
		    cfg->kerberos.principal, cfg->kerberos.keytab,
		    log_gss_error(maj, min, (gss_OID)gss_mech_krb5, gerr, sizeof(gerr)));
		d->cred = GSS_C_NO_CREDENTIAL;
		goto cleanup;
	}
	rc = 0;
cleanup:
	if (name != GSS_C_NO_NAME)
		(void)gss_release_name(&min2, &name);
	return rc;
}

struct directory *
directory_new(struct event_base *base, const struct config *cfg, char *err, size_t errlen)
{
	struct directory *d = NULL;
	struct timeval sweep = { SWEEP_MS / 1000, 0 };
	int debug = 0;

	if (cfg->ldap.uri == NULL || cfg->ldap.base_dn == NULL || cfg->ldap.user_filter == NULL) {
		snprintf(err, errlen, "the directory needs [ldap] uri, base_dn and user_filter");
		return NULL;
	}
	if ((d = calloc(1, sizeof(*d))) == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	d->magic = DIR_MAGIC;
	d->base = base;
	d->cfg = cfg;
	d->cred = GSS_C_NO_CREDENTIAL;
	d->ready_tail = &d->ready_head;
	d->timeout_ms = cfg->ldap.timeout ? cfg->ldap.timeout : 5000;
	(void)identity_params_from_config(cfg, &d->idp);
	if (pthread_mutex_init(&d->mu, NULL) != 0) {
		snprintf(err, errlen, "pthread_mutex_init failed");
		d->magic = 0;
		free(d);
		return NULL;
	}
	if (pthread_mutex_init(&d->cred_mu, NULL) != 0) {
		snprintf(err, errlen, "pthread_mutex_init failed");
		pthread_mutex_destroy(&d->mu);
		d->magic = 0;
		free(d);
		return NULL;
	}
	/* libldap and Cyrus SASL initialise their globals here, on one
	 * thread, not racing in the pool */
	(void)ldap_get_option(NULL, LDAP_OPT_DEBUG_LEVEL, &debug);
	if (cfg->ldap.bind == LDAP_BIND_SIMPLE) {
		if (read_password(d, cfg->ldap.bind_password_file ? cfg->ldap.bind_password_file :
		    "", err, errlen) != 0)
			goto fail;
	}
	if ((d->cache = directory_cache_new(DIRECTORY_CACHE_MAX)) == NULL ||
	    (d->ready_ev = event_new(base, -1, 0, on_ready, d)) == NULL ||
	    (d->sweep_ev = event_new(base, -1, EV_PERSIST, on_sweep, d)) == NULL ||
	    event_add(d->sweep_ev, &sweep) != 0) {
		snprintf(err, errlen, "out of memory setting up the directory");
		goto fail;
	}
	if ((d->pool = pool_new(base, DIRECTORY_THREADS, err, errlen)) == NULL)
		goto fail;
	return d;
fail:
	directory_free(d);
	return NULL;
}

/* The answer every waiter still unanswered gets from directory_free. */
static void
shutdown_result(struct directory_result *res)
{
	memset(res, 0, sizeof(*res));
	res->cancelled = 1;
	res->cls = KCD_ERR_LDAP_UNREACHABLE;
	res->name = "shutdown";
	res->text = "the directory checks are shutting down";
	res->principal = "";
}

void
directory_free(struct directory *d)
{
	OM_uint32 min;
	struct dreq *r;

	if (d == NULL)
		return;
	if (d->magic != DIR_MAGIC)
		abort();
	/* callers release their args: cancel every unanswered waiter */
	while ((r = d->inflight) != NULL) {
		struct dwaiter *w, *next;
		struct directory_result res;

		d->inflight = r->next;
		r->next = NULL;
		shutdown_result(&res);
		for (w = r->waiters; w != NULL; w = next) {
			next = w->next;
			w->fn(&res, w->arg);
			free(w);
		}
		r->waiters = NULL;
		r->answered = 1;
	}
	while (d->ready_head != NULL) {
		struct dready *q = d->ready_head;
		struct directory_result res;

		d->ready_head = q->next;
		shutdown_result(&res);
		q->w.fn(&res, q->w.arg);
		free(q);
	}
	pool_free(d->pool);		/* waits for running lookups; drop() the rest */
	for (unsigned i = 0; i < DIRECTORY_THREADS; i++)
		conn_drop(&d->conns[i]);
	if (d->ready_ev != NULL)
		event_free(d->ready_ev);
	if (d->sweep_ev != NULL)
		event_free(d->sweep_ev);
	directory_cache_free(d->cache);
	if (d->cred != GSS_C_NO_CREDENTIAL)
		(void)gss_release_cred(&min, &d->cred);
	if (d->password != NULL) {
		explicit_bzero(d->password, strlen(d->password));
		free(d->password);
	}
	pthread_mutex_destroy(&d->cred_mu);
	pthread_mutex_destroy(&d->mu);
	d->magic = 0;
	free(d);
}

/* ---- requests ----------------------------------------------------------------------- */

/* The certificate's own value for the configured source ("%u"), when
 * identity_map agrees that it names principal. 1 with out set, else 0. */
static int
cert_value(const struct directory *d, const X509 *x, const char *principal, char *out,
    size_t outlen)
{
	static const char upn_oid[] = "1.3.6.1.4.1.311.20.2.3";
	struct identity_result *res = NULL;
	GENERAL_NAMES *gens = NULL;
	unsigned char *utf8 = NULL;
	int ok = 0, len;

	if ((res = calloc(1, sizeof(*res))) == NULL ||
	    identity_map(x, &d->idp, res) != 0 || strcmp(res->principal, principal) != 0)
		goto cleanup;
	if (d->idp.source == ID_SRC_SUBJECT_CN) {
		const X509_NAME *nm = X509_get_subject_name(x);
		int i = X509_NAME_get_index_by_NID((X509_NAME *)nm, NID_commonName, -1);

		if (i < 0 || (len = ASN1_STRING_to_UTF8(&utf8,
		    X509_NAME_ENTRY_get_data(X509_NAME_get_entry(nm, i)))) < 0 ||
		    (size_t)len >= outlen)
			goto cleanup;
		memcpy(out, utf8, (size_t)len);
		out[len] = '\0';
		ok = 1;
		goto cleanup;
	}
	gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	for (int i = 0; gens != NULL && i < sk_GENERAL_NAME_num(gens) && !ok; i++) {
		const GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, i);
		const ASN1_STRING *s = NULL;
		char oid[64];

		if (d->idp.source == ID_SRC_SAN_EMAIL && gn->type == GEN_EMAIL) {
			s = gn->d.rfc822Name;
		} else if (d->idp.source == ID_SRC_SAN_UPN && gn->type == GEN_OTHERNAME &&
		    OBJ_obj2txt(oid, sizeof(oid), gn->d.otherName->type_id, 1) > 0 &&
		    strcmp(oid, upn_oid) == 0 && gn->d.otherName->value != NULL &&
		    (gn->d.otherName->value->type == V_ASN1_UTF8STRING ||
		    gn->d.otherName->value->type == V_ASN1_IA5STRING)) {
			s = gn->d.otherName->value->value.asn1_string;
		}
		if (s == NULL || (size_t)ASN1_STRING_length(s) >= outlen)
			continue;
		memcpy(out, ASN1_STRING_get0_data(s), (size_t)ASN1_STRING_length(s));
		out[ASN1_STRING_length(s)] = '\0';
		ok = strlen(out) == (size_t)ASN1_STRING_length(s);
	}
cleanup:
	OPENSSL_free(utf8);
	GENERAL_NAMES_free(gens);
	free(res);
	return ok;
}

/* Refuse at once (bad input): a verdict delivered from the ready queue. */
static int
refuse_now(struct directory *d, struct dreq *r, directory_done_fn *fn, void *arg,
    const char *name, const char *text, char *err, size_t errlen)
{
	struct directory_verdict v;

	memset(&v, 0, sizeof(v));
	v.cls = KCD_ERR_LDAP_DENIED;
	snprintf(v.name, sizeof(v.name), "%s", name);
	snprintf(v.text, sizeof(v.text), "%s", text);
	log_info("directory", "%s refused: ldap_%s: %s", who(r), name, text);
	req_free(r);
	if (queue_ready(d, fn, arg, &v, 0) != 0) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	return 0;
}

int
directory_identify(struct directory *d, const char *principal, const unsigned char *der,
    size_t der_len, directory_done_fn *fn, void *arg, char *err, size_t errlen)
{
	const struct config *cfg = d->cfg;
	struct directory_verdict v;
	struct dreq *r = NULL;
	struct dwaiter *w = NULL;
	X509 *x = NULL;
	EVP_MD_CTX *md = NULL;
	unsigned mdlen = 0;
	const char *at;
	char value[KCD_PRINCIPAL_MAX], cerr[256];
	struct timeval tv;
	int rc = -1;

	if (d == NULL || d->magic != DIR_MAGIC)
		abort();
	if (errlen > 0)
		err[0] = '\0';
	if (principal == NULL || strlen(principal) >= KCD_PRINCIPAL_MAX || der_len > KCD_CERT_MAX ||
	    (der == NULL && der_len > 0) || fn == NULL) {
		snprintf(err, errlen, "invalid directory request");
		return -1;
	}
	if ((r = calloc(1, sizeof(*r))) == NULL || (w = calloc(1, sizeof(*w))) == NULL) {
		snprintf(err, errlen, "out of memory");
		goto cleanup;
	}
	r->magic = REQ_MAGIC;
	r->d = d;
	snprintf(r->principal, sizeof(r->principal), "%s", principal);
	r->by_cert = cfg->identity.source == ID_SRC_LDAP;
	w->fn = fn;
	w->arg = arg;
	d->st.requests++;

	/* the key: what the answer depends on */
	if ((md = EVP_MD_CTX_new()) == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
	    EVP_DigestUpdate(md, principal, strlen(principal) + 1) != 1 ||
	    (der_len > 0 && EVP_DigestUpdate(md, der, der_len) != 1) ||
	    EVP_DigestFinal_ex(md, r->key, &mdlen) != 1) {
		snprintf(err, errlen, "cannot hash the request");
		goto cleanup;
	}
	if (der_len > 0) {
		const unsigned char *p = der;

		if ((x = d2i_X509(NULL, &p, (long)der_len)) == NULL || p != der + der_len) {
			rc = refuse_now(d, r, fn, arg, "bad_certificate", "the certificate sent "
			    "to kcd does not decode", err, errlen);
			r = NULL;
			goto cleanup;
		}
		if (directory_cert_info(x, &r->cert, cerr, sizeof(cerr)) != 0) {
			rc = refuse_now(d, r, fn, arg, "bad_certificate", cerr, err, errlen);
			r = NULL;
			goto cleanup;
		}
		r->has_cert = 1;
	}
	if (r->by_cert) {
		if (!r->has_cert) {
			rc = refuse_now(d, r, fn, arg, "no_certificate", "[identity] source = ldap "
			    "needs the certificate to find the account", err, errlen);
			r = NULL;
			goto cleanup;
		}
		if (directory_cert_filter(&r->cert, cfg->ldap.allow_weak_mapping, r->filter,
		    sizeof(r->filter)) != 0) {
			rc = refuse_now(d, r, fn, arg, "bad_certificate", "the certificate's names "
			    "are too long for a search filter", err, errlen);
			r = NULL;
			goto cleanup;
		}
		snprintf(r->realm, sizeof(r->realm), "%s", cfg->identity.realm ? cfg->identity.realm : "");
	} else {
		if (principal[0] == '\0') {
			snprintf(err, errlen, "no principal to look up");
			goto cleanup;
		}
		if (x == NULL || !cert_value(d, x, principal, value, sizeof(value)))
			snprintf(value, sizeof(value), "%s", principal);
		if (directory_filter_build(cfg->ldap.user_filter, (const unsigned char *)value,
		    strlen(value), r->filter, sizeof(r->filter)) != 0) {
			rc = refuse_now(d, r, fn, arg, "bad_request", "the user is too long for "
			    "user_filter", err, errlen);
			r = NULL;
			goto cleanup;
		}
		at = strrchr(principal, '@');
		snprintf(r->realm, sizeof(r->realm), "%s", at && at[1] ? at + 1 :
		    cfg->identity.realm ? cfg->identity.realm : "");
	}

	/* the cache, then a lookup already running for the same key */
	if (directory_cache_get(d->cache, r->key, clock_mono_ms(), &v)) {
		d->st.cache_hits++;
		if (queue_ready(d, fn, arg, &v, 1) != 0) {
			snprintf(err, errlen, "out of memory");
			goto cleanup;
		}
		rc = 0;
		goto cleanup;
	}
	for (struct dreq *o = d->inflight; o != NULL; o = o->next)
		if (memcmp(o->key, r->key, DIRECTORY_KEY_LEN) == 0) {
			w->next = o->waiters;
			o->waiters = w;
			w = NULL;
			d->st.waits++;
			rc = 0;
			goto cleanup;
		}
	if (d->pending >= MAX_PENDING) {
		failure_verdict(d, r->by_cert ? "" : principal, "too many directory lookups "
		    "waiting (the directory is slow or down)", &v);
		d->st.errors++;
		metrics_self()->ldap_errors++;
		if (queue_ready(d, fn, arg, &v, 0) != 0) {
			snprintf(err, errlen, "out of memory");
			goto cleanup;
		}
		rc = 0;
		goto cleanup;
	}

	r->deadline_ms = clock_mono_ms() + d->timeout_ms;
	tv.tv_sec = (time_t)(d->timeout_ms / 1000u);
	tv.tv_usec = (suseconds_t)(d->timeout_ms % 1000u) * 1000;
	if ((r->timer = evtimer_new(d->base, on_deadline, r)) == NULL ||
	    evtimer_add(r->timer, &tv) != 0) {
		snprintf(err, errlen, "cannot arm the lookup deadline");
		goto cleanup;
	}
	r->job.work = work;
	r->job.done = done;
	r->job.drop = drop;
	r->waiters = w;
	if (pool_submit(d->pool, &r->job) != 0) {
		r->waiters = NULL;
		snprintf(err, errlen, "the directory is shutting down");
		goto cleanup;
	}
	w = NULL;
	r->next = d->inflight;
	d->inflight = r;
	d->pending++;
	r = NULL;
	rc = 0;
cleanup:
	EVP_MD_CTX_free(md);
	X509_free(x);
	free(w);
	req_free(r);
	return rc;
}

void
directory_stats(const struct directory *d, struct directory_stats *st)
{
	struct directory_stats s = d->st;
	unsigned n = 0;

	for (const struct dreq *r = d->inflight; r != NULL; r = r->next)
		n++;
	s.in_flight = n;
	s.cached = directory_cache_count(d->cache);
	*st = s;
}
