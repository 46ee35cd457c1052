/*
 * test_proxyproto.c — the PROXY protocol parser (proxyproto.c), after
 * HAProxy's doc/proxy-protocol.txt: v1 and v2 headers as balancers send
 * them, fed whole and byte by byte; every malformed shape refused with its
 * rule; the header length never reaching into the TLS bytes behind it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <cmocka.h>

#include "proxyproto.h"

#define S(lit)	(const uint8_t *)(lit), (sizeof(lit) - 1)

static const uint8_t sig[12] = {
	0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A
};
/* the first bytes of a TLS ClientHello record */
static const uint8_t tls_hello[] = { 0x16, 0x03, 0x01, 0x02, 0x00, 0x01 };

/* ---- helpers ------------------------------------------------------------------ */

struct v2 {
	uint8_t b[PROXYPROTO_MAX_LEN + 64];
	size_t n;
};

static void
v2_start(struct v2 *h, uint8_t ver_cmd, uint8_t fam)
{
	memcpy(h->b, sig, sizeof(sig));
	h->b[12] = ver_cmd;
	h->b[13] = fam;
	h->b[14] = h->b[15] = 0;
	h->n = 16;
}

static void
v2_put(struct v2 *h, const void *p, size_t n)
{
	assert_true(h->n + n <= sizeof(h->b));
	memcpy(h->b + h->n, p, n);
	h->n += n;
}

static void
v2_put16(struct v2 *h, unsigned v)
{
	uint8_t x[2] = { (uint8_t)(v >> 8), (uint8_t)v };
	v2_put(h, x, 2);
}

static void
v2_tlv(struct v2 *h, uint8_t type, size_t len, uint8_t fill)
{
	v2_put(h, &type, 1);
	v2_put16(h, (unsigned)len);
	assert_true(h->n + len <= sizeof(h->b));
	memset(h->b + h->n, fill, len);
	h->n += len;
}

/* Set the length field from what was put after the fixed 16 bytes. */
static void
v2_finish(struct v2 *h)
{
	size_t len = h->n - 16;

	h->b[14] = (uint8_t)(len >> 8);
	h->b[15] = (uint8_t)len;
}

static void
v2_tcp4(struct v2 *h, const char *src, unsigned sport, const char *dst, unsigned dport)
{
	uint8_t a[4];

	assert_int_equal(inet_pton(AF_INET, src, a), 1);
	v2_put(h, a, 4);
	assert_int_equal(inet_pton(AF_INET, dst, a), 1);
	v2_put(h, a, 4);
	v2_put16(h, sport);
	v2_put16(h, dport);
}

static void
v2_tcp6(struct v2 *h, const char *src, unsigned sport, const char *dst, unsigned dport)
{
	uint8_t a[16];

	assert_int_equal(inet_pton(AF_INET6, src, a), 1);
	v2_put(h, a, 16);
	assert_int_equal(inet_pton(AF_INET6, dst, a), 1);
	v2_put(h, a, 16);
	v2_put16(h, sport);
	v2_put16(h, dport);
}

static void
addr_is(const struct sockaddr_storage *ss, socklen_t len, const char *ip, unsigned port)
{
	char buf[INET6_ADDRSTRLEN];

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
		assert_int_equal(len, sizeof(*in));
		inet_ntop(AF_INET, &in->sin_addr, buf, sizeof(buf));
		assert_string_equal(buf, ip);
		assert_int_equal(ntohs(in->sin_port), port);
	} else {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
		assert_int_equal(ss->ss_family, AF_INET6);
		assert_int_equal(len, sizeof(*in6));
		inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof(buf));
		assert_string_equal(buf, ip);
		assert_int_equal(ntohs(in6->sin6_port), port);
	}
}

static enum proxyproto_rc
parse(const uint8_t *b, size_t n, struct proxyproto_result *r, char *err, size_t errlen)
{
	err[0] = '\0';
	return proxyproto_parse(b, n, r, err, errlen);
}

/* Every proper prefix of a complete header needs more; the whole of it is
 * DONE with exactly its length, also with TLS bytes behind it. */
