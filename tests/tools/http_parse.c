/*
 * http_parse — run one HTTP message from stdin through http.c and print
 * what the parser made of it as one JSON object, for the differential test
 * (tests/integration/test_http_diff.py) and for poking at the parser by
 * hand:
 *
 *   printf 'GET / HTTP/1.1\r\nHost: a\r\n\r\n' | http_parse
 *   http_parse -r [-H] [-s STEP] < response
 *
 *   -r       the input is a response (default: a request)
 *   -H       the response answers a HEAD request
 *   -s STEP  feed the head and the body in pieces of STEP bytes (default:
 *            everything at once), the way stream.c sees a socket
 *
 * Output: {"verdict": "ok"|"error"|"incomplete", "detail", "reason",
 * "method", "target", "path", "query", "version", "status", "headers":
 * [[name, value, flags], ...], "keep_alive", "body_kind", "body" (hex),
 * "rest" (bytes after the message)}. Strings are JSON with every byte
 * outside printable ASCII as \u00XX. Exit 0 whatever the verdict; 2 on
 * usage or I/O errors.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http.h"

#define INPUT_MAX	(16u << 20)

static void
json_str(const char *s, size_t len)
{
	putchar('"');
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static void
json_slice(const char *buf, struct http_slice s)
{
	json_str(buf + s.off, s.len);
}

static const char *
kind_name(enum http_body_kind k)
{
	switch (k) {
	case HTTP_BODY_NONE:	return "none";
	case HTTP_BODY_LENGTH:	return "length";
	case HTTP_BODY_CHUNKED:	return "chunked";
	case HTTP_BODY_EOF:	return "eof";
	}
	return "?";
}

static void
print_error(enum http_error e, int resp)
{
	printf("{\"verdict\": \"error\", \"detail\": \"%s\", \"reason\": \"%s\"}\n",
	    http_error_token(e), reason_token(http_error_reason(e, resp)));
}

int
main(int argc, char **argv)
{
	struct http_msg *m = NULL;
	struct http_limits lim;
	struct http_body b;
	enum http_error fe;
	enum http_result r = HTTP_NEED_MORE;
	char *in = NULL, *body = NULL;
	size_t len = 0, step = 0, consumed = 0, pos, blen = 0;
	int resp = 0, head = 0, opt, rc = 2;
	static char *hosts[] = { "mail.example.test" };

	while ((opt = getopt(argc, argv, "rHs:")) != -1) {
		switch (opt) {
		case 'r': resp = 1; break;
		case 'H': head = 1; break;
		case 's': step = (size_t)strtoul(optarg, NULL, 10); break;
		default:
			fprintf(stderr, "usage: http_parse [-r [-H]] [-s STEP] < message\n");
			return 2;
		}
	}
	in = malloc(INPUT_MAX);
	body = malloc(INPUT_MAX);
	m = malloc(sizeof(*m));
	if (in == NULL || body == NULL || m == NULL) {
		fprintf(stderr, "http_parse: out of memory\n");
		goto cleanup;
	}
	for (;;) {
		ssize_t n = read(0, in + len, INPUT_MAX - len);
		if (n < 0) {
			perror("http_parse: read");
			goto cleanup;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len == INPUT_MAX) {
			fprintf(stderr, "http_parse: input larger than %u bytes\n", INPUT_MAX);
			goto cleanup;
		}
	}
	if (step == 0)
		step = len > 0 ? len : 1;

	memset(&lim, 0, sizeof(lim));
	lim.max_header_size = 32768;
	lim.hosts = hosts;
	lim.n_hosts = 1;

	http_msg_init(m, resp);
	for (size_t k = step < len ? step : len; r == HTTP_NEED_MORE; k += step) {
		if (k > len)
			k = len;
		r = resp ? http_parse_response(m, &lim, in, k, &consumed)
		    : http_parse_request(m, &lim, in, k, &consumed);
		if (k == len)
			break;
	}
	rc = 0;
	if (r == HTTP_ERROR) {
		print_error(m->error, resp);
		goto cleanup;
	}
	if (r == HTTP_NEED_MORE) {
		printf("{\"verdict\": \"incomplete\"}\n");
		goto cleanup;
	}
	if ((resp ? http_response_framing(m, head ? HTTP_M_HEAD : HTTP_M_GET, &lim, &b, &fe)
	    : http_request_framing(m, &lim, &b, &fe)) != 0) {
		print_error(fe, resp);
		goto cleanup;
	}

	/* the body, the way stream.c moves it */
	pos = consumed;
	while (!http_body_done(&b) && b.error == HTTP_ERR_NONE && pos < len) {
		uint64_t pend = http_body_data_pending(&b);
		size_t avail = len - pos < step ? len - pos : step, c;
		if (pend > 0) {
			size_t n = pend < avail ? (size_t)pend : avail;
			memcpy(body + blen, in + pos, n);
			blen += n;
			pos += n;
			http_body_data_consumed(&b, n);
			continue;
		}
		if (http_body_framing(&b, in + pos, avail, &c) == HTTP_ERROR)
			break;
		pos += c;
	}
	if (b.error == HTTP_ERR_NONE && !http_body_done(&b))
		(void)http_body_eof(&b);	/* stdin ended: the peer closed */
	if (b.error != HTTP_ERR_NONE) {
		print_error(b.error, resp);
		goto cleanup;
	}

	printf("{\"verdict\": \"ok\", \"method\": ");
	json_slice(in, m->method_s);
	printf(", \"target\": ");
	json_slice(in, m->target);
	printf(", \"path\": ");
	json_slice(in, m->path);
	printf(", \"query\": ");
	json_slice(in, m->query);
	printf(", \"version\": \"1.%d\", \"status\": %d, \"reason_phrase\": ", m->version_minor, m->status);
	json_slice(in, m->reason);
	printf(", \"headers\": [");
	for (unsigned i = 0; i < m->n_headers; i++) {
		printf("%s[", i ? ", " : "");
		json_slice(in, m->headers[i].name);
		printf(", ");
		json_slice(in, m->headers[i].value);
		printf(", %u]", m->headers[i].flags);
	}
	printf("], \"keep_alive\": %s, \"expect_continue\": %s, \"body_kind\": \"%s\", \"body\": \"",
	    m->keep_alive ? "true" : "false", m->expect_continue ? "true" : "false", kind_name(b.kind));
	for (size_t i = 0; i < blen; i++)
		printf("%02x", (unsigned char)body[i]);
	printf("\", \"rest\": %zu}\n", len - pos);
cleanup:
	free(in);
	free(body);
	free(m);
	return rc;
}
