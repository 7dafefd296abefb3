// test/gpu_quant.cu — NF4 on the GPU (quant.cu) against its CPU twin (quant_cpu.cpp) and against
// bitsandbytes' fixtures: byte for byte, on every fixture case, on fresh random tensors of Llama-2 7B
// layer shapes in bf16 and fp16, on awkward sizes, and on PyTorch's mean across its launch shapes.
// Outputs are poisoned before every launch, so a byte a kernel forgets to write is a failure.
// Run: ./test_gpu -tc="nf4 gpu*"
#include <doctest/doctest.h>

#include <cmath>

#include "../quant.h"
#include "gpu_util.h"
#include "nf4_fixtures.h"

// GPU NF4 (both levels) of n values of dtype held on the host; returns the record's bytes.
static std::vector<uint8_t> gpu_quantize_record(const void* w_host, int32_t dtype, int64_t n, const char* name) {
    const size_t wbytes = (size_t)n * dtype_size(dtype);
    DeviceBuffer w(wbytes), rec((size_t)nf4_layout(n).bytes), ws((size_t)nf4_quantize_workspace_bytes(n));
    upload(w, w_host, wbytes);
    rec.poison();
    ws.poison();
    nf4_quantize_checked_gpu(nf4_view(rec.as<uint8_t>(), n), w.ptr, dtype, ws.ptr, name, 0);
    return download<uint8_t>(rec.ptr, rec.bytes);
}

// GPU dequantization of a record (uploaded from the host) to out_dtype.
static std::vector<uint8_t> gpu_dequantize_record(const std::vector<uint8_t>& record, int64_t n, int32_t out_dtype) {
    DeviceBuffer rec(record.size()), out((size_t)n * dtype_size(out_dtype));
    upload(rec, record.data(), record.size());
    out.poison();
    nf4_dequantize_gpu(out.ptr, out_dtype, nf4_view(rec.as<uint8_t>(), n), 0);
    return download<uint8_t>(out.ptr, out.bytes);
}

// The CPU twin's record and dequantization for the same input.
static std::vector<uint8_t> cpu_record(const Nf4Tensor& t) {
    std::vector<uint8_t> r((size_t)nf4_layout(t.numel).bytes);
    nf4_to_record(t, r.data());
    return r;
}

static int device_sms() {
    int dev = 0, sms = 0;
    cudaCheck(cudaGetDevice(&dev));
    cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    return sms;
}

// "" if the two records are equal, else which field differs first and where
static std::string compare_records(const std::string& where, const std::vector<uint8_t>& gpu,
                                   const std::vector<uint8_t>& cpu, int64_t n) {
    const Nf4Layout l = nf4_layout(n);
    struct Field {
        const char* name;
        int64_t at, bytes;
        int elem;
    } fields[] = {{"offset", l.offset_at, 4, 4},
                  {"scale2", l.scale2_at, 4 * l.n_dq_blocks, 4},
                  {"absmax_q", l.absmax_q_at, l.n_blocks, 1},
                  {"packed", l.packed_at, nf4_packed_bytes(n), 1}};
    for (const Field& f : fields) {
        std::string m = nf4_compare(where + " " + f.name + " (GPU vs CPU)", gpu.data() + f.at, cpu.data() + f.at,
                                    (size_t)f.bytes, (size_t)f.bytes, f.elem);
        if (!m.empty()) return m;
    }
    return "";
}

// GPU vs CPU for one input: both levels, the record, and the dequantized output.
static void check_gpu_equals_cpu(const std::string& where, const void* w, int32_t dtype, int64_t n, int32_t out_dtype) {
    const Nf4Tensor t = nf4_quantize_dq_cpu(w, dtype, n, where.c_str(), device_sms());
    const std::vector<uint8_t> cpu = cpu_record(t);
    const std::vector<uint8_t> gpu = gpu_quantize_record(w, dtype, n, where.c_str());
    const std::string m = compare_records(where, gpu, cpu, n);
    CHECK_MESSAGE(m.empty(), m);
    std::vector<uint8_t> cpu_out((size_t)n * dtype_size(out_dtype));
    nf4_dequantize_dq_cpu(cpu_out.data(), out_dtype, t);
    const std::vector<uint8_t> gpu_out = gpu_dequantize_record(cpu, n, out_dtype);
    const std::string d = nf4_compare(where + " dequantized (GPU vs CPU)", gpu_out.data(), cpu_out.data(), gpu_out.size(),
                                      cpu_out.size(), (int)dtype_size(out_dtype));
    CHECK_MESSAGE(d.empty(), d);
}

