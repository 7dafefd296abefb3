// test/cpu_export_hf.cpp — tests of ./export_hf (tools/export_hf.cpp), the Hugging Face import
// path: every fixture checkpoint exported and read back bit for bit, --dtype conversions with round
// to nearest even, sharded checkpoints, old-form config.json, tokenizer checks, pre-quantized NF4
// model files (--dtype nf4: every record against the CPU quantizer), the command line, and every
// kind of bad input (exit 1, one line naming the file, no output file left, an existing good output
// untouched).
// Run from the repo root after `make NO_CUDA=1 export_hf test_cpu`:
//   ./test_cpu -tc="export_hf*"
// Fixtures: every tiny_* directory under $FIXTURES_DIR (default ../shared/fixtures) is used, so a new
// checkpoint in the same layout is tested with no code change; failures name fixture and tensor.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "hf.h"
#include "model.h"
#include "quant.h"
#include "test/fixture_util.h"
#include "test/test_util.h"
#include "test/tokenizer_util.h"

namespace {

// ----------------------------------------------------------------------------------------------
// helpers (file utilities, tiny_fixtures() and input_error_of() are in test/test_util.h; load_json,
// save_json, rewrite_header, export_hf and nf4_file_slices in test/fixture_util.h)

// A checkpoint directory `dst` holding fixture `fix`'s config.json (copied, so it can be edited)
// and its model.safetensors (linked: read-only use).
void link_checkpoint(const std::string& fix, const std::string& dst) {
    REQUIRE(mkdir(dst.c_str(), 0755) == 0);
    write_bytes(dst + "/config.json", read_bytes(fix + "/config.json"));
    REQUIRE(symlink(absolute(fix + "/model.safetensors").c_str(), (dst + "/model.safetensors").c_str()) == 0);
}

struct RawTensor {
    std::string name, dtype;
    std::vector<int64_t> shape;
    std::string bytes;
};

// All tensors of a safetensors file with their raw bytes, in data order.
std::vector<RawTensor> read_raw_tensors(const std::string& path) {
    SafeTensors st(path);
    std::vector<RawTensor> out;
    for (auto& kv : st.tensors) {
        RawTensor r{kv.first, kv.second.dtype, kv.second.shape, std::string((size_t)(kv.second.end - kv.second.begin), '\0')};
        st.read_raw(kv.second, &r.bytes[0]);
        out.push_back(r);
    }
    std::sort(out.begin(), out.end(), [&](const RawTensor& a, const RawTensor& b) {
        return st.get(a.name).begin < st.get(b.name).begin;
    });
    return out;
}

void write_raw_tensors(const std::string& path, const std::vector<RawTensor>& ts) {
    std::vector<StWrite> w;
    for (const RawTensor& t : ts) w.push_back({t.name, t.dtype, t.shape, t.bytes.data()});
    write_safetensors(path, w, {{"format", "pt"}});
}

std::string sha256sum_cli(const std::string& path) {  // an independent sha256: coreutils
    CmdResult r = run_cmd("sha256sum '" + path + "'");
    REQUIRE(r.exit_code == 0);
    return r.output.substr(0, 64);
}

bool bits_equal(const float* a, const float* b, size_t n, size_t* first_diff) {
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], 4) != 0) {
            *first_diff = i;
            return false;
        }
    return true;
}

// Checks a model file against the fixture's safetensors, tensor by tensor, value by value:
// each stored value must equal `expect(fixture value)` bit for bit.
void check_model_matches(const std::string& fix, const std::string& model_path,
                         const std::function<float(float)>& expect) {
    std::vector<float> weights;
    ModelHeader h = load_model_f32(model_path, weights);
    const Config& c = h.config;
    Weights<float> w = carve_weights(c, weights.data());
    SafeTensors st(fix + "/model.safetensors");
    size_t compared = 0;
    for (int id = 0; id < NUM_WEIGHTS; id++) {
        if (weight_numel(c, id) == 0) continue;
        WeightInfo wi = weight_info(c, id);
        for (int l = 0; l < (wi.per_layer ? c.n_layers : 1); l++) {
            std::string name = weight_hf_name(id, l);
            std::vector<float> ref = st.read_f32(name);
            for (float& x : ref) x = expect(x);
            REQUIRE((int64_t)ref.size() == wi.numel());
            size_t i = 0;
            if (!bits_equal(*w.ptr(id) + l * wi.numel(), ref.data(), ref.size(), &i))
                FAIL_CHECK(base_name(fix) << ": tensor " << name << " differs at element " << i << ": "
                                          << (*w.ptr(id))[l * wi.numel() + i] << " vs " << ref[i]);
            compared++;
        }
    }
    // every tensor of the checkpoint was compared (a tied lm_head or inv_freq would be the exceptions)
    size_t present = 0;
    for (auto& kv : st.tensors)
        present += kv.first.find("rotary_emb.inv_freq") == std::string::npos &&
                   !(kv.first == "lm_head.weight" && c.tie_embeddings);
    CHECK_MESSAGE(compared == present, base_name(fix) << ": compared " << compared << " of " << present << " tensors");
}

