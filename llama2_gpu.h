// llama2_gpu.h — the CUDA side: kernel launchers (llama2.cu, lora.cu, adamw.cu), the cuBLASLt
// matmul, and the GPU model with its forward, backward and optimizer step. Included by the .cu
// files, by train/sample and by test_gpu. Every launcher is named after its op, takes its output
// first and a cudaStream_t last, and checks its launch. Shapes use N = B*T tokens.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <memory>
#include <vector>

#include "model.h"

typedef __nv_bfloat16 bf16;

#define cublasCheck(call)                                                                                   \
    do {                                                                                                    \
        cublasStatus_t st_ = (call);                                                                        \
        if (st_ != CUBLAS_STATUS_SUCCESS) {                                                                 \
            fprintf(stderr, "%s:%d: cuBLAS error %d (hint: unsupported shape/type, or out of memory)\n", \
                    __FILE__, __LINE__, (int)st_);                                                          \
            exit(1);                                                                                        \
        }                                                                                                   \
    } while (0)

// True when a CUDA device can be used; otherwise fills `why` (e.g. "no CUDA driver").
bool gpu_available(std::string* why);

// ----------------------------------------------------------------------------------------------
// cuBLASLt: row-major matrix products, bf16 inputs, fp32 accumulation

struct Blas {
    cublasLtHandle_t handle = nullptr;
    void* workspace = nullptr;  // one allocation for all products
    size_t workspace_size = 0;
};
void blas_create(Blas& b);
void blas_destroy(Blas& b);

// out (M, N) = alpha * op(a) op(b) + beta * out, all row-major. op(a) is (M, K): a is (M, K), or
// (K, M) when a_trans. op(b) is (K, N): b is (K, N), or (N, K) when b_trans. out is fp32 or bf16.
void matmul(Blas& bl, void* out, bool out_f32, const bf16* a, bool a_trans, const bf16* b, bool b_trans, int64_t M,
            int64_t N, int64_t K, float alpha, float beta, cudaStream_t stream);

// ----------------------------------------------------------------------------------------------
// kernels (llama2.cu)

// out (N, C) = embed[tokens]
void embedding_forward(bf16* out, const int32_t* tokens, const bf16* embed, int64_t N, int C, cudaStream_t stream);
// out (N, C) = x / rms(x) * w; rstd (N)
void rmsnorm_forward(bf16* out, float* rstd, const bf16* x, const bf16* w, int64_t N, int C, float eps, cudaStream_t stream);
// dres (N, C) fp32 += d/dx given dy (N, C) fp32; dres_bf16 = bf16 copy of the updated dres
void rmsnorm_backward(float* dres, bf16* dres_bf16, const float* dy, const bf16* x, const float* rstd, const bf16* w,
                      int64_t N, int C, cudaStream_t stream);
// in place on x (N, n_heads * D) at positions pos (N): HF rotate_half
void rope_forward(bf16* x, const int32_t* pos, int64_t N, int n_heads, int D, float theta, cudaStream_t stream);
void rope_backward(bf16* dx, const int32_t* pos, int64_t N, int n_heads, int D, float theta, cudaStream_t stream);
// flash attention over packed rows (query t sees keys [t - pos[t], t] of its row), GQA.
// out (B, T, H*D), lse (B, H, T) natural-log sum of exp of the scaled scores; q (B,T,H*D), k, v (B,T,KV*D).
void attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, const int32_t* pos, int B,
                       int T, int H, int KV, int D, cudaStream_t stream);
// dq (B,T,H*D), dk, dv (B,T,KV*D) overwritten. dout (B,T,H*D) fp32 (a matmul's output);
// scratch: dout_bf16 (B,T,H*D), delta (B,H,T).
void attention_backward(bf16* dq, bf16* dk, bf16* dv, bf16* dout_bf16, float* delta, const float* dout, const bf16* out,
                        const float* lse, const bf16* q, const bf16* k, const bf16* v, const int32_t* pos, int B, int T,
                        int H, int KV, int D, cudaStream_t stream);
