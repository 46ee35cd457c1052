/*
 * test_ipc.c — framing, payload builder/reader and channels of ipc.c.
 *
 * The frame and payload rules are tested on bytes; the channel tests use a
 * real SOCK_SEQPACKET socketpair and a libevent loop, including raw frames
 * written past the channel API (what a compromised peer could send).
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>

#include <cmocka.h>
#include <event2/event.h>

#include "ipc.h"

/* ---- frames --------------------------------------------------------------- */

static uint8_t frame[IPC_MAX_FRAME + 64];

static size_t
make_raw(uint8_t *buf, uint32_t magic, uint16_t type, uint16_t flags, uint32_t id,
    uint32_t len_field, size_t payload_bytes)
{
	memcpy(buf, &magic, 4);
	memcpy(buf + 4, &type, 2);
	memcpy(buf + 6, &flags, 2);
	memcpy(buf + 8, &id, 4);
	memcpy(buf + 12, &len_field, 4);
	memset(buf + IPC_HDR_LEN, 'x', payload_bytes);
	return IPC_HDR_LEN + payload_bytes;
}

static void
expect_refused(const uint8_t *buf, size_t n, const char *words)
{
	struct ipc_msg m;
	char err[200] = "";

	assert_int_equal(ipc_frame_decode(buf, n, &m, err, sizeof(err)), -1);
	if (strstr(err, words) == NULL)
		fail_msg("expected an error naming '%s', got '%s'", words, err);
}

static void
test_frame_round_trip(void **state)
{
	struct ipc_msg m;
	char err[200];
	long n;

	(void)state;
	n = ipc_frame_encode(frame, sizeof(frame), IPC_TOKEN_REQ, 77, "hello", 5);
	assert_int_equal(n, IPC_HDR_LEN + 5);
	assert_int_equal(ipc_frame_decode(frame, (size_t)n, &m, err, sizeof(err)), 0);
	assert_int_equal(m.type, IPC_TOKEN_REQ);
	assert_int_equal(m.id, 77);
	assert_int_equal(m.len, 5);
	assert_memory_equal(m.data, "hello", 5);
	assert_int_equal(m.fd, -1);

	/* empty payload */
	n = ipc_frame_encode(frame, sizeof(frame), IPC_READY, 0, NULL, 0);
	assert_int_equal(n, IPC_HDR_LEN);
	assert_int_equal(ipc_frame_decode(frame, (size_t)n, &m, err, sizeof(err)), 0);
	assert_int_equal(m.type, IPC_READY);
	assert_int_equal(m.len, 0);

	/* largest payload fits exactly */
	static uint8_t big[IPC_MAX_PAYLOAD];
	memset(big, 'b', sizeof(big));
	n = ipc_frame_encode(frame, sizeof(frame), IPC_STATS, 1, big, sizeof(big));
	assert_int_equal(n, IPC_MAX_FRAME);
	assert_int_equal(ipc_frame_decode(frame, (size_t)n, &m, err, sizeof(err)), 0);
	assert_int_equal(m.len, IPC_MAX_PAYLOAD);
}

static void
test_frame_encode_limits(void **state)
{
	static uint8_t big[IPC_MAX_PAYLOAD + 1];

	(void)state;
	assert_int_equal(ipc_frame_encode(frame, sizeof(frame), IPC_STATS, 1, big, sizeof(big)), -1);
	assert_int_equal(ipc_frame_encode(frame, IPC_HDR_LEN + 4, IPC_STATS, 1, big, 5), -1);
	assert_int_equal(ipc_frame_encode(frame, IPC_HDR_LEN - 1, IPC_READY, 1, NULL, 0), -1);
}

static void
test_frame_refusals(void **state)
{
	size_t n;

	(void)state;
	n = make_raw(frame, 0x41414141u, IPC_READY, 0, 0, 0, 0);
	expect_refused(frame, n, "bad magic");

	make_raw(frame, IPC_MAGIC, IPC_READY, 0, 0, 0, 0);
	expect_refused(frame, 0, "short frame");
	expect_refused(frame, IPC_HDR_LEN - 1, "short frame");

	n = make_raw(frame, IPC_MAGIC, IPC_STATS, 0, 0, 10, 9);
	expect_refused(frame, n, "length mismatch");
	n = make_raw(frame, IPC_MAGIC, IPC_STATS, 0, 0, 10, 11);
	expect_refused(frame, n, "length mismatch");

	n = make_raw(frame, IPC_MAGIC, IPC_STATS, 0, 0, IPC_MAX_PAYLOAD + 1, IPC_MAX_PAYLOAD + 1);
	expect_refused(frame, n, "oversized");
	n = make_raw(frame, IPC_MAGIC, IPC_STATS, 0, 0, UINT32_MAX, 0);
	expect_refused(frame, n, "oversized");

	n = make_raw(frame, IPC_MAGIC, IPC_NONE, 0, 0, 0, 0);
	expect_refused(frame, n, "unknown message type 0");
	n = make_raw(frame, IPC_MAGIC, IPC__COUNT, 0, 0, 0, 0);
	expect_refused(frame, n, "unknown message type");
	n = make_raw(frame, IPC_MAGIC, 0xffff, 0, 0, 0, 0);
	expect_refused(frame, n, "unknown message type 65535");

	n = make_raw(frame, IPC_MAGIC, IPC_READY, 1, 0, 0, 0);
	expect_refused(frame, n, "flags");
	n = make_raw(frame, IPC_MAGIC, IPC_READY, 0x8000, 0, 0, 0);
	expect_refused(frame, n, "flags");
}

/* Frames back to back in one buffer: a packed datagram. Returns its length. */
static size_t
pack(uint8_t *buf, size_t cap, unsigned nframes, size_t payload_len)
{
	static uint8_t payload[IPC_MAX_PAYLOAD];
	size_t off = 0;

	for (unsigned i = 0; i < nframes; i++) {
		long n;

		memset(payload, 'a' + (int)(i % 26), payload_len);
		n = ipc_frame_encode(buf + off, cap - off, IPC_STATS, i + 1, payload, payload_len);
		assert_true(n > 0);
		off += (size_t)n;
	}
	return off;
}

static void
expect_dgram_refused(const uint8_t *buf, size_t n, const char *words, const char *words2)
{
	char err[200] = "";

	assert_int_equal(ipc_dgram_check(buf, n, err, sizeof(err)), -1);
	if (strstr(err, words) == NULL || (words2 != NULL && strstr(err, words2) == NULL))
		fail_msg("expected an error naming '%s' and '%s', got '%s'", words,
		    words2 ? words2 : "", err);
}

