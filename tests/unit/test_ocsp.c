/*
 * test_ocsp.c — ocsp.c against a real OCSP responder: the answers are made
 * by `openssl ocsp -index ... -reqin ... -respout ...` (OpenSSL's own
 * responder logic over a CA index file) behind a tiny HTTP/1.0 front that a
 * forked child runs on 127.0.0.1 only (`openssl ocsp -port` of OpenSSL 3.0
 * binds every interface). The child is stopped by its pid. The proxy side
 * runs on a libevent loop, as in a worker.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <cmocka.h>

#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "certgen.h"
#include "config.h"
#include "ocsp.h"
#include "reason.h"

static struct {
	char dir[64];
	EVP_PKEY *ca_key, *other_key, *leaf_key;
	X509 *ca, *other_ca, *good, *revoked, *unknown, *with_aia, *no_aia;
	char ca_pem[128], ca_keyf[128], other_pem[128], other_keyf[128], index[128], log[128];
	SSL_CTX *trust;		/* client_ca = ca */
	int lfd;		/* the responder's listening socket */
	uint16_t port;
	char url[64];
} g;

static void
fpath(char *out, const char *name)
{
	snprintf(out, 128, "%s/%s", g.dir, name);
}

static int
listen_local(uint16_t *port)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(listen(fd, 16), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
	*port = ntohs(sin.sin_port);
	return fd;
}

/* A port where nothing listens. */
static uint16_t
closed_port(void)
{
	uint16_t port;
	int fd = listen_local(&port);

	close(fd);
	return port;
}

/* ---- the responder child -------------------------------------------------- */

enum mode { M_OCSP, M_OTHER_SIGNER, M_HTTP500, M_GARBAGE };

static ssize_t
read_full(int fd, char *buf, size_t len)
{
	size_t n = 0;

	while (n < len) {
		ssize_t r = read(fd, buf + n, len - n);

		if (r <= 0)
			return -1;
		n += (size_t)r;
	}
	return (ssize_t)n;
}

static void
write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t w = write(fd, p, len);

		if (w <= 0)
			return;
		p += w;
		len -= (size_t)w;
	}
}

/* One request: read the head and the body (Content-Length), answer. */
static void
serve_one(int c, enum mode m, unsigned n)
{
	char head[4096], req[128], resp[128], cmd[1024], *body, *cl;
	size_t hl = 0;
	long blen;
	FILE *fp;
	static char out[65536];
	size_t olen;
	char hdr[256];

	while (hl < sizeof(head) - 1) {
		if (read(c, head + hl, 1) != 1)
			return;
		hl++;
		head[hl] = '\0';
		if (hl >= 4 && memcmp(head + hl - 4, "\r\n\r\n", 4) == 0)
			break;
	}
	if ((fp = fopen(g.log, "a")) != NULL) {
		fprintf(fp, "%.*s\n", (int)strcspn(head, "\r"), head);
		fclose(fp);
	}
	if ((cl = strcasestr(head, "Content-Length:")) == NULL)
		return;
	blen = strtol(cl + 15, NULL, 10);
	if (blen <= 0 || blen > 65536 || (body = malloc((size_t)blen)) == NULL)
		return;
	if (read_full(c, body, (size_t)blen) < 0) {
		free(body);
		return;
	}
	if (m == M_HTTP500) {
		const char *r = "HTTP/1.0 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n";

		write_all(c, r, strlen(r));
		free(body);
		return;
	}
	if (m == M_GARBAGE) {
		const char *r = "HTTP/1.0 200 OK\r\n\r\nthis is not DER";

		write_all(c, r, strlen(r));
		free(body);
		return;
	}
	snprintf(req, sizeof(req), "%s/req-%u.der", g.dir, n);
	snprintf(resp, sizeof(resp), "%s/resp-%u.der", g.dir, n);
	if ((fp = fopen(req, "wb")) == NULL) {
		free(body);
		return;
	}
	fwrite(body, 1, (size_t)blen, fp);
	fclose(fp);
	free(body);
	snprintf(cmd, sizeof(cmd), "openssl ocsp -index '%s' -CA '%s' -rsigner '%s' -rkey '%s' "
	    "-reqin '%s' -respout '%s' -nmin 10 >/dev/null 2>&1", g.index, g.ca_pem,
	    m == M_OTHER_SIGNER ? g.other_pem : g.ca_pem,
	    m == M_OTHER_SIGNER ? g.other_keyf : g.ca_keyf, req, resp);
	if (system(cmd) != 0 || (fp = fopen(resp, "rb")) == NULL)
		return;
	olen = fread(out, 1, sizeof(out), fp);
	fclose(fp);
	snprintf(hdr, sizeof(hdr), "HTTP/1.0 200 OK\r\nContent-Type: application/ocsp-response\r\n"
	    "Content-Length: %zu\r\n\r\n", olen);
	write_all(c, hdr, strlen(hdr));
	write_all(c, out, olen);
}

