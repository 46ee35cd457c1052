/*
 * codec.h — small pure encoders and decoders that several parsers share:
 * base64 (RFC 4648 §4, the standard alphabet), hex digits, percent
 * escapes (RFC 3986 §2.1), decimal numbers and ASCII case-insensitive
 * comparison.
 *
 * Format only, no policy: these functions refuse what is not the format;
 * whatever a caller refuses beyond it (a padding it insists on, an
 * escaped byte it does not allow, its own error names) stays with the
 * caller. No allocation except codec_b64_encode's result, no I/O, no
 * global state (constant tables only).
 */
#ifndef EKP_CODEC_H
#define EKP_CODEC_H

#include <stddef.h>

/* Base64 of in[0..n), '=' padded to whole quads, as a NUL-terminated
 * string the caller owns (free()). NULL when out of memory. */
char *codec_b64_encode(const unsigned char *in, size_t n);

/* The same into out, which has room for CODEC_B64_LEN(n) + 1 bytes (the
 * NUL); returns CODEC_B64_LEN(n). No allocation: for callers that keep
 * a buffer (kcd's tokens). */
#define CODEC_B64_LEN(n)	(4 * (((n) + 2) / 3))
size_t codec_b64_encode_to(const unsigned char *in, size_t n, char *out);

/* Base64 of a message part that is the same in many messages (kcd's
 * service ticket, in every token made on it), encoded once: a part of len
 * bytes at byte offset at of its message, of which only the whole 3-byte
 * groups of the message's encoding that lie inside the part depend on the
 * part alone (they start at the part's first byte whose offset is a
 * multiple of 3). codec_b64_inner writes those groups' characters,
 * CODEC_B64_INNER_LEN(at, len) of them and a NUL, into out and returns
 * their number; only at % 3 matters. codec_b64_encode_with then encodes a
 * whole message in[0..n) holding the part at in[at..at+len) (at + len <=
 * n) as codec_b64_encode_to does, character for character, but copies
 * inner (codec_b64_inner's out for this part and at % 3) instead of
 * encoding those groups, whose bytes it never reads. Returns
 * CODEC_B64_LEN(n); out as codec_b64_encode_to's. */
#define CODEC_B64_INNER_SKIP(at)	((3 - (at) % 3) % 3)
#define CODEC_B64_INNER_LEN(at, len)	((len) > CODEC_B64_INNER_SKIP(at) ? \
	((len) - CODEC_B64_INNER_SKIP(at)) / 3 * 4 : 0)
size_t codec_b64_inner(const unsigned char *part, size_t len, size_t at, char *out);
size_t codec_b64_encode_with(const unsigned char *in, size_t n, size_t at, size_t len,
    const char *inner, char *out);

/* Strict base64 decoding of in[0..len) into out[0..cap): only the
 * alphabet A-Z a-z 0-9 + /; '=' padding is optional, but when present it
 * is one or two '=' at the very end of a text whose length is a multiple
 * of 4; a lone trailing character (6 bits, no whole byte) is refused.
 * Unused low bits of the last character are not checked. No white space.
 * Returns the decoded length (0 for an empty text), -1 when in is not
 * base64, -2 when the bytes do not fit in cap (out then holds a prefix). */
long codec_b64_decode(const char *in, size_t len, unsigned char *out, size_t cap);

/* v in decimal, without printf (hot paths: the access log, the request
 * and response heads), into buf, NUL-terminated. Returns the number of
 * digits (1 to 20). */
#define CODEC_U64_DEC_MAX	21	/* bytes, with the NUL */
size_t codec_u64_dec(char buf[CODEC_U64_DEC_MAX], unsigned long long v);

/* The value of the hex digit c (0-9, a-f, A-F), or -1. */
int codec_hex_value(unsigned char c);

/* s[0..len) starts with '%': the byte its "%XX" escape stands for, in
 * *out. Returns 0, or -1 (*out untouched) when len < 3 or either of the two
 * bytes after '%' is not a hex digit. What a decoded byte may be (NUL, '/',
 * '%' again, ...) is the caller's rule; the escape is 3 bytes long. */
int codec_pct_byte(const char *s, size_t len, unsigned char *out);

/* Whether a[0..alen) and b[0..blen) are equal ignoring ASCII case (A-Z
 * only: bytes >= 0x80 compare as they are, whatever the locale). */
int codec_eq_ci(const char *a, size_t alen, const char *b, size_t blen);

#endif
