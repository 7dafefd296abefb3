// decode.cu — the GPU Decoder behind ./sample: KV caches on the card (one per slot: up to 16
// sequences), the prompt prefilled in one pass (cuBLASLt, NF4 weights dequantized to bf16 per
// matrix, flash attention from position 0), and decode steps of 1 to 16 sequences on fused
// tensor-core mat-vecs that read the 4-bit weights directly (a 7B NF4 model is ~4 GB per step
// instead of 13.5 GB of bf16), one CUDA graph per batch size. LoRA runs unmerged (its A product
// batched per input, its B product on the same mma as the base weights) or merged into bf16 copies
// of the linears (--merge). Only the (nb, V) logits travel back to the host, where sampling.cpp
// applies Hugging Face's pipeline. A sequence's logits are bitwise the same alone or in a batch.
//
// The base weights follow the model file: a file exported with --dtype nf4 decodes on NF4 (what a
// QLoRA adapter was trained against), a dense file on bf16.
// CPU twin: CpuDecoder (llama2_cpu.cpp); tests: test/gpu_decode.cu; benchmark: bench/bench_decode.cu.
#include <algorithm>
#include <cfloat>
#include <string>
#include <vector>

#include "llama2_gpu.h"
#include "quant.h"
#include "sampling.h"

namespace {

constexpr int MV_THREADS = 256;  // 8 warps, one output row each

struct Nf4Consts {
    float nf4[16];
    float code8[256];
};

// x (cols) into shared memory once per block: every warp of the block reads all of it, and from
// L1/L2 that is 8x the traffic of the weights themselves
__device__ __forceinline__ void stage_x(bf16* xs, const bf16* x, int cols) {
    if (cols % 8 == 0) {  // 16 bytes a thread: a 4096-wide x is two loads per thread, not sixteen
        for (int i = threadIdx.x; i < cols / 8; i += blockDim.x)
            reinterpret_cast<uint4*>(xs)[i] = reinterpret_cast<const uint4*>(x)[i];
    } else {
        for (int i = threadIdx.x; i < cols; i += blockDim.x) xs[i] = x[i];
    }
    __syncthreads();
}

// y (rows) = (accumulate ? y : 0) + scale * W x with W an NF4 record (rows, cols), cols % 8 == 0.
// Each weight is dequantized exactly as nf4_dequantize_gpu does (code8 * scale2 + offset, then
// NF4[c] * absmax, rounded to bf16) before it meets x, so prefill and decode see the same weights.
// A warp takes a row; a lane 8 weights (4 packed bytes, one absmax block) per iteration, reading its
// 8 inputs as one 16-byte load from shared memory: consecutive lanes read consecutive 16 bytes,
// free of bank conflicts (32 weights a lane, tried too, ran 2.3x slower from conflicts).
// Dynamic shared memory: cols bf16 for x.
__global__ void __launch_bounds__(MV_THREADS) matvec_nf4_kernel(bf16* y, const bf16* x, Nf4View W, int rows, int cols,
                                                                float scale, bool accumulate, Nf4Consts consts) {
    extern __shared__ __align__(16) bf16 xs[];
    __shared__ float s_nf4[16], s_code8[256];
    if (threadIdx.x < 16) s_nf4[threadIdx.x] = consts.nf4[threadIdx.x];
    for (int i = threadIdx.x; i < 256; i += blockDim.x) s_code8[i] = consts.code8[i];
    stage_x(xs, x, cols);
    const int row = blockIdx.x * (MV_THREADS / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float offset = *W.offset;
    float acc = 0.0f;
#pragma unroll 4
    for (int c8 = lane; c8 < cols / 8; c8 += 32) {
        const int64_t i = (int64_t)row * cols + (int64_t)c8 * 8;  // 8 weights, one absmax block
        const int64_t b = i / NF4_BLOCK;
        const uint32_t bytes = *reinterpret_cast<const uint32_t*>(W.packed + i / 2);
        const float amax = nf4_block_absmax(s_code8[W.absmax_q[b]], W.scale2[b / NF4_DQ_BLOCK], offset);
        const uint4 xv = *reinterpret_cast<const uint4*>(xs + c8 * 8);
        const bf16* xq = reinterpret_cast<const bf16*>(&xv);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const uint32_t byte = (bytes >> (8 * k)) & 0xffu;  // element 2k in the high nibble
            const float w0 = __bfloat162float(__float2bfloat16_rn(nf4_weight(s_nf4, byte >> 4, amax)));
            const float w1 = __bfloat162float(__float2bfloat16_rn(nf4_weight(s_nf4, byte & 0x0f, amax)));
            acc += w0 * __bfloat162float(xq[2 * k]) + w1 * __bfloat162float(xq[2 * k + 1]);
        }
    }
    acc = warp_sum(acc);
    if (lane == 0) y[row] = __float2bfloat16((accumulate ? __bfloat162float(y[row]) : 0.0f) + scale * acc);
}

// y (rows) = (accumulate ? y : 0) + scale * W x, W bf16 (rows, cols); fp32 or bf16 output
template <typename Out>
__global__ void __launch_bounds__(MV_THREADS) matvec_bf16_kernel(Out* y, const bf16* x, const bf16* W, int rows, int cols,
                                                                 float scale, bool accumulate) {
    extern __shared__ __align__(16) bf16 xs[];
    stage_x(xs, x, cols);
    const int row = blockIdx.x * (MV_THREADS / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const bf16* w = W + (int64_t)row * cols;
    float acc = 0.0f;
    if (cols % 8 == 0) {  // 16-byte loads of the weights
#pragma unroll 4
        for (int c8 = lane; c8 < cols / 8; c8 += 32) {
            const uint4 wv = *reinterpret_cast<const uint4*>(w + c8 * 8), xv = *reinterpret_cast<const uint4*>(xs + c8 * 8);
            const bf16 *ws = reinterpret_cast<const bf16*>(&wv), *xq = reinterpret_cast<const bf16*>(&xv);
#pragma unroll
            for (int k = 0; k < 8; k++) acc += __bfloat162float(ws[k]) * __bfloat162float(xq[k]);
        }
    } else {  // a LoRA B with r = 4, say
        for (int c = lane; c < cols; c += 32) acc += __bfloat162float(w[c]) * __bfloat162float(xs[c]);
    }
    acc = warp_sum(acc);
    if (lane == 0) {
        const float prev = accumulate ? (float)y[row] : 0.0f;
        y[row] = (Out)(prev + scale * acc);
    }
}

// y (rows) as above but one block per row, its warps splitting the columns: for a handful of long
// rows (LoRA's A, r x 4096), where a warp per row would leave the card idle
template <typename Out>
__global__ void __launch_bounds__(MV_THREADS) matvec_bf16_rowblock_kernel(Out* y, const bf16* x, const bf16* W, int rows,
                                                                          int cols, float scale, bool accumulate) {
    __shared__ float red[MV_THREADS / 32];
    const int row = blockIdx.x;
    const bf16* w = W + (int64_t)row * cols;
    float acc = 0.0f;
    if (cols % 8 == 0) {
        for (int c8 = threadIdx.x; c8 < cols / 8; c8 += blockDim.x) {
            const uint4 wv = *reinterpret_cast<const uint4*>(w + c8 * 8), xv = *reinterpret_cast<const uint4*>(x + c8 * 8);
            const bf16 *ws = reinterpret_cast<const bf16*>(&wv), *xq = reinterpret_cast<const bf16*>(&xv);
#pragma unroll
            for (int k = 0; k < 8; k++) acc += __bfloat162float(ws[k]) * __bfloat162float(xq[k]);
        }
    } else {
        for (int c = threadIdx.x; c < cols; c += blockDim.x) acc += __bfloat162float(w[c]) * __bfloat162float(x[c]);
    }
    acc = warp_sum(acc);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        float total = 0.0f;
        for (int i = 0; i < MV_THREADS / 32; i++) total += red[i];  // fixed order: deterministic
        const float prev = accumulate ? (float)y[row] : 0.0f;
        y[row] = (Out)(prev + scale * total);
    }
}

// launchers: x staged in dynamic shared memory (up to 227 KB on Hopper once opted in)
void matvec_nf4(bf16* y, const bf16* x, Nf4View W, int rows, int cols, float scale, bool accumulate, const Nf4Consts& c,
                cudaStream_t stream) {
    const size_t smem = (size_t)cols * 2;
    static size_t opted = 48 << 10;
    if (smem > opted) {
        cudaCheck(cudaFuncSetAttribute(matvec_nf4_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        opted = smem;
    }
    matvec_nf4_kernel<<<(unsigned)((rows + MV_THREADS / 32 - 1) / (MV_THREADS / 32)), MV_THREADS, smem, stream>>>(
        y, x, W, rows, cols, scale, accumulate, c);
    cudaCheckLaunch();
}

template <typename Out>
void matvec_bf16(Out* y, const bf16* x, const bf16* W, int rows, int cols, float scale, bool accumulate, cudaStream_t stream) {
    if (rows < 1024 && cols >= 1024) {  // few long rows: a block each
        matvec_bf16_rowblock_kernel<Out><<<(unsigned)rows, MV_THREADS, 0, stream>>>(y, x, W, rows, cols, scale, accumulate);
        cudaCheckLaunch();
        return;
    }
    const size_t smem = ((size_t)cols * 2 + 15) & ~(size_t)15;
    static size_t opted = 48 << 10;
    if (smem > opted) {
        cudaCheck(cudaFuncSetAttribute(matvec_bf16_kernel<Out>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        opted = smem;
    }
    matvec_bf16_kernel<Out><<<(unsigned)((rows + MV_THREADS / 32 - 1) / (MV_THREADS / 32)), MV_THREADS, smem, stream>>>(
        y, x, W, rows, cols, scale, accumulate);
    cudaCheckLaunch();
}

// Attention of n new queries (positions len .. len+n-1, len = *d_len tokens already cached) over the
// cache (keys 0 .. own position). One block per (query, head): scores into shared memory, softmax,
// then thread d sums p * v[:, d]. scores: dynamic shared memory of max_context (+16) floats.
__global__ void attention_cached_kernel(bf16* out, const bf16* q, const bf16* kc, const bf16* vc, const int* d_len, int H,
                                        int KV, int D, float scale) {
    extern __shared__ float scores[];
    __shared__ float red[32];
    const int qi = blockIdx.x, h = blockIdx.y, kvh = h / (H / KV), p = *d_len + qi;
    const bf16* qv = q + ((int64_t)qi * H + h) * D;
    float mx = -FLT_MAX;
    for (int j = threadIdx.x; j <= p; j += blockDim.x) {
        const bf16* kv = kc + ((int64_t)j * KV + kvh) * D;
        float dot = 0.0f;
        for (int d = 0; d < D; d += 8) {
            const uint4 a = *reinterpret_cast<const uint4*>(qv + d), b = *reinterpret_cast<const uint4*>(kv + d);
            const bf16 *as = reinterpret_cast<const bf16*>(&a), *bs = reinterpret_cast<const bf16*>(&b);
#pragma unroll
            for (int k = 0; k < 8; k++) dot += __bfloat162float(as[k]) * __bfloat162float(bs[k]);
        }
        scores[j] = dot * scale;
        mx = fmaxf(mx, scores[j]);
    }
    // block max and sum (warp shuffles, then one value per warp)
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0) red[warp] = mx;
    __syncthreads();
    mx = -FLT_MAX;
    for (int w = 0; w < n_warps; w++) mx = fmaxf(mx, red[w]);
    __syncthreads();
    float sum = 0.0f;
    for (int j = threadIdx.x; j <= p; j += blockDim.x) {
        scores[j] = expf(scores[j] - mx);
        sum += scores[j];
    }
    sum = warp_sum(sum);
    if (lane == 0) red[warp] = sum;
    __syncthreads();
    sum = 0.0f;
    for (int w = 0; w < n_warps; w++) sum += red[w];
    const float inv = 1.0f / sum;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j <= p; j++) acc += scores[j] * __bfloat162float(vc[((int64_t)j * KV + kvh) * D + d]);
        out[((int64_t)qi * H + h) * D + d] = __float2bfloat16(acc * inv);
    }
}

// rows n of (n, row_elems) into the cache after its *d_len rows
__global__ void cache_store_kernel(bf16* cache, const bf16* src, const int* d_len, int64_t row_elems, int64_t n_elems) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n_elems) cache[(int64_t)*d_len * row_elems + i] = src[i];
}

