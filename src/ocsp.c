/*
 * ocsp.c — asynchronous OCSP checks of device certificates with a cache;
 * see ocsp.h for the contract.
 *
 * Objects and who owns them:
 *   struct ocsp        one per worker generation: the cache (hash of
 *                      entries), the fetches in flight, a reference to
 *                      client_ca's X509_STORE, an evdns_base when it made one.
 *   struct entry       one certificate id: its answer and expiry, or the
 *                      fetch that is getting it and the queries waiting.
 *                      Owned by the hash; a "floating" entry (cache full) is
 *                      owned by its fetch and freed when the fetch ends.
 *   struct fetch       one HTTP/1.0 POST: a bufferevent of our own (not
 *                      evhttp, whose request/connection ownership rules are
 *                      hard to get right on every error path) and a timer
 *                      for ocsp_timeout. Its callbacks are deferred
 *                      (BEV_OPT_DEFER_CALLBACKS) so that nothing completes
 *                      inside ocsp_check().
 *   struct ocsp_query  one caller waiting; owned by its entry until the
 *                      callback runs or ocsp_cancel().
 */
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/http.h>
#include <openssl/ocsp.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "ocsp.h"
#include "tls.h"

#define OCSP_MAGIC	0x4f435350u	/* "OCSP" */
#define ENTRY_MAGIC	0x4f435345u	/* "OCSE" */
#define QUERY_MAGIC	0x4f435351u	/* "OCSQ" */
#define FETCH_MAGIC	0x4f435346u	/* "OCSF" */
#define BUCKETS		8192u
#define DETAIL_MAX	320

enum answer { A_GOOD, A_REVOKED, A_UNKNOWN, A_FAILED };

struct fetch;

struct ocsp_query {
	unsigned magic;
	struct entry *e;
	ocsp_done_fn *fn;
	void *arg;
	TAILQ_ENTRY(ocsp_query) link;
};
TAILQ_HEAD(query_list, ocsp_query);

struct entry {
	unsigned magic;
	struct entry *hnext;
	uint32_t hash;
	int floating;			/* not in the hash (cache full) */
	int has_answer;
	enum answer answer;
	time_t expires;
	struct fetch *fetch;		/* while a request runs */
	struct query_list waiters;
	char detail[DETAIL_MAX];
	size_t keylen;
	unsigned char key[];		/* DER CertID */
};

struct fetch {
	unsigned magic;
	struct ocsp *o;
	struct entry *e;
	struct bufferevent *bev;	/* owned, closes the socket */
	struct event *timer;		/* owned */
	OCSP_REQUEST *req;		/* what we sent (nonce) */
	OCSP_CERTID *id;		/* what the answer must cover */
	X509 *issuer;			/* reference, for the signature check */
	char url[256];
	char serial[72];
	LIST_ENTRY(fetch) link;
};
LIST_HEAD(fetch_list, fetch);

struct ocsp {
	unsigned magic;
	struct event_base *base;
	struct evdns_base *dns;		/* borrowed, or own_dns */
	struct evdns_base *own_dns;
	const struct config *cfg;
	X509_STORE *store;		/* reference */
	struct fetch_list fetches;
	unsigned n_entries;
	struct ocsp_stats st;
	struct entry *bucket[BUCKETS];
};

static void fetch_free(struct fetch *f);

/* ---- helpers ------------------------------------------------------------ */

static uint32_t
fnv1a(const unsigned char *p, size_t n)
{
	uint32_t h = 2166136261u;

	while (n--) {
		h ^= *p++;
		h *= 16777619u;
	}
	return h;
}

/* An OCSP time for a detail; "?" when absent or unreadable. */
static void
time_str(const ASN1_GENERALIZEDTIME *t, char *buf, size_t len)
{
	tls_time_text(t, buf, len);
	if (buf[0] == '\0')
		snprintf(buf, len, "?");
}

/* What the caller sees for an answer under the configured mode. */
static void
deliver(const struct ocsp *o, enum answer a, const char *detail, ocsp_done_fn *fn, void *arg)
{
	char buf[DETAIL_MAX + 48];

	switch (a) {
	case A_GOOD:
		fn(REASON_OK, detail, arg);
		break;
	case A_REVOKED:
		fn(REASON_CERT_REVOKED, detail, arg);
		break;
	case A_UNKNOWN:
	case A_FAILED:
		if (o->cfg->tls.ocsp == OCSP_REQUIRED) {
			fn(REASON_CERT_OCSP, detail, arg);
		} else {
			snprintf(buf, sizeof(buf), "%s; allowed (ocsp = on)", detail);
			fn(REASON_OK, buf, arg);
		}
		break;
	}
}

