// lora.cu — LoRA on a frozen linear, forward and backward, with dropout on the LoRA input:
//   y = x W^T + s * (drop(x) A^T) B^T,   x (N, IC), A (r, IC), B (OC, r), s = alpha / r.
// The frozen product x W^T is the caller's (a cuBLASLt matmul on bf16 or dequantized NF4 weights);
// this file adds the low-rank path. The dropout mask is a pure function of (seed, layer/target,
// element index) (model.h dropout_keep), so the backward regenerates it instead of storing it.
//
// With dropout on, the three products that touch drop(x) run in this file's own tensor-core
// kernels, which apply the mask to the x tiles in shared memory (u, dA) or to the product (dx):
// u = drop(x) A^T, dA += du^T drop(x) and dx += drop'(du A) (the mask again, on the input
// gradient; for the linears that share an input, q/k/v and gate/up, one pass over dx adds them
// all: lora_backward_dx). Neither the dropped copy of x nor the fp32 du A is ever written to
// memory (that traffic was 13% of a 7B step). Sums over a long axis
// are split across blocks into fp32 partials that a second kernel adds in a fixed order, so the
// results are bitwise reproducible. Without dropout (or at a rank the kernels are not built for:
// r in {16, 32, 64, 128}, in_features a multiple of 64) cuBLASLt does the products.
// CPU twin: cpu::linear_lora_forward / cpu::linear_lora_backward in llama2_cpu.cpp; tested inside
// the whole step (test/gpu_model.cu) and with dropout at fused and plain shapes, alone and three
// linears on one input, in test/gpu_kernels.cu.
#include <algorithm>

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

// ----------------------------------------------------------------------------------------------
// the fused products (dropout > 0). Tiles of 64 x 64; 4 warps; LD = 64 + 8 bf16 (144 bytes: rows
// an odd number of 16-byte units apart, so ldmatrix hits every bank once).

namespace lk {
constexpr int T = 64;          // tile edge (rows of x, and columns of x / A per step)
constexpr int LD = T + 8;
constexpr int THREADS = 128;
constexpr int PARTS_MAX = 16;  // blocks one long sum is split over
constexpr int STAGES = 2;      // tiles in shared memory per block: the next one streams in while this one is used
}  // namespace lk

// drop(x) on a staged tile, in place: Xs (64, LD) holds rows [n0, n0+64) x cols [i0, i0+64) of
// x (N, IC) as copied (rows >= N zero-filled); each kept value is scaled and rounded to bf16 exactly
// as dropout_forward_kernel does, the others become 0. One hash decides four elements (model.h
// dropout_keep4), two an 8-element piece. Masking after the copy lets the copy be asynchronous:
// the next tile streams in while this one is masked and multiplied.
__device__ __forceinline__ void drop_tile(bf16* Xs, int64_t n0, int64_t i0, int64_t N, int64_t IC, uint32_t threshold,
                                          float inv_keep, uint64_t key) {
    constexpr int PER_THREAD = lk::T * (lk::T / 8) / lk::THREADS;  // 4
#pragma unroll
    for (int it = 0; it < PER_THREAD; it++) {
        const int q = threadIdx.x + it * lk::THREADS, r = q / (lk::T / 8), c8 = q % (lk::T / 8);
        const int64_t n = n0 + r;
        if (n >= N) continue;
        bf16* piece = Xs + r * lk::LD + c8 * 8;
        Bf16x8 v = load_bf16x8(piece);
        const uint64_t group = (uint64_t)(n * IC + i0 + c8 * 8) / 4;  // IC % 64 == 0: pieces start on a group
        const uint32_t kept = dropout_keep4(key, group, threshold) | dropout_keep4(key, group + 1, threshold) << 4;
#pragma unroll
        for (int e = 0; e < 8; e++)
            v.v[e] = __float2bfloat16(__bfloat162float(v.v[e]) * ((kept >> e) & 1u ? inv_keep : 0.0f));
        store_bf16x8(piece, v);
    }
}

