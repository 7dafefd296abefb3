// test/cpu_sample.cpp — tests of generation (sampling.cpp, CpuDecoder in llama2_cpu.cpp) and of
// ./sample: transformers' logits processors on hand-computed cases, the sampler's distribution,
// the generation loop's stopping and cache reuse, greedy decoding against the fixtures' logits
// (transformers' own numbers), the KV-cached forward against cpu_forward, merged against unmerged
// LoRA, a chat turn on the cached history, and ./sample itself (bad input, the table, the demo
// defaults, chat on stdin). The chat template and the byte tokenizer are in test/cpu_chat.cpp.
// Run from the repo root after `make NO_CUDA=1 sample export_hf test_cpu`:
//   ./test_cpu -tc="sample:*"
// Fixtures: every tiny_* directory under $FIXTURES_DIR (default ../shared/fixtures); the ./sample
// cases also need ../shared/data (LIMA text for the test tokenizers).
#include <doctest/doctest.h>
#include <sentencepiece_processor.h>
#include <unistd.h>

#include <climits>
#include <cstring>
#include <set>

#include "hf.h"
#include "llama2_cpu.h"
#include "model.h"
#include "chat.h"
#include "sampling.h"
#include "test/test_util.h"
#include "test/tokenizer_util.h"

namespace {

const float NEG_INF = -INFINITY;

// Element-wise equality with a message naming the first difference; -inf equals -inf.
void check_row(const std::vector<float>& got, const std::vector<float>& want, const char* what) {
    REQUIRE(got.size() == want.size());
    for (size_t i = 0; i < got.size(); i++) {
        const bool same = std::isinf(want[i]) || std::isinf(got[i])
                              ? got[i] == want[i]
                              : std::fabs(got[i] - want[i]) <= 1e-6f * std::max(1.0f, std::fabs(want[i]));
        CHECK_MESSAGE(same, what << ": element " << i << " is " << got[i] << ", expected " << want[i]);
    }
}

// A fixture's model (fp32) and its PEFT adapter (dropout off: the reference has none).
struct FixtureModel {
    Config cfg;
    std::vector<float> weights;
    Adapter adapter;
    explicit FixtureModel(const std::string& dir) {
        HfCheckpoint ck(dir);
        cfg = ck.config;
        weights = ck.load_all_f32();
        adapter = read_peft_adapter(dir + "/adapter", cfg);
        adapter.lora.dropout = 0.0f;
    }
    CpuModel model(bool with_lora) const {
        CpuModel m;
        cpu_model_init(m, cfg, weights);
        if (with_lora) cpu_lora_set(m, adapter.lora, adapter.params);
        return m;
    }
};

// cpu_forward's logits (T, V) for one sequence, positions 0..T-1
std::vector<float> full_logits(const CpuModel& m, const std::vector<int32_t>& tokens, bool use_lora) {
    const int T = (int)tokens.size();
    std::vector<int32_t> labels((size_t)T, -100);
    CpuBatch b = batch_from_hf_labels(tokens.data(), labels.data(), 1, T);
    CpuActs acts;
    cpu_acts_init(acts, m, 1, T);
    CpuStepOptions opt;
    opt.use_lora = use_lora;
    cpu_forward(m, acts, b, opt);
    return std::vector<float>(acts.logits, acts.logits + (size_t)T * m.cfg.vocab_size);
}

// A Decoder whose logits are a function of the tokens fed so far: for testing generate() and
// generate_batch() alone. Slots 0 .. batch-1, each its own sequence; passes records the size of
// every step_batch() call.
struct ScriptedDecoder : Decoder {
    Config cfg{};
    std::vector<std::vector<int32_t>> fed;  // (batch) tokens of each slot
    std::vector<float> out;                 // (batch, V)
    std::vector<int> passes;
    std::function<void(const std::vector<int32_t>&, float*)> script;
    ScriptedDecoder(int V, std::function<void(const std::vector<int32_t>&, float*)> f, int batch = 1)
        : fed((size_t)batch), script(std::move(f)) {
        cfg.vocab_size = V;
        out.resize((size_t)batch * V);
    }
    const Config& config() const override { return cfg; }
    int max_context() const override { return 1000; }
    int position() const override { return (int)fed[0].size(); }
    void reset() override { fed[0].clear(); }
    void set_adapter(const Adapter*, bool) override {
        for (auto& f : fed) f.clear();
    }
    const float* feed(int slot, const int32_t* t, int n, float* row) {
        REQUIRE(n >= 1);
        std::vector<int32_t>& f = fed.at((size_t)slot);
        REQUIRE((int)f.size() + n <= max_context());
        f.insert(f.end(), t, t + n);
        std::fill(row, row + cfg.vocab_size, 0.0f);
        script(f, row);
        return row;
    }
    const float* prefill(const int32_t* t, int n) override { return feed(0, t, n, out.data()); }
    const float* step(int32_t t) override { return prefill(&t, 1); }
    std::string describe() const override { return "scripted"; }
    int max_batch() const override { return (int)fed.size(); }
    int slot_position(int slot) const override { return (int)fed.at((size_t)slot).size(); }
    const float* prefill_slot(int slot, const int32_t* t, int n) override {
        fed.at((size_t)slot).clear();
        return feed(slot, t, n, out.data());
    }
    const float* step_batch(const int32_t* t, const int* slots, int n) override {
        REQUIRE(n >= 1);
        REQUIRE(n <= max_batch());
        passes.push_back(n);
        for (int i = 0; i < n; i++) feed(slots[i], &t[i], 1, out.data() + (size_t)i * cfg.vocab_size);
        return out.data();
    }
};

SamplingConfig greedy_plain() {
    SamplingConfig c;
    c.do_sample = false;
    c.repetition_penalty = 1.0f;
    return c;
}

}  // namespace

// ==============================================================================================
// the logits processors, hand-computed

