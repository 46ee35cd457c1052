/*
 * test_codec.c — codec.c: base64 (RFC 4648 §10 vectors both ways, the
 * padding and alphabet rules, the output capacity), hex digit values,
 * percent escapes, ASCII case-insensitive equality.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "codec.h"

static const struct {
	const char *plain, *b64;
} rfc4648[] = {
	{ "", "" }, { "f", "Zg==" }, { "fo", "Zm8=" }, { "foo", "Zm9v" },
	{ "foob", "Zm9vYg==" }, { "fooba", "Zm9vYmE=" }, { "foobar", "Zm9vYmFy" },
};

static void
test_b64_encode_rfc4648(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(rfc4648) / sizeof(rfc4648[0]); i++) {
		char *e = codec_b64_encode((const unsigned char *)rfc4648[i].plain,
		    strlen(rfc4648[i].plain));
		assert_non_null(e);
		assert_string_equal(e, rfc4648[i].b64);
		free(e);
	}
}

static void
test_b64_decode_rfc4648(void **state)
{
	unsigned char out[16];

	(void)state;
	for (size_t i = 0; i < sizeof(rfc4648) / sizeof(rfc4648[0]); i++) {
		size_t pl = strlen(rfc4648[i].plain);
		long n = codec_b64_decode(rfc4648[i].b64, strlen(rfc4648[i].b64), out,
		    sizeof(out));
		assert_int_equal(n, (long)pl);
		assert_memory_equal(out, rfc4648[i].plain, pl);
	}
}

/* Every byte value and every length mod 3 survives a round trip. */
static void
test_b64_round_trip(void **state)
{
	unsigned char in[256], out[256];

	(void)state;
	for (size_t i = 0; i < sizeof(in); i++)
		in[i] = (unsigned char)(255 - i);
	for (size_t n = 0; n <= sizeof(in); n += 37) {
		char *e = codec_b64_encode(in, n);
		assert_non_null(e);
		assert_int_equal(strlen(e), 4 * ((n + 2) / 3));
		assert_int_equal(codec_b64_decode(e, strlen(e), out, sizeof(out)), (long)n);
		assert_memory_equal(out, in, n);
		free(e);
	}
}

/* A message encoded with a part's groups given (codec_b64_encode_with)
 * is, character for character, the message encoded whole: for parts at
 * every offset and of every length in a range of message lengths, with
 * the part's own whole groups poisoned in the message (they must not be
 * read), and the returned lengths are the whole encoding's. */
static void
test_b64_encode_with_a_kept_part_is_the_whole_encoding(void **state)
{
	unsigned char msg[70], poisoned[70];
	char whole[CODEC_B64_LEN(70) + 1], with[CODEC_B64_LEN(70) + 1];
	char inner[CODEC_B64_LEN(70) + 1];
	unsigned cases = 0;

	(void)state;
	for (size_t i = 0; i < sizeof(msg); i++)
		msg[i] = (unsigned char)(i * 151 + 7);
	for (size_t n = 0; n <= sizeof(msg); n++) {
		for (size_t at = 0; at <= n; at++) {
			for (size_t len = 0; at + len <= n; len++) {
				size_t skip = CODEC_B64_INNER_SKIP(at);
				size_t ilen = CODEC_B64_INNER_LEN(at, len);

				assert_int_equal(codec_b64_inner(msg + at, len, at, inner), ilen);
				assert_int_equal(strlen(inner), ilen);
				assert_int_equal(ilen % 4, 0);
				assert_true(ilen / 4 * 3 + skip <= (len > skip ? len : skip));
				memcpy(poisoned, msg, n);
				if (ilen > 0)
					memset(poisoned + at + skip, 0xA5, ilen / 4 * 3);
				assert_int_equal(codec_b64_encode_to(msg, n, whole), CODEC_B64_LEN(n));
				memset(with, 'x', sizeof(with));
				assert_int_equal(codec_b64_encode_with(poisoned, n, at, len, inner, with),
				    CODEC_B64_LEN(n));
				assert_string_equal(with, whole);
				cases++;
			}
		}
	}
	assert_true(cases > 50000);
	/* only the offset's remainder matters: the same part three bytes on */
	assert_int_equal(codec_b64_inner(msg + 10, 40, 10, inner), CODEC_B64_INNER_LEN(13, 40));
	assert_int_equal(codec_b64_encode_to(msg, 60, whole), CODEC_B64_LEN(60));
	assert_int_equal(codec_b64_encode_with(msg, 60, 10, 40, inner, with), CODEC_B64_LEN(60));
	assert_string_equal(with, whole);
}

/* Padding is optional; a caller that insists on it checks len % 4. */
static void
test_b64_padding_optional(void **state)
{
	unsigned char out[8];

	(void)state;
	assert_int_equal(codec_b64_decode("Zg", 2, out, sizeof(out)), 1);
	assert_int_equal(out[0], 'f');
	assert_int_equal(codec_b64_decode("Zm8", 3, out, sizeof(out)), 2);
	assert_memory_equal(out, "fo", 2);
}