static void
incremental_done(const uint8_t *hdr, size_t n, struct proxyproto_result *out)
{
	uint8_t buf[PROXYPROTO_MAX_LEN + sizeof(tls_hello)];
	struct proxyproto_result r;
	char err[160];

	assert_true(n + sizeof(tls_hello) <= sizeof(buf));
	memcpy(buf, hdr, n);
	memcpy(buf + n, tls_hello, sizeof(tls_hello));
	for (size_t i = 0; i < n; i++) {
		enum proxyproto_rc rc = parse(buf, i, &r, err, sizeof(err));
		if (rc != PROXYPROTO_NEED_MORE)
			fail_msg("prefix of %zu/%zu bytes: rc %d (%s)", i, n, rc, err);
	}
	assert_int_equal(parse(buf, n, &r, err, sizeof(err)), PROXYPROTO_DONE);
	assert_int_equal(r.len, n);
	assert_int_equal(parse(buf, n + sizeof(tls_hello), out, err, sizeof(err)), PROXYPROTO_DONE);
	assert_int_equal(out->len, n);
}

static void
refused(const uint8_t *b, size_t n, const char *why)
{
	struct proxyproto_result r;
	char err[160];

	memset(&r, 0x5a, sizeof(r));
	if (parse(b, n, &r, err, sizeof(err)) != PROXYPROTO_ERROR)
		fail_msg("expected a refusal mentioning '%s' for %zu bytes", why, n);
	if (strstr(err, why) == NULL)
		fail_msg("error '%s' does not mention '%s'", err, why);
	assert_int_equal(((uint8_t *)&r)[0], 0x5a);	/* out untouched */
}

/* ---- version 1 ---------------------------------------------------------------- */

static void
v1_tcp4(void **state)
{
	static const char h[] = "PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n";
	struct proxyproto_result r;

	(void)state;
	incremental_done(S(h), &r);
	assert_int_equal(r.version, 1);
	assert_false(r.local);
	addr_is(&r.src, r.src_len, "192.0.2.10", 56324);
	addr_is(&r.dst, r.dst_len, "198.51.100.1", 443);
}

static void
v1_tcp6(void **state)
{
	static const char h[] = "PROXY TCP6 2001:db8::7 2001:db8::1 0 65535\r\n";
	struct proxyproto_result r;

	(void)state;
	incremental_done(S(h), &r);
	assert_false(r.local);
	addr_is(&r.src, r.src_len, "2001:db8::7", 0);
	addr_is(&r.dst, r.dst_len, "2001:db8::1", 65535);
}

static void
v1_unknown(void **state)
{
	static const char bare[] = "PROXY UNKNOWN\r\n";
	static const char with[] = "PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
	struct proxyproto_result r;

	(void)state;
	incremental_done(S(bare), &r);
	assert_true(r.local);
	assert_int_equal(r.version, 1);
	incremental_done(S(with), &r);
	assert_true(r.local);
}

static void
v1_longest_line(void **state)
{
	/* the spec's worst case, 107 bytes with CRLF */
	static const char h[] = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
	    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
	struct proxyproto_result r;

	(void)state;
	assert_int_equal(sizeof(h) - 1, PROXYPROTO_V1_MAX);
	incremental_done(S(h), &r);
	assert_true(r.local);
}

static void
v1_malformed(void **state)
{
	(void)state;
	refused(S("PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\n"), "control");
	refused(S("PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\rX"), "CR without LF");
	refused(S("PROXY TCP4  192.0.2.10 198.51.100.1 56324 443\r\n"), "single spaces");
	refused(S("PROXY TCP4 192.0.2.10 198.51.100.1 56324 443 \r\n"), "single spaces");
	refused(S("PROXY TCP4 192.0.2.10 198.51.100.1 56324\r\n"), "got 3");
	refused(S("PROXY TCP4 192.0.2.10 198.51.100.1 1 2 3\r\n"), "4 fields");
	refused(S("PROXY TCP4 192.0.2.10 198.51.100.1 65536 443\r\n"), "port");
	refused(S("PROXY TCP4 192.0.2.10 198.51.100.1 056 443\r\n"), "port");
	refused(S("PROXY TCP4 192.0.2.10 198.51.100.1 -1 443\r\n"), "port");
	refused(S("PROXY TCP4 2001:db8::7 198.51.100.1 1 443\r\n"), "not IPv4");
	refused(S("PROXY TCP4 192.0.2.300 198.51.100.1 1 443\r\n"), "not IPv4");
	refused(S("PROXY TCP6 192.0.2.10 2001:db8::1 1 443\r\n"), "not IPv6");
	refused(S("PROXY TCP5 192.0.2.10 198.51.100.1 1 443\r\n"), "'TCP5' is not");
	refused(S("PROXY TCP4\r\n"), "no addresses");
	refused(S("PROXY \r\n"), "is not TCP4");
	refused(S("proxy TCP4"), "first byte 0x70");
	refused(S("PROXX TCP4"), "not \"PROXY \"");
	refused(S("PROXY TCP4 192.0.2.10\x80"), "non-ASCII byte 0x80");
	refused(S("PROXY TCP4 192.0.2.10\0"), "0x00");
}

