/*
 * apreq.c — the AP-REQ of a GSS krb5 initial token on a cached ticket and
 * the check of its AP-REP, with our own DER; see apreq.h for what is
 * built, what is decided about authorization data, and who owns the keys.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <krb5.h>
#include <openssl/rand.h>

#include "apreq.h"
#include "kcrypt.h"

#define CKSUMTYPE_GSS		0x8003	/* RFC 4121 4.1.1 */
#define KERB_AP_OPTIONS_CBT	0x4000u	/* [MS-KILE] 2.2.11, little-endian in ad-data */
#define AP_OPTS_WIRE		0xfffffff0u	/* MIT's internal option bits stay off the wire */

/* DER tags (RFC 4120 5.2 ff.) */
#define T_INT		0x02
#define T_BITS		0x03
#define T_OCTETS	0x04
#define T_SEQ		0x30
#define T_GENTIME	0x18
#define T_GENSTR	0x1b
#define T_CTX(n)	(0xa0 | (n))
#define T_AP_REQ	0x6e		/* [APPLICATION 14] */
#define T_AP_REP	0x6f		/* [APPLICATION 15] */
#define T_AUTHENT	0x62		/* [APPLICATION 2] */
#define T_ENC_REP_PART	0x7b		/* [APPLICATION 27] */

/* A ticket's session key, shared by the ticket and the replies kept for
 * its tokens (a reply may outlive its ticket): counted references, one
 * thread's (apreq.h, Threads). For aes*-cts-hmac-sha1-96 the usage keys
 * of usages 11 and 12 are derived once and kcrypt does the work; for any
 * other enctype, or when OpenSSL cannot (kcrypt_derive failed), libkrb5
 * does it on a krb5_key, which caches its derived keys. */
struct apreq_key {
	unsigned refs;
	krb5_enctype enctype;
	krb5_key k5;			/* NULL when fast */
	int fast;
	struct kcrypt_key auth;		/* usage 11: the authenticator */
	struct kcrypt_key rep;		/* usage 12: the AP-REP's enc-part */
};

struct apreq_ticket {
	struct apreq_key *key;		/* a reference */
	krb5_enctype enctype;
	size_t keybytes, keylength;	/* random bytes for a subkey, its length */
	uint64_t end_ms;
	size_t ticket_len, client_len;
	unsigned char *client;		/* [1] crealm [2] cname, after the ticket */
	unsigned char ticket[];		/* the Ticket's DER */
};

/* ---- random bytes ------------------------------------------------------------------ */

/* The subkeys' and sequence numbers' random bytes come from OpenSSL's
 * private DRBG RND_POOL at a time instead of one RAND_priv_bytes call per
 * token: a call costs about a microsecond whatever its size (the DRBG's
 * lock, fork check, parameter look-ups and its CTR-DRBG update with an AES
 * key schedule: 13 % of kcd's CPU per warm token), 36 bytes cost
 * nanoseconds. Every byte is still the DRBG's, used once and zeroed as it
 * is taken; bytes not yet taken are no more exposed in memory than the
 * DRBG state that would produce them. One pool per thread (a ticket and
 * its replies belong to one thread). A fork empties the child's pool
 * (pthread_atfork), so a child never uses its parent's bytes; OpenSSL
 * reseeds its own DRBG in the child likewise. */
#define RND_POOL	1024

struct rnd_pool {
	unsigned char b[RND_POOL];
	size_t left;			/* b[RND_POOL - left ..) unused */
	unsigned gen;			/* fork_gen when filled */
};

static _Thread_local struct rnd_pool rnd_pool;
static atomic_uint fork_gen = 1;	/* 0 in a fresh pool: never current */
static pthread_once_t rnd_once = PTHREAD_ONCE_INIT;

static void
rnd_forked(void)
{
	atomic_fetch_add(&fork_gen, 1);
}

static void
rnd_init(void)
{
	(void)pthread_atfork(NULL, NULL, rnd_forked);
}

/* n random bytes (n <= RND_POOL) into out: 0, or -1 when the DRBG fails. */
static int
rnd_bytes(unsigned char *out, size_t n)
{
	struct rnd_pool *p = &rnd_pool;
	unsigned gen;

	(void)pthread_once(&rnd_once, rnd_init);
	gen = atomic_load(&fork_gen);
	if (n > RND_POOL)
		return -1;
	if (p->gen != gen || p->left < n) {
		explicit_bzero(p->b, sizeof(p->b));
		p->left = 0;
		if (RAND_priv_bytes(p->b, (int)sizeof(p->b)) != 1)
			return -1;
		p->left = sizeof(p->b);
		p->gen = gen;
	}
	memcpy(out, p->b + (sizeof(p->b) - p->left), n);
	explicit_bzero(p->b + (sizeof(p->b) - p->left), n);
	p->left -= n;
	return 0;
}

/* ---- DER writing ------------------------------------------------------------------ */

void
apreq_der_init(struct apreq_der *w, unsigned char *buf, size_t cap)
{
	w->buf = buf;
	w->cap = cap;
	w->pos = cap;
	w->overflow = 0;
}

size_t
apreq_der_mark(const struct apreq_der *w)
{
	return w->pos;
}

unsigned char *
apreq_der_reserve(struct apreq_der *w, size_t n)
{
	if (w->overflow || n > w->pos) {
		w->overflow = 1;
		return NULL;
	}
	w->pos -= n;
	return w->buf + w->pos;
}

void
apreq_der_bytes(struct apreq_der *w, const void *p, size_t n)
{
	unsigned char *d = apreq_der_reserve(w, n);

	if (d != NULL && n > 0)
		memcpy(d, p, n);
}