static void
test_b64_refusals(void **state)
{
	static const char *const bad[] = {
		"Z",		/* 6 bits: no whole byte */
		"Zm9vY",	/* the same after a quad */
		"Zg=",		/* padded but not a whole quad */
		"Zg===",	/* three '=' */
		"Z===",		/* '=' where a character belongs */
		"=Zg=",		/* '=' not at the end */
		"Zg==Zg==",	/* padding in the middle */
		"Zm 9v",	/* white space */
		"Zm9v\n",	/* a line end */
		"Zm-_",		/* the URL-safe alphabet */
		"Zm9\x80",	/* not ASCII */
	};
	unsigned char out[16];

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(codec_b64_decode(bad[i], strlen(bad[i]), out, sizeof(out)), -1);
	/* a NUL inside the given length is not base64 either */
	assert_int_equal(codec_b64_decode("Zm\0v", 4, out, sizeof(out)), -1);
}

static void
test_b64_capacity(void **state)
{
	unsigned char out[3];

	(void)state;
	assert_int_equal(codec_b64_decode("Zm9v", 4, out, 3), 3);
	assert_int_equal(codec_b64_decode("Zm9vYg==", 8, out, 3), -2);
	assert_int_equal(codec_b64_decode("Zg==", 4, out, 0), -2);
	assert_int_equal(codec_b64_decode("", 0, out, 0), 0);
}

static void
test_hex_value(void **state)
{
	(void)state;
	for (int c = 0; c < 256; c++) {
		int want = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 :
		    c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
		assert_int_equal(codec_hex_value((unsigned char)c), want);
	}
}

static void
test_pct_byte(void **state)
{
	unsigned char b = 0x55;

	(void)state;
	assert_int_equal(codec_pct_byte("%2F", 3, &b), 0);
	assert_int_equal(b, '/');
	assert_int_equal(codec_pct_byte("%2fxyz", 6, &b), 0);
	assert_int_equal(b, '/');
	assert_int_equal(codec_pct_byte("%00", 3, &b), 0);	/* NUL is the caller's rule */
	assert_int_equal(b, 0);
	assert_int_equal(codec_pct_byte("%ff", 3, &b), 0);
	assert_int_equal(b, 0xff);
	b = 0x55;
	assert_int_equal(codec_pct_byte("%2F", 2, &b), -1);	/* cut by len */
	assert_int_equal(codec_pct_byte("%2", 2, &b), -1);
	assert_int_equal(codec_pct_byte("%", 1, &b), -1);
	assert_int_equal(codec_pct_byte("%G0", 3, &b), -1);
	assert_int_equal(codec_pct_byte("%0G", 3, &b), -1);
	assert_int_equal(codec_pct_byte("%+1", 3, &b), -1);
	assert_int_equal(codec_pct_byte("x2F", 3, &b), -1);
	assert_int_equal(b, 0x55);				/* untouched on failure */
}

static void
test_eq_ci(void **state)
{
	(void)state;
	assert_true(codec_eq_ci("Content-Length", 14, "content-length", 14));
	assert_true(codec_eq_ci("", 0, "", 0));
	assert_false(codec_eq_ci("close", 5, "closed", 6));
	assert_false(codec_eq_ci("close", 5, "clos", 4));
	assert_false(codec_eq_ci("[", 1, "{", 1));	/* 0x5b vs 0x7b: not letters */
	assert_false(codec_eq_ci("\xc9", 1, "\xe9", 1));	/* not ASCII: as it is */
	assert_true(codec_eq_ci("a\0b", 3, "A\0B", 3));	/* lengths, not NULs */
}

/* Decimal without printf agrees with printf at the edges of each width. */
static void
test_u64_dec(void **state)
{
	const unsigned long long v[] = { 0, 9, 10, 99, 100, 4294967295ull, 4294967296ull,
	    9999999999999999999ull, 10000000000000000000ull, UINT64_MAX };
	char got[CODEC_U64_DEC_MAX], want[32];

	(void)state;
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		snprintf(want, sizeof(want), "%llu", v[i]);
		memset(got, 'x', sizeof(got));
		assert_int_equal(codec_u64_dec(got, v[i]), strlen(want));
		assert_string_equal(got, want);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_b64_encode_rfc4648),
		cmocka_unit_test(test_b64_decode_rfc4648),
		cmocka_unit_test(test_b64_round_trip),
		cmocka_unit_test(test_b64_encode_with_a_kept_part_is_the_whole_encoding),
		cmocka_unit_test(test_b64_padding_optional),
		cmocka_unit_test(test_b64_refusals),
		cmocka_unit_test(test_b64_capacity),
		cmocka_unit_test(test_hex_value),
		cmocka_unit_test(test_pct_byte),
		cmocka_unit_test(test_eq_ci),
		cmocka_unit_test(test_u64_dec),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
