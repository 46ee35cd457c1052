/*
 * test_kcrypt.c — kcrypt.c against libkrb5, both ways, for both enctypes:
 * what kcrypt_encrypt makes, krb5_c_decrypt opens (under the same base
 * key and usage, and under no other usage), and what krb5_c_encrypt
 * makes, kcrypt_decrypt opens, for every plaintext length across the
 * CTS edges (none, a partial block, whole blocks) and a long one; a
 * flipped byte anywhere, a short or truncated message, another key or
 * another usage is refused with the output zeroed; what kcrypt does not
 * do (other enctypes, a wrong key length) it says so; a thread of its
 * own gets its own contexts.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <krb5.h>
#include <openssl/rand.h>

#include "kcrypt.h"

#define USAGE_AP_REQ_AUTH	11
#define USAGE_AP_REP_ENCPART	12
#define LONG_PLAIN		1500

struct world {
	krb5_context kc;
	krb5_keyblock kb;
	unsigned char key[32];
};

static int
setup(void **state)
{
	struct world *w = calloc(1, sizeof(*w));

	if (w == NULL || krb5_init_context(&w->kc) != 0)
		return -1;
	*state = w;
	return 0;
}

static int
teardown(void **state)
{
	struct world *w = *state;

	krb5_free_context(w->kc);
	free(w);
	return 0;
}

/* A fresh random base key of enctype into w->kb, and its usage keys. */
static void
new_key(struct world *w, krb5_enctype et, uint32_t usage, struct kcrypt_key *k)
{
	size_t len = et == ENCTYPE_AES128_CTS_HMAC_SHA1_96 ? 16 : 32;

	assert_int_equal(RAND_bytes(w->key, (int)len), 1);
	memset(&w->kb, 0, sizeof(w->kb));
	w->kb.magic = KV5M_KEYBLOCK;
	w->kb.enctype = et;
	w->kb.length = (unsigned)len;
	w->kb.contents = w->key;
	assert_int_equal(kcrypt_derive(et, w->key, len, usage, k), 0);
	assert_int_equal(k->len, len);
}

/* Our encryption of plain[0..n) as krb5_c_decrypt sees it with usage:
 * the krb5 error, and on success the plaintext compared. */
static krb5_error_code
krb5_opens(struct world *w, const struct kcrypt_key *k, uint32_t usage,
    const unsigned char *plain, size_t n)
{
	unsigned char *in = malloc(KCRYPT_CONF + n), *ct = malloc(KCRYPT_CONF + n + KCRYPT_MAC);
	unsigned char *back = malloc(n + 1);
	krb5_enc_data ed;
	krb5_data pd;
	size_t want = 0;
	krb5_error_code code;

	assert_non_null(in);
	assert_non_null(ct);
	assert_non_null(back);
	assert_int_equal(RAND_bytes(in, KCRYPT_CONF), 1);
	memcpy(in + KCRYPT_CONF, plain, n);
	assert_int_equal(kcrypt_encrypt(k, in, KCRYPT_CONF + n, ct), 0);
	assert_int_equal(krb5_c_encrypt_length(w->kc, w->kb.enctype, n, &want), 0);
	assert_int_equal(want, KCRYPT_CONF + n + KCRYPT_MAC);
	memset(&ed, 0, sizeof(ed));
	ed.magic = KV5M_ENC_DATA;
	ed.enctype = w->kb.enctype;
	ed.ciphertext.length = (unsigned)want;
	ed.ciphertext.data = (char *)ct;
	pd.magic = KV5M_DATA;
	pd.length = (unsigned)n + 1;
	pd.data = (char *)back;
	code = krb5_c_decrypt(w->kc, &w->kb, usage, NULL, &ed, &pd);
	if (code == 0) {
		assert_int_equal(pd.length, n);
		if (n > 0)
			assert_memory_equal(back, plain, n);
	}
	free(in);
	free(ct);
	free(back);
	return code;
}

