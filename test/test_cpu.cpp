// test/test_cpu.cpp — the doctest main of the CPU suite. The cases live in test/cpu_*.cpp.
// Run: make test   (or ./test_cpu -tc="*fixture*" for a subset; FIXTURES_DIR overrides ../shared/fixtures)
//
// A watchdog ends a run that hangs (whatever the cause: a deadlock, a subprocess that never exits)
// with one line and exit status 1 after TEST_CPU_TIMEOUT seconds (default 1800), so CI reports a
// failure instead of waiting for its own limit.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

static void on_alarm(int) {
    static const char msg[] = "test_cpu: timed out (TEST_CPU_TIMEOUT): a test hangs\n";
    (void)!write(2, msg, sizeof(msg) - 1);
    _exit(1);
}

int main(int argc, char** argv) {
    const char* t = getenv("TEST_CPU_TIMEOUT");
    signal(SIGALRM, on_alarm);
    alarm(t && *t ? (unsigned)atoi(t) : 1800u);
    doctest::Context context(argc, argv);
    return context.run();
}