// rows [r0, r0+ROWS) x cols [c0, c0+COLS) of a row-major (rows, ld_src) bf16 matrix into a shared
// tile of row stride LDS, by cp.async; rows >= n_rows are zero
template <int ROWS, int COLS, int LDS>
__device__ __forceinline__ void load_rows_async(bf16* dst, const bf16* src, int64_t r0, int64_t c0, int64_t n_rows,
                                                int64_t ld_src) {
    for (int q = threadIdx.x; q < ROWS * (COLS / 8); q += lk::THREADS) {
        const int r = q / (COLS / 8), c8 = q % (COLS / 8);
        const bool valid = r0 + r < n_rows;
        cp_async16(dst + r * LDS + c8 * 8, src + (valid ? r0 + r : 0) * ld_src + c0 + c8 * 8, valid);
    }
}

// u (N, R) partials: part[s] (N, R) fp32 = drop(x)[:, split s of IC] A[:, split s]^T.
// grid (ceil(N/64), S); a warp per 16 rows of x; x and A tiles in a STAGES-deep cp.async ring.
template <int R>
constexpr size_t u_smem_bytes() { return (size_t)lk::STAGES * (lk::T + R) * lk::LD * sizeof(bf16); }

template <int R>
__global__ void __launch_bounds__(lk::THREADS) lora_u_dropout_kernel(float* part, const bf16* x, const bf16* A, int64_t N,
                                                                    int64_t IC, int64_t split, float p, uint64_t seed,
                                                                    uint64_t mask_id) {
    using namespace lk;
    extern __shared__ __align__(16) unsigned char u_smem[];
    bf16* Xs = (bf16*)u_smem;           // (STAGES, 64, LD) x tiles
    bf16* As = Xs + STAGES * T * LD;    // (STAGES, R, LD) A tiles
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    const int64_t n0 = (int64_t)blockIdx.x * T, k_begin = blockIdx.y * split, k_end = min(IC, k_begin + split);
    const int64_t tiles = k_end > k_begin ? (k_end - k_begin) / T : 0;
    const float inv_keep = 1.0f / (1.0f - p);
    const uint32_t threshold = dropout_threshold(p);
    const uint64_t key = dropout_key(seed, mask_id);
    auto issue = [&](int64_t tile) {  // one commit group a tile (an empty one past the end keeps the count)
        if (tile < tiles) {
            const int st = (int)(tile % STAGES);
            load_rows_async<R, T, LD>(As + st * R * LD, A, 0, k_begin + tile * T, R, IC);
            load_rows_async<T, T, LD>(Xs + st * T * LD, x, n0, k_begin + tile * T, N, IC);
        }
        cp_async_commit();
    };
    for (int t = 0; t < STAGES - 1; t++) issue(t);
    float acc[R / 8][4] = {};
    for (int64_t tile = 0; tile < tiles; tile++) {
        issue(tile + STAGES - 1);
        cp_async_wait<STAGES - 1>();
        __syncthreads();
        const int st = (int)(tile % STAGES);
        bf16* xs = Xs + st * T * LD;
        const bf16* as = As + st * R * LD;
        drop_tile(xs, n0, k_begin + tile * T, N, IC, threshold, inv_keep, key);
        __syncthreads();
#pragma unroll
        for (int ks = 0; ks < T / 16; ks++) {
            uint32_t a[4];
            load_a<LD>(a, xs, warp * 16, ks * 16, lane);
#pragma unroll
            for (int np = 0; np < R / 16; np++) {
                uint32_t b[4];
                load_b_rows<LD>(b, as, np * 16, ks * 16, lane);
                mma_16816(acc[2 * np], a, b[0], b[1]);
                mma_16816(acc[2 * np + 1], a, b[2], b[3]);
            }
        }
        __syncthreads();  // this stage is refilled by the next iteration's issue
    }
    float* out = part + (int64_t)blockIdx.y * N * R;
#pragma unroll
    for (int ri = 0; ri < 2; ri++) {
        const int64_t n = n0 + warp * 16 + g + 8 * ri;
        if (n >= N) continue;
#pragma unroll
        for (int nt = 0; nt < R / 8; nt++) {
            out[n * R + nt * 8 + 2 * c] = acc[nt][2 * ri];
            out[n * R + nt * 8 + 2 * c + 1] = acc[nt][2 * ri + 1];
        }
    }
}

