/*
 * eas_kcd_proxy.h — the public interface of libeaskcdproxy (SPEC §10).
 *
 * This is the only header an embedding program (an MDM vendor's gateway)
 * includes; every symbol the library exports starts with eas_kcd_proxy_.
 * The library is the same code the eas-kcd-proxy daemon runs: TLS with
 * required client certificates, certificate -> user@REALM, Kerberos
 * constrained delegation in a privilege-separated kcd, streaming to
 * Exchange. docs/embedding.md walks through it; examples/mdm-gateway.c is a
 * complete program.
 *
 *   struct eas_kcd_proxy *p;
 *   char err[1024];
 *
 *   if (eas_kcd_proxy_new_from_file("/etc/gw/eas.conf", &p, err, sizeof(err)))
 *       errx(1, "%s", err);
 *   eas_kcd_proxy_set_authorize_hook(p, my_authorize, my_state);
 *   if (eas_kcd_proxy_start(p, base))
 *       errx(1, "%s", eas_kcd_proxy_errmsg(p));
 *   event_base_dispatch(base);          // the caller's loop serves devices
 *   ...
 *   eas_kcd_proxy_destroy(p);
 *
 * Model. One handle serves the configuration's [server] listen addresses
 * on the caller's libevent event_base ("single-process mode": the worker
 * of the daemon runs on that loop; [server] workers, user and pid_file are
 * not used — the embedding program owns its process). The Kerberos keytab
 * is opened only by kcd, which runs as a helper process forked at start
 * (the default: the process that talks to devices never holds a key, as in
 * the daemon) or, when the caller chooses EAS_KCD_PROXY_KCD_THREAD, as a
 * thread with its own event loop (the keytab is then read by the caller's
 * process). A reload starts a new generation beside the running one, as
 * the daemon's SIGHUP does: requests in flight finish on the configuration
 * they started with.
 *
 * Threads. Unless a function says otherwise, call it on the thread that
 * runs the event_base given to eas_kcd_proxy_start (before start: on any
 * one thread at a time). Hooks are called on that thread. One handle may be
 * started per process at a time (the error log, the access log and the
 * metrics are process-wide); a second start fails with
 * EAS_KCD_PROXY_E_BUSY.
 *
 * Signals. The library installs no signal handler. At start it sets SIGPIPE
 * to SIG_IGN when its disposition is SIG_DFL (a device that hangs up mid
 * answer must not kill the process). Reload, stop and log reopening are
 * the caller's to trigger (e.g. from its own SIGHUP / SIGTERM events).
 *
 * Helper process. In EAS_KCD_PROXY_KCD_PROCESS mode start and reload fork
 * a kcd process from the calling thread; it closes every descriptor it
 * inherited but its own channel, and gets SIGTERM when the thread that
 * forked it ends (PR_SET_PDEATHSIG): start the proxy from a thread that
 * lives as long as the proxy (e.g. the main thread).
 *
 * Errors. Functions that can fail return enum eas_kcd_proxy_err (0 = OK);
 * the message of the last failure on a handle is eas_kcd_proxy_errmsg(),
 * and functions without a handle write it into the caller's buffer.
 * Messages name the cause and the fix (configuration errors come as
 * "FILE:LINE: message", one per line).
 */
#ifndef EAS_KCD_PROXY_H
#define EAS_KCD_PROXY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EAS_KCD_PROXY_VERSION_MAJOR	0
#define EAS_KCD_PROXY_VERSION_MINOR	1
#define EAS_KCD_PROXY_VERSION_PATCH	0
/* Bumped whenever a declared function or type changes incompatibly (the
 * shared library's soname is libeaskcdproxy.so.<ABI>). Additions — new
 * functions, new enum values, new fields at the end of the structs the
 * library hands out — do not bump it. */
#define EAS_KCD_PROXY_ABI_VERSION	0