TEST_CASE("sample: repetition penalty divides positive and multiplies negative logits, once per distinct token") {
    std::vector<float> x = {2.0f, -1.0f, 0.5f, 3.0f, -2.0f, 0.0f};
    const std::vector<int32_t> seq = {0, 1, 1, 4, 5, 1};  // token 1 three times, 4 once, 5 (logit 0) once
    apply_repetition_penalty(x.data(), 6, seq.data(), seq.size(), 2.0f);
    check_row(x, {1.0f, -2.0f, 0.5f, 3.0f, -4.0f, 0.0f}, "penalty 2");
    // 1.2: the reference configuration's value, as float arithmetic (HF works on fp32 scores)
    std::vector<float> y = {3.0f, -3.0f};
    const std::vector<int32_t> both = {0, 1, 0};
    apply_repetition_penalty(y.data(), 2, both.data(), both.size(), 1.2f);
    CHECK(y[0] == 3.0f / 1.2f);
    CHECK(y[1] == -3.0f * 1.2f);
    // an empty sequence changes nothing
    std::vector<float> z = {1.0f, -1.0f};
    apply_repetition_penalty(z.data(), 2, nullptr, 0, 1.5f);
    check_row(z, {1.0f, -1.0f}, "empty sequence");
}

TEST_CASE("sample: temperature divides the logits") {
    std::vector<float> x = {1.0f, -2.0f, 0.5f, 0.0f};
    apply_temperature(x.data(), 4, 0.5f);
    check_row(x, {2.0f, -4.0f, 1.0f, 0.0f}, "t = 0.5");
    std::vector<float> y = {0.7f, -1.4f};
    apply_temperature(y.data(), 2, 0.7f);
    CHECK(y[0] == 0.7f / 0.7f);
    CHECK(y[1] == -1.4f / 0.7f);
}

TEST_CASE("sample: top-k keeps the k largest, all ties with the k-th, everything when k >= V") {
    std::vector<float> x = {1, 3, 2, 5, 4};
    apply_top_k(x.data(), 5, 2);
    check_row(x, {NEG_INF, NEG_INF, NEG_INF, 5, 4}, "k = 2");

    std::vector<float> ties = {1, 3, 3, 3, 0};  // the 2nd largest is 3, shared by three tokens: all stay
    apply_top_k(ties.data(), 5, 2);
    check_row(ties, {NEG_INF, 3, 3, 3, NEG_INF}, "k = 2 with a three-way tie at the k-th");

    std::vector<float> top_tie = {2, 2, 1};
    apply_top_k(top_tie.data(), 3, 1);
    check_row(top_tie, {2, 2, NEG_INF}, "k = 1 with a tie at the top");

    for (int k : {5, 6, 1000}) {
        CAPTURE(k);
        std::vector<float> all = {1, -3, 2, 0, 4};
        apply_top_k(all.data(), 5, k);
        check_row(all, {1, -3, 2, 0, 4}, "k >= V");
    }
    // min_tokens_to_keep raises k
    std::vector<float> mk = {1, 3, 2};
    apply_top_k(mk.data(), 3, 1, 2);
    check_row(mk, {NEG_INF, 3, 2}, "k = 1 raised to min_keep 2");
}

TEST_CASE("sample: top-p removes cumulative probability <= 1 - p, the boundary included, and keeps at least one") {
    // four equal logits: probabilities 1/4 each, cumulative 0.25, 0.5, 0.75, 1 (exact in binary)
    const std::vector<float> flat = {0, 0, 0, 0};
    std::vector<float> x = flat;
    apply_top_p(x.data(), 4, 0.75);  // 1 - p = 0.25: the first cumulative equals it exactly -> removed
    check_row(x, {NEG_INF, 0, 0, 0}, "p = 0.75, boundary (ties go lowest id first)");
    x = flat;
    apply_top_p(x.data(), 4, 0.76);  // 1 - p = 0.24 < 0.25: nothing removed
    check_row(x, flat, "p = 0.76");
    x = flat;
    apply_top_p(x.data(), 4, 0.5);  // 0.25 and 0.5 are <= 0.5
    check_row(x, {NEG_INF, NEG_INF, 0, 0}, "p = 0.5, boundary");

    // probabilities 0.1, 0.2, 0.3, 0.4: p = 0.65 -> 1 - p = 0.35 removes 0.1 (cum 0.1) and 0.2 (cum 0.3)
    std::vector<float> q = {logf(0.3f), logf(0.1f), logf(0.4f), logf(0.2f)};
    apply_top_p(q.data(), 4, 0.65);
    check_row(q, {logf(0.3f), NEG_INF, logf(0.4f), NEG_INF}, "p = 0.65");

    // keep at least one: p = 0 would remove everything; the most probable stays
    std::vector<float> z = {1, 3, 2};
    apply_top_p(z.data(), 3, 0.0);
    check_row(z, {NEG_INF, 3, NEG_INF}, "p = 0");
    // a token that alone holds more than p
    std::vector<float> peak = {0, 10, 0};
    apply_top_p(peak.data(), 3, 0.5);
    check_row(peak, {NEG_INF, 10, NEG_INF}, "one token holds more than p");

    // p = 1 keeps every token with a non-zero probability, however small
    std::vector<float> tail = {0, -30, -60, NEG_INF};
    apply_top_p(tail.data(), 4, 1.0);
    check_row(tail, {0, -30, -60, NEG_INF}, "p = 1");
    // min_keep = 2
    std::vector<float> two = {0, 10, 0};
    apply_top_p(two.data(), 3, 0.5, 2);
    CHECK(two[1] == 10);
    CHECK(std::isinf(two[0]) + std::isinf(two[2]) == 1);
}

