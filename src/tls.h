/*
 * tls.h — OpenSSL 3 contexts for the device side (TLS server, required
 * client certificate) and the Exchange side (TLS client), SPEC §3 [tls],
 * [backend], §5, §6.
 *
 * Contexts are built from files while the worker is still root
 * (docs/architecture.md) and are immutable afterwards; a reload builds new
 * ones in a new generation. A builder that fails returns NULL and names the
 * file and OpenSSL's error in err, so the caller keeps what it had.
 *
 * Device side, what a context enforces:
 *   - min_version, ciphers (TLS 1.2 names; names starting with "TLS_" are
 *     TLS 1.3 suites and go to the 1.3 list; empty = OpenSSL defaults for
 *     both), server cipher preference, no compression, no renegotiation;
 *   - a client certificate is required (SSL_VERIFY_PEER |
 *     SSL_VERIFY_FAIL_IF_NO_PEER_CERT) and must chain to client_ca within
 *     verify_depth; client_ca's subjects are the CertificateRequest CA list;
 *   - CRLs ([tls] crl, PEM or DER, several per file) are checked for the
 *     leaf and every CA of the chain (X509_V_FLAG_CRL_CHECK_ALL): every CA
 *     that issues certificates in the chain needs a current CRL, and an
 *     expired CRL refuses every device (fail closed, cert_untrusted with
 *     "CRL has expired" in the log);
 *   - require_client_auth_eku = yes: the leaf MUST carry an extendedKeyUsage
 *     that lists clientAuth; a leaf without the extension is refused too
 *     (OpenSSL's X509_PURPOSE_SSL_CLIENT alone accepts a missing EKU, and a
 *     setting named "require" should not). CAs with an EKU must allow
 *     clientAuth as well. = no: no purpose check at all (X509_PURPOSE_ANY),
 *     the escape hatch for device CAs with odd EKUs;
 *   - any SNI name is accepted; ALPN selects "http/1.1" when offered and
 *     otherwise answers no ALPN (a client offering only h2 still connects
 *     and speaks HTTP/1.1 or goes away);
 *   - SSL_MODE_RELEASE_BUFFERS: a parked connection holds no TLS buffers;
 *     SSL_OP_IGNORE_UNEXPECTED_EOF: a device that drops TCP without
 *     close_notify reads as EOF (HTTP framing detects a truncated body);
 *   - resumption by stateless tickets only (no server-side session cache,
 *     nothing grows with the number of devices). A ticket carries the
 *     verified peer certificate, so tls_peer_cert() works on resumed
 *     connections. A resumed handshake skips chain and CRL checks, so:
 *     tickets live TLS_TICKET_LIFETIME, a ticket whose certificate has
 *     expired since is ignored (full handshake), and the ticket keys belong
 *     to one context: OpenSSL makes random ones per SSL_CTX, which therefore
 *     rotate with every reload (a new generation builds new contexts, so a
 *     CRL change on SIGHUP invalidates every ticket). Keys are NOT rotated
 *     within a generation. Workers of one generation may share keys through
 *     tls_set_ticket_keys() (made by the parent before fork) so that a
 *     device resumes whichever worker SO_REUSEPORT hands it to.
 *
 * Handshake failures: a verify callback records the first failure of a
 * connection (error, depth, subject, issuer, serial) and an info callback
 * the fatal alert sent or received; tls_handshake_reason() turns them into
 * the reason token. tls.c owns the verify and info callbacks of the device
 * context: stream.c must not replace them. Both work without OpenSSL's
 * error queue, which bufferevent_openssl drains before stream.c's event
 * callback runs.
 *
 * Backend side: TLS client, min TLS 1.2, verify against [backend] ca (file
 * or directory) or the system store when empty, host name checked per
 * connection (tls_backend_ssl_new), ALPN http/1.1 offered, sessions reused
 * per host name (a resumed session still has the server's certificate, so
 * the channel-binding hash is the same). SSL_OP_IGNORE_UNEXPECTED_EOF here
 * too: a server that drops TCP without close_notify reads as EOF, so HTTP
 * framing (Content-Length, last chunk) must decide whether an answer was
 * complete.
 *
 * Use from stream.c (bufferevent_openssl):
 *   ssl = SSL_new(front_ctx);
 *   bev = bufferevent_openssl_socket_new(base, fd, ssl,
 *           BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
 *   BEV_EVENT_CONNECTED: cert = tls_peer_cert(ssl) (never NULL here: the
 *     context requires a verified certificate), identity_map(cert, ...),
 *     then ocsp_check_ssl() (ocsp.h) unless [tls] ocsp = off;
 *   BEV_EVENT_ERROR / _EOF before CONNECTED: r = tls_handshake_reason(ssl,
 *     detail, sizeof(detail)); count metrics tls_failures[r], log detail at
 *     info (peer-caused), close with r.
 */
