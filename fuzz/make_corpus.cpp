// fuzz/make_corpus.cpp — writes the seed corpus of the fuzz targets (fuzz/corpus/<target>/) with
// the project's own writers, so that the seeds follow any change of the file formats: the model
// files come from ./export_hf (f16, bf16, f32, NF4 linears, a tied one) run on a tiny Hugging Face
// checkpoint written with write_safetensors; data, adapter, state, log and PEFT files from
// write_dataset, write_adapter, write_state, write_log and write_peft_adapter; config.json from the
// fixtures (new form as transformers wrote it, old forms derived from it). Seeds named valid_*
// must be accepted by their target's reader (make fuzz-smoke checks it); trunc_* are cut copies.
//
//   make fuzz-corpus        # rebuilds fuzz/corpus/ (needs ./export_hf and ../shared/fixtures)
//   build/fuzz/make_corpus OUT_DIR EXPORT_HF [FIXTURES_DIR]
#include <nlohmann/json.hpp>

#include <cmath>

#include "../checkpoint.h"
#include "../hf.h"
#include "fuzz_util.h"

using json = nlohmann::json;

static std::string g_out;  // OUT_DIR

static void save(const std::string& target, const std::string& name, const std::string& bytes) {
    make_dirs(g_out + "/" + target);
    AtomicFile f(g_out + "/" + target + "/" + name);
    f.write(bytes.data(), bytes.size());
    f.commit();
}

// A seed made by a writer at `path`: stored as valid_<name>, and its first `cut` bytes as trunc_<name>.
static void save_file(const std::string& target, const std::string& name, const std::string& path, size_t cut = 0) {
    const std::string bytes = read_text_file(path);
    save(target, "valid_" + name, bytes);
    if (cut) save(target, "trunc_" + name, bytes.substr(0, std::min(cut, bytes.size() - 1)));
}

static std::vector<float> random_values(size_t n, uint64_t seed, float scale) {
    Rng rng(seed);
    std::vector<float> v(n);
    for (float& x : v) x = scale * rng.normal();
    return v;
}

static void run_or_fail(const std::string& cmd) {
    if (system((cmd + " >/dev/null").c_str()) != 0) fail("make_corpus: failed: %s", cmd.c_str());
}

// ----------------------------------------------------------------------------------------------
// a tiny Hugging Face checkpoint, and model files exported from it

static json hf_config_json(const Config& c, const char* dtype) {
    return {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_size", c.dim},
            {"intermediate_size", c.hidden_dim}, {"num_hidden_layers", c.n_layers},
            {"num_attention_heads", c.n_heads}, {"num_key_value_heads", c.n_kv_heads}, {"head_dim", c.head_dim},
            {"vocab_size", c.vocab_size}, {"max_position_embeddings", c.max_seq_len}, {"bos_token_id", c.bos_id},
            {"eos_token_id", c.eos_id}, {"rms_norm_eps", c.norm_eps}, {"hidden_act", "silu"},
            {"tie_word_embeddings", c.tie_embeddings != 0}, {"dtype", dtype},
            {"rope_parameters", {{"rope_theta", c.rope_theta}, {"rope_type", "default"}}}};
}

// Writes config.json + model.safetensors for `c` into dir, tensors in `dtype` (DT_F16 / DT_BF16).
static void write_hf_checkpoint(const std::string& dir, const Config& c, int32_t dtype) {
    make_dirs(dir);
    const std::string text = hf_config_json(c, dtype == DT_F16 ? "float16" : "bfloat16").dump(2);
    AtomicFile cfg(dir + "/config.json");
    cfg.write(text.data(), text.size());
    cfg.commit();
    const std::vector<float> w = random_values((size_t)total_weight_numel(c), 1, 0.05f);
    std::vector<uint16_t> half(w.size());
    convert_from_f32(half.data(), w.data(), dtype, w.size());
    std::vector<StWrite> tensors;
    const uint16_t* p = half.data();
    for (int id = 0; id < NUM_WEIGHTS; id++) {
        if (weight_numel(c, id) == 0) continue;
        const WeightInfo wi = weight_info(c, id);
        for (int l = 0; l < (wi.per_layer ? c.n_layers : 1); l++, p += wi.numel()) {
            std::vector<int64_t> shape = wi.rows == 1 ? std::vector<int64_t>{wi.cols} : std::vector<int64_t>{wi.rows, wi.cols};
            tensors.push_back({weight_hf_name(id, l), dtype_to_st(dtype), shape, p});
        }
    }
    write_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
}

