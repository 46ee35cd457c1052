/* proxyproto.c — PROXY protocol v1/v2 header parser; see proxyproto.h. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "proxyproto.h"

static const uint8_t v2_sig[12] = {
	0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A
};
static const char v1_prefix[] = "PROXY ";

#define V2_CMD_LOCAL	0x0
#define V2_CMD_PROXY	0x1
#define V2_FAM_UNSPEC	0x00
#define V2_FAM_TCP4	0x11
#define V2_FAM_UDP4	0x12
#define V2_FAM_TCP6	0x21
#define V2_FAM_UDP6	0x22
#define V2_FAM_UNIX	0x31
#define V2_FAM_UNIXDG	0x32
#define V2_ADDR_TCP4	12u		/* src, dst, sport, dport */
#define V2_ADDR_TCP6	36u

static enum proxyproto_rc fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static enum proxyproto_rc
fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return PROXYPROTO_ERROR;
}

/* ---- version 1 ------------------------------------------------------------ */

/* A decimal port: 1-5 digits, no leading zero unless "0", <= 65535. */
static int
v1_port(const char *s, size_t n, uint16_t *out)
{
	unsigned v = 0;

	if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10u + (unsigned)(s[i] - '0');
	}
	if (v > 65535u)
		return -1;
	*out = (uint16_t)v;
	return 0;
}

/* An address of family af (AF_INET/AF_INET6) into ss. */
static int
v1_addr(int af, const char *s, size_t n, uint16_t port, struct sockaddr_storage *ss,
    socklen_t *len)
{
	char tmp[INET6_ADDRSTRLEN + 1];

	if (n == 0 || n >= sizeof(tmp))
		return -1;
	memcpy(tmp, s, n);
	tmp[n] = '\0';
	memset(ss, 0, sizeof(*ss));
	if (af == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)ss;
		if (inet_pton(AF_INET, tmp, &in->sin_addr) != 1)
			return -1;
		in->sin_family = AF_INET;
		in->sin_port = htons(port);
		*len = sizeof(*in);
	} else {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
		if (inet_pton(AF_INET6, tmp, &in6->sin6_addr) != 1)
			return -1;
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(port);
		*len = sizeof(*in6);
	}
	return 0;
}

/* The fields of a complete line (without "PROXY " and CRLF). */
static enum proxyproto_rc
v1_line(const char *p, size_t n, struct proxyproto_result *r, char *err, size_t errlen)
{
	const char *f[4];
	size_t fl[4];
	unsigned nf = 0;
	uint16_t sport, dport;
	size_t pn = 0;
	int af;

	while (pn < n && p[pn] != ' ')
		pn++;
	if (pn == 7 && memcmp(p, "UNKNOWN", 7) == 0) {
		/* "the receiver must ignore anything presented before the CRLF" */
		r->local = 1;
		return PROXYPROTO_DONE;
	}
	if (pn == 4 && memcmp(p, "TCP4", 4) == 0)
		af = AF_INET;
	else if (pn == 4 && memcmp(p, "TCP6", 4) == 0)
		af = AF_INET6;
	else
		return fail(err, errlen, "v1: protocol '%.*s' is not TCP4, TCP6 or UNKNOWN",
		    (int)(pn > 16 ? 16 : pn), p);
	if (pn == n)
		return fail(err, errlen, "v1: no addresses after %.4s", p);
	p += 5;
	n -= 5;
	/* exactly four fields separated by single spaces */
	for (size_t i = 0, start = 0; i <= n; i++) {
		if (i < n && p[i] != ' ')
			continue;
		if (nf == 4 || i == start)
			return fail(err, errlen, "v1: expected 4 fields after the protocol, "
			    "separated by single spaces");
		f[nf] = p + start;
		fl[nf] = i - start;
		nf++;
		start = i + 1;
	}
	if (nf != 4)
		return fail(err, errlen, "v1: expected 4 fields after the protocol, got %u", nf);
	if (v1_port(f[2], fl[2], &sport) != 0 || v1_port(f[3], fl[3], &dport) != 0)
		return fail(err, errlen, "v1: a port is not a number 0..65535");
	if (v1_addr(af, f[0], fl[0], sport, &r->src, &r->src_len) != 0 ||
	    v1_addr(af, f[1], fl[1], dport, &r->dst, &r->dst_len) != 0)
		return fail(err, errlen, af == AF_INET ? "v1: an address is not IPv4 (TCP4)"
		    : "v1: an address is not IPv6 (TCP6)");
	return PROXYPROTO_DONE;
}

