/*
 * policy.c — the device lists and the embedding program's hooks; see
 * policy.h.
 *
 * A hook call is a heap object that outlives whatever asked for it: the
 * embedding program holds its handle until it answers, even when the
 * connection (or the whole generation) has gone away meanwhile. Calls are
 * therefore registered in struct policy_hooks, which belongs to the
 * embedding layer and lives as long as the proxy; a policy that is freed
 * only detaches its calls. An answer given inside the hook is taken
 * synchronously; a later one is handed to the caller's callback through an
 * event on the loop, so stream code never runs inside the embedding
 * program's stack frames.
 */
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <sys/stat.h>

#include <event2/event.h>
#include <openssl/x509.h>

#include "access_log.h"
#include "config.h"
#include "log.h"
#include "policy.h"

#define POLICY_MAGIC	0x504f4c31u	/* "POL1" */
#define CALL_MAGIC	0x43414c4cu	/* "CALL" */
#define LIST_FILE_MAX	(64u * 1024u * 1024u)	/* bytes of one device list file */

struct policy_list {
	size_t n;
	char **v;			/* lower case, sorted; each owned */
};

struct policy {
	unsigned magic;
	const struct config *cfg;
	struct event_base *base;
	struct policy_hooks *hooks;	/* borrowed; NULL in the daemon */
	struct identity_params idp;
	struct policy_list *allow;	/* NULL: no allow_file */
	struct policy_list *deny;	/* NULL: no deny_file */
};

enum call_kind { CALL_IDENTITY, CALL_AUTHORIZE };

struct policy_call {
	unsigned magic;
	enum call_kind kind;
	struct policy_hooks *hooks;	/* the registry this call is on */
	struct policy *pol;		/* NULL once that policy is freed */
	struct event *ev;		/* hands a later answer to the loop */
	int in_hook;			/* the hook is running right now */
	int answered;
	int cancelled;			/* the asker is gone: drop the answer */
	policy_identity_cb *icb;
	policy_authorize_cb *acb;
	void *arg;
	/* what the hook sees; strings point into store */
	struct eas_kcd_proxy_identity id;
	struct eas_kcd_proxy_request rq;
	unsigned char *der;		/* owned */
	char *store;			/* owned */
	/* the answer */
	struct policy_identity ires;
	struct policy_verdict verdict;
	struct policy_call *prev, *next;	/* on hooks->calls */
};

/* ---- device lists -------------------------------------------------------- */

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

void
policy_list_free(struct policy_list *l)
{
	if (l == NULL)
		return;
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	free(l);
}

