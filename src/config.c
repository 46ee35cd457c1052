/*
 * config.c — the configuration file (SPEC §3); see config.h.
 *
 * One static key table drives everything: the defaults go through the same
 * setters as the file's values, config_dump() prints every key from it and
 * config_free() releases every owned field through it. libinih splits the
 * lines; our own reader in front of it numbers them (Debian's inih is built
 * without INI_HANDLER_LINENO), strips comments, rejects over-long and
 * malformed lines and sees every [section] header, so an unknown section is
 * an error even when it holds no keys. config_validate() then cross-checks
 * the whole struct in one place.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/stat.h>

#include <ini.h>
#include <openssl/tls1.h>

#include "config.h"
#include "log.h"

#define EAS_HEARTBEAT_MAX_MS	(3540ULL * 1000)	/* Ping/Sync HeartbeatInterval max */
#define MAX_DURATION_MS		(366ULL * 24 * 3600 * 1000)
#define MSGLEN			1024
#define MAX_KEYS		96

/* ---- sections ------------------------------------------------------- */

enum section {
	SEC_SERVER, SEC_TLS, SEC_IDENTITY, SEC_KERBEROS, SEC_BACKEND, SEC_LDAP,
	SEC_DEVICES, SEC_LOG, SEC__N,
	SEC_NONE = -1,		/* before the first [section] */
	SEC_UNKNOWN = -2,	/* inside an unknown section (already reported) */
};

static const char *const section_names[SEC__N] = {
	"server", "tls", "identity", "kerberos", "backend", "ldap", "devices", "log",
};

/* ---- the key table -------------------------------------------------- */

struct ctx;
struct key;

/* How one type of value is set, printed, released and checked. set() gets
 * the trimmed value and either stores it (freeing what was there) or
 * returns -1 with a complete "what; how to fix" message in msg. */
struct kind {
	int (*set)(struct ctx *c, const struct key *k, const char *v, char *msg, size_t len);
	void (*dump)(const struct config *cfg, const struct key *k, FILE *fp);
	void (*release)(struct config *cfg, const struct key *k);
	int (*empty)(const struct config *cfg, const struct key *k);
	int files;		/* 1: names file(s) that must be readable */
};

struct enum_name {
	const char *name;
	int value;
};

enum {
	K_REQUIRED = 1 << 0,	/* no safe default: must be set in the file */
	K_NOSPACE = 1 << 1,	/* strings: no blanks inside */
	K_LOWER = 1 << 2,	/* lists: lower-case every item */
	K_SLASH = 1 << 3,	/* lists: every item starts with '/' */
	K_NUMERIC = 1 << 4,	/* addresses: IP literals only (we bind them) */
	K_PORTOPT = 1 << 5,	/* addresses: ":port" may be left out */
	K_SECRET = 1 << 6,	/* files: warn when others may read them */
};

struct key {
	enum section sec;
	const char *name;
	const struct kind *kind;
	size_t off;		/* the field in struct config */
	size_t off2;		/* second field (array beside its count, has_ flag) */
	const char *def;	/* the default, parsed like a file value */
	unsigned flags;
	unsigned min, max;	/* numbers: range; address lists: max entries */
	const struct enum_name *names;	/* enums */
	const char *example;	/* required keys: a value to show in the fix */
};

#define FIELD(cfg, off, type)	((type *)(void *)((char *)(cfg) + (off)))
#define CFIELD(cfg, off, type)	((const type *)(const void *)((const char *)(cfg) + (off)))
#define OFF(f)			offsetof(struct config, f)

_Static_assert(sizeof(enum identity_source) == sizeof(int), "enums are int-sized");
_Static_assert(sizeof(enum tri_mode) == sizeof(int), "enums are int-sized");

/* ---- the parse context ---------------------------------------------- */

struct diag {
	unsigned line;		/* 0: about the file as a whole */
	unsigned seq;		/* keeps equal lines in the order found */
	char *msg;		/* owned */
};

struct diags {
	struct diag *v;
	unsigned n, cap;
};

struct ctx {
	struct config *cfg;	/* being built; owned by config_load */
	const char *file;	/* as the caller named it, for messages */
	char *dir;		/* absolute directory of file, owned */
	FILE *fp;
	char *raw;		/* getline buffer, owned */
	size_t rawcap;
	unsigned lineno;	/* line the reader handed to inih last */
	int section;		/* enum section, SEC_NONE or SEC_UNKNOWN */
	unsigned set_line[MAX_KEYS];	/* where each key was set; 0 = default */
	unsigned char failed[MAX_KEYS];	/* the file's value was rejected */
	struct diags errs, warns;
	unsigned seq;
	int oom;
};

/* ---- small helpers -------------------------------------------------- */

static int
is_blank(int ch)
{
	return ch == ' ' || ch == '\t';
}

static int
has_blank(const char *s)
{
	for (; *s; s++)
		if (is_blank((unsigned char)*s))
			return 1;
	return 0;
}

