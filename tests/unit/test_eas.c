/*
 * test_eas.c — the ActiveSync query forms (eas.c), MS-ASHTTP 2.2.1.1.1,
 * SPEC §4 (Cmd/User/DeviceId/DeviceType for logs and check_user_param).
 *
 * Base64 vectors are built here from the byte layout of MS-ASHTTP
 * 2.2.1.1.1.1 by a small encoder, so every length field can be bent; the
 * literal example URI of that section is decoded as well.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "eas.h"

#define S(lit)	lit, (sizeof(lit) - 1)

/* ---- a base64 query builder (MS-ASHTTP 2.2.1.1.1.1 layout) ---------------- */

struct b64q {
	unsigned char b[4096];
	size_t n;
};

static void
put(struct b64q *q, const void *p, size_t n)
{
	assert_true(q->n + n <= sizeof(q->b));
	memcpy(q->b + q->n, p, n);
	q->n += n;
}

static void
put8(struct b64q *q, unsigned v)
{
	unsigned char c = (unsigned char)v;
	put(q, &c, 1);
}

/* version, command, locale, DeviceId, policy key (NULL = length 0),
 * DeviceType; parameters are appended with param(). */
static void
head(struct b64q *q, unsigned ver, unsigned cmd, unsigned locale, const char *devid,
    size_t devid_len, const uint32_t *pk, const char *devtype)
{
	q->n = 0;
	put8(q, ver);
	put8(q, cmd);
	put8(q, locale & 0xff);
	put8(q, locale >> 8);
	put8(q, (unsigned)devid_len);
	put(q, devid, devid_len);
	if (pk != NULL) {
		put8(q, 4);
		put8(q, *pk & 0xff);
		put8(q, (*pk >> 8) & 0xff);
		put8(q, (*pk >> 16) & 0xff);
		put8(q, *pk >> 24);
	} else {
		put8(q, 0);
	}
	put8(q, (unsigned)strlen(devtype));
	put(q, devtype, strlen(devtype));
}

static void
param(struct b64q *q, unsigned tag, const void *v, size_t len)
{
	put8(q, tag);
	put8(q, (unsigned)len);
	put(q, v, len);
}

/* RFC 4648 with padding into out; returns its length. */
static size_t
b64(const struct b64q *q, char *out, size_t cap, int pad)
{
	static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t o = 0, i;

	for (i = 0; i + 2 < q->n; i += 3) {
		uint32_t v = ((uint32_t)q->b[i] << 16) | ((uint32_t)q->b[i + 1] << 8) | q->b[i + 2];
		assert_true(o + 4 < cap);
		out[o++] = a[v >> 18];
		out[o++] = a[(v >> 12) & 63];
		out[o++] = a[(v >> 6) & 63];
		out[o++] = a[v & 63];
	}
	if (q->n - i == 1) {
		uint32_t v = (uint32_t)q->b[i] << 16;
		out[o++] = a[v >> 18];
		out[o++] = a[(v >> 12) & 63];
		if (pad) {
			out[o++] = '=';
			out[o++] = '=';
		}
	} else if (q->n - i == 2) {
		uint32_t v = ((uint32_t)q->b[i] << 16) | ((uint32_t)q->b[i + 1] << 8);
		out[o++] = a[v >> 18];
		out[o++] = a[(v >> 12) & 63];
		out[o++] = a[(v >> 6) & 63];
		if (pad)
			out[o++] = '=';
	}
	out[o] = '\0';
	return o;
}

static int
decode(const char *s, size_t len, struct eas_query *q, enum eas_error *e)
{
	memset(q, 0xa5, sizeof(*q));	/* everything must be written */
	return eas_query_decode(s, len, q, e);
}