// out (n) = bf16(sum over s of part[s] (n)), s in order
__global__ void sum_parts_bf16_kernel(bf16* out, const float* part, int parts, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float s = 0.0f;
    for (int k = 0; k < parts; k++) s += part[k * n + i];
    out[i] = __float2bfloat16(s);
}
// out (n) += sum over s of part[s] (n), s in order
__global__ void add_parts_f32_kernel(float* out, const float* part, int parts, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float s = 0.0f;
    for (int k = 0; k < parts; k++) s += part[k * n + i];
    out[i] += s;
}

// dA (R, IC) partials: part[s] (R, IC) fp32 = du[split s of N]^T drop(x)[split s of N].
// grid (IC/64, S); warp w owns the 16-row tiles w, w+4, ... of R; du and x tiles in a cp.async ring.
template <int R>
constexpr size_t da_smem_bytes() { return (size_t)lk::STAGES * lk::T * ((R + 8) + lk::LD) * sizeof(bf16); }

template <int R>
__global__ void __launch_bounds__(lk::THREADS) lora_da_dropout_kernel(float* part, const bf16* du, const bf16* x, int64_t N,
                                                                     int64_t IC, int64_t split, float p, uint64_t seed,
                                                                     uint64_t mask_id) {
    using namespace lk;
    constexpr int LDU = R + 8;            // du tile stride: an odd number of 16-byte units
    constexpr int MT = (R / 16 + 3) / 4;  // 16-row tiles of R per warp
    extern __shared__ __align__(16) unsigned char da_smem[];
    bf16* Ds = (bf16*)da_smem;            // (STAGES, 64, LDU) du rows
    bf16* Xs = Ds + STAGES * T * LDU;     // (STAGES, 64, LD) x tiles
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    const int64_t i0 = (int64_t)blockIdx.x * T, t_begin = blockIdx.y * split, t_end = min(N, t_begin + split);
    const int64_t tiles = t_end > t_begin ? (t_end - t_begin + T - 1) / T : 0;
    const float inv_keep = 1.0f / (1.0f - p);
    const uint32_t threshold = dropout_threshold(p);
    const uint64_t key = dropout_key(seed, mask_id);
    auto issue = [&](int64_t tile) {  // tokens past this split's end read as zero
        if (tile < tiles) {
            const int st = (int)(tile % STAGES);
            load_rows_async<T, R, LDU>(Ds + st * T * LDU, du, t_begin + tile * T, 0, t_end, R);
            load_rows_async<T, T, LD>(Xs + st * T * LD, x, t_begin + tile * T, i0, t_end, IC);
        }
        cp_async_commit();
    };
    for (int t = 0; t < STAGES - 1; t++) issue(t);
    float acc[MT][T / 8][4] = {};
    for (int64_t tile = 0; tile < tiles; tile++) {
        issue(tile + STAGES - 1);
        cp_async_wait<STAGES - 1>();
        __syncthreads();
        const int st = (int)(tile % STAGES);
        const bf16* ds = Ds + st * T * LDU;
        bf16* xs = Xs + st * T * LD;
        drop_tile(xs, t_begin + tile * T, i0, t_end, IC, threshold, inv_keep, key);
        __syncthreads();
#pragma unroll
        for (int ks = 0; ks < T / 16; ks++)
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                const int m0 = (warp + 4 * mt) * 16;
                if (m0 >= R) continue;
                uint32_t a[4];
                load_a_trans<LDU>(a, ds, m0, ks * 16, lane);
#pragma unroll
                for (int np = 0; np < T / 16; np++) {
                    uint32_t b[4];
                    load_b_cols<LD>(b, xs, ks * 16, np * 16, lane);
                    mma_16816(acc[mt][2 * np], a, b[0], b[1]);
                    mma_16816(acc[mt][2 * np + 1], a, b[2], b[3]);
                }
            }
        __syncthreads();  // this stage is refilled by the next iteration's issue
    }
    float* out = part + (int64_t)blockIdx.y * R * IC;
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        const int m0 = (warp + 4 * mt) * 16;
        if (m0 >= R) continue;
