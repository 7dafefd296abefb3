// sampling.h — text generation without a model in sight: Hugging Face's logits-processor pipeline
// (repetition penalty -> temperature -> top-k -> top-p -> sample, as transformers' generate()
// builds it), the generation loop, and the Decoder interface that separates all of this from the
// model that produces the logits. Implemented in sampling.cpp; used by sample.cpp. The chat
// template and the demo's byte tokenizer are in chat.h.
// Tested by test/cpu_sample.cpp:  ./test_cpu -tc="sample:*"
//
// The seam for the GPU: sample.cpp only talks to a Decoder. llama2_cpu.h has the CPU one
// (CpuDecoder, fp32, KV cache); a GPU build of ./sample links a definition of make_gpu_decoder()
// (declared below, weak), and --device cuda uses it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model.h"

// ----------------------------------------------------------------------------------------------
// the logits processors, one pure function each, in transformers' order for generate():
//   RepetitionPenaltyLogitsProcessor, then (only when sampling) TemperatureLogitsWarper,
//   TopKLogitsWarper, TopPLogitsWarper; then softmax + multinomial (or argmax when greedy).
// (transformers/generation/utils.py: _get_logits_processor; logits_process.py for each one.)
// All work in place on one row of logits (V); removed tokens become -inf (HF's filter_value).

struct SamplingConfig {
    bool do_sample = true;            // false: greedy (argmax after the repetition penalty)
    float temperature = 0.7f;         // > 0; 1 = off
    int top_k = 50;                   // 0 = off (HF's implicit default is 50)
    double top_p = 0.8;               // in [0, 1]; 1 = off. double: HF compares with 1 - top_p computed in Python
    float repetition_penalty = 1.2f;  // > 0; 1 = off
};

// For every DISTINCT id in seq (prompt included): logit < 0 ? logit * penalty : logit / penalty.
// (HF gathers, transforms and scatters: a token seen twice is still penalized once.)
void apply_repetition_penalty(float* logits, int V, const int32_t* seq, size_t n, float penalty);
// logits / temperature (a division, as HF does, not a multiplication by 1/t)
void apply_temperature(float* logits, int V, float temperature);
// Keeps every token whose logit is >= the k-th largest: ties with the k-th are all kept (HF removes
// `scores < topk(scores, k).values[-1]`). k >= V keeps all; k is raised to min_keep first.
void apply_top_k(float* logits, int V, int k, int min_keep = 1);
// Sorts ascending, cumulative softmax, removes tokens whose cumulative probability is <= 1 - top_p,
// but never the min_keep most probable. Equal logits sort by id (a stable sort), so of tied tokens
// at the boundary the lower ids go first.
void apply_top_p(float* logits, int V, double top_p, int min_keep = 1);
// The whole list for one step, as generate() builds it from cfg: penalty (if != 1), then when
// sampling temperature (if != 1), top-k (if != 0), top-p (if < 1).
void process_logits(float* logits, int V, const int32_t* seq, size_t n, const SamplingConfig& cfg);

// probs (V) = softmax(logits); -inf gives exactly 0
void softmax(float* probs, const float* logits, int V);
// First index of the largest value (torch.argmax's tie rule).
int32_t argmax(const float* x, int V);
// One draw from probs (V, sums to ~1) by inverse CDF with a 53-bit uniform from rng; never returns
// a token of probability 0.
int32_t sample_multinomial(const float* probs, int V, Rng& rng);
// process_logits, then argmax (greedy) or softmax + sample. Modifies logits.
int32_t choose_next_token(float* logits, int V, const int32_t* seq, size_t n, const SamplingConfig& cfg, Rng& rng);

// ----------------------------------------------------------------------------------------------
// the Decoder: whatever turns tokens into next-token logits, with its own KV cache.
// prefill() and step() append to the cache (positions position() onwards) and return the logits
// after the last token fed, valid until the next call. A GPU implementation keeps everything on
// the card and copies back only the (V) floats.

