/*
 * doctor.c — the preflight checks (SPEC §2); see doctor.h for the list.
 *
 * Doctor plays every part of the daemon in one process, synchronously:
 * it is the kcd (opens the keytab, runs s4u.c and directory.c on its own
 * event_base and waits for each answer), a worker (builds the TLS
 * contexts with tls.c) and backend.c (dials Exchange, blocking, with
 * [backend] connect_timeout). Nothing here is used by the daemon itself.
 *
 * Checks share what they learnt through struct doctor (the TGT was
 * obtained, which backend server answered and its channel-binding hash,
 * the user's principal, the service ticket), so a later check is SKIPped
 * with a pointer to the failed one instead of failing again with a less
 * useful message.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <event2/event.h>
#include <gssapi/gssapi.h>
#include <gssapi/gssapi_ext.h>
#include <gssapi/gssapi_krb5.h>
#include <krb5.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "config.h"
#include "directory.h"
#include "doctor.h"
#include "identity.h"
#include "kcd_proto.h"
#include "keytab.h"
#include "log.h"
#include "s4u.h"
#include "tls.h"

#ifndef EKP_VERSION
#define EKP_VERSION "unknown"
#endif

#define EXIT_USAGE		2
#define EXPIRY_WARN_DAYS	30	/* certificates: WARN this close to notAfter */
#define SKEW_WARN_S		60
#define SKEW_FAIL_S		300	/* MIT's and AD's default clockskew */
#define HTTP_TIMEOUT_MS		30000	/* Exchange's first answer (IIS warm-up) */
#define HTTP_HEAD_MAX		16384
#define PROBE_LOCAL		"eas-kcd-proxy-doctor-probe"

enum dstatus { D_OK, D_WARN, D_FAIL, D_SKIP };

static const char *const status_names[] = { "OK", "WARN", "FAIL", "SKIP" };

struct doctor {
	const char *conf_path;
	const char *user_arg;		/* --user as given, NULL = none */
	int verbose;
	struct config *cfg;		/* owned */
	struct event_base *base;	/* owned: s4u.c and directory.c run on it */
	struct s4u *s4u;		/* owned, made by the s4u2proxy check */
	unsigned counts[4];

	int tgt_ok;			/* the AS exchange gave a TGT */
	int kdc_down;			/* ... or no KDC answered */
	int backend_ok;			/* a server passed the backend check */
	unsigned backend_index;		/* ... the first one */
	unsigned char cb[EVP_MAX_MD_SIZE];	/* its tls-server-end-point hash */
	unsigned cb_len;
	char principal[KCD_PRINCIPAL_MAX];	/* the user's, "" without --user */
	int user_refused;		/* the KDC or the directory refused the user */
	char *token;			/* owned: base64 Negotiate token (s4u2proxy) */
	uint32_t ctx_id;		/* its kept context, for mutual auth */
	/* A non-forwardable S4U2Self ticket fails classic constrained
	 * delegation but not resource-based (RBCD): its line waits for the
	 * S4U2Proxy outcome (emitted just before the s4u2proxy line). */
	int nofwd_pending;
	char nofwd_detail[1280];
};

/* ---- output -------------------------------------------------------------- */

/* Print s with control bytes escaped: details carry text from the KDC,
 * certificates and Exchange, which must not drive the terminal. */
static void
put_safe(const char *s)
{
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		if (c < 0x20 || c == 0x7f)
			printf("\\x%02x", c);
		else
			putchar(c);
	}
}

static void
report(struct doctor *d, enum dstatus st, const char *check, const char *hint,
    const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static const char HINT_NOT_FORWARDABLE[] =
    "set ok_to_auth_as_delegate / AD: 'Trust this user for delegation to specified services "
    "only — Use any authentication protocol' on the proxy's account (MIT: kadmin modprinc "
    "+ok_to_auth_as_delegate); if it is set, this user is 'sensitive and cannot be "
    "delegated' (or in Protected Users)";

static void emit_nofwd(struct doctor *d, int proxy_ok);

static void
report(struct doctor *d, enum dstatus st, const char *check, const char *hint,
    const char *fmt, ...)
{
	char detail[4096];
	va_list ap;

	if (d->nofwd_pending && strcmp(check, "s4u2proxy") == 0)
		emit_nofwd(d, st == D_OK);
	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	printf("%-4s %-11s ", status_names[st], check);
	put_safe(detail);
	if (hint != NULL && *hint != '\0') {
		printf("; hint: ");
		put_safe(hint);
	}
	putchar('\n');
	fflush(stdout);
	d->counts[st]++;
}

/* The s4u2self line of a non-forwardable ticket, once S4U2Proxy has been
 * tried: it worked (the KDC used resource-based constrained delegation,
 * which accepts such a ticket) or it did not. */
static void
emit_nofwd(struct doctor *d, int proxy_ok)
{
	d->nofwd_pending = 0;
	if (proxy_ok)
		report(d, D_WARN, "s4u2self", "fine with resource-based constrained delegation "
		    "(msDS-AllowedToActOnBehalfOfOtherIdentity on Exchange's account); classic "
		    "constrained delegation needs protocol transition: 'Use any authentication "
		    "protocol'", "%s, but S4U2Proxy accepted it (resource-based delegation)",
		    d->nofwd_detail);
	else
		report(d, D_FAIL, "s4u2self", HINT_NOT_FORWARDABLE, "%s: S4U2Proxy will be refused",
		    d->nofwd_detail);
}

/* A continuation line under the last check (config errors, like -t). */
static void
report_more(const char *line)
{
	printf("     ");
	put_safe(line);
	putchar('\n');
}

/* ---- small helpers ---------------------------------------------------------------- */

static void
krb5_text(krb5_context kc, krb5_error_code code, char *buf, size_t len)
{
	const char *m = kc != NULL ? krb5_get_error_message(kc, code) : NULL;

	snprintf(buf, len, "%s", m != NULL ? m : error_message(code));
	if (m != NULL)
		krb5_free_error_message(kc, m);
}

static void
time_text(const ASN1_TIME *t, char *buf, size_t len)
{
	struct tm tm;

	if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
		snprintf(buf, len, "?");
	else
		strftime(buf, len, "%Y-%m-%d %H:%M UTC", &tm);
}

/* Seconds from now until t (negative when past); -1 / 0 on a bad time. */
static long long
seconds_until(const ASN1_TIME *t, int *ok)
{
	int days = 0, secs = 0;

	*ok = t != NULL && ASN1_TIME_diff(&days, &secs, NULL, t) == 1;
	return *ok ? (long long)days * 86400 + secs : 0;
}

/* Every PEM certificate in path, in file order (leaf first). NULL with
 * why when the file cannot be read; an empty stack when it holds none. */
static STACK_OF(X509) *
read_certs(const char *path, char *why, size_t whylen)
{
	STACK_OF(X509) *sk = NULL, *ret = NULL;
	BIO *b = NULL;
	X509 *x;

	ERR_clear_error();
	if ((b = BIO_new_file(path, "r")) == NULL) {
		snprintf(why, whylen, "cannot read: %s", strerror(errno));
		goto cleanup;
	}
	if ((sk = sk_X509_new_null()) == NULL) {
		snprintf(why, whylen, "out of memory");
		goto cleanup;
	}
	while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
		if (!sk_X509_push(sk, x)) {
			X509_free(x);
			snprintf(why, whylen, "out of memory");
			goto cleanup;
		}
	}
	ERR_clear_error();		/* the end of the file reads as an error */
	ret = sk;
	sk = NULL;
cleanup:
	sk_X509_pop_free(sk, X509_free);
	BIO_free(b);
	return ret;
}

/* Every CRL in path, PEM (any number) or one DER. */
static STACK_OF(X509_CRL) *
read_crls(const char *path, char *why, size_t whylen)
{
	STACK_OF(X509_CRL) *sk = NULL, *ret = NULL;
	BIO *b = NULL;
	X509_CRL *c;

	ERR_clear_error();
	if ((b = BIO_new_file(path, "rb")) == NULL) {
		snprintf(why, whylen, "cannot read: %s", strerror(errno));
		goto cleanup;
	}
	if ((sk = sk_X509_CRL_new_null()) == NULL) {
		snprintf(why, whylen, "out of memory");
		goto cleanup;
	}
	while ((c = PEM_read_bio_X509_CRL(b, NULL, NULL, NULL)) != NULL) {
		if (!sk_X509_CRL_push(sk, c)) {
			X509_CRL_free(c);
			snprintf(why, whylen, "out of memory");
			goto cleanup;
		}
	}
	if (sk_X509_CRL_num(sk) == 0 && BIO_reset(b) == 0 &&
	    (c = d2i_X509_CRL_bio(b, NULL)) != NULL && !sk_X509_CRL_push(sk, c))
		X509_CRL_free(c);
	ERR_clear_error();
	ret = sk;
	sk = NULL;
cleanup:
	sk_X509_CRL_pop_free(sk, X509_CRL_free);
	BIO_free(b);
	return ret;
}

/* "127.0.0.1:443", "[::1]:443" */
static void
addr_text(const struct sockaddr *sa, socklen_t len, char *buf, size_t buflen)
{
	char host[64], port[8];	/* numeric: an IPv6 literal with a scope fits */

	if (getnameinfo(sa, len, host, sizeof(host), port, sizeof(port),
	    NI_NUMERICHOST | NI_NUMERICSERV) != 0)
		snprintf(buf, buflen, "?");
	else if (sa->sa_family == AF_INET6)
		snprintf(buf, buflen, "[%s]:%s", host, port);
	else
		snprintf(buf, buflen, "%s:%s", host, port);
}

/* Run base until *done is set by a callback. */
static void
wait_for(struct doctor *d, const int *done)
{
	while (!*done)
		if (event_base_loop(d->base, EVLOOP_ONCE) < 0)
			break;
}

/* ---- config ------------------------------------------------------------------------ */