static void
test_dgram_walk(void **state)
{
	static uint8_t d[IPC_MAX_DGRAM + 64], fill[IPC_MAX_PAYLOAD];
	struct ipc_msg m;
	char err[200];
	size_t n, off = 0;
	unsigned i = 0;

	(void)state;
	/* many frames, each intact and in order */
	n = pack(d, sizeof(d), 300, 7);
	assert_int_equal(ipc_dgram_check(d, n, err, sizeof(err)), 300);
	while (ipc_dgram_next(d, n, &off, &m) == 1) {
		assert_int_equal(m.type, IPC_STATS);
		assert_int_equal(m.id, i + 1);
		assert_int_equal(m.len, 7);
		assert_int_equal(m.fd, -1);
		assert_int_equal(m.data[0], 'a' + (int)(i % 26));
		assert_int_equal(m.data[6], 'a' + (int)(i % 26));
		i++;
	}
	assert_int_equal(i, 300);
	assert_int_equal(off, n);
	assert_int_equal(ipc_dgram_next(d, n, &off, &m), 0);	/* stays at the end */

	/* one frame is a datagram too; empty payloads pack */
	n = pack(d, sizeof(d), 1, 5);
	assert_int_equal(ipc_dgram_check(d, n, err, sizeof(err)), 1);
	n = pack(d, sizeof(d), 4, 0);
	assert_int_equal(n, 4 * IPC_HDR_LEN);
	assert_int_equal(ipc_dgram_check(d, n, err, sizeof(err)), 4);

	/* the last frame takes exactly the bytes that are left: the largest
	 * datagram, a frame of IPC_HDR_LEN + 100 and one filling the rest */
	n = pack(d, sizeof(d), 1, 100);
	n += (size_t)ipc_frame_encode(d + n, sizeof(d) - n, IPC_STATS, 2, fill,
	    IPC_MAX_DGRAM - n - IPC_HDR_LEN);
	assert_int_equal(n, IPC_MAX_DGRAM);
	assert_int_equal(ipc_dgram_check(d, n, err, sizeof(err)), 2);
	off = 0;
	assert_int_equal(ipc_dgram_next(d, n, &off, &m), 1);
	assert_int_equal(ipc_dgram_next(d, n, &off, &m), 1);
	assert_int_equal(m.len, IPC_MAX_DGRAM - 100 - 2 * IPC_HDR_LEN);
	assert_int_equal(ipc_dgram_next(d, n, &off, &m), 0);
	/* ...one byte short of it: the length overruns the datagram */
	expect_dgram_refused(d, n - 1, "length mismatch", "frame 2 at byte 116");
	/* and exact single-frame decoding refuses the packed datagram */
	assert_int_equal(ipc_frame_decode(d, n, &m, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "length mismatch"));
}

static void
test_dgram_refusals(void **state)
{
	static uint8_t d[4096];
	size_t n;
	uint32_t v;

	(void)state;
	expect_dgram_refused(d, 0, "short frame", NULL);
	n = pack(d, sizeof(d), 1, 0);
	expect_dgram_refused(d, 5, "short frame", NULL);

	/* the third frame's length runs past the datagram's end */
	n = pack(d, sizeof(d), 3, 10);
	expect_dgram_refused(d, n - 1, "length mismatch: header says 10 payload bytes, the datagram has 9 left",
	    "frame 3 at byte 52");
	v = 11;
	memcpy(d + 2 * (IPC_HDR_LEN + 10) + 12, &v, 4);
	expect_dgram_refused(d, n, "length mismatch", "frame 3");
	/* a length beyond any frame, in a later frame */
	v = UINT32_MAX;
	memcpy(d + 2 * (IPC_HDR_LEN + 10) + 12, &v, 4);
	expect_dgram_refused(d, n, "oversized frame", "frame 3");

	/* a truncated header after the last whole frame (trailing bytes) */
	n = pack(d, sizeof(d), 2, 10);
	memset(d + n, 0, 5);
	expect_dgram_refused(d, n + 5, "truncated header: 5 trailing bytes", "frame 3");
	memcpy(d + n, d, IPC_HDR_LEN - 1);	/* even a good header's start */
	expect_dgram_refused(d, n + IPC_HDR_LEN - 1, "truncated header", NULL);
	/* trailing garbage of a header's size or more */
	memset(d + n, 'g', 40);
	expect_dgram_refused(d, n + 40, "bad magic", "frame 3 at byte 52");

	/* every rule of a single frame holds for each packed frame */
	n = pack(d, sizeof(d), 3, 4);
	v = 0;
	memcpy(d + (IPC_HDR_LEN + 4) + 4, &v, 2);	/* type of frame 2 */
	expect_dgram_refused(d, n, "unknown message type 0", "frame 2");
	n = pack(d, sizeof(d), 3, 4);
	d[(IPC_HDR_LEN + 4) + 6] = 1;			/* flags of frame 2 */
	expect_dgram_refused(d, n, "flags", "frame 2");
}

static void
test_type_names(void **state)
{
	(void)state;
	assert_string_equal(ipc_type_name(IPC_TOKEN_REQ), "token_req");
	assert_string_equal(ipc_type_name(IPC_WORKER_CHANNEL), "worker_channel");
	assert_string_equal(ipc_type_name(IPC__COUNT), "unknown");
	assert_string_equal(ipc_type_name(9999), "unknown");
}

/* ---- payloads --------------------------------------------------------------- */

static struct ipc_buf B;

static void
test_payload_round_trip(void **state)
{
	struct ipc_rd r;
	const uint8_t *p;
	char s[32];

	(void)state;
	ipc_buf_init(&B);
	ipc_put_u32(&B, 0xdeadbeefu);
	ipc_put_u64(&B, 0x0102030405060708ull);
	ipc_put_bytes(&B, "\x00\x01\x02", 3);
	ipc_put_str(&B, "alice@EXAMPLE.TEST");
	ipc_put_str(&B, NULL);
	ipc_put_bytes(&B, NULL, 0);
	assert_int_equal(B.err, 0);

	ipc_rd_init(&r, B.data, B.len);
	assert_int_equal(ipc_get_u32(&r), 0xdeadbeefu);
	assert_true(ipc_get_u64(&r) == 0x0102030405060708ull);
	assert_int_equal(ipc_get_bytes(&r, &p), 3);
	assert_memory_equal(p, "\x00\x01\x02", 3);
	ipc_get_str(&r, s, sizeof(s));
	assert_string_equal(s, "alice@EXAMPLE.TEST");
	ipc_get_str(&r, s, sizeof(s));
	assert_string_equal(s, "");
	assert_int_equal(ipc_get_bytes(&r, &p), 0);
	assert_int_equal(r.err, 0);
	assert_int_equal(ipc_rd_done(&r), 0);
}

static void
test_payload_builder_overflow(void **state)
{
	static uint8_t big[IPC_MAX_PAYLOAD];

	(void)state;
	ipc_buf_init(&B);
	ipc_put_bytes(&B, big, IPC_MAX_PAYLOAD - 4);	/* exactly full */
	assert_int_equal(B.err, 0);
	assert_int_equal(B.len, IPC_MAX_PAYLOAD);
	ipc_put_u32(&B, 1);
	assert_int_equal(B.err, 1);
	assert_int_equal(B.len, IPC_MAX_PAYLOAD);

	ipc_buf_init(&B);
	ipc_put_bytes(&B, big, IPC_MAX_PAYLOAD - 3);	/* prefix + bytes do not fit */
	assert_int_equal(B.err, 1);
	assert_int_equal(B.len, 0);
	ipc_put_u32(&B, 7);				/* no-op once failed */
	assert_int_equal(B.len, 0);
}

