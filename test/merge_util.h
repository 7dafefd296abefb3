// test/merge_util.h — what test/cpu_merge_adapter.cpp and test/cpu_gguf.cpp share: every tiny_*
// fixture turned into ./merge_adapter's inputs (a dense and an NF4 model file made by ./export_hf,
// the fixture's PEFT adapter as an adapter file, a sentencepiece tokenizer of the fixture's
// vocabulary), made once per test run; running the tools; and the merged weights and logits the
// CPU reference computes in-process, which every output of the tool is compared with.
#pragma once

#include <doctest/doctest.h>

#include <map>
#include <memory>

#include "hf.h"
#include "llama2_cpu.h"
#include "model.h"
#include "test/test_util.h"
#include "test/tokenizer_util.h"

struct MergeInputs {
    std::string fixture, name;  // the fixture directory and its name
    TempDir dir;                // where the files below live
    Config cfg;
    int32_t dtype = DT_F16;     // the fixture's own 16-bit dtype, which model.bin keeps
    std::string model, model_nf4, adapter, tokenizer;
};

inline CmdResult run_tool(const std::string& tool, const std::string& args) {
    REQUIRE_MESSAGE(path_exists("./" + tool), "build it first: make NO_CUDA=1 " << tool);
    return run_cmd("./" + tool + " " + args);
}
inline CmdResult merge_adapter(const std::string& args) { return run_tool("merge_adapter", args); }

// The inputs for fixture directory `fix`, made on first use.
inline const MergeInputs& merge_inputs(const std::string& fix) {
    static std::map<std::string, std::unique_ptr<MergeInputs>> cache;
    std::unique_ptr<MergeInputs>& m = cache[fix];
    if (m) return *m;
    m = std::make_unique<MergeInputs>();
    m->fixture = fix;
    m->name = base_name(fix);
    m->cfg = parse_hf_config(fix + "/config.json", &m->dtype);
    m->tokenizer = train_test_tokenizer(m->dir.path, m->cfg.vocab_size, "bpe", m->cfg.bos_id, m->cfg.eos_id);
    m->model = m->dir / "model.bin";
    m->model_nf4 = m->dir / "model_nf4.bin";
    m->adapter = m->dir / "adapter.bin";
    for (const auto& [out, extra] : {std::make_pair(m->model, ""), std::make_pair(m->model_nf4, " --dtype nf4")}) {
        CmdResult r = run_tool("export_hf", "-i " + fix + " -o " + out + " -t " + m->tokenizer + extra);
        REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    }
    write_adapter(m->adapter, read_peft_adapter(fix + "/adapter", m->cfg));
    return *m;
}

// The merged weights (fp32, file order) of a model file and an adapter file, as the CPU reference
// computes them: the model as load_model_f32 gives it, then cpu_lora_merge.
inline std::vector<float> expected_merged(const std::string& model, const std::string& adapter) {
    std::vector<float> w;
    const Config c = load_model_f32(model, w).config;
    CpuModel m;
    cpu_model_init(m, c, std::move(w));
    const Adapter a = read_adapter(adapter);
    cpu_lora_set(m, a.lora, a.params);
    cpu_lora_merge(m);
    return m.weights_mem;
}

// The CPU reference's logits (B, T, V) on the fixture's reference tokens, for `weights` (file order),
// with `adapter` applied unmerged when given.
inline std::vector<float> fixture_logits(const std::string& fix, const Config& c, std::vector<float> weights,
                                         const Adapter* adapter) {
    SafeTensors ref(fix + "/reference.safetensors");
    const StTensor& tok = ref.get("tokens");
    const int B = (int)tok.shape[0], T = (int)tok.shape[1];
    const std::vector<int32_t> tokens = ref.read_i32("tokens"), labels = ref.read_i32("labels");
    CpuModel m;
    cpu_model_init(m, c, std::move(weights));
    if (adapter) {
        LoraConfig lc = adapter->lora;
        lc.dropout = 0.0f;
        cpu_lora_set(m, lc, adapter->params);
    }
    CpuActs acts;
    cpu_acts_init(acts, m, B, T);
    cpu_forward(m, acts, batch_from_hf_labels(tokens.data(), labels.data(), B, T), CpuStepOptions{});
    return std::vector<float>(acts.logits, acts.logits + (size_t)B * T * c.vocab_size);
}

// Leftovers of a failed run (a DIR.tmp.<pid> directory, a FILE.tmp.<pid>) under `dir`.
inline std::vector<std::string> temp_leftovers(const std::string& dir) {
    std::vector<std::string> left;
    for (const std::string& f : list_dir(dir, ""))
        if (f.find(".tmp.") != std::string::npos || f.find(".old.") != std::string::npos) left.push_back(f);
    return left;
}
