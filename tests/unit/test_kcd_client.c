/*
 * test_kcd_client — the worker's side of the kcd channel (kcd_client.c)
 * against a scripted kcd on the other end of a real socketpair: what a
 * token answer hands to the caller, and what becomes of the context kcd
 * kept for a token whose request was cancelled before the answer came.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <event2/event.h>

#include "ipc.h"
#include "kcd_client.h"

struct got {
	int calls;
	int ok;
	uint32_t ctx_id;
	char token[64];
};

static void
on_answer(const struct kcd_answer *ans, void *arg)
{
	struct got *g = arg;

	g->calls++;
	g->ok = ans->ok;
	g->ctx_id = ans->ctx_id;
	if (ans->ok && ans->token != NULL)
		snprintf(g->token, sizeof(g->token), "%s", ans->token);
}

/* The next frame the client sent, read as kcd reads it. */
static void
kcd_recv(int fd, uint8_t *buf, struct ipc_msg *m)
{
	char err[128];

	assert_int_equal(ipc_recv_blocking(fd, buf, IPC_MAX_FRAME, m, 2000, err, sizeof(err)), 0);
}

/* kcd answers request id with a token and kept context ctx_id. */
static void
kcd_token_ok(int fd, uint32_t id, const char *token, uint32_t ctx_id)
{
	static struct ipc_buf b;

	ipc_buf_init(&b);
	ipc_put_str(&b, token);
	ipc_put_u32(&b, ctx_id);
	ipc_put_u64(&b, 1u);
	assert_int_equal(ipc_send_blocking(fd, IPC_TOKEN_OK, id, b.data, b.len, -1), 0);
}

/* Turn the client's loop until nothing is left to do right now. */
static void
spin(struct event_base *base)
{
	for (int i = 0; i < 20; i++)
		event_base_loop(base, EVLOOP_NONBLOCK);
}

/* A client on one end of a socketpair, the scripted kcd on the other. */
struct chan {
	struct event_base *base;
	struct kcd_client *kc;
	int kcd_fd;
};

static void
chan_open(struct chan *c)
{
	int fds[2];

	assert_non_null(c->base = event_base_new());
	assert_int_equal(ipc_socketpair(fds), 0);
	assert_non_null(c->kc = kcd_client_new(c->base, fds[0], 5000));
	c->kcd_fd = fds[1];
}

static void
chan_close(struct chan *c)
{
	kcd_client_free(c->kc);
	close(c->kcd_fd);
	event_base_free(c->base);
}

/* user's token asked for (into g); returns the request, *id the id kcd
 * saw on its TOKEN_REQ. */
static struct kcd_req *
ask(struct chan *c, const char *user, struct got *g, uint32_t *id)
{
	static uint8_t buf[IPC_MAX_FRAME];
	struct kcd_req *r;
	struct ipc_msg m;

	r = kcd_token_request(c->kc, user, "HTTP@exchange.example.test", NULL, 0, KCD_F_MUTUAL,
	    on_answer, g);
	assert_non_null(r);
	spin(c->base);
	kcd_recv(c->kcd_fd, buf, &m);
	assert_int_equal(m.type, IPC_TOKEN_REQ);
	*id = m.id;
	return r;
}

static void
test_answer_reaches_the_caller_and_nothing_is_released(void **state)
{
	static uint8_t buf[IPC_MAX_FRAME];
	struct chan c;
	struct ipc_msg m;
	struct got g = { 0 };
	uint32_t id;
	char err[64];

	(void)state;
	chan_open(&c);
	(void)ask(&c, "alice@EXAMPLE.TEST", &g, &id);
	kcd_token_ok(c.kcd_fd, id, "YIIB", 7);
	spin(c.base);
	assert_int_equal(g.calls, 1);
	assert_true(g.ok);
	assert_int_equal(g.ctx_id, 7);
	assert_string_equal(g.token, "YIIB");
	/* the caller owns context 7 now: the client sent nothing on its own */
	assert_int_equal(ipc_recv_blocking(c.kcd_fd, buf, IPC_MAX_FRAME, &m, 100, err,
	    sizeof(err)), -1);
	chan_close(&c);
}

static void
test_cancelled_token_request_releases_its_kept_context(void **state)
{
	static uint8_t buf[IPC_MAX_FRAME];
	struct chan c;
	struct kcd_req *r;
	struct ipc_msg m;
	struct ipc_rd rd;
	struct got g = { 0 };
	uint32_t id;

	(void)state;
	chan_open(&c);
	r = ask(&c, "bob@EXAMPLE.TEST", &g, &id);
	/* the device went away while kcd made the token */
	kcd_request_cancel(r);
	kcd_token_ok(c.kcd_fd, id, "YIIC", 42);
	spin(c.base);
	assert_int_equal(g.calls, 0);
	/* nobody else knows context 42: the client gives it back, lazily
	 * (ipc_send_lazy): with the next request, or by its timeout */
	event_base_loop(c.base, EVLOOP_ONCE);
	kcd_recv(c.kcd_fd, buf, &m);
	assert_int_equal(m.type, IPC_CTX_RELEASE);
	ipc_rd_init(&rd, m.data, m.len);
	assert_int_equal(ipc_get_u32(&rd), 42);
	assert_int_equal(ipc_rd_done(&rd), 0);
	chan_close(&c);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_answer_reaches_the_caller_and_nothing_is_released),
		cmocka_unit_test(test_cancelled_token_request_releases_its_kept_context),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