/* krb5_c_encrypt's encryption of plain[0..n) with usage, opened here. */
static int
kcrypt_opens(struct world *w, const struct kcrypt_key *k, uint32_t usage,
    const unsigned char *plain, size_t n)
{
	size_t clen = 0;
	unsigned char *ct, *out;
	krb5_enc_data ed;
	krb5_data pd;
	int ret;

	assert_int_equal(krb5_c_encrypt_length(w->kc, w->kb.enctype, n, &clen), 0);
	assert_non_null(ct = malloc(clen));
	assert_non_null(out = malloc(clen));
	pd.magic = KV5M_DATA;
	pd.length = (unsigned)n;
	pd.data = (char *)plain;
	memset(&ed, 0, sizeof(ed));
	ed.ciphertext.length = (unsigned)clen;
	ed.ciphertext.data = (char *)ct;
	assert_int_equal(krb5_c_encrypt(w->kc, &w->kb, usage, NULL, &pd, &ed), 0);
	assert_int_equal(ed.ciphertext.length, clen);
	ret = kcrypt_decrypt(k, ct, clen, out);
	if (ret == 0 && n > 0)
		assert_memory_equal(out + KCRYPT_CONF, plain, n);
	free(ct);
	free(out);
	return ret;
}

static void
both_ways_every_length(struct world *w, krb5_enctype et)
{
	unsigned char plain[LONG_PLAIN];
	struct kcrypt_key k, k12;

	new_key(w, et, USAGE_AP_REQ_AUTH, &k);
	assert_int_equal(kcrypt_derive(et, w->key, k.len, USAGE_AP_REP_ENCPART, &k12), 0);
	assert_memory_not_equal(k.ke, k12.ke, k.len);
	assert_memory_not_equal(k.ke, k.ki, k.len);
	assert_int_equal(RAND_bytes(plain, sizeof(plain)), 1);
	/* 0..70 crosses every CTS case: the confounder alone (one block, plain
	 * CBC), a partial last block, whole blocks (CS3 swaps them too) */
	for (size_t n = 0; n <= 70; n++) {
		if (krb5_opens(w, &k, USAGE_AP_REQ_AUTH, plain, n) != 0)
			fail_msg("enctype %d, %zu bytes: libkrb5 does not open ours", et, n);
		if (kcrypt_opens(w, &k, USAGE_AP_REQ_AUTH, plain, n) != 0)
			fail_msg("enctype %d, %zu bytes: we do not open libkrb5's", et, n);
	}
	assert_int_equal(krb5_opens(w, &k, USAGE_AP_REQ_AUTH, plain, sizeof(plain)), 0);
	assert_int_equal(kcrypt_opens(w, &k, USAGE_AP_REQ_AUTH, plain, sizeof(plain)), 0);
	assert_int_equal(kcrypt_opens(w, &k12, USAGE_AP_REP_ENCPART, plain, 100), 0);
	/* the usage is in the keys: another usage opens nothing either way */
	assert_int_equal(krb5_opens(w, &k, USAGE_AP_REP_ENCPART, plain, 100),
	    KRB5KRB_AP_ERR_BAD_INTEGRITY);
	assert_int_equal(kcrypt_opens(w, &k12, USAGE_AP_REQ_AUTH, plain, 100), -1);
	kcrypt_key_clear(&k);
	kcrypt_key_clear(&k12);
	assert_int_equal(k.len, 0);
}

static void
test_aes256_both_ways_with_libkrb5(void **state)
{
	both_ways_every_length(*state, ENCTYPE_AES256_CTS_HMAC_SHA1_96);
}

static void
test_aes128_both_ways_with_libkrb5(void **state)
{
	both_ways_every_length(*state, ENCTYPE_AES128_CTS_HMAC_SHA1_96);
}

static int
all_zero(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != 0)
			return 0;
	return 1;
}

static void
test_tampered_short_or_foreign_messages_are_refused_and_zeroed(void **state)
{
	struct world *w = *state;
	unsigned char in[KCRYPT_CONF + 40], ct[sizeof(in) + KCRYPT_MAC], bad[sizeof(ct)];
	unsigned char out[sizeof(ct)];
	struct kcrypt_key k, other;

	new_key(w, ENCTYPE_AES256_CTS_HMAC_SHA1_96, USAGE_AP_REP_ENCPART, &k);
	assert_int_equal(RAND_bytes(in, sizeof(in)), 1);
	assert_int_equal(kcrypt_encrypt(&k, in, sizeof(in), ct), 0);
	assert_int_equal(kcrypt_decrypt(&k, ct, sizeof(ct), out), 0);
	assert_memory_equal(out, in, sizeof(in));
	/* a flipped bit anywhere: in the cipher (each block) or the checksum */
	for (size_t i = 0; i < sizeof(ct); i++) {
		memcpy(bad, ct, sizeof(ct));
		bad[i] ^= 0x01;
		memset(out, 0xee, sizeof(out));
		if (kcrypt_decrypt(&k, bad, sizeof(bad), out) != -1)
			fail_msg("byte %zu flipped: accepted", i);
		if (!all_zero(out, sizeof(ct) - KCRYPT_MAC))
			fail_msg("byte %zu flipped: the refused plaintext was left in out", i);
	}
	/* cut short: a byte off the end, or below confounder + checksum */
	assert_int_equal(kcrypt_decrypt(&k, ct, sizeof(ct) - 1, out), -1);
	assert_int_equal(kcrypt_decrypt(&k, ct, KCRYPT_CONF + KCRYPT_MAC - 1, out), -1);
	assert_int_equal(kcrypt_decrypt(&k, ct, 0, out), -1);
	/* another key of the same enctype */
	new_key(w, ENCTYPE_AES256_CTS_HMAC_SHA1_96, USAGE_AP_REP_ENCPART, &other);
	assert_int_equal(kcrypt_decrypt(&other, ct, sizeof(ct), out), -1);
	/* encryption needs at least the confounder */
	assert_int_equal(kcrypt_encrypt(&k, in, KCRYPT_CONF - 1, ct), -1);
	assert_int_equal(kcrypt_encrypt(NULL, in, sizeof(in), ct), -1);
	kcrypt_key_clear(&k);
	kcrypt_key_clear(&other);
}

static void
test_what_it_does_not_do_it_refuses(void **state)
{
	unsigned char key[32] = { 1 };
	struct kcrypt_key k;

	(void)state;
	assert_true(kcrypt_supported(ENCTYPE_AES128_CTS_HMAC_SHA1_96));
	assert_true(kcrypt_supported(ENCTYPE_AES256_CTS_HMAC_SHA1_96));
	assert_false(kcrypt_supported(ENCTYPE_AES256_CTS_HMAC_SHA384_192));
	assert_false(kcrypt_supported(ENCTYPE_ARCFOUR_HMAC));
	assert_false(kcrypt_supported(ENCTYPE_DES3_CBC_SHA1));
	memset(&k, 0x77, sizeof(k));
	assert_int_equal(kcrypt_derive(ENCTYPE_ARCFOUR_HMAC, key, 16, 11, &k), -1);
	assert_true(all_zero((const unsigned char *)&k, sizeof(k)));
	/* a key length not the enctype's */
	assert_int_equal(kcrypt_derive(ENCTYPE_AES256_CTS_HMAC_SHA1_96, key, 16, 11, &k), -1);
	assert_int_equal(kcrypt_derive(ENCTYPE_AES128_CTS_HMAC_SHA1_96, key, 32, 11, &k), -1);
	assert_int_equal(kcrypt_derive(ENCTYPE_AES128_CTS_HMAC_SHA1_96, NULL, 16, 11, &k), -1);
}

/* A key with its HMAC context kept (kcrypt_key_keep_mac): both ways with
 * libkrb5 for every length as before, many messages in a row on the kept
 * context (each starting again from the keyed state), mixed with a key
 * without one; a kept context whose Ki no longer matches the key's is not
 * used (a changed Ki opens nothing libkrb5 made with the old one, and the
 * key as restored works again); kept once only; freed by
 * kcrypt_key_clear (LeakSanitizer). */
static void
test_a_kept_mac_context_gives_the_same_messages(void **state)
{
	struct world *w = *state;
	unsigned char plain[LONG_PLAIN];
	krb5_enctype ets[2] = { ENCTYPE_AES256_CTS_HMAC_SHA1_96, ENCTYPE_AES128_CTS_HMAC_SHA1_96 };

	assert_int_equal(RAND_bytes(plain, sizeof(plain)), 1);
	for (int e = 0; e < 2; e++) {
		struct kcrypt_key k, plainkey;

		new_key(w, ets[e], USAGE_AP_REQ_AUTH, &k);
		assert_int_equal(kcrypt_derive(ets[e], w->key, k.len, USAGE_AP_REQ_AUTH, &plainkey),
		    0);
		assert_null(k.mac);
		assert_int_equal(kcrypt_key_keep_mac(&k), 0);
		assert_non_null(k.mac);
		assert_int_equal(kcrypt_key_keep_mac(&k), -1);	/* one is kept */
		for (size_t n = 0; n <= 70; n++) {
			if (krb5_opens(w, &k, USAGE_AP_REQ_AUTH, plain, n) != 0)
				fail_msg("enctype %d, %zu bytes, kept MAC: libkrb5 does not open ours",
				    ets[e], n);
			if (kcrypt_opens(w, &k, USAGE_AP_REQ_AUTH, plain, n) != 0)
				fail_msg("enctype %d, %zu bytes, kept MAC: we do not open libkrb5's",
				    ets[e], n);
			/* the thread's context between two uses of the kept one */
			assert_int_equal(krb5_opens(w, &plainkey, USAGE_AP_REQ_AUTH, plain, n), 0);
		}
		assert_int_equal(krb5_opens(w, &k, USAGE_AP_REQ_AUTH, plain, sizeof(plain)), 0);
		/* Ki changed under the kept context: it is not used */
		k.ki[0] ^= 1;
		assert_int_equal(kcrypt_opens(w, &k, USAGE_AP_REQ_AUTH, plain, 40), -1);
		assert_int_equal(krb5_opens(w, &k, USAGE_AP_REQ_AUTH, plain, 40),
		    KRB5KRB_AP_ERR_BAD_INTEGRITY);
		k.ki[0] ^= 1;
		assert_int_equal(kcrypt_opens(w, &k, USAGE_AP_REQ_AUTH, plain, 40), 0);
		kcrypt_key_clear(&k);
		assert_null(k.mac);
		assert_int_equal(k.len, 0);
		assert_int_equal(kcrypt_key_keep_mac(&k), -1);	/* no key */
		kcrypt_key_clear(&plainkey);
	}
}

/* A thread of its own: its contexts are its own, and freed at its exit
 * (LeakSanitizer would say otherwise). */
struct thread_job {
	struct world *w;
	const struct kcrypt_key *k;
	int ok;
};

static void *
thread_main(void *arg)
{
	struct thread_job *j = arg;
	unsigned char plain[64];

	memset(plain, 0x42, sizeof(plain));
	j->ok = krb5_opens(j->w, j->k, USAGE_AP_REQ_AUTH, plain, sizeof(plain)) == 0;
	return NULL;
}

static void
test_another_thread_has_its_own_contexts(void **state)
{
	struct world *w = *state;
	struct kcrypt_key k;
	struct thread_job j = { .w = w, .k = &k, .ok = 0 };
	pthread_t th;

	new_key(w, ENCTYPE_AES128_CTS_HMAC_SHA1_96, USAGE_AP_REQ_AUTH, &k);
	assert_int_equal(pthread_create(&th, NULL, thread_main, &j), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_true(j.ok);
	kcrypt_key_clear(&k);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_aes256_both_ways_with_libkrb5, setup, teardown),
		cmocka_unit_test_setup_teardown(test_aes128_both_ways_with_libkrb5, setup, teardown),
		cmocka_unit_test_setup_teardown(
		    test_tampered_short_or_foreign_messages_are_refused_and_zeroed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_what_it_does_not_do_it_refuses, setup, teardown),
		cmocka_unit_test_setup_teardown(test_another_thread_has_its_own_contexts, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_a_kept_mac_context_gives_the_same_messages, setup,
		    teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
