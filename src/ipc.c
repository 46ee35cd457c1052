/*
 * ipc.c — framed messages over AF_UNIX SOCK_SEQPACKET socketpairs; see ipc.h.
 *
 * A datagram holds one frame, or several back to back from a batching
 * sender. The receiver reads into a buffer of exactly IPC_MAX_DGRAM bytes,
 * so anything longer arrives with MSG_TRUNC and is refused; a datagram
 * whose file descriptor did not fit arrives with MSG_CTRUNC and is refused
 * too (the kernel has dropped the descriptor, and a message that lost its
 * descriptor must not be acted on). Every frame of a datagram is checked
 * (ipc_dgram_check) before the first is dispatched, and a descriptor may
 * only come with a datagram of one frame. Every refusal closes the channel
 * with the broken rule as the cause (OpenBSD imsg, OpenSSH monitor).
 *
 * Sending tries the socket first; when it is full the frame is copied into a
 * bounded queue and EV_WRITE flushes it in order. A descriptor that waits in
 * the queue is dup()ed, because the caller closes its own copy as soon as
 * ipc_send() returns.
 *
 * A peer that closes its end with frames of ours unread (AF_UNIX then
 * reports ECONNRESET once, before the frames the peer had sent) ends the
 * stream like any other close, after those frames: a child that refuses
 * to start before reading its first message still has its last words read.
 *
 * Callbacks may free the channel (ipc_chan_free) from inside on_msg or
 * on_close: the channel counts the callbacks it is inside of and frees
 * itself only when the last one has returned.
 *
 * Batching (ipc_chan_set_batching): frames without a descriptor are packed
 * into one datagram (bbuf, IPC_MAX_DGRAM bytes) that one sendmsg(2) sends
 * at the end of the event loop's current turn (an event made active on the
 * first frame: it runs after the callbacks already due in this turn); the
 * kernel then allocates, queues and wakes the reader once for all of them.
 * A frame that does not fit sends the batch first and starts the next one;
 * a frame with a descriptor sends the batch first and goes alone. When the
 * socket's queue is not empty, the packed datagram joins it behind what is
 * there. Reads take up to IPC_RX_BATCH datagrams per recvmmsg(2).
 *
 * A lazy frame (ipc_send_lazy) is packed the same way but schedules no
 * send of its own: it leaves with the next frame that does, or when
 * flush_ev's timeout (IPC_LAZY_MS) ends, whichever comes first. flush_due
 * says the send is already scheduled for this turn.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <event2/event.h>

#include "ipc.h"
#include "log.h"

#define CHAN_MAGIC	0x4950434eu	/* "IPCN" */
#define READ_BURST	64		/* frames dispatched per wake-up, for
					 * fairness (a datagram is always
					 * finished) */
#define MAX_RX_FDS	8		/* room to receive (and close) unwanted extras */
#define IPC_RX_BATCH	8		/* datagrams in one recvmmsg */
#define IPC_LAZY_MS	50		/* the longest a lazy frame waits */

static const char *const type_names[] = {
#define IPC_MSG(id, name) name,
#include "tbl/ipc_msgs.h"
#undef IPC_MSG
};

const char *
ipc_type_name(unsigned type)
{
	if (type >= IPC__COUNT)
		return "unknown";
	return type_names[type];
}

/* ---- framing ------------------------------------------------------------ */

static void
put_hdr(uint8_t *h, uint16_t type, uint32_t id, uint32_t len)
{
	uint32_t magic = IPC_MAGIC;
	uint16_t flags = 0;

	memcpy(h, &magic, 4);
	memcpy(h + 4, &type, 2);
	memcpy(h + 6, &flags, 2);
	memcpy(h + 8, &id, 4);
	memcpy(h + 12, &len, 4);
}

long
ipc_frame_encode(uint8_t *buf, size_t cap, uint16_t type, uint32_t id,
    const void *payload, size_t len)
{
	if (len > IPC_MAX_PAYLOAD || cap < IPC_HDR_LEN + len)
		return -1;
	if (len > 0 && payload == NULL)
		return -1;
	put_hdr(buf, type, id, (uint32_t)len);
	if (len > 0)
		memcpy(buf + IPC_HDR_LEN, payload, len);
	return (long)(IPC_HDR_LEN + len);
}

/*
 * The frame at off of a datagram of n bytes (off < n or n == 0): checked
 * against the bytes left and decoded into out (fd -1), its length in
 * *flen. idx is its place in the datagram (0: the first), named in err.
 * Returns 0, or -1 with the broken rule in err (formatted only then: this
 * runs for every frame received).
 */
