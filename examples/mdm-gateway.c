/*
 * mdm-gateway.c — a tiny MDM gateway built on libeaskcdproxy
 * (include/eas_kcd_proxy.h, docs/embedding.md).
 *
 * It serves ActiveSync devices exactly as eas-kcd-proxy would (same
 * configuration file), and adds what an MDM vendor adds:
 *
 *   - a compliance check: only DeviceIds in an allow-list file (one per
 *     line, '#' comments) may sync; the answer may come later (--delay-ms),
 *     as it would from a device inventory asked over the network;
 *   - its own log sink: one line per request to a file (or stdout);
 *   - signals: SIGHUP reloads the allow list and the proxy's configuration,
 *     SIGTERM / SIGINT stop gracefully, SIGUSR1 prints the metrics.
 *
 * Build: `make examples` (in the source tree), or against an installed
 * library:
 *   cc -o mdm-gateway mdm-gateway.c $(pkg-config --cflags --libs eas-kcd-proxy)
 *
 * Run:
 *   mdm-gateway -c /etc/eas-kcd-proxy/eas-kcd-proxy.conf -a allowed-devices.txt \
 *       [-l mdm.log] [-d DELAY_MS] [-t]
 *   -t runs kcd as a thread instead of a helper process.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L		/* strdup, getopt: plain C11 has neither */
#endif

#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <event2/event.h>

#include <eas_kcd_proxy.h>

#define MAX_DEVICES	10000
#define DEVICE_MAX	64

struct gateway {
	struct event_base *base;
	struct eas_kcd_proxy *proxy;
	const char *allow_path;
	char **allowed;			/* lower-case DeviceIds */
	size_t n_allowed;
	FILE *log;
	long delay_ms;			/* answer the authorize hook this much later */
	unsigned long asked, allowed_n, denied_n;
	struct pending *pending;	/* answers not given yet */
};

/* One authorize call waiting for its (simulated) inventory answer. */
struct pending {
	struct gateway *gw;
	struct eas_kcd_proxy_call *call;
	enum eas_kcd_proxy_verdict verdict;
	struct event *ev;
	struct pending *next;
};

/* ---- the allow list --------------------------------------------------------- */

static void
allow_free(struct gateway *gw)
{
	for (size_t i = 0; i < gw->n_allowed; i++)
		free(gw->allowed[i]);
	free(gw->allowed);
	gw->allowed = NULL;
	gw->n_allowed = 0;
}

/* Read the allow list; on failure the old one stays. */
static int
allow_load(struct gateway *gw)
{
	FILE *fp = fopen(gw->allow_path, "r");
	char line[256], **v = NULL;
	size_t n = 0;

	if (fp == NULL) {
		fprintf(stderr, "mdm-gateway: %s: %s\n", gw->allow_path, strerror(errno));
		return -1;
	}
	if ((v = calloc(MAX_DEVICES, sizeof(*v))) == NULL) {
		fclose(fp);
		return -1;
	}
	while (fgets(line, sizeof(line), fp) != NULL && n < MAX_DEVICES) {
		char *s = line, *e;

		while (isspace((unsigned char)*s))
			s++;
		e = s + strlen(s);
		while (e > s && isspace((unsigned char)e[-1]))
			*--e = '\0';
		if (*s == '\0' || *s == '#' || strlen(s) > DEVICE_MAX)
			continue;
		for (char *p = s; *p; p++)
			*p = (char)tolower((unsigned char)*p);
		if ((v[n] = strdup(s)) == NULL)
			break;
		n++;
	}
	fclose(fp);
	allow_free(gw);
	gw->allowed = v;
	gw->n_allowed = n;
	fprintf(stderr, "mdm-gateway: %zu devices allowed (%s)\n", n, gw->allow_path);
	return 0;
}

static int
allowed(const struct gateway *gw, const char *device_id)
{
	for (size_t i = 0; i < gw->n_allowed; i++)
		if (strcasecmp(gw->allowed[i], device_id) == 0)
			return 1;
	return 0;
}

/* ---- hooks -------------------------------------------------------------------- */

static void
answer_later(evutil_socket_t fd, short what, void *arg)
{
	struct pending *pd = arg, **pp;

	(void)fd;
	(void)what;
	for (pp = &pd->gw->pending; *pp != pd; pp = &(*pp)->next)
		;
	*pp = pd->next;
	eas_kcd_proxy_authorize_done(pd->call, pd->verdict);
	event_free(pd->ev);
	free(pd);
}

/* The compliance check. Requests without a DeviceId (OPTIONS, Autodiscover)
 * pass: they carry nothing from the mailbox. */
static void
authorize(struct eas_kcd_proxy_call *call, const struct eas_kcd_proxy_request *req, void *arg)
{
	struct gateway *gw = arg;
	enum eas_kcd_proxy_verdict v;
	struct pending *pd;
	struct timeval tv;

	gw->asked++;
	v = (req->device_id[0] == '\0' || allowed(gw, req->device_id)) ?
	    EAS_KCD_PROXY_ALLOW : EAS_KCD_PROXY_DENY;
	if (v == EAS_KCD_PROXY_ALLOW)
		gw->allowed_n++;
	else
		gw->denied_n++;
	if (gw->delay_ms <= 0) {
		eas_kcd_proxy_authorize_done(call, v);
		return;
	}
	/* as if the inventory answered later: the device waits meanwhile */
	if ((pd = calloc(1, sizeof(*pd))) == NULL ||
	    (pd->ev = evtimer_new(gw->base, answer_later, pd)) == NULL) {
		free(pd);
		eas_kcd_proxy_authorize_done(call, EAS_KCD_PROXY_DENY);
		return;
	}
	pd->gw = gw;
	pd->call = call;
	pd->verdict = v;
	pd->next = gw->pending;
	gw->pending = pd;
	tv.tv_sec = gw->delay_ms / 1000;
	tv.tv_usec = (gw->delay_ms % 1000) * 1000;
	evtimer_add(pd->ev, &tv);
}