static void
expect_error(const char *s, size_t len, const char *token, const char *what)
{
	struct eas_query q;
	enum eas_error e;

	if (decode(s, len, &q, &e) != -1 || strcmp(eas_error_token(e), token) != 0)
		fail_msg("%s: expected %s, got %s", what, token, eas_error_token(e));
	/* a refused query leaves nothing behind */
	if (q.form != EAS_FORM_NONE || q.cmd[0] || q.has_user || q.user[0] || q.device_id[0] ||
	    q.device_type[0] || q.cmd_code != -1)
		fail_msg("%s: the result is not cleared on refusal", what);
}

/* ---- plain form ------------------------------------------------------------ */

static void
test_plain_spec_example(void **state)
{
	struct eas_query q;
	enum eas_error e;

	(void)state;
	assert_int_equal(decode(S("Cmd=Sync&User=rmjones&DeviceId=v140Device&DeviceType=SmartPhone"), &q, &e), 0);
	assert_int_equal(e, EAS_ERR_NONE);
	assert_int_equal(q.form, EAS_FORM_PLAIN);
	assert_string_equal(q.cmd, "Sync");
	assert_int_equal(q.cmd_code, -1);
	assert_true(q.has_user);
	assert_string_equal(q.user, "rmjones");
	assert_string_equal(q.user_log, "rmjones");
	assert_string_equal(q.device_id, "v140Device");
	assert_string_equal(q.device_type, "SmartPhone");
	assert_int_equal(q.protocol_version, 0);
	assert_false(q.has_policy_key);
}

static void
test_plain_decoding(void **state)
{
	struct eas_query q;
	enum eas_error e;

	(void)state;
	/* percent-decoding, '+' as space, DOMAIN\user, names in any case,
	 * unknown parameters skipped, empty pairs skipped */
	assert_int_equal(decode(S("cmd=SmartReply&user=CORP%5Calice&DEVICEID=Appl%2DF17&devicetype=iPhone"
	    "&ItemId=5%3A1&CollectionId=7&SaveInSent=T&Foo=bar&Foo=baz&&x"), &q, &e), 0);
	assert_string_equal(q.cmd, "SmartReply");
	assert_string_equal(q.user, "CORP\\alice");
	assert_string_equal(q.user_log, "CORP\\alice");
	assert_string_equal(q.device_id, "Appl-F17");
	assert_string_equal(q.device_type, "iPhone");
	assert_true(q.save_in_sent);

	assert_int_equal(decode(S("Cmd=Ping&User=alice%40example.test&DeviceId=a+b&DeviceType=x"), &q, &e), 0);
	assert_string_equal(q.user, "alice@example.test");
	assert_string_equal(q.device_id, "a?b");	/* space sanitised for logs */

	/* no User: has_user stays 0 */
	assert_int_equal(decode(S("Cmd=Provision&DeviceId=d&DeviceType=t"), &q, &e), 0);
	assert_false(q.has_user);
	assert_string_equal(q.user, "");
	assert_string_equal(q.user_log, "");

	/* an empty User is present and empty (and will not match anyone) */
	assert_int_equal(decode(S("Cmd=Sync&User=&DeviceId=d"), &q, &e), 0);
	assert_true(q.has_user);
	assert_string_equal(q.user, "");

	/* a single parameter is plain */
	assert_int_equal(decode(S("Cmd=Ping"), &q, &e), 0);
	assert_int_equal(q.form, EAS_FORM_PLAIN);
	assert_string_equal(q.cmd, "Ping");

	/* an '=' that is not trailing padding makes it plain: base64 text
	 * never has one inside */
	assert_int_equal(decode(S("jAAJ=Ap2"), &q, &e), 0);
	assert_int_equal(q.form, EAS_FORM_PLAIN);
	assert_string_equal(q.cmd, "");

	/* a name longer than any we know is skipped, and the verdict is
	 * clean (found by fuzz_http) */
	assert_int_equal(decode(S("ThisParameterNameIsLongerThanThirtyTwoBytes=1&Cmd=Sync"), &q, &e), 0);
	assert_int_equal(e, EAS_ERR_NONE);
	assert_string_equal(q.cmd, "Sync");

	/* an encoded name is the name */
	assert_int_equal(decode(S("%43md=Sync&x=1"), &q, &e), 0);
	assert_string_equal(q.cmd, "Sync");

	/* no query at all */
	assert_int_equal(decode("", 0, &q, &e), 0);
	assert_int_equal(q.form, EAS_FORM_NONE);
	assert_string_equal(q.cmd, "");
	assert_int_equal(q.cmd_code, -1);
}

