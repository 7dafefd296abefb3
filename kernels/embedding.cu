// kernels/embedding.cu — the token embedding lookup, out = embed[tokens], one 16-byte chunk per
// thread. No backward: the embedding is frozen and nothing before it needs a gradient.
// CPU twin: cpu::embedding_forward (llama2_cpu.cpp). Test: test/gpu_kernels.cu ("kernel embedding").
#include "ops.h"

// embedding

__global__ void embedding_forward_kernel(bf16* out, const int32_t* tokens, const bf16* embed, int64_t N, int C) {
    const int64_t chunks_per_row = C / 8;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;  // one 16-byte chunk per thread
    if (i >= N * chunks_per_row) return;
    const int64_t n = i / chunks_per_row, c = i % chunks_per_row;
    ((uint4*)(out + n * C))[c] = ((const uint4*)(embed + (int64_t)tokens[n] * C))[c];
}

void embedding_forward(bf16* out, const int32_t* tokens, const bf16* embed, int64_t N, int C, cudaStream_t stream) {
    ASSERT(C % 8 == 0, "C is a multiple of 8 (16-byte rows)");
    embedding_forward_kernel<<<ceil_div(N * C / 8, 256), 256, 0, stream>>>(out, tokens, embed, N, C);
    cudaCheckLaunch();
}