static int
frame_at(const uint8_t *buf, size_t n, size_t off, unsigned idx, struct ipc_msg *out,
    size_t *flen, char *err, size_t errlen)
{
	const uint8_t *h = buf + off;
	size_t left = n - off;
	uint32_t magic, id, len;
	uint16_t type, flags;
	char rule[160];

	if (left < IPC_HDR_LEN) {
		if (idx == 0) {
			snprintf(err, errlen, "short frame: %zu bytes, the header alone is %u",
			    left, IPC_HDR_LEN);
			return -1;
		}
		snprintf(rule, sizeof(rule), "truncated header: %zu trailing bytes, a header is %u",
		    left, IPC_HDR_LEN);
		goto fail;
	}
	memcpy(&magic, h, 4);
	memcpy(&type, h + 4, 2);
	memcpy(&flags, h + 6, 2);
	memcpy(&id, h + 8, 4);
	memcpy(&len, h + 12, 4);
	if (magic != IPC_MAGIC) {
		snprintf(rule, sizeof(rule), "bad magic 0x%08x (want 0x%08x)", magic, IPC_MAGIC);
		goto fail;
	}
	if (flags != 0) {
		snprintf(rule, sizeof(rule), "reserved flags 0x%04x set", flags);
		goto fail;
	}
	if (len > IPC_MAX_PAYLOAD) {
		snprintf(rule, sizeof(rule), "oversized frame: payload length %u exceeds %u", len,
		    IPC_MAX_PAYLOAD);
		goto fail;
	}
	if ((size_t)len > left - IPC_HDR_LEN) {
		snprintf(rule, sizeof(rule), "length mismatch: header says %u payload bytes, the "
		    "datagram has %zu left", len, left - IPC_HDR_LEN);
		goto fail;
	}
	if (type == IPC_NONE || type >= IPC__COUNT) {
		snprintf(rule, sizeof(rule), "unknown message type %u", type);
		goto fail;
	}
	out->type = type;
	out->id = id;
	out->data = h + IPC_HDR_LEN;
	out->len = len;
	out->fd = -1;
	*flen = IPC_HDR_LEN + (size_t)len;
	return 0;
fail:
	if (idx == 0)
		snprintf(err, errlen, "%s", rule);
	else
		snprintf(err, errlen, "frame %u at byte %zu of the datagram: %s", idx + 1, off, rule);
	return -1;
}

int
ipc_frame_decode(const uint8_t *buf, size_t n, struct ipc_msg *out,
    char *err, size_t errlen)
{
	struct ipc_msg m;
	size_t flen;

	if (frame_at(buf, n, 0, 0, &m, &flen, err, errlen) != 0)
		return -1;
	if (flen != n) {
		snprintf(err, errlen, "length mismatch: header says %zu payload bytes, frame has %zu",
		    m.len, n - IPC_HDR_LEN);
		return -1;
	}
	*out = m;
	return 0;
}

int
ipc_dgram_check(const uint8_t *buf, size_t n, char *err, size_t errlen)
{
	struct ipc_msg m;
	size_t off = 0, flen;
	unsigned count = 0;

	/* every frame takes at least IPC_HDR_LEN bytes: the walk ends */
	do {
		if (frame_at(buf, n, off, count, &m, &flen, err, errlen) != 0)
			return -1;
		off += flen;
		count++;
	} while (off < n);
	return (int)count;
}

int
ipc_dgram_next(const uint8_t *buf, size_t n, size_t *off, struct ipc_msg *out)
{
	struct ipc_msg m;
	size_t flen;
	char err[8];

	if (*off >= n)
		return 0;
	/* checked again (cheap), so a misuse ends the walk instead of
	 * reading past the buffer */
	if (frame_at(buf, n, *off, 1, &m, &flen, err, sizeof(err)) != 0)
		return 0;
	*out = m;
	*off += flen;
	return 1;
}

/* ---- payload builder ---------------------------------------------------- */

void
ipc_buf_init(struct ipc_buf *b)
{
	b->len = 0;
	b->err = 0;
}

static void
put_raw(struct ipc_buf *b, const void *p, size_t n)
{
	if (b->err)
		return;
	if (n > sizeof(b->data) - b->len) {
		b->err = 1;
		return;
	}
	if (n > 0)
		memcpy(b->data + b->len, p, n);
	b->len += n;
}

void
ipc_put_u32(struct ipc_buf *b, uint32_t v)
{
	put_raw(b, &v, sizeof(v));
}

void
ipc_put_u64(struct ipc_buf *b, uint64_t v)
{
	put_raw(b, &v, sizeof(v));
}

void
ipc_put_bytes(struct ipc_buf *b, const void *p, size_t n)
{
	if (b->err)
		return;
	/* the prefix and the bytes go in together or not at all */
	if (n > UINT32_MAX || (n > 0 && p == NULL) ||
	    sizeof(uint32_t) + n > sizeof(b->data) - b->len) {
		b->err = 1;
		return;
	}
	ipc_put_u32(b, (uint32_t)n);
	put_raw(b, p, n);
}

void
ipc_put_str(struct ipc_buf *b, const char *s)
{
	if (s == NULL)
		s = "";
	ipc_put_bytes(b, s, strlen(s));
}

/* ---- payload reader ----------------------------------------------------- */

