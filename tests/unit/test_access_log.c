/* Unit tests for access_log.c: W3C and JSON rendering of one record; the
 * parent's prepare (directives only in a new file) and the worker's reopen
 * with a descriptor (nothing buffered lost, new lines in the new file). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>
#include <cmocka.h>

#include "access_log.h"

static struct access_rec
sample(void)
{
	struct access_rec r = { 0 };

	r.start_ms = 1795545600123ull;	/* 2026-11-24 18:40:00.123 UTC */
	r.s_ip = "192.0.2.1";
	r.s_port = 443;
	r.c_ip = "198.51.100.7";
	r.method = "POST";
	r.uri_stem = "/Microsoft-Server-ActiveSync";
	r.uri_query = "Cmd=Sync&User=alice&DeviceId=ABC&DeviceType=iPhone";
	r.username = "alice@EXAMPLE.TEST";
	r.user_agent = "Apple-iPhone/1901.1 x";
	r.status = 200;
	r.sc_bytes = 1234;
	r.cs_bytes = 99;
	r.time_taken_ms = 17;
	r.device_id = "ABC";
	r.device_type = "iPhone";
	r.eas_cmd = "Sync";
	r.reason = "ok";
	r.backend = "exchange.example.test:443";
	r.kdc_ms = 3;
	return r;
}

static void
w3c_line_has_every_field_in_order(void **state)
{
	struct access_rec r = sample();
	char buf[2048];

	(void)state;
	assert_true(access_log_format(&r, ACCESS_W3C, buf, sizeof(buf)) > 0);
	assert_string_equal(buf,
	    "2026-11-24 18:40:00 192.0.2.1 POST /Microsoft-Server-ActiveSync "
	    "Cmd=Sync&User=alice&DeviceId=ABC&DeviceType=iPhone 443 alice@EXAMPLE.TEST "
	    "198.51.100.7 Apple-iPhone/1901.1+x 200 1234 99 17 ABC iPhone Sync ok "
	    "exchange.example.test:443 3\n");
}

static void
w3c_empty_fields_are_dashes_and_hostile_bytes_escaped(void **state)
{
	struct access_rec r = sample();
	char buf[2048];

	(void)state;
	r.username = NULL;
	r.uri_query = "";
	r.user_agent = "evil\r\n2026-01-01 forged \"line\"";
	r.kdc_ms = -1;
	assert_true(access_log_format(&r, ACCESS_W3C, buf, sizeof(buf)) > 0);
	assert_non_null(strstr(buf, " /Microsoft-Server-ActiveSync - 443 - 198.51.100.7 "));
	assert_non_null(strstr(buf, "evil%0D%0A2026-01-01+forged+%22line%22 "));
	assert_non_null(strstr(buf, "exchange.example.test:443 -\n"));
	assert_null(strchr(buf, '\r'));
	assert_ptr_equal(strchr(buf, '\n'), buf + strlen(buf) - 1);
}

/* Every byte value at every offset of a long field (fields are copied
 * eight bytes at a time where they can be) comes out as the W3C rule says:
 * SP as '+', controls, DEL, non-ASCII, '"' and '%' as %XX, the rest as is. */
static void
w3c_every_byte_at_every_offset_of_a_field(void **state)
{
	static const char plain[] = "Apple-iPhone9C1/1402.4(x)";
	struct access_rec r = sample();
	char line[2048], field[64], want[128];

	(void)state;
	for (unsigned c = 1; c < 256; c++) {
		for (size_t k = 0; k < sizeof(plain) - 1; k++) {
			size_t w = 0;
			char *at;

			memcpy(field, plain, sizeof(plain));
			field[k] = (char)c;
			r.user_agent = field;
			for (size_t i = 0; field[i] != '\0'; i++) {
				unsigned char b = (unsigned char)field[i];
				if (b == ' ')
					want[w++] = '+';
				else if (b < 0x21 || b > 0x7e || b == '"' || b == '%')
					w += (size_t)snprintf(want + w, 4, "%%%02X", b);
				else
					want[w++] = (char)b;
			}
			want[w] = '\0';
			assert_true(access_log_format(&r, ACCESS_W3C, line, sizeof(line)) > 0);
			/* user_agent is the field after c-ip */
			at = strstr(line, " 198.51.100.7 ");
			assert_non_null(at);
			at += strlen(" 198.51.100.7 ");
			if (strncmp(at, want, w) != 0 || at[w] != ' ')
				fail_msg("byte 0x%02x at %zu: field \"%.*s\", want \"%s\"", c, k,
				    (int)w, at, want);
		}
	}
}

