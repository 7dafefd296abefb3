// fuzz/fuzz_adapter.cpp — libFuzzer target for the adapter file (adapter.bin): the input, written
// to a file, goes to read_adapter (model.cpp); an adapter it accepts is then checked against the
// tiny model (check_adapter_matches_model), as ./sample does.
// Build: make fuzz. Run: build/fuzz/fuzz_adapter -timeout=10 NEW_DIR fuzz/corpus/adapter (fuzz/README.md).
#include "fuzz_util.h"

static bool fuzz_adapter(const uint8_t* data, size_t size) {
    const std::string path = fuzz_write("adapter.bin", data, size);
    Adapter a;
    if (!fuzz_accepts([&] { a = read_adapter(path); })) return false;
    fuzz_accepts([&] { check_adapter_matches_model(a, path.c_str(), fuzz_tiny_config(), "tiny"); });
    return true;
}
FUZZ_TARGET(fuzz_adapter)
