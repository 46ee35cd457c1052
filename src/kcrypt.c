/*
 * kcrypt.c — aes*-cts-hmac-sha1-96 on OpenSSL's KRB5KDF, AES-CBC-CTS
 * (CS3) and HMAC-SHA1; see kcrypt.h for the layout and who owns what.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include "kcrypt.h"

#define ENCTYPE_AES128		17
#define ENCTYPE_AES256		18
#define SHA1_LEN		20

/* ---- each thread's contexts ---------------------------------------------------------- */

/* A cipher context per key size, set to AES-CBC-CTS in CS3 form once,
 * and one HMAC context set to SHA-1 once; keyed anew by every call (the
 * mode and the digest stay: naming them again costs OpenSSL a parameter
 * search and a digest fetch, 0.45 us a call). Freed at the thread's exit. */
struct tctx {
	EVP_CIPHER_CTX *aes[2];		/* [0] AES-128-CBC-CTS, [1] AES-256-CBC-CTS */
	EVP_MAC_CTX *hmac;
	/* 1: a re-initialisation without an IV starts again from the zero IV
	 * the contexts were given when made (OpenSSL 3's CBC modes keep it as
	 * their original IV), so a call does not pass it again: passing one
	 * makes OpenSSL ask the provider for the IV length by name on every
	 * call. Checked on each thread's contexts (iv_resets); 0: passed. */
	int iv_reset;
};

static const unsigned char zero_iv[16];

static _Thread_local struct tctx *tctx;
static pthread_key_t tctx_key;
static pthread_once_t tctx_once = PTHREAD_ONCE_INIT;
static int tctx_key_ok;

static void
tctx_free(void *arg)
{
	struct tctx *t = arg;

	if (t == NULL)
		return;
	EVP_CIPHER_CTX_free(t->aes[0]);	/* resets: the last key schedule zeroed */
	EVP_CIPHER_CTX_free(t->aes[1]);
	EVP_MAC_CTX_free(t->hmac);
	free(t);
}

static void
tctx_key_init(void)
{
	tctx_key_ok = pthread_key_create(&tctx_key, tctx_free) == 0;
}

/* Whether t's cipher contexts start again from their zero IV when
 * re-initialised without one: a message encrypted twice that way under a
 * throwaway key, between and after other messages, must come out as it
 * does with the IV given. */
static int
iv_resets(struct tctx *t)
{
	static const unsigned char key[32] = { 0x6b, 0x63, 0x72, 0x79, 0x70, 0x74 };
	unsigned char in[40], want[40], got[40];
	int ok = 1, n = 0;

	memset(in, 0x5a, sizeof(in));
	for (int i = 0; i < 2 && ok; i++) {
		EVP_CIPHER_CTX *c = t->aes[i];

		ok = EVP_CipherInit_ex2(c, NULL, key, zero_iv, 1, NULL) == 1 &&
		    EVP_CipherUpdate(c, want, &n, in, (int)sizeof(in)) == 1;
		for (int k = 0; k < 2 && ok; k++)
			ok = EVP_CipherInit_ex2(c, NULL, key, NULL, 1, NULL) == 1 &&
			    EVP_CipherUpdate(c, got, &n, in, (int)sizeof(in)) == 1 &&
			    memcmp(got, want, sizeof(want)) == 0;
	}
	OPENSSL_cleanse(want, sizeof(want));
	OPENSSL_cleanse(got, sizeof(got));
	return ok;
}

/* This thread's contexts, made on first use; NULL when OpenSSL cannot. */
static struct tctx *
tctx_get(void)
{
	static const char *const names[2] = { "AES-128-CBC-CTS", "AES-256-CBC-CTS" };
	struct tctx *t = NULL;
	EVP_CIPHER *c = NULL;
	EVP_MAC *m = NULL;
	OSSL_PARAM p[2], d[2];

	if (tctx != NULL)
		return tctx;
	(void)pthread_once(&tctx_once, tctx_key_init);
	if (!tctx_key_ok || (t = calloc(1, sizeof(*t))) == NULL)
		goto fail;
	/* the CTS form RFC 3962 uses: CS3, the last two blocks always swapped */
	p[0] = OSSL_PARAM_construct_utf8_string(OSSL_CIPHER_PARAM_CTS_MODE, (char *)"CS3", 0);
	p[1] = OSSL_PARAM_construct_end();
	for (int i = 0; i < 2; i++) {
		if ((c = EVP_CIPHER_fetch(NULL, names[i], NULL)) == NULL ||
		    (t->aes[i] = EVP_CIPHER_CTX_new()) == NULL ||
		    EVP_CipherInit_ex2(t->aes[i], c, NULL, zero_iv, 1, p) != 1)
			goto fail;
		EVP_CIPHER_free(c);	/* the context holds its own reference */
		c = NULL;
	}
	d[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA1", 0);
	d[1] = OSSL_PARAM_construct_end();
	if ((m = EVP_MAC_fetch(NULL, "HMAC", NULL)) == NULL ||
	    (t->hmac = EVP_MAC_CTX_new(m)) == NULL || EVP_MAC_CTX_set_params(t->hmac, d) != 1)
		goto fail;
	EVP_MAC_free(m);
	t->iv_reset = iv_resets(t);
	if (pthread_setspecific(tctx_key, t) != 0) {
		m = NULL;
		goto fail;
	}
	tctx = t;
	return t;

fail:
	EVP_CIPHER_free(c);
	EVP_MAC_free(m);
	tctx_free(t);
	return NULL;
}

/* ---- the primitives ---------------------------------------------------------------- */

int
kcrypt_supported(int32_t enctype)
{
	return enctype == ENCTYPE_AES128 || enctype == ENCTYPE_AES256;
}

static int
dk(EVP_KDF_CTX *kx, const char *cipher, const unsigned char *key, size_t keylen,
    uint32_t usage, unsigned char kind, unsigned char *out)
{
	unsigned char constant[5] = { (unsigned char)(usage >> 24), (unsigned char)(usage >> 16),
	    (unsigned char)(usage >> 8), (unsigned char)usage, kind };
	OSSL_PARAM p[4];

	p[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_CIPHER, (char *)cipher, 0);
	p[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)key, keylen);
	p[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_CONSTANT, constant,
	    sizeof(constant));
	p[3] = OSSL_PARAM_construct_end();
	return EVP_KDF_derive(kx, out, keylen, p) == 1 ? 0 : -1;
}

int
kcrypt_derive(int32_t enctype, const unsigned char *key, size_t keylen, uint32_t usage,
    struct kcrypt_key *out)
{
	const char *cipher = enctype == ENCTYPE_AES128 ? "AES-128-CBC" : "AES-256-CBC";
	size_t want = enctype == ENCTYPE_AES128 ? 16 : 32;
	struct kcrypt_key k;
	EVP_KDF *kdf = NULL;
	EVP_KDF_CTX *kx = NULL;
	int ret = -1;

	memset(&k, 0, sizeof(k));
	if (!kcrypt_supported(enctype) || key == NULL || keylen != want)
		goto cleanup;
	if ((kdf = EVP_KDF_fetch(NULL, "KRB5KDF", NULL)) == NULL ||
	    (kx = EVP_KDF_CTX_new(kdf)) == NULL)
		goto cleanup;
	if (dk(kx, cipher, key, keylen, usage, 0xAA, k.ke) != 0 ||
	    dk(kx, cipher, key, keylen, usage, 0x55, k.ki) != 0)
		goto cleanup;
	k.len = keylen;
	ret = 0;

cleanup:
	EVP_KDF_CTX_free(kx);		/* clears its copy of the key */
	EVP_KDF_free(kdf);
	*out = k;			/* all zero on failure */
	OPENSSL_cleanse(&k, sizeof(k));
	return ret;
}

/* A key's own HMAC context keyed with ki (len bytes), which it was made
 * of: the copy tells whether the key's Ki is still that one. */
struct kcrypt_mac {
	EVP_MAC_CTX *ctx;
	size_t len;
	unsigned char ki[KCRYPT_KEY_MAX];
};

static void
mac_free(struct kcrypt_mac *m)
{
	if (m == NULL)
		return;
	EVP_MAC_CTX_free(m->ctx);	/* clears its keyed state */
	OPENSSL_cleanse(m, sizeof(*m));
	free(m);
}

int
kcrypt_key_keep_mac(struct kcrypt_key *k)
{
	struct kcrypt_mac *m = NULL;
	struct tctx *t;

	if (k == NULL || (k->len != 16 && k->len != 32) || k->mac != NULL ||
	    (t = tctx_get()) == NULL || (m = calloc(1, sizeof(*m))) == NULL)
		return -1;
	/* the thread's context has SHA-1 set: a copy keeps it */
	if ((m->ctx = EVP_MAC_CTX_dup(t->hmac)) == NULL ||
	    EVP_MAC_init(m->ctx, k->ki, k->len, NULL) != 1) {
		mac_free(m);
		return -1;
	}
	m->len = k->len;
	memcpy(m->ki, k->ki, k->len);
	k->mac = m;			/* k's, freed by kcrypt_key_clear */
	return 0;
}

/* HMAC-SHA1(ki, in[0..n)) into mac (SHA1_LEN bytes): on k's kept context
 * when it is keyed with k's Ki (EVP_MAC_init without a key starts again
 * from the keyed state), else on the thread's, keyed now. */
static int
hmac_sha1(struct tctx *t, const struct kcrypt_key *k, const unsigned char *in, size_t n,
    unsigned char mac[SHA1_LEN])
{
	const struct kcrypt_mac *m = k->mac;
	EVP_MAC_CTX *c = t->hmac;
	size_t len = 0;

	if (m != NULL && m->len == k->len && CRYPTO_memcmp(m->ki, k->ki, k->len) == 0) {
		c = m->ctx;
		if (EVP_MAC_init(c, NULL, 0, NULL) != 1)
			return -1;
	} else if (EVP_MAC_init(c, k->ki, k->len, NULL) != 1) {
		return -1;
	}
	if (EVP_MAC_update(c, in, n) != 1 || EVP_MAC_final(c, mac, &len, SHA1_LEN) != 1 ||
	    len != SHA1_LEN)
		return -1;
	return 0;
}

/* One AES-CBC-CTS pass (IV 0) of in[0..n) into out, enc 1 or 0. */
static int
cts(struct tctx *t, const struct kcrypt_key *k, int enc, const unsigned char *in, size_t n,
    unsigned char *out)
{
	EVP_CIPHER_CTX *c;
	int olen = 0;

	if ((k->len != 16 && k->len != 32) || n < 16 || n > INT32_MAX)
		return -1;
	c = t->aes[k->len == 32];
	if (EVP_CipherInit_ex2(c, NULL, k->ke, t->iv_reset ? NULL : zero_iv, enc, NULL) != 1 ||
	    EVP_CipherUpdate(c, out, &olen, in, (int)n) != 1 || (size_t)olen != n)
		return -1;
	return 0;
}

int
kcrypt_encrypt(const struct kcrypt_key *k, const unsigned char *in, size_t n,
    unsigned char *out)
{
	unsigned char mac[SHA1_LEN];
	struct tctx *t;
	int ret = -1;

	if (k == NULL || in == NULL || out == NULL || n < KCRYPT_CONF || (t = tctx_get()) == NULL)
		return -1;
	if (hmac_sha1(t, k, in, n, mac) != 0 || cts(t, k, 1, in, n, out) != 0)
		goto cleanup;
	memcpy(out + n, mac, KCRYPT_MAC);
	ret = 0;

cleanup:
	OPENSSL_cleanse(mac, sizeof(mac));
	return ret;
}

int
kcrypt_decrypt(const struct kcrypt_key *k, const unsigned char *in, size_t n,
    unsigned char *out)
{
	unsigned char mac[SHA1_LEN];
	struct tctx *t;
	size_t plen;
	int ret = -1;

	if (k == NULL || in == NULL || out == NULL || n < KCRYPT_CONF + KCRYPT_MAC)
		return -1;
	plen = n - KCRYPT_MAC;
	if ((t = tctx_get()) == NULL)
		goto cleanup;
	if (cts(t, k, 0, in, plen, out) != 0 || hmac_sha1(t, k, out, plen, mac) != 0)
		goto cleanup;
	if (CRYPTO_memcmp(mac, in + plen, KCRYPT_MAC) != 0)
		goto cleanup;
	ret = 0;

cleanup:
	if (ret != 0)
		OPENSSL_cleanse(out, plen);
	OPENSSL_cleanse(mac, sizeof(mac));
	return ret;
}

void
kcrypt_key_clear(struct kcrypt_key *k)
{
	if (k == NULL)
		return;
	mac_free(k->mac);
	OPENSSL_cleanse(k, sizeof(*k));
}