/* ---- cache -------------------------------------------------------------- */

static struct entry *
lookup(struct ocsp *o, const unsigned char *key, size_t keylen, uint32_t h)
{
	struct entry *e;

	for (e = o->bucket[h % BUCKETS]; e != NULL; e = e->hnext)
		if (e->hash == h && e->keylen == keylen && memcmp(e->key, key, keylen) == 0)
			return e;
	return NULL;
}

static void
entry_free(struct entry *e)
{
	struct ocsp_query *q;

	assert(e->magic == ENTRY_MAGIC);
	while ((q = TAILQ_FIRST(&e->waiters)) != NULL) {
		TAILQ_REMOVE(&e->waiters, q, link);
		q->magic = 0;
		free(q);
	}
	e->magic = 0;
	free(e);
}

/* Drop answers past their expiry that nobody is fetching. */
static void
purge_expired(struct ocsp *o, time_t now)
{
	unsigned i;

	for (i = 0; i < BUCKETS; i++) {
		struct entry **pp = &o->bucket[i];

		while (*pp != NULL) {
			struct entry *e = *pp;

			if (e->fetch == NULL && TAILQ_EMPTY(&e->waiters) && e->expires <= now) {
				*pp = e->hnext;
				entry_free(e);
				o->n_entries--;
			} else {
				pp = &e->hnext;
			}
		}
	}
}

static struct entry *
entry_new(struct ocsp *o, const unsigned char *key, size_t keylen, uint32_t h, time_t now)
{
	struct entry *e = calloc(1, sizeof(*e) + keylen);

	if (e == NULL)
		return NULL;
	e->magic = ENTRY_MAGIC;
	e->hash = h;
	e->keylen = keylen;
	memcpy(e->key, key, keylen);
	TAILQ_INIT(&e->waiters);
	if (o->n_entries >= OCSP_CACHE_MAX)
		purge_expired(o, now);
	if (o->n_entries >= OCSP_CACHE_MAX) {
		e->floating = 1;
	} else {
		e->hnext = o->bucket[h % BUCKETS];
		o->bucket[h % BUCKETS] = e;
		o->n_entries++;
	}
	return e;
}

/* The fetch of e ended (or could not start): remember the answer and
 * call every waiter. Callbacks may start new checks or cancel others; e
 * stays valid (it has a fresh answer and is not purged) unless floating. */
static void
complete(struct ocsp *o, struct entry *e, enum answer a, const char *detail, time_t ttl)
{
	struct ocsp_query *q;
	char copy[DETAIL_MAX];

	e->fetch = NULL;
	e->has_answer = 1;
	e->answer = a;
	e->expires = time(NULL) + ttl;
	snprintf(e->detail, sizeof(e->detail), "%s", detail);
	snprintf(copy, sizeof(copy), "%s", detail);
	while ((q = TAILQ_FIRST(&e->waiters)) != NULL) {
		ocsp_done_fn *fn = q->fn;
		void *arg = q->arg;

		TAILQ_REMOVE(&e->waiters, q, link);
		q->magic = 0;
		free(q);
		deliver(o, a, copy, fn, arg);
	}
	if (e->floating)
		entry_free(e);
}

/* ---- one HTTP exchange --------------------------------------------------- */

/* End f with an answer. ttl 0 = OCSP_FAIL_TTL. Frees f. */
static void
fetch_end(struct fetch *f, enum answer a, const char *detail, time_t ttl)
{
	struct ocsp *o = f->o;
	struct entry *e = f->e;
	char msg[DETAIL_MAX];

	switch (a) {
	case A_GOOD:
		o->st.good++;
		log_debug("ocsp", "serial %s: %s", f->serial, detail);
		break;
	case A_REVOKED:
		o->st.revoked++;
		log_info("ocsp", "serial %s: %s", f->serial, detail);
		break;
	case A_UNKNOWN:
		o->st.unknown++;
		log_warn("ocsp", "serial %s: %s", f->serial, detail);
		break;
	case A_FAILED:
		o->st.failures++;
		ttl = OCSP_FAIL_TTL;
		snprintf(msg, sizeof(msg), "%s: %s", f->url, detail);
		detail = msg;
		log_warn("ocsp", "serial %s: %s", f->serial, detail);
		break;
	}
	f->e = NULL;
	fetch_free(f);
	complete(o, e, a, detail, ttl);
}

