/*
 * tls.c — SSL_CTX for devices and for Exchange, client-certificate
 * verification with a per-connection failure record, CRLs, the
 * tls-server-end-point channel binding; see tls.h for the contract.
 *
 * Per-connection state lives in OpenSSL ex_data so that stream.c needs no
 * field for it and a successful connection costs nothing: the record below
 * is allocated only when a verification fails or a fatal alert passes, and
 * OpenSSL frees it with the SSL (conn_rec_free).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "tls.h"

#define CONN_REC_MAGIC		0x544c5343u	/* "TLSC" */
#define SESS_CACHE_MAGIC	0x544c5353u	/* "TLSS" */
#define NAME_MAX_LOG		200		/* subject/issuer kept for the log line */
#define CRL_FILE_MAX		(256u << 20)	/* refuse absurd CRL files */
#define CERT_EXPIRY_WARN_DAYS	30

/* The failure record of one device connection (see tls_handshake_reason). */
struct conn_rec {
	unsigned magic;
	int verify_err;			/* first X509_V_ERR_*, 0 = none */
	int verify_depth;
	int alert_sent;			/* fatal alert description + 1, 0 = none */
	int alert_recv;
	char subject[NAME_MAX_LOG];
	char issuer[NAME_MAX_LOG];
	char serial[72];
};

/* Backend sessions, one per host name, owned by the SSL_CTX (ex_data). */
struct sess_entry {
	char *host;
	SSL_SESSION *sess;
};
struct sess_cache {
	unsigned magic;
	unsigned n;
	struct sess_entry e[CONFIG_MAX_LIST];
};

static CRYPTO_ONCE index_once = CRYPTO_ONCE_STATIC_INIT;
static int conn_idx = -1;	/* SSL ex_data: struct conn_rec * */
static int sess_idx = -1;	/* SSL_CTX ex_data: struct sess_cache * */

static const unsigned char alpn_http11[] = "\x08http/1.1";

/* ---- helpers --------------------------------------------------------- */

static void errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static void
conn_rec_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
	struct conn_rec *r = ptr;

	(void)parent; (void)ad; (void)idx; (void)argl; (void)argp;
	if (r != NULL && r->magic == CONN_REC_MAGIC) {
		r->magic = 0;
		free(r);
	}
}

static void
sess_cache_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
	struct sess_cache *c = ptr;
	unsigned i;

	(void)parent; (void)ad; (void)idx; (void)argl; (void)argp;
	if (c == NULL || c->magic != SESS_CACHE_MAGIC)
		return;
	for (i = 0; i < c->n; i++) {
		free(c->e[i].host);
		SSL_SESSION_free(c->e[i].sess);
	}
	c->magic = 0;
	free(c);
}

static void
init_indexes(void)
{
	conn_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, conn_rec_free);
	sess_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, sess_cache_free);
}

static int
indexes(char *err, size_t errlen)
{
	char ebuf[256];

	if (!CRYPTO_THREAD_run_once(&index_once, init_indexes) || conn_idx < 0 || sess_idx < 0) {
		errf(err, errlen, "tls: cannot allocate OpenSSL ex_data indexes: %s",
		    log_ssl_errors(ebuf, sizeof(ebuf)));
		return -1;
	}
	return 0;
}

/* The record of ssl, allocated when create and missing. NULL when there is
 * none (or no memory: callers then fall back to SSL_get_verify_result). */
static struct conn_rec *
conn_rec(const SSL *ssl, int create)
{
	struct conn_rec *r;

	if (conn_idx < 0)
		return NULL;
	r = SSL_get_ex_data(ssl, conn_idx);
	if (r != NULL) {
		if (r->magic != CONN_REC_MAGIC)
			abort();	/* our own invariant: only tls.c sets this slot */
		return r;
	}
	if (!create || (r = calloc(1, sizeof(*r))) == NULL)
		return NULL;
	r->magic = CONN_REC_MAGIC;
	/* the SSL is ours to annotate even when a callback hands it as const */
	if (!SSL_set_ex_data((SSL *)ssl, conn_idx, r)) {
		free(r);
		return NULL;
	}
	return r;
}

/* RFC 2253 rendering with control and non-ASCII bytes escaped: the name
 * comes from the peer. */
void
tls_name_text(const X509_NAME *name, char *buf, size_t len)
{
	BIO *b = BIO_new(BIO_s_mem());
	int n;

	buf[0] = '\0';
	if (b == NULL)
		return;
	if (name != NULL && X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253) >= 0) {
		n = BIO_read(b, buf, (int)len - 1);
		buf[n > 0 ? n : 0] = '\0';
	}
	BIO_free(b);
}

/* The same for the log, where an empty name would read as a missing word. */
static void
name_str(const X509_NAME *name, char *buf, size_t len)
{
	tls_name_text(name, buf, len);
	if (buf[0] == '\0')
		snprintf(buf, len, "(empty)");
}

