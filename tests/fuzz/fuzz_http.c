/*
 * fuzz_http.c — libFuzzer target for the strict HTTP parser (http.c) and
 * the ActiveSync query decoder (eas.c).
 *
 * Input: byte 0 picks the limits and the split pattern, the rest is the
 * wire. One run parses the head twice — whole, and fed in growing prefixes
 * the way stream.c feeds it — and traps unless both give the same verdict;
 * then checks every slice lies inside the head, runs the path checks and
 * the EAS decoder over the target, and drives the body decoder over the
 * bytes after the head in pieces. Invariants that hold for any input are
 * checked with __builtin_trap() so a violation is a crash libFuzzer keeps.
 *
 *   make BUILD=/tmp/b fuzz && /tmp/b/fuzz/fuzz_http -max_total_time=60 tests/fuzz/corpus/http
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "eas.h"
#include "http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)	do { if (!(x)) __builtin_trap(); } while (0)

static char *hosts[] = { "mail.example.test", "alt.example.test:8443" };
static char *path_list[] = { "/Microsoft-Server-ActiveSync", "/autodiscover/" };

static int
log_safe(const char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s < 0x21 || (unsigned char)*s > 0x7e)
			return 0;
	return 1;
}

static void
check_slice(struct http_slice s, size_t head_len)
{
	CHECK((size_t)s.off + s.len <= head_len);
}

static void
fuzz_eas(const char *q, size_t len)
{
	struct eas_query eq;
	enum eas_error e;

	if (eas_query_decode(q, len, &eq, &e) == 0) {
		CHECK(e == EAS_ERR_NONE);
		CHECK(log_safe(eq.cmd) && log_safe(eq.user_log) && log_safe(eq.device_id) &&
		    log_safe(eq.device_type));
		CHECK(strlen(eq.user) <= EAS_USER_MAX);
		if (eq.has_user)
			(void)eas_user_matches(eq.user, "alice@EXAMPLE.TEST");
	} else {
		CHECK(e != EAS_ERR_NONE && e < EAS_ERR__COUNT);
		CHECK(eq.form == EAS_FORM_NONE && !eq.has_user && eq.user[0] == '\0');
	}
}

static void
fuzz_path(const char *p, size_t len)
{
	char out[512];
	enum http_error e;
	struct config_list paths;

	if (http_path_check(p, len, out, sizeof(out), &e) != 0) {
		CHECK(e != HTTP_ERR_NONE && out[0] == '\0');
		return;
	}
	/* a decoded path that passed has no dot segment, no backslash, no
	 * control, no empty segment */
	CHECK(out[0] == '/');
	for (size_t i = 0; out[i] != '\0'; i++) {
		unsigned char c = (unsigned char)out[i];
		CHECK(c > 0x20 && c < 0x7f && c != '\\');
		if (c == '/') {
			CHECK(out[i + 1] != '/');
			CHECK(!(out[i + 1] == '.' && (out[i + 2] == '/' || out[i + 2] == '\0')));
			CHECK(!(out[i + 1] == '.' && out[i + 2] == '.' &&
			    (out[i + 3] == '/' || out[i + 3] == '\0')));
		}
	}
	memset(&paths, 0, sizeof(paths));
	paths.n = 2;
	paths.v[0] = path_list[0];
	paths.v[1] = path_list[1];
	(void)http_path_allowed(out, &paths);
}

