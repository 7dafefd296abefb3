// train_config.h — the one home of ./train's defaults: TrainSettings (everything that decides what
// a run computes; stored verbatim in state.bin) and RunOptions (what a run does around the math:
// files, evaluation, checkpoints, device), the built-in demo's recipe, and the command line, whose
// --help text is generated from these defaults. A flag given explicitly always wins, demo included.
// Implemented in train_config.cpp; tested in test/cpu_train.cpp.
#pragma once

#include <string>

#include "model.h"

enum Schedule : int32_t { SCHEDULE_CONSTANT = 0, SCHEDULE_COSINE = 1, SCHEDULE_LINEAR = 2 };
const char* schedule_name(int32_t s);

// Everything that decides what a run computes. Stored verbatim in state.bin, so a resume with other
// settings is caught. Defaults: QLoRA's 7B recipe (Dettmers et al. 2023, qlora.py; see README).
struct TrainSettings {
    int32_t rank = 64;                   // LoRA r
    float alpha = 16.0f;                 // LoRA alpha
    float dropout = 0.1f;                // LoRA dropout (QLoRA: 0.1 up to 13B, 0.05 above)
    uint32_t targets = LORA_ALL_TARGETS; // all seven linears
    float lr = 2e-4f;                    // peak learning rate
    int32_t schedule = SCHEDULE_CONSTANT;
    float warmup = 0.03f;                // fraction of the steps with a linear warm-up from 0
    float weight_decay = 0.0f;
    float clip = 0.3f;                   // max global grad norm (0: off)
    float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
    int32_t batch = 16;                  // conversations per optimizer step
    int32_t micro_tokens = 4096;         // tokens per micro-step (several conversations packed)
    int32_t epochs = 3;
    int32_t steps = 0;                   // > 0 overrides epochs
    int32_t quant = 1;                   // 1: NF4 frozen base (QLoRA), 0: bf16 (LoRA)
    int32_t reserved0 = 0;
    uint64_t seed = 1234;                // data order, LoRA init, dropout masks
    LoraConfig lora() const { return LoraConfig{rank, alpha, dropout, targets}; }
};
static_assert(sizeof(TrainSettings) == 80, "TrainSettings is stored verbatim in state.bin");

enum Device : int32_t { DEVICE_AUTO = 0, DEVICE_CUDA = 1, DEVICE_CPU = 2 };

// What a run does around the math; none of it changes the numbers a step computes.
struct RunOptions {
    std::string data;             // -i: training data (prepare_lima); empty with model: the demo
    std::string val;              // -v: held-out data (optional)
    std::string model;            // -m: model file, or random:<preset>
    std::string out = "out";      // -o: output directory
    int64_t eval_every = 50;      // eval every N steps and at the end (0: only at the end)
    int64_t save_every = 100;     // checkpoint every N steps and at the end (0: only at the end)
    int64_t stop_at = 0;          // save and stop after this step (0: run to the end)
    bool resume = false;          // continue from out/state.bin
    int32_t recompute = 0;        // Recompute (llama2_gpu.h): 0 none, 1 light, 2 full
    bool recompute_given = false; // --recompute on the command line (the memory plan keeps it)
    bool micro_tokens_given = false;  // --micro-tokens on the command line (likewise)
    bool memory_auto = true;      // --memory auto: plan micro-batches and recompute to fit the card
    double max_mem_gib = 0;       // --max-mem: plan for this much device memory (0: the card's)
    int32_t device = DEVICE_AUTO;
    bool demo = false;            // neither -i nor -m: the built-in demo
    bool random_model() const { return model.rfind("random:", 0) == 0; }
};

// The built-in demo's recipe: a tiny model learns a few dozen conversations in seconds, so it
// trains harder than the 7B recipe (higher rank, alpha and learning rate, more epochs).
TrainSettings demo_settings();
RunOptions demo_options();

// Parses ./train's command line. Returns false when --help was printed. A bad command line prints
// one line and exits 2. Defaults come from TrainSettings{} / RunOptions{}, or from the demo's
// recipe when neither -i nor -m is given; every flag given explicitly overrides them.
bool parse_train_args(int argc, char** argv, TrainSettings& s, RunOptions& o);
