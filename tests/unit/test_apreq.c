/*
 * test_apreq.c — apreq.c without a KDC: the DER writer at the length-form
 * edges and for integers, KerberosTime both ways, the AP-REP and
 * EncAPRepPart parsers against malformed input (truncated, wrong tags,
 * lengths past the end, trailing bytes, huge or non-DER lengths, values
 * out of range: each a named error, none read past its input under ASan),
 * and round trips on a made-up ticket (a random AES-256 session key and a
 * placeholder ticket blob): the AP-REQ's fields, its authenticator
 * decrypted here with krb5_c_decrypt (usage 11) field by field, and
 * AP-REPs made here (our DER + krb5_c_encrypt, usage 12) that verify —
 * under the session key, under the subkey — or do not (another ctime,
 * another key, another usage, a flipped byte, a malformed plaintext);
 * subkeys fresh across the random pool's refills and in a forked child.
 * The token and reply round trips run on both crypto routes: an
 * aes256-cts-hmac-sha1-96 session key (kcrypt.c) and an
 * aes256-cts-hmac-sha384-192 one (libkrb5).
 * The real acceptors (MIT through python-gssapi, Apache mod_auth_gssapi)
 * take these tokens in tests/integration/test_s4u_fast.py.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

#include <cmocka.h>
#include <krb5.h>

#include "apreq.h"

/* ---- the DER writer ---------------------------------------------------------------- */

/* One OCTET STRING of n bytes: its header is hdr (hlen bytes). */
static void
expect_octets_header(size_t n, const unsigned char *hdr, size_t hlen)
{
	unsigned char *buf = malloc(n + 16), *content = malloc(n + 1);
	struct apreq_der w;
	const unsigned char *out;
	size_t len = 0;

	assert_non_null(buf);
	assert_non_null(content);
	memset(content, 0x5a, n + 1);
	apreq_der_init(&w, buf, n + 16);
	apreq_der_tlv(&w, 0x04, content, n);
	assert_non_null(out = apreq_der_result(&w, &len));
	if (len != hlen + n || memcmp(out, hdr, hlen) != 0)
		fail_msg("%zu content bytes: header %02x %02x %02x, total %zu; expected %zu header "
		    "bytes starting %02x %02x", n, out[0], out[1], len > 2 ? out[2] : 0, len, hlen,
		    hdr[0], hdr[1]);
	assert_memory_equal(out + hlen, content, n);
	/* the same length through mark/wrap */
	apreq_der_init(&w, buf, n + 16);
	size_t m = apreq_der_mark(&w);
	apreq_der_bytes(&w, content, n);
	apreq_der_wrap(&w, 0x30, m);
	assert_non_null(out = apreq_der_result(&w, &len));
	assert_int_equal(len, hlen + n);
	assert_int_equal(out[0], 0x30);
	assert_memory_equal(out + 1, hdr + 1, hlen - 1);
	free(buf);
	free(content);
}

static void
test_der_lengths_take_the_shortest_form_at_each_edge(void **state)
{
	(void)state;
	expect_octets_header(0, (const unsigned char *)"\x04\x00", 2);
	expect_octets_header(127, (const unsigned char *)"\x04\x7f", 2);
	expect_octets_header(128, (const unsigned char *)"\x04\x81\x80", 3);
	expect_octets_header(255, (const unsigned char *)"\x04\x81\xff", 3);
	expect_octets_header(256, (const unsigned char *)"\x04\x82\x01\x00", 4);
	expect_octets_header(65535, (const unsigned char *)"\x04\x82\xff\xff", 4);
	expect_octets_header(65536, (const unsigned char *)"\x04\x83\x01\x00\x00", 5);
}

static void
expect_int(int64_t v, const char *hex)
{
	unsigned char buf[16];
	struct apreq_der w;
	const unsigned char *out;
	size_t len = 0;
	char got[40];

	apreq_der_init(&w, buf, sizeof(buf));
	apreq_der_int(&w, v);
	assert_non_null(out = apreq_der_result(&w, &len));
	for (size_t i = 0; i < len; i++)
		snprintf(got + 2 * i, sizeof(got) - 2 * i, "%02x", out[i]);
	if (strcmp(got, hex) != 0)
		fail_msg("INTEGER %lld: expected %s, got %s", (long long)v, hex, got);
}

static void
test_der_integers_are_shortest_twos_complement(void **state)
{
	(void)state;
	expect_int(0, "020100");
	expect_int(5, "020105");
	expect_int(127, "02017f");
	expect_int(128, "02020080");
	expect_int(255, "020200ff");
	expect_int(256, "02020100");
	expect_int(-1, "0201ff");
	expect_int(-128, "020180");
	expect_int(-129, "0202ff7f");
	expect_int(0x8003, "0203008003");		/* the GSS checksum type */
	expect_int(0x3fffffff, "02043fffffff");	/* the largest first seq-number */
	expect_int(0xffffffffLL, "020500ffffffff");	/* UInt32 max */
	expect_int(INT32_MIN, "020480000000");
}

static void
test_der_overflow_is_sticky_and_yields_nothing(void **state)
{
	unsigned char buf[8];
	struct apreq_der w;
	size_t len = 99;

	(void)state;
	apreq_der_init(&w, buf, sizeof(buf));
	apreq_der_tlv(&w, 0x04, "123456", 6);		/* 8 bytes: fits exactly */
	assert_non_null(apreq_der_result(&w, &len));
	assert_int_equal(len, 8);
	apreq_der_int(&w, 1);				/* no room */
	assert_null(apreq_der_result(&w, &len));
	apreq_der_init(&w, buf, sizeof(buf));
	apreq_der_tlv(&w, 0x04, "1234567", 7);		/* 9 bytes: header does not fit */
	assert_null(apreq_der_result(&w, &len));
	assert_null(apreq_der_reserve(&w, 1));
	/* a mark from another writer state is refused, not trusted */
	apreq_der_init(&w, buf, sizeof(buf));
	apreq_der_wrap(&w, 0x30, sizeof(buf) + 1);
	assert_null(apreq_der_result(&w, &len));
}

/* ---- KerberosTime ------------------------------------------------------------------ */

