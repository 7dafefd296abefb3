// test/cpu_train.cpp — ./train's logic and the program itself on the CPU path: packing, the data
// schedule, learning-rate schedules, state.bin and log.csv, command-line errors, the built-in demo
// end to end, bitwise resume, PEFT export read back, and NaN handling. Run: ./test_cpu -tc="train*"
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <set>

#include "../hf.h"
#include "../llama2_cpu.h"
#include "../schedule.h"
#include "../checkpoint.h"
#include "../train_config.h"
#include "test_util.h"

// conversations of the given lengths, answers in their second half
static Dataset make_dataset(const std::vector<int>& lens, int vocab = 50) {
    Dataset d;
    memset(&d.header, 0, sizeof(d.header));
    d.header.magic = DATA_MAGIC;
    d.header.version = DATA_VERSION;
    d.header.vocab_size = vocab;
    d.header.bos_id = 1;
    d.header.eos_id = 2;
    d.header.max_len = 4096;
    d.conv_offsets = {0};
    Rng rng(3);
    for (int len : lens) {
        for (int j = 0; j < len; j++) {
            d.tokens.push_back(j == 0 ? 1 : 3 + (int32_t)(rng.next() % (vocab - 3)));
            d.loss_mask.push_back(j >= len / 2);
            d.header.n_loss_tokens += j >= len / 2;
        }
        d.conv_offsets.push_back((int64_t)d.tokens.size());
        d.header.n_turns++;
    }
    d.header.n_tokens = (int64_t)d.tokens.size();
    d.header.n_conversations = (int64_t)lens.size();
    return d;
}

TEST_CASE("train: packing keeps the budget, the order and every conversation once") {
    const std::vector<int> lens = {5, 9, 3, 12, 7, 7, 1, 20, 4};
    Dataset d = make_dataset(lens);
    std::vector<int64_t> convs = {8, 3, 0, 7, 1, 2, 6, 4, 5};
    auto rows = pack_rows(d, convs, 16);
    std::vector<int64_t> flat;
    for (const auto& row : rows) {
        int64_t used = 0;
        for (int64_t c : row) used += lens[c], flat.push_back(c);
        // a row exceeds the budget only when it is one conversation longer than the budget
        CHECK((used <= 16 || row.size() == 1));
        CHECK(!row.empty());
    }
    CHECK(flat == convs);  // in order, each once
    // greedy: a row is closed only when the next conversation would not fit
    for (size_t i = 0; i + 1 < rows.size(); i++) {
        int64_t used = 0;
        for (int64_t c : rows[i]) used += lens[c];
        CHECK(used + lens[rows[i + 1][0]] > 16);
    }
    // packed rows become batches whose targets count the answer tokens exactly
    int64_t targets = 0;
    for (const auto& row : rows) {
        CpuBatch b = batch_from_conversations(d, {row});
        for (int32_t t : b.targets) targets += t >= 0;
    }
    CHECK(targets == count_targets(d, convs));
}

TEST_CASE("train: the data schedule shuffles per epoch and visits every conversation once an epoch") {
    TrainSettings s;
    s.batch = 4;
    s.epochs = 3;
    s.seed = 77;
    const DataPlan p = plan_data(s, 10);
    CHECK(p.steps_per_epoch == 3);  // 4 + 4 + 2
    CHECK(p.total_steps == 9);
    std::vector<std::vector<int64_t>> epochs(3);
    for (int64_t k = 0; k < p.total_steps; k++) {
        auto c = step_conversations(s, p, k);
        CHECK(c.size() == (k % 3 == 2 ? 2u : 4u));
        for (int64_t x : c) epochs[k / 3].push_back(x);
    }
    for (auto& e : epochs) {
        std::set<int64_t> seen(e.begin(), e.end());
        CHECK(seen.size() == 10);
        CHECK(*seen.rbegin() == 9);
    }
    CHECK(epochs[0] != epochs[1]);  // reshuffled
    CHECK(epoch_order(10, 77, 1) == epoch_order(10, 77, 1));
    CHECK(epoch_order(10, 77, 1) != epoch_order(10, 78, 1));
    s.steps = 20;  // --steps overrides epochs and wraps around
    CHECK(plan_data(s, 10).total_steps == 20);
}

TEST_CASE("train: learning-rate schedules with warm-up") {
    TrainSettings s;
    s.lr = 1e-3f;
    s.warmup = 0.1f;
    const int64_t total = 100;  // 10 warm-up steps
    s.schedule = SCHEDULE_CONSTANT;
    CHECK(lr_at(s, 0, total) == 0.0f);  // transformers: the first step's factor is 0 / warmup
    CHECK(lr_at(s, 5, total) == doctest::Approx(5e-4));
    CHECK(lr_at(s, 10, total) == doctest::Approx(1e-3));
    CHECK(lr_at(s, 99, total) == doctest::Approx(1e-3));
    s.schedule = SCHEDULE_LINEAR;
    CHECK(lr_at(s, 10, total) == doctest::Approx(1e-3));
    CHECK(lr_at(s, 55, total) == doctest::Approx(1e-3 * 45.0 / 90.0));
    s.schedule = SCHEDULE_COSINE;
    CHECK(lr_at(s, 55, total) == doctest::Approx(1e-3 * 0.5 * (1 + std::cos(M_PI * 0.5))));
    CHECK(lr_at(s, 100, total) == doctest::Approx(0.0).epsilon(1e-6));
    s.warmup = 0.0f;
    CHECK(lr_at(s, 0, total) == doctest::Approx(1e-3));
}

