/*
 * test_embed.c — the embedding API (include/eas_kcd_proxy.h) without a
 * KDC or backend: configurations built in code and their messages, misuse
 * answered with errors, and create / start / reload / stop / destroy on a
 * real event loop with kcd both as a helper process and as a thread, all
 * under AddressSanitizer (a leak fails the run at exit).
 *
 * The TLS material is made here (certgen.h); the keytab is a placeholder,
 * which kcd only opens for a first token request.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <event2/event.h>

#include "certgen.h"
#include "eas_kcd_proxy.h"

struct env {
	char dir[64];
	char pem[128], key[128], ca[128], keytab[128], errlog[128], conf[128];
	int port;
};

static struct env E;

static int
free_port(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port;

	assert_true(fd >= 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	port = ntohs(sa.sin_port);
	close(fd);
	return port;
}

/* 0 when something accepts TCP connections on 127.0.0.1:port. */
static int
tcp_connect(int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	int fd = socket(AF_INET, SOCK_STREAM, 0), rc;

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	close(fd);
	return rc;
}

static int
group_setup(void **state)
{
	EVP_PKEY *cak = mkkey_ec("P-256"), *k = mkkey_ec("P-256");
	struct certopt ca = { .cn = "Test CA", .key = cak, .not_before = -DAY,
	    .not_after = 90 * DAY, .ca = 1 };
	X509 *cax = mkcert(&ca), *leaf;
	struct certopt lo = { .cn = "proxy.example.test", .key = k, .issuer = cax,
	    .issuer_key = cak, .not_before = -DAY, .not_after = 90 * DAY,
	    .eku = "serverAuth", .serial = 2, .san = "DNS:proxy.example.test" };
	FILE *fp;

	(void)state;
	snprintf(E.dir, sizeof(E.dir), "/tmp/ekp-test-embed-XXXXXX");
	assert_non_null(mkdtemp(E.dir));
	leaf = mkcert(&lo);
	snprintf(E.pem, sizeof(E.pem), "%s/server.pem", E.dir);
	snprintf(E.key, sizeof(E.key), "%s/server.key", E.dir);
	snprintf(E.ca, sizeof(E.ca), "%s/device-ca.pem", E.dir);
	snprintf(E.keytab, sizeof(E.keytab), "%s/proxy.keytab", E.dir);
	snprintf(E.errlog, sizeof(E.errlog), "%s/error.log", E.dir);
	snprintf(E.conf, sizeof(E.conf), "%s/ekp.conf", E.dir);
	write_certs(E.pem, leaf, cax);
	write_key(E.key, k);
	write_certs(E.ca, cax, NULL);
	write_text(E.keytab, "placeholder: kcd reads it at the first token request\n");
	assert_int_equal(chmod(E.keytab, 0600), 0);	/* kcd refuses a readable keytab */
	E.port = free_port();
	assert_non_null(fp = fopen(E.conf, "w"));
	fprintf(fp, "[server]\nlisten = 127.0.0.1:%d\nadmin_listen =\nuser = nobody\n"
	    "shutdown_timeout = 2s\n[tls]\ncertificate = %s\nkey = %s\nclient_ca = %s\n"
	    "[identity]\nrealm = EXAMPLE.TEST\n[kerberos]\nkeytab = %s\n"
	    "principal = HTTP/proxy.example.test@EXAMPLE.TEST\n[backend]\n"
	    "servers = exchange.example.test:443\nspn = HTTP/exchange.example.test\n"
	    "[log]\nerror_log = %s\nlevel = debug\naccess_log = off\n", E.port, E.pem, E.key,
	    E.ca, E.keytab, E.errlog);
	fclose(fp);
	X509_free(leaf);
	X509_free(cax);
	EVP_PKEY_free(k);
	EVP_PKEY_free(cak);
	return 0;
}

