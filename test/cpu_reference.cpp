// test/cpu_reference.cpp — the CPU reference (llama2_cpu.cpp) against things no one here wrote:
// transformers + peft fixtures (every tiny_* directory under $FIXTURES_DIR), finite differences,
// and the packed-row equivalence. Run: ./test_cpu -tc="reference*"
//
// Tolerances (fp32 CPU vs fp32 PyTorch on an H200), error = max|ours - ref| / max|ref| per tensor:
//   logits, base_logits, loss: 1e-4      every LoRA gradient: 1e-3      each AdamW loss: 1e-4
#include <doctest/doctest.h>

#include <map>

#include "../hf.h"
#include "../llama2_cpu.h"
#include "test_util.h"

static const double TOL_LOGITS = 1e-4, TOL_LOSS = 1e-4, TOL_GRAD = 1e-3, TOL_ADAMW = 1e-4;

static int int_meta(const SafeTensors& st, const std::string& key) {
    auto it = st.metadata.find(key);
    REQUIRE_MESSAGE(it != st.metadata.end(), st.path << ": no metadata '" << key << "'");
    return std::stoi(it->second);
}

// One fixture directory: model.safetensors + config.json, adapter/ (peft), reference.safetensors.
static void check_fixture(const std::string& dir) {
    const std::string name = base_name(dir);
    HfCheckpoint ck(dir);
    CpuModel m;
    cpu_model_init(m, ck.config, ck.load_all_f32());
    Adapter ad = read_peft_adapter(dir + "/adapter", ck.config);
    SafeTensors ref(dir + "/reference.safetensors");
    CHECK_MESSAGE(ad.lora.rank == int_meta(ref, "r"), name << ": adapter r differs from reference metadata");
    CHECK_MESSAGE(ad.lora.alpha == (float)int_meta(ref, "lora_alpha"), name << ": adapter alpha differs from reference");
    ad.lora.dropout = 0.0f;  // the fixture's forward has no dropout
    cpu_lora_set(m, ad.lora, ad.params);

    const StTensor& tok_t = ref.get("tokens");
    REQUIRE(tok_t.shape.size() == 2);
    const int B = (int)tok_t.shape[0], T = (int)tok_t.shape[1];
    std::vector<int32_t> tokens = ref.read_i32("tokens"), labels = ref.read_i32("labels");
    CpuBatch batch = batch_from_hf_labels(tokens.data(), labels.data(), B, T);
    CpuActs acts;
    cpu_acts_init(acts, m, B, T);
    const size_t NV = (size_t)B * T * ck.config.vocab_size;
    char line[512];

    // base model (no adapter)
    CpuStepOptions base_opt;
    base_opt.use_lora = false;
    cpu_forward(m, acts, batch, base_opt);
    std::vector<float> base_logits = ref.read_f32("base_logits", {B, T, ck.config.vocab_size});
    double e_base = max_rel_err(acts.logits, base_logits.data(), NV);
    CHECK_MESSAGE(e_base <= TOL_LOGITS, name << ": tensor base_logits: rel err " << e_base);

    // with the adapter: logits and loss
    CpuStepOptions opt;
    float loss = cpu_forward(m, acts, batch, opt);
    std::vector<float> logits = ref.read_f32("logits", {B, T, ck.config.vocab_size});
    double e_logits = max_rel_err(acts.logits, logits.data(), NV);
    CHECK_MESSAGE(e_logits <= TOL_LOGITS, name << ": tensor logits: rel err " << e_logits);
    float ref_loss = ref.read_f32("loss")[0];
    double e_loss = std::fabs(loss - ref_loss) / std::fabs(ref_loss);
    CHECK_MESSAGE(e_loss <= TOL_LOSS, name << ": tensor loss: ours " << loss << " ref " << ref_loss);

    // gradients: every grad.* tensor in the reference, and every LoRA tensor must have one
    std::fill(m.lora_grads.begin(), m.lora_grads.end(), 0.0f);
    cpu_backward(m, acts, batch, opt, 1.0f / (float)acts.n_targets);
    double e_grad_max = 0;
    std::string worst;
    int n_checked = 0;
    for (int t = 0; t < NUM_LORA_TARGETS; t++) {
        if (!m.has_lora(t)) continue;
        for (int l = 0; l < ck.config.n_layers; l++)
            for (int is_b = 0; is_b < 2; is_b++) {
                const std::string gname = "grad." + lora_peft_name(t, l, is_b);
                REQUIRE_MESSAGE(ref.has(gname), name << ": reference lacks " << gname);
                const int64_t rows = is_b ? lora_out_dim(ck.config, t) : m.lora.rank;
                const int64_t cols = is_b ? m.lora.rank : lora_in_dim(ck.config, t);
                std::vector<float> g = ref.read_f32(gname, {rows, cols});
                const float* ours = m.lora_grads.data() + (is_b ? m.lora_B_off(t, l) : m.lora_A_off(t, l));
                double e = max_rel_err(ours, g.data(), g.size());
                CHECK_MESSAGE(e <= TOL_GRAD, name << ": tensor " << gname << ": rel err " << e);
                if (e > e_grad_max) e_grad_max = e, worst = gname;
                n_checked++;
            }
    }
    int n_ref_grads = 0;
    for (auto& kv : ref.tensors) n_ref_grads += kv.first.rfind("grad.", 0) == 0;
    CHECK_MESSAGE(n_checked == n_ref_grads, name << ": reference has " << n_ref_grads << " gradients, we checked " << n_checked);

    // 8 AdamW steps (lr 1e-3, betas 0.9/0.999, eps 1e-8, no weight decay); each loss is the one before its step
    std::vector<float> adamw_losses = ref.read_f32("adamw_losses");
    AdamWConfig ac;
    ac.lr = 1e-3f;
    ac.weight_decay = 0.0f;
    std::vector<float> mom(m.lora_params.size(), 0.0f), vel(m.lora_params.size(), 0.0f);
    double e_adamw = 0;
    for (size_t step = 1; step <= adamw_losses.size(); step++) {
        std::fill(m.lora_grads.begin(), m.lora_grads.end(), 0.0f);
        float l = cpu_forward(m, acts, batch, opt);
        double e = std::fabs(l - adamw_losses[step - 1]) / std::fabs(adamw_losses[step - 1]);
        CHECK_MESSAGE(e <= TOL_ADAMW, name << ": adamw_losses[" << step - 1 << "]: ours " << l << " ref " << adamw_losses[step - 1]);
        e_adamw = std::max(e_adamw, e);
        cpu_backward(m, acts, batch, opt, 1.0f / (float)acts.n_targets);
        cpu_adamw_update(m.lora_params.data(), m.lora_grads.data(), mom.data(), vel.data(), (int64_t)m.lora_params.size(),
                         (int)step, ac);
    }
    snprintf(line, sizeof(line),
             "%s: rel err base_logits %.2e logits %.2e loss %.2e grads(max over %d) %.2e [%s] adamw_losses %.2e",
             name.c_str(), e_base, e_logits, e_loss, n_checked, e_grad_max, worst.c_str(), e_adamw);
    MESSAGE(line);
}