// ----------------------------------------------------------------------------------------------
// Decoding on tensor cores, 1 to 16 sequences a pass. One launch covers every linear that reads the
// same input (q, k and v; gate and up; o; down), with the LoRA B product and the output's use
// (store, residual add, SwiGLU) in its epilogue, so a layer is ~10 launches instead of ~30.
//
// The work is tiles of 16 output rows. A block's MMA_WARPS warps split a tile's columns (split-K),
// each warp a contiguous range of 64-column absmax blocks, and meet in shared memory. The grid is
// persistent: one block an SM, block i taking tiles i, i + gridDim.x, ..., so the NF4 table and x
// are staged once per SM rather than once per tile. Each warp streams its "chunks" (one absmax
// block of the tile's 16 rows: 512 bytes of codes and 16 absmax, or 2 KB of bf16) through a ring of
// shared-memory stages filled with cp.async, STAGES - 1 chunks ahead and across the block's tiles,
// so the next chunks' loads are in flight while a chunk decodes and while a tile's epilogue runs.
// The decoder stores NF4 codes and absmax grouped for this (nf4_group_kernel): the 8 rows of a
// row group's absmax block are 256 contiguous bytes, so a chunk is two such runs and each cp.async
// of a warp covers whole 128-byte lines (bitsandbytes' row-major order gave a row's 32 bytes a line
// each, and 16 rows meant 16 lines a chunk).
//
// Per chunk a warp issues 4 mma.m16n8k16 per 8 sequences: the weights are the A operand, the
// sequences' x the B operand's columns (column j = sequence j; a batch of one leaves 7 columns zero:
// the tensor cores have room to spare, the point is that they do the multiply-adds and leave the
// ALUs to the 4-bit decode, and that 8 or 16 sequences cost little more than one). The mma's k
// order is permuted so that lane t's k values are 16 contiguous columns (16t .. 16t+15 of the
// block), 8 bytes of packed weights per row; x uses the same permutation, so the dot product is
// unchanged. The NF4 code values go through a 256-entry table (one packed byte -> two bf16) in
// shared memory (the layout below). The block's absmax multiplies the fp32 partial sum of those 64
// columns once, not each weight: NF4[c] * x summed then scaled, which differs from the bf16-rounded
// weights of the prefill path only by that rounding (the decode tests' 2e-2 logits tolerance
// covers it, as before). Sequence j's outputs are the mma's column j and the epilogue's sums for j,
// computed the same way whatever the other columns hold: alone or in a batch, its logits are
// bitwise the same. The grid size does not change any sum: a tile's additions are the same
// whichever block takes it.
//
// History (docs/perf.md): a block per tile of 8 warps loading 4 chunks into registers a round ran at
// 1.2 TB/s; the ring alone changed nothing, the grouped layout gave +10%; ncu then showed 175
// instructions a chunk at 0.53 issued a cycle per scheduler, 3.7 warps a scheduler, a quarter of
// the time in each block's setup. With 16 warps a block, the table's fixed address and the
// programmatic dependent launch the mat-vecs read ~1.7 TB/s; what bounds them now is per launch
// (the table fill, x staging and first DRAM latency of 10-25 us kernels, a tile epilogue a block).
constexpr int MMA_WARPS = 16;
constexpr int MMA_THREADS = MMA_WARPS * 32;
constexpr int MMA_MAX_BATCH = 16;  // two n-tiles of 8 sequences
// x of all the pass's sequences is staged in shared memory up to this size; beyond it (16
// sequences of 4096) the lanes read it from L1/L2, where the warps of an SM share it
constexpr int MMA_X_SMEM_MAX = 32 << 10;
// A ring stage holds one chunk. NF4: the 16 rows' 32 code bytes, then their 16 absmax. bf16: the 16
// rows' 128 bytes at a stride of 144, so that the 8 lanes of a 16-byte shared load phase (4 column
// groups x 2 rows) fall in distinct banks (a 128-byte stride put both rows in the same banks).
constexpr int MMA_CHUNK_NF4 = 16 * 32 + 16 * 4, MMA_ROW_BF16 = 144, MMA_CHUNK_BF16 = 16 * MMA_ROW_BF16;
// stages a warp: NF4 7 x 512 bytes in flight a warp (57 KB an SM), bf16 3 x 2 KB
constexpr int MMA_STAGES_NF4 = 8, MMA_STAGES_BF16 = 4;
enum MvMode { MV_STORE = 0, MV_ADD = 1, MV_SWIGLU = 2, MV_STORE_F32 = 3 };