static char *
trim(char *s)
{
	char *e;

	while (is_blank((unsigned char)*s))
		s++;
	e = s + strlen(s);
	while (e > s && is_blank((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

static void
lower(char *s)
{
	for (; *s; s++)
		*s = (char)tolower((unsigned char)*s);
}

static __attribute__((format(printf, 4, 5))) void
diag(struct ctx *c, struct diags *d, unsigned line, const char *fmt, ...)
{
	char body[MSGLEN];
	char *msg = NULL;
	va_list ap;
	int r;

	va_start(ap, fmt);
	vsnprintf(body, sizeof(body), fmt, ap);
	va_end(ap);
	if (line)
		r = asprintf(&msg, "%s:%u: %s%s", c->file, line,
		    d == &c->warns ? "warning: " : "", body);
	else
		r = asprintf(&msg, "%s: %s%s", c->file,
		    d == &c->warns ? "warning: " : "", body);
	if (r < 0) {
		c->oom = 1;
		return;
	}
	if (d->n == d->cap) {
		unsigned cap = d->cap ? d->cap * 2 : 16;
		struct diag *v = realloc(d->v, cap * sizeof(*v));

		if (!v) {
			free(msg);
			c->oom = 1;
			return;
		}
		d->v = v;
		d->cap = cap;
	}
	d->v[d->n].line = line;
	d->v[d->n].seq = c->seq++;
	d->v[d->n].msg = msg;
	d->n++;
}

#define ERR(c, line, ...)	diag((c), &(c)->errs, (line), __VA_ARGS__)
#define WARN(c, line, ...)	diag((c), &(c)->warns, (line), __VA_ARGS__)

static int
diag_cmp(const void *a, const void *b)
{
	const struct diag *x = a, *y = b;
	unsigned lx = x->line ? x->line : UINT_MAX;
	unsigned ly = y->line ? y->line : UINT_MAX;

	if (lx != ly)
		return lx < ly ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Sort d and hand its messages over to out (which owns them afterwards). */
static void
diags_move(struct diags *d, struct config_errors *out)
{
	if (d->n)
		qsort(d->v, d->n, sizeof(d->v[0]), diag_cmp);
	for (unsigned i = 0; i < d->n; i++) {
		if (out->n < sizeof(out->msg) / sizeof(out->msg[0])) {
			out->msg[out->n++] = d->v[i].msg;
		} else {
			out->dropped++;
			free(d->v[i].msg);
		}
	}
	free(d->v);
	d->v = NULL;
	d->n = d->cap = 0;
}

static void
diags_free(struct diags *d)
{
	for (unsigned i = 0; i < d->n; i++)
		free(d->v[i].msg);
	free(d->v);
	d->v = NULL;
	d->n = d->cap = 0;
}

/* Levenshtein distance, case-insensitive; large for long strings. */
static unsigned
edit_distance(const char *a, const char *b)
{
	unsigned row[64];
	size_t la = strlen(a), lb = strlen(b);

	if (la >= 64 || lb >= 64)
		return UINT_MAX;
	for (size_t j = 0; j <= lb; j++)
		row[j] = (unsigned)j;
	for (size_t i = 1; i <= la; i++) {
		unsigned prev = row[0];

		row[0] = (unsigned)i;
		for (size_t j = 1; j <= lb; j++) {
			unsigned tmp = row[j];
			unsigned cost = tolower((unsigned char)a[i - 1]) !=
			    tolower((unsigned char)b[j - 1]);
			unsigned best = row[j] + 1;

			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			if (prev + cost < best)
				best = prev + cost;
			row[j] = best;
			prev = tmp;
		}
	}
	return row[lb];
}

static int
close_enough(const char *typo, const char *cand, unsigned d)
{
	size_t l = strlen(typo) < strlen(cand) ? strlen(typo) : strlen(cand);

	return d <= (l <= 4 ? 1u : 2u);
}

/* ---- pure value parsers --------------------------------------------- */

/* Leading decimal digits of s; *end points after them. */
static int
parse_number(const char *s, uint64_t *out, const char **end, char *err, size_t errlen)
{
	uint64_t n = 0;
	const char *p = s;

	if (!s || !*s) {
		snprintf(err, errlen, "empty value");
		return -1;
	}
	if (*p == '-') {
		snprintf(err, errlen, "negative values are not allowed");
		return -1;
	}
	if (!isdigit((unsigned char)*p)) {
		snprintf(err, errlen, "not a number");
		return -1;
	}
	for (; isdigit((unsigned char)*p); p++) {
		unsigned dgt = (unsigned)(*p - '0');

		if (n > (UINT64_MAX - dgt) / 10) {
			snprintf(err, errlen, "number too large");
			return -1;
		}
		n = n * 10 + dgt;
	}
	*end = p;
	*out = n;
	return 0;
}

int
config_parse_duration(const char *s, uint64_t *ms, char *err, size_t errlen)
{
	uint64_t n, mult;
	const char *unit;

	if (parse_number(s, &n, &unit, err, errlen) < 0)
		return -1;
	if (*unit == '\0' || strcasecmp(unit, "s") == 0)
		mult = 1000;
	else if (strcasecmp(unit, "ms") == 0)
		mult = 1;
	else if (strcasecmp(unit, "m") == 0)
		mult = 60 * 1000;
	else if (strcasecmp(unit, "h") == 0)
		mult = 3600 * 1000;
	else {
		snprintf(err, errlen, "unknown unit '%.16s'", unit);
		return -1;
	}
	if (n > MAX_DURATION_MS / mult) {
		snprintf(err, errlen, "too long, at most 366 days");
		return -1;
	}
	*ms = n * mult;
	return 0;
}

int
config_parse_size(const char *s, uint64_t *bytes, char *err, size_t errlen)
{
	uint64_t n, mult;
	const char *unit;

	if (parse_number(s, &n, &unit, err, errlen) < 0)
		return -1;
	if (*unit == '\0')
		mult = 1;
	else if (strcasecmp(unit, "k") == 0)
		mult = 1024;
	else if (strcasecmp(unit, "m") == 0)
		mult = 1024 * 1024;
	else if (strcasecmp(unit, "g") == 0)
		mult = 1024 * 1024 * 1024;
	else {
		snprintf(err, errlen, "unknown unit '%.16s'", unit);
		return -1;
	}
	if (n > UINT64_MAX / mult) {
		snprintf(err, errlen, "number too large");
		return -1;
	}
	*bytes = n * mult;
	return 0;
}

int
config_parse_bool(const char *s, int *out, char *err, size_t errlen)
{
	static const char *const yes[] = { "yes", "on", "true", "1" };
	static const char *const no[] = { "no", "off", "false", "0" };

	if (!s || !*s) {
		snprintf(err, errlen, "empty value");
		return -1;
	}
	for (unsigned i = 0; i < 4; i++) {
		if (strcasecmp(s, yes[i]) == 0) {
			*out = 1;
			return 0;
		}
		if (strcasecmp(s, no[i]) == 0) {
			*out = 0;
			return 0;
		}
	}
	snprintf(err, errlen, "not a boolean");
	return -1;
}

static int
parse_port(const char *s, uint16_t *port, char *err, size_t errlen)
{
	unsigned long v = 0;
	const char *p;

	if (!*s) {
		snprintf(err, errlen, "empty port");
		return -1;
	}
	for (p = s; *p; p++) {
		if (!isdigit((unsigned char)*p)) {
			snprintf(err, errlen, "bad port '%.32s'", s);
			return -1;
		}
		v = v * 10 + (unsigned long)(*p - '0');
		if (v > 65535) {
			snprintf(err, errlen, "port %.32s out of range 1-65535", s);
			return -1;
		}
	}
	if (v == 0) {
		snprintf(err, errlen, "port 0 is not allowed, use 1-65535");
		return -1;
	}
	*port = (uint16_t)v;
	return 0;
}

static int
valid_hostname(const char *h)
{
	size_t len = strlen(h), label = 0;

	if (len == 0 || len > 253)
		return 0;
	for (const char *p = h; ; p++) {
		if (*p == '.' || *p == '\0') {
			if (label == 0 || label > 63 || p[-1] == '-')
				return 0;
			if (*p == '\0')
				return 1;
			label = 0;
			continue;
		}
		if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_')
			return 0;
		if (label == 0 && *p == '-')
			return 0;
		label++;
	}
}

int
config_parse_addr(const char *s, int allow_no_port, uint16_t default_port,
    struct config_addr *out, char *err, size_t errlen)
{
	struct config_addr a;
	const char *host, *port = NULL, *colon;
	size_t hlen;

	memset(&a, 0, sizeof(a));
	if (!s || !*s) {
		snprintf(err, errlen, "empty address");
		return -1;
	}
	if (s[0] == '[') {
		const char *rb = strchr(s, ']');

		if (!rb) {
			snprintf(err, errlen, "missing ']' after the IPv6 address");
			return -1;
		}
		host = s + 1;
		hlen = (size_t)(rb - host);
		if (rb[1] == ':')
			port = rb + 2;
		else if (rb[1] != '\0') {
			snprintf(err, errlen, "unexpected text after ']'");
			return -1;
		}
	} else {
		colon = strchr(s, ':');
		if (colon && strchr(colon + 1, ':')) {
			snprintf(err, errlen,
			    "IPv6 addresses need brackets, e.g. [::1]:443");
			return -1;
		}
		host = s;
		hlen = colon ? (size_t)(colon - s) : strlen(s);
		if (colon)
			port = colon + 1;
	}
	if (hlen == 0) {
		snprintf(err, errlen, "missing host before the port "
		    "(use 0.0.0.0 or [::] for every address)");
		return -1;
	}
	if (hlen >= sizeof(a.host)) {
		snprintf(err, errlen, "host name too long");
		return -1;
	}
	memcpy(a.host, host, hlen);
	a.host[hlen] = '\0';

	if (port) {
		if (parse_port(port, &a.port, err, errlen) < 0)
			return -1;
	} else if (allow_no_port) {
		a.port = default_port;
	} else {
		snprintf(err, errlen, "missing port");
		return -1;
	}

	if (s[0] == '[') {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a.ss;

		if (inet_pton(AF_INET6, a.host, &sin6->sin6_addr) != 1) {
			snprintf(err, errlen, "bad IPv6 address '%s'", a.host);
			return -1;
		}
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(a.port);
		a.sslen = sizeof(*sin6);
		a.is_numeric = 1;
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)&a.ss;

		if (inet_pton(AF_INET, a.host, &sin->sin_addr) == 1) {
			sin->sin_family = AF_INET;
			sin->sin_port = htons(a.port);
			a.sslen = sizeof(*sin);
			a.is_numeric = 1;
		} else if (strspn(a.host, "0123456789.") == strlen(a.host)) {
			snprintf(err, errlen, "bad IPv4 address '%s'", a.host);
			return -1;
		} else if (!valid_hostname(a.host)) {
			snprintf(err, errlen, "bad host name '%s'", a.host);
			return -1;
		}
	}
	*out = a;
	return 0;
}

/* ---- list helpers --------------------------------------------------- */

static void
list_clear(struct config_list *l)
{
	for (unsigned i = 0; i < l->n; i++)
		free(l->v[i]);
	l->n = 0;
}

/* Split a comma list into out (empty value = empty list). Returns -1 with
 * a message naming key on an empty item or too many items. */
static int
split_list(const char *v, const char *key, struct config_list *out,
    char *msg, size_t len)
{
	struct config_list l;
	char *copy = NULL, *p, *item;
	int rc = -1;

	l.n = 0;
	if (!*v) {
		*out = l;
		return 0;
	}
	if (!(copy = strdup(v))) {
		snprintf(msg, len, "out of memory");
		goto cleanup;
	}
	for (p = copy; p; ) {
		char *comma = strchr(p, ',');

		if (comma)
			*comma = '\0';
		item = trim(p);
		p = comma ? comma + 1 : NULL;
		if (!*item) {
			snprintf(msg, len, "empty item in the %s list '%s'; "
			    "separate items with single commas", key, v);
			goto cleanup;
		}
		if (l.n == CONFIG_MAX_LIST) {
			snprintf(msg, len, "too many items in %s (at most %u)",
			    key, CONFIG_MAX_LIST);
			goto cleanup;
		}
		if (!(l.v[l.n] = strdup(item))) {
			snprintf(msg, len, "out of memory");
			goto cleanup;
		}
		l.n++;
	}
	*out = l;
	l.n = 0;
	rc = 0;
cleanup:
	list_clear(&l);
	free(copy);
	return rc;
}

/* Absolute form of a path value: relative ones hang off the config file's
 * directory. Returns a new string or NULL (out of memory). */
static char *
resolve_path(const struct ctx *c, const char *v)
{
	char *r = NULL;

	if (v[0] == '/')
		return strdup(v);
	while (v[0] == '.' && v[1] == '/')
		v += 2;
	if (asprintf(&r, "%s/%s", c->dir, v) < 0)
		return NULL;
	return r;
}

static void
fmt_addr(const struct config_addr *a, char *buf, size_t len)
{
	if (strchr(a->host, ':'))
		snprintf(buf, len, "[%s]:%u", a->host, a->port);
	else
		snprintf(buf, len, "%s:%u", a->host, a->port);
}

/* ---- kinds: setters, dumpers, releasers ----------------------------- */

static int
set_str(struct ctx *c, const struct key *k, const char *v, char *msg, size_t len)
{
	char **f = FIELD(c->cfg, k->off, char *);
	char *n = NULL;

	if ((k->flags & K_NOSPACE) && has_blank(v)) {
		snprintf(msg, len, "%s '%s' must not contain blanks", k->name, v);
		return -1;
	}
	if (*v && !(n = strdup(v))) {
		snprintf(msg, len, "out of memory");
		return -1;
	}
	free(*f);
	*f = n;
	return 0;
}

static int
set_path(struct ctx *c, const struct key *k, const char *v, char *msg, size_t len)
{
	char **f = FIELD(c->cfg, k->off, char *);
	char *n = NULL;

	if (*v && !(n = resolve_path(c, v))) {
		snprintf(msg, len, "out of memory");
		return -1;
	}
	free(*f);
	*f = n;
	return 0;
}

static void
dump_str(const struct config *cfg, const struct key *k, FILE *fp)
{
	const char *s = *CFIELD(cfg, k->off, char *);

	fprintf(fp, "%s = %s\n", k->name, s ? s : "");
}

static void
release_str(struct config *cfg, const struct key *k)
{
	char **f = FIELD(cfg, k->off, char *);

	free(*f);
	*f = NULL;
}

static int
empty_str(const struct config *cfg, const struct key *k)
{
	return *CFIELD(cfg, k->off, char *) == NULL;
}

static int
set_files(struct ctx *c, const struct key *k, const char *v, char *msg, size_t len)
{
	struct config_list *f = FIELD(c->cfg, k->off, struct config_list);
	struct config_list l;

	if (split_list(v, k->name, &l, msg, len) < 0)
		return -1;
	for (unsigned i = 0; i < l.n; i++) {
		char *abs = resolve_path(c, l.v[i]);

		if (!abs) {
			list_clear(&l);
			snprintf(msg, len, "out of memory");
			return -1;
		}
		free(l.v[i]);
		l.v[i] = abs;
	}
	list_clear(f);
	*f = l;
	return 0;
}

static int
set_list(struct ctx *c, const struct key *k, const char *v, char *msg, size_t len)
{
	struct config_list *f = FIELD(c->cfg, k->off, struct config_list);
	struct config_list l;

	if (split_list(v, k->name, &l, msg, len) < 0)
		return -1;
	for (unsigned i = 0; i < l.n; i++) {
		if (k->flags & K_LOWER)
			lower(l.v[i]);
		if ((k->flags & K_NOSPACE) && has_blank(l.v[i])) {
			snprintf(msg, len, "'%s' in %s must not contain blanks",
			    l.v[i], k->name);
			list_clear(&l);
			return -1;
		}
		if ((k->flags & K_SLASH) && l.v[i][0] != '/') {
			snprintf(msg, len, "'%s' in %s must start with '/', "
			    "e.g. /Microsoft-Server-ActiveSync", l.v[i], k->name);
			list_clear(&l);
			return -1;
		}
		for (unsigned j = 0; j < i; j++) {
			if (strcmp(l.v[i], l.v[j]) == 0) {
				snprintf(msg, len, "'%s' is listed twice in %s; "
				    "remove one", l.v[i], k->name);
				list_clear(&l);
				return -1;
			}
		}
	}
	list_clear(f);
	*f = l;
	return 0;
}

static void
dump_list(const struct config *cfg, const struct key *k, FILE *fp)
{
	const struct config_list *l = CFIELD(cfg, k->off, struct config_list);

	fprintf(fp, "%s = ", k->name);
	for (unsigned i = 0; i < l->n; i++)
		fprintf(fp, "%s%s", i ? ", " : "", l->v[i]);
	fputc('\n', fp);
}

static void
release_list(struct config *cfg, const struct key *k)
{
	list_clear(FIELD(cfg, k->off, struct config_list));
}

static int
set_bool(struct ctx *c, const struct key *k, const char *v, char *msg, size_t len)
{
	char why[64];
	int b;

	if (config_parse_bool(v, &b, why, sizeof(why)) < 0) {
		snprintf(msg, len, "bad boolean '%s' for %s (%s): use yes or no "
		    "(on/off, true/false and 1/0 work too)", v, k->name, why);
		return -1;
	}
	*FIELD(c->cfg, k->off, int) = b;
	return 0;
}

static void
dump_bool(const struct config *cfg, const struct key *k, FILE *fp)
{
	fprintf(fp, "%s = %s\n", k->name, *CFIELD(cfg, k->off, int) ? "yes" : "no");
}

static int
set_duration(struct ctx *c, const struct key *k, const char *v, char *msg, size_t len)
{
	char why[64];
	uint64_t ms;

	if (config_parse_duration(v, &ms, why, sizeof(why)) < 0) {
		snprintf(msg, len, "bad duration '%s' for %s (%s): use a number "
		    "with ms, s, m or h, e.g. 30s", v, k->name, why);
		return -1;
	}
	*FIELD(c->cfg, k->off, uint64_t) = ms;
	return 0;
}

static void
fmt_duration(uint64_t ms, char *buf, size_t len)
{
	if (ms == 0)
		snprintf(buf, len, "0s");
	else if (ms % 3600000 == 0)
		snprintf(buf, len, "%lluh", (unsigned long long)(ms / 3600000));
	else if (ms % 60000 == 0)
		snprintf(buf, len, "%llum", (unsigned long long)(ms / 60000));
	else if (ms % 1000 == 0)
		snprintf(buf, len, "%llus", (unsigned long long)(ms / 1000));
	else
		snprintf(buf, len, "%llums", (unsigned long long)ms);
}

static void
dump_duration(const struct config *cfg, const struct key *k, FILE *fp)
{
	char buf[32];

	fmt_duration(*CFIELD(cfg, k->off, uint64_t), buf, sizeof(buf));
	fprintf(fp, "%s = %s\n", k->name, buf);
}

static int
set_size(struct ctx *c, const struct key *k, const char *v, char *msg, size_t len)
{
	char why[64];
	uint64_t b;

	if (config_parse_size(v, &b, why, sizeof(why)) < 0) {
		snprintf(msg, len, "bad size '%s' for %s (%s): use a number of "
		    "bytes with k, m or g, e.g. 32k", v, k->name, why);
		return -1;
	}
	*FIELD(c->cfg, k->off, uint64_t) = b;
	return 0;
}

static void
fmt_size(uint64_t b, char *buf, size_t len)
{
	if (b && b % (1024ULL * 1024 * 1024) == 0)
		snprintf(buf, len, "%llug", (unsigned long long)(b >> 30));
	else if (b && b % (1024ULL * 1024) == 0)
		snprintf(buf, len, "%llum", (unsigned long long)(b >> 20));
	else if (b && b % 1024 == 0)
		snprintf(buf, len, "%lluk", (unsigned long long)(b >> 10));
	else
		snprintf(buf, len, "%llu", (unsigned long long)b);
}

static void
dump_size(const struct config *cfg, const struct key *k, FILE *fp)
{
	char buf[32];

	fmt_size(*CFIELD(cfg, k->off, uint64_t), buf, sizeof(buf));
	fprintf(fp, "%s = %s\n", k->name, buf);
}

static int
set_uint(struct ctx *c, const struct key *k, const char *v, char *msg, size_t len)
{
	char why[64];
	uint64_t n;
	const char *end;

	if (parse_number(v, &n, &end, why, sizeof(why)) < 0 || *end ||
	    n < k->min || n > k->max) {
		snprintf(msg, len, "bad number '%s' for %s: use a whole number "
		    "from %u to %u", v, k->name, k->min, k->max);
		return -1;
	}
	*FIELD(c->cfg, k->off, unsigned) = (unsigned)n;
	return 0;
}

static void
dump_uint(const struct config *cfg, const struct key *k, FILE *fp)
{
	fprintf(fp, "%s = %u\n", k->name, *CFIELD(cfg, k->off, unsigned));
}

static int
set_workers(struct ctx *c, const struct key *k, const char *v, char *msg, size_t len)
{
	if (strcasecmp(v, "auto") == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);

		if (n < 1)
			n = 1;
		if (n > (long)k->max)
			n = (long)k->max;
		*FIELD(c->cfg, k->off, unsigned) = (unsigned)n;
		return 0;
	}
	if (set_uint(c, k, v, msg, len) < 0) {
		snprintf(msg, len, "bad workers '%s': use auto (one per CPU) or "
		    "a number from %u to %u", v, k->min, k->max);
		return -1;
	}
	return 0;
}

static int
set_enum(struct ctx *c, const struct key *k, const char *v, char *msg, size_t len)
{
	size_t o = 0;

	for (const struct enum_name *e = k->names; e->name; e++) {
		if (strcasecmp(v, e->name) == 0) {
			int val = e->value;

			memcpy(FIELD(c->cfg, k->off, int), &val, sizeof(val));
			return 0;
		}
	}
	o = (size_t)snprintf(msg, len, "bad value '%s' for %s: use ", v, k->name);
	for (const struct enum_name *e = k->names; e->name && o < len; e++)
		o += (size_t)snprintf(msg + o, len - o, "%s%s",
		    e == k->names ? "" : (e[1].name ? ", " : " or "), e->name);
	return -1;
}

static void
dump_enum(const struct config *cfg, const struct key *k, FILE *fp)
{
	int val;

	memcpy(&val, CFIELD(cfg, k->off, int), sizeof(val));
	for (const struct enum_name *e = k->names; e->name; e++) {
		if (e->value == val) {
			fprintf(fp, "%s = %s\n", k->name, e->name);
			return;
		}
	}
	fprintf(fp, "%s = ?\n", k->name);
}

/* An address list: count at off, array at off2, at most k->max entries.
 * K_NUMERIC: IP literals with a port (we bind them); else host[:port] with
 * k->min as the default port. */
static int
set_addrs(struct ctx *c, const struct key *k, const char *v, char *msg, size_t len)
{
	struct config_list l;
	struct config_addr *arr = FIELD(c->cfg, k->off2, struct config_addr);
	struct config_addr *tmp = NULL;
	char why[128];
	int rc = -1;

	if (split_list(v, k->name, &l, msg, len) < 0)
		return -1;
	if (l.n == 0 && (k->flags & K_REQUIRED)) {
		/* left to config_validate's "missing required key" */
		*FIELD(c->cfg, k->off, unsigned) = 0;
		rc = 0;
		goto cleanup;
	}
	if (l.n == 0) {
		snprintf(msg, len, "%s is empty; give at least one %s", k->name,
		    (k->flags & K_NUMERIC) ? "address:port, e.g. 0.0.0.0:443" :
		    "host[:port], e.g. exchange.example.test");
		goto cleanup;
	}
	if (l.n > k->max) {
		snprintf(msg, len, "too many entries in %s (at most %u)", k->name, k->max);
		goto cleanup;
	}
	if (!(tmp = calloc(l.n, sizeof(*tmp)))) {
		snprintf(msg, len, "out of memory");
		goto cleanup;
	}
	for (unsigned i = 0; i < l.n; i++) {
		if (config_parse_addr(l.v[i], !(k->flags & K_NUMERIC),
		    (uint16_t)k->min, &tmp[i], why, sizeof(why)) < 0) {
			snprintf(msg, len, "bad address '%s' in %s (%s): write %s",
			    l.v[i], k->name, why, (k->flags & K_NUMERIC) ?
			    "address:port, e.g. 0.0.0.0:443 or [::]:443" :
			    "host or host:port, e.g. exchange.example.test:443");
			goto cleanup;
		}
		if ((k->flags & K_NUMERIC) && !tmp[i].is_numeric) {
			snprintf(msg, len, "bad address '%s' in %s: it must be an "
			    "IP address, not a host name, e.g. 0.0.0.0:443 or "
			    "[::]:443", l.v[i], k->name);
			goto cleanup;
		}
		for (unsigned j = 0; j < i; j++) {
			if (strcasecmp(tmp[i].host, tmp[j].host) == 0 &&
			    tmp[i].port == tmp[j].port) {
				snprintf(msg, len, "'%s' is listed twice in %s; "
				    "remove one", l.v[i], k->name);
				goto cleanup;
			}
		}
	}
	memcpy(arr, tmp, l.n * sizeof(*tmp));
	*FIELD(c->cfg, k->off, unsigned) = l.n;
	rc = 0;
cleanup:
	free(tmp);
	list_clear(&l);
	return rc;
}

static void
dump_addrs(const struct config *cfg, const struct key *k, FILE *fp)
{
	const struct config_addr *arr = CFIELD(cfg, k->off2, struct config_addr);
	unsigned n = *CFIELD(cfg, k->off, unsigned);
	char buf[300];

	fprintf(fp, "%s = ", k->name);
	for (unsigned i = 0; i < n; i++) {
		fmt_addr(&arr[i], buf, sizeof(buf));
		fprintf(fp, "%s%s", i ? ", " : "", buf);
	}
	fputc('\n', fp);
}

static int
empty_addrs(const struct config *cfg, const struct key *k)
{
	return *CFIELD(cfg, k->off, unsigned) == 0;
}

/* One optional address: the has_ flag at off2, the address at off. Empty
 * value = none. */
static int
set_addr_opt(struct ctx *c, const struct key *k, const char *v, char *msg, size_t len)
{
	struct config_addr a;
	char why[128];

	if (!*v) {
		*FIELD(c->cfg, k->off2, int) = 0;
		memset(FIELD(c->cfg, k->off, struct config_addr), 0, sizeof(a));
		return 0;
	}
	if (config_parse_addr(v, !!(k->flags & K_PORTOPT), 0, &a, why, sizeof(why)) < 0) {
		snprintf(msg, len, "bad address '%s' for %s (%s): write %s", v,
		    k->name, why, (k->flags & K_NUMERIC) ?
		    "address:port, e.g. 127.0.0.1:9090, or leave it empty" :
		    "address[:port], e.g. 192.0.2.10:443");
		return -1;
	}
	if ((k->flags & K_NUMERIC) && !a.is_numeric) {
		snprintf(msg, len, "bad address '%s' for %s: it must be an IP "
		    "address, not a host name, e.g. 127.0.0.1:9090", v, k->name);
		return -1;
	}
	*FIELD(c->cfg, k->off, struct config_addr) = a;
	*FIELD(c->cfg, k->off2, int) = 1;
	return 0;
}

static void
dump_addr_opt(const struct config *cfg, const struct key *k, FILE *fp)
{
	char buf[300] = "";

	if (*CFIELD(cfg, k->off2, int))
		fmt_addr(CFIELD(cfg, k->off, struct config_addr), buf, sizeof(buf));
	fprintf(fp, "%s = %s\n", k->name, buf);
}

static void
release_suffix_realms(struct config *cfg, const struct key *k)
{
	(void)k;
	for (unsigned i = 0; i < cfg->identity.n_suffix_realms; i++) {
		free(cfg->identity.suffix_realms[i].suffix);
		free(cfg->identity.suffix_realms[i].realm);
	}
	cfg->identity.n_suffix_realms = 0;
}

/* "suffix:REALM, suffix:REALM": suffixes lower-cased, realms as written. */
static int
set_suffix_realms(struct ctx *c, const struct key *k, const char *v, char *msg, size_t len)
{
	struct config_suffix_realm sr[CONFIG_MAX_LIST];
	struct config_list l;
	unsigned n = 0;
	int rc = -1;

	if (split_list(v, k->name, &l, msg, len) < 0)
		return -1;
	for (unsigned i = 0; i < l.n; i++) {
		char *colon = strchr(l.v[i], ':'), *suffix, *realm;

		if (!colon || strchr(colon + 1, ':')) {
			snprintf(msg, len, "bad entry '%s' in %s: write "
			    "suffix:REALM, e.g. corp.example:CORP.EXAMPLE.TEST",
			    l.v[i], k->name);
			goto cleanup;
		}
		*colon = '\0';
		suffix = trim(l.v[i]);
		realm = trim(colon + 1);
		lower(suffix);
		if (!*suffix || !*realm || has_blank(suffix) || has_blank(realm) ||
		    strchr(suffix, '@') || strchr(realm, '@')) {
			snprintf(msg, len, "bad entry '%s:%s' in %s: write "
			    "suffix:REALM without '@' or blanks, e.g. "
			    "corp.example:CORP.EXAMPLE.TEST", suffix, realm, k->name);
			goto cleanup;
		}
		for (unsigned j = 0; j < n; j++) {
			if (strcmp(sr[j].suffix, suffix) == 0) {
				snprintf(msg, len, "suffix '%s' is mapped twice in "
				    "%s; keep one", suffix, k->name);
				goto cleanup;
			}
		}
		sr[n].suffix = strdup(suffix);
		sr[n].realm = strdup(realm);
		n++;
		if (!sr[n - 1].suffix || !sr[n - 1].realm) {
			snprintf(msg, len, "out of memory");
			goto cleanup;
		}
	}
	release_suffix_realms(c->cfg, k);
	memcpy(c->cfg->identity.suffix_realms, sr, n * sizeof(sr[0]));
	c->cfg->identity.n_suffix_realms = n;
	n = 0;
	rc = 0;
cleanup:
	for (unsigned i = 0; i < n; i++) {
		free(sr[i].suffix);
		free(sr[i].realm);
	}
	list_clear(&l);
	return rc;
}

static void
dump_suffix_realms(const struct config *cfg, const struct key *k, FILE *fp)
{
	fprintf(fp, "%s = ", k->name);
	for (unsigned i = 0; i < cfg->identity.n_suffix_realms; i++)
		fprintf(fp, "%s%s:%s", i ? ", " : "",
		    cfg->identity.suffix_realms[i].suffix,
		    cfg->identity.suffix_realms[i].realm);
	fputc('\n', fp);
}

/* "HTTP/host", "HTTP/host@REALM" or "HTTP@host" -> "HTTP@host" (the GSS
 * host-based service form); the realm is implied by the KDC's referral. */
static int
set_spn(struct ctx *c, const struct key *k, const char *v, char *msg, size_t len)
{
	char *copy = NULL, *svc, *host, *sep, *n = NULL;
	int rc = -1;

	if (!*v) {
		release_str(c->cfg, k);
		return 0;
	}
	if (!(copy = strdup(v)))
		goto oom;
	svc = copy;
	if ((sep = strchr(copy, '/'))) {
		char *at;

		*sep = '\0';
		host = sep + 1;
		if ((at = strchr(host, '@')))
			*at = '\0';	/* HTTP/host@REALM: the realm is dropped */
	} else if ((sep = strchr(copy, '@'))) {
		*sep = '\0';
		host = sep + 1;
	} else {
		host = NULL;
	}
	if (!host || !*svc || !*host || has_blank(v) || strchr(host, '/') ||
	    strchr(host, '@') || strchr(svc, '@')) {
		snprintf(msg, len, "bad spn '%s': write service/host, e.g. "
		    "HTTP/exchange.example.test (HTTP@exchange.example.test "
		    "works too)", v);
		goto cleanup;
	}
	if (asprintf(&n, "%s@%s", svc, host) < 0)
		goto oom;
	release_str(c->cfg, k);
	*FIELD(c->cfg, k->off, char *) = n;
	rc = 0;
	goto cleanup;
oom:
	snprintf(msg, len, "out of memory");
cleanup:
	free(copy);
	return rc;
}

/* "off" or empty = no access log, else a path. */
static int
set_access_log(struct ctx *c, const struct key *k, const char *v, char *msg, size_t len)
{
	if (strcasecmp(v, "off") == 0)
		v = "";
	return set_path(c, k, v, msg, len);
}

static void
dump_access_log(const struct config *cfg, const struct key *k, FILE *fp)
{
	const char *s = *CFIELD(cfg, k->off, char *);

	fprintf(fp, "%s = %s\n", k->name, s ? s : "off");
}

/* "stderr", "syslog" or a path. */
static int
set_error_log(struct ctx *c, const struct key *k, const char *v, char *msg, size_t len)
{
	if (!*v) {
		snprintf(msg, len, "error_log is empty: use stderr, syslog or a "
		    "file path");
		return -1;
	}
	if (strcmp(v, "stderr") == 0 || strcmp(v, "syslog") == 0)
		return set_str(c, k, v, msg, len);
	return set_path(c, k, v, msg, len);
}

static const struct kind KIND_STR = { set_str, dump_str, release_str, empty_str, 0 };
static const struct kind KIND_PATH = { set_path, dump_str, release_str, empty_str, 0 };
static const struct kind KIND_FILE = { set_path, dump_str, release_str, empty_str, 1 };
static const struct kind KIND_FILES = { set_files, dump_list, release_list, NULL, 1 };
static const struct kind KIND_LIST = { set_list, dump_list, release_list, NULL, 0 };
static const struct kind KIND_BOOL = { set_bool, dump_bool, NULL, NULL, 0 };
static const struct kind KIND_DURATION = { set_duration, dump_duration, NULL, NULL, 0 };
static const struct kind KIND_SIZE = { set_size, dump_size, NULL, NULL, 0 };
static const struct kind KIND_UINT = { set_uint, dump_uint, NULL, NULL, 0 };
static const struct kind KIND_WORKERS = { set_workers, dump_uint, NULL, NULL, 0 };
static const struct kind KIND_ENUM = { set_enum, dump_enum, NULL, NULL, 0 };
static const struct kind KIND_ADDRS = { set_addrs, dump_addrs, NULL, empty_addrs, 0 };
static const struct kind KIND_ADDR_OPT = { set_addr_opt, dump_addr_opt, NULL, NULL, 0 };
static const struct kind KIND_SUFFIX_REALMS = { set_suffix_realms, dump_suffix_realms,
    release_suffix_realms, NULL, 0 };
static const struct kind KIND_SPN = { set_spn, dump_str, release_str, empty_str, 0 };
static const struct kind KIND_ACCESS_LOG = { set_access_log, dump_access_log, release_str, NULL, 0 };
static const struct kind KIND_ERROR_LOG = { set_error_log, dump_str, release_str, NULL, 0 };

static const struct enum_name E_SOURCE[] = {
	{ "san_upn", ID_SRC_SAN_UPN }, { "san_email", ID_SRC_SAN_EMAIL },
	{ "subject_cn", ID_SRC_SUBJECT_CN }, { "ldap", ID_SRC_LDAP }, { NULL, 0 },
};
static const struct enum_name E_TRI[] = {
	{ "auto", TRI_AUTO }, { "on", TRI_ON }, { "off", TRI_OFF }, { NULL, 0 },
};
static const struct enum_name E_OCSP[] = {
	{ "off", OCSP_OFF }, { "on", OCSP_ON }, { "required", OCSP_REQUIRED }, { NULL, 0 },
};
static const struct enum_name E_BIND[] = {
	{ "gssapi", LDAP_BIND_GSSAPI }, { "simple", LDAP_BIND_SIMPLE }, { NULL, 0 },
};
static const struct enum_name E_STRONG[] = {
	{ "off", STRONG_OFF }, { "audit", STRONG_AUDIT }, { "enforce", STRONG_ENFORCE },
	{ NULL, 0 },
};
static const struct enum_name E_ON_FAILURE[] = {
	{ "deny", ON_FAILURE_DENY }, { "allow", ON_FAILURE_ALLOW }, { NULL, 0 },
};
static const struct enum_name E_ACCESS_FORMAT[] = {
	{ "w3c", ACCESS_W3C }, { "json", ACCESS_JSON }, { NULL, 0 },
};
static const struct enum_name E_TLS_VERSION[] = {
	{ "TLSv1.2", TLS1_2_VERSION }, { "TLSv1.3", TLS1_3_VERSION }, { NULL, 0 },
};
static const struct enum_name E_LEVEL[] = {
	{ "error", LOG_LVL_ERROR }, { "warn", LOG_LVL_WARN }, { "info", LOG_LVL_INFO },
	{ "debug", LOG_LVL_DEBUG }, { NULL, 0 },
};

#define S(f)	OFF(server.f)
#define T(f)	OFF(tls.f)
#define I(f)	OFF(identity.f)
#define K(f)	OFF(kerberos.f)
#define B(f)	OFF(backend.f)
#define L(f)	OFF(ldap.f)
#define D(f)	OFF(devices.f)
#define G(f)	OFF(log.f)

/* Every key of SPEC §3 with its default. Order = config_dump order. */
static const struct key keys[] = {
	{ SEC_SERVER, "listen", &KIND_ADDRS, S(n_listen), S(listen), "0.0.0.0:443",
	  K_NUMERIC, 0, CONFIG_MAX_LISTEN, NULL, NULL },
	{ SEC_SERVER, "workers", &KIND_WORKERS, S(workers), 0, "auto", 0, 1, 256, NULL, NULL },
	{ SEC_SERVER, "user", &KIND_STR, S(user), 0, "eas-kcd-proxy", K_NOSPACE, 0, 0, NULL, NULL },
	{ SEC_SERVER, "pid_file", &KIND_PATH, S(pid_file), 0, "", 0, 0, 0, NULL, NULL },
	{ SEC_SERVER, "chroot", &KIND_PATH, S(chroot), 0, "", 0, 0, 0, NULL, NULL },
	{ SEC_SERVER, "admin_listen", &KIND_ADDR_OPT, S(admin_listen), S(has_admin),
	  "127.0.0.1:9090", K_NUMERIC, 0, 0, NULL, NULL },
	{ SEC_SERVER, "proxy_protocol", &KIND_BOOL, S(proxy_protocol), 0, "off", 0, 0, 0, NULL, NULL },
	{ SEC_SERVER, "paths", &KIND_LIST, S(paths), 0,
	  "/Microsoft-Server-ActiveSync, /autodiscover", K_SLASH | K_NOSPACE, 0, 0, NULL, NULL },
	{ SEC_SERVER, "max_header_size", &KIND_SIZE, S(max_header_size), 0, "32k", 0, 0, 0, NULL, NULL },
	{ SEC_SERVER, "max_body_size", &KIND_SIZE, S(max_body_size), 0, "64m", 0, 0, 0, NULL, NULL },
	{ SEC_SERVER, "client_header_timeout", &KIND_DURATION, S(client_header_timeout), 0,
	  "30s", 0, 0, 0, NULL, NULL },
	{ SEC_SERVER, "request_timeout", &KIND_DURATION, S(request_timeout), 0, "3660s",
	  0, 0, 0, NULL, NULL },
	{ SEC_SERVER, "idle_timeout", &KIND_DURATION, S(idle_timeout), 0, "120s", 0, 0, 0, NULL, NULL },
	{ SEC_SERVER, "shutdown_timeout", &KIND_DURATION, S(shutdown_timeout), 0, "60s",
	  0, 0, 0, NULL, NULL },

	{ SEC_TLS, "certificate", &KIND_FILE, T(certificate), 0,
	  "/etc/eas-kcd-proxy/server.pem", 0, 0, 0, NULL, NULL },
	{ SEC_TLS, "key", &KIND_FILE, T(key), 0, "/etc/eas-kcd-proxy/server.key",
	  K_SECRET, 0, 0, NULL, NULL },
	{ SEC_TLS, "client_ca", &KIND_FILE, T(client_ca), 0,
	  "/etc/eas-kcd-proxy/device-ca.pem", 0, 0, 0, NULL, NULL },
	{ SEC_TLS, "crl", &KIND_FILES, T(crl), 0, "", 0, 0, 0, NULL, NULL },
	{ SEC_TLS, "verify_depth", &KIND_UINT, T(verify_depth), 0, "4", 0, 1, 100, NULL, NULL },
	{ SEC_TLS, "min_version", &KIND_ENUM, T(min_version), 0, "TLSv1.2", 0, 0, 0,
	  E_TLS_VERSION, NULL },
	{ SEC_TLS, "ciphers", &KIND_STR, T(ciphers), 0, "", K_NOSPACE, 0, 0, NULL, NULL },
	{ SEC_TLS, "require_client_auth_eku", &KIND_BOOL, T(require_client_auth_eku), 0,
	  "yes", 0, 0, 0, NULL, NULL },
	{ SEC_TLS, "ocsp", &KIND_ENUM, T(ocsp), 0, "off", 0, 0, 0, E_OCSP, NULL },
	{ SEC_TLS, "ocsp_responder", &KIND_STR, T(ocsp_responder), 0, "", K_NOSPACE,
	  0, 0, NULL, NULL },
	{ SEC_TLS, "ocsp_timeout", &KIND_DURATION, T(ocsp_timeout), 0, "3s", 0, 0, 0, NULL, NULL },

	{ SEC_IDENTITY, "source", &KIND_ENUM, I(source), 0, "san_upn", 0, 0, 0, E_SOURCE, NULL },
	{ SEC_IDENTITY, "realm", &KIND_STR, I(realm), 0, "", K_REQUIRED | K_NOSPACE,
	  0, 0, NULL, "EXAMPLE.TEST" },
	{ SEC_IDENTITY, "suffix_realms", &KIND_SUFFIX_REALMS, I(suffix_realms), 0, "",
	  0, 0, 0, NULL, NULL },
	{ SEC_IDENTITY, "allowed_suffixes", &KIND_LIST, I(allowed_suffixes), 0, "",
	  K_LOWER | K_NOSPACE, 0, 0, NULL, NULL },
	{ SEC_IDENTITY, "check_user_param", &KIND_BOOL, I(check_user_param), 0, "yes",
	  0, 0, 0, NULL, NULL },
	{ SEC_IDENTITY, "allow_ia5_upn", &KIND_BOOL, I(allow_ia5_upn), 0, "no", 0, 0, 0, NULL, NULL },

	{ SEC_KERBEROS, "keytab", &KIND_FILE, K(keytab), 0, "/etc/eas-kcd-proxy/proxy.keytab",
	  K_SECRET, 0, 0, NULL, NULL },
	{ SEC_KERBEROS, "principal", &KIND_STR, K(principal), 0, "", K_REQUIRED | K_NOSPACE,
	  0, 0, NULL, "HTTP/proxy.example.test@EXAMPLE.TEST" },
	{ SEC_KERBEROS, "krb5_conf", &KIND_FILE, K(krb5_conf), 0, "", 0, 0, 0, NULL, NULL },
	{ SEC_KERBEROS, "credential_ttl", &KIND_DURATION, K(credential_ttl), 0, "10m",
	  0, 0, 0, NULL, NULL },
	{ SEC_KERBEROS, "negative_ttl", &KIND_DURATION, K(negative_ttl), 0, "30s", 0, 0, 0, NULL, NULL },
	{ SEC_KERBEROS, "kdc_timeout", &KIND_DURATION, K(kdc_timeout), 0, "5s", 0, 0, 0, NULL, NULL },
	{ SEC_KERBEROS, "kdc_concurrency", &KIND_UINT, K(kdc_concurrency), 0, "16", 0, 1, 1024,
	  NULL, NULL },
	{ SEC_KERBEROS, "channel_bindings", &KIND_ENUM, K(channel_bindings), 0, "auto", 0, 0, 0,
	  E_TRI, NULL },

	{ SEC_BACKEND, "servers", &KIND_ADDRS, B(n_servers), B(servers), "", K_REQUIRED,
	  443, CONFIG_MAX_LIST, NULL, "exchange.example.test:443" },
	{ SEC_BACKEND, "tls", &KIND_BOOL, B(tls), 0, "on", 0, 0, 0, NULL, NULL },
	{ SEC_BACKEND, "ca", &KIND_FILE, B(ca), 0, "", 0, 0, 0, NULL, NULL },
	{ SEC_BACKEND, "connect_to", &KIND_ADDR_OPT, B(connect_to), B(has_connect_to), "",
	  K_PORTOPT, 0, 0, NULL, NULL },
	{ SEC_BACKEND, "spn", &KIND_SPN, B(spn), 0, "", K_REQUIRED, 0, 0, NULL,
	  "HTTP/exchange.example.test" },
	{ SEC_BACKEND, "host_header", &KIND_STR, B(host_header), 0, "", K_NOSPACE, 0, 0, NULL, NULL },
	{ SEC_BACKEND, "connect_timeout", &KIND_DURATION, B(connect_timeout), 0, "5s",
	  0, 0, 0, NULL, NULL },
	{ SEC_BACKEND, "pool_idle", &KIND_DURATION, B(pool_idle), 0, "60s", 0, 0, 0, NULL, NULL },
	{ SEC_BACKEND, "health_check", &KIND_DURATION, B(health_check), 0, "10s", 0, 0, 0, NULL, NULL },

	{ SEC_LDAP, "uri", &KIND_STR, L(uri), 0, "", 0, 0, 0, NULL, NULL },
	{ SEC_LDAP, "bind", &KIND_ENUM, L(bind), 0, "gssapi", 0, 0, 0, E_BIND, NULL },
	{ SEC_LDAP, "bind_dn", &KIND_STR, L(bind_dn), 0, "", 0, 0, 0, NULL, NULL },
	{ SEC_LDAP, "bind_password_file", &KIND_FILE, L(bind_password_file), 0, "",
	  K_SECRET, 0, 0, NULL, NULL },
	{ SEC_LDAP, "base_dn", &KIND_STR, L(base_dn), 0, "", 0, 0, 0, NULL, NULL },
	{ SEC_LDAP, "user_filter", &KIND_STR, L(user_filter), 0, "(userPrincipalName=%u)",
	  0, 0, 0, NULL, NULL },
	{ SEC_LDAP, "require_group", &KIND_STR, L(require_group), 0, "", 0, 0, 0, NULL, NULL },
	{ SEC_LDAP, "strong_mapping", &KIND_ENUM, L(strong_mapping), 0, "off", 0, 0, 0,
	  E_STRONG, NULL },
	{ SEC_LDAP, "cache_ttl", &KIND_DURATION, L(cache_ttl), 0, "5m", 0, 0, 0, NULL, NULL },
	{ SEC_LDAP, "on_failure", &KIND_ENUM, L(on_failure), 0, "deny", 0, 0, 0,
	  E_ON_FAILURE, NULL },
	{ SEC_LDAP, "ca", &KIND_FILE, L(ca), 0, "", 0, 0, 0, NULL, NULL },
	{ SEC_LDAP, "timeout", &KIND_DURATION, L(timeout), 0, "5s", 0, 0, 0, NULL, NULL },
	{ SEC_LDAP, "allow_weak_mapping", &KIND_BOOL, L(allow_weak_mapping), 0, "no", 0, 0, 0,
	  NULL, NULL },

	{ SEC_DEVICES, "allow_file", &KIND_FILE, D(allow_file), 0, "", 0, 0, 0, NULL, NULL },
	{ SEC_DEVICES, "deny_file", &KIND_FILE, D(deny_file), 0, "", 0, 0, 0, NULL, NULL },

	{ SEC_LOG, "error_log", &KIND_ERROR_LOG, G(error_log), 0, "stderr", 0, 0, 0, NULL, NULL },
	{ SEC_LOG, "level", &KIND_ENUM, G(level), 0, "info", 0, 0, 0, E_LEVEL, NULL },
	{ SEC_LOG, "access_log", &KIND_ACCESS_LOG, G(access_log), 0,
	  "/var/log/eas-kcd-proxy/access.log", 0, 0, 0, NULL, NULL },
	{ SEC_LOG, "access_format", &KIND_ENUM, G(access_format), 0, "w3c", 0, 0, 0,
	  E_ACCESS_FORMAT, NULL },
};

#undef S
#undef T
#undef I
#undef K
#undef B
#undef L
#undef D
#undef G

#define NKEYS	(sizeof(keys) / sizeof(keys[0]))
_Static_assert(sizeof(keys) / sizeof(keys[0]) <= MAX_KEYS, "raise MAX_KEYS");

static int
find_key(int sec, const char *name)
{
	for (unsigned i = 0; i < NKEYS; i++)
		if ((int)keys[i].sec == sec && strcmp(keys[i].name, name) == 0)
			return (int)i;
	return -1;
}

/* The index of a key we know exists (our own invariant). */
static unsigned
key_index(enum section sec, const char *name)
{
	int i = find_key((int)sec, name);

	if (i < 0)
		abort();
	return (unsigned)i;
}

static int
find_section(const char *name)
{
	for (int i = 0; i < SEC__N; i++)
		if (strcmp(section_names[i], name) == 0)
			return i;
	return SEC_UNKNOWN;
}

/* ---- the reader in front of inih ------------------------------------ */

/* Report an unknown key in [sec], with a hint: the section it belongs to
 * or the nearest key name. */
static void
unknown_key(struct ctx *c, const char *name)
{
	const char *best = NULL;
	unsigned bestd = UINT_MAX;
	const char *sec = section_names[c->section];

	for (unsigned i = 0; i < NKEYS; i++) {
		if (strcmp(keys[i].name, name) == 0) {
			ERR(c, c->lineno, "unknown key '%s' in [%s]; it belongs in "
			    "[%s]", name, sec, section_names[keys[i].sec]);
			return;
		}
	}
	for (unsigned i = 0; i < NKEYS; i++) {
		unsigned d;

		if ((int)keys[i].sec != c->section)
			continue;
		d = edit_distance(name, keys[i].name);
		if (d < bestd) {
			bestd = d;
			best = keys[i].name;
		}
	}
	if (best && close_enough(name, best, bestd))
		ERR(c, c->lineno, "unknown key '%s' in [%s]; did you mean '%s'?",
		    name, sec, best);
	else
		ERR(c, c->lineno, "unknown key '%s' in [%s]; see "
		    "eas-kcd-proxy.conf.example for the keys of [%s]", name, sec, sec);
}

static void
unknown_section(struct ctx *c, const char *name)
{
	const char *best = NULL;
	unsigned bestd = UINT_MAX;

	for (int i = 0; i < SEC__N; i++) {
		unsigned d = edit_distance(name, section_names[i]);

		if (d < bestd) {
			bestd = d;
			best = section_names[i];
		}
	}
	if (best && close_enough(name, best, bestd))
		ERR(c, c->lineno, "unknown section [%s]; did you mean [%s]?", name, best);
	else
		ERR(c, c->lineno, "unknown section [%s]; use [server], [tls], "
		    "[identity], [kerberos], [backend], [ldap], [devices] or [log]", name);
}

/* Turn one raw line into what inih should see: "", "[section]" or
 * "key=value". Problems are reported here and the line becomes "". */
static void
clean_line(struct ctx *c, char *line, size_t n, char *out, size_t outlen)
{
	char *p, *eq, *key, *val;

	out[0] = '\0';
	if (c->lineno == 1 && n >= 3 && memcmp(line, "\xEF\xBB\xBF", 3) == 0) {
		line += 3;	/* UTF-8 byte order mark */
		n -= 3;
	}
	while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		line[--n] = '\0';
	if (strlen(line) != n) {
		ERR(c, c->lineno, "NUL byte in the line; save the file as plain text");
		return;
	}
	for (p = line; *p; p++) {
		unsigned char ch = (unsigned char)*p;

		if ((ch < 0x20 && ch != '\t') || ch == 0x7f) {
			ERR(c, c->lineno, "control character 0x%02x in the line; "
			    "save the file as plain text", ch);
			return;
		}
	}
	/* Comments: a line starting with ';' or '#', or one of them after a
	 * blank anywhere in the line. */
	p = trim(line);
	if (*p == ';' || *p == '#')
		return;
	for (char *q = p; *q; q++) {
		if ((*q == ';' || *q == '#') && q > p && is_blank((unsigned char)q[-1])) {
			*q = '\0';
			break;
		}
	}
	p = trim(p);
	if (!*p)
		return;

	if (*p == '[') {
		char *rb = strchr(p, ']');
		char *name;

		if (!rb) {
			ERR(c, c->lineno, "syntax error: missing ']' in section "
			    "header '%s'", p);
			c->section = SEC_UNKNOWN;
			return;
		}
		if (rb[1]) {
			ERR(c, c->lineno, "syntax error: text after ']' in '%s'; "
			    "put only [section] on the line", p);
			c->section = SEC_UNKNOWN;
			return;
		}
		*rb = '\0';
		name = trim(p + 1);
		if (!*name) {
			ERR(c, c->lineno, "empty section name []; use [server], "
			    "[tls], [identity], [kerberos], [backend], [ldap], [devices] or [log]");
			c->section = SEC_UNKNOWN;
			return;
		}
		c->section = find_section(name);
		if (c->section == SEC_UNKNOWN)
			unknown_section(c, name);	/* inih sees "" */
		else
			snprintf(out, outlen, "[%s]", name);
		return;
	}

	if (!(eq = strchr(p, '='))) {
		ERR(c, c->lineno, "syntax error: '%s' is neither 'key = value' "
		    "nor '[section]'", p);
		return;
	}
	*eq = '\0';
	key = trim(p);
	val = trim(eq + 1);
	if (!*key) {
		ERR(c, c->lineno, "syntax error: no key name before '='");
		return;
	}
	for (char *q = key; *q; q++) {
		if (!isalnum((unsigned char)*q) && *q != '_' && *q != '-') {
			ERR(c, c->lineno, "syntax error: bad key name '%s'; key "
			    "names are letters, digits and '_'", key);
			return;
		}
	}
	/* out holds "key=value", the reader adds "\n"; inih's line buffer
	 * is fixed (INI_MAX_LINE, 200 in Debian's build), so say so here
	 * instead of letting inih cut the value. */
	if (strlen(key) + 1 + strlen(val) + 2 > outlen) {
		ERR(c, c->lineno, "line too long: the setting is %zu characters "
		    "and at most %zu are supported (blanks around '=' and the "
		    "comment do not count); shorten the value", strlen(key) + 1 +
		    strlen(val), outlen - 2);
		return;
	}
	/* fits: checked above; memcpy keeps -Wformat-truncation quiet */
	{
		size_t kl = strlen(key), vl = strlen(val);
		memcpy(out, key, kl);
		out[kl] = '=';
		memcpy(out + kl + 1, val, vl + 1);
	}
}

/* inih's fgets-style reader: one line of the file per call, cleaned up
 * (see clean_line), so inih's line count stays ours. */
static char *
reader(char *str, int num, void *stream)
{
	struct ctx *c = stream;
	char out[4096];
	ssize_t n;
	size_t lim;

	if (num < 8)
		return NULL;
	n = getline(&c->raw, &c->rawcap, c->fp);
	if (n < 0)
		return NULL;
	c->lineno++;
	lim = (size_t)num - 1;		/* room for "\n" and the NUL */
	if (lim > sizeof(out))
		lim = sizeof(out);
	clean_line(c, c->raw, (size_t)n, out, lim);
	snprintf(str, (size_t)num, "%s\n", out);
	return str;
}

static int
handler(void *user, const char *section, const char *name, const char *value)
{
	struct ctx *c = user;
	char msg[MSGLEN];
	int i;

	(void)section;	/* c->section is the same, already validated */
	if (c->section == SEC_UNKNOWN)
		return 1;	/* reported at the header */
	if (c->section == SEC_NONE) {
		int other = -1;

		for (unsigned j = 0; j < NKEYS && other < 0; j++)
			if (strcmp(keys[j].name, name) == 0)
				other = (int)keys[j].sec;
		if (other >= 0)
			ERR(c, c->lineno, "key '%s' is outside any section; put "
			    "it under [%s]", name, section_names[other]);
		else
			ERR(c, c->lineno, "key '%s' is outside any section; start "
			    "the file with a [section] line", name);
		return 1;
	}
	if ((i = find_key(c->section, name)) < 0) {
		unknown_key(c, name);
		return 1;
	}
	if (c->set_line[i]) {
		ERR(c, c->lineno, "duplicate key '%s' in [%s] (first set at line "
		    "%u); keep one", name, section_names[c->section], c->set_line[i]);
		return 1;
	}
	c->set_line[i] = c->lineno;
	if (keys[i].kind->set(c, &keys[i], value, msg, sizeof(msg)) < 0) {
		c->failed[i] = 1;
		ERR(c, c->lineno, "%s", msg);
	}
	return 1;
}

/* ---- validation ----------------------------------------------------- */

static unsigned
line_of(const struct ctx *c, enum section sec, const char *name)
{
	return c->set_line[key_index(sec, name)];
}

static int
key_failed(const struct ctx *c, enum section sec, const char *name)
{
	return c->failed[key_index(sec, name)];
}

/* Is the file at path readable as a regular file? 0, or -1 with why. */
static int
check_readable(const char *path, struct stat *st, char *why, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);

	if (fd < 0) {
		snprintf(why, len, "%s", strerror(errno));
		return -1;
	}
	if (fstat(fd, st) < 0) {
		snprintf(why, len, "%s", strerror(errno));
		close(fd);
		return -1;
	}
	close(fd);
	if (!S_ISREG(st->st_mode)) {
		snprintf(why, len, "not a regular file");
		return -1;
	}
	return 0;
}

static void
check_file(struct ctx *c, unsigned ki, const char *path)
{
	const struct key *k = &keys[ki];
	unsigned line = c->set_line[ki];
	struct stat st;
	char why[256];

	if (check_readable(path, &st, why, sizeof(why)) < 0) {
		if (line)
			ERR(c, line, "cannot read %s '%s': %s; fix the path or the "
			    "permissions (relative paths start at %s)", k->name,
			    path, why, c->dir);
		else
			ERR(c, 0, "cannot read %s '%s' (the default for [%s] %s): "
			    "%s; put the file there or set %s", k->name, path,
			    section_names[k->sec], k->name, why, k->name);
		return;
	}
	if ((k->flags & K_SECRET) && (st.st_mode & (S_IROTH | S_IWOTH)))
		WARN(c, line, "%s '%s' is accessible to every user; chmod o-rwx it",
		    k->name, path);
}

static int
is_loopback(const struct config_addr *a)
{
	if (a->ss.ss_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)&a->ss)->sin_addr.s_addr) >> 24) == 127;
	if (a->ss.ss_family == AF_INET6)
		return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)&a->ss)->sin6_addr);
	return 0;
}

