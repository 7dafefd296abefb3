// quant.h — NF4 with double quantization, bit-identical to bitsandbytes'
// quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True) and dequantize_4bit.
// Declares the tensor layout (in memory and in a model file), the plain C++ twin (quant_cpu.cpp,
// part of the CPU reference library) and the GPU launchers (quant.cu). g++ and nvcc both include it.
//
// What bitsandbytes computes (bnb 0.50, csrc/kernels.cu + bitsandbytes/functional.py, built with
// nvcc --use_fast_math), and what both twins reproduce (the GPU bit for bit, by running the same
// instructions; the CPU bit for bit except for the caveat under gpu_rcp_approx):
//   1. per block of 64 weights (the last block may be short): absmax = max |w|;
//      scale = rcp.approx.ftz(absmax)  (fast math turns 1.0f/absmax into the GPU's approximate
//      reciprocal, which is NOT the correctly rounded 1/absmax; see gpu_rcp_approx below);
//      code = NF4 decision tree on w * scale (mul.ftz), ties go to the lower code;
//      two codes per byte, element 2i in the high nibble, element 2i+1 in the low nibble.
//      An all-zero block has absmax 0, scale +inf, 0 * inf = NaN, and NaN falls to code 0 (-1.0):
//      it dequantizes to -0.0, as bitsandbytes does.
//   2. double quantization of the fp32 absmax vector (one value per block):
//      offset = absmax.mean() as PyTorch's CUDA reduction computes it (a fixed summation tree,
//      then sum * (1.0f / n)); x = absmax - offset; per group of 256 x values:
//      scale2 = max |x|, q = nearest code of the signed dynamic 8-bit map to x * rcp.approx(scale2)
//      (bnb's binary search, comparing with fp32 midpoints; which side a tie goes to depends on
//      the search path).
//   3. dequantize: absmax' = code8[q] * scale2[b / 256] (mul.ftz), then absmax' + offset (a
//      separate fp32 add, no fma: PyTorch adds it in a second op); w' = NF4[c] * absmax' (mul.ftz),
//      rounded to the output dtype (bf16/fp16, nearest even).
//
// Storage cost per parameter: 4 bits + 8 bits / 64 + 32 bits / (64 * 256) + one fp32 offset per
// tensor = 4.127 bits (nf4_bits_per_param()).
#pragma once

#include <cstdint>
#include <vector>

#include "model.h"

constexpr int NF4_BLOCK = 64;      // weights per absmax (bnb blocksize for 4-bit)
constexpr int NF4_DQ_BLOCK = 256;  // absmax values per second-level scale (bnb's nested blocksize)

// bnb's NF4 code book (index = 4-bit code), values of create_normal_map(0.9677083) as fp32
extern const float NF4_CODE[16];
// bnb's 15 decision boundaries between neighbouring codes (sorted; see quant_cpu.cpp)
extern const float NF4_BOUNDARY[15];
// bnb's signed dynamic 8-bit map, create_dynamic_map(signed=True): 256 ascending fp32 values
const float* dynamic_code8();

HOST_DEVICE inline int64_t nf4_packed_bytes(int64_t n) { return (n + 1) / 2; }
HOST_DEVICE inline int64_t nf4_num_blocks(int64_t n) { return (n + NF4_BLOCK - 1) / NF4_BLOCK; }
HOST_DEVICE inline int64_t nf4_num_dq_blocks(int64_t n) {
    return (nf4_num_blocks(n) + NF4_DQ_BLOCK - 1) / NF4_DQ_BLOCK;
}

// ----------------------------------------------------------------------------------------------
// one NF4 tensor (a single weight matrix of a single layer: bitsandbytes quantizes each Linear
// separately, so every (layer, matrix) has its own offset)

struct Nf4Tensor {
    int64_t numel = 0;
    std::vector<uint8_t> packed;    // (nf4_packed_bytes(numel)) codes, element 2i in the high nibble
    std::vector<uint8_t> absmax_q;  // (nf4_num_blocks(numel)) dynamic-map codes of absmax - offset
    std::vector<float> scale2;      // (nf4_num_dq_blocks(numel)) max |absmax - offset| per 256 blocks
    float offset = 0.0f;            // mean of the block absmax values
};

