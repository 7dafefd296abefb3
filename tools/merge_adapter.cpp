// tools/merge_adapter.cpp — folds a trained LoRA adapter into its base model and writes the merged
// model where other programs run it: a Hugging Face checkpoint directory (transformers'
// AutoModelForCausalLM, vLLM, TGI, ...) and/or one GGUF file (llama.cpp, Ollama).
//
//   ./merge_adapter -m llama2-7b.bin -a out/adapter.bin -t tokenizer.model -o merged/          # HF, fp16
//   ./merge_adapter -m llama2-7b.bin -a out/adapter.bin -t tokenizer.model --gguf merged-q8_0.gguf --type q8_0
//   ./merge_adapter -m llama2-7b.bin -a out/adapter.bin --base nf4 -o merged/   # trained with --quant nf4 (QLoRA)
//   ./merge_adapter --help
//
// Every adapted linear becomes W + (alpha / r) B A, computed in fp32 (cpu::lora_merge, PEFT's
// merge), then rounded once to the output type. W is the base weight the file holds: a dense file's
// values, or an NF4 file's records dequantized to bf16, the values training computed with. A dense
// file used for QLoRA training (./train --quant nf4, its default) was trained on NF4(W), not W;
// --base nf4 merges into exactly that (NF4 quantize, then dequantize to bf16, as the trainer does
// at load), so the merged model computes what the trained one did. Without --base the adapter file
// decides: ./train records in adapter.bin whether the base was NF4 (trained_on); an adapter of
// unknown history (converted from PEFT) merges into W as stored, what peft's merge_and_unload()
// gives on a 16-bit base. Norms and embeddings are
// copied exactly (widened to fp32, then stored in the output type).
//
// Output directory (-o): config.json, model.safetensors (or model-0000i-of-0000N.safetensors and
// model.safetensors.index.json beyond --shard-size, HF's 5 GB by default), generation_config.json
// (./sample's defaults: do_sample, temperature 0.7, top_p 0.8, top_k 50, repetition_penalty 1.2,
// max_length 500), and with -t tokenizer.model + tokenizer_config.json (the Llama 2 chat template
// of chat.h) + special_tokens_map.json. GGUF (--gguf): gguf.h says what is in it.
//
// Streaming: one layer's tensor at a time is read, merged and written to both outputs, so memory
// holds a few copies of the largest tensor, never the model (Llama-2-70B is 138 GB). Nothing is
// half-written: the directory is built as DIR.tmp.<pid> and renamed into place at the end, the
// GGUF is an AtomicFile. Bad input: one line naming the file, exit 1, no output; bad flags: exit 2.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "chat.h"
#include "cli.h"
#include "gguf.h"
#include "hf.h"
#include "llama2_cpu.h"
#include "model.h"
#include "quant.h"

using ojson = nlohmann::ordered_json;

static const char* PROG = "merge_adapter";

// ----------------------------------------------------------------------------------------------
// command line (cli.h: one table drives both the parser and --help)

struct Args {
    std::string model, adapter, tokenizer, output, dtype, base, gguf, type, shard_size, name, force;
};

static const char* USAGE =
    "./merge_adapter -m model.bin -a adapter.bin [-t tokenizer.model] (-o DIR | --gguf FILE)\n"
    "                       [--dtype f32|f16|bf16] [--base stored|nf4] [--type f16|q8_0|q4_0] [--force]";

