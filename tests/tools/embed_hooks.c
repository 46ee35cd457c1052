/*
 * embed_hooks.c — an embedding program for tests/integration/test_embed.py:
 * the library (include/eas_kcd_proxy.h) with an identity hook that answers
 * as told, inside the hook or later, so the identity path of a connection
 * (stream state IDENTITY) is driven end to end.
 *
 *   embed_hooks -c CONF -i keep|refuse|replace=USER@REALM [-d DELAY_MS] [-t]
 *
 * SIGTERM/SIGINT stop the proxy gracefully; the program exits when it has
 * stopped. Each identity call is reported on stderr ("identity: principal
 * P detail D -> VERDICT") for the test to check what the hook saw. SIGUSR1
 * prints every field of eas_kcd_proxy_metrics_get's struct on one line
 * ("metrics: requests=N ... kcd_tgt_end=N"), for the test to compare with
 * /metrics.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "eas_kcd_proxy.h"

struct later {
	struct eas_kcd_proxy_call *call;
	struct event *ev;
	struct later *next;
};

static struct {
	struct event_base *base;
	struct eas_kcd_proxy *p;
	enum eas_kcd_proxy_identity_verdict verdict;
	const char *principal;
	long delay_ms;
	struct later *pending;
} T;

static const char *
verdict_name(enum eas_kcd_proxy_identity_verdict v)
{
	return v == EAS_KCD_PROXY_IDENTITY_KEEP ? "keep" :
	    v == EAS_KCD_PROXY_IDENTITY_REFUSE ? "refuse" : "replace";
}

static void
answer(struct eas_kcd_proxy_call *call)
{
	int rc = eas_kcd_proxy_identity_done(call, T.verdict, T.principal);

	if (rc != EAS_KCD_PROXY_OK)
		fprintf(stderr, "embed_hooks: identity answer refused: %s\n",
		    eas_kcd_proxy_strerror(rc));
}

static void
on_later(evutil_socket_t fd, short what, void *arg)
{
	struct later *l = arg, **pp;

	(void)fd;
	(void)what;
	for (pp = &T.pending; *pp != l; pp = &(*pp)->next)
		;
	*pp = l->next;
	answer(l->call);
	event_free(l->ev);
	free(l);
}

static void
identity(struct eas_kcd_proxy_call *call, const struct eas_kcd_proxy_identity *id, void *arg)
{
	struct later *l;
	struct timeval tv;

	(void)arg;
	fprintf(stderr, "identity: principal %s detail %s der %zu bytes -> %s\n",
	    id->principal != NULL ? id->principal : "-", id->detail != NULL ? id->detail : "-",
	    id->cert_der_len, verdict_name(T.verdict));
	if (T.delay_ms <= 0) {
		answer(call);
		return;
	}
	if ((l = calloc(1, sizeof(*l))) == NULL ||
	    (l->ev = evtimer_new(T.base, on_later, l)) == NULL) {
		free(l);
		answer(call);
		return;
	}
	l->call = call;
	l->next = T.pending;
	T.pending = l;
	tv.tv_sec = T.delay_ms / 1000;
	tv.tv_usec = (T.delay_ms % 1000) * 1000;
	evtimer_add(l->ev, &tv);
}

static void
stopped(struct eas_kcd_proxy *p, void *arg)
{
	(void)p;
	(void)arg;
	event_base_loopexit(T.base, NULL);
}

static void
print_metrics(void)
{
	struct eas_kcd_proxy_metrics m;
	int rc = eas_kcd_proxy_metrics_get(T.p, &m, sizeof(m));

	if (rc != EAS_KCD_PROXY_OK) {
		fprintf(stderr, "embed_hooks: metrics: %s\n", eas_kcd_proxy_strerror(rc));
		return;
	}
	fprintf(stderr, "metrics: requests=%llu requests_ok=%llu requests_denied=%llu "
	    "tls_handshakes=%llu tls_failures=%llu connections_accepted=%llu "
	    "connections_open=%lld requests_parked=%lld kdc_requests=%llu kdc_errors=%llu "
	    "kcd_cache_hits=%llu kcd_cache_misses=%llu kcd_cache_negative_hits=%llu "
	    "kcd_tokens_fast=%llu kcd_tokens_gss=%llu kcd_fast_fallbacks=%llu "
	    "kcd_tgt_acquisitions_ok=%llu kcd_tgt_acquisitions_errors=%llu "
	    "kcd_tgt_valid=%lld kcd_tgt_end=%lld tokens_ahead_ready=%llu "
	    "tokens_ahead_waited=%llu tokens_ahead_unused=%llu\n",
	    (unsigned long long)m.requests, (unsigned long long)m.requests_ok,
	    (unsigned long long)m.requests_denied, (unsigned long long)m.tls_handshakes,
	    (unsigned long long)m.tls_failures, (unsigned long long)m.connections_accepted,
	    (long long)m.connections_open, (long long)m.requests_parked,
	    (unsigned long long)m.kdc_requests, (unsigned long long)m.kdc_errors,
	    (unsigned long long)m.kcd_cache_hits, (unsigned long long)m.kcd_cache_misses,
	    (unsigned long long)m.kcd_cache_negative_hits, (unsigned long long)m.kcd_tokens_fast,
	    (unsigned long long)m.kcd_tokens_gss, (unsigned long long)m.kcd_fast_fallbacks,
	    (unsigned long long)m.kcd_tgt_acquisitions_ok,
	    (unsigned long long)m.kcd_tgt_acquisitions_errors, (long long)m.kcd_tgt_valid,
	    (long long)m.kcd_tgt_end, (unsigned long long)m.tokens_ahead_ready,
	    (unsigned long long)m.tokens_ahead_waited, (unsigned long long)m.tokens_ahead_unused);
}

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	(void)arg;
	if (sig == SIGUSR1) {
		print_metrics();
		return;
	}
	if (eas_kcd_proxy_stop(T.p, stopped, NULL) != EAS_KCD_PROXY_OK)
		event_base_loopexit(T.base, NULL);
}

int
main(int argc, char **argv)
{
	const char *conf = NULL, *mode = NULL;
	struct event *term = NULL, *intr = NULL, *usr1 = NULL;
	char err[4096];
	int opt, thread = 0, rc = 1;

	while ((opt = getopt(argc, argv, "c:i:d:t")) != -1) {
		switch (opt) {
		case 'c': conf = optarg; break;
		case 'i': mode = optarg; break;
		case 'd': T.delay_ms = strtol(optarg, NULL, 10); break;
		case 't': thread = 1; break;
		default: goto usage;
		}
	}
	if (conf == NULL || mode == NULL || optind != argc)
		goto usage;
	if (strcmp(mode, "keep") == 0)
		T.verdict = EAS_KCD_PROXY_IDENTITY_KEEP;
	else if (strcmp(mode, "refuse") == 0)
		T.verdict = EAS_KCD_PROXY_IDENTITY_REFUSE;
	else if (strncmp(mode, "replace=", 8) == 0) {
		T.verdict = EAS_KCD_PROXY_IDENTITY_REPLACE;
		T.principal = mode + 8;
	} else
		goto usage;
	if ((T.base = event_base_new()) == NULL ||
	    (term = evsignal_new(T.base, SIGTERM, on_signal, NULL)) == NULL ||
	    (intr = evsignal_new(T.base, SIGINT, on_signal, NULL)) == NULL ||
	    (usr1 = evsignal_new(T.base, SIGUSR1, on_signal, NULL)) == NULL ||
	    evsignal_add(term, NULL) != 0 || evsignal_add(intr, NULL) != 0 ||
	    evsignal_add(usr1, NULL) != 0)
		goto cleanup;
	if (eas_kcd_proxy_new_from_file(conf, &T.p, err, sizeof(err)) != EAS_KCD_PROXY_OK) {
		fprintf(stderr, "embed_hooks: %s\n", err);
		goto cleanup;
	}
	eas_kcd_proxy_set_identity_hook(T.p, identity, NULL);
	if (thread)
		eas_kcd_proxy_set_kcd_mode(T.p, EAS_KCD_PROXY_KCD_THREAD);
	if (eas_kcd_proxy_start(T.p, T.base) != EAS_KCD_PROXY_OK) {
		fprintf(stderr, "embed_hooks: %s\n", eas_kcd_proxy_errmsg(T.p));
		goto cleanup;
	}
	fprintf(stderr, "embed_hooks: ready\n");
	event_base_dispatch(T.base);
	rc = 0;
cleanup:
	while (T.pending != NULL) {
		struct later *l = T.pending;
		T.pending = l->next;
		event_free(l->ev);
		free(l);
	}
	eas_kcd_proxy_destroy(T.p);
	if (term != NULL)
		event_free(term);
	if (intr != NULL)
		event_free(intr);
	if (usr1 != NULL)
		event_free(usr1);
	if (T.base != NULL)
		event_base_free(T.base);
	return rc;
usage:
	fprintf(stderr, "usage: embed_hooks -c CONF -i keep|refuse|replace=USER@REALM "
	    "[-d DELAY_MS] [-t]\n");
	return 2;
}
