/*
 * test_kcd.c — kcd's loop as a real process: worker channels handed over
 * with IPC_WORKER_CHANNEL, the request table, and the refusal of anything
 * a worker should not send (each refusal closes that worker's channel and
 * logs why). The test plays the parent and the workers with the blocking
 * ipc helpers.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "config.h"
#include "ipc.h"
#include "kcd.h"
#include "kcd_proto.h"
#include "log.h"
#include "proc.h"

#define SLOTS 12

struct kcd_proc {
	pid_t pid;
	int ctl;		/* parent's end */
	char log[64];
};

static struct config cfg;
static uint8_t rx[IPC_MAX_FRAME];
static struct ipc_buf B;

static void
kcd_start(struct kcd_proc *k)
{
	int sp[2];
	char err[256];

	snprintf(k->log, sizeof(k->log), "/tmp/test_kcd.%ld.log", (long)getpid());
	unlink(k->log);
	cfg.server.shutdown_timeout = 5000;
	/* a keytab that does not exist: every token request is refused by
	 * the Kerberos core without contacting any KDC */
	cfg.kerberos.keytab = (char *)"/nonexistent/test_kcd.keytab";
	cfg.kerberos.principal = (char *)"HTTP/proxy.example.test@EXAMPLE.TEST";
	cfg.kerberos.kdc_timeout = 3000;
	cfg.kerberos.kdc_concurrency = 2;
	cfg.kerberos.credential_ttl = 600000;
	cfg.kerberos.negative_ttl = 30000;
	assert_int_equal(ipc_socketpair(sp), 0);
	k->pid = fork();
	assert_true(k->pid >= 0);
	if (k->pid == 0) {
		struct kcd_args a;

		close(sp[0]);
		if (log_open(k->log, LOG_LVL_DEBUG, err, sizeof(err)) != 0)
			_exit(99);
		memset(&a, 0, sizeof(a));
		a.cfg = &cfg;
		a.generation = 1;
		a.parent = (long)getppid();
		a.ctl_fd = sp[1];
		a.n_workers = SLOTS;
		proc_parent_death_signal(a.parent);
		int rc = kcd_main(&a);
		log_close();
		exit(rc);
	}
	close(sp[1]);
	k->ctl = sp[0];
}

static void
expect_frame(int fd, uint16_t type, struct ipc_msg *m)
{
	char err[256] = "";

	if (ipc_recv_blocking(fd, rx, sizeof(rx), m, 5000, err, sizeof(err)) != 0)
		fail_msg("expected %s, got: %s", ipc_type_name(type), err);
	if (m->type != type)
		fail_msg("expected %s, got %s", ipc_type_name(type), ipc_type_name(m->type));
}

static void
expect_closed(int fd)
{
	struct ipc_msg m;
	char err[256] = "";

	assert_int_equal(ipc_recv_blocking(fd, rx, sizeof(rx), &m, 5000, err, sizeof(err)), -1);
	if (strstr(err, "closed") == NULL)
		fail_msg("expected kcd to close the channel, got: %s", err);
}

/* A new channel for slot: kcd's end goes to kcd, ours is returned. */
static int
worker_channel(struct kcd_proc *k, uint32_t slot)
{
	int sp[2];

	assert_int_equal(ipc_socketpair(sp), 0);
	ipc_buf_init(&B);
	ipc_put_u32(&B, slot);
	assert_int_equal(ipc_send_blocking(k->ctl, IPC_WORKER_CHANNEL, 0, B.data, B.len, sp[0]), 0);
	close(sp[0]);
	return sp[1];
}

static void
put_token_req(const char *principal, size_t cb_len)
{
	static uint8_t cb[256];

	ipc_buf_init(&B);
	ipc_put_str(&B, principal);
	ipc_put_str(&B, "HTTP@exchange.example.test");
	ipc_put_bytes(&B, cb, cb_len);
	ipc_put_u32(&B, 0);
}

static char *
read_log(const struct kcd_proc *k)
{
	static char buf[1 << 16];
	FILE *f = fopen(k->log, "r");
	size_t n = 0;

	if (f != NULL) {
		n = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
	}
	buf[n] = '\0';
	return buf;
}

