// train.cpp — ./train: LoRA / QLoRA fine-tuning of Llama 2 on pre-tokenized conversations.
//
//   ./train                                          # built-in demo: tiny random Llama, data/demo.jsonl, ~1 min
//   ./train -i lima.bin -v lima_val.bin -m llama2-7b.bin            # QLoRA (NF4 base), QLoRA's 7B recipe
//   ./train -i lima.bin -m llama2-7b.bin --quant bf16 -o out_lora/  # plain LoRA on a bf16 base
//   ./train ... --resume                             # continue from -o's state.bin, bitwise identical
//   ./train --help
//
// The loop: each optimizer step takes the next --batch conversations of the epoch's seeded shuffle,
// packs them into micro-batches of at most --micro-tokens tokens (whole conversations, no padding;
// attention never crosses a conversation, RoPE positions restart), runs forward + backward on each,
// then clips the global gradient norm and takes an AdamW step. The step's loss is the mean over
// every answer token of the step, whichever micro-batch it fell in: each micro-batch's gradient is
// scaled by 1 / (answer tokens in the whole step), so the result equals one big batch and does not
// depend on how conversations were packed (transformers' Trainer does the same since 4.46 with
// num_items_in_batch; averaging per micro-batch would over-weight short micro-batches).
//
// Everything a step computes is a function of (settings, step): the data order comes from
// (seed, epoch), the dropout masks from (seed, step, micro-batch), and the kernels are deterministic
// (no atomics). So --resume from state.bin reproduces an uninterrupted run bit for bit.
//
// Outputs in -o (default out/): adapter.bin (fp16), adapter/ (PEFT), state.bin, log.csv,
// loss_curve.png (when gnuplot is installed). Written atomically; Ctrl-C saves and exits.
#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli.h"
#include "hf.h"
#include "llama2_cpu.h"
#include "model.h"
#include "quant.h"
#include "sampling.h"
#include "train_util.h"
#ifdef USE_CUDA
#include "llama2_gpu.h"
#endif

static const char* PROG = "train";
static volatile sig_atomic_t g_interrupted = 0;  // set by SIGINT; the loop checks it between steps
static void on_sigint(int) { g_interrupted = 1; }

// ----------------------------------------------------------------------------------------------
// backends: the same loop drives the CPU reference and the GPU

struct Backend {
    virtual ~Backend() {}
    virtual const char* name() const = 0;
    // optimizer state in (params, AdamW moments), LoraLayout order
    virtual void set_state(const std::vector<float>& params, const std::vector<float>& m, const std::vector<float>& v) = 0;
    virtual void get_state(std::vector<float>& params, std::vector<float>& m, std::vector<float>& v) = 0;
    virtual void zero_grads() = 0;
    // forward + backward of one packed row; gradients accumulate; loss_scale = 1 / targets in the step
    virtual void micro_step(const CpuBatch& b, float loss_scale, uint64_t dropout_seed) = 0;
    // sum of per-position cross-entropy of one row, no dropout, no gradients
    virtual double eval_row(const CpuBatch& b) = 0;
    // clip + AdamW at 0-based step k with learning rate lr; returns the step's summed CE and the
    // gradient norm before clipping (a NaN/Inf norm leaves the weights untouched)
    virtual void optimizer_step(int64_t k, float lr, const TrainSettings& s, double* loss_sum, float* grad_norm) = 0;
    virtual double memory_gib() = 0;  // device memory in use (NaN on the CPU)
    virtual double peak_flops() = 0;  // the card's bf16 peak (0: unknown, no MFU)
};

