/* Unit tests for metrics.c: slots, folding, Prometheus text. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <string.h>
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

static void
small_buffer_renders_nothing(void **state)
{
	struct metrics_shm *m = metrics_shm_create();
	char buf[64];

	(void)state;
	assert_int_equal(metrics_render(m, buf, sizeof(buf)), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(counters_survive_a_child_exit),
		cmocka_unit_test(kdc_histogram_is_cumulative),
		cmocka_unit_test(small_buffer_renders_nothing),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