static int
suffix_maps(const struct config *cfg, const char *suffix)
{
	if (cfg->identity.realm && strcasecmp(cfg->identity.realm, suffix) == 0)
		return 1;
	for (unsigned i = 0; i < cfg->identity.n_suffix_realms; i++)
		if (strcmp(cfg->identity.suffix_realms[i].suffix, suffix) == 0)
			return 1;
	return 0;
}

static void
require_positive(struct ctx *c, enum section sec, const char *name,
    uint64_t v, const char *example)
{
	if (v == 0 && !key_failed(c, sec, name))
		ERR(c, line_of(c, sec, name), "%s must be greater than 0; e.g. "
		    "%s = %s", name, name, example);
}

/* Fill in what derives from other keys: host_header, connect_to's port. */
static int
resolve_derived(struct ctx *c)
{
	struct config *cfg = c->cfg;

	if (!cfg->backend.host_header && cfg->backend.n_servers) {
		const struct config_addr *a = &cfg->backend.servers[0];
		unsigned dport = cfg->backend.tls ? 443 : 80;
		int v6 = strchr(a->host, ':') != NULL;
		int r;

		if (a->port == dport)
			r = asprintf(&cfg->backend.host_header, v6 ? "[%s]" : "%s", a->host);
		else
			r = asprintf(&cfg->backend.host_header, v6 ? "[%s]:%u" : "%s:%u",
			    a->host, a->port);
		if (r < 0) {
			cfg->backend.host_header = NULL;
			return -1;
		}
	}
	if (cfg->backend.has_connect_to && cfg->backend.connect_to.port == 0) {
		uint16_t port = cfg->backend.n_servers ? cfg->backend.servers[0].port : 443;

		cfg->backend.connect_to.port = port;
		if (cfg->backend.connect_to.ss.ss_family == AF_INET)
			((struct sockaddr_in *)&cfg->backend.connect_to.ss)->sin_port = htons(port);
		else if (cfg->backend.connect_to.ss.ss_family == AF_INET6)
			((struct sockaddr_in6 *)&cfg->backend.connect_to.ss)->sin6_port = htons(port);
	}
	return 0;
}

