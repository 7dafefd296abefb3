// test/cpu_merge_adapter.cpp — tests of ./merge_adapter's Hugging Face output and of ./dump_logits:
// the merged checkpoint computes what the base model with the adapter unmerged computes (both
// fixtures; dense, NF4, and dense trained as NF4), it re-imports through ./export_hf bit for bit in
// its dtype, sharding writes a correct index, the tokenizer files, and every kind of bad input.
// Run from the repo root after `make NO_CUDA=1 export_hf merge_adapter dump_logits test_cpu`:
//   ./test_cpu -tc="merge_adapter*,dump_logits*"
// Tolerance: merged fp32 logits vs the unmerged adapter's, max |a - b| / max |b| <= 1e-4 (fp32
// reference vs fp32 reference: the two compute W x + s B (A x) and (W + s B A) x, which differ by
// rounding only). 16-bit outputs are compared bit for bit with the fp32 merge rounded once.
#include <doctest/doctest.h>
#include <sentencepiece_processor.h>

#include <nlohmann/json.hpp>
#include <set>

#include "chat.h"
#include "gguf.h"
#include "test/merge_util.h"

using json = nlohmann::json;

namespace {

const double TOL_LOGITS = 1e-4;

json load_json(const std::string& path) { return json::parse(read_bytes(path)); }

// Compares the model file `got` (every tensor) with `want` (fp32, file order) rounded to dtype.
void check_weights_equal(const std::string& got, const std::vector<float>& want, int32_t dtype, const std::string& what) {
    std::vector<float> w;
    const ModelHeader h = load_model_f32(got, w);
    CHECK(h.dtype == dtype);
    REQUIRE(w.size() == want.size());
    std::vector<uint16_t> r16(want.size());
    std::vector<float> rounded = want;
    if (dtype != DT_F32) {
        convert_from_f32(r16.data(), want.data(), dtype, want.size());
        convert_to_f32(rounded.data(), r16.data(), dtype, want.size());
    }
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < w.size(); i++)
        if (memcmp(&w[i], &rounded[i], 4) != 0 && bad++ == 0) first = i;
    CHECK_MESSAGE(bad == 0, what << ": " << bad << " values differ, the first at " << first << ": " << w[first]
                                 << " vs " << rounded[first]);
}

// ./export_hf of the merged directory, read back as a model file
std::string reimport(const std::string& dir, const std::string& out) {
    CmdResult r = run_tool("export_hf", "-i " + dir + " -o " + out);
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    return out;
}

}  // namespace

// ----------------------------------------------------------------------------------------------

TEST_CASE("merge_adapter: the merged checkpoint computes the unmerged adapter's logits (dense, NF4, dense as NF4)") {
    for (const std::string& fix : tiny_fixtures()) {
        CAPTURE(fix);
        const MergeInputs& in = merge_inputs(fix);
        const Adapter ad = read_adapter(in.adapter);
        TempDir t;
        struct Base {
            std::string what, model, flags, trained_on;  // trained_on: the model file whose weights training saw
        };
        const Base bases[] = {{"dense", in.model, "", in.model},
                              {"NF4 file", in.model_nf4, "", in.model_nf4},
                              {"dense --base nf4", in.model, " --base nf4", in.model_nf4}};
        std::vector<float> nf4_merged;
        for (const Base& b : bases) {
            CAPTURE(b.what);
            const std::string out = t / (std::string("m") + std::to_string(&b - bases));
            CmdResult r = merge_adapter("-m " + b.model + " -a " + in.adapter + " -o " + out + " --dtype f32" + b.flags);
            REQUIRE_MESSAGE(r.exit_code == 0, r.output);
            HfCheckpoint ck(out);
            CHECK(ck.dtype == DT_F32);
            CHECK(same_architecture(ck.config, in.cfg));
            std::vector<float> merged = ck.load_all_f32();
            // the merge is the CPU reference's, bit for bit
            const std::vector<float> want = expected_merged(b.trained_on, in.adapter);
            CHECK(merged == want);
            if (b.what == "NF4 file") nf4_merged = merged;
            if (b.what == "dense --base nf4") CHECK_MESSAGE(merged == nf4_merged, "--base nf4 = the NF4 file's weights");

            std::vector<float> base;
            load_model_f32(b.trained_on, base);
            const std::vector<float> unmerged = fixture_logits(fix, in.cfg, base, &ad);
            const std::vector<float> got = fixture_logits(fix, ck.config, merged, nullptr);
            const double e = max_rel_err(got.data(), unmerged.data(), got.size());
            CHECK_MESSAGE(e <= TOL_LOGITS, in.name << " " << b.what << ": merged vs unmerged logits rel err " << e);
            MESSAGE(in.name << " " << b.what << ": merged (f32) vs unmerged logits: max rel err " << e);
        }
        // against transformers + peft itself, for information: its adapter is fp32, ours the adapter
        // file's fp16, and that rounding alone moves the logits by about 1e-4 (the unmerged CPU
        // reference with the fp16 adapter is as far from transformers as the merged model is)
        HfCheckpoint ck(t / "m0");
        SafeTensors ref(fix + "/reference.safetensors");
        const std::vector<float> hf = ref.read_f32("logits");
        const std::vector<float> got = fixture_logits(fix, ck.config, ck.load_all_f32(), nullptr);
        std::vector<float> base;
        load_model_f32(in.model, base);
        const std::vector<float> unmerged = fixture_logits(fix, in.cfg, base, &ad);
        MESSAGE(in.name << ": vs transformers + peft (fp32 adapter): merged max rel err "
                        << max_rel_err(got.data(), hf.data(), got.size()) << ", unmerged with the fp16 adapter "
                        << max_rel_err(unmerged.data(), hf.data(), got.size()));
    }
}

