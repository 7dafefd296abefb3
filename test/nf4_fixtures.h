// test/nf4_fixtures.h — walking the NF4 fixtures made by bitsandbytes and comparing our tensors
// with theirs, shared by the CPU suite (test/cpu_quant.cpp) and the GPU suite (test/gpu_quant.cu).
// Every nf4_*.safetensors under $FIXTURES_DIR is used; its cases are found by scanning tensor names
// for "caseN.weight", so a new file or case of the same layout is picked up with no code change.
// Layout (../shared/README.md):
//   caseN.weight (F16/BF16 input), caseN.packed, caseN.absmax, caseN.dequant,
//   caseN.dq.{packed, absmax_q, state2_absmax, state2_code, offset, dequant}, nf4_code.
#pragma once

#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "../hf.h"
#include "../quant.h"
#include "test_util.h"

// Every nf4_*.safetensors under fixtures_dir(), as a path; none at all fails the test (it would
// pass vacuously).
inline std::vector<std::string> nf4_fixture_files() {
    std::vector<std::string> out;
    for (const std::string& f : list_dir(fixtures_dir(), "nf4_", ".safetensors")) out.push_back(fixtures_dir() + "/" + f);
    REQUIRE_MESSAGE(!out.empty(), "no nf4_*.safetensors under " << fixtures_dir());
    return out;
}

// "case0", "case1", ... in numeric order
inline std::vector<std::string> nf4_case_names(const SafeTensors& st) {
    std::vector<std::pair<long, std::string>> found;
    for (const auto& kv : st.tensors) {
        const std::string& n = kv.first;
        const std::string suffix = ".weight";
        if (n.rfind("case", 0) == 0 && n.size() > suffix.size() + 4 &&
            n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0) {
            std::string c = n.substr(0, n.size() - suffix.size());
            if (c.find('.') == std::string::npos) found.push_back({std::stol(c.substr(4)), c});
        }
    }
    std::sort(found.begin(), found.end());
    std::vector<std::string> out;
    for (auto& f : found) out.push_back(f.second);
    return out;
}

// The raw bytes of a tensor, or an InputError naming the file and tensor if it is missing.
inline std::vector<uint8_t> nf4_read_raw(SafeTensors& st, const std::string& name) {
    const StTensor& t = st.get(name);
    std::vector<uint8_t> out((size_t)(t.end - t.begin));
    st.read_raw(t, out.data());
    return out;
}

// "" when equal, else "<file> <tensor>: first difference at element i: ours X, bitsandbytes Y".
// elem_size 1 (u8 codes), 2 (bf16/fp16 bits) or 4 (fp32).
inline std::string nf4_compare(const std::string& where, const void* ours, const void* bnb, size_t bytes,
                               size_t bnb_bytes, int elem_size) {
    std::ostringstream m;
    if (bytes != bnb_bytes) {
        m << where << ": size differs: ours " << bytes << " bytes, bitsandbytes " << bnb_bytes;
        return m.str();
    }
    const uint8_t *p = (const uint8_t*)ours, *q = (const uint8_t*)bnb;
    for (size_t i = 0; i < bytes; i += elem_size) {
        if (memcmp(p + i, q + i, elem_size) == 0) continue;
        m << where << ": first difference at element " << i / elem_size << ": ";
        if (elem_size == 1) {
            m << "ours " << (int)p[i] << ", bitsandbytes " << (int)q[i];
        } else if (elem_size == 2) {
            uint16_t a, b;
            memcpy(&a, p + i, 2);
            memcpy(&b, q + i, 2);
            m << std::hex << "ours 0x" << a << ", bitsandbytes 0x" << b;
        } else {
            float a, b;
            memcpy(&a, p + i, 4);
            memcpy(&b, q + i, 4);
            m << std::hexfloat << "ours " << a << ", bitsandbytes " << b;
        }
        return m.str();
    }
    return "";
}

// The double-quantized tensor `t` (ours, of case `c`) field by field against bitsandbytes'
// c.dq.{packed, absmax_q, state2_absmax, offset}; `tag` follows the tensor name in messages (" (GPU)").
inline void nf4_check_dq_fields(SafeTensors& st, const std::string& c, const std::string& where, const Nf4Tensor& t,
                                const std::string& tag = "") {
    struct Field {
        const char* suffix;
        const void* ours;
        size_t bytes;
        int elem_size;
    };
    const Field fields[] = {
        {".dq.packed", t.packed.data(), t.packed.size(), 1},
        {".dq.absmax_q", t.absmax_q.data(), t.absmax_q.size(), 1},
        {".dq.state2_absmax", t.scale2.data(), 4 * t.scale2.size(), 4},
        {".dq.offset", &t.offset, 4, 4},
    };
    for (const Field& f : fields) {
        const std::vector<uint8_t> bnb = nf4_read_raw(st, c + f.suffix);
        const std::string m = nf4_compare(where + f.suffix + tag, f.ours, bnb.data(), f.bytes, bnb.size(), f.elem_size);
        CHECK_MESSAGE(m.empty(), m);
    }
}