/* A parsed, verified answer for f->id. */
static void
process_response(struct fetch *f, const unsigned char *body, size_t len)
{
	struct ocsp *o = f->o;
	OCSP_RESPONSE *resp = NULL;
	OCSP_BASICRESP *bs = NULL;
	STACK_OF(X509) *untrusted = NULL;
	ASN1_GENERALIZEDTIME *rev = NULL, *thisupd = NULL, *nextupd = NULL;
	const unsigned char *p = body;
	int st, status = -1, reason = -1, days = 0, secs = 0;
	char ebuf[256], detail[DETAIL_MAX], t1[48], t2[48];
	time_t ttl = OCSP_DEFAULT_TTL;

	ERR_clear_error();
	if (len > (size_t)LONG_MAX || (resp = d2i_OCSP_RESPONSE(NULL, &p, (long)len)) == NULL) {
		snprintf(detail, sizeof(detail), "the answer is not an OCSP response: %s",
		    log_ssl_errors(ebuf, sizeof(ebuf)));
		goto failed;
	}
	if ((st = OCSP_response_status(resp)) != OCSP_RESPONSE_STATUS_SUCCESSFUL) {
		snprintf(detail, sizeof(detail), "responder status %s",
		    OCSP_response_status_str(st));
		goto failed;
	}
	if ((bs = OCSP_response_get1_basic(resp)) == NULL) {
		snprintf(detail, sizeof(detail), "no basic OCSP response: %s",
		    log_ssl_errors(ebuf, sizeof(ebuf)));
		goto failed;
	}
	if (OCSP_check_nonce(f->req, bs) == 0) {
		snprintf(detail, sizeof(detail), "the answer carries another nonce (replayed?)");
		goto failed;
	}
	if ((untrusted = sk_X509_new_null()) == NULL || !sk_X509_push(untrusted, f->issuer)) {
		snprintf(detail, sizeof(detail), "out of memory");
		goto failed;
	}
	if (OCSP_basic_verify(bs, untrusted, o->store, 0) <= 0) {
		snprintf(detail, sizeof(detail), "the answer's signature does not verify against "
		    "client_ca: %s", log_ssl_errors(ebuf, sizeof(ebuf)));
		goto failed;
	}
	if (OCSP_resp_find_status(bs, f->id, &status, &reason, &rev, &thisupd, &nextupd) != 1) {
		snprintf(detail, sizeof(detail), "the answer does not cover the certificate");
		goto failed;
	}
	if (OCSP_check_validity(thisupd, nextupd, OCSP_SKEW_SECS, -1) != 1) {
		time_str(thisupd, t1, sizeof(t1));
		time_str(nextupd, t2, sizeof(t2));
		ERR_clear_error();
		snprintf(detail, sizeof(detail), "the answer is not current (thisUpdate %s, "
		    "nextUpdate %s)", t1, nextupd ? t2 : "none");
		goto failed;
	}
	if (nextupd != NULL && ASN1_TIME_diff(&days, &secs, NULL, nextupd) == 1) {
		long long s = (long long)days * 86400 + secs;

		ttl = s < 1 ? 1 : s > OCSP_MAX_TTL ? OCSP_MAX_TTL : (time_t)s;
	}
	switch (status) {
	case V_OCSP_CERTSTATUS_GOOD:
		time_str(thisupd, t1, sizeof(t1));
		snprintf(detail, sizeof(detail), "good (thisUpdate %s)", t1);
		fetch_end(f, A_GOOD, detail, ttl);
		break;
	case V_OCSP_CERTSTATUS_REVOKED:
		time_str(rev, t1, sizeof(t1));
		snprintf(detail, sizeof(detail), "revoked at %s (%s)", t1,
		    reason >= 0 ? OCSP_crl_reason_str(reason) : "no reason given");
		fetch_end(f, A_REVOKED, detail, ttl);
		break;
	default:
		snprintf(detail, sizeof(detail), "%s: the responder does not know the certificate",
		    f->url);
		fetch_end(f, A_UNKNOWN, detail, ttl);
		break;
	}
	goto cleanup;
failed:
	fetch_end(f, A_FAILED, detail, 0);
cleanup:
	sk_X509_free(untrusted);	/* the issuer reference stays f's (freed) */
	OCSP_BASICRESP_free(bs);
	OCSP_RESPONSE_free(resp);
	ERR_clear_error();
}