static void
test_payload_truncated_fields(void **state)
{
	struct ipc_rd r;
	const uint8_t *p;
	uint8_t raw[16];
	uint32_t len;
	char s[16];

	(void)state;
	/* u32 from 3 bytes */
	ipc_rd_init(&r, "abc", 3);
	(void)ipc_get_u32(&r);
	assert_int_equal(r.err, 1);
	assert_int_equal(ipc_rd_done(&r), -1);

	/* u64 from 7 bytes */
	ipc_rd_init(&r, "abcdefg", 7);
	assert_true(ipc_get_u64(&r) == 0);
	assert_int_equal(r.err, 1);

	/* bytes whose length prefix runs past the payload */
	len = 10;
	memcpy(raw, &len, 4);
	memcpy(raw + 4, "short", 5);
	ipc_rd_init(&r, raw, 9);
	assert_int_equal(ipc_get_bytes(&r, &p), 0);
	assert_null(p);
	assert_int_equal(r.err, 1);

	/* a string whose length prefix runs past the payload */
	ipc_rd_init(&r, raw, 9);
	ipc_get_str(&r, s, sizeof(s));
	assert_int_equal(r.err, 1);
	assert_string_equal(s, "");

	/* errors are sticky: a later well-formed field is not read */
	ipc_buf_init(&B);
	ipc_put_u32(&B, 5);
	ipc_rd_init(&r, B.data, B.len);
	r.err = 1;
	assert_int_equal(ipc_get_u32(&r), 0);
	assert_int_equal(r.left, 4);
}

static void
test_payload_string_rules(void **state)
{
	struct ipc_rd r;
	char s[8];

	(void)state;
	/* embedded NUL */
	ipc_buf_init(&B);
	ipc_put_bytes(&B, "al\0ce", 5);
	ipc_rd_init(&r, B.data, B.len);
	ipc_get_str(&r, s, sizeof(s));
	assert_int_equal(r.err, 1);
	assert_string_equal(s, "");

	/* too long for the caller's buffer (cap includes the NUL) */
	ipc_buf_init(&B);
	ipc_put_str(&B, "12345678");
	ipc_rd_init(&r, B.data, B.len);
	ipc_get_str(&r, s, sizeof(s));
	assert_int_equal(r.err, 1);

	/* exactly cap - 1 fits */
	ipc_buf_init(&B);
	ipc_put_str(&B, "1234567");
	ipc_rd_init(&r, B.data, B.len);
	ipc_get_str(&r, s, sizeof(s));
	assert_int_equal(r.err, 0);
	assert_string_equal(s, "1234567");
	assert_int_equal(ipc_rd_done(&r), 0);
}

static void
test_payload_trailing_bytes(void **state)
{
	struct ipc_rd r;

	(void)state;
	ipc_buf_init(&B);
	ipc_put_u32(&B, 1);
	ipc_put_u32(&B, 2);
	ipc_rd_init(&r, B.data, B.len);
	assert_int_equal(ipc_get_u32(&r), 1);
	assert_int_equal(r.err, 0);
	assert_int_equal(ipc_rd_done(&r), -1);	/* a second field nobody read */
	assert_int_equal(ipc_get_u32(&r), 2);
	assert_int_equal(ipc_rd_done(&r), 0);
}

/* ---- channels on an event loop -------------------------------------------- */

struct sink {
	struct event_base *base;
	unsigned n_msgs;
	uint16_t last_type;
	uint32_t last_id;
	char last_data[64];
	int last_fd;
	uint32_t ids[IPC_MAX_QUEUE + 64];
	int closed;
	char why[300];
	int free_in_msg;	/* free the channel from inside on_msg */
	int free_in_close;
	unsigned stop_after;	/* loopbreak after this many messages */
};

static void
sink_msg(struct ipc_chan *ch, const struct ipc_msg *msg, void *arg)
{
	struct sink *s = arg;

	if (s->n_msgs < sizeof(s->ids) / sizeof(s->ids[0]))
		s->ids[s->n_msgs] = msg->id;
	s->n_msgs++;
	s->last_type = msg->type;
	s->last_id = msg->id;
	snprintf(s->last_data, sizeof(s->last_data), "%.*s", (int)msg->len, (const char *)msg->data);
	if (s->last_fd >= 0)
		close(s->last_fd);
	s->last_fd = msg->fd;
	if (s->free_in_msg)
		ipc_chan_free(ch);
	if (s->stop_after && s->n_msgs >= s->stop_after)
		event_base_loopbreak(s->base);
}

static void
sink_close(struct ipc_chan *ch, const char *why, void *arg)
{
	struct sink *s = arg;

	s->closed++;
	snprintf(s->why, sizeof(s->why), "%s", why);
	if (s->free_in_close)
		ipc_chan_free(ch);
	event_base_loopbreak(s->base);
}

static void
sink_init(struct sink *s, struct event_base *base)
{
	memset(s, 0, sizeof(*s));
	s->base = base;
	s->last_fd = -1;
}

static void
run_loop(struct event_base *base)
{
	struct timeval tv = { 5, 0 };	/* a bound so a broken channel fails the test */

	event_base_loopexit(base, &tv);
	event_base_dispatch(base);
}

static void
test_chan_round_trip_with_fd(void **state)
{
	struct event_base *base = event_base_new();
	struct sink a, b;
	struct ipc_chan *ca, *cb;
	int sp[2], pipefd[2];
	char got[8] = "";

	(void)state;
	sink_init(&a, base);
	sink_init(&b, base);
	assert_int_equal(ipc_socketpair(sp), 0);
	assert_true(fcntl(sp[0], F_GETFD) & FD_CLOEXEC);
	ca = ipc_chan_new(base, sp[0], "side a", sink_msg, sink_close, &a);
	cb = ipc_chan_new(base, sp[1], "side b", sink_msg, sink_close, &b);
	assert_non_null(ca);
	assert_non_null(cb);
	assert_string_equal(ipc_chan_peer(ca), "side a");

	assert_int_equal(pipe(pipefd), 0);
	assert_int_equal(ipc_send(ca, IPC_WORKER_CHANNEL, 42, "slot", 4, pipefd[1]), 0);
	close(pipefd[1]);	/* ours; the receiver got its own */
	b.stop_after = 1;
	run_loop(base);
	assert_int_equal(b.n_msgs, 1);
	assert_int_equal(b.last_type, IPC_WORKER_CHANNEL);
	assert_int_equal(b.last_id, 42);
	assert_string_equal(b.last_data, "slot");
	assert_true(b.last_fd >= 0);
	assert_true(fcntl(b.last_fd, F_GETFD) & FD_CLOEXEC);
	assert_int_equal(write(b.last_fd, "via", 3), 3);
	assert_int_equal(read(pipefd[0], got, sizeof(got)), 3);
	assert_memory_equal(got, "via", 3);

	/* and back the other way, no fd */
	assert_int_equal(ipc_send(cb, IPC_READY, 0, NULL, 0, -1), 0);
	a.stop_after = 1;
	run_loop(base);
	assert_int_equal(a.n_msgs, 1);
	assert_int_equal(a.last_type, IPC_READY);
	assert_int_equal(a.last_fd, -1);

	/* sends the channel must refuse */
	assert_int_equal(ipc_send(ca, IPC_NONE, 0, NULL, 0, -1), -1);
	assert_int_equal(ipc_send(ca, IPC__COUNT, 0, NULL, 0, -1), -1);
	static uint8_t big[IPC_MAX_PAYLOAD + 1];
	assert_int_equal(ipc_send(ca, IPC_STATS, 0, big, sizeof(big), -1), -1);
	assert_int_equal(a.closed + b.closed, 0);

	close(b.last_fd);
	close(pipefd[0]);
	ipc_chan_free(ca);
	ipc_chan_free(cb);
	event_base_free(base);
}

