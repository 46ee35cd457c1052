/*
 * kcd_client.h — the worker's asynchronous stubs for kcd (SPEC §6), in the
 * manner of OpenSSH's monitor_wrap.c: they mirror the requests kcd answers
 * and never touch a key.
 *
 * A request gets an id and a timer; the answer (or the timeout, or the
 * channel dying) calls the callback exactly once on the worker's event loop,
 * unless the caller cancelled the request first (its connection closed).
 */
#ifndef EKP_KCD_CLIENT_H
#define EKP_KCD_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "kcd_proto.h"

struct event_base;
struct kcd_client;
struct kcd_req;

/* The answer; pointers are valid only during the callback. */
struct kcd_answer {
	int ok;				/* 1: token (or mutual ok); 0: error */
	const char *token;		/* base64 Negotiate token */
	uint32_t ctx_id;		/* kept context for mutual auth, 0 none */
	uint64_t cred_end_ms;
	enum kcd_err_class cls;		/* when !ok */
	const char *name;		/* "CLIENT_REVOKED", "unreachable", ... */
	const char *text;		/* for our log only, never for devices */
	uint64_t elapsed_ms;		/* for the access log's x-kdc-ms */
	const char *principal;		/* IDENTIFY_OK: the principal to use */
	uint32_t id_flags;		/* IDENTIFY_OK: KCD_ID_* */
};

typedef void kcd_answer_fn(const struct kcd_answer *ans, void *arg);

/* Takes ownership of fd (the worker's end of its kcd channel).
 * timeout_ms bounds every request ((S4U_QUEUE_FACTOR + 1) x kdc_timeout
 * + margin: longer than kcd's own bounds). */
struct kcd_client *kcd_client_new(struct event_base *base, int fd, uint64_t timeout_ms);
/* kcd was restarted: switch to a new channel (ownership of fd taken).
 * Requests pending on the old channel fail as unreachable. */
int kcd_client_set_channel(struct kcd_client *kc, int fd);
/* Fails pending requests as unreachable and frees the client. */
void kcd_client_free(struct kcd_client *kc);

/* Ask for a Negotiate token. Returns a handle for cancel, or NULL when the
 * request cannot even be queued (then fn is NOT called; the caller answers
 * 503). cb may be NULL (no channel bindings). */
struct kcd_req *kcd_token_request(struct kcd_client *kc, const char *principal,
    const char *spn, const unsigned char *cb, size_t cb_len, uint32_t flags,
    kcd_answer_fn *fn, void *arg);
/* Verify the backend's mutual-auth token for a kept context. */
struct kcd_req *kcd_mutual_request(struct kcd_client *kc, uint32_t ctx_id,
    const char *token, kcd_answer_fn *fn, void *arg);
/* Directory checks for a connection's certificate (SPEC §7); principal is
 * the one mapped from the certificate ("" for [identity] source = ldap). */
struct kcd_req *kcd_identify_request(struct kcd_client *kc, const char *principal,
    const unsigned char *der, size_t der_len, kcd_answer_fn *fn, void *arg);
/* Tell kcd a kept context is no longer needed (fire and forget). */
void kcd_ctx_release(struct kcd_client *kc, uint32_t ctx_id);
/* The callback will not be called; the request's answer is dropped. */
void kcd_request_cancel(struct kcd_req *req);

/* Requests sent, answered, timed out, in flight (for /metrics). */
struct kcd_client_stats {
	uint64_t sent, answered, timeouts, failed_channel;
	unsigned in_flight;
};
void kcd_client_stats(const struct kcd_client *kc, struct kcd_client_stats *st);

#endif