#ifndef EKP_TLS_H
#define EKP_TLS_H

#include <stddef.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "config.h"
#include "reason.h"

#define TLS_TICKET_LIFETIME	3600		/* seconds a session ticket is good for */
#define TLS_TICKET_KEYS_LEN	80		/* SSL_CTX_set_tlsext_ticket_keys: name, HMAC, AES */
#define TLS_SID_CTX		"eas-kcd-proxy/device"

/* The device-side server context from cfg->tls. Returns a new SSL_CTX
 * (caller frees with SSL_CTX_free) or NULL with the cause in err: which
 * file, what failed, OpenSSL's error queue rendered by log_ssl_errors. */
SSL_CTX *tls_front_ctx_new(const struct config *cfg, char *err, size_t errlen);

/* Install ticket keys shared by the workers of one generation (len must be
 * TLS_TICKET_KEYS_LEN, random, made once per generation). Returns 0 / -1. */
int tls_set_ticket_keys(SSL_CTX *ctx, const unsigned char *keys, size_t len);

/* The handshake of ssl (made from a tls_front_ctx_new context) failed:
 * which reason is it? Uses the recorded verify failure, the alert sent or
 * received and the handshake state; the thread's OpenSSL error queue is
 * consulted and drained when not empty, never required. detail gets a
 * one-line explanation for the error log (always NUL-terminated), e.g.
 * "certificate verify failed at depth 0: certificate has expired (subject
 * CN=alice, issuer CN=Device CA, serial 1A2B)". Never returns REASON_OK:
 * REASON_CERT_MISSING, _CERT_UNTRUSTED, _CERT_EXPIRED, _CERT_NOT_YET_VALID,
 * _CERT_REVOKED, _CERT_BAD_EKU, or REASON_TLS_HANDSHAKE for anything else. */
enum reason tls_handshake_reason(SSL *ssl, char *detail, size_t len);

/* The verified client certificate of an established connection, full or
 * resumed handshake; borrowed (lives as long as ssl). NULL when there is
 * none or verification did not succeed. */
X509 *tls_peer_cert(SSL *ssl);

/* The issuer of the peer certificate, for OCSP: from the verified chain of
 * a full handshake, else looked up in the context's trust store (client_ca)
 * on a resumed one. Returns a new reference (X509_free) or NULL. */
X509 *tls_peer_issuer(SSL *ssl);

/* The Exchange-side client context from cfg->backend. Same contract as
 * tls_front_ctx_new. */
SSL_CTX *tls_backend_ctx_new(const struct config *cfg, char *err, size_t errlen);

/* A new client SSL for one connection to host: SNI (unless host is an IP
 * literal), the name or address the certificate must match, and a session
 * of an earlier connection to the same host when there is one. Returns NULL
 * on failure (OpenSSL's error queue says why). */
SSL *tls_backend_ssl_new(SSL_CTX *ctx, const char *host);

/* RFC 5929 tls-server-end-point channel binding data of cert: its hash with
 * the digest of the certificate's signature algorithm, SHA-256 when that is
 * MD5 or SHA-1. out must hold EVP_MAX_MD_SIZE bytes. Returns 0, or -1 when
 * the algorithm has no single digest (Ed25519, ...: RFC 5929 leaves it
 * undefined) or hashing failed; an error is then on OpenSSL's queue. */
int tls_server_end_point(X509 *cert, unsigned char *out, unsigned *outlen);

/* Log renderings of what a certificate says. Each fills buf (always
 * NUL-terminated, cut to len).
 * tls_name_text: RFC 2253 with control and non-ASCII bytes escaped (the
 *   name may come from a peer); empty when name is NULL or does not print.
 * tls_serial_text: the serial number in upper-case hex, "?" when it cannot
 *   be read.
 * tls_time_text: as OpenSSL prints it ("Jan  2 03:04:05 2030 GMT"); empty
 *   when t is NULL or does not print. */
void tls_name_text(const X509_NAME *name, char *buf, size_t len);
void tls_serial_text(X509 *cert, char *buf, size_t len);
void tls_time_text(const ASN1_TIME *t, char *buf, size_t len);

#endif
