/*
 * Why http.c refused a message: the detail that goes with the reason
 * (SPEC §4, §5). One line per rule; the token is stable (access log
 * "bad_request_<token>", error log, metrics, docs).
 *
 *   HTTP_ERR(ID, "token", kind, "what it means / what to check")
 *
 * kind says which reason a *request* refused for this rule gets
 * (http_error_reason()); a *response* from the backend refused for any rule
 * is always backend_bad_response with the same detail:
 *   BAD          400 bad_request_<token>
 *   HEADER_LARGE 431 too_large (the token goes to the error log)
 *   BODY_LARGE   413 too_large (the token goes to the error log)
 *
 * Included with HTTP_ERR() defined it generates enum http_error and the
 * token/text/kind lookups in http.c. Tokens are [a-z0-9_] only.
 */

HTTP_ERR(NONE,                "none",                  NONE,         "no error")

/* the start line */
HTTP_ERR(REQUEST_LINE,        "request_line",          BAD,          "the request line is not METHOD SP request-target SP HTTP-version (one space each)")
HTTP_ERR(METHOD,              "method",                BAD,          "the method is empty, longer than 32 bytes or not a token")
HTTP_ERR(TARGET,              "target",                BAD,          "the request-target has a byte outside visible ASCII, a '#', or is neither origin-form, absolute-form nor '*'")
HTTP_ERR(TARGET_SPACE,        "target_space",          BAD,          "the request-target contains a space")
HTTP_ERR(ASTERISK,            "asterisk",              BAD,          "the '*' request-target is only valid with OPTIONS")
HTTP_ERR(ABSOLUTE_HOST,       "absolute_host",         BAD,          "an absolute-form request-target names a host that is not one of ours (or carries userinfo)")
HTTP_ERR(VERSION,             "version",               BAD,          "the version is not exactly HTTP/1.1 or HTTP/1.0")
HTTP_ERR(STATUS_LINE,         "status_line",           BAD,          "the status line is not HTTP-version SP 3DIGIT [SP reason]")
HTTP_ERR(STATUS,              "status",                BAD,          "the status code is not 100..599")
HTTP_ERR(LEADING_EMPTY_LINES, "leading_empty_lines",   BAD,          "more than 4 empty lines before the request line")

/* line syntax */
HTTP_ERR(BARE_CR,             "bare_cr",               BAD,          "a CR not followed by LF")
HTTP_ERR(BARE_LF,             "bare_lf",               BAD,          "a line ends with LF alone; only CRLF is accepted")
HTTP_ERR(NUL,                 "nul",                   BAD,          "a NUL byte in the head")
HTTP_ERR(CTL_CHAR,            "ctl_char",              BAD,          "a control character (other than HTAB) in a field value or the reason phrase")
HTTP_ERR(OBS_FOLD,            "obs_fold",              BAD,          "a header line starts with whitespace (obsolete line folding)")
HTTP_ERR(NO_COLON,            "no_colon",              BAD,          "a header line has no ':'")
HTTP_ERR(EMPTY_NAME,          "empty_name",            BAD,          "a header line starts with ':'")
HTTP_ERR(HEADER_NAME,         "header_name",           BAD,          "a header name has a byte that is not a token character")
HTTP_ERR(SPACE_BEFORE_COLON,  "space_before_colon",    BAD,          "whitespace between a header name and its ':'")

/* Host */
HTTP_ERR(NO_HOST,             "no_host",               BAD,          "an HTTP/1.1 request without a Host header")
HTTP_ERR(DUP_HOST,            "dup_host",              BAD,          "more than one Host header")
HTTP_ERR(EMPTY_HOST,          "empty_host",            BAD,          "the Host header is empty")
HTTP_ERR(BAD_HOST,            "bad_host",              BAD,          "the Host header is not host[:port] (userinfo, bad characters or port)")
HTTP_ERR(HOST_MISMATCH,       "host_mismatch",         BAD,          "an absolute-form target and the Host header name different hosts")

