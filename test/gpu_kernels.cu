// test/gpu_kernels.cu — each CUDA kernel of llama2.cu / lora.cu / adamw.cu against its CPU twin
// (namespace cpu in llama2_cpu.cpp) on fresh random inputs at several shapes: odd lengths, several
// conversations per row, head_dim 128, GQA. Inputs are rounded to bf16 first so that both sides
// see the same numbers; outputs are poisoned before each launch.
// Run: ./test_gpu -tc="kernel*"
//
// Error metric: ||gpu - cpu||_2 / ||cpu||_2 over the tensor. Tolerances (bf16 storage, fp32 math):
//   elementwise / norm / RoPE / cross-entropy outputs stored as bf16: 1e-2
//   attention forward 1e-2, attention backward (P and dS in bf16) 2e-2
//   matmul and LoRA (bf16 operands, fp32 accumulation) 1e-2; fp32-only ops (AdamW) 1e-5
#include <doctest/doctest.h>

#include <cmath>

#include "../llama2_cpu.h"
#include "../llama2_gpu.h"
#include "gpu_util.h"

// n random bf16-representable values ~ N(0, std) (host fp32) and their bf16 bits
struct RandBf16 {
    std::vector<float> f;
    std::vector<uint16_t> h;
    RandBf16(size_t n, Rng& rng, float std = 1.0f, float mean = 0.0f) : f(n), h(n) {
        for (size_t i = 0; i < n; i++) {
            h[i] = f32_to_bf16(mean + std * rng.normal());
            f[i] = bf16_to_f32(h[i]);
        }
    }
};
static DeviceBuffer to_device(const std::vector<uint16_t>& h) {
    DeviceBuffer d(h.size() * 2);
    upload(d, h.data(), h.size() * 2);
    return d;
}
static DeviceBuffer to_device_f32(const std::vector<float>& f) {
    DeviceBuffer d(f.size() * 4);
    upload(d, f.data(), f.size() * 4);
    return d;
}
static std::vector<float> bf16_download(const DeviceBuffer& d, size_t n) {
    std::vector<uint16_t> h = download<uint16_t>(d.ptr, n);
    std::vector<float> f(n);
    for (size_t i = 0; i < n; i++) f[i] = bf16_to_f32(h[i]);
    return f;
}
static std::vector<float> round_bf16(std::vector<float> v) {
    for (float& x : v) x = bf16_to_f32(f32_to_bf16(x));
    return v;
}

// positions for B rows of T tokens, each row packing conversations of random lengths
static std::vector<int32_t> packed_positions(int B, int T, Rng& rng, int max_conv) {
    std::vector<int32_t> pos((size_t)B * T);
    for (int b = 0; b < B; b++) {
        int p = 0, left = 1 + (int)(rng.next() % max_conv);
        for (int t = 0; t < T; t++) {
            if (left == 0) {
                p = 0;
                left = 1 + (int)(rng.next() % max_conv);
            }
            pos[(size_t)b * T + t] = p++;
            left--;
        }
    }
    return pos;
}

