// test/cpu_bad_input.cpp — the bad-input catalogue: one table of damaged, foreign, mismatched or
// wrongly typed inputs, clashing outputs and bad flags, each given to the binary that reads it
// (./train, ./sample, ./export_hf, ./prepare_lima, ./convert_adapter, ./merge_adapter, ./plot_loss),
// run as a subprocess (fork + execv, no shell, with a deadline). Every case must: exit 1 (bad
// input) or 2 (bad command line), as the programs document; write exactly one line on stderr
// (and nothing on stdout), starting with the program's name and naming the offending file (or the
// flag); and leave the scratch directory exactly as it was: no output created, no temporary left,
// and every file already there (good outputs of earlier runs included) byte for byte the same.
// The inputs are made from good ones the test writes first (the CPU demo's model, adapter, PEFT
// copy, state and log after 2 steps; a tiny HF fixture; a small data file), edited where the
// damage is wanted, with the header checksum recomputed when the case is after a deeper check.
// Run from the repo root after `make NO_CUDA=1` (the tools and test_cpu):
//   ./test_cpu -tc="bad input*"                     (CATALOGUE_SHOW=1 prints every case's message)
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstddef>
#include <map>

#include "../checkpoint.h"
#include "fixture_util.h"
#include "proc_util.h"
#include "test_util.h"