TEST_CASE("nf4 gpu: fixtures, the GPU equals bitsandbytes and the CPU twin on every case") {
    int cases = 0;
    for (const std::string& path : nf4_fixture_files()) {
        SafeTensors st(path);
        const std::string file = base_name(path);
        for (const std::string& c : nf4_case_names(st)) {
            const std::string where = file + " " + c;
            INFO(where);
            const StTensor& wt = st.get(c + ".weight");
            const int32_t dtype = st_dtype_to_dtype(wt.dtype);
            const int64_t n = wt.numel();
            const std::vector<uint8_t> w = nf4_read_raw(st, c + ".weight");

            // level 1 against bnb
            DeviceBuffer dw(w.size()), packed((size_t)nf4_packed_bytes(n)), absmax(4 * (size_t)nf4_num_blocks(n)),
                flag(4), out((size_t)n * dtype_size(dtype));
            upload(dw, w.data(), w.size());
            packed.poison();
            absmax.poison();
            cudaCheck(cudaMemset(flag.ptr, 0, 4));
            nf4_quantize_plain_gpu(packed.as<uint8_t>(), absmax.as<float>(), dw.ptr, dtype, n, flag.as<int>(), 0);
            std::vector<uint8_t> got = download<uint8_t>(packed.ptr, packed.bytes), bnb = nf4_read_raw(st, c + ".packed");
            std::string m = nf4_compare(where + ".packed (GPU)", got.data(), bnb.data(), got.size(), bnb.size(), 1);
            CHECK_MESSAGE(m.empty(), m);
            got = download<uint8_t>(absmax.ptr, absmax.bytes);
            bnb = nf4_read_raw(st, c + ".absmax");
            m = nf4_compare(where + ".absmax (GPU)", got.data(), bnb.data(), got.size(), bnb.size(), 4);
            CHECK_MESSAGE(m.empty(), m);
            CHECK(download<int>(flag.ptr, 1)[0] == 0);
            out.poison();
            nf4_dequantize_plain_gpu(out.ptr, dtype, packed.as<uint8_t>(), absmax.as<float>(), n, 0);
            got = download<uint8_t>(out.ptr, out.bytes);
            bnb = nf4_read_raw(st, c + ".dequant");
            m = nf4_compare(where + ".dequant (GPU)", got.data(), bnb.data(), got.size(), bnb.size(), (int)dtype_size(dtype));
            CHECK_MESSAGE(m.empty(), m);

            // both levels against bnb, field by field
            const std::vector<uint8_t> rec = gpu_quantize_record(w.data(), dtype, n, where.c_str());
            const Nf4Tensor g = nf4_from_record(rec.data(), n, where.c_str());
            nf4_check_dq_fields(st, c, where, g, " (GPU)");
            got = gpu_dequantize_record(rec, n, dtype);
            bnb = nf4_read_raw(st, c + ".dq.dequant");
            m = nf4_compare(where + ".dq.dequant (GPU)", got.data(), bnb.data(), got.size(), bnb.size(), (int)dtype_size(dtype));
            CHECK_MESSAGE(m.empty(), m);

            // and the CPU twin on the same input
            check_gpu_equals_cpu(where, w.data(), dtype, n, dtype);
            cases++;
        }
    }
    MESSAGE("checked " << cases << " NF4 fixture cases on the GPU");
}

