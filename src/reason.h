/* reason.h — request/connection outcome codes from tbl/reasons.h. */
#ifndef EKP_REASON_H
#define EKP_REASON_H

enum reason {
#define REASON(id, token, status, peer, text) REASON_##id,
#include "tbl/reasons.h"
#undef REASON
	REASON__COUNT
};

/* Static token ("kdc_" for the detailed ones); never NULL. */
const char *reason_token(enum reason r);
/* HTTP status the device sees, 0 when there is no HTTP answer. */
int reason_status(enum reason r);
/* 1 when the peer caused it (log at info), 0 for our own faults. */
int reason_is_peer(enum reason r);
const char *reason_text(enum reason r);
/* Writes token + detail ("kdc_CLIENT_REVOKED", "bad_request_cl_te") into buf
 * (always NUL-terminated, truncated to len) and returns buf. A detail is
 * sanitised to [A-Za-z0-9_]. */
const char *reason_token_detail(enum reason r, const char *detail, char *buf, unsigned len);

#endif
