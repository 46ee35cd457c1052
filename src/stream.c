/*
 * stream.c — PLACEHOLDER until the TLS/stream work replaces this file.
 *
 * It exists so that the daemon links and its process model (accept, drain,
 * restart) can be run and tested: an accepted connection is logged at debug
 * and closed at once. No TLS, no HTTP, nothing is read from the socket.
 */
#include <unistd.h>

#include "front.h"
#include "log.h"
#include "stream.h"

int
stream_accept(struct worker *w, int fd, const struct sockaddr *sa, socklen_t salen)
{
	(void)sa;
	(void)salen;
	log_debug("stream", "worker %u: connection accepted and closed (placeholder stream.c)",
	    front_slot(w));
	close(fd);
	return 0;
}
