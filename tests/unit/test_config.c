/*
 * test_config.c — config.c: value parsers, good files (values and
 * defaults), bad files (each with its expected message in its first line
 * "; expect: LINE: substring"), the example file, message order and form.
 *
 * Files are found under $EKP_SRCDIR (default "."): tests/conf/{good,bad,files}
 * and eas-kcd-proxy.conf.example.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/stat.h>

#include <openssl/tls1.h>

#include "config.h"
#include "log.h"

static const char *
srcdir(void)
{
	const char *s = getenv("EKP_SRCDIR");

	return s && *s ? s : ".";
}

static char *
src_path(const char *rel)
{
	char *p = NULL;

	assert_true(asprintf(&p, "%s/%s", srcdir(), rel) > 0);
	return p;
}

static void
print_errors(const char *what, const struct config_errors *e)
{
	for (unsigned i = 0; i < e->n; i++)
		print_message("  %s error: %s\n", what, e->msg[i]);
	if (e->dropped)
		print_message("  %s: %u more dropped\n", what, e->dropped);
}

/* Load a file that must be valid. */
static struct config *
load_ok(const char *path)
{
	struct config_errors errs = { 0 };
	struct config *cfg = config_load(path, &errs);

	if (!cfg || errs.n) {
		print_message("expected %s to load, got:\n", path);
		print_errors(path, &errs);
	}
	assert_non_null(cfg);
	assert_int_equal(errs.n, 0);
	config_errors_clear(&errs);
	return cfg;
}

static int
has_suffix(const char *s, const char *suffix)
{
	size_t ls = strlen(s), lx = strlen(suffix);

	return ls >= lx && strcmp(s + ls - lx, suffix) == 0;
}

/* A temp directory with the files a config references; removed by
 * tmp_cleanup. */
struct tmp {
	char dir[64];
	char *files[32];
	unsigned n;
};

static char *
tmp_write(struct tmp *t, const char *name, const char *content, size_t len)
{
	char *p = NULL;
	FILE *fp;

	assert_true(asprintf(&p, "%s/%s", t->dir, name) > 0);
	fp = fopen(p, "w");
	assert_non_null(fp);
	assert_int_equal(fwrite(content, 1, len, fp), len);
	assert_int_equal(fclose(fp), 0);
	assert_true(t->n < 32);
	t->files[t->n++] = p;
	return p;
}

static void
tmp_init(struct tmp *t)
{
	memset(t, 0, sizeof(*t));
	strcpy(t->dir, "/tmp/ekp-test-config-XXXXXX");
	assert_non_null(mkdtemp(t->dir));
}

static void
tmp_cleanup(struct tmp *t)
{
	for (unsigned i = 0; i < t->n; i++) {
		unlink(t->files[i]);
		free(t->files[i]);
	}
	rmdir(t->dir);
}

/* ---- value parsers -------------------------------------------------- */

static void
test_duration(void **state)
{
	static const struct { const char *in; uint64_t ms; } ok[] = {
		{ "0", 0 }, { "5", 5000 }, { "5s", 5000 }, { "5S", 5000 },
		{ "250ms", 250 }, { "2m", 120000 }, { "1h", 3600000 },
		{ "3660s", 3660000 }, { "8784h", 8784ULL * 3600000 },
	};
	static const struct { const char *in; const char *why; } bad[] = {
		{ "", "empty" }, { "-5s", "negative" }, { "5x", "unknown unit 'x'" },
		{ "s", "not a number" }, { " 5s", "not a number" },
		{ "5 s", "unknown unit" }, { "1.5s", "unknown unit" },
		{ "+5", "not a number" }, { "5d", "unknown unit 'd'" },
		{ "99999999999999999999999", "too large" },
		{ "18446744073709551615ms", "too long" }, { "8785h", "too long" },
		{ "0x10", "unknown unit" },
	};
	char err[128];
	uint64_t v;

	(void)state;
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		v = 12345;
		assert_int_equal(config_parse_duration(ok[i].in, &v, err, sizeof(err)), 0);
		assert_int_equal(v, ok[i].ms);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		v = 777;
		err[0] = '\0';
		assert_int_equal(config_parse_duration(bad[i].in, &v, err, sizeof(err)), -1);
		assert_int_equal(v, 777);	/* output untouched on failure */
		if (!strstr(err, bad[i].why))
			fail_msg("duration '%s': expected reason '%s', got '%s'",
			    bad[i].in, bad[i].why, err);
	}
	assert_int_equal(config_parse_duration(NULL, &v, err, sizeof(err)), -1);
}

static void
test_size(void **state)
{
	static const struct { const char *in; uint64_t b; } ok[] = {
		{ "0", 0 }, { "100", 100 }, { "32k", 32768 }, { "32K", 32768 },
		{ "64m", 64ULL << 20 }, { "2g", 2ULL << 30 },
		{ "18446744073709551615", UINT64_MAX },
		{ "17179869183g", 17179869183ULL << 30 },
	};
	static const struct { const char *in; const char *why; } bad[] = {
		{ "", "empty" }, { "-1", "negative" }, { "10q", "unknown unit 'q'" },
		{ "k", "not a number" }, { "1kb", "unknown unit 'kb'" },
		{ "18446744073709551616", "too large" },
		{ "17179869184g", "too large" }, { "1.5m", "unknown unit" },
	};
	char err[128];
	uint64_t v;

	(void)state;
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		v = 1;
		assert_int_equal(config_parse_size(ok[i].in, &v, err, sizeof(err)), 0);
		assert_int_equal(v, ok[i].b);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		v = 777;
		err[0] = '\0';
		assert_int_equal(config_parse_size(bad[i].in, &v, err, sizeof(err)), -1);
		assert_int_equal(v, 777);
		if (!strstr(err, bad[i].why))
			fail_msg("size '%s': expected reason '%s', got '%s'",
			    bad[i].in, bad[i].why, err);
	}
}