static const char *
dash(const char *s)
{
	return s != NULL && *s != '\0' ? s : "-";
}

static void
log_record(const struct eas_kcd_proxy_log_record *r, void *arg)
{
	struct gateway *gw = arg;

	fprintf(gw->log, "mdm user=%s device=%s type=%s cmd=%s status=%d reason=%s ms=%llu\n",
	    dash(r->username), dash(r->device_id), dash(r->device_type), dash(r->eas_cmd),
	    r->status, dash(r->reason), (unsigned long long)r->time_taken_ms);
	fflush(gw->log);
}

/* ---- signals ---------------------------------------------------------------------- */

static void
stopped(struct eas_kcd_proxy *p, void *arg)
{
	struct gateway *gw = arg;

	(void)p;
	event_base_loopexit(gw->base, NULL);
}

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct gateway *gw = arg;
	struct eas_kcd_proxy_metrics m;

	(void)what;
	switch (sig) {
	case SIGHUP:
		(void)allow_load(gw);
		if (eas_kcd_proxy_reload(gw->proxy) != EAS_KCD_PROXY_OK)
			fprintf(stderr, "mdm-gateway: reload: %s\n", eas_kcd_proxy_errmsg(gw->proxy));
		break;
	case SIGUSR1:
		if (eas_kcd_proxy_metrics_get(gw->proxy, &m, sizeof(m)) == EAS_KCD_PROXY_OK)
			fprintf(stderr, "mdm-gateway: generation %u, %llu requests, %llu ok, "
			    "%llu denied, %lld open; hook asked %lu, allowed %lu, denied %lu\n",
			    eas_kcd_proxy_generation(gw->proxy),
			    (unsigned long long)m.requests, (unsigned long long)m.requests_ok,
			    (unsigned long long)m.requests_denied, (long long)m.connections_open,
			    gw->asked, gw->allowed_n, gw->denied_n);
		break;
	default:
		if (eas_kcd_proxy_stop(gw->proxy, stopped, gw) != EAS_KCD_PROXY_OK)
			event_base_loopexit(gw->base, NULL);	/* a second signal: now */
		break;
	}
}

/* ---- main ---------------------------------------------------------------------------- */

static void
usage(void)
{
	fprintf(stderr, "usage: mdm-gateway -c CONFIG -a ALLOW_LIST [-l LOG] [-d DELAY_MS] [-t]\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	struct gateway gw = { .log = stdout };
	const char *conf = NULL, *logpath = NULL;
	const int sigs[] = { SIGHUP, SIGTERM, SIGINT, SIGUSR1 };
	struct event *sev[4] = { NULL };
	int opt, thread = 0, rc = 1;
	char err[4096];

	while ((opt = getopt(argc, argv, "c:a:l:d:t")) != -1) {
		switch (opt) {
		case 'c': conf = optarg; break;
		case 'a': gw.allow_path = optarg; break;
		case 'l': logpath = optarg; break;
		case 'd': gw.delay_ms = strtol(optarg, NULL, 10); break;
		case 't': thread = 1; break;
		default: usage();
		}
	}
	if (conf == NULL || gw.allow_path == NULL || optind != argc)
		usage();
	if (allow_load(&gw) != 0)
		return 1;
	if (logpath != NULL && (gw.log = fopen(logpath, "a")) == NULL) {
		fprintf(stderr, "mdm-gateway: %s: %s\n", logpath, strerror(errno));
		goto cleanup;
	}
	fprintf(stderr, "mdm-gateway: libeaskcdproxy %s (ABI %d)\n", eas_kcd_proxy_version(),
	    eas_kcd_proxy_abi_version());
	if ((gw.base = event_base_new()) == NULL)
		goto cleanup;
	if (eas_kcd_proxy_new_from_file(conf, &gw.proxy, err, sizeof(err)) != EAS_KCD_PROXY_OK) {
		fprintf(stderr, "mdm-gateway: %s\n", err);
		goto cleanup;
	}
	eas_kcd_proxy_set_authorize_hook(gw.proxy, authorize, &gw);
	eas_kcd_proxy_set_log_hook(gw.proxy, log_record, &gw);
	if (thread)
		eas_kcd_proxy_set_kcd_mode(gw.proxy, EAS_KCD_PROXY_KCD_THREAD);
	for (int i = 0; i < 4; i++)
		if ((sev[i] = evsignal_new(gw.base, sigs[i], on_signal, &gw)) == NULL ||
		    evsignal_add(sev[i], NULL) != 0)
			goto cleanup;
	if (eas_kcd_proxy_start(gw.proxy, gw.base) != EAS_KCD_PROXY_OK) {
		fprintf(stderr, "mdm-gateway: %s\n", eas_kcd_proxy_errmsg(gw.proxy));
		goto cleanup;
	}
	fprintf(stderr, "mdm-gateway: ready (kcd as a %s)\n", thread ? "thread" : "process");
	event_base_dispatch(gw.base);
	rc = 0;
cleanup:
	/* calls still unanswered die with the proxy: drop their answers */
	while (gw.pending != NULL) {
		struct pending *pd = gw.pending;
		gw.pending = pd->next;
		event_free(pd->ev);
		free(pd);
	}
	eas_kcd_proxy_destroy(gw.proxy);
	for (int i = 0; i < 4; i++)
		if (sev[i] != NULL)
			event_free(sev[i]);
	if (gw.base != NULL)
		event_base_free(gw.base);
	if (gw.log != NULL && gw.log != stdout)
		fclose(gw.log);
	allow_free(&gw);
	return rc;
}