void
ipc_rd_init(struct ipc_rd *r, const void *data, size_t len)
{
	r->p = data;
	r->left = data == NULL ? 0 : len;
	r->err = 0;
}

static int
get_raw(struct ipc_rd *r, void *out, size_t n)
{
	if (r->err || r->left < n) {
		r->err = 1;
		return -1;
	}
	memcpy(out, r->p, n);
	r->p += n;
	r->left -= n;
	return 0;
}

uint32_t
ipc_get_u32(struct ipc_rd *r)
{
	uint32_t v;

	return get_raw(r, &v, sizeof(v)) == 0 ? v : 0;
}

uint64_t
ipc_get_u64(struct ipc_rd *r)
{
	uint64_t v;

	return get_raw(r, &v, sizeof(v)) == 0 ? v : 0;
}

size_t
ipc_get_bytes(struct ipc_rd *r, const uint8_t **p)
{
	uint32_t n = ipc_get_u32(r);

	*p = NULL;
	if (r->err)
		return 0;
	if (n > r->left) {
		r->err = 1;
		return 0;
	}
	*p = r->p;
	r->p += n;
	r->left -= n;
	return n;
}

void
ipc_get_str(struct ipc_rd *r, char *buf, size_t cap)
{
	const uint8_t *p;
	size_t n = ipc_get_bytes(r, &p);

	if (cap > 0)
		buf[0] = '\0';
	if (r->err)
		return;
	if (cap == 0 || n >= cap || (n > 0 && memchr(p, '\0', n) != NULL)) {
		r->err = 1;
		return;
	}
	if (n > 0)
		memcpy(buf, p, n);
	buf[n] = '\0';
}

int
ipc_rd_done(const struct ipc_rd *r)
{
	return (r->err || r->left != 0) ? -1 : 0;
}

/* ---- channels ----------------------------------------------------------- */

/* One datagram (a frame, or a batch of them) waiting for the socket to
 * drain. fd is our own dup (or -1). */
struct qframe {
	struct qframe *next;
	int fd;
	size_t len;
	uint8_t data[];
};

struct ipc_chan {
	unsigned magic;
	struct event_base *base;
	int fd;				/* -1 once the channel is dead */
	char peer[48];
	ipc_msg_fn *on_msg;
	ipc_close_fn *on_close;
	void *arg;
	struct event *rev, *wev;
	struct event *close_ev;		/* reports a failure found inside ipc_send */
	struct qframe *qhead, *qtail;
	unsigned qlen;
	uint8_t *rx;			/* rx_slots times IPC_MAX_DGRAM bytes */
	unsigned rx_slots;		/* 1, IPC_RX_BATCH once a batching
					 * channel has read */
	int dead;			/* no more sending or receiving */
	int batching;			/* ipc_chan_set_batching */
	struct event *flush_ev;		/* sends the batch: made active by the
					 * first frame that is not lazy, its
					 * timeout set by a lazy first frame */
	int flush_due;			/* flush_ev is active */
	unsigned nb;			/* frames in the batch */
	size_t bused;			/* their bytes in bbuf, back to back */
	uint8_t *bbuf;			/* IPC_MAX_DGRAM, when batching */
	int reset;			/* the peer left frames of ours unread (rx_failed) */
	int closed_reported;		/* on_close has been (or is being) called */
	int busy;			/* callbacks we are inside of */
	int free_pending;		/* ipc_chan_free came from inside a callback */
	char why[256];			/* cause kept for the deferred report */
};

static void
queue_drop(struct ipc_chan *ch)
{
	struct qframe *q;

	while ((q = ch->qhead) != NULL) {
		ch->qhead = q->next;
		if (q->fd >= 0)
			close(q->fd);
		free(q);
	}
	ch->qtail = NULL;
	ch->qlen = 0;
}

static void
chan_destroy(struct ipc_chan *ch)
{
	queue_drop(ch);
	if (ch->rev != NULL)
		event_free(ch->rev);
	if (ch->wev != NULL)
		event_free(ch->wev);
	if (ch->close_ev != NULL)
		event_free(ch->close_ev);
	if (ch->flush_ev != NULL)
		event_free(ch->flush_ev);
	if (ch->fd >= 0)
		close(ch->fd);
	free(ch->bbuf);
	free(ch->rx);
	ch->magic = 0;
	free(ch);
}

/* Stop all I/O: the peer sees EOF at once, queued frames are dropped. */
static void
chan_kill(struct ipc_chan *ch, const char *why)
{
	if (ch->dead)
		return;
	ch->dead = 1;
	snprintf(ch->why, sizeof(ch->why), "%s", why);
	event_del(ch->rev);
	event_del(ch->wev);
	if (ch->flush_ev != NULL)
		event_del(ch->flush_ev);
	ch->nb = 0;
	ch->bused = 0;
	queue_drop(ch);
	close(ch->fd);
	ch->fd = -1;
}

