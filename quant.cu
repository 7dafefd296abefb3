// quant.cu — NF4 with double quantization on the GPU, bit-identical to bitsandbytes (it runs the
// same instructions) and to the CPU twin quant_cpu.cpp (with the one caveat in quant.h; read that
// file and quant_cpu.cpp first: they say what is computed and why). Quantize at load time (all
// linear weights of a 7B model: 16 ms on an H100) and dequantize to bf16 for the matmuls (2.2-2.4
// TB/s). Checked by ./test_gpu (test/gpu_quant.cu), timed by ./bench_quant.
//
// This file is built with the project's normal nvcc flags (no --use_fast_math). The few places
// where bitsandbytes' fast-math build behaves differently from IEEE are written as the exact PTX
// instructions it executes (rcp.approx.ftz, mul.ftz, abs.ftz, max.ftz), so the result does not
// depend on compiler flags; the .rn on mul also forbids ptxas to fuse it into an fma.
#include <algorithm>

#include "kernels/common.cuh"
#include "quant.h"

// ----------------------------------------------------------------------------------------------
// the instructions bnb's --use_fast_math build runs

__device__ __forceinline__ float rcp_approx_ftz(float x) {  // MUFU.RCP: 1.0f / x under fast math
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}
__device__ __forceinline__ float abs_ftz(float a) {
    float r;
    asm("abs.ftz.f32 %0, %1;" : "=f"(r) : "f"(a));
    return r;
}
__device__ __forceinline__ float max_ftz(float a, float b) {
    float r;
    asm("max.ftz.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ bool not_finite(float x) {
    return (__float_as_uint(x) & 0x7f800000u) == 0x7f800000u;
}

// The code tables travel as kernel arguments (one source of truth: quant_cpu.cpp) and are copied
// to shared memory, where threads index them with different codes.
struct Nf4Tables {
    float code[16];
    float boundary[15];
};
struct Code8Table {
    float v[256];
};
static Nf4Tables nf4_tables() {
    Nf4Tables t;
    std::copy(NF4_CODE, NF4_CODE + 16, t.code);
    std::copy(NF4_BOUNDARY, NF4_BOUNDARY + 15, t.boundary);
    return t;
}
static Code8Table code8_table() {
    Code8Table t;
    std::copy(dynamic_code8(), dynamic_code8() + 256, t.v);
    return t;
}

// ----------------------------------------------------------------------------------------------
// element access for the three weight dtypes

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }

// 8 consecutive values from i (missing ones read as 0, as bnb's block load fills them).
// `vec`: the whole group is in range and 16-byte aligned, so it is read with wide loads.
template <typename T>
__device__ __forceinline__ void load8(float x[8], const T* w, int64_t i, int64_t n, bool vec) {
    if (vec) {
        const uint4* p = reinterpret_cast<const uint4*>(w + i);
        alignas(16) T v[8];
#pragma unroll
        for (int k = 0; k < (int)(8 * sizeof(T) / 16); k++) reinterpret_cast<uint4*>(v)[k] = p[k];
#pragma unroll
        for (int k = 0; k < 8; k++) x[k] = to_f32(v[k]);
    } else {
#pragma unroll
        for (int k = 0; k < 8; k++) x[k] = i + k < n ? to_f32(w[i + k]) : 0.0f;
    }
}

// ----------------------------------------------------------------------------------------------
// level 1: NF4 codes and fp32 absmax. One thread: 8 weights = 4 packed bytes; 8 threads: one
// block of 64 weights. Threads past the end still take part in the shuffles.

template <typename T>
__global__ void nf4_quantize_kernel(uint8_t* __restrict__ packed, float* __restrict__ absmax,
                                    const T* __restrict__ w, int64_t n, int* nonfinite,
                                    Nf4Tables tables, bool aligned) {
    __shared__ float s_boundary[15];
    if (threadIdx.x < 15) s_boundary[threadIdx.x] = tables.boundary[threadIdx.x];
    __syncthreads();

    const int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    float x[8];
    const bool full = i + 8 <= n;
    load8(x, w, i, n, full && aligned);
    float amax = 0.0f;
    bool bad = false;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        bad |= not_finite(x[k]);
        amax = max_ftz(amax, abs_ftz(x[k]));
    }
    if (bad) *nonfinite = 1;  // every writer stores the same value
    // max over the 8 threads of this block of 64 (max is exact: any order gives the same)