namespace {

const std::string kTokenizer = shared_dir() + "/data/llama2/tokenizer.model";

// Everything under `dir` (symbolic links as their targets, files by size and hash), so that a run
// that changed, added or removed anything at all shows.
void snapshot_into(const std::string& dir, const std::string& rel, std::map<std::string, std::string>& out) {
    for (const std::string& name : list_dir(dir + rel, "")) {
        if (name == "." || name == "..") continue;
        const std::string r = rel + "/" + name, p = dir + r;
        struct stat st;
        if (lstat(p.c_str(), &st) != 0) continue;
        if (S_ISLNK(st.st_mode)) {
            char buf[4096];
            const ssize_t n = readlink(p.c_str(), buf, sizeof(buf));
            out[r] = "link " + std::string(buf, n > 0 ? (size_t)n : 0);
        } else if (S_ISDIR(st.st_mode)) {
            out[r] = "dir";
            snapshot_into(dir, r, out);
        } else {
            const std::string b = read_bytes(p);
            out[r] = "file " + std::to_string(b.size()) + " " + std::to_string(payload_hash(b.data(), b.size()));
        }
    }
}
std::map<std::string, std::string> snapshot(const std::string& dir) {
    std::map<std::string, std::string> m;
    snapshot_into(dir, "", m);
    return m;
}

// Copies a tree of files, directories and symbolic links (links stay links).
void copy_tree(const std::string& src, const std::string& dst) {
    struct stat st;
    REQUIRE(lstat(src.c_str(), &st) == 0);
    if (S_ISLNK(st.st_mode)) {
        char buf[4096];
        const ssize_t n = readlink(src.c_str(), buf, sizeof(buf));
        REQUIRE(n > 0);
        REQUIRE(symlink(std::string(buf, (size_t)n).c_str(), dst.c_str()) == 0);
    } else if (S_ISDIR(st.st_mode)) {
        REQUIRE(mkdir(dst.c_str(), 0755) == 0);
        for (const std::string& name : list_dir(src, ""))
            if (name != "." && name != "..") copy_tree(src + "/" + name, dst + "/" + name);
    } else {
        write_bytes(dst, read_bytes(src));
    }
}

template <typename T>
std::string with(std::string bytes, size_t offset, T value) {
    REQUIRE(offset + sizeof(T) <= bytes.size());
    memcpy(&bytes[offset], &value, sizeof(T));
    return bytes;
}

std::string dump_json(const json& j) { return j.dump(2); }

// The good inputs every case starts from, made once.
struct Inputs {
    TempDir tmp;
    std::string dir, model, adapter, state, log, png, peft, data, hf, tiny_model, run, jsonl;
    Inputs() {
        dir = tmp.path;
        // the CPU demo, 2 steps: model.bin (vocabulary 259, byte tokens), the checkpoint set, log.csv
        const ProcResult r = run_argv({"./train", "--device", "cpu", "--steps", "2", "-o", tmp / "demo"}, 120);
        REQUIRE_MESSAGE(r.exit_code == 0, r.err);
        model = tmp / "model.bin", adapter = tmp / "adapter.bin", state = tmp / "state.bin", log = tmp / "log.csv";
        write_bytes(model, read_bytes(tmp / "demo/model.bin"));
        write_bytes(adapter, read_bytes(tmp / "demo/adapter.bin"));
        write_bytes(state, read_bytes(tmp / "demo/state.bin"));
        write_bytes(log, read_bytes(tmp / "demo/log.csv"));
        png = tmp / "picture.png";  // a foreign binary file: PNG magic and some bytes
        write_bytes(png, std::string("\x89PNG\r\n\x1a\n", 8) + std::string(600, '\x11'));
        peft = tmp / "peft";
        copy_tree(tmp / "demo/adapter", peft + ".link");  // (the demo's adapter is a link into latest/)
        REQUIRE(mkdir(peft.c_str(), 0755) == 0);
        for (const char* f : {"adapter_config.json", "adapter_model.safetensors"}) write_bytes(peft + "/" + f, read_bytes(tmp / "demo/adapter/" + f));
        unlink((peft + ".link").c_str());
        // a run directory to resume (its files are edited per case in copies of it)
        run = tmp / "demo";
        // training data for the demo model's vocabulary
        data = tmp / "data.bin";
        write_dataset(data, make_dataset({12, 15, 9, 20}, 259));
        // a tiny HF checkpoint and its export
        hf = tmp / "hf";
        REQUIRE(mkdir(hf.c_str(), 0755) == 0);
        const std::string fix = fixtures_dir() + "/tiny_pub_mha";
        write_bytes(hf + "/config.json", read_bytes(fix + "/config.json"));
        REQUIRE(symlink(absolute(fix + "/model.safetensors").c_str(), (hf + "/model.safetensors").c_str()) == 0);
        tiny_model = tmp / "tiny.bin";
        const ProcResult e = run_argv({"./export_hf", "-i", hf, "-o", tiny_model}, 60);
        REQUIRE_MESSAGE(e.exit_code == 0, e.err);
        jsonl = tmp / "conv.jsonl";
        write_bytes(jsonl, json{{"conversations", {"Hi there", "Hello!"}}}.dump() + "\n" +
                               json{{"conversations", {"And you?", "Fine."}}}.dump() + "\n");
    }
    std::string operator/(const std::string& name) const { return tmp / name; }
    // a file next to the good ones
    std::string put(const std::string& name, const std::string& bytes) const {
        write_bytes(tmp / name, bytes);
        return tmp / name;
    }
    // a copy of directory src whose JSON file json_name is `edit`ed; its payload file beside it is
    // linked (HF) or copied (PEFT)
    std::string dir_with(const std::string& name, const std::string& src, const std::string& json_name,
                         const std::string& payload, bool link, const std::function<void(json&)>& edit) const {
        const std::string d = tmp / name;
        REQUIRE(mkdir(d.c_str(), 0755) == 0);
        json j = load_json(src + "/" + json_name);
        edit(j);
        write_bytes(d + "/" + json_name, dump_json(j));
        if (link) REQUIRE(symlink(absolute(src + "/" + payload).c_str(), (d + "/" + payload).c_str()) == 0);
        else write_bytes(d + "/" + payload, read_bytes(src + "/" + payload));
        return d;
    }
    // an HF checkpoint directory whose config.json is `edit`ed
    std::string hf_with(const std::string& name, const std::function<void(json&)>& edit) const {
        return dir_with(name, hf, "config.json", "model.safetensors", true, edit);
    }
    // a PEFT directory whose adapter_config.json is `edit`ed
    std::string peft_with(const std::string& name, const std::function<void(json&)>& edit) const {
        return dir_with(name, peft, "adapter_config.json", "adapter_model.safetensors", false, edit);
    }
    // a copy of the demo run whose state.bin (behind latest/) holds `state_bytes`
    std::string run_with_state(const std::string& name, const std::string& state_bytes) const {
        const std::string d = tmp / name;
        copy_tree(run, d);
        char buf[4096];
        const ssize_t n = readlink((d + "/latest").c_str(), buf, sizeof(buf));
        REQUIRE(n > 0);
        write_bytes(d + "/" + std::string(buf, (size_t)n) + "/state.bin", state_bytes);
        return d;
    }
};

struct Case {
    std::string what;
    std::vector<std::string> argv;
    int exit_code;
    std::string names;  // the file (or flag) the message must name
    std::string says;   // and a word of what is wrong ("" = not checked)
};

// the NaN bit pattern of one stored element of dtype d, as bytes
std::string nan_of(int32_t d) {
    if (d == DT_F32) {
        const float x = NAN;
        return std::string((const char*)&x, 4);
    }
    const uint16_t h = d == DT_F16 ? 0x7e00 : 0x7fc0;
    return std::string((const char*)&h, 2);
}

}  // namespace

