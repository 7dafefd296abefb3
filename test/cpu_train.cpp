// test/cpu_train.cpp — ./train itself on the CPU path: command-line errors, data made for another
// vocabulary, the built-in demo end to end (loss falls, outputs load, the PEFT export equals
// adapter.bin), bitwise resume, and NaN handling. Its parts have their own files: packing and
// schedules test/cpu_schedule.cpp, log.csv and state.bin test/cpu_checkpoint.cpp, presets
// test/cpu_model.cpp. Run from the repo root after `make NO_CUDA=1 train test_cpu`:
//   ./test_cpu -tc="train*"
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>

#include "../hf.h"
#include "../llama2_cpu.h"
#include "../checkpoint.h"
#include "fixture_util.h"
#include "test_util.h"

// (make_dataset, conversations of given lengths, is in test/fixture_util.h)

TEST_CASE("train: command-line errors exit 2 with one line, bad input exits 1") {
    TempDir tmp;
    for (const char* args : {"--bogus", "--rank 0", "--lr abc", "--schedule step", "-i x.bin", "--device tpu", "--quant int8",
                             "--rank"}) {
        CmdResult r = run_cmd(std::string("./train ") + args + " -o " + tmp.path);
        CHECK_MESSAGE(r.exit_code == 2, args << ": " << r.output);
        CHECK_MESSAGE(count_lines(r.output) == 1, args << ": " << r.output);
    }
    CmdResult r = run_cmd("./train --device cpu -i " + tmp / "missing.bin" + " -m " + tmp / "model.bin -o " + tmp.path);
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("missing.bin") != std::string::npos);
    CHECK(count_lines(r.output) == 1);
    // --help is generated from the option table
    r = run_cmd("./train --help");
    CHECK(r.exit_code == 0);
    for (const char* flag : {"--data", "--model", "--quant", "--micro-tokens", "--resume", "--stop-at", "--recompute", "--device"})
        CHECK_MESSAGE(r.output.find(flag) != std::string::npos, flag);
}

TEST_CASE("train: data made for another vocabulary is refused") {
    TempDir tmp;
    Dataset d = make_dataset({10, 12}, 600);
    write_dataset(tmp / "data.bin", d);
    Config c = llama2_preset("7b");
    c.n_layers = 1, c.dim = 128, c.hidden_dim = 256, c.n_heads = c.n_kv_heads = 1, c.vocab_size = 300;
    std::vector<uint16_t> w((size_t)total_weight_numel(c), 0x3f80);
    write_model(tmp / "model.bin", make_model_header(c, DT_BF16), w.data(), w.size() * 2);
    CmdResult r = run_cmd("./train --device cpu -i " + tmp / "data.bin" + " -m " + tmp / "model.bin -o " + tmp / "out");
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("vocab") != std::string::npos);
    CHECK(count_lines(r.output) == 1);
}

TEST_CASE("train: the built-in demo on the CPU: loss falls, outputs load, PEFT export equals adapter.bin") {
    TempDir tmp;
    CmdResult r = run_cmd("./train --device cpu -o " + tmp.path);
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    std::vector<LogRow> log = read_log(tmp / "log.csv");
    REQUIRE(log.size() >= 20);
    double first = 0, last = 0;
    for (int i = 0; i < 5; i++) first += log[i].loss / 5, last += log[log.size() - 1 - i].loss / 5;
    CHECK_MESSAGE(last < first - 1.0, "loss " << first << " -> " << last);
    CHECK(std::isfinite(log.back().val_loss));
    CHECK(log.back().val_loss < log[9].val_loss);  // held-out loss falls too (first eval at step 10)
    Adapter a = read_adapter(tmp / "adapter.bin");
    InFile mf(tmp / "model.bin");
    ModelHeader mh = read_model_header(mf);
    check_adapter_matches_model(a, "adapter.bin", mh.config, "model.bin");
    Adapter p = read_peft_adapter(tmp / "adapter", mh.config);
    CHECK(p.params == a.params);  // the PEFT copy holds exactly adapter.bin's fp16 values
    CHECK(p.lora.rank == a.lora.rank);
    CHECK(p.lora.alpha == a.lora.alpha);
    TrainState st = read_state(tmp / "state.bin");
    CHECK(st.header.step == (int64_t)log.size());
    for (size_t i = 0; i < st.params.size(); i++) REQUIRE(f16_to_f32(f32_to_f16(st.params[i])) == a.params[i]);
    if (system("command -v gnuplot >/dev/null 2>&1") == 0) CHECK(path_exists(tmp / "loss_curve.png"));
    // the progress lines: step/total, epoch, loss, lr, tokens/s, ETA
    CHECK(r.output.find("step 1/") != std::string::npos);
    CHECK(r.output.find("tok/s") != std::string::npos);
    CHECK(r.output.find("ETA") != std::string::npos);
}