static pid_t
responder_start(enum mode m)
{
	pid_t pid = fork();

	assert_true(pid >= 0);
	if (pid == 0) {
		unsigned n = 0;

		alarm(60);	/* never outlive a broken test */
		for (;;) {
			int c = accept(g.lfd, NULL, NULL);

			if (c < 0) {
				if (errno == EINTR)
					continue;
				_exit(1);
			}
			serve_one(c, m, n++);
			close(c);
		}
	}
	return pid;
}

static void
responder_stop(pid_t pid)
{
	int st;

	kill(pid, SIGTERM);
	assert_int_equal(waitpid(pid, &st, 0), pid);
}

static unsigned
responder_requests(void)
{
	FILE *fp = fopen(g.log, "r");
	unsigned n = 0;
	int ch;

	if (fp == NULL)
		return 0;
	while ((ch = fgetc(fp)) != EOF)
		n += ch == '\n';
	fclose(fp);
	return n;
}

/* ---- fixture ------------------------------------------------------------------ */

static int
group_setup(void **state)
{
	FILE *fp;
	char aia[96];

	(void)state;
	snprintf(g.dir, sizeof(g.dir), "/tmp/test_ocsp.XXXXXX");
	assert_non_null(mkdtemp(g.dir));
	g.lfd = listen_local(&g.port);
	snprintf(g.url, sizeof(g.url), "http://127.0.0.1:%u/ocsp", g.port);
	snprintf(aia, sizeof(aia), "OCSP;URI:%s", g.url);

	g.ca_key = mkkey_ec("P-256");
	g.other_key = mkkey_ec("P-256");
	g.leaf_key = mkkey_ec("P-256");
	g.ca = mkcert(&(struct certopt){ .cn = "Device CA", .key = g.ca_key,
	    .not_before = -DAY, .not_after = 3650 * DAY, .ca = 1, .serial = 100 });
	g.other_ca = mkcert(&(struct certopt){ .cn = "Other CA", .key = g.other_key,
	    .not_before = -DAY, .not_after = 3650 * DAY, .ca = 1, .serial = 101 });
#define LEAF(field, cn_, serial_, ...) \
	g.field = mkcert(&(struct certopt){ .cn = cn_, .key = g.leaf_key, .issuer = g.ca, \
	    .issuer_key = g.ca_key, .not_before = -DAY, .not_after = 365 * DAY, \
	    .eku = "clientAuth", .serial = serial_, __VA_ARGS__ })
	LEAF(good, "alice", 0x10);
	LEAF(revoked, "bob", 0x11);
	LEAF(unknown, "carol", 0x12);
	LEAF(with_aia, "dave", 0x13, .aia = aia);
	LEAF(no_aia, "erin", 0x14);
#undef LEAF
	fpath(g.ca_pem, "ca.pem");
	write_certs(g.ca_pem, g.ca, NULL);
	fpath(g.ca_keyf, "ca.key");
	write_key(g.ca_keyf, g.ca_key);
	fpath(g.other_pem, "other.pem");
	write_certs(g.other_pem, g.other_ca, NULL);
	fpath(g.other_keyf, "other.key");
	write_key(g.other_keyf, g.other_key);
	fpath(g.log, "requests.log");
	/* openssl ca's index: status, expiry, revocation[,reason], serial, file, DN */
	fpath(g.index, "index.txt");
	fp = fopen(g.index, "w");
	assert_non_null(fp);
	fprintf(fp, "V\t351231235959Z\t\t10\tunknown\t/O=Example/CN=alice\n");
	fprintf(fp, "R\t351231235959Z\t240101000000Z,keyCompromise\t11\tunknown\t/O=Example/CN=bob\n");
	fprintf(fp, "V\t351231235959Z\t\t13\tunknown\t/O=Example/CN=dave\n");
	fclose(fp);

	g.trust = SSL_CTX_new(TLS_server_method());
	assert_non_null(g.trust);
	assert_int_equal(SSL_CTX_load_verify_locations(g.trust, g.ca_pem, NULL), 1);
	signal(SIGPIPE, SIG_IGN);
	return 0;
}