static int
check_config(struct doctor *d)
{
	struct config_errors errs;
	struct config *cfg;

	memset(&errs, 0, sizeof(errs));
	if ((cfg = config_load(d->conf_path, &errs)) == NULL) {
		report(d, D_FAIL, "config", "fix each FILE:LINE below (eas-kcd-proxy -t -c FILE "
		    "checks again); the other checks need a configuration that loads",
		    "%s does not load: %u error%s", d->conf_path, errs.n + errs.dropped,
		    errs.n + errs.dropped == 1 ? "" : "s");
		for (unsigned i = 0; i < errs.n; i++)
			report_more(errs.msg[i]);
		if (errs.dropped)
			printf("     ... and %u more errors\n", errs.dropped);
		config_errors_clear(&errs);
		return -1;
	}
	if (cfg->warnings.n > 0) {
		report(d, D_WARN, "config", "each warning below names its fix",
		    "%s loads, with %u warning%s", d->conf_path, cfg->warnings.n,
		    cfg->warnings.n == 1 ? "" : "s");
		for (unsigned i = 0; i < cfg->warnings.n; i++)
			report_more(cfg->warnings.msg[i]);
	} else {
		report(d, D_OK, "config", NULL, "%s loads", d->conf_path);
	}
	d->cfg = cfg;
	return 0;
}

/* ---- files ------------------------------------------------------------------------- */

enum fkind { F_CERTS, F_KEY, F_CRL, F_KEYTAB, F_CA, F_TEXT, F_SECRET };

static int
no_passphrase(char *buf, int size, int rwflag, void *u)
{
	(void)buf;
	(void)size;
	(void)rwflag;
	(void)u;
	return -1;			/* the daemon cannot ask for one either */
}

static void
check_one_file(struct doctor *d, const char *label, const char *path, enum fkind kind)
{
	char why[512];
	struct stat st;
	int fd;

	if (kind == F_CA && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
		if (access(path, R_OK | X_OK) != 0)
			report(d, D_FAIL, "file", "fix the permissions", "%s %s: cannot read "
			    "the directory: %s", label, path, strerror(errno));
		else
			report(d, D_OK, "file", NULL, "%s %s: a directory of hashed CA "
			    "certificates", label, path);
		return;
	}
	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)) < 0) {
		report(d, D_FAIL, "file", "fix the path or the permissions (doctor reads as "
		    "the daemon's parent does: run it as root)", "%s %s: cannot read: %s", label,
		    path, strerror(errno));
		return;
	}
	close(fd);

	switch (kind) {
	case F_CERTS:
	case F_CA: {
		STACK_OF(X509) *sk = read_certs(path, why, sizeof(why));
		int n = sk != NULL ? sk_X509_num(sk) : -1;

		if (n < 0)
			report(d, D_FAIL, "file", NULL, "%s %s: %s", label, path, why);
		else if (n == 0)
			report(d, D_FAIL, "file", "it must hold PEM certificates (-----BEGIN "
			    "CERTIFICATE-----); convert DER with openssl x509 -inform der",
			    "%s %s: no PEM certificate in it", label, path);
		else
			report(d, D_OK, "file", NULL, "%s %s: %d certificate%s", label, path, n,
			    n == 1 ? "" : "s");
		sk_X509_pop_free(sk, X509_free);
		break;
	}
	case F_KEY: {
		BIO *b = BIO_new_file(path, "r");
		EVP_PKEY *k = NULL;

		ERR_clear_error();
		if (b != NULL)
			k = PEM_read_bio_PrivateKey(b, NULL, no_passphrase, NULL);
		if (k == NULL) {
			unsigned long e = ERR_peek_last_error();

			if (ERR_GET_REASON(e) == PEM_R_BAD_PASSWORD_READ ||
			    ERR_GET_REASON(e) == PEM_R_PROBLEMS_GETTING_PASSWORD)
				report(d, D_FAIL, "file", "store it unencrypted, mode 0600 (openssl "
				    "pkey -in KEY -out KEY.new)", "%s %s: the key is encrypted and "
				    "the daemon cannot ask for a passphrase", label, path);
			else
				report(d, D_FAIL, "file", "it must be a PEM private key (-----BEGIN "
				    "PRIVATE KEY-----)", "%s %s: no private key in it: %s", label,
				    path, log_ssl_errors(why, sizeof(why)));
		} else {
			report(d, D_OK, "file", NULL, "%s %s: %s key, %d bits", label, path,
			    EVP_PKEY_get0_type_name(k) ? EVP_PKEY_get0_type_name(k) : "private",
			    EVP_PKEY_get_bits(k));
		}
		EVP_PKEY_free(k);
		BIO_free(b);
		ERR_clear_error();
		break;
	}
	case F_CRL: {
		STACK_OF(X509_CRL) *sk = read_crls(path, why, sizeof(why));
		int n = sk != NULL ? sk_X509_CRL_num(sk) : -1;

		if (n < 0)
			report(d, D_FAIL, "file", NULL, "%s %s: %s", label, path, why);
		else if (n == 0)
			report(d, D_FAIL, "file", "it must hold CRLs, PEM (-----BEGIN X509 CRL-----) "
			    "or DER", "%s %s: no CRL in it", label, path);
		else
			report(d, D_OK, "file", NULL, "%s %s: %d CRL%s", label, path, n,
			    n == 1 ? "" : "s");
		sk_X509_CRL_pop_free(sk, X509_CRL_free);
		break;
	}
	case F_KEYTAB: {
		unsigned char magic[2] = { 0, 0 };
		FILE *f = fopen(path, "rb");
		size_t got = f != NULL ? fread(magic, 1, 2, f) : 0;

		if (f != NULL)
			fclose(f);
		if (got == 2 && magic[0] == 5 && (magic[1] == 1 || magic[1] == 2))
			report(d, D_OK, "file", NULL, "%s %s: keytab (format 0x05%02x)", label,
			    path, magic[1]);
		else
			report(d, D_FAIL, "file", "export it again (AD: ktpass; MIT: kadmin ktadd) "
			    "and check it with klist -k -e", "%s %s: not a keytab file", label,
			    path);
		break;
	}
	case F_SECRET: {
		FILE *f = fopen(path, "r");
		char line[512] = "";

		if (f != NULL && fgets(line, sizeof(line), f) != NULL)
			line[strcspn(line, "\r\n")] = '\0';
		if (line[0] == '\0')
			report(d, D_FAIL, "file", "put the password alone on the first line",
			    "%s %s: the first line is empty", label, path);
		else
			report(d, D_OK, "file", NULL, "%s %s: holds a password", label, path);
		if (f != NULL)
			fclose(f);
		break;
	}
	case F_TEXT:
		report(d, D_OK, "file", NULL, "%s %s: readable", label, path);
		break;
	}
}

static void
check_files(struct doctor *d)
{
	const struct config *c = d->cfg;

	check_one_file(d, "[tls] certificate", c->tls.certificate, F_CERTS);
	check_one_file(d, "[tls] key", c->tls.key, F_KEY);
	check_one_file(d, "[tls] client_ca", c->tls.client_ca, F_CERTS);
	for (unsigned i = 0; i < c->tls.crl.n; i++)
		check_one_file(d, "[tls] crl", c->tls.crl.v[i], F_CRL);
	check_one_file(d, "[kerberos] keytab", c->kerberos.keytab, F_KEYTAB);
	if (c->kerberos.krb5_conf != NULL)
		check_one_file(d, "[kerberos] krb5_conf", c->kerberos.krb5_conf, F_TEXT);
	if (c->backend.ca != NULL)
		check_one_file(d, "[backend] ca", c->backend.ca, F_CA);
	if (c->ldap.uri != NULL && c->ldap.ca != NULL)
		check_one_file(d, "[ldap] ca", c->ldap.ca, F_CA);
	if (c->ldap.uri != NULL && c->ldap.bind == LDAP_BIND_SIMPLE &&
	    c->ldap.bind_password_file != NULL)
		check_one_file(d, "[ldap] bind_password_file", c->ldap.bind_password_file,
		    F_SECRET);
}

/* ---- the keytab ------------------------------------------------------------------- */

static void
check_keytab(struct doctor *d)
{
	const struct config *c = d->cfg;
	struct keytab_info ki;
	char msg[1024], list[KEYTAB_MAX_KEYS * (KEYTAB_ENCTYPE_NAME + 2)] = "";
	enum keytab_verdict v;

	v = keytab_check_mode(c->kerberos.keytab, c->server.user, msg, sizeof(msg));
	if (v == KEYTAB_OK)
		report(d, D_OK, "keytab-mode", NULL, "%s: %s", c->kerberos.keytab, msg);
	else
		report(d, v == KEYTAB_WARN ? D_WARN : D_FAIL, "keytab-mode", v == KEYTAB_REFUSE ?
		    "the daemon refuses to start with it until it is fixed" : NULL, "%s", msg);

	if (keytab_inspect(c->kerberos.keytab, c->kerberos.principal, &ki, msg, sizeof(msg)) != 0) {
		report(d, D_FAIL, "keytab", "export it again (AD: ktpass; MIT: kadmin ktadd) and "
		    "check it with klist -k -e", "%s", msg);
		return;
	}
	if (ki.principal_entries == 0) {
		char hint[768];

		snprintf(hint, sizeof(hint), "set [kerberos] principal to the name in the keytab "
		    "(klist -k -e %s), or export a keytab for this principal%s%s",
		    c->kerberos.keytab, ki.others[0] ? "; the keytab holds: " : "", ki.others);
		report(d, D_FAIL, "keytab", hint, "%s holds no key for %s (%u entr%s)",
		    c->kerberos.keytab, c->kerberos.principal, ki.entries,
		    ki.entries == 1 ? "y" : "ies");
		return;
	}
	for (unsigned i = 0; i < ki.n_keys; i++) {
		if (i > 0)
			strcat(list, ", ");
		strcat(list, ki.keys[i].name);
	}
	if (ki.strong_keys == 0)
		report(d, D_WARN, "keytab", "enable AES on the proxy's account (AD: "
		    "msDS-SupportedEncryptionTypes, 'This account supports Kerberos AES 256 bit "
		    "encryption') and export the keytab again with ktpass -crypto AES256-SHA1",
		    "%s kvno %u has only weak keys: %s", c->kerberos.principal, ki.kvno, list);
	else
		report(d, D_OK, "keytab", NULL, "%s kvno %u: %s", c->kerberos.principal, ki.kvno,
		    list);
}

