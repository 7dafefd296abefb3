// test/cpu_convert_adapter.cpp — tests of ./convert_adapter (tools/convert_adapter.cpp): PEFT ->
// adapter file -> PEFT both ways (fp16 by default, f32 on request, the base config from a model
// file or a checkpoint's config.json), adapters for another base model refused (exit 1, one line
// naming the file, no output), and the command line.
// Run from the repo root after `make NO_CUDA=1 export_hf convert_adapter test_cpu`:
//   ./test_cpu -tc="convert_adapter*"
// Fixtures: every tiny_* directory under $FIXTURES_DIR (default ../shared/fixtures) with its
// adapter/; a new one is picked up with no code change; failures name the fixture and tensor.
#include <doctest/doctest.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "hf.h"
#include "model.h"
#include "test/fixture_util.h"
#include "test/test_util.h"

// (helpers: load_json, fixture_config, f16_round, json_string_set, check_peft_tensors,
// convert_adapter and check_clean_failure are in test/fixture_util.h)

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