TEST_CASE("merge_adapter: f16/bf16 checkpoints re-import through ./export_hf bit for bit; config and generation_config") {
    for (const std::string& fix : tiny_fixtures()) {
        CAPTURE(fix);
        const MergeInputs& in = merge_inputs(fix);
        TempDir t;
        const std::vector<float> want = expected_merged(in.model, in.adapter);
        struct Case {
            std::string flag;
            int32_t dtype;
        };
        const Case cases[] = {{"", in.dtype}, {" --dtype f16", DT_F16}, {" --dtype bf16", DT_BF16}};
        for (const Case& k : cases) {
            CAPTURE(k.flag);
            const std::string out = t / ("m" + std::to_string(&k - cases));
            CmdResult r = merge_adapter("-m " + in.model + " -a " + in.adapter + " -o " + out + k.flag);
            REQUIRE_MESSAGE(r.exit_code == 0, r.output);
            CHECK(count_lines(r.output) == 1);  // the summary line, nothing else
            check_weights_equal(reimport(out, t / "re.bin"), want, k.dtype, in.name + k.flag);

            // config.json in both forms, read by our parser as the model's config
            int32_t d;
            const Config c = parse_hf_config(out + "/config.json", &d);
            CHECK(d == k.dtype);
            CHECK(memcmp(&c, &in.cfg, sizeof(Config)) == 0);
            const json cj = load_json(out + "/config.json");
            const char* torch_dtype = k.dtype == DT_F16 ? "float16" : "bfloat16";
            CHECK(cj.at("torch_dtype") == torch_dtype);
            CHECK(cj.at("dtype") == torch_dtype);
            CHECK(cj.at("architectures") == json::array({"LlamaForCausalLM"}));
            CHECK(cj.at("model_type") == "llama");
            CHECK(cj.at("rms_norm_eps").get<double>() == 1e-5);
            CHECK(cj.at("rope_theta").get<double>() == 10000.0);
            CHECK(cj.at("rope_parameters").at("rope_theta").get<double>() == 10000.0);
            CHECK(cj.at("num_key_value_heads") == in.cfg.n_kv_heads);
            CHECK(cj.at("max_position_embeddings") == in.cfg.max_seq_len);
            CHECK(cj.at("tie_word_embeddings") == false);
            CHECK(cj.at("bos_token_id") == in.cfg.bos_id);
            CHECK(cj.at("eos_token_id") == in.cfg.eos_id);
            // ./sample's defaults, for generate()
            const json g = load_json(out + "/generation_config.json");
            CHECK(g.at("do_sample") == true);
            CHECK(g.at("temperature").get<double>() == 0.7);
            CHECK(g.at("top_p").get<double>() == 0.8);
            CHECK(g.at("top_k") == 50);
            CHECK(g.at("repetition_penalty").get<double>() == 1.2);
            CHECK(g.at("max_length") == 500);
            CHECK(g.at("bos_token_id") == in.cfg.bos_id);
            CHECK(g.at("eos_token_id") == in.cfg.eos_id);
            // one file, as transformers expects it; no tokenizer without -t
            SafeTensors st(out + "/model.safetensors");
            CHECK(st.metadata.at("format") == "pt");
            for (auto& kv : st.tensors) CHECK(kv.second.dtype == dtype_to_st(k.dtype));
            CHECK(list_directory(out) == std::vector<std::string>{"config.json", "generation_config.json", "model.safetensors"});
            CHECK(temp_leftovers(t.path).empty());
        }
    }
}

