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
// Outputs in -o (default out/): adapter.bin (fp16), adapter/ (PEFT), state.bin (one checkpoint
// set, switched atomically: checkpoint.h), log.csv, loss_curve.png (when gnuplot is installed).
// Ctrl-C saves and exits.
//
// This file is the program: main, the loading of the run's inputs, the loop. The parts it uses:
// train_config.h (settings, defaults, command line), schedule.h (data order, packing, learning
// rate), train_backend.h (the CPU reference and the CUDA model behind one interface),
// checkpoint.h (state.bin, adapters, log.csv), train_demo.h (the built-in demo).
#include <signal.h>

#include <chrono>
#include <cmath>
#include <memory>

#include "checkpoint.h"
#include "plot.h"
#include "schedule.h"
#include "train_backend.h"
#include "train_config.h"
#include "train_demo.h"

static const char* PROG = "train";
static volatile sig_atomic_t g_interrupted = 0;  // set by SIGINT; the loop checks it between steps
static void on_sigint(int) { g_interrupted = 1; }

// ----------------------------------------------------------------------------------------------
// the run's inputs: the data and the base model, checked against each other

struct RunInputs {
    Dataset train, val;
    Config cfg;
    BaseSource base;         // where the frozen weights come from
    std::string model_name;  // the base model as the PEFT export names it
    uint8_t tokenizer_sha256[32] = {};
};

static RunInputs load_inputs(const TrainSettings& s, const RunOptions& o) {
    RunInputs in;
    if (o.demo) {
        demo_datasets(6, in.train, in.val);
        in.cfg = demo_config();
        in.base.kind = BaseSource::HOST;
        in.base.host = demo_weights(in.cfg, s.seed);
        in.model_name = RunFiles(o.out).demo_model;
        return in;
    }
    in.train = read_dataset(o.data);
    if (!o.val.empty()) in.val = read_dataset(o.val);
    ModelHeader mh;
    memset(&mh, 0, sizeof(mh));
    if (o.random_model()) {
        mh.config = llama2_preset(o.model.substr(7));
        in.base.kind = BaseSource::RANDOM;
        in.base.seed = s.seed;
    } else {
        InFile mf(o.model);
        mh = read_model_header(mf);
        in.base.kind = BaseSource::FILE;
        in.base.path = o.model;
        in.base.file_is_nf4 = mh.linear_format == LINEAR_NF4;
    }
    in.cfg = mh.config;
    in.model_name = o.model;
    if (in.base.file_is_nf4 && s.quant == 0)
        fail("%s: linear weights are pre-quantized to NF4; train with --quant nf4 or export with --dtype bf16", o.model.c_str());
    check_data_matches_model(in.train.header, o.data.c_str(), mh, o.model.c_str());
    if (!o.val.empty()) check_data_matches_model(in.val.header, o.val.c_str(), mh, o.model.c_str());
    memcpy(in.tokenizer_sha256, in.train.header.tokenizer_sha256, 32);
    return in;
}

static int64_t longest_conversation(const RunInputs& in) {
    int64_t longest = 0;
    for (const Dataset* d : {&in.train, &in.val})
        for (int64_t i = 0; i < d->header.n_conversations; i++) longest = std::max(longest, d->conv_len(i));
    return longest;
}

// --device: the GPU when asked, or (auto) when one is usable
static bool use_gpu(const RunOptions& o) {
    std::string why = "this build has no CUDA (make NO_CUDA=1)";
    const bool have_gpu = gpu_backend_usable && make_gpu_backend && gpu_backend_usable(&why);
    if (o.device == DEVICE_CUDA && !have_gpu) fail("--device cuda: no usable GPU (%s); use --device cpu", why.c_str());
    if (o.device == DEVICE_AUTO && !have_gpu)
        fprintf(stderr, "train: no usable GPU (%s): running on the CPU reference (slow; --device cpu)\n", why.c_str());
    return o.device == DEVICE_CUDA || (o.device == DEVICE_AUTO && have_gpu);
}

