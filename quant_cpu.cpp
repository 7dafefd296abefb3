// quant_cpu.cpp — the plain C++ twin of quant.cu: NF4 quantization with double quantization,
// bit-identical to bitsandbytes (see quant.h for the recipe). Part of the CPU reference library;
// the tests (test/cpu_quant.cpp, ./test_cpu -ts="nf4*") check it against bitsandbytes' own output.
//
// bitsandbytes runs these steps on the GPU, compiled with nvcc --use_fast_math. To give the same
// bits on a CPU every GPU float behaviour that changes a result is spelled out here:
//   - flush-to-zero (-ftz=true): subnormal inputs and results of mul/abs/max count as signed zero
//     (ftz() below);
//   - the approximate reciprocal (-prec-div=false turns 1.0f / absmax into rcp.approx.ftz.f32,
//     the MUFU.RCP unit), which is not the correctly rounded 1/x (gpu_rcp_approx());
//   - no fma: no step of bnb's quantize or dequantize is a contractible a * b + c, and PyTorch adds
//     the offset in a separate op, so every product and sum here is rounded on its own. This file
//     is built with -ffp-contract=off (Makefile) so that g++ never fuses them either;
//   - PyTorch's summation order for absmax.mean() (torch_cuda_mean()).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "quant.h"

// ----------------------------------------------------------------------------------------------
// constants of the format

// bnb's NF4 values (functional.py get_4bit_type("nf4") and kernels.cu's lookup table).
const float NF4_CODE[16] = {
    -1.0f,                 -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f,  0.16093020141124725f,  0.24611230194568634f,  0.33791524171829224f,
    0.44070982933044434f,  0.5626170039176941f,   0.7229568362236023f,   1.0f};

// The 15 decision boundaries of bnb's dQuantizeNF4 tree: a scaled value x gets code k = the number
// of boundaries it exceeds (x > b, so a value exactly on a boundary takes the lower code). They are
// bnb's constants, not the fp32 midpoints of NF4_CODE: four of them (k = 0, 8, 12, 14) differ from
// (NF4_CODE[k] + NF4_CODE[k + 1]) / 2 by one ulp, and that ulp decides ties, so they are written
// out exactly (hex floats).
const float NF4_BOUNDARY[15] = {
    -0x1.b239b2p-1f, -0x1.38a4ep-1f,  -0x1.d709p-2f,   -0x1.5bd4ecp-2f, -0x1.e079d8p-3f,
    -0x1.1a7178p-3f, -0x1.74f0e2p-5f, 0x1.45f5fep-5f,  0x1.ec90c6p-4f,  0x1.a0cfcp-3f,
    0x1.2b05a8p-2f,  0x1.8ea7f2p-2f,  0x1.00da06p-1f,  0x1.491b5ep-1f,  0x1.b913b2p-1f};

// ----------------------------------------------------------------------------------------------
// GPU float behaviour, emulated

// Flush a subnormal to a zero of the same sign (what .ftz does to inputs and results). NaN stays.
static inline float ftz(float x) { return std::fabs(x) < FLT_MIN ? std::copysign(0.0f, x) : x; }
// mul.ftz.f32: flushed inputs, product rounded to nearest, flushed result. Never fused.
static inline float mul_ftz(float a, float b) { return ftz(ftz(a) * ftz(b)); }

