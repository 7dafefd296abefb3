// fuzz/fuzz_config.cpp — libFuzzer target for a Hugging Face Llama config.json (hf.cpp): the
// input, written to a file, goes to parse_hf_config (old and new forms).
// Build: make fuzz. Run: build/fuzz/fuzz_config -timeout=10 NEW_DIR fuzz/corpus/config (fuzz/README.md).
#include "../hf.h"
#include "fuzz_util.h"

static bool fuzz_config(const uint8_t* data, size_t size) {
    const std::string path = fuzz_write("config.json", data, size);
    int32_t dtype = 0;
    return fuzz_accepts([&] { parse_hf_config(path, &dtype); });
}
FUZZ_TARGET(fuzz_config)
