/*
 * test_policy.c — policy.c: the [devices] lists (parsing, lookups, which
 * requests they judge), the authorize and identity hooks answered inside
 * the hook or later through the loop, cancellation from either side, the
 * call registry outliving a policy, and the log hook's record.
 *
 * Files come from $EKP_SRCDIR (default "."): tests/conf/good/devices.conf
 * and minimal.conf with their lists in tests/conf/files/.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "access_log.h"
#include "certgen.h"
#include "config.h"
#include "identity.h"
#include "policy.h"

static const char *
srcdir(void)
{
	const char *s = getenv("EKP_SRCDIR");

	return s && *s ? s : ".";
}

static struct config *
load(const char *rel)
{
	struct config_errors errs = { 0 };
	struct config *cfg;
	char *p = NULL;

	assert_true(asprintf(&p, "%s/%s", srcdir(), rel) > 0);
	cfg = config_load(p, &errs);
	for (unsigned i = 0; i < errs.n; i++)
		print_message("%s\n", errs.msg[i]);
	assert_non_null(cfg);
	config_errors_clear(&errs);
	free(p);
	return cfg;
}

static struct eas_kcd_proxy_request
request(const char *device, const char *cmd)
{
	struct eas_kcd_proxy_request r = {
		.user = "alice@EXAMPLE.TEST", .device_id = device, .device_type = "iPhone",
		.cmd = cmd, .method = cmd[0] ? "POST" : "OPTIONS",
		.path = "/Microsoft-Server-ActiveSync", .client_ip = "192.0.2.7",
		.user_agent = "Apple-iPhone/1",
	};

	return r;
}

/* ---- lists -------------------------------------------------------------------- */

static void
test_list_parse(void **state)
{
	static const char text[] =
	    "# fleet A\n"
	    "  ApplF17XK2ALHG7F  \r\n"
	    "\n"
	    "androidc1234567890\n"
	    "\t# indented comment\n"
	    "ApplF17XK2ALHG7F\n"		/* twice is fine */
	    "last-without-newline";
	char err[256] = "";
	struct policy_list *l = policy_list_parse("t", text, strlen(text), err, sizeof(err));

	(void)state;
	assert_non_null(l);
	assert_int_equal(policy_list_count(l), 4);
	assert_true(policy_list_has(l, "ApplF17XK2ALHG7F"));
	assert_true(policy_list_has(l, "applf17xk2alhg7f"));	/* case-insensitive */
	assert_true(policy_list_has(l, "ANDROIDC1234567890"));
	assert_true(policy_list_has(l, "last-without-newline"));
	assert_false(policy_list_has(l, "ApplF17XK2ALHG7"));	/* whole ids only */
	assert_false(policy_list_has(l, ""));
	assert_false(policy_list_has(l, "# fleet A"));
	assert_false(policy_list_has(NULL, "x"));
	policy_list_free(l);

	l = policy_list_parse("t", "", 0, err, sizeof(err));
	assert_non_null(l);
	assert_int_equal(policy_list_count(l), 0);
	policy_list_free(l);
}

static void
test_list_refuses_bad_lines(void **state)
{
	static const struct {
		const char *text, *want;
	} bad[] = {
		{ "good\ntwo words\n", "t:2: byte 0x20 in a DeviceId" },
		{ "\n\nnon\x01print\n", "t:3: byte 0x01" },
		{ "caf\xc3\xa9\n", "t:1: byte 0xc3" },
		{ "0123456789012345678901234567890123456789012345678901234567890123456789\n",
		  "t:1: a DeviceId of 70 characters; EAS DeviceIds have at most 64" },
	};
	char err[256];

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		assert_null(policy_list_parse("t", bad[i].text, strlen(bad[i].text), err,
		    sizeof(err)));
		if (strstr(err, bad[i].want) == NULL)
			fail_msg("case %zu: '%s' does not say '%s'", i, err, bad[i].want);
	}
	assert_null(policy_list_load("/nonexistent/devices.txt", err, sizeof(err)));
	assert_non_null(strstr(err, "cannot read device list /nonexistent/devices.txt: No such file"));
}

/* The lists of tests/conf/good/devices.conf: allow ApplF17XK2ALHG7F and
 * androidc1234567890, deny LOSTPHONE0001. */
