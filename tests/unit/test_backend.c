/*
 * Unit tests for backend.c: a real event loop against listeners this test
 * starts on 127.0.0.1 (plain TCP, TLS with certificates generated at test
 * time by the openssl command, and a small DNS server on UDP).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <cmocka.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/dns_struct.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "backend.h"
#include "metrics.h"
#include "tls.h"

#define MAX_CONNS	16
#define NAME		"exchange.example.test"

/* ---- fixtures: certificates, loop, config ------------------------------ */

static struct {
	char dir[64];
	char ca[128], other_ca[128], cert[128], key[128];
	SSL_CTX *srv_ctx;		/* the test TLS server */
	struct event_base *base;
	struct config cfg;
} g;

static int
sh(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	return system(cmd);
}

/* A CA, a server certificate for NAME signed with RSA-SHA256 by it, and an
 * unrelated CA, generated once for the whole run. */
static int
group_setup(void **state)
{
	(void)state;
	snprintf(g.dir, sizeof(g.dir), "/tmp/test_backend.XXXXXX");
	if (mkdtemp(g.dir) == NULL)
		return -1;
	snprintf(g.ca, sizeof(g.ca), "%s/ca.pem", g.dir);
	snprintf(g.other_ca, sizeof(g.other_ca), "%s/other-ca.pem", g.dir);
	snprintf(g.cert, sizeof(g.cert), "%s/server.pem", g.dir);
	snprintf(g.key, sizeof(g.key), "%s/server.key", g.dir);
	if (sh("cd %s && "
	    "openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 2 -keyout ca.key -out ca.pem "
	    "  -subj '/CN=Backend Test CA' 2>/dev/null && "
	    "openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 2 -keyout other-ca.key "
	    "  -out other-ca.pem -subj '/CN=Some Other CA' 2>/dev/null && "
	    "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr "
	    "  -subj '/CN=" NAME "' 2>/dev/null && "
	    "printf 'subjectAltName=DNS:" NAME "\\nextendedKeyUsage=serverAuth\\n' > ext.cnf && "
	    "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 "
	    "  -days 2 -extfile ext.cnf -out server.pem 2>/dev/null", g.dir) != 0)
		return -1;
	g.srv_ctx = SSL_CTX_new(TLS_server_method());
	if (g.srv_ctx == NULL ||
	    SSL_CTX_use_certificate_chain_file(g.srv_ctx, g.cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(g.srv_ctx, g.key, SSL_FILETYPE_PEM) != 1)
		return -1;
	return 0;
}

static int
group_teardown(void **state)
{
	(void)state;
	SSL_CTX_free(g.srv_ctx);
	sh("rm -rf %s", g.dir);
	return 0;
}

static int
setup(void **state)
{
	(void)state;
	g.base = event_base_new();
	memset(&g.cfg, 0, sizeof(g.cfg));
	g.cfg.backend.tls = 0;
	g.cfg.backend.connect_timeout = 5000;
	g.cfg.backend.pool_idle = 60000;
	g.cfg.backend.health_check = 0;
	/* a failed test before this one may have left its backend behind */
	metrics_self()->backend_conns_open = 0;
	metrics_self()->backend_pool_idle = 0;
	return g.base == NULL ? -1 : 0;
}

static int
teardown(void **state)
{
	(void)state;
	event_base_free(g.base);
	g.base = NULL;
	/* every test frees its backend: the gauges must be back at zero */
	assert_int_equal(metrics_self()->backend_conns_open, 0);
	assert_int_equal(metrics_self()->backend_pool_idle, 0);
	return 0;
}

static void
addr_fill(struct config_addr *a, const char *host, uint16_t port)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)&a->ss;

	memset(a, 0, sizeof(*a));
	snprintf(a->host, sizeof(a->host), "%s", host);
	a->port = port;
	if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		a->sslen = sizeof(*sin);
		a->is_numeric = 1;
	}
}

static void
cfg_server(const char *host, uint16_t port)
{
	addr_fill(&g.cfg.backend.servers[g.cfg.backend.n_servers++], host, port);
}

static void
cfg_connect_to(const char *host, uint16_t port)
{
	g.cfg.backend.has_connect_to = 1;
	addr_fill(&g.cfg.backend.connect_to, host, port);
}

/* The backend client context the worker would build (tls.c), trusting
 * ca_file as [backend] ca. */
static SSL_CTX *
client_ctx(char *ca_file)
{
	char err[512] = "";
	SSL_CTX *ctx;

	g.cfg.backend.ca = ca_file;
	ctx = tls_backend_ctx_new(&g.cfg, err, sizeof(err));
	if (ctx == NULL)
		fail_msg("tls_backend_ctx_new: %s", err);
	return ctx;
}

/* ---- the loop ----------------------------------------------------------- */

static void
tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
}

/* Run the loop until pred holds; 0 if it never did within a generous
 * deadline (a hang guard, not a timing assertion). */
static int
run_until(int (*pred)(void *), void *arg)
{
	struct event *t = event_new(g.base, -1, EV_PERSIST, tick, NULL);
	struct timeval tv = { 0, 10000 };
	time_t deadline = time(NULL) + 20;
	int ok;

	event_add(t, &tv);
	while (!(ok = pred(arg)) && time(NULL) < deadline)
		event_base_loop(g.base, EVLOOP_ONCE);
	event_free(t);
	return ok;
}

static int
pred_turns(void *arg)
{
	int *n = arg;

	return --*n <= 0;
}

/* Let pending (deferred) callbacks run. */
static void
run_turns(int n)
{
	run_until(pred_turns, &n);
}

/* ---- test servers ------------------------------------------------------- */