TEST_CASE("kernel: rmsnorm forward and backward") {
    Rng rng(1);
    for (int64_t N : {1, 37, 300})
        for (int C : {256, 4096}) {
            CAPTURE(N);
            CAPTURE(C);
            RandBf16 x(N * C, rng, 2.0f), w(C, rng, 0.2f, 1.0f);
            std::vector<float> dy(N * C), dres0(N * C);
            for (auto& v : dy) v = rng.normal();
            for (auto& v : dres0) v = rng.normal();
            DeviceBuffer dx_ = to_device(x.h), dw = to_device(w.h), dout(N * C * 2), drstd(N * 4);
            dout.poison();
            drstd.poison();
            rmsnorm_forward(dout.as<bf16>(), drstd.as<float>(), dx_.as<bf16>(), dw.as<bf16>(), N, C, 1e-5f, 0);
            std::vector<float> y(N * C), rstd(N);
            cpu::rmsnorm_forward(y.data(), rstd.data(), x.f.data(), w.f.data(), N, C, 1e-5f);
            CHECK(rel_l2(bf16_download(dout, N * C).data(), y.data(), N * C) < 1e-2);
            CHECK(rel_l2(download<float>(drstd.ptr, N).data(), rstd.data(), N) < 1e-5);
            DeviceBuffer ddy = to_device_f32(dy), ddres = to_device_f32(dres0), ddres_bf(N * C * 2);
            ddres_bf.poison();
            rmsnorm_backward(ddres.as<float>(), ddres_bf.as<bf16>(), ddy.as<float>(), dx_.as<bf16>(), drstd.as<float>(),
                             dw.as<bf16>(), N, C, 0);
            std::vector<float> dres = dres0;
            cpu::rmsnorm_backward(dres.data(), dy.data(), x.f.data(), rstd.data(), w.f.data(), N, C);
            CHECK(rel_l2(download<float>(ddres.ptr, N * C).data(), dres.data(), N * C) < 1e-5);
            CHECK(rel_l2(bf16_download(ddres_bf, N * C).data(), dres.data(), N * C) < 1e-2);
        }
}

TEST_CASE("kernel: rope forward and backward at packed positions") {
    Rng rng(2);
    for (int n_heads : {1, 3, 8}) {
        const int D = 128, B = 2, T = 77;
        const int64_t N = (int64_t)B * T;
        std::vector<int32_t> pos = packed_positions(B, T, rng, 30);
        RandBf16 x(N * n_heads * D, rng);
        std::vector<float> cos_t, sin_t;
        cpu::rope_tables(cos_t, sin_t, pos.data(), N, D, 10000.0f);
        DeviceBuffer dpos(N * 4);
        upload(dpos, pos.data(), N * 4);
        for (int backward = 0; backward < 2; backward++) {
            DeviceBuffer dx_ = to_device(x.h);
            std::vector<float> ref = x.f;
            if (!backward) {
                rope_forward(dx_.as<bf16>(), dpos.as<int32_t>(), N, n_heads, D, 10000.0f, 0);
                cpu::rope_forward(ref.data(), cos_t.data(), sin_t.data(), N, n_heads, D);
            } else {
                rope_backward(dx_.as<bf16>(), dpos.as<int32_t>(), N, n_heads, D, 10000.0f, 0);
                cpu::rope_backward(ref.data(), cos_t.data(), sin_t.data(), N, n_heads, D);
            }
            CHECK_MESSAGE(rel_l2(bf16_download(dx_, x.f.size()).data(), ref.data(), ref.size()) < 1e-2,
                          "heads " << n_heads << (backward ? " backward" : " forward"));
        }
    }
}