static void
test_device_lists(void **state)
{
	struct event_base *base = event_base_new();
	struct config *cfg = load("tests/conf/good/devices.conf");
	struct policy_verdict v;
	struct eas_kcd_proxy_request r;
	char err[256];
	struct policy *pol = policy_new(cfg, base, NULL, err, sizeof(err));

	(void)state;
	assert_non_null(pol);
	r = request("ApplF17XK2ALHG7F", "Sync");
	assert_null(policy_authorize(pol, &r, &v, NULL, NULL));
	assert_int_equal(v.reason, REASON_OK);
	r = request("APPLF17XK2ALHG7F", "FolderSync");
	assert_null(policy_authorize(pol, &r, &v, NULL, NULL));
	assert_int_equal(v.reason, REASON_OK);

	r = request("LOSTPHONE0001", "Sync");		/* denied (and not allowed) */
	assert_null(policy_authorize(pol, &r, &v, NULL, NULL));
	assert_int_equal(v.reason, REASON_DEVICE_DENIED);
	assert_string_equal(v.detail, "deny_file");

	r = request("SomeOtherPhone", "Sync");		/* not in allow_file */
	assert_null(policy_authorize(pol, &r, &v, NULL, NULL));
	assert_int_equal(v.reason, REASON_DEVICE_DENIED);
	assert_string_equal(v.detail, "allow_file");

	r = request("", "Sync");			/* a command, no DeviceId */
	assert_null(policy_authorize(pol, &r, &v, NULL, NULL));
	assert_int_equal(v.reason, REASON_DEVICE_DENIED);
	assert_string_equal(v.detail, "allow_file");

	r = request("", "");				/* OPTIONS, Autodiscover */
	assert_null(policy_authorize(pol, &r, &v, NULL, NULL));
	assert_int_equal(v.reason, REASON_OK);

	policy_free(pol);
	config_free(cfg);
	event_base_free(base);
}

/* Without lists every device passes; a list that does not parse stops the
 * policy with the file and line. */
static void
test_no_lists_and_bad_list(void **state)
{
	struct event_base *base = event_base_new();
	struct config *cfg = load("tests/conf/good/minimal.conf");
	struct policy_verdict v;
	struct eas_kcd_proxy_request r = request("AnyPhone", "Sync");
	char err[512], dir[] = "/tmp/ekp-test-policy-XXXXXX", path[600];
	struct policy *pol = policy_new(cfg, base, NULL, err, sizeof(err));
	FILE *fp;

	(void)state;
	assert_non_null(pol);
	assert_null(policy_authorize(pol, &r, &v, NULL, NULL));
	assert_int_equal(v.reason, REASON_OK);
	policy_free(pol);

	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/deny.txt", dir);
	assert_non_null(fp = fopen(path, "w"));
	fputs("ok1\nnot ok\n", fp);
	fclose(fp);
	cfg->devices.deny_file = strdup(path);		/* freed by config_free */
	err[0] = '\0';
	assert_null(policy_new(cfg, base, NULL, err, sizeof(err)));
	assert_non_null(strstr(err, ":2: byte 0x20 in a DeviceId"));
	assert_non_null(strstr(err, path));
	unlink(path);
	rmdir(dir);
	config_free(cfg);
	event_base_free(base);
}

/* ---- the authorize hook ---------------------------------------------------------- */

struct hookstate {
	int calls;
	struct eas_kcd_proxy_call *call;	/* the last one */
	int answer_now;				/* answer inside the hook */
	enum eas_kcd_proxy_verdict verdict;
	char device[80], cmd[32], user[80], ip[64];
	/* the asker's callback */
	int answered;
	struct policy_verdict got;
};

static void
authorize_hook(struct eas_kcd_proxy_call *call, const struct eas_kcd_proxy_request *rq, void *arg)
{
	struct hookstate *h = arg;

	h->calls++;
	h->call = call;
	snprintf(h->device, sizeof(h->device), "%s", rq->device_id);
	snprintf(h->cmd, sizeof(h->cmd), "%s", rq->cmd);
	snprintf(h->user, sizeof(h->user), "%s", rq->user);
	snprintf(h->ip, sizeof(h->ip), "%s", rq->client_ip);
	if (h->answer_now)
		assert_int_equal(eas_kcd_proxy_authorize_done(call, h->verdict), EAS_KCD_PROXY_OK);
}