static void
test_plain_sanitising(void **state)
{
	char buf[600];
	struct eas_query q;
	enum eas_error e;
	int n;

	(void)state;
	/* control bytes, quotes and non-ASCII never reach a log field */
	assert_int_equal(decode(S("Cmd=Sy%0Anc&User=al%22ice%C3%A9&DeviceId=%1b[31m&DeviceType=%7f"), &q, &e), 0);
	assert_string_equal(q.cmd, "Sy?nc");
	assert_string_equal(q.user, "al\"ice\303\251");	/* the real value, for matching */
	assert_string_equal(q.user_log, "al\"ice??");
	assert_string_equal(q.device_id, "?[31m");
	assert_string_equal(q.device_type, "?");

	/* long values are cut with "..." */
	n = snprintf(buf, sizeof(buf), "Cmd=%0100d&DeviceId=%0200d&User=%0250d", 0, 0, 0);
	assert_int_equal(decode(buf, (size_t)n, &q, &e), 0);
	assert_int_equal(strlen(q.cmd), EAS_CMD_MAX - 1);
	assert_string_equal(q.cmd + EAS_CMD_MAX - 4, "...");
	assert_int_equal(strlen(q.device_id), EAS_LOG_MAX);
	assert_string_equal(q.device_id + EAS_LOG_MAX - 3, "...");
	assert_int_equal(strlen(q.user), 250);
	assert_int_equal(strlen(q.user_log), EAS_LOG_MAX);
}

static void
test_plain_refusals(void **state)
{
	char buf[EAS_QUERY_MAX + 16], many[1024];
	int n = 0;

	(void)state;
	expect_error(S("Cmd=Sync&Cmd=Ping"), "eas_dup_param", "Cmd twice");
	expect_error(S("Cmd=Sync&cmd=Sync"), "eas_dup_param", "Cmd twice, other case, same value");
	expect_error(S("User=alice&User=bob&Cmd=Sync"), "eas_dup_param", "User twice");
	expect_error(S("User=alice&%55ser=bob"), "eas_dup_param", "User twice, one encoded");
	expect_error(S("DeviceId=a&DEVICEID=b"), "eas_dup_param", "DeviceId twice");
	expect_error(S("DeviceType=a&DeviceType=a"), "eas_dup_param", "DeviceType twice");
	expect_error(S("Cmd=Sync&ItemId=1&ItemId=2"), "eas_dup_param", "a command parameter twice");
	expect_error(S("Cmd=Sync&User=al%zzice"), "eas_bad_percent", "bad escape in a value");
	expect_error(S("Cmd=Sync&User=alice%"), "eas_bad_percent", "trailing percent");
	expect_error(S("Cmd=Sync&User=alice%4"), "eas_bad_percent", "short escape");
	expect_error(S("Cm%d=Sync&x=1"), "eas_bad_percent", "bad escape in a name");
	expect_error(S("Cmd=Sync&User=alice%00bob"), "eas_nul", "NUL in User");
	expect_error(S("Cmd=Sync&User"), "eas_no_value", "User without '='");
	expect_error(S("Cmd&User=a"), "eas_no_value", "Cmd without '='");

	n = snprintf(buf, sizeof(buf), "Cmd=Sync&User=%0*d", EAS_USER_MAX + 1, 0);
	expect_error(buf, (size_t)n, "eas_too_long", "User longer than EAS_USER_MAX");
	memset(buf, 'a', sizeof(buf));
	memcpy(buf, "Cmd=", 4);
	expect_error(buf, EAS_QUERY_MAX + 1, "eas_too_long", "query longer than EAS_QUERY_MAX");

	n = 0;
	for (int i = 0; i <= EAS_PARAMS_MAX; i++)
		n += snprintf(many + n, sizeof(many) - (size_t)n, "p%d=1&", i);
	expect_error(many, (size_t)n, "eas_too_many_params", "too many parameters");
}