// h (n) = silu(g) * u
void swiglu_forward(bf16* h, const bf16* g, const bf16* u, int64_t n, cudaStream_t stream);
// dg, du (n) from dh (n) fp32
void swiglu_backward(bf16* dg, bf16* du, const float* dh, const bf16* g, const bf16* u, int64_t n, cudaStream_t stream);
// losses (N): -log softmax(logits)[target] or 0 without a target; dlogits (N, V) = scale*(softmax - onehot)
// (bf16, nullptr: forward only). logits (N, V) fp32.
void crossentropy_forward_backward(float* losses, bf16* dlogits, const float* logits, const int32_t* targets, float scale,
                                   int64_t N, int V, cudaStream_t stream);
// a bf16 copy of n fp32 values / fp32 copy of bf16
void convert_f32_to_bf16(bf16* out, const float* in, int64_t n, cudaStream_t stream);
void convert_bf16_to_f32(float* out, const bf16* in, int64_t n, cudaStream_t stream);
// out[0] = sum of in (n) in a fixed order (deterministic)
void sum_reduce(float* out, const float* in, int64_t n, float* scratch, cudaStream_t stream);

// ----------------------------------------------------------------------------------------------
// LoRA (lora.cu). One linear: y = x W^T + s (drop(x) A^T) B^T, x (N, IC), A (r, IC), B (OC, r)

struct LoraGpuArgs {
    const bf16* A;  // (r, IC) bf16 copy of the master weights; nullptr: no LoRA here
    const bf16* B;  // (OC, r)
    int r;
    float scale;    // alpha / r
    float p;        // dropout probability (0: off)
    uint64_t seed, stream_id;  // with the element index they fix the dropout mask (model.h dropout_keep)
};
// xd (N, IC) = dropout(x) with the mask of (seed, stream_id)
void dropout_forward(bf16* xd, const bf16* x, const LoraGpuArgs& la, int64_t N, int64_t IC, cudaStream_t stream);
// u (N, r) = drop(x) A^T only (what the backward needs of a linear whose output is not recomputed)
void lora_u_forward(Blas& bl, bf16* u, bf16* xd, const bf16* x, const LoraGpuArgs& la, int64_t N, int64_t IC,
                    cudaStream_t stream);
// y (N, OC) bf16 += s (drop(x) A^T) B^T; u (N, r) = drop(x) A^T saved; xd scratch (N, IC) used when p > 0
void lora_forward(Blas& bl, bf16* y, bf16* u, bf16* xd, const bf16* x, const LoraGpuArgs& la, int64_t N, int64_t IC,
                  int64_t OC, cudaStream_t stream);
// dx (N, IC) fp32 +=, dA (r, IC) fp32 +=, dB (OC, r) fp32 += from dy (N, OC) bf16.
// scratch: du (N, r) bf16, xd (N, IC) bf16 and tmp (N, IC) fp32 (used when p > 0)
void lora_backward(Blas& bl, float* dx, float* dA, float* dB, bf16* du, bf16* xd, float* tmp, const bf16* dy,
                   const bf16* x, const bf16* u, const LoraGpuArgs& la, int64_t N, int64_t IC, int64_t OC,
                   cudaStream_t stream);

// ----------------------------------------------------------------------------------------------
// AdamW (adamw.cu) over fp32 master weights, with global-norm clipping decided on the device

// norm_sq[0] = sum g^2 over n values (deterministic two-pass reduction; scratch >= 1024 floats)
void grad_norm_squared(float* norm_sq, const float* g, int64_t n, float* scratch, cudaStream_t stream);
// params, m, v (n) fp32 updated as torch.optim.AdamW after scaling grads by
// min(1, max_norm / (sqrt(norm_sq[0]) + 1e-6)) (max_norm <= 0: no clipping); params_bf16 = bf16 copy.
void adamw_update(float* params, bf16* params_bf16, const float* grads, float* m, float* v, int64_t n, int step,
                  float lr, float beta1, float beta2, float eps, float weight_decay, const float* norm_sq,
                  float max_norm, cudaStream_t stream);

// ----------------------------------------------------------------------------------------------
// the GPU model (llama2.cu): frozen weights (bf16, or NF4 for the seven linears), LoRA state,
// activations and scratch, each in one allocation carved into named pointers.