static Cli make_cli(Args& a) {
    std::vector<CliOption> options = {
        {"-m", "--model", "FILE", "base model file (./export_hf), dense or NF4", &a.model, nullptr, /*required=*/true},
        {"-a", "--adapter", "FILE", "adapter file (./train, ./convert_adapter) made for that base", &a.adapter, nullptr, /*required=*/true},
        {"-t", "--tokenizer", "FILE", "tokenizer.model to ship with the model (checked against the model's recorded sha256); required for --gguf", &a.tokenizer},
        {"-o", "--output", "DIR", "Hugging Face checkpoint directory to write (must be new, empty, or a checkpoint with --force)", &a.output},
        {nullptr, "--gguf", "FILE", "also (or instead) write one GGUF file for llama.cpp / Ollama", &a.gguf},
        {"-d", "--dtype", "TYPE", "tensor type in DIR: f32, f16 or bf16 (default: the model file's 16-bit type)", &a.dtype},
        {nullptr, "--type", "TYPE", "GGUF matrix type: f16 (default), q8_0 or q4_0 (norms stay f32; see README)", &a.type},
        {nullptr, "--base", "KIND", "stored: merge into the weights as the file holds them; nf4: into a dense base's NF4 round trip, as QLoRA (./train --quant nf4) trained on it (default: what adapter.bin records it trained on; stored if unknown)", &a.base},
        {nullptr, "--shard-size", "SIZE", "largest safetensors shard, bytes or with KB/MB/GB (default 5GB, as transformers)", &a.shard_size},
        {nullptr, "--name", "NAME", "the GGUF's general.name (default: the output's name)", &a.name},
        {"-f", "--force", nullptr, "replace an existing checkpoint in DIR / an existing GGUF file", &a.force},
        {"-h", "--help", nullptr, "show this help and exit", nullptr},
    };
    Cli cli{PROG, USAGE, "Merge a LoRA adapter into its base model; write a Hugging Face checkpoint and/or a GGUF file.",
            options};
    cli.epilog = "Exit status: 0 ok, 1 bad input (one line naming the file), 2 bad command line.";
    cli.non_empty = true;
    cli.once = true;
    return cli;
}

struct Options {
    Args a;
    int32_t dtype = -1;            // of the HF tensors; -1: the model file's
    int base = -1;                 // 1: --base nf4, 0: --base stored, -1: as the adapter records it trained
    uint32_t gguf_type = GGUF_FILE_F16;
    int64_t shard_bytes = 5000000000LL;
};

// "5GB", "300MB", "1048576": decimal units, as transformers' max_shard_size
static int64_t parse_size(const std::string& s) {
    size_t k = 0;
    while (k < s.size() && s[k] >= '0' && s[k] <= '9') k++;
    const std::string unit = s.substr(k);
    const int64_t mult = unit.empty() || unit == "B" ? 1 : unit == "KB" ? 1000 : unit == "MB" ? 1000000 : unit == "GB" ? 1000000000 : 0;
    if (k == 0 || mult == 0 || k > 12) cli_usage_error(PROG, "--shard-size expects bytes, or a number with KB, MB or GB, got '" + s + "'");
    const int64_t v = std::stoll(s.substr(0, k)) * mult;
    if (v <= 0) cli_usage_error(PROG, "--shard-size must be positive");
    return v;
}

static Options parse_args(const Args& a) {
    Options o;
    o.a = a;
    if (a.output.empty() && a.gguf.empty()) cli_usage_error(PROG, "nothing to write: give -o DIR and/or --gguf FILE");
    if (!a.gguf.empty() && a.tokenizer.empty())
        cli_usage_error(PROG, "--gguf needs -t tokenizer.model (llama.cpp reads the vocabulary from the GGUF file)");
    if (!a.type.empty() && a.gguf.empty()) cli_usage_error(PROG, "--type applies to --gguf, which is not given");
    if ((!a.dtype.empty() || !a.shard_size.empty()) && a.output.empty())
        cli_usage_error(PROG, std::string(a.dtype.empty() ? "--shard-size" : "--dtype") + " applies to -o DIR, which is not given");
    if (!a.dtype.empty()) {
        const std::string d = cli_choice(PROG, "--dtype", a.dtype, {"f32", "f16", "bf16"});
        o.dtype = d == "f32" ? DT_F32 : d == "f16" ? DT_F16 : DT_BF16;
    }
    if (!a.base.empty()) o.base = cli_choice(PROG, "--base", a.base, {"stored", "nf4"}) == "nf4" ? 1 : 0;
    if (!a.type.empty()) {
        const std::string t = cli_choice(PROG, "--type", a.type, {"f16", "q8_0", "q4_0"});
        o.gguf_type = t == "f16" ? GGUF_FILE_F16 : t == "q8_0" ? GGUF_FILE_Q8_0 : GGUF_FILE_Q4_0;
    }
    if (!a.shard_size.empty()) o.shard_bytes = parse_size(a.shard_size);
    return o;
}

