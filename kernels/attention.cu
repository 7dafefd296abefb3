// kernels/attention.cu — causal flash attention over packed rows with grouped-query attention,
// forward and backward, on the tensor cores. The forward saves only the log-sum-exp of each query;
// the backward recomputes the probabilities from it (three kernels: rowsum(dO * O), then dK/dV per
// key block, then dQ per query block; no atomics, so the gradients are bitwise deterministic).
// CPU twin: cpu::attention_forward / cpu::attention_backward (llama2_cpu.cpp), which keep the whole
// probability matrix. Test: test/gpu_kernels.cu ("kernel: flash attention ..."), racecheck in
// tools/gpu_check.sh. Runs on sm_80 and later (mma.sync, ldmatrix, cp.async: no Hopper-only code).
//
// The work, FlashAttention-2's: a block owns a tile of queries (forward, dQ) or keys (dK/dV); the
// other side streams through shared memory in tiles, double-buffered with cp.async so the next
// tile's loads overlap this tile's math; scores, the online softmax and the accumulators stay in
// registers. Fragments come out of shared memory with ldmatrix (.trans where the operand is laid
// out the other way), four 8x8 matrices per instruction.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with .bf16), g = lane/4, c = lane%4:
//   A (16x16, row-major): reg0 = (row g, cols 2c..2c+1), reg1 = (g+8, 2c..), reg2 = (g, 2c+8..), reg3 = (g+8, 2c+8..)
//   B (16x8, "col"):      reg0 = (k 2c..2c+1, col g), reg1 = (k 2c+8.., col g)
//   C (16x8 fp32):        c0,c1 = (row g, cols 2c, 2c+1), c2,c3 = (row g+8, cols 2c, 2c+1)
// Two C tiles side by side (16x16) are exactly one A fragment: this is how P feeds P V.
//
// Masking: query t of a row attends keys [t - pos[t], t]. start(t) = t - pos[t] never decreases
// along a row (it jumps forward at each new conversation), which bounds the key tiles to visit; a
// tile every query of the block sees whole skips the per-element mask.
#include <climits>

#include "ops.h"

namespace att {
constexpr int D = 128;        // head_dim (every Llama 2 size)
constexpr int BK = 64;        // keys per tile; keys per block of the dK/dV kernel (4 warps x 16)
constexpr int LD = D + 8;     // shared-memory row stride in bf16: 272 bytes, rows 4 banks apart,
                              // so the 8 rows of an ldmatrix hit 32 different banks
constexpr int KV_THREADS = 128;  // dK/dV: 4 warps of 16 keys
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;
}  // namespace att

// Starts the copy of rows [t0, t0+ROWS) of one head of a (B, T, n_heads, D) tensor into a shared
// tile; rows >= T are zero (a zero V row times a zero probability must stay zero, never NaN).
template <int ROWS, int THREADS>
__device__ __forceinline__ void load_tile_async(bf16* tile, const bf16* src, int b, int t0, int head, int n_heads, int T) {
    for (int i = threadIdx.x; i < ROWS * (att::D / 8); i += THREADS) {
        const int r = i / (att::D / 8), c8 = i % (att::D / 8), t = t0 + r;
        const bool valid = t < T;
        const bf16* s = src + (((int64_t)b * T + (valid ? t : 0)) * n_heads + head) * att::D + c8 * 8;
        cp_async16(tile + r * att::LD + c8 * 8, s, valid);
    }
}
__device__ __forceinline__ int att_start(const int32_t* pos, int b, int t, int T) { return t - pos[(int64_t)b * T + t]; }

// ----------------------------------------------------------------------------------------------
// forward: 16 * WARPS queries of one (row, head) per block, a warp per 16; keys in tiles of 64

