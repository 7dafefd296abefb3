// train_backend.cpp — the CPU reference behind ./train's Backend interface (train_backend.h).
#include "train_backend.h"

#include <cmath>

#include "quant.h"

// QLoRA on the CPU: each linear as NF4 gives it back (bf16), the numbers the GPU computes with
static void nf4_round_trip_linears(const Config& cfg, std::vector<float>& weights) {
    Weights<float> w = carve_weights(cfg, weights.data());
    for (int t = 0; t < NUM_LORA_TARGETS; t++) {
        const int id = lora_target_weight(t);
        const int64_t n = weight_info(cfg, id).numel();
        for (int l = 0; l < cfg.n_layers; l++) {
            float* W = *w.ptr(id) + l * n;
            std::vector<uint16_t> h((size_t)n);
            convert_from_f32(h.data(), W, DT_BF16, (size_t)n);
            Nf4Tensor q = nf4_quantize_dq_cpu(h.data(), DT_BF16, n, weight_hf_name(id, l).c_str());
            nf4_dequantize_dq_cpu(h.data(), DT_BF16, q);
            convert_to_f32(W, h.data(), DT_BF16, (size_t)n);
        }
    }
}

struct CpuBackend : Backend {
    CpuModel model;
    std::vector<float> mom, vel;
    double step_loss = 0;
    const char* name() const override { return "cpu (fp32 reference)"; }
    void set_lora_state(const std::vector<float>& p, const std::vector<float>& m, const std::vector<float>& v) override {
        cpu_lora_set(model, model.lora, p);
        mom = m;
        vel = v;
    }
    void get_lora_state(std::vector<float>& p, std::vector<float>& m, std::vector<float>& v) override {
        p = model.lora_params;
        m = mom;
        v = vel;
    }
    void zero_grads() override {
        std::fill(model.lora_grads.begin(), model.lora_grads.end(), 0.0f);
        step_loss = 0;
    }
    void forward_backward(const CpuBatch& b, float loss_scale, uint64_t dropout_seed) override {
        CpuActs a;
        cpu_acts_init(a, model, b.B, b.T);
        CpuStepOptions opt;
        opt.training = true;
        opt.dropout_seed = dropout_seed;
        cpu_forward(model, a, b, opt);
        cpu_backward(model, a, b, opt, loss_scale);
        step_loss += a.loss_sum;
    }
    double eval_loss_sum(const CpuBatch& b) override {
        CpuActs a;
        cpu_acts_init(a, model, b.B, b.T);
        cpu_forward(model, a, b, CpuStepOptions{});
        return a.loss_sum;
    }
    void optimizer_step(int64_t k, float lr, const TrainSettings& s, double* loss_sum, float* grad_norm) override {
        const int64_t n = (int64_t)model.lora_grads.size();
        *loss_sum = step_loss;
        *grad_norm = cpu_grad_norm(model.lora_grads.data(), n);
        if (!std::isfinite(*grad_norm)) return;
        if (s.clip > 0) cpu_clip_grad_norm(model.lora_grads.data(), n, s.clip);
        AdamWConfig ac{lr, s.beta1, s.beta2, s.eps, s.weight_decay};
        cpu_adamw_update(model.lora_params.data(), model.lora_grads.data(), mom.data(), vel.data(), n, (int)(k + 1), ac);
    }
    double memory_in_use_gib() override { return NAN; }
    double peak_flops() override { return 0.0; }
};

std::unique_ptr<Backend> make_cpu_backend(const Config& cfg, BaseSource base, const TrainSettings& s) {
    auto cb = std::make_unique<CpuBackend>();
    std::vector<float> weights;
    if (base.kind == BaseSource::RANDOM) weights = cpu_random_weights(cfg, base.seed);
    else if (base.kind == BaseSource::FILE) load_model_f32(base.path, weights);
    else weights = std::move(base.host);
    if (s.quant == 1 && !base.file_is_nf4) nf4_round_trip_linears(cfg, weights);
    cpu_model_init(cb->model, cfg, std::move(weights));
    cpu_lora_init(cb->model, s.lora(), s.seed);
    cb->mom.assign(cb->model.lora_params.size(), 0.0f);
    cb->vel.assign(cb->model.lora_params.size(), 0.0f);
    return cb;
}
