/*
 * access_log.h — one line per request (SPEC §8).
 *
 * W3C extended format (IIS style, readable by Log Parser and the tools
 * admins already use for IIS logs), or JSON lines. The file is opened with
 * O_APPEND and lines are written in whole-line batches, so every worker can
 * share it. The parent writes the #-directives when the file is new
 * (access_log_prepare) before the workers open it.
 *
 * Reopening (SIGUSR1, logrotate): workers run unprivileged and cannot open
 * a root-owned log, so the parent opens the file again — a new file gets
 * its #-directives first — and hands each worker the descriptor
 * (IPC_ACCESS_LOG_REOPEN); the worker flushes what it buffered into the old
 * file and writes to the new one from then on (access_log_reopen_fd).
 */
#ifndef EKP_ACCESS_LOG_H
#define EKP_ACCESS_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* One request's record; NULL strings are written as "-". */
struct access_rec {
	uint64_t start_ms;		/* wall clock, unix ms */
	const char *s_ip;		/* our address */
	unsigned s_port;
	const char *c_ip;		/* the device (or the PROXY protocol source) */
	const char *method;
	const char *uri_stem;
	const char *uri_query;
	const char *username;		/* mapped user@REALM */
	const char *user_agent;
	int status;			/* 0 = no HTTP answer (handshake refused) */
	uint64_t sc_bytes, cs_bytes;
	uint64_t time_taken_ms;
	const char *device_id, *device_type, *eas_cmd;
	const char *reason;		/* token with detail, "ok", "kdc_CLIENT_REVOKED" */
	const char *backend;		/* "exchange.example.test:443" */
	int64_t kdc_ms;			/* -1 = no KDC round trip */
};

/* Open (or reopen) path; format from the config. header: write the
 * #Software/#Version/#Date/#Fields directives when the file is empty (the
 * parent does this; workers pass 0). Returns 0 or -1 with err. */
int access_log_open(const char *path, enum access_format fmt, int header,
    char *err, size_t errlen);
/* Parent side: open path for appending (created 0640), write the W3C
 * directives when fmt is w3c and the file is empty, and return the
 * descriptor (close-on-exec, the caller's), or -1 with the cause in err. */
int access_log_prepare(const char *path, enum access_format fmt, char *err, size_t errlen);
/* Worker side: take over fd (from access_log_prepare, passed over IPC) as
 * the log file: the buffered lines go to the old file, which is closed.
 * When this process has no access log open, fd is closed. */
void access_log_reopen_fd(int fd);
/* Append one record (buffered; flushed by size and by access_log_flush). */
void access_log_write(const struct access_rec *rec);
void access_log_flush(void);
void access_log_close(void);

/* Render a record into buf as one line with '\n' (pure; unit-tested).
 * Returns the length, or 0 when buf is too small. */
size_t access_log_format(const struct access_rec *rec, enum access_format fmt,
    char *buf, size_t len);
/* The W3C directives block for a new file. */
size_t access_log_header(char *buf, size_t len, uint64_t now_ms);

#endif
