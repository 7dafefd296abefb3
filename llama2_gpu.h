// llama2_gpu.h — the CUDA side of the model, in three parts that live apart on the device:
//   GpuBase   the frozen base weights (bf16, or NF4 records for the seven linears): gpu_base.cu.
//             Shared by the trainer and the decoder; the part a sharded multi-GPU run would split.
//   GpuLora   the trainable state: LoRA fp32 master weights, gradients, AdamW moments, a bf16
//             copy for the forward (gpu_buffers.cu), updated by adamw.cu.
//   GpuActs / GpuScratch   what the forward keeps for the backward, and the backward's scratch
//             (gpu_buffers.cu), sized for a token budget and a recompute level.
// Each is one cudaMalloc carved into named pointers. GpuModel bundles them with a stream and the
// cuBLASLt handle; llama2.cu runs the forward and backward over it, layer by layer. The LoRA and
// AdamW launchers (lora.cu, adamw.cu) are declared here too. Included by the .cu files, by the
// trainer's GPU backend, by sample (through decode.cu) and by the GPU tests.
#pragma once

#include <memory>
#include <vector>

#include "kernels/ops.h"
#include "model.h"
#include "quant.h"

// One device allocation carved into named pointers: add() each pointer with its element count, one
// line each (the size sits beside its name), then alloc() once. Regions are 256-byte aligned; a
// count of 0 leaves the pointer nullptr.
struct DeviceCarver {
    struct Part {
        void** ptr;
        size_t bytes;
    };
    std::vector<Part> parts;
    template <typename T>
    void add(T*& p, int64_t count) {
        parts.push_back({(void**)&p, (size_t)count * sizeof(T)});
    }
    size_t bytes() const {  // what alloc() would take
        size_t total = 0;
        for (const Part& p : parts) total += (p.bytes + 255) & ~(size_t)255;
        return total;
    }
    // cudaMalloc of the sum, after checking it fits the card's free memory (else InputError naming
    // `what`, the size and what is free); sets every pointer. gpu_buffers.cu
    void* alloc(const char* what, size_t* total_bytes);
};

// ----------------------------------------------------------------------------------------------
// the frozen base (gpu_base.cu)

enum BaseQuant : int { QUANT_BF16 = 0, QUANT_NF4 = 1 };

struct GpuBase {
    Config cfg;
    int quant = QUANT_BF16;
    void* dense_mem = nullptr;                    // every bf16 tensor, file order
    Weights<bf16> w;                              // into dense_mem; the linears are nullptr under NF4
    void* nf4_mem = nullptr;                      // the seven linears' NF4 records (quant.h: Nf4Layout)
    uint8_t* nf4[NUM_LORA_TARGETS] = {};          // (L records) per linear target
    int64_t nf4_record_bytes[NUM_LORA_TARGETS] = {};
    size_t bytes = 0;                             // device memory held
    double load_peak_gib = 0;                     // device memory in use at the end of the last load
                                                  // (its scratch still held): the run's peak
};
void gpu_base_init(GpuBase& b, const Config& cfg, int quant);
// Device bytes gpu_base_init takes, and what loading adds on top of them while it runs.
size_t gpu_base_bytes(const Config& cfg, int quant);
size_t gpu_base_load_bytes(const Config& cfg, int quant);
void gpu_base_free(GpuBase& b);
// From fp32 host values in file order (quantized to NF4 on the GPU when quant is NF4).
void gpu_base_set_weights(GpuBase& b, const std::vector<float>& weights_f32, cudaStream_t stream);
// From a model file, streamed tensor by tensor (quantized on the GPU under NF4; an NF4 file's
// pre-quantized records are copied as they are, and refused unless quant is NF4).
void gpu_base_load_file(GpuBase& b, const std::string& path, cudaStream_t stream);
// Random weights generated on the GPU (N(0, 0.02), norms 1), for benchmarks.
void gpu_base_random(GpuBase& b, uint64_t seed, cudaStream_t stream);
// Elements of the largest linear weight (rows * cols): the size of a dequantization scratch.
int64_t gpu_base_max_linear_numel(const Config& c);
// The NF4 record of linear target t in layer l (quant == QUANT_NF4).
Nf4View gpu_base_nf4(const GpuBase& b, int t, int l);
// The bf16 weight (out, in) of linear target t in layer l: the stored one, or the NF4 record
// dequantized into scratch (gpu_base_max_linear_numel elements).
const bf16* gpu_base_linear(const GpuBase& b, int t, int l, bf16* scratch, cudaStream_t stream);

// ----------------------------------------------------------------------------------------------
// LoRA (lora.cu). One linear: y = x W^T + s (drop(x) A^T) B^T, x (N, IC), A (r, IC), B (OC, r)

