// test/test_cpu.cpp — the doctest main of the CPU suite. The cases live in test/cpu_*.cpp.
// Run: make test   (or ./test_cpu -tc="*fixture*" for a subset; FIXTURES_DIR overrides ../shared/fixtures)
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
