/*
 * Every IPC message type. IPC_MSG(ID, "name"). Requests and their answers
 * share the request id. Payload layouts are documented beside the handler
 * (proc.c for control messages, kcd.c / kcd_client.c for Kerberos).
 */
IPC_MSG(NONE,           "none")		/* never sent; 0 is invalid on the wire */

/* parent -> child control */
IPC_MSG(SHUTDOWN,       "shutdown")	/* u64 drain deadline ms: stop accepting, drain, exit */
IPC_MSG(LOG_REOPEN,     "log_reopen")	/* reopen log files (SIGUSR1) */
IPC_MSG(ACCESS_LOG_REOPEN, "access_log_reopen")	/* to workers, fd: the access log reopened (SIGUSR1) */
IPC_MSG(KCD_CHANNEL,    "kcd_channel")	/* fd: a new channel to kcd (kcd restarted) */
IPC_MSG(WORKER_CHANNEL, "worker_channel")	/* to kcd: u32 worker slot + fd of that worker's channel */

/* child -> parent */
IPC_MSG(READY,          "ready")	/* child finished start-up */
IPC_MSG(STATS,          "stats")	/* counters for /metrics (see metrics.c) */
IPC_MSG(START_FAILED,   "start_failed")	/* str cause: start-up failed, the child exits next (proc.h) */

/* worker <-> kcd (SPEC §6) */
IPC_MSG(TOKEN_REQ,      "token_req")	/* str principal, str spn, bytes cb_hash */
IPC_MSG(TOKEN_OK,       "token_ok")	/* str base64 token, u32 ctx id (0 = none kept), u64 ticket end */
IPC_MSG(TOKEN_ERR,      "token_err")	/* u32 class (kcd.h), str error name, str log text */
IPC_MSG(MUTUAL_REQ,     "mutual_req")	/* u32 ctx id, bytes token from WWW-Authenticate */
IPC_MSG(MUTUAL_OK,      "mutual_ok")
IPC_MSG(MUTUAL_ERR,     "mutual_err")	/* str error name */
IPC_MSG(CTX_RELEASE,    "ctx_release")	/* u32 ctx id: forget a kept context */
IPC_MSG(IDENTIFY_REQ,   "identify_req")	/* directory checks, see kcd_proto.h */
IPC_MSG(IDENTIFY_OK,    "identify_ok")
IPC_MSG(IDENTIFY_ERR,   "identify_err")
IPC_MSG(DOCTOR_REQ,     "doctor_req")
IPC_MSG(DOCTOR_RESP,    "doctor_resp")