static void
test_kerberos_time_both_ways(void **state)
{
	static const struct {
		uint32_t t;
		const char *s;
	} v[] = {
		{ 0, "19700101000000Z" },
		{ 951782400, "20000229000000Z" },		/* a leap day of a /400 year */
		{ 951868799, "20000229235959Z" },
		{ 1700000000, "20231114221320Z" },
		{ 2147483647, "20380119031407Z" },
		{ 2147483648u, "20380119031408Z" },		/* past int32: krb5 wraps, we do not */
		{ 4102444800u, "21000101000000Z" },
	};
	char out[APREQ_TIME_LEN];
	int64_t back;

	(void)state;
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		apreq_time_format(v[i].t, out);
		if (memcmp(out, v[i].s, APREQ_TIME_LEN) != 0)
			fail_msg("%u: expected %s, got %.15s", v[i].t, v[i].s, out);
		assert_int_equal(apreq_time_parse((const unsigned char *)v[i].s, 15, &back), 0);
		assert_int_equal(back, (int64_t)v[i].t);
	}
	/* not KerberosTimes */
	static const char *bad[] = {
		"20230229000000Z",	/* no 29 February in 2023 */
		"21000229000000Z",	/* nor in 2100 */
		"20231301000000Z", "20231100000000Z", "20231131000000Z",
		"20231114240000Z", "20231114236000Z", "20231114235960Z",
		"20231114221320z", "2023111422132aZ", "20231114221320+",
		" 0231114221320Z",
		"19691231235959Z",	/* before the epoch */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (apreq_time_parse((const unsigned char *)bad[i], 15, &back) == 0)
			fail_msg("%s parsed as a KerberosTime", bad[i]);
	assert_int_equal(apreq_time_parse((const unsigned char *)"20231114221320Z", 14, &back), -1);
	assert_int_equal(apreq_time_parse((const unsigned char *)"20231114221320.5Z", 17, &back), -1);
}

/* ---- building AP-REPs and EncAPRepParts here ----------------------------------------- */

static void
ctxint(struct apreq_der *w, unsigned n, int64_t v)
{
	size_t m = apreq_der_mark(w);

	apreq_der_int(w, v);
	apreq_der_wrap(w, (unsigned char)(0xa0 | n), m);
}

/* An AP-REP { pvno, msg-type, enc-part { etype, [kvno], cipher } } into
 * buf; returns its length. */
static size_t
make_rep(unsigned char *buf, size_t cap, int64_t pvno, int64_t type, int64_t etype,
    int64_t kvno, const unsigned char *cipher, size_t clen)
{
	struct apreq_der w;
	const unsigned char *out;
	size_t m0, m, len = 0;

	apreq_der_init(&w, buf, cap);
	m0 = apreq_der_mark(&w);
	m = apreq_der_mark(&w);
	apreq_der_tlv(&w, 0x04, cipher, clen);
	apreq_der_wrap(&w, 0xa2, m);
	if (kvno >= 0)
		ctxint(&w, 1, kvno);
	ctxint(&w, 0, etype);
	apreq_der_wrap(&w, 0x30, m);
	apreq_der_wrap(&w, 0xa2, m);
	ctxint(&w, 1, type);
	ctxint(&w, 0, pvno);
	apreq_der_wrap(&w, 0x30, m0);
	apreq_der_wrap(&w, 0x6f, m0);
	assert_non_null(out = apreq_der_result(&w, &len));
	memmove(buf, out, len);
	return len;
}

/* An EncAPRepPart { ctime, cusec, [subkey], [seq-number] } into buf. */
static size_t
make_enc_part(unsigned char *buf, size_t cap, uint32_t ctime, int64_t cusec, int subkey,
    int64_t seq)
{
	static const unsigned char key[32] = { 1, 2, 3 };
	char when[APREQ_TIME_LEN];
	struct apreq_der w;
	const unsigned char *out;
	size_t m0, m, len = 0;

	apreq_time_format(ctime, when);
	apreq_der_init(&w, buf, cap);
	m0 = apreq_der_mark(&w);
	if (seq >= 0)
		ctxint(&w, 3, seq);
	if (subkey) {
		m = apreq_der_mark(&w);
		apreq_der_tlv(&w, 0x04, key, sizeof(key));
		apreq_der_wrap(&w, 0xa1, m);
		ctxint(&w, 0, ENCTYPE_AES256_CTS_HMAC_SHA1_96);
		apreq_der_wrap(&w, 0x30, m);
		apreq_der_wrap(&w, 0xa2, m);
	}
	ctxint(&w, 1, cusec);
	m = apreq_der_mark(&w);
	apreq_der_tlv(&w, 0x18, when, sizeof(when));
	apreq_der_wrap(&w, 0xa0, m);
	apreq_der_wrap(&w, 0x30, m0);
	apreq_der_wrap(&w, 0x7b, m0);
	assert_non_null(out = apreq_der_result(&w, &len));
	memmove(buf, out, len);
	return len;
}

static void
expect_rep_refused(const unsigned char *in, size_t len, const char *what)
{
	struct apreq_enc_part e;
	const char *cause = NULL;
	/* a copy of exactly len bytes: ASan sees any read past it */
	unsigned char *copy = malloc(len > 0 ? len : 1);

	assert_non_null(copy);
	if (len > 0)
		memcpy(copy, in, len);
	if (apreq_parse_rep(copy, len, &e, &cause) == 0)
		fail_msg("%s: parsed as an AP-REP", what);
	if (cause == NULL || cause[0] == '\0')
		fail_msg("%s: refused without a cause", what);
	free(copy);
}

static void
expect_part_refused(const unsigned char *in, size_t len, const char *what)
{
	int64_t ct;
	int32_t cu;
	const char *cause = NULL;
	unsigned char *copy = malloc(len > 0 ? len : 1);

	assert_non_null(copy);
	if (len > 0)
		memcpy(copy, in, len);
	if (apreq_parse_enc_rep_part(copy, len, &ct, &cu, &cause) == 0)
		fail_msg("%s: parsed as an EncAPRepPart", what);
	if (cause == NULL || cause[0] == '\0')
		fail_msg("%s: refused without a cause", what);
	free(copy);
}