/* Every cross-check in one place (relayd load_config, nginx -t). */
static void
config_validate(struct ctx *c)
{
	struct config *cfg = c->cfg;

	/* Required keys, then files named by keys. */
	for (unsigned i = 0; i < NKEYS; i++) {
		const struct key *k = &keys[i];

		if (!(k->flags & K_REQUIRED) || c->failed[i] || !k->kind->empty(cfg, k))
			continue;
		if (c->set_line[i])
			ERR(c, c->set_line[i], "%s is empty but required in [%s]; "
			    "set e.g. %s = %s", k->name, section_names[k->sec],
			    k->name, k->example);
		else
			ERR(c, 0, "missing required key '%s' in [%s]; add e.g. "
			    "%s = %s", k->name, section_names[k->sec], k->name,
			    k->example);
	}
	for (unsigned i = 0; i < NKEYS; i++) {
		const struct key *k = &keys[i];

		if (!k->kind->files || c->failed[i])
			continue;
		if (k->kind == &KIND_FILES) {
			const struct config_list *l = CFIELD(cfg, k->off, struct config_list);

			for (unsigned j = 0; j < l->n; j++)
				check_file(c, i, l->v[j]);
		} else {
			const char *path = *CFIELD(cfg, k->off, char *);

			if (path)
				check_file(c, i, path);
		}
	}

	/* [server] */
	if (cfg->server.request_timeout <= EAS_HEARTBEAT_MAX_MS &&
	    !key_failed(c, SEC_SERVER, "request_timeout")) {
		uint64_t ms = cfg->server.request_timeout;

		/* in seconds, the unit of the heartbeat it is compared with */
		ERR(c, line_of(c, SEC_SERVER, "request_timeout"), "request_timeout "
		    "= %llu%s is too short: EAS Ping and Sync requests may wait up "
		    "to 3540s for an answer; set request_timeout = 3660s or more",
		    (unsigned long long)(ms % 1000 ? ms : ms / 1000), ms % 1000 ? "ms" : "s");
	}
	require_positive(c, SEC_SERVER, "idle_timeout", cfg->server.idle_timeout, "120s");
	require_positive(c, SEC_SERVER, "client_header_timeout",
	    cfg->server.client_header_timeout, "30s");
	if ((cfg->server.max_header_size < 1024 || cfg->server.max_header_size > 1024 * 1024) &&
	    !key_failed(c, SEC_SERVER, "max_header_size"))
		ERR(c, line_of(c, SEC_SERVER, "max_header_size"), "max_header_size "
		    "must be between 1k and 1m; e.g. max_header_size = 32k");
	require_positive(c, SEC_SERVER, "max_body_size", cfg->server.max_body_size, "64m");
	if (cfg->server.has_admin) {
		for (unsigned i = 0; i < cfg->server.n_listen; i++) {
			if (strcmp(cfg->server.listen[i].host, cfg->server.admin_listen.host) == 0 &&
			    cfg->server.listen[i].port == cfg->server.admin_listen.port)
				ERR(c, line_of(c, SEC_SERVER, "admin_listen"),
				    "admin_listen uses the same address as listen; "
				    "pick another port, e.g. 127.0.0.1:9090");
		}
		if (!is_loopback(&cfg->server.admin_listen))
			WARN(c, line_of(c, SEC_SERVER, "admin_listen"), "admin_listen "
			    "is plain HTTP without authentication and not on "
			    "loopback; keep it on 127.0.0.1 or firewall it");
	}
	if (cfg->server.chroot != NULL) {
		struct stat cst;

		if (stat(cfg->server.chroot, &cst) < 0 || !S_ISDIR(cst.st_mode))
			ERR(c, line_of(c, SEC_SERVER, "chroot"), "chroot %s is not a "
			    "directory; create it (empty is fine: workers load "
			    "everything before they enter it) or leave chroot empty",
			    cfg->server.chroot);
	}
	if (geteuid() == 0 && !key_failed(c, SEC_SERVER, "user")) {
		unsigned line = line_of(c, SEC_SERVER, "user");
		const char *u = cfg->server.user;
		struct passwd *pw;

		if (!u)
			ERR(c, line, "user is empty, so workers would keep root "
			    "privileges; set user = eas-kcd-proxy (create it with "
			    "useradd --system eas-kcd-proxy)");
		else if (!(pw = getpwnam(u)))
			ERR(c, line, "user '%s' does not exist; create it with "
			    "`useradd --system --no-create-home --shell "
			    "/usr/sbin/nologin %s` or set user to an existing "
			    "unprivileged account", u, u);
		else if (pw->pw_uid == 0)
			WARN(c, line, "user '%s' is root, so workers keep root "
			    "privileges; use an unprivileged account", u);
	}

	/* [tls] */
	if (cfg->tls.ocsp_responder &&
	    strncasecmp(cfg->tls.ocsp_responder, "http://", 7) != 0 &&
	    strncasecmp(cfg->tls.ocsp_responder, "https://", 8) != 0)
		ERR(c, line_of(c, SEC_TLS, "ocsp_responder"), "ocsp_responder '%s' "
		    "is not an http:// URL; e.g. ocsp_responder = "
		    "http://ocsp.example.test/ or leave it empty to use the "
		    "certificate's AIA", cfg->tls.ocsp_responder);
	if (cfg->tls.ocsp != OCSP_OFF)
		require_positive(c, SEC_TLS, "ocsp_timeout", cfg->tls.ocsp_timeout, "3s");

	/* [identity] */
	if (cfg->identity.realm && strchr(cfg->identity.realm, '@'))
		ERR(c, line_of(c, SEC_IDENTITY, "realm"), "realm '%s' must not "
		    "contain '@'; write the realm alone, e.g. EXAMPLE.TEST",
		    cfg->identity.realm);
	for (unsigned i = 0; i < cfg->identity.allowed_suffixes.n; i++) {
		const char *s = cfg->identity.allowed_suffixes.v[i];

		if (!suffix_maps(cfg, s))
			ERR(c, line_of(c, SEC_IDENTITY, "allowed_suffixes"),
			    "allowed suffix '%s' maps to no realm; make it the "
			    "realm or add '%s:REALM' to suffix_realms", s, s);
	}
	if (cfg->identity.source == ID_SRC_LDAP && !cfg->ldap.uri)
		ERR(c, line_of(c, SEC_IDENTITY, "source"), "source = ldap needs "
		    "the directory; set [ldap] uri, e.g. uri = ldaps://dc.example.test");

	/* [kerberos] */
	require_positive(c, SEC_KERBEROS, "credential_ttl", cfg->kerberos.credential_ttl, "10m");
	require_positive(c, SEC_KERBEROS, "kdc_timeout", cfg->kerberos.kdc_timeout, "5s");

	/* [backend] */
	require_positive(c, SEC_BACKEND, "connect_timeout", cfg->backend.connect_timeout, "5s");
	if (!cfg->backend.tls) {
		if (cfg->kerberos.channel_bindings == TRI_ON)
			ERR(c, line_of(c, SEC_KERBEROS, "channel_bindings"),
			    "channel_bindings = on needs [backend] tls = on; set "
			    "channel_bindings = auto or off");
		if (!key_failed(c, SEC_BACKEND, "tls"))
			WARN(c, line_of(c, SEC_BACKEND, "tls"), "backend tls is off: "
			    "Negotiate tokens and mail cross the network in clear; "
			    "use it only in a lab");
	}

	/* [ldap] */
	if (cfg->ldap.strong_mapping != STRONG_OFF && !cfg->ldap.uri)
		ERR(c, line_of(c, SEC_LDAP, "strong_mapping"), "strong_mapping "
		    "needs the directory; set uri, e.g. uri = ldaps://dc.example.test, "
		    "or strong_mapping = off");
	if (cfg->ldap.require_group && !cfg->ldap.uri)
		ERR(c, line_of(c, SEC_LDAP, "require_group"), "require_group needs "
		    "the directory; set uri, e.g. uri = ldaps://dc.example.test");
	if (cfg->ldap.uri) {
		unsigned line = line_of(c, SEC_LDAP, "uri");
		char *copy = strdup(cfg->ldap.uri), *save = NULL;

		if (!copy) {
			c->oom = 1;
			return;
		}
		for (char *u = strtok_r(copy, " ,", &save); u; u = strtok_r(NULL, " ,", &save)) {
			if (strncasecmp(u, "ldap://", 7) != 0 &&
			    strncasecmp(u, "ldaps://", 8) != 0 &&
			    strncasecmp(u, "ldapi://", 8) != 0)
				ERR(c, line, "uri '%s' is not an LDAP URI; write "
				    "ldaps://host or ldap://host", u);
		}
		free(copy);
		if (!cfg->ldap.base_dn)
			ERR(c, line_of(c, SEC_LDAP, "base_dn") ? line_of(c, SEC_LDAP,
			    "base_dn") : line, "the directory needs base_dn for "
			    "user lookups; e.g. base_dn = DC=example,DC=test");
		if (!cfg->ldap.user_filter || !strstr(cfg->ldap.user_filter, "%u"))
			ERR(c, line_of(c, SEC_LDAP, "user_filter"), "user_filter must "
			    "contain %%u (the user); e.g. user_filter = "
			    "(userPrincipalName=%%u)");
		require_positive(c, SEC_LDAP, "timeout", cfg->ldap.timeout, "5s");
		if (cfg->ldap.bind == LDAP_BIND_SIMPLE) {
			unsigned bl = line_of(c, SEC_LDAP, "bind");

			if (!cfg->ldap.bind_dn)
				ERR(c, bl, "bind = simple needs bind_dn; e.g. bind_dn "
				    "= CN=easproxy,CN=Users,DC=example,DC=test");
			if (!cfg->ldap.bind_password_file &&
			    !key_failed(c, SEC_LDAP, "bind_password_file"))
				ERR(c, bl, "bind = simple needs bind_password_file "
				    "(a file holding only the password)");
		}
	}

	/* [log] */
	if (cfg->log.access_log) {
		char *dir = strdup(cfg->log.access_log), *slash;
		struct stat st;

		if (!dir) {
			c->oom = 1;
			return;
		}
		if ((slash = strrchr(dir, '/')) && slash != dir) {
			*slash = '\0';
			if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
				WARN(c, line_of(c, SEC_LOG, "access_log"), "access_log "
				    "directory %s does not exist; create it or set "
				    "access_log = off", dir);
		}
		free(dir);
	}
}