#pragma unroll
        for (int ri = 0; ri < 2; ri++) {
            const int64_t rr = m0 + g + 8 * ri;
#pragma unroll
            for (int nt = 0; nt < T / 8; nt++) {
                out[rr * IC + i0 + nt * 8 + 2 * c] = acc[mt][nt][2 * ri];
                out[rr * IC + i0 + nt * 8 + 2 * c + 1] = acc[mt][nt][2 * ri + 1];
            }
        }
    }
}

// dx (N, IC) += sum over the targets t of mask_t * (du_t A_t) / (1 - p): the LoRA paths' input
// gradient through their masks, for the 1-3 targets that read the same x (q, k, v; gate, up; o;
// down), so that dx is read and written once instead of once a target (each pass is 64 MB of fp32
// at 7B). grid (ceil(N/64), IC/64); a warp per 16 rows. Each target's 64x64 product goes through
// shared memory so that the read-modify-write of dx is in whole 16-byte pieces per thread (straight
// from the mma fragments it touched half of every 32-byte sector). The adds onto dx go target by
// target in order, as separate passes would.
constexpr int LORA_DX_MAX_TARGETS = 3;
struct LoraDxTargets {
    const bf16* du[LORA_DX_MAX_TARGETS];  // (N, R) each
    const bf16* A[LORA_DX_MAX_TARGETS];   // (R, IC) each
    uint64_t key[LORA_DX_MAX_TARGETS];    // dropout_key of each target's mask
    int n;
};
template <int R>
__host__ __device__ constexpr size_t dx_in_bytes() { return (size_t)(lk::T * (R + 8) + R * lk::LD) * sizeof(bf16); }
__host__ __device__ constexpr size_t dx_out_bytes() { return (size_t)lk::T * (lk::T + 4) * sizeof(float); }