// The NF4 table: 256 rows of 256 bytes at shared address MMA_LUT_ADDR. Row e holds entry e (packed
// byte e -> (NF4[e >> 4], NF4[e & 15]) as bf16x2, high nibble in the low half) 32 times in its first
// 128 bytes, copy i in bank i, so that lane i reads its own copy free of bank conflicts (a single
// table took ~3.4 wavefronts a lookup). With 256-byte rows at address 0x10000 the shared address of
// byte k of a packed word w's entry is one byte permute, 0x10000 | (byte k of w) << 8 | lane * 4, and
// the lookup a load from it: nothing added (at a base known only at run time, dynamic shared
// memory's, every lookup took an add more). The rows' second halves hold x: sequence j's columns
// 64 b .. 64 b + 63 in the half of row j * cols / 64 + b (x is staged when nb * cols / 64 <= 256, the
// same 32 KB). Below the table: the warps' partial sums; above it: the ring. bf16 instances have
// no table: partial sums, x, ring.
constexpr uint32_t MMA_LUT_ADDR = 0x10000;
constexpr int MMA_LUT_BYTES = 256 * 256;
__device__ __forceinline__ uint32_t mma_lut_lookup(uint32_t w, uint32_t lane4_hi, int k) {
    // lane4_hi = lane * 4 | 0x100: bytes lane * 4, byte k of w, 0x01, 0x00
    const uint32_t addr = __byte_perm(w, lane4_hi, 0x6504u | ((uint32_t)k << 4));
    uint32_t v;  // (not volatile: a pure load the compiler may schedule; it depends on w, read after the table is filled)
    asm("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(addr));
    return v;
}
// dynamic shared memory of a launch: the warps' partial sums (two tiles' worth: see the epilogue),
// the ring, and the table (x in it) or x. The NF4 size assumes nothing of where dynamic shared
// memory starts but that it is below the table's address less the partial sums (the kernel checks).
__host__ __device__ constexpr size_t mma_ring_bytes(bool nf4) {
    return (size_t)MMA_WARPS * (nf4 ? MMA_STAGES_NF4 * MMA_CHUNK_NF4 : MMA_STAGES_BF16 * MMA_CHUNK_BF16);
}
__host__ __device__ constexpr size_t mma_red_bytes(int nt) { return (size_t)2 * MMA_WARPS * 16 * 8 * nt * sizeof(float); }
__host__ __device__ constexpr size_t mma_smem_bytes(bool nf4, int nt) {
    return nf4 ? MMA_LUT_ADDR + MMA_LUT_BYTES + mma_ring_bytes(true) : mma_red_bytes(nt) + MMA_X_SMEM_MAX + mma_ring_bytes(false);
}

struct MvTarget {               // one linear of a fused mat-vec launch
    const uint8_t* codes = nullptr; // NF4 codes (rows, cols / 2) grouped (nf4_group_kernel), with
    const float* absmax = nullptr;  // (rows * cols / 64) their block absmax, decoded and grouped, or
    const bf16* dense = nullptr;// bf16 weights (rows, cols)
    const bf16* lora_b = nullptr;  // (rows, r) LoRA B, or null: no adapter on this linear
    const bf16* lora_u = nullptr;  // (nb, r) A x of this linear, one row per sequence
    bf16* y = nullptr;          // (nb, rows) output (MV_STORE_F32: y32)
    float* y32 = nullptr;
    int rows = 0;
};
struct MvArgs {
    MvTarget t[3];
    int n_targets = 0, cols = 0, r = 0, mode = MV_STORE, nb = 1;  // nb: sequences (columns of x)
    float lora_scale = 0.0f;
    int n_tiles = 0;  // tiles of 16 rows over all targets (SwiGLU: 8 gate + the same 8 up rows)
};

// STAGED: x is in shared memory (nb * cols * 2 <= MMA_X_SMEM_MAX); a template parameter, so that the
// loop holds one x path and not both, predicated (the predicated-off one still issues)
template <bool NF4, int NT, bool STAGED>
__global__ void __launch_bounds__(MMA_THREADS, 1) matvec_mma_kernel(const bf16* __restrict__ x, MvArgs a, const Nf4Consts* __restrict__ consts) {
    constexpr int CH = NF4 ? MMA_CHUNK_NF4 : MMA_CHUNK_BF16, S = NF4 ? MMA_STAGES_NF4 : MMA_STAGES_BF16;
    static_assert((S & (S - 1)) == 0, "ring slots are counted modulo S");
    // chunks in flight past the one being consumed: a round refills the slot its predecessor read.
    // (Consuming two a round, two independent mma chains to interleave, measured no faster.)
    constexpr int AHEAD = S - 1;
    extern __shared__ __align__(16) uint32_t dyn[];
    // every block lets the next launch start (its own prefetch and table need no results of ours)
    pdl_launch_dependents();
    char* const base = reinterpret_cast<char*>(dyn);
    float(*const red)[MMA_WARPS][16][8 * NT] = reinterpret_cast<float(*)[MMA_WARPS][16][8 * NT]>(base);  // (2, warps, 16 rows, sequences)
    char* const front = NF4 ? base + (MMA_LUT_ADDR - smem_addr(dyn)) : base + mma_red_bytes(NT);  // NF4: the table (x in it); bf16: x
    char* const ring = front + (NF4 ? MMA_LUT_BYTES : MMA_X_SMEM_MAX);                            // (warps, S, CH)
    if (NF4 && threadIdx.x == 0 && smem_addr(dyn) + mma_red_bytes(NT) > MMA_LUT_ADDR) __trap();  // the layout above
    const int nb = a.nb, cols = a.cols, nbk = cols / 64;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
    const uint32_t lane4_hi = 4u * lane | 0x100u;  // the lane's table copy (mma_lut_lookup)
    // a warp's chunks are contiguous, so each row is read in runs of 128 bytes and more:
    // interleaving the warps (run length 32 bytes) ran at a sixth of the bandwidth
    const int per_warp = (nbk + MMA_WARPS - 1) / MMA_WARPS, b_begin = warp * per_warp;
    const int n_chunks = max(0, min(nbk, b_begin + per_warp) - b_begin);  // a tile's, this warp's
    const int my_tiles = (int)blockIdx.x < a.n_tiles ? (a.n_tiles - 1 - (int)blockIdx.x) / (int)gridDim.x + 1 : 0;
    const int total = my_tiles * n_chunks;
    char* const my_ring = ring + warp * S * CH;

    // A tile's target and rows. The target's fields are picked with block-uniform selects: indexing
    // a.t[] with a run-time index would copy the whole argument struct to every thread's local
    // memory (it did: 4x slower). In SwiGLU mode rows 0-7 are gate rows, 8-15 the same up rows.
    const bool swiglu = a.mode == MV_SWIGLU;
    const int per = swiglu ? 8 : 16;
    const int tiles0 = (a.t[0].rows + per - 1) / per, tiles1 = (a.t[1].rows + per - 1) / per;
    auto tile_of = [&](int tile, int& ti, int& row_top, int& row_bot) {
        int blk = tile;
        ti = 0;
        if (!swiglu && a.n_targets > 1 && blk >= tiles0) {
            blk -= tiles0, ti = 1;
            if (a.n_targets > 2 && blk >= tiles1) blk -= tiles1, ti = 2;
        }
        row_top = blk * per, row_bot = swiglu ? blk * per : blk * per + 8;
    };
#define MV_PICK(f) (ti == 0 ? a.t[0].f : ti == 1 ? a.t[1].f : a.t[2].f)
#define MV_PICK_BOT(f) (swiglu ? a.t[1].f : MV_PICK(f))

    // The issuing side: the lane's source pointer into the tile being fetched (set once a tile) and
    // a cursor (tile itk of the block, chunk ib of it). A missing row (group) of a partial last tile
    // (a vocabulary of 1000) reads row (group) 0, whose outputs are never stored.
    const char* src = nullptr;          // NF4: the lane's 16 bytes of codes (lanes 0-15 the top group, 16-31 the bottom)
    const float* src_absmax = nullptr;  // NF4, lanes 0-3: 4 absmax of the top (0, 1) or bottom (2, 3) group
    const bf16* src_dense[4] = {};      // bf16: rows 4j + lane / 8, bytes 16 (lane % 8) .. of each chunk
    auto source_rows = [&](int tile) {
        int ti, row_top, row_bot;
        tile_of(tile, ti, row_top, row_bot);
        const int rows = MV_PICK(rows);
        auto row_of = [&](int i) -> int64_t {  // the weight row behind chunk row i
            const int row = i < 8 ? row_top + i : row_bot + i - 8;
            return row < rows ? row : 0;
        };
        if (NF4) {  // grouped: chunk b of group q at (q * nbk + b) * 256 bytes, its absmax at (q * nbk + b) * 8
            const bool top = lane < 16, top_a = (lane & 3) < 2;
            const int64_t grp = row_of(top ? 0 : 8) / 8, grp_a = row_of(top_a ? 0 : 8) / 8;
            src = reinterpret_cast<const char*>(top ? MV_PICK(codes) : MV_PICK_BOT(codes)) + grp * nbk * 256 + 16 * (lane & 15);
            src_absmax = (top_a ? MV_PICK(absmax) : MV_PICK_BOT(absmax)) + grp_a * nbk * 8 + 4 * (lane & 1);
        } else {
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int i = 4 * j + (lane >> 3);
                src_dense[j] = (i < 8 ? MV_PICK(dense) : MV_PICK_BOT(dense)) + row_of(i) * cols + 8 * (lane & 7);
            }
        }
    };
    int issued = 0, itk = 0, ib = 0;
    auto issue = [&]() {  // the next chunk of the warp's stream into its slot; always one commit group
        if (issued < total) {
            char* const slot = my_ring + (issued & (S - 1)) * CH;
            const int b = b_begin + ib;
            if (NF4) {
                cp_async16(slot + 16 * lane, src + b * 256, true);
                if (lane < 4) cp_async16(slot + 512 + 16 * lane, src_absmax + b * 8, true);
            } else {
#pragma unroll
                for (int j = 0; j < 4; j++)
                    cp_async16(slot + (4 * j + (lane >> 3)) * MMA_ROW_BF16 + 16 * (lane & 7), src_dense[j] + b * 64, true);
            }
            issued++;
            if (++ib == n_chunks) {
                ib = 0;
                if (++itk < my_tiles) source_rows((int)blockIdx.x + itk * (int)gridDim.x);
            }
        }
        cp_async_commit();
    };
    // The first AHEAD chunks go out first, and the table is filled, both before waiting for the
    // kernel before this one (weights and table are constants): in a programmatic dependent launch
    // they overlap it.
    if (total > 0) source_rows((int)blockIdx.x);
#pragma unroll
    for (int s = 0; s < AHEAD; s++) issue();
    // the table, from global memory (a kernel argument indexed per thread is read one address at a time)
    if (NF4)
        for (int i = threadIdx.x; i < 256 * 8; i += MMA_THREADS) {  // 4 copies of entry i >> 3 a 16-byte store
            const uint32_t w = pack_floats(consts->nf4[(i >> 3) >> 4], consts->nf4[(i >> 3) & 15]);
            *reinterpret_cast<uint4*>(front + (i >> 3) * 256 + (i & 7) * 16) = make_uint4(w, w, w, w);
        }
    pdl_wait();  // x, u and y are the previous kernels' results
    // x: NF4 into the table rows' second halves, 128 bytes (one absmax block of a sequence) a row
    if (STAGED)
        for (int i = threadIdx.x; i < nb * cols / 8; i += MMA_THREADS) {
            const int j = i / (cols / 8), c8 = i % (cols / 8);
            char* const dst = NF4 ? front + (j * nbk + c8 / 8) * 256 + 128 + (c8 % 8) * 16 : front + (int64_t)i * 16;
            *reinterpret_cast<uint4*>(dst) = reinterpret_cast<const uint4*>(x)[i];
        }
    __syncthreads();
    // byte offset of sequence min(8 nt + g, nb - 1)'s x at the lane's columns of block 0 (a B column
    // past nb reads the last sequence: mma columns are independent, and those are never stored);
    // + 256 (NF4, staged) or 128 a block
    int xo[NT];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        const int j = min(8 * nt + g, nb - 1);
        xo[nt] = STAGED && NF4 ? j * nbk * 256 + 128 + 32 * t : j * cols * 2 + 32 * t;
    }
    const int r = a.r;

    int consumed = 0;
    for (int tk = 0; tk < my_tiles; tk++) {
        int ti, row_top, row_bot;
        tile_of((int)blockIdx.x + tk * (int)gridDim.x, ti, row_top, row_bot);
        const int rows = MV_PICK(rows);
        const int64_t rt = row_top + g < rows ? row_top + g : 0, rb = row_bot + g < rows ? row_bot + g : 0;
        // this thread's output of the tile's epilogue, and in MV_ADD mode the value it adds to, loaded
        // now (at the end its latency was the tile's last wait)
        static_assert(16 * MMA_MAX_BATCH <= MMA_THREADS, "a thread an output");
        const int seq = (int)threadIdx.x % nb, rr = (int)threadIdx.x / nb;  // rr: the row within the tile (SwiGLU: the gate row; up is rr + 8)
        const int64_t row = row_top + rr;                                   // (row_bot = row_top + 8 outside SwiGLU)
        const bool out_ok = (int)threadIdx.x < per * nb && row < rows;
        bf16* const yo = MV_PICK(y);  // in SwiGLU mode only the gate target's y (h) is written
        float* const yo32 = MV_PICK(y32);
        const float y_add = out_ok && a.mode == MV_ADD ? __bfloat162float(yo[(int64_t)seq * rows + row]) : 0.0f;
        float acc[NT][4] = {};
        // The LoRA B product's operands (used at the tile's end, below): those of k-tile kt = warp
        // are loaded now, so that their latency hides behind the tile's chunks (loaded at the end,
        // every tile waited them out, the block's other warps at its barrier).
        const bf16 *lbt = MV_PICK(lora_b), *lbb = MV_PICK_BOT(lora_b);
        const bf16 *lut_u = MV_PICK(lora_u), *lub_u = MV_PICK_BOT(lora_u);
        const bool has_lora = r > 0 && (lbt || lbb);
        // two consecutive bf16 (k, k + 1) of row `row` of a (., r) matrix, zero past r: one 4-byte
        // load for an even rank, two 2-byte loads for an odd one (its pairs are unaligned)
        auto pair = [r](const bf16* m, int64_t row, int k) -> uint32_t {
            if (!m || k >= r) return 0u;
            if (r % 2 == 0) return *reinterpret_cast<const uint32_t*>(m + row * r + k);
            const bf16 lo = m[row * r + k], hi = k + 1 < r ? m[row * r + k + 1] : __float2bfloat16(0.0f);
            return (uint32_t)__bfloat16_as_ushort(lo) | ((uint32_t)__bfloat16_as_ushort(hi) << 16);
        };
        uint32_t lb[4] = {0u, 0u, 0u, 0u}, lu[2][NT][2] = {};  // B (top k0, bottom k0, top k1, bottom k1); u per pass
        if (has_lora && warp * 16 < r) {
            const int k0 = warp * 16 + 2 * t, k1 = k0 + 8;
            lb[0] = pair(lbt, rt, k0), lb[1] = pair(lbb, rb, k0), lb[2] = pair(lbt, rt, k1), lb[3] = pair(lbb, rb, k1);
#pragma unroll
            for (int pass = 0; pass < 2; pass++)
                if (pass == 0 || swiglu) {
                    const bf16* u = pass == 1 ? lub_u : lut_u;
#pragma unroll
                    for (int nt = 0; nt < NT; nt++) {
                        const int seq = 8 * nt + g;
                        lu[pass][nt][0] = seq < nb ? pair(u, seq, k0) : 0u, lu[pass][nt][1] = seq < nb ? pair(u, seq, k1) : 0u;
                    }
                }
        }
        // chunk c of the stream (block b of the tile) into acc
        auto chunk = [&](int c, int b) {
            const char* const slot = my_ring + (c & (S - 1)) * CH;
            uint32_t af[4][4];  // the A fragments of the chunk's 4 k-tiles (m: columns 16t + 4m .. 16t + 4m + 3 of lane t)
            float at = 0.0f, ab = 0.0f;
            if (NF4) {
                const uint2 pt = *reinterpret_cast<const uint2*>(slot + g * 32 + 8 * t);
                const uint2 pb = *reinterpret_cast<const uint2*>(slot + (g + 8) * 32 + 8 * t);
                at = *reinterpret_cast<const float*>(slot + 512 + 4 * g), ab = *reinterpret_cast<const float*>(slot + 512 + 4 * (g + 8));
#pragma unroll
                for (int m = 0; m < 4; m++) {  // bytes 2m, 2m + 1 of the lane's 8: words m / 2, bytes 2 (m % 2) and 2 (m % 2) + 1
                    const uint32_t bt = m < 2 ? pt.x : pt.y, bb = m < 2 ? pb.x : pb.y;
                    const int k = 2 * (m & 1);
                    af[m][0] = mma_lut_lookup(bt, lane4_hi, k), af[m][2] = mma_lut_lookup(bt, lane4_hi, k + 1);
                    af[m][1] = mma_lut_lookup(bb, lane4_hi, k), af[m][3] = mma_lut_lookup(bb, lane4_hi, k + 1);
                }
            } else {
                const uint4* pt = reinterpret_cast<const uint4*>(slot + g * MMA_ROW_BF16 + 32 * t);
                const uint4* pb = reinterpret_cast<const uint4*>(slot + (g + 8) * MMA_ROW_BF16 + 32 * t);
                const uint4 p0 = pt[0], p1 = pt[1], q0 = pb[0], q1 = pb[1];
                const uint32_t wt[8] = {p0.x, p0.y, p0.z, p0.w, p1.x, p1.y, p1.z, p1.w};
                const uint32_t wb[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
#pragma unroll
                for (int m = 0; m < 4; m++) af[m][0] = wt[2 * m], af[m][2] = wt[2 * m + 1], af[m][1] = wb[2 * m], af[m][3] = wb[2 * m + 1];
            }
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                uint4 x0, x1;
                if (STAGED) {
                    const uint4* xp = reinterpret_cast<const uint4*>(front + xo[nt] + b * (NF4 ? 256 : 128));
                    x0 = xp[0], x1 = xp[1];
                } else {
                    const uint4* xp = reinterpret_cast<const uint4*>(reinterpret_cast<const char*>(x) + xo[nt] + b * 128);
                    x0 = __ldg(xp), x1 = __ldg(xp + 1);
                }
                const uint32_t xr[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
                float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                for (int m = 0; m < 4; m++) mma_16816(d, af[m], xr[2 * m], xr[2 * m + 1]);
                // d: (row g, sequences 8nt + 2t, +1), (row g + 8, the same two)
                if (NF4) {
                    acc[nt][0] += at * d[0], acc[nt][1] += at * d[1];
                    acc[nt][2] += ab * d[2], acc[nt][3] += ab * d[3];
                } else {
#pragma unroll
                    for (int i = 0; i < 4; i++) acc[nt][i] += d[i];
                }
            }
        };
        for (int j = 0; j < n_chunks; j++, consumed++) {
            cp_async_wait<AHEAD - 1>();  // this lane's copies of chunk `consumed` have landed,
            __syncwarp();                // and every lane's (the slot refilled next was read last round)
            issue();
            chunk(consumed, b_begin + j);
        }
        // The LoRA B product on the same tensor cores, as r more k values: B (rows, r) is the A
        // operand, u (nb, r) the B operand; warp w takes k-tiles w, w + MMA_WARPS, ... In SwiGLU mode
        // the gate rows (top) and the up rows (bottom) have their own u, so each half is a pass of its
        // own with the other half's weights zero.
        if (has_lora) {
            float dl[NT][4] = {};
            for (int kt = warp; kt * 16 < r; kt += MMA_WARPS) {
                const int k0 = kt * 16 + 2 * t, k1 = k0 + 8;
                const bool first = kt == warp;  // its operands came at the tile's start
                for (int pass = 0; pass < (swiglu ? 2 : 1); pass++) {
                    const bool top = !swiglu || pass == 0, bot = !swiglu || pass == 1;
                    const bf16* u = swiglu && pass == 1 ? lub_u : lut_u;
                    const uint32_t b0 = first ? lb[0] : pair(lbt, rt, k0), b1 = first ? lb[1] : pair(lbb, rb, k0);
                    const uint32_t b2 = first ? lb[2] : pair(lbt, rt, k1), b3 = first ? lb[3] : pair(lbb, rb, k1);
                    const uint32_t af[4] = {top ? b0 : 0u, bot ? b1 : 0u, top ? b2 : 0u, bot ? b3 : 0u};
#pragma unroll
                    for (int nt = 0; nt < NT; nt++) {
                        const int seq = 8 * nt + g;
                        const bool has = seq < nb;
                        const uint32_t u0 = first ? lu[pass][nt][0] : has ? pair(u, seq, k0) : 0u;
                        const uint32_t u1 = first ? lu[pass][nt][1] : has ? pair(u, seq, k1) : 0u;
                        mma_16816(dl[nt], af, u0, u1);
                    }
                }
            }
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int i = 0; i < 4; i++) acc[nt][i] += a.lora_scale * dl[nt][i];
        }
        // Partial sums into this tile's half of red: the next tile writes the other half, and the
        // one after this half again only past the next tile's barrier, which every thread reaches
        // after this tile's epilogue, so one barrier a tile suffices.
        float(*const rd)[16][8 * NT] = red[tk & 1];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            rd[warp][g][8 * nt + 2 * t] = acc[nt][0], rd[warp][g][8 * nt + 2 * t + 1] = acc[nt][1];
            rd[warp][g + 8][8 * nt + 2 * t] = acc[nt][2], rd[warp][g + 8][8 * nt + 2 * t + 1] = acc[nt][3];
        }
        __syncthreads();
        // epilogue: thread i takes output (row i / nb of the tile, sequence i % nb) (at most 16 x 16 of
        // the block's threads); the warps' partials added in a fixed order
        if (out_ok) {
            float v = 0.0f, vu = 0.0f;
            for (int w = 0; w < MMA_WARPS; w++) v += rd[w][rr][seq];
            if (swiglu) {  // rounded as the separate linears and swiglu_forward round them
                for (int w = 0; w < MMA_WARPS; w++) vu += rd[w][rr + 8][seq];
                const float gv = __bfloat162float(__float2bfloat16(v)), uv = __bfloat162float(__float2bfloat16(vu));
                yo[(int64_t)seq * rows + row] = __float2bfloat16(gv / (1.0f + expf(-gv)) * uv);
            } else if (a.mode == MV_STORE_F32) {
                yo32[(int64_t)seq * rows + row] = v;
            } else {
                yo[(int64_t)seq * rows + row] = __float2bfloat16(y_add + v);
            }
        }
    }
