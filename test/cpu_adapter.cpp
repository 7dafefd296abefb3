// test/cpu_adapter.cpp — tests of LoRA adapters: reading the fixtures' real PEFT output
// (adapter_config.json + adapter_model.safetensors written by peft save_pretrained), writing PEFT
// back (names, shapes, config as PEFT has them), the project's adapter file (fp16) and its header,
// ./convert_adapter both ways, adapters for another base model, and damaged or unsupported input.
// Run from the repo root after `make NO_CUDA=1 export_hf convert_adapter test_cpu`:
//   ./test_cpu -tc="PEFT*,adapter file*,convert_adapter*"
// Fixtures: every tiny_* directory under $FIXTURES_DIR (default ../shared/fixtures) with its
// adapter/; a new one is picked up with no code change; failures name the fixture and tensor.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "hf.h"
#include "model.h"
#include "test/test_util.h"

using json = nlohmann::json;

namespace {

// ----------------------------------------------------------------------------------------------
// helpers (file utilities, tiny_fixtures() and input_error_of() are in test/test_util.h)

json load_json(const std::string& path) { return json::parse(read_bytes(path)); }

Config fixture_config(const std::string& fix) {
    int32_t dtype;
    return parse_hf_config(fix + "/config.json", &dtype);
}

float f16_round(float x) { return f16_to_f32(f32_to_f16(x)); }

// Where each PEFT tensor of an adapter lives in Adapter::params: name -> (offset, PEFT shape).
struct Slot {
    int64_t offset;
    std::vector<int64_t> shape;
    int64_t numel() const { return shape[0] * shape[1]; }
};
std::map<std::string, Slot> peft_slots(const Config& c, const LoraConfig& lc) {
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

std::set<std::string> tensor_names(const SafeTensors& st) {
    std::set<std::string> s;
    for (auto& kv : st.tensors) s.insert(kv.first);
    return s;
}

std::set<std::string> json_string_set(const json& j) {
    std::set<std::string> s;
    for (const json& x : j) s.insert(x.get<std::string>());
    return s;
}

// Checks that the tensors of PEFT file `peft_st` hold `expect(fixture value)` bit for bit, with
// the fixture's names and shapes, in safetensors dtype `dtype`.
void check_peft_tensors(const std::string& fix, const std::string& peft_st, const std::string& dtype,
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

CmdResult convert_adapter(const std::string& args) {
    REQUIRE_MESSAGE(path_exists("./convert_adapter"), "build ./convert_adapter first (make NO_CUDA=1 convert_adapter)");
    return run_cmd("./convert_adapter " + args);
}

// A tool run that must fail cleanly: exit 1, one line starting with the tool's name and naming
// `path`, and `output` not created.
void check_clean_failure(const CmdResult& r, const std::string& path, const std::string& output) {
    CHECK_MESSAGE(r.exit_code == 1, r.output);
    CHECK_MESSAGE(count_lines(r.output) == 1, r.output);
    CHECK_MESSAGE(r.output.rfind("convert_adapter: ", 0) == 0, r.output);
    CHECK_MESSAGE(r.output.find(path) != std::string::npos, "'" << path << "' not in: " << r.output);
    CHECK_MESSAGE(!path_exists(output), output << " was created");
}

}  // namespace

// ----------------------------------------------------------------------------------------------
// PEFT format

TEST_CASE("PEFT: every fixture's adapter/ (peft's own output) is read exactly") {
    for (const std::string& fix : tiny_fixtures()) {
        CAPTURE(fix);
        const Config c = fixture_config(fix);
        const json j = load_json(fix + "/adapter/adapter_config.json");
        Adapter a = read_peft_adapter(fix + "/adapter", c);
        CHECK(memcmp(&a.base, &c, sizeof(Config)) == 0);
        CHECK(a.lora.rank == j["r"].get<int>());
        CHECK(a.lora.alpha == j["lora_alpha"].get<float>());
        CHECK(a.lora.dropout == j["lora_dropout"].get<float>());
        uint32_t mask = 0;
        for (const std::string& m : json_string_set(j["target_modules"]))
            for (int t = 0; t < NUM_LORA_TARGETS; t++)
                if (m == lora_target_name(t)) mask |= 1u << t;
        CHECK(a.lora.target_mask == mask);
        if (path_exists(fix + "/reference.safetensors")) {  // the fixture states r and alpha a second time
            SafeTensors ref(fix + "/reference.safetensors");
            CHECK(std::to_string(a.lora.rank) == ref.metadata.at("r"));
            CHECK(a.lora.alpha == std::stof(ref.metadata.at("lora_alpha")));
        }
        // every tensor peft wrote is where our layout says, with PEFT's shape: A (r, in), B (out, r)
        SafeTensors st(fix + "/adapter/adapter_model.safetensors");
        std::map<std::string, Slot> slots = peft_slots(c, a.lora);
        CHECK(tensor_names(st).size() == slots.size());
        for (auto& kv : st.tensors) {
            const std::string& name = kv.first;
            auto it = slots.find(name);
            if (it == slots.end()) {
                FAIL_CHECK(base_name(fix) << ": peft tensor " << name << " has no place in our layout");
                continue;
            }
            CHECK_MESSAGE(kv.second.shape == it->second.shape, base_name(fix) << ": tensor " << name);
            std::vector<float> v = st.read_f32(name);
            REQUIRE((int64_t)v.size() == it->second.numel());
            CHECK_MESSAGE(memcmp(v.data(), a.params.data() + it->second.offset, v.size() * 4) == 0,
                          base_name(fix) << ": tensor " << name << " differs");
        }
    }
}

TEST_CASE("PEFT: write_peft_adapter writes what peft writes, and f32 reads back bit for bit") {
    for (const std::string& fix : tiny_fixtures()) {
        CAPTURE(fix);
        TempDir t;
        const Config c = fixture_config(fix);
        const json fj = load_json(fix + "/adapter/adapter_config.json");
        const std::string fixture_dtype = SafeTensors(fix + "/adapter/adapter_model.safetensors").tensors.begin()->second.dtype;
        Adapter a = read_peft_adapter(fix + "/adapter", c);

        write_peft_adapter(t / "peft", a, DT_F32, "org/base-model");
        Adapter b = read_peft_adapter(t / "peft", c);
        CHECK(memcmp(&b.lora, &a.lora, sizeof(LoraConfig)) == 0);
        REQUIRE(b.params.size() == a.params.size());
        CHECK(memcmp(b.params.data(), a.params.data(), a.params.size() * 4) == 0);
        if (fixture_dtype == "F32") check_peft_tensors(fix, t / "peft/adapter_model.safetensors", "F32", [](float x) { return x; });

        // adapter_config.json: the keys peft reads, with the fixture's values
        json j = load_json(t / "peft/adapter_config.json");
        CHECK(j["peft_type"] == "LORA");
        CHECK(j["task_type"] == "CAUSAL_LM");
        CHECK(j["r"] == fj["r"]);
        CHECK(j["lora_alpha"] == fj["lora_alpha"]);
        CHECK(j["lora_dropout"].get<double>() == fj["lora_dropout"].get<double>());
        CHECK(json_string_set(j["target_modules"]) == json_string_set(fj["target_modules"]));
        CHECK(j["base_model_name_or_path"] == "org/base-model");
        CHECK(j["use_dora"] == false);
        CHECK(j["bias"] == "none");

        // fp16: values rounded to nearest even, everything else the same
        write_peft_adapter(t / "peft16", a, DT_F16, "");
        check_peft_tensors(fix, t / "peft16/adapter_model.safetensors", "F16", f16_round);
        CHECK(load_json(t / "peft16/adapter_config.json")["base_model_name_or_path"].is_null());

        // non-integer alpha and dropout are written as the decimals they are (0.05, not 0.0500000007)
        Adapter d = a;
        d.lora.alpha = 12.5f;
        d.lora.dropout = 0.05f;
        write_peft_adapter(t / "peft_d", d, DT_F32, "x");
        json jd = load_json(t / "peft_d/adapter_config.json");
        CHECK(jd["lora_alpha"].get<double>() == 12.5);
        CHECK(jd["lora_dropout"].get<double>() == 0.05);
        Adapter dd = read_peft_adapter(t / "peft_d", c);
        CHECK(dd.lora.alpha == 12.5f);
        CHECK(dd.lora.dropout == 0.05f);

        // a value fp16 cannot hold is refused before anything is written
        Adapter big = a;
        big.params[big.params.size() / 2] = 1.0e5f;
        std::string msg = input_error_of([&] { write_peft_adapter(t / "peft_big", big, DT_F16, ""); });
        CHECK(msg.find(t / "peft_big") != std::string::npos);
        CHECK(!path_exists(t / "peft_big"));
    }
}

// ----------------------------------------------------------------------------------------------
// the project's adapter file

TEST_CASE("adapter file: write_adapter then read_adapter keeps the header and rounds to fp16") {
    for (const std::string& fix : tiny_fixtures()) {
        CAPTURE(fix);
        TempDir t;
        const Config c = fixture_config(fix);
        Adapter a = read_peft_adapter(fix + "/adapter", c);
        a.lora.dropout = 0.1f;
        a.lora.target_mask = LORA_ALL_TARGETS & ~(1u << LT_K);  // not all targets: the mask must survive
        std::map<std::string, Slot> all = peft_slots(c, read_peft_adapter(fix + "/adapter", c).lora);
        std::vector<float> src = read_peft_adapter(fix + "/adapter", c).params;
        a.params.assign((size_t)lora_layout(c, a.lora).total, 0.0f);
        for (auto& kv : peft_slots(c, a.lora))  // the fixture's values for the targets kept
            std::copy(src.begin() + all[kv.first].offset, src.begin() + all[kv.first].offset + kv.second.numel(),
                      a.params.begin() + kv.second.offset);
        for (int i = 0; i < 32; i++) a.tokenizer_sha256[i] = (uint8_t)(i * 7 + 1);

        write_adapter(t / "a.bin", a);
        Adapter b = read_adapter(t / "a.bin");
        CHECK(memcmp(&b.base, &c, sizeof(Config)) == 0);
        CHECK(b.lora.rank == a.lora.rank);
        CHECK(b.lora.alpha == a.lora.alpha);
        CHECK(b.lora.dropout == a.lora.dropout);
        CHECK(b.lora.target_mask == a.lora.target_mask);
        CHECK(memcmp(b.tokenizer_sha256, a.tokenizer_sha256, 32) == 0);
        REQUIRE(b.params.size() == a.params.size());
        size_t bad = 0;
        for (size_t i = 0; i < a.params.size(); i++) {
            float want = f16_round(a.params[i]);
            bad += memcmp(&want, &b.params[i], 4) != 0;
        }
        CHECK_MESSAGE(bad == 0, base_name(fix) << ": " << bad << " values are not the fp16 rounding of the originals");
        // the layout on disk: "L2AD", version 1, then fp16 values
        std::string bytes = read_bytes(t / "a.bin");
        CHECK(bytes.size() == sizeof(AdapterHeader) + a.params.size() * 2);
        CHECK(bytes.substr(0, 4) == "L2AD");
        CHECK(bytes[4] == 1);

        // NaN, Inf or a value beyond fp16 are refused and leave no file
        for (float v : {NAN, INFINITY, 70000.0f}) {
            CAPTURE(v);
            Adapter x = a;
            x.params[3] = v;
            std::string msg = input_error_of([&] { write_adapter(t / "x.bin", x); });
            CHECK(msg.find(t / "x.bin") != std::string::npos);
            CHECK(!path_exists(t / "x.bin"));
        }
    }
}

TEST_CASE("adapter file: damaged or foreign files are refused naming the file") {
    const std::string fix = tiny_fixtures()[0];
    TempDir t;
    const Config c = fixture_config(fix);
    write_adapter(t / "good.bin", read_peft_adapter(fix + "/adapter", c));
    const std::string good = read_bytes(t / "good.bin");
    CmdResult ex = run_cmd("./export_hf -i " + fix + " -o " + (t / "model.bin"));
    REQUIRE_MESSAGE(ex.exit_code == 0, ex.output);
    auto patched = [&](size_t offset, int32_t v) {
        std::string b = good;
        memcpy(&b[offset], &v, 4);
        return b;
    };
    std::mt19937 rng(7);
    std::string random_bytes(good.size(), '\0');
    for (char& ch : random_bytes) ch = (char)(rng() & 0xff);

    struct Case { const char* what; std::string bytes; const char* mention; };
    std::vector<Case> cases = {
        {"a model file", read_bytes(t / "model.bin"), "it is a model file"},
        {"random bytes", random_bytes, "wrong magic"},
        {"a safetensors file", read_bytes(fix + "/adapter/adapter_model.safetensors"), "wrong magic"},
        {"version 2", patched(offsetof(AdapterHeader, version), 2), "version 2"},
        {"truncated by one byte", good.substr(0, good.size() - 1), "truncated"},
        {"truncated inside the header", good.substr(0, 100), "truncated"},
        {"empty", "", "wrong magic"},
        {"oversized", good + "xy", "oversized"},
        {"tensors declared f32", patched(offsetof(AdapterHeader, dtype), DT_F32), "f32"},
        {"rank 0", patched(offsetof(AdapterHeader, lora) + offsetof(LoraConfig, rank), 0), "rank"},
        {"base with 0 layers", patched(offsetof(AdapterHeader, base) + offsetof(Config, n_layers), 0), "n_layers"},
    };
    for (const Case& k : cases) {
        CAPTURE(k.what);
        const std::string path = t / "bad.bin";
        write_bytes(path, k.bytes);
        std::string msg = input_error_of([&] { read_adapter(path); });
        CHECK_MESSAGE(msg.find(path) != std::string::npos, msg);
        CHECK_MESSAGE(msg.find(k.mention) != std::string::npos, msg);
        CHECK(msg.find('\n') == std::string::npos);
        check_clean_failure(convert_adapter("-i " + path + " -o " + (t / "peft")), path, t / "peft");
    }
}

// ----------------------------------------------------------------------------------------------
// convert_adapter

TEST_CASE("convert_adapter: PEFT -> adapter.bin -> PEFT keeps the fp16-rounded values exactly") {
    for (const std::string& fix : tiny_fixtures()) {
        CAPTURE(fix);
        TempDir t;
        const Config c = fixture_config(fix);
        CmdResult r = convert_adapter("-i " + fix + "/adapter -o " + (t / "a.bin") + " --hf " + fix);
        REQUIRE_MESSAGE(r.exit_code == 0, r.output);
        Adapter a = read_adapter(t / "a.bin");
        CHECK(memcmp(&a.base, &c, sizeof(Config)) == 0);
        CHECK(a.lora.rank == load_json(fix + "/adapter/adapter_config.json")["r"].get<int>());

        // the base config from a model file instead (its tokenizer hash is carried over)
        r = run_cmd("./export_hf -i " + fix + " -o " + (t / "model.bin"));
        REQUIRE_MESSAGE(r.exit_code == 0, r.output);
        r = convert_adapter("-i " + fix + "/adapter -o " + (t / "a_m.bin") + " -m " + (t / "model.bin"));
        REQUIRE_MESSAGE(r.exit_code == 0, r.output);
        Adapter am = read_adapter(t / "a_m.bin");
        InFile model(t / "model.bin");
        CHECK(memcmp(am.tokenizer_sha256, read_model_header(model).tokenizer_sha256, 32) == 0);
        CHECK(memcmp(&am.base, &a.base, sizeof(Config)) == 0);
        CHECK(am.params == a.params);
        // --hf also takes the config.json itself
        r = convert_adapter("-i " + fix + "/adapter -o " + (t / "a_c.bin") + " --hf " + fix + "/config.json");
        REQUIRE_MESSAGE(r.exit_code == 0, r.output);
        CHECK(read_bytes(t / "a_c.bin") == read_bytes(t / "a.bin"));

        // back to PEFT: fp16 by default, the fixture's names and shapes, fp16-rounded values
        r = convert_adapter("-i " + (t / "a.bin") + " -o " + (t / "peft") + " --base-model org/llama-tiny");
        REQUIRE_MESSAGE(r.exit_code == 0, r.output);
        check_peft_tensors(fix, t / "peft/adapter_model.safetensors", "F16", f16_round);
        json j = load_json(t / "peft/adapter_config.json"), fj = load_json(fix + "/adapter/adapter_config.json");
        CHECK(j["r"] == fj["r"]);
        CHECK(j["lora_alpha"] == fj["lora_alpha"]);
        CHECK(json_string_set(j["target_modules"]) == json_string_set(fj["target_modules"]));
        CHECK(j["base_model_name_or_path"] == "org/llama-tiny");
        // f32 on request: the same values, wider
        r = convert_adapter("-i " + (t / "a.bin") + " -o " + (t / "peft32") + " --dtype f32 -m " + (t / "model.bin"));
        REQUIRE_MESSAGE(r.exit_code == 0, r.output);
        check_peft_tensors(fix, t / "peft32/adapter_model.safetensors", "F32", f16_round);
        // and round again: PEFT(f16) -> adapter.bin gives the same file
        r = convert_adapter("-i " + (t / "peft") + " -o " + (t / "a2.bin") + " --hf " + fix);
        REQUIRE_MESSAGE(r.exit_code == 0, r.output);
        CHECK(read_bytes(t / "a2.bin") == read_bytes(t / "a.bin"));
    }
}

TEST_CASE("convert_adapter: an adapter for another base model is refused") {
    const std::vector<std::string> fixtures = tiny_fixtures();
    int pairs = 0;
    for (const std::string& fa : fixtures) {
        CAPTURE(fa);
        TempDir t;
        const Config ca = fixture_config(fa);
        Adapter a = read_peft_adapter(fa + "/adapter", ca);
        CHECK(input_error_of([&] { check_adapter_matches_model(a, "a.bin", ca, "m.bin"); }) == "");
        // other base configs: the other fixtures, and this one with a wider MLP (so a single fixture still tests this)
        std::vector<std::pair<std::string, Config>> others;
        Config wider = ca;
        wider.hidden_dim += 8;
        others.push_back({"(wider MLP)", wider});
        for (const std::string& fb : fixtures)
            if (fb != fa && !same_architecture(ca, fixture_config(fb))) others.push_back({fb, fixture_config(fb)});
        for (auto& ob : others) {
            CAPTURE(ob.first);
            std::string msg = input_error_of([&] { check_adapter_matches_model(a, "a.bin", ob.second, "m.bin"); });
            CHECK(msg.find("a.bin") != std::string::npos);
            CHECK(msg.find("m.bin") != std::string::npos);
            msg = input_error_of([&] { read_peft_adapter(fa + "/adapter", ob.second); });
            CHECK_MESSAGE(msg.find(fa + "/adapter/adapter_model.safetensors") != std::string::npos, msg);
            CHECK_MESSAGE(msg.find("shape") != std::string::npos, msg);
            CHECK(msg.find('\n') == std::string::npos);
        }
        for (const std::string& fb : fixtures) {
            if (fb == fa || same_architecture(ca, fixture_config(fb))) continue;
            pairs++;
            CAPTURE(fb);
            check_clean_failure(convert_adapter("-i " + fa + "/adapter -o " + (t / "x.bin") + " --hf " + fb),
                                fa + "/adapter/adapter_model.safetensors", t / "x.bin");
            // adapter file -> PEFT with a model given: checked against it
            write_adapter(t / "a.bin", a);
            CmdResult ex = run_cmd("./export_hf -i " + fb + " -o " + (t / "other.bin"));
            REQUIRE_MESSAGE(ex.exit_code == 0, ex.output);
            check_clean_failure(convert_adapter("-i " + (t / "a.bin") + " -o " + (t / "peft") + " -m " + (t / "other.bin")),
                                t / "a.bin", t / "peft");
        }
    }
    if (pairs == 0) WARN("only one fixture architecture: the cross-fixture cases did not run");
}

TEST_CASE("PEFT: unsupported or broken adapter directories are refused naming the file") {
    const std::string fix = tiny_fixtures()[0];
    const Config c = fixture_config(fix);
    const json fj = load_json(fix + "/adapter/adapter_config.json");
    const std::string st_src = absolute(fix + "/adapter/adapter_model.safetensors");
    TempDir t;
    int n = 0;
    // A PEFT dir whose adapter_config.json is `cfg_text` and whose safetensors is the fixture's
    // (linked) unless `link_st` is false.
    auto peft_dir = [&](const std::string& cfg_text, bool link_st = true) {
        std::string d = t / ("p" + std::to_string(n++));
        REQUIRE(mkdir(d.c_str(), 0755) == 0);
        if (!cfg_text.empty()) write_bytes(d + "/adapter_config.json", cfg_text);
        if (link_st) REQUIRE(symlink(st_src.c_str(), (d + "/adapter_model.safetensors").c_str()) == 0);
        return d;
    };
    auto edited = [&](const std::function<void(json&)>& edit) {
        json j = fj;
        edit(j);
        return j.dump(2);
    };
    struct Case { const char* what; std::string dir; std::string file; const char* mention; };
    std::vector<Case> cases;
    auto add_cfg = [&](const char* what, const std::function<void(json&)>& edit, const char* mention) {
        std::string d = peft_dir(edited(edit));
        cases.push_back({what, d, d + "/adapter_config.json", mention});
    };
    add_cfg("DoRA", [](json& j) { j["use_dora"] = true; }, "use_dora");
    add_cfg("rsLoRA", [](json& j) { j["use_rslora"] = true; }, "use_rslora");
    add_cfg("LoRA bias", [](json& j) { j["lora_bias"] = true; }, "lora_bias");
    add_cfg("fan_in_fan_out", [](json& j) { j["fan_in_fan_out"] = true; }, "fan_in_fan_out");
    add_cfg("biases", [](json& j) { j["bias"] = "all"; }, "bias");
    add_cfg("not LoRA", [](json& j) { j["peft_type"] = "IA3"; }, "LORA");
    add_cfg("per-module ranks", [](json& j) { j["rank_pattern"] = {{"q_proj", 16}}; }, "rank_pattern");
    add_cfg("some layers only", [](json& j) { j["layers_to_transform"] = {0}; }, "layers_to_transform");
    add_cfg("embedding target", [](json& j) { j["target_modules"].push_back("embed_tokens"); }, "embed_tokens");
    add_cfg("target_modules as a regex string", [](json& j) { j["target_modules"] = ".*proj"; }, "target_modules");
    add_cfg("no r", [](json& j) { j.erase("r"); }, "\"r\"");
    add_cfg("alpha a string", [](json& j) { j["lora_alpha"] = "16"; }, "lora_alpha");
    add_cfg("dropout a string", [](json& j) { j["lora_dropout"] = "0.1"; }, "lora_dropout");
    {
        std::string d = peft_dir("{\"r\": 8, ");
        cases.push_back({"config not JSON", d, d + "/adapter_config.json", "JSON"});
        d = peft_dir("");
        cases.push_back({"no adapter_config.json", d, d + "/adapter_config.json", "cannot open"});
        d = peft_dir(fj.dump(), false);
        cases.push_back({"no adapter_model.safetensors", d, d + "/adapter_model.safetensors", "cannot open"});
        d = peft_dir(fj.dump(), false);
        write_bytes(d + "/adapter_model.bin", "pickle");
        cases.push_back({"a pickled adapter_model.bin", d, d + "/adapter_model.safetensors", "safe_serialization"});
        // the config contradicts the tensors
        d = peft_dir(edited([](json& j) { j["r"] = j["r"].get<int>() + 1; }));
        cases.push_back({"r larger than the tensors", d, d + "/adapter_model.safetensors", "shape"});
        d = peft_dir(edited([](json& j) {
            json keep = json::array();
            for (const json& m : j["target_modules"])
                if (m != "q_proj") keep.push_back(m);
            j["target_modules"] = keep;
        }));
        cases.push_back({"tensors of a target the config does not list", d, d + "/adapter_model.safetensors", "q_proj"});
    }
    for (const Case& k : cases) {
        CAPTURE(k.what);
        std::string msg = input_error_of([&] { read_peft_adapter(k.dir, c); });
        CHECK_MESSAGE(msg.find(k.file) != std::string::npos, msg);
        CHECK_MESSAGE(msg.find(k.mention) != std::string::npos, msg);
        CHECK(msg.find('\n') == std::string::npos);
        check_clean_failure(convert_adapter("-i " + k.dir + " -o " + (t / "out.bin") + " --hf " + fix), k.file, t / "out.bin");
    }
}

TEST_CASE("convert_adapter: command line") {
    CmdResult r = convert_adapter("--help");
    CHECK(r.exit_code == 0);
    for (const char* flag : {"-i", "--input", "-o", "--output", "-m", "--model", "--hf", "--dtype", "--base-model", "--help"})
        CHECK_MESSAGE(r.output.find(std::string(flag) + " ") != std::string::npos, flag);
    const std::string fix = tiny_fixtures()[0];
    TempDir t;
    struct Bad { std::string args; const char* mention; };
    std::vector<Bad> bad = {
        {"-i x -o y --frobnicate", "--frobnicate"},
        {"-o y", "-i"},
        {"-i x", "-o"},
        {"-i " + fix + "/adapter -o " + (t / "a.bin"), "-m"},                                  // PEFT in, no base
        {"-i " + fix + "/adapter -o " + (t / "a.bin") + " -m x --hf y", "--hf"},                // both bases
        {"-i " + fix + "/adapter -o " + (t / "a.bin") + " --hf " + fix + " --dtype f32", "--dtype"},  // PEFT in: no dtype
    };
    for (const Bad& b : bad) {
        CAPTURE(b.args);
        r = convert_adapter(b.args);
        CHECK(r.exit_code == 2);
        CHECK(count_lines(r.output) == 1);
        CHECK(r.output.find(b.mention) != std::string::npos);
        CHECK(!path_exists(t / "a.bin"));
    }
    write_adapter(t / "a.bin", read_peft_adapter(fix + "/adapter", fixture_config(fix)));
    r = convert_adapter("-i " + (t / "a.bin") + " -o " + (t / "p") + " --dtype bf8");
    CHECK(r.exit_code == 2);
    CHECK(r.output.find("bf8") != std::string::npos);
    CHECK(!path_exists(t / "p"));
    // -o an existing file where a PEFT directory goes
    write_bytes(t / "file", "x");
    r = convert_adapter("-i " + (t / "a.bin") + " -o " + (t / "file"));
    CHECK(r.exit_code == 1);
    CHECK(count_lines(r.output) == 1);
    CHECK(read_bytes(t / "file") == "x");
}