static void
hdr(struct apreq_der *w, unsigned char tag, size_t len)
{
	size_t k = len < 0x80 ? 0 : len <= 0xff ? 1 : len <= 0xffff ? 2 : len <= 0xffffff ? 3 : 4;
	unsigned char *h;

	if (len > 0xffffffffu || (h = apreq_der_reserve(w, 2 + k)) == NULL) {
		w->overflow = 1;
		return;
	}
	h[0] = tag;
	if (k == 0) {
		h[1] = (unsigned char)len;
		return;
	}
	h[1] = (unsigned char)(0x80 | k);
	for (size_t i = 0; i < k; i++)
		h[2 + i] = (unsigned char)(len >> (8 * (k - 1 - i)));
}

void
apreq_der_wrap(struct apreq_der *w, unsigned char tag, size_t mark)
{
	if (w->overflow || mark < w->pos || mark > w->cap) {
		w->overflow = 1;
		return;
	}
	hdr(w, tag, mark - w->pos);
}

void
apreq_der_tlv(struct apreq_der *w, unsigned char tag, const void *p, size_t n)
{
	apreq_der_bytes(w, p, n);
	hdr(w, tag, n);
}

void
apreq_der_int(struct apreq_der *w, int64_t v)
{
	unsigned char b[8];
	size_t n = 8;
	uint64_t u = (uint64_t)v;

	for (int i = 7; i >= 0; i--) {
		b[i] = (unsigned char)u;
		u >>= 8;
	}
	/* drop leading bytes that only repeat the sign of the next */
	while (n > 1 && ((b[8 - n] == 0x00 && !(b[9 - n] & 0x80)) ||
	    (b[8 - n] == 0xff && (b[9 - n] & 0x80))))
		n--;
	apreq_der_tlv(w, T_INT, b + 8 - n, n);
}

const unsigned char *
apreq_der_result(const struct apreq_der *w, size_t *len)
{
	if (w->overflow)
		return NULL;
	*len = w->cap - w->pos;
	return w->buf + w->pos;
}

/* [tag] INTEGER v */
static void
ctx_int(struct apreq_der *w, unsigned n, int64_t v)
{
	size_t m = apreq_der_mark(w);

	apreq_der_int(w, v);
	apreq_der_wrap(w, T_CTX(n), m);
}

/* ---- KerberosTime ----------------------------------------------------------------- */

/* Days since 1970-01-01 of a proleptic Gregorian date, and back
 * (H. Hinnant's algorithms, valid far beyond the years used here). */
static int64_t
days_from_civil(int64_t y, unsigned m, unsigned d)
{
	int64_t era;
	unsigned yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = (unsigned)(y - era * 400);
	doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t)doe - 719468;
}

static void
civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
	int64_t era;
	unsigned doe, yoe, doy, mp;

	z += 719468;
	era = (z >= 0 ? z : z - 146096) / 146097;
	doe = (unsigned)(z - era * 146097);
	yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	mp = (5 * doy + 2) / 153;
	*d = doy - (153 * mp + 2) / 5 + 1;
	*m = mp < 10 ? mp + 3 : mp - 9;
	*y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static void
put_digits(char *p, unsigned v, unsigned n)
{
	while (n-- > 0) {
		p[n] = (char)('0' + v % 10);
		v /= 10;
	}
}

void
apreq_time_format(uint32_t unix_s, char out[APREQ_TIME_LEN])
{
	int64_t y;
	unsigned m, d, sod = unix_s % 86400;

	civil_from_days(unix_s / 86400, &y, &m, &d);
	put_digits(out, (unsigned)y, 4);
	put_digits(out + 4, m, 2);
	put_digits(out + 6, d, 2);
	put_digits(out + 8, sod / 3600, 2);
	put_digits(out + 10, sod / 60 % 60, 2);
	put_digits(out + 12, sod % 60, 2);
	out[14] = 'Z';
}

static int
get_digits(const unsigned char *p, unsigned n, unsigned *v)
{
	*v = 0;
	for (unsigned i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return -1;
		*v = *v * 10 + (unsigned)(p[i] - '0');
	}
	return 0;
}

int
apreq_time_parse(const unsigned char *s, size_t len, int64_t *unix_s)
{
	static const unsigned char mdays[12] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	unsigned y, mo, d, h, mi, se;

	if (len != APREQ_TIME_LEN || s[14] != 'Z' || get_digits(s, 4, &y) != 0 ||
	    get_digits(s + 4, 2, &mo) != 0 || get_digits(s + 6, 2, &d) != 0 ||
	    get_digits(s + 8, 2, &h) != 0 || get_digits(s + 10, 2, &mi) != 0 ||
	    get_digits(s + 12, 2, &se) != 0)
		return -1;
	if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 || mi > 59 || se > 59)
		return -1;
	if (mo == 2 && d == 29 && !(y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)))
		return -1;
	*unix_s = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se;
	return 0;
}

/* ---- DER reading (strict: the AP-REP comes from the backend) ---------------------------- */

/* The TLV at *p with tag `tag` (one byte), definite length in its
 * shortest form, at most 4 length bytes, within end; advances *p past
 * it. Returns 0, or -1 with *cause. */