// attention at one shape against the CPU twin, forward and backward
static void check_attention(int B, int T, int H, int KV, int max_conv, uint64_t seed) {
    const int D = 128;
    const int64_t N = (int64_t)B * T, QD = (int64_t)H * D, KVD = (int64_t)KV * D;
    Rng rng(seed);
    std::vector<int32_t> pos = packed_positions(B, T, rng, max_conv);
    RandBf16 q(N * QD, rng), k(N * KVD, rng), v(N * KVD, rng);
    std::vector<float> dout(N * QD);
    for (auto& x : dout) x = rng.normal();
    DeviceBuffer dq_ = to_device(q.h), dk_ = to_device(k.h), dv_ = to_device(v.h), dpos(N * 4);
    upload(dpos, pos.data(), N * 4);
    DeviceBuffer dctx(N * QD * 2), dlse(N * H * 4);
    dctx.poison();
    dlse.poison();
    attention_forward(dctx.as<bf16>(), dlse.as<float>(), dq_.as<bf16>(), dk_.as<bf16>(), dv_.as<bf16>(),
                      dpos.as<int32_t>(), B, T, H, KV, D, 0);
    std::vector<float> ctx(N * QD), att((size_t)B * H * T * T);
    cpu::attention_forward(ctx.data(), att.data(), q.f.data(), k.f.data(), v.f.data(), pos.data(), B, T, H, KV, D);
    std::vector<float> gctx = bf16_download(dctx, N * QD);
    const double e_fwd = rel_l2(gctx.data(), ctx.data(), ctx.size());
    CHECK_MESSAGE(e_fwd < 1e-2, "attention forward B=" << B << " T=" << T << " H=" << H << " KV=" << KV << ": " << e_fwd);
    // log-sum-exp of the scaled scores, in double from the bf16 inputs
    std::vector<float> lse_ref(N * H), glse = download<float>(dlse.ptr, N * H);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                const int kvh = h / (H / KV), start = t - pos[(size_t)b * T + t];
                double mx = -1e300, s = 0;
                std::vector<double> sc;
                for (int j = start; j <= t; j++) {
                    double dot = 0;
                    for (int i = 0; i < D; i++)
                        dot += (double)q.f[((size_t)(b * T + t) * H + h) * D + i] * k.f[((size_t)(b * T + j) * KV + kvh) * D + i];
                    sc.push_back(dot / std::sqrt((double)D));
                    mx = std::max(mx, sc.back());
                }
                for (double x : sc) s += std::exp(x - mx);
                lse_ref[((size_t)b * H + h) * T + t] = (float)(mx + std::log(s));
            }
    double lse_err = 0;
    for (size_t i = 0; i < lse_ref.size(); i++) lse_err = std::max(lse_err, (double)std::fabs(glse[i] - lse_ref[i]));
    CHECK_MESSAGE(lse_err < 2e-2, "attention lse max abs err " << lse_err);

    // backward: from the GPU's own forward output (as training does)
    DeviceBuffer ddout = to_device_f32(dout), ddout_bf(N * QD * 2), ddelta(N * H * 4);
    DeviceBuffer gdq(N * QD * 2), gdk(N * KVD * 2), gdv(N * KVD * 2);
    gdq.poison();
    gdk.poison();
    gdv.poison();
    attention_backward(gdq.as<bf16>(), gdk.as<bf16>(), gdv.as<bf16>(), ddout_bf.as<bf16>(), ddelta.as<float>(),
                       ddout.as<float>(), dctx.as<bf16>(), dlse.as<float>(), dq_.as<bf16>(), dk_.as<bf16>(),
                       dv_.as<bf16>(), dpos.as<int32_t>(), B, T, H, KV, D, 0);
    std::vector<float> cdq(N * QD), cdk(N * KVD), cdv(N * KVD);
    std::vector<float> dout_r = round_bf16(dout);
    cpu::attention_backward(cdq.data(), cdk.data(), cdv.data(), dout_r.data(), att.data(), q.f.data(), k.f.data(),
                            v.f.data(), pos.data(), B, T, H, KV, D);
    const double e_dq = rel_l2(bf16_download(gdq, N * QD).data(), cdq.data(), cdq.size());
    const double e_dk = rel_l2(bf16_download(gdk, N * KVD).data(), cdk.data(), cdk.size());
    const double e_dv = rel_l2(bf16_download(gdv, N * KVD).data(), cdv.data(), cdv.size());
    CHECK_MESSAGE(e_dq < 2e-2, "dq T=" << T << " H=" << H << " KV=" << KV << ": " << e_dq);
    CHECK_MESSAGE(e_dk < 2e-2, "dk T=" << T << " H=" << H << " KV=" << KV << ": " << e_dk);
    CHECK_MESSAGE(e_dv < 2e-2, "dv T=" << T << " H=" << H << " KV=" << KV << ": " << e_dv);
    MESSAGE("attention B=" << B << " T=" << T << " H=" << H << " KV=" << KV << " conv<=" << max_conv << ": fwd " << e_fwd
                           << " lse " << lse_err << " dq " << e_dq << " dk " << e_dk << " dv " << e_dv);
}

