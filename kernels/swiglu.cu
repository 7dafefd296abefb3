// kernels/swiglu.cu — the SwiGLU gate of the MLP, h = silu(g) * u, and its backward.
// CPU twin: cpu::swiglu_forward / cpu::swiglu_backward (llama2_cpu.cpp). Test: test/gpu_kernels.cu.
#include "ops.h"

// SwiGLU

__global__ void swiglu_forward_kernel(bf16* h, const bf16* g, const bf16* u, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float gv = __bfloat162float(g[i]);
    h[i] = __float2bfloat16(gv / (1.0f + expf(-gv)) * __bfloat162float(u[i]));
}

__global__ void swiglu_backward_kernel(bf16* dg, bf16* du, const float* dh, const bf16* g, const bf16* u, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float gv = __bfloat162float(g[i]), uv = __bfloat162float(u[i]), sig = 1.0f / (1.0f + expf(-gv));
    du[i] = __float2bfloat16(dh[i] * gv * sig);
    dg[i] = __float2bfloat16(dh[i] * uv * sig * (1.0f + gv * (1.0f - sig)));
}

void swiglu_forward(bf16* h, const bf16* g, const bf16* u, int64_t n, cudaStream_t stream) {
    swiglu_forward_kernel<<<ceil_div(n, 256), 256, 0, stream>>>(h, g, u, n);
    cudaCheckLaunch();
}
void swiglu_backward(bf16* dg, bf16* du, const float* dh, const bf16* g, const bf16* u, int64_t n, cudaStream_t stream) {
    swiglu_backward_kernel<<<ceil_div(n, 256), 256, 0, stream>>>(dg, du, dh, g, u, n);
    cudaCheckLaunch();
}

