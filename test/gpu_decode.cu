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
    CpuDecoder cpu(cm, ctx);
    std::unique_ptr<Decoder> gpu = make_gpu_decoder(tmp / "model.bin", ctx);
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
    CpuDecoder cpu(cm, 256);
    std::unique_ptr<Decoder> gpu = make_gpu_decoder(tmp / "model.bin", 256);
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