static int
get_tlv(const unsigned char **p, const unsigned char *end, unsigned char tag,
    const unsigned char **val, size_t *vlen, const char **cause)
{
	const unsigned char *q = *p;
	size_t n;

	if (q >= end || end - q < 2) {
		*cause = "truncated (a field's header runs past the end)";
		return -1;
	}
	if (*q != tag) {
		*cause = "unexpected tag (not the field RFC 4120 puts there)";
		return -1;
	}
	q++;
	if (*q < 0x80) {
		n = *q++;
	} else {
		unsigned k = *q++ & 0x7fu;
		if (k == 0) {
			*cause = "indefinite length (not DER)";
			return -1;
		}
		if (k > 4) {
			*cause = "length of more than 4 bytes";
			return -1;
		}
		if ((size_t)(end - q) < k) {
			*cause = "truncated (a length runs past the end)";
			return -1;
		}
		if (q[0] == 0) {
			*cause = "length with a leading zero byte (not DER)";
			return -1;
		}
		for (n = 0; k > 0; k--)
			n = n << 8 | *q++;
		if (n < 0x80) {
			*cause = "long-form length below 128 (not DER)";
			return -1;
		}
	}
	if ((size_t)(end - q) < n) {
		*cause = "a length past the end of the data";
		return -1;
	}
	*val = q;
	*vlen = n;
	*p = q + n;
	return 0;
}

/* [n] { INTEGER } with a value of at most 5 bytes (UInt32 with its
 * leading zero), shortest form. */
static int
get_ctx_int(const unsigned char **p, const unsigned char *end, unsigned n, int64_t *v,
    const char **cause)
{
	const unsigned char *e, *q, *iv;
	size_t elen, ilen;
	int64_t x;

	if (get_tlv(p, end, T_CTX(n), &e, &elen, cause) != 0)
		return -1;
	q = e;
	if (get_tlv(&q, e + elen, T_INT, &iv, &ilen, cause) != 0)
		return -1;
	if (q != e + elen) {
		*cause = "bytes after an INTEGER inside its tag";
		return -1;
	}
	if (ilen == 0 || ilen > 5) {
		*cause = "INTEGER of 0 or more than 5 bytes";
		return -1;
	}
	if (ilen > 1 && ((iv[0] == 0x00 && !(iv[1] & 0x80)) || (iv[0] == 0xff && (iv[1] & 0x80)))) {
		*cause = "INTEGER not in its shortest form (not DER)";
		return -1;
	}
	x = (iv[0] & 0x80) ? -1 : 0;
	for (size_t i = 0; i < ilen; i++)
		x = (int64_t)((uint64_t)x << 8 | iv[i]);
	*v = x;
	return 0;
}

/* in..in+len is exactly [tag] { SEQUENCE { ... } }, nothing after either:
 * *v, *vlen are the SEQUENCE's contents; after and after_seq are the
 * causes for bytes left over after the outer and the inner one. */
static int
get_wrapped_seq(const unsigned char *in, size_t len, unsigned char tag, const char *after,
    const char *after_seq, const unsigned char **v, size_t *vlen, const char **cause)
{
	const unsigned char *p = in, *end = in + len, *w;
	size_t wlen;

	if (get_tlv(&p, end, tag, &w, &wlen, cause) != 0)
		return -1;
	if (p != end) {
		*cause = after;
		return -1;
	}
	p = w;
	if (get_tlv(&p, w + wlen, T_SEQ, v, vlen, cause) != 0)
		return -1;
	if (p != end) {
		*cause = after_seq;
		return -1;
	}
	return 0;
}

static int
is_ctx(const unsigned char *p, const unsigned char *end, unsigned n)
{
	return p < end && *p == T_CTX(n);
}

int
apreq_parse_rep(const unsigned char *in, size_t len, struct apreq_enc_part *out,
    const char **cause)
{
	const unsigned char *p = in, *end = in + len, *v, *e, *ee, *c;
	size_t vlen, elen, clen;
	int64_t x, etype, kvno = 0;
	int has_kvno = 0;

	if (in == NULL || len == 0) {
		*cause = "empty";
		return -1;
	}
	if (in[0] != T_AP_REP) {
		*cause = "not an AP-REP (its first tag is not [APPLICATION 15])";
		return -1;
	}
	if (get_wrapped_seq(in, len, T_AP_REP, "bytes after the AP-REP",
	    "bytes after the AP-REP's SEQUENCE", &v, &vlen, cause) != 0)
		return -1;
	p = v;
	end = v + vlen;
	if (get_ctx_int(&p, end, 0, &x, cause) != 0)
		return -1;
	if (x != 5) {
		*cause = "pvno is not 5";
		return -1;
	}
	if (get_ctx_int(&p, end, 1, &x, cause) != 0)
		return -1;
	if (x != 15) {
		*cause = "msg-type is not 15 (KRB_AP_REP)";
		return -1;
	}
	if (get_tlv(&p, end, T_CTX(2), &e, &elen, cause) != 0)
		return -1;
	if (p != end) {
		*cause = "fields after enc-part in the AP-REP";
		return -1;
	}
	/* EncryptedData { etype [0] Int32, kvno [1] UInt32 OPTIONAL, cipher [2] OCTET STRING } */
	p = e;
	if (get_tlv(&p, e + elen, T_SEQ, &e, &elen, cause) != 0)
		return -1;
	if (p != e + elen) {
		*cause = "bytes after enc-part's EncryptedData";
		return -1;
	}
	p = e;
	ee = e + elen;
	if (get_ctx_int(&p, ee, 0, &etype, cause) != 0)
		return -1;
	if (etype < INT32_MIN || etype > INT32_MAX) {
		*cause = "etype out of the Int32 range";
		return -1;
	}
	if (is_ctx(p, ee, 1)) {
		if (get_ctx_int(&p, ee, 1, &kvno, cause) != 0)
			return -1;
		if (kvno < 0 || kvno > UINT32_MAX) {
			*cause = "kvno out of the UInt32 range";
			return -1;
		}
		has_kvno = 1;
	}
	if (get_tlv(&p, ee, T_CTX(2), &e, &elen, cause) != 0)
		return -1;
	if (p != ee) {
		*cause = "fields after cipher in the EncryptedData";
		return -1;
	}
	p = e;
	if (get_tlv(&p, e + elen, T_OCTETS, &c, &clen, cause) != 0)
		return -1;
	if (p != e + elen) {
		*cause = "bytes after the cipher's OCTET STRING";
		return -1;
	}
	if (clen == 0) {
		*cause = "empty cipher";
		return -1;
	}
	out->etype = (krb5_enctype)etype;
	out->has_kvno = has_kvno;
	out->kvno = (uint32_t)kvno;
	out->cipher = c;
	out->cipher_len = clen;
	return 0;
}