/* ---- base64 form ----------------------------------------------------------- */

static void
test_base64_spec_example(void **state)
{
	struct eas_query q;
	enum eas_error e;

	(void)state;
	/* MS-ASHTTP 2.2.1.1.1.1: "/Microsoft-Server-ActiveSync?jAAJBAp2MTQwRGV2aWNlAApTbWFydFBob25l",
	 * the base64 twin of Cmd=Sync&DeviceId=v140Device&DeviceType=SmartPhone */
	assert_int_equal(decode(S("jAAJBAp2MTQwRGV2aWNlAApTbWFydFBob25l"), &q, &e), 0);
	assert_int_equal(q.form, EAS_FORM_BASE64);
	assert_int_equal(q.protocol_version, 140);
	assert_int_equal(q.cmd_code, 0);
	assert_string_equal(q.cmd, "Sync");
	assert_int_equal(q.locale, 0x0409);
	assert_string_equal(q.device_id, "v140Device");
	assert_false(q.has_policy_key);
	assert_string_equal(q.device_type, "SmartPhone");
	assert_false(q.has_user);
}

static void
test_base64_built(void **state)
{
	struct b64q b;
	struct eas_query q;
	enum eas_error e;
	char txt[8192];
	size_t n;
	uint32_t pk = 3942919513u;
	unsigned char opt = 0x03;
	static const unsigned char guid[16] = { 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
	    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77 };

	(void)state;
	/* Ping 14.1 with a policy key, User, Options, an unknown tag */
	head(&b, 141, 18, 0x0407, S("ApplDNPXYZ1234"), &pk, "iPhone");
	param(&b, 8, S("alice@example.test"));
	param(&b, 7, &opt, 1);
	param(&b, 1, S("7"));
	param(&b, 42, S("future"));
	n = b64(&b, txt, sizeof(txt), 1);
	assert_int_equal(decode(txt, n, &q, &e), 0);
	assert_int_equal(q.protocol_version, 141);
	assert_string_equal(q.cmd, "Ping");
	assert_int_equal(q.locale, 0x0407);
	assert_string_equal(q.device_id, "ApplDNPXYZ1234");
	assert_true(q.has_policy_key);
	assert_int_equal(q.policy_key, pk);
	assert_string_equal(q.device_type, "iPhone");
	assert_true(q.has_user);
	assert_string_equal(q.user, "alice@example.test");
	assert_true(q.has_options);
	assert_int_equal(q.options, 3);
	assert_true(q.save_in_sent);

	/* the same without padding, and with percent-encoded '+' '/' '=' */
	n = b64(&b, txt, sizeof(txt), 0);
	assert_int_equal(decode(txt, n, &q, &e), 0);
	assert_string_equal(q.user, "alice@example.test");

	/* a binary (GUID) DeviceId is logged as hex; device type empty */
	head(&b, 161, 9, 0x0409, (const char *)guid, sizeof(guid), NULL, "");
	n = b64(&b, txt, sizeof(txt), 1);
	assert_int_equal(decode(txt, n, &q, &e), 0);
	assert_string_equal(q.cmd, "FolderSync");
	assert_string_equal(q.device_id, "0123456789ABCDEF0011223344556677");
	assert_string_equal(q.device_type, "");

	/* a long binary DeviceId: hex, cut with "..." */
	{
		unsigned char lg[40];
		memset(lg, 0xab, sizeof(lg));
		head(&b, 141, 0, 0, (const char *)lg, sizeof(lg), NULL, "t");
		n = b64(&b, txt, sizeof(txt), 1);
		assert_int_equal(decode(txt, n, &q, &e), 0);
		assert_int_equal(strlen(q.device_id), EAS_LOG_MAX);
		assert_memory_equal(q.device_id, "ABABAB", 6);
		assert_string_equal(q.device_id + EAS_LOG_MAX - 3, "...");
	}

	/* every command code of the table, and unknown ones */
	for (unsigned code = 0; code < 256; code++) {
		head(&b, 141, code, 0, S("d"), NULL, "t");
		n = b64(&b, txt, sizeof(txt), 1);
		assert_int_equal(decode(txt, n, &q, &e), 0);
		assert_int_equal(q.cmd_code, (int)code);
		if (eas_cmd_name(code) != NULL)
			assert_string_equal(q.cmd, eas_cmd_name(code));
		else
			assert_string_equal(q.cmd, "");
	}
	assert_string_equal(eas_cmd_name(0), "Sync");
	assert_string_equal(eas_cmd_name(4), "GetAttachment");
	assert_null(eas_cmd_name(5));
	assert_string_equal(eas_cmd_name(9), "FolderSync");
	assert_string_equal(eas_cmd_name(18), "Ping");
	assert_string_equal(eas_cmd_name(22), "ValidateCert");
	assert_null(eas_cmd_name(200));

	/* the User tag sanitised for logs, kept whole for matching */
	head(&b, 141, 0, 0, S("d"), NULL, "t");
	param(&b, 8, S("CORP\\al\001ice"));
	n = b64(&b, txt, sizeof(txt), 1);
	assert_int_equal(decode(txt, n, &q, &e), 0);
	assert_string_equal(q.user, "CORP\\al\001ice");
	assert_string_equal(q.user_log, "CORP\\al?ice");
}