TEST_CASE("kernel: flash attention vs the CPU twin (odd lengths, packed rows, GQA)") {
    for (int warps : {8, 4}) {  // both query-block sizes the kernels are built for
        CAPTURE(warps);
        attention_set_query_warps(warps);
        check_attention(1, 1, 2, 2, 1, 10);      // a single token
        check_attention(2, 37, 4, 4, 37, 11);    // odd length, one conversation per row at most
        check_attention(2, 130, 4, 2, 50, 12);   // GQA, several conversations per row, crosses tile edges
        check_attention(1, 200, 3, 1, 200, 13);  // all heads share one kv head (MQA), as tiny_pub_gqa
        check_attention(3, 64, 2, 1, 9, 14);     // many short conversations in a row
        check_attention(1, 385, 2, 2, 385, 15);  // one long conversation: unmasked interior tiles
        check_attention(1, 320, 4, 2, 140, 16);  // long conversations packed: interior tiles and jumps
    }
    attention_set_query_warps(8);
}

TEST_CASE("kernel: swiglu forward and backward") {
    Rng rng(3);
    const int64_t n = 12345;
    RandBf16 g(n, rng, 2.0f), u(n, rng);
    std::vector<float> dh(n);
    for (auto& x : dh) x = rng.normal();
    DeviceBuffer dg_ = to_device(g.h), du_ = to_device(u.h), dhh(n * 2), ddh = to_device_f32(dh), gdg(n * 2), gdu(n * 2);
    dhh.poison();
    gdg.poison();
    gdu.poison();
    swiglu_forward(dhh.as<bf16>(), dg_.as<bf16>(), du_.as<bf16>(), n, 0);
    swiglu_backward(gdg.as<bf16>(), gdu.as<bf16>(), ddh.as<float>(), dg_.as<bf16>(), du_.as<bf16>(), n, 0);
    std::vector<float> h(n), cdg(n), cdu(n);
    cpu::swiglu_forward(h.data(), g.f.data(), u.f.data(), n);
    cpu::swiglu_backward(cdg.data(), cdu.data(), dh.data(), g.f.data(), u.f.data(), n);
    CHECK(rel_l2(bf16_download(dhh, n).data(), h.data(), n) < 1e-2);
    CHECK(rel_l2(bf16_download(gdg, n).data(), cdg.data(), n) < 1e-2);
    CHECK(rel_l2(bf16_download(gdu, n).data(), cdu.data(), n) < 1e-2);
}

TEST_CASE("kernel: cross-entropy with ignored positions") {
    Rng rng(4);
    const int64_t N = 29;
    const int V = 1000;
    std::vector<float> logits(N * V);
    for (auto& x : logits) x = 3.0f * rng.normal();
    std::vector<int32_t> targets(N);
    for (auto& t : targets) t = rng.uniform() < 0.3f ? -1 : (int32_t)(rng.next() % V);
    DeviceBuffer dl = to_device_f32(logits), dt(N * 4), dloss(N * 4), ddl(N * V * 2);
    upload(dt, targets.data(), N * 4);
    dloss.poison();
    ddl.poison();
    const float scale = 1.0f / 20.0f;
    crossentropy_forward_backward(dloss.as<float>(), ddl.as<bf16>(), dl.as<float>(), dt.as<int32_t>(), scale, N, V, 0);
    std::vector<float> gl = download<float>(dloss.ptr, N), cd(N * V);
    int64_t n_t;
    double sum = cpu::crossentropy_forward(&n_t, logits.data(), targets.data(), N, V), gsum = 0;
    for (float x : gl) gsum += x;
    CHECK(std::fabs(gsum - sum) / sum < 1e-5);
    cpu::crossentropy_backward(cd.data(), logits.data(), targets.data(), scale, N, V);
    CHECK(rel_l2(bf16_download(ddl, N * V).data(), cd.data(), cd.size()) < 1e-2);
}

