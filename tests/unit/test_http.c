/*
 * test_http.c — the strict HTTP/1.1 parser (http.c), SPEC §4 and §5.
 *
 * Every refusal is pinned to its detail token and reason, both when the
 * head arrives at once and when it arrives a byte at a time; good heads
 * must give the same parse whatever the split; bodies are run through the
 * decoder the way stream.c drives it (data moved, framing fed in pieces
 * of every size).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "http.h"

#define S(lit)	lit, (sizeof(lit) - 1)

static char *hosts[] = { "mail.example.test", "alt.example.test:8443" };

static struct http_limits
limits(void)
{
	struct http_limits l;

	memset(&l, 0, sizeof(l));
	l.max_header_size = 32768;
	l.max_line = 8192;
	l.max_headers = 100;
	l.max_body_size = 1 << 20;
	l.hosts = hosts;
	l.n_hosts = 2;
	return l;
}

static enum http_result
parse_whole(int resp, const struct http_limits *l, const char *buf, size_t len,
    struct http_msg *m, size_t *consumed)
{
	http_msg_init(m, resp);
	*consumed = 0;
	return resp ? http_parse_response(m, l, buf, len, consumed)
	    : http_parse_request(m, l, buf, len, consumed);
}

/* Feed the growing prefixes buf[0..k) for k = 1, 2, ... the way stream.c
 * does after each read; returns the first non-NEED_MORE verdict. */
static enum http_result
parse_bytewise(int resp, const struct http_limits *l, const char *buf, size_t len,
    struct http_msg *m, size_t *consumed)
{
	enum http_result r = HTTP_NEED_MORE;

	http_msg_init(m, resp);
	*consumed = 0;
	for (size_t k = 1; k <= len && r == HTTP_NEED_MORE; k++)
		r = resp ? http_parse_response(m, l, buf, k, consumed)
		    : http_parse_request(m, l, buf, k, consumed);
	return r;
}

/* Two calls: buf[0..k) then the whole buffer. */
static enum http_result
parse_split(int resp, const struct http_limits *l, const char *buf, size_t len, size_t k,
    struct http_msg *m, size_t *consumed)
{
	enum http_result r;

	http_msg_init(m, resp);
	*consumed = 0;
	r = resp ? http_parse_response(m, l, buf, k, consumed)
	    : http_parse_request(m, l, buf, k, consumed);
	if (r != HTTP_NEED_MORE)
		return r;
	return resp ? http_parse_response(m, l, buf, len, consumed)
	    : http_parse_request(m, l, buf, len, consumed);
}

/* The public result of two parses is the same. */
static void
assert_same_parse(const struct http_msg *a, const struct http_msg *b, const char *what)
{
	if (a->error != b->error || a->head_len != b->head_len || a->method != b->method ||
	    memcmp(&a->target, &b->target, sizeof(a->target)) != 0 ||
	    memcmp(&a->path, &b->path, sizeof(a->path)) != 0 ||
	    memcmp(&a->query, &b->query, sizeof(a->query)) != 0 ||
	    a->version_minor != b->version_minor || a->status != b->status ||
	    a->n_headers != b->n_headers ||
	    memcmp(a->headers, b->headers, a->n_headers * sizeof(a->headers[0])) != 0 ||
	    a->has_cl != b->has_cl || a->content_length != b->content_length ||
	    a->chunked != b->chunked || a->keep_alive != b->keep_alive ||
	    a->expect_continue != b->expect_continue ||
	    memcmp(&a->host, &b->host, sizeof(a->host)) != 0)
		fail_msg("%s: incremental parse differs from the whole-buffer parse", what);
}

static int
slice_is(const char *buf, struct http_slice s, const char *want)
{
	return s.len == strlen(want) && memcmp(buf + s.off, want, s.len) == 0;
}

#define assert_slice(buf, s, want) do { \
	if (!slice_is((buf), (s), (want))) \
		fail_msg("%s is \"%.*s\", expected \"%s\"", #s, (int)(s).len, (buf) + (s).off, (want)); \
} while (0)

/* ---- refusals -------------------------------------------------------------- */

struct refusal {
	const char *name;
	const char *req;
	size_t len;
	const char *token;
	enum reason reason;
};

#define BAD(name, lit, tok)	{ name, S(lit), tok, REASON_BAD_REQUEST }
#define BIG(name, lit, tok)	{ name, S(lit), tok, REASON_TOO_LARGE_HEADER }
#define H(x)	"POST /Microsoft-Server-ActiveSync HTTP/1.1\r\nHost: mail.example.test\r\n" x "\r\n"

