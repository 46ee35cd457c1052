/*
 * http.h — the strict HTTP/1.1 parser (SPEC §4, §5). Pure code: no I/O, no
 * allocation, no logging, no global state, so it is unit-tested, fuzzed and
 * differential-tested without a socket.
 *
 * Three parts, each driven by stream.c over libevent evbuffers:
 *
 * 1. The head parser (http_parse_request / http_parse_response). The caller
 *    linearises the start of its input with evbuffer_pullup(in, n), n =
 *    min(evbuffer_get_length(in), max_header_size), and calls the parser
 *    each time more bytes arrived, always with the *same message start*
 *    (the pointer may change between calls, the bytes may not). The parser
 *    remembers how far it scanned, so the work is linear in the head size
 *    whatever the arrival pattern, and only complete lines are judged, so
 *    splitting the input anywhere gives the same verdict.
 *      HTTP_NEED_MORE  feed again when more bytes arrived
 *      HTTP_DONE       *consumed = head length (through the empty line);
 *                      the body, if any, starts at buf + *consumed
 *      HTTP_ERROR      msg->error names the rule (tbl/http_errors.h)
 *    The parsed head is a set of (offset, length) slices into that buffer
 *    (struct http_slice), so it costs nothing to keep while the caller holds
 *    the pulled-up bytes: build the backend head from the slices, copy what
 *    the access log needs, then evbuffer_drain(in, consumed). A struct
 *    http_msg is about 2.2 KiB (HTTP_MAX_HEADERS header slots) whatever the
 *    head size; memory per message is bounded by max_header_size.
 *
 * 2. The body decoder (struct http_body), set up from a parsed head by
 *    http_request_framing / http_response_framing. It never sees body data:
 *      pending = http_body_data_pending(b)  > 0: that many next input bytes
 *          are body data; move up to that many with
 *          evbuffer_remove_buffer(in, out, n) (zero-copy) and report them
 *          with http_body_data_consumed(b, n);
 *      == 0 and !http_body_done(b): framing bytes (chunk-size line, the
 *          CRLF after chunk data, trailers) come next; hand any contiguous
 *          prefix of the input (evbuffer_peek, no pullup needed — the
 *          decoder is byte-incremental) to http_body_framing() and drain
 *          the bytes it consumed.
 *    Chunk extensions are ignored but bounded, trailers are parsed and
 *    dropped, sizes beyond 2^60 and data without its CRLF are refused.
 *    The http_chunk_* helpers re-encode for forwarding.
 *
 * 3. Path checks: http_path_check percent-decodes the path for the
 *    allow-list and refuses dot segments, encoded slash/backslash, %00 and
 *    friends; http_path_allowed matches [server] paths on segment
 *    boundaries, case-insensitively.
 *
 * Decisions (strict, because the only clients are EAS devices and the only
 * server is Exchange/IIS, and because every leniency is a potential
 * request-smuggling differential):
 *   - Line ends are CRLF only, in heads, chunk lines and trailers. RFC 9112
 *     §2.2 lets a recipient accept a bare LF (nginx does); no EAS client
 *     or IIS sends one, and refusing it removes a class of ambiguities
 *     between us, devices and any L7 box in front (bare_lf, bare_cr).
 *   - Up to 4 empty lines before a request line are skipped (RFC 9112 §2.2:
 *     some clients send CRLF after a POST body).
 *   - Content-Length: exactly one field, 1*DIGIT, <= 2^62. Duplicates are
 *     refused even when equal (dup_cl), lists too (cl_list).
 *   - Transfer-Encoding: exactly one field whose value is exactly "chunked"
 *     (any case), in requests *and* responses. For responses RFC 9112 would
 *     allow e.g. "gzip, chunked"; we never send TE to Exchange, so IIS has
 *     no reason to use another coding, and forwarding one to a device that
 *     did not ask for it would be wrong: such a response is refused as
 *     backend_bad_response (te_list / te_unknown). CL + TE is refused on
 *     both sides (cl_te); TE in an HTTP/1.0 message too (te_http10).
 *   - Header values may carry obs-text (bytes >= 0x80) but no control
 *     character other than HTAB; names are tokens, no whitespace before ':'.
 *   - Host: required in HTTP/1.1, exactly one, not empty, host[:port]
 *     syntax. An absolute-form target is accepted only when its authority is
 *     in limits->hosts; the Host header must then name the same host.
 *   - Connection naming Host, Content-Length or Transfer-Encoding is
 *     refused (a proxy that dropped them would re-frame the body).
 *   - Expect: only 100-continue (ignored in HTTP/1.0, RFC 9110 §10.1.1).
 *   - Request/status line and header lines longer than limits->max_line
 *     are too_large (431); there is no 414 in SPEC §5.
 *   - Responses: 101 is refused (we never ask to upgrade); HEAD, 1xx, 204
 *     and 304 have no body; otherwise chunked, Content-Length, or read until
 *     the backend closes (then the connection is not reused).
 */