static int
group_teardown(void **state)
{
	char cmd[128];

	(void)state;
	close(g.lfd);
	SSL_CTX_free(g.trust);
	X509_free(g.ca);
	X509_free(g.other_ca);
	X509_free(g.good);
	X509_free(g.revoked);
	X509_free(g.unknown);
	X509_free(g.with_aia);
	X509_free(g.no_aia);
	EVP_PKEY_free(g.ca_key);
	EVP_PKEY_free(g.other_key);
	EVP_PKEY_free(g.leaf_key);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g.dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", g.dir);
	return 0;
}

/* ---- the proxy side -------------------------------------------------------------- */

struct t {
	struct event_base *base;
	struct config cfg;
	struct ocsp *o;
	pid_t responder;
};

struct answer {
	int done;
	enum reason reason;
	char detail[512];
	struct event_base *base;
};

static void
on_done(enum reason reason, const char *detail, void *arg)
{
	struct answer *a = arg;

	a->done++;
	a->reason = reason;
	snprintf(a->detail, sizeof(a->detail), "%s", detail);
	event_base_loopbreak(a->base);
}

static struct t *
t_new(enum ocsp_mode mode, const char *responder, uint64_t timeout_ms)
{
	struct t *t = calloc(1, sizeof(*t));
	char err[256] = "";

	assert_non_null(t);
	t->base = event_base_new();
	assert_non_null(t->base);
	t->cfg.tls.ocsp = mode;
	t->cfg.tls.ocsp_responder = (char *)responder;
	t->cfg.tls.ocsp_timeout = timeout_ms;
	t->o = ocsp_new(t->base, NULL, &t->cfg, g.trust, err, sizeof(err));
	if (t->o == NULL)
		fail_msg("ocsp_new: %s", err);
	t->responder = -1;
	if (unlink(g.log) != 0 && errno != ENOENT)
		fail_msg("unlink %s", g.log);
	return t;
}

static void
t_free(struct t *t)
{
	ocsp_free(t->o);
	if (t->responder > 0)
		responder_stop(t->responder);
	event_base_free(t->base);
	free(t);
}

/* Run until a's callback ran (a guard timer fails a hung test). */
static void
wait_answer(struct t *t, struct answer *a)
{
	struct timeval guard = { 20, 0 };

	while (!a->done) {
		event_base_loopexit(t->base, &guard);
		event_base_dispatch(t->base);
		if (!a->done)
			fail_msg("no OCSP answer within 20 s");
	}
}

/* Check cert and return the outcome, synchronous or not. */
static enum reason
check(struct t *t, X509 *cert, X509 *issuer, char *detail, int *was_sync)
{
	struct answer a = { .base = t->base };
	struct ocsp_query *q = ocsp_check(t->o, cert, issuer, on_done, &a);

	if (was_sync)
		*was_sync = q == NULL;
	if (q == NULL)
		assert_int_equal(a.done, 1);
	else
		wait_answer(t, &a);
	assert_int_equal(a.done, 1);
	if (detail)
		strcpy(detail, a.detail);
	return a.reason;
}

static void
expect(struct t *t, X509 *cert, enum reason want, const char *want_detail)
{
	char detail[512];
	enum reason r = check(t, cert, g.ca, detail, NULL);

	if (r != want)
		fail_msg("reason %s, expected %s (detail: %s)", reason_token(r), reason_token(want), detail);
	if (want_detail && strstr(detail, want_detail) == NULL)
		fail_msg("detail '%s' lacks '%s'", detail, want_detail);
}

/* ---- tests ------------------------------------------------------------------------ */

static void
good_answer_is_ok_and_cached(void **state)
{
	struct t *t = t_new(OCSP_REQUIRED, g.url, 5000);
	struct ocsp_stats st;
	int sync;
	char detail[512];

	(void)state;
	t->responder = responder_start(M_OCSP);
	expect(t, g.good, REASON_OK, "good");
	assert_int_equal(responder_requests(), 1);
	/* the second check is answered from the cache, at once */
	assert_int_equal(check(t, g.good, g.ca, detail, &sync), REASON_OK);
	assert_true(sync);
	ocsp_stats(t->o, &st);
	assert_int_equal(st.requests, 1);
	assert_int_equal(st.cache_hits, 1);
	assert_int_equal(st.good, 1);
	assert_int_equal(st.in_flight, 0);
	assert_int_equal(st.cached, 1);
	assert_int_equal(responder_requests(), 1);
	t_free(t);
}

