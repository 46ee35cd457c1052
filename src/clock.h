/*
 * clock.h — milliseconds from the two clocks the proxy uses:
 *   clock_mono_ms  CLOCK_MONOTONIC: deadlines, timeouts, ages (never jumps);
 *   clock_unix_ms  CLOCK_REALTIME: what is compared with ticket times or
 *                  shown to people (log lines, /metrics end times).
 */
#ifndef EKP_CLOCK_H
#define EKP_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t
clock_mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static inline uint64_t
clock_unix_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

#endif
