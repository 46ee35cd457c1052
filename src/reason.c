/* reason.c — lookups over the outcome table. */
#include <stdio.h>
#include <string.h>

#include "reason.h"

static const struct {
	const char *token;
	int status;
	int peer;
	const char *text;
} reasons[REASON__COUNT] = {
#define REASON(id, token, status, peer, text) [REASON_##id] = { token, status, peer, text },
#include "tbl/reasons.h"
#undef REASON
};

const char *
reason_token(enum reason r)
{
	return ((unsigned)r < REASON__COUNT) ? reasons[r].token : "unknown";
}

int
reason_status(enum reason r)
{
	return ((unsigned)r < REASON__COUNT) ? reasons[r].status : 500;
}

int
reason_is_peer(enum reason r)
{
	return ((unsigned)r < REASON__COUNT) ? reasons[r].peer : 0;
}

const char *
reason_text(enum reason r)
{
	return ((unsigned)r < REASON__COUNT) ? reasons[r].text : "unknown reason";
}

const char *
reason_token_detail(enum reason r, const char *detail, char *buf, unsigned len)
{
	const char *tok = reason_token(r);
	size_t n, tl = strlen(tok);

	if (len == 0)
		return buf;
	snprintf(buf, len, "%s", tok);
	if (tl == 0 || tok[tl - 1] != '_')
		return buf;		/* a plain token takes no detail */
	if (detail == NULL || *detail == '\0')
		detail = "unknown";
	for (n = strlen(buf); *detail != '\0' && n + 1 < len; detail++, n++) {
		char c = *detail;
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		    (c >= '0' && c <= '9') || c == '_'))
			c = '_';
		buf[n] = c;
	}
	buf[n] = '\0';
	return buf;
}
