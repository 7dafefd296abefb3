// train_config.cpp — ./train's defaults, the demo's recipe and the command line (see train_config.h).
// The option table is built from the default values, so --help cannot drift from them.
#include "train_config.h"

#include <climits>

#include "cli.h"

static const char* PROG = "train";

const char* schedule_name(int32_t s) {
    return s == SCHEDULE_CONSTANT ? "constant" : s == SCHEDULE_COSINE ? "cosine" : s == SCHEDULE_LINEAR ? "linear" : "?";
}

TrainSettings demo_settings() {
    TrainSettings s;
    s.rank = 16;
    s.alpha = 32.0f;
    s.dropout = 0.05f;
    s.lr = 3e-3f;
    s.batch = 8;
    s.micro_tokens = 1024;
    s.epochs = 12;
    s.quant = 0;  // the demo's random base is not worth quantizing; QLoRA's path is tested elsewhere
    return s;
}

RunOptions demo_options() {
    RunOptions o;
    o.out = "out/demo";
    o.eval_every = 10;
    o.save_every = 0;
    o.demo = true;
    return o;
}

// ----------------------------------------------------------------------------------------------
// the command line: flags arrive as strings (empty = not given), then overwrite the defaults

struct TrainArgs {
    std::string data, val, model, out, quant, rank, alpha, dropout, targets, lr, schedule, warmup, wd, clip, batch,
        micro_tokens, epochs, steps, eval_every, save_every, seed, resume, stop_at, recompute, device, memory, max_mem;
};

static std::string fmt(double v) {
    char b[32];
    snprintf(b, sizeof(b), "%g", v);
    return b;
}
// "(default X)", or "(default X; demo Y)" when the demo's recipe differs
static std::string dflt(const std::string& normal, const std::string& demo) {
    return normal == demo ? "(default " + normal + ")" : "(default " + normal + "; demo " + demo + ")";
}

static Cli make_cli(TrainArgs& a) {
    const TrainSettings S, DS = demo_settings();
    const RunOptions O, DO = demo_options();
    auto quant = [](const TrainSettings& s) { return std::string(s.quant ? "nf4" : "bf16"); };
    return Cli{
        PROG,
        "./train [-i lima.bin -m llama2-7b.bin] [options]      (no -i/-m: the built-in demo)",
        "Fine-tune Llama 2 with LoRA on a frozen NF4 (QLoRA) or bf16 base. Defaults: QLoRA's 7B recipe.",
        {
            {"-i", "--data", "FILE", "training data from ./prepare_lima", &a.data},
            {"-v", "--val", "FILE", "held-out data for eval loss / perplexity (optional)", &a.val},
            {"-m", "--model", "FILE", "base model from ./export_hf, or random:7b|13b|70b (random weights, for benchmarks)", &a.model},
            {"-o", "--out", "DIR", "output directory " + dflt(O.out + "/", DO.out + "/"), &a.out},
            {nullptr, "--quant", "nf4|bf16", "frozen base weights: nf4 = QLoRA, bf16 = plain LoRA " + dflt(quant(S), quant(DS)), &a.quant},
            {"-r", "--rank", "N", "LoRA rank r " + dflt(fmt(S.rank), fmt(DS.rank)), &a.rank},
            {nullptr, "--alpha", "X", "LoRA alpha; the delta is scaled by alpha/r " + dflt(fmt(S.alpha), fmt(DS.alpha)), &a.alpha},
            {nullptr, "--dropout", "P", "dropout on the LoRA input " + dflt(fmt(S.dropout), fmt(DS.dropout)), &a.dropout},
            {nullptr, "--targets", "LIST", "linears with LoRA " + dflt(lora_targets_string(S.targets), lora_targets_string(DS.targets)), &a.targets},
            {nullptr, "--lr", "X", "peak learning rate " + dflt(fmt(S.lr), fmt(DS.lr)), &a.lr},
            {nullptr, "--schedule", "NAME", "constant|cosine|linear after warm-up " + dflt(schedule_name(S.schedule), schedule_name(DS.schedule)), &a.schedule},
            {nullptr, "--warmup", "F", "fraction of the steps warming up linearly from 0 " + dflt(fmt(S.warmup), fmt(DS.warmup)), &a.warmup},
            {nullptr, "--wd", "X", "AdamW decoupled weight decay " + dflt(fmt(S.weight_decay), fmt(DS.weight_decay)), &a.wd},
            {nullptr, "--clip", "X", "max global gradient norm, 0 = off " + dflt(fmt(S.clip), fmt(DS.clip)), &a.clip},
            {nullptr, "--batch", "N", "conversations per optimizer step " + dflt(fmt(S.batch), fmt(DS.batch)), &a.batch},
            {nullptr, "--micro-tokens", "N", "tokens per micro-batch, conversations packed " + dflt(fmt(S.micro_tokens), fmt(DS.micro_tokens)), &a.micro_tokens},
            {nullptr, "--epochs", "N", "passes over the data " + dflt(fmt(S.epochs), fmt(DS.epochs)), &a.epochs},
            {nullptr, "--steps", "N", "optimizer steps; overrides --epochs, 0 = use epochs " + dflt(fmt(S.steps), fmt(DS.steps)), &a.steps},
            {nullptr, "--eval-every", "N", "eval every N steps and at the end, 0 = only at the end " + dflt(fmt(O.eval_every), fmt(DO.eval_every)), &a.eval_every},
            {nullptr, "--save-every", "N", "checkpoint every N steps and at the end, 0 = only at the end " + dflt(fmt(O.save_every), fmt(DO.save_every)), &a.save_every},
            {nullptr, "--seed", "N", "data order, LoRA init and dropout " + dflt(std::to_string(S.seed), std::to_string(DS.seed)), &a.seed},
            {nullptr, "--resume", nullptr, "continue the run in -o from its state.bin", &a.resume},
            {nullptr, "--stop-at", "N", "save and stop after step N (a run in parts; continue with --resume)", &a.stop_at},
            {nullptr, "--recompute", "MODE", "none|light|full: activation memory vs compute (GPU; default: the memory plan's)", &a.recompute},
            {nullptr, "--memory", "MODE", "auto: choose micro-batch tokens and recompute for the fastest step that fits the card (GPU); off: use the flags as given (default auto)", &a.memory},
            {nullptr, "--max-mem", "GIB", "plan for this much device memory, e.g. 22 for a 24 GB card (default: the card's)", &a.max_mem},
            {nullptr, "--device", "NAME", "cuda|cpu (default: cuda when a GPU is usable, else cpu)", &a.device},
        }};
}

