// llama2.cu — the CUDA transformer's kernels and their launchers: embedding, RMSNorm, RoPE, flash
// attention (forward and backward, packed rows, GQA), SwiGLU, cross-entropy, and the cuBLASLt
// matmul. Each kernel has a CPU twin of the same name in llama2_cpu.cpp (namespace cpu) and is
// tested against it in test/gpu_kernels.cu. Build: make (nvcc -arch=sm_90).
//
// Numerics: activations bf16, every reduction and every matmul accumulates in fp32, softmax and
// norm statistics are fp32.
#include <cfloat>
#include <string>

#include "llama2_gpu.h"
#include "quant.h"

// ----------------------------------------------------------------------------------------------
// device

bool gpu_available(std::string* why) {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess || n == 0) {
        if (why) *why = err != cudaSuccess ? cudaGetErrorString(err) : "no CUDA device";
        cudaGetLastError();  // clear the sticky error so the CPU path runs clean
        return false;
    }
    return true;
}

static inline unsigned ceil_div(int64_t a, int64_t b) { return (unsigned)((a + b - 1) / b); }

// ----------------------------------------------------------------------------------------------
// cuBLASLt

void blas_create(Blas& b) {
    cublasCheck(cublasLtCreate(&b.handle));
    b.workspace_size = 32u << 20;  // Hopper's cuBLASLt kernels want up to 32 MiB
    cudaCheck(cudaMalloc(&b.workspace, b.workspace_size));
}

void blas_destroy(Blas& b) {
    if (b.workspace) cudaCheck(cudaFree(b.workspace));
    if (b.handle) cublasCheck(cublasLtDestroy(b.handle));
    b = Blas{};
}

// Row-major out (M,N) = op(a)(M,K) op(b)(K,N) is column-major out^T (N,M) = op(b)^T op(a)^T, so
// cuBLASLt (column-major) gets b as its first operand and a as its second.
void matmul(Blas& bl, void* out, bool out_f32, const bf16* a, bool a_trans, const bf16* b, bool b_trans, int64_t M,
            int64_t N, int64_t K, float alpha, float beta, cudaStream_t stream) {
    cublasLtMatmulDesc_t desc;
    cublasCheck(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t op_first = b_trans ? CUBLAS_OP_T : CUBLAS_OP_N, op_second = a_trans ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first)));
    cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second)));
    // column-major shapes as stored: first operand (b) is N x K (or K x N when transposed), etc.
    cublasLtMatrixLayout_t la, lb, lc;
    cublasCheck(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, b_trans ? K : N, b_trans ? N : K, b_trans ? K : N));
    cublasCheck(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, a_trans ? M : K, a_trans ? K : M, a_trans ? M : K));
    cublasCheck(cublasLtMatrixLayoutCreate(&lc, out_f32 ? CUDA_R_32F : CUDA_R_16BF, N, M, N));
    cublasLtMatmulPreference_t pref;
    cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &bl.workspace_size,
                                                     sizeof(bl.workspace_size)));
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    cublasCheck(cublasLtMatmulAlgoGetHeuristic(bl.handle, desc, la, lb, lc, lc, pref, 1, &heur, &found));
    if (found == 0) {
        fprintf(stderr, "%s:%d: cuBLASLt has no algorithm for %lldx%lldx%lld (trans %d%d, out %s)\n", __FILE__, __LINE__,
                (long long)M, (long long)N, (long long)K, a_trans, b_trans, out_f32 ? "f32" : "bf16");
        exit(1);
    }
    // C and D are the same buffer: beta = 1 accumulates into out in the epilogue
    cublasCheck(cublasLtMatmul(bl.handle, desc, &alpha, b, la, a, lb, &beta, out, lc, out, lc, &heur.algo, bl.workspace,
                               bl.workspace_size, stream));
    cublasCheck(cublasLtMatmulPreferenceDestroy(pref));
    cublasCheck(cublasLtMatrixLayoutDestroy(la));
    cublasCheck(cublasLtMatrixLayoutDestroy(lb));
    cublasCheck(cublasLtMatrixLayoutDestroy(lc));
    cublasCheck(cublasLtMatmulDescDestroy(desc));
}

// ----------------------------------------------------------------------------------------------
// small helpers

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// sum over the block; every thread gets the result. shared: >= 32 floats
__device__ float block_sum(float v, float* shared) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();  // shared may still be read by a previous call
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < n_warps ? shared[lane] : 0.0f;
    return warp_sum(v);
}
__device__ float block_max(float v, float* shared) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < n_warps ? shared[lane] : -FLT_MAX;
    return warp_max(v);
}

// ----------------------------------------------------------------------------------------------
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

// ----------------------------------------------------------------------------------------------
// RMSNorm. Forward: one block of 256 threads per row with 16-byte loads, so that a single row (a
// decode step) is not left to one warp walking 4096 values (that took 57 us on an H200; this
// takes a few). Backward: one warp per row (training has thousands of rows).

constexpr int NORM_THREADS = 256;

__global__ void __launch_bounds__(NORM_THREADS) rmsnorm_forward_kernel(bf16* out, float* rstd, const bf16* x, const bf16* w,
                                                                       int64_t N, int C, float eps) {
    __shared__ float shared[32];
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
                                        const bf16* w, int64_t N, int C) {
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= N) return;
    const float s = rstd[row];
    float dot = 0.0f;
    for (int i = lane; i < C; i += 32)
        dot += dy[row * C + i] * __bfloat162float(w[i]) * __bfloat162float(x[row * C + i]) * s;
    const float mean = warp_sum(dot) / (float)C;
    for (int i = lane; i < C; i += 32) {
        const float xhat = __bfloat162float(x[row * C + i]) * s;
        const float d = dres[row * C + i] + s * (dy[row * C + i] * __bfloat162float(w[i]) - xhat * mean);
        dres[row * C + i] = d;
        dres_bf16[row * C + i] = __float2bfloat16(d);
    }
}

void rmsnorm_backward(float* dres, bf16* dres_bf16, const float* dy, const bf16* x, const float* rstd, const bf16* w,
                      int64_t N, int C, cudaStream_t stream) {
    rmsnorm_backward_kernel<<<ceil_div(N, 8), 256, 0, stream>>>(dres, dres_bf16, dy, x, rstd, w, N, C);
    cudaCheckLaunch();
}

// ----------------------------------------------------------------------------------------------
// RoPE: the angle is computed in fp32 exactly as the CPU twin and transformers do
// (inv_freq = 1 / theta^(2i/D), angle = pos * inv_freq), with full-precision sincosf.

template <bool BACKWARD>
__global__ void rope_kernel(bf16* x, const int32_t* pos, int64_t N, int n_heads, int D, float theta) {
    const int half = D / 2;
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;  // (n, head, i < D/2)
    if (idx >= N * n_heads * half) return;
    const int i = (int)(idx % half);
    const int64_t nh = idx / half, n = nh / n_heads;
    const float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)D);
    float s, c;
    sincosf((float)pos[n] * inv_freq, &s, &c);
    bf16* v = x + nh * D;
    const float a = __bfloat162float(v[i]), b = __bfloat162float(v[i + half]);
    if (!BACKWARD) {
        v[i] = __float2bfloat16(a * c - b * s);
        v[i + half] = __float2bfloat16(b * c + a * s);
    } else {  // the transpose of the rotation
        v[i] = __float2bfloat16(a * c + b * s);
        v[i + half] = __float2bfloat16(b * c - a * s);
    }
}

void rope_forward(bf16* x, const int32_t* pos, int64_t N, int n_heads, int D, float theta, cudaStream_t stream) {
    rope_kernel<false><<<ceil_div(N * n_heads * (D / 2), 256), 256, 0, stream>>>(x, pos, N, n_heads, D, theta);
    cudaCheckLaunch();
}
void rope_backward(bf16* dx, const int32_t* pos, int64_t N, int n_heads, int D, float theta, cudaStream_t stream) {
    rope_kernel<true><<<ceil_div(N * n_heads * (D / 2), 256), 256, 0, stream>>>(dx, pos, N, n_heads, D, theta);
    cudaCheckLaunch();
}

// ----------------------------------------------------------------------------------------------
// flash attention with tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulate).
//
// A block takes 64 queries of one (row, head); each of its 4 warps owns 16 of them. Keys stream
// through shared memory 64 at a time; scores, the online softmax and the output accumulator stay
// in registers. Only the log-sum-exp of each query is saved for the backward.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with .bf16), g = lane/4, c = lane%4:
//   A (16x16, row-major): reg0 = (row g, cols 2c..2c+1), reg1 = (g+8, 2c..), reg2 = (g, 2c+8..), reg3 = (g+8, 2c+8..)
//   B (16x8, "col"):      reg0 = (k 2c..2c+1, col g), reg1 = (k 2c+8.., col g)
//   C (16x8 fp32):        c0,c1 = (row g, cols 2c, 2c+1), c2,c3 = (row g+8, cols 2c, 2c+1)
// Two C tiles side by side (16x16) are exactly one A fragment: this is how P feeds P V.
//
// Masking: query t of a row attends keys [t - pos[t], t]. start(t) = t - pos[t] never decreases
// along a row (it jumps forward at each new conversation), which bounds the key blocks to visit.