int
apreq_parse_enc_rep_part(const unsigned char *in, size_t len, int64_t *ctime,
    int32_t *cusec, const char **cause)
{
	const unsigned char *p = in, *end = in + len, *v, *e, *t;
	size_t vlen, elen, tlen;
	int64_t usec, x, when;

	if (in == NULL || len == 0) {
		*cause = "empty EncAPRepPart";
		return -1;
	}
	if (get_wrapped_seq(in, len, T_ENC_REP_PART, "bytes after the EncAPRepPart",
	    "bytes after the EncAPRepPart's SEQUENCE", &v, &vlen, cause) != 0)
		return -1;
	p = v;
	end = v + vlen;
	/* ctime [0] KerberosTime */
	if (get_tlv(&p, end, T_CTX(0), &e, &elen, cause) != 0)
		return -1;
	t = e;
	if (get_tlv(&t, e + elen, T_GENTIME, &v, &tlen, cause) != 0)
		return -1;
	if (t != e + elen) {
		*cause = "bytes after ctime inside its tag";
		return -1;
	}
	if (apreq_time_parse(v, tlen, &when) != 0) {
		*cause = "ctime is not a KerberosTime (YYYYMMDDHHMMSSZ)";
		return -1;
	}
	/* cusec [1] Microseconds */
	if (get_ctx_int(&p, end, 1, &usec, cause) != 0)
		return -1;
	if (usec < 0 || usec > 999999) {
		*cause = "cusec out of 0..999999";
		return -1;
	}
	/* subkey [2] EncryptionKey OPTIONAL: { keytype [0] Int32, keyvalue [1] OCTET STRING } */
	if (is_ctx(p, end, 2)) {
		const unsigned char *k, *ke, *kv, *q;
		size_t klen, kvlen;
		if (get_tlv(&p, end, T_CTX(2), &e, &elen, cause) != 0)
			return -1;
		q = e;
		if (get_tlv(&q, e + elen, T_SEQ, &k, &klen, cause) != 0)
			return -1;
		if (q != e + elen) {
			*cause = "bytes after the subkey inside its tag";
			return -1;
		}
		q = k;
		ke = k + klen;
		if (get_ctx_int(&q, ke, 0, &x, cause) != 0)
			return -1;
		if (get_tlv(&q, ke, T_CTX(1), &kv, &kvlen, cause) != 0)
			return -1;
		if (q != ke) {
			*cause = "fields after keyvalue in the subkey";
			return -1;
		}
		q = kv;
		if (get_tlv(&q, kv + kvlen, T_OCTETS, &k, &klen, cause) != 0)
			return -1;
		if (q != kv + kvlen) {
			*cause = "bytes after the subkey's OCTET STRING";
			return -1;
		}
	}
	/* seq-number [3] UInt32 OPTIONAL */
	if (is_ctx(p, end, 3)) {
		if (get_ctx_int(&p, end, 3, &x, cause) != 0)
			return -1;
		if (x < 0 || x > UINT32_MAX) {
			*cause = "seq-number out of the UInt32 range";
			return -1;
		}
	}
	if (p != end) {
		*cause = "unknown or misplaced fields in the EncAPRepPart";
		return -1;
	}
	*ctime = when;
	*cusec = (int32_t)usec;
	return 0;
}

/* ---- the ticket --------------------------------------------------------------------- */

/* [1] crealm Realm, [2] cname PrincipalName { name-type [0] Int32,
 * name-string [1] SEQUENCE OF KerberosString }, as the authenticator and
 * MIT write them (GeneralString: the bytes as they are). */
static void
put_client(struct apreq_der *w, krb5_const_principal p)
{
	size_t m2 = apreq_der_mark(w), m, ms;

	ms = apreq_der_mark(w);
	for (krb5_int32 i = p->length; i > 0; i--)
		apreq_der_tlv(w, T_GENSTR, p->data[i - 1].data, p->data[i - 1].length);
	apreq_der_wrap(w, T_SEQ, ms);
	apreq_der_wrap(w, T_CTX(1), ms);
	ctx_int(w, 0, p->type);
	apreq_der_wrap(w, T_SEQ, m2);
	apreq_der_wrap(w, T_CTX(2), m2);
	m = apreq_der_mark(w);
	apreq_der_tlv(w, T_GENSTR, p->realm.data, p->realm.length);
	apreq_der_wrap(w, T_CTX(1), m);
}

/* The session key kb as a struct apreq_key with one reference, the
 * caller's: 0 or a krb5 error. */
static krb5_error_code
key_new(krb5_context kc, const krb5_keyblock *kb, struct apreq_key **out)
{
	struct apreq_key *k;
	krb5_error_code code = 0;

	if ((k = calloc(1, sizeof(*k))) == NULL)
		return ENOMEM;
	k->refs = 1;
	k->enctype = kb->enctype;
	/* kcrypt_derive refuses an enctype that is not kcrypt's */
	k->fast = kcrypt_derive(kb->enctype, kb->contents, kb->length,
	    KRB5_KEYUSAGE_AP_REQ_AUTH, &k->auth) == 0 &&
	    kcrypt_derive(kb->enctype, kb->contents, kb->length,
	    KRB5_KEYUSAGE_AP_REP_ENCPART, &k->rep) == 0;
	if (k->fast)
		(void)kcrypt_key_keep_mac(&k->auth);	/* one per token: keyed once (or per call) */
	if (!k->fast) {
		kcrypt_key_clear(&k->auth);	/* one derived and not the other */
		if ((code = krb5_k_create_key(kc, kb, &k->k5)) != 0) {
			explicit_bzero(k, sizeof(*k));
			free(k);
			return code;
		}
	}
	*out = k;
	return 0;
}

