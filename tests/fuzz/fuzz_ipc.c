/*
 * fuzz_ipc.c — libFuzzer target for the datagram walk of ipc.c
 * (ipc_dgram_check, ipc_dgram_next, ipc_frame_decode), whose input is
 * what another process put into a SOCK_SEQPACKET datagram. Beyond the
 * sanitizers (the input is copied into an allocation of exactly its size)
 * it checks their promises: an accepted datagram walks into exactly the
 * frames counted, each with a known type and its payload inside the
 * datagram, ending at its last byte; a refused one walks into nothing
 * that check did not accept; exact single-frame decoding agrees with a
 * count of one; an error text is printable and terminated.
 *
 *   make fuzz && build/fuzz/fuzz_ipc -max_total_time=60 tests/fuzz/corpus/ipc
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ipc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check_err(const char *err, size_t cap)
{
	size_t n = strnlen(err, cap);

	if (n == 0 || n == cap)
		abort();
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)err[i] < 0x20 || (unsigned char)err[i] >= 0x7f)
			abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ipc_msg m;
	uint8_t *buf;
	char err[200];
	size_t off = 0;
	int count, walked = 0, one;

	if (size > IPC_MAX_DGRAM)
		return 0;	/* the kernel truncates longer ones (MSG_TRUNC: refused) */
	if ((buf = malloc(size ? size : 1)) == NULL)
		return 0;
	if (size > 0)
		memcpy(buf, data, size);
	err[0] = '\0';
	count = ipc_dgram_check(buf, size, err, sizeof(err));
	if (count == 0 || count < -1)
		abort();
	if (count < 0)
		check_err(err, sizeof(err));
	while (ipc_dgram_next(buf, size, &off, &m) == 1) {
		walked++;
		if (m.type == IPC_NONE || m.type >= IPC__COUNT || m.fd != -1)
			abort();
		if (m.data < buf + IPC_HDR_LEN || m.data + m.len > buf + size)
			abort();
		if (m.len > IPC_MAX_PAYLOAD)
			abort();
	}
	if (count > 0 && (walked != count || off != size))
		abort();
	if (count < 0 && off == size && size > 0)
		abort();	/* a refused datagram never walks to its end */
	err[0] = '\0';
	one = ipc_frame_decode(buf, size, &m, err, sizeof(err));
	if ((one == 0) != (count == 1))
		abort();
	if (one != 0)
		check_err(err, sizeof(err));
	free(buf);
	return 0;
}