/* ---- the KDC: clock and TGT ---------------------------------------------------------- */

static const char HINT_UNREACH[] =
    "check the KDCs in krb5.conf [realms] (or DNS SRV _kerberos._udp/_tcp) and that this "
    "host may reach them on TCP and UDP port 88";
static const char HINT_SKEW[] =
    "synchronise this host's clock with the same NTP source as the domain controllers "
    "(chrony/systemd-timesyncd; AD: the PDC emulator)";

static void
check_kdc(struct doctor *d)
{
	const struct config *c = d->cfg;
	krb5_context kc = NULL;
	krb5_principal me = NULL;
	krb5_keytab kt = NULL;
	krb5_get_init_creds_opt *opt = NULL;
	krb5_creds creds;
	krb5_error_code code;
	struct timespec t0, t1;
	char ktname[4200], text[1024], realm[256] = "?", until[64];
	int have_creds = 0;

	memset(&creds, 0, sizeof(creds));
	if ((code = krb5_init_context(&kc)) != 0) {
		kc = NULL;
		report(d, D_FAIL, "clock", "check krb5.conf ([kerberos] krb5_conf)",
		    "cannot initialise libkrb5: %s", error_message(code));
		report(d, D_SKIP, "tgt", NULL, "not run: libkrb5 cannot start (see clock)");
		goto cleanup;
	}
	if ((code = krb5_parse_name(kc, c->kerberos.principal, &me)) != 0) {
		me = NULL;
		krb5_text(kc, code, text, sizeof(text));
		report(d, D_SKIP, "clock", NULL, "not measured: no principal to ask for");
		report(d, D_FAIL, "tgt", "write it as name@REALM", "[kerberos] principal '%s': %s",
		    c->kerberos.principal, text);
		goto cleanup;
	}
	snprintf(realm, sizeof(realm), "%.*s", (int)me->realm.length, me->realm.data);
	snprintf(ktname, sizeof(ktname), "FILE:%s", c->kerberos.keytab);
	if ((code = krb5_kt_resolve(kc, ktname, &kt)) != 0 ||
	    (code = krb5_get_init_creds_opt_alloc(kc, &opt)) != 0) {
		krb5_text(kc, code, text, sizeof(text));
		report(d, D_SKIP, "clock", NULL, "not measured: %s", text);
		report(d, D_FAIL, "tgt", NULL, "cannot use keytab %s: %s", c->kerberos.keytab, text);
		goto cleanup;
	}
	/* Forwardable and the rest come from krb5.conf [libdefaults], as for
	 * the daemon's gss_acquire_cred_from: doctor must see what kcd gets. */
	clock_gettime(CLOCK_REALTIME, &t0);
	code = krb5_get_init_creds_keytab(kc, &creds, me, kt, 0, NULL, opt);
	clock_gettime(CLOCK_REALTIME, &t1);
	if (code != 0) {
		struct s4u_class cl;

		krb5_text(kc, code, text, sizeof(text));
		s4u_classify(S4U_STEP_PROXY_CRED, 0, code, &cl);
		if (cl.cls == KCD_ERR_UNREACHABLE) {
			d->kdc_down = 1;
			report(d, D_FAIL, "clock", HINT_UNREACH, "KDC unreachable for realm %s: %s "
			    "(%s)", realm, text, cl.name);
			report(d, D_FAIL, "tgt", "see clock", "no TGT for %s: KDC unreachable",
			    c->kerberos.principal);
		} else if (code == KRB5KRB_AP_ERR_SKEW || code == KRB5_KDCREP_SKEW) {
			report(d, D_FAIL, "clock", HINT_SKEW, "the KDC of %s and this host disagree "
			    "on the time by more than the allowed skew: %s (%s)", realm, text,
			    cl.name);
			report(d, D_FAIL, "tgt", "see clock", "no TGT for %s: clock skew",
			    c->kerberos.principal);
		} else {
			report(d, D_SKIP, "clock", NULL, "not measured: the KDC refused the AS "
			    "exchange (see tgt)");
			report(d, D_FAIL, "tgt", cl.hint, "the KDC of %s refuses %s: %s (%s)", realm,
			    c->kerberos.principal, text, cl.name);
		}
		goto cleanup;
	}
	have_creds = 1;
	d->tgt_ok = 1;

	{
		/* authtime: the KDC's clock when it issued the ticket, whole seconds;
		 * the reply came between t0 and t1 on ours */
		double mid = ((double)t0.tv_sec + (double)t1.tv_sec) / 2 +
		    ((double)t0.tv_nsec + (double)t1.tv_nsec) / 2e9;
		double skew = (double)(uint32_t)creds.times.authtime - mid;
		double slack = ((double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec -
		    t0.tv_nsec) / 1e9) / 2 + 1;
		double mag = skew < 0 ? -skew : skew;
		const char *how = "(the ticket's authtime from the AS reply vs this host's clock "
		    "around the exchange)";

		if (mag - slack >= SKEW_FAIL_S)
			report(d, D_FAIL, "clock", HINT_SKEW, "this host's clock is %.0f s %s the "
			    "KDC's of %s %s: beyond the 300 s Kerberos allows", mag,
			    skew > 0 ? "behind" : "ahead of", realm, how);
		else if (mag - slack >= SKEW_WARN_S)
			report(d, D_WARN, "clock", HINT_SKEW, "this host's clock is %.0f s %s the "
			    "KDC's of %s %s; Kerberos fails at 300 s", mag,
			    skew > 0 ? "behind" : "ahead of", realm, how);
		else
			report(d, D_OK, "clock", NULL, "this host and the KDC of %s agree within "
			    "%.0f s %s", realm, mag + slack < 1 ? 1 : mag + slack, how);
	}
	{
		time_t end = (time_t)(uint32_t)creds.times.endtime;
		struct tm tm;

		gmtime_r(&end, &tm);
		strftime(until, sizeof(until), "%Y-%m-%d %H:%M UTC", &tm);
	}
	if (creds.ticket_flags & TKT_FLG_FORWARDABLE)
		report(d, D_OK, "tgt", NULL, "TGT for %s, forwardable, valid until %s",
		    c->kerberos.principal, until);
	else
		report(d, D_FAIL, "tgt", "set forwardable = true in krb5.conf [libdefaults] "
		    "([kerberos] krb5_conf); if it is set, the KDC refuses it: the proxy's account "
		    "must not be 'sensitive and cannot be delegated' (MIT: +allow_forwardable)",
		    "the TGT for %s is not forwardable (valid until %s)", c->kerberos.principal,
		    until);
cleanup:
	if (have_creds)
		krb5_free_cred_contents(kc, &creds);
	if (opt != NULL)
		krb5_get_init_creds_opt_free(kc, opt);
	if (kt != NULL)
		krb5_kt_close(kc, kt);
	if (me != NULL)
		krb5_free_principal(kc, me);
	if (kc != NULL)
		krb5_free_context(kc);
}

/* ---- the proxy's TLS certificate, the device CAs, CRLs -------------------------------- */

/* Expiry of one certificate: D_OK, D_WARN within EXPIRY_WARN_DAYS, D_FAIL
 * when expired or not yet valid; what says which one it is. */
static enum dstatus
cert_dates(X509 *x, const char *what, char *buf, size_t len)
{
	char subj[512], when[64];
	long long left, start;
	int ok1, ok2;

	tls_name_text(X509_get_subject_name(x), subj, sizeof(subj));
	left = seconds_until(X509_get0_notAfter(x), &ok1);
	start = seconds_until(X509_get0_notBefore(x), &ok2);
	if (!ok1 || !ok2) {
		snprintf(buf, len, "%s %s has an unreadable validity period", what, subj);
		return D_FAIL;
	}
	if (start > 0) {
		time_text(X509_get0_notBefore(x), when, sizeof(when));
		snprintf(buf, len, "%s %s is not valid before %s", what, subj, when);
		return D_FAIL;
	}
	time_text(X509_get0_notAfter(x), when, sizeof(when));
	if (left <= 0) {
		snprintf(buf, len, "%s %s expired on %s", what, subj, when);
		return D_FAIL;
	}
	if (left < (long long)EXPIRY_WARN_DAYS * 86400) {
		snprintf(buf, len, "%s %s expires on %s, in %lld day%s", what, subj, when,
		    left / 86400, left / 86400 == 1 ? "" : "s");
		return D_WARN;
	}
	snprintf(buf, len, "%s %s valid until %s", what, subj, when);
	return D_OK;
}

