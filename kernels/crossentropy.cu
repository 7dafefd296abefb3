// kernels/crossentropy.cu — the loss: per-position cross-entropy over fp32 logits, with the
// gradient of the scaled loss with respect to the logits written in the same pass (bf16).
// CPU twin: cpu::crossentropy_forward / cpu::crossentropy_backward (llama2_cpu.cpp). Test: test/gpu_kernels.cu.
#include "ops.h"

// cross-entropy: one block per row of logits (fp32), loss per row, optionally dlogits in bf16

__global__ void crossentropy_kernel(float* losses, bf16* dlogits, const float* logits, const int32_t* targets, float scale,
                                    int V) {
    __shared__ float shared[32];
    const int64_t n = blockIdx.x;
    const int target = targets[n];
    const float* row = logits + n * V;
    if (target < 0) {  // no loss here; the gradient row is zero
        if (threadIdx.x == 0) losses[n] = 0.0f;
        if (dlogits)
            for (int i = threadIdx.x; i < V; i += blockDim.x) dlogits[n * V + i] = __float2bfloat16(0.0f);
        return;
    }
    float mx = -FLT_MAX;
    for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, row[i]);
    mx = block_max(mx, shared);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) sum += expf(row[i] - mx);
    sum = block_sum(sum, shared);
    if (threadIdx.x == 0) losses[n] = logf(sum) + mx - row[target];
    if (dlogits) {
        const float inv = 1.0f / sum;
        for (int i = threadIdx.x; i < V; i += blockDim.x)
            dlogits[n * V + i] = __float2bfloat16(scale * (expf(row[i] - mx) * inv - (i == target ? 1.0f : 0.0f)));
    }
}

void crossentropy_forward_backward(float* losses, bf16* dlogits, const float* logits, const int32_t* targets, float scale,
                                   int64_t N, int V, cudaStream_t stream) {
    if (N == 0) return;
    crossentropy_kernel<<<(unsigned)N, 512, 0, stream>>>(losses, dlogits, logits, targets, scale, V);
    cudaCheckLaunch();
}