struct event_base;
struct eas_kcd_proxy;			/* one proxy: opaque */
struct eas_kcd_proxy_config;		/* a configuration built in code: opaque */
struct eas_kcd_proxy_call;		/* one pending hook call: opaque */

/* "0.1.0": the version of the library actually linked (compare with the
 * macros above to detect a header/library mismatch). Never NULL. Any
 * thread. */
const char *eas_kcd_proxy_version(void);
/* EAS_KCD_PROXY_ABI_VERSION of the linked library. Any thread. */
int eas_kcd_proxy_abi_version(void);

/* ---- errors ------------------------------------------------------------- */

enum eas_kcd_proxy_err {
	EAS_KCD_PROXY_OK = 0,
	EAS_KCD_PROXY_E_INVALID = 1,	/* a NULL or malformed argument, an unknown key */
	EAS_KCD_PROXY_E_STATE = 2,	/* not in this state (start twice, reload before start) */
	EAS_KCD_PROXY_E_CONFIG = 3,	/* the configuration does not load or validate */
	EAS_KCD_PROXY_E_START = 4,	/* TLS material, device lists, listening sockets */
	EAS_KCD_PROXY_E_SYSTEM = 5,	/* fork, thread, socketpair, out of memory */
	EAS_KCD_PROXY_E_BUSY = 6,	/* another handle is started in this process */
};

/* A short fixed text for e ("invalid argument"); never NULL. Any thread. */
const char *eas_kcd_proxy_strerror(int e);
/* The message of the last failed call on p ("" when none); valid until the
 * next call on p. NULL p gives "". */
const char *eas_kcd_proxy_errmsg(const struct eas_kcd_proxy *p);

/* ---- configuration ------------------------------------------------------- */

/*
 * A configuration filled in code, key by key, with exactly the sections and
 * keys of the configuration file (eas-kcd-proxy.conf.example documents
 * every one; values are written as in the file: "30s", "64m", "yes",
 * comma lists). Relative paths start at the current directory. Setting a
 * key twice keeps the last value. Values are checked when a proxy is made
 * from the configuration (eas_kcd_proxy_new), all at once, with messages
 * "[section] key: message".
 *
 * A configuration object is used by one thread at a time; it is copied by
 * eas_kcd_proxy_new, so it may be freed or changed afterwards.
 */
struct eas_kcd_proxy_config *eas_kcd_proxy_config_new(void);	/* NULL: out of memory */
/* E_INVALID when [section] key does not exist, or value holds a line
 * break or control character, or " ;" / " #" (a comment in the file's
 * syntax); eas_kcd_proxy_config_errmsg says which. */
int eas_kcd_proxy_config_set(struct eas_kcd_proxy_config *cfg, const char *section,
    const char *key, const char *value);
const char *eas_kcd_proxy_config_errmsg(const struct eas_kcd_proxy_config *cfg);
void eas_kcd_proxy_config_free(struct eas_kcd_proxy_config *cfg);	/* NULL is fine */

/* ---- life cycle ---------------------------------------------------------- */

/*
 * Make a proxy from the configuration file at path (loaded and validated
 * like `eas-kcd-proxy -t`; reload reads the file again), or from cfg
 * (copied; reload re-applies the copy, or the configuration given to
 * eas_kcd_proxy_reload_config). Nothing is opened or bound yet. On success
 * *out is the new handle (the caller's, freed with eas_kcd_proxy_destroy);
 * on failure *out is NULL and err (when not NULL) holds the message.
 */
int eas_kcd_proxy_new_from_file(const char *path, struct eas_kcd_proxy **out,
    char *err, size_t errlen);
int eas_kcd_proxy_new(const struct eas_kcd_proxy_config *cfg, struct eas_kcd_proxy **out,
    char *err, size_t errlen);