TEST_CASE("kernel: embedding lookup") {
    Rng rng(5);
    const int V = 300, C = 256;
    const int64_t N = 41;
    RandBf16 e(V * C, rng);
    std::vector<int32_t> tok(N);
    for (auto& t : tok) t = (int32_t)(rng.next() % V);
    DeviceBuffer de = to_device(e.h), dt(N * 4), dout(N * C * 2);
    upload(dt, tok.data(), N * 4);
    dout.poison();
    embedding_forward(dout.as<bf16>(), dt.as<int32_t>(), de.as<bf16>(), N, C, 0);
    std::vector<uint16_t> got = download<uint16_t>(dout.ptr, N * C);
    for (int64_t n = 0; n < N; n++) CHECK(memcmp(&got[n * C], &e.h[(size_t)tok[n] * C], C * 2) == 0);
}

TEST_CASE("kernel: cuBLASLt matmul, every transpose, fp32 and bf16 out, accumulate") {
    Rng rng(6);
    Blas bl;
    blas_create(bl);
    const int64_t M = 45, N = 70, K = 96;
    for (int at = 0; at < 2; at++)
        for (int bt = 0; bt < 2; bt++)
            for (int f32 = 0; f32 < 2; f32++) {
                RandBf16 a(M * K, rng), b(K * N, rng), c0(M * N, rng);
                DeviceBuffer da = to_device(a.h), db = to_device(b.h);
                // reference: out = 0.5 * op(a) op(b) + 1 * c0
                std::vector<float> ref(M * N);
                for (int64_t i = 0; i < M; i++)
                    for (int64_t j = 0; j < N; j++) {
                        double acc = 0;
                        for (int64_t kk = 0; kk < K; kk++)
                            acc += (double)(at ? a.f[kk * M + i] : a.f[i * K + kk]) * (bt ? b.f[j * K + kk] : b.f[kk * N + j]);
                        ref[i * N + j] = (float)(0.5 * acc + c0.f[i * N + j]);
                    }
                DeviceBuffer dc = f32 ? to_device_f32(c0.f) : to_device(c0.h);
                matmul(bl, dc.ptr, f32, da.as<bf16>(), at, db.as<bf16>(), bt, M, N, K, 0.5f, 1.0f, 0);
                std::vector<float> got = f32 ? download<float>(dc.ptr, M * N) : bf16_download(dc, M * N);
                CHECK_MESSAGE(rel_l2(got.data(), ref.data(), ref.size()) < (f32 ? 1e-5 : 1e-2),
                              "a_trans " << at << " b_trans " << bt << " f32 " << f32);
            }
    blas_destroy(bl);
}