TEST_CASE("merge_adapter: sharded output has a correct index and re-imports identically") {
    for (const std::string& fix : tiny_fixtures()) {
        CAPTURE(fix);
        const MergeInputs& in = merge_inputs(fix);
        TempDir t;
        const std::string base = "-m " + in.model + " -a " + in.adapter + " -o ";
        REQUIRE(merge_adapter(base + (t / "one")).exit_code == 0);
        const int64_t limit = 600000;  // bytes: a few tensors a shard on these tiny models
        CmdResult r = merge_adapter(base + (t / "sharded") + " --shard-size 600KB");
        REQUIRE_MESSAGE(r.exit_code == 0, r.output);
        const std::string dir = t / "sharded";
        CHECK(!path_exists(dir + "/model.safetensors"));
        const json ix = load_json(dir + "/model.safetensors.index.json");
        const json& map = ix.at("weight_map");
        // every tensor of the model exactly once, in the file the index names
        std::set<std::string> files;
        for (auto it = map.begin(); it != map.end(); ++it) files.insert(it.value().get<std::string>());
        REQUIRE(files.size() > 2);
        const int n = (int)files.size();
        int64_t total = 0;
        size_t n_tensors = 0;
        for (int i = 1; i <= n; i++) {
            char name[64];
            snprintf(name, sizeof(name), "model-%05d-of-%05d.safetensors", i, n);
            REQUIRE_MESSAGE(files.count(name), name);
            SafeTensors st(dir + "/" + name);
            int64_t bytes = 0;
            for (auto& kv : st.tensors) {
                CHECK_MESSAGE(map.at(kv.first) == name, kv.first);
                bytes += kv.second.end - kv.second.begin;
                n_tensors++;
            }
            CHECK_MESSAGE((bytes <= limit || st.tensors.size() == 1), name << " holds " << bytes << " bytes");
            total += bytes;
        }
        CHECK(n_tensors == map.size());
        CHECK(ix.at("metadata").at("total_size").get<int64_t>() == total);
        SafeTensors one(t / "one/model.safetensors");
        CHECK(one.tensors.size() == map.size());
        CHECK(total == one.file.size - one.data_start);
        // the same model, tensor for tensor
        CHECK(read_bytes(reimport(dir, t / "a.bin")) == read_bytes(reimport(t / "one", t / "b.bin")));
    }
}