static struct apreq_key *
key_ref(struct apreq_key *k)
{
	k->refs++;
	return k;
}

static void
key_unref(krb5_context kc, struct apreq_key *k)
{
	if (k == NULL || --k->refs > 0)
		return;
	krb5_k_free_key(kc, k->k5);
	kcrypt_key_clear(&k->auth);	/* and its kept MAC context */
	kcrypt_key_clear(&k->rep);
	explicit_bzero(k, sizeof(*k));	/* the usage keys */
	free(k);
}

krb5_error_code
apreq_ticket_new(krb5_context kc, const krb5_creds *c, struct apreq_ticket **out)
{
	struct apreq_ticket *t = NULL;
	struct apreq_der w;
	unsigned char *cbuf = NULL;
	const unsigned char *cder;
	size_t keybytes = 0, keylength = 0, ccap, clen = 0;
	krb5_error_code code;

	if (c == NULL || c->ticket.length == 0 || c->ticket.data == NULL || c->client == NULL)
		return KRB5_NO_TKT_SUPPLIED;
	if (c->authdata != NULL && c->authdata[0] != NULL)
		return KRB5_PROG_ATYPE_NOSUPP;
	if ((code = krb5_c_keylengths(kc, c->keyblock.enctype, &keybytes, &keylength)) != 0)
		return code;
	if (keylength == 0 || keylength > APREQ_KEY_MAX || keybytes == 0 ||
	    keybytes > APREQ_KEY_MAX)
		return KRB5_PROG_ETYPE_NOSUPP;
	/* each component: its TLV (<= 6 + n), the fixed parts well within 64 */
	ccap = 64 + c->client->realm.length;
	for (krb5_int32 i = 0; i < c->client->length; i++)
		ccap += 6 + c->client->data[i].length;
	if (ccap > APREQ_CLIENT_MAX + 64)
		return KRB5KRB_ERR_FIELD_TOOLONG;
	if ((cbuf = malloc(ccap)) == NULL)
		return ENOMEM;
	apreq_der_init(&w, cbuf, ccap);
	put_client(&w, c->client);
	if ((cder = apreq_der_result(&w, &clen)) == NULL || clen > APREQ_CLIENT_MAX) {
		code = KRB5KRB_ERR_FIELD_TOOLONG;
		goto cleanup;
	}
	if ((t = calloc(1, sizeof(*t) + c->ticket.length + clen)) == NULL) {
		code = ENOMEM;
		goto cleanup;
	}
	if ((code = key_new(kc, &c->keyblock, &t->key)) != 0)
		goto cleanup;
	t->enctype = c->keyblock.enctype;
	t->keybytes = keybytes;
	t->keylength = keylength;
	t->end_ms = (uint64_t)(uint32_t)c->times.endtime * 1000;
	t->ticket_len = c->ticket.length;
	memcpy(t->ticket, c->ticket.data, c->ticket.length);
	t->client = t->ticket + t->ticket_len;
	t->client_len = clen;
	memcpy(t->client, cder, clen);
	*out = t;			/* to the caller */
	t = NULL;
	code = 0;

cleanup:
	free(cbuf);
	free(t);			/* key NULL unless this succeeded */
	return code;
}

void
apreq_ticket_free(krb5_context kc, struct apreq_ticket *t)
{
	if (t == NULL)
		return;
	key_unref(kc, t->key);		/* a reply's reference keeps it alive */
	free(t);
}

uint64_t
apreq_ticket_end_ms(const struct apreq_ticket *t)
{
	return t->end_ms;
}

const unsigned char *
apreq_ticket_der(const struct apreq_ticket *t, size_t *len)
{
	*len = t->ticket_len;
	return t->ticket;
}

/* The authenticator's plaintext beyond crealm + cname and the checksum
 * bytes: every other field with its headers, generously. */
#define AUTH_FIXED	(256 + APREQ_KEY_MAX)
#define CKSUM_MAX	64		/* 24 for ours (no delegation) */

size_t
apreq_max_len(const struct apreq_ticket *t)
{
	/* AP-REQ headers and options (< 40), the ticket with its [3] header
	 * (<= 6), the EncryptedData (< 20) around the cipher: the
	 * authenticator plus at most 64 bytes of confounder, checksum and
	 * padding for any enctype MIT knows */
	return t->ticket_len + t->client_len + AUTH_FIXED + CKSUM_MAX + 64 + 128;
}

/* ---- the AP-REQ ----------------------------------------------------------------------- */

/* AD-IF-RELEVANT { AD-AP-OPTIONS KERB_AP_OPTIONS_CBT }, as MIT's
 * make_ap_authdata writes it for client_aware_channel_bindings: [8]
 * AuthorizationData (SEQUENCE OF { ad-type [0], ad-data [1] }) with one
 * element of type 1 whose ad-data is the DER of an AuthorizationData with
 * one element of type 143 and 4 bytes of flags, little-endian. */