static void
test_base64_percent_encoded(void **state)
{
	struct b64q b;
	struct eas_query q, q2;
	enum eas_error e;
	char txt[512], enc[1536];
	size_t n, o = 0;

	(void)state;
	/* bytes chosen so the text holds '+' and '/' */
	head(&b, 0xfb, 0xef, 0xffff, S("\xfb\xff\xbf"), NULL, "?>?");
	n = b64(&b, txt, sizeof(txt), 1);
	assert_non_null(memchr(txt, '+', n));
	assert_non_null(memchr(txt, '/', n));
	assert_int_equal(decode(txt, n, &q, &e), 0);
	for (size_t i = 0; i < n; i++) {
		if (txt[i] == '+' || txt[i] == '/' || txt[i] == '=')
			o += (size_t)snprintf(enc + o, sizeof(enc) - o, "%%%02X", (unsigned char)txt[i]);
		else
			enc[o++] = txt[i];
	}
	assert_int_equal(decode(enc, o, &q2, &e), 0);
	assert_int_equal(q2.form, EAS_FORM_BASE64);
	assert_string_equal(q2.device_id, q.device_id);
	assert_string_equal(q2.device_id, "FBFFBF");
	assert_string_equal(q2.device_type, "?>?");
	assert_int_equal(q2.locale, 0xffff);
}