struct CpuBackend : Backend {
    CpuModel model;
    std::vector<float> mom, vel;
    double step_loss = 0;
    const char* name() const override { return "cpu (fp32 reference)"; }
    void set_state(const std::vector<float>& p, const std::vector<float>& m, const std::vector<float>& v) override {
        cpu_lora_set(model, model.lora, p);
        mom = m;
        vel = v;
    }
    void get_state(std::vector<float>& p, std::vector<float>& m, std::vector<float>& v) override {
        p = model.lora_params;
        m = mom;
        v = vel;
    }
    void zero_grads() override {
        std::fill(model.lora_grads.begin(), model.lora_grads.end(), 0.0f);
        step_loss = 0;
    }
    void micro_step(const CpuBatch& b, float loss_scale, uint64_t dropout_seed) override {
        CpuActs a;
        cpu_acts_init(a, model, b.B, b.T);
        CpuStepOptions opt;
        opt.training = true;
        opt.dropout_seed = dropout_seed;
        cpu_forward(model, a, b, opt);
        cpu_backward(model, a, b, opt, loss_scale);
        step_loss += a.loss_sum;
    }
    double eval_row(const CpuBatch& b) override {
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
    double memory_gib() override { return NAN; }
    double peak_flops() override { return 0.0; }
};

#ifdef USE_CUDA
struct GpuBackend : Backend {
    GpuModel model;
    ~GpuBackend() override { gpu_model_free(model); }
    const char* name() const override { return "cuda"; }
    void set_state(const std::vector<float>& p, const std::vector<float>& m, const std::vector<float>& v) override {
        gpu_lora_state_set(model, p, m, v);
    }
    void get_state(std::vector<float>& p, std::vector<float>& m, std::vector<float>& v) override {
        gpu_lora_state_get(model, p, m, v);
    }
    void zero_grads() override { gpu_zero_grads(model); }
    void micro_step(const CpuBatch& b, float loss_scale, uint64_t dropout_seed) override {
        gpu_set_batch(model, b.B, b.T, b.tokens.data(), b.targets.data(), b.pos.data());
        GpuStepOptions opt;
        opt.training = true;
        opt.dropout_seed = dropout_seed;
        opt.loss_scale = loss_scale;
        gpu_forward(model, opt);
        gpu_backward(model, opt);
    }
    double eval_row(const CpuBatch& b) override {
        gpu_set_batch(model, b.B, b.T, b.tokens.data(), b.targets.data(), b.pos.data());
        gpu_forward(model, GpuStepOptions{});
        return gpu_read_loss_sum(model);
    }
    void optimizer_step(int64_t k, float lr, const TrainSettings& s, double* loss_sum, float* grad_norm) override {
        gpu_optimizer_step(model, lr, s.beta1, s.beta2, s.eps, s.weight_decay, s.clip, (int)(k + 1));
        *loss_sum = gpu_read_step_loss(model);  // the step's only synchronisation
        *grad_norm = gpu_read_grad_norm(model);
    }
    double memory_gib() override { return gpu_memory_in_use_gib(); }
    double peak_flops() override { return gpu_peak_bf16_flops(); }
};
#endif

// ----------------------------------------------------------------------------------------------
// the built-in demo: a tiny random Llama and a few dozen conversations, byte-level tokens

static Config demo_config() {
    Config c;
    memset(&c, 0, sizeof(c));
    c.dim = 128;
    c.hidden_dim = 344;
    c.n_layers = 2;
    c.n_heads = 1;  // head_dim 128 as every Llama 2 (the GPU attention kernels are built for it)
    c.n_kv_heads = 1;
    c.head_dim = 128;
    c.vocab_size = ByteTokenizer::VOCAB;
    c.max_seq_len = 512;
    c.bos_id = ByteTokenizer::BOS;
    c.eos_id = ByteTokenizer::EOS;
    c.rope_theta = 10000.0f;
    c.norm_eps = 1e-5f;
    return c;
}

// data/demo.jsonl (LIMA's format) with the Llama 2 chat template over byte tokens; every
// `val_every`-th conversation goes to the held-out set.
static void demo_datasets(const std::string& path, int val_every, Dataset& train, Dataset& val) {
    std::istringstream in(read_text_file(path));
    std::string line;
    Dataset* sets[2] = {&train, &val};
    for (Dataset* d : sets) {
        memset(&d->header, 0, sizeof(d->header));
        d->conv_offsets = {0};
    }
    int lineno = 0, n = 0;
    while (std::getline(in, line)) {
        lineno++;
        if (line.empty()) continue;
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(line);
        } catch (const std::exception&) {
            fail("%s:%d: not JSON", path.c_str(), lineno);
        }
        if (!j.is_object() || !j.contains("conversations") || !j["conversations"].is_array() ||
            j["conversations"].size() % 2 != 0 || j["conversations"].empty())
            fail("%s:%d: expected {\"conversations\": [user, assistant, ...]}", path.c_str(), lineno);
        Dataset& d = *sets[(++n % val_every) == 0];
        for (size_t k = 0; k < j["conversations"].size(); k += 2) {
            std::vector<int32_t> prompt = ByteTokenizer::encode("[INST] " + j["conversations"][k].get<std::string>() + " [/INST]");
            std::vector<int32_t> answer = ByteTokenizer::encode(" " + j["conversations"][k + 1].get<std::string>());
            d.tokens.push_back(ByteTokenizer::BOS);
            d.loss_mask.push_back(0);
            for (int32_t t : prompt) d.tokens.push_back(t), d.loss_mask.push_back(0);
            for (int32_t t : answer) d.tokens.push_back(t), d.loss_mask.push_back(1);
            d.tokens.push_back(ByteTokenizer::EOS);
            d.loss_mask.push_back(1);
            d.header.n_turns++;
        }
        d.conv_offsets.push_back((int64_t)d.tokens.size());
    }
    for (Dataset* d : sets) {
        DataHeader& h = d->header;
        h.magic = DATA_MAGIC;
        h.version = DATA_VERSION;
        h.n_tokens = (int64_t)d->tokens.size();
        h.n_conversations = (int64_t)d->conv_offsets.size() - 1;
        for (uint8_t mk : d->loss_mask) h.n_loss_tokens += mk;
        h.vocab_size = ByteTokenizer::VOCAB;
        h.bos_id = ByteTokenizer::BOS;
        h.eos_id = ByteTokenizer::EOS;
        h.max_len = 512;
    }
    if (train.header.n_conversations == 0) fail("%s: no conversations", path.c_str());
}

