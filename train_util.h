// train_util.h — the parts of ./train that are plain logic, kept apart from the loop so that the
// CPU tests can check them directly: the run's settings, the data schedule (epoch shuffles, steps,
// packing conversations into micro-batches without padding), the learning-rate schedule, the
// train-state file for --resume, and log.csv. Implemented in train_util.cpp.
#pragma once

#include <string>
#include <vector>

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
};
static_assert(sizeof(TrainSettings) == 80, "TrainSettings is stored verbatim in state.bin");

// ----------------------------------------------------------------------------------------------
// data schedule: a step takes the next `batch` conversations of its epoch's shuffled order

struct DataPlan {
    int64_t n_conversations;
    int64_t steps_per_epoch;  // ceil(n_conversations / batch)
    int64_t total_steps;      // settings.steps, or epochs * steps_per_epoch
};
DataPlan plan_data(const TrainSettings& s, int64_t n_conversations);
// The conversation order of one epoch: Fisher-Yates with a splitmix64 stream of (seed, epoch).
std::vector<int64_t> epoch_order(int64_t n_conversations, uint64_t seed, int64_t epoch);
// The conversations of 0-based step k (epochs repeat past the last when --steps asks for more).
std::vector<int64_t> step_conversations(const TrainSettings& s, const DataPlan& p, int64_t step);
// Packs conversations, in the given order, into rows of at most `budget` tokens: a conversation
// joins the current row if it fits, else starts the next. No padding, no conversation split.
// A conversation longer than the budget gets a row of its own (the caller sizes buffers for it).
std::vector<std::vector<int64_t>> pack_rows(const Dataset& d, const std::vector<int64_t>& convs, int64_t budget);
// number of positions with a target (tokens predicted under the loss mask) in these conversations
int64_t count_targets(const Dataset& d, const std::vector<int64_t>& convs);

// ----------------------------------------------------------------------------------------------
// learning rate at 0-based optimizer step k, as transformers' schedulers with warm-up:
// warm-up k / W for k < W (W = ceil(warmup * total)), then constant, linear decay to 0, or
// cosine decay to 0 over the remaining steps.
float lr_at(const TrainSettings& s, int64_t step, int64_t total_steps);

// ----------------------------------------------------------------------------------------------
// train state (state.bin): header, then LoRA params, AdamW m, v (fp32, LoraLayout order each)

constexpr uint32_t STATE_MAGIC = fourcc("L2ST");
constexpr uint32_t STATE_VERSION = 1;
struct StateHeader {
    uint32_t magic;
    uint32_t version;
    Config base;              // the model trained
    LoraConfig lora;
    TrainSettings settings;
    int64_t step;             // optimizer steps done
    int64_t total_steps;
    int64_t n_conversations;  // of the training data
    int64_t n_tokens;
    uint64_t data_hash;       // FNV-1a of the training tokens and mask
    uint8_t reserved[256 - 8 - sizeof(Config) - sizeof(LoraConfig) - sizeof(TrainSettings) - 5 * 8];
};
static_assert(sizeof(StateHeader) == 256, "header is 256 bytes");

struct TrainState {
    StateHeader header;
    std::vector<float> params, m, v;  // (LoraLayout total) each
};
uint64_t dataset_hash(const Dataset& d);
void write_state(const std::string& path, const TrainState& s);
TrainState read_state(const std::string& path);
// Throws InputError naming the state file if it belongs to another model, data or settings.
void check_state_matches(const StateHeader& h, const char* state_path, const Config& base, const LoraConfig& lora,
                         const TrainSettings& s, const Dataset& d);

// ----------------------------------------------------------------------------------------------
// log.csv: one row per optimizer step; val_loss empty where no eval ran

struct LogRow {
    int64_t step;
    double epoch;
    double loss;
    double val_loss;  // NaN: no eval this step
    double lr;
    double grad_norm;
    double tokens_per_s;
    double mfu;       // fraction of the card's bf16 peak; NaN on the CPU
    double peak_gib;  // device memory in use; NaN on the CPU
};
extern const char* LOG_HEADER;  // "step,epoch,loss,val_loss,lr,grad_norm,tokens_per_s,mfu,peak_mem_gib"
void write_log(const std::string& path, const std::vector<LogRow>& rows);  // atomic rewrite
std::vector<LogRow> read_log(const std::string& path);                    // throws on a foreign file

// ----------------------------------------------------------------------------------------------
// model FLOPs of a LoRA/QLoRA training step (what MFU counts; recompute excluded): per token
// 4 x frozen linear params (forward + input-gradient backward; frozen weights get no weight
// gradient), 6 r (in + out) per LoRA linear, 4 V C for the LM head; plus 12 D per visible
// (query, key) pair per head per layer for causal attention (4 D forward, 8 D backward).
// attention_pairs = sum over conversations of len (len + 1) / 2.
double training_flops(const Config& c, const LoraConfig& lc, double tokens, double attention_pairs);