static void
test_bool(void **state)
{
	static const char *const yes[] = { "yes", "YES", "on", "On", "true", "1" };
	static const char *const no[] = { "no", "No", "off", "OFF", "false", "0" };
	static const char *const bad[] = { "", "y", "n", "2", "enabled", "yes ", "-1", "truee" };
	char err[64];
	int b;

	(void)state;
	for (size_t i = 0; i < 6; i++) {
		b = -1;
		assert_int_equal(config_parse_bool(yes[i], &b, err, sizeof(err)), 0);
		assert_int_equal(b, 1);
		b = -1;
		assert_int_equal(config_parse_bool(no[i], &b, err, sizeof(err)), 0);
		assert_int_equal(b, 0);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		b = 42;
		assert_int_equal(config_parse_bool(bad[i], &b, err, sizeof(err)), -1);
		assert_int_equal(b, 42);
	}
}

static void
test_addr_ok(void **state)
{
	struct config_addr a;
	const struct sockaddr_in *sin = (const struct sockaddr_in *)&a.ss;
	const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&a.ss;
	char err[128], buf[64];

	(void)state;
	assert_int_equal(config_parse_addr("0.0.0.0:443", 0, 0, &a, err, sizeof(err)), 0);
	assert_string_equal(a.host, "0.0.0.0");
	assert_int_equal(a.port, 443);
	assert_true(a.is_numeric);
	assert_int_equal(sin->sin_family, AF_INET);
	assert_int_equal(ntohs(sin->sin_port), 443);
	assert_int_equal(a.sslen, sizeof(struct sockaddr_in));

	assert_int_equal(config_parse_addr("[::1]:8443", 0, 0, &a, err, sizeof(err)), 0);
	assert_string_equal(a.host, "::1");
	assert_int_equal(a.port, 8443);
	assert_true(a.is_numeric);
	assert_int_equal(sin6->sin6_family, AF_INET6);
	assert_int_equal(ntohs(sin6->sin6_port), 8443);
	assert_int_equal(a.sslen, sizeof(struct sockaddr_in6));
	inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof(buf));
	assert_string_equal(buf, "::1");

	assert_int_equal(config_parse_addr("[2001:db8::7]", 1, 443, &a, err, sizeof(err)), 0);
	assert_string_equal(a.host, "2001:db8::7");
	assert_int_equal(a.port, 443);

	assert_int_equal(config_parse_addr("exchange.example.test", 1, 443, &a, err, sizeof(err)), 0);
	assert_string_equal(a.host, "exchange.example.test");
	assert_int_equal(a.port, 443);
	assert_false(a.is_numeric);

	assert_int_equal(config_parse_addr("ex-1.example.test:65535", 1, 443, &a, err, sizeof(err)), 0);
	assert_int_equal(a.port, 65535);
	assert_int_equal(config_parse_addr("10.1.2.3:1", 0, 0, &a, err, sizeof(err)), 0);
	assert_int_equal(a.port, 1);
	assert_int_equal(config_parse_addr("10.1.2.3", 1, 0, &a, err, sizeof(err)), 0);
	assert_int_equal(a.port, 0);	/* "decide later" */
	assert_int_equal(config_parse_addr("localhost:00080", 0, 0, &a, err, sizeof(err)), 0);
	assert_int_equal(a.port, 80);
}

static void
test_addr_bad(void **state)
{
	static const struct { const char *in; int noport; const char *why; } bad[] = {
		{ "", 1, "empty address" },
		{ "127.0.0.1", 0, "missing port" },
		{ "127.0.0.1:", 0, "empty port" },
		{ ":443", 0, "missing host" },
		{ "127.0.0.1:0", 0, "port 0" },
		{ "127.0.0.1:65536", 0, "out of range" },
		{ "127.0.0.1:99999999999999999999", 0, "out of range" },
		{ "127.0.0.1:-1", 0, "bad port" },
		{ "127.0.0.1:https", 0, "bad port" },
		{ "127.0.0.1:44 3", 0, "bad port" },
		{ "::1", 1, "need brackets" },
		{ "::1:443", 0, "need brackets" },
		{ "[::1", 0, "missing ']'" },
		{ "[::1]443", 0, "after ']'" },
		{ "[]:443", 0, "missing host" },
		{ "[1.2.3.4]:443", 0, "bad IPv6" },
		{ "[fe80::1%eth0]:443", 0, "bad IPv6" },
		{ "[::g]:443", 0, "bad IPv6" },
		{ "256.0.0.1:443", 0, "bad IPv4" },
		{ "1.2.3:443", 0, "bad IPv4" },
		{ "exa mple:443", 0, "bad host name" },
		{ "-ex.example:443", 0, "bad host name" },
		{ "ex-.example:443", 0, "bad host name" },
		{ "ex..example:443", 0, "bad host name" },
		{ "ex.example.:443", 0, "bad host name" },
		{ "exa/mple:443", 0, "bad host name" },
	};
	struct config_addr a;
	char err[128];

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&a, 0x5a, sizeof(a));
		err[0] = '\0';
		if (config_parse_addr(bad[i].in, bad[i].noport, 443, &a, err, sizeof(err)) != -1)
			fail_msg("address '%s' was accepted", bad[i].in);
		assert_int_equal(a.port, 0x5a5a);	/* untouched */
		if (!strstr(err, bad[i].why))
			fail_msg("address '%s': expected reason '%s', got '%s'",
			    bad[i].in, bad[i].why, err);
	}
	{
		char longhost[300];

		memset(longhost, 'a', sizeof(longhost));
		strcpy(longhost + 280, ".test:443");
		assert_int_equal(config_parse_addr(longhost, 0, 0, &a, err, sizeof(err)), -1);
		assert_non_null(strstr(err, "too long"));
		memset(longhost, 'a', 70);
		strcpy(longhost + 70, ".test:443");	/* 70-char label */
		assert_int_equal(config_parse_addr(longhost, 0, 0, &a, err, sizeof(err)), -1);
		assert_non_null(strstr(err, "bad host name"));
	}
}

/* ---- good files ------------------------------------------------------ */

static void
test_good_files_load(void **state)
{
	char *dir = src_path("tests/conf/good");
	DIR *d = opendir(dir);
	struct dirent *e;
	unsigned n = 0;

	(void)state;
	assert_non_null(d);
	while ((e = readdir(d))) {
		char *p = NULL;

		if (!has_suffix(e->d_name, ".conf"))
			continue;
		assert_true(asprintf(&p, "%s/%s", dir, e->d_name) > 0);
		config_free(load_ok(p));
		free(p);
		n++;
	}
	closedir(d);
	free(dir);
	assert_true(n >= 3);
}

