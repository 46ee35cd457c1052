/*
 * http.c — the strict HTTP/1.1 parser; the rules and the reasons for them
 * are in http.h, the refusal tokens in tbl/http_errors.h.
 *
 * Heads are judged a whole line at a time (a line is complete when its LF
 * is in the buffer), which is what makes the verdict independent of how
 * the bytes were split. Bodies are judged a byte at a time, so the caller
 * can feed whatever contiguous piece of its evbuffer it has. Nothing here
 * allocates or keeps a pointer to the caller's bytes.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "codec.h"
#include "http.h"

enum err_kind { EK_NONE, EK_BAD, EK_HEADER_LARGE, EK_BODY_LARGE };

static const struct {
	const char *token;
	enum err_kind kind;
	const char *text;
} errors[HTTP_ERR__COUNT] = {
#define HTTP_ERR(id, token, kind, text) [HTTP_ERR_##id] = { token, EK_##kind, text },
#include "tbl/http_errors.h"
#undef HTTP_ERR
};

enum phase { PH_START = 0, PH_HEADERS, PH_DONE, PH_ERROR };

#define DEFAULT_MAX_HEADER_SIZE	(32u * 1024u)

/* ---- small pure helpers ------------------------------------------------- */

/*
 * Byte classes, one table look-up per byte instead of a chain of
 * comparisons (the heads of both directions of every request pass through
 * here). Each class is exactly the predicate written out in its comment;
 * test_http.c checks all 256 bytes of each against the parser's verdicts.
 */
#define C_TCHAR		0x01	/* RFC 9110 token: ALPHA DIGIT !#$%&'*+-.^_`|~ */
#define C_FIELD		0x02	/* field value / reason phrase: HTAB, 0x20-0x7e,
				 * obs-text 0x80-0xff (no other control, no DEL) */
#define C_TARGET	0x04	/* request-target: 0x21-0x7e except '#' */

#define CLS_TCHAR(c)	(((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z') || \
			 ((c) >= '0' && (c) <= '9') || (c) == '!' || (c) == '#' || \
			 (c) == '$' || (c) == '%' || (c) == '&' || (c) == '\'' || \
			 (c) == '*' || (c) == '+' || (c) == '-' || (c) == '.' || \
			 (c) == '^' || (c) == '_' || (c) == '`' || (c) == '|' || (c) == '~')
#define CLS_FIELD(c)	((c) == '\t' || ((c) >= 0x20 && (c) != 0x7f))
#define CLS_TARGET(c)	((c) >= 0x21 && (c) <= 0x7e && (c) != '#')
#define CLS(c)		((CLS_TCHAR(c) ? C_TCHAR : 0) | (CLS_FIELD(c) ? C_FIELD : 0) | \
			 (CLS_TARGET(c) ? C_TARGET : 0))
#define CLS4(c)		CLS(c), CLS((c) + 1), CLS((c) + 2), CLS((c) + 3)
#define CLS16(c)	CLS4(c), CLS4((c) + 4), CLS4((c) + 8), CLS4((c) + 12)
#define CLS64(c)	CLS16(c), CLS16((c) + 16), CLS16((c) + 32), CLS16((c) + 48)
static const uint8_t cls[256] = {
	CLS64(0), CLS64(64), CLS64(128), CLS64(192)
};
#undef CLS64
#undef CLS16
#undef CLS4
#undef CLS

/*
 * Eight bytes at a time for the long runs (targets, values, reasons), with
 * the word tests of "Bit Twiddling Hacks" (haszero, hasless, hasmore): each
 * says exactly whether any of the eight bytes is zero, below n (n <= 128)
 * or above n (n <= 127); a borrow or carry only ever starts at a byte that
 * is itself one. A word that fails is checked a byte at a time, so the
 * verdict is always the byte classes' own.
 */
#define W_ONES		UINT64_C(0x0101010101010101)
#define W_HIGHS		UINT64_C(0x8080808080808080)
#define W_HASZERO(x)	(((x) - W_ONES) & ~(x) & W_HIGHS)
#define W_HASLESS(x, n)	(((x) - W_ONES * (n)) & ~(x) & W_HIGHS)
#define W_HASMORE(x, n)	((((x) + W_ONES * (127 - (n))) | (x)) & W_HIGHS)

static uint64_t
load8(const unsigned char *p)
{
	uint64_t x;

	memcpy(&x, p, sizeof(x));
	return x;
}

/* The length of the run of C_FIELD bytes at u[0..len). */
static size_t
field_run(const unsigned char *u, size_t len)
{
	size_t i = 0;

	for (; i + 8 <= len; i += 8) {
		uint64_t x = load8(u + i);
		/* every byte >= 0x20 and none 0x7f: all C_FIELD (HTAB is
		 * C_FIELD too, but such a word takes the byte loop) */
		if (W_HASLESS(x, 0x20) || W_HASZERO(x ^ (W_ONES * 0x7f)))
			break;
	}
	while (i < len && (cls[u[i]] & C_FIELD))
		i++;
	return i;
}

/* The length of the run of C_TARGET bytes at u[0..len). */
static size_t
target_run(const unsigned char *u, size_t len)
{
	size_t i = 0;

	for (; i + 8 <= len; i += 8) {
		uint64_t x = load8(u + i);
		/* every byte 0x21..0x7e and none '#' */
		if (W_HASLESS(x, 0x21) || W_HASMORE(x, 0x7e) || W_HASZERO(x ^ (W_ONES * '#')))
			break;
	}
	while (i < len && (cls[u[i]] & C_TARGET))
		i++;
	return i;
}

static int
is_tchar(unsigned char c)
{
	return (cls[c] & C_TCHAR) != 0;
}

/* a[0..alen) is the string literal lit, ignoring ASCII case (its length
 * is known at compile time: no strlen). */
#define EQ_CI_LIT(a, alen, lit)	codec_eq_ci((a), (alen), (lit), sizeof(lit) - 1)

static int
is_ows(char c)
{
	return c == ' ' || c == '\t';
}

static struct http_slice
slice(size_t off, size_t len)
{
	struct http_slice s = { (uint32_t)off, (uint32_t)len };
	return s;
}

const char *
http_error_token(enum http_error e)
{
	return ((unsigned)e < HTTP_ERR__COUNT) ? errors[e].token : "unknown";
}

const char *
http_error_text(enum http_error e)
{
	return ((unsigned)e < HTTP_ERR__COUNT) ? errors[e].text : "unknown HTTP error";
}

enum reason
http_error_reason(enum http_error e, int is_response)
{
	if ((unsigned)e >= HTTP_ERR__COUNT)
		return is_response ? REASON_BACKEND_BAD_RESPONSE : REASON_BAD_REQUEST;
	if (errors[e].kind == EK_NONE)
		return REASON_OK;
	if (is_response)
		return REASON_BACKEND_BAD_RESPONSE;
	switch (errors[e].kind) {
	case EK_HEADER_LARGE:	return REASON_TOO_LARGE_HEADER;
	case EK_BODY_LARGE:	return REASON_TOO_LARGE_BODY;
	default:		return REASON_BAD_REQUEST;
	}
}

