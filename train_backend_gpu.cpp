// train_backend_gpu.cpp — the CUDA model (llama2.cu) behind ./train's Backend interface
// (train_backend.h). Linked only into a CUDA build.
#include <algorithm>
#include <cmath>

#include "llama2_gpu.h"
#include "train_backend.h"

struct GpuBackend : Backend {
    GpuModel model;
    ~GpuBackend() override { gpu_model_free(model); }
    const char* name() const override { return "cuda"; }
    void set_lora_state(const std::vector<float>& p, const std::vector<float>& m, const std::vector<float>& v) override {
        gpu_lora_state_set(model, p, m, v);
    }
    void get_lora_state(std::vector<float>& p, std::vector<float>& m, std::vector<float>& v) override {
        gpu_lora_state_get(model, p, m, v);
    }
    void zero_grads() override { gpu_zero_grads(model); }
    void forward_backward(const CpuBatch& b, float loss_scale, uint64_t dropout_seed) override {
        gpu_set_batch(model, b.B, b.T, b.tokens.data(), b.targets.data(), b.pos.data());
        GpuStepOptions opt;
        opt.training = true;
        opt.dropout_seed = dropout_seed;
        opt.loss_scale = loss_scale;
        gpu_forward(model, opt);
        gpu_backward(model, opt);
    }
    double eval_loss_sum(const CpuBatch& b) override {
        gpu_set_batch(model, b.B, b.T, b.tokens.data(), b.targets.data(), b.pos.data());
        gpu_forward(model, GpuStepOptions{});
        return gpu_read_loss_sum(model);
    }
    void optimizer_step(int64_t k, float lr, const TrainSettings& s, double* loss_sum, float* grad_norm) override {
        gpu_optimizer_step(model, lr, s.beta1, s.beta2, s.eps, s.weight_decay, s.clip, (int)(k + 1));
        *loss_sum = gpu_read_step_loss(model);  // the step's only synchronisation
        *grad_norm = gpu_read_grad_norm(model);
    }
    void begin_profile() override { gpu_profile_start(model); }
    std::string end_profile() override {
        double ms[NUM_PHASES], total = 0;
        gpu_profile_stop(model, ms);
        for (double x : ms) total += x;
        std::string line = "profile of this step (" + std::to_string((int)std::lround(total)) + " ms):";
        for (int p = 0; p < NUM_PHASES; p++) {
            char part[96];
            snprintf(part, sizeof(part), "%s %s %.0f%%", p ? "," : "", phase_name(p), total > 0 ? 100 * ms[p] / total : 0.0);
            line += part;
        }
        return line;
    }
    double memory_in_use_gib() override { return gpu_memory_in_use_gib(); }
    double peak_flops() override { return gpu_peak_bf16_flops(); }
};

std::unique_ptr<Backend> make_gpu_backend(const Config& cfg, const BaseSource& base, const TrainSettings& s,
                                          int recompute, int64_t capacity) {
    auto gb = std::make_unique<GpuBackend>();
    const LoraConfig lora = s.lora();
    gpu_model_init(gb->model, cfg, lora, s.quant == 1 ? QUANT_NF4 : QUANT_BF16, recompute, capacity);
    GpuModel& m = gb->model;
    if (base.kind == BaseSource::HOST) gpu_base_set_weights(m.base, base.host, m.stream);
    else if (base.kind == BaseSource::RANDOM) gpu_base_random(m.base, base.seed, m.stream);
    else gpu_base_load_file(m.base, base.path, m.stream);
    printf("train: device memory in use after loading the model: %.2f GiB at the peak\n", m.base.load_peak_gib);
    CpuModel init;  // PEFT's initialisation, drawn on the host so CPU and GPU runs start equal
    init.cfg = cfg;
    cpu_lora_init(init, lora, s.seed);
    gpu_lora_set(m, init.lora_params);
    return gb;
}

bool gpu_backend_usable(std::string* why) { return gpu_available(why); }

// ----------------------------------------------------------------------------------------------
// the memory plan

MemoryPlan plan_gpu_memory(const Config& cfg, const TrainSettings& s, int64_t longest, double max_mem_gib,
                           int64_t micro_tokens, int recompute) {
    const double GiB = 1073741824.0;
    size_t free_b = 0, total_b = 0;
    cudaCheck(cudaMemGetInfo(&free_b, &total_b));
    const double in_use = (double)(total_b - free_b);  // the CUDA context, other processes
    // the card's memory less 2% that the allocator's rounding and cuBLASLt may take; --max-mem
    // counts memory in use on the card, this process's context included
    const double card = 0.98 * (double)total_b, budget = max_mem_gib > 0 ? std::min(max_mem_gib * GiB, card) : card;
    const int quant = s.quant == 1 ? QUANT_NF4 : QUANT_BF16;
    const LoraConfig lora = s.lora();
    auto predicted = [&](int64_t micro, int rc) {
        const int64_t capacity = std::max<int64_t>(micro, longest);
        return in_use + (double)gpu_model_bytes(cfg, lora, quant, rc, capacity) + (double)gpu_base_load_bytes(cfg, quant) +
               64.0 * 1048576.0;  // cuBLASLt handles, events, allocation granularity
    };
    // speed of a step relative to no recompute (measured, docs/perf.md), and of a micro-batch
    // size (launches and GEMM tails weigh more on small ones)
    const double rc_speed[3] = {1.0, 0.97, 0.75};
    auto speed = [&](int64_t micro, int rc) { return rc_speed[rc] * (double)micro / (double)(micro + 256); };
    std::vector<int64_t> micros;
    if (micro_tokens > 0) micros.push_back(micro_tokens);
    else
        for (int64_t m = s.micro_tokens; m >= 256; m /= 2) micros.push_back(m);
    if (micros.empty()) micros.push_back(s.micro_tokens);
    std::vector<int> rcs;
    if (recompute >= 0) rcs.push_back(recompute);
    else rcs = {RECOMPUTE_NONE, RECOMPUTE_LIGHT, RECOMPUTE_FULL};
    MemoryPlan best;
    double best_speed = -1, smallest = 1e300;
    for (int rc : rcs)
        for (int64_t m : micros) {
            const double bytes = predicted(m, rc);
            smallest = std::min(smallest, bytes);
            if (bytes <= budget && speed(m, rc) > best_speed) {
                best_speed = speed(m, rc);
                best.micro_tokens = m;
                best.recompute = rc;
                best.predicted_gib = bytes / GiB;
            }
        }
    best.budget_gib = budget / GiB;
    if (best_speed < 0)
        fail("GPU memory: this run needs at least %.1f GiB (recompute full, micro-batches of %lld tokens), more than the %.1f GiB %s; "
             "try a smaller --micro-tokens floor, a lower --rank, or --max-mem %.0f on a larger card",
             smallest / GiB, (long long)std::max<int64_t>(micros.back(), longest), budget / GiB,
             max_mem_gib > 0 ? "of --max-mem" : "this card holds", std::ceil(smallest / GiB));
    static const char* rc_names[3] = {"none", "light", "full"};
    char line[256];
    snprintf(line, sizeof(line), "memory plan: micro-batches of %lld tokens, recompute %s, predicted peak %.1f GiB of %.1f GiB%s",
             (long long)best.micro_tokens, rc_names[best.recompute], best.predicted_gib, best.budget_gib,
             max_mem_gib > 0 ? " (--max-mem)" : "");
    best.summary = line;
    return best;
}