static void
test_minimal_defaults(void **state)
{
	char *p = src_path("tests/conf/good/minimal.conf");
	struct config *cfg = load_ok(p);
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);

	(void)state;
	assert_string_equal(cfg->file, p);
	/* [server] */
	assert_int_equal(cfg->server.n_listen, 1);
	assert_string_equal(cfg->server.listen[0].host, "127.0.0.1");
	assert_int_equal(cfg->server.listen[0].port, 8443);
	assert_int_equal(cfg->server.workers, cpus > 256 ? 256 : (cpus < 1 ? 1 : cpus));
	assert_string_equal(cfg->server.user, "nobody");
	assert_null(cfg->server.pid_file);
	assert_true(cfg->server.has_admin);
	assert_string_equal(cfg->server.admin_listen.host, "127.0.0.1");
	assert_int_equal(cfg->server.admin_listen.port, 9090);
	assert_int_equal(cfg->server.proxy_protocol, 0);
	assert_int_equal(cfg->server.paths.n, 2);
	assert_string_equal(cfg->server.paths.v[0], "/Microsoft-Server-ActiveSync");
	assert_string_equal(cfg->server.paths.v[1], "/autodiscover");
	assert_int_equal(cfg->server.max_header_size, 32 * 1024);
	assert_int_equal(cfg->server.max_body_size, 64 * 1024 * 1024);
	assert_int_equal(cfg->server.client_header_timeout, 30000);
	assert_int_equal(cfg->server.request_timeout, 3660000);
	assert_int_equal(cfg->server.idle_timeout, 120000);
	assert_int_equal(cfg->server.shutdown_timeout, 60000);
	/* [tls]: relative paths resolved against the file's directory */
	assert_true(cfg->tls.certificate[0] == '/');
	assert_true(has_suffix(cfg->tls.certificate, "/good/../files/server.pem"));
	assert_true(has_suffix(cfg->tls.key, "/files/server.key"));
	assert_true(has_suffix(cfg->tls.client_ca, "/files/device-ca.pem"));
	assert_int_equal(access(cfg->tls.certificate, R_OK), 0);
	assert_int_equal(cfg->tls.crl.n, 0);
	assert_int_equal(cfg->tls.verify_depth, 4);
	assert_int_equal(cfg->tls.min_version, TLS1_2_VERSION);
	assert_null(cfg->tls.ciphers);
	assert_int_equal(cfg->tls.require_client_auth_eku, 1);
	assert_int_equal(cfg->tls.ocsp, OCSP_OFF);
	assert_null(cfg->tls.ocsp_responder);
	assert_int_equal(cfg->tls.ocsp_timeout, 3000);
	/* [identity] */
	assert_int_equal(cfg->identity.source, ID_SRC_SAN_UPN);
	assert_string_equal(cfg->identity.realm, "EXAMPLE.TEST");
	assert_int_equal(cfg->identity.n_suffix_realms, 0);
	assert_int_equal(cfg->identity.allowed_suffixes.n, 0);
	assert_int_equal(cfg->identity.check_user_param, 1);
	assert_int_equal(cfg->identity.allow_ia5_upn, 0);
	/* [kerberos] */
	assert_true(has_suffix(cfg->kerberos.keytab, "/files/proxy.keytab"));
	assert_string_equal(cfg->kerberos.principal, "HTTP/proxy.example.test@EXAMPLE.TEST");
	assert_null(cfg->kerberos.krb5_conf);
	assert_int_equal(cfg->kerberos.credential_ttl, 600000);
	assert_int_equal(cfg->kerberos.negative_ttl, 30000);
	assert_int_equal(cfg->kerberos.kdc_timeout, 5000);
	assert_int_equal(cfg->kerberos.kdc_concurrency, 16);
	assert_int_equal(cfg->kerberos.channel_bindings, TRI_AUTO);
	/* [backend] */
	assert_int_equal(cfg->backend.n_servers, 1);
	assert_string_equal(cfg->backend.servers[0].host, "exchange.example.test");
	assert_int_equal(cfg->backend.servers[0].port, 443);
	assert_int_equal(cfg->backend.tls, 1);
	assert_null(cfg->backend.ca);
	assert_int_equal(cfg->backend.has_connect_to, 0);
	assert_string_equal(cfg->backend.spn, "HTTP@exchange.example.test");
	assert_string_equal(cfg->backend.host_header, "exchange.example.test");
	assert_int_equal(cfg->backend.connect_timeout, 5000);
	assert_int_equal(cfg->backend.pool_idle, 60000);
	assert_int_equal(cfg->backend.health_check, 10000);
	/* [ldap] */
	assert_null(cfg->ldap.uri);
	assert_int_equal(cfg->ldap.bind, LDAP_BIND_GSSAPI);
	assert_null(cfg->ldap.bind_dn);
	assert_null(cfg->ldap.bind_password_file);
	assert_null(cfg->ldap.base_dn);
	assert_string_equal(cfg->ldap.user_filter, "(userPrincipalName=%u)");
	assert_null(cfg->ldap.require_group);
	assert_int_equal(cfg->ldap.strong_mapping, STRONG_OFF);
	assert_int_equal(cfg->ldap.cache_ttl, 300000);
	assert_int_equal(cfg->ldap.on_failure, ON_FAILURE_DENY);
	/* [log] */
	assert_string_equal(cfg->log.error_log, "stderr");
	assert_int_equal(cfg->log.level, LOG_LVL_INFO);
	assert_null(cfg->log.access_log);	/* "off" */
	assert_int_equal(cfg->log.access_format, ACCESS_W3C);
	config_free(cfg);
	free(p);
}

static int
warned(const struct config *cfg, const char *needle)
{
	for (unsigned i = 0; i < cfg->warnings.n; i++)
		if (strstr(cfg->warnings.msg[i], needle))
			return 1;
	return 0;
}

