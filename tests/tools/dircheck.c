/*
 * dircheck — run the directory checks (directory.c) exactly as kcd does,
 * from the command line: load a configuration file, look a user up in the
 * [ldap] directory with a device certificate, print the outcome. For the
 * integration tests against Samba AD, and for admins trying a config.
 *
 *   dircheck -c CONFIG [-p PRINCIPAL] [-C CERT.pem] [-n COUNT] [-P PARALLEL]
 *   dircheck -c CONFIG -i        lines on stdin: "PRINCIPAL CERT.pem"
 *                                ("-" for none / the mapped one), or "stats"
 *
 * PRINCIPAL defaults to what the worker would send: the certificate mapped
 * by [identity] (identity_map), "" for source = ldap. -P sends PARALLEL
 * identical requests at once (they share one lookup). Each lookup prints
 * one line:
 *   OK principal=P flags=audit,directory_down|- cached=0|1 audit=NAME|-
 *   DENIED name=NAME cached=0|1 text=…          (403 ldap_NAME)
 *   UNREACHABLE name=NAME text=…                 (503, on_failure = deny)
 * then, at the end (or on "stats"):
 *   STATS requests=N lookups=N cache_hits=N waits=N errors=N connects=N
 *         timeouts=N ldap_lookups=N ldap_errors=N
 * Exit status of the last lookup: 0 OK, 1 DENIED, 3 UNREACHABLE; 2 for
 * usage, configuration or certificate errors. Logs go to stderr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/pem.h>

#include "config.h"
#include "directory.h"
#include "identity.h"
#include "log.h"
#include "metrics.h"

struct outcome {
	int done;
	int status;
	int *left;		/* requests still unanswered */
};

static int
usage(void)
{
	fprintf(stderr, "usage: dircheck -c CONFIG [-p PRINCIPAL] [-C CERT.pem] [-n COUNT] "
	    "[-P PARALLEL]\n"
	    "       dircheck -c CONFIG -i   (stdin: \"PRINCIPAL CERT.pem\" lines, - = default)\n");
	return 2;
}

static void
on_done(const struct directory_result *res, void *arg)
{
	struct outcome *o = arg;

	if (res->cancelled) {
		printf("CANCELLED\n");
		o->status = 2;
	} else if (res->ok) {
		char flags[64] = "";

		if (res->flags & KCD_ID_AUDIT)
			strcat(flags, "audit");
		if (res->flags & KCD_ID_DIRECTORY_DOWN)
			strcat(flags, flags[0] ? ",directory_down" : "directory_down");
		printf("OK principal=%s flags=%s cached=%d audit=%s\n", res->principal,
		    flags[0] ? flags : "-", res->cached,
		    (res->flags & KCD_ID_AUDIT) && res->name[0] ? res->name : "-");
		o->status = 0;
	} else if (res->cls == KCD_ERR_LDAP_UNREACHABLE) {
		printf("UNREACHABLE name=%s text=%s\n", res->name, res->text);
		o->status = 3;
	} else {
		printf("DENIED name=%s cached=%d text=%s\n", res->name, res->cached, res->text);
		o->status = 1;
	}
	fflush(stdout);
	o->done = 1;
	if (o->left != NULL)
		(*o->left)--;
}

static void
print_stats(const struct directory *d)
{
	struct directory_stats st;

	directory_stats(d, &st);
	printf("STATS requests=%llu lookups=%llu cache_hits=%llu waits=%llu errors=%llu "
	    "connects=%llu timeouts=%llu ldap_lookups=%llu ldap_errors=%llu\n",
	    (unsigned long long)st.requests, (unsigned long long)st.lookups,
	    (unsigned long long)st.cache_hits, (unsigned long long)st.waits,
	    (unsigned long long)st.errors, (unsigned long long)st.connects,
	    (unsigned long long)st.timeouts,
	    (unsigned long long)metrics_self()->ldap_lookups,
	    (unsigned long long)metrics_self()->ldap_errors);
	fflush(stdout);
}

/* DER of a PEM file into *der (malloc'd). 0 or -1. */
static int
load_cert(const char *path, unsigned char **der, int *len, X509 **out)
{
	FILE *f = fopen(path, "r");
	X509 *x;

	if (f == NULL) {
		perror(path);
		return -1;
	}
	x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	if (x == NULL) {
		fprintf(stderr, "%s: not a PEM certificate\n", path);
		return -1;
	}
	*der = NULL;
	if ((*len = i2d_X509(x, der)) <= 0) {
		X509_free(x);
		return -1;
	}
	*out = x;
	return 0;
}

/* parallel identical lookups, run to completion on base. Returns the exit
 * status of the last answer. */