// rcp.approx.ftz.f32 is one MUFU.RCP: a table lookup plus interpolation in hardware. NVIDIA
// documents only its error bound; probing every fp32 mantissa on an H100 (tools/rcp_probe.cu) gives:
//   - the result depends only on the mantissa: rcp(m * 2^e) = rcp(m) * 2^-e, flushed to zero if
//     that is subnormal; zero and subnormal inputs give inf, inf gives 0, NaN gives 0x7fffffff;
//   - for 86.8% of mantissas it is the correctly rounded 1/m, for 8.7% one ulp above, for 4.5%
//     one ulp below. The error is a smooth curve in each 1/128 of [1, 2) plus a rough part
//     (interpolation with truncated products), so no closed formula reproduces every bit.
// The emulation therefore has two parts:
//   - RCP_FIX10: the exact correction for the 1024 mantissas with at most 10 fraction bits, i.e.
//     every bf16 and fp16 value. The absmax of a block of bf16/fp16 weights is such a value, so
//     the whole first level (the 4-bit codes) is exact;
//   - RCP_ERR_CUBIC: elsewhere (the fp32 absmax of the second level), the smooth part of the error,
//     a cubic per segment fitted to the probe, in ulps. It picks the hardware's result for 98.99%
//     of all mantissas; the rest are one ulp off, and a one-ulp different scale changes an 8-bit
//     code only when a value sits within an ulp of a decision midpoint, about once per 1000 groups
//     of 256 (tests: test/gpu_quant.cu, which also re-probes the GPU and checks both tables).
// Both tables: 2 bits per mantissa for RCP_FIX10 (0: correctly rounded, 1: one ulp up, 3: one ulp
// down; mantissa j << 13 is entry j, 16 entries per word); coefficients of e(t) = c0 + c1 t +
// c2 t^2 + c3 t^3 with t = (low 16 mantissa bits) / 65536 for segment (mantissa >> 16).
// Both are the output of ./rcp_probe on an NVIDIA H100 80GB HBM3 (sm_90), pasted verbatim; run it
// again on another GPU generation to regenerate them.
static const uint32_t RCP_FIX10[64] = {
0x30403000u, 0x00000114u, 0x30000003u, 0x30000001u, 0x0c003000u, 0x0043f000u,
0x00050014u, 0xf0000004u, 0x0010c000u, 0x00040140u, 0x00000003u, 0x000000c3u,
0x01400000u, 0x0cc03004u, 0x00000014u, 0x01000000u, 0x00000100u, 0xc0000030u,
0x00110000u, 0x00000005u, 0x00000c00u, 0x0c100000u, 0x00000000u, 0x00000040u,
0x01400010u, 0xc005004cu, 0x00040004u, 0x0cc04000u, 0x00101404u, 0x003c0040u,
0x00010004u, 0x00440010u, 0x00054000u, 0x40000041u, 0x30000040u, 0x00000140u,
0x00000000u, 0x00000000u, 0x00003000u, 0x00000040u, 0x00514000u, 0x00400000u,
0x40000140u, 0x05000000u, 0x00000000u, 0x00010100u, 0xc0000000u, 0x00000000u,
0xc0000000u, 0x00000454u, 0x04004400u, 0x00004000u, 0x00000000u, 0x00000000u,
0x11110000u, 0x04000000u, 0x00000000u, 0x00410000u, 0x00000001u, 0x0f303001u,
0x00010c00u, 0x01400000u, 0x00000400u, 0x00030030u, };
static const float RCP_ERR_CUBIC[128][4] = {
    {-0x1.9c8296p-2, 0x1.9d7c5ap+1, -0x1.2c124p+3, 0x1.bbb3cp+2},
    {-0x1.2064b6p-5, 0x1.c3cc5cp+1, -0x1.5b540ap+3, 0x1.d5dfb2p+2},
    {0x1.5c54fap-5, 0x1.ea35a8p+1, -0x1.5f92dap+3, 0x1.c8e26p+2},
    {-0x1.59dc0ap-3, 0x1.9e4834p+1, -0x1.38cad2p+3, 0x1.ba7d64p+2},
    {-0x1.f20e18p-2, 0x1.1a0fb2p+2, -0x1.486198p+3, 0x1.ae3c8ep+2},
    {-0x1.04152cp-4, 0x1.fe5cfep+1, -0x1.48781ap+3, 0x1.9c0c54p+2},
    {0x1.42d5a8p-3, 0x1.6673aap+1, -0x1.223264p+3, 0x1.937a9ep+2},
    {-0x1.0112b4p-2, 0x1.c6af78p+1, -0x1.2ba89p+3, 0x1.866c4ap+2},
    {-0x1.a2c1e8p-2, 0x1.8e0a44p+1, -0x1.08c6cep+3, 0x1.7b770ep+2},
    {-0x1.6af01p-4, 0x1.280caep+1, -0x1.ebd10ap+2, 0x1.6ee9b8p+2},
    {0x1.2b9b4ap-4, 0x1.1176dp+1, -0x1.ed8ddcp+2, 0x1.659b38p+2},
    {-0x1.7416a2p-2, 0x1.bc638p+1, -0x1.0736ccp+3, 0x1.5c2194p+2},
    {-0x1.053282p-3, 0x1.a11578p+1, -0x1.01f958p+3, 0x1.4bc426p+2},
    {0x1.a92d52p-5, 0x1.5bc74ap+1, -0x1.ecdc24p+2, 0x1.491da8p+2},
    {0x1.cd54b6p-8, 0x1.5812cep+1, -0x1.e5c2bp+2, 0x1.3dd226p+2},
    {-0x1.0fbe3p-3, 0x1.33d6aep+1, -0x1.c19306p+2, 0x1.36c872p+2},
    {-0x1.9ddc4ep-4, 0x1.71a67cp+1, -0x1.f266f2p+2, 0x1.2bf41ap+2},
    {-0x1.1a9aa6p-6, 0x1.adcd58p+1, -0x1.0007cap+3, 0x1.22cd82p+2},
    {-0x1.2cbc84p-4, 0x1.810ef8p+1, -0x1.ed4f4cp+2, 0x1.1e3294p+2},
    {-0x1.07172ap-2, 0x1.76720cp+1, -0x1.a3b8fep+2, 0x1.0fe40ap+2},
    {-0x1.7087e8p-2, 0x1.4851a8p+1, -0x1.87585cp+2, 0x1.0e822p+2},
    {-0x1.2a5b1ap-3, 0x1.816106p+1, -0x1.b8d58p+2, 0x1.07a104p+2},
    {-0x1.73a4dap-2, 0x1.94d18cp+0, -0x1.4046f6p+2, 0x1.01c61ap+2},
    {0x1.a51e4ap-6, 0x1.9e4b4ep+0, -0x1.5b77a6p+2, 0x1.f238e2p+1},
    {-0x1.a59fe4p-4, 0x1.33dba6p+1, -0x1.87647cp+2, 0x1.dcafb2p+1},
    {0x1.aa0be6p-3, 0x1.5d2ed2p+0, -0x1.4f83d8p+2, 0x1.d4773cp+1},
    {0x1.d7d1f4p-6, 0x1.dd32dap+0, -0x1.6c9c3cp+2, 0x1.cc95c6p+1},
    {-0x1.689bcap-3, 0x1.486998p+0, -0x1.1d42f2p+2, 0x1.c4ae9p+1},
    {0x1.c8c0f2p-3, 0x1.e1bdc2p-1, -0x1.156792p+2, 0x1.b0e356p+1},
    {-0x1.8e8f76p-8, 0x1.38109cp+1, -0x1.6ad81cp+2, 0x1.ab8162p+1},
    {0x1.0f0c2cp-3, 0x1.1e810ep+0, -0x1.0dc966p+2, 0x1.a10a8p+1},
    {-0x1.615506p-3, 0x1.3a4ecep+1, -0x1.3f0c64p+2, 0x1.94afbap+1},
    {-0x1.1c606cp-8, 0x1.f08966p+0, -0x1.3e0c1ap+2, 0x1.857db8p+1},
    {0x1.544416p-5, 0x1.253cd6p+0, -0x1.156c7ep+2, 0x1.813232p+1},
    {-0x1.6cfd96p-2, 0x1.7b7c28p+0, -0x1.ea36f6p+1, 0x1.746598p+1},
    {-0x1.70197ep-7, 0x1.45df22p+1, -0x1.666da8p+2, 0x1.6bf546p+1},
    {-0x1.8ac9c8p-3, 0x1.de9654p+0, -0x1.26e6bcp+2, 0x1.6452b2p+1},
    {0x1.10705p-3, 0x1.f08e46p-1, -0x1.de5266p+1, 0x1.556d68p+1},
    {0x1.079eb2p-4, 0x1.86fc2p+0, -0x1.115d5p+2, 0x1.56760ep+1},
    {0x1.1bb96p-2, 0x1.f46e6cp-1, -0x1.e84a26p+1, 0x1.4855b6p+1},
    {0x1.19754ap-5, 0x1.0a6544p+0, -0x1.d4e846p+1, 0x1.42c65ep+1},
    {-0x1.31f946p-5, 0x1.448aaep+0, -0x1.d5da14p+1, 0x1.3a8e5p+1},
    {0x1.59beecp-5, 0x1.4e39b8p+0, -0x1.f2cc6cp+1, 0x1.34d6eap+1},
    {0x1.1e88dcp-3, 0x1.81c09p-1, -0x1.a48412p+1, 0x1.2f075ep+1},
    {0x1.4026b6p-10, 0x1.432638p+0, -0x1.e7fa6p+1, 0x1.257046p+1},
    {0x1.555484p-6, 0x1.f8e698p-2, -0x1.403a96p+1, 0x1.1b1222p+1},
    {0x1.ec23eep-10, 0x1.113442p+1, -0x1.1b776ap+2, 0x1.177796p+1},
    {-0x1.54cb12p-4, 0x1.d2edfep+0, -0x1.bf70bp+1, 0x1.125d24p+1},
    {0x1.4af44p-3, 0x1.3fe19ep+0, -0x1.d96b7ap+1, 0x1.0a9bcap+1},
    {-0x1.6dd716p-3, 0x1.0cf7eap+1, -0x1.03d082p+2, 0x1.044d6ap+1},
    {-0x1.501e6p-2, 0x1.0b4792p+1, -0x1.cb1bd8p+1, 0x1.000d2ap+1},
    {0x1.92258cp-3, 0x1.d0b4cp-1, -0x1.9f6a52p+1, 0x1.f52daep+0},
    {0x1.69bb1p-4, 0x1.2409cep-2, -0x1.0916bep+1, 0x1.ef8942p+0},
    {-0x1.7f20ep-5, 0x1.2a8316p+1, -0x1.3257dep+2, 0x1.2ad5d6p+1},
    {-0x1.3a0d9ap-3, 0x1.936006p+0, -0x1.85f994p+1, 0x1.d449fp+0},
    {-0x1.17924cp-2, 0x1.f319f4p-1, -0x1.20919p+1, 0x1.cc976p+0},
    {0x1.0e4762p-6, 0x1.db8722p+0, -0x1.c88424p+1, 0x1.c01ebcp+0},
    {0x1.512596p-2, -0x1.8b352p-7, -0x1.032e84p+1, 0x1.ba2ae2p+0},
    {0x1.3afb1ep-5, 0x1.1cba92p+0, -0x1.4b2d92p+1, 0x1.b1ab02p+0},
    {-0x1.caf83ap-3, 0x1.f8291ap-1, -0x1.1b572ap+1, 0x1.9ec3f6p+0},
    {-0x1.f924b8p-5, 0x1.6b274p+0, -0x1.810de4p+1, 0x1.96525ep+0},
    {0x1.a2b10ap-3, 0x1.7804f2p-3, -0x1.f2ed4p+0, 0x1.931ceep+0},
    {0x1.23293ep-2, 0x1.059914p+0, -0x1.7a47b6p+1, 0x1.8bb34cp+0},
    {-0x1.5210bp-4, 0x1.bb4eb8p+0, -0x1.824152p+1, 0x1.7b922cp+0},
    {-0x1.ed54a6p-4, 0x1.770a3cp-3, -0x1.4cac36p+0, 0x1.7d50e8p+0},
    {0x1.16591ep-2, 0x1.b2177cp-5, -0x1.95b094p+0, 0x1.7444d8p+0},
    {0x1.b4c316p-3, 0x1.37c66p+0, -0x1.79991ap+1, 0x1.652c38p+0},
    {-0x1.aa2d64p-4, 0x1.7f8844p+0, -0x1.3a534p+1, 0x1.5f5462p+0},
    {0x1.408c86p-4, 0x1.65e87ep-1, -0x1.09227ap+1, 0x1.5ab428p+0},
    {-0x1.5ec6cep-3, 0x1.3cc012p-1, -0x1.bfbceep+0, 0x1.53812ep+0},
    {0x1.5da792p-5, 0x1.16bde8p+0, -0x1.40a4b2p+1, 0x1.4b252ep+0},
    {0x1.7e2734p-3, -0x1.47df94p-5, -0x1.613fbcp+0, 0x1.47595ap+0},
    {0x1.049486p-4, 0x1.043188p+0, -0x1.226522p+1, 0x1.39cc7cp+0},
    {0x1.c42732p-5, 0x1.32ff2cp-3, -0x1.49843cp+0, 0x1.32a8fp+0},
    {-0x1.d50a06p-4, 0x1.2a2acep+0, -0x1.2f658ap+1, 0x1.2ca85cp+0},
    {-0x1.085d02p-3, -0x1.cbe878p-5, -0x1.24c8p-1, 0x1.2a39eap+0},
    {0x1.65cffep-3, 0x1.3e4f22p-2, -0x1.d9b1a8p+0, 0x1.2955cap+0},
    {0x1.fa3be4p-5, 0x1.96d37p-4, -0x1.2806a8p+0, 0x1.21168ap+0},
    {0x1.35c33ep-3, 0x1.299a24p+0, -0x1.3fc49ep+1, 0x1.14d548p+0},
    {-0x1.682d02p-4, 0x1.6d82d4p+0, -0x1.01087cp+1, 0x1.17602p+0},
    {-0x1.f6abdap-5, 0x1.5df236p-1, -0x1.8a38a2p+0, 0x1.14bc18p+0},
    {0x1.41872ap-3, 0x1.ecb8bcp-1, -0x1.306332p+1, 0x1.30f54ap+0},
    {0x1.8e408ap-3, -0x1.250f9p-2, -0x1.7caeeap-1, 0x1.00dfap+0},
    {0x1.794004p-3, 0x1.3bc9b2p+0, -0x1.3ab87ap+1, 0x1.f5855ep-1},
    {-0x1.6cce5ep-5, 0x1.45131ep+0, -0x1.22f9dp+1, 0x1.f74f96p-1},
    {-0x1.978feep-5, -0x1.502f9cp-2, -0x1.c2e9cep-4, 0x1.eb94c2p-1},
    {-0x1.97b6dep-7, 0x1.44b176p-2, -0x1.f05b34p-1, 0x1.d5bccap-1},
    {0x1.1bba96p-6, 0x1.247924p+0, -0x1.f9589cp+0, 0x1.dbbec2p-1},
    {0x1.05083ap-3, -0x1.6593fp-8, -0x1.054bdep+0, 0x1.dd2732p-1},
    {0x1.2ea114p-2, 0x1.7bc9ap-1, -0x1.09e47cp+1, 0x1.d1c112p-1},
    {-0x1.e41e0cp-4, 0x1.522722p+0, -0x1.1c0e8p+1, 0x1.ced9ccp-1},
    {0x1.2e091p-3, -0x1.a25c5ep-2, -0x1.9685e4p-2, 0x1.c96184p-1},
    {-0x1.b11f92p-9, 0x1.717924p+0, -0x1.48294ep+1, 0x1.acce9ap-1},
    {-0x1.81fd4ep-6, 0x1.a03f2ap-1, -0x1.d162cap+0, 0x1.9b72f6p-1},
    {0x1.4841b2p-5, -0x1.9e149ep-2, -0x1.4c163p-3, 0x1.9aff74p-1},
    {0x1.4544fep-5, -0x1.468632p-2, -0x1.154b74p-1, 0x1.953d66p-1},
    {-0x1.ffa96cp-7, 0x1.f450cap-1, -0x1.f8450cp+0, 0x1.903966p-1},
    {0x1.092314p-5, 0x1.6a978p+0, -0x1.3fd774p+1, 0x1.9e2902p-1},
    {0x1.13f8e2p-2, 0x1.a92c0ep-1, -0x1.f49c5ep+0, 0x1.862b4ep-1},
    {-0x1.536d6cp-4, 0x1.345452p+0, -0x1.7fe3ccp+0, 0x1.7c583ap-1},
    {0x1.feb0b2p-4, 0x1.cc71cp-2, -0x1.276abp+0, 0x1.8ed71p-1},
    {-0x1.8b0a62p-5, 0x1.c9f82ap-2, -0x1.87914p-1, 0x1.780146p-1},
    {-0x1.f302fp-4, 0x1.203d0ap+0, -0x1.709768p+0, 0x1.71a6ccp-1},
    {0x1.8269eep-5, 0x1.9c8f0cp-2, -0x1.2338b8p+0, 0x1.6566eep-1},
    {0x1.602c82p-6, 0x1.b450fcp-3, -0x1.c2e3b2p-1, 0x1.58ff1cp-1},
    {-0x1.ac3caep-3, 0x1.bf2b0ap-2, -0x1.19f45p-1, 0x1.22a1cp-1},
    {0x1.3ecf7p-7, 0x1.1a64d4p+0, -0x1.81510ep+0, 0x1.4afe26p-1},
    {0x1.0f1706p-6, 0x1.58dd3ap-5, -0x1.90129cp-2, 0x1.498802p-1},
    {0x1.1b22a2p-4, 0x1.39654p+0, -0x1.2cb224p+1, 0x1.53aaa2p-1},
    {0x1.d52e08p-4, 0x1.0f087p-1, -0x1.4b6726p+0, 0x1.51fad4p-1},
    {0x1.3e738ap-6, -0x1.b4275ap-4, -0x1.a7e066p-3, 0x1.38f93p-1},
    {0x1.3df06cp-4, 0x1.4aa85p+0, -0x1.19a17cp+1, 0x1.30bcfp-1},
    {0x1.764d08p-6, 0x1.56229ap-1, -0x1.448bc2p+0, 0x1.2fb6b2p-1},
    {0x1.a8fddap-6, -0x1.acb7dap-4, -0x1.3dde0ep-2, 0x1.20c82ep-1},
    {-0x1.09efbep-4, 0x1.ec93b8p-1, -0x1.6c1b6ap+0, 0x1.1d0088p-1},
    {0x1.27b6f8p-2, -0x1.a6e084p-3, -0x1.30cad6p-1, 0x1.23169ep-1},
    {0x1.06fbe8p-4, 0x1.374d7ep-2, -0x1.7deabap-1, 0x1.16b1a4p-1},
    {-0x1.2fe8d2p-4, 0x1.d6eb52p-2, -0x1.e91fc2p-1, 0x1.14a888p-1},
    {0x1.da047p-3, 0x1.611f6p-3, -0x1.266c3ep+0, 0x1.05d124p-1},
    {-0x1.cd5366p-3, -0x1.2321e2p-1, 0x1.18496ep-1, 0x1.11f3eep-1},
    {0x1.9836a2p-5, 0x1.d87dfp-4, -0x1.5d15c6p-1, 0x1.f93f2ep-2},
    {0x1.e27502p-3, 0x1.f845e6p-3, -0x1.0b9a88p+0, 0x1.0b0be4p-1},
    {0x1.bc0ebap-3, -0x1.38293cp-2, -0x1.5d54p-2, 0x1.ed7648p-2},
    {0x1.074a04p-4, 0x1.cee3fp-2, -0x1.64a974p-1, 0x1.e0b646p-2},
    {0x1.8df33ap-5, 0x1.f5968cp-2, -0x1.272d2ep+0, 0x1.0254d2p-1},
    {0x1.2d686ap-3, -0x1.427f24p-2, -0x1.171e24p-1, 0x1.ec4988p-2},
    {-0x1.cadfcap-3, 0x1.f094f8p-6, 0x1.90451cp-6, 0x1.dc80f4p-2},
    {-0x1.7ce0f2p-3, -0x1.4d3c7p-1, 0x1.e12a4ep-1, 0x1.422432p-3},
};