static void
test_full_values(void **state)
{
	char *p = src_path("tests/conf/good/full.conf");
	struct config *cfg = load_ok(p);
	char buf[64];

	(void)state;
	assert_int_equal(cfg->server.n_listen, 2);
	assert_string_equal(cfg->server.listen[0].host, "127.0.0.1");
	assert_string_equal(cfg->server.listen[1].host, "::1");
	assert_int_equal(cfg->server.listen[1].port, 8443);
	assert_int_equal(cfg->server.listen[1].ss.ss_family, AF_INET6);
	assert_int_equal(cfg->server.workers, 3);
	assert_true(cfg->server.pid_file[0] == '/');
	assert_true(has_suffix(cfg->server.pid_file, "/good/run/ekp.pid"));
	assert_string_equal(cfg->server.admin_listen.host, "::1");
	assert_int_equal(cfg->server.admin_listen.port, 9191);
	assert_int_equal(cfg->server.proxy_protocol, 1);
	assert_int_equal(cfg->server.paths.n, 3);
	assert_string_equal(cfg->server.paths.v[2], "/EWS");
	assert_int_equal(cfg->server.max_header_size, 16384);
	assert_int_equal(cfg->server.max_body_size, 1ULL << 30);
	assert_int_equal(cfg->server.client_header_timeout, 1500);
	assert_int_equal(cfg->server.request_timeout, 7200000);
	assert_int_equal(cfg->server.idle_timeout, 120000);
	assert_int_equal(cfg->server.shutdown_timeout, 0);

	assert_true(has_suffix(cfg->tls.key, "/good/../files/server.key"));	/* "./" dropped */
	assert_int_equal(cfg->tls.crl.n, 2);
	assert_true(cfg->tls.crl.v[0][0] == '/');
	assert_true(has_suffix(cfg->tls.crl.v[1], "/files/crl2.pem"));
	assert_int_equal(cfg->tls.verify_depth, 7);
	assert_int_equal(cfg->tls.min_version, TLS1_3_VERSION);
	assert_string_equal(cfg->tls.ciphers, "ECDHE+AESGCM:!aNULL");
	assert_int_equal(cfg->tls.require_client_auth_eku, 0);
	assert_int_equal(cfg->tls.ocsp, OCSP_REQUIRED);
	assert_string_equal(cfg->tls.ocsp_responder, "http://ocsp.example.test/");
	assert_int_equal(cfg->tls.ocsp_timeout, 1500);

	assert_int_equal(cfg->identity.source, ID_SRC_LDAP);
	assert_int_equal(cfg->identity.n_suffix_realms, 2);
	assert_string_equal(cfg->identity.suffix_realms[0].suffix, "corp.example");
	assert_string_equal(cfg->identity.suffix_realms[0].realm, "CORP.EXAMPLE.TEST");
	assert_string_equal(cfg->identity.suffix_realms[1].suffix, "example.com");
	assert_string_equal(cfg->identity.suffix_realms[1].realm, "EXAMPLE.TEST");
	assert_int_equal(cfg->identity.allowed_suffixes.n, 2);
	assert_string_equal(cfg->identity.allowed_suffixes.v[1], "example.test");
	assert_int_equal(cfg->identity.check_user_param, 0);
	assert_int_equal(cfg->identity.allow_ia5_upn, 1);

	assert_string_equal(cfg->kerberos.principal, "easproxy@EXAMPLE.TEST");
	assert_true(has_suffix(cfg->kerberos.krb5_conf, "/files/krb5.conf"));
	assert_int_equal(cfg->kerberos.credential_ttl, 3600000);
	assert_int_equal(cfg->kerberos.negative_ttl, 0);
	assert_int_equal(cfg->kerberos.kdc_timeout, 250);
	assert_int_equal(cfg->kerberos.kdc_concurrency, 64);
	assert_int_equal(cfg->kerberos.channel_bindings, TRI_ON);

	assert_int_equal(cfg->backend.n_servers, 3);
	assert_string_equal(cfg->backend.servers[0].host, "exchange1.example.test");
	assert_int_equal(cfg->backend.servers[0].port, 8443);
	assert_int_equal(cfg->backend.servers[1].port, 443);
	assert_true(cfg->backend.servers[2].is_numeric);
	assert_int_equal(cfg->backend.servers[2].port, 444);
	assert_true(has_suffix(cfg->backend.ca, "/files/backend-ca.pem"));
	assert_true(cfg->backend.has_connect_to);
	assert_string_equal(cfg->backend.connect_to.host, "127.0.0.1");
	/* no port given: the first server's */
	assert_int_equal(cfg->backend.connect_to.port, 8443);
	assert_int_equal(ntohs(((struct sockaddr_in *)&cfg->backend.connect_to.ss)->sin_port), 8443);
	inet_ntop(AF_INET, &((struct sockaddr_in *)&cfg->backend.connect_to.ss)->sin_addr, buf, sizeof(buf));
	assert_string_equal(buf, "127.0.0.1");
	/* HTTP/host@REALM -> HTTP@host */
	assert_string_equal(cfg->backend.spn, "HTTP@exchange.example.test");
	/* first server on a non-default port: Host carries it */
	assert_string_equal(cfg->backend.host_header, "exchange1.example.test:8443");
	assert_int_equal(cfg->backend.connect_timeout, 2000);
	assert_int_equal(cfg->backend.pool_idle, 30000);
	assert_int_equal(cfg->backend.health_check, 0);

	assert_string_equal(cfg->ldap.uri, "ldaps://dc1.example.test ldaps://dc2.example.test");
	assert_int_equal(cfg->ldap.bind, LDAP_BIND_SIMPLE);
	assert_string_equal(cfg->ldap.bind_dn, "CN=easproxy,CN=Users,DC=example,DC=test");
	assert_true(has_suffix(cfg->ldap.bind_password_file, "/files/ldap.pw"));
	assert_string_equal(cfg->ldap.base_dn, "DC=example,DC=test");
	assert_string_equal(cfg->ldap.user_filter, "(&(objectClass=user)(userPrincipalName=%u))");
	assert_string_equal(cfg->ldap.require_group, "CN=EAS Users,OU=Groups,DC=example,DC=test");
	assert_int_equal(cfg->ldap.strong_mapping, STRONG_ENFORCE);
	assert_int_equal(cfg->ldap.cache_ttl, 90000);
	assert_int_equal(cfg->ldap.on_failure, ON_FAILURE_ALLOW);

	assert_string_equal(cfg->log.error_log, "syslog");
	assert_int_equal(cfg->log.level, LOG_LVL_DEBUG);
	assert_true(has_suffix(cfg->log.access_log, "/good/logs/access.json"));
	assert_int_equal(cfg->log.access_format, ACCESS_JSON);
	/* the logs/ directory does not exist: a warning, not an error */
	assert_true(warned(cfg, "access_log directory"));
	config_free(cfg);
	free(p);
}