void
tls_serial_text(X509 *cert, char *buf, size_t len)
{
	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
	char *hex = bn ? BN_bn2hex(bn) : NULL;

	snprintf(buf, len, "%s", hex ? hex : "?");
	OPENSSL_free(hex);
	BN_free(bn);
}

void
tls_time_text(const ASN1_TIME *t, char *buf, size_t len)
{
	BIO *b = BIO_new(BIO_s_mem());
	int n = 0;

	buf[0] = '\0';
	if (b != NULL && t != NULL && ASN1_TIME_print(b, t) == 1)
		n = BIO_read(b, buf, (int)len - 1);
	buf[n > 0 ? n : 0] = '\0';
	BIO_free(b);
}

/* OpenSSL 3 renders a failed fopen() without the errno text; say it first. */
static int
check_readable(const char *what, const char *file, char *err, size_t errlen)
{
	FILE *fp = fopen(file, "r");

	if (fp == NULL) {
		errf(err, errlen, "%s %s: cannot open: %s", what, file, strerror(errno));
		return -1;
	}
	fclose(fp);
	return 0;
}

/* ---- device side: callbacks ------------------------------------------ */

static void
record_verify(SSL *ssl, int err, int depth, X509 *cert)
{
	struct conn_rec *r = conn_rec(ssl, 1);

	if (r == NULL || r->verify_err != 0)
		return;		/* keep the first failure */
	r->verify_err = err;
	r->verify_depth = depth;
	if (cert != NULL) {
		name_str(X509_get_subject_name(cert), r->subject, sizeof(r->subject));
		name_str(X509_get_issuer_name(cert), r->issuer, sizeof(r->issuer));
		tls_serial_text(cert, r->serial, sizeof(r->serial));
	}
}

static int
has_client_auth_eku(X509 *cert)
{
	return (X509_get_extension_flags(cert) & EXFLAG_XKUSAGE) != 0 &&
	    (X509_get_extended_key_usage(cert) & XKU_SSL_CLIENT) != 0;
}

/* Refuse at the first problem (never let an error pass), remember it. */
static int
verify_common(int ok, X509_STORE_CTX *xs, int strict_eku)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
	X509 *cert = X509_STORE_CTX_get_current_cert(xs);
	int depth = X509_STORE_CTX_get_error_depth(xs);

	if (ok) {
		/* OpenSSL's ssl_client purpose accepts a leaf without any EKU;
		 * require_client_auth_eku asks for clientAuth to be listed. */
		if (strict_eku && ssl != NULL && X509_STORE_CTX_get0_parent_ctx(xs) == NULL &&
		    depth == 0 && cert != NULL && !has_client_auth_eku(cert)) {
			/* the device's own certificate, not a CRL issuer's path */
			X509_STORE_CTX_set_error(xs, X509_V_ERR_INVALID_PURPOSE);
			record_verify(ssl, X509_V_ERR_INVALID_PURPOSE, 0, cert);
			return 0;
		}
		return 1;
	}
	if (ssl != NULL)
		record_verify(ssl, X509_STORE_CTX_get_error(xs), depth, cert);
	return 0;
}

static int
verify_strict_cb(int ok, X509_STORE_CTX *xs)
{
	return verify_common(ok, xs, 1);
}

static int
verify_plain_cb(int ok, X509_STORE_CTX *xs)
{
	return verify_common(ok, xs, 0);
}

/* Fatal alerts, sent and received: what tls_handshake_reason has when the
 * error queue was drained by someone else. */
static void
info_cb(const SSL *ssl, int where, int ret)
{
	struct conn_rec *r;

	if (!(where & SSL_CB_ALERT) || (ret >> 8) != SSL3_AL_FATAL)
		return;
	if ((r = conn_rec(ssl, 1)) == NULL)
		return;
	if (where & SSL_CB_WRITE) {
		if (r->alert_sent == 0)
			r->alert_sent = (ret & 0xff) + 1;
	} else if (r->alert_recv == 0) {
		r->alert_recv = (ret & 0xff) + 1;
	}
}

/* http/1.1 when offered; otherwise no ALPN at all rather than a failure
 * (an h2-only client learns nothing was agreed and may still try 1.1). */
static int
alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
    const unsigned char *in, unsigned inlen, void *arg)
{
	unsigned char *sel = NULL;
	unsigned char sellen = 0;

	(void)ssl;
	(void)arg;
	if (SSL_select_next_proto(&sel, &sellen, alpn_http11, sizeof(alpn_http11) - 1,
	    in, inlen) != OPENSSL_NPN_NEGOTIATED)
		return SSL_TLSEXT_ERR_NOACK;
	*out = sel;
	*outlen = sellen;
	return SSL_TLSEXT_ERR_OK;
}

/* A ticket resumes only a session that carries its verified peer
 * certificate, and only while that certificate is still valid: resumption
 * skips the chain checks. Otherwise: full handshake, fresh ticket. */