#define METHOD(name, m)	{ name, m, sizeof(name) - 1 }
static const struct {
	const char *name;
	enum http_method m;
	uint8_t len;		/* strlen(name) */
} methods[] = {
	METHOD("GET", HTTP_M_GET), METHOD("HEAD", HTTP_M_HEAD), METHOD("POST", HTTP_M_POST),
	METHOD("PUT", HTTP_M_PUT), METHOD("DELETE", HTTP_M_DELETE),
	METHOD("OPTIONS", HTTP_M_OPTIONS), METHOD("PATCH", HTTP_M_PATCH),
	METHOD("CONNECT", HTTP_M_CONNECT), METHOD("TRACE", HTTP_M_TRACE),
};
#undef METHOD

const char *
http_method_name(enum http_method m)
{
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
		if (methods[i].m == m)
			return methods[i].name;
	return "OTHER";
}

/* Header names we act on, with the flags every occurrence gets, by id. */
#define KNOWN(name, id, flags)	[id] = { name, flags, sizeof(name) - 1 }
static const struct {
	const char *name;
	uint8_t flags;
	uint8_t len;		/* strlen(name) */
} known[HTTP_H__COUNT] = {
	KNOWN("Host",			HTTP_H_HOST,			0),
	KNOWN("Content-Length",		HTTP_H_CONTENT_LENGTH,		HTTP_HF_FRAMING),
	KNOWN("Transfer-Encoding",	HTTP_H_TRANSFER_ENCODING,	HTTP_HF_FRAMING),
	KNOWN("Connection",		HTTP_H_CONNECTION,		HTTP_HF_HOP),
	KNOWN("Keep-Alive",		HTTP_H_KEEP_ALIVE,		HTTP_HF_HOP),
	KNOWN("Proxy-Connection",	HTTP_H_PROXY_CONNECTION,	HTTP_HF_HOP),
	KNOWN("TE",			HTTP_H_TE,			HTTP_HF_HOP),
	KNOWN("Trailer",		HTTP_H_TRAILER,			HTTP_HF_HOP),
	KNOWN("Upgrade",		HTTP_H_UPGRADE,			HTTP_HF_HOP),
	KNOWN("Expect",			HTTP_H_EXPECT,			0),
	KNOWN("Authorization",		HTTP_H_AUTHORIZATION,		0),
	KNOWN("Proxy-Authorization",	HTTP_H_PROXY_AUTHORIZATION,	HTTP_HF_HOP),
	KNOWN("Proxy-Authenticate",	HTTP_H_PROXY_AUTHENTICATE,	HTTP_HF_HOP),
	KNOWN("WWW-Authenticate",	HTTP_H_WWW_AUTHENTICATE,	0),
	KNOWN("Persistent-Auth",	HTTP_H_PERSISTENT_AUTH,		0),
	KNOWN("User-Agent",		HTTP_H_USER_AGENT,		0),
	KNOWN("X-Forwarded-For",	HTTP_H_X_FORWARDED_FOR,		0),
	KNOWN("X-Forwarded-Proto",	HTTP_H_X_FORWARDED_PROTO,	0),
	KNOWN("Forwarded",		HTTP_H_FORWARDED,		0),
	KNOWN("X-MS-Location",		HTTP_H_X_MS_LOCATION,		0),
	KNOWN("Retry-After",		HTTP_H_RETRY_AFTER,		0),
};
#undef KNOWN

/* The ids of the known names of each length, HTTP_H_OTHER-terminated: a
 * header line compares its name with these only (most names have no
 * known one of their length). test_http.c checks that every known name,
 * in any case, gets its id. */
#define KNOWN_LEN_MAX	19
static const uint8_t known_by_len[KNOWN_LEN_MAX + 1][4] = {
	[2] = { HTTP_H_TE },
	[4] = { HTTP_H_HOST },
	[6] = { HTTP_H_EXPECT },
	[7] = { HTTP_H_TRAILER, HTTP_H_UPGRADE },
	[9] = { HTTP_H_FORWARDED },
	[10] = { HTTP_H_CONNECTION, HTTP_H_KEEP_ALIVE, HTTP_H_USER_AGENT },
	[11] = { HTTP_H_RETRY_AFTER },
	[13] = { HTTP_H_AUTHORIZATION, HTTP_H_X_MS_LOCATION },
	[14] = { HTTP_H_CONTENT_LENGTH },
	[15] = { HTTP_H_PERSISTENT_AUTH, HTTP_H_X_FORWARDED_FOR },
	[16] = { HTTP_H_PROXY_CONNECTION, HTTP_H_WWW_AUTHENTICATE },
	[17] = { HTTP_H_TRANSFER_ENCODING, HTTP_H_X_FORWARDED_PROTO },
	[18] = { HTTP_H_PROXY_AUTHENTICATE },
	[19] = { HTTP_H_PROXY_AUTHORIZATION },
};

/* The id of header name[0..n), HTTP_H_OTHER when we do not act on it. */
static enum http_hdr
known_id(const char *name, size_t n)
{
	if (n > KNOWN_LEN_MAX)
		return HTTP_H_OTHER;
	for (const uint8_t *c = known_by_len[n]; *c != HTTP_H_OTHER; c++)
		/* most senders write the names as registered: one memcmp */
		if (known[*c].len == n && (memcmp(name, known[*c].name, n) == 0 ||
		    codec_eq_ci(name, n, known[*c].name, n)))
			return (enum http_hdr)*c;
	return HTTP_H_OTHER;
}

int
http_header_find(const struct http_msg *m, const char *buf, const char *name)
{
	size_t nl = strlen(name);

	for (unsigned i = 0; i < m->n_headers; i++) {
		const struct http_header *h = &m->headers[i];
		if (codec_eq_ci(buf + h->name.off, h->name.len, name, nl))
			return (int)i;
	}
	return -1;
}

int
http_header_find_id(const struct http_msg *m, enum http_hdr id)
{
	if (id == HTTP_H_OTHER)
		return -1;
	for (unsigned i = 0; i < m->n_headers; i++)
		if (m->headers[i].id == id)
			return (int)i;
	return -1;
}

/* Calls fn(element, len, arg) for each non-empty element of a comma list,
 * OWS trimmed; stops at the first non-zero return and returns it. */