#undef MV_PICK
#undef MV_PICK_BOT
}

// The decoder's NF4 layout. Codes: bitsandbytes' (rows, cols / 2) bytes regrouped so that the 32
// bytes of one absmax block of 8 consecutive rows are contiguous: byte c of row i, block b goes to
// ((i / 8) * nbk + b) * 256 + (i % 8) * 32 + c % 32 (nbk = cols / 64; rows % 8 == 0). Absmax: every
// block's absmax decoded once exactly as nf4_dequantize_gpu decodes it (8-bit code -> table ->
// * scale2 + offset), grouped the same way: block (i, b) at ((i / 8) * nbk + b) * 8 + i % 8. The
// mat-vec then reads one float a block instead of a byte, a table lookup and a second-level scale.
__device__ __forceinline__ int64_t nf4_group_index(int64_t i, int64_t b, int64_t nbk) { return ((i / 8) * nbk + b) * 8 + i % 8; }
__global__ void nf4_absmax_kernel(float* absmax, Nf4View w, int64_t n_blocks, int64_t nbk, const Nf4Consts* consts) {
    const int64_t q = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= n_blocks) return;
    absmax[nf4_group_index(q / nbk, q % nbk, nbk)] = nf4_block_absmax(consts->code8[w.absmax_q[q]], w.scale2[q / NF4_DQ_BLOCK], *w.offset);
}
// codes (grouped) from src (bitsandbytes' order), 16 bytes a thread; src and codes distinct
__global__ void nf4_group_kernel(uint8_t* codes, const uint8_t* src, int64_t n16, int64_t nbk) {
    const int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;  // 16-byte piece p: row p / (2 nbk), block (p / 2) % nbk
    if (p >= n16) return;
    const int64_t row = p / (2 * nbk), b = (p / 2) % nbk;
    reinterpret_cast<uint4*>(codes)[nf4_group_index(row, b, nbk) * 2 + (p & 1)] = reinterpret_cast<const uint4*>(src)[p];
}
// W (rows, cols) bf16 from the grouped layout, exactly as nf4_dequantize_gpu dequantizes the
// original (NF4[c] * absmax with mul.ftz, rounded to bf16): for the prefill's GEMMs. A thread takes
// 4 bytes (8 weights, one 16-byte store).
__global__ void nf4_dequantize_grouped_kernel(bf16* W, const uint8_t* codes, const float* absmax, int64_t n_words, int64_t nbk,
                                              const Nf4Consts* consts) {
    const int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;  // 4-byte word p of bitsandbytes' order
    if (p >= n_words) return;
    const int64_t row = p / (8 * nbk), b = (p / 8) % nbk, gi = nf4_group_index(row, b, nbk);
    const uint32_t word = *reinterpret_cast<const uint32_t*>(codes + gi * 32 + (p % 8) * 4);
    const float am = absmax[gi];
    alignas(16) bf16 v[8];
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const uint32_t byte = (word >> (8 * k)) & 0xffu;
        v[2 * k] = __float2bfloat16(nf4_weight(consts->nf4, byte >> 4, am));
        v[2 * k + 1] = __float2bfloat16(nf4_weight(consts->nf4, byte & 15, am));
    }
    reinterpret_cast<uint4*>(W)[p] = *reinterpret_cast<const uint4*>(v);
}

