// test/cpu_quant.cpp — the CPU twin of NF4 (quant_cpu.cpp) against bitsandbytes' own output: every
// case of every nf4_*.safetensors under $FIXTURES_DIR must match bit for bit (packed codes, absmax,
// double-quant codes, second-level scales, offset, both dequantized outputs). Plus bad input (NaN/Inf
// names the tensor), an error-bound property on random data, and the record layout.
// Run: ./test_cpu -tc="nf4*"
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>

#include "../quant.h"
#include "nf4_fixtures.h"

// One fixture case through the CPU twin; every mismatch names file, case, tensor and element.
static void check_case_cpu(SafeTensors& st, const std::string& file, const std::string& c) {
    const std::string where = file + " " + c;
    const StTensor& wt = st.get(c + ".weight");
    const int32_t dtype = st_dtype_to_dtype(wt.dtype);
    REQUIRE_MESSAGE((dtype == DT_BF16 || dtype == DT_F16 || dtype == DT_F32), where << ".weight: dtype " << wt.dtype);
    const int64_t n = wt.numel();
    const std::vector<uint8_t> w = nf4_read_raw(st, c + ".weight");
    const size_t out_bytes = (size_t)n * dtype_size(dtype);

    // level 1 only (compress_statistics=False)
    std::vector<uint8_t> packed((size_t)nf4_packed_bytes(n));
    std::vector<float> absmax((size_t)nf4_num_blocks(n));
    nf4_quantize_cpu(packed.data(), absmax.data(), w.data(), dtype, n, (where + ".weight").c_str());
    std::vector<uint8_t> bnb = nf4_read_raw(st, c + ".packed");
    std::string msg = nf4_compare(where + ".packed", packed.data(), bnb.data(), packed.size(), bnb.size(), 1);
    CHECK_MESSAGE(msg.empty(), msg);
    bnb = nf4_read_raw(st, c + ".absmax");
    msg = nf4_compare(where + ".absmax", absmax.data(), bnb.data(), 4 * absmax.size(), bnb.size(), 4);
    CHECK_MESSAGE(msg.empty(), msg);
    std::vector<uint8_t> deq(out_bytes);
    nf4_dequantize_cpu(deq.data(), dtype, packed.data(), absmax.data(), n);
    const std::vector<uint8_t> bnb_deq = nf4_read_raw(st, c + ".dequant");
    msg = nf4_compare(where + ".dequant", deq.data(), bnb_deq.data(), deq.size(), bnb_deq.size(), (int)dtype_size(dtype));
    CHECK_MESSAGE(msg.empty(), msg);
    // our dequantizer on bitsandbytes' own codes and absmax (independent of our quantizer)
    {
        const std::vector<uint8_t> bp = nf4_read_raw(st, c + ".packed"), ba = nf4_read_raw(st, c + ".absmax");
        REQUIRE_MESSAGE(bp.size() == packed.size(), where << ".packed: size");
        REQUIRE_MESSAGE(ba.size() == 4 * absmax.size(), where << ".absmax: size");
        nf4_dequantize_cpu(deq.data(), dtype, bp.data(), (const float*)ba.data(), n);
        msg = nf4_compare(where + ".dequant (from bnb's codes)", deq.data(), bnb_deq.data(), deq.size(), bnb_deq.size(),
                          (int)dtype_size(dtype));
        CHECK_MESSAGE(msg.empty(), msg);
    }

    // both levels (compress_statistics=True)
    const Nf4Tensor t = nf4_quantize_dq_cpu(w.data(), dtype, n, (where + ".weight").c_str());
    nf4_check_dq_fields(st, c, where, t);
    bnb = nf4_read_raw(st, c + ".dq.state2_code");
    msg = nf4_compare(where + ".dq.state2_code", dynamic_code8(), bnb.data(), 4 * 256, bnb.size(), 4);
    CHECK_MESSAGE(msg.empty(), msg);
    const std::vector<uint8_t> bnb_dq_deq = nf4_read_raw(st, c + ".dq.dequant");
    nf4_dequantize_dq_cpu(deq.data(), dtype, t);
    msg = nf4_compare(where + ".dq.dequant", deq.data(), bnb_dq_deq.data(), deq.size(), bnb_dq_deq.size(),
                      (int)dtype_size(dtype));
    CHECK_MESSAGE(msg.empty(), msg);

    // the byte record (what a model file and the GPU hold) gives back the same tensor
    std::vector<uint8_t> record((size_t)nf4_layout(n).bytes);
    nf4_to_record(t, record.data());
    const Nf4Tensor back = nf4_from_record(record.data(), n, where.c_str());
    CHECK_MESSAGE((back.packed == t.packed && back.absmax_q == t.absmax_q && back.scale2 == t.scale2 &&
                   memcmp(&back.offset, &t.offset, 4) == 0),
                  where << ": record round trip changed the tensor");
}

