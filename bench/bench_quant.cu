// bench/bench_quant.cu — how fast NF4 runs on this GPU (a benchmark, not a test; ./test_gpu checks
// correctness). Prints the card, then
//   1. dequantize to bf16 (double-quantized absmax decoded on the fly) for each Llama-2 7B layer
//      shape, in GB/s counting every byte read (codes, 8-bit absmax, scales, offset) and written;
//   2. the time to quantize all linear weights of a 7B-shaped model (32 layers x q, k, v, o, gate,
//      up, down; random bf16 generated on the GPU), the way loading does it: one checked call per
//      weight, each ending in a synchronisation for the NaN/Inf check;
// and ends with lines "RESULT <key> <value>" that tools/gpu_check.sh turns into its table.
// Run: ./bench_quant [--layers N]   (default 32)
#include <cuda_bf16.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../cli.h"
#include "../kernels/common.cuh"
#include "../quant.h"

// Random bf16 weights on the GPU: ~N(0, 0.02) from a hash of (seed, index), Box-Muller.
__global__ void fill_random_bf16(__nv_bfloat16* w, int64_t n, uint64_t seed) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const uint64_t h = splitmix64(seed ^ splitmix64((uint64_t)i));
    const float u1 = ((float)(h >> 40) + 1.0f) * (1.0f / 16777217.0f);
    const float u2 = (float)((h >> 16) & 0xffffff) * (1.0f / 16777216.0f);
    w[i] = __float2bfloat16(0.02f * sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2));
}

