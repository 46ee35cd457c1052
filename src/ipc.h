/*
 * ipc.h — framed messages between the parent, the workers and kcd.
 *
 * Channels are AF_UNIX SOCK_SEQPACKET socketpairs. A datagram carries one
 * frame, or — from a batching sender (ipc_chan_set_batching) — several
 * frames back to back, at most IPC_MAX_DGRAM bytes in all; a datagram
 * that carries a file descriptor (SCM_RIGHTS) carries exactly one frame.
 * The receiver walks the datagram frame by frame: every header must be
 * whole, its payload may not exceed IPC_MAX_PAYLOAD nor run past the end
 * of the datagram, and nothing may be left over after the last frame. A
 * datagram that breaks a rule anywhere is refused as a whole (none of its
 * frames is dispatched) and closes the channel (OpenSSH monitor, OpenBSD
 * imsg). Every channel receiver accepts packed datagrams, batching or not,
 * so the two ends may differ; ipc_recv_blocking does not (see there).
 * Payloads are built and read with the bounds-checked ipc_buf / ipc_rd
 * helpers below, never by casting structs.
 *
 * Wire header (little-endian is not assumed: fields are host order, both
 * ends are the same binary on the same host):
 *   uint32 magic   IPC_MAGIC
 *   uint16 type    enum ipc_type
 *   uint16 flags   reserved, must be 0
 *   uint32 id      request id, echoed in the answer (0 for notifications)
 *   uint32 len     payload bytes that follow
 */
#ifndef EKP_IPC_H
#define EKP_IPC_H

#include <stddef.h>
#include <stdint.h>

struct event_base;

#define IPC_MAGIC	0x454b5031u	/* "EKP1" */
#define IPC_HDR_LEN	16u
#define IPC_MAX_PAYLOAD	(64u * 1024u)
#define IPC_MAX_FRAME	(IPC_HDR_LEN + IPC_MAX_PAYLOAD)
#define IPC_MAX_DGRAM	IPC_MAX_FRAME	/* a packed datagram: no larger than one frame can be */
#define IPC_MAX_QUEUE	4096u		/* queued outbound datagrams before the channel is declared stuck */

enum ipc_type {
#define IPC_MSG(id, name) IPC_##id,
#include "tbl/ipc_msgs.h"
#undef IPC_MSG
	IPC__COUNT
};

const char *ipc_type_name(unsigned type);

/* A decoded frame; data points into the receive buffer, valid only during
 * the callback. fd is -1 unless one was passed; the callback owns it. */
struct ipc_msg {
	uint16_t type;
	uint32_t id;
	const uint8_t *data;
	size_t len;
	int fd;
};

/* Pure framing, unit-tested. encode returns the frame length or -1 when the
 * payload is too large or cap too small. decode takes exactly one frame of
 * n bytes and returns 0, or -1 with the broken rule in err (bad magic,
 * short frame, length mismatch, oversized, unknown type, flags set). */
long ipc_frame_encode(uint8_t *buf, size_t cap, uint16_t type, uint32_t id,
    const void *payload, size_t len);
int ipc_frame_decode(const uint8_t *buf, size_t n, struct ipc_msg *out,
    char *err, size_t errlen);
/* A datagram of n bytes holding one or more frames: every frame is checked
 * (the rules of ipc_frame_decode, each length against the bytes left, no
 * bytes after the last frame) before any is looked at. Returns the number
 * of frames (>= 1), or -1 with the broken rule and the frame's place in
 * err (truncated header, length mismatch, trailing bytes, ...). Then
 * ipc_dgram_next walks it: *off starts at 0; returns 1 with the next frame
 * in out (fd -1; data points into buf), 0 at the end. Only for a buffer
 * ipc_dgram_check accepted. */
int ipc_dgram_check(const uint8_t *buf, size_t n, char *err, size_t errlen);
int ipc_dgram_next(const uint8_t *buf, size_t n, size_t *off, struct ipc_msg *out);

/* Payload builder: appends length-prefixed fields into a fixed buffer.
 * Any overflow sets err and makes every later call a no-op, so callers
 * check once at the end (ipc_buf.err). */
struct ipc_buf {
	uint8_t data[IPC_MAX_PAYLOAD];
	size_t len;
	int err;
};
void ipc_buf_init(struct ipc_buf *b);
void ipc_put_u32(struct ipc_buf *b, uint32_t v);
void ipc_put_u64(struct ipc_buf *b, uint64_t v);
void ipc_put_bytes(struct ipc_buf *b, const void *p, size_t n);	/* u32 len + bytes */
void ipc_put_str(struct ipc_buf *b, const char *s);		/* NULL -> empty */

