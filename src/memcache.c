/*
 * memcache.c — libevent's allocator with mid-sized blocks kept per
 * thread; see memcache.h for why and what is safe.
 */
#include <malloc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "memcache.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n)	ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n)	ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n)	((void)(p), (void)(n))
#define UNPOISON(p, n)	((void)(p), (void)(n))
#endif

#define CLASSES		6
#define CLASS_MIN	1024u		/* class k holds blocks of CLASS_MIN << k */

/* How many blocks each class keeps: 64 KiB to 128 KiB each, 704 KiB in all. */
static const unsigned keep_max[CLASSES] = { 64, 64, 32, 16, 8, 4 };
#define KEEP_MOST	64

struct cache {
	void *blocks[CLASSES][KEEP_MOST];
	unsigned n[CLASSES];
};

static _Thread_local struct cache *tc;
static pthread_key_t tc_key;
static pthread_once_t tc_once = PTHREAD_ONCE_INIT;
static int tc_key_ok;

static size_t
class_size(unsigned k)
{
	return (size_t)CLASS_MIN << k;
}

/* Every block c keeps, back to glibc. */
static void
drain(struct cache *c)
{
	for (unsigned k = 0; k < CLASSES; k++)
		while (c->n[k] > 0) {
			void *p = c->blocks[k][--c->n[k]];

			UNPOISON(p, class_size(k));
			free(p);
		}
}

static void
cache_free(void *arg)
{
	struct cache *c = arg;

	if (c == NULL)
		return;
	drain(c);
	free(c);
}

static void
tc_key_init(void)
{
	tc_key_ok = pthread_key_create(&tc_key, cache_free) == 0;
}

/* This thread's cache, made on first use; NULL when it cannot be. */
static struct cache *
cache_get(void)
{
	struct cache *c;

	if (tc != NULL)
		return tc;
	(void)pthread_once(&tc_once, tc_key_init);
	if (!tc_key_ok || (c = calloc(1, sizeof(*c))) == NULL)
		return NULL;
	if (pthread_setspecific(tc_key, c) != 0) {
		free(c);
		return NULL;
	}
	tc = c;
	return c;
}

/* The class an allocation of n bytes comes from: the smallest that holds
 * it, or -1 (too small or too large to keep). */
static int
class_for_request(size_t n)
{
	if (n <= CLASS_MIN / 2 || n > class_size(CLASSES - 1))
		return -1;
	for (unsigned k = 0; k < CLASSES; k++)
		if (n <= class_size(k))
			return (int)k;
	return -1;
}

/* The class a block of usable size u can serve: the largest whose size
 * it holds, as long as it is less than twice that (a much larger block,
 * mmap()ed or not, goes back to glibc rather than serve small requests). */
static int
class_for_block(size_t u)
{
	for (int k = CLASSES - 1; k >= 0; k--)
		if (u >= class_size((unsigned)k))
			return u < 2 * class_size((unsigned)k) ? k : -1;
	return -1;
}

void *
memcache_malloc(size_t n)
{
	int k = class_for_request(n);
	struct cache *c;

	if (k < 0)
		return malloc(n);
	if ((c = cache_get()) != NULL && c->n[k] > 0) {
		void *p = c->blocks[k][--c->n[k]];

		UNPOISON(p, class_size((unsigned)k));
		return p;
	}
	/* the whole class, so that the block goes back to it when freed */
	return malloc(class_size((unsigned)k));
}

void
memcache_free(void *p)
{
	struct cache *c;
	int k;

	if (p == NULL)
		return;
	k = class_for_block(malloc_usable_size(p));
	if (k < 0 || (c = cache_get()) == NULL || c->n[k] >= keep_max[k]) {
		free(p);
		return;
	}
	POISON(p, class_size((unsigned)k));
	c->blocks[k][c->n[k]++] = p;
}

void *
memcache_zalloc(size_t n)
{
	void *p = malloc(n);

	/* explicit_bzero, not memset: the compiler fuses malloc + memset
	 * into calloc, which glibc serves without its tcache */
	if (p != NULL)
		explicit_bzero(p, n);
	return p;
}

void *
memcache_realloc(void *p, size_t n)
{
	return realloc(p, n);		/* any block is glibc's own */
}

size_t
memcache_kept_bytes(void)
{
	size_t sum = 0;

	if (tc == NULL)
		return 0;
	for (unsigned k = 0; k < CLASSES; k++)
		sum += tc->n[k] * class_size(k);
	return sum;
}

void
memcache_flush(void)
{
	if (tc != NULL)
		drain(tc);
}

void
memcache_install(void)
{
	event_set_mem_functions(memcache_malloc, memcache_realloc, memcache_free);
}