#ifndef EKP_HTTP_H
#define EKP_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "reason.h"

#define HTTP_MAX_HEADERS	100	/* header slots in a struct http_msg */
#define HTTP_DEFAULT_MAX_LINE	8192	/* request line / header line */
#define HTTP_METHOD_MAX		32
#define HTTP_LEADING_CRLF_MAX	4
#define HTTP_CL_MAX		(UINT64_C(1) << 62)
#define HTTP_CHUNK_SIZE_MAX	(UINT64_C(1) << 60)
#define HTTP_CHUNK_LINE_MAX	4096	/* chunk-size line with extensions */
#define HTTP_TRAILER_MAX	8192	/* all trailer lines of a message */
#define HTTP_TRAILER_LINES_MAX	32
#define HTTP_CHUNK_HDR_MAX	20	/* 16 hex digits + CRLF + NUL */

enum http_result {
	HTTP_ERROR = -1,
	HTTP_NEED_MORE = 0,
	HTTP_DONE = 1,
};

enum http_error {
#define HTTP_ERR(id, token, kind, text) HTTP_ERR_##id,
#include "tbl/http_errors.h"
#undef HTTP_ERR
	HTTP_ERR__COUNT
};

enum http_method {
	HTTP_M_OTHER = 0,	/* a valid token we have no name for */
	HTTP_M_GET, HTTP_M_HEAD, HTTP_M_POST, HTTP_M_PUT, HTTP_M_DELETE,
	HTTP_M_OPTIONS, HTTP_M_PATCH, HTTP_M_CONNECT, HTTP_M_TRACE,
};

enum http_target_form {
	HTTP_FORM_ORIGIN = 0,	/* "/path?query" */
	HTTP_FORM_ABSOLUTE,	/* "https://host/path?query", host is ours */
	HTTP_FORM_ASTERISK,	/* "*" with OPTIONS */
};

/* Header names the proxy acts on; everything else is HTTP_H_OTHER. */
enum http_hdr {
	HTTP_H_OTHER = 0,
	HTTP_H_HOST,
	HTTP_H_CONTENT_LENGTH,
	HTTP_H_TRANSFER_ENCODING,
	HTTP_H_CONNECTION,
	HTTP_H_KEEP_ALIVE,
	HTTP_H_PROXY_CONNECTION,
	HTTP_H_TE,
	HTTP_H_TRAILER,
	HTTP_H_UPGRADE,
	HTTP_H_EXPECT,
	HTTP_H_AUTHORIZATION,
	HTTP_H_PROXY_AUTHORIZATION,
	HTTP_H_PROXY_AUTHENTICATE,
	HTTP_H_WWW_AUTHENTICATE,
	HTTP_H_PERSISTENT_AUTH,
	HTTP_H_USER_AGENT,
	HTTP_H_X_FORWARDED_FOR,
	HTTP_H_X_FORWARDED_PROTO,
	HTTP_H_FORWARDED,
	HTTP_H_X_MS_LOCATION,
	HTTP_H_RETRY_AFTER,
	HTTP_H__COUNT
};

/* Header flags. */
#define HTTP_HF_HOP	0x01	/* hop-by-hop: Connection, Keep-Alive,
				 * Proxy-Connection, TE, Trailer, Upgrade and
				 * every field named by Connection; never
				 * forwarded */
#define HTTP_HF_FRAMING	0x02	/* Content-Length / Transfer-Encoding: the
				 * forwarder writes its own framing */

/* Bytes [off, off + len) of the buffer handed to the parser. */
struct http_slice {
	uint32_t off;
	uint32_t len;
};

struct http_header {
	struct http_slice name;		/* as sent */
	struct http_slice value;	/* leading/trailing SP/HTAB trimmed */
	uint8_t id;			/* enum http_hdr */
	uint8_t flags;			/* HTTP_HF_* */
};

/*
 * What the parser accepts. Pointers are borrowed (a config outlives every
 * message of its generation). Zero values fall back to the defaults named.
 */