struct policy_list *
policy_list_parse(const char *name, const char *text, size_t len, char *err, size_t errlen)
{
	struct policy_list *l = NULL, *ret = NULL;
	size_t cap = 0, pos = 0;
	unsigned line = 0;

	if ((l = calloc(1, sizeof(*l))) == NULL) {
		snprintf(err, errlen, "%s: out of memory", name);
		goto cleanup;
	}
	while (pos < len) {
		const char *s = text + pos, *nl = memchr(s, '\n', len - pos);
		size_t n = nl != NULL ? (size_t)(nl - s) : len - pos;
		char *id;

		pos += n + (nl != NULL);
		line++;
		while (n > 0 && (s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
			n--;
		while (n > 0 && (*s == ' ' || *s == '\t')) {
			s++;
			n--;
		}
		if (n == 0 || *s == '#')
			continue;
		if (n > POLICY_DEVICE_MAX) {
			snprintf(err, errlen, "%s:%u: a DeviceId of %zu characters; EAS DeviceIds "
			    "have at most %d", name, line, n, POLICY_DEVICE_MAX);
			goto cleanup;
		}
		for (size_t i = 0; i < n; i++) {
			unsigned char c = (unsigned char)s[i];
			if (c < 0x21 || c > 0x7e) {
				snprintf(err, errlen, "%s:%u: byte 0x%02x in a DeviceId; write one "
				    "DeviceId per line, printable ASCII without blanks", name,
				    line, c);
				goto cleanup;
			}
		}
		if (l->n == cap) {
			size_t ncap = cap ? cap * 2 : 64;
			char **v = realloc(l->v, ncap * sizeof(*v));
			if (v == NULL) {
				snprintf(err, errlen, "%s: out of memory", name);
				goto cleanup;
			}
			l->v = v;
			cap = ncap;
		}
		/* (not strndup: the text need not be NUL-terminated) */
		if ((id = malloc(n + 1)) == NULL) {
			snprintf(err, errlen, "%s: out of memory", name);
			goto cleanup;
		}
		for (size_t i = 0; i < n; i++)
			id[i] = (char)tolower((unsigned char)s[i]);
		id[n] = '\0';
		l->v[l->n++] = id;
	}
	if (l->n > 1)
		qsort(l->v, l->n, sizeof(*l->v), cmp_str);
	ret = l;
	l = NULL;
cleanup:
	policy_list_free(l);
	return ret;
}

struct policy_list *
policy_list_load(const char *path, char *err, size_t errlen)
{
	struct policy_list *ret = NULL;
	struct stat st;
	char *buf = NULL;
	size_t got = 0;
	int fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)) < 0) {
		snprintf(err, errlen, "cannot read device list %s: %s", path, strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "cannot read device list %s: not a regular file", path);
		goto cleanup;
	}
	if ((uint64_t)st.st_size > LIST_FILE_MAX) {
		snprintf(err, errlen, "device list %s is %lld bytes; at most %u are read (split "
		    "it or use the embedding API's authorize hook)", path,
		    (long long)st.st_size, LIST_FILE_MAX);
		goto cleanup;
	}
	if ((buf = malloc((size_t)st.st_size + 1)) == NULL) {
		snprintf(err, errlen, "device list %s: out of memory", path);
		goto cleanup;
	}
	while (got < (size_t)st.st_size) {
		ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			snprintf(err, errlen, "cannot read device list %s: %s", path, strerror(errno));
			goto cleanup;
		}
		if (r == 0)
			break;		/* shrank meanwhile: take what is there */
		got += (size_t)r;
	}
	buf[got] = '\0';
	ret = policy_list_parse(path, buf, got, err, errlen);
cleanup:
	free(buf);
	close(fd);
	return ret;
}

int
policy_list_has(const struct policy_list *l, const char *device_id)
{
	char key[POLICY_DEVICE_MAX + 1];
	const char *k = key;
	size_t n = strlen(device_id);

	if (l == NULL || n == 0 || n > POLICY_DEVICE_MAX)
		return 0;
	for (size_t i = 0; i <= n; i++)
		key[i] = (char)tolower((unsigned char)device_id[i]);
	return bsearch(&k, l->v, l->n, sizeof(*l->v), cmp_str) != NULL;
}

size_t
policy_list_count(const struct policy_list *l)
{
	return l != NULL ? l->n : 0;
}

/* ---- the policy ------------------------------------------------------------- */