// Which neighbour of the correctly rounded reciprocal rn = 1/xm the hardware returns (-1, 0, +1),
// for xm in [1, 2) with fraction bits m.
static int rcp_correction(uint32_t m, float xm, float rn) {
    if ((m & 0x1fffu) == 0) {
        const uint32_t code = (RCP_FIX10[m >> 17] >> (2 * ((m >> 13) & 15))) & 3u;
        return code == 1 ? 1 : code == 3 ? -1 : 0;
    }
    const float* c = RCP_ERR_CUBIC[m >> 16];
    const double t = (double)(m & 0xffffu) / 65536.0;
    const double err = (double)c[0] + t * ((double)c[1] + t * ((double)c[2] + t * (double)c[3]));
    // where the exact 1/xm lies relative to rn, in ulps of (0.5, 1) (2^-24); double is exact enough
    const double pos = (1.0 / (double)xm - (double)rn) * 16777216.0;
    const double v = pos + err;
    return v > 0.5 ? 1 : v < -0.5 ? -1 : 0;
}

float gpu_rcp_approx(float x) {
    uint32_t b;
    memcpy(&b, &x, 4);
    const uint32_t sign = b & 0x80000000u, e = (b >> 23) & 0xffu, m = b & 0x7fffffu;
    uint32_t r;
    if (e == 0xffu) {
        r = m ? 0x7fffffffu : sign;  // NaN -> canonical NaN, inf -> 0
    } else if (e == 0) {
        r = sign | 0x7f800000u;  // zero and (flushed) subnormals -> inf
    } else {
        const uint32_t xm_bits = 0x3f800000u | m;
        float xm, rn;
        memcpy(&xm, &xm_bits, 4);
        rn = 1.0f / xm;  // correctly rounded, in (0.5, 1]
        uint32_t rb;
        memcpy(&rb, &rn, 4);
        rb = (uint32_t)((int32_t)rb + rcp_correction(m, xm, rn));
        // scale by 2^(127 - e) through the exponent field; a subnormal result is flushed to zero
        const int exp_out = (int)((rb >> 23) & 0xffu) + 127 - (int)e;
        r = exp_out <= 0 ? sign : sign | ((uint32_t)exp_out << 23) | (rb & 0x7fffffu);
    }
    float out;
    memcpy(&out, &r, 4);
    return out;
}