static void
test_base64_refusals(void **state)
{
	struct b64q b;
	char txt[8192];
	size_t n;
	unsigned char two[2] = { 1, 2 };
	char big[300];

	(void)state;
	expect_error(S("jAAJBAp2MTQwRGV2aWNlAApTbWFydFBob"), "eas_bad_base64", "length 4n+1");
	expect_error(S("jAAJBAp2MTQwRGV2aWNlAApTbWFydFBob25"), "eas_truncated", "unpadded, one byte short");
	expect_error(S("jAAJBA="), "eas_bad_base64", "padding that does not make 4n");
	expect_error(S("jAAJ==="), "eas_bad_base64", "three padding characters");
	expect_error(S("jAAJBAp2MTQw!GV2aWNlAApTbWFydFBob25l"), "eas_bad_base64", "a '!'");
	expect_error(S("jAAJBAp2MTQw-GV2aWNlAApTbWFydFBob25l"), "eas_bad_base64", "URL-safe alphabet");
	expect_error(S("jAAJ%00p2"), "eas_bad_base64", "%00 inside");
	expect_error(S("jAAJ%zz"), "eas_bad_percent", "bad escape");
	expect_error(S("Cmd="), "eas_truncated", "\"Cmd=\" is 2 base64 bytes");

	/* cut at every byte of a valid sequence */
	head(&b, 141, 0, 0x409, S("v140Device"), NULL, "SmartPhone");
	param(&b, 8, S("alice"));
	{
		size_t full = b.n;
		for (size_t cut = 0; cut < full; cut++) {
			struct b64q c = b;
			char what[64];
			c.n = cut;
			n = b64(&c, txt, sizeof(txt), 1);
			if (cut == 0)
				continue;	/* the empty query is no query */
			snprintf(what, sizeof(what), "cut at byte %zu of %zu", cut, full);
			/* a cut right after DeviceType is a complete query
			 * without parameters */
			if (cut == 1 + 1 + 2 + 1 + 10 + 1 + 1 + 10)
				continue;
			expect_error(txt, n, "eas_truncated", what);
		}
	}

	head(&b, 141, 0, 0, "", 0, NULL, "t");
	n = b64(&b, txt, sizeof(txt), 1);
	expect_error(txt, n, "eas_bad_device_id", "DeviceId length 0");

	head(&b, 141, 0, 0, S("d"), NULL, "t");
	b.n = 6;		/* rewrite the policy key length to 2 */
	put8(&b, 2);
	put(&b, two, 2);
	put8(&b, 1);
	put(&b, "t", 1);
	n = b64(&b, txt, sizeof(txt), 1);
	expect_error(txt, n, "eas_bad_policy_key", "policy key length 2");

	head(&b, 141, 0, 0, S("d"), NULL, "t");
	param(&b, 7, two, 2);
	n = b64(&b, txt, sizeof(txt), 1);
	expect_error(txt, n, "eas_bad_options", "Options of two bytes");

	head(&b, 141, 0, 0, S("d"), NULL, "t");
	param(&b, 8, S("alice"));
	param(&b, 8, S("alice"));
	n = b64(&b, txt, sizeof(txt), 1);
	expect_error(txt, n, "eas_dup_param", "User tag twice");

	head(&b, 141, 0, 0, S("d"), NULL, "t");
	param(&b, 3, S("1"));
	param(&b, 3, S("2"));
	n = b64(&b, txt, sizeof(txt), 1);
	expect_error(txt, n, "eas_dup_param", "ItemId tag twice");

	head(&b, 141, 0, 0, S("d"), NULL, "t");
	param(&b, 8, S("al\0ce"));
	n = b64(&b, txt, sizeof(txt), 1);
	expect_error(txt, n, "eas_nul", "NUL in User");

	/* more than EAS_B64_MAX decoded bytes */
	head(&b, 141, 0, 0, S("d"), NULL, "t");
	memset(big, 'x', sizeof(big));
	for (int i = 0; i < 9; i++)
		param(&b, 100 + (unsigned)i, big, 255);
	n = b64(&b, txt, sizeof(txt), 1);
	expect_error(txt, n, "eas_too_long", "more than EAS_B64_MAX bytes");
}

static void
test_error_tokens(void **state)
{
	(void)state;
	for (int i = 0; i < EAS_ERR__COUNT; i++) {
		const char *t = eas_error_token((enum eas_error)i);
		if (i != EAS_ERR_NONE && strncmp(t, "eas_", 4) != 0)
			fail_msg("token %s does not start with eas_", t);
		for (const char *p = t; *p; p++)
			if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
				fail_msg("token %s has a character outside [a-z0-9_]", t);
		for (int j = 0; j < i; j++)
			if (strcmp(t, eas_error_token((enum eas_error)j)) == 0)
				fail_msg("token %s is used twice", t);
		assert_true(strlen(eas_error_text((enum eas_error)i)) > 0);
	}
	assert_string_equal(eas_error_token((enum eas_error)999), "eas_unknown");
}

/* ---- check_user_param ------------------------------------------------------ */