#pragma unroll
    for (int off = 4; off > 0; off >>= 1) amax = max_ftz(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    if (i >= n) return;
    if ((threadIdx.x & 7) == 0) absmax[i / NF4_BLOCK] = amax;

    const float scale = rcp_approx_ftz(amax);  // 0 -> +inf; 0 * inf = NaN -> code 0, as in bnb
    uint32_t bytes = 0;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const uint32_t hi = nf4_code_search(s_boundary, mul_rn_ftz(x[2 * k], scale));
        const uint32_t lo = nf4_code_search(s_boundary, mul_rn_ftz(x[2 * k + 1], scale));
        bytes |= (hi << 4 | lo) << (8 * k);  // little-endian: byte k at the lower address
    }
    if (full && aligned) {
        *reinterpret_cast<uint32_t*>(packed + i / 2) = bytes;
    } else {
        const int64_t nbytes = nf4_packed_bytes(n);
        for (int k = 0; k < 4 && i / 2 + k < nbytes; k++) packed[i / 2 + k] = (uint8_t)(bytes >> (8 * k));
    }
}

// ----------------------------------------------------------------------------------------------
// the offset: PyTorch's CUDA mean, same summation tree as torch_cuda_mean() in quant_cpu.cpp.
// Pass 1 (plan.ctas blocks of plan.width threads): per-thread sums, then the block tree.
// Pass 2 (one block): adds the block sums as PyTorch's last block does, times 1/n.

__device__ float block_tree_sum(float* s, float v) {  // s: blockDim.x floats of shared memory
    const int t = threadIdx.x, width = blockDim.x;
    s[t] = v;
    __syncthreads();
    for (int off = width / 2; off >= 32; off /= 2) {  // halving through shared memory
        if (t < off) s[t] = s[t] + s[t + off];
        __syncthreads();
    }
    const int lanes = min(width, 32);
    for (int off = lanes / 2; off > 0; off /= 2) {  // what the warp shuffles compute, lane t += lane t + off
        if (t < off) s[t] = s[t] + s[t + off];
        __syncthreads();
    }
    return s[0];
}

__global__ void torch_mean_pass1(float* __restrict__ partial, const float* __restrict__ x, int64_t n,
                                 bool vec4, int ctas) {
    extern __shared__ float s[];
    const int t = threadIdx.x, width = blockDim.x, c = blockIdx.x;
    const int64_t stride = (int64_t)width * ctas;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    int64_t idx = t + (int64_t)c * width;
    if (vec4) {
        for (; idx * 4 + 3 < n; idx += stride) {
            const float4 v = reinterpret_cast<const float4*>(x)[idx];
            acc[0] = acc[0] + v.x;
            acc[1] = acc[1] + v.y;
            acc[2] = acc[2] + v.z;
            acc[3] = acc[3] + v.w;
        }
        const int64_t tail = n - n % 4 + t;
        if (c == 0 && tail < n) acc[0] = acc[0] + x[tail];
    } else {
        for (; idx + 3 * stride < n; idx += 4 * stride)
            for (int i = 0; i < 4; i++) acc[i] = acc[i] + x[idx + i * stride];
        for (int i = 0; i < 4 && idx < n; i++, idx += stride) acc[i] = acc[i] + x[idx];
    }
    const float sum = block_tree_sum(s, ((acc[0] + acc[1]) + acc[2]) + acc[3]);
    if (t == 0) partial[c] = sum;
}

__global__ void torch_mean_pass2(float* __restrict__ mean, const float* __restrict__ partial, int ctas,
                                 float factor) {
    extern __shared__ float s[];
    if (ctas == 1) {
        if (threadIdx.x == 0) *mean = partial[0] * factor;
        return;
    }
    float acc = 0.0f;
    for (int c = threadIdx.x; c < ctas; c += blockDim.x) acc = acc + partial[c];
    const float sum = block_tree_sum(s, acc);
    if (threadIdx.x == 0) *mean = sum * factor;
}