struct tsrv {
	struct evconnlistener *lev;
	uint16_t port;
	SSL_CTX *ctx;			/* NULL: plain TCP */
	unsigned accepted, closed;
	size_t bytes_in;
	struct bufferevent *conn[MAX_CONNS];
	char sni[256];
};

static void
srv_read(struct bufferevent *bev, void *arg)
{
	struct tsrv *s = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	s->bytes_in += evbuffer_get_length(in);
	evbuffer_drain(in, evbuffer_get_length(in));
}

static void
srv_drop(struct tsrv *s, unsigned i)
{
	bufferevent_free(s->conn[i]);
	s->conn[i] = NULL;
	s->closed++;
}

static void
srv_event(struct bufferevent *bev, short what, void *arg)
{
	struct tsrv *s = arg;

	if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
		return;
	for (unsigned i = 0; i < MAX_CONNS; i++)
		if (s->conn[i] == bev)
			srv_drop(s, i);
}

static int
sni_cb(SSL *ssl, int *al, void *arg)
{
	struct tsrv *s = arg;
	const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);

	(void)al;
	snprintf(s->sni, sizeof(s->sni), "%s", name ? name : "");
	return SSL_TLSEXT_ERR_OK;
}

static void
srv_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
	struct tsrv *s = arg;
	struct bufferevent *bev;

	(void)l;
	(void)sa;
	(void)salen;
	assert_true(s->accepted < MAX_CONNS);
	if (s->ctx != NULL)
		bev = bufferevent_openssl_socket_new(g.base, fd, SSL_new(s->ctx),
		    BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
	else
		bev = bufferevent_socket_new(g.base, fd, BEV_OPT_CLOSE_ON_FREE);
	assert_non_null(bev);
	s->conn[s->accepted++] = bev;
	bufferevent_setcb(bev, srv_read, NULL, srv_event, s);
	bufferevent_enable(bev, EV_READ);
}

/* Listen on 127.0.0.1:port (0 = any free port). */
static void
srv_start(struct tsrv *s, uint16_t port, SSL_CTX *ctx)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);

	memset(s, 0, sizeof(*s));
	s->ctx = ctx;
	if (ctx != NULL) {
		SSL_CTX_set_tlsext_servername_callback(ctx, sni_cb);
		SSL_CTX_set_tlsext_servername_arg(ctx, s);
	}
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sin.sin_port = htons(port);
	s->lev = evconnlistener_new_bind(g.base, srv_accept, s,
	    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 16, (struct sockaddr *)&sin, sizeof(sin));
	assert_non_null(s->lev);
	assert_int_equal(getsockname(evconnlistener_get_fd(s->lev), (struct sockaddr *)&sin, &len), 0);
	s->port = ntohs(sin.sin_port);
}

static void
srv_stop(struct tsrv *s)
{
	for (unsigned i = 0; i < MAX_CONNS; i++)
		if (s->conn[i] != NULL)
			srv_drop(s, i);
	if (s->lev != NULL)
		evconnlistener_free(s->lev);
	s->lev = NULL;
}

/* A port nothing listens on: connections to it are refused. */
static uint16_t
dead_port(void)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
	close(fd);
	return ntohs(sin.sin_port);
}

static int
pred_accepted(void *arg)
{
	struct tsrv *s = arg;

	return s->accepted > 0;
}

static int
pred_closed(void *arg)
{
	struct tsrv *s = arg;

	return s->closed > 0;
}

/* ---- results ------------------------------------------------------------ */

struct res {
	int called;
	struct bconn *bc;
	enum reason r;
	char detail[512];
};

static void
on_ready(struct bconn *bc, enum reason r, const char *detail, void *arg)
{
	struct res *x = arg;

	x->called++;
	x->bc = bc;
	x->r = r;
	snprintf(x->detail, sizeof(x->detail), "%s", detail ? detail : "");
}

static int
pred_called(void *arg)
{
	return ((struct res *)arg)->called > 0;
}

/* acquire and wait for the answer */
static void
acquire(struct backend *be, const char *principal, struct res *x)
{
	memset(x, 0, sizeof(*x));
	backend_acquire(be, principal, on_ready, x);
	assert_true(run_until(pred_called, x));
	assert_int_equal(x->called, 1);
}

static struct backend_stats
stats(struct backend *be)
{
	struct backend_stats st;

	backend_stats(be, &st);
	return st;
}

static uint16_t
local_port(struct bconn *bc)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);

	assert_int_equal(getsockname(bufferevent_getfd(bconn_bev(bc)),
	    (struct sockaddr *)&sin, &len), 0);
	return ntohs(sin.sin_port);
}

struct be_pred {
	struct backend *be;
	unsigned want;
};

static int
pred_idle_is(void *arg)
{
	struct be_pred *p = arg;

	return stats(p->be).conns_idle == p->want && stats(p->be).conns_open == p->want;
}

static int
pred_up_is(void *arg)
{
	struct be_pred *p = arg;

	return stats(p->be).servers_up == p->want;
}

/* ---- tests: pools ------------------------------------------------------- */

