/*
 * memcache.h — libevent's allocations, with the mid-sized blocks it frees
 * kept per thread for its next allocations.
 *
 * Why: per request, libevent allocates and frees buffer chains of 1 to
 * 32 KiB (powers of two: a read of the backend's answer, the backend
 * head, the device's output) and calls calloc for its small structures
 * (an evbuffer per head). glibc serves neither from its per-thread cache
 * (tcache stops at 1 KiB and calloc never uses it), so each goes through
 * _int_malloc's bins, whose cost grows with the heap's fragmentation:
 * after 5,000 devices connected at once and left (the cold start), the
 * workers spent 7 % of their time in _int_malloc for the rest of their
 * life. Here a block of a class (1, 2, 4, 8, 16 or 32 KiB) freed by
 * libevent is kept, last in first out, for the next allocation of that
 * class, up to a bounded count per class and thread (704 KiB per thread
 * at most); libevent's calloc becomes malloc + memset, which glibc's
 * tcache serves for small sizes. An allocation is rounded up to its
 * class; libevent's chains already are powers of two, so nothing is
 * wasted there. OpenSSL keeps glibc's allocator: rounding its 17 KiB
 * record buffers and its per-connection structures up to powers of two
 * would cost every connection memory (the parked-Ping figure).
 *
 * Every block is glibc's own: a block is classed by malloc_usable_size,
 * so free() of memory libevent returned (evbuffer_readln's line) and
 * memcache_free of memory from malloc() are both correct. A thread's
 * blocks are freed when it exits. Under AddressSanitizer a kept block is
 * poisoned until it is handed out again, so a use after free is still
 * caught.
 *
 * memcache_install replaces libevent's allocator for the whole process
 * (event_set_mem_functions): only the daemon's main calls it, first
 * thing; the embedding library leaves its host's libevent alone. memcache_malloc and memcache_free can be
 * used directly besides (stream.c's tokens, requests and parse states).
 */
#ifndef EKP_MEMCACHE_H
#define EKP_MEMCACHE_H

#include <stddef.h>

void memcache_install(void);

void *memcache_malloc(size_t n);
/* n zeroed bytes from malloc (glibc's tcache for small n), for objects
 * made per request: calloc, and malloc + memset (which the compiler turns
 * into calloc), never use the tcache. Freed with free(). */
void *memcache_zalloc(size_t n);
void *memcache_realloc(void *p, size_t n);
void memcache_free(void *p);

/* This thread's kept blocks, in all (for tests), and freeing them all. */
size_t memcache_kept_bytes(void);
void memcache_flush(void);

#endif
