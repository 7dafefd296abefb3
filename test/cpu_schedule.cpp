// test/cpu_schedule.cpp — tests of schedule.cpp: packing conversations into rows under a token
// budget, the data schedule (a fresh shuffle per epoch, every conversation once an epoch, --steps
// wrapping around), and the learning-rate schedules with warm-up (transformers' formulas).
// Run from the repo root after `make NO_CUDA=1 test_cpu`:
//   ./test_cpu -tc="schedule*"
#include <doctest/doctest.h>

#include <cmath>
#include <set>

#include "../llama2_cpu.h"
#include "../schedule.h"
#include "../train_config.h"
#include "fixture_util.h"
#include "test_util.h"

// (make_dataset, conversations of given lengths, is in test/fixture_util.h)

TEST_CASE("schedule: packing keeps the budget, the order and every conversation once") {
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

TEST_CASE("schedule: the data schedule shuffles per epoch and visits every conversation once an epoch") {
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

TEST_CASE("schedule: learning-rate schedules with warm-up") {
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