static void
test_user_matches(void **state)
{
	static const struct {
		const char *user;
		const char *principal;
		int match;
	} cases[] = {
		{ "alice", "alice@EXAMPLE.TEST", 1 },
		{ "ALICE", "alice@EXAMPLE.TEST", 1 },
		{ "alice", "Alice@EXAMPLE.TEST", 1 },
		{ "alice@example.test", "alice@EXAMPLE.TEST", 1 },
		{ "Alice@Example.Test", "alice@EXAMPLE.TEST", 1 },
		{ "alice@corp.example", "alice@CORP.EXAMPLE.TEST", 1 },
		{ "EXAMPLE\\alice", "alice@EXAMPLE.TEST", 1 },
		{ "corp\\ALICE", "alice@CORP.EXAMPLE.TEST", 1 },
		{ "bob", "alice@EXAMPLE.TEST", 0 },
		{ "bob@example.test", "alice@EXAMPLE.TEST", 0 },
		{ "EXAMPLE\\bob", "alice@EXAMPLE.TEST", 0 },
		{ "alic", "alice@EXAMPLE.TEST", 0 },
		{ "alicex", "alice@EXAMPLE.TEST", 0 },
		{ "alice ", "alice@EXAMPLE.TEST", 0 },
		{ "", "alice@EXAMPLE.TEST", 0 },
		{ "@example.test", "alice@EXAMPLE.TEST", 0 },
		{ "alice@", "alice@EXAMPLE.TEST", 0 },
		{ "\\alice", "alice@EXAMPLE.TEST", 0 },
		{ "EXAMPLE\\", "alice@EXAMPLE.TEST", 0 },
		{ "alice@a@b", "alice@EXAMPLE.TEST", 0 },
		{ "A\\B\\alice", "alice@EXAMPLE.TEST", 0 },
		{ "EXAMPLE\\alice@example.test", "alice@EXAMPLE.TEST", 0 },
		{ "alice@EXAMPLE.TEST", "alice@EXAMPLE.TEST", 1 },
		{ "j\303\266rg", "j\303\266rg@EXAMPLE.TEST", 1 },
		{ "J\303\226RG", "j\303\266rg@EXAMPLE.TEST", 0 },	/* only ASCII folds */
		{ "alice", "alice", 1 },
	};
	char longuser[EAS_USER_MAX + 8];

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		if (eas_user_matches(cases[i].user, cases[i].principal) != cases[i].match)
			fail_msg("User=\"%s\" vs %s: expected %d", cases[i].user, cases[i].principal,
			    cases[i].match);
	assert_false(eas_user_matches(NULL, "alice@EXAMPLE.TEST"));
	assert_false(eas_user_matches("alice", NULL));
	memset(longuser, 'a', sizeof(longuser) - 1);
	longuser[sizeof(longuser) - 1] = '\0';
	assert_false(eas_user_matches(longuser, longuser));
}

/* Decode then match, as stream.c does with check_user_param. */
static void
test_decode_then_match(void **state)
{
	struct eas_query q;
	enum eas_error e;

	(void)state;
	assert_int_equal(decode(S("Cmd=Sync&User=EXAMPLE%5CAlice&DeviceId=d&DeviceType=t"), &q, &e), 0);
	assert_true(eas_user_matches(q.user, "alice@EXAMPLE.TEST"));
	assert_false(eas_user_matches(q.user, "bob@EXAMPLE.TEST"));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plain_spec_example),
		cmocka_unit_test(test_plain_decoding),
		cmocka_unit_test(test_plain_sanitising),
		cmocka_unit_test(test_plain_refusals),
		cmocka_unit_test(test_base64_spec_example),
		cmocka_unit_test(test_base64_built),
		cmocka_unit_test(test_base64_percent_encoded),
		cmocka_unit_test(test_base64_refusals),
		cmocka_unit_test(test_error_tokens),
		cmocka_unit_test(test_user_matches),
		cmocka_unit_test(test_decode_then_match),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
