/*
 * eas.c — ActiveSync query forms; the rules are in eas.h.
 *
 * Everything is decoded into fixed buffers on the stack or in the caller's
 * struct eas_query; the result is assigned last, so a refused query leaves
 * a zeroed struct and never a half-filled one.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "codec.h"
#include "eas.h"

static const struct {
	const char *token;
	const char *text;
} errors[EAS_ERR__COUNT] = {
#define EAS_ERR(id, token, text) [EAS_ERR_##id] = { token, text },
#include "tbl/eas_errors.h"
#undef EAS_ERR
};

/* MS-ASHTTP 2.2.1.1.1.1.2; 5..8 are unassigned. Find (23) came with
 * protocol 16.1. */
static const char *const cmd_names[] = {
	[0] = "Sync", [1] = "SendMail", [2] = "SmartForward", [3] = "SmartReply",
	[4] = "GetAttachment", [9] = "FolderSync", [10] = "FolderCreate",
	[11] = "FolderDelete", [12] = "FolderUpdate", [13] = "MoveItems",
	[14] = "GetItemEstimate", [15] = "MeetingResponse", [16] = "Search",
	[17] = "Settings", [18] = "Ping", [19] = "ItemOperations",
	[20] = "Provision", [21] = "ResolveRecipients", [22] = "ValidateCert",
	[23] = "Find",
};

/* Base64 command parameter tags (2.2.1.1.1.1.3). */
enum {
	TAG_ATTACHMENT_NAME = 0, TAG_COLLECTION_ID = 1, TAG_COLLECTION_NAME = 2,
	TAG_ITEM_ID = 3, TAG_LONG_ID = 4, TAG_PARENT_ID = 5, TAG_OCCURRENCE = 6,
	TAG_OPTIONS = 7, TAG_USER = 8,
};

/* Plain parameters we know; the bit is for duplicate detection. */
enum {
	P_CMD, P_USER, P_DEVICE_ID, P_DEVICE_TYPE, P_ATTACHMENT_NAME,
	P_COLLECTION_ID, P_ITEM_ID, P_LONG_ID, P_OCCURRENCE, P_SAVE_IN_SENT,
	P__COUNT
};
#define PLAIN(name)	{ name, sizeof(name) - 1 }
static const struct {
	const char *name;
	size_t len;		/* strlen(name): compared first */
} plain_names[P__COUNT] = {
	[P_CMD] = PLAIN("Cmd"), [P_USER] = PLAIN("User"), [P_DEVICE_ID] = PLAIN("DeviceId"),
	[P_DEVICE_TYPE] = PLAIN("DeviceType"), [P_ATTACHMENT_NAME] = PLAIN("AttachmentName"),
	[P_COLLECTION_ID] = PLAIN("CollectionId"), [P_ITEM_ID] = PLAIN("ItemId"),
	[P_LONG_ID] = PLAIN("LongId"), [P_OCCURRENCE] = PLAIN("Occurrence"),
	[P_SAVE_IN_SENT] = PLAIN("SaveInSent"),
};
#undef PLAIN

const char *
eas_error_token(enum eas_error e)
{
	return ((unsigned)e < EAS_ERR__COUNT) ? errors[e].token : "eas_unknown";
}

const char *
eas_error_text(enum eas_error e)
{
	return ((unsigned)e < EAS_ERR__COUNT) ? errors[e].text : "unknown EAS query error";
}

const char *
eas_cmd_name(unsigned code)
{
	if (code >= sizeof(cmd_names) / sizeof(cmd_names[0]))
		return NULL;
	return cmd_names[code];
}

/* Log-safe copy into out[0..cap): 0x21..0x7e kept, others '?', at most
 * cap - 1 bytes with "..." marking a cut (cap >= 8). */
static void
sanitise(const unsigned char *v, size_t len, char *out, size_t cap)
{
	size_t o = 0;

	for (size_t i = 0; i < len && o + 1 < cap; i++)
		out[o++] = (v[i] >= 0x21 && v[i] <= 0x7e) ? (char)v[i] : '?';
	if (len > cap - 1)
		memcpy(out + o - 3, "...", 3);
	out[o] = '\0';
}


/* A DeviceId: as text when every byte is visible ASCII, else hex. */
static void
device_id_field(const unsigned char *v, size_t len, char *out)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0, i;

	for (i = 0; i < len; i++)
		if (v[i] < 0x21 || v[i] > 0x7e)
			break;
	if (i == len) {
		sanitise(v, len, out, EAS_LOG_MAX + 1);
		return;
	}
	for (i = 0; i < len && o + 2 <= EAS_LOG_MAX; i++) {
		out[o++] = hex[v[i] >> 4];
		out[o++] = hex[v[i] & 15];
	}
	if (i < len)
		memcpy(out + o - 3, "...", 3);
	out[o] = '\0';
}

/* ---- plain form ---------------------------------------------------------- */

/* Percent-decode s[0..len) into out (cap bytes); plus_space: '+' is a
 * space (plain form values, as ASP.NET reads them). Returns the decoded
 * length, or -1 with *err (bad escape, NUL, too long). */