/* Report the death once. Returns 1 when the channel was freed meanwhile
 * (the caller must not touch it again). */
static int
report_close(struct ipc_chan *ch)
{
	if (ch->closed_reported)
		return 0;
	ch->closed_reported = 1;
	ch->busy++;
	ch->on_close(ch, ch->why, ch->arg);
	ch->busy--;
	if (ch->busy == 0 && ch->free_pending) {
		chan_destroy(ch);
		return 1;
	}
	return 0;
}

/* A failure found in an event callback: kill and report now. */
static int
chan_fail(struct ipc_chan *ch, const char *why)
{
	chan_kill(ch, why);
	return report_close(ch);
}

/* A failure found inside ipc_send(): the caller is in the middle of its own
 * code, so the report waits for the event loop. */
static void
chan_fail_later(struct ipc_chan *ch, const char *why)
{
	chan_kill(ch, why);
	event_active(ch->close_ev, 0, 0);
}

static void
on_deferred_close(evutil_socket_t fd, short what, void *arg)
{
	struct ipc_chan *ch = arg;

	(void)fd;
	(void)what;
	assert(ch->magic == CHAN_MAGIC);
	report_close(ch);
}

/* sendmsg one frame; returns 0, or -1 with errno. */
static int
send_frame(int fd, const void *hdr, size_t hlen, const void *payload, size_t len, int pass_fd)
{
	struct iovec iov[2];
	struct msghdr mh;
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} cm;
	ssize_t n;

	memset(&mh, 0, sizeof(mh));
	iov[0].iov_base = (void *)hdr;
	iov[0].iov_len = hlen;
	iov[1].iov_base = (void *)payload;
	iov[1].iov_len = len;
	mh.msg_iov = iov;
	mh.msg_iovlen = len > 0 ? 2 : 1;
	if (pass_fd >= 0) {
		struct cmsghdr *c;

		memset(&cm, 0, sizeof(cm));
		mh.msg_control = cm.buf;
		mh.msg_controllen = sizeof(cm.buf);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
	}
	do {
		n = sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -1;
	if ((size_t)n != hlen + len) {
		/* SEQPACKET is all or nothing; anything else is a kernel surprise */
		errno = EMSGSIZE;
		return -1;
	}
	return 0;
}

static void
on_write(evutil_socket_t fd, short what, void *arg)
{
	struct ipc_chan *ch = arg;
	struct qframe *q;
	char why[160];

	(void)fd;
	(void)what;
	assert(ch->magic == CHAN_MAGIC);
	while ((q = ch->qhead) != NULL) {
		if (send_frame(ch->fd, q->data, q->len, NULL, 0, q->fd) != 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;		/* wev stays armed */
			snprintf(why, sizeof(why), "send to %s failed: %s", ch->peer, strerror(errno));
			chan_fail(ch, why);
			return;
		}
		ch->qhead = q->next;
		if (ch->qhead == NULL)
			ch->qtail = NULL;
		ch->qlen--;
		if (q->fd >= 0)
			close(q->fd);
		free(q);
	}
	event_del(ch->wev);
}

/* Collect the descriptors of one message. Returns the one fd (or -1), or
 * -2 after closing them all when there were several. */