namespace att {
constexpr int D = 128;        // head_dim (every Llama 2 size)
constexpr int BQ = 64;        // queries per block
constexpr int BK = 64;        // keys per tile
constexpr int LD = D + 8;     // shared-memory row stride in bf16: rows shift 4 banks, no conflicts
constexpr int THREADS = 128;  // 4 warps x 16 rows
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;
}  // namespace att

__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t ld_pair(const bf16* p) { return *(const uint32_t*)p; }  // two adjacent bf16
__device__ __forceinline__ uint32_t pack_pair(bf16 lo, bf16 hi) {
    return (uint32_t)__bfloat16_as_ushort(lo) | ((uint32_t)__bfloat16_as_ushort(hi) << 16);
}
__device__ __forceinline__ uint32_t pack_floats(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t*)&v;
}
// A fragment of rows [r0, r0+16), cols [k0, k0+16) of a row-major shared tile
__device__ __forceinline__ void load_a_frag(uint32_t a[4], const bf16* tile, int r0, int k0, int g, int c) {
    a[0] = ld_pair(tile + (r0 + g) * att::LD + k0 + 2 * c);
    a[1] = ld_pair(tile + (r0 + g + 8) * att::LD + k0 + 2 * c);
    a[2] = ld_pair(tile + (r0 + g) * att::LD + k0 + 2 * c + 8);
    a[3] = ld_pair(tile + (r0 + g + 8) * att::LD + k0 + 2 * c + 8);
}
// B fragment where B[k][n] = tile[n0 + n][k0 + k] (the tile's rows are B's columns): contiguous pairs
__device__ __forceinline__ void load_b_rows(uint32_t& b0, uint32_t& b1, const bf16* tile, int n0, int k0, int g, int c) {
    b0 = ld_pair(tile + (n0 + g) * att::LD + k0 + 2 * c);
    b1 = ld_pair(tile + (n0 + g) * att::LD + k0 + 2 * c + 8);
}
// B fragment where B[k][n] = tile[k0 + k][n0 + n] (the tile's rows are B's k): two scalar loads per pair
__device__ __forceinline__ void load_b_cols(uint32_t& b0, uint32_t& b1, const bf16* tile, int k0, int n0, int g, int c) {
    b0 = pack_pair(tile[(k0 + 2 * c) * att::LD + n0 + g], tile[(k0 + 2 * c + 1) * att::LD + n0 + g]);
    b1 = pack_pair(tile[(k0 + 2 * c + 8) * att::LD + n0 + g], tile[(k0 + 2 * c + 9) * att::LD + n0 + g]);
}
// rows [t0, t0+64) of one head of a (B, T, n_heads, D) tensor into a shared tile; rows >= T are zero
// (a zero V row times a zero probability must stay zero, never NaN)
__device__ __forceinline__ void load_tile(bf16* tile, const bf16* src, int b, int t0, int head, int n_heads, int T) {
    for (int i = threadIdx.x; i < att::BQ * (att::D / 8); i += att::THREADS) {
        const int r = i / (att::D / 8), c8 = i % (att::D / 8);
        uint4 v = make_uint4(0, 0, 0, 0);
        if (t0 + r < T) v = *(const uint4*)(src + (((int64_t)b * T + t0 + r) * n_heads + head) * att::D + c8 * 8);
        *(uint4*)(tile + r * att::LD + c8 * 8) = v;
    }
}
__device__ __forceinline__ int att_start(const int32_t* pos, int b, int t, int T) { return t - pos[(int64_t)b * T + t]; }

__global__ void __launch_bounds__(att::THREADS) attention_forward_kernel(bf16* out, float* lse, const bf16* q, const bf16* k,
                                                                        const bf16* v, const int32_t* pos, int T, int H,
                                                                        int KV, float scale_log2) {
    using namespace att;
    const int t0 = blockIdx.x * BQ, h = blockIdx.y, b = blockIdx.z, kvh = h / (H / KV);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    __shared__ __align__(16) bf16 Ks[BK * LD];
    __shared__ __align__(16) bf16 Vs[BK * LD];

    load_tile(Ks, q, b, t0, h, H, T);  // stage this block's queries
    __syncthreads();
    uint32_t qf[D / 16][4];  // this warp's 16 query rows as A fragments
#pragma unroll
    for (int ks = 0; ks < D / 16; ks++) load_a_frag(qf[ks], Ks, warp * 16, ks * 16, g, c);
    __syncthreads();

    const int row[2] = {t0 + warp * 16 + g, t0 + warp * 16 + g + 8};
    int start[2];
    for (int i = 0; i < 2; i++) start[i] = row[i] < T ? att_start(pos, b, row[i], T) : row[i] + 1;  // beyond T: no keys
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // running max (log2 units) and partial sum
    float o[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;

    const int kb_first = att_start(pos, b, t0, T) / BK, kb_last = min(t0 + BQ - 1, T - 1) / BK;
    for (int kb = kb_first; kb <= kb_last; kb++) {
        const int k0 = kb * BK;
        load_tile(Ks, k, b, k0, kvh, KV, T);
        load_tile(Vs, v, b, k0, kvh, KV, T);
        __syncthreads();
        float s[BK / 8][4];  // scores: 16 rows x 64 keys
#pragma unroll
        for (int nt = 0; nt < BK / 8; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < D / 16; ks++) {
                uint32_t b0, b1;
                load_b_rows(b0, b1, Ks, nt * 8, ks * 16, g, c);
                mma_16816(s[nt], qf[ks], b0, b1);
            }
        }
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < BK / 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = k0 + nt * 8 + 2 * c + (e & 1), ri = e / 2;
                s[nt][e] = (key >= start[ri] && key <= row[ri]) ? s[nt][e] * scale_log2 : -INFINITY;
                mx[ri] = fmaxf(mx[ri], s[nt][e]);
            }
        float alpha[2], base[2];
#pragma unroll
        for (int ri = 0; ri < 2; ri++) {
            mx[ri] = fmaxf(mx[ri], __shfl_xor_sync(0xffffffffu, mx[ri], 1));
            mx[ri] = fmaxf(mx[ri], __shfl_xor_sync(0xffffffffu, mx[ri], 2));
            const float m_new = fmaxf(m[ri], mx[ri]);
            base[ri] = m_new == -INFINITY ? 0.0f : m_new;  // a row with no key yet: avoid inf - inf
            alpha[ri] = exp2f(m[ri] - base[ri]);
            m[ri] = m_new;
            l[ri] *= alpha[ri];
        }
        uint32_t pf[BK / 16][4];  // probabilities as A fragments (bf16)
#pragma unroll
        for (int nt = 0; nt < BK / 8; nt++) {
            const float p0 = exp2f(s[nt][0] - base[0]), p1 = exp2f(s[nt][1] - base[0]);
            const float p2 = exp2f(s[nt][2] - base[1]), p3 = exp2f(s[nt][3] - base[1]);
            l[0] += p0 + p1;
            l[1] += p2 + p3;
            pf[nt / 2][(nt & 1) * 2 + 0] = pack_floats(p0, p1);
            pf[nt / 2][(nt & 1) * 2 + 1] = pack_floats(p2, p3);
        }
#pragma unroll
        for (int nt = 0; nt < D / 8; nt++) {
            o[nt][0] *= alpha[0];
            o[nt][1] *= alpha[0];
            o[nt][2] *= alpha[1];
            o[nt][3] *= alpha[1];
#pragma unroll
            for (int ks = 0; ks < BK / 16; ks++) {
                uint32_t b0, b1;
                load_b_cols(b0, b1, Vs, ks * 16, nt * 8, g, c);
                mma_16816(o[nt], pf[ks], b0, b1);
            }
        }
        __syncthreads();  // before the next tile overwrites Ks, Vs
    }
#pragma unroll
    for (int ri = 0; ri < 2; ri++) {
        l[ri] += __shfl_xor_sync(0xffffffffu, l[ri], 1);
        l[ri] += __shfl_xor_sync(0xffffffffu, l[ri], 2);
        if (row[ri] >= T) continue;
        const float inv = 1.0f / l[ri];
        bf16* dst = out + (((int64_t)b * T + row[ri]) * H + h) * D;
#pragma unroll
        for (int nt = 0; nt < D / 8; nt++)
            *(__nv_bfloat162*)(dst + nt * 8 + 2 * c) = __floats2bfloat162_rn(o[nt][2 * ri] * inv, o[nt][2 * ri + 1] * inv);
        if (c == 0) lse[((int64_t)b * H + h) * T + row[ri]] = (m[ri] + log2f(l[ri])) * LN2;
    }
}