TEST_CASE("reference: every tiny_* fixture matches transformers + peft") {
    for (const std::string& f : tiny_fixtures()) {
        CAPTURE(f);
        check_fixture(f);
    }
}

// ----------------------------------------------------------------------------------------------
// a tiny random model for the self-consistency checks

static Config tiny_config() {
    Config c = llama2_config(2, 32, 48, 4, 2, 40);  // GQA, head_dim 8
    c.max_seq_len = 64;
    return c;
}

// random model with LoRA whose B is non-zero too (PEFT's B = 0 would make every A gradient 0)
static void tiny_model(CpuModel& m, float dropout, uint64_t seed) {
    Config c = tiny_config();
    std::vector<float> w = cpu_random_weights(c, seed);
    Weights<float> wv = carve_weights(c, w.data());
    // larger weights than an LLM's 0.02, so that gradients are well above fp32 rounding
    for (int id : {W_EMBED, W_Q, W_K, W_V, W_O, W_GATE, W_UP, W_DOWN, W_LM_HEAD})
        for (int64_t i = 0; i < weight_numel(c, id); i++) (*wv.ptr(id))[i] *= 10.0f;
    cpu_model_init(m, c, w);
    LoraConfig lc{3, 6.0f, dropout, LORA_ALL_TARGETS};
    cpu_lora_init(m, lc, seed + 1);
    Rng rng(seed + 2);
    for (int t = 0; t < NUM_LORA_TARGETS; t++)
        for (int l = 0; l < c.n_layers; l++) {
            float* Bm = m.lora_params.data() + m.lora_B_off(t, l);
            for (int64_t i = 0; i < lora_out_dim(c, t) * lc.rank; i++) Bm[i] = 0.3f * rng.normal();
        }
}

// two rows: the first packs conversations of 4 and 5 tokens, the second holds one of 9
static CpuBatch tiny_batch(const Config& c, uint64_t seed) {
    CpuBatch b;
    b.B = 2;
    b.T = 9;
    Rng rng(seed);
    for (int r = 0; r < b.B; r++)
        for (int t = 0; t < b.T; t++) {
            b.tokens.push_back((int32_t)(rng.next() % c.vocab_size));
            b.pos.push_back(r == 0 ? (t < 4 ? t : t - 4) : t);
            bool last_of_conv = (r == 0 && (t == 3 || t == 8)) || (r == 1 && t == 8);
            b.targets.push_back(last_of_conv || rng.uniform() < 0.2f ? -1 : (int32_t)(rng.next() % c.vocab_size));
        }
    return b;
}