/* The refusal is logged with the worker and the reason. */
static void
expect_logged(const struct kcd_proc *k, const char *text)
{
	for (int i = 0; i < 100; i++) {
		if (strstr(read_log(k), text) != NULL)
			return;
		usleep(20000);
	}
	fail_msg("expected '%s' in kcd's log:\n%s", text, read_log(k));
}

static void
kcd_stop(struct kcd_proc *k)
{
	int st;

	ipc_buf_init(&B);
	ipc_put_u64(&B, proc_now_ms() + 5000);
	/* kcd may have exited already (drained): then the send fails, fine */
	(void)ipc_send_blocking(k->ctl, IPC_SHUTDOWN, 0, B.data, B.len, -1);
	assert_int_equal(waitpid(k->pid, &st, 0), k->pid);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail_msg("kcd ended with wait status 0x%x; log:\n%s", (unsigned)st, read_log(k));
	close(k->ctl);
	unlink(k->log);
}

static void
test_token_request_is_answered_by_the_kerberos_core(void **state)
{
	struct kcd_proc k;
	struct ipc_msg m;
	struct ipc_rd rd;
	char name[KCD_NAME_MAX], text[KCD_TEXT_MAX];
	int w;

	(void)state;
	kcd_start(&k);
	expect_frame(k.ctl, IPC_READY, &m);
	w = worker_channel(&k, 0);

	put_token_req("alice@EXAMPLE.TEST", 32);
	assert_int_equal(ipc_send_blocking(w, IPC_TOKEN_REQ, 4711, B.data, B.len, -1), 0);
	expect_frame(w, IPC_TOKEN_ERR, &m);
	assert_int_equal(m.id, 4711);
	ipc_rd_init(&rd, m.data, m.len);
	/* the proxy's own credential cannot be had: our fault, not the user's */
	assert_int_equal(ipc_get_u32(&rd), KCD_ERR_PROXY);
	ipc_get_str(&rd, name, sizeof(name));
	ipc_get_str(&rd, text, sizeof(text));
	assert_int_equal(ipc_rd_done(&rd), 0);
	assert_true(name[0] != '\0');
	if (strstr(text, "test_kcd.keytab") == NULL && strstr(text, "keytab") == NULL)
		fail_msg("the error text should name the keytab: %s: %s", name, text);

	/* mutual auth for a context kcd does not hold: refused */
	ipc_buf_init(&B);
	ipc_put_u32(&B, 3);
	ipc_put_str(&B, "b64token");
	assert_int_equal(ipc_send_blocking(w, IPC_MUTUAL_REQ, 12, B.data, B.len, -1), 0);
	expect_frame(w, IPC_MUTUAL_ERR, &m);
	assert_int_equal(m.id, 12);

	/* release: no answer, the channel stays usable */
	ipc_buf_init(&B);
	ipc_put_u32(&B, 3);
	assert_int_equal(ipc_send_blocking(w, IPC_CTX_RELEASE, 0, B.data, B.len, -1), 0);
	put_token_req("bob@EXAMPLE.TEST", 0);
	assert_int_equal(ipc_send_blocking(w, IPC_TOKEN_REQ, 13, B.data, B.len, -1), 0);
	expect_frame(w, IPC_TOKEN_ERR, &m);
	assert_int_equal(m.id, 13);

	/* directory check: refused as unreachable until ldap.c exists */
	ipc_buf_init(&B);
	ipc_put_str(&B, "alice@EXAMPLE.TEST");
	ipc_put_bytes(&B, "\x30\x03\x02\x01\x00", 5);
	assert_int_equal(ipc_send_blocking(w, IPC_IDENTIFY_REQ, 14, B.data, B.len, -1), 0);
	expect_frame(w, IPC_IDENTIFY_ERR, &m);
	assert_int_equal(m.id, 14);
	ipc_rd_init(&rd, m.data, m.len);
	assert_int_equal(ipc_get_u32(&rd), KCD_ERR_LDAP_UNREACHABLE);
	ipc_get_str(&rd, name, sizeof(name));
	ipc_get_str(&rd, text, sizeof(text));
	assert_int_equal(ipc_rd_done(&rd), 0);
	assert_string_equal(name, "kcd_not_ready");

	/* kcd drains while a worker channel is open, exits when it closes */
	ipc_buf_init(&B);
	ipc_put_u64(&B, proc_now_ms() + 5000);
	assert_int_equal(ipc_send_blocking(k.ctl, IPC_SHUTDOWN, 0, B.data, B.len, -1), 0);
	expect_logged(&k, "draining (shutdown requested by the parent), 1 worker channels open");
	assert_int_equal(kill(k.pid, 0), 0);
	close(w);
	kcd_stop(&k);		/* SHUTDOWN again is harmless; waits for exit 0 */
}