struct http_limits {
	size_t max_header_size;		/* the whole head; 0 = 32 KiB */
	size_t max_line;		/* 0 = HTTP_DEFAULT_MAX_LINE */
	unsigned max_headers;		/* 0 or > HTTP_MAX_HEADERS = HTTP_MAX_HEADERS */
	uint64_t max_body_size;		/* 0 = unlimited (responses) */
	/* Authorities accepted in an absolute-form target: "host" (any port)
	 * or "host:port", compared case-insensitively. None = absolute-form
	 * is refused (absolute_host). */
	char *const *hosts;
	unsigned n_hosts;
};

/*
 * Request-side limits from [server]: max_header_size, max_body_size, the
 * default line and header-count limits, and hosts/n_hosts as given (the
 * config has no list of the proxy's own names; pass the names the front
 * answers for, or NULL/0 to refuse every absolute-form target). cfg and
 * hosts are borrowed. Returns 0. For backend responses use the same limits
 * with max_body_size = 0 and no hosts.
 */
int http_limits_from_config(const struct config *cfg, char *const *hosts, unsigned n_hosts,
    struct http_limits *lim);

/* A parsed head. Every slice is relative to the buffer given to the
 * parser; fields are valid after HTTP_DONE. */
struct http_msg {
	/* parser state, private */
	uint32_t pos;			/* scanned up to here */
	uint32_t line_start;
	uint8_t phase;
	uint8_t is_response;
	uint8_t empty_lines;

	/* the verdict */
	enum http_error error;		/* HTTP_ERR_NONE unless HTTP_ERROR */
	uint32_t head_len;		/* bytes of the head, on HTTP_DONE */

	/* request line */
	enum http_method method;
	struct http_slice method_s;
	struct http_slice target;	/* as sent */
	enum http_target_form form;
	struct http_slice authority;	/* absolute-form only */
	struct http_slice path;		/* raw, up to '?'; empty = "/" (absolute-form) */
	struct http_slice query;	/* raw, after '?'; len 0 when none */
	int has_query;			/* a '?' was present (even empty query) */

	/* status line */
	int status;
	struct http_slice reason;

	int version_minor;		/* HTTP/1.<0|1> */

	unsigned n_headers;
	struct http_header headers[HTTP_MAX_HEADERS];

	/* what the parser worked out */
	struct http_slice host;		/* Host value (or the absolute-form authority) */
	int has_host;
	int has_cl;
	uint64_t content_length;
	int chunked;			/* Transfer-Encoding: chunked */
	int conn_close;			/* Connection: close */
	int conn_keep_alive;		/* Connection: keep-alive */
	int keep_alive;			/* persistent after this message (version
					 * + Connection; read-until-close responses
					 * clear it in http_response_framing) */
	int expect_continue;		/* HTTP/1.1 request with Expect: 100-continue */
};

enum http_body_kind {
	HTTP_BODY_NONE = 0,		/* no body (or Content-Length: 0) */
	HTTP_BODY_LENGTH,		/* Content-Length bytes */
	HTTP_BODY_CHUNKED,
	HTTP_BODY_EOF,			/* response read until the backend closes */
};

/* The body framing state machine; owns nothing. */
struct http_body {
	enum http_body_kind kind;
	int is_response;
	uint8_t state;			/* private */
	enum http_error error;
	uint64_t remaining;		/* data bytes before the next framing */
	uint64_t total;			/* data bytes so far */
	uint64_t max;			/* 0 = unlimited */
	uint64_t chunk_size;		/* private: the size being parsed */
	uint32_t line_len;		/* private: bytes of the current line */
	uint32_t trailer_bytes;		/* private */
	uint32_t trailer_lines;		/* private */
	uint8_t trailer_colon;		/* private */
	uint32_t chunks;		/* chunks seen (for tests and logs) */
};

/* ---- heads --------------------------------------------------------------- */

void http_msg_init(struct http_msg *m, int is_response);

/* Parse a request head from buf[0..len) (see above). *consumed is set on
 * HTTP_DONE only. */
enum http_result http_parse_request(struct http_msg *m, const struct http_limits *lim,
    const char *buf, size_t len, size_t *consumed);
/* Same for a response head (status line instead of request line; no Host
 * rules; no absolute-form). */
enum http_result http_parse_response(struct http_msg *m, const struct http_limits *lim,
    const char *buf, size_t len, size_t *consumed);

/* Stable token ("cl_te"), explanation, and the reason a request (is_response
 * 0) or a backend response (1) refused for it gets. Never NULL. */