// ----------------------------------------------------------------------------------------------
// level 2: 8-bit codes of absmax - offset, one block of 256 threads per group of 256 values

__global__ void dq_quantize_kernel(uint8_t* __restrict__ absmax_q, float* __restrict__ scale2,
                                   const float* __restrict__ absmax, const float* __restrict__ offset,
                                   int64_t n_blocks, Code8Table table) {
    __shared__ float s_code[256];
    __shared__ float s_max[256];
    const int t = threadIdx.x;
    s_code[t] = table.v[t];
    const int64_t i = (int64_t)blockIdx.x * NF4_DQ_BLOCK + t;
    // PyTorch's `absmax - offset`: an IEEE subtraction (PyTorch is not built with ftz)
    const float x = i < n_blocks ? __fsub_rn(absmax[i], *offset) : 0.0f;
    s_max[t] = abs_ftz(x);
    __syncthreads();
    for (int off = 128; off > 0; off >>= 1) {
        if (t < off) s_max[t] = max_ftz(s_max[t], s_max[t + off]);
        __syncthreads();
    }
    const float amax = s_max[0];
    if (t == 0) scale2[blockIdx.x] = amax;
    if (i < n_blocks) absmax_q[i] = dynamic_code8_search(s_code, mul_rn_ftz(x, rcp_approx_ftz(amax)));
}

// ----------------------------------------------------------------------------------------------
// dequantize: a group is 4 packed bytes -> 8 values of Tout. Each thread takes DQ_UNROLL groups a
// block width apart (so every warp-wide load and store is contiguous) and issues all its loads
// before it computes, to keep enough memory requests in flight to stream at full bandwidth.

constexpr int DQ_UNROLL = 4;

template <typename Tout, bool DQ>
__global__ void nf4_dequantize_kernel(Tout* __restrict__ out, const uint8_t* __restrict__ packed,
                                      const float* __restrict__ absmax_f32,
                                      const uint8_t* __restrict__ absmax_q,
                                      const float* __restrict__ scale2, const float* __restrict__ offset,
                                      int64_t n, Nf4Tables tables, Code8Table table8, bool aligned) {
    __shared__ float s_nf4[16];
    __shared__ float s_code8[DQ ? 256 : 1];
    if (threadIdx.x < 16) s_nf4[threadIdx.x] = tables.code[threadIdx.x];
    if (DQ)
        for (int k = threadIdx.x; k < 256; k += blockDim.x) s_code8[k] = table8.v[k];
    __syncthreads();

    const int64_t first = (int64_t)blockIdx.x * blockDim.x * DQ_UNROLL + threadIdx.x;
    const int64_t nbytes = nf4_packed_bytes(n);
    uint32_t bytes[DQ_UNROLL];
    float amax[DQ_UNROLL];
#pragma unroll
    for (int u = 0; u < DQ_UNROLL; u++) {
        const int64_t i = (first + (int64_t)u * blockDim.x) * 8;  // first value of the group
        bytes[u] = 0;
        amax[u] = 0.0f;
        if (i >= n) continue;
        const int64_t b = i / NF4_BLOCK;
        if (DQ)  // bnb's 8-bit dequantize (mul.ftz), then PyTorch's separate `absmax += offset`
            amax[u] = nf4_block_absmax(s_code8[absmax_q[b]], scale2[b / NF4_DQ_BLOCK], *offset);
        else
            amax[u] = absmax_f32[b];
        if (i + 8 <= n && aligned) {
            bytes[u] = *reinterpret_cast<const uint32_t*>(packed + i / 2);
        } else {
            for (int k = 0; k < 4 && i / 2 + k < nbytes; k++) bytes[u] |= (uint32_t)packed[i / 2 + k] << (8 * k);
        }
    }
#pragma unroll
    for (int u = 0; u < DQ_UNROLL; u++) {
        const int64_t i = (first + (int64_t)u * blockDim.x) * 8;
        if (i >= n) continue;
        alignas(16) Tout v[8];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const uint32_t byte = (bytes[u] >> (8 * k)) & 0xffu;
            v[2 * k] = from_f32<Tout>(nf4_weight(s_nf4, byte >> 4, amax[u]));
            v[2 * k + 1] = from_f32<Tout>(nf4_weight(s_nf4, byte & 0x0f, amax[u]));
        }
        if (i + 8 <= n && aligned) {
            uint4* p = reinterpret_cast<uint4*>(out + i);
#pragma unroll
            for (int k = 0; k < (int)(8 * sizeof(Tout) / 16); k++) p[k] = reinterpret_cast<const uint4*>(v)[k];
        } else {
            for (int k = 0; k < 8 && i + k < n; k++) out[i + k] = v[k];
        }
    }
}