/* A channel "kcd" on sp[0] into the sink a, which frees it on close; the
 * peer's end is sp[1]. */
static struct ipc_chan *
kcd_sink_chan(struct event_base *base, struct sink *a, int sp[2])
{
	struct ipc_chan *ch;

	sink_init(a, base);
	a->free_in_close = 1;
	assert_int_equal(ipc_socketpair(sp), 0);
	ch = ipc_chan_new(base, sp[0], "kcd", sink_msg, sink_close, a);
	assert_non_null(ch);
	return ch;
}

static void
test_chan_peer_close(void **state)
{
	struct event_base *base = event_base_new();
	struct sink a;
	int sp[2];

	(void)state;
	(void)kcd_sink_chan(base, &a, sp);	/* freed by the sink on close */
	close(sp[1]);
	run_loop(base);
	assert_int_equal(a.closed, 1);
	assert_non_null(strstr(a.why, "kcd closed the channel"));
	event_base_free(base);
}

/* A child's last words and its exit can be seen in either order: the
 * parent drains the channel of an exited child before freeing it, without
 * its loop running. */
static void
test_chan_drain_reads_the_last_words(void **state)
{
	struct event_base *base = event_base_new();
	struct sink a;
	struct ipc_chan *ca;
	int sp[2];

	(void)state;
	ca = kcd_sink_chan(base, &a, sp);
	/* nothing there yet: no callback, the channel stays */
	ipc_chan_drain(ca);
	assert_int_equal(a.n_msgs + a.closed, 0);
	assert_int_equal(ipc_send_blocking(sp[1], IPC_LOG_REOPEN, 1, NULL, 0, -1), 0);
	assert_int_equal(ipc_send_blocking(sp[1], IPC_START_FAILED, 2, "cause", 5, -1), 0);
	close(sp[1]);		/* the child has exited */
	ipc_chan_drain(ca);	/* frees it: free_in_close */
	assert_int_equal(a.n_msgs, 2);
	assert_int_equal(a.last_type, IPC_START_FAILED);
	assert_string_equal(a.last_data, "cause");
	assert_int_equal(a.closed, 1);
	assert_non_null(strstr(a.why, "kcd closed the channel"));
	event_base_free(base);
}

/* A peer that exits without reading what we sent: AF_UNIX reports
 * ECONNRESET first, then what the peer had sent is still there, then the
 * end. Its frames reach on_msg (the loop's read event, ipc_chan_drain and
 * ipc_recv_blocking alike) and the close says it is a close. */
static void
test_chan_reset_peer_still_has_its_last_words_read(void **state)
{
	struct event_base *base = event_base_new();
	struct sink a;
	struct ipc_chan *ca;
	struct ipc_msg m;
	uint8_t *buf = malloc(IPC_MAX_FRAME);
	char err[200];
	int sp[2];

	(void)state;
	assert_non_null(buf);
	for (int drain = 0; drain < 2; drain++) {
		ca = kcd_sink_chan(base, &a, sp);
		/* ours, never read by the peer */
		assert_int_equal(ipc_send(ca, IPC_LOG_REOPEN, 1, NULL, 0, -1), 0);
		assert_int_equal(ipc_send_blocking(sp[1], IPC_START_FAILED, 2, "why", 3, -1), 0);
		close(sp[1]);
		if (drain)
			ipc_chan_drain(ca);
		else
			run_loop(base);
		assert_int_equal(a.n_msgs, 1);
		assert_int_equal(a.last_type, IPC_START_FAILED);
		assert_string_equal(a.last_data, "why");
		assert_int_equal(a.closed, 1);
		assert_string_equal(a.why, "kcd closed the channel with frames of ours unread");
	}

	/* the blocking reader the same */
	assert_int_equal(ipc_socketpair(sp), 0);
	assert_int_equal(ipc_send_blocking(sp[0], IPC_LOG_REOPEN, 1, NULL, 0, -1), 0);
	assert_int_equal(ipc_send_blocking(sp[1], IPC_START_FAILED, 2, "why", 3, -1), 0);
	close(sp[1]);
	assert_int_equal(ipc_recv_blocking(sp[0], buf, IPC_MAX_FRAME, &m, 0, err, sizeof(err)), 0);
	assert_int_equal(m.type, IPC_START_FAILED);
	assert_int_equal(m.len, 3);
	assert_int_equal(ipc_recv_blocking(sp[0], buf, IPC_MAX_FRAME, &m, 0, err, sizeof(err)), -1);
	assert_string_equal(err, "peer closed the channel");
	close(sp[0]);
	free(buf);
	event_base_free(base);
}

/* Raw bytes into the socket, past ipc_send: a compromised peer. */
static void
expect_raw_refused(const void *bytes, size_t n, int nfds, const char *words)
{
	struct event_base *base = event_base_new();
	struct sink a;
	struct ipc_chan *ca;
	int sp[2], pipefd[2];

	sink_init(&a, base);
	assert_int_equal(ipc_socketpair(sp), 0);
	ca = ipc_chan_new(base, sp[0], "worker 3", sink_msg, sink_close, &a);
	assert_non_null(ca);
	assert_int_equal(pipe(pipefd), 0);
	if (nfds == 0) {
		assert_int_equal(send(sp[1], bytes, n, 0), (ssize_t)n);
	} else {
		union {
			struct cmsghdr align;
			char buf[CMSG_SPACE(16 * sizeof(int))];
		} cm;
		struct iovec iov = { (void *)bytes, n };
		struct msghdr mh = { 0 };
		struct cmsghdr *c;

		memset(&cm, 0, sizeof(cm));
		mh.msg_iov = &iov;
		mh.msg_iovlen = 1;
		mh.msg_control = cm.buf;
		mh.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
		for (int i = 0; i < nfds; i++)
			memcpy(CMSG_DATA(c) + (size_t)i * sizeof(int), &pipefd[1], sizeof(int));
		assert_int_equal(sendmsg(sp[1], &mh, 0), (ssize_t)n);
	}
	close(pipefd[1]);
	run_loop(base);
	assert_int_equal(a.n_msgs, 0);
	assert_int_equal(a.closed, 1);
	if (strstr(a.why, words) == NULL || strstr(a.why, "worker 3") == NULL)
		fail_msg("expected a close naming 'worker 3' and '%s', got '%s'", words, a.why);
	/* every received descriptor was closed: the pipe has no writer left */
	{
		char c;
		assert_int_equal(read(pipefd[0], &c, 1), 0);
	}
	/* the peer sees the channel gone */
	{
		char c;
		assert_int_equal(recv(sp[1], &c, 1, 0), 0);
	}
	close(pipefd[0]);
	close(sp[1]);
	ipc_chan_free(ca);
	event_base_free(base);
}