// the dynamic shared memory the mat-vec asks for (past the default 48 KB), set once before any
// launch or graph capture
template <bool NF4, int NT, bool STAGED>
void matvec_mma_allow_smem() {
    cudaCheck(cudaFuncSetAttribute(matvec_mma_kernel<NF4, NT, STAGED>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)mma_smem_bytes(NF4, NT)));
}
// False where the card cannot give a block the shared memory the fused mat-vec needs (~200 KB:
// Hopper's 227 KB can, an A100's 163 KB or an RTX 30/40's 99 KB cannot); the decoder then takes its
// generic path.
bool matvec_mma_setup() {
    static int ok = -1;
    if (ok >= 0) return ok == 1;
    int dev = 0, optin = 0;
    cudaCheck(cudaGetDevice(&dev));
    cudaCheck(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    const size_t need = std::max({mma_smem_bytes(true, 1), mma_smem_bytes(true, 2), mma_smem_bytes(false, 1), mma_smem_bytes(false, 2)});
    ok = (size_t)optin >= need ? 1 : 0;
    if (!ok) return false;
    matvec_mma_allow_smem<true, 1, true>(), matvec_mma_allow_smem<true, 1, false>();
    matvec_mma_allow_smem<true, 2, true>(), matvec_mma_allow_smem<true, 2, false>();
    matvec_mma_allow_smem<false, 1, true>(), matvec_mma_allow_smem<false, 1, false>();
    matvec_mma_allow_smem<false, 2, true>(), matvec_mma_allow_smem<false, 2, false>();
    return true;
}

// max_blocks: a cap on the persistent grid (0: one block an SM), for tests
void matvec_mma(const bf16* x, MvArgs a, bool nf4, const Nf4Consts* c, int max_blocks, cudaStream_t stream) {
    ASSERT(a.nb >= 1 && a.nb <= MMA_MAX_BATCH, "the fused mat-vec takes 1 .. 16 sequences");
    int tiles = a.mode == MV_SWIGLU ? (int)ceil_div((int64_t)a.t[0].rows, (int64_t)8) : 0;  // SwiGLU: 8 gate + the same 8 up rows a tile
    if (a.mode != MV_SWIGLU)
        for (int i = 0; i < a.n_targets; i++) tiles += (int)ceil_div((int64_t)a.t[i].rows, (int64_t)16);
    a.n_tiles = tiles;
    ASSERT(a.cols <= (48 << 10) && a.cols % 64 == 0, "the fused mat-vec takes whole 64-column blocks, at most 49152");
    static int sms = 0;
    if (sms == 0) {
        int dev = 0;
        cudaCheck(cudaGetDevice(&dev));
        cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    }
    const int grid = std::min(tiles, max_blocks > 0 ? std::min(max_blocks, sms) : sms);
    const bool two = a.nb > 8, staged = (int64_t)a.nb * a.cols * 2 <= MMA_X_SMEM_MAX;
    const size_t smem = mma_smem_bytes(nf4, two ? 2 : 1);
    using Kernel = void (*)(const bf16*, MvArgs, const Nf4Consts*);
    const Kernel kernels[2][2][2] = {{{matvec_mma_kernel<false, 1, false>, matvec_mma_kernel<false, 1, true>},
                                      {matvec_mma_kernel<false, 2, false>, matvec_mma_kernel<false, 2, true>}},
                                     {{matvec_mma_kernel<true, 1, false>, matvec_mma_kernel<true, 1, true>},
                                      {matvec_mma_kernel<true, 2, false>, matvec_mma_kernel<true, 2, true>}}};
    // a programmatic dependent launch: its prefetch and table overlap the kernel before it
    launch_kernel(true, kernels[nf4][two][staged], dim3((unsigned)grid), dim3(MMA_THREADS), smem, stream, x, a, c);
}

// u (n, nb, r) bf16: u[m][j][i] = A_m[i] . x_j for the n <= 3 LoRA A matrices (r, cols) that read
// the same x (nb, cols): one block per (row i, matrix m). Each thread takes the same 16-byte pieces
// of the row for every sequence and sums them in the same order, so a sequence's u does not depend
// on nb (one sequence and several take two loop shapes with the same additions in the same order).
// The row's pieces are all loaded before any sum; then one sequence loads all of its x pieces
// together, several sequences load piece by piece, every sequence's x of a piece together. A loop
// of load-then-add per piece waited out one memory latency per piece (ncu: 7-11 us a launch for
// 1-1.6 MB, 128 launches a token; now 3.4-3.8), and a loop over sequences one latency per
// sequence (11-15 us at 16 sequences; now 10).
constexpr int LORA_A_THREADS = 256, LORA_A_PIECES = 6;  // pieces of 8 columns a thread a round: 12288 columns
__global__ void __launch_bounds__(LORA_A_THREADS) lora_a_kernel(bf16* u, const bf16* __restrict__ x, const bf16* A0,
                                                                const bf16* A1, const bf16* A2, int r, int cols, int nb,
                                                                int64_t m_stride) {
    __shared__ float red[LORA_A_THREADS / 32][MMA_MAX_BATCH];
    pdl_launch_dependents();  // the fused mat-vec after it prefetches its weights meanwhile
    const int i = blockIdx.x, m = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32, n8 = cols / 8;
    const bf16* A = (m == 0 ? A0 : m == 1 ? A1 : A2) + (int64_t)i * cols;
    float s[MMA_MAX_BATCH] = {};
    for (int base = threadIdx.x; base < n8; base += LORA_A_THREADS * LORA_A_PIECES) {
        uint4 w[LORA_A_PIECES];
#pragma unroll
        for (int k = 0; k < LORA_A_PIECES; k++) {
            const int c8 = base + k * LORA_A_THREADS;
            w[k] = c8 < n8 ? __ldg(reinterpret_cast<const uint4*>(A) + c8) : make_uint4(0, 0, 0, 0);
        }
        if (base == (int)threadIdx.x) pdl_wait();  // the first row pieces (constants) are in flight; x is a result
        if (nb == 1) {  // all of the row's x pieces together
            uint4 xv[LORA_A_PIECES];
#pragma unroll
            for (int k = 0; k < LORA_A_PIECES; k++) {
                const int c8 = base + k * LORA_A_THREADS;
                xv[k] = c8 < n8 ? __ldg(reinterpret_cast<const uint4*>(x) + c8) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int k = 0; k < LORA_A_PIECES; k++)
                if (base + k * LORA_A_THREADS < n8) {
                    const bf16 *wv = reinterpret_cast<const bf16*>(&w[k]), *xe = reinterpret_cast<const bf16*>(&xv[k]);
#pragma unroll
                    for (int e = 0; e < 8; e++) s[0] += __bfloat162float(wv[e]) * __bfloat162float(xe[e]);
                }
            continue;
        }
#pragma unroll
        for (int k = 0; k < LORA_A_PIECES; k++) {  // a piece at a time, the loads of all the sequences' x together
            const int c8 = base + k * LORA_A_THREADS;
            if (c8 >= n8) break;
            uint4 xv[MMA_MAX_BATCH];
#pragma unroll
            for (int j = 0; j < MMA_MAX_BATCH; j++)
                if (j < nb) xv[j] = __ldg(reinterpret_cast<const uint4*>(x + (int64_t)j * cols) + c8);
            const bf16* wv = reinterpret_cast<const bf16*>(&w[k]);
#pragma unroll
            for (int j = 0; j < MMA_MAX_BATCH; j++)
                if (j < nb) {
                    const bf16* xe = reinterpret_cast<const bf16*>(&xv[j]);
#pragma unroll
                    for (int e = 0; e < 8; e++) s[j] += __bfloat162float(wv[e]) * __bfloat162float(xe[e]);
                }
        }
    }
    pdl_wait();  // (threads without a piece too, before u is written: the kernel before may read it)
#pragma unroll
    for (int j = 0; j < MMA_MAX_BATCH; j++) {
        if (j >= nb) break;
        const float t = warp_sum(s[j]);
        if (lane == 0) red[warp][j] = t;
    }
    __syncthreads();
    if (threadIdx.x < nb) {
        const int j = threadIdx.x;
        float t = 0.0f;
        for (int w = 0; w < LORA_A_THREADS / 32; w++) t += red[w][j];  // fixed order
        u[m * m_stride + (int64_t)j * r + i] = __float2bfloat16(t);  // bf16, as the prefill's u
    }
}

// RoPE of each sequence's new q (in place) and k, then k and v into that sequence's cache at row
// pos[j] (its length): one thread per rotated pair (i, i + D/2) of a q or k head of a sequence; the
// angle as rope_kernel computes it. q (nb, H*D), k and v (nb, KV*D); the caches of slot s start at
// kc + s * slot_stride.
__global__ void rope_store_kernel(bf16* q, const bf16* k, const bf16* v, bf16* kc, bf16* vc, const int32_t* pos,
                                  const int32_t* slot, int64_t slot_stride, int nb, int H, int KV, int D, float theta) {
    const int half = D / 2, per_seq = (H + KV) * half, idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= nb * per_seq) return;
    const int j = idx / per_seq, head = idx % per_seq / half, i = idx % half;
    const float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)D);
    float s, c;
    sincosf((float)pos[j] * inv_freq, &s, &c);
    const int64_t row = (int64_t)slot[j] * slot_stride + (int64_t)pos[j] * KV * D;
    bf16* qj = q + (int64_t)j * H * D;
    const bf16 *kj = k + (int64_t)j * KV * D, *vj = v + (int64_t)j * KV * D;
    const bf16* src = head < H ? qj + (int64_t)head * D : kj + (int64_t)(head - H) * D;
    const float x0 = __bfloat162float(src[i]), x1 = __bfloat162float(src[i + half]);
    const bf16 r0 = __float2bfloat16(x0 * c - x1 * s), r1 = __float2bfloat16(x1 * c + x0 * s);
    if (head < H) {
        qj[(int64_t)head * D + i] = r0, qj[(int64_t)head * D + i + half] = r1;
    } else {
        const int64_t o = row + (int64_t)(head - H) * D;
        kc[o + i] = r0, kc[o + i + half] = r1;
        vc[o + i] = vj[(int64_t)(head - H) * D + i], vc[o + i + half] = vj[(int64_t)(head - H) * D + i + half];
    }
}

// Split-K (flash-decoding) attention of each sequence's new query over its cache: block (split s,
// head h, sequence j) takes keys [s*chunk, (s+1)*chunk) up to the query's own position pos[j] and
// leaves its max, sum of exp and unnormalized output; attention_combine_kernel merges the splits.
// The grid covers the whole context (it is captured in a graph once); splits past the position
// return at once. A thread scores one key (16-byte loads of its row); then each warp sums the
// values of a quarter of the keys, a lane 4 of the D dimensions, and the warps meet in shared
// memory. Needs D % 8 == 0, D <= 128. part_o (nb, H, splits, D), part_ml (nb, H, splits, 2).
// (64 keys a block, the score and value loops unrolled whole, measured slower: 14.9 against 10.7
// us a layer at ~130 positions.)
constexpr int ATT_CHUNK = 128, ATT_THREADS = 128;
__global__ void __launch_bounds__(ATT_THREADS) attention_split_kernel(float* part_o, float* part_ml, const bf16* q,
                                                                      const bf16* kc_all, const bf16* vc_all, const int32_t* pos,
                                                                      const int32_t* slot, int64_t slot_stride, int H, int KV,
                                                                      int D, int splits, float scale) {
    __shared__ float sc[ATT_CHUNK];
    __shared__ float qs[128];
    __shared__ float red[32];
    __shared__ float po[ATT_THREADS / 32][128];
    const int s = blockIdx.x, h = blockIdx.y, j = blockIdx.z, kvh = h / (H / KV), p = pos[j];
    const bf16 *kc = kc_all + (int64_t)slot[j] * slot_stride, *vc = vc_all + (int64_t)slot[j] * slot_stride;
    const int j0 = s * ATT_CHUNK, j1 = min(j0 + ATT_CHUNK, p + 1), n = j1 - j0;
    const int64_t part = ((int64_t)j * H + h) * splits + s;
    float* ml = part_ml + part * 2;
    if (n <= 0) {
        if (threadIdx.x == 0) ml[0] = -FLT_MAX, ml[1] = 0.0f;
        return;
    }
    for (int d = threadIdx.x; d < D; d += ATT_THREADS) qs[d] = __bfloat162float(q[((int64_t)j * H + h) * D + d]);
    __syncthreads();
    float score = -FLT_MAX;
    if ((int)threadIdx.x < n) {
        const bf16* kr = kc + ((int64_t)(j0 + threadIdx.x) * KV + kvh) * D;
        float dot = 0.0f;
        for (int d = 0; d < D; d += 8) {
            const Bf16x8 kv8 = load_bf16x8(kr + d);
#pragma unroll
            for (int k = 0; k < 8; k++) dot += qs[d + k] * __bfloat162float(kv8.v[k]);
        }
        score = dot * scale;
    }
    const float mx = block_max(score, red);
    const float e = (int)threadIdx.x < n ? expf(score - mx) : 0.0f;
    sc[threadIdx.x] = e;
    const float sum = block_sum(e, red);  // its barriers also publish sc[]
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, d0 = 4 * lane;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (d0 < D) {
#pragma unroll 4
        for (int i = warp; i < n; i += ATT_THREADS / 32) {
            const uint2 raw = *reinterpret_cast<const uint2*>(vc + ((int64_t)(j0 + i) * KV + kvh) * D + d0);
            const bf16* v4 = reinterpret_cast<const bf16*>(&raw);
#pragma unroll
            for (int k = 0; k < 4; k++) acc[k] += sc[i] * __bfloat162float(v4[k]);
        }
#pragma unroll
        for (int k = 0; k < 4; k++) po[warp][d0 + k] = acc[k];
    }
    __syncthreads();
    for (int d = threadIdx.x; d < D; d += ATT_THREADS) {
        float o = 0.0f;
        for (int w = 0; w < ATT_THREADS / 32; w++) o += po[w][d];
        part_o[part * D + d] = o;
    }
    if (threadIdx.x == 0) ml[0] = mx, ml[1] = sum;
}

// out (nb, H*D): block (head h, sequence j) merges its splits
__global__ void attention_combine_kernel(bf16* out, const float* part_o, const float* part_ml, int H, int D, int splits) {
    pdl_launch_dependents();  // the fused mat-vec after it (rank 0) prefetches its weights meanwhile
    const int h = blockIdx.x, j = blockIdx.y;
    const int64_t first = ((int64_t)j * H + h) * splits;
    const float* ml = part_ml + first * 2;
    float M = -FLT_MAX;
    for (int s = 0; s < splits; s++)
        if (ml[2 * s + 1] > 0.0f) M = fmaxf(M, ml[2 * s]);
    float L = 0.0f;
    for (int s = 0; s < splits; s++)
        if (ml[2 * s + 1] > 0.0f) L += ml[2 * s + 1] * expf(ml[2 * s] - M);
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < splits; s++)
            if (ml[2 * s + 1] > 0.0f) acc += part_o[(first + s) * D + d] * expf(ml[2 * s] - M);
        out[((int64_t)j * H + h) * D + d] = __float2bfloat16(acc / L);
    }
}