static void
test_refusals_close_only_that_worker_channel(void **state)
{
	struct kcd_proc k;
	struct ipc_msg m;
	int good, w, pipefd[2];
	uint8_t raw[64];
	uint32_t bad_magic = 0x01020304u;

	(void)state;
	kcd_start(&k);
	expect_frame(k.ctl, IPC_READY, &m);
	good = worker_channel(&k, 0);

	/* a type that is not in the request table */
	w = worker_channel(&k, 1);
	assert_int_equal(ipc_send_blocking(w, IPC_READY, 0, NULL, 0, -1), 0);
	expect_closed(w);
	close(w);
	expect_logged(&k, "closing the channel of worker 1: request type ready");

	/* an answer type sent as a request */
	w = worker_channel(&k, 2);
	assert_int_equal(ipc_send_blocking(w, IPC_TOKEN_OK, 5, NULL, 0, -1), 0);
	expect_closed(w);
	close(w);
	expect_logged(&k, "closing the channel of worker 2: request type token_ok");

	/* a parent-only message */
	w = worker_channel(&k, 3);
	ipc_buf_init(&B);
	ipc_put_u32(&B, 0);
	assert_int_equal(ipc_send_blocking(w, IPC_WORKER_CHANNEL, 0, B.data, B.len, -1), 0);
	expect_closed(w);
	close(w);
	expect_logged(&k, "closing the channel of worker 3: request type worker_channel");

	/* trailing bytes after a well-formed token_req */
	w = worker_channel(&k, 4);
	put_token_req("alice@EXAMPLE.TEST", 0);
	ipc_put_u32(&B, 0xffffffffu);
	assert_int_equal(ipc_send_blocking(w, IPC_TOKEN_REQ, 1, B.data, B.len, -1), 0);
	expect_closed(w);
	close(w);
	expect_logged(&k, "closing the channel of worker 4: malformed token_req");

	/* a truncated token_req (the flags are missing) */
	w = worker_channel(&k, 5);
	ipc_buf_init(&B);
	ipc_put_str(&B, "alice@EXAMPLE.TEST");
	ipc_put_str(&B, "HTTP@exchange.example.test");
	ipc_put_bytes(&B, NULL, 0);
	assert_int_equal(ipc_send_blocking(w, IPC_TOKEN_REQ, 1, B.data, B.len, -1), 0);
	expect_closed(w);
	close(w);
	expect_logged(&k, "closing the channel of worker 5: malformed token_req");

	/* a principal with an embedded NUL */
	w = worker_channel(&k, 6);
	ipc_buf_init(&B);
	ipc_put_bytes(&B, "alice\0@EXAMPLE.TEST", 19);
	ipc_put_str(&B, "HTTP@exchange.example.test");
	ipc_put_bytes(&B, NULL, 0);
	ipc_put_u32(&B, 0);
	assert_int_equal(ipc_send_blocking(w, IPC_TOKEN_REQ, 1, B.data, B.len, -1), 0);
	expect_closed(w);
	close(w);
	expect_logged(&k, "closing the channel of worker 6: malformed token_req");

	/* channel bindings longer than any hash */
	w = worker_channel(&k, 7);
	put_token_req("alice@EXAMPLE.TEST", KCD_CB_MAX + 1);
	assert_int_equal(ipc_send_blocking(w, IPC_TOKEN_REQ, 1, B.data, B.len, -1), 0);
	expect_closed(w);
	close(w);
	expect_logged(&k, "closing the channel of worker 7: token_req with 65 bytes of channel bindings");

	/* flags no worker sends */
	w = worker_channel(&k, 1);	/* (its first channel was closed above) */
	put_token_req("alice@EXAMPLE.TEST", 0);
	B.len -= 4;
	ipc_put_u32(&B, 0x80u | KCD_F_MUTUAL);
	assert_int_equal(ipc_send_blocking(w, IPC_TOKEN_REQ, 1, B.data, B.len, -1), 0);
	expect_closed(w);
	close(w);
	expect_logged(&k, "closing the channel of worker 1: token_req with unknown flags 0x80");

	/* a descriptor passed by a worker */
	w = worker_channel(&k, 8);
	assert_int_equal(pipe(pipefd), 0);
	ipc_buf_init(&B);
	ipc_put_u32(&B, 1);
	assert_int_equal(ipc_send_blocking(w, IPC_CTX_RELEASE, 0, B.data, B.len, pipefd[1]), 0);
	close(pipefd[1]);
	expect_closed(w);
	close(w);
	{
		char c;
		assert_int_equal(read(pipefd[0], &c, 1), 0);	/* kcd closed its copy */
	}
	close(pipefd[0]);
	expect_logged(&k, "closing the channel of worker 8: ctx_release with a file descriptor");

	/* an identify_req without a certificate */
	w = worker_channel(&k, 11);
	ipc_buf_init(&B);
	ipc_put_str(&B, "alice@EXAMPLE.TEST");
	ipc_put_bytes(&B, NULL, 0);
	assert_int_equal(ipc_send_blocking(w, IPC_IDENTIFY_REQ, 1, B.data, B.len, -1), 0);
	expect_closed(w);
	close(w);
	expect_logged(&k, "closing the channel of worker 11: identify_req with a 0-byte certificate");

	/* a frame that breaks the framing rules */
	w = worker_channel(&k, 9);
	memset(raw, 0, sizeof(raw));
	memcpy(raw, &bad_magic, 4);
	assert_int_equal(send(w, raw, IPC_HDR_LEN, 0), IPC_HDR_LEN);
	expect_closed(w);
	close(w);
	expect_logged(&k, "refused a frame from worker 9: bad magic");

	/* a frame larger than IPC_MAX_FRAME */
	{
		static uint8_t big[IPC_MAX_FRAME + 1];
		uint32_t magic = IPC_MAGIC;

		memcpy(big, &magic, 4);
		w = worker_channel(&k, 10);
		assert_int_equal(send(w, big, sizeof(big), 0), (ssize_t)sizeof(big));
		expect_closed(w);
		close(w);
		expect_logged(&k, "refused a frame from worker 10: oversized frame");
	}

	/* a slot kcd does not have: the parent's mistake, the fd is closed */
	w = worker_channel(&k, SLOTS);
	expect_closed(w);
	close(w);
	expect_logged(&k, "ignored a malformed or unexpected worker_channel");

	/* through all of that, worker 0 was never disturbed */
	put_token_req("alice@EXAMPLE.TEST", 32);
	assert_int_equal(ipc_send_blocking(good, IPC_TOKEN_REQ, 99, B.data, B.len, -1), 0);
	expect_frame(good, IPC_TOKEN_ERR, &m);
	assert_int_equal(m.id, 99);
	close(good);
	kcd_stop(&k);
}

static void
test_kcd_drains_when_the_parent_goes_away(void **state)
{
	struct kcd_proc k;
	struct ipc_msg m;
	int st;

	(void)state;
	kcd_start(&k);
	expect_frame(k.ctl, IPC_READY, &m);
	close(k.ctl);		/* EOF on the control channel: parent gone */
	assert_int_equal(waitpid(k.pid, &st, 0), k.pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	expect_logged(&k, "draining (the parent is gone)");
	unlink(k.log);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_token_request_is_answered_by_the_kerberos_core),
		cmocka_unit_test(test_refusals_close_only_that_worker_channel),
		cmocka_unit_test(test_kcd_drains_when_the_parent_goes_away),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