static SSL_TICKET_RETURN
ticket_dec_cb(SSL *ssl, SSL_SESSION *sess, const unsigned char *keyname,
    size_t keyname_len, SSL_TICKET_STATUS status, void *arg)
{
	X509 *peer;

	(void)ssl; (void)keyname; (void)keyname_len; (void)arg;
	if (status != SSL_TICKET_SUCCESS && status != SSL_TICKET_SUCCESS_RENEW)
		return SSL_TICKET_RETURN_IGNORE_RENEW;
	if (sess == NULL || (peer = SSL_SESSION_get0_peer(sess)) == NULL)
		return SSL_TICKET_RETURN_IGNORE_RENEW;
	if (X509_cmp_current_time(X509_get0_notAfter(peer)) <= 0)
		return SSL_TICKET_RETURN_IGNORE_RENEW;
	return status == SSL_TICKET_SUCCESS_RENEW ? SSL_TICKET_RETURN_USE_RENEW :
	    SSL_TICKET_RETURN_USE;
}

/* Never prompt on a terminal for a key passphrase: a daemon has none. */
static int
no_passphrase_cb(char *buf, int size, int rwflag, void *u)
{
	(void)buf; (void)size; (void)rwflag; (void)u;
	return -1;
}

/* ---- device side: loading -------------------------------------------- */

/* [tls] ciphers: "TLS_*" names are TLS 1.3 suites, the rest TLS 1.2
 * ciphers; each list falls back to OpenSSL's defaults when it has none. */
static int
set_ciphers(SSL_CTX *ctx, const char *spec, char *err, size_t errlen)
{
	char *copy = NULL, *tls12 = NULL, *tls13 = NULL, *tok, *save = NULL;
	size_t n12 = 0, n13 = 0, sz;
	char ebuf[256];
	int ret = -1;

	if (spec == NULL || *spec == '\0') {
		if (SSL_CTX_set_ciphersuites(ctx, OSSL_default_ciphersuites()) != 1) {
			errf(err, errlen, "tls: cannot set the default TLS 1.3 cipher suites: %s",
			    log_ssl_errors(ebuf, sizeof(ebuf)));
			return -1;
		}
		return 0;
	}
	sz = strlen(spec) + 1;
	if ((copy = strdup(spec)) == NULL || (tls12 = calloc(1, sz)) == NULL ||
	    (tls13 = calloc(1, sz)) == NULL) {
		errf(err, errlen, "tls: out of memory");
		goto cleanup;
	}
	for (tok = strtok_r(copy, ":", &save); tok != NULL; tok = strtok_r(NULL, ":", &save)) {
		int is13 = strncmp(tok, "TLS_", 4) == 0;
		char *dst = is13 ? tls13 : tls12;
		size_t *n = is13 ? &n13 : &n12;

		*n += (size_t)snprintf(dst + *n, sz - *n, "%s%s", *n ? ":" : "", tok);
	}
	if (n12 > 0 && SSL_CTX_set_cipher_list(ctx, tls12) != 1) {
		errf(err, errlen, "[tls] ciphers '%s': no usable TLS 1.2 cipher in '%s': %s",
		    spec, tls12, log_ssl_errors(ebuf, sizeof(ebuf)));
		goto cleanup;
	}
	if (SSL_CTX_set_ciphersuites(ctx, n13 > 0 ? tls13 : OSSL_default_ciphersuites()) != 1) {
		errf(err, errlen, "[tls] ciphers '%s': no usable TLS 1.3 suite in '%s': %s",
		    spec, tls13, log_ssl_errors(ebuf, sizeof(ebuf)));
		goto cleanup;
	}
	ret = 0;
cleanup:
	free(copy);
	free(tls12);
	free(tls13);
	return ret;
}

/* Read a whole (bounded) file into memory. */
static int
slurp(const char *file, unsigned char **out, size_t *outlen, char *err, size_t errlen)
{
	FILE *fp = NULL;
	unsigned char *buf = NULL;
	struct stat st;
	int ret = -1;

	if ((fp = fopen(file, "rb")) == NULL || fstat(fileno(fp), &st) != 0) {
		errf(err, errlen, "cannot open: %s", strerror(errno));
		goto cleanup;
	}
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > CRL_FILE_MAX) {
		errf(err, errlen, "not a regular file of at most %u MiB", CRL_FILE_MAX >> 20);
		goto cleanup;
	}
	if ((buf = malloc((size_t)st.st_size + 1)) == NULL) {
		errf(err, errlen, "out of memory");
		goto cleanup;
	}
	if (fread(buf, 1, (size_t)st.st_size, fp) != (size_t)st.st_size) {
		errf(err, errlen, "read failed: %s", ferror(fp) ? strerror(errno) : "short read");
		goto cleanup;
	}
	*out = buf;
	*outlen = (size_t)st.st_size;
	buf = NULL;
	ret = 0;
cleanup:
	free(buf);
	if (fp != NULL)
		fclose(fp);
	return ret;
}

/* A loaded CRL must be signed by a CA of client_ca with its issuer's name
 * (several may share the name after a CA key renewal); one from another CA
 * is kept but checks nothing, which deserves a warning, and so does a CRL
 * past its nextUpdate: it refuses every certificate of its CA. */