static int
take_fds(struct msghdr *mh)
{
	struct cmsghdr *c;
	int fd = -1, count = 0;

	for (c = CMSG_FIRSTHDR(mh); c != NULL; c = CMSG_NXTHDR(mh, c)) {
		size_t n, i;

		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (i = 0; i < n; i++) {
			int one;

			memcpy(&one, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (count++ == 0)
				fd = one;
			else
				close(one);
		}
	}
	if (count > 1) {
		close(fd);
		return -2;
	}
	return fd;
}

/*
 * One received datagram of n bytes at buf, its control data in mh: refused
 * as a whole (the channel closes with the broken rule) or its frames handed
 * to on_msg one by one, in order, *frames counting them. Returns 0 to go on
 * reading, 1 when the channel died, 2 when it was freed meanwhile (then ch
 * must not be touched).
 */
static int
rx_one(struct ipc_chan *ch, struct msghdr *mh, ssize_t n, const uint8_t *buf, unsigned *frames)
{
	char err[200], why[300];
	struct ipc_msg msg;
	size_t off = 0;
	int fd, count;

	if (n == 0) {
		/* we never send empty datagrams: this is the end of the stream */
		snprintf(why, sizeof(why), "%s closed the channel%s", ch->peer,
		    ch->reset ? " with frames of ours unread" : "");
		return chan_fail(ch, why) ? 2 : 1;
	}
	fd = take_fds(mh);	/* closes extras, so nothing leaks below */
	if (mh->msg_flags & MSG_CTRUNC) {
		if (fd >= 0)
			close(fd);
		snprintf(why, sizeof(why), "refused a frame from %s: control data truncated (a passed descriptor was lost)",
		    ch->peer);
		return chan_fail(ch, why) ? 2 : 1;
	}
	if (fd == -2) {
		snprintf(why, sizeof(why), "refused a frame from %s: more than one file descriptor", ch->peer);
		return chan_fail(ch, why) ? 2 : 1;
	}
	if (mh->msg_flags & MSG_TRUNC) {
		if (fd >= 0)
			close(fd);
		snprintf(why, sizeof(why), "refused a frame from %s: oversized frame, longer than %u bytes",
		    ch->peer, IPC_MAX_DGRAM);
		return chan_fail(ch, why) ? 2 : 1;
	}
	if ((count = ipc_dgram_check(buf, (size_t)n, err, sizeof(err))) < 0) {
		if (fd >= 0)
			close(fd);
		snprintf(why, sizeof(why), "refused a frame from %s: %s", ch->peer, err);
		return chan_fail(ch, why) ? 2 : 1;
	}
	if (fd >= 0 && count > 1) {
		/* which frame would own it? ipc_send never does this */
		close(fd);
		snprintf(why, sizeof(why), "refused a datagram from %s: a file descriptor with %d "
		    "packed frames (one travels alone)", ch->peer, count);
		return chan_fail(ch, why) ? 2 : 1;
	}
	while (ipc_dgram_next(buf, (size_t)n, &off, &msg) == 1) {
		msg.fd = fd;		/* handed to on_msg (count is 1 then) */
		fd = -1;
		(*frames)++;
		ch->busy++;
		ch->on_msg(ch, &msg, ch->arg);
		ch->busy--;
		if (ch->busy == 0 && ch->free_pending) {
			chan_destroy(ch);
			return 2;
		}
		if (ch->dead)
			return 1;	/* the rest of the datagram dies with it */
	}
	return 0;
}

/* A receive call failed with errno: 0 to try again (EINTR), 1 to wait for
 * the next read event or after the channel failed. */
static int
rx_failed(struct ipc_chan *ch)
{
	char why[300];

	if (errno == EINTR)
		return 0;
	if (errno == EAGAIN || errno == EWOULDBLOCK)
		return 1;
	if (errno == ECONNRESET && !ch->reset) {
		/* the peer closed its end with frames of ours unread: AF_UNIX
		 * reports that once, before what the peer had sent (a child's
		 * last words: IPC_START_FAILED), which is still to be read,
		 * then the end of the stream */
		ch->reset = 1;
		return 0;
	}
	snprintf(why, sizeof(why), "receive from %s failed: %s", ch->peer, strerror(errno));
	chan_fail(ch, why);
	return 1;
}

/* Batching: up to IPC_RX_BATCH datagrams per recvmmsg, each into its own
 * IPC_MAX_DGRAM slice of ch->rx; fewer than asked for means the socket is
 * drained (no call just to meet EAGAIN). */
static void
read_batch(struct ipc_chan *ch)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(MAX_RX_FDS * sizeof(int))];
	} cm[IPC_RX_BATCH];
	struct mmsghdr mm[IPC_RX_BATCH];
	struct iovec iov[IPC_RX_BATCH];
	unsigned frames = 0;
	int n;

	while (frames < READ_BURST && !ch->dead) {
		memset(mm, 0, sizeof(mm));
		for (int i = 0; i < IPC_RX_BATCH; i++) {
			iov[i].iov_base = ch->rx + (size_t)i * IPC_MAX_DGRAM;
			iov[i].iov_len = IPC_MAX_DGRAM;
			mm[i].msg_hdr.msg_iov = &iov[i];
			mm[i].msg_hdr.msg_iovlen = 1;
			mm[i].msg_hdr.msg_control = cm[i].buf;
			mm[i].msg_hdr.msg_controllen = sizeof(cm[i].buf);
		}
		n = recvmmsg(ch->fd, mm, IPC_RX_BATCH, MSG_DONTWAIT | MSG_CMSG_CLOEXEC, NULL);
		if (n < 0) {
			if (rx_failed(ch))
				return;
			continue;
		}
		if (n == 0) {
			(void)rx_one(ch, &mm[0].msg_hdr, 0, ch->rx, &frames);
			return;
		}
		for (int i = 0; i < n; i++) {
			if (rx_one(ch, &mm[i].msg_hdr, (ssize_t)mm[i].msg_len, iov[i].iov_base, &frames)) {
				/* dead or freed (ch untouched from here): the
				 * descriptors of the datagrams not looked at */
				for (int j = i + 1; j < n; j++) {
					int fd = take_fds(&mm[j].msg_hdr);
					if (fd >= 0)
						close(fd);
				}
				return;
			}
		}
		if (n < IPC_RX_BATCH)
			return;
	}
}