// delta (B, H, T) = rowsum(dout * out) per query and head; dout_bf16 = bf16 copy of dout.
// One warp per (token, head).
__global__ void attention_backward_preprocess_kernel(bf16* dout_bf16, float* delta, const float* dout, const bf16* out,
                                                     int B, int T, int H) {
    const int64_t idx = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;  // (b, t, h)
    const int lane = threadIdx.x % 32;
    if (idx >= (int64_t)B * T * H) return;
    const int64_t bt = idx / H;
    const int h = (int)(idx % H), b = (int)(bt / T), t = (int)(bt % T);
    float acc = 0.0f;
    for (int i = lane; i < att::D; i += 32) {
        const bf16 d = __float2bfloat16(dout[idx * att::D + i]);
        dout_bf16[idx * att::D + i] = d;
        acc += __bfloat162float(d) * __bfloat162float(out[idx * att::D + i]);
    }
    acc = warp_sum(acc);
    if (lane == 0) delta[((int64_t)b * H + h) * T + t] = acc;
}

// dK, dV for 64 keys of one (row, kv head): each warp owns 16 keys and loops over every query
// (of every head sharing this kv head) that can see them. Gradients stay in registers; no atomics,
// so the result is bitwise deterministic.
__global__ void __launch_bounds__(att::THREADS) attention_backward_dkdv_kernel(
    bf16* dk, bf16* dv, const bf16* dout, const float* lse, const float* delta, const bf16* q, const bf16* k,
    const bf16* v, const int32_t* pos, int T, int H, int KV, float scale_log2, float scale) {
    using namespace att;
    extern __shared__ __align__(16) bf16 smem[];
    bf16 *Ks = smem, *Vs = Ks + BK * LD, *Qs = Vs + BK * LD, *dOs = Qs + BQ * LD;
    float* lse_s = (float*)(dOs + BQ * LD);  // (64) in log2 units
    float* delta_s = lse_s + BQ;             // (64)
    int* start_s = (int*)(delta_s + BQ);     // (64)
    const int k0 = blockIdx.x * BK, kvh = blockIdx.y, b = blockIdx.z, group = H / KV;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    load_tile(Ks, k, b, k0, kvh, KV, T);
    load_tile(Vs, v, b, k0, kvh, KV, T);
    const int key[2] = {k0 + warp * 16 + g, k0 + warp * 16 + g + 8};
    float dkacc[D / 8][4], dvacc[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) dkacc[nt][e] = dvacc[nt][e] = 0.0f;
    const int last_key = min(k0 + BK - 1, T - 1);

    for (int h = kvh * group; h < (kvh + 1) * group; h++)
        for (int q0 = (k0 / BQ) * BQ; q0 < T; q0 += BQ) {
            // queries from here on start their conversation after our last key: nothing left to see
            if (att_start(pos, b, q0, T) > last_key) break;
            __syncthreads();  // previous tiles fully used
            load_tile(Qs, q, b, q0, h, H, T);
            load_tile(dOs, dout, b, q0, h, H, T);
            for (int i = threadIdx.x; i < BQ; i += THREADS) {
                const int t = q0 + i;
                const bool ok = t < T;
                lse_s[i] = ok ? lse[((int64_t)b * H + h) * T + t] * LOG2E : 0.0f;
                delta_s[i] = ok ? delta[((int64_t)b * H + h) * T + t] : 0.0f;
                start_s[i] = ok ? att_start(pos, b, t, T) : INT_MAX;  // beyond T: sees nothing
            }
            __syncthreads();
            // S^T = K Q^T (16 keys x 64 queries), then P^T
            float st[BQ / 8][4];
#pragma unroll
            for (int nt = 0; nt < BQ / 8; nt++) st[nt][0] = st[nt][1] = st[nt][2] = st[nt][3] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < D / 16; ks++) {
                uint32_t a[4];
                load_a_frag(a, Ks, warp * 16, ks * 16, g, c);
#pragma unroll
                for (int nt = 0; nt < BQ / 8; nt++) {
                    uint32_t b0, b1;
                    load_b_rows(b0, b1, Qs, nt * 8, ks * 16, g, c);
                    mma_16816(st[nt], a, b0, b1);
                }
            }
            uint32_t pf[BQ / 16][4];
#pragma unroll
            for (int nt = 0; nt < BQ / 8; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int qi = nt * 8 + 2 * c + (e & 1), t = q0 + qi, kk = key[e / 2];
                    const bool visible = kk <= t && start_s[qi] <= kk;
                    st[nt][e] = visible ? exp2f(st[nt][e] * scale_log2 - lse_s[qi]) : 0.0f;
                }
                pf[nt / 2][(nt & 1) * 2 + 0] = pack_floats(st[nt][0], st[nt][1]);
                pf[nt / 2][(nt & 1) * 2 + 1] = pack_floats(st[nt][2], st[nt][3]);
            }
            // dV += P^T dO
#pragma unroll
            for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
                for (int ks = 0; ks < BQ / 16; ks++) {
                    uint32_t b0, b1;
                    load_b_cols(b0, b1, dOs, ks * 16, nt * 8, g, c);
                    mma_16816(dvacc[nt], pf[ks], b0, b1);
                }
            // dP^T = V dO^T, dS^T = P^T * (dP^T - delta)
            float dpt[BQ / 8][4];
#pragma unroll
            for (int nt = 0; nt < BQ / 8; nt++) dpt[nt][0] = dpt[nt][1] = dpt[nt][2] = dpt[nt][3] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < D / 16; ks++) {
                uint32_t a[4];
                load_a_frag(a, Vs, warp * 16, ks * 16, g, c);
#pragma unroll
                for (int nt = 0; nt < BQ / 8; nt++) {
                    uint32_t b0, b1;
                    load_b_rows(b0, b1, dOs, nt * 8, ks * 16, g, c);
                    mma_16816(dpt[nt], a, b0, b1);
                }
            }
            uint32_t dsf[BQ / 16][4];
#pragma unroll
            for (int nt = 0; nt < BQ / 8; nt++) {
                float ds[4];
#pragma unroll
                for (int e = 0; e < 4; e++) ds[e] = st[nt][e] * (dpt[nt][e] - delta_s[nt * 8 + 2 * c + (e & 1)]);
                dsf[nt / 2][(nt & 1) * 2 + 0] = pack_floats(ds[0], ds[1]);
                dsf[nt / 2][(nt & 1) * 2 + 1] = pack_floats(ds[2], ds[3]);
            }
            // dK += dS^T Q
#pragma unroll
            for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
                for (int ks = 0; ks < BQ / 16; ks++) {
                    uint32_t b0, b1;
                    load_b_cols(b0, b1, Qs, ks * 16, nt * 8, g, c);
                    mma_16816(dkacc[nt], dsf[ks], b0, b1);
                }
        }
#pragma unroll
    for (int ri = 0; ri < 2; ri++) {
        if (key[ri] >= T) continue;
        const int64_t off = (((int64_t)b * T + key[ri]) * KV + kvh) * D;
#pragma unroll
        for (int nt = 0; nt < D / 8; nt++) {
            *(__nv_bfloat162*)(dk + off + nt * 8 + 2 * c) =
                __floats2bfloat162_rn(dkacc[nt][2 * ri] * scale, dkacc[nt][2 * ri + 1] * scale);
            *(__nv_bfloat162*)(dv + off + nt * 8 + 2 * c) = __floats2bfloat162_rn(dvacc[nt][2 * ri], dvacc[nt][2 * ri + 1]);
        }
    }
}

// dQ for 64 queries of one (row, head): recompute P from the saved log-sum-exp, dS = P (dP - delta),
// dQ = dS K scale.
__global__ void __launch_bounds__(att::THREADS) attention_backward_dq_kernel(
    bf16* dq, const bf16* dout, const float* lse, const float* delta, const bf16* q, const bf16* k, const bf16* v,
    const int32_t* pos, int T, int H, int KV, float scale_log2, float scale) {
    using namespace att;
    const int t0 = blockIdx.x * BQ, h = blockIdx.y, b = blockIdx.z, kvh = h / (H / KV);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    __shared__ __align__(16) bf16 Ks[BK * LD];
    __shared__ __align__(16) bf16 Vs[BK * LD];
    load_tile(Ks, q, b, t0, h, H, T);
    load_tile(Vs, dout, b, t0, h, H, T);
    __syncthreads();
    uint32_t qf[D / 16][4], dof[D / 16][4];
#pragma unroll
    for (int ks = 0; ks < D / 16; ks++) {
        load_a_frag(qf[ks], Ks, warp * 16, ks * 16, g, c);
        load_a_frag(dof[ks], Vs, warp * 16, ks * 16, g, c);
    }
    const int row[2] = {t0 + warp * 16 + g, t0 + warp * 16 + g + 8};
    int start[2];
    float lse2[2], dl[2];
    for (int ri = 0; ri < 2; ri++) {
        const bool ok = row[ri] < T;
        start[ri] = ok ? att_start(pos, b, row[ri], T) : row[ri] + 1;
        lse2[ri] = ok ? lse[((int64_t)b * H + h) * T + row[ri]] * LOG2E : 0.0f;
        dl[ri] = ok ? delta[((int64_t)b * H + h) * T + row[ri]] : 0.0f;
    }
    float dqacc[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++) dqacc[nt][0] = dqacc[nt][1] = dqacc[nt][2] = dqacc[nt][3] = 0.0f;

    const int kb_first = att_start(pos, b, t0, T) / BK, kb_last = min(t0 + BQ - 1, T - 1) / BK;
    for (int kb = kb_first; kb <= kb_last; kb++) {
        const int k0 = kb * BK;
        __syncthreads();
        load_tile(Ks, k, b, k0, kvh, KV, T);
        load_tile(Vs, v, b, k0, kvh, KV, T);
        __syncthreads();
        float s[BK / 8][4], dp[BK / 8][4];
#pragma unroll
        for (int nt = 0; nt < BK / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) s[nt][e] = dp[nt][e] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < D / 16; ks++) {
                uint32_t b0, b1;
                load_b_rows(b0, b1, Ks, nt * 8, ks * 16, g, c);
                mma_16816(s[nt], qf[ks], b0, b1);
                load_b_rows(b0, b1, Vs, nt * 8, ks * 16, g, c);
                mma_16816(dp[nt], dof[ks], b0, b1);
            }
        }
        uint32_t dsf[BK / 16][4];