static int
check_crl(X509_STORE *store, X509_CRL *crl, const char *file, char *err, size_t errlen)
{
	STACK_OF(X509_OBJECT) *objs = X509_STORE_get0_objects(store);
	const ASN1_TIME *next = X509_CRL_get0_nextUpdate(crl);
	char issuer[NAME_MAX_LOG], when[64];
	int i, named = 0, signed_ok = 0;

	name_str(X509_CRL_get_issuer(crl), issuer, sizeof(issuer));
	for (i = 0; i < sk_X509_OBJECT_num(objs); i++) {
		X509_OBJECT *o = sk_X509_OBJECT_value(objs, i);
		X509 *ca;

		if (X509_OBJECT_get_type(o) != X509_LU_X509)
			continue;
		ca = X509_OBJECT_get0_X509(o);
		if (X509_NAME_cmp(X509_get_subject_name(ca), X509_CRL_get_issuer(crl)) != 0)
			continue;
		named = 1;
		if (X509_CRL_verify(crl, X509_get0_pubkey(ca)) == 1) {
			signed_ok = 1;
			break;
		}
	}
	ERR_clear_error();	/* failed X509_CRL_verify attempts */
	if (named && !signed_ok) {
		errf(err, errlen, "crl %s: the CRL of '%s' is not signed by the CA of that "
		    "name in client_ca (wrong or corrupted CRL)", file, issuer);
		return -1;
	}
	if (!named)
		log_warn("tls", "crl %s: issuer '%s' is not in client_ca; this CRL checks nothing",
		    file, issuer);
	if (next != NULL && X509_cmp_current_time(next) <= 0) {
		tls_time_text(next, when, sizeof(when));
		log_warn("tls", "crl %s: the CRL of '%s' expired at %s (nextUpdate); every "
		    "certificate of that CA is refused until it is refreshed", file, issuer, when);
	}
	return 0;
}

/* check_crl, then into store (which takes its own reference: the caller
 * still frees crl). Returns 0, or -1 with err. */
static int
add_crl(X509_STORE *store, X509_CRL *crl, const char *file, char *err, size_t errlen)
{
	char ebuf[512];

	if (check_crl(store, crl, file, err, errlen) != 0)
		return -1;
	if (X509_STORE_add_crl(store, crl) != 1) {
		errf(err, errlen, "crl %s: cannot add: %s", file, log_ssl_errors(ebuf, sizeof(ebuf)));
		return -1;
	}
	return 0;
}

/* Add every CRL in file (PEM with any number of X509 CRL blocks, or DER,
 * one or several concatenated) to store. Returns the number added, or -1. */
static int
load_crl_file(X509_STORE *store, const char *file, char *err, size_t errlen)
{
	unsigned char *data = NULL;
	size_t len = 0;
	BIO *bio = NULL;
	X509_CRL *crl = NULL;
	char why[256], ebuf[512];
	int n = 0, ret = -1;

	if (slurp(file, &data, &len, why, sizeof(why)) != 0) {
		errf(err, errlen, "crl %s: %s", file, why);
		goto cleanup;
	}
	ERR_clear_error();
	if (len > 0 && memmem(data, len, "-----BEGIN", 10) != NULL) {
		if ((bio = BIO_new_mem_buf(data, (int)len)) == NULL) {
			errf(err, errlen, "crl %s: out of memory", file);
			goto cleanup;
		}
		for (;;) {
			unsigned long e;

			crl = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL);
			if (crl == NULL) {
				e = ERR_peek_last_error();
				if (n > 0 && ERR_GET_LIB(e) == ERR_LIB_PEM &&
				    ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
					ERR_clear_error();
					break;
				}
				if (n > 0)
					errf(err, errlen, "crl %s: CRL number %d does not parse: %s",
					    file, n + 1, log_ssl_errors(ebuf, sizeof(ebuf)));
				else
					errf(err, errlen, "crl %s: no X509 CRL block, or it does not "
					    "parse: %s", file, log_ssl_errors(ebuf, sizeof(ebuf)));
				goto cleanup;
			}
			if (add_crl(store, crl, file, err, errlen) != 0)
				goto cleanup;
			X509_CRL_free(crl);
			crl = NULL;
			n++;
		}
	} else {
		const unsigned char *p = data, *end = data + len;

		while (p < end) {
			if ((crl = d2i_X509_CRL(NULL, &p, (long)(end - p))) == NULL) {
				errf(err, errlen, "crl %s: neither PEM nor DER CRLs%s: %s", file,
				    n ? " after the first" : "", log_ssl_errors(ebuf, sizeof(ebuf)));
				goto cleanup;
			}
			if (add_crl(store, crl, file, err, errlen) != 0)
				goto cleanup;
			X509_CRL_free(crl);
			crl = NULL;
			n++;
		}
		if (n == 0) {
			errf(err, errlen, "crl %s: the file is empty", file);
			goto cleanup;
		}
	}
	ret = n;
cleanup:
	X509_CRL_free(crl);
	BIO_free(bio);
	free(data);
	return ret;
}

