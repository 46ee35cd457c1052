/*
 * eas_loadgen — the benchmark load generator (tests/bench/eas-loadgen.c)
 * built with the sanitizers into $EKP_TOOLS, so make check proves it builds
 * and works (tests/integration/test_loadgen.py). The source is shared, not
 * copied: the Makefile rebuilds this when it changes.
 */
#include "../bench/eas-loadgen.c"
