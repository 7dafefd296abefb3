// test/gpu_decode.cu — the GPU decoder of ./sample (decode.cu) against the CPU one (CpuDecoder,
// llama2_cpu.cpp) on every tiny_* fixture: logits after a prefill and after each decode step, and
// greedy generation token for token, on a bf16 base (unmerged and merged LoRA, and no adapter) and
// on an NF4 base (the fused 4-bit mat-vec). Run: ./test_gpu -tc="decode*"
//
// Both sides read the same weights (the fixture exported with --dtype bf16, or nf4 and dequantized
// to bf16 on the CPU); logits must agree to ||gpu - cpu|| / ||cpu|| <= 2e-2 (bf16 activations).
#include <doctest/doctest.h>

#include <cmath>

#include "../hf.h"
#include "../llama2_cpu.h"
#include "../llama2_gpu.h"
#include "../chat.h"
#include "../sampling.h"
#include "gpu_util.h"
#include "test_util.h"

static void check_decoders(const std::string& dir, const std::string& dtype) {
    const std::string fixture = base_name(dir);
    TempDir tmp;
    CmdResult ex = run_cmd("./export_hf -i " + dir + " -o " + tmp / "model.bin --dtype " + dtype);
    REQUIRE_MESSAGE(ex.exit_code == 0, ex.output);
    CpuModel cm;
    std::vector<float> w;
    ModelHeader h = load_model_f32(tmp / "model.bin", w);
    cpu_model_init(cm, h.config, w);
    const int ctx = 64;
    CpuDecoder cpu(cm, ctx, 1);
    std::unique_ptr<Decoder> gpu = make_gpu_decoder(tmp / "model.bin", ctx, 1);
    Adapter ad = read_peft_adapter(dir + "/adapter", h.config);
    SafeTensors ref(dir + "/reference.safetensors");
    std::vector<int32_t> tokens = ref.read_i32("tokens");
    const int V = h.config.vocab_size, prompt = 12;
    for (int mode = 0; mode < 3; mode++) {  // no adapter, unmerged, merged
        const Adapter* a = mode == 0 ? nullptr : &ad;
        if (dtype == "nf4" && mode == 2) continue;  // merging is a bf16-base feature
        cpu.set_adapter(a, mode == 2);
        gpu->set_adapter(a, mode == 2);
        const char* what = mode == 0 ? "base" : mode == 1 ? "LoRA unmerged" : "LoRA merged";
        std::vector<float> lc(V), lg(V);
        memcpy(lc.data(), cpu.prefill(tokens.data(), prompt), V * 4);
        memcpy(lg.data(), gpu->prefill(tokens.data(), prompt), V * 4);
        double worst = rel_l2(lg.data(), lc.data(), V);
        for (int s = 0; s < 8; s++) {  // feed the CPU's greedy choice to both
            const int32_t next = argmax(lc.data(), V);
            memcpy(lc.data(), cpu.step(next), V * 4);
            memcpy(lg.data(), gpu->step(next), V * 4);
            worst = std::max(worst, rel_l2(lg.data(), lc.data(), V));
        }
        CHECK_MESSAGE(worst <= 2e-2, fixture << " " << dtype << " " << what << ": logits rel err " << worst);
        // greedy decisions, teacher-forced on the CPU's choices: a random tiny model's logits are
        // nearly flat, so a decision counts only where the CPU's top-2 margin exceeds twice this
        // row's largest GPU-CPU difference (then bf16 noise cannot flip it)
        cpu.reset();
        gpu->reset();
        memcpy(lc.data(), cpu.prefill(tokens.data(), prompt), V * 4);
        memcpy(lg.data(), gpu->prefill(tokens.data(), prompt), V * 4);
        int decided = 0, agreed = 0;
        for (int st = 0; st < 24; st++) {
            const int32_t ac = argmax(lc.data(), V), ag = argmax(lg.data(), V);
            float second = -INFINITY, max_diff = 0;
            for (int i = 0; i < V; i++) {
                if (i != ac) second = std::max(second, lc[i]);
                max_diff = std::max(max_diff, std::fabs(lc[i] - lg[i]));
            }
            if (lc[ac] - second > 2 * max_diff) decided++, agreed += ac == ag;
            memcpy(lc.data(), cpu.step(ac), V * 4);
            memcpy(lg.data(), gpu->step(ac), V * 4);
        }
        CHECK_MESSAGE(agreed == decided, fixture << " " << dtype << " " << what << ": GPU greedy choice differs at a decided step");
        CHECK_MESSAGE(decided > 0, fixture << " " << dtype << " " << what << ": no step had a clear greedy margin");
        MESSAGE(fixture << " " << dtype << " " << what << ": logits rel err " << worst << ", greedy agrees on " << agreed
                        << "/" << decided << " decided steps");
    }
}

