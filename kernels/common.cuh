// kernels/common.cuh — the small helpers every CUDA file shares: the bf16 type, the check macros
// for CUDA calls and launches, ceil_div, warp and block reductions, 16-byte vector loads, and the
// NF4 element decode that the dequantizer (quant.cu) and the decoder's fused mat-vec (decode.cu)
// must compute identically. Host code (g++ with the CUDA headers) may include it too: it sees the
// types and the macros; the __device__ helpers are for nvcc only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "../common.h"

typedef __nv_bfloat16 bf16;

// Every CUDA call and every launch is checked; a failure names file:line and gives a hint.
#define cudaCheck(call)                                                                          \
    do {                                                                                         \
        cudaError_t err_ = (call);                                                               \
        if (err_ != cudaSuccess) {                                                               \
            fprintf(stderr, "%s:%d: CUDA error %s: %s (hint: %s)\n", __FILE__, __LINE__,         \
                    cudaGetErrorName(err_), cudaGetErrorString(err_),                            \
                    err_ == cudaErrorNoDevice || err_ == cudaErrorInsufficientDriver             \
                        ? "no usable GPU here; run with --device cpu or on a GPU machine"        \
                        : err_ == cudaErrorMemoryAllocation ? "out of GPU memory; lower the batch or enable recompute" \
                                                            : "rerun under compute-sanitizer"); \
            exit(1);                                                                             \
        }                                                                                        \
    } while (0)
#define cudaCheckLaunch() cudaCheck(cudaGetLastError())

// blocks of `per_block` threads (or items) that cover n
inline unsigned ceil_div(int64_t n, int64_t per_block) { return (unsigned)((n + per_block - 1) / per_block); }

#ifdef __CUDACC__

// ----------------------------------------------------------------------------------------------
// reductions. The order of the additions is fixed by the launch shape, so results are bitwise
// reproducible run to run (no atomics anywhere that reaches the gradients).

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// sum over the block; every thread gets the result. shared: >= 32 floats
__device__ __forceinline__ float block_sum(float v, float* shared) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();  // shared may still be read by a previous call
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < n_warps ? shared[lane] : 0.0f;
    return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float* shared) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < n_warps ? shared[lane] : -FLT_MAX;
    return warp_max(v);
}

// ----------------------------------------------------------------------------------------------
// 16-byte vector access: 8 bf16 in one load or store (p must be 16-byte aligned)

struct alignas(16) Bf16x8 {
    bf16 v[8];
};
__device__ __forceinline__ Bf16x8 load_bf16x8(const bf16* p) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    return *reinterpret_cast<const Bf16x8*>(&u);
}
__device__ __forceinline__ void store_bf16x8(bf16* p, const Bf16x8& x) {
    *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(&x);
}

// ----------------------------------------------------------------------------------------------
// NF4 element decode (the numbers of quant.h's step 3). bitsandbytes is built with fast math, so
// its multiplies flush subnormals (mul.ftz); .rn also forbids ptxas to fuse them into an fma.

__device__ __forceinline__ float mul_rn_ftz(float a, float b) {
    float r;
    asm("mul.rn.ftz.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
// The absmax of a 64-weight block from the dynamic-map value of its 8-bit code (code8[q]): bnb's
// dequantize code8[q] * scale2 (mul.ftz), then PyTorch's separate `absmax += offset` (an IEEE add,
// no fma).
__device__ __forceinline__ float nf4_block_absmax(float code8_value, float scale2, float offset) {
    return __fadd_rn(mul_rn_ftz(code8_value, scale2), offset);
}
// One weight: NF4[code] * absmax (mul.ftz), before rounding to the output dtype.
__device__ __forceinline__ float nf4_weight(const float* nf4, uint32_t code, float absmax) {
    return mul_rn_ftz(nf4[code], absmax);
}

// ----------------------------------------------------------------------------------------------
// tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulate), ldmatrix and cp.async: sm_80 and later.
// The fragment layouts are spelled out in kernels/attention.cu.

__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t smem_addr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
// 16 bytes global -> shared without passing through registers; !valid writes 16 zero bytes
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
// Programmatic dependent launch (sm_90 and later; no-ops before, and in a plain launch). A kernel
// launched with launch_kernel(true, ...) may start while the kernel before it in the stream still
// runs, once that one has called pdl_launch_dependents() (or ended); it must call pdl_wait() before
// it reads anything the kernels before it write, or writes anything they read. What it does before
// (prefetching constant weights, filling a table) overlaps the previous kernel and the launch gap.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
__device__ __forceinline__ uint32_t pack_floats(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t*)&v;
}

// Fragment loads from a row-major shared tile of row stride LD (bf16; LD * 2 a multiple of 16 and
// rows an odd number of 16-byte units apart keeps ldmatrix free of bank conflicts), lane = threadIdx.x % 32:
// A of rows [r0, r0+16) x cols [k0, k0+16)
template <int LD>
__device__ __forceinline__ void load_a(uint32_t a[4], const bf16* tile, int r0, int k0, int lane) {
    ldmatrix_x4(a, tile + (r0 + (lane & 15)) * LD + k0 + (lane >> 4) * 8);
}
// B fragments of two 8-column tiles where B[k][n] = tile[n0 + n][k0 + k] (the tile's rows are B's
// columns, as K in Q K^T): b[0], b[1] for columns n0..n0+7, b[2], b[3] for n0+8..n0+15
template <int LD>
__device__ __forceinline__ void load_b_rows(uint32_t b[4], const bf16* tile, int n0, int k0, int lane) {
    ldmatrix_x4(b, tile + (n0 + (lane & 7) + ((lane >> 4) << 3)) * LD + k0 + ((lane >> 3) & 1) * 8);
}
// the same where B[k][n] = tile[k0 + k][n0 + n] (the tile's rows are B's k, as V in P V)
template <int LD>
__device__ __forceinline__ void load_b_cols(uint32_t b[4], const bf16* tile, int k0, int n0, int lane) {
    ldmatrix_x4_trans(b, tile + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + n0 + (lane >> 4) * 8);
}

// A of rows [m0, m0+16) x cols [k0, k0+16) where A[m][k] = tile[k0 + k][m0 + m] (A stored
// transposed, as du^T in dA = du^T x)
template <int LD>
__device__ __forceinline__ void load_a_trans(uint32_t a[4], const bf16* tile, int m0, int k0, int lane) {
    ldmatrix_x4_trans(a, tile + (k0 + (lane & 7) + (lane >> 4) * 8) * LD + m0 + ((lane >> 3) & 1) * 8);
}

// kernel<<<grid, block, smem, stream>>>(args...), as a programmatic dependent launch when pdl (see
// pdl_wait; the attribute is ignored where the device lacks it)
template <typename... Params, typename... Args>
void launch_kernel(bool pdl, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr, cfg.numAttrs = pdl ? 1 : 0;
    cudaCheck(cudaLaunchKernelEx(&cfg, kernel, static_cast<Params>(args)...));
}

#endif  // __CUDACC__