TEST_CASE("merge_adapter: -t ships the tokenizer with the chat template; a tokenizer that does not belong is refused") {
    for (const std::string& fix : tiny_fixtures()) {
        CAPTURE(fix);
        const MergeInputs& in = merge_inputs(fix);
        TempDir t;
        const std::string out = t / "m";
        CmdResult r = merge_adapter("-m " + in.model + " -a " + in.adapter + " -t " + in.tokenizer + " -o " + out);
        REQUIRE_MESSAGE(r.exit_code == 0, r.output);
        CHECK(read_bytes(out + "/tokenizer.model") == read_bytes(in.tokenizer));
        const LlamaVocab v = [&] {
            sentencepiece::SentencePieceProcessor sp;
            REQUIRE(sp.Load(in.tokenizer).ok());
            LlamaVocab x;
            x.bos = sp.bos_id(), x.eos = sp.eos_id(), x.unk = sp.unk_id();
            for (int id = 0; id < sp.GetPieceSize(); id++) x.tokens.push_back(sp.IdToPiece(id));
            return x;
        }();
        const json tc = load_json(out + "/tokenizer_config.json");
        CHECK(tc.at("chat_template") == llama2_chat_template_jinja());
        CHECK(tc.at("bos_token") == v.tokens[v.bos]);
        CHECK(tc.at("eos_token") == v.tokens[v.eos]);
        CHECK(tc.at("unk_token") == v.tokens[v.unk]);
        CHECK(tc.at("add_bos_token") == true);
        CHECK(tc.at("add_eos_token") == false);
        CHECK(tc.at("tokenizer_class") == "LlamaTokenizer");
        CHECK(tc.at("added_tokens_decoder").at(std::to_string(v.bos)).at("content") == v.tokens[v.bos]);
        const json sm = load_json(out + "/special_tokens_map.json");
        CHECK(sm.at("eos_token") == v.tokens[v.eos]);
        // the template spells chat.h's turn: bos + "[INST] " + user + " [/INST]", " " + answer + eos,
        // the system prompt in the first turn; the real rendering is checked by tools/check_merged.py
        const std::string tmpl = llama2_chat_template_jinja();
        for (const char* piece : {"bos_token + '[INST] ' + content + ' [/INST]'", "' ' + content + eos_token",
                                  "'<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content']"})
            CHECK_MESSAGE(tmpl.find(piece) != std::string::npos, piece);
        CHECK(llama2_inst_text("U", "S") == "[INST] <<SYS>>\nS\n<</SYS>>\n\nU [/INST]");
        CHECK(tmpl.find("strip") == std::string::npos);

        // the model file recorded another tokenizer: refused, naming both
        const std::string other = train_test_tokenizer(t.path, in.cfg.vocab_size, "unigram", in.cfg.bos_id, in.cfg.eos_id);
        r = merge_adapter("-m " + in.model + " -a " + in.adapter + " -t " + other + " -o " + (t / "x"));
        check_one_line_failure(r, "merge_adapter", 1, {other, in.model, "sha256"});
        CHECK(!path_exists(t / "x"));
        // another vocabulary size
        const std::string small = train_test_tokenizer(t.path, in.cfg.vocab_size - 100, "bpe", in.cfg.bos_id, in.cfg.eos_id);
        r = merge_adapter("-m " + in.model + " -a " + in.adapter + " -t " + small + " -o " + (t / "x"));
        check_one_line_failure(r, "merge_adapter", 1, {small, "pieces", std::to_string(in.cfg.vocab_size)});
        CHECK(!path_exists(t / "x"));
        CHECK(temp_leftovers(t.path).empty());
    }
}

