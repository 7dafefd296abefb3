// llama2_cpu.h — the CPU reference: a Llama 2 forward and backward with LoRA, masked cross-entropy
// and AdamW, in plain fp32 loops (llama2_cpu.cpp). It is the teaching text, CI's ground truth and
// the oracle every CUDA kernel is tested against. See llama2_cpu.cpp for the walk-through.
#pragma once

#include <vector>

#include "model.h"

// The model: frozen base weights (fp32) and the trainable LoRA parameters with their gradients.
struct CpuModel {
    Config cfg;
    std::vector<float> weights_mem;  // all base weights, file order (model.h)
    Weights<float> w;                // named pointers into weights_mem
    LoraConfig lora;                 // rank 0: no LoRA at all
    LoraLayout lay;
    std::vector<float> lora_params;  // (lay.total) fp32 master weights, LoraLayout order
    std::vector<float> lora_grads;   // (lay.total) same layout; backward accumulates into it

    bool has_lora(int t) const { return lora.rank > 0 && lora.has(t); }
    // element offsets, in lora_params / lora_grads, of A_t of layer l (r, in_t) and B_t (out_t, r)
    int64_t lora_A_off(int t, int l) const;
    int64_t lora_B_off(int t, int l) const;
};

// Takes the fp32 weights (file order; e.g. from load_model_f32 or HfCheckpoint::load_all_f32).
void cpu_model_init(CpuModel& m, const Config& cfg, std::vector<float> weights);
// Attaches LoRA with PEFT's initialisation: A ~ kaiming-uniform (bound 1/sqrt(in)), B = 0.
void cpu_lora_init(CpuModel& m, const LoraConfig& lc, uint64_t seed);
// Attaches LoRA with given parameters (LoraLayout order), e.g. from an adapter file.
void cpu_lora_set(CpuModel& m, const LoraConfig& lc, const std::vector<float>& params);
// A random Llama for tests and the demo: N(0, 0.02) matrices, norm weights near 1.
std::vector<float> cpu_random_weights(const Config& cfg, uint64_t seed);

// A batch of B rows of T tokens. Several conversations may share a row ("packing"): pos restarts
// at 0 at each conversation, and a token at position p attends to the p tokens before it and
// itself only, so attention never crosses a conversation boundary.
struct CpuBatch {
    int B, T;
    std::vector<int32_t> tokens;   // (B, T) input ids
    std::vector<int32_t> targets;  // (B, T) the id to predict at each position, -1 = no loss
    std::vector<int32_t> pos;      // (B, T) position within its conversation
};
// HF convention (labels aligned with tokens, -100 = ignore; loss on logits[:, :-1] vs labels[:, 1:]),
// one conversation per row.
CpuBatch batch_from_hf_labels(const int32_t* tokens, const int32_t* labels, int B, int T);
// Pack conversations (spans of a Dataset) into one row each, in order; row length T = the longest
// row's sum. targets[j] = tokens[j+1] where loss_mask[j+1] and j+1 is in the same conversation.
// rows[i] lists the conversation indices of row i. Short rows are padded with targets -1.
CpuBatch batch_from_conversations(const Dataset& d, const std::vector<std::vector<int64_t>>& rows);

struct CpuStepOptions {
    bool use_lora = true;        // false: the base model alone
    bool training = false;       // dropout only while training
    uint64_t dropout_seed = 0;   // with the (layer, target) it fixes the dropout masks
};

// Everything the forward keeps for the backward, for one batch shape: one allocation carved into
// named pointers (N = B*T tokens).
struct CpuActs {
    int B = 0, T = 0;
    std::vector<float> mem;
    float* x;          // (L+1, N, C) residual stream; x[l] enters layer l, x[L] leaves the last
    float* rstd_attn;  // (L, N) 1/rms of x[l]
    float* xn_attn;    // (L, N, C) normed input of q,k,v
    float* q;          // (L, N, H*D) after RoPE
    float* k;          // (L, N, KV*D) after RoPE
    float* v;          // (L, N, KV*D)
    float* att;        // (L, B, H, T, T) softmax probabilities (0 where masked)
    float* ctx;        // (L, N, H*D) attention output, input of o
    float* x_mid;      // (L, N, C) residual after attention
    float* rstd_mlp;   // (L, N)
    float* xn_mlp;     // (L, N, C) normed input of gate, up
    float* gate;       // (L, N, F) gate projection before SiLU
    float* up;         // (L, N, F)
    float* hmid;       // (L, N, F) silu(gate) * up, input of down
    float* lora_u;     // (L, 7, N, r) u = dropout(x) A^T for each target (r = LoRA rank)
    float* rstd_final; // (N)
    float* xn_final;   // (N, C)
    float* logits;     // (N, V)
    double loss_sum = 0;  // sum of cross-entropy over positions with a target
    int64_t n_targets = 0;
};
void cpu_acts_init(CpuActs& a, const CpuModel& m, int B, int T);

