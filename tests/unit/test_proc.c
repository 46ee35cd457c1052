/*
 * proc_start_failure: the cause a child sends with IPC_START_FAILED is
 * untrusted text. The parent keeps at most cap - 1 bytes of it ("..."
 * marks a cut, never inside a UTF-8 sequence), no control byte and no NUL
 * reaches its log line, and a payload that is not one string field is
 * refused.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>

#include "ipc.h"
#include "proc.h"

static struct ipc_buf b;

/* A START_FAILED payload: str of n bytes at t. */
static void
payload(const void *t, size_t n)
{
	ipc_buf_init(&b);
	ipc_put_bytes(&b, t, n);
	assert_int_equal(b.err, 0);
}

/* The payload t (n bytes) kept in buf[0..cap) as want. */
static void
expect_cause(char *buf, size_t cap, const char *want, const void *t, size_t n)
{
	payload(t, n);
	assert_int_equal(proc_start_failure(b.data, b.len, buf, cap), 0);
	assert_string_equal(buf, want);
}

static void
a_cause_that_fits_is_kept_as_it_is(void **state)
{
	static const char t[] = "keytab '/etc/x.keytab' is readable by every user (mode 0644)";
	char buf[PROC_CAUSE_MAX];

	(void)state;
	expect_cause(buf, sizeof(buf), t, t, strlen(t));
	/* exactly cap - 1 bytes: no cut */
	expect_cause(buf, 8, "abcdefg", "abcdefg", 7);
	/* nothing said: an empty cause */
	expect_cause(buf, sizeof(buf), "", "", 0);
}

static void
control_bytes_and_nul_cannot_forge_a_line(void **state)
{
	static const char t[] = "bad\n2026-01-01T00:00:00Z [1] error proc: forged\r\x1b[2J\t\x7f";
	char buf[PROC_CAUSE_MAX];

	(void)state;
	expect_cause(buf, sizeof(buf), "bad?2026-01-01T00:00:00Z [1] error proc: forged??[2J??",
	    t, sizeof(t) - 1);
	/* a NUL inside would hide the rest of the text: it is shown, too */
	expect_cause(buf, sizeof(buf), "a?b", "a\0b", 3);
	/* UTF-8 (a path) passes */
	expect_cause(buf, sizeof(buf), "keytab '/srv/\xc3\xa9t\xc3\xa9.keytab'",
	    "keytab '/srv/\xc3\xa9t\xc3\xa9.keytab'",
	    strlen("keytab '/srv/\xc3\xa9t\xc3\xa9.keytab'"));
}

static void
a_long_cause_is_cut_with_an_ellipsis(void **state)
{
	static char t[40000];
	char buf[PROC_CAUSE_MAX];

	(void)state;
	memset(t, 'x', sizeof(t));
	payload(t, sizeof(t));
	assert_int_equal(proc_start_failure(b.data, b.len, buf, sizeof(buf)), 0);
	assert_int_equal(strlen(buf), PROC_CAUSE_MAX - 1);
	assert_memory_equal(buf + PROC_CAUSE_MAX - 4, "...", 4);
	assert_int_equal(strspn(buf, "x"), PROC_CAUSE_MAX - 4);
	/* one byte too many */
	expect_cause(buf, 8, "abcd...", "abcdefgh", 8);
}

static void
a_cut_never_splits_a_utf8_character(void **state)
{
	char buf[8];		/* 4 bytes kept, then "..." */

	(void)state;
	/* e-acute (2 bytes) whole within the 4: kept */
	expect_cause(buf, sizeof(buf), "ab\xc3\xa9...", "ab\xc3\xa9" "cdef", 8);
	/* its lead byte last of the 4: dropped */
	expect_cause(buf, sizeof(buf), "abc...", "abc\xc3\xa9" "de", 8);
	/* the euro sign (3 bytes) cut after its second byte: dropped whole */
	expect_cause(buf, sizeof(buf), "ab...", "ab\xe2\x82\xac" "def", 8);
	/* a 4-byte character: whole, kept; cut, dropped */
	expect_cause(buf, sizeof(buf), "\xf0\x9f\x98\x80...", "\xf0\x9f\x98\x80" "bcde", 8);
	expect_cause(buf, sizeof(buf), "a...", "a\xf0\x9f\x98\x80" "bcd", 8);
	/* stray continuation bytes (not UTF-8) are not a character to keep
	 * whole: the cut stays where it was */
	expect_cause(buf, sizeof(buf), "a\x80\x80\x80...", "a\x80\x80\x80" "bcde", 8);
}

static void
a_payload_that_is_not_one_string_is_refused(void **state)
{
	char buf[PROC_CAUSE_MAX];
	uint8_t raw[8];
	uint32_t n = 100;

	(void)state;
	/* empty: no length field */
	assert_int_equal(proc_start_failure(b.data, 0, buf, sizeof(buf)), -1);
	assert_string_equal(buf, "");
	/* a length that runs past the payload */
	memcpy(raw, &n, sizeof(n));
	memcpy(raw + 4, "abcd", 4);
	assert_int_equal(proc_start_failure(raw, sizeof(raw), buf, sizeof(buf)), -1);
	assert_string_equal(buf, "");
	/* bytes after the string */
	ipc_buf_init(&b);
	ipc_put_str(&b, "cause");
	ipc_put_u32(&b, 7);
	assert_int_equal(proc_start_failure(b.data, b.len, buf, sizeof(buf)), -1);
	assert_string_equal(buf, "");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(a_cause_that_fits_is_kept_as_it_is),
		cmocka_unit_test(control_bytes_and_nul_cannot_forge_a_line),
		cmocka_unit_test(a_long_cause_is_cut_with_an_ellipsis),
		cmocka_unit_test(a_cut_never_splits_a_utf8_character),
		cmocka_unit_test(a_payload_that_is_not_one_string_is_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