static int
group_teardown(void **state)
{
	const char *files[] = { E.pem, E.key, E.ca, E.keytab, E.errlog, E.conf };

	(void)state;
	if (getenv("EKP_KEEP") != NULL) {
		print_message("kept %s (EKP_KEEP)\n", E.dir);
		return 0;
	}
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
		unlink(files[i]);
	rmdir(E.dir);
	return 0;
}

/* The configuration of E, key by key; extra pairs (section, key, value,
 * ..., NULL) are set after it. */
static struct eas_kcd_proxy_config *
builder(const char *first, ...)
{
	struct eas_kcd_proxy_config *c = eas_kcd_proxy_config_new();
	char port[32];
	va_list ap;

	assert_non_null(c);
	snprintf(port, sizeof(port), "127.0.0.1:%d", E.port);
	const char *const pairs[][3] = {
		{ "server", "listen", port }, { "server", "admin_listen", "" },
		{ "server", "user", "nobody" }, { "server", "shutdown_timeout", "2s" },
		{ "tls", "certificate", E.pem }, { "tls", "key", E.key },
		{ "tls", "client_ca", E.ca }, { "identity", "realm", "EXAMPLE.TEST" },
		{ "kerberos", "keytab", E.keytab },
		{ "kerberos", "principal", "HTTP/proxy.example.test@EXAMPLE.TEST" },
		{ "backend", "servers", "exchange.example.test:443" },
		{ "backend", "spn", "HTTP/exchange.example.test" },
		{ "log", "error_log", E.errlog }, { "log", "level", "debug" },
		{ "log", "access_log", "off" },
	};
	for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++)
		assert_int_equal(eas_kcd_proxy_config_set(c, pairs[i][0], pairs[i][1], pairs[i][2]),
		    EAS_KCD_PROXY_OK);
	va_start(ap, first);
	for (const char *sec = first; sec != NULL; sec = va_arg(ap, const char *)) {
		const char *key = va_arg(ap, const char *), *val = va_arg(ap, const char *);
		assert_int_equal(eas_kcd_proxy_config_set(c, sec, key, val), EAS_KCD_PROXY_OK);
	}
	va_end(ap);
	return c;
}

/* Run base until *flag or timeout_ms; returns *flag. */
static int
run_until(struct event_base *base, const int *flag, unsigned timeout_ms)
{
	struct timespec t0, t;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (!*flag) {
		struct timeval tick = { 0, 10000 };

		event_base_loopexit(base, &tick);
		event_base_dispatch(base);
		clock_gettime(CLOCK_MONOTONIC, &t);
		if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 >
		    (long)timeout_ms)
			break;
	}
	return *flag;
}

/* The value of sample name ("eas_kcd_proxy_x" or with its labels) in the
 * Prometheus text; fails the test when it is absent. "+Inf" is INT64_MAX. */
static int64_t
text_sample(const char *text, const char *name)
{
	size_t n = strlen(name);

	for (const char *l = text; l != NULL && *l != '\0'; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
		if (strncmp(l, name, n) != 0 || l[n] != ' ')
			continue;
		if (strncmp(l + n + 1, "+Inf\n", 5) == 0)
			return INT64_MAX;
		return strtoll(l + n + 1, NULL, 10);
	}
	fail_msg("no sample %s in /metrics:\n%s", name, text);
	return -1;
}

/* The first version of struct eas_kcd_proxy_metrics (0.1.0), as a program
 * compiled against that header has it. */
struct metrics_v1 {
	uint64_t requests, requests_ok, requests_denied, tls_handshakes, tls_failures;
	uint64_t connections_accepted;
	int64_t connections_open, requests_parked;
	uint64_t kdc_requests, kdc_errors, kcd_cache_hits, kcd_cache_misses;
};
_Static_assert(offsetof(struct eas_kcd_proxy_metrics, kcd_cache_negative_hits) ==
    sizeof(struct metrics_v1), "the fields since 0.1.0 follow the first version's");

/* p's metrics read twice around its /metrics text, until both reads agree
 * (kcd may count a TGT retry meanwhile); then every field of the struct is
 * checked against its sample in the text. */