TEST_CASE("sample: process_logits runs generate()'s order and switches each processor off as HF does") {
    SamplingConfig c;
    c.repetition_penalty = 1.0f;
    c.temperature = 1.0f;
    c.top_k = 2;
    c.top_p = 0.7;
    // top-k before top-p: after top-k the probabilities are 0.731, 0.269 and top-p (1 - p = 0.3)
    // removes the second; top-p first would keep the two best and top-k would keep them too
    std::vector<float> x = {3, 2, 1, 0.5f, 0};
    process_logits(x.data(), 5, nullptr, 0, c);
    check_row(x, {3, NEG_INF, NEG_INF, NEG_INF, NEG_INF}, "top-k then top-p");
    // temperature before both: at t = 2 the two left are 0.622, 0.378 and both survive top-p
    c.temperature = 2.0f;
    std::vector<float> y = {3, 2, 1, 0.5f, 0};
    process_logits(y.data(), 5, nullptr, 0, c);
    check_row(y, {1.5f, 1.0f, NEG_INF, NEG_INF, NEG_INF}, "temperature first");
    // top_k = 0 and top_p = 1 are off: nothing removed
    c.top_k = 0;
    c.top_p = 1.0;
    c.temperature = 1.0f;
    std::vector<float> w = {3, 2, 1, -40, 0};
    process_logits(w.data(), 5, nullptr, 0, c);
    check_row(w, {3, 2, 1, -40, 0}, "top_k 0, top_p 1");
    // the penalty uses the sequence, prompt included; then the warpers
    c = SamplingConfig{};  // the reference configuration: 1.2, 0.7, 50, 0.8
    std::vector<float> v = {2.4f, 2.0f, -1.0f};
    const std::vector<int32_t> seq = {0, 2};
    process_logits(v.data(), 3, seq.data(), seq.size(), c);
    // 2.4/1.2 = 2.0, -1.0*1.2 = -1.2; /0.7 -> 2.857, 2.857, -1.714; top-k 50 >= V keeps all;
    // probabilities 0.4974, 0.4974, 0.0051: the last one's cumulative 0.0051 <= 0.2 -> removed
    check_row(v, {2.0f / 0.7f, 2.0f / 0.7f, NEG_INF}, "reference configuration");
    // greedy: the penalty still applies, the warpers do not
    SamplingConfig g;
    g.do_sample = false;
    std::vector<float> u = {1.0f, 3.0f, 2.9f};
    const std::vector<int32_t> seen = {1};
    Rng rng(1);
    CHECK(choose_next_token(u.data(), 3, seen.data(), seen.size(), g, rng) == 2);  // 3 / 1.2 = 2.5 < 2.9
    check_row(u, {1.0f, 2.5f, 2.9f}, "greedy: penalty only");
    std::vector<float> tie = {1, 4, 4};
    CHECK(argmax(tie.data(), 3) == 1);  // torch.argmax: the first maximum
}

TEST_CASE("sample: draws are reproducible under a seed and follow the processed distribution") {
    const std::vector<float> logits = {2.0f, 1.5f, 1.0f, 0.8f, 0.3f, 0.0f, -0.5f, -2.0f};
    const int V = (int)logits.size();
    const std::vector<int32_t> seq = {0, 6};
    SamplingConfig c;  // 1.2, 0.7, 50, 0.8
    c.top_k = 6;
    std::vector<float> processed = logits;
    process_logits(processed.data(), V, seq.data(), seq.size(), c);
    std::vector<double> expect((size_t)V);
    double maxv = -INFINITY, sum = 0;
    for (float p : processed) maxv = std::max(maxv, (double)p);
    for (int v = 0; v < V; v++) sum += expect[(size_t)v] = std::exp((double)processed[(size_t)v] - maxv);
    int kept = 0;
    for (double& e : expect) e /= sum, kept += e > 0;
    REQUIRE(kept >= 3);  // a distribution worth testing
    REQUIRE(kept < V);   // and some tokens removed

    auto draw = [&](uint64_t seed, int n) {
        Rng rng(seed);
        std::vector<int32_t> out;
        for (int i = 0; i < n; i++) {
            std::vector<float> x = logits;
            out.push_back(choose_next_token(x.data(), V, seq.data(), seq.size(), c, rng));
        }
        return out;
    };
    CHECK(draw(42, 200) == draw(42, 200));
    CHECK(draw(42, 200) != draw(43, 200));

    const int N = 20000;
    std::vector<int> count((size_t)V, 0);
    for (int32_t t : draw(7, N)) count[(size_t)t]++;
    double chi2 = 0;
    for (int v = 0; v < V; v++) {
        if (expect[(size_t)v] == 0) {
            CHECK_MESSAGE(count[(size_t)v] == 0, "removed token " << v << " was drawn " << count[(size_t)v] << " times");
            continue;
        }
        const double e = N * expect[(size_t)v];
        chi2 += (count[(size_t)v] - e) * (count[(size_t)v] - e) / e;
    }
    // df = kept - 1 <= 5: P(chi2 > 25) < 2e-4 for a correct sampler; a wrong rule (no temperature,
    // another top-p cut) moves thousands of draws and lands far above
    CHECK_MESSAGE(chi2 < 25.0, "chi-square " << chi2 << " over " << kept << " tokens");
}

// ==============================================================================================
// the generation loop (a scripted decoder)