// ----------------------------------------------------------------------------------------------
// checks before anything is written

// Checks the tokenizer against the model and the records of what it was made with; returns it.
static LlamaVocab check_tokenizer(const std::string& path, const ModelHeader& h, const std::string& model_path,
                                  const Adapter& ad, const std::string& adapter_path) {
    LlamaVocab v = load_llama_vocab(path);
    const Config& c = h.config;
    if ((int64_t)v.tokens.size() != c.vocab_size)
        fail("%s: tokenizer has %zu pieces but model %s has vocab_size %d (tokenizer and model do not belong together)",
             path.c_str(), v.tokens.size(), model_path.c_str(), c.vocab_size);
    if (v.bos != c.bos_id || v.eos != c.eos_id)
        fail("%s: tokenizer bos/eos ids are %d/%d but model %s says %d/%d", path.c_str(), v.bos, v.eos,
             model_path.c_str(), c.bos_id, c.eos_id);
    uint8_t sha[32];
    sha256_file(path, sha);
    const std::pair<const uint8_t*, const std::string*> records[] = {{h.tokenizer_sha256, &model_path},
                                                                    {ad.tokenizer_sha256, &adapter_path}};
    for (const auto& r : records)
        if (!digest_is_zero(r.first) && memcmp(r.first, sha, 32) != 0)
            fail("%s: sha256 %s, but %s was made with tokenizer %s", path.c_str(), hex_digest(sha).substr(0, 16).c_str(),
                 r.second->c_str(), hex_digest(r.first).substr(0, 16).c_str());
    return v;
}

// What a checkpoint directory written by this tool (or save_pretrained) may hold.
static bool is_checkpoint_file(const std::string& n) {
    static const std::set<std::string> names = {"config.json", "generation_config.json", "model.safetensors",
                                                "model.safetensors.index.json", "tokenizer.model",
                                                "tokenizer_config.json", "special_tokens_map.json"};
    return names.count(n) || (n.rfind("model-", 0) == 0 && n.size() > 12 && n.compare(n.size() - 12, 12, ".safetensors") == 0);
}

// Refuses outputs that would overwrite an input or something that is not ours to replace.
static void check_outputs(const Options& o) {
    const Args& a = o.a;
    std::vector<std::pair<std::string, std::string>> inputs = {{resolved_path(a.model), a.model},
                                                               {resolved_path(a.adapter), a.adapter}};
    if (!a.tokenizer.empty()) inputs.push_back({resolved_path(a.tokenizer), a.tokenizer});
    const std::string dir = a.output.empty() ? "" : resolved_path(a.output);
    if (!a.gguf.empty()) {
        const std::string g = resolved_path(a.gguf);
        for (const auto& in : inputs)
            if (g == in.first) fail("%s: is an input (%s); the GGUF must go elsewhere", a.gguf.c_str(), in.second.c_str());
        if (!dir.empty() && (g == dir || g.rfind(dir + "/", 0) == 0))
            fail("%s: lies inside the output directory %s; put the GGUF beside it", a.gguf.c_str(), a.output.c_str());
        if (is_directory(a.gguf)) fail("%s: is a directory; --gguf names the file to write", a.gguf.c_str());
        if (file_exists(a.gguf) && a.force.empty()) fail("%s: exists; pass --force to replace it", a.gguf.c_str());
    }
    if (dir.empty()) return;
    for (const auto& in : inputs)
        if (in.first == dir || in.first.rfind(dir + "/", 0) == 0)
            fail("%s: holds input %s, which the output would replace; write the checkpoint elsewhere", a.output.c_str(),
                 in.second.c_str());
    if (!file_exists(a.output)) return;
    if (!is_directory(a.output)) fail("%s: exists and is not a directory; -o names the checkpoint directory to write", a.output.c_str());
    const std::vector<std::string> names = list_directory(a.output);
    for (const std::string& n : names)
        if (!is_checkpoint_file(n))
            fail("%s: holds '%s', which is not part of a checkpoint; not replacing it (choose a new or empty directory)",
                 a.output.c_str(), n.c_str());
    if (!names.empty() && a.force.empty())
        fail("%s: already holds a checkpoint (%s); pass --force to replace it", a.output.c_str(), names[0].c_str());
}

