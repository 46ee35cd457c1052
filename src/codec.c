/*
 * codec.c — base64, hex digits, percent escapes, ASCII case; see codec.h.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* The two characters of every 12-bit value, so that three bytes take two
 * look-ups instead of four (kcd encodes a ~1.5 KB token per request: 0.77
 * -> 0.47 us). B64C is b64[] as a constant expression. */
#define B64C(i)		((i) < 26 ? 'A' + (i) : (i) < 52 ? 'a' + (i) - 26 : \
			 (i) < 62 ? '0' + (i) - 52 : (i) == 62 ? '+' : '/')
#define B64P1(i)	{ (char)B64C((i) >> 6), (char)B64C((i) & 63) }
#define B64P4(i)	B64P1(i), B64P1((i) + 1), B64P1((i) + 2), B64P1((i) + 3)
#define B64P16(i)	B64P4(i), B64P4((i) + 4), B64P4((i) + 8), B64P4((i) + 12)
#define B64P64(i)	B64P16(i), B64P16((i) + 16), B64P16((i) + 32), B64P16((i) + 48)
#define B64P256(i)	B64P64(i), B64P64((i) + 64), B64P64((i) + 128), B64P64((i) + 192)
#define B64P1024(i)	B64P256(i), B64P256((i) + 256), B64P256((i) + 512), B64P256((i) + 768)
static const char b64_pairs[4096][2] = {
	B64P1024(0), B64P1024(1024), B64P1024(2048), B64P1024(3072)
};

size_t
codec_b64_encode_to(const unsigned char *in, size_t n, char *out)
{
	size_t o = 0, i;

	for (i = 0; i + 2 < n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		memcpy(out + o, b64_pairs[v >> 12], 2);
		memcpy(out + o + 2, b64_pairs[v & 4095], 2);
		o += 4;
	}
	if (i < n) {
		uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
		out[o++] = b64[v >> 18];
		out[o++] = b64[(v >> 12) & 63];
		out[o++] = i + 1 < n ? b64[(v >> 6) & 63] : '=';
		out[o++] = '=';
	}
	out[o] = '\0';
	return o;
}

size_t
codec_b64_inner(const unsigned char *part, size_t len, size_t at, char *out)
{
	size_t skip = CODEC_B64_INNER_SKIP(at), groups = CODEC_B64_INNER_LEN(at, len) / 4;

	/* whole groups only: codec_b64_encode_to pads nothing for them */
	return codec_b64_encode_to(part + skip, groups * 3, out);
}

size_t
codec_b64_encode_with(const unsigned char *in, size_t n, size_t at, size_t len,
    const char *inner, char *out)
{
	size_t a = at + CODEC_B64_INNER_SKIP(at), ilen = CODEC_B64_INNER_LEN(at, len);
	size_t b = a + ilen / 4 * 3, o;

	if (ilen == 0)
		return codec_b64_encode_to(in, n, out);
	/* a is a multiple of 3: the head ends on a whole group */
	o = codec_b64_encode_to(in, a, out);
	memcpy(out + o, inner, ilen);
	o += ilen;
	return o + codec_b64_encode_to(in + b, n - b, out + o);
}

char *
codec_b64_encode(const unsigned char *in, size_t n)
{
	char *out = malloc(CODEC_B64_LEN(n) + 1);

	if (out != NULL)
		(void)codec_b64_encode_to(in, n, out);
	return out;
}

static int
b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

long
codec_b64_decode(const char *in, size_t len, unsigned char *out, size_t cap)
{
	const unsigned char *s = (const unsigned char *)in;
	size_t o = 0, pad = 0, n;
	uint32_t acc = 0;
	unsigned bits = 0;

	while (pad < 2 && len > pad && s[len - 1 - pad] == '=')
		pad++;
	n = len - pad;
	if (pad != 0 && len % 4 != 0)
		return -1;
	if (n % 4 == 1)
		return -1;
	for (size_t i = 0; i < n; i++) {
		int v = b64_value(s[i]);
		if (v < 0)
			return -1;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (o >= cap)
				return -2;
			out[o++] = (unsigned char)(acc >> bits);
			acc &= (1u << bits) - 1;
		}
	}
	return (long)o;
}

int
codec_hex_value(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int
codec_pct_byte(const char *s, size_t len, unsigned char *out)
{
	int hi, lo;

	if (len < 3 || s[0] != '%' || (hi = codec_hex_value((unsigned char)s[1])) < 0 ||
	    (lo = codec_hex_value((unsigned char)s[2])) < 0)
		return -1;
	*out = (unsigned char)(hi * 16 + lo);
	return 0;
}

static unsigned char
lower(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

int
codec_eq_ci(const char *a, size_t alen, const char *b, size_t blen)
{
	if (alen != blen)
		return 0;
	for (size_t i = 0; i < alen; i++)
		if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
			return 0;
	return 1;
}

size_t
codec_u64_dec(char buf[CODEC_U64_DEC_MAX], unsigned long long v)
{
	char tmp[CODEC_U64_DEC_MAX - 1];
	size_t n = 0, i;

	do {
		tmp[n++] = (char)('0' + v % 10u);
		v /= 10u;
	} while (v > 0);
	for (i = 0; i < n; i++)
		buf[i] = tmp[n - 1 - i];
	buf[n] = '\0';
	return n;
}