TEST_CASE("nf4 fixtures: the CPU twin is bit-identical to bitsandbytes on every case") {
    const std::vector<std::string> files = nf4_fixture_files();
    int cases = 0;
    for (const std::string& path : files) {
        SafeTensors st(path);
        const std::string file = base_name(path);
        if (st.has("nf4_code")) {
            const std::vector<uint8_t> code = nf4_read_raw(st, "nf4_code");
            const std::string msg = nf4_compare(file + " nf4_code", NF4_CODE, code.data(), sizeof(NF4_CODE), code.size(), 4);
            CHECK_MESSAGE(msg.empty(), msg);
        }
        const std::vector<std::string> names = nf4_case_names(st);
        CHECK_MESSAGE(!names.empty(), file << ": no caseN.weight tensors");
        for (const std::string& c : names) {
            INFO(file << " " << c);
            check_case_cpu(st, file, c);
            cases++;
        }
    }
    MESSAGE("checked " << cases << " NF4 fixture cases in " << files.size() << " file(s)");
}

TEST_CASE("nf4: a NaN or Inf weight is an InputError naming the tensor and the element") {
    std::vector<uint16_t> bf(300, f32_to_bf16(0.25f));
    bf[123] = f32_to_bf16(NAN);
    std::vector<uint8_t> packed(150);
    std::vector<float> absmax(5);
    try {
        nf4_quantize_cpu(packed.data(), absmax.data(), bf.data(), DT_BF16, 300, "layers.3.mlp.up_proj");
        FAIL("a NaN weight was quantized");
    } catch (const InputError& e) {
        const std::string m = e.what();
        CHECK_MESSAGE(m.find("layers.3.mlp.up_proj") != std::string::npos, m);
        CHECK_MESSAGE(m.find("NaN at element 123") != std::string::npos, m);
    }
    std::vector<uint16_t> h(70, f32_to_f16(-1.5f));
    h[69] = 0x7c00;  // +Inf in fp16
    CHECK_THROWS_WITH_AS(nf4_quantize_dq_cpu(h.data(), DT_F16, 70, "q_proj"), doctest::Contains("q_proj: Inf at element 69"),
                         InputError);
    std::vector<float> f(64, 1.0f);
    f[0] = -INFINITY;
    CHECK_THROWS_WITH_AS(nf4_quantize_dq_cpu(f.data(), DT_F32, 64, "w"), doctest::Contains("w: Inf at element 0"), InputError);
}

// Largest distance between neighbouring entries of a sorted table.
static float largest_gap(const float* v, int n) {
    float g = 0.0f;
    for (int i = 0; i + 1 < n; i++) g = std::max(g, v[i + 1] - v[i]);
    return g;
}