TEST_CASE("sample: generate stops at eos or at max_length (prompt counted) and reuses the cache prefix") {
    const int V = 32;
    const int32_t eos = 2;
    // favours token 10 + (tokens fed so far), or eos once 4 tokens are in
    auto script = [&](int eos_at) {
        return [=](const std::vector<int32_t>& fed, float* out) {
            out[(int)fed.size() == eos_at ? eos : 10 + (int)fed.size()] = 5.0f;
        };
    };
    Rng rng(1);
    {
        ScriptedDecoder d(V, script(4));
        GenerateStats st;
        std::vector<int32_t> got = generate(d, {1, 5, 6}, 100, eos, greedy_plain(), rng, nullptr, &st);
        CHECK(got == std::vector<int32_t>{13});
        CHECK(st.hit_eos);
        CHECK(st.prefill_tokens == 3);
        CHECK(st.decode_tokens == 1);
    }
    {
        ScriptedDecoder d(V, script(-1));
        GenerateStats st;
        std::vector<int32_t> streamed;
        std::vector<int32_t> got = generate(d, {1, 5, 6}, 6, eos, greedy_plain(), rng,
                                            [&](int32_t t) { streamed.push_back(t); }, &st);
        CHECK(got == std::vector<int32_t>{13, 14, 15});  // 3 + 3 = max_length 6
        CHECK(streamed == got);
        CHECK(!st.hit_eos);
        CHECK(d.fed[0] == std::vector<int32_t>{1, 5, 6, 13, 14});  // the last token is never fed
    }
    {   // a cache that holds a prefix: only the rest is prefilled
        ScriptedDecoder d(V, script(-1));
        d.prefill(std::vector<int32_t>{1, 5}.data(), 2);
        GenerateStats st;
        generate(d, {1, 5, 6, 7}, 6, eos, greedy_plain(), rng, nullptr, &st);
        CHECK(st.prefill_tokens == 2);
        CHECK(d.fed[0] == std::vector<int32_t>{1, 5, 6, 7, 14});
        // a cache as long as the context cannot give the logits after it: generate starts over
        ScriptedDecoder e(V, script(-1));
        e.prefill(std::vector<int32_t>{1, 5, 6}.data(), 3);
        generate(e, {1, 5, 6}, 5, eos, greedy_plain(), rng, nullptr, &st);
        CHECK(st.prefill_tokens == 3);
    }
    {   // the repetition penalty sees the prompt: token 5 (in the prompt) loses to token 9
        ScriptedDecoder d(V, [](const std::vector<int32_t>&, float* out) { out[5] = 3.0f, out[9] = 2.6f; });
        SamplingConfig g = greedy_plain();
        CHECK(generate(d, {1, 5}, 3, eos, g, rng, nullptr, nullptr) == std::vector<int32_t>{5});
        g.repetition_penalty = 1.2f;
        d.reset();
        CHECK(generate(d, {1, 5}, 3, eos, g, rng, nullptr, nullptr) == std::vector<int32_t>{9});
    }
}

TEST_CASE("sample: generate_batch gives every prompt the answer generate() gives it alone (ragged lengths, refilled slots)") {
    const int V = 40;
    const int32_t eos = 2;
    // logits that depend on the whole sequence (so a slot mix-up shows), eos likely once it is long
    auto script = [](const std::vector<int32_t>& fed, float* out) {
        uint64_t h = 1469598103934665603ull;
        for (int32_t t : fed) h = (h ^ (uint64_t)t) * 1099511628211ull;
        for (int v = 0; v < 40; v++) out[v] = (float)((h >> (v % 32)) & 7) * 0.5f + (v == 2 ? 0.15f * (float)fed.size() : 0.0f);
    };
    const std::vector<std::vector<int32_t>> prompts = {{1, 5}, {1, 7, 8, 9}, {1}, {1, 30, 31}, {1, 12, 13, 14, 15, 16}, {1, 3}, {1, 9, 9}};
    const std::vector<int64_t> limits = {14, 30, 9, 25, 40, 3, 22};
    SamplingConfig cfg;  // sampling on: temperature 0.7, top-k 50, top-p 0.8, penalty 1.2
    const uint64_t seed = 11;
    std::vector<std::vector<int32_t>> alone;
    for (size_t i = 0; i < prompts.size(); i++) {
        ScriptedDecoder d(V, script);
        Rng rng(seed);
        alone.push_back(generate(d, prompts[i], limits[i], eos, cfg, rng, nullptr, nullptr));
    }
    for (int batch : {1, 3, 16}) {
        CAPTURE(batch);
        ScriptedDecoder d(V, script, batch);
        std::vector<size_t> order;
        GenerateStats st;
        std::vector<std::vector<int32_t>> got = generate_batch(d, prompts, limits, eos, cfg, seed,
                                                               [&](size_t i, const std::vector<int32_t>& ans) {
                                                                   order.push_back(i);
                                                                   CHECK(ans == alone[i]);
                                                               }, &st);
        REQUIRE(got.size() == prompts.size());
        for (size_t i = 0; i < prompts.size(); i++) CHECK_MESSAGE(got[i] == alone[i], "prompt " << i);
        CHECK(order.size() == prompts.size());
        int widest = 0;
        for (int n : d.passes) widest = std::max(widest, n);
        // the slots really ran together (prompt 5 ends at its first token, before any step)
        CHECK(widest == std::min(batch, (int)prompts.size() - 1));
        int64_t decoded = 0;
        for (int n : d.passes) decoded += n;
        CHECK(st.decode_tokens == decoded);
    }
    // the answers differ from each other (the check above is not comparing empty strings)
    CHECK(alone[1] != alone[4]);
    CHECK(alone[4].size() > 2);
    CHECK(alone[5].size() <= 1);  // max_total 3 after a 2-token prompt: at most one new token
}

// ==============================================================================================
// the CPU decoder against transformers (fixtures) and against cpu_forward