static long
pct_decode(const char *s, size_t len, int plus_space, unsigned char *out, size_t cap,
    enum eas_error *err)
{
	size_t o = 0;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '%') {
			if (codec_pct_byte(s + i, len - i, &c) != 0) {
				*err = EAS_ERR_BAD_PERCENT;
				return -1;
			}
			i += 2;
		} else if (c == '+' && plus_space) {
			c = ' ';
		}
		if (c == '\0') {
			*err = EAS_ERR_NUL;
			return -1;
		}
		if (o >= cap) {
			*err = EAS_ERR_TOO_LONG;
			return -1;
		}
		out[o++] = c;
	}
	return (long)o;
}

static int
decode_plain(const char *s, size_t len, struct eas_query *q, enum eas_error *err)
{
	unsigned seen = 0, nparams = 0;
	size_t i = 0;

	while (i < len) {
		size_t start = i, eq, end;
		unsigned char name[32], val[EAS_QUERY_MAX];
		long nl, vl;
		int p = -1;
		enum eas_error ne = EAS_ERR_NONE;

		while (i < len && s[i] != '&')
			i++;
		end = i++;
		if (end == start)
			continue;	/* "a=1&&b=2" */
		if (++nparams > EAS_PARAMS_MAX) {
			*err = EAS_ERR_TOO_MANY_PARAMS;
			return -1;
		}
		for (eq = start; eq < end && s[eq] != '='; eq++)
			;
		nl = pct_decode(s + start, eq - start, 1, name, sizeof(name), &ne);
		if (nl < 0) {
			if (ne != EAS_ERR_TOO_LONG) {
				*err = ne;
				return -1;
			}
			continue;	/* a long name is no name we know */
		}
		for (int k = 0; k < P__COUNT; k++)
			if (plain_names[k].len == (size_t)nl &&
			    codec_eq_ci((const char *)name, (size_t)nl, plain_names[k].name,
			    plain_names[k].len))
				p = k;
		if (p < 0)
			continue;	/* unknown: kept out, forwarded as is */
		if (seen & (1u << p)) {
			*err = EAS_ERR_DUP_PARAM;
			return -1;
		}
		seen |= 1u << p;
		if (eq == end) {
			*err = EAS_ERR_NO_VALUE;
			return -1;
		}
		vl = pct_decode(s + eq + 1, end - eq - 1, 1, val, sizeof(val), err);
		if (vl < 0)
			return -1;
		switch (p) {
		case P_CMD:
			sanitise(val, (size_t)vl, q->cmd, sizeof(q->cmd));
			break;
		case P_USER:
			if ((size_t)vl > EAS_USER_MAX) {
				*err = EAS_ERR_TOO_LONG;
				return -1;
			}
			memcpy(q->user, val, (size_t)vl);
			q->user[vl] = '\0';
			q->has_user = 1;
			sanitise(val, (size_t)vl, q->user_log, sizeof(q->user_log));
			break;
		case P_DEVICE_ID:
			sanitise(val, (size_t)vl, q->device_id, sizeof(q->device_id));
			break;
		case P_DEVICE_TYPE:
			sanitise(val, (size_t)vl, q->device_type, sizeof(q->device_type));
			break;
		case P_SAVE_IN_SENT:
			q->save_in_sent = (vl == 1 && (val[0] == 'T' || val[0] == 't'));
			break;
		default:
			break;	/* checked for duplicates, not kept */
		}
	}
	q->form = EAS_FORM_PLAIN;
	q->cmd_code = -1;
	return 0;
}

/* ---- base64 form --------------------------------------------------------- */

