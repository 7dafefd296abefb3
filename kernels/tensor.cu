// kernels/tensor.cu — the element-wise plumbing between ops: dtype conversions (fp32 <-> bf16,
// fp16 -> bf16), random fills for benchmark models, and a deterministic sum. None of these is part
// of the model's math; they move numbers between the formats the ops want.
// CPU twins: convert_to_f32 / convert_from_f32 (common.cpp), cpu_random_weights (llama2_cpu.cpp)
// for the fill's role (not its numbers), and a plain loop for the sum. Test: test/gpu_kernels.cu.
#include "ops.h"

__global__ void f32_to_bf16_kernel(bf16* out, const float* in, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16(in[i]);
}
__global__ void bf16_to_f32_kernel(float* out, const bf16* in, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __bfloat162float(in[i]);
}
__global__ void f16_to_bf16_kernel(bf16* out, const __half* in, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16(__half2float(in[i]));
}
void convert_f32_to_bf16(bf16* out, const float* in, int64_t n, cudaStream_t stream) {
    if (n == 0) return;
    f32_to_bf16_kernel<<<ceil_div(n, 256), 256, 0, stream>>>(out, in, n);
    cudaCheckLaunch();
}
void convert_bf16_to_f32(float* out, const bf16* in, int64_t n, cudaStream_t stream) {
    if (n == 0) return;
    bf16_to_f32_kernel<<<ceil_div(n, 256), 256, 0, stream>>>(out, in, n);
    cudaCheckLaunch();
}
void convert_f16_to_bf16(bf16* out, const __half* in, int64_t n, cudaStream_t stream) {
    if (n == 0) return;
    f16_to_bf16_kernel<<<ceil_div(n, 256), 256, 0, stream>>>(out, in, n);
    cudaCheckLaunch();
}
void convert_to_bf16(bf16* out, const void* in, int32_t dtype, int64_t n, cudaStream_t stream) {
    if (dtype == DT_BF16) cudaCheck(cudaMemcpyAsync(out, in, n * 2, cudaMemcpyDeviceToDevice, stream));
    else if (dtype == DT_F16) convert_f16_to_bf16(out, (const __half*)in, n, stream);
    else convert_f32_to_bf16(out, (const float*)in, n, stream);
}

// random N(mean, std) bf16 values from (seed, index), for benchmark models
__global__ void fill_normal_kernel(bf16* out, int64_t n, float mean, float std, uint64_t seed) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const uint64_t h1 = splitmix64(seed ^ splitmix64((uint64_t)i)), h2 = splitmix64(h1);
    const float u1 = ((float)(h1 >> 40) + 1.0f) * (1.0f / 16777217.0f), u2 = (float)(h2 >> 40) * (1.0f / 16777216.0f);
    out[i] = __float2bfloat16(mean + std * sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2));
}
void fill_normal(bf16* out, int64_t n, float mean, float std, uint64_t seed, cudaStream_t stream) {
    if (n == 0) return;
    fill_normal_kernel<<<ceil_div(n, 256), 256, 0, stream>>>(out, n, mean, std, seed);
    cudaCheckLaunch();
}

// pass 1: each of a fixed number of blocks sums a fixed strided slice; pass 2: one block sums the
// partials. Same grid every time, so the same order of additions: deterministic.
constexpr int REDUCE_BLOCKS = 1024;
__global__ void sum_partials_kernel(float* partials, const float* in, int64_t n, bool square) {
    __shared__ float shared[32];
    float acc = 0.0f;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        acc += square ? in[i] * in[i] : in[i];
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}
__global__ void sum_final_kernel(float* out, const float* partials, int n) {
    __shared__ float shared[32];
    float acc = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += partials[i];
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) out[0] = acc;
}
void sum_reduce(float* out, const float* in, int64_t n, bool square, float* scratch, cudaStream_t stream) {
    sum_partials_kernel<<<REDUCE_BLOCKS, 256, 0, stream>>>(scratch, in, n, square);
    cudaCheckLaunch();
    sum_final_kernel<<<1, 1024, 0, stream>>>(out, scratch, REDUCE_BLOCKS);
    cudaCheckLaunch();
}

__global__ void add_scalar_kernel(float* acc, const float* v) { acc[0] += v[0]; }
void add_scalar(float* acc, const float* v, cudaStream_t stream) {
    add_scalar_kernel<<<1, 1, 0, stream>>>(acc, v);
    cudaCheckLaunch();
}