static int
one(struct event_base *base, struct directory *d, const struct config *cfg,
    const char *principal, const char *cert, int parallel)
{
	struct identity_params ip;
	struct identity_result *ir = NULL;
	struct outcome os[64];
	int left = 0, status = 2;
	unsigned char *der = NULL;
	int der_len = 0;
	X509 *x = NULL;
	char err[256], p[KCD_PRINCIPAL_MAX] = "";

	if (cert != NULL && load_cert(cert, &der, &der_len, &x) != 0)
		goto cleanup;
	if (principal != NULL) {
		snprintf(p, sizeof(p), "%s", principal);
	} else if (cfg->identity.source != ID_SRC_LDAP && x != NULL) {
		(void)identity_params_from_config(cfg, &ip);
		if ((ir = calloc(1, sizeof(*ir))) == NULL)
			goto cleanup;
		if (identity_map(x, &ip, ir) != 0) {
			printf("UNMAPPED %s %s\n", identity_detail_token(ir->detail), ir->message);
			fflush(stdout);
			goto cleanup;
		}
		snprintf(p, sizeof(p), "%s", ir->principal);
	}
	for (int i = 0; i < parallel && i < 64; i++) {
		os[i].done = 0;
		os[i].status = 2;
		os[i].left = &left;
		if (directory_identify(d, p, der, (size_t)(der_len > 0 ? der_len : 0), on_done,
		    &os[i], err, sizeof(err)) != 0) {
			printf("ERROR %s\n", err);
			fflush(stdout);
			break;
		}
		left++;
	}
	while (left > 0)
		event_base_loop(base, EVLOOP_ONCE);
	for (int i = 0; i < parallel && i < 64; i++)
		if (os[i].done)
			status = os[i].status;
cleanup:
	free(ir);
	OPENSSL_free(der);
	X509_free(x);
	return status;
}

int
main(int argc, char **argv)
{
	struct config_errors errs;
	struct config *cfg = NULL;
	struct event_base *base = NULL;
	struct directory *d = NULL;
	const char *conf = NULL, *principal = NULL, *cert = NULL;
	char err[512], line[4096];
	int c, count = 1, parallel = 1, interactive = 0, rc = 2;

	while ((c = getopt(argc, argv, "c:p:C:n:P:i")) != -1) {
		switch (c) {
		case 'c':
			conf = optarg;
			break;
		case 'p':
			principal = optarg;
			break;
		case 'C':
			cert = optarg;
			break;
		case 'n':
			count = atoi(optarg);
			break;
		case 'P':
			parallel = atoi(optarg);
			break;
		case 'i':
			interactive = 1;
			break;
		default:
			return usage();
		}
	}
	if (conf == NULL || optind != argc || count < 1 || parallel < 1 || parallel > 64)
		return usage();
	memset(&errs, 0, sizeof(errs));
	if ((cfg = config_load(conf, &errs)) == NULL) {
		for (unsigned i = 0; i < errs.n; i++)
			fprintf(stderr, "%s\n", errs.msg[i]);
		config_errors_clear(&errs);
		return 2;
	}
	log_set_role("dircheck");
	if (log_open("stderr", (enum log_level)cfg->log.level, err, sizeof(err)) != 0)
		fprintf(stderr, "dircheck: %s\n", err);
	if (cfg->ldap.uri == NULL) {
		fprintf(stderr, "dircheck: %s has no [ldap] uri\n", conf);
		goto cleanup;
	}
	/* kcd does this through s4u_env_init, before any thread */
	if (cfg->kerberos.krb5_conf && setenv("KRB5_CONFIG", cfg->kerberos.krb5_conf, 1) != 0)
		goto cleanup;
	if ((base = event_base_new()) == NULL)
		goto cleanup;
	if ((d = directory_new(base, cfg, err, sizeof(err))) == NULL) {
		fprintf(stderr, "dircheck: %s\n", err);
		goto cleanup;
	}
	if (!interactive) {
		for (int i = 0; i < count; i++)
			rc = one(base, d, cfg, principal, cert, parallel);
	} else {
		while (fgets(line, sizeof(line), stdin) != NULL) {
			char *save = NULL, *a, *b;

			line[strcspn(line, "\r\n")] = '\0';
			if (strcmp(line, "stats") == 0) {
				print_stats(d);
				continue;
			}
			a = strtok_r(line, " ", &save);
			b = strtok_r(NULL, " ", &save);
			if (a == NULL)
				continue;
			rc = one(base, d, cfg, strcmp(a, "-") == 0 ? NULL : a,
			    b == NULL || strcmp(b, "-") == 0 ? NULL : b, 1);
		}
	}
	print_stats(d);
cleanup:
	directory_free(d);
	if (base != NULL)
		event_base_free(base);
	config_free(cfg);
	log_close();
	return rc;
}
