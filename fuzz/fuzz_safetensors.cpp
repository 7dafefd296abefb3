// fuzz/fuzz_safetensors.cpp — libFuzzer target for safetensors files (hf.cpp): the input, written
// to a file, is opened with SafeTensors (which validates the whole header), then every tensor it
// lists is read with the reader its dtype calls for (read_f32, read_i32, read_u8, read_raw).
// Build: make fuzz. Run: build/fuzz/fuzz_safetensors -timeout=10 NEW_DIR fuzz/corpus/safetensors
// (fuzz/README.md).
#include "../hf.h"
#include "fuzz_util.h"

static void read_every_tensor(SafeTensors& st) {
    for (const auto& kv : st.tensors) {
        const StTensor& t = kv.second;
        if (st_dtype_to_dtype(t.dtype) >= 0) {
            st.read_f32(t.name, t.shape);
        } else if (t.dtype == "I32" || t.dtype == "I64") {
            st.read_i32(t.name);
        } else if (t.dtype == "U8") {
            st.read_u8(t.name);
        } else {
            std::vector<uint8_t> raw((size_t)(t.end - t.begin));
            st.read_raw(t, raw.data());
        }
    }
}

static bool fuzz_safetensors(const uint8_t* data, size_t size) {
    const std::string path = fuzz_write("model.safetensors", data, size);
    return fuzz_accepts([&] {
        SafeTensors st(path);
        read_every_tensor(st);
    });
}
FUZZ_TARGET(fuzz_safetensors)
