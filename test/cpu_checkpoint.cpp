// test/cpu_checkpoint.cpp — tests of checkpoint.cpp: log.csv and state.bin written and read back,
// state.bin checked against the run's model, LoRA config, settings and data (a resume with other
// settings or other data is refused), and truncated or foreign files refused naming the file.
// Run from the repo root after `make NO_CUDA=1 test_cpu`:
//   ./test_cpu -tc="checkpoint*"
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>

#include "../checkpoint.h"
#include "../train_config.h"
#include "fixture_util.h"
#include "test_util.h"

// (make_dataset, conversations of given lengths, is in test/fixture_util.h)

TEST_CASE("checkpoint: log.csv and state.bin round trip, and foreign files are refused") {
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
    for (float& x : st.v) x = std::fabs(x);  // second moments are never negative
    write_state(tmp / "state.bin", st);
    TrainState r = read_state(tmp / "state.bin");
    CHECK(r.params == st.params);
    CHECK(r.v == st.v);
    CHECK(r.header.step == 3);
    check_state_matches(r.header, "state.bin", c, s, d, 10);  // no throw
    TrainSettings other = s;
    other.lr = 1e-3f;
    CHECK_THROWS_AS(check_state_matches(r.header, "state.bin", c, other, d, 10), InputError);
    Dataset d2 = make_dataset({5, 7});
    CHECK_THROWS_AS(check_state_matches(r.header, "state.bin", c, s, d2, 10), InputError);
    CHECK_THROWS_AS(check_state_matches(r.header, "state.bin", c, s, d, 2), InputError);  // a run of 2 steps: step 3 lies
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