/* Parse what arrived: "HTTP/1.x 200 ...", headers, a body delimited by
 * Content-Length or by the end of the connection. Nothing of it is
 * trusted. Returns without action while more is needed. */
static void
try_parse(struct fetch *f, int eof)
{
	struct evbuffer *in = bufferevent_get_input(f->bev);
	size_t len = evbuffer_get_length(in), hlen, blen, cl = 0;
	unsigned char *data = evbuffer_pullup(in, -1);
	const unsigned char *end, *line, *body;
	int have_cl = 0, code;
	char detail[DETAIL_MAX];

	if (data == NULL || (end = memmem(data, len, "\r\n\r\n", 4)) == NULL) {
		if (eof)
			fetch_end(f, A_FAILED, "the responder closed before a complete HTTP header", 0);
		return;
	}
	hlen = (size_t)(end - data) + 4;
	if (hlen < 12 || memcmp(data, "HTTP/1.", 7) != 0 || !isdigit(data[7]) || data[8] != ' ' ||
	    !isdigit(data[9]) || !isdigit(data[10]) || !isdigit(data[11])) {
		fetch_end(f, A_FAILED, "the answer is not HTTP/1.x", 0);
		return;
	}
	code = (data[9] - '0') * 100 + (data[10] - '0') * 10 + (data[11] - '0');
	if (code != 200) {
		snprintf(detail, sizeof(detail), "HTTP status %d", code);
		fetch_end(f, A_FAILED, detail, 0);
		return;
	}
	for (line = (const unsigned char *)memchr(data, '\n', hlen) + 1; line < end; ) {
		const unsigned char *eol = memchr(line, '\n', (size_t)(end + 2 - line));
		size_t n = eol ? (size_t)(eol - line) : 0;

		if (eol == NULL)
			break;
		if (n > 15 && strncasecmp((const char *)line, "Content-Length:", 15) == 0) {
			const unsigned char *p = line + 15;
			size_t v = 0;
			int digits = 0;

			while (*p == ' ' || *p == '\t')
				p++;
			while (isdigit(*p) && v <= OCSP_RESPONSE_MAX) {
				v = v * 10 + (size_t)(*p++ - '0');
				digits++;
			}
			while (*p == ' ' || *p == '\t')
				p++;
			if (!digits || *p != '\r' || v > OCSP_RESPONSE_MAX || (have_cl && v != cl)) {
				fetch_end(f, A_FAILED, "bad Content-Length in the answer", 0);
				return;
			}
			cl = v;
			have_cl = 1;
		}
		line = eol + 1;
	}
	body = data + hlen;
	blen = len - hlen;
	if (have_cl) {
		if (blen < cl) {
			if (eof)
				fetch_end(f, A_FAILED, "the answer is shorter than its Content-Length", 0);
			return;
		}
		blen = cl;
	} else if (!eof) {
		return;
	}
	process_response(f, body, blen);
}

static void
on_read(struct bufferevent *bev, void *arg)
{
	struct fetch *f = arg;

	assert(f->magic == FETCH_MAGIC && f->bev == bev);
	if (evbuffer_get_length(bufferevent_get_input(bev)) > OCSP_RESPONSE_MAX) {
		fetch_end(f, A_FAILED, "the answer is larger than " "256 KiB", 0);
		return;
	}
	try_parse(f, 0);
}

static void
on_event(struct bufferevent *bev, short what, void *arg)
{
	struct fetch *f = arg;
	char detail[DETAIL_MAX];

	assert(f->magic == FETCH_MAGIC && f->bev == bev);
	if (what & BEV_EVENT_CONNECTED)
		return;
	if (what & BEV_EVENT_EOF) {
		try_parse(f, 1);
		return;
	}
	if (what & BEV_EVENT_ERROR) {
		int dnserr = bufferevent_socket_get_dns_error(bev);
		int err = EVUTIL_SOCKET_ERROR();

		if (dnserr != 0)
			snprintf(detail, sizeof(detail), "resolve: %s", evutil_gai_strerror(dnserr));
		else
			snprintf(detail, sizeof(detail), "connect/read: %s",
			    err ? evutil_socket_error_to_string(err) : "connection failed");
		fetch_end(f, A_FAILED, detail, 0);
	}
}