// ----------------------------------------------------------------------------------------------
// the plan: every tensor, layer by layer, as both outputs store it

struct Item {
    int id, layer;
};
static std::vector<Item> plan_items(const Config& c) {
    std::vector<Item> items = {{W_EMBED, 0}};
    for (int l = 0; l < c.n_layers; l++)
        for (int id = W_ATTN_NORM; id <= W_DOWN; id++) items.push_back({id, l});
    items.push_back({W_FINAL_NORM, 0});
    if (!c.tie_embeddings) items.push_back({W_LM_HEAD, 0});
    return items;
}

// Greedy shards in item order: a tensor opens a new shard when it would push the current one past
// max_bytes (a tensor larger than that gets a shard of its own). Returns each tensor's file name.
static std::vector<std::string> plan_shards(const std::vector<StSpec>& specs, int64_t max_bytes) {
    std::vector<int> shard(specs.size());
    int n = 0;
    int64_t used = 0;
    for (size_t i = 0; i < specs.size(); i++) {
        if (i > 0 && used + specs[i].bytes() > max_bytes) n++, used = 0;
        shard[i] = n;
        used += specs[i].bytes();
    }
    std::vector<std::string> file_of;
    for (int s : shard) file_of.push_back(hf_shard_name(s, n + 1));
    return file_of;
}

// ----------------------------------------------------------------------------------------------
// the Hugging Face directory: built in DIR.tmp.<pid>, renamed into place by finish()

struct OutputDir {
    std::string final_path, tmp_path;
    bool done = false;
    explicit OutputDir(const std::string& path) : final_path(path), tmp_path(path + ".tmp." + std::to_string(getpid())) {
        if (mkdir(tmp_path.c_str(), 0755) != 0) fail("%s: cannot create directory (%s)", tmp_path.c_str(), strerror(errno));
    }
    ~OutputDir() {
        if (!done) remove_flat_directory(tmp_path);
    }
    std::string operator/(const std::string& name) const { return tmp_path + "/" + name; }
    void finish() {  // a replaced checkpoint (checked and allowed by check_outputs) goes last
        const std::string old = final_path + ".old." + std::to_string(getpid());
        const bool replace = file_exists(final_path);
        if (replace && rename(final_path.c_str(), old.c_str()) != 0)
            fail("%s: cannot move the old checkpoint aside (%s)", final_path.c_str(), strerror(errno));
        if (rename(tmp_path.c_str(), final_path.c_str()) != 0) {
            const int e = errno;
            if (replace) rename(old.c_str(), final_path.c_str());
            fail("%s: cannot rename into place (%s)", final_path.c_str(), strerror(e));
        }
        done = true;
        if (replace) remove_flat_directory(old);
    }
};

static std::string generation_config_json(const Config& c) {
    ojson j;  // ./sample's defaults (sampling.h), which are transformers' reference configuration
    j["bos_token_id"] = c.bos_id;
    j["eos_token_id"] = c.eos_id;
    j["do_sample"] = true;
    j["temperature"] = 0.7;
    j["top_p"] = 0.8;
    j["top_k"] = 50;
    j["repetition_penalty"] = 1.2;
    j["max_length"] = 500;
    return j.dump(2) + "\n";
}

