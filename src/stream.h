/*
 * stream.h — one device connection, from accept to its single close
 * (docs/architecture.md "One request").
 */
#ifndef EKP_STREAM_H
#define EKP_STREAM_H

#include <sys/socket.h>

struct worker;

/* Take over an accepted, non-blocking, close-on-exec socket. fd is the
 * stream's in every case (closed on failure); sa/salen are the peer's
 * address as accept4() returned it. A stream counts itself with
 * front_conn_opened/front_conn_closed. Returns 0, or -1 when the
 * connection was refused at once. */
int stream_accept(struct worker *w, int fd, const struct sockaddr *sa, socklen_t salen);

#include <stddef.h>

/* Build what every stream of this worker shares — the device and backend
 * TLS contexts (so it runs while the worker is still root), DNS, the
 * backend pools — from the worker's config, and hand it to the worker
 * (front_set_stream_env). The access log file is opened by the process
 * (access_log_open); streams write it. Returns 0, or -1 with the cause in
 * err. */
int stream_env_init(struct worker *w, char *err, size_t errlen);

/* Draining: close w's keep-alive connections that are between requests;
 * the others close after their current request. */
void stream_drain_idle(struct worker *w);

/* Worker exit: close every stream of w that is left (reason shutdown,
 * each logged), then free the shared environment. */
void stream_shutdown(struct worker *w);

#endif
