// bench/bench_decode.cu — ./sample's GPU decoder on a Llama-2-shaped model of random weights built
// on the device: prefill tokens/s of a prompt and decode tokens/s of 1 to 16 sequences a pass
// (--batch), NF4 base with an unmerged LoRA adapter (r=64 on all seven linears) by default. A
// benchmark, not a test.
// Run: ./bench_decode [--model 7b] [--quant nf4|bf16] [--rank 64] [--prompt 128] [--new 256] [--batch 1] [--merge]
//
// The floor for decode is the bytes read per token: the linears (NF4: 3.3 GB of codes for 7B and the
// decoded fp32 block absmax, 0.4 GB; bf16: 13 GB), LoRA A and B (r=64 on all seven: 0.32 GB), the LM head (262 MB) and the KV cache, over
// the bandwidth of a large device-to-device copy measured on the same card (printed as "% of BW").
// A pass of B sequences reads the weights once and each sequence's own KV cache.
#include <cuda_profiler_api.h>

#include <chrono>
#include <cstring>
#include <string>

#include "../llama2_gpu.h"
#include "../chat.h"
#include "../sampling.h"
#include "bench_util.h"
#include "profile.h"
#include "../quant.h"

static const char* PROG = "bench_decode";

int main(int argc, char** argv) {
    struct {
        std::string model = "7b", quant = "nf4", rank = "64", prompt = "128", n_new = "256", batch = "1", merge;
    } a;
    const Cli cli{PROG, "./bench_decode [--model 7b] [--quant nf4|bf16] [--rank 64] [--prompt 128] [--new 256] [--batch 1] [--merge]",
                  "Times ./sample's GPU decoder (prefill, and decode of --batch sequences a pass) on a Llama-2-shaped model of random weights.",
                  {
                      {nullptr, "--model", "NAME", "7b, 13b, 70b or a custom shape layers=..,dim=.. (default 7b)", &a.model},
                      {nullptr, "--quant", "nf4|bf16", "base weights (default nf4)", &a.quant},
                      {nullptr, "--rank", "R", "LoRA rank on all seven linears, 0 = no adapter (default 64)", &a.rank},
                      {nullptr, "--prompt", "N", "prompt tokens to prefill (default 128)", &a.prompt},
                      {nullptr, "--new", "N", "tokens to decode per sequence (default 256)", &a.n_new},
                      {nullptr, "--batch", "B", "sequences decoded together, 1 .. 16, each with its own prompt (default 1)", &a.batch},
                      {nullptr, "--merge", nullptr, "merge the adapter into the base weights instead of applying it unmerged", &a.merge},
                      {"-h", "--help", nullptr, "show this help and exit", nullptr},
                  }};
    if (!cli_parse(cli, argc, argv)) return 0;
    const std::string model = a.model, quant = cli_choice(PROG, "--quant", a.quant, {"nf4", "bf16"});
    const int rank = (int)cli_int(PROG, "--rank", a.rank, 0, 4096), prompt = (int)cli_int(PROG, "--prompt", a.prompt, 1, 1 << 20),
              n_new = (int)cli_int(PROG, "--new", a.n_new, 1, 1 << 20), batch = (int)cli_int(PROG, "--batch", a.batch, 1, 16);
    const bool merge = !a.merge.empty();
    cudaDeviceProp prop;
    const Config c = bench_setup(PROG, model, &prop);
    std::unique_ptr<Decoder> dec = make_gpu_decoder_random(c, quant == "nf4", prompt + n_new + 8, batch, 77);
    Adapter ad;
    ad.base = c;
    ad.lora = LoraConfig{rank, 16.0f, 0.0f, LORA_ALL_TARGETS};
    ad.params.resize((size_t)lora_layout(c, ad.lora).total);
    Rng rng(3);
    for (float& x : ad.params) x = 0.01f * rng.normal();
    if (rank > 0) dec->set_adapter(&ad, merge);
    std::vector<std::vector<int32_t>> toks((size_t)batch, std::vector<int32_t>((size_t)prompt));
    for (auto& p : toks)
        for (int32_t& t : p) t = 3 + (int32_t)(rng.next() % (c.vocab_size - 3));
    // warm-up: cuBLASLt heuristics, module loading
    dec->prefill(toks[0].data(), prompt);
    dec->step(5);
    dec->reset();
    const int V = c.vocab_size;
    std::vector<int32_t> next((size_t)batch);
    std::vector<int> slots((size_t)batch);
    auto t0 = std::chrono::steady_clock::now();
    for (int b = 0; b < batch; b++) {  // one prompt a slot; the prefill time is their mean
        const float* logits = dec->prefill_slot(b, toks[(size_t)b].data(), prompt);
        next[(size_t)b] = argmax(logits, V), slots[(size_t)b] = b;
    }
    auto t1 = std::chrono::steady_clock::now();
    const double pre_s = std::chrono::duration<double>(t1 - t0).count() / batch;
    for (int i = 0; i < n_new; i++) {
        // the last step is the one a profiler started with --profile-from-start off looks at
        // (tools/gpu_decode.sh timeline); without one these calls do nothing
        if (i == n_new - 1) cudaCheck(cudaProfilerStart());
        const float* logits = dec->step_batch(next.data(), slots.data(), batch);
        if (i == n_new - 1) cudaCheck(cudaProfilerStop());
        for (int b = 0; b < batch; b++) next[(size_t)b] = argmax(logits + (size_t)b * V, V);
    }
    auto t2 = std::chrono::steady_clock::now();
    const double dec_s = std::chrono::duration<double>(t2 - t1).count();
    // bytes a decode step must read at the least, at the mean context of the timed steps
    double linear_bytes = 0, lora_bytes = 0;
    for (int t = 0; t < NUM_LORA_TARGETS; t++) {
        const int64_t in = lora_in_dim(c, t), out = lora_out_dim(c, t);
        // NF4: the packed codes and the decoder's fp32 absmax per 64 weights (decoded once at load)
        linear_bytes += (double)c.n_layers * (quant == "nf4" && !merge ? in * out / 2.0 + 4.0 * in * out / 64.0 : 2.0 * in * out);
        if (rank > 0 && !merge) lora_bytes += 2.0 * c.n_layers * rank * (in + out);
    }
    const double kv_bytes = 2.0 * c.n_layers * (prompt + n_new / 2.0) * c.n_kv_heads * c.head_dim * 2 * batch;
    const double head_bytes = 2.0 * c.vocab_size * c.dim, total_bytes = linear_bytes + lora_bytes + kv_bytes + head_bytes;
    Blas bl;
    blas_create(bl);
    const Ceilings ceil = measure_ceilings(bl, nullptr);
    blas_destroy(bl);
    const double bw = total_bytes * n_new / dec_s, tok_s = (double)batch * n_new / dec_s;
    printf("bench_decode %s %s base, LoRA r=%d %s, batch %d, on %s (%s)\n", model.c_str(), quant.c_str(), rank,
           merge ? "merged" : "unmerged", batch, prop.name, dec->describe().c_str());
    printf("  prefill %d tokens: %.1f ms, %.0f tokens/s\n", prompt, pre_s * 1e3, prompt / pre_s);
    printf("  decode %d steps of %d sequences: %.2f ms/step, %.1f tokens/s in all (logits to the host each step)\n", n_new,
           batch, dec_s * 1e3 / n_new, tok_s);
    printf("  bytes per step %.3f GB (linears %.3f, LoRA %.3f, KV cache %.3f, LM head %.3f), %.3f GB per token: %.0f GB/s, "
           "%.0f%% of the %.0f GB/s copy rate; the limit there is %.0f steps/s\n", total_bytes / 1e9, linear_bytes / 1e9,
           lora_bytes / 1e9, kv_bytes / 1e9, head_bytes / 1e9, total_bytes / batch / 1e9, bw / 1e9, 100.0 * bw / ceil.bytes,
           ceil.bytes / 1e9, ceil.bytes / total_bytes);
    printf("RESULT decode model=%s quant=%s rank=%d merge=%d prompt=%d batch=%d prefill_tok_s=%.0f decode_tok_s=%.1f "
           "bytes_per_step=%.0f bw_pct=%.1f\n", model.c_str(), quant.c_str(), rank, (int)merge, prompt, batch, prompt / pre_s,
           tok_s, total_bytes, 100.0 * bw / ceil.bytes);
    return 0;
}