static void
revoked_answer_is_cert_revoked(void **state)
{
	struct t *t = t_new(OCSP_ON, g.url, 5000);

	(void)state;
	t->responder = responder_start(M_OCSP);
	expect(t, g.revoked, REASON_CERT_REVOKED, "revoked at Jan  1 00:00:00 2024 GMT (keyCompromise)");
	t_free(t);
}

static void
unknown_answer_depends_on_the_mode(void **state)
{
	struct t *t = t_new(OCSP_REQUIRED, g.url, 5000);

	(void)state;
	t->responder = responder_start(M_OCSP);
	expect(t, g.unknown, REASON_CERT_OCSP, "does not know the certificate");
	t_free(t);
	t = t_new(OCSP_ON, g.url, 5000);
	t->responder = responder_start(M_OCSP);
	expect(t, g.unknown, REASON_OK, "allowed (ocsp = on)");
	t_free(t);
}

static void
unreachable_responder_depends_on_the_mode(void **state)
{
	char url[64];
	struct t *t;
	struct ocsp_stats st;
	int sync;

	(void)state;
	snprintf(url, sizeof(url), "http://127.0.0.1:%u/", closed_port());
	t = t_new(OCSP_REQUIRED, url, 5000);
	expect(t, g.good, REASON_CERT_OCSP, "Connection refused");
	/* the failure is remembered: no new attempt for OCSP_FAIL_TTL */
	assert_int_equal(check(t, g.good, g.ca, NULL, &sync), REASON_CERT_OCSP);
	assert_true(sync);
	ocsp_stats(t->o, &st);
	assert_int_equal(st.requests, 1);
	assert_int_equal(st.failures, 1);
	t_free(t);

	t = t_new(OCSP_ON, url, 5000);
	expect(t, g.good, REASON_OK, "allowed (ocsp = on)");
	t_free(t);
}

static void
silent_responder_times_out(void **state)
{
	uint16_t port;
	int fd = listen_local(&port);	/* accepts into the backlog, never answers */
	char url[64];
	struct t *t;

	(void)state;
	snprintf(url, sizeof(url), "http://127.0.0.1:%u/", port);
	t = t_new(OCSP_REQUIRED, url, 200);
	expect(t, g.good, REASON_CERT_OCSP, "no answer within 200 ms");
	t_free(t);
	close(fd);
}

static void
answer_signed_by_another_ca_is_refused(void **state)
{
	struct t *t = t_new(OCSP_REQUIRED, g.url, 5000);

	(void)state;
	t->responder = responder_start(M_OTHER_SIGNER);
	expect(t, g.good, REASON_CERT_OCSP, "signature does not verify");
	t_free(t);
}

static void
bad_http_answers_are_failures(void **state)
{
	struct t *t = t_new(OCSP_REQUIRED, g.url, 5000);

	(void)state;
	t->responder = responder_start(M_HTTP500);
	expect(t, g.good, REASON_CERT_OCSP, "HTTP status 500");
	t_free(t);
	t = t_new(OCSP_REQUIRED, g.url, 5000);
	t->responder = responder_start(M_GARBAGE);
	expect(t, g.good, REASON_CERT_OCSP, "not an OCSP response");
	t_free(t);
}

static void
responder_from_the_certificate_aia(void **state)
{
	struct t *t = t_new(OCSP_REQUIRED, NULL, 5000);
	FILE *fp;
	char line[256] = "";

	(void)state;
	t->responder = responder_start(M_OCSP);
	expect(t, g.with_aia, REASON_OK, "good");
	/* the request went to the AIA URL's path, as HTTP/1.0 */
	fp = fopen(g.log, "r");
	assert_non_null(fp);
	assert_non_null(fgets(line, sizeof(line), fp));
	fclose(fp);
	assert_string_equal(line, "POST /ocsp HTTP/1.0\n");
	/* no AIA and no ocsp_responder */
	expect(t, g.no_aia, REASON_CERT_OCSP, "no OCSP responder");
	t_free(t);
}

static void
concurrent_checks_share_one_request(void **state)
{
	struct t *t = t_new(OCSP_REQUIRED, g.url, 5000);
	struct answer a = { .base = t->base }, b = { .base = t->base };
	struct ocsp_stats st;

	(void)state;
	t->responder = responder_start(M_OCSP);
	assert_non_null(ocsp_check(t->o, g.good, g.ca, on_done, &a));
	assert_non_null(ocsp_check(t->o, g.good, g.ca, on_done, &b));
	wait_answer(t, &a);
	wait_answer(t, &b);
	assert_int_equal(a.reason, REASON_OK);
	assert_int_equal(b.reason, REASON_OK);
	ocsp_stats(t->o, &st);
	assert_int_equal(st.requests, 1);
	assert_int_equal(responder_requests(), 1);
	t_free(t);
}