int64_t checkpoint_params(const std::string& fix) {  // counted from the safetensors header alone
    SafeTensors st(fix + "/model.safetensors");
    int64_t n = 0;
    for (auto& kv : st.tensors)
        if (kv.first.find("rotary_emb.inv_freq") == std::string::npos) n += kv.second.numel();
    return n;
}

// The 16-bit values transformers would hand bitsandbytes with torch_dtype = dtype16: the stored
// bytes when the tensor is in that dtype, else rounded to it (an F32 checkpoint).
std::vector<uint16_t> tensor_as16(SafeTensors& st, const std::string& name, int32_t dtype16) {
    const StTensor& t = st.get(name);
    std::vector<uint16_t> out((size_t)t.numel());
    if (st_dtype_to_dtype(t.dtype) == dtype16) {
        st.read_raw(t, out.data());
    } else {
        std::vector<float> f = st.read_f32(name);
        convert_from_f32(out.data(), f.data(), dtype16, f.size());
    }
    return out;
}

int64_t first_byte_diff(const void* a, const void* b, size_t n) {
    const uint8_t *p = (const uint8_t*)a, *q = (const uint8_t*)b;
    for (size_t i = 0; i < n; i++)
        if (p[i] != q[i]) return (int64_t)i;
    return -1;
}

// Checks an NF4 model file made from checkpoint file `st_path` (label names it in failures):
// header, exact size, every linear record == nf4_to_record(nf4_quantize_dq_cpu(its 16-bit values)),
// every other tensor == its 16-bit bytes, and load_model_f32 == bf16-dequantized linears / exact
// 16-bit values elsewhere. Returns the linears' storage in bits per parameter.
double check_nf4_model(const std::string& label, const std::string& st_path, const Config& c, int32_t dtype16,
                       const std::string& model_path) {
    InFile in(model_path);
    const ModelHeader h = read_model_header(in);
    CHECK(h.magic == MODEL_MAGIC);
    CHECK(h.version == MODEL_VERSION);
    CHECK(memcmp(&h.config, &c, sizeof(Config)) == 0);
    CHECK(h.dtype == dtype16);
    CHECK(h.linear_format == LINEAR_NF4);
    const std::vector<FileSlice> slices = nf4_file_slices(c, dtype16);
    CHECK(in.size == slices.back().offset + slices.back().bytes);
    int64_t by_header = sizeof(ModelHeader);
    for (int id = 0; id < NUM_WEIGHTS; id++) by_header += model_weight_bytes(h, id);
    CHECK(by_header == in.size);

    const std::string file = read_bytes(model_path);
    std::vector<float> loaded;
    load_model_f32(model_path, loaded);
    REQUIRE((int64_t)loaded.size() == total_weight_numel(c));
    SafeTensors st(st_path);
    int64_t linear_bytes = 0, linear_params = 0, at = 0;  // at: element offset in `loaded`
    for (const FileSlice& s : slices) {
        CAPTURE(s.name);
        REQUIRE(s.offset + s.bytes <= (int64_t)file.size());
        const std::vector<uint16_t> w16 = tensor_as16(st, s.name, dtype16);
        REQUIRE((int64_t)w16.size() == s.numel);
        std::vector<float> expect((size_t)s.numel);
        if (s.bytes != s.numel * 2) {  // a linear: an NF4 record
            const Nf4Tensor q = nf4_quantize_dq_cpu(w16.data(), dtype16, s.numel, s.name.c_str());
            std::vector<uint8_t> rec((size_t)nf4_layout(s.numel).bytes);
            REQUIRE((int64_t)rec.size() == s.bytes);
            nf4_to_record(q, rec.data());
            const int64_t i = first_byte_diff(file.data() + s.offset, rec.data(), rec.size());
            if (i >= 0) FAIL_CHECK(label << ": tensor " << s.name << ": NF4 record differs at byte " << i << " of " << rec.size());
            std::vector<uint16_t> deq((size_t)s.numel);
            nf4_dequantize_dq_cpu(deq.data(), DT_BF16, q);
            convert_to_f32(expect.data(), deq.data(), DT_BF16, deq.size());
            linear_bytes += s.bytes;
            linear_params += s.numel;
        } else {
            const int64_t i = first_byte_diff(file.data() + s.offset, w16.data(), (size_t)s.bytes);
            if (i >= 0) FAIL_CHECK(label << ": tensor " << s.name << ": 16-bit value differs at byte " << i);
            convert_to_f32(expect.data(), w16.data(), dtype16, w16.size());
        }
        size_t j = 0;
        if (!bits_equal(loaded.data() + at, expect.data(), expect.size(), &j))
            FAIL_CHECK(label << ": tensor " << s.name << ": load_model_f32 differs at element " << j << ": "
                             << loaded[at + j] << " vs " << expect[j]);
        at += s.numel;
    }
    CHECK(at == (int64_t)loaded.size());
    REQUIRE(linear_params > 0);
    return 8.0 * (double)linear_bytes / (double)linear_params;
}

}  // namespace

