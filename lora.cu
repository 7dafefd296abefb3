// lora.cu — LoRA on a frozen linear, forward and backward, with dropout on the LoRA input:
//   y = x W^T + s * (drop(x) A^T) B^T,   x (N, IC), A (r, IC), B (OC, r), s = alpha / r.
// The frozen product x W^T is the caller's (a cuBLASLt matmul on bf16 or dequantized NF4 weights);
// this file adds the low-rank path. The dropout mask is a pure function of (seed, layer/target,
// element index) (model.h dropout_keep), so the backward regenerates it instead of storing it.
// CPU twin: cpu::linear_lora_forward / cpu::linear_lora_backward in llama2_cpu.cpp; tested inside
// the whole step (test/gpu_model.cu) and with dropout in test/gpu_kernels.cu.
#include "llama2_gpu.h"

__global__ void dropout_forward_kernel(bf16* xd, const bf16* x, int64_t n, float p, uint64_t seed, uint64_t mask_id) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float keep = dropout_keep(seed, mask_id, (uint64_t)i, p) ? 1.0f / (1.0f - p) : 0.0f;
    xd[i] = __float2bfloat16(__bfloat162float(x[i]) * keep);
}

void dropout_forward(bf16* xd, const bf16* x, const LoraGpuArgs& la, int64_t N, int64_t IC, cudaStream_t stream) {
    dropout_forward_kernel<<<ceil_div(N * IC, 256), 256, 0, stream>>>(xd, x, N * IC, la.p, la.seed, la.mask_id);
    cudaCheckLaunch();
}

// dx (n) += tmp (n) * dropout multiplier: the LoRA path's input gradient passes the same mask
__global__ void dropout_backward_add_kernel(float* dx, const float* tmp, int64_t n, float p, uint64_t seed,
                                            uint64_t mask_id) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float keep = dropout_keep(seed, mask_id, (uint64_t)i, p) ? 1.0f / (1.0f - p) : 0.0f;
    dx[i] += tmp[i] * keep;
}

void lora_u_forward(Blas& bl, bf16* u, bf16* xd, const bf16* x, const LoraGpuArgs& la, int64_t N, int64_t IC,
                    cudaStream_t stream) {
    if (!la.A) return;
    const bf16* xin = x;
    if (la.p > 0.0f) {
        dropout_forward(xd, x, la, N, IC, stream);
        xin = xd;
    }
    matmul(bl, u, false, xin, false, la.A, true, N, la.r, IC, 1.0f, 0.0f, stream);  // u (N, r) = drop(x) A^T
}

void lora_forward(Blas& bl, bf16* y, bf16* u, bf16* xd, const bf16* x, const LoraGpuArgs& la, int64_t N, int64_t IC,
                  int64_t OC, cudaStream_t stream) {
    if (!la.A) return;
    lora_u_forward(bl, u, xd, x, la, N, IC, stream);
    matmul(bl, y, false, u, false, la.B, true, N, OC, la.r, la.scale, 1.0f, stream);  // y += s u B^T
}

void lora_backward(Blas& bl, float* dx, float* dA, float* dB, bf16* du, bf16* xd, float* tmp, const bf16* dy,
                   const bf16* x, const bf16* u, const LoraGpuArgs& la, int64_t N, int64_t IC, int64_t OC,
                   cudaStream_t stream) {
    if (!la.A) return;
    matmul(bl, dB, true, dy, true, u, false, OC, la.r, N, la.scale, 1.0f, stream);    // dB (OC, r) += s dy^T u
    matmul(bl, du, false, dy, false, la.B, false, N, la.r, OC, la.scale, 0.0f, stream);  // du (N, r) = s dy B
    const bf16* xin = x;
    if (la.p > 0.0f) {
        dropout_forward(xd, x, la, N, IC, stream);  // the same mask as the forward
        xin = xd;
    }
    matmul(bl, dA, true, du, true, xin, false, la.r, IC, N, 1.0f, 1.0f, stream);  // dA (r, IC) += du^T drop(x)
    if (la.p > 0.0f) {
        matmul(bl, tmp, true, du, false, la.A, false, N, IC, la.r, 1.0f, 0.0f, stream);  // tmp (N, IC) = du A
        dropout_backward_add_kernel<<<ceil_div(N * IC, 256), 256, 0, stream>>>(dx, tmp, N * IC, la.p, la.seed, la.mask_id);
        cudaCheckLaunch();
    } else {
        matmul(bl, dx, true, du, false, la.A, false, N, IC, la.r, 1.0f, 1.0f, stream);  // dx += du A
    }
}