TEST_CASE("nf4: quantize -> dequantize stays within half a code gap of every weight") {
    // blocks of very different scales, an all-zero block, odd length (a padded last byte)
    Rng rng(1234);
    const int64_t n = 64 * 700 + 37;
    std::vector<float> w((size_t)n);
    for (int64_t i = 0; i < n; i++) {
        const int64_t b = i / 64;
        const float scale = b == 5 ? 0.0f : std::pow(10.0f, (float)(b % 9) - 6.0f);
        w[(size_t)i] = scale * rng.normal();
    }
    const float half_gap4 = 0.5f * largest_gap(NF4_CODE, 16);
    const float half_gap8 = 0.5f * largest_gap(dynamic_code8(), 256);

    // level 1: |w - NF4[c] * absmax| <= half the largest NF4 gap * absmax (1e-6 for the approximate
    // reciprocal and the rounding of the products)
    std::vector<uint8_t> packed((size_t)nf4_packed_bytes(n));
    std::vector<float> absmax((size_t)nf4_num_blocks(n)), back((size_t)n);
    nf4_quantize_cpu(packed.data(), absmax.data(), w.data(), DT_F32, n, "random");
    nf4_dequantize_cpu(back.data(), DT_F32, packed.data(), absmax.data(), n);
    int64_t worst = -1;
    for (int64_t i = 0; i < n; i++) {
        const float a = absmax[(size_t)(i / 64)];
        if (std::fabs(w[(size_t)i] - back[(size_t)i]) > half_gap4 * a * (1.0f + 1e-6f)) {
            worst = i;
            break;
        }
    }
    CHECK_MESSAGE(worst < 0, "element " << worst << " of block " << worst / 64 << " is off by more than half a code gap");
    CHECK(absmax[5] == 0.0f);

    // both levels: the absmax is itself 8-bit, so the bound grows by |absmax - absmax'|, and that is
    // within half the largest gap of the dynamic map times the group's scale
    const Nf4Tensor t = nf4_quantize_dq_cpu(w.data(), DT_F32, n, "random");
    std::vector<float> absmax_dq(absmax.size());
    nf4_dequantize_absmax_cpu(absmax_dq.data(), t.absmax_q.data(), t.scale2.data(), t.offset, (int64_t)absmax.size());
    worst = -1;
    for (size_t b = 0; b < absmax.size(); b++)
        if (std::fabs(absmax_dq[b] - absmax[b]) > half_gap8 * t.scale2[b / 256] * (1.0f + 1e-5f) + 1e-7f * std::fabs(t.offset)) {
            worst = (int64_t)b;
            break;
        }
    CHECK_MESSAGE(worst < 0, "dequantized absmax " << worst << " is off by more than half an 8-bit code gap");
    nf4_dequantize_dq_cpu(back.data(), DT_F32, t);
    worst = -1;
    for (int64_t i = 0; i < n; i++) {
        const size_t b = (size_t)(i / 64);
        const float bound = half_gap4 * absmax[b] + std::fabs(absmax_dq[b] - absmax[b]);
        if (std::fabs(w[(size_t)i] - back[(size_t)i]) > bound * (1.0f + 1e-5f)) {
            worst = i;
            break;
        }
    }
    CHECK_MESSAGE(worst < 0, "double-quantized element " << worst << " is off by more than the bound");
}

TEST_CASE("nf4: record layout, corrupt records, bits per parameter") {
    // 4.127 bits per parameter is bitsandbytes' figure for NF4 with double quantization
    CHECK(std::fabs(nf4_bits_per_param(4096LL * 4096) - 4.127) < 0.001);
    CHECK(std::fabs(nf4_bits_per_param(11008LL * 4096) - 4.127) < 0.001);
    const Nf4Layout l = nf4_layout(4096LL * 4096);
    CHECK(l.packed_at % 16 == 0);
    CHECK(l.absmax_q_at % 16 == 0);
    CHECK(l.bytes % 16 == 0);
    CHECK(l.bytes >= l.packed_at + 4096LL * 4096 / 2);

    std::vector<uint16_t> w(1000);
    Rng rng(7);
    for (auto& x : w) x = f32_to_bf16(0.02f * rng.normal());
    Nf4Tensor t = nf4_quantize_dq_cpu(w.data(), DT_BF16, 1000, "w");
    std::vector<uint8_t> rec((size_t)nf4_layout(1000).bytes);
    nf4_to_record(t, rec.data());
    float bad = NAN;
    memcpy(rec.data() + nf4_layout(1000).offset_at, &bad, 4);
    CHECK_THROWS_WITH_AS(nf4_from_record(rec.data(), 1000, "model.bin: layers.0.q_proj"),
                         doctest::Contains("model.bin: layers.0.q_proj: NF4 offset is not finite"), InputError);
    nf4_to_record(t, rec.data());
    bad = -1.0f;
    memcpy(rec.data() + nf4_layout(1000).scale2_at, &bad, 4);
    CHECK_THROWS_AS(nf4_from_record(rec.data(), 1000, "w"), InputError);
}

TEST_CASE("nf4: the dynamic 8-bit map has bitsandbytes' shape") {
    // create_dynamic_map(signed=True): 127 negative values, one 0, 128 positive values ending in 1
    const float* c = dynamic_code8();
    for (int i = 0; i + 1 < 256; i++) CHECK(c[i] < c[i + 1]);
    CHECK(c[127] == 0.0f);
    CHECK(c[255] == 1.0f);
    CHECK(c[0] > -1.0f);
    // the search returns the nearest code for values away from midpoints
    for (int i = 0; i < 256; i++) CHECK(dynamic_code8_of(c[i]) == i);
    for (int k = 0; k < 16; k++) CHECK(nf4_code_of(NF4_CODE[k]) == k);
    CHECK(nf4_code_of(NAN) == 0);
}