TEST_CASE("decode: the GPU decoder equals the CPU decoder on every tiny_* fixture (bf16 and NF4 bases)") {
    for (const std::string& f : tiny_fixtures()) {
        CAPTURE(f);
        check_decoders(f, "bf16");
        check_decoders(f, "nf4");
    }
}

TEST_CASE("decode: greedy GPU output equals greedy CPU output on the trained demo model") {
    TempDir tmp;
    CmdResult tr = run_cmd("./train --device cuda -o " + tmp.path);
    REQUIRE_MESSAGE(tr.exit_code == 0, tr.output);
    CpuModel cm;
    std::vector<float> w;
    ModelHeader h = load_model_f32(tmp / "model.bin", w);
    cpu_model_init(cm, h.config, w);
    CpuDecoder cpu(cm, 256, 1);
    std::unique_ptr<Decoder> gpu = make_gpu_decoder(tmp / "model.bin", 256, 1);
    Adapter ad = read_adapter(tmp / "adapter.bin");
    SamplingConfig greedy;
    greedy.do_sample = false;
    const int V = h.config.vocab_size;
    for (bool merge : {false, true})
        for (const char* q : {"What is the capital of France?", "What is two plus three?", "Say hello."}) {
            CAPTURE(q);
            CAPTURE(merge);
            cpu.set_adapter(&ad, merge);
            gpu->set_adapter(&ad, merge);
            std::vector<int32_t> ctx = {ByteTokenizer::BOS};
            for (int32_t t : ByteTokenizer::encode(std::string("[INST] ") + q + " [/INST]")) ctx.push_back(t);
            // 48 greedy steps teacher-forced on the CPU's choices: where the CPU's top-2 margin
            // exceeds twice the row's largest GPU-CPU logit difference, bf16 noise cannot flip the
            // choice, so the GPU must choose the same (free-running outputs can part at the first
            // near-tie, and then differ everywhere after it)
            std::vector<float> lc(V), lg(V);
            memcpy(lc.data(), cpu.prefill(ctx.data(), (int)ctx.size()), V * 4);
            memcpy(lg.data(), gpu->prefill(ctx.data(), (int)ctx.size()), V * 4);
            int decided = 0, agreed = 0;
            std::vector<int32_t> forced;
            for (int st = 0; st < 48; st++) {
                const int32_t ac = argmax(lc.data(), V), ag = argmax(lg.data(), V);
                float second = -INFINITY, max_diff = 0;
                for (int i = 0; i < V; i++) {
                    if (i != ac) second = std::max(second, lc[i]);
                    max_diff = std::max(max_diff, std::fabs(lc[i] - lg[i]));
                }
                if (lc[ac] - second > 2 * max_diff) decided++, agreed += ac == ag;
                if (ac == ByteTokenizer::EOS) break;
                forced.push_back(ac);
                memcpy(lc.data(), cpu.step(ac), V * 4);
                memcpy(lg.data(), gpu->step(ac), V * 4);
            }
            CHECK_MESSAGE(agreed == decided, "GPU greedy choice differs at a decided step (" << agreed << "/" << decided << ")");
            CHECK_MESSAGE(decided * 2 > (int)forced.size(), "too few decided steps: " << decided << " of " << forced.size());
            // and the free-running greedy outputs, for the record
            cpu.reset();
            gpu->reset();
            Rng r1(1), r2(1);
            std::vector<int32_t> oc = generate(cpu, ctx, (int64_t)ctx.size() + 48, ByteTokenizer::EOS, greedy, r1, [](int32_t) {}, nullptr);
            std::vector<int32_t> og = generate(*gpu, ctx, (int64_t)ctx.size() + 48, ByteTokenizer::EOS, greedy, r2, [](int32_t) {}, nullptr);
            MESSAGE("demo greedy" << (merge ? " merged" : "") << ": " << q << " -> cpu '" << ByteTokenizer::decode(oc)
                                  << "' gpu '" << ByteTokenizer::decode(og) << "'" << (oc == og ? " (equal)" : "")
                                  << "; decided steps agree " << agreed << "/" << decided);
        }
}