const char *http_error_token(enum http_error e);
const char *http_error_text(enum http_error e);
enum reason http_error_reason(enum http_error e, int is_response);

const char *http_method_name(enum http_method m);	/* "GET", "OTHER" */

/* First header with that name (case-insensitive) or with that id; returns
 * its index or -1. */
int http_header_find(const struct http_msg *m, const char *buf, const char *name);
int http_header_find_id(const struct http_msg *m, enum http_hdr id);

/* 1 when the comma list value[0..len) holds token (case-insensitive,
 * OWS around elements ignored). */
int http_list_has_token(const char *value, size_t len, const char *token);

/* ---- bodies -------------------------------------------------------------- */

/* Set up b for the request body. Returns 0, or -1 with *err
 * (body_too_large when Content-Length exceeds limits->max_body_size). */
int http_request_framing(const struct http_msg *req, const struct http_limits *lim,
    struct http_body *b, enum http_error *err);
/* Set up b for a response to a request with method req_method: HEAD, 1xx,
 * 204 and 304 have no body; otherwise chunked, Content-Length or EOF (then
 * resp->keep_alive is cleared). 101 is refused (switching_protocols).
 * A 1xx (100 Continue, 103) is interim: forward it (or swallow it), then
 * http_msg_init a new response and parse the final one from the bytes
 * after it. lim may be NULL (no body limit). */
int http_response_framing(struct http_msg *resp, enum http_method req_method,
    const struct http_limits *lim, struct http_body *b, enum http_error *err);
/* A body of a known kind, for callers that frame by themselves. */
void http_body_init(struct http_body *b, enum http_body_kind kind, uint64_t length,
    uint64_t max, int is_response);

/* Body data bytes that come next in the input before any framing byte:
 * 0 when framing is next or the body is done; UINT64_MAX for EOF bodies. */
uint64_t http_body_data_pending(const struct http_body *b);
/* The caller moved n data bytes (n <= pending; more is our own bug and
 * puts the decoder in error rather than trusting it). */
void http_body_data_consumed(struct http_body *b, uint64_t n);
/* Consume framing bytes from buf[0..len): stops at the first data byte,
 * at the end of the message, or at len. *consumed is always set (drain
 * that many). HTTP_DONE: the message ended (bytes after it belong to the
 * next message); HTTP_NEED_MORE: call again (data pending or more input
 * needed); HTTP_ERROR: b->error. */
enum http_result http_body_framing(struct http_body *b, const char *buf, size_t len,
    size_t *consumed);
int http_body_done(const struct http_body *b);
/* The peer closed the connection: HTTP_DONE for a finished or EOF body,
 * else HTTP_ERROR (truncated_body). */
enum http_result http_body_eof(struct http_body *b);

/* Re-encoding for forwarding: "<hex size>\r\n" before size data bytes
 * (size > 0), HTTP_CHUNK_CRLF after them, HTTP_CHUNK_LAST at the end
 * (trailers are dropped). Returns the length written (without the NUL). */
size_t http_chunk_header(char buf[HTTP_CHUNK_HDR_MAX], uint64_t size);
#define HTTP_CHUNK_CRLF	"\r\n"
#define HTTP_CHUNK_LAST	"0\r\n\r\n"

/* ---- paths --------------------------------------------------------------- */

/*
 * Percent-decode the raw path (origin-form path, no query) into out
 * (NUL-terminated, at most outlen - 1 bytes) for the allow-list, refusing:
 * '.' and '..' segments raw or encoded (dot_segment), %2F (encoded_slash),
 * '\\' or %5C (backslash), %00 (encoded_nul), other encoded controls and
 * space (encoded_ctl), %25 (double_encoding), encoded bytes >= 0x80
 * (non_ascii_path), '%' without two hex digits (bad_percent), '//'
 * (empty_segment), a path not starting with '/' (target). An empty path
 * (absolute-form "http://host") is "/". The raw path is what gets
 * forwarded; the decoded one is only compared. Returns 0 or -1 with *err.
 */
int http_path_check(const char *path, size_t len, char *out, size_t outlen,
    enum http_error *err);

/*
 * 1 when the decoded path is one of paths or below one, matched ASCII
 * case-insensitively on segment boundaries: "/Microsoft-Server-ActiveSync"
 * matches "/microsoft-server-activesync", ".../default.eas" but not
 * "/Microsoft-Server-ActiveSyncX". A configured trailing '/' is ignored
 * ("/autodiscover/" matches "/autodiscover"); "/" matches everything.
 */
int http_path_allowed(const char *path, const struct config_list *paths);

#endif