static void
on_verdict(const struct policy_verdict *v, void *arg)
{
	struct hookstate *h = arg;

	h->answered++;
	h->got = *v;
}

struct fixture {
	struct event_base *base;
	struct config *cfg;
	struct policy_hooks hooks;
	struct policy *pol;
	struct hookstate h;
};

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	char err[256];

	assert_non_null(f);
	f->base = event_base_new();
	f->cfg = load("tests/conf/good/minimal.conf");
	f->hooks.authorize = authorize_hook;
	f->hooks.authorize_arg = &f->h;
	f->pol = policy_new(f->cfg, f->base, &f->hooks, err, sizeof(err));
	assert_non_null(f->pol);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	policy_free(f->pol);
	policy_hooks_release(&f->hooks);
	config_free(f->cfg);
	event_base_free(f->base);
	free(f);
	return 0;
}

static void
test_authorize_answered_in_hook(void **state)
{
	struct fixture *f = *state;
	struct eas_kcd_proxy_request r = request("PHONE1", "Sync");
	struct policy_verdict v;

	f->h.answer_now = 1;
	f->h.verdict = EAS_KCD_PROXY_ALLOW;
	assert_null(policy_authorize(f->pol, &r, &v, on_verdict, &f->h));
	assert_int_equal(v.reason, REASON_OK);
	assert_int_equal(f->h.calls, 1);
	assert_string_equal(f->h.device, "PHONE1");
	assert_string_equal(f->h.cmd, "Sync");
	assert_string_equal(f->h.user, "alice@EXAMPLE.TEST");
	assert_string_equal(f->h.ip, "192.0.2.7");

	f->h.verdict = EAS_KCD_PROXY_DENY;
	assert_null(policy_authorize(f->pol, &r, &v, on_verdict, &f->h));
	assert_int_equal(v.reason, REASON_DEVICE_DENIED);
	assert_string_equal(v.detail, "hook");
	event_base_loop(f->base, EVLOOP_NONBLOCK);
	assert_int_equal(f->h.answered, 0);		/* answered inline: no callback */
	assert_null(f->hooks.calls);			/* nothing left registered */
}

/* A later answer reaches the asker through the loop, not from inside
 * eas_kcd_proxy_authorize_done; the request strings stay valid until it. */
static void
test_authorize_answered_later(void **state)
{
	struct fixture *f = *state;
	char dev[] = "PHONE2";
	struct eas_kcd_proxy_request r = request(dev, "Sync");
	struct policy_verdict v;
	struct policy_call *c;

	c = policy_authorize(f->pol, &r, &v, on_verdict, &f->h);
	assert_non_null(c);
	memset(dev, 'X', 5);				/* the asker's copy changes */
	assert_non_null(f->hooks.calls);
	assert_int_equal(eas_kcd_proxy_authorize_done(f->h.call, EAS_KCD_PROXY_ALLOW),
	    EAS_KCD_PROXY_OK);
	assert_int_equal(f->h.answered, 0);
	event_base_loop(f->base, EVLOOP_NONBLOCK);
	assert_int_equal(f->h.answered, 1);
	assert_int_equal(f->h.got.reason, REASON_OK);
	assert_null(f->hooks.calls);
}

