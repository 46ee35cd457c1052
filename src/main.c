/*
 * main.c — the command line (SPEC §2): run, -d, -t, -V, -h, subcommands.
 * Everything after the command line is proc_main() (proc.c).
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <lber.h>
#include <ldap.h>
#include <openssl/crypto.h>

#include "config.h"
#include "doctor.h"
#include "keytab.h"
#include "memcache.h"
#include "proc.h"

#ifndef EKP_KRB5_VERSION
#define EKP_KRB5_VERSION "unknown"	/* the Makefile passes pkg-config's answer */
#endif

#define EXIT_USAGE	2

static void
usage(FILE *fp)
{
	fprintf(fp,
	    "usage: eas-kcd-proxy [-d] [-c FILE]   run (in the foreground unless -d)\n"
	    "       eas-kcd-proxy -t [-c FILE]     check the configuration and exit\n"
	    "       eas-kcd-proxy doctor [-c FILE] [--user UPN]\n"
	    "                                      preflight: keytab, KDC, S4U, Exchange, certificates\n"
	    "       eas-kcd-proxy -V               print the version and library versions\n"
	    "       eas-kcd-proxy -h               print this help\n"
	    "\n"
	    "  -c FILE  configuration file (default %s)\n"
	    "  -d       daemonize: detach, write [server] pid_file, log to [log] error_log\n"
	    "  -t       print 'configuration OK' (exit 0) or every error as FILE:LINE: message (exit 1)\n"
	    "\n"
	    "signals: HUP reloads the configuration, TERM/INT drain and stop, USR1 reopens logs\n",
	    CONFIG_DEFAULT_PATH);
}

static void
print_versions(void)
{
	LDAPAPIInfo info;

	printf("eas-kcd-proxy %s\n", EKP_VERSION);
	printf("OpenSSL: %s\n", OpenSSL_version(OPENSSL_VERSION));
	printf("krb5: MIT krb5 %s (built against)\n", EKP_KRB5_VERSION);
	printf("libevent: %s\n", event_get_version());
	memset(&info, 0, sizeof(info));
	info.ldapai_info_version = LDAP_API_INFO_VERSION;
	if (ldap_get_option(NULL, LDAP_OPT_API_INFO, &info) == LDAP_OPT_SUCCESS) {
		int v = info.ldapai_vendor_version;	/* major * 10000 + minor * 100 + patch */

		printf("libldap: %s %d.%d.%d (API %d)\n",
		    info.ldapai_vendor_name != NULL ? info.ldapai_vendor_name : "OpenLDAP",
		    v / 10000, v / 100 % 100, v % 100, info.ldapai_api_version);
		ldap_memfree(info.ldapai_vendor_name);
		ber_memvfree((void **)info.ldapai_extensions);
	} else {
		printf("libldap: version unknown\n");
	}
}

static void
print_errors(const struct config_errors *errs)
{
	for (unsigned i = 0; i < errs->n; i++)
		fprintf(stderr, "%s\n", errs->msg[i]);
	if (errs->dropped)
		fprintf(stderr, "... and %u more errors\n", errs->dropped);
}

/*
 * The keytab every local user may read or write: refused by -t and at
 * start (kcd refuses it again in each new generation, for SIGHUP), with
 * the message doctor prints too (keytab.h). Returns 0 when it may be used.
 */
static int
keytab_refused(const struct config *cfg)
{
	char msg[1024];

	if (keytab_check_mode(cfg->kerberos.keytab, cfg->server.user, msg, sizeof(msg)) !=
	    KEYTAB_REFUSE)
		return 0;
	fprintf(stderr, "%s: %s\n", cfg->file, msg);
	return 1;
}

static int
check_config(const char *path)
{
	struct config_errors errs;
	struct config *cfg;

	memset(&errs, 0, sizeof(errs));
	if ((cfg = config_load(path, &errs)) == NULL) {
		print_errors(&errs);
		config_errors_clear(&errs);
		return 1;
	}
	for (unsigned i = 0; i < cfg->warnings.n; i++)
		fprintf(stderr, "%s\n", cfg->warnings.msg[i]);
	if (keytab_refused(cfg)) {
		config_free(cfg);
		return 1;
	}
	config_free(cfg);
	printf("configuration OK\n");
	return 0;
}

/* Subcommands: `eas-kcd-proxy NAME [options]`; main() gets argv from NAME
 * on. `doctor` is SPEC §2's preflight (doctor.h). */
struct command {
	const char *name;
	int (*main)(int argc, char **argv);
};

static const struct command commands[] = {
	{ "doctor", doctor_main },
	{ NULL, NULL },
};

int
main(int argc, char **argv)
{
	const char *path = CONFIG_DEFAULT_PATH;
	char abs[PATH_MAX];
	int opt, test = 0, version = 0, daemon = 0;
	struct config_errors errs;
	struct config *cfg;

	memcache_install();	/* before any libevent call (memcache.h) */
	if (argc > 1 && argv[1][0] != '-') {
		for (const struct command *c = commands; c->name != NULL; c++)
			if (strcmp(c->name, argv[1]) == 0)
				return c->main(argc - 1, argv + 1);
		fprintf(stderr, "eas-kcd-proxy: unknown command '%s'\n", argv[1]);
		usage(stderr);
		return EXIT_USAGE;
	}
	while ((opt = getopt(argc, argv, "c:dthV")) != -1) {
		switch (opt) {
		case 'c':
			path = optarg;
			break;
		case 'd':
			daemon = 1;
			break;
		case 't':
			test = 1;
			break;
		case 'V':
			version = 1;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "eas-kcd-proxy: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return EXIT_USAGE;
	}
	if (version) {
		print_versions();
		return 0;
	}
	if (test)
		return check_config(path);

	/* the daemon runs in /: SIGHUP must still find the file */
	if (daemon && path[0] != '/' && realpath(path, abs) != NULL)
		path = abs;
	memset(&errs, 0, sizeof(errs));
	if ((cfg = config_load(path, &errs)) == NULL) {
		print_errors(&errs);
		config_errors_clear(&errs);
		return 1;
	}
	if (keytab_refused(cfg)) {
		config_free(cfg);
		return 1;
	}
	return proc_main(cfg, path, daemon);	/* takes cfg */
}
