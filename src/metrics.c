/* metrics.c — shared-memory counters and Prometheus rendering; see metrics.h. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>

#include "metrics.h"

#define METRICS_MAGIC	0x4d455452u

static struct metrics_slot dummy;
static struct metrics_slot *self = &dummy;
static const struct metrics_shm *attached;

static const uint64_t kdc_bounds[METRICS_KDC_BUCKETS - 1] = {
	1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000,
};

struct metrics_shm *
metrics_shm_create(void)
{
	struct metrics_shm *m = mmap(NULL, sizeof(*m), PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (m == MAP_FAILED)
		return NULL;
	memset(m, 0, sizeof(*m));
	m->magic = METRICS_MAGIC;
	m->nslots = METRICS_MAX_SLOTS;
	return m;
}

int
metrics_slot_alloc(struct metrics_shm *m, enum metrics_slot_kind kind)
{
	for (unsigned i = 0; i < m->nslots; i++) {
		if (m->slot[i].kind == SLOT_FREE) {
			memset(&m->slot[i], 0, sizeof(m->slot[i]));
			m->slot[i].kind = kind;
			return (int)i;
		}
	}
	return -1;
}

/* Add the monotonic counters of src into dst (gauges are not carried). */
static void
fold(struct metrics_slot *dst, const struct metrics_slot *src)
{
	for (unsigned r = 0; r < REASON__COUNT; r++) {
		for (unsigned c = 0; c < 6; c++)
			dst->requests[r][c] += src->requests[r][c];
		dst->tls_failures[r] += src->tls_failures[r];
	}
	dst->tls_handshakes += src->tls_handshakes;
	dst->conns_accepted += src->conns_accepted;
	dst->bytes_in += src->bytes_in;
	dst->bytes_out += src->bytes_out;
	dst->kcd_cache_hits += src->kcd_cache_hits;
	dst->kcd_cache_misses += src->kcd_cache_misses;
	dst->kcd_negative_hits += src->kcd_negative_hits;
	dst->kdc_requests += src->kdc_requests;
	dst->kdc_errors += src->kdc_errors;
	for (unsigned b = 0; b < METRICS_KDC_BUCKETS; b++)
		dst->kdc_ms_bucket[b] += src->kdc_ms_bucket[b];
	dst->kdc_ms_sum += src->kdc_ms_sum;
	dst->kdc_ms_count += src->kdc_ms_count;
	dst->ldap_lookups += src->ldap_lookups;
	dst->ldap_errors += src->ldap_errors;
	dst->kcd_tokens_fast += src->kcd_tokens_fast;
	dst->kcd_tokens_gss += src->kcd_tokens_gss;
	dst->kcd_fast_fallbacks += src->kcd_fast_fallbacks;
	dst->kcd_tgt_ok += src->kcd_tgt_ok;
	dst->kcd_tgt_errors += src->kcd_tgt_errors;
	dst->tokens_ahead_ready += src->tokens_ahead_ready;
	dst->tokens_ahead_waited += src->tokens_ahead_waited;
	dst->tokens_ahead_unused += src->tokens_ahead_unused;
}

void
metrics_slot_retire(struct metrics_shm *m, int i)
{
	if (i >= 0 && (unsigned)i < m->nslots)
		__atomic_store_n(&m->slot[i].retiring, 1u, __ATOMIC_RELAXED);
}

void
metrics_slot_release(struct metrics_shm *m, int i)
{
	if (i < 0 || (unsigned)i >= m->nslots)
		return;
	fold(&m->retired, &m->slot[i]);
	memset(&m->slot[i], 0, sizeof(m->slot[i]));
}

void
metrics_attach(struct metrics_shm *m, int slot)
{
	if (m != NULL && slot >= 0 && (unsigned)slot < m->nslots) {
		self = &m->slot[slot];
		attached = m;
	}
}

void
metrics_detach(void)
{
	self = &dummy;
	attached = NULL;
}

const struct metrics_shm *
metrics_shm_self(void)
{
	return attached;
}