static void
check_metrics_against_text(struct eas_kcd_proxy *p, struct eas_kcd_proxy_metrics *out)
{
	struct eas_kcd_proxy_metrics a, b;
	char *text = malloc(65536);
	int same = 0;

	assert_non_null(text);
	for (int i = 0; i < 50 && !same; i++) {
		assert_int_equal(eas_kcd_proxy_metrics_get(p, &a, sizeof(a)), EAS_KCD_PROXY_OK);
		assert_true(eas_kcd_proxy_metrics_text(p, text, 65536) > 0);
		assert_int_equal(eas_kcd_proxy_metrics_get(p, &b, sizeof(b)), EAS_KCD_PROXY_OK);
		same = memcmp(&a, &b, sizeof(a)) == 0;
	}
	assert_true(same);
	assert_int_equal(a.connections_accepted,
	    text_sample(text, "eas_kcd_proxy_connections_accepted_total"));
	assert_int_equal(a.kdc_requests, text_sample(text, "eas_kcd_proxy_kdc_requests_total"));
	assert_int_equal(a.kcd_cache_hits,
	    text_sample(text, "eas_kcd_proxy_kcd_cache_total{result=\"hit\"}"));
	assert_int_equal(a.kcd_cache_misses,
	    text_sample(text, "eas_kcd_proxy_kcd_cache_total{result=\"miss\"}"));
	assert_int_equal(a.kcd_cache_negative_hits,
	    text_sample(text, "eas_kcd_proxy_kcd_cache_total{result=\"negative_hit\"}"));
	assert_int_equal(a.kcd_tokens_fast,
	    text_sample(text, "eas_kcd_proxy_kcd_tokens_total{route=\"fast\"}"));
	assert_int_equal(a.kcd_tokens_gss,
	    text_sample(text, "eas_kcd_proxy_kcd_tokens_total{route=\"gss\"}"));
	assert_int_equal(a.kcd_fast_fallbacks,
	    text_sample(text, "eas_kcd_proxy_kcd_fast_fallbacks_total"));
	assert_int_equal(a.kcd_tgt_acquisitions_ok,
	    text_sample(text, "eas_kcd_proxy_kcd_tgt_acquisitions_total{result=\"ok\"}"));
	assert_int_equal(a.kcd_tgt_acquisitions_errors,
	    text_sample(text, "eas_kcd_proxy_kcd_tgt_acquisitions_total{result=\"error\"}"));
	assert_int_equal(a.kcd_tgt_valid, text_sample(text, "eas_kcd_proxy_kcd_tgt_valid"));
	assert_int_equal(a.kcd_tgt_end, text_sample(text, "eas_kcd_proxy_kcd_tgt_end_seconds"));
	assert_int_equal(a.tokens_ahead_ready,
	    text_sample(text, "eas_kcd_proxy_tokens_ahead_total{result=\"ready\"}"));
	assert_int_equal(a.tokens_ahead_waited,
	    text_sample(text, "eas_kcd_proxy_tokens_ahead_total{result=\"waited\"}"));
	assert_int_equal(a.tokens_ahead_unused,
	    text_sample(text, "eas_kcd_proxy_tokens_ahead_total{result=\"unused\"}"));
	free(text);
	*out = a;
}

/* A caller compiled against the first header passes its smaller size: it
 * gets exactly the first version's fields (the same values as a current
 * caller), and not a byte past them is written. */