// Writes a model file of fp32 weights stored as bf16 (the demo's base model, for ./sample).
static void write_model_bf16(const std::string& path, const Config& c, const std::vector<float>& w) {
    const ModelHeader h = make_model_header(c, DT_BF16);
    std::vector<uint16_t> half(w.size());
    convert_from_f32(half.data(), w.data(), DT_BF16, w.size());
    AtomicFile out(path);
    out.write(&h, sizeof(h));
    out.write(half.data(), half.size() * 2);
    out.commit();
}

// ----------------------------------------------------------------------------------------------
// command line

struct Args {
    std::string data, val, model, out, quant = "nf4", rank = "64", alpha = "16", dropout = "0.1",
        targets = "q,k,v,o,gate,up,down", lr = "2e-4", schedule = "constant", warmup = "0.03", wd = "0", clip = "0.3",
        batch = "16", micro_tokens = "4096", epochs = "3", steps = "0", eval_every = "50", save_every = "100",
        seed = "1234", resume, recompute = "none", device = "auto", stop_at = "0";
};

static Cli make_cli(Args& a) {
    return Cli{
        "train",
        "./train [-i lima.bin -m llama2-7b.bin] [options]      (no -i/-m: the built-in demo)",
        "Fine-tune Llama 2 with LoRA on a frozen NF4 (QLoRA) or bf16 base. Defaults: QLoRA's 7B recipe.",
        {
            {"-i", "--data", "FILE", "training data from ./prepare_lima", &a.data},
            {"-v", "--val", "FILE", "held-out data for eval loss / perplexity (optional)", &a.val},
            {"-m", "--model", "FILE", "base model from ./export_hf, or random:7b|13b|70b (random weights, for benchmarks)", &a.model},
            {"-o", "--out", "DIR", "output directory (default out/, the demo: out/demo/)", &a.out},
            {nullptr, "--quant", "nf4|bf16", "frozen base weights: nf4 = QLoRA, bf16 = plain LoRA (default nf4)", &a.quant},
            {"-r", "--rank", "N", "LoRA rank r (default 64)", &a.rank},
            {nullptr, "--alpha", "X", "LoRA alpha; the delta is scaled by alpha/r (default 16)", &a.alpha},
            {nullptr, "--dropout", "P", "dropout on the LoRA input (default 0.1)", &a.dropout},
            {nullptr, "--targets", "LIST", "linears with LoRA (default q,k,v,o,gate,up,down)", &a.targets},
            {nullptr, "--lr", "X", "peak learning rate (default 2e-4)", &a.lr},
            {nullptr, "--schedule", "NAME", "constant|cosine|linear after warm-up (default constant)", &a.schedule},
            {nullptr, "--warmup", "F", "fraction of the steps warming up linearly from 0 (default 0.03)", &a.warmup},
            {nullptr, "--wd", "X", "AdamW decoupled weight decay (default 0)", &a.wd},
            {nullptr, "--clip", "X", "max global gradient norm, 0 = off (default 0.3)", &a.clip},
            {nullptr, "--batch", "N", "conversations per optimizer step (default 16)", &a.batch},
            {nullptr, "--micro-tokens", "N", "tokens per micro-batch, conversations packed (default 4096)", &a.micro_tokens},
            {nullptr, "--epochs", "N", "passes over the data (default 3)", &a.epochs},
            {nullptr, "--steps", "N", "optimizer steps; overrides --epochs (default 0 = use epochs)", &a.steps},
            {nullptr, "--eval-every", "N", "eval every N steps and at the end, 0 = only at the end (default 50)", &a.eval_every},
            {nullptr, "--save-every", "N", "checkpoint every N steps and at the end, 0 = only at the end (default 100)", &a.save_every},
            {nullptr, "--seed", "N", "data order, LoRA init and dropout (default 1234)", &a.seed},
            {nullptr, "--resume", nullptr, "continue the run in -o from its state.bin", &a.resume},
            {nullptr, "--stop-at", "N", "save and stop after step N (a run in parts; continue with --resume)", &a.stop_at},
            {nullptr, "--recompute", "MODE", "none|light|full: activation memory vs compute (GPU; default none)", &a.recompute},
            {nullptr, "--device", "NAME", "cuda|cpu (default: cuda when a GPU is usable, else cpu)", &a.device},
        }};
}

