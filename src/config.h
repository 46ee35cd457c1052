/*
 * config.h — the one configuration struct (SPEC §3) and its parser.
 *
 * config_load() parses the INI file with libinih into a struct filled with
 * the defaults first, then config_validate() cross-checks it in one place
 * (relayd load_config, nginx -t). Every error is reported as
 * "FILE:LINE: what is wrong; how to fix it". A loaded config is immutable:
 * a reload builds a new one beside the old and swaps only when it is valid.
 */
#ifndef EKP_CONFIG_H
#define EKP_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#define CONFIG_MAX_LISTEN	16
#define CONFIG_MAX_LIST		64	/* paths, suffixes, servers, ... */
#define CONFIG_DEFAULT_PATH	"/etc/eas-kcd-proxy/eas-kcd-proxy.conf"

/* A host:port as written plus its numeric form when it is an address. */
struct config_addr {
	char host[256];		/* "0.0.0.0", "::", "exchange.example.test" */
	uint16_t port;
	int is_numeric;		/* host is an IPv4/IPv6 literal */
	struct sockaddr_storage ss;	/* valid when is_numeric */
	socklen_t sslen;
};

/* A comma list of strings, each trimmed, none empty. */
struct config_list {
	unsigned n;
	char *v[CONFIG_MAX_LIST];
};

/* UPN suffix -> realm */
struct config_suffix_realm {
	char *suffix;		/* lower case, "corp.example" */
	char *realm;		/* "CORP.EXAMPLE.TEST" */
};

enum identity_source { ID_SRC_SAN_UPN, ID_SRC_SAN_EMAIL, ID_SRC_SUBJECT_CN, ID_SRC_LDAP };
enum tri_mode { TRI_OFF, TRI_ON, TRI_AUTO };	/* channel_bindings */
enum ocsp_mode { OCSP_OFF, OCSP_ON, OCSP_REQUIRED };
enum ldap_bind { LDAP_BIND_GSSAPI, LDAP_BIND_SIMPLE };
enum strong_mapping { STRONG_OFF, STRONG_AUDIT, STRONG_ENFORCE };
enum on_failure { ON_FAILURE_DENY, ON_FAILURE_ALLOW };
enum access_format { ACCESS_W3C, ACCESS_JSON };

/* One message per problem, in file order. */
struct config_errors {
	unsigned n;
	char *msg[64];
	unsigned dropped;		/* beyond the 64 kept */
};

/* Durations are milliseconds; sizes are bytes. */
struct config {
	char *file;			/* the path it was loaded from */

	struct {
		unsigned n_listen;
		struct config_addr listen[CONFIG_MAX_LISTEN];
		unsigned workers;	/* resolved: "auto" = online CPUs */
		char *user;
		char *pid_file;		/* NULL = none */
		char *chroot;		/* workers chroot here after loading; NULL = none */
		int has_admin;		/* admin_listen not empty */
		struct config_addr admin_listen;
		int proxy_protocol;
		struct config_list paths;
		uint64_t max_header_size;
		uint64_t max_body_size;
		uint64_t client_header_timeout;
		uint64_t request_timeout;
		uint64_t idle_timeout;
		uint64_t shutdown_timeout;
	} server;

	struct {
		char *certificate;
		char *key;
		char *client_ca;
		struct config_list crl;		/* files */
		unsigned verify_depth;
		int min_version;		/* TLS1_2_VERSION / TLS1_3_VERSION */
		char *ciphers;			/* NULL = OpenSSL defaults */
		int require_client_auth_eku;
		enum ocsp_mode ocsp;
		char *ocsp_responder;		/* NULL = from the certificate's AIA */
		uint64_t ocsp_timeout;
	} tls;

	struct {
		enum identity_source source;
		char *realm;
		unsigned n_suffix_realms;
		struct config_suffix_realm suffix_realms[CONFIG_MAX_LIST];
		struct config_list allowed_suffixes;	/* lower case */
		int check_user_param;
		int allow_ia5_upn;
	} identity;