static void
fresh_connection_is_ready_and_counted(void **state)
{
	struct tsrv s;
	struct backend *be;
	struct res x;
	char want[64];
	unsigned len = 99;

	(void)state;
	srv_start(&s, 0, NULL);
	cfg_server("127.0.0.1", s.port);
	be = backend_new(g.base, NULL, &g.cfg, NULL);
	assert_non_null(be);

	acquire(be, "alice@EXAMPLE.TEST", &x);
	assert_int_equal(x.r, REASON_OK);
	assert_non_null(x.bc);
	assert_int_equal(bconn_uses(x.bc), 1);
	snprintf(want, sizeof(want), "127.0.0.1:%u", s.port);
	assert_string_equal(bconn_server_name(x.bc), want);
	assert_null(bconn_cb_hash(x.bc, &len));
	assert_int_equal(len, 0);
	assert_int_equal(stats(be).conns_open, 1);
	assert_int_equal(stats(be).connects, 1);
	assert_int_equal(metrics_self()->backend_conns_open, 1);

	/* the connection works: what we write reaches the server */
	bufferevent_write(bconn_bev(x.bc), "GET / HTTP/1.1\r\n\r\n", 18);
	while (s.bytes_in < 18)
		event_base_loop(g.base, EVLOOP_ONCE);
	assert_int_equal(s.accepted, 1);

	backend_release(x.bc, 0);
	assert_int_equal(stats(be).conns_open, 0);
	assert_true(run_until(pred_closed, &s));
	backend_free(be);
	srv_stop(&s);
}

static void
same_principal_reuses_the_idle_connection(void **state)
{
	struct tsrv s;
	struct backend *be;
	struct res x, y;
	struct bconn *first;
	uint16_t port;

	(void)state;
	srv_start(&s, 0, NULL);
	cfg_server("127.0.0.1", s.port);
	be = backend_new(g.base, NULL, &g.cfg, NULL);

	acquire(be, "alice@EXAMPLE.TEST", &x);
	assert_int_equal(x.r, REASON_OK);
	first = x.bc;
	port = local_port(first);
	backend_release(first, 1);
	assert_int_equal(stats(be).conns_idle, 1);
	assert_int_equal(metrics_self()->backend_pool_idle, 1);

	/* an idle hit answers before backend_acquire returns */
	memset(&y, 0, sizeof(y));
	assert_null(backend_acquire(be, "alice@EXAMPLE.TEST", on_ready, &y));
	assert_int_equal(y.called, 1);
	assert_int_equal(y.r, REASON_OK);
	assert_ptr_equal(y.bc, first);
	assert_int_equal(local_port(y.bc), port);
	assert_int_equal(bconn_uses(y.bc), 2);
	assert_int_equal(stats(be).reuses, 1);
	assert_int_equal(stats(be).conns_idle, 0);
	assert_int_equal(s.accepted, 1);

	backend_release(y.bc, 1);
	backend_free(be);
	assert_true(run_until(pred_closed, &s));
	srv_stop(&s);
}

static void
other_principal_never_gets_an_idle_connection(void **state)
{
	struct tsrv s;
	struct backend *be;
	struct res a, b, c;
	uint16_t port_a;

	(void)state;
	srv_start(&s, 0, NULL);
	cfg_server("127.0.0.1", s.port);
	be = backend_new(g.base, NULL, &g.cfg, NULL);

	acquire(be, "alice@EXAMPLE.TEST", &a);
	port_a = local_port(a.bc);
	backend_release(a.bc, 1);

	/* bob, and alice spelled differently, each get a new TCP connection */
	acquire(be, "bob@EXAMPLE.TEST", &b);
	assert_int_equal(b.r, REASON_OK);
	assert_ptr_not_equal(b.bc, a.bc);
	assert_int_not_equal(local_port(b.bc), port_a);
	assert_int_equal(bconn_uses(b.bc), 1);
	while (s.accepted < 2)
		event_base_loop(g.base, EVLOOP_ONCE);
	assert_int_equal(stats(be).conns_idle, 1);	/* alice's still waits */
	acquire(be, "ALICE@EXAMPLE.TEST", &c);
	assert_ptr_not_equal(c.bc, a.bc);
	assert_int_equal(stats(be).reuses, 0);
	assert_int_equal(stats(be).connects, 3);

	/* bob's connection, released, is still never alice's */
	backend_release(b.bc, 1);
	backend_release(c.bc, 1);
	acquire(be, "alice@EXAMPLE.TEST", &a);
	assert_int_equal(local_port(a.bc), port_a);
	assert_int_equal(bconn_uses(a.bc), 2);
	backend_release(a.bc, 1);
	assert_int_equal(stats(be).conns_idle, 3);
	backend_free(be);
	srv_stop(&s);
}

static void
idle_connection_closes_after_pool_idle(void **state)
{
	struct tsrv s;
	struct backend *be;
	struct res x;
	struct be_pred p;

	(void)state;
	srv_start(&s, 0, NULL);
	cfg_server("127.0.0.1", s.port);
	g.cfg.backend.pool_idle = 50;
	be = backend_new(g.base, NULL, &g.cfg, NULL);

	acquire(be, "alice@EXAMPLE.TEST", &x);
	backend_release(x.bc, 1);
	assert_int_equal(stats(be).conns_idle, 1);
	p.be = be;
	p.want = 0;
	assert_true(run_until(pred_idle_is, &p));
	assert_true(run_until(pred_closed, &s));	/* the server saw it go */

	/* the next request for alice opens a new one */
	acquire(be, "alice@EXAMPLE.TEST", &x);
	assert_int_equal(x.r, REASON_OK);
	assert_int_equal(bconn_uses(x.bc), 1);
	backend_release(x.bc, 0);
	backend_free(be);
	srv_stop(&s);
}

static void
server_closing_an_idle_connection_removes_it(void **state)
{
	struct tsrv s;
	struct backend *be;
	struct res x;
	struct be_pred p;

	(void)state;
	srv_start(&s, 0, NULL);
	cfg_server("127.0.0.1", s.port);
	be = backend_new(g.base, NULL, &g.cfg, NULL);

	acquire(be, "alice@EXAMPLE.TEST", &x);
	while (s.accepted < 1)
		event_base_loop(g.base, EVLOOP_ONCE);
	backend_release(x.bc, 1);
	srv_drop(&s, 0);			/* the server closes it */
	p.be = be;
	p.want = 0;
	assert_true(run_until(pred_idle_is, &p));

	acquire(be, "alice@EXAMPLE.TEST", &x);
	assert_int_equal(x.r, REASON_OK);
	assert_int_equal(bconn_uses(x.bc), 1);
	while (s.accepted < 2)
		event_base_loop(g.base, EVLOOP_ONCE);
	backend_release(x.bc, 0);
	backend_free(be);
	srv_stop(&s);
}