static void
warn_cert_expiry(SSL_CTX *ctx, const char *file)
{
	X509 *leaf = SSL_CTX_get0_certificate(ctx);
	char when[64];
	time_t soon;

	if (leaf == NULL)
		return;
	soon = time(NULL) + (time_t)CERT_EXPIRY_WARN_DAYS * 86400;
	tls_time_text(X509_get0_notAfter(leaf), when, sizeof(when));
	if (X509_cmp_current_time(X509_get0_notAfter(leaf)) <= 0)
		log_warn("tls", "certificate %s expired at %s; devices will refuse it", file, when);
	else if (X509_cmp_time(X509_get0_notAfter(leaf), &soon) <= 0)
		log_warn("tls", "certificate %s expires at %s, in less than %d days", file, when,
		    CERT_EXPIRY_WARN_DAYS);
}

SSL_CTX *
tls_front_ctx_new(const struct config *cfg, char *err, size_t errlen)
{
	SSL_CTX *ctx = NULL, *ret = NULL;
	STACK_OF(X509_NAME) *cas = NULL;
	X509_VERIFY_PARAM *param;
	const char *cert = cfg->tls.certificate, *key = cfg->tls.key, *ca = cfg->tls.client_ca;
	int strict = cfg->tls.require_client_auth_eku, ncrl = 0;
	char ebuf[512];
	unsigned i;

	if (indexes(err, errlen) != 0)
		return NULL;
	if (cert == NULL || key == NULL || ca == NULL || !*cert || !*key || !*ca) {
		errf(err, errlen, "[tls] certificate, key and client_ca must all be set");
		return NULL;
	}
	if (check_readable("certificate", cert, err, errlen) != 0 ||
	    check_readable("key", key, err, errlen) != 0 ||
	    check_readable("client_ca", ca, err, errlen) != 0)
		return NULL;
	ERR_clear_error();
	if ((ctx = SSL_CTX_new(TLS_server_method())) == NULL) {
		errf(err, errlen, "tls: SSL_CTX_new: %s", log_ssl_errors(ebuf, sizeof(ebuf)));
		goto cleanup;
	}
	SSL_CTX_set_default_passwd_cb(ctx, no_passphrase_cb);
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		errf(err, errlen, "certificate %s: cannot load the certificate chain (PEM, leaf "
		    "first): %s", cert, log_ssl_errors(ebuf, sizeof(ebuf)));
		goto cleanup;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
		unsigned long e = ERR_peek_last_error();

		if (ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH)
			errf(err, errlen, "key %s does not match the certificate in %s: %s", key,
			    cert, log_ssl_errors(ebuf, sizeof(ebuf)));
		else
			errf(err, errlen, "key %s: cannot load the private key (PEM, unencrypted): %s",
			    key, log_ssl_errors(ebuf, sizeof(ebuf)));
		goto cleanup;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		errf(err, errlen, "key %s does not match the certificate in %s: %s", key, cert,
		    log_ssl_errors(ebuf, sizeof(ebuf)));
		goto cleanup;
	}
	if (SSL_CTX_set_min_proto_version(ctx, cfg->tls.min_version) != 1) {
		errf(err, errlen, "[tls] min_version: unsupported protocol version 0x%x: %s",
		    (unsigned)cfg->tls.min_version, log_ssl_errors(ebuf, sizeof(ebuf)));
		goto cleanup;
	}
	if (set_ciphers(ctx, cfg->tls.ciphers, err, errlen) != 0)
		goto cleanup;

	/* trust anchors, and the CA list of the CertificateRequest */
	if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
		errf(err, errlen, "client_ca %s: cannot load CA certificates (PEM): %s", ca,
		    log_ssl_errors(ebuf, sizeof(ebuf)));
		goto cleanup;
	}
	if ((cas = SSL_load_client_CA_file(ca)) == NULL) {
		errf(err, errlen, "client_ca %s: no CA names: %s", ca, log_ssl_errors(ebuf, sizeof(ebuf)));
		goto cleanup;
	}
	SSL_CTX_set_client_CA_list(ctx, cas);	/* takes cas */
	cas = NULL;
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
	    strict ? verify_strict_cb : verify_plain_cb);
	SSL_CTX_set_verify_depth(ctx, (int)cfg->tls.verify_depth);
	param = SSL_CTX_get0_param(ctx);
	/* OpenSSL would apply ssl_client by default; ANY switches it off */
	if (X509_VERIFY_PARAM_set_purpose(param, strict ? X509_PURPOSE_SSL_CLIENT :
	    X509_PURPOSE_ANY) != 1) {
		errf(err, errlen, "tls: cannot set the certificate purpose: %s",
		    log_ssl_errors(ebuf, sizeof(ebuf)));
		goto cleanup;
	}
	for (i = 0; i < cfg->tls.crl.n; i++) {
		int k = load_crl_file(SSL_CTX_get_cert_store(ctx), cfg->tls.crl.v[i], err, errlen);

		if (k < 0)
			goto cleanup;
		ncrl += k;
	}
	if (ncrl > 0)
		X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);

	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
	    SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_IGNORE_UNEXPECTED_EOF);
	SSL_CTX_clear_options(ctx, SSL_OP_NO_TICKET);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

	/* resumption: stateless tickets only, bound to this context */
	if (SSL_CTX_set_session_id_context(ctx, (const unsigned char *)TLS_SID_CTX,
	    sizeof(TLS_SID_CTX) - 1) != 1 ||
	    SSL_CTX_set_num_tickets(ctx, 1) != 1 ||
	    SSL_CTX_set_session_ticket_cb(ctx, NULL, ticket_dec_cb, NULL) != 1) {
		errf(err, errlen, "tls: cannot set up session tickets: %s",
		    log_ssl_errors(ebuf, sizeof(ebuf)));
		goto cleanup;
	}
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_timeout(ctx, TLS_TICKET_LIFETIME);

	SSL_CTX_set_info_callback(ctx, info_cb);
	SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, NULL);
	/* no servername callback: any SNI name is accepted as it is */

	warn_cert_expiry(ctx, cert);
	ret = ctx;
	ctx = NULL;