template <int R>
__global__ void __launch_bounds__(lk::THREADS) lora_dx_dropout_kernel(float* dx, LoraDxTargets tg, int64_t N, int64_t IC,
                                                                     float p) {
    using namespace lk;
    constexpr int LDU = R + 8, LDC = T + 4;  // fp32 rows 16 bytes apart beyond 64 floats: no bank conflicts
    constexpr int PIECES = T * (T / 4) / THREADS;  // float4 pieces of dx per thread (8)
    extern __shared__ __align__(16) unsigned char dx_smem[];
    bf16* Ds = (bf16*)dx_smem;                         // (64, LDU) du rows of the target in hand
    bf16* As = Ds + T * LDU;                           // (R, LD) its A columns of this tile
    float* Cs = (float*)(dx_smem + dx_in_bytes<R>());  // (n, 64, LDC) each target's product
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    const int64_t n0 = (int64_t)blockIdx.x * T, i0 = (int64_t)blockIdx.y * T;
    for (int t = 0; t < tg.n; t++) {
        load_rows_async<T, R, LDU>(Ds, tg.du[t], n0, 0, N, R);
        load_rows_async<R, T, LD>(As, tg.A[t], 0, i0, R, IC);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
        float acc[T / 8][4] = {};
#pragma unroll
        for (int ks = 0; ks < R / 16; ks++) {
            uint32_t a[4];
            load_a<LDU>(a, Ds, warp * 16, ks * 16, lane);
#pragma unroll
            for (int np = 0; np < T / 16; np++) {
                uint32_t b[4];
                load_b_cols<LD>(b, As, ks * 16, np * 16, lane);
                mma_16816(acc[2 * np], a, b[0], b[1]);
                mma_16816(acc[2 * np + 1], a, b[2], b[3]);
            }
        }
        float* cs = Cs + t * T * LDC;
#pragma unroll
        for (int ri = 0; ri < 2; ri++) {
            const int row = warp * 16 + g + 8 * ri;
#pragma unroll
            for (int nt = 0; nt < T / 8; nt++) {
                cs[row * LDC + nt * 8 + 2 * c] = acc[nt][2 * ri];
                cs[row * LDC + nt * 8 + 2 * c + 1] = acc[nt][2 * ri + 1];
            }
        }
        __syncthreads();  // Ds and As are read: the next target's tiles may land
    }
    const float inv_keep = 1.0f / (1.0f - p);
    const uint32_t threshold = dropout_threshold(p);
    float4 d[PIECES];
#pragma unroll
    for (int it = 0; it < PIECES; it++) {  // every piece's load in flight before any math
        const int q = threadIdx.x + it * THREADS, row = q / (T / 4), c4 = q % (T / 4);
        if (n0 + row < N) d[it] = *reinterpret_cast<const float4*>(dx + (n0 + row) * IC + i0 + c4 * 4);
    }
#pragma unroll
    for (int it = 0; it < PIECES; it++) {
        const int q = threadIdx.x + it * THREADS, row = q / (T / 4), c4 = q % (T / 4);
        const int64_t n = n0 + row;
        if (n >= N) continue;
        const int64_t idx = n * IC + i0 + c4 * 4;
        for (int t = 0; t < tg.n; t++) {
            const float* v = Cs + t * T * LDC + row * LDC + c4 * 4;
            const uint32_t kept = dropout_keep4(tg.key[t], (uint64_t)idx / 4, threshold);  // idx % 4 == 0
            if (kept & 1u) d[it].x += v[0] * inv_keep;
            if (kept & 2u) d[it].y += v[1] * inv_keep;
            if (kept & 4u) d[it].z += v[2] * inv_keep;
            if (kept & 8u) d[it].w += v[3] * inv_keep;
        }
        *reinterpret_cast<float4*>(dx + idx) = d[it];
    }
}

// Whether the fused kernels take this product: dropout on, a rank they are built for, rows of x
// that tile by 64, and room for the partial sums in the caller's fp32 scratch (scratch_floats).
static bool g_fused_on = true;  // measured faster than the cuBLASLt path: 42.4 vs 49.0 ms per 7B step on an H200 (docs/perf.md)
void lora_set_fused(bool on) { g_fused_on = on; }

static bool fused(const LoraGpuArgs& la, int64_t N, int64_t IC, int64_t scratch_floats) {
    // (dx is written four floats at a time: its rows start 16-byte aligned when IC % 64 == 0)
    return g_fused_on && la.p > 0.0f && (la.r == 16 || la.r == 32 || la.r == 64 || la.r == 128) && IC % lk::T == 0 &&
           scratch_floats >= (int64_t)la.r * std::max(N, IC) && (uint64_t)N * (uint64_t)IC < (1ull << 62);
}

// How many blocks a sum of `len` (a multiple of 64 after rounding up) is split over, so that
// `blocks` blocks of the other axes become about 528 (four a streaming multiprocessor of a 132-SM
// card, as registers allow: with two, a block's load latency went unhidden), within the scratch.
// A constant, not the card's count: the split fixes the order of the fp32 sums, so the results
// stay the same on every card.
static int split_parts(int64_t len, int64_t blocks, int64_t max_parts) {
    const int64_t tiles = (len + lk::T - 1) / lk::T;
    const int64_t want = (528 + blocks - 1) / blocks;
    const int64_t parts = std::max<int64_t>(1, std::min(std::min(want, tiles), std::min<int64_t>(max_parts, lk::PARTS_MAX)));
    return (int)parts;
}