TEST_CASE("train: 8 steps straight equal 4 + resume + 4, bit for bit (CPU)") {
    TempDir tmp;
    const std::string common = "./train --device cpu --steps 8 --eval-every 4 --micro-tokens 300 ";
    REQUIRE(run_cmd(common + "-o " + tmp / "a").exit_code == 0);
    REQUIRE(run_cmd(common + "--stop-at 4 -o " + tmp / "b").exit_code == 0);
    CHECK(read_state(tmp / "b/state.bin").header.step == 4);
    CmdResult r = run_cmd(common + "-o " + tmp / "b" + " --resume");
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    CHECK(read_bytes(tmp / "a/adapter.bin") == read_bytes(tmp / "b/adapter.bin"));
    CHECK(read_bytes(tmp / "a/state.bin") == read_bytes(tmp / "b/state.bin"));
    std::vector<LogRow> la = read_log(tmp / "a/log.csv"), lb = read_log(tmp / "b/log.csv");
    REQUIRE(la.size() == 8);
    REQUIRE(lb.size() == 8);
    for (size_t i = 0; i < 8; i++) {
        CHECK(la[i].loss == lb[i].loss);
        CHECK(la[i].grad_norm == lb[i].grad_norm);
    }
    // resuming with other settings is refused
    r = run_cmd(common + "-o " + tmp / "b" + " --resume --lr 1e-3");
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("state.bin") != std::string::npos);
}

TEST_CASE("train: a NaN stops the run with the step number and saves nothing") {
    TempDir tmp;
    // a small model whose LM head overflows fp32 (finite weights, so the file loads): the first loss is NaN
    Config c = llama2_preset("7b");
    c.n_layers = 1, c.dim = 64, c.hidden_dim = 128, c.n_heads = c.n_kv_heads = 2, c.head_dim = 32, c.vocab_size = 50;
    std::vector<float> w = cpu_random_weights(c, 1);
    Weights<float> wv = carve_weights(c, w.data());
    for (int i = 0; i < c.dim; i++) wv.lm_head[7 * c.dim + i] = 3e38f;
    write_model(tmp / "model.bin", make_model_header(c, DT_F32), w.data(), w.size() * 4);
    write_dataset(tmp / "data.bin", make_dataset({10, 12, 9}));
    { std::ofstream(tmp / "adapter.bin") << "previous good adapter"; }
    CmdResult r = run_cmd("./train --device cpu --quant bf16 -i " + tmp / "data.bin" + " -m " + tmp / "model.bin -o " + tmp.path +
                          " --steps 3");
    CHECK(r.exit_code == 1);
    CHECK_MESSAGE(r.output.find("step 1: the loss is NaN") != std::string::npos, r.output);
    CHECK_MESSAGE(r.output.find("no checkpoint") != std::string::npos, r.output);
    CHECK(read_bytes(tmp / "adapter.bin") == "previous good adapter");
    CHECK(!path_exists(tmp / "state.bin"));
    // a NaN stored in the weights is refused when the file is read, naming the tensor
    wv.lm_head[7] = NAN;
    write_model(tmp / "nan.bin", make_model_header(c, DT_F32), w.data(), w.size() * 4);
    r = run_cmd("./train --device cpu --quant bf16 -i " + tmp / "data.bin" + " -m " + tmp / "nan.bin -o " + (tmp / "o2"));
    CHECK(r.exit_code == 1);
    CHECK_MESSAGE(r.output.find("nan.bin: lm_head.weight: element 7 is NaN or Inf") != std::string::npos, r.output);
}
