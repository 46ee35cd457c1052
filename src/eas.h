/*
 * eas.h — the Exchange ActiveSync query of a request URI (MS-ASHTTP
 * 2.2.1.1.1), decoded for the access log and for policy (SPEC §4):
 * Cmd, User, DeviceId, DeviceType. Pure functions, no I/O, no allocation.
 *
 * Two forms, told apart by syntax alone:
 *   plain   "Cmd=Sync&User=alice&DeviceId=v140Device&DeviceType=SmartPhone"
 *           (any query with '&', or with an '=' that is not trailing base64
 *           padding). Names and values are percent-decoded, '+' is a space
 *           (the way ASP.NET reads it, so we see what Exchange sees); names
 *           compare case-insensitively. A known parameter twice — "Cmd" and
 *           "cmd" included — is refused (eas_dup_param): the proxy and
 *           Exchange must not be able to read different values. Unknown
 *           parameters are skipped (and still forwarded untouched; the raw
 *           query always is).
 *   base64  "jAAJBAp2MTQwRGV2aWNlAApTbWFydFBob25l" (MS-ASHTTP
 *           2.2.1.1.1.1; percent-encoded +, / and = are accepted): protocol
 *           version (1 byte, 141 = 14.1), command code (1 byte, the table
 *           of 2.2.1.1.1.1.2), locale (2 bytes little-endian), DeviceId
 *           length (1 byte, > 0) + bytes, policy key length (0 or 4) + key
 *           (little-endian u32), DeviceType length + bytes, then command
 *           parameters as tag (1 byte), length (1 byte), value — tags of
 *           2.2.1.1.1.1.3: 0 AttachmentName, 1 CollectionId, 3 ItemId,
 *           4 LongId, 6 Occurrence, 7 Options (1 byte), 8 User; 2 and 5 are
 *           the deprecated CollectionName and ParentId. Every length is
 *           checked against the bytes left; a tag twice is refused; unknown
 *           tags are skipped; an unknown command code is not refused (cmd is
 *           then "", cmd_code says which).
 *
 * Log fields (cmd, user_log, device_id, device_type) are sanitised: bytes
 * 0x21..0x7e are kept, anything else becomes '?', at most EAS_LOG_MAX bytes
 * ("..." marks a cut). A base64 DeviceId holding any byte outside
 * 0x21..0x7e (a binary GUID) is written as upper-case hex instead.
 * eas_query.user is the decoded User value itself (no NUL, at most
 * EAS_USER_MAX bytes): it is for eas_user_matches only, never for a log.
 */
#ifndef EKP_EAS_H
#define EKP_EAS_H

#include <stddef.h>
#include <stdint.h>

#include "reason.h"

#define EAS_QUERY_MAX	4096	/* bytes of raw query considered */
#define EAS_B64_MAX	2048	/* decoded base64 bytes */
#define EAS_PARAMS_MAX	64	/* plain parameters */
#define EAS_USER_MAX	256	/* decoded User bytes */
#define EAS_LOG_MAX	64	/* a sanitised log field, without NUL */
#define EAS_CMD_MAX	24

enum eas_error {
#define EAS_ERR(id, token, text) EAS_ERR_##id,
#include "tbl/eas_errors.h"
#undef EAS_ERR
	EAS_ERR__COUNT
};

enum eas_form {
	EAS_FORM_NONE = 0,	/* empty query */
	EAS_FORM_PLAIN,
	EAS_FORM_BASE64,
};

struct eas_query {
	enum eas_form form;
	char cmd[EAS_CMD_MAX];		/* "Sync"; "" when absent or unknown */
	int cmd_code;			/* base64 command code; -1 for plain */
	int has_user;
	char user[EAS_USER_MAX + 1];	/* decoded; NOT log-safe */
	char user_log[EAS_LOG_MAX + 1];	/* sanitised */
	char device_id[EAS_LOG_MAX + 1];	/* sanitised (hex for binary) */
	char device_type[EAS_LOG_MAX + 1];	/* sanitised */
	unsigned protocol_version;	/* base64 only: 141 = 14.1; 0 otherwise */
	unsigned locale;		/* base64 only */
	int has_policy_key;		/* base64 only */
	uint32_t policy_key;
	int has_options;		/* base64 tag 7 */
	unsigned options;		/* 0x01 SaveInSent, 0x02 AcceptMultiPart */
	int save_in_sent;		/* plain SaveInSent=T or Options & 0x01 */
};

/*
 * Decode the raw query (the bytes after '?', not including it; len 0 =
 * none). Returns 0 with *q fully written, or -1 with *err set and *q
 * zeroed (form NONE). Nothing is retained.
 */
int eas_query_decode(const char *query, size_t len, struct eas_query *q,
    enum eas_error *err);

/* "eas_dup_param" / explanation; never NULL. Every error is
 * REASON_BAD_REQUEST with the token as detail. */
const char *eas_error_token(enum eas_error e);
const char *eas_error_text(enum eas_error e);

/* MS-ASHTTP command code → "Sync", ...; NULL when unknown. */
const char *eas_cmd_name(unsigned code);

/*
 * check_user_param (SPEC §4): 1 when the query's User value names the
 * mapped principal "local@REALM", else 0. User may be
 *   "alice"              → compared with the principal's local part;
 *   "alice@example.test" → the part before '@' is compared;
 *   "DOMAIN\alice"       → the part after '\' is compared.
 * Comparison is ASCII case-insensitive (AD's sAMAccountName and UPN
 * matching is); bytes >= 0x80 must be equal. The qualifier — UPN suffix,
 * e-mail domain or NetBIOS domain — is NOT compared: it cannot be derived
 * from the realm reliably (NetBIOS names are arbitrary, UPN suffixes map to
 * realms by configuration, devices often send the e-mail address), and the
 * mapped identity is bound to the certificate anyway; what the check stops
 * is a device authenticated as alice naming bob. Refused (0): empty user
 * or local part, empty qualifier ("alice@", "\alice"), more than one '@'
 * or '\', both '@' and '\', a user longer than EAS_USER_MAX.
 */
int eas_user_matches(const char *query_user, const char *principal);

#endif
