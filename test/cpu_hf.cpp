// test/cpu_hf.cpp — tests of the Hugging Face formats (hf.cpp): safetensors read/write (the
// fixtures' files written by HF's safetensors, a header that lies), config.json in its old and new
// forms, and PEFT adapters: reading the fixtures' real PEFT output (adapter_config.json +
// adapter_model.safetensors written by peft save_pretrained), writing PEFT back (names, shapes,
// config as PEFT has them), and unsupported or broken adapter directories (also through
// ./convert_adapter: exit 1, one line naming the file).
// Run from the repo root after `make NO_CUDA=1 convert_adapter test_cpu`:
//   ./test_cpu -tc="safetensors*,config.json*,PEFT*"
// Fixtures: every tiny_* directory under $FIXTURES_DIR (default ../shared/fixtures) with its
// adapter/; a new one is picked up with no code change; failures name the fixture and tensor.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "hf.h"
#include "model.h"
#include "test/fixture_util.h"
#include "test/test_util.h"

// (helpers: load_json, rewrite_header, fixture_config, peft_slots, check_peft_tensors, convert_adapter
// and check_clean_failure are in test/fixture_util.h; file utilities and input_error_of() in test/test_util.h)

// ----------------------------------------------------------------------------------------------
// safetensors and config.json

TEST_CASE("safetensors: write then read keeps names, dtypes, shapes, bytes and metadata") {
    TempDir t;
    std::vector<float> f32 = {1.5f, -2.25f, 3.0e-8f, 65504.0f, -0.0f, 7.0f};  // (2, 3)
    std::vector<uint16_t> f16 = {0x3c00, 0xc000, 0x0001, 0x7bff};              // (4)
    std::vector<uint16_t> bf16 = {0x3f80, 0x4049};                             // (1, 2)
    std::vector<int32_t> i32 = {-7, 0, 123456789};                            // (3)
    std::vector<uint8_t> u8 = {0, 255, 17, 4, 9};                              // (5)
    write_safetensors(t / "a.safetensors",
                      {{"w.f32", "F32", {2, 3}, f32.data()}, {"w.f16", "F16", {4}, f16.data()},
                       {"w.bf16", "BF16", {1, 2}, bf16.data()}, {"i", "I32", {3}, i32.data()},
                       {"u", "U8", {5}, u8.data()}, {"empty", "F32", {0, 4}, nullptr}},
                      {{"r", "8"}, {"note", "x"}});
    std::string b = read_bytes(t / "a.safetensors");
    uint64_t n;
    memcpy(&n, b.data(), 8);
    CHECK(n % 8 == 0);  // the format pads the header to a multiple of 8
    CHECK(b.size() == 8 + n + 24 + 8 + 4 + 12 + 5);

    SafeTensors st(t / "a.safetensors");
    CHECK(st.tensors.size() == 6);
    CHECK(st.metadata == std::map<std::string, std::string>{{"r", "8"}, {"note", "x"}});
    CHECK(st.get("w.f32").shape == std::vector<int64_t>{2, 3});
    CHECK(st.get("empty").shape == std::vector<int64_t>{0, 4});
    CHECK(st.read_f32("w.f32", {2, 3}) == f32);
    CHECK(st.read_f32("w.f16") == std::vector<float>{1.0f, -2.0f, 5.9604645e-8f, 65504.0f});
    CHECK(st.read_f32("w.bf16") == std::vector<float>{1.0f, 3.140625f});
    CHECK(st.read_i32("i") == i32);
    CHECK(st.read_u8("u") == u8);
    std::string msg = input_error_of([&] { st.read_f32("w.f32", {3, 2}); });
    CHECK(msg.find("a.safetensors") != std::string::npos);
    CHECK(msg.find("w.f32") != std::string::npos);
    CHECK(input_error_of([&] { st.get("nope"); }).find("nope") != std::string::npos);
    CHECK(input_error_of([&] { st.read_f32("i"); }).find("I32") != std::string::npos);

    // a shape whose element count overflows 64 bits (2^32 * 2^32 * 2 bytes wraps to 0) must not
    // pass as an empty tensor
    const int64_t data_bytes = (int64_t)(b.size() - 8 - n);
    rewrite_header(t / "a.safetensors", t / "huge.safetensors", [&](json& h) {
        h["huge"] = {{"dtype", "F16"}, {"shape", {4294967296LL, 4294967296LL}}, {"data_offsets", {data_bytes, data_bytes}}};
    });
    msg = input_error_of([&] { SafeTensors bad(t / "huge.safetensors"); });
    CHECK_MESSAGE(msg.find(t / "huge.safetensors") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find("'huge' has an invalid shape") != std::string::npos, msg);
}

