// sampling.cpp — Hugging Face's logits processors as plain loops, and the generation loop over a
// Decoder. See sampling.h for the contract
// of each function; test/cpu_sample.cpp checks them on hand-computed cases (./test_cpu -ts="sample*").
//
// Matching transformers, number by number:
//  - every step works on fp32 logits, like HF with an fp32 lm_head output;
//  - temperature divides; repetition penalty multiplies negatives and divides the rest;
//  - top-k keeps ties with the k-th value (it removes `scores < kth`);
//  - top-p compares the fp32 cumulative probabilities with 1 - top_p rounded to fp32 (torch
//    compares a float tensor with a Python scalar in the tensor's dtype); the cumulative sum is
//    accumulated in double, as torch's CPU cumsum does (acc_type<float> is double there);
//  - greedy takes the first maximum, as torch.argmax does.
// The random draw itself cannot match torch.multinomial bit for bit (another generator): it draws
// from the same distribution, reproducibly under the seed.
#include "sampling.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

// ----------------------------------------------------------------------------------------------
// logits processors

void apply_repetition_penalty(float* logits, int V, const int32_t* seq, size_t n, float penalty) {
    // HF's gather -> transform -> scatter reads every original value before writing any, so a
    // token that occurs twice is penalized once: mark the distinct ids first.
    std::vector<uint8_t> seen((size_t)V, 0);
    for (size_t i = 0; i < n; i++) {
        ASSERT(seq[i] >= 0 && seq[i] < V, "token id inside the vocabulary");
        seen[(size_t)seq[i]] = 1;
    }
    for (int v = 0; v < V; v++)
        if (seen[(size_t)v]) logits[v] = logits[v] < 0.0f ? logits[v] * penalty : logits[v] / penalty;
}

void apply_temperature(float* logits, int V, float temperature) {
    for (int v = 0; v < V; v++) logits[v] = logits[v] / temperature;
}

void apply_top_k(float* logits, int V, int k, int min_keep) {
    k = std::min(std::max(k, min_keep), V);
    if (k <= 0 || k >= V) return;  // k >= V: torch.topk's k-th is the minimum; nothing is below it
    std::vector<float> sorted(logits, logits + V);
    // the k-th largest value (index k-1 in descending order)
    std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end(), std::greater<float>());
    const float kth = sorted[(size_t)(k - 1)];
    for (int v = 0; v < V; v++)
        if (logits[v] < kth) logits[v] = -INFINITY;
}

void apply_top_p(float* logits, int V, double top_p, int min_keep) {
    // ascending order; equal logits by id, so the result does not depend on the sort's whims
    std::vector<int32_t> order((size_t)V);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] < logits[b]; });
    // softmax of the sorted logits: the largest is the last
    const float maxv = logits[order[(size_t)V - 1]];
    std::vector<float> e((size_t)V);
    float sum = 0.0f;
    for (int i = 0; i < V; i++) {
        e[(size_t)i] = expf(logits[order[(size_t)i]] - maxv);
        sum += e[(size_t)i];
    }
    const float threshold = (float)(1.0 - top_p);  // Python computes 1 - top_p in double; torch compares in fp32
    std::vector<uint8_t> remove((size_t)V, 0);
    double cumulative = 0.0;
    for (int i = 0; i < V; i++) {
        cumulative += (double)(e[(size_t)i] / sum);
        remove[(size_t)i] = (float)cumulative <= threshold;
    }
    for (int i = std::max(0, V - min_keep); i < V; i++) remove[(size_t)i] = 0;  // the most probable stay
    for (int i = 0; i < V; i++)
        if (remove[(size_t)i]) logits[order[(size_t)i]] = -INFINITY;
}

void process_logits(float* logits, int V, const int32_t* seq, size_t n, const SamplingConfig& cfg) {
    if (cfg.repetition_penalty != 1.0f) apply_repetition_penalty(logits, V, seq, n, cfg.repetition_penalty);
    if (!cfg.do_sample) return;  // HF adds the warpers only when sampling
    if (cfg.temperature != 1.0f) apply_temperature(logits, V, cfg.temperature);
    if (cfg.top_k != 0) apply_top_k(logits, V, cfg.top_k, 1);
    if (cfg.top_p < 1.0) apply_top_p(logits, V, cfg.top_p, 1);
}

// ----------------------------------------------------------------------------------------------
// choosing the token

