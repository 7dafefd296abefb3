// kernels/rope.cu — rotary position embeddings, HF's rotate_half form, in place on q or k; the
// backward applies the transposed rotation to the gradient.
// CPU twin: cpu::rope_forward / cpu::rope_backward (llama2_cpu.cpp). Test: test/gpu_kernels.cu.
#include "ops.h"

// RoPE: the angle is computed in fp32 exactly as the CPU twin and transformers do
// (inv_freq = 1 / theta^(2i/D), angle = pos * inv_freq), with full-precision sincosf.

// One thread per (token, i < D/2): the angle and its sine and cosine once, then the rotation of
// pair (i, i + D/2) in every head (the transcendentals were most of the cost when each head
// recomputed them). Consecutive threads take consecutive i, so the loads of a head coalesce.
template <bool BACKWARD>
__global__ void rope_kernel(bf16* x, const int32_t* pos, int64_t N, int n_heads, int D, float theta) {
    const int half = D / 2;
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;  // (n, i < D/2)
    if (idx >= N * half) return;
    const int i = (int)(idx % half);
    const int64_t n = idx / half;
    const float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)D);
    float s, c;
    sincosf((float)pos[n] * inv_freq, &s, &c);
    for (int h = 0; h < n_heads; h++) {
        bf16* v = x + (n * n_heads + h) * D;
        const float a = __bfloat162float(v[i]), b = __bfloat162float(v[i + half]);
        if (!BACKWARD) {
            v[i] = __float2bfloat16(a * c - b * s);
            v[i + half] = __float2bfloat16(b * c + a * s);
        } else {  // the transpose of the rotation
            v[i] = __float2bfloat16(a * c + b * s);
            v[i + half] = __float2bfloat16(b * c - a * s);
        }
    }
}

void rope_forward(bf16* x, const int32_t* pos, int64_t N, int n_heads, int D, float theta, cudaStream_t stream) {
    rope_kernel<false><<<ceil_div(N * (D / 2), 256), 256, 0, stream>>>(x, pos, N, n_heads, D, theta);
    cudaCheckLaunch();
}
void rope_backward(bf16* dx, const int32_t* pos, int64_t N, int n_heads, int D, float theta, cudaStream_t stream) {
    rope_kernel<true><<<ceil_div(N * (D / 2), 256), 256, 0, stream>>>(dx, pos, N, n_heads, D, theta);
    cudaCheckLaunch();
}