static void
on_read(evutil_socket_t sock, short what, void *arg)
{
	struct ipc_chan *ch = arg;
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(MAX_RX_FDS * sizeof(int))];
	} cm;
	struct msghdr mh;
	struct iovec iov;
	unsigned frames = 0;
	ssize_t n;

	(void)sock;
	(void)what;
	assert(ch->magic == CHAN_MAGIC);
	if (ch->batching && ch->rx_slots < IPC_RX_BATCH) {
		/* grown here, where no frame of ch->rx is being walked; the
		 * pages of the slices are touched only as large datagrams
		 * arrive. Out of memory: one at a time, as before. */
		uint8_t *rx = realloc(ch->rx, (size_t)IPC_RX_BATCH * IPC_MAX_DGRAM);

		if (rx != NULL) {
			ch->rx = rx;
			ch->rx_slots = IPC_RX_BATCH;
		}
	}
	if (ch->batching && ch->rx_slots == IPC_RX_BATCH) {
		read_batch(ch);
		return;
	}
	while (frames < READ_BURST && !ch->dead) {
		memset(&mh, 0, sizeof(mh));
		iov.iov_base = ch->rx;
		iov.iov_len = IPC_MAX_DGRAM;
		mh.msg_iov = &iov;
		mh.msg_iovlen = 1;
		mh.msg_control = cm.buf;
		mh.msg_controllen = sizeof(cm.buf);
		n = recvmsg(ch->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (n < 0) {
			if (rx_failed(ch))
				return;
			continue;
		}
		if (rx_one(ch, &mh, n, ch->rx, &frames))
			return;
	}
}

int
ipc_socketpair(int fds[2])
{
	return socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds);
}

struct ipc_chan *
ipc_chan_new(struct event_base *base, int fd, const char *peer,
    ipc_msg_fn *on_msg, ipc_close_fn *on_close, void *arg)
{
	struct ipc_chan *ch = NULL;
	int fl;

	if (fd < 0 || on_msg == NULL || on_close == NULL)
		goto fail;
	if ((fl = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		goto fail;
	if ((ch = calloc(1, sizeof(*ch))) == NULL)
		goto fail;
	ch->magic = CHAN_MAGIC;
	ch->base = base;
	ch->fd = fd;
	snprintf(ch->peer, sizeof(ch->peer), "%s", peer != NULL ? peer : "peer");
	ch->on_msg = on_msg;
	ch->on_close = on_close;
	ch->arg = arg;
	ch->rx_slots = 1;
	if ((ch->rx = malloc(IPC_MAX_DGRAM)) == NULL ||
	    (ch->rev = event_new(base, fd, EV_READ | EV_PERSIST, on_read, ch)) == NULL ||
	    (ch->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, on_write, ch)) == NULL ||
	    (ch->close_ev = event_new(base, -1, 0, on_deferred_close, ch)) == NULL ||
	    event_add(ch->rev, NULL) != 0)
		goto fail;
	return ch;
fail:
	/* fd is ours in every case */
	if (ch != NULL)
		chan_destroy(ch);
	else if (fd >= 0)
		close(fd);
	return NULL;
}

/* Append one datagram (hdr + payload: a frame, or a packed batch with an
 * empty payload) to the queue of a full socket, with a dup of pass_fd.
 * Returns 0, or -1 (out of memory; queue full: the channel is failed with
 * later's rule, see batch_flush). */
static int
queue_frame(struct ipc_chan *ch, const uint8_t *hdr, size_t hlen, const void *payload,
    size_t len, int pass_fd, int later)
{
	struct qframe *q;
	char why[200];

	if (ch->qlen >= IPC_MAX_QUEUE) {
		snprintf(why, sizeof(why), "%s is not reading: %u datagrams queued", ch->peer, ch->qlen);
		if (later)
			chan_fail_later(ch, why);
		else
			chan_fail(ch, why);
		return -1;
	}
	if ((q = malloc(sizeof(*q) + hlen + len)) == NULL)
		return -1;
	q->next = NULL;
	q->len = hlen + len;
	memcpy(q->data, hdr, hlen);
	if (len > 0)
		memcpy(q->data + hlen, payload, len);
	q->fd = -1;
	if (pass_fd >= 0 && (q->fd = fcntl(pass_fd, F_DUPFD_CLOEXEC, 0)) < 0) {
		free(q);
		return -1;
	}
	if (ch->qtail != NULL)
		ch->qtail->next = q;
	else
		ch->qhead = q;
	ch->qtail = q;
	ch->qlen++;
	event_add(ch->wev, NULL);
	return 0;
}

/*
 * Send the batch, one packed datagram; behind a queue that is not empty, or
 * what the socket does not take, it joins the queue. later: called from
 * inside ipc_send (a failure is reported from the event loop) rather than
 * from the flush event. Returns 0, or -1 when the channel failed (with
 * later = 0 it may have been freed by on_close then: the caller must not
 * touch it).
 */
static int
batch_flush(struct ipc_chan *ch, int later)
{
	size_t n = ch->bused;
	unsigned nb = ch->nb;
	char why[200];

	if (nb == 0)
		return 0;
	event_del(ch->flush_ev);	/* (when not run by it), and its timeout */
	ch->flush_due = 0;
	ch->nb = 0;
	ch->bused = 0;
	if (ch->qhead == NULL) {
		if (send_frame(ch->fd, ch->bbuf, n, NULL, 0, -1) == 0)
			return 0;
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			snprintf(why, sizeof(why), "send of %u frames (%zu bytes) to %s failed: %s",
			    nb, n, ch->peer, strerror(errno));
			goto fail;
		}
	}
	if (queue_frame(ch, ch->bbuf, n, NULL, 0, -1, later) == 0)
		return 0;
	if (ch->dead)
		return -1;	/* the queue was full: failed there */
	/* frames ipc_send accepted would be lost: the channel is broken */
	snprintf(why, sizeof(why), "cannot queue %u frames for %s: out of memory", nb, ch->peer);
fail:
	if (later)
		chan_fail_later(ch, why);
	else
		chan_fail(ch, why);
	return -1;
}