/* message framing and connection */
HTTP_ERR(DUP_CL,              "dup_cl",                BAD,          "more than one Content-Length header, even with equal values")
HTTP_ERR(CL_LIST,             "cl_list",               BAD,          "a Content-Length value that is a comma list")
HTTP_ERR(BAD_CL,              "bad_cl",                BAD,          "a Content-Length value that is not 1*DIGIT (sign, space, empty, letters)")
HTTP_ERR(CL_OVERFLOW,         "cl_overflow",           BAD,          "a Content-Length beyond 2^62")
HTTP_ERR(CL_TE,               "cl_te",                 BAD,          "Content-Length together with Transfer-Encoding")
HTTP_ERR(TE_DUP,              "te_dup",                BAD,          "more than one Transfer-Encoding header")
HTTP_ERR(TE_LIST,             "te_list",               BAD,          "Transfer-Encoding is a list (gzip, chunked / chunked, chunked); only a lone chunked is accepted")
HTTP_ERR(TE_UNKNOWN,          "te_unknown",            BAD,          "Transfer-Encoding is not chunked")
HTTP_ERR(TE_HTTP10,           "te_http10",             BAD,          "Transfer-Encoding in an HTTP/1.0 message")
HTTP_ERR(CONNECTION,          "connection",            BAD,          "a Connection header element that is not a token")
HTTP_ERR(CONNECTION_FRAMING,  "connection_framing",    BAD,          "Connection names Host, Content-Length or Transfer-Encoding as hop-by-hop")
HTTP_ERR(EXPECT,              "expect",                BAD,          "an Expect value other than 100-continue")
HTTP_ERR(SWITCHING_PROTOCOLS, "switching_protocols",   BAD,          "a 101 response; the proxy never asks for an upgrade")

/* sizes */
HTTP_ERR(REQUEST_LINE_TOO_LONG, "request_line_too_long", HEADER_LARGE, "the request or status line is longer than the line limit")
HTTP_ERR(HEADER_LINE_TOO_LONG, "header_line_too_long", HEADER_LARGE, "a header line is longer than the line limit")
HTTP_ERR(HEADER_TOO_LARGE,    "header_too_large",      HEADER_LARGE, "the head is larger than max_header_size")
HTTP_ERR(TOO_MANY_HEADERS,    "too_many_headers",      HEADER_LARGE, "more header lines than the header count limit")
HTTP_ERR(BODY_TOO_LARGE,      "body_too_large",        BODY_LARGE,   "the body (Content-Length or the chunks so far) exceeds max_body_size")

/* chunked body */
HTTP_ERR(CHUNK_SIZE,          "chunk_size",            BAD,          "a chunk-size that is not 1*HEXDIG (empty, sign, 0x, space before CRLF)")
HTTP_ERR(CHUNK_SIZE_OVERFLOW, "chunk_size_overflow",   BAD,          "a chunk-size beyond 2^60")
HTTP_ERR(CHUNK_EXT,           "chunk_ext",             BAD,          "a chunk extension with a control character")
HTTP_ERR(CHUNK_LINE_TOO_LONG, "chunk_line_too_long",   BAD,          "a chunk-size line (with extensions) longer than 4096 bytes")
HTTP_ERR(CHUNK_NO_CRLF,       "chunk_no_crlf",         BAD,          "chunk data not followed by CRLF (the chunk-size lied)")
HTTP_ERR(TRAILER,             "trailer",               BAD,          "a malformed trailer line")
HTTP_ERR(TRAILER_TOO_LARGE,   "trailer_too_large",     BAD,          "trailer lines beyond the size or count limit")
HTTP_ERR(TRUNCATED_BODY,      "truncated_body",        BAD,          "the connection ended before the body did")
HTTP_ERR(BODY_MISUSE,         "body_misuse",           BAD,          "the proxy reported more body bytes moved than were pending (a proxy bug, see the error log)")

/* the path, percent-decoded for the allow-list (SPEC §4) */
HTTP_ERR(DOT_SEGMENT,         "dot_segment",           BAD,          "a '.' or '..' path segment, raw or percent-encoded")
HTTP_ERR(ENCODED_SLASH,       "encoded_slash",         BAD,          "%2F in the path")
HTTP_ERR(BACKSLASH,           "backslash",             BAD,          "a backslash in the path, raw or %5C")
HTTP_ERR(ENCODED_NUL,         "encoded_nul",           BAD,          "%00 in the path")
HTTP_ERR(ENCODED_CTL,         "encoded_ctl",           BAD,          "a percent-encoded control character or space in the path")
HTTP_ERR(BAD_PERCENT,         "bad_percent",           BAD,          "a '%' not followed by two hex digits")
HTTP_ERR(DOUBLE_ENCODING,     "double_encoding",       BAD,          "%25 in the path (double percent-encoding)")
HTTP_ERR(NON_ASCII_PATH,      "non_ascii_path",        BAD,          "a percent-encoded byte above 0x7f in the path")
HTTP_ERR(EMPTY_SEGMENT,       "empty_segment",         BAD,          "an empty path segment ('//')")
HTTP_ERR(PATH_TOO_LONG,       "path_too_long",         BAD,          "the decoded path does not fit the caller's buffer")