static void
test_authorize_answer_twice_or_wrong(void **state)
{
	struct fixture *f = *state;
	struct eas_kcd_proxy_request r = request("PHONE3", "Sync");
	struct policy_verdict v;

	assert_non_null(policy_authorize(f->pol, &r, &v, on_verdict, &f->h));
	/* a verdict that is none: denied, and said so */
	assert_int_equal(eas_kcd_proxy_authorize_done(f->h.call, (enum eas_kcd_proxy_verdict)7),
	    EAS_KCD_PROXY_E_INVALID);
	/* the call is consumed: a second answer is refused, not applied */
	assert_int_equal(eas_kcd_proxy_authorize_done(f->h.call, EAS_KCD_PROXY_ALLOW),
	    EAS_KCD_PROXY_E_INVALID);
	event_base_loop(f->base, EVLOOP_NONBLOCK);
	assert_int_equal(f->h.answered, 1);
	assert_int_equal(f->h.got.reason, REASON_DEVICE_DENIED);
	assert_int_equal(eas_kcd_proxy_authorize_done(NULL, EAS_KCD_PROXY_ALLOW),
	    EAS_KCD_PROXY_E_INVALID);
	/* an identity answer to an authorize call is refused too */
	assert_non_null(policy_authorize(f->pol, &r, &v, on_verdict, &f->h));
	assert_int_equal(eas_kcd_proxy_identity_done(f->h.call, EAS_KCD_PROXY_IDENTITY_KEEP, NULL),
	    EAS_KCD_PROXY_E_INVALID);
	assert_int_equal(eas_kcd_proxy_authorize_done(f->h.call, EAS_KCD_PROXY_ALLOW),
	    EAS_KCD_PROXY_OK);
	event_base_loop(f->base, EVLOOP_NONBLOCK);
	assert_int_equal(f->h.answered, 2);
}

/* The asker goes away (connection closed) before or after the answer: its
 * callback never runs and nothing leaks (LeakSanitizer checks). */
static void
test_authorize_cancelled(void **state)
{
	struct fixture *f = *state;
	struct eas_kcd_proxy_request r = request("PHONE4", "Sync");
	struct policy_verdict v;
	struct policy_call *c;

	c = policy_authorize(f->pol, &r, &v, on_verdict, &f->h);
	assert_non_null(c);
	policy_cancel(c);				/* before the answer */
	assert_int_equal(eas_kcd_proxy_authorize_done(f->h.call, EAS_KCD_PROXY_ALLOW),
	    EAS_KCD_PROXY_OK);
	c = policy_authorize(f->pol, &r, &v, on_verdict, &f->h);
	assert_non_null(c);
	assert_int_equal(eas_kcd_proxy_authorize_done(f->h.call, EAS_KCD_PROXY_ALLOW),
	    EAS_KCD_PROXY_OK);
	policy_cancel(c);				/* answered, not delivered yet */
	event_base_loop(f->base, EVLOOP_NONBLOCK);
	assert_int_equal(f->h.answered, 0);
	assert_null(f->hooks.calls);
	policy_cancel(NULL);
}

static void
test_quarantine(void **state)
{
	struct fixture *f = *state;
	static const struct {
		const char *device, *cmd;
		enum reason want;
	} cases[] = {
		{ "PHONE5", "Sync", REASON_DEVICE_QUARANTINED },
		{ "PHONE5", "SendMail", REASON_DEVICE_QUARANTINED },
		{ "PHONE5", "Provision", REASON_OK },
		{ "PHONE5", "settings", REASON_OK },
		{ "", "", REASON_OK },				/* OPTIONS */
	};
	struct policy_verdict v;

	f->h.answer_now = 1;
	f->h.verdict = EAS_KCD_PROXY_QUARANTINE;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct eas_kcd_proxy_request r = request(cases[i].device, cases[i].cmd);

		assert_null(policy_authorize(f->pol, &r, &v, on_verdict, &f->h));
		if (v.reason != cases[i].want)
			fail_msg("quarantined %s: reason %d, expected %d", cases[i].cmd,
			    v.reason, cases[i].want);
	}
}

/* A generation's policy may go before the embedding program answers: the
 * call stays valid on the registry, the late answer is dropped, and
 * policy_hooks_release frees what was never answered. */
static void
test_calls_outlive_their_policy(void **state)
{
	struct fixture *f = *state;
	struct eas_kcd_proxy_request r = request("PHONE6", "Sync");
	struct eas_kcd_proxy_call *first, *second;
	struct policy_verdict v;
	struct policy_call *c;

	c = policy_authorize(f->pol, &r, &v, on_verdict, &f->h);
	assert_non_null(c);
	first = f->h.call;
	policy_cancel(c);
	c = policy_authorize(f->pol, &r, &v, on_verdict, &f->h);
	assert_non_null(c);
	second = f->h.call;
	policy_cancel(c);
	policy_free(f->pol);				/* the generation is gone */
	f->pol = NULL;
	assert_int_equal(eas_kcd_proxy_authorize_done(first, EAS_KCD_PROXY_DENY),
	    EAS_KCD_PROXY_OK);
	assert_non_null(f->hooks.calls);		/* second, never answered */
	(void)second;
	policy_hooks_release(&f->hooks);
	assert_null(f->hooks.calls);
	event_base_loop(f->base, EVLOOP_NONBLOCK);
	assert_int_equal(f->h.answered, 0);
}

