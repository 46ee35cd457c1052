/*
 * policy.h — what decides, besides the certificate and Kerberos, whether a
 * device's request may go on (docs/embedding.md):
 *
 *   - the built-in device policy for admins: [devices] deny_file and
 *     allow_file, DeviceIds one per line, read when a worker starts (so a
 *     reload reads them again) while it is still root;
 *   - the embedding program's hooks (include/eas_kcd_proxy.h): identity
 *     (refine or replace certificate -> principal), authorize (allow, deny
 *     or quarantine a request) and log (each access record).
 *
 * One struct policy per worker, i.e. per generation. The hooks are
 * borrowed from the embedding layer, which keeps them for as long as any
 * worker uses them; the daemon has none.
 *
 * Hook calls may be answered later: the caller (stream.c) then gets a
 * struct policy_call to cancel when its connection goes away first, and a
 * callback on the worker's loop otherwise. The call object itself lives
 * until the embedding program answers it (its handle must stay valid),
 * or until the policy is freed.
 */
#ifndef EKP_POLICY_H
#define EKP_POLICY_H

#include <stddef.h>

struct event_base;

#include <openssl/x509.h>

#include "eas_kcd_proxy.h"
#include "identity.h"
#include "reason.h"

struct config;
struct access_rec;
struct policy;
struct policy_call;

#define POLICY_DEVICE_MAX	64	/* bytes of a DeviceId in a list (EAS_LOG_MAX) */
#define POLICY_DETAIL_MAX	64

/* The embedding program's hooks, owned by the embedding layer (one per
 * proxy, zeroed at first), borrowed by every policy made with them. calls
 * is the registry of unanswered hook calls (see above). */
struct policy_hooks {
	eas_kcd_proxy_identity_fn *identity;
	void *identity_arg;
	eas_kcd_proxy_authorize_fn *authorize;
	void *authorize_arg;
	eas_kcd_proxy_log_fn *log;
	void *log_arg;
	struct policy_call *calls;
};

/* Load cfg->devices' lists (when set) and use hooks (NULL: none; else it
 * must outlive the policy and every call made through it). Answers given
 * later are delivered on base. Returns NULL with "FILE:LINE: message" (or
 * the I/O error) in err. cfg must outlive the policy. */
struct policy *policy_new(const struct config *cfg, struct event_base *base,
    struct policy_hooks *hooks, char *err, size_t errlen);
/* Calls still unanswered stay on their registry (their handles stay valid
 * until answered); they only forget this policy. */
void policy_free(struct policy *pol);
/* Free every unanswered call on h (the proxy is being destroyed): their
 * handles are dead from here on. */
void policy_hooks_release(struct policy_hooks *h);

/* ---- device lists (pure, unit-tested) ------------------------------------- */

struct policy_list;

/* Parse a list from text of len bytes: one DeviceId per line, blanks
 * around it ignored, empty lines and '#' comment lines skipped; a
 * DeviceId is 1..POLICY_DEVICE_MAX bytes of 0x21..0x7e. name is used in
 * messages ("name:LINE: ..."). NULL with the first problem in err. */
struct policy_list *policy_list_parse(const char *name, const char *text, size_t len,
    char *err, size_t errlen);
/* Read and parse the file at path. */
struct policy_list *policy_list_load(const char *path, char *err, size_t errlen);
/* 1 when device_id is listed (ASCII case-insensitive), else 0. */
int policy_list_has(const struct policy_list *l, const char *device_id);
size_t policy_list_count(const struct policy_list *l);
void policy_list_free(struct policy_list *l);

/* ---- identity --------------------------------------------------------------- */

/* A connection's identity after the hook (or the configuration's alone). */
struct policy_identity {
	int ok;
	char principal[IDENTITY_PRINCIPAL_MAX];	/* when ok */
	char detail[POLICY_DETAIL_MAX];		/* identity_unmapped detail when !ok */
};

typedef void policy_identity_cb(const struct policy_identity *id, void *arg);

/*
 * Let the identity hook see the mapping ours made of cert (res from
 * identity_map). Without a hook, or when the hook answers before
 * returning, *out is written and NULL is returned (cb is not called).
 * Otherwise the handle is returned and cb runs once on the worker's loop
 * with the answer, unless policy_cancel() came first. Out of memory is
 * answered at once as a refusal (detail internal_error).
 */
struct policy_call *policy_identify(struct policy *pol, X509 *cert,
    const struct identity_result *res, const char *client_ip, struct policy_identity *out,
    policy_identity_cb *cb, void *arg);

/* ---- authorize -------------------------------------------------------------- */

struct policy_verdict {
	enum reason reason;		/* REASON_OK, _DEVICE_DENIED, _DEVICE_QUARANTINED,
					 * _OUT_OF_MEMORY */
	char detail[POLICY_DETAIL_MAX];	/* "deny_file", "allow_file", "hook"; "" */
};

typedef void policy_authorize_cb(const struct policy_verdict *v, void *arg);

/*
 * Decide a request (every string non-NULL, "" when absent): the device
 * lists first (deny_file, then allow_file; requests without DeviceId and
 * without EAS command are not subject to them), then the authorize hook.
 * Same contract as policy_identify: NULL with *out written when decided
 * at once, else a handle and cb later. Refusals are logged here.
 */
struct policy_call *policy_authorize(struct policy *pol, const struct eas_kcd_proxy_request *rq,
    struct policy_verdict *out, policy_authorize_cb *cb, void *arg);

/* The connection went away: cb will not be called. The embedding program
 * still answers the call (that answer is dropped). */
void policy_cancel(struct policy_call *call);

/* ---- log ---------------------------------------------------------------------- */

/* Hand an access record to the log hook, if any. */
void policy_log(struct policy *pol, const struct access_rec *rec);

#endif