static void
test_ap_rep_parser_takes_a_well_formed_reply(void **state)
{
	unsigned char buf[512], cipher[100];
	struct apreq_enc_part e;
	const char *cause = NULL;
	size_t n;

	(void)state;
	memset(cipher, 0xc3, sizeof(cipher));
	n = make_rep(buf, sizeof(buf), 5, 15, 18, -1, cipher, sizeof(cipher));
	assert_int_equal(apreq_parse_rep(buf, n, &e, &cause), 0);
	assert_int_equal(e.etype, 18);
	assert_int_equal(e.has_kvno, 0);
	assert_int_equal(e.cipher_len, sizeof(cipher));
	assert_ptr_equal(e.cipher, buf + n - sizeof(cipher));
	/* with a kvno (RFC 4120 allows it) */
	n = make_rep(buf, sizeof(buf), 5, 15, 17, 0xfffffffeLL, cipher, 20);
	assert_int_equal(apreq_parse_rep(buf, n, &e, &cause), 0);
	assert_int_equal(e.etype, 17);
	assert_int_equal(e.has_kvno, 1);
	assert_int_equal(e.kvno, 0xfffffffeu);
}

static void
test_ap_rep_parser_refuses_malformed_input_with_a_cause(void **state)
{
	unsigned char good[512], bad[600], cipher[200];
	size_t n;

	(void)state;
	memset(cipher, 0x11, sizeof(cipher));
	n = make_rep(good, sizeof(good), 5, 15, 18, -1, cipher, sizeof(cipher));
	/* every truncation */
	for (size_t i = 0; i < n; i++)
		expect_rep_refused(good, i, "a truncated AP-REP");
	/* trailing bytes */
	memcpy(bad, good, n);
	bad[n] = 0;
	expect_rep_refused(bad, n + 1, "an AP-REP with a trailing byte");
	/* wrong outer tags */
	memcpy(bad, good, n);
	bad[0] = 0x6e;
	expect_rep_refused(bad, n, "an AP-REQ tag");
	bad[0] = 0x7e;
	expect_rep_refused(bad, n, "a KRB-ERROR tag");
	memcpy(bad, good, n);
	{
		size_t i = (good[1] & 0x80) ? 2 + (good[1] & 0x7fu) : 2;	/* the SEQUENCE */
		assert_int_equal(good[i], 0x30);
		bad[i] = 0x31;
		expect_rep_refused(bad, n, "a SET in place of the SEQUENCE");
	}
	/* pvno, msg-type */
	n = make_rep(bad, sizeof(bad), 4, 15, 18, -1, cipher, 20);
	expect_rep_refused(bad, n, "pvno 4");
	n = make_rep(bad, sizeof(bad), 5, 14, 18, -1, cipher, 20);
	expect_rep_refused(bad, n, "msg-type 14");
	n = make_rep(bad, sizeof(bad), 5, 30, 18, -1, cipher, 20);
	expect_rep_refused(bad, n, "msg-type 30");
	n = make_rep(bad, sizeof(bad), 5, 15, 0x80000000LL, -1, cipher, 20);
	expect_rep_refused(bad, n, "an etype past Int32");
	n = make_rep(bad, sizeof(bad), 5, 15, 18, 0x100000000LL, cipher, 20);
	expect_rep_refused(bad, n, "a kvno past UInt32");
	n = make_rep(bad, sizeof(bad), 5, 15, 18, -5, cipher, 0);
	expect_rep_refused(bad, n, "an empty cipher");
	/* lengths: huge, past the end, 5 length bytes, indefinite, not the shortest */
	{
		static const unsigned char huge[] = { 0x6f, 0x84, 0xff, 0xff, 0xff, 0xff, 0x30, 0x00 };
		static const unsigned char five[] = { 0x6f, 0x85, 0x00, 0x00, 0x00, 0x00, 0x02, 0x30, 0x00 };
		static const unsigned char indef[] = { 0x6f, 0x80, 0x30, 0x00, 0x00, 0x00 };
		static const unsigned char longform[] = { 0x6f, 0x81, 0x02, 0x30, 0x00 };
		static const unsigned char lead0[] = { 0x6f, 0x82, 0x00, 0x82, 0x30, 0x00 };
		static const unsigned char past[] = { 0x6f, 0x05, 0x30, 0x03, 0xa0, 0x01 };
		static const unsigned char empty_seq[] = { 0x6f, 0x02, 0x30, 0x00 };
		expect_rep_refused(huge, sizeof(huge), "a 4 GiB length");
		expect_rep_refused(five, sizeof(five), "a length of 5 bytes");
		expect_rep_refused(indef, sizeof(indef), "an indefinite length");
		expect_rep_refused(longform, sizeof(longform), "a long-form length below 128");
		expect_rep_refused(lead0, sizeof(lead0), "a length with a leading zero");
		expect_rep_refused(past, sizeof(past), "a length past the end");
		expect_rep_refused(empty_seq, sizeof(empty_seq), "an empty SEQUENCE");
		expect_rep_refused(NULL, 0, "nothing");
	}
	/* a non-shortest INTEGER: pvno 02 02 00 05 */
	{
		static const unsigned char nonmin[] = { 0x6f, 0x13, 0x30, 0x11, 0xa0, 0x04, 0x02, 0x02,
		    0x00, 0x05, 0xa1, 0x03, 0x02, 0x01, 0x0f, 0xa2, 0x04, 0x30, 0x02, 0xa0, 0x00 };
		expect_rep_refused(nonmin, sizeof(nonmin), "a non-shortest pvno");
	}
	/* a field after enc-part */
	{
		size_t m = make_rep(bad, sizeof(bad), 5, 15, 18, -1, cipher, 20);
		/* rebuild with an extra [3] after the enc-part: 6f L 30 L ... a3 03 02 01 00 */
		unsigned char x[128];
		size_t inner = m - 4;	/* 6f LL 30 LL (short forms: under 128 bytes) */
		assert_true(m < 120);
		x[0] = 0x6f;
		x[1] = (unsigned char)(inner + 2 + 5);
		x[2] = 0x30;
		x[3] = (unsigned char)(inner + 5);
		memcpy(x + 4, bad + 4, inner);
		memcpy(x + 4 + inner, "\xa3\x03\x02\x01\x00", 5);
		expect_rep_refused(x, 4 + inner + 5, "an unknown field after enc-part");
	}
}