/* ---- the identity hook -------------------------------------------------------------- */

struct idstate {
	int calls;
	struct eas_kcd_proxy_call *call;
	enum eas_kcd_proxy_identity_verdict verdict;
	const char *principal;
	int answer_now;
	int rc;
	size_t der_len;
	char seen_principal[128], seen_detail[64];
	int answered;
	struct policy_identity got;
};

static void
identity_hook(struct eas_kcd_proxy_call *call, const struct eas_kcd_proxy_identity *id, void *arg)
{
	struct idstate *s = arg;

	s->calls++;
	s->call = call;
	s->der_len = id->cert_der_len;
	snprintf(s->seen_principal, sizeof(s->seen_principal), "%s", id->principal ? id->principal : "(null)");
	snprintf(s->seen_detail, sizeof(s->seen_detail), "%s", id->detail ? id->detail : "(null)");
	if (s->answer_now)
		s->rc = eas_kcd_proxy_identity_done(call, s->verdict, s->principal);
}

static void
on_identity(const struct policy_identity *id, void *arg)
{
	struct idstate *s = arg;

	s->answered++;
	s->got = *id;
}

static X509 *
device_cert(const char *san)
{
	EVP_PKEY *k = mkkey_ec("P-256");
	struct certopt o = { .cn = "device", .key = k, .not_before = -DAY, .not_after = DAY,
	    .eku = "clientAuth", .san = san };
	X509 *x = mkcert(&o);

	EVP_PKEY_free(k);
	return x;
}

static void
test_identity_hook(void **state)
{
	struct event_base *base = event_base_new();
	struct config *cfg = load("tests/conf/good/minimal.conf");
	struct idstate s = { 0 };
	struct policy_hooks hooks = { .identity = identity_hook, .identity_arg = &s };
	struct identity_params idp;
	struct identity_result *res = malloc(sizeof(*res));
	struct policy_identity out;
	struct policy_call *c;
	char err[256];
	struct policy *pol = policy_new(cfg, base, &hooks, err, sizeof(err));
	X509 *good = device_cert("otherName:1.3.6.1.4.1.311.20.2.3;UTF8:alice@EXAMPLE.TEST");
	X509 *noupn = device_cert("DNS:phone.example.test");

	(void)state;
	assert_non_null(pol);
	assert_non_null(res);
	identity_params_from_config(cfg, &idp);

	/* KEEP, inside the hook: our mapping stands; the hook saw it */
	assert_int_equal(identity_map(good, &idp, res), 0);
	s.answer_now = 1;
	s.verdict = EAS_KCD_PROXY_IDENTITY_KEEP;
	assert_null(policy_identify(pol, good, res, "192.0.2.9", &out, on_identity, &s));
	assert_true(out.ok);
	assert_string_equal(out.principal, "alice@EXAMPLE.TEST");
	assert_string_equal(s.seen_principal, "alice@EXAMPLE.TEST");
	assert_string_equal(s.seen_detail, "(null)");
	assert_int_equal(s.der_len, (size_t)i2d_X509(good, NULL));

	/* REPLACE a failed mapping (an inventory knows the device) */
	assert_int_equal(identity_map(noupn, &idp, res), -1);
	s.verdict = EAS_KCD_PROXY_IDENTITY_REPLACE;
	s.principal = "bob@example.test";
	assert_null(policy_identify(pol, noupn, res, "192.0.2.9", &out, on_identity, &s));
	assert_int_equal(s.rc, EAS_KCD_PROXY_OK);
	assert_string_equal(s.seen_detail, "no_upn");
	assert_true(out.ok);
	assert_string_equal(out.principal, "bob@EXAMPLE.TEST");	/* the realm's spelling */

	/* REPLACE with a name the [identity] rules refuse */
	s.principal = "bob@elsewhere.example";
	assert_null(policy_identify(pol, good, res, "192.0.2.9", &out, on_identity, &s));
	assert_int_equal(s.rc, EAS_KCD_PROXY_E_INVALID);
	assert_false(out.ok);
	assert_string_equal(out.detail, "suffix_unmapped");

	/* REFUSE, answered later through the loop */
	assert_int_equal(identity_map(good, &idp, res), 0);
	s.answer_now = 0;
	c = policy_identify(pol, good, res, "192.0.2.9", &out, on_identity, &s);
	assert_non_null(c);
	assert_int_equal(eas_kcd_proxy_identity_done(s.call, EAS_KCD_PROXY_IDENTITY_REFUSE, NULL),
	    EAS_KCD_PROXY_OK);
	assert_int_equal(s.answered, 0);
	event_base_loop(base, EVLOOP_NONBLOCK);
	assert_int_equal(s.answered, 1);
	assert_false(s.got.ok);
	assert_string_equal(s.got.detail, "refused_by_hook");

	/* without a hook: ours, at once */
	hooks.identity = NULL;
	assert_null(policy_identify(pol, good, res, "192.0.2.9", &out, on_identity, &s));
	assert_true(out.ok);
	assert_int_equal(s.calls, 4);

	policy_free(pol);
	policy_hooks_release(&hooks);
	X509_free(good);
	X509_free(noupn);
	free(res);
	config_free(cfg);
	event_base_free(base);
}