TEST_CASE("train: log.csv and state.bin round trip, and foreign files are refused") {
    TempDir tmp;
    std::vector<LogRow> rows = {{1, 0.5, 2.5, NAN, 1e-4, 0.7, 1234.5, NAN, NAN}, {2, 1.0, 2.25, 2.4, 2e-4, 0.6, 1300.0, 0.31, 15.8}};
    write_log(tmp / "log.csv", rows);
    CHECK(read_bytes(tmp / "log.csv").rfind(std::string(LOG_HEADER) + "\n", 0) == 0);
    std::vector<LogRow> back = read_log(tmp / "log.csv");
    REQUIRE(back.size() == 2);
    CHECK(back[1].val_loss == doctest::Approx(2.4));
    CHECK(std::isnan(back[0].val_loss));
    CHECK(back[1].mfu == doctest::Approx(0.31));
    { std::ofstream(tmp / "bad.csv") << "a,b\n1,2\n"; }
    CHECK_THROWS_AS(read_log(tmp / "bad.csv"), InputError);

    Config c = llama2_preset("7b");
    c.n_layers = 2;
    c.dim = 256;
    c.hidden_dim = 512;
    c.n_heads = c.n_kv_heads = 2;
    c.vocab_size = 50;
    Dataset d = make_dataset({5, 6});
    TrainSettings s;
    s.rank = 4;
    LoraConfig lc{4, 16.0f, 0.1f, LORA_ALL_TARGETS};
    TrainState st;
    st.header = StateHeader{};
    st.header.magic = STATE_MAGIC;
    st.header.version = STATE_VERSION;
    st.header.base = c;
    st.header.lora = lc;
    st.header.settings = s;
    st.header.step = 3;
    st.header.total_steps = 10;
    st.header.n_conversations = 2;
    st.header.n_tokens = d.header.n_tokens;
    st.header.data_hash = dataset_hash(d);
    const size_t n = (size_t)lora_layout(c, lc).total;
    Rng rng(1);
    for (auto* v : {&st.params, &st.m, &st.v}) {
        v->resize(n);
        for (float& x : *v) x = rng.normal();
    }
    write_state(tmp / "state.bin", st);
    TrainState r = read_state(tmp / "state.bin");
    CHECK(r.params == st.params);
    CHECK(r.v == st.v);
    CHECK(r.header.step == 3);
    check_state_matches(r.header, "state.bin", c, lc, s, d);  // no throw
    TrainSettings other = s;
    other.lr = 1e-3f;
    CHECK_THROWS_AS(check_state_matches(r.header, "state.bin", c, lc, other, d), InputError);
    Dataset d2 = make_dataset({5, 7});
    CHECK_THROWS_AS(check_state_matches(r.header, "state.bin", c, lc, s, d2), InputError);
    // truncated, foreign
    std::string bytes = read_bytes(tmp / "state.bin");
    { std::ofstream(tmp / "cut.bin", std::ios::binary) << bytes.substr(0, bytes.size() - 10); }
    try {
        read_state(tmp / "cut.bin");
        FAIL("truncated state accepted");
    } catch (const InputError& e) {
        CHECK(std::string(e.what()).find("cut.bin: truncated") != std::string::npos);
    }
    CHECK_THROWS_AS(read_state(tmp / "log.csv"), InputError);
}

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
    const ModelHeader h = make_model_header(c, DT_BF16);
    std::vector<uint16_t> w((size_t)total_weight_numel(c), 0x3f80);
    {
        std::ofstream f(tmp / "model.bin", std::ios::binary);
        f.write((const char*)&h, sizeof(h));
        f.write((const char*)w.data(), w.size() * 2);
    }
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
    // a small model whose LM head holds a NaN: the first loss is NaN
    Config c = llama2_preset("7b");
    c.n_layers = 1, c.dim = 64, c.hidden_dim = 128, c.n_heads = c.n_kv_heads = 2, c.head_dim = 32, c.vocab_size = 50;
    std::vector<float> w = cpu_random_weights(c, 1);
    Weights<float> wv = carve_weights(c, w.data());
    wv.lm_head[7] = NAN;
    const ModelHeader h = make_model_header(c, DT_F32);
    {
        std::ofstream f(tmp / "model.bin", std::ios::binary);
        f.write((const char*)&h, sizeof(h));
        f.write((const char*)w.data(), w.size() * 4);
    }
    write_dataset(tmp / "data.bin", make_dataset({10, 12, 9}));
    { std::ofstream(tmp / "adapter.bin") << "previous good adapter"; }
    CmdResult r = run_cmd("./train --device cpu --quant bf16 -i " + tmp / "data.bin" + " -m " + tmp / "model.bin -o " + tmp.path +
                          " --steps 3");
    CHECK(r.exit_code == 1);
    CHECK_MESSAGE(r.output.find("step 1: the loss is NaN") != std::string::npos, r.output);
    CHECK(read_bytes(tmp / "adapter.bin") == "previous good adapter");
    CHECK(!path_exists(tmp / "state.bin"));
}

TEST_CASE("train: model presets and custom shapes for random models") {
    Config c = llama2_preset("70b");
    CHECK(c.n_layers == 80);
    CHECK(c.n_kv_heads == 8);  // GQA
    CHECK(c.dim / c.n_heads == 128);
    c = llama2_preset("layers=3,dim=512,hidden=1376,heads=4,kv=2,vocab=1000");
    CHECK(c.n_layers == 3);
    CHECK(c.head_dim == 128);
    CHECK(c.n_kv_heads == 2);
    CHECK(c.vocab_size == 1000);
    CHECK_THROWS_AS(llama2_preset("8b"), InputError);
    CHECK_THROWS_AS(llama2_preset("layers=3,dim=500,heads=3"), InputError);  // dim not a multiple of heads
    CHECK_THROWS_AS(llama2_preset("layers=3,width=512"), InputError);
    CHECK_THROWS_AS(llama2_preset("layers=-1"), InputError);
}