static void
check_old_caller(struct eas_kcd_proxy *p, const struct eas_kcd_proxy_metrics *now)
{
	union {
		struct metrics_v1 v1;
		unsigned char raw[sizeof(struct eas_kcd_proxy_metrics) + 64];
	} buf;
	struct metrics_v1 *exact = malloc(sizeof(*exact));	/* ASan: no room past it */

	assert_non_null(exact);
	memset(&buf, 0xa5, sizeof(buf));
	assert_int_equal(eas_kcd_proxy_metrics_get(p, (struct eas_kcd_proxy_metrics *)(void *)&buf,
	    sizeof(struct metrics_v1)), EAS_KCD_PROXY_OK);
	for (size_t i = sizeof(struct metrics_v1); i < sizeof(buf.raw); i++)
		if (buf.raw[i] != 0xa5)
			fail_msg("byte %zu past the first version's struct was written", i);
	assert_memory_equal(&buf.v1, now, sizeof(struct metrics_v1));
	assert_int_equal(eas_kcd_proxy_metrics_get(p, (struct eas_kcd_proxy_metrics *)(void *)exact,
	    sizeof(*exact)), EAS_KCD_PROXY_OK);
	assert_memory_equal(exact, now, sizeof(*exact));
	/* one byte short of the first version: refused, nothing written */
	memset(&buf, 0xa5, sizeof(buf));
	assert_int_equal(eas_kcd_proxy_metrics_get(p, (struct eas_kcd_proxy_metrics *)(void *)&buf,
	    sizeof(struct metrics_v1) - 1), EAS_KCD_PROXY_E_INVALID);
	for (size_t i = 0; i < sizeof(buf.raw); i++)
		assert_int_equal(buf.raw[i], 0xa5);
	free(exact);
}

/* ---- configurations ------------------------------------------------------------ */

static void
test_config_builder_refuses_bad_keys(void **state)
{
	struct eas_kcd_proxy_config *c = eas_kcd_proxy_config_new();

	(void)state;
	assert_int_equal(eas_kcd_proxy_config_set(c, "server", "lissten", "127.0.0.1:1"),
	    EAS_KCD_PROXY_E_INVALID);
	assert_non_null(strstr(eas_kcd_proxy_config_errmsg(c), "[server] lissten is not a "
	    "configuration key"));
	assert_int_equal(eas_kcd_proxy_config_set(c, "nosuch", "listen", "x"),
	    EAS_KCD_PROXY_E_INVALID);
	assert_int_equal(eas_kcd_proxy_config_set(c, "server", "listen", "1.2.3.4:1\n[tls]"),
	    EAS_KCD_PROXY_E_INVALID);
	assert_non_null(strstr(eas_kcd_proxy_config_errmsg(c), "control character 0x0a"));
	assert_int_equal(eas_kcd_proxy_config_set(c, "backend", "spn", "HTTP/x ; comment"),
	    EAS_KCD_PROXY_E_INVALID);
	assert_int_equal(eas_kcd_proxy_config_set(c, "server", NULL, "x"), EAS_KCD_PROXY_E_INVALID);
	assert_int_equal(eas_kcd_proxy_config_set(NULL, "server", "listen", "x"),
	    EAS_KCD_PROXY_E_INVALID);
	assert_int_equal(eas_kcd_proxy_config_set(c, "devices", "deny_file", ""), EAS_KCD_PROXY_OK);
	assert_string_equal(eas_kcd_proxy_config_errmsg(c), "");
	assert_string_equal(eas_kcd_proxy_config_errmsg(NULL), "");
	eas_kcd_proxy_config_free(c);
	eas_kcd_proxy_config_free(NULL);
}