/* ---- the log hook ---------------------------------------------------------------------- */

static struct eas_kcd_proxy_log_record logged;
static int nlogged;

static void
log_hook(const struct eas_kcd_proxy_log_record *r, void *arg)
{
	(void)arg;
	logged = *r;		/* the strings are the test's own, still alive */
	nlogged++;
}

static void
test_log_hook(void **state)
{
	struct event_base *base = event_base_new();
	struct config *cfg = load("tests/conf/good/minimal.conf");
	struct policy_hooks hooks = { .log = log_hook };
	char err[256];
	struct policy *pol = policy_new(cfg, base, &hooks, err, sizeof(err));
	struct access_rec a = { .start_ms = 1700000000123ull, .s_ip = "10.0.0.1", .s_port = 443,
	    .c_ip = "192.0.2.7", .method = "POST", .uri_stem = "/Microsoft-Server-ActiveSync",
	    .uri_query = "Cmd=Sync", .username = "alice@EXAMPLE.TEST", .status = 403,
	    .sc_bytes = 10, .cs_bytes = 20, .time_taken_ms = 5, .device_id = "PHONE7",
	    .device_type = "iPhone", .eas_cmd = "Sync", .reason = "device_denied",
	    .kdc_ms = -1 };

	(void)state;
	assert_non_null(pol);
	policy_log(pol, &a);
	assert_int_equal(nlogged, 1);
	assert_int_equal(logged.status, 403);
	assert_string_equal(logged.reason, "device_denied");
	assert_string_equal(logged.device_id, "PHONE7");
	assert_string_equal(logged.username, "alice@EXAMPLE.TEST");
	assert_int_equal(logged.server_port, 443);
	assert_int_equal(logged.bytes_sent, 10);
	assert_int_equal(logged.bytes_received, 20);
	assert_int_equal(logged.kdc_ms, -1);
	assert_null(logged.backend);
	hooks.log = NULL;
	policy_log(pol, &a);
	assert_int_equal(nlogged, 1);
	policy_free(pol);
	config_free(cfg);
	event_base_free(base);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_list_parse),
		cmocka_unit_test(test_list_refuses_bad_lines),
		cmocka_unit_test(test_device_lists),
		cmocka_unit_test(test_no_lists_and_bad_list),
		cmocka_unit_test_setup_teardown(test_authorize_answered_in_hook, setup, teardown),
		cmocka_unit_test_setup_teardown(test_authorize_answered_later, setup, teardown),
		cmocka_unit_test_setup_teardown(test_authorize_answer_twice_or_wrong, setup, teardown),
		cmocka_unit_test_setup_teardown(test_authorize_cancelled, setup, teardown),
		cmocka_unit_test_setup_teardown(test_quarantine, setup, teardown),
		cmocka_unit_test_setup_teardown(test_calls_outlive_their_policy, setup, teardown),
		cmocka_unit_test(test_identity_hook),
		cmocka_unit_test(test_log_hook),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
