// kernels/swiglu.cu — the SwiGLU gate of the MLP, h = silu(g) * u, and its backward.
// CPU twin: cpu::swiglu_forward / cpu::swiglu_backward (llama2_cpu.cpp). Test: test/gpu_kernels.cu.
#include <initializer_list>

#include "ops.h"

// SwiGLU

// 8 values a thread, with 16-byte loads and stores when every pointer is 16-byte aligned (vec)

static bool aligned16(std::initializer_list<const void*> ps) {
    for (const void* p : ps)
        if ((uintptr_t)p % 16) return false;
    return true;
}

__global__ void swiglu_forward_kernel(bf16* h, const bf16* g, const bf16* u, int64_t n, bool vec) {
    const int64_t i8 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i8 >= n) return;
    if (vec && i8 + 8 <= n) {
        const Bf16x8 gv = load_bf16x8(g + i8), uv = load_bf16x8(u + i8);
        Bf16x8 out;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const float gk = __bfloat162float(gv.v[k]);
            out.v[k] = __float2bfloat16(gk / (1.0f + expf(-gk)) * __bfloat162float(uv.v[k]));
        }
        store_bf16x8(h + i8, out);
        return;
    }
    for (int64_t i = i8; i < n && i < i8 + 8; i++) {
        const float gv = __bfloat162float(g[i]);
        h[i] = __float2bfloat16(gv / (1.0f + expf(-gv)) * __bfloat162float(u[i]));
    }
}

__global__ void swiglu_backward_kernel(bf16* dg, bf16* du, const float* dh, const bf16* g, const bf16* u, int64_t n, bool vec) {
    const int64_t i8 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i8 >= n) return;
    const int64_t end = i8 + 8 <= n ? i8 + 8 : n;
    if (vec && end - i8 == 8) {
        const Bf16x8 gv = load_bf16x8(g + i8), uv = load_bf16x8(u + i8);
        const float4 h0 = reinterpret_cast<const float4*>(dh + i8)[0], h1 = reinterpret_cast<const float4*>(dh + i8)[1];
        const float hv[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
        Bf16x8 og, ou;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const float gk = __bfloat162float(gv.v[k]), uk = __bfloat162float(uv.v[k]), sig = 1.0f / (1.0f + expf(-gk));
            ou.v[k] = __float2bfloat16(hv[k] * gk * sig);
            og.v[k] = __float2bfloat16(hv[k] * uk * sig * (1.0f + gk * (1.0f - sig)));
        }
        store_bf16x8(du + i8, ou);
        store_bf16x8(dg + i8, og);
        return;
    }
    for (int64_t i = i8; i < end; i++) {
        const float gv = __bfloat162float(g[i]), uv = __bfloat162float(u[i]), sig = 1.0f / (1.0f + expf(-gv));
        du[i] = __float2bfloat16(dh[i] * gv * sig);
        dg[i] = __float2bfloat16(dh[i] * uv * sig * (1.0f + gv * (1.0f - sig)));
    }
}

void swiglu_forward(bf16* h, const bf16* g, const bf16* u, int64_t n, cudaStream_t stream) {
    swiglu_forward_kernel<<<ceil_div(ceil_div(n, 8), 256), 256, 0, stream>>>(h, g, u, n, aligned16({h, g, u}));
    cudaCheckLaunch();
}
void swiglu_backward(bf16* dg, bf16* du, const float* dh, const bf16* g, const bf16* u, int64_t n, cudaStream_t stream) {
    swiglu_backward_kernel<<<ceil_div(ceil_div(n, 8), 256), 256, 0, stream>>>(dg, du, dh, g, u, n, aligned16({dg, du, dh, g, u}));
    cudaCheckLaunch();
}

