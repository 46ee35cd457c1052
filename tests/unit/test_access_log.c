/* Unit tests for access_log.c: W3C and JSON rendering of one record. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <string.h>
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

static void
too_small_buffer_is_refused_not_truncated(void **state)
{
	struct access_rec r = sample();
	char buf[40];

	(void)state;
	assert_int_equal(access_log_format(&r, ACCESS_W3C, buf, sizeof(buf)), 0);
	assert_int_equal(access_log_format(&r, ACCESS_JSON, buf, sizeof(buf)), 0);
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

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(w3c_line_has_every_field_in_order),
		cmocka_unit_test(w3c_empty_fields_are_dashes_and_hostile_bytes_escaped),
		cmocka_unit_test(json_line_is_one_object_with_escapes),
		cmocka_unit_test(too_small_buffer_is_refused_not_truncated),
		cmocka_unit_test(header_names_the_fields),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