static void
unsolicited_data_on_an_idle_connection_closes_it(void **state)
{
	struct tsrv s;
	struct backend *be;
	struct res x;
	struct be_pred p;

	(void)state;
	srv_start(&s, 0, NULL);
	cfg_server("127.0.0.1", s.port);
	be = backend_new(g.base, NULL, &g.cfg, NULL);

	acquire(be, "alice@EXAMPLE.TEST", &x);
	while (s.accepted < 1)
		event_base_loop(g.base, EVLOOP_ONCE);
	backend_release(x.bc, 1);
	bufferevent_write(s.conn[0], "HTTP/1.1 408 Request Timeout\r\n\r\n", 32);
	p.be = be;
	p.want = 0;
	assert_true(run_until(pred_idle_is, &p));
	assert_true(run_until(pred_closed, &s));
	backend_free(be);
	srv_stop(&s);
}

static void
release_with_unread_data_closes(void **state)
{
	struct tsrv s;
	struct backend *be;
	struct res x;

	(void)state;
	srv_start(&s, 0, NULL);
	cfg_server("127.0.0.1", s.port);
	be = backend_new(g.base, NULL, &g.cfg, NULL);

	acquire(be, "alice@EXAMPLE.TEST", &x);
	while (s.accepted < 1)
		event_base_loop(g.base, EVLOOP_ONCE);
	bufferevent_write(s.conn[0], "extra", 5);
	bufferevent_enable(bconn_bev(x.bc), EV_READ);
	while (evbuffer_get_length(bufferevent_get_input(bconn_bev(x.bc))) < 5)
		event_base_loop(g.base, EVLOOP_ONCE);
	backend_release(x.bc, 1);		/* asked to keep it, but it is dirty */
	assert_int_equal(stats(be).conns_idle, 0);
	assert_int_equal(stats(be).conns_open, 0);
	backend_free(be);
	srv_stop(&s);
}

/* ---- tests: failover and health ----------------------------------------- */

static void
round_robin_spreads_new_connections(void **state)
{
	struct tsrv s1, s2;
	struct backend *be;
	struct res a, b;

	(void)state;
	srv_start(&s1, 0, NULL);
	srv_start(&s2, 0, NULL);
	cfg_server("127.0.0.1", s1.port);
	cfg_server("127.0.0.1", s2.port);
	be = backend_new(g.base, NULL, &g.cfg, NULL);

	acquire(be, "alice@EXAMPLE.TEST", &a);
	acquire(be, "bob@EXAMPLE.TEST", &b);
	assert_int_equal(a.r, REASON_OK);
	assert_int_equal(b.r, REASON_OK);
	assert_string_not_equal(bconn_server_name(a.bc), bconn_server_name(b.bc));
	while (s1.accepted < 1 || s2.accepted < 1)
		event_base_loop(g.base, EVLOOP_ONCE);
	backend_release(a.bc, 0);
	backend_release(b.bc, 0);
	backend_free(be);
	srv_stop(&s1);
	srv_stop(&s2);
}

static void
refused_server_fails_over_and_is_marked_down(void **state)
{
	struct tsrv s;
	struct backend *be;
	struct res x;
	char want[64];
	uint16_t dead = dead_port();

	(void)state;
	srv_start(&s, 0, NULL);
	cfg_server("127.0.0.1", dead);
	cfg_server("127.0.0.1", s.port);
	g.cfg.backend.health_check = 3600000;	/* on, but never due in this test */
	be = backend_new(g.base, NULL, &g.cfg, NULL);

	/* the first acquire starts at the first server, which refuses */
	acquire(be, "alice@EXAMPLE.TEST", &x);
	assert_int_equal(x.r, REASON_OK);
	snprintf(want, sizeof(want), "127.0.0.1:%u", s.port);
	assert_string_equal(bconn_server_name(x.bc), want);
	assert_int_equal(stats(be).servers, 2);
	assert_int_equal(stats(be).servers_up, 1);
	assert_int_equal(stats(be).connect_failures, 1);
	backend_release(x.bc, 0);

	/* a down server is skipped: no more failures */
	for (int i = 0; i < 3; i++) {
		acquire(be, "bob@EXAMPLE.TEST", &x);
		assert_int_equal(x.r, REASON_OK);
		assert_string_equal(bconn_server_name(x.bc), want);
		backend_release(x.bc, 0);
	}
	assert_int_equal(stats(be).connect_failures, 1);
	backend_free(be);
	srv_stop(&s);
}

static void
all_servers_failing_then_backend_down(void **state)
{
	struct backend *be;
	struct res x;
	char want[96];
	uint16_t d1 = dead_port(), d2 = dead_port();

	(void)state;
	cfg_server("127.0.0.1", d1);
	cfg_server("127.0.0.1", d2);
	g.cfg.backend.health_check = 3600000;
	be = backend_new(g.base, NULL, &g.cfg, NULL);

	/* this request tried both: it sees the last server's failure */
	acquire(be, "alice@EXAMPLE.TEST", &x);
	assert_int_equal(x.r, REASON_BACKEND_CONNECT);
	assert_null(x.bc);
	snprintf(want, sizeof(want), "connect 127.0.0.1:%u: Connection refused", d2);
	assert_string_equal(x.detail, want);
	assert_int_equal(stats(be).servers_up, 0);
	assert_int_equal(stats(be).connect_failures, 2);

	/* the next ones are told at once that everything is down */
	memset(&x, 0, sizeof(x));
	assert_null(backend_acquire(be, "bob@EXAMPLE.TEST", on_ready, &x));
	assert_int_equal(x.called, 1);
	assert_int_equal(x.r, REASON_BACKEND_DOWN);
	assert_non_null(strstr(x.detail, "all 2 backend servers are marked down"));
	assert_int_equal(stats(be).connect_failures, 2);
	backend_free(be);
}