static TrainSettings settings_from(const Args& a) {
    TrainSettings s;
    s.rank = (int32_t)cli_int(PROG, "--rank", a.rank, 1, 4096);
    s.alpha = (float)cli_float(PROG, "--alpha", a.alpha, 1e-6, 1e6);
    s.dropout = (float)cli_float(PROG, "--dropout", a.dropout, 0.0, 0.95);
    try {
        s.targets = parse_lora_targets(a.targets);
    } catch (const InputError& e) {
        cli_usage_error(PROG, e.what());
    }
    s.lr = (float)cli_float(PROG, "--lr", a.lr, 0.0, 1.0);
    std::string sched = cli_choice(PROG, "--schedule", a.schedule, {"constant", "cosine", "linear"});
    s.schedule = sched == "constant" ? SCHEDULE_CONSTANT : sched == "cosine" ? SCHEDULE_COSINE : SCHEDULE_LINEAR;
    s.warmup = (float)cli_float(PROG, "--warmup", a.warmup, 0.0, 1.0);
    s.weight_decay = (float)cli_float(PROG, "--wd", a.wd, 0.0, 1.0);
    s.clip = (float)cli_float(PROG, "--clip", a.clip, 0.0, 1e9);
    s.batch = (int32_t)cli_int(PROG, "--batch", a.batch, 1, 1 << 20);
    s.micro_tokens = (int32_t)cli_int(PROG, "--micro-tokens", a.micro_tokens, 16, 1 << 22);
    s.epochs = (int32_t)cli_int(PROG, "--epochs", a.epochs, 1, 100000);
    s.steps = (int32_t)cli_int(PROG, "--steps", a.steps, 0, 1 << 30);
    s.quant = cli_choice(PROG, "--quant", a.quant, {"nf4", "bf16"}) == "nf4" ? 1 : 0;
    s.seed = (uint64_t)cli_int(PROG, "--seed", a.seed, 0, INT64_MAX);
    return s;
}

// ----------------------------------------------------------------------------------------------
// the run