static int
list_each(const char *v, size_t len, int (*fn)(const char *, size_t, void *), void *arg)
{
	size_t i = 0;

	while (i <= len) {
		size_t s = i, e;
		while (i < len && v[i] != ',')
			i++;
		e = i;
		while (s < e && is_ows(v[s]))
			s++;
		while (e > s && is_ows(v[e - 1]))
			e--;
		if (e > s) {
			int r = fn(v + s, e - s, arg);
			if (r != 0)
				return r;
		}
		i++;		/* past ',' (or past the end) */
	}
	return 0;
}

static int
match_token(const char *e, size_t n, void *arg)
{
	return codec_eq_ci(e, n, (const char *)arg, strlen((const char *)arg)) ? 1 : 0;
}

int
http_list_has_token(const char *value, size_t len, const char *token)
{
	return list_each(value, len, match_token, (void *)(uintptr_t)token) == 1;
}

/* ---- host syntax -------------------------------------------------------- */

/* host[:port]: a reg-name of [A-Za-z0-9._-] (or a bracketed IPv6 literal)
 * and an optional port of 1..5 digits <= 65535. On success *hlen is the
 * host part's length and *port the port (0 when absent). */
static int
parse_hostport(const char *v, size_t len, size_t *hlen, unsigned *port)
{
	size_t i = 0, h;
	unsigned p = 0;

	if (len == 0 || len > 261)
		return -1;
	if (v[0] == '[') {
		for (i = 1; i < len && v[i] != ']'; i++)
			if (!(codec_hex_value((unsigned char)v[i]) >= 0 || v[i] == ':' || v[i] == '.'))
				return -1;
		if (i >= len || i < 3)
			return -1;
		i++;		/* past ']' */
	} else {
		for (; i < len && v[i] != ':'; i++) {
			unsigned char c = (unsigned char)v[i];
			if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			    (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_'))
				return -1;
		}
		if (i == 0)
			return -1;
	}
	h = i;
	if (i < len) {
		size_t digits = 0;
		if (v[i] != ':')
			return -1;
		for (i++; i < len; i++, digits++) {
			if (v[i] < '0' || v[i] > '9' || digits >= 5)
				return -1;
			p = p * 10 + (unsigned)(v[i] - '0');
		}
		if (digits == 0 || p == 0 || p > 65535)
			return -1;
	}
	*hlen = h;
	*port = p;
	return 0;
}

/* The absolute-form authority against limits->hosts ("host" or
 * "host:port"); a missing port is the scheme's default. */
static int
authority_allowed(const struct http_limits *lim, const char *a, size_t alen, unsigned defport)
{
	size_t ahl;
	unsigned ap;

	if (lim == NULL || lim->hosts == NULL || parse_hostport(a, alen, &ahl, &ap) != 0)
		return 0;
	if (ap == 0)
		ap = defport;
	for (unsigned i = 0; i < lim->n_hosts; i++) {
		const char *e = lim->hosts[i];
		size_t ehl;
		unsigned ep;
		if (e == NULL || parse_hostport(e, strlen(e), &ehl, &ep) != 0)
			continue;
		if (codec_eq_ci(a, ahl, e, ehl) && (ep == 0 || ep == ap))
			return 1;
	}
	return 0;
}

/* ---- heads --------------------------------------------------------------- */

int
http_limits_from_config(const struct config *cfg, char *const *hosts, unsigned n_hosts,
    struct http_limits *lim)
{
	struct http_limits l;

	memset(&l, 0, sizeof(l));
	l.max_header_size = (size_t)cfg->server.max_header_size;
	l.max_line = HTTP_DEFAULT_MAX_LINE;
	l.max_headers = HTTP_MAX_HEADERS;
	l.max_body_size = cfg->server.max_body_size;
	l.hosts = hosts;
	l.n_hosts = hosts != NULL ? n_hosts : 0;
	*lim = l;
	return 0;
}

/* The header slots are not cleared: the parser writes every field of a
 * slot when it fills it, and nothing reads a slot at or past n_headers
 * (clearing them was 2 KiB of memset per message, two per request). */
void
http_msg_init(struct http_msg *m, int is_response)
{
	memset(m, 0, offsetof(struct http_msg, headers));
	memset((char *)m + offsetof(struct http_msg, host), 0,
	    sizeof(*m) - offsetof(struct http_msg, host));
	m->is_response = is_response ? 1 : 0;
	m->phase = PH_START;
	m->error = HTTP_ERR_NONE;
}

static int
fail(struct http_msg *m, enum http_error e)
{
	m->error = e;
	m->phase = PH_ERROR;
	return -1;
}

/* NUL and bare CR anywhere in a line (the line's own CRLF is not part of
 * line[0..len)). */
static int
check_nul_cr(struct http_msg *m, const char *line, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		if (line[i] == '\0')
			return fail(m, HTTP_ERR_NUL);
		if (line[i] == '\r')
			return fail(m, HTTP_ERR_BARE_CR);
	}
	return 0;
}

static int
parse_version(const char *v, size_t len, int *minor)
{
	if (len != 8 || memcmp(v, "HTTP/1.", 7) != 0 || (v[7] != '0' && v[7] != '1'))
		return -1;
	*minor = v[7] - '0';
	return 0;
}

/*
 * 1 when line[0..len) is "METHOD SP TARGET SP HTTP/1.x" with a method of 1
 * to HTTP_METHOD_MAX tchars, a target of C_TARGET bytes and x 0 or 1:
 * exactly the lines that pass every check of request_line's slow branch
 * (no NUL or CR: neither is in any of these classes; the first space ends
 * the method, the last one the target, since neither the target nor the
 * version has one). *mlen is the method's length.
 */
static int
request_line_clean(const char *line, size_t len, size_t *mlen)
{
	const unsigned char *u = (const unsigned char *)line;
	size_t i = 0, t;

	while (i < len && (cls[u[i]] & C_TCHAR))
		i++;
	if (i == 0 || i > HTTP_METHOD_MAX || i + 10 > len || u[i] != ' ')
		return 0;
	t = i + 1;
	/* len - 9: the space before the version */
	i = t + target_run(u + t, len - 9 - t);
	if (i != len - 9 || i == t || u[i] != ' ' || memcmp(line + i + 1, "HTTP/1.", 7) != 0 ||
	    (u[len - 1] != '0' && u[len - 1] != '1'))
		return 0;
	*mlen = t - 1;
	return 1;
}