static void
put_cbt_authdata(struct apreq_der *w)
{
	static const unsigned char flags[4] = { KERB_AP_OPTIONS_CBT & 0xff,
	    KERB_AP_OPTIONS_CBT >> 8, 0, 0 };
	size_t m8 = apreq_der_mark(w), m;

	/* the inner AuthorizationData, written in place as the outer ad-data's content */
	m = apreq_der_mark(w);
	apreq_der_tlv(w, T_OCTETS, flags, sizeof(flags));
	apreq_der_wrap(w, T_CTX(1), m);
	ctx_int(w, 0, KRB5_AUTHDATA_AP_OPTIONS);
	apreq_der_wrap(w, T_SEQ, m);
	apreq_der_wrap(w, T_SEQ, m);
	apreq_der_wrap(w, T_OCTETS, m);
	apreq_der_wrap(w, T_CTX(1), m);
	ctx_int(w, 0, KRB5_AUTHDATA_IF_RELEVANT);
	apreq_der_wrap(w, T_SEQ, m8);
	apreq_der_wrap(w, T_SEQ, m8);
	apreq_der_wrap(w, T_CTX(8), m8);
}

/* The length of the authenticator's cipher (alen bytes of plaintext). */
static krb5_error_code
cipher_len(krb5_context kc, const struct apreq_key *k, size_t alen, size_t *clen)
{
	if (k->fast) {
		*clen = KCRYPT_CONF + alen + KCRYPT_MAC;
		return 0;
	}
	return krb5_c_encrypt_length(kc, k->enctype, alen, clen);
}

/* The authenticator written in a (the whole of it) encrypted under k with
 * usage 11 into cipher[0..clen), clen from cipher_len; *used: the bytes
 * written, which libkrb5 may make fewer than it said. kcrypt's confounder
 * is put in a, in front of the authenticator (plain needs no copy). */
static krb5_error_code
encrypt_auth(krb5_context kc, const struct apreq_key *k, struct apreq_der *a,
    unsigned char *cipher, size_t clen, size_t *used)
{
	const unsigned char *auth;
	unsigned char *conf;
	krb5_enc_data ed;
	krb5_data pd;
	size_t n = 0;
	krb5_error_code code;

	if (k->fast) {
		if ((conf = apreq_der_reserve(a, KCRYPT_CONF)) == NULL ||
		    apreq_der_result(a, &n) == NULL || n + KCRYPT_MAC != clen)
			return KRB5_BAD_MSIZE;
		if (rnd_bytes(conf, KCRYPT_CONF) != 0 || kcrypt_encrypt(&k->auth, conf, n, cipher) != 0)
			return KRB5_CRYPTO_INTERNAL;
		*used = clen;
		return 0;
	}
	if ((auth = apreq_der_result(a, &n)) == NULL)
		return KRB5_BAD_MSIZE;
	pd.magic = KV5M_DATA;
	pd.length = (unsigned)n;
	pd.data = (char *)auth;
	memset(&ed, 0, sizeof(ed));
	ed.ciphertext.length = (unsigned)clen;
	ed.ciphertext.data = (char *)cipher;
	if ((code = krb5_k_encrypt(kc, k->k5, KRB5_KEYUSAGE_AP_REQ_AUTH, NULL, &pd, &ed)) != 0)
		return code;
	if (ed.ciphertext.length > clen)
		return KRB5_CRYPTO_INTERNAL;
	*used = ed.ciphertext.length;
	return 0;
}

krb5_error_code
apreq_make(krb5_context kc, const struct apreq_ticket *t,
    const unsigned char *cksum, size_t cksum_len, unsigned flags,
    unsigned char *out, size_t cap, size_t *len, struct apreq_reply *rep)
{
	size_t at;

	return apreq_make_at(kc, t, cksum, cksum_len, flags, out, cap, len, &at, rep);
}