static std::string fmt_duration(double s) {
    char b[32];
    if (s < 60) snprintf(b, sizeof(b), "%.0fs", s);
    else if (s < 3600) snprintf(b, sizeof(b), "%dm%02ds", (int)s / 60, (int)s % 60);
    else snprintf(b, sizeof(b), "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
    return b;
}

// mkdir -p
static void make_dirs(const std::string& path) {
    for (size_t i = 1; i <= path.size(); i++) {
        if (i < path.size() && path[i] != '/') continue;
        const std::string part = path.substr(0, i);
        if (mkdir(part.c_str(), 0755) != 0 && errno != EEXIST) fail("%s: cannot create directory (%s)", part.c_str(), strerror(errno));
    }
}

static bool file_exists(const std::string& p) {
    struct stat st;
    return stat(p.c_str(), &st) == 0;
}

// mean cross-entropy over the held-out conversations (packed as in training)
static double evaluate(Backend& be, const Dataset& val, int64_t budget) {
    std::vector<int64_t> all((size_t)val.header.n_conversations);
    for (size_t i = 0; i < all.size(); i++) all[i] = (int64_t)i;
    double sum = 0;
    for (const auto& row : pack_rows(val, all, budget)) sum += be.eval_row(batch_from_conversations(val, {row}));
    const int64_t n = count_targets(val, all);
    return n ? sum / (double)n : NAN;
}

static int run(int argc, char** argv) {
    Args a;
    Cli cli = make_cli(a);
    if (!cli_parse(cli, argc, argv)) return 0;
    const bool demo = a.data.empty() && a.model.empty();
    const bool random_model = a.model.rfind("random:", 0) == 0;  // a preset with random weights, made on the device
    if (!demo && (a.data.empty() || a.model.empty())) cli_usage_error(PROG, "-i DATA and -m MODEL go together (neither: the demo)");
    if (demo) {  // the demo's own recipe, unless flags say otherwise
        Args d;
        auto dflt = [&](std::string& v, const std::string& def, const char* demo_value) { if (v == def) v = demo_value; };
        dflt(a.rank, d.rank, "16");
        dflt(a.alpha, d.alpha, "32");
        dflt(a.dropout, d.dropout, "0.05");
        dflt(a.lr, d.lr, "3e-3");
        dflt(a.batch, d.batch, "8");
        dflt(a.micro_tokens, d.micro_tokens, "1024");
        dflt(a.epochs, d.epochs, "12");
        dflt(a.eval_every, d.eval_every, "10");
        dflt(a.save_every, d.save_every, "0");
        dflt(a.quant, d.quant, "bf16");
        if (a.out.empty()) a.out = "out/demo";
    }
    if (a.out.empty()) a.out = "out";
    TrainSettings s = settings_from(a);
    const int64_t eval_every = cli_int(PROG, "--eval-every", a.eval_every, 0, 1 << 30);
    const int64_t save_every = cli_int(PROG, "--save-every", a.save_every, 0, 1 << 30);
    const std::string recompute = cli_choice(PROG, "--recompute", a.recompute, {"none", "light", "full"});
    std::string device = cli_choice(PROG, "--device", a.device, {"auto", "cuda", "cpu"});
    const bool resume = !a.resume.empty();
    const int64_t stop_at = cli_int(PROG, "--stop-at", a.stop_at, 0, 1 << 30);

#ifdef USE_CUDA
    std::string why;
    const bool have_gpu = gpu_available(&why);
#else
    const std::string why = "this build has no CUDA (make NO_CUDA=1)";
    const bool have_gpu = false;
#endif
    if (device == "auto") {
        device = have_gpu ? "cuda" : "cpu";
        if (!have_gpu) fprintf(stderr, "train: no usable GPU (%s): running on the CPU reference (slow; --device cpu)\n", why.c_str());
    } else if (device == "cuda" && !have_gpu) {
        fail("--device cuda: no usable GPU (%s); use --device cpu", why.c_str());
    }

    // data and model
    Dataset train, val;
    Config cfg;
    std::vector<float> cpu_weights;  // the CPU backend's base weights, and the demo's
    std::string model_name = a.model;
    uint8_t tokenizer_sha[32] = {};
    bool file_is_nf4 = false;  // the model file holds pre-quantized NF4 linears (export_hf --dtype nf4)
    if (demo) {
        demo_datasets("data/demo.jsonl", 6, train, val);
        cfg = demo_config();
        cpu_weights = cpu_random_weights(cfg, s.seed);
        // 3x the usual init (matrices std 0.06, norm gains ~3): at 0.02 a random 2-layer, 128-wide
        // model passes almost no signal from the input to the logits and LoRA has little to steer
        for (float& x : cpu_weights) x *= 3.0f;
        model_name = a.out + "/model.bin";
    } else {
        train = read_dataset(a.data);
        if (!a.val.empty()) val = read_dataset(a.val);
        ModelHeader mh;
        memset(&mh, 0, sizeof(mh));
        if (random_model) {
            mh.config = llama2_preset(a.model.substr(7));
        } else {
            InFile mf(a.model);
            mh = read_model_header(mf);
        }
        cfg = mh.config;
        file_is_nf4 = mh.linear_format == LINEAR_NF4;
        if (file_is_nf4 && s.quant == 0)
            fail("%s: linear weights are pre-quantized to NF4; train with --quant nf4 or export with --dtype bf16", a.model.c_str());
        check_data_matches_model(train.header, a.data.c_str(), mh, a.model.c_str());
        if (!a.val.empty()) check_data_matches_model(val.header, a.val.c_str(), mh, a.model.c_str());
        memcpy(tokenizer_sha, train.header.tokenizer_sha256, 32);
    }
    int64_t longest = 0;
    for (const Dataset* d : {&train, &val})
        for (int64_t i = 0; i < d->header.n_conversations; i++) longest = std::max(longest, d->conv_len(i));
    if (longest > cfg.max_seq_len)
        fprintf(stderr, "train: note: conversations of up to %lld tokens exceed the model's max_position_embeddings %d\n",
                (long long)longest, cfg.max_seq_len);
    // GPU activations are sized once: a micro-batch, or a longer conversation alone in its row
    const int64_t capacity = std::max<int64_t>(s.micro_tokens, longest);
    (void)capacity;  // unused when built without CUDA
    const LoraConfig lora{s.rank, s.alpha, s.dropout, s.targets};
    const DataPlan plan = plan_data(s, train.header.n_conversations);

    make_dirs(a.out);
    const std::string state_path = a.out + "/state.bin", log_path = a.out + "/log.csv";
    const std::string adapter_path = a.out + "/adapter.bin", peft_dir = a.out + "/adapter";
    if (demo && !resume) write_model_bf16(model_name, cfg, cpu_weights);

    // backend
    std::unique_ptr<Backend> be;
    if (device == "cpu") {
        auto cb = std::make_unique<CpuBackend>();
        if (random_model) cpu_weights = cpu_random_weights(cfg, s.seed);
        else if (!demo) load_model_f32(a.model, cpu_weights);
        if (s.quant == 1 && !file_is_nf4) {  // QLoRA on the CPU: the linears as NF4 gives them back (bf16)
            Weights<float> w = carve_weights(cfg, cpu_weights.data());
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
        cpu_model_init(cb->model, cfg, std::move(cpu_weights));
        cpu_lora_init(cb->model, lora, s.seed);
        cb->mom.assign(cb->model.lora_params.size(), 0.0f);
        cb->vel.assign(cb->model.lora_params.size(), 0.0f);
        be = std::move(cb);
    } else {
#ifdef USE_CUDA
        auto gb = std::make_unique<GpuBackend>();
        const int rc = recompute == "full" ? RECOMPUTE_FULL : recompute == "light" ? RECOMPUTE_LIGHT : RECOMPUTE_NONE;
        gpu_model_init(gb->model, cfg, lora, s.quant == 1 ? QUANT_NF4 : QUANT_BF16, rc, capacity);
        if (demo) gpu_model_set_weights(gb->model, cpu_weights);
        else if (random_model) gpu_model_random_weights(gb->model, s.seed);
        else gpu_model_load_file(gb->model, a.model);
        CpuModel init;  // PEFT's initialisation, drawn on the host so CPU and GPU runs start equal
        init.cfg = cfg;
        cpu_lora_init(init, lora, s.seed);
        gpu_lora_set(gb->model, init.lora_params);
        be = std::move(gb);
#endif
    }

    // resume
    int64_t start = 0;
    std::vector<LogRow> log;
    if (resume) {
        TrainState st = read_state(state_path);
        check_state_matches(st.header, state_path.c_str(), cfg, lora, s, train);
        be->set_state(st.params, st.m, st.v);
        start = st.header.step;
        if (file_exists(log_path))
            for (const LogRow& r : read_log(log_path))
                if (r.step <= start) log.push_back(r);
        fprintf(stderr, "train: resuming %s at step %lld/%lld\n", state_path.c_str(), (long long)start, (long long)plan.total_steps);
    }

    auto save = [&](int64_t step) {
        TrainState st;
        st.header = StateHeader{};
        StateHeader& h = st.header;
        h.magic = STATE_MAGIC;
        h.version = STATE_VERSION;
        h.base = cfg;
        h.lora = lora;
        h.settings = s;
        h.step = step;
        h.total_steps = plan.total_steps;
        h.n_conversations = train.header.n_conversations;
        h.n_tokens = train.header.n_tokens;
        h.data_hash = dataset_hash(train);
        be->get_state(st.params, st.m, st.v);
        Adapter ad;
        ad.base = cfg;
        ad.lora = lora;
        memcpy(ad.tokenizer_sha256, tokenizer_sha, 32);
        ad.params = st.params;
        write_adapter(adapter_path, ad);
        // the PEFT copy holds exactly adapter.bin's fp16 values, so both load the same model
        for (float& x : ad.params) x = f16_to_f32(f32_to_f16(x));
        write_peft_adapter(peft_dir, ad, DT_F16, model_name);
        write_state(state_path, st);
    };

    printf("train: %s | %s | %s base | LoRA r=%d alpha=%g dropout=%g on %s | %lld conversations (%lld tokens), "
           "%lld steps of %d, micro-batches <= %d tokens | lr %g %s, warm-up %g | out %s\n",
           be->name(), demo ? "built-in demo" : a.model.c_str(), s.quant ? "NF4" : "bf16", s.rank, s.alpha, s.dropout,
           lora_targets_string(s.targets).c_str(), (long long)train.header.n_conversations, (long long)train.header.n_tokens,
           (long long)plan.total_steps, s.batch, s.micro_tokens, s.lr, schedule_name(s.schedule), s.warmup, a.out.c_str());
    fflush(stdout);
    signal(SIGINT, on_sigint);

    const auto t_run = std::chrono::steady_clock::now();
    int64_t tokens_done = 0;
    int64_t step = start;
    for (; step < plan.total_steps; step++) {
        const auto t0 = std::chrono::steady_clock::now();
        const std::vector<int64_t> convs = step_conversations(s, plan, step);
        const int64_t n_targets = count_targets(train, convs);
        const float scale = n_targets ? 1.0f / (float)n_targets : 0.0f;
        int64_t step_tokens = 0;
        double pairs = 0;
        be->zero_grads();
        const auto rows = pack_rows(train, convs, s.micro_tokens);
        for (size_t i = 0; i < rows.size(); i++) {
            for (int64_t c : rows[i]) {
                const double len = (double)train.conv_len(c);
                step_tokens += (int64_t)len;
                pairs += len * (len + 1) / 2;
            }
            // the dropout masks of (step, micro-batch): fixed by the seed, so a resume redraws them
            const uint64_t dseed = splitmix64(s.seed ^ splitmix64(((uint64_t)step << 20) + i));
            be->micro_step(batch_from_conversations(train, {rows[i]}), scale, dseed);
        }
        const float lr = lr_at(s, step, plan.total_steps);
        double loss_sum = 0;
        float grad_norm = 0;
        be->optimizer_step(step, lr, s, &loss_sum, &grad_norm);
        const double loss = n_targets ? loss_sum / (double)n_targets : 0.0;
        if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
            const bool bad_loss = !std::isfinite(loss);
            const double bad = bad_loss ? loss : (double)grad_norm;
            fprintf(stderr, "train: step %lld: %s is %s; stopping. The last good checkpoint is %s (step %lld)\n",
                    (long long)step + 1, bad_loss ? "the loss" : "the gradient norm", std::isnan(bad) ? "NaN" : "Inf",
                    state_path.c_str(), (long long)(file_exists(state_path) ? read_state(state_path).header.step : 0));
            return 1;
        }
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        tokens_done += step_tokens;
        const bool last = step + 1 == plan.total_steps;
        double val_loss = NAN;
        if (val.header.n_conversations > 0 && (last || (eval_every > 0 && (step + 1) % eval_every == 0)))
            val_loss = evaluate(*be, val, s.micro_tokens);
        const double flops = training_flops(cfg, lora, (double)step_tokens, pairs);
        const double peak = be->peak_flops();
        LogRow row{step + 1, (double)(step + 1) / (double)plan.steps_per_epoch, loss, val_loss, lr, grad_norm,
                   step_tokens / dt, peak > 0 ? flops / dt / peak : NAN, be->memory_gib()};
        log.push_back(row);
        write_log(log_path, log);
        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_run).count();
        const double eta = elapsed / (double)(step + 1 - start) * (double)(plan.total_steps - step - 1);
        char extra[160] = "";
        if (!std::isnan(val_loss)) snprintf(extra, sizeof(extra), " | val %.4f ppl %.2f", val_loss, std::exp(val_loss));
        char hw[96] = "";
        if (peak > 0) snprintf(hw, sizeof(hw), " | MFU %.1f%% | mem %.1f GiB", 100 * row.mfu, row.peak_gib);
        printf("step %lld/%lld | epoch %.2f | loss %.4f%s | lr %.2e | grad %.3f | %.0f tok/s%s | ETA %s\n",
               (long long)step + 1, (long long)plan.total_steps, row.epoch, loss, extra, lr, grad_norm, row.tokens_per_s, hw,
               fmt_duration(eta).c_str());
        fflush(stdout);
        const bool stop_here = stop_at > 0 && step + 1 == stop_at && !last;
        if (last || (save_every > 0 && (step + 1) % save_every == 0) || g_interrupted || stop_here) save(step + 1);
        if (stop_here) {
            printf("train: stopped after step %lld as asked (--stop-at); continue with --resume\n", (long long)step + 1);
            return 0;
        }
        if (g_interrupted) {
            printf("train: interrupted; saved step %lld to %s (continue with --resume)\n", (long long)step + 1, a.out.c_str());
            return 130;
        }
    }
    if (start == plan.total_steps) printf("train: %s is already at step %lld of %lld; nothing to do\n", state_path.c_str(),
                                          (long long)start, (long long)plan.total_steps);
    const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_run).count();
    printf("train: done, %lld tokens in %s; wrote %s, %s/, %s, %s\n", (long long)tokens_done, fmt_duration(total).c_str(),
           adapter_path.c_str(), peft_dir.c_str(), state_path.c_str(), log_path.c_str());
    // the loss curve, when gnuplot is there
    if (system("command -v gnuplot >/dev/null 2>&1") == 0) {
        std::string title = (demo ? std::string("demo") : a.model) + " | " + (demo ? "data/demo.jsonl" : a.data) + " | " +
                            (s.quant ? "QLoRA NF4" : "LoRA bf16") + " r=" + std::to_string(s.rank) + " lr=" + a.lr;
        std::string cmd = "tools/plot_loss '" + log_path + "' '" + a.out + "/loss_curve.png' '" + title + "' >/dev/null";
        if (system(cmd.c_str()) == 0) printf("train: loss curve %s/loss_curve.png\n", a.out.c_str());
        else fprintf(stderr, "train: tools/plot_loss failed; the log is in %s\n", log_path.c_str());
    }
    return 0;
}

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const InputError& e) {
        fprintf(stderr, "%s: %s\n", PROG, e.what());
        return 1;
    }
}