// ----------------------------------------------------------------------------------------------
// the dynamic 8-bit map: bnb's create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)
// For i = 0..6: 2^i + 1 boundaries evenly spaced on [0.1, 1] (torch.linspace in fp32), their 2^i
// midpoints scaled by 10^(i-6), with both signs; plus 0 and 1.0; sorted: 127 negative values,
// 0 at index 127, 128 positive values ending with 1.0 at index 255. Every step is an fp32
// operation in PyTorch (CPU), so it is done in fp32 here, in the same order.

// torch.linspace(start, end, steps, dtype=float32) on the CPU: the first half counts up from
// start, the second half counts down from end. PyTorch's CPU kernels are built for AVX2/AVX-512
// with FMA, and the compiler fuses start + step * i into one fma: with separately rounded
// products 42 of the 256 map values come out one ulp off bnb's (checked against the fixture's
// state2_code), with std::fma all 256 agree.
static float linspace_f32(float start, float end, int64_t steps, int64_t i) {
    const float step = (end - start) / (float)(steps - 1);
    if (i < steps / 2) return std::fma(step, (float)i, start);
    return std::fma(-step, (float)(steps - i - 1), end);
}

const float* dynamic_code8() {
    static float code[256];
    static bool ready = false;
    if (ready) return code;
    std::vector<float> data;
    for (int i = 0; i < 7; i++) {
        const int64_t n = ((int64_t)1 << i) + 1;  // boundaries
        // Python's 10 ** (i - 6) is a double; PyTorch multiplies an fp32 tensor by it as fp32
        const float scale = (float)std::pow(10.0, (double)(i - 6));
        for (int64_t j = 0; j + 1 < n; j++) {
            float mid = (linspace_f32(0.1f, 1.0f, n, j) + linspace_f32(0.1f, 1.0f, n, j + 1)) / 2.0f;
            data.push_back(scale * mid);
            data.push_back(-scale * mid);
        }
    }
    data.push_back(0.0f);
    data.push_back(1.0f);
    ASSERT(data.size() == 256, "create_dynamic_map(signed=True) has 256 values");
    std::sort(data.begin(), data.end());
    std::copy(data.begin(), data.end(), code);
    ready = true;
    return code;
}

