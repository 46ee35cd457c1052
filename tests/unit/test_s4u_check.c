/*
 * test_s4u_check.c — s4u_proxy_check (the proxy's TGT ahead of requests,
 * for /readyz) without a working KDC: the cause of a missing TGT reaches
 * the callback (no keytab; a KDC that refuses connections), one check at a
 * time, and s4u_free with a check in flight calls nothing. Each AS exchange
 * tried (a check's or a request's) is reported to on_tgt_exchange. Obtaining and
 * renewing a real TGT is tested against the lab by
 * tests/integration/test_readyz.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>
#include <event2/event.h>
#include <krb5.h>

#include "krb5test.h"
#include "s4u.h"

#define PROXY	"HTTP/proxy.example.test@EXAMPLE.TEST"

struct world {
	struct krb5test_dir d;
	struct event_base *base;
	struct s4u *s;
	unsigned as_ok, as_err;		/* on_tgt_exchange reports */
};

struct seen {
	unsigned n;
	int ok;
	uint64_t end_ms;
	enum kcd_err_class cls;
	char name[KCD_NAME_MAX];
	char text[KCD_TEXT_MAX];
};

static struct world *current;	/* for the teardown when a test failed */

static void
on_exchange(int ok, void *arg)
{
	struct world *w = arg;

	if (ok)
		w->as_ok++;
	else
		w->as_err++;
}

/* A port on 127.0.0.1 with nothing behind it (UDP and TCP refuse). */
static int
closed_port(void)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_DGRAM, 0), port;

	assert_true(fd >= 0);
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	port = ntohs(sa.sin_port);
	close(fd);
	return port;
}

static void
world_up(struct world *w, int with_keytab)
{
	struct s4u_params p = {
		.credential_ttl_ms = 600000, .negative_ttl_ms = 30000,
		.kdc_timeout_ms = 3000, .kdc_concurrency = 2,
	};
	char err[256];

	memset(w, 0, sizeof(*w));
	krb5test_dir_make(&w->d, "test_s4u_check");
	current = w;
	krb5test_write_conf(w->d.krb5_conf, closed_port());
	if (with_keytab)
		krb5test_make_keytab(w->d.keytab, PROXY);
	assert_int_equal(s4u_env_init(w->d.krb5_conf, err, sizeof(err)), 0);
	assert_non_null(w->base = event_base_new());
	p.keytab = w->d.keytab;
	p.principal = PROXY;
	p.on_tgt_exchange = on_exchange;
	p.tgt_arg = w;
	if ((w->s = s4u_new(w->base, &p, err, sizeof(err))) == NULL)
		fail_msg("s4u_new: %s", err);
}

static void
world_down(struct world *w)
{
	current = NULL;
	if (w->s != NULL)
		s4u_free(w->s);
	if (w->base != NULL)
		event_base_free(w->base);
	krb5test_dir_remove(&w->d);
}

static int
teardown(void **state)
{
	(void)state;
	if (current != NULL)
		world_down(current);
	return 0;
}

static void
on_state(const struct s4u_proxy_state *st, void *arg)
{
	struct seen *seen = arg;

	seen->n++;
	seen->ok = st->ok;
	seen->end_ms = st->end_ms;
	seen->cls = st->cls;
	snprintf(seen->name, sizeof(seen->name), "%s", st->ok ? "" : st->name);
	snprintf(seen->text, sizeof(seen->text), "%s", st->ok ? "" : st->text);
}

struct tok {
	unsigned n;
	int ok, fast;
};

static void
on_token(const struct s4u_result *res, void *arg)
{
	struct tok *t = arg;

	t->n++;
	t->ok = res->ok;
	t->fast = res->fast;
}

static void
run_until(struct world *w, struct seen *seen, unsigned n)
{
	while (seen->n < n)
		assert_true(event_base_loop(w->base, EVLOOP_ONCE) >= 0);
}

static void
test_no_keytab_is_no_tgt_with_the_cause(void **state)
{
	struct world w;
	struct seen seen = { 0 };

	(void)state;
	world_up(&w, 0);
	assert_int_equal(s4u_proxy_check(w.s, on_state, &seen), 0);
	assert_int_equal(seen.n, 0);		/* never from inside the call */
	run_until(&w, &seen, 1);
	assert_int_equal(seen.ok, 0);
	assert_int_equal(seen.end_ms, 0);
	assert_int_equal(seen.cls, KCD_ERR_PROXY);
	assert_true(seen.name[0] != '\0');
	if (strstr(seen.text, PROXY) == NULL || strstr(seen.text, w.d.keytab) == NULL)
		fail_msg("the cause names neither the principal nor the keytab: %s", seen.text);
	/* a failed acquisition, reported before the check's answer */
	assert_int_equal(w.as_ok, 0);
	assert_int_equal(w.as_err, 1);
	world_down(&w);
}

static void
test_kdc_refusing_is_unreachable_and_checks_go_one_at_a_time(void **state)
{
	struct world w;
	struct seen seen = { 0 };
	struct tok tok = { 0 };

	(void)state;
	world_up(&w, 1);
	assert_int_equal(s4u_proxy_check(w.s, on_state, &seen), 0);
	assert_int_equal(s4u_proxy_check(w.s, on_state, &seen), -1);	/* one in flight */
	run_until(&w, &seen, 1);
	assert_int_equal(seen.ok, 0);
	assert_int_equal(seen.cls, KCD_ERR_UNREACHABLE);
	assert_string_equal(seen.name, "KDC_UNREACH");
	assert_int_equal(seen.end_ms, 0);
	/* answered: the next check may start, and asks again (nothing cached) */
	assert_int_equal(s4u_proxy_check(w.s, on_state, &seen), 0);
	run_until(&w, &seen, 2);
	assert_string_equal(seen.name, "KDC_UNREACH");
	assert_int_equal(w.as_err, 2);
	/* a request's own acquisition (its leader's) is reported the same */
	assert_int_equal(s4u_token_request(w.s, "alice@EXAMPLE.TEST", "HTTP@exchange.example.test",
	    NULL, 0, 0, on_token, &tok, NULL), 0);
	while (tok.n == 0)
		assert_true(event_base_loop(w.base, EVLOOP_ONCE) >= 0);
	assert_int_equal(tok.ok, 0);
	assert_int_equal(tok.fast, 0);
	assert_int_equal(w.as_ok, 0);
	assert_int_equal(w.as_err, 3);
	world_down(&w);
}

static void
test_free_with_a_check_in_flight_calls_nothing(void **state)
{
	struct world w;
	struct seen seen = { 0 };

	(void)state;
	world_up(&w, 1);
	assert_int_equal(s4u_proxy_check(w.s, on_state, &seen), 0);
	s4u_free(w.s);			/* waits for the exchange, drops the answer */
	w.s = NULL;
	assert_int_equal(seen.n, 0);
	assert_int_equal(w.as_ok + w.as_err, 0);
	world_down(&w);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_no_keytab_is_no_tgt_with_the_cause, teardown),
		cmocka_unit_test_teardown(test_kdc_refusing_is_unreachable_and_checks_go_one_at_a_time,
		    teardown),
		cmocka_unit_test_teardown(test_free_with_a_check_in_flight_calls_nothing, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
