/*
 * identity_map — run identity.c over a PEM certificate from the command line,
 * so integration tests can check the generated device matrix (tests/certs.py)
 * against the real mapping code, and admins can try a device's certificate.
 *
 *   identity_map [-s san_upn|san_email|subject_cn|ldap] [-r REALM]
 *                [-m suffix:REALM]... [-a suffix]... [-i] [-S] CERT.pem
 *
 * Prints "OK <principal>" and exits 0, or "REFUSED <detail> <message>" and
 * exits 1; -S adds a line "SID <sid>" / "SID absent" / "SID malformed".
 * Exit 2 on usage or file errors.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/pem.h>

#include "identity.h"

#define MAX_PAIRS	CONFIG_MAX_LIST

static int
usage(void)
{
	fprintf(stderr, "usage: identity_map [-s san_upn|san_email|subject_cn|ldap] "
	    "[-r REALM] [-m suffix:REALM]... [-a suffix]... [-i] [-S] CERT.pem\n");
	return 2;
}

int
main(int argc, char **argv)
{
	struct config_suffix_realm pairs[MAX_PAIRS];
	char *allowed[MAX_PAIRS];
	struct identity_params p;
	struct identity_result r;
	unsigned npairs = 0, nallowed = 0;
	int c, want_sid = 0, rc = 2;
	FILE *f = NULL;
	X509 *x = NULL;

	memset(&p, 0, sizeof(p));
	p.source = ID_SRC_SAN_UPN;
	while ((c = getopt(argc, argv, "s:r:m:a:iS")) != -1) {
		switch (c) {
		case 's':
			if (strcmp(optarg, "san_upn") == 0)
				p.source = ID_SRC_SAN_UPN;
			else if (strcmp(optarg, "san_email") == 0)
				p.source = ID_SRC_SAN_EMAIL;
			else if (strcmp(optarg, "subject_cn") == 0)
				p.source = ID_SRC_SUBJECT_CN;
			else if (strcmp(optarg, "ldap") == 0)
				p.source = ID_SRC_LDAP;
			else
				return usage();
			break;
		case 'r':
			p.realm = optarg;
			break;
		case 'm': {
			char *colon = strchr(optarg, ':');
			if (colon == NULL || npairs == MAX_PAIRS)
				return usage();
			*colon = '\0';
			pairs[npairs].suffix = optarg;
			pairs[npairs].realm = colon + 1;
			npairs++;
			break;
		}
		case 'a':
			if (nallowed == MAX_PAIRS)
				return usage();
			allowed[nallowed++] = optarg;
			break;
		case 'i':
			p.allow_ia5_upn = 1;
			break;
		case 'S':
			want_sid = 1;
			break;
		default:
			return usage();
		}
	}
	if (optind + 1 != argc)
		return usage();
	p.suffix_realms = pairs;
	p.n_suffix_realms = npairs;
	p.allowed_suffixes = allowed;
	p.n_allowed_suffixes = nallowed;

	f = fopen(argv[optind], "r");
	if (f == NULL) {
		perror(argv[optind]);
		goto cleanup;
	}
	x = PEM_read_X509(f, NULL, NULL, NULL);
	if (x == NULL) {
		fprintf(stderr, "%s: not a PEM certificate\n", argv[optind]);
		goto cleanup;
	}
	if (identity_map(x, &p, &r) == 0) {
		printf("OK %s\n", r.principal);
		rc = 0;
	} else {
		printf("REFUSED %s %s\n", identity_detail_token(r.detail), r.message);
		rc = 1;
	}
	if (want_sid) {
		char sid[IDENTITY_SID_MAX];
		switch (identity_cert_sid(x, sid, sizeof(sid))) {
		case IDENTITY_SID_OK:		printf("SID %s\n", sid); break;
		case IDENTITY_SID_ABSENT:	printf("SID absent\n"); break;
		case IDENTITY_SID_MALFORMED:	printf("SID malformed\n"); break;
		}
	}

cleanup:
	X509_free(x);
	if (f != NULL)
		fclose(f);
	return rc;
}
