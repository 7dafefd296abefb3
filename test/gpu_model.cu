// test/gpu_model.cu — the whole GPU training step against transformers + peft (every tiny_*
// fixture under $FIXTURES_DIR) and against the CPU reference (NF4 weights, packed rows, dropout),
// plus the recompute modes and determinism. Loading NF4 model files into GpuBase is in
// test/gpu_base.cu. Run: ./test_gpu -tc="step*"
//
// Error metric: ||gpu - ref||_2 / ||ref||_2 per tensor (|gpu - ref| / |ref| for a loss).
// bf16 tolerances: logits, base logits, loss and each AdamW loss 2e-2; each LoRA gradient 5e-2.
#include <doctest/doctest.h>

#include <cmath>

#include "../hf.h"
#include "../llama2_cpu.h"
#include "../llama2_gpu.h"
#include "../quant.h"
#include "gpu_util.h"
#include "test_util.h"

static const double TOL_LOGITS = 2e-2, TOL_LOSS = 2e-2, TOL_GRAD = 5e-2;

static int int_meta(const SafeTensors& st, const std::string& key) {
    auto it = st.metadata.find(key);
    REQUIRE_MESSAGE(it != st.metadata.end(), st.path << ": no metadata '" << key << "'");
    return std::stoi(it->second);
}

// worst gradient error over every LoRA tensor, naming the worst
static double grad_errors(const Config& c, const LoraConfig& lc, const std::vector<float>& got,
                          const std::vector<float>& ref, std::string* worst) {
    LoraLayout lay = lora_layout(c, lc);
    double e_max = 0;
    for (int t = 0; t < NUM_LORA_TARGETS; t++) {
        if (!lc.has(t)) continue;
        for (int l = 0; l < c.n_layers; l++)
            for (int is_b = 0; is_b < 2; is_b++) {
                const int64_t n = (int64_t)lc.rank * (is_b ? lora_out_dim(c, t) : lora_in_dim(c, t));
                const int64_t off = (is_b ? lay.b_offset[t] : lay.a_offset[t]) + l * n;
                const double e = rel_l2(got.data() + off, ref.data() + off, (size_t)n);
                if (e > e_max) e_max = e, *worst = lora_peft_name(t, l, is_b);
            }
    }
    return e_max;
}

static void check_fixture_gpu(const std::string& dir) {
    const std::string name = base_name(dir);
    HfCheckpoint ck(dir);
    const Config& cfg = ck.config;
    Adapter ad = read_peft_adapter(dir + "/adapter", cfg);
    ad.lora.dropout = 0.0f;
    SafeTensors ref(dir + "/reference.safetensors");
    REQUIRE(ad.lora.rank == int_meta(ref, "r"));
    const int B = (int)ref.get("tokens").shape[0], T = (int)ref.get("tokens").shape[1];
    std::vector<int32_t> tokens = ref.read_i32("tokens"), labels = ref.read_i32("labels");
    CpuBatch batch = batch_from_hf_labels(tokens.data(), labels.data(), B, T);
    int64_t n_targets = 0;
    for (int32_t t : batch.targets) n_targets += t >= 0;

    GpuModel m;
    gpu_model_init(m, cfg, ad.lora, QUANT_BF16, RECOMPUTE_NONE, (int64_t)B * T);
    gpu_base_set_weights(m.base, ck.load_all_f32(), m.stream);
    gpu_lora_set(m, ad.params);
    gpu_set_batch(m, B, T, batch.tokens.data(), batch.targets.data(), batch.pos.data());
    const size_t NV = (size_t)B * T * cfg.vocab_size;
    DeviceBuffer dlogits(NV * 4);

    GpuStepOptions base_opt;
    base_opt.use_lora = false;
    dlogits.poison();
    gpu_forward(m, base_opt, dlogits.as<float>());
    std::vector<float> base_ref = ref.read_f32("base_logits");
    const double e_base = rel_l2(download<float>(dlogits.ptr, NV).data(), base_ref.data(), NV);
    CHECK_MESSAGE(e_base <= TOL_LOGITS, name << ": tensor base_logits: " << e_base);

    GpuStepOptions opt;
    opt.training = true;
    opt.loss_scale = 1.0f / (float)n_targets;
    dlogits.poison();
    gpu_zero_grads(m);
    gpu_forward(m, opt, dlogits.as<float>());
    gpu_backward(m, opt);
    std::vector<float> logits_ref = ref.read_f32("logits");
    const double e_logits = rel_l2(download<float>(dlogits.ptr, NV).data(), logits_ref.data(), NV);
    CHECK_MESSAGE(e_logits <= TOL_LOGITS, name << ": tensor logits: " << e_logits);
    const float loss = gpu_read_loss_sum(m) / (float)n_targets, loss_ref = ref.read_f32("loss")[0];
    const double e_loss = std::fabs(loss - loss_ref) / loss_ref;
    CHECK_MESSAGE(e_loss <= TOL_LOSS, name << ": tensor loss: gpu " << loss << " ref " << loss_ref);

    // reference gradients, gathered into LoraLayout order
    std::vector<float> gref((size_t)m.lora.lay.total);
    for (int t = 0; t < NUM_LORA_TARGETS; t++)
        for (int l = 0; l < cfg.n_layers && ad.lora.has(t); l++)
            for (int is_b = 0; is_b < 2; is_b++) {
                std::vector<float> g = ref.read_f32("grad." + lora_peft_name(t, l, is_b));
                const int64_t off = (is_b ? m.lora.lay.b_offset[t] : m.lora.lay.a_offset[t]) + l * (int64_t)g.size();
                std::copy(g.begin(), g.end(), gref.begin() + off);
            }
    std::string worst;
    const double e_grad = grad_errors(cfg, ad.lora, gpu_lora_grads_get(m), gref, &worst);
    CHECK_MESSAGE(e_grad <= TOL_GRAD, name << ": tensor " << worst << ": " << e_grad);

    // 8 AdamW steps (lr 1e-3, no weight decay, no clipping); each loss is the one before its step
    std::vector<float> adamw_ref = ref.read_f32("adamw_losses");
    gpu_lora_set(m, ad.params);
    double e_adamw = 0;
    for (size_t step = 1; step <= adamw_ref.size(); step++) {
        gpu_zero_grads(m);
        gpu_forward(m, opt);
        const float l = gpu_read_loss_sum(m) / (float)n_targets;
        const double e = std::fabs(l - adamw_ref[step - 1]) / adamw_ref[step - 1];
        CHECK_MESSAGE(e <= TOL_LOSS, name << ": adamw_losses[" << step - 1 << "]: gpu " << l << " ref " << adamw_ref[step - 1]);
        e_adamw = std::max(e_adamw, e);
        gpu_backward(m, opt);
        gpu_optimizer_step(m, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 0.0f, (int)step);
    }
    MESSAGE(name << " (GPU bf16): base_logits " << e_base << " logits " << e_logits << " loss " << e_loss << " grads "
                 << e_grad << " [" << worst << "] adamw_losses " << e_adamw);
    gpu_model_free(m);
}

