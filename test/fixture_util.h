// test/fixture_util.h — helpers shared by several CPU test files: JSON files (load_json,
// save_json), a safetensors file with an edited header, a fixture's config and where each PEFT
// tensor lies in Adapter::params, PEFT tensors checked against a fixture's adapter/, running
// ./export_hf and ./convert_adapter (and a clean tool failure), where each tensor lies in an NF4
// model file, and a small synthetic data set. Users: test/cpu_hf.cpp, test/cpu_model.cpp,
// test/cpu_export_hf.cpp, test/cpu_convert_adapter.cpp (fixtures and tools), test/cpu_schedule.cpp,
// test/cpu_checkpoint.cpp, test/cpu_train.cpp (make_dataset). Not part of the GPU suite.
#pragma once

#include <doctest/doctest.h>

#include <cstring>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "../hf.h"
#include "../model.h"
#include "../quant.h"
#include "test_util.h"

using json = nlohmann::json;

inline json load_json(const std::string& path) { return json::parse(read_bytes(path)); }
inline void save_json(const std::string& path, const json& j) { write_bytes(path, j.dump(2)); }

// Copies a safetensors file with its JSON header edited by `edit` (the data bytes unchanged):
// the way to make a header that lies.
inline void rewrite_header(const std::string& src, const std::string& dst, const std::function<void(json&)>& edit) {
    std::string b = read_bytes(src);
    uint64_t n;
    memcpy(&n, b.data(), 8);
    json h = json::parse(b.substr(8, n));
    edit(h);
    std::string text = h.dump();
    while (text.size() % 8) text += ' ';
    uint64_t m = text.size();
    write_bytes(dst, std::string((const char*)&m, 8) + text + b.substr(8 + n));
}

inline CmdResult export_hf(const std::string& args) {
    REQUIRE_MESSAGE(path_exists("./export_hf"), "build ./export_hf first (make NO_CUDA=1 export_hf)");
    return run_cmd("./export_hf " + args);
}

// Where each (weight, layer) lies in an NF4 model file, from nf4_layout and the 16-bit size alone
// (not from model_weight_bytes, which the tests check against this).
struct FileSlice {
    int id, layer;
    std::string name;
    int64_t numel, offset, bytes;
};
inline std::vector<FileSlice> nf4_file_slices(const Config& c, int32_t dtype16) {
    std::vector<FileSlice> out;
    int64_t off = sizeof(ModelHeader);
    for (int id = 0; id < NUM_WEIGHTS; id++) {
        if (id == W_LM_HEAD && c.tie_embeddings) continue;
        const WeightInfo wi = weight_info(c, id);
        const bool linear = id == W_Q || id == W_K || id == W_V || id == W_O || id == W_GATE || id == W_UP || id == W_DOWN;
        const int64_t bytes = linear ? nf4_layout(wi.numel()).bytes : wi.numel() * (int64_t)dtype_size(dtype16);
        for (int l = 0; l < (wi.per_layer ? c.n_layers : 1); l++, off += bytes)
            out.push_back({id, l, weight_hf_name(id, l), wi.numel(), off, bytes});
    }
    return out;
}

inline Config fixture_config(const std::string& fix) {
    int32_t dtype;
    return parse_hf_config(fix + "/config.json", &dtype);
}

inline float f16_round(float x) { return f16_to_f32(f32_to_f16(x)); }

// Where each PEFT tensor of an adapter lives in Adapter::params: name -> (offset, PEFT shape).
struct Slot {
    int64_t offset;
    std::vector<int64_t> shape;
    int64_t numel() const { return shape[0] * shape[1]; }
};
inline std::map<std::string, Slot> peft_slots(const Config& c, const LoraConfig& lc) {
    LoraLayout lay = lora_layout(c, lc);
    std::map<std::string, Slot> m;
    const int64_t r = lc.rank;
    for (int t = 0; t < NUM_LORA_TARGETS; t++) {
        if (!lc.has(t)) continue;
        const int64_t in = lora_in_dim(c, t), out = lora_out_dim(c, t);
        for (int l = 0; l < c.n_layers; l++) {
            m[lora_peft_name(t, l, false)] = {lay.a_offset[t] + l * r * in, {r, in}};
            m[lora_peft_name(t, l, true)] = {lay.b_offset[t] + l * out * r, {out, r}};
        }
    }
    return m;
}

