// bench/bench_step.cu — one LoRA/QLoRA training step of a Llama-2-shaped model with random weights,
// built on the GPU (no file): tokens/s, MFU and peak memory. A benchmark, not a test.
// Run: ./bench_step --model 7b --quant nf4 --seq 2048 [--rows 1] [--rank 64] [--recompute none]
//                  [--steps 3] [--micro 1]
//
// MFU counts model FLOPs only (training_flops() in schedule.h: what the step must do, recompute
// excluded) over the card's dense bf16 peak (989 TFLOP/s for H100 SXM and H200).
#include <chrono>
#include <cstring>
#include <string>

#include "../llama2_gpu.h"
#include "../schedule.h"
#include "bench_util.h"
#include "profile.h"

static const char* PROG = "bench_step";

int main(int argc, char** argv) {
    struct {
        std::string model = "7b", quant = "nf4", seq = "2048", rows = "1", rank = "64", recompute = "none", steps = "3",
                    micro = "1", profile, att_warps = "8", lora_fused = "1";
    } a;
    const Cli cli{PROG, "./bench_step [--model 7b] [--quant nf4|bf16] [--seq 2048] [options]",
                  "Times LoRA/QLoRA training steps of a Llama-2-shaped model with random weights on the GPU.",
                  {
                      {nullptr, "--model", "NAME", "7b, 13b, 70b or a custom shape layers=..,dim=.. (default 7b)", &a.model},
                      {nullptr, "--quant", "nf4|bf16", "frozen base weights (default nf4)", &a.quant},
                      {nullptr, "--seq", "T", "tokens per row (default 2048)", &a.seq},
                      {nullptr, "--rows", "N", "rows per micro-batch (default 1)", &a.rows},
                      {nullptr, "--rank", "R", "LoRA rank on all seven linears (default 64)", &a.rank},
                      {nullptr, "--recompute", "MODE", "none|light|full (default none)", &a.recompute},
                      {nullptr, "--steps", "N", "timed steps after one warm-up step (default 3)", &a.steps},
                      {nullptr, "--micro", "N", "micro-batches per step (default 1)", &a.micro},
                      {nullptr, "--profile", nullptr, "also time one step phase by phase and print the table", &a.profile},
                      {nullptr, "--att-warps", "N", "warps per query block of the attention kernels, 4 or 8 (default 8)", &a.att_warps},
                      {nullptr, "--lora-fused", "0|1", "LoRA's dropout products in the fused kernels (1, default) or cuBLASLt (0)", &a.lora_fused},
                      {"-h", "--help", nullptr, "show this help and exit", nullptr},
                  }};
    if (!cli_parse(cli, argc, argv)) return 0;
    const std::string model = a.model, quant = cli_choice(PROG, "--quant", a.quant, {"nf4", "bf16"}),
                      recompute = cli_choice(PROG, "--recompute", a.recompute, {"none", "light", "full"});
    const int seq = (int)cli_int(PROG, "--seq", a.seq, 1, 1 << 20), rows = (int)cli_int(PROG, "--rows", a.rows, 1, 1 << 16),
              rank = (int)cli_int(PROG, "--rank", a.rank, 1, 4096), steps = (int)cli_int(PROG, "--steps", a.steps, 1, 1 << 20),
              micro = (int)cli_int(PROG, "--micro", a.micro, 1, 1 << 20);
    cudaDeviceProp prop;
    const Config c = bench_setup(PROG, model, &prop);
    attention_set_query_warps((int)cli_int(PROG, "--att-warps", a.att_warps, 4, 8) >= 8 ? 8 : 4);
    lora_set_fused(cli_int(PROG, "--lora-fused", a.lora_fused, 0, 1) == 1);
    const int q = quant == "nf4" ? QUANT_NF4 : QUANT_BF16;
    const int rc = recompute == "full" ? RECOMPUTE_FULL : recompute == "light" ? RECOMPUTE_LIGHT : RECOMPUTE_NONE;
    LoraConfig lc{rank, 16.0f, 0.1f, LORA_ALL_TARGETS};
    const int64_t N = (int64_t)rows * seq;

    GpuModel m;
    auto t0 = std::chrono::steady_clock::now();
    gpu_model_init(m, c, lc, q, rc, N);
    gpu_base_random(m.base, 1234, m.stream);
    auto t1 = std::chrono::steady_clock::now();
    // LoRA with B != 0 so the whole backward does real work
    std::vector<float> lora((size_t)m.lora.lay.total);
    Rng rng(5);
    for (auto& x : lora) x = 0.01f * rng.normal();
    gpu_lora_set(m, lora);
    // one conversation per row, every position with a target
    std::vector<int32_t> tok(N), tgt(N), pos(N);
    for (int64_t i = 0; i < N; i++) {
        tok[i] = (int32_t)(rng.next() % c.vocab_size);
        tgt[i] = (i + 1) % seq == 0 ? -1 : (int32_t)(rng.next() % c.vocab_size);
        pos[i] = (int32_t)(i % seq);
    }
    gpu_set_batch(m, rows, seq, tok.data(), tgt.data(), pos.data());
    GpuStepOptions opt;
    opt.training = true;
    opt.loss_scale = 1.0f / (float)(N * micro);

    auto run_step = [&](int step) {
        gpu_zero_grads(m);
        for (int k = 0; k < micro; k++) {
            opt.dropout_seed = (uint64_t)step * 1000 + k;
            gpu_forward(m, opt);
            gpu_backward(m, opt);
        }
        gpu_optimizer_step(m, 2e-4f, 0.9f, 0.999f, 1e-8f, 0.0f, 0.3f, step);
    };
    run_step(1);  // warm-up: cuBLASLt heuristics, module loading
    cudaCheck(cudaStreamSynchronize(m.stream));
    cudaEvent_t e0, e1;
    cudaCheck(cudaEventCreate(&e0));
    cudaCheck(cudaEventCreate(&e1));
    cudaCheck(cudaEventRecord(e0, m.stream));
    for (int s = 0; s < steps; s++) run_step(2 + s);
    cudaCheck(cudaEventRecord(e1, m.stream));
    cudaCheck(cudaEventSynchronize(e1));
    float ms = 0;
    cudaCheck(cudaEventElapsedTime(&ms, e0, e1));
    const float loss = gpu_read_loss_sum(m) / (float)N;
    const double step_s = ms / 1000.0 / steps, tokens = (double)N * micro;

    const double flops = training_flops(c, lc, tokens, (double)rows * micro * (double)seq * (seq + 1) / 2.0);
    const double peak = gpu_peak_bf16_flops();
    size_t free_b = 0, total_b = 0;
    cudaCheck(cudaMemGetInfo(&free_b, &total_b));
    printf("bench_step %s %s seq=%d rows=%d micro=%d r=%d recompute=%s on %s\n", model.c_str(), quant.c_str(), seq, rows,
           micro, rank, recompute.c_str(), prop.name);
    printf("  setup (alloc + random weights%s): %.2f s\n", q == QUANT_NF4 ? " + NF4 quantize" : "",
           std::chrono::duration<double>(t1 - t0).count());
    printf("  step %.1f ms  tokens/s %.0f  MFU %s  model TFLOP/s %.1f  loss %.4f\n", step_s * 1000, tokens / step_s,
           peak > 0 ? (std::to_string(100.0 * flops / step_s / peak).substr(0, 5) + "%").c_str() : "n/a",
           flops / step_s / 1e12, loss);
    printf("  memory: model allocations %.2f GiB, device in use %.2f GiB of %.2f GiB\n", m.bytes_allocated / 1073741824.0,
           (total_b - free_b) / 1073741824.0, total_b / 1073741824.0);
    printf("RESULT model=%s quant=%s seq=%d tokens_per_s=%.0f mfu=%.4f mem_gib=%.2f\n", model.c_str(), quant.c_str(), seq,
           tokens / step_s, peak > 0 ? flops / step_s / peak : 0.0, (total_b - free_b) / 1073741824.0);
    if (!a.profile.empty()) {
        const Ceilings ceil = measure_ceilings(m.blas, m.stream);
        double ms[NUM_PHASES];
        gpu_profile_start(m);
        run_step(2 + steps);
        gpu_profile_stop(m, ms);
        print_profile(ms, phase_work(c, lc, q, tokens, (double)rows * micro * (double)seq * (seq + 1) / 2.0), ceil);
    }
    gpu_model_free(m);
    return 0;
}