/* Every problem comes back at once, named by [section] key. */
static void
test_config_builder_messages(void **state)
{
	struct eas_kcd_proxy_config *c = eas_kcd_proxy_config_new();
	struct eas_kcd_proxy *p = (struct eas_kcd_proxy *)c;	/* must be overwritten */
	char err[4096];

	(void)state;
	assert_int_equal(eas_kcd_proxy_config_set(c, "server", "listen", "127.0.0.1:8443"), 0);
	assert_int_equal(eas_kcd_proxy_config_set(c, "server", "idle_timeout", "5x"), 0);
	assert_int_equal(eas_kcd_proxy_config_set(c, "identity", "realm", "EXAMPLE.TEST"), 0);
	assert_int_equal(eas_kcd_proxy_config_set(c, "server", "idle_timeout", "7y"), 0);
	assert_int_equal(eas_kcd_proxy_new(c, &p, err, sizeof(err)), EAS_KCD_PROXY_E_CONFIG);
	assert_null(p);
	if (strstr(err, "[server] idle_timeout: bad duration '7y'") == NULL ||
	    strstr(err, "5x") != NULL ||			/* the last value counts */
	    strstr(err, "missing required key 'principal' in [kerberos]") == NULL ||
	    strstr(err, "eas_kcd_proxy_config:") != NULL)
		fail_msg("unexpected messages:\n%s", err);
	eas_kcd_proxy_config_free(c);

	assert_int_equal(eas_kcd_proxy_new(NULL, &p, err, sizeof(err)), EAS_KCD_PROXY_E_INVALID);
	assert_int_equal(eas_kcd_proxy_new_from_file("/nonexistent/ekp.conf", &p, err,
	    sizeof(err)), EAS_KCD_PROXY_E_CONFIG);
	assert_null(p);
	assert_string_equal(err, "/nonexistent/ekp.conf: cannot read: No such file or directory");
	assert_int_equal(eas_kcd_proxy_new_from_file(NULL, &p, NULL, 0), EAS_KCD_PROXY_E_INVALID);
}

/* ---- misuse -------------------------------------------------------------------------- */

static void
test_misuse_is_an_error(void **state)
{
	struct eas_kcd_proxy *p = NULL;
	struct eas_kcd_proxy_metrics m;
	char err[1024], buf[64];

	(void)state;
	assert_int_equal(eas_kcd_proxy_new_from_file(E.conf, &p, err, sizeof(err)),
	    EAS_KCD_PROXY_OK);
	assert_int_equal(eas_kcd_proxy_reload(p), EAS_KCD_PROXY_E_STATE);
	assert_non_null(strstr(eas_kcd_proxy_errmsg(p), "reload needs a started proxy"));
	assert_int_equal(eas_kcd_proxy_stop(p, NULL, NULL), EAS_KCD_PROXY_E_STATE);
	assert_int_equal(eas_kcd_proxy_reopen_logs(p), EAS_KCD_PROXY_E_STATE);
	assert_int_equal(eas_kcd_proxy_start(p, NULL), EAS_KCD_PROXY_E_INVALID);
	assert_int_equal(eas_kcd_proxy_set_kcd_mode(p, (enum eas_kcd_proxy_kcd_mode)9),
	    EAS_KCD_PROXY_E_INVALID);
	assert_int_equal(eas_kcd_proxy_metrics_get(p, &m, 8), EAS_KCD_PROXY_E_INVALID);
	memset(&m, 0xa5, sizeof(m));
	assert_int_equal(eas_kcd_proxy_metrics_get(p, &m, sizeof(m)), EAS_KCD_PROXY_OK);
	assert_int_equal(m.requests, 0);
	/* not started: the fields since the first version are zero too */
	assert_int_equal(m.kcd_tokens_fast + m.kcd_tokens_gss + m.kcd_fast_fallbacks +
	    m.kcd_cache_negative_hits + m.kcd_tgt_acquisitions_ok + m.kcd_tgt_acquisitions_errors, 0);
	assert_int_equal(m.kcd_tgt_valid, 0);
	assert_int_equal(m.kcd_tgt_end, 0);
	assert_int_equal(eas_kcd_proxy_metrics_text(p, buf, sizeof(buf)), 0);	/* not started */
	assert_int_equal(eas_kcd_proxy_generation(p), 0);
	assert_int_equal(eas_kcd_proxy_reload_config(p, NULL), EAS_KCD_PROXY_E_INVALID);
	eas_kcd_proxy_destroy(p);

	/* NULL handles */
	assert_int_equal(eas_kcd_proxy_start(NULL, NULL), EAS_KCD_PROXY_E_INVALID);
	assert_int_equal(eas_kcd_proxy_reload(NULL), EAS_KCD_PROXY_E_INVALID);
	assert_int_equal(eas_kcd_proxy_stop(NULL, NULL, NULL), EAS_KCD_PROXY_E_INVALID);
	assert_int_equal(eas_kcd_proxy_set_authorize_hook(NULL, NULL, NULL), EAS_KCD_PROXY_E_INVALID);
	assert_int_equal(eas_kcd_proxy_set_identity_hook(NULL, NULL, NULL), EAS_KCD_PROXY_E_INVALID);
	assert_int_equal(eas_kcd_proxy_set_log_hook(NULL, NULL, NULL), EAS_KCD_PROXY_E_INVALID);
	assert_int_equal(eas_kcd_proxy_set_kcd_mode(NULL, EAS_KCD_PROXY_KCD_THREAD),
	    EAS_KCD_PROXY_E_INVALID);
	assert_int_equal(eas_kcd_proxy_metrics_get(NULL, &m, sizeof(m)), EAS_KCD_PROXY_E_INVALID);
	assert_int_equal(eas_kcd_proxy_metrics_reason(NULL, "ok"), 0);
	assert_string_equal(eas_kcd_proxy_errmsg(NULL), "");
	eas_kcd_proxy_destroy(NULL);

	assert_string_equal(eas_kcd_proxy_strerror(EAS_KCD_PROXY_E_BUSY),
	    "another proxy runs in this process");
	assert_string_equal(eas_kcd_proxy_strerror(12345), "unknown error");
	assert_int_equal(eas_kcd_proxy_abi_version(), EAS_KCD_PROXY_ABI_VERSION);
	snprintf(buf, sizeof(buf), "%d.%d.%d", EAS_KCD_PROXY_VERSION_MAJOR,
	    EAS_KCD_PROXY_VERSION_MINOR, EAS_KCD_PROXY_VERSION_PATCH);
	assert_string_equal(eas_kcd_proxy_version(), buf);
}