void
metrics_kcd_tgt(struct metrics_slot *s, int64_t end_s, const char *why)
{
	uint32_t seq = __atomic_load_n(&s->kcd_tgt_seq, __ATOMIC_RELAXED);

	/* odd: a reader that starts now or overlaps retries (read_tgt) */
	__atomic_store_n(&s->kcd_tgt_seq, seq + 1, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	__atomic_store_n(&s->kcd_tgt_end, end_s, __ATOMIC_RELAXED);
	snprintf(s->kcd_tgt_why, sizeof(s->kcd_tgt_why), "%s", why != NULL ? why : "");
	__atomic_store_n(&s->kcd_tgt_seq, seq + 2, __ATOMIC_RELEASE);
}

/* A consistent copy of a kcd slot's TGT state (the writer is another
 * process). Returns 0, or -1 when kcd kept rewriting it meanwhile. */
static int
read_tgt(const struct metrics_slot *s, int64_t *end, char *why, size_t len)
{
	for (int tries = 0; tries < 1000; tries++) {
		uint32_t seq = __atomic_load_n(&s->kcd_tgt_seq, __ATOMIC_ACQUIRE);
		int64_t e;

		if (seq & 1u)
			continue;
		e = __atomic_load_n(&s->kcd_tgt_end, __ATOMIC_RELAXED);
		if (why != NULL && len > 0) {
			size_t n = len - 1 < sizeof(s->kcd_tgt_why) - 1 ? len - 1 :
			    sizeof(s->kcd_tgt_why) - 1;
			memcpy(why, s->kcd_tgt_why, n);
			why[n] = '\0';
		}
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(&s->kcd_tgt_seq, __ATOMIC_RELAXED) == seq) {
			*end = e;
			return 0;
		}
	}
	return -1;
}

/* 1 unless the slot's generation drains (the parent marks it; the child
 * itself may still be writing its counters). */
static int
serves(const struct metrics_slot *s)
{
	return __atomic_load_n(&s->retiring, __ATOMIC_RELAXED) == 0;
}

int
metrics_tgt(const struct metrics_shm *m, int64_t now_s, int64_t *end_s)
{
	int64_t latest = 0;
	int valid = 0;

	for (unsigned i = 0; i < m->nslots; i++) {
		const struct metrics_slot *s = &m->slot[i];
		int64_t end = 0;

		if (s->kind != SLOT_KCD || !s->kcd_ready || serves(s) == 0 ||
		    read_tgt(s, &end, NULL, 0) != 0)
			continue;
		if (end > latest)
			latest = end;
		valid |= end > now_s;
	}
	*end_s = latest;
	return valid;
}

int
metrics_ready(const struct metrics_shm *m, char *why, size_t len)
{
	int kcd = 0, tgt = 0, up = 0, workers = 0, draining = 0;
	time_t now = time(NULL);
	char tgt_why[sizeof(m->slot[0].kcd_tgt_why) + 128] = "";

	for (unsigned i = 0; i < m->nslots; i++) {
		const struct metrics_slot *s = &m->slot[i];
		if (s->kind != SLOT_FREE && !serves(s)) {
			draining = 1;
			continue;
		}
		if (s->kind == SLOT_KCD && s->kcd_ready) {
			char w[sizeof(s->kcd_tgt_why)];
			int64_t end = 0;
			struct tm tm;
			time_t t;

			kcd = 1;
			if (read_tgt(s, &end, w, sizeof(w)) != 0) {
				if (tgt_why[0] == '\0')
					snprintf(tgt_why, sizeof(tgt_why), "kcd: its TGT is "
					    "being replaced; ask again");
				continue;
			}
			if (end > (int64_t)now) {
				tgt = 1;
				continue;
			}
			if (tgt_why[0] != '\0')
				continue;	/* one cause is enough */
			if (end == 0)
				snprintf(tgt_why, sizeof(tgt_why), "kcd: %s", w[0] != '\0' ? w :
				    "no TGT for the proxy yet (its first acquisition is in progress)");
			else {
				t = (time_t)end;
				gmtime_r(&t, &tm);
				snprintf(tgt_why, sizeof(tgt_why), "kcd: the proxy's TGT expired at "
				    "%04d-%02d-%02dT%02d:%02d:%02dZ%s%s", tm.tm_year + 1900,
				    tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
				    w[0] != '\0' ? "; " : "", w);
			}
		}
		if (s->kind == SLOT_WORKER) {
			workers++;
			if (s->backend_servers_up > 0)
				up = 1;
		}
	}
	if (!kcd && draining)
		snprintf(why, len, "kcd is not running (only a draining generation's)");
	else if (!kcd)
		snprintf(why, len, "kcd is not running");
	else if (!tgt)
		snprintf(why, len, "%s", tgt_why);
	else if (workers == 0)
		snprintf(why, len, "no worker is running");
	else if (!up)
		snprintf(why, len, "no backend server is up");
	else {
		snprintf(why, len, "ready");
		return 1;
	}
	return 0;
}

struct metrics_slot *
metrics_self(void)
{
	return self;
}

void
metrics_count_request(enum reason r, int status)
{
	unsigned c = (status >= 100 && status < 600) ? (unsigned)status / 100u : 0;

	if ((unsigned)r < REASON__COUNT)
		self->requests[r][c]++;
}

void
metrics_kdc_latency(uint64_t ms)
{
	unsigned b = 0;

	while (b < METRICS_KDC_BUCKETS - 1 && ms > kdc_bounds[b])
		b++;
	self->kdc_ms_bucket[b]++;
	self->kdc_ms_sum += ms;
	self->kdc_ms_count++;
}

struct out {
	char *buf;
	size_t len, n;
	int full;
};

static void __attribute__((format(printf, 2, 3)))
emit(struct out *o, const char *fmt, ...)
{
	va_list ap;
	int w;

	if (o->full)
		return;
	va_start(ap, fmt);
	w = vsnprintf(o->buf + o->n, o->len - o->n, fmt, ap);
	va_end(ap);
	if (w < 0 || (size_t)w >= o->len - o->n)
		o->full = 1;
	else
		o->n += (size_t)w;
}

size_t
metrics_render(const struct metrics_shm *m, char *buf, size_t len)
{
	struct metrics_slot t;
	struct out o = { buf, len, 0, 0 };
	int64_t open = 0, parked = 0, idle = 0, bconns = 0, tgt_end = 0;
	unsigned workers = 0, tgt_valid = 0;
	int64_t now = (int64_t)time(NULL);
	uint64_t cum = 0;
	char tok[64];

	memset(&t, 0, sizeof(t));
	fold(&t, &m->retired);
	for (unsigned i = 0; i < m->nslots; i++) {
		const struct metrics_slot *s = &m->slot[i];
		if (s->kind == SLOT_FREE)
			continue;
		fold(&t, s);
		open += s->conns_open;
		parked += s->parked;
		idle += s->backend_pool_idle;
		bconns += s->backend_conns_open;
		workers += s->kind == SLOT_WORKER;
	}
	tgt_valid = (unsigned)metrics_tgt(m, now, &tgt_end);

	emit(&o, "# HELP eas_kcd_proxy_requests_total Requests by outcome reason and status class.\n"
	    "# TYPE eas_kcd_proxy_requests_total counter\n");
	for (unsigned r = 0; r < REASON__COUNT; r++)
		for (unsigned c = 0; c < 6; c++)
			if (t.requests[r][c])
				emit(&o, "eas_kcd_proxy_requests_total{reason=\"%s\",status=\"%s\"} %llu\n",
				    reason_token_detail((enum reason)r, "", tok, sizeof(tok)),
				    c == 0 ? "none" : (const char *[]){"", "1xx", "2xx", "3xx", "4xx", "5xx"}[c],
				    (unsigned long long)t.requests[r][c]);
	emit(&o, "# HELP eas_kcd_proxy_tls_handshakes_total Completed device TLS handshakes.\n"
	    "# TYPE eas_kcd_proxy_tls_handshakes_total counter\n"
	    "eas_kcd_proxy_tls_handshakes_total %llu\n", (unsigned long long)t.tls_handshakes);
	emit(&o, "# HELP eas_kcd_proxy_tls_handshake_failures_total Refused device TLS handshakes by reason.\n"
	    "# TYPE eas_kcd_proxy_tls_handshake_failures_total counter\n");
	for (unsigned r = 0; r < REASON__COUNT; r++)
		if (t.tls_failures[r])
			emit(&o, "eas_kcd_proxy_tls_handshake_failures_total{reason=\"%s\"} %llu\n",
			    reason_token((enum reason)r), (unsigned long long)t.tls_failures[r]);
	emit(&o, "# HELP eas_kcd_proxy_connections_accepted_total Device connections accepted.\n"
	    "# TYPE eas_kcd_proxy_connections_accepted_total counter\n"
	    "eas_kcd_proxy_connections_accepted_total %llu\n"
	    "# HELP eas_kcd_proxy_connections_open Open device connections.\n"
	    "# TYPE eas_kcd_proxy_connections_open gauge\n"
	    "eas_kcd_proxy_connections_open %lld\n"
	    "# HELP eas_kcd_proxy_parked_requests Requests waiting on a long-poll answer.\n"
	    "# TYPE eas_kcd_proxy_parked_requests gauge\n"
	    "eas_kcd_proxy_parked_requests %lld\n"
	    "# HELP eas_kcd_proxy_backend_pool_idle Idle backend connections (each private to one user).\n"
	    "# TYPE eas_kcd_proxy_backend_pool_idle gauge\n"
	    "eas_kcd_proxy_backend_pool_idle %lld\n"
	    "# HELP eas_kcd_proxy_backend_connections_open Open backend connections.\n"
	    "# TYPE eas_kcd_proxy_backend_connections_open gauge\n"
	    "eas_kcd_proxy_backend_connections_open %lld\n",
	    (unsigned long long)t.conns_accepted, (long long)open, (long long)parked,
	    (long long)idle, (long long)bconns);
	emit(&o, "# HELP eas_kcd_proxy_kcd_cache_total Impersonated-credential cache lookups in kcd.\n"
	    "# TYPE eas_kcd_proxy_kcd_cache_total counter\n"
	    "eas_kcd_proxy_kcd_cache_total{result=\"hit\"} %llu\n"
	    "eas_kcd_proxy_kcd_cache_total{result=\"miss\"} %llu\n"
	    "eas_kcd_proxy_kcd_cache_total{result=\"negative_hit\"} %llu\n"
	    "# HELP eas_kcd_proxy_kdc_requests_total S4U exchanges with the KDC (the proxy's "
	    "own AS exchanges: eas_kcd_proxy_kcd_tgt_acquisitions_total).\n"
	    "# TYPE eas_kcd_proxy_kdc_requests_total counter\n"
	    "eas_kcd_proxy_kdc_requests_total %llu\n"
	    "# HELP eas_kcd_proxy_kdc_errors_total S4U exchanges with the KDC that failed.\n"
	    "# TYPE eas_kcd_proxy_kdc_errors_total counter\n"
	    "eas_kcd_proxy_kdc_errors_total %llu\n",
	    (unsigned long long)t.kcd_cache_hits, (unsigned long long)t.kcd_cache_misses,
	    (unsigned long long)t.kcd_negative_hits, (unsigned long long)t.kdc_requests,
	    (unsigned long long)t.kdc_errors);
	emit(&o, "# HELP eas_kcd_proxy_kdc_latency_seconds Time of S4U exchanges with the KDC.\n"
	    "# TYPE eas_kcd_proxy_kdc_latency_seconds histogram\n");
	for (unsigned b = 0; b < METRICS_KDC_BUCKETS; b++) {
		cum += t.kdc_ms_bucket[b];
		if (b < METRICS_KDC_BUCKETS - 1)
			emit(&o, "eas_kcd_proxy_kdc_latency_seconds_bucket{le=\"%.3f\"} %llu\n",
			    (double)kdc_bounds[b] / 1000.0, (unsigned long long)cum);
		else
			emit(&o, "eas_kcd_proxy_kdc_latency_seconds_bucket{le=\"+Inf\"} %llu\n",
			    (unsigned long long)cum);
	}
	emit(&o, "eas_kcd_proxy_kdc_latency_seconds_sum %.3f\n"
	    "eas_kcd_proxy_kdc_latency_seconds_count %llu\n",
	    (double)t.kdc_ms_sum / 1000.0, (unsigned long long)t.kdc_ms_count);
	emit(&o, "# HELP eas_kcd_proxy_kcd_tokens_total Negotiate tokens kcd made, by route: fast "
	    "(on its loop from the cached service ticket) or gss (GSSAPI on a KDC thread).\n"
	    "# TYPE eas_kcd_proxy_kcd_tokens_total counter\n"
	    "eas_kcd_proxy_kcd_tokens_total{route=\"fast\"} %llu\n"
	    "eas_kcd_proxy_kcd_tokens_total{route=\"gss\"} %llu\n"
	    "# HELP eas_kcd_proxy_kcd_fast_fallbacks_total Requests for a cached credential "
	    "the fast path could not serve (they went the GSS way).\n"
	    "# TYPE eas_kcd_proxy_kcd_fast_fallbacks_total counter\n"
	    "eas_kcd_proxy_kcd_fast_fallbacks_total %llu\n"
	    "# HELP eas_kcd_proxy_kcd_tgt_acquisitions_total AS exchanges for the proxy's own "
	    "TGT from its keytab, by result.\n"
	    "# TYPE eas_kcd_proxy_kcd_tgt_acquisitions_total counter\n"
	    "eas_kcd_proxy_kcd_tgt_acquisitions_total{result=\"ok\"} %llu\n"
	    "eas_kcd_proxy_kcd_tgt_acquisitions_total{result=\"error\"} %llu\n",
	    (unsigned long long)t.kcd_tokens_fast, (unsigned long long)t.kcd_tokens_gss,
	    (unsigned long long)t.kcd_fast_fallbacks, (unsigned long long)t.kcd_tgt_ok,
	    (unsigned long long)t.kcd_tgt_errors);
	emit(&o, "# HELP eas_kcd_proxy_tokens_ahead_total Tokens the workers asked of kcd ahead "
	    "of a kept-alive connection's next request, by outcome: ready (there when the "
	    "request came), waited (still on the way then), unused (dropped).\n"
	    "# TYPE eas_kcd_proxy_tokens_ahead_total counter\n"
	    "eas_kcd_proxy_tokens_ahead_total{result=\"ready\"} %llu\n"
	    "eas_kcd_proxy_tokens_ahead_total{result=\"waited\"} %llu\n"
	    "eas_kcd_proxy_tokens_ahead_total{result=\"unused\"} %llu\n",
	    (unsigned long long)t.tokens_ahead_ready, (unsigned long long)t.tokens_ahead_waited,
	    (unsigned long long)t.tokens_ahead_unused);
	emit(&o, "# HELP eas_kcd_proxy_ldap_lookups_total Directory lookups.\n"
	    "# TYPE eas_kcd_proxy_ldap_lookups_total counter\n"
	    "eas_kcd_proxy_ldap_lookups_total{result=\"ok\"} %llu\n"
	    "eas_kcd_proxy_ldap_lookups_total{result=\"error\"} %llu\n"
	    "# HELP eas_kcd_proxy_workers Running worker processes.\n"
	    "# TYPE eas_kcd_proxy_workers gauge\n"
	    "eas_kcd_proxy_workers %u\n",
	    (unsigned long long)(t.ldap_lookups - t.ldap_errors),
	    (unsigned long long)t.ldap_errors, workers);
	emit(&o, "# HELP eas_kcd_proxy_kcd_tgt_valid 1 while kcd holds the proxy's own TGT "
	    "(/readyz needs it), else 0.\n"
	    "# TYPE eas_kcd_proxy_kcd_tgt_valid gauge\n"
	    "eas_kcd_proxy_kcd_tgt_valid %u\n"
	    "# HELP eas_kcd_proxy_kcd_tgt_end_seconds When the proxy's TGT ends (Unix time; "
	    "in the past: expired), 0 before kcd ever had one.\n"
	    "# TYPE eas_kcd_proxy_kcd_tgt_end_seconds gauge\n", tgt_valid);
	if (tgt_end == INT64_MAX)
		emit(&o, "eas_kcd_proxy_kcd_tgt_end_seconds +Inf\n");
	else
		emit(&o, "eas_kcd_proxy_kcd_tgt_end_seconds %lld\n", (long long)tgt_end);
	return o.full ? 0 : o.n;
}