struct LoraGpuArgs {
    const bf16* A;  // (r, IC) bf16 copy of the master weights; nullptr: no LoRA here
    const bf16* B;  // (OC, r)
    int r;
    float scale;    // alpha / r
    float p;        // dropout probability (0: off)
    uint64_t seed, mask_id;  // with the element index they fix the dropout mask (model.h dropout_keep)
};
// xd (N, IC) = dropout(x) with the mask of (seed, mask_id)
void dropout_forward(bf16* xd, const bf16* x, const LoraGpuArgs& la, int64_t N, int64_t IC, cudaStream_t stream);
// u (N, r) = drop(x) A^T only (what the backward needs of a linear whose output is not recomputed).
// Scratch: xd (N, IC) bf16 for the plain dropout path; `scratch` (scratch_floats fp32) for the
// fused kernels' partial sums (they run when it holds r * max(N, IC) floats; nullptr/0: never).
void lora_u_forward(Blas& bl, bf16* u, bf16* xd, float* scratch, int64_t scratch_floats, const bf16* x,
                    const LoraGpuArgs& la, int64_t N, int64_t IC, cudaStream_t stream);
// y (N, OC) bf16 += s (drop(x) A^T) B^T; u (N, r) = drop(x) A^T saved; scratch as lora_u_forward
void lora_forward(Blas& bl, bf16* y, bf16* u, bf16* xd, float* scratch, int64_t scratch_floats, const bf16* x,
                  const LoraGpuArgs& la, int64_t N, int64_t IC, int64_t OC, cudaStream_t stream);
// dx (N, IC) fp32 +=, dA (r, IC) fp32 +=, dB (OC, r) fp32 += from dy (N, OC) bf16.
// scratch: du (N, r) bf16, xd (N, IC) bf16 and tmp (tmp_floats >= N * IC fp32) (used when p > 0)
// Tuning, for benchmarks and tests: true (the default) routes the dropout products through the
// fused kernels of lora.cu, false through cuBLASLt and separate dropout passes (docs/perf.md).
void lora_set_fused(bool on);
// defer_dx: where the fused kernels run, leave dx to lora_backward_dx (returns true; du must then
// live until that call), so that the targets sharing an input add into dx in one pass.
bool lora_backward(Blas& bl, float* dx, float* dA, float* dB, bf16* du, bf16* xd, float* tmp, int64_t tmp_floats,
                   const bf16* dy, const bf16* x, const bf16* u, const LoraGpuArgs& la, int64_t N, int64_t IC, int64_t OC,
                   cudaStream_t stream, bool defer_dx);
// dx (N, IC) fp32 += the LoRA input gradients of n (1-3) deferred targets sharing x, in order:
// du[t] (N, r) each, la[t] their arguments (same rank and dropout).
void lora_backward_dx(float* dx, int n, const bf16* const* du, const LoraGpuArgs* la, int64_t N, int64_t IC,
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
// the trainable state and the activations (gpu_buffers.cu)

// LoRA parameters and AdamW state, all in LoraLayout order (model.h), one allocation.
struct GpuLora {
    LoraConfig cfg;
    LoraLayout lay;
    void* mem = nullptr;
    float* params = nullptr;   // (lay.total) fp32 master weights
    float* grads = nullptr;    // (lay.total) accumulated over a step's micro-batches
    float* adam_m = nullptr;   // (lay.total) first moment
    float* adam_v = nullptr;   // (lay.total) second moment
    bf16* params_bf16 = nullptr;  // (lay.total) what the forward multiplies with
    size_t bytes = 0;
};

// What the forward keeps for the backward: NONE keeps everything; LIGHT recomputes the cheap ops
// (the norms' outputs, SwiGLU); FULL keeps only each layer's input and recomputes the layer.
enum Recompute : int { RECOMPUTE_NONE = 0, RECOMPUTE_LIGHT = 1, RECOMPUTE_FULL = 2 };

// Activations for up to N = max_tokens tokens. "Slots" are per layer (L) or shared (1), by
// Recompute: S = L unless FULL, S_cheap = L only under NONE.
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
    float* lora_tmp;    // (N, max in) du A, or the fused LoRA kernels' partial sums
    bf16* lora_du;      // (3, N, r) a slot per linear of a shared input (q, k, v), kept until the grouped dx pass
    bf16* weight;       // (max out*in) a dequantized NF4 weight
    float* reduce;      // (1024) partial sums
    float* loss_sum;    // (1) of the last forward
    float* step_loss;   // (1) summed over the training forwards since gpu_zero_grads
    float* norm_sq;     // (1)
};

// The per-phase profile (bench_step --profile, ./train's first step): while it is on, the forward,
// the backward and the optimizer record a CUDA event at every change of phase, and the time from
// one event to the next goes to the phase the first one opened, so the phases add up to the
// stream's whole time (launch gaps included, in the phase they fall in). Off, a mark is a branch.
enum StepPhase : int {
    PHASE_FROZEN_FWD,   // x W^T of the seven frozen linears
    PHASE_FROZEN_BWD,   // dy W (input gradients through the frozen weights)
    PHASE_DEQUANT,      // NF4 -> bf16 of each frozen linear, forward and backward
    PHASE_LORA,         // the low-rank products, dropout, LoRA gradients
    PHASE_ATTN_FWD,
    PHASE_ATTN_BWD,
    PHASE_ELEMENTWISE,  // embedding, norms, RoPE, SwiGLU, residual copies
    PHASE_HEAD,         // LM head forward and backward, cross-entropy
    PHASE_OPTIMIZER,    // gradient norm, clipping, AdamW
    NUM_PHASES
};
const char* phase_name(int phase);
struct GpuProfile {
    bool on = false;
    std::vector<cudaEvent_t> events;  // a pool, reused
    std::vector<int> phase_of;        // the phase each recorded event opened
    size_t used = 0;
};