int main(int argc, char** argv) {
    std::string layers_arg = "32";
    const Cli cli{"bench_quant", "./bench_quant [--layers N]",
                  "NF4 dequantize GB/s per Llama-2 7B shape and the time to quantize a 7B-shaped model's linears.",
                  {
                      {"-l", "--layers", "N", "layers of the 7B-shaped model to quantize, 1 to 1000 (default 32)", &layers_arg},
                      {"-h", "--help", nullptr, "show this help and exit", nullptr},
                  }};
    if (!cli_parse(cli, argc, argv)) return 0;
    const int layers = (int)cli_int(cli.prog, "--layers", layers_arg, 1, 1000);
    try {
        cudaDeviceProp prop;
        cudaCheck(cudaGetDeviceProperties(&prop, 0));
        printf("card: %s (sm_%d%d, %d SMs)\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
        cudaStream_t stream;
        cudaCheck(cudaStreamCreate(&stream));
        cudaEvent_t t0, t1;
        cudaCheck(cudaEventCreate(&t0));
        cudaCheck(cudaEventCreate(&t1));

        // ---- 1. dequantize GB/s per 7B shape
        const int64_t shapes[3][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
        double worst_gbs = 1e30;
        for (const auto& s : shapes) {
            const int64_t n = s[0] * s[1];
            const Nf4Layout l = nf4_layout(n);
            void *w, *rec, *ws, *out;
            cudaCheck(cudaMalloc(&w, 2 * n));
            cudaCheck(cudaMalloc(&rec, l.bytes));
            cudaCheck(cudaMalloc(&ws, nf4_quantize_workspace_bytes(n)));
            cudaCheck(cudaMalloc(&out, 2 * n));
            fill_random_bf16<<<(unsigned)((n + 255) / 256), 256, 0, stream>>>((__nv_bfloat16*)w, n, 42);
            cudaCheck(cudaGetLastError());
            const Nf4View v = nf4_view((uint8_t*)rec, n);
            nf4_quantize_checked_gpu(v, w, DT_BF16, ws, "bench", stream);
            for (int i = 0; i < 5; i++) nf4_dequantize_gpu(out, DT_BF16, v, stream);  // warm-up
            const int iters = 50;
            cudaCheck(cudaEventRecord(t0, stream));
            for (int i = 0; i < iters; i++) nf4_dequantize_gpu(out, DT_BF16, v, stream);
            cudaCheck(cudaEventRecord(t1, stream));
            cudaCheck(cudaEventSynchronize(t1));
            float ms = 0;
            cudaCheck(cudaEventElapsedTime(&ms, t0, t1));
            const double sec = ms / 1e3 / iters;
            const double bytes = (double)nf4_packed_bytes(n) + l.n_blocks + 4.0 * l.n_dq_blocks + 4.0 + 2.0 * n;
            const double gbs = bytes / sec / 1e9;
            worst_gbs = std::min(worst_gbs, gbs);
            printf("dequantize %5lldx%-5lld -> bf16: %7.1f us  %7.1f GB/s  (%.1f MB moved)\n", (long long)s[0],
                   (long long)s[1], sec * 1e6, gbs, bytes / 1e6);
            printf("RESULT dequant_gbs_%lldx%lld %.1f\n", (long long)s[0], (long long)s[1], gbs);
            cudaCheck(cudaFree(w));
            cudaCheck(cudaFree(rec));
            cudaCheck(cudaFree(ws));
            cudaCheck(cudaFree(out));
        }

        // ---- 2. quantize a whole 7B-shaped model's linear weights
        const int64_t C = 4096, F = 11008;
        const int64_t mats[7][2] = {{C, C}, {C, C}, {C, C}, {C, C}, {F, C}, {F, C}, {C, F}};  // q k v o gate up down
        int64_t total_w = 0, total_rec = 0, max_ws = 0;
        for (const auto& m : mats) {
            total_w += m[0] * m[1];
            total_rec += nf4_layout(m[0] * m[1]).bytes;
            max_ws = std::max(max_ws, nf4_quantize_workspace_bytes(m[0] * m[1]));
        }
        total_w *= layers;
        total_rec *= layers;
        void *w, *rec, *ws;
        cudaCheck(cudaMalloc(&w, 2 * total_w));
        cudaCheck(cudaMalloc(&rec, total_rec));
        cudaCheck(cudaMalloc(&ws, max_ws));
        for (int64_t off = 0, part = 1 << 28; off < total_w; off += part) {
            const int64_t cnt = std::min<int64_t>(part, total_w - off);
            fill_random_bf16<<<(unsigned)((cnt + 255) / 256), 256, 0, stream>>>((__nv_bfloat16*)w + off, cnt, 1000 + off);
            cudaCheck(cudaGetLastError());
        }
        cudaCheck(cudaStreamSynchronize(stream));
        auto quantize_all = [&]() {
            int64_t wo = 0, ro = 0;
            for (int l = 0; l < layers; l++)
                for (const auto& m : mats) {
                    const int64_t n = m[0] * m[1];
                    nf4_quantize_checked_gpu(nf4_view((uint8_t*)rec + ro, n), (__nv_bfloat16*)w + wo, DT_BF16, ws,
                                             "bench weight", stream);
                    wo += n;
                    ro += nf4_layout(n).bytes;
                }
        };
        quantize_all();  // warm-up (first launches, clocks)
        const auto a = std::chrono::steady_clock::now();
        quantize_all();
        const auto b = std::chrono::steady_clock::now();
        const double sec = std::chrono::duration<double>(b - a).count();
        printf("quantize 7B-shaped model: %d layers x 7 matrices, %.2f G params (bf16 %.2f GB -> NF4 %.2f GB, %.3f bits/param): %.1f ms  (%.0f GB/s of bf16 read)\n",
               layers, total_w / 1e9, 2.0 * total_w / 1e9, total_rec / 1e9, 8.0 * total_rec / total_w, sec * 1e3,
               2.0 * total_w / sec / 1e9);
        printf("RESULT quantize_7b_ms %.1f\n", sec * 1e3);
        printf("RESULT bits_per_param %.4f\n", 8.0 * total_rec / total_w);
        printf("RESULT dequant_gbs_min %.1f\n", worst_gbs);
        printf("RESULT card %s\n", prop.name);
        cudaCheck(cudaFree(w));
        cudaCheck(cudaFree(rec));
        cudaCheck(cudaFree(ws));
        return 0;
    } catch (const InputError& e) {
        fprintf(stderr, "bench_quant: %s\n", e.what());
        return 1;
    }
}