static void
test_comments_and_case(void **state)
{
	char *p = src_path("tests/conf/good/comments-and-case.conf");
	struct config *cfg = load_ok(p);
	char *want = NULL;

	(void)state;
	assert_int_equal(cfg->server.n_listen, 1);
	assert_string_equal(cfg->server.listen[0].host, "0.0.0.0");
	assert_int_equal(cfg->server.max_header_size, 65536);
	assert_int_equal(cfg->server.request_timeout, 3600000);
	assert_int_equal(cfg->server.idle_timeout, 5000);	/* second [server] */
	assert_true(cfg->server.workers >= 1);
	assert_int_equal(cfg->tls.min_version, TLS1_2_VERSION);
	assert_int_equal(cfg->kerberos.channel_bindings, TRI_OFF);
	assert_string_equal(cfg->backend.servers[0].host, "2001:db8::10");
	assert_string_equal(cfg->backend.spn, "HTTP@exchange.example.test");
	/* IPv6 host in brackets; port 443 is not the default when tls = off */
	assert_string_equal(cfg->backend.host_header, "[2001:db8::10]:443");
	assert_int_equal(cfg->log.level, LOG_LVL_WARN);
	/* tls = off works but is worth a warning, on its line */
	assert_true(asprintf(&want, "%s:28: warning: backend tls is off", p) > 0);
	assert_true(warned(cfg, want));
	free(want);
	config_free(cfg);
	free(p);
}

/* ---- bad files ------------------------------------------------------- */

/* Each bad file says in its first line what it must produce:
 * "; expect: LINE: substring". It must fail with exactly that one error,
 * "PATH:LINE: ..." (or "PATH: ..." for line 0) containing the substring. */
static int
check_bad_file(const char *path)
{
	struct config_errors errs = { 0 };
	struct config *cfg;
	char first[1024], *sub, *prefix = NULL;
	unsigned line;
	FILE *fp = fopen(path, "r");
	int ok = 0;

	if (!fp || !fgets(first, sizeof(first), fp)) {
		print_message("%s: cannot read\n", path);
		if (fp)
			fclose(fp);
		return 0;
	}
	fclose(fp);
	first[strcspn(first, "\n")] = '\0';
	if (sscanf(first, "; expect: %u:", &line) != 1 || !(sub = strchr(first + 10, ':'))) {
		print_message("%s: first line must be '; expect: LINE: substring'\n", path);
		return 0;
	}
	sub += 2;
	if (line)
		assert_true(asprintf(&prefix, "%s:%u: ", path, line) > 0);
	else
		assert_true(asprintf(&prefix, "%s: ", path) > 0);

	cfg = config_load(path, &errs);
	if (cfg)
		print_message("%s: loaded, expected '%s%s'\n", path, prefix, sub);
	else if (errs.n != 1 || errs.dropped)
		print_message("%s: %u errors, expected exactly one: '%s%s'\n", path,
		    errs.n, prefix, sub);
	else if (strncmp(errs.msg[0], prefix, strlen(prefix)) != 0 ||
	    !strstr(errs.msg[0] + strlen(prefix), sub))
		print_message("%s: expected '%s...%s...'\n", path, prefix, sub);
	else
		ok = 1;
	if (!ok)
		print_errors(path, &errs);
	config_free(cfg);
	config_errors_clear(&errs);
	free(prefix);
	return ok;
}

static void
test_bad_files(void **state)
{
	char *dir = src_path("tests/conf/bad");
	DIR *d = opendir(dir);
	struct dirent *e;
	unsigned n = 0, failed = 0;

	(void)state;
	assert_non_null(d);
	while ((e = readdir(d))) {
		char *p = NULL;

		if (!has_suffix(e->d_name, ".conf"))
			continue;
		assert_true(asprintf(&p, "%s/%s", dir, e->d_name) > 0);
		if (!check_bad_file(p))
			failed++;
		free(p);
		n++;
	}
	closedir(d);
	free(dir);
	if (failed)
		fail_msg("%u of %u bad config files did not give their expected error", failed, n);
	assert_true(n >= 15);
}

/* ---- the example file ----------------------------------------------- */

static char *
read_all(const char *path, size_t *len)
{
	FILE *fp = fopen(path, "r");
	char *buf = NULL;
	size_t cap = 0, n = 0, r;

	assert_non_null(fp);
	do {
		if (n + 4096 > cap) {
			cap = cap ? cap * 2 : 8192;
			buf = realloc(buf, cap + 1);
			assert_non_null(buf);
		}
		r = fread(buf + n, 1, 4096, fp);
		n += r;
	} while (r > 0);
	fclose(fp);
	buf[n] = '\0';
	*len = n;
	return buf;
}

/* s with every occurrence of from replaced by to (new string). */
static char *
replace_all(const char *s, const char *from, const char *to)
{
	size_t lf = strlen(from), lt = strlen(to), n = 0;
	char *out, *o;

	for (const char *p = s; (p = strstr(p, from)); p += lf)
		n++;
	out = malloc(strlen(s) + n * lt + 1);
	assert_non_null(out);
	o = out;
	for (const char *p = s, *q; ; p = q + lf) {
		if (!(q = strstr(p, from))) {
			strcpy(o, p);
			break;
		}
		memcpy(o, p, (size_t)(q - p));
		o += q - p;
		memcpy(o, to, lt);
		o += lt;
	}
	return out;
}