static std::unique_ptr<Backend> make_backend(RunInputs& in, const TrainSettings& s, const RunOptions& o, bool gpu) {
    if (!gpu) return make_cpu_backend(in.cfg, std::move(in.base), s);
    // activations are sized once: a micro-batch, or a longer conversation alone in its row
    const int64_t capacity = std::max<int64_t>(s.micro_tokens, longest_conversation(in));
    return make_gpu_backend(in.cfg, in.base, s, o.recompute, capacity);
}

// mean cross-entropy over the held-out conversations (packed as in training)
static double evaluate(Backend& be, const Dataset& val, int64_t budget) {
    std::vector<int64_t> all((size_t)val.header.n_conversations);
    for (size_t i = 0; i < all.size(); i++) all[i] = (int64_t)i;
    double sum = 0;
    for (const auto& row : pack_rows(val, all, budget)) sum += be.eval_loss_sum(batch_from_conversations(val, {row}));
    const int64_t n = count_targets(val, all);
    return n ? sum / (double)n : NAN;
}

static std::string fmt_duration(double s) {
    char b[32];
    if (s < 60) snprintf(b, sizeof(b), "%.0fs", s);
    else if (s < 3600) snprintf(b, sizeof(b), "%dm%02ds", (int)s / 60, (int)s % 60);
    else snprintf(b, sizeof(b), "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
    return b;
}

// ----------------------------------------------------------------------------------------------
// one optimizer step: the step's conversations packed into micro-batches, forward + backward on
// each (gradients accumulate), then clip + AdamW

struct StepResult {
    double loss;      // mean CE over the step's answer tokens
    float grad_norm;  // before clipping
    float lr;
    int64_t tokens;
    double attention_pairs;  // visible (query, key) pairs, for the FLOP count
};

static StepResult train_step(Backend& be, const Dataset& train, const TrainSettings& s, const DataPlan& plan, int64_t step) {
    StepResult r{0, 0, 0, 0, 0};
    const std::vector<int64_t> convs = step_conversations(s, plan, step);
    const int64_t n_targets = count_targets(train, convs);
    const float scale = n_targets ? 1.0f / (float)n_targets : 0.0f;
    be.zero_grads();
    const auto rows = pack_rows(train, convs, s.micro_tokens);
    for (size_t i = 0; i < rows.size(); i++) {
        for (int64_t c : rows[i]) {
            const double len = (double)train.conv_len(c);
            r.tokens += (int64_t)len;
            r.attention_pairs += len * (len + 1) / 2;
        }
        // the dropout masks of (step, micro-batch): fixed by the seed, so a resume redraws them
        const uint64_t dseed = splitmix64(s.seed ^ splitmix64(((uint64_t)step << 20) + i));
        be.forward_backward(batch_from_conversations(train, {rows[i]}), scale, dseed);
    }
    r.lr = lr_at(s, step, plan.total_steps);
    double loss_sum = 0;
    be.optimizer_step(step, r.lr, s, &loss_sum, &r.grad_norm);
    r.loss = n_targets ? loss_sum / (double)n_targets : 0.0;
    return r;
}

// -o is a directory of the run's own files; none of them may be (or link to) an input
static void check_run_paths(const RunOptions& o, const RunFiles& f) {
    IoPaths io;
    if (!o.data.empty()) io.input("-i", o.data);
    if (!o.val.empty()) io.input("-v", o.val);
    if (!o.model.empty() && !o.random_model()) io.input("-m", o.model);
    io.output_dir("-o", f.dir);
    // (the checkpoint set's links, latest and checkpoints/, are the run's own: checkpoint.h)
    for (const std::string* p : {&f.log, &f.loss_curve, &f.adapter, &f.state})
        io.output_file("-o's " + p->substr(f.dir.size() + 1), *p);
    if (o.demo) io.output_file("-o's model.bin", f.demo_model);
    io.output_dir("-o's adapter", f.peft_dir);
    io.check();
}

// ----------------------------------------------------------------------------------------------
// the run

static int run(int argc, char** argv) {
    TrainSettings s;
    RunOptions o;  // (the memory plan may still set micro_tokens and recompute)
    if (!parse_train_args(argc, argv, s, o)) return 0;
    RunInputs in = load_inputs(s, o);
    const Config cfg = in.cfg;
    const int64_t longest = longest_conversation(in);
    if (longest > cfg.max_seq_len)
        fprintf(stderr, "train: note: conversations of up to %lld tokens exceed the model's max_position_embeddings %d\n",
                (long long)longest, cfg.max_seq_len);
    if (in.train.header.n_conversations == 0) fail("%s: holds no conversations", o.data.c_str());
    const DataPlan plan = plan_data(s, in.train.header.n_conversations);
    const RunFiles files(o.out);
    check_run_paths(o, files);
    const Dataset& train = in.train;
    const Dataset& val = in.val;
    const bool gpu = use_gpu(o);
    // a resumed run keeps the micro-batches it was planned with (they decide the packing)
    if (o.resume && !o.micro_tokens_given && file_exists(files.state)) {
        s.micro_tokens = read_state(files.state).header.settings.micro_tokens;
        o.micro_tokens_given = true;
    }
    if (gpu && o.memory_auto && plan_gpu_memory) {
        const MemoryPlan p = plan_gpu_memory(cfg, s, longest, o.max_mem_gib, o.micro_tokens_given ? s.micro_tokens : 0,
                                             o.recompute_given ? o.recompute : -1);
        s.micro_tokens = (int32_t)p.micro_tokens;
        o.recompute = p.recompute;
        printf("train: %s\n", p.summary.c_str());
    }
    // -o is made only once the model file has been read (and checksummed: the backend does it), so
    // a bad one leaves no empty run directory behind. The demo's model is built in and cannot be
    // bad: its file is written first, from the host weights the backend then takes over.
    auto make_out_dir = [&] {
        make_dirs(o.out);
        clean_run_dir(files);
        if (o.demo && !o.resume) write_model_bf16(files.demo_model, cfg, in.base.host);
    };
    if (o.demo) make_out_dir();
    std::unique_ptr<Backend> be = make_backend(in, s, o, gpu);
    if (!o.demo) make_out_dir();

    int64_t start = 0, saved_step = -1;  // saved_step: the last checkpoint this run wrote
    std::vector<LogRow> log;
    if (o.resume) {
        TrainState st = read_state(files.state);
        check_state_matches(st.header, files.state.c_str(), cfg, s, train, plan.total_steps);
        be->set_lora_state(st.params, st.m, st.v);
        start = st.header.step;
        if (file_exists(files.log))
            for (const LogRow& r : read_log(files.log))
                if (r.step <= start) log.push_back(r);
        if (start == plan.total_steps) {
            printf("train: %s is already at step %lld of %lld; nothing to do\n", files.state.c_str(), (long long)start,
                   (long long)plan.total_steps);
            return 0;
        }
        fprintf(stderr, "train: resuming %s at step %lld/%lld\n", files.state.c_str(), (long long)start, (long long)plan.total_steps);
    }
    auto save = [&](int64_t step) {
        TrainState st;
        st.header = make_state_header(cfg, s, step, plan.total_steps, train);
        be->get_lora_state(st.params, st.m, st.v);
        save_checkpoint(files, st, in.tokenizer_sha256, in.model_name);
        saved_step = step;
    };

    printf("train: %s | %s | %s base | LoRA r=%d alpha=%g dropout=%g on %s | %lld conversations (%lld tokens), "
           "%lld steps of %d, micro-batches <= %d tokens | lr %g %s, warm-up %g | out %s\n",
           be->name(), o.demo ? "built-in demo" : o.model.c_str(), s.quant ? "NF4" : "bf16", s.rank, s.alpha, s.dropout,
           lora_targets_string(s.targets).c_str(), (long long)train.header.n_conversations, (long long)train.header.n_tokens,
           (long long)plan.total_steps, s.batch, s.micro_tokens, s.lr, schedule_name(s.schedule), s.warmup, o.out.c_str());
    fflush(stdout);
    signal(SIGINT, on_sigint);

    const auto t_run = std::chrono::steady_clock::now();
    int64_t tokens_done = 0;
    for (int64_t step = start; step < plan.total_steps; step++) {
        const auto t0 = std::chrono::steady_clock::now();
        if (step == start) be->begin_profile();  // where the first step's time goes, once, in the log
        const StepResult r = train_step(*be, train, s, plan, step);
        if (step == start) {
            const std::string prof = be->end_profile();
            if (!prof.empty()) printf("train: %s\n", prof.c_str());
        }
        if (!std::isfinite(r.loss) || !std::isfinite(r.grad_norm)) {
            const bool bad_loss = !std::isfinite(r.loss);
            const double bad = bad_loss ? r.loss : (double)r.grad_norm;
            const int64_t held = checkpoint_step(files);
            char where[512];
            if (saved_step >= 0) snprintf(where, sizeof(where), "the last checkpoint this run wrote is step %lld in %s", (long long)saved_step, o.out.c_str());
            else if (held >= 0) snprintf(where, sizeof(where), "this run wrote no checkpoint; %s still holds step %lld", o.out.c_str(), (long long)held);
            else snprintf(where, sizeof(where), "no checkpoint was written");
            fprintf(stderr, "train: step %lld: %s is %s; stopping (%s)\n", (long long)step + 1,
                    bad_loss ? "the loss" : "the gradient norm", std::isnan(bad) ? "NaN" : "Inf", where);
            return 1;
        }
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        tokens_done += r.tokens;
        const bool last = step + 1 == plan.total_steps;
        double val_loss = NAN;
        if (val.header.n_conversations > 0 && (last || (o.eval_every > 0 && (step + 1) % o.eval_every == 0)))
            val_loss = evaluate(*be, val, s.micro_tokens);
        const double flops = training_flops(cfg, s.lora(), (double)r.tokens, r.attention_pairs);
        const double peak = be->peak_flops();
        LogRow row{step + 1, (double)(step + 1) / (double)plan.steps_per_epoch, r.loss, val_loss, r.lr, r.grad_norm,
                   r.tokens / dt, peak > 0 ? flops / dt / peak : NAN, be->memory_in_use_gib()};
        log.push_back(row);
        write_log(files.log, log);
        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_run).count();
        const double eta = elapsed / (double)(step + 1 - start) * (double)(plan.total_steps - step - 1);
        char extra[160] = "";
        if (!std::isnan(val_loss)) snprintf(extra, sizeof(extra), " | val %.4f ppl %.2f", val_loss, std::exp(val_loss));
        char hw[96] = "";
        if (peak > 0) snprintf(hw, sizeof(hw), " | MFU %.1f%% | mem %.1f GiB", 100 * row.mfu, row.mem_in_use_gib);
        printf("step %lld/%lld | epoch %.2f | loss %.4f%s | lr %.2e | grad %.3f | %.0f tok/s%s | ETA %s\n",
               (long long)step + 1, (long long)plan.total_steps, row.epoch, r.loss, extra, r.lr, r.grad_norm, row.tokens_per_s,
               hw, fmt_duration(eta).c_str());
        fflush(stdout);
        const bool stop_here = o.stop_at > 0 && step + 1 == o.stop_at && !last;
        if (last || (o.save_every > 0 && (step + 1) % o.save_every == 0) || g_interrupted || stop_here) save(step + 1);
        if (stop_here) {
            printf("train: stopped after step %lld as asked (--stop-at); continue with --resume\n", (long long)step + 1);
            return 0;
        }
        if (g_interrupted) {
            printf("train: interrupted; saved step %lld to %s (continue with --resume)\n", (long long)step + 1, o.out.c_str());
            return 130;
        }
    }
    const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_run).count();
    printf("train: done, %lld tokens in %s; wrote %s, %s/, %s, %s\n", (long long)tokens_done, fmt_duration(total).c_str(),
           files.adapter.c_str(), files.peft_dir.c_str(), files.state.c_str(), files.log.c_str());
    const std::string title = (o.demo ? std::string("demo") : o.model + " | " + o.data) + " | " +
                              (s.quant ? "QLoRA NF4" : "LoRA bf16") + " r=" + std::to_string(s.rank);
    const std::string why = plot_loss_curve(files.log, files.loss_curve, title);
    if (why.empty()) printf("train: loss curve %s\n", files.loss_curve.c_str());
    else fprintf(stderr, "train: no loss curve (%s); the log is in %s\n", why.c_str(), files.log.c_str());
    return 0;
}

int main(int argc, char** argv) { return run_main(PROG, run, argc, argv); }