static void
check_tls_cert(struct doctor *d)
{
	const struct config *c = d->cfg;
	STACK_OF(X509) *sk = NULL, *untrusted = NULL;
	X509_STORE *store = NULL;
	X509_STORE_CTX *vctx = NULL;
	SSL_CTX *ctx;
	X509 *leaf;
	enum dstatus worst = D_OK;
	char err[1024], line[1024], first[1024] = "", anchor[512] = "", verify[600] = "";
	int from_file = 0, chain_bad = 0;

	if ((ctx = tls_front_ctx_new(c, err, sizeof(err))) == NULL) {
		report(d, D_FAIL, "tls-cert", "the workers cannot start with these files: fix "
		    "[tls] certificate, key, client_ca or crl as named", "%s", err);
		return;
	}
	SSL_CTX_free(ctx);
	if ((sk = read_certs(c->tls.certificate, err, sizeof(err))) == NULL ||
	    sk_X509_num(sk) == 0) {
		report(d, D_FAIL, "tls-cert", NULL, "[tls] certificate %s: %s", c->tls.certificate,
		    sk == NULL ? err : "no certificate");
		goto cleanup;
	}
	leaf = sk_X509_value(sk, 0);

	/* dates of the leaf and of every CA certificate sent with it */
	for (int i = 0; i < sk_X509_num(sk); i++) {
		enum dstatus st = cert_dates(sk_X509_value(sk, i), i == 0 ? "the proxy's "
		    "certificate" : "chain certificate", line, sizeof(line));

		if (i == 0 || st > worst) {
			snprintf(first, sizeof(first), "%s", line);
			if (st > worst)
				worst = st;
		}
	}

	/* the chain, as a device would build it: the file's self-signed
	 * certificates and the system store as anchors, the rest as
	 * intermediates */
	if ((store = X509_STORE_new()) == NULL || (untrusted = sk_X509_new_null()) == NULL ||
	    (vctx = X509_STORE_CTX_new()) == NULL) {
		report(d, D_FAIL, "tls-cert", NULL, "out of memory");
		goto cleanup;
	}
	(void)X509_STORE_set_default_paths(store);
	for (int i = 1; i < sk_X509_num(sk); i++) {
		X509 *x = sk_X509_value(sk, i);

		if (X509_check_issued(x, x) == X509_V_OK)
			(void)X509_STORE_add_cert(store, x);
		else
			(void)sk_X509_push(untrusted, x);
	}
	ERR_clear_error();
	if (X509_STORE_CTX_init(vctx, store, leaf, untrusted) == 1 &&
	    X509_STORE_CTX_set_purpose(vctx, X509_PURPOSE_SSL_SERVER) == 1) {
		int ok = X509_verify_cert(vctx) == 1;
		int e = X509_STORE_CTX_get_error(vctx);
		STACK_OF(X509) *chain = X509_STORE_CTX_get0_chain(vctx);

		if (ok && chain != NULL && sk_X509_num(chain) > 0) {
			X509 *top = sk_X509_value(chain, sk_X509_num(chain) - 1);

			tls_name_text(X509_get_subject_name(top), anchor, sizeof(anchor));
			for (int i = 1; i < sk_X509_num(sk); i++)
				if (X509_cmp(sk_X509_value(sk, i), top) == 0)
					from_file = 1;
			snprintf(verify, sizeof(verify), "chain of %d verifies to %s (%s)",
			    sk_X509_num(chain), anchor, from_file ? "in the file" :
			    "in the system store");
		} else if (e != X509_V_ERR_CERT_HAS_EXPIRED && e != X509_V_ERR_CERT_NOT_YET_VALID) {
			snprintf(verify, sizeof(verify), "the chain does not verify: %s (depth %d)",
			    X509_verify_cert_error_string(e), X509_STORE_CTX_get_error_depth(vctx));
			chain_bad = 1;
		}
	}
	ERR_clear_error();

	if (worst == D_FAIL)
		report(d, D_FAIL, "tls-cert", "devices refuse it: install a current certificate "
		    "(leaf first, then the intermediate CAs) and key, then SIGHUP the daemon",
		    "%s", first);
	else if (worst == D_WARN || chain_bad)
		report(d, D_WARN, "tls-cert", chain_bad && worst == D_WARN ? "renew it soon, and "
		    "put the leaf first, then the intermediate CA certificates, in [tls] "
		    "certificate" : chain_bad ? "put the leaf first, then the intermediate CA "
		    "certificates, in [tls] certificate; devices must trust its root" :
		    "renew it before then; SIGHUP loads the new one without dropping connections",
		    "%s; %s", first, verify);
	else
		report(d, D_OK, "tls-cert", NULL, "%s; key matches; %s", first, verify);
cleanup:
	X509_STORE_CTX_free(vctx);
	X509_STORE_free(store);
	sk_X509_free(untrusted);		/* borrowed from sk */
	sk_X509_pop_free(sk, X509_free);
}

static void
check_client_ca(struct doctor *d)
{
	STACK_OF(X509) *sk;
	enum dstatus worst = D_OK;
	char err[512], line[1024], first[1024] = "";
	int n;

	if ((sk = read_certs(d->cfg->tls.client_ca, err, sizeof(err))) == NULL) {
		report(d, D_FAIL, "client-ca", NULL, "[tls] client_ca %s: %s", d->cfg->tls.client_ca,
		    err);
		return;
	}
	n = sk_X509_num(sk);
	for (int i = 0; i < n; i++) {
		X509 *x = sk_X509_value(sk, i);
		enum dstatus st = cert_dates(x, "device CA", line, sizeof(line));

		if (st == D_OK && X509_check_ca(x) == 0) {
			char subj[512];

			tls_name_text(X509_get_subject_name(x), subj, sizeof(subj));
			snprintf(line, sizeof(line), "%s is not a CA certificate", subj);
			st = D_WARN;
		}
		if (i == 0 || st > worst) {
			snprintf(first, sizeof(first), "%s", line);
			if (st > worst)
				worst = st;
		}
	}
	if (n == 0)
		report(d, D_FAIL, "client-ca", "put the PEM certificates of the CAs that issue "
		    "device certificates in it", "[tls] client_ca %s holds no certificate",
		    d->cfg->tls.client_ca);
	else if (worst == D_FAIL)
		report(d, D_FAIL, "client-ca", "every device it issued is refused: renew the CA "
		    "(and the devices' certificates) and SIGHUP", "%s", first);
	else if (worst == D_WARN)
		report(d, D_WARN, "client-ca", "renew it before its devices are refused", "%s "
		    "(%d CA%s)", first, n, n == 1 ? "" : "s");
	else
		report(d, D_OK, "client-ca", NULL, "%d CA%s: %s%s", n, n == 1 ? "" : "s", first,
		    n > 1 ? ", ..." : "");
	sk_X509_pop_free(sk, X509_free);
}

static void
check_crl(struct doctor *d)
{
	const struct config *c = d->cfg;
	STACK_OF(X509) *cas = NULL;
	STACK_OF(X509_CRL) *all = NULL;
	enum dstatus worst = D_OK;
	char err[512], issuer[512], when[64], first[1024] = "", missing[1024] = "";
	int expired = 0;

	if (c->tls.crl.n == 0) {
		report(d, D_SKIP, "crl", NULL, "no [tls] crl configured: revoked device "
		    "certificates are refused only by OCSP ([tls] ocsp) or not at all");
		return;
	}
	if ((all = sk_X509_CRL_new_null()) == NULL)
		goto cleanup;
	for (unsigned f = 0; f < c->tls.crl.n; f++) {
		STACK_OF(X509_CRL) *sk = read_crls(c->tls.crl.v[f], err, sizeof(err));

		if (sk == NULL) {
			report(d, D_FAIL, "crl", NULL, "[tls] crl %s: %s", c->tls.crl.v[f], err);
			goto cleanup;
		}
		while (sk_X509_CRL_num(sk) > 0) {
			X509_CRL *x = sk_X509_CRL_shift(sk);

			if (!sk_X509_CRL_push(all, x))
				X509_CRL_free(x);
		}
		sk_X509_CRL_free(sk);
	}
	for (int i = 0; i < sk_X509_CRL_num(all); i++) {
		X509_CRL *x = sk_X509_CRL_value(all, i);
		const ASN1_TIME *next = X509_CRL_get0_nextUpdate(x);
		long long left;
		int ok;

		tls_name_text(X509_CRL_get_issuer(x), issuer, sizeof(issuer));
		if (next == NULL) {
			if (first[0] == '\0')
				snprintf(first, sizeof(first), "CRL of %s has no next update", issuer);
			continue;
		}
		left = seconds_until(next, &ok);
		time_text(next, when, sizeof(when));
		if (!ok || left <= 0) {
			if (!expired)
				snprintf(first, sizeof(first), "the CRL of %s expired on %s", issuer,
				    when);
			expired = 1;
			worst = D_FAIL;
		} else if (first[0] == '\0') {
			snprintf(first, sizeof(first), "CRL of %s, next update %s", issuer, when);
		}
	}
	/* every device CA needs a current CRL (tls.h: CRL_CHECK_ALL) */
	if ((cas = read_certs(c->tls.client_ca, err, sizeof(err))) != NULL) {
		for (int i = 0; i < sk_X509_num(cas); i++) {
			X509 *ca = sk_X509_value(cas, i);
			int found = 0;

			for (int j = 0; j < sk_X509_CRL_num(all) && !found; j++)
				found = X509_NAME_cmp(X509_CRL_get_issuer(sk_X509_CRL_value(all, j)),
				    X509_get_subject_name(ca)) == 0;
			if (!found && strlen(missing) < sizeof(missing) - 64) {
				tls_name_text(X509_get_subject_name(ca), issuer, sizeof(issuer));
				snprintf(missing + strlen(missing), sizeof(missing) - strlen(missing),
				    "%s%s", missing[0] ? "; " : "", issuer);
			}
		}
	}
	if (worst == D_FAIL)
		report(d, D_FAIL, "crl", "every device is refused while a CRL is out of date (fail "
		    "closed): publish a fresh CRL to the file and SIGHUP the daemon", "%s", first);
	else if (missing[0])
		report(d, D_WARN, "crl", "with [tls] crl set, every CA in a device's chain needs a "
		    "current CRL: add the CRL of each CA named, or devices under it are refused",
		    "no CRL from %s", missing);
	else
		report(d, D_OK, "crl", NULL, "%d CRL%s: %s", sk_X509_CRL_num(all),
		    sk_X509_CRL_num(all) == 1 ? "" : "s", first);
cleanup:
	if (all == NULL)
		report(d, D_FAIL, "crl", NULL, "out of memory");
	sk_X509_pop_free(cas, X509_free);
	sk_X509_CRL_pop_free(all, X509_CRL_free);
}

/* ---- Exchange: connecting ------------------------------------------------------------- */

/* One connection to a backend server: fd, and ssl when [backend] tls. */
struct dconn {
	int fd;
	SSL *ssl;
	char addr[96];			/* "127.0.0.1:443", "[::1]:443" */
};