static void
v1_no_crlf_within_107_bytes(void **state)
{
	uint8_t b[200];
	struct proxyproto_result r;
	char err[160];

	(void)state;
	memcpy(b, "PROXY UNKNOWN ", 14);
	memset(b + 14, 'x', sizeof(b) - 14);
	/* 105 bytes without CR could still end with CRLF at 105..106 */
	assert_int_equal(parse(b, 105, &r, err, sizeof(err)), PROXYPROTO_NEED_MORE);
	refused(b, 106, "no CRLF within 107");
	refused(b, sizeof(b), "no CRLF within 107");
	/* CRLF at 106..107 makes a 108-byte line */
	b[106] = '\r';
	b[107] = '\n';
	refused(b, 108, "no CRLF within 107");
}

/* ---- not a PROXY header at all ---------------------------------------------------- */

static void
direct_tls_is_refused_at_its_first_byte(void **state)
{
	(void)state;
	refused(tls_hello, 1, "TLS handshake");
	refused(tls_hello, sizeof(tls_hello), "TLS handshake");
	refused(S("GET / HTTP/1.1\r\n"), "first byte 0x47");
	refused(S("PRI * HTTP/2.0"), "not \"PROXY \"");
}

static void
nothing_yet_needs_more(void **state)
{
	struct proxyproto_result r;
	char err[160];

	(void)state;
	assert_int_equal(parse((const uint8_t *)"", 0, &r, err, sizeof(err)), PROXYPROTO_NEED_MORE);
	assert_int_equal(parse(S("PRO"), &r, err, sizeof(err)), PROXYPROTO_NEED_MORE);
	assert_int_equal(parse(sig, 7, &r, err, sizeof(err)), PROXYPROTO_NEED_MORE);
}

/* ---- version 2 ---------------------------------------------------------------- */

static void
v2_proxy_tcp4(void **state)
{
	struct v2 h;
	struct proxyproto_result r;

	(void)state;
	v2_start(&h, 0x21, 0x11);
	v2_tcp4(&h, "127.0.0.2", 40001, "127.0.0.1", 8443);
	v2_finish(&h);
	incremental_done(h.b, h.n, &r);
	assert_int_equal(r.version, 2);
	assert_false(r.local);
	assert_int_equal(r.len, 28);
	addr_is(&r.src, r.src_len, "127.0.0.2", 40001);
	addr_is(&r.dst, r.dst_len, "127.0.0.1", 8443);
}

static void
v2_proxy_tcp6_with_tlvs(void **state)
{
	struct v2 h;
	struct proxyproto_result r;

	(void)state;
	v2_start(&h, 0x21, 0x21);
	v2_tcp6(&h, "2001:db8::7", 51000, "2001:db8::1", 443);
	v2_tlv(&h, 0x05, 8, 'u');	/* PP2_TYPE_UNIQUE_ID */
	v2_tlv(&h, 0x04, 0, 0);	/* PP2_TYPE_NOOP, empty */
	v2_tlv(&h, 0x02, 20, 'a');	/* PP2_TYPE_AUTHORITY */
	v2_finish(&h);
	incremental_done(h.b, h.n, &r);
	assert_false(r.local);
	assert_int_equal(r.len, 16 + 36 + 11 + 3 + 23);
	addr_is(&r.src, r.src_len, "2001:db8::7", 51000);
	addr_is(&r.dst, r.dst_len, "2001:db8::1", 443);
}

static void
v2_local_keeps_the_connection_addresses(void **state)
{
	struct v2 h;
	struct proxyproto_result r;

	(void)state;
	/* a health check: no address block at all */
	v2_start(&h, 0x20, 0x00);
	v2_finish(&h);
	incremental_done(h.b, h.n, &r);
	assert_true(r.local);
	assert_int_equal(r.len, 16);
	/* LOCAL with a family and a block: both discarded, unchecked */
	v2_start(&h, 0x20, 0x11);
	v2_put(&h, "\x01\x02\x03", 3);
	v2_finish(&h);
	incremental_done(h.b, h.n, &r);
	assert_true(r.local);
	assert_int_equal(r.len, 19);
	/* PROXY with family UNSPEC: no address either */
	v2_start(&h, 0x21, 0x00);
	v2_tlv(&h, 0x04, 2, 0);
	v2_finish(&h);
	incremental_done(h.b, h.n, &r);
	assert_true(r.local);
	assert_int_equal(r.len, 21);
}