TEST_CASE("bad input catalogue: every damaged, foreign or mismatched input, clashing output and bad flag fails cleanly") {
    const Inputs in;
    const std::string M = in.model, A = in.adapter, D = in.data;
    const std::string model = read_bytes(M), adapter = read_bytes(A), state = read_bytes(in.state), data = read_bytes(D);
    ModelHeader mh;
    memcpy(&mh, model.data(), sizeof(mh));
    const size_t mck = offsetof(ModelHeader, checksum), ack = offsetof(AdapterHeader, checksum),
                 sck = offsetof(StateHeader, checksum), dck = offsetof(DataHeader, checksum);
    // a good output already in place, which every failed run must leave alone
    const std::string existing_model = in.put("existing_model.bin", model), existing_data = in.put("existing_data.bin", data),
                      existing_adapter = in.put("existing_adapter.bin", adapter);
    const std::string fresh = in / "fresh";  // never created by any case

    auto sample = [&](const std::string& m, const std::string& a) {
        return std::vector<std::string>{"./sample", "-m", m, "-a", a, "-p", "hi", "--max-new-tokens", "2", "--device", "cpu", "-s", "1"};
    };
    auto train = [&](const std::string& data_path, const std::string& m) {
        return std::vector<std::string>{"./train", "--device", "cpu", "--quant", "bf16", "-i", data_path, "-m", m, "--steps", "1", "-o", fresh};
    };
    auto resume = [&](const std::string& run) {
        return std::vector<std::string>{"./train", "--device", "cpu", "--steps", "2", "--resume", "-o", run};
    };
    auto merge = [&](const std::string& m, const std::string& a) {
        return std::vector<std::string>{"./merge_adapter", "-m", m, "-a", a, "-o", fresh};
    };
    auto to_peft = [&](const std::string& a) { return std::vector<std::string>{"./convert_adapter", "-i", a, "-o", fresh}; };
    auto from_peft = [&](const std::string& p, const std::string& out) {
        return std::vector<std::string>{"./convert_adapter", "-i", p, "-o", out, "-m", M};
    };
    auto export_hf = [&](const std::string& hf, const std::string& out) {
        return std::vector<std::string>{"./export_hf", "-i", hf, "-o", out};
    };
    auto prepare = [&](const std::string& input, const std::string& out) {
        return std::vector<std::string>{"./prepare_lima", "-t", kTokenizer, "-i", input, "-o", out};
    };

    std::vector<Case> cases;
    auto add = [&](const std::string& what, std::vector<std::string> argv, int code, const std::string& names, const std::string& says) {
        cases.push_back({what, std::move(argv), code, names, says});
    };
    std::string p;

    // ---- model files
    p = in.put("m_truncated.bin", model.substr(0, model.size() - 100));
    add("model: truncated", sample(p, "none"), 1, p, "truncated");
    p = in.put("m_magic.bin", with<uint32_t>(model, 0, fourcc("XXXX")));
    add("model: wrong magic", train(D, p), 1, p, "magic");
    add("model: a PNG given as the model", sample(in.png, "none"), 1, in.png, "");
    add("model: a text file (log.csv) given as the model", merge(in.log, A), 1, in.log, "");
    p = in.put("m_version.bin", rehashed(with<uint32_t>(model, 4, 99), mck));
    add("model: wrong version", sample(p, "none"), 1, p, "version");
    std::string flipped = model;
    flipped[model.size() / 2] ^= 0x10;
    p = in.put("m_flipped.bin", flipped);
    add("model: one payload bit flipped", train(D, p), 1, p, "checksum");
    p = in.put("m_reserved.bin", rehashed(with<uint8_t>(model, offsetof(ModelHeader, reserved) + 5, 1), mck));
    add("model: reserved bytes not zero", sample(p, "none"), 1, p, "reserved");
    p = in.put("m_dtype.bin", with<int32_t>(model, offsetof(ModelHeader, dtype), mh.dtype == DT_BF16 ? DT_F16 : DT_BF16));
    add("model: header says fp16 for bf16 data (or the reverse)", sample(p, "none"), 1, p, "checksum");
    {
        std::string b = model;
        const std::string nan = nan_of(mh.dtype);
        b.replace(sizeof(ModelHeader) + 8 * nan.size(), nan.size(), nan);
        p = in.put("m_nan.bin", rehashed(b, mck));
    }
    add("model: NaN in a weight", train(D, p), 1, p, "NaN");
    {
        ModelHeader h = mh;
        h.config.max_seq_len = INT32_MAX;
        std::string b = model;
        memcpy(&b[0], &h, sizeof(h));
        p = in.put("m_ctx.bin", rehashed(b, mck));
    }
    add("model: absurd context length in the header", sample(p, "none"), 1, p, "");
    add("model: missing file", sample(in / "nope.bin", "none"), 1, in / "nope.bin", "cannot open");
    add("model: a directory", train(D, in.peft), 1, in.peft, "directory");

    // ---- adapter files
    p = in.put("a_truncated.bin", adapter.substr(0, adapter.size() - 2));
    add("adapter: truncated", sample(M, p), 1, p, "truncated");
    p = in.put("a_magic.bin", with<uint32_t>(adapter, 0, fourcc("L2MD")));
    add("adapter: a model's magic", merge(M, p), 1, p, "magic");
    p = in.put("a_version.bin", rehashed(with<uint32_t>(adapter, 4, 1), ack));
    add("adapter: wrong version", to_peft(p), 1, p, "version");
    flipped = adapter;
    flipped[adapter.size() - 7] ^= 0x01;
    p = in.put("a_flipped.bin", flipped);
    add("adapter: one payload bit flipped", sample(M, p), 1, p, "checksum");
    p = in.put("a_reserved.bin", rehashed(with<uint8_t>(adapter, offsetof(AdapterHeader, reserved), 7), ack));
    add("adapter: reserved bytes not zero", merge(M, p), 1, p, "reserved");
    p = in.put("a_nan.bin", rehashed(with<uint16_t>(adapter, sizeof(AdapterHeader) + 6, 0x7e00), ack));
    add("adapter: NaN in a LoRA tensor", to_peft(p), 1, p, "NaN");
    add("adapter: made for another base model", merge(in.tiny_model, A), 1, A, "base model");
    add("adapter: a PNG given as the adapter", to_peft(in.png), 1, in.png, "");

    // ---- state.bin (train --resume), each in a copy of the demo's run directory
    std::string r;
    r = in.run_with_state("run_truncated", state.substr(0, state.size() - 4));
    add("state: truncated", resume(r), 1, r + "/state.bin", "truncated");
    r = in.run_with_state("run_magic", with<uint32_t>(state, 0, fourcc("L2AD")));
    add("state: wrong magic", resume(r), 1, r + "/state.bin", "magic");
    flipped = state;
    flipped[state.size() - 3] ^= 0x40;
    r = in.run_with_state("run_flipped", flipped);
    add("state: one payload bit flipped", resume(r), 1, r + "/state.bin", "checksum");
    r = in.run_with_state("run_nan", rehashed(with<float>(state, sizeof(StateHeader) + 4 * 3, NAN), sck));
    add("state: NaN in a LoRA parameter", resume(r), 1, r + "/state.bin", "must be finite");
    const size_t n_params = (state.size() - sizeof(StateHeader)) / 12;
    r = in.run_with_state("run_negative_v", rehashed(with<float>(state, sizeof(StateHeader) + 8 * n_params + 4 * 5, -1.0f), sck));
    add("state: negative second moment", resume(r), 1, r + "/state.bin", ">= 0");
    {
        StateHeader h;
        memcpy(&h, state.data(), sizeof(h));
        r = in.run_with_state("run_step", rehashed(with<int64_t>(state, offsetof(StateHeader, step), h.total_steps + 1), sck));
    }
    add("state: step past the total", resume(r), 1, r + "/state.bin", "step");
    r = in.run_with_state("run_reserved", rehashed(with<uint8_t>(state, offsetof(StateHeader, reserved) + 1, 3), sck));
    add("state: reserved bytes not zero", resume(r), 1, r + "/state.bin", "reserved");

    // ---- data files
    p = in.put("d_truncated.bin", data.substr(0, data.size() - 9));
    add("data: truncated", train(p, M), 1, p, "truncated");
    p = in.put("d_magic.bin", with<uint32_t>(data, 0, fourcc("L2ST")));
    add("data: wrong magic", train(p, M), 1, p, "magic");
    flipped = data;
    flipped[sizeof(DataHeader) + 1] ^= 0x02;
    p = in.put("d_flipped.bin", flipped);
    add("data: one payload bit flipped", train(p, M), 1, p, "checksum");
    p = in.put("d_reserved.bin", rehashed(with<uint8_t>(data, offsetof(DataHeader, reserved) + 2, 9), dck));
    add("data: reserved bytes not zero", train(p, M), 1, p, "reserved");
    p = in.put("d_empty.bin", "");
    add("data: empty file", train(p, M), 1, p, "");
    {
        // data and model made with two different tokenizers (both record one)
        Dataset ds = make_dataset({12, 15, 9, 20}, 259);
        memset(ds.header.tokenizer_sha256, 0xab, 32);
        write_dataset(in / "d_tok.bin", ds);
        uint8_t sha[32];
        memset(sha, 0xcd, 32);
        std::string b = model;
        memcpy(&b[offsetof(ModelHeader, tokenizer_sha256)], sha, 32);
        in.put("m_tok.bin", rehashed(b, mck));
    }
    add("data: made with another tokenizer than the model", train(in / "d_tok.bin", in / "m_tok.bin"), 1, in / "d_tok.bin", "tokenizer");
    p = in / "d_vocab.bin";
    write_dataset(p, make_dataset({12, 15}, 600));
    add("data: another vocabulary than the model", train(p, M), 1, p, "vocab");
    add("sample: a tokenizer of another vocabulary than the model", {"./sample", "-m", in / "m_tok.bin", "-a", "none", "-t", kTokenizer, "-p", "hi", "--device", "cpu"},
        1, kTokenizer, "");

    // ---- config.json (export_hf), adapter_config.json (convert_adapter)
    p = in.hf_with("hf_ctx", [](json& j) { j["max_position_embeddings"] = 1000000000; });
    add("config.json: max_position_embeddings huge", export_hf(p, existing_model), 1, p + "/config.json", "max_seq_len");
    p = in.hf_with("hf_head_dim", [](json& j) { j["head_dim"] = json::array({32}); });
    add("config.json: head_dim a list", export_hf(p, fresh), 1, p + "/config.json", "head_dim");
    p = in.hf_with("hf_eos", [](json& j) { j["eos_token_id"] = json::array({1, 2}); });
    add("config.json: eos_token_id two ids", export_hf(p, fresh), 1, p + "/config.json", "eos_token_id");
    p = in.hf_with("hf_tie", [](json& j) { j["tie_word_embeddings"] = 0; });
    add("config.json: tie_word_embeddings a number", export_hf(p, fresh), 1, p + "/config.json", "tie_word_embeddings");
    p = in.hf_with("hf_text", [](json&) {});
    write_bytes(p + "/config.json", "{\"hidden_size\": 256,");
    add("config.json: not JSON", export_hf(p, fresh), 1, p + "/config.json", "");
    add("export_hf: missing checkpoint directory", export_hf(in / "no_such_dir", fresh), 1, in / "no_such_dir", "");
    p = in.peft_with("peft_dora_1", [](json& j) { j["use_dora"] = 1; });
    add("PEFT: use_dora: 1 (a number)", from_peft(p, existing_adapter), 1, p + "/adapter_config.json", "use_dora");
    p = in.peft_with("peft_dora", [](json& j) { j["use_dora"] = true; });
    add("PEFT: DoRA refused by name", from_peft(p, fresh), 1, p + "/adapter_config.json", "use_dora");
    p = in.peft_with("peft_rslora", [](json& j) { j["use_rslora"] = true; });
    add("PEFT: rsLoRA refused by name", from_peft(p, fresh), 1, p + "/adapter_config.json", "use_rslora");
    p = in.peft_with("peft_rank_pattern", [](json& j) { j["rank_pattern"] = {{"q_proj", 4}}; });
    add("PEFT: rank_pattern refused by name", from_peft(p, fresh), 1, p + "/adapter_config.json", "rank_pattern");
    p = in.peft_with("peft_r", [](json& j) { j["r"] = "16"; });
    add("PEFT: r a string", from_peft(p, fresh), 1, p + "/adapter_config.json", "\"r\"");

    // ---- prepare_lima inputs
    p = in.put("empty.jsonl", "");
    add("prepare_lima: empty data file", prepare(p, existing_data), 1, p, "no conversations");
    add("prepare_lima: a PNG as the tokenizer", {"./prepare_lima", "-t", in.png, "-i", in.jsonl, "-o", fresh}, 1, in.png, "sentencepiece");
    add("prepare_lima: a PNG as the data", prepare(in.png, existing_data), 1, in.png, "JSON");

    // ---- the output guard
    add("output = input, same path", prepare(in.jsonl, in.jsonl), 1, in.jsonl, "overwrite an input");
    add("output = input, spelled ./x", prepare(in.jsonl, in.dir + "/./conv.jsonl"), 1, "conv.jsonl", "overwrite an input");
    REQUIRE(mkdir((in / "sub").c_str(), 0755) == 0);
    add("output = input, spelled a/../x", export_hf(in.hf, in.dir + "/sub/../hf/config.json"), 1, "config.json", "overwrite an input");
    REQUIRE(symlink(in.log.c_str(), (in / "log_link.csv").c_str()) == 0);
    add("output = input through a symbolic link", {"./plot_loss", "-i", in.log, "-o", in / "log_link.csv"}, 1, in / "log_link.csv",
        "overwrite an input");
    REQUIRE(link(M.c_str(), (in / "model_hard.bin").c_str()) == 0);
    add("output = input through a hard link", from_peft(in.peft, in / "model_hard.bin"), 1, in / "model_hard.bin", "overwrite an input");
    add("two outputs that are one file", {"./prepare_lima", "-t", kTokenizer, "-i", in.jsonl, "-o", in / "o.bin", "--val-out", in.dir + "/sub/../o.bin"},
        1, "o.bin", "same file");
    add("-o an existing regular file where a directory is written", {"./convert_adapter", "-i", A, "-o", existing_model}, 1,
        existing_model, "directory");
    add("merge_adapter -o an existing regular file", {"./merge_adapter", "-m", M, "-a", A, "-o", existing_data}, 1, existing_data, "");
    add("plot_loss: output = input", {"./plot_loss", "-i", in.log, "-o", in.log}, 1, in.log, "");
    add("plot_loss: a model file as the log", {"./plot_loss", "-i", M, "-o", fresh + ".png"}, 1, M, "log.csv");
    add("plot_loss: missing log", {"./plot_loss", "-i", in / "nope.csv", "-o", fresh + ".png"}, 1, in / "nope.csv", "");

    // ---- absurd values and bad command lines
    add("train: absurd random: shape", {"./train", "--device", "cpu", "-m", "random:layers=100000,dim=65536,hidden=100000,heads=64,kv=64", "-i", D,
                                        "--steps", "1", "-o", fresh},
        1, "layers=100000", "n_layers");
    add("train: --lr not a number", {"./train", "--lr", "abc", "-o", fresh}, 2, "--lr", "");
    add("train: --rank 0", {"./train", "--rank", "0", "-o", fresh}, 2, "--rank", "");
    add("sample: --temperature 0", {"./sample", "-m", M, "--temperature", "0", "-p", "hi"}, 2, "--temperature", "");
    add("sample: --top-p 2", {"./sample", "-m", M, "--top-p", "2", "-p", "hi"}, 2, "--top-p", "");
    add("merge_adapter: --type q5_k", {"./merge_adapter", "-m", M, "-a", A, "-t", kTokenizer, "--gguf", fresh, "--type", "q5_k"}, 2, "--type", "");
    add("export_hf: --dtype int8", {"./export_hf", "-i", in.hf, "-o", fresh, "--dtype", "int8"}, 2, "--dtype", "");
    add("convert_adapter: --dtype bf16", {"./convert_adapter", "-i", A, "-o", fresh, "--dtype", "bf16"}, 2, "--dtype", "");
    add("plot_loss: no -o", {"./plot_loss", "-i", in.log}, 2, "--output", "");
    add("prepare_lima: --max-len 0", {"./prepare_lima", "-t", kTokenizer, "-i", in.jsonl, "-o", fresh, "--max-len", "0"}, 2, "--max-len", "");

    REQUIRE(cases.size() >= 40);
    const double t0 = monotonic_seconds();
    for (const Case& c : cases) {
        CAPTURE(c.what);
        const auto before = snapshot(in.dir);
        const ProcResult res = run_argv(c.argv, 60);
        const std::string prog = base_name(c.argv[0]), msg = res.err;
        if (getenv("CATALOGUE_SHOW")) fprintf(stderr, "%-60s %d %s", c.what.c_str(), res.exit_code, msg.c_str());
        CHECK_FALSE(res.timed_out);
        CHECK_MESSAGE(res.exit_code == c.exit_code, "exit " << res.exit_code << ": " << msg);
        CHECK_MESSAGE(count_lines(msg) == 1, msg);
        CHECK_MESSAGE(res.out.empty(), "stdout: " << res.out);
        CHECK_MESSAGE(msg.rfind(prog + ": ", 0) == 0, msg);
        CHECK_MESSAGE(msg.find(c.names) != std::string::npos, "'" << c.names << "' not in: " << msg);
        if (!c.says.empty()) CHECK_MESSAGE(msg.find(c.says) != std::string::npos, "'" << c.says << "' not in: " << msg);
        const auto after = snapshot(in.dir);
        CHECK_MESSAGE(after == before, "the directory changed (an output or temporary left, or a file changed)");
        for (const auto& [path, what] : after)
            if (!before.count(path)) FAIL_CHECK("left behind: " << path);
            else if (before.at(path) != what) FAIL_CHECK("changed: " << path);
    }
    MESSAGE(cases.size() << " cases in " << monotonic_seconds() - t0 << " s");
}