static void
dconn_close(struct dconn *cn)
{
	if (cn->ssl != NULL) {
		(void)SSL_shutdown(cn->ssl);
		SSL_free(cn->ssl);
	}
	if (cn->fd >= 0)
		close(cn->fd);
	cn->ssl = NULL;
	cn->fd = -1;
}

static void
set_timeouts(int fd, uint64_t ms)
{
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };

	(void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* TCP connect to sa within ms; a blocking socket with ms I/O timeouts,
 * or -1 with why. */
static int
tcp_connect(const struct sockaddr *sa, socklen_t len, uint64_t ms, char *why, size_t whylen)
{
	struct pollfd pfd;
	int fd, e = 0, r;
	socklen_t elen = sizeof(e);

	if ((fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0) {
		snprintf(why, whylen, "socket: %s", strerror(errno));
		return -1;
	}
	if (connect(fd, sa, len) != 0 && errno != EINPROGRESS) {
		snprintf(why, whylen, "%s", strerror(errno));
		close(fd);
		return -1;
	}
	pfd.fd = fd;
	pfd.events = POLLOUT;
	while ((r = poll(&pfd, 1, (int)(ms > 600000 ? 600000 : ms))) < 0 && errno == EINTR)
		;
	if (r == 0) {
		snprintf(why, whylen, "no answer within [backend] connect_timeout (%llu ms)",
		    (unsigned long long)ms);
		close(fd);
		return -1;
	}
	if (r < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &elen) != 0 || e != 0) {
		snprintf(why, whylen, "%s", strerror(r < 0 ? errno : e ? e : errno));
		close(fd);
		return -1;
	}
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0) {
		snprintf(why, whylen, "fcntl: %s", strerror(errno));
		close(fd);
		return -1;
	}
	set_timeouts(fd, ms);
	return fd;
}

/* Which hint fits a failed backend connection. */
enum bfail { BF_RESOLVE, BF_CONNECT, BF_VERIFY_CA, BF_VERIFY_NAME, BF_VERIFY_TIME,
	BF_VERIFY_OTHER, BF_TLS };

static const char *
bfail_hint(const struct config *c, enum bfail f)
{
	switch (f) {
	case BF_RESOLVE:
		return "fix name resolution on this host or set [backend] connect_to to "
		    "Exchange's address";
	case BF_CONNECT:
		return "is Exchange (or its load balancer) listening there, and may this host "
		    "reach it through the firewall? check [backend] servers and connect_to";
	case BF_VERIFY_CA:
		return c->backend.ca != NULL ? "set [backend] ca to the CA certificates (root and "
		    "intermediates) that issued Exchange's certificate" : "[backend] ca is empty, "
		    "so the system store is used: set [backend] ca to the CA certificates that "
		    "issued Exchange's certificate";
	case BF_VERIFY_NAME:
		return "name the server in [backend] servers as its certificate does (a DNS name "
		    "of its subjectAltName) and put the address in [backend] connect_to";
	case BF_VERIFY_TIME:
		return "renew Exchange's certificate (Get-ExchangeCertificate, "
		    "Enable-ExchangeCertificate -Services IIS) or fix this host's clock";
	case BF_VERIFY_OTHER:
		return "see the verification error; [backend] ca must hold the CAs that issued "
		    "Exchange's certificate";
	case BF_TLS:
		return "is it an HTTPS port? Exchange must offer TLS 1.2 or newer (or set "
		    "[backend] tls = off for a plain-HTTP lab backend)";
	}
	return NULL;
}

/* Dial server i like backend.c: connect_to or the name's addresses, then
 * TLS verified against [backend] ca and the server's name. 0 with *out,
 * or -1 with why and *fail. */
static int
dial(struct doctor *d, SSL_CTX *ctx, unsigned i, struct dconn *out, char *why, size_t whylen,
    enum bfail *fail)
{
	const struct config *c = d->cfg;
	const struct config_addr *srv = &c->backend.servers[i];
	struct addrinfo hints, *res = NULL, *ai;
	struct dconn cn = { -1, NULL, "" };
	char port[8], ebuf[512];
	int rc = -1, r;

	*fail = BF_CONNECT;
	if (c->backend.has_connect_to && c->backend.connect_to.is_numeric) {
		const struct config_addr *a = &c->backend.connect_to;

		addr_text((const struct sockaddr *)&a->ss, a->sslen, cn.addr, sizeof(cn.addr));
		if ((cn.fd = tcp_connect((const struct sockaddr *)&a->ss, a->sslen,
		    c->backend.connect_timeout, ebuf, sizeof(ebuf))) < 0) {
			snprintf(why, whylen, "connect %s: %s", cn.addr, ebuf);
			goto cleanup;
		}
	} else {
		const char *host = c->backend.has_connect_to ? c->backend.connect_to.host : srv->host;

		snprintf(port, sizeof(port), "%u", c->backend.has_connect_to ?
		    c->backend.connect_to.port : srv->port);
		memset(&hints, 0, sizeof(hints));
		hints.ai_socktype = SOCK_STREAM;
		if ((r = getaddrinfo(host, port, &hints, &res)) != 0) {
			*fail = BF_RESOLVE;
			snprintf(why, whylen, "cannot resolve %s: %s", host, gai_strerror(r));
			goto cleanup;
		}
		snprintf(why, whylen, "%s has no address", host);
		for (ai = res; ai != NULL; ai = ai->ai_next) {
			addr_text(ai->ai_addr, ai->ai_addrlen, cn.addr, sizeof(cn.addr));
			if ((cn.fd = tcp_connect(ai->ai_addr, ai->ai_addrlen,
			    c->backend.connect_timeout, ebuf, sizeof(ebuf))) >= 0)
				break;
			snprintf(why, whylen, "connect %s: %s", cn.addr, ebuf);
		}
		if (cn.fd < 0)
			goto cleanup;
	}
	if (ctx != NULL) {
		long vr;

		ERR_clear_error();
		if ((cn.ssl = tls_backend_ssl_new(ctx, srv->host)) == NULL ||
		    SSL_set_fd(cn.ssl, cn.fd) != 1) {
			*fail = BF_TLS;
			snprintf(why, whylen, "tls %s: %s", cn.addr, log_ssl_errors(ebuf, sizeof(ebuf)));
			goto cleanup;
		}
		if (SSL_connect(cn.ssl) != 1) {
			vr = SSL_get_verify_result(cn.ssl);
			if (vr != X509_V_OK) {
				*fail = vr == X509_V_ERR_HOSTNAME_MISMATCH || vr == X509_V_ERR_IP_ADDRESS_MISMATCH ?
				    BF_VERIFY_NAME : vr == X509_V_ERR_CERT_HAS_EXPIRED ||
				    vr == X509_V_ERR_CERT_NOT_YET_VALID ? BF_VERIFY_TIME :
				    vr == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY ||
				    vr == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT ||
				    vr == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN ||
				    vr == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT ||
				    vr == X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE ||
				    vr == X509_V_ERR_CERT_SIGNATURE_FAILURE ? BF_VERIFY_CA :
				    BF_VERIFY_OTHER;
				snprintf(why, whylen, "tls %s: Exchange's certificate does not verify "
				    "for %s: %s", cn.addr, srv->host, X509_verify_cert_error_string(vr));
				ERR_clear_error();
			} else {
				*fail = BF_TLS;
				snprintf(why, whylen, "tls %s: handshake failed: %s", cn.addr,
				    log_ssl_errors(ebuf, sizeof(ebuf)));
			}
			goto cleanup;
		}
	}
	*out = cn;
	cn.fd = -1;
	cn.ssl = NULL;
	rc = 0;
cleanup:
	dconn_close(&cn);
	if (res != NULL)
		freeaddrinfo(res);
	return rc;
}

static void
check_backend(struct doctor *d)
{
	const struct config *c = d->cfg;
	SSL_CTX *ctx = NULL;
	char err[1024];

	if (c->backend.tls && (ctx = tls_backend_ctx_new(c, err, sizeof(err))) == NULL) {
		report(d, D_FAIL, "backend", "fix [backend] ca", "%s", err);
		return;
	}
	for (unsigned i = 0; i < c->backend.n_servers; i++) {
		const struct config_addr *srv = &c->backend.servers[i];
		struct dconn cn = { -1, NULL, "" };
		enum bfail fail;
		X509 *peer = NULL;
		unsigned char cb[EVP_MAX_MD_SIZE];
		unsigned cb_len = 0;
		char subj[512], line[1024], cbtext[160];
		enum dstatus st;

		if (dial(d, ctx, i, &cn, err, sizeof(err), &fail) != 0) {
			report(d, D_FAIL, "backend", bfail_hint(c, fail), "%s:%u: %s", srv->host,
			    srv->port, err);
			continue;
		}
		if (ctx == NULL) {
			report(d, D_WARN, "backend", "use TLS to Exchange outside a lab",
			    "%s:%u (%s): TCP connect OK; [backend] tls = off: tokens and mail cross "
			    "the network in clear", srv->host, srv->port, cn.addr);
			if (!d->backend_ok) {
				d->backend_ok = 1;
				d->backend_index = i;
			}
			dconn_close(&cn);
			continue;
		}
		peer = SSL_get1_peer_certificate(cn.ssl);
		if (peer == NULL) {
			report(d, D_FAIL, "backend", NULL, "%s:%u (%s): no server certificate",
			    srv->host, srv->port, cn.addr);
			dconn_close(&cn);
			continue;
		}
		tls_name_text(X509_get_subject_name(peer), subj, sizeof(subj));
		st = cert_dates(peer, "certificate", line, sizeof(line));
		ERR_clear_error();
		if (tls_server_end_point(peer, cb, &cb_len) == 0) {
			snprintf(cbtext, sizeof(cbtext), "tls-server-end-point: %u-byte hash",
			    cb_len);
		} else {
			cb_len = 0;
			ERR_clear_error();
			snprintf(cbtext, sizeof(cbtext), "no tls-server-end-point: the certificate's "
			    "signature algorithm has no single hash (RFC 5929)");
			if (c->kerberos.channel_bindings == TRI_ON)
				st = D_FAIL;
			else if (st < D_WARN)
				st = D_WARN;
		}
		if (st == D_FAIL)
			report(d, D_FAIL, "backend", cb_len == 0 && c->kerberos.channel_bindings ==
			    TRI_ON ? "set [kerberos] channel_bindings = auto and turn Extended "
			    "Protection off, or give Exchange an RSA/ECDSA certificate" :
			    bfail_hint(c, BF_VERIFY_TIME), "%s:%u (%s): %s; %s", srv->host, srv->port,
			    cn.addr, line, cbtext);
		else if (st == D_WARN)
			report(d, D_WARN, "backend", cb_len == 0 ? "Exchange's Extended Protection "
			    "needs channel bindings: give Exchange an RSA or ECDSA certificate" :
			    "renew Exchange's certificate before it expires", "%s:%u (%s): %s, %s; %s",
			    srv->host, srv->port, cn.addr, SSL_get_version(cn.ssl), line, cbtext);
		else
			report(d, D_OK, "backend", NULL, "%s:%u (%s): %s, %s, verified for %s; %s",
			    srv->host, srv->port, cn.addr, SSL_get_version(cn.ssl), line, srv->host,
			    cbtext);
		if (st != D_FAIL && !d->backend_ok) {
			d->backend_ok = 1;
			d->backend_index = i;
			memcpy(d->cb, cb, cb_len);
			d->cb_len = cb_len;
		}
		X509_free(peer);
		dconn_close(&cn);
	}
	SSL_CTX_free(ctx);
}

