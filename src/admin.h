/*
 * admin.h — the admin listener (SPEC §3 admin_listen, §8): plain HTTP on a
 * loopback address, served by every worker from the socket the parent
 * bound, answering only
 *   GET /metrics   Prometheus text (metrics.c, the sum of every process)
 *   GET /healthz   200 while the process answers
 *   GET /readyz    200 when kcd runs and holds the proxy's TGT (not yet
 *                  expired) and a backend server is up, else 503 with
 *                  the missing part ("not ready: kcd: no TGT for ...")
 * and 404/405/400 to anything else. One request per connection; a request
 * head larger than ADMIN_MAX_HEAD or slower than ADMIN_TIMEOUT_MS is
 * dropped. Nothing here touches device traffic.
 */
#ifndef EKP_ADMIN_H
#define EKP_ADMIN_H

struct event_base;
struct admin;

#define ADMIN_MAX_HEAD		4096
#define ADMIN_TIMEOUT_MS	5000

/* Serve the listening socket fd (owned from here on). NULL on failure. */
struct admin *admin_new(struct event_base *base, int fd);
/* Stop accepting and close every admin connection. */
void admin_free(struct admin *a);

/* The answer to one request line (pure; unit-tested). Writes the status and
 * the body into body (NUL-terminated) and the content type into *ctype. */
int admin_answer(const char *method, const char *path, char *body, size_t len,
    const char **ctype);

#endif