TEST_CASE("step: every tiny_* fixture, the whole GPU step vs transformers + peft") {
    for (const std::string& f : tiny_fixtures()) {
        CAPTURE(f);
        check_fixture_gpu(f);
    }
}

// ----------------------------------------------------------------------------------------------
// against the CPU reference on a random small model (D = 128 as the GPU needs)

static Config small_config() {
    Config c = llama2_config(2, 256, 512, 2, 1, 384);  // head_dim 128
    c.max_seq_len = 512;
    return c;
}

// two rows of 150 tokens, each packing conversations of up to 70 tokens; ~20% positions without target
static CpuBatch small_batch(const Config& c, uint64_t seed) {
    CpuBatch b;
    b.B = 2;
    b.T = 150;
    Rng rng(seed);
    for (int r = 0; r < b.B; r++) {
        int p = 0, left = 0;
        for (int t = 0; t < b.T; t++) {
            if (left == 0) p = 0, left = 20 + (int)(rng.next() % 50);
            left--;
            b.tokens.push_back((int32_t)(rng.next() % c.vocab_size));
            b.pos.push_back(p++);
            b.targets.push_back(left == 0 || rng.uniform() < 0.2f ? -1 : (int32_t)(rng.next() % c.vocab_size));
        }
    }
    return b;
}

struct StepResult {
    float loss;
    std::vector<float> grads;
};

static StepResult gpu_step(const Config& c, const LoraConfig& lc, const std::vector<float>& w,
                           const std::vector<float>& lora, const CpuBatch& b, int quant, int recompute, uint64_t seed,
                           int64_t n_targets) {
    GpuModel m;
    gpu_model_init(m, c, lc, quant, recompute, (int64_t)b.B * b.T);
    gpu_base_set_weights(m.base, w, m.stream);
    gpu_lora_set(m, lora);
    gpu_set_batch(m, b.B, b.T, b.tokens.data(), b.targets.data(), b.pos.data());
    GpuStepOptions opt;
    opt.training = true;
    opt.dropout_seed = seed;
    opt.loss_scale = 1.0f / (float)n_targets;
    gpu_zero_grads(m);
    gpu_forward(m, opt);
    gpu_backward(m, opt);
    StepResult r{gpu_read_loss_sum(m) / (float)n_targets, gpu_lora_grads_get(m)};
    gpu_model_free(m);
    return r;
}

static StepResult cpu_step(const Config& c, const LoraConfig& lc, const std::vector<float>& w,
                           const std::vector<float>& lora, const CpuBatch& b, uint64_t seed) {
    CpuModel m;
    cpu_model_init(m, c, w);
    cpu_lora_set(m, lc, lora);
    CpuActs a;
    cpu_acts_init(a, m, b.B, b.T);
    CpuStepOptions opt;
    opt.training = true;
    opt.dropout_seed = seed;
    float loss = cpu_forward(m, a, b, opt);
    cpu_backward(m, a, b, opt, 1.0f / (float)a.n_targets);
    return {loss, m.lora_grads};
}

