// tools/rcp_probe.cu — measures the GPU's approximate reciprocal (rcp.approx.ftz.f32, one MUFU.RCP,
// what nvcc --use_fast_math makes of 1.0f / x and so what bitsandbytes scales NF4 blocks with) on
// every fp32 mantissa, and prints the two tables quant_cpu.cpp emulates it with: RCP_FIX10 (exact
// corrections for the 1024 mantissas of bf16/fp16 values) and RCP_ERR_CUBIC (the smooth part of the
// error, a least-squares cubic per 1/128 of [1, 2), in ulps). The tables in quant_cpu.cpp came from
// an H100 (sm_90); run this on another GPU generation to see whether its MUFU differs.
// Run: ./rcp_probe > tables.txt    (prints statistics to stderr)
#include <cstdio>
#include <cstring>
#include <vector>

#include "../kernels/common.cuh"
#include "../quant.h"

__global__ void rcp_probe_kernel(uint32_t* out, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float x = __uint_as_float(0x3f800000u + (uint32_t)i);  // 1 + i * 2^-23
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    out[i] = __float_as_uint(r);
}

int main(int argc, char** argv) {
    if (argc > 1) {
        fprintf(stderr, "rcp_probe: takes no arguments (usage: rcp_probe > tables.txt)\n");
        return 2;
    }
    const int64_t n = 1 << 23;
    uint32_t* d_out;
    cudaCheck(cudaMalloc(&d_out, 4 * n));
    rcp_probe_kernel<<<(unsigned)(n / 256), 256>>>(d_out, n);
    cudaCheck(cudaGetLastError());
    std::vector<uint32_t> hw(n);
    cudaCheck(cudaMemcpy(hw.data(), d_out, 4 * n, cudaMemcpyDeviceToHost));
    cudaCheck(cudaFree(d_out));

    // delta[k]: hardware result minus the correctly rounded 1/x, in ulps
    std::vector<int> delta(n);
    long counts[3] = {0, 0, 0}, emulated_ok = 0;
    for (int64_t k = 0; k < n; k++) {
        float x, rn = 0.0f;
        const uint32_t xb = 0x3f800000u + (uint32_t)k;
        memcpy(&x, &xb, 4);
        rn = 1.0f / x;
        uint32_t rb;
        memcpy(&rb, &rn, 4);
        delta[k] = (int)((int64_t)hw[k] - (int64_t)rb);
        if (delta[k] < -1 || delta[k] > 1) {
            fprintf(stderr, "rcp_probe: mantissa %lld is %d ulps from 1/x; the tables cannot describe this GPU\n",
                    (long long)k, delta[k]);
            return 1;
        }
        counts[delta[k] + 1]++;
        const float emu = gpu_rcp_approx(x);
        uint32_t eb;
        memcpy(&eb, &emu, 4);
        emulated_ok += eb == hw[k];
    }
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    fprintf(stderr, "%s: rcp.approx.ftz.f32 on all 2^23 mantissas: %.2f%% correctly rounded, %.2f%% one ulp up, %.2f%% one ulp down\n",
            prop.name, 100.0 * counts[1] / n, 100.0 * counts[2] / n, 100.0 * counts[0] / n);
    fprintf(stderr, "quant_cpu.cpp's gpu_rcp_approx agrees on %.3f%% of them\n", 100.0 * emulated_ok / n);

    printf("static const uint32_t RCP_FIX10[64] = {\n");
    for (int w = 0; w < 64; w++) {
        uint32_t word = 0;
        for (int j = 0; j < 16; j++) {
            const int v = delta[(size_t)(w * 16 + j) << 13];
            word |= (uint32_t)(v == 0 ? 0 : v == 1 ? 1 : 3) << (2 * j);
        }
        printf("0x%08xu,%s", word, w % 6 == 5 ? "\n" : " ");
    }
    printf("};\n");
    // least squares e(t) = c0 + c1 t + c2 t^2 + c3 t^3 per segment of 65536 mantissas, where e is the
    // hardware result minus the exact 1/x in ulps (2^-24); normal equations in long double
    printf("static const float RCP_ERR_CUBIC[128][4] = {\n");
    for (int s = 0; s < 128; s++) {
        long double A[4][4] = {{0}}, B[4] = {0};
        for (int64_t t = 0; t < 65536; t++) {
            const int64_t k = (int64_t)s * 65536 + t;
            if (k == 0) continue;
            const double x = 1.0 + (double)k * 0x1p-23;
            const float rn = (float)(1.0f / (float)x);
            const long double e = ((long double)rn + delta[k] * 0x1p-24L - 1.0L / (long double)x) / 0x1p-24L;
            const long double tt = t / 65536.0L, p[4] = {1, tt, tt * tt, tt * tt * tt};
            for (int i = 0; i < 4; i++) {
                B[i] += p[i] * e;
                for (int j = 0; j < 4; j++) A[i][j] += p[i] * p[j];
            }
        }
        for (int i = 0; i < 4; i++)
            for (int r = 0; r < 4; r++)
                if (r != i) {
                    const long double f = A[r][i] / A[i][i];
                    for (int j = 0; j < 4; j++) A[r][j] -= f * A[i][j];
                    B[r] -= f * B[i];
                }
        printf("    {%a, %a, %a, %a},\n", (float)(B[0] / A[0][0]), (float)(B[1] / A[1][1]), (float)(B[2] / A[2][2]),
               (float)(B[3] / A[3][3]));
    }
    printf("};\n");
    return 0;
}