cleanup:
	sk_X509_NAME_pop_free(cas, X509_NAME_free);
	SSL_CTX_free(ctx);
	return ret;
}

int
tls_set_ticket_keys(SSL_CTX *ctx, const unsigned char *keys, size_t len)
{
	if (ctx == NULL || keys == NULL || len != TLS_TICKET_KEYS_LEN)
		return -1;
	return SSL_CTX_set_tlsext_ticket_keys(ctx, (void *)keys, (long)len) == 1 ? 0 : -1;
}

/* ---- device side: outcome -------------------------------------------- */

static enum reason
verify_reason(int err)
{
	switch (err) {
	case X509_V_ERR_CERT_HAS_EXPIRED:
		return REASON_CERT_EXPIRED;
	case X509_V_ERR_CERT_NOT_YET_VALID:
		return REASON_CERT_NOT_YET_VALID;
	case X509_V_ERR_CERT_REVOKED:
		return REASON_CERT_REVOKED;
	case X509_V_ERR_INVALID_PURPOSE:
		return REASON_CERT_BAD_EKU;
	default:
		/* unknown issuer, self-signed, bad signature, impostor CA,
		 * chain too long, CRL missing/expired/bad, ... */
		return REASON_CERT_UNTRUSTED;
	}
}

enum reason
tls_handshake_reason(SSL *ssl, char *detail, size_t len)
{
	struct conn_rec *r = conn_rec(ssl, 0);
	unsigned long e = ERR_peek_error(), elast = ERR_peek_last_error();
	long vr = SSL_get_verify_result(ssl);
	int sent = r ? r->alert_sent - 1 : -1, recv = r ? r->alert_recv - 1 : -1;
	char q[384] = "", what[160] = "";
	enum reason reason;

	if (len == 0)
		detail = NULL;
	if (r != NULL && r->verify_err != 0) {
		errf(detail, len, "certificate verify failed at depth %d: %s (subject %s; "
		    "issuer %s; serial %s)", r->verify_depth,
		    X509_verify_cert_error_string(r->verify_err),
		    r->subject[0] ? r->subject : "?", r->issuer[0] ? r->issuer : "?",
		    r->serial[0] ? r->serial : "?");
		ERR_clear_error();
		return verify_reason(r->verify_err);
	}
	if (vr != X509_V_OK) {
		/* no record (out of memory): the verify result still knows */
		errf(detail, len, "certificate verify failed: %s", X509_verify_cert_error_string(vr));
		ERR_clear_error();
		return verify_reason((int)vr);
	}
	if (e != 0)
		log_ssl_errors(q, sizeof(q));
	if (sent >= 0)
		snprintf(what, sizeof(what), "alert %s sent", SSL_alert_desc_string_long(sent));
	else if (recv >= 0)
		snprintf(what, sizeof(what), "alert %s received from the device",
		    SSL_alert_desc_string_long(recv));
	else
		snprintf(what, sizeof(what), "connection closed in the handshake");

	/* No certificate: TLS 1.3 says certificate_required; TLS 1.2 says
	 * handshake_failure while reading the client's (empty) Certificate. */
	if (SSL_get0_peer_certificate(ssl) == NULL &&
	    (sent == SSL_AD_CERTIFICATE_REQUIRED ||
	    (SSL_get_state(ssl) == TLS_ST_SR_CERT && (sent == SSL_AD_HANDSHAKE_FAILURE || sent < 0) &&
	    recv < 0) ||
	    ERR_GET_REASON(e) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE ||
	    ERR_GET_REASON(elast) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE)) {
		reason = REASON_CERT_MISSING;
		errf(detail, len, "the device sent no client certificate (%s)", what);
	} else {
		reason = REASON_TLS_HANDSHAKE;
		errf(detail, len, "handshake failed: %s%s%s%s", what,
		    sent == SSL_AD_PROTOCOL_VERSION ? " (the device's TLS version is below min_version)" : "",
		    q[0] ? ": " : "", q);
	}
	return reason;
}