// ----------------------------------------------------------------------------------------------
// the two code searches

uint8_t nf4_code_of(float x) { return nf4_code_search(NF4_BOUNDARY, x); }

uint8_t dynamic_code8_of(float x) { return dynamic_code8_search(dynamic_code8(), x); }

// ----------------------------------------------------------------------------------------------
// PyTorch's CUDA mean (ATen Reduce.cuh + MeanOps), for one contiguous fp32 vector.
// The launch configuration is a function of n alone (and the SM count for big n):
//   n > 128: loads of 4 floats ("vectorize along input"), each thread keeps 4 running sums, one per
//            vector lane; else one value at a time into 4 sums of strided values;
//   threads per block: the largest power of two <= n/4 (n if not vectorized), at most 512;
//   at least 256 values per thread: the input is split over several blocks ("ctas"), whose
//            partial sums a last block adds up;
//   in a block: each thread folds its 4 sums left to right, then a tree: halves through shared
//            memory down to 32 threads, then warp shuffles with offsets 16, 8, 4, 2, 1;
//   mean = sum * (1.0f / n) (MeanOps::project, a multiply by the fp32 factor, not a division).
// Fresh CUDA allocations are 256-byte aligned, so the unaligned-head path of the vectorized load
// never runs for bnb's absmax tensor and is not modelled.