/* ---- load, free, dump ----------------------------------------------- */

static int
config_dir(const char *file, char **out)
{
	char *copy = NULL, *slash, *dir = NULL;
	int rc = -1;

	if (!(copy = strdup(file)))
		goto cleanup;
	slash = strrchr(copy, '/');
	if (slash == copy)
		copy[1] = '\0';
	else if (slash)
		*slash = '\0';
	else
		strcpy(copy, ".");
	if (!(dir = realpath(copy, NULL)))
		goto cleanup;
	*out = dir;
	rc = 0;
cleanup:
	free(copy);
	return rc;
}

/*
 * Load from file, or (text != NULL) from len bytes of INI text that name
 * stands for in messages. Both go through the same reader, setters and
 * validation.
 */
static struct config *
load(const char *file, const char *text, size_t len, struct config_errors *errs)
{
	struct ctx c;
	struct config *ret = NULL;
	struct stat st;
	char msg[MSGLEN];
	int rc;

	memset(&c, 0, sizeof(c));
	c.file = file;
	c.section = SEC_NONE;
	if (!(c.cfg = calloc(1, sizeof(*c.cfg))) || !(c.cfg->file = strdup(file))) {
		c.oom = 1;
		goto cleanup;
	}
	if (text != NULL) {
		/* fmemopen refuses a zero-length buffer: an empty text is an
		 * empty line */
		if (!(c.fp = len ? fmemopen((void *)(uintptr_t)text, len, "r") :
		    fmemopen((void *)(uintptr_t)"\n", 1, "r"))) {
			ERR(&c, 0, "cannot read: %s", strerror(errno));
			goto cleanup;
		}
		if (!(c.dir = realpath(".", NULL))) {
			ERR(&c, 0, "cannot resolve the current directory: %s", strerror(errno));
			goto cleanup;
		}
	} else {
		if (!(c.fp = fopen(file, "re"))) {
			ERR(&c, 0, "cannot read: %s", strerror(errno));
			goto cleanup;
		}
		if (fstat(fileno(c.fp), &st) < 0 || !S_ISREG(st.st_mode)) {
			ERR(&c, 0, "cannot read: not a regular file");
			goto cleanup;
		}
		if (config_dir(file, &c.dir) < 0) {
			ERR(&c, 0, "cannot read: %s", strerror(errno));
			goto cleanup;
		}
	}

	/* Defaults go through the same setters as the file's values. */
	for (unsigned i = 0; i < NKEYS; i++) {
		if (keys[i].kind->set(&c, &keys[i], keys[i].def, msg, sizeof(msg)) < 0) {
			ERR(&c, 0, "internal error: default of %s: %s", keys[i].name, msg);
			goto cleanup;
		}
	}

	rc = ini_parse_stream(reader, &c, handler, &c);
	if (ferror(c.fp))
		ERR(&c, 0, "cannot read: %s", strerror(errno));
	if (rc == -2)
		c.oom = 1;
	else if (rc > 0 && c.errs.n == 0)
		ERR(&c, (unsigned)rc, "syntax error");
	if (resolve_derived(&c) < 0)
		c.oom = 1;
	/* Even after parse errors, so one -t run shows every problem; checks
	 * that depend on a rejected value skip it (c.failed). */
	if (!c.oom)
		config_validate(&c);
	if (c.errs.n == 0 && !c.oom) {
		diags_move(&c.warns, &c.cfg->warnings);
		ret = c.cfg;
		c.cfg = NULL;
	}
cleanup:
	if (c.oom)
		ERR(&c, 0, "out of memory");
	if (!ret) {
		diags_move(&c.errs, errs);
		if (errs->n == 0 && errs->dropped == 0)
			errs->dropped = 1;	/* not even a message could be made */
	}
	diags_free(&c.errs);
	diags_free(&c.warns);
	config_free(c.cfg);
	if (c.fp)
		fclose(c.fp);
	free(c.raw);
	free(c.dir);
	return ret;
}