/* Drive the body decoder as stream.c does, pieces of `piece` bytes. */
static void
fuzz_body(struct http_body *b, const char *in, size_t len, size_t piece)
{
	size_t pos = 0;
	uint64_t total = 0;
	char hdr[HTTP_CHUNK_HDR_MAX];

	while (!http_body_done(b) && b->error == HTTP_ERR_NONE && pos < len) {
		uint64_t pend = http_body_data_pending(b);
		size_t avail = len - pos < piece ? len - pos : piece, c = 0;
		enum http_result r;

		if (pend > 0) {
			size_t n = pend < avail ? (size_t)pend : avail;
			CHECK(http_chunk_header(hdr, n) < sizeof(hdr));
			http_body_data_consumed(b, n);
			CHECK(b->error == HTTP_ERR_NONE || b->error == HTTP_ERR_BODY_TOO_LARGE);
			total += n;
			pos += n;
			continue;
		}
		r = http_body_framing(b, in + pos, avail, &c);
		CHECK(c <= avail);
		pos += c;
		if (r == HTTP_ERROR) {
			CHECK(b->error != HTTP_ERR_NONE);
			break;
		}
		/* progress: framing eats at least a byte unless data is next
		 * or the body is done */
		CHECK(c > 0 || http_body_data_pending(b) > 0 || http_body_done(b));
	}
	CHECK(b->total == total);
	if (b->max != 0 && b->error == HTTP_ERR_NONE)
		CHECK(b->total <= b->max);
	if (!http_body_done(b) && b->error == HTTP_ERR_NONE)
		CHECK(http_body_eof(b) == HTTP_DONE ? b->kind == HTTP_BODY_EOF : b->error != HTTP_ERR_NONE);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct http_msg whole, part;
	struct http_limits lim;
	struct http_body body;
	enum http_error fe;
	enum http_result r1, r2 = HTTP_NEED_MORE;
	size_t c1 = 0, c2 = 0, step, len;
	const char *buf;
	int resp;
	uint8_t mode;

	if (size < 1)
		return 0;
	mode = data[0];
	buf = (const char *)data + 1;
	len = size - 1;
	resp = (mode & 0x80) != 0;

	memset(&lim, 0, sizeof(lim));
	lim.max_header_size = (mode & 0x40) ? 256 : 8192;
	lim.max_line = (mode & 0x20) ? 64 : 1024;
	lim.max_headers = (mode & 0x10) ? 4 : 0;
	lim.max_body_size = (mode & 0x08) ? 100 : 0;
	lim.hosts = hosts;
	lim.n_hosts = 2;
	step = (size_t)(mode & 0x07) + 1;

	/* the head, whole and incrementally */
	http_msg_init(&whole, resp);
	r1 = resp ? http_parse_response(&whole, &lim, buf, len, &c1)
	    : http_parse_request(&whole, &lim, buf, len, &c1);
	http_msg_init(&part, resp);
	for (size_t k = step < len ? step : len; r2 == HTTP_NEED_MORE; k += step) {
		if (k > len)
			k = len;
		r2 = resp ? http_parse_response(&part, &lim, buf, k, &c2)
		    : http_parse_request(&part, &lim, buf, k, &c2);
		if (k == len)
			break;
	}
	CHECK(r1 == r2);
	CHECK(whole.error == part.error);
	if (r1 == HTTP_ERROR) {
		CHECK(whole.error != HTTP_ERR_NONE);
		(void)http_error_reason(whole.error, resp);
		goto eas;
	}
	if (r1 == HTTP_NEED_MORE)
		goto eas;
	CHECK(c1 == c2 && c1 <= len && c1 <= lim.max_header_size);
	CHECK(whole.n_headers == part.n_headers &&
	    memcmp(whole.headers, part.headers, whole.n_headers * sizeof(whole.headers[0])) == 0);
	CHECK(!(whole.has_cl && whole.chunked));
	for (unsigned i = 0; i < whole.n_headers; i++) {
		check_slice(whole.headers[i].name, c1);
		check_slice(whole.headers[i].value, c1);
		CHECK(whole.headers[i].name.len > 0);
	}
	if (!resp) {
		check_slice(whole.target, c1);
		check_slice(whole.path, c1);
		check_slice(whole.query, c1);
		CHECK(whole.has_host || whole.version_minor == 0);
		if (whole.form != HTTP_FORM_ASTERISK)
			fuzz_path(buf + whole.path.off, whole.path.len);
		fuzz_eas(buf + whole.query.off, whole.query.len);
		if (http_request_framing(&whole, &lim, &body, &fe) == 0)
			fuzz_body(&body, buf + c1, len - c1, step * 3);
	} else {
		CHECK(whole.status >= 100 && whole.status <= 599);
		if (http_response_framing(&whole, (mode & 1) ? HTTP_M_HEAD : HTTP_M_GET, &lim,
		    &body, &fe) == 0)
			fuzz_body(&body, buf + c1, len - c1, step * 3);
	}
	return 0;

eas:
	/* the raw input as a query string and as a path, too */
	fuzz_eas(buf, len < EAS_QUERY_MAX ? len : EAS_QUERY_MAX);
	fuzz_path(buf, len < 400 ? len : 400);
	/* and as a chunked body */
	http_body_init(&body, HTTP_BODY_CHUNKED, 0, (mode & 0x08) ? 100 : 0, resp);
	fuzz_body(&body, buf, len, step);
	return 0;
}