inline std::set<std::string> tensor_names(const SafeTensors& st) {
    std::set<std::string> s;
    for (auto& kv : st.tensors) s.insert(kv.first);
    return s;
}

inline std::set<std::string> json_string_set(const json& j) {
    std::set<std::string> s;
    for (const json& x : j) s.insert(x.get<std::string>());
    return s;
}

// Checks that the tensors of PEFT file `peft_st` hold `expect(fixture value)` bit for bit, with
// the fixture's names and shapes, in safetensors dtype `dtype`.
inline void check_peft_tensors(const std::string& fix, const std::string& peft_st, const std::string& dtype,
                        const std::function<float(float)>& expect) {
    SafeTensors ref(fix + "/adapter/adapter_model.safetensors"), got(peft_st);
    CHECK_MESSAGE(tensor_names(got) == tensor_names(ref), base_name(fix) << ": " << peft_st << " has other tensor names");
    for (auto& kv : ref.tensors) {
        const std::string& name = kv.first;
        if (!got.has(name)) continue;
        CHECK_MESSAGE(got.get(name).shape == kv.second.shape, base_name(fix) << ": tensor " << name);
        CHECK_MESSAGE(got.get(name).dtype == dtype, base_name(fix) << ": tensor " << name);
        std::vector<float> want = ref.read_f32(name), have = got.read_f32(name);
        for (float& x : want) x = expect(x);
        REQUIRE(want.size() == have.size());
        for (size_t i = 0; i < want.size(); i++)
            if (memcmp(&want[i], &have[i], 4) != 0) {
                FAIL_CHECK(base_name(fix) << ": tensor " << name << " element " << i << ": " << have[i] << " vs " << want[i]);
                break;
            }
    }
}

inline CmdResult convert_adapter(const std::string& args) {
    REQUIRE_MESSAGE(path_exists("./convert_adapter"), "build ./convert_adapter first (make NO_CUDA=1 convert_adapter)");
    return run_cmd("./convert_adapter " + args);
}

// A tool run that must fail cleanly: exit 1, one line starting with the tool's name and naming
// `path`, and `output` not created.
inline void check_clean_failure(const CmdResult& r, const std::string& path, const std::string& output) {
    CHECK_MESSAGE(r.exit_code == 1, r.output);
    CHECK_MESSAGE(count_lines(r.output) == 1, r.output);
    CHECK_MESSAGE(r.output.rfind("convert_adapter: ", 0) == 0, r.output);
    CHECK_MESSAGE(r.output.find(path) != std::string::npos, "'" << path << "' not in: " << r.output);
    CHECK_MESSAGE(!path_exists(output), output << " was created");
}

// conversations of the given lengths, answers in their second half
inline Dataset make_dataset(const std::vector<int>& lens, int vocab = 50) {
    Dataset d;
    memset(&d.header, 0, sizeof(d.header));
    d.header.magic = DATA_MAGIC;
    d.header.version = DATA_VERSION;
    d.header.vocab_size = vocab;
    d.header.bos_id = 1;
    d.header.eos_id = 2;
    d.header.max_len = 4096;
    d.conv_offsets = {0};
    Rng rng(3);
    for (int len : lens) {
        for (int j = 0; j < len; j++) {
            d.tokens.push_back(j == 0 ? 1 : 3 + (int32_t)(rng.next() % (vocab - 3)));
            d.loss_mask.push_back(j >= len / 2);
            d.header.n_loss_tokens += j >= len / 2;
        }
        d.conv_offsets.push_back((int64_t)d.tokens.size());
        d.header.n_turns++;
    }
    d.header.n_tokens = (int64_t)d.tokens.size();
    d.header.n_conversations = (int64_t)lens.size();
    return d;
}