/* ---- the user --------------------------------------------------------------------- */

static void
check_user(struct doctor *d)
{
	struct identity_params ip;
	struct identity_result *ir;
	char upn[IDENTITY_VALUE_MAX + IDENTITY_REALM_MAX + 2];

	if (d->user_arg == NULL) {
		report(d, D_SKIP, "user", NULL, "no --user: run doctor -c FILE --user "
		    "alice@example.com to test S4U2Self, S4U2Proxy and Exchange for that user");
		return;
	}
	if ((ir = calloc(1, sizeof(*ir))) == NULL) {
		report(d, D_FAIL, "user", NULL, "out of memory");
		return;
	}
	/* a bare name is taken as name@[identity] realm */
	snprintf(upn, sizeof(upn), strchr(d->user_arg, '@') ? "%s" : "%s@%s", d->user_arg,
	    d->cfg->identity.realm);
	(void)identity_params_from_config(d->cfg, &ip);
	if (identity_map_name((const unsigned char *)upn, strlen(upn), 0, &ip, ir) != 0) {
		report(d, D_FAIL, "user", "devices with this UPN get 403 identity_unmapped: fix "
		    "[identity] realm / suffix_realms / allowed_suffixes, or the UPN",
		    "%s does not map to a principal: %s (%s)", upn, ir->message,
		    identity_detail_token(ir->detail));
	} else {
		snprintf(d->principal, sizeof(d->principal), "%s", ir->principal);
		report(d, D_OK, "user", NULL, "%s maps to %s", upn, ir->principal);
	}
	free(ir);
}

/* ---- the directory ----------------------------------------------------------------- */

struct dir_wait {
	int done;
	int ok, cancelled, down;
	enum kcd_err_class cls;
	char principal[KCD_PRINCIPAL_MAX];
	char name[KCD_NAME_MAX];
	char text[KCD_TEXT_MAX];
};

static void
on_directory(const struct directory_result *res, void *arg)
{
	struct dir_wait *w = arg;

	w->ok = res->ok;
	w->cancelled = res->cancelled;
	w->down = res->ok && (res->flags & KCD_ID_DIRECTORY_DOWN);
	w->cls = res->cls;
	snprintf(w->principal, sizeof(w->principal), "%s", res->principal ? res->principal : "");
	snprintf(w->name, sizeof(w->name), "%s", res->name ? res->name : "");
	snprintf(w->text, sizeof(w->text), "%s", res->text ? res->text : "");
	w->done = 1;
}

/* A throwaway self-signed certificate (DER) for a source = ldap probe:
 * no account names it, so "not_found" proves bind and search work. */
static int
probe_cert(unsigned char **der, int *len)
{
	EVP_PKEY *k = EVP_EC_gen("P-256");
	X509 *x = X509_new();
	int rc = -1;

	*der = NULL;
	if (k == NULL || x == NULL ||
	    ASN1_INTEGER_set(X509_get_serialNumber(x), (long)time(NULL)) != 1 ||
	    X509_gmtime_adj(X509_getm_notBefore(x), -60) == NULL ||
	    X509_gmtime_adj(X509_getm_notAfter(x), 3600) == NULL ||
	    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
	    (const unsigned char *)PROBE_LOCAL, -1, -1, 0) != 1 ||
	    X509_set_issuer_name(x, X509_get_subject_name(x)) != 1 ||
	    X509_set_pubkey(x, k) != 1 || X509_sign(x, k, EVP_sha256()) <= 0 ||
	    (*len = i2d_X509(x, der)) <= 0)
		goto cleanup;
	rc = 0;
cleanup:
	X509_free(x);
	EVP_PKEY_free(k);
	ERR_clear_error();
	return rc;
}

static const char HINT_LDAP[] =
    "check [ldap] uri and ca, the bind (gssapi: the proxy's keytab and an ldap/HOST SPN on "
    "the DC; simple: bind_dn, bind_password_file, TLS) and that this host may reach the "
    "directory (389/636)";

static void
check_ldap(struct doctor *d)
{
	const struct config *c = d->cfg;
	struct directory *dir = NULL;
	struct dir_wait w;
	unsigned char *der = NULL;
	int der_len = 0, probe = d->principal[0] == '\0' || c->identity.source == ID_SRC_LDAP;
	char err[512], who[KCD_PRINCIPAL_MAX];

	if (c->ldap.uri == NULL) {
		report(d, D_SKIP, "ldap", NULL, "[ldap] uri not set: no directory checks");
		return;
	}
	memset(&w, 0, sizeof(w));
	if ((dir = directory_new(d->base, c, err, sizeof(err))) == NULL) {
		report(d, D_FAIL, "ldap", HINT_LDAP, "cannot set up the directory checks: %s", err);
		return;
	}
	if (c->identity.source == ID_SRC_LDAP) {
		if (probe_cert(&der, &der_len) != 0) {
			report(d, D_FAIL, "ldap", NULL, "cannot make a probe certificate");
			goto cleanup;
		}
		snprintf(who, sizeof(who), "%s", "");
	} else if (probe) {
		snprintf(who, sizeof(who), "%s@%s", PROBE_LOCAL, c->identity.realm);
	} else {
		snprintf(who, sizeof(who), "%s", d->principal);
	}
	if (directory_identify(dir, who, der, der_len > 0 ? (size_t)der_len : 0, on_directory,
	    &w, err, sizeof(err)) != 0) {
		report(d, D_FAIL, "ldap", NULL, "cannot look up %s: %s", who[0] ? who : "the probe",
		    err);
		goto cleanup;
	}
	wait_for(d, &w.done);
	if (w.cancelled) {
		report(d, D_FAIL, "ldap", NULL, "the lookup was cancelled");
	} else if (w.down || (!w.ok && w.cls == KCD_ERR_LDAP_UNREACHABLE)) {
		report(d, D_FAIL, "ldap", HINT_LDAP, "cannot use the directory %s: %s", c->ldap.uri,
		    w.text);
	} else if (probe) {
		report(d, D_OK, "ldap", NULL, "bound to %s and searched %s (a probe %s found %s)",
		    c->ldap.uri, c->ldap.base_dn, c->identity.source == ID_SRC_LDAP ?
		    "certificate" : "name", w.ok ? "an account" : w.name);
	} else if (w.ok) {
		if (strcmp(w.principal, d->principal) != 0) {
			report(d, D_OK, "ldap", NULL, "bound to %s; the directory allows %s, as %s "
			    "(its logon name: Kerberos uses it)", c->ldap.uri, d->principal,
			    w.principal);
			snprintf(d->principal, sizeof(d->principal), "%s", w.principal);
		} else {
			report(d, D_OK, "ldap", NULL, "bound to %s; the directory allows %s",
			    c->ldap.uri, d->principal);
		}
	} else if (strcmp(w.name, "strong_mapping") == 0 || strcmp(w.name, "sid_mismatch") == 0 ||
	    strcmp(w.name, "no_certificate") == 0) {
		report(d, D_OK, "ldap", NULL, "bound to %s and found %s; the certificate binding "
		    "(strong_mapping) needs a device certificate, which doctor does not have",
		    c->ldap.uri, d->principal);
	} else {
		char hint[128];

		snprintf(hint, sizeof(hint), "a device of this user gets 403 ldap_%s", w.name);
		report(d, D_FAIL, "ldap", hint, "the directory refuses %s: %s (%s)", d->principal,
		    w.name, w.text);
		d->user_refused = 1;
	}
cleanup:
	directory_free(dir);
	OPENSSL_free(der);
}

/* ---- S4U2Self (raw GSSAPI; s4u_evidence_forwardable reads the ticket) -------------- */

/* What a user refusal means, for the detail. */
static const char *
user_error_meaning(const char *name)
{
	static const struct {
		const char *name, *meaning;
	} m[] = {
		{ "CLIENT_REVOKED", "the account is disabled or locked out" },
		{ "NAME_EXP", "the account has expired" },
		{ "KEY_EXP", "the account's password has expired" },
		{ "CLIENT_NOTYET", "the account is not valid yet" },
		{ "C_PRINCIPAL_UNKNOWN", "the KDC knows no such user" },
		{ "NOT_DELEGABLE", "the account is 'sensitive and cannot be delegated' (or in "
		  "Protected Users)" },
	};

	for (size_t i = 0; i < sizeof(m) / sizeof(m[0]); i++)
		if (strcmp(m[i].name, name) == 0)
			return m[i].meaning;
	return "the KDC refuses this user";
}

