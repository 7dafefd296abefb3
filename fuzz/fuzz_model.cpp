// fuzz/fuzz_model.cpp — libFuzzer target for the model file (model.cpp): the input, written to a
// file, goes to read_model_header and then load_model_f32 (dense f32/f16/bf16 and NF4 linears).
// Build: make fuzz. Run: build/fuzz/fuzz_model -timeout=10 NEW_DIR fuzz/corpus/model (fuzz/README.md).
#include "fuzz_util.h"

static bool fuzz_model(const uint8_t* data, size_t size) {
    const std::string path = fuzz_write("model.bin", data, size);
    const bool header_ok = fuzz_accepts([&] {
        InFile in(path);
        read_model_header(in);
    });
    std::vector<float> weights;
    return fuzz_accepts([&] { load_model_f32(path, weights); }) || header_ok;
}
FUZZ_TARGET(fuzz_model)