// one LoRA linear at one shape, forward and backward, against the CPU twin
static void check_lora(Blas& bl, Rng& rng, int64_t N, int64_t IC, int64_t OC, int r, float p) {
    CAPTURE(N);
    CAPTURE(IC);
    CAPTURE(r);
    CAPTURE(p);
    RandBf16 x(N * IC, rng), W(OC * IC, rng, 0.1f), A(r * IC, rng, 0.1f), Bm(OC * r, rng, 0.1f), dy(N * OC, rng);
    const float scale = 2.0f;
    cpu::LoraArgs cla{A.f.data(), Bm.f.data(), r, scale, p, 99, 12};
    LoraGpuArgs gla{nullptr, nullptr, r, scale, p, 99, 12};
    DeviceBuffer dx_ = to_device(x.h), dW = to_device(W.h), dA_ = to_device(A.h), dB_ = to_device(Bm.h),
                 ddy = to_device(dy.h);
    gla.A = dA_.as<bf16>();
    gla.B = dB_.as<bf16>();
    // scratch as the model sizes it: N rows of the widest input (enough for the fused partial sums)
    const int64_t tmp_floats = N * std::max<int64_t>(IC, 4 * r);
    DeviceBuffer dyout(N * OC * 2), du(N * r * 2), dxd(N * IC * 2), dtmp(tmp_floats * 4);
    dyout.poison();
    du.poison();
    dtmp.poison();
    matmul(bl, dyout.ptr, false, dx_.as<bf16>(), false, dW.as<bf16>(), true, N, OC, IC, 1.0f, 0.0f, 0);
    lora_forward(bl, dyout.as<bf16>(), du.as<bf16>(), dxd.as<bf16>(), dtmp.as<float>(), tmp_floats, dx_.as<bf16>(), gla,
                 N, IC, OC, 0);
    std::vector<float> y(N * OC), u(N * r);
    cpu::linear_lora_forward(y.data(), u.data(), x.f.data(), W.f.data(), cla, N, IC, OC);
    CHECK(rel_l2(bf16_download(dyout, N * OC).data(), y.data(), y.size()) < 1e-2);
    CHECK(rel_l2(bf16_download(du, N * r).data(), u.data(), u.size()) < 1e-2);
    // backward: the GPU's dx covers only the LoRA path (the caller adds dy W), so add it here
    std::vector<float> dx0(N * IC), dA0(r * IC), dB0(OC * r);
    for (auto& v : dx0) v = rng.normal();
    for (auto& v : dA0) v = rng.normal();
    for (auto& v : dB0) v = rng.normal();
    DeviceBuffer gdx = to_device_f32(dx0), gdA = to_device_f32(dA0), gdB = to_device_f32(dB0), gdu(N * r * 2);
    dtmp.poison();
    matmul(bl, gdx.ptr, true, ddy.as<bf16>(), false, dW.as<bf16>(), false, N, IC, OC, 1.0f, 1.0f, 0);
    lora_backward(bl, gdx.as<float>(), gdA.as<float>(), gdB.as<float>(), gdu.as<bf16>(), dxd.as<bf16>(), dtmp.as<float>(),
                  tmp_floats, ddy.as<bf16>(), dx_.as<bf16>(), du.as<bf16>(), gla, N, IC, OC, 0, false);
    std::vector<float> cdx = dx0, cdA = dA0, cdB = dB0;
    std::vector<float> u_r = round_bf16(u);
    cpu::linear_lora_backward(cdx.data(), cdA.data(), cdB.data(), dy.f.data(), x.f.data(), u_r.data(), W.f.data(), cla, N,
                              IC, OC);
    std::vector<float> gdx_h = download<float>(gdx.ptr, N * IC);
    CHECK(rel_l2(gdx_h.data(), cdx.data(), cdx.size()) < 1e-2);
    // the LoRA part of dx alone, without dx0 + dy W (where the dropout mask acts: a wrong mask would
    // hide in the much larger sum)
    std::vector<float> cbase = dx0;
    cpu::matmul_backward_input(cbase.data(), dy.f.data(), W.f.data(), N, IC, OC);
    std::vector<float> g_only(N * IC), c_only(N * IC);
    for (int64_t i = 0; i < N * IC; i++) g_only[i] = gdx_h[i] - cbase[i], c_only[i] = cdx[i] - cbase[i];
    CHECK(rel_l2(g_only.data(), c_only.data(), c_only.size()) < 2e-2);
    CHECK(rel_l2(download<float>(gdA.ptr, r * IC).data(), cdA.data(), cdA.size()) < 1e-2);
    CHECK(rel_l2(download<float>(gdB.ptr, OC * r).data(), cdB.data(), cdB.size()) < 1e-2);
    // the gradient of A alone, without the random dA0 it was added to (a wrong mask would hide in it)
    std::vector<float> gA = download<float>(gdA.ptr, r * IC), dA_only(r * IC), cA_only(r * IC);
    for (int64_t i = 0; i < r * IC; i++) dA_only[i] = gA[i] - dA0[i], cA_only[i] = cdA[i] - dA0[i];
    CHECK(rel_l2(dA_only.data(), cA_only.data(), cA_only.size()) < 1e-2);
}