TEST_CASE("sample: greedy decoding on every fixture picks the argmax of transformers' logits") {
    for (const std::string& dir : tiny_fixtures()) {
        CAPTURE(dir);
        FixtureModel fm(dir);
        SafeTensors ref(dir + "/reference.safetensors");
        const StTensor& tt = ref.get("tokens");
        const int T = (int)tt.shape[1], V = fm.cfg.vocab_size;
        std::vector<int32_t> all_tokens = ref.read_i32("tokens");
        const std::vector<int32_t> tokens(all_tokens.begin(), all_tokens.begin() + T);  // row 0
        for (bool with_adapter : {true, false}) {
            CAPTURE(with_adapter);
            const char* name = with_adapter ? "logits" : "base_logits";
            std::vector<float> ref_logits = ref.read_f32(name, {tt.shape[0], T, V});  // row 0 first
            CpuDecoder dec(fm.model(false), T + 1, 1);
            dec.set_adapter(with_adapter ? &fm.adapter : nullptr, false);
            // a position counts when transformers' best beats its second by a margin our fp32 error cannot cross
            auto clear_best = [&](int p) {
                std::vector<float> row(ref_logits.begin() + (size_t)p * V, ref_logits.begin() + (size_t)(p + 1) * V);
                int32_t best = argmax(row.data(), V);
                float second = -INFINITY;
                for (int v = 0; v < V; v++)
                    if (v != best) second = std::max(second, row[(size_t)v]);
                return std::make_pair(best, row[(size_t)best] - second > 1e-3f);
            };
            int checked = 0;
            for (int P : {1, 2, T / 2, T - 1, T}) {  // prompt = the fixture's first P tokens
                CAPTURE(P);
                auto [best, clear] = clear_best(P - 1);
                if (!clear) continue;
                dec.reset();
                std::vector<int32_t> prompt(tokens.begin(), tokens.begin() + P);
                Rng rng(1);
                std::vector<int32_t> got = generate(dec, prompt, P + 1, -1, greedy_plain(), rng, nullptr, nullptr);
                REQUIRE(got.size() == 1);
                CHECK_MESSAGE(got[0] == best, dir << " " << name << ": greedy after " << P << " tokens chose " << got[0]
                                                  << ", transformers' argmax is " << best);
                checked++;
            }
            CHECK_MESSAGE(checked >= 3, "too few positions with a clear argmax: " << checked);
            // teacher-forced over the whole row: every step's argmax is transformers' argmax
            dec.reset();
            int steps_checked = 0;
            for (int p = 0; p < T; p++) {
                const float* lg = p == 0 ? dec.prefill(tokens.data(), 1) : dec.step(tokens[(size_t)p]);
                auto [best, clear] = clear_best(p);
                if (!clear) continue;
                CHECK_MESSAGE(argmax(lg, V) == best, dir << " " << name << ": position " << p);
                steps_checked++;
            }
            CHECK(steps_checked >= T / 2);
            // greedy with the repetition penalty: the argmax of the penalized reference row
            std::vector<float> last(ref_logits.begin() + (size_t)(T - 1) * V, ref_logits.begin() + (size_t)T * V);
            for (int32_t t : std::set<int32_t>(tokens.begin(), tokens.end()))
                last[(size_t)t] = last[(size_t)t] < 0 ? last[(size_t)t] * 1.2f : last[(size_t)t] / 1.2f;
            SamplingConfig g = greedy_plain();
            g.repetition_penalty = 1.2f;
            dec.reset();
            Rng rng(1);
            std::vector<int32_t> got = generate(dec, tokens, T + 1, -1, g, rng, nullptr, nullptr);
            CHECK(got.at(0) == argmax(last.data(), V));
        }
    }
}

TEST_CASE("sample: KV-cached logits equal cpu_forward's at every position, with and without LoRA, merged or not") {
    const double TOL = 1e-5, TOL_MERGED = 1e-4;
    for (const std::string& dir : tiny_fixtures()) {
        CAPTURE(dir);
        FixtureModel fm(dir);
        SafeTensors ref(dir + "/reference.safetensors");
        const int T = (int)ref.get("tokens").shape[1], V = fm.cfg.vocab_size;
        std::vector<int32_t> all_tokens = ref.read_i32("tokens");
        const std::vector<int32_t> tokens(all_tokens.begin(), all_tokens.begin() + T);

        // prefill a third (all positions' logits), a chunk of 3 after the cache, then one token per step
        auto cached_logits = [&](const CpuModel& m) {
            CpuKVCache c;
            cpu_kv_cache_init(c, m.cfg, T);
            std::vector<float> out((size_t)T * V);
            const int p0 = T / 3;
            cpu_forward_cached(m, c, tokens.data(), p0, out.data(), true);
            cpu_forward_cached(m, c, tokens.data() + p0, 3, out.data() + (size_t)p0 * V, true);
            for (int p = p0 + 3; p < T; p++) cpu_forward_cached(m, c, tokens.data() + p, 1, out.data() + (size_t)p * V, false);
            CHECK(c.len == T);
            return out;
        };
        auto compare = [&](const std::vector<float>& got, const std::vector<float>& want, double tol, const char* what) {
            for (int p = 0; p < T; p++) {
                double e = max_rel_err(got.data() + (size_t)p * V, want.data() + (size_t)p * V, (size_t)V);
                CHECK_MESSAGE(e <= tol, dir << " " << what << ": position " << p << " rel err " << e);
            }
        };
        const CpuModel lora = fm.model(true), base = fm.model(false);
        const std::vector<float> full_lora = full_logits(lora, tokens, true), full_base = full_logits(base, tokens, false);
        compare(cached_logits(lora), full_lora, TOL, "LoRA unmerged");
        compare(cached_logits(base), full_base, TOL, "base model");
        CpuModel merged = fm.model(true);
        cpu_lora_merge(merged);
        CHECK(merged.lora.rank == 0);
        const std::vector<float> full_merged = full_logits(merged, tokens, false);
        compare(cached_logits(merged), full_merged, TOL, "merged, cached vs full");
        compare(full_merged, full_lora, TOL_MERGED, "merged vs unmerged");
        // the merge did something (the fixtures' lora_B is non-zero)
        CHECK(max_rel_err(full_lora.data(), full_base.data(), full_lora.size()) > 1e-3);

        // CpuDecoder: merged, then unmerged again gives the unmerged logits exactly (base restored)
        CpuDecoder dec(fm.model(false), T, 1);
        dec.set_adapter(&fm.adapter, true);
        const float* lm = dec.prefill(tokens.data(), T);
        CHECK(max_rel_err(lm, full_merged.data() + (size_t)(T - 1) * V, (size_t)V) <= TOL);
        dec.set_adapter(&fm.adapter, false);
        CHECK(dec.position() == 0);
        const float* l2 = dec.prefill(tokens.data(), T);
        CHECK(max_rel_err(l2, full_lora.data() + (size_t)(T - 1) * V, (size_t)V) <= TOL);
        dec.set_adapter(nullptr, false);
        const float* l3 = dec.prefill(tokens.data(), T);
        CHECK(max_rel_err(l3, full_base.data() + (size_t)(T - 1) * V, (size_t)V) <= TOL);
    }
}

