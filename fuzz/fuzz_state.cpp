// fuzz/fuzz_state.cpp — libFuzzer target for ./train's checkpoint files (checkpoint.cpp): the
// input, written to a file, goes to read_state (state.bin) and, as text, to read_log (log.csv).
// Build: make fuzz. Run: build/fuzz/fuzz_state -timeout=10 NEW_DIR fuzz/corpus/state (fuzz/README.md).
#include "../checkpoint.h"
#include "fuzz_util.h"

static bool fuzz_state(const uint8_t* data, size_t size) {
    const std::string path = fuzz_write("state.bin", data, size);
    const bool state_ok = fuzz_accepts([&] { read_state(path); });
    return fuzz_accepts([&] { read_log(path); }) || state_ok;
}
FUZZ_TARGET(fuzz_state)