static char *
dump_to_string(const struct config *cfg)
{
	char *buf = NULL, *body;
	size_t len = 0;
	FILE *fp = open_memstream(&buf, &len);

	assert_non_null(fp);
	config_dump(cfg, fp);
	assert_int_equal(fclose(fp), 0);
	/* drop the first line, it names the file */
	body = strdup(strchr(buf, '\n') + 1);
	free(buf);
	return body;
}

/* The example passes validation once its /etc paths point at real files,
 * and every value in it is the true built-in default: it loads to exactly
 * what a file with only the required keys (and the same paths) loads to. */
static void
test_example(void **state)
{
	char *ex = src_path("eas-kcd-proxy.conf.example");
	struct tmp t;
	size_t len;
	char *text, *v1, *v2, *prefix = NULL, *minimal = NULL, *dump_ex, *dump_min;
	char *ex_path, *min_path;
	struct config *a, *b;
	unsigned keys = 0;

	(void)state;
	tmp_init(&t);
	text = read_all(ex, &len);
	assert_true(asprintf(&prefix, "%s/", t.dir) > 0);
	v1 = replace_all(text, "/etc/eas-kcd-proxy/", prefix);
	v2 = replace_all(v1, "/var/log/eas-kcd-proxy/", prefix);
	free(v1);
	v1 = replace_all(v2, "user = eas-kcd-proxy ", "user = nobody        ");
	assert_true(strcmp(v1, v2) != 0);
	tmp_write(&t, "server.pem", "x\n", 2);
	tmp_write(&t, "server.key", "x\n", 2);
	tmp_write(&t, "device-ca.pem", "x\n", 2);
	tmp_write(&t, "proxy.keytab", "x\n", 2);
	ex_path = tmp_write(&t, "example.conf", v1, strlen(v1));
	assert_true(asprintf(&minimal,
	    "[server]\nuser = nobody\n"
	    "[tls]\ncertificate = %sserver.pem\nkey = %sserver.key\nclient_ca = %sdevice-ca.pem\n"
	    "[identity]\nrealm = EXAMPLE.TEST\n"
	    "[kerberos]\nkeytab = %sproxy.keytab\nprincipal = HTTP/proxy.example.test@EXAMPLE.TEST\n"
	    "[backend]\nservers = exchange.example.test:443\nspn = HTTP/exchange.example.test\n"
	    "[log]\naccess_log = %saccess.log\n",
	    prefix, prefix, prefix, prefix, prefix) > 0);
	min_path = tmp_write(&t, "minimal.conf", minimal, strlen(minimal));

	a = load_ok(ex_path);
	b = load_ok(min_path);
	dump_ex = dump_to_string(a);
	dump_min = dump_to_string(b);
	if (strcmp(dump_ex, dump_min) != 0) {
		print_message("example:\n%s\nbuilt-in defaults:\n%s\n", dump_ex, dump_min);
		fail_msg("eas-kcd-proxy.conf.example does not show the built-in defaults");
	}
	/* and it documents every key the parser knows: each dumped key
	 * appears as "key =" at the start of a line of the example */
	for (char *line = dump_ex, *nl; line && *line; line = nl ? nl + 1 : NULL) {
		char key[64], *needle = NULL;

		nl = strchr(line, '\n');
		if (sscanf(line, "%63[a-z0-9_] =", key) != 1)
			continue;
		assert_true(asprintf(&needle, "\n%s = ", key) > 0);
		if (!strstr(text, needle))
			fail_msg("key '%s' is not in eas-kcd-proxy.conf.example", key);
		free(needle);
		keys++;
	}
	assert_true(keys >= 60);

	free(dump_ex);
	free(dump_min);
	config_free(a);
	config_free(b);
	free(text);
	free(v1);
	free(v2);
	free(prefix);
	free(minimal);
	free(ex);
	tmp_cleanup(&t);
}

/* config_dump's output is itself a valid file that loads to the same. */
static void
test_dump_round_trip(void **state)
{
	char *p = src_path("tests/conf/good/full.conf");
	struct config *a = load_ok(p), *b;
	struct tmp t;
	char *d1, *d2, *path;

	(void)state;
	tmp_init(&t);
	d1 = dump_to_string(a);
	path = tmp_write(&t, "dump.conf", d1, strlen(d1));
	b = load_ok(path);
	d2 = dump_to_string(b);
	assert_string_equal(d1, d2);
	free(d1);
	free(d2);
	config_free(a);
	config_free(b);
	free(p);
	tmp_cleanup(&t);
}

/* ---- messages: form and order --------------------------------------- */

static void
test_unreadable_config(void **state)
{
	struct config_errors errs = { 0 };
	struct tmp t;

	(void)state;
	assert_null(config_load("/nonexistent/ekp.conf", &errs));
	assert_int_equal(errs.n, 1);
	assert_string_equal(errs.msg[0], "/nonexistent/ekp.conf: cannot read: No such file or directory");
	config_errors_clear(&errs);
	assert_int_equal(errs.n, 0);

	tmp_init(&t);
	assert_null(config_load(t.dir, &errs));
	assert_int_equal(errs.n, 1);
	assert_non_null(strstr(errs.msg[0], ": cannot read: "));
	config_errors_clear(&errs);
	tmp_cleanup(&t);
}

static const char base_conf[] =
    "[server]\nlisten = 127.0.0.1:8443\nuser = nobody\n"
    "[tls]\ncertificate = %1$s/server.pem\nkey = %1$s/server.key\nclient_ca = %1$s/device-ca.pem\n"
    "[identity]\nrealm = EXAMPLE.TEST\n"
    "[kerberos]\nkeytab = %1$s/proxy.keytab\nprincipal = HTTP/p.example.test@EXAMPLE.TEST\n"
    "[backend]\nservers = exchange.example.test\nspn = HTTP/exchange.example.test\n"
    "[log]\naccess_log = off\n";

/* Several problems in one file: all of them, sorted by line, the line-less
 * (missing key) last, each "FILE:LINE: " + one line of text. */