TEST_CASE("nf4 gpu: random tensors of Llama-2 7B layer shapes, bf16 and fp16, GPU == CPU byte for byte") {
    const int64_t shapes[3][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
    uint64_t seed = 1;
    for (const auto& s : shapes) {
        for (int32_t dtype : {DT_BF16, DT_F16}) {
            const int64_t n = s[0] * s[1];
            Rng rng(seed++);
            std::vector<uint16_t> w((size_t)n);
            // Llama-like scale with a per-row spread, so block absmax values (and the reciprocals
            // taken of them) cover many mantissas
            for (int64_t r = 0; r < s[0]; r++) {
                const float row_scale = 0.01f + 0.04f * rng.uniform();
                for (int64_t c = 0; c < s[1]; c++) {
                    const float v = row_scale * rng.normal();
                    w[(size_t)(r * s[1] + c)] = dtype == DT_BF16 ? f32_to_bf16(v) : f32_to_f16(v);
                }
            }
            const std::string where = std::string(dtype_name(dtype)) + " " + std::to_string(s[0]) + "x" + std::to_string(s[1]);
            INFO(where);
            check_gpu_equals_cpu(where, w.data(), dtype, n, DT_BF16);
        }
    }
}

TEST_CASE("nf4 gpu: odd sizes, all-zero blocks, tiny and huge values, unaligned input") {
    Rng rng(99);
    const int64_t sizes[] = {1, 2, 7, 63, 64, 65, 129, 1001, 64 * 256 + 3, 64 * 256 * 3 + 17, 64 * 600 * 9 + 5};
    for (int64_t n : sizes) {
        std::vector<float> f((size_t)n + 1);
        for (int64_t i = 0; i <= n; i++) {
            const int64_t b = i / 64;
            float scale = b % 5 == 1 ? 0.0f : std::pow(2.0f, (float)(b % 23) - 11.0f);
            if (b % 7 == 3) scale = 1e-39f;  // subnormal weights: bnb's ftz sees them as 0
            if (b % 11 == 4) scale = 1e30f;
            f[(size_t)i] = scale * rng.normal();
        }
        std::vector<uint16_t> bf(f.size()), h(f.size());
        for (size_t i = 0; i < f.size(); i++) {
            bf[i] = f32_to_bf16(f[i]);
            h[i] = f32_to_f16(std::fmin(std::fmax(f[i], -60000.0f), 60000.0f));
        }
        INFO("n = " << n);
        check_gpu_equals_cpu("bf16 n=" + std::to_string(n), bf.data(), DT_BF16, n, DT_BF16);
        check_gpu_equals_cpu("f16 n=" + std::to_string(n), h.data(), DT_F16, n, DT_F16);
        check_gpu_equals_cpu("f32 n=" + std::to_string(n), f.data(), DT_F32, n, DT_F32);
        // an input that does not start on a 16-byte boundary takes the scalar load path
        DeviceBuffer dw(bf.size() * 2), packed((size_t)nf4_packed_bytes(n)), absmax(4 * (size_t)nf4_num_blocks(n)), flag(4);
        upload(dw, bf.data(), bf.size() * 2);
        packed.poison();
        cudaCheck(cudaMemset(flag.ptr, 0, 4));
        nf4_quantize_plain_gpu(packed.as<uint8_t>(), absmax.as<float>(), dw.as<uint16_t>() + 1, DT_BF16, n, flag.as<int>(), 0);
        std::vector<uint8_t> cpu_packed((size_t)nf4_packed_bytes(n));
        std::vector<float> cpu_absmax((size_t)nf4_num_blocks(n));
        nf4_quantize_cpu(cpu_packed.data(), cpu_absmax.data(), bf.data() + 1, DT_BF16, n, "unaligned");
        const std::vector<uint8_t> got = download<uint8_t>(packed.ptr, packed.bytes);
        const std::string m = nf4_compare("unaligned bf16 packed (GPU vs CPU)", got.data(), cpu_packed.data(), got.size(),
                                          cpu_packed.size(), 1);
        CHECK_MESSAGE(m.empty(), m);
    }
}

TEST_CASE("nf4 gpu: PyTorch's mean, every launch shape, GPU == CPU emulation") {
    // sizes around each switch of Reduce.cuh's plan: vectorized loads (> 128), block width
    // (powers of two up to 512), the split over several blocks (>= 256 values per thread)
    const int64_t sizes[] = {1,      2,      31,     32,     33,     127,    128,     129,     130,    515,
                             2047,   2048,   2049,   4099,   130560, 130561, 262144,  704512,  1000003, 4325376,
                             4325377, 9000001};
    Rng rng(5);
    for (int64_t n : sizes) {
        std::vector<float> x((size_t)n);
        for (auto& v : x) v = 0.01f + rng.uniform();
        DeviceBuffer dx(4 * x.size()), mean(4), ws(4 * (size_t)std::max<int64_t>(1, (n + 15) / 16));
        upload(dx, x.data(), 4 * x.size());
        mean.poison();
        torch_mean_gpu(mean.as<float>(), dx.as<float>(), n, ws.ptr, 0);
        const float gpu = download<float>(mean.ptr, 1)[0], cpu = torch_cuda_mean(x.data(), n, device_sms());
        CHECK_MESSAGE(memcmp(&gpu, &cpu, 4) == 0, "n = " << n << ": GPU " << gpu << " vs CPU " << cpu);
    }
}

__global__ void rcp_approx_kernel(uint32_t* out, const uint32_t* in, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(__uint_as_float(in[i])));
    out[i] = __float_as_uint(r);
}