enum BaseQuant : int { QUANT_BF16 = 0, QUANT_NF4 = 1 };
// What the forward keeps for the backward: NONE keeps everything; LIGHT recomputes the cheap ops
// (the norms' outputs, SwiGLU); FULL keeps only each layer's input and recomputes the layer.
enum Recompute : int { RECOMPUTE_NONE = 0, RECOMPUTE_LIGHT = 1, RECOMPUTE_FULL = 2 };

// Activations for up to max_tokens tokens. "Slots" are per layer (L) or shared (1), by Recompute.
struct GpuActs {
    bf16* x;           // (L+1, N, C) residual stream, always per layer
    float* rstd_attn;  // (L, N)
    float* rstd_mlp;   // (L, N)
    bf16* xn_attn;     // (S_cheap, N, C) normed input of q, k, v
    bf16* q;           // (S, N, H*D) after RoPE
    bf16* k;           // (S, N, KV*D) after RoPE
    bf16* v;           // (S, N, KV*D)
    bf16* ctx;         // (S, N, H*D) attention output
    float* lse;        // (S, H*N) log-sum-exp per (row, head, position)
    bf16* x_mid;       // (S, N, C) residual after attention
    bf16* xn_mlp;      // (S_cheap, N, C)
    bf16* gate;        // (S, N, F)
    bf16* up;          // (S, N, F)
    bf16* hmid;        // (S_cheap, N, F) silu(gate) * up
    bf16* lora_u;      // (S, 7, N, r) drop(x) A^T per target
    bf16* xn_final;    // (N, C)
    float* rstd_final; // (N)
    float* dxn_final;  // (N, C) gradient at the final norm's output (computed with the head)
    float* losses;     // (N) per-position cross-entropy
};

// Scratch for the head and the backward (one layer at a time).
struct GpuScratch {
    float* logits;      // (CH, V) one chunk of fp32 logits
    bf16* dlogits;      // (CH, V)
    float* dres;        // (N, C) gradient of the residual stream
    bf16* dres_bf16;    // (N, C)
    float* dxn;         // (N, C) gradient at a norm's output
    float* dctx;        // (N, H*D)
    bf16* dctx_bf16;    // (N, H*D)
    float* delta;       // (H*N) rowsum(dO * O) of the attention backward
    bf16* dq;           // (N, H*D)
    bf16* dk;           // (N, KV*D)
    bf16* dv;           // (N, KV*D)
    float* dhmid;       // (N, F)
    bf16* dgate;        // (N, F)
    bf16* dup;          // (N, F)
    bf16* lora_xd;      // (N, max in) dropout(x)
    float* lora_tmp;    // (N, max in)
    bf16* lora_du;      // (N, r)
    bf16* weight;       // (max out*in) a dequantized NF4 weight
    void* quant_ws;     // NF4 quantizer workspace
    float* reduce;      // (1024) partial sums
    float* loss_sum;    // (1) of the last forward
    float* step_loss;   // (1) summed over the training forwards since gpu_zero_grads
    float* norm_sq;     // (1)
};

struct GpuStepOptions {
    bool use_lora = true;
    bool training = false;      // dropout on, and the head computes its gradient
    uint64_t dropout_seed = 0;  // with (layer, target) fixes the masks, as on the CPU
    float loss_scale = 0.0f;    // d(loss)/d(sum of per-position CE), e.g. 1 / targets in the step
};

struct GpuModel {
    Config cfg;
    LoraConfig lora;
    int quant = QUANT_BF16;
    int recompute = RECOMPUTE_NONE;
    int64_t max_tokens = 0;  // N capacity of the activations
    int head_chunk = 0;      // tokens per LM-head chunk (CH)
    cudaStream_t stream = nullptr;
    Blas blas;

    // frozen weights: non-linear tensors always bf16; the linears bf16 (QUANT_BF16) or NF4 records
    void* weights_mem = nullptr;
    Weights<bf16> w;                                    // linears are nullptr under NF4
    uint8_t* nf4_mem = nullptr;
    uint8_t* nf4_base[NUM_LORA_TARGETS] = {};           // (L records) per linear
    int64_t nf4_record_bytes[NUM_LORA_TARGETS] = {};

    // LoRA: fp32 master weights, gradients, AdamW moments, a bf16 copy, all in LoraLayout order
    LoraLayout lay;
    void* lora_mem = nullptr;
    float *lora_params = nullptr, *lora_grads = nullptr, *adam_m = nullptr, *adam_v = nullptr;
    bf16* lora_bf16 = nullptr;