void softmax(float* probs, const float* logits, int V) {
    float maxv = -INFINITY;
    for (int v = 0; v < V; v++) maxv = std::max(maxv, logits[v]);
    ASSERT(maxv > -INFINITY, "at least one token left to sample (processors keep one)");
    float sum = 0.0f;
    for (int v = 0; v < V; v++) {
        probs[v] = expf(logits[v] - maxv);  // exp(-inf) = 0 exactly
        sum += probs[v];
    }
    for (int v = 0; v < V; v++) probs[v] /= sum;
}

int32_t argmax(const float* x, int V) {
    int32_t best = 0;
    for (int v = 1; v < V; v++)
        if (x[v] > x[best]) best = v;  // strict: the first maximum wins
    return best;
}

int32_t sample_multinomial(const float* probs, int V, Rng& rng) {
    // 53 random bits: the 24 of Rng::uniform() would make tokens of probability below 6e-8
    // (most of a 32000-token tail) impossible to draw, or drawn at the wrong rate.
    double total = 0.0;
    for (int v = 0; v < V; v++) total += probs[v];
    const double u = (double)(rng.next() >> 11) * (1.0 / 9007199254740992.0) * total;  // [0, total)
    double cumulative = 0.0;
    int32_t last_nonzero = -1;
    for (int v = 0; v < V; v++) {
        if (probs[v] <= 0.0f) continue;
        cumulative += probs[v];
        last_nonzero = v;
        if (u < cumulative) return v;
    }
    ASSERT(last_nonzero >= 0, "a distribution with some mass");
    return last_nonzero;  // u within rounding of the total
}

int32_t choose_next_token(float* logits, int V, const int32_t* seq, size_t n, const SamplingConfig& cfg, Rng& rng) {
    // a model or adapter whose numbers overflow gives NaN or Inf logits: bad input, not a bug here
    for (int v = 0; v < V; v++)
        if (!std::isfinite(logits[v]))
            fail("the model produced %s logits (token %d): a corrupt or overflowing model or adapter",
                 std::isnan(logits[v]) ? "NaN" : "infinite", v);
    process_logits(logits, V, seq, n, cfg);
    if (!cfg.do_sample) return argmax(logits, V);
    std::vector<float> probs((size_t)V);
    softmax(probs.data(), logits, V);
    return sample_multinomial(probs.data(), V, rng);
}

// ----------------------------------------------------------------------------------------------
// the generation loop

std::vector<int32_t> generate(Decoder& dec, const std::vector<int32_t>& context, int64_t max_total, int32_t eos_id,
                              const SamplingConfig& cfg, Rng& rng, const std::function<void(int32_t)>& on_token,
                              GenerateStats* stats) {
    using clock = std::chrono::steady_clock;
    const int V = dec.config().vocab_size;
    ASSERT(!context.empty(), "a prompt of at least one token (<s>)");
    ASSERT((int64_t)context.size() < max_total, "room for one new token (checked by the caller)");
    ASSERT(max_total <= (int64_t)dec.max_context() + 1, "the cache holds every token fed (the last one is not fed)");
    // the cache must hold a strict prefix: the logits after the last context token are needed
    if (dec.position() >= (int)context.size()) dec.reset();
    GenerateStats st;
    std::vector<int32_t> seq = context;  // the whole sequence, for the repetition penalty
    std::vector<float> logits((size_t)V);

    auto t0 = clock::now();
    const int fed = dec.position();
    const float* out = dec.prefill(context.data() + fed, (int)context.size() - fed);
    std::copy(out, out + V, logits.begin());
    st.prefill_tokens = (int64_t)context.size() - fed;
    st.prefill_s = std::chrono::duration<double>(clock::now() - t0).count();

    std::vector<int32_t> generated;
    auto t1 = clock::now();
    while (true) {
        const int32_t next = choose_next_token(logits.data(), V, seq.data(), seq.size(), cfg, rng);
        if (next == eos_id) {
            st.hit_eos = true;
            break;
        }
        generated.push_back(next);
        seq.push_back(next);
        if (on_token) on_token(next);
        if ((int64_t)seq.size() >= max_total) break;  // HF's MaxLengthCriteria: the sequence is full
        out = dec.step(next);
        std::copy(out, out + V, logits.begin());
        st.decode_tokens++;
    }
    st.decode_s = std::chrono::duration<double>(clock::now() - t1).count();
    if (stats) *stats = st;
    return generated;
}