static enum proxyproto_rc
parse_v1(const uint8_t *buf, size_t n, struct proxyproto_result *r, char *err, size_t errlen)
{
	size_t i, pl = sizeof(v1_prefix) - 1;

	if (memcmp(buf, v1_prefix, n < pl ? n : pl) != 0)
		return fail(err, errlen, "no PROXY header (starts like v1 but is not \"PROXY \")");
	for (i = 0; i < n && i < PROXYPROTO_V1_MAX; i++) {
		if (buf[i] == '\r') {
			if (i + 2 > PROXYPROTO_V1_MAX)
				break;
			if (i + 1 == n)
				return PROXYPROTO_NEED_MORE;
			if (buf[i + 1] != '\n')
				return fail(err, errlen, "v1: CR without LF");
			r->version = 1;
			r->len = i + 2;
			return v1_line((const char *)buf + pl, i - pl, r, err, errlen);
		}
		if (buf[i] < 0x20 || buf[i] > 0x7e)
			return fail(err, errlen, "v1: control or non-ASCII byte 0x%02x in the line",
			    buf[i]);
	}
	/* a CR at 106 or no CR in 106 bytes: CRLF cannot end by byte 107 */
	if (i >= PROXYPROTO_V1_MAX - 1)
		return fail(err, errlen, "v1: no CRLF within %u bytes", PROXYPROTO_V1_MAX);
	return PROXYPROTO_NEED_MORE;
}

/* ---- version 2 ------------------------------------------------------------ */

static uint16_t
be16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}

/* TLVs between off and end: each type, 16-bit length, value, all inside. */
static enum proxyproto_rc
v2_tlvs(const uint8_t *buf, size_t off, size_t end, char *err, size_t errlen)
{
	while (off < end) {
		size_t vlen;

		if (end - off < 3)
			return fail(err, errlen, "v2: truncated TLV (%u bytes left)", (unsigned)(end - off));
		vlen = be16(buf + off + 1);
		if (vlen > end - off - 3)
			return fail(err, errlen, "v2: TLV of type 0x%02x runs past the header", buf[off]);
		off += 3 + vlen;
	}
	return PROXYPROTO_DONE;
}

