// train_backend_gpu.cpp — the CUDA model (llama2.cu) behind ./train's Backend interface
// (train_backend.h). Linked only into a CUDA build.
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
    CpuModel init;  // PEFT's initialisation, drawn on the host so CPU and GPU runs start equal
    init.cfg = cfg;
    cpu_lora_init(init, lora, s.seed);
    gpu_lora_set(m, init.lora_params);
    return gb;
}

bool gpu_backend_usable(std::string* why) { return gpu_available(why); }