TEST_CASE("safetensors: the fixtures' files (written by HF's safetensors) are read with every tensor") {
    for (const std::string& fix : tiny_fixtures()) {
        CAPTURE(fix);
        // the first 8 bytes and the JSON header, parsed here independently of SafeTensors
        std::string b = read_bytes(fix + "/model.safetensors");
        uint64_t n;
        memcpy(&n, b.data(), 8);
        json h = json::parse(b.substr(8, n));
        SafeTensors st(fix + "/model.safetensors");
        CHECK(st.tensors.size() == h.size() - h.count("__metadata__"));
        for (auto it = h.begin(); it != h.end(); ++it) {
            if (it.key() == "__metadata__") continue;
            REQUIRE_MESSAGE(st.has(it.key()), it.key());
            const StTensor& t = st.get(it.key());
            CHECK(t.dtype == it.value()["dtype"].get<std::string>());
            CHECK(t.shape == it.value()["shape"].get<std::vector<int64_t>>());
            CHECK(t.begin == (int64_t)(8 + n) + it.value()["data_offsets"][0].get<int64_t>());
            CHECK(t.end == (int64_t)(8 + n) + it.value()["data_offsets"][1].get<int64_t>());
        }
    }
}

TEST_CASE("config.json: new and old forms, rope_theta, dtype, rms_norm_eps") {
    for (const std::string& fix : tiny_fixtures()) {
        CAPTURE(fix);
        TempDir t;
        json orig = load_json(fix + "/config.json");
        int32_t dtype;
        Config c = parse_hf_config(fix + "/config.json", &dtype);
        // the fields as config.json states them, compared independently of the parser
        CHECK(c.dim == orig["hidden_size"].get<int>());
        CHECK(c.hidden_dim == orig["intermediate_size"].get<int>());
        CHECK(c.n_layers == orig["num_hidden_layers"].get<int>());
        CHECK(c.n_heads == orig["num_attention_heads"].get<int>());
        CHECK(c.n_kv_heads == orig.value("num_key_value_heads", c.n_heads));
        CHECK(c.vocab_size == orig["vocab_size"].get<int>());
        CHECK(c.max_seq_len == orig["max_position_embeddings"].get<int>());
        CHECK(c.norm_eps == orig["rms_norm_eps"].get<float>());
        CHECK(c.tie_embeddings == (int)orig.value("tie_word_embeddings", false));
        std::string declared = orig.value("dtype", orig.value("torch_dtype", std::string()));
        CHECK(dtype == (declared == "float16" ? DT_F16 : declared == "bfloat16" ? DT_BF16 : declared == "float32" ? DT_F32 : -1));

        auto parse = [&](const json& j, int32_t* d) {
            save_json(t / "config.json", j);
            return parse_hf_config(t / "config.json", d);
        };
        // old form: torch_dtype, no rope_theta anywhere -> 10000
        json old = orig;
        old.erase("dtype");
        old.erase("rope_parameters");
        old.erase("rope_theta");
        old["torch_dtype"] = "float16";
        old["rope_scaling"] = nullptr;
        int32_t d = 0;
        Config co = parse(old, &d);
        CHECK(co.rope_theta == 10000.0f);
        CHECK(d == DT_F16);
        CHECK(same_architecture(co, c));
        // old form with a top-level rope_theta (as Llama 2 configs after 2023 carry)
        old["rope_theta"] = 500000.0;
        CHECK(parse(old, &d).rope_theta == 500000.0f);
        // new form: rope_parameters.rope_theta, dtype
        json neu = orig;
        neu["rope_parameters"] = {{"rope_theta", 250000.0}, {"rope_type", "default"}};
        neu["dtype"] = "bfloat16";
        Config cn = parse(neu, &d);
        CHECK(cn.rope_theta == 250000.0f);
        CHECK(d == DT_BF16);
        // rms_norm_eps is read, never assumed
        neu["rms_norm_eps"] = 1e-6;
        CHECK(parse(neu, &d).norm_eps == 1e-6f);
        // no dtype at all; no num_key_value_heads (pre-GQA) means one kv head per query head
        json bare = orig;
        bare.erase("dtype");
        bare.erase("torch_dtype");
        bare.erase("num_key_value_heads");
        Config cb = parse(bare, &d);
        CHECK(d == -1);
        CHECK(cb.n_kv_heads == cb.n_heads);
        // eos_token_id as a list of one (newer configs): that id; several ids are refused below
        json eos_list = orig;
        eos_list["eos_token_id"] = {2};
        CHECK(parse(eos_list, &d).eos_id == 2);

        // refused: each names the file and the key
        struct Bad { const char* what; std::function<void(json&)> edit; const char* key; };
        std::vector<Bad> bad = {
            {"several eos ids", [](json& j) { j["eos_token_id"] = {1, 2}; }, "eos_token_id"},
            {"head_dim a list", [](json& j) { j["head_dim"] = {32}; }, "head_dim"},
            {"tie_word_embeddings a number", [](json& j) { j["tie_word_embeddings"] = 1; }, "tie_word_embeddings"},
            {"num_key_value_heads a string", [](json& j) { j["num_key_value_heads"] = "2"; }, "num_key_value_heads"},
            {"no rms_norm_eps", [](json& j) { j.erase("rms_norm_eps"); }, "rms_norm_eps"},
            {"rms_norm_eps a string", [](json& j) { j["rms_norm_eps"] = "1e-5"; }, "rms_norm_eps"},
            {"rope_theta a string", [](json& j) { j["rope_parameters"]["rope_theta"] = "big"; }, "rope_theta"},
            {"not llama", [](json& j) { j["model_type"] = "mistral"; }, "mistral"},
            {"rope scaling", [](json& j) { j["rope_parameters"]["rope_type"] = "llama3"; }, "llama3"},
            {"kv heads wrap", [](json& j) { j["num_key_value_heads"] = 4294967296LL + 1; }, "num_key_value_heads"},
            {"kv heads not dividing", [](json& j) { j["num_key_value_heads"] = j["num_attention_heads"].get<int>() + 1; }, "n_kv_heads"},
            {"no hidden_size", [](json& j) { j.erase("hidden_size"); }, "hidden_size"},
            {"dtype float64", [](json& j) { j["dtype"] = "float64"; }, "float64"},
            {"biases", [](json& j) { j["attention_bias"] = true; }, "attention_bias"},
            {"not an object", [](json& j) { j = json::array({1, 2}); }, "config.json"},
        };
        for (const Bad& b : bad) {
            CAPTURE(b.what);
            json j = orig;
            b.edit(j);
            std::string msg = input_error_of([&] { parse(j, &d); });
            CHECK(msg.find(t / "config.json") != std::string::npos);
            CHECK(msg.find(b.key) != std::string::npos);
        }
        write_bytes(t / "config.json", "{\"hidden_size\": 256,");
        CHECK(input_error_of([&] { parse_hf_config(t / "config.json", &d); }).find("not valid JSON") != std::string::npos);
    }
}

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
    add_cfg("DoRA as 1 (PEFT would apply it)", [](json& j) { j["use_dora"] = 1; }, "use_dora");
    add_cfg("rsLoRA as a string", [](json& j) { j["use_rslora"] = "true"; }, "use_rslora");
    add_cfg("per-module alphas", [](json& j) { j["alpha_pattern"] = {{"v_proj", 32}}; }, "alpha_pattern");
    add_cfg("r a float", [](json& j) { j["r"] = 8.5; }, "\"r\"");
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
