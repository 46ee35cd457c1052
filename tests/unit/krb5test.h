/*
 * krb5test.h — Kerberos fixtures for the kcd unit tests (test_s4u.c,
 * test_s4u_check.c): a keytab and a krb5.conf, no KDC. Header-only with static inline
 * functions, like certgen.h; cmocka asserts on every step.
 */
#ifndef EKP_TEST_KRB5TEST_H
#define EKP_TEST_KRB5TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <krb5.h>

/* A keytab at path with one random AES-256 key for principal (no KDC ever
 * sees it: an AS exchange with it fails as a KDC would refuse it). */
static inline void
krb5test_make_keytab(const char *path, const char *principal)
{
	krb5_context kc;
	krb5_keytab kt;
	krb5_keytab_entry e;
	char name[160];

	assert_int_equal(krb5_init_context(&kc), 0);
	snprintf(name, sizeof(name), "FILE:%s", path);
	assert_int_equal(krb5_kt_resolve(kc, name, &kt), 0);
	memset(&e, 0, sizeof(e));
	assert_int_equal(krb5_parse_name(kc, principal, &e.principal), 0);
	e.vno = 1;
	assert_int_equal(krb5_c_make_random_key(kc, ENCTYPE_AES256_CTS_HMAC_SHA1_96, &e.key), 0);
	assert_int_equal(krb5_kt_add_entry(kc, kt, &e), 0);
	krb5_free_keytab_entry_contents(kc, &e);
	krb5_kt_close(kc, kt);
	krb5_free_context(kc);
}

/* A krb5.conf at path for realm EXAMPLE.TEST with one KDC, 127.0.0.1:port,
 * and no DNS (no lookups, no canonicalisation). */
static inline void
krb5test_write_conf(const char *path, int port)
{
	FILE *f;

	assert_non_null(f = fopen(path, "w"));
	fprintf(f, "[libdefaults]\n default_realm = EXAMPLE.TEST\n dns_lookup_kdc = false\n"
	    " dns_canonicalize_hostname = false\n rdns = false\n"
	    "[realms]\n EXAMPLE.TEST = {\n  kdc = 127.0.0.1:%d\n }\n", port);
	assert_int_equal(fclose(f), 0);
}

/* A test's own directory in /tmp for its krb5.conf and the proxy's keytab
 * (the paths are set; nothing is written yet). */
struct krb5test_dir {
	char dir[64], krb5_conf[96], keytab[96];
};

static inline void
krb5test_dir_make(struct krb5test_dir *d, const char *name)
{
	snprintf(d->dir, sizeof(d->dir), "/tmp/%s.XXXXXX", name);
	assert_non_null(mkdtemp(d->dir));
	snprintf(d->krb5_conf, sizeof(d->krb5_conf), "%s/krb5.conf", d->dir);
	snprintf(d->keytab, sizeof(d->keytab), "%s/proxy.keytab", d->dir);
}

/* Removes what krb5test_dir_make made (and the two files, if written). */
static inline void
krb5test_dir_remove(const struct krb5test_dir *d)
{
	if (d->dir[0] == '\0')
		return;
	unlink(d->keytab);
	unlink(d->krb5_conf);
	rmdir(d->dir);
}

#endif