static void
json_line_is_one_object_with_escapes(void **state)
{
	struct access_rec r = sample();
	char buf[4096];

	(void)state;
	r.user_agent = "a\"b\\c\x01\xc3\xa9";
	r.kdc_ms = -1;
	assert_true(access_log_format(&r, ACCESS_JSON, buf, sizeof(buf)) > 0);
	assert_true(buf[0] == '{');
	assert_non_null(strstr(buf, "\"status\":200,"));
	assert_non_null(strstr(buf, "\"user_agent\":\"a\\\"b\\\\c\\u0001\\u00c3\\u00a9\""));
	assert_non_null(strstr(buf, "\"kdc_ms\":null}\n"));
	assert_non_null(strstr(buf, "\"username\":\"alice@EXAMPLE.TEST\""));
}

/* The date and time are made once per second and kept: a line of another
 * second, later or earlier (a record may start before the last one
 * logged), gets its own. */
static void
date_and_time_follow_each_record_across_seconds_and_days(void **state)
{
	struct access_rec r = sample();
	char buf[2048];

	(void)state;
	r.start_ms = 1798761599999ull;	/* 2026-12-31 23:59:59.999 UTC */
	assert_true(access_log_format(&r, ACCESS_W3C, buf, sizeof(buf)) > 0);
	assert_memory_equal(buf, "2026-12-31 23:59:59 ", 20);
	r.start_ms = 1798761600000ull;	/* the next millisecond: a new year */
	assert_true(access_log_format(&r, ACCESS_W3C, buf, sizeof(buf)) > 0);
	assert_memory_equal(buf, "2027-01-01 00:00:00 ", 20);
	r.start_ms = 1798761600999ull;	/* the same second again */
	assert_true(access_log_format(&r, ACCESS_W3C, buf, sizeof(buf)) > 0);
	assert_memory_equal(buf, "2027-01-01 00:00:00 ", 20);
	r.start_ms = 1798761599000ull;	/* back to the second before */
	assert_true(access_log_format(&r, ACCESS_JSON, buf, sizeof(buf)) > 0);
	assert_non_null(strstr(buf, "\"date\":\"2026-12-31\",\"time\":\"23:59:59\""));
}

/* Numbers are written in full decimal, from 0 to the largest counter. */
static void
numbers_are_decimal_from_zero_to_the_largest(void **state)
{
	struct access_rec r = sample();
	char buf[2048];

	(void)state;
	r.status = 0;
	r.s_port = 65535;
	r.sc_bytes = UINT64_MAX;
	r.cs_bytes = 0;
	r.time_taken_ms = 1000000007ull;
	r.kdc_ms = 0;
	assert_true(access_log_format(&r, ACCESS_W3C, buf, sizeof(buf)) > 0);
	assert_non_null(strstr(buf, " 65535 alice@EXAMPLE.TEST "));
	assert_non_null(strstr(buf, " 0 18446744073709551615 0 1000000007 ABC "));
	assert_non_null(strstr(buf, " exchange.example.test:443 0\n"));
}

static void
too_small_buffer_is_refused_not_truncated(void **state)
{
	struct access_rec r = sample();
	char buf[40];

	(void)state;
	assert_int_equal(access_log_format(&r, ACCESS_W3C, buf, sizeof(buf)), 0);
	assert_int_equal(access_log_format(&r, ACCESS_JSON, buf, sizeof(buf)), 0);
}

/* Whatever the room, a line is whole or not written: with fields that are
 * escaped, spaced and plain, each buffer size from 0 up gives 0 until the
 * line fits, then the whole line, the same as in a large buffer. */
