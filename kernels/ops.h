// kernels/ops.h — the launchers of the model's ops, one file each in kernels/ with its forward and
// backward side by side (as llm.c's llmc/), and what they share: the cuBLASLt handle and the device
// queries. Every launcher is named after its op, takes its output first and a cudaStream_t last,
// and checks its launch. Shapes use N = B*T tokens; C model width, F MLP width, H query heads,
// KV key/value heads, D head dim, V vocabulary. Each op's CPU twin (namespace cpu in
// llama2_cpu.cpp) has the same name; test/gpu_kernels.cu checks one against the other.
#pragma once

#include <cublasLt.h>

#include <string>

#include "common.cuh"

#define cublasCheck(call)                                                                                   \
    do {                                                                                                    \
        cublasStatus_t st_ = (call);                                                                        \
        if (st_ != CUBLAS_STATUS_SUCCESS) {                                                                 \
            fprintf(stderr, "%s:%d: cuBLAS error %d (hint: unsupported shape/type, or out of memory)\n", \
                    __FILE__, __LINE__, (int)st_);                                                          \
            exit(1);                                                                                        \
        }                                                                                                   \
    } while (0)

// ---- device.cu: the card
// True when a CUDA device can be used; otherwise fills `why` (e.g. "no CUDA driver").
bool gpu_available(std::string* why);
// The card's dense bf16 peak in FLOP/s (0 when unknown), and device memory in use now (GiB).
double gpu_peak_bf16_flops();
double gpu_memory_in_use_gib();

// ---- matmul.cu: cuBLASLt, row-major products, bf16 inputs, fp32 accumulation
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

// ---- embedding.cu: out (N, C) = embed[tokens]
void embedding_forward(bf16* out, const int32_t* tokens, const bf16* embed, int64_t N, int C, cudaStream_t stream);

// ---- rmsnorm.cu
// out (N, C) = x / rms(x) * w; rstd (N)
void rmsnorm_forward(bf16* out, float* rstd, const bf16* x, const bf16* w, int64_t N, int C, float eps, cudaStream_t stream);
// dres (N, C) fp32 += d/dx given dy (N, C) fp32; dres_bf16 = bf16 copy of the updated dres
void rmsnorm_backward(float* dres, bf16* dres_bf16, const float* dy, const bf16* x, const float* rstd, const bf16* w,
                      int64_t N, int C, cudaStream_t stream);

// ---- rope.cu: in place on x (N, n_heads * D) at positions pos (N): HF rotate_half
void rope_forward(bf16* x, const int32_t* pos, int64_t N, int n_heads, int D, float theta, cudaStream_t stream);
void rope_backward(bf16* dx, const int32_t* pos, int64_t N, int n_heads, int D, float theta, cudaStream_t stream);

// ---- attention.cu: flash attention over packed rows (query t sees keys [t - pos[t], t] of its row), GQA.
// out (B, T, H*D), lse (B, H, T) natural-log sum of exp of the scaled scores; q (B,T,H*D), k, v (B,T,KV*D).
void attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, const int32_t* pos, int B,
                       int T, int H, int KV, int D, cudaStream_t stream);
// dq (B,T,H*D), dk, dv (B,T,KV*D) overwritten. dout (B,T,H*D) fp32 (a matmul's output);
// scratch: dout_bf16 (B,T,H*D), delta (B,H,T).
void attention_backward(bf16* dq, bf16* dk, bf16* dv, bf16* dout_bf16, float* delta, const float* dout, const bf16* out,
                        const float* lse, const bf16* q, const bf16* k, const bf16* v, const int32_t* pos, int B, int T,
                        int H, int KV, int D, cudaStream_t stream);

// Tuning: warps per query block of the forward and dQ kernels, 4 or 8 (default 8). For benchmarks.
void attention_set_query_warps(int warps);

// ---- swiglu.cu
// h (n) = silu(g) * u
void swiglu_forward(bf16* h, const bf16* g, const bf16* u, int64_t n, cudaStream_t stream);
// dg, du (n) from dh (n) fp32
void swiglu_backward(bf16* dg, bf16* du, const float* dh, const bf16* g, const bf16* u, int64_t n, cudaStream_t stream);

// ---- crossentropy.cu
// losses (N): -log softmax(logits)[target] or 0 without a target; dlogits (N, V) = scale*(softmax - onehot)
// (bf16, nullptr: forward only). logits (N, V) fp32.
void crossentropy_forward_backward(float* losses, bf16* dlogits, const float* logits, const int32_t* targets, float scale,
                                   int64_t N, int V, cudaStream_t stream);

// ---- tensor.cu: conversions, fills, sums
// a bf16 copy of n fp32 / fp16 values; an fp32 copy of bf16; n values of a stored dtype to bf16
void convert_f32_to_bf16(bf16* out, const float* in, int64_t n, cudaStream_t stream);
void convert_bf16_to_f32(float* out, const bf16* in, int64_t n, cudaStream_t stream);
void convert_f16_to_bf16(bf16* out, const __half* in, int64_t n, cudaStream_t stream);
void convert_to_bf16(bf16* out, const void* in, int32_t dtype, int64_t n, cudaStream_t stream);
// out (n) = N(mean, std) drawn from (seed, index): the same values for the same seed on any launch
void fill_normal(bf16* out, int64_t n, float mean, float std, uint64_t seed, cudaStream_t stream);
// out[0] = sum of in (n), or of its squares, in a fixed order (deterministic); scratch >= 1024 floats
void sum_reduce(float* out, const float* in, int64_t n, bool square, float* scratch, cudaStream_t stream);
// acc[0] += v[0] on the device (a running loss without a host round trip)
void add_scalar(float* acc, const float* v, cudaStream_t stream);