TEST_CASE("merge_adapter: bad input and unsafe outputs give one line naming the file, exit 1, and write nothing") {
    const std::vector<std::string> fixes = tiny_fixtures();
    REQUIRE(fixes.size() >= 2);
    const MergeInputs& a = merge_inputs(fixes[0]);
    const MergeInputs& b = merge_inputs(fixes[1]);
    TempDir t;
    const std::string ok = "-m " + a.model + " -a " + a.adapter;
    // a good checkpoint from an earlier run, which failed runs must leave alone
    const std::string good = t / "good";
    REQUIRE(merge_adapter(ok + " -o " + good).exit_code == 0);
    const std::string good_bytes = read_bytes(good + "/model.safetensors");
    write_bytes(t / "note.txt", "a file");
    write_bytes(t / "trunc.bin", read_bytes(a.adapter).substr(0, 300));
    REQUIRE(mkdir((t / "foreign").c_str(), 0755) == 0);
    write_bytes(t / "foreign/config.json", "{}");
    write_bytes(t / "foreign/notes.md", "mine");
    REQUIRE(mkdir((t / "holds_tok").c_str(), 0755) == 0);
    write_bytes(t / "holds_tok/tokenizer.model", read_bytes(a.tokenizer));
    write_bytes(t / "old.gguf", "previous");
    // an adapter whose merged weights leave fp16's range
    Adapter huge = read_adapter(a.adapter);
    for (float& p : huge.params) p = 200.0f;
    write_adapter(t / "huge.bin", huge);

    struct Bad {
        std::string what, args;
        std::vector<std::string> says;
    };
    const std::string x = " -o " + (t / "x");
    const std::vector<Bad> bad = {
        {"adapter for another base", "-m " + a.model + " -a " + b.adapter + x, {b.adapter, a.model, "made for a base model"}},
        {"model file as adapter", "-m " + a.model + " -a " + a.model + x, {a.model, "not an adapter file", "model file"}},
        {"adapter as model", "-m " + a.adapter + " -a " + a.adapter + x, {a.adapter, "not a model file"}},
        {"missing model", "-m " + (t / "nope.bin") + " -a " + a.adapter + x, {t / "nope.bin", "cannot open"}},
        {"truncated adapter", "-m " + a.model + " -a " + (t / "trunc.bin") + x, {t / "trunc.bin", "truncated"}},
        {"not a tokenizer", ok + " -t " + (t / "note.txt") + x, {t / "note.txt", "sentencepiece"}},
        {"existing checkpoint", ok + " -o " + good, {good, "already holds a checkpoint", "--force"}},
        {"foreign files, even with --force", ok + " -o " + (t / "foreign") + " --force", {t / "foreign", "notes.md"}},
        {"output is a file", ok + " -o " + (t / "note.txt"), {t / "note.txt", "not a directory"}},
        {"output holds an input", ok + " -t " + (t / "holds_tok/tokenizer.model") + " -o " + (t / "holds_tok"), {t / "holds_tok", "holds input"}},
        {"output dir is the model", ok + " -o " + a.model, {a.model, "holds input"}},
        {"gguf is the adapter", ok + " -t " + a.tokenizer + " --gguf " + a.adapter, {a.adapter, "is an input"}},
        {"gguf inside the output", ok + " -t " + a.tokenizer + x + " --gguf " + (t / "x/m.gguf"), {t / "x/m.gguf", "inside"}},
        {"existing gguf", ok + " -t " + a.tokenizer + " --gguf " + (t / "old.gguf"), {t / "old.gguf", "exists", "--force"}},
        {"fp16 overflow", "-m " + a.model + " -a " + (t / "huge.bin") + x + " --dtype f16", {a.model, "does not fit f16", "bf16"}},
        {"fp16 overflow in the gguf", "-m " + a.model + " -a " + (t / "huge.bin") + " -t " + a.tokenizer + " --gguf " + (t / "x.gguf"),
         {a.model, "does not fit f16"}},
    };
    for (const Bad& k : bad) {
        CAPTURE(k.what);
        check_one_line_failure(merge_adapter(k.args), "merge_adapter", 1, k.says);
        CHECK(!path_exists(t / "x"));
        CHECK(!path_exists(t / "x.gguf"));
        CHECK(temp_leftovers(t.path).empty());
        CHECK(read_bytes(good + "/model.safetensors") == good_bytes);
        CHECK(read_bytes(t / "old.gguf") == "previous");
        CHECK(list_directory(t / "foreign") == std::vector<std::string>{"config.json", "notes.md"});
    }
    // bf16 holds what fp16 cannot
    CHECK(merge_adapter("-m " + a.model + " -a " + (t / "huge.bin") + x + " --dtype bf16").exit_code == 0);
    // --force replaces a checkpoint (and only then)
    CmdResult r = merge_adapter("-m " + a.model + " -a " + (t / "huge.bin") + " -o " + good + " --force --dtype bf16");
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    CHECK(read_bytes(good + "/model.safetensors") != good_bytes);
    CHECK(HfCheckpoint(good).dtype == DT_BF16);
    CHECK(temp_leftovers(t.path).empty());

    // command-line errors: exit 2
    const std::vector<Bad> usage = {
        {"nothing to write", ok, {"nothing to write"}},
        {"gguf without tokenizer", ok + " --gguf " + (t / "y.gguf"), {"--gguf needs -t"}},
        {"type without gguf", ok + x + " --type q8_0", {"--type"}},
        {"bad dtype", ok + x + " --dtype fp8", {"--dtype", "fp8"}},
        {"bad type", ok + " -t " + a.tokenizer + " --gguf " + (t / "y.gguf") + " --type q2_k", {"--type", "q2_k"}},
        {"bad base", ok + x + " --base nf5", {"--base", "stored or nf4"}},
        {"bad shard size", ok + x + " --shard-size 5XB", {"--shard-size"}},
        {"missing -m", "-a " + a.adapter + x, {"missing -m/--model"}},
        {"unknown flag", ok + x + " --merge-harder", {"unknown option --merge-harder"}},
    };
    for (const Bad& k : usage) {
        CAPTURE(k.what);
        check_one_line_failure(merge_adapter(k.args), "merge_adapter", 2, k.says);
        CHECK(!path_exists(t / "y.gguf"));
    }
    CmdResult h = merge_adapter("--help");
    CHECK(h.exit_code == 0);
    for (const char* flag : {"--model", "--adapter", "--tokenizer", "--output", "--dtype", "--base", "--gguf", "--type",
                             "--shard-size", "--name", "--force"})
        CHECK_MESSAGE(h.output.find(flag) != std::string::npos, flag);
}