X509 *
tls_peer_cert(SSL *ssl)
{
	X509 *cert;

	if (ssl == NULL || !SSL_is_init_finished(ssl))
		return NULL;
	cert = SSL_get0_peer_certificate(ssl);
	if (cert == NULL || SSL_get_verify_result(ssl) != X509_V_OK)
		return NULL;
	return cert;
}

X509 *
tls_peer_issuer(SSL *ssl)
{
	X509 *leaf = tls_peer_cert(ssl), *issuer = NULL;
	STACK_OF(X509) *chain;
	X509_STORE_CTX *xs = NULL;
	X509_STORE *store;

	if (leaf == NULL)
		return NULL;
	chain = SSL_get0_verified_chain(ssl);
	if (chain != NULL && sk_X509_num(chain) > 1) {
		issuer = sk_X509_value(chain, 1);
		if (!X509_up_ref(issuer))
			issuer = NULL;
		return issuer;
	}
	/* resumed: the chain is not kept in the ticket, the store has it */
	store = SSL_CTX_get_cert_store(SSL_get_SSL_CTX(ssl));
	if ((xs = X509_STORE_CTX_new()) == NULL ||
	    X509_STORE_CTX_init(xs, store, leaf, NULL) != 1 ||
	    X509_STORE_CTX_get1_issuer(&issuer, xs, leaf) != 1)
		issuer = NULL;
	X509_STORE_CTX_free(xs);
	return issuer;
}

/* ---- backend side ---------------------------------------------------- */

static struct sess_cache *
sess_cache(SSL_CTX *ctx)
{
	struct sess_cache *c = sess_idx >= 0 ? SSL_CTX_get_ex_data(ctx, sess_idx) : NULL;

	if (c != NULL && c->magic != SESS_CACHE_MAGIC)
		abort();	/* only tls.c sets this slot */
	return c;
}

/* The host an SSL was made for: its expected DNS name or IP address
 * (OPENSSL_malloc, for OPENSSL_free). */
static char *
ssl_host(SSL *ssl)
{
	X509_VERIFY_PARAM *p = SSL_get0_param(ssl);
	const char *h = X509_VERIFY_PARAM_get0_host(p, 0);

	if (h != NULL)
		return OPENSSL_strdup(h);
	return X509_VERIFY_PARAM_get1_ip_asc(p);
}

/* Keep a copy of the newest session per host. A copy, because OpenSSL
 * marks the session of a connection freed without close_notify (the way
 * pooled connections end) as not resumable, and the SSL's own session
 * object is that one. Returns 0: OpenSSL keeps its reference. */
static int
backend_new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
	struct sess_cache *c = sess_cache(SSL_get_SSL_CTX(ssl));
	SSL_SESSION *copy = NULL;
	char *host = NULL;
	unsigned i;

	if (c == NULL || !SSL_SESSION_is_resumable(sess) || (host = ssl_host(ssl)) == NULL ||
	    (copy = SSL_SESSION_dup(sess)) == NULL)
		goto cleanup;
	for (i = 0; i < c->n; i++)
		if (strcmp(c->e[i].host, host) == 0)
			break;
	if (i == CONFIG_MAX_LIST)
		goto cleanup;
	if (i == c->n) {
		/* stored with free(): a malloc'd copy whatever allocated host */
		if ((c->e[i].host = strdup(host)) == NULL)
			goto cleanup;
		c->n++;
	}
	SSL_SESSION_free(c->e[i].sess);
	c->e[i].sess = copy;
	copy = NULL;
cleanup:
	SSL_SESSION_free(copy);
	OPENSSL_free(host);
	ERR_clear_error();
	return 0;
}