static int last_pow2(int64_t n) {  // largest power of two <= n (1 for n <= 1)
    int p = 1;
    while ((int64_t)p * 2 <= n) p *= 2;
    return p;
}
static int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The reduction tree of one block over its threads' values v[0..width).
static float block_tree_sum(std::vector<float>& v, int width) {
    for (int off = width / 2; off >= 32; off /= 2)  // shared-memory halving
        for (int t = 0; t < off; t++) v[t] = v[t] + v[t + off];
    const int lanes = std::min(width, 32);
    for (int off = lanes / 2; off > 0; off /= 2)  // __shfl_down: lane t adds lane t + off
        for (int t = 0; t < off; t++) v[t] = v[t] + v[t + off];
    return v[0];
}

TorchMeanPlan torch_mean_plan(int64_t n, int num_sms, int max_threads_per_sm) {
    TorchMeanPlan p;
    p.vec4 = n > 128;
    p.width = last_pow2(std::min<int64_t>(p.vec4 ? n / 4 : n, 512));
    const int64_t per_thread = div_up(n, p.width);
    p.ctas = 1;
    // Split over blocks once a thread would add up >= 256 values (Reduce.cuh also requires the
    // split across warps, which holds from 16 values per thread on).
    if (per_thread >= 256) {
        const int64_t target_grid = (int64_t)num_sms * (max_threads_per_sm / p.width);
        p.ctas = (int)std::max(std::min(target_grid, div_up(per_thread, 16)), div_up(per_thread, 256));
    }
    return p;
}