// ----------------------------------------------------------------------------------------------
// export_hf on the fixtures

TEST_CASE("export_hf: every fixture exports bit for bit in its own dtype by default") {
    std::set<int32_t> dtypes_seen;
    for (const std::string& fix : tiny_fixtures()) {
        CAPTURE(fix);
        TempDir t;
        CmdResult r = export_hf("-i " + fix + " -o " + (t / "model.bin"));
        REQUIRE_MESSAGE(r.exit_code == 0, r.output);
        // the summary line counts the parameters of the checkpoint, as its safetensors header has them
        CHECK(r.output.find(std::to_string(checkpoint_params(fix)) + " parameters") != std::string::npos);

        int32_t declared;
        Config c = parse_hf_config(fix + "/config.json", &declared);
        InFile in(t / "model.bin");
        ModelHeader h = read_model_header(in);
        CHECK(memcmp(&h.config, &c, sizeof(Config)) == 0);
        CHECK(h.magic == MODEL_MAGIC);
        CHECK(h.version == MODEL_VERSION);
        CHECK(h.dtype == (declared == DT_F16 || declared == DT_BF16 ? declared : DT_BF16));
        dtypes_seen.insert(h.dtype);
        uint8_t zeros[32] = {};
        if (path_exists(fix + "/tokenizer.model"))
            CHECK(hex_digest(h.tokenizer_sha256) == sha256sum_cli(fix + "/tokenizer.model"));
        else
            CHECK(memcmp(h.tokenizer_sha256, zeros, 32) == 0);
        CHECK(in.size == (int64_t)sizeof(ModelHeader) + checkpoint_params(fix) * (int64_t)dtype_size(h.dtype));
        check_model_matches(fix, t / "model.bin", [](float x) { return x; });
    }
    // the suite is meant to cover both 16-bit formats: say so if the fixtures stop doing that
    if (!dtypes_seen.count(DT_F16) || !dtypes_seen.count(DT_BF16)) WARN("the tiny_* fixtures no longer cover both fp16 and bf16");
}

TEST_CASE("export_hf --dtype converts each value with round to nearest even") {
    for (const std::string& fix : tiny_fixtures()) {
        CAPTURE(fix);
        TempDir t;
        int32_t declared;
        parse_hf_config(fix + "/config.json", &declared);
        // to the other 16-bit type (fp16 -> bf16 loses mantissa bits; bf16 -> fp16 loses range)
        const bool to_bf16 = declared != DT_BF16;
        CmdResult r = export_hf("-i " + fix + " -o " + (t / "m16.bin") + " --dtype " + (to_bf16 ? "bf16" : "fp16"));
        REQUIRE_MESSAGE(r.exit_code == 0, r.output);
        {
            InFile in(t / "m16.bin");
            CHECK(read_model_header(in).dtype == (to_bf16 ? DT_BF16 : DT_F16));
        }
        if (to_bf16)
            check_model_matches(fix, t / "m16.bin", [](float x) { return bf16_to_f32(f32_to_bf16(x)); });
        else
            check_model_matches(fix, t / "m16.bin", [](float x) { return f16_to_f32(f32_to_f16(x)); });
        // f32 widens exactly; the long option with '=' takes the same path
        r = export_hf("--input=" + fix + " --output=" + (t / "m32.bin") + " --dtype=f32");
        REQUIRE_MESSAGE(r.exit_code == 0, r.output);
        check_model_matches(fix, t / "m32.bin", [](float x) { return x; });
    }
}

TEST_CASE("export_hf: a sharded checkpoint exports byte-identical to the single file") {
    for (const std::string& fix : tiny_fixtures()) {
        CAPTURE(fix);
        TempDir t;
        std::vector<RawTensor> all = read_raw_tensors(fix + "/model.safetensors");
        // two shards, tensors dealt alternately so each holds some of every layer (as HF's do)
        std::vector<RawTensor> shard[2];
        json weight_map = json::object();
        const char* names[2] = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
        for (size_t i = 0; i < all.size(); i++) {
            shard[i % 2].push_back(all[i]);
            weight_map[all[i].name] = names[i % 2];
        }
        // a rotary_emb.inv_freq buffer, as older checkpoints carry: ignored by the exporter
        std::vector<float> inv_freq(64, 0.5f);
        std::string inv_bytes((const char*)inv_freq.data(), inv_freq.size() * 4);
        shard[1].push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", "F32", {64}, inv_bytes});
        weight_map["model.layers.0.self_attn.rotary_emb.inv_freq"] = names[1];
        std::string dir = t / "sharded";
        REQUIRE(mkdir(dir.c_str(), 0755) == 0);
        for (int s = 0; s < 2; s++) write_raw_tensors(dir + "/" + names[s], shard[s]);
        save_json(dir + "/model.safetensors.index.json", {{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}});
        write_bytes(dir + "/config.json", read_bytes(fix + "/config.json"));

        CmdResult r1 = export_hf("-i " + fix + " -o " + (t / "single.bin"));
        CmdResult r2 = export_hf("-i " + dir + " -o " + (t / "sharded.bin"));
        REQUIRE_MESSAGE(r1.exit_code == 0, r1.output);
        REQUIRE_MESSAGE(r2.exit_code == 0, r2.output);
        CHECK_MESSAGE(read_bytes(t / "single.bin") == read_bytes(t / "sharded.bin"), base_name(fix));
    }
}

