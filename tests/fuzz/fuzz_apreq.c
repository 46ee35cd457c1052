/*
 * fuzz_apreq.c — libFuzzer target for the AP-REP parsers (apreq.c), whose
 * input is what a backend sends back in WWW-Authenticate: Negotiate (after
 * the RFC 2743 framing is taken off) and, for the EncAPRepPart, what its
 * enc-part decrypts to. Beyond the sanitizers it checks the parsers'
 * promises: a refusal always names its cause; an accepted AP-REP's cipher
 * lies within the input, and the AP-REP written again from what was parsed
 * is the input byte for byte (the parser accepts DER only: one encoding
 * per value); an accepted EncAPRepPart has cusec in 0..999999 and a ctime
 * that formats back to the KerberosTime it came from.
 *
 *   make fuzz && build/fuzz/fuzz_apreq -max_total_time=60 tests/fuzz/corpus/apreq
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "apreq.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check_cause(const char *cause)
{
	if (cause == NULL || cause[0] == '\0')
		abort();
	for (const char *c = cause; *c != '\0'; c++)
		if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f)
			abort();
}

static void
ctx_int(struct apreq_der *w, unsigned n, int64_t v)
{
	size_t m = apreq_der_mark(w);

	apreq_der_int(w, v);
	apreq_der_wrap(w, (unsigned char)(0xa0 | n), m);
}

/* The AP-REP again, from its parsed fields. */
static void
check_rep_round_trip(const uint8_t *data, size_t size, const struct apreq_enc_part *e)
{
	unsigned char *buf = malloc(size + 64);
	struct apreq_der w;
	const unsigned char *out;
	size_t m0, m, len = 0;

	if (buf == NULL)
		abort();
	apreq_der_init(&w, buf, size + 64);
	m0 = apreq_der_mark(&w);
	m = apreq_der_mark(&w);
	apreq_der_tlv(&w, 0x04, e->cipher, e->cipher_len);
	apreq_der_wrap(&w, 0xa2, m);
	if (e->has_kvno)
		ctx_int(&w, 1, e->kvno);
	ctx_int(&w, 0, e->etype);
	apreq_der_wrap(&w, 0x30, m);
	apreq_der_wrap(&w, 0xa2, m);
	ctx_int(&w, 1, 15);
	ctx_int(&w, 0, 5);
	apreq_der_wrap(&w, 0x30, m0);
	apreq_der_wrap(&w, 0x6f, m0);
	out = apreq_der_result(&w, &len);
	if (out == NULL || len != size || memcmp(out, data, size) != 0)
		abort();
	free(buf);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct apreq_enc_part e;
	const char *cause = NULL;
	int64_t ctime = 0;
	int32_t cusec = 0;

	if (apreq_parse_rep(data, size, &e, &cause) == 0) {
		if (e.cipher < data || e.cipher_len == 0 || e.cipher_len > size ||
		    e.cipher + e.cipher_len > data + size)
			abort();
		check_rep_round_trip(data, size, &e);
	} else {
		check_cause(cause);
	}
	cause = NULL;
	if (apreq_parse_enc_rep_part(data, size, &ctime, &cusec, &cause) == 0) {
		char when[APREQ_TIME_LEN];
		int64_t back = -1;
		if (cusec < 0 || cusec > 999999 || ctime < 0 || ctime > 253402300799LL)
			abort();
		/* the four-digit years that fit in 32 unsigned bits format back */
		if (ctime <= UINT32_MAX) {
			apreq_time_format((uint32_t)ctime, when);
			if (apreq_time_parse((const unsigned char *)when, sizeof(when), &back) != 0 ||
			    back != ctime)
				abort();
		}
	} else {
		check_cause(cause);
	}
	return 0;
}