static std::vector<float> random_lora(const Config& c, const LoraConfig& lc, uint64_t seed) {
    std::vector<float> p((size_t)lora_layout(c, lc).total);
    Rng rng(seed);
    for (auto& x : p) x = 0.05f * rng.normal();  // B non-zero so every A gets a gradient
    return p;
}

TEST_CASE("step: GPU vs CPU reference on packed rows with dropout, bf16 and NF4 weights") {
    const Config c = small_config();
    const LoraConfig lc{8, 16.0f, 0.1f, LORA_ALL_TARGETS};
    std::vector<float> w = cpu_random_weights(c, 5);
    // the GPU holds bf16: give both sides bf16-representable weights
    for (auto& x : w) x = bf16_to_f32(f32_to_bf16(x));
    const std::vector<float> lora = random_lora(c, lc, 6);
    const CpuBatch b = small_batch(c, 7);
    int64_t n_targets = 0;
    for (int32_t t : b.targets) n_targets += t >= 0;

    StepResult cpu = cpu_step(c, lc, w, lora, b, 42);
    StepResult gpu = gpu_step(c, lc, w, lora, b, QUANT_BF16, RECOMPUTE_NONE, 42, n_targets);
    std::string worst;
    double e_grad = grad_errors(c, lc, gpu.grads, cpu.grads, &worst);
    CHECK_MESSAGE(std::fabs(gpu.loss - cpu.loss) / cpu.loss <= TOL_LOSS, "bf16 loss gpu " << gpu.loss << " cpu " << cpu.loss);
    CHECK_MESSAGE(e_grad <= TOL_GRAD, "bf16 grads: " << worst << " " << e_grad);
    MESSAGE("GPU vs CPU, bf16 weights: loss " << gpu.loss << " vs " << cpu.loss << ", worst grad " << e_grad << " [" << worst << "]");

    // NF4: the CPU reference runs on the dequantized weights (bnb-identical CPU twin)
    std::vector<float> wq = w;
    Weights<float> wv = carve_weights(c, wq.data());
    for (int t = 0; t < NUM_LORA_TARGETS; t++) {
        const int id = lora_target_weight(t);
        const int64_t n = weight_info(c, id).numel();
        for (int l = 0; l < c.n_layers; l++) {
            float* W = *wv.ptr(id) + l * n;
            std::vector<uint16_t> h(n), deq(n);
            convert_from_f32(h.data(), W, DT_BF16, n);
            Nf4Tensor q = nf4_quantize_dq_cpu(h.data(), DT_BF16, n, "test");
            nf4_dequantize_dq_cpu(deq.data(), DT_BF16, q);
            convert_to_f32(W, deq.data(), DT_BF16, n);
        }
    }
    StepResult cpu_q = cpu_step(c, lc, wq, lora, b, 42);
    StepResult gpu_q = gpu_step(c, lc, w, lora, b, QUANT_NF4, RECOMPUTE_NONE, 42, n_targets);
    e_grad = grad_errors(c, lc, gpu_q.grads, cpu_q.grads, &worst);
    CHECK_MESSAGE(std::fabs(gpu_q.loss - cpu_q.loss) / cpu_q.loss <= TOL_LOSS, "nf4 loss gpu " << gpu_q.loss << " cpu " << cpu_q.loss);
    CHECK_MESSAGE(e_grad <= TOL_GRAD, "nf4 grads: " << worst << " " << e_grad);
    CHECK(std::fabs(cpu_q.loss - cpu.loss) > 0);  // quantization did change the model
    MESSAGE("GPU vs CPU, NF4 weights: loss " << gpu_q.loss << " vs " << cpu_q.loss << ", worst grad " << e_grad << " [" << worst << "]");

    // recompute modes redo the same computations: bitwise identical; and reruns are deterministic
    StepResult light = gpu_step(c, lc, w, lora, b, QUANT_BF16, RECOMPUTE_LIGHT, 42, n_targets);
    StepResult full = gpu_step(c, lc, w, lora, b, QUANT_BF16, RECOMPUTE_FULL, 42, n_targets);
    StepResult again = gpu_step(c, lc, w, lora, b, QUANT_BF16, RECOMPUTE_NONE, 42, n_targets);
    CHECK(light.grads == gpu.grads);
    CHECK(full.grads == gpu.grads);
    CHECK(again.grads == gpu.grads);
    CHECK(again.loss == gpu.loss);
    // another dropout seed changes the gradients (the masks are live)
    StepResult other = gpu_step(c, lc, w, lora, b, QUANT_BF16, RECOMPUTE_NONE, 43, n_targets);
    CHECK(other.grads != gpu.grads);
}