TEST_CASE("export_hf: old-form config.json and undeclared dtypes") {
    for (const std::string& fix : tiny_fixtures()) {
        CAPTURE(fix);
        TempDir t;
        link_checkpoint(fix, t / "ck");
        json j = load_json(fix + "/config.json");
        int32_t declared;
        parse_hf_config(fix + "/config.json", &declared);
        // old form (torch_dtype, no rope_theta): theta 10000, default dtype from torch_dtype
        json old = j;
        old.erase("dtype");
        old.erase("rope_parameters");
        old["torch_dtype"] = declared == DT_F16 ? "float16" : "bfloat16";
        save_json(t / "ck/config.json", old);
        CmdResult r = export_hf("-i " + (t / "ck") + " -o " + (t / "old.bin"));
        REQUIRE_MESSAGE(r.exit_code == 0, r.output);
        InFile in_old(t / "old.bin");
        ModelHeader h = read_model_header(in_old);
        CHECK(h.config.rope_theta == 10000.0f);
        CHECK(h.dtype == declared);
        check_model_matches(fix, t / "old.bin", [](float x) { return x; });
        // declared float32, or nothing: bf16 by default
        for (const char* decl : {"float32", ""}) {
            CAPTURE(decl);
            json k = j;
            k.erase("dtype");
            if (*decl) k["torch_dtype"] = decl;
            save_json(t / "ck/config.json", k);
            r = export_hf("-i " + (t / "ck") + " -o " + (t / "undeclared.bin"));
            REQUIRE_MESSAGE(r.exit_code == 0, r.output);
            InFile in(t / "undeclared.bin");
            CHECK(read_model_header(in).dtype == DT_BF16);
        }
    }
}

TEST_CASE("export_hf: the tokenizer must fit the checkpoint and its sha256 is recorded") {
    REQUIRE_MESSAGE(path_exists(shared_dir() + "/data/lima/train.jsonl"), "needs ../shared/data");
    for (const std::string& fix : tiny_fixtures()) {
        CAPTURE(fix);
        TempDir t;
        int32_t d;
        Config c = parse_hf_config(fix + "/config.json", &d);
        std::string good = train_test_tokenizer(t.path, c.vocab_size, "bpe", c.bos_id, c.eos_id);
        CmdResult r = export_hf("-i " + fix + " -o " + (t / "m.bin") + " -t " + good);
        REQUIRE_MESSAGE(r.exit_code == 0, r.output);
        InFile in(t / "m.bin");
        CHECK(hex_digest(read_model_header(in).tokenizer_sha256) == sha256sum_cli(good));

        // found by itself as HF_DIR/tokenizer.model
        link_checkpoint(fix, t / "ck");
        REQUIRE(symlink(absolute(good).c_str(), (t / "ck/tokenizer.model").c_str()) == 0);
        r = export_hf("-i " + (t / "ck") + " -o " + (t / "m2.bin"));
        REQUIRE_MESSAGE(r.exit_code == 0, r.output);
        InFile in2(t / "m2.bin");
        CHECK(hex_digest(read_model_header(in2).tokenizer_sha256) == sha256sum_cli(good));

        // same size, other special ids: refused, naming the tokenizer
        std::string swapped = train_test_tokenizer(t.path, c.vocab_size, "bpe", c.eos_id, c.bos_id);
        r = export_hf("-i " + fix + " -o " + (t / "m3.bin") + " -t " + swapped);
        CHECK(r.exit_code == 1);
        CHECK(count_lines(r.output) == 1);
        CHECK(r.output.find(swapped) != std::string::npos);
        CHECK(r.output.find("bos/eos") != std::string::npos);
        CHECK(!path_exists(t / "m3.bin"));
    }
}

// ----------------------------------------------------------------------------------------------
// export_hf: bad input