    void* acts_mem = nullptr;
    GpuActs acts;
    void* scratch_mem = nullptr;
    GpuScratch scr;

    int32_t *d_tokens = nullptr, *d_targets = nullptr, *d_pos = nullptr;  // (max_tokens)
    int32_t* h_batch[2] = {};    // pinned (3, max_tokens) staging for uploads, two in turn
    cudaEvent_t h_batch_done[2] = {};  // the upload from staging i has been read by the device
    int h_batch_next = 0;
    int B = 0, T = 0;            // shape of the batch last set
    size_t bytes_allocated = 0;  // everything this model holds on the device
};

// Allocates everything for batches of up to max_tokens tokens (B*T). lora.rank 0: no LoRA.
void gpu_model_init(GpuModel& m, const Config& cfg, const LoraConfig& lora, int quant, int recompute,
                    int64_t max_tokens);
void gpu_model_free(GpuModel& m);
// Base weights from fp32 host values in file order (quantized to NF4 on the GPU when quant is NF4).
void gpu_model_set_weights(GpuModel& m, const std::vector<float>& weights_f32);
// Base weights from a model file, streamed tensor by tensor (quantized on the GPU when NF4; an
// NF4 file's pre-quantized records are copied as they are, and refused unless quant is NF4).
void gpu_model_load_file(GpuModel& m, const std::string& path);
// Random base weights generated on the GPU (N(0, 0.02), norms 1), for benchmarks.
void gpu_model_random_weights(GpuModel& m, uint64_t seed);
// LoRA master weights (LoraLayout order, fp32) to/from the host; set also zeroes the moments.
void gpu_lora_set(GpuModel& m, const std::vector<float>& params);
std::vector<float> gpu_lora_get(GpuModel& m);
// The optimizer's whole state (weights and AdamW moments), for checkpoints and --resume.
void gpu_lora_state_set(GpuModel& m, const std::vector<float>& params, const std::vector<float>& mom,
                        const std::vector<float>& vel);
void gpu_lora_state_get(GpuModel& m, std::vector<float>& params, std::vector<float>& mom, std::vector<float>& vel);
std::vector<float> gpu_lora_grads_get(GpuModel& m);
void gpu_zero_grads(GpuModel& m);

// Upload a batch (async, from pinned staging). B*T <= max_tokens.
void gpu_set_batch(GpuModel& m, int B, int T, const int32_t* tokens, const int32_t* targets, const int32_t* pos);
// Forward over the batch. With opt.training, also the LM head's backward (loss_scale). If
// logits_out (device, (N, V) fp32) is given, the logits are copied there chunk by chunk.
void gpu_forward(GpuModel& m, const GpuStepOptions& opt, float* logits_out = nullptr);
// Backward after a training forward: accumulates LoRA gradients into m.lora_grads.
void gpu_backward(GpuModel& m, const GpuStepOptions& opt);
// Global-norm clip + AdamW (step counts from 1). max_norm <= 0: no clipping. A NaN/Inf gradient
// norm leaves the weights and moments untouched (the host sees it in gpu_read_grad_norm).
void gpu_optimizer_step(GpuModel& m, float lr, float beta1, float beta2, float eps, float weight_decay, float max_norm,
                        int step);
// Synchronising reads, for logging at step boundaries only.
float gpu_read_loss_sum(GpuModel& m);   // sum of per-position CE of the last forward
float gpu_read_grad_norm(GpuModel& m);  // sqrt of the norm_sq of the last optimizer step
float gpu_read_step_loss(GpuModel& m);  // summed CE of the training forwards since gpu_zero_grads
// The card's dense bf16 peak in FLOP/s (0 when unknown), and device memory in use now (GiB).
double gpu_peak_bf16_flops();
double gpu_memory_in_use_gib();

// ----------------------------------------------------------------------------------------------
// the GPU decoder (decode.cu) behind ./sample: make_gpu_decoder() is declared in sampling.h; this
// one builds a model of random weights on the device, for benchmarks.
class Decoder;
std::unique_ptr<Decoder> make_gpu_decoder_random(const Config& c, bool nf4, int max_context, uint64_t seed);