template <int WARPS>
__global__ void __launch_bounds__(WARPS * 32) attention_forward_kernel(bf16* out, float* lse, const bf16* q, const bf16* k,
                                                                      const bf16* v, const int32_t* pos, int T, int H, int KV,
                                                                      float scale_log2) {
    using namespace att;
    constexpr int BQ = 16 * WARPS, Q_THREADS = 32 * WARPS;
    // the last query blocks have the most keys: start them first so the tail of the grid is short
    const int t0 = (gridDim.x - 1 - blockIdx.x) * BQ, h = blockIdx.y, b = blockIdx.z, kvh = h / (H / KV);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    extern __shared__ __align__(16) bf16 smem[];
    bf16* Qs = smem;                // (BQ, LD)
    bf16* Ks = Qs + BQ * LD;        // (2, BK, LD) double buffer
    bf16* Vs = Ks + 2 * BK * LD;    // (2, BK, LD)

    const int t_last = min(t0 + BQ - 1, T - 1);
    const int kb_first = att_start(pos, b, t0, T) / BK, kb_last = t_last / BK;
    const int start_last = att_start(pos, b, t_last, T);  // the largest start in the block
    load_tile_async<BQ, Q_THREADS>(Qs, q, b, t0, h, H, T);
    load_tile_async<BK, Q_THREADS>(Ks, k, b, kb_first * BK, kvh, KV, T);
    load_tile_async<BK, Q_THREADS>(Vs, v, b, kb_first * BK, kvh, KV, T);
    cp_async_commit();

    const int row[2] = {t0 + warp * 16 + g, t0 + warp * 16 + g + 8};
    int start[2];
    for (int i = 0; i < 2; i++) start[i] = row[i] < T ? att_start(pos, b, row[i], T) : row[i] + 1;  // beyond T: no keys
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // running max (log2 units) and partial sum
    float o[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;
    cp_async_wait<0>();
    __syncthreads();
    uint32_t qf[D / 16][4];  // this warp's 16 query rows as A fragments
#pragma unroll
    for (int ks = 0; ks < D / 16; ks++) load_a<LD>(qf[ks], Qs, warp * 16, ks * 16, lane);

    for (int kb = kb_first; kb <= kb_last; kb++) {
        const int buf = (kb - kb_first) & 1, k0 = kb * BK;
        if (kb < kb_last) {  // the next tile streams in while this one is used
            load_tile_async<BK, Q_THREADS>(Ks + (buf ^ 1) * BK * LD, k, b, k0 + BK, kvh, KV, T);
            load_tile_async<BK, Q_THREADS>(Vs + (buf ^ 1) * BK * LD, v, b, k0 + BK, kvh, KV, T);
            cp_async_commit();
        }
        const bf16 *Kt = Ks + buf * BK * LD, *Vt = Vs + buf * BK * LD;
        float s[BK / 8][4];  // scores: 16 rows x 64 keys
#pragma unroll
        for (int nt = 0; nt < BK / 8; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < D / 16; ks++)
#pragma unroll
            for (int np = 0; np < BK / 16; np++) {
                uint32_t bb[4];
                load_b_rows<LD>(bb, Kt, np * 16, ks * 16, lane);
                mma_16816(s[2 * np], qf[ks], bb[0], bb[1]);
                mma_16816(s[2 * np + 1], qf[ks], bb[2], bb[3]);
            }
        // every query of the block sees every key of the tile: no per-element mask
        const bool whole = k0 + BK - 1 <= t0 && k0 >= start_last;
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < BK / 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = k0 + nt * 8 + 2 * c + (e & 1), ri = e / 2;
                s[nt][e] = (whole || (key >= start[ri] && key <= row[ri])) ? s[nt][e] * scale_log2 : -INFINITY;
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
        }
#pragma unroll
        for (int ks = 0; ks < BK / 16; ks++)
#pragma unroll
            for (int np = 0; np < D / 16; np++) {
                uint32_t bb[4];
                load_b_cols<LD>(bb, Vt, ks * 16, np * 16, lane);
                mma_16816(o[2 * np], pf[ks], bb[0], bb[1]);
                mma_16816(o[2 * np + 1], pf[ks], bb[2], bb[3]);
            }
        cp_async_wait<0>();  // the next tile has landed,
        __syncthreads();     // and no warp still reads this one when it is overwritten
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

// ----------------------------------------------------------------------------------------------
// backward

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
// (of every head sharing this kv head) that can see them, 64 at a time, double-buffered.
// Gradients stay in registers; no atomics, so the result is bitwise deterministic.
struct QTileInfo {  // per query of a streamed tile
    float lse2[att::BK];   // log-sum-exp in log2 units
    float delta[att::BK];
    int start[att::BK];    // first visible key (INT_MAX beyond T: sees nothing)
};

__device__ __forceinline__ void load_q_tile_info(QTileInfo* qi, const float* lse, const float* delta,
                                                 const int32_t* pos, int b, int h, int H, int q0, int T) {
    for (int i = threadIdx.x; i < att::BK; i += att::KV_THREADS) {
        const int t = q0 + i;
        const bool ok = t < T;
        qi->lse2[i] = ok ? lse[((int64_t)b * H + h) * T + t] * att::LOG2E : 0.0f;
        qi->delta[i] = ok ? delta[((int64_t)b * H + h) * T + t] : 0.0f;
        qi->start[i] = ok ? att_start(pos, b, t, T) : INT_MAX;
    }
}

__global__ void __launch_bounds__(att::KV_THREADS) attention_backward_dkdv_kernel(
    bf16* dk, bf16* dv, const bf16* dout, const float* lse, const float* delta, const bf16* q, const bf16* k,
    const bf16* v, const int32_t* pos, int T, int H, int KV, float scale_log2, float scale) {
    using namespace att;
    extern __shared__ __align__(16) bf16 smem[];
    bf16 *Ks = smem, *Vs = Ks + BK * LD;
    bf16* Qs = Vs + BK * LD;       // (2, BK, LD)
    bf16* dOs = Qs + 2 * BK * LD;  // (2, BK, LD)
    QTileInfo* info = (QTileInfo*)(dOs + 2 * BK * LD);  // (2)
    // (the first key blocks are seen by the most queries; they come first in the grid anyway)
    const int k0 = blockIdx.x * BK, kvh = blockIdx.y, b = blockIdx.z, group = H / KV;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    const int key[2] = {k0 + warp * 16 + g, k0 + warp * 16 + g + 8};
    const int last_key = min(k0 + BK - 1, T - 1);
    // the query tiles to visit, per head: from the tile holding k0 up to the first whose queries
    // all start their conversation after our last key
    const int q_first = k0;  // BK-aligned
    int q_end = q_first;
    while (q_end < T && att_start(pos, b, q_end, T) <= last_key) q_end += BK;
    const int n_tiles = (q_end - q_first) / BK, total = n_tiles * group;

    load_tile_async<BK, KV_THREADS>(Ks, k, b, k0, kvh, KV, T);
    load_tile_async<BK, KV_THREADS>(Vs, v, b, k0, kvh, KV, T);
    auto issue = [&](int j, int buf) {  // tile j of the (head, query tile) sequence into buffer buf
        const int h = kvh * group + j / n_tiles, q0 = q_first + (j % n_tiles) * BK;
        load_tile_async<BK, KV_THREADS>(Qs + buf * BK * LD, q, b, q0, h, H, T);
        load_tile_async<BK, KV_THREADS>(dOs + buf * BK * LD, dout, b, q0, h, H, T);
        load_q_tile_info(info + buf, lse, delta, pos, b, h, H, q0, T);
    };
    if (total > 0) issue(0, 0);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    float dkacc[D / 8][4], dvacc[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) dkacc[nt][e] = dvacc[nt][e] = 0.0f;

    for (int j = 0; j < total; j++) {
        const int buf = j & 1, q0 = q_first + (j % n_tiles) * BK;
        if (j + 1 < total) {  // the next tile streams in while this one is used
            issue(j + 1, buf ^ 1);
            cp_async_commit();
        }
        const bf16 *Qt = Qs + buf * BK * LD, *dOt = dOs + buf * BK * LD;
        const QTileInfo& qi = info[buf];
        // S^T = K Q^T (16 keys x 64 queries), then P^T
        float st[BK / 8][4];
#pragma unroll
        for (int nt = 0; nt < BK / 8; nt++) st[nt][0] = st[nt][1] = st[nt][2] = st[nt][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < D / 16; ks++) {
            uint32_t kf[4];  // this warp's 16 keys, re-read from shared memory (registers are short here)
            load_a<LD>(kf, Ks, warp * 16, ks * 16, lane);
#pragma unroll
            for (int np = 0; np < BK / 16; np++) {
                uint32_t bb[4];
                load_b_rows<LD>(bb, Qt, np * 16, ks * 16, lane);
                mma_16816(st[2 * np], kf, bb[0], bb[1]);
                mma_16816(st[2 * np + 1], kf, bb[2], bb[3]);
            }
        }
        // the whole tile sees all 64 keys when its first query is past our last key and its last
        // query starts at or before our first key
        const bool whole = q0 >= last_key && qi.start[BK - 1] <= k0 && q0 + BK <= T;
        uint32_t pf[BK / 16][4];
#pragma unroll
        for (int nt = 0; nt < BK / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int qx = nt * 8 + 2 * c + (e & 1), t = q0 + qx, kk = key[e / 2];
                const bool visible = whole || (kk <= t && qi.start[qx] <= kk);
                st[nt][e] = visible ? exp2f(st[nt][e] * scale_log2 - qi.lse2[qx]) : 0.0f;
            }
            pf[nt / 2][(nt & 1) * 2 + 0] = pack_floats(st[nt][0], st[nt][1]);
            pf[nt / 2][(nt & 1) * 2 + 1] = pack_floats(st[nt][2], st[nt][3]);
        }
        // dV += P^T dO
#pragma unroll
        for (int ks = 0; ks < BK / 16; ks++)
#pragma unroll
            for (int np = 0; np < D / 16; np++) {
                uint32_t bb[4];
                load_b_cols<LD>(bb, dOt, ks * 16, np * 16, lane);
                mma_16816(dvacc[2 * np], pf[ks], bb[0], bb[1]);
                mma_16816(dvacc[2 * np + 1], pf[ks], bb[2], bb[3]);
            }
        // dP^T = V dO^T, dS^T = P^T * (dP^T - delta)
        float dpt[BK / 8][4];
#pragma unroll
        for (int nt = 0; nt < BK / 8; nt++) dpt[nt][0] = dpt[nt][1] = dpt[nt][2] = dpt[nt][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < D / 16; ks++) {
            uint32_t vf[4];
            load_a<LD>(vf, Vs, warp * 16, ks * 16, lane);
#pragma unroll
            for (int np = 0; np < BK / 16; np++) {
                uint32_t bb[4];
                load_b_rows<LD>(bb, dOt, np * 16, ks * 16, lane);
                mma_16816(dpt[2 * np], vf, bb[0], bb[1]);
                mma_16816(dpt[2 * np + 1], vf, bb[2], bb[3]);
            }
        }
        uint32_t dsf[BK / 16][4];
#pragma unroll
        for (int nt = 0; nt < BK / 8; nt++) {
            float ds[4];
#pragma unroll
            for (int e = 0; e < 4; e++) ds[e] = st[nt][e] * (dpt[nt][e] - qi.delta[nt * 8 + 2 * c + (e & 1)]);
            dsf[nt / 2][(nt & 1) * 2 + 0] = pack_floats(ds[0], ds[1]);
            dsf[nt / 2][(nt & 1) * 2 + 1] = pack_floats(ds[2], ds[3]);
        }
        // dK += dS^T Q
#pragma unroll
        for (int ks = 0; ks < BK / 16; ks++)
#pragma unroll
            for (int np = 0; np < D / 16; np++) {
                uint32_t bb[4];
                load_b_cols<LD>(bb, Qt, ks * 16, np * 16, lane);
                mma_16816(dkacc[2 * np], dsf[ks], bb[0], bb[1]);
                mma_16816(dkacc[2 * np + 1], dsf[ks], bb[2], bb[3]);
            }
        cp_async_wait<0>();  // the next tile has landed,
        __syncthreads();     // and no warp still reads this one when it is overwritten
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

// dQ for 16 * WARPS queries of one (row, head): recompute P from the saved log-sum-exp,
// dS = P (dP - delta), dQ = dS K scale. A warp per 16 queries; keys and values in tiles of 64,
// double-buffered.
template <int WARPS>
__global__ void __launch_bounds__(WARPS * 32) attention_backward_dq_kernel(
    bf16* dq, const bf16* dout, const float* lse, const float* delta, const bf16* q, const bf16* k, const bf16* v,
    const int32_t* pos, int T, int H, int KV, float scale_log2, float scale) {
    using namespace att;
    constexpr int BQ = 16 * WARPS, Q_THREADS = 32 * WARPS;
    const int t0 = (gridDim.x - 1 - blockIdx.x) * BQ, h = blockIdx.y, b = blockIdx.z, kvh = h / (H / KV);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    extern __shared__ __align__(16) bf16 smem[];
    bf16* Qs = smem;               // (BQ, LD)
    bf16* dOs = Qs + BQ * LD;      // (BQ, LD)
    bf16* Ks = dOs + BQ * LD;      // (2, BK, LD)
    bf16* Vs = Ks + 2 * BK * LD;   // (2, BK, LD)

    const int t_last = min(t0 + BQ - 1, T - 1);
    const int kb_first = att_start(pos, b, t0, T) / BK, kb_last = t_last / BK;
    const int start_last = att_start(pos, b, t_last, T);
    load_tile_async<BQ, Q_THREADS>(Qs, q, b, t0, h, H, T);
    load_tile_async<BQ, Q_THREADS>(dOs, dout, b, t0, h, H, T);
    load_tile_async<BK, Q_THREADS>(Ks, k, b, kb_first * BK, kvh, KV, T);
    load_tile_async<BK, Q_THREADS>(Vs, v, b, kb_first * BK, kvh, KV, T);
    cp_async_commit();

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
    cp_async_wait<0>();
    __syncthreads();
    uint32_t qf[D / 16][4], dof[D / 16][4];  // this warp's 16 queries and their output gradients
#pragma unroll
    for (int ks = 0; ks < D / 16; ks++) {
        load_a<LD>(qf[ks], Qs, warp * 16, ks * 16, lane);
        load_a<LD>(dof[ks], dOs, warp * 16, ks * 16, lane);
    }

    for (int kb = kb_first; kb <= kb_last; kb++) {
        const int buf = (kb - kb_first) & 1, k0 = kb * BK;
        if (kb < kb_last) {  // the next tile streams in while this one is used
            load_tile_async<BK, Q_THREADS>(Ks + (buf ^ 1) * BK * LD, k, b, k0 + BK, kvh, KV, T);
            load_tile_async<BK, Q_THREADS>(Vs + (buf ^ 1) * BK * LD, v, b, k0 + BK, kvh, KV, T);
            cp_async_commit();
        }
        const bf16 *Kt = Ks + buf * BK * LD, *Vt = Vs + buf * BK * LD;
        float s[BK / 8][4], dp[BK / 8][4];
#pragma unroll
        for (int nt = 0; nt < BK / 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[nt][e] = dp[nt][e] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < D / 16; ks++)
#pragma unroll
            for (int np = 0; np < BK / 16; np++) {
                uint32_t bb[4];
                load_b_rows<LD>(bb, Kt, np * 16, ks * 16, lane);
                mma_16816(s[2 * np], qf[ks], bb[0], bb[1]);
                mma_16816(s[2 * np + 1], qf[ks], bb[2], bb[3]);
                load_b_rows<LD>(bb, Vt, np * 16, ks * 16, lane);
                mma_16816(dp[2 * np], dof[ks], bb[0], bb[1]);
                mma_16816(dp[2 * np + 1], dof[ks], bb[2], bb[3]);
            }
        const bool whole = k0 + BK - 1 <= t0 && k0 >= start_last;
        uint32_t dsf[BK / 16][4];
#pragma unroll
        for (int nt = 0; nt < BK / 8; nt++) {
            float ds[4];
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int kk = k0 + nt * 8 + 2 * c + (e & 1), ri = e / 2;
                const bool visible = whole || (kk >= start[ri] && kk <= row[ri]);
                const float p = visible ? exp2f(s[nt][e] * scale_log2 - lse2[ri]) : 0.0f;
                ds[e] = p * (dp[nt][e] - dl[ri]);
            }
            dsf[nt / 2][(nt & 1) * 2 + 0] = pack_floats(ds[0], ds[1]);
            dsf[nt / 2][(nt & 1) * 2 + 1] = pack_floats(ds[2], ds[3]);
        }
#pragma unroll
        for (int ks = 0; ks < BK / 16; ks++)
#pragma unroll
            for (int np = 0; np < D / 16; np++) {
                uint32_t bb[4];
                load_b_cols<LD>(bb, Kt, ks * 16, np * 16, lane);
                mma_16816(dqacc[2 * np], dsf[ks], bb[0], bb[1]);
                mma_16816(dqacc[2 * np + 1], dsf[ks], bb[2], bb[3]);
            }
        cp_async_wait<0>();  // the next tile has landed,
        __syncthreads();     // and no warp still reads this one when it is overwritten
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

// ----------------------------------------------------------------------------------------------
// launchers

static void check_attention_shape(int H, int KV, int D) {
    if (D != att::D) {
        fprintf(stderr, "attention: head_dim %d is not supported on the GPU (the kernels are built for %d)\n", D, att::D);
        exit(1);
    }
    ASSERT(H % KV == 0, "query heads are a multiple of kv heads");
}

// the opt-in above 48 KiB of dynamic shared memory, once per kernel and process
template <typename Kernel>
static void allow_smem(Kernel kernel, size_t bytes, bool& done) {
    if (done) return;
    cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    done = true;
}

constexpr size_t fwd_smem(int warps) { return (size_t)(16 * warps + 4 * att::BK) * att::LD * sizeof(bf16); }
constexpr size_t dq_smem(int warps) { return (size_t)(32 * warps + 4 * att::BK) * att::LD * sizeof(bf16); }
constexpr size_t DKDV_SMEM = (size_t)6 * att::BK * att::LD * sizeof(bf16) + 2 * sizeof(QTileInfo);

// Warps per query block of the forward and dQ kernels: 4 (64 queries) or 8 (128).
static int g_query_warps = 8;
void attention_set_query_warps(int warps) {
    ASSERT(warps == 4 || warps == 8, "4 or 8 warps per query block");
    g_query_warps = warps;
}

template <int WARPS>
static void forward_launch(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, const int32_t* pos, int B,
                           int T, int H, int KV, float scale_log2, cudaStream_t stream) {
    static bool smem_set = false;
    allow_smem(attention_forward_kernel<WARPS>, fwd_smem(WARPS), smem_set);
    attention_forward_kernel<WARPS><<<dim3(ceil_div(T, 16 * WARPS), H, B), 32 * WARPS, fwd_smem(WARPS), stream>>>(
        out, lse, q, k, v, pos, T, H, KV, scale_log2);
    cudaCheckLaunch();
}

template <int WARPS>
static void dq_launch(bf16* dq, const bf16* dout_bf16, const float* lse, const float* delta, const bf16* q, const bf16* k,
                      const bf16* v, const int32_t* pos, int B, int T, int H, int KV, float scale_log2, float scale,
                      cudaStream_t stream) {
    static bool smem_set = false;
    allow_smem(attention_backward_dq_kernel<WARPS>, dq_smem(WARPS), smem_set);
    attention_backward_dq_kernel<WARPS><<<dim3(ceil_div(T, 16 * WARPS), H, B), 32 * WARPS, dq_smem(WARPS), stream>>>(
        dq, dout_bf16, lse, delta, q, k, v, pos, T, H, KV, scale_log2, scale);
    cudaCheckLaunch();
}

void attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, const int32_t* pos, int B,
                       int T, int H, int KV, int D, cudaStream_t stream) {
    check_attention_shape(H, KV, D);
    const float scale_log2 = att::LOG2E / sqrtf((float)D);
    if (g_query_warps == 8) forward_launch<8>(out, lse, q, k, v, pos, B, T, H, KV, scale_log2, stream);
    else forward_launch<4>(out, lse, q, k, v, pos, B, T, H, KV, scale_log2, stream);
}

void attention_backward(bf16* dq, bf16* dk, bf16* dv, bf16* dout_bf16, float* delta, const float* dout, const bf16* out,
                        const float* lse, const bf16* q, const bf16* k, const bf16* v, const int32_t* pos, int B, int T,
                        int H, int KV, int D, cudaStream_t stream) {
    check_attention_shape(H, KV, D);
    static bool dkdv_set = false;
    allow_smem(attention_backward_dkdv_kernel, DKDV_SMEM, dkdv_set);
    const float scale = 1.0f / sqrtf((float)D), scale_log2 = scale * att::LOG2E;
    attention_backward_preprocess_kernel<<<ceil_div((int64_t)B * T * H, 8), 256, 0, stream>>>(dout_bf16, delta, dout, out,
                                                                                            B, T, H);
    cudaCheckLaunch();
    attention_backward_dkdv_kernel<<<dim3(ceil_div(T, att::BK), KV, B), att::KV_THREADS, DKDV_SMEM, stream>>>(
        dk, dv, dout_bf16, lse, delta, q, k, v, pos, T, H, KV, scale_log2, scale);
    cudaCheckLaunch();
    if (g_query_warps == 8) dq_launch<8>(dq, dout_bf16, lse, delta, q, k, v, pos, B, T, H, KV, scale_log2, scale, stream);
    else dq_launch<4>(dq, dout_bf16, lse, delta, q, k, v, pos, B, T, H, KV, scale_log2, scale, stream);
}
