/* admin.c — /metrics, /healthz, /readyz for load balancers and Prometheus. */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "admin.h"
#include "log.h"
#include "metrics.h"

#define ADMIN_MAGIC	0x41444d4eu	/* "ADMN" */
#define ACONN_MAGIC	0x41434f4eu	/* "ACON" */
#define BODY_MAX	(256u * 1024u)

struct aconn {
	unsigned magic;
	struct admin *a;
	struct bufferevent *bev;
	LIST_ENTRY(aconn) link;
};

struct admin {
	unsigned magic;
	struct event_base *base;
	int fd;
	struct event *ev;
	LIST_HEAD(, aconn) conns;
};

int
admin_answer(const char *method, const char *path, char *body, size_t len,
    const char **ctype)
{
	const struct metrics_shm *m = metrics_shm_self();
	char why[768];
	size_t n;

	*ctype = "text/plain; charset=utf-8";
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
		snprintf(body, len, "only GET\n");
		return 405;
	}
	if (strcmp(path, "/healthz") == 0) {
		snprintf(body, len, "ok\n");
		return 200;
	}
	if (strcmp(path, "/readyz") == 0) {
		if (m == NULL) {
			snprintf(body, len, "not ready: no metrics region\n");
			return 503;
		}
		if (metrics_ready(m, why, sizeof(why))) {
			snprintf(body, len, "ready\n");
			return 200;
		}
		snprintf(body, len, "not ready: %s\n", why);
		return 503;
	}
	if (strcmp(path, "/metrics") == 0) {
		if (m == NULL || (n = metrics_render(m, body, len)) == 0) {
			snprintf(body, len, "metrics unavailable\n");
			return 500;
		}
		*ctype = "text/plain; version=0.0.4; charset=utf-8";
		return 200;
	}
	snprintf(body, len, "not found: /metrics /healthz /readyz\n");
	return 404;
}

static void
aconn_free(struct aconn *c)
{
	assert(c->magic == ACONN_MAGIC);
	LIST_REMOVE(c, link);
	bufferevent_free(c->bev);
	c->magic = 0;
	free(c);
}

static void
on_written(struct bufferevent *bev, void *arg)
{
	struct aconn *c = arg;

	(void)bev;
	assert(c->magic == ACONN_MAGIC);
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		aconn_free(c);
}

static void
respond(struct aconn *c, int status, const char *ctype, const char *body, int head_only)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	size_t blen = strlen(body);

	evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
	    "Cache-Control: no-store\r\nConnection: close\r\n\r\n", status,
	    status == 200 ? "OK" : status == 404 ? "Not Found" : status == 405 ?
	    "Method Not Allowed" : status == 503 ? "Service Unavailable" :
	    status == 400 ? "Bad Request" : "Internal Server Error", ctype, blen);
	if (!head_only)
		evbuffer_add(out, body, blen);
	bufferevent_disable(c->bev, EV_READ);
	bufferevent_setcb(c->bev, NULL, on_written, NULL, c);
}

static void
on_read(struct bufferevent *bev, void *arg)
{
	struct aconn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct evbuffer_ptr end;
	char line[256], method[16], path[128];
	static char body[BODY_MAX];
	const char *ctype = "text/plain";
	size_t n;
	int status;

	assert(c->magic == ACONN_MAGIC);
	end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
	if (end.pos < 0)
		end = evbuffer_search(in, "\n\n", 2, NULL);
	if (end.pos < 0) {
		if (evbuffer_get_length(in) > ADMIN_MAX_HEAD)
			aconn_free(c);
		return;
	}
	n = evbuffer_copyout(in, line, sizeof(line) - 1);
	line[n] = '\0';
	line[strcspn(line, "\r\n")] = '\0';
	if (sscanf(line, "%15s %127s HTTP/1.%*c", method, path) != 2) {
		respond(c, 400, "text/plain", "bad request\n", 0);
		return;
	}
	path[strcspn(path, "?")] = '\0';
	status = admin_answer(method, path, body, sizeof(body), &ctype);
	respond(c, status, ctype, body, strcmp(method, "HEAD") == 0);
}

static void
on_event(struct bufferevent *bev, short what, void *arg)
{
	struct aconn *c = arg;

	(void)bev;
	(void)what;
	aconn_free(c);		/* closed, timed out or failed: nothing to say */
}

static void
on_accept(evutil_socket_t lfd, short what, void *arg)
{
	struct admin *a = arg;
	struct timeval tv = { ADMIN_TIMEOUT_MS / 1000, (ADMIN_TIMEOUT_MS % 1000) * 1000 };

	(void)what;
	assert(a->magic == ADMIN_MAGIC);
	for (int i = 0; i < 16; i++) {
		struct aconn *c;
		int fd = accept4((int)lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
			    errno != ECONNABORTED)
				log_warn("admin", "accept: %s", strerror(errno));
			return;
		}
		if ((c = calloc(1, sizeof(*c))) == NULL ||
		    (c->bev = bufferevent_socket_new(a->base, fd, BEV_OPT_CLOSE_ON_FREE)) == NULL) {
			free(c);
			close(fd);
			return;
		}
		c->magic = ACONN_MAGIC;
		c->a = a;
		LIST_INSERT_HEAD(&a->conns, c, link);
		bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
		bufferevent_set_timeouts(c->bev, &tv, &tv);
		bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	}
}

struct admin *
admin_new(struct event_base *base, int fd)
{
	struct admin *a = calloc(1, sizeof(*a));

	if (a == NULL) {
		close(fd);
		return NULL;
	}
	a->magic = ADMIN_MAGIC;
	a->base = base;
	a->fd = fd;
	LIST_INIT(&a->conns);
	if ((a->ev = event_new(base, fd, EV_READ | EV_PERSIST, on_accept, a)) == NULL ||
	    event_add(a->ev, NULL) != 0) {
		admin_free(a);
		return NULL;
	}
	return a;
}

void
admin_free(struct admin *a)
{
	if (a == NULL)
		return;
	assert(a->magic == ADMIN_MAGIC);
	while (!LIST_EMPTY(&a->conns))
		aconn_free(LIST_FIRST(&a->conns));
	if (a->ev != NULL)
		event_free(a->ev);
	close(a->fd);
	a->magic = 0;
	free(a);
}