// dynamic shared memory past the 48 KB default (rank 128), once per kernel
template <typename Kernel>
static bool set_smem(Kernel kernel, size_t bytes) {
    if (bytes > 48 * 1024) cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    return true;
}

template <int R>
static void u_dropout_launch(bf16* u, float* part, const bf16* x, const LoraGpuArgs& la, int64_t N, int64_t IC,
                             int64_t scratch_floats, cudaStream_t stream) {
    const int64_t row_blocks = (N + lk::T - 1) / lk::T;
    const int parts = split_parts(IC, row_blocks, scratch_floats / (N * R));
    const int64_t split = ((IC / lk::T + parts - 1) / parts) * lk::T;
    static const bool smem_set = set_smem(lora_u_dropout_kernel<R>, u_smem_bytes<R>());
    (void)smem_set;
    lora_u_dropout_kernel<R><<<dim3((unsigned)row_blocks, (unsigned)parts), lk::THREADS, u_smem_bytes<R>(), stream>>>(
        part, x, la.A, N, IC, split, la.p, la.seed, la.mask_id);
    cudaCheckLaunch();
    sum_parts_bf16_kernel<<<ceil_div(N * R, 256), 256, 0, stream>>>(u, part, parts, N * R);
    cudaCheckLaunch();
}

template <int R>
static void da_dropout_launch(float* dA, float* part, const bf16* du, const bf16* x, const LoraGpuArgs& la, int64_t N,
                              int64_t IC, int64_t scratch_floats, cudaStream_t stream) {
    const int64_t col_blocks = IC / lk::T;
    const int parts = split_parts(N, col_blocks, scratch_floats / (R * IC));
    const int64_t split = (((N + lk::T - 1) / lk::T + parts - 1) / parts) * lk::T;
    static const bool smem_set = set_smem(lora_da_dropout_kernel<R>, da_smem_bytes<R>());
    (void)smem_set;
    lora_da_dropout_kernel<R><<<dim3((unsigned)col_blocks, (unsigned)parts), lk::THREADS, da_smem_bytes<R>(), stream>>>(
        part, du, x, N, IC, split, la.p, la.seed, la.mask_id);
    cudaCheckLaunch();
    add_parts_f32_kernel<<<ceil_div((int64_t)R * IC, 256), 256, 0, stream>>>(dA, part, parts, (int64_t)R * IC);
    cudaCheckLaunch();
}

template <int R>
static void dx_dropout_launch(float* dx, const LoraDxTargets& tg, float p, int64_t N, int64_t IC, cudaStream_t stream) {
    const size_t smem = dx_in_bytes<R>() + (size_t)tg.n * dx_out_bytes();
    static const bool smem_set = set_smem(lora_dx_dropout_kernel<R>, dx_in_bytes<R>() + LORA_DX_MAX_TARGETS * dx_out_bytes());
    (void)smem_set;
    lora_dx_dropout_kernel<R><<<dim3((unsigned)((N + lk::T - 1) / lk::T), (unsigned)(IC / lk::T)), lk::THREADS, smem, stream>>>(
        dx, tg, N, IC, p);
    cudaCheckLaunch();
}

// ----------------------------------------------------------------------------------------------
// launchers