static void
health_check_brings_a_server_back(void **state)
{
	struct tsrv s1, s2;
	struct backend *be;
	struct res x;
	struct be_pred p;
	uint16_t port1 = dead_port();

	(void)state;
	srv_start(&s2, 0, NULL);
	cfg_server("127.0.0.1", port1);
	cfg_server("127.0.0.1", s2.port);
	g.cfg.backend.health_check = 30;
	be = backend_new(g.base, NULL, &g.cfg, NULL);

	acquire(be, "alice@EXAMPLE.TEST", &x);
	assert_int_equal(x.r, REASON_OK);
	backend_release(x.bc, 0);
	assert_int_equal(stats(be).servers_up, 1);

	/* probes keep failing while nothing listens; then the listener returns */
	run_turns(5);
	assert_int_equal(stats(be).servers_up, 1);
	srv_start(&s1, port1, NULL);
	p.be = be;
	p.want = 2;
	assert_true(run_until(pred_up_is, &p));
	assert_true(s1.accepted >= 1);		/* the probe really connected */

	/* and new connections go there again */
	for (int i = 0; i < 4; i++) {
		char who[32];

		snprintf(who, sizeof(who), "user%d@EXAMPLE.TEST", i);
		acquire(be, who, &x);
		assert_int_equal(x.r, REASON_OK);
		backend_release(x.bc, 0);
	}
	assert_true(s1.accepted >= 2);
	backend_free(be);
	srv_stop(&s1);
	srv_stop(&s2);
}

static void
report_failure_marks_the_server_down(void **state)
{
	struct tsrv s;
	struct backend *be;
	struct res x;

	(void)state;
	srv_start(&s, 0, NULL);
	cfg_server("127.0.0.1", s.port);
	g.cfg.backend.health_check = 3600000;
	be = backend_new(g.base, NULL, &g.cfg, NULL);

	acquire(be, "alice@EXAMPLE.TEST", &x);
	backend_report_failure(x.bc, "reset by peer mid-response");
	assert_int_equal(stats(be).servers_up, 0);
	backend_release(x.bc, 1);		/* a down server's connection is not kept */
	assert_int_equal(stats(be).conns_idle, 0);
	assert_int_equal(stats(be).conns_open, 0);
	acquire(be, "alice@EXAMPLE.TEST", &x);
	assert_int_equal(x.r, REASON_BACKEND_DOWN);
	backend_free(be);
	srv_stop(&s);
}

static void
without_health_checks_servers_are_never_marked_down(void **state)
{
	struct tsrv s;
	struct backend *be;
	struct res x;
	uint16_t dead = dead_port();

	(void)state;
	srv_start(&s, 0, NULL);
	cfg_server("127.0.0.1", dead);
	cfg_server("127.0.0.1", s.port);
	g.cfg.backend.health_check = 0;
	be = backend_new(g.base, NULL, &g.cfg, NULL);

	for (int i = 0; i < 2; i++) {
		acquire(be, "alice@EXAMPLE.TEST", &x);
		assert_int_equal(x.r, REASON_OK);
		backend_release(x.bc, 0);
	}
	/* nothing would probe it back, so it stays eligible */
	assert_int_equal(stats(be).servers_up, 2);
	assert_true(stats(be).connect_failures >= 1);
	backend_free(be);
	srv_stop(&s);
}

/* ---- tests: TLS --------------------------------------------------------- */

static void
tls_connection_is_verified_and_gives_the_channel_binding_hash(void **state)
{
	struct tsrv s;
	struct backend *be;
	struct res x;
	SSL_CTX *ctx = client_ctx(g.ca);
	unsigned char want[EVP_MAX_MD_SIZE], *der = NULL;
	unsigned want_len = 0, len = 0;
	const unsigned char *cb;
	char name[64];
	struct be_pred p;
	X509 *cert;
	FILE *fp;
	int derlen;

	(void)state;
	srv_start(&s, 0, g.srv_ctx);
	/* the configured name is used for SNI and verification while the
	 * connection goes to connect_to's address */
	cfg_server(NAME, 443);
	cfg_connect_to("127.0.0.1", s.port);
	g.cfg.backend.tls = 1;
	be = backend_new(g.base, NULL, &g.cfg, ctx);
	assert_non_null(be);

	acquire(be, "alice@EXAMPLE.TEST", &x);
	assert_int_equal(x.r, REASON_OK);
	assert_string_equal(s.sni, NAME);
	assert_string_equal(bconn_server_name(x.bc), NAME ":443");

	/* RFC 5929: SHA-256 of the DER certificate for an RSA-SHA256 cert */
	assert_non_null(fp = fopen(g.cert, "r"));
	assert_non_null(cert = PEM_read_X509(fp, NULL, NULL, NULL));
	fclose(fp);
	derlen = i2d_X509(cert, &der);
	assert_true(derlen > 0);
	assert_int_equal(EVP_Digest(der, (size_t)derlen, want, &want_len, EVP_sha256(), NULL), 1);
	cb = bconn_cb_hash(x.bc, &len);
	assert_non_null(cb);
	assert_int_equal(len, 32);
	assert_int_equal(want_len, 32);
	assert_memory_equal(cb, want, 32);
	OPENSSL_free(der);
	X509_free(cert);

	/* TLS connections pool by principal just the same */
	backend_release(x.bc, 1);
	acquire(be, "alice@EXAMPLE.TEST", &x);
	assert_int_equal(bconn_uses(x.bc), 2);
	cb = bconn_cb_hash(x.bc, &len);
	assert_int_equal(len, 32);
	assert_memory_equal(cb, want, 32);
	backend_release(x.bc, 1);
	acquire(be, "bob@EXAMPLE.TEST", &x);
	assert_int_equal(bconn_uses(x.bc), 1);
	snprintf(name, sizeof(name), "%s", bconn_server_name(x.bc));
	assert_string_equal(name, NAME ":443");
	/* a second connection to the host may resume the TLS session: the
	 * hash still comes from the server's certificate */
	cb = bconn_cb_hash(x.bc, &len);
	assert_int_equal(len, 32);
	assert_memory_equal(cb, want, 32);
	backend_release(x.bc, 0);
	assert_int_equal(s.accepted, 2);

	/* TLS 1.3 session tickets that arrive while it is idle are not
	 * "unsolicited data"; a server closing it removes it from the pool */
	run_turns(10);
	assert_int_equal(stats(be).conns_idle, 1);
	srv_stop(&s);
	p.be = be;
	p.want = 0;
	assert_true(run_until(pred_idle_is, &p));
	backend_free(be);
	SSL_CTX_free(ctx);
}

