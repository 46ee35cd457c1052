/*
 * s4u_token — kcd's Kerberos core (s4u.c) outside the daemon, for tests and
 * for admins checking a keytab: the same pool, cache and GSSAPI route.
 *
 *   s4u_token --keytab K --principal P --user alice@EXAMPLE.TEST
 *             --spn HTTP@exchange.example.test [--cb-hash HEX] [--mutual]
 *             [--repeat N] [--concurrent N] [--kdc-timeout MS]
 *             [--credential-ttl MS] [--negative-ttl MS] [--threads N]
 *             [--krb5-conf FILE]
 *     Sends N rounds (--repeat) of M simultaneous requests (--concurrent)
 *     and prints one line per answer:
 *       token CTXID BASE64              (CTXID 0 unless --mutual)
 *       error CLASS NAME: text          (CLASS USER|PROXY|UNREACHABLE|INTERNAL)
 *     then "stats key=value ..." (s4u2self = KDC exchanges started).
 *     Exit status 0 when every answer was a token, 2 otherwise, 1 on usage.
 *
 *   s4u_token --keytab K --principal P --serve [...]
 *     Reads commands on stdin, one per line, answers each on stdout:
 *       token USER SPN [CBHEX|-] [mutual|refresh]... -> token/error line
 *       mutual CTXID BASE64    -> "mutual ok" | "mutual error NAME: text"
 *       release CTXID          -> "released"
 *       stats                  -> the stats line
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "kcd_proto.h"
#include "log.h"
#include "s4u.h"

struct answer_ctx {
	unsigned pending;
	unsigned errors;
};

static const char *
class_name(enum kcd_err_class c)
{
	switch (c) {
	case KCD_ERR_USER:
		return "USER";
	case KCD_ERR_PROXY:
		return "PROXY";
	case KCD_ERR_UNREACHABLE:
		return "UNREACHABLE";
	default:
		return "INTERNAL";
	}
}

static void
on_answer(const struct s4u_result *res, void *arg)
{
	struct answer_ctx *a = arg;

	if (res->ok) {
		printf("token %u %s\n", res->ctx_id, res->token);
	} else {
		printf("error %s %s: %s\n", class_name(res->cls), res->name, res->text);
		a->errors++;
	}
	fflush(stdout);
	a->pending--;
}

static void
print_stats(struct s4u *s)
{
	struct s4u_stats st;

	s4u_stats(s, &st);
	printf("stats requests=%llu s4u2self=%llu s4u2proxy=%llu proxy_acquired=%llu "
	    "cache_hits=%llu negative_hits=%llu waits=%llu tokens=%llu errors_user=%llu "
	    "errors_proxy=%llu errors_unreachable=%llu errors_internal=%llu timeouts=%llu "
	    "tokens_fast=%llu fast_fallbacks=%llu entries=%u contexts=%u in_flight=%u\n",
	    (unsigned long long)st.requests, (unsigned long long)st.s4u2self,
	    (unsigned long long)st.s4u2proxy, (unsigned long long)st.proxy_acquired,
	    (unsigned long long)st.cache_hits, (unsigned long long)st.negative_hits,
	    (unsigned long long)st.waits, (unsigned long long)st.tokens,
	    (unsigned long long)st.errors_user, (unsigned long long)st.errors_proxy,
	    (unsigned long long)st.errors_unreachable, (unsigned long long)st.errors_internal,
	    (unsigned long long)st.timeouts, (unsigned long long)st.tokens_fast,
	    (unsigned long long)st.fast_fallbacks, st.entries, st.contexts, st.in_flight);
	fflush(stdout);
}

static int
parse_hex(const char *hex, unsigned char *out, size_t *len)
{
	size_t n = strlen(hex);

	if (n % 2 != 0 || n / 2 > KCD_CB_MAX)
		return -1;
	for (size_t i = 0; i < n / 2; i++) {
		unsigned v;
		if (sscanf(hex + 2 * i, "%2x", &v) != 1)
			return -1;
		out[i] = (unsigned char)v;
	}
	*len = n / 2;
	return 0;
}

static int
wait_all(struct event_base *base, struct answer_ctx *a)
{
	while (a->pending > 0)
		if (event_base_loop(base, EVLOOP_ONCE) < 0)
			return -1;
	return 0;
}

static int
request(struct s4u *s, struct event_base *base, const char *user, const char *spn,
    const unsigned char *cb, size_t cb_len, uint32_t flags, unsigned n, struct answer_ctx *a)
{
	struct s4u_error err;

	for (unsigned i = 0; i < n; i++) {
		if (s4u_token_request(s, user, spn, cb, cb_len, flags, on_answer, a, &err) != 0) {
			printf("error %s %s: %s\n", class_name(err.cls), err.name, err.text);
			a->errors++;
			continue;
		}
		a->pending++;
	}
	return wait_all(base, a);
}

static int
serve(struct s4u *s, struct event_base *base)
{
	char line[KCD_TOKEN_MAX + 256];
	struct answer_ctx a = { 0, 0 };

	while (fgets(line, sizeof(line), stdin) != NULL) {
		char *save = NULL, *cmd = strtok_r(line, " \t\r\n", &save);

		if (cmd == NULL)
			continue;
		if (strcmp(cmd, "token") == 0) {
			char *user = strtok_r(NULL, " \t\r\n", &save);
			char *spn = strtok_r(NULL, " \t\r\n", &save);
			char *hex, *opt;
			unsigned char cb[KCD_CB_MAX];
			size_t cb_len = 0;
			uint32_t flags = 0;

			if (user == NULL || spn == NULL) {
				printf("usage: token USER SPN [CBHEX|-] [mutual|refresh]...\n");
				continue;
			}
			if ((hex = strtok_r(NULL, " \t\r\n", &save)) != NULL && strcmp(hex, "-") != 0 &&
			    parse_hex(hex, cb, &cb_len) != 0) {
				printf("usage: bad channel-binding hex\n");
				continue;
			}
			while ((opt = strtok_r(NULL, " \t\r\n", &save)) != NULL)
				flags |= strcmp(opt, "mutual") == 0 ? KCD_F_MUTUAL :
				    strcmp(opt, "refresh") == 0 ? KCD_F_REFRESH : 0;
			if (request(s, base, user, spn, cb, cb_len, flags, 1, &a) != 0)
				return -1;
		} else if (strcmp(cmd, "mutual") == 0) {
			char *id = strtok_r(NULL, " \t\r\n", &save);
			char *tok = strtok_r(NULL, " \t\r\n", &save);
			struct s4u_error err;

			if (id == NULL || tok == NULL) {
				printf("usage: mutual CTXID BASE64\n");
			} else if (s4u_verify_mutual(s, (uint32_t)strtoul(id, NULL, 10), tok, &err) == 0) {
				printf("mutual ok\n");
			} else {
				printf("mutual error %s: %s\n", err.name, err.text);
			}
		} else if (strcmp(cmd, "release") == 0) {
			char *id = strtok_r(NULL, " \t\r\n", &save);
			s4u_ctx_release(s, id != NULL ? (uint32_t)strtoul(id, NULL, 10) : 0);
			printf("released\n");
		} else if (strcmp(cmd, "stats") == 0) {
			print_stats(s);
		} else {
			printf("usage: token|mutual|release|stats\n");
		}
		fflush(stdout);
	}
	return 0;
}

static void
usage(void)
{
	fprintf(stderr,
	    "usage: s4u_token --keytab K --principal P (--user U --spn S | --serve)\n"
	    "       [--cb-hash HEX] [--mutual] [--repeat N] [--concurrent N]\n"
	    "       [--kdc-timeout MS] [--credential-ttl MS] [--negative-ttl MS]\n"
	    "       [--threads N] [--krb5-conf FILE]\n");
	exit(1);
}

int
main(int argc, char **argv)
{
	struct s4u_params p = {
		.credential_ttl_ms = 600000, .negative_ttl_ms = 30000,
		.kdc_timeout_ms = 5000, .kdc_concurrency = 16,
	};
	const char *user = NULL, *spn = NULL, *krb5_conf = NULL;
	unsigned char cb[KCD_CB_MAX];
	size_t cb_len = 0;
	unsigned repeat = 1, concurrent = 1;
	uint32_t flags = 0;
	int do_serve = 0, rc = 1;
	struct event_base *base = NULL;
	struct s4u *s = NULL;
	struct answer_ctx a = { 0, 0 };
	char err[512];

	for (int i = 1; i < argc; i++) {
		const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		int takes = 1;

		if (strcmp(o, "--serve") == 0) {
			do_serve = 1;
			takes = 0;
		} else if (strcmp(o, "--mutual") == 0) {
			flags |= KCD_F_MUTUAL;
			takes = 0;
		} else if (v == NULL) {
			usage();
		} else if (strcmp(o, "--keytab") == 0) {
			p.keytab = v;
		} else if (strcmp(o, "--principal") == 0) {
			p.principal = v;
		} else if (strcmp(o, "--user") == 0) {
			user = v;
		} else if (strcmp(o, "--spn") == 0) {
			spn = v;
		} else if (strcmp(o, "--cb-hash") == 0) {
			if (parse_hex(v, cb, &cb_len) != 0)
				usage();
		} else if (strcmp(o, "--repeat") == 0) {
			repeat = (unsigned)strtoul(v, NULL, 10);
		} else if (strcmp(o, "--concurrent") == 0) {
			concurrent = (unsigned)strtoul(v, NULL, 10);
		} else if (strcmp(o, "--kdc-timeout") == 0) {
			p.kdc_timeout_ms = strtoull(v, NULL, 10);
		} else if (strcmp(o, "--credential-ttl") == 0) {
			p.credential_ttl_ms = strtoull(v, NULL, 10);
		} else if (strcmp(o, "--negative-ttl") == 0) {
			p.negative_ttl_ms = strtoull(v, NULL, 10);
		} else if (strcmp(o, "--threads") == 0) {
			p.kdc_concurrency = (unsigned)strtoul(v, NULL, 10);
		} else if (strcmp(o, "--krb5-conf") == 0) {
			krb5_conf = v;
		} else {
			usage();
		}
		i += takes;
	}
	if (p.keytab == NULL || p.principal == NULL || (!do_serve && (user == NULL || spn == NULL)))
		usage();

	log_set_role("s4u_token");
	if (s4u_env_init(krb5_conf, err, sizeof(err)) != 0) {
		fprintf(stderr, "s4u_token: %s\n", err);
		return 1;
	}
	if ((base = event_base_new()) == NULL) {
		fprintf(stderr, "s4u_token: event_base_new failed\n");
		return 1;
	}
	if ((s = s4u_new(base, &p, err, sizeof(err))) == NULL) {
		fprintf(stderr, "s4u_token: %s\n", err);
		goto cleanup;
	}
	if (do_serve) {
		rc = serve(s, base) == 0 ? 0 : 1;
		goto cleanup;
	}
	for (unsigned r = 0; r < repeat; r++)
		if (request(s, base, user, spn, cb, cb_len, flags, concurrent, &a) != 0)
			goto cleanup;
	print_stats(s);
	rc = a.errors == 0 ? 0 : 2;

cleanup:
	s4u_free(s);
	if (base != NULL)
		event_base_free(base);
	return rc;
}