static void
test_errors_in_file_order(void **state)
{
	static const char text[] =
	    "[server]\n"				/* 1 */
	    "listen = 127.0.0.1:8443\n"			/* 2 */
	    "user = nobody\n"				/* 3 */
	    "request_timeout = 60s\n"			/* 4: too short (validation) */
	    "idle_timeout = 5x\n"			/* 5: bad duration (parse) */
	    "[tls]\n"					/* 6 */
	    "certificate = %1$s/server.pem\n"		/* 7 */
	    "key = %1$s/missing.key\n"			/* 8: unreadable (validation) */
	    "client_ca = %1$s/device-ca.pem\n"		/* 9 */
	    "[bogus]\n"					/* 10: unknown section */
	    "[identity]\n"				/* 11 */
	    "realm = EXAMPLE.TEST\n"			/* 12 */
	    "realm = OTHER.TEST\n"			/* 13: duplicate */
	    "[kerberos]\n"				/* 14 */
	    "keytab = %1$s/proxy.keytab\n"		/* 15 */
	    "[backend]\n"				/* 16 */
	    "servers = exchange.example.test\n"		/* 17 */
	    "spn = HTTP/exchange.example.test\n"	/* 18 */
	    "[log]\naccess_log = off\n";
	static const char *const want[] = {
	    ":4: request_timeout = 60s is too short", ":5: bad duration '5x'",
	    ":8: cannot read key '", ":10: unknown section [bogus]",
	    ":13: duplicate key 'realm' in [identity] (first set at line 12)",
	    ": missing required key 'principal' in [kerberos]",
	};
	struct config_errors errs = { 0 };
	struct tmp t;
	char *conf = NULL, *path;

	(void)state;
	tmp_init(&t);
	tmp_write(&t, "server.pem", "x", 1);
	tmp_write(&t, "device-ca.pem", "x", 1);
	tmp_write(&t, "proxy.keytab", "x", 1);
	assert_true(asprintf(&conf, text, t.dir) > 0);
	path = tmp_write(&t, "multi.conf", conf, strlen(conf));
	assert_null(config_load(path, &errs));
	if (errs.n != sizeof(want) / sizeof(want[0]))
		print_errors("multi", &errs);
	assert_int_equal(errs.n, sizeof(want) / sizeof(want[0]));
	for (unsigned i = 0; i < errs.n; i++) {
		char *w = NULL;

		assert_true(asprintf(&w, "%s%s", path, want[i]) > 0);
		if (strncmp(errs.msg[i], w, strlen(w)) != 0)
			fail_msg("error %u: expected '%s...', got '%s'", i, w, errs.msg[i]);
		assert_null(strchr(errs.msg[i], '\n'));
		free(w);
	}
	config_errors_clear(&errs);
	free(conf);
	tmp_cleanup(&t);
}

static struct config *
load_text(struct tmp *t, const char *text, size_t len, struct config_errors *errs)
{
	char *path = tmp_write(t, "t.conf", text, len);
	struct config *cfg = config_load(path, errs);

	unlink(path);
	free(path);
	t->n--;
	return cfg;
}

static void
with_base(struct tmp *t, const char *extra, char **out)
{
	char *base = NULL;

	assert_true(asprintf(&base, base_conf, t->dir) > 0);
	assert_true(asprintf(out, "%s%s", base, extra) > 0);
	free(base);
}

static void
test_control_bytes_bom_crlf(void **state)
{
	struct config_errors errs = { 0 };
	struct config *cfg;
	struct tmp t;
	char *text = NULL, *crlf;
	size_t len;

	(void)state;
	tmp_init(&t);
	tmp_write(&t, "server.pem", "x", 1);
	tmp_write(&t, "server.key", "x", 1);
	tmp_write(&t, "device-ca.pem", "x", 1);
	tmp_write(&t, "proxy.keytab", "x", 1);

	/* BOM + CRLF line ends load fine */
	with_base(&t, "", &text);
	crlf = replace_all(text, "\n", "\r\n");
	free(text);
	assert_true(asprintf(&text, "\xEF\xBB\xBF%s", crlf) > 0);
	cfg = load_text(&t, text, strlen(text), &errs);
	if (!cfg)
		print_errors("bom", &errs);
	assert_non_null(cfg);
	assert_string_equal(cfg->server.user, "nobody");
	config_free(cfg);
	free(text);
	free(crlf);

	/* a NUL byte and a control character, each on its line */
	with_base(&t, "[ldap]\nbase_dn = a\001b\n", &text);
	len = strlen(text);
	text = realloc(text, len + 32);
	memcpy(text + len, "[log]\nlevel = in\0fo\n", 20);
	len += 20;
	assert_null(load_text(&t, text, len, &errs));
	if (errs.n != 2)
		print_errors("ctl", &errs);
	assert_int_equal(errs.n, 2);
	assert_non_null(strstr(errs.msg[0], ":19: control character 0x01"));
	assert_non_null(strstr(errs.msg[1], ":21: NUL byte"));
	config_errors_clear(&errs);
	free(text);
	tmp_cleanup(&t);
}

/* As root, [server] user must name an account; as anyone else it is not
 * used (nothing to drop), so it is not checked. */
static void
test_user_must_exist(void **state)
{
	struct config_errors errs = { 0 };
	struct config *cfg;
	struct tmp t;
	char *text = NULL, *fixed;

	(void)state;
	tmp_init(&t);
	tmp_write(&t, "server.pem", "x", 1);
	tmp_write(&t, "server.key", "x", 1);
	tmp_write(&t, "device-ca.pem", "x", 1);
	tmp_write(&t, "proxy.keytab", "x", 1);
	with_base(&t, "", &text);
	fixed = replace_all(text, "user = nobody", "user = ekp-no-such-user-4711");
	cfg = load_text(&t, fixed, strlen(fixed), &errs);
	if (geteuid() == 0) {
		assert_null(cfg);
		assert_int_equal(errs.n, 1);
		assert_non_null(strstr(errs.msg[0], ":3: user 'ekp-no-such-user-4711' does not exist; "
		    "create it with `useradd --system"));
	} else {
		assert_non_null(cfg);
		assert_int_equal(errs.n, 0);
	}
	config_free(cfg);
	config_errors_clear(&errs);
	free(fixed);

	fixed = replace_all(text, "user = nobody\n", "user =\n");
	cfg = load_text(&t, fixed, strlen(fixed), &errs);
	if (geteuid() == 0) {
		assert_null(cfg);
		assert_int_equal(errs.n, 1);
		assert_non_null(strstr(errs.msg[0], ":3: user is empty, so workers would keep root"));
	} else {
		assert_non_null(cfg);
	}
	config_free(cfg);
	config_errors_clear(&errs);
	free(fixed);
	free(text);
	tmp_cleanup(&t);
}

