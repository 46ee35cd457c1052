/*
 * metrics.h — counters shared between the processes (SPEC §8).
 *
 * The parent maps one anonymous shared region before forking; every child
 * owns one slot and is its only writer (plain increments of aligned 64-bit
 * words: no locks, no atomics needed for a single writer; readers may be a
 * moment behind). The parent's admin listener sums the slots into
 * Prometheus text. When a child exits, the parent folds its slot into the
 * retired totals before the slot is reused, so counters never go back.
 */
#ifndef EKP_METRICS_H
#define EKP_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "reason.h"

#define METRICS_MAX_SLOTS	512
#define METRICS_KDC_BUCKETS	12	/* ms: 1 2 5 10 20 50 100 200 500 1000 5000 +Inf */

enum metrics_slot_kind { SLOT_FREE = 0, SLOT_WORKER, SLOT_KCD };

struct metrics_slot {
	uint32_t kind;			/* enum metrics_slot_kind */
	uint32_t pid;
	/* worker */
	uint64_t requests[REASON__COUNT][6];	/* [reason][status class 0 (none), 1..5] */
	uint64_t tls_handshakes;		/* completed */
	uint64_t tls_failures[REASON__COUNT];	/* handshake refusals by reason */
	uint64_t conns_accepted;
	int64_t conns_open;			/* gauge */
	int64_t parked;				/* gauge: requests waiting on the backend > 5 s */
	int64_t backend_pool_idle;		/* gauge */
	int64_t backend_conns_open;		/* gauge */
	uint64_t bytes_in, bytes_out;
	/* kcd */
	uint64_t kcd_cache_hits, kcd_cache_misses, kcd_negative_hits;
	uint64_t kdc_requests;			/* S4U exchanges with the KDC */
	uint64_t kdc_errors;
	uint64_t kdc_ms_bucket[METRICS_KDC_BUCKETS];
	uint64_t kdc_ms_sum, kdc_ms_count;
	uint64_t ldap_lookups, ldap_errors;
	/* for /readyz */
	uint32_t retiring;			/* parent: this child's generation no longer
						 * serves (a reload's newer one does, or the
						 * proxy stops); /readyz and the TGT gauges
						 * judge the serving generation only */
	int64_t backend_servers_up;		/* worker: servers its backend sees up */
	int64_t kcd_ready;			/* kcd: 1 once its Kerberos core runs */
	/* kcd: the proxy's own TGT, written by metrics_kcd_tgt only (a
	 * sequence lock: the reader copies the text while kcd may rewrite it) */
	uint32_t kcd_tgt_seq;			/* odd while being written */
	int64_t kcd_tgt_end;			/* unix s it is valid until; 0 = none,
						 * INT64_MAX = no end */
	char kcd_tgt_why[512];			/* why there is none, or why the last
						 * renewal failed; "" = fine */
	/* kcd: tokens by route (s4u.h, Warm tokens), and the proxy's own AS
	 * exchanges (not in kdc_requests: those are S4U exchanges only) */
	uint64_t kcd_tokens_fast;		/* made on kcd's loop from the cached
						 * service ticket */
	uint64_t kcd_tokens_gss;		/* made by GSSAPI on a KDC thread */
	uint64_t kcd_fast_fallbacks;		/* warm requests the fast path could
						 * not serve (went the GSS way) */
	uint64_t kcd_tgt_ok, kcd_tgt_errors;	/* AS exchanges for the proxy's TGT */
	/* worker: tokens asked of kcd ahead of a kept-alive connection's next
	 * request (stream.c, struct ahead): there when it came (ready), still
	 * on the way then (waited), or dropped unused */
	uint64_t tokens_ahead_ready, tokens_ahead_waited, tokens_ahead_unused;
};

struct metrics_shm {
	uint32_t magic;
	uint32_t nslots;
	struct metrics_slot retired;		/* folded totals of exited children */
	struct metrics_slot slot[METRICS_MAX_SLOTS];
};

/* Parent: map the region (before fork). */
struct metrics_shm *metrics_shm_create(void);
/* Parent: a free slot for a new child, or -1. */
int metrics_slot_alloc(struct metrics_shm *m, enum metrics_slot_kind kind);
/* Parent: the generation of the child of slot i stopped serving (it
 * drains); its counters still count, its readiness no longer does. */
void metrics_slot_retire(struct metrics_shm *m, int i);
/* Parent: the child of slot i exited; fold counters, free the slot. */
void metrics_slot_release(struct metrics_shm *m, int i);

/* The region this process attached to (NULL when not attached). */
const struct metrics_shm *metrics_shm_self(void);

/* /readyz: 1 when a kcd of the serving generation (a slot not retiring)
 * is up and holds the proxy's TGT (its end not reached) and one of its
 * workers sees a backend server up; else 0 with the missing part in why
 * ("kcd: no TGT for P: CLIENT_NOT_FOUND: ..."). A draining generation's
 * TGT never makes the proxy ready: after a reload, new requests go to the
 * new generation, whose keytab may be the one that fails. */
int metrics_ready(const struct metrics_shm *m, char *why, size_t len);

/* The proxy's TGT as /metrics shows it: 1 when a running kcd of the
 * serving generation holds one that has not ended by now_s (unix seconds),
 * else 0; *end_s is the latest end such a kcd published (0: none ever had one, INT64_MAX: no
 * end). A slot kcd is rewriting right now counts as having none. */
int metrics_tgt(const struct metrics_shm *m, int64_t now_s, int64_t *end_s);

/* kcd: publish into slot s (its own; the single writer) that it holds the
 * proxy's TGT until end_s (unix seconds; 0 = it holds none, INT64_MAX = no
 * end) and why it has none or its last renewal failed ("" or NULL when
 * fine). The admin listener reads it for /readyz and /metrics. */
void metrics_kcd_tgt(struct metrics_slot *s, int64_t end_s, const char *why);

/* Child: this process' slot (set once after fork). */
void metrics_attach(struct metrics_shm *m, int slot);
/* Back to the private dummy slot: the embedding library, before it unmaps
 * the region it attached the process to. */
void metrics_detach(void);
/* The calling child's slot, or a private dummy when not attached (tests,
 * tools): callers never check for NULL. */
struct metrics_slot *metrics_self(void);

void metrics_count_request(enum reason r, int status);
void metrics_kdc_latency(uint64_t ms);

/* Render Prometheus text exposition of the sum of all slots into buf.
 * Returns the length, or 0 when buf is too small. */
size_t metrics_render(const struct metrics_shm *m, char *buf, size_t len);

#endif