struct GpuStepOptions {
    bool use_lora = true;
    bool training = false;      // dropout on, and the head computes its gradient
    uint64_t dropout_seed = 0;  // with (layer, target) fixes the masks, as on the CPU
    float loss_scale = 0.0f;    // d(loss)/d(sum of per-position CE), e.g. 1 / targets in the step
};

struct GpuModel {
    Config cfg;
    int recompute = RECOMPUTE_NONE;
    int64_t max_tokens = 0;  // N capacity of the activations
    int head_chunk = 0;      // tokens per LM-head chunk (CH)
    cudaStream_t stream = nullptr;
    Blas blas;

    GpuBase base;            // frozen
    GpuLora lora;            // trainable
    GpuProfile prof;
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

// Device bytes gpu_model_init allocates, for the memory plan (the same layouts, not allocated).
size_t gpu_model_bytes(const Config& cfg, const LoraConfig& lora, int quant, int recompute, int64_t max_tokens);
// Allocates everything for batches of up to max_tokens tokens (B*T). lora.rank 0: no LoRA. The
// base weights are then filled by one of gpu_base_set_weights / _load_file / _random on m.base.
void gpu_model_init(GpuModel& m, const Config& cfg, const LoraConfig& lora, int quant, int recompute,
                    int64_t max_tokens);
void gpu_model_free(GpuModel& m);
// LoRA master weights (LoraLayout order, fp32) to/from the host; set also zeroes the moments.
void gpu_lora_set(GpuModel& m, const std::vector<float>& params);
std::vector<float> gpu_lora_get(GpuModel& m);
// The optimizer's whole state (weights and AdamW moments), for checkpoints and --resume.
void gpu_lora_state_set(GpuModel& m, const std::vector<float>& params, const std::vector<float>& mom,
                        const std::vector<float>& vel);
void gpu_lora_state_get(GpuModel& m, std::vector<float>& params, std::vector<float>& mom, std::vector<float>& vel);
std::vector<float> gpu_lora_grads_get(GpuModel& m);
void gpu_zero_grads(GpuModel& m);

// ----------------------------------------------------------------------------------------------
// the model's step (llama2.cu)

// Upload a batch (async, from pinned staging). B*T <= max_tokens.
void gpu_set_batch(GpuModel& m, int B, int T, const int32_t* tokens, const int32_t* targets, const int32_t* pos);
// Forward over the batch. With opt.training, also the LM head's backward (loss_scale). If
// logits_out (device, (N, V) fp32) is given, the logits are copied there chunk by chunk.
void gpu_forward(GpuModel& m, const GpuStepOptions& opt, float* logits_out = nullptr);
// Backward after a training forward: accumulates LoRA gradients into m.lora.grads.
void gpu_backward(GpuModel& m, const GpuStepOptions& opt);
// Global-norm clip + AdamW (step counts from 1). max_norm <= 0: no clipping. A NaN/Inf gradient
// norm leaves the weights and moments untouched (the host sees it in gpu_read_grad_norm).
void gpu_optimizer_step(GpuModel& m, float lr, float beta1, float beta2, float eps, float weight_decay, float max_norm,
                        int step);
// The profile: start clears it and turns it on; stop turns it off, synchronises and gives the
// milliseconds spent in each phase since start.
void gpu_profile_start(GpuModel& m);
void gpu_profile_stop(GpuModel& m, double ms[NUM_PHASES]);
void gpu_profile_mark_(GpuModel& m, int phase);
inline void gpu_profile_mark(GpuModel& m, int phase) {
    if (m.prof.on) gpu_profile_mark_(m, phase);
}
// Synchronising reads, for logging at step boundaries only.
float gpu_read_loss_sum(GpuModel& m);   // sum of per-position CE of the last forward
float gpu_read_grad_norm(GpuModel& m);  // sqrt of the norm_sq of the last optimizer step
float gpu_read_step_loss(GpuModel& m);  // summed CE of the training forwards since gpu_zero_grads

// ----------------------------------------------------------------------------------------------
// the GPU decoder (decode.cu) behind ./sample: make_gpu_decoder() is declared in sampling.h; this
// one builds a model of random weights on the device, for benchmarks.
class Decoder;
std::unique_ptr<Decoder> make_gpu_decoder_random(const Config& c, bool nf4, int max_context, int max_batch, uint64_t seed);
// For tests: at most max_blocks blocks in the fused mat-vec's persistent grid (0: one block an
// SM, the default), so that on a tiny model each block walks many tiles, as it does on a 7B
// one. d must come from make_gpu_decoder; the captured step graphs are dropped.
void gpu_decoder_cap_matvec_grid(Decoder& d, int max_blocks);