// The byte record of one NF4 tensor: the same bytes in host memory, on the GPU and in a model
// file, so a pre-quantized file is copied to the device as is. Little-endian, in this order:
//   offset_at    float    offset
//   scale2_at    float    scale2[n_dq_blocks]
//   absmax_q_at  uint8    absmax_q[n_blocks]         (starts on a 16-byte boundary)
//   packed_at    uint8    packed[(numel + 1) / 2]    (starts on a 16-byte boundary)
//   bytes                 total, rounded up to 16 so that stacked records stay aligned
// A stacked (L, rows, cols) weight is L records of nf4_layout(rows * cols).bytes back to back.
struct Nf4Layout {
    int64_t numel, n_blocks, n_dq_blocks;
    int64_t offset_at, scale2_at, absmax_q_at, packed_at, bytes;
};
Nf4Layout nf4_layout(int64_t numel);
void nf4_to_record(const Nf4Tensor& t, uint8_t* record);  // writes nf4_layout(t.numel).bytes
// Reads a record back; checks that offset and scale2 are finite and scale2 >= 0 (InputError
// naming `what` otherwise), so a corrupt file is an error instead of garbage weights.
Nf4Tensor nf4_from_record(const uint8_t* record, int64_t numel, const char* what);
// bits of storage per parameter for a tensor of numel parameters (record bytes, without padding)
double nf4_bits_per_param(int64_t numel);

// ----------------------------------------------------------------------------------------------
// CPU twin (quant_cpu.cpp). `w` holds n values of `dtype` (DT_F32/DT_F16/DT_BF16), flattened
// row-major. A NaN or Inf in w throws InputError("<name>: ...") naming the tensor and element.

// first level only (compress_statistics=False): packed codes and fp32 absmax
void nf4_quantize_cpu(uint8_t* packed, float* absmax, const void* w, int32_t dtype, int64_t n,
                      const char* name);
// second level: offset, 8-bit codes and scales of an absmax vector of n_blocks values
// (num_sms: see torch_cuda_mean; it changes nothing below 4.3M blocks, i.e. 277M weights)
void nf4_double_quantize_cpu(uint8_t* absmax_q, float* scale2, float* offset, const float* absmax,
                             int64_t n_blocks, int num_sms = 132);
// the absmax values the 4-bit dequantization uses: code8[q] * scale2 + offset
void nf4_dequantize_absmax_cpu(float* absmax, const uint8_t* absmax_q, const float* scale2,
                               float offset, int64_t n_blocks);
// w' = NF4[code] * absmax, rounded to out_dtype
void nf4_dequantize_cpu(void* out, int32_t out_dtype, const uint8_t* packed, const float* absmax,
                        int64_t n);
// both levels together, as bnb's quantize_4bit(..., compress_statistics=True)
Nf4Tensor nf4_quantize_dq_cpu(const void* w, int32_t dtype, int64_t n, const char* name,
                              int num_sms = 132);
void nf4_dequantize_dq_cpu(void* out, int32_t out_dtype, const Nf4Tensor& t);

// The numeric building blocks, exposed for the tests and the GPU twin's checks.
// The GPU's rcp.approx.ftz.f32 (MUFU.RCP), emulated from tables probed on an H100 (tools/rcp_probe.cu):
// exact for every bf16/fp16 value (so the 4-bit codes of 16-bit weights are exact), and for 98.99%
// of other fp32 mantissas. The second level takes the reciprocal of an arbitrary fp32 scale2, and a
// one-ulp different reciprocal changes an 8-bit code about once per 1000 groups: the CPU twin may
// differ from bitsandbytes in one absmax_q code per ~100k groups (a 7B model has 400k groups).
float gpu_rcp_approx(float x);
// PyTorch's CUDA mean of n contiguous fp32 values (torch.Tensor.mean): its summation tree depends
// on n and, for n > 32768 * SMs (4.3M on the 132-SM H100 SXM and H200; a Llama-2 70B MLP weight
// has 3.7M blocks), on the SM count of the GPU. The plan says how the work is split (Reduce.cuh's
// setReduceConfig for a contiguous 1-D sum): loads of 4 floats when n > 128, `width` threads per
// block, `ctas` blocks whose partial sums a last pass adds.
struct TorchMeanPlan {
    bool vec4;
    int width;
    int ctas;
};
TorchMeanPlan torch_mean_plan(int64_t n, int num_sms, int max_threads_per_sm = 2048);
float torch_cuda_mean(const float* x, int64_t n, int num_sms = 132);
// bnb's NF4 decision tree and dynamic-map search, on an already scaled value, with the tables above
uint8_t nf4_code_of(float x);
uint8_t dynamic_code8_of(float x);