TEST_CASE("nf4: the emulated PyTorch CUDA mean equals torch.mean measured on an H100") {
    // x[i] = the float with bits 0x3e000000 | (((i * 2654435761 + 12345) mod 2^32) >> 9), n values;
    // `x.mean()` printed as bits by PyTorch 2.11.0+cu130 on an H100 (132 SMs). The sizes cross
    // every switch of Reduce.cuh's launch plan: vectorized loads (> 128 values), block width,
    // several blocks (>= 256 values per thread) and more blocks than threads in the last pass.
    const std::pair<int64_t, uint32_t> measured[] = {
        {1, 0x3e000018},       {2, 0x3e278df6},       {3, 0x3e24712a},      {5, 0x3e37d12b},      {26, 0x3e3f50f9},
        {31, 0x3e3f8763},      {32, 0x3e3e2e07},      {33, 0x3e3f4f4a},     {100, 0x3e3f104f},    {127, 0x3e3f62af},
        {128, 0x3e3f6170},     {129, 0x3e3eff2e},     {130, 0x3e3f3a38},    {131, 0x3e3f14d0},    {255, 0x3e3fc3c9},
        {256, 0x3e3fd0a6},     {257, 0x3e3facb5},     {515, 0x3e3fd92d},    {640, 0x3e3feb15},    {1094, 0x3e3ff40c},
        {2047, 0x3e3ffbc1},    {2048, 0x3e3ff59c},    {2049, 0x3e3ff959},   {4099, 0x3e3fff09},   {10000, 0x3e3ffd5e},
        {65536, 0x3e3fff79},   {130559, 0x3e3fffb9}, {130560, 0x3e3fffd3}, {130561, 0x3e3fffd4}, {131072, 0x3e3fffba},
        {262144, 0x3e3ffffa},  {500000, 0x3e3fffe5}, {704512, 0x3e3ffff7}, {1000003, 0x3e3ffff8}, {2097152, 0x3e400002},
        {4325376, 0x3e3fffff}, {4325377, 0x3e3fffff}, {9000001, 0x3e3fffff}, {20000003, 0x3e3ffffd}};
    std::vector<float> x;
    for (const auto& m : measured) {
        const int64_t n = m.first;
        x.resize((size_t)n);
        for (int64_t i = 0; i < n; i++) {
            const uint32_t bits = 0x3e000000u | (uint32_t)((((uint64_t)i * 2654435761ull + 12345ull) & 0xffffffffull) >> 9);
            memcpy(&x[(size_t)i], &bits, 4);
        }
        const float mean = torch_cuda_mean(x.data(), n, 132);
        uint32_t got;
        memcpy(&got, &mean, 4);
        CHECK_MESSAGE(got == m.second, "n = " << n << std::hex << ": ours 0x" << got << ", torch 0x" << m.second);
    }
}

TEST_CASE("nf4: the emulated rcp.approx.ftz is within one ulp of 1/x and follows the hardware's special cases") {
    long off_by_one = 0, first_bad = -1, bad_scaling = 0;
    for (uint32_t k = 0; k < (1u << 23); k++) {
        const uint32_t xb = 0x3f800000u | k;
        float x, rn, r;
        memcpy(&x, &xb, 4);
        rn = 1.0f / x;
        r = gpu_rcp_approx(x);
        uint32_t a, b;
        memcpy(&a, &rn, 4);
        memcpy(&b, &r, 4);
        const int64_t d = (int64_t)b - (int64_t)a;
        if ((d < -1 || d > 1) && first_bad < 0) first_bad = k;
        off_by_one += d != 0;
        // the result scales exactly with the exponent (checked on the GPU: test/gpu_quant.cu)
        bad_scaling += gpu_rcp_approx(std::ldexp(x, -40)) != std::ldexp(r, 40);
    }
    CHECK_MESSAGE(first_bad < 0, "mantissa " << first_bad << " is more than one ulp from 1/x");
    CHECK(bad_scaling == 0);
    // the H100 returns something other than the correctly rounded 1/x for 13.2% of mantissas
    CHECK(off_by_one > (1 << 23) / 10);
    CHECK(gpu_rcp_approx(0.0f) == INFINITY);
    CHECK(gpu_rcp_approx(-0.0f) == -INFINITY);
    CHECK(gpu_rcp_approx(1e-40f) == INFINITY);   // subnormal input: flushed to zero first
    CHECK(gpu_rcp_approx(INFINITY) == 0.0f);
    CHECK(gpu_rcp_approx(0x1.000002p+126f) == 0.0f);  // subnormal result: flushed
    CHECK(gpu_rcp_approx(0x1p-126f) == 0x1p126f);
    CHECK(std::isnan(gpu_rcp_approx(NAN)));
    CHECK(gpu_rcp_approx(1.0f) == 1.0f);
    CHECK(gpu_rcp_approx(0.25f) == 4.0f);
}