enum eas_kcd_proxy_kcd_mode {
	EAS_KCD_PROXY_KCD_PROCESS = 0,	/* default: a helper process holds the keytab */
	EAS_KCD_PROXY_KCD_THREAD = 1,	/* a thread of this process, its own event loop */
};
/* Before start only (E_STATE after). */
int eas_kcd_proxy_set_kcd_mode(struct eas_kcd_proxy *p, enum eas_kcd_proxy_kcd_mode mode);

/*
 * Bind the listen (and admin_listen) addresses, load the TLS material and
 * device lists, start kcd, and serve devices on base (borrowed: it must
 * outlive the proxy's use of it, i.e. until stop has finished or destroy
 * returned). Returns once devices can connect; requests wait for kcd's
 * first answer like any other. Once only (E_STATE after); a start that
 * failed leaves p as it was and may be tried again.
 */
int eas_kcd_proxy_start(struct eas_kcd_proxy *p, struct event_base *base);

/*
 * Load the configuration again (the file, or the kept copy), and when it
 * is valid and its TLS material and device lists load, start a new
 * generation on the same listening sockets (new addresses are bound,
 * removed ones closed). The running generation keeps serving until the new
 * kcd is ready, then drains: its requests finish on the old configuration,
 * within its shutdown_timeout. On failure nothing changes and the message
 * says why. eas_kcd_proxy_reload_config does the same with cfg (copied,
 * and kept for later reloads).
 */
int eas_kcd_proxy_reload(struct eas_kcd_proxy *p);
int eas_kcd_proxy_reload_config(struct eas_kcd_proxy *p, const struct eas_kcd_proxy_config *cfg);
/* The generation serving new connections (1 after start, +1 per reload
 * that took effect); 0 before start. */
unsigned eas_kcd_proxy_generation(const struct eas_kcd_proxy *p);

/* Reopen the error and access log files (after logrotate moved them), in
 * this process and in the kcd helper process. */
int eas_kcd_proxy_reopen_logs(struct eas_kcd_proxy *p);

/*
 * Stop gracefully: stop accepting now, let requests in flight finish
 * (keep-alive connections between requests close at once) for at most
 * [server] shutdown_timeout, then close what is left and stop kcd. done
 * (may be NULL) is called once on the loop when everything is closed; p
 * may then be destroyed, from done itself too. E_STATE when not started
 * or already stopping.
 */
typedef void eas_kcd_proxy_stopped_fn(struct eas_kcd_proxy *p, void *arg);
int eas_kcd_proxy_stop(struct eas_kcd_proxy *p, eas_kcd_proxy_stopped_fn *done, void *arg);

/*
 * Free p in any state: connections still open are closed now (logged with
 * reason shutdown), kcd is stopped and waited for, listening sockets are
 * closed, pending hook calls are released (answering one afterwards is a
 * use after free). Not from a hook of p; from the stopped callback is
 * fine. NULL is fine.
 */
void eas_kcd_proxy_destroy(struct eas_kcd_proxy *p);

/* ---- hooks ------------------------------------------------------------------ */

/*
 * Hooks are called on the loop's thread. The identity and authorize hooks
 * get a call handle and may answer at once (from inside the hook) or later
 * (e.g. after asking a device inventory over the network, from an event on
 * the same loop). Every call must be answered exactly once; the data it
 * points to stays valid until then. When the connection goes away first,
 * answering is still required and does nothing else. While a call is
 * pending the device waits; an unanswered identity call ends the
 * connection after [server] client_header_timeout, an unanswered authorize
 * call gets 504 request_timeout after the same time.
 *
 * Setting a hook applies to calls made from then on; fn NULL removes it.
 */

/* What the identity hook sees: the device's verified certificate and the
 * mapping the configuration ([identity]) made of it. */
struct eas_kcd_proxy_identity {
	const unsigned char *cert_der;	/* the leaf certificate, DER */
	size_t cert_der_len;
	const char *principal;		/* "alice@EXAMPLE.TEST"; NULL when the mapping failed */
	const char *detail;		/* why it failed ("no_upn"); NULL on success */
	const char *client_ip;
};