// The trainer's case: bf16 out of double-quantized data in whole 1,024-value rounds (n % 1024 == 0,
// 16-byte aligned; every Llama linear is). A
// warp takes 1,024 values (512 packed bytes, 16 blocks) a round: lane i loads 16 packed bytes (one
// 16-byte load, coalesced) and decodes the absmax of its half-block once; then for each quarter k
// of the round it fetches from lane 8k + i/4 (warp shuffles) the 4 bytes and the absmax of values
// [256k + 8i, +8), so that each 16-byte store of the warp is 512 contiguous bytes. The generic
// kernel above loads 4 bytes and decodes an absmax every 8 values. Same arithmetic, same bits.
__global__ void nf4_dequantize_bf16_blocks_kernel(__nv_bfloat16* __restrict__ out, const uint8_t* __restrict__ packed,
                                                  const uint8_t* __restrict__ absmax_q, const float* __restrict__ scale2,
                                                  const float* __restrict__ offset, int64_t rounds, Nf4Tables tables,
                                                  Code8Table table8) {
    __shared__ float s_nf4[16];
    __shared__ float s_code8[256];
    if (threadIdx.x < 16) s_nf4[threadIdx.x] = tables.code[threadIdx.x];
    for (int k = threadIdx.x; k < 256; k += blockDim.x) s_code8[k] = table8.v[k];
    __syncthreads();
    const int lane = threadIdx.x % 32;
    const int64_t round = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;  // warp-uniform
    if (round >= rounds) return;
    const float off = *offset;
    const int64_t h = round * 32 + lane, b = h / 2;  // this lane's half-block and block
    const uint4 mine = *reinterpret_cast<const uint4*>(packed + h * 16);
    const float my_amax = nf4_block_absmax(s_code8[absmax_q[b]], scale2[b / NF4_DQ_BLOCK], off);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const int src = 8 * k + lane / 4;
        const uint32_t w0 = __shfl_sync(0xffffffffu, mine.x, src), w1 = __shfl_sync(0xffffffffu, mine.y, src);
        const uint32_t w2 = __shfl_sync(0xffffffffu, mine.z, src), w3 = __shfl_sync(0xffffffffu, mine.w, src);
        const float amax = __shfl_sync(0xffffffffu, my_amax, src);
        const int w = lane % 4;
        const uint32_t word = w == 0 ? w0 : w == 1 ? w1 : w == 2 ? w2 : w3;
        alignas(16) __nv_bfloat16 v[8];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const uint32_t byte = (word >> (8 * j)) & 0xffu;
            v[2 * j] = from_f32<__nv_bfloat16>(nf4_weight(s_nf4, byte >> 4, amax));
            v[2 * j + 1] = from_f32<__nv_bfloat16>(nf4_weight(s_nf4, byte & 0x0f, amax));
        }
        *reinterpret_cast<uint4*>(out + round * 1024 + k * 256 + lane * 8) = *reinterpret_cast<const uint4*>(v);
    }
}

// ----------------------------------------------------------------------------------------------
// launchers