	struct {
		char *keytab;
		char *principal;
		char *krb5_conf;		/* NULL = KRB5_CONFIG / default */
		uint64_t credential_ttl;
		uint64_t negative_ttl;
		uint64_t kdc_timeout;
		unsigned kdc_concurrency;
		enum tri_mode channel_bindings;
	} kerberos;

	struct {
		unsigned n_servers;
		struct config_addr servers[CONFIG_MAX_LIST];
		int tls;
		char *ca;			/* NULL = system store */
		int has_connect_to;
		struct config_addr connect_to;	/* override for every server; port
						 * defaults to the first server's */
		char *spn;			/* normalised to "HTTP@host" form */
		char *host_header;		/* resolved: host of the first server */
		uint64_t connect_timeout;
		uint64_t pool_idle;
		uint64_t health_check;		/* 0 = off */
	} backend;

	struct {
		char *uri;			/* NULL = directory checks off */
		enum ldap_bind bind;
		char *bind_dn;
		char *bind_password_file;
		char *base_dn;
		char *user_filter;
		char *require_group;
		enum strong_mapping strong_mapping;
		uint64_t cache_ttl;
		enum on_failure on_failure;
		char *ca;			/* NULL = system store (ldaps, StartTLS) */
		uint64_t timeout;		/* connect, each operation, whole lookup */
		int allow_weak_mapping;		/* altSecurityIdentities <I><S>, <S>, <RFC822> */
	} ldap;

	/* The built-in device policy (docs/embedding.md "Device policy"):
	 * files of DeviceIds, one per line, read by each worker at start, so
	 * a reload (SIGHUP) reads them again. */
	struct {
		char *allow_file;		/* NULL = any DeviceId not denied */
		char *deny_file;		/* NULL = none denied */
	} devices;

	struct {
		char *error_log;		/* "stderr" | "syslog" | /path */
		int level;			/* enum log_level */
		char *access_log;		/* NULL/"off" = none */
		enum access_format access_format;
	} log;

	/* Things that work but deserve a look ("FILE:LINE: warning: ..."),
	 * e.g. backend tls = off. `-t` prints them; they never fail a load. */
	struct config_errors warnings;
};

/* Load and validate FILE. Returns a new config (caller frees with
 * config_free) or NULL with every problem appended to errs as
 * "FILE:LINE: message" (errs must start zeroed or cleared; the strings are
 * owned by errs until config_errors_clear). On success errs is untouched and
 * cfg->warnings holds the warnings (freed by config_free). */
struct config *config_load(const char *file, struct config_errors *errs);
/* The same from INI text instead of a file (the embedding API's in-code
 * configuration): name stands for the file in messages ("name:LINE: ...")
 * and relative paths start at the current directory. text need not be
 * NUL-terminated; len bytes are read. */
struct config *config_load_text(const char *name, const char *text, size_t len,
    struct config_errors *errs);
/* 1 when [section] key is a key of the configuration file, else 0. */
int config_key_exists(const char *section, const char *key);
void config_free(struct config *cfg);
void config_errors_clear(struct config_errors *errs);

/* Print the effective configuration, every key of every section with its
 * resolved value, as a loadable INI file (like nginx -T). */
void config_dump(const struct config *cfg, FILE *fp);

/* Value parsers, pure and unit-tested. Each returns 0, or -1 with a short
 * reason in err. */
int config_parse_duration(const char *s, uint64_t *ms, char *err, size_t errlen);
int config_parse_size(const char *s, uint64_t *bytes, char *err, size_t errlen);
int config_parse_bool(const char *s, int *out, char *err, size_t errlen);
/* "host:port", "1.2.3.4:443", "[::1]:443"; default_port used when
 * allow_no_port and there is no ":port" (it may be 0: "decide later").
 * Ports are 1..65535; host names are checked for DNS syntax; dotted
 * all-digit hosts must be valid IPv4; IPv6 needs brackets. */
int config_parse_addr(const char *s, int allow_no_port, uint16_t default_port,
    struct config_addr *out, char *err, size_t errlen);

#endif