enum eas_kcd_proxy_identity_verdict {
	EAS_KCD_PROXY_IDENTITY_KEEP = 0,	/* the configuration's mapping stands (a failure stays one) */
	EAS_KCD_PROXY_IDENTITY_REPLACE = 1,	/* use the principal given instead */
	EAS_KCD_PROXY_IDENTITY_REFUSE = 2,	/* the device gets 403 identity_unmapped */
};

typedef void eas_kcd_proxy_identity_fn(struct eas_kcd_proxy_call *call,
    const struct eas_kcd_proxy_identity *id, void *arg);
int eas_kcd_proxy_set_identity_hook(struct eas_kcd_proxy *p, eas_kcd_proxy_identity_fn *fn,
    void *arg);
/*
 * Answer an identity call. With REPLACE, principal ("user@REALM" or
 * "user@upn-suffix") goes through the same name rules as a certificate's
 * UPN ([identity] realm, suffix_realms, allowed_suffixes); a name that
 * fails them refuses the device (identity_unmapped) and this returns
 * E_INVALID. principal is copied. The call is consumed in every case.
 */
int eas_kcd_proxy_identity_done(struct eas_kcd_proxy_call *call,
    enum eas_kcd_proxy_identity_verdict verdict, const char *principal);

/* What the authorize hook sees: one request, after its head and EAS query
 * are decoded and before Exchange (or the KDC) is asked. Strings are never
 * NULL ("" when absent). */
struct eas_kcd_proxy_request {
	const char *user;		/* the mapped principal, "alice@EXAMPLE.TEST" */
	const char *device_id;		/* EAS DeviceId (hex for a binary one) */
	const char *device_type;	/* "iPhone" */
	const char *cmd;		/* EAS command, "Sync"; "" for OPTIONS, Autodiscover */
	const char *method;		/* "POST" */
	const char *path;		/* "/Microsoft-Server-ActiveSync" */
	const char *client_ip;
	const char *user_agent;
};

enum eas_kcd_proxy_verdict {
	EAS_KCD_PROXY_ALLOW = 0,
	EAS_KCD_PROXY_DENY = 1,		/* 403, access-log reason device_denied */
	/* Only what a device needs to take part in compliance passes — requests
	 * without an EAS command (OPTIONS, Autodiscover) and the Provision and
	 * Settings commands; anything else gets 403 device_quarantined. */
	EAS_KCD_PROXY_QUARANTINE = 2,
};

typedef void eas_kcd_proxy_authorize_fn(struct eas_kcd_proxy_call *call,
    const struct eas_kcd_proxy_request *req, void *arg);
int eas_kcd_proxy_set_authorize_hook(struct eas_kcd_proxy *p, eas_kcd_proxy_authorize_fn *fn,
    void *arg);
/* Answer an authorize call; E_INVALID for an unknown verdict (the request
 * is then denied). The call is consumed in every case. */
int eas_kcd_proxy_authorize_done(struct eas_kcd_proxy_call *call,
    enum eas_kcd_proxy_verdict verdict);

/* One access-log record (the same fields as the access log, SPEC §8),
 * handed to the log hook as each request ends; strings may be NULL ("-"
 * in the file) and are valid during the call only. The access log file is
 * written as configured either way ([log] access_log = off turns it off). */
struct eas_kcd_proxy_log_record {
	uint64_t start_ms;		/* wall clock, unix ms */
	const char *server_ip;
	unsigned server_port;
	const char *client_ip;
	const char *method;
	const char *uri_stem;
	const char *uri_query;
	const char *username;		/* user@REALM */
	const char *user_agent;
	int status;			/* 0: no HTTP answer (TLS handshake refused) */
	uint64_t bytes_sent, bytes_received;
	uint64_t time_taken_ms;
	const char *device_id, *device_type, *eas_cmd;
	const char *reason;		/* "ok", "device_denied", "kdc_CLIENT_REVOKED" */
	const char *backend;		/* "exchange.example.test:443" */
	int64_t kdc_ms;			/* -1: no KDC round trip */
};