// tokenizer_config.json for transformers' LlamaTokenizer(Fast) reading tokenizer.model, and
// special_tokens_map.json; the special tokens are the tokenizer's own pieces.
static void write_tokenizer_files(const OutputDir& out, const LlamaVocab& v, const Config& c) {
    const std::string unk = v.unk >= 0 ? v.tokens[v.unk] : "", bos = v.tokens[v.bos], eos = v.tokens[v.eos];
    ojson added = ojson::object();
    for (int id : {v.unk, v.bos, v.eos}) {
        if (id < 0) continue;
        added[std::to_string(id)] = {{"content", v.tokens[id]}, {"lstrip", false}, {"normalized", false},
                                     {"rstrip", false}, {"single_word", false}, {"special", true}};
    }
    ojson j;
    j["add_bos_token"] = true;
    j["add_eos_token"] = false;
    j["added_tokens_decoder"] = added;
    j["bos_token"] = bos;
    j["eos_token"] = eos;
    j["unk_token"] = v.unk >= 0 ? ojson(unk) : ojson(nullptr);
    j["pad_token"] = nullptr;
    j["chat_template"] = llama2_chat_template_jinja();
    j["clean_up_tokenization_spaces"] = false;
    // legacy: sentencepiece's dummy prefix also after <s>, as Meta's tokenization (and chat.h) has it;
    // with false, transformers (5.17, checked) drops the "▁" before "[INST]" and the ids differ from ours
    j["legacy"] = true;
    j["model_max_length"] = c.max_seq_len;
    j["padding_side"] = "right";
    j["sp_model_kwargs"] = ojson::object();
    j["tokenizer_class"] = "LlamaTokenizer";
    write_file_atomic(out / "tokenizer_config.json", j.dump(2) + "\n");
    ojson m;
    m["bos_token"] = bos;
    m["eos_token"] = eos;
    if (v.unk >= 0) m["unk_token"] = unk;
    write_file_atomic(out / "special_tokens_map.json", m.dump(2) + "\n");
}

// ----------------------------------------------------------------------------------------------
// one tensor: read, (NF4 round trip,) merge, check

static int lora_target_of(int id) {  // the LoraTarget adapting weight id, -1 for none
    for (int t = 0; t < NUM_LORA_TARGETS; t++)
        if (lora_target_weight(t) == id) return t;
    return -1;
}

// "out/merged/" -> "merged", "x/model.gguf" -> "model": the default general.name
static std::string base_name_of(std::string p) {
    while (p.size() > 1 && p.back() == '/') p.pop_back();
    p = p.substr(p.find_last_of('/') + 1);
    if (p.size() > 5 && p.compare(p.size() - 5, 5, ".gguf") == 0) p.resize(p.size() - 5);
    return p;
}

// The weight ./train --quant nf4 computes with on a dense file: NF4 with double quantization of the
// stored 16-bit values (an f32 file's rounded to bf16 first, as export_hf --dtype nf4 does), then
// dequantized to bf16 — the same numbers as the NF4 model file export_hf writes from that checkpoint.
static void nf4_round_trip(const ModelHeader& h, const std::vector<uint8_t>& raw, int64_t n, const std::string& name, float* W) {
    const void* src = raw.data();
    int32_t dt = h.dtype;
    std::vector<uint16_t> b16;  // (n) only for an f32 file
    if (dt == DT_F32) {
        b16.resize((size_t)n);
        convert_from_f32(b16.data(), (const float*)raw.data(), DT_BF16, (size_t)n);
        src = b16.data(), dt = DT_BF16;
    }
    const Nf4Tensor q = nf4_quantize_dq_cpu(src, dt, n, name.c_str());
    std::vector<uint16_t> deq((size_t)n);  // (n) bf16
    nf4_dequantize_dq_cpu(deq.data(), DT_BF16, q);
    convert_to_f32(W, deq.data(), DT_BF16, (size_t)n);
}

// The largest |x| `type` can hold (fp16's range bounds F16 values and the Q8_0/Q4_0 scales).
static double type_limit(uint32_t ggml_type) {
    return ggml_type == GGML_Q8_0 ? 65504.0 * 127 : ggml_type == GGML_Q4_0 ? 65504.0 * 8 : ggml_type == GGML_F16 ? 65504.0 : INFINITY;
}