Nf4Consts nf4_consts() {
    Nf4Consts c;
    memcpy(c.nf4, NF4_CODE, sizeof(c.nf4));
    memcpy(c.code8, dynamic_code8(), sizeof(c.code8));
    return c;
}


}  // namespace

// ----------------------------------------------------------------------------------------------
// the decoder

class GpuDecoder : public Decoder {
   public:
    GpuDecoder(const std::string& model_path, int max_context, int max_batch);
    GpuDecoder(const Config& c, bool nf4, int max_context, int max_batch, uint64_t seed);  // random weights (benchmarks)
    ~GpuDecoder() override;
    const Config& config() const override { return base_.cfg; }
    int max_context() const override { return max_ctx_; }
    int position() const override { return lens_[0]; }
    void reset() override { lens_[0] = 0; }
    void set_adapter(const Adapter* adapter, bool merge) override;
    const float* prefill(const int32_t* tokens, int n) override { return prefill_into(0, tokens, n); }
    const float* step(int32_t token) override;
    std::string describe() const override;
    int max_batch() const override { return max_batch_; }
    int slot_position(int slot) const override { return lens_.at((size_t)slot); }
    const float* prefill_slot(int slot, const int32_t* tokens, int n) override {
        lens_.at((size_t)slot) = 0;
        return prefill_into(slot, tokens, n);
    }
    const float* step_batch(const int32_t* tokens, const int* slots, int n) override;
    void cap_matvec_grid(int max_blocks) {
        grid_cap_ = max_blocks;
        drop_graph();  // their launches have the old grid
    }

   private:
    void linear(bf16* y, const bf16* x, int t, int l, int n, bool accumulate);
    const bf16* dense_weight(int t, int l);  // bf16 (merged, dense or dequantized into scratch)

    GpuBase base_;              // the frozen weights, shared with the trainer's code
    Blas blas_;
    cudaStream_t stream_ = nullptr;
    bf16* dequant_ = nullptr;   // (largest linear) an NF4 weight dequantized for a prefill matmul
    int max_ctx_ = 0, max_batch_ = 1;
    std::vector<int> lens_;     // (max_batch) tokens in each slot's cache
    int slot_ = 0;              // the slot a prefill pass (forward(n)) works on
    const float* prefill_into(int slot, const int32_t* tokens, int n);
    bool nf4_ = false, merged_ = false;
    Nf4Consts consts_;
    LoraConfig lcfg_{0, 1.0f, 0.0f, 0};         // rank 0: no adapter
    LoraLayout lay_{};
    bf16* lora_w_ = nullptr;                    // (lay_.total) bf16 A and B, LoraLayout order (unmerged)
    bf16* merged_w_[NUM_LORA_TARGETS] = {};     // (L, out, in) bf16 with s B A folded in
    bf16 *kc_ = nullptr, *vc_ = nullptr;        // (max_batch, L, max_ctx, KV*D): a cache per slot
    int64_t slot_stride_ = 0;                   // L * max_ctx * KV*D: one slot's cache
    bf16* kc_layer(int slot, int l) const { return kc_ + slot * slot_stride_ + (int64_t)l * max_ctx_ * kvd_; }
    bf16* vc_layer(int slot, int l) const { return vc_ + slot * slot_stride_ + (int64_t)l * max_ctx_ * kvd_; }
    int64_t kvd_ = 0;
    // per-pass buffers for up to N = max(max_ctx, max_batch) tokens
    bf16 *x_, *xn_, *q_, *k_, *v_, *ctx_, *g_, *u_, *h_, *lu_;
    int32_t *d_tok_, *d_pos_, *d_slot_, *d_len_;  // (N), (N), (N), (1): inputs of a pass, on the device
    int32_t* h_in_ = nullptr;                     // pinned (3 N + 1) staging for them
    float *rstd_, *d_logits_;        // d_logits_ (max_batch, V)
    float* h_logits_ = nullptr;      // pinned (max_batch, V)
    // a decode step replays a captured CUDA graph, one per batch size: ~10 kernels a layer are ~330
    // launches a token, and launching them one by one costs more than running them
    std::vector<cudaGraphExec_t> step_graphs_;  // (max_batch + 1), by batch size
    std::vector<int> steps_uncaptured_;         // each batch size's first step runs plainly
    cudaGraphExec_t generic_graph_ = nullptr;   // the batch-1 step of forward(1) where the fused one cannot run
    int generic_uncaptured_ = 0;
    void forward(int n);  // a prefill pass over n tokens of slot_ (ids/positions/cache length on the device)
    // the decode step on the fused tensor-core mat-vecs (matvec_mma_kernel), where the shapes allow it
    bool fused_ok_ = false;
    bool grouped_ = false;           // NF4 codes and absmax_ in the fused mat-vec's grouped layout (nf4_group_kernel)
    int grid_cap_ = 0;               // the fused mat-vec's grid at most this (0: no cap): gpu_decoder_cap_matvec_grid
    int splits_ = 0;                 // split-K attention: ceil(max_ctx / ATT_CHUNK)
    float *part_o_ = nullptr, *part_ml_ = nullptr;  // (max_batch, H, splits, D), (max_batch, H, splits, 2)
    Nf4Consts* d_consts_ = nullptr;  // the NF4 and 8-bit code tables, on the device
    float* absmax_[NUM_LORA_TARGETS] = {};  // (L, out * in / 64) the NF4 linears' block absmax, decoded
    bf16* lu_f_ = nullptr;           // (3, max_batch, r) LoRA u of the linears of one fused launch
    float* lse_ = nullptr;           // (H, N) the prefill's flash-attention log-sum-exp
    void forward_step(int nb);       // one token for each of nb sequences (d_tok_, d_pos_, d_slot_)
    void fused_linears(const bf16* x, const int* targets, bf16* const* ys, int n, int l, int mode, int nb);
    void drop_graph() {
        for (cudaGraphExec_t& g : step_graphs_) {
            if (g) cudaCheck(cudaGraphExecDestroy(g));
            g = nullptr;
        }
        std::fill(steps_uncaptured_.begin(), steps_uncaptured_.end(), 0);
        if (generic_graph_) cudaCheck(cudaGraphExecDestroy(generic_graph_));
        generic_graph_ = nullptr;
        generic_uncaptured_ = 0;
    }
    void allocate_buffers();
    std::vector<void*> allocs_;
    void* alloc(size_t bytes) {
        void* p = nullptr;
        cudaCheck(cudaMalloc(&p, bytes ? bytes : 16));
        allocs_.push_back(p);
        return p;
    }
};

GpuDecoder::GpuDecoder(const std::string& path, int max_context, int max_batch) : max_ctx_(max_context), max_batch_(max_batch) {
    InFile f(path);
    ModelHeader h = read_model_header(f);
    nf4_ = h.linear_format == LINEAR_NF4;
    cudaCheck(cudaStreamCreate(&stream_));
    blas_create(blas_);
    gpu_base_init(base_, h.config, nf4_ ? QUANT_NF4 : QUANT_BF16);
    gpu_base_load_file(base_, path, stream_);
    allocate_buffers();
}

GpuDecoder::GpuDecoder(const Config& c, bool nf4, int max_context, int max_batch, uint64_t seed)
    : max_ctx_(max_context), max_batch_(max_batch), nf4_(nf4) {
    cudaCheck(cudaStreamCreate(&stream_));
    blas_create(blas_);
    gpu_base_init(base_, c, nf4_ ? QUANT_NF4 : QUANT_BF16);
    gpu_base_random(base_, seed, stream_);
    allocate_buffers();
}

void GpuDecoder::allocate_buffers() {
    const Config& c = base_.cfg;
    ASSERT(max_batch_ >= 1 && max_ctx_ >= 1, "a decoder of at least one slot and one position");
    if (max_batch_ > MMA_MAX_BATCH) fail("--batch %d: the GPU decoder takes at most %d sequences a pass", max_batch_, MMA_MAX_BATCH);
    consts_ = nf4_consts();
    const bool mma_fits = matvec_mma_setup();
    lens_.assign((size_t)max_batch_, 0);
    step_graphs_.assign((size_t)max_batch_ + 1, nullptr);
    steps_uncaptured_.assign((size_t)max_batch_ + 1, 0);
    const int64_t N = std::max(max_ctx_, max_batch_), C = c.dim, F = c.hidden_dim, QD = (int64_t)c.n_heads * c.head_dim;
    kvd_ = (int64_t)c.n_kv_heads * c.head_dim;
    slot_stride_ = (int64_t)c.n_layers * max_ctx_ * kvd_;
    // the caches grow with slots x context: say so before cudaMalloc fails on its own
    const double cache_bytes = 2.0 * 2.0 * (double)max_batch_ * (double)slot_stride_;
    size_t free_b = 0, total_b = 0;
    cudaCheck(cudaMemGetInfo(&free_b, &total_b));
    if (cache_bytes + 1e9 > (double)free_b)
        fail("decoder: the KV caches of %d sequences x %d positions need %.2f GiB, %.2f GiB of the GPU is free "
             "(lower --batch or --max-length)", max_batch_, max_ctx_, cache_bytes / 1073741824.0, (double)free_b / 1073741824.0);
    kc_ = (bf16*)alloc((size_t)max_batch_ * slot_stride_ * 2);
    vc_ = (bf16*)alloc((size_t)max_batch_ * slot_stride_ * 2);
    x_ = (bf16*)alloc(N * C * 2);
    xn_ = (bf16*)alloc(N * C * 2);
    q_ = (bf16*)alloc(N * QD * 2);
    k_ = (bf16*)alloc(N * kvd_ * 2);
    v_ = (bf16*)alloc(N * kvd_ * 2);
    ctx_ = (bf16*)alloc(N * QD * 2);
    g_ = (bf16*)alloc(N * F * 2);
    u_ = (bf16*)alloc(N * F * 2);
    h_ = (bf16*)alloc(N * F * 2);
    lu_ = (bf16*)alloc(N * 1024 * 2);  // LoRA u for ranks up to 1024
    if (nf4_) dequant_ = (bf16*)alloc((size_t)gpu_base_max_linear_numel(c) * 2);
    d_tok_ = (int32_t*)alloc(N * 4);
    d_pos_ = (int32_t*)alloc(N * 4);
    d_slot_ = (int32_t*)alloc(N * 4);
    d_len_ = (int32_t*)alloc(4);
    cudaCheck(cudaMallocHost(&h_in_, (size_t)(3 * N + 1) * 4));
    // the attention's scores live in shared memory: room for the whole context, asked for once
    const size_t att_smem = (size_t)(max_ctx_ + 16) * 4;
    if (att_smem > (48 << 10))
        cudaCheck(cudaFuncSetAttribute(attention_cached_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)att_smem));
    rstd_ = (float*)alloc(N * 4);
    const int64_t H = c.n_heads, D = c.head_dim;
    splits_ = (int)ceil_div((int64_t)max_ctx_, (int64_t)ATT_CHUNK);
    part_o_ = (float*)alloc((size_t)max_batch_ * H * splits_ * D * 4);
    part_ml_ = (float*)alloc((size_t)max_batch_ * H * splits_ * 2 * 4);
    lu_f_ = (bf16*)alloc((size_t)3 * max_batch_ * 1024 * 2);
    d_consts_ = (Nf4Consts*)alloc(sizeof(Nf4Consts));
    cudaCheck(cudaMemcpy(d_consts_, &consts_, sizeof(Nf4Consts), cudaMemcpyHostToDevice));
    lse_ = (float*)alloc((size_t)H * N * 4);
    // the fused step needs whole 64-column absmax blocks per row, whole 16-row tiles and the card's
    // shared memory (matvec_mma_setup)
    fused_ok_ = mma_fits && c.head_dim % 8 == 0 && c.head_dim <= 128 && C % 64 == 0 && F % 64 == 0 && QD % 64 == 0 && C % 16 == 0 && QD % 16 == 0 && kvd_ % 16 == 0 && F % 8 == 0;
    // and reads NF4 grouped (nf4_group_kernel): the codes are regrouped in place, through the
    // dequantization scratch (a linear in bf16: twice its codes), and the absmax decoded grouped
    grouped_ = nf4_ && fused_ok_;
    if (grouped_)
        for (int t = 0; t < NUM_LORA_TARGETS; t++) {
            const int64_t IC = lora_in_dim(c, t), nbl = IC * lora_out_dim(c, t) / 64, nbk = IC / 64;
            absmax_[t] = (float*)alloc((size_t)c.n_layers * nbl * 4);
            for (int l = 0; l < c.n_layers; l++) {
                const Nf4View w = gpu_base_nf4(base_, t, l);
                nf4_absmax_kernel<<<(unsigned)ceil_div(nbl, (int64_t)256), 256, 0, stream_>>>(absmax_[t] + l * nbl, w, nbl, nbk, d_consts_);
                cudaCheckLaunch();
                cudaCheck(cudaMemcpyAsync(dequant_, w.packed, (size_t)nbl * 32, cudaMemcpyDeviceToDevice, stream_));
                nf4_group_kernel<<<(unsigned)ceil_div(nbl * 2, (int64_t)256), 256, 0, stream_>>>(w.packed, reinterpret_cast<const uint8_t*>(dequant_), nbl * 2, nbk);
                cudaCheckLaunch();
            }
        }
    cudaCheck(cudaStreamSynchronize(stream_));
    d_logits_ = (float*)alloc((size_t)max_batch_ * c.vocab_size * 4);
    cudaCheck(cudaMallocHost(&h_logits_, (size_t)max_batch_ * c.vocab_size * 4));
}