static void
test_enc_rep_part_parser(void **state)
{
	unsigned char buf[256], bad[300];
	int64_t ct = 0;
	int32_t cu = 0;
	const char *cause = NULL;
	size_t n;

	(void)state;
	n = make_enc_part(buf, sizeof(buf), 1700000000, 999999, 1, 0x3fffffff);
	assert_int_equal(apreq_parse_enc_rep_part(buf, n, &ct, &cu, &cause), 0);
	assert_int_equal(ct, 1700000000);
	assert_int_equal(cu, 999999);
	n = make_enc_part(buf, sizeof(buf), 1700000001, 0, 0, -1);
	assert_int_equal(apreq_parse_enc_rep_part(buf, n, &ct, &cu, &cause), 0);
	assert_int_equal(ct, 1700000001);
	assert_int_equal(cu, 0);
	n = make_enc_part(buf, sizeof(buf), 1700000000, 5, 1, 0xffffffffLL);
	assert_int_equal(apreq_parse_enc_rep_part(buf, n, &ct, &cu, &cause), 0);

	n = make_enc_part(buf, sizeof(buf), 1700000000, 5, 1, 7);
	for (size_t i = 0; i < n; i++)
		expect_part_refused(buf, i, "a truncated EncAPRepPart");
	memcpy(bad, buf, n);
	bad[n] = 0x00;
	expect_part_refused(bad, n + 1, "a trailing byte");
	memcpy(bad, buf, n);
	bad[0] = 0x7a;
	expect_part_refused(bad, n, "[APPLICATION 26]");
	n = make_enc_part(bad, sizeof(bad), 1700000000, 1000000, 0, -1);
	expect_part_refused(bad, n, "cusec 1000000");
	n = make_enc_part(bad, sizeof(bad), 1700000000, -1, 0, -1);
	expect_part_refused(bad, n, "cusec -1");
	n = make_enc_part(bad, sizeof(bad), 1700000000, 1, 0, 0x100000000LL);
	expect_part_refused(bad, n, "seq-number past UInt32");
	n = make_enc_part(bad, sizeof(bad), 1700000000, 1, 0, -1);
	/* 7b LL 30 LL a0 11 18 0f <15>: break the time's 'Z' */
	assert_int_equal(bad[4], 0xa0);
	bad[4 + 4 + 14] = 'z';
	expect_part_refused(bad, n, "a ctime ending in 'z'");
	/* a field out of order: [3] before [1] */
	{
		static const unsigned char order[] = { 0x7b, 0x1f, 0x30, 0x1d, 0xa0, 0x11, 0x18, 0x0f,
		    '2', '0', '2', '3', '1', '1', '1', '4', '2', '2', '1', '3', '2', '0', 'Z',
		    0xa3, 0x03, 0x02, 0x01, 0x01, 0xa1, 0x03, 0x02, 0x01, 0x01 };
		expect_part_refused(order, sizeof(order), "seq-number before cusec");
	}
}

/* ---- round trips on a made-up ticket --------------------------------------------------- */

struct fixture {
	krb5_context kc;
	krb5_creds creds;
	unsigned char ticket[300];
	struct apreq_ticket *t;
};

/* The fixture on a session key of enctype: aes256-cts-hmac-sha1-96 takes
 * kcrypt's route, aes256-cts-hmac-sha384-192 libkrb5's (apreq.c). */
static int
setup_enctype(void **state, krb5_enctype enctype)
{
	struct fixture *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	assert_int_equal(krb5_init_context(&f->kc), 0);
	assert_int_equal(krb5_parse_name(f->kc, "alice@EXAMPLE.TEST", &f->creds.client), 0);
	assert_int_equal(krb5_parse_name(f->kc, "HTTP/exchange.example.test@EXAMPLE.TEST",
	    &f->creds.server), 0);
	assert_int_equal(krb5_c_make_random_key(f->kc, enctype, &f->creds.keyblock), 0);
	/* a placeholder Ticket: [APPLICATION 1] with 296 bytes of filler */
	f->ticket[0] = 0x61;
	f->ticket[1] = 0x82;
	f->ticket[2] = 0x01;
	f->ticket[3] = 0x28;
	for (size_t i = 4; i < sizeof(f->ticket); i++)
		f->ticket[i] = (unsigned char)i;
	f->creds.ticket.length = sizeof(f->ticket);
	f->creds.ticket.data = (char *)f->ticket;
	f->creds.times.endtime = (krb5_timestamp)(time(NULL) + 3600);
	assert_int_equal(apreq_ticket_new(f->kc, &f->creds, &f->t), 0);
	*state = f;
	return 0;
}

static int
setup(void **state)
{
	return setup_enctype(state, ENCTYPE_AES256_CTS_HMAC_SHA1_96);
}

static int
setup_sha2(void **state)
{
	return setup_enctype(state, ENCTYPE_AES256_CTS_HMAC_SHA384_192);
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	apreq_ticket_free(f->kc, f->t);
	f->creds.ticket.data = NULL;
	f->creds.ticket.length = 0;
	krb5_free_cred_contents(f->kc, &f->creds);
	krb5_free_context(f->kc);
	free(f);
	return 0;
}

/* The TLV at *p must have tag; returns its value, advances *p. */
static const unsigned char *
take(const unsigned char **p, const unsigned char *end, unsigned char tag, size_t *len)
{
	const unsigned char *q = *p;
	size_t n;

	assert_true(end - q >= 2);
	if (*q != tag)
		fail_msg("expected tag 0x%02x, found 0x%02x", tag, *q);
	q++;
	if (*q < 0x80) {
		n = *q++;
	} else {
		unsigned k = *q++ & 0x7fu;
		assert_true(k >= 1 && k <= 3);
		for (n = 0; k > 0; k--)
			n = n << 8 | *q++;
		assert_true(n >= 0x80);		/* shortest form */
	}
	assert_true((size_t)(end - q) >= n);
	*len = n;
	*p = q + n;
	return q;
}