TEST_CASE("sample: a chat turn on the cached history gives what a fresh prefill gives") {
    const std::string dir = tiny_fixtures()[0];
    FixtureModel fm(dir);
    const int V = fm.cfg.vocab_size;
    // a two-turn conversation from arbitrary ids (the model does not care what they mean)
    auto enc = [&](const std::string& s) {
        std::vector<int32_t> ids;
        for (unsigned char ch : s) ids.push_back(3 + ch % (V - 3));
        return ids;
    };
    SamplingConfig g;
    g.do_sample = false;  // greedy, with the reference configuration's penalty 1.2
    CpuDecoder dec(fm.model(false), 200, 1);
    dec.set_adapter(&fm.adapter, false);
    std::vector<ChatTurn> turns = {ChatTurn{"first question", {}, false}};
    std::vector<int32_t> ids1 = llama2_chat_tokens(turns, "sys", enc, 1, 2);
    Rng rng(1);
    std::vector<int32_t> a1 = generate(dec, ids1, (int64_t)ids1.size() + 6, 2, g, rng, nullptr, nullptr);
    turns[0].answer = a1;
    turns[0].answered = true;
    turns.push_back(ChatTurn{"second", {}, false});
    std::vector<int32_t> ids2 = llama2_chat_tokens(turns, "sys", enc, 1, 2);
    GenerateStats st;
    std::vector<int32_t> a2_cached = generate(dec, ids2, (int64_t)ids2.size() + 6, 2, g, rng, nullptr, &st);
    CHECK(st.prefill_tokens < (int64_t)ids2.size());  // the first turn was not fed again
    dec.reset();
    std::vector<int32_t> a2_fresh = generate(dec, ids2, (int64_t)ids2.size() + 6, 2, g, rng, nullptr, nullptr);
    CHECK(a2_cached == a2_fresh);
}

// ==============================================================================================
// ./sample

namespace {

std::string repo_root() {
    char buf[PATH_MAX];
    REQUIRE(getcwd(buf, sizeof(buf)) != nullptr);
    return buf;
}

CmdResult sample(const std::string& args) {
    REQUIRE_MESSAGE(path_exists("./sample"), "build ./sample first (make NO_CUDA=1 sample)");
    return run_cmd("./sample " + args);
}
// stdout only (the stats line on stderr differs from run to run)
CmdResult sample_stdout(const std::string& args) {
    REQUIRE_MESSAGE(path_exists("./sample"), "build ./sample first (make NO_CUDA=1 sample)");
    return run_cmd("(./sample " + args + " 2>/dev/null)");
}

// Files for the ./sample cases, made once: the mha fixture exported with tokenizer A recorded, its
// adapter as an adapter file, a second tokenizer B of the same size, an adapter for another model.
struct SampleFiles {
    TempDir dir;
    std::string fixture, model, adapter, other_adapter, tok_a, tok_b;
    Config cfg{};
    SampleFiles() {
        REQUIRE_MESSAGE(path_exists(shared_dir() + "/data/lima/train.jsonl"), "needs ../shared/data");
        fixture = tiny_fixtures()[0];
        int32_t dt;
        cfg = parse_hf_config(fixture + "/config.json", &dt);
        tok_a = train_test_tokenizer(dir.path, cfg.vocab_size, "bpe");
        tok_b = train_test_tokenizer(dir.path, cfg.vocab_size, "unigram");
        model = dir / "model.bin";
        CmdResult r = run_cmd("./export_hf -i " + fixture + " -o " + model + " -t " + tok_a);
        REQUIRE_MESSAGE(r.exit_code == 0, r.output);
        Adapter a = read_peft_adapter(fixture + "/adapter", cfg);
        adapter = dir / "adapter.bin";
        write_adapter(adapter, a);
        Adapter other;  // the same LoRA on a model with a wider MLP
        other.base = cfg;
        other.base.hidden_dim += 8;
        other.lora = a.lora;
        other.params.assign((size_t)lora_layout(other.base, other.lora).total, 0.0f);
        other_adapter = dir / "other_adapter.bin";
        write_adapter(other_adapter, other);
    }
};
SampleFiles& files() {
    static SampleFiles f;
    return f;
}

void check_one_line_error(const CmdResult& r, int code, const std::string& needle) {
    CHECK_MESSAGE(r.exit_code == code, r.output);
    CHECK_MESSAGE(count_lines(r.output) == 1, r.output);
    CHECK_MESSAGE(r.output.rfind("sample: ", 0) == 0, r.output);
    CHECK_MESSAGE(r.output.find(needle) != std::string::npos, "expected '" << needle << "' in: " << r.output);
}

// A demo-shaped model (byte vocabulary) and adapter in dir/out/demo/, as ./train writes them.
void write_demo_files(const std::string& dir) {
    Config c{};
    c.dim = 32, c.hidden_dim = 64, c.n_layers = 2, c.n_heads = 2, c.n_kv_heads = 1, c.head_dim = 16;
    c.vocab_size = ByteTokenizer::VOCAB, c.max_seq_len = 96, c.bos_id = ByteTokenizer::BOS, c.eos_id = ByteTokenizer::EOS;
    c.rope_theta = 10000.0f, c.norm_eps = 1e-5f;
    REQUIRE(system(("mkdir -p " + dir + "/out/demo").c_str()) == 0);
    std::vector<float> w = cpu_random_weights(c, 5);
    write_model(dir + "/out/demo/model.bin", make_model_header(c, DT_F32), w.data(), w.size() * 4);
    Adapter a;
    a.base = c;
    a.lora = LoraConfig{4, 8.0f, 0.0f, LORA_ALL_TARGETS};
    a.params.resize((size_t)lora_layout(c, a.lora).total);
    Rng rng(9);
    for (float& p : a.params) p = 0.05f * rng.normal();
    write_adapter(dir + "/out/demo/adapter.bin", a);
}

}  // namespace