static int
decode_base64(const char *s, size_t len, struct eas_query *q, enum eas_error *err)
{
	unsigned char txt[EAS_QUERY_MAX], bin[EAS_B64_MAX];
	long tl, bl;
	size_t p = 0, n, dl, pl, tl2;
	uint32_t seen = 0;

	/* '+' is base64's own here; %2B %2F %3D are accepted too */
	tl = pct_decode(s, len, 0, txt, sizeof(txt), err);
	if (tl < 0) {
		if (*err == EAS_ERR_NUL)
			*err = EAS_ERR_BAD_BASE64;
		return -1;
	}
	bl = codec_b64_decode((const char *)txt, (size_t)tl, bin, sizeof(bin));
	if (bl == -2) {
		*err = EAS_ERR_TOO_LONG;
		return -1;
	}
	if (bl < 0) {
		*err = EAS_ERR_BAD_BASE64;
		return -1;
	}
	n = (size_t)bl;

#define NEED(k) do { if (n - p < (size_t)(k)) { *err = EAS_ERR_TRUNCATED; return -1; } } while (0)
	NEED(5);
	q->protocol_version = bin[0];
	q->cmd_code = bin[1];
	q->locale = (unsigned)bin[2] | ((unsigned)bin[3] << 8);
	dl = bin[4];
	p = 5;
	if (dl == 0) {
		*err = EAS_ERR_BAD_DEVICE_ID;
		return -1;
	}
	NEED(dl);
	device_id_field(bin + p, dl, q->device_id);
	p += dl;
	NEED(1);
	pl = bin[p++];
	if (pl != 0 && pl != 4) {
		*err = EAS_ERR_BAD_POLICY_KEY;
		return -1;
	}
	NEED(pl);
	if (pl == 4) {
		q->has_policy_key = 1;
		q->policy_key = (uint32_t)bin[p] | ((uint32_t)bin[p + 1] << 8) |
		    ((uint32_t)bin[p + 2] << 16) | ((uint32_t)bin[p + 3] << 24);
		p += 4;
	}
	NEED(1);
	tl2 = bin[p++];
	NEED(tl2);
	sanitise(bin + p, tl2, q->device_type, sizeof(q->device_type));
	p += tl2;

	while (p < n) {
		unsigned tag, vlen;
		NEED(2);
		tag = bin[p];
		vlen = bin[p + 1];
		p += 2;
		NEED(vlen);
		if (tag < 32) {
			if (seen & (1u << tag)) {
				*err = EAS_ERR_DUP_PARAM;
				return -1;
			}
			seen |= 1u << tag;
		}
		if (tag == TAG_OPTIONS) {
			if (vlen != 1) {
				*err = EAS_ERR_BAD_OPTIONS;
				return -1;
			}
			q->has_options = 1;
			q->options = bin[p];
			q->save_in_sent = (bin[p] & 0x01) != 0;
		} else if (tag == TAG_USER) {
			if (memchr(bin + p, '\0', vlen) != NULL) {
				*err = EAS_ERR_NUL;
				return -1;
			}
			memcpy(q->user, bin + p, vlen);	/* vlen <= 255 < EAS_USER_MAX */
			q->user[vlen] = '\0';
			q->has_user = 1;
			sanitise(bin + p, vlen, q->user_log, sizeof(q->user_log));
		}
		p += vlen;
	}
#undef NEED
	if (eas_cmd_name(bin[1]) != NULL)
		snprintf(q->cmd, sizeof(q->cmd), "%s", eas_cmd_name(bin[1]));
	q->form = EAS_FORM_BASE64;
	return 0;
}

/* Plain when there is an '&' or an '=' that is not trailing padding. */
static int
looks_plain(const char *s, size_t len)
{
	size_t end = len;

	if (memchr(s, '&', len) != NULL)
		return 1;
	while (end > 0 && s[end - 1] == '=')
		end--;
	/* percent-encoded padding "%3D" at the end counts as padding too */
	while (end >= 3 && s[end - 3] == '%' && s[end - 2] == '3' &&
	    (s[end - 1] == 'D' || s[end - 1] == 'd'))
		end -= 3;
	return memchr(s, '=', end) != NULL;
}

int
eas_query_decode(const char *query, size_t len, struct eas_query *q, enum eas_error *err)
{
	struct eas_query r;
	enum eas_error e = EAS_ERR_NONE;
	int rc = 0;

	memset(&r, 0, sizeof(r));
	r.cmd_code = -1;
	if (len > EAS_QUERY_MAX) {
		e = EAS_ERR_TOO_LONG;
		rc = -1;
	} else if (len > 0) {
		rc = looks_plain(query, len) ? decode_plain(query, len, &r, &e)
		    : decode_base64(query, len, &r, &e);
	}
	if (rc != 0) {
		memset(&r, 0, sizeof(r));
		r.cmd_code = -1;
	}
	*q = r;
	*err = e;
	return rc;
}

/* ---- check_user_param ------------------------------------------------------ */

int
eas_user_matches(const char *query_user, const char *principal)
{
	const char *u, *at, *bs, *pat, *lp;
	size_t ul, ulen, plen;

	if (query_user == NULL || principal == NULL)
		return 0;
	ul = strnlen(query_user, EAS_USER_MAX + 1);
	if (ul == 0 || ul > EAS_USER_MAX)
		return 0;
	at = memchr(query_user, '@', ul);
	bs = memchr(query_user, '\\', ul);
	if ((at != NULL && bs != NULL) ||
	    (at != NULL && memchr(at + 1, '@', ul - (size_t)(at + 1 - query_user)) != NULL) ||
	    (bs != NULL && memchr(bs + 1, '\\', ul - (size_t)(bs + 1 - query_user)) != NULL))
		return 0;
	if (at != NULL) {
		u = query_user;
		ulen = (size_t)(at - query_user);
		if (at[1] == '\0')
			return 0;	/* "alice@" */
	} else if (bs != NULL) {
		if (bs == query_user)
			return 0;	/* "\alice" */
		u = bs + 1;
		ulen = ul - (size_t)(u - query_user);
	} else {
		u = query_user;
		ulen = ul;
	}
	if (ulen == 0)
		return 0;

	lp = principal;
	pat = strrchr(principal, '@');
	plen = pat != NULL ? (size_t)(pat - principal) : strlen(principal);
	return codec_eq_ci(u, ulen, lp, plen);
}