static void
on_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct fetch *f = arg;
	char detail[DETAIL_MAX];

	(void)fd;
	(void)what;
	assert(f->magic == FETCH_MAGIC);
	snprintf(detail, sizeof(detail), "no answer within %llu ms (ocsp_timeout)",
	    (unsigned long long)f->o->cfg->tls.ocsp_timeout);
	fetch_end(f, A_FAILED, detail, 0);
}

/* Frees the fetch alone; its entry is the caller's business. */
static void
fetch_free(struct fetch *f)
{
	if (f == NULL)
		return;
	assert(f->magic == FETCH_MAGIC);
	LIST_REMOVE(f, link);
	f->o->st.in_flight--;
	if (f->bev != NULL)
		bufferevent_free(f->bev);	/* no callback runs after this */
	if (f->timer != NULL)
		event_free(f->timer);
	OCSP_REQUEST_free(f->req);
	OCSP_CERTID_free(f->id);
	X509_free(f->issuer);
	f->magic = 0;
	free(f);
}

/* The responder URL for cert: configured, else the certificate's AIA OCSP
 * URL (an http:// one when there are several). */
static int
responder_url(const struct ocsp *o, X509 *cert, char *out, size_t len)
{
	STACK_OF(OPENSSL_STRING) *aia;
	int i;

	out[0] = '\0';
	if (o->cfg->tls.ocsp_responder != NULL && *o->cfg->tls.ocsp_responder) {
		snprintf(out, len, "%s", o->cfg->tls.ocsp_responder);
		return 0;
	}
	if ((aia = X509_get1_ocsp(cert)) == NULL)
		return -1;
	for (i = 0; i < sk_OPENSSL_STRING_num(aia); i++) {
		const char *u = sk_OPENSSL_STRING_value(aia, i);
		int http = strncasecmp(u, "http://", 7) == 0;

		if (strlen(u) < len && (out[0] == '\0' || http)) {
			snprintf(out, len, "%s", u);
			if (http)
				break;
		}
	}
	X509_email_free(aia);	/* how a STACK_OF(OPENSSL_STRING) is freed */
	return out[0] ? 0 : -1;
}

/* Start a request for e. Returns 0 (the answer comes through fetch_end),
 * or -1 with why filled in: nothing was started. */