static void
tls_with_the_wrong_ca_is_refused(void **state)
{
	struct tsrv s;
	struct backend *be;
	struct res x;
	SSL_CTX *ctx = client_ctx(g.other_ca);

	(void)state;
	srv_start(&s, 0, g.srv_ctx);
	cfg_server(NAME, 443);
	cfg_connect_to("127.0.0.1", s.port);
	g.cfg.backend.tls = 1;
	be = backend_new(g.base, NULL, &g.cfg, ctx);

	acquire(be, "alice@EXAMPLE.TEST", &x);
	assert_int_equal(x.r, REASON_BACKEND_TLS);
	assert_null(x.bc);
	assert_non_null(strstr(x.detail, "certificate verify failed"));
	assert_non_null(strstr(x.detail, "unable to get local issuer certificate"));
	assert_non_null(strstr(x.detail, NAME ":443"));
	assert_int_equal(stats(be).conns_open, 0);
	assert_int_equal(stats(be).connect_failures, 1);
	backend_free(be);
	srv_stop(&s);
	SSL_CTX_free(ctx);
}

static void
tls_host_name_mismatch_is_refused(void **state)
{
	struct tsrv s;
	struct backend *be;
	struct res x;
	SSL_CTX *ctx = client_ctx(g.ca);

	(void)state;
	srv_start(&s, 0, g.srv_ctx);
	/* a trusted certificate, but for another name than the configured one */
	cfg_server("mail.example.test", 443);
	cfg_connect_to("127.0.0.1", s.port);
	g.cfg.backend.tls = 1;
	be = backend_new(g.base, NULL, &g.cfg, ctx);

	acquire(be, "alice@EXAMPLE.TEST", &x);
	assert_int_equal(x.r, REASON_BACKEND_TLS);
	assert_non_null(strstr(x.detail, "certificate verify failed"));
	assert_non_null(strstr(x.detail, "hostname mismatch"));
	assert_string_equal(s.sni, "mail.example.test");
	backend_free(be);
	srv_stop(&s);
	SSL_CTX_free(ctx);
}

static void
tls_server_that_never_answers_times_out(void **state)
{
	struct tsrv s;
	struct backend *be;
	struct res x;
	SSL_CTX *ctx = client_ctx(g.ca);

	(void)state;
	srv_start(&s, 0, NULL);		/* accepts TCP, never speaks TLS */
	cfg_server(NAME, 443);
	cfg_connect_to("127.0.0.1", s.port);
	g.cfg.backend.tls = 1;
	g.cfg.backend.connect_timeout = 100;
	be = backend_new(g.base, NULL, &g.cfg, ctx);

	acquire(be, "alice@EXAMPLE.TEST", &x);
	assert_int_equal(x.r, REASON_BACKEND_TLS);
	assert_non_null(strstr(x.detail, "handshake not done within 100 ms"));
	assert_true(run_until(pred_closed, &s));
	backend_free(be);
	srv_stop(&s);
	SSL_CTX_free(ctx);
}

static void
tls_server_closing_in_the_handshake_is_a_tls_failure(void **state)
{
	struct tsrv s;
	struct backend *be;
	struct res x;
	SSL_CTX *ctx = client_ctx(g.ca);

	(void)state;
	srv_start(&s, 0, NULL);
	cfg_server(NAME, 443);
	cfg_connect_to("127.0.0.1", s.port);
	g.cfg.backend.tls = 1;
	be = backend_new(g.base, NULL, &g.cfg, ctx);

	memset(&x, 0, sizeof(x));
	assert_non_null(backend_acquire(be, "alice@EXAMPLE.TEST", on_ready, &x));
	assert_true(run_until(pred_accepted, &s));
	while (s.bytes_in == 0)			/* the ClientHello arrived */
		event_base_loop(g.base, EVLOOP_ONCE);
	srv_drop(&s, 0);
	assert_true(run_until(pred_called, &x));
	assert_int_equal(x.r, REASON_BACKEND_TLS);
	assert_non_null(strstr(x.detail, "tls " NAME ":443 (127.0.0.1:"));
	backend_free(be);
	srv_stop(&s);
	SSL_CTX_free(ctx);
}

/* ---- tests: cancel and free --------------------------------------------- */