static void
on_flush(evutil_socket_t fd, short what, void *arg)
{
	struct ipc_chan *ch = arg;

	(void)fd;
	(void)what;
	assert(ch->magic == CHAN_MAGIC);
	(void)batch_flush(ch, 0);
}

int
ipc_chan_set_batching(struct ipc_chan *ch, int on)
{
	assert(ch->magic == CHAN_MAGIC);
	if (!on) {
		if (ch->nb > 0 && batch_flush(ch, 1) != 0)
			return -1;
		ch->batching = 0;
		return 0;
	}
	if (ch->batching)
		return 0;
	if (ch->bbuf == NULL && (ch->bbuf = malloc(IPC_MAX_DGRAM)) == NULL)
		return -1;
	if (ch->flush_ev == NULL &&
	    (ch->flush_ev = event_new(ch->base, -1, 0, on_flush, ch)) == NULL)
		return -1;
	/* the receive slices for recvmmsg come with the next read (on_read):
	 * this may be called from inside on_msg, while ch->rx is walked */
	ch->batching = 1;
	return 0;
}

/* Pack one frame behind the batch's others (the batch sent first when it
 * would not fit: a frame is at most IPC_MAX_FRAME = IPC_MAX_DGRAM bytes,
 * it fits into an empty one). A frame that is not lazy has the send made
 * at the end of this turn, unless it already is; the first lazy one of a
 * batch sets the latest time for it. Returns 0, or -1 (the channel
 * failed). */
static int
batch_add(struct ipc_chan *ch, const uint8_t *hdr, const void *payload, size_t len, int lazy)
{
	if (ch->bused + IPC_HDR_LEN + len > IPC_MAX_DGRAM && batch_flush(ch, 1) != 0)
		return -1;
	memcpy(ch->bbuf + ch->bused, hdr, IPC_HDR_LEN);
	if (len > 0)
		memcpy(ch->bbuf + ch->bused + IPC_HDR_LEN, payload, len);
	ch->bused += IPC_HDR_LEN + len;
	if (!lazy && !ch->flush_due) {
		ch->flush_due = 1;
		event_active(ch->flush_ev, EV_WRITE, 0);
	} else if (lazy && ch->nb == 0) {
		const struct timeval tv = { 0, IPC_LAZY_MS * 1000 };

		event_add(ch->flush_ev, &tv);
	}
	ch->nb++;
	return 0;
}

int
ipc_send_lazy(struct ipc_chan *ch, uint16_t type, uint32_t id, const void *payload, size_t len)
{
	uint8_t hdr[IPC_HDR_LEN];

	assert(ch->magic == CHAN_MAGIC);
	if (!ch->batching)
		return ipc_send(ch, type, id, payload, len, -1);
	if (ch->dead || len > IPC_MAX_PAYLOAD || (len > 0 && payload == NULL) ||
	    type == IPC_NONE || type >= IPC__COUNT)
		return -1;
	put_hdr(hdr, type, id, (uint32_t)len);
	return batch_add(ch, hdr, payload, len, 1);
}

int
ipc_send(struct ipc_chan *ch, uint16_t type, uint32_t id,
    const void *payload, size_t len, int pass_fd)
{
	uint8_t hdr[IPC_HDR_LEN];
	char why[200];

	assert(ch->magic == CHAN_MAGIC);
	if (ch->dead || len > IPC_MAX_PAYLOAD || (len > 0 && payload == NULL) ||
	    type == IPC_NONE || type >= IPC__COUNT)
		return -1;
	put_hdr(hdr, type, id, (uint32_t)len);
	if (ch->batching && pass_fd < 0)
		return batch_add(ch, hdr, payload, len, 0);
	if (ch->nb > 0 && batch_flush(ch, 1) != 0)
		return -1;	/* the batch goes first, whatever happens to it */
	if (ch->qhead == NULL) {
		if (send_frame(ch->fd, hdr, sizeof(hdr), payload, len, pass_fd) == 0)
			return 0;
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			snprintf(why, sizeof(why), "send of %s to %s failed: %s",
			    ipc_type_name(type), ch->peer, strerror(errno));
			chan_fail_later(ch, why);
			return -1;
		}
	}
	return queue_frame(ch, hdr, IPC_HDR_LEN, payload, len, pass_fd, 1);
}