static void
test_chan_refuses_oversized_raw_frame(void **state)
{
	static uint8_t big[IPC_MAX_FRAME + 1];
	size_t n;

	(void)state;
	/* a header that even claims the right length: only the size is wrong */
	n = make_raw(big, IPC_MAGIC, IPC_STATS, 0, 0, IPC_MAX_PAYLOAD + 1, IPC_MAX_PAYLOAD + 1);
	assert_int_equal(n, sizeof(big));
	expect_raw_refused(big, n, 0, "oversized frame, longer than");
	expect_raw_refused(big, n, 1, "oversized frame, longer than");
}

static void
test_chan_refuses_malformed_raw_frames(void **state)
{
	uint8_t f[64];
	size_t n;

	(void)state;
	n = make_raw(f, 0x12345678u, IPC_READY, 0, 0, 0, 0);
	expect_raw_refused(f, n, 0, "bad magic");
	n = make_raw(f, IPC_MAGIC, IPC_READY, 0, 0, 0, 0);
	expect_raw_refused(f, 5, 0, "short frame");
	n = make_raw(f, IPC_MAGIC, IPC_READY, 0, 0, 4, 2);
	expect_raw_refused(f, n, 0, "length mismatch");
	n = make_raw(f, IPC_MAGIC, 200, 0, 0, 0, 0);
	expect_raw_refused(f, n, 1, "unknown message type 200");
	n = make_raw(f, IPC_MAGIC, IPC_READY, 4, 0, 0, 0);
	expect_raw_refused(f, n, 0, "flags");
	/* well-formed but with two descriptors */
	n = make_raw(f, IPC_MAGIC, IPC_KCD_CHANNEL, 0, 0, 0, 0);
	expect_raw_refused(f, n, 2, "more than one file descriptor");
	/* more descriptors than the receiver has room for: MSG_CTRUNC */
	expect_raw_refused(f, n, 12, "control data truncated");

	/* packed datagrams: refused as a whole, no frame of them dispatched */
	{
		static uint8_t d[512];

		n = pack(d, sizeof(d), 3, 10);
		expect_raw_refused(d, n - 1, 0, "length mismatch");
		memset(d + n, 0, 5);
		expect_raw_refused(d, n + 5, 0, "truncated header");
		memset(d + n, 'g', 20);
		expect_raw_refused(d, n + 20, 0, "bad magic");
		expect_raw_refused(d, n, 1, "file descriptor with 3 packed frames");
	}
}

static void
test_chan_free_inside_callback(void **state)
{
	struct event_base *base = event_base_new();
	struct sink a, b;
	struct ipc_chan *ca, *cb;
	int sp[2];

	(void)state;
	sink_init(&a, base);
	sink_init(&b, base);
	b.free_in_msg = 1;
	assert_int_equal(ipc_socketpair(sp), 0);
	ca = ipc_chan_new(base, sp[0], "a", sink_msg, sink_close, &a);
	cb = ipc_chan_new(base, sp[1], "b", sink_msg, sink_close, &b);
	assert_non_null(cb);	/* b frees it itself */
	/* three frames pending: the burst must stop after the free */
	assert_int_equal(ipc_send(ca, IPC_LOG_REOPEN, 1, NULL, 0, -1), 0);
	assert_int_equal(ipc_send(ca, IPC_LOG_REOPEN, 2, NULL, 0, -1), 0);
	assert_int_equal(ipc_send(ca, IPC_LOG_REOPEN, 3, NULL, 0, -1), 0);
	run_loop(base);		/* a sees b's end close and breaks the loop */
	assert_int_equal(b.n_msgs, 1);
	assert_int_equal(b.closed, 0);	/* freed by its owner: no report */
	assert_int_equal(a.closed, 1);
	ipc_chan_free(ca);
	event_base_free(base);
}

static void
test_chan_queue_flushes_in_order(void **state)
{
	struct event_base *base = event_base_new();
	static uint8_t payload[8192];
	struct sink a, b;
	struct ipc_chan *ca, *cb;
	int sp[2];
	unsigned i, sent = 0;
	int pipefd[2];

	(void)state;
	sink_init(&a, base);
	sink_init(&b, base);
	assert_int_equal(ipc_socketpair(sp), 0);
	assert_int_equal(pipe(pipefd), 0);
	ca = ipc_chan_new(base, sp[0], "a", sink_msg, sink_close, &a);
	/* b is attached only later: until then nobody reads */
	/* fill the socket until the kernel says EAGAIN, then some more */
	for (i = 1; i <= 400; i++) {
		int fd = (i == 300) ? pipefd[1] : -1;	/* one queued frame carries a descriptor */
		assert_int_equal(ipc_send(ca, IPC_STATS, i, payload, sizeof(payload), fd), 0);
		sent++;
	}
	close(pipefd[1]);	/* the queued frame holds its own duplicate */
	cb = ipc_chan_new(base, sp[1], "b", sink_msg, sink_close, &b);
	b.stop_after = sent;
	run_loop(base);
	assert_int_equal(b.n_msgs, sent);
	for (i = 0; i < sent; i++)
		assert_int_equal(b.ids[i], i + 1);
	assert_int_equal(a.closed + b.closed, 0);
	/* the last message had no fd; the 300th did and was closed by sink_msg */
	assert_int_equal(b.last_fd, -1);
	{
		char c;
		assert_int_equal(read(pipefd[0], &c, 1), 0);	/* no writer left anywhere */
	}
	close(pipefd[0]);
	ipc_chan_free(ca);
	ipc_chan_free(cb);
	event_base_free(base);
}

/* Batching: frames leave at the end of the loop's turn, in order, packed
 * into datagrams, whatever joins the batch or not (a descriptor, a frame
 * that fills a datagram alone), and the receiver takes several per read. */