static void
every_buffer_size_gives_nothing_or_the_whole_line(void **state)
{
	struct access_rec r = sample();
	char full[1024], buf[1024];

	(void)state;
	r.user_agent = "Mozilla/5.0 (\"x\" 100%)\x7f\x80\x01 end";
	r.uri_query = "Cmd=Sync&User=a%40b c";
	for (int f = 0; f < 2; f++) {
		enum access_format fmt = f ? ACCESS_JSON : ACCESS_W3C;
		size_t n = access_log_format(&r, fmt, full, sizeof(full)), fits = 0;

		assert_true(n > 0);
		for (size_t cap = 0; cap <= n + 8; cap++) {
			size_t m;

			memset(buf, 'Z', sizeof(buf));
			m = access_log_format(&r, fmt, buf, cap);
			if (m == 0) {
				if (fits)
					fail_msg("format %d: fits in %zu bytes but not in %zu", f, fits, cap);
				continue;
			}
			if (!fits)
				fits = cap;
			assert_int_equal(m, n);
			assert_memory_equal(buf, full, n + 1);
		}
		/* the NUL's byte, and no more than an escape's worth of slack
		 * (a field needs room for one escape at each byte) */
		if (fits < n + 1 || fits > n + 4)
			fail_msg("format %d: a %zu-byte line first fits in %zu bytes", f, n, fits);
	}
}

static void
header_names_the_fields(void **state)
{
	char buf[1024];

	(void)state;
	assert_true(access_log_header(buf, sizeof(buf), 1795545600123ull) > 0);
	assert_non_null(strstr(buf, "#Software: eas-kcd-proxy "));
	assert_non_null(strstr(buf, "#Version: 1.0\n#Date: 2026-11-24 18:40:00\n"));
	assert_non_null(strstr(buf, "#Fields: date time s-ip cs-method cs-uri-stem "));
	assert_non_null(strstr(buf, " x-reason x-backend x-kdc-ms\n"));
}

/* ---- files --------------------------------------------------------------- */

static char *
slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	static char buf[65536];
	size_t n;

	assert_non_null(f);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

static unsigned
count(const char *hay, const char *needle)
{
	unsigned n = 0;

	for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++)
		n++;
	return n;
}

static char dir[64];		/* made by the first tmpname, removed at the end */

static int
remove_dir(void **state)
{
	(void)state;
	if (dir[0] != '\0')
		rmdir(dir);
	return 0;
}

static void
tmpname(char *buf, size_t len, const char *leaf)
{
	if (dir[0] == '\0') {
		snprintf(dir, sizeof(dir), "/tmp/test_access_log.XXXXXX");
		assert_non_null(mkdtemp(dir));
	}
	snprintf(buf, len, "%s/%s", dir, leaf);
	unlink(buf);
}

static void
prepare_writes_the_directives_only_into_a_new_file(void **state)
{
	char path[128];
	struct stat st;
	char err[256];
	int fd;

	(void)state;
	tmpname(path, sizeof(path), "w3c.log");
	assert_true((fd = access_log_prepare(path, ACCESS_W3C, err, sizeof(err))) >= 0);
	close(fd);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0640);
	assert_true(strncmp(slurp(path), "#Software: eas-kcd-proxy ", 25) == 0);
	/* again (another generation, a second SIGUSR1): no second block */
	assert_true((fd = access_log_prepare(path, ACCESS_W3C, err, sizeof(err))) >= 0);
	close(fd);
	assert_int_equal(count(slurp(path), "#Fields: "), 1);
	/* JSON lines have no directives */
	tmpname(path, sizeof(path), "json.log");
	assert_true((fd = access_log_prepare(path, ACCESS_JSON, err, sizeof(err))) >= 0);
	close(fd);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, 0);
	unlink(path);
	tmpname(path, sizeof(path), "w3c.log");
	/* a directory that does not exist names the path */
	assert_int_equal(access_log_prepare("/nonexistent-dir/a.log", ACCESS_W3C, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "cannot open access_log /nonexistent-dir/a.log"));
}