static void
cancelled_check_never_calls_back_but_fills_the_cache(void **state)
{
	struct t *t = t_new(OCSP_REQUIRED, g.url, 5000);
	struct answer a = { .base = t->base }, b = { .base = t->base };
	struct ocsp_query *q;
	struct ocsp_stats st;
	int sync;

	(void)state;
	t->responder = responder_start(M_OCSP);
	q = ocsp_check(t->o, g.good, g.ca, on_done, &a);
	assert_non_null(q);
	/* b waits on the same request and sees it end */
	assert_non_null(ocsp_check(t->o, g.good, g.ca, on_done, &b));
	ocsp_cancel(q);
	wait_answer(t, &b);
	assert_int_equal(a.done, 0);
	ocsp_stats(t->o, &st);
	assert_int_equal(st.in_flight, 0);
	assert_int_equal(check(t, g.good, g.ca, NULL, &sync), REASON_OK);
	assert_true(sync);
	t_free(t);
}

static void
free_with_a_request_in_flight(void **state)
{
	uint16_t port;
	int fd = listen_local(&port);
	char url[64];
	struct t *t;
	struct answer a = { 0 };

	(void)state;
	snprintf(url, sizeof(url), "http://127.0.0.1:%u/", port);
	t = t_new(OCSP_REQUIRED, url, 5000);
	a.base = t->base;
	assert_non_null(ocsp_check(t->o, g.good, g.ca, on_done, &a));
	event_base_loop(t->base, EVLOOP_NONBLOCK);
	t_free(t);		/* no callback, nothing leaked (ASan) */
	assert_int_equal(a.done, 0);
	close(fd);
}

static void
responder_by_host_name(void **state)
{
	char url[64];
	struct t *t;

	(void)state;
	/* resolved asynchronously (evdns, /etc/hosts), never with a blocking
	 * getaddrinfo on the event loop */
	snprintf(url, sizeof(url), "http://localhost:%u/ocsp", g.port);
	t = t_new(OCSP_REQUIRED, url, 5000);
	t->responder = responder_start(M_OCSP);
	expect(t, g.good, REASON_OK, "good");
	t_free(t);
	/* a name that does not resolve (or whose lookup times out where a
	 * name server is configured but unreachable) */
	t = t_new(OCSP_REQUIRED, "http://no-such-host.invalid/", 1000);
	expect(t, g.good, REASON_CERT_OCSP, "http://no-such-host.invalid/: ");
	t_free(t);
}

static void
off_https_and_missing_issuer(void **state)
{
	struct t *t = t_new(OCSP_OFF, g.url, 5000);
	char detail[512];
	int sync;

	(void)state;
	assert_int_equal(check(t, g.revoked, g.ca, detail, &sync), REASON_OK);
	assert_true(sync);
	assert_string_equal(detail, "ocsp = off");
	t_free(t);

	t = t_new(OCSP_REQUIRED, "https://127.0.0.1:1/", 5000);
	expect(t, g.good, REASON_CERT_OCSP, "https OCSP responders are not supported");
	assert_int_equal(check(t, g.good, NULL, detail, &sync), REASON_CERT_OCSP);
	assert_true(sync);
	assert_non_null(strstr(detail, "issuer"));
	t_free(t);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(good_answer_is_ok_and_cached),
		cmocka_unit_test(revoked_answer_is_cert_revoked),
		cmocka_unit_test(unknown_answer_depends_on_the_mode),
		cmocka_unit_test(unreachable_responder_depends_on_the_mode),
		cmocka_unit_test(silent_responder_times_out),
		cmocka_unit_test(answer_signed_by_another_ca_is_refused),
		cmocka_unit_test(bad_http_answers_are_failures),
		cmocka_unit_test(responder_from_the_certificate_aia),
		cmocka_unit_test(concurrent_checks_share_one_request),
		cmocka_unit_test(cancelled_check_never_calls_back_but_fills_the_cache),
		cmocka_unit_test(free_with_a_request_in_flight),
		cmocka_unit_test(responder_by_host_name),
		cmocka_unit_test(off_https_and_missing_issuer),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
