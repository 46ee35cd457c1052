/*
 * test_memcache.c — the per-thread cache of mid-sized blocks: a block
 * freed is handed out again for a request of its class and no other, the
 * count kept per class is bounded, small and very large blocks go back
 * to glibc, free() and memcache_free mix either way, memcache_zalloc
 * zeroes, a kept block is poisoned under AddressSanitizer until it is
 * handed out, a thread's blocks are freed when it exits (LeakSanitizer
 * would say otherwise), and once installed libevent's buffers use it and
 * OpenSSL's allocations do not.
 */
#include <malloc.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <openssl/crypto.h>

#include "memcache.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISONED(p)	__asan_address_is_poisoned(p)
#define USABLE(p)	(!__asan_address_is_poisoned(p))
#else
#define POISONED(p)	1		/* nothing to see without ASan */
#define USABLE(p)	1
#endif

static void
test_a_freed_block_serves_its_class_again(void **state)
{
	void *a, *b, *c;

	(void)state;
	memcache_flush();
	assert_non_null(a = memcache_malloc(3000));	/* the 4 KiB class */
	assert_true(malloc_usable_size(a) >= 4096);
	memset(a, 0x5a, 4096);				/* the whole class is ours */
	memcache_free(a);
	assert_int_equal(memcache_kept_bytes(), 4096);
	assert_true(POISONED(a));
	assert_ptr_equal(b = memcache_malloc(4096), a);	/* same class: the kept block */
	assert_int_equal(memcache_kept_bytes(), 0);
	assert_true(USABLE(b) && USABLE((char *)b + 4095));
	memset(b, 0, 4096);
	memcache_free(b);
	/* another class does not take it */
	assert_non_null(c = memcache_malloc(1500));	/* 2 KiB */
	assert_ptr_not_equal(c, a);
	assert_int_equal(memcache_kept_bytes(), 4096);
	memcache_free(c);
	assert_int_equal(memcache_kept_bytes(), 4096 + 2048);
	memcache_flush();
	assert_int_equal(memcache_kept_bytes(), 0);
}

static void
test_small_and_large_blocks_go_back_to_glibc(void **state)
{
	void *p;

	(void)state;
	memcache_flush();
	assert_non_null(p = memcache_malloc(100));
	memcache_free(p);
	assert_int_equal(memcache_kept_bytes(), 0);
	assert_non_null(p = memcache_malloc(64 * 1024));
	memcache_free(p);
	assert_int_equal(memcache_kept_bytes(), 0);
	/* a large block from elsewhere is not kept for small requests */
	assert_non_null(p = malloc(200 * 1024));
	memcache_free(p);
	assert_int_equal(memcache_kept_bytes(), 0);
	memcache_free(NULL);
}

static void
test_the_count_kept_is_bounded(void **state)
{
	void *p[100];

	(void)state;
	memcache_flush();
	for (int i = 0; i < 100; i++)
		assert_non_null(p[i] = memcache_malloc(1024));
	for (int i = 0; i < 100; i++)
		memcache_free(p[i]);
	assert_int_equal(memcache_kept_bytes(), 64 * 1024);	/* 64 kept, 36 freed */
	for (int i = 0; i < 100; i++)
		assert_non_null(p[i] = memcache_malloc(32 * 1024));
	for (int i = 0; i < 100; i++)
		memcache_free(p[i]);
	assert_int_equal(memcache_kept_bytes(), 64 * 1024 + 4 * 32 * 1024);
	memcache_flush();
}

static void
test_free_and_memcache_free_mix(void **state)
{
	void *p;

	(void)state;
	memcache_flush();
	assert_non_null(p = memcache_malloc(8000));
	free(p);				/* a memcache block is glibc's */
	assert_non_null(p = malloc(8192));
	memcache_free(p);			/* and glibc's can be kept */
	assert_int_equal(memcache_kept_bytes(), 8192);
	assert_non_null(p = memcache_realloc(memcache_malloc(2000), 20000));
	memset(p, 1, 20000);
	memcache_free(p);
	memcache_flush();
}

static void
test_zalloc_zeroes_and_frees_with_free(void **state)
{
	unsigned char *p;

	(void)state;
	for (size_t n = 1; n <= 4096; n = n * 3 + 1) {
		assert_non_null(p = memcache_zalloc(n));
		for (size_t i = 0; i < n; i++)
			if (p[i] != 0)
				fail_msg("byte %zu of %zu not zero", i, n);
		memset(p, 0xff, n);		/* dirty it for the next round */
		free(p);
	}
}

static void *
thread_main(void *arg)
{
	void *p = memcache_malloc(16 * 1024);

	(void)arg;
	memcache_free(p);
	return (void *)memcache_kept_bytes();
}

static void
test_a_thread_has_its_own_cache_freed_at_exit(void **state)
{
	pthread_t th;
	void *kept = NULL;

	(void)state;
	memcache_flush();
	assert_int_equal(pthread_create(&th, NULL, thread_main, NULL), 0);
	assert_int_equal(pthread_join(th, &kept), 0);
	assert_int_equal((size_t)kept, 16 * 1024);
	assert_int_equal(memcache_kept_bytes(), 0);	/* not this thread's */
}

static void
test_libevent_allocates_through_it_openssl_does_not(void **state)
{
	struct evbuffer *b;
	char data[3000];
	void *p;

	(void)state;
	memcache_flush();
	memset(data, 'x', sizeof(data));
	assert_non_null(b = evbuffer_new());
	assert_int_equal(evbuffer_add(b, data, sizeof(data)), 0);	/* a 4 KiB chain */
	evbuffer_free(b);
	assert_true(memcache_kept_bytes() >= 4096);
	memcache_flush();
	/* OpenSSL keeps glibc's allocator */
	assert_non_null(p = OPENSSL_malloc(16384));
	OPENSSL_free(p);
	assert_int_equal(memcache_kept_bytes(), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_a_freed_block_serves_its_class_again),
		cmocka_unit_test(test_small_and_large_blocks_go_back_to_glibc),
		cmocka_unit_test(test_the_count_kept_is_bounded),
		cmocka_unit_test(test_free_and_memcache_free_mix),
		cmocka_unit_test(test_zalloc_zeroes_and_frees_with_free),
		cmocka_unit_test(test_a_thread_has_its_own_cache_freed_at_exit),
		cmocka_unit_test(test_libevent_allocates_through_it_openssl_does_not),
	};

	memcache_install();	/* before cmocka or anything else allocates */
	return cmocka_run_group_tests(tests, NULL, NULL);
}