TEST_CASE("export_hf: bad input gives one line naming the file, exit 1, and no output") {
    const std::string llama_tok = shared_dir() + "/data/llama2/tokenizer.model";
    for (const std::string& fix : tiny_fixtures()) {
        CAPTURE(fix);
        TempDir t, out;
        int32_t declared;
        Config c = parse_hf_config(fix + "/config.json", &declared);
        const std::string st_src = fix + "/model.safetensors";
        const json cfg = load_json(fix + "/config.json");
        const std::vector<RawTensor> raw = read_raw_tensors(st_src);
        const int64_t data_size = [&] { int64_t n = 0; for (auto& r : raw) n += (int64_t)r.bytes.size(); return n; }();

        // A checkpoint dir under t named `name`: config.json `cfg_text` (fixture's if empty) and
        // model.safetensors written by `make_st` (linked to the fixture's if null).
        auto ck = [&](const std::string& name, const std::function<void(const std::string&)>& make_st,
                      const std::string& cfg_text = "") {
            std::string dir = t / name;
            REQUIRE(mkdir(dir.c_str(), 0755) == 0);
            write_bytes(dir + "/config.json", cfg_text.empty() ? cfg.dump(2) : cfg_text);
            if (make_st) make_st(dir + "/model.safetensors");
            else REQUIRE(symlink(absolute(st_src).c_str(), (dir + "/model.safetensors").c_str()) == 0);
            return dir;
        };
        auto with_tensors = [&](const std::function<void(std::vector<RawTensor>&)>& edit) {
            return [&, edit](const std::string& path) {
                std::vector<RawTensor> ts = raw;
                edit(ts);
                write_raw_tensors(path, ts);
            };
        };
        auto with_header = [&](const std::function<void(json&)>& edit) {
            return [&, edit](const std::string& path) { rewrite_header(st_src, path, edit); };
        };
        auto with_bytes = [&](const std::string& bytes) {
            return [bytes](const std::string& path) { write_bytes(path, bytes); };
        };
        auto cfg_edit = [&](const std::function<void(json&)>& edit) {
            json j = cfg;
            edit(j);
            return j.dump(2);
        };
        const std::string up1 = weight_hf_name(W_UP, c.n_layers - 1), norm = weight_hf_name(W_FINAL_NORM, 0);
        std::mt19937 rng(1234);
        std::string random_bytes(4096, '\0');
        for (char& ch : random_bytes) ch = (char)(rng() & 0xff);
        const std::string full = read_bytes(st_src);

        struct Case {
            std::string what;
            std::string args;                  // -i ... (and any extra flags)
            std::vector<std::string> mention;  // each must appear in the error line
        };
        std::vector<Case> cases;
        auto add = [&](const std::string& what, const std::string& dir, std::vector<std::string> mention,
                       const std::string& extra = "") { cases.push_back({what, "-i " + dir + extra, mention}); };

        add("missing dir", t / "no_such_dir", {t / "no_such_dir"});
        add("a file, not a dir", fix + "/config.json", {fix + "/config.json"});
        {
            std::string d = t / "only_config";
            REQUIRE(mkdir(d.c_str(), 0755) == 0);
            write_bytes(d + "/config.json", cfg.dump());
            add("dir without safetensors", d, {d, "model.safetensors"});
        }
        {
            std::string d = t / "no_config";
            REQUIRE(mkdir(d.c_str(), 0755) == 0);
            REQUIRE(symlink(absolute(st_src).c_str(), (d + "/model.safetensors").c_str()) == 0);
            add("no config.json", d, {d + "/config.json"});
        }
        std::string d;
        d = ck("cfg_not_json", nullptr, "{\"hidden_size\": 256, oops");
        add("config.json not JSON", d, {d + "/config.json", "JSON"});
        d = ck("cfg_no_eps", nullptr, cfg_edit([](json& j) { j.erase("rms_norm_eps"); }));
        add("config.json without rms_norm_eps", d, {d + "/config.json", "rms_norm_eps"});
        d = ck("cfg_not_llama", nullptr, cfg_edit([](json& j) { j["model_type"] = "gpt2"; }));
        add("config.json not llama", d, {d + "/config.json", "gpt2"});
        d = ck("cfg_ffn", nullptr, cfg_edit([&](json& j) { j["intermediate_size"] = c.hidden_dim + 16; }));
        add("intermediate_size contradicts the tensors", d,
            {d + "/model.safetensors", weight_hf_name(W_GATE, 0), std::to_string(c.hidden_dim)});
        d = ck("cfg_layers", nullptr, cfg_edit([&](json& j) { j["num_hidden_layers"] = c.n_layers + 1; }));
        add("more layers in config.json than in the file", d,
            {d + "/model.safetensors", "model.layers." + std::to_string(c.n_layers) + "."});
        d = ck("span_lies", with_header([&](json& h) { h[norm]["data_offsets"][1] = h[norm]["data_offsets"][1].get<int64_t>() - 2; }));
        add("data_offsets span != shape x dtype", d, {d + "/model.safetensors", norm});
        d = ck("shape_lies", with_header([&](json& h) { h[norm]["shape"] = {c.dim / 2}; }));
        add("shape smaller than its data", d, {d + "/model.safetensors", norm});
        d = ck("beyond_file", with_header([&](json& h) {
            int64_t span = h[up1]["data_offsets"][1].get<int64_t>() - h[up1]["data_offsets"][0].get<int64_t>();
            h[up1]["data_offsets"] = {data_size - span + 64, data_size + 64};
        }));
        add("data_offsets beyond the end of the file", d, {d + "/model.safetensors", up1});
        d = ck("overlap", with_header([&](json& h) { h[up1]["data_offsets"] = h[weight_hf_name(W_GATE, c.n_layers - 1)]["data_offsets"]; }));
        add("two tensors on the same bytes", d, {d + "/model.safetensors"});
        d = ck("trailing", with_bytes(full + std::string(100, '\0')));
        add("bytes after the last tensor", d, {d + "/model.safetensors"});
        d = ck("truncated", with_bytes(full.substr(0, full.size() * 3 / 5)));
        add("truncated in the data", d, {d + "/model.safetensors", "truncated"});
        d = ck("truncated_header", with_bytes(full.substr(0, 100)));
        add("truncated in the header", d, {d + "/model.safetensors", "truncated"});
        d = ck("truncated_4", with_bytes(full.substr(0, 4)));
        add("4 bytes", d, {d + "/model.safetensors"});
        d = ck("empty", with_bytes(""));
        add("empty file", d, {d + "/model.safetensors"});
        d = ck("random", with_bytes(random_bytes));
        add("random bytes named model.safetensors", d, {d + "/model.safetensors", "not a safetensors file"});
        d = ck("text", with_bytes(cfg.dump(2)));
        add("a text file named model.safetensors", d, {d + "/model.safetensors", "not a safetensors file"});
        d = ck("header_not_json", with_bytes(std::string("\x10\0\0\0\0\0\0\0", 8) + "{\"a\": [1, 2, 3  " + std::string(64, 'x')));
        add("header length fine, header not JSON", d, {d + "/model.safetensors", "JSON"});
        d = ck("missing_tensor", with_tensors([&](std::vector<RawTensor>& ts) {
            ts.erase(std::remove_if(ts.begin(), ts.end(), [&](const RawTensor& r) { return r.name == up1; }), ts.end());
        }));
        add("a missing tensor", d, {d + "/model.safetensors", up1});
        d = ck("extra_tensor", with_tensors([&](std::vector<RawTensor>& ts) {
            RawTensor x = ts.back();
            x.name = "model.layers." + std::to_string(c.n_layers) + ".mlp.up_proj.weight";
            ts.push_back(x);
        }));
        add("an unexpected extra tensor", d, {d + "/model.safetensors", "model.layers." + std::to_string(c.n_layers) + ".mlp.up_proj.weight"});
        d = ck("int_tensor", with_tensors([&](std::vector<RawTensor>& ts) {
            for (RawTensor& r : ts)
                if (r.name == norm) r.dtype = "I16";  // same size, not a float
        }));
        add("a weight stored as integers", d, {d + "/model.safetensors", norm, "I16"});
        d = ck("bad_dtype_name", with_header([&](json& h) { h[norm]["dtype"] = "F17"; }));
        add("an unknown dtype", d, {d + "/model.safetensors", "F17"});
        {
            // a checkpoint index that points at a shard that is not there
            std::string dir = t / "shard_missing";
            REQUIRE(mkdir(dir.c_str(), 0755) == 0);
            write_bytes(dir + "/config.json", cfg.dump());
            json wm = json::object();
            for (const RawTensor& r : raw) wm[r.name] = "model-00001-of-00001.safetensors";
            save_json(dir + "/model.safetensors.index.json", {{"weight_map", wm}});
            add("index names a missing shard", dir, {dir + "/model-00001-of-00001.safetensors"});
            std::string dir2 = t / "index_not_json";
            REQUIRE(mkdir(dir2.c_str(), 0755) == 0);
            write_bytes(dir2 + "/config.json", cfg.dump());
            write_bytes(dir2 + "/model.safetensors.index.json", "{\"weight_map\": ");
            add("index not JSON", dir2, {dir2 + "/model.safetensors.index.json"});
            // two good shards, but the index says one tensor is in the other shard
            std::string dir3 = t / "index_lies";
            REQUIRE(mkdir(dir3.c_str(), 0755) == 0);
            write_bytes(dir3 + "/config.json", cfg.dump());
            const char* shard_names[2] = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
            std::vector<RawTensor> shard[2];
            json wm3 = json::object();
            for (size_t i = 0; i < raw.size(); i++) {
                shard[i % 2].push_back(raw[i]);
                wm3[raw[i].name] = shard_names[(i % 2) ^ (raw[i].name == up1)];
            }
            for (int s = 0; s < 2; s++) write_raw_tensors(dir3 + "/" + shard_names[s], shard[s]);
            save_json(dir3 + "/model.safetensors.index.json", {{"weight_map", wm3}});
            add("index names the wrong shard for a tensor", dir3, {dir3 + "/model.safetensors.index.json", up1});
        }
        // a tokenizer with another vocabulary (the real Llama 2 one on a tiny model)
        add("tokenizer vocabulary differs", fix, {llama_tok, "32000", std::to_string(c.vocab_size)}, " -t " + llama_tok);
        add("tokenizer not a sentencepiece model", fix, {fix + "/config.json", "sentencepiece"}, " -t " + fix + "/config.json");
        add("tokenizer missing", fix, {t / "nope.model"}, " -t " + (t / "nope.model"));
        d = ck("bad_default_tokenizer", nullptr);
        write_bytes(d + "/tokenizer.model", "not a tokenizer");
        add("HF_DIR/tokenizer.model is not a tokenizer", d, {d + "/tokenizer.model"});
        if (declared == DT_BF16) {
            // bf16 reaches 3e38, fp16 only 65504: converting must refuse, never write Inf
            d = ck("fp16_overflow", with_tensors([&](std::vector<RawTensor>& ts) {
                for (RawTensor& r : ts)
                    if (r.name == norm) {
                        uint16_t big = f32_to_bf16(1.0e6f);
                        memcpy(&r.bytes[0], &big, 2);
                    }
            }));
            add("bf16 value beyond fp16's range with --dtype fp16", d, {d + "/model.safetensors", norm, "fp16"}, " --dtype fp16");
        }

        // a good export, to check that a failed run leaves an existing output untouched
        CmdResult ok = export_hf("-i " + fix + " -o " + (out / "good.bin"));
        REQUIRE_MESSAGE(ok.exit_code == 0, ok.output);
        const std::string good = read_bytes(out / "good.bin");
        const std::string target = out / "model.bin";
        for (const Case& k : cases) {
            CAPTURE(k.what);
            for (bool existing : {false, true}) {
                CAPTURE(existing);
                if (existing) write_bytes(target, good);
                else remove(target.c_str());
                CmdResult r = export_hf(k.args + " -o " + target);
                CHECK_MESSAGE(r.exit_code == 1, r.output);
                CHECK_MESSAGE(count_lines(r.output) == 1, r.output);
                CHECK_MESSAGE(r.output.rfind("export_hf: ", 0) == 0, r.output);
                for (const std::string& m : k.mention) CHECK_MESSAGE(r.output.find(m) != std::string::npos, "'" << m << "' not in: " << r.output);
                if (existing) CHECK(read_bytes(target) == good);
                else CHECK(!path_exists(target));
                for (const std::string& n : list_dir(out.path, ""))
                    CHECK_MESSAGE(n.find(".tmp.") == std::string::npos, "temporary file left behind: " << n);
            }
        }
    }
}

