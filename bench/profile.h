// bench/profile.h — what the per-phase profile of a training step prints (bench_step --profile):
// the time of each phase (llama2_gpu.h: StepPhase), the work that phase must do (model FLOPs, or
// the bytes it must move for the memory-bound ones), its achieved rate, and that rate as a share
// of the ceiling measured on the same card a moment before (a large cuBLASLt bf16 GEMM; a large
// device-to-device copy). Included by bench/bench_step.cu only.
#pragma once

#include <cstdio>

#include "../llama2_gpu.h"
#include "../quant.h"

struct Ceilings {
    double flops;  // dense bf16 FLOP/s of an 8192^3 GEMM
    double bytes;  // B/s of a 128 MiB device-to-device copy (read + write)
};

inline Ceilings measure_ceilings(Blas& bl, cudaStream_t stream) {
    const int64_t n = 8192;
    void *a = nullptr, *b = nullptr, *c = nullptr;
    cudaCheck(cudaMalloc(&a, n * n * 2));
    cudaCheck(cudaMalloc(&b, n * n * 2));
    cudaCheck(cudaMalloc(&c, n * n * 2));
    fill_normal((bf16*)a, n * n, 0.0f, 1.0f, 1, stream);  // random data: zeros would run faster
    fill_normal((bf16*)b, n * n, 0.0f, 1.0f, 2, stream);
    cudaEvent_t e0, e1;
    cudaCheck(cudaEventCreate(&e0));
    cudaCheck(cudaEventCreate(&e1));
    auto time_ms = [&](auto&& fn, int reps) {
        fn();  // warm-up
        cudaCheck(cudaEventRecord(e0, stream));
        for (int i = 0; i < reps; i++) fn();
        cudaCheck(cudaEventRecord(e1, stream));
        cudaCheck(cudaEventSynchronize(e1));
        float ms = 0;
        cudaCheck(cudaEventElapsedTime(&ms, e0, e1));
        return ms / reps;
    };
    Ceilings out;
    const float gemm_ms = time_ms([&] { matmul(bl, c, false, (bf16*)a, false, (bf16*)b, true, n, n, n, 1.0f, 0.0f, stream); }, 10);
    out.flops = 2.0 * n * n * n / (gemm_ms * 1e-3);
    const size_t bytes = (size_t)n * n * 2;  // 128 MiB, twice the L2: the copy runs from memory
    const float copy_ms = time_ms([&] { cudaCheck(cudaMemcpyAsync(c, a, bytes, cudaMemcpyDeviceToDevice, stream)); }, 20);
    out.bytes = 2.0 * bytes / (copy_ms * 1e-3);
    for (void* p : {a, b, c}) cudaCheck(cudaFree(p));
    cudaCheck(cudaEventDestroy(e0));
    cudaCheck(cudaEventDestroy(e1));
    return out;
}

// The work of each phase for a step of `tokens` tokens with `pairs` visible (query, key) pairs.
// Compute phases count model FLOPs (as training_flops: no recompute); memory phases count the
// bytes they must move at the least (each input read once, each output written once).
struct PhaseWork {
    double flops[NUM_PHASES] = {};
    double bytes[NUM_PHASES] = {};
};

inline PhaseWork phase_work(const Config& c, const LoraConfig& lc, int quant, double tokens, double pairs) {
    PhaseWork w;
    const double N = tokens, L = c.n_layers, C = c.dim, F = c.hidden_dim, V = c.vocab_size;
    const double QD = (double)c.n_heads * c.head_dim, KVD = (double)c.n_kv_heads * c.head_dim;
    for (int t = 0; t < NUM_LORA_TARGETS; t++) {
        const double in = (double)lora_in_dim(c, t), out = (double)lora_out_dim(c, t);
        w.flops[PHASE_FROZEN_FWD] += 2 * N * in * out * L;
        w.flops[PHASE_FROZEN_BWD] += 2 * N * in * out * L;
        if (lc.has(t)) w.flops[PHASE_LORA] += 6 * N * lc.rank * (in + out) * L;
        // NF4 record read + bf16 weight written, once for the forward and once for the backward
        if (quant == QUANT_NF4) w.bytes[PHASE_DEQUANT] += 2 * L * ((double)nf4_layout((int64_t)(in * out)).bytes + 2 * in * out);
    }
    w.flops[PHASE_ATTN_FWD] = 4.0 * c.head_dim * c.n_heads * pairs * L;
    w.flops[PHASE_ATTN_BWD] = 8.0 * c.head_dim * c.n_heads * pairs * L;
    w.flops[PHASE_HEAD] = 4 * N * V * C;
    // per layer, forward: 2 norms (read x, write y), RoPE on q and k (read + write), two residual
    // copies, SwiGLU (read g, u, write h); backward: 2 norm backwards (dy fp32, x, dres fp32 read and
    // written, bf16 copy), SwiGLU backward (dh fp32, g, u, write dg, du), RoPE backward on dq, dk
    w.bytes[PHASE_ELEMENTWISE] = L * N * (2 * 4 * C + 4 * (QD + KVD) + 2 * 4 * C + 6 * F + 2 * (4 + 2 + 8 + 2) * C +
                                          12 * F + 4 * (QD + KVD));
    const double params = (double)lora_layout(c, lc).total;
    w.bytes[PHASE_OPTIMIZER] = params * (4 + 4 + 8 + 8 + 8 + 2);  // norm pass; grads, params, m, v, bf16 copy
    return w;
}

inline void print_profile(const double ms[NUM_PHASES], const PhaseWork& w, const Ceilings& ceil) {
    double total = 0;
    for (int p = 0; p < NUM_PHASES; p++) total += ms[p];
    printf("  profile (one step; %% of the ceilings measured here: %.0f TFLOP/s bf16 GEMM, %.0f GB/s copy)\n",
           ceil.flops / 1e12, ceil.bytes / 1e9);
    printf("  | phase | ms | share | achieved | of ceiling |\n  | --- | --- | --- | --- | --- |\n");
    for (int p = 0; p < NUM_PHASES; p++) {
        char rate[64] = "", share_of[32] = "";
        const double s = ms[p] * 1e-3;
        if (w.flops[p] > 0 && s > 0) {
            snprintf(rate, sizeof(rate), "%.0f TFLOP/s", w.flops[p] / s / 1e12);
            snprintf(share_of, sizeof(share_of), "%.0f%%", 100 * w.flops[p] / s / ceil.flops);
        } else if (w.bytes[p] > 0 && s > 0) {
            snprintf(rate, sizeof(rate), "%.0f GB/s", w.bytes[p] / s / 1e9);
            snprintf(share_of, sizeof(share_of), "%.0f%%", 100 * w.bytes[p] / s / ceil.bytes);
        }
        printf("  | %s | %.2f | %.1f%% | %s | %s |\n", phase_name(p), ms[p], 100 * ms[p] / total, rate, share_of);
        printf("RESULT phase=%d ms=%.3f\n", p, ms[p]);
    }
    printf("  | total | %.2f | 100%% | | |\n", total);
}