static int
fetch_start(struct ocsp *o, struct entry *e, X509 *cert, X509 *issuer, OCSP_CERTID *id,
    char *why, size_t whylen)
{
	struct fetch *f = NULL;
	char *host = NULL, *port = NULL, *path = NULL, *query = NULL;
	unsigned char *der = NULL;
	int use_ssl = 0, portnum = 0, derlen, ret = -1;
	struct evbuffer *out;
	struct timeval tv;
	struct evdns_base *dns = NULL;
	unsigned char addr[16];
	char ebuf[256];

	if ((f = calloc(1, sizeof(*f))) == NULL) {
		snprintf(why, whylen, "out of memory");
		goto cleanup;
	}
	f->magic = FETCH_MAGIC;
	f->o = o;
	tls_serial_text(cert, f->serial, sizeof(f->serial));
	LIST_INSERT_HEAD(&o->fetches, f, link);
	o->st.in_flight++;
	if (responder_url(o, cert, f->url, sizeof(f->url)) != 0) {
		snprintf(why, whylen, "no OCSP responder: the certificate has no AIA OCSP URL "
		    "and [tls] ocsp_responder is empty");
		goto cleanup;
	}
	if (OSSL_HTTP_parse_url(f->url, &use_ssl, NULL, &host, &port, &portnum, &path, &query,
	    NULL) != 1) {
		snprintf(why, whylen, "%s: not a usable URL: %s", f->url,
		    log_ssl_errors(ebuf, sizeof(ebuf)));
		goto cleanup;
	}
	if (use_ssl) {
		snprintf(why, whylen, "%s: https OCSP responders are not supported", f->url);
		goto cleanup;
	}
	if (!X509_up_ref(issuer) || (f->id = OCSP_CERTID_dup(id)) == NULL ||
	    (f->req = OCSP_REQUEST_new()) == NULL) {
		snprintf(why, whylen, "out of memory");
		goto cleanup;
	}
	f->issuer = issuer;
	{
		OCSP_CERTID *id2 = OCSP_CERTID_dup(id);

		if (id2 == NULL || OCSP_request_add0_id(f->req, id2) == NULL) {
			OCSP_CERTID_free(id2);
			snprintf(why, whylen, "out of memory");
			goto cleanup;
		}
	}
	if (!OCSP_request_add1_nonce(f->req, NULL, -1) ||
	    (derlen = i2d_OCSP_REQUEST(f->req, &der)) <= 0) {
		snprintf(why, whylen, "cannot build the request: %s",
		    log_ssl_errors(ebuf, sizeof(ebuf)));
		goto cleanup;
	}

	/* a host name needs asynchronous DNS: libevent would resolve it with
	 * a blocking getaddrinfo() without an evdns_base */
	if (evutil_inet_pton(AF_INET, host, addr) != 1 && evutil_inet_pton(AF_INET6, host, addr) != 1) {
		if (o->dns == NULL) {
			o->own_dns = evdns_base_new(o->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
			o->dns = o->own_dns;
		}
		if (o->dns == NULL) {
			snprintf(why, whylen, "%s: no DNS resolver (check /etc/resolv.conf)", f->url);
			goto cleanup;
		}
		dns = o->dns;
	}
	f->bev = bufferevent_socket_new(o->base, -1, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	f->timer = evtimer_new(o->base, on_timeout, f);
	if (f->bev == NULL || f->timer == NULL) {
		snprintf(why, whylen, "out of memory");
		goto cleanup;
	}
	out = bufferevent_get_output(f->bev);
	if (evbuffer_add_printf(out, "POST %s%s%s HTTP/1.0\r\n"
	    "Host: %s%s%s\r\n"
	    "Content-Type: application/ocsp-request\r\n"
	    "Accept: application/ocsp-response\r\n"
	    "Content-Length: %d\r\n"
	    "\r\n", path && *path ? path : "/", query && *query ? "?" : "", query ? query : "",
	    host, portnum != 80 ? ":" : "", portnum != 80 ? port : "", derlen) < 0 ||
	    evbuffer_add(out, der, (size_t)derlen) != 0) {
		snprintf(why, whylen, "out of memory");
		goto cleanup;
	}
	bufferevent_setcb(f->bev, on_read, NULL, on_event, f);
	bufferevent_enable(f->bev, EV_READ | EV_WRITE);
	tv.tv_sec = (time_t)(o->cfg->tls.ocsp_timeout / 1000);
	tv.tv_usec = (suseconds_t)(o->cfg->tls.ocsp_timeout % 1000) * 1000;
	evtimer_add(f->timer, &tv);
	if (bufferevent_socket_connect_hostname(f->bev, dns, AF_UNSPEC, host, portnum) != 0) {
		int dnserr = bufferevent_socket_get_dns_error(f->bev);

		snprintf(why, whylen, "%s: connect: %s", f->url, dnserr ?
		    evutil_gai_strerror(dnserr) : evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
		goto cleanup;
	}
	f->e = e;
	e->fetch = f;
	o->st.requests++;
	f = NULL;
	ret = 0;
cleanup:
	if (f != NULL && why[0] != '\0')
		log_warn("ocsp", "serial %s: %s", f->serial, why);
	fetch_free(f);
	OPENSSL_free(host);
	OPENSSL_free(port);
	OPENSSL_free(path);
	OPENSSL_free(query);
	OPENSSL_free(der);
	ERR_clear_error();
	return ret;
}

/* ---- public ------------------------------------------------------------- */

struct ocsp *
ocsp_new(struct event_base *base, struct evdns_base *dns, const struct config *cfg,
    SSL_CTX *front_ctx, char *err, size_t errlen)
{
	struct ocsp *o;
	X509_STORE *store = front_ctx ? SSL_CTX_get_cert_store(front_ctx) : NULL;

	if (base == NULL || cfg == NULL || store == NULL) {
		snprintf(err, errlen, "ocsp: needs an event base, a config and the device TLS context");
		return NULL;
	}
	if ((o = calloc(1, sizeof(*o))) == NULL) {
		snprintf(err, errlen, "ocsp: out of memory");
		return NULL;
	}
	if (!X509_STORE_up_ref(store)) {
		free(o);
		snprintf(err, errlen, "ocsp: cannot reference the client_ca store");
		return NULL;
	}
	o->magic = OCSP_MAGIC;
	o->base = base;
	o->dns = dns;
	o->cfg = cfg;
	o->store = store;
	LIST_INIT(&o->fetches);
	return o;
}

void
ocsp_free(struct ocsp *o)
{
	struct fetch *f;
	unsigned i;

	if (o == NULL)
		return;
	assert(o->magic == OCSP_MAGIC);
	while ((f = LIST_FIRST(&o->fetches)) != NULL) {
		struct entry *e = f->e;

		fetch_free(f);
		if (e != NULL && e->floating)
			entry_free(e);
	}
	for (i = 0; i < BUCKETS; i++) {
		while (o->bucket[i] != NULL) {
			struct entry *e = o->bucket[i];

			o->bucket[i] = e->hnext;
			entry_free(e);
		}
	}
	if (o->own_dns != NULL)
		evdns_base_free(o->own_dns, 0);
	X509_STORE_free(o->store);
	o->magic = 0;
	free(o);
}

struct ocsp_query *
ocsp_check(struct ocsp *o, X509 *cert, X509 *issuer, ocsp_done_fn *fn, void *arg)
{
	OCSP_CERTID *id = NULL;
	unsigned char *key = NULL;
	struct entry *e;
	struct ocsp_query *q = NULL, *ret = NULL;
	char why[DETAIL_MAX] = "";
	time_t now = time(NULL);
	uint32_t h;
	int keylen;

	assert(o != NULL && o->magic == OCSP_MAGIC && fn != NULL);
	if (o->cfg->tls.ocsp == OCSP_OFF) {
		fn(REASON_OK, "ocsp = off", arg);
		return NULL;
	}
	o->st.checks++;
	if (cert == NULL || issuer == NULL) {
		deliver(o, A_FAILED, cert ? "the certificate's issuer is not in client_ca" :
		    "no peer certificate", fn, arg);
		return NULL;
	}
	if ((id = OCSP_cert_to_id(EVP_sha1(), cert, issuer)) == NULL ||
	    (keylen = i2d_OCSP_CERTID(id, &key)) <= 0) {
		deliver(o, A_FAILED, "cannot build the OCSP certificate id", fn, arg);
		goto cleanup;
	}
	h = fnv1a(key, (size_t)keylen);
	e = lookup(o, key, (size_t)keylen, h);
	if (e != NULL && e->fetch == NULL && e->has_answer && e->expires > now) {
		o->st.cache_hits++;
		deliver(o, e->answer, e->detail, fn, arg);
		goto cleanup;
	}
	if (e == NULL && (e = entry_new(o, key, (size_t)keylen, h, now)) == NULL) {
		deliver(o, A_FAILED, "out of memory", fn, arg);
		goto cleanup;
	}
	if (e->fetch == NULL && fetch_start(o, e, cert, issuer, id, why, sizeof(why)) != 0) {
		/* nothing in flight: no other waiter on e */
		o->st.failures++;
		complete(o, e, A_FAILED, why, OCSP_FAIL_TTL);
		deliver(o, A_FAILED, why, fn, arg);
		goto cleanup;
	}
	if ((q = calloc(1, sizeof(*q))) == NULL) {
		/* the fetch goes on and fills the cache */
		deliver(o, A_FAILED, "out of memory", fn, arg);
		goto cleanup;
	}
	q->magic = QUERY_MAGIC;
	q->e = e;
	q->fn = fn;
	q->arg = arg;
	TAILQ_INSERT_TAIL(&e->waiters, q, link);
	ret = q;
cleanup:
	OPENSSL_free(key);
	OCSP_CERTID_free(id);
	ERR_clear_error();
	return ret;
}

struct ocsp_query *
ocsp_check_ssl(struct ocsp *o, SSL *ssl, ocsp_done_fn *fn, void *arg)
{
	X509 *issuer = tls_peer_issuer(ssl);
	struct ocsp_query *q = ocsp_check(o, tls_peer_cert(ssl), issuer, fn, arg);

	X509_free(issuer);
	return q;
}

void
ocsp_cancel(struct ocsp_query *q)
{
	if (q == NULL)
		return;
	assert(q->magic == QUERY_MAGIC && q->e->magic == ENTRY_MAGIC);
	TAILQ_REMOVE(&q->e->waiters, q, link);
	q->magic = 0;
	free(q);
}

void
ocsp_stats(const struct ocsp *o, struct ocsp_stats *st)
{
	assert(o->magic == OCSP_MAGIC);
	*st = o->st;
	st->cached = o->n_entries;
}
