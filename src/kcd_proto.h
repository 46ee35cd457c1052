/*
 * kcd_proto.h — what crosses the worker <-> kcd channel (SPEC §6).
 *
 * The message types are in tbl/ipc_msgs.h; this header fixes the payload
 * layouts (built with ipc_put_*, read with ipc_get_* from ipc.h) and the
 * error classes, so kcd.c (server side) and kcd_client.c (worker side) agree.
 *
 * TOKEN_REQ   id=N  str principal ("alice@EXAMPLE.TEST"), str spn
 *                   ("HTTP@exchange.example.test"), bytes cb (tls-server-
 *                   end-point hash, empty = no channel bindings),
 *                   u32 flags (KCD_F_*)
 * TOKEN_OK    id=N  str token (base64, for "Authorization: Negotiate"),
 *                   u32 ctx id (0 when no context is kept),
 *                   u64 credential end (unix ms)
 * TOKEN_ERR   id=N  u32 class (enum kcd_err_class), str name
 *                   ("CLIENT_REVOKED"), str text (for the worker's log only)
 * MUTUAL_REQ  id=N  u32 ctx id, str token (from WWW-Authenticate, base64)
 * MUTUAL_OK   id=N  (empty)
 * MUTUAL_ERR  id=N  str name, str text
 * CTX_RELEASE id=0  u32 ctx id
 *
 * Directory checks (SPEC §7, ldap.c inside kcd), asked once per device
 * connection when [ldap] uri is set, before any TOKEN_REQ:
 * IDENTIFY_REQ id=N str principal mapped from the certificate ("" when
 *                   [identity] source = ldap), bytes certificate (DER)
 * IDENTIFY_OK  id=N str principal to use from now on (sAMAccountName@REALM
 *                   when it differs from the UPN's local part), u32 flags
 *                   (KCD_ID_* below)
 * IDENTIFY_ERR id=N u32 class (KCD_ERR_LDAP_DENIED: 403 ldap_<name>;
 *                   KCD_ERR_LDAP_UNREACHABLE: 503 ldap_unreachable),
 *                   str name ("disabled", "not_in_group", "strong_mapping",
 *                   "not_found", ...), str text (log only)
 */
#ifndef EKP_KCD_PROTO_H
#define EKP_KCD_PROTO_H

#define KCD_PRINCIPAL_MAX	512	/* bytes incl. NUL */
#define KCD_SPN_MAX		512
#define KCD_CB_MAX		64	/* SHA-512 */
#define KCD_NAME_MAX		64
#define KCD_TEXT_MAX		1024
#define KCD_TOKEN_MAX		(48 * 1024)	/* base64 */

/* TOKEN_REQ flags */
#define KCD_F_MUTUAL		0x1u	/* keep the context to verify the reply */
#define KCD_F_REFRESH		0x2u	/* the backend refused the last token (401):
					 * drop the cached credential, ask the KDC anew */
#define KCD_F_ALL		(KCD_F_MUTUAL | KCD_F_REFRESH)	/* kcd refuses other bits */

enum kcd_err_class {
	KCD_ERR_USER = 1,	/* KDC refused the user: 403 kdc_<NAME> */
	KCD_ERR_PROXY,		/* KDC refused the proxy / our setup: 502 kdc_<NAME> */
	KCD_ERR_UNREACHABLE,	/* no KDC answer: 503 kdc_unreachable + Retry-After */
	KCD_ERR_INTERNAL,	/* kcd itself failed: 502, logged at error */
	KCD_ERR_LDAP_DENIED,	/* the directory refused the user: 403 ldap_<name> */
	KCD_ERR_LDAP_UNREACHABLE, /* directory down and on_failure = deny: 503 */
};

#define KCD_CERT_MAX		(16 * 1024)	/* DER bytes in IDENTIFY_REQ */
/* IDENTIFY_OK flags */
#define KCD_ID_AUDIT		0x1u	/* strong_mapping = audit would have refused */
#define KCD_ID_DIRECTORY_DOWN	0x2u	/* allowed by on_failure = allow */

#endif