// Three LoRA linears that read the same x (as q, k, v do), each with its own mask: their input
// gradients deferred and added in one pass (lora_backward_dx) against the CPU twin's three
// backward passes one after the other; dA of each target too.
static void check_lora_group(Blas& bl, Rng& rng, int64_t N, int64_t IC, int r, float p, bool fused_on) {
    CAPTURE(N);
    CAPTURE(IC);
    CAPTURE(r);
    CAPTURE(p);
    constexpr int NT = 3;
    const int64_t OC[NT] = {64, 128, 64};
    RandBf16 x(N * IC, rng);
    DeviceBuffer dx_ = to_device(x.h);
    std::vector<float> dx0(N * IC);
    for (auto& v : dx0) v = rng.normal();
    DeviceBuffer gdx = to_device_f32(dx0);
    std::vector<float> cdx = dx0, cbase = dx0;
    const int64_t tmp_floats = N * std::max<int64_t>(IC, 4 * r);
    DeviceBuffer dxd(N * IC * 2), dtmp(tmp_floats * 4), gdu(NT * N * r * 2);
    std::vector<DeviceBuffer> keep;
    std::vector<float> cdA_all, gdA_all;
    const bf16* du_def[NT];
    LoraGpuArgs la_def[NT];
    int deferred = 0;
    for (int t = 0; t < NT; t++) {
        RandBf16 W(OC[t] * IC, rng, 0.1f), A(r * IC, rng, 0.1f), Bm(OC[t] * r, rng, 0.1f), dy(N * OC[t], rng), u(N * r, rng);
        cpu::LoraArgs cla{A.f.data(), Bm.f.data(), r, 2.0f, p, 99, (uint64_t)(20 + t)};
        LoraGpuArgs gla{nullptr, nullptr, r, 2.0f, p, 99, (uint64_t)(20 + t)};
        keep.push_back(to_device(W.h));
        const bf16* dW = keep.back().as<bf16>();
        keep.push_back(to_device(A.h));
        gla.A = keep.back().as<bf16>();
        keep.push_back(to_device(Bm.h));
        gla.B = keep.back().as<bf16>();
        keep.push_back(to_device(dy.h));
        const bf16* ddy = keep.back().as<bf16>();
        keep.push_back(to_device(u.h));
        const bf16* du_saved = keep.back().as<bf16>();
        keep.push_back(to_device_f32(std::vector<float>(r * IC, 0.0f)));
        float* gdA = keep.back().as<float>();
        keep.push_back(to_device_f32(std::vector<float>(OC[t] * r, 0.0f)));
        float* gdB = keep.back().as<float>();
        matmul(bl, gdx.ptr, true, ddy, false, dW, false, N, IC, OC[t], 1.0f, 1.0f, 0);
        bf16* du_t = gdu.as<bf16>() + t * N * r;
        if (lora_backward(bl, gdx.as<float>(), gdA, gdB, du_t, dxd.as<bf16>(), dtmp.as<float>(), tmp_floats, ddy,
                          dx_.as<bf16>(), du_saved, gla, N, IC, OC[t], 0, true)) {
            du_def[deferred] = du_t;
            la_def[deferred++] = gla;
        }
        std::vector<float> cdA(r * IC, 0.0f), cdB(OC[t] * r, 0.0f);
        cpu::linear_lora_backward(cdx.data(), cdA.data(), cdB.data(), dy.f.data(), x.f.data(), u.f.data(), W.f.data(), cla,
                                  N, IC, OC[t]);
        cpu::matmul_backward_input(cbase.data(), dy.f.data(), W.f.data(), N, IC, OC[t]);
        const std::vector<float> g = download<float>(gdA, r * IC);
        cdA_all.insert(cdA_all.end(), cdA.begin(), cdA.end());
        gdA_all.insert(gdA_all.end(), g.begin(), g.end());
    }
    if (deferred) lora_backward_dx(gdx.as<float>(), deferred, du_def, la_def, N, IC, 0);
    const std::vector<float> gdx_h = download<float>(gdx.ptr, N * IC);
    std::vector<float> g_only(N * IC), c_only(N * IC);  // the LoRA parts alone (where the masks act)
    for (int64_t i = 0; i < N * IC; i++) g_only[i] = gdx_h[i] - cbase[i], c_only[i] = cdx[i] - cbase[i];
    CHECK(rel_l2(g_only.data(), c_only.data(), c_only.size()) < 2e-2);
    CHECK(rel_l2(gdA_all.data(), cdA_all.data(), cdA_all.size()) < 1e-2);
    // the group pass runs wherever the fused kernels do (a built rank, IC % 64 == 0, dropout on)
    const bool fusable = fused_on && p > 0.0f && (r == 16 || r == 32 || r == 64 || r == 128) && IC % 64 == 0;
    CHECK(deferred == (fusable ? NT : 0));
}

