/* The library reports the version the header and the VERSION file name. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "eas_kcd_proxy.h"

static void
library_version_matches_the_header(void **state)
{
	char hdr[32];

	(void)state;
	snprintf(hdr, sizeof(hdr), "%d.%d.%d", EAS_KCD_PROXY_VERSION_MAJOR,
	    EAS_KCD_PROXY_VERSION_MINOR, EAS_KCD_PROXY_VERSION_PATCH);
	assert_string_equal(eas_kcd_proxy_version(), hdr);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(library_version_matches_the_header),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
