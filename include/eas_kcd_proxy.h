/*
 * eas_kcd_proxy.h — the public interface of libeaskcdproxy (SPEC §10).
 *
 * This is the only header an embedding program (an MDM vendor's gateway)
 * includes. Today it carries the version; the embedding API (create from a
 * config, run on the caller's event_base, identity and authorization hooks)
 * grows here without breaking what is already declared.
 */
#ifndef EAS_KCD_PROXY_H
#define EAS_KCD_PROXY_H

#ifdef __cplusplus
extern "C" {
#endif

#define EAS_KCD_PROXY_VERSION_MAJOR	0
#define EAS_KCD_PROXY_VERSION_MINOR	1
#define EAS_KCD_PROXY_VERSION_PATCH	0
/* Bumped whenever a declared function or type changes incompatibly. */
#define EAS_KCD_PROXY_ABI_VERSION	0

/* "0.1.0": the version of the library actually linked (compare with the
 * macros above to detect a header/library mismatch). Never NULL. */
const char *eas_kcd_proxy_version(void);

#ifdef __cplusplus
}
#endif

#endif