static int64_t
take_ctx_int(const unsigned char **p, const unsigned char *end, unsigned n)
{
	const unsigned char *e, *v;
	size_t elen, vlen;
	int64_t x;

	e = take(p, end, (unsigned char)(0xa0 | n), &elen);
	v = take(&e, e + elen, 0x02, &vlen);
	assert_true(vlen >= 1 && vlen <= 5);
	x = (v[0] & 0x80) ? -1 : 0;
	for (size_t i = 0; i < vlen; i++)
		x = (int64_t)((uint64_t)x << 8 | v[i]);
	return x;
}

static const unsigned char CKSUM[24] = {
	16, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x32, 0, 0, 0
};

/* What a token's authenticator says, read back with the session key. */
struct authent {
	int64_t cusec, seq, subkey_etype;
	char ctime[APREQ_TIME_LEN + 1];
	unsigned char subkey[32];
	size_t subkey_len;
	int has_authdata;
	unsigned char authdata[64];
	size_t authdata_len;
	unsigned ap_options;
	size_t cipher_len;
};

static void
read_token(struct fixture *f, const unsigned char *msg, size_t len, struct authent *a)
{
	const unsigned char *p = msg, *end = msg + len, *s, *v, *e, *c;
	size_t n, slen, vlen, elen, clen;
	krb5_enc_data ed;
	krb5_data pd;
	unsigned char plain[1024];

	memset(a, 0, sizeof(*a));
	/* AP-REQ */
	s = take(&p, end, 0x6e, &n);
	assert_ptr_equal(p, end);
	p = s;
	end = s + n;
	s = take(&p, end, 0x30, &slen);
	assert_ptr_equal(p, end);
	p = s;
	assert_int_equal(take_ctx_int(&p, end, 0), 5);
	assert_int_equal(take_ctx_int(&p, end, 1), 14);
	e = take(&p, end, 0xa2, &elen);
	v = take(&e, e + elen, 0x03, &vlen);
	assert_int_equal(vlen, 5);			/* 32 bits, none unused */
	assert_int_equal(v[0], 0);
	a->ap_options = (unsigned)v[1] << 24 | (unsigned)v[2] << 16 | (unsigned)v[3] << 8 | v[4];
	e = take(&p, end, 0xa3, &elen);		/* the ticket, as given */
	assert_int_equal(elen, sizeof(f->ticket));
	assert_memory_equal(e, f->ticket, sizeof(f->ticket));
	e = take(&p, end, 0xa4, &elen);
	assert_ptr_equal(p, end);
	s = take(&e, e + elen, 0x30, &slen);
	p = s;
	end = s + slen;
	assert_int_equal(take_ctx_int(&p, end, 0), f->creds.keyblock.enctype);
	e = take(&p, end, 0xa2, &elen);		/* no kvno [1] */
	assert_ptr_equal(p, end);
	c = take(&e, e + elen, 0x04, &clen);
	a->cipher_len = clen;

	/* the authenticator, decrypted here (usage 11) */
	memset(&ed, 0, sizeof(ed));
	ed.enctype = f->creds.keyblock.enctype;
	ed.ciphertext.length = (unsigned)clen;
	ed.ciphertext.data = (char *)c;
	pd.length = sizeof(plain);
	pd.data = (char *)plain;
	assert_int_equal(krb5_c_decrypt(f->kc, &f->creds.keyblock, KRB5_KEYUSAGE_AP_REQ_AUTH, NULL,
	    &ed, &pd), 0);
	p = plain;
	end = plain + pd.length;
	s = take(&p, end, 0x62, &n);
	assert_ptr_equal(p, end);
	p = s;
	s = take(&p, end, 0x30, &slen);
	p = s;
	assert_int_equal(take_ctx_int(&p, end, 0), 5);		/* authenticator-vno */
	e = take(&p, end, 0xa1, &elen);				/* crealm */
	v = take(&e, e + elen, 0x1b, &vlen);
	assert_int_equal(vlen, 12);
	assert_memory_equal(v, "EXAMPLE.TEST", 12);
	e = take(&p, end, 0xa2, &elen);				/* cname */
	{
		const unsigned char *pn = take(&e, e + elen, 0x30, &n), *pe = pn + n, *ns;
		size_t nlen;
		assert_int_equal(take_ctx_int(&pn, pe, 0), KRB5_NT_PRINCIPAL);
		ns = take(&pn, pe, 0xa1, &nlen);
		ns = take(&ns, ns + nlen, 0x30, &nlen);
		v = take(&ns, ns + nlen, 0x1b, &vlen);
		assert_int_equal(vlen, 5);
		assert_memory_equal(v, "alice", 5);
		assert_ptr_equal(pn, pe);
	}
	e = take(&p, end, 0xa3, &elen);				/* cksum */
	{
		const unsigned char *ck = take(&e, e + elen, 0x30, &n), *ce = ck + n;
		assert_int_equal(take_ctx_int(&ck, ce, 0), 0x8003);
		ck = take(&ck, ce, 0xa1, &n);
		v = take(&ck, ck + n, 0x04, &vlen);
		assert_int_equal(vlen, sizeof(CKSUM));
		assert_memory_equal(v, CKSUM, sizeof(CKSUM));
	}
	a->cusec = take_ctx_int(&p, end, 4);
	e = take(&p, end, 0xa5, &elen);
	v = take(&e, e + elen, 0x18, &vlen);
	assert_int_equal(vlen, APREQ_TIME_LEN);
	memcpy(a->ctime, v, APREQ_TIME_LEN);
	e = take(&p, end, 0xa6, &elen);				/* subkey */
	{
		const unsigned char *k = take(&e, e + elen, 0x30, &n), *ke = k + n;
		a->subkey_etype = take_ctx_int(&k, ke, 0);
		k = take(&k, ke, 0xa1, &n);
		v = take(&k, k + n, 0x04, &vlen);
		assert_true(vlen <= sizeof(a->subkey));
		memcpy(a->subkey, v, vlen);
		a->subkey_len = vlen;
	}
	a->seq = take_ctx_int(&p, end, 7);
	if (p < end) {
		const unsigned char *ad = p;
		e = take(&p, end, 0xa8, &elen);
		a->has_authdata = 1;
		a->authdata_len = (size_t)(p - ad);
		assert_true(a->authdata_len <= sizeof(a->authdata));
		memcpy(a->authdata, ad, a->authdata_len);
	}
	assert_ptr_equal(p, end);
	memset(plain, 0, sizeof(plain));
}