void torch_mean_gpu(float* mean, const float* x, int64_t n, void* workspace, cudaStream_t stream) {
    int dev = 0, sms = 0, threads_per_sm = 0;
    cudaCheck(cudaGetDevice(&dev));
    cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    cudaCheck(cudaDeviceGetAttribute(&threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, dev));
    const TorchMeanPlan plan = torch_mean_plan(n, sms, threads_per_sm);
    ASSERT(plan.ctas <= std::max<int64_t>(1, (n + 15) / 16), "workspace holds every partial sum");
    float* partial = reinterpret_cast<float*>(workspace);
    const size_t smem = sizeof(float) * plan.width;
    torch_mean_pass1<<<plan.ctas, plan.width, smem, stream>>>(partial, x, n, plan.vec4, plan.ctas);
    cudaCheck(cudaGetLastError());
    torch_mean_pass2<<<1, plan.width, smem, stream>>>(mean, partial, plan.ctas, 1.0f / (float)n);
    cudaCheck(cudaGetLastError());
}

static const int THREADS = 256;
// quantize: one thread per 8 values, 8 threads per block of 64 (all threads of a block's warp exist)
static unsigned grid_for(int64_t n) { return (unsigned)((nf4_num_blocks(n) * 8 + THREADS - 1) / THREADS); }
// dequantize: one thread per DQ_UNROLL groups of 8 values
static unsigned dequant_grid_for(int64_t n) {
    const int64_t groups = (n + 7) / 8, per_block = (int64_t)THREADS * DQ_UNROLL;
    return (unsigned)((groups + per_block - 1) / per_block);
}
static bool aligned_to(const void* p, uintptr_t a) { return ((uintptr_t)p % a) == 0; }

Nf4View nf4_view(uint8_t* record, int64_t numel) {
    const Nf4Layout l = nf4_layout(numel);
    Nf4View v;
    v.numel = numel;
    v.offset = reinterpret_cast<float*>(record + l.offset_at);
    v.scale2 = reinterpret_cast<float*>(record + l.scale2_at);
    v.absmax_q = record + l.absmax_q_at;
    v.packed = record + l.packed_at;
    return v;
}

// workspace: [nonfinite flag: 16 bytes][fp32 absmax, padded to 16][fp32 partial sums of the mean]
int64_t nf4_quantize_workspace_bytes(int64_t numel) {
    const int64_t nb = nf4_num_blocks(numel);
    return 16 + ((4 * nb + 15) & ~(int64_t)15) + 4 * std::max<int64_t>(1, (nb + 15) / 16);
}

void nf4_quantize_plain_gpu(uint8_t* packed, float* absmax, const void* w, int32_t dtype, int64_t n,
                            int* nonfinite, cudaStream_t stream) {
    if (n <= 0) return;
    const bool aligned = aligned_to(w, 16) && aligned_to(packed, 4);
    const Nf4Tables tables = nf4_tables();
    if (dtype == DT_BF16)
        nf4_quantize_kernel<<<grid_for(n), THREADS, 0, stream>>>(packed, absmax, (const __nv_bfloat16*)w, n,
                                                                 nonfinite, tables, aligned);
    else if (dtype == DT_F16)
        nf4_quantize_kernel<<<grid_for(n), THREADS, 0, stream>>>(packed, absmax, (const __half*)w, n,
                                                                 nonfinite, tables, aligned);
    else if (dtype == DT_F32)
        nf4_quantize_kernel<<<grid_for(n), THREADS, 0, stream>>>(packed, absmax, (const float*)w, n,
                                                                 nonfinite, tables, aligned);
    else
        fail("nf4_quantize_gpu: cannot quantize dtype %d (need f32, f16 or bf16)", (int)dtype);
    cudaCheck(cudaGetLastError());
}

void nf4_quantize_gpu(Nf4View out, const void* w, int32_t dtype, int* nonfinite, void* workspace,
                      cudaStream_t stream) {
    const int64_t n = out.numel, nb = nf4_num_blocks(n);
    if (n <= 0) return;
    float* absmax = reinterpret_cast<float*>((char*)workspace + 16);
    float* partial = reinterpret_cast<float*>((char*)workspace + 16 + ((4 * nb + 15) & ~(int64_t)15));
    nf4_quantize_plain_gpu(out.packed, absmax, w, dtype, n, nonfinite, stream);

    torch_mean_gpu(out.offset, absmax, nb, partial, stream);  // offset = absmax.mean()
    dq_quantize_kernel<<<(unsigned)nf4_num_dq_blocks(n), NF4_DQ_BLOCK, 0, stream>>>(
        out.absmax_q, out.scale2, absmax, out.offset, nb, code8_table());
    cudaCheck(cudaGetLastError());
}