// The whole model. GPU twin: gpu_forward / gpu_backward (llama2.cu).
// Forward: fills `a` and returns the mean cross-entropy over positions with a target (0 if none).
float cpu_forward(const CpuModel& m, CpuActs& a, const CpuBatch& b, const CpuStepOptions& opt);
// Backward of loss = loss_scale * (sum of per-position cross-entropy). Accumulates the LoRA
// gradients into m.lora_grads (zero them at the start of an optimizer step). For the batch mean,
// loss_scale = 1 / a.n_targets; for gradient accumulation, 1 / (targets in the whole step).
void cpu_backward(CpuModel& m, CpuActs& a, const CpuBatch& b, const CpuStepOptions& opt, float loss_scale);

// ----------------------------------------------------------------------------------------------
// the ops, one function each, forward beside backward: the CPU twins of the CUDA kernels
// (N tokens; linear weights W are (out, in) as nn.Linear stores them)
namespace cpu {
// out (N, C) = embed[tokens (N)]                                            GPU: kernels/embedding.cu
void embedding_forward(float* out, const int32_t* tokens, const float* embed, int64_t N, int64_t C);
// out (N, OC) = inp (N, IC) W^T                                           GPU: kernels/matmul.cu
void matmul_forward(float* out, const float* inp, const float* W, int64_t N, int64_t IC, int64_t OC);
// dinp (N, IC) += dout (N, OC) W
void matmul_backward_input(float* dinp, const float* dout, const float* W, int64_t N, int64_t IC, int64_t OC);

// one linear's LoRA: A (r, IC), B (OC, r), nullptr A = no LoRA; dropout p with its mask fixed by (seed, mask_id)
struct LoraArgs {
    const float* A;
    const float* B;
    int r;
    float scale;  // alpha / r
    float p;      // dropout probability (0 when not training)
    uint64_t seed, mask_id;  // mask_id names the (layer, target): layer * 7 + target
};
// y (N, OC) = x W^T + s (drop(x) A^T) B^T; u (N, r) = drop(x) A^T is saved for the backward.  GPU: lora.cu
void linear_lora_forward(float* y, float* u, const float* x, const float* W, const LoraArgs& la, int64_t N, int64_t IC, int64_t OC);
// dx (N, IC) +=, dA (r, IC) +=, dB (OC, r) += from dy (N, OC)
void linear_lora_backward(float* dx, float* dA, float* dB, const float* dy, const float* x, const float* u,
                          const float* W, const LoraArgs& la, int64_t N, int64_t IC, int64_t OC);

// y (N, C) = x / rms(x) * w; rstd (N) = 1 / rms                         GPU: kernels/rmsnorm.cu
void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t N, int64_t C, float eps);
// dx (N, C) += from dy (N, C)
void rmsnorm_backward(float* dx, const float* dy, const float* x, const float* rstd, const float* w, int64_t N, int64_t C);

// cos/sin tables (N, D/2) for the positions pos (N)
void rope_tables(std::vector<float>& cos_t, std::vector<float>& sin_t, const int32_t* pos, int64_t N, int D, float theta);
// in place on x (N, n_heads * D)                                          GPU: kernels/rope.cu
void rope_forward(float* x, const float* cos_t, const float* sin_t, int64_t N, int n_heads, int D);
void rope_backward(float* dx, const float* cos_t, const float* sin_t, int64_t N, int n_heads, int D);

// ctx (B,T,H*D), att (B,H,T,T) from q (B,T,H*D), k, v (B,T,KV*D); pos (B,T) as in CpuBatch.
// GPU: kernels/attention.cu (flash attention: it keeps no att, only a log-sum-exp per query)
void attention_forward(float* ctx, float* att, const float* q, const float* k, const float* v, const int32_t* pos,
                       int B, int T, int H, int KV, int D);
// dq, dk, dv overwritten
void attention_backward(float* dq, float* dk, float* dv, const float* dctx, const float* att, const float* q,
                        const float* k, const float* v, const int32_t* pos, int B, int T, int H, int KV, int D);

// W (OC, IC) += s * B (OC, r) A (r, IC): a LoRA delta folded into its frozen weight in fp32, as
// PEFT's merge computes it (B @ A first, then scaled). Used by cpu_lora_merge and ./merge_adapter.
void lora_merge(float* W, const float* A, const float* B, int r, float s, int64_t OC, int64_t IC);