TEST_CASE("sample: ./sample greedy output equals the in-process decoder's; seeded sampling repeats") {
    SampleFiles& f = files();
    const std::string common = " -m " + f.model + " -a " + f.adapter + " -t " + f.tok_a + " -p 'Tell me a story' --max-new-tokens 8";
    CmdResult r = sample_stdout(common + " --greedy --seed 1");
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);

    // the same thing in process, from the same files
    std::vector<float> w;
    ModelHeader h = load_model_f32(f.model, w);
    CpuModel m;
    cpu_model_init(m, h.config, std::move(w));
    CpuDecoder dec(std::move(m), h.config.max_seq_len, 1);
    Adapter a = read_adapter(f.adapter);
    dec.set_adapter(&a, false);
    sentencepiece::SentencePieceProcessor sp;
    REQUIRE(sp.Load(f.tok_a).ok());
    auto enc = [&](const std::string& s) {
        std::vector<int> ids;
        sp.Encode(s, &ids);
        return std::vector<int32_t>(ids.begin(), ids.end());
    };
    std::vector<int32_t> prompt = llama2_chat_tokens({ChatTurn{"Tell me a story", {}, false}}, "", enc, 1, 2);
    SamplingConfig g;
    g.do_sample = false;
    Rng rng(1);
    std::vector<int32_t> ans = generate(dec, prompt, (int64_t)prompt.size() + 8, 2, g, rng, nullptr, nullptr);
    std::string text;
    sp.Decode(std::vector<int>(ans.begin(), ans.end()), &text);
    CHECK(r.output == text + "\n");

    CmdResult s1 = sample_stdout(common + " --seed 7"), s2 = sample_stdout(common + " --seed 7");
    CHECK(s1.exit_code == 0);
    CHECK(s1.output == s2.output);
    // the stats line
    CmdResult s3 = sample(common + " --seed 7");
    CHECK(s3.output.find("tokens/s") != std::string::npos);
    CHECK(s3.output.find("prefill") != std::string::npos);
}

TEST_CASE("sample: the CPU decoder's slots are independent caches; ./sample -f answers the same at any --batch") {
    SampleFiles& f = files();
    std::vector<float> w;
    ModelHeader h = load_model_f32(f.model, w);
    CpuModel m;
    cpu_model_init(m, h.config, std::move(w));
    Adapter a = read_adapter(f.adapter);
    const std::vector<std::vector<int32_t>> prompts = {{1, 40, 41, 42}, {1, 7}, {1, 99, 98, 97, 96, 95, 94}, {1, 300, 301}};
    const std::vector<int64_t> limits = {16, 12, 20, 14};
    SamplingConfig cfg;
    std::vector<std::vector<int32_t>> alone;
    {
        CpuDecoder one(CpuModel(m), 32, 1);
        one.set_adapter(&a, false);
        for (size_t i = 0; i < prompts.size(); i++) {
            Rng rng(5);
            one.reset();
            alone.push_back(generate(one, prompts[i], limits[i], 2, cfg, rng, nullptr, nullptr));
        }
    }
    CpuDecoder three(std::move(m), 32, 3);
    three.set_adapter(&a, false);
    std::vector<std::vector<int32_t>> got = generate_batch(three, prompts, limits, 2, cfg, 5, nullptr, nullptr);
    for (size_t i = 0; i < prompts.size(); i++) CHECK_MESSAGE(got[i] == alone[i], "prompt " << i);
    CHECK(alone[0] != alone[2]);

    // the command line: 4 prompts at --batch 1, 3 and 4 print the same answers, in prompt order
    TempDir t;
    FILE* pf = fopen((t / "prompts.txt").c_str(), "w");
    REQUIRE(pf);
    fputs("Tell me a story\nWhat is two plus two?\nName a colour\nSay something long\n", pf);
    fclose(pf);
    const std::string args = " -m " + f.model + " -t " + f.tok_a + " -a " + f.adapter + " -f " + (t / "prompts.txt") +
                             " --max-new-tokens 10 --seed 9 --device cpu";
    CmdResult b1 = sample_stdout(args + " --batch 1");
    REQUIRE_MESSAGE(b1.exit_code == 0, b1.output);
    CHECK(b1.output.find("### [") != std::string::npos);
    for (const char* b : {" --batch 3", " --batch 4"}) {
        CmdResult r = sample_stdout(args + b);
        REQUIRE_MESSAGE(r.exit_code == 0, r.output);
        CHECK_MESSAGE(r.output == b1.output, b);
    }
    check_one_line_error(sample(args + " --batch 0"), 2, "--batch");
}

TEST_CASE("sample: --table prints one row per prompt and one column per adapter; --merge agrees under greedy") {
    SampleFiles& f = files();
    TempDir t;
    FILE* pf = fopen((t / "prompts.txt").c_str(), "w");
    REQUIRE(pf);
    fputs("Hello | world\n\n\"Two\\nlines\"\nLast one\n", pf);
    fclose(pf);
    const std::string args = " -m " + f.model + " -t " + f.tok_a + " -a none -a " + f.adapter + " -f " + (t / "prompts.txt") +
                             " --table --greedy --max-new-tokens 6 --seed 3";
    CmdResult r = sample_stdout(args);
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    std::vector<std::string> lines;
    size_t pos = 0;
    while (pos < r.output.size()) {
        size_t e = r.output.find('\n', pos);
        lines.push_back(r.output.substr(pos, e - pos));
        pos = e + 1;
    }
    REQUIRE_MESSAGE(lines.size() == 5, r.output);  // header, separator, 3 prompts
    CHECK(lines[0] == "| prompt | base | " + f.adapter + " |");
    CHECK(lines[1] == "|---|---|---|");
    CHECK(lines[2].rfind("| Hello \\| world |", 0) == 0);
    CHECK(lines[3].rfind("| Two<br>lines |", 0) == 0);
    for (size_t i = 2; i < lines.size(); i++) {
        int bars = 0;
        for (size_t k = 0; k < lines[i].size(); k++) bars += lines[i][k] == '|' && (k == 0 || lines[i][k - 1] != '\\');
        CHECK_MESSAGE(bars == 4, lines[i]);
    }
    // --merge: the same function up to rounding; on a tiny model the greedy picks agree
    CmdResult m = sample_stdout(args + " --merge");
    REQUIRE(m.exit_code == 0);
    CHECK(m.output == r.output);
}