/* Payload reader over untrusted bytes. Strings come back NUL-terminated in
 * the caller's buffer and may not contain NUL. Any violation sets err. */
struct ipc_rd {
	const uint8_t *p;
	size_t left;
	int err;
};
void ipc_rd_init(struct ipc_rd *r, const void *data, size_t len);
uint32_t ipc_get_u32(struct ipc_rd *r);
uint64_t ipc_get_u64(struct ipc_rd *r);
/* Points *p at the bytes inside the payload (no copy); returns the length. */
size_t ipc_get_bytes(struct ipc_rd *r, const uint8_t **p);
/* Copies a string into buf (cap includes the NUL); too long or with NUL
 * inside -> err. */
void ipc_get_str(struct ipc_rd *r, char *buf, size_t cap);
/* 0 when every field was read and nothing is left over, else -1. */
int ipc_rd_done(const struct ipc_rd *r);

/* A channel on an event loop. */
struct ipc_chan;
typedef void ipc_msg_fn(struct ipc_chan *ch, const struct ipc_msg *msg, void *arg);
/* Called once when the channel dies (peer closed, bad frame, queue full);
 * why names the cause. The callback may free the channel. */
typedef void ipc_close_fn(struct ipc_chan *ch, const char *why, void *arg);

/* socketpair(AF_UNIX, SOCK_SEQPACKET), both ends non-blocking, close-on-exec. */
int ipc_socketpair(int fds[2]);
/* Takes ownership of fd. peer names the other end in logs ("kcd", "worker 3"). */
struct ipc_chan *ipc_chan_new(struct event_base *base, int fd, const char *peer,
    ipc_msg_fn *on_msg, ipc_close_fn *on_close, void *arg);
/* Queue one frame; pass_fd is duplicated-by-kernel on send and stays owned by
 * the caller (close it after the call returns). Returns 0 or -1 (payload too
 * large, channel dead, queue full). */
int ipc_send(struct ipc_chan *ch, uint16_t type, uint32_t id,
    const void *payload, size_t len, int pass_fd);
const char *ipc_chan_peer(const struct ipc_chan *ch);
/* Batching, for a channel that sends many small frames per turn of the
 * event loop (a worker's token requests and context releases to kcd, and
 * kcd's answers): frames without a descriptor are packed back to back
 * into one datagram of up to IPC_MAX_DGRAM bytes, sent at the end of the
 * loop's current turn (or sooner when the next frame would not fit, or
 * when a frame with a descriptor is sent: that one goes alone, after
 * them). Order is kept. Reads take several datagrams per recvmmsg(2).
 * Frames still batched when the channel is freed are sent first. Off by
 * default; either end may batch or not. Returns 0 or -1 (out of memory). */
int ipc_chan_set_batching(struct ipc_chan *ch, int on);
/* As ipc_send (no descriptor), for a frame that asks no answer and may
 * wait: on a batching channel it is packed into the batch but schedules no
 * send of its own; it leaves with the next frame that does, or within
 * 50 ms. A worker's context releases go so: a request alone on the loop
 * then costs kcd one wake-up, not two. On a channel that is not batching,
 * ipc_send. */
int ipc_send_lazy(struct ipc_chan *ch, uint16_t type, uint32_t id,
    const void *payload, size_t len);
void ipc_chan_free(struct ipc_chan *ch);
/* Read, without waiting, what the peer has already sent, as a read event
 * would (one burst of frames): on_msg for each frame, on_close at the end
 * of the stream. For the last words of a child known to have exited,
 * before its channel is freed: its SIGCHLD may be seen before the
 * channel's read event. The callbacks may free the channel: the caller
 * looks at its own pointer to it afterwards. Does nothing on a dead
 * channel or from inside one of its callbacks. */
void ipc_chan_drain(struct ipc_chan *ch);

/* Blocking helpers for tools and the doctor (no event loop). */
int ipc_send_blocking(int fd, uint16_t type, uint32_t id, const void *payload,
    size_t len, int pass_fd);
/* Receives one frame into buf (cap >= IPC_MAX_FRAME), waiting up to
 * timeout_ms (-1 = forever). Returns 0, or -1 with err. A datagram of
 * several frames is refused ("packed datagram of N frames"): use it with a
 * peer that does not batch, or with one request outstanding at a time. */
int ipc_recv_blocking(int fd, uint8_t *buf, size_t cap, struct ipc_msg *out,
    int timeout_ms, char *err, size_t errlen);

#endif