std::vector<std::vector<int32_t>> generate_batch(Decoder& dec, const std::vector<std::vector<int32_t>>& contexts,
                                                 const std::vector<int64_t>& max_totals, int32_t eos_id,
                                                 const SamplingConfig& cfg, uint64_t seed,
                                                 const std::function<void(size_t, const std::vector<int32_t>&)>& on_done,
                                                 GenerateStats* stats) {
    using clock = std::chrono::steady_clock;
    const int V = dec.config().vocab_size;
    ASSERT(contexts.size() == max_totals.size(), "one length limit per prompt");
    ASSERT(dec.max_batch() >= 1, "a decoder with at least one slot");
    struct Live {                      // the sequence in one slot
        size_t prompt = 0;
        std::vector<int32_t> seq;      // prompt + generated, for the repetition penalty
        size_t n_prompt = 0;
        int64_t max_total = 0;
        Rng rng{0};
        int32_t pending = -1;          // chosen, not yet fed; -1: the slot is free
    };
    std::vector<std::vector<int32_t>> answers(contexts.size());
    std::vector<Live> slots((size_t)std::min<size_t>((size_t)dec.max_batch(), std::max<size_t>(contexts.size(), 1)));
    GenerateStats st;
    size_t next_prompt = 0;
    // live has chosen `next` after its last token fed: true while its sequence goes on (pending set)
    auto advance = [&](Live& live, int32_t next) {
        bool more = next != eos_id;
        if (more) {
            live.seq.push_back(next);
            more = (int64_t)live.seq.size() < live.max_total;  // HF's MaxLengthCriteria
        }
        if (more) {
            live.pending = next;
            return true;
        }
        std::vector<int32_t>& out = answers[live.prompt];
        out.assign(live.seq.begin() + (int64_t)live.n_prompt, live.seq.end());
        if (on_done) on_done(live.prompt, out);
        live.pending = -1;
        return false;
    };
    std::vector<float> rows;  // (n, V) logits of one pass, copied: a refill's prefill reuses the decoder's buffer
    // fills a free slot with the next prompt(s) until one goes on past its first token
    auto refill = [&](int slot) {
        while (next_prompt < contexts.size()) {
            const size_t i = next_prompt++;
            const std::vector<int32_t>& ctx = contexts[i];
            ASSERT(!ctx.empty() && (int64_t)ctx.size() < max_totals[i], "room for one new token (checked by the caller)");
            ASSERT(max_totals[i] <= (int64_t)dec.max_context() + 1, "the cache holds every token fed");
            Live& live = slots[(size_t)slot];
            live.prompt = i, live.seq = ctx, live.n_prompt = ctx.size(), live.max_total = max_totals[i];
            live.rng = Rng(seed);
            const auto t0 = clock::now();
            const float* logits = dec.prefill_slot(slot, ctx.data(), (int)ctx.size());
            st.prefill_tokens += (int64_t)ctx.size();
            st.prefill_s += std::chrono::duration<double>(clock::now() - t0).count();
            rows.assign(logits, logits + V);
            if (advance(live, choose_next_token(rows.data(), V, live.seq.data(), live.seq.size(), cfg, live.rng))) return;
        }
    };
    for (size_t s = 0; s < slots.size(); s++) refill((int)s);
    std::vector<int32_t> tokens, chosen;
    std::vector<int> ids;
    while (true) {
        tokens.clear(), ids.clear();
        for (size_t s = 0; s < slots.size(); s++)
            if (slots[s].pending >= 0) tokens.push_back(slots[s].pending), ids.push_back((int)s);
        if (ids.empty()) break;
        const int n = (int)ids.size();
        const auto t0 = clock::now();
        const float* logits = dec.step_batch(tokens.data(), ids.data(), n);
        rows.assign(logits, logits + (size_t)n * V);
        chosen.assign((size_t)n, 0);
        // each sequence's processors and draw touch only its own row and Rng: parallel, same result
#pragma omp parallel for schedule(dynamic) if (n > 1)
        for (int j = 0; j < n; j++) {
            Live& live = slots[(size_t)ids[j]];
            chosen[j] = choose_next_token(rows.data() + (size_t)j * V, V, live.seq.data(), live.seq.size(), cfg, live.rng);
        }
        st.decode_tokens += n;
        st.decode_s += std::chrono::duration<double>(clock::now() - t0).count();
        for (int j = 0; j < n; j++)
            if (!advance(slots[(size_t)ids[j]], chosen[j])) refill(ids[j]);
    }
    if (stats) *stats = st;
    return answers;
}