GpuDecoder::~GpuDecoder() {
    cudaCheck(cudaStreamSynchronize(stream_));
    drop_graph();
    cudaCheck(cudaFreeHost(h_in_));
    for (void* p : allocs_) cudaCheck(cudaFree(p));
    if (lora_w_) cudaCheck(cudaFree(lora_w_));
    for (bf16* w : merged_w_)
        if (w) cudaCheck(cudaFree(w));
    cudaCheck(cudaFreeHost(h_logits_));
    gpu_base_free(base_);
    blas_destroy(blas_);
    cudaCheck(cudaStreamDestroy(stream_));
}

std::string GpuDecoder::describe() const {
    std::string s = std::string("cuda ") + (nf4_ && !merged_ ? "NF4" : "bf16") + " base";
    if (lcfg_.rank > 0 && !merged_) s += ", LoRA r=" + std::to_string(lcfg_.rank) + " unmerged";
    if (merged_) s += ", LoRA merged";
    return s;
}

const bf16* GpuDecoder::dense_weight(int t, int l) {
    const int64_t n = lora_in_dim(base_.cfg, t) * lora_out_dim(base_.cfg, t);
    if (merged_) return merged_w_[t] + l * n;
    if (!grouped_) return gpu_base_linear(base_, t, l, dequant_, stream_);
    const int64_t nbk = lora_in_dim(base_.cfg, t) / 64;
    nf4_dequantize_grouped_kernel<<<(unsigned)ceil_div(n / 8, (int64_t)256), 256, 0, stream_>>>(
        dequant_, gpu_base_nf4(base_, t, l).packed, absmax_[t] + l * (n / 64), n / 8, nbk, d_consts_);
    cudaCheckLaunch();
    return dequant_;
}