// The two searches themselves, one definition for both twins (quant.cu passes its shared-memory
// copies of the tables).
// NF4: bnb's 4-level decision tree, written as the binary search it is: the result is the number
// of boundaries below x (x > b). A NaN is never > anything and ends at code 0. Comparisons are
// turned into bits rather than branches: weights are noise to a branch predictor, and the branchy
// form was 6x slower on the CPU. boundary: NF4_BOUNDARY's 15 values.
HOST_DEVICE inline uint8_t nf4_code_search(const float* boundary, float x) {
    int c = (int)(x > boundary[7]) << 3;
    c |= (int)(x > boundary[c + 3]) << 2;
    c |= (int)(x > boundary[c + 1]) << 1;
    c |= (int)(x > boundary[c]);
    return (uint8_t)c;
}
// The 8-bit map: bnb's dQuantize (non-stochastic), step by step: a binary search that starts at
// index 127 and moves by 64, 32, ..., 1, remembering the last index it passed on each side; then
// the nearer of the final index and that neighbour, measured against the fp32 midpoint
// (a + b) * 0.5f (an add then a multiply: nothing to fuse). The tie rule follows the side: a value
// exactly on the midpoint above the final index keeps the final (lower) code, one exactly on the
// midpoint below it also keeps the final (upper) code. NaN walks down to index 0.
// code: dynamic_code8()'s 256 values.
HOST_DEVICE inline uint8_t dynamic_code8_search(const float* code, float x) {
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = -1.0f, upper = 1.0f;
    float val = code[pivot];
    for (int step = 64; step > 0; step >>= 1) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += step;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= step;
        }
        val = code[pivot];
    }
    if (upper_pivot == 255) upper = code[255];
    if (lower_pivot == 0) lower = code[0];
    if (x > val) {
        const float midpoint = (upper + val) * 0.5f;
        return (uint8_t)(x > midpoint ? upper_pivot : pivot);
    }
    const float midpoint = (lower + val) * 0.5f;
    return (uint8_t)(x < midpoint ? lower_pivot : pivot);
}

// ----------------------------------------------------------------------------------------------
// GPU (quant.cu). Launchers take the output first and a stream; every launch is checked.
// cudaStream_t is declared the way cuda_runtime.h declares it, so host C++ can call these.
typedef struct CUstream_st* cudaStream_t;

// Device pointers into one NF4 record (see Nf4Layout); offset lives on the device too.
struct Nf4View {
    int64_t numel;
    float* offset;
    float* scale2;
    uint8_t* absmax_q;
    uint8_t* packed;
};
Nf4View nf4_view(uint8_t* record, int64_t numel);  // record: device memory of nf4_layout(numel).bytes

// Bytes of device scratch nf4_quantize_gpu needs for a tensor of numel values.
int64_t nf4_quantize_workspace_bytes(int64_t numel);
// Quantizes n values of dtype at w (device) into out (both levels). Sets *nonfinite (device int)
// to 1 if any value is NaN/Inf; leaves it alone otherwise. No synchronisation.
void nf4_quantize_gpu(Nf4View out, const void* w, int32_t dtype, int* nonfinite, void* workspace,
                      cudaStream_t stream);
// The same plus the check: synchronises the stream and throws InputError("<name>: ...") on a
// NaN/Inf. This is what loading a model calls for each weight.
void nf4_quantize_checked_gpu(Nf4View out, const void* w, int32_t dtype, void* workspace,
                              const char* name, cudaStream_t stream);
// First level only (absmax as fp32), for checks against bnb's compress_statistics=False.
void nf4_quantize_plain_gpu(uint8_t* packed, float* absmax, const void* w, int32_t dtype,
                            int64_t n, int* nonfinite, cudaStream_t stream);
// PyTorch's CUDA mean of n fp32 values at x (device), written to *mean (device), split the way
// PyTorch splits it on the current GPU. workspace: 4 * max(1, (n + 15) / 16) bytes.
void torch_mean_gpu(float* mean, const float* x, int64_t n, void* workspace, cudaStream_t stream);
// Dequantize to out_dtype (DT_BF16 for the trainer; DT_F16/DT_F32 too).
void nf4_dequantize_gpu(void* out, int32_t out_dtype, Nf4View in, cudaStream_t stream);
void nf4_dequantize_plain_gpu(void* out, int32_t out_dtype, const uint8_t* packed,
                              const float* absmax, int64_t n, cudaStream_t stream);