float torch_cuda_mean(const float* x, int64_t n, int num_sms) {
    const TorchMeanPlan plan = torch_mean_plan(n, num_sms);
    const bool vec4 = plan.vec4;
    const int width = plan.width, ctas = plan.ctas;
    const int64_t stride = (int64_t)width * ctas;  // in loads (vectors of 4, or single values)
    std::vector<float> partial(ctas), v(width);
    for (int c = 0; c < ctas; c++) {
        for (int t = 0; t < width; t++) {
            float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            if (vec4) {
                int64_t idx = t + (int64_t)c * width;
                for (; idx * 4 + 3 < n; idx += stride)
                    for (int i = 0; i < 4; i++) acc[i] = acc[i] + x[idx * 4 + i];
                const int64_t tail = n - n % 4 + t;  // the last n % 4 values: block 0, lanes 0..2
                if (c == 0 && tail < n) acc[0] = acc[0] + x[tail];
            } else {
                int64_t idx = t + (int64_t)c * width;
                for (; idx + 3 * stride < n; idx += 4 * stride)
                    for (int i = 0; i < 4; i++) acc[i] = acc[i] + x[idx + i * stride];
                for (int i = 0; i < 4 && idx < n; i++, idx += stride) acc[i] = acc[i] + x[idx];
            }
            v[t] = ((acc[0] + acc[1]) + acc[2]) + acc[3];
        }
        partial[c] = block_tree_sum(v, width);
    }
    float sum = partial[0];
    if (ctas > 1) {  // the last block: thread t adds partials t, t + width, ... then the same tree
        for (int t = 0; t < width; t++) {
            float acc = 0.0f;
            for (int c = t; c < ctas; c += width) acc = acc + partial[c];
            v[t] = acc;
        }
        sum = block_tree_sum(v, width);
    }
    const float factor = 1.0f / (float)n;  // computed on the host in fp32
    return sum * factor;
}

// ----------------------------------------------------------------------------------------------
// quantize / dequantize

// w[0..n) of dtype as fp32 (exact for all three dtypes); throws on NaN/Inf naming the tensor.
static std::vector<float> load_checked(const void* w, int32_t dtype, int64_t n, const char* name) {
    if (dtype != DT_F32 && dtype != DT_F16 && dtype != DT_BF16)
        fail("%s: cannot quantize dtype %d (need f32, f16 or bf16)", name, (int)dtype);
    std::vector<float> x((size_t)n);
    // in parallel (a 7B MLP weight is 45M values); an exception must not leave an OpenMP region,
    // so the threads only find the first bad element and the error is thrown after the loop
    const int64_t chunk = 1 << 16;
    int64_t first_bad = n;
#pragma omp parallel for schedule(static) reduction(min : first_bad)
    for (int64_t c0 = 0; c0 < n; c0 += chunk) {
        const int64_t m = std::min(chunk, n - c0);
        convert_to_f32(x.data() + c0, (const uint8_t*)w + c0 * (int64_t)dtype_size(dtype), dtype, (size_t)m);
        for (int64_t i = c0; i < c0 + m; i++)
            if (!std::isfinite(x[i])) {
                first_bad = std::min(first_bad, i);
                break;
            }
    }
    if (first_bad < n)
        fail("%s: %s at element %lld: NF4 quantization needs finite weights", name,
             std::isnan(x[first_bad]) ? "NaN" : "Inf", (long long)first_bad);
    return x;
}

void nf4_quantize_cpu(uint8_t* packed, float* absmax, const void* w, int32_t dtype, int64_t n,
                      const char* name) {
    std::vector<float> x = load_checked(w, dtype, n, name);
    const int64_t nb = nf4_num_blocks(n);
    // blocks are independent (as on the GPU): any thread split gives the same bytes
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t begin = b * NF4_BLOCK, end = std::min(n, begin + NF4_BLOCK);
        // absmax over the block; fabsf/fmaxf under ftz see a subnormal as 0
        float amax = 0.0f;
        for (int64_t i = begin; i < end; i++) amax = std::max(amax, ftz(std::fabs(x[i])));
        absmax[b] = amax;
        // bnb multiplies by an approximate reciprocal instead of dividing. amax == 0 gives +inf
        // and 0 * inf = NaN, which the decision tree sends to code 0.
        const float scale = gpu_rcp_approx(amax);
        // pairs: element 2i in the high nibble. A short last block of odd length pads with a 0
        // (bnb's load fills missing values with 0), which is quantized like any other value.
        for (int64_t i = begin; i < end; i += 2) {
            const float lo = i + 1 < end ? x[i + 1] : 0.0f;
            packed[i / 2] = (uint8_t)(nf4_code_of(mul_ftz(x[i], scale)) << 4 | nf4_code_of(mul_ftz(lo, scale)));
        }
    }
}

void nf4_double_quantize_cpu(uint8_t* absmax_q, float* scale2, float* offset, const float* absmax,
                             int64_t n_blocks, int num_sms) {
    const float mean = torch_cuda_mean(absmax, n_blocks, num_sms);
    *offset = mean;
    const int64_t ng = div_up(n_blocks, NF4_DQ_BLOCK);
    std::vector<float> centred(NF4_DQ_BLOCK);
    for (int64_t g = 0; g < ng; g++) {
        const int64_t begin = g * NF4_DQ_BLOCK, end = std::min(n_blocks, begin + NF4_DQ_BLOCK);
        float amax = 0.0f;
        for (int64_t i = begin; i < end; i++) {
            centred[i - begin] = absmax[i] - mean;  // PyTorch's subtraction: plain IEEE fp32
            amax = std::max(amax, ftz(std::fabs(centred[i - begin])));
        }
        scale2[g] = amax;
        const float scale = gpu_rcp_approx(amax);
        for (int64_t i = begin; i < end; i++) absmax_q[i] = dynamic_code8_of(mul_ftz(centred[i - begin], scale));
    }
}