static std::vector<uint32_t> gpu_rcp_bits(const std::vector<uint32_t>& x) {
    DeviceBuffer din(4 * x.size()), dout(4 * x.size());
    upload(din, x.data(), 4 * x.size());
    dout.poison();
    rcp_approx_kernel<<<(unsigned)((x.size() + 255) / 256), 256>>>(dout.as<uint32_t>(), din.as<uint32_t>(), (int64_t)x.size());
    cudaCheck(cudaGetLastError());
    return download<uint32_t>(dout.ptr, x.size());
}

TEST_CASE("nf4 gpu: the CPU's emulation of rcp.approx.ftz (MUFU.RCP) against this GPU") {
    // every mantissa of [1, 2): exact on the 1024 with <= 10 fraction bits (all bf16/fp16 absmax
    // values, so the 4-bit codes are exact); 98.99% elsewhere on the H100 the tables came from
    std::vector<uint32_t> x(1u << 23);
    for (uint32_t k = 0; k < x.size(); k++) x[k] = 0x3f800000u | k;
    std::vector<uint32_t> hw = gpu_rcp_bits(x);
    long agree = 0, agree10 = 0;
    for (uint32_t k = 0; k < x.size(); k++) {
        float xf, e;
        memcpy(&xf, &x[k], 4);
        e = gpu_rcp_approx(xf);
        uint32_t eb;
        memcpy(&eb, &e, 4);
        agree += eb == hw[k];
        if ((k & 0x1fffu) == 0) agree10 += eb == hw[k];
    }
    MESSAGE("gpu_rcp_approx equals rcp.approx.ftz on " << 100.0 * agree / x.size() << "% of all mantissas, "
                                                          << agree10 << "/1024 bf16/fp16 mantissas");
    CHECK_MESSAGE(agree10 == 1024, "the exact table RCP_FIX10 does not match this GPU (regenerate with ./rcp_probe)");
    CHECK_MESSAGE(agree >= (long)(0.989 * x.size()), "the fitted model RCP_ERR_CUBIC does not describe this GPU");

    // every exponent and sign (same mantissa rule, flush to zero), and the special values
    std::vector<uint32_t> y;
    Rng rng(11);
    for (uint32_t e = 0; e < 255; e++)
        for (int j = 0; j < 256; j++) {
            const uint32_t m = (j & 1) ? ((uint32_t)(rng.next() >> 41) & 0x7fffffu) : (((uint32_t)(rng.next() >> 54)) << 13);
            y.push_back((uint32_t)(j & 2) << 30 | e << 23 | m);
        }
    for (uint32_t s : {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0x00000001u, 0x007fffffu,
                       0x7e800000u, 0x7e800001u, 0x7f7fffffu})
        y.push_back(s);
    hw = gpu_rcp_bits(y);
    long agree_exp = 0;
    for (size_t i = 0; i < y.size(); i++) {
        float yf, e;
        memcpy(&yf, &y[i], 4);
        e = gpu_rcp_approx(yf);
        uint32_t eb;
        memcpy(&eb, &e, 4);
        const bool m10 = (y[i] & 0x1fffu) == 0 || i >= y.size() - 10;  // 10-bit mantissa, or a special value
        if (m10) CHECK_MESSAGE(eb == hw[i], std::hex << "x = 0x" << y[i] << ": GPU 0x" << hw[i] << ", CPU 0x" << eb);
        agree_exp += eb == hw[i];
    }
    CHECK(agree_exp >= (long)(0.989 * y.size()));
}

TEST_CASE("nf4 gpu: a NaN or Inf weight is an InputError naming the tensor") {
    std::vector<uint16_t> bf(5000, f32_to_bf16(0.5f));
    bf[1234] = f32_to_bf16(NAN);
    CHECK_THROWS_WITH_AS(gpu_quantize_record(bf.data(), DT_BF16, 5000, "layers.7.self_attn.q_proj"),
                         doctest::Contains("layers.7.self_attn.q_proj: NaN at element 1234"), InputError);
    std::vector<uint16_t> h(300, f32_to_f16(0.5f));
    h[299] = 0xfc00;  // -Inf
    CHECK_THROWS_WITH_AS(gpu_quantize_record(h.data(), DT_F16, 300, "down_proj"), doctest::Contains("down_proj: Inf at element 299"),
                         InputError);
    std::vector<float> f(64, 0.0f);
    f[10] = INFINITY;
    CHECK_THROWS_WITH_AS(gpu_quantize_record(f.data(), DT_F32, 64, "w"), doctest::Contains("w: Inf at element 10"), InputError);
    // a finite tensor after a failing one passes (the flag is per call)
    std::vector<uint16_t> ok(64, f32_to_bf16(0.5f));
    CHECK_NOTHROW(gpu_quantize_record(ok.data(), DT_BF16, 64, "ok"));
}