TEST_CASE("dump_logits: the CPU reference's logits for token ids and chat prompts, unmerged or merged") {
    const MergeInputs& in = merge_inputs(tiny_fixtures()[0]);
    TempDir t;
    const std::vector<int32_t> ids = {1, 17, 3, 99, 2, 45};
    const Adapter ad = read_adapter(in.adapter);
    std::vector<float> w;
    load_model_f32(in.model, w);
    CpuModel m;
    cpu_model_init(m, in.cfg, w);
    cpu_lora_set(m, ad.lora, ad.params);
    auto forward = [&](const CpuModel& model, const std::vector<int32_t>& s) {
        CpuBatch b{1, (int)s.size(), s, std::vector<int32_t>(s.size(), -1), std::vector<int32_t>(s.size())};
        for (size_t j = 0; j < s.size(); j++) b.pos[j] = (int32_t)j;
        CpuActs acts;
        cpu_acts_init(acts, model, 1, b.T);
        cpu_forward(model, acts, b, CpuStepOptions{});
        return std::vector<float>(acts.logits, acts.logits + s.size() * in.cfg.vocab_size);
    };
    CmdResult r = run_tool("dump_logits", "-m " + in.model + " -a " + in.adapter + " -t " + in.tokenizer +
                                              " -p 'Hello there' --system 'Be brief.' --ids 1,17,3,99,2,45 -o " + (t / "ours.st"));
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    SafeTensors st(t / "ours.st");
    // the prompt as ./sample feeds it: Llama 2's chat template for one open user turn
    sentencepiece::SentencePieceProcessor sp;
    REQUIRE(sp.Load(in.tokenizer).ok());
    const EncodeFn encode = [&](const std::string& s) {
        std::vector<int> v;
        REQUIRE(sp.Encode(s, &v).ok());
        return std::vector<int32_t>(v.begin(), v.end());
    };
    const std::vector<int32_t> prompt = llama2_chat_tokens({ChatTurn{"Hello there", {}, false}}, "Be brief.", encode, 1, 2);
    CHECK(st.read_i32("seq.0.tokens") == prompt);
    CHECK(st.read_i32("seq.1.tokens") == ids);
    CHECK(st.read_f32("seq.0.logits") == forward(m, prompt));
    CHECK(st.read_f32("seq.1.logits") == forward(m, ids));
    CHECK(json::parse(st.metadata.at("prompts")) == json::array({"Hello there", ""}));
    CHECK(st.metadata.at("system") == "Be brief.");
    // the merged f32 checkpoint, read as an HF directory, agrees within the fp32 tolerance
    REQUIRE(merge_adapter("-m " + in.model + " -a " + in.adapter + " -o " + (t / "merged") + " --dtype f32").exit_code == 0);
    REQUIRE(run_tool("dump_logits", "-m " + (t / "merged") + " --ids 1,17,3,99,2,45 -o " + (t / "merged.st")).exit_code == 0);
    const std::vector<float> a = SafeTensors(t / "merged.st").read_f32("seq.0.logits"), b = forward(m, ids);
    const double e = max_rel_err(a.data(), b.data(), a.size());
    CHECK_MESSAGE(e <= TOL_LOGITS, "rel err " << e);
    // bad input
    check_one_line_failure(run_tool("dump_logits", "-m " + in.model + " --ids 1,99999 -o " + (t / "z.st")), "dump_logits", 1,
                           {in.model, "vocabulary"});
    check_one_line_failure(run_tool("dump_logits", "-m " + in.model + " -o " + (t / "z.st")), "dump_logits", 2, {"-p"});
    CHECK(!path_exists(t / "z.st"));
}