static int
request_line(struct http_msg *m, const struct http_limits *lim, const char *buf,
    size_t ls, size_t len)
{
	const char *line = buf + ls, *sp1, *sp2, *t;
	size_t mlen, tlen, toff, i;

	if (len == 0) {
		/* RFC 9112 §2.2: ignore a few empty lines before a request */
		if (++m->empty_lines > HTTP_LEADING_CRLF_MAX)
			return fail(m, HTTP_ERR_LEADING_EMPTY_LINES);
		return 0;
	}
	if (request_line_clean(line, len, &mlen)) {
		/* the common case, decided in one pass; the checks below
		 * would all pass */
		t = line + mlen + 1;
		tlen = len - mlen - 10;
		m->version_minor = line[len - 1] - '0';
	} else {
		/* something is wrong: find out what, in the order of the
		 * rules (the first broken one names the refusal) */
		if (check_nul_cr(m, line, len) != 0)
			return -1;
		sp1 = memchr(line, ' ', len);
		if (sp1 == NULL)
			return fail(m, HTTP_ERR_REQUEST_LINE);
		mlen = (size_t)(sp1 - line);
		if (mlen == 0 || mlen > HTTP_METHOD_MAX)
			return fail(m, HTTP_ERR_METHOD);
		for (i = 0; i < mlen; i++)
			if (!is_tchar((unsigned char)line[i]))
				return fail(m, HTTP_ERR_METHOD);
		sp2 = memrchr(line, ' ', len);
		if (sp2 == sp1)
			return fail(m, HTTP_ERR_REQUEST_LINE);
		if (parse_version(sp2 + 1, len - (size_t)(sp2 + 1 - line), &m->version_minor) != 0)
			return fail(m, HTTP_ERR_VERSION);
		t = sp1 + 1;
		tlen = (size_t)(sp2 - t);
		if (tlen == 0 || t[0] == ' ' || t[tlen - 1] == ' ')
			return fail(m, HTTP_ERR_REQUEST_LINE);
		if (memchr(t, ' ', tlen) != NULL)
			return fail(m, HTTP_ERR_TARGET_SPACE);
		for (i = 0; i < tlen; i++)
			if (!(cls[(unsigned char)t[i]] & C_TARGET))
				return fail(m, HTTP_ERR_TARGET);
	}
	toff = ls + (size_t)(t - line);

	m->method = HTTP_M_OTHER;
	for (i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
		if (methods[i].len == mlen && memcmp(methods[i].name, line, mlen) == 0)
			m->method = methods[i].m;
	m->method_s = slice(ls, mlen);
	m->target = slice(toff, tlen);

	if (tlen == 1 && t[0] == '*') {
		if (m->method != HTTP_M_OPTIONS)
			return fail(m, HTTP_ERR_ASTERISK);
		m->form = HTTP_FORM_ASTERISK;
		m->path = slice(toff, 1);
	} else if (t[0] == '/') {
		const char *q = memchr(t, '?', tlen);
		m->form = HTTP_FORM_ORIGIN;
		if (q != NULL) {
			m->path = slice(toff, (size_t)(q - t));
			m->query = slice(toff + (size_t)(q - t) + 1, tlen - (size_t)(q - t) - 1);
			m->has_query = 1;
		} else {
			m->path = slice(toff, tlen);
		}
	} else {
		size_t skip, a, e;
		unsigned defport;
		if (tlen > 7 && EQ_CI_LIT(t, 7, "http://")) {
			skip = 7;
			defport = 80;
		} else if (tlen > 8 && EQ_CI_LIT(t, 8, "https://")) {
			skip = 8;
			defport = 443;
		} else {
			return fail(m, HTTP_ERR_TARGET);
		}
		a = skip;
		for (e = a; e < tlen && t[e] != '/' && t[e] != '?'; e++)
			;
		if (e == a || memchr(t + a, '@', e - a) != NULL ||
		    !authority_allowed(lim, t + a, e - a, defport))
			return fail(m, HTTP_ERR_ABSOLUTE_HOST);
		m->form = HTTP_FORM_ABSOLUTE;
		m->authority = slice(toff + a, e - a);
		{
			const char *rest = t + e, *q;
			size_t rlen = tlen - e;
			q = memchr(rest, '?', rlen);
			if (q != NULL) {
				m->path = slice(toff + e, (size_t)(q - rest));
				m->query = slice(toff + e + (size_t)(q - rest) + 1,
				    rlen - (size_t)(q - rest) - 1);
				m->has_query = 1;
			} else {
				m->path = slice(toff + e, rlen);
			}
		}
	}
	m->phase = PH_HEADERS;
	return 0;
}

/*
 * 1 when line[0..len) is "HTTP/1.x SP DDD" with x 0 or 1 and DDD 100 to 599,
 * then nothing or SP and a reason of C_FIELD bytes: exactly the lines that
 * pass every check of status_line's slow branch (no NUL or CR: neither is
 * allowed at any of these places).
 */
static int
status_line_clean(const char *line, size_t len)
{
	const unsigned char *u = (const unsigned char *)line;

	if (len < 12 || memcmp(line, "HTTP/1.", 7) != 0 || (u[7] != '0' && u[7] != '1') ||
	    u[8] != ' ' || u[9] < '1' || u[9] > '5' || u[10] < '0' || u[10] > '9' ||
	    u[11] < '0' || u[11] > '9' || (len > 12 && u[12] != ' '))
		return 0;
	return len <= 13 || field_run(u + 13, len - 13) == len - 13;
}

static int
status_line(struct http_msg *m, const char *buf, size_t ls, size_t len)
{
	const char *line = buf + ls;
	int st = 0;

	if (status_line_clean(line, len)) {
		/* the common case, decided in one pass; the checks below
		 * would all pass */
		m->version_minor = line[7] - '0';
		m->status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
		m->reason = len > 13 ? slice(ls + 13, len - 13) : slice(ls + len, 0);
		m->phase = PH_HEADERS;
		return 0;
	}
	/* something is wrong: find out what, in the order of the rules (the
	 * first broken one names the refusal) */
	if (check_nul_cr(m, line, len) != 0)
		return -1;
	if (len < 8 || parse_version(line, 8, &m->version_minor) != 0)
		return fail(m, HTTP_ERR_VERSION);
	if (len < 12 || line[8] != ' ')
		return fail(m, HTTP_ERR_STATUS_LINE);
	for (size_t i = 9; i < 12; i++) {
		if (line[i] < '0' || line[i] > '9')
			return fail(m, HTTP_ERR_STATUS_LINE);
		st = st * 10 + (line[i] - '0');
	}
	if (len > 12 && line[12] != ' ')
		return fail(m, HTTP_ERR_STATUS_LINE);
	if (st < 100 || st > 599)
		return fail(m, HTTP_ERR_STATUS);
	for (size_t i = 13; i < len; i++)
		if (!(cls[(unsigned char)line[i]] & C_FIELD))
			return fail(m, HTTP_ERR_CTL_CHAR);
	m->status = st;
	m->reason = len > 13 ? slice(ls + 13, len - 13) : slice(ls + len, 0);
	m->phase = PH_HEADERS;
	return 0;
}

static int
check_conn_element(const char *e, size_t n, void *arg)
{
	struct http_msg *m = arg;

	for (size_t i = 0; i < n; i++)
		if (!is_tchar((unsigned char)e[i]))
			return fail(m, HTTP_ERR_CONNECTION);
	if (EQ_CI_LIT(e, n, "close"))
		m->conn_close = 1;
	else if (EQ_CI_LIT(e, n, "keep-alive"))
		m->conn_keep_alive = 1;
	else if (EQ_CI_LIT(e, n, "host") || EQ_CI_LIT(e, n, "content-length") ||
	    EQ_CI_LIT(e, n, "transfer-encoding"))
		return fail(m, HTTP_ERR_CONNECTION_FRAMING);
	return 0;
}

/* The framing and connection rules for the header just stored. */
static int
header_semantics(struct http_msg *m, const char *buf, struct http_header *h)
{
	const char *v = buf + h->value.off;
	size_t vl = h->value.len;

	switch (h->id) {
	case HTTP_H_HOST: {
		size_t hl;
		unsigned port;
		if (m->is_response)
			break;
		if (m->has_host)
			return fail(m, HTTP_ERR_DUP_HOST);
		if (vl == 0)
			return fail(m, HTTP_ERR_EMPTY_HOST);
		if (parse_hostport(v, vl, &hl, &port) != 0)
			return fail(m, HTTP_ERR_BAD_HOST);
		m->has_host = 1;
		m->host = h->value;
		break;
	}
	case HTTP_H_CONTENT_LENGTH: {
		uint64_t n = 0;
		if (m->has_cl)
			return fail(m, HTTP_ERR_DUP_CL);
		if (memchr(v, ',', vl) != NULL)
			return fail(m, HTTP_ERR_CL_LIST);
		if (vl == 0)
			return fail(m, HTTP_ERR_BAD_CL);
		for (size_t i = 0; i < vl; i++) {
			if (v[i] < '0' || v[i] > '9')
				return fail(m, HTTP_ERR_BAD_CL);
			n = n * 10 + (uint64_t)(v[i] - '0');
			if (n > HTTP_CL_MAX)
				return fail(m, HTTP_ERR_CL_OVERFLOW);
		}
		m->has_cl = 1;
		m->content_length = n;
		break;
	}
	case HTTP_H_TRANSFER_ENCODING:
		if (m->chunked)
			return fail(m, HTTP_ERR_TE_DUP);
		if (memchr(v, ',', vl) != NULL)
			return fail(m, HTTP_ERR_TE_LIST);
		if (!EQ_CI_LIT(v, vl, "chunked"))
			return fail(m, HTTP_ERR_TE_UNKNOWN);
		if (m->version_minor == 0)
			return fail(m, HTTP_ERR_TE_HTTP10);
		m->chunked = 1;
		break;
	case HTTP_H_CONNECTION:
		if (list_each(v, vl, check_conn_element, m) != 0)
			return -1;
		break;
	case HTTP_H_EXPECT:
		if (m->is_response || m->version_minor == 0)
			break;		/* RFC 9110 §10.1.1: ignored in 1.0 */
		if (!EQ_CI_LIT(v, vl, "100-continue"))
			return fail(m, HTTP_ERR_EXPECT);
		m->expect_continue = 1;
		break;
	default:
		break;
	}
	return 0;
}

/*
 * The name's length when line[0..len) (len > 0) is "NAME:VALUE" with a
 * name of 1 or more tchars and a value of C_FIELD bytes only, else 0. These
 * are exactly the lines that pass every check of header_line's slow branch:
 * a tchar is no OWS (no obs-fold, no space before the colon), no NUL or CR,
 * no ':' (the first colon ends the name); the value's OWS, trimmed there
 * before its bytes are checked, is C_FIELD too.
 */
static size_t
header_line_clean(const char *line, size_t len)
{
	const unsigned char *u = (const unsigned char *)line;
	size_t i = 0, nlen;

	while (i < len && (cls[u[i]] & C_TCHAR))
		i++;
	if (i == 0 || i == len || u[i] != ':')
		return 0;
	nlen = i;
	if (field_run(u + nlen + 1, len - nlen - 1) != len - nlen - 1)
		return 0;
	return nlen;
}

static int
header_line(struct http_msg *m, const struct http_limits *lim, const char *buf,
    size_t ls, size_t len)
{
	const char *line = buf + ls, *colon;
	size_t nlen, vs, ve;
	unsigned max_headers;
	struct http_header *h;

	if (len == 0)
		return 1;		/* the empty line: end of the head */
	nlen = header_line_clean(line, len);
	if (nlen == 0) {
		/* something is wrong: find out what, in the order of the
		 * rules (the first broken one names the refusal) */
		if (is_ows(line[0]))
			return fail(m, HTTP_ERR_OBS_FOLD);
		if (check_nul_cr(m, line, len) != 0)
			return -1;
		colon = memchr(line, ':', len);
		if (colon == NULL)
			return fail(m, HTTP_ERR_NO_COLON);
		nlen = (size_t)(colon - line);
		if (nlen == 0)
			return fail(m, HTTP_ERR_EMPTY_NAME);
		if (is_ows(line[nlen - 1]))
			return fail(m, HTTP_ERR_SPACE_BEFORE_COLON);
		for (size_t i = 0; i < nlen; i++)
			if (!is_tchar((unsigned char)line[i]))
				return fail(m, HTTP_ERR_HEADER_NAME);
		for (size_t i = nlen + 1; i < len; i++)
			if (!(cls[(unsigned char)line[i]] & C_FIELD))
				return fail(m, HTTP_ERR_CTL_CHAR);
	}
	vs = nlen + 1;
	ve = len;
	while (vs < ve && is_ows(line[vs]))
		vs++;
	while (ve > vs && is_ows(line[ve - 1]))
		ve--;
	max_headers = (lim != NULL && lim->max_headers != 0 && lim->max_headers < HTTP_MAX_HEADERS)
	    ? lim->max_headers : HTTP_MAX_HEADERS;
	if (m->n_headers >= max_headers)
		return fail(m, HTTP_ERR_TOO_MANY_HEADERS);

	h = &m->headers[m->n_headers++];
	memset(h, 0, sizeof(*h));	/* the padding too: http_msg_init left it */
	h->name = slice(ls, nlen);
	h->value = slice(ls + vs, ve - vs);
	h->id = (uint8_t)known_id(line, nlen);
	h->flags = known[h->id].flags;		/* [HTTP_H_OTHER]: 0 */
	return header_semantics(m, buf, h);
}

struct mark_arg {
	struct http_msg *m;
	const char *buf;
};

/* A Connection element names a header to drop: flag every occurrence. */
static int
mark_hop(const char *e, size_t n, void *arg)
{
	struct mark_arg *ma = arg;

	for (unsigned i = 0; i < ma->m->n_headers; i++) {
		struct http_header *h = &ma->m->headers[i];
		if (codec_eq_ci(ma->buf + h->name.off, h->name.len, e, n))
			h->flags |= HTTP_HF_HOP;
	}
	return 0;
}

/* Rules that need the whole head. */
static int
finish_head(struct http_msg *m, const char *buf)
{
	struct mark_arg ma = { m, buf };

	if (!m->is_response) {
		if (!m->has_host && m->version_minor == 1)
			return fail(m, HTTP_ERR_NO_HOST);
		if (m->form == HTTP_FORM_ABSOLUTE) {
			size_t ahl = 0, hhl = 0;
			unsigned ap = 0, hp = 0;
			if (m->has_host) {
				/* both parsed before; compare host parts, and
				 * ports when both name one */
				(void)parse_hostport(buf + m->authority.off, m->authority.len, &ahl, &ap);
				(void)parse_hostport(buf + m->host.off, m->host.len, &hhl, &hp);
				if (!codec_eq_ci(buf + m->authority.off, ahl, buf + m->host.off, hhl) ||
				    (ap != 0 && hp != 0 && ap != hp))
					return fail(m, HTTP_ERR_HOST_MISMATCH);
			}
			m->host = m->authority;
			m->has_host = 1;
		}
	}
	if (m->has_cl && m->chunked)
		return fail(m, HTTP_ERR_CL_TE);
	for (unsigned i = 0; i < m->n_headers; i++) {
		const struct http_header *h = &m->headers[i];
		if (h->id == HTTP_H_CONNECTION)
			(void)list_each(buf + h->value.off, h->value.len, mark_hop, &ma);
	}
	/* the Connection header's own close/keep-alive elements also matched
	 * no header name, harmlessly */
	if (m->version_minor == 1)
		m->keep_alive = !m->conn_close;
	else
		m->keep_alive = m->conn_keep_alive && !m->conn_close;
	return 0;
}

static enum http_result
parse_head(struct http_msg *m, const struct http_limits *lim, const char *buf,
    size_t len, size_t *consumed)
{
	size_t max_head = DEFAULT_MAX_HEADER_SIZE, max_line = HTTP_DEFAULT_MAX_LINE;
	size_t scan_len;

	if (m->phase == PH_DONE) {
		*consumed = m->head_len;
		return HTTP_DONE;
	}
	if (m->phase == PH_ERROR)
		return HTTP_ERROR;
	if (lim != NULL && lim->max_header_size != 0)
		max_head = lim->max_header_size;
	if (lim != NULL && lim->max_line != 0)
		max_line = lim->max_line;
	if (max_head > UINT32_MAX / 2)
		max_head = UINT32_MAX / 2;	/* slices are 32-bit */
	scan_len = len < max_head ? len : max_head;
	if (scan_len < m->pos)
		return HTTP_NEED_MORE;		/* the caller shrank its buffer */

	for (;;) {
		const char *lf = memchr(buf + m->pos, '\n', scan_len - m->pos);
		size_t end, ls, clen;
		int r;

		if (lf == NULL) {
			if (scan_len - m->line_start > max_line + 1) {
				fail(m, m->phase == PH_START ? HTTP_ERR_REQUEST_LINE_TOO_LONG
				    : HTTP_ERR_HEADER_LINE_TOO_LONG);
				return HTTP_ERROR;
			}
			if (scan_len >= max_head) {
				fail(m, HTTP_ERR_HEADER_TOO_LARGE);
				return HTTP_ERROR;
			}
			m->pos = (uint32_t)scan_len;
			return HTTP_NEED_MORE;
		}
		end = (size_t)(lf - buf) + 1;
		ls = m->line_start;
		/* the same test as the no-LF branch above, first, so a line
		 * gets the same verdict however it was split */
		if (end - 1 - ls > max_line + 1) {
			fail(m, m->phase == PH_START ? HTTP_ERR_REQUEST_LINE_TOO_LONG
			    : HTTP_ERR_HEADER_LINE_TOO_LONG);
			return HTTP_ERROR;
		}
		if (end - ls < 2 || buf[end - 2] != '\r') {
			fail(m, HTTP_ERR_BARE_LF);
			return HTTP_ERROR;
		}
		clen = end - ls - 2;		/* <= max_line by the test above */
		m->pos = m->line_start = (uint32_t)end;
		if (m->phase == PH_START)
			r = m->is_response ? status_line(m, buf, ls, clen)
			    : request_line(m, lim, buf, ls, clen);
		else
			r = header_line(m, lim, buf, ls, clen);
		if (r < 0)
			return HTTP_ERROR;
		if (r == 1) {
			if (finish_head(m, buf) != 0)
				return HTTP_ERROR;
			m->head_len = (uint32_t)end;
			m->phase = PH_DONE;
			*consumed = end;
			return HTTP_DONE;
		}
	}
}

enum http_result
http_parse_request(struct http_msg *m, const struct http_limits *lim,
    const char *buf, size_t len, size_t *consumed)
{
	if (m->is_response) {
		fail(m, HTTP_ERR_REQUEST_LINE);
		return HTTP_ERROR;
	}
	return parse_head(m, lim, buf, len, consumed);
}

enum http_result
http_parse_response(struct http_msg *m, const struct http_limits *lim,
    const char *buf, size_t len, size_t *consumed)
{
	if (!m->is_response) {
		fail(m, HTTP_ERR_STATUS_LINE);
		return HTTP_ERROR;
	}
	return parse_head(m, lim, buf, len, consumed);
}

/* ---- bodies -------------------------------------------------------------- */

enum body_state {
	BS_SIZE_START = 0,	/* first byte of a chunk-size line */
	BS_SIZE,		/* hex digits */
	BS_SIZE_WS,		/* BWS before ';' */
	BS_EXT,			/* chunk extensions, ignored */
	BS_SIZE_LF,		/* CR seen, LF next */
	BS_DATA,		/* remaining data bytes are the caller's */
	BS_DATA_CR,		/* CRLF after chunk data */
	BS_DATA_LF,
	BS_TRAILER_START,	/* a trailer line or the final CRLF */
	BS_TRAILER,
	BS_TRAILER_LF,
	BS_END_LF,
	BS_DONE,
	BS_ERROR,
};

void
http_body_init(struct http_body *b, enum http_body_kind kind, uint64_t length,
    uint64_t max, int is_response)
{
	memset(b, 0, sizeof(*b));
	b->kind = kind;
	b->is_response = is_response ? 1 : 0;
	b->max = max;
	b->error = HTTP_ERR_NONE;
	switch (kind) {
	case HTTP_BODY_LENGTH:
		b->remaining = length;
		b->state = length > 0 ? BS_DATA : BS_DONE;
		break;
	case HTTP_BODY_CHUNKED:
		b->state = BS_SIZE_START;
		break;
	case HTTP_BODY_EOF:
		b->remaining = UINT64_MAX;
		b->state = BS_DATA;
		break;
	case HTTP_BODY_NONE:
	default:
		b->kind = HTTP_BODY_NONE;
		b->state = BS_DONE;
		break;
	}
}

int
http_request_framing(const struct http_msg *req, const struct http_limits *lim,
    struct http_body *b, enum http_error *err)
{
	uint64_t max = lim != NULL ? lim->max_body_size : 0;

	if (req->chunked) {
		http_body_init(b, HTTP_BODY_CHUNKED, 0, max, 0);
	} else if (req->has_cl && req->content_length > 0) {
		if (max != 0 && req->content_length > max) {
			*err = HTTP_ERR_BODY_TOO_LARGE;
			return -1;
		}
		http_body_init(b, HTTP_BODY_LENGTH, req->content_length, max, 0);
	} else {
		http_body_init(b, HTTP_BODY_NONE, 0, max, 0);
	}
	*err = HTTP_ERR_NONE;
	return 0;
}

int
http_response_framing(struct http_msg *resp, enum http_method req_method,
    const struct http_limits *lim, struct http_body *b, enum http_error *err)
{
	uint64_t max = lim != NULL ? lim->max_body_size : 0;

	if (resp->status == 101) {
		*err = HTTP_ERR_SWITCHING_PROTOCOLS;
		return -1;
	}
	if (req_method == HTTP_M_HEAD || resp->status < 200 || resp->status == 204 ||
	    resp->status == 304) {
		http_body_init(b, HTTP_BODY_NONE, 0, max, 1);
	} else if (resp->chunked) {
		http_body_init(b, HTTP_BODY_CHUNKED, 0, max, 1);
	} else if (resp->has_cl) {
		if (max != 0 && resp->content_length > max) {
			*err = HTTP_ERR_BODY_TOO_LARGE;
			return -1;
		}
		http_body_init(b, resp->content_length > 0 ? HTTP_BODY_LENGTH : HTTP_BODY_NONE,
		    resp->content_length, max, 1);
	} else {
		http_body_init(b, HTTP_BODY_EOF, 0, max, 1);
		resp->keep_alive = 0;	/* the end of the body is the close */
	}
	*err = HTTP_ERR_NONE;
	return 0;
}

uint64_t
http_body_data_pending(const struct http_body *b)
{
	return b->state == BS_DATA ? b->remaining : 0;
}

static void
body_fail(struct http_body *b, enum http_error e)
{
	b->error = e;
	b->state = BS_ERROR;
}

void
http_body_data_consumed(struct http_body *b, uint64_t n)
{
	if (n == 0)
		return;
	if (b->state != BS_DATA || n > b->remaining) {
		body_fail(b, HTTP_ERR_BODY_MISUSE);
		return;
	}
	b->total += n;
	if (b->kind == HTTP_BODY_EOF) {
		if (b->max != 0 && b->total > b->max)
			body_fail(b, HTTP_ERR_BODY_TOO_LARGE);
		return;
	}
	b->remaining -= n;
	if (b->remaining == 0)
		b->state = b->kind == HTTP_BODY_CHUNKED ? BS_DATA_CR : BS_DONE;
}

int
http_body_done(const struct http_body *b)
{
	return b->state == BS_DONE;
}

enum http_result
http_body_eof(struct http_body *b)
{
	if (b->state == BS_DONE)
		return HTTP_DONE;
	if (b->state != BS_ERROR && b->kind == HTTP_BODY_EOF) {
		b->state = BS_DONE;
		return HTTP_DONE;
	}
	if (b->state != BS_ERROR)
		body_fail(b, HTTP_ERR_TRUNCATED_BODY);
	return HTTP_ERROR;
}

/* One byte of a chunk-size line (BS_SIZE_START .. BS_SIZE_LF). */
static void
size_line_byte(struct http_body *b, unsigned char c)
{
	int d;

	if (++b->line_len > HTTP_CHUNK_LINE_MAX) {
		body_fail(b, HTTP_ERR_CHUNK_LINE_TOO_LONG);
		return;
	}
	switch (b->state) {
	case BS_SIZE_START:
		if ((d = codec_hex_value(c)) < 0) {
			body_fail(b, HTTP_ERR_CHUNK_SIZE);
			return;
		}
		b->chunk_size = (uint64_t)d;
		b->state = BS_SIZE;
		return;
	case BS_SIZE:
		if ((d = codec_hex_value(c)) >= 0) {
			if (b->chunk_size > (HTTP_CHUNK_SIZE_MAX - (uint64_t)d) / 16) {
				body_fail(b, HTTP_ERR_CHUNK_SIZE_OVERFLOW);
				return;
			}
			b->chunk_size = b->chunk_size * 16 + (uint64_t)d;
		} else if (c == ';') {
			b->state = BS_EXT;
		} else if (is_ows((char)c)) {
			b->state = BS_SIZE_WS;
		} else if (c == '\r') {
			b->state = BS_SIZE_LF;
		} else if (c == '\n') {
			body_fail(b, HTTP_ERR_BARE_LF);
		} else {
			body_fail(b, HTTP_ERR_CHUNK_SIZE);
		}
		return;
	case BS_SIZE_WS:
		if (c == ';')
			b->state = BS_EXT;
		else if (!is_ows((char)c))
			body_fail(b, HTTP_ERR_CHUNK_SIZE);
		return;
	case BS_EXT:
		if (c == '\r')
			b->state = BS_SIZE_LF;
		else if (c == '\n')
			body_fail(b, HTTP_ERR_BARE_LF);
		else if ((c < 0x20 && c != '\t') || c == 0x7f)
			body_fail(b, HTTP_ERR_CHUNK_EXT);
		return;
	case BS_SIZE_LF:
		if (c != '\n') {
			body_fail(b, HTTP_ERR_BARE_CR);
			return;
		}
		b->line_len = 0;
		if (b->chunk_size == 0) {
			b->state = BS_TRAILER_START;
			return;
		}
		if (b->max != 0 && b->chunk_size > b->max - b->total) {
			body_fail(b, HTTP_ERR_BODY_TOO_LARGE);
			return;
		}
		b->remaining = b->chunk_size;
		b->chunks++;
		b->state = BS_DATA;
		return;
	default:
		return;
	}
}

/* One byte of the trailer section (BS_TRAILER_START .. BS_END_LF). */
static void
trailer_byte(struct http_body *b, unsigned char c)
{
	if (++b->trailer_bytes > HTTP_TRAILER_MAX) {
		body_fail(b, HTTP_ERR_TRAILER_TOO_LARGE);
		return;
	}
	switch (b->state) {
	case BS_TRAILER_START:
		if (c == '\r') {
			b->state = BS_END_LF;
			return;
		}
		if (c == ':' || !is_tchar(c)) {
			/* obs-fold, empty name, junk */
			body_fail(b, c == '\n' ? HTTP_ERR_BARE_LF : HTTP_ERR_TRAILER);
			return;
		}
		if (++b->trailer_lines > HTTP_TRAILER_LINES_MAX) {
			body_fail(b, HTTP_ERR_TRAILER_TOO_LARGE);
			return;
		}
		b->trailer_colon = 0;
		b->state = BS_TRAILER;
		return;
	case BS_TRAILER:
		if (c == '\r') {
			if (!b->trailer_colon)
				body_fail(b, HTTP_ERR_TRAILER);
			else
				b->state = BS_TRAILER_LF;
		} else if (c == '\n') {
			body_fail(b, HTTP_ERR_BARE_LF);
		} else if (!b->trailer_colon) {
			if (c == ':')
				b->trailer_colon = 1;
			else if (!is_tchar(c))
				body_fail(b, HTTP_ERR_TRAILER);
		} else if ((c < 0x20 && c != '\t') || c == 0x7f) {
			body_fail(b, HTTP_ERR_TRAILER);
		}
		return;
	case BS_TRAILER_LF:
		if (c != '\n')
			body_fail(b, HTTP_ERR_BARE_CR);
		else
			b->state = BS_TRAILER_START;
		return;
	case BS_END_LF:
		if (c != '\n')
			body_fail(b, HTTP_ERR_BARE_CR);
		else
			b->state = BS_DONE;
		return;
	default:
		return;
	}
}

enum http_result
http_body_framing(struct http_body *b, const char *buf, size_t len, size_t *consumed)
{
	size_t i = 0;

	for (; i < len; i++) {
		unsigned char c = (unsigned char)buf[i];

		switch (b->state) {
		case BS_DONE:
			*consumed = i;
			return HTTP_DONE;
		case BS_ERROR:
			*consumed = i;
			return HTTP_ERROR;
		case BS_DATA:
			*consumed = i;
			return HTTP_NEED_MORE;	/* the caller moves the data */
		case BS_DATA_CR:
			if (c != '\r')
				body_fail(b, HTTP_ERR_CHUNK_NO_CRLF);
			else
				b->state = BS_DATA_LF;
			break;
		case BS_DATA_LF:
			if (c != '\n') {
				body_fail(b, HTTP_ERR_CHUNK_NO_CRLF);
			} else {
				b->state = BS_SIZE_START;
				b->line_len = 0;
			}
			break;
		case BS_SIZE_START: case BS_SIZE: case BS_SIZE_WS: case BS_EXT:
		case BS_SIZE_LF:
			size_line_byte(b, c);
			break;
		default:
			trailer_byte(b, c);
			break;
		}
		if (b->state == BS_ERROR) {
			*consumed = i;
			return HTTP_ERROR;
		}
	}
	*consumed = i;
	if (b->state == BS_DONE)
		return HTTP_DONE;
	return b->state == BS_ERROR ? HTTP_ERROR : HTTP_NEED_MORE;
}

size_t
http_chunk_header(char buf[HTTP_CHUNK_HDR_MAX], uint64_t size)
{
	static const char hex[] = "0123456789abcdef";
	char tmp[16];
	size_t n = 0, o = 0;

	do {
		tmp[n++] = hex[size & 15];
		size >>= 4;
	} while (size != 0 && n < sizeof(tmp));
	while (n > 0)
		buf[o++] = tmp[--n];
	buf[o++] = '\r';
	buf[o++] = '\n';
	buf[o] = '\0';
	return o;
}

/* ---- paths --------------------------------------------------------------- */

/* The decoded segment out[s..e) is "." or "..". */
static int
dot_segment(const char *out, size_t s, size_t e)
{
	return (e - s == 1 && out[s] == '.') ||
	    (e - s == 2 && out[s] == '.' && out[s + 1] == '.');
}

int
http_path_check(const char *path, size_t len, char *out, size_t outlen,
    enum http_error *err)
{
	size_t o = 0, seg = 1, i;
	enum http_error e = HTTP_ERR_NONE;

	if (outlen < 2) {
		e = HTTP_ERR_PATH_TOO_LONG;
		goto done;
	}
	if (len == 0) {
		out[0] = '/';
		out[1] = '\0';
		goto done;
	}
	if (path[0] != '/') {
		e = HTTP_ERR_TARGET;
		goto done;
	}
	out[o++] = '/';
	for (i = 1; i < len; i++) {
		unsigned char c = (unsigned char)path[i];

		if (c == '/') {
			if (o == seg) {
				e = HTTP_ERR_EMPTY_SEGMENT;
				goto done;
			}
			if (dot_segment(out, seg, o)) {
				e = HTTP_ERR_DOT_SEGMENT;
				goto done;
			}
			if (o + 1 >= outlen) {
				e = HTTP_ERR_PATH_TOO_LONG;
				goto done;
			}
			out[o++] = '/';
			seg = o;
			continue;
		}
		if (c == '%') {
			if (codec_pct_byte(path + i, len - i, &c) != 0) {
				e = HTTP_ERR_BAD_PERCENT;
				goto done;
			}
			i += 2;
			if (c == 0)
				e = HTTP_ERR_ENCODED_NUL;
			else if (c == '/')
				e = HTTP_ERR_ENCODED_SLASH;
			else if (c == '\\')
				e = HTTP_ERR_BACKSLASH;
			else if (c == '%')
				e = HTTP_ERR_DOUBLE_ENCODING;
			else if (c <= 0x20 || c == 0x7f)
				e = HTTP_ERR_ENCODED_CTL;
			else if (c >= 0x80)
				e = HTTP_ERR_NON_ASCII_PATH;
			if (e != HTTP_ERR_NONE)
				goto done;
		} else if (c == '\\') {
			e = HTTP_ERR_BACKSLASH;
			goto done;
		} else if (c < 0x21 || c > 0x7e || c == '?' || c == '#') {
			e = HTTP_ERR_TARGET;
			goto done;
		}
		if (o + 1 >= outlen) {
			e = HTTP_ERR_PATH_TOO_LONG;
			goto done;
		}
		out[o++] = (char)c;
	}
	if (dot_segment(out, seg, o))
		e = HTTP_ERR_DOT_SEGMENT;
	else
		out[o] = '\0';
done:
	if (e != HTTP_ERR_NONE && outlen > 0)
		out[0] = '\0';
	*err = e;
	return e == HTTP_ERR_NONE ? 0 : -1;
}

int
http_path_allowed(const char *path, const struct config_list *paths)
{
	size_t plen = strlen(path);

	if (paths == NULL)
		return 0;
	for (unsigned i = 0; i < paths->n; i++) {
		const char *p = paths->v[i];
		size_t n;
		if (p == NULL || p[0] != '/')
			continue;
		n = strlen(p);
		while (n > 1 && p[n - 1] == '/')
			n--;
		if (n == 1)
			return 1;	/* "/" */
		if (plen >= n && codec_eq_ci(path, n, p, n) && (path[n] == '\0' || path[n] == '/'))
			return 1;
	}
	return 0;
}
