/*
 * Why a certificate maps to no user: the detail that goes with the reason
 * identity_unmapped (SPEC §5) in the error log and the metrics. One line per
 * cause; the token is stable (logs, metrics, docs).
 *
 *   IDENTITY_DETAIL(ID, "token", "what it means / what to check")
 *
 * Included with IDENTITY_DETAIL() defined it generates enum identity_detail
 * and the token/text lookups in identity.c.
 */

IDENTITY_DETAIL(NONE,             "none",             "mapped")

/* where the name comes from */
IDENTITY_DETAIL(NO_CERT,          "no_cert",          "there is no peer certificate to map")
IDENTITY_DETAIL(BAD_SAN,          "bad_san",          "the subjectAltName extension does not decode")
IDENTITY_DETAIL(TWO_SANS,         "two_sans",         "the certificate carries more than one subjectAltName extension")
IDENTITY_DETAIL(NO_UPN,           "no_upn",           "no UPN otherName (1.3.6.1.4.1.311.20.2.3) in subjectAltName")
IDENTITY_DETAIL(TWO_UPNS,         "two_upns",         "more than one UPN otherName; which user is meant is ambiguous")
IDENTITY_DETAIL(BAD_UPN_TYPE,     "bad_upn_type",     "the UPN is not a UTF8String (nor an allowed IA5String)")
IDENTITY_DETAIL(IA5_UPN_NOT_ALLOWED, "ia5_upn_not_allowed", "the UPN is an IA5String and [identity] allow_ia5_upn is off")
IDENTITY_DETAIL(NO_EMAIL,         "no_email",         "no rfc822Name (e-mail) in subjectAltName")
IDENTITY_DETAIL(TWO_EMAILS,       "two_emails",       "more than one rfc822Name; which user is meant is ambiguous")
IDENTITY_DETAIL(NO_CN,            "no_cn",            "the subject has no commonName")
IDENTITY_DETAIL(TWO_CNS,          "two_cns",          "the subject has more than one commonName")
IDENTITY_DETAIL(SOURCE_UNSUPPORTED, "source_unsupported", "[identity] source is resolved elsewhere (ldap), not from the certificate alone")

/* what the name looks like */
IDENTITY_DETAIL(EMPTY_VALUE,      "empty_value",      "the name is empty")
IDENTITY_DETAIL(TOO_LONG,         "too_long",         "the name, its local part or its suffix exceeds the length bound")
IDENTITY_DETAIL(NUL_BYTE,         "nul_byte",         "the name contains a NUL byte (truncation attack)")
IDENTITY_DETAIL(NOT_UTF8,         "not_utf8",         "the name is not valid UTF-8")
IDENTITY_DETAIL(NOT_ASCII,        "not_ascii",        "an IA5String name contains bytes above 0x7f")
IDENTITY_DETAIL(BAD_CHAR,         "bad_char",         "the name contains a control, whitespace, invisible, '/' or '\\' character")
IDENTITY_DETAIL(NO_SUFFIX,        "no_suffix",        "the name has no '@suffix' (or an empty one)")
IDENTITY_DETAIL(TWO_ATS,          "two_ats",          "the name contains more than one '@'")
IDENTITY_DETAIL(EMPTY_LOCAL_PART, "empty_local_part", "nothing before the '@'")
IDENTITY_DETAIL(BAD_SUFFIX,       "bad_suffix",       "the suffix is not an ASCII DNS name (labels of letters, digits, '-', '_')")

/* policy */
IDENTITY_DETAIL(SUFFIX_NOT_ALLOWED, "suffix_not_allowed", "the suffix is not in [identity] allowed_suffixes")
IDENTITY_DETAIL(SUFFIX_UNMAPPED,  "suffix_unmapped",  "the suffix is neither [identity] realm nor listed in suffix_realms")

/* our side */
IDENTITY_DETAIL(BAD_REALM,        "bad_realm",        "the configured realm is empty, too long or has characters a principal cannot carry")
IDENTITY_DETAIL(INTERNAL,         "internal_error",   "the proxy ran out of memory decoding the certificate")