static void
cancel_before_ready_never_calls_back(void **state)
{
	struct tsrv s;
	struct backend *be;
	struct backend_wait *w;
	struct res x;
	SSL_CTX *ctx = client_ctx(g.ca);

	(void)state;
	srv_start(&s, 0, NULL);		/* the TLS handshake will hang */
	cfg_server(NAME, 443);
	cfg_connect_to("127.0.0.1", s.port);
	g.cfg.backend.tls = 1;
	g.cfg.backend.connect_timeout = 200;
	be = backend_new(g.base, NULL, &g.cfg, ctx);

	memset(&x, 0, sizeof(x));
	w = backend_acquire(be, "alice@EXAMPLE.TEST", on_ready, &x);
	assert_non_null(w);
	assert_true(run_until(pred_accepted, &s));
	backend_cancel(w);
	/* our side of the connection is closed, and even past the connect
	 * timeout nothing calls back */
	assert_true(run_until(pred_closed, &s));
	run_turns(30);
	assert_int_equal(x.called, 0);
	assert_int_equal(stats(be).conns_open, 0);
	assert_int_equal(stats(be).connect_failures, 0);
	backend_free(be);
	srv_stop(&s);
	SSL_CTX_free(ctx);
}

static void
backend_free_releases_everything(void **state)
{
	struct tsrv s, silent;
	struct backend *be;
	struct res a, b, c;

	(void)state;
	srv_start(&s, 0, NULL);
	srv_start(&silent, 0, NULL);
	cfg_server("127.0.0.1", s.port);
	be = backend_new(g.base, NULL, &g.cfg, NULL);
	acquire(be, "alice@EXAMPLE.TEST", &a);		/* will be idle */
	acquire(be, "bob@EXAMPLE.TEST", &b);		/* still handed out */
	backend_release(a.bc, 1);
	backend_free(be);				/* ASan: nothing leaks */
	assert_true(run_until(pred_closed, &s));

	/* a backend freed with a TLS handshake in flight */
	memset(&g.cfg.backend, 0, sizeof(g.cfg.backend));
	cfg_server(NAME, 443);
	cfg_connect_to("127.0.0.1", silent.port);
	g.cfg.backend.tls = 1;
	g.cfg.backend.connect_timeout = 5000;
	g.cfg.backend.pool_idle = 60000;
	{
		SSL_CTX *ctx = client_ctx(g.ca);

		be = backend_new(g.base, NULL, &g.cfg, ctx);
		memset(&c, 0, sizeof(c));
		assert_non_null(backend_acquire(be, "carol@EXAMPLE.TEST", on_ready, &c));
		assert_true(run_until(pred_accepted, &silent));
		backend_free(be);
		assert_int_equal(c.called, 0);
		SSL_CTX_free(ctx);
	}
	srv_stop(&s);
	srv_stop(&silent);
}

/* ---- tests: name resolution through evdns ------------------------------- */

struct tdns {
	struct evdns_server_port *port;
	evutil_socket_t fd;
	uint16_t portnum;
	unsigned queries;
	struct evdns_server_request *held[8];
	unsigned nheld;
};

/* ok.example.test → 127.0.0.1; slow.example.test is never answered;
 * anything else does not exist. */
static void
dns_cb(struct evdns_server_request *req, void *arg)
{
	struct tdns *d = arg;
	const char *name = req->nquestions == 1 ? req->questions[0]->name : "";

	d->queries++;
	if (strcasecmp(name, "slow.example.test") == 0 && d->nheld < 8) {
		d->held[d->nheld++] = req;
		return;
	}
	if (strcasecmp(name, "ok.example.test") == 0) {
		if (req->questions[0]->type == EVDNS_TYPE_A) {
			struct in_addr a;

			a.s_addr = htonl(INADDR_LOOPBACK);
			evdns_server_request_add_a_reply(req, name, 1, &a, 60);
		}
		evdns_server_request_respond(req, 0);
		return;
	}
	evdns_server_request_respond(req, DNS_ERR_NOTEXIST);
}

static struct evdns_base *
dns_start(struct tdns *d)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	struct evdns_base *dns;
	char ns[32];

	memset(d, 0, sizeof(*d));
	d->fd = socket(AF_INET, SOCK_DGRAM, 0);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(d->fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(getsockname(d->fd, (struct sockaddr *)&sin, &len), 0);
	d->portnum = ntohs(sin.sin_port);
	evutil_make_socket_nonblocking(d->fd);
	d->port = evdns_add_server_port_with_base(g.base, d->fd, 0, dns_cb, d);
	assert_non_null(d->port);
	dns = evdns_base_new(g.base, 0);
	assert_non_null(dns);
	snprintf(ns, sizeof(ns), "127.0.0.1:%u", d->portnum);
	assert_int_equal(evdns_base_nameserver_ip_add(dns, ns), 0);
	return dns;
}

static void
dns_stop(struct tdns *d, struct evdns_base *dns)
{
	evdns_base_free(dns, 0);
	for (unsigned i = 0; i < d->nheld; i++)
		evdns_server_request_drop(d->held[i]);
	evdns_close_server_port(d->port);
	close(d->fd);
}

