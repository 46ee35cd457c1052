/*
 * keytab.c — the keytab's permissions and contents; see keytab.h.
 */
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <krb5.h>

#include "keytab.h"

static void
user_name(uid_t uid, char *buf, size_t len)
{
	struct passwd *pw = getpwuid(uid);

	if (pw != NULL)
		snprintf(buf, len, "%s", pw->pw_name);
	else
		snprintf(buf, len, "uid %lu", (unsigned long)uid);
}

static void
group_name(gid_t gid, char *buf, size_t len)
{
	struct group *gr = getgrgid(gid);

	if (gr != NULL)
		snprintf(buf, len, "%s", gr->gr_name);
	else
		snprintf(buf, len, "gid %lu", (unsigned long)gid);
}

enum keytab_verdict
keytab_check_mode(const char *path, const char *worker_user, char *msg, size_t len)
{
	struct stat st;
	struct passwd *pw = NULL;
	char owner[64], group[64];
	unsigned mode;

	if (stat(path, &st) != 0) {
		snprintf(msg, len, "cannot examine keytab '%s': %s", path, strerror(errno));
		return KEYTAB_FAIL;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(msg, len, "keytab '%s' is not a regular file", path);
		return KEYTAB_FAIL;
	}
	mode = (unsigned)st.st_mode & 07777;
	user_name(st.st_uid, owner, sizeof(owner));
	group_name(st.st_gid, group, sizeof(group));

	/* The one the daemon refuses: every local account gets the keys. */
	if (mode & (S_IROTH | S_IWOTH)) {
		snprintf(msg, len, "keytab '%s' is %s by every user (mode %04o): anyone on this "
		    "host could %s; chmod 600 it (owner root)", path,
		    (mode & S_IROTH) && (mode & S_IWOTH) ? "readable and writable" :
		    (mode & S_IROTH) ? "readable" : "writable", mode,
		    (mode & S_IROTH) ? "act as the proxy and, through it, as every user it may "
		    "delegate for" : "replace the proxy's keys");
		return KEYTAB_REFUSE;
	}
	if (worker_user != NULL && *worker_user != '\0')
		pw = getpwnam(worker_user);
	if (pw != NULL && pw->pw_uid != 0 && pw->pw_uid == st.st_uid) {
		snprintf(msg, len, "keytab '%s' is owned by %s, the [server] user the workers run "
		    "as: a compromised worker could read the proxy's keys; chown root and chmod "
		    "600 it", path, owner);
		return KEYTAB_FAIL;
	}
	if (pw != NULL && pw->pw_gid != 0 && pw->pw_gid == st.st_gid && (mode & S_IRGRP)) {
		snprintf(msg, len, "keytab '%s' is readable by group %s, the group of the [server] "
		    "user the workers run as (mode %04o): a compromised worker could read the "
		    "proxy's keys; chmod 600 it", path, group, mode);
		return KEYTAB_FAIL;
	}
	if (st.st_uid != 0 && st.st_uid != geteuid()) {
		snprintf(msg, len, "keytab '%s' is owned by %s: only root (or the account kcd runs "
		    "as) should own it; chown root", path, owner);
		return KEYTAB_WARN;
	}
	if (mode & (S_IRGRP | S_IWGRP)) {
		snprintf(msg, len, "keytab '%s' is %s by group %s (mode %04o): chmod 600 it "
		    "unless that group is meant to hold the proxy's keys", path,
		    (mode & S_IRGRP) ? "readable" : "writable", group, mode);
		return KEYTAB_WARN;
	}
	snprintf(msg, len, "mode %04o, owner %s, group %s", mode, owner, group);
	return KEYTAB_OK;
}

/* AES (RFC 3962, RFC 8009) and Camellia count as strong; DES, 3DES and
 * RC4 do not (AD still offers RC4 unless msDS-SupportedEncryptionTypes
 * says otherwise). */
static int
strong_enctype(krb5_enctype e)
{
	return e == ENCTYPE_AES128_CTS_HMAC_SHA1_96 || e == ENCTYPE_AES256_CTS_HMAC_SHA1_96 ||
	    e == ENCTYPE_AES128_CTS_HMAC_SHA256_128 || e == ENCTYPE_AES256_CTS_HMAC_SHA384_192 ||
	    e == ENCTYPE_CAMELLIA128_CTS_CMAC || e == ENCTYPE_CAMELLIA256_CTS_CMAC;
}

/* Append name to the ", " list in buf unless it is there already; the
 * list ends in "..." once full. */
