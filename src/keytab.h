/*
 * keytab.h — what the proxy checks about its keytab ([kerberos] keytab):
 * who may read the file, and what it holds.
 *
 * The keytab holds the proxy's long-term keys: whoever reads it can act as
 * the proxy and, through protocol transition, as any user it may delegate
 * for. So:
 *   - the daemon refuses a keytab that every user may read or write, with
 *     the same message at start (`-t`, the parent) and in every new kcd
 *     (a reload, a restart): KEYTAB_REFUSE;
 *   - `doctor` also fails one owned by the [server] user (a compromised
 *     worker could then read it: privilege separation is void) and warns
 *     about group access or an owner that is neither root nor the user
 *     doctor runs as.
 * keytab_inspect() reads the entries through libkrb5 for doctor: does the
 * file hold [kerberos] principal, with which kvno and encryption types.
 */
#ifndef EKP_KEYTAB_H
#define EKP_KEYTAB_H

#include <stddef.h>

enum keytab_verdict {
	KEYTAB_OK = 0,
	KEYTAB_WARN,		/* works, deserves a look */
	KEYTAB_FAIL,		/* doctor fails it; the daemon still starts */
	KEYTAB_REFUSE,		/* the daemon will not start with it */
};

/* Mode and owner of the keytab at path (stat, following a symlink, as
 * libkrb5 opens it). worker_user: [server] user, NULL for none. msg gets
 * one sentence: on OK the facts ("mode 0600, owner root"), otherwise the
 * problem and its fix. Never fails; a file that cannot be examined is
 * KEYTAB_FAIL with the cause. */
enum keytab_verdict keytab_check_mode(const char *path, const char *worker_user,
    char *msg, size_t len);

#define KEYTAB_MAX_KEYS		16	/* of one principal and kvno, listed */
#define KEYTAB_ENCTYPE_NAME	48

struct keytab_info {
	unsigned entries;		/* every entry of the file */
	unsigned principal_entries;	/* entries of the principal, any kvno */
	unsigned kvno;			/* the principal's highest kvno */
	unsigned n_keys;		/* keys of that kvno, listed below */
	struct {
		int enctype;
		char name[KEYTAB_ENCTYPE_NAME];	/* "aes256-cts-hmac-sha1-96" */
		int strong;			/* AES or newer (not DES, RC4) */
	} keys[KEYTAB_MAX_KEYS];
	unsigned strong_keys;		/* of those, AES or newer */
	char others[512];		/* other principals, ", "-separated,
					 * truncated with "..." */
};

/* Read every entry of the keytab at path and describe principal's keys.
 * Uses libkrb5's configuration (call s4u_env_init first when [kerberos]
 * krb5_conf is set: a principal without a realm gets the default one).
 * Returns 0 with *out filled (principal_entries may be 0: the principal is
 * missing), or -1 with the cause in err (not a keytab, unreadable). */
int keytab_inspect(const char *path, const char *principal, struct keytab_info *out,
    char *err, size_t errlen);

#endif