struct config *
config_load(const char *file, struct config_errors *errs)
{
	return load(file, NULL, 0, errs);
}

struct config *
config_load_text(const char *name, const char *text, size_t len, struct config_errors *errs)
{
	return load(name, text != NULL ? text : "", text != NULL ? len : 0, errs);
}

int
config_key_exists(const char *section, const char *key)
{
	int sec = find_section(section);

	return sec >= 0 && find_key(sec, key) >= 0;
}

void
config_free(struct config *cfg)
{
	if (!cfg)
		return;
	for (unsigned i = 0; i < NKEYS; i++)
		if (keys[i].kind->release)
			keys[i].kind->release(cfg, &keys[i]);
	config_errors_clear(&cfg->warnings);
	free(cfg->file);
	free(cfg);
}

void
config_errors_clear(struct config_errors *errs)
{
	if (!errs)
		return;
	for (unsigned i = 0; i < errs->n; i++)
		free(errs->msg[i]);
	memset(errs, 0, sizeof(*errs));
}

void
config_dump(const struct config *cfg, FILE *fp)
{
	int sec = -1;

	fprintf(fp, "; effective configuration of %s\n", cfg->file ? cfg->file : "?");
	for (unsigned i = 0; i < NKEYS; i++) {
		if ((int)keys[i].sec != sec) {
			sec = (int)keys[i].sec;
			fprintf(fp, "\n[%s]\n", section_names[sec]);
		}
		keys[i].kind->dump(cfg, &keys[i], fp);
	}
}
