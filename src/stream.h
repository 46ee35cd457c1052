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

#endif
