// kernels/rmsnorm.cu — RMSNorm forward and backward: y = x / sqrt(mean(x^2) + eps) * w, with the
// 1/rms of each row saved for the backward (HF's LlamaRMSNorm). The backward adds into the fp32
// residual gradient and keeps a bf16 copy of it for the next matmul.
// CPU twin: cpu::rmsnorm_forward / cpu::rmsnorm_backward (llama2_cpu.cpp). Test: test/gpu_kernels.cu.
#include "ops.h"

// RMSNorm. Forward: one block of 256 threads per row with 16-byte loads, so that a single row (a
// decode step) is not left to one warp walking 4096 values (that took 57 us on an H200; this
// takes a few). Backward: one warp per row (training has thousands of rows).

constexpr int NORM_THREADS = 256;

__global__ void __launch_bounds__(NORM_THREADS) rmsnorm_forward_kernel(bf16* out, float* rstd, const bf16* x, const bf16* w,
                                                                       int64_t N, int C, float eps) {
    __shared__ float shared[32];
    pdl_launch_dependents();  // a decode step's fused mat-vec after it prefetches its weights meanwhile
    const int64_t row = blockIdx.x;
    const bf16* xr = x + row * C;
    bf16* yr = out + row * C;
    float ss = 0.0f;
    const bool vec = C % 8 == 0;
    if (vec) {
        for (int c8 = threadIdx.x; c8 < C / 8; c8 += blockDim.x) {
            const uint4 v = *reinterpret_cast<const uint4*>(xr + c8 * 8);
            const bf16* e = reinterpret_cast<const bf16*>(&v);
#pragma unroll
            for (int k = 0; k < 8; k++) ss += __bfloat162float(e[k]) * __bfloat162float(e[k]);
        }
    } else {
        for (int i = threadIdx.x; i < C; i += blockDim.x) ss += __bfloat162float(xr[i]) * __bfloat162float(xr[i]);
    }
    ss = block_sum(ss, shared);
    const float s = rsqrtf(ss / (float)C + eps);
    if (threadIdx.x == 0) rstd[row] = s;
    if (vec) {
        for (int c8 = threadIdx.x; c8 < C / 8; c8 += blockDim.x) {
            const uint4 v = *reinterpret_cast<const uint4*>(xr + c8 * 8), g = *reinterpret_cast<const uint4*>(w + c8 * 8);
            const bf16 *e = reinterpret_cast<const bf16*>(&v), *ge = reinterpret_cast<const bf16*>(&g);
            alignas(16) bf16 o[8];
#pragma unroll
            for (int k = 0; k < 8; k++) o[k] = __float2bfloat16(__bfloat162float(ge[k]) * (__bfloat162float(e[k]) * s));
            *reinterpret_cast<uint4*>(yr + c8 * 8) = *reinterpret_cast<const uint4*>(o);
        }
    } else {
        for (int i = threadIdx.x; i < C; i += blockDim.x)
            yr[i] = __float2bfloat16(__bfloat162float(w[i]) * (__bfloat162float(xr[i]) * s));
    }
}

void rmsnorm_forward(bf16* out, float* rstd, const bf16* x, const bf16* w, int64_t N, int C, float eps, cudaStream_t stream) {
    rmsnorm_forward_kernel<<<(unsigned)N, NORM_THREADS, 0, stream>>>(out, rstd, x, w, N, C, eps);
    cudaCheckLaunch();
}

// dx = rstd * (dy*w - xhat * mean(dy*w*xhat)), xhat = x*rstd
__global__ void rmsnorm_backward_kernel(float* dres, bf16* dres_bf16, const float* dy, const bf16* x, const float* rstd,
                                        const bf16* w, int64_t N, int C, bool vec) {
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= N) return;
    const float s = rstd[row];
    const float* dyr = dy + row * C;
    const bf16* xr = x + row * C;
    float* dr = dres + row * C;
    bf16* dbr = dres_bf16 + row * C;
    float dot = 0.0f;
    if (vec) {  // 8 values a lane per step: two float4 of dy, one 16-byte load of x and of w
        for (int c8 = lane; c8 < C / 8; c8 += 32) {
            const float4 d0 = reinterpret_cast<const float4*>(dyr)[2 * c8], d1 = reinterpret_cast<const float4*>(dyr)[2 * c8 + 1];
            const Bf16x8 xv = load_bf16x8(xr + c8 * 8), wv = load_bf16x8(w + c8 * 8);
            const float dv[8] = {d0.x, d0.y, d0.z, d0.w, d1.x, d1.y, d1.z, d1.w};
#pragma unroll
            for (int k = 0; k < 8; k++) dot += dv[k] * __bfloat162float(wv.v[k]) * __bfloat162float(xv.v[k]) * s;
        }
    } else {
        for (int i = lane; i < C; i += 32) dot += dyr[i] * __bfloat162float(w[i]) * __bfloat162float(xr[i]) * s;
    }
    const float mean = warp_sum(dot) / (float)C;
    if (vec) {
        for (int c8 = lane; c8 < C / 8; c8 += 32) {
            const float4 d0 = reinterpret_cast<const float4*>(dyr)[2 * c8], d1 = reinterpret_cast<const float4*>(dyr)[2 * c8 + 1];
            float4 r0 = reinterpret_cast<float4*>(dr)[2 * c8], r1 = reinterpret_cast<float4*>(dr)[2 * c8 + 1];
            const Bf16x8 xv = load_bf16x8(xr + c8 * 8), wv = load_bf16x8(w + c8 * 8);
            const float dv[8] = {d0.x, d0.y, d0.z, d0.w, d1.x, d1.y, d1.z, d1.w};
            float rv[8] = {r0.x, r0.y, r0.z, r0.w, r1.x, r1.y, r1.z, r1.w};
            Bf16x8 out;
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const float xhat = __bfloat162float(xv.v[k]) * s;
                rv[k] = rv[k] + s * (dv[k] * __bfloat162float(wv.v[k]) - xhat * mean);
                out.v[k] = __float2bfloat16(rv[k]);
            }
            reinterpret_cast<float4*>(dr)[2 * c8] = make_float4(rv[0], rv[1], rv[2], rv[3]);
            reinterpret_cast<float4*>(dr)[2 * c8 + 1] = make_float4(rv[4], rv[5], rv[6], rv[7]);
            store_bf16x8(dbr + c8 * 8, out);
        }
    } else {
        for (int i = lane; i < C; i += 32) {
            const float xhat = __bfloat162float(xr[i]) * s;
            const float d = dr[i] + s * (dyr[i] * __bfloat162float(w[i]) - xhat * mean);
            dr[i] = d;
            dbr[i] = __float2bfloat16(d);
        }
    }
}

void rmsnorm_backward(float* dres, bf16* dres_bf16, const float* dy, const bf16* x, const float* rstd, const bf16* w,
                      int64_t N, int C, cudaStream_t stream) {
    // 16-byte loads need C % 8 == 0 and every row start 16-byte aligned
    bool vec = C % 8 == 0;
    for (const void* p : {(const void*)dres, (const void*)dres_bf16, (const void*)dy, (const void*)x, (const void*)w})
        vec = vec && (uintptr_t)p % 16 == 0;
    rmsnorm_backward_kernel<<<ceil_div(N, 8), 256, 0, stream>>>(dres, dres_bf16, dy, x, rstd, w, N, C, vec);
    cudaCheckLaunch();
}