void nf4_dequantize_absmax_cpu(float* absmax, const uint8_t* absmax_q, const float* scale2,
                               float offset, int64_t n_blocks) {
    const float* code = dynamic_code8();
    for (int64_t b = 0; b < n_blocks; b++) {
        float a = mul_ftz(code[absmax_q[b]], scale2[b / NF4_DQ_BLOCK]);  // bnb's 8-bit dequantize
        absmax[b] = a + offset;                                          // PyTorch's absmax += offset
    }
}

void nf4_dequantize_cpu(void* out, int32_t out_dtype, const uint8_t* packed, const float* absmax,
                        int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const uint8_t byte = packed[i / 2];
        const uint8_t c = (i % 2 == 0) ? byte >> 4 : byte & 0x0f;
        const float v = mul_ftz(NF4_CODE[c], absmax[i / NF4_BLOCK]);
        if (out_dtype == DT_BF16) ((uint16_t*)out)[i] = f32_to_bf16(v);
        else if (out_dtype == DT_F16) ((uint16_t*)out)[i] = f32_to_f16(v);
        else ((float*)out)[i] = v;
    }
}

Nf4Tensor nf4_quantize_dq_cpu(const void* w, int32_t dtype, int64_t n, const char* name, int num_sms) {
    Nf4Tensor t;
    t.numel = n;
    t.packed.resize((size_t)nf4_packed_bytes(n));
    t.absmax_q.resize((size_t)nf4_num_blocks(n));
    t.scale2.resize((size_t)nf4_num_dq_blocks(n));
    std::vector<float> absmax((size_t)nf4_num_blocks(n));
    nf4_quantize_cpu(t.packed.data(), absmax.data(), w, dtype, n, name);
    nf4_double_quantize_cpu(t.absmax_q.data(), t.scale2.data(), &t.offset, absmax.data(),
                            (int64_t)absmax.size(), num_sms);
    return t;
}

void nf4_dequantize_dq_cpu(void* out, int32_t out_dtype, const Nf4Tensor& t) {
    std::vector<float> absmax(t.absmax_q.size());
    nf4_dequantize_absmax_cpu(absmax.data(), t.absmax_q.data(), t.scale2.data(), t.offset,
                              (int64_t)absmax.size());
    nf4_dequantize_cpu(out, out_dtype, t.packed.data(), absmax.data(), t.numel);
}

// ----------------------------------------------------------------------------------------------
// the byte record

static int64_t align16(int64_t x) { return (x + 15) & ~(int64_t)15; }

Nf4Layout nf4_layout(int64_t numel) {
    Nf4Layout l;
    l.numel = numel;
    l.n_blocks = nf4_num_blocks(numel);
    l.n_dq_blocks = nf4_num_dq_blocks(numel);
    l.offset_at = 0;
    l.scale2_at = 4;
    l.absmax_q_at = align16(l.scale2_at + 4 * l.n_dq_blocks);
    l.packed_at = align16(l.absmax_q_at + l.n_blocks);
    l.bytes = align16(l.packed_at + nf4_packed_bytes(numel));
    return l;
}

void nf4_to_record(const Nf4Tensor& t, uint8_t* record) {
    const Nf4Layout l = nf4_layout(t.numel);
    memset(record, 0, (size_t)l.bytes);
    memcpy(record + l.offset_at, &t.offset, 4);
    memcpy(record + l.scale2_at, t.scale2.data(), 4 * t.scale2.size());
    memcpy(record + l.absmax_q_at, t.absmax_q.data(), t.absmax_q.size());
    memcpy(record + l.packed_at, t.packed.data(), t.packed.size());
}

Nf4Tensor nf4_from_record(const uint8_t* record, int64_t numel, const char* what) {
    const Nf4Layout l = nf4_layout(numel);
    Nf4Tensor t;
    t.numel = numel;
    t.scale2.resize((size_t)l.n_dq_blocks);
    t.absmax_q.resize((size_t)l.n_blocks);
    t.packed.resize((size_t)nf4_packed_bytes(numel));
    memcpy(&t.offset, record + l.offset_at, 4);
    memcpy(t.scale2.data(), record + l.scale2_at, 4 * t.scale2.size());
    memcpy(t.absmax_q.data(), record + l.absmax_q_at, t.absmax_q.size());
    memcpy(t.packed.data(), record + l.packed_at, t.packed.size());
    if (!std::isfinite(t.offset)) fail("%s: NF4 offset is not finite", what);
    for (size_t g = 0; g < t.scale2.size(); g++)
        if (!std::isfinite(t.scale2[g]) || t.scale2[g] < 0.0f)
            fail("%s: NF4 second-level scale %zu is %g (must be finite and >= 0)", what, g, (double)t.scale2[g]);
    return t;
}

double nf4_bits_per_param(int64_t numel) {
    const double bytes = (double)nf4_packed_bytes(numel) + (double)nf4_num_blocks(numel) +
                         4.0 * (double)nf4_num_dq_blocks(numel) + 4.0;
    return 8.0 * bytes / (double)numel;
}
