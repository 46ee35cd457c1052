/* version.c — the library's version for embedders (eas_kcd_proxy.h). */
#include "eas_kcd_proxy.h"


_Static_assert(sizeof(EKP_VERSION) > 1, "EKP_VERSION comes from the Makefile (VERSION file)");

const char *
eas_kcd_proxy_version(void)
{
	return EKP_VERSION;
}