struct policy *
policy_new(const struct config *cfg, struct event_base *base, struct policy_hooks *hooks,
    char *err, size_t errlen)
{
	struct policy *pol = calloc(1, sizeof(*pol));

	if (pol == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	pol->magic = POLICY_MAGIC;
	pol->cfg = cfg;
	pol->base = base;
	pol->hooks = hooks;
	identity_params_from_config(cfg, &pol->idp);
	if (cfg->devices.deny_file != NULL &&
	    (pol->deny = policy_list_load(cfg->devices.deny_file, err, errlen)) == NULL)
		goto fail;
	if (cfg->devices.allow_file != NULL &&
	    (pol->allow = policy_list_load(cfg->devices.allow_file, err, errlen)) == NULL)
		goto fail;
	if (pol->deny != NULL || pol->allow != NULL)
		log_info("policy", "device lists: %zu DeviceIds denied (%s), %s", policy_list_count(pol->deny),
		    cfg->devices.deny_file != NULL ? cfg->devices.deny_file : "no deny_file",
		    pol->allow != NULL ? "only those in allow_file pass" : "no allow_file");
	return pol;
fail:
	policy_free(pol);
	return NULL;
}

static void
call_unlink(struct policy_call *c)
{
	if (c->prev != NULL)
		c->prev->next = c->next;
	else if (c->hooks != NULL && c->hooks->calls == c)
		c->hooks->calls = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	c->prev = c->next = NULL;
}

static void
call_free(struct policy_call *c)
{
	call_unlink(c);
	if (c->ev != NULL)
		event_free(c->ev);
	OPENSSL_free(c->der);
	free(c->store);
	c->magic = 0;
	free(c);
}

void
policy_free(struct policy *pol)
{
	if (pol == NULL)
		return;
	assert(pol->magic == POLICY_MAGIC);
	/* calls of this policy stay alive for their answer; they only lose
	 * their policy (their askers, the streams, are gone already) */
	if (pol->hooks != NULL)
		for (struct policy_call *c = pol->hooks->calls; c != NULL; c = c->next)
			if (c->pol == pol)
				c->pol = NULL;
	policy_list_free(pol->allow);
	policy_list_free(pol->deny);
	pol->magic = 0;
	free(pol);
}

void
policy_hooks_release(struct policy_hooks *h)
{
	while (h->calls != NULL)
		call_free(h->calls);
}

/* ---- calls ------------------------------------------------------------------------ */

static void
on_answer(evutil_socket_t fd, short what, void *arg)
{
	struct policy_call *c = arg;

	(void)fd;
	(void)what;
	assert(c->magic == CALL_MAGIC && c->answered);
	if (!c->cancelled) {
		if (c->kind == CALL_IDENTITY)
			c->icb(&c->ires, c->arg);
		else
			c->acb(&c->verdict, c->arg);
	}
	call_free(c);
}

static struct policy_call *
call_new(struct policy *pol, enum call_kind kind, size_t store_len)
{
	struct policy_call *c = calloc(1, sizeof(*c));

	if (c == NULL)
		return NULL;
	c->magic = CALL_MAGIC;
	c->kind = kind;
	c->pol = pol;
	c->hooks = pol->hooks;
	if ((store_len > 0 && (c->store = malloc(store_len)) == NULL) ||
	    (c->ev = evtimer_new(pol->base, on_answer, c)) == NULL) {
		free(c->store);
		free(c);
		return NULL;
	}
	/* on the registry: the embedding program may hold it past us */
	c->next = pol->hooks->calls;
	if (c->next != NULL)
		c->next->prev = c;
	pol->hooks->calls = c;
	return c;
}

/* The embedding program answered c (its result is in c). */
static void
call_answered(struct policy_call *c)
{
	c->answered = 1;
	if (c->in_hook)
		return;			/* taken synchronously by the asker */
	if (c->cancelled) {
		call_free(c);
		return;
	}
	log_debug("policy", "%s: the %s hook answered after it returned", c->kind == CALL_IDENTITY ?
	    c->id.client_ip : c->rq.client_ip, c->kind == CALL_IDENTITY ? "identity" : "authorize");
	event_active(c->ev, EV_TIMEOUT, 1);
}

void
policy_cancel(struct policy_call *c)
{
	if (c == NULL)
		return;
	assert(c->magic == CALL_MAGIC);
	if (c->answered) {
		call_free(c);		/* its delivery event is dropped with it */
		return;
	}
	c->cancelled = 1;		/* freed when the embedding program answers */
}

static struct policy_call *
check_call(struct eas_kcd_proxy_call *call, enum call_kind kind)
{
	struct policy_call *c = (struct policy_call *)call;

	if (c == NULL || c->magic != CALL_MAGIC || c->kind != kind || c->answered)
		return NULL;
	return c;
}

/* ---- identity ------------------------------------------------------------------- */

static void
identity_ours(const struct identity_result *res, struct policy_identity *out)
{
	memset(out, 0, sizeof(*out));
	out->ok = res->reason == REASON_OK;
	if (out->ok)
		snprintf(out->principal, sizeof(out->principal), "%s", res->principal);
	else
		snprintf(out->detail, sizeof(out->detail), "%s", identity_detail_token(res->detail));
}

struct policy_call *
policy_identify(struct policy *pol, X509 *cert, const struct identity_result *res,
    const char *client_ip, struct policy_identity *out, policy_identity_cb *cb, void *arg)
{
	struct policy_hooks *h = pol->hooks;
	struct policy_call *c;
	int der_len;
	size_t ip_len = strlen(client_ip) + 1;

	assert(pol->magic == POLICY_MAGIC);
	identity_ours(res, out);
	if (h == NULL || h->identity == NULL || cert == NULL)
		return NULL;
	if ((c = call_new(pol, CALL_IDENTITY, ip_len + IDENTITY_PRINCIPAL_MAX +
	    POLICY_DETAIL_MAX)) == NULL ||
	    (der_len = i2d_X509(cert, &c->der)) <= 0) {
		if (c != NULL)
			call_free(c);
		log_error("policy", "%s: cannot ask the identity hook: out of memory", client_ip);
		memset(out, 0, sizeof(*out));
		snprintf(out->detail, sizeof(out->detail), "internal_error");
		return NULL;
	}
	c->icb = cb;
	c->arg = arg;
	c->ires = *out;
	c->id.cert_der = c->der;
	c->id.cert_der_len = (size_t)der_len;
	memcpy(c->store, client_ip, ip_len);
	c->id.client_ip = c->store;
	if (out->ok) {
		c->id.principal = c->store + ip_len;
		memcpy(c->store + ip_len, out->principal, strlen(out->principal) + 1);
	} else {
		c->id.detail = c->store + ip_len + IDENTITY_PRINCIPAL_MAX;
		memcpy(c->store + ip_len + IDENTITY_PRINCIPAL_MAX, out->detail,
		    strlen(out->detail) + 1);
	}
	c->in_hook = 1;
	h->identity((struct eas_kcd_proxy_call *)c, &c->id, h->identity_arg);
	c->in_hook = 0;
	if (!c->answered)
		return c;
	*out = c->ires;
	call_free(c);
	return NULL;
}

int
eas_kcd_proxy_identity_done(struct eas_kcd_proxy_call *call,
    enum eas_kcd_proxy_identity_verdict verdict, const char *principal)
{
	struct policy_call *c = check_call(call, CALL_IDENTITY);
	struct identity_result *r = NULL;
	int rc = EAS_KCD_PROXY_OK;

	if (c == NULL)
		return EAS_KCD_PROXY_E_INVALID;	/* not a pending identity call */
	switch (verdict) {
	case EAS_KCD_PROXY_IDENTITY_KEEP:
		break;
	case EAS_KCD_PROXY_IDENTITY_REFUSE:
		log_info("policy", "%s: the identity hook refused the certificate (%s)",
		    c->id.client_ip, c->id.principal != NULL ? c->id.principal : c->id.detail);
		memset(&c->ires, 0, sizeof(c->ires));
		snprintf(c->ires.detail, sizeof(c->ires.detail), "refused_by_hook");
		break;
	case EAS_KCD_PROXY_IDENTITY_REPLACE:
		memset(&c->ires, 0, sizeof(c->ires));
		if (c->pol == NULL || c->cancelled)
			break;		/* nobody waits for it */
		if (principal == NULL) {
			snprintf(c->ires.detail, sizeof(c->ires.detail), "hook_no_principal");
			rc = EAS_KCD_PROXY_E_INVALID;
			break;
		}
		if ((r = malloc(sizeof(*r))) == NULL) {
			snprintf(c->ires.detail, sizeof(c->ires.detail), "internal_error");
			rc = EAS_KCD_PROXY_E_SYSTEM;
			break;
		}
		/* the same name rules as a certificate's UPN */
		if (identity_map_name((const unsigned char *)principal, strlen(principal), 0,
		    &c->pol->idp, r) != 0) {
			log_info("policy", "%s: the identity hook's principal is refused: %s",
			    c->id.client_ip, r->message);
			snprintf(c->ires.detail, sizeof(c->ires.detail), "%s",
			    identity_detail_token(r->detail));
			rc = EAS_KCD_PROXY_E_INVALID;
			break;
		}
		c->ires.ok = 1;
		snprintf(c->ires.principal, sizeof(c->ires.principal), "%s", r->principal);
		log_debug("policy", "%s: the identity hook maps the certificate to %s",
		    c->id.client_ip, c->ires.principal);
		break;
	default:
		memset(&c->ires, 0, sizeof(c->ires));
		snprintf(c->ires.detail, sizeof(c->ires.detail), "hook_bad_verdict");
		rc = EAS_KCD_PROXY_E_INVALID;
		break;
	}
	free(r);
	call_answered(c);
	return rc;
}

/* ---- authorize ------------------------------------------------------------------ */

static void
verdict_set(struct policy_verdict *v, enum reason r, const char *detail)
{
	v->reason = r;
	snprintf(v->detail, sizeof(v->detail), "%s", detail);
}

/* The built-in lists; 0 when the request may go on to the hook. */
static int
lists_refuse(const struct policy *pol, const struct eas_kcd_proxy_request *rq,
    struct policy_verdict *v)
{
	const struct config *cfg = pol->cfg;

	if (rq->device_id[0] == '\0' && rq->cmd[0] == '\0')
		return 0;		/* OPTIONS, Autodiscover: no device to judge */
	if (pol->deny != NULL && policy_list_has(pol->deny, rq->device_id)) {
		log_info("policy", "%s %s: DeviceId %s is listed in [devices] deny_file %s",
		    rq->client_ip, rq->user, rq->device_id, cfg->devices.deny_file);
		verdict_set(v, REASON_DEVICE_DENIED, "deny_file");
		return 1;
	}
	if (pol->allow != NULL && !policy_list_has(pol->allow, rq->device_id)) {
		if (rq->device_id[0] == '\0')
			log_info("policy", "%s %s: %s names no DeviceId and [devices] allow_file "
			    "is set", rq->client_ip, rq->user, rq->cmd);
		else
			log_info("policy", "%s %s: DeviceId %s is not in [devices] allow_file %s",
			    rq->client_ip, rq->user, rq->device_id, cfg->devices.allow_file);
		verdict_set(v, REASON_DEVICE_DENIED, "allow_file");
		return 1;
	}
	return 0;
}

/* What the hook's verdict means for this request. */
static void
hook_verdict(const struct eas_kcd_proxy_request *rq, int verdict, struct policy_verdict *v)
{
	switch (verdict) {
	case EAS_KCD_PROXY_ALLOW:
		verdict_set(v, REASON_OK, "");
		return;
	case EAS_KCD_PROXY_QUARANTINE:
		if (rq->cmd[0] == '\0' || strcasecmp(rq->cmd, "Provision") == 0 ||
		    strcasecmp(rq->cmd, "Settings") == 0) {
			verdict_set(v, REASON_OK, "quarantine");
			return;
		}
		log_info("policy", "%s %s: DeviceId %s is quarantined by the authorize hook; "
		    "%s refused", rq->client_ip, rq->user, rq->device_id, rq->cmd);
		verdict_set(v, REASON_DEVICE_QUARANTINED, "hook");
		return;
	case EAS_KCD_PROXY_DENY:
		log_info("policy", "%s %s: DeviceId %s (%s) denied by the authorize hook",
		    rq->client_ip, rq->user, rq->device_id, rq->cmd[0] ? rq->cmd : rq->method);
		verdict_set(v, REASON_DEVICE_DENIED, "hook");
		return;
	default:
		log_error("policy", "%s %s: the authorize hook answered %d, which is no verdict; "
		    "denied", rq->client_ip, rq->user, verdict);
		verdict_set(v, REASON_DEVICE_DENIED, "hook_bad_verdict");
		return;
	}
}

/* Copy the request's strings into c->store and point c->rq at them. */
static void
request_copy(struct policy_call *c, const struct eas_kcd_proxy_request *rq)
{
	const char *const src[] = { rq->user, rq->device_id, rq->device_type, rq->cmd,
	    rq->method, rq->path, rq->client_ip, rq->user_agent };
	const char **dst[] = { &c->rq.user, &c->rq.device_id, &c->rq.device_type, &c->rq.cmd,
	    &c->rq.method, &c->rq.path, &c->rq.client_ip, &c->rq.user_agent };
	char *p = c->store;

	for (size_t i = 0; i < sizeof(src) / sizeof(src[0]); i++) {
		size_t n = strlen(src[i]) + 1;
		memcpy(p, src[i], n);
		*dst[i] = p;
		p += n;
	}
}

struct policy_call *
policy_authorize(struct policy *pol, const struct eas_kcd_proxy_request *rq,
    struct policy_verdict *out, policy_authorize_cb *cb, void *arg)
{
	struct policy_hooks *h = pol->hooks;
	struct policy_call *c;
	size_t len;

	assert(pol->magic == POLICY_MAGIC);
	verdict_set(out, REASON_OK, "");
	if (lists_refuse(pol, rq, out))
		return NULL;
	if (h == NULL || h->authorize == NULL)
		return NULL;
	len = strlen(rq->user) + strlen(rq->device_id) + strlen(rq->device_type) +
	    strlen(rq->cmd) + strlen(rq->method) + strlen(rq->path) + strlen(rq->client_ip) +
	    strlen(rq->user_agent) + 8;
	if ((c = call_new(pol, CALL_AUTHORIZE, len)) == NULL) {
		log_error("policy", "%s %s: cannot ask the authorize hook: out of memory",
		    rq->client_ip, rq->user);
		verdict_set(out, REASON_OUT_OF_MEMORY, "authorize");
		return NULL;
	}
	request_copy(c, rq);
	c->acb = cb;
	c->arg = arg;
	c->in_hook = 1;
	h->authorize((struct eas_kcd_proxy_call *)c, &c->rq, h->authorize_arg);
	c->in_hook = 0;
	if (!c->answered)
		return c;
	*out = c->verdict;
	call_free(c);
	return NULL;
}

int
eas_kcd_proxy_authorize_done(struct eas_kcd_proxy_call *call, enum eas_kcd_proxy_verdict verdict)
{
	struct policy_call *c = check_call(call, CALL_AUTHORIZE);

	if (c == NULL)
		return EAS_KCD_PROXY_E_INVALID;	/* not a pending authorize call */
	hook_verdict(&c->rq, (int)verdict, &c->verdict);
	call_answered(c);
	return (verdict == EAS_KCD_PROXY_ALLOW || verdict == EAS_KCD_PROXY_DENY ||
	    verdict == EAS_KCD_PROXY_QUARANTINE) ? EAS_KCD_PROXY_OK : EAS_KCD_PROXY_E_INVALID;
}

/* ---- log --------------------------------------------------------------------------- */

void
policy_log(struct policy *pol, const struct access_rec *a)
{
	struct eas_kcd_proxy_log_record r;

	assert(pol->magic == POLICY_MAGIC);
	if (pol->hooks == NULL || pol->hooks->log == NULL)
		return;
	memset(&r, 0, sizeof(r));
	r.start_ms = a->start_ms;
	r.server_ip = a->s_ip;
	r.server_port = a->s_port;
	r.client_ip = a->c_ip;
	r.method = a->method;
	r.uri_stem = a->uri_stem;
	r.uri_query = a->uri_query;
	r.username = a->username;
	r.user_agent = a->user_agent;
	r.status = a->status;
	r.bytes_sent = a->sc_bytes;
	r.bytes_received = a->cs_bytes;
	r.time_taken_ms = a->time_taken_ms;
	r.device_id = a->device_id;
	r.device_type = a->device_type;
	r.eas_cmd = a->eas_cmd;
	r.reason = a->reason;
	r.backend = a->backend;
	r.kdc_ms = a->kdc_ms;
	pol->hooks->log(&r, pol->hooks->log_arg);
}