/* A start that fails (TLS key that is no key) leaves the process free for
 * another proxy and leaks nothing. */
static void
test_start_failure(void **state)
{
	struct event_base *base = event_base_new();
	struct eas_kcd_proxy *p = NULL, *q = NULL;
	struct eas_kcd_proxy_config *c = builder("tls", "key", E.ca, NULL);
	char err[1024];

	(void)state;
	assert_int_equal(eas_kcd_proxy_new(c, &p, err, sizeof(err)), EAS_KCD_PROXY_OK);
	assert_int_equal(eas_kcd_proxy_start(p, base), EAS_KCD_PROXY_E_START);
	if (strstr(eas_kcd_proxy_errmsg(p), E.ca) == NULL)
		fail_msg("the message does not name the key file: %s", eas_kcd_proxy_errmsg(p));
	assert_int_equal(tcp_connect(E.port), -1);		/* nothing left listening */
	assert_int_equal(eas_kcd_proxy_generation(p), 0);
	eas_kcd_proxy_destroy(p);

	eas_kcd_proxy_config_free(c);
	c = builder(NULL);
	assert_int_equal(eas_kcd_proxy_new(c, &q, err, sizeof(err)), EAS_KCD_PROXY_OK);
	assert_int_equal(eas_kcd_proxy_start(q, base), EAS_KCD_PROXY_OK);
	eas_kcd_proxy_destroy(q);			/* while running */
	assert_int_equal(tcp_connect(E.port), -1);
	eas_kcd_proxy_config_free(c);
	event_base_free(base);
}

/* ---- the life cycle ------------------------------------------------------------------ */

struct lc {
	struct event_base *base;
	struct eas_kcd_proxy *p;
	int stopped;
	int gen2;
	struct event *poll;
};

static void
on_stopped(struct eas_kcd_proxy *p, void *arg)
{
	struct lc *l = arg;

	assert_ptr_equal(p, l->p);
	l->stopped++;
}

