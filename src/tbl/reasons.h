/*
 * The one table of outcomes. Every request ends with exactly one reason and
 * every connection closes with exactly one reason; both come from here.
 * Including this file with REASON() defined generates the enum, the log
 * token, the status the device sees and the metric label (STYLE.md, after
 * Varnish tbl/sess_close.h and HAProxy SF_ERR_*).
 *
 *   REASON(ID, "token", status, peer, "what it means / what to check")
 *
 * status: the HTTP status the device sees for a request refused for this
 *         reason; 0 = no HTTP answer (handshake refused or connection end).
 * peer:   1 when the peer (device, backend, KDC) caused it and it is logged at
 *         info; 0 when it is our own fault and logged at error.
 *
 * Tokens are stable: they appear in access logs, metrics and docs/logging.md.
 * Reasons of the form kdc_<NAME> and ldap_<name> carry the error name as a
 * detail string next to the reason (see reason_token_detail()).
 */

/* a request that was answered by the backend */
REASON(OK,                 "ok",                    0,   1, "request forwarded, backend answered")

/* connection life */
REASON(CLIENT_CLOSED,      "client_closed",         0,   1, "the device closed the connection")
REASON(CLIENT_RESET,       "client_reset",          0,   1, "the device's connection failed (reset, TLS error after the handshake)")
REASON(IDLE_TIMEOUT,       "idle_timeout",          0,   1, "no new request within idle_timeout on a keep-alive connection")
REASON(HEADER_TIMEOUT,     "header_timeout",        408, 1, "the request header did not arrive within client_header_timeout")
REASON(REQUEST_TIMEOUT,    "request_timeout",       504, 1, "the backend did not answer within request_timeout")
REASON(SHUTDOWN,           "shutdown",              0,   0, "the proxy is stopping (SIGTERM/SIGINT) and drained the connection")
REASON(OUT_OF_MEMORY,      "internal_error",        500, 0, "the proxy ran out of a resource; see the error log")
REASON(PROXY_PROTOCOL,     "bad_proxy_protocol",    0,   1, "proxy_protocol = on but the PROXY header was missing or malformed")

/* TLS handshake (SPEC §5): refused in the handshake, never an HTTP answer */
REASON(TLS_HANDSHAKE,      "tls_handshake_failed",  0,   1, "TLS handshake failed (protocol, cipher, not TLS at all)")
REASON(CERT_MISSING,       "cert_missing",          403, 1, "the device sent no client certificate")
REASON(CERT_UNTRUSTED,     "cert_untrusted",        0,   1, "the client certificate does not chain to client_ca")
REASON(CERT_EXPIRED,       "cert_expired",          0,   1, "the client certificate has expired")
REASON(CERT_NOT_YET_VALID, "cert_not_yet_valid",    0,   1, "the client certificate is not valid yet (check the device's clock)")
REASON(CERT_BAD_EKU,       "cert_bad_eku",          0,   1, "the client certificate lacks the clientAuth extended key usage")
REASON(CERT_REVOKED,       "cert_revoked",          0,   1, "the client certificate is revoked (CRL or OCSP)")
REASON(CERT_OCSP,          "cert_ocsp_unavailable", 0,   1, "ocsp = required and no OCSP answer could be had")

/* identity (SPEC §5) */
REASON(IDENTITY_UNMAPPED,  "identity_unmapped",     403, 1, "the certificate verifies but names no user that maps to a realm")
REASON(USER_MISMATCH,      "user_mismatch",         403, 1, "the query's User= is not the certificate's user")
REASON(DEVICE_DENIED,      "device_denied",         403, 1, "the DeviceId is refused by device policy ([devices] lists or the embedding program)")
REASON(DEVICE_QUARANTINED, "device_quarantined",    403, 1, "the embedding program quarantined the device: only Provision, Settings and command-less requests pass")

/* Kerberos (SPEC §5, §6); the detail is the krb5 error name */
REASON(KDC_USER,           "kdc_",                  403, 1, "the KDC refused the user (unknown, disabled, expired, locked, not delegable)")
REASON(KDC_PROXY,          "kdc_",                  502, 0, "the KDC refused the proxy (keytab, SPN, delegation rights, clock)")
REASON(KDC_UNREACHABLE,    "kdc_unreachable",       503, 1, "no KDC answered within kdc_timeout")

/* directory (SPEC §7); the detail names the check */
REASON(LDAP_DENIED,        "ldap_",                 403, 1, "the directory refused the user")
REASON(LDAP_UNREACHABLE,   "ldap_unreachable",      503, 1, "the directory could not be reached and on_failure = deny")

/* backend (SPEC §5) */
REASON(BACKEND_CONNECT,    "backend_connect",       502, 1, "could not connect to the Exchange server")
REASON(BACKEND_TLS,        "backend_tls",           502, 1, "TLS to the Exchange server failed (certificate, name, protocol)")
REASON(BACKEND_DOWN,       "backend_down",          503, 1, "every Exchange server is marked down")
REASON(BACKEND_RESET,      "backend_reset",         502, 1, "the Exchange server closed the connection mid-request")
REASON(BACKEND_BAD_RESPONSE, "backend_bad_response", 502, 1, "the Exchange server's answer was not valid HTTP")
REASON(BACKEND_AUTH,       "backend_auth",          502, 1, "Exchange refused the Kerberos ticket (401); check SPN, keytab, EP")
REASON(BACKEND_MUTUAL,     "backend_mutual_auth",   502, 1, "Exchange's mutual-authentication token did not verify")

/* request shape (SPEC §4, §5) */
REASON(PATH_DENIED,        "path_denied",           404, 1, "the path is not under [server] paths")
REASON(BAD_REQUEST,        "bad_request_",          400, 1, "the request is malformed; the detail names the rule it broke")
REASON(TOO_LARGE_HEADER,   "too_large",             431, 1, "the request header exceeds max_header_size")
REASON(TOO_LARGE_BODY,     "too_large",             413, 1, "the request body exceeds max_body_size")
REASON(METHOD_DENIED,      "method_denied",         405, 1, "the method is not one ActiveSync or Autodiscover uses")