static void make_model_seeds(const std::string& tmp, const std::string& export_hf) {
    const Config c = fuzz_tiny_config();
    Config tied = c;
    tied.tie_embeddings = 1;
    write_hf_checkpoint(tmp + "/hf_f16", c, DT_F16);
    write_hf_checkpoint(tmp + "/hf_bf16_tied", tied, DT_BF16);
    struct Export {
        const char* name;
        const char* checkpoint;
        const char* flags;
    };
    for (const Export& e : {Export{"f16.bin", "hf_f16", ""}, Export{"bf16.bin", "hf_f16", "--dtype bf16"},
                            Export{"f32.bin", "hf_f16", "--dtype f32"}, Export{"nf4_f16.bin", "hf_f16", "--dtype nf4"},
                            Export{"nf4_bf16_tied.bin", "hf_bf16_tied", "--dtype nf4"}}) {
        const std::string out = tmp + "/" + e.name;
        run_or_fail(export_hf + " -i " + tmp + "/" + e.checkpoint + " -o " + out + " " + e.flags);
        save_file("model", e.name, out, std::string(e.name) == "f16.bin" || std::string(e.name) == "nf4_f16.bin" ? 3000 : 0);
    }
    save("model", "trunc_header.bin", read_text_file(tmp + "/f16.bin").substr(0, 200));
    // the checkpoints' safetensors are seeds of the safetensors target
    save_file("safetensors", "model_f16.safetensors", tmp + "/hf_f16/model.safetensors", 5000);
    save_file("safetensors", "model_bf16_tied.safetensors", tmp + "/hf_bf16_tied/model.safetensors");
}

// ----------------------------------------------------------------------------------------------
// safetensors of other dtypes and shapes than a checkpoint's

static void make_safetensors_seeds(const std::string& tmp) {
    const std::vector<float> f = random_values(12, 2, 1.0f);
    const std::vector<int32_t> i32 = {1, -2, 3, 2147483647, -2147483647 - 1, 0};
    const std::vector<int64_t> i64 = {5, -6, 7, 8};
    const std::vector<uint8_t> u8 = {0, 1, 2, 255};
    const std::vector<uint16_t> f16 = {0x3c00, 0x7c00, 0xfc00, 0x7e00, 0x0001, 0x8000};  // 1, +-Inf, NaN, tiny, -0
    const std::string path = tmp + "/mixed.safetensors";
    write_safetensors(path,
                      {{"f32.matrix", "F32", {3, 4}, f.data()}, {"f32.scalar", "F32", {}, f.data()},
                       {"f32.empty", "F32", {0, 3}, f.data()}, {"i32", "I32", {6}, i32.data()},
                       {"i64", "I64", {2, 2}, i64.data()}, {"u8", "U8", {4}, u8.data()},
                       {"f16.specials", "F16", {6}, f16.data()}, {"bf16", "BF16", {2, 3}, f16.data()},
                       {"u16.other", "U16", {2}, u8.data()}},
                      {{"format", "pt"}, {"note", "fuzz seed"}});
    save_file("safetensors", "mixed.safetensors", path, 300);
    write_safetensors(tmp + "/empty.safetensors", {});
    save_file("safetensors", "empty.safetensors", tmp + "/empty.safetensors");
}

// ----------------------------------------------------------------------------------------------
// config.json: new form (the fixtures, as transformers 5 writes them) and the older forms