#pragma unroll
        for (int nt = 0; nt < BK / 8; nt++) {
            float ds[4];
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int kk = k0 + nt * 8 + 2 * c + (e & 1), ri = e / 2;
                const bool visible = kk >= start[ri] && kk <= row[ri];
                const float p = visible ? exp2f(s[nt][e] * scale_log2 - lse2[ri]) : 0.0f;
                ds[e] = p * (dp[nt][e] - dl[ri]);
            }
            dsf[nt / 2][(nt & 1) * 2 + 0] = pack_floats(ds[0], ds[1]);
            dsf[nt / 2][(nt & 1) * 2 + 1] = pack_floats(ds[2], ds[3]);
        }
#pragma unroll
        for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
            for (int ks = 0; ks < BK / 16; ks++) {
                uint32_t b0, b1;
                load_b_cols(b0, b1, Ks, ks * 16, nt * 8, g, c);
                mma_16816(dqacc[nt], dsf[ks], b0, b1);
            }
    }
#pragma unroll
    for (int ri = 0; ri < 2; ri++) {
        if (row[ri] >= T) continue;
        bf16* dst = dq + (((int64_t)b * T + row[ri]) * H + h) * D;
#pragma unroll
        for (int nt = 0; nt < D / 8; nt++)
            *(__nv_bfloat162*)(dst + nt * 8 + 2 * c) =
                __floats2bfloat162_rn(dqacc[nt][2 * ri] * scale, dqacc[nt][2 * ri + 1] * scale);
    }
}

static void check_attention_shape(int H, int KV, int D) {
    if (D != att::D) {
        fprintf(stderr, "attention: head_dim %d is not supported on the GPU (the kernels are built for %d)\n", D, att::D);
        exit(1);
    }
    ASSERT(H % KV == 0, "query heads are a multiple of kv heads");
}

void attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, const int32_t* pos, int B,
                       int T, int H, int KV, int D, cudaStream_t stream) {
    check_attention_shape(H, KV, D);
    const float scale_log2 = att::LOG2E / sqrtf((float)D);
    dim3 grid(ceil_div(T, att::BQ), H, B);
    attention_forward_kernel<<<grid, att::THREADS, 0, stream>>>(out, lse, q, k, v, pos, T, H, KV, scale_log2);
    cudaCheckLaunch();
}