TEST_CASE("reference: LoRA gradients match finite differences (GQA, packed row, dropout)") {
    CpuModel m;
    tiny_model(m, 0.2f, 7);
    CpuBatch b = tiny_batch(m.cfg, 11);
    CpuActs a;
    cpu_acts_init(a, m, b.B, b.T);
    CpuStepOptions opt;
    opt.training = true;  // dropout on: the masks are a pure function of the seed, so the loss is too
    opt.dropout_seed = 1234;
    cpu_forward(m, a, b, opt);
    const int64_t n_targets = a.n_targets;
    REQUIRE(n_targets > 0);
    std::fill(m.lora_grads.begin(), m.lora_grads.end(), 0.0f);
    cpu_backward(m, a, b, opt, 1.0f / (float)n_targets);
    auto loss_at = [&]() {
        cpu_forward(m, a, b, opt);
        return a.loss_sum / (double)a.n_targets;
    };
    Rng rng(99);
    double worst = 0;
    int n_checked = 0;
    for (int t = 0; t < NUM_LORA_TARGETS; t++)
        for (int l = 0; l < m.cfg.n_layers; l++)
            for (int is_b = 0; is_b < 2; is_b++) {
                const int64_t off = is_b ? m.lora_B_off(t, l) : m.lora_A_off(t, l);
                const int64_t n = m.lora.rank * (is_b ? lora_out_dim(m.cfg, t) : lora_in_dim(m.cfg, t));
                for (int k = 0; k < 3; k++) {
                    const int64_t i = off + (int64_t)(rng.next() % (uint64_t)n);
                    const float saved = m.lora_params[i], h = 1e-2f;
                    m.lora_params[i] = saved + h;
                    double lp = loss_at();
                    m.lora_params[i] = saved - h;
                    double lm = loss_at();
                    m.lora_params[i] = saved;
                    const double fd = (lp - lm) / (2.0 * h), an = m.lora_grads[i];
                    // central differences: O(h^2) truncation plus fp32 rounding of the loss / h
                    const double err = std::fabs(fd - an) / (std::fabs(an) + 1e-3);
                    CHECK_MESSAGE(err < 2e-2, lora_target_name(t) << " layer " << l << (is_b ? " B" : " A") << " index "
                                                                  << i - off << ": analytic " << an << " numeric " << fd);
                    worst = std::max(worst, err);
                    n_checked++;
                }
            }
    MESSAGE("finite differences: " << n_checked << " entries, worst relative error " << worst);
}

TEST_CASE("reference: packed rows give the same loss and gradients as one conversation per row") {
    CpuModel m;
    tiny_model(m, 0.0f, 21);
    // a small in-memory dataset of four conversations with loss masks on their "answers"
    Dataset d;
    memset(&d.header, 0, sizeof(d.header));
    d.header.bos_id = 1;
    d.header.eos_id = 2;
    d.header.vocab_size = m.cfg.vocab_size;
    Rng rng(5);
    d.conv_offsets.push_back(0);
    for (int len : {5, 7, 4, 6}) {
        for (int j = 0; j < len; j++) {
            d.tokens.push_back(j == 0 ? 1 : 3 + (int32_t)(rng.next() % (m.cfg.vocab_size - 3)));
            d.loss_mask.push_back(j >= len / 2);
        }
        d.conv_offsets.push_back((int64_t)d.tokens.size());
    }
    d.header.n_conversations = 4;
    d.header.n_tokens = (int64_t)d.tokens.size();

    auto run = [&](const std::vector<std::vector<int64_t>>& rows, std::vector<float>& grads) {
        CpuBatch b = batch_from_conversations(d, rows);
        CpuActs a;
        cpu_acts_init(a, m, b.B, b.T);
        CpuStepOptions opt;
        cpu_forward(m, a, b, opt);
        std::fill(m.lora_grads.begin(), m.lora_grads.end(), 0.0f);
        cpu_backward(m, a, b, opt, 1.0f / 12.0f);  // the same scale for both layouts
        grads = m.lora_grads;
        return std::make_pair(a.loss_sum, a.n_targets);
    };
    std::vector<float> g_packed, g_single;
    auto packed = run({{0, 1}, {2, 3}}, g_packed);
    auto single = run({{0}, {1}, {2}, {3}}, g_single);
    // each conversation of length n has its answer in the second half: targets = tokens whose next is masked
    CHECK(packed.second == single.second);
    CHECK(packed.second > 0);
    CHECK(std::fabs(packed.first - single.first) <= 1e-5 * std::fabs(single.first));
    double e = max_rel_err(g_packed.data(), g_single.data(), g_single.size());
    CHECK_MESSAGE(e <= 1e-5, "packed vs single gradients: rel err " << e);
    // and packing must matter to the code: a row where positions do NOT restart gives another loss
    CpuBatch leaky = batch_from_conversations(d, {{0, 1}, {2, 3}});
    for (int t = 0; t < leaky.T; t++) leaky.pos[t] = t;  // row 0 as one long sequence
    CpuActs a;
    cpu_acts_init(a, m, leaky.B, leaky.T);
    cpu_forward(m, a, leaky, CpuStepOptions{});
    CHECK(std::fabs(a.loss_sum - packed.first) > 1e-3);
}