static void
test_chan_batching_keeps_frames_and_order(void **state)
{
	struct event_base *base = event_base_new();
	static uint8_t big[IPC_MAX_PAYLOAD];
	struct sink a, b;
	struct ipc_chan *ca, *cb;
	int sp[2], pipefd[2];
	unsigned i;
	char c;

	(void)state;
	sink_init(&a, base);
	sink_init(&b, base);
	assert_int_equal(ipc_socketpair(sp), 0);
	assert_int_equal(pipe(pipefd), 0);
	ca = ipc_chan_new(base, sp[0], "a", sink_msg, sink_close, &a);
	cb = ipc_chan_new(base, sp[1], "b", sink_msg, sink_close, &b);
	assert_int_equal(ipc_chan_set_batching(ca, 1), 0);
	assert_int_equal(ipc_chan_set_batching(cb, 1), 0);

	/* three frames wait for the end of the turn: nothing sent yet */
	for (i = 1; i <= 3; i++)
		assert_int_equal(ipc_send(ca, IPC_STATS, i, "abc", 3, -1), 0);
	assert_int_equal(recv(sp[1], &c, 1, MSG_PEEK | MSG_DONTWAIT), -1);
	assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
	b.stop_after = 3;
	run_loop(base);
	assert_int_equal(b.n_msgs, 3);
	for (i = 0; i < 3; i++)
		assert_int_equal(b.ids[i], i + 1);
	assert_string_equal(b.last_data, "abc");

	/* one with a descriptor (alone), one that fills a datagram (the
	 * frames before it leave first, the next start another): 200 frames
	 * in order */
	for (i = 4; i <= 200; i++) {
		int fd = (i == 50) ? pipefd[1] : -1;
		if (i == 120)
			assert_int_equal(ipc_send(ca, IPC_STATS, i, big, sizeof(big), -1), 0);
		else
			assert_int_equal(ipc_send(ca, IPC_STATS, i, "frame", 5, fd), 0);
	}
	close(pipefd[1]);
	b.stop_after = 200;
	run_loop(base);
	assert_int_equal(b.n_msgs, 200);
	for (i = 0; i < 200; i++)
		assert_int_equal(b.ids[i], i + 1);
	assert_string_equal(b.last_data, "frame");
	assert_int_equal(read(pipefd[0], &c, 1), 0);	/* the 50th frame's fd came and was closed */

	/* frames still batched when the channel is freed are sent first */
	assert_int_equal(ipc_send(ca, IPC_STATS, 201, "last", 4, -1), 0);
	ipc_chan_free(ca);
	b.stop_after = 201;
	run_loop(base);
	assert_int_equal(b.n_msgs, 201);
	assert_int_equal(b.ids[200], 201);
	assert_string_equal(b.last_data, "last");
	assert_int_equal(a.closed, 0);
	close(pipefd[0]);
	ipc_chan_free(cb);
	event_base_free(base);
}

/* Batching over a socket nobody reads yet: what the socket does not take
 * waits in the queue behind it, in order. */
static void
test_chan_batching_full_socket_queues_in_order(void **state)
{
	struct event_base *base = event_base_new();
	static uint8_t payload[1000];
	struct sink a, b;
	struct ipc_chan *ca, *cb;
	int sp[2], pipefd[2];
	unsigned i, n = 1500;
	char c;

	(void)state;
	sink_init(&a, base);
	sink_init(&b, base);
	assert_int_equal(ipc_socketpair(sp), 0);
	assert_int_equal(pipe(pipefd), 0);
	ca = ipc_chan_new(base, sp[0], "a", sink_msg, sink_close, &a);
	assert_int_equal(ipc_chan_set_batching(ca, 1), 0);
	/* packed datagrams fill the socket, the rest queue behind (a frame
	 * with a descriptor among them, alone) */
	for (i = 1; i <= n; i++)
		assert_int_equal(ipc_send(ca, IPC_STATS, i, payload, sizeof(payload),
		    i == 1200 ? pipefd[1] : -1), 0);
	close(pipefd[1]);
	cb = ipc_chan_new(base, sp[1], "b", sink_msg, sink_close, &b);
	assert_int_equal(ipc_chan_set_batching(cb, 1), 0);
	b.stop_after = n;
	run_loop(base);
	assert_int_equal(b.n_msgs, n);
	for (i = 0; i < n; i++)
		assert_int_equal(b.ids[i], i + 1);
	assert_int_equal(a.closed + b.closed, 0);
	assert_int_equal(read(pipefd[0], &c, 1), 0);	/* came, and was closed */
	close(pipefd[0]);
	ipc_chan_free(ca);
	ipc_chan_free(cb);
	event_base_free(base);
}

/* One datagram from a raw socket end (no channel): its bytes in buf, its
 * descriptor (or -1) in *fdp. Returns its length, or -1 when none waits. */
