/*
 * Why eas.c refused an ActiveSync query (MS-ASHTTP 2.2.1.1.1): the detail
 * of the reason bad_request (400, "bad_request_<token>"). Tokens start
 * with "eas_" so they never collide with http.c's (tbl/http_errors.h).
 *
 *   EAS_ERR(ID, "token", "what it means / what to check")
 */

EAS_ERR(NONE,            "none",                "decoded")
EAS_ERR(TOO_LONG,        "eas_too_long",        "the query, the decoded base64 bytes or the User value exceed their bound")
EAS_ERR(TOO_MANY_PARAMS, "eas_too_many_params", "more than 64 parameters in a plain query")
EAS_ERR(DUP_PARAM,       "eas_dup_param",       "a known parameter (Cmd, User, DeviceId, ... or a base64 tag) appears twice, in any letter case")
EAS_ERR(BAD_PERCENT,     "eas_bad_percent",     "a '%' not followed by two hex digits")
EAS_ERR(NUL,             "eas_nul",             "a NUL byte (%00) in a parameter name or value")
EAS_ERR(NO_VALUE,        "eas_no_value",        "a known parameter without '='")
EAS_ERR(BAD_BASE64,      "eas_bad_base64",      "the query is neither a plain query nor valid base64")
EAS_ERR(TRUNCATED,       "eas_truncated",       "the base64 byte sequence ends inside a field")
EAS_ERR(BAD_DEVICE_ID,   "eas_bad_device_id",   "the base64 Device ID length is 0")
EAS_ERR(BAD_POLICY_KEY,  "eas_bad_policy_key",  "the base64 policy key length is neither 0 nor 4")
EAS_ERR(BAD_OPTIONS,     "eas_bad_options",     "the base64 Options parameter is not exactly one byte")