static enum proxyproto_rc
parse_v2(const uint8_t *buf, size_t n, struct proxyproto_result *r, char *err, size_t errlen)
{
	size_t total, addr_end;
	unsigned ver, cmd, fam;

	if (memcmp(buf, v2_sig, n < sizeof(v2_sig) ? n : sizeof(v2_sig)) != 0)
		return fail(err, errlen, "no PROXY header (bad v2 signature)");
	if (n < 13)
		return PROXYPROTO_NEED_MORE;
	ver = buf[12] >> 4;
	cmd = buf[12] & 0x0f;
	if (ver != 2)
		return fail(err, errlen, "v2: version %u, expected 2", ver);
	if (cmd != V2_CMD_LOCAL && cmd != V2_CMD_PROXY)
		return fail(err, errlen, "v2: unknown command %u", cmd);
	if (n < PROXYPROTO_V2_HDR)
		return PROXYPROTO_NEED_MORE;
	fam = buf[13];
	total = PROXYPROTO_V2_HDR + be16(buf + 14);
	if (total > PROXYPROTO_MAX_LEN)
		return fail(err, errlen, "v2: header of %u bytes exceeds our limit", (unsigned)total);
	if (n < total)
		return PROXYPROTO_NEED_MORE;

	memset(r, 0, sizeof(*r));
	r->version = 2;
	r->len = total;
	if (cmd == V2_CMD_LOCAL) {
		/* the balancer's own connection (health check): everything
		 * after the fixed part is discarded, the family included */
		r->local = 1;
		return PROXYPROTO_DONE;
	}
	switch (fam) {
	case V2_FAM_UNSPEC:
		r->local = 1;
		addr_end = PROXYPROTO_V2_HDR;
		break;
	case V2_FAM_TCP4: {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&r->src;
		struct sockaddr_in *d4 = (struct sockaddr_in *)&r->dst;
		const uint8_t *a = buf + PROXYPROTO_V2_HDR;

		if (total - PROXYPROTO_V2_HDR < V2_ADDR_TCP4)
			return fail(err, errlen, "v2: TCP4 address block shorter than %u bytes", V2_ADDR_TCP4);
		s4->sin_family = d4->sin_family = AF_INET;
		memcpy(&s4->sin_addr, a, 4);
		memcpy(&d4->sin_addr, a + 4, 4);
		memcpy(&s4->sin_port, a + 8, 2);	/* network order on both sides */
		memcpy(&d4->sin_port, a + 10, 2);
		r->src_len = r->dst_len = sizeof(struct sockaddr_in);
		addr_end = PROXYPROTO_V2_HDR + V2_ADDR_TCP4;
		break;
	}
	case V2_FAM_TCP6: {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&r->src;
		struct sockaddr_in6 *d6 = (struct sockaddr_in6 *)&r->dst;
		const uint8_t *a = buf + PROXYPROTO_V2_HDR;

		if (total - PROXYPROTO_V2_HDR < V2_ADDR_TCP6)
			return fail(err, errlen, "v2: TCP6 address block shorter than %u bytes", V2_ADDR_TCP6);
		s6->sin6_family = d6->sin6_family = AF_INET6;
		memcpy(&s6->sin6_addr, a, 16);
		memcpy(&d6->sin6_addr, a + 16, 16);
		memcpy(&s6->sin6_port, a + 32, 2);
		memcpy(&d6->sin6_port, a + 34, 2);
		r->src_len = r->dst_len = sizeof(struct sockaddr_in6);
		addr_end = PROXYPROTO_V2_HDR + V2_ADDR_TCP6;
		break;
	}
	case V2_FAM_UDP4:
	case V2_FAM_UDP6:
		return fail(err, errlen, "v2: UDP (family 0x%02x) in front of a TLS listener", fam);
	case V2_FAM_UNIX:
	case V2_FAM_UNIXDG:
		return fail(err, errlen, "v2: UNIX socket addresses (family 0x%02x) carry no client IP", fam);
	default:
		return fail(err, errlen, "v2: unknown address family/protocol 0x%02x", fam);
	}
	return v2_tlvs(buf, addr_end, total, err, errlen);
}

enum proxyproto_rc
proxyproto_parse(const uint8_t *buf, size_t n, struct proxyproto_result *out,
    char *err, size_t errlen)
{
	struct proxyproto_result r;
	enum proxyproto_rc rc;

	if (n == 0)
		return PROXYPROTO_NEED_MORE;
	memset(&r, 0, sizeof(r));
	if (buf[0] == v1_prefix[0])
		rc = parse_v1(buf, n, &r, err, errlen);
	else if (buf[0] == v2_sig[0])
		rc = parse_v2(buf, n, &r, err, errlen);
	else if (buf[0] == 0x16)
		rc = fail(err, errlen, "no PROXY header: the connection starts with a TLS "
		    "handshake (0x%02x), so it did not come through the load balancer", buf[0]);
	else
		rc = fail(err, errlen, "no PROXY header: first byte 0x%02x", buf[0]);
	if (rc == PROXYPROTO_DONE)
		*out = r;
	return rc;
}
