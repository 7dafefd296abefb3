// bench/bench_decode.cu — ./sample's GPU decoder on a Llama-2-shaped model of random weights built
// on the device: prefill tokens/s of a prompt and batch-1 decode tokens/s, NF4 base with an
// unmerged LoRA adapter (r=64 on all seven linears) by default. A benchmark, not a test.
// Run: ./bench_decode [--model 7b] [--quant nf4|bf16] [--rank 64] [--prompt 128] [--new 256] [--merge]
//
// The floor for decode is the bytes read per token: NF4 weights (3.9 GB for 7B) plus the bf16
// embedding row, LM head (262 MB), LoRA (r=64: 80 MB) and the KV cache, over the card's bandwidth.
#include <chrono>
#include <cstring>
#include <string>

#include "../llama2_gpu.h"
#include "../sampling.h"

int main(int argc, char** argv) {
    std::string model = "7b", quant = "nf4";
    int rank = 64, prompt = 128, n_new = 256;
    bool merge = false;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) { fprintf(stderr, "bench_decode: %s needs a value\n", a.c_str()); exit(2); }
            return argv[++i];
        };
        if (a == "--model") model = next();
        else if (a == "--quant") quant = next();
        else if (a == "--rank") rank = std::stoi(next());
        else if (a == "--prompt") prompt = std::stoi(next());
        else if (a == "--new") n_new = std::stoi(next());
        else if (a == "--merge") merge = true;
        else { fprintf(stderr, "bench_decode: unknown flag %s\n", a.c_str()); return 2; }
    }
    std::string why;
    if (!gpu_available(&why)) { fprintf(stderr, "bench_decode: needs a GPU (%s)\n", why.c_str()); return 1; }
    Config c;
    try {
        c = llama2_preset(model);
    } catch (const InputError& e) {
        fprintf(stderr, "bench_decode: %s\n", e.what());
        return 2;
    }
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    std::unique_ptr<Decoder> dec = make_gpu_decoder_random(c, quant == "nf4", prompt + n_new + 8, 77);
    Adapter ad;
    ad.base = c;
    ad.lora = LoraConfig{rank, 16.0f, 0.0f, LORA_ALL_TARGETS};
    ad.params.resize((size_t)lora_layout(c, ad.lora).total);
    Rng rng(3);
    for (float& x : ad.params) x = 0.01f * rng.normal();
    if (rank > 0) dec->set_adapter(&ad, merge);
    std::vector<int32_t> toks(prompt);
    for (int32_t& t : toks) t = 3 + (int32_t)(rng.next() % (c.vocab_size - 3));
    // warm-up: cuBLASLt heuristics, module loading
    dec->prefill(toks.data(), prompt);
    dec->step(5);
    dec->reset();
    auto t0 = std::chrono::steady_clock::now();
    const float* logits = dec->prefill(toks.data(), prompt);
    auto t1 = std::chrono::steady_clock::now();
    for (int i = 0; i < n_new; i++) logits = dec->step(argmax(logits, c.vocab_size));
    auto t2 = std::chrono::steady_clock::now();
    const double pre_s = std::chrono::duration<double>(t1 - t0).count(), dec_s = std::chrono::duration<double>(t2 - t1).count();
    printf("bench_decode %s %s base, LoRA r=%d %s, on %s (%s)\n", model.c_str(), quant.c_str(), rank,
           merge ? "merged" : "unmerged", prop.name, dec->describe().c_str());
    printf("  prefill %d tokens: %.1f ms, %.0f tokens/s\n", prompt, pre_s * 1e3, prompt / pre_s);
    printf("  decode %d tokens: %.2f ms/token, %.1f tokens/s (batch 1, logits to the host each step)\n", n_new,
           dec_s * 1e3 / n_new, n_new / dec_s);
    printf("RESULT decode model=%s quant=%s rank=%d merge=%d prefill_tok_s=%.0f decode_tok_s=%.1f\n", model.c_str(),
           quant.c_str(), rank, (int)merge, prompt / pre_s, n_new / dec_s);
    return 0;
}