const char *
ipc_chan_peer(const struct ipc_chan *ch)
{
	return ch->peer;
}

void
ipc_chan_free(struct ipc_chan *ch)
{
	if (ch == NULL)
		return;
	assert(ch->magic == CHAN_MAGIC);
	if (!ch->dead && ch->nb > 0)
		(void)batch_flush(ch, 1);	/* what was sent goes first */
	if (ch->busy > 0) {
		/* inside one of our callbacks: stop I/O now, free on the way out */
		ch->free_pending = 1;
		ch->closed_reported = 1;	/* the owner knows; no report */
		if (!ch->dead)
			chan_kill(ch, "freed");
		return;
	}
	chan_destroy(ch);
}

void
ipc_chan_drain(struct ipc_chan *ch)
{
	assert(ch->magic == CHAN_MAGIC);
	/* inside a callback ch->rx may be the datagram being walked */
	if (ch->dead || ch->busy > 0)
		return;
	on_read(ch->fd, EV_READ, ch);	/* may free ch */
}

/* ---- blocking helpers --------------------------------------------------- */

static int
wait_fd(int fd, short events, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = events };
	int r;

	do {
		r = poll(&p, 1, timeout_ms);
	} while (r < 0 && errno == EINTR);
	if (r == 0)
		errno = ETIMEDOUT;
	return r > 0 ? 0 : -1;
}

int
ipc_send_blocking(int fd, uint16_t type, uint32_t id, const void *payload,
    size_t len, int pass_fd)
{
	uint8_t hdr[IPC_HDR_LEN];

	if (len > IPC_MAX_PAYLOAD || (len > 0 && payload == NULL) ||
	    type == IPC_NONE || type >= IPC__COUNT) {
		errno = EINVAL;
		return -1;
	}
	put_hdr(hdr, type, id, (uint32_t)len);
	for (;;) {
		if (send_frame(fd, hdr, sizeof(hdr), payload, len, pass_fd) == 0)
			return 0;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -1;
		if (wait_fd(fd, POLLOUT, -1) != 0)
			return -1;
	}
}

int
ipc_recv_blocking(int fd, uint8_t *buf, size_t cap, struct ipc_msg *out,
    int timeout_ms, char *err, size_t errlen)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(MAX_RX_FDS * sizeof(int))];
	} cm;
	struct msghdr mh;
	struct iovec iov;
	ssize_t n;
	size_t off;
	int rfd, count, reset = 0;

	if (cap < IPC_MAX_FRAME) {
		snprintf(err, errlen, "receive buffer of %zu bytes is smaller than a frame (%u)", cap, IPC_MAX_FRAME);
		return -1;
	}
	for (;;) {
		memset(&mh, 0, sizeof(mh));
		iov.iov_base = buf;
		iov.iov_len = IPC_MAX_FRAME;
		mh.msg_iov = &iov;
		mh.msg_iovlen = 1;
		mh.msg_control = cm.buf;
		mh.msg_controllen = sizeof(cm.buf);
		n = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (n >= 0)
			break;
		if (errno == EINTR)
			continue;
		if (errno == ECONNRESET && !reset) {
			reset = 1;	/* frames of ours left unread: what the
					 * peer sent comes next (rx_failed) */
			continue;
		}
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			snprintf(err, errlen, "receive failed: %s", strerror(errno));
			return -1;
		}
		if (wait_fd(fd, POLLIN, timeout_ms) != 0) {
			if (errno == ETIMEDOUT)
				snprintf(err, errlen, "timed out after %d ms", timeout_ms);
			else
				snprintf(err, errlen, "poll failed: %s", strerror(errno));
			return -1;
		}
	}
	if (n == 0) {
		snprintf(err, errlen, "peer closed the channel");
		return -1;
	}
	rfd = take_fds(&mh);
	if (rfd == -2 && !(mh.msg_flags & MSG_CTRUNC)) {
		snprintf(err, errlen, "more than one file descriptor in a frame");
		return -1;
	}
	if (mh.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) {
		if (rfd >= 0)
			close(rfd);
		if (mh.msg_flags & MSG_TRUNC)
			snprintf(err, errlen, "oversized frame, longer than %u bytes", IPC_MAX_FRAME);
		else
			snprintf(err, errlen, "control data truncated (a passed descriptor was lost)");
		return -1;
	}
	if ((count = ipc_dgram_check(buf, (size_t)n, err, errlen)) != 1) {
		if (count > 1)
			snprintf(err, errlen, "packed datagram of %d frames (a batching peer); this "
			    "reader takes one frame per datagram", count);
		if (rfd >= 0)
			close(rfd);
		return -1;
	}
	off = 0;
	(void)ipc_dgram_next(buf, (size_t)n, &off, out);
	out->fd = rfd;
	return 0;
}