static void check_range(const float* x, int64_t n, double limit, const char* type, const std::string& what) {
    for (int64_t k = 0; k < n; k++)
        if (!std::isfinite(x[k]) || std::fabs(x[k]) > limit)
            fail("%s: merged value %g at element %lld does not fit %s%s", what.c_str(), x[k], (long long)k, type,
                 std::isfinite(x[k]) ? " (use --dtype bf16 / --type q8_0)" : " (the adapter or model is corrupt)");
}

// ----------------------------------------------------------------------------------------------

static void run(const Options& o) {
    const auto t0 = std::chrono::steady_clock::now();
    auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
    const Args& a = o.a;

    // every input is read and checked before the first output byte
    InFile model(a.model);
    const ModelHeader h = read_model_header(model);
    const Config& c = h.config;
    const Adapter ad = read_adapter(a.adapter);
    check_adapter_matches_model(ad, a.adapter.c_str(), c, a.model.c_str());
    verify_model_file(a.model);  // the tensors are read one by one below: the checksum first
    // ./train records what the base looked like while it trained (adapter.bin's trained_on): an
    // adapter trained as QLoRA on a dense file merges into that file's NF4 round trip by default
    const bool base_nf4 = o.base >= 0 ? o.base == 1 : ad.trained_on == TRAINED_ON_NF4;
    LlamaVocab vocab;
    if (!a.tokenizer.empty()) vocab = check_tokenizer(a.tokenizer, h, a.model, ad, a.adapter);
    check_outputs(o);
    const int32_t hf_dtype = o.dtype >= 0 ? o.dtype : h.dtype;
    const bool nf4_file = h.linear_format == LINEAR_NF4;

    // the plan: HF names, shapes and shards; GGUF names, dims and types
    const std::vector<Item> items = plan_items(c);
    std::vector<StSpec> specs;
    std::vector<GgufTensorInfo> infos;
    for (const Item& it : items) {
        const WeightInfo wi = weight_info(c, it.id);
        specs.push_back({weight_hf_name(it.id, it.layer), dtype_to_st(hf_dtype),
                         wi.rows == 1 ? std::vector<int64_t>{wi.cols} : std::vector<int64_t>{wi.rows, wi.cols}});
        GgufTensorInfo g;
        g.name = gguf_llama_tensor_name(it.id, it.layer);
        g.ne = gguf_llama_tensor_ne(c, it.id);
        g.type = gguf_llama_tensor_type(c, it.id, o.gguf_type);
        infos.push_back(g);
    }
    const std::vector<std::string> file_of = plan_shards(specs, o.shard_bytes);
    const bool sharded = file_of.back() != "model.safetensors";

    std::unique_ptr<OutputDir> dir;
    if (!a.output.empty()) dir = std::make_unique<OutputDir>(a.output);
    std::unique_ptr<GgufWriter> gguf;
    if (!a.gguf.empty()) {
        std::string name = a.name;
        if (name.empty()) name = base_name_of(a.output.empty() ? a.gguf : a.output);
        gguf = std::make_unique<GgufWriter>(a.gguf, gguf_llama_metadata(c, o.gguf_type, name, vocab), infos);
    }

    std::unique_ptr<SafeTensorsWriter> shard;  // the shard being written
    std::vector<float> W, perm;                 // one tensor (rows * cols) as fp32; q/k in GGUF row order
    std::vector<uint8_t> raw, bytes;            // as stored in the model file; as one output stores it
    double last_log = 0;
    for (size_t k = 0; k < items.size(); k++) {
        const int id = items[k].id, l = items[k].layer;
        const std::string name = weight_hf_name(id, l), what = a.model + ": " + name;
        const int64_t n = weight_info(c, id).numel();
        W.resize((size_t)n);
        const int t = lora_target_of(id);
        if (t >= 0 && base_nf4 && !nf4_file) {
            read_model_tensor_raw(model, h, id, l, raw);
            nf4_round_trip(h, raw, n, name, W.data());
        } else {
            read_model_tensor_f32(model, h, id, l, W.data(), raw);
        }
        if (t >= 0 && ad.lora.has(t)) {
            const LoraLayout lay = lora_layout(c, ad.lora);
            const int64_t IC = lora_in_dim(c, t), OC = lora_out_dim(c, t), r = ad.lora.rank;
            cpu::lora_merge(W.data(), ad.params.data() + lay.a_offset[t] + l * r * IC,
                            ad.params.data() + lay.b_offset[t] + l * OC * r, (int)r, ad.lora.scaling(), OC, IC);
        }
        if (dir) {
            if (!shard || shard->path() != *dir / file_of[k]) {
                if (shard) shard->commit();
                std::vector<StSpec> in_shard;
                for (size_t i = 0; i < specs.size(); i++)
                    if (file_of[i] == file_of[k]) in_shard.push_back(specs[i]);
                shard = std::make_unique<SafeTensorsWriter>(*dir / file_of[k], in_shard,
                                                            std::map<std::string, std::string>{{"format", "pt"}});
            }
            check_range(W.data(), n, hf_dtype == DT_F16 ? 65504.0 : INFINITY, dtype_name(hf_dtype), what);
            bytes.resize((size_t)n * dtype_size(hf_dtype));
            convert_from_f32(bytes.data(), W.data(), hf_dtype, (size_t)n);
            shard->write(bytes.data());
        }
        if (gguf) {
            const float* src = W.data();
            if (id == W_Q || id == W_K) {
                perm.resize((size_t)n);
                gguf_permute_qk_rows(W.data(), perm.data(), id == W_Q ? c.n_heads : c.n_kv_heads, c.head_dim, c.dim);
                src = perm.data();
            }
            const GgufTensorInfo& g = gguf->tensors()[k];
            check_range(src, n, type_limit(g.type), ggml_type_name(g.type), what);
            bytes.resize((size_t)g.bytes());
            ggml_from_f32(g.type, src, n, bytes.data());
            gguf->write(bytes.data());
        }
        if (elapsed() - last_log >= 10.0) {
            last_log = elapsed();
            fprintf(stderr, "%s: %zu/%zu tensors (%s), %.0f s\n", PROG, k + 1, items.size(), name.c_str(), elapsed());
        }
    }

    // the small files, then everything into place: the GGUF first, the directory last
    if (dir) {
        shard->commit();
        if (sharded) write_file_atomic(*dir / "model.safetensors.index.json", hf_shard_index_json(specs, file_of));
        write_file_atomic(*dir / "config.json", hf_config_json(c, hf_dtype));
        write_file_atomic(*dir / "generation_config.json", generation_config_json(c));
        if (!a.tokenizer.empty()) {
            write_file_atomic(*dir / "tokenizer.model", read_text_file(a.tokenizer));
            write_tokenizer_files(*dir, vocab, c);
        }
    }
    if (gguf) gguf->commit();
    if (dir) dir->finish();

    int64_t params = 0;
    for (const StSpec& s : specs) params += s.bytes() / (int64_t)dtype_size(hf_dtype);
    std::string wrote;
    if (dir) {
        const int n_files = std::set<std::string>(file_of.begin(), file_of.end()).size();
        wrote += a.output + " (" + dtype_name(hf_dtype) + ", " + std::to_string(n_files) + " safetensors file" + (n_files > 1 ? "s" : "") + ")";
    }
    if (gguf) wrote += (wrote.empty() ? "" : " and ") + a.gguf + " (" + gguf_file_type_name(o.gguf_type) + ")";
    printf("%s: merged %s (r=%d, alpha=%g, %s) into %s (%lld parameters, %s, %s base%s); wrote %s in %.2f s\n", PROG,
           a.adapter.c_str(), ad.lora.rank, ad.lora.alpha, lora_targets_string(ad.lora.target_mask).c_str(),
           a.model.c_str(), (long long)params, config_summary(c).c_str(), nf4_file ? "NF4" : dtype_name(h.dtype),
           base_nf4 && !nf4_file ? " through NF4" : "", wrote.c_str(), elapsed());
}

static int merge_main(int argc, char** argv) {
    Args args;
    if (!cli_parse(make_cli(args), argc, argv)) return 0;
    const Options o = parse_args(args);
    run(o);
    return 0;
}

int main(int argc, char** argv) { return run_main(PROG, merge_main, argc, argv); }