// Batched decoding: 11 sequences (both 8-sequence tiles of the fused mat-vec, the second partial)
// of different prompt lengths; at each step a different subset of them, in a different order. Every
// row of every pass must be bitwise the logits that sequence gets alone (slot 0, batch of one), and
// within the usual 2e-2 of the CPU decoder, also when the fused mat-vec's grid is capped (its sums
// do not depend on the grid); and generate_batch must sample what generate() samples.
static void check_batched(const std::string& dir, const std::string& dtype) {
    const std::string fixture = base_name(dir);
    TempDir tmp;
    CmdResult ex = run_cmd("./export_hf -i " + dir + " -o " + tmp / "model.bin --dtype " + dtype);
    REQUIRE_MESSAGE(ex.exit_code == 0, ex.output);
    CpuModel cm;
    std::vector<float> w;
    ModelHeader h = load_model_f32(tmp / "model.bin", w);
    cpu_model_init(cm, h.config, w);
    const int ctx = 64, B = 11, steps = 10, V = h.config.vocab_size;
    CpuDecoder cpu(cm, ctx, B);
    std::unique_ptr<Decoder> gpu = make_gpu_decoder(tmp / "model.bin", ctx, B);
    REQUIRE(gpu->max_batch() == B);
    Adapter ad = read_peft_adapter(dir + "/adapter", h.config);
    SafeTensors ref(dir + "/reference.safetensors");
    std::vector<int32_t> tokens = ref.read_i32("tokens");
    std::vector<std::vector<int32_t>> prompts, forced;  // forced[i][s]: the token sequence i is fed at step s
    for (int i = 0; i < B; i++) {
        const int len = 3 + (5 * i) % 17;
        std::vector<int32_t> p;
        for (int k = 0; k < len; k++) p.push_back(tokens[(size_t)(i + k) % tokens.size()]);
        prompts.push_back(p);
        std::vector<int32_t> f;
        for (int s = 0; s < steps; s++) f.push_back(tokens[(size_t)(3 * i + 7 * s + 1) % tokens.size()]);
        forced.push_back(f);
    }
    // which sequences step at pass s: ragged (sequence i runs steps - i % 3 steps), order reversed on odd passes
    auto runs = [&](int i, int s) { return s < steps - i % 3; };
    for (bool with_adapter : {false, true}) {
        const char* what = with_adapter ? "LoRA unmerged" : "base";
        gpu->set_adapter(with_adapter ? &ad : nullptr, false);
        cpu.set_adapter(with_adapter ? &ad : nullptr, false);
        // alone: slot 0, one sequence a pass
        std::vector<std::vector<std::vector<float>>> alone((size_t)B);  // [i][s] logits after step s
        for (int i = 0; i < B; i++) {
            gpu->prefill_slot(0, prompts[(size_t)i].data(), (int)prompts[(size_t)i].size());
            const int slot0 = 0;
            for (int s = 0; runs(i, s); s++) {
                const float* l = gpu->step_batch(&forced[(size_t)i][(size_t)s], &slot0, 1);
                alone[(size_t)i].emplace_back(l, l + V);
            }
        }
        // the batched passes twice: on the full persistent grid (a tiny model's tiles a block each)
        // and on a grid of 2 blocks, each walking many tiles through its ring as on a 7B model
        for (int cap : {0, 2}) {
            gpu_decoder_cap_matvec_grid(*gpu, cap);
            for (int i = 0; i < B; i++) gpu->prefill_slot(i, prompts[(size_t)i].data(), (int)prompts[(size_t)i].size());
            for (int i = 0; i < B; i++) cpu.prefill_slot(i, prompts[(size_t)i].data(), (int)prompts[(size_t)i].size());
            int rows = 0, equal = 0;
            double worst_cpu = 0;
            for (int s = 0; s < steps; s++) {
                std::vector<int> slots;
                std::vector<int32_t> feed;
                for (int k = 0; k < B; k++) {
                    const int i = s % 2 ? B - 1 - k : k;
                    if (runs(i, s)) slots.push_back(i), feed.push_back(forced[(size_t)i][(size_t)s]);
                }
                const float* lg = gpu->step_batch(feed.data(), slots.data(), (int)slots.size());
                std::vector<float> batch_rows(lg, lg + slots.size() * (size_t)V);
                const float* lc = cpu.step_batch(feed.data(), slots.data(), (int)slots.size());
                for (size_t j = 0; j < slots.size(); j++) {
                    const std::vector<float>& a = alone[(size_t)slots[j]][(size_t)s];
                    rows++;
                    equal += memcmp(a.data(), batch_rows.data() + j * V, (size_t)V * 4) == 0;
                    worst_cpu = std::max(worst_cpu, rel_l2(batch_rows.data() + j * V, lc + j * V, V));
                }
            }
            CHECK_MESSAGE(equal == rows, fixture << " " << dtype << " " << what << " grid cap " << cap << ": " << rows - equal
                                                 << " of " << rows << " batched rows differ from the sequence alone");
            CHECK_MESSAGE(worst_cpu <= 2e-2, fixture << " " << dtype << " " << what << " grid cap " << cap
                                                     << ": batched logits rel err vs CPU " << worst_cpu);
            MESSAGE(fixture << " " << dtype << " " << what << " grid cap " << cap << ": " << equal << "/" << rows
                            << " batched rows bitwise equal alone (uncapped); rel err vs CPU " << worst_cpu);
        }
        gpu_decoder_cap_matvec_grid(*gpu, 0);
    }
    // sampled generation: 11 prompts through 4 slots (refilled as they finish) against each alone
    std::unique_ptr<Decoder> four = make_gpu_decoder(tmp / "model.bin", ctx, 4);
    four->set_adapter(&ad, false);
    gpu->set_adapter(&ad, false);
    SamplingConfig cfg;
    std::vector<int64_t> limits;
    for (int i = 0; i < B; i++) limits.push_back((int64_t)prompts[(size_t)i].size() + 4 + i % 5);
    std::vector<std::vector<int32_t>> batched = generate_batch(*four, prompts, limits, 2, cfg, 21, nullptr, nullptr);
    int same = 0;
    for (int i = 0; i < B; i++) {
        Rng rng(21);
        gpu->reset();
        same += generate(*gpu, prompts[(size_t)i], limits[(size_t)i], 2, cfg, rng, nullptr, nullptr) == batched[(size_t)i];
    }
    CHECK_MESSAGE(same == B, fixture << " " << dtype << ": " << B - same << " sampled answers differ between batch and alone");
}

TEST_CASE("decode: batched steps give each sequence bitwise its logits alone (bf16 and NF4 bases)") {
    for (const std::string& f : tiny_fixtures()) {
        CAPTURE(f);
        check_batched(f, "bf16");
        check_batched(f, "nf4");
    }
}
