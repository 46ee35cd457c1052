/*
 * proxyproto.h — the PROXY protocol header an L4 load balancer (HAProxy
 * `send-proxy` / `send-proxy-v2`, AWS NLB, F5, ...) puts in front of the
 * device's TLS bytes ([server] proxy_protocol = on), versions 1 (text) and
 * 2 (binary), as HAProxy's doc/proxy-protocol.txt defines them.
 *
 * Pure code: no I/O, no allocation, no logging. stream.c feeds it the bytes
 * received so far, always from the start of the connection, and learns
 * either that more are needed, or the header's exact length (so that not
 * one byte of the TLS ClientHello behind it is consumed), or why the
 * connection must be refused.
 *
 * What is accepted:
 *   v1  "PROXY TCP4 <src> <dst> <sport> <dport>\r\n" (TCP6 alike) and
 *       "PROXY UNKNOWN ...\r\n"; at most 107 bytes; one space between
 *       fields; addresses as inet_pton reads them (no IPv6 in TCP4, no
 *       leading zeros); ports 0..65535 in decimal without leading zeros.
 *   v2  the 12-byte signature, version 2, command LOCAL (addresses
 *       ignored: a health check or the balancer's own connection) or PROXY
 *       with family UNSPEC (like LOCAL), TCP over IPv4 or IPv6; TLVs are
 *       checked to be well formed (each fits in the header) and skipped.
 *       The whole header may not exceed PROXYPROTO_MAX_LEN.
 * Anything else — a TLS record where a header should be, UDP or UNIX
 * addresses, an address block shorter than its family needs, a v1 line
 * without CRLF in 107 bytes — is PROXYPROTO_ERROR with the rule in err.
 * Errors are reported as soon as the bytes seen cannot start a valid
 * header, so a client that speaks TLS directly is refused at its first
 * byte, not at a timeout.
 */
#ifndef EKP_PROXYPROTO_H
#define EKP_PROXYPROTO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define PROXYPROTO_V1_MAX	107u		/* the spec's bound, CRLF included */
#define PROXYPROTO_V2_HDR	16u		/* signature, ver_cmd, fam, len */
/* Our bound on a v2 header with its TLVs (the format allows 16 + 65535):
 * addresses take at most 216 bytes, what balancers add (unique id,
 * authority, SSL and cloud TLVs) fits easily; more is refused. */
#define PROXYPROTO_MAX_LEN	(PROXYPROTO_V2_HDR + 4096u)

enum proxyproto_rc {
	PROXYPROTO_NEED_MORE,	/* a valid prefix so far; call again with more */
	PROXYPROTO_DONE,	/* out->len bytes are the header */
	PROXYPROTO_ERROR,	/* not a valid header; err says why */
};

struct proxyproto_result {
	unsigned version;		/* 1 or 2 */
	/* 1 when the header carries no client address (v1 UNKNOWN, v2 LOCAL,
	 * v2 UNSPEC): keep the connection's own addresses */
	int local;
	struct sockaddr_storage src;	/* the client, when !local */
	socklen_t src_len;
	struct sockaddr_storage dst;	/* the address it connected to, when !local */
	socklen_t dst_len;
	size_t len;			/* header bytes, to consume exactly */
};

/* Parse the n bytes received so far (buf holds the connection's first
 * bytes). DONE fills *out; NEED_MORE and ERROR leave it untouched, ERROR
 * with a short reason in err. */
enum proxyproto_rc proxyproto_parse(const uint8_t *buf, size_t n,
    struct proxyproto_result *out, char *err, size_t errlen);

#endif