static void
check_s4u2self(struct doctor *d)
{
	const struct config *c = d->cfg;
	gss_OID_desc mech = *(const gss_OID_desc *)gss_mech_krb5;
	gss_OID_set_desc mechs = { 1, &mech };
	gss_key_value_element_desc el[2];
	gss_key_value_set_desc store = { 2, el };
	gss_buffer_desc nb;
	gss_name_t me = GSS_C_NO_NAME, user = GSS_C_NO_NAME;
	gss_cred_id_t proxy = GSS_C_NO_CREDENTIAL, imp = GSS_C_NO_CREDENTIAL;
	OM_uint32 major, minor;
	char ccname[64], text[1024], server[512] = "the proxy";
	int fwd;

	if (d->principal[0] == '\0') {
		report(d, D_SKIP, "s4u2self", NULL, "needs --user");
		return;
	}
	if (!d->tgt_ok) {
		report(d, D_SKIP, "s4u2self", NULL, "not run: the proxy has no TGT (see tgt)");
		return;
	}
	if (d->user_refused) {
		report(d, D_SKIP, "s4u2self", NULL, "not run: the directory refuses %s (see ldap)",
		    d->principal);
		return;
	}
	snprintf(ccname, sizeof(ccname), "MEMORY:eas-kcd-proxy-doctor-%ld", (long)getpid());
	el[0].key = "client_keytab";
	el[0].value = c->kerberos.keytab;
	el[1].key = "ccache";
	el[1].value = ccname;
	nb.value = (void *)c->kerberos.principal;
	nb.length = strlen(c->kerberos.principal);
	major = gss_import_name(&minor, &nb, GSS_KRB5_NT_PRINCIPAL_NAME, &me);
	if (!GSS_ERROR(major))
		major = gss_acquire_cred_from(&minor, me, GSS_C_INDEFINITE, &mechs, GSS_C_INITIATE,
		    &store, &proxy, NULL, NULL);
	if (GSS_ERROR(major)) {
		report(d, D_FAIL, "s4u2self", "see tgt", "cannot acquire the proxy's credential "
		    "from the keytab: %s", log_gss_error(major, minor, &mech, text, sizeof(text)));
		goto cleanup;
	}
	nb.value = d->principal;
	nb.length = strlen(d->principal);
	major = gss_import_name(&minor, &nb, GSS_KRB5_NT_PRINCIPAL_NAME, &user);
	if (!GSS_ERROR(major))
		major = gss_acquire_cred_impersonate_name(&minor, proxy, user, GSS_C_INDEFINITE,
		    &mechs, GSS_C_INITIATE, &imp, NULL, NULL);
	if (GSS_ERROR(major)) {
		struct s4u_class cl;
		char hint[192];

		log_gss_error(major, minor, &mech, text, sizeof(text));
		s4u_classify(S4U_STEP_S4U2SELF, major, (long)(int32_t)minor, &cl);
		if (cl.cls == KCD_ERR_USER) {
			snprintf(hint, sizeof(hint), "a device of this user gets 403 kdc_%s: fix the "
			    "account or test with another --user", cl.name);
			report(d, D_FAIL, "s4u2self", hint, "the KDC refuses user %s: %s, %s (%s)",
			    d->principal, cl.name, user_error_meaning(cl.name), text);
			d->user_refused = 1;
		} else if (cl.cls == KCD_ERR_UNREACHABLE) {
			report(d, D_FAIL, "s4u2self", HINT_UNREACH, "KDC unreachable: %s (%s)", text,
			    cl.name);
		} else {
			report(d, D_FAIL, "s4u2self", cl.hint != NULL ? cl.hint : "S4U2Self needs a "
			    "servicePrincipalName on the proxy's account (AD: setspn -S HTTP/host "
			    "account) and a KDC that allows protocol transition",
			    "S4U2Self for %s refused: %s (%s)", d->principal, cl.name, text);
		}
		goto cleanup;
	}
	fwd = s4u_evidence_forwardable(imp, d->principal, server, sizeof(server));
	if (fwd == 1)
		report(d, D_OK, "s4u2self", NULL, "ticket for %s to %s, forwardable (protocol "
		    "transition allowed)", d->principal, server);
	else if (fwd == 0) {
		/* reported with the S4U2Proxy outcome (emit_nofwd) */
		d->nofwd_pending = 1;
		snprintf(d->nofwd_detail, sizeof(d->nofwd_detail), "S4U2Self ticket for %s to %s "
		    "is not forwardable", d->principal, server);
	}
	else
		report(d, D_WARN, "s4u2self", "see s4u2proxy", "got a ticket for %s, but could not "
		    "read whether it is forwardable", d->principal);
cleanup:
	if (imp != GSS_C_NO_CREDENTIAL)
		gss_release_cred(&minor, &imp);
	if (proxy != GSS_C_NO_CREDENTIAL)
		gss_release_cred(&minor, &proxy);
	if (user != GSS_C_NO_NAME)
		gss_release_name(&minor, &user);
	if (me != GSS_C_NO_NAME)
		gss_release_name(&minor, &me);
	s4u_ccache_destroy(ccname);
}

/* ---- S4U2Proxy through the daemon's own Kerberos core ------------------------------- */

struct token_wait {
	int done, ok;
	enum kcd_err_class cls;
	char name[KCD_NAME_MAX];
	char text[KCD_TEXT_MAX];
	char *token;			/* owned until handed to the doctor */
	uint32_t ctx_id;
};

static void
on_token(const struct s4u_result *res, void *arg)
{
	struct token_wait *w = arg;

	w->ok = res->ok;
	w->cls = res->cls;
	snprintf(w->name, sizeof(w->name), "%s", res->name ? res->name : "");
	snprintf(w->text, sizeof(w->text), "%s", res->text ? res->text : "");
	if (res->ok) {
		w->token = strdup(res->token);
		w->ctx_id = res->ctx_id;
	}
	w->done = 1;
}

static void
check_s4u2proxy(struct doctor *d)
{
	const struct config *c = d->cfg;
	struct s4u_params p;
	struct s4u_error se;
	struct token_wait w;
	const unsigned char *cb = NULL;
	size_t cb_len = 0;
	char err[512];
	const char *cbnote;

	if (d->principal[0] == '\0') {
		report(d, D_SKIP, "s4u2proxy", NULL, "needs --user");
		return;
	}
	if (!d->tgt_ok || d->user_refused) {
		report(d, D_SKIP, "s4u2proxy", NULL, "not run: %s", !d->tgt_ok ? "the proxy has "
		    "no TGT (see tgt)" : "the user is refused (see above)");
		return;
	}
	if (c->kerberos.channel_bindings != TRI_OFF && c->backend.tls && d->backend_ok &&
	    d->cb_len > 0) {
		cb = d->cb;
		cb_len = d->cb_len;
		cbnote = "with channel bindings (tls-server-end-point of Exchange's certificate)";
	} else if (c->kerberos.channel_bindings == TRI_OFF || !c->backend.tls) {
		cbnote = "without channel bindings ([kerberos] channel_bindings = off or [backend] "
		    "tls = off)";
	} else {
		cbnote = "without channel bindings (Exchange's certificate was not read: see "
		    "backend)";
	}
	memset(&p, 0, sizeof(p));
	p.keytab = c->kerberos.keytab;
	p.principal = c->kerberos.principal;
	p.credential_ttl_ms = c->kerberos.credential_ttl;
	p.negative_ttl_ms = 0;
	p.kdc_timeout_ms = c->kerberos.kdc_timeout;
	p.kdc_concurrency = 1;
	p.max_entries = 4;
	p.ctx_ttl_ms = 600000;
	p.max_contexts = 4;
	if ((d->s4u = s4u_new(d->base, &p, err, sizeof(err))) == NULL) {
		report(d, D_FAIL, "s4u2proxy", NULL, "cannot start the Kerberos core: %s", err);
		return;
	}
	memset(&w, 0, sizeof(w));
	if (s4u_token_request(d->s4u, d->principal, c->backend.spn, cb, cb_len, KCD_F_MUTUAL,
	    on_token, &w, &se) != 0) {
		report(d, D_FAIL, "s4u2proxy", NULL, "%s: %s", se.name, se.text);
		return;
	}
	wait_for(d, &w.done);
	if (w.ok && w.token == NULL) {
		report(d, D_FAIL, "s4u2proxy", NULL, "out of memory");
		s4u_ctx_release(d->s4u, w.ctx_id);
		return;
	}
	if (w.ok) {
		d->token = w.token;
		d->ctx_id = w.ctx_id;
		report(d, D_OK, "s4u2proxy", NULL, "service ticket for %s to %s, %s", d->principal,
		    c->backend.spn, cbnote);
		return;
	}
	if (w.cls == KCD_ERR_USER) {
		char hint[192];

		snprintf(hint, sizeof(hint), "a device of this user gets 403 kdc_%s", w.name);
		report(d, D_FAIL, "s4u2proxy", hint, "the KDC refuses user %s: %s, %s (%s)",
		    d->principal, w.name, user_error_meaning(w.name), w.text);
	} else if (w.cls == KCD_ERR_UNREACHABLE) {
		report(d, D_FAIL, "s4u2proxy", HINT_UNREACH, "KDC unreachable: %s: %s", w.name,
		    w.text);
	} else {
		/* s4u.c's text already ends with its hint for proxy errors */
		report(d, D_FAIL, "s4u2proxy", strstr(w.text, "hint:") ? NULL : "check the proxy "
		    "account's delegation settings (msDS-AllowedToDelegateTo must list the SPN)",
		    "S4U2Proxy for %s to %s refused: %s: %s", d->principal, c->backend.spn, w.name,
		    w.text);
	}
}

/* ---- Exchange accepts the ticket ---------------------------------------------------- */