bool parse_train_args(int argc, char** argv, TrainSettings& s, RunOptions& o) {
    TrainArgs a;
    Cli cli = make_cli(a);
    if (!cli_parse(cli, argc, argv)) return false;
    const bool demo = a.data.empty() && a.model.empty();
    if (!demo && (a.data.empty() || a.model.empty())) cli_usage_error(PROG, "-i DATA and -m MODEL go together (neither: the demo)");
    s = demo ? demo_settings() : TrainSettings{};
    o = demo ? demo_options() : RunOptions{};
    o.data = a.data;
    o.val = a.val;
    o.model = a.model;
    if (!a.out.empty()) o.out = a.out;
    if (!a.rank.empty()) s.rank = (int32_t)cli_int(PROG, "--rank", a.rank, 1, 4096);
    if (!a.alpha.empty()) s.alpha = (float)cli_float(PROG, "--alpha", a.alpha, 1e-6, 1e6);
    if (!a.dropout.empty()) s.dropout = (float)cli_float(PROG, "--dropout", a.dropout, 0.0, 0.95);
    if (!a.targets.empty()) {
        try {
            s.targets = parse_lora_targets(a.targets);
        } catch (const InputError& e) {
            cli_usage_error(PROG, e.what());
        }
    }
    if (!a.lr.empty()) s.lr = (float)cli_float(PROG, "--lr", a.lr, 0.0, 1.0);
    if (!a.schedule.empty()) {
        const std::string sched = cli_choice(PROG, "--schedule", a.schedule, {"constant", "cosine", "linear"});
        s.schedule = sched == "constant" ? SCHEDULE_CONSTANT : sched == "cosine" ? SCHEDULE_COSINE : SCHEDULE_LINEAR;
    }
    if (!a.warmup.empty()) s.warmup = (float)cli_float(PROG, "--warmup", a.warmup, 0.0, 1.0);
    if (!a.wd.empty()) s.weight_decay = (float)cli_float(PROG, "--wd", a.wd, 0.0, 1.0);
    if (!a.clip.empty()) s.clip = (float)cli_float(PROG, "--clip", a.clip, 0.0, 1e9);
    if (!a.batch.empty()) s.batch = (int32_t)cli_int(PROG, "--batch", a.batch, 1, 1 << 20);
    if (!a.micro_tokens.empty()) s.micro_tokens = (int32_t)cli_int(PROG, "--micro-tokens", a.micro_tokens, 16, 1 << 22);
    o.micro_tokens_given = !a.micro_tokens.empty();
    if (!a.epochs.empty()) s.epochs = (int32_t)cli_int(PROG, "--epochs", a.epochs, 1, 100000);
    if (!a.steps.empty()) s.steps = (int32_t)cli_int(PROG, "--steps", a.steps, 0, 1 << 30);
    if (!a.quant.empty()) s.quant = cli_choice(PROG, "--quant", a.quant, {"nf4", "bf16"}) == "nf4" ? 1 : 0;
    if (!a.seed.empty()) s.seed = (uint64_t)cli_int(PROG, "--seed", a.seed, 0, INT64_MAX);
    if (!a.eval_every.empty()) o.eval_every = cli_int(PROG, "--eval-every", a.eval_every, 0, 1 << 30);
    if (!a.save_every.empty()) o.save_every = cli_int(PROG, "--save-every", a.save_every, 0, 1 << 30);
    if (!a.stop_at.empty()) o.stop_at = cli_int(PROG, "--stop-at", a.stop_at, 0, 1 << 30);
    o.resume = !a.resume.empty();
    if (!a.recompute.empty()) {
        const std::string r = cli_choice(PROG, "--recompute", a.recompute, {"none", "light", "full"});
        o.recompute = r == "none" ? 0 : r == "light" ? 1 : 2;
        o.recompute_given = true;
    }
    if (!a.memory.empty()) o.memory_auto = cli_choice(PROG, "--memory", a.memory, {"auto", "off"}) == "auto";
    if (!a.max_mem.empty()) o.max_mem_gib = cli_float(PROG, "--max-mem", a.max_mem, 0.5, 1e6);
    if (!a.device.empty()) {
        const std::string d = cli_choice(PROG, "--device", a.device, {"auto", "cuda", "cpu"});
        o.device = d == "cuda" ? DEVICE_CUDA : d == "cpu" ? DEVICE_CPU : DEVICE_AUTO;
    }
    return true;
}