void GpuDecoder::set_adapter(const Adapter* a, bool merge) {
    cudaCheck(cudaStreamSynchronize(stream_));
    drop_graph();  // it holds the previous adapter's pointers
    std::fill(lens_.begin(), lens_.end(), 0);
    merged_ = false;
    if (lora_w_) cudaCheck(cudaFree(lora_w_));
    lora_w_ = nullptr;
    lcfg_ = LoraConfig{0, 1.0f, 0.0f, 0};
    if (!a) return;
    if (a->lora.rank > 1024) fail("adapter: rank %d is above the decoder's 1024", a->lora.rank);
    lcfg_ = a->lora;
    lay_ = lora_layout(base_.cfg, lcfg_);
    std::vector<uint16_t> h(a->params.size());
    convert_from_f32(h.data(), a->params.data(), DT_BF16, h.size());
    cudaCheck(cudaMalloc(&lora_w_, h.size() * 2));
    cudaCheck(cudaMemcpy(lora_w_, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
    if (!merge) return;
    // W' = W + s B A for every adapted linear, into bf16 copies (the NF4 base is dequantized first)
    const int64_t r = lcfg_.rank;
    for (int t = 0; t < NUM_LORA_TARGETS; t++) {
        const int64_t in = lora_in_dim(base_.cfg, t), out = lora_out_dim(base_.cfg, t);
        if (!merged_w_[t]) cudaCheck(cudaMalloc(&merged_w_[t], (size_t)base_.cfg.n_layers * in * out * 2));
        for (int l = 0; l < base_.cfg.n_layers; l++) {
            bf16* W = merged_w_[t] + l * in * out;
            cudaCheck(cudaMemcpyAsync(W, dense_weight(t, l), in * out * 2, cudaMemcpyDeviceToDevice, stream_));
            if (!lcfg_.has(t)) continue;
            const bf16* A = lora_w_ + lay_.a_offset[t] + l * r * in;
            const bf16* B = lora_w_ + lay_.b_offset[t] + l * out * r;
            matmul(blas_, W, false, B, false, A, false, out, in, r, lcfg_.scaling(), 1.0f, stream_);
        }
    }
    merged_ = true;
    cudaCheck(cudaStreamSynchronize(stream_));
}

// y (n, OC) = (accumulate ? y : 0) + x W^T (+ s (x A^T) B^T when unmerged)
void GpuDecoder::linear(bf16* y, const bf16* x, int t, int l, int n, bool accumulate) {
    const int64_t IC = lora_in_dim(base_.cfg, t), OC = lora_out_dim(base_.cfg, t);
    if (n == 1 && !merged_ && nf4_ && !grouped_) {  // batch-1 decode of the generic path: read the 4-bit weights directly
        ASSERT(IC % 8 == 0, "the NF4 mat-vec needs in_features % 8 == 0 (every Llama 2 size)");
        Nf4View W = gpu_base_nf4(base_, t, l);
        matvec_nf4(y, x, W, (int)OC, (int)IC, 1.0f, accumulate, consts_, stream_);
    } else if (n == 1) {
        matvec_bf16<bf16>(y, x, dense_weight(t, l), (int)OC, (int)IC, 1.0f, accumulate, stream_);
    } else {
        matmul(blas_, y, false, x, false, dense_weight(t, l), true, n, OC, IC, 1.0f, accumulate ? 1.0f : 0.0f, stream_);
    }
    if (merged_ || lcfg_.rank == 0 || !lcfg_.has(t)) return;
    const int64_t r = lcfg_.rank;
    const bf16* A = lora_w_ + lay_.a_offset[t] + l * r * IC;
    const bf16* B = lora_w_ + lay_.b_offset[t] + l * OC * r;
    if (n == 1) {
        matvec_bf16<bf16>(lu_, x, A, (int)r, (int)IC, 1.0f, false, stream_);
        matvec_bf16<bf16>(y, lu_, B, (int)OC, (int)r, lcfg_.scaling(), true, stream_);
    } else {
        LoraGpuArgs la{A, B, (int)r, lcfg_.scaling(), 0.0f, 0, 0};
        lora_forward(blas_, y, lu_, nullptr, nullptr, 0, x, la, n, IC, OC, stream_);
    }
}

void GpuDecoder::forward(int n) {
    const Config& c = base_.cfg;
    const int64_t C = c.dim, F = c.hidden_dim, KVD = (int64_t)c.n_kv_heads * c.head_dim;
    embedding_forward(x_, d_tok_, base_.w.embed, n, (int)C, stream_);
    const float scale = 1.0f / sqrtf((float)c.head_dim);
    for (int l = 0; l < c.n_layers; l++) {
        rmsnorm_forward(xn_, rstd_, x_, base_.w.attn_norm + l * C, n, (int)C, c.norm_eps, stream_);
        linear(q_, xn_, LT_Q, l, n, false);
        linear(k_, xn_, LT_K, l, n, false);
        linear(v_, xn_, LT_V, l, n, false);
        rope_forward(q_, d_pos_, n, c.n_heads, c.head_dim, c.rope_theta, stream_);
        rope_forward(k_, d_pos_, n, c.n_kv_heads, c.head_dim, c.rope_theta, stream_);
        bf16* kc = kc_layer(slot_, l);
        bf16* vc = vc_layer(slot_, l);
        const int64_t ne = (int64_t)n * KVD;
        cache_store_kernel<<<ceil_div(ne, 256), 256, 0, stream_>>>(kc, k_, d_len_, KVD, ne);
        cudaCheckLaunch();
        cache_store_kernel<<<ceil_div(ne, 256), 256, 0, stream_>>>(vc, v_, d_len_, KVD, ne);
        cudaCheckLaunch();
        if (n > 1 && lens_[(size_t)slot_] == 0) {  // a prompt from the start: the training's flash attention
            attention_forward(ctx_, lse_, q_, k_, v_, d_pos_, 1, n, c.n_heads, c.n_kv_heads, c.head_dim, stream_);
        } else {
        // +16 floats: the compiler's unrolled read of scores[] may touch a few past the last key
        attention_cached_kernel<<<dim3(n, c.n_heads), 128, (size_t)(max_ctx_ + 16) * 4, stream_>>>(
            ctx_, q_, kc, vc, d_len_, c.n_heads, c.n_kv_heads, c.head_dim, scale);
        cudaCheckLaunch();
        }
        linear(x_, ctx_, LT_O, l, n, true);  // the residual add rides on the accumulation
        rmsnorm_forward(xn_, rstd_, x_, base_.w.mlp_norm + l * C, n, (int)C, c.norm_eps, stream_);
        linear(g_, xn_, LT_GATE, l, n, false);
        linear(u_, xn_, LT_UP, l, n, false);
        swiglu_forward(h_, g_, u_, (int64_t)n * F, stream_);
        linear(x_, h_, LT_DOWN, l, n, true);
    }
    // only the last position's logits are needed
    rmsnorm_forward(xn_, rstd_, x_ + (int64_t)(n - 1) * C, base_.w.final_norm, 1, (int)C, c.norm_eps, stream_);
    matvec_bf16<float>(d_logits_, xn_, base_.w.lm_head, c.vocab_size, (int)C, 1.0f, false, stream_);
    cudaCheck(cudaMemcpyAsync(h_logits_, d_logits_, (size_t)c.vocab_size * 4, cudaMemcpyDeviceToHost, stream_));
}

// The linears targets[0..n) of layer l, all reading x, in one fused launch (plus one for their
// LoRA A products): ys[i] receives target i (in MV_SWIGLU mode ys[0] receives h, ys[1] is unused).
void GpuDecoder::fused_linears(const bf16* x, const int* targets, bf16* const* ys, int n, int l, int mode, int nb) {
    const Config& c = base_.cfg;
    MvArgs a;
    a.n_targets = n;
    a.mode = mode;
    a.nb = nb;
    a.cols = (int)lora_in_dim(c, targets[0]);
    a.r = lcfg_.rank;
    a.lora_scale = lcfg_.rank > 0 ? lcfg_.scaling() : 0.0f;
    const bf16* A[3] = {nullptr, nullptr, nullptr};
    int na = 0;
    for (int i = 0; i < n; i++) {
        const int t = targets[i];
        const int64_t IC = lora_in_dim(c, t), OC = lora_out_dim(c, t), r = lcfg_.rank;
        MvTarget& m = a.t[i];
        m.rows = (int)OC;
        m.y = ys[i];
        if (nf4_ && !merged_) m.codes = gpu_base_nf4(base_, t, l).packed, m.absmax = absmax_[t] + l * (IC * OC / 64);
        else m.dense = dense_weight(t, l);
        if (!merged_ && r > 0 && lcfg_.has(t)) {
            A[na] = lora_w_ + lay_.a_offset[t] + l * r * IC;
            m.lora_b = lora_w_ + lay_.b_offset[t] + l * OC * r;
            m.lora_u = lu_f_ + na * max_batch_ * r;
            na++;
        }
    }
    if (na > 0) {
        // a programmatic dependent launch: its blocks load their A rows while the kernel before ends
        launch_kernel(true, lora_a_kernel, dim3((unsigned)a.r, (unsigned)na), dim3(LORA_A_THREADS), 0, stream_, lu_f_, x, A[0], A[1], A[2],
                      a.r, a.cols, nb, (int64_t)max_batch_ * a.r);
    }
    matvec_mma(x, a, nf4_ && !merged_, d_consts_, grid_cap_, stream_);
}

// One token for each of nb sequences (ids, positions = cache lengths, slots on the device), ~10
// launches a layer: the layer loop of forward() with the linears fused by input, RoPE and the cache
// stores in one kernel, and split-K attention. Every kernel treats the sequences independently.
void GpuDecoder::forward_step(int nb) {
    const Config& c = base_.cfg;
    const int64_t C = c.dim;
    const int H = c.n_heads, KV = c.n_kv_heads, D = c.head_dim, V = c.vocab_size;
    embedding_forward(x_, d_tok_, base_.w.embed, nb, (int)C, stream_);
    const float scale = 1.0f / sqrtf((float)D);
    static const int qkv[3] = {LT_Q, LT_K, LT_V}, o[1] = {LT_O}, gate_up[2] = {LT_GATE, LT_UP}, down[1] = {LT_DOWN};
    for (int l = 0; l < c.n_layers; l++) {
        bf16 *kc = kc_layer(0, l), *vc = vc_layer(0, l);  // slot 0's; the kernels add slot * slot_stride_
        rmsnorm_forward(xn_, rstd_, x_, base_.w.attn_norm + l * C, nb, (int)C, c.norm_eps, stream_);
        bf16* const y_qkv[3] = {q_, k_, v_};
        fused_linears(xn_, qkv, y_qkv, 3, l, MV_STORE, nb);
        rope_store_kernel<<<(unsigned)ceil_div((int64_t)nb * (H + KV) * (D / 2), (int64_t)128), 128, 0, stream_>>>(
            q_, k_, v_, kc, vc, d_pos_, d_slot_, slot_stride_, nb, H, KV, D, c.rope_theta);
        cudaCheckLaunch();
        attention_split_kernel<<<dim3((unsigned)splits_, (unsigned)H, (unsigned)nb), ATT_THREADS, 0, stream_>>>(
            part_o_, part_ml_, q_, kc, vc, d_pos_, d_slot_, slot_stride_, H, KV, D, splits_, scale);
        cudaCheckLaunch();
        attention_combine_kernel<<<dim3((unsigned)H, (unsigned)nb), 128, 0, stream_>>>(ctx_, part_o_, part_ml_, H, D, splits_);
        cudaCheckLaunch();
        bf16* const y_o[1] = {x_};
        fused_linears(ctx_, o, y_o, 1, l, MV_ADD, nb);  // the residual add rides on the output
        rmsnorm_forward(xn_, rstd_, x_, base_.w.mlp_norm + l * C, nb, (int)C, c.norm_eps, stream_);
        bf16* const y_gu[2] = {h_, nullptr};
        fused_linears(xn_, gate_up, y_gu, 2, l, MV_SWIGLU, nb);
        bf16* const y_d[1] = {x_};
        fused_linears(h_, down, y_d, 1, l, MV_ADD, nb);
    }
    rmsnorm_forward(xn_, rstd_, x_, base_.w.final_norm, nb, (int)C, c.norm_eps, stream_);
    // the LM head on the same tensor-core mat-vec: fp32 logits (nb, V), the head read once for all
    MvArgs head;
    head.n_targets = 1, head.mode = MV_STORE_F32, head.nb = nb, head.cols = (int)C;
    head.t[0].dense = base_.w.lm_head, head.t[0].y32 = d_logits_, head.t[0].rows = V;
    matvec_mma(xn_, head, false, d_consts_, grid_cap_, stream_);
    cudaCheck(cudaMemcpyAsync(h_logits_, d_logits_, (size_t)nb * V * 4, cudaMemcpyDeviceToHost, stream_));
}

const float* GpuDecoder::prefill_into(int slot, const int32_t* tokens, int n) {
    ASSERT(slot >= 0 && slot < max_batch_, "a slot of the decoder");
    const int len = lens_[(size_t)slot];
    if (n < 1 || len + n > max_ctx_) fail("decoder: %d tokens after %d do not fit the context of %d", n, len, max_ctx_);
    // inputs through pinned staging: token ids, positions len.., the cache length
    cudaCheck(cudaStreamSynchronize(stream_));
    memcpy(h_in_, tokens, n * 4);
    for (int i = 0; i < n; i++) h_in_[n + i] = len + i;
    h_in_[2 * n] = len;
    cudaCheck(cudaMemcpyAsync(d_tok_, h_in_, n * 4, cudaMemcpyHostToDevice, stream_));
    cudaCheck(cudaMemcpyAsync(d_pos_, h_in_ + n, n * 4, cudaMemcpyHostToDevice, stream_));
    cudaCheck(cudaMemcpyAsync(d_len_, h_in_ + 2 * n, 4, cudaMemcpyHostToDevice, stream_));
    slot_ = slot;
    forward(n);
    cudaCheck(cudaStreamSynchronize(stream_));
    lens_[(size_t)slot] += n;
    return h_logits_;
}

const float* GpuDecoder::step(int32_t token) {
    if (fused_ok_) {
        const int slot0 = 0;
        return step_batch(&token, &slot0, 1);
    }
    // other shapes: forward(1) on the generic kernels, plainly for two steps (they make the one-time
    // settings, such as shared-memory limits, that a capture must not do), then as a graph
    if (generic_uncaptured_ < 2) {
        generic_uncaptured_++;
        return prefill_into(0, &token, 1);
    }
    const int len = lens_[0];
    if (len + 1 > max_ctx_) fail("decoder: the context of %d is full", max_ctx_);
    cudaCheck(cudaStreamSynchronize(stream_));
    h_in_[0] = token, h_in_[1] = len, h_in_[2] = len;
    cudaCheck(cudaMemcpyAsync(d_tok_, h_in_, 4, cudaMemcpyHostToDevice, stream_));
    cudaCheck(cudaMemcpyAsync(d_pos_, h_in_ + 1, 4, cudaMemcpyHostToDevice, stream_));
    cudaCheck(cudaMemcpyAsync(d_len_, h_in_ + 2, 4, cudaMemcpyHostToDevice, stream_));
    slot_ = 0;
    if (!generic_graph_) {
        cudaGraph_t g;
        cudaCheck(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
        forward(1);
        cudaCheck(cudaStreamEndCapture(stream_, &g));
        cudaCheck(cudaGraphInstantiate(&generic_graph_, g, 0));
        cudaCheck(cudaGraphDestroy(g));
    }
    cudaCheck(cudaGraphLaunch(generic_graph_, stream_));
    cudaCheck(cudaStreamSynchronize(stream_));
    lens_[0] += 1;
    return h_logits_;
}

const float* GpuDecoder::step_batch(const int32_t* tokens, const int* slots, int nb) {
    ASSERT(nb >= 1 && nb <= max_batch_, "1 .. max_batch slots a pass");
    for (int i = 0; i < nb; i++) {
        ASSERT(slots[i] >= 0 && slots[i] < max_batch_, "a slot of the decoder");
        for (int j = 0; j < i; j++) ASSERT(slots[j] != slots[i], "distinct slots in one pass");
        if (lens_[(size_t)slots[i]] + 1 > max_ctx_) fail("decoder: the context of %d is full", max_ctx_);
    }
    const int V = base_.cfg.vocab_size;
    if (!fused_ok_) {  // one sequence at a time; the last one run is row 0's, so go backwards
        for (int i = nb - 1; i >= 0; i--) {
            prefill_into(slots[i], &tokens[i], 1);
            if (i > 0) memcpy(h_logits_ + (size_t)i * V, h_logits_, (size_t)V * 4);
        }
        return h_logits_;
    }
    cudaCheck(cudaStreamSynchronize(stream_));
    for (int i = 0; i < nb; i++) h_in_[i] = tokens[i], h_in_[nb + i] = lens_[(size_t)slots[i]], h_in_[2 * nb + i] = slots[i];
    cudaCheck(cudaMemcpyAsync(d_tok_, h_in_, nb * 4, cudaMemcpyHostToDevice, stream_));
    cudaCheck(cudaMemcpyAsync(d_pos_, h_in_ + nb, nb * 4, cudaMemcpyHostToDevice, stream_));
    cudaCheck(cudaMemcpyAsync(d_slot_, h_in_ + 2 * nb, nb * 4, cudaMemcpyHostToDevice, stream_));
    // each batch size runs plainly once (errors surface at their launch), then as its own graph
    cudaGraphExec_t& graph = step_graphs_[(size_t)nb];
    if (steps_uncaptured_[(size_t)nb] < 1) {
        steps_uncaptured_[(size_t)nb]++;
        forward_step(nb);
    } else {
        if (!graph) {
            cudaGraph_t g;
            cudaCheck(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
            forward_step(nb);
            cudaCheck(cudaStreamEndCapture(stream_, &g));
            cudaCheck(cudaGraphInstantiate(&graph, g, 0));
            cudaCheck(cudaGraphDestroy(g));
        }
        cudaCheck(cudaGraphLaunch(graph, stream_));
    }
    cudaCheck(cudaStreamSynchronize(stream_));
    for (int i = 0; i < nb; i++) lens_[(size_t)slots[i]] += 1;
    return h_logits_;
}

std::unique_ptr<Decoder> make_gpu_decoder(const std::string& model_path, int max_context, int max_batch) {
    std::string why;
    if (!gpu_available(&why)) fail("--device cuda: no usable GPU (%s)", why.c_str());
    return std::make_unique<GpuDecoder>(model_path, max_context, max_batch);
}

bool gpu_decoder_usable() { return gpu_available(nullptr); }

void gpu_decoder_cap_matvec_grid(Decoder& d, int max_blocks) {
    GpuDecoder* g = dynamic_cast<GpuDecoder*>(&d);
    ASSERT(g, "gpu_decoder_cap_matvec_grid: a decoder from make_gpu_decoder");
    g->cap_matvec_grid(max_blocks);
}

std::unique_ptr<Decoder> make_gpu_decoder_random(const Config& c, bool nf4, int max_context, int max_batch, uint64_t seed) {
    return std::make_unique<GpuDecoder>(c, nf4, max_context, max_batch, seed);
}