static void
reopen_keeps_buffered_lines_in_the_old_file_and_writes_new_ones_to_the_new(void **state)
{
	char path[128], moved[128], err[256];
	struct access_rec r = sample();
	const char *text;
	int fd;

	(void)state;
	tmpname(path, sizeof(path), "rot.log");
	tmpname(moved, sizeof(moved), "rot.log.1");
	assert_true((fd = access_log_prepare(path, ACCESS_W3C, err, sizeof(err))) >= 0);
	close(fd);
	assert_int_equal(access_log_open(path, ACCESS_W3C, 0, err, sizeof(err)), 0);
	r.device_id = "BEFORE";
	access_log_write(&r);			/* buffered, not written yet */
	assert_int_equal(rename(path, moved), 0);
	/* what the parent does on SIGUSR1, then hands over */
	assert_true((fd = access_log_prepare(path, ACCESS_W3C, err, sizeof(err))) >= 0);
	access_log_reopen_fd(fd);
	r.device_id = "AFTER";
	access_log_write(&r);
	access_log_close();

	text = slurp(moved);
	assert_int_equal(count(text, "#Fields: "), 1);
	assert_int_equal(count(text, " BEFORE "), 1);
	assert_int_equal(count(text, " AFTER "), 0);
	text = slurp(path);
	assert_true(strncmp(text, "#Software: ", 11) == 0);
	assert_non_null(strstr(text, "\n#Version: 1.0\n#Date: "));
	assert_int_equal(count(text, "#Fields: "), 1);
	assert_int_equal(count(text, " AFTER "), 1);
	assert_int_equal(count(text, " BEFORE "), 0);
	unlink(path);
	unlink(moved);
}

/*
 * Lines of many lengths, more than the buffer holds, with a record too long
 * for one line among them: the file holds every other line once, whole and
 * in order, as access_log_format renders it (lines go straight into the
 * buffer while a whole line's limit fits there, through a line of their
 * own near its end).
 */
static void
lines_reach_the_file_whole_and_in_order_across_flushes(void **state)
{
	static char want[256 * 1024], got[256 * 1024], id[9000];
	char path[128], err[256];
	struct access_rec r = sample();
	size_t wn = 0, gn = 0, n;
	FILE *f;
	int fd;

	(void)state;
	tmpname(path, sizeof(path), "many.log");
	assert_true((fd = access_log_prepare(path, ACCESS_JSON, err, sizeof(err))) >= 0);
	close(fd);
	assert_int_equal(access_log_open(path, ACCESS_JSON, 0, err, sizeof(err)), 0);
	memset(id, 'x', sizeof(id) - 1);
	for (unsigned i = 0; i < 100; i++) {
		/* 1 .. 2,400 bytes of device id; the 50th is too long */
		size_t len = i == 50 ? sizeof(id) - 1 : 1 + (i * 977u) % 2400u;
		id[len] = '\0';
		r.device_id = id;
		r.sc_bytes = i;
		access_log_write(&r);
		if (i != 50) {
			n = access_log_format(&r, ACCESS_JSON, want + wn, sizeof(want) - wn);
			assert_true(n > 0);
			wn += n;
		}
		id[len] = 'x';
	}
	access_log_close();
	assert_non_null(f = fopen(path, "r"));
	gn = fread(got, 1, sizeof(got), f);
	fclose(f);
	assert_true(wn > 3 * 32768);
	assert_int_equal(gn, wn);
	assert_memory_equal(got, want, wn);
	unlink(path);
}

static void
reopen_without_an_access_log_closes_the_descriptor(void **state)
{
	char path[128], err[256];
	int fd;

	(void)state;
	access_log_close();
	tmpname(path, sizeof(path), "none.log");
	assert_true((fd = access_log_prepare(path, ACCESS_JSON, err, sizeof(err))) >= 0);
	access_log_reopen_fd(fd);
	assert_int_equal(fcntl(fd, F_GETFD), -1);	/* closed */
	unlink(path);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(w3c_line_has_every_field_in_order),
		cmocka_unit_test(w3c_empty_fields_are_dashes_and_hostile_bytes_escaped),
		cmocka_unit_test(w3c_every_byte_at_every_offset_of_a_field),
		cmocka_unit_test(json_line_is_one_object_with_escapes),
		cmocka_unit_test(date_and_time_follow_each_record_across_seconds_and_days),
		cmocka_unit_test(numbers_are_decimal_from_zero_to_the_largest),
		cmocka_unit_test(too_small_buffer_is_refused_not_truncated),
		cmocka_unit_test(every_buffer_size_gives_nothing_or_the_whole_line),
		cmocka_unit_test(header_names_the_fields),
		cmocka_unit_test(prepare_writes_the_directives_only_into_a_new_file),
		cmocka_unit_test(reopen_keeps_buffered_lines_in_the_old_file_and_writes_new_ones_to_the_new),
		cmocka_unit_test(reopen_without_an_access_log_closes_the_descriptor),
		cmocka_unit_test(lines_reach_the_file_whole_and_in_order_across_flushes),
	};
	return cmocka_run_group_tests(tests, NULL, remove_dir);
}