static void
v2_malformed(void **state)
{
	struct v2 h;
	uint8_t b[16];

	(void)state;
	memcpy(b, sig, sizeof(sig));
	b[5] = 0x0E;
	refused(b, 6, "bad v2 signature");
	memcpy(b, sig, sizeof(sig));
	b[12] = 0x11;
	refused(b, 13, "version 1, expected 2");
	b[12] = 0x22;
	refused(b, 13, "unknown command 2");

	v2_start(&h, 0x21, 0x12);
	v2_tcp4(&h, "127.0.0.2", 1, "127.0.0.1", 2);
	v2_finish(&h);
	refused(h.b, h.n, "UDP");
	v2_start(&h, 0x21, 0x31);
	v2_put(&h, "\0\0\0\0", 4);
	v2_finish(&h);
	refused(h.b, h.n, "UNIX");
	v2_start(&h, 0x21, 0x41);
	v2_finish(&h);
	refused(h.b, h.n, "unknown address family");

	/* an address block shorter than its family */
	v2_start(&h, 0x21, 0x11);
	v2_put(&h, "\x7f\0\0\x02\x7f\0\0\x01", 8);
	v2_finish(&h);
	refused(h.b, h.n, "TCP4 address block shorter");
	v2_start(&h, 0x21, 0x21);
	v2_tcp4(&h, "127.0.0.2", 1, "127.0.0.1", 2);
	v2_finish(&h);
	refused(h.b, h.n, "TCP6 address block shorter");

	/* TLVs that do not fit */
	v2_start(&h, 0x21, 0x11);
	v2_tcp4(&h, "127.0.0.2", 1, "127.0.0.1", 2);
	v2_put(&h, "\x04\x00", 2);
	v2_finish(&h);
	refused(h.b, h.n, "truncated TLV");
	v2_start(&h, 0x21, 0x11);
	v2_tcp4(&h, "127.0.0.2", 1, "127.0.0.1", 2);
	v2_put(&h, "\x05\x00\x09" "abc", 6);
	v2_finish(&h);
	refused(h.b, h.n, "TLV of type 0x05 runs past");
}

static void
v2_version_nibble_is_checked_before_the_rest_arrives(void **state)
{
	uint8_t b[13];

	(void)state;
	memcpy(b, sig, sizeof(sig));
	b[12] = 0x00;
	refused(b, 13, "version 0");
}

static void
v2_length_bounds(void **state)
{
	struct v2 h;
	struct proxyproto_result r;
	char err[160];

	(void)state;
	/* the largest header we take: TLVs up to exactly the limit */
	v2_start(&h, 0x21, 0x11);
	v2_tcp4(&h, "127.0.0.2", 1, "127.0.0.1", 2);
	v2_tlv(&h, 0x04, PROXYPROTO_MAX_LEN - h.n - 3, 0);
	v2_finish(&h);
	assert_int_equal(h.n, PROXYPROTO_MAX_LEN);
	assert_int_equal(parse(h.b, h.n, &r, err, sizeof(err)), PROXYPROTO_DONE);
	assert_int_equal(r.len, PROXYPROTO_MAX_LEN);
	assert_int_equal(parse(h.b, h.n - 1, &r, err, sizeof(err)), PROXYPROTO_NEED_MORE);

	/* one more byte: refused as soon as the length field is seen */
	v2_start(&h, 0x21, 0x11);
	h.b[14] = (uint8_t)((PROXYPROTO_MAX_LEN - 16 + 1) >> 8);
	h.b[15] = (uint8_t)(PROXYPROTO_MAX_LEN - 16 + 1);
	refused(h.b, 16, "exceeds our limit");
	/* the format's maximum, 16 + 65535 */
	h.b[14] = h.b[15] = 0xff;
	refused(h.b, 16, "exceeds our limit");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(v1_tcp4),
		cmocka_unit_test(v1_tcp6),
		cmocka_unit_test(v1_unknown),
		cmocka_unit_test(v1_longest_line),
		cmocka_unit_test(v1_malformed),
		cmocka_unit_test(v1_no_crlf_within_107_bytes),
		cmocka_unit_test(direct_tls_is_refused_at_its_first_byte),
		cmocka_unit_test(nothing_yet_needs_more),
		cmocka_unit_test(v2_proxy_tcp4),
		cmocka_unit_test(v2_proxy_tcp6_with_tlvs),
		cmocka_unit_test(v2_local_keeps_the_connection_addresses),
		cmocka_unit_test(v2_malformed),
		cmocka_unit_test(v2_version_nibble_is_checked_before_the_rest_arrives),
		cmocka_unit_test(v2_length_bounds),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