TEST_CASE("export_hf: command line") {
    CmdResult r = export_hf("--help");
    CHECK(r.exit_code == 0);
    for (const char* flag : {"-i", "--input", "-o", "--output", "--dtype", "-t", "--tokenizer", "--help"})
        CHECK_MESSAGE(r.output.find(std::string(flag) + " ") != std::string::npos, flag);
    struct Bad { const char* args; const char* mention; };
    for (const Bad& b : {Bad{"-i x -o y --frobnicate", "--frobnicate"}, Bad{"-o y", "-i"}, Bad{"-i x", "-o"},
                         Bad{"-i x -o y --dtype nf5", "nf5"}, Bad{"-i x -o", "--output"}}) {
        CAPTURE(b.args);
        r = export_hf(b.args);
        CHECK(r.exit_code == 2);
        CHECK(count_lines(r.output) == 1);
        CHECK(r.output.find(b.mention) != std::string::npos);
    }
    TempDir t;
    r = export_hf("-i " + tiny_fixtures()[0] + " -o " + t.path);
    CHECK(r.exit_code == 1);
    CHECK(count_lines(r.output) == 1);
    CHECK(r.output.find(t.path) != std::string::npos);
}

// ----------------------------------------------------------------------------------------------
// NF4 model files (export_hf --dtype nf4): the seven linears as bitsandbytes' NF4 records, the
// rest 16-bit. Run: ./test_cpu -tc="export_hf --dtype nf4*"