static void
test_token_carries_what_mit_puts_in(void **state)
{
	struct fixture *f = *state;
	unsigned char out[2048];
	struct apreq_reply rep, rep2;
	struct authent a, b;
	size_t len = 0, len2 = 0;
	char when[APREQ_TIME_LEN];
	int64_t now = time(NULL), t;
	/* MIT's make_ap_authdata for client_aware_channel_bindings */
	static const unsigned char cbt_ad[] = {
		0xa8, 0x1f, 0x30, 0x1d, 0x30, 0x1b, 0xa0, 0x03, 0x02, 0x01, 0x01, 0xa1, 0x14, 0x04,
		0x12, 0x30, 0x10, 0x30, 0x0e, 0xa0, 0x04, 0x02, 0x02, 0x00, 0x8f, 0xa1, 0x06, 0x04,
		0x04, 0x00, 0x40, 0x00, 0x00
	};

	assert_true(apreq_max_len(f->t) <= sizeof(out));
	assert_int_equal(apreq_ticket_end_ms(f->t), (uint64_t)(uint32_t)f->creds.times.endtime * 1000);
	assert_int_equal(apreq_make(f->kc, f->t, CKSUM, sizeof(CKSUM), APREQ_MUTUAL | APREQ_CBT_AWARE,
	    out, sizeof(out), &len, &rep), 0);
	assert_true(len <= apreq_max_len(f->t));
	read_token(f, out + sizeof(out) - len, len, &a);
	assert_int_equal(a.ap_options, AP_OPTS_MUTUAL_REQUIRED);
	/* the reply state matches what was sent */
	assert_non_null(rep.key);
	assert_int_equal(a.cusec, rep.cusec);
	assert_true(a.cusec >= 0 && a.cusec <= 999999);
	apreq_time_format((uint32_t)rep.ctime, when);
	assert_memory_equal(a.ctime, when, APREQ_TIME_LEN);
	assert_int_equal(apreq_time_parse((unsigned char *)a.ctime, APREQ_TIME_LEN, &t), 0);
	assert_true(t >= now - 2 && t <= now + 2);
	assert_int_equal(a.subkey_etype, f->creds.keyblock.enctype);
	assert_int_equal(a.subkey_len, 32);
	assert_int_equal(rep.subkey_len, 32);
	assert_int_equal(rep.subkey_enctype, f->creds.keyblock.enctype);
	assert_memory_equal(a.subkey, rep.subkey, 32);
	assert_memory_not_equal(a.subkey, f->creds.keyblock.contents, 32);
	assert_true(a.seq >= 1 && a.seq <= 0x3fffffff);
	assert_int_equal(a.has_authdata, 1);
	assert_int_equal(a.authdata_len, sizeof(cbt_ad));
	assert_memory_equal(a.authdata, cbt_ad, sizeof(cbt_ad));

	/* without mutual and without CBT awareness: no options, no authdata,
	 * rep untouched; a fresh subkey, sequence number and stamp */
	memset(&rep2, 0x77, sizeof(rep2));
	assert_int_equal(apreq_make(f->kc, f->t, CKSUM, sizeof(CKSUM), 0, out, sizeof(out), &len2,
	    &rep2), 0);
	read_token(f, out + sizeof(out) - len2, len2, &b);
	assert_int_equal(b.ap_options, 0);
	assert_int_equal(b.has_authdata, 0);
	{
		unsigned char poison[sizeof(rep2)];
		memset(poison, 0x77, sizeof(poison));
		assert_memory_equal(&rep2, poison, sizeof(rep2));
	}
	assert_memory_not_equal(a.subkey, b.subkey, 32);
	assert_true(a.seq != b.seq || a.cusec != b.cusec);	/* 2^-30 chance for seq alone */
	assert_true(strcmp(b.ctime, a.ctime) > 0 || (strcmp(b.ctime, a.ctime) == 0 &&
	    b.cusec > a.cusec));				/* strictly later */
	apreq_reply_clear(f->kc, &rep);
	assert_null(rep.key);
	assert_int_equal(rep.subkey_len, 0);
}

/* apreq_make_at says where the ticket lies (its DER exactly there, the
 * accessor's bytes); with APREQ_TICKET_EDGES only its first and last
 * APREQ_TICKET_EDGE bytes are written there, the rest of its place left
 * as it was, and the message is otherwise a whole token. */
static void
test_make_at_places_the_ticket_and_can_leave_its_middle(void **state)
{
	struct fixture *f = *state;
	unsigned char out[2048];
	const unsigned char *der;
	unsigned char *msg;
	struct authent a;
	size_t len = 0, at = 0, dlen = 0;

	der = apreq_ticket_der(f->t, &dlen);
	assert_int_equal(dlen, sizeof(f->ticket));
	assert_memory_equal(der, f->ticket, dlen);
	assert_true(dlen > 2 * APREQ_TICKET_EDGE);
	assert_int_equal(apreq_make_at(f->kc, f->t, CKSUM, sizeof(CKSUM), 0, out, sizeof(out), &len,
	    &at, NULL), 0);
	msg = out + sizeof(out) - len;
	assert_true(at + dlen <= len);
	assert_memory_equal(msg + at, f->ticket, dlen);
	read_token(f, msg, len, &a);

	memset(out, 0xee, sizeof(out));
	assert_int_equal(apreq_make_at(f->kc, f->t, CKSUM, sizeof(CKSUM), APREQ_TICKET_EDGES, out,
	    sizeof(out), &len, &at, NULL), 0);
	msg = out + sizeof(out) - len;
	assert_memory_equal(msg + at, f->ticket, APREQ_TICKET_EDGE);
	assert_memory_equal(msg + at + dlen - APREQ_TICKET_EDGE, f->ticket + dlen - APREQ_TICKET_EDGE,
	    APREQ_TICKET_EDGE);
	for (size_t i = APREQ_TICKET_EDGE; i < dlen - APREQ_TICKET_EDGE; i++)
		assert_int_equal(msg[at + i], 0xee);
	/* put in place, it is a whole token again */
	memcpy(msg + at, f->ticket, dlen);
	read_token(f, msg, len, &a);
}