/* Default file paths (under /etc/eas-kcd-proxy/) are checked like any other:
 * each one that is absent on this machine is reported without a line,
 * naming the key to set; each one present is not reported. */
static void
test_default_paths_checked(void **state)
{
	static const char text[] =
	    "[server]\nuser = nobody\n"
	    "[identity]\nrealm = EXAMPLE.TEST\n"
	    "[kerberos]\nprincipal = HTTP/p.example.test@EXAMPLE.TEST\n"
	    "[backend]\nservers = exchange.example.test\nspn = HTTP/exchange.example.test\n"
	    "[log]\naccess_log = off\n";
	static const struct { const char *path, *sec, *key; } defs[] = {
		{ "/etc/eas-kcd-proxy/server.pem", "tls", "certificate" },
		{ "/etc/eas-kcd-proxy/server.key", "tls", "key" },
		{ "/etc/eas-kcd-proxy/device-ca.pem", "tls", "client_ca" },
		{ "/etc/eas-kcd-proxy/proxy.keytab", "kerberos", "keytab" },
	};
	struct config_errors errs = { 0 };
	struct config *cfg;
	struct tmp t;
	unsigned absent = 0;

	(void)state;
	tmp_init(&t);
	cfg = load_text(&t, text, strlen(text), &errs);
	for (size_t i = 0; i < sizeof(defs) / sizeof(defs[0]); i++) {
		char *want = NULL;
		int found = 0;

		assert_true(asprintf(&want, ".conf: cannot read %s '%s' (the default "
		    "for [%s] %s): ", defs[i].key, defs[i].path, defs[i].sec,
		    defs[i].key) > 0);
		for (unsigned j = 0; j < errs.n; j++)
			if (strstr(errs.msg[j], want) && strstr(errs.msg[j], "; put the file there or set"))
				found = 1;
		if (access(defs[i].path, R_OK) == 0)
			assert_false(found);
		else {
			assert_true(found);
			absent++;
		}
		free(want);
	}
	assert_int_equal(errs.n, absent);
	if (absent)
		assert_null(cfg);
	config_free(cfg);
	config_errors_clear(&errs);
	tmp_cleanup(&t);
}

/* inih's line buffer is fixed: a "key=value" of 197 characters is the
 * longest that loads; one more is reported, never silently cut. */
static void
test_line_length_limit(void **state)
{
	struct config_errors errs = { 0 };
	struct config *cfg;
	struct tmp t;
	char value[256], line[400], *text = NULL;

	(void)state;
	tmp_init(&t);
	tmp_write(&t, "server.pem", "x", 1);
	tmp_write(&t, "server.key", "x", 1);
	tmp_write(&t, "device-ca.pem", "x", 1);
	tmp_write(&t, "proxy.keytab", "x", 1);
	/* "base_dn=" is 8 characters; blanks and a comment are free */
	memset(value, 'd', 189);
	value[189] = '\0';
	snprintf(line, sizeof(line), "[ldap]\nbase_dn   =   %s   ; a comment that does not count\n", value);
	with_base(&t, line, &text);
	cfg = load_text(&t, text, strlen(text), &errs);
	if (!cfg)
		print_errors("197", &errs);
	assert_non_null(cfg);
	assert_int_equal(strlen(cfg->ldap.base_dn), 189);
	config_free(cfg);
	free(text);

	value[189] = 'd';
	value[190] = '\0';
	snprintf(line, sizeof(line), "[ldap]\nbase_dn=%s\n", value);
	with_base(&t, line, &text);
	assert_null(load_text(&t, text, strlen(text), &errs));
	assert_int_equal(errs.n, 1);
	assert_non_null(strstr(errs.msg[0], ":19: line too long: the setting is 198 characters "
	    "and at most 197 are supported"));
	config_errors_clear(&errs);
	free(text);
	tmp_cleanup(&t);
}

/* More problems than config_errors keeps: the rest are counted. */
static void
test_many_errors_dropped(void **state)
{
	struct config_errors errs = { 0 };
	struct tmp t;
	char *text = NULL, *extra = NULL;
	size_t len = 0;
	FILE *fp;

	(void)state;
	tmp_init(&t);
	tmp_write(&t, "server.pem", "x", 1);
	tmp_write(&t, "server.key", "x", 1);
	tmp_write(&t, "device-ca.pem", "x", 1);
	tmp_write(&t, "proxy.keytab", "x", 1);
	fp = open_memstream(&extra, &len);
	fputs("[ldap]\n", fp);
	for (int i = 0; i < 100; i++)
		fprintf(fp, "junk%d = 1\n", i);
	fclose(fp);
	with_base(&t, extra, &text);
	assert_null(load_text(&t, text, strlen(text), &errs));
	assert_int_equal(errs.n, 64);
	assert_int_equal(errs.dropped, 36);
	assert_non_null(strstr(errs.msg[0], "unknown key 'junk0' in [ldap]"));
	config_errors_clear(&errs);
	free(text);
	free(extra);
	tmp_cleanup(&t);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_duration),
		cmocka_unit_test(test_size),
		cmocka_unit_test(test_bool),
		cmocka_unit_test(test_addr_ok),
		cmocka_unit_test(test_addr_bad),
		cmocka_unit_test(test_good_files_load),
		cmocka_unit_test(test_minimal_defaults),
		cmocka_unit_test(test_full_values),
		cmocka_unit_test(test_comments_and_case),
		cmocka_unit_test(test_bad_files),
		cmocka_unit_test(test_example),
		cmocka_unit_test(test_dump_round_trip),
		cmocka_unit_test(test_unreadable_config),
		cmocka_unit_test(test_errors_in_file_order),
		cmocka_unit_test(test_control_bytes_bom_crlf),
		cmocka_unit_test(test_user_must_exist),
		cmocka_unit_test(test_default_paths_checked),
		cmocka_unit_test(test_line_length_limit),
		cmocka_unit_test(test_many_errors_dropped),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