static const struct refusal refusals[] = {
	/* Content-Length / Transfer-Encoding */
	BAD("duplicate identical CL", H("Content-Length: 5\r\nContent-Length: 5\r\n"), "dup_cl"),
	BAD("conflicting CL", H("Content-Length: 5\r\nContent-Length: 6\r\n"), "dup_cl"),
	BAD("CL in other case twice", H("content-length: 5\r\nCONTENT-LENGTH: 5\r\n"), "dup_cl"),
	BAD("CL comma list", H("Content-Length: 5, 5\r\n"), "cl_list"),
	BAD("CL comma list no space", H("Content-Length: 5,6\r\n"), "cl_list"),
	BAD("negative CL", H("Content-Length: -5\r\n"), "bad_cl"),
	BAD("plus-signed CL", H("Content-Length: +5\r\n"), "bad_cl"),
	BAD("CL with letters", H("Content-Length: 5a\r\n"), "bad_cl"),
	BAD("CL hex", H("Content-Length: 0x10\r\n"), "bad_cl"),
	BAD("CL inner space", H("Content-Length: 1 0\r\n"), "bad_cl"),
	BAD("empty CL", H("Content-Length:\r\n"), "bad_cl"),
	BAD("blank CL", H("Content-Length:   \r\n"), "bad_cl"),
	BAD("CL overflowing 64 bits", H("Content-Length: 99999999999999999999999\r\n"), "cl_overflow"),
	BAD("CL above 2^62", H("Content-Length: 4611686018427387905\r\n"), "cl_overflow"),
	BAD("CL then TE", H("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"), "cl_te"),
	BAD("TE then CL", H("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"), "cl_te"),
	BAD("TE chunked, chunked", H("Transfer-Encoding: chunked, chunked\r\n"), "te_list"),
	BAD("TE gzip, chunked", H("Transfer-Encoding: gzip, chunked\r\n"), "te_list"),
	BAD("TE chunked, gzip", H("Transfer-Encoding: chunked, gzip\r\n"), "te_list"),
	BAD("TE gzip", H("Transfer-Encoding: gzip\r\n"), "te_unknown"),
	BAD("TE identity", H("Transfer-Encoding: identity\r\n"), "te_unknown"),
	BAD("TE chunkedx", H("Transfer-Encoding: chunkedx\r\n"), "te_unknown"),
	BAD("TE empty", H("Transfer-Encoding:\r\n"), "te_unknown"),
	BAD("TE with a parameter", H("Transfer-Encoding: chunked;q=1\r\n"), "te_unknown"),
	BAD("two TE fields", H("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"), "te_dup"),
	BAD("TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "te_http10"),

	/* line syntax */
	BAD("obs-fold", H("X-A: b\r\n c\r\n"), "obs_fold"),
	BAD("obs-fold with tab", H("X-A: b\r\n\tc\r\n"), "obs_fold"),
	BAD("whitespace line right after the request line",
	    "GET / HTTP/1.1\r\n Host: mail.example.test\r\n\r\n", "obs_fold"),
	BAD("bare CR in a value", H("X-A: b\rc\r\n"), "bare_cr"),
	BAD("bare CR in the request line", "GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", "bare_cr"),
	BAD("CR CR LF", H("X-A: b\r\r\n"), "bare_cr"),
	BAD("bare LF after the request line", "GET / HTTP/1.1\nHost: a\r\n\r\n", "bare_lf"),
	BAD("bare LF after a header", "GET / HTTP/1.1\r\nHost: a\n\r\n", "bare_lf"),
	BAD("bare LF as the end of the head", "GET / HTTP/1.1\r\nHost: a\r\n\n", "bare_lf"),
	BAD("NUL in a value", H("X-A: b\0c\r\n"), "nul"),
	BAD("NUL in a name", H("X\0A: b\r\n"), "nul"),
	BAD("NUL in the target", "GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n", "nul"),
	BAD("SOH in a value", H("X-A: b\001c\r\n"), "ctl_char"),
	BAD("ESC in a value", H("X-A: \033[31m\r\n"), "ctl_char"),
	BAD("DEL in a value", H("X-A: b\177\r\n"), "ctl_char"),
	BAD("VT in a value", H("X-A: b\vc\r\n"), "ctl_char"),
	BAD("no colon", H("X-A b\r\n"), "no_colon"),
	BAD("empty name", H(": b\r\n"), "empty_name"),
	BAD("space inside a name", H("X A: b\r\n"), "header_name"),
	BAD("parenthesis in a name", H("X(A): b\r\n"), "header_name"),
	BAD("control in a name", H("X\001A: b\r\n"), "header_name"),
	BAD("non-ASCII in a name", H("X\303\244: b\r\n"), "header_name"),
	BAD("space before colon", H("Host : mail.example.test\r\n"), "space_before_colon"),
	BAD("tab before colon", H("X-A\t: b\r\n"), "space_before_colon"),

	/* Host */
	BAD("no Host in HTTP/1.1", "GET / HTTP/1.1\r\nX-A: b\r\n\r\n", "no_host"),
	BAD("two Host headers", H("Host: mail.example.test\r\n"), "dup_host"),
	BAD("two Host headers differing", H("Host: evil.test\r\n"), "dup_host"),
	BAD("empty Host", "GET / HTTP/1.1\r\nHost:\r\n\r\n", "empty_host"),
	BAD("blank Host", "GET / HTTP/1.1\r\nHost:  \t \r\n\r\n", "empty_host"),
	BAD("Host with a space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "bad_host"),
	BAD("Host with userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", "bad_host"),
	BAD("Host with port 0", "GET / HTTP/1.1\r\nHost: a:0\r\n\r\n", "bad_host"),
	BAD("Host with big port", "GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n", "bad_host"),
	BAD("Host with empty port", "GET / HTTP/1.1\r\nHost: a:\r\n\r\n", "bad_host"),
	BAD("Host with a slash", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", "bad_host"),
	BAD("Host with broken IPv6", "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", "bad_host"),
	BAD("Host with a non-hex IPv6", "GET / HTTP/1.1\r\nHost: [::g]\r\n\r\n", "bad_host"),
	BAD("Host with empty brackets", "GET / HTTP/1.1\r\nHost: []\r\n\r\n", "bad_host"),
	BAD("Host with junk after IPv6", "GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n", "bad_host"),
	BAD("Host with a letter in the port", "GET / HTTP/1.1\r\nHost: a:1x\r\n\r\n", "bad_host"),
	BAD("Host with a 6-digit port", "GET / HTTP/1.1\r\nHost: a:000443\r\n\r\n", "bad_host"),
	BAD("Host that is only a port", "GET / HTTP/1.1\r\nHost: :443\r\n\r\n", "bad_host"),

	/* request line */
	BAD("method with a parenthesis", "G(T / HTTP/1.1\r\nHost: a\r\n\r\n", "method"),
	BAD("method of 33 bytes", "ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFG / HTTP/1.1\r\nHost: a\r\n\r\n", "method"),
	BAD("leading space", " GET / HTTP/1.1\r\nHost: a\r\n\r\n", "method"),
	BAD("method with a tab", "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", "method"),
	BAD("no version (HTTP/0.9)", "GET /\r\n\r\n", "request_line"),
	BAD("no spaces", "GET\r\n\r\n", "request_line"),
	BAD("two spaces before target", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", "request_line"),
	BAD("two spaces before version", "GET /  HTTP/1.1\r\nHost: a\r\n\r\n", "request_line"),
	BAD("space in target", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", "target_space"),
	BAD("HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", "version"),
	BAD("HTTP/1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", "version"),
	BAD("HTTP/1.10", "GET / HTTP/1.10\r\nHost: a\r\n\r\n", "version"),
	BAD("lower-case version", "GET / http/1.1\r\nHost: a\r\n\r\n", "version"),
	BAD("trailing space after version", "GET / HTTP/1.1 \r\nHost: a\r\n\r\n", "version"),
	BAD("DEL in target", "GET /a\177 HTTP/1.1\r\nHost: a\r\n\r\n", "target"),
	BAD("tab in target", "GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", "target"),
	BAD("non-ASCII in target", "GET /\303\251 HTTP/1.1\r\nHost: a\r\n\r\n", "target"),
	BAD("fragment in target", "GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", "target"),
	BAD("relative target", "GET a HTTP/1.1\r\nHost: a\r\n\r\n", "target"),
	BAD("authority-form", "CONNECT mail.example.test:443 HTTP/1.1\r\nHost: a\r\n\r\n", "target"),
	BAD("ftp scheme", "GET ftp://mail.example.test/ HTTP/1.1\r\nHost: a\r\n\r\n", "target"),
	BAD("asterisk with GET", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", "asterisk"),
	BAD("absolute-form to another host",
	    "GET https://evil.test/Microsoft-Server-ActiveSync HTTP/1.1\r\nHost: evil.test\r\n\r\n", "absolute_host"),
	BAD("absolute-form with userinfo",
	    "GET https://u@mail.example.test/ HTTP/1.1\r\nHost: mail.example.test\r\n\r\n", "absolute_host"),
	BAD("absolute-form with a port not listed",
	    "GET https://alt.example.test/ HTTP/1.1\r\nHost: alt.example.test\r\n\r\n", "absolute_host"),
	BAD("absolute-form with an empty authority", "GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", "absolute_host"),
	BAD("absolute-form and Host disagree",
	    "GET https://mail.example.test/ HTTP/1.1\r\nHost: other.test\r\n\r\n", "host_mismatch"),
	BAD("five empty lines before the request", "\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
	    "leading_empty_lines"),

	/* Connection / Expect */
	BAD("Connection element with a space", H("Connection: close, a b\r\n"), "connection"),
	BAD("Connection element with '@'", H("Connection: cl@se\r\n"), "connection"),
	BAD("Connection names Content-Length", H("Connection: Content-Length\r\n"), "connection_framing"),
	BAD("Connection names Transfer-Encoding", H("Connection: keep-alive, transfer-encoding\r\n"), "connection_framing"),
	BAD("Connection names Host", H("Connection: HOST\r\n"), "connection_framing"),
	BAD("Expect other than 100-continue", H("Expect: 200-ok\r\n"), "expect"),
};

static void
check_refusal(const struct refusal *t, const struct http_limits *l)
{
	struct http_msg *m = malloc(sizeof(*m)), *mb = malloc(sizeof(*mb));
	size_t consumed;
	enum http_result r;

	assert_non_null(m);
	assert_non_null(mb);
	r = parse_whole(0, l, t->req, t->len, m, &consumed);
	if (r != HTTP_ERROR)
		fail_msg("%s: expected a refusal with %s, got result %d", t->name, t->token, (int)r);
	if (strcmp(http_error_token(m->error), t->token) != 0)
		fail_msg("%s: expected detail %s, got %s", t->name, t->token, http_error_token(m->error));
	if (http_error_reason(m->error, 0) != t->reason)
		fail_msg("%s: expected reason %s, got %s", t->name, reason_token(t->reason),
		    reason_token(http_error_reason(m->error, 0)));
	if (http_error_reason(m->error, 1) != REASON_BACKEND_BAD_RESPONSE)
		fail_msg("%s: on the backend side the reason must be backend_bad_response", t->name);

	r = parse_bytewise(0, l, t->req, t->len, mb, &consumed);
	if (r != HTTP_ERROR || mb->error != m->error)
		fail_msg("%s: fed a byte at a time, expected %s, got result %d detail %s",
		    t->name, t->token, (int)r, http_error_token(mb->error));
	/* an errored parser stays errored */
	r = http_parse_request(mb, l, t->req, t->len, &consumed);
	assert_int_equal(r, HTTP_ERROR);
	free(m);
	free(mb);
}

static void
test_refusals(void **state)
{
	struct http_limits l = limits();

	(void)state;
	for (size_t i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++)
		check_refusal(&refusals[i], &l);
}

/* Every detail token is distinct and fits the reason grammar. */
static void
test_error_tokens(void **state)
{
	char buf[96];

	(void)state;
	for (int i = 0; i < HTTP_ERR__COUNT; i++) {
		const char *t = http_error_token((enum http_error)i);
		for (const char *p = t; *p; p++)
			if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
				fail_msg("token %s has a character outside [a-z0-9_]", t);
		for (int j = 0; j < i; j++)
			if (strcmp(t, http_error_token((enum http_error)j)) == 0)
				fail_msg("token %s is used twice", t);
		assert_true(strlen(http_error_text((enum http_error)i)) > 0);
	}
	assert_string_equal(reason_token_detail(http_error_reason(HTTP_ERR_CL_TE, 0),
	    http_error_token(HTTP_ERR_CL_TE), buf, sizeof(buf)), "bad_request_cl_te");
	assert_int_equal(reason_status(http_error_reason(HTTP_ERR_HEADER_TOO_LARGE, 0)), 431);
	assert_int_equal(reason_status(http_error_reason(HTTP_ERR_BODY_TOO_LARGE, 0)), 413);
	assert_int_equal(reason_status(http_error_reason(HTTP_ERR_DOT_SEGMENT, 0)), 400);
	assert_int_equal(http_error_reason(HTTP_ERR_NONE, 0), REASON_OK);
	assert_string_equal(http_error_token((enum http_error)9999), "unknown");
}

/* ---- every byte in every place -------------------------------------------- */

/* RFC 9110 §5.6.2, written out independently of http.c's class table. */
static int
ref_tchar(unsigned c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	    (c != 0 && strchr("!#$%&'*+-.^_`|~", (int)c) != NULL);
}

/* field-value / reason-phrase bytes: HTAB, SP, VCHAR, obs-text */
static int
ref_field(unsigned c)
{
	return c == '\t' || (c >= 0x20 && c != 0x7f);
}

/* What a line with one odd byte c must get when every other byte of it is
 * fine: the line-level rules come first (NUL, bare CR, a LF that ends the
 * line early), then the place's own. */
static enum http_error
line_rule(unsigned c, enum http_error place_rule)
{
	if (c == 0)
		return HTTP_ERR_NUL;
	if (c == '\r')
		return HTTP_ERR_BARE_CR;
	if (c == '\n')
		return HTTP_ERR_BARE_LF;
	return place_rule;
}

/* head[] with '@' replaced by c, parsed whole and a byte at a time; both
 * verdicts must be want (HTTP_ERR_NONE: the head is accepted). */
static void
expect_byte(int resp, const char *tmpl, unsigned c, enum http_error want)
{
	struct http_limits l = limits();
	struct http_msg m;
	char buf[256];
	size_t n = strlen(tmpl), consumed;
	enum http_result r[2];

	assert_true(n < sizeof(buf));
	memcpy(buf, tmpl, n);
	*(char *)memchr(buf, '@', n) = (char)c;
	r[0] = parse_whole(resp, &l, buf, n, &m, &consumed);
	if ((r[0] == HTTP_DONE ? HTTP_ERR_NONE : m.error) != want || r[0] == HTTP_NEED_MORE)
		fail_msg("byte 0x%02x in \"%s\": got %s (result %d), want %s", c, tmpl,
		    http_error_token(m.error), (int)r[0], http_error_token(want));
	r[1] = parse_bytewise(resp, &l, buf, n, &m, &consumed);
	if (r[1] != r[0] || (r[1] == HTTP_ERROR && m.error != want))
		fail_msg("byte 0x%02x in \"%s\" fed a byte at a time: got %s (result %d)", c,
		    tmpl, http_error_token(m.error), (int)r[1]);
}

/*
 * The parser judges a well-formed line in one pass over byte classes and
 * goes through the rules one by one only for a line that fails it: every
 * one of the 256 byte values in each place of a line must get what the
 * rules say (accepted, or the refusal of the first rule it breaks).
 */
static void
test_every_byte_in_each_place(void **state)
{
	(void)state;
	for (unsigned c = 0; c < 256; c++) {
		enum http_error e;

		/* method */
		e = ref_tchar(c) ? HTTP_ERR_NONE
		    : line_rule(c, c == ' ' ? HTTP_ERR_TARGET_SPACE : HTTP_ERR_METHOD);
		expect_byte(0, "G@T / HTTP/1.1\r\nHost: a\r\n\r\n", c, e);
		/* request target */
		e = (c >= 0x21 && c <= 0x7e && c != '#') ? HTTP_ERR_NONE
		    : line_rule(c, c == ' ' ? HTTP_ERR_TARGET_SPACE : HTTP_ERR_TARGET);
		expect_byte(0, "GET /a@b HTTP/1.1\r\nHost: a\r\n\r\n", c, e);
		/* version */
		e = (c == '0' || c == '1') ? HTTP_ERR_NONE : line_rule(c, HTTP_ERR_VERSION);
		expect_byte(0, "GET / HTTP/1.@\r\nHost: a\r\n\r\n", c, e);
		/* header name; a ':' makes "X" the name and "Y: v" the value */
		e = (ref_tchar(c) || c == ':') ? HTTP_ERR_NONE
		    : line_rule(c, HTTP_ERR_HEADER_NAME);
		expect_byte(0, "GET / HTTP/1.1\r\nHost: a\r\nX@Y: v\r\n\r\n", c, e);
		/* the name's last byte */
		e = (ref_tchar(c) || c == ':') ? HTTP_ERR_NONE
		    : line_rule(c, (c == ' ' || c == '\t') ? HTTP_ERR_SPACE_BEFORE_COLON
		    : HTTP_ERR_HEADER_NAME);
		expect_byte(0, "GET / HTTP/1.1\r\nHost: a\r\nX@: v\r\n\r\n", c, e);
		/* a line's first byte */
		e = ref_tchar(c) ? HTTP_ERR_NONE
		    : (c == ' ' || c == '\t') ? HTTP_ERR_OBS_FOLD
		    : line_rule(c, c == ':' ? HTTP_ERR_EMPTY_NAME : HTTP_ERR_HEADER_NAME);
		expect_byte(0, "GET / HTTP/1.1\r\nHost: a\r\n@X: v\r\n\r\n", c, e);
		/* header value, inside and at either end (trimmed OWS) */
		e = ref_field(c) ? HTTP_ERR_NONE : line_rule(c, HTTP_ERR_CTL_CHAR);
		expect_byte(0, "GET / HTTP/1.1\r\nHost: a\r\nX: a@b\r\n\r\n", c, e);
		expect_byte(0, "GET / HTTP/1.1\r\nHost: a\r\nX:@\r\n\r\n", c, e);
		expect_byte(0, "GET / HTTP/1.1\r\nHost: a\r\nX: a@\r\n\r\n", c, e);
		expect_byte(1, "HTTP/1.1 200 OK\r\nX: a@b\r\n\r\n", c, e);
		/* reason phrase */
		expect_byte(1, "HTTP/1.1 200 O@K\r\n\r\n", c, e);
		expect_byte(1, "HTTP/1.1 200 @\r\n\r\n", c, e);
		/* long runs are checked eight bytes at a time: the byte at
		 * every offset of such a word, and in the tail after it */
		for (size_t k = 0; k < 19; k++) {
			char t[160];
			static const char run[] = "abcdefghijklmnopqrst";

			e = ref_field(c) ? HTTP_ERR_NONE : line_rule(c, HTTP_ERR_CTL_CHAR);
			snprintf(t, sizeof(t), "GET / HTTP/1.1\r\nHost: a\r\nX: %.*s@%s\r\n\r\n",
			    (int)k, run, run + k);
			expect_byte(0, t, c, e);
			snprintf(t, sizeof(t), "HTTP/1.1 200 %.*s@%s\r\n\r\n", (int)k, run, run + k);
			expect_byte(1, t, c, e);
			e = (c >= 0x21 && c <= 0x7e && c != '#') ? HTTP_ERR_NONE
			    : line_rule(c, c == ' ' ? HTTP_ERR_TARGET_SPACE : HTTP_ERR_TARGET);
			snprintf(t, sizeof(t), "GET /%.*s@%s HTTP/1.1\r\nHost: a\r\n\r\n",
			    (int)k, run, run + k);
			expect_byte(0, t, c, e);
		}
		/* status code digits */
		e = (c >= '1' && c <= '5') ? HTTP_ERR_NONE
		    : line_rule(c, (c >= '0' && c <= '9') ? HTTP_ERR_STATUS : HTTP_ERR_STATUS_LINE);
		expect_byte(1, "HTTP/1.1 @00 OK\r\n\r\n", c, e);
		e = (c >= '0' && c <= '9') ? HTTP_ERR_NONE : line_rule(c, HTTP_ERR_STATUS_LINE);
		expect_byte(1, "HTTP/1.1 2@0 OK\r\n\r\n", c, e);
		/* the byte after the status code */
		e = c == ' ' ? HTTP_ERR_NONE : line_rule(c, HTTP_ERR_STATUS_LINE);
		expect_byte(1, "HTTP/1.1 200@OK\r\n\r\n", c, e);
	}
}

/* When a line breaks several rules, the first in the rules' order names
 * the refusal, wherever the bytes are in the line. */
static void
test_first_broken_rule_names_the_refusal(void **state)
{
	static const struct {
		int resp;
		const char *head;
		size_t len;
		enum http_error want;
	} cases[] = {
		/* NUL / bare CR come before every rule of the line's shape */
		{ 0, S("G\x01T /a\0b HTTP/1.1\r\nHost: a\r\n\r\n"), HTTP_ERR_NUL },
		{ 0, S("GET /a#b HTTP/1.1\rx\r\nHost: a\r\n\r\n"), HTTP_ERR_BARE_CR },
		{ 0, S("GET /a\rb HTTP/1.1\0\r\nHost: a\r\n\r\n"), HTTP_ERR_BARE_CR },
		{ 0, S("GET / HTTP/1.1\r\nHost: a\r\nX\x01Y: a\0b\r\n\r\n"), HTTP_ERR_NUL },
		{ 0, S("GET / HTTP/1.1\r\nHost: a\r\nX Y: a\rb\r\n\r\n"), HTTP_ERR_BARE_CR },
		{ 1, S("HTTP/2.0 200 \0K\r\n\r\n"), HTTP_ERR_NUL },
		{ 1, S("HTTP/1.1 2x0 \rK\r\n\r\n"), HTTP_ERR_BARE_CR },
		/* obs-fold before NUL */
		{ 0, S("GET / HTTP/1.1\r\nHost: a\r\n X: \0\r\n\r\n"), HTTP_ERR_OBS_FOLD },
		/* the name before the value */
		{ 0, S("GET / HTTP/1.1\r\nHost: a\r\nX\"Y: \x01\r\n\r\n"), HTTP_ERR_HEADER_NAME },
		{ 0, S("GET / HTTP/1.1\r\nHost: a\r\nX : \x7f\r\n\r\n"), HTTP_ERR_SPACE_BEFORE_COLON },
		/* the method before the target, the version before the target */
		{ 0, S("G(T /a#b HTTP/1.1\r\nHost: a\r\n\r\n"), HTTP_ERR_METHOD },
		{ 0, S("GET /a#b HTTP/1.2\r\nHost: a\r\n\r\n"), HTTP_ERR_VERSION },
		{ 0, S("GET /a#b HTTP/1.1 \r\nHost: a\r\n\r\n"), HTTP_ERR_VERSION },
		/* a method one byte too long, a version one byte too long */
		{ 0, S("ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFG / HTTP/1.1\r\nHost: a\r\n\r\n"),
		    HTTP_ERR_METHOD },
		{ 0, S("GET / HTTP/1.11\r\nHost: a\r\n\r\n"), HTTP_ERR_VERSION },
		{ 0, S("GET  / HTTP/1.1\r\nHost: a\r\n\r\n"), HTTP_ERR_REQUEST_LINE },
		{ 0, S("GET / HTTP/1.1\r\nHost: a\r\nX:\r\nContent-Length: 1\r\n"
		    "Content-Length: 1\r\n\r\n"), HTTP_ERR_DUP_CL },
		/* the status line's fixed places before its reason */
		{ 1, S("HTTP/1.1 600 \x01\r\n\r\n"), HTTP_ERR_STATUS },
		{ 1, S("HTTP/1.1 099\r\n\r\n"), HTTP_ERR_STATUS },
		{ 1, S("HTTP/1.1 20\r\n\r\n"), HTTP_ERR_STATUS_LINE },
		{ 1, S("HTTP/1.1\r\n\r\n"), HTTP_ERR_STATUS_LINE },
		{ 1, S("HTTP/1.\r\n\r\n"), HTTP_ERR_VERSION },
	};
	struct http_limits l = limits();

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct http_msg m;
		size_t consumed;

		for (int how = 0; how < 2; how++) {
			enum http_result r = how == 0
			    ? parse_whole(cases[i].resp, &l, cases[i].head, cases[i].len, &m, &consumed)
			    : parse_bytewise(cases[i].resp, &l, cases[i].head, cases[i].len, &m,
			    &consumed);
			if (r != HTTP_ERROR || m.error != cases[i].want)
				fail_msg("case %zu (%s): got %s (result %d), want %s", i,
				    how == 0 ? "whole" : "a byte at a time",
				    http_error_token(m.error), (int)r,
				    http_error_token(cases[i].want));
		}
	}
}

/* Every header name the proxy acts on gets its id and flags in any case;
 * a name of the same length that differs in one byte is just a header. */
static void
test_known_header_names_any_case(void **state)
{
	static const struct {
		const char *name;
		enum http_hdr id;
		unsigned flags;
	} names[] = {
		{ "Host", HTTP_H_HOST, 0 },
		{ "Content-Length", HTTP_H_CONTENT_LENGTH, HTTP_HF_FRAMING },
		{ "Transfer-Encoding", HTTP_H_TRANSFER_ENCODING, HTTP_HF_FRAMING },
		{ "Connection", HTTP_H_CONNECTION, HTTP_HF_HOP },
		{ "Keep-Alive", HTTP_H_KEEP_ALIVE, HTTP_HF_HOP },
		{ "Proxy-Connection", HTTP_H_PROXY_CONNECTION, HTTP_HF_HOP },
		{ "TE", HTTP_H_TE, HTTP_HF_HOP },
		{ "Trailer", HTTP_H_TRAILER, HTTP_HF_HOP },
		{ "Upgrade", HTTP_H_UPGRADE, HTTP_HF_HOP },
		{ "Expect", HTTP_H_EXPECT, 0 },
		{ "Authorization", HTTP_H_AUTHORIZATION, 0 },
		{ "Proxy-Authorization", HTTP_H_PROXY_AUTHORIZATION, HTTP_HF_HOP },
		{ "Proxy-Authenticate", HTTP_H_PROXY_AUTHENTICATE, HTTP_HF_HOP },
		{ "WWW-Authenticate", HTTP_H_WWW_AUTHENTICATE, 0 },
		{ "Persistent-Auth", HTTP_H_PERSISTENT_AUTH, 0 },
		{ "User-Agent", HTTP_H_USER_AGENT, 0 },
		{ "X-Forwarded-For", HTTP_H_X_FORWARDED_FOR, 0 },
		{ "X-Forwarded-Proto", HTTP_H_X_FORWARDED_PROTO, 0 },
		{ "Forwarded", HTTP_H_FORWARDED, 0 },
		{ "X-MS-Location", HTTP_H_X_MS_LOCATION, 0 },
		{ "Retry-After", HTTP_H_RETRY_AFTER, 0 },
	};
	struct http_limits l = limits();

	(void)state;
	assert_int_equal(sizeof(names) / sizeof(names[0]), HTTP_H__COUNT - 1);
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		size_t nl = strlen(names[i].name);

		for (int variant = 0; variant < 3 + (int)nl; variant++) {
			char name[32], head[128];
			struct http_msg m;
			size_t consumed;
			enum http_hdr want = names[i].id;
			int n;

			memcpy(name, names[i].name, nl + 1);
			for (size_t k = 0; k < nl; k++) {
				if (variant == 1 && name[k] >= 'A' && name[k] <= 'Z')
					name[k] = (char)(name[k] + 32);
				if (variant == 2 && name[k] >= 'a' && name[k] <= 'z')
					name[k] = (char)(name[k] - 32);
			}
			if (variant >= 3) {
				/* one byte changed: another name, same length */
				name[variant - 3] = name[variant - 3] == 'q' ? 'z' : 'q';
				want = HTTP_H_OTHER;
			}
			/* a value every known header accepts where it matters */
			n = snprintf(head, sizeof(head), "GET / HTTP/1.1\r\n%s%s: %s\r\n\r\n",
			    want == HTTP_H_HOST ? "" : "Host: a\r\n", name,
			    want == HTTP_H_CONTENT_LENGTH ? "0" :
			    want == HTTP_H_TRANSFER_ENCODING ? "chunked" :
			    want == HTTP_H_EXPECT ? "100-continue" : "a");
			if (parse_whole(0, &l, head, (size_t)n, &m, &consumed) != HTTP_DONE)
				fail_msg("%s: refused (%s)", name, http_error_token(m.error));
			{
				const struct http_header *h = &m.headers[m.n_headers - 1];
				unsigned flags = want == HTTP_H_OTHER ? 0 : names[i].flags;

				if (h->id != want || h->flags != flags)
					fail_msg("%s: id %u flags %u, want id %u flags %u", name,
					    h->id, h->flags, want, flags);
			}
		}
	}
}

/* ---- size limits ----------------------------------------------------------- */

static void
test_size_limits(void **state)
{
	struct http_limits l = limits();
	char buf[2048];
	struct refusal t;
	int n;

	(void)state;
	l.max_line = 64;
	l.max_header_size = 512;
	l.max_headers = 5;

	/* request line of 65 bytes: too long; of 64 bytes: fine */
	n = snprintf(buf, sizeof(buf), "GET /%0*d HTTP/1.1\r\nHost: a\r\n\r\n", 64 - 14, 0);
	t = (struct refusal){ "request line 65 bytes", buf, (size_t)n, "request_line_too_long",
	    REASON_TOO_LARGE_HEADER };
	{
		struct http_msg m;
		size_t c;
		assert_int_equal(parse_whole(0, &l, buf, (size_t)n, &m, &c), HTTP_DONE);
		assert_int_equal(m.target.len, 64 - 14 + 1);
	}
	n = snprintf(buf, sizeof(buf), "GET /%0*d HTTP/1.1\r\nHost: a\r\n\r\n", 64 - 13, 0);
	t.len = (size_t)n;
	check_refusal(&t, &l);

	/* a request line that never ends is refused once it passed the limit */
	memset(buf, 'a', 200);
	memcpy(buf, "GET /", 5);
	t = (struct refusal){ "endless request line", buf, 200, "request_line_too_long",
	    REASON_TOO_LARGE_HEADER };
	check_refusal(&t, &l);

	/* a long line ending in a bare LF is too long first, whatever the
	 * split (found by fuzz_http) */
	memset(buf, 'a', 100);
	memcpy(buf, "GET /", 5);
	memcpy(buf + 100, "\n\r\n", 3);
	t = (struct refusal){ "long line with a bare LF", buf, 103, "request_line_too_long",
	    REASON_TOO_LARGE_HEADER };
	check_refusal(&t, &l);

	n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: a\r\nX-Long: %0*d\r\n\r\n", 64 - 7, 0);
	t = (struct refusal){ "header line 65 bytes", buf, (size_t)n, "header_line_too_long",
	    REASON_TOO_LARGE_HEADER };
	check_refusal(&t, &l);

	n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\n\r\n");
	t = (struct refusal){ "six headers, limit five", buf, (size_t)n, "too_many_headers",
	    REASON_TOO_LARGE_HEADER };
	check_refusal(&t, &l);

	/* 10 lines of 60 bytes > 512 */
	n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: a\r\n");
	l.max_headers = 100;
	for (int i = 0; i < 10; i++)
		n += snprintf(buf + n, sizeof(buf) - (size_t)n, "X-%d: %050d\r\n", i, 0);
	n += snprintf(buf + n, sizeof(buf) - (size_t)n, "\r\n");
	t = (struct refusal){ "head of 600 bytes, limit 512", buf, (size_t)n, "header_too_large",
	    REASON_TOO_LARGE_HEADER };
	check_refusal(&t, &l);
	/* the caller may hand over more than max_header_size: same verdict */
	{
		struct http_msg m;
		size_t c;
		assert_int_equal(parse_whole(0, &l, buf, (size_t)n, &m, &c), HTTP_ERROR);
		assert_int_equal(m.error, HTTP_ERR_HEADER_TOO_LARGE);
	}
}

/* The head limit counts the whole head: exactly max_header_size passes. */
static void
test_head_exact_limit(void **state)
{
	struct http_limits l = limits();
	const char req[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
	struct http_msg m;
	size_t c;

	(void)state;
	l.max_header_size = sizeof(req) - 1;
	assert_int_equal(parse_whole(0, &l, S(req), &m, &c), HTTP_DONE);
	assert_int_equal(c, sizeof(req) - 1);
	l.max_header_size = sizeof(req) - 2;
	assert_int_equal(parse_whole(0, &l, S(req), &m, &c), HTTP_ERROR);
	assert_string_equal(http_error_token(m.error), "header_too_large");
}

/* ---- good requests --------------------------------------------------------- */

static const struct {
	const char *name;
	const char *req;
	size_t len;
} goods[] = {
	{ "EAS POST", S("POST /Microsoft-Server-ActiveSync?Cmd=Sync&User=alice&DeviceId=v140Device&DeviceType=SmartPhone HTTP/1.1\r\n"
	    "Content-Type: application/vnd.ms-sync.wbxml\r\nMS-ASProtocolVersion: 14.0\r\n"
	    "X-MS-PolicyKey: 2401271238\r\nUser-Agent: ASOM\r\nHost: mail.example.test\r\n"
	    "Content-Length: 13\r\n\r\n") },
	{ "EAS OPTIONS", S("OPTIONS /Microsoft-Server-ActiveSync HTTP/1.1\r\nHost: mail.example.test\r\n\r\n") },
	{ "chunked POST", S("POST /Microsoft-Server-ActiveSync?jAAJBAp2MTQwRGV2aWNlAApTbWFydFBob25l HTTP/1.1\r\n"
	    "Host: mail.example.test:443\r\nTransfer-Encoding: Chunked\r\nExpect: 100-continue\r\n\r\n") },
	{ "HTTP/1.0 keep-alive", S("GET /autodiscover/autodiscover.xml HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n") },
	{ "absolute-form", S("GET https://MAIL.example.test/Microsoft-Server-ActiveSync?Cmd=Ping HTTP/1.1\r\n"
	    "Host: mail.example.test\r\n\r\n") },
	{ "absolute-form with listed port", S("GET https://alt.example.test:8443 HTTP/1.1\r\nHost: alt.example.test:8443\r\n\r\n") },
	{ "asterisk", S("OPTIONS * HTTP/1.1\r\nHost: mail.example.test\r\n\r\n") },
	{ "odd but legal values", S("GET /a?b=c/d?e HTTP/1.1\r\nHost: [::1]:443\r\nX-Empty:\r\nX-Tabs:\t v \t\r\n"
	    "X-Obs-Text: caf\303\251\r\nConnection: close, X-Private\r\nX-Private: 1\r\n!#$%&'*+-.^_`|~: tchar\r\n\r\n") },
	{ "leading empty lines", S("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n") },
	{ "extension method", S("PROPFIND /x HTTP/1.1\r\nHost: a\r\n\r\n") },
	{ "body follows", S("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody") },
};

static void
test_good_requests_any_split(void **state)
{
	struct http_limits l = limits();
	struct http_msg *whole = malloc(sizeof(*whole)), *part = malloc(sizeof(*part));

	(void)state;
	assert_non_null(whole);
	assert_non_null(part);
	for (size_t i = 0; i < sizeof(goods) / sizeof(goods[0]); i++) {
		size_t cw, cp;
		enum http_result r = parse_whole(0, &l, goods[i].req, goods[i].len, whole, &cw);
		if (r != HTTP_DONE)
			fail_msg("%s: expected DONE, got %d (%s)", goods[i].name, (int)r,
			    http_error_token(whole->error));
		for (size_t k = 0; k <= goods[i].len; k++) {
			r = parse_split(0, &l, goods[i].req, goods[i].len, k, part, &cp);
			if (r != HTTP_DONE || cp != cw)
				fail_msg("%s: split at %zu gave %d consumed %zu", goods[i].name, k, (int)r, cp);
			assert_same_parse(whole, part, goods[i].name);
		}
		r = parse_bytewise(0, &l, goods[i].req, goods[i].len, part, &cp);
		assert_int_equal(r, HTTP_DONE);
		assert_int_equal(cp, cw);
		assert_same_parse(whole, part, goods[i].name);
		/* DONE is sticky and repeats consumed */
		assert_int_equal(http_parse_request(part, &l, goods[i].req, goods[i].len, &cp), HTTP_DONE);
		assert_int_equal(cp, cw);
	}
	free(whole);
	free(part);
}

static void
test_request_fields(void **state)
{
	struct http_limits l = limits();
	struct http_msg m;
	size_t c;
	const char *b;
	int i;

	(void)state;
	b = goods[0].req;
	assert_int_equal(parse_whole(0, &l, b, goods[0].len, &m, &c), HTTP_DONE);
	assert_int_equal(c, goods[0].len);
	assert_int_equal(m.method, HTTP_M_POST);
	assert_slice(b, m.method_s, "POST");
	assert_int_equal(m.form, HTTP_FORM_ORIGIN);
	assert_slice(b, m.path, "/Microsoft-Server-ActiveSync");
	assert_slice(b, m.query, "Cmd=Sync&User=alice&DeviceId=v140Device&DeviceType=SmartPhone");
	assert_true(m.has_query);
	assert_int_equal(m.version_minor, 1);
	assert_int_equal(m.n_headers, 6);
	assert_slice(b, m.host, "mail.example.test");
	assert_true(m.has_cl);
	assert_int_equal(m.content_length, 13);
	assert_false(m.chunked);
	assert_true(m.keep_alive);
	assert_false(m.expect_continue);
	i = http_header_find(&m, b, "x-ms-policykey");
	assert_int_equal(i, 2);
	assert_slice(b, m.headers[i].value, "2401271238");
	assert_int_equal(m.headers[i].id, HTTP_H_OTHER);
	i = http_header_find_id(&m, HTTP_H_USER_AGENT);
	assert_int_equal(i, 3);
	assert_int_equal(m.headers[http_header_find_id(&m, HTTP_H_CONTENT_LENGTH)].flags, HTTP_HF_FRAMING);
	assert_int_equal(http_header_find(&m, b, "Authorization"), -1);
	assert_int_equal(http_header_find_id(&m, HTTP_H_OTHER), -1);

	/* chunked + Expect */
	b = goods[2].req;
	assert_int_equal(parse_whole(0, &l, b, goods[2].len, &m, &c), HTTP_DONE);
	assert_true(m.chunked);
	assert_false(m.has_cl);
	assert_true(m.expect_continue);
	assert_slice(b, m.query, "jAAJBAp2MTQwRGV2aWNlAApTbWFydFBob25l");

	/* HTTP/1.0 with keep-alive, no Host */
	b = goods[3].req;
	assert_int_equal(parse_whole(0, &l, b, goods[3].len, &m, &c), HTTP_DONE);
	assert_int_equal(m.version_minor, 0);
	assert_true(m.keep_alive);
	assert_false(m.has_host);
	assert_false(m.has_query);
	assert_int_equal(m.query.len, 0);

	/* absolute-form: host comes from the authority */
	b = goods[4].req;
	assert_int_equal(parse_whole(0, &l, b, goods[4].len, &m, &c), HTTP_DONE);
	assert_int_equal(m.form, HTTP_FORM_ABSOLUTE);
	assert_slice(b, m.authority, "MAIL.example.test");
	assert_slice(b, m.host, "MAIL.example.test");
	assert_slice(b, m.path, "/Microsoft-Server-ActiveSync");
	assert_slice(b, m.query, "Cmd=Ping");
	b = goods[5].req;
	assert_int_equal(parse_whole(0, &l, b, goods[5].len, &m, &c), HTTP_DONE);
	assert_int_equal(m.path.len, 0);
	assert_slice(b, m.authority, "alt.example.test:8443");

	/* asterisk */
	b = goods[6].req;
	assert_int_equal(parse_whole(0, &l, b, goods[6].len, &m, &c), HTTP_DONE);
	assert_int_equal(m.form, HTTP_FORM_ASTERISK);
	assert_int_equal(m.method, HTTP_M_OPTIONS);

	/* values trimmed, obs-text kept, Connection-named header is hop-by-hop */
	b = goods[7].req;
	assert_int_equal(parse_whole(0, &l, b, goods[7].len, &m, &c), HTTP_DONE);
	assert_slice(b, m.path, "/a");
	assert_slice(b, m.query, "b=c/d?e");
	assert_slice(b, m.host, "[::1]:443");
	assert_slice(b, m.headers[1].value, "");
	assert_slice(b, m.headers[2].value, "v");
	assert_slice(b, m.headers[3].value, "caf\303\251");
	assert_false(m.keep_alive);
	assert_true(m.conn_close);
	i = http_header_find(&m, b, "X-Private");
	assert_int_equal(m.headers[i].flags & HTTP_HF_HOP, HTTP_HF_HOP);
	i = http_header_find_id(&m, HTTP_H_CONNECTION);
	assert_int_equal(m.headers[i].flags & HTTP_HF_HOP, HTTP_HF_HOP);
	i = http_header_find(&m, b, "X-Tabs");
	assert_int_equal(m.headers[i].flags, 0);

	/* leading CRLFs are part of the head */
	b = goods[8].req;
	assert_int_equal(parse_whole(0, &l, b, goods[8].len, &m, &c), HTTP_DONE);
	assert_int_equal(c, goods[8].len);
	assert_slice(b, m.method_s, "GET");

	b = goods[9].req;
	assert_int_equal(parse_whole(0, &l, b, goods[9].len, &m, &c), HTTP_DONE);
	assert_int_equal(m.method, HTTP_M_OTHER);
	assert_slice(b, m.method_s, "PROPFIND");
	assert_string_equal(http_method_name(HTTP_M_OPTIONS), "OPTIONS");
	assert_string_equal(http_method_name(HTTP_M_OTHER), "OTHER");

	/* the body is not part of the head */
	b = goods[10].req;
	assert_int_equal(parse_whole(0, &l, b, goods[10].len, &m, &c), HTTP_DONE);
	assert_int_equal(c, goods[10].len - 4);
	assert_memory_equal(b + c, "body", 4);
}

static void
test_keep_alive_and_hop_by_hop(void **state)
{
	static const struct {
		const char *req;
		size_t len;
		int keep_alive;
	} cases[] = {
		{ S("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 1 },
		{ S("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), 0 },
		{ S("GET / HTTP/1.1\r\nHost: a\r\nConnection: CLOSE\r\n\r\n"), 0 },
		{ S("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"), 0 },
		{ S("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, keep-alive\r\n\r\n"), 1 },
		{ S("GET / HTTP/1.0\r\n\r\n"), 0 },
		{ S("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), 1 },
		{ S("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"), 0 },
		{ S("GET / HTTP/1.0\r\nConnection: ,, keep-alive ,\r\n\r\n"), 1 },
	};
	static const char hop[] = "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-one, X-TWO\r\nKeep-Alive: 300\r\n"
	    "Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\n"
	    "Proxy-Authorization: Basic eA==\r\nX-One: 1\r\nx-two: 2\r\nX-Three: 3\r\nAuthorization: Basic eA==\r\n\r\n";
	struct http_limits l = limits();
	struct http_msg m;
	size_t c;

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		assert_int_equal(parse_whole(0, &l, cases[i].req, cases[i].len, &m, &c), HTTP_DONE);
		if (m.keep_alive != cases[i].keep_alive)
			fail_msg("case %zu (%s): keep_alive %d, expected %d", i, cases[i].req,
			    m.keep_alive, cases[i].keep_alive);
	}
	assert_int_equal(parse_whole(0, &l, S(hop), &m, &c), HTTP_DONE);
	for (unsigned i = 0; i < m.n_headers; i++) {
		const struct http_header *h = &m.headers[i];
		int want = !(slice_is(hop, h->name, "Host") || slice_is(hop, h->name, "X-Three") ||
		    slice_is(hop, h->name, "Authorization"));
		if (((h->flags & HTTP_HF_HOP) != 0) != want)
			fail_msg("header %.*s: hop-by-hop %d, expected %d", (int)h->name.len,
			    hop + h->name.off, (h->flags & HTTP_HF_HOP) != 0, want);
	}
	assert_int_equal(m.headers[http_header_find_id(&m, HTTP_H_AUTHORIZATION)].id, HTTP_H_AUTHORIZATION);
}

static void
test_expect(void **state)
{
	struct http_limits l = limits();
	struct http_msg m;
	size_t c;

	(void)state;
	assert_int_equal(parse_whole(0, &l, S("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n"
	    "Content-Length: 3\r\n\r\n"), &m, &c), HTTP_DONE);
	assert_true(m.expect_continue);
	/* RFC 9110 §10.1.1: ignored in HTTP/1.0, whatever its value */
	assert_int_equal(parse_whole(0, &l, S("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n"), &m, &c), HTTP_DONE);
	assert_false(m.expect_continue);
	assert_int_equal(parse_whole(0, &l, S("POST / HTTP/1.0\r\nExpect: whatever\r\n\r\n"), &m, &c), HTTP_DONE);
}

static void
test_list_has_token(void **state)
{
	(void)state;
	assert_true(http_list_has_token(S("close"), "close"));
	assert_true(http_list_has_token(S(" Keep-Alive , Upgrade"), "upgrade"));
	assert_true(http_list_has_token(S(",,a,\t b \t,"), "b"));
	assert_false(http_list_has_token(S("closed"), "close"));
	assert_false(http_list_has_token(S(""), "close"));
	assert_false(http_list_has_token(S("a b"), "a"));
}

/* ---- responses --------------------------------------------------------------- */

static void
test_response_heads(void **state)
{
	static const struct {
		const char *name;
		const char *resp;
		size_t len;
		const char *token;	/* NULL = accepted */
	} cases[] = {
		{ "200 OK", S("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), NULL },
		{ "no reason", S("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"), NULL },
		{ "empty reason", S("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n"), NULL },
		{ "reason with obs-text", S("HTTP/1.1 200 \303\204\r\n\r\n"), NULL },
		{ "HTTP/1.0", S("HTTP/1.0 200 OK\r\n\r\n"), NULL },
		{ "no Host needed, Host ignored", S("HTTP/1.1 200 OK\r\nHost: a\r\nHost: b\r\n\r\n"), NULL },
		{ "4-digit status", S("HTTP/1.1 2000 OK\r\n\r\n"), "status_line" },
		{ "2-digit status", S("HTTP/1.1 20 OK\r\n\r\n"), "status_line" },
		{ "status 099", S("HTTP/1.1 099 Odd\r\n\r\n"), "status" },
		{ "status 600", S("HTTP/1.1 600 Odd\r\n\r\n"), "status" },
		{ "HTTP/1.2", S("HTTP/1.2 200 OK\r\n\r\n"), "version" },
		{ "ICY", S("ICY 200 OK\r\n\r\n"), "version" },
		{ "control in reason", S("HTTP/1.1 200 O\001K\r\n\r\n"), "ctl_char" },
		{ "tab after version", S("HTTP/1.1\t200 OK\r\n\r\n"), "status_line" },
		{ "duplicate CL", S("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"), "dup_cl" },
		{ "CL and TE", S("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"), "cl_te" },
		{ "TE gzip, chunked", S("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), "te_list" },
		{ "TE gzip", S("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"), "te_unknown" },
		{ "TE in HTTP/1.0", S("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), "te_http10" },
		{ "obs-fold", S("HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\n\r\n"), "obs_fold" },
		{ "bare LF", S("HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n"), "bare_lf" },
		{ "NUL", S("HTTP/1.1 200 OK\r\nX-A: \0\r\n\r\n"), "nul" },
		{ "NUL in the status line", S("HTTP/1.1 200 O\0K\r\n\r\n"), "nul" },
		{ "bare CR in the status line", S("HTTP/1.1 200 O\rK\r\n\r\n"), "bare_cr" },
		{ "empty line first", S("\r\nHTTP/1.1 200 OK\r\n\r\n"), "version" },
	};
	struct http_limits l = limits();
	struct http_msg m, mb;
	size_t c;

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		enum http_result r = parse_whole(1, &l, cases[i].resp, cases[i].len, &m, &c);
		enum http_result rb = parse_bytewise(1, &l, cases[i].resp, cases[i].len, &mb, &c);
		if (cases[i].token == NULL) {
			if (r != HTTP_DONE || rb != HTTP_DONE)
				fail_msg("%s: expected DONE, got %d/%d (%s)", cases[i].name, (int)r, (int)rb,
				    http_error_token(m.error));
			assert_same_parse(&m, &mb, cases[i].name);
		} else {
			if (r != HTTP_ERROR || strcmp(http_error_token(m.error), cases[i].token) != 0)
				fail_msg("%s: expected %s, got %d (%s)", cases[i].name, cases[i].token,
				    (int)r, http_error_token(m.error));
			if (rb != HTTP_ERROR || mb.error != m.error)
				fail_msg("%s: byte-wise verdict differs", cases[i].name);
			assert_int_equal(http_error_reason(m.error, 1), REASON_BACKEND_BAD_RESPONSE);
		}
	}
	assert_int_equal(parse_whole(1, &l, S("HTTP/1.1 451 Redirect\r\nX-MS-Location: https://int/x\r\n\r\n"),
	    &m, &c), HTTP_DONE);
	assert_int_equal(m.status, 451);
	assert_slice("HTTP/1.1 451 Redirect\r\n", m.reason, "Redirect");
	assert_int_equal(m.headers[0].id, HTTP_H_X_MS_LOCATION);
	/* a parser set up for one direction refuses the other */
	http_msg_init(&m, 0);
	assert_int_equal(http_parse_response(&m, &l, S("HTTP/1.1 200 OK\r\n\r\n"), &c), HTTP_ERROR);
	http_msg_init(&m, 1);
	assert_int_equal(http_parse_request(&m, &l, S("GET / HTTP/1.1\r\n\r\n"), &c), HTTP_ERROR);
}

static void
test_response_framing(void **state)
{
	static const struct {
		const char *name;
		enum http_method method;
		const char *resp;
		size_t len;
		enum http_body_kind kind;
		int keep_alive;
	} cases[] = {
		{ "HEAD with CL", HTTP_M_HEAD, S("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"), HTTP_BODY_NONE, 1 },
		{ "HEAD with chunked", HTTP_M_HEAD, S("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), HTTP_BODY_NONE, 1 },
		{ "100 Continue", HTTP_M_POST, S("HTTP/1.1 100 Continue\r\n\r\n"), HTTP_BODY_NONE, 1 },
		{ "103 Early Hints", HTTP_M_GET, S("HTTP/1.1 103 Early Hints\r\n\r\n"), HTTP_BODY_NONE, 1 },
		{ "204 with CL", HTTP_M_POST, S("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"), HTTP_BODY_NONE, 1 },
		{ "304", HTTP_M_GET, S("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"), HTTP_BODY_NONE, 1 },
		{ "200 CL", HTTP_M_POST, S("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), HTTP_BODY_LENGTH, 1 },
		{ "200 CL 0", HTTP_M_POST, S("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), HTTP_BODY_NONE, 1 },
		{ "200 chunked", HTTP_M_POST, S("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), HTTP_BODY_CHUNKED, 1 },
		{ "200 until close", HTTP_M_POST, S("HTTP/1.1 200 OK\r\n\r\n"), HTTP_BODY_EOF, 0 },
		{ "401 CL, close", HTTP_M_POST, S("HTTP/1.1 401 Unauthorized\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"), HTTP_BODY_LENGTH, 0 },
		{ "1.0 CL", HTTP_M_GET, S("HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n"), HTTP_BODY_LENGTH, 0 },
		{ "1.0 keep-alive CL", HTTP_M_GET, S("HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n"), HTTP_BODY_LENGTH, 1 },
	};
	struct http_msg m;
	struct http_body b;
	enum http_error e;
	size_t c;

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		assert_int_equal(parse_whole(1, NULL, cases[i].resp, cases[i].len, &m, &c), HTTP_DONE);
		if (http_response_framing(&m, cases[i].method, NULL, &b, &e) != 0)
			fail_msg("%s: framing refused (%s)", cases[i].name, http_error_token(e));
		if (b.kind != cases[i].kind || m.keep_alive != cases[i].keep_alive)
			fail_msg("%s: kind %d keep_alive %d, expected %d %d", cases[i].name, (int)b.kind,
			    m.keep_alive, (int)cases[i].kind, cases[i].keep_alive);
		assert_true(b.is_response);
	}
	/* 101: never asked for */
	assert_int_equal(parse_whole(1, NULL, S("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"), &m, &c),
	    HTTP_DONE);
	assert_int_equal(http_response_framing(&m, HTTP_M_GET, NULL, &b, &e), -1);
	assert_string_equal(http_error_token(e), "switching_protocols");

	/* the backend body limit, when one is set */
	{
		struct http_limits l;
		memset(&l, 0, sizeof(l));
		l.max_body_size = 4;
		assert_int_equal(parse_whole(1, NULL, S("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), &m, &c),
		    HTTP_DONE);
		assert_int_equal(http_response_framing(&m, HTTP_M_GET, &l, &b, &e), -1);
		assert_string_equal(http_error_token(e), "body_too_large");
		assert_int_equal(parse_whole(1, NULL, S("HTTP/1.1 200 OK\r\n\r\n"), &m, &c), HTTP_DONE);
		assert_int_equal(http_response_framing(&m, HTTP_M_GET, &l, &b, &e), 0);
		http_body_data_consumed(&b, 4);
		assert_int_equal(b.error, HTTP_ERR_NONE);
		http_body_data_consumed(&b, 1);
		assert_string_equal(http_error_token(b.error), "body_too_large");
		assert_int_equal(http_body_eof(&b), HTTP_ERROR);
	}

	/* a read-until-close body ends at EOF, fine */
	assert_int_equal(parse_whole(1, NULL, S("HTTP/1.1 200 OK\r\n\r\n"), &m, &c), HTTP_DONE);
	assert_int_equal(http_response_framing(&m, HTTP_M_GET, NULL, &b, &e), 0);
	assert_true(http_body_data_pending(&b) == UINT64_MAX);
	http_body_data_consumed(&b, 1000);
	assert_int_equal(b.total, 1000);
	assert_false(http_body_done(&b));
	assert_int_equal(http_body_eof(&b), HTTP_DONE);
	assert_true(http_body_done(&b));

	/* a Content-Length body cut short is truncated */
	assert_int_equal(parse_whole(1, NULL, S("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), &m, &c), HTTP_DONE);
	assert_int_equal(http_response_framing(&m, HTTP_M_GET, NULL, &b, &e), 0);
	http_body_data_consumed(&b, 3);
	assert_int_equal(http_body_eof(&b), HTTP_ERROR);
	assert_string_equal(http_error_token(b.error), "truncated_body");
}

/* ---- bodies ------------------------------------------------------------------ */

/*
 * Drive the decoder the way stream.c does: data bytes are "moved" (copied
 * to out), framing bytes are handed over, at most piece bytes at a time.
 * Returns the verdict; *used = input bytes consumed.
 */
static enum http_result
run_body(struct http_body *b, const char *in, size_t len, size_t piece,
    char *out, size_t *outlen, size_t *used)
{
	size_t pos = 0;

	*outlen = 0;
	while (!http_body_done(b)) {
		uint64_t pend = http_body_data_pending(b);
		size_t avail = len - pos < piece ? len - pos : piece, c;
		enum http_result r;

		if (b->error != HTTP_ERR_NONE)
			return HTTP_ERROR;
		if (avail == 0)
			break;
		if (pend > 0) {
			size_t n = pend < avail ? (size_t)pend : avail;
			memcpy(out + *outlen, in + pos, n);
			*outlen += n;
			pos += n;
			http_body_data_consumed(b, n);
			continue;
		}
		r = http_body_framing(b, in + pos, avail, &c);
		pos += c;
		if (r == HTTP_ERROR) {
			*used = pos;
			return HTTP_ERROR;
		}
		if (c == 0 && r == HTTP_NEED_MORE && http_body_data_pending(b) == 0)
			fail_msg("the decoder made no progress at %zu", pos);
	}
	*used = pos;
	return http_body_done(b) ? HTTP_DONE : HTTP_NEED_MORE;
}

static const char data26[] = "abcdefghijklmnopqrstuvwxyz";

static void
test_chunked_good(void **state)
{
	static const struct {
		const char *name;
		const char *in;
		size_t len;
		const char *data;
		unsigned chunks;
	} cases[] = {
		{ "one chunk", S("5\r\nhello\r\n0\r\n\r\n"), "hello", 1 },
		{ "odd sizes, upper and lower hex", S("1\r\na\r\n3\r\nbcd\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n"
		    "0\r\n\r\n"), "abcdabcdefghijklmnopqrstuvwxyz", 3 },
		{ "lower-case hex", S("1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n"), data26, 1 },
		{ "leading zeros", S("0005\r\nhello\r\n000\r\n\r\n"), "hello", 1 },
		{ "extensions", S("5;name=value;x=\"q d\"\r\nhello\r\n0;last\r\n\r\n"), "hello", 1 },
		{ "BWS before ;", S("5 \t;ext\r\nhello\r\n0\r\n\r\n"), "hello", 1 },
		{ "trailers", S("5\r\nhello\r\n0\r\nX-Checksum: abc\r\nOther:\t\r\n\r\n"), "hello", 1 },
		{ "empty body", S("0\r\n\r\n"), "", 0 },
		{ "CRLF in data", S("4\r\n\r\n\r\n\r\n0\r\n\r\n"), "\r\n\r\n", 1 },
	};
	char out[256];

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		for (size_t piece = 1; piece <= cases[i].len; piece++) {
			struct http_body b;
			size_t outlen, used;
			enum http_result r;

			http_body_init(&b, HTTP_BODY_CHUNKED, 0, 0, 0);
			r = run_body(&b, cases[i].in, cases[i].len, piece, out, &outlen, &used);
			if (r != HTTP_DONE)
				fail_msg("%s (pieces of %zu): result %d (%s)", cases[i].name, piece, (int)r,
				    http_error_token(b.error));
			if (outlen != strlen(cases[i].data) || memcmp(out, cases[i].data, outlen) != 0 ||
			    used != cases[i].len || b.chunks != cases[i].chunks || b.total != outlen)
				fail_msg("%s (pieces of %zu): data \"%.*s\" used %zu chunks %u", cases[i].name,
				    piece, (int)outlen, out, used, b.chunks);
		}
	}
}

/* The next pipelined message stays in the input. */
static void
test_chunked_stops_at_end(void **state)
{
	static const char in[] = "3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
	struct http_body b;
	char out[16];
	size_t outlen, used, c;

	(void)state;
	http_body_init(&b, HTTP_BODY_CHUNKED, 0, 0, 0);
	assert_int_equal(run_body(&b, S(in), 1000, out, &outlen, &used), HTTP_DONE);
	assert_int_equal(used, sizeof("3\r\nabc\r\n0\r\n\r\n") - 1);
	/* calling again after the end consumes nothing */
	assert_int_equal(http_body_framing(&b, in + used, 3, &c), HTTP_DONE);
	assert_int_equal(c, 0);
	assert_int_equal(http_body_eof(&b), HTTP_DONE);
}

static void
test_chunked_refusals(void **state)
{
	char longext[HTTP_CHUNK_LINE_MAX + 32], manytr[HTTP_TRAILER_LINES_MAX * 8 + 32],
	    bigtr[HTTP_TRAILER_MAX + 64];
	struct {
		const char *name;
		const char *in;
		size_t len;
		uint64_t max;
		const char *token;
		int truncated;	/* refused only when the input ends */
	} cases[] = {
		{ "non-hex size", S("zz\r\n"), 0, "chunk_size", 0 },
		{ "negative size", S("-5\r\n"), 0, "chunk_size", 0 },
		{ "0x prefix", S("0x5\r\nhello\r\n"), 0, "chunk_size", 0 },
		{ "empty size", S("\r\nhello\r\n"), 0, "chunk_size", 0 },
		{ "space before CRLF", S("5 \r\nhello\r\n"), 0, "chunk_size", 0 },
		{ "space inside size", S("1 0\r\n"), 0, "chunk_size", 0 },
		{ "size 2^64", S("10000000000000000\r\n"), 0, "chunk_size_overflow", 0 },
		{ "size 2^60 + 1", S("1000000000000001\r\n"), 0, "chunk_size_overflow", 0 },
		{ "data longer than size", S("5\r\nhelloX\r\n0\r\n\r\n"), 0, "chunk_no_crlf", 0 },
		{ "LF alone after data", S("5\r\nhello\n0\r\n\r\n"), 0, "chunk_no_crlf", 0 },
		{ "CR then junk after data", S("5\r\nhello\rX"), 0, "chunk_no_crlf", 0 },
		{ "bare LF after size", S("5\nhello\r\n"), 0, "bare_lf", 0 },
		{ "bare CR after size", S("5\rhello\r\n"), 0, "bare_cr", 0 },
		{ "bare LF after extension", S("5;a\nhello"), 0, "bare_lf", 0 },
		{ "control in extension", S("5;a\001\r\nhello\r\n"), 0, "chunk_ext", 0 },
		{ "NUL in extension", S("5;a\0\r\nhello\r\n"), 0, "chunk_ext", 0 },
		{ "extension too long", longext, sizeof(longext), 0, "chunk_line_too_long", 0 },
		{ "trailer obs-fold", S("0\r\nX: a\r\n b\r\n\r\n"), 0, "trailer", 0 },
		{ "trailer without colon", S("0\r\nnocolon\r\n\r\n"), 0, "trailer", 0 },
		{ "trailer empty name", S("0\r\n: v\r\n\r\n"), 0, "trailer", 0 },
		{ "trailer bad name", S("0\r\nX Y: v\r\n\r\n"), 0, "trailer", 0 },
		{ "trailer control", S("0\r\nX: a\001b\r\n\r\n"), 0, "trailer", 0 },
		{ "trailer bare LF", S("0\r\nX: a\n\r\n"), 0, "bare_lf", 0 },
		{ "trailer bare CR", S("0\r\nX: a\rb\r\n\r\n"), 0, "bare_cr", 0 },
		{ "final bare LF", S("0\r\n\n"), 0, "bare_lf", 0 },
		{ "final bare CR", S("0\r\n\rX"), 0, "bare_cr", 0 },
		{ "too many trailer lines", manytr, 0, 0, "trailer_too_large", 0 },
		{ "trailer too big", bigtr, sizeof(bigtr), 0, "trailer_too_large", 0 },
		{ "body over max", S("6\r\nabcdef\r\n6\r\nabcdef\r\n0\r\n\r\n"), 10, "body_too_large", 0 },
		{ "one chunk over max", S("b\r\n"), 10, "body_too_large", 0 },
		{ "cut in data", S("5\r\nhel"), 0, "truncated_body", 1 },
		{ "cut in size line", S("5"), 0, "truncated_body", 1 },
		{ "cut before final CRLF", S("0\r\n"), 0, "truncated_body", 1 },
	};
	int n;
	char out[HTTP_TRAILER_MAX + 64];

	(void)state;
	memset(longext, 'a', sizeof(longext));
	memcpy(longext, "5;", 2);
	n = snprintf(manytr, sizeof(manytr), "0\r\n");
	for (int i = 0; i <= HTTP_TRAILER_LINES_MAX; i++)
		n += snprintf(manytr + n, sizeof(manytr) - (size_t)n, "T%d: v\r\n", i);
	n += snprintf(manytr + n, sizeof(manytr) - (size_t)n, "\r\n");
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		if (cases[i].in == manytr)
			cases[i].len = (size_t)n;
	memset(bigtr, 'v', sizeof(bigtr));
	memcpy(bigtr, "0\r\nX: ", 6);

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		for (size_t piece = 1; piece <= cases[i].len; piece += (cases[i].len > 200 ? 97 : 1)) {
			struct http_body b;
			size_t outlen, used;
			enum http_result r;

			http_body_init(&b, HTTP_BODY_CHUNKED, 0, cases[i].max, 0);
			r = run_body(&b, cases[i].in, cases[i].len, piece, out, &outlen, &used);
			if (cases[i].truncated) {
				if (r != HTTP_NEED_MORE)
					fail_msg("%s: expected to wait for more, got %d", cases[i].name, (int)r);
				r = http_body_eof(&b);
			}
			if (r != HTTP_ERROR || strcmp(http_error_token(b.error), cases[i].token) != 0)
				fail_msg("%s (pieces of %zu): expected %s, got %d (%s)", cases[i].name, piece,
				    cases[i].token, (int)r, http_error_token(b.error));
			/* once refused, it stays refused */
			assert_int_equal(http_body_framing(&b, "0\r\n\r\n", 5, &used), HTTP_ERROR);
			assert_int_equal(used, 0);
			assert_int_equal(http_body_data_pending(&b), 0);
		}
	}
	/* body_too_large is a 413 on the request side */
	assert_int_equal(http_error_reason(HTTP_ERR_BODY_TOO_LARGE, 0), REASON_TOO_LARGE_BODY);
	assert_int_equal(http_error_reason(HTTP_ERR_CHUNK_NO_CRLF, 0), REASON_BAD_REQUEST);
}

static void
test_length_body_and_framing(void **state)
{
	struct http_limits l = limits();
	struct http_msg m;
	struct http_body b;
	enum http_error e;
	size_t c;

	(void)state;
	assert_int_equal(parse_whole(0, &l, S("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n"), &m, &c),
	    HTTP_DONE);
	assert_int_equal(http_request_framing(&m, &l, &b, &e), 0);
	assert_int_equal(b.kind, HTTP_BODY_LENGTH);
	assert_int_equal(http_body_data_pending(&b), 10);
	http_body_data_consumed(&b, 4);
	assert_int_equal(http_body_data_pending(&b), 6);
	assert_false(http_body_done(&b));
	/* framing calls while data is pending consume nothing */
	assert_int_equal(http_body_framing(&b, "xx", 2, &c), HTTP_NEED_MORE);
	assert_int_equal(c, 0);
	http_body_data_consumed(&b, 6);
	assert_true(http_body_done(&b));
	assert_int_equal(http_body_data_pending(&b), 0);
	assert_int_equal(http_body_framing(&b, "GET", 3, &c), HTTP_DONE);
	assert_int_equal(c, 0);

	/* more than pending is our bug: the decoder refuses to go on */
	http_body_init(&b, HTTP_BODY_LENGTH, 3, 0, 0);
	http_body_data_consumed(&b, 4);
	assert_string_equal(http_error_token(b.error), "body_misuse");
	assert_int_equal(http_body_data_pending(&b), 0);

	/* Content-Length over max_body_size: 413 before any byte is read */
	l.max_body_size = 9;
	assert_int_equal(http_request_framing(&m, &l, &b, &e), -1);
	assert_int_equal(e, HTTP_ERR_BODY_TOO_LARGE);
	assert_int_equal(http_error_reason(e, 0), REASON_TOO_LARGE_BODY);

	/* no CL, no TE: no body; CL 0 too */
	assert_int_equal(parse_whole(0, &l, S("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), &m, &c), HTTP_DONE);
	assert_int_equal(http_request_framing(&m, &l, &b, &e), 0);
	assert_int_equal(b.kind, HTTP_BODY_NONE);
	assert_true(http_body_done(&b));
	assert_int_equal(parse_whole(0, &l, S("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 000\r\n\r\n"), &m, &c),
	    HTTP_DONE);
	assert_int_equal(http_request_framing(&m, &l, &b, &e), 0);
	assert_int_equal(b.kind, HTTP_BODY_NONE);

	/* chunked with the body limit */
	assert_int_equal(parse_whole(0, &l, S("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
	    &m, &c), HTTP_DONE);
	assert_int_equal(http_request_framing(&m, &l, &b, &e), 0);
	assert_int_equal(b.kind, HTTP_BODY_CHUNKED);
	assert_int_equal(b.max, 9);
}

static void
test_chunk_encoder(void **state)
{
	char buf[HTTP_CHUNK_HDR_MAX];

	(void)state;
	assert_int_equal(http_chunk_header(buf, 1), 3);
	assert_string_equal(buf, "1\r\n");
	assert_int_equal(http_chunk_header(buf, 0x1a2b), 6);
	assert_string_equal(buf, "1a2b\r\n");
	assert_int_equal(http_chunk_header(buf, UINT64_MAX), 18);
	assert_string_equal(buf, "ffffffffffffffff\r\n");
	assert_string_equal(HTTP_CHUNK_LAST, "0\r\n\r\n");

	/* what the encoder writes, the decoder reads back */
	{
		char wire[128], out[64];
		size_t n = 0, outlen, used;
		struct http_body b;
		n += http_chunk_header(buf, 26);
		memcpy(wire, buf, n);
		memcpy(wire + n, data26, 26);
		n += 26;
		memcpy(wire + n, HTTP_CHUNK_CRLF HTTP_CHUNK_LAST, 7);
		n += 7;
		http_body_init(&b, HTTP_BODY_CHUNKED, 0, 0, 0);
		assert_int_equal(run_body(&b, wire, n, 5, out, &outlen, &used), HTTP_DONE);
		assert_int_equal(outlen, 26);
		assert_memory_equal(out, data26, 26);
		assert_int_equal(used, n);
	}
}

/* ---- paths ------------------------------------------------------------------- */

static void
test_path_check(void **state)
{
	static const struct {
		const char *raw;
		const char *want;	/* decoded path, or the error token */
		int ok;
	} cases[] = {
		{ "/Microsoft-Server-ActiveSync", "/Microsoft-Server-ActiveSync", 1 },
		{ "/Microsoft-Server-ActiveSync/default.eas", "/Microsoft-Server-ActiveSync/default.eas", 1 },
		{ "/Microsoft-Server-ActiveSync/", "/Microsoft-Server-ActiveSync/", 1 },
		{ "/Microsoft%2DServer%2dActiveSync", "/Microsoft-Server-ActiveSync", 1 },
		{ "/a/...", "/a/...", 1 },
		{ "/a/.b", "/a/.b", 1 },
		{ "/a;b=c", "/a;b=c", 1 },
		{ "/%41%7e", "/A~", 1 },
		{ "/%3F", "/?", 1 },
		{ "/", "/", 1 },
		{ "", "/", 1 },
		{ "/a/../b", "dot_segment", 0 },
		{ "/a/./b", "dot_segment", 0 },
		{ "/a/..", "dot_segment", 0 },
		{ "/a/.", "dot_segment", 0 },
		{ "/..", "dot_segment", 0 },
		{ "/a/%2e%2e/b", "dot_segment", 0 },
		{ "/a/%2E%2E", "dot_segment", 0 },
		{ "/a/.%2e/b", "dot_segment", 0 },
		{ "/a/%2e/b", "dot_segment", 0 },
		{ "/Microsoft-Server-ActiveSync/..%2Fsecret", "encoded_slash", 0 },
		{ "/a%2fb", "encoded_slash", 0 },
		{ "/a\\b", "backslash", 0 },
		{ "/a%5Cb", "backslash", 0 },
		{ "/a%5c..%5cb", "backslash", 0 },
		{ "/a%00b", "encoded_nul", 0 },
		{ "/a%0ab", "encoded_ctl", 0 },
		{ "/a%0D%0Ab", "encoded_ctl", 0 },
		{ "/a%20b", "encoded_ctl", 0 },
		{ "/a%7f", "encoded_ctl", 0 },
		{ "/a%252e%252e", "double_encoding", 0 },
		{ "/a%c0%ae%c0%ae", "non_ascii_path", 0 },
		{ "/a%", "bad_percent", 0 },
		{ "/a%4", "bad_percent", 0 },
		{ "/a%zz", "bad_percent", 0 },
		{ "/a%%41", "bad_percent", 0 },
		{ "//Microsoft-Server-ActiveSync", "empty_segment", 0 },
		{ "/a//b", "empty_segment", 0 },
		{ "a/b", "target", 0 },
		{ "*", "target", 0 },
		{ "/a?b", "target", 0 },
	};
	char out[64];
	enum http_error e;

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int r = http_path_check(cases[i].raw, strlen(cases[i].raw), out, sizeof(out), &e);
		if (cases[i].ok) {
			if (r != 0 || strcmp(out, cases[i].want) != 0)
				fail_msg("path %s: expected \"%s\", got %d \"%s\" (%s)", cases[i].raw,
				    cases[i].want, r, out, http_error_token(e));
		} else if (r != -1 || strcmp(http_error_token(e), cases[i].want) != 0 || out[0] != '\0') {
			fail_msg("path %s: expected %s, got %d (%s)", cases[i].raw, cases[i].want, r,
			    http_error_token(e));
		}
	}
	/* the decoded path must fit */
	assert_int_equal(http_path_check(S("/"), out, 1, &e), -1);
	assert_int_equal(e, HTTP_ERR_PATH_TOO_LONG);
	assert_int_equal(out[0], '\0');
	assert_int_equal(http_path_check(S("/abcdefgh"), out, 9, &e), -1);
	assert_int_equal(e, HTTP_ERR_PATH_TOO_LONG);
	assert_int_equal(http_path_check(S("/abcdefgh"), out, 10, &e), 0);
	assert_string_equal(out, "/abcdefgh");
	assert_int_equal(http_path_check(S("/a/b/"), out, 5, &e), -1);
	assert_int_equal(e, HTTP_ERR_PATH_TOO_LONG);
}

static void
test_path_allowed(void **state)
{
	static char *pv[] = { "/Microsoft-Server-ActiveSync", "/autodiscover/" };
	static char *root[] = { "/" };
	struct config_list paths, rootl, none;
	static const struct {
		const char *path;
		int allowed;
	} cases[] = {
		{ "/Microsoft-Server-ActiveSync", 1 },
		{ "/microsoft-server-activesync", 1 },
		{ "/MICROSOFT-SERVER-ACTIVESYNC/default.eas", 1 },
		{ "/microsoft-server-activesync/", 1 },
		{ "/Microsoft-Server-ActiveSyncX", 0 },
		{ "/Microsoft-Server-ActiveSyn", 0 },
		{ "/Microsoft-Server-ActiveSync.old", 0 },
		{ "/autodiscover", 1 },
		{ "/Autodiscover/Autodiscover.xml", 1 },
		{ "/autodiscoverx", 0 },
		{ "/", 0 },
		{ "/owa", 0 },
		{ "", 0 },
	};

	(void)state;
	memset(&paths, 0, sizeof(paths));
	paths.n = 2;
	paths.v[0] = pv[0];
	paths.v[1] = pv[1];
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		if (http_path_allowed(cases[i].path, &paths) != cases[i].allowed)
			fail_msg("path %s: expected allowed=%d", cases[i].path, cases[i].allowed);
	/* an entry that is not a path is ignored, not a wildcard */
	{
		static char *odd[] = { "Microsoft-Server-ActiveSync", "/owa" };
		struct config_list ol;
		memset(&ol, 0, sizeof(ol));
		ol.n = 2;
		ol.v[0] = odd[0];
		ol.v[1] = odd[1];
		assert_false(http_path_allowed("/Microsoft-Server-ActiveSync", &ol));
		assert_true(http_path_allowed("/owa/x", &ol));
	}
	memset(&rootl, 0, sizeof(rootl));
	rootl.n = 1;
	rootl.v[0] = root[0];
	assert_true(http_path_allowed("/anything/at/all", &rootl));
	memset(&none, 0, sizeof(none));
	assert_false(http_path_allowed("/Microsoft-Server-ActiveSync", &none));
	assert_false(http_path_allowed("/Microsoft-Server-ActiveSync", NULL));
}

/* Decoding and matching together, the way stream.c will use them. */
static void
test_path_end_to_end(void **state)
{
	static char *pv[] = { "/Microsoft-Server-ActiveSync" };
	struct config_list paths;
	struct http_limits l = limits();
	struct http_msg m;
	char dec[256];
	enum http_error e;
	size_t c;
	static const char r1[] = "GET /Microsoft-Server-ActiveSync/%2e%2e/owa HTTP/1.1\r\nHost: a\r\n\r\n";
	static const char r2[] = "GET /microsoft%2Dserver-activesync?Cmd=Ping HTTP/1.1\r\nHost: a\r\n\r\n";

	(void)state;
	memset(&paths, 0, sizeof(paths));
	paths.n = 1;
	paths.v[0] = pv[0];
	assert_int_equal(parse_whole(0, &l, S(r1), &m, &c), HTTP_DONE);
	assert_int_equal(http_path_check(r1 + m.path.off, m.path.len, dec, sizeof(dec), &e), -1);
	assert_int_equal(e, HTTP_ERR_DOT_SEGMENT);
	assert_int_equal(parse_whole(0, &l, S(r2), &m, &c), HTTP_DONE);
	assert_int_equal(http_path_check(r2 + m.path.off, m.path.len, dec, sizeof(dec), &e), 0);
	assert_true(http_path_allowed(dec, &paths));
}

/* absolute-form without a host list, or with unusable entries */
static void
test_absolute_form_host_lists(void **state)
{
	static char *odd[] = { "bad host", "", "MAIL.EXAMPLE.TEST:443" };
	static const char req[] = "GET https://mail.example.test/x HTTP/1.1\r\nHost: mail.example.test\r\n\r\n";
	struct http_limits l = limits();
	struct http_msg m;
	size_t c;

	(void)state;
	assert_int_equal(parse_whole(0, NULL, S(req), &m, &c), HTTP_ERROR);
	assert_string_equal(http_error_token(m.error), "absolute_host");
	l.hosts = NULL;
	assert_int_equal(parse_whole(0, &l, S(req), &m, &c), HTTP_ERROR);
	assert_string_equal(http_error_token(m.error), "absolute_host");
	l.hosts = odd;
	l.n_hosts = 2;
	assert_int_equal(parse_whole(0, &l, S(req), &m, &c), HTTP_ERROR);
	l.n_hosts = 3;
	assert_int_equal(parse_whole(0, &l, S(req), &m, &c), HTTP_DONE);
	/* http:// defaults to port 80, which the entry does not name */
	assert_int_equal(parse_whole(0, &l, S("GET http://mail.example.test/x HTTP/1.1\r\nHost: mail.example.test\r\n\r\n"),
	    &m, &c), HTTP_ERROR);
	assert_int_equal(parse_whole(0, &l, S("GET http://mail.example.test:443/x HTTP/1.1\r\nHost: mail.example.test\r\n\r\n"),
	    &m, &c), HTTP_DONE);
	/* and the ports of authority and Host must agree when both name one */
	assert_int_equal(parse_whole(0, &l, S("GET http://mail.example.test:443/x HTTP/1.1\r\nHost: mail.example.test:80\r\n\r\n"),
	    &m, &c), HTTP_ERROR);
	assert_string_equal(http_error_token(m.error), "host_mismatch");
}

static void
test_limits_from_config(void **state)
{
	struct config *cfg = calloc(1, sizeof(*cfg));
	struct http_limits l;

	(void)state;
	assert_non_null(cfg);
	cfg->server.max_header_size = 16384;
	cfg->server.max_body_size = 64u << 20;
	assert_int_equal(http_limits_from_config(cfg, hosts, 2, &l), 0);
	assert_int_equal(l.max_header_size, 16384);
	assert_int_equal(l.max_body_size, 64u << 20);
	assert_int_equal(l.max_line, HTTP_DEFAULT_MAX_LINE);
	assert_int_equal(l.max_headers, HTTP_MAX_HEADERS);
	assert_ptr_equal(l.hosts, hosts);
	assert_int_equal(l.n_hosts, 2);
	assert_int_equal(http_limits_from_config(cfg, NULL, 5, &l), 0);
	assert_int_equal(l.n_hosts, 0);
	free(cfg);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_error_tokens),
		cmocka_unit_test(test_every_byte_in_each_place),
		cmocka_unit_test(test_first_broken_rule_names_the_refusal),
		cmocka_unit_test(test_known_header_names_any_case),
		cmocka_unit_test(test_size_limits),
		cmocka_unit_test(test_head_exact_limit),
		cmocka_unit_test(test_good_requests_any_split),
		cmocka_unit_test(test_request_fields),
		cmocka_unit_test(test_keep_alive_and_hop_by_hop),
		cmocka_unit_test(test_expect),
		cmocka_unit_test(test_list_has_token),
		cmocka_unit_test(test_response_heads),
		cmocka_unit_test(test_response_framing),
		cmocka_unit_test(test_chunked_good),
		cmocka_unit_test(test_chunked_stops_at_end),
		cmocka_unit_test(test_chunked_refusals),
		cmocka_unit_test(test_length_body_and_framing),
		cmocka_unit_test(test_chunk_encoder),
		cmocka_unit_test(test_path_check),
		cmocka_unit_test(test_path_allowed),
		cmocka_unit_test(test_path_end_to_end),
		cmocka_unit_test(test_absolute_form_host_lists),
		cmocka_unit_test(test_limits_from_config),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