static void
add_other(char *buf, size_t len, const char *name)
{
	size_t have = strlen(buf), need = strlen(name) + (have ? 2 : 0);
	const char *p = buf;

	while ((p = strstr(p, name)) != NULL) {
		size_t n = strlen(name);

		if ((p == buf || p[-1] == ' ') && (p[n] == '\0' || p[n] == ','))
			return;
		p += n;
	}
	if (have >= 3 && strcmp(buf + have - 3, "...") == 0)
		return;
	if (have + need + 4 >= len) {
		if (have + 4 < len)
			strcat(buf, have ? ", ..." : "...");
		return;
	}
	if (have)
		strcat(buf, ", ");
	strcat(buf, name);
}

static void
krb5_err(krb5_context kc, krb5_error_code code, const char *what, char *err, size_t errlen)
{
	const char *m = kc != NULL ? krb5_get_error_message(kc, code) : NULL;

	snprintf(err, errlen, "%s: %s", what, m != NULL ? m : "unknown krb5 error");
	if (m != NULL)
		krb5_free_error_message(kc, m);
}

int
keytab_inspect(const char *path, const char *principal, struct keytab_info *out,
    char *err, size_t errlen)
{
	krb5_context kc = NULL;
	krb5_keytab kt = NULL;
	krb5_principal want = NULL;
	krb5_kt_cursor cur;
	krb5_keytab_entry e;
	krb5_error_code code;
	struct keytab_info info;
	char ktname[PATH_MAX + 8], what[PATH_MAX + 64];
	int started = 0, rc = -1;

	memset(&info, 0, sizeof(info));
	if ((code = krb5_init_context(&kc)) != 0) {
		snprintf(err, errlen, "cannot initialise libkrb5: %s", error_message(code));
		kc = NULL;
		goto cleanup;
	}
	if ((size_t)snprintf(ktname, sizeof(ktname), "FILE:%s", path) >= sizeof(ktname)) {
		snprintf(err, errlen, "keytab path too long");
		goto cleanup;
	}
	if ((code = krb5_kt_resolve(kc, ktname, &kt)) != 0) {
		snprintf(what, sizeof(what), "keytab %s", path);
		krb5_err(kc, code, what, err, errlen);
		kt = NULL;
		goto cleanup;
	}
	if ((code = krb5_parse_name(kc, principal, &want)) != 0) {
		snprintf(what, sizeof(what), "[kerberos] principal '%s'", principal);
		krb5_err(kc, code, what, err, errlen);
		want = NULL;
		goto cleanup;
	}
	if ((code = krb5_kt_start_seq_get(kc, kt, &cur)) != 0) {
		snprintf(what, sizeof(what), "reading keytab %s", path);
		krb5_err(kc, code, what, err, errlen);
		goto cleanup;
	}
	started = 1;
	while ((code = krb5_kt_next_entry(kc, kt, &e, &cur)) == 0) {
		info.entries++;
		if (krb5_principal_compare(kc, e.principal, want)) {
			info.principal_entries++;
			if (e.vno > info.kvno) {
				info.kvno = e.vno;
				info.n_keys = 0;
				info.strong_keys = 0;
			}
			if (e.vno == info.kvno && info.n_keys < KEYTAB_MAX_KEYS) {
				unsigned i = info.n_keys++;

				info.keys[i].enctype = e.key.enctype;
				info.keys[i].strong = strong_enctype(e.key.enctype);
				info.strong_keys += (unsigned)info.keys[i].strong;
				if (krb5_enctype_to_name(e.key.enctype, FALSE, info.keys[i].name,
				    sizeof(info.keys[i].name)) != 0)
					snprintf(info.keys[i].name, sizeof(info.keys[i].name),
					    "enctype %d", (int)e.key.enctype);
			}
		} else {
			char *name = NULL;

			if (krb5_unparse_name(kc, e.principal, &name) == 0) {
				add_other(info.others, sizeof(info.others), name);
				krb5_free_unparsed_name(kc, name);
			}
		}
		krb5_free_keytab_entry_contents(kc, &e);
	}
	if (code != KRB5_KT_END) {
		snprintf(what, sizeof(what), "reading keytab %s (entry %u)", path, info.entries + 1);
		krb5_err(kc, code, what, err, errlen);
		goto cleanup;
	}
	*out = info;
	rc = 0;
cleanup:
	if (started)
		krb5_kt_end_seq_get(kc, kt, &cur);
	if (want != NULL)
		krb5_free_principal(kc, want);
	if (kt != NULL)
		krb5_kt_close(kc, kt);
	if (kc != NULL)
		krb5_free_context(kc);
	return rc;
}