static void make_config_seeds(const std::string& fixtures) {
    for (const char* fixture : {"tiny_pub_mha", "tiny_pub_gqa"}) {
        const std::string text = read_text_file(fixtures + "/" + fixture + "/config.json");
        const std::string name = std::string(fixture).substr(9);  // mha, gqa
        save("config", "valid_new_" + name + ".json", text);
        save("config", "trunc_new_" + name + ".json", text.substr(0, text.size() / 2));
        json j = json::parse(text);
        // old form (transformers 4.x): torch_dtype, a top-level rope_theta, rope_scaling null
        json old = j;
        old.erase("rope_parameters");
        old.erase("dtype");
        old["torch_dtype"] = j["dtype"];
        old["rope_theta"] = 10000.0;
        old["rope_scaling"] = nullptr;
        save("config", "valid_old_" + name + ".json", old.dump(2));
        // oldest form (Llama 2 at release): no rope_theta, no head_dim, no num_key_value_heads when MHA
        json oldest = old;
        oldest.erase("rope_theta");
        oldest.erase("head_dim");
        if (oldest["num_key_value_heads"] == oldest["num_attention_heads"]) oldest.erase("num_key_value_heads");
        oldest["eos_token_id"] = {2};
        save("config", "valid_oldest_" + name + ".json", oldest.dump());
    }
}

// ----------------------------------------------------------------------------------------------
// data, adapter, state, log, PEFT

static Dataset tiny_dataset(const std::vector<int64_t>& conv_lengths) {
    const Config c = fuzz_tiny_config();
    Dataset d;
    d.conv_offsets.push_back(0);
    Rng rng(3);
    for (int64_t len : conv_lengths) {
        for (int64_t j = 0; j < len; j++) {
            d.tokens.push_back(j == 0 ? c.bos_id : j == len - 1 ? c.eos_id : 3 + (int32_t)(rng.next() % (uint64_t)(c.vocab_size - 3)));
            d.loss_mask.push_back(j >= len / 2);
        }
        d.conv_offsets.push_back((int64_t)d.tokens.size());
    }
    DataHeader& h = d.header;
    h.magic = DATA_MAGIC;
    h.version = DATA_VERSION;
    h.n_tokens = (int64_t)d.tokens.size();
    h.n_conversations = (int64_t)conv_lengths.size();
    h.n_turns = h.n_conversations;
    for (uint8_t m : d.loss_mask) h.n_loss_tokens += m;
    h.vocab_size = c.vocab_size;
    h.bos_id = c.bos_id;
    h.eos_id = c.eos_id;
    h.max_len = 64;
    h.chat_template = TEMPLATE_LLAMA2;
    return d;
}

static Adapter tiny_adapter(const LoraConfig& lora) {
    Adapter a;
    a.base = fuzz_tiny_config();
    a.lora = lora;
    a.params = random_values((size_t)lora_layout(a.base, lora).total, 4, 0.1f);
    return a;
}

static void make_data_seeds(const std::string& tmp) {
    const Dataset d = tiny_dataset({5, 9, 2});
    write_dataset(tmp + "/data.bin", d);
    save_file("data", "three.bin", tmp + "/data.bin", 300);
    write_dataset(tmp + "/empty.bin", tiny_dataset({}));
    save_file("data", "empty.bin", tmp + "/empty.bin");
}

static void make_adapter_seeds(const std::string& tmp) {
    write_adapter(tmp + "/all.bin", tiny_adapter({2, 4.0f, 0.05f, LORA_ALL_TARGETS}));
    save_file("adapter", "all.bin", tmp + "/all.bin", 1000);
    write_adapter(tmp + "/qv.bin", tiny_adapter({1, 16.0f, 0.0f, (1u << LT_Q) | (1u << LT_V)}));
    save_file("adapter", "qv.bin", tmp + "/qv.bin");
}