static void
host_name_is_resolved_through_evdns(void **state)
{
	struct tsrv s;
	struct tdns d;
	struct evdns_base *dns;
	struct backend *be;
	struct res x;
	char want[96];

	(void)state;
	dns = dns_start(&d);
	srv_start(&s, 0, NULL);
	cfg_server("ok.example.test", s.port);
	cfg_server("nx.example.test", s.port);
	g.cfg.backend.health_check = 3600000;
	be = backend_new(g.base, dns, &g.cfg, NULL);

	acquire(be, "alice@EXAMPLE.TEST", &x);
	assert_int_equal(x.r, REASON_OK);
	assert_true(d.queries >= 1);
	snprintf(want, sizeof(want), "ok.example.test:%u", s.port);
	assert_string_equal(bconn_server_name(x.bc), want);
	backend_release(x.bc, 0);

	/* the next acquire starts at the name that does not exist: it fails
	 * over, and that server is marked down */
	acquire(be, "bob@EXAMPLE.TEST", &x);
	assert_int_equal(x.r, REASON_OK);
	assert_string_equal(bconn_server_name(x.bc), want);
	assert_int_equal(stats(be).servers_up, 1);
	assert_int_equal(stats(be).connect_failures, 1);
	backend_release(x.bc, 0);
	backend_free(be);
	srv_stop(&s);
	dns_stop(&d, dns);
}

static void
unresolvable_name_is_a_connect_failure(void **state)
{
	struct tdns d;
	struct evdns_base *dns;
	struct backend *be;
	struct res x;

	(void)state;
	dns = dns_start(&d);
	cfg_server("nx.example.test", 443);
	be = backend_new(g.base, dns, &g.cfg, NULL);
	acquire(be, "alice@EXAMPLE.TEST", &x);
	assert_int_equal(x.r, REASON_BACKEND_CONNECT);
	assert_non_null(strstr(x.detail, "resolve nx.example.test:443: "));
	backend_free(be);
	dns_stop(&d, dns);
}

static int
pred_queried(void *arg)
{
	return ((struct tdns *)arg)->queries > 0;
}

static void
cancel_during_name_resolution(void **state)
{
	struct tdns d;
	struct evdns_base *dns;
	struct backend *be;
	struct backend_wait *w;
	struct res x;

	(void)state;
	dns = dns_start(&d);
	cfg_server("slow.example.test", 443);
	be = backend_new(g.base, dns, &g.cfg, NULL);

	memset(&x, 0, sizeof(x));
	w = backend_acquire(be, "alice@EXAMPLE.TEST", on_ready, &x);
	assert_non_null(w);
	assert_true(run_until(pred_queried, &d));
	backend_cancel(w);
	run_turns(10);			/* evdns reports the cancel later */
	assert_int_equal(x.called, 0);
	backend_free(be);
	dns_stop(&d, dns);
}

static void
name_resolution_timeout_fails_over(void **state)
{
	struct tsrv s;
	struct tdns d;
	struct evdns_base *dns;
	struct backend *be;
	struct res x;

	(void)state;
	dns = dns_start(&d);
	srv_start(&s, 0, NULL);
	cfg_server("slow.example.test", s.port);
	cfg_server("127.0.0.1", s.port);
	g.cfg.backend.connect_timeout = 100;
	g.cfg.backend.health_check = 3600000;
	be = backend_new(g.base, dns, &g.cfg, NULL);

	acquire(be, "alice@EXAMPLE.TEST", &x);
	assert_int_equal(x.r, REASON_OK);
	assert_int_equal(stats(be).servers_up, 1);
	backend_release(x.bc, 0);
	run_turns(10);			/* the orphaned lookup is reaped */
	backend_free(be);
	srv_stop(&s);
	dns_stop(&d, dns);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(fresh_connection_is_ready_and_counted, setup, teardown),
		cmocka_unit_test_setup_teardown(same_principal_reuses_the_idle_connection, setup, teardown),
		cmocka_unit_test_setup_teardown(other_principal_never_gets_an_idle_connection, setup, teardown),
		cmocka_unit_test_setup_teardown(idle_connection_closes_after_pool_idle, setup, teardown),
		cmocka_unit_test_setup_teardown(server_closing_an_idle_connection_removes_it, setup, teardown),
		cmocka_unit_test_setup_teardown(unsolicited_data_on_an_idle_connection_closes_it, setup, teardown),
		cmocka_unit_test_setup_teardown(release_with_unread_data_closes, setup, teardown),
		cmocka_unit_test_setup_teardown(round_robin_spreads_new_connections, setup, teardown),
		cmocka_unit_test_setup_teardown(refused_server_fails_over_and_is_marked_down, setup, teardown),
		cmocka_unit_test_setup_teardown(all_servers_failing_then_backend_down, setup, teardown),
		cmocka_unit_test_setup_teardown(health_check_brings_a_server_back, setup, teardown),
		cmocka_unit_test_setup_teardown(report_failure_marks_the_server_down, setup, teardown),
		cmocka_unit_test_setup_teardown(without_health_checks_servers_are_never_marked_down, setup, teardown),
		cmocka_unit_test_setup_teardown(tls_connection_is_verified_and_gives_the_channel_binding_hash, setup, teardown),
		cmocka_unit_test_setup_teardown(tls_with_the_wrong_ca_is_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(tls_host_name_mismatch_is_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(tls_server_that_never_answers_times_out, setup, teardown),
		cmocka_unit_test_setup_teardown(tls_server_closing_in_the_handshake_is_a_tls_failure, setup, teardown),
		cmocka_unit_test_setup_teardown(cancel_before_ready_never_calls_back, setup, teardown),
		cmocka_unit_test_setup_teardown(backend_free_releases_everything, setup, teardown),
		cmocka_unit_test_setup_teardown(host_name_is_resolved_through_evdns, setup, teardown),
		cmocka_unit_test_setup_teardown(unresolvable_name_is_a_connect_failure, setup, teardown),
		cmocka_unit_test_setup_teardown(cancel_during_name_resolution, setup, teardown),
		cmocka_unit_test_setup_teardown(name_resolution_timeout_fails_over, setup, teardown),
	};

	/* as in the daemon: a write to a connection the peer closed is an
	 * error return, not a signal */
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