static void
poll_generation(evutil_socket_t fd, short what, void *arg)
{
	struct lc *l = arg;
	struct timeval tv = { 0, 20000 };

	(void)fd;
	(void)what;
	if (eas_kcd_proxy_generation(l->p) == 2)
		l->gen2 = 1;
	else
		evtimer_add(l->poll, &tv);
}

static void
lifecycle(enum eas_kcd_proxy_kcd_mode mode)
{
	struct lc l = { 0 };
	struct eas_kcd_proxy *other = NULL;
	struct eas_kcd_proxy_config *c = builder(NULL), *c2;
	struct eas_kcd_proxy_metrics m;
	char err[1024], *text = malloc(65536);
	struct timeval now = { 0, 0 };
	int accepted = 0;

	assert_non_null(text);
	l.base = event_base_new();
	assert_int_equal(eas_kcd_proxy_new(c, &l.p, err, sizeof(err)), EAS_KCD_PROXY_OK);
	assert_int_equal(eas_kcd_proxy_set_kcd_mode(l.p, mode), EAS_KCD_PROXY_OK);
	assert_int_equal(eas_kcd_proxy_start(l.p, l.base), EAS_KCD_PROXY_OK);
	assert_int_equal(eas_kcd_proxy_generation(l.p), 1);
	assert_int_equal(eas_kcd_proxy_start(l.p, l.base), EAS_KCD_PROXY_E_STATE);
	assert_int_equal(eas_kcd_proxy_set_kcd_mode(l.p, EAS_KCD_PROXY_KCD_PROCESS),
	    EAS_KCD_PROXY_E_STATE);

	/* one started proxy per process */
	assert_int_equal(eas_kcd_proxy_new(c, &other, err, sizeof(err)), EAS_KCD_PROXY_OK);
	assert_int_equal(eas_kcd_proxy_start(other, l.base), EAS_KCD_PROXY_E_BUSY);
	eas_kcd_proxy_destroy(other);

	/* devices can connect; the worker on our loop accepts them */
	assert_int_equal(tcp_connect(E.port), 0);
	for (int i = 0; i < 100 && !accepted; i++) {
		struct timeval tick = { 0, 10000 };

		event_base_loopexit(l.base, &tick);
		event_base_dispatch(l.base);
		assert_int_equal(eas_kcd_proxy_metrics_get(l.p, &m, sizeof(m)), EAS_KCD_PROXY_OK);
		accepted = m.connections_accepted >= 1;
	}
	assert_true(accepted);
	assert_true(eas_kcd_proxy_metrics_text(l.p, text, 65536) > 0);
	assert_non_null(strstr(text, "eas_kcd_proxy_"));

	/* kcd (process or thread) tries the proxy's TGT with the placeholder
	 * keytab and fails: counted in the struct as in /metrics */
	for (int i = 0; i < 1000 && m.kcd_tgt_acquisitions_errors == 0; i++) {
		struct timeval tick = { 0, 10000 };

		event_base_loopexit(l.base, &tick);
		event_base_dispatch(l.base);
		assert_int_equal(eas_kcd_proxy_metrics_get(l.p, &m, sizeof(m)), EAS_KCD_PROXY_OK);
	}
	if (m.kcd_tgt_acquisitions_errors == 0)
		fail_msg("kcd counted no failed TGT acquisition within 10 s");
	check_metrics_against_text(l.p, &m);
	assert_true(m.connections_accepted >= 1);
	assert_int_equal(m.kcd_tgt_acquisitions_ok, 0);
	assert_int_equal(m.kcd_tgt_valid, 0);
	assert_int_equal(m.kcd_tgt_end, 0);
	check_old_caller(l.p, &m);

	/* a reload: generation 2 serves once its kcd is ready */
	c2 = builder("server", "idle_timeout", "30s", NULL);
	assert_int_equal(eas_kcd_proxy_reload_config(l.p, c2), EAS_KCD_PROXY_OK);
	eas_kcd_proxy_config_free(c2);
	l.poll = evtimer_new(l.base, poll_generation, &l);
	evtimer_add(l.poll, &now);
	if (!run_until(l.base, &l.gen2, 10000))
		fail_msg("generation 2 did not take over within 10 s");
	event_free(l.poll);
	assert_int_equal(tcp_connect(E.port), 0);	/* the same socket kept listening */
	/* an invalid reload changes nothing */
	c2 = builder("server", "idle_timeout", "0s", NULL);
	assert_int_equal(eas_kcd_proxy_reload_config(l.p, c2), EAS_KCD_PROXY_E_CONFIG);
	assert_non_null(strstr(eas_kcd_proxy_errmsg(l.p), "[server] idle_timeout: idle_timeout "
	    "must be greater than 0"));
	eas_kcd_proxy_config_free(c2);
	assert_int_equal(eas_kcd_proxy_generation(l.p), 2);
	assert_int_equal(eas_kcd_proxy_reopen_logs(l.p), EAS_KCD_PROXY_OK);

	/* stop drains both generations; done comes once */
	assert_int_equal(eas_kcd_proxy_stop(l.p, on_stopped, &l), EAS_KCD_PROXY_OK);
	assert_int_equal(eas_kcd_proxy_stop(l.p, on_stopped, &l), EAS_KCD_PROXY_E_STATE);
	assert_int_equal(eas_kcd_proxy_reload(l.p), EAS_KCD_PROXY_E_STATE);
	if (!run_until(l.base, &l.stopped, 15000))
		fail_msg("the proxy did not stop within 15 s");
	assert_int_equal(l.stopped, 1);
	assert_int_equal(eas_kcd_proxy_generation(l.p), 0);
	assert_int_equal(tcp_connect(E.port), -1);
	eas_kcd_proxy_destroy(l.p);
	eas_kcd_proxy_config_free(c);
	event_base_free(l.base);
	free(text);
}