void lora_u_forward(Blas& bl, bf16* u, bf16* xd, float* scratch, int64_t scratch_floats, const bf16* x,
                    const LoraGpuArgs& la, int64_t N, int64_t IC, cudaStream_t stream) {
    if (!la.A) return;
    if (fused(la, N, IC, scratch_floats)) {
        switch (la.r) {
            case 16: return u_dropout_launch<16>(u, scratch, x, la, N, IC, scratch_floats, stream);
            case 32: return u_dropout_launch<32>(u, scratch, x, la, N, IC, scratch_floats, stream);
            case 64: return u_dropout_launch<64>(u, scratch, x, la, N, IC, scratch_floats, stream);
            default: return u_dropout_launch<128>(u, scratch, x, la, N, IC, scratch_floats, stream);
        }
    }
    const bf16* xin = x;
    if (la.p > 0.0f) {
        dropout_forward(xd, x, la, N, IC, stream);
        xin = xd;
    }
    matmul(bl, u, false, xin, false, la.A, true, N, la.r, IC, 1.0f, 0.0f, stream);  // u (N, r) = drop(x) A^T
}

void lora_forward(Blas& bl, bf16* y, bf16* u, bf16* xd, float* scratch, int64_t scratch_floats, const bf16* x,
                  const LoraGpuArgs& la, int64_t N, int64_t IC, int64_t OC, cudaStream_t stream) {
    if (!la.A) return;
    lora_u_forward(bl, u, xd, scratch, scratch_floats, x, la, N, IC, stream);
    matmul(bl, y, false, u, false, la.B, true, N, OC, la.r, la.scale, 1.0f, stream);  // y += s u B^T
}

bool lora_backward(Blas& bl, float* dx, float* dA, float* dB, bf16* du, bf16* xd, float* tmp, int64_t tmp_floats,
                   const bf16* dy, const bf16* x, const bf16* u, const LoraGpuArgs& la, int64_t N, int64_t IC, int64_t OC,
                   cudaStream_t stream, bool defer_dx) {
    if (!la.A) return false;
    matmul(bl, dB, true, dy, true, u, false, OC, la.r, N, la.scale, 1.0f, stream);    // dB (OC, r) += s dy^T u
    matmul(bl, du, false, dy, false, la.B, false, N, la.r, OC, la.scale, 0.0f, stream);  // du (N, r) = s dy B
    if (fused(la, N, IC, tmp_floats)) {
        switch (la.r) {
            case 16: da_dropout_launch<16>(dA, tmp, du, x, la, N, IC, tmp_floats, stream); break;
            case 32: da_dropout_launch<32>(dA, tmp, du, x, la, N, IC, tmp_floats, stream); break;
            case 64: da_dropout_launch<64>(dA, tmp, du, x, la, N, IC, tmp_floats, stream); break;
            default: da_dropout_launch<128>(dA, tmp, du, x, la, N, IC, tmp_floats, stream); break;
        }
        if (defer_dx) return true;
        lora_backward_dx(dx, 1, &du, &la, N, IC, stream);
        return false;
    }
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
    return false;
}

void lora_backward_dx(float* dx, int n, const bf16* const* du, const LoraGpuArgs* la, int64_t N, int64_t IC,
                      cudaStream_t stream) {
    ASSERT(n >= 1 && n <= LORA_DX_MAX_TARGETS, "1 to 3 LoRA targets share an input");
    LoraDxTargets tg{};
    tg.n = n;
    for (int t = 0; t < n; t++) {
        ASSERT(la[t].A && la[t].r == la[0].r && la[t].p == la[0].p, "the targets of one input share rank and dropout");
        tg.du[t] = du[t];
        tg.A[t] = la[t].A;
        tg.key[t] = dropout_key(la[t].seed, la[t].mask_id);
    }
    switch (la[0].r) {
        case 16: return dx_dropout_launch<16>(dx, tg, la[0].p, N, IC, stream);
        case 32: return dx_dropout_launch<32>(dx, tg, la[0].p, N, IC, stream);
        case 64: return dx_dropout_launch<64>(dx, tg, la[0].p, N, IC, stream);
        default: return dx_dropout_launch<128>(dx, tg, la[0].p, N, IC, stream);
    }
}