static void make_state_seeds(const std::string& tmp) {
    TrainSettings s;
    s.rank = 1;
    s.targets = (1u << LT_K) | (1u << LT_DOWN);
    TrainState st;
    st.header = make_state_header(fuzz_tiny_config(), s, 3, 10, tiny_dataset({4, 6}));
    const size_t n = (size_t)lora_layout(st.header.base, st.header.lora).total;
    st.params = random_values(n, 5, 0.1f);
    st.m = random_values(n, 6, 0.01f);
    st.v = random_values(n, 7, 0.001f);
    for (float& x : st.v) x = std::fabs(x);  // second moments are >= 0 (read_state refuses others)
    write_state(tmp + "/state.bin", st);
    save_file("state", "state.bin", tmp + "/state.bin", 400);
    std::vector<LogRow> rows;
    for (int64_t step = 1; step <= 3; step++)
        rows.push_back({step, 0.1 * (double)step, 2.5 / (double)step, step == 2 ? 2.75 : NAN, 2e-4, 0.3, 1234.5,
                        step == 1 ? 0.25 : NAN, NAN});
    write_log(tmp + "/log.csv", rows);
    save_file("state", "log.csv", tmp + "/log.csv", 100);
}

static void save_peft(const std::string& name, const std::string& dir, const std::string& config_json, size_t cut = 0) {
    const std::string st = read_text_file(dir + "/adapter_model.safetensors");
    const std::string bytes = join_peft_input({config_json, st});
    save("peft", "valid_" + name, bytes);
    if (cut) save("peft", "trunc_" + name, bytes.substr(0, cut));
}

static void make_peft_seeds(const std::string& tmp, const std::string& fixtures) {
    write_peft_adapter(tmp + "/peft_f16", tiny_adapter({2, 4.0f, 0.05f, LORA_ALL_TARGETS}), DT_F16, "tiny");
    save_peft("f16.bin", tmp + "/peft_f16", read_text_file(tmp + "/peft_f16/adapter_config.json"), 2000);
    write_peft_adapter(tmp + "/peft_f32", tiny_adapter({1, 8.0f, 0.0f, 1u << LT_UP}), DT_F32, "");
    save_peft("f32_up.bin", tmp + "/peft_f32", read_text_file(tmp + "/peft_f32/adapter_config.json"));
    // adapter_config.json as peft itself writes it (every key of peft 0.21), with tensors of its r
    const std::string peft_cfg = read_text_file(fixtures + "/tiny_pub_mha/adapter/adapter_config.json");
    const json j = json::parse(peft_cfg);
    write_peft_adapter(tmp + "/peft_fixture",
                       tiny_adapter({j["r"].get<int32_t>(), j["lora_alpha"].get<float>(), 0.0f, LORA_ALL_TARGETS}),
                       DT_F16, "");
    save_peft("peft_config.bin", tmp + "/peft_fixture", peft_cfg);
}

int main(int argc, char** argv) {
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s OUT_DIR EXPORT_HF [FIXTURES_DIR (default ../shared/fixtures)]\n", argv[0]);
        return 2;
    }
    g_out = argv[1];
    const std::string export_hf = argv[2], fixtures = argc > 3 ? argv[3] : "../shared/fixtures";
    char tmpl[] = "/tmp/llama2-corpus.XXXXXX";
    if (!mkdtemp(tmpl)) {
        perror("mkdtemp");
        return 1;
    }
    const std::string tmp = tmpl;
    int rc = 0;
    try {
        make_model_seeds(tmp, export_hf);
        make_safetensors_seeds(tmp);
        make_config_seeds(fixtures);
        make_data_seeds(tmp);
        make_adapter_seeds(tmp);
        make_state_seeds(tmp);
        make_peft_seeds(tmp, fixtures);
    } catch (const InputError& e) {
        fprintf(stderr, "%s\n", e.what());
        rc = 1;
    }
    (void)!system(("rm -rf '" + tmp + "'").c_str());
    return rc;
}