// h (n) = silu(g) * u; backward overwrites dg, du                          GPU: kernels/swiglu.cu
void swiglu_forward(float* h, const float* g, const float* u, int64_t n);
void swiglu_backward(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n);

// sum over positions with a target (>= 0) of -log softmax(logits)[target]; logits (N, V).
// GPU: kernels/crossentropy.cu (forward and backward in one pass)
double crossentropy_forward(int64_t* n_targets, const float* logits, const int32_t* targets, int64_t N, int64_t V);
// dlogits (N, V) = scale * (softmax - onehot), 0 on rows without a target
void crossentropy_backward(float* dlogits, const float* logits, const int32_t* targets, float scale, int64_t N, int64_t V);
}  // namespace cpu

// AdamW exactly as torch.optim.AdamW: decoupled weight decay, bias-corrected moments. GPU: adamw.cu
struct AdamWConfig {
    float lr = 2e-4f;
    float beta1 = 0.9f;
    float beta2 = 0.999f;
    float eps = 1e-8f;
    float weight_decay = 0.0f;
};
// One update of n parameters; step counts from 1.
void cpu_adamw_update(float* params, const float* grads, float* m, float* v, int64_t n, int step,
                      const AdamWConfig& cfg);
// sqrt(sum g^2), accumulated in double
float cpu_grad_norm(const float* g, int64_t n);
// torch.nn.utils.clip_grad_norm_: scales g by max_norm / (norm + 1e-6) when that is < 1.
// Returns the norm before clipping.
float cpu_clip_grad_norm(float* g, int64_t n, float max_norm);

// ==============================================================================================
// KV-cached decoding, for ./sample (implemented at the end of llama2_cpu.cpp)
//
// The same model as cpu_forward, fed a few tokens at a time: each layer's keys (after RoPE) and
// values of the tokens already seen stay in a cache, so a new token costs one pass over the
// weights instead of a pass over the whole sequence. Built from the ops above; the tests check
// that it gives cpu_forward's logits at every position (test/cpu_sample.cpp).
#include "sampling.h"

struct CpuKVCache {
    int max_T = 0;            // positions it holds
    int len = 0;              // positions filled (the next token goes to position len)
    std::vector<float> k, v;  // (L, max_T, KV*D) keys after RoPE, values
};
void cpu_kv_cache_init(CpuKVCache& c, const Config& cfg, int max_T);

// Feeds tokens (n) at positions c.len .. c.len+n-1: each attends to the cached positions and to
// the new ones up to itself. Appends their keys/values. logits: (n, V) of every new position when
// all_logits, else (V) of the last one. LoRA is applied unmerged when the model has it (no dropout).
void cpu_forward_cached(const CpuModel& m, CpuKVCache& c, const int32_t* tokens, int n, float* logits, bool all_logits);

// W += (alpha / r) * B A on every adapted linear, then drops the LoRA parameters (rank 0): the
// merged model computes what the adapted one does, up to fp32 rounding.
void cpu_lora_merge(CpuModel& m);

// The CPU Decoder: owns the model (fp32) and its cache. set_adapter with merge keeps a copy of the
// original linear weights, so a later set_adapter starts from the exact base again.
class CpuDecoder : public Decoder {
   public:
    // max_batch: the sequences its caches hold (slots; a batched step runs them one by one)
    CpuDecoder(CpuModel model, int max_context, int max_batch);
    const Config& config() const override { return m_.cfg; }
    int max_context() const override { return caches_[0].max_T; }
    int position() const override { return caches_[0].len; }
    void reset() override { caches_[0].len = 0; }
    void set_adapter(const Adapter* adapter, bool merge) override;
    const float* prefill(const int32_t* tokens, int n) override;
    const float* step(int32_t token) override { return prefill(&token, 1); }
    std::string describe() const override;
    int max_batch() const override { return (int)caches_.size(); }
    int slot_position(int slot) const override { return caches_.at((size_t)slot).len; }
    const float* prefill_slot(int slot, const int32_t* tokens, int n) override;
    const float* step_batch(const int32_t* tokens, const int* slots, int n) override;
    const CpuModel& model() const { return m_; }

   private:
    CpuModel m_;
    std::vector<CpuKVCache> caches_;    // one per slot
    std::vector<float> logits_;         // (max_batch, V)
    std::vector<float> base_linears_;   // W_Q .. W_DOWN as loaded, kept while an adapter is merged
    bool merged_ = false;
};