class Decoder {
   public:
    virtual ~Decoder() = default;
    virtual const Config& config() const = 0;
    virtual int max_context() const = 0;  // positions the cache holds
    virtual int position() const = 0;     // tokens in the cache
    virtual void reset() = 0;             // empty the cache (a new conversation)
    // nullptr: the base model. merge: fold s*B*A into the base weights (faster per token, same
    // function up to rounding) instead of computing the LoRA path unmerged. Empties the cache.
    // The caller has checked the adapter against the model (check_adapter_matches_model).
    virtual void set_adapter(const Adapter* adapter, bool merge) = 0;
    // Feeds n >= 1 tokens in one pass; returns the (V) logits after the last of them.
    virtual const float* prefill(const int32_t* tokens, int n) = 0;
    // Feeds one token; returns the (V) logits after it.
    virtual const float* step(int32_t token) = 0;
    virtual std::string describe() const = 0;  // "cpu fp32", "cuda NF4 ..." for the stats line

    // Batched decoding. The caches hold max_batch() independent sequences, slots 0 .. max_batch()-1
    // (the calls above use slot 0). A slot's logits never depend on which other slots share a pass:
    // the same tokens give bitwise the same logits alone and in any batch.
    virtual int max_batch() const = 0;
    virtual int slot_position(int slot) const = 0;  // tokens in that slot's cache
    // Empties the slot and feeds it tokens (n >= 1) from position 0; returns its (V) logits.
    virtual const float* prefill_slot(int slot, const int32_t* tokens, int n) = 0;
    // One token for each of n distinct slots in one pass; returns (n, V) logits, row i for slots[i].
    virtual const float* step_batch(const int32_t* tokens, const int* slots, int n) = 0;
};

// Defined only in a GPU build of ./sample (the GPU decoder's source); a CPU-only build leaves the
// symbol null and sample.cpp says so when --device cuda is asked for.
// max_batch: the sequences its caches hold (Decoder::max_batch).
std::unique_ptr<Decoder> make_gpu_decoder(const std::string& model_path, int max_context, int max_batch) __attribute__((weak));
// Defined beside it: whether a GPU can be used right now (a GPU build on a machine without one
// falls back to the CPU by default).
bool gpu_decoder_usable() __attribute__((weak));

struct GenerateStats {
    int64_t prefill_tokens = 0;  // tokens fed by prefill()
    double prefill_s = 0;
    int64_t decode_tokens = 0;   // tokens fed by step()
    double decode_s = 0;
    bool hit_eos = false;        // stopped at eos (else at the length limit)
    void add(const GenerateStats& o) {
        prefill_tokens += o.prefill_tokens, prefill_s += o.prefill_s;
        decode_tokens += o.decode_tokens, decode_s += o.decode_s;
    }
};

// Generates the continuation of `context` (the whole sequence so far, prompt included) until eos
// or until context + generated reaches max_total tokens (HF's max_length). The decoder's cache must
// hold a prefix of context (position() <= context.size()); only the rest is prefilled, so a chat
// turn reuses the previous turns' cache. Returns the new tokens without the eos; on_token sees
// each as it is chosen (eos excluded). The last token chosen is not fed (nothing needs its logits).
std::vector<int32_t> generate(Decoder& dec, const std::vector<int32_t>& context, int64_t max_total, int32_t eos_id,
                              const SamplingConfig& cfg, Rng& rng, const std::function<void(int32_t)>& on_token,
                              GenerateStats* stats);

// generate() for many prompts at once, in up to dec.max_batch() slots: each prompt is prefilled
// into a free slot, the active slots step together, and a slot whose sequence ends (eos, or its
// max_totals[i]) takes the next prompt. Prompt i samples from its own Rng(seed), as generate() with
// Rng(seed) would alone, and its logits do not depend on its batch-mates (Decoder), so every answer
// equals the one generate() gives for that prompt by itself. on_done(i, tokens) as each finishes.
std::vector<std::vector<int32_t>> generate_batch(Decoder& dec, const std::vector<std::vector<int32_t>>& contexts,
                                                 const std::vector<int64_t>& max_totals, int32_t eos_id,
                                                 const SamplingConfig& cfg, uint64_t seed,
                                                 const std::function<void(size_t, const std::vector<int32_t>&)>& on_done,
                                                 GenerateStats* stats);