void attention_backward(bf16* dq, bf16* dk, bf16* dv, bf16* dout_bf16, float* delta, const float* dout, const bf16* out,
                        const float* lse, const bf16* q, const bf16* k, const bf16* v, const int32_t* pos, int B, int T,
                        int H, int KV, int D, cudaStream_t stream) {
    check_attention_shape(H, KV, D);
    const float scale = 1.0f / sqrtf((float)D), scale_log2 = scale * att::LOG2E;
    attention_backward_preprocess_kernel<<<ceil_div((int64_t)B * T * H, 8), 256, 0, stream>>>(dout_bf16, delta, dout, out,
                                                                                            B, T, H);
    cudaCheckLaunch();
    const size_t smem = (size_t)4 * att::BQ * att::LD * sizeof(bf16) + 3 * att::BQ * sizeof(float);
    static bool attr_set = false;  // the opt-in above 48 KiB of shared memory, once per process
    if (!attr_set) {
        cudaCheck(cudaFuncSetAttribute(attention_backward_dkdv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        attr_set = true;
    }
    attention_backward_dkdv_kernel<<<dim3(ceil_div(T, att::BK), KV, B), att::THREADS, smem, stream>>>(
        dk, dv, dout_bf16, lse, delta, q, k, v, pos, T, H, KV, scale_log2, scale);
    cudaCheckLaunch();
    attention_backward_dq_kernel<<<dim3(ceil_div(T, att::BQ), H, B), att::THREADS, 0, stream>>>(
        dq, dout_bf16, lse, delta, q, k, v, pos, T, H, KV, scale_log2, scale);
    cudaCheckLaunch();
}

// ----------------------------------------------------------------------------------------------
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

// ----------------------------------------------------------------------------------------------
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

// ----------------------------------------------------------------------------------------------
// conversions and reductions

__global__ void f32_to_bf16_kernel(bf16* out, const float* in, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16(in[i]);
}
__global__ void bf16_to_f32_kernel(float* out, const bf16* in, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __bfloat162float(in[i]);
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
void sum_reduce(float* out, const float* in, int64_t n, float* scratch, cudaStream_t stream) {
    sum_partials_kernel<<<REDUCE_BLOCKS, 256, 0, stream>>>(scratch, in, n, false);
    cudaCheckLaunch();
    sum_final_kernel<<<1, 1024, 0, stream>>>(out, scratch, REDUCE_BLOCKS);
    cudaCheckLaunch();
}
void grad_norm_squared(float* norm_sq, const float* g, int64_t n, float* scratch, cudaStream_t stream) {
    sum_partials_kernel<<<REDUCE_BLOCKS, 256, 0, stream>>>(scratch, g, n, true);
    cudaCheckLaunch();
    sum_final_kernel<<<1, 1024, 0, stream>>>(norm_sq, scratch, REDUCE_BLOCKS);
    cudaCheckLaunch();
}

// ==============================================================================================
// the model
// ==============================================================================================

// random N(mean, std) bf16 values from (seed, index), for benchmark models
__global__ void fill_normal_kernel(bf16* out, int64_t n, float mean, float std, uint64_t seed) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const uint64_t h1 = splitmix64(seed ^ splitmix64((uint64_t)i)), h2 = splitmix64(h1);
    const float u1 = ((float)(h1 >> 40) + 1.0f) * (1.0f / 16777217.0f), u2 = (float)(h2 >> 40) * (1.0f / 16777216.0f);
    out[i] = __float2bfloat16(mean + std * sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2));
}
__global__ void f16_to_bf16_kernel(bf16* out, const __half* in, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16(__half2float(in[i]));
}

__global__ void accumulate_kernel(float* acc, const float* v) { acc[0] += v[0]; }

// Carves `count` named regions out of one allocation; sizes in bytes, each region 256-aligned.
static void* carve(void** ptrs[], const size_t sizes[], int count, size_t* total_out) {
    size_t total = 0;
    for (int i = 0; i < count; i++) total += (sizes[i] + 255) & ~(size_t)255;
    void* base = nullptr;
    cudaCheck(cudaMalloc(&base, total == 0 ? 256 : total));
    size_t off = 0;
    for (int i = 0; i < count; i++) {
        *ptrs[i] = sizes[i] ? (char*)base + off : nullptr;
        off += (sizes[i] + 255) & ~(size_t)255;
    }
    *total_out = total;
    return base;
}

static bool is_linear(int id) { return id == W_Q || id == W_K || id == W_V || id == W_O || id == W_GATE || id == W_UP || id == W_DOWN; }
static int target_of_weight(int id) {
    for (int t = 0; t < NUM_LORA_TARGETS; t++)
        if (lora_target_weight(t) == id) return t;
    return -1;
}

void gpu_model_init(GpuModel& m, const Config& cfg, const LoraConfig& lora, int quant, int recompute,
                    int64_t max_tokens) {
    validate_config(cfg, "model");
    m.cfg = cfg;
    m.lora = lora;
    m.quant = quant;
    m.recompute = recompute;
    m.max_tokens = max_tokens;
    m.bytes_allocated = 0;
    cudaCheck(cudaStreamCreate(&m.stream));
    blas_create(m.blas);
    m.bytes_allocated += m.blas.workspace_size;
    const int64_t N = max_tokens, L = cfg.n_layers, C = cfg.dim, F = cfg.hidden_dim, V = cfg.vocab_size;
    const int64_t H = cfg.n_heads, QD = H * cfg.head_dim, KVD = (int64_t)cfg.n_kv_heads * cfg.head_dim;
    const int64_t r = lora.rank;

    // frozen weights, file order; the linears only when they stay bf16
    {
        size_t sizes[NUM_WEIGHTS];
        void** ptrs[NUM_WEIGHTS];
        for (int id = 0; id < NUM_WEIGHTS; id++) {
            sizes[id] = (quant == QUANT_NF4 && is_linear(id)) ? 0 : (size_t)weight_numel(cfg, id) * sizeof(bf16);
            ptrs[id] = (void**)m.w.ptr(id);
        }
        size_t total;
        m.weights_mem = carve(ptrs, sizes, NUM_WEIGHTS, &total);
        if (cfg.tie_embeddings) m.w.lm_head = m.w.embed;
        m.bytes_allocated += total;
    }
    int64_t max_weight = 0;
    for (int t = 0; t < NUM_LORA_TARGETS; t++) max_weight = std::max(max_weight, lora_in_dim(cfg, t) * lora_out_dim(cfg, t));
    if (quant == QUANT_NF4) {
        size_t sizes[NUM_LORA_TARGETS];
        void** ptrs[NUM_LORA_TARGETS];
        for (int t = 0; t < NUM_LORA_TARGETS; t++) {
            m.nf4_record_bytes[t] = nf4_layout(lora_in_dim(cfg, t) * lora_out_dim(cfg, t)).bytes;
            sizes[t] = (size_t)(m.nf4_record_bytes[t] * L);
            ptrs[t] = (void**)&m.nf4_base[t];
        }
        size_t total;
        m.nf4_mem = (uint8_t*)carve(ptrs, sizes, NUM_LORA_TARGETS, &total);
        m.bytes_allocated += total;
    }
    // LoRA state
    if (r > 0) {
        m.lay = lora_layout(cfg, lora);
        const size_t n = (size_t)m.lay.total;
        size_t sizes[] = {n * 4, n * 4, n * 4, n * 4, n * 2};
        void** ptrs[] = {(void**)&m.lora_params, (void**)&m.lora_grads, (void**)&m.adam_m, (void**)&m.adam_v,
                         (void**)&m.lora_bf16};
        size_t total;
        m.lora_mem = carve(ptrs, sizes, 5, &total);
        cudaCheck(cudaMemset(m.lora_mem, 0, total));
        m.bytes_allocated += total;
    } else {
        m.lay = LoraLayout{};
        m.lay.total = 0;
    }
    // activations
    {
        const int64_t S = recompute == RECOMPUTE_FULL ? 1 : L, S_cheap = recompute == RECOMPUTE_NONE ? L : 1;
        GpuActs& a = m.acts;
        size_t sizes[] = {
            (size_t)((L + 1) * N * C) * 2, (size_t)(L * N) * 4, (size_t)(L * N) * 4, (size_t)(S_cheap * N * C) * 2,
            (size_t)(S * N * QD) * 2, (size_t)(S * N * KVD) * 2, (size_t)(S * N * KVD) * 2, (size_t)(S * N * QD) * 2,
            (size_t)(S * H * N) * 4, (size_t)(S * N * C) * 2, (size_t)(S_cheap * N * C) * 2, (size_t)(S * N * F) * 2,
            (size_t)(S * N * F) * 2, (size_t)(S_cheap * N * F) * 2, (size_t)(S * NUM_LORA_TARGETS * N * r) * 2,
            (size_t)(N * C) * 2, (size_t)N * 4, (size_t)(N * C) * 4, (size_t)N * 4};
        void** ptrs[] = {(void**)&a.x,      (void**)&a.rstd_attn, (void**)&a.rstd_mlp, (void**)&a.xn_attn,
                         (void**)&a.q,      (void**)&a.k,         (void**)&a.v,        (void**)&a.ctx,
                         (void**)&a.lse,    (void**)&a.x_mid,     (void**)&a.xn_mlp,   (void**)&a.gate,
                         (void**)&a.up,     (void**)&a.hmid,      (void**)&a.lora_u,   (void**)&a.xn_final,
                         (void**)&a.rstd_final, (void**)&a.dxn_final, (void**)&a.losses};
        static_assert(sizeof(sizes) / sizeof(sizes[0]) == sizeof(ptrs) / sizeof(ptrs[0]), "one size per pointer");
        size_t total;
        m.acts_mem = carve(ptrs, sizes, (int)(sizeof(sizes) / sizeof(sizes[0])), &total);
        m.bytes_allocated += total;
    }
    // scratch
    {
        // the LM head runs in chunks so that a batch's full fp32 logits never exist at once
        m.head_chunk = (int)std::max<int64_t>(1, std::min<int64_t>(N, (256ll << 20) / (V * 6)));
        const int64_t CH = m.head_chunk;
        int64_t max_in = std::max(std::max(C, F), QD);
        GpuScratch& s = m.scr;
        size_t quant_ws = quant == QUANT_NF4 ? (size_t)nf4_quantize_workspace_bytes(max_weight) : 0;
        size_t sizes[] = {(size_t)(CH * V) * 4, (size_t)(CH * V) * 2, (size_t)(N * C) * 4, (size_t)(N * C) * 2,
                          (size_t)(N * C) * 4, (size_t)(N * QD) * 4, (size_t)(N * QD) * 2, (size_t)(H * N) * 4,
                          (size_t)(N * QD) * 2, (size_t)(N * KVD) * 2, (size_t)(N * KVD) * 2, (size_t)(N * F) * 4,
                          (size_t)(N * F) * 2, (size_t)(N * F) * 2, (size_t)(N * max_in) * 2, (size_t)(N * max_in) * 4,
                          (size_t)(N * std::max<int64_t>(r, 1)) * 2, (size_t)max_weight * 2, quant_ws, 1024 * 4, 4, 4, 4};
        void** ptrs[] = {(void**)&s.logits,  (void**)&s.dlogits,  (void**)&s.dres,     (void**)&s.dres_bf16,
                         (void**)&s.dxn,     (void**)&s.dctx,     (void**)&s.dctx_bf16, (void**)&s.delta,
                         (void**)&s.dq,      (void**)&s.dk,       (void**)&s.dv,       (void**)&s.dhmid,
                         (void**)&s.dgate,   (void**)&s.dup,      (void**)&s.lora_xd,  (void**)&s.lora_tmp,
                         (void**)&s.lora_du, (void**)&s.weight,   (void**)&s.quant_ws, (void**)&s.reduce,
                         (void**)&s.loss_sum, (void**)&s.step_loss, (void**)&s.norm_sq};
        static_assert(sizeof(sizes) / sizeof(sizes[0]) == sizeof(ptrs) / sizeof(ptrs[0]), "one size per pointer");
        size_t total;
        m.scratch_mem = carve(ptrs, sizes, (int)(sizeof(sizes) / sizeof(sizes[0])), &total);
        cudaCheck(cudaMemset(m.scratch_mem, 0, total));
        m.bytes_allocated += total;
    }
    // batch
    cudaCheck(cudaMalloc(&m.d_tokens, (size_t)N * 3 * sizeof(int32_t)));
    m.d_targets = m.d_tokens + N;
    m.d_pos = m.d_targets + N;
    m.bytes_allocated += (size_t)N * 3 * sizeof(int32_t);
    for (int i = 0; i < 2; i++) {
        cudaCheck(cudaMallocHost(&m.h_batch[i], (size_t)N * 3 * sizeof(int32_t)));
        cudaCheck(cudaEventCreateWithFlags(&m.h_batch_done[i], cudaEventDisableTiming));
        cudaCheck(cudaEventRecord(m.h_batch_done[i], m.stream));
    }
}

void gpu_model_free(GpuModel& m) {
    cudaCheck(cudaStreamSynchronize(m.stream));
    for (void* p : {m.weights_mem, (void*)m.nf4_mem, m.lora_mem, m.acts_mem, m.scratch_mem, (void*)m.d_tokens})
        if (p) cudaCheck(cudaFree(p));
    for (int i = 0; i < 2; i++) {
        if (m.h_batch[i]) cudaCheck(cudaFreeHost(m.h_batch[i]));
        if (m.h_batch_done[i]) cudaCheck(cudaEventDestroy(m.h_batch_done[i]));
    }
    blas_destroy(m.blas);
    cudaCheck(cudaStreamDestroy(m.stream));
    m = GpuModel{};
}

// Puts one linear weight (rows*cols values of `dtype`, on the device) in place: copied as bf16, or
// quantized to NF4 from its original dtype, exactly as bitsandbytes would quantize it.
static void place_linear(GpuModel& m, int t, int l, const void* src_dev, int32_t dtype, const char* name) {
    const int id = lora_target_weight(t);
    const int64_t n = weight_info(m.cfg, id).numel();
    if (m.quant == QUANT_NF4) {
        Nf4View view = nf4_view(m.nf4_base[t] + l * m.nf4_record_bytes[t], n);
        nf4_quantize_checked_gpu(view, src_dev, dtype, m.scr.quant_ws, name, m.stream);
    } else {
        bf16* dst = *m.w.ptr(id) + l * n;
        if (dtype == DT_BF16) cudaCheck(cudaMemcpyAsync(dst, src_dev, n * 2, cudaMemcpyDeviceToDevice, m.stream));
        else if (dtype == DT_F16) {
            f16_to_bf16_kernel<<<ceil_div(n, 256), 256, 0, m.stream>>>(dst, (const __half*)src_dev, n);
            cudaCheckLaunch();
        } else {
            convert_f32_to_bf16(dst, (const float*)src_dev, n, m.stream);
        }
    }
}

// The bf16 weight of linear t in layer l: direct, or dequantized from NF4 into scratch.
static const bf16* linear_weight(GpuModel& m, int t, int l) {
    const int id = lora_target_weight(t);
    const int64_t n = weight_info(m.cfg, id).numel();
    if (m.quant != QUANT_NF4) return *m.w.ptr(id) + l * n;
    nf4_dequantize_gpu(m.scr.weight, DT_BF16, nf4_view(m.nf4_base[t] + l * m.nf4_record_bytes[t], n), m.stream);
    return m.scr.weight;
}

void gpu_model_set_weights(GpuModel& m, const std::vector<float>& weights_f32) {
    ASSERT((int64_t)weights_f32.size() == total_weight_numel(m.cfg), "weights match the config");
    std::vector<uint16_t> host(weights_f32.size());
    convert_from_f32(host.data(), weights_f32.data(), DT_BF16, host.size());
    bf16* staging = nullptr;
    int64_t max_n = 0;
    for (int id = 0; id < NUM_WEIGHTS; id++) max_n = std::max(max_n, weight_info(m.cfg, id).numel());
    cudaCheck(cudaMalloc(&staging, max_n * 2));
    int64_t off = 0;
    for (int id = 0; id < NUM_WEIGHTS; id++) {
        const int64_t total = weight_numel(m.cfg, id);
        if (total == 0) continue;
        if (!is_linear(id)) {
            cudaCheck(cudaMemcpy(*m.w.ptr(id), host.data() + off, total * 2, cudaMemcpyHostToDevice));
        } else {
            const int64_t n = weight_info(m.cfg, id).numel();
            for (int l = 0; l < m.cfg.n_layers; l++) {
                cudaCheck(cudaMemcpyAsync(staging, host.data() + off + l * n, n * 2, cudaMemcpyHostToDevice, m.stream));
                place_linear(m, target_of_weight(id), l, staging, DT_BF16, weight_hf_name(id, l).c_str());
            }
        }
        off += total;
    }
    cudaCheck(cudaStreamSynchronize(m.stream));
    cudaCheck(cudaFree(staging));
}

// Streams one tensor of one layer at a time through a pinned host buffer. Dense linears are placed
// by place_linear (quantized on the GPU under QUANT_NF4); pre-quantized NF4 records (export_hf
// --dtype nf4) are the very bytes the GPU holds: checked on the host, then copied into place.
void gpu_model_load_file(GpuModel& m, const std::string& path) {
    InFile in(path);
    ModelHeader h = read_model_header(in);
    if (!same_architecture(h.config, m.cfg))
        fail("%s: holds %s, the model was set up for %s", path.c_str(), config_summary(h.config).c_str(),
             config_summary(m.cfg).c_str());
    const bool nf4_file = h.linear_format == LINEAR_NF4;
    // dequantizing to bf16 would train on other weights than the bf16 checkpoint: refuse
    if (nf4_file && m.quant != QUANT_NF4)
        fail("%s: linear weights are pre-quantized to NF4; train with --quant nf4 or export with --dtype bf16",
             path.c_str());
    auto layers_of = [&](int id) { return weight_info(m.cfg, id).per_layer ? m.cfg.n_layers : 1; };
    int64_t max_slice = 0;  // bytes of one layer's slice of a weight, as stored in the file
    for (int id = 0; id < NUM_WEIGHTS; id++) max_slice = std::max(max_slice, model_weight_bytes(h, id) / layers_of(id));
    void *host = nullptr, *staging = nullptr;
    cudaCheck(cudaMallocHost(&host, max_slice));
    cudaCheck(cudaMalloc(&staging, max_slice));
    int64_t off = sizeof(ModelHeader);
    for (int id = 0; id < NUM_WEIGHTS; id++) {
        if (weight_numel(m.cfg, id) == 0) continue;
        const WeightInfo wi = weight_info(m.cfg, id);
        const int64_t slice = model_weight_bytes(h, id) / layers_of(id);
        for (int l = 0; l < layers_of(id); l++, off += slice) {
            const std::string name = weight_hf_name(id, l);
            in.read_at(off, host, slice, name.c_str());
            if (nf4_file && is_linear(id)) {
                const int t = target_of_weight(id);
                ASSERT(slice == m.nf4_record_bytes[t], "a file record has the layout the model allocated");
                check_nf4_record((const uint8_t*)host, wi.numel(), path, name);
                // synchronous (pinned source): the host buffer is free again when it returns
                cudaCheck(cudaMemcpy(m.nf4_base[t] + l * m.nf4_record_bytes[t], host, slice, cudaMemcpyHostToDevice));
                continue;
            }
            cudaCheck(cudaMemcpy(staging, host, slice, cudaMemcpyHostToDevice));
            if (is_linear(id)) {
                place_linear(m, target_of_weight(id), l, staging, h.dtype, name.c_str());
            } else {
                bf16* dst = *m.w.ptr(id) + l * wi.numel();
                if (h.dtype == DT_BF16) cudaCheck(cudaMemcpyAsync(dst, staging, wi.numel() * 2, cudaMemcpyDeviceToDevice, m.stream));
                else if (h.dtype == DT_F16) {
                    f16_to_bf16_kernel<<<ceil_div(wi.numel(), 256), 256, 0, m.stream>>>(dst, (const __half*)staging, wi.numel());
                    cudaCheckLaunch();
                } else {
                    convert_f32_to_bf16(dst, (const float*)staging, wi.numel(), m.stream);
                }
            }
            cudaCheck(cudaStreamSynchronize(m.stream));  // staging is reused by the next tensor
        }
    }
    cudaCheck(cudaFreeHost(host));
    cudaCheck(cudaFree(staging));
}

void gpu_model_random_weights(GpuModel& m, uint64_t seed) {
    const Config& c = m.cfg;
    for (int id = 0; id < NUM_WEIGHTS; id++) {
        const int64_t total = weight_numel(c, id);
        if (total == 0) continue;
        const bool is_norm = id == W_ATTN_NORM || id == W_MLP_NORM || id == W_FINAL_NORM;
        if (!is_linear(id) || m.quant != QUANT_NF4) {
            fill_normal_kernel<<<ceil_div(total, 256), 256, 0, m.stream>>>(*m.w.ptr(id), total, is_norm ? 1.0f : 0.0f,
                                                                          is_norm ? 0.0f : 0.02f, seed + id);
            cudaCheckLaunch();
            continue;
        }
        const int64_t n = weight_info(c, id).numel();
        for (int l = 0; l < c.n_layers; l++) {  // generate into scratch, quantize layer by layer
            fill_normal_kernel<<<ceil_div(n, 256), 256, 0, m.stream>>>(m.scr.weight, n, 0.0f, 0.02f, seed + id * 1000 + l);
            cudaCheckLaunch();
            place_linear(m, target_of_weight(id), l, m.scr.weight, DT_BF16, weight_hf_name(id, l).c_str());
        }
    }
    cudaCheck(cudaStreamSynchronize(m.stream));
}

void gpu_lora_set(GpuModel& m, const std::vector<float>& params) {
    ASSERT((int64_t)params.size() == m.lay.total, "LoRA params match the layout");
    const size_t n = params.size();
    cudaCheck(cudaMemcpy(m.lora_params, params.data(), n * 4, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemset(m.lora_grads, 0, n * 4));
    cudaCheck(cudaMemset(m.adam_m, 0, n * 4));
    cudaCheck(cudaMemset(m.adam_v, 0, n * 4));
    convert_f32_to_bf16(m.lora_bf16, m.lora_params, (int64_t)n, m.stream);
    cudaCheck(cudaStreamSynchronize(m.stream));
}

std::vector<float> gpu_lora_get(GpuModel& m) {
    std::vector<float> out((size_t)m.lay.total);
    cudaCheck(cudaStreamSynchronize(m.stream));
    cudaCheck(cudaMemcpy(out.data(), m.lora_params, out.size() * 4, cudaMemcpyDeviceToHost));
    return out;
}

std::vector<float> gpu_lora_grads_get(GpuModel& m) {
    std::vector<float> out((size_t)m.lay.total);
    cudaCheck(cudaStreamSynchronize(m.stream));
    cudaCheck(cudaMemcpy(out.data(), m.lora_grads, out.size() * 4, cudaMemcpyDeviceToHost));
    return out;
}

void gpu_zero_grads(GpuModel& m) {
    if (m.lay.total) cudaCheck(cudaMemsetAsync(m.lora_grads, 0, (size_t)m.lay.total * 4, m.stream));
    cudaCheck(cudaMemsetAsync(m.scr.step_loss, 0, 4, m.stream));
}

void gpu_lora_state_set(GpuModel& m, const std::vector<float>& params, const std::vector<float>& mom,
                        const std::vector<float>& vel) {
    gpu_lora_set(m, params);
    ASSERT(mom.size() == params.size() && vel.size() == params.size(), "moments match the parameters");
    cudaCheck(cudaMemcpy(m.adam_m, mom.data(), mom.size() * 4, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(m.adam_v, vel.data(), vel.size() * 4, cudaMemcpyHostToDevice));
}

void gpu_lora_state_get(GpuModel& m, std::vector<float>& params, std::vector<float>& mom, std::vector<float>& vel) {
    const size_t n = (size_t)m.lay.total;
    params.resize(n);
    mom.resize(n);
    vel.resize(n);
    cudaCheck(cudaStreamSynchronize(m.stream));
    cudaCheck(cudaMemcpy(params.data(), m.lora_params, n * 4, cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(mom.data(), m.adam_m, n * 4, cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(vel.data(), m.adam_v, n * 4, cudaMemcpyDeviceToHost));
}

void gpu_set_batch(GpuModel& m, int B, int T, const int32_t* tokens, const int32_t* targets, const int32_t* pos) {
    const int64_t N = (int64_t)B * T;
    ASSERT(N > 0 && N <= m.max_tokens, "batch fits the activations (B*T <= max_tokens)");
    // Two pinned staging buffers in turn: this one was last read by the upload two batches ago,
    // long finished, so waiting on its event costs nothing and the step never drains the stream.
    const int i = m.h_batch_next;
    m.h_batch_next ^= 1;
    int32_t* h = m.h_batch[i];
    cudaCheck(cudaEventSynchronize(m.h_batch_done[i]));
    memcpy(h, tokens, N * 4);
    memcpy(h + N, targets, N * 4);
    memcpy(h + 2 * N, pos, N * 4);
    cudaCheck(cudaMemcpyAsync(m.d_tokens, h, N * 4, cudaMemcpyHostToDevice, m.stream));
    cudaCheck(cudaMemcpyAsync(m.d_targets, h + N, N * 4, cudaMemcpyHostToDevice, m.stream));
    cudaCheck(cudaMemcpyAsync(m.d_pos, h + 2 * N, N * 4, cudaMemcpyHostToDevice, m.stream));
    cudaCheck(cudaEventRecord(m.h_batch_done[i], m.stream));
    m.B = B;
    m.T = T;
}

// ----------------------------------------------------------------------------------------------
// forward and backward

// Views of layer l's activations, honouring the recompute slots.
struct LayerView {
    bf16 *x_in, *x_out, *xn_attn, *q, *k, *v, *ctx, *x_mid, *xn_mlp, *gate, *up, *hmid;
    float *rstd_attn, *rstd_mlp, *lse;
    bf16* u[NUM_LORA_TARGETS];
};
static LayerView layer_view(GpuModel& m, int l) {
    const Config& c = m.cfg;
    const int64_t N = (int64_t)m.B * m.T, Nmax = m.max_tokens, C = c.dim, F = c.hidden_dim, H = c.n_heads;
    const int64_t QD = H * c.head_dim, KVD = (int64_t)c.n_kv_heads * c.head_dim, r = m.lora.rank;
    const int64_t s = m.recompute == RECOMPUTE_FULL ? 0 : l, sc = m.recompute == RECOMPUTE_NONE ? l : 0;
    GpuActs& a = m.acts;
    LayerView v;
    // slots are laid out with the capacity (Nmax) so that any batch size fits
    v.x_in = a.x + l * Nmax * C;
    v.x_out = a.x + (l + 1) * Nmax * C;
    v.rstd_attn = a.rstd_attn + l * Nmax;
    v.rstd_mlp = a.rstd_mlp + l * Nmax;
    v.xn_attn = a.xn_attn + sc * Nmax * C;
    v.q = a.q + s * Nmax * QD;
    v.k = a.k + s * Nmax * KVD;
    v.v = a.v + s * Nmax * KVD;
    v.ctx = a.ctx + s * Nmax * QD;
    v.lse = a.lse + s * H * Nmax;
    v.x_mid = a.x_mid + s * Nmax * C;
    v.xn_mlp = a.xn_mlp + sc * Nmax * C;
    v.gate = a.gate + s * Nmax * F;
    v.up = a.up + s * Nmax * F;
    v.hmid = a.hmid + sc * Nmax * F;
    for (int t = 0; t < NUM_LORA_TARGETS; t++) v.u[t] = a.lora_u + (s * NUM_LORA_TARGETS + t) * Nmax * r;
    (void)N;
    return v;
}

static LoraGpuArgs lora_gpu_args(GpuModel& m, const GpuStepOptions& opt, int t, int l) {
    LoraGpuArgs la{nullptr, nullptr, 0, 0.0f, 0.0f, opt.dropout_seed, (uint64_t)l * NUM_LORA_TARGETS + t};
    if (!opt.use_lora || m.lora.rank <= 0 || !m.lora.has(t)) return la;
    const int64_t r = m.lora.rank;
    la.A = m.lora_bf16 + m.lay.a_offset[t] + l * r * lora_in_dim(m.cfg, t);
    la.B = m.lora_bf16 + m.lay.b_offset[t] + l * lora_out_dim(m.cfg, t) * r;
    la.r = (int)r;
    la.scale = m.lora.scaling();
    la.p = opt.training ? m.lora.dropout : 0.0f;
    return la;
}

// y (N, OC) = x W^T (+ accumulate onto y when accumulate) + LoRA
static void linear_forward(GpuModel& m, const GpuStepOptions& opt, bf16* y, bf16* u, const bf16* x, int t, int l,
                           bool accumulate) {
    const int64_t N = (int64_t)m.B * m.T, IC = lora_in_dim(m.cfg, t), OC = lora_out_dim(m.cfg, t);
    matmul(m.blas, y, false, x, false, linear_weight(m, t, l), true, N, OC, IC, 1.0f, accumulate ? 1.0f : 0.0f, m.stream);
    lora_forward(m.blas, y, u, m.scr.lora_xd, x, lora_gpu_args(m, opt, t, l), N, IC, OC, m.stream);
}

// dx (N, IC) fp32 (+)= dy W + LoRA path; LoRA gradients accumulate into m.lora_grads
static void linear_backward(GpuModel& m, const GpuStepOptions& opt, float* dx, const bf16* dy, const bf16* x,
                            const bf16* u, int t, int l, bool accumulate) {
    const int64_t N = (int64_t)m.B * m.T, IC = lora_in_dim(m.cfg, t), OC = lora_out_dim(m.cfg, t);
    matmul(m.blas, dx, true, dy, false, linear_weight(m, t, l), false, N, IC, OC, 1.0f, accumulate ? 1.0f : 0.0f, m.stream);
    LoraGpuArgs la = lora_gpu_args(m, opt, t, l);
    if (!la.A) return;
    const int64_t r = m.lora.rank;
    float* dA = m.lora_grads + m.lay.a_offset[t] + l * r * IC;
    float* dB = m.lora_grads + m.lay.b_offset[t] + l * OC * r;
    lora_backward(m.blas, dx, dA, dB, m.scr.lora_du, m.scr.lora_xd, m.scr.lora_tmp, dy, x, u, la, N, IC, OC, m.stream);
}

// One transformer layer's forward from v.x_in. write_output: also the residual output x_out
// (false when recomputing for the backward).
static void layer_forward(GpuModel& m, const GpuStepOptions& opt, int l, bool write_output) {
    const Config& c = m.cfg;
    const int64_t N = (int64_t)m.B * m.T, C = c.dim, F = c.hidden_dim;
    LayerView v = layer_view(m, l);
    rmsnorm_forward(v.xn_attn, v.rstd_attn, v.x_in, m.w.attn_norm + l * C, N, (int)C, c.norm_eps, m.stream);
    linear_forward(m, opt, v.q, v.u[LT_Q], v.xn_attn, LT_Q, l, false);
    linear_forward(m, opt, v.k, v.u[LT_K], v.xn_attn, LT_K, l, false);
    linear_forward(m, opt, v.v, v.u[LT_V], v.xn_attn, LT_V, l, false);
    rope_forward(v.q, m.d_pos, N, c.n_heads, c.head_dim, c.rope_theta, m.stream);
    rope_forward(v.k, m.d_pos, N, c.n_kv_heads, c.head_dim, c.rope_theta, m.stream);
    attention_forward(v.ctx, v.lse, v.q, v.k, v.v, m.d_pos, m.B, m.T, c.n_heads, c.n_kv_heads, c.head_dim, m.stream);
    // residual add in the matmul's epilogue: x_mid = x_in, then x_mid += ctx Wo^T (+ LoRA)
    cudaCheck(cudaMemcpyAsync(v.x_mid, v.x_in, N * C * 2, cudaMemcpyDeviceToDevice, m.stream));
    linear_forward(m, opt, v.x_mid, v.u[LT_O], v.ctx, LT_O, l, true);
    rmsnorm_forward(v.xn_mlp, v.rstd_mlp, v.x_mid, m.w.mlp_norm + l * C, N, (int)C, c.norm_eps, m.stream);
    linear_forward(m, opt, v.gate, v.u[LT_GATE], v.xn_mlp, LT_GATE, l, false);
    linear_forward(m, opt, v.up, v.u[LT_UP], v.xn_mlp, LT_UP, l, false);
    swiglu_forward(v.hmid, v.gate, v.up, N * F, m.stream);
    if (write_output) {
        cudaCheck(cudaMemcpyAsync(v.x_out, v.x_mid, N * C * 2, cudaMemcpyDeviceToDevice, m.stream));
        linear_forward(m, opt, v.x_out, v.u[LT_DOWN], v.hmid, LT_DOWN, l, true);
    } else {  // recomputing for the backward: x_out is not needed, the down projection's LoRA u is
        lora_u_forward(m.blas, v.u[LT_DOWN], m.scr.lora_xd, v.hmid, lora_gpu_args(m, opt, LT_DOWN, l), N, F, m.stream);
    }
}

void gpu_forward(GpuModel& m, const GpuStepOptions& opt, float* logits_out) {
    const Config& c = m.cfg;
    const int64_t N = (int64_t)m.B * m.T, C = c.dim, V = c.vocab_size;
    ASSERT(N > 0, "gpu_set_batch before gpu_forward");
    ASSERT(!opt.training || m.lora.rank > 0, "training needs LoRA");
    embedding_forward(m.acts.x, m.d_tokens, m.w.embed, N, (int)C, m.stream);
    for (int l = 0; l < c.n_layers; l++) layer_forward(m, opt, l, true);
    // head: final norm, then the LM head and cross-entropy (and their backward) chunk by chunk
    const bf16* x_last = m.acts.x + (int64_t)c.n_layers * m.max_tokens * C;
    rmsnorm_forward(m.acts.xn_final, m.acts.rstd_final, x_last, m.w.final_norm, N, (int)C, c.norm_eps, m.stream);
    for (int64_t n0 = 0; n0 < N; n0 += m.head_chunk) {
        const int64_t n = std::min<int64_t>(m.head_chunk, N - n0);
        matmul(m.blas, m.scr.logits, true, m.acts.xn_final + n0 * C, false, m.w.lm_head, true, n, V, C, 1.0f, 0.0f, m.stream);
        if (logits_out)
            cudaCheck(cudaMemcpyAsync(logits_out + n0 * V, m.scr.logits, n * V * 4, cudaMemcpyDeviceToDevice, m.stream));
        crossentropy_forward_backward(m.acts.losses + n0, opt.training ? m.scr.dlogits : nullptr, m.scr.logits,
                                      m.d_targets + n0, opt.loss_scale, n, (int)V, m.stream);
        if (opt.training)  // dxn_final (n, C) = dlogits (n, V) lm_head (V, C)
            matmul(m.blas, m.acts.dxn_final + n0 * C, true, m.scr.dlogits, false, m.w.lm_head, false, n, C, V, 1.0f, 0.0f,
                   m.stream);
    }
    sum_reduce(m.scr.loss_sum, m.acts.losses, N, m.scr.reduce, m.stream);
    if (opt.training) {
        accumulate_kernel<<<1, 1, 0, m.stream>>>(m.scr.step_loss, m.scr.loss_sum);
        cudaCheckLaunch();
    }
}

void gpu_backward(GpuModel& m, const GpuStepOptions& opt) {
    const Config& c = m.cfg;
    const int64_t N = (int64_t)m.B * m.T, C = c.dim, F = c.hidden_dim;
    ASSERT(opt.training && m.lora.rank > 0, "backward after a training forward, with LoRA");
    GpuScratch& s = m.scr;
    cudaCheck(cudaMemsetAsync(s.dres, 0, N * C * 4, m.stream));
    const bf16* x_last = m.acts.x + (int64_t)c.n_layers * m.max_tokens * C;
    rmsnorm_backward(s.dres, s.dres_bf16, m.acts.dxn_final, x_last, m.acts.rstd_final, m.w.final_norm, N, (int)C, m.stream);
    for (int l = c.n_layers - 1; l >= 0; l--) {
        LayerView v = layer_view(m, l);
        if (m.recompute == RECOMPUTE_FULL) {
            layer_forward(m, opt, l, false);
        } else if (m.recompute == RECOMPUTE_LIGHT) {  // the cheap ops, from the stored inputs and statistics
            rmsnorm_forward(v.xn_attn, v.rstd_attn, v.x_in, m.w.attn_norm + l * C, N, (int)C, c.norm_eps, m.stream);
            rmsnorm_forward(v.xn_mlp, v.rstd_mlp, v.x_mid, m.w.mlp_norm + l * C, N, (int)C, c.norm_eps, m.stream);
            swiglu_forward(v.hmid, v.gate, v.up, N * F, m.stream);
        }
        // MLP: x_out = x_mid + down(silu(gate(xn)) * up(xn)); dres holds d x_out
        linear_backward(m, opt, s.dhmid, s.dres_bf16, v.hmid, v.u[LT_DOWN], LT_DOWN, l, false);
        swiglu_backward(s.dgate, s.dup, s.dhmid, v.gate, v.up, N * F, m.stream);
        linear_backward(m, opt, s.dxn, s.dgate, v.xn_mlp, v.u[LT_GATE], LT_GATE, l, false);
        linear_backward(m, opt, s.dxn, s.dup, v.xn_mlp, v.u[LT_UP], LT_UP, l, true);
        rmsnorm_backward(s.dres, s.dres_bf16, s.dxn, v.x_mid, v.rstd_mlp, m.w.mlp_norm + l * C, N, (int)C, m.stream);
        // attention: x_mid = x_in + o(attention(rope(q), rope(k), v)); dres becomes d x_mid
        linear_backward(m, opt, s.dctx, s.dres_bf16, v.ctx, v.u[LT_O], LT_O, l, false);
        attention_backward(s.dq, s.dk, s.dv, s.dctx_bf16, s.delta, s.dctx, v.ctx, v.lse, v.q, v.k, v.v, m.d_pos, m.B, m.T,
                           c.n_heads, c.n_kv_heads, c.head_dim, m.stream);
        rope_backward(s.dq, m.d_pos, N, c.n_heads, c.head_dim, c.rope_theta, m.stream);
        rope_backward(s.dk, m.d_pos, N, c.n_kv_heads, c.head_dim, c.rope_theta, m.stream);
        linear_backward(m, opt, s.dxn, s.dq, v.xn_attn, v.u[LT_Q], LT_Q, l, false);
        linear_backward(m, opt, s.dxn, s.dk, v.xn_attn, v.u[LT_K], LT_K, l, true);
        linear_backward(m, opt, s.dxn, s.dv, v.xn_attn, v.u[LT_V], LT_V, l, true);
        rmsnorm_backward(s.dres, s.dres_bf16, s.dxn, v.x_in, v.rstd_attn, m.w.attn_norm + l * C, N, (int)C, m.stream);
    }
}

void gpu_optimizer_step(GpuModel& m, float lr, float beta1, float beta2, float eps, float weight_decay, float max_norm,
                        int step) {
    grad_norm_squared(m.scr.norm_sq, m.lora_grads, m.lay.total, m.scr.reduce, m.stream);
    adamw_update(m.lora_params, m.lora_bf16, m.lora_grads, m.adam_m, m.adam_v, m.lay.total, step, lr, beta1, beta2, eps,
                 weight_decay, m.scr.norm_sq, max_norm, m.stream);
}

float gpu_read_loss_sum(GpuModel& m) {
    float v = 0;
    cudaCheck(cudaMemcpyAsync(&v, m.scr.loss_sum, 4, cudaMemcpyDeviceToHost, m.stream));
    cudaCheck(cudaStreamSynchronize(m.stream));
    return v;
}

float gpu_read_step_loss(GpuModel& m) {
    float v = 0;
    cudaCheck(cudaMemcpyAsync(&v, m.scr.step_loss, 4, cudaMemcpyDeviceToHost, m.stream));
    cudaCheck(cudaStreamSynchronize(m.stream));
    return v;
}

double gpu_peak_bf16_flops() {
    cudaDeviceProp p;
    int dev = 0;
    cudaCheck(cudaGetDevice(&dev));
    cudaCheck(cudaGetDeviceProperties(&p, dev));
    // dense bf16 tensor-core peaks from the vendor's datasheets (SXM parts)
    if (strstr(p.name, "H100") || strstr(p.name, "H200")) return 989.4e12;
    if (strstr(p.name, "A100")) return 312e12;
    return 0.0;
}

double gpu_memory_in_use_gib() {
    size_t free_b = 0, total_b = 0;
    cudaCheck(cudaMemGetInfo(&free_b, &total_b));
    return (double)(total_b - free_b) / 1073741824.0;
}

float gpu_read_grad_norm(GpuModel& m) {
    float v = 0;
    cudaCheck(cudaMemcpyAsync(&v, m.scr.norm_sq, 4, cudaMemcpyDeviceToHost, m.stream));
    cudaCheck(cudaStreamSynchronize(m.stream));
    return sqrtf(v);
}
