// kernels/attention.cu — causal flash attention over packed rows with grouped-query attention,
// forward and backward, on the tensor cores. The forward saves only the log-sum-exp of each query;
// the backward recomputes the probabilities from it (three kernels: rowsum(dO * O), then dK/dV per
// key block, then dQ per query block; no atomics, so the gradients are bitwise deterministic).
// CPU twin: cpu::attention_forward / cpu::attention_backward (llama2_cpu.cpp), which keep the whole
// probability matrix. Test: test/gpu_kernels.cu ("kernel attention ..."), racecheck in tools/gpu_check.sh.
#include <climits>

#include "ops.h"

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

