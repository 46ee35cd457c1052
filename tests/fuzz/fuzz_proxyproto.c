/*
 * fuzz_proxyproto.c — libFuzzer target for the PROXY protocol parser
 * (proxyproto.c), whose input is the first bytes of any connection when
 * proxy_protocol = on. Beyond the sanitizers it checks the parser's
 * promises: a DONE header length lies within the bytes given and within
 * the format's bounds; the verdict on those first len bytes is the same
 * DONE; every shorter prefix of a DONE header needs more (so the bytes
 * behind it are never read as header); an address family is IPv4 or IPv6;
 * an error text is printable and terminated.
 *
 *   make fuzz && build/fuzz/fuzz_proxyproto -max_total_time=60 tests/fuzz/corpus/proxyproto
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>

#include "proxyproto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check_err(const char *err, size_t cap)
{
	size_t n = strnlen(err, cap);

	if (n == cap)
		abort();
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)err[i] < 0x20 || (unsigned char)err[i] >= 0x7f)
			abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proxyproto_result r, r2;
	char err[160];
	enum proxyproto_rc rc;

	err[0] = '\0';
	rc = proxyproto_parse(data, size, &r, err, sizeof(err));
	if (rc == PROXYPROTO_ERROR) {
		check_err(err, sizeof(err));
		return 0;
	}
	if (rc != PROXYPROTO_DONE)
		return 0;
	if (r.len == 0 || r.len > size || r.len > PROXYPROTO_MAX_LEN)
		abort();
	if (r.version == 1 && r.len > PROXYPROTO_V1_MAX)
		abort();
	if (r.version != 1 && r.version != 2)
		abort();
	if (!r.local && !((r.src.ss_family == AF_INET && r.src_len == sizeof(struct sockaddr_in)) ||
	    (r.src.ss_family == AF_INET6 && r.src_len == sizeof(struct sockaddr_in6))))
		abort();
	if (proxyproto_parse(data, r.len, &r2, err, sizeof(err)) != PROXYPROTO_DONE ||
	    r2.len != r.len || r2.local != r.local)
		abort();
	for (size_t i = 0; i < r.len; i++)
		if (proxyproto_parse(data, i, &r2, err, sizeof(err)) != PROXYPROTO_NEED_MORE)
			abort();
	return 0;
}