static void
test_lifecycle_kcd_process(void **state)
{
	(void)state;
	lifecycle(EAS_KCD_PROXY_KCD_PROCESS);
}

static void
test_lifecycle_kcd_thread(void **state)
{
	(void)state;
	lifecycle(EAS_KCD_PROXY_KCD_THREAD);
}

/* destroy from the stopped callback (the documented way out) */
static void
destroy_when_stopped(struct eas_kcd_proxy *p, void *arg)
{
	int *done = arg;

	eas_kcd_proxy_destroy(p);
	*done = 1;
}

static void
test_destroy_from_stopped_callback(void **state)
{
	struct event_base *base = event_base_new();
	struct eas_kcd_proxy *p = NULL;
	char err[1024];
	int done = 0;

	(void)state;
	assert_int_equal(eas_kcd_proxy_new_from_file(E.conf, &p, err, sizeof(err)),
	    EAS_KCD_PROXY_OK);
	assert_int_equal(eas_kcd_proxy_set_kcd_mode(p, EAS_KCD_PROXY_KCD_THREAD), EAS_KCD_PROXY_OK);
	assert_int_equal(eas_kcd_proxy_start(p, base), EAS_KCD_PROXY_OK);
	assert_int_equal(eas_kcd_proxy_reload(p), EAS_KCD_PROXY_OK);	/* re-reads the file */
	assert_int_equal(eas_kcd_proxy_stop(p, destroy_when_stopped, &done), EAS_KCD_PROXY_OK);
	if (!run_until(base, &done, 15000))
		fail_msg("the proxy did not stop within 15 s");
	event_base_free(base);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_config_builder_refuses_bad_keys),
		cmocka_unit_test(test_config_builder_messages),
		cmocka_unit_test(test_misuse_is_an_error),
		cmocka_unit_test(test_start_failure),
		cmocka_unit_test(test_lifecycle_kcd_process),
		cmocka_unit_test(test_lifecycle_kcd_thread),
		cmocka_unit_test(test_destroy_from_stopped_callback),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