TEST_CASE("export_hf --dtype nf4: linears are bitsandbytes' NF4 records, everything else the checkpoint's 16-bit values") {
    std::set<int32_t> dtypes_seen;
    for (const std::string& fix : tiny_fixtures()) {
        CAPTURE(fix);
        TempDir t;
        CmdResult r = export_hf("-i " + fix + " -o " + (t / "nf4.bin") + " --dtype nf4");
        REQUIRE_MESSAGE(r.exit_code == 0, r.output);
        int32_t declared;
        const Config c = parse_hf_config(fix + "/config.json", &declared);
        const int32_t dtype16 = declared == DT_F16 || declared == DT_BF16 ? declared : DT_BF16;
        dtypes_seen.insert(dtype16);
        const double bits = check_nf4_model(base_name(fix), fix + "/model.safetensors", c, dtype16, t / "nf4.bin");
        // the summary reports the linears' bits per parameter; bnb's NF4 + double quant is ~4.127
        char want[64];
        snprintf(want, sizeof(want), "%.4f bits/param", bits);
        CHECK_MESSAGE(r.output.find(want) != std::string::npos, r.output);
        CHECK(std::fabs(bits - 4.127) < 0.005);
        // the tokenizer hash and the parameter count are those of the dense export
        CHECK(r.output.find(std::to_string(checkpoint_params(fix)) + " parameters") != std::string::npos);
        CmdResult d = export_hf("-i " + fix + " -o " + (t / "dense.bin"));
        REQUIRE_MESSAGE(d.exit_code == 0, d.output);
        InFile a(t / "nf4.bin"), b(t / "dense.bin");
        CHECK(memcmp(read_model_header(a).tokenizer_sha256, read_model_header(b).tokenizer_sha256, 32) == 0);
        CHECK(a.size < b.size / 2);
    }
    if (!dtypes_seen.count(DT_F16) || !dtypes_seen.count(DT_BF16)) WARN("the tiny_* fixtures no longer cover both fp16 and bf16");
}

