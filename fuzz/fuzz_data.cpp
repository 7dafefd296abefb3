// fuzz/fuzz_data.cpp — libFuzzer target for the data file (prepare_lima's output): the input,
// written to a file, goes to read_dataset (model.cpp).
// Build: make fuzz. Run: build/fuzz/fuzz_data -timeout=10 NEW_DIR fuzz/corpus/data (fuzz/README.md).
#include "fuzz_util.h"

static bool fuzz_data(const uint8_t* data, size_t size) {
    const std::string path = fuzz_write("data.bin", data, size);
    return fuzz_accepts([&] { read_dataset(path); });
}
FUZZ_TARGET(fuzz_data)