TEST_CASE("reference: batch_from_conversations targets, positions and padding") {
    Dataset d;
    memset(&d.header, 0, sizeof(d.header));
    d.header.eos_id = 2;
    d.tokens = {1, 10, 11, 12, 2, 1, 20, 21, 2};
    d.loss_mask = {0, 0, 1, 1, 1, 0, 0, 1, 1};
    d.conv_offsets = {0, 5, 9};
    CpuBatch b = batch_from_conversations(d, {{0, 1}, {1}});
    REQUIRE(b.B == 2);
    REQUIRE(b.T == 9);
    CHECK(b.tokens == std::vector<int32_t>({1, 10, 11, 12, 2, 1, 20, 21, 2, 1, 20, 21, 2, 2, 2, 2, 2, 2}));
    CHECK(b.pos == std::vector<int32_t>({0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 8}));
    // position j predicts token j+1 when that token is in the loss mask and in the same conversation
    CHECK(b.targets == std::vector<int32_t>({-1, 11, 12, 2, -1, -1, 21, 2, -1, -1, 21, 2, -1, -1, -1, -1, -1, -1}));
}

TEST_CASE("reference: AdamW and clipping follow torch's formulas") {
    // two scalars over three steps against the formulas evaluated in double
    float p[2] = {0.5f, -1.0f}, m[2] = {0, 0}, v[2] = {0, 0};
    double pd[2] = {0.5, -1.0}, md[2] = {0, 0}, vd[2] = {0, 0};
    AdamWConfig ac;
    ac.lr = 0.1f;
    ac.weight_decay = 0.01f;
    const float grads[3][2] = {{0.3f, -0.2f}, {-0.1f, 0.4f}, {0.05f, 0.05f}};
    for (int step = 1; step <= 3; step++) {
        cpu_adamw_update(p, grads[step - 1], m, v, 2, step, ac);
        for (int i = 0; i < 2; i++) {
            double g = grads[step - 1][i];
            pd[i] *= 1.0 - 0.1 * 0.01;
            md[i] = 0.9 * md[i] + 0.1 * g;
            vd[i] = 0.999 * vd[i] + 0.001 * g * g;
            double mhat = md[i] / (1 - std::pow(0.9, step)), vhat = vd[i] / (1 - std::pow(0.999, step));
            pd[i] -= 0.1 * mhat / (std::sqrt(vhat) + 1e-8);
            CHECK(p[i] == doctest::Approx(pd[i]).epsilon(1e-5));
        }
    }
    float g[3] = {3.0f, 4.0f, 0.0f};  // norm 5
    CHECK(cpu_clip_grad_norm(g, 3, 1.0f) == doctest::Approx(5.0f));
    CHECK(cpu_grad_norm(g, 3) == doctest::Approx(1.0f).epsilon(1e-5));
    float h[2] = {0.3f, 0.4f};  // norm 0.5 < 1: untouched
    CHECK(cpu_clip_grad_norm(h, 2, 1.0f) == doctest::Approx(0.5f));
    CHECK(h[0] == 0.3f);
}

TEST_CASE("reference: LoRA dropout keeps about 1-p of the inputs, and B = 0 leaves the base model") {
    int kept = 0;
    const int n = 100000;
    for (int i = 0; i < n; i++) kept += dropout_keep(42, 3, (uint64_t)i, 0.1f);
    CHECK(std::fabs(kept / (double)n - 0.9) < 0.005);
    // PEFT's initialisation: the adapted model equals the base model
    CpuModel m;
    Config c = tiny_config();
    cpu_model_init(m, c, cpu_random_weights(c, 3));
    cpu_lora_init(m, LoraConfig{4, 8.0f, 0.0f, LORA_ALL_TARGETS}, 4);
    CpuBatch b = tiny_batch(c, 8);
    CpuActs a;
    cpu_acts_init(a, m, b.B, b.T);
    CpuStepOptions with, without;
    without.use_lora = false;
    float l1 = cpu_forward(m, a, b, with), l0 = cpu_forward(m, a, b, without);
    CHECK(l1 == l0);
}
