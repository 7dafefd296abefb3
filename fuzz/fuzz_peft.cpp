// fuzz/fuzz_peft.cpp — libFuzzer target for PEFT adapter directories (hf.cpp): the input is split
// by its length prefix (split_peft_input in fuzz_util.h) into adapter_config.json and
// adapter_model.safetensors, written into a directory, which read_peft_adapter reads against the
// tiny model (fuzz_tiny_config).
// Build: make fuzz. Run: build/fuzz/fuzz_peft -timeout=10 NEW_DIR fuzz/corpus/peft (fuzz/README.md).
#include "../hf.h"
#include "fuzz_util.h"

static bool fuzz_peft(const uint8_t* data, size_t size) {
    const PeftInput in = split_peft_input(data, size);
    const std::string dir = fuzz_subdir("adapter");
    fuzz_write_at(dir + "/adapter_config.json", in.config_json.data(), in.config_json.size());
    fuzz_write_at(dir + "/adapter_model.safetensors", in.safetensors.data(), in.safetensors.size());
    return fuzz_accepts([&] { read_peft_adapter(dir, fuzz_tiny_config()); });
}
FUZZ_TARGET(fuzz_peft)