static ssize_t
raw_recv(int sock, uint8_t *buf, size_t cap, int *fdp)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(4 * sizeof(int))];
	} cm;
	struct iovec iov = { buf, cap };
	struct msghdr mh = { 0 };
	struct cmsghdr *c;
	ssize_t n;

	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = cm.buf;
	mh.msg_controllen = sizeof(cm.buf);
	*fdp = -1;
	n = recvmsg(sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	if (n < 0)
		return -1;
	for (c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
			memcpy(fdp, CMSG_DATA(c), sizeof(int));
	return n;
}

/* The next datagram on sock holds frames first..last (ids), in order, each
 * with its own payload ("frame ID"), and a descriptor when want_fd. */
static void
expect_packed(int sock, unsigned first, unsigned last, int want_fd)
{
	static uint8_t d[IPC_MAX_DGRAM + 1];
	struct ipc_msg m;
	char err[200], want[32];
	size_t off = 0;
	ssize_t n;
	int fd;

	n = raw_recv(sock, d, sizeof(d), &fd);
	assert_true(n > 0);
	if (ipc_dgram_check(d, (size_t)n, err, sizeof(err)) != (int)(last - first + 1))
		fail_msg("expected frames %u..%u in one datagram: %s", first, last, err);
	for (unsigned id = first; id <= last; id++) {
		assert_int_equal(ipc_dgram_next(d, (size_t)n, &off, &m), 1);
		assert_int_equal(m.id, id);
		snprintf(want, sizeof(want), "frame %u", id);
		assert_int_equal(m.len, strlen(want));
		assert_memory_equal(m.data, want, m.len);
	}
	assert_int_equal(off, (size_t)n);
	if (want_fd) {
		assert_true(fd >= 0);
		close(fd);
	} else
		assert_int_equal(fd, -1);
}

static void
send_named(struct ipc_chan *ch, unsigned id, int fd)
{
	char p[32];

	snprintf(p, sizeof(p), "frame %u", id);
	assert_int_equal(ipc_send(ch, IPC_STATS, id, p, strlen(p), fd), 0);
}

/* What a batching channel puts on the wire, read raw. */
static void
test_chan_batching_packs_frames(void **state)
{
	struct event_base *base = event_base_new();
	static uint8_t d[IPC_MAX_DGRAM + 1], payload[IPC_MAX_PAYLOAD];
	struct ipc_msg m;
	struct sink a;
	struct ipc_chan *ca;
	char err[200];
	int sp[2], pipefd[2], fd;
	unsigned i;

	(void)state;
	sink_init(&a, base);
	assert_int_equal(ipc_socketpair(sp), 0);
	assert_int_equal(pipe(pipefd), 0);
	ca = ipc_chan_new(base, sp[0], "a", sink_msg, sink_close, &a);
	assert_int_equal(ipc_chan_set_batching(ca, 1), 0);

	/* the frames of one turn: nothing before its end, then one datagram */
	for (i = 1; i <= 100; i++)
		send_named(ca, i, -1);
	assert_int_equal(raw_recv(sp[1], d, sizeof(d), &fd), -1);
	event_base_loop(base, EVLOOP_NONBLOCK);
	expect_packed(sp[1], 1, 100, 0);
	assert_int_equal(raw_recv(sp[1], d, sizeof(d), &fd), -1);

	/* a descriptor between others travels alone, in its place */
	for (i = 1; i <= 21; i++)
		send_named(ca, i, i == 11 ? pipefd[1] : -1);
	close(pipefd[1]);
	event_base_loop(base, EVLOOP_NONBLOCK);
	expect_packed(sp[1], 1, 10, 0);
	expect_packed(sp[1], 11, 11, 1);
	expect_packed(sp[1], 12, 21, 0);
	assert_int_equal(raw_recv(sp[1], d, sizeof(d), &fd), -1);
	{
		char c;
		assert_int_equal(read(pipefd[0], &c, 1), 0);	/* every copy closed */
	}

	/* a frame that does not fit sends the batch and starts the next */
	for (i = 1; i <= 3; i++)
		assert_int_equal(ipc_send(ca, IPC_STATS, i, payload, 30000, -1), 0);
	event_base_loop(base, EVLOOP_NONBLOCK);
	assert_int_equal(raw_recv(sp[1], d, sizeof(d), &fd), 2 * (IPC_HDR_LEN + 30000));
	assert_int_equal(ipc_dgram_check(d, 2 * (IPC_HDR_LEN + 30000), err, sizeof(err)), 2);
	assert_int_equal(raw_recv(sp[1], d, sizeof(d), &fd), IPC_HDR_LEN + 30000);

	/* one that takes exactly the room left joins: the largest datagram */
	assert_int_equal(ipc_send(ca, IPC_STATS, 1, payload, 100, -1), 0);
	assert_int_equal(ipc_send(ca, IPC_STATS, 2, payload,
	    IPC_MAX_DGRAM - (IPC_HDR_LEN + 100) - IPC_HDR_LEN, -1), 0);
	assert_int_equal(ipc_send(ca, IPC_READY, 3, NULL, 0, -1), 0);
	event_base_loop(base, EVLOOP_NONBLOCK);
	assert_int_equal(raw_recv(sp[1], d, sizeof(d), &fd), IPC_MAX_DGRAM);
	assert_int_equal(ipc_dgram_check(d, IPC_MAX_DGRAM, err, sizeof(err)), 2);
	assert_int_equal(raw_recv(sp[1], d, sizeof(d), &fd), IPC_HDR_LEN);

	/* the blocking reader takes a batch of one, refuses a packed one */
	send_named(ca, 1, -1);
	event_base_loop(base, EVLOOP_NONBLOCK);
	assert_int_equal(ipc_recv_blocking(sp[1], d, sizeof(d), &m, 1000, err, sizeof(err)), 0);
	assert_int_equal(m.id, 1);
	send_named(ca, 2, -1);
	send_named(ca, 3, -1);
	event_base_loop(base, EVLOOP_NONBLOCK);
	assert_int_equal(ipc_recv_blocking(sp[1], d, sizeof(d), &m, 1000, err, sizeof(err)), -1);
	if (strstr(err, "packed datagram of 2 frames") == NULL)
		fail_msg("unexpected error '%s'", err);

	assert_int_equal(a.closed, 0);
	close(pipefd[0]);
	ipc_chan_free(ca);
	close(sp[1]);
	event_base_free(base);
}

static void
send_lazy_named(struct ipc_chan *ch, unsigned id)
{
	char p[32];

	snprintf(p, sizeof(p), "frame %u", id);
	assert_int_equal(ipc_send_lazy(ch, IPC_STATS, id, p, strlen(p)), 0);
}

static uint64_t
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Nothing of sock's yet, unless the 50 ms a lazy frame may wait have
 * passed since t0 (then its timeout may have sent it, correctly). */
static void
expect_lazy_waiting(int sock, uint64_t t0)
{
	static uint8_t d[IPC_MAX_DGRAM + 1];
	int fd;

	if (raw_recv(sock, d, sizeof(d), &fd) >= 0 && mono_ms() - t0 < 50)
		fail_msg("a lazy frame was sent before its time, alone");
}

/* Lazy frames (ipc_send_lazy): packed like the others, sent with the next
 * frame that schedules a send, or by their timeout; sent at once by a
 * channel that does not batch; sent first when the channel is freed. */
static void
test_chan_lazy_frames(void **state)
{
	struct event_base *base = event_base_new();
	static uint8_t d[IPC_MAX_DGRAM + 1];
	struct sink a;
	struct ipc_chan *ca;
	uint64_t t0;
	int sp[2], fd;

	(void)state;
	sink_init(&a, base);
	assert_int_equal(ipc_socketpair(sp), 0);
	ca = ipc_chan_new(base, sp[0], "a", sink_msg, sink_close, &a);

	/* not batching: a lazy frame is an ordinary one */
	send_lazy_named(ca, 1);
	expect_packed(sp[1], 1, 1, 0);
	assert_int_equal(ipc_chan_set_batching(ca, 1), 0);

	/* alone, they wait out the turn; their timeout sends them together */
	t0 = mono_ms();
	send_lazy_named(ca, 1);
	send_lazy_named(ca, 2);
	event_base_loop(base, EVLOOP_NONBLOCK);
	expect_lazy_waiting(sp[1], t0);
	event_base_loop(base, EVLOOP_ONCE);	/* until the timeout */
	expect_packed(sp[1], 1, 2, 0);
	assert_int_equal(raw_recv(sp[1], d, sizeof(d), &fd), -1);

	/* a frame that is not lazy takes them along at the end of the turn,
	 * with a lazy one sent after it in the same turn */
	send_lazy_named(ca, 1);
	send_lazy_named(ca, 2);
	send_named(ca, 3, -1);
	send_lazy_named(ca, 4);
	event_base_loop(base, EVLOOP_NONBLOCK);
	expect_packed(sp[1], 1, 4, 0);

	/* that send took the timeout with it: the next lazy frame has its own */
	t0 = mono_ms();
	send_lazy_named(ca, 5);
	event_base_loop(base, EVLOOP_NONBLOCK);
	expect_lazy_waiting(sp[1], t0);
	event_base_loop(base, EVLOOP_ONCE);
	expect_packed(sp[1], 5, 5, 0);

	/* a frame with a descriptor sends the batch first, lazy ones too */
	send_lazy_named(ca, 6);
	send_named(ca, 7, sp[1]);
	expect_packed(sp[1], 6, 6, 0);
	expect_packed(sp[1], 7, 7, 1);

	/* freed with lazy frames batched: they are sent first */
	send_lazy_named(ca, 8);
	send_lazy_named(ca, 9);
	ipc_chan_free(ca);
	expect_packed(sp[1], 8, 9, 0);
	assert_int_equal(raw_recv(sp[1], d, sizeof(d), &fd), 0);	/* then its end */

	assert_int_equal(a.closed, 0);
	close(sp[1]);
	event_base_free(base);
}

/* A receiver that does not batch walks packed datagrams all the same,
 * past READ_BURST frames in one datagram; a free from inside on_msg ends
 * the walk. */
static void
test_chan_packed_to_a_plain_receiver(void **state)
{
	struct event_base *base = event_base_new();
	struct sink a, b;
	struct ipc_chan *ca, *cb;
	int sp[2];
	unsigned i;

	(void)state;
	sink_init(&a, base);
	sink_init(&b, base);
	assert_int_equal(ipc_socketpair(sp), 0);
	ca = ipc_chan_new(base, sp[0], "a", sink_msg, sink_close, &a);
	cb = ipc_chan_new(base, sp[1], "b", sink_msg, sink_close, &b);
	assert_non_null(cb);	/* b frees it itself, below */
	assert_int_equal(ipc_chan_set_batching(ca, 1), 0);
	for (i = 1; i <= 300; i++)
		send_named(ca, i, -1);
	b.stop_after = 300;
	run_loop(base);
	assert_int_equal(b.n_msgs, 300);
	for (i = 0; i < 300; i++)
		assert_int_equal(b.ids[i], i + 1);
	assert_string_equal(b.last_data, "frame 300");

	/* three packed frames; b frees its channel in the first on_msg */
	b.free_in_msg = 1;
	b.stop_after = 0;
	for (i = 301; i <= 303; i++)
		send_named(ca, i, -1);
	run_loop(base);		/* a sees b's end close and breaks the loop */
	assert_int_equal(b.n_msgs, 301);
	assert_int_equal(b.closed, 0);
	assert_int_equal(a.closed, 1);
	ipc_chan_free(ca);
	event_base_free(base);
}

static void
test_chan_queue_bound(void **state)
{
	struct event_base *base = event_base_new();
	struct sink a;
	struct ipc_chan *ca;
	int sp[2];
	unsigned i;
	int rc = 0;

	(void)state;
	sink_init(&a, base);
	assert_int_equal(ipc_socketpair(sp), 0);
	ca = ipc_chan_new(base, sp[0], "worker 1", sink_msg, sink_close, &a);
	/* nobody reads sp[1]: the socket fills, then the queue */
	for (i = 0; i < IPC_MAX_QUEUE * 2 && rc == 0; i++)
		rc = ipc_send(ca, IPC_STATS, i, "x", 1, -1);
	assert_int_equal(rc, -1);
	assert_int_equal(a.closed, 0);		/* reported from the loop, not inside ipc_send */
	assert_int_equal(ipc_send(ca, IPC_STATS, 0, "x", 1, -1), -1);	/* dead */
	run_loop(base);
	assert_int_equal(a.closed, 1);
	if (strstr(a.why, "worker 1 is not reading") == NULL)
		fail_msg("unexpected close cause '%s'", a.why);
	ipc_chan_free(ca);
	close(sp[1]);
	event_base_free(base);
}

static void
test_blocking_helpers(void **state)
{
	static uint8_t buf[IPC_MAX_FRAME];
	struct ipc_msg m;
	char err[200];
	int sp[2], pipefd[2];

	(void)state;
	assert_int_equal(ipc_socketpair(sp), 0);
	assert_int_equal(pipe(pipefd), 0);
	assert_int_equal(ipc_send_blocking(sp[0], IPC_KCD_CHANNEL, 9, "abc", 3, pipefd[0]), 0);
	assert_int_equal(ipc_recv_blocking(sp[1], buf, sizeof(buf), &m, 1000, err, sizeof(err)), 0);
	assert_int_equal(m.type, IPC_KCD_CHANNEL);
	assert_int_equal(m.id, 9);
	assert_int_equal(m.len, 3);
	assert_true(m.fd >= 0);
	close(m.fd);

	assert_int_equal(ipc_recv_blocking(sp[1], buf, sizeof(buf), &m, 50, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "timed out"));
	assert_int_equal(ipc_recv_blocking(sp[1], buf, 10, &m, 50, err, sizeof(err)), -1);

	/* oversized raw frame */
	static uint8_t big[IPC_MAX_FRAME + 1];
	make_raw(big, IPC_MAGIC, IPC_STATS, 0, 0, 0, 0);
	assert_int_equal(send(sp[0], big, sizeof(big), 0), (ssize_t)sizeof(big));
	assert_int_equal(ipc_recv_blocking(sp[1], buf, sizeof(buf), &m, 1000, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "oversized"));

	close(sp[0]);
	assert_int_equal(ipc_recv_blocking(sp[1], buf, sizeof(buf), &m, 1000, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "closed"));
	close(sp[1]);
	close(pipefd[0]);
	close(pipefd[1]);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_frame_round_trip),
		cmocka_unit_test(test_frame_encode_limits),
		cmocka_unit_test(test_frame_refusals),
		cmocka_unit_test(test_dgram_walk),
		cmocka_unit_test(test_dgram_refusals),
		cmocka_unit_test(test_type_names),
		cmocka_unit_test(test_payload_round_trip),
		cmocka_unit_test(test_payload_builder_overflow),
		cmocka_unit_test(test_payload_truncated_fields),
		cmocka_unit_test(test_payload_string_rules),
		cmocka_unit_test(test_payload_trailing_bytes),
		cmocka_unit_test(test_chan_round_trip_with_fd),
		cmocka_unit_test(test_chan_peer_close),
		cmocka_unit_test(test_chan_refuses_oversized_raw_frame),
		cmocka_unit_test(test_chan_refuses_malformed_raw_frames),
		cmocka_unit_test(test_chan_drain_reads_the_last_words),
		cmocka_unit_test(test_chan_reset_peer_still_has_its_last_words_read),
		cmocka_unit_test(test_chan_free_inside_callback),
		cmocka_unit_test(test_chan_queue_flushes_in_order),
		cmocka_unit_test(test_chan_batching_keeps_frames_and_order),
		cmocka_unit_test(test_chan_batching_full_socket_queues_in_order),
		cmocka_unit_test(test_chan_batching_packs_frames),
		cmocka_unit_test(test_chan_lazy_frames),
		cmocka_unit_test(test_chan_packed_to_a_plain_receiver),
		cmocka_unit_test(test_chan_queue_bound),
		cmocka_unit_test(test_blocking_helpers),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