TEST_CASE("export_hf --dtype nf4: an f32 checkpoint is quantized from its bf16-rounded values") {
    const std::string fix = tiny_fixtures()[0];
    TempDir t;
    REQUIRE(mkdir((t / "ck").c_str(), 0755) == 0);
    json j = load_json(fix + "/config.json");
    j.erase("torch_dtype");
    j["dtype"] = "float32";
    save_json(t / "ck/config.json", j);
    // every value nudged off the 16-bit grid (x * (1 + 2^-12) is not a bf16 unless x is 0), so
    // quantizing the f32 values directly would give other absmax values and other records
    std::vector<RawTensor> raw = read_raw_tensors(fix + "/model.safetensors");
    {
        SafeTensors st(fix + "/model.safetensors");
        for (RawTensor& r : raw) {
            std::vector<float> f = st.read_f32(r.name);
            for (float& x : f) x = x * (1.0f + 1.0f / 4096.0f);
            r.dtype = "F32";
            r.bytes.assign((const char*)f.data(), f.size() * 4);
        }
    }
    write_raw_tensors(t / "ck/model.safetensors", raw);
    CmdResult r = export_hf("-i " + (t / "ck") + " -o " + (t / "nf4.bin") + " --dtype nf4");
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    int32_t declared;
    const Config c = parse_hf_config(t / "ck/config.json", &declared);
    REQUIRE(declared == DT_F32);
    InFile in(t / "nf4.bin");
    CHECK(read_model_header(in).dtype == DT_BF16);  // the default rule for an f32 checkpoint
    check_nf4_model("f32 copy of " + base_name(fix), t / "ck/model.safetensors", c, DT_BF16, t / "nf4.bin");
    // the test has power: the direct f32 quantization is a different record
    SafeTensors st(t / "ck/model.safetensors");
    const std::string name = weight_hf_name(W_Q, 0);
    std::vector<float> f = st.read_f32(name);
    std::vector<uint16_t> b16 = tensor_as16(st, name, DT_BF16);
    const Nf4Tensor from_f32 = nf4_quantize_dq_cpu(f.data(), DT_F32, (int64_t)f.size(), name.c_str());
    const Nf4Tensor from_bf16 = nf4_quantize_dq_cpu(b16.data(), DT_BF16, (int64_t)b16.size(), name.c_str());
    CHECK((from_f32.offset != from_bf16.offset || from_f32.scale2 != from_bf16.scale2 || from_f32.absmax_q != from_bf16.absmax_q));
}

TEST_CASE("export_hf --dtype nf4: a NaN or Inf in a linear weight is an error naming the tensor, no output") {
    const std::string fix = tiny_fixtures()[0];
    int32_t declared;
    parse_hf_config(fix + "/config.json", &declared);
    const std::vector<RawTensor> raw = read_raw_tensors(fix + "/model.safetensors");
    struct Bad { int id, layer; float value; const char* kind; };
    for (const Bad& b : {Bad{W_DOWN, 1, NAN, "NaN"}, Bad{W_K, 0, INFINITY, "Inf"}, Bad{W_GATE, 0, -INFINITY, "Inf"}}) {
        const std::string name = weight_hf_name(b.id, b.layer);
        CAPTURE(name);
        TempDir t;
        REQUIRE(mkdir((t / "ck").c_str(), 0755) == 0);
        write_bytes(t / "ck/config.json", read_bytes(fix + "/config.json"));
        std::vector<RawTensor> bad = raw;
        bool found = false;
        for (RawTensor& r : bad) {
            if (r.name != name) continue;
            const int32_t d = st_dtype_to_dtype(r.dtype);
            REQUIRE((d == DT_F16 || d == DT_BF16));
            uint16_t v;
            convert_from_f32(&v, &b.value, d, 1);
            memcpy(&r.bytes[2 * 37], &v, 2);  // element 37
            found = true;
        }
        REQUIRE(found);
        write_raw_tensors(t / "ck/model.safetensors", bad);
        CmdResult r = export_hf("-i " + (t / "ck") + " -o " + (t / "nf4.bin") + " --dtype nf4");
        CHECK(r.exit_code == 1);
        CHECK(count_lines(r.output) == 1);
        CHECK_MESSAGE(r.output.find(name) != std::string::npos, r.output);
        CHECK_MESSAGE(r.output.find(b.kind) != std::string::npos, r.output);
        CHECK_MESSAGE(r.output.find("element 37") != std::string::npos, r.output);
        CHECK(!path_exists(t / "nf4.bin"));
    }
}