TEST_CASE("kernel: LoRA linear forward and backward with dropout") {
    Rng rng(7);
    Blas bl;
    blas_create(bl);
    for (bool fused : {true, false})  // the fused dropout kernels, and cuBLASLt for everything
    for (float p : {0.0f, 0.1f}) {
        CAPTURE(fused);
        lora_set_fused(fused);
        check_lora(bl, rng, 53, 96, 80, 8, p);     // cuBLASLt path: a rank the fused kernels are not built for
        check_lora(bl, rng, 130, 192, 80, 16, p);  // fused with dropout: rows not a multiple of 64
        check_lora(bl, rng, 77, 256, 64, 64, p);
        check_lora(bl, rng, 300, 128, 96, 128, p);  // rank 128: two 16-row tiles of dA per warp
        check_lora(bl, rng, 64, 704, 48, 32, p);   // a longer input split over several blocks
        check_lora_group(bl, rng, 130, 192, 16, p, fused);
        check_lora_group(bl, rng, 70, 128, 128, p, fused);
        check_lora_group(bl, rng, 53, 96, 8, p, fused);
    }
    lora_set_fused(false);
    blas_destroy(bl);
}

TEST_CASE("kernel: AdamW with global-norm clipping") {
    Rng rng(8);
    const int64_t n = 100003;
    std::vector<float> p(n), g(n), m(n), v(n);
    for (int64_t i = 0; i < n; i++) {
        p[i] = rng.normal();
        g[i] = 0.01f * rng.normal();
        m[i] = 0.001f * rng.normal();
        v[i] = 1e-4f * rng.uniform();
    }
    for (float max_norm : {0.0f, 0.3f}) {
        DeviceBuffer dp = to_device_f32(p), dg = to_device_f32(g), dm = to_device_f32(m), dv = to_device_f32(v);
        DeviceBuffer dpb(n * 2), dns(4), scratch(1024 * 4);
        grad_norm_squared(dns.as<float>(), dg.as<float>(), n, scratch.as<float>(), 0);
        adamw_update(dp.as<float>(), dpb.as<bf16>(), dg.as<float>(), dm.as<float>(), dv.as<float>(), n, 3, 1e-3f, 0.9f,
                     0.999f, 1e-8f, 0.01f, dns.as<float>(), max_norm, 0);
        std::vector<float> cp = p, cg = g, cm = m, cv = v;
        const float norm = max_norm > 0 ? cpu_clip_grad_norm(cg.data(), n, max_norm) : cpu_grad_norm(cg.data(), n);
        AdamWConfig ac;
        ac.lr = 1e-3f;
        ac.weight_decay = 0.01f;
        cpu_adamw_update(cp.data(), cg.data(), cm.data(), cv.data(), n, 3, ac);
        CHECK(std::fabs(std::sqrt(download<float>(dns.ptr, 1)[0]) - norm) / norm < 1e-5);
        CHECK(rel_l2(download<float>(dp.ptr, n).data(), cp.data(), n) < 1e-6);
        CHECK(rel_l2(download<float>(dm.ptr, n).data(), cm.data(), n) < 1e-5);
        CHECK(rel_l2(download<float>(dv.ptr, n).data(), cv.data(), n) < 1e-5);
        CHECK(rel_l2(bf16_download(dpb, n).data(), cp.data(), n) < 1e-2);
    }
}