SSL_CTX *
tls_backend_ctx_new(const struct config *cfg, char *err, size_t errlen)
{
	SSL_CTX *ctx = NULL, *ret = NULL;
	struct sess_cache *cache = NULL;
	const char *ca = cfg->backend.ca;
	struct stat st;
	char ebuf[512];

	if (indexes(err, errlen) != 0)
		return NULL;
	ERR_clear_error();
	if ((ctx = SSL_CTX_new(TLS_client_method())) == NULL) {
		errf(err, errlen, "tls: SSL_CTX_new: %s", log_ssl_errors(ebuf, sizeof(ebuf)));
		goto cleanup;
	}
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
	    SSL_CTX_set_ciphersuites(ctx, OSSL_default_ciphersuites()) != 1) {
		errf(err, errlen, "tls: backend protocol settings: %s",
		    log_ssl_errors(ebuf, sizeof(ebuf)));
		goto cleanup;
	}
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
	    SSL_OP_IGNORE_UNEXPECTED_EOF);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if (ca != NULL && *ca) {
		int isdir = stat(ca, &st) == 0 && S_ISDIR(st.st_mode);

		if (!isdir && check_readable("[backend] ca", ca, err, errlen) != 0)
			goto cleanup;
		if (SSL_CTX_load_verify_locations(ctx, isdir ? NULL : ca, isdir ? ca : NULL) != 1) {
			errf(err, errlen, "[backend] ca %s: cannot load CA certificates: %s", ca,
			    log_ssl_errors(ebuf, sizeof(ebuf)));
			goto cleanup;
		}
	} else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
		errf(err, errlen, "[backend] ca is empty and the system CA store cannot be "
		    "loaded: %s", log_ssl_errors(ebuf, sizeof(ebuf)));
		goto cleanup;
	}
	/* offer http/1.1 only: IIS answers h2 only when it is offered */
	if (SSL_CTX_set_alpn_protos(ctx, alpn_http11, sizeof(alpn_http11) - 1) != 0) {
		errf(err, errlen, "tls: cannot set ALPN: %s", log_ssl_errors(ebuf, sizeof(ebuf)));
		goto cleanup;
	}
	if ((cache = calloc(1, sizeof(*cache))) == NULL) {
		errf(err, errlen, "tls: out of memory");
		goto cleanup;
	}
	cache->magic = SESS_CACHE_MAGIC;
	if (!SSL_CTX_set_ex_data(ctx, sess_idx, cache)) {
		errf(err, errlen, "tls: cannot attach the session cache: %s",
		    log_ssl_errors(ebuf, sizeof(ebuf)));
		goto cleanup;
	}
	cache = NULL;		/* freed with ctx */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
	SSL_CTX_sess_set_new_cb(ctx, backend_new_session_cb);
	ret = ctx;
	ctx = NULL;
cleanup:
	free(cache);
	SSL_CTX_free(ctx);
	return ret;
}

static int
is_ip_literal(const char *host)
{
	ASN1_OCTET_STRING *ip = a2i_IPADDRESS(host);

	if (ip == NULL) {
		ERR_clear_error();
		return 0;
	}
	ASN1_OCTET_STRING_free(ip);
	return 1;
}

SSL *
tls_backend_ssl_new(SSL_CTX *ctx, const char *host)
{
	struct sess_cache *c;
	SSL *ssl = NULL, *ret = NULL;
	unsigned i;

	if (ctx == NULL || host == NULL || *host == '\0') {
		ERR_raise_data(ERR_LIB_SSL, ERR_R_PASSED_NULL_PARAMETER, "tls_backend_ssl_new: no host");
		return NULL;
	}
	if ((ssl = SSL_new(ctx)) == NULL)
		goto cleanup;
	/* the name (or address) the certificate must carry */
	SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
	if (SSL_set1_host(ssl, host) != 1)
		goto cleanup;
	/* RFC 6066: no IP literals in SNI */
	if (!is_ip_literal(host) && SSL_set_tlsext_host_name(ssl, host) != 1)
		goto cleanup;
	if ((c = sess_cache(ctx)) != NULL) {
		for (i = 0; i < c->n; i++) {
			SSL_SESSION *s = c->e[i].sess;

			if (strcmp(c->e[i].host, host) != 0)
				continue;
			if (SSL_SESSION_is_resumable(s) &&
			    (time_t)(SSL_SESSION_get_time(s) + SSL_SESSION_get_timeout(s)) > time(NULL))
				(void)SSL_set_session(ssl, s);	/* a miss is only a full handshake */
			break;
		}
	}
	ret = ssl;
	ssl = NULL;
cleanup:
	SSL_free(ssl);
	return ret;
}

/* ---- channel bindings ------------------------------------------------ */

int
tls_server_end_point(X509 *cert, unsigned char *out, unsigned *outlen)
{
	int mdnid = NID_undef, signid;
	EVP_MD *md = NULL;
	unsigned len = 0;
	int ret = -1;

	if (cert == NULL || out == NULL || outlen == NULL) {
		ERR_raise_data(ERR_LIB_X509, ERR_R_PASSED_NULL_PARAMETER, "tls_server_end_point");
		return -1;
	}
	signid = X509_get_signature_nid(cert);
	/* RSA-PSS reports the digest of its parameters here too */
	if (!X509_get_signature_info(cert, &mdnid, NULL, NULL, NULL))
		mdnid = NID_undef;
	if (mdnid == NID_md5 || mdnid == NID_sha1)
		mdnid = NID_sha256;	/* RFC 5929 §4.1 */
	if (mdnid == NID_undef) {
		ERR_raise_data(ERR_LIB_X509, X509_R_UNSUPPORTED_ALGORITHM,
		    "tls-server-end-point is undefined for signature algorithm %s (RFC 5929)",
		    OBJ_nid2ln(signid) ? OBJ_nid2ln(signid) : "unknown");
		goto cleanup;
	}
	if ((md = EVP_MD_fetch(NULL, OBJ_nid2sn(mdnid), NULL)) == NULL)
		goto cleanup;
	if (X509_digest(cert, md, out, &len) != 1)
		goto cleanup;
	*outlen = len;
	ret = 0;
cleanup:
	EVP_MD_free(md);
	return ret;
}
