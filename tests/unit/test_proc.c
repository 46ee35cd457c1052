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

static void
a_cause_that_fits_is_kept_as_it_is(void **state)
{
	static const char t[] = "keytab '/etc/x.keytab' is readable by every user (mode 0644)";
	char buf[PROC_CAUSE_MAX];

	(void)state;
	payload(t, strlen(t));
	assert_int_equal(proc_start_failure(b.data, b.len, buf, sizeof(buf)), 0);
	assert_string_equal(buf, t);
	/* exactly cap - 1 bytes: no cut */
	payload("abcdefg", 7);
	assert_int_equal(proc_start_failure(b.data, b.len, buf, 8), 0);
	assert_string_equal(buf, "abcdefg");
	/* nothing said: an empty cause */
	payload("", 0);
	assert_int_equal(proc_start_failure(b.data, b.len, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "");
}

static void
control_bytes_and_nul_cannot_forge_a_line(void **state)
{
	static const char t[] = "bad\n2026-01-01T00:00:00Z [1] error proc: forged\r\x1b[2J\t\x7f";
	char buf[PROC_CAUSE_MAX];

	(void)state;
	payload(t, sizeof(t) - 1);
	assert_int_equal(proc_start_failure(b.data, b.len, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "bad?2026-01-01T00:00:00Z [1] error proc: forged??[2J??");
	/* a NUL inside would hide the rest of the text: it is shown, too */
	payload("a\0b", 3);
	assert_int_equal(proc_start_failure(b.data, b.len, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "a?b");
	/* UTF-8 (a path) passes */
	payload("keytab '/srv/\xc3\xa9t\xc3\xa9.keytab'",
	    strlen("keytab '/srv/\xc3\xa9t\xc3\xa9.keytab'"));
	assert_int_equal(proc_start_failure(b.data, b.len, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "keytab '/srv/\xc3\xa9t\xc3\xa9.keytab'");
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
	payload("abcdefgh", 8);
	assert_int_equal(proc_start_failure(b.data, b.len, buf, 8), 0);
	assert_string_equal(buf, "abcd...");
}

static void
a_cut_never_splits_a_utf8_character(void **state)
{
	char buf[8];		/* 4 bytes kept, then "..." */

	(void)state;
	/* e-acute (2 bytes) whole within the 4: kept */
	payload("ab\xc3\xa9" "cdef", 8);
	assert_int_equal(proc_start_failure(b.data, b.len, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "ab\xc3\xa9...");
	/* its lead byte last of the 4: dropped */
	payload("abc\xc3\xa9" "de", 8);
	assert_int_equal(proc_start_failure(b.data, b.len, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "abc...");
	/* the euro sign (3 bytes) cut after its second byte: dropped whole */
	payload("ab\xe2\x82\xac" "def", 8);
	assert_int_equal(proc_start_failure(b.data, b.len, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "ab...");
	/* a 4-byte character: whole, kept; cut, dropped */
	payload("\xf0\x9f\x98\x80" "bcde", 8);
	assert_int_equal(proc_start_failure(b.data, b.len, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "\xf0\x9f\x98\x80...");
	payload("a\xf0\x9f\x98\x80" "bcd", 8);
	assert_int_equal(proc_start_failure(b.data, b.len, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "a...");
	/* stray continuation bytes (not UTF-8) are not a character to keep
	 * whole: the cut stays where it was */
	payload("a\x80\x80\x80" "bcde", 8);
	assert_int_equal(proc_start_failure(b.data, b.len, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "a\x80\x80\x80...");
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