static void
test_make_refuses_what_does_not_fit_and_bad_arguments(void **state)
{
	struct fixture *f = *state;
	unsigned char out[2048];
	struct apreq_reply rep;
	size_t len = 0;

	memset(&rep, 0, sizeof(rep));
	assert_int_equal(apreq_make(f->kc, f->t, CKSUM, sizeof(CKSUM), APREQ_MUTUAL, out, 100, &len,
	    &rep), KRB5_BAD_MSIZE);
	assert_null(rep.key);			/* nothing kept on failure */
	assert_int_equal(apreq_make(f->kc, f->t, CKSUM, sizeof(CKSUM), APREQ_MUTUAL, out,
	    sizeof(out), &len, NULL), EINVAL);
	assert_int_equal(apreq_make(f->kc, f->t, CKSUM, 65, 0, out, sizeof(out), &len, NULL), EINVAL);
}

/* The subkeys come from a per-thread pool of the DRBG's bytes: each byte
 * used once, across refills (1 KiB: 28 AES-256 tokens), and a forked child
 * never takes the bytes its parent takes next. */
static void
test_subkeys_are_fresh_across_refills_and_forks(void **state)
{
	struct fixture *f = *state;
	unsigned char out[2048], (*keys)[32], child_key[32];
	struct apreq_reply rep;
	size_t len = 0;
	const unsigned n = 200;
	int fds[2], status = 0;
	pid_t pid;

	assert_non_null(keys = calloc(n, sizeof(*keys)));
	for (unsigned i = 0; i < n; i++) {
		assert_int_equal(apreq_make(f->kc, f->t, CKSUM, sizeof(CKSUM), APREQ_MUTUAL, out,
		    sizeof(out), &len, &rep), 0);
		memcpy(keys[i], rep.subkey, 32);
		apreq_reply_clear(f->kc, &rep);
		for (unsigned j = 0; j < i; j++)
			assert_memory_not_equal(keys[i], keys[j], 32);
	}
	free(keys);
	/* the pool holds unused bytes now; the child and the parent each make
	 * one more subkey */
	assert_int_equal(pipe(fds), 0);
	assert_true((pid = fork()) >= 0);
	if (pid == 0) {
		int ok = apreq_make(f->kc, f->t, CKSUM, sizeof(CKSUM), APREQ_MUTUAL, out,
		    sizeof(out), &len, &rep) == 0 &&
		    write(fds[1], rep.subkey, 32) == 32;
		_exit(ok ? 0 : 1);
	}
	close(fds[1]);
	assert_int_equal(apreq_make(f->kc, f->t, CKSUM, sizeof(CKSUM), APREQ_MUTUAL, out,
	    sizeof(out), &len, &rep), 0);
	assert_int_equal(read(fds[0], child_key, 32), 32);
	close(fds[0]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	assert_memory_not_equal(child_key, rep.subkey, 32);
	apreq_reply_clear(f->kc, &rep);
}

static void
test_ticket_refuses_what_the_fast_path_does_not_make(void **state)
{
	struct fixture *f = *state;
	struct apreq_ticket *t = NULL;
	krb5_creds c = f->creds;
	krb5_authdata ad = { KV5M_AUTHDATA, 128, 4, (krb5_octet *)"abcd" }, *ads[2] = { &ad, NULL };

	c.ticket.length = 0;
	assert_int_equal(apreq_ticket_new(f->kc, &c, &t), KRB5_NO_TKT_SUPPLIED);
	c = f->creds;
	c.authdata = ads;
	assert_int_equal(apreq_ticket_new(f->kc, &c, &t), KRB5_PROG_ATYPE_NOSUPP);
	c = f->creds;
	c.keyblock.enctype = 9999;
	assert_int_not_equal(apreq_ticket_new(f->kc, &c, &t), 0);
	assert_null(t);
}

/* An AP-REP for rep: EncAPRepPart(ctime, cusec) under kb with usage. */
static size_t
reply_for(struct fixture *f, const krb5_keyblock *kb, krb5_keyusage usage, uint32_t ctime,
    int32_t cusec, unsigned char *out, size_t cap)
{
	unsigned char part[256], cipher[512];
	krb5_data pd;
	krb5_enc_data ed;
	size_t plen, clen = 0;

	plen = make_enc_part(part, sizeof(part), ctime, cusec, 1, 12345);
	assert_int_equal(krb5_c_encrypt_length(f->kc, kb->enctype, plen, &clen), 0);
	assert_true(clen <= sizeof(cipher));
	pd.length = (unsigned)plen;
	pd.data = (char *)part;
	memset(&ed, 0, sizeof(ed));
	ed.ciphertext.length = (unsigned)clen;
	ed.ciphertext.data = (char *)cipher;
	assert_int_equal(krb5_c_encrypt(f->kc, kb, usage, NULL, &pd, &ed), 0);
	return make_rep(out, cap, 5, 15, kb->enctype, -1, cipher, ed.ciphertext.length);
}

static void
expect_verify(struct fixture *f, const struct apreq_reply *rep, const unsigned char *m, size_t n,
    int ok, krb5_error_code want, const char *what)
{
	krb5_error_code code = -1;
	const char *cause = NULL;
	int rc = apreq_verify_rep(f->kc, rep, m, n, &code, &cause);

	if (ok && rc != 0)
		fail_msg("%s: refused (code %d: %s)", what, (int)code, cause ? cause : "?");
	if (!ok && (rc == 0 || code != want || cause == NULL))
		fail_msg("%s: expected refusal with code %d, got rc %d code %d (%s)", what, (int)want,
		    rc, (int)code, cause ? cause : "no cause");
}

static void
test_ap_rep_round_trip(void **state)
{
	struct fixture *f = *state;
	unsigned char out[2048], rep_der[600], bad[600];
	struct apreq_reply rep;
	krb5_keyblock sub, *other = NULL;
	size_t len = 0, n;

	assert_int_equal(apreq_make(f->kc, f->t, CKSUM, sizeof(CKSUM), APREQ_MUTUAL, out,
	    sizeof(out), &len, &rep), 0);
	/* the acceptor's reply under the ticket's session key */
	n = reply_for(f, &f->creds.keyblock, KRB5_KEYUSAGE_AP_REP_ENCPART, (uint32_t)rep.ctime,
	    rep.cusec, rep_der, sizeof(rep_der));
	expect_verify(f, &rep, rep_der, n, 1, 0, "the session key's reply");
	/* ... also after the ticket is gone (the reply holds its own reference) */
	/* another ctime, another cusec: the reply to another token */
	n = reply_for(f, &f->creds.keyblock, KRB5_KEYUSAGE_AP_REP_ENCPART, (uint32_t)rep.ctime + 1,
	    rep.cusec, rep_der, sizeof(rep_der));
	expect_verify(f, &rep, rep_der, n, 0, KRB5_MUTUAL_FAILED, "another ctime");
	n = reply_for(f, &f->creds.keyblock, KRB5_KEYUSAGE_AP_REP_ENCPART, (uint32_t)rep.ctime,
	    (rep.cusec + 1) % 1000000, rep_der, sizeof(rep_der));
	expect_verify(f, &rep, rep_der, n, 0, KRB5_MUTUAL_FAILED, "another cusec");
	/* under our subkey (MIT's fallback for older acceptors) */
	memset(&sub, 0, sizeof(sub));
	sub.magic = KV5M_KEYBLOCK;
	sub.enctype = rep.subkey_enctype;
	sub.length = rep.subkey_len;
	sub.contents = rep.subkey;
	n = reply_for(f, &sub, KRB5_KEYUSAGE_AP_REP_ENCPART, (uint32_t)rep.ctime, rep.cusec,
	    rep_der, sizeof(rep_der));
	expect_verify(f, &rep, rep_der, n, 1, 0, "the subkey's reply");
	/* another key, another usage: integrity */
	assert_int_equal(krb5_c_make_random_key(f->kc, f->creds.keyblock.enctype, &sub), 0);
	other = &sub;
	n = reply_for(f, other, KRB5_KEYUSAGE_AP_REP_ENCPART, (uint32_t)rep.ctime, rep.cusec,
	    rep_der, sizeof(rep_der));
	expect_verify(f, &rep, rep_der, n, 0, KRB5KRB_AP_ERR_BAD_INTEGRITY, "another key");
	krb5_free_keyblock_contents(f->kc, other);
	n = reply_for(f, &f->creds.keyblock, KRB5_KEYUSAGE_AP_REQ_AUTH, (uint32_t)rep.ctime,
	    rep.cusec, rep_der, sizeof(rep_der));
	expect_verify(f, &rep, rep_der, n, 0, KRB5KRB_AP_ERR_BAD_INTEGRITY, "usage 11");
	/* one flipped byte of the cipher */
	n = reply_for(f, &f->creds.keyblock, KRB5_KEYUSAGE_AP_REP_ENCPART, (uint32_t)rep.ctime,
	    rep.cusec, rep_der, sizeof(rep_der));
	memcpy(bad, rep_der, n);
	bad[n - 6] ^= 1;
	expect_verify(f, &rep, bad, n, 0, KRB5KRB_AP_ERR_BAD_INTEGRITY, "a flipped byte");
	/* malformed outside: code 0 */
	expect_verify(f, &rep, rep_der, n - 1, 0, 0, "a truncated reply");
	expect_verify(f, &rep, out, len, 0, 0, "our own AP-REQ");
	/* malformed inside, well encrypted: code 0 */
	{
		unsigned char junk[40], cipher[200];
		krb5_data pd;
		krb5_enc_data ed;
		size_t clen = 0;
		memset(junk, 0x30, sizeof(junk));
		assert_int_equal(krb5_c_encrypt_length(f->kc, f->creds.keyblock.enctype,
		    sizeof(junk), &clen), 0);
		pd.length = sizeof(junk);
		pd.data = (char *)junk;
		memset(&ed, 0, sizeof(ed));
		ed.ciphertext.length = (unsigned)clen;
		ed.ciphertext.data = (char *)cipher;
		assert_int_equal(krb5_c_encrypt(f->kc, &f->creds.keyblock, KRB5_KEYUSAGE_AP_REP_ENCPART,
		    NULL, &pd, &ed), 0);
		n = make_rep(rep_der, sizeof(rep_der), 5, 15, f->creds.keyblock.enctype, -1,
		    cipher, ed.ciphertext.length);
		expect_verify(f, &rep, rep_der, n, 0, 0, "a malformed EncAPRepPart");
	}
	/* the ticket goes first: the kept reply still verifies */
	apreq_ticket_free(f->kc, f->t);
	f->t = NULL;
	n = reply_for(f, &f->creds.keyblock, KRB5_KEYUSAGE_AP_REP_ENCPART, (uint32_t)rep.ctime,
	    rep.cusec, rep_der, sizeof(rep_der));
	expect_verify(f, &rep, rep_der, n, 1, 0, "after the ticket was freed");
	apreq_reply_clear(f->kc, &rep);
	expect_verify(f, &rep, rep_der, n, 0, KRB5_MUTUAL_FAILED, "a cleared reply");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_der_lengths_take_the_shortest_form_at_each_edge),
		cmocka_unit_test(test_der_integers_are_shortest_twos_complement),
		cmocka_unit_test(test_der_overflow_is_sticky_and_yields_nothing),
		cmocka_unit_test(test_kerberos_time_both_ways),
		cmocka_unit_test(test_ap_rep_parser_takes_a_well_formed_reply),
		cmocka_unit_test(test_ap_rep_parser_refuses_malformed_input_with_a_cause),
		cmocka_unit_test(test_enc_rep_part_parser),
		cmocka_unit_test_setup_teardown(test_token_carries_what_mit_puts_in, setup, teardown),
		cmocka_unit_test_setup_teardown(test_make_at_places_the_ticket_and_can_leave_its_middle,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_make_refuses_what_does_not_fit_and_bad_arguments,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_ticket_refuses_what_the_fast_path_does_not_make,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_subkeys_are_fresh_across_refills_and_forks,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_ap_rep_round_trip, setup, teardown),
		/* the same on an enctype kcrypt leaves to libkrb5 */
		{ "test_token_carries_what_mit_puts_in (aes256-sha384, libkrb5)",
		    test_token_carries_what_mit_puts_in, setup_sha2, teardown, NULL },
		{ "test_ap_rep_round_trip (aes256-sha384, libkrb5)", test_ap_rep_round_trip,
		    setup_sha2, teardown, NULL },
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