static int
conn_write(struct dconn *cn, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = cn->ssl != NULL ? SSL_write(cn->ssl, buf, (int)len) :
		    write(cn->fd, buf, len);

		if (n <= 0)
			return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Read the response head (through the blank line) into buf; 0 or -1. */
static int
read_head(struct dconn *cn, char *buf, size_t len)
{
	size_t have = 0;

	while (have + 1 < len) {
		ssize_t n = cn->ssl != NULL ? SSL_read(cn->ssl, buf + have, (int)(len - 1 - have)) :
		    read(cn->fd, buf + have, len - 1 - have);

		if (n <= 0)
			return -1;
		have += (size_t)n;
		buf[have] = '\0';
		if (strstr(buf, "\r\n\r\n") != NULL)
			return 0;
	}
	return -1;
}

/* The value of header name in head (first one), copied to out; 1 or 0. */
static int
header_value(const char *head, const char *name, const char *prefix, char *out, size_t len)
{
	size_t nl = strlen(name);

	for (const char *p = strstr(head, "\r\n"); p != NULL && p[2] != '\r';
	    p = strstr(p + 2, "\r\n")) {
		const char *h = p + 2, *v, *e;

		if (strncasecmp(h, name, nl) != 0 || h[nl] != ':')
			continue;
		for (v = h + nl + 1; *v == ' ' || *v == '\t'; v++)
			;
		if (prefix != NULL) {
			if (strncasecmp(v, prefix, strlen(prefix)) != 0)
				continue;
			v += strlen(prefix);
		}
		e = strstr(v, "\r\n");
		snprintf(out, len, "%.*s", (int)(e != NULL ? e - v : (ptrdiff_t)strlen(v)), v);
		return 1;
	}
	return 0;
}

static const char HINT_EXCHANGE_401[] =
    "Exchange refused the ticket: the SPN ([backend] spn) must be registered on the account "
    "whose key Exchange uses (with a load balancer: the Alternate Service Account, "
    "Set-ClientAccessService -AlternateServiceAccountCredential), the "
    "Microsoft-Server-ActiveSync vdir must have Windows Authentication (Negotiate) on, and "
    "with Extended Protection on, [kerberos] channel_bindings must not be off";

static void
check_exchange(struct doctor *d)
{
	const struct config *c = d->cfg;
	const struct config_addr *srv;
	struct dconn cn = { -1, NULL, "" };
	SSL_CTX *ctx = NULL;
	enum bfail fail;
	char err[1024], head[HTTP_HEAD_MAX], mutual[8192], versions[256] = "", *req = NULL;
	const char *path = c->server.paths.n > 0 ? c->server.paths.v[0] : "/Microsoft-Server-ActiveSync";
	int status = 0, kept = d->token != NULL;

	if (d->principal[0] == '\0') {
		report(d, D_SKIP, "exchange", NULL, "needs --user");
		return;
	}
	if (d->token == NULL || !d->backend_ok) {
		report(d, D_SKIP, "exchange", NULL, "not run: %s", d->token == NULL ? "no service "
		    "ticket (see s4u2proxy)" : "no backend server answered (see backend)");
		goto cleanup;
	}
	srv = &c->backend.servers[d->backend_index];
	if (c->backend.tls && (ctx = tls_backend_ctx_new(c, err, sizeof(err))) == NULL) {
		report(d, D_FAIL, "exchange", NULL, "%s", err);
		goto cleanup;
	}
	if (dial(d, ctx, d->backend_index, &cn, err, sizeof(err), &fail) != 0) {
		report(d, D_FAIL, "exchange", bfail_hint(c, fail), "%s", err);
		goto cleanup;
	}
	set_timeouts(cn.fd, HTTP_TIMEOUT_MS);
	if (asprintf(&req, "OPTIONS %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: eas-kcd-proxy-doctor/%s"
	    "\r\nAuthorization: Negotiate %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
	    path, c->backend.host_header, EKP_VERSION, d->token) < 0) {
		req = NULL;
		report(d, D_FAIL, "exchange", NULL, "out of memory");
		goto cleanup;
	}
	if (conn_write(&cn, req, strlen(req)) != 0 || read_head(&cn, head, sizeof(head)) != 0) {
		report(d, D_FAIL, "exchange", "is it Exchange (IIS) on that port?",
		    "OPTIONS %s to %s (%s): no HTTP answer", path, srv->host, cn.addr);
		goto cleanup;
	}
	if (sscanf(head, "HTTP/1.%*[01] %d", &status) != 1 || status < 100 || status > 999) {
		report(d, D_FAIL, "exchange", NULL, "OPTIONS %s to %s: not an HTTP answer", path,
		    srv->host);
		goto cleanup;
	}
	(void)header_value(head, "MS-ASProtocolVersions", NULL, versions, sizeof(versions));
	if (status == 401) {
		report(d, D_FAIL, "exchange", HINT_EXCHANGE_401, "OPTIONS %s as %s: 401 from %s",
		    path, d->principal, srv->host);
		goto cleanup;
	}
	if (status >= 500) {
		report(d, D_FAIL, "exchange", "see Exchange's (IIS) logs for the request",
		    "OPTIONS %s as %s: %d from %s", path, d->principal, status, srv->host);
		goto cleanup;
	}
	if (header_value(head, "WWW-Authenticate", "Negotiate ", mutual, sizeof(mutual))) {
		struct s4u_error se;

		kept = 0;		/* s4u_verify_mutual releases the context */
		if (s4u_verify_mutual(d->s4u, d->ctx_id, mutual, &se) != 0) {
			report(d, D_FAIL, "exchange", "the answer is not from the server the ticket "
			    "is for: a proxy in between, or another server's key", "OPTIONS %s as "
			    "%s: %d, but mutual authentication failed: %s: %s", path, d->principal,
			    status, se.name, se.text);
			goto cleanup;
		}
	}
	if (status == 403)
		report(d, D_WARN, "exchange", "the ticket was accepted; Exchange refuses the "
		    "mailbox: is ActiveSync enabled for it (Set-CASMailbox -ActiveSyncEnabled)?",
		    "OPTIONS %s as %s: 403 from %s", path, d->principal, srv->host);
	else if (status >= 200 && status < 300)
		report(d, D_OK, "exchange", NULL, "OPTIONS %s as %s: %d from %s%s%s%s", path,
		    d->principal, status, srv->host, kept ? ", no mutual-authentication token" :
		    ", mutual authentication verified", versions[0] ? ", MS-ASProtocolVersions " :
		    "", versions);
	else
		report(d, status == 451 ? D_OK : D_WARN, "exchange", status == 451 ? NULL :
		    "the ticket was accepted; see Exchange's (IIS) logs", "OPTIONS %s as %s: %d "
		    "from %s%s", path, d->principal, status, srv->host, kept ? "" :
		    ", mutual authentication verified");
cleanup:
	if (kept && d->s4u != NULL)
		s4u_ctx_release(d->s4u, d->ctx_id);
	free(req);
	dconn_close(&cn);
	SSL_CTX_free(ctx);
}

/* ---- main ------------------------------------------------------------------------------ */

static void
usage(FILE *fp)
{
	fprintf(fp,
	    "usage: eas-kcd-proxy doctor [-c FILE] [--user UPN] [-v]\n"
	    "\n"
	    "  -c FILE       configuration file (default %s)\n"
	    "  -u, --user UPN  test S4U2Self, S4U2Proxy and Exchange for this user\n"
	    "  -v            log the daemon modules' debug messages to stderr\n"
	    "\n"
	    "One line per check: OK, WARN, FAIL or SKIP, its name, what was found and, on\n"
	    "WARN and FAIL, a hint. Exit status 1 when a check FAILed, else 0.\n",
	    CONFIG_DEFAULT_PATH);
}

int
doctor_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "user", required_argument, NULL, 'u' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct doctor d;
	char err[512];
	int opt, rc = 1;

	memset(&d, 0, sizeof(d));
	d.conf_path = CONFIG_DEFAULT_PATH;
	optind = 1;
	while ((opt = getopt_long(argc, argv, "c:u:vh", longopts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			d.conf_path = optarg;
			break;
		case 'u':
			d.user_arg = optarg;
			break;
		case 'v':
			d.verbose = 1;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "eas-kcd-proxy doctor: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return EXIT_USAGE;
	}
	if (d.user_arg != NULL && *d.user_arg == '\0') {
		fprintf(stderr, "eas-kcd-proxy doctor: --user needs a UPN\n");
		return EXIT_USAGE;
	}
	signal(SIGPIPE, SIG_IGN);
	log_set_role("doctor");
	log_set_level(d.verbose ? LOG_LVL_DEBUG : LOG_LVL_ERROR);
	printf("eas-kcd-proxy %s doctor: %s%s%s\n", EKP_VERSION, d.conf_path,
	    d.user_arg ? ", user " : "", d.user_arg ? d.user_arg : "");

	if (check_config(&d) != 0)
		goto summary;
	/* as kcd does first: libkrb5 reads KRB5_CONFIG when a context is made */
	if (s4u_env_init(d.cfg->kerberos.krb5_conf, err, sizeof(err)) != 0) {
		report(&d, D_FAIL, "config", NULL, "%s", err);
		goto summary;
	}
	if ((d.base = event_base_new()) == NULL) {
		report(&d, D_FAIL, "config", NULL, "cannot create an event loop");
		goto summary;
	}
	check_files(&d);
	check_keytab(&d);
	check_kdc(&d);
	check_tls_cert(&d);
	check_client_ca(&d);
	check_crl(&d);
	check_backend(&d);
	check_user(&d);
	check_ldap(&d);
	check_s4u2self(&d);
	check_s4u2proxy(&d);
	check_exchange(&d);
	if (d.nofwd_pending)
		emit_nofwd(&d, 0);
summary:
	printf("doctor: %u OK, %u WARN, %u FAIL, %u SKIP\n", d.counts[D_OK], d.counts[D_WARN],
	    d.counts[D_FAIL], d.counts[D_SKIP]);
	fflush(stdout);
	rc = d.counts[D_FAIL] > 0 ? 1 : 0;
	if (d.s4u != NULL)
		s4u_free(d.s4u);
	free(d.token);
	if (d.base != NULL)
		event_base_free(d.base);
	config_free(d.cfg);
	return rc;
}
