/*
 * keytab.c: who may read the keytab (the verdicts the daemon and doctor
 * act on) and what it holds (principal, kvno, strong and weak keys), on
 * keytabs written here with libkrb5's own keytab API.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <cmocka.h>

#include <krb5.h>

#include "keytab.h"

#define PROXY	"HTTP/proxy.example.test@EXAMPLE.TEST"
#define OTHER	"HTTP/other.example.test@EXAMPLE.TEST"

struct fx {
	char dir[64];
	char path[128];
};

static int
setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	strcpy(f->dir, "/tmp/ekp-test-keytab-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/proxy.keytab", f->dir);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fx *f = *state;

	unlink(f->path);
	rmdir(f->dir);
	free(f);
	return 0;
}

/* Add one random key of enctype for principal, kvno, to the keytab. */
static void
add_key(const char *path, const char *principal, unsigned kvno, krb5_enctype enctype)
{
	krb5_context kc;
	krb5_keytab kt;
	krb5_keytab_entry e;
	char name[200];

	assert_int_equal(krb5_init_context(&kc), 0);
	snprintf(name, sizeof(name), "FILE:%s", path);
	assert_int_equal(krb5_kt_resolve(kc, name, &kt), 0);
	memset(&e, 0, sizeof(e));
	assert_int_equal(krb5_parse_name(kc, principal, &e.principal), 0);
	e.vno = kvno;
	assert_int_equal(krb5_c_make_random_key(kc, enctype, &e.key), 0);
	assert_int_equal(krb5_kt_add_entry(kc, kt, &e), 0);
	krb5_free_keyblock_contents(kc, &e.key);
	krb5_free_principal(kc, e.principal);
	krb5_kt_close(kc, kt);
	krb5_free_context(kc);
}

static void
write_file(const char *path, mode_t mode)
{
	FILE *fp = fopen(path, "w");

	assert_non_null(fp);
	fputs("x", fp);
	assert_int_equal(fclose(fp), 0);
	assert_int_equal(chmod(path, mode), 0);
}

static void
world_access_is_refused(void **state)
{
	struct fx *f = *state;
	char msg[1024];

	write_file(f->path, 0644);
	assert_int_equal(keytab_check_mode(f->path, NULL, msg, sizeof(msg)), KEYTAB_REFUSE);
	assert_non_null(strstr(msg, "is readable by every user (mode 0644)"));
	assert_non_null(strstr(msg, "chmod 600"));
	assert_non_null(strstr(msg, f->path));

	assert_int_equal(chmod(f->path, 0602), 0);
	assert_int_equal(keytab_check_mode(f->path, NULL, msg, sizeof(msg)), KEYTAB_REFUSE);
	assert_non_null(strstr(msg, "is writable by every user (mode 0602)"));
}

static void
owner_and_group_access(void **state)
{
	struct fx *f = *state;
	struct passwd *nobody = getpwnam("nobody");
	char msg[1024];

	write_file(f->path, 0600);
	assert_int_equal(keytab_check_mode(f->path, "nobody", msg, sizeof(msg)), KEYTAB_OK);
	assert_non_null(strstr(msg, "mode 0600"));

	assert_int_equal(chmod(f->path, 0640), 0);
	assert_int_equal(keytab_check_mode(f->path, "nobody", msg, sizeof(msg)), KEYTAB_WARN);
	assert_non_null(strstr(msg, "readable by group"));

	if (geteuid() != 0 || nobody == NULL)
		return;			/* chown needs root; the tests run as root */
	/* the workers' own account or group: a compromised worker reads it */
	assert_int_equal(chown(f->path, 0, nobody->pw_gid), 0);
	assert_int_equal(keytab_check_mode(f->path, "nobody", msg, sizeof(msg)), KEYTAB_FAIL);
	assert_non_null(strstr(msg, "the group of the [server] user"));
	assert_int_equal(chmod(f->path, 0600), 0);
	assert_int_equal(chown(f->path, nobody->pw_uid, 0), 0);
	assert_int_equal(keytab_check_mode(f->path, "nobody", msg, sizeof(msg)), KEYTAB_FAIL);
	assert_non_null(strstr(msg, "owned by nobody, the [server] user"));
	/* another owner that is not the workers' */
	assert_int_equal(keytab_check_mode(f->path, "root", msg, sizeof(msg)), KEYTAB_WARN);
	assert_non_null(strstr(msg, "only root"));
}

static void
missing_file_fails_with_the_cause(void **state)
{
	struct fx *f = *state;
	char msg[1024];

	assert_int_equal(keytab_check_mode(f->path, NULL, msg, sizeof(msg)), KEYTAB_FAIL);
	assert_non_null(strstr(msg, "No such file or directory"));
	assert_int_equal(keytab_check_mode(f->dir, NULL, msg, sizeof(msg)), KEYTAB_FAIL);
	assert_non_null(strstr(msg, "not a regular file"));
}

static void
inspect_lists_the_principals_newest_keys(void **state)
{
	struct fx *f = *state;
	struct keytab_info ki;
	char err[512];

	add_key(f->path, PROXY, 2, ENCTYPE_AES256_CTS_HMAC_SHA1_96);
	add_key(f->path, PROXY, 3, ENCTYPE_AES256_CTS_HMAC_SHA1_96);
	add_key(f->path, PROXY, 3, ENCTYPE_ARCFOUR_HMAC);
	add_key(f->path, OTHER, 1, ENCTYPE_AES128_CTS_HMAC_SHA1_96);
	assert_int_equal(keytab_inspect(f->path, PROXY, &ki, err, sizeof(err)), 0);
	assert_int_equal(ki.entries, 4);
	assert_int_equal(ki.principal_entries, 3);
	assert_int_equal(ki.kvno, 3);
	assert_int_equal(ki.n_keys, 2);
	assert_int_equal(ki.strong_keys, 1);
	assert_string_equal(ki.keys[0].name, "aes256-cts-hmac-sha1-96");
	assert_true(ki.keys[0].strong);
	assert_false(ki.keys[1].strong);
	assert_string_equal(ki.others, OTHER);
}

static void
inspect_weak_only_and_missing_principal(void **state)
{
	struct fx *f = *state;
	struct keytab_info ki;
	char err[512];

	add_key(f->path, PROXY, 5, ENCTYPE_ARCFOUR_HMAC);
	assert_int_equal(keytab_inspect(f->path, PROXY, &ki, err, sizeof(err)), 0);
	assert_int_equal(ki.n_keys, 1);
	assert_int_equal(ki.strong_keys, 0);

	assert_int_equal(keytab_inspect(f->path, OTHER, &ki, err, sizeof(err)), 0);
	assert_int_equal(ki.principal_entries, 0);
	assert_string_equal(ki.others, PROXY);
}

static void
inspect_refuses_what_is_not_a_keytab(void **state)
{
	struct fx *f = *state;
	struct keytab_info ki;
	char err[512];

	write_file(f->path, 0600);
	assert_int_equal(keytab_inspect(f->path, PROXY, &ki, err, sizeof(err)), -1);
	assert_non_null(strstr(err, f->path));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(world_access_is_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(owner_and_group_access, setup, teardown),
		cmocka_unit_test_setup_teardown(missing_file_fails_with_the_cause, setup, teardown),
		cmocka_unit_test_setup_teardown(inspect_lists_the_principals_newest_keys, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(inspect_weak_only_and_missing_principal, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(inspect_refuses_what_is_not_a_keytab, setup,
		    teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