krb5_error_code
apreq_make_at(krb5_context kc, const struct apreq_ticket *t,
    const unsigned char *cksum, size_t cksum_len, unsigned flags,
    unsigned char *out, size_t cap, size_t *len, size_t *ticket_at, struct apreq_reply *rep)
{
	unsigned char plain[KCRYPT_CONF + APREQ_CLIENT_MAX + AUTH_FIXED + CKSUM_MAX];
	unsigned char rnd[APREQ_KEY_MAX + 4], subkey[APREQ_KEY_MAX];
	char when[APREQ_TIME_LEN];
	struct apreq_der a, w;
	krb5_keyblock kb;
	krb5_data rd;
	krb5_timestamp sec = 0;
	krb5_int32 usec = 0;
	unsigned char *cipher;
	size_t alen = 0, clen = 0, used = 0, mlen = 0, m, m0, mc, tpos;
	uint32_t seq, opts;
	krb5_error_code code;

	if (t == NULL || cksum == NULL || cksum_len > CKSUM_MAX || out == NULL || len == NULL ||
	    ticket_at == NULL || ((flags & APREQ_MUTUAL) && rep == NULL))
		return EINVAL;

	apreq_der_init(&a, plain, sizeof(plain));	/* (cleanup zeroes what it wrote) */
	/* the subkey and the sequence number, one draw */
	if (rnd_bytes(rnd, t->keybytes + 4) != 0) {
		code = KRB5_CRYPTO_INTERNAL;
		goto cleanup;
	}
	rd.magic = KV5M_DATA;
	rd.length = (unsigned)t->keybytes;
	rd.data = (char *)rnd;
	memset(&kb, 0, sizeof(kb));
	kb.magic = KV5M_KEYBLOCK;
	kb.enctype = t->enctype;
	kb.length = (unsigned)t->keylength;
	kb.contents = subkey;
	if ((code = krb5_c_random_to_key(kc, t->enctype, &rd, &kb)) != 0)
		goto cleanup;
	seq = ((uint32_t)rnd[t->keybytes] << 24 | (uint32_t)rnd[t->keybytes + 1] << 16 |
	    (uint32_t)rnd[t->keybytes + 2] << 8 | rnd[t->keybytes + 3]) & 0x3fffffffu;
	if (seq == 0)
		seq = 1;
	if ((code = krb5_us_timeofday(kc, &sec, &usec)) != 0)
		goto cleanup;
	apreq_time_format((uint32_t)sec, when);

	/* Authenticator ::= [APPLICATION 2] SEQUENCE, fields [8] down to [0] */
	m0 = apreq_der_mark(&a);
	if (flags & APREQ_CBT_AWARE)
		put_cbt_authdata(&a);
	ctx_int(&a, 7, seq);
	m = apreq_der_mark(&a);				/* [6] subkey EncryptionKey */
	apreq_der_tlv(&a, T_OCTETS, subkey, t->keylength);
	apreq_der_wrap(&a, T_CTX(1), m);
	ctx_int(&a, 0, t->enctype);
	apreq_der_wrap(&a, T_SEQ, m);
	apreq_der_wrap(&a, T_CTX(6), m);
	m = apreq_der_mark(&a);				/* [5] ctime */
	apreq_der_tlv(&a, T_GENTIME, when, sizeof(when));
	apreq_der_wrap(&a, T_CTX(5), m);
	ctx_int(&a, 4, usec);				/* [4] cusec */
	m = apreq_der_mark(&a);				/* [3] cksum Checksum */
	apreq_der_tlv(&a, T_OCTETS, cksum, cksum_len);
	apreq_der_wrap(&a, T_CTX(1), m);
	ctx_int(&a, 0, CKSUMTYPE_GSS);
	apreq_der_wrap(&a, T_SEQ, m);
	apreq_der_wrap(&a, T_CTX(3), m);
	apreq_der_bytes(&a, t->client, t->client_len);	/* [1] crealm, [2] cname */
	ctx_int(&a, 0, 5);				/* [0] authenticator-vno */
	apreq_der_wrap(&a, T_SEQ, m0);
	apreq_der_wrap(&a, T_AUTHENT, m0);
	if (apreq_der_result(&a, &alen) == NULL) {
		code = KRB5_BAD_MSIZE;
		goto cleanup;
	}
	if ((code = cipher_len(kc, t->key, alen, &clen)) != 0)
		goto cleanup;

	/* AP-REQ ::= [APPLICATION 14] SEQUENCE, fields [4] down to [0]; the
	 * cipher is written in place */
	apreq_der_init(&w, out, cap);
	m0 = apreq_der_mark(&w);
	mc = apreq_der_mark(&w);
	if ((cipher = apreq_der_reserve(&w, clen)) == NULL) {
		code = KRB5_BAD_MSIZE;
		goto cleanup;
	}
	if ((code = encrypt_auth(kc, t->key, &a, cipher, clen, &used)) != 0)
		goto cleanup;
	if (used < clen) {		/* keep it next to what follows */
		memmove(cipher + (clen - used), cipher, used);
		w.pos += clen - used;
	}
	apreq_der_wrap(&w, T_OCTETS, mc);
	apreq_der_wrap(&w, T_CTX(2), mc);
	ctx_int(&w, 0, t->enctype);			/* no kvno: MIT leaves it out */
	apreq_der_wrap(&w, T_SEQ, mc);
	apreq_der_wrap(&w, T_CTX(4), mc);
	m = apreq_der_mark(&w);				/* [3] ticket */
	if ((flags & APREQ_TICKET_EDGES) && t->ticket_len > 2 * APREQ_TICKET_EDGE) {
		/* its place, with only the bytes at either end written */
		unsigned char *d = apreq_der_reserve(&w, t->ticket_len);

		if (d != NULL) {
			memcpy(d, t->ticket, APREQ_TICKET_EDGE);
			memcpy(d + t->ticket_len - APREQ_TICKET_EDGE,
			    t->ticket + t->ticket_len - APREQ_TICKET_EDGE, APREQ_TICKET_EDGE);
		}
	} else {
		apreq_der_bytes(&w, t->ticket, t->ticket_len);
	}
	tpos = apreq_der_mark(&w);			/* out[tpos..): the ticket */
	apreq_der_wrap(&w, T_CTX(3), m);
	opts = (flags & APREQ_MUTUAL) ? (AP_OPTS_MUTUAL_REQUIRED & AP_OPTS_WIRE) : 0;
	{
		unsigned char bits[5] = { 0, (unsigned char)(opts >> 24), (unsigned char)(opts >> 16),
		    (unsigned char)(opts >> 8), (unsigned char)opts };
		m = apreq_der_mark(&w);			/* [2] ap-options, 32 bits */
		apreq_der_tlv(&w, T_BITS, bits, sizeof(bits));
		apreq_der_wrap(&w, T_CTX(2), m);
	}
	ctx_int(&w, 1, 14);				/* [1] msg-type KRB_AP_REQ */
	ctx_int(&w, 0, 5);				/* [0] pvno */
	apreq_der_wrap(&w, T_SEQ, m0);
	apreq_der_wrap(&w, T_AP_REQ, m0);
	/* the message is out[cap - mlen ..): the writer fills from the end */
	if (apreq_der_result(&w, &mlen) == NULL) {
		code = KRB5_BAD_MSIZE;
		goto cleanup;
	}
	*len = mlen;
	*ticket_at = tpos - (cap - mlen);
	if (flags & APREQ_MUTUAL) {
		memset(rep, 0, sizeof(*rep));
		rep->key = key_ref(t->key);	/* to the caller, with the subkey */
		rep->ctime = sec;
		rep->cusec = usec;
		rep->subkey_enctype = t->enctype;
		rep->subkey_len = (unsigned)t->keylength;
		memcpy(rep->subkey, subkey, t->keylength);
	}
	code = 0;

cleanup:
	/* the writer fills plain from its end: below a.pos nothing was
	 * written (a.pos == sizeof(plain) when nothing was) */
	explicit_bzero(plain + a.pos, sizeof(plain) - a.pos);
	explicit_bzero(rnd, sizeof(rnd));
	explicit_bzero(subkey, sizeof(subkey));
	return code;
}