TEST_CASE("sample: mismatched files and over-long prompts are one clear error each") {
    SampleFiles& f = files();
    const std::string base = "-m " + f.model + " -p hi ";
    check_one_line_error(sample(base + "-t " + f.tok_a + " -a " + f.other_adapter), 1, "made for a base model");
    check_one_line_error(sample(base + "-t " + shared_dir() + "/data/llama2/tokenizer.model"), 1, "vocab");
    check_one_line_error(sample(base + "-t byte"), 1, "exported with tokenizer sha256");
    check_one_line_error(sample(base + "-t " + f.tok_b), 1, "sha256");
    check_one_line_error(sample(base + "-t " + f.model), 1, "not a sentencepiece");
    {   // an adapter trained on data made with tokenizer B, used with A
        TempDir t;
        Adapter a = read_adapter(f.adapter);
        sha256_file(f.tok_b, a.tokenizer_sha256);
        write_adapter(t / "b.bin", a);
        check_one_line_error(sample(base + "-t " + f.tok_a + " -a " + (t / "b.bin")), 1, "trained on data tokenized with");
    }
    check_one_line_error(sample("-m " + f.adapter + " -t " + f.tok_a + " -p hi"), 1, "not a model file");
    check_one_line_error(sample(base + "-t " + f.tok_a + " -a " + f.model), 1, "not an adapter file");
    std::string long_prompt;
    for (int i = 0; i < 40; i++) long_prompt += "word ";
    check_one_line_error(sample("-m " + f.model + " -t " + f.tok_a + " -p '" + long_prompt + "' --max-length 20"), 1,
                         "--max-length 20");
    std::string huge;
    for (int i = 0; i < f.cfg.max_seq_len; i++) huge += "words ";
    check_one_line_error(sample("-m " + f.model + " -t " + f.tok_a + " -p '" + huge + "' --max-new-tokens 5"), 1,
                         "longer than the model's context of " + std::to_string(f.cfg.max_seq_len));
    TempDir t;
    FILE* pf = fopen((t / "p.txt").c_str(), "w");
    fputs("fine\n\"unterminated\n", pf);
    fclose(pf);
    check_one_line_error(sample("-m " + f.model + " -t " + f.tok_a + " -f " + (t / "p.txt")), 1, t / "p.txt:2");
}

TEST_CASE("sample: command line errors exit 2 with one line") {
    check_one_line_error(sample("--bogus"), 2, "--bogus");
    check_one_line_error(sample("-p a -f b"), 2, "not both");
    check_one_line_error(sample("--table"), 2, "--table");
    check_one_line_error(sample("-a x -a y"), 2, "one adapter");
    check_one_line_error(sample("--top-p 1.5 -p a"), 2, "--top-p");
    check_one_line_error(sample("--temperature 0 -p a"), 2, "--temperature");
    check_one_line_error(sample("--top-k -1 -p a"), 2, "--top-k");
    check_one_line_error(sample("--max-length 10 --max-new-tokens 5 -p a"), 2, "not both");
    check_one_line_error(sample("--device tpu -p a"), 2, "--device");
    CmdResult h = sample("--help");
    CHECK(h.exit_code == 0);
    for (const char* flag : {"--model", "--adapter", "--tokenizer", "--prompt", "--prompts", "--system", "--temperature",
                             "--top-p", "--top-k", "--repetition-penalty", "--max-length", "--max-new-tokens", "--greedy",
                             "--seed", "--device", "--merge", "--table"})
        CHECK_MESSAGE(h.output.find(flag) != std::string::npos, flag);
}

TEST_CASE("sample: no arguments use out/demo/ with byte tokens; chat on stdin keeps the history") {
    const std::string exe = repo_root() + "/sample";
    TempDir t;
    check_one_line_error(run_cmd("cd " + t.path + " && " + exe), 1, "run ./train first");
    write_demo_files(t.path);
    CmdResult r = run_cmd("cd " + t.path + " && " + exe + " -p hello --max-new-tokens 6 --seed 4");
    CHECK_MESSAGE(r.exit_code == 0, r.output);
    CHECK(r.output.find("LoRA r=4") != std::string::npos);  // the demo adapter was used
    CmdResult once = run_cmd("cd " + t.path + " && (" + exe + " -p hello --max-new-tokens 6 --seed 4 2>/dev/null)");
    CmdResult again = run_cmd("cd " + t.path + " && (" + exe + " -p hello --max-new-tokens 6 --seed 4 2>/dev/null)");
    CHECK(once.exit_code == 0);
    CHECK(again.output == once.output);
    CHECK(r.output.rfind(once.output, 0) == 0);  // stdout first, then the stats line
    // two turns on stdin: the second prefill feeds only what is new (the first turn stays cached).
    // p1 = <s> + the first [INST]; the second turn adds the answer a <= 4, </s>, <s>, its [INST].
    // Cached: p1 + (a + 2 + len2) <= p1 + 6 + len2. Refed from scratch it would be >= 2 p1 + 2 + len2.
    const long long p1 = 1 + (long long)strlen("[INST] hi [/INST]"), len2 = (long long)strlen("[INST] hello there [/INST]");
    CmdResult chat = run_cmd("cd " + t.path + " && printf 'hi\\nhello there\\n' | " + exe + " --max-new-tokens 4 --seed 4 --greedy");
    REQUIRE_MESSAGE(chat.exit_code == 0, chat.output);
    size_t at = chat.output.find("prefill ");
    REQUIRE(at != std::string::npos);
    const long long prefilled = atoll(chat.output.c_str() + at + 8);
    CHECK_MESSAGE(prefilled >= p1 + 2 + len2, chat.output);
    CHECK_MESSAGE(prefilled <= p1 + 6 + len2, chat.output);
    // /reset forgets: the second turn is prefilled from scratch
    CmdResult reset = run_cmd("cd " + t.path + " && printf 'hi\\n/reset\\nhello there\\n' | " + exe + " --max-new-tokens 4 --seed 4 --greedy");
    REQUIRE(reset.exit_code == 0);
    at = reset.output.find("prefill ");
    CHECK(atoll(reset.output.c_str() + at + 8) == p1 + 1 + len2);
}