// On the error path only: the first non-finite weight, for the message.
static void report_nonfinite(const void* w, int32_t dtype, int64_t n, const char* name) {
    std::vector<uint8_t> host((size_t)(n * (int64_t)dtype_size(dtype)));
    cudaCheck(cudaMemcpy(host.data(), w, host.size(), cudaMemcpyDeviceToHost));
    std::vector<float> x((size_t)n);
    convert_to_f32(x.data(), host.data(), dtype, (size_t)n);
    for (int64_t i = 0; i < n; i++)
        if (!std::isfinite(x[i]))
            fail("%s: %s at element %lld: NF4 quantization needs finite weights", name,
                 std::isnan(x[i]) ? "NaN" : "Inf", (long long)i);
    fail("%s: NaN or Inf in the weights: NF4 quantization needs finite weights", name);
}

void nf4_quantize_checked_gpu(Nf4View out, const void* w, int32_t dtype, void* workspace,
                              const char* name, cudaStream_t stream) {
    int* flag = reinterpret_cast<int*>(workspace);
    cudaCheck(cudaMemsetAsync(flag, 0, sizeof(int), stream));
    nf4_quantize_gpu(out, w, dtype, flag, workspace, stream);
    int bad = 0;
    cudaCheck(cudaMemcpyAsync(&bad, flag, sizeof(int), cudaMemcpyDeviceToHost, stream));
    cudaCheck(cudaStreamSynchronize(stream));
    if (bad) report_nonfinite(w, dtype, out.numel, name);
}

template <bool DQ>
static void dequantize_launch(void* out, int32_t out_dtype, const uint8_t* packed, const float* absmax,
                              const uint8_t* absmax_q, const float* scale2, const float* offset, int64_t n,
                              cudaStream_t stream) {
    if (n <= 0) return;
    const bool aligned = aligned_to(out, 16) && aligned_to(packed, 4);
    const Nf4Tables tables = nf4_tables();
    const Code8Table table8 = code8_table();
    if (DQ && out_dtype == DT_BF16 && n % 1024 == 0 && aligned_to(out, 16) && aligned_to(packed, 16)) {
        const int64_t rounds = n / 1024, per_block = THREADS / 32;
        nf4_dequantize_bf16_blocks_kernel<<<(unsigned)((rounds + per_block - 1) / per_block), THREADS, 0, stream>>>(
            (__nv_bfloat16*)out, packed, absmax_q, scale2, offset, rounds, tables, table8);
    } else if (out_dtype == DT_BF16)
        nf4_dequantize_kernel<__nv_bfloat16, DQ><<<dequant_grid_for(n), THREADS, 0, stream>>>(
            (__nv_bfloat16*)out, packed, absmax, absmax_q, scale2, offset, n, tables, table8, aligned);
    else if (out_dtype == DT_F16)
        nf4_dequantize_kernel<__half, DQ><<<dequant_grid_for(n), THREADS, 0, stream>>>(
            (__half*)out, packed, absmax, absmax_q, scale2, offset, n, tables, table8, aligned);
    else if (out_dtype == DT_F32)
        nf4_dequantize_kernel<float, DQ><<<dequant_grid_for(n), THREADS, 0, stream>>>(
            (float*)out, packed, absmax, absmax_q, scale2, offset, n, tables, table8, aligned);
    else
        fail("nf4_dequantize_gpu: cannot dequantize to dtype %d (need f32, f16 or bf16)", (int)out_dtype);
    cudaCheck(cudaGetLastError());
}

void nf4_dequantize_gpu(void* out, int32_t out_dtype, Nf4View in, cudaStream_t stream) {
    dequantize_launch<true>(out, out_dtype, in.packed, nullptr, in.absmax_q, in.scale2, in.offset, in.numel,
                            stream);
}

void nf4_dequantize_plain_gpu(void* out, int32_t out_dtype, const uint8_t* packed, const float* absmax,
                              int64_t n, cudaStream_t stream) {
    dequantize_launch<false>(out, out_dtype, packed, absmax, nullptr, nullptr, nullptr, n, stream);
}