/* ---- the AP-REP ------------------------------------------------------------------------ */

/* enc's cipher decrypted (usage 12) with the session key k or, k NULL,
 * with the keyblock kb, into plain[0..APREQ_REP_CIPHER_MAX): 0 with
 * *body, *len (the EncAPRepPart), or the krb5 error libkrb5 would give. */
static krb5_error_code
decrypt_rep(krb5_context kc, const struct apreq_key *k, const krb5_keyblock *kb,
    const struct apreq_enc_part *enc, unsigned char *plain, const unsigned char **body,
    size_t *len)
{
	krb5_enc_data ed;
	krb5_data pd;
	krb5_error_code code;

	if (k != NULL && k->fast) {
		if (enc->etype != ENCTYPE_UNKNOWN && enc->etype != k->enctype)
			return KRB5_BAD_ENCTYPE;
		if (enc->cipher_len < KCRYPT_CONF + KCRYPT_MAC ||
		    enc->cipher_len - KCRYPT_MAC > APREQ_REP_CIPHER_MAX)
			return KRB5_BAD_MSIZE;
		if (kcrypt_decrypt(&k->rep, enc->cipher, enc->cipher_len, plain) != 0)
			return KRB5KRB_AP_ERR_BAD_INTEGRITY;
		*body = plain + KCRYPT_CONF;
		*len = enc->cipher_len - KCRYPT_CONF - KCRYPT_MAC;
		return 0;
	}
	memset(&ed, 0, sizeof(ed));
	ed.magic = KV5M_ENC_DATA;
	ed.enctype = enc->etype;
	ed.kvno = enc->kvno;
	ed.ciphertext.length = (unsigned)enc->cipher_len;
	ed.ciphertext.data = (char *)enc->cipher;
	pd.magic = KV5M_DATA;
	pd.length = APREQ_REP_CIPHER_MAX;
	pd.data = (char *)plain;
	code = k != NULL ? krb5_k_decrypt(kc, k->k5, KRB5_KEYUSAGE_AP_REP_ENCPART, NULL, &ed, &pd) :
	    krb5_c_decrypt(kc, kb, KRB5_KEYUSAGE_AP_REP_ENCPART, NULL, &ed, &pd);
	if (code != 0)
		return code;
	*body = plain;
	*len = pd.length;
	return 0;
}

/* enc decrypted with the session key k (or, k NULL, with the keyblock kb)
 * and checked against rep: 0, or -1 with *code (0: malformed) and *cause. */
static int
try_key(krb5_context kc, const struct apreq_key *k, const krb5_keyblock *kb,
    const struct apreq_reply *rep, const struct apreq_enc_part *enc, krb5_error_code *code,
    const char **cause)
{
	unsigned char plain[APREQ_REP_CIPHER_MAX];
	const unsigned char *body = plain;
	size_t blen = 0;
	int64_t ctime = 0;
	int32_t cusec = 0;
	int ret = -1;

	if ((*code = decrypt_rep(kc, k, kb, enc, plain, &body, &blen)) != 0) {
		*cause = "its enc-part does not decrypt with our keys";
		goto cleanup;
	}
	if (apreq_parse_enc_rep_part(body, blen, &ctime, &cusec, cause) != 0)
		goto cleanup;		/* *code 0: malformed */
	if (ctime != (int64_t)(uint32_t)rep->ctime || cusec != rep->cusec) {
		*code = KRB5_MUTUAL_FAILED;
		*cause = "its ctime/cusec are not our authenticator's (the reply to another token)";
		goto cleanup;
	}
	ret = 0;

cleanup:
	explicit_bzero(plain, sizeof(plain));	/* may hold the acceptor's subkey */
	return ret;
}

int
apreq_verify_rep(krb5_context kc, const struct apreq_reply *rep,
    const unsigned char *msg, size_t len, krb5_error_code *code, const char **cause)
{
	struct apreq_enc_part enc;
	krb5_keyblock kb;
	krb5_error_code c2;
	const char *cause2;

	*code = 0;
	if (rep == NULL || rep->key == NULL) {
		*code = KRB5_MUTUAL_FAILED;
		*cause = "no kept authenticator to check the reply against";
		return -1;
	}
	if (apreq_parse_rep(msg, len, &enc, cause) != 0)
		return -1;
	if (enc.cipher_len > APREQ_REP_CIPHER_MAX) {
		*cause = "an enc-part longer than any EncAPRepPart";
		return -1;
	}
	if (try_key(kc, rep->key, NULL, rep, &enc, code, cause) == 0)
		return 0;
	/* MIT's GSS retries with the subkey (older acceptors used it) and
	 * reports the first failure when that fails too */
	memset(&kb, 0, sizeof(kb));
	kb.magic = KV5M_KEYBLOCK;
	kb.enctype = rep->subkey_enctype;
	kb.length = rep->subkey_len;
	kb.contents = (krb5_octet *)rep->subkey;
	if (rep->subkey_len > 0 && try_key(kc, NULL, &kb, rep, &enc, &c2, &cause2) == 0) {
		*code = 0;
		return 0;
	}
	return -1;
}

void
apreq_reply_clear(krb5_context kc, struct apreq_reply *rep)
{
	if (rep == NULL)
		return;
	key_unref(kc, rep->key);
	explicit_bzero(rep, sizeof(*rep));
}
