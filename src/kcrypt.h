/*
 * kcrypt.h — Kerberos encryption for the two enctypes AD and MIT use by
 * default, aes128-cts-hmac-sha1-96 (17) and aes256-cts-hmac-sha1-96 (18)
 * (RFC 3962 on RFC 3961's simplified profile), on OpenSSL's primitives:
 * KRB5KDF for the usage keys (RFC 3961 DK), AES-CBC-CTS in CS3 form
 * (RFC 3962's ciphertext stealing, the last two blocks always swapped),
 * HMAC-SHA1 truncated to 96 bits. No cipher of our own: this composes
 * them as RFC 3961 5.3 says.
 *
 * Why: kcd makes one AP-REQ per request (apreq.c). Debian's libk5crypto
 * is MIT's built-in crypto (no AES-NI) and krb5_k_encrypt asks the kernel
 * for its confounder (getrandom) each call: 2.4 us per authenticator
 * against 0.8 us here (docs/performance.md). Every other enctype, and any
 * OpenSSL without these algorithms (kcrypt_derive fails), stays with
 * libkrb5: the caller decides per key.
 *
 * Layout (RFC 3961 5.3): ciphertext = E(Ke, IV 0, confounder | plaintext)
 * | HMAC-SHA1(Ki, confounder | plaintext)[0..12). The caller supplies the
 * 16 random bytes of the confounder in front of its plaintext, so that
 * neither function copies or allocates the message.
 *
 * Keys: a struct kcrypt_key holds the two derived keys of one usage; the
 * caller zeroes it with kcrypt_key_clear. Each thread keeps one cipher and
 * one MAC context (made on its first use, freed when it exits), keyed
 * anew for each call: the last key schedule used stays in them until the
 * next call, as libkrb5's derived-key caches keep theirs. Nothing logs.
 */
#ifndef EKP_KCRYPT_H
#define EKP_KCRYPT_H

#include <stddef.h>
#include <stdint.h>

#define KCRYPT_CONF		16	/* confounder bytes, one AES block */
#define KCRYPT_MAC		12	/* HMAC-SHA1-96 */
#define KCRYPT_KEY_MAX		32

/* The usage keys Ke and Ki of one key usage, and optionally an HMAC
 * context keyed with Ki once (kcrypt_key_keep_mac), owned by the key. */
struct kcrypt_mac;
struct kcrypt_key {
	size_t len;			/* 16 or 32 */
	unsigned char ke[KCRYPT_KEY_MAX];
	unsigned char ki[KCRYPT_KEY_MAX];
	struct kcrypt_mac *mac;		/* NULL: Ki keys the thread's context per call */
};

/* Whether enctype (a krb5_enctype number) is one of ours: 17 or 18. */
int kcrypt_supported(int32_t enctype);

/* Ke = DK(key, usage | 0xAA), Ki = DK(key, usage | 0x55) of the base key
 * key[0..keylen) of enctype, into *out. Returns 0, or -1 (*out zeroed)
 * when the enctype is not ours, keylen is not its key length, or OpenSSL
 * has no KRB5KDF / AES-CBC (a FIPS-only provider set, say). */
int kcrypt_derive(int32_t enctype, const unsigned char *key, size_t keylen, uint32_t usage,
    struct kcrypt_key *out);

/* The encryption of in[0..n): the caller's KCRYPT_CONF random bytes then
 * the plaintext (n >= KCRYPT_CONF), into out, which has room for
 * n + KCRYPT_MAC bytes (and may not overlap in). Returns 0, or -1 when
 * OpenSSL fails (out then holds nothing to use). */
int kcrypt_encrypt(const struct kcrypt_key *k, const unsigned char *in, size_t n,
    unsigned char *out);

/* The decryption of in[0..n) (n >= KCRYPT_CONF + KCRYPT_MAC) into out,
 * which has room for n - KCRYPT_MAC bytes (may not overlap in): the
 * confounder, then the plaintext. Returns 0 when the checksum matches
 * (compared in constant time); -1 when n is too short, the checksum does
 * not match or OpenSSL fails: out is then zeroed. */
int kcrypt_decrypt(const struct kcrypt_key *k, const unsigned char *in, size_t n,
    unsigned char *out);

/* Keep an HMAC context keyed with k's Ki in k, for a key that encrypts
 * or decrypts many messages (apreq.c's authenticator key, one per ticket):
 * each call then starts from the keyed state instead of hashing Ki's pads
 * again (0.47 -> 0.30 us per authenticator's MAC). The context belongs to
 * k (kcrypt_key_clear frees it) and is used by whichever thread uses k, so
 * such a key must not be used by two threads at once; a k whose Ki no
 * longer matches the context's is keyed per call as before. Returns 0, or
 * -1 (k unchanged, still usable) when OpenSSL cannot. */
int kcrypt_key_keep_mac(struct kcrypt_key *k);

/* Zero k, freeing a kept MAC context. Not for a copy of a key whose
 * original is cleared too (the context has one owner). */
void kcrypt_key_clear(struct kcrypt_key *k);

#endif