typedef void eas_kcd_proxy_log_fn(const struct eas_kcd_proxy_log_record *rec, void *arg);
int eas_kcd_proxy_set_log_hook(struct eas_kcd_proxy *p, eas_kcd_proxy_log_fn *fn, void *arg);

/* ---- metrics ------------------------------------------------------------------- */

/* Counters since start (over every generation); gauges are current. Each
 * field is the sum of what /metrics (eas_kcd_proxy_metrics_text) shows
 * under the name in its comment. New fields are only ever appended. */
struct eas_kcd_proxy_metrics {
	uint64_t requests;		/* requests ended, whatever the reason */
	uint64_t requests_ok;		/* answered by Exchange */
	uint64_t requests_denied;	/* device_denied + device_quarantined */
	uint64_t tls_handshakes;	/* completed */
	uint64_t tls_failures;		/* handshakes refused */
	uint64_t connections_accepted;
	int64_t connections_open;
	int64_t requests_parked;	/* waiting for Exchange's answer (Ping) */
	uint64_t kdc_requests;		/* S4U exchanges with the KDC */
	uint64_t kdc_errors;
	uint64_t kcd_cache_hits, kcd_cache_misses;
	/* ---- end of the first version (0.1.0); fields since: */
	/* _kcd_cache_total{result="negative_hit"}: a refusal answered from
	 * the negative cache ([kerberos] negative_ttl) */
	uint64_t kcd_cache_negative_hits;
	/* _kcd_tokens_total{route="fast"}: Negotiate tokens made on kcd's
	 * loop from a cached service ticket; {route="gss"}: by GSSAPI on a
	 * KDC thread (a user's first token, or when the fast path could not) */
	uint64_t kcd_tokens_fast, kcd_tokens_gss;
	/* _kcd_fast_fallbacks_total: requests for a cached credential the
	 * fast path could not serve (they went the GSSAPI way) */
	uint64_t kcd_fast_fallbacks;
	/* _kcd_tgt_acquisitions_total{result="ok"|"error"}: AS exchanges for
	 * the proxy's own TGT from its keytab (not in kdc_requests) */
	uint64_t kcd_tgt_acquisitions_ok, kcd_tgt_acquisitions_errors;
	/* gauges: _kcd_tgt_valid, 1 while kcd holds the proxy's TGT (what
	 * /readyz needs), else 0; _kcd_tgt_end_seconds, when it ends (Unix
	 * time; in the past: expired; 0: kcd never had one; INT64_MAX: no end) */
	int64_t kcd_tgt_valid;
	int64_t kcd_tgt_end;
	/* _tokens_ahead_total{result="ready"|"waited"|"unused"}: tokens the
	 * workers asked of kcd ahead of a kept-alive connection's next
	 * request, there when it came, still on the way then, or dropped */
	uint64_t tokens_ahead_ready, tokens_ahead_waited, tokens_ahead_unused;
};

/* Fill m; size is sizeof(struct eas_kcd_proxy_metrics) as the caller was
 * compiled: a program built against an older header passes its smaller
 * size and gets the fields it knows, nothing is written past size
 * (E_INVALID when smaller than the first version of the struct). */
int eas_kcd_proxy_metrics_get(const struct eas_kcd_proxy *p, struct eas_kcd_proxy_metrics *m,
    size_t size);
/* Requests that ended with the reason token ("device_denied", "ok"; the
 * tokens of docs/logging.md without detail); 0 for an unknown token. */
uint64_t eas_kcd_proxy_metrics_reason(const struct eas_kcd_proxy *p, const char *reason);
/* The Prometheus text of /metrics into buf (NUL-terminated); returns its
 * length, or 0 when buf is too small (64 KiB is plenty) or p not started. */
size_t eas_kcd_proxy_metrics_text(const struct eas_kcd_proxy *p, char *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif
