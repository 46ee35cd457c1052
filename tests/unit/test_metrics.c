/* Unit tests for metrics.c: slots, folding, Prometheus text. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "metrics.h"

static void
counters_survive_a_child_exit(void **state)
{
	struct metrics_shm *m = metrics_shm_create();
	static char buf[65536];
	int a, b;

	(void)state;
	assert_non_null(m);
	a = metrics_slot_alloc(m, SLOT_WORKER);
	b = metrics_slot_alloc(m, SLOT_WORKER);
	assert_true(a >= 0 && b >= 0 && a != b);

	metrics_attach(m, a);
	metrics_count_request(REASON_OK, 200);
	metrics_count_request(REASON_OK, 200);
	metrics_count_request(REASON_KDC_USER, 403);
	metrics_self()->conns_open = 3;
	metrics_attach(m, b);
	metrics_count_request(REASON_OK, 200);

	assert_true(metrics_render(m, buf, sizeof(buf)) > 0);
	assert_non_null(strstr(buf, "eas_kcd_proxy_requests_total{reason=\"ok\",status=\"2xx\"} 3\n"));
	assert_non_null(strstr(buf, "eas_kcd_proxy_requests_total{reason=\"kdc_unknown\",status=\"4xx\"} 1\n"));
	assert_non_null(strstr(buf, "eas_kcd_proxy_connections_open 3\n"));

	/* worker a exits: its counters stay, its gauges go */
	metrics_slot_release(m, a);
	assert_true(metrics_render(m, buf, sizeof(buf)) > 0);
	assert_non_null(strstr(buf, "eas_kcd_proxy_requests_total{reason=\"ok\",status=\"2xx\"} 3\n"));
	assert_non_null(strstr(buf, "eas_kcd_proxy_connections_open 0\n"));
	assert_non_null(strstr(buf, "eas_kcd_proxy_workers 1\n"));
	assert_int_equal(metrics_slot_alloc(m, SLOT_KCD), a);	/* slot reused */
}

static void
kdc_histogram_is_cumulative(void **state)
{
	struct metrics_shm *m = metrics_shm_create();
	static char buf[65536];

	(void)state;
	metrics_attach(m, metrics_slot_alloc(m, SLOT_KCD));
	metrics_kdc_latency(1);
	metrics_kdc_latency(7);
	metrics_kdc_latency(100000);
	assert_true(metrics_render(m, buf, sizeof(buf)) > 0);
	assert_non_null(strstr(buf, "eas_kcd_proxy_kdc_latency_seconds_bucket{le=\"0.001\"} 1\n"));
	assert_non_null(strstr(buf, "eas_kcd_proxy_kdc_latency_seconds_bucket{le=\"0.010\"} 2\n"));
	assert_non_null(strstr(buf, "eas_kcd_proxy_kdc_latency_seconds_bucket{le=\"5.000\"} 2\n"));
	assert_non_null(strstr(buf, "eas_kcd_proxy_kdc_latency_seconds_bucket{le=\"+Inf\"} 3\n"));
	assert_non_null(strstr(buf, "eas_kcd_proxy_kdc_latency_seconds_count 3\n"));
}

/* kcd's tokens by route and its own AS exchanges: series of their own,
 * always rendered (0 before any), kept when kcd exits, and apart from the
 * S4U exchanges of eas_kcd_proxy_kdc_requests_total. */
static void
kcd_token_routes_and_tgt_acquisitions(void **state)
{
	struct metrics_shm *m = metrics_shm_create();
	static char buf[65536];
	struct metrics_slot *k;
	int a, b;

	(void)state;
	assert_non_null(m);
	a = metrics_slot_alloc(m, SLOT_KCD);
	assert_true(a >= 0);
	assert_true(metrics_render(m, buf, sizeof(buf)) > 0);
	assert_non_null(strstr(buf, "# TYPE eas_kcd_proxy_kcd_tokens_total counter\n"
	    "eas_kcd_proxy_kcd_tokens_total{route=\"fast\"} 0\n"
	    "eas_kcd_proxy_kcd_tokens_total{route=\"gss\"} 0\n"));
	assert_non_null(strstr(buf, "# TYPE eas_kcd_proxy_kcd_fast_fallbacks_total counter\n"
	    "eas_kcd_proxy_kcd_fast_fallbacks_total 0\n"));
	assert_non_null(strstr(buf, "# TYPE eas_kcd_proxy_kcd_tgt_acquisitions_total counter\n"
	    "eas_kcd_proxy_kcd_tgt_acquisitions_total{result=\"ok\"} 0\n"
	    "eas_kcd_proxy_kcd_tgt_acquisitions_total{result=\"error\"} 0\n"));
	assert_non_null(strstr(buf, "# HELP eas_kcd_proxy_kcd_tokens_total "));
	assert_non_null(strstr(buf, "# HELP eas_kcd_proxy_kcd_fast_fallbacks_total "));
	assert_non_null(strstr(buf, "# HELP eas_kcd_proxy_kcd_tgt_acquisitions_total "));

	/* kcd published: 1 cold token (one S4U exchange), 41 warm, 2 of
	 * which fell back to GSS; one TGT after two failed tries */
	k = &m->slot[a];
	k->kdc_requests = 1;
	k->kcd_tokens_gss = 3;
	k->kcd_tokens_fast = 39;
	k->kcd_fast_fallbacks = 2;
	k->kcd_tgt_errors = 2;
	k->kcd_tgt_ok = 1;
	assert_true(metrics_render(m, buf, sizeof(buf)) > 0);
	assert_non_null(strstr(buf, "eas_kcd_proxy_kcd_tokens_total{route=\"fast\"} 39\n"
	    "eas_kcd_proxy_kcd_tokens_total{route=\"gss\"} 3\n"));
	assert_non_null(strstr(buf, "eas_kcd_proxy_kcd_fast_fallbacks_total 2\n"));
	assert_non_null(strstr(buf, "eas_kcd_proxy_kcd_tgt_acquisitions_total{result=\"ok\"} 1\n"
	    "eas_kcd_proxy_kcd_tgt_acquisitions_total{result=\"error\"} 2\n"));
	assert_non_null(strstr(buf, "\neas_kcd_proxy_kdc_requests_total 1\n"));
	assert_non_null(strstr(buf, "\neas_kcd_proxy_kdc_latency_seconds_count 0\n"));

	/* kcd restarts: the old one's counts stay, the new one's add up */
	metrics_slot_release(m, a);
	b = metrics_slot_alloc(m, SLOT_KCD);
	assert_true(b >= 0);
	m->slot[b].kcd_tokens_fast = 1;
	m->slot[b].kcd_tgt_ok = 1;
	assert_true(metrics_render(m, buf, sizeof(buf)) > 0);
	assert_non_null(strstr(buf, "eas_kcd_proxy_kcd_tokens_total{route=\"fast\"} 40\n"
	    "eas_kcd_proxy_kcd_tokens_total{route=\"gss\"} 3\n"));
	assert_non_null(strstr(buf, "eas_kcd_proxy_kcd_fast_fallbacks_total 2\n"));
	assert_non_null(strstr(buf, "eas_kcd_proxy_kcd_tgt_acquisitions_total{result=\"ok\"} 2\n"
	    "eas_kcd_proxy_kcd_tgt_acquisitions_total{result=\"error\"} 2\n"));
}

static void
small_buffer_renders_nothing(void **state)
{
	struct metrics_shm *m = metrics_shm_create();
	char buf[64];

	(void)state;
	assert_int_equal(metrics_render(m, buf, sizeof(buf)), 0);
}

/* /readyz: kcd up, its TGT not yet ended, a worker with a backend server up;
 * the missing part is named, the TGT first. */
static void
readyz_needs_the_proxys_tgt(void **state)
{
	struct metrics_shm *m = metrics_shm_create();
	static char buf[65536];
	char why[1024], expect[128];
	struct metrics_slot *k, *w;
	int64_t now = (int64_t)time(NULL);

	(void)state;
	assert_non_null(m);
	k = &m->slot[metrics_slot_alloc(m, SLOT_KCD)];
	w = &m->slot[metrics_slot_alloc(m, SLOT_WORKER)];
	w->backend_servers_up = 1;

	assert_int_equal(metrics_ready(m, why, sizeof(why)), 0);
	assert_string_equal(why, "kcd is not running");

	/* running, before its first check answered */
	k->kcd_ready = 1;
	assert_int_equal(metrics_ready(m, why, sizeof(why)), 0);
	assert_non_null(strstr(why, "kcd: no TGT for the proxy yet"));

	/* the KDC refused the proxy: kcd's cause, as it published it */
	metrics_kcd_tgt(k, 0, "no TGT for HTTP/p@R: C_PRINCIPAL_UNKNOWN: not in the database");
	assert_int_equal(metrics_ready(m, why, sizeof(why)), 0);
	assert_string_equal(why, "kcd: no TGT for HTTP/p@R: C_PRINCIPAL_UNKNOWN: not in the database");
	assert_true(metrics_render(m, buf, sizeof(buf)) > 0);
	assert_non_null(strstr(buf, "# TYPE eas_kcd_proxy_kcd_tgt_valid gauge\n"
	    "eas_kcd_proxy_kcd_tgt_valid 0\n"));
	assert_non_null(strstr(buf, "# TYPE eas_kcd_proxy_kcd_tgt_end_seconds gauge\n"
	    "eas_kcd_proxy_kcd_tgt_end_seconds 0\n"));

	/* it has one: ready, and the gauges say until when */
	metrics_kcd_tgt(k, now + 3600, "");
	assert_int_equal(metrics_ready(m, why, sizeof(why)), 1);
	assert_string_equal(why, "ready");
	assert_true(metrics_render(m, buf, sizeof(buf)) > 0);
	assert_non_null(strstr(buf, "eas_kcd_proxy_kcd_tgt_valid 1\n"));
	snprintf(expect, sizeof(expect), "eas_kcd_proxy_kcd_tgt_end_seconds %lld\n",
	    (long long)(now + 3600));
	assert_non_null(strstr(buf, expect));

	/* a failed renewal while it lasts changes nothing */
	metrics_kcd_tgt(k, now + 60, "renewing the TGT for HTTP/p@R failed: KDC_UNREACH: x");
	assert_int_equal(metrics_ready(m, why, sizeof(why)), 1);

	/* past its end: not ready, with the end and the failed renewal */
	metrics_kcd_tgt(k, 86400, "renewing the TGT for HTTP/p@R failed: KDC_UNREACH: x");
	assert_int_equal(metrics_ready(m, why, sizeof(why)), 0);
	assert_string_equal(why, "kcd: the proxy's TGT expired at 1970-01-02T00:00:00Z; "
	    "renewing the TGT for HTTP/p@R failed: KDC_UNREACH: x");
	assert_true(metrics_render(m, buf, sizeof(buf)) > 0);
	assert_non_null(strstr(buf, "eas_kcd_proxy_kcd_tgt_valid 0\n"));
	assert_non_null(strstr(buf, "eas_kcd_proxy_kcd_tgt_end_seconds 86400\n"));

	/* a TGT without an end; then the backend is what is missing */
	metrics_kcd_tgt(k, INT64_MAX, NULL);
	assert_int_equal(metrics_ready(m, why, sizeof(why)), 1);
	assert_true(metrics_render(m, buf, sizeof(buf)) > 0);
	assert_non_null(strstr(buf, "eas_kcd_proxy_kcd_tgt_end_seconds +Inf\n"));
	w->backend_servers_up = 0;
	assert_int_equal(metrics_ready(m, why, sizeof(why)), 0);
	assert_string_equal(why, "no backend server is up");

	/* a cause longer than the slot holds is cut, never overrun */
	memset(why, 'x', sizeof(why) - 1);
	why[sizeof(why) - 1] = '\0';
	metrics_kcd_tgt(k, 0, why);
	assert_int_equal(metrics_ready(m, why, sizeof(why)), 0);
	assert_int_equal(strlen(why), strlen("kcd: ") + sizeof(k->kcd_tgt_why) - 1);
	/* and a small answer buffer gets a terminated prefix */
	assert_int_equal(metrics_ready(m, expect, 8), 0);
	assert_string_equal(expect, "kcd: xx");

	/* kcd gone (its slot released): not running, whatever it held */
	metrics_slot_release(m, (int)(k - m->slot));
	assert_int_equal(metrics_ready(m, why, sizeof(why)), 0);
	assert_string_equal(why, "kcd is not running");
}

/* A reload: while generation 2 starts, generation 1 serves and is what
 * /readyz judges; once generation 1 drains (the parent marks its slots),
 * only generation 2 counts, so its kcd without a TGT (a keytab the KDC
 * refuses) makes the proxy not ready though the draining kcd still holds
 * one; the gauges follow the serving kcd too. */
static void
readyz_judges_the_serving_generation(void **state)
{
	struct metrics_shm *m = metrics_shm_create();
	static char buf[65536];
	char why[1024], expect[128];
	int64_t now = (int64_t)time(NULL);
	int k1, w1, k2, w2;

	(void)state;
	assert_non_null(m);
	k1 = metrics_slot_alloc(m, SLOT_KCD);
	w1 = metrics_slot_alloc(m, SLOT_WORKER);
	m->slot[k1].kcd_ready = 1;
	metrics_kcd_tgt(&m->slot[k1], now + 3600, "");
	m->slot[w1].backend_servers_up = 1;
	assert_int_equal(metrics_ready(m, why, sizeof(why)), 1);

	/* generation 2 starting: its kcd acquiring; generation 1 serves */
	k2 = metrics_slot_alloc(m, SLOT_KCD);
	w2 = metrics_slot_alloc(m, SLOT_WORKER);
	m->slot[k2].kcd_ready = 1;
	metrics_kcd_tgt(&m->slot[k2], 0, "no TGT for HTTP/p@R yet: acquiring it from the keytab");
	m->slot[w2].backend_servers_up = 1;
	assert_int_equal(metrics_ready(m, why, sizeof(why)), 1);

	/* generation 2 serves, generation 1 drains with its TGT */
	metrics_slot_retire(m, k1);
	metrics_slot_retire(m, w1);
	m->slot[k1].kcd_tokens_gss = 7;		/* still counted */
	assert_int_equal(metrics_ready(m, why, sizeof(why)), 0);
	assert_string_equal(why, "kcd: no TGT for HTTP/p@R yet: acquiring it from the keytab");
	metrics_kcd_tgt(&m->slot[k2], 0, "no TGT for HTTP/p@R: BAD_INTEGRITY: x");
	assert_int_equal(metrics_ready(m, why, sizeof(why)), 0);
	assert_string_equal(why, "kcd: no TGT for HTTP/p@R: BAD_INTEGRITY: x");
	assert_true(metrics_render(m, buf, sizeof(buf)) > 0);
	assert_non_null(strstr(buf, "eas_kcd_proxy_kcd_tgt_valid 0\n"));
	assert_non_null(strstr(buf, "eas_kcd_proxy_kcd_tgt_end_seconds 0\n"));
	assert_non_null(strstr(buf, "eas_kcd_proxy_kcd_tokens_total{route=\"gss\"} 7\n"));

	/* its own TGT makes it ready; the gauges show its end */
	metrics_kcd_tgt(&m->slot[k2], now + 600, "");
	assert_int_equal(metrics_ready(m, why, sizeof(why)), 1);
	assert_true(metrics_render(m, buf, sizeof(buf)) > 0);
	snprintf(expect, sizeof(expect), "eas_kcd_proxy_kcd_tgt_end_seconds %lld\n",
	    (long long)(now + 600));
	assert_non_null(strstr(buf, expect));
	assert_non_null(strstr(buf, "eas_kcd_proxy_kcd_tgt_valid 1\n"));

	/* stopping: every generation drains */
	metrics_slot_retire(m, k2);
	metrics_slot_retire(m, w2);
	assert_int_equal(metrics_ready(m, why, sizeof(why)), 0);
	assert_string_equal(why, "kcd is not running (only a draining generation's)");

	/* a slot used again (a new child) starts serving */
	metrics_slot_release(m, k2);
	k2 = metrics_slot_alloc(m, SLOT_KCD);
	w2 = metrics_slot_alloc(m, SLOT_WORKER);
	m->slot[k2].kcd_ready = 1;
	metrics_kcd_tgt(&m->slot[k2], now + 600, "");
	m->slot[w2].backend_servers_up = 1;
	assert_int_equal(metrics_ready(m, why, sizeof(why)), 1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(counters_survive_a_child_exit),
		cmocka_unit_test(kdc_histogram_is_cumulative),
		cmocka_unit_test(kcd_token_routes_and_tgt_acquisitions),
		cmocka_unit_test(small_buffer_renders_nothing),
		cmocka_unit_test(readyz_needs_the_proxys_tgt),
		cmocka_unit_test(readyz_judges_the_serving_generation),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
